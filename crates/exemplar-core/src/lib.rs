//! Exemplar's domain core: what a descriptor is, how raw CNN features become 256-d
//! descriptors (versioned projections and when to refit them), the blocking-safe queue
//! the server uses to reach a feature extractor, the two-stage search (shortlists merged,
//! verified chunk by chunk) and the catalogue service built on them.
//!
//! Nothing here knows about Candle, HTTP, SQL or the ANN index: those crates implement
//! the traits defined here.

pub mod ann;
pub mod catalogue;
pub mod descriptor;
pub mod embed_queue;
pub mod error;
pub mod extractor;
pub mod linalg;
pub mod photos;
pub mod projection;
pub mod refit;
pub mod reindex;
pub mod rerank;
pub mod rng;
pub mod service;
pub mod shortlist;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unknowns;
pub mod verifier;

pub use descriptor::{cosine, l2_normalize, Descriptor, PooledFeature};
pub use error::{Error, Result};
pub use extractor::{
    CropBox, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor, ModelInfo, View,
};
pub use projection::{Projection, ProjectionKind};
pub use refit::RefitPolicy;
pub use verifier::{EarlyStop, Evidence, VerdictRule, Verifier};
