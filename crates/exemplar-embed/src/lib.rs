//! Exemplar's embedding pipeline: decoding real photos, pretrained CNN backbones
//! (EfficientNet-Lite0, ResNet, VGG) running in Candle and truncated before the
//! classifier (on Candle's operations or on the channels-last engine of `exemplar-nhwc`),
//! and pooling of the last feature map into a raw feature.

pub mod embedder;
pub mod error;
pub mod fetch;
pub mod geometry;
pub mod image_input;
pub mod imagenet;
pub mod legacy_pth;
pub mod local;
pub mod models;
pub mod ops;
pub mod pooling;
pub mod views;
pub mod weights;

pub use embedder::{default_projection, CnnEmbedder, EmbedderConfig};
pub use error::{EmbedError, Result};
pub use geometry::Geometry;
pub use local::LocalFeatureExtractor;
pub use models::{Architecture, Engine};
pub use pooling::Pooling;
pub use weights::{HubSettings, WeightSources, WeightsSource};
