//! Decoding what users actually upload: any common format, EXIF-rotated phone photos,
//! grayscale, transparency, CMYK and 16-bit images, all to 8-bit RGB, with a pixel limit
//! checked from the header before anything is decoded.

use exemplar_core::ExtractError;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, RgbImage};
use std::io::Cursor;

/// Default pixel limit: 50 MP, above any phone camera, far below a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Decodes `bytes` to upright 8-bit RGB.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::CorruptImage("empty file".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ExtractError::CorruptImage(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ExtractError::UnsupportedImage(
            "not a recognised image (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)".into(),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
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
    let orientation = decoder.orientation().map_err(map_image_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    image.apply_orientation(orientation);
    Ok(to_rgb_on_white(image))
}

/// Transparent pixels are composited on white, as a viewer shows them; dropping alpha
/// would expose whatever colour happens to be stored under them (often black).
fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
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
}
