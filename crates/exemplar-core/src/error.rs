use thiserror::Error;

/// Errors of the domain core.
#[derive(Debug, Error)]
pub enum Error {
    #[error("dimension mismatch: expected {expected}, got {got}")]
    Dimension { expected: usize, got: usize },
    #[error("cannot fit a {dim}-d projection on {samples} samples: need at least {needed}")]
    TooFewSamples {
        dim: usize,
        samples: usize,
        needed: usize,
    },
    #[error("projection file {path}: {reason}")]
    ProjectionFile { path: String, reason: String },
    #[error("ground truth {path}: {reason}")]
    GroundTruth { path: String, reason: String },
    #[error("the embedding queue is full ({capacity} waiting): retry later")]
    QueueFull { capacity: usize },
    #[error("the embedding worker has stopped")]
    WorkerStopped,
    #[error(transparent)]
    Extract(#[from] crate::extractor::ExtractError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
