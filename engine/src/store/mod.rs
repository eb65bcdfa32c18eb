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
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::model::{Attempt, AttemptStatus, Destination, Event, Tenant};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot reach {what}: {message}")]
    Unreachable { what: &'static str, message: String },
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
    /// Up to `q.limit` events in `q.dir` order after `q.after`.
    fn list_events(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Event>>>;
    fn get_event(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Event>>>;
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
}
