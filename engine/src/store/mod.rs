//! Storage behind traits, so the Redis/Postgres/queue back ends slot in later
//! without touching the API or the shards.
//!
//! - [`EntityStore`]: tenants and destinations (write-through; the control
//!   plane keeps the routing table in memory and loads it at start).
//! - [`LogStore`]: events and attempts, and the queries the list endpoints need.
//! - [`DeliveryQueue`]: the durable record of every delivery that is not done
//!   yet (first attempts and scheduled retries). `accept` returning `Ok` is the
//!   moment an event becomes durable; a pending record goes away only in the
//!   same write that stores its attempt's outcome.

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::model::{Attempt, AttemptStatus, Delivery, Destination, Event, NextStep, Tenant};

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

/// What publishing found when it tried to accept an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    Duplicate,
}

/// The outcome of one attempt, to be made durable with the pending record's fate.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub event_id: String,
    pub destination_id: String,
    /// The attempt number that was tried (the pending record it settles).
    pub attempt_number: u32,
    /// `None` when the delivery was dropped without an attempt (destination
    /// disabled or deleted).
    pub attempt: Option<Attempt>,
    pub next: NextStep,
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

pub trait DeliveryQueue: Send + Sync + 'static {
    /// Durably records the event and one pending delivery per destination, or
    /// reports a duplicate when the id was accepted within `idempotency_ttl_ms`.
    fn accept(
        &self,
        event: Arc<Event>,
        destination_ids: Vec<String>,
        idempotency_ttl_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Accepted>>;
    /// Takes over a delivery handed over by the delivery queue: stores the
    /// event if new and a pending record for (event, destination) unless one
    /// exists (a manual retry replaces it). `Ok` means it is durable here.
    fn receive(&self, delivery: Delivery) -> BoxFuture<'_, StoreResult<()>>;
    /// Replaces the pending delivery of (event, destination) with this one.
    fn schedule(&self, delivery: Delivery) -> BoxFuture<'_, StoreResult<()>>;
    /// Stores an attempt and settles its pending record in one write. Returns
    /// once the record is queued for the next group commit.
    fn record(&self, outcome: OutcomeRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// Every delivery not yet done, for recovery at start.
    fn load_pending(&self) -> BoxFuture<'_, StoreResult<Vec<Delivery>>>;
}

/// One value implementing all three stores.
pub trait Store: EntityStore + LogStore + DeliveryQueue {}
impl<T: EntityStore + LogStore + DeliveryQueue> Store for T {}

pub type SharedStore = Arc<dyn Store>;
