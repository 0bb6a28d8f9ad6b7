//! The catalogue store a server runs on, chosen at start: a SQLite file or PostgreSQL.
//! Every call goes to the one chosen.

use crate::{PgStore, SqliteStore};
use exemplar_core::catalogue::{
    CatalogueStore, Change, ClassFilter, ClassId, ClassRecord, ExemplarHash, ExemplarId,
    ExemplarOwner, ExemplarRecord, Metadata, NewExemplar, Sequence, StoreResult, Stored,
};
use exemplar_core::reindex::{ReindexJob, ReindexStore, StagedFeatures};
use exemplar_core::unknowns::{InboxPolicy, NewUnknown, UnknownRecord, UnknownStore};
use exemplar_core::Projection;
use std::collections::HashSet;

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// The SQLite store, for what only a file catalogue does (consistent file copies).
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }

    pub fn as_postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Postgres(s) => Some(s),
            Store::Sqlite(_) => None,
        }
    }

    /// Whether other servers may write to the same catalogue (they follow its change log).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Whether this server does the catalogue-wide upkeep (projection refits): always on a
    /// file of its own; on a shared database, the one server holding its lock.
    pub async fn leads_maintenance(&self) -> StoreResult<bool> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(s) => s.leads_maintenance().await,
        }
    }
}

macro_rules! on_store {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl CatalogueStore for Store {
    async fn create_class(
        &self,
        label: &str,
        metadata: &Metadata,
        exemplars: &[NewExemplar],
    ) -> StoreResult<(ClassRecord, Vec<Stored>)> {
        on_store!(self, s => s.create_class(label, metadata, exemplars))
    }

    async fn add_exemplars(
        &self,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> StoreResult<Vec<Stored>> {
        on_store!(self, s => s.add_exemplars(class, exemplars))
    }

    async fn class(&self, id: ClassId) -> StoreResult<Option<(ClassRecord, Vec<ExemplarRecord>)>> {
        on_store!(self, s => s.class(id))
    }

    async fn list_classes(
        &self,
        after: ClassId,
        limit: u32,
        filter: &ClassFilter,
    ) -> StoreResult<Vec<ClassRecord>> {
        on_store!(self, s => s.list_classes(after, limit, filter))
    }

    async fn update_class(
        &self,
        id: ClassId,
        label: Option<&str>,
        metadata: Option<&Metadata>,
    ) -> StoreResult<ClassRecord> {
        on_store!(self, s => s.update_class(id, label, metadata))
    }

    async fn delete_class(&self, id: ClassId) -> StoreResult<Vec<ExemplarId>> {
        on_store!(self, s => s.delete_class(id))
    }

    async fn exemplar(&self, id: ExemplarId) -> StoreResult<Option<ExemplarRecord>> {
        on_store!(self, s => s.exemplar(id))
    }

    async fn photos_in_use(&self, hashes: &[String]) -> StoreResult<HashSet<String>> {
        on_store!(self, s => s.photos_in_use(hashes))
    }

    async fn delete_exemplar(&self, id: ExemplarId) -> StoreResult<bool> {
        on_store!(self, s => s.delete_exemplar(id))
    }

    async fn changes_since(&self, after: Sequence) -> StoreResult<Vec<Change>> {
        on_store!(self, s => s.changes_since(after))
    }

    async fn owners(&self, ids: &[ExemplarId]) -> StoreResult<Vec<ExemplarOwner>> {
        on_store!(self, s => s.owners(ids))
    }

    async fn exemplar_hashes(&self) -> StoreResult<Vec<ExemplarHash>> {
        on_store!(self, s => s.exemplar_hashes())
    }

    async fn local_features(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<u8>)>> {
        on_store!(self, s => s.local_features(ids))
    }

    async fn head(&self) -> StoreResult<Sequence> {
        on_store!(self, s => s.head())
    }

    async fn exemplar_count(&self) -> StoreResult<usize> {
        on_store!(self, s => s.exemplar_count())
    }

    async fn raw_features(
        &self,
        ids: Option<&[ExemplarId]>,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        on_store!(self, s => s.raw_features(ids))
    }

    async fn projection(&self) -> StoreResult<Option<Projection>> {
        on_store!(self, s => s.projection())
    }

    async fn set_projection(&self, projection: &Projection) -> StoreResult<()> {
        on_store!(self, s => s.set_projection(projection))
    }

    async fn reproject(
        &self,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        on_store!(self, s => s.reproject(projection, descriptors))
    }

    async fn descriptors(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        on_store!(self, s => s.descriptors(ids))
    }
}

impl ReindexStore for Store {
    async fn begin_reindex(&self, spec: &str, model: &str) -> StoreResult<ReindexJob> {
        on_store!(self, s => s.begin_reindex(spec, model))
    }

    async fn reindex_in_progress(&self) -> StoreResult<Option<ReindexJob>> {
        on_store!(self, s => s.reindex_in_progress())
    }

    async fn index_spec(&self) -> StoreResult<Option<String>> {
        on_store!(self, s => s.index_spec())
    }

    async fn reindex_todo(&self, job: i64, limit: usize) -> StoreResult<Vec<(ExemplarId, String)>> {
        on_store!(self, s => s.reindex_todo(job, limit))
    }

    async fn reindex_counts(&self, job: i64) -> StoreResult<(usize, usize)> {
        on_store!(self, s => s.reindex_counts(job))
    }

    async fn stage_features(&self, job: i64, features: &[StagedFeatures]) -> StoreResult<()> {
        on_store!(self, s => s.stage_features(job, features))
    }

    async fn staged_raw_features(
        &self,
        job: i64,
        ids: Option<&[ExemplarId]>,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        on_store!(self, s => s.staged_raw_features(job, ids))
    }

    async fn exemplars_without_photo(&self) -> StoreResult<Vec<ExemplarId>> {
        on_store!(self, s => s.exemplars_without_photo())
    }

    async fn staged_without_descriptor(
        &self,
        job: i64,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        on_store!(self, s => s.staged_without_descriptor(job))
    }

    async fn stage_descriptors(
        &self,
        job: i64,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        on_store!(self, s => s.stage_descriptors(job, descriptors))
    }

    async fn switch_to_reindexed(
        &self,
        job: i64,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        on_store!(self, s => s.switch_to_reindexed(job, projection, descriptors))
    }

    async fn cancel_reindex(&self, job: i64) -> StoreResult<()> {
        on_store!(self, s => s.cancel_reindex(job))
    }
}

impl UnknownStore for Store {
    async fn keep_unknown(
        &self,
        unknown: &NewUnknown,
        policy: InboxPolicy,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        on_store!(self, s => s.keep_unknown(unknown, policy, now_ms))
    }

    async fn expire_unknowns(&self, policy: InboxPolicy, now_ms: i64) -> StoreResult<usize> {
        on_store!(self, s => s.expire_unknowns(policy, now_ms))
    }

    async fn unknowns(&self, before: i64, limit: u32) -> StoreResult<Vec<UnknownRecord>> {
        on_store!(self, s => s.unknowns(before, limit))
    }

    async fn unknown(&self, id: i64) -> StoreResult<Option<(UnknownRecord, Vec<u8>)>> {
        on_store!(self, s => s.unknown(id))
    }

    async fn remove_unknown(&self, id: i64) -> StoreResult<bool> {
        on_store!(self, s => s.remove_unknown(id))
    }
}
