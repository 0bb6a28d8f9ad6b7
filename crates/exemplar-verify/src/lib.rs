//! Geometric verification of a retrieval shortlist: oriented FAST keypoints with rotated
//! BRIEF descriptors (ORB-like) on an image pyramid, Hamming matching with a ratio test,
//! and a RANSAC homography. A reference that shares many geometrically consistent
//! matches with the query photo is the same planar thing (a cover) seen again.

mod codec;
mod features;
mod homography;
mod matching;
mod verifier;

pub use codec::{encoded_len, CodecError};
pub use features::{extract, extract_rgb, ExtractParams, Keypoint, LocalFeatures};
pub use homography::{hull_area, ransac_homography, Found, Homography, RansacParams};
pub use matching::{match_features, Match};
pub use verifier::HomographyVerifier;

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
}

/// Matches `query` against `reference` and checks the matches for one homography.
pub fn verify(
    query: &LocalFeatures,
    reference: &LocalFeatures,
    params: &RansacParams,
) -> Verification {
    let matches = match_features(reference, query, 0.8);
    let found = ransac_homography(reference, query, &matches, params);
    Verification {
        inliers: found.as_ref().map_or(0, |f| f.inliers),
        matches: matches.len(),
        coverage: found.as_ref().map_or(0.0, |f| f.coverage),
        homography: found.map(|f| f.homography),
    }
}
