use crate::descriptor::PooledFeature;
use thiserror::Error;

/// Why one image could not be turned into a feature. The variants are what a user must
/// be told apart: their input (unsupported, corrupt, too large) versus our failure.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ExtractError {
    #[error("unsupported image format: {0}")]
    UnsupportedImage(String),
    #[error("corrupt or unreadable image: {0}")]
    CorruptImage(String),
    #[error("image too large: {width}x{height} = {pixels} pixels, the limit is {limit}")]
    ImageTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("inference failed: {0}")]
    Inference(String),
}

impl ExtractError {
    /// True when the caller sent a bad image (a 4xx), false when the failure is ours.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ExtractError::Inference(_))
    }
}

/// Identity of a feature space: which weights, input geometry and pooling made a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// e.g. `efficientnet-lite0@579344248a93/center-crop-224/gem3`.
    pub id: String,
    pub feature_dim: usize,
}

/// Turns encoded images (the bytes of a JPEG, PNG, ...) into pooled features.
///
/// Implementations are blocking and CPU-heavy: call them from a dedicated thread
/// (see [`crate::embed_queue::EmbedQueue`]), never from an async worker.
pub trait FeatureExtractor: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// Embeds a batch in as few forward passes as the implementation can; one result per
    /// input, in order, so one bad image does not fail its neighbours.
    fn extract_batch(&self, images: &[&[u8]]) -> Vec<Result<PooledFeature, ExtractError>>;
}
