//! `exemplar bench-index`: the nearest-neighbour index's build time, memory, and recall
//! against queries per second, on a seeded clustered set (`exemplar_index::synthetic`).
//! `--write-dataset` saves the set with its exact neighbours so that another library can
//! be measured on the same vectors (`bench/vs-hnswlib.sh`).

use crate::cli::BenchIndexArgs;
use anyhow::Context;
use exemplar_index::synthetic::{clustered, exact_neighbours, ClusteredSpec};
use exemplar_index::{AnnIndex, IndexParams};
use serde_json::json;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

const POINTS_FILE: &str = "points.f32";
const QUERIES_FILE: &str = "queries.f32";
const TRUTH_FILE: &str = "truth.u32";
const SPEC_FILE: &str = "spec.json";
/// The exact nearest neighbours whose presence in a longer answer is also reported.
const TOP: usize = 10;

/// Points, held-out queries, and each query's exact nearest points (indices, nearest first).
struct Dataset {
    points: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<u32>>,
}

pub fn run(args: &BenchIndexArgs) -> anyhow::Result<()> {
    let Dataset {
        points,
        queries,
        truth,
    } = match &args.dataset {
        Some(dir) => read_dataset(dir, args.k)?,
        None => {
            let spec = spec(args);
            let started = Instant::now();
            let set = clustered(&spec);
            let truth = exact_neighbours(&set.points, &set.queries, args.k);
            eprintln!(
                "{} points and {} queries with their exact {} nearest, in {:.1} s",
                set.points.len(),
                set.queries.len(),
                args.k,
                started.elapsed().as_secs_f64()
            );
            if let Some(dir) = &args.write_dataset {
                write_dataset(dir, &spec, &set.points, &set.queries, &truth, args.k)?;
                eprintln!("written to {}", dir.display());
                return Ok(());
            }
            Dataset {
                points: set.points,
                queries: set.queries,
                truth,
            }
        }
    };
    let dim = points.first().map_or(0, Vec::len);
    anyhow::ensure!(dim > 0 && !queries.is_empty(), "an empty data set");
    let params = IndexParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ef_search: args.ef.first().copied().unwrap_or(args.k),
    };
    let items: Vec<(u64, Vec<f32>)> = points
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    let resident_before = resident_bytes();
    let started = Instant::now();
    let mut index = AnnIndex::new(dim, params, items.len());
    index.set_insert_threads(args.threads);
    index.insert_batch(&items)?;
    let build_seconds = started.elapsed().as_secs_f64();
    let bytes_per_vector =
        resident_bytes().saturating_sub(resident_before) as f64 / items.len() as f64;
    let mut rows = Vec::new();
    for &ef in &args.ef {
        index.set_ef_search(ef);
        let started = Instant::now();
        let mut answers = Vec::with_capacity(queries.len());
        for query in &queries {
            answers.push(index.search(query, args.k)?);
        }
        let seconds = started.elapsed().as_secs_f64();
        // recall@k: the share of the exact k nearest returned; nearest-10 recall: the
        // share of the exact 10 nearest among the k returned (what a shortlist needs).
        let (mut found, mut found_top) = (0usize, 0usize);
        let top = TOP.min(args.k);
        for (hits, truth) in answers.iter().zip(&truth) {
            let returned: std::collections::HashSet<u32> =
                hits.iter().map(|h| h.id as u32).collect();
            found += truth.iter().filter(|t| returned.contains(t)).count();
            found_top += truth[..top].iter().filter(|t| returned.contains(t)).count();
        }
        let recall = found as f64 / (args.k * queries.len()) as f64;
        let nearest_recall = found_top as f64 / (top * queries.len()) as f64;
        let qps = queries.len() as f64 / seconds;
        eprintln!(
            "ef {ef:>4}: recall@{} {recall:.4}, nearest-{top} in {} {nearest_recall:.4}, {qps:.0} queries/s",
            args.k, args.k
        );
        rows.push(
            json!({"ef": ef, "recall": recall, "nearest_recall": nearest_recall, "qps": qps}),
        );
    }
    println!(
        "{}",
        json!({
            "library": format!("exemplar-index (hnswlib {})", exemplar_index::instruction_set()),
            "points": items.len(),
            "dim": dim,
            "k": args.k,
            "m": args.m,
            "ef_construction": args.ef_construction,
            "build_threads": args.threads,
            "build_seconds": build_seconds,
            "bytes_per_vector": bytes_per_vector,
            "search": rows,
        })
    );
    Ok(())
}

fn spec(args: &BenchIndexArgs) -> ClusteredSpec {
    ClusteredSpec {
        points: args.points,
        queries: args.queries,
        dim: args.dim,
        clusters: args.clusters,
        spread: args.spread,
        seed: args.seed,
        ..ClusteredSpec::default()
    }
}

/// Resident set size of this process (Linux; 0 elsewhere).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for value in rows.iter().flatten() {
        out.write_all(&value.to_le_bytes())?;
    }
    Ok(out.flush()?)
}

fn write_dataset(
    dir: &Path,
    spec: &ClusteredSpec,
    points: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    k: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_f32(&dir.join(POINTS_FILE), points)?;
    write_f32(&dir.join(QUERIES_FILE), queries)?;
    let mut out = BufWriter::new(std::fs::File::create(dir.join(TRUTH_FILE))?);
    for id in truth.iter().flatten() {
        out.write_all(&id.to_le_bytes())?;
    }
    out.flush()?;
    let description = json!({
        "points": spec.points, "queries": spec.queries, "dim": spec.dim, "k": k,
        "clusters": spec.clusters, "subspace": spec.subspace, "spread": spec.spread,
        "noise": spec.noise, "seed": spec.seed,
        "files": {"points": POINTS_FILE, "queries": QUERIES_FILE, "truth": TRUTH_FILE},
    });
    std::fs::write(dir.join(SPEC_FILE), description.to_string())?;
    Ok(())
}

fn read_floats(path: &Path, dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() % (4 * dim) == 0,
        "{} is not rows of {dim} floats",
        path.display()
    );
    Ok(bytes
        .chunks_exact(4 * dim)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Reads a set `--write-dataset` wrote; `k` may be smaller than the one it was written with.
fn read_dataset(dir: &Path, k: usize) -> anyhow::Result<Dataset> {
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(SPEC_FILE))?)?;
    let field = |name: &str| {
        spec[name]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("{SPEC_FILE} lacks {name}"))
    };
    let (dim, written_k) = (field("dim")?, field("k")?);
    anyhow::ensure!(
        k <= written_k,
        "the set holds {written_k} neighbours per query, {k} asked"
    );
    let points = read_floats(&dir.join(POINTS_FILE), dim)?;
    let queries = read_floats(&dir.join(QUERIES_FILE), dim)?;
    let ids = std::fs::read(dir.join(TRUTH_FILE))?;
    let truth: Vec<Vec<u32>> = ids
        .chunks_exact(4 * written_k)
        .map(|row| {
            row.chunks_exact(4)
                .take(k)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    anyhow::ensure!(
        truth.len() == queries.len(),
        "{TRUTH_FILE} does not match the queries"
    );
    Ok(Dataset {
        points,
        queries,
        truth,
    })
}
