//! The unknowns inbox (see `exemplar_core::unknowns`).

use super::PgStore;
use crate::backend;
use exemplar_core::catalogue::StoreResult;
use exemplar_core::unknowns::{InboxPolicy, NewUnknown, UnknownRecord, UnknownStore};
use sqlx::postgres::PgRow;
use sqlx::Row;

const UNKNOWN_COLUMNS: &str = "id, created_at, name, crop, nearest_class_id, nearest_label,
    best_inliers, octet_length(photo)::BIGINT AS bytes";

fn unknown_from_row(r: &PgRow) -> UnknownRecord {
    let class: Option<i64> = r.get("nearest_class_id");
    let label: Option<String> = r.get("nearest_label");
    let inliers: Option<i64> = r.get("best_inliers");
    let bytes: i64 = r.get("bytes");
    UnknownRecord {
        id: r.get("id"),
        created_at_ms: r.get("created_at"),
        name: r.get("name"),
        crop: r.get("crop"),
        nearest_class: class.zip(label),
        best_inliers: inliers.map(|n| n.clamp(0, u32::MAX as i64) as u32),
        bytes: bytes.max(0) as usize,
    }
}

/// Deletes what `policy` no longer allows.
async fn expire(
    conn: &mut sqlx::PgConnection,
    policy: InboxPolicy,
    now_ms: i64,
) -> StoreResult<usize> {
    let aged = sqlx::query("DELETE FROM unknowns WHERE created_at < $1")
        .bind(now_ms.saturating_sub(policy.max_age_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?
        .rows_affected();
    // Newest first: a row goes once the rows newer than it, itself included, are more
    // than `max_count` or take more than `max_bytes`.
    let over = sqlx::query(
        "DELETE FROM unknowns WHERE id IN (
             SELECT id FROM (
                 SELECT id,
                        row_number() OVER newest AS n,
                        sum(octet_length(photo)) OVER newest AS bytes
                 FROM unknowns WINDOW newest AS (ORDER BY id DESC)) AS ranked
             WHERE n > $1 OR bytes > $2)",
    )
    .bind(policy.max_count.min(i64::MAX as usize) as i64)
    .bind(policy.max_bytes.min(i64::MAX as u64) as i64)
    .execute(&mut *conn)
    .await
    .map_err(backend)?
    .rows_affected();
    Ok((aged + over) as usize)
}

impl UnknownStore for PgStore {
    async fn keep_unknown(
        &self,
        unknown: &NewUnknown,
        policy: InboxPolicy,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // One inbox writer at a time, so two servers' expiries do not race.
        sqlx::query("LOCK TABLE unknowns IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO unknowns (created_at, photo, name, crop, nearest_class_id, nearest_label,
               best_inliers)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(now_ms)
        .bind(&unknown.photo)
        .bind(&unknown.name)
        .bind(&unknown.crop)
        .bind(unknown.nearest_class.as_ref().map(|(id, _)| *id))
        .bind(unknown.nearest_class.as_ref().map(|(_, label)| label))
        .bind(unknown.best_inliers.map(i64::from))
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        expire(&mut tx, policy, now_ms).await?;
        let kept = sqlx::query("SELECT 1 FROM unknowns WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        tx.commit().await.map_err(backend)?;
        Ok(kept.then_some(id))
    }

    async fn expire_unknowns(&self, policy: InboxPolicy, now_ms: i64) -> StoreResult<usize> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        expire(&mut conn, policy, now_ms).await
    }

    async fn unknowns(&self, before: i64, limit: u32) -> StoreResult<Vec<UnknownRecord>> {
        let before = if before <= 0 { i64::MAX } else { before };
        let rows = sqlx::query(&format!(
            "SELECT {UNKNOWN_COLUMNS} FROM unknowns WHERE id < $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(unknown_from_row).collect())
    }

    async fn unknown(&self, id: i64) -> StoreResult<Option<(UnknownRecord, Vec<u8>)>> {
        let row = sqlx::query(&format!(
            "SELECT {UNKNOWN_COLUMNS}, photo FROM unknowns WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| (unknown_from_row(&r), r.get("photo"))))
    }

    async fn remove_unknown(&self, id: i64) -> StoreResult<bool> {
        let gone = sqlx::query("DELETE FROM unknowns WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(gone > 0)
    }
}
