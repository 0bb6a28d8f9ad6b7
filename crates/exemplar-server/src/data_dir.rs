//! A data directory: the catalogue (SQLite), its projection and the index dump. `serve`
//! and `import` own one (a lock file keeps a second owner out); `search` only reads.

use crate::cli::CatalogueArgs;
use crate::http::AppCatalogue;
use anyhow::Context;
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::service::{Catalogue, Limits, VerdictRule};
use exemplar_core::{FeatureExtractor, Projection};
use exemplar_embed::CnnEmbedder;
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DATABASE_FILE: &str = "catalogue.sqlite";

/// Exclusive ownership of a data directory while it is held: two writers would each
/// keep their own index and dump over each other's.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let path = dir.join("exemplar.lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "data dir {} is in use by another exemplar process (a running server?): stop it, or send the photos to its HTTP API",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// The database file of an existing catalogue, or a clear error for read-only commands.
pub fn existing_database(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(DATABASE_FILE);
    anyhow::ensure!(
        path.exists(),
        "no catalogue in {} (no {DATABASE_FILE}): run `exemplar import` or `exemplar serve` with this --data-dir first",
        dir.display()
    );
    Ok(path)
}

const DESCRIPTOR_DIM: usize = 256;

/// Everything `serve` needs, built from a loaded embedder.
pub async fn open_catalogue(
    args: &CatalogueArgs,
    embedder: Arc<CnnEmbedder>,
) -> anyhow::Result<Arc<AppCatalogue>> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let projection = projection(dir, &embedder)?;
    let store = SqliteStore::open(&dir.join(DATABASE_FILE)).await?;
    let params = IndexParams {
        m: args.hnsw_m,
        ef_construction: args.hnsw_ef_construction,
        ef_search: args.hnsw_ef_search,
    };
    // The index is a cache: a missing, stale or corrupt dump is rebuilt from the log.
    let dump = exemplar_index::dump_dir(dir);
    let (index, watermark) = match AnnIndex::load(&dump, DESCRIPTOR_DIM) {
        Ok((mut index, meta)) => {
            index.set_ef_search(params.ef_search);
            (index, meta.watermark as i64)
        }
        Err(_) if !dump.exists() => {
            tracing::info!("no index dump yet: building the index from the database");
            (AnnIndex::new(DESCRIPTOR_DIM, params, 10_000), 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable index dump: rebuilding from the database");
            (AnnIndex::new(DESCRIPTOR_DIM, params, 10_000), 0)
        }
    };
    let model = embedder.info().id.clone();
    // Model time is recorded for `/metrics` (a no-op outside `serve`).
    let timed = Arc::new(crate::http::metrics::TimedExtractor::new(embedder));
    let queue = EmbedQueue::start(timed, args.queue_capacity, 8);
    let catalogue = Catalogue::new(
        store,
        index,
        queue,
        projection,
        model,
        Limits::default(),
        VerdictRule::default(),
    );
    let head = catalogue.catch_up(watermark).await?;
    tracing::info!(
        indexed = catalogue.indexed(),
        from = watermark,
        to = head,
        "index caught up"
    );
    Ok(Arc::new(catalogue))
}

/// The stored projection, or the data-free default on first start (then stored).
fn projection(dir: &Path, embedder: &CnnEmbedder) -> anyhow::Result<Projection> {
    let path = dir.join("projection.safetensors");
    if path.exists() {
        let p = Projection::load(&path)?;
        anyhow::ensure!(
            p.input_dim() == embedder.info().feature_dim,
            "{} projects {}-d features but model {} makes {}-d ones: use the model the catalogue was built with",
            path.display(),
            p.input_dim(),
            embedder.info().id,
            embedder.info().feature_dim
        );
        return Ok(p);
    }
    let p = exemplar_embed::default_projection(embedder, DESCRIPTOR_DIM)?;
    p.save(&path)?;
    Ok(p)
}

/// Writes the index dump, tagged with the change log position it reflects.
pub async fn save_index(catalogue: &AppCatalogue, dir: &Path) -> anyhow::Result<()> {
    let head = catalogue.catch_up(0).await?;
    catalogue
        .read_index()
        .save(&exemplar_index::dump_dir(dir), head as u64)?;
    Ok(())
}
