//! RANSAC over 4-point homographies: the largest set of matches that one plane-to-plane
//! mapping explains. A cover seen in a photo is such a plane.

use crate::matching::Match;
use crate::LocalFeatures;

/// Row-major 3x3, mapping reference pixels to query pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    pub fn apply(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let h = &self.0;
        let w = h[6] * x + h[7] * y + h[8];
        if w.abs() < 1e-12 {
            return None;
        }
        Some((
            (h[0] * x + h[1] * y + h[2]) / w,
            (h[3] * x + h[4] * y + h[5]) / w,
        ))
    }

    /// The reference image's corners in the query photo (clockwise from top-left).
    pub fn quadrilateral(&self, width: u32, height: u32) -> Option<[(f64, f64); 4]> {
        let (w, h) = (width as f64, height as f64);
        Some([
            self.apply(0.0, 0.0)?,
            self.apply(w, 0.0)?,
            self.apply(w, h)?,
            self.apply(0.0, h)?,
        ])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RansacParams {
    pub iterations: usize,
    /// Reprojection error allowed, as a fraction of the query photo's diagonal.
    pub threshold: f64,
    /// Fewer inliers than this is no evidence at all.
    pub min_inliers: usize,
    pub seed: u64,
}

impl Default for RansacParams {
    fn default() -> Self {
        Self {
            iterations: 1000,
            threshold: 0.01,
            min_inliers: 8,
            seed: 0x5eed,
        }
    }
}

/// The homography through four point pairs (h33 = 1), if they are not degenerate.
fn from_four(src: &[(f64, f64); 4], dst: &[(f64, f64); 4]) -> Option<Homography> {
    exemplar_core::linalg::homography_from_four(src, dst).map(Homography)
}

/// A physically possible view of a flat reference: its outline stays a convex,
/// unmirrored quadrilateral of reasonable size.
fn plausible(h: &Homography, reference: &LocalFeatures, query: &LocalFeatures) -> bool {
    let Some(q) = h.quadrilateral(reference.width, reference.height) else {
        return false;
    };
    let cross = |a: (f64, f64), b: (f64, f64), c: (f64, f64)| {
        (b.0 - a.0) * (c.1 - b.1) - (b.1 - a.1) * (c.0 - b.0)
    };
    let turns: Vec<f64> = (0..4)
        .map(|i| cross(q[i], q[(i + 1) % 4], q[(i + 2) % 4]))
        .collect();
    if !turns.iter().all(|t| *t > 0.0) {
        return false;
    }
    let area = 0.5
        * (0..4)
            .map(|i| q[i].0 * q[(i + 1) % 4].1 - q[(i + 1) % 4].0 * q[i].1)
            .sum::<f64>()
            .abs();
    let photo = query.width as f64 * query.height as f64;
    area > photo * 0.005 && area < photo * 25.0
}

/// Area of the convex hull of points (Andrew's monotone chain).
pub fn hull_area(points: &[(f64, f64)]) -> f64 {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    if p.len() < 3 {
        return 0.0;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(2 * p.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(p.iter())
        } else {
            Box::new(p.iter().rev())
        };
        for &pt in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], pt) <= 0.0
            {
                hull.pop();
            }
            hull.push(pt);
        }
        hull.pop();
    }
    0.5 * (0..hull.len())
        .map(|i| {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f64>()
        .abs()
}

/// What RANSAC found: the mapping, how many matches agree, and how much of the
/// reference those matches span (convex hull area / reference area).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub homography: Homography,
    pub inliers: usize,
    pub coverage: f64,
}

/// The best homography and its inliers, when it has at least `min_inliers`.
pub fn ransac_homography(
    reference: &LocalFeatures,
    query: &LocalFeatures,
    matches: &[Match],
    params: &RansacParams,
) -> Option<Found> {
    if matches.len() < params.min_inliers.max(4) {
        return None;
    }
    let point = |f: &LocalFeatures, i: usize| (f.keypoints[i].x as f64, f.keypoints[i].y as f64);
    let src: Vec<(f64, f64)> = matches.iter().map(|m| point(reference, m.from)).collect();
    let dst: Vec<(f64, f64)> = matches.iter().map(|m| point(query, m.to)).collect();
    let diagonal = (query.width as f64).hypot(query.height as f64);
    let limit = (params.threshold * diagonal).powi(2);
    let count = |h: &Homography| {
        src.iter()
            .zip(&dst)
            .filter(|(s, d)| {
                h.apply(s.0, s.1)
                    .is_some_and(|p| (p.0 - d.0).powi(2) + (p.1 - d.1).powi(2) <= limit)
            })
            .count()
    };
    let mut state = params.seed | 1;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut best: Option<(Homography, usize)> = None;
    for _ in 0..params.iterations {
        let mut pick = [0usize; 4];
        for i in 0..4 {
            loop {
                let j = next(src.len());
                if !pick[..i].contains(&j) {
                    pick[i] = j;
                    break;
                }
            }
        }
        let s = [src[pick[0]], src[pick[1]], src[pick[2]], src[pick[3]]];
        let d = [dst[pick[0]], dst[pick[1]], dst[pick[2]], dst[pick[3]]];
        let Some(h) = from_four(&s, &d) else { continue };
        if !plausible(&h, reference, query) {
            continue;
        }
        let inliers = count(&h);
        if best.as_ref().is_none_or(|(_, n)| inliers > *n) {
            best = Some((h, inliers));
        }
    }
    let (homography, inliers) = best.filter(|(_, n)| *n >= params.min_inliers)?;
    let agreeing: Vec<(f64, f64)> = src
        .iter()
        .zip(&dst)
        .filter(|(s, d)| {
            homography
                .apply(s.0, s.1)
                .is_some_and(|p| (p.0 - d.0).powi(2) + (p.1 - d.1).powi(2) <= limit)
        })
        .map(|(s, _)| *s)
        .collect();
    let area = reference.width as f64 * reference.height as f64;
    Some(Found {
        homography,
        inliers,
        coverage: hull_area(&agreeing) / area.max(1.0),
    })
}
