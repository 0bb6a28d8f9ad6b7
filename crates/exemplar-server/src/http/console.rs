//! The web console: one page and its script and style, embedded in the binary (no build
//! step, no CDN). It talks to the same HTTP API as any client.

use super::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/icon.svg");

/// Scripts, styles and connections from this origin only; photos may also be the
/// browser's own `blob:` URLs (the photo being searched).
const POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'none'";

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = response.headers_mut();
    // The assets change with the binary: revalidate rather than cache across upgrades.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /`: the console's page.
pub async fn page() -> Response {
    let mut response = asset_response("text/html; charset=utf-8", PAGE);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /console/{asset}`: the script, the style sheet and the icon.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "console.js" => Ok(asset_response("text/javascript; charset=utf-8", SCRIPT)),
        "console.css" => Ok(asset_response("text/css; charset=utf-8", STYLE)),
        "icon.svg" => Ok(asset_response("image/svg+xml", ICON)),
        _ => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: format!("no console asset `{name}`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_only_assets_the_server_has() {
        for name in ["console.js", "console.css", "icon.svg"] {
            assert!(
                super::PAGE.contains(&format!("/console/{name}")),
                "the page loads {name}"
            );
        }
        // Nothing from elsewhere (the SVG namespace is a name, not a download).
        for asset in [super::PAGE, super::SCRIPT, super::STYLE, super::ICON] {
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
    }
}
