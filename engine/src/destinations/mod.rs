//! Destination types. Each type is one adapter behind [`DestinationType`]:
//! the control plane uses it to describe, validate and prepare destinations;
//! the shard uses the [`Publisher`] it builds to deliver.

pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::http_client::HttpClient;
use crate::model::{AttemptStatus, Destination, Event, StringMap};

pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Who is making a change: tenants may not set some credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Admin,
    Tenant,
}

/// The raw maps a caller sent, so an adapter can tell what was actually given.
#[derive(Debug, Default, Clone)]
pub struct RawInput {
    pub credentials: Option<serde_json::Map<String, Value>>,
}

/// Validation failures as `"<path> <reason>"` strings (`config.url is required`).
pub type Violations = Vec<String>;

pub trait DestinationType: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// The `/destination-types` description.
    fn metadata(&self) -> Value;
    /// Field checks on a destination about to be stored.
    fn validate(&self, dest: &Destination) -> Result<(), Violations>;
    /// Fills in or rewrites fields before storing (generated secrets, rotation).
    /// `previous` is the stored version on update.
    fn preprocess(
        &self,
        dest: &mut Destination,
        previous: Option<&Destination>,
        raw: &RawInput,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(), Violations>;
    /// `(target, target_url)` for display.
    fn target(&self, dest: &Destination) -> (String, Option<String>);
    /// Credentials as shown to API callers.
    fn display_credentials(&self, dest: &Destination, now_ms: i64) -> StringMap;
    /// Builds the shard-side publisher for a destination.
    fn publisher(&self, dest: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, String>;
}

/// Deployment-wide settings every publisher may need.
#[derive(Clone)]
pub struct PublishContext {
    pub config: Arc<Config>,
    pub webhook_signer: Arc<crate::signing::DefaultSigner>,
}

/// Result of one delivery attempt at the adapter level.
#[derive(Debug, Clone)]
pub struct PublishResult {
    pub status: AttemptStatus,
    pub code: String,
    pub response_data: Option<Value>,
}

/// Delivers events to one destination. Lives on its shard's thread.
pub trait Publisher {
    fn publish<'a>(
        &'a self,
        client: &'a HttpClient,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult>;
}

/// All types this build can create and deliver to, in listing order.
pub struct Registry {
    types: Vec<Box<dyn DestinationType>>,
}

impl Registry {
    pub fn new(config: &Arc<Config>) -> Self {
        Self {
            types: vec![Box::new(webhook::Webhook::new(config.clone()))],
        }
    }

    pub fn get(&self, kind: &str) -> Option<&dyn DestinationType> {
        self.types.iter().find(|t| t.kind() == kind).map(|b| b.as_ref())
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn DestinationType> {
        self.types.iter().map(|b| b.as_ref())
    }
}

/// Masks a sensitive value: 10+ characters keep their first 4, the rest become `*`.
pub fn obfuscate(v: &str) -> String {
    let n = v.chars().count();
    if n >= 10 {
        v.chars().take(4).chain(std::iter::repeat_n('*', n - 4)).collect()
    } else {
        "*".repeat(n)
    }
}

/// The metadata a delivery carries: system < destination.delivery_metadata < event.metadata.
pub fn merged_metadata(
    delivery_metadata: Option<&StringMap>,
    event: &Event,
    now_ms: i64,
    include_ms: bool,
) -> StringMap {
    let mut m = StringMap::new();
    m.insert("timestamp".into(), crate::timefmt::format_secs(now_ms));
    m.insert("event-id".into(), event.id.clone());
    m.insert("topic".into(), event.topic.clone());
    if include_ms {
        m.insert("timestamp-ms".into(), crate::timefmt::format_nanos(now_ms));
    }
    if let Some(dm) = delivery_metadata {
        m.extend(dm.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    m.extend(event.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}
