//! Re-index jobs and their staged features (see `exemplar_core::reindex`).

use super::{id_vectors, notify, PgStore};
use crate::{backend, now_ms};
use exemplar_core::catalogue::{vector_to_bytes, ExemplarId, StoreError, StoreResult};
use exemplar_core::reindex::{ReindexJob, ReindexStore, StagedFeatures};
use exemplar_core::Projection;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

fn job_from_row(r: &PgRow) -> ReindexJob {
    ReindexJob {
        id: r.get("id"),
        spec: r.get("spec"),
        model: r.get("model"),
        created_at_ms: r.get("created_at"),
    }
}

/// Ends a job being built (`switched` or `cancelled`) and drops its staged rows.
async fn finish(tx: &mut Transaction<'_, Postgres>, job: i64, state: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE reindex_jobs SET state = $1, finished_at = $2 WHERE id = $3 AND state = 'building'",
    )
    .bind(state)
    .bind(now_ms())
    .bind(job)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    sqlx::query("DELETE FROM reindexed WHERE job = $1")
        .bind(job)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

async fn write_descriptors(
    tx: &mut Transaction<'_, Postgres>,
    job: i64,
    descriptors: &[(ExemplarId, Vec<f32>)],
) -> StoreResult<()> {
    for (id, descriptor) in descriptors {
        sqlx::query("UPDATE reindexed SET descriptor = $1 WHERE job = $2 AND exemplar_id = $3")
            .bind(vector_to_bytes(descriptor))
            .bind(job)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

impl ReindexStore for PgStore {
    async fn begin_reindex(&self, spec: &str, model: &str) -> StoreResult<ReindexJob> {
        let mut tx = self.write().await?;
        let running: Option<i64> =
            sqlx::query_scalar("SELECT id FROM reindex_jobs WHERE state = 'building'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        if let Some(id) = running {
            return Err(StoreError::Invalid(format!(
                "re-index job {id} is still being built"
            )));
        }
        let created_at = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO reindex_jobs (spec, model, state, created_at)
             VALUES ($1, $2, 'building', $3) RETURNING id",
        )
        .bind(spec)
        .bind(model)
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
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
        sqlx::query_scalar(
            "SELECT spec FROM reindex_jobs WHERE state = 'switched' ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)
    }

    async fn reindex_todo(&self, job: i64, limit: usize) -> StoreResult<Vec<(ExemplarId, String)>> {
        let rows = sqlx::query(
            "SELECT e.id, e.sha256 FROM exemplars e
             WHERE e.photo_kept
               AND NOT EXISTS (SELECT 1 FROM reindexed r WHERE r.job = $1 AND r.exemplar_id = e.id)
             ORDER BY e.id LIMIT $2",
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
                 WHERE r.job = $1) AS staged,
               (SELECT COUNT(*) FROM exemplars WHERE photo_kept) AS total",
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for f in features {
            sqlx::query(
                "INSERT INTO reindexed (job, exemplar_id, raw_feature, local_features)
                 VALUES ($1, $2, $3, $4)
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
                    JOIN exemplars e ON e.id = r.exemplar_id WHERE r.job = $1";
        let rows = match ids {
            None => sqlx::query(&format!("{base} ORDER BY r.exemplar_id"))
                .bind(job)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?,
            Some(ids) => sqlx::query(&format!(
                "{base} AND r.exemplar_id = ANY($2) ORDER BY r.exemplar_id"
            ))
            .bind(job)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?,
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
             WHERE r.job = $1 AND r.descriptor IS NULL ORDER BY r.exemplar_id",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        id_vectors(&rows, "raw_feature")
    }

    async fn exemplars_without_photo(&self) -> StoreResult<Vec<ExemplarId>> {
        sqlx::query_scalar("SELECT id FROM exemplars WHERE NOT photo_kept ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn stage_descriptors(
        &self,
        job: i64,
        descriptors: &[(ExemplarId, Vec<f32>)],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
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
        let model: String = sqlx::query_scalar(
            "SELECT model FROM reindex_jobs WHERE id = $1 AND state = 'building'",
        )
        .bind(job)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::Invalid(format!("re-index job {job} is not being built")))?;
        Self::make_current(&mut tx, projection).await?;
        write_descriptors(&mut tx, job, descriptors).await?;
        let lacking: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM exemplars e WHERE NOT EXISTS
               (SELECT 1 FROM reindexed r
                 WHERE r.job = $1 AND r.exemplar_id = e.id AND r.descriptor IS NOT NULL)",
        )
        .bind(job)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if lacking > 0 {
            // Dropping `tx` rolls everything back: the current version stays whole.
            return Err(StoreError::Invalid(format!(
                "{lacking} exemplars have no features of the new version"
            )));
        }
        sqlx::query(
            "UPDATE exemplars SET
               raw_feature = r.raw_feature,
               local_features = COALESCE(r.local_features, exemplars.local_features),
               descriptor = r.descriptor, model = $1, projection = $2
             FROM reindexed AS r
             WHERE r.job = $3 AND r.exemplar_id = exemplars.id",
        )
        .bind(&model)
        .bind(projection.version())
        .bind(job)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        finish(&mut tx, job, "switched").await?;
        notify(&mut tx).await?;
        tx.commit().await.map_err(backend)
    }

    async fn cancel_reindex(&self, job: i64) -> StoreResult<()> {
        let mut tx = self.write().await?;
        finish(&mut tx, job, "cancelled").await?;
        tx.commit().await.map_err(backend)
    }
}
