//! Other views of a photo for searching: turned, zoomed out (padded to a square, so a
//! centre crop keeps all of it) or zoomed in (its central part).

use exemplar_core::CropBox;
use image::{imageops, DynamicImage, Rgb, RgbImage};

#[derive(Debug, thiserror::Error)]
#[error("unknown view `{0}` (rot90, rot180, rot270, zoom-out, zoom-in)")]
pub struct UnknownView(pub String);

pub fn view(rgb: &RgbImage, name: &str) -> Result<RgbImage, UnknownView> {
    Ok(match name {
        "rot90" => imageops::rotate90(rgb),
        "rot180" => imageops::rotate180(rgb),
        "rot270" => imageops::rotate270(rgb),
        "zoom-out" => {
            let side = rgb.width().max(rgb.height());
            let mut square = RgbImage::from_pixel(side, side, Rgb([124, 116, 104]));
            imageops::replace(
                &mut square,
                rgb,
                ((side - rgb.width()) / 2) as i64,
                ((side - rgb.height()) / 2) as i64,
            );
            square
        }
        "zoom-in" => centre(rgb, 2.0 / 3.0).0,
        other => return Err(UnknownView(other.to_string())),
    })
}

/// The central `fraction` of each side and its top-left corner in `rgb`.
pub fn centre(rgb: &RgbImage, fraction: f32) -> (RgbImage, (u32, u32)) {
    let part = centre_box(rgb.width(), rgb.height(), fraction);
    (
        imageops::crop_imm(rgb, part.x, part.y, part.width, part.height).to_image(),
        (part.x, part.y),
    )
}

/// The central `fraction` of each side of a `width x height` image.
pub fn centre_box(width: u32, height: u32, fraction: f32) -> CropBox {
    let fraction = fraction.clamp(0.05, 1.0);
    let side = |n: u32| ((n as f32 * fraction) as u32).clamp(1, n.max(1));
    let (w, h) = (side(width), side(height));
    CropBox {
        x: (width - w) / 2,
        y: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// Lossless bytes of a view, for APIs that take encoded images.
pub fn encode_png(rgb: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(rgb.clone()).write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}
