//! `exemplar serve`: open the data directory, bring the index up to date with the
//! database, and answer HTTP until told to stop.

use crate::cli::{ModelArgs, ServeArgs};
use crate::data_dir::AppCatalogue;
use crate::data_dir::{
    collect_orphan_photos, open_catalogue, photo_reader, save_index, DataDirLock,
};
use crate::http::{self, AppState};
use crate::replica::{self, Following};
use anyhow::Context;
use exemplar_core::catalogue::{CatalogueStore, Sequence};
use exemplar_embed::CnnEmbedder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `model`: the settings `embedder` was loaded with (a re-index changes from them).
pub fn run(args: ServeArgs, embedder: CnnEmbedder, model: ModelArgs) -> anyhow::Result<()> {
    let local = model.local_features();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        http::metrics::prometheus();
        let _lock = DataDirLock::acquire(&args.catalogue.dir.data_dir)?;
        let catalogue = open_catalogue(&args.catalogue, Arc::new(embedder), local.as_ref()).await?;
        if !args.catalogue.shares_photos() {
            collect_orphan_photos(&catalogue, &_lock).await?;
        }
        catalogue.set_unknown_inbox(args.unknown_inbox());
        catalogue.expire_unknowns().await?;
        let photos = photo_reader(args.catalogue.photos_parent())?;
        let mut state = AppState::new(
            catalogue.clone(),
            photos,
            args.backup_dir
                .clone()
                .unwrap_or_else(|| args.catalogue.dir.data_dir.join("backups")),
            args.api_key.as_deref(),
            args.protect_reads,
            model.clone(),
        );
        state.reindex_share = args.reindex_share;
        let follower = catalogue.store().as_postgres().cloned().map(|store| {
            let following = Arc::new(Following::starting_at(catalogue.caught_up_to()));
            state.following = Some(following.clone());
            tokio::spawn(replica::follow(
                catalogue.clone(),
                store,
                following,
                Duration::from_millis(args.follow_poll_ms.max(10)),
            ))
        });
        // A re-index cut short by a stop or a crash goes on from where it was.
        crate::reindex::resume(catalogue.clone(), &model, args.reindex_share).await?;
        let app = http::router(
            state,
            http::BodyLimits {
                max_bytes: args.max_body_bytes,
                timeout: Duration::from_secs(args.body_timeout_secs.max(1)),
            },
        );
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let addr: SocketAddr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        // Tests and scripts read this line to find a port-0 server; a closed stdout is
        // no reason to stop serving.
        {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on http://{addr}").and_then(|_| out.flush());
        }
        let maintenance = tokio::spawn(maintain(
            catalogue.clone(),
            args.catalogue.dir.data_dir.clone(),
            Duration::from_secs(args.maintenance_interval_secs.max(1)),
        ));
        let limits = http::listen::ConnectionLimits {
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            max_connections: args.max_connections,
        };
        http::listen::serve(listener, app, limits, shutdown_signal()).await;
        maintenance.abort();
        let _ = maintenance.await;
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        save_index(&catalogue, &args.catalogue.dir.data_dir).await?;
        tracing::info!("index saved, bye");
        Ok(())
    })
}

/// Background upkeep: refit the projection when the catalogue has grown enough, compact
/// the index when deletions weigh, collect the photos of failed writes, expire unknown
/// photos, and dump the index when it changed, so a restart (even after a crash)
/// replays little. The heavy parts run off the async workers.
async fn maintain(catalogue: Arc<AppCatalogue>, dir: PathBuf, every: Duration) {
    // The change log position and the projection of the last dump: a re-index switch
    // changes the projection and not the log.
    let mut dumped: Option<(Sequence, String)> = None;
    loop {
        tokio::time::sleep(every).await;
        let step = async {
            // On a shared catalogue one server refits; the others follow its projection.
            let refitted = if catalogue.store().leads_maintenance().await? {
                catalogue.refit_if_due().await?
            } else {
                None
            };
            let rebuilt = match refitted {
                Some(r) => Some(r),
                None => catalogue.compact_if_due().await?,
            };
            let words = catalogue.rebuild_words_if_due().await?;
            // Photos of writes that failed or were abandoned since the last step.
            catalogue.collect_photos(Vec::new()).await?;
            // The inbox's age bound holds even when no new unknown photo comes.
            catalogue.expire_unknowns().await?;
            let rebuilt = rebuilt.map(|_| ()).or(words.map(|_| ()));
            let now = (
                catalogue.store().head().await?,
                catalogue.projection().version().to_string(),
            );
            if rebuilt.is_some() || dumped.as_ref() != Some(&now) {
                let head = save_index(&catalogue, &dir).await?;
                dumped = Some((head, now.1));
            }
            anyhow::Ok(())
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %format!("{e:#}"), "maintenance step failed; retrying next time");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
