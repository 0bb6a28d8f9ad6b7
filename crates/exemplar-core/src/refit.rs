//! When to (re)fit the projection on the catalogue.
//!
//! Measured on INRIA Holidays (docs/benchmarks.md): a data-free projection costs ~0.06 mAP
//! against a PCA fitted on the catalogue itself, and power-whitening adds a little more. A fit on
//! too few exemplars is worse than none (the tail components are noise that whitening
//! amplifies), and each refit re-projects every stored feature and rebuilds the index, so
//! refits happen when the catalogue is big enough and then each time it has grown by a
//! factor, which bounds their number to log(size).

use crate::projection::{Projection, ProjectionKind};

/// Source tag of projections fitted on the catalogue's own raw features.
pub const CATALOGUE_SOURCE: &str = "catalogue";

#[derive(Debug, Clone, PartialEq)]
pub struct RefitPolicy {
    /// No fit below this many exemplars (default 2 x 256).
    pub min_exemplars: usize,
    /// Refit when the catalogue has grown by this factor since the last fit.
    pub growth_factor: f64,
    /// Power whitening of the fitted PCA (0.5 measured best on Holidays, docs/benchmarks.md).
    pub whitening: f32,
    /// A fit uses at most this many exemplars (evenly spread over the catalogue); once a
    /// fit has used that many, more data would not change it and refits stop.
    pub max_samples: usize,
}

impl Default for RefitPolicy {
    fn default() -> Self {
        Self {
            min_exemplars: 512,
            growth_factor: 2.0,
            whitening: 0.5,
            max_samples: 50_000,
        }
    }
}

impl RefitPolicy {
    pub fn should_refit(&self, current: &Projection, exemplars: usize) -> bool {
        let floor = self
            .min_exemplars
            .max(Projection::min_samples_for(current.output_dim()));
        if exemplars < floor {
            return false;
        }
        match current.kind() {
            ProjectionKind::Pca {
                source, samples, ..
            } if source == CATALOGUE_SOURCE => {
                *samples < self.max_samples
                    && exemplars as f64 >= *samples as f64 * self.growth_factor
            }
            // A learned head stays until the catalogue has outgrown what it was trained
            // on by the same factor; then a PCA refit replaces it (train again to learn
            // one on the grown catalogue).
            ProjectionKind::Learned {
                exemplars: trained_on,
                ..
            } => exemplars as f64 >= *trained_on as f64 * self.growth_factor,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refits_once_big_enough_then_on_growth() {
        let policy = RefitPolicy {
            min_exemplars: 20,
            growth_factor: 2.0,
            max_samples: 40,
            ..RefitPolicy::default()
        };
        let data_free = Projection::random_orthogonal(16, 4, 0);
        assert!(!policy.should_refit(&data_free, 19));
        assert!(policy.should_refit(&data_free, 20));

        let samples: Vec<Vec<f32>> = (0..25)
            .map(|i| (0..16).map(|j| ((i * 7 + j * 3) % 11) as f32).collect())
            .collect();
        let refs: Vec<&[f32]> = samples.iter().map(Vec::as_slice).collect();
        let fitted = Projection::fit_pca(&refs, 4, 0.5, CATALOGUE_SOURCE).unwrap();
        assert!(!policy.should_refit(&fitted, 49));
        assert!(policy.should_refit(&fitted, 50));
        // A fit on max_samples is final.
        let samples: Vec<Vec<f32>> = (0..40)
            .map(|i| (0..16).map(|j| ((i * 5 + j * 3) % 13) as f32).collect())
            .collect();
        let refs: Vec<&[f32]> = samples.iter().map(Vec::as_slice).collect();
        let capped = Projection::fit_pca(&refs, 4, 0.5, CATALOGUE_SOURCE).unwrap();
        assert!(!policy.should_refit(&capped, 1000));

        // A PCA that came from elsewhere (e.g. the model's classifier) is replaced as soon
        // as the catalogue is big enough.
        let prior = Projection::fit_pca(&refs, 4, 0.5, "classifier-weights").unwrap();
        assert!(policy.should_refit(&prior, 20));

        // A learned head stays until the catalogue doubles past what it was trained on.
        let learned = Projection::linear(
            ProjectionKind::Learned {
                base: capped.version().into(),
                exemplars: 30,
                views: 8,
                loss: "info-nce".into(),
                seed: 0,
            },
            capped.mean().to_vec(),
            capped.matrix().to_vec(),
        )
        .unwrap();
        assert!(!policy.should_refit(&learned, 59));
        assert!(policy.should_refit(&learned, 60));
    }
}
