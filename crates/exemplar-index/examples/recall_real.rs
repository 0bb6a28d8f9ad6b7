//! Recall@K of the HNSW index (default settings) against exact search on real descriptors:
//! raw features from an `exemplar eval --feature-cache` file, projected to 256-d by a PCA
//! fitted on the indexed ones. Paths containing QUERY_MARK are the queries, the rest is
//! indexed. K defaults to the service's shortlist, 100.
//!   cargo run --release -p exemplar-index --example recall_real -- FEATURES.jsonl [QUERY_MARK] [K]

use exemplar_core::{PooledFeature, Projection};
use exemplar_index::{AnnIndex, IndexParams};

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .expect("usage: recall_real FEATURES.jsonl [QUERY_MARK]");
    let mark = args.next().unwrap_or_else(|| "/smvs-dvd-dev/".into());
    let k: usize = args
        .next()
        .map_or(100, |k| k.parse().expect("K is a number"));
    let mut indexed = Vec::new();
    let mut queries = Vec::new();
    for line in std::fs::read_to_string(&file).expect("readable").lines() {
        let (path, feature): (String, Vec<f32>) =
            serde_json::from_str(line).expect("jsonl of [path, feature]");
        if path.contains(&mark) && !path.contains("/Reference/") {
            queries.push(feature);
        } else {
            indexed.push(feature);
        }
    }
    let refs: Vec<&[f32]> = indexed.iter().map(Vec::as_slice).collect();
    let projection = Projection::fit_pca(&refs, 256, 0.5, "catalogue").expect("enough features");
    let project = |f: &Vec<f32>| projection.apply(&PooledFeature(f.clone())).expect("dims");
    let items: Vec<(u64, Vec<f32>)> = indexed
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64, project(f)))
        .collect();
    let queries: Vec<Vec<f32>> = queries.iter().map(project).collect();
    let index = AnnIndex::build(256, IndexParams::default(), &items).expect("build");
    let mut found = 0;
    for q in &queries {
        let mut exact: Vec<(f32, u64)> = items
            .iter()
            .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<u64> = exact.iter().take(k).map(|(_, id)| *id).collect();
        let got = index.search(q, k).expect("search");
        found += got.iter().filter(|h| want.contains(&h.id)).count();
    }
    let recall = found as f64 / (k * queries.len()).max(1) as f64;
    eprintln!(
        "{} indexed, {} queries, ef_search {}: recall@{k} {recall:.4}",
        items.len(),
        queries.len(),
        IndexParams::default().ef_search
    );
    println!(
        "{{\"indexed\":{},\"queries\":{},\"ef_search\":{},\"k\":{k},\"recall\":{recall:.4}}}",
        items.len(),
        queries.len(),
        IndexParams::default().ef_search
    );
}
