//! The second retrieval stage's contract: a [`Verifier`] checks whether a reference is
//! really seen in a query photo, from local features both were given at extraction
//! ([`crate::Extracted::local`]); the [`VerdictRule`] turns that evidence into `match` or
//! `unknown`. The bytes are opaque here: their format belongs to the implementation.

/// Geometric evidence that a reference appears in the query photo.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evidence {
    /// Local matches consistent with one plane-to-plane mapping.
    pub inliers: u32,
    /// Local matches before the geometric check.
    pub matches: u32,
    /// Share of the reference's area spanned by the inliers (0..1).
    pub coverage: f32,
    /// The reference's corners in the query photo (pixels, clockwise from top-left).
    pub quadrilateral: Option<[[f32; 2]; 4]>,
    /// Share of that outline's area inside the photo (0..1; 0 without an outline).
    pub in_frame: f32,
    /// The outline contains the photo's centre.
    pub centred: bool,
}

/// Spatial verification of shortlisted references against a query.
pub trait Verifier: Send + Sync + 'static {
    /// One [`Evidence`] per reference, in order (default evidence when a reference's
    /// bytes cannot be read). Blocking and CPU-heavy; may use every core.
    fn verify(&self, query: &[u8], references: &[&[u8]]) -> Vec<Evidence>;
}

/// When the best class is named rather than `unknown`.
///
/// With a verifier: the class's best exemplar must be verified (at least `min_inliers`
/// inliers spanning at least `min_coverage` of it) and framed as the photo's subject
/// (`min_in_frame`, `min_in_frame_off_centre`); the global score decides nothing.
/// Without one (global-only service): a class must be close (`accept_score`) and clearly
/// ahead of the next (`min_margin`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerdictRule {
    pub min_inliers: u32,
    pub min_coverage: f32,
    /// Share of the located outline that must lie inside the photo...
    pub min_in_frame: f32,
    /// ...and when the outline misses the photo's centre: a cover the photo cuts off at
    /// its edge, away from the centre, is a neighbour of the one photographed (at 0.99, an
    /// off-centre cover must be whole in the photo).
    pub min_in_frame_off_centre: f32,
    pub accept_score: f32,
    pub min_margin: f32,
}

impl Default for VerdictRule {
    /// 25 inliers (of SIFT features) spanning 5 % of the reference, half of it in the
    /// frame (all of it, 99 %, when it misses the centre): chosen with `exemplar
    /// calibrate` on SMVS-dev with 1,076 distractors (docs/benchmarks.md).
    fn default() -> Self {
        Self {
            min_inliers: 25,
            min_coverage: 0.05,
            min_in_frame: 0.5,
            min_in_frame_off_centre: 0.99,
            accept_score: 0.85,
            min_margin: 0.05,
        }
    }
}

impl VerdictRule {
    /// True when this evidence verifies its reference.
    pub fn verified(&self, evidence: &Evidence) -> bool {
        evidence.inliers >= self.min_inliers
            && evidence.coverage >= self.min_coverage
            && self.framed(evidence)
    }

    /// True when the photo frames the located reference as its subject.
    pub fn framed(&self, evidence: &Evidence) -> bool {
        let needed = if evidence.centred {
            self.min_in_frame
        } else {
            self.min_in_frame.max(self.min_in_frame_off_centre)
        };
        evidence.in_frame >= needed
    }
}

/// Verifying a shortlist chunk by chunk, in global order, and stopping once a candidate
/// is verified beyond doubt: most photos are settled by their first chunk, and a later,
/// globally less similar candidate rarely beats such evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStop {
    /// Candidates verified together (in parallel) before the next check.
    pub chunk: usize,
    /// Evidence that settles the search: at least this many inliers...
    pub inliers: u32,
    /// ...spanning at least this share of the reference.
    pub coverage: f32,
}

impl EarlyStop {
    pub fn settles(&self, evidence: &Evidence) -> bool {
        evidence.inliers >= self.inliers && evidence.coverage >= self.coverage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_needs_both_inliers_and_coverage() {
        let rule = VerdictRule {
            min_coverage: 0.1,
            ..VerdictRule::default()
        };
        let seen = |inliers, coverage| Evidence {
            inliers,
            coverage,
            in_frame: 1.0,
            ..Evidence::default()
        };
        let enough = rule.min_inliers;
        assert!(rule.verified(&seen(enough, 0.1)));
        assert!(!rule.verified(&seen(enough - 1, 0.9)));
        assert!(!rule.verified(&seen(200, 0.09)));
    }

    #[test]
    fn a_cover_cut_off_by_the_photo_must_be_centred() {
        let rule = VerdictRule::default();
        let seen = |in_frame, centred| Evidence {
            inliers: 100,
            coverage: 0.5,
            in_frame,
            centred,
            ..Evidence::default()
        };
        // Whole in the photo, anywhere in it.
        assert!(rule.verified(&seen(1.0, false)));
        // Cut by the edge: only as the photo's subject (a close-up), at least half visible.
        assert!(rule.verified(&seen(0.69, true)));
        assert!(!rule.verified(&seen(0.98, false)));
        assert!(!rule.verified(&seen(0.4, true)));
        // No outline located: nothing in the frame.
        assert!(!rule.verified(&Evidence {
            inliers: 100,
            coverage: 0.5,
            ..Evidence::default()
        }));
    }
}
