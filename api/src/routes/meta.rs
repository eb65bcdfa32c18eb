//! Health, topics, destination types, and the JSON 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Every part of the node from its real state; 503 when one has failed
/// (the body names it). See `outrider_engine::engine::health`.
pub async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    use outrider_engine::engine::health::Status;
    let health = s.engine.health().await;
    let mut workers = serde_json::Map::new();
    workers.insert("http-server".into(), json!({"status": "healthy"}));
    for (name, v) in health.parts {
        workers.insert(name.into(), v);
    }
    let code = if health.status == Status::Failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(json!({
            "status": health.status.word(),
            "timestamp": outrider_engine::timefmt::format_ms(outrider_engine::timefmt::now_ms()),
            "workers": workers,
        })),
    )
}

pub async fn topics(_p: Principal, State(s): State<AppState>) -> Json<Vec<String>> {
    Json(s.engine.config.topics.clone())
}

pub async fn destination_types(_p: Principal, State(s): State<AppState>) -> Json<Vec<Value>> {
    Json(s.engine.types.all().map(|t| s.engine.types.metadata(t)).collect())
}

pub async fn destination_type(
    _p: Principal,
    State(s): State<AppState>,
    Path(kind): Path<String>,
) -> ApiResult<Json<Value>> {
    s.engine
        .types
        .get(&kind)
        .map(|t| Json(s.engine.types.metadata(t)))
        .ok_or(ApiError::Bare(StatusCode::NOT_FOUND))
}

/// The node's counters in Prometheus' text format. Public like `/healthz`:
/// no tenant or destination appears in it.
pub async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.engine.prometheus_text(),
    )
}

/// Our OpenAPI document (see `crate::openapi`). Public: it describes the
/// API, not any tenant's data.
pub async fn openapi(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        (*s.openapi).clone(),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not found")
}
