//! `exemplar serve`: open the data directory, bring the index up to date with the
//! database, and answer HTTP until told to stop.

use crate::cli::ServeArgs;
use crate::http::{self, AppCatalogue, AppState};
use anyhow::Context;
use exemplar_core::embed_queue::EmbedQueue;
use exemplar_core::service::{Catalogue, Limits, VerdictRule};
use exemplar_core::{FeatureExtractor, Projection};
use exemplar_embed::CnnEmbedder;
use exemplar_index::{AnnIndex, IndexParams};
use exemplar_store::SqliteStore;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const DESCRIPTOR_DIM: usize = 256;

/// Everything `serve` needs, built from a loaded embedder.
pub async fn open_catalogue(
    args: &ServeArgs,
    embedder: Arc<CnnEmbedder>,
) -> anyhow::Result<Arc<AppCatalogue>> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let projection = projection(dir, &embedder)?;
    let store = SqliteStore::open(&dir.join("catalogue.sqlite")).await?;
    let params = IndexParams {
        m: args.hnsw_m,
        ef_construction: args.hnsw_ef_construction,
        ef_search: args.hnsw_ef_search,
    };
    // The index is a cache: a missing, stale or corrupt dump is rebuilt from the log.
    let dump = exemplar_index::dump_dir(dir);
    let (index, watermark) = match AnnIndex::load(&dump, DESCRIPTOR_DIM) {
        Ok((mut index, meta)) => {
            index.set_ef_search(params.ef_search);
            (index, meta.watermark as i64)
        }
        Err(_) if !dump.exists() => {
            tracing::info!("no index dump yet: building the index from the database");
            (AnnIndex::new(DESCRIPTOR_DIM, params, 10_000), 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable index dump: rebuilding from the database");
            (AnnIndex::new(DESCRIPTOR_DIM, params, 10_000), 0)
        }
    };
    let model = embedder.info().id.clone();
    let queue = EmbedQueue::start(embedder, args.queue_capacity, 8);
    let catalogue = Catalogue::new(
        store,
        index,
        queue,
        projection,
        model,
        Limits::default(),
        VerdictRule::default(),
    );
    let head = catalogue.catch_up(watermark).await?;
    tracing::info!(
        indexed = catalogue.indexed(),
        from = watermark,
        to = head,
        "index caught up"
    );
    Ok(Arc::new(catalogue))
}

/// The stored projection, or the data-free default on first start (then stored).
fn projection(dir: &Path, embedder: &CnnEmbedder) -> anyhow::Result<Projection> {
    let path = dir.join("projection.safetensors");
    if path.exists() {
        let p = Projection::load(&path)?;
        anyhow::ensure!(
            p.input_dim() == embedder.info().feature_dim,
            "{} projects {}-d features but model {} makes {}-d ones: use the model the catalogue was built with",
            path.display(),
            p.input_dim(),
            embedder.info().id,
            embedder.info().feature_dim
        );
        return Ok(p);
    }
    let p = exemplar_embed::default_projection(embedder, DESCRIPTOR_DIM)?;
    p.save(&path)?;
    Ok(p)
}

/// Writes the index dump, tagged with the change log position it reflects.
pub async fn save_index(catalogue: &AppCatalogue, dir: &Path) -> anyhow::Result<()> {
    let head = catalogue.catch_up(0).await?;
    catalogue
        .read_index()
        .save(&exemplar_index::dump_dir(dir), head as u64)?;
    Ok(())
}

pub fn run(args: ServeArgs, embedder: CnnEmbedder) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let catalogue = open_catalogue(&args, Arc::new(embedder)).await?;
        let state = AppState::new(catalogue.clone(), args.api_key.as_deref());
        let app = http::router(state, args.max_body_bytes);
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
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        save_index(&catalogue, &args.data_dir).await?;
        tracing::info!("index saved, bye");
        Ok(())
    })
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
