//! The learned descriptor head: synthetic phone-photo views of catalogue photos
//! ([`views`]), a linear head trained on them with a metric-learning loss in Candle
//! ([`head`]), and the classifier baseline a retrieval service is compared with
//! ([`probe`]). Blocking, CPU-heavy calls: run them off the async workers.

pub mod head;
pub mod probe;
pub mod views;

pub use head::{train_head, Epoch, HeadConfig, Loss, Recall, TrainReport, TrainSet};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("projection: {0}")]
    Projection(#[from] exemplar_core::Error),
    #[error("feature of {got} values where {expected} were expected")]
    Dimension { expected: usize, got: usize },
    #[error("too little to train on: {0}")]
    TooLittle(String),
    #[error("training was cancelled")]
    Cancelled,
}

/// Synthetic views made of each exemplar's photo unless told otherwise.
pub const DEFAULT_VIEWS: usize = 8;
/// A training run uses at most this many exemplars (evenly spread over the catalogue).
pub const DEFAULT_MAX_EXEMPLARS: usize = 10_000;
