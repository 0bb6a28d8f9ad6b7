//! Helpers shared by the CLI and HTTP tests: real photos and variations of them.

use exemplar_embed::fetch;
use image::{imageops, DynamicImage, RgbImage};

/// The cache the binary uses under the tests' environment.
pub fn cache_dir() -> std::path::PathBuf {
    use clap::Parser;
    let cli = exemplar_server::cli::Cli::parse_from(["exemplar", "classes"]);
    cli.model.weight_sources().cache_dir
}

/// A scikit-image sample photo (fetched from PyPI once).
pub fn photo(file: &fetch::WheelFile) -> RgbImage {
    image::open(fetch::wheel_file(file, &cache_dir()).expect("fetched from PyPI"))
        .unwrap()
        .to_rgb8()
}

/// Another shot of the same thing, a close-up: the central 5/6 of each side (69 % of the
/// picture in the frame), rescaled.
pub fn another_shot(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let crop = imageops::crop_imm(img, w / 12, h / 10, w * 5 / 6, h * 5 / 6).to_image();
    imageops::resize(&crop, w * 2 / 3, h * 2 / 3, imageops::FilterType::Triangle)
}

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}
