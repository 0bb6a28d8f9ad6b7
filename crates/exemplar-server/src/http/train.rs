//! `/admin/train`: learn a descriptor head on the catalogue's kept photos in the
//! background, and follow it.

use super::{ApiError, AppState};
use crate::dto::ErrorBody;
use crate::train_job::{start as start_training, StartError, TrainRequest, TrainStatus};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// Learn a 256-d head from the kept photos: synthetic phone photos of each exemplar are
/// embedded by the serving model, and a linear head is trained from the catalogue's PCA
/// so views land near their photo. A fifth of the exemplars is held out; the head is
/// switched to (every descriptor re-projected from the stored raw features, as a refit
/// does, while searches go on) when it finds their views better than the PCA does, or as
/// `install` says. Follow it with `GET /admin/train`.
#[utoipa::path(post, path = "/admin/train", tag = "operations",
    request_body = TrainRequest,
    responses((status = 202, body = TrainStatus, description = "started"),
        (status = 400, body = ErrorBody, description = "not JSON, or a setting out of bounds"),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a training run is under way, or too few exemplars keep their photo")),
    security((), ("api_key" = [])))]
pub async fn start(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TrainStatus>), ApiError> {
    let request: TrainRequest = if body.is_empty() {
        TrainRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!(
                    "body must be a JSON object of training settings (`{{}}`: the defaults): {e}"
                ),
            )
        })?
    };
    let (settings, install) = request
        .settings()
        .map_err(|e| ApiError::bad_request("bad_setting", e))?;
    let conflict = |kind: &'static str, message: String| ApiError {
        status: StatusCode::CONFLICT,
        kind,
        message,
    };
    match start_training(
        state.catalogue.clone(),
        state.training.clone(),
        settings,
        install,
        state.reindex_share,
    )
    .await
    {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(state.training.status()))),
        Err(StartError::Running) => Err(conflict(
            "training_running",
            "a head is being trained; follow it with GET /admin/train".into(),
        )),
        Err(StartError::TooFew { have, needed }) => Err(conflict(
            "too_few_exemplars",
            format!("training needs at least {needed} exemplars with a kept photo; the catalogue has {have}"),
        )),
        Err(StartError::Service(e)) => Err(e.into()),
    }
}

/// Stop the training run under way (at its next group of views or epoch); the projection
/// in use stays.
#[utoipa::path(delete, path = "/admin/train", tag = "operations",
    responses((status = 200, body = TrainStatus),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no head is being trained")),
    security((), ("api_key" = [])))]
pub async fn cancel(State(state): State<AppState>) -> Result<Json<TrainStatus>, ApiError> {
    if !state.training.cancel() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "not_running",
            message: "no head is being trained".into(),
        });
    }
    Ok(Json(state.training.status()))
}

/// Where the latest training run stands: views embedded, epochs, held-out recall of the
/// PCA and of the head, and whether it was switched to.
#[utoipa::path(get, path = "/admin/train", tag = "operations",
    responses((status = 200, body = TrainStatus), (status = 401, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn status(State(state): State<AppState>) -> Json<TrainStatus> {
    Json(state.training.status())
}
