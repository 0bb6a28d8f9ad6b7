//! Synthetic phone photos of a catalogue photo: what a customer's camera does to a cover
//! (perspective, a tilt or a quarter turn, the shop around it, dim or tinted light, glare
//! on shrink-wrap, blur, sensor noise, JPEG), drawn from a seed so a training run can be
//! repeated exactly.

use exemplar_core::rng::SplitMix64;
use image::{imageops, Rgb, RgbImage};
use nalgebra::{Matrix3, Vector3};

/// The long side of a view, in pixels: above the network's 224 input, so its own resize
/// and crop happen as they do for a real photo.
pub const VIEW_SIDE: u32 = 384;

/// How strong the synthetic changes are (shares of the view's side, degrees, factors).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRecipe {
    /// The cover's size as a share of the view's short side, lowest and highest.
    pub scale: (f32, f32),
    /// Each corner moves by up to this share of the cover's size (perspective).
    pub corner_jitter: f32,
    /// Standard deviation of the in-plane tilt.
    pub tilt_degrees: f32,
    /// Chance of a quarter turn (a photo taken sideways).
    pub quarter_turn: f32,
    /// Chance that the background is another catalogue photo rather than a plain colour.
    pub photo_background: f32,
    /// Light level, lowest and highest (1: as photographed).
    pub light: (f32, f32),
    /// Chance of a glare highlight.
    pub glare: f32,
    /// Chance of blur.
    pub blur: f32,
    /// Largest noise standard deviation, in 8-bit steps.
    pub noise: f32,
    /// JPEG quality, lowest and highest.
    pub jpeg_quality: (u8, u8),
}

impl Default for ViewRecipe {
    fn default() -> Self {
        Self {
            scale: (0.55, 0.95),
            corner_jitter: 0.12,
            tilt_degrees: 6.0,
            quarter_turn: 0.08,
            photo_background: 0.6,
            light: (0.45, 1.15),
            glare: 0.5,
            blur: 0.5,
            noise: 8.0,
            jpeg_quality: (40, 90),
        }
    }
}

/// Covers are shrunk to this long side before views are made of them (a view shows a
/// cover at most [`VIEW_SIDE`] wide).
const COVER_SIDE: u32 = 512;

/// A photo decoded and shrunk for making views of it.
pub fn decode_cover(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    let rgb = image::load_from_memory(bytes)?.to_rgb8();
    let long = rgb.width().max(rgb.height());
    if long <= COVER_SIDE {
        return Ok(rgb);
    }
    let scale = COVER_SIDE as f32 / long as f32;
    Ok(imageops::resize(
        &rgb,
        ((rgb.width() as f32 * scale) as u32).max(1),
        ((rgb.height() as f32 * scale) as u32).max(1),
        imageops::FilterType::Triangle,
    ))
}

/// `count` views of each of `covers` (JPEG bytes), cover by cover; `keys` name the covers
/// stably (an exemplar's id), so a view depends only on its cover, key, number and
/// `seed`. Backgrounds are other covers of the same call.
pub fn views_of(
    covers: &[RgbImage],
    keys: &[u64],
    count: usize,
    recipe: &ViewRecipe,
    seed: u64,
) -> Vec<Vec<Vec<u8>>> {
    use rayon::prelude::*;
    (0..covers.len())
        .into_par_iter()
        .map(|i| {
            (0..count)
                .map(|v| {
                    let view_seed = mix(seed, keys[i], v as u64);
                    let background = (covers.len() > 1).then(|| {
                        let other = 1 + (view_seed as usize) % (covers.len() - 1);
                        &covers[(i + other) % covers.len()]
                    });
                    phone_view(&covers[i], background, recipe, view_seed)
                })
                .collect()
        })
        .collect()
}

fn mix(seed: u64, key: u64, view: u64) -> u64 {
    let mut rng = SplitMix64::new(seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ view << 48);
    rng.next_u64()
}

/// Uniform in `[lo, hi)`.
fn uniform(rng: &mut SplitMix64, (lo, hi): (f32, f32)) -> f32 {
    lo + (hi - lo) * (1.0 - rng.next_unit() as f32)
}

fn chance(rng: &mut SplitMix64, p: f32) -> bool {
    (rng.next_unit() as f32) <= p
}

/// One synthetic phone photo of `cover`, JPEG-encoded (the encoder's artefacts are part
/// of the view). `background` is another catalogue photo the cover may be held against.
pub fn phone_view(
    cover: &RgbImage,
    background: Option<&RgbImage>,
    recipe: &ViewRecipe,
    seed: u64,
) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut view = compose(cover, background, recipe, &mut rng);
    relight(&mut view, recipe, &mut rng);
    if chance(&mut rng, recipe.blur) {
        view = imageops::blur(&view, uniform(&mut rng, (0.6, 2.0)));
    }
    add_noise(
        &mut view,
        recipe.noise * (1.0 - rng.next_unit() as f32),
        &mut rng,
    );
    let quality = uniform(
        &mut rng,
        (
            recipe.jpeg_quality.0 as f32,
            recipe.jpeg_quality.1 as f32 + 1.0,
        ),
    ) as u8;
    encode_jpeg(&view, quality.clamp(1, 100))
}

pub fn encode_jpeg(rgb: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(rgb)
        .expect("encoding an RGB image in memory");
    out
}

/// The cover warped onto the view: placed, tilted and seen in perspective.
fn compose(
    cover: &RgbImage,
    background: Option<&RgbImage>,
    recipe: &ViewRecipe,
    rng: &mut SplitMix64,
) -> RgbImage {
    let portrait = chance(rng, 0.5);
    let (width, height) = if portrait {
        (VIEW_SIDE * 3 / 4, VIEW_SIDE)
    } else {
        (VIEW_SIDE, VIEW_SIDE * 3 / 4)
    };
    let mut view = match background {
        Some(photo) if chance(rng, recipe.photo_background) => {
            let mut b = imageops::resize(photo, width, height, imageops::FilterType::Triangle);
            // Out of focus behind the cover.
            b = imageops::blur(&b, 2.5);
            b
        }
        _ => {
            let grey = uniform(rng, (30.0, 220.0));
            let tint = [uniform(rng, (0.85, 1.15)), 1.0, uniform(rng, (0.85, 1.15))];
            RgbImage::from_fn(width, height, |_, _| {
                Rgb(tint.map(|t| (grey * t).clamp(0.0, 255.0) as u8))
            })
        }
    };

    let cover = if chance(rng, recipe.quarter_turn) {
        if chance(rng, 0.5) {
            imageops::rotate90(cover)
        } else {
            imageops::rotate270(cover)
        }
    } else {
        cover.clone()
    };
    let (cw, ch) = (cover.width().max(1) as f32, cover.height().max(1) as f32);
    let short = width.min(height) as f32;
    let size = uniform(rng, recipe.scale) * short;
    let fit = size / cw.max(ch);
    let (w, h) = (cw * fit, ch * fit);
    let centre = (
        width as f32 / 2.0 + uniform(rng, (-0.1, 0.1)) * width as f32,
        height as f32 / 2.0 + uniform(rng, (-0.1, 0.1)) * height as f32,
    );
    let tilt = (rng.next_gaussian() as f32 * recipe.tilt_degrees).to_radians();
    let (sin, cos) = tilt.sin_cos();
    let jitter = recipe.corner_jitter * size;
    let corners: Vec<(f32, f32)> = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
        .iter()
        .map(|&(u, v)| {
            let (x, y) = (
                u * w + uniform(rng, (-jitter, jitter)),
                v * h + uniform(rng, (-jitter, jitter)),
            );
            (centre.0 + x * cos - y * sin, centre.1 + x * sin + y * cos)
        })
        .collect();

    // Shrink the cover to about its size in the view first, so sampling does not alias.
    let small = imageops::resize(
        &cover,
        (w.ceil() as u32).max(2),
        (h.ceil() as u32).max(2),
        imageops::FilterType::Triangle,
    );
    let (sw, sh) = (small.width() as f32, small.height() as f32);
    let source = [(0.0, 0.0), (sw, 0.0), (sw, sh), (0.0, sh)];
    let Some(to_cover) = homography(&corners, &source) else {
        return view;
    };
    let (min_x, max_x, min_y, max_y) = corners.iter().fold(
        (f32::MAX, f32::MIN, f32::MAX, f32::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let clamp_x = |v: f32| (v.max(0.0) as u32).min(width);
    let clamp_y = |v: f32| (v.max(0.0) as u32).min(height);
    for y in clamp_y(min_y)..clamp_y(max_y.ceil() + 1.0) {
        for x in clamp_x(min_x)..clamp_x(max_x.ceil() + 1.0) {
            let p = to_cover * Vector3::new(x as f32 + 0.5, y as f32 + 0.5, 1.0);
            if p.z.abs() < 1e-6 {
                continue;
            }
            let (u, v) = (p.x / p.z, p.y / p.z);
            if u < 0.0 || v < 0.0 || u >= sw || v >= sh {
                continue;
            }
            view.put_pixel(x, y, bilinear(&small, u - 0.5, v - 0.5));
        }
    }
    view
}

/// The homography that takes each of `from` to the matching point of `to`.
fn homography(from: &[(f32, f32)], to: &[(f32, f32)]) -> Option<Matrix3<f32>> {
    let pairs = |p: &[(f32, f32)]| -> [(f64, f64); 4] {
        std::array::from_fn(|i| (p[i].0 as f64, p[i].1 as f64))
    };
    let h = exemplar_core::linalg::homography_from_four(&pairs(from), &pairs(to))?;
    Some(Matrix3::from_row_slice(&h.map(|v| v as f32)))
}

fn bilinear(img: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: i64, yi: i64| img.get_pixel(xi.clamp(0, w - 1) as u32, yi.clamp(0, h - 1) as u32);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let (p00, p10, p01, p11) = (
        at(x0, y0),
        at(x0 + 1, y0),
        at(x0, y0 + 1),
        at(x0 + 1, y0 + 1),
    );
    Rgb(std::array::from_fn(|c| {
        let top = p00[c] as f32 * (1.0 - fx) + p10[c] as f32 * fx;
        let bottom = p01[c] as f32 * (1.0 - fx) + p11[c] as f32 * fx;
        (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
    }))
}

/// Dim or bright light with a colour cast, and now and then a glare highlight.
fn relight(view: &mut RgbImage, recipe: &ViewRecipe, rng: &mut SplitMix64) {
    let light = uniform(rng, recipe.light);
    let cast = [
        uniform(rng, (0.88, 1.12)),
        uniform(rng, (0.92, 1.08)),
        uniform(rng, (0.88, 1.12)),
    ];
    let glare = chance(rng, recipe.glare).then(|| {
        let (w, h) = (view.width() as f32, view.height() as f32);
        (
            uniform(rng, (0.15, 0.85)) * w,
            uniform(rng, (0.15, 0.85)) * h,
            uniform(rng, (0.05, 0.25)) * w.min(h),
            uniform(rng, (0.4, 1.0)),
        )
    });
    for (x, y, pixel) in view.enumerate_pixels_mut() {
        let highlight = glare.map_or(0.0, |(gx, gy, radius, strength)| {
            let d2 = ((x as f32 - gx).powi(2) + (y as f32 - gy).powi(2)) / (radius * radius);
            strength * (-d2).exp()
        });
        for c in 0..3 {
            let lit = pixel[c] as f32 * light * cast[c];
            pixel[c] = (lit + (255.0 - lit) * highlight).clamp(0.0, 255.0) as u8;
        }
    }
}

fn add_noise(view: &mut RgbImage, sigma: f32, rng: &mut SplitMix64) {
    if sigma < 0.5 {
        return;
    }
    for value in view.iter_mut() {
        let noisy = *value as f32 + rng.next_gaussian() as f32 * sigma;
        *value = noisy.round().clamp(0.0, 255.0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkerboard(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if (x / 20 + y / 20) % 2 == 0 {
                Rgb([230, 40, 40])
            } else {
                Rgb([20, 20, 200])
            }
        })
    }

    #[test]
    fn views_are_decodable_jpegs_that_repeat_with_their_seed() {
        let cover = checkerboard(300, 420);
        let other = checkerboard(200, 200);
        let recipe = ViewRecipe::default();
        let a = phone_view(&cover, Some(&other), &recipe, 7);
        assert_eq!(a, phone_view(&cover, Some(&other), &recipe, 7));
        assert_ne!(a, phone_view(&cover, Some(&other), &recipe, 8));
        let decoded = image::load_from_memory(&a).unwrap();
        assert_eq!(decoded.width().max(decoded.height()), VIEW_SIDE);
    }

    #[test]
    fn the_cover_lands_where_the_homography_puts_it() {
        let from = [(10.0, 10.0), (90.0, 20.0), (80.0, 95.0), (5.0, 70.0)];
        let to = [(0.0, 0.0), (50.0, 0.0), (50.0, 80.0), (0.0, 80.0)];
        let h = homography(&from, &to).unwrap();
        for (&(x, y), &(u, v)) in from.iter().zip(&to) {
            let p = h * Vector3::new(x, y, 1.0);
            assert!((p.x / p.z - u).abs() < 1e-2 && (p.y / p.z - v).abs() < 1e-2);
        }
    }

    #[test]
    fn a_view_keeps_most_of_the_cover_in_frame() {
        // A plain red cover on backgrounds that are never red: the view's share of red
        // pixels says how much of it is seen.
        let cover = RgbImage::from_pixel(200, 280, Rgb([250, 0, 0]));
        let recipe = ViewRecipe {
            photo_background: 0.0,
            glare: 0.0,
            light: (1.0, 1.0),
            ..ViewRecipe::default()
        };
        for seed in 0..8 {
            let view = image::load_from_memory(&phone_view(&cover, None, &recipe, seed))
                .unwrap()
                .to_rgb8();
            let red = view
                .pixels()
                .filter(|p| p[0] > 150 && p[1] < 90 && p[2] < 90)
                .count() as f32
                / (view.width() * view.height()) as f32;
            assert!((0.12..0.9).contains(&red), "seed {seed}: red share {red}");
        }
    }
}
