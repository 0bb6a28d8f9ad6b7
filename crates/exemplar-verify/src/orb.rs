//! Oriented FAST keypoints and rotated BRIEF descriptors on an image pyramid (the ORB
//! recipe): cheap to compute, 32 bytes per keypoint, and tolerant of the scale, rotation
//! and lighting changes between a catalogue scan and a phone photo of the same cover,
//! but not of a small, blurred one (see [`crate::sift`]).

use crate::features::{Descriptors, ExtractParams, Keypoint, LocalFeatures};
use image::imageops::{self, FilterType};
use image::GrayImage;
use rayon::prelude::*;

/// Half-size of the descriptor patch; keypoints closer than this (plus rotation room)
/// to a level's border are dropped.
const PATCH_RADIUS: i32 = 15;
const BORDER: i32 = 20;
const DESCRIPTOR_BITS: usize = 256;
/// The 16-pixel Bresenham circle of radius 3, clockwise from the top.
const CIRCLE: [(i32, i32); 16] = [
    (0, -3),
    (1, -3),
    (2, -2),
    (3, -1),
    (3, 0),
    (3, 1),
    (2, 2),
    (1, 3),
    (0, 3),
    (-1, 3),
    (-2, 2),
    (-3, 1),
    (-3, 0),
    (-3, -1),
    (-2, -2),
    (-1, -3),
];

/// FAST-9 score at (x, y): 0 when it is not a corner, else the summed contrast of the
/// pixels beyond the threshold.
fn fast_score(img: &GrayImage, x: i32, y: i32, t: i16) -> u32 {
    let at = |dx: i32, dy: i32| img.get_pixel((x + dx) as u32, (y + dy) as u32)[0] as i16;
    let p = at(0, 0);
    // Quick rejection: of the four compass pixels, at least three must pass for 9 in a row.
    let compass = [at(0, -3), at(3, 0), at(0, 3), at(-3, 0)];
    let brighter = compass.iter().filter(|&&v| v > p + t).count();
    let darker = compass.iter().filter(|&&v| v < p - t).count();
    if brighter < 2 && darker < 2 {
        return 0;
    }
    let ring: Vec<i16> = CIRCLE.iter().map(|&(dx, dy)| at(dx, dy)).collect();
    let mut best = 0u32;
    for sign in [1i16, -1] {
        let pass = |v: i16| (v - p) * sign > t;
        let mut run = 0;
        let mut longest = 0;
        for i in 0..32 {
            if pass(ring[i % 16]) {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        if longest >= 9 {
            let score: u32 = ring
                .iter()
                .filter(|&&v| pass(v))
                .map(|&v| ((v - p) * sign - t) as u32)
                .sum();
            best = best.max(score);
        }
    }
    best
}

/// Corners of one level with 3x3 non-maximum suppression, strongest first.
fn corners(img: &GrayImage, threshold: u8, keep: usize) -> Vec<(i32, i32, u32)> {
    let (w, h) = (img.width() as i32, img.height() as i32);
    if w <= 2 * BORDER || h <= 2 * BORDER {
        return Vec::new();
    }
    let t = threshold as i16;
    let rows: Vec<Vec<u32>> = (0..h)
        .into_par_iter()
        .map(|y| {
            (0..w)
                .map(|x| {
                    if y < BORDER - 1 || y > h - BORDER || x < BORDER - 1 || x > w - BORDER {
                        0
                    } else {
                        fast_score(img, x, y, t)
                    }
                })
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for y in BORDER..h - BORDER {
        for x in BORDER..w - BORDER {
            let s = rows[y as usize][x as usize];
            if s == 0 {
                continue;
            }
            let is_max = (-1..=1).all(|dy: i32| {
                (-1..=1).all(|dx: i32| {
                    (dx == 0 && dy == 0)
                        || rows[(y + dy) as usize][(x + dx) as usize] < s
                        || (rows[(y + dy) as usize][(x + dx) as usize] == s && (dy, dx) > (0, 0))
                })
            });
            if is_max {
                out.push((x, y, s));
            }
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.2));
    out.truncate(keep);
    out
}

/// Orientation by the intensity centroid of the patch.
fn orientation(img: &GrayImage, x: i32, y: i32) -> f32 {
    let (mut m10, mut m01) = (0f32, 0f32);
    for dy in -PATCH_RADIUS..=PATCH_RADIUS {
        for dx in -PATCH_RADIUS..=PATCH_RADIUS {
            if dx * dx + dy * dy > PATCH_RADIUS * PATCH_RADIUS {
                continue;
            }
            let v = img.get_pixel((x + dx) as u32, (y + dy) as u32)[0] as f32;
            m10 += dx as f32 * v;
            m01 += dy as f32 * v;
        }
    }
    m01.atan2(m10)
}

/// The 256 test pairs: a fixed Gaussian pattern (seeded), kept within the patch.
fn pattern() -> &'static [(f32, f32, f32, f32); DESCRIPTOR_BITS] {
    static PATTERN: std::sync::OnceLock<[(f32, f32, f32, f32); DESCRIPTOR_BITS]> =
        std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let sigma = (2 * PATCH_RADIUS + 1) as f64 / 5.0;
        let limit = 13.0;
        let mut gaussian = || loop {
            // Box-Muller, clipped so a rotated point stays inside the patch.
            let (u, v) = (uniform().max(1e-12), uniform());
            let g = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * sigma;
            if g.abs() <= limit {
                return g as f32;
            }
        };
        let mut out = [(0f32, 0f32, 0f32, 0f32); DESCRIPTOR_BITS];
        for pair in out.iter_mut() {
            *pair = (gaussian(), gaussian(), gaussian(), gaussian());
        }
        out
    })
}

fn describe(smooth: &GrayImage, x: i32, y: i32, angle: f32) -> [u64; 4] {
    let (sin, cos) = angle.sin_cos();
    let at = |px: f32, py: f32| {
        let rx = (px * cos - py * sin).round() as i32;
        let ry = (px * sin + py * cos).round() as i32;
        smooth.get_pixel((x + rx) as u32, (y + ry) as u32)[0]
    };
    let mut bits = [0u64; 4];
    for (i, &(x1, y1, x2, y2)) in pattern().iter().enumerate() {
        if at(x1, y1) < at(x2, y2) {
            bits[i / 64] |= 1 << (i % 64);
        }
    }
    bits
}

pub(crate) fn extract(
    (w0, h0): (u32, u32),
    base: &GrayImage,
    params: &ExtractParams,
) -> LocalFeatures {
    // Keypoint budget per level, proportional to its area.
    let weights: Vec<f32> = (0..params.levels)
        .map(|l| params.scale.powi(-2 * l as i32))
        .collect();
    let total: f32 = weights.iter().sum();
    let levels: Vec<(usize, GrayImage)> = (0..params.levels)
        .map(|l| {
            let f = params.scale.powi(l as i32);
            let (w, h) = (
                (base.width() as f32 / f).round() as u32,
                (base.height() as f32 / f).round() as u32,
            );
            let img = if l == 0 {
                base.clone()
            } else {
                imageops::resize(base, w.max(1), h.max(1), FilterType::Triangle)
            };
            (l, img)
        })
        .collect();
    let per_level: Vec<(Vec<Keypoint>, Vec<[u64; 4]>)> = levels
        .par_iter()
        .map(|(l, img)| {
            let keep = (params.max_keypoints as f32 * weights[*l] / total).ceil() as usize;
            let found = corners(img, params.fast_threshold, keep);
            let smooth = imageops::blur(img, 2.0);
            // Level pixels → pixels of the photo as given.
            let (sx, sy) = (
                w0 as f32 / img.width() as f32,
                h0 as f32 / img.height() as f32,
            );
            let mut keypoints = Vec::with_capacity(found.len());
            let mut descriptors = Vec::with_capacity(found.len());
            for (x, y, score) in found {
                let angle = orientation(&smooth, x, y);
                descriptors.push(describe(&smooth, x, y, angle));
                keypoints.push(Keypoint {
                    x: (x as f32 + 0.5) * sx - 0.5,
                    y: (y as f32 + 0.5) * sy - 0.5,
                    angle,
                    level: *l as u8,
                    response: score as f32,
                });
            }
            (keypoints, descriptors)
        })
        .collect();
    let (mut keypoints, mut descriptors) = (Vec::new(), Vec::new());
    for (k, d) in per_level {
        keypoints.extend(k);
        descriptors.extend(d);
    }
    // Each level's share is rounded up: trim the few extra (from the coarsest level) so
    // the stored size stays bounded.
    keypoints.truncate(params.max_keypoints);
    descriptors.truncate(params.max_keypoints);
    LocalFeatures {
        width: w0,
        height: h0,
        origin: (0, 0),
        keypoints,
        descriptors: Descriptors::Orb(descriptors),
    }
}
