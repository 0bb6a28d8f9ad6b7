use exemplar_core::ExtractError;
use thiserror::Error;

/// Errors of the embedding pipeline.
#[derive(Debug, Error)]
pub enum EmbedError {
    #[error("weights: tensor `{name}` is missing")]
    MissingTensor { name: String },
    #[error("weights: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("weights file {path}: {reason}")]
    WeightsFile { path: String, reason: String },
    #[error("fetching {what}: {reason}")]
    Fetch { what: String, reason: String },
    #[error("unknown {what} `{value}`; expected one of: {expected}")]
    UnknownSetting {
        what: &'static str,
        value: String,
        expected: String,
    },
    #[error("network input: {0}")]
    Input(String),
    #[error("this model has no ImageNet classifier head in its weights")]
    NoClassifier,
    #[error(transparent)]
    Image(#[from] ExtractError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EmbedError>;
