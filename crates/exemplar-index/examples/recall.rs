//! Recall@10 of the HNSW index against exact search on random unit vectors, for several
//! ef_search values, with build and query times. Last line: JSON.
//!   cargo run --release -p exemplar-index --example recall -- [POINTS] [DIM] [QUERIES] [M] [EF_CONSTRUCTION]

use exemplar_index::{AnnIndex, IndexParams};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let (n, dim, nq) = (
        args.first().copied().unwrap_or(100_000),
        args.get(1).copied().unwrap_or(256),
        args.get(2).copied().unwrap_or(200),
    );
    let mut s = 0x853c_49e6_748f_ea9bu64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut unit = |_| {
        let v: Vec<f32> = (0..dim).map(|_| next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let items: Vec<(u64, Vec<f32>)> = (0..n).map(|i| (i as u64, unit(i))).collect();
    let queries: Vec<Vec<f32>> = (0..nq).map(&mut unit).collect();

    let defaults = IndexParams::default();
    let params = IndexParams {
        m: args.get(3).copied().unwrap_or(defaults.m),
        ef_construction: args.get(4).copied().unwrap_or(defaults.ef_construction),
        ..defaults
    };
    let t = Instant::now();
    let mut index = AnnIndex::build(dim, params, &items).expect("build");
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("built {n} x {dim} in {build_s:.1} s");

    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, u64)> = items
                .iter()
                .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
                .collect();
            scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
            scored[..10].iter().map(|(_, id)| *id).collect()
        })
        .collect();

    let mut rows = Vec::new();
    for ef in [32, 64, 96, 128, 256] {
        index = rebuild_params(index, ef);
        let t = Instant::now();
        let mut found = 0;
        for (q, want) in queries.iter().zip(&truth) {
            let got = index.search(q, 10).expect("search");
            found += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / nq as f64;
        let recall = found as f64 / (10 * nq) as f64;
        eprintln!("ef_search {ef:4}: recall@10 {recall:.4}, {ms:.2} ms/query");
        rows.push(format!(
            "{{\"ef_search\":{ef},\"recall_at_10\":{recall:.4},\"ms_per_query\":{ms:.3}}}"
        ));
    }
    println!(
        "{{\"points\":{n},\"dim\":{dim},\"queries\":{nq},\"m\":{},\"ef_construction\":{},\"build_seconds\":{build_s:.2},\"results\":[{}]}}",
        params.m,
        params.ef_construction,
        rows.join(",")
    );
}

/// Same graph, another ef_search (the search-time knob needs no rebuild).
fn rebuild_params(mut index: AnnIndex, ef: usize) -> AnnIndex {
    index.set_ef_search(ef);
    index
}
