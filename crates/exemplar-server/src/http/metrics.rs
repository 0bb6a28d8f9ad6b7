//! Telemetry of the HTTP service: a tracing span per request, and Prometheus metrics at
//! `/metrics` (requests by route and status, their latency, model time, index size).

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use exemplar_core::service::{ReindexState, StageTimings, Versions};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::Instrument;

use super::AppState;

/// Request latency buckets, seconds: a search takes tens of milliseconds, a large
/// upload can take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder (the `metrics` facade allows one per process).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .install_recorder()
            .expect("one metrics recorder per process")
    })
}

/// Wraps each request in a `request` span (method, route, id) and counts it.
pub async fn track_requests(request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let method = request.method().as_str().to_owned();
    // The route template (`/classes/{id}`), never the raw path: bounded label values.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", id, %method, %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    span.in_scope(|| {
        tracing::info!(status = %status, ms = (seconds * 1000.0) as u64, "answered");
    });
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("exemplar_http_requests_total", &labels).increment(1);
    metrics::histogram!("exemplar_http_request_duration_seconds", &labels).record(seconds);
    response
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, body = crate::dto::ErrorBody, description = "with --protect-reads")))]
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("exemplar_index_exemplars").set(state.catalogue.indexed() as f64);
    let reindex = state.catalogue.reindex_status();
    let building = matches!(
        reindex.state,
        ReindexState::Building | ReindexState::Switching
    );
    metrics::gauge!("exemplar_reindex_building").set(if building { 1.0 } else { 0.0 });
    metrics::gauge!("exemplar_reindex_done").set(reindex.done as f64);
    metrics::gauge!("exemplar_reindex_total").set(reindex.total as f64);
    show_versions(state.catalogue.versions());
    if let Some(following) = &state.following {
        let lag = following.lag();
        metrics::gauge!("exemplar_replica_lag_seconds").set(lag.lag_ms as f64 / 1000.0);
        metrics::gauge!("exemplar_replica_applied_change").set(lag.applied as f64);
        metrics::gauge!("exemplar_replica_database_lost")
            .set(f64::from(u8::from(lag.database_lost)));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

/// `exemplar_search_space_info{model, projection, vocabulary} 1` for what searches use
/// now; the series of versions no longer in use drop to 0.
fn show_versions(now: Versions) {
    static SHOWN: std::sync::Mutex<Option<Versions>> = std::sync::Mutex::new(None);
    let labels = |v: &Versions| {
        [
            ("model", v.model.clone()),
            ("projection", v.projection.clone()),
            (
                "vocabulary",
                v.vocabulary.clone().unwrap_or_else(|| "none".into()),
            ),
        ]
    };
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = shown.as_ref().filter(|old| **old != now) {
        metrics::gauge!("exemplar_search_space_info", &labels(old)).set(0.0);
    }
    metrics::gauge!("exemplar_search_space_info", &labels(&now)).set(1.0);
    *shown = Some(now);
}

/// Per-stage time of one search: `exemplar_search_stage_seconds{stage=...}`.
pub fn record_search_stages(timings: &StageTimings) {
    for (stage, ms) in [
        ("embed", timings.embed_ms),
        ("shortlist", timings.shortlist_ms),
        ("verify", timings.verify_ms),
    ] {
        metrics::histogram!("exemplar_search_stage_seconds", "stage" => stage).record(ms / 1000.0);
    }
}
