//! Request handlers: parse, call the catalogue service, shape the JSON answer.

use super::{ApiError, AppState};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use exemplar_core::catalogue::{CatalogueStore, ClassRecord, Metadata};
use exemplar_core::service::{ExemplarOutcome, SearchAnswer, Upload, Verdict};
use serde::Deserialize;
use serde_json::{json, Value};

/// The parts of a multipart form this API understands.
#[derive(Default)]
struct Form {
    label: Option<String>,
    metadata: Option<Metadata>,
    images: Vec<Upload>,
    k: Option<usize>,
    filters: Metadata,
}

async fn read_form(mut multipart: Multipart, allowed: &[&str]) -> Result<Form, ApiError> {
    let mut form = Form::default();
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
        match name.as_str() {
            "image" => {
                let file = field.file_name().map(str::to_string);
                let bytes = field.bytes().await?.to_vec();
                form.images.push(Upload { bytes, name: file });
            }
            "label" => form.label = Some(field.text().await?),
            "metadata" => form.metadata = Some(parse_metadata(&field.text().await?)?),
            "k" => {
                let text = field.text().await?;
                form.k = Some(text.trim().parse().map_err(|_| {
                    ApiError::bad_request(
                        "bad_k",
                        format!("k must be a positive integer, got `{text}`"),
                    )
                })?);
            }
            "filter" => {
                let text = field.text().await?;
                let (key, value) = text.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_filter",
                        format!("filter must be key=value, got `{text}`"),
                    )
                })?;
                form.filters
                    .insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => unreachable!("checked against `allowed`"),
        }
    }
    Ok(form)
}

fn parse_metadata(text: &str) -> Result<Metadata, ApiError> {
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

fn class_json(class: &ClassRecord) -> Value {
    json!({
        "id": class.id,
        "label": class.label,
        "metadata": class.metadata,
        "exemplar_count": class.exemplars,
        "created_at_ms": class.created_at_ms,
        "updated_at_ms": class.updated_at_ms,
    })
}

fn outcomes_json(outcomes: &[ExemplarOutcome]) -> Value {
    outcomes
        .iter()
        .map(|o| json!({"id": o.id, "name": o.name, "duplicate": o.duplicate}))
        .collect()
}

pub async fn create_class(
    State(state): State<AppState>,
    multipart: Multipart,
) -> Result<impl IntoResponse, ApiError> {
    let form = read_form(multipart, &["label", "metadata", "image"]).await?;
    let label = form
        .label
        .ok_or_else(|| ApiError::bad_request("missing_label", "the `label` field is required"))?;
    let metadata = form.metadata.unwrap_or_default();
    let (class, outcomes) = state
        .catalogue
        .add_class(&label, &metadata, &form.images)
        .await?;
    let mut body = class_json(&class);
    body["exemplars"] = outcomes_json(&outcomes);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn add_exemplars(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    multipart: Multipart,
) -> Result<impl IntoResponse, ApiError> {
    let form = read_form(multipart, &["image"]).await?;
    let outcomes = state.catalogue.add_exemplars(id, &form.images).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"class_id": id, "exemplars": outcomes_json(&outcomes)})),
    ))
}

#[derive(Deserialize)]
pub struct Page {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

pub async fn list_classes(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let classes = state
        .catalogue
        .store()
        .list_classes(page.after, limit)
        .await
        .map_err(exemplar_core::service::ServiceError::from)?;
    let next = (classes.len() == limit as usize)
        .then(|| classes.last().map(|c| c.id))
        .flatten();
    Ok(Json(json!({
        "classes": classes.iter().map(class_json).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

pub async fn get_class(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
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
    let mut body = class_json(&class);
    body["exemplars"] = exemplars
        .iter()
        .map(|e| json!({"id": e.id, "name": e.original_name, "sha256": e.sha256, "model": e.model, "projection": e.projection, "created_at_ms": e.created_at_ms}))
        .collect();
    Ok(Json(body))
}

/// `{"label": "...", "metadata": {...}}`, either or both.
pub async fn update_class(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(class_json(&class)))
}

pub async fn delete_class(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    state.catalogue.delete_class(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_exemplar(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    state.catalogue.delete_exemplar(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn search(
    State(state): State<AppState>,
    multipart: Multipart,
) -> Result<Json<Value>, ApiError> {
    let form = read_form(multipart, &["image", "k", "filter"]).await?;
    let [image] = <[Upload; 1]>::try_from(form.images).map_err(|images| {
        ApiError::bad_request(
            "image_count",
            format!("exactly one `image` part is required, got {}", images.len()),
        )
    })?;
    let answer = state
        .catalogue
        .search(&image, form.k.unwrap_or(10), &form.filters)
        .await?;
    Ok(Json(search_json(&answer)))
}

fn search_json(answer: &SearchAnswer) -> Value {
    let verdict = match &answer.verdict {
        Verdict::Match {
            class_id,
            label,
            score,
            margin,
        } => {
            json!({"status": "match", "class_id": class_id, "label": label, "score": score, "margin": margin})
        }
        Verdict::Unknown { best_score, margin } => {
            json!({"status": "unknown", "best_score": best_score, "margin": margin})
        }
    };
    json!({
        "neighbours": answer.neighbours.iter().map(|n| json!({"exemplar_id": n.exemplar_id, "class_id": n.class_id, "label": n.label, "score": n.score})).collect::<Vec<_>>(),
        "classes": answer.classes.iter().map(|c| json!({"class_id": c.class_id, "label": c.label, "metadata": c.metadata, "score": c.score, "support": c.support})).collect::<Vec<_>>(),
        "verdict": verdict,
    })
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The server only starts listening once the model and index are loaded.
pub async fn readyz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ready", "indexed": state.catalogue.indexed()}))
}
