//! What a backup needs of the database: a consistent copy taken while writers go on,
//! and the checks a restore makes of one.

use super::SqliteStore;
use crate::backend;
use exemplar_core::catalogue::{Sequence, StoreError, StoreResult};
use std::path::Path;

/// How much a catalogue holds: what a backup records and a restore checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub classes: i64,
    pub exemplars: i64,
    /// Distinct kept photos.
    pub photos: i64,
    /// Exemplars with features only.
    pub features_only: i64,
    /// The change log's position.
    pub head: Sequence,
}

impl SqliteStore {
    /// Writes a consistent copy of the database to `path`, which must not exist yet.
    /// `VACUUM INTO` reads one snapshot, so the copy is the catalogue at one instant,
    /// while writes (from this process or another) go on.
    pub async fn snapshot_into(&self, path: &Path) -> StoreResult<()> {
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid(format!("{} is not UTF-8", path.display())))?;
        sqlx::query("VACUUM INTO ?")
            .bind(path)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// SQLite's own check of the whole file.
    pub async fn integrity_check(&self) -> StoreResult<()> {
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        if verdict != "ok" {
            return Err(StoreError::Backend(format!(
                "integrity check failed: {verdict}"
            )));
        }
        Ok(())
    }

    pub async fn tally(&self) -> StoreResult<Tally> {
        let one = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.pool)
                .await
                .map_err(backend)
        };
        Ok(Tally {
            classes: one("SELECT count(*) FROM classes").await?,
            exemplars: one("SELECT count(*) FROM exemplars").await?,
            photos: one("SELECT count(DISTINCT sha256) FROM exemplars WHERE photo_kept = 1")
                .await?,
            features_only: one("SELECT count(*) FROM exemplars WHERE photo_kept = 0").await?,
            head: one("SELECT COALESCE(MAX(seq), 0) FROM changes").await?,
        })
    }

    /// Each model the exemplars were embedded with, and how many.
    pub async fn models(&self) -> StoreResult<Vec<(String, i64)>> {
        sqlx::query_as("SELECT model, count(*) FROM exemplars GROUP BY model ORDER BY model")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    /// The hashes of every kept photo, sorted.
    pub async fn kept_photos(&self) -> StoreResult<Vec<String>> {
        sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM exemplars WHERE photo_kept = 1 ORDER BY sha256",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)
    }

    /// Sends buffered writes to the main database file, so the file alone is the whole
    /// catalogue (before it is copied).
    pub async fn checkpoint(&self) -> StoreResult<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Closes every connection (before the file is moved or copied).
    pub async fn close(self) {
        self.pool.close().await;
    }
}
