//! `GET /metrics/events` and `GET /metrics/attempts` (Outpost's metrics API):
//! parameters and their errors here, the plan and the buckets in
//! `outrider_engine::metrics`, the scans in the log store.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::AppState;
use outrider_engine::metrics::{self, Dataset, Dim, Granularity, Measure};
use outrider_engine::timefmt::{format_ms, parse_rfc3339_ms};

pub async fn events(p: Principal, State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    answer(Dataset::Events, p, s, raw).await
}

pub async fn attempts(p: Principal, State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    answer(Dataset::Attempts, p, s, raw).await
}

fn parse(dataset: Dataset, p: &Principal, raw: Option<&str>) -> ApiResult<metrics::Query> {
    let q = Query::parse(raw);
    let (start, end) = match (q.get("time[start]"), q.get("time[end]")) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a, b),
        _ => return Err(ApiError::bad_request("time[start] and time[end] are required")),
    };
    let time = |name: &str, v: &str| {
        parse_rfc3339_ms(v).ok_or_else(|| ApiError::bad_request(format!("invalid {name}: expected RFC3339")))
    };
    let (start_ms, end_ms) = (time("time[start]", start)?, time("time[end]", end)?);
    if start_ms >= end_ms {
        return Err(ApiError::bad_request("invalid time range: start must be before end"));
    }
    let granularity = match q.get("granularity").filter(|g| !g.is_empty()) {
        Some(g) => Some(Granularity::parse(g).map_err(ApiError::bad_request)?),
        None => None,
    };
    let measures = q.array("measures");
    if measures.is_empty() {
        return Err(ApiError::bad_request("measures is required"));
    }
    let measures = measures
        .iter()
        .map(|m| Measure::parse(dataset, m).ok_or_else(|| ApiError::bad_request(format!("unknown measure {m:?}"))))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut dims = Vec::new();
    for d in q.array("dimensions") {
        let dim = Dim::parse(dataset, &d).ok_or_else(|| ApiError::bad_request(format!("unknown dimension {d:?}")))?;
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    let names: &[&str] = match dataset {
        Dataset::Events => &["tenant_id", "topic", "destination_id"],
        Dataset::Attempts => &[
            "tenant_id",
            "destination_id",
            "destination_type",
            "topic",
            "status",
            "code",
            "manual",
            "attempt_number",
        ],
    };
    let mut filters = Vec::new();
    for name in names {
        let values = q.array(&format!("filters[{name}]"));
        if !values.is_empty() {
            if let Some(dim) = Dim::parse(dataset, name) {
                filters.push((dim, values));
            }
        }
    }
    // A filter naming a dimension this dataset does not have is refused, not ignored.
    for (k, _) in q.pairs() {
        if let Some(name) = k.strip_prefix("filters[").and_then(|r| r.split(']').next()) {
            if !names.contains(&name) {
                return Err(ApiError::bad_request(format!("unknown filter {name:?}")));
            }
        }
    }
    if let Principal::Tenant(t) = p {
        if dims.contains(&Dim::TenantId) {
            return Err(ApiError::Message(
                StatusCode::FORBIDDEN,
                "tenant_id dimension is not allowed for tenant-scoped requests".into(),
            ));
        }
        match filters.iter().position(|(d, _)| *d == Dim::TenantId) {
            Some(i) if filters[i].1.iter().any(|v| v != t) => {
                return Err(ApiError::Message(
                    StatusCode::FORBIDDEN,
                    "filters[tenant_id] does not match authenticated tenant".into(),
                ))
            }
            Some(_) => {}
            None => filters.push((Dim::TenantId, vec![t.clone()])),
        }
    }
    let query = metrics::Query {
        dataset,
        start_ms,
        end_ms,
        granularity,
        measures,
        dims,
        filters,
    };
    if query.bucket_count() > metrics::ROW_LIMIT {
        return Err(ApiError::bad_request(
            "query too broad: try fewer dimensions, more filters, or a shorter time range",
        ));
    }
    Ok(query)
}

async fn answer(dataset: Dataset, p: Principal, s: AppState, raw: Option<String>) -> ApiResult<Json<Value>> {
    let started = std::time::Instant::now();
    let query = parse(dataset, &p, raw.as_deref())?;
    let answer = outrider_engine::store::answer_metrics(s.engine.logs.as_ref(), &query).await?;
    let data: Vec<Value> = answer
        .data
        .into_iter()
        .map(|d| {
            let mut o = Map::new();
            if let Some(t) = d.time_bucket {
                o.insert("time_bucket".into(), format_ms(t).into());
            }
            o.insert("dimensions".into(), Value::Object(d.dimensions));
            o.insert("metrics".into(), Value::Object(d.metrics));
            Value::Object(o)
        })
        .collect();
    let mut metadata = Map::new();
    if let Some(g) = &query.granularity {
        metadata.insert("granularity".into(), g.text().into());
    }
    metadata.insert("query_time_ms".into(), (started.elapsed().as_millis() as u64).into());
    metadata.insert("row_count".into(), data.len().into());
    metadata.insert("row_limit".into(), metrics::ROW_LIMIT.into());
    metadata.insert("truncated".into(), answer.truncated.into());
    Ok(Json(json!({"data": data, "metadata": metadata})))
}
