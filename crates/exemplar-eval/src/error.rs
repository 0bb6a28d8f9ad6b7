use thiserror::Error;

/// Errors of evaluation: a ground truth that cannot be read.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("ground truth {path}: {reason}")]
    GroundTruth { path: String, reason: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EvalError>;
