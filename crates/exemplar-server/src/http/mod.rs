//! The HTTP API (axum).

mod backup;
mod body;
mod console;
mod docs;

mod error;
mod forms;
pub mod listen;
pub mod metrics;
mod photos;
mod reindex;
mod routes;
mod train;
mod unknowns;

pub use body::BodyLimits;
pub use error::ApiError;

use crate::data_dir::AppCatalogue;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use exemplar_store::FsPhotoStore;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

#[derive(Clone)]
pub struct AppState {
    pub catalogue: Arc<AppCatalogue>,
    /// The kept photos, read by `GET /exemplars/{id}/photo` and `/thumbnail`.
    pub photos: Arc<FsPhotoStore>,
    /// Where `POST /admin/backup` writes.
    pub backup_dir: PathBuf,
    /// sha256 of the API key, when one is configured.
    pub api_key_hash: Option<[u8; 32]>,
    /// Reads (searches, listings, metrics, docs) need the key too.
    pub protect_reads: bool,
    /// The model settings the server started with: what a re-index changes from.
    pub model: crate::cli::ModelArgs,
    /// The share of the time a re-index build or a training run embeds
    /// (`--reindex-share`).
    pub reindex_share: f32,
    /// The training slot of `/admin/train`.
    pub training: Arc<crate::train_job::TrainJobs>,
    /// How far behind the shared catalogue this server is (PostgreSQL only).
    pub following: Option<Arc<crate::replica::Following>>,
}

impl AppState {
    pub fn new(
        catalogue: Arc<AppCatalogue>,
        photos: Arc<FsPhotoStore>,
        backup_dir: PathBuf,
        api_key: Option<&str>,
        protect_reads: bool,
        model: crate::cli::ModelArgs,
    ) -> Self {
        Self {
            catalogue,
            photos,
            backup_dir,
            api_key_hash: api_key.map(|k| Sha256::digest(k.as_bytes()).into()),
            protect_reads,
            model,
            reindex_share: exemplar_core::service::REINDEX_SHARE,
            training: Arc::default(),
            following: None,
        }
    }
}

pub fn router(state: AppState, body: BodyLimits) -> Router {
    Router::new()
        .route(
            "/classes",
            post(routes::create_class).get(routes::list_classes),
        )
        .route(
            "/classes/{id}",
            get(routes::get_class)
                .patch(routes::update_class)
                .delete(routes::delete_class),
        )
        .route("/classes/{id}/exemplars", post(routes::add_exemplars))
        .route("/exemplars/{id}", delete(routes::delete_exemplar))
        .route("/exemplars/{id}/photo", get(photos::photo))
        .route("/exemplars/{id}/thumbnail", get(photos::thumbnail))
        .route("/search", post(routes::search))
        .route("/admin/refit", post(routes::refit))
        .route("/admin/backup", post(backup::backup))
        .route(
            "/admin/reindex",
            post(reindex::start)
                .get(reindex::status)
                .delete(reindex::cancel),
        )
        .route(
            "/admin/train",
            post(train::start).get(train::status).delete(train::cancel),
        )
        .route("/unknowns", get(unknowns::list))
        .route("/unknowns/{id}", delete(unknowns::dismiss))
        .route("/unknowns/{id}/photo", get(unknowns::photo))
        .route("/unknowns/{id}/promote", post(unknowns::promote))
        .route("/", get(console::page))
        .route("/console/{asset}", get(console::asset))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(metrics::render))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", docs::ApiDoc::openapi()))
        .fallback(not_found)
        // Innermost first: the body is read only once the key was checked.
        .layer(middleware::from_fn_with_state(body, body::read_whole_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_key_for_writes,
        ))
        .layer(DefaultBodyLimit::max(body.max_bytes))
        // The span and the counts cover auth and body-limit rejections too.
        .route_layer(middleware::from_fn(metrics::track_requests))
        // Outermost: whatever answers an error, it leaves as JSON.
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        kind: "not_found",
        message: format!("no route {}", uri.path()),
    }
}

/// With an API key configured, every write, the admin routes and the unknowns inbox
/// (and with `--protect-reads` every request but the health probes and the console's
/// static page) need `Authorization: Bearer <key>`. Keys are
/// compared as sha256 digests with a constant-time loop, and never logged.
async fn require_key_for_writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.api_key_hash else {
        return Ok(next.run(request).await);
    };
    let is_read = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    // Searching is a read, even though the photo travels in a POST body; the admin
    // pages (settings, file paths) and the unknowns inbox (customers' photos) are not.
    let path = request.uri().path();
    let private = path.starts_with("/admin/") || path.starts_with("/unknowns");
    let is_read = (is_read && !private) || path == "/search";
    // Orchestrators probe health without credentials; the console's page and assets
    // hold no data (it asks for the key itself).
    let is_console = path == "/" || path.starts_with("/console/");
    let is_open =
        matches!(path, "/healthz" | "/readyz") || (is_console && request.method() == Method::GET);
    if is_open || (is_read && !state.protect_reads) {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| -> [u8; 32] { Sha256::digest(k.as_bytes()).into() });
    match presented {
        Some(hash)
            if hash
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0 =>
        {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::unauthorized()),
    }
}
