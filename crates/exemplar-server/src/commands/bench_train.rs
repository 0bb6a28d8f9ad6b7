//! `exemplar bench-train`: how training the head scales with the catalogue. The raw
//! features of photos and of their views come from `eval --feature-cache` files; larger
//! catalogues repeat them with a little noise (so no two exemplars are the same), and the
//! head is trained on each size as `exemplar train` trains it.

use crate::cli::{BenchTrainArgs, DESCRIPTOR_DIM};
use anyhow::Context;
use exemplar_core::rng::SplitMix64;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Noise added to a repeated feature, relative to its typical value.
const REPEAT_NOISE: f32 = 0.05;

fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> anyhow::Result<HashMap<PathBuf, T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<(PathBuf, T)>(l).ok())
        .collect())
}

/// Peak resident memory of this process so far (Linux; 0 elsewhere).
fn peak_resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    let photos: HashMap<PathBuf, Vec<f32>> = read_jsonl(&args.features)?;
    let views: HashMap<PathBuf, Vec<Vec<f32>>> = read_jsonl(&args.view_features)?;
    let mut paths: Vec<&PathBuf> = views.keys().filter(|p| photos.contains_key(*p)).collect();
    paths.sort();
    anyhow::ensure!(
        paths.len() >= 4,
        "fewer than 4 images have both features and views"
    );
    eprintln!("{} images with features and views", paths.len());
    let mut sizes = Vec::new();
    for &n in &args.exemplars {
        let mut rng = SplitMix64::new(n as u64);
        let mut noisy = |f: &[f32]| -> Vec<f32> {
            let scale = (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt();
            f.iter()
                .map(|v| v + rng.next_gaussian() as f32 * scale * REPEAT_NOISE)
                .collect()
        };
        let (mut set_photos, mut set_views) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let path = paths[i % paths.len()];
            let first = i < paths.len();
            set_photos.push(if first {
                photos[path].clone()
            } else {
                noisy(&photos[path])
            });
            set_views.push(
                views[path]
                    .iter()
                    .map(|v| if first { v.clone() } else { noisy(v) })
                    .collect::<Vec<_>>(),
            );
        }
        let started = Instant::now();
        let (head, report) =
            crate::training::learn(set_photos, set_views, DESCRIPTOR_DIM, &args.train, |_| {
                std::ops::ControlFlow::Continue(())
            })?;
        let seconds = started.elapsed().as_secs_f64();
        let row = json!({
            "exemplars": n,
            "views_per_exemplar": report.views_per_exemplar,
            "seconds": seconds,
            "epochs_run": report.epochs_run,
            "seconds_per_epoch": report.seconds / report.epochs_run.max(1) as f64,
            "best_epoch": report.best_epoch,
            "held_out_recall": {"base": report.base, "learned": report.learned},
            "peak_resident_bytes": peak_resident_bytes(),
            "projection": head.version(),
        });
        eprintln!("{row}");
        sizes.push(row);
    }
    println!(
        "{}",
        json!({
            "images": paths.len(),
            "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "sizes": sizes,
        })
    );
    Ok(())
}
