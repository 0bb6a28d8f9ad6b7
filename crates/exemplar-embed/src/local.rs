//! The hook through which local features are made from the photo the embedder decodes.

use exemplar_core::{CropBox, LocalFor};
use image::RgbImage;

/// Makes local features (for geometric verification) from the same decoded photo as the
/// CNN input, so that a photo is decoded once for both. The embedder does not know what
/// the features are: the composition root plugs an implementation in
/// ([`crate::CnnEmbedder::with_local_features`]).
pub trait LocalFeatureExtractor: Send + Sync {
    /// The longest side the photo is scaled to before extraction for `purpose`: the decode
    /// budget reserves the working copies of that size.
    fn working_side(&self, purpose: LocalFor) -> u32;

    /// The stored form of the local features of `part` of the upright photo `rgb`, with
    /// positions in the photo's pixels.
    fn extract(&self, rgb: &RgbImage, part: CropBox, purpose: LocalFor) -> Vec<u8>;
}
