//! Outrider's engine: the data plane (delivery shards, destination adapters,
//! the webhook HTTP client) and the stores behind traits.
//!
//! The path of one event: the API matches it against the in-memory routing
//! table ([`engine::Engine::match_destinations`]), the store accepts it durably
//! with one pending delivery per matched destination
//! ([`store::DeliveryQueue::accept`]), and each delivery goes to the shard that
//! owns its destination ([`shard::shard_for`]). The shard attempts it, and the
//! attempt plus the pending record's fate (done, or retry at a time) are
//! written together ([`store::DeliveryQueue::record`]).

pub mod alerts;
pub mod config;
pub mod crypto;
pub mod destinations;
pub mod engine;
pub mod filter;
pub mod http_client;
pub mod ids;
pub mod json;
pub mod log_pipeline;
pub mod model;
pub mod opevents;
pub mod publish;
pub mod queue;
pub mod routing;
pub mod shard;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod string_map;
pub mod timefmt;
pub mod topics;

pub use config::Config;
pub use engine::Engine;
