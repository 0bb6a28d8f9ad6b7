//! A data directory: the catalogue (SQLite), its projection and the index dump. `serve`
//! and `import` own one (a lock file keeps a second owner out); `search` only reads.

use crate::cli::CatalogueArgs;
use crate::http::AppCatalogue;
use anyhow::Context;
use exemplar_core::catalogue::{CatalogueStore, Sequence};
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::service::{Catalogue, Limits};
use exemplar_core::{FeatureExtractor, Projection, RefitPolicy};
use exemplar_embed::CnnEmbedder;
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;
use exemplar_verify::HomographyVerifier;
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
    let store = SqliteStore::open(&dir.join(DATABASE_FILE)).await?;
    let projection = projection(&store, dir, &embedder).await?;
    let params = IndexParams {
        m: args.hnsw_m,
        ef_construction: args.hnsw_ef_construction,
        ef_search: args.hnsw_ef_search,
    };
    // The index is a cache: a missing, stale, corrupt or other-space dump is rebuilt
    // from the database.
    let dump = exemplar_index::dump_dir(dir);
    let fresh = || AnnIndex::new(DESCRIPTOR_DIM, params, 10_000);
    let (index, watermark) = match AnnIndex::load(&dump, DESCRIPTOR_DIM) {
        Ok((mut index, meta)) if meta.space == projection.version() => {
            index.set_ef_search(params.ef_search);
            (index, meta.watermark as i64)
        }
        Ok((_, meta)) => {
            tracing::info!(dump = %meta.space, current = %projection.version(), "index dump is of another projection: rebuilding from the database");
            (fresh(), 0)
        }
        Err(_) if !dump.exists() => {
            tracing::info!("no index dump yet: building the index from the database");
            (fresh(), 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable index dump: rebuilding from the database");
            (fresh(), 0)
        }
    };
    let model = embedder.info().id.clone();
    let verifies = embedder.makes_local_features();
    if let Some(params) = &embedder.config().local_features {
        warn_of_other_local_features(&store, params.kind).await?;
    }
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
        args.stages.verdict_rule(),
    )
    .with_refit_policy(RefitPolicy {
        min_exemplars: args.refit_min_exemplars,
        ..RefitPolicy::default()
    });
    let catalogue = if verifies {
        catalogue.with_verifier(Arc::new(HomographyVerifier::default()), args.two_stage())
    } else {
        catalogue
    };
    let head = catalogue.catch_up(watermark).await?;
    tracing::info!(
        indexed = catalogue.indexed(),
        from = watermark,
        to = head,
        "index caught up"
    );
    Ok(Arc::new(catalogue))
}

/// Exemplars whose stored local features are of another kind than this server makes
/// (ORB ones from before SIFT, say) cannot be verified: say so, and how to fix it.
async fn warn_of_other_local_features(
    store: &SqliteStore,
    kind: exemplar_verify::FeatureKind,
) -> anyhow::Result<()> {
    let other = store
        .exemplar_hashes()
        .await?
        .iter()
        .filter(|e| {
            e.local_format
                .as_deref()
                .is_some_and(|f| exemplar_verify::stored_kind(f) != Some(kind))
        })
        .count();
    if other > 0 {
        tracing::warn!(
            exemplars = other,
            local_features = %kind,
            "exemplars have local features of another kind and cannot be verified: import their photos again (`exemplar import`), or serve with the kind they were made with (--local-features)"
        );
    }
    Ok(())
}

/// The catalogue's projection; on first start the data-free default (recorded then).
async fn projection(
    store: &SqliteStore,
    dir: &Path,
    embedder: &CnnEmbedder,
) -> anyhow::Result<Projection> {
    let p = match store.projection().await? {
        Some(p) => p,
        None => {
            // Data directories from before projections lived in the database.
            let legacy = dir.join("projection.safetensors");
            let p = if legacy.exists() {
                Projection::load(&legacy)?
            } else {
                exemplar_embed::default_projection(embedder, DESCRIPTOR_DIM)?
            };
            store.set_projection(&p).await?;
            p
        }
    };
    anyhow::ensure!(
        p.input_dim() == embedder.info().feature_dim,
        "the catalogue in {} projects {}-d features but model {} makes {}-d ones: use the model the catalogue was built with",
        dir.display(),
        p.input_dim(),
        embedder.info().id,
        embedder.info().feature_dim
    );
    Ok(p)
}

/// Writes the index dump, tagged with the change log position and projection it
/// reflects. Writers wait meanwhile (searches do not); the file writing runs with the
/// async worker handed over to the blocking pool.
/// Returns the change sequence number the dump holds.
pub async fn save_index(catalogue: &AppCatalogue, dir: &Path) -> anyhow::Result<Sequence> {
    let dump = exemplar_index::dump_dir(dir);
    let head = catalogue
        .checkpoint(|index, head, projection| {
            tokio::task::block_in_place(|| index.save(&dump, head as u64, projection.version()))
                .map(|()| head)
        })
        .await??;
    Ok(head)
}
