//! Outrider's engine: the data plane (delivery shards, destination adapters,
//! the webhook HTTP client) and the stores behind traits.
//!
//! The path of one event: the API matches it against the in-memory routing
//! table ([`engine::Engine::publish`]) and hands its deliveries to the shards
//! that own their destinations ([`shard::shard_for`]). Each shard appends an
//! accept record to its own journal ([`journal`]) and answers once it is
//! committed; it then attempts the delivery and appends a settle record (the
//! attempt, and the retry if one follows). The index follower
//! ([`journal::index`]) writes the queryable rows into SQLite off the
//! delivery path.

pub mod alerts;
pub mod backoff;
pub mod coalesce;
pub mod config;
pub mod crypto;
pub mod destinations;
pub mod engine;
pub mod error_text;
pub mod filter;
pub mod flow;
pub mod http_client;
pub mod idempotency;
pub mod ids;
pub mod journal;
pub mod json;
pub mod latency;
pub mod log_pipeline;
pub mod metadata_overrides;
pub mod metrics;
pub mod model;
pub mod opevents;
pub mod otel;
pub mod outpost_settings;
pub mod portal;
pub mod publish;
pub mod queue;
pub mod routing;
pub mod secret;
pub mod settings;
pub mod shard;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod string_map;
pub mod timefmt;
pub mod topics;

pub use config::Config;
pub use engine::Engine;
