//! An exemplar's kept photo and thumbnail. Both are named by the photo's sha256 and never
//! change, so they carry it as a strong `ETag` and may be cached for a year; a client that
//! sends `If-None-Match` with it gets `304 Not Modified`.

use super::{ApiError, AppState};
use crate::dto::ErrorBody;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use exemplar_core::catalogue::CatalogueStore;

#[derive(Clone, Copy)]
enum Rendition {
    Photo,
    Thumbnail,
}

/// The photo as it was sent.
#[utoipa::path(get, path = "/exemplars/{id}/photo", tag = "classes",
    params(("id" = i64, Path, description = "exemplar id")),
    responses((status = 200, description = "the bytes as sent, with their image type", content_type = "image/*"),
        (status = 304, description = "`If-None-Match` holds the current ETag"),
        (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such exemplar, or its photo is not kept (features only)")),
    security((), ("api_key" = [])))]
pub async fn photo(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(state, id, headers, Rendition::Photo).await
}

/// A JPEG thumbnail, the longest side at most 256 px.
#[utoipa::path(get, path = "/exemplars/{id}/thumbnail", tag = "classes",
    params(("id" = i64, Path, description = "exemplar id")),
    responses((status = 200, description = "JPEG", content_type = "image/jpeg"),
        (status = 304, description = "`If-None-Match` holds the current ETag"),
        (status = 400, body = ErrorBody, description = "the id is not an integer"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such exemplar, or its photo is not kept (features only)")),
    security((), ("api_key" = [])))]
pub async fn thumbnail(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(state, id, headers, Rendition::Thumbnail).await
}

fn not_found(message: String) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        message,
    }
}

async fn serve(
    state: AppState,
    id: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    rendition: Rendition,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let exemplar = state
        .catalogue
        .store()
        .exemplar(id)
        .await
        .map_err(exemplar_core::service::ServiceError::from)?
        .ok_or_else(|| not_found(format!("exemplar {id} not found")))?;
    if !exemplar.photo_kept {
        return Err(not_found(format!(
            "exemplar {id} has no kept photo: it was added with features only"
        )));
    }
    let etag = format!(
        "\"{}{}\"",
        exemplar.sha256,
        match rendition {
            Rendition::Photo => "",
            Rendition::Thumbnail => "-thumb",
        }
    );
    // Reads may need the key (`--protect-reads`): then only the browser may cache it.
    let cache = if state.protect_reads {
        "private, max-age=31536000, immutable"
    } else {
        "public, max-age=31536000, immutable"
    };
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let photos = state.photos.clone();
        let hash = exemplar.sha256.clone();
        let bytes = tokio::task::spawn_blocking(move || match rendition {
            Rendition::Photo => photos.photo(&hash),
            Rendition::Thumbnail => photos.thumbnail(&hash),
        })
        .await
        .map_err(|e| ApiError::internal(format!("reading the photo: {e}")))?
        .map_err(|e| ApiError::internal(format!("reading the photo: {e}")))?
        .ok_or_else(|| {
            tracing::error!(exemplar = id, sha256 = %exemplar.sha256, "a kept photo is missing from the photo store");
            not_found(format!("exemplar {id}'s photo is missing from the photo store"))
        })?;
        let kind = match rendition {
            Rendition::Photo => image_type(&bytes),
            Rendition::Thumbnail => "image/jpeg",
        };
        ([(header::CONTENT_TYPE, kind)], bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex in quotes"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

/// The media type of an image the service accepted, from its first bytes.
pub(super) fn image_type(bytes: &[u8]) -> &'static str {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'B', b'M', ..] => "image/bmp",
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => "image/tiff",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::image_type;

    #[test]
    fn image_types_are_told_from_their_first_bytes() {
        assert_eq!(image_type(&[0xFF, 0xD8, 0xFF, 0xE0]), "image/jpeg");
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n"), "image/png");
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(image_type(b"GIF89a"), "image/gif");
        assert_eq!(image_type(b"MM\0\x2a"), "image/tiff");
        assert_eq!(image_type(b"?"), "application/octet-stream");
    }
}
