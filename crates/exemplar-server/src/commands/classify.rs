//! `exemplar classify`: ImageNet top-5 of images, the check that weights and
//! preprocessing are right.

use anyhow::{bail, Context};
use exemplar_core::{cosine, FeatureExtractor};
use exemplar_embed::{imagenet, CnnEmbedder, Geometry, Pooling};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub fn run(
    embedder: &CnnEmbedder,
    images: &[PathBuf],
    manifest: Option<&Path>,
    golden: Option<&Path>,
) -> anyhow::Result<()> {
    let mut cases: Vec<(PathBuf, Option<Vec<usize>>)> =
        images.iter().map(|p| (p.clone(), None)).collect();
    if let Some(m) = manifest {
        cases.extend(read_manifest(m)?);
    }
    if cases.is_empty() {
        bail!("nothing to classify: give image paths or --manifest");
    }
    let mut results = Vec::new();
    let mut accepted = 0;
    let mut judged = 0;
    for (path, accept) in &cases {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let top = embedder
            .classify(&bytes, 5)
            .with_context(|| format!("classifying {}", path.display()))?;
        let verdict = accept.as_ref().map(|ok| ok.contains(&top[0].0));
        if let Some(v) = verdict {
            judged += 1;
            accepted += v as usize;
        }
        let mark = match verdict {
            Some(true) => "  OK",
            Some(false) => "  MISS",
            None => "",
        };
        println!("{}{mark}", path.display());
        for (index, p) in &top {
            println!("  {index:4}  {p:.4}  {}", imagenet::class_name(*index));
        }
        results.push(json!({
            "path": path.display().to_string(),
            "accepted": verdict,
            "top5": top.iter().map(|(i, p)| json!({"index": i, "name": imagenet::class_name(*i), "probability": p})).collect::<Vec<_>>(),
        }));
    }
    let mut summary = json!({ "model": embedder.info().id, "images": results });
    if judged > 0 {
        println!("accepted top-1: {accepted}/{judged}");
        summary["accepted_top1"] = json!(accepted);
        summary["judged"] = json!(judged);
    }
    if let Some(g) = golden {
        summary["golden"] = compare_golden(embedder, g)?;
    }
    println!("{summary}");
    Ok(())
}

fn read_manifest(path: &Path) -> anyhow::Result<Vec<(PathBuf, Option<Vec<usize>>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let root = path.parent().unwrap_or(Path::new("."));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (p, a) = (col("path")?, col("accept_top1_indices")?);
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let accept = cells
                .get(a)
                .unwrap_or(&"")
                .split(',')
                .map(|i| {
                    i.trim()
                        .parse::<usize>()
                        .with_context(|| format!("bad class index in `{line}`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((root.join(cells.get(p).unwrap_or(&"")), Some(accept)))
        })
        .collect()
}

/// Cosine between our GeM feature and the PyTorch reference's, per golden image.
fn compare_golden(embedder: &CnnEmbedder, path: &Path) -> anyhow::Result<Value> {
    let config = embedder.config();
    if config.geometry != (Geometry::CenterCrop { crop: 224 })
        || config.pooling != Pooling::Gem(3.0)
    {
        bail!("--golden compares the reference protocol: run with --geometry center-crop-224 --pooling gem");
    }
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let root = path.parent().unwrap_or(Path::new("."));
    let mut cosines = Vec::new();
    for image in golden["images"].as_array().context("golden: no images")? {
        let rel = image["path"]
            .as_str()
            .context("golden: image without path")?;
        let reference: Vec<f32> = serde_json::from_value(image["gem_p3_l2"].clone())?;
        let bytes = std::fs::read(root.join(rel))?;
        let ours = embedder.extract_batch(&[&bytes]).remove(0)?;
        let c = cosine(&ours.0, &reference);
        println!("golden {rel}: cosine {c:.5}");
        cosines.push(json!({"path": rel, "cosine": c}));
    }
    let values: Vec<f64> = cosines
        .iter()
        .map(|c| c["cosine"].as_f64().unwrap_or(0.0))
        .collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    println!("golden features: min cosine {min:.5}, mean {mean:.5}");
    Ok(json!({"min_cosine": min, "mean_cosine": mean, "images": cosines}))
}
