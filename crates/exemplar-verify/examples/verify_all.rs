//! How well geometric verification alone names the right reference: every query of a
//! query/reference set (e.g. SMVS) is verified against every catalogue image, and the
//! reference with the most inliers wins (`unknown` below `MIN_INLIERS`).
//!
//!     cargo run --release -p exemplar-verify --example verify_all -- DATASET [MIN_INLIERS] [--distractors DIR]...
//!
//! Last line: JSON.

use exemplar_eval::{images_under, GroundTruth};
use exemplar_verify::{extract, verify, ExtractParams, LocalFeatures, RansacParams};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

fn features(path: &PathBuf, params: &ExtractParams) -> LocalFeatures {
    let gray = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    extract(&gray, params)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = PathBuf::from(&args[0]);
    let min_inliers: usize = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().unwrap())
        .unwrap_or(15);
    let mut truth = GroundTruth::load(&dataset).unwrap();
    for pair in args.windows(2).filter(|w| w[0] == "--distractors") {
        truth
            .add_distractors(images_under(&PathBuf::from(&pair[1])).unwrap())
            .unwrap();
    }
    let GroundTruth::QueryReference {
        catalogue, queries, ..
    } = truth
    else {
        panic!("needs a query/reference ground truth");
    };
    // KEYPOINTS=N in the environment: how many keypoints per image (default 1000).
    // KIND=orb|sift: which local features (default: the service's).
    let kind = match std::env::var("KIND").as_deref() {
        Ok("orb") => exemplar_verify::FeatureKind::Orb,
        Ok("sift") => exemplar_verify::FeatureKind::Sift,
        _ => exemplar_verify::FeatureKind::default(),
    };
    let params = ExtractParams {
        kind,
        max_keypoints: std::env::var("KEYPOINTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ExtractParams::default().max_keypoints),
        // MAX_SIDE=N: the references' long side before extraction.
        max_side: std::env::var("MAX_SIDE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ExtractParams::default().max_side),
        ..ExtractParams::default()
    };
    // QUERY_MAX_SIDE=N: the queries' long side before extraction (default: as a search's).
    let query_params = ExtractParams {
        max_side: std::env::var("QUERY_MAX_SIDE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(params.query_max_side),
        max_keypoints: std::env::var("QUERY_KEYPOINTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(params.max_keypoints),
        ..params.clone()
    };
    let started = Instant::now();
    let refs: Vec<LocalFeatures> = catalogue.iter().map(|p| features(p, &params)).collect();
    let per_extract_ms = started.elapsed().as_secs_f64() * 1000.0 / catalogue.len() as f64;
    let keypoints: usize = refs.iter().map(|r| r.keypoints.len()).sum();
    eprintln!(
        "{} references: {:.1} ms each, {:.0} keypoints on average",
        refs.len(),
        per_extract_ms,
        keypoints as f64 / refs.len() as f64
    );
    let ransac = RansacParams::default();
    let started = Instant::now();
    let mut by_group: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut correct = 0;
    let mut answered_unknown = 0;
    let mut with_reference = 0;
    let mut unknown_ok = 0;
    let mut unknown_total = 0;
    // Open set: the best inlier count among wrong references, per query with a reference
    // (what the query would score if its own reference were not in the catalogue).
    let mut best_wrong: Vec<usize> = Vec::new();
    for case in &queries {
        let q = features(&case.query, &query_params);
        let inliers: Vec<usize> = refs
            .par_iter()
            .map(|r| verify(&q, r, &ransac).inliers)
            .collect();
        let (best, best_inliers) = inliers
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map(|(i, n)| (i, *n))
            .unwrap();
        let answer = (best_inliers >= min_inliers).then_some(best);
        match case.reference {
            Some(r) => {
                with_reference += 1;
                best_wrong.push(
                    inliers
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != r)
                        .map(|(_, n)| *n)
                        .max()
                        .unwrap_or(0),
                );
                let ok = answer == Some(r);
                correct += ok as usize;
                answered_unknown += answer.is_none() as usize;
                let g = by_group
                    .entry(case.attribute.clone().unwrap_or_default())
                    .or_default();
                g.0 += ok as usize;
                g.1 += 1;
                if std::env::var_os("PER_QUERY").is_some() && ok {
                    eprintln!("hit {}: {} inliers", case.query.display(), inliers[r]);
                }
                if !ok {
                    eprintln!(
                        "miss {}: best {} ({} inliers), right one {} inliers",
                        case.query.display(),
                        catalogue[best].display(),
                        best_inliers,
                        inliers[r]
                    );
                }
            }
            None => {
                unknown_total += 1;
                unknown_ok += answer.is_none() as usize;
                eprintln!(
                    "unknown query {}: best {} ({} inliers)",
                    case.query.display(),
                    catalogue[best].display(),
                    best_inliers
                );
            }
        }
    }
    let per_query_ms = started.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
    let groups: BTreeMap<&String, f64> = by_group
        .iter()
        .map(|(k, (ok, n))| (k, *ok as f64 / *n as f64))
        .collect();
    best_wrong.sort_unstable();
    let false_accept_at: BTreeMap<usize, f64> = [8, 10, 12, 15, 20, 25, 30]
        .iter()
        .map(|&t| {
            let over = best_wrong.iter().filter(|n| **n >= t).count();
            (t, over as f64 / best_wrong.len().max(1) as f64)
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "open_set_false_accept_at_min_inliers": false_accept_at,
            "best_wrong_inliers_max": best_wrong.last(),
            "references": refs.len(),
            "queries": queries.len(),
            "min_inliers": min_inliers,
            "top1": correct as f64 / with_reference.max(1) as f64,
            "answered_unknown": answered_unknown,
            "by_group": groups,
            "unknown_queries_answered_unknown": format!("{unknown_ok}/{unknown_total}"),
            "extract_ms_per_image": per_extract_ms,
            "verify_all_ms_per_query": per_query_ms,
        })
    );
}
