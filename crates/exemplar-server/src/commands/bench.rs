use anyhow::Context;
use exemplar_embed::geometry::PreparedImage;
use exemplar_embed::{CnnEmbedder, Geometry};
use serde_json::json;
use std::io::{BufRead, Write};
use std::time::Instant;

/// How many passes to time.
pub enum Passes {
    /// As many as fit in this time.
    For { seconds: f64 },
    /// As standard input asks, a line at a time (a number of seconds of passes), each
    /// request answered as it ends.
    FromStdin,
}

/// Times the embedder alone (forward pass + pooling) on synthetic input.
pub fn run(embedder: &CnnEmbedder, batch: usize, passes_wanted: Passes) -> anyhow::Result<()> {
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
    let one_pass = || -> anyhow::Result<f64> {
        let t = Instant::now();
        embedder.features(&images)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut passes = Vec::new();
    match passes_wanted {
        Passes::For { seconds } => {
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < seconds || passes.is_empty() {
                passes.push(one_pass()?);
            }
        }
        Passes::FromStdin => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")?;
            out.flush()?;
            for line in std::io::stdin().lock().lines() {
                // A request: passes back to back for this many seconds (at least one;
                // an empty line: one), answered with their count and mean time.
                let line = line?;
                let seconds: f64 = match line.trim() {
                    "" => 0.0,
                    text => text.parse().with_context(|| {
                        format!("a request is a number of seconds, not {text:?}")
                    })?,
                };
                let (start, first) = (Instant::now(), passes.len());
                while passes.len() == first || start.elapsed().as_secs_f64() < seconds {
                    passes.push(one_pass()?);
                }
                let done = &passes[first..];
                writeln!(
                    out,
                    "{} {}",
                    done.len(),
                    done.iter().sum::<f64>() / done.len() as f64
                )?;
                out.flush()?;
            }
            anyhow::ensure!(!passes.is_empty(), "no pass asked for on standard input");
        }
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
