//! The approximate nearest-neighbour index over descriptors: an HNSW graph (`hnsw_rs`).
//!
//! The index is a cache of the catalogue database, never the source of truth: it can be
//! dumped for a fast restart and rebuilt from the database whenever its dump is missing,
//! stale or corrupt. hnsw_rs 0.3 has pitfalls this module exists to contain:
//! - no deletion: deleted ids become tombstones filtered during the search, and a rebuild
//!   compacts them away ([`AnnIndex::needs_compaction`]);
//! - `DistDot` panics on vectors whose norm drifts above 1 and `DistCosine` is scalar and
//!   slow: descriptors are unit vectors, so we search with SIMD `DistL2` and convert,
//!   `cosine = 1 - d²/2`;
//! - insertion and search must not run concurrently: every mutation takes `&mut self`, so
//!   the owner's `RwLock` lets many searches or one writer in;
//! - points reported unreachable after parallel builds (#32, #37): tests self-query every
//!   inserted id;
//! - a loaded graph borrows its `HnswIo` loader, which must outlive it: the loader is kept
//!   for the life of the process (one per load, loads happen at start-up).

use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{AnnT, DistL2, Hnsw};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use thiserror::Error;

const DUMP_BASENAME: &str = "hnsw";
const META_FILE: &str = "meta.json";
const FORMAT: &str = "exemplar-hnsw/1";
/// hnsw_rs caps the number of layers at 16.
const MAX_LAYERS: usize = 16;

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
    /// Candidate list size while searching (at least k).
    pub ef_search: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        // Measured (docs/benchmarks.md): on random 256-d unit vectors, the hardest case, M=16 reaches
        // recall@10 0.80 on 20k points only at ef_search 256; M=48 reaches 0.92 at 128.
        Self {
            m: 48,
            ef_construction: 300,
            ef_search: 128,
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
    pub points: usize,
    pub tombstones: Vec<u64>,
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
    graph: Hnsw<'static, f32, DistL2>,
    ids: HashSet<u64>,
    tombstones: HashSet<u64>,
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

impl AnnIndex {
    /// An empty index sized for about `capacity` points.
    pub fn new(dim: usize, params: IndexParams, capacity: usize) -> Self {
        // `modify_level_scale` (the suggested remedy for hnsw_rs #32/#37) made no measurable
        // recall difference here (0.80 vs 0.80 at 20k points, ef 256) and prints to stdout,
        // so it is not used; tests self-query every point instead.
        let graph = Hnsw::new(
            params.m,
            capacity.max(1024),
            MAX_LAYERS,
            params.ef_construction,
            DistL2 {},
        );
        Self {
            dim,
            params,
            graph,
            ids: HashSet::new(),
            tombstones: HashSet::new(),
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
    }

    /// Live (searchable) points.
    pub fn len(&self) -> usize {
        self.ids.len() - self.tombstones.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }
    pub fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id) && !self.tombstones.contains(&id)
    }

    /// When a fifth of the graph is dead weight, a rebuild pays for itself.
    pub fn needs_compaction(&self) -> bool {
        self.tombstones.len() * 5 > self.ids.len().max(1)
    }

    pub fn insert(&mut self, id: u64, vector: &[f32]) -> Result<()> {
        self.insert_batch(&[(id, vector.to_vec())])
    }

    /// Inserts all or nothing: every vector is checked before the graph is touched.
    pub fn insert_batch(&mut self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        let mut seen = HashSet::new();
        for (id, v) in items {
            check_unit(v, self.dim)?;
            if self.ids.contains(id) || !seen.insert(*id) {
                return Err(IndexError::DuplicateId(*id));
            }
        }
        let data: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, v)| (v, *id as usize)).collect();
        if data.len() > 64 {
            self.graph.parallel_insert(&data);
        } else {
            for (v, id) in data {
                self.graph.insert((v.as_slice(), id));
            }
        }
        self.ids.extend(items.iter().map(|(id, _)| *id));
        Ok(())
    }

    /// Marks `id` deleted: it never appears in a result again. Returns whether it was live.
    pub fn remove(&mut self, id: u64) -> bool {
        self.ids.contains(&id) && self.tombstones.insert(id)
    }

    /// The `k` nearest live points, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_unit(query, self.dim)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let ef = self.params.ef_search.max(k);
        let tombstones = &self.tombstones;
        let alive = |id: &usize| !tombstones.contains(&(*id as u64));
        let found = if tombstones.is_empty() {
            self.graph.search(query, k, ef)
        } else {
            self.graph.search_filter(query, k, ef, Some(&alive))
        };
        Ok(found
            .into_iter()
            .map(|n| Hit {
                id: n.d_id as u64,
                score: 1.0 - n.distance * n.distance / 2.0,
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
        // hnsw_rs cannot dump an empty graph; the metadata alone says "empty".
        if !self.ids.is_empty() {
            self.graph
                .file_dump(&staging, DUMP_BASENAME)
                .map_err(|e| IndexError::BadDump {
                    path: staging.display().to_string(),
                    reason: e.to_string(),
                })?;
        }
        let mut tombstones: Vec<u64> = self.tombstones.iter().copied().collect();
        tombstones.sort_unstable();
        let meta = DumpMeta {
            format: FORMAT.into(),
            dim: self.dim,
            params: self.params,
            watermark,
            space: space.to_string(),
            points: self.ids.len(),
            tombstones,
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

    /// Loads a dump written by [`AnnIndex::save`]; checks its format, dimension and point
    /// count. Any problem is [`IndexError::BadDump`]: rebuild from the database then.
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
        if meta.points == 0 {
            return Ok((Self::new(meta.dim, meta.params, 1024), meta));
        }
        // The loaded graph borrows its loader: keep the loader alive for the process.
        let graph = std::panic::catch_unwind(|| load_graph(dir))
            .map_err(|_| bad("hnsw_rs panicked while reading the dump".into()))?
            .map_err(bad)?;
        if graph.get_nb_point() != meta.points {
            return Err(bad(format!(
                "{} points, metadata says {}",
                graph.get_nb_point(),
                meta.points
            )));
        }
        let ids: HashSet<u64> = graph
            .get_point_indexation()
            .into_iter()
            .map(|p| p.get_origin_id() as u64)
            .collect();
        let index = Self {
            dim: meta.dim,
            params: meta.params,
            graph,
            ids,
            tombstones: meta.tombstones.iter().copied().collect(),
        };
        Ok((index, meta))
    }
}

fn load_graph(dir: &Path) -> std::result::Result<Hnsw<'static, f32, DistL2>, String> {
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, DUMP_BASENAME)));
    loader.load_hnsw::<f32, DistL2>().map_err(|e| e.to_string())
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

    fn needs_compaction(&self) -> bool {
        AnnIndex::needs_compaction(self)
    }
}

/// Where [`AnnIndex::save`] keeps a dump inside a data directory.
pub fn dump_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}
