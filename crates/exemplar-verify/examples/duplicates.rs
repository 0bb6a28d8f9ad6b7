//! Which images of one folder show the same flat thing as images of another (e.g. the
//! same DVD cover scanned twice): every pair is verified; pairs with at least
//! MIN_INLIERS inliers are printed with their count.
//!
//!     cargo run --release -p exemplar-verify --example duplicates -- DIR_A DIR_B [MIN_INLIERS]

use exemplar_eval::images_under;
use exemplar_verify::{extract, verify, ExtractParams, LocalFeatures, RansacParams};
use rayon::prelude::*;
use std::path::PathBuf;

fn load(dir: &str) -> Vec<(PathBuf, LocalFeatures)> {
    let mut paths = images_under(&PathBuf::from(dir)).unwrap();
    paths.sort();
    paths
        .into_par_iter()
        .map(|p| {
            let gray = image::open(&p).unwrap().to_luma8();
            let f = extract(&gray, &ExtractParams::default());
            (p, f)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (a, b) = (load(&args[0]), load(&args[1]));
    let min: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(20);
    let params = RansacParams::default();
    let mut pairs: Vec<(usize, String, String)> = a
        .par_iter()
        .flat_map(|(pa, fa)| {
            b.iter()
                .map(|(pb, fb)| {
                    (
                        verify(fa, fb, &params).inliers,
                        pa.display().to_string(),
                        pb.display().to_string(),
                    )
                })
                .filter(|(n, _, _)| *n >= min)
                .collect::<Vec<_>>()
        })
        .collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (n, x, y) in &pairs {
        println!("{n}\t{x}\t{y}");
    }
}
