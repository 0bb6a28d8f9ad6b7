//! The catalogue in PostgreSQL, which several servers share: each keeps its own indexes
//! in memory and follows the change log (`changes_since`, woken by `NOTIFY`).
//!
//! Every write that touches the catalogue takes one advisory transaction lock first
//! ([`CATALOGUE_WRITE_LOCK`]): writes are serialised as in SQLite, which keeps the change
//! log's sequence numbers visible in order and makes a refit's re-projection and a
//! concurrent add on another server see each other.

mod reindex;
mod unknowns;

use crate::{backend, now_ms};
use exemplar_core::catalogue::{
    vector_from_bytes, vector_to_bytes, CatalogueStore, Change, ClassFilter, ClassId, ClassRecord,
    ExemplarHash, ExemplarId, ExemplarOwner, ExemplarRecord, Metadata, NewExemplar, Sequence,
    StoreError, StoreResult, Stored,
};
use exemplar_core::{PooledFeature, Projection};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row, Transaction};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The advisory lock key every catalogue write holds for its transaction ("exemplar").
const CATALOGUE_WRITE_LOCK: i64 = 0x6578_656d_706c_6172;

/// The channel a commit that changed the catalogue notifies.
pub const CHANGES_CHANNEL: &str = "exemplar_changes";

const EXEMPLAR_COLUMNS: &str =
    "id, class_id, sha256, original_name, model, projection, created_at, photo_kept";

const CLASS_COLUMNS: &str = "c.id, c.label, c.metadata, c.created_at, c.updated_at,
    (SELECT count(*) FROM exemplars e WHERE e.class_id = c.id) AS n,
    (SELECT min(e.id) FROM exemplars e WHERE e.class_id = c.id AND e.photo_kept) AS photo_exemplar";

fn exemplar_from_row(r: &PgRow) -> ExemplarRecord {
    ExemplarRecord {
        id: r.get("id"),
        class_id: r.get("class_id"),
        sha256: r.get("sha256"),
        original_name: r.get("original_name"),
        model: r.get("model"),
        projection: r.get("projection"),
        created_at_ms: r.get("created_at"),
        photo_kept: r.get("photo_kept"),
    }
}

fn class_from_row(r: &PgRow) -> StoreResult<ClassRecord> {
    let metadata: String = r.get("metadata");
    Ok(ClassRecord {
        id: r.get("id"),
        label: r.get("label"),
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?,
        created_at_ms: r.get("created_at"),
        updated_at_ms: r.get("updated_at"),
        exemplars: r.get("n"),
        photo_exemplar: r.get("photo_exemplar"),
    })
}

fn id_vectors(rows: &[PgRow], column: &str) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
    rows.iter()
        .map(|r| {
            let bytes: Vec<u8> = r.get(column);
            Ok((r.get("id"), vector_from_bytes(&bytes)?))
        })
        .collect()
}

/// Appends to the change log; the listeners hear of it when the transaction commits.
async fn log_change(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    exemplar: ExemplarId,
    at: i64,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO changes (kind, exemplar_id, at) VALUES ($1, $2, $3)")
        .bind(kind)
        .bind(exemplar)
        .bind(at)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    notify(tx).await
}

/// Tells the other servers (at commit) that the catalogue changed.
async fn notify(tx: &mut Transaction<'_, Postgres>) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANGES_CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The connection-level advisory lock held by the server that refits the shared catalogue.
const MAINTENANCE_LOCK: i64 = CATALOGUE_WRITE_LOCK + 1;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connection holding [`MAINTENANCE_LOCK`] while this server holds it.
    leader: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://…`) and applies pending migrations (several servers
    /// starting at once apply them once: sqlx holds an advisory lock meanwhile).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // A server that lost the database answers "unavailable" soon instead of
            // queueing requests behind a dead pool.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
        Ok(Self {
            pool,
            leader: Arc::default(),
        })
    }

    /// Whether this server is the one that refits the shared catalogue: the first to ask
    /// takes a connection-level lock and keeps that connection open; when that server
    /// stops or loses the database, the lock goes with its connection and the next
    /// server to ask takes it over.
    pub async fn leads_maintenance(&self) -> StoreResult<bool> {
        let mut held = self.leader.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(true);
            }
            *held = None;
        }
        let mut conn = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(backend)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MAINTENANCE_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(backend)?;
        if got {
            *held = Some(conn);
        }
        Ok(got)
    }

    /// A listener on the change channel, on a connection of its own (it reconnects by
    /// itself; a notification missed meanwhile is made up by polling).
    pub async fn listen(&self) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(backend)?;
        listener.listen(CHANGES_CHANNEL).await.map_err(backend)?;
        Ok(listener)
    }

    /// A catalogue write: a transaction holding the catalogue write lock.
    async fn write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CATALOGUE_WRITE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        Ok(tx)
    }

    async fn blobs(
        &self,
        column: &'static str,
        ids: &[ExemplarId],
    ) -> StoreResult<Vec<(ExemplarId, Vec<u8>)>> {
        let sql = format!(
            "SELECT id, {column} AS v FROM exemplars
             WHERE id = ANY($1) AND {column} IS NOT NULL ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| (r.get("id"), r.get("v"))).collect())
    }

    async fn vectors(
        &self,
        column: &'static str,
        ids: &[ExemplarId],
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        self.blobs(column, ids)
            .await?
            .into_iter()
            .map(|(id, bytes)| Ok((id, vector_from_bytes(&bytes)?)))
            .collect()
    }

    async fn make_current(
        tx: &mut Transaction<'_, Postgres>,
        projection: &Projection,
    ) -> StoreResult<()> {
        let data = projection
            .to_bytes()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        sqlx::query("UPDATE projections SET current = FALSE WHERE current")
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO projections (version, data, created_at, current) VALUES ($1, $2, $3, TRUE)
             ON CONFLICT (version) DO UPDATE SET current = TRUE",
        )
        .bind(projection.version())
        .bind(data)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        notify(tx).await
    }

    /// Exemplars another server added in an older projection while this one was being
    /// fitted: projected here, in the same transaction, so the catalogue never mixes
    /// versions.
    async fn project_stragglers(
        tx: &mut Transaction<'_, Postgres>,
        projection: &Projection,
    ) -> StoreResult<()> {
        let rows = sqlx::query("SELECT id, raw_feature FROM exemplars WHERE projection <> $1")
            .bind(projection.version())
            .fetch_all(&mut **tx)
            .await
            .map_err(backend)?;
        for (id, raw) in id_vectors(&rows, "raw_feature")? {
            let descriptor = projection
                .apply(&PooledFeature(raw))
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            sqlx::query("UPDATE exemplars SET descriptor = $1, projection = $2 WHERE id = $3")
                .bind(vector_to_bytes(&descriptor))
                .bind(projection.version())
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// The projection version exemplars must be written in, if one is recorded.
    async fn current_version(tx: &mut Transaction<'_, Postgres>) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT version FROM projections WHERE current")
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)
    }

    async fn insert_exemplars(
        tx: &mut Transaction<'_, Postgres>,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> StoreResult<Vec<Stored>> {
        let current = Self::current_version(tx).await?;
        let mut stored = Vec::with_capacity(exemplars.len());
        for e in exemplars {
            if current.as_deref().is_some_and(|v| v != e.projection) {
                // Another server switched projections since this one embedded the photo.
                return Err(StoreError::Stale(format!(
                    "the catalogue's projection is now {}, the exemplar was projected with {}",
                    current.as_deref().unwrap_or_default(),
                    e.projection
                )));
            }
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT id FROM exemplars WHERE class_id = $1 AND sha256 = $2")
                    .bind(class)
                    .bind(&e.sha256)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(backend)?;
            if let Some(id) = existing {
                if let Some(local) = &e.local_features {
                    sqlx::query(
                        "UPDATE exemplars SET local_features = $1 WHERE id = $2 AND
                         (local_features IS NULL
                          OR substring(local_features from 1 for 4) <> substring($1 from 1 for 4))",
                    )
                    .bind(local)
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                }
                if e.photo_kept {
                    sqlx::query("UPDATE exemplars SET photo_kept = TRUE WHERE id = $1")
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(backend)?;
                }
                stored.push(Stored::Duplicate(id));
                continue;
            }
            let at = now_ms();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO exemplars (class_id, sha256, original_name, raw_feature, descriptor,
                   model, projection, local_features, photo_kept, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(class)
            .bind(&e.sha256)
            .bind(&e.original_name)
            .bind(vector_to_bytes(&e.raw_feature))
            .bind(vector_to_bytes(&e.descriptor))
            .bind(&e.model)
            .bind(&e.projection)
            .bind(&e.local_features)
            .bind(e.photo_kept)
            .bind(at)
            .fetch_one(&mut **tx)
            .await
            .map_err(backend)?;
            log_change(tx, "exemplar_added", id, at).await?;
            stored.push(Stored::Added(id));
        }
        Ok(stored)
    }

    async fn class_record(&self, id: ClassId) -> StoreResult<Option<ClassRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CLASS_COLUMNS} FROM classes c WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| class_from_row(&r)).transpose()
    }
}

impl CatalogueStore for PgStore {
    async fn create_class(
        &self,
        label: &str,
        metadata: &Metadata,
        exemplars: &[NewExemplar],
    ) -> StoreResult<(ClassRecord, Vec<Stored>)> {
        if label.trim().is_empty() {
            return Err(StoreError::Invalid("label is empty".into()));
        }
        let mut tx = self.write().await?;
        let at = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO classes (label, metadata, created_at, updated_at)
             VALUES ($1, $2, $3, $3) RETURNING id",
        )
        .bind(label)
        .bind(serde_json::to_string(metadata).expect("string map"))
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let stored = Self::insert_exemplars(&mut tx, id, exemplars).await?;
        tx.commit().await.map_err(backend)?;
        let record = self
            .class_record(id)
            .await?
            .ok_or(StoreError::ClassNotFound(id))?;
        Ok((record, stored))
    }

    async fn add_exemplars(
        &self,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> StoreResult<Vec<Stored>> {
        let mut tx = self.write().await?;
        let updated = sqlx::query("UPDATE classes SET updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(class)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::ClassNotFound(class));
        }
        let stored = Self::insert_exemplars(&mut tx, class, exemplars).await?;
        tx.commit().await.map_err(backend)?;
        Ok(stored)
    }

    async fn class(&self, id: ClassId) -> StoreResult<Option<(ClassRecord, Vec<ExemplarRecord>)>> {
        let Some(record) = self.class_record(id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(&format!(
            "SELECT {EXEMPLAR_COLUMNS} FROM exemplars WHERE class_id = $1 ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Some((record, rows.iter().map(exemplar_from_row).collect())))
    }

    async fn list_classes(
        &self,
        after: ClassId,
        limit: u32,
        filter: &ClassFilter,
    ) -> StoreResult<Vec<ClassRecord>> {
        let mut sql = format!("SELECT {CLASS_COLUMNS} FROM classes c WHERE c.id > $1");
        let mut n = 1;
        if filter.label_contains.is_some() {
            n += 1;
            sql.push_str(&format!(" AND strpos(lower(c.label), lower(${n})) > 0"));
        }
        for _ in &filter.metadata {
            sql.push_str(&format!(
                " AND (c.metadata::jsonb ->> ${}) = ${}",
                n + 1,
                n + 2
            ));
            n += 2;
        }
        sql.push_str(&format!(" ORDER BY c.id LIMIT ${}", n + 1));
        let mut query = sqlx::query(&sql).bind(after);
        if let Some(text) = &filter.label_contains {
            query = query.bind(text);
        }
        for (key, value) in &filter.metadata {
            query = query.bind(key).bind(value);
        }
        let rows = query
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(class_from_row).collect()
    }

    async fn update_class(
        &self,
        id: ClassId,
        label: Option<&str>,
        metadata: Option<&Metadata>,
    ) -> StoreResult<ClassRecord> {
        if label.is_some_and(|l| l.trim().is_empty()) {
            return Err(StoreError::Invalid("label is empty".into()));
        }
        let updated = sqlx::query(
            "UPDATE classes SET label = coalesce($1, label), metadata = coalesce($2, metadata),
               updated_at = $3 WHERE id = $4",
        )
        .bind(label)
        .bind(metadata.map(|m| serde_json::to_string(m).expect("string map")))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::ClassNotFound(id));
        }
        self.class_record(id)
            .await?
            .ok_or(StoreError::ClassNotFound(id))
    }

    async fn delete_class(&self, id: ClassId) -> StoreResult<Vec<ExemplarId>> {
        let mut tx = self.write().await?;
        let removed: Vec<i64> =
            sqlx::query_scalar("DELETE FROM exemplars WHERE class_id = $1 RETURNING id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        let mut removed = removed;
        removed.sort_unstable();
        let at = now_ms();
        for exemplar in &removed {
            log_change(&mut tx, "exemplar_removed", *exemplar, at).await?;
        }
        let deleted = sqlx::query("DELETE FROM classes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::ClassNotFound(id));
        }
        tx.commit().await.map_err(backend)?;
        Ok(removed)
    }

    async fn exemplar(&self, id: ExemplarId) -> StoreResult<Option<ExemplarRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {EXEMPLAR_COLUMNS} FROM exemplars WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(exemplar_from_row))
    }

    async fn photos_in_use(&self, hashes: &[String]) -> StoreResult<HashSet<String>> {
        let used: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM exemplars WHERE photo_kept AND sha256 = ANY($1)",
        )
        .bind(hashes)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(used.into_iter().collect())
    }

    async fn delete_exemplar(&self, id: ExemplarId) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM exemplars WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if deleted > 0 {
            log_change(&mut tx, "exemplar_removed", id, now_ms()).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(deleted > 0)
    }

    async fn changes_since(&self, after: Sequence) -> StoreResult<Vec<Change>> {
        let rows =
            sqlx::query("SELECT seq, kind, exemplar_id FROM changes WHERE seq > $1 ORDER BY seq")
                .bind(after)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let (seq, exemplar): (i64, i64) = (r.get("seq"), r.get("exemplar_id"));
                match r.get::<String, _>("kind").as_str() {
                    "exemplar_added" => Ok(Change::ExemplarAdded { seq, exemplar }),
                    "exemplar_removed" => Ok(Change::ExemplarRemoved { seq, exemplar }),
                    other => Err(StoreError::Backend(format!("unknown change kind {other}"))),
                }
            })
            .collect()
    }

    async fn owners(&self, ids: &[ExemplarId]) -> StoreResult<Vec<ExemplarOwner>> {
        let rows = sqlx::query(
            "SELECT e.id AS exemplar, c.id AS class, c.label, c.metadata
             FROM exemplars e JOIN classes c ON c.id = e.class_id WHERE e.id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let metadata: String = row.get("metadata");
                Ok(ExemplarOwner {
                    exemplar: row.get("exemplar"),
                    class: row.get("class"),
                    label: row.get("label"),
                    metadata: serde_json::from_str(&metadata)
                        .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?,
                })
            })
            .collect()
    }

    async fn exemplar_hashes(&self) -> StoreResult<Vec<ExemplarHash>> {
        let rows = sqlx::query(
            "SELECT id, class_id, sha256, substring(local_features from 1 for 4) AS local_format,
                    photo_kept
             FROM exemplars ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| ExemplarHash {
                id: r.get("id"),
                class: r.get("class_id"),
                sha256: r.get("sha256"),
                local_format: r.get("local_format"),
                photo_kept: r.get("photo_kept"),
            })
            .collect())
    }

    async fn local_features(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<u8>)>> {
        self.blobs("local_features", ids).await
    }

    async fn head(&self) -> StoreResult<Sequence> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn exemplar_count(&self) -> StoreResult<usize> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM exemplars")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as usize)
    }

    async fn raw_features(
        &self,
        ids: Option<&[ExemplarId]>,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        match ids {
            Some(ids) => self.vectors("raw_feature", ids).await,
            None => id_vectors(
                &sqlx::query("SELECT id, raw_feature FROM exemplars ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?,
                "raw_feature",
            ),
        }
    }

    async fn projection(&self) -> StoreResult<Option<Projection>> {
        let row = sqlx::query("SELECT version, data FROM projections WHERE current")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| {
            let version: String = r.get("version");
            let data: Vec<u8> = r.get("data");
            Projection::from_bytes(&data, &format!("projection {version} in the database"))
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .transpose()
    }

    async fn set_projection(&self, projection: &Projection) -> StoreResult<()> {
        let mut tx = self.write().await?;
        Self::make_current(&mut tx, projection).await?;
        tx.commit().await.map_err(backend)
    }

    async fn reproject(
        &self,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        Self::make_current(&mut tx, projection).await?;
        for (id, descriptor) in descriptors {
            sqlx::query("UPDATE exemplars SET descriptor = $1, projection = $2 WHERE id = $3")
                .bind(vector_to_bytes(descriptor))
                .bind(projection.version())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        Self::project_stragglers(&mut tx, projection).await?;
        tx.commit().await.map_err(backend)
    }

    async fn descriptors(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        self.vectors("descriptor", ids).await
    }
}
