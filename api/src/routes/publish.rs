//! `POST /publish` and `POST /retry`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, RawBody};
use crate::AppState;
use outrider_engine::model::{Event, StringMap};
use outrider_engine::timefmt::{now_ms, parse_rfc3339_ms};

#[derive(Deserialize)]
struct PublishBody {
    id: Option<String>,
    tenant_id: Option<String>,
    destination_id: Option<String>,
    topic: Option<String>,
    eligible_for_retry: Option<bool>,
    time: Option<String>,
    metadata: Option<StringMap>,
    data: Option<Box<RawValue>>,
}

pub async fn publish(p: Principal, State(s): State<AppState>, RawBody(body): RawBody) -> ApiResult<impl IntoResponse> {
    p.require_admin()?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_json());
    }
    let b: PublishBody = serde_json::from_slice(&body).map_err(|_| ApiError::invalid_json())?;
    let mut missing = Vec::new();
    let tenant_id = b.tenant_id.filter(|t| !t.is_empty());
    if tenant_id.is_none() {
        missing.push("tenant_id is required".to_string());
    }
    match &b.data {
        None => missing.push("data is required".into()),
        Some(d) if d.get() == "null" => missing.push("data is required".into()),
        Some(d) if !d.get().starts_with('{') => missing.push("data must be a valid JSON object".into()),
        _ => {}
    }
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    let cfg = &s.engine.config;
    let topic = b.topic.unwrap_or_default();
    if !cfg.topics.is_empty() {
        if topic.is_empty() {
            return Err(ApiError::Validation(vec!["topic is required".into()]));
        }
        if topic != "*" && !cfg.topics.contains(&topic) {
            return Err(ApiError::Validation(vec!["topic is invalid".into()]));
        }
    }
    let time = match b.time.as_deref() {
        None | Some("") => now_ms(),
        Some(t) => parse_rfc3339_ms(t)
            .ok_or_else(|| ApiError::Validation(vec!["time must be an RFC 3339 date-time".into()]))?,
    };
    let data = b
        .data
        .map(|d| outrider_engine::json::compact(d.get()))
        .unwrap_or_default();
    let event = Event {
        id: b
            .id
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| s.engine.ids.generate(&cfg.event_id_prefix)),
        tenant_id: tenant_id.unwrap_or_default(),
        destination_id: b.destination_id.filter(|d| !d.is_empty()),
        topic,
        eligible_for_retry: b.eligible_for_retry.unwrap_or(true),
        time,
        metadata: b.metadata.unwrap_or_default(),
        data: Arc::from(data),
        matched_destination_ids: vec![],
    };
    // Run in its own task: once the event is durable, the hand-off to the
    // shards must finish even if this client disconnects.
    let engine = s.engine.clone();
    let out = tokio::spawn(async move { engine.publish(event).await })
        .await
        .map_err(|e| ApiError::Internal(format!("publish task failed: {e}")))??;
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
