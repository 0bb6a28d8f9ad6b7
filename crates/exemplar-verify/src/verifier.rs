//! [`exemplar_core::verifier::Verifier`] over the stored form of local features.

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
                verify(&query, &reference, &self.ransac).evidence(&reference)
            })
            .collect()
    }
}
