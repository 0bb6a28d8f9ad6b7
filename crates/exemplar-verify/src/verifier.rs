//! [`exemplar_core::verifier::Verifier`] over the stored form of ORB-like features.

use crate::{verify, LocalFeatures, RansacParams};
use exemplar_core::verifier::{Evidence, Verifier};
use rayon::prelude::*;

/// Verifies with a RANSAC homography; references are checked in parallel.
#[derive(Debug, Clone, Default)]
pub struct HomographyVerifier {
    pub ransac: RansacParams,
}

impl Verifier for HomographyVerifier {
    fn verify(&self, query: &[u8], references: &[&[u8]]) -> Vec<Evidence> {
        let Ok(query) = LocalFeatures::from_bytes(query) else {
            tracing::warn!("query local features unreadable: nothing verified");
            return vec![Evidence::default(); references.len()];
        };
        references
            .par_iter()
            .map(|bytes| {
                let Ok(reference) = LocalFeatures::from_bytes(bytes) else {
                    return Evidence::default();
                };
                let v = verify(&query, &reference, &self.ransac);
                Evidence {
                    inliers: v.inliers as u32,
                    matches: v.matches as u32,
                    coverage: v.coverage as f32,
                    quadrilateral: v
                        .homography
                        .and_then(|h| h.quadrilateral(reference.width, reference.height))
                        .map(|q| q.map(|(x, y)| [x as f32, y as f32])),
                }
            })
            .collect()
    }
}
