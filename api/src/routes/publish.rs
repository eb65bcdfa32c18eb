//! `POST /publish` and `POST /retry`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, RawBody};
use crate::AppState;
use outrider_engine::publish::PublishInputError;

pub async fn publish(p: Principal, State(s): State<AppState>, RawBody(body): RawBody) -> ApiResult<impl IntoResponse> {
    p.require_admin()?;
    let started = std::time::Instant::now();
    let event = outrider_engine::publish::parse(&body, &s.engine.config, &s.engine.ids).map_err(|e| match e {
        PublishInputError::InvalidJson => ApiError::invalid_json(),
        PublishInputError::Invalid(list) => ApiError::Validation(list),
    })?;
    // No task of its own: `publish` sends every shard message before its
    // first await, so a client that goes away cannot cut a hand-off short.
    let out = s.engine.publish(event).await?;
    s.engine.publish_latency.observe(started.elapsed());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": out.id, "duplicate": out.duplicate, "destination_ids": out.destination_ids})),
    ))
}

#[derive(Deserialize)]
pub struct RetryBody {
    event_id: Option<String>,
    destination_id: Option<String>,
}

pub async fn retry(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(b): JsonBody<RetryBody>,
) -> ApiResult<impl IntoResponse> {
    let mut missing = Vec::new();
    let event_id = b.event_id.filter(|v| !v.is_empty());
    let destination_id = b.destination_id.filter(|v| !v.is_empty());
    if event_id.is_none() {
        missing.push("event_id is required".to_string());
    }
    if destination_id.is_none() {
        missing.push("destination_id is required".to_string());
    }
    let (Some(event_id), Some(destination_id)) = (event_id, destination_id) else {
        return Err(ApiError::Validation(missing));
    };
    let engine = s.engine.clone();
    let scope = p.scope().map(String::from);
    tokio::spawn(async move { engine.retry(scope.as_deref(), &event_id, &destination_id).await })
        .await
        .map_err(|e| ApiError::Internal(format!("retry task failed: {e}")))??;
    Ok((StatusCode::ACCEPTED, Json(json!({"success": true}))))
}
