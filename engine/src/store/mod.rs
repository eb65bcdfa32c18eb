//! Storage behind traits, so the Redis/Postgres back ends slot in without
//! touching the API or the shards.
//!
//! - [`EntityStore`]: tenants and destinations (write-through; the control
//!   plane keeps the routing table in memory and loads it at start).
//! - [`LogStore`]: events and attempts, and the queries the list endpoints need.
//!
//! Deliveries themselves are not here: each shard keeps them in its own
//! journal ([`crate::journal`]).

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod metrics_sql;
pub mod postgres;
pub mod postgres_tls;
pub mod redis;
pub mod retention;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::model::{Attempt, AttemptStatus, Destination, Event, Tenant};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot reach {what}: {message}")]
    Unreachable { what: &'static str, message: String },
    /// A shared back end is not answering right now (its connection
    /// dropped, a cluster failing over): the same call may work in a moment.
    #[error("back end unavailable: {0}")]
    Unavailable(String),
    /// The store is up but refuses the records themselves (PostgreSQL's
    /// data exceptions, integrity and limit errors): writing them again
    /// cannot succeed, so the log pipeline quarantines them.
    #[error("records refused: {0}")]
    Refused(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Sort direction of a list query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Asc,
    Desc,
}

/// A seek position: rows strictly after (in query order) this `(time, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seek {
    pub time_ms: i64,
    pub id: String,
}

/// Filters and paging shared by the event and attempt queries.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub tenant_ids: Vec<String>,
    pub ids: Vec<String>,
    pub event_ids: Vec<String>,
    pub destination_ids: Vec<String>,
    pub destination_types: Vec<String>,
    pub topics: Vec<String>,
    pub status: Option<AttemptStatus>,
    pub time_gte: Option<i64>,
    pub time_gt: Option<i64>,
    pub time_lte: Option<i64>,
    pub time_lt: Option<i64>,
    /// Direction rows are fetched in (already flipped for a `prev` cursor).
    pub dir: Dir,
    pub after: Option<Seek>,
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            tenant_ids: vec![],
            ids: vec![],
            event_ids: vec![],
            destination_ids: vec![],
            destination_types: vec![],
            topics: vec![],
            status: None,
            time_gte: None,
            time_gt: None,
            time_lte: None,
            time_lt: None,
            dir: Dir::Desc,
            after: None,
            limit: 100,
        }
    }
}

impl ListQuery {
    /// The time filters as `(SQL operator, bound)` pairs.
    pub fn time_bounds(&self) -> [(&'static str, Option<i64>); 4] {
        [
            (">=", self.time_gte),
            (">", self.time_gt),
            ("<=", self.time_lte),
            ("<", self.time_lt),
        ]
    }
}

pub trait EntityStore: Send + Sync + 'static {
    fn load_entities(&self) -> BoxFuture<'_, StoreResult<(Vec<Tenant>, Vec<Destination>)>>;
    fn put_tenant(&self, tenant: Tenant) -> BoxFuture<'_, StoreResult<()>>;
    /// Deletes the tenant and all of its destinations.
    fn delete_tenant(&self, id: String) -> BoxFuture<'_, StoreResult<()>>;
    fn put_destination(&self, dest: Destination) -> BoxFuture<'_, StoreResult<()>>;
    fn delete_destination(&self, tenant_id: String, id: String) -> BoxFuture<'_, StoreResult<()>>;
}

pub trait LogStore: Send + Sync + 'static {
    /// One scan of the metrics plan ([`crate::metrics::Query::plan`]).
    fn metric_scan(&self, scan: crate::metrics::Scan) -> BoxFuture<'_, StoreResult<Vec<crate::metrics::ScanRow>>>;
    /// Deletes the log rows and rollups `policy` puts past retention.
    fn retain(&self, policy: retention::Policy) -> BoxFuture<'_, StoreResult<retention::Pruned>>;
    /// Up to `q.limit` events in `q.dir` order after `q.after`.
    fn list_events(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Event>>>;
    fn get_event(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Event>>>;
    /// The events with these `(tenant_id, id)` keys, in any order, missing
    /// ones left out: one round trip for a page of attempts' events.
    fn get_events(&self, keys: Vec<(String, String)>) -> BoxFuture<'_, StoreResult<Vec<Event>>>;
    fn list_attempts(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Attempt>>>;
    fn get_attempt(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Attempt>>>;
    fn latest_attempt(
        &self,
        tenant_id: Option<String>,
        event_id: String,
        destination_id: String,
    ) -> BoxFuture<'_, StoreResult<Option<Attempt>>>;
}

/// Batched, idempotent writes of log records: what the log pipeline calls.
/// Events are kept by id (the first write wins); attempts by id (a rewrite
/// updates status, code and response).
pub trait LogWriter: Send + Sync + 'static {
    fn write_logs(&self, events: Vec<Arc<Event>>, attempts: Vec<Attempt>) -> BoxFuture<'_, StoreResult<()>>;

    /// Keeps records this store refused ([`StoreError::Refused`]) aside,
    /// with the error. A store that never refuses a record keeps none.
    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            Err(StoreError::Database(format!(
                "this log store keeps no dead letters ({} refused records)",
                letters.len()
            )))
        })
    }
}

/// A log record the log store refused, as JSON, with the store's error.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// `event` or `attempt`.
    pub kind: &'static str,
    pub record_id: String,
    pub tenant_id: String,
    pub error: String,
    pub record: String,
}

impl DeadLetter {
    pub fn event(e: &Event, error: &str) -> Self {
        let record = serde_json::json!({
            "id": e.id, "tenant_id": e.tenant_id, "topic": e.topic, "time": e.time,
            "eligible_for_retry": e.eligible_for_retry, "metadata": e.metadata,
            "data": &*e.data, "matched_destination_ids": e.matched_destination_ids,
        });
        Self::new("event", &e.id, &e.tenant_id, error, record)
    }

    pub fn attempt(a: &Attempt, error: &str) -> Self {
        let record = serde_json::json!({
            "id": a.id, "tenant_id": a.tenant_id, "event_id": a.event_id, "destination_id": a.destination_id,
            "destination_type": a.destination_type, "attempt_number": a.attempt_number, "manual": a.manual,
            "status": a.status.as_str(), "time": a.time, "code": a.code, "response_data": a.response_data,
            "topic": a.topic,
        });
        Self::new("attempt", &a.id, &a.tenant_id, error, record)
    }

    /// Text columns cannot hold NUL, the usual reason for the refusal: the
    /// ids and error lose it, the record keeps it escaped as JSON does.
    fn new(kind: &'static str, id: &str, tenant: &str, error: &str, record: serde_json::Value) -> Self {
        let clean = |s: &str| s.replace('\0', "\\0");
        DeadLetter {
            kind,
            record_id: clean(id),
            tenant_id: clean(tenant),
            error: clean(error),
            record: record.to_string(),
        }
    }
}

/// Answers a metrics query from `logs`: each scan of its plan, then the
/// buckets. Here rather than in `metrics`, which plans and buckets and
/// knows no store.
pub async fn answer_metrics(logs: &dyn LogStore, q: &crate::metrics::Query) -> StoreResult<crate::metrics::Answer> {
    let mut rows = Vec::new();
    for scan in q.plan() {
        rows.extend(logs.metric_scan(scan).await?);
    }
    Ok(q.answer(rows))
}
