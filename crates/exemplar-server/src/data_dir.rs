//! A data directory: the catalogue (SQLite), its projection, the kept photos and the
//! index dumps. `serve`
//! and `import` own one (a lock file keeps a second owner out); `search` only reads.

use crate::cli::{CatalogueArgs, ModelArgs, DESCRIPTOR_DIM};
use crate::model::TimedExtractor;
use crate::reindex::IndexSpec;
use anyhow::Context;
use exemplar_core::catalogue::{CatalogueStore, Sequence};
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::reindex::ReindexStore;
use exemplar_core::service::{Catalogue, Limits};
use exemplar_core::shortlist::WordIndex;
use exemplar_core::{FeatureExtractor, Projection, RefitPolicy};
use exemplar_embed::image_input::DecodeBudget;
use exemplar_embed::{CnnEmbedder, EmbedderConfig};
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::{FsPhotoStore, PgStore, SqliteStore, Store};
use exemplar_verify::{ExtractParams, HomographyVerifier, VisualWords};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DATABASE_FILE: &str = "catalogue.sqlite";

/// The catalogue service as this binary composes it.
pub type AppCatalogue = Catalogue<Store, AnnIndex>;

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

/// The catalogue: the PostgreSQL database at `database`, else the SQLite file in `dir`.
pub async fn open_store(dir: &Path, database: Option<&str>) -> anyhow::Result<Store> {
    Ok(match database {
        Some(url) => Store::Postgres(
            PgStore::connect(url)
                .await
                .context("connecting to the PostgreSQL catalogue (--database)")?,
        ),
        None => Store::Sqlite(SqliteStore::open(&dir.join(DATABASE_FILE)).await?),
    })
}

/// The model settings for the catalogue in `dir` (or at `database`): those of its last
/// re-index when it had one (differing flags are ignored, with a warning: models change
/// by re-indexing), else the flags'.
pub async fn catalogue_model(
    dir: &Path,
    database: Option<&str>,
    flags: &ModelArgs,
) -> anyhow::Result<ModelArgs> {
    let path = dir.join(DATABASE_FILE);
    let recorded = match database {
        Some(url) => PgStore::connect(url).await?.index_spec().await,
        None if !path.exists() => return Ok(flags.clone()),
        None => {
            let store = SqliteStore::open(&path).await?;
            let recorded = store.index_spec().await;
            store.close().await;
            recorded
        }
    };
    let recorded = recorded?;
    let Some(recorded) = recorded else {
        return Ok(flags.clone());
    };
    let spec: IndexSpec = serde_json::from_str(&recorded)
        .with_context(|| format!("the model settings recorded in {}", path.display()))?;
    if spec != IndexSpec::of(flags) {
        tracing::warn!(
            catalogue = %serde_json::to_string(&spec).unwrap_or_default(),
            "the catalogue was re-indexed with these model settings: they are used, not the flags' (change them with `exemplar reindex`)"
        );
    }
    spec.apply(flags)
}

/// Everything `serve` needs, built from a loaded embedder; `local` is the local features it
/// makes (`None`: a global-only service).
pub async fn open_catalogue(
    args: &CatalogueArgs,
    embedder: Arc<CnnEmbedder>,
    local: Option<&ExtractParams>,
) -> anyhow::Result<Arc<AppCatalogue>> {
    let dir = &args.dir.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let store = open_store(dir, args.database.as_deref()).await?;
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
    let projection_version = projection.version().to_string();
    let model = embedder.info().id.clone();
    let verifies = embedder.makes_local_features();
    if let Some(params) = local {
        warn_of_other_local_features(&store, params.kind).await?;
    }
    let max_batch = embedder.config().max_batch;
    let photos = photo_store(args.photos_parent(), embedder.config())?;
    let queue = EmbedQueue::start(
        Arc::new(TimedExtractor::new(embedder)),
        args.queue_capacity,
        max_batch,
    );
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
    let catalogue = catalogue.with_photos(photos, args.keep_photos);
    let catalogue = if verifies {
        catalogue.with_verifier(Arc::new(HomographyVerifier::default()), args.two_stage())
    } else {
        catalogue
    };
    let (catalogue, from) = match (verifies, args.stages.vocabulary_fitter()) {
        (true, Some(fitter)) => {
            let tag = words_tag(&projection_version, catalogue.store().index_spec().await?);
            let (words, words_watermark) = load_words(dir, &tag);
            let from = watermark.min(words_watermark.unwrap_or(watermark));
            (catalogue.with_word_index(Arc::new(fitter), words), from)
        }
        _ => (catalogue, watermark),
    };
    let head = catalogue.catch_up(from).await?;
    tracing::info!(
        indexed = catalogue.indexed(),
        from = watermark,
        to = head,
        "index caught up"
    );
    Ok(Arc::new(catalogue))
}

/// Removes the photos no exemplar refers to (left by a crash between keeping a photo and
/// committing its row). Only for the data directory's owner (see [`DataDirLock`]): a
/// reader must not, as the owner may be between those two steps.
pub async fn collect_orphan_photos(
    catalogue: &AppCatalogue,
    _owner: &DataDirLock,
) -> anyhow::Result<()> {
    let collected = catalogue.collect_all_photos().await?;
    if collected > 0 {
        tracing::info!(photos = collected, "removed photos no exemplar refers to");
    }
    Ok(())
}

/// The data directory's photo store, making thumbnails within the model's limits on a
/// photo (`--max-pixels`) and on decoding memory (a budget of its own, as large as the
/// model's: a photo the model could read gets its thumbnail).
pub fn photo_store(dir: &Path, model: &EmbedderConfig) -> anyhow::Result<Arc<FsPhotoStore>> {
    let max_pixels = model.max_pixels;
    let budget = DecodeBudget::new(model.decode_memory_bytes);
    let thumbnailer = Box::new(move |bytes: &[u8]| {
        exemplar_embed::image_input::thumbnail_jpeg(bytes, max_pixels, &budget)
            .map_err(|e| e.to_string())
    });
    FsPhotoStore::open(dir, thumbnailer)
        .map(Arc::new)
        .with_context(|| format!("opening the photo store in {}", dir.display()))
}

/// The data directory's photos, to read or to receive copies with their thumbnails (it
/// makes none).
pub fn photo_reader(dir: &Path) -> anyhow::Result<Arc<FsPhotoStore>> {
    let refuse = Box::new(|_: &[u8]| Err("this photo store only reads".to_string()));
    FsPhotoStore::open(dir, refuse)
        .map(Arc::new)
        .with_context(|| format!("opening the photo store in {}", dir.display()))
}

/// Exemplars whose stored local features are of another kind than this server makes
/// (ORB ones from before SIFT, say) cannot be verified: say so, and how to fix it.
async fn warn_of_other_local_features(
    store: &Store,
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
    store: &Store,
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

/// What a word index dump was made beside: the projection and the model settings of the
/// last re-index (a re-index may change the local features and keep the projection).
fn words_tag(projection: &str, index_spec: Option<String>) -> String {
    use sha2::{Digest, Sha256};
    let spec = index_spec.map_or_else(String::new, |s| {
        Sha256::digest(s.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    });
    format!("{projection}/{spec}")
}

/// The word index dump: magic, the change log position it holds (u64), its tag (see
/// [`words_tag`]; u32 length, UTF-8), the index.
fn words_file(dir: &Path) -> PathBuf {
    dir.join("words.bin")
}

const WORDS_MAGIC: &[u8; 4] = b"EXW2";

/// The word index dump and the change log position it holds; none when missing,
/// unreadable or made beside another projection or index version (a refit or a re-index
/// since: its vocabulary may be of other features). The index is a cache: it is fitted again once
/// the catalogue is large enough, see `Catalogue::rebuild_words_if_due`.
fn load_words(dir: &Path, tag: &str) -> (Option<Box<dyn WordIndex>>, Option<Sequence>) {
    let path = words_file(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, None),
        Err(e) => {
            tracing::warn!(error = %e, "word index dump unreadable: it is rebuilt from the database");
            return (None, None);
        }
    };
    let header = (bytes.len() >= 16 && &bytes[..4] == WORDS_MAGIC).then(|| {
        let watermark = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let space = bytes.get(16..16 + len).unwrap_or_default();
        (watermark, space == tag.as_bytes(), 16 + len)
    });
    let parsed = match header {
        Some((watermark, true, start)) => {
            VisualWords::load(&bytes[start..]).map(|w| (w, watermark))
        }
        Some((_, false, _)) => Err(exemplar_verify::vocabulary::VocabularyError(
            "made beside another projection or index version".into(),
        )),
        None => Err(exemplar_verify::vocabulary::VocabularyError(
            "not a word index dump".into(),
        )),
    };
    match parsed {
        Ok((words, watermark)) => {
            tracing::info!(vocabulary = %words.version(), exemplars = words.len(), "word index loaded");
            (Some(Box::new(words)), Some(watermark as Sequence))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable word index dump: it is rebuilt from the database");
            (None, None)
        }
    }
}

/// Writes the word index dump next to a temporary name, then renames it over the old.
fn save_words(dir: &Path, words: &dyn WordIndex, head: Sequence, tag: &str) -> anyhow::Result<()> {
    let path = words_file(dir);
    let partial = path.with_extension("bin.partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    out.write_all(WORDS_MAGIC)?;
    out.write_all(&(head as u64).to_le_bytes())?;
    out.write_all(&(tag.len() as u32).to_le_bytes())?;
    out.write_all(tag.as_bytes())?;
    words.save(&mut out)?;
    out.into_inner()?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(())
}

/// Writes the index dump, tagged with the change log position and projection it
/// reflects. Writers wait meanwhile (searches do not); the file writing runs with the
/// async worker handed over to the blocking pool.
/// Returns the change sequence number the dump holds.
pub async fn save_index(catalogue: &AppCatalogue, dir: &Path) -> anyhow::Result<Sequence> {
    let dump = exemplar_index::dump_dir(dir);
    // Read before the checkpoint: a re-index switching in between leaves a dump tagged
    // with the old settings, which is discarded (never the other way round).
    let index_spec = catalogue.store().index_spec().await?;
    let head = catalogue
        .checkpoint(|index, head, projection, words| {
            tokio::task::block_in_place(|| {
                index.save(&dump, head as u64, projection.version())?;
                if let Some(words) = words {
                    let tag = words_tag(projection.version(), index_spec);
                    save_words(dir, words, head, &tag)?;
                }
                anyhow::Ok(head)
            })
        })
        .await??;
    Ok(head)
}
