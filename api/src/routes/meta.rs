//! Health, topics, destination types, and the JSON 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let mut workers = serde_json::Map::new();
    workers.insert("http-server".into(), json!({"status": "healthy"}));
    // Shards are threads: one that stopped (a journal it could not write,
    // say) makes the node unhealthy, and says so.
    let (total, running) = (s.engine.shard_count(), s.engine.shards_running());
    let shards_ok = running == total;
    workers.insert(
        "delivery-shards".into(),
        json!({
            "status": if shards_ok { "healthy" } else { "failed" },
            "shards": total,
            "running": running,
            "pending_deliveries": s.engine.pending_deliveries(),
        }),
    );
    // The index follower: if it stopped, queries go stale and journal
    // segments are never collected (disk grows), so it counts as failed.
    let index_ok = s.engine.index_running();
    workers.insert(
        "journal-index".into(),
        json!({"status": if index_ok { "healthy" } else { "failed" }}),
    );
    // The log pipeline (with POSTGRES_URL): a store that is down only
    // delays shipping (records wait on disk), so it is reported, not fatal;
    // a stopped task ships nothing again and is.
    let mut pipeline_ok = true;
    if let Some(running) = s.engine.log_pipeline_running() {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &s.engine.log_stats;
        pipeline_ok = running;
        let status = match (running, st.failing.load(Relaxed)) {
            (false, _) => "failed",
            (true, true) => "degraded",
            (true, false) => "healthy",
        };
        workers.insert(
            "log-pipeline".into(),
            json!({
                "status": status,
                "shipped": st.shipped.load(Relaxed),
                "quarantined": st.quarantined.load(Relaxed),
            }),
        );
    }
    let shards_ok = shards_ok && index_ok && pipeline_ok;
    if let Some(o) = &s.engine.opevents {
        use std::sync::atomic::Ordering::Relaxed;
        // Best-effort events dropped (queue full or 3 failed tries) are visible here, not only in logs.
        workers.insert(
            "operator-events".into(),
            json!({
                "status": "healthy",
                "sent": o.stats.sent.load(Relaxed),
                "dropped": o.stats.dropped.load(Relaxed),
                "failed_sends": o.stats.failed_sends.load(Relaxed),
            }),
        );
    }
    let status = if shards_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if shards_ok { "healthy" } else { "failed" },
            "timestamp": outrider_engine::timefmt::format_ms(outrider_engine::timefmt::now_ms()),
            "workers": workers,
        })),
    )
}

pub async fn topics(_p: Principal, State(s): State<AppState>) -> Json<Vec<String>> {
    Json(s.engine.config.topics.clone())
}

pub async fn destination_types(_p: Principal, State(s): State<AppState>) -> Json<Vec<Value>> {
    Json(s.engine.types.all().map(|t| t.metadata()).collect())
}

pub async fn destination_type(
    _p: Principal,
    State(s): State<AppState>,
    Path(kind): Path<String>,
) -> ApiResult<Json<Value>> {
    s.engine
        .types
        .get(&kind)
        .map(|t| Json(t.metadata()))
        .ok_or(ApiError::Bare(StatusCode::NOT_FOUND))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not found")
}
