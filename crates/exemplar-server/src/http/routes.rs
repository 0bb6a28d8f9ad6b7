//! Request handlers: parse, call the catalogue service, shape the JSON answer.

use super::forms::{ClassUpdate, ImagesForm, NewClassForm, SearchForm};
use super::{ApiError, AppState};
use crate::dto::{
    AddedExemplars, Class, ClassDetail, ClassPage, CreatedClass, ErrorBody, Health, Readiness,
    RebuildReport, SearchResult, StoredExemplar, UploadedExemplar,
};
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use exemplar_core::catalogue::{CatalogueStore, ClassFilter, Metadata};
use exemplar_core::service::{ExemplarOutcome, Upload};
use exemplar_core::CropBox;
use serde_json::Value;
use utoipa::IntoParams;

/// The parts of a multipart form this API understands.
#[derive(Default)]
struct Form {
    label: Option<String>,
    metadata: Option<Metadata>,
    images: Vec<Upload>,
    k: Option<usize>,
    filters: Metadata,
    crop: Option<CropBox>,
}

async fn read_form(mut multipart: Multipart, allowed: &[&str]) -> Result<Form, ApiError> {
    let mut form = Form::default();
    let mut seen: Vec<String> = Vec::new();
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!(
                    "unknown form field `{name}`; expected: {}",
                    allowed.join(", ")
                ),
            ));
        }
        // Only `image` and `filter` may repeat; a second `label` would otherwise win silently.
        if !matches!(name.as_str(), "image" | "filter") {
            if seen.contains(&name) {
                return Err(ApiError::bad_request(
                    "repeated_field",
                    format!("the form field `{name}` may appear once"),
                ));
            }
            seen.push(name.clone());
        }
        match name.as_str() {
            "image" => {
                let file = field.file_name().map(str::to_string);
                let bytes = field.bytes().await?.to_vec();
                form.images.push(Upload::new(bytes, file));
            }
            "label" => form.label = Some(text_field(field, "label").await?),
            "metadata" => {
                form.metadata = Some(parse_metadata(&text_field(field, "metadata").await?)?)
            }
            "k" => {
                let text = text_field(field, "k").await?;
                form.k = Some(text.trim().parse().map_err(|_| {
                    ApiError::bad_request(
                        "bad_k",
                        format!("k must be a positive integer, got `{text}`"),
                    )
                })?);
            }
            "crop" => {
                let text = text_field(field, "crop").await?;
                form.crop = Some(
                    text.parse()
                        .map_err(|e: String| ApiError::bad_request("bad_crop", e))?,
                );
            }
            "filter" => {
                let (key, value) = parse_filter(&text_field(field, "filter").await?)?;
                form.filters.insert(key, value);
            }
            _ => unreachable!("checked against `allowed`"),
        }
    }
    Ok(form)
}

/// `key=value`, both non-empty (a search or listing filter on class metadata).
fn parse_filter(text: &str) -> Result<(String, String), ApiError> {
    let bad_filter = || {
        ApiError::bad_request(
            "bad_filter",
            format!("filter must be key=value with both non-empty, got `{text}`"),
        )
    };
    let (key, value) = text.split_once('=').ok_or_else(bad_filter)?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() || value.is_empty() {
        return Err(bad_filter());
    }
    Ok((key.to_string(), value.to_string()))
}

/// A text part, which must be UTF-8 (it is stored and echoed as given, never repaired).
async fn text_field(
    field: axum::extract::multipart::Field<'_>,
    name: &str,
) -> Result<String, ApiError> {
    let bytes = field.bytes().await?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::bad_request(
            "bad_text",
            format!("the form field `{name}` is not UTF-8 text"),
        )
    })
}

pub(super) fn parse_metadata(text: &str) -> Result<Metadata, ApiError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("bad_metadata", format!("metadata is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            "bad_metadata",
            "metadata must be a JSON object of strings",
        ));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(ApiError::bad_request(
                "bad_metadata",
                format!("metadata value of `{k}` must be a string, got {other}"),
            )),
        })
        .collect()
}

fn uploaded(outcomes: &[ExemplarOutcome]) -> Vec<UploadedExemplar> {
    outcomes.iter().map(UploadedExemplar::from).collect()
}

/// Add a class (an item to recognise) with its first exemplar photos. It is searchable
/// as soon as this answers.
#[utoipa::path(post, path = "/classes", tag = "classes",
    request_body(content = NewClassForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = CreatedClass),
        (status = 400, body = ErrorBody, description = "missing/empty/long label, bad metadata, no image, bad image, repeated or unknown field"),
        (status = 401, body = ErrorBody), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "not multipart/form-data"),
        (status = 503, body = ErrorBody, description = "busy: retry after the Retry-After header"),
    ),
    security((), ("api_key" = [])))]
pub async fn create_class(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<CreatedClass>), ApiError> {
    let multipart = multipart?;
    let form = read_form(multipart, &["label", "metadata", "image"]).await?;
    let label = form
        .label
        .ok_or_else(|| ApiError::bad_request("missing_label", "the `label` field is required"))?;
    let metadata = form.metadata.unwrap_or_default();
    let (class, outcomes) = state
        .catalogue
        .add_class(&label, &metadata, &form.images)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClass {
            class: Class::from(&class),
            exemplars: uploaded(&outcomes),
        }),
    ))
}

/// Add exemplar photos to a class.
#[utoipa::path(post, path = "/classes/{id}/exemplars", tag = "classes",
    params(("id" = i64, Path, description = "class id")),
    request_body(content = ImagesForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = AddedExemplars),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub async fn add_exemplars(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<AddedExemplars>), ApiError> {
    let multipart = multipart?;
    let Path(id) = id?;
    let form = read_form(multipart, &["image"]).await?;
    let outcomes = state.catalogue.add_exemplars(id, &form.images).await?;
    Ok((
        StatusCode::CREATED,
        Json(AddedExemplars {
            class_id: id,
            exemplars: uploaded(&outcomes),
        }),
    ))
}

/// `GET /classes`'s query, described for the OpenAPI document (read by [`class_query`]:
/// `filter` may repeat).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Page {
    /// Classes with an id above this one (the previous page's `next_after`; default 0).
    #[param(required = false)]
    after: i64,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500, nullable = false)]
    limit: Option<u32>,
    /// Only classes whose label contains this text (ASCII letters in either case).
    #[param(nullable = false, example = "blue")]
    q: Option<String>,
    /// Only classes whose metadata has this `key=value`; repeat it to require several.
    #[param(nullable = false, example = "format=CD")]
    filter: Option<Vec<String>>,
}

/// `after`, `limit` and the filter of a class listing.
fn class_query(pairs: Vec<(String, String)>) -> Result<(i64, u32, ClassFilter), ApiError> {
    let (mut after, mut limit, mut filter) = (0, 50, ClassFilter::default());
    fn number<T: std::str::FromStr>(
        key: &str,
        value: &str,
        kind: &'static str,
    ) -> Result<T, ApiError> {
        value.trim().parse().map_err(|_| {
            ApiError::bad_request(
                kind,
                format!("`{key}` must be a whole number, got `{value}`"),
            )
        })
    }
    for (key, value) in pairs {
        match key.as_str() {
            "after" => after = number(&key, &value, "bad_after")?,
            "limit" => limit = number(&key, &value, "bad_limit")?,
            "q" if !value.trim().is_empty() => filter.label_contains = Some(value.trim().into()),
            "q" => {}
            "filter" => {
                let (k, v) = parse_filter(&value)?;
                filter.metadata.insert(k, v);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter `{key}`; expected: after, limit, q, filter"),
                ))
            }
        }
    }
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be between 1 and 500, got {limit}"),
        ));
    }
    // No class has more metadata entries than this, so more filters could match nothing.
    let most = exemplar_core::service::Limits::default().max_metadata_entries;
    if filter.metadata.len() > most {
        return Err(ApiError::bad_request(
            "bad_filter",
            format!("at most {most} filters, got {}", filter.metadata.len()),
        ));
    }
    Ok((after, limit, filter))
}

/// Classes in id order, a page at a time, optionally only those matching a label text
/// and metadata pairs.
#[utoipa::path(get, path = "/classes", tag = "classes", params(Page),
    responses((status = 200, body = ClassPage),
        (status = 400, body = ErrorBody, description = "bad `limit`, `after` or `filter`, or an unknown parameter")))]
pub async fn list_classes(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ClassPage>, ApiError> {
    let Query(pairs) = query?;
    let (after, limit, filter) = class_query(pairs)?;
    let classes = state
        .catalogue
        .store()
        .list_classes(after, limit, &filter)
        .await
        .map_err(exemplar_core::service::ServiceError::from)?;
    let next = (classes.len() == limit as usize)
        .then(|| classes.last().map(|c| c.id))
        .flatten();
    Ok(Json(ClassPage {
        classes: classes.iter().map(Class::from).collect(),
        next_after: next,
    }))
}

/// A class with its exemplars.
#[utoipa::path(get, path = "/classes/{id}", tag = "classes",
    params(("id" = i64, Path, description = "class id")),
    responses((status = 200, body = ClassDetail), (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 404, body = ErrorBody)))]
pub async fn get_class(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ClassDetail>, ApiError> {
    let Path(id) = id?;
    let (class, exemplars) = state
        .catalogue
        .store()
        .class(id)
        .await
        .map_err(exemplar_core::service::ServiceError::from)?
        .ok_or_else(|| {
            ApiError::from(exemplar_core::service::ServiceError::NotFound(format!(
                "class {id} not found"
            )))
        })?;
    Ok(Json(ClassDetail {
        class: Class::from(&class),
        exemplars: exemplars.iter().map(StoredExemplar::from).collect(),
    }))
}

/// Rename a class and/or replace its metadata: `{"label": "...", "metadata": {...}}`,
/// either or both.
#[utoipa::path(patch, path = "/classes/{id}", tag = "classes",
    params(("id" = i64, Path, description = "class id")),
    request_body(content = ClassUpdate, content_type = "application/json"),
    responses((status = 200, body = Class), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn update_class(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Class>, ApiError> {
    let Path(id) = id?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("body is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(
            "bad_json",
            "body must be a JSON object",
        ));
    };
    let label = match fields.remove("label") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_label",
                format!("label must be a string, got {other}"),
            ))
        }
    };
    let metadata = fields
        .remove("metadata")
        .map(|m| parse_metadata(&m.to_string()))
        .transpose()?;
    if let Some(unknown) = fields.keys().next() {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field `{unknown}`; expected: label, metadata"),
        ));
    }
    if label.is_none() && metadata.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_update",
            "give `label` and/or `metadata`",
        ));
    }
    let class = state
        .catalogue
        .update_class(id, label.as_deref(), metadata.as_ref())
        .await?;
    Ok(Json(Class::from(&class)))
}

/// Delete a class and its exemplars; none of them appears in a search answer after
/// this returns.
#[utoipa::path(delete, path = "/classes/{id}", tag = "classes",
    params(("id" = i64, Path, description = "class id")),
    responses((status = 204), (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn delete_class(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    state.catalogue.delete_class(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete one exemplar photo.
#[utoipa::path(delete, path = "/exemplars/{id}", tag = "classes",
    params(("id" = i64, Path, description = "exemplar id")),
    responses((status = 204), (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn delete_exemplar(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    state.catalogue.delete_exemplar(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Recognise a photo: its nearest exemplars, the classes ranked by their evidence, and
/// a verdict (`match` or an honest `unknown`).
#[utoipa::path(post, path = "/search", tag = "search",
    request_body(content = SearchForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = SearchResult),
        (status = 400, body = ErrorBody, description = "no/bad image, bad k, bad filter, bad crop"),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "not multipart/form-data"), (status = 503, body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SearchResult>, ApiError> {
    let multipart = multipart?;
    let form = read_form(multipart, &["image", "k", "filter", "crop"]).await?;
    let [mut image] = <[Upload; 1]>::try_from(form.images).map_err(|images| {
        ApiError::bad_request(
            "image_count",
            format!("exactly one `image` part is required, got {}", images.len()),
        )
    })?;
    image.crop = form.crop;
    let (answer, unknown_id) = state
        .catalogue
        .search_keeping_unknown(&image, form.k.unwrap_or(10), &form.filters)
        .await?;
    crate::http::metrics::record_search_stages(&answer.timings);
    let mut result = SearchResult::from(&answer);
    result.unknown_id = unknown_id;
    Ok(Json(result))
}

/// Refit the projection on the catalogue now and swap in the re-projected index;
/// searches keep being answered meanwhile. Refits also happen by themselves as the
/// catalogue grows (see `--refit-min-exemplars`).
#[utoipa::path(post, path = "/admin/refit", tag = "operations",
    responses((status = 200, body = RebuildReport),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "too few exemplars to fit on"),
        (status = 503, body = ErrorBody, description = "a rebuild is already running")),
    security((), ("api_key" = [])))]
pub async fn refit(State(state): State<AppState>) -> Result<Json<RebuildReport>, ApiError> {
    let rebuilt = state.catalogue.refit_now().await?;
    Ok(Json(RebuildReport::from(&rebuilt)))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready to answer: the server only starts listening once the model and index are loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Json<Readiness> {
    let versions = state.catalogue.versions();
    Json(Readiness {
        status: "ready".into(),
        indexed: state.catalogue.indexed(),
        model: versions.model,
        projection: versions.projection,
        vocabulary: versions.vocabulary,
        keeps_photos: versions.keeps_photos,
        replica: state.following.as_ref().map(|f| f.lag()),
    })
}
