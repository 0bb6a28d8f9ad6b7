//! The catalogue service: what `POST /classes`, `POST /search` and the deletes do, over
//! any store, index and feature extractor.
//!
//! Order of a write: embed every image (a bad one rejects the request before anything is
//! written), commit to the store (the acknowledgement point), then insert into the index,
//! so the answer is searchable as soon as it is sent. The index is a cache: after a crash
//! [`Catalogue::catch_up`] replays the store's change log into it.
//!
//! The projection and the index it fills form one [`Space`], swapped whole by a refit or
//! a compaction (`rebuild.rs`). Writes hold the shared side of a gate from projecting to
//! indexing; a swap takes the exclusive side for its last step, so no write straddles two
//! spaces. Searches never wait for the gate.
//!
//! A re-index (`reindex.rs`) swaps the model too: the model is part of the space, a write
//! whose photos were embedded by a model swapped out meanwhile embeds them again, and a
//! search that overlapped a switch runs again (`switches` works as a sequence lock).

use crate::ann::VectorIndex;
use crate::catalogue::{
    CatalogueStore, Change, ClassId, ClassRecord, ExemplarId, Metadata, NewExemplar, Sequence,
    StoreError, Stored,
};
use crate::embed_queue::{EmbedQueue, Want};
use crate::error::Error;
use crate::extractor::{CropBox, ExtractError, Extracted, LocalFor, View};
use crate::photos::PhotoStore;
use crate::projection::Projection;
use crate::refit::RefitPolicy;
use crate::shortlist::{WordIndex, WordIndexFitter};
use crate::unknowns::InboxPolicy;
use crate::verifier::{EarlyStop, Evidence, Verifier};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use thiserror::Error;

pub use crate::verifier::VerdictRule;

mod photos;
mod rebuild;
mod reindex;
mod search;
mod train;
mod unknowns;
mod words;
pub use rebuild::Rebuilt;
pub use reindex::{NewVersion, ReindexState, ReindexStatus, Reindexed, REINDEX_SHARE};
pub use train::TrainingExemplar;
pub use unknowns::{Promoted, Promotion};
pub use words::WordsRebuilt;

/// One uploaded photo.
#[derive(Debug, Clone)]
pub struct Upload {
    pub bytes: Vec<u8>,
    pub name: Option<String>,
    /// Look only at this part of the photo.
    pub crop: Option<CropBox>,
}

impl Upload {
    pub fn new(bytes: Vec<u8>, name: Option<String>) -> Self {
        Self {
            bytes,
            name,
            crop: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_label_chars: usize,
    pub max_images_per_request: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_key_chars: usize,
    pub max_metadata_value_chars: usize,
    /// Keys and values together, in UTF-8 bytes: metadata travels in every search answer.
    pub max_metadata_bytes: usize,
    /// An upload's file name is kept (as a display name) up to this many characters.
    pub max_name_chars: usize,
    pub max_k: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_label_chars: 200,
            max_images_per_request: 32,
            max_metadata_entries: 32,
            max_metadata_key_chars: 64,
            max_metadata_value_chars: 1000,
            max_metadata_bytes: 8 * 1024,
            max_name_chars: 255,
            max_k: 100,
        }
    }
}

/// An upload's file name as it is stored and shown: its last path component, without
/// control or bidirectional-override characters (which could disguise it), trimmed and
/// cut to `max_chars`; `None` when nothing is left.
pub fn display_name(name: &str, max_chars: usize) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let is_hidden_control = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let clean: String = last.chars().filter(|c| !is_hidden_control(*c)).collect();
    let clean: String = clean.trim().chars().take(max_chars).collect();
    (!clean.is_empty()).then_some(clean)
}

/// The two-stage search: how many global neighbours are verified, and whether the
/// query's centre is searched as well (a cover that fills part of the frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoStage {
    pub shortlist: usize,
    /// Side fraction of the centre view; `None`: the whole photo only.
    pub centre_view: Option<f32>,
    /// `None`: the whole shortlist is always verified.
    pub early_stop: Option<EarlyStop>,
}

impl Default for TwoStage {
    /// A shortlist of 100 (global and visual-word rankings merged), the central two
    /// thirds, verified 16 at a time and stopping at 80 inliers spanning 20 %: the
    /// shortlist is the shortest whose first stage finds 99 % of the photos' covers on
    /// SMVS-dev with 1,076 distractors (`exemplar calibrate --folds 2`); a photo of a
    /// catalogued cover is mostly settled by the first 16 (docs/benchmarks.md).
    fn default() -> Self {
        Self {
            shortlist: 100,
            centre_view: Some(2.0 / 3.0),
            early_stop: Some(EarlyStop {
                chunk: 16,
                inliers: 80,
                coverage: 0.2,
            }),
        }
    }
}

#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request is wrong; `kind` is a stable machine-readable name.
    #[error("{message}")]
    BadRequest { kind: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the catalogue's state does not allow it now.
    #[error("{message}")]
    Conflict { kind: &'static str, message: String },
    /// Too much work queued: retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// A resource the service needs (its database) cannot be reached now: retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ClassNotFound(id) => {
                ServiceError::NotFound(format!("class {id} not found"))
            }
            StoreError::Invalid(m) => ServiceError::BadRequest {
                kind: "invalid",
                message: m,
            },
            StoreError::Backend(m) => ServiceError::Internal(m),
            e @ StoreError::Unavailable(_) => ServiceError::Unavailable(e.to_string()),
            StoreError::Stale(m) => ServiceError::Busy(format!("{m}: send it again")),
        }
    }
}

fn bad(kind: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest {
        kind,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExemplarOutcome {
    pub id: ExemplarId,
    pub name: Option<String>,
    /// The class already held these exact bytes.
    pub duplicate: bool,
    /// The photo was kept with this upload (false: the service keeps features only).
    pub photo_kept: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub exemplar_id: ExemplarId,
    pub class_id: ClassId,
    pub label: String,
    /// Global (descriptor) similarity, the best over the query's views.
    pub score: f32,
    /// Spatial verification of this exemplar, when it was verified.
    pub evidence: Option<Evidence>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    pub class_id: ClassId,
    pub label: String,
    pub metadata: Metadata,
    /// The best neighbour's score.
    pub score: f32,
    /// How many of the returned neighbours belong to the class.
    pub support: usize,
    /// The class's strongest verification among the returned neighbours.
    pub evidence: Option<Evidence>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Match {
        class_id: ClassId,
        label: String,
        score: f32,
        margin: f32,
        /// The verification that decided it (`None` for a global-only service).
        evidence: Option<Evidence>,
    },
    Unknown {
        best_score: Option<f32>,
        margin: Option<f32>,
        /// The most inliers any candidate reached (when verifying).
        best_inliers: Option<u32>,
    },
}

/// Where a search spent its time, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTimings {
    /// Decoding, the CNN on every view, local features of the query.
    pub embed_ms: f64,
    /// Projection, ANN search of every view, the store lookups.
    pub shortlist_ms: f64,
    /// Reading the shortlist's local features and verifying them (0 when global-only).
    pub verify_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchAnswer {
    pub neighbours: Vec<Neighbour>,
    pub classes: Vec<ClassScore>,
    pub verdict: Verdict,
    pub timings: StageTimings,
}

/// What the search space is made with now (shown by `/readyz` and `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// The model (backbone, weights, geometry, pooling) that embeds photos.
    pub model: String,
    /// The projection from pooled features to descriptors.
    pub projection: String,
    /// The visual-word vocabulary, once one is fitted.
    pub vocabulary: Option<String>,
    /// Added exemplars keep their photos.
    pub keeps_photos: bool,
}

/// What turns photos into features: a model behind its queue.
pub struct Extraction {
    pub queue: EmbedQueue,
    /// The model's id (backbone, weights, geometry, pooling).
    pub model: String,
}

/// A descriptor space: the model, the projection and the index of descriptors made
/// with them.
pub struct Space<I> {
    pub projection: Arc<Projection>,
    pub index: I,
    pub extraction: Arc<Extraction>,
}

/// A photo through the model, before projection.
struct Embedded {
    extracted: Extracted,
    sha256: String,
    name: Option<String>,
}

pub struct Catalogue<S, I> {
    store: S,
    space: RwLock<Space<I>>,
    /// Writes share it; a space swap or a checkpoint takes it alone.
    gate: tokio::sync::RwLock<()>,
    /// One rebuild (refit or compaction) at a time.
    rebuilding: tokio::sync::Mutex<()>,
    /// Odd while a re-index switch is under way; searches that saw it change run again.
    switches: AtomicU64,
    reindex: Mutex<ReindexStatus>,
    reindex_cancelled: AtomicBool,
    limits: Limits,
    verdict: VerdictRule,
    refit: RefitPolicy,
    verifier: Option<Arc<dyn Verifier>>,
    two_stage: TwoStage,
    /// The visual-word shortlist beside the global one: what fits its vocabulary, and
    /// the index (`None` until a vocabulary is fitted: the global shortlist alone).
    word_fitter: Option<Arc<dyn WordIndexFitter>>,
    words: RwLock<Option<Box<dyn WordIndex>>>,
    /// Where photos are kept (`photos.rs`); `keep_photos`: new exemplars keep theirs.
    photos: Option<Arc<dyn PhotoStore>>,
    keep_photos: bool,
    /// Photos written for writes that failed, checked at the next collection.
    suspects: Mutex<HashSet<String>>,
    /// How many photos of `unknown` searches to keep, and how long (`unknowns.rs`).
    inbox: Mutex<InboxPolicy>,
    /// The last change of the store's log replayed by [`Catalogue::catch_up`].
    caught_up: std::sync::atomic::AtomicI64,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    pub fn new(
        store: S,
        index: I,
        queue: EmbedQueue,
        projection: Projection,
        model: String,
        limits: Limits,
        verdict: VerdictRule,
    ) -> Self {
        Self {
            store,
            space: RwLock::new(Space {
                projection: Arc::new(projection),
                index,
                extraction: Arc::new(Extraction { queue, model }),
            }),
            gate: tokio::sync::RwLock::new(()),
            rebuilding: tokio::sync::Mutex::new(()),
            switches: AtomicU64::new(0),
            reindex: Mutex::new(ReindexStatus::default()),
            reindex_cancelled: AtomicBool::new(false),
            limits,
            verdict,
            refit: RefitPolicy::default(),
            verifier: None,
            two_stage: TwoStage::default(),
            word_fitter: None,
            words: RwLock::new(None),
            photos: None,
            keep_photos: false,
            suspects: Mutex::new(HashSet::new()),
            inbox: Mutex::new(InboxPolicy::OFF),
            caught_up: 0.into(),
        }
    }

    /// Adds the visual-word shortlist (needs a verifier: it indexes the stored local
    /// features). `words`: an index loaded from a dump, to be caught up like the ANN one;
    /// `None`: one is fitted once the catalogue is large enough (see
    /// [`Catalogue::rebuild_words_if_due`]).
    pub fn with_word_index(
        mut self,
        fitter: Arc<dyn WordIndexFitter>,
        words: Option<Box<dyn WordIndex>>,
    ) -> Self {
        self.word_fitter = Some(fitter);
        self.words = RwLock::new(words);
        self
    }

    /// The word index, read-locked (`None` inside when there is none yet).
    pub fn read_words(&self) -> std::sync::RwLockReadGuard<'_, Option<Box<dyn WordIndex>>> {
        self.words.read().expect("words lock")
    }

    fn write_words(&self) -> std::sync::RwLockWriteGuard<'_, Option<Box<dyn WordIndex>>> {
        self.words.write().expect("words lock")
    }

    /// Verifies the global shortlist with local features (the extractor must make them:
    /// exemplars stored from now on carry them) and bases the verdict on that evidence.
    pub fn with_verifier(mut self, verifier: Arc<dyn Verifier>, two_stage: TwoStage) -> Self {
        self.verifier = Some(verifier);
        self.two_stage = two_stage;
        self
    }

    fn verifying(&self) -> bool {
        self.verifier.is_some()
    }

    /// When the projection is refitted on the catalogue (default: [`RefitPolicy::default`]).
    pub fn with_refit_policy(mut self, policy: RefitPolicy) -> Self {
        self.refit = policy;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current space, read-locked (searches go on; swaps wait).
    pub fn read_space(&self) -> RwLockReadGuard<'_, Space<I>> {
        self.space.read().expect("space lock")
    }

    pub fn projection(&self) -> Arc<Projection> {
        self.read_space().projection.clone()
    }

    /// What searches use now.
    pub fn versions(&self) -> Versions {
        Versions {
            model: self.read_space().extraction.model.clone(),
            projection: self.projection().version().to_string(),
            vocabulary: self.read_words().as_ref().map(|w| w.version().to_string()),
            keeps_photos: self.keeps_photos(),
        }
    }

    /// The last change of the store's log the indexes have replayed (see
    /// [`Catalogue::catch_up`]): where a server following a shared catalogue goes on from.
    pub fn caught_up_to(&self) -> Sequence {
        self.caught_up.load(Ordering::Relaxed)
    }

    pub fn indexed(&self) -> usize {
        self.read_space().index.len()
    }

    /// Runs `save` on a quiet index: no write is between its commit and its index insert,
    /// so the index holds exactly the changes up to the sequence number passed along.
    /// `save` runs on the calling thread: wrap blocking work accordingly.
    pub async fn checkpoint<R>(
        &self,
        save: impl FnOnce(&I, Sequence, &Projection, Option<&dyn WordIndex>) -> R,
    ) -> Result<R, ServiceError> {
        let _quiet = self.gate.write().await;
        let head = self.store.head().await?;
        let space = self.read_space();
        let words = self.read_words();
        Ok(save(
            &space.index,
            head,
            &space.projection,
            words.as_deref(),
        ))
    }

    fn check_label(&self, label: &str) -> Result<(), ServiceError> {
        if label.trim().is_empty() {
            return Err(bad("empty_label", "label must not be empty"));
        }
        if label.chars().any(char::is_control) {
            return Err(bad(
                "bad_label",
                "label must not contain control characters (line breaks, tabs, ...)",
            ));
        }
        let chars = label.chars().count();
        if chars > self.limits.max_label_chars {
            return Err(bad(
                "label_too_long",
                format!(
                    "label has {chars} characters, the limit is {}",
                    self.limits.max_label_chars
                ),
            ));
        }
        Ok(())
    }

    fn check_metadata(&self, metadata: &Metadata) -> Result<(), ServiceError> {
        if metadata.len() > self.limits.max_metadata_entries {
            return Err(bad(
                "metadata_too_large",
                format!(
                    "{} metadata entries, the limit is {}",
                    metadata.len(),
                    self.limits.max_metadata_entries
                ),
            ));
        }
        let limits = &self.limits;
        let mut bytes = 0;
        for (key, value) in metadata {
            if key.trim().is_empty() {
                return Err(bad("bad_metadata", "metadata keys must not be empty"));
            }
            let key_chars = key.chars().count();
            if key_chars > limits.max_metadata_key_chars {
                return Err(bad(
                    "metadata_too_large",
                    format!(
                        "a metadata key has {key_chars} characters, the limit is {}",
                        limits.max_metadata_key_chars
                    ),
                ));
            }
            let value_chars = value.chars().count();
            if value_chars > limits.max_metadata_value_chars {
                return Err(bad(
                    "metadata_too_large",
                    format!(
                        "the metadata value of `{key}` has {value_chars} characters, the limit is {}",
                        limits.max_metadata_value_chars
                    ),
                ));
            }
            bytes += key.len() + value.len();
        }
        if bytes > limits.max_metadata_bytes {
            return Err(bad(
                "metadata_too_large",
                format!(
                    "metadata takes {bytes} bytes, the limit is {}",
                    limits.max_metadata_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The model in use now.
    fn extraction(&self) -> Arc<Extraction> {
        self.read_space().extraction.clone()
    }

    /// Embeds the uploads and returns with the write gate shared and the model that
    /// embedded them still in use (a re-index switch in between: embedded again).
    async fn embed_for_write(
        &self,
        uploads: &[Upload],
    ) -> Result<(Vec<Embedded>, tokio::sync::RwLockReadGuard<'_, ()>), ServiceError> {
        for _ in 0..3 {
            let extraction = self.extraction();
            let embedded = self.embed_uploads(uploads, &extraction).await?;
            let gate = self.gate.read().await;
            if Arc::ptr_eq(&extraction, &self.read_space().extraction) {
                return Ok((embedded, gate));
            }
        }
        Err(ServiceError::Busy(
            "the index version kept changing during the request".into(),
        ))
    }

    /// Embeds every upload; the first bad image fails the whole request.
    async fn embed_uploads(
        &self,
        uploads: &[Upload],
        extraction: &Extraction,
    ) -> Result<Vec<Embedded>, ServiceError> {
        if uploads.is_empty() {
            return Err(bad("no_image", "at least one image is required"));
        }
        if uploads.len() > self.limits.max_images_per_request {
            return Err(bad(
                "too_many_images",
                format!(
                    "{} images, the limit is {} per request",
                    uploads.len(),
                    self.limits.max_images_per_request
                ),
            ));
        }
        let wants: Vec<(&Upload, Want)> = uploads
            .iter()
            .map(|u| {
                let want = Want {
                    crop: u.crop,
                    view: View::Whole,
                    local: if self.verifying() {
                        LocalFor::Exemplar
                    } else {
                        LocalFor::Nothing
                    },
                };
                (u, want)
            })
            .collect();
        let extracted = self.extract_all(extraction, &wants).await?;
        Ok(uploads
            .iter()
            .zip(extracted)
            .map(|(upload, extracted)| Embedded {
                extracted,
                sha256: Sha256::digest(&upload.bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                name: upload
                    .name
                    .as_deref()
                    .and_then(|n| display_name(n, self.limits.max_name_chars)),
            })
            .collect())
    }

    /// Runs the model on each (upload, what to extract); the first bad image fails all.
    async fn extract_all(
        &self,
        extraction: &Extraction,
        wants: &[(&Upload, Want)],
    ) -> Result<Vec<Extracted>, ServiceError> {
        // Queue everything first so the worker can batch the request's images together;
        // the views of one upload share its bytes, so the extractor can decode them once.
        let mut shared: Vec<(&Upload, Arc<[u8]>)> = Vec::new();
        let pending = wants
            .iter()
            .map(|&(upload, want)| {
                let bytes = match shared.iter().find(|(u, _)| std::ptr::eq(*u, upload)) {
                    Some((_, bytes)) => bytes.clone(),
                    None => {
                        let bytes: Arc<[u8]> = upload.bytes.as_slice().into();
                        shared.push((upload, bytes.clone()));
                        bytes
                    }
                };
                extraction.queue.submit(bytes, want).map_err(queue_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(shared);
        let mut out = Vec::with_capacity(wants.len());
        for (i, ((upload, _), pending)) in wants.iter().zip(pending).enumerate() {
            let extracted = pending.await.map_err(|e| match e {
                Error::Extract(x @ ExtractError::CropOutside { .. }) => {
                    bad("bad_crop", x.to_string())
                }
                Error::Extract(
                    x @ (ExtractError::ImageTooLarge { .. } | ExtractError::DecodeMemory { .. }),
                ) => bad(
                    "image_too_large",
                    format!("image {} ({}): {x}", i + 1, shown_name(upload)),
                ),
                Error::Extract(x) if x.is_bad_input() => bad(
                    "bad_image",
                    format!("image {} ({}): {x}", i + 1, shown_name(upload)),
                ),
                other => queue_error(other),
            })?;
            out.push(extracted);
        }
        Ok(out)
    }

    /// Projects embedded photos into the current space (call with the gate held).
    fn to_new_exemplars(&self, embedded: Vec<Embedded>) -> Result<Vec<NewExemplar>, ServiceError> {
        let (projection, model) = {
            let space = self.read_space();
            (space.projection.clone(), space.extraction.model.clone())
        };
        embedded
            .into_iter()
            .map(|e| {
                Ok(NewExemplar {
                    descriptor: projection
                        .apply(&e.extracted.pooled)
                        .map_err(|x| ServiceError::Internal(x.to_string()))?,
                    raw_feature: e.extracted.pooled.0,
                    local_features: e.extracted.local,
                    sha256: e.sha256,
                    original_name: e.name,
                    model: model.clone(),
                    projection: projection.version().to_string(),
                    photo_kept: false,
                })
            })
            .collect()
    }

    fn index_added(
        &self,
        exemplars: &[NewExemplar],
        stored: &[Stored],
    ) -> Result<Vec<ExemplarOutcome>, ServiceError> {
        let added: Vec<(ExemplarId, Vec<f32>)> = exemplars
            .iter()
            .zip(stored)
            .filter_map(|(e, s)| match s {
                Stored::Added(id) => Some((*id, e.descriptor.clone())),
                Stored::Duplicate(_) => None,
            })
            .collect();
        {
            let mut space = self.space.write().expect("space lock");
            // On a shared catalogue the change log may have brought them in first.
            let added: Vec<_> = added
                .into_iter()
                .filter(|(id, _)| !space.index.contains(*id))
                .collect();
            space
                .index
                .insert_batch(&added)
                .map_err(ServiceError::Internal)?;
        }
        if let Some(words) = self.write_words().as_mut() {
            for (e, s) in exemplars.iter().zip(stored) {
                if let (Stored::Added(id), Some(local)) = (s, &e.local_features) {
                    if !words.contains(*id) {
                        words.insert(*id, local);
                    }
                }
            }
        }
        Ok(exemplars
            .iter()
            .zip(stored)
            .map(|(e, s)| match *s {
                Stored::Added(id) => ExemplarOutcome {
                    id,
                    name: e.original_name.clone(),
                    duplicate: false,
                    photo_kept: e.photo_kept,
                },
                Stored::Duplicate(id) => ExemplarOutcome {
                    id,
                    name: e.original_name.clone(),
                    duplicate: true,
                    photo_kept: e.photo_kept,
                },
            })
            .collect())
    }

    pub async fn add_class(
        &self,
        label: &str,
        metadata: &Metadata,
        uploads: &[Upload],
    ) -> Result<(ClassRecord, Vec<ExemplarOutcome>), ServiceError> {
        self.check_label(label)?;
        self.check_metadata(metadata)?;
        let (embedded, _write) = self.embed_for_write(uploads).await?;
        let mut exemplars = self.to_new_exemplars(embedded)?;
        let photos = self.keep_photos(uploads, &mut exemplars).await?;
        let (class, stored) = self
            .store
            .create_class(label.trim(), metadata, &exemplars)
            .await?;
        photos.done();
        let outcomes = self.index_added(&exemplars, &stored)?;
        Ok((class, outcomes))
    }

    pub async fn add_exemplars(
        &self,
        class: ClassId,
        uploads: &[Upload],
    ) -> Result<Vec<ExemplarOutcome>, ServiceError> {
        let (embedded, _write) = self.embed_for_write(uploads).await?;
        let mut exemplars = self.to_new_exemplars(embedded)?;
        let photos = self.keep_photos(uploads, &mut exemplars).await?;
        let stored = self.store.add_exemplars(class, &exemplars).await?;
        photos.done();
        self.index_added(&exemplars, &stored)
    }

    /// Renames a class and/or replaces its metadata; the index is untouched (it holds
    /// exemplar ids, and search joins labels from the store).
    pub async fn update_class(
        &self,
        class: ClassId,
        label: Option<&str>,
        metadata: Option<&Metadata>,
    ) -> Result<ClassRecord, ServiceError> {
        if let Some(label) = label {
            self.check_label(label)?;
        }
        if let Some(metadata) = metadata {
            self.check_metadata(metadata)?;
        }
        Ok(self
            .store
            .update_class(class, label.map(str::trim), metadata)
            .await?)
    }

    pub async fn delete_class(&self, class: ClassId) -> Result<(), ServiceError> {
        let photos = self.photos_of_class(class).await?;
        {
            let _write = self.gate.read().await;
            let removed = self.store.delete_class(class).await?;
            let mut space = self.space.write().expect("space lock");
            let mut words = self.write_words();
            for id in removed {
                space.index.remove(id);
                if let Some(w) = words.as_mut() {
                    w.remove(id);
                }
            }
        }
        self.collect_after_delete(photos).await;
        Ok(())
    }

    pub async fn delete_exemplar(&self, id: ExemplarId) -> Result<(), ServiceError> {
        let photos = self.photo_of_exemplar(id).await?;
        {
            let _write = self.gate.read().await;
            if !self.store.delete_exemplar(id).await? {
                return Err(ServiceError::NotFound(format!("exemplar {id} not found")));
            }
            self.space.write().expect("space lock").index.remove(id);
            if let Some(w) = self.write_words().as_mut() {
                w.remove(id);
            }
        }
        self.collect_after_delete(photos).await;
        Ok(())
    }

    /// The delete is committed whatever happens here: a photo that cannot be removed now
    /// stays a candidate for the next collection.
    async fn collect_after_delete(&self, photos: Vec<String>) {
        if photos.is_empty() {
            return;
        }
        if let Err(e) = self.collect_photos(photos).await {
            tracing::warn!(error = %e, "unused photos not removed yet");
        }
    }

    /// Replays the store's changes after `after` into the index (after a restart from a
    /// stale dump, or a crash between a commit and an index update). Returns the last
    /// sequence applied.
    pub async fn catch_up(&self, after: Sequence) -> Result<Sequence, ServiceError> {
        let changes = self.store.changes_since(after).await?;
        let added: Vec<ExemplarId> = changes
            .iter()
            .filter_map(|c| match c {
                Change::ExemplarAdded { exemplar, .. } => Some(*exemplar),
                Change::ExemplarRemoved { .. } => None,
            })
            .collect();
        // Only exemplars still alive come back from the store. Looked up by id: a
        // rebuild from the database replays every exemplar, so nothing here may be
        // quadratic in the catalogue.
        let descriptors: HashMap<ExemplarId, Vec<f32>> =
            self.store.descriptors(&added).await?.into_iter().collect();
        self.catch_up_words(&changes).await?;
        let mut space = self.space.write().expect("space lock");
        let index = &mut space.index;
        let mut last = after;
        // In log order; a slot is emptied when a later change removes its exemplar.
        let mut fresh: Vec<Option<(ExemplarId, Vec<f32>)>> = Vec::new();
        let mut slot_of: HashMap<ExemplarId, usize> = HashMap::new();
        for change in &changes {
            match *change {
                Change::ExemplarAdded { seq, exemplar } => {
                    if let (Some(d), false) = (descriptors.get(&exemplar), index.contains(exemplar))
                    {
                        slot_of.insert(exemplar, fresh.len());
                        fresh.push(Some((exemplar, d.clone())));
                    }
                    last = seq;
                }
                Change::ExemplarRemoved { seq, exemplar } => {
                    index.remove(exemplar);
                    if let Some(slot) = slot_of.remove(&exemplar) {
                        fresh[slot] = None;
                    }
                    last = seq;
                }
            }
        }
        let fresh: Vec<(ExemplarId, Vec<f32>)> = fresh.into_iter().flatten().collect();
        index.insert_batch(&fresh).map_err(ServiceError::Internal)?;
        self.caught_up.fetch_max(last, Ordering::Relaxed);
        Ok(last)
    }
}

/// How an upload is named in an error message.
fn shown_name(upload: &Upload) -> String {
    upload
        .name
        .as_deref()
        .and_then(|n| display_name(n, 255))
        .unwrap_or_else(|| "unnamed".into())
}

fn queue_error(e: Error) -> ServiceError {
    match e {
        Error::QueueFull { .. } => ServiceError::Busy(e.to_string()),
        other => ServiceError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::display_name;

    #[test]
    fn display_names_keep_the_file_name_only_and_nothing_hidden() {
        assert_eq!(display_name("cover.jpg", 255).as_deref(), Some("cover.jpg"));
        assert_eq!(
            display_name("../../etc/passwd", 255).as_deref(),
            Some("passwd")
        );
        assert_eq!(
            display_name("C:\\photos\\a.png", 255).as_deref(),
            Some("a.png")
        );
        // Right-to-left override: "gpj.exe" would show as "exe.jpg".
        assert_eq!(
            display_name("photo\u{202e}gpj.exe", 255).as_deref(),
            Some("photogpj.exe")
        );
        assert_eq!(display_name("a\nb\tc", 255).as_deref(), Some("abc"));
        assert_eq!(display_name("dir/", 255), None);
        assert_eq!(display_name(&"x".repeat(100_000), 255).unwrap().len(), 255);
    }
}
