//! SIFT keypoints (Lowe 2004: extrema of a difference-of-Gaussians scale space, refined
//! to sub-pixel position and scale, dominant gradient orientations) with RootSIFT
//! descriptors (Arandjelović & Zisserman 2012) quantised to bytes. Slower to compute
//! and to match than ORB, but a blob found at its own scale, described by smoothed
//! gradients, survives what ORB's corner tests do not: a cover a fifth of the photo's
//! width, blurred, seen against its sharp 640-pixel scan.

use image::GrayImage;
use rayon::prelude::*;

/// Scale levels per octave searched for extrema.
const LAYERS: usize = 3;
/// Blur of each octave's first image.
const SIGMA: f32 = 1.6;
/// Blur a camera image is assumed to have already.
const INITIAL_SIGMA: f32 = 0.5;
/// Extrema weaker than this (image in 0..1, divided by `LAYERS`) are noise. Half of
/// Lowe's 0.04: a 640-pixel cover scan then gives ~460 keypoints instead of ~410, and
/// SMVS photos verify better (top-1 against the 50 covers 0.975 → 0.99, docs/benchmarks.md).
const CONTRAST: f32 = 0.02;
/// Ratio of principal curvatures above which an extremum lies on an edge.
const EDGE_RATIO: f32 = 10.0;
const ORIENTATION_BINS: usize = 36;
/// 4x4 cells of 8 orientation bins.
pub const DESCRIPTOR_LEN: usize = 128;

/// One SIFT keypoint in the pixels of the image given to [`detect`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiftPoint {
    pub x: f32,
    pub y: f32,
    /// Blur (sigma) of the keypoint's scale, in the same pixels.
    pub size: f32,
    pub angle: f32,
    pub response: f32,
}

/// A row-major single-channel float image.
#[derive(Clone)]
struct Plane {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Plane {
    #[inline(always)]
    fn at(&self, x: usize, y: usize) -> f32 {
        self.px[y * self.w + x]
    }

    /// Every second pixel: the next octave starts from the image blurred twice as much.
    fn halve(&self) -> Plane {
        let (w, h) = (self.w / 2, self.h / 2);
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                px.push(self.at(2 * x, 2 * y));
            }
        }
        Plane { w, h, px }
    }

    fn difference(&self, other: &Plane) -> Plane {
        Plane {
            w: self.w,
            h: self.h,
            px: self.px.iter().zip(&other.px).map(|(a, b)| a - b).collect(),
        }
    }
}

/// Separable Gaussian blur with mirrored borders.
fn blur(src: &Plane, sigma: f32) -> Plane {
    let radius = ((3.0 * sigma).ceil() as usize).max(1);
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let (w, h) = (src.w, src.h);
    let mirror = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if i < 0 {
            i = -i - 1;
        }
        if i >= n {
            i = 2 * n - i - 1;
        }
        i.clamp(0, n - 1) as usize
    };
    let mut horizontal = vec![0f32; w * h];
    horizontal
        .par_chunks_mut(w)
        .enumerate()
        .for_each(|(y, row)| {
            let line = &src.px[y * w..(y + 1) * w];
            // Interior pixels tap by tap across the row (the loops vectorise), in the
            // same order of additions as the border pixels below.
            if w > 2 * radius {
                let interior = &mut row[radius..w - radius];
                for (i, k) in kernel.iter().enumerate() {
                    let taps = &line[i..i + interior.len()];
                    if i == 0 {
                        for (out, v) in interior.iter_mut().zip(taps) {
                            *out = k * v;
                        }
                    } else {
                        for (out, v) in interior.iter_mut().zip(taps) {
                            *out += k * v;
                        }
                    }
                }
            }
            for x in (0..w).filter(|&x| x < radius || x + radius >= w) {
                let mut acc = 0.0;
                for (i, k) in kernel.iter().enumerate() {
                    acc += k * line[mirror(x as isize + i as isize - radius as isize, w)];
                }
                row[x] = acc;
            }
        });
    let mut px = vec![0f32; w * h];
    px.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let line = |i: usize| {
            let sy = mirror(y as isize + i as isize - radius as isize, h);
            &horizontal[sy * w..(sy + 1) * w]
        };
        // The first tap is written, not added: fresh zeroed pages written before they
        // are read need no copy-on-write fault (whose TLB flush cost a fifth of the time).
        for (out, v) in row.iter_mut().zip(line(0)) {
            *out = kernel[0] * v;
        }
        for (i, k) in kernel.iter().enumerate().skip(1) {
            for (out, v) in row.iter_mut().zip(line(i)) {
                *out += k * v;
            }
        }
    });
    Plane { w, h, px }
}

/// The Gaussian and difference-of-Gaussian images of every octave.
struct ScaleSpace {
    gaussians: Vec<Vec<Plane>>,
    dogs: Vec<Vec<Plane>>,
}

fn scale_space(image: Plane) -> ScaleSpace {
    let octaves = {
        let short = image.w.min(image.h) as f32;
        ((short / 16.0).log2().floor() as usize + 1).max(1)
    };
    // Blur added from one image of an octave to the next.
    let k = 2f32.powf(1.0 / LAYERS as f32);
    let steps: Vec<f32> = (1..LAYERS + 3)
        .map(|i| {
            let previous = SIGMA * k.powi(i as i32 - 1);
            let total = previous * k;
            (total * total - previous * previous).sqrt()
        })
        .collect();
    let mut first = Some(blur(
        &image,
        (SIGMA * SIGMA - INITIAL_SIGMA * INITIAL_SIGMA).sqrt(),
    ));
    let mut gaussians: Vec<Vec<Plane>> = Vec::with_capacity(octaves);
    for o in 0..octaves {
        // Each next octave starts from the image blurred twice as much as the first.
        let base = match first.take() {
            Some(image) => image,
            None => gaussians[o - 1][LAYERS].halve(),
        };
        let mut octave = vec![base];
        for s in &steps {
            let next = blur(octave.last().expect("one image"), *s);
            octave.push(next);
        }
        gaussians.push(octave);
    }
    let dogs = gaussians
        .iter()
        .map(|g| g.windows(2).map(|p| p[1].difference(&p[0])).collect())
        .collect();
    ScaleSpace { gaussians, dogs }
}

/// Refines an extremum at (x, y, layer) of one octave's DoG stack to sub-pixel position
/// and scale; `None` when it drifts out, is too weak or lies on an edge.
fn refine(dogs: &[Plane], x: usize, y: usize, layer: usize) -> Option<(f32, f32, f32, f32)> {
    let (mut x, mut y, mut layer) = (x as isize, y as isize, layer as isize);
    let (w, h) = (dogs[0].w as isize, dogs[0].h as isize);
    for _ in 0..5 {
        let v = |dx: isize, dy: isize, dl: isize| {
            dogs[(layer + dl) as usize].at((x + dx) as usize, (y + dy) as usize)
        };
        let c = v(0, 0, 0);
        let g = [
            (v(1, 0, 0) - v(-1, 0, 0)) * 0.5,
            (v(0, 1, 0) - v(0, -1, 0)) * 0.5,
            (v(0, 0, 1) - v(0, 0, -1)) * 0.5,
        ];
        let dxx = v(1, 0, 0) + v(-1, 0, 0) - 2.0 * c;
        let dyy = v(0, 1, 0) + v(0, -1, 0) - 2.0 * c;
        let dss = v(0, 0, 1) + v(0, 0, -1) - 2.0 * c;
        let dxy = (v(1, 1, 0) - v(-1, 1, 0) - v(1, -1, 0) + v(-1, -1, 0)) * 0.25;
        let dxs = (v(1, 0, 1) - v(-1, 0, 1) - v(1, 0, -1) + v(-1, 0, -1)) * 0.25;
        let dys = (v(0, 1, 1) - v(0, -1, 1) - v(0, 1, -1) + v(0, -1, -1)) * 0.25;
        let hessian =
            nalgebra::Matrix3::new(dxx, dxy, dxs, dxy, dyy, dys, dxs, dys, dss).map(|v| v as f64);
        let offset = hessian
            .lu()
            .solve(&nalgebra::Vector3::new(g[0], g[1], g[2]).map(|v| -(v as f64)))?;
        let offset = offset.map(|v| v as f32);
        if offset.iter().all(|o| o.abs() < 0.5) {
            let contrast = c + 0.5 * (g[0] * offset[0] + g[1] * offset[1] + g[2] * offset[2]);
            if contrast.abs() * (LAYERS as f32) < CONTRAST {
                return None;
            }
            let trace = dxx + dyy;
            let det = dxx * dyy - dxy * dxy;
            if det <= 0.0 || trace * trace * EDGE_RATIO >= (EDGE_RATIO + 1.0).powi(2) * det {
                return None;
            }
            return Some((
                x as f32 + offset[0],
                y as f32 + offset[1],
                layer as f32 + offset[2],
                contrast.abs(),
            ));
        }
        if offset.iter().any(|o| o.abs() > 1e6) {
            return None;
        }
        x += offset[0].round() as isize;
        y += offset[1].round() as isize;
        layer += offset[2].round() as isize;
        if layer < 1 || layer > LAYERS as isize || x < 5 || y < 5 || x >= w - 5 || y >= h - 5 {
            return None;
        }
    }
    None
}

/// Gradient magnitude and angle at (x, y) of a Gaussian image (interior pixels only).
#[inline(always)]
fn gradient(p: &Plane, x: usize, y: usize) -> (f32, f32) {
    let dx = p.at(x + 1, y) - p.at(x - 1, y);
    let dy = p.at(x, y + 1) - p.at(x, y - 1);
    ((dx * dx + dy * dy).sqrt(), fast_atan2(dy, dx))
}

/// `y.atan2(x)` within 1e-5 radians (a polynomial; libm's is most of the descriptor
/// time, and the angles only pick histogram bins).
#[inline(always)]
fn fast_atan2(y: f32, x: f32) -> f32 {
    use std::f32::consts::{FRAC_PI_2, PI};
    let (ax, ay) = (x.abs(), y.abs());
    if ax == 0.0 && ay == 0.0 {
        return 0.0;
    }
    let z = ax.min(ay) / ax.max(ay);
    let z2 = z * z;
    let mut a = z
        * (0.999_866
            + z2 * (-0.330_299_5 + z2 * (0.180_141 + z2 * (-0.085_133 + z2 * 0.020_835_1))));
    if ay > ax {
        a = FRAC_PI_2 - a;
    }
    if x < 0.0 {
        a = PI - a;
    }
    if y < 0.0 {
        -a
    } else {
        a
    }
}

/// The dominant gradient orientations around a keypoint (peaks of a smoothed 36-bin
/// histogram within 80 % of the highest), in radians.
fn orientations(p: &Plane, x: f32, y: f32, sigma: f32) -> Vec<f32> {
    let weight_sigma = 1.5 * sigma;
    let radius = (3.0 * weight_sigma).round() as isize;
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    let mut hist = [0f32; ORIENTATION_BINS];
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            let (px, py) = (cx + dx, cy + dy);
            if px < 1 || py < 1 || px >= p.w as isize - 1 || py >= p.h as isize - 1 {
                continue;
            }
            let (m, a) = gradient(p, px as usize, py as usize);
            let wgt = (-((dx * dx + dy * dy) as f32) / (2.0 * weight_sigma * weight_sigma)).exp();
            // The nearest bin, wrapped (the angle is within ±π: the sum is positive and the
            // cast floors it; no libm `round` call on the baseline x86-64).
            let turns = a / std::f32::consts::TAU * ORIENTATION_BINS as f32;
            let bin = (turns + ORIENTATION_BINS as f32 + 0.5) as usize % ORIENTATION_BINS;
            hist[bin] += wgt * m;
        }
    }
    let n = ORIENTATION_BINS;
    let smooth: Vec<f32> = (0..n)
        .map(|i| {
            (hist[(i + n - 2) % n] + hist[(i + 2) % n]) / 16.0
                + (hist[(i + n - 1) % n] + hist[(i + 1) % n]) * 4.0 / 16.0
                + hist[i] * 6.0 / 16.0
        })
        .collect();
    let peak = smooth.iter().cloned().fold(0.0, f32::max);
    let mut out = Vec::new();
    for i in 0..n {
        let (l, c, r) = (smooth[(i + n - 1) % n], smooth[i], smooth[(i + 1) % n]);
        if c > l && c > r && c >= 0.8 * peak {
            let shift = 0.5 * (l - r) / (l - 2.0 * c + r);
            let bin = i as f32 + shift;
            out.push(bin / n as f32 * std::f32::consts::TAU);
        }
    }
    out
}

/// The 4x4x8 gradient histogram around a keypoint, rotated to its orientation, as
/// RootSIFT (L1-normalised, square-rooted) scaled to bytes.
fn describe(p: &Plane, x: f32, y: f32, sigma: f32, angle: f32) -> [u8; DESCRIPTOR_LEN] {
    const CELLS: usize = 4;
    const BINS: usize = 8;
    let cell = 3.0 * sigma;
    let radius = ((cell * std::f32::consts::SQRT_2 * (CELLS as f32 + 1.0) * 0.5).round() as isize)
        .min(((p.w * p.w + p.h * p.h) as f32).sqrt() as isize);
    let (sin, cos) = (angle).sin_cos();
    let mut hist = [0f32; (CELLS + 2) * (CELLS + 2) * (BINS + 2)];
    let index = |r: usize, c: usize, o: usize| (r * (CELLS + 2) + c) * (BINS + 2) + o;
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    let weight_scale = -1.0 / (0.5 * (CELLS * CELLS) as f32);
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            // Position in cell units, rotated into the keypoint's frame.
            let rx = (cos * dx as f32 + sin * dy as f32) / cell;
            let ry = (-sin * dx as f32 + cos * dy as f32) / cell;
            let (rbin, cbin) = (ry + CELLS as f32 / 2.0 - 0.5, rx + CELLS as f32 / 2.0 - 0.5);
            if rbin <= -1.0 || rbin >= CELLS as f32 || cbin <= -1.0 || cbin >= CELLS as f32 {
                continue;
            }
            let (px, py) = (cx + dx, cy + dy);
            if px < 1 || py < 1 || px >= p.w as isize - 1 || py >= p.h as isize - 1 {
                continue;
            }
            let (m, a) = gradient(p, px as usize, py as usize);
            let weight = ((rx * rx + ry * ry) * weight_scale).exp();
            // The gradient's angle relative to the keypoint's, in 0..2π.
            let mut turn = a - angle;
            while turn < 0.0 {
                turn += std::f32::consts::TAU;
            }
            let obin = turn / std::f32::consts::TAU * BINS as f32;
            let v = m * weight;
            // Trilinear spread over the neighbouring cells and orientation bins. The
            // cells are shifted by one (the histogram's margin): all three are positive,
            // so casts floor them (no libm `floor` call on the baseline x86-64).
            let (rs, cs) = (rbin + 1.0, cbin + 1.0);
            let (r0, c0, o0) = (rs as usize, cs as usize, obin as usize);
            let (fr, fc, fo) = (rs - r0 as f32, cs - c0 as f32, obin - o0 as f32);
            for (dr, wr) in [(0, 1.0 - fr), (1, fr)] {
                for (dc, wc) in [(0, 1.0 - fc), (1, fc)] {
                    for (dob, wo) in [(0, 1.0 - fo), (1, fo)] {
                        hist[index(r0 + dr, c0 + dc, o0 + dob)] += v * wr * wc * wo;
                    }
                }
            }
        }
    }
    let mut raw = [0f32; DESCRIPTOR_LEN];
    for r in 0..CELLS {
        for c in 0..CELLS {
            for o in 0..BINS + 2 {
                // Bins BINS and BINS+1 wrap around to 0 and 1.
                raw[(r * CELLS + c) * BINS + o % BINS] += hist[index(r + 1, c + 1, o)];
            }
        }
    }
    // Lowe's normalisation (unit length, large gradients clipped at 0.2), then RootSIFT:
    // each entry at most 0.2 of the L2 norm, so of the L1 norm, so its root is below
    // 0.45 and the byte below 115 (kept under 128 for the matcher's signed bytes).
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    raw.iter_mut().for_each(|v| *v = (*v / norm).min(0.2));
    let l1 = raw.iter().sum::<f32>().max(1e-12);
    let mut out = [0u8; DESCRIPTOR_LEN];
    for (o, v) in out.iter_mut().zip(raw) {
        *o = ((v / l1).sqrt() * 255.0).round().min(127.0) as u8;
    }
    out
}

/// SIFT keypoints and RootSIFT descriptors of `gray`, the strongest `max_keypoints`.
pub fn detect(gray: &GrayImage, max_keypoints: usize) -> Vec<(SiftPoint, [u8; DESCRIPTOR_LEN])> {
    let image = Plane {
        w: gray.width() as usize,
        h: gray.height() as usize,
        px: gray.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    };
    if image.w < 16 || image.h < 16 {
        return Vec::new();
    }
    let space = scale_space(image);
    let threshold = 0.5 * CONTRAST / LAYERS as f32;
    let k = 2f32.powf(1.0 / LAYERS as f32);
    let mut found: Vec<Candidate> = (0..space.dogs.len())
        .into_par_iter()
        .flat_map_iter(|o| {
            let dogs = &space.dogs[o];
            let (w, h) = (dogs[0].w, dogs[0].h);
            let mut out = Vec::new();
            if w < 12 || h < 12 {
                return out.into_iter();
            }
            for layer in 1..=LAYERS {
                for y in 5..h - 5 {
                    for x in 5..w - 5 {
                        let c = dogs[layer].at(x, y);
                        if c.abs() <= threshold {
                            continue;
                        }
                        // The same layer first: most candidates fail there.
                        let extreme = [layer, layer - 1, layer + 1].into_iter().all(|l| {
                            (y - 1..=y + 1).all(|yy| {
                                (x - 1..=x + 1).all(|xx| {
                                    (l == layer && yy == y && xx == x)
                                        || if c > 0.0 {
                                            c >= dogs[l].at(xx, yy)
                                        } else {
                                            c <= dogs[l].at(xx, yy)
                                        }
                                })
                            })
                        });
                        if !extreme {
                            continue;
                        }
                        let Some((fx, fy, fl, response)) = refine(dogs, x, y, layer) else {
                            continue;
                        };
                        let sigma = SIGMA * k.powf(fl);
                        let layer = (fl.round() as usize).min(LAYERS + 2);
                        let g = &space.gaussians[o][layer];
                        let scale = (1usize << o) as f32;
                        for angle in orientations(g, fx, fy, sigma) {
                            out.push(Candidate {
                                octave: o,
                                layer,
                                at: (fx, fy, sigma),
                                point: SiftPoint {
                                    x: fx * scale,
                                    y: fy * scale,
                                    size: sigma * scale,
                                    angle,
                                    response,
                                },
                            });
                        }
                    }
                }
            }
            out.into_iter()
        })
        .collect();
    // Only the strongest are described (a cluttered photo has thousands of extrema).
    found.sort_by(|a, b| b.point.response.total_cmp(&a.point.response));
    found.truncate(max_keypoints);
    found
        .par_iter()
        .map(|c| {
            let (x, y, sigma) = c.at;
            let g = &space.gaussians[c.octave][c.layer];
            (c.point, describe(g, x, y, sigma, c.point.angle))
        })
        .collect()
}

/// A keypoint found, before it is described: where, in its octave's pixels.
struct Candidate {
    octave: usize,
    layer: usize,
    at: (f32, f32, f32),
    point: SiftPoint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_atan2_agrees_with_libm_all_around_the_circle() {
        for i in 0..3600 {
            let t = i as f32 / 3600.0 * std::f32::consts::TAU;
            for r in [0.01f32, 1.0, 300.0] {
                let (y, x) = (r * t.sin(), r * t.cos());
                assert!((fast_atan2(y, x) - y.atan2(x)).abs() < 2e-5, "{y} {x}");
            }
        }
        assert_eq!(fast_atan2(0.0, 0.0), 0.0);
    }
}
