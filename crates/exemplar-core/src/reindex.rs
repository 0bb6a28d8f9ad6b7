//! Re-indexing: a new *index version* (model, local features, projection, indexes) made
//! from the kept photos while the current one serves, then one switch.
//!
//! The store keeps a re-index job and the new features made so far (staged beside the
//! current ones, which searches keep using), so a build interrupted by a crash resumes
//! where it stopped. The switch replaces every exemplar's features, descriptor, model
//! and projection in one transaction; the job's settings are then the catalogue's.

use crate::catalogue::{ExemplarId, StoreResult};
use crate::projection::Projection;
use std::future::Future;

/// A re-index in progress (or the last one switched to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexJob {
    pub id: i64,
    /// The settings of the new version, as the caller recorded them (opaque here).
    pub spec: String,
    /// The id of the model that makes the new features.
    pub model: String,
    pub created_at_ms: i64,
}

/// An exemplar's features made by the new version.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedFeatures {
    pub exemplar: ExemplarId,
    pub raw_feature: Vec<f32>,
    pub local_features: Option<Vec<u8>>,
}

/// Storage of re-index jobs and their staged features.
pub trait ReindexStore: Send + Sync + 'static {
    /// Records a new job; fails ([`crate::catalogue::StoreError::Invalid`]) while
    /// another is being built.
    fn begin_reindex(
        &self,
        spec: &str,
        model: &str,
    ) -> impl Future<Output = StoreResult<ReindexJob>> + Send;

    /// The job being built, if any.
    fn reindex_in_progress(&self) -> impl Future<Output = StoreResult<Option<ReindexJob>>> + Send;

    /// The settings of the last job switched to (`None`: never re-indexed).
    fn index_spec(&self) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    /// Up to `limit` live exemplars the job has no features for yet, with their photo
    /// hashes, in id order; `without_photo` ones are left out (see
    /// [`ReindexStore::exemplars_without_photo`]).
    fn reindex_todo(
        &self,
        job: i64,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, String)>>> + Send;

    /// (live exemplars the job has features for, live exemplars with a kept photo).
    fn reindex_counts(&self, job: i64) -> impl Future<Output = StoreResult<(usize, usize)>> + Send;

    fn stage_features(
        &self,
        job: i64,
        features: &[StagedFeatures],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The new raw features of live exemplars (all of them, or the given ids).
    fn staged_raw_features(
        &self,
        job: i64,
        ids: Option<&[ExemplarId]>,
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, Vec<f32>)>>> + Send;

    /// Live exemplars whose photo is not kept: they cannot be re-indexed.
    fn exemplars_without_photo(&self) -> impl Future<Output = StoreResult<Vec<ExemplarId>>> + Send;

    /// The new raw features of live exemplars staged without a descriptor yet.
    fn staged_without_descriptor(
        &self,
        job: i64,
    ) -> impl Future<Output = StoreResult<Vec<(ExemplarId, Vec<f32>)>>> + Send;

    /// Stages descriptors (in the projection about to be switched to).
    fn stage_descriptors(
        &self,
        job: i64,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The switch, in one transaction: `descriptors` are staged too, then every live
    /// exemplar takes its staged features (keeping its local features when none were
    /// staged), descriptor and the job's model; `projection` becomes current; the job is
    /// done and its staged rows dropped. Fails, changing nothing, when a live exemplar
    /// lacks staged features or a descriptor.
    fn switch_to_reindexed(
        &self,
        job: i64,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Abandons the job and drops its staged rows (the current version stays).
    fn cancel_reindex(&self, job: i64) -> impl Future<Output = StoreResult<()>> + Send;
}
