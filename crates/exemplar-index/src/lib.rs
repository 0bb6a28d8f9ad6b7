//! The approximate nearest-neighbour index over descriptors: an HNSW graph from hnswlib
//! (vendored C++, `hnswlib/`, compiled per instruction-set level; see `graph.rs`).
//!
//! The index is a cache of the catalogue database, never the source of truth: it can be
//! dumped for a fast restart and rebuilt from the database whenever its dump is missing,
//! stale or corrupt. Descriptors are unit vectors, so the inner product is the cosine.
//! Deletion is real: a deleted point leaves the results at once and its slot is reused by
//! the next addition, so the graph needs no compaction. Mutations take `&mut self` (the
//! owner's `RwLock` lets many searches or one writer in); a batch is inserted from several
//! threads inside that one call.

#![deny(clippy::undocumented_unsafe_blocks)]

mod graph;
pub mod synthetic;

use graph::Graph;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use graph::instruction_set;

const GRAPH_FILE: &str = "graph.hnswlib";
const META_FILE: &str = "meta.json";
const FORMAT: &str = "exemplar-hnswlib/1";

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("vector has {got} dimensions, the index has {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("vector is not unit-length (norm {norm}); descriptors must be L2-normalised")]
    NotNormalised { norm: f32 },
    #[error("id {0} is already in the index")]
    DuplicateId(u64),
    #[error("index dump at {path} is unusable: {reason}")]
    BadDump { path: String, reason: String },
    #[error("hnswlib: {0}")]
    Graph(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Neighbours kept per node and layer (M).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (the search uses at least k).
    pub ef_search: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        // Chosen with `exemplar bench-index` (docs/benchmarks.md, "Nearest-neighbour index").
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 200,
        }
    }
}

/// What was persisted along with a graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpMeta {
    pub format: String,
    pub dim: usize,
    pub params: IndexParams,
    /// The caller's change sequence number the dump reflects; changes after it are replayed.
    pub watermark: u64,
    /// Which descriptor space (projection version) the vectors are in: a dump of another
    /// space is useless after a refit.
    #[serde(default)]
    pub space: String,
    /// Live points.
    pub points: usize,
    /// Size and SHA-256 of the graph file: hnswlib trusts what it reads, so a dump is
    /// checked before it is handed over.
    pub graph_bytes: u64,
    pub graph_sha256: String,
}

/// One search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: u64,
    /// Cosine similarity to the query.
    pub score: f32,
}

pub struct AnnIndex {
    dim: usize,
    params: IndexParams,
    graph: Graph,
    /// Threads a large batch is inserted from.
    insert_threads: usize,
}

fn check_unit(v: &[f32], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: v.len(),
        });
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if (norm - 1.0).abs() > 1e-3 {
        return Err(IndexError::NotNormalised { norm });
    }
    Ok(())
}

fn insertion_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sha256_of(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, digest))
}

impl AnnIndex {
    /// An empty index with room for about `capacity` points (it grows as needed).
    pub fn new(dim: usize, params: IndexParams, capacity: usize) -> Self {
        let mut graph = Graph::new(dim, capacity.max(1024), params.m, params.ef_construction)
            .unwrap_or_else(|e| panic!("allocating an index for {capacity} points: {e}"));
        graph.set_ef(params.ef_search);
        Self {
            dim,
            params,
            graph,
            insert_threads: insertion_threads(),
        }
    }

    /// Builds an index from `(id, unit vector)` pairs, inserting in parallel.
    pub fn build(dim: usize, params: IndexParams, items: &[(u64, Vec<f32>)]) -> Result<Self> {
        let mut index = Self::new(dim, params, items.len());
        index.insert_batch(items)?;
        Ok(index)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn params(&self) -> IndexParams {
        self.params
    }
    /// Changes the search-time candidate list size (no rebuild needed).
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.params.ef_search = ef_search.max(1);
        self.graph.set_ef(self.params.ef_search);
    }

    /// Threads a large batch is inserted from (default: every core).
    pub fn set_insert_threads(&mut self, threads: usize) {
        self.insert_threads = threads.max(1);
    }

    /// Live (searchable) points.
    pub fn len(&self) -> usize {
        self.graph.live_count()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn contains(&self, id: u64) -> bool {
        self.graph.is_live(id)
    }
    /// Points the graph has room for before it reallocates (live and reusable slots).
    pub fn graph_capacity(&self) -> usize {
        self.graph.capacity()
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) -> Result<()> {
        self.insert_batch(&[(id, vector.to_vec())])
    }

    /// Inserts all or nothing: every vector and id is checked before the graph is touched.
    pub fn insert_batch(&mut self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        let mut seen = HashSet::new();
        for (id, v) in items {
            check_unit(v, self.dim)?;
            if self.graph.is_live(*id) || !seen.insert(*id) {
                return Err(IndexError::DuplicateId(*id));
            }
        }
        let items: Vec<(u64, &[f32])> = items.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        let threads = if items.len() > 64 {
            self.insert_threads
        } else {
            1
        };
        self.graph
            .add_parallel(&items, threads)
            .map_err(IndexError::Graph)
    }

    /// Deletes `id`: it never appears in a result again. Returns whether it was live.
    pub fn remove(&mut self, id: u64) -> bool {
        self.graph.remove(id)
    }

    /// The `k` nearest live points, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_unit(query, self.dim)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.graph.search(query, k).map_err(IndexError::Graph)?;
        Ok(found
            .into_iter()
            .map(|(id, distance)| Hit {
                id,
                score: 1.0 - distance,
            })
            .collect())
    }

    /// Writes the graph and its metadata into `dir` (replacing what was there), tagged with
    /// the caller's `watermark`. Written beside and renamed into place: a crash leaves
    /// either the old dump, or none (and the caller rebuilds).
    pub fn save(&self, dir: &Path, watermark: u64, space: &str) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let staging = parent.join(format!(
            ".{}.staging-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("index"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        let graph_path = staging.join(GRAPH_FILE);
        self.graph.save(&graph_path).map_err(IndexError::Graph)?;
        std::fs::File::open(&graph_path)?.sync_all()?;
        let (graph_bytes, graph_sha256) = sha256_of(&graph_path)?;
        let meta = DumpMeta {
            format: FORMAT.into(),
            dim: self.dim,
            params: self.params,
            watermark,
            space: space.to_string(),
            points: self.len(),
            graph_bytes,
            graph_sha256,
        };
        std::fs::write(
            staging.join(META_FILE),
            serde_json::to_vec(&meta).expect("serialisable"),
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(&staging, dir)?;
        Ok(())
    }

    /// Loads a dump written by [`AnnIndex::save`]; checks its format, dimension, checksum
    /// and point count. Any problem is [`IndexError::BadDump`]: rebuild from the database
    /// then.
    pub fn load(dir: &Path, expected_dim: usize) -> Result<(Self, DumpMeta)> {
        let bad = |reason: String| IndexError::BadDump {
            path: dir.display().to_string(),
            reason,
        };
        let meta: DumpMeta = serde_json::from_slice(
            &std::fs::read(dir.join(META_FILE)).map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(bad(format!("format {}, expected {FORMAT}", meta.format)));
        }
        if meta.dim != expected_dim {
            return Err(bad(format!(
                "dimension {}, expected {expected_dim}",
                meta.dim
            )));
        }
        let graph_path = dir.join(GRAPH_FILE);
        let (bytes, digest) = sha256_of(&graph_path).map_err(|e| bad(e.to_string()))?;
        if (bytes, digest.as_str()) != (meta.graph_bytes, meta.graph_sha256.as_str()) {
            return Err(bad("the graph file does not match its checksum".into()));
        }
        let mut graph = Graph::load(&graph_path, meta.dim, meta.points.max(1024))
            .map_err(|e| bad(format!("hnswlib: {e}")))?;
        if graph.live_count() != meta.points {
            return Err(bad(format!(
                "{} points, metadata says {}",
                graph.live_count(),
                meta.points
            )));
        }
        graph.set_ef(meta.params.ef_search);
        let index = Self {
            dim: meta.dim,
            params: meta.params,
            graph,
            insert_threads: insertion_threads(),
        };
        Ok((index, meta))
    }
}

impl exemplar_core::ann::VectorIndex for AnnIndex {
    fn insert_batch(&mut self, items: &[(i64, Vec<f32>)]) -> std::result::Result<(), String> {
        let items: Vec<(u64, Vec<f32>)> = items
            .iter()
            .map(|(id, v)| {
                u64::try_from(*id)
                    .map(|id| (id, v.clone()))
                    .map_err(|_| format!("negative id {id}"))
            })
            .collect::<std::result::Result<_, _>>()?;
        AnnIndex::insert_batch(self, &items).map_err(|e| e.to_string())
    }

    fn remove(&mut self, id: i64) -> bool {
        u64::try_from(id).is_ok_and(|id| AnnIndex::remove(self, id))
    }

    fn search(&self, query: &[f32], k: usize) -> std::result::Result<Vec<(i64, f32)>, String> {
        AnnIndex::search(self, query, k)
            .map(|hits| hits.into_iter().map(|h| (h.id as i64, h.score)).collect())
            .map_err(|e| e.to_string())
    }

    fn contains(&self, id: i64) -> bool {
        u64::try_from(id).is_ok_and(|id| AnnIndex::contains(self, id))
    }

    fn len(&self) -> usize {
        AnnIndex::len(self)
    }

    fn empty_like(&self, capacity: usize) -> Self {
        AnnIndex::new(self.dim, self.params, capacity)
    }
}

/// Where [`AnnIndex::save`] keeps a dump inside a data directory.
pub fn dump_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}
