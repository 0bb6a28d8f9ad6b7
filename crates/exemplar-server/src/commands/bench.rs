use exemplar_embed::geometry::PreparedImage;
use exemplar_embed::{CnnEmbedder, Geometry};
use serde_json::json;
use std::time::Instant;

/// Times the embedder alone (forward pass + pooling) on synthetic input.
pub fn run(embedder: &CnnEmbedder, batch: usize, seconds: f64) -> anyhow::Result<()> {
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    let (h, w) = match embedder.config().geometry {
        Geometry::CenterCrop { crop } => (crop as usize, crop as usize),
        // A 4:3 photo, the common case.
        Geometry::Full { long_side } => (long_side as usize * 3 / 4, long_side as usize),
    };
    let images: Vec<PreparedImage> = (0..batch)
        .map(|i| PreparedImage {
            height: h,
            width: w,
            chw: (0..3 * h * w)
                .map(|j| (((i * 7919 + j) % 255) as f32 / 127.5) - 1.0)
                .collect(),
        })
        .collect();
    // One warm-up pass: first-touch allocations and lazy initialisation are not steady state.
    embedder.features(&images)?;
    let mut passes = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || passes.is_empty() {
        let t = Instant::now();
        embedder.features(&images)?;
        passes.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = passes.iter().sum();
    passes.sort_by(f64::total_cmp);
    let median = passes[passes.len() / 2];
    let ips = (passes.len() * batch) as f64 / total;
    eprintln!(
        "{} passes of batch {batch}: {ips:.2} images/s, median pass {:.1} ms",
        passes.len(),
        median * 1e3
    );
    println!(
        "{}",
        json!({
            "model": exemplar_core::FeatureExtractor::info(embedder).id,
            "batch": batch,
            "input": [3, h, w],
            "threads": rayon::current_num_threads(),
            "passes": passes.len(),
            "images_per_second": ips,
            "median_pass_ms": median * 1e3,
            "min_pass_ms": passes[0] * 1e3,
            "max_pass_ms": passes[passes.len() - 1] * 1e3,
        })
    );
    Ok(())
}
