//! Helpers shared by the CLI and HTTP tests: real photos and variations of them.

use exemplar_embed::fetch;
use image::{imageops, DynamicImage, Rgb, RgbImage};

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

/// A seeded stream of numbers.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % below as u64) as u32
    }
}

/// A "cover": rectangles and discs of many greys, different for every seed.
pub fn cover(seed: u64) -> RgbImage {
    let mut rng = Lcg(seed * 7919 + 1);
    let mut img = RgbImage::from_pixel(320, 400, Rgb([128, 128, 128]));
    for _ in 0..70 {
        let (x0, y0) = (rng.next(320), rng.next(400));
        let (w, h) = (8 + rng.next(60), 8 + rng.next(60));
        let colour = Rgb([
            rng.next(256) as u8,
            rng.next(256) as u8,
            rng.next(256) as u8,
        ]);
        let disc = rng.next(2) == 0;
        for y in y0..(y0 + h).min(400) {
            for x in x0..(x0 + w).min(320) {
                let (dx, dy) = (
                    x as f32 - (x0 + w / 2) as f32,
                    y as f32 - (y0 + h / 2) as f32,
                );
                let inside = !disc
                    || (dx / (w as f32 / 2.0)).powi(2) + (dy / (h as f32 / 2.0)).powi(2) <= 1.0;
                if inside {
                    img.put_pixel(x, y, colour);
                }
            }
        }
    }
    img
}

pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}
