//! Serving a shared (PostgreSQL) catalogue beside other servers: this server follows the
//! change log, woken by the database's notifications and polling in case one is missed,
//! and applies what the others wrote to its own in-memory indexes. Its own writes are in
//! its indexes at once; the others' within the lag it reports (`/readyz`, `/metrics`).

use crate::data_dir::AppCatalogue;
use exemplar_core::catalogue::{CatalogueStore, Sequence};
use exemplar_core::reindex::ReindexStore;
use exemplar_core::service::ReindexState;
use exemplar_store::PgStore;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far this server is behind the shared catalogue.
#[derive(Default)]
pub struct Following {
    applied: AtomicI64,
    head: AtomicI64,
    /// When this server last knew it had applied every change (unix ms).
    caught_up_at_ms: AtomicI64,
    /// The last look at the database failed.
    database_lost: AtomicBool,
}

/// What `/readyz` reports of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaLag {
    /// The last change of the shared log this server has applied.
    pub applied: Sequence,
    /// The last change it has seen in the database.
    pub head: Sequence,
    /// Milliseconds since it last knew itself up to date: what another server wrote
    /// before then is found here.
    pub lag_ms: i64,
    /// The database could not be reached at the last look: searches go on from memory,
    /// writes are refused until it is back.
    pub database_lost: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Following {
    pub fn starting_at(applied: Sequence) -> Self {
        Self {
            applied: applied.into(),
            head: applied.into(),
            caught_up_at_ms: now_ms().into(),
            database_lost: false.into(),
        }
    }

    pub fn lag(&self) -> ReplicaLag {
        ReplicaLag {
            applied: self.applied.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            lag_ms: (now_ms() - self.caught_up_at_ms.load(Ordering::Relaxed)).max(0),
            database_lost: self.database_lost.load(Ordering::Relaxed),
        }
    }
}

/// Follows the shared catalogue until the task is dropped. When another server switches
/// the catalogue to another model (a re-index), this process exits with a message: the
/// model is loaded at start, so a restart (by the supervisor: compose, systemd) serves it.
pub async fn follow(
    catalogue: Arc<AppCatalogue>,
    store: PgStore,
    following: Arc<Following>,
    poll: Duration,
) {
    let mut listener = None;
    let mut started_with = catalogue.store().index_spec().await.ok().flatten();
    loop {
        if listener.is_none() {
            listener = store.listen().await.ok();
        }
        match listener.as_mut() {
            // Woken by a commit anywhere, or after `poll` at the latest.
            Some(l) => {
                if let Ok(Err(_)) = tokio::time::timeout(poll, l.recv()).await {
                    listener = None;
                    tokio::time::sleep(poll).await;
                }
            }
            None => tokio::time::sleep(poll).await,
        }
        let looked_at = now_ms();
        let step = async {
            let spec = catalogue.store().index_spec().await?;
            let own = catalogue.reindex_status();
            let reindexing_here =
                matches!(own.state, ReindexState::Building | ReindexState::Switching);
            if own.state == ReindexState::Switched && own.spec == spec {
                started_with = spec.clone(); // this server's own re-index
            }
            if spec != started_with && !reindexing_here {
                tracing::error!(
                    settings = spec.as_deref().unwrap_or_default(),
                    "another server re-indexed the shared catalogue with other model settings: exiting so a restart loads them"
                );
                std::process::exit(75);
            }
            let head = catalogue.store().head().await?;
            following.head.store(head, Ordering::Relaxed);
            let applied = following.applied.load(Ordering::Relaxed);
            let reached = catalogue.follow(applied).await?;
            following
                .applied
                .store(reached.max(applied), Ordering::Relaxed);
            anyhow::Ok(reached >= head)
        };
        match step.await {
            Ok(up_to_date) => {
                following.database_lost.store(false, Ordering::Relaxed);
                if up_to_date {
                    following
                        .caught_up_at_ms
                        .store(looked_at, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if !following.database_lost.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot follow the shared catalogue; retrying");
                }
            }
        }
    }
}
