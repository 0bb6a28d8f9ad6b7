//! `/unknowns`: the inbox of photos whose search was answered `unknown` (kept only with
//! `--keep-unknown N`): list them, see one, make a class of one or add it to a class,
//! dismiss one. They are customers' photos, so every route here needs the API key when
//! one is configured, as the admin routes do.

use super::photos::image_type;
use super::{ApiError, AppState};
use crate::dto::{Class, CreatedClass, ErrorBody, UploadedExemplar};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use exemplar_core::service::Promotion;
use exemplar_core::unknowns::UnknownRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// A photo whose search was answered `unknown`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Unknown {
    pub id: i64,
    pub created_at_ms: i64,
    /// The file name it was sent with.
    pub name: Option<String>,
    /// The part of the photo that was searched (`x,y,width,height`), if one was given.
    pub crop: Option<String>,
    /// The class the search ranked first without verifying it: a hint, not an answer.
    pub nearest_class_id: Option<i64>,
    pub nearest_label: Option<String>,
    /// The most inliers any candidate reached.
    pub best_inliers: Option<u32>,
    /// The photo's size in bytes.
    pub bytes: usize,
}

impl From<&UnknownRecord> for Unknown {
    fn from(u: &UnknownRecord) -> Self {
        Self {
            id: u.id,
            created_at_ms: u.created_at_ms,
            name: u.name.clone(),
            crop: u.crop.clone(),
            nearest_class_id: u.nearest_class.as_ref().map(|(id, _)| *id),
            nearest_label: u.nearest_class.as_ref().map(|(_, l)| l.clone()),
            best_inliers: u.best_inliers,
            bytes: u.bytes,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnknownPage {
    /// Newest first.
    pub unknowns: Vec<Unknown>,
    /// Pass as `before` for the next page; absent on the last one.
    pub next_before: Option<i64>,
    /// Whether searches answered `unknown` are being kept now (`--keep-unknown`).
    pub keeping: bool,
    /// How many are kept at most, how many MiB of photos, and for how many hours.
    pub max_count: usize,
    pub max_mib: f64,
    pub max_hours: f64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnknownsQuery {
    /// Unknowns older than this id (the previous page's `next_before`).
    #[serde(default)]
    #[param(required = false)]
    before: i64,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    limit: Option<u32>,
}

/// The inbox, newest first.
#[utoipa::path(get, path = "/unknowns", tag = "unknowns", params(UnknownsQuery),
    responses((status = 200, body = UnknownPage),
        (status = 400, body = ErrorBody, description = "bad `limit` or `before`"),
        (status = 401, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<UnknownsQuery>, QueryRejection>,
) -> Result<Json<UnknownPage>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be between 1 and 200, got {limit}"),
        ));
    }
    let unknowns = state.catalogue.unknowns(query.before, limit).await?;
    let next_before = (unknowns.len() == limit as usize)
        .then(|| unknowns.last().map(|u| u.id))
        .flatten();
    let policy = state.catalogue.unknown_inbox();
    Ok(Json(UnknownPage {
        unknowns: unknowns.iter().map(Unknown::from).collect(),
        next_before,
        keeping: policy.is_on(),
        max_count: policy.max_count,
        max_mib: policy.max_bytes as f64 / (1 << 20) as f64,
        max_hours: policy.max_age_ms as f64 / 3_600_000.0,
    }))
}

/// The photo as it was sent.
#[utoipa::path(get, path = "/unknowns/{id}/photo", tag = "unknowns",
    params(("id" = i64, Path, description = "unknown id")),
    responses((status = 200, description = "the bytes as sent, with their image type", content_type = "image/*"),
        (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn photo(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let (_, bytes) = state.catalogue.unknown(id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, image_type(&bytes)),
            // A customer's photo: the browser may keep it, shared caches may not.
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /unknowns/{id}/promote`: either `label` (and `metadata`) for a new class, or
/// `class_id` to add the photo to a class.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PromoteRequest {
    /// A new class's name.
    #[schema(nullable = false, example = "Kind of Blue")]
    label: Option<String>,
    /// The new class's metadata (string values).
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// An existing class to add the photo to.
    #[schema(nullable = false)]
    class_id: Option<i64>,
}

fn promotion(body: &[u8]) -> Result<Promotion, ApiError> {
    let bad = |message: String| ApiError::bad_request("bad_promotion", message);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("body is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(
            "bad_json",
            "body must be a JSON object",
        ));
    };
    let label = fields.remove("label");
    let metadata = fields.remove("metadata");
    let class_id = fields.remove("class_id");
    if let Some(unknown) = fields.keys().next() {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field `{unknown}`; expected: label, metadata, class_id"),
        ));
    }
    match (label, metadata, class_id) {
        (None, None, Some(id)) => id
            .as_i64()
            .map(Promotion::ToClass)
            .ok_or_else(|| bad(format!("class_id must be an integer, got {id}"))),
        (Some(Value::String(label)), metadata, None) => {
            let metadata = metadata
                .map(|m| super::routes::parse_metadata(&m.to_string()))
                .transpose()?
                .unwrap_or_default();
            Ok(Promotion::NewClass { label, metadata })
        }
        (Some(other), _, None) => Err(ApiError::bad_request(
            "bad_label",
            format!("label must be a string, got {other}"),
        )),
        _ => Err(bad(
            "give either `label` (and `metadata`) for a new class, or `class_id`".into(),
        )),
    }
}

/// Make the photo an exemplar, of a new class or of an existing one, and take it out of
/// the inbox. The class answers searches of it at once.
#[utoipa::path(post, path = "/unknowns/{id}/promote", tag = "unknowns",
    params(("id" = i64, Path, description = "unknown id")),
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses((status = 201, body = CreatedClass, description = "the class the photo is now an exemplar of"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such unknown, or no such class"),
        (status = 503, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn promote(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedClass>), ApiError> {
    let Path(id) = id?;
    let to = promotion(&body)?;
    let promoted = state.catalogue.promote_unknown(id, &to).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClass {
            class: Class::from(&promoted.class),
            exemplars: promoted
                .exemplars
                .iter()
                .map(UploadedExemplar::from)
                .collect(),
        }),
    ))
}

/// Dismiss it: the photo is deleted.
#[utoipa::path(delete, path = "/unknowns/{id}", tag = "unknowns",
    params(("id" = i64, Path, description = "unknown id")),
    responses((status = 204), (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn dismiss(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    state.catalogue.dismiss_unknown(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_is_a_new_class_or_an_existing_one_never_both() {
        assert_eq!(
            promotion(br#"{"class_id": 4}"#).unwrap(),
            Promotion::ToClass(4)
        );
        let Promotion::NewClass { label, metadata } =
            promotion(br#"{"label": "Blue Train", "metadata": {"format": "LP"}}"#).unwrap()
        else {
            panic!("a new class")
        };
        assert_eq!(label, "Blue Train");
        assert_eq!(metadata["format"], "LP");
        for (body, kind) in [
            (&br#"{"label": "x", "class_id": 4}"#[..], "bad_promotion"),
            (br#"{}"#, "bad_promotion"),
            (br#"{"class_id": "4"}"#, "bad_promotion"),
            (br#"{"label": 3}"#, "bad_label"),
            (br#"{"label": "x", "colour": "red"}"#, "unknown_field"),
            (br#"[1]"#, "bad_json"),
        ] {
            assert_eq!(promotion(body).unwrap_err().kind, kind, "{body:?}");
        }
    }
}
