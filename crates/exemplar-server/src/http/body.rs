//! Request bodies are read whole, within a size limit and a deadline, before a handler
//! sees them: a client that sends its body slowly (or stops) is answered 408 and
//! disconnected instead of holding a connection and a handler open forever, and an
//! oversized body is refused as it arrives, whatever the route.

use super::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// From the end of the headers to the last byte of the body.
    pub timeout: Duration,
}

pub async fn read_whole_body(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(ApiError::body_too_large(limits.max_bytes));
    }
    let read = Limited::new(body, limits.max_bytes).collect();
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => return Err(ApiError::body_timeout(limits.timeout)),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Err(ApiError::body_too_large(limits.max_bytes))
        }
        Ok(Err(e)) => {
            return Err(ApiError::bad_request(
                "bad_body",
                format!("the request body could not be read: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}
