//! `/events` and `/attempts` (and the per-destination attempt routes): filters,
//! tenant scoping and seek pagination.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::auth::{tenant_access, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::{time_range, Query};
use crate::views::{self, AttemptJson, EventJson, Pagination};

/// A list response. Serialized directly (never through `serde_json::Value`) so
/// event data keeps the publisher's key order.
#[derive(Serialize)]
pub struct ListPage<T> {
    models: Vec<T>,
    pagination: Pagination,
}
use crate::{cursor, AppState};
use outrider_engine::model::{Attempt, AttemptStatus};
use outrider_engine::store::{Dir, ListQuery, Seek};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The paging part of a list request.
struct Paging {
    dir: Dir,
    limit: usize,
    cursor: Option<(bool, Seek)>, // (is_prev, position)
}

fn paging(q: &Query, resource: &str) -> ApiResult<Paging> {
    let dir = match q.get("dir") {
        None | Some("") | Some("desc") => Dir::Desc,
        Some("asc") => Dir::Asc,
        Some(_) => return Err(ApiError::query("query.dir", "must be 'asc' or 'desc'")),
    };
    if let Some(o) = q.get("order_by") {
        if !o.is_empty() && o != "time" {
            return Err(ApiError::query("query.order_by", "must be one of: [time]"));
        }
    }
    // Out-of-range limits are clamped, not refused (as Outpost does).
    let limit = match q.get("limit").and_then(|l| l.parse::<i64>().ok()) {
        Some(n) if n > 0 => (n as usize).min(MAX_LIMIT),
        _ => DEFAULT_LIMIT,
    };
    let next = q.get("next").filter(|c| !c.is_empty());
    let prev = q.get("prev").filter(|c| !c.is_empty());
    let cursor = match (next, prev) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("cannot specify both 'next' and 'prev' cursors")),
        (Some(c), None) => Some((false, c)),
        (None, Some(c)) => Some((true, c)),
        (None, None) => None,
    };
    let cursor = match cursor {
        Some((is_prev, c)) => {
            let (time_ms, id) = cursor::decode_seek(resource, c)?;
            Some((is_prev, Seek { time_ms, id }))
        }
        None => None,
    };
    Ok(Paging { dir, limit, cursor })
}

impl Paging {
    /// The store query: fetch one extra row to know whether more exist; a
    /// `prev` cursor fetches backwards.
    fn apply(&self, q: &mut ListQuery) {
        let flip = matches!(self.cursor, Some((true, _)));
        q.dir = match (self.dir, flip) {
            (Dir::Asc, false) | (Dir::Desc, true) => Dir::Asc,
            _ => Dir::Desc,
        };
        q.after = self.cursor.as_ref().map(|(_, s)| s.clone());
        q.limit = self.limit + 1;
    }

    /// Trims the extra row, restores order and builds the pagination block.
    fn finish<T>(&self, mut rows: Vec<T>, resource: &str, key: impl Fn(&T) -> (i64, &str)) -> (Vec<T>, Pagination) {
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        let is_prev = matches!(self.cursor, Some((true, _)));
        if is_prev {
            rows.reverse();
        }
        let enc = |t: &T| {
            let (ms, id) = key(t);
            cursor::encode_seek(resource, ms, id)
        };
        let (next, prev) = match &self.cursor {
            None => (if more { rows.last().map(enc) } else { None }, None),
            Some((false, _)) => (if more { rows.last().map(enc) } else { None }, rows.first().map(enc)),
            Some((true, _)) => (rows.last().map(enc), if more { rows.first().map(enc) } else { None }),
        };
        let p = Pagination {
            order_by: "time",
            dir: if self.dir == Dir::Asc { "asc" } else { "desc" },
            limit: self.limit,
            next,
            prev,
        };
        (rows, p)
    }
}

/// The tenants a query may see: a token's own, or the admin's `tenant_id[]`.
fn tenant_filter(p: &Principal, q: &Query) -> ApiResult<Vec<String>> {
    let asked = q.array("tenant_id");
    match p {
        Principal::Admin => Ok(asked),
        Principal::Tenant(t) => {
            if asked.iter().any(|a| a != t) {
                return Err(ApiError::Message(
                    StatusCode::FORBIDDEN,
                    "tenant_id query parameter does not match authenticated tenant".into(),
                ));
            }
            Ok(vec![t.clone()])
        }
    }
}

fn base_query(q: &Query, field: &str) -> ApiResult<ListQuery> {
    let r = time_range(q, field)?;
    Ok(ListQuery {
        time_gte: r.gte,
        time_gt: r.gt,
        time_lte: r.lte,
        time_lt: r.lt,
        ..Default::default()
    })
}

pub async fn list_events(
    p: Principal,
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ListPage<EventJson>>> {
    let q = Query::parse(raw.as_deref());
    let mut lq = base_query(&q, "time")?;
    lq.tenant_ids = tenant_filter(&p, &q)?;
    lq.ids = q.array("id");
    lq.destination_ids = q.array("destination_id");
    lq.topics = q.array("topic");
    let pg = paging(&q, "evt")?;
    pg.apply(&mut lq);
    let rows = s.engine.logs.list_events(lq).await?;
    let (rows, pagination) = pg.finish(rows, "evt", |e| (e.time, e.id.as_str()));
    Ok(Json(ListPage {
        models: rows.iter().map(views::event).collect(),
        pagination,
    }))
}

pub async fn get_event(
    p: Principal,
    State(s): State<AppState>,
    Path(event_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<EventJson>> {
    let q = Query::parse(raw.as_deref());
    let scope = match &p {
        Principal::Tenant(t) => Some(t.clone()),
        Principal::Admin => q.get("tenant_id").filter(|t| !t.is_empty()).map(String::from),
    };
    let e = s
        .engine
        .logs
        .get_event(scope, event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("event not found"))?;
    Ok(Json(views::event(&e)))
}

/// What `include[]` asked for.
struct Include {
    event: bool,
    event_data: bool,
    response_data: bool,
    destination: bool,
}

fn include(q: &Query) -> Include {
    let inc = q.array("include");
    let has = |k: &str| inc.iter().any(|i| i == k);
    Include {
        event: has("event") || has("event.data"),
        event_data: has("event.data"),
        response_data: has("response_data"),
        destination: has("destination"),
    }
}

async fn render_attempts(s: &AppState, rows: &[Attempt], inc: &Include) -> ApiResult<Vec<AttemptJson>> {
    let mut out = Vec::with_capacity(rows.len());
    // A page's events are read in one lookup, each once however many of
    // the page's attempts (retries, fan-out) belong to it.
    let mut events: std::collections::HashMap<String, Vec<outrider_engine::model::Event>> =
        std::collections::HashMap::new();
    if inc.event {
        let mut keys: Vec<(String, String)> = rows.iter().map(|a| (a.tenant_id.clone(), a.event_id.clone())).collect();
        keys.sort();
        keys.dedup();
        // Keyed by id, so a row looks its event up without copying its keys;
        // two tenants may use the same id, so the tenant picks among them.
        for e in s.engine.logs.get_events(keys).await? {
            events.entry(e.id.clone()).or_default().push(e);
        }
    }
    for a in rows {
        let mut j = views::attempt(a);
        if inc.response_data {
            j.response_data = a.response_data.clone();
        }
        if inc.event {
            if let Some(e) = events
                .get(&a.event_id)
                .and_then(|same_id| same_id.iter().find(|e| e.tenant_id == a.tenant_id))
            {
                j.event = Some(views::event_in_attempt(e, &a.destination_id, inc.event_data));
            }
        }
        if inc.destination {
            j.destination = s
                .engine
                .destination(&a.tenant_id, &a.destination_id)
                .map(|d| views::destination(&s.engine.types, &d));
        }
        out.push(j);
    }
    Ok(out)
}

fn attempt_query(q: &Query) -> ApiResult<ListQuery> {
    let mut lq = base_query(q, "time")?;
    lq.event_ids = q.array("event_id");
    lq.destination_ids = q.array("destination_id");
    lq.destination_types = q.array("destination_type");
    lq.topics = q.array("topic");
    lq.status = match q.get("status") {
        None | Some("") => None,
        Some("success") => Some(AttemptStatus::Success),
        Some("failed") => Some(AttemptStatus::Failed),
        Some(_) => return Err(ApiError::query("query.status", "must be 'success' or 'failed'")),
    };
    Ok(lq)
}

async fn attempts_page(s: &AppState, q: &Query, mut lq: ListQuery) -> ApiResult<Json<ListPage<AttemptJson>>> {
    let pg = paging(q, "att")?;
    pg.apply(&mut lq);
    let rows = s.engine.logs.list_attempts(lq).await?;
    let (rows, pagination) = pg.finish(rows, "att", |a| (a.time, a.id.as_str()));
    let models = render_attempts(s, &rows, &include(q)).await?;
    Ok(Json(ListPage { models, pagination }))
}

pub async fn list_attempts(
    p: Principal,
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ListPage<AttemptJson>>> {
    let q = Query::parse(raw.as_deref());
    let mut lq = attempt_query(&q)?;
    lq.tenant_ids = tenant_filter(&p, &q)?;
    attempts_page(&s, &q, lq).await
}

pub async fn get_attempt(
    p: Principal,
    State(s): State<AppState>,
    Path(attempt_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AttemptJson>> {
    let q = Query::parse(raw.as_deref());
    let scope = match &p {
        Principal::Tenant(t) => Some(t.clone()),
        Principal::Admin => q.get("tenant_id").filter(|t| !t.is_empty()).map(String::from),
    };
    let a = s
        .engine
        .logs
        .get_attempt(scope, attempt_id)
        .await?
        .ok_or_else(|| ApiError::not_found("attempt not found"))?;
    let mut rendered = render_attempts(&s, std::slice::from_ref(&a), &include(&q)).await?;
    Ok(Json(rendered.remove(0)))
}

pub async fn destination_attempts(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, destination_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ListPage<AttemptJson>>> {
    tenant_access(&p, &s, &tenant_id)?;
    if s.engine.destination(&tenant_id, &destination_id).is_none() {
        return Err(ApiError::Bare(StatusCode::NOT_FOUND));
    }
    let q = Query::parse(raw.as_deref());
    let mut lq = attempt_query(&q)?;
    lq.tenant_ids = vec![tenant_id];
    lq.destination_ids = vec![destination_id];
    attempts_page(&s, &q, lq).await
}

pub async fn destination_attempt(
    p: Principal,
    State(s): State<AppState>,
    Path((tenant_id, destination_id, attempt_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AttemptJson>> {
    tenant_access(&p, &s, &tenant_id)?;
    if s.engine.destination(&tenant_id, &destination_id).is_none() {
        return Err(ApiError::Bare(StatusCode::NOT_FOUND));
    }
    let q = Query::parse(raw.as_deref());
    let a = s
        .engine
        .logs
        .get_attempt(Some(tenant_id), attempt_id)
        .await?
        .filter(|a| a.destination_id == destination_id)
        .ok_or_else(|| ApiError::not_found("attempt not found"))?;
    let mut rendered = render_attempts(&s, std::slice::from_ref(&a), &include(&q)).await?;
    Ok(Json(rendered.remove(0)))
}
