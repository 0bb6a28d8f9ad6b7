//! Re-indexing from the kept photos (see [`crate::reindex`]) while the current version
//! serves:
//!
//! 1. Every live exemplar's photo goes through the new model, a batch at a time, and
//!    its features are staged in the store (a restart resumes with what is missing).
//!    Writes meanwhile go to the current version; the build picks their photos up too.
//! 2. The projection is fitted on the new raw features (the model's data-free one when
//!    there are too few) and the new index built, on a thread of its own.
//! 3. With the write gate alone: stage what was added since, replay removals, commit the
//!    switch (one transaction), swap the space, model included. The visual words are
//!    then fitted again on the new local features.

use super::now_ms;
use super::rebuild::{fit_on, index_all, off_thread};
use super::{queue_error, Catalogue, Extraction, ServiceError, Space};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, Change, ExemplarId};
use crate::embed_queue::{EmbedQueue, Want};
use crate::extractor::{FeatureExtractor, LocalFor, View};
use crate::projection::Projection;
use crate::reindex::{ReindexJob, ReindexStore, StagedFeatures};
use crate::PooledFeature;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Photos embedded per round (and staged per transaction).
const BATCH: usize = 16;
/// Batches between two counts of the progress in the store.
const COUNT_EVERY: usize = 32;
/// Exemplars named in the answer when some lack a photo.
const NAMED: usize = 20;

/// The share of the time a build embeds by default: after each batch it rests as long
/// as the batch took, so searches keep half the machine.
pub const REINDEX_SHARE: f32 = 0.5;

/// The model of a new index version.
pub struct NewVersion {
    pub extractor: Arc<dyn FeatureExtractor>,
    /// Its projection when the catalogue is too small to fit one.
    pub fallback_projection: Projection,
    pub max_batch: usize,
    /// The share of the time the build may embed (0 < share ≤ 1; 1: never rests).
    pub share: f32,
    /// Its local features are made as the current ones are (same kind and settings):
    /// they are kept, not made again, and so is the visual-word index.
    pub same_local_features: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReindexState {
    /// No re-index since the service started.
    #[default]
    Idle,
    Building,
    /// The last steps, with writes waiting.
    Switching,
    Switched,
    Failed,
    Cancelled,
}

impl ReindexState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReindexState::Idle => "idle",
            ReindexState::Building => "building",
            ReindexState::Switching => "switching",
            ReindexState::Switched => "switched",
            ReindexState::Failed => "failed",
            ReindexState::Cancelled => "cancelled",
        }
    }
}

/// Where the latest re-index stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReindexStatus {
    pub state: ReindexState,
    pub job: Option<i64>,
    /// The new version's settings, as recorded with the job.
    pub spec: Option<String>,
    pub model: Option<String>,
    /// Exemplars embedded by the new model, of those with a kept photo.
    pub done: usize,
    pub total: usize,
    pub started_at_ms: Option<i64>,
    /// From the start of the build to the switch (or the failure).
    pub seconds: f64,
    /// How long writes waited for the switch.
    pub switch_ms: Option<f64>,
    /// The projection of the new version, once switched.
    pub projection: Option<String>,
    pub error: Option<String>,
}

/// What a finished re-index did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reindexed {
    /// The local features and the visual-word index were kept as they were.
    pub words_kept: bool,
    pub model: String,
    pub projection: String,
    pub exemplars: usize,
    pub seconds: f64,
    pub switch_ms: f64,
}

impl<S: CatalogueStore + ReindexStore, I: VectorIndex> Catalogue<S, I> {
    pub fn reindex_status(&self) -> ReindexStatus {
        self.reindex
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update_status(&self, change: impl FnOnce(&mut ReindexStatus)) {
        change(&mut self.reindex.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records a re-index job for `version` (its settings as `spec`), after checking it
    /// can be done: photos are kept, every exemplar has one, the new model makes local
    /// features when the service verifies. Build it with [`Catalogue::build_reindex`].
    pub async fn begin_reindex(
        &self,
        spec: &str,
        version: &NewVersion,
    ) -> Result<ReindexJob, ServiceError> {
        if !self.keeps_photos() {
            return Err(ServiceError::Conflict {
                kind: "photos_not_kept",
                message: "a re-index makes the new version from the kept photos, and this service keeps features only (--keep-photos false)".into(),
            });
        }
        if self.verifying() && !version.extractor.makes_local_features() {
            return Err(ServiceError::BadRequest {
                kind: "no_local_features",
                message: "the service verifies with local features: the new version must make them too (local_keypoints above 0)".into(),
            });
        }
        let without = self.store.exemplars_without_photo().await?;
        if !without.is_empty() {
            let named: Vec<String> = without
                .iter()
                .take(NAMED)
                .map(|id| id.to_string())
                .collect();
            return Err(ServiceError::Conflict {
                kind: "photos_missing",
                message: format!(
                    "{} exemplars have no kept photo and cannot be re-indexed (ids {}{}): send their photos again (or delete them), then re-index",
                    without.len(),
                    named.join(", "),
                    if without.len() > NAMED { ", ..." } else { "" }
                ),
            });
        }
        if let Some(running) = self.store.reindex_in_progress().await? {
            let status = self.reindex_status();
            let message = match (status.job == Some(running.id), status.state, status.error) {
                (true, ReindexState::Failed, Some(error)) => format!(
                    "re-index job {} stopped ({error}): cancel it (DELETE /admin/reindex) or restart the server to resume it",
                    running.id
                ),
                _ => format!("re-index job {} is being built", running.id),
            };
            return Err(ServiceError::Conflict {
                kind: "reindex_running",
                message,
            });
        }
        let job = self
            .store
            .begin_reindex(spec, &version.extractor.info().id)
            .await
            .map_err(|e| match e {
                crate::catalogue::StoreError::Invalid(m) => ServiceError::Conflict {
                    kind: "reindex_running",
                    message: m,
                },
                other => other.into(),
            })?;
        let (done, total) = self.store.reindex_counts(job.id).await?;
        self.update_status(|s| {
            *s = ReindexStatus {
                state: ReindexState::Building,
                job: Some(job.id),
                spec: Some(job.spec.clone()),
                model: Some(job.model.clone()),
                done,
                total,
                started_at_ms: Some(now_ms()),
                ..Default::default()
            }
        });
        Ok(job)
    }

    /// Stops the re-index being built and abandons it (the current version stays);
    /// false when there is none, or it switched first.
    pub async fn cancel_reindex(&self) -> Result<bool, ServiceError> {
        let Some(job) = self.store.reindex_in_progress().await? else {
            return Ok(false);
        };
        self.reindex_cancelled.store(true, Ordering::SeqCst);
        // A build that is running stops at its next batch; one that is not (failed, or
        // never resumed) is cancelled here.
        let _one = self.rebuilding.lock().await;
        self.reindex_cancelled.store(false, Ordering::SeqCst);
        if self.store.reindex_in_progress().await?.map(|j| j.id) != Some(job.id) {
            return Ok(false); // it switched before it saw the request
        }
        self.store.cancel_reindex(job.id).await?;
        self.update_status(|s| {
            if s.job == Some(job.id) || s.job.is_none() {
                s.state = ReindexState::Cancelled;
                s.job = Some(job.id);
            }
        });
        Ok(true)
    }

    /// Shows `job` as being built (before its build is spawned, so that the status never
    /// says otherwise meanwhile).
    pub fn show_building(&self, job: &ReindexJob) {
        self.update_status(|s| {
            if s.job != Some(job.id) {
                *s = ReindexStatus {
                    job: Some(job.id),
                    spec: Some(job.spec.clone()),
                    model: Some(job.model.clone()),
                    started_at_ms: Some(now_ms()),
                    ..Default::default()
                };
            }
            s.state = ReindexState::Building;
        });
    }

    /// Builds `job` (begun, or found in progress after a restart) and switches to it.
    /// Runs until done: spawn it. The status shows progress and the outcome.
    pub async fn build_reindex(
        &self,
        job: ReindexJob,
        version: NewVersion,
    ) -> Result<Reindexed, ServiceError> {
        let started = Instant::now();
        self.show_building(&job);
        let outcome = self.build_and_switch(&job, version, started).await;
        let seconds = started.elapsed().as_secs_f64();
        self.update_status(|s| {
            s.seconds = seconds;
            match &outcome {
                Ok(done) => {
                    s.state = ReindexState::Switched;
                    s.done = done.exemplars;
                    s.total = done.exemplars;
                    s.projection = Some(done.projection.clone());
                    s.switch_ms = Some(done.switch_ms);
                }
                Err(ServiceError::Conflict {
                    kind: "reindex_cancelled",
                    ..
                }) => s.state = ReindexState::Cancelled,
                Err(e) => {
                    s.state = ReindexState::Failed;
                    s.error = Some(e.to_string());
                }
            }
        });
        match &outcome {
            Ok(done) => {
                tracing::info!(model = %done.model, projection = %done.projection, exemplars = done.exemplars, seconds = done.seconds, switch_ms = done.switch_ms, "re-indexed");
                // The vocabulary was fitted on the old local features.
                let refit_words = !done.words_kept;
                if let Err(e) = async {
                    if refit_words {
                        self.rebuild_words().await?;
                    }
                    Ok::<_, ServiceError>(())
                }
                .await
                {
                    tracing::warn!(error = %e, "visual words not refitted yet; the next maintenance step tries again");
                }
            }
            Err(e) => tracing::warn!(job = job.id, error = %e, "re-index stopped"),
        }
        outcome
    }

    async fn build_and_switch(
        &self,
        job: &ReindexJob,
        version: NewVersion,
        started: Instant,
    ) -> Result<Reindexed, ServiceError> {
        // No refit or compaction meanwhile: they would swap the space being replaced.
        let _one = self.rebuilding.lock().await;
        // The queue serves requests after the switch: as large as the current one.
        let capacity = self.extraction().queue.capacity().max(BATCH);
        let queue = EmbedQueue::start(version.extractor.clone(), capacity, version.max_batch);
        let (done, total) = self.store.reindex_counts(job.id).await?;
        self.update_status(|s| {
            s.done = done;
            s.total = total;
        });
        let share = version.share.clamp(0.01, 1.0) as f64;
        for batch in 1.. {
            let batch_started = Instant::now();
            let staged = self
                .stage_batch(job, &queue, version.same_local_features)
                .await?;
            if staged == 0 {
                break;
            }
            // Counted in the store now and then (the catalogue grows meanwhile), not
            // after every batch: two counts over the catalogue per 16 photos add up.
            let counts = if batch % COUNT_EVERY == 0 {
                Some(self.store.reindex_counts(job.id).await?)
            } else {
                None
            };
            self.update_status(|s| match counts {
                Some((done, total)) => (s.done, s.total) = (done, total),
                None => {
                    s.done += staged;
                    s.total = s.total.max(s.done);
                }
            });
            let rest = batch_started.elapsed().as_secs_f64() * (1.0 / share - 1.0);
            if rest > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(rest)).await;
            }
        }

        let snapshot = self.store.head().await?;
        let raw = self.store.staged_raw_features(job.id, None).await?;
        let empty = self.read_space().index.empty_like(raw.len());
        let policy = self.refit.clone();
        let fallback = version.fallback_projection;
        let same_local = version.same_local_features;
        let (projection, mut index, descriptors) =
            off_thread("exemplar-reindex", move || -> Result<_, ServiceError> {
                let dim = fallback.output_dim();
                let projection =
                    if raw.len() >= policy.min_exemplars.max(Projection::min_samples_for(dim)) {
                        fit_on(&raw, dim, &policy)?.0
                    } else {
                        fallback
                    };
                let (index, descriptors) = index_all(raw, &projection, empty)?;
                Ok((Arc::new(projection), index, descriptors))
            })
            .await??;

        self.store.stage_descriptors(job.id, &descriptors).await?;
        drop(descriptors);
        // Photos added while fitting, before writes are held: the switch then has few
        // left to embed.
        while self.stage_batch(job, &queue, same_local).await? > 0 {}
        self.update_status(|s| s.state = ReindexState::Switching);
        let _quiet = self.gate.write().await;
        let switch_started = Instant::now();
        // Photos added since (writes wait now, so this ends).
        while self.stage_batch(job, &queue, same_local).await? > 0 {}
        let removed: HashSet<ExemplarId> = self
            .store
            .changes_since(snapshot)
            .await?
            .into_iter()
            .filter_map(|change| match change {
                Change::ExemplarRemoved { exemplar, .. } => Some(exemplar),
                Change::ExemplarAdded { .. } => None,
            })
            .collect();
        // Staged after the fit read them: a few, projected here.
        let mut fresh = Vec::new();
        for (id, raw) in self.store.staged_without_descriptor(job.id).await? {
            let descriptor = projection
                .apply(&PooledFeature(raw))
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            fresh.push((id, descriptor));
        }
        let unindexed: Vec<(ExemplarId, Vec<f32>)> = fresh
            .iter()
            .filter(|(id, _)| !index.contains(*id))
            .cloned()
            .collect();
        index
            .insert_batch(&unindexed)
            .map_err(ServiceError::Internal)?;
        for id in &removed {
            index.remove(*id);
        }

        self.switches.fetch_add(1, Ordering::SeqCst);
        let committed = self
            .store
            .switch_to_reindexed(job.id, &projection, &fresh)
            .await;
        if let Err(e) = committed {
            self.switches.fetch_add(1, Ordering::SeqCst);
            return Err(e.into());
        }
        let exemplars = index.len();
        let model = version.extractor.info().id.clone();
        let old = {
            let mut space = self.space.write().expect("space lock");
            std::mem::replace(
                &mut *space,
                Space {
                    projection: projection.clone(),
                    index,
                    extraction: Arc::new(Extraction {
                        queue,
                        model: model.clone(),
                    }),
                },
            )
        };
        let old_words = if same_local {
            None
        } else {
            self.write_words().take()
        };
        self.switches.fetch_add(1, Ordering::SeqCst);
        let switch_ms = switch_started.elapsed().as_secs_f64() * 1000.0;
        drop(_quiet);
        drop((old, old_words)); // outside the locks: freeing a large graph takes a moment
        Ok(Reindexed {
            words_kept: same_local,
            model,
            projection: projection.version().to_string(),
            exemplars,
            seconds: started.elapsed().as_secs_f64(),
            switch_ms,
        })
    }

    /// Embeds up to a batch of the photos the job still lacks and stages their features
    /// (`same_local`: the CNN's only); returns how many it staged (0: none left).
    async fn stage_batch(
        &self,
        job: &ReindexJob,
        queue: &EmbedQueue,
        same_local: bool,
    ) -> Result<usize, ServiceError> {
        if self.reindex_cancelled.load(Ordering::SeqCst) {
            return Err(ServiceError::Conflict {
                kind: "reindex_cancelled",
                message: format!("re-index job {} was cancelled", job.id),
            });
        }
        let todo = self.store.reindex_todo(job.id, BATCH).await?;
        if todo.is_empty() {
            return Ok(0);
        }
        let photos = self
            .photos
            .clone()
            .ok_or_else(|| ServiceError::Internal("no photo store".into()))?;
        let hashes: Vec<String> = todo.iter().map(|(_, h)| h.clone()).collect();
        let bytes = off_thread("exemplar-photos", move || {
            hashes
                .iter()
                .map(|h| photos.read(h))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let local = if self.verifying() && !same_local {
            LocalFor::Exemplar
        } else {
            LocalFor::Nothing
        };
        let mut pending = Vec::with_capacity(todo.len());
        for ((id, _), bytes) in todo.iter().zip(bytes) {
            let Some(bytes) = bytes else {
                if self.store.exemplar(*id).await?.is_none() {
                    continue; // deleted meanwhile, its photo collected
                }
                return Err(ServiceError::Internal(format!(
                    "the kept photo of exemplar {id} is missing from the photo store"
                )));
            };
            let want = Want {
                crop: None,
                view: View::Whole,
                local,
            };
            pending.push((*id, queue.submit(bytes, want).map_err(queue_error)?));
        }
        let mut staged = Vec::with_capacity(pending.len());
        for (id, answer) in pending {
            let extracted = answer.await.map_err(|e| {
                ServiceError::Internal(format!("exemplar {id}: the new model failed: {e}"))
            })?;
            staged.push(StagedFeatures {
                exemplar: id,
                raw_feature: extracted.pooled.0,
                local_features: extracted.local,
            });
        }
        self.store.stage_features(job.id, &staged).await?;
        // Deleted ones count as done: they are not asked for again.
        Ok(todo.len())
    }
}
