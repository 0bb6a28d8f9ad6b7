//! `/admin/reindex`: start, follow and cancel a re-index of the catalogue from its kept
//! photos (a new model, geometry or kind of local features) while the server serves.

use super::{ApiError, AppState};
use crate::dto::ErrorBody;
use crate::reindex::{new_version, spawn_build, IndexSpec, SpecChange};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use exemplar_core::reindex::ReindexStore;
use exemplar_core::service::ReindexStatus;
use serde::Serialize;

/// Where the latest re-index stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReindexProgress {
    /// `idle` (none since the server started), `building`, `switching`, `switched`,
    /// `failed` or `cancelled`.
    #[schema(example = "building")]
    pub state: &'static str,
    pub job: Option<i64>,
    /// The settings of the version being built (or last built).
    pub spec: Option<IndexSpec>,
    /// Its model's id.
    pub model: Option<String>,
    /// Exemplars already embedded by the new model, of `total` (those with a kept photo).
    pub done: usize,
    pub total: usize,
    pub started_at_ms: Option<i64>,
    /// From the start of the build to the switch or the failure (0 while building).
    pub seconds: f64,
    /// How long writes waited while switching.
    pub switch_ms: Option<f64>,
    /// The projection of the new version, once switched.
    pub projection: Option<String>,
    pub error: Option<String>,
}

impl From<ReindexStatus> for ReindexProgress {
    fn from(s: ReindexStatus) -> Self {
        Self {
            state: s.state.as_str(),
            job: s.job,
            spec: s.spec.as_deref().and_then(|j| serde_json::from_str(j).ok()),
            model: s.model,
            done: s.done,
            total: s.total,
            started_at_ms: s.started_at_ms,
            seconds: s.seconds,
            switch_ms: s.switch_ms,
            projection: s.projection,
            error: s.error,
        }
    }
}

/// Build a new index version from the kept photos with these model settings (those
/// left out stay as they are) in the background, then switch to it at once: searches
/// and writes are served by the current version until then, writes made meanwhile reach
/// the new one, and a search never mixes the two. Resumes after a restart. Follow it with
/// `GET /admin/reindex`.
#[utoipa::path(post, path = "/admin/reindex", tag = "operations",
    request_body = SpecChange,
    responses((status = 202, body = ReindexProgress, description = "started"),
        (status = 400, body = ErrorBody, description = "not JSON, a setting that does not parse, or weights that do not load"),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a re-index is running, photos are not kept, or some exemplars have none (named)")),
    security((), ("api_key" = [])))]
pub async fn start(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReindexProgress>), ApiError> {
    let change: SpecChange = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!(
                "body must be a JSON object of the model settings to change (`{{}}`: none): {e}"
            ),
        )
    })?;
    let catalogue = state.catalogue.clone();
    let current =
        match catalogue.store().index_spec().await.map_err(|e| {
            ApiError::internal(format!("reading the catalogue's model settings: {e}"))
        })? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| ApiError::internal(format!("the recorded model settings: {e}")))?,
            None => IndexSpec::of(&state.model),
        };
    let bad_setting = |e: anyhow::Error| ApiError::bad_request("bad_setting", format!("{e:#}"));
    let spec = current.changed(&change).map_err(bad_setting)?;
    let args = spec.apply(&state.model).map_err(bad_setting)?;
    let share = state.reindex_share;
    let version = tokio::task::spawn_blocking(move || new_version(&args, &current, share))
        .await
        .map_err(|e| ApiError::internal(format!("loading the model: {e}")))?
        .map_err(|e| ApiError::bad_request("bad_model", format!("{e:#}")))?;
    let spec_json = serde_json::to_string(&spec).expect("settings serialise");
    let job = catalogue.begin_reindex(&spec_json, &version).await?;
    spawn_build(catalogue.clone(), job, version);
    Ok((
        StatusCode::ACCEPTED,
        Json(catalogue.reindex_status().into()),
    ))
}

/// Where the latest re-index stands: progress while building, the outcome after.
#[utoipa::path(get, path = "/admin/reindex", tag = "operations",
    responses((status = 200, body = ReindexProgress), (status = 401, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn status(State(state): State<AppState>) -> Json<ReindexProgress> {
    Json(state.catalogue.reindex_status().into())
}

/// Stop the re-index being built and drop what it made; the current version stays.
#[utoipa::path(delete, path = "/admin/reindex", tag = "operations",
    responses((status = 200, body = ReindexProgress),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no re-index is being built")),
    security((), ("api_key" = [])))]
pub async fn cancel(State(state): State<AppState>) -> Result<Json<ReindexProgress>, ApiError> {
    if !state.catalogue.cancel_reindex().await? {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "not_running",
            message: "no re-index is being built".into(),
        });
    }
    Ok(Json(state.catalogue.reindex_status().into()))
}
