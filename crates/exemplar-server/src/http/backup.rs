//! `POST /admin/backup`: a backup written by the server into its backup folder
//! (`--backup-dir`), while it goes on serving.

use super::{ApiError, AppState};
use crate::backup::{write_backup, Manifest};
use crate::dto::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The new backup's folder name in the server's backup folder: letters, digits, `.`,
    /// `_` and `-`, starting with a letter or digit, at most 100 characters.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", example = "2026-12-07")]
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackupMade {
    /// Where it was written, on the server's machine (restore with `exemplar restore`).
    pub path: String,
    #[serde(flatten)]
    pub manifest: Manifest,
}

fn is_backup_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Write a backup (the catalogue at one instant and the photos it refers to, with a
/// manifest) into a new folder in the server's backup folder; searches and writes go on
/// meanwhile. Restore it with `exemplar restore`.
#[utoipa::path(post, path = "/admin/backup", tag = "operations",
    request_body = BackupRequest,
    responses((status = 201, body = BackupMade),
        (status = 400, body = ErrorBody, description = "not JSON, or not a folder name"),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a backup of that name exists")),
    security((), ("api_key" = [])))]
pub async fn backup(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BackupMade>), ApiError> {
    let request: BackupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("body must be {{\"name\": \"folder-name\"}}: {e}"),
        )
    })?;
    if !is_backup_name(&request.name) {
        return Err(ApiError::bad_request(
            "bad_name",
            format!(
                "`{}` is not a backup name: letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 100 characters",
                request.name
            ),
        ));
    }
    std::fs::create_dir_all(&state.backup_dir).map_err(|e| {
        ApiError::internal(format!(
            "creating the backup folder {}: {e}",
            state.backup_dir.display()
        ))
    })?;
    let out = state.backup_dir.join(&request.name);
    if out.exists() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "exists",
            message: format!("a backup named `{}` exists", request.name),
        });
    }
    let Some(store) = state.catalogue.store().as_sqlite() else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "not_sqlite",
            message: "this server's catalogue is in PostgreSQL: back it up with pg_dump (and \
                      copy the photos folder)"
                .into(),
        });
    };
    let manifest = write_backup(store, state.photos.clone(), &out)
        .await
        .map_err(|e| ApiError::internal(format!("writing the backup: {e:#}")))?;
    Ok((
        StatusCode::CREATED,
        Json(BackupMade {
            path: out.display().to_string(),
            manifest,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::is_backup_name;

    #[test]
    fn backup_names_stay_in_the_backup_folder() {
        for good in ["2026-12-07", "nightly_1.v2", "a"] {
            assert!(is_backup_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "/abs",
            "a b",
            &"x".repeat(101),
        ] {
            assert!(!is_backup_name(bad), "{bad}");
        }
    }
}
