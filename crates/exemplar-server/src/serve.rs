//! `exemplar serve`: open the data directory, bring the index up to date with the
//! database, and answer HTTP until told to stop.

use crate::cli::ServeArgs;
use crate::data_dir::{open_catalogue, save_index, DataDirLock};
use crate::http::{self, AppState};
use anyhow::Context;
use exemplar_embed::CnnEmbedder;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn run(args: ServeArgs, embedder: CnnEmbedder) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        http::metrics::prometheus();
        let _lock = DataDirLock::acquire(&args.catalogue.data_dir)?;
        let catalogue = open_catalogue(&args.catalogue, Arc::new(embedder)).await?;
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
        save_index(&catalogue, &args.catalogue.data_dir).await?;
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
