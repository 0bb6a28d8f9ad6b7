//! The catalogue's records and the storage trait the SQL backends implement.
//!
//! The database is the source of truth: an exemplar is acknowledged only once its row is
//! committed, and every addition or removal appends to a monotonic change log that the
//! ANN index (a cache) replays to catch up after a restart or a crash.

use crate::projection::Projection;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use thiserror::Error;

pub type ClassId = i64;
pub type ExemplarId = i64;
/// Position in the change log; 0 is "before any change".
pub type Sequence = i64;
/// String key/values attached to a class (e.g. `artist`, `format`), filterable in search.
pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct ClassRecord {
    pub id: ClassId,
    pub label: String,
    pub metadata: Metadata,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub exemplars: i64,
    /// The first of its exemplars whose photo is kept (a picture of the class), if any.
    pub photo_exemplar: Option<ExemplarId>,
}

/// Which classes a listing shows: all of them by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassFilter {
    /// The label contains this text (case-insensitive for ASCII letters).
    pub label_contains: Option<String>,
    /// The metadata holds every one of these key=value pairs.
    pub metadata: Metadata,
}

impl ClassFilter {
    /// Whether the filter lets this class through (the rule the SQL stores follow).
    pub fn admits(&self, label: &str, metadata: &Metadata) -> bool {
        let label_ok = self.label_contains.as_ref().is_none_or(|text| {
            label
                .to_ascii_lowercase()
                .contains(&text.to_ascii_lowercase())
        });
        label_ok
            && self
                .metadata
                .iter()
                .all(|(k, v)| metadata.get(k) == Some(v))
    }
}

/// What identifies a stored exemplar's photo, and the format of its local features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemplarHash {
    pub id: ExemplarId,
    pub class: ClassId,
    pub sha256: String,
    /// The first 4 bytes of its local features (they name their format); `None` without.
    pub local_format: Option<Vec<u8>>,
    pub photo_kept: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewExemplar {
    pub sha256: String,
    pub original_name: Option<String>,
    pub raw_feature: Vec<f32>,
    pub descriptor: Vec<f32>,
    pub model: String,
    pub projection: String,
    /// Serialized local features for spatial verification (bounded by the extractor).
    pub local_features: Option<Vec<u8>>,
    /// The photo (named by `sha256`) is in the photo store; false: features only.
    pub photo_kept: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExemplarRecord {
    pub id: ExemplarId,
    pub class_id: ClassId,
    pub sha256: String,
    pub original_name: Option<String>,
    pub model: String,
    pub projection: String,
    pub created_at_ms: i64,
    /// Its photo and thumbnail are kept (see [`crate::photos`]); false: features only.
    pub photo_kept: bool,
}

/// What happened to each submitted exemplar, in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Added(ExemplarId),
    /// The class already holds these exact bytes: not stored twice.
    Duplicate(ExemplarId),
}

/// The class an exemplar belongs to, as search results need it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExemplarOwner {
    pub exemplar: ExemplarId,
    pub class: ClassId,
    pub label: String,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    ExemplarAdded { seq: Sequence, exemplar: ExemplarId },
    ExemplarRemoved { seq: Sequence, exemplar: ExemplarId },
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("class {0} not found")]
    ClassNotFound(ClassId),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Backend(String),
    /// The database cannot be reached now (a lost connection, a server restarting): the
    /// same request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The catalogue changed under the write in a way it must be made again for (another
    /// server switched the projection since the photo was embedded).
    #[error("{0}")]
    Stale(String),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Durable catalogue storage. Every write is one transaction: all of it or none.
pub trait CatalogueStore: Send + Sync + 'static {
    /// Creates a class with its first exemplars. An exemplar whose bytes the class
    /// already holds is a [`Stored::Duplicate`]; if the stored one lacks local features or
    /// a kept photo and the new one has them, they are added (how an old catalogue gains
    /// them: re-import).
    fn create_class(
        &self,
        label: &str,
        metadata: &Metadata,
        exemplars: &[NewExemplar],
    ) -> impl Future<Output = StoreResult<(ClassRecord, Vec<Stored>)>> + Send;

    fn add_exemplars(
        &self,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> impl Future<Output = StoreResult<Vec<Stored>>> + Send;

    fn class(
        &self,
        id: ClassId,
    ) -> impl Future<Output = StoreResult<Option<(ClassRecord, Vec<ExemplarRecord>)>>> + Send;

    /// Classes in id order, after `after` (keyset pagination), those `filter` lets through.
    fn list_classes(
        &self,
        after: ClassId,
        limit: u32,
        filter: &ClassFilter,
    ) -> impl Future<Output = StoreResult<Vec<ClassRecord>>> + Send;

    /// Changes the label and/or metadata (metadata is replaced whole).
    fn update_class(
        &self,
        id: ClassId,
        label: Option<&str>,
        metadata: Option<&Metadata>,
    ) -> impl Future<Output = StoreResult<ClassRecord>> + Send;

    /// Deletes a class and its exemplars; returns the removed exemplar ids.
    fn delete_class(
        &self,
        id: ClassId,
    ) -> impl Future<Output = StoreResult<Vec<ExemplarId>>> + Send;

    /// One live exemplar.
    fn exemplar(
        &self,
        id: ExemplarId,
    ) -> impl Future<Output = StoreResult<Option<ExemplarRecord>>> + Send;

    /// Which of these photo hashes a live exemplar with a kept photo refers to: the
    /// others' photos may be collected.
    fn photos_in_use(
        &self,
        hashes: &[String],
    ) -> impl Future<Output = StoreResult<HashSet<String>>> + Send;

    /// Returns false when there was no such exemplar.
    fn delete_exemplar(&self, id: ExemplarId) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Changes with a sequence number above `after`, in order.
    fn changes_since(
        &self,
        after: Sequence,
    ) -> impl Future<Output = StoreResult<Vec<Change>>> + Send;

    /// Owners of the given live exemplars (deleted or unknown ids are skipped).
    fn owners(
        &self,
        ids: &[ExemplarId],
    ) -> impl Future<Output = StoreResult<Vec<ExemplarOwner>>> + Send;

    /// Every live exemplar's class, photo hash and local features' format: what an import
    /// skips as already done.
    fn exemplar_hashes(&self) -> impl Future<Output = StoreResult<Vec<ExemplarHash>>> + Send;

    /// Local features of the given live exemplars that have them (others are skipped).
    fn local_features(
        &self,
        ids: &[ExemplarId],
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, Vec<u8>)>>> + Send;

    /// The last change's sequence number (0 when there is none).
    fn head(&self) -> impl Future<Output = StoreResult<Sequence>> + Send;

    fn exemplar_count(&self) -> impl Future<Output = StoreResult<usize>> + Send;

    /// Raw pooled features of the given live exemplars, or of all of them (`None`).
    fn raw_features(
        &self,
        ids: Option<&[ExemplarId]>,
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, Vec<f32>)>>> + Send;

    /// The projection the stored descriptors are in, if one was recorded.
    fn projection(&self) -> impl Future<Output = StoreResult<Option<Projection>>> + Send;

    /// Records the projection of a catalogue that has no exemplars yet.
    fn set_projection(
        &self,
        projection: &Projection,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// A refit, in one transaction: `projection` becomes current and each listed
    /// exemplar's descriptor is replaced.
    fn reproject(
        &self,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Descriptors of the given live exemplars (missing ids are skipped).
    fn descriptors(
        &self,
        ids: &[ExemplarId],
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, Vec<f32>)>>> + Send;
}

/// Little-endian f32 bytes, the storage form of vectors.
pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn vector_from_bytes(bytes: &[u8]) -> StoreResult<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Backend(format!(
            "vector blob of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
