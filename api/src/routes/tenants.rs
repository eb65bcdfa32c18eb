//! `/tenants`: upsert, read, delete, list, and tenant tokens.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{tenant_access, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Query, RawBody};
use crate::views::{Pagination, TenantJson};
use crate::{cursor, AppState};
use outrider_engine::model::StringMap;
use outrider_engine::portal::Theme;

#[derive(Deserialize)]
struct UpsertBody {
    metadata: Option<StringMap>,
}

pub async fn upsert(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    RawBody(body): RawBody,
) -> ApiResult<impl IntoResponse> {
    match &p {
        Principal::Admin => {}
        // A tenant token may only update its own (existing) tenant.
        Principal::Tenant(t) if *t == tenant_id => {}
        Principal::Tenant(_) => return Err(ApiError::Bare(StatusCode::FORBIDDEN)),
    }
    if tenant_id.trim().is_empty() {
        return Err(ApiError::Validation(vec!["tenant_id is required".into()]));
    }
    if let Some(problem) = outrider_engine::ids::id_problem("tenant_id", &tenant_id) {
        return Err(ApiError::Validation(vec![problem]));
    }
    let metadata = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<UpsertBody>(&body)
            .map_err(|_| ApiError::invalid_json())?
            .metadata
    };
    let (view, created) = s.engine.upsert_tenant(&tenant_id, metadata).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(TenantJson::from(&view))))
}

pub async fn get_one(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<TenantJson>> {
    tenant_access(&p, &s, &tenant_id)?;
    let v = s
        .engine
        .tenant(&tenant_id)
        .ok_or_else(|| ApiError::not_found("tenant not found"))?;
    Ok(Json(TenantJson::from(&v)))
}

pub async fn delete(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    tenant_access(&p, &s, &tenant_id)?;
    if !s.engine.delete_tenant(&tenant_id).await? {
        return Err(ApiError::Bare(StatusCode::NOT_FOUND));
    }
    Ok(Json(json!({"success": true})))
}

/// A tenant token, for admins only (both `/token` and `/portal` hand one out).
fn issue_token(p: &Principal, s: &AppState, tenant_id: &str) -> ApiResult<String> {
    p.require_admin()?;
    tenant_access(p, s, tenant_id)?;
    let jwt = s.jwt.as_ref().ok_or_else(|| {
        ApiError::Message(
            StatusCode::NOT_IMPLEMENTED,
            "tenant tokens are disabled: API_JWT_SECRET is not set".into(),
        )
    })?;
    jwt.issue(tenant_id)
}

pub async fn token(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let token = issue_token(&p, &s, &tenant_id)?;
    Ok(Json(json!({"token": token, "tenant_id": tenant_id})))
}

pub async fn portal(
    p: Principal,
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let token = issue_token(&p, &s, &tenant_id)?;
    let q = Query::parse(raw.as_deref());
    let theme = match q.get("theme") {
        Some("light") => Some(Theme::Light),
        Some("dark") => Some(Theme::Dark),
        _ => None,
    };
    let origin = request_origin(&headers, s.engine.config.api_port);
    let url = s.engine.config.portal.redirect_url(&origin, &token, theme);
    Ok(Json(json!({"redirect_url": url, "tenant_id": tenant_id})))
}

/// `scheme://host` as the client addressed this server, so the URL works as
/// given: the `Host` header (checked to be a bare host, else this node's
/// port on localhost) and `https` only when a proxy in front says the
/// request arrived over TLS.
fn request_origin(headers: &HeaderMap, port: u16) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
        })
        .map(String::from)
        .unwrap_or_else(|| format!("localhost:{port}"));
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|v| v.split(',').next().map(str::trim) == Some("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

pub async fn list(p: Principal, State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<impl IntoResponse> {
    let q = Query::parse(raw.as_deref());
    if let Principal::Tenant(t) = &p {
        let v = s.engine.tenant(t).ok_or(ApiError::Bare(StatusCode::UNAUTHORIZED))?;
        return Ok(Json(json!({
            "models": [TenantJson::from(&v)],
            "pagination": Pagination { order_by: "created_at", dir: "desc", limit: 0, next: None, prev: None },
            "count": 1,
        })));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(ApiError::bad_request("invalid limit: must be between 1 and 100")),
        },
    };
    let asc = match q.get("dir") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::query("query.dir", "must be 'asc' or 'desc'")),
    };
    if q.has("next") && q.has("prev") {
        return Err(ApiError::bad_request("cannot specify both 'next' and 'prev' cursors"));
    }
    let ids = q.array("id");
    let enc = |t: &outrider_engine::engine::TenantView| cursor::encode_seek("tnt", t.tenant.created_at, &t.tenant.id);
    if ids.is_empty() {
        // The common case, by seek on the ordered index: a page costs its
        // rows, not a copy and sort of every tenant.
        use outrider_engine::engine::TenantSeek;
        let seek = if let Some(c) = q.get("next") {
            let (at, id) = cursor::decode_seek("tnt", c)?;
            TenantSeek::After(at, id)
        } else if let Some(c) = q.get("prev") {
            let (at, id) = cursor::decode_seek("tnt", c)?;
            TenantSeek::Before(at, id)
        } else {
            TenantSeek::First
        };
        let page = s.engine.tenant_page(asc, seek, limit);
        let pagination = Pagination {
            order_by: "created_at",
            dir: if asc { "asc" } else { "desc" },
            limit,
            next: page.more_after.then(|| page.rows.last().map(enc)).flatten(),
            prev: page.more_before.then(|| page.rows.first().map(enc)).flatten(),
        };
        return Ok(Json(json!({
            "models": page.rows.iter().map(TenantJson::from).collect::<Vec<_>>(),
            "pagination": pagination,
            "count": s.engine.tenant_count(),
        })));
    }
    // Chosen ids: only those are looked up.
    let mut all: Vec<_> = ids.iter().filter_map(|id| s.engine.tenant(id)).collect();
    all.sort_by(|a, b| (b.tenant.created_at, &b.tenant.id).cmp(&(a.tenant.created_at, &a.tenant.id)));
    all.dedup_by(|a, b| a.tenant.id == b.tenant.id);
    if asc {
        all.reverse();
    }
    let count = all.len();
    let key = |t: &outrider_engine::engine::TenantView| (t.tenant.created_at, t.tenant.id.clone());
    // Position of the first row strictly after `pos` in the current order.
    let after = |pos: &(i64, String)| {
        all.iter()
            .position(|t| if asc { key(t) > *pos } else { key(t) < *pos })
            .unwrap_or(all.len())
    };
    let (start, end) = if let Some(c) = q.get("next") {
        let pos = cursor::decode_seek("tnt", c)?;
        let start = after(&pos);
        (start, (start + limit).min(all.len()))
    } else if let Some(c) = q.get("prev") {
        let pos = cursor::decode_seek("tnt", c)?;
        // Rows strictly before `pos`: everything up to its position.
        let end = all
            .iter()
            .position(|t| if asc { key(t) >= pos } else { key(t) <= pos })
            .unwrap_or(all.len());
        (end.saturating_sub(limit), end)
    } else {
        (0, limit.min(all.len()))
    };
    let page = &all[start..end];
    let pagination = Pagination {
        order_by: "created_at",
        dir: if asc { "asc" } else { "desc" },
        limit,
        next: (end < all.len()).then(|| page.last().map(enc)).flatten(),
        prev: (start > 0).then(|| page.first().map(enc)).flatten(),
    };
    Ok(Json(json!({
        "models": page.iter().map(TenantJson::from).collect::<Vec<_>>(),
        "pagination": pagination,
        "count": count,
    })))
}
