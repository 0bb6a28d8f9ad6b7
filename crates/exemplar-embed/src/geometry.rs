//! Input geometry: how a decoded photo becomes the network's input tensor.

use crate::error::{EmbedError, Result};
use exemplar_core::CropBox;
use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What part of the photo the network sees, and at what size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// ImageNet evaluation style: short side to `crop * 8 / 7` (256 for 224), then the
    /// centre `crop x crop` square.
    CenterCrop { crop: u32 },
    /// The whole photo, aspect kept, long side resized to `long_side`.
    Full { long_side: u32 },
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry::CenterCrop { crop: 224 }
    }
}

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Geometry::CenterCrop { crop } => write!(f, "center-crop-{crop}"),
            Geometry::Full { long_side } => write!(f, "full-{long_side}"),
        }
    }
}

impl std::str::FromStr for Geometry {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EmbedError::UnknownSetting {
            what: "geometry",
            value: s.to_string(),
            expected: "center-crop-N or full-N (N in 32..=2048), e.g. center-crop-224, full-448"
                .into(),
        };
        let (kind, size) = s.rsplit_once('-').ok_or_else(bad)?;
        let size: u32 = size.parse().map_err(|_| bad())?;
        if !(32..=2048).contains(&size) {
            return Err(bad());
        }
        match kind {
            "center-crop" => Ok(Geometry::CenterCrop { crop: size }),
            "full" => Ok(Geometry::Full { long_side: size }),
            _ => Err(bad()),
        }
    }
}

/// A network input: CHW, normalised with ImageNet mean/std.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    pub height: usize,
    pub width: usize,
    pub chw: Vec<f32>,
}

/// Python's `round` (half to even), so sizes match the PIL reference exactly.
fn round_half_even(x: f64) -> u32 {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    r.max(1.0) as u32
}

impl Geometry {
    /// The network input of a whole photo.
    pub fn prepare(&self, rgb: &RgbImage) -> PreparedImage {
        let whole = CropBox {
            x: 0,
            y: 0,
            width: rgb.width(),
            height: rgb.height(),
        };
        self.prepare_part(rgb, whole)
    }

    /// The network input of `part` of a photo (inside it), read in place. A centre crop
    /// is cut first and scaled after: only its pixels are made, with the same samples as
    /// scaling the whole part and cutting it then (the resampler reads the neighbours of
    /// the cut from the part). So the memory is bounded by the network's input, whatever
    /// the photo's shape: a 1 x 200,000 photo scaled whole would be 256 x 51 M pixels.
    pub fn prepare_part(&self, rgb: &RgbImage, part: CropBox) -> PreparedImage {
        let (w, h) = (part.width, part.height);
        let photo = ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), PixelType::U8x3)
            .expect("buffer size matches dimensions");
        let src = CroppedImage::new(&photo, part.x, part.y, w, h).expect("part inside the photo");
        match *self {
            Geometry::CenterCrop { crop } => {
                let short = crop as f64 * 8.0 / 7.0;
                let scale = short.round() / w.min(h) as f64;
                let (rw, rh) = (
                    round_half_even(w as f64 * scale).max(crop),
                    round_half_even(h as f64 * scale).max(crop),
                );
                let (left, top) = ((rw - crop) / 2, (rh - crop) / 2);
                let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
                let window = (
                    left as f64 * sx,
                    top as f64 * sy,
                    crop as f64 * sx,
                    crop as f64 * sy,
                );
                let pixels = resize(&src, crop, crop, window);
                normalise(&pixels, crop, 0, 0, crop, crop)
            }
            Geometry::Full { long_side } => {
                let scale = long_side as f64 / w.max(h) as f64;
                let (rw, rh) = (
                    round_half_even(w as f64 * scale).max(32),
                    round_half_even(h as f64 * scale).max(32),
                );
                let pixels = resize(&src, rw, rh, (0.0, 0.0, w as f64, h as f64));
                normalise(&pixels, rw, 0, 0, rw, rh)
            }
        }
    }
}

/// Bilinear with antialiasing (a triangle filter stretched over the scale factor), the
/// same convolution PIL uses, in SIMD (`image`'s resize is scalar).
/// `window` (left, top, width, height, in pixels of `src`) is scaled to `width x height`.
fn resize(
    src: &CroppedImage<'_, ImageRef<'_>>,
    width: u32,
    height: u32,
    window: (f64, f64, f64, f64),
) -> Vec<u8> {
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let (left, top, w, h) = window;
    Resizer::new()
        .resize(
            src,
            &mut dst,
            &ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
                .crop(left, top, w, h),
        )
        .expect("same pixel type, non-empty images");
    dst.into_vec()
}

fn normalise(rgb: &[u8], stride_px: u32, left: u32, top: u32, w: u32, h: u32) -> PreparedImage {
    let (w, h) = (w as usize, h as usize);
    let mut chw = vec![0f32; 3 * w * h];
    for c in 0..3 {
        let (scale, shift) = (1.0 / (255.0 * STD[c]), MEAN[c] / STD[c]);
        let plane = &mut chw[c * w * h..(c + 1) * w * h];
        for y in 0..h {
            let row = ((top as usize + y) * stride_px as usize + left as usize) * 3;
            for x in 0..w {
                plane[y * w + x] = rgb[row + x * 3 + c] as f32 * scale - shift;
            }
        }
    }
    PreparedImage {
        height: h,
        width: w,
        chw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_parses_and_prints() {
        for s in ["center-crop-224", "full-448"] {
            assert_eq!(s.parse::<Geometry>().unwrap().to_string(), s);
        }
        for bad in ["crop-224", "full-10", "full-x", "full"] {
            assert!(bad.parse::<Geometry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn center_crop_and_full_sizes_follow_the_reference() {
        let img = RgbImage::from_pixel(640, 480, image::Rgb([124, 116, 104]));
        let crop = Geometry::CenterCrop { crop: 224 }.prepare(&img);
        assert_eq!((crop.height, crop.width), (224, 224));
        // ImageNet's mean colour normalises to ~0.
        assert!(crop.chw.iter().all(|v| v.abs() < 0.02));
        let full = Geometry::Full { long_side: 448 }.prepare(&img);
        assert_eq!((full.height, full.width), (336, 448));
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
    }

    /// Scales the whole photo, then cuts the centre: the reference the in-place cut
    /// must reproduce.
    fn scale_then_cut(rgb: &RgbImage, crop: u32) -> Vec<f32> {
        let (w, h) = rgb.dimensions();
        let scale = (crop as f64 * 8.0 / 7.0).round() / w.min(h) as f64;
        let (rw, rh) = (
            round_half_even(w as f64 * scale).max(crop),
            round_half_even(h as f64 * scale).max(crop),
        );
        let src = Image::from_vec_u8(w, h, rgb.as_raw().clone(), PixelType::U8x3).unwrap();
        let mut dst = Image::new(rw, rh, PixelType::U8x3);
        Resizer::new()
            .resize(
                &src,
                &mut dst,
                &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            )
            .unwrap();
        normalise(
            dst.buffer(),
            rw,
            (rw - crop) / 2,
            (rh - crop) / 2,
            crop,
            crop,
        )
        .chw
    }

    #[test]
    fn cutting_before_scaling_gives_the_same_input() {
        for (w, h) in [(640, 480), (333, 1000), (224, 224), (1000, 257), (97, 41)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (y * 3) as u8])
            });
            let got = Geometry::CenterCrop { crop: 224 }.prepare(&img).chw;
            let want = scale_then_cut(&img, 224);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // One 8-bit step is 1 / (255 * 0.225) = 0.017 after normalising.
            assert!(worst < 0.018, "{w}x{h}: {worst}");
        }
    }

    #[test]
    fn a_needle_shaped_photo_makes_a_network_sized_input() {
        // Scaled whole to a short side of 256, this would be 256 x 51.2 M pixels (39 GB).
        for (w, h) in [(1, 200_000), (200_000, 1), (7000, 1)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
            for geometry in [
                Geometry::CenterCrop { crop: 224 },
                Geometry::Full { long_side: 448 },
            ] {
                let p = geometry.prepare(&img);
                assert!(p.height * p.width <= 448 * 448, "{w}x{h} {geometry}");
                assert_eq!(p.chw.len(), 3 * p.height * p.width);
            }
        }
        // A one-row crop of a big photo likewise.
        let img = RgbImage::from_pixel(3000, 2000, image::Rgb([1, 2, 3]));
        let part = CropBox {
            x: 0,
            y: 5,
            width: 3000,
            height: 1,
        };
        let p = Geometry::CenterCrop { crop: 224 }.prepare_part(&img, part);
        assert_eq!((p.height, p.width), (224, 224));
    }

    #[test]
    fn crop_is_centred() {
        // Left half black, right half white: the centre crop is half and half.
        let img = RgbImage::from_fn(512, 256, |x, _| {
            image::Rgb(if x < 256 { [0; 3] } else { [255; 3] })
        });
        let p = Geometry::CenterCrop { crop: 224 }.prepare(&img);
        let row = &p.chw[100 * 224..101 * 224];
        assert!(row[..100].iter().all(|v| *v < -2.0) && row[124..].iter().all(|v| *v > 2.0));
    }
}
