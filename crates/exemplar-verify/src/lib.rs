//! Geometric verification of a retrieval shortlist: local features (SIFT keypoints with
//! RootSIFT descriptors by default, or ORB-like oriented FAST corners with rotated BRIEF
//! bits), nearest-neighbour matching with a ratio test, and a RANSAC homography. A
//! reference that shares many geometrically consistent matches with the query photo is
//! the same planar thing (a cover) seen again.

mod codec;
mod features;
mod framing;
mod homography;
mod matching;
mod orb;
pub mod sift;
mod verifier;
pub mod vocabulary;
mod word_index;

pub use codec::{encoded_len, stored_kind, CodecError};
pub use features::{
    extract, extract_rgb, Descriptors, ExtractParams, FeatureKind, Keypoint, LocalFeatures,
};
pub use framing::{framing, Framing};
pub use homography::{hull_area, ransac_homography, Found, Homography, RansacParams};
pub use matching::{match_features, Match};
pub use verifier::HomographyVerifier;
pub use vocabulary::{Norm, Vocabulary, VocabularyParams};
pub use word_index::{VisualWords, VocabularyFitter};

/// The outcome of verifying one reference against a query photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Matches consistent with the homography.
    pub inliers: usize,
    /// Ratio-test matches before the geometric check.
    pub matches: usize,
    /// Share of the reference's area spanned by the inliers (0..1): a shared logo spans
    /// little, the same cover most of it.
    pub coverage: f64,
    /// Reference coordinates → query coordinates, when one was found.
    pub homography: Option<Homography>,
    /// Where the reference's outline lies in the photo, when a homography was found.
    pub framing: Option<Framing>,
}

impl Verification {
    /// The evidence the verdict rule reads; `reference` is what was verified (its size
    /// gives the located outline's corners).
    pub fn evidence(&self, reference: &LocalFeatures) -> exemplar_core::Evidence {
        exemplar_core::Evidence {
            inliers: self.inliers as u32,
            matches: self.matches as u32,
            coverage: self.coverage as f32,
            quadrilateral: self
                .homography
                .and_then(|h| h.quadrilateral(reference.width, reference.height))
                .map(|q| q.map(|(x, y)| [x as f32, y as f32])),
            in_frame: self.framing.map_or(0.0, |f| f.in_frame as f32),
            centred: self.framing.is_some_and(|f| f.centred),
        }
    }
}

/// Matches `query` against `reference` and checks the matches for one homography.
pub fn verify(
    query: &LocalFeatures,
    reference: &LocalFeatures,
    params: &RansacParams,
) -> Verification {
    let matches = match_features(reference, query, 0.8);
    let found = ransac_homography(reference, query, &matches, params);
    let outline = found.as_ref().and_then(|f| {
        f.homography
            .quadrilateral(reference.width, reference.height)
    });
    Verification {
        inliers: found.as_ref().map_or(0, |f| f.inliers),
        matches: matches.len(),
        coverage: found.as_ref().map_or(0.0, |f| f.coverage),
        homography: found.map(|f| f.homography),
        // Judged in the part of the photo the query's features were found in.
        framing: outline.map(|q| {
            let (ox, oy) = (query.origin.0 as f64, query.origin.1 as f64);
            framing(&q.map(|(x, y)| (x - ox, y - oy)), query.width, query.height)
        }),
    }
}
