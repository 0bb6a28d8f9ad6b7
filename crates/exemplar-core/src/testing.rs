//! In-memory stand-ins for the store and the index (feature `testing`): the service's
//! own logic tested beside it, without SQLite or a graph. They keep the contracts of the
//! traits (one change-log entry per addition and removal, duplicates by photo hash,
//! deleted exemplars gone from every read) but nothing survives the process. Also a
//! stand-in feature extractor and verifier whose "photos" are text.

use crate::ann::VectorIndex;
use crate::catalogue::{
    CatalogueStore, Change, ClassFilter, ClassId, ClassRecord, ExemplarHash, ExemplarId,
    ExemplarOwner, ExemplarRecord, Metadata, NewExemplar, Sequence, StoreError, StoreResult,
    Stored,
};
use crate::embed_queue::EmbedQueue;
use crate::extractor::{ExtractError, Extracted, FeatureExtractor, ImageInput, ModelInfo};
use crate::photos::{PhotoError, PhotoStore};
use crate::projection::Projection;
use crate::service::{Catalogue, Limits, Upload};
use crate::verifier::{Evidence, VerdictRule, Verifier};
use crate::{l2_normalize, PooledFeature};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Tables {
    classes: BTreeMap<ClassId, (String, Metadata)>,
    exemplars: BTreeMap<ExemplarId, (ClassId, NewExemplar)>,
    changes: Vec<Change>,
    projection: Option<Projection>,
    next_class: ClassId,
    next_exemplar: ExemplarId,
}

impl Tables {
    fn record(&self, id: ClassId) -> Option<ClassRecord> {
        let (label, metadata) = self.classes.get(&id)?;
        Some(ClassRecord {
            id,
            label: label.clone(),
            metadata: metadata.clone(),
            created_at_ms: 0,
            updated_at_ms: 0,
            exemplars: self.exemplars.values().filter(|e| e.0 == id).count() as i64,
            photo_exemplar: self
                .exemplars
                .iter()
                .find(|(_, (class, e))| *class == id && e.photo_kept)
                .map(|(&exemplar, _)| exemplar),
        })
    }

    fn log(&mut self, change: impl FnOnce(Sequence) -> Change) {
        let seq = self.changes.len() as Sequence + 1;
        self.changes.push(change(seq));
    }

    fn insert(&mut self, class: ClassId, exemplars: &[NewExemplar]) -> Vec<Stored> {
        exemplars
            .iter()
            .map(|new| {
                let same = self
                    .exemplars
                    .iter_mut()
                    .find(|(_, (c, e))| *c == class && e.sha256 == new.sha256);
                if let Some((&id, (_, stored))) = same {
                    // Local features are added when missing (a re-import), as in SQL.
                    if stored.local_features.is_none() {
                        stored.local_features.clone_from(&new.local_features);
                    }
                    stored.photo_kept |= new.photo_kept;
                    return Stored::Duplicate(id);
                }
                self.next_exemplar += 1;
                let id = self.next_exemplar;
                self.exemplars.insert(id, (class, new.clone()));
                self.log(|seq| Change::ExemplarAdded { seq, exemplar: id });
                Stored::Added(id)
            })
            .collect()
    }

    fn exemplar_record(&self, id: ExemplarId) -> Option<ExemplarRecord> {
        let (class_id, e) = self.exemplars.get(&id)?;
        Some(ExemplarRecord {
            id,
            class_id: *class_id,
            sha256: e.sha256.clone(),
            original_name: e.original_name.clone(),
            model: e.model.clone(),
            projection: e.projection.clone(),
            created_at_ms: 0,
            photo_kept: e.photo_kept,
        })
    }

    fn remove(&mut self, id: ExemplarId) -> bool {
        let removed = self.exemplars.remove(&id).is_some();
        if removed {
            self.log(|seq| Change::ExemplarRemoved { seq, exemplar: id });
        }
        removed
    }
}

/// A [`CatalogueStore`] in memory. Clones share their tables, as two connections to one
/// database do (a service restarted on the same catalogue).
#[derive(Default, Clone)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    /// Held by [`MemoryStore::hold_writes`]: adds wait for it (a slow commit).
    writes: Arc<tokio::sync::RwLock<()>>,
}

impl MemoryStore {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds wait until the answer is dropped, as a commit that takes its time.
    pub async fn hold_writes(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.writes.clone().write_owned().await
    }
}

impl CatalogueStore for MemoryStore {
    async fn create_class(
        &self,
        label: &str,
        metadata: &Metadata,
        exemplars: &[NewExemplar],
    ) -> StoreResult<(ClassRecord, Vec<Stored>)> {
        drop(self.writes.read().await);
        let mut t = self.tables();
        t.next_class += 1;
        let id = t.next_class;
        t.classes.insert(id, (label.to_string(), metadata.clone()));
        let stored = t.insert(id, exemplars);
        Ok((t.record(id).expect("just made"), stored))
    }

    async fn add_exemplars(
        &self,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> StoreResult<Vec<Stored>> {
        let mut t = self.tables();
        if !t.classes.contains_key(&class) {
            return Err(StoreError::ClassNotFound(class));
        }
        Ok(t.insert(class, exemplars))
    }

    async fn class(&self, id: ClassId) -> StoreResult<Option<(ClassRecord, Vec<ExemplarRecord>)>> {
        let t = self.tables();
        Ok(t.record(id).map(|record| {
            let exemplars = t
                .exemplars
                .iter()
                .filter(|(_, (c, _))| *c == id)
                .filter_map(|(&id, _)| t.exemplar_record(id))
                .collect();
            (record, exemplars)
        }))
    }

    async fn list_classes(
        &self,
        after: ClassId,
        limit: u32,
        filter: &ClassFilter,
    ) -> StoreResult<Vec<ClassRecord>> {
        let t = self.tables();
        Ok(t.classes
            .range(after + 1..)
            .filter_map(|(&id, _)| t.record(id))
            .filter(|c| filter.admits(&c.label, &c.metadata))
            .take(limit as usize)
            .collect())
    }

    async fn update_class(
        &self,
        id: ClassId,
        label: Option<&str>,
        metadata: Option<&Metadata>,
    ) -> StoreResult<ClassRecord> {
        let mut t = self.tables();
        let (old_label, old_metadata) = t
            .classes
            .get_mut(&id)
            .ok_or(StoreError::ClassNotFound(id))?;
        if let Some(label) = label {
            *old_label = label.to_string();
        }
        if let Some(metadata) = metadata {
            *old_metadata = metadata.clone();
        }
        Ok(t.record(id).expect("present"))
    }

    async fn delete_class(&self, id: ClassId) -> StoreResult<Vec<ExemplarId>> {
        let mut t = self.tables();
        if t.classes.remove(&id).is_none() {
            return Err(StoreError::ClassNotFound(id));
        }
        let removed: Vec<ExemplarId> = t
            .exemplars
            .iter()
            .filter(|(_, (c, _))| *c == id)
            .map(|(&e, _)| e)
            .collect();
        for &e in &removed {
            t.remove(e);
        }
        Ok(removed)
    }

    async fn delete_exemplar(&self, id: ExemplarId) -> StoreResult<bool> {
        Ok(self.tables().remove(id))
    }

    async fn exemplar(&self, id: ExemplarId) -> StoreResult<Option<ExemplarRecord>> {
        Ok(self.tables().exemplar_record(id))
    }

    async fn photos_in_use(&self, hashes: &[String]) -> StoreResult<HashSet<String>> {
        let t = self.tables();
        Ok(t.exemplars
            .values()
            .filter(|(_, e)| e.photo_kept && hashes.contains(&e.sha256))
            .map(|(_, e)| e.sha256.clone())
            .collect())
    }

    async fn changes_since(&self, after: Sequence) -> StoreResult<Vec<Change>> {
        let t = self.tables();
        Ok(t.changes
            .iter()
            .skip(after.max(0) as usize)
            .copied()
            .collect())
    }

    async fn owners(&self, ids: &[ExemplarId]) -> StoreResult<Vec<ExemplarOwner>> {
        let t = self.tables();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let (class, _) = t.exemplars.get(id)?;
                let (label, metadata) = t.classes.get(class)?;
                Some(ExemplarOwner {
                    exemplar: *id,
                    class: *class,
                    label: label.clone(),
                    metadata: metadata.clone(),
                })
            })
            .collect())
    }

    async fn exemplar_hashes(&self) -> StoreResult<Vec<ExemplarHash>> {
        Ok(self
            .tables()
            .exemplars
            .iter()
            .map(|(&id, (class, e))| ExemplarHash {
                id,
                class: *class,
                sha256: e.sha256.clone(),
                local_format: e
                    .local_features
                    .as_ref()
                    .map(|l| l.iter().take(4).copied().collect()),
                photo_kept: e.photo_kept,
            })
            .collect())
    }

    async fn local_features(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<u8>)>> {
        let t = self.tables();
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, t.exemplars.get(id)?.1.local_features.clone()?)))
            .collect())
    }

    async fn head(&self) -> StoreResult<Sequence> {
        Ok(self.tables().changes.len() as Sequence)
    }

    async fn exemplar_count(&self) -> StoreResult<usize> {
        Ok(self.tables().exemplars.len())
    }

    async fn raw_features(
        &self,
        ids: Option<&[ExemplarId]>,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        let t = self.tables();
        let raw = |id: &ExemplarId| Some((*id, t.exemplars.get(id)?.1.raw_feature.clone()));
        Ok(match ids {
            Some(ids) => ids.iter().filter_map(raw).collect(),
            None => t.exemplars.keys().filter_map(raw).collect(),
        })
    }

    async fn projection(&self) -> StoreResult<Option<Projection>> {
        Ok(self.tables().projection.clone())
    }

    async fn set_projection(&self, projection: &Projection) -> StoreResult<()> {
        self.tables().projection = Some(projection.clone());
        Ok(())
    }

    async fn reproject(
        &self,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        let mut t = self.tables();
        for (id, descriptor) in descriptors {
            if let Some((_, e)) = t.exemplars.get_mut(id) {
                e.descriptor.clone_from(descriptor);
                e.projection = projection.version().to_string();
            }
        }
        t.projection = Some(projection.clone());
        Ok(())
    }

    async fn descriptors(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        let t = self.tables();
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, t.exemplars.get(id)?.1.descriptor.clone())))
            .collect())
    }
}

/// A [`VectorIndex`] searched exactly (every live descriptor compared), which asks for
/// compaction once removals weigh a fifth (so the service's compaction path is tested).
#[derive(Default)]
pub struct ExactIndex {
    items: BTreeMap<ExemplarId, Vec<f32>>,
    removed: HashSet<ExemplarId>,
}

impl VectorIndex for ExactIndex {
    fn insert_batch(&mut self, items: &[(ExemplarId, Vec<f32>)]) -> Result<(), String> {
        for (id, v) in items {
            self.removed.remove(id);
            self.items.insert(*id, v.clone());
        }
        Ok(())
    }

    fn remove(&mut self, id: ExemplarId) -> bool {
        let live = self.items.remove(&id).is_some();
        if live {
            self.removed.insert(id);
        }
        live
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(ExemplarId, f32)>, String> {
        let mut hits: Vec<(ExemplarId, f32)> = self
            .items
            .iter()
            .map(|(&id, v)| (id, crate::cosine(query, v)))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        Ok(hits)
    }

    fn contains(&self, id: ExemplarId) -> bool {
        self.items.contains_key(&id)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn empty_like(&self, _capacity: usize) -> Self {
        Self::default()
    }

    /// As the graph: worth rebuilding once a fifth of what it held is removed.
    fn needs_compaction(&self) -> bool {
        self.removed.len() * 5 > self.items.len() + self.removed.len()
    }
}

/// A [`PhotoStore`] in memory; clones share it. Thumbnails are the first byte.
#[derive(Default, Clone)]
pub struct MemoryPhotos {
    kept: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryPhotos {
    /// The hashes kept, sorted.
    pub fn hashes(&self) -> Vec<String> {
        self.kept.lock().unwrap().keys().cloned().collect()
    }
}

impl PhotoStore for MemoryPhotos {
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), PhotoError> {
        self.kept
            .lock()
            .unwrap()
            .insert(sha256.to_string(), bytes.to_vec());
        Ok(())
    }
    fn remove(&self, sha256: &str) -> Result<(), PhotoError> {
        self.kept.lock().unwrap().remove(sha256);
        Ok(())
    }
    fn list(&self) -> Result<Vec<String>, PhotoError> {
        Ok(self.hashes())
    }
    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, PhotoError> {
        Ok(self.kept.lock().unwrap().get(sha256).cloned())
    }
}

/// A service over `store` and `index` whose photos are text ([`TextFeatures`]), with an
/// identity-like projection that keeps a test's geometry readable.
pub fn text_catalogue<S: CatalogueStore, I: VectorIndex>(store: S, index: I) -> Catalogue<S, I> {
    let extractor = Arc::new(TextFeatures(ModelInfo {
        id: "text".into(),
        feature_dim: TEXT_DIM,
    }));
    Catalogue::new(
        store,
        index,
        EmbedQueue::start(extractor, 64, 8),
        Projection::random_orthogonal(TEXT_DIM, TEXT_DIM, 0),
        "text".into(),
        Limits::default(),
        VerdictRule::default(),
    )
}

/// Descriptor dimension of [`TextFeatures`].
pub const TEXT_DIM: usize = 16;

/// "Images" are text: `item-N` (optionally `item-N/shot-M`) maps to a feature near
/// direction N, so different shots of one item are close and items are far apart;
/// anything not starting with `item-` is a corrupt image.
pub struct TextFeatures(pub ModelInfo);

impl FeatureExtractor for TextFeatures {
    fn info(&self) -> &ModelInfo {
        &self.0
    }
    fn makes_local_features(&self) -> bool {
        true
    }
    fn extract(&self, images: &[ImageInput<'_>]) -> Vec<Result<Extracted, ExtractError>> {
        images
            .iter()
            .map(|input| {
                let text = std::str::from_utf8(input.bytes)
                    .map_err(|_| ExtractError::CorruptImage("binary".into()))?;
                let rest = text
                    .strip_prefix("item-")
                    .ok_or_else(|| ExtractError::CorruptImage("not an item".into()))?;
                let (item, shot) = rest.split_once("/shot-").unwrap_or((rest, "0"));
                let item: usize = item
                    .parse()
                    .map_err(|_| ExtractError::CorruptImage("bad item".into()))?;
                let shot: usize = shot.parse().unwrap_or(0);
                let mut v = vec![0.01f32; TEXT_DIM];
                v[item % TEXT_DIM] = 1.0;
                v[(item + 1 + shot) % TEXT_DIM] += 0.05 * shot as f32;
                l2_normalize(&mut v);
                Ok(Extracted {
                    pooled: PooledFeature(v),
                    // The "local features" are the item number.
                    local: input.local.wanted().then(|| item.to_string().into_bytes()),
                })
            })
            .collect()
    }
}

/// An upload of the stand-in photo `text` (see [`TextFeatures`]), named `text.jpg`.
pub fn text_upload(text: &str) -> Upload {
    Upload {
        crop: None,
        bytes: text.as_bytes().to_vec(),
        name: Some(format!("{text}.jpg")),
    }
}

/// "Verifies" by comparing the stand-in local features (item numbers): the same item
/// shows 60 inliers and an outline, another item 5 stray ones.
pub struct ItemVerifier;

impl Verifier for ItemVerifier {
    fn verify(&self, query: &[u8], references: &[&[u8]]) -> Vec<Evidence> {
        references
            .iter()
            .map(|r| match *r == query {
                true => Evidence {
                    inliers: 60,
                    matches: 80,
                    coverage: 0.8,
                    quadrilateral: Some([[1.0, 2.0], [9.0, 2.0], [9.0, 8.0], [1.0, 8.0]]),
                    in_frame: 1.0,
                    centred: true,
                },
                false => Evidence {
                    inliers: 5,
                    matches: 9,
                    coverage: 0.01,
                    ..Evidence::default()
                },
            })
            .collect()
    }
}

/// A distinct photo per number: item directions repeat every [`TEXT_DIM`], shots tell
/// them apart.
pub fn nth_photo(i: usize) -> Upload {
    text_upload(&format!("item-{}/shot-{}", i % TEXT_DIM, i / TEXT_DIM))
}

/// Adds `n` classes `c0`, `c1`, … of one photo each ([`nth_photo`]); returns their ids.
pub async fn add_photo_classes<S: CatalogueStore, I: VectorIndex>(
    catalogue: &Catalogue<S, I>,
    n: usize,
) -> Vec<ClassId> {
    let mut classes = Vec::with_capacity(n);
    for i in 0..n {
        let (class, _) = catalogue
            .add_class(&format!("c{i}"), &Metadata::new(), &[nth_photo(i)])
            .await
            .expect("a text photo is accepted");
        classes.push(class.id);
    }
    classes
}
