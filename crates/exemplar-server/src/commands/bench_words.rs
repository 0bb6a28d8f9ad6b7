//! `exemplar bench-words`: how the visual-word index scales. The catalogue's real local
//! features are repeated up to each size (the posting lists grow as they would; only
//! the words' spread is that of the real catalogue), and every query is searched.

use super::feature_cache::read_local_cache;
use crate::cli::{BenchWordsArgs, Vocabulary};
use anyhow::Context;
use exemplar_core::shortlist::WordIndex;
use exemplar_verify::{Descriptors, VisualWords, Vocabulary as Tree, VocabularyParams};
use rayon::prelude::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub fn run(args: &BenchWordsArgs) -> anyhow::Result<()> {
    let Vocabulary::Tree { branching, depth } = args.vocabulary else {
        anyhow::bail!("--vocabulary off: nothing to time");
    };
    let catalogue = read_local_cache(&args.catalogue_features)?;
    let queries = read_local_cache(&args.query_features)?;
    anyhow::ensure!(!catalogue.is_empty(), "no catalogue features in the file");
    let sift = |f: &exemplar_verify::LocalFeatures| match &f.descriptors {
        Descriptors::Sift(d) => d.clone(),
        Descriptors::Orb(_) => Vec::new(),
    };
    let descriptors: Vec<Vec<[u8; 128]>> = catalogue.iter().map(|(_, f)| sift(f)).collect();
    let slices: Vec<&[[u8; 128]]> = descriptors.iter().map(Vec::as_slice).collect();
    let params = VocabularyParams {
        branching,
        depth,
        ..Default::default()
    };
    let started = Instant::now();
    let tree = Arc::new(Tree::fit(&slices, &params));
    let fit_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "vocabulary {} fitted on {} images in {fit_seconds:.1} s",
        tree.version(),
        slices.len()
    );
    // Quantising is the indexing cost; bags are computed once per distinct image and
    // timed on their own.
    let started = Instant::now();
    let bags: Vec<Vec<(u32, f32)>> = descriptors
        .par_iter()
        .map(|d| tree.bag(d, args.word_norm))
        .collect();
    let bag_seconds_per_image = started.elapsed().as_secs_f64() / bags.len() as f64;
    let query_bytes: Vec<Vec<u8>> = queries.iter().map(|(_, f)| f.to_bytes()).collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut sizes = Vec::new();
    for &n in &args.exemplars {
        let started = Instant::now();
        let mut index = VisualWords::new(tree.clone(), args.word_norm);
        for i in 0..n {
            index.insert_bag(i as i64, &bags[i % bags.len()]);
        }
        let insert_seconds = started.elapsed().as_secs_f64();
        // One thread, as one search runs it.
        let mut times: Vec<f64> = query_bytes
            .iter()
            .map(|q| {
                let t = Instant::now();
                let hits = index.search(q, args.depth);
                std::hint::black_box(hits);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        let mut dump = Vec::new();
        index.save(&mut dump).context("writing the index")?;
        // The vocabulary is written once, whatever the size.
        let postings_dump = dump.len() - tree.to_bytes().len();
        let row = json!({
            "exemplars": n,
            "memory_bytes_per_exemplar": index.memory_bytes() as f64 / n as f64,
            "dump_bytes_per_exemplar": postings_dump as f64 / n as f64,
            "vocabulary_bytes": tree.to_bytes().len(),
            "rebuild_seconds": fit_seconds + bag_seconds_per_image * n as f64 + insert_seconds,
            "postings_seconds": insert_seconds,
            "search_ms_p50": at(0.5),
            "search_ms_p95": at(0.95),
            "queries": times.len(),
        });
        eprintln!("{row}");
        sizes.push(row);
    }
    println!(
        "{}",
        json!({
            "cpu": cpu,
            "threads": rayon::current_num_threads(),
            "vocabulary": tree.version(),
            "words": tree.words(),
            "fit_seconds": fit_seconds,
            "fit_images": slices.len(),
            "quantise_ms_per_image": bag_seconds_per_image * 1e3 * rayon::current_num_threads() as f64,
            "sizes": sizes,
        })
    );
    Ok(())
}
