//! Time to extract local features from photos, per kind (fastest and median of N runs).
//!
//!     cargo run --release -p exemplar-verify --example extract_timing -- IMAGE... [--runs N]
use exemplar_verify::{extract, ExtractParams, FeatureKind};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .windows(2)
        .find(|w| w[0] == "--runs")
        .map(|w| w[1].parse().unwrap())
        .unwrap_or(20);
    let images: Vec<image::GrayImage> = args
        .iter()
        .take_while(|a| *a != "--runs")
        .map(|p| image::open(p).unwrap().to_luma8())
        .collect();
    for kind in [FeatureKind::Sift, FeatureKind::Orb] {
        let params = ExtractParams {
            kind,
            ..ExtractParams::default()
        };
        let mut times = Vec::new();
        let mut keypoints = 0;
        for _ in 0..runs {
            let started = Instant::now();
            for img in &images {
                keypoints = extract(img, &params).keypoints.len();
            }
            times.push(started.elapsed().as_secs_f64() * 1e3 / images.len() as f64);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{kind}: fastest {:.1} ms, median {:.1} ms per image ({keypoints} keypoints in the last)",
            times[0],
            times[times.len() / 2]
        );
    }
}
