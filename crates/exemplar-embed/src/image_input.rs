//! Decoding what users actually upload: any common format, EXIF-rotated phone photos,
//! grayscale, transparency, CMYK and 16-bit images, all to 8-bit RGB, with a pixel limit
//! checked from the header before anything is decoded.

use exemplar_core::ExtractError;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, RgbImage};
use std::io::Cursor;
use std::sync::{Condvar, Mutex};

/// Default pixel limit: 50 MP, above any phone camera, far below a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Default memory budget for photos being decoded at once, in MiB: one 50 MP photo in
/// any 8- or 16-bit pixel format fits, with its local-feature working set.
pub const DEFAULT_DECODE_MEMORY_MIB: u64 = 1024;

/// A photo whose header has been read and checked, not yet decoded.
pub struct Probed<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    pub width: u32,
    pub height: u32,
    /// Bytes of the decoded image in its own pixel format (e.g. 8 per pixel for RGBA16).
    pub native_bytes: u64,
    native_is_rgb8: bool,
    native_has_alpha: bool,
}

/// Reads the header of `bytes`: its format and dimensions, refusing an empty file, an
/// unknown format, no pixels or more than `max_pixels` before anything is decoded.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<Probed<'_>, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::CorruptImage("empty file".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ExtractError::CorruptImage(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(ExtractError::UnsupportedImage(
            "not a recognised image (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)".into(),
        ));
    };
    if format == image::ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(ExtractError::ImageTooLarge {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ExtractError::CorruptImage("image has no pixels".into()));
    }
    if !exemplar_core::extractor::aspect_within_limit(width, height) {
        return Err(ExtractError::ExtremeAspect {
            width,
            height,
            limit: exemplar_core::extractor::MAX_ASPECT_RATIO,
        });
    }
    let color = decoder.color_type();
    Ok(Probed {
        width,
        height,
        native_bytes: decoder.total_bytes(),
        native_is_rgb8: color == image::ColorType::Rgb8,
        native_has_alpha: color.has_alpha(),
        decoder: Box::new(decoder),
    })
}

impl Probed<'_> {
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// Peak bytes of decoding this photo and preparing it: the decoded image in its own
    /// format, its 8-bit RGB copy (unless it is one already; 4 more bytes a pixel on the
    /// way for alpha formats without a direct path), and, when local features are made at
    /// up to `local_side` px, the luma copy and the resampler's float rows (16 bytes per
    /// column per output row). The network's input itself is small (bounded by the
    /// geometry, not the photo): crops and views are read in place.
    pub fn cost(&self, local_side: Option<u32>) -> u64 {
        let pixels = self.pixels();
        let mut bytes = self.native_bytes;
        if !self.native_is_rgb8 {
            bytes += 3 * pixels;
        }
        if self.native_has_alpha && self.native_bytes > 8 * pixels {
            bytes += 4 * pixels;
        }
        if let Some(side) = local_side {
            let rows = (self.height as u64).min(side as u64);
            bytes += pixels + 16 * self.width as u64 * rows;
        }
        bytes
    }

    /// Decodes to upright 8-bit RGB.
    pub fn decode(self) -> Result<RgbImage, ExtractError> {
        let mut decoder = self.decoder;
        let orientation = decoder.orientation().map_err(map_image_error)?;
        let mut image = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
        image.apply_orientation(orientation);
        Ok(to_rgb_on_white(image))
    }
}

/// Decodes `bytes` to upright 8-bit RGB.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ExtractError> {
    probe(bytes, max_pixels)?.decode()
}

/// A JPEG must end its image: the end-of-image marker after the first scan. Without it
/// the file was cut short, and the decoder would fill the missing part with grey.
/// Entropy-coded data never holds `FF D9` (a data `FF` is followed by `00` or a restart
/// marker), so the first one after the scan header is the real end.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), ExtractError> {
    let truncated = || ExtractError::CorruptImage("truncated JPEG: no end-of-image marker".into());
    let mut at = 2; // past SOI
                    // Walk the header segments (each `FF xx` with a 2-byte length) to the first scan.
    loop {
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1; // fill bytes
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(truncated());
        };
        let Some(length) = bytes.get(at + 2..at + 4) else {
            return Err(truncated());
        };
        let length = u16::from_be_bytes([length[0], length[1]]) as usize;
        at += 2 + length;
        if marker == 0xDA {
            break;
        }
    }
    let scans = bytes.get(at..).unwrap_or_default();
    if scans.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(truncated())
    }
}

/// Transparent pixels are composited on white, as a viewer shows them; dropping alpha
/// would expose whatever colour happens to be stored under them (often black). The
/// common alpha formats are composited straight from their own buffer (no RGBA copy).
fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let (w, h) = (image.width(), image.height());
    let mut out = RgbImage::new(w, h);
    let over_white = |c: u32, a: u32, max: u32| -> u8 {
        ((c as u64 * a as u64 * 255
            + 255 * (max - a) as u64 * max as u64
            + (max as u64 * max as u64) / 2)
            / (max as u64 * max as u64)) as u8
    };
    match image {
        DynamicImage::ImageRgba8(rgba) => {
            for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
                let a = src[3] as u32;
                for c in 0..3 {
                    dst[c] = over_white(src[c] as u32, a, 255);
                }
            }
        }
        DynamicImage::ImageLumaA8(la) => {
            for (dst, src) in out.pixels_mut().zip(la.pixels()) {
                dst.0 = [over_white(src[0] as u32, src[1] as u32, 255); 3];
            }
        }
        DynamicImage::ImageRgba16(rgba) => {
            for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
                let a = src[3] as u32;
                for c in 0..3 {
                    dst[c] = over_white(src[c] as u32, a, 65535);
                }
            }
        }
        DynamicImage::ImageLumaA16(la) => {
            for (dst, src) in out.pixels_mut().zip(la.pixels()) {
                dst.0 = [over_white(src[0] as u32, src[1] as u32, 65535); 3];
            }
        }
        other => {
            let rgba = other.to_rgba8();
            drop(other);
            for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
                let a = src[3] as u32;
                for c in 0..3 {
                    dst[c] = over_white(src[c] as u32, a, 255);
                }
            }
        }
    }
    out
}

/// The memory that photos being decoded at once may take together (see
/// [`Probed::cost`]): a photo waits until its cost fits beside the others, and one that
/// could never fit is refused. This bounds the decoding memory of the whole process,
/// however many requests and cores there are.
pub struct DecodeBudget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// A photo's share of the [`DecodeBudget`], given back when dropped.
pub struct Reservation<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl DecodeBudget {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity: capacity_bytes,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Waits until `probed` (prepared with local features at up to `local_side` px) fits.
    pub fn reserve(
        &self,
        probed: &Probed<'_>,
        local_side: Option<u32>,
    ) -> Result<Reservation<'_>, ExtractError> {
        let bytes = probed.cost(local_side);
        if bytes > self.capacity {
            return Err(ExtractError::DecodeMemory {
                width: probed.width,
                height: probed.height,
                needed_mib: bytes.div_ceil(1 << 20),
                limit_mib: self.capacity >> 20,
            });
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.capacity {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// The longest side of a kept photo's thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

/// A JPEG of the upright photo, its longest side at most [`THUMBNAIL_SIDE`] (smaller
/// photos keep their size), decoded within `budget` like the model's input.
pub fn thumbnail_jpeg(
    bytes: &[u8],
    max_pixels: u64,
    budget: &DecodeBudget,
) -> Result<Vec<u8>, ExtractError> {
    let probed = probe(bytes, max_pixels)?;
    let _share = budget.reserve(&probed, None)?;
    let rgb = probed.decode()?;
    let (w, h) = rgb.dimensions();
    let scale = (THUMBNAIL_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(&rgb, tw, th);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&small)
        .map_err(map_image_error)?;
    Ok(out)
}

fn map_image_error(e: ImageError) -> ExtractError {
    match e {
        ImageError::Unsupported(u) => ExtractError::UnsupportedImage(u.to_string()),
        ImageError::Limits(l) => ExtractError::CorruptImage(format!("limits: {l}")),
        other => ExtractError::CorruptImage(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn sample() -> RgbaImage {
        RgbaImage::from_fn(6, 4, |x, y| {
            Rgba([(x * 40) as u8, (y * 60) as u8, 100, 255])
        })
    }

    #[test]
    fn every_supported_format_decodes_to_the_same_rgb() {
        let img = DynamicImage::ImageRgba8(sample());
        let want = img.to_rgb8();
        for format in [
            ImageFormat::Png,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::WebP,
        ] {
            let got = decode_rgb(&encode(&img, format), DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(got, want, "{format:?}");
        }
        // GIF is palette-based and JPEG lossy: same size, close colours.
        for format in [ImageFormat::Gif, ImageFormat::Jpeg] {
            let src = DynamicImage::ImageRgb8(want.clone());
            let got = decode_rgb(&encode(&src, format), DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(got.dimensions(), (6, 4), "{format:?}");
        }
    }

    #[test]
    fn grayscale_16_bit_and_alpha_become_rgb() {
        let gray = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(3, 2, |x, _| {
            image::Luma([(x * 30000) as u16])
        }));
        let rgb = decode_rgb(&encode(&gray, ImageFormat::Png), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(2, 0).0, [233, 233, 233]); // 60000 / 65535 * 255

        let mut clear = sample();
        clear.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        clear.put_pixel(1, 0, Rgba([0, 0, 0, 128]));
        let rgb = decode_rgb(
            &encode(&DynamicImage::ImageRgba8(clear), ImageFormat::Png),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(
            rgb.get_pixel(0, 0).0,
            [255, 255, 255],
            "transparent is white"
        );
        assert_eq!(
            rgb.get_pixel(1, 0).0,
            [127, 127, 127],
            "half transparent black is gray"
        );
    }

    #[test]
    fn bad_input_gets_a_named_error() {
        assert!(matches!(
            decode_rgb(b"", 100),
            Err(ExtractError::CorruptImage(_))
        ));
        assert!(matches!(
            decode_rgb(b"hello, this is text", 100),
            Err(ExtractError::UnsupportedImage(_))
        ));
        let png = encode(&DynamicImage::ImageRgba8(sample()), ImageFormat::Png);
        assert!(matches!(
            decode_rgb(&png[..png.len() / 2], DEFAULT_MAX_PIXELS),
            Err(ExtractError::CorruptImage(_))
        ));
        let err = decode_rgb(&png, 23).unwrap_err();
        assert_eq!(
            err,
            ExtractError::ImageTooLarge {
                width: 6,
                height: 4,
                pixels: 24,
                limit: 23
            }
        );
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 90]));
        encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
    }

    #[test]
    fn a_cut_jpeg_is_refused_and_a_complete_one_with_a_trailer_is_not() {
        let whole = jpeg(64, 48);
        assert!(decode_rgb(&whole, DEFAULT_MAX_PIXELS).is_ok());
        for cut in [whole.len() / 2, whole.len() - 2, 30, 3] {
            let err = decode_rgb(&whole[..cut], DEFAULT_MAX_PIXELS).unwrap_err();
            assert!(
                matches!(&err, ExtractError::CorruptImage(m) if m.contains("truncated")),
                "{cut}: {err}"
            );
        }
        // Phones append data after the end marker (e.g. a second image): still complete.
        let mut trailer = whole.clone();
        trailer.extend_from_slice(&[0xFF, 0xD8, 1, 2, 3]);
        assert!(decode_rgb(&trailer, DEFAULT_MAX_PIXELS).is_ok());
    }

    #[test]
    fn needle_shaped_images_are_refused_from_the_header() {
        let needle = DynamicImage::ImageRgb8(RgbImage::new(1, 2000));
        let err = decode_rgb(&encode(&needle, ImageFormat::Png), DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(
            err,
            ExtractError::ExtremeAspect {
                width: 1,
                height: 2000,
                ..
            }
        ));
        let wide_but_fine = DynamicImage::ImageRgb8(RgbImage::new(400, 20));
        assert!(decode_rgb(
            &encode(&wide_but_fine, ImageFormat::Png),
            DEFAULT_MAX_PIXELS
        )
        .is_ok());
    }

    #[test]
    fn the_decode_budget_counts_the_pixel_format_and_makes_photos_wait_their_turn() {
        let rgba16 = DynamicImage::ImageRgba16(image::ImageBuffer::new(100, 100));
        let png = encode(&rgba16, ImageFormat::Png);
        let probed = probe(&png, DEFAULT_MAX_PIXELS).unwrap();
        // 8 bytes a pixel as decoded, 3 for the RGB copy; luma and resampler rows with
        // local features.
        assert_eq!(probed.cost(None), 100 * 100 * 11);
        assert_eq!(probed.cost(Some(640)), 100 * 100 * 12 + 16 * 100 * 100);

        let small = DecodeBudget::new(100 * 100 * 11 - 1);
        assert!(matches!(
            small.reserve(&probed, None),
            Err(ExtractError::DecodeMemory {
                width: 100,
                height: 100,
                ..
            })
        ));

        let budget = std::sync::Arc::new(DecodeBudget::new(100 * 100 * 11 * 3 / 2));
        let first = budget.reserve(&probed, None).unwrap();
        let (sent, got) = std::sync::mpsc::channel();
        let waiting = {
            let budget = budget.clone();
            let png = png.clone();
            std::thread::spawn(move || {
                let probed = probe(&png, DEFAULT_MAX_PIXELS).unwrap();
                let _second = budget.reserve(&probed, None).unwrap();
                sent.send(()).unwrap();
            })
        };
        assert!(
            got.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the second photo must wait while the first holds the budget"
        );
        drop(first);
        got.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second photo goes once the first is done");
        waiting.join().unwrap();
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_thumbnail_is_an_upright_jpeg_at_most_256_px() {
        let wide = image::RgbImage::from_pixel(1000, 400, image::Rgb([200, 30, 30]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(wide)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let budget = DecodeBudget::new(DEFAULT_DECODE_MEMORY_MIB << 20);
        let jpeg = thumbnail_jpeg(&png, DEFAULT_MAX_PIXELS, &budget).unwrap();
        let back = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        assert_eq!(back.dimensions(), (256, 102));
        let tiny = image::RgbImage::from_pixel(20, 10, image::Rgb([0, 0, 0]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(tiny)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let small = thumbnail_jpeg(&png, DEFAULT_MAX_PIXELS, &budget).unwrap();
        let back = image::load_from_memory(&small).unwrap();
        assert_eq!((back.width(), back.height()), (20, 10));
        assert!(thumbnail_jpeg(b"not an image", DEFAULT_MAX_PIXELS, &budget).is_err());
    }
}
