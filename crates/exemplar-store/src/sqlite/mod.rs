//! The catalogue in a SQLite file (WAL, synchronous commits, so an acknowledged write
//! survives a crash or power loss), with consistent copies for backups (`snapshot`).

mod reindex;
mod snapshot;
mod unknowns;

pub use snapshot::Tally;

use crate::{backend, now_ms};
use exemplar_core::catalogue::{
    vector_from_bytes, vector_to_bytes, CatalogueStore, Change, ClassFilter, ClassId, ClassRecord,
    ExemplarHash, ExemplarId, ExemplarOwner, ExemplarRecord, Metadata, NewExemplar, Sequence,
    StoreError, StoreResult, Stored,
};
use exemplar_core::Projection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// What an [`ExemplarRecord`] is read from (see [`exemplar_from_row`]).
const EXEMPLAR_COLUMNS: &str =
    "id, class_id, sha256, original_name, model, projection, created_at, photo_kept";

fn exemplar_from_row(r: &sqlx::sqlite::SqliteRow) -> ExemplarRecord {
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

/// Rows of `id` and a vector column, decoded.
fn id_vectors(
    rows: &[sqlx::sqlite::SqliteRow],
    column: &str,
) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
    rows.iter()
        .map(|r| {
            let bytes: Vec<u8> = r.get(column);
            Ok((r.get("id"), vector_from_bytes(&bytes)?))
        })
        .collect()
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it returns, so an acknowledged write is
            // never lost, power cut included.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
        Ok(Self { pool })
    }

    /// One blob column of the given live exemplars, in id order (missing ids and NULLs
    /// skipped).
    async fn blobs(
        &self,
        column: &'static str,
        ids: &[ExemplarId],
    ) -> StoreResult<Vec<(ExemplarId, Vec<u8>)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT id, {column} AS v FROM exemplars
                 WHERE id IN ({placeholders}) AND {column} IS NOT NULL ORDER BY id"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await.map_err(backend)? {
                out.push((row.get("id"), row.get("v")));
            }
        }
        Ok(out)
    }

    /// One vector column of the given live exemplars, in id order (missing ids skipped).
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
        tx: &mut Transaction<'_, Sqlite>,
        projection: &Projection,
    ) -> StoreResult<()> {
        let data = projection
            .to_bytes()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        sqlx::query("UPDATE projections SET current = 0 WHERE current = 1")
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO projections (version, data, created_at, current) VALUES (?, ?, ?, 1)
             ON CONFLICT (version) DO UPDATE SET current = 1",
        )
        .bind(projection.version())
        .bind(data)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// A write transaction holding SQLite's write lock from its start (`BEGIN IMMEDIATE`).
    /// A deferred one that reads first cannot upgrade to writing once another connection
    /// has committed, and fails at once with "database is locked" instead of waiting
    /// (parallel import jobs adding photos to existing classes did).
    async fn write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }

    async fn insert_exemplars(
        tx: &mut Transaction<'_, Sqlite>,
        class: ClassId,
        exemplars: &[NewExemplar],
    ) -> StoreResult<Vec<Stored>> {
        let mut stored = Vec::with_capacity(exemplars.len());
        for e in exemplars {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT id FROM exemplars WHERE class_id = ? AND sha256 = ?")
                    .bind(class)
                    .bind(&e.sha256)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(backend)?;
            if let Some(id) = existing {
                if let Some(local) = &e.local_features {
                    sqlx::query(
                        // Added when missing, replaced when of another format (the first 4
                        // bytes name it: ORB features from before SIFT, say).
                        "UPDATE exemplars SET local_features = ?1 WHERE id = ?2 AND
                         (local_features IS NULL OR substr(local_features, 1, 4) <> substr(?1, 1, 4))",
                    )
                    .bind(local)
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                }
                if e.photo_kept {
                    sqlx::query("UPDATE exemplars SET photo_kept = 1 WHERE id = ?")
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(backend)?;
                }
                stored.push(Stored::Duplicate(id));
                continue;
            }
            let at = now_ms();
            let id = sqlx::query(
                "INSERT INTO exemplars (class_id, sha256, original_name, raw_feature, descriptor, model, projection, local_features, photo_kept, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .execute(&mut **tx)
            .await
            .map_err(backend)?
            .last_insert_rowid();
            sqlx::query(
                "INSERT INTO changes (kind, exemplar_id, at) VALUES ('exemplar_added', ?, ?)",
            )
            .bind(id)
            .bind(at)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            stored.push(Stored::Added(id));
        }
        Ok(stored)
    }

    async fn class_record(&self, id: ClassId) -> StoreResult<Option<ClassRecord>> {
        let row = sqlx::query(
            "SELECT c.id, c.label, c.metadata, c.created_at, c.updated_at,
                    (SELECT count(*) FROM exemplars e WHERE e.class_id = c.id) AS n,
                    (SELECT min(e.id) FROM exemplars e
                     WHERE e.class_id = c.id AND e.photo_kept = 1) AS photo_exemplar
             FROM classes c WHERE c.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| class_from_row(&r)).transpose()
    }
}

fn class_from_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<ClassRecord> {
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

impl CatalogueStore for SqliteStore {
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
        let id = sqlx::query(
            "INSERT INTO classes (label, metadata, created_at, updated_at) VALUES (?, ?, ?, ?)",
        )
        .bind(label)
        .bind(serde_json::to_string(metadata).expect("string map"))
        .bind(at)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .last_insert_rowid();
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
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM classes WHERE id = ?")
            .bind(class)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if exists.is_none() {
            return Err(StoreError::ClassNotFound(class));
        }
        let stored = Self::insert_exemplars(&mut tx, class, exemplars).await?;
        sqlx::query("UPDATE classes SET updated_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(class)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(stored)
    }

    async fn class(&self, id: ClassId) -> StoreResult<Option<(ClassRecord, Vec<ExemplarRecord>)>> {
        let Some(record) = self.class_record(id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(&format!(
            "SELECT {EXEMPLAR_COLUMNS} FROM exemplars WHERE class_id = ? ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let exemplars = rows.iter().map(exemplar_from_row).collect();
        Ok(Some((record, exemplars)))
    }

    async fn list_classes(
        &self,
        after: ClassId,
        limit: u32,
        filter: &ClassFilter,
    ) -> StoreResult<Vec<ClassRecord>> {
        let mut sql = String::from(
            "SELECT c.id, c.label, c.metadata, c.created_at, c.updated_at,
                    (SELECT count(*) FROM exemplars e WHERE e.class_id = c.id) AS n,
                    (SELECT min(e.id) FROM exemplars e
                     WHERE e.class_id = c.id AND e.photo_kept = 1) AS photo_exemplar
             FROM classes c WHERE c.id > ?",
        );
        if filter.label_contains.is_some() {
            sql.push_str(" AND instr(lower(c.label), lower(?)) > 0");
        }
        for _ in &filter.metadata {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM json_each(c.metadata) m WHERE m.key = ? AND m.value = ?)",
            );
        }
        sql.push_str(" ORDER BY c.id LIMIT ?");
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
            "UPDATE classes SET label = coalesce(?, label), metadata = coalesce(?, metadata), updated_at = ? WHERE id = ?",
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
            sqlx::query_scalar("SELECT id FROM exemplars WHERE class_id = ? ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        let at = now_ms();
        for exemplar in &removed {
            sqlx::query(
                "INSERT INTO changes (kind, exemplar_id, at) VALUES ('exemplar_removed', ?, ?)",
            )
            .bind(exemplar)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        sqlx::query("DELETE FROM exemplars WHERE class_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let deleted = sqlx::query("DELETE FROM classes WHERE id = ?")
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
            "SELECT {EXEMPLAR_COLUMNS} FROM exemplars WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(exemplar_from_row))
    }

    async fn photos_in_use(&self, hashes: &[String]) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for chunk in hashes.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT DISTINCT sha256 FROM exemplars WHERE photo_kept = 1 AND sha256 IN ({placeholders})"
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for hash in chunk {
                query = query.bind(hash);
            }
            out.extend(query.fetch_all(&self.pool).await.map_err(backend)?);
        }
        Ok(out)
    }

    async fn delete_exemplar(&self, id: ExemplarId) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM exemplars WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if deleted > 0 {
            sqlx::query(
                "INSERT INTO changes (kind, exemplar_id, at) VALUES ('exemplar_removed', ?, ?)",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(deleted > 0)
    }

    async fn changes_since(&self, after: Sequence) -> StoreResult<Vec<Change>> {
        let rows =
            sqlx::query("SELECT seq, kind, exemplar_id FROM changes WHERE seq > ? ORDER BY seq")
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
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT e.id AS exemplar, c.id AS class, c.label, c.metadata
                 FROM exemplars e JOIN classes c ON c.id = e.class_id WHERE e.id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await.map_err(backend)? {
                let metadata: String = row.get("metadata");
                out.push(ExemplarOwner {
                    exemplar: row.get("exemplar"),
                    class: row.get("class"),
                    label: row.get("label"),
                    metadata: serde_json::from_str(&metadata)
                        .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?,
                });
            }
        }
        Ok(out)
    }

    async fn exemplar_hashes(&self) -> StoreResult<Vec<ExemplarHash>> {
        let rows = sqlx::query(
            "SELECT id, class_id, sha256, substr(local_features, 1, 4) AS local_format, photo_kept
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
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS head FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.get("head"))
    }

    async fn exemplar_count(&self) -> StoreResult<usize> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM exemplars")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.get::<i64, _>("n") as usize)
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
        let row = sqlx::query("SELECT version, data FROM projections WHERE current = 1")
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
            sqlx::query("UPDATE exemplars SET descriptor = ?, projection = ? WHERE id = ?")
                .bind(vector_to_bytes(descriptor))
                .bind(projection.version())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn descriptors(&self, ids: &[ExemplarId]) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        self.vectors("descriptor", ids).await
    }
}
