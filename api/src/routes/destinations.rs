//! `/tenants/{tenant_id}/destinations`: create, list, read, merge-patch,
//! delete, enable and disable.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::{tenant_access, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Query};
use crate::views::{self, DestinationJson};
use crate::AppState;
use outrider_engine::destinations::{Actor, RawInput};
use outrider_engine::model::{Destination, StringMap};
use outrider_engine::timefmt::{now_ms, parse_rfc3339_ms};
use outrider_engine::{filter, topics};

fn actor(p: &Principal) -> Actor {
    match p {
        Principal::Admin => Actor::Admin,
        Principal::Tenant(_) => Actor::Tenant,
    }
}

/// Map values that are not strings are coerced: numbers and booleans to their
/// text, `null` to `""`, objects and arrays to JSON text.
fn coerce(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn string_map(v: Option<&Value>) -> ApiResult<Option<StringMap>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.iter().map(|(k, v)| (k.clone(), coerce(v))).collect())),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

/// The size limits of a destination's tenant-set maps (see
/// `outrider_engine::publish::metadata_limits`).
fn check_maps(d: &Destination) -> ApiResult<()> {
    let mut problems = Vec::new();
    for (field, map) in [("delivery_metadata", &d.delivery_metadata), ("metadata", &d.metadata)] {
        if let Some(m) = map {
            problems.extend(outrider_engine::publish::metadata_limits(field, m));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(problems))
    }
}

/// RFC 7396-style patch of a string map: `null` clears, a `null` key deletes,
/// values set. An empty result is `None`.
fn merge_map(current: Option<&StringMap>, patch: Option<&Value>) -> ApiResult<Option<StringMap>> {
    let mut out = current.cloned().unwrap_or_default();
    match patch {
        None => return Ok(current.cloned().filter(|m| !m.is_empty())),
        Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if v.is_null() {
                    out.remove(k);
                } else {
                    out.insert(k.clone(), coerce(v));
                }
            }
        }
        Some(_) => return Err(ApiError::invalid_json()),
    }
    Ok(Some(out).filter(|m| !m.is_empty()))
}

fn parse_topics(v: &Value) -> ApiResult<Vec<String>> {
    let invalid = || ApiError::unprocessable("validation failed: invalid topics format");
    match v {
        Value::String(s) if s == "*" => Ok(vec!["*".into()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(String::from).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

fn checked_topics(s: &AppState, v: &Value) -> ApiResult<Vec<String>> {
    let t = parse_topics(v)?;
    let cfg = &s.engine.config;
    topics::validate(&t, &cfg.topics, cfg.topics_allow_wildcards)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    Ok(topics::normalize(&t))
}

fn parse_filter(v: Option<&Value>) -> ApiResult<Option<Value>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(f @ Value::Object(_)) => {
            filter::validate(f).map_err(|e| ApiError::Validation(vec![format!("filter is invalid: {e}")]))?;
            Ok(Some(f.clone()))
        }
        Some(_) => Err(ApiError::invalid_json()),
    }
}

/// A timestamp field: RFC 3339 and not in the future.
fn past_time(v: Option<&Value>, field: &str, now: i64) -> ApiResult<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = parse_rfc3339_ms(s).ok_or_else(ApiError::invalid_json)?;
            if t > now {
                return Err(ApiError::unprocessable(format!("{field} cannot be in the future")));
            }
            Ok(Some(t))
        }
        Some(_) => Err(ApiError::invalid_json()),
    }
}

fn display(s: &AppState, d: &Destination) -> DestinationJson {
    views::destination(&s.engine.types, d)
}

pub async fn list(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<DestinationJson>>> {
    tenant_access(&p, &s, &tenant_id)?;
    let q = Query::parse(raw.as_deref());
    let types = q.array("type");
    let want_topics = q.array("topics");
    let dests = s.engine.destinations(&tenant_id).unwrap_or_default();
    Ok(Json(
        dests
            .iter()
            .filter(|d| types.is_empty() || types.contains(&d.kind))
            .filter(|d| {
                if want_topics.is_empty() {
                    return true;
                }
                let all = d.topics.iter().any(|t| t == "*");
                if want_topics.iter().any(|t| t == "*") {
                    return all;
                }
                all || want_topics.iter().all(|t| topics::matches(&d.topics, t))
            })
            .map(|d| display(&s, d))
            .collect(),
    ))
}

pub async fn create(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<impl IntoResponse> {
    tenant_access(&p, &s, &tenant_id)?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid_json());
    };
    let now = now_ms();
    let mut missing = Vec::new();
    let kind = match body.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            missing.push("type is required".to_string());
            String::new()
        }
        Some(_) => return Err(ApiError::invalid_json()),
    };
    let topics_value = match body.get("topics") {
        None | Some(Value::Null) => {
            missing.push("topics is required".to_string());
            None
        }
        Some(v) => Some(v),
    };
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    if p != Principal::Admin && (body.contains_key("created_at") || body.contains_key("updated_at")) {
        return Err(ApiError::Message(
            StatusCode::FORBIDDEN,
            "created_at and updated_at can only be set with API key authentication".into(),
        ));
    }
    let topics = checked_topics(&s, topics_value.unwrap_or(&Value::Null))?;
    let adapter = s
        .engine
        .types
        .get(&kind)
        .ok_or_else(|| ApiError::unprocessable(format!("no provider registered for destination type: {kind}")))?;
    let id = match body.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.trim().to_string()).filter(|s| !s.is_empty()),
        Some(_) => return Err(ApiError::invalid_json()),
    }
    .unwrap_or_else(|| s.engine.ids.generate(&s.engine.config.destination_id_prefix));
    if let Some(problem) = outrider_engine::ids::id_problem("id", &id) {
        return Err(ApiError::Validation(vec![problem]));
    }
    let created_at = past_time(body.get("created_at"), "created_at", now)?.unwrap_or(now);
    let updated_at = past_time(body.get("updated_at"), "updated_at", now)?.unwrap_or(created_at);
    let mut dest = Destination {
        id,
        tenant_id: tenant_id.clone(),
        kind,
        topics,
        filter: parse_filter(body.get("filter"))?,
        config: string_map(body.get("config"))?.unwrap_or_default(),
        credentials: string_map(body.get("credentials"))?.unwrap_or_default(),
        delivery_metadata: string_map(body.get("delivery_metadata"))?.filter(|m| !m.is_empty()),
        metadata: string_map(body.get("metadata"))?.filter(|m| !m.is_empty()),
        created_at,
        updated_at,
        disabled_at: past_time(body.get("disabled_at"), "disabled_at", now)?,
    };
    check_maps(&dest)?;
    let raw = RawInput {
        credentials: body.get("credentials").and_then(Value::as_object).cloned(),
    };
    adapter.validate(&dest).map_err(ApiError::Validation)?;
    adapter
        .preprocess(&mut dest, None, &raw, actor(&p), now)
        .map_err(ApiError::Validation)?;
    adapter.verify(&mut dest, None).await.map_err(ApiError::Validation)?;
    let d = s.engine.create_destination(dest).await?;
    Ok((StatusCode::CREATED, Json(display(&s, &d))))
}

fn lookup(s: &AppState, p: &Principal, tenant_id: &str, id: &str) -> ApiResult<std::sync::Arc<Destination>> {
    tenant_access(p, s, tenant_id)?;
    s.engine
        .destination(tenant_id, id)
        .ok_or(ApiError::Bare(StatusCode::NOT_FOUND))
}

pub async fn get_one(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> ApiResult<Json<DestinationJson>> {
    let d = lookup(&s, &p, &tenant_id, &id)?;
    Ok(Json(display(&s, &d)))
}

pub async fn update(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<DestinationJson>> {
    let current = lookup(&s, &p, &tenant_id, &id)?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid_json());
    };
    let now = now_ms();
    if let Some(t) = body.get("type").filter(|v| !v.is_null()) {
        if t.as_str() != Some(current.kind.as_str()) {
            return Err(ApiError::unprocessable("type cannot be updated"));
        }
    }
    if p != Principal::Admin && (body.contains_key("created_at") || body.contains_key("updated_at")) {
        return Err(ApiError::Message(
            StatusCode::FORBIDDEN,
            "created_at and updated_at can only be set with API key authentication".into(),
        ));
    }
    let mut next: Destination = (*current).clone();
    if let Some(t) = body.get("topics") {
        next.topics = checked_topics(&s, t)?;
    }
    next.config = merge_map(Some(&current.config), body.get("config"))?.unwrap_or_default();
    next.credentials = merge_map(Some(&current.credentials), body.get("credentials"))?.unwrap_or_default();
    next.delivery_metadata = merge_map(current.delivery_metadata.as_ref(), body.get("delivery_metadata"))?;
    next.metadata = merge_map(current.metadata.as_ref(), body.get("metadata"))?;
    if body.contains_key("filter") {
        next.filter = parse_filter(body.get("filter"))?;
    }
    if let Some(v) = body.get("disabled_at") {
        next.disabled_at = past_time(Some(v), "disabled_at", now)?;
    }
    if body.contains_key("created_at") {
        next.created_at = past_time(body.get("created_at"), "created_at", now)?.unwrap_or(current.created_at);
    }
    next.updated_at = now;
    check_maps(&next)?;
    let adapter = s.engine.types.get(&next.kind).ok_or_else(|| {
        ApiError::unprocessable(format!("no provider registered for destination type: {}", next.kind))
    })?;
    let raw = RawInput {
        credentials: body.get("credentials").and_then(Value::as_object).cloned(),
    };
    adapter
        .preprocess(&mut next, Some(&current), &raw, actor(&p), now)
        .map_err(ApiError::Validation)?;
    adapter.validate(&next).map_err(ApiError::Validation)?;
    adapter
        .verify(&mut next, Some(&current))
        .await
        .map_err(ApiError::Validation)?;
    let d = s.engine.update_destination(next).await?;
    Ok(Json(display(&s, &d)))
}

pub async fn delete(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    lookup(&s, &p, &tenant_id, &id)?;
    if !s.engine.delete_destination(&tenant_id, &id).await? {
        return Err(ApiError::Bare(StatusCode::NOT_FOUND));
    }
    Ok(Json(json!({"success": true})))
}

async fn set_disabled(
    s: &AppState,
    p: &Principal,
    tenant_id: &str,
    id: &str,
    disabled: bool,
) -> ApiResult<Json<DestinationJson>> {
    let current = lookup(s, p, tenant_id, id)?;
    if current.is_enabled() != disabled {
        return Ok(Json(display(s, &current)));
    }
    let mut next = (*current).clone();
    let now = now_ms();
    next.disabled_at = disabled.then_some(now);
    next.updated_at = now;
    let d = s.engine.update_destination(next).await?;
    Ok(Json(display(s, &d)))
}

pub async fn enable(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> ApiResult<Json<DestinationJson>> {
    set_disabled(&s, &p, &tenant_id, &id, false).await
}

pub async fn disable(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> ApiResult<Json<DestinationJson>> {
    set_disabled(&s, &p, &tenant_id, &id, true).await
}

/// `POST /tenants/{tenant_id}/destinations/{destination_id}/test` (ours,
/// not Outpost's): publishes an event to this destination only, so a tenant
/// can check an endpoint without the operator. It is an ordinary event (in
/// the log, retried, counted); the body may pick its topic and data.
pub async fn send_test_event(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<impl IntoResponse> {
    let d = lookup(&s, &p, &tenant_id, &id)?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid_json());
    };
    let topic = match body.get("topic") {
        None | Some(Value::Null) => d
            .topics
            .iter()
            .find(|t| *t != "*")
            .cloned()
            .or_else(|| s.engine.config.topics.first().cloned())
            .unwrap_or_else(|| "test".into()),
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err(ApiError::Validation(vec!["topic must be a non-empty string".into()])),
    };
    let data = match body.get("data") {
        None | Some(Value::Null) => json!({
            "test": true,
            "message": "A test event sent from the portal",
            "destination_id": d.id,
        }),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(ApiError::Validation(vec!["data must be a JSON object".into()])),
    };
    if !d.is_enabled() {
        return Err(ApiError::Message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the destination is disabled: enable it to send a test event".into(),
        ));
    }
    let doc = json!({"tenant_id": tenant_id, "destination_id": d.id, "topic": topic, "data": data});
    let raw = serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
    let event = outrider_engine::publish::parse(&raw, &s.engine.config, &s.engine.ids).map_err(|e| match e {
        outrider_engine::publish::PublishInputError::InvalidJson => ApiError::invalid_json(),
        outrider_engine::publish::PublishInputError::Invalid(list) => ApiError::Validation(list),
    })?;
    if outrider_engine::routing::matching(std::slice::from_ref(&d), &event).is_empty() {
        return Err(ApiError::Validation(vec![format!(
            "topic {topic:?} does not reach this destination: pick one of its topics{}",
            if d.filter.is_some() {
                " (and data its filter accepts)"
            } else {
                ""
            }
        )]));
    }
    let out = s.engine.publish(event).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": out.id, "topic": topic, "destination_ids": out.destination_ids})),
    ))
}
