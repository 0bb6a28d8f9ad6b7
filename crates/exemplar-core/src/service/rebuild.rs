//! Rebuilding the search space while searches go on: a projection refit (PCA on the
//! stored raw features, every descriptor re-projected) or a compaction (the same
//! descriptors in a fresh graph without the deleted ones).
//!
//! 1. Note the change log's head, read the raw features (async, store).
//! 2. Fit, project and build the new index on a thread of its own (never on an async
//!    worker); searches and writes keep using the old space meanwhile.
//! 3. Take the write gate alone: replay what changed since step 1 into the new index,
//!    commit the new projection and descriptors (one transaction, refits only), swap.

use super::{Catalogue, ServiceError, Space};
use crate::ann::VectorIndex;
use crate::catalogue::{CatalogueStore, Change, ExemplarId, Sequence};
use crate::projection::Projection;
use crate::refit::{RefitPolicy, CATALOGUE_SOURCE};
use crate::PooledFeature;
use std::sync::Arc;
use std::time::Instant;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// The projection version now in use.
    pub projection: String,
    /// A new projection was fitted (false: compaction only).
    pub refitted: bool,
    /// Exemplars in the new index.
    pub exemplars: usize,
    /// Exemplars the fit used.
    pub fit_samples: usize,
    pub seconds: f64,
}

/// What a rebuild does to the projection.
#[derive(Clone)]
enum Fit {
    /// Keeps it (a compaction).
    Keep,
    /// Fits a PCA on the stored raw features.
    Pca,
    /// Takes this one (a learned head), made for raw features of this model.
    Given(Arc<Projection>, String),
    /// Takes the one another server made current in the shared database (written there
    /// already, with every descriptor).
    Stored(Arc<Projection>),
}

/// Runs CPU-heavy work on its own thread and awaits it without blocking the executor.
pub(super) async fn off_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    let (reply, answer) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = reply.send(work());
        })
        .map_err(|e| ServiceError::Internal(format!("spawning {name}: {e}")))?;
    answer
        .await
        .map_err(|_| ServiceError::Internal(format!("{name} panicked")))
}

/// A PCA projection to `dim` fitted on an even spread of `raw` (at most the policy's
/// samples), and how many it used.
pub(super) fn fit_on(
    raw: &[(ExemplarId, Vec<f32>)],
    dim: usize,
    policy: &RefitPolicy,
) -> Result<(Projection, usize), ServiceError> {
    let samples: Vec<&[f32]> = spread(raw, policy.max_samples)
        .into_iter()
        .map(|(_, f)| f.as_slice())
        .collect();
    let fitted = Projection::fit_pca(&samples, dim, policy.whitening, CATALOGUE_SOURCE)
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok((fitted, samples.len()))
}

/// Exemplars' vectors, by id.
type Descriptors = Vec<(ExemplarId, Vec<f32>)>;

/// Every raw feature projected, and `empty` filled with the descriptors.
pub(super) fn index_all<I: VectorIndex>(
    raw: Vec<(ExemplarId, Vec<f32>)>,
    projection: &Projection,
    empty: I,
) -> Result<(I, Descriptors), ServiceError> {
    let descriptors = raw
        .into_iter()
        .map(|(id, f)| Ok((id, projection.apply(&PooledFeature(f))?)))
        .collect::<Result<Vec<_>, crate::Error>>()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let mut index = empty;
    index
        .insert_batch(&descriptors)
        .map_err(ServiceError::Internal)?;
    Ok((index, descriptors))
}

/// An even spread of at most `max` items (the fit does not need them all).
fn spread<T>(items: &[T], max: usize) -> Vec<&T> {
    if items.len() <= max {
        return items.iter().collect();
    }
    (0..max).map(|i| &items[i * items.len() / max]).collect()
}

impl<S: CatalogueStore, I: VectorIndex> Catalogue<S, I> {
    /// Refits the projection when the [`crate::RefitPolicy`] says the catalogue has grown
    /// enough; `None` when it has not (or another rebuild is running).
    pub async fn refit_if_due(&self) -> Result<Option<Rebuilt>, ServiceError> {
        let exemplars = self.store.exemplar_count().await?;
        if !self.refit.should_refit(&self.projection(), exemplars) {
            return Ok(None);
        }
        match self.rebuild(Fit::Pca).await {
            Err(ServiceError::Busy(_)) => Ok(None),
            Ok(rebuilt) => {
                self.refit_words().await?;
                Ok(Some(rebuilt))
            }
            Err(e) => Err(e),
        }
    }

    /// The catalogue has grown enough to refit: the vocabulary too.
    async fn refit_words(&self) -> Result<(), ServiceError> {
        match self.rebuild_words().await {
            Ok(_) | Err(ServiceError::Busy(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Refits now (on demand), if there are enough exemplars to fit on.
    pub async fn refit_now(&self) -> Result<Rebuilt, ServiceError> {
        let exemplars = self.store.exemplar_count().await?;
        let needed = Projection::min_samples_for(self.projection().output_dim());
        if exemplars < needed {
            return Err(ServiceError::Conflict {
                kind: "too_few_exemplars",
                message: format!(
                    "a refit needs at least {needed} exemplars, the catalogue has {exemplars}"
                ),
            });
        }
        let rebuilt = self.rebuild(Fit::Pca).await?;
        self.refit_words().await?;
        Ok(rebuilt)
    }

    /// Rebuilds the index without its deleted entries when they weigh enough.
    pub async fn compact_if_due(&self) -> Result<Option<Rebuilt>, ServiceError> {
        if !self.read_space().index.needs_compaction() {
            return Ok(None);
        }
        match self.rebuild(Fit::Keep).await {
            Err(ServiceError::Busy(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Serves `projection` (made elsewhere: a learned head) from now on: every stored raw
    /// feature is projected again and the index rebuilt, as a refit does, while searches
    /// go on with the current space. Refused when the raw features are no longer those of
    /// `model` (a re-index switched models meanwhile) or do not fit its input.
    pub async fn install_projection(
        &self,
        projection: Projection,
        model: &str,
    ) -> Result<Rebuilt, ServiceError> {
        let input = self.projection().input_dim();
        if projection.input_dim() != input {
            return Err(ServiceError::Conflict {
                kind: "bad_projection",
                message: format!(
                    "the projection takes {}-d features; the model makes {input}-d",
                    projection.input_dim()
                ),
            });
        }
        self.rebuild(Fit::Given(Arc::new(projection), model.to_string()))
            .await
    }

    /// Follows the shared database: when another server made a new projection current
    /// (a refit, a learned head, a re-index), rebuilds this server's index in it while
    /// searches go on; then replays the change log after `applied`. Returns the last
    /// change applied.
    pub async fn follow(&self, applied: Sequence) -> Result<Sequence, ServiceError> {
        if let Some(stored) = self.store.projection().await? {
            if stored.version() != self.projection().version() {
                let head = self.store.head().await?;
                self.rebuild(Fit::Stored(Arc::new(stored))).await?;
                return self.catch_up(head).await;
            }
        }
        self.catch_up(applied).await
    }

    async fn rebuild(&self, fit: Fit) -> Result<Rebuilt, ServiceError> {
        let refit = !matches!(fit, Fit::Keep);
        let writes = matches!(fit, Fit::Pca | Fit::Given(..));
        // A given projection waits its turn (a training run should not fail because a
        // compaction happened to run); refits and compactions are simply tried later.
        let _one = match &fit {
            Fit::Given(..) | Fit::Stored(_) => self.rebuilding.lock().await,
            _ => self.rebuilding.try_lock().map_err(|_| {
                ServiceError::Busy("a refit or compaction is already running".into())
            })?,
        };
        if let Fit::Stored(stored) = &fit {
            // This server's own switch (a re-index, a learned head) got there first.
            if stored.version() == self.projection().version() {
                return Ok(Rebuilt {
                    projection: stored.version().to_string(),
                    refitted: false,
                    exemplars: self.indexed(),
                    fit_samples: 0,
                    seconds: 0.0,
                });
            }
        }
        if let Fit::Given(_, model) = &fit {
            // Checked under the rebuild lock, which a re-index's switch takes too.
            let current = self.versions().model;
            if &current != model {
                return Err(ServiceError::Conflict {
                    kind: "model_changed",
                    message: format!(
                        "the projection was made for model {model}; the catalogue now uses {current}"
                    ),
                });
            }
        }
        let started = Instant::now();
        let snapshot = self.store.head().await?;
        let raw = self.store.raw_features(None).await?;
        let (current, empty) = {
            let space = self.read_space();
            (space.projection.clone(), space.index.empty_like(raw.len()))
        };
        let policy = self.refit.clone();
        let (projection, mut index, mut descriptors, fit_samples) =
            off_thread("exemplar-rebuild", move || -> Result<_, ServiceError> {
                let (projection, fit_samples) = match fit {
                    Fit::Keep => (current, 0),
                    Fit::Pca => {
                        let (fitted, samples) = fit_on(&raw, current.output_dim(), &policy)?;
                        (Arc::new(fitted), samples)
                    }
                    Fit::Given(given, _) | Fit::Stored(given) => (given, 0),
                };
                let (index, descriptors) = index_all(raw, &projection, empty)?;
                Ok((projection, index, descriptors, fit_samples))
            })
            .await??;

        let _quiet = self.gate.write().await;
        let changes = self.store.changes_since(snapshot).await?;
        let mut late: Vec<ExemplarId> = Vec::new();
        let mut removed: Vec<ExemplarId> = Vec::new();
        for change in changes {
            match change {
                Change::ExemplarAdded { exemplar, .. } => late.push(exemplar),
                Change::ExemplarRemoved { exemplar, .. } => removed.push(exemplar),
            }
        }
        // Only exemplars still alive come back; a few at most, so projected inline.
        let mut fresh = Vec::new();
        for (id, raw) in self.store.raw_features(Some(&late)).await? {
            if !index.contains(id) {
                let descriptor = projection
                    .apply(&PooledFeature(raw))
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                fresh.push((id, descriptor));
            }
        }
        index.insert_batch(&fresh).map_err(ServiceError::Internal)?;
        for id in removed {
            index.remove(id);
        }
        descriptors.extend(fresh);
        if writes {
            self.store.reproject(&projection, &descriptors).await?;
        }
        let exemplars = index.len();
        let version = projection.version().to_string();
        let old = {
            let mut space = self.space.write().expect("space lock");
            let extraction = space.extraction.clone();
            std::mem::replace(
                &mut *space,
                Space {
                    projection,
                    index,
                    extraction,
                },
            )
        };
        drop(old); // outside the lock: freeing a large graph takes a moment
        let rebuilt = Rebuilt {
            projection: version,
            refitted: refit,
            exemplars,
            fit_samples,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            refitted = rebuilt.refitted,
            projection = %rebuilt.projection,
            exemplars,
            fit_samples,
            seconds = rebuilt.seconds,
            "search space rebuilt"
        );
        Ok(rebuilt)
    }
}
