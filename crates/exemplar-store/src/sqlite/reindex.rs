//! Re-index jobs and their staged features (see `exemplar_core::reindex`).

use super::{id_vectors, SqliteStore};
use crate::{backend, now_ms};
use exemplar_core::catalogue::{vector_to_bytes, ExemplarId, StoreError, StoreResult};
use exemplar_core::reindex::{ReindexJob, ReindexStore, StagedFeatures};
use exemplar_core::Projection;
use sqlx::Row;

fn job_from_row(r: &sqlx::sqlite::SqliteRow) -> ReindexJob {
    ReindexJob {
        id: r.get("id"),
        spec: r.get("spec"),
        model: r.get("model"),
        created_at_ms: r.get("created_at"),
    }
}

/// Ends a job being built (`switched` or `cancelled`) and drops its staged rows.
async fn finish(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: i64,
    state: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE reindex_jobs SET state = ?, finished_at = ? WHERE id = ? AND state = 'building'",
    )
    .bind(state)
    .bind(now_ms())
    .bind(job)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    sqlx::query("DELETE FROM reindexed WHERE job = ?")
        .bind(job)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

async fn write_descriptors(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: i64,
    descriptors: &[(ExemplarId, Vec<f32>)],
) -> StoreResult<()> {
    for (id, descriptor) in descriptors {
        sqlx::query("UPDATE reindexed SET descriptor = ? WHERE job = ? AND exemplar_id = ?")
            .bind(vector_to_bytes(descriptor))
            .bind(job)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

impl ReindexStore for SqliteStore {
    async fn begin_reindex(&self, spec: &str, model: &str) -> StoreResult<ReindexJob> {
        let mut tx = self.write().await?;
        let running = sqlx::query("SELECT id FROM reindex_jobs WHERE state = 'building'")
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(r) = running {
            return Err(StoreError::Invalid(format!(
                "re-index job {} is still being built",
                r.get::<i64, _>("id")
            )));
        }
        let created_at = now_ms();
        let id = sqlx::query(
            "INSERT INTO reindex_jobs (spec, model, state, created_at) VALUES (?, ?, 'building', ?)",
        )
        .bind(spec)
        .bind(model)
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .last_insert_rowid();
        tx.commit().await.map_err(backend)?;
        Ok(ReindexJob {
            id,
            spec: spec.into(),
            model: model.into(),
            created_at_ms: created_at,
        })
    }

    async fn reindex_in_progress(&self) -> StoreResult<Option<ReindexJob>> {
        let row = sqlx::query(
            "SELECT id, spec, model, created_at FROM reindex_jobs WHERE state = 'building'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(job_from_row))
    }

    async fn index_spec(&self) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "SELECT spec FROM reindex_jobs WHERE state = 'switched' ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| r.get("spec")))
    }

    async fn reindex_todo(&self, job: i64, limit: usize) -> StoreResult<Vec<(ExemplarId, String)>> {
        let rows = sqlx::query(
            "SELECT e.id, e.sha256 FROM exemplars e
             WHERE e.photo_kept = 1
               AND NOT EXISTS (SELECT 1 FROM reindexed r WHERE r.job = ? AND r.exemplar_id = e.id)
             ORDER BY e.id LIMIT ?",
        )
        .bind(job)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| (r.get("id"), r.get("sha256")))
            .collect())
    }

    async fn reindex_counts(&self, job: i64) -> StoreResult<(usize, usize)> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM reindexed r JOIN exemplars e ON e.id = r.exemplar_id
                 WHERE r.job = ?) AS staged,
               (SELECT COUNT(*) FROM exemplars WHERE photo_kept = 1) AS total",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok((
            row.get::<i64, _>("staged") as usize,
            row.get::<i64, _>("total") as usize,
        ))
    }

    async fn stage_features(&self, job: i64, features: &[StagedFeatures]) -> StoreResult<()> {
        let mut tx = self.write().await?;
        for f in features {
            sqlx::query(
                "INSERT INTO reindexed (job, exemplar_id, raw_feature, local_features)
                 VALUES (?, ?, ?, ?)
                 ON CONFLICT (job, exemplar_id) DO UPDATE
                 SET raw_feature = excluded.raw_feature, local_features = excluded.local_features,
                     descriptor = NULL",
            )
            .bind(job)
            .bind(f.exemplar)
            .bind(vector_to_bytes(&f.raw_feature))
            .bind(f.local_features.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn staged_raw_features(
        &self,
        job: i64,
        ids: Option<&[ExemplarId]>,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        let base = "SELECT r.exemplar_id AS id, r.raw_feature FROM reindexed r
                    JOIN exemplars e ON e.id = r.exemplar_id WHERE r.job = ?";
        let rows = match ids {
            None => sqlx::query(&format!("{base} ORDER BY r.exemplar_id"))
                .bind(job)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?,
            Some(ids) => {
                let mut rows = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(500) {
                    let placeholders = vec!["?"; chunk.len()].join(",");
                    let sql = format!(
                        "{base} AND r.exemplar_id IN ({placeholders}) ORDER BY r.exemplar_id"
                    );
                    let mut query = sqlx::query(&sql).bind(job);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    rows.extend(query.fetch_all(&self.pool).await.map_err(backend)?);
                }
                rows
            }
        };
        id_vectors(&rows, "raw_feature")
    }

    async fn staged_without_descriptor(
        &self,
        job: i64,
    ) -> StoreResult<Vec<(ExemplarId, Vec<f32>)>> {
        let rows = sqlx::query(
            "SELECT r.exemplar_id AS id, r.raw_feature FROM reindexed r
             JOIN exemplars e ON e.id = r.exemplar_id
             WHERE r.job = ? AND r.descriptor IS NULL ORDER BY r.exemplar_id",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        id_vectors(&rows, "raw_feature")
    }

    async fn exemplars_without_photo(&self) -> StoreResult<Vec<ExemplarId>> {
        let rows = sqlx::query("SELECT id FROM exemplars WHERE photo_kept = 0 ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn stage_descriptors(
        &self,
        job: i64,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        write_descriptors(&mut tx, job, descriptors).await?;
        tx.commit().await.map_err(backend)
    }

    async fn switch_to_reindexed(
        &self,
        job: i64,
        projection: &Projection,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        let model: String =
            sqlx::query("SELECT model FROM reindex_jobs WHERE id = ? AND state = 'building'")
                .bind(job)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .ok_or_else(|| {
                    StoreError::Invalid(format!("re-index job {job} is not being built"))
                })?
                .get("model");
        Self::make_current(&mut tx, projection).await?;
        write_descriptors(&mut tx, job, descriptors).await?;
        let lacking: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM exemplars e WHERE NOT EXISTS
               (SELECT 1 FROM reindexed r
                 WHERE r.job = ? AND r.exemplar_id = e.id AND r.descriptor IS NOT NULL)",
        )
        .bind(job)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?
        .get("n");
        if lacking > 0 {
            // Dropping `tx` rolls everything back: the current version stays whole.
            return Err(StoreError::Invalid(format!(
                "{lacking} exemplars have no features of the new version"
            )));
        }
        // One statement for the whole catalogue: SQLite copies the blobs itself.
        sqlx::query(
            "UPDATE exemplars SET
               raw_feature = r.raw_feature,
               local_features = COALESCE(r.local_features, exemplars.local_features),
               descriptor = r.descriptor, model = ?, projection = ?
             FROM reindexed AS r
             WHERE r.job = ? AND r.exemplar_id = exemplars.id",
        )
        .bind(&model)
        .bind(projection.version())
        .bind(job)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        finish(&mut tx, job, "switched").await?;
        tx.commit().await.map_err(backend)
    }

    async fn cancel_reindex(&self, job: i64) -> StoreResult<()> {
        let mut tx = self.write().await?;
        finish(&mut tx, job, "cancelled").await?;
        tx.commit().await.map_err(backend)
    }
}
