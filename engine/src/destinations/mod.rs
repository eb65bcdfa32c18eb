//! Destination types. Each type is one adapter behind [`DestinationType`]:
//! the control plane uses it to describe, validate and prepare destinations;
//! the shard uses the [`Publisher`] it builds to deliver, with the shard's
//! [`ShardClients`] (one pool per type, shared by every destination on the
//! shard that has the same endpoint and credentials). Types whose service
//! has a batch API send through [`batch::Batcher`]: concurrent publishes to
//! one target share a call.

pub mod aws;
pub mod aws_eventbridge;
pub mod aws_kinesis;
pub mod aws_s3;
pub mod aws_sqs;
pub mod azure_servicebus;
pub mod batch;
pub mod clients;
pub mod fields;
pub mod gcp_pubsub;
pub mod hookdeck;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod rabbitmq;
pub mod redis_stream;
pub mod template;
pub mod webhook;

pub use clients::ShardClients;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::model::{AttemptStatus, Destination, Event, StringMap};

pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// The field list a type is described by; `kind`, `metadata` and
    /// `display_credentials` follow from it. Only `webhook`, whose listing
    /// and credentials depend on the deployment, has none and overrides them.
    fn schema(&self) -> Option<&'static fields::Schema> {
        None
    }
    fn kind(&self) -> &'static str {
        self.schema().map_or("", |s| s.kind)
    }
    /// The `/destination-types` description.
    fn metadata(&self) -> Value {
        self.schema().map_or(Value::Null, |s| s.metadata())
    }
    /// Field checks on a destination about to be stored.
    fn validate(&self, dest: &Destination) -> Result<(), Violations>;
    /// Fills in or rewrites fields before storing (generated secrets, rotation,
    /// normalised flags). `previous` is the stored version on update.
    fn preprocess(
        &self,
        _dest: &mut Destination,
        _previous: Option<&Destination>,
        _raw: &RawInput,
        _actor: Actor,
        _now_ms: i64,
    ) -> Result<(), Violations> {
        Ok(())
    }
    /// Checks with the service itself before storing, after `preprocess`
    /// (Hookdeck verifies its source token and names the source).
    fn verify<'a>(
        &'a self,
        _dest: &'a mut Destination,
        _previous: Option<&'a Destination>,
    ) -> BoxFuture<'a, Result<(), Violations>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// `(target, target_url)` for display.
    fn target(&self, dest: &Destination) -> (String, Option<String>);
    /// Credentials as shown to API callers: sensitive fields masked.
    fn display_credentials(&self, dest: &Destination, _now_ms: i64) -> StringMap {
        match self.schema() {
            Some(s) => s.display_credentials(&dest.credentials),
            None => dest.credentials.clone(),
        }
    }
    /// Builds the shard-side publisher for a destination.
    fn publisher(&self, dest: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError>;
}

/// Why a stored destination has no publisher: each attempt fails with this
/// text (code `ERR`) until the destination is changed. Creation validates
/// the same fields, so this is for destinations stored before a rule was
/// added, or written to the store by other means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublisherError {
    /// A field that must be set is not (`config.region`).
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field holds a value the type cannot use.
    #[error("{0} is invalid")]
    Invalid(&'static str),
    /// A field holds a value the type cannot use; `why` completes the sentence.
    #[error("{field} {why}")]
    Unusable { field: &'static str, why: &'static str },
    /// A field was refused by what reads it (a template, a URL), with its reason.
    #[error("{field}: {reason}")]
    Refused { field: &'static str, reason: String },
    /// The destination's type is not in this build's registry.
    #[error("destination type {0} is not supported by this build")]
    Unsupported(String),
}

/// Deployment-wide settings every publisher may need.
#[derive(Clone)]
pub struct PublishContext {
    pub config: Arc<Config>,
    pub webhook_signer: Arc<crate::signing::DefaultSigner>,
    /// TLS for broker types that take a rustls config: the Mozilla roots
    /// plus `OUTRIDER_DESTINATIONS_TLS_CA_FILE`.
    pub broker_tls: Arc<rustls::ClientConfig>,
    /// The roots behind `broker_tls`, for clients that dial the checked
    /// address and verify the certificate for the name
    /// ([`crate::http_client::named_tls`]).
    pub broker_roots: Arc<rustls::RootCertStore>,
    /// The same extra roots as PEM text, for clients that take them so
    /// (RabbitMQ's).
    pub broker_ca_pem: Option<Arc<str>>,
}

impl PublishContext {
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let signer = crate::signing::DefaultSigner::new(&config.webhook)?;
        let broker_roots = crate::http_client::roots_with(config.destinations_tls_ca_file.as_deref())
            .map_err(|e| format!("OUTRIDER_DESTINATIONS_TLS_CA_FILE: {e}"))?;
        let broker_tls = crate::http_client::client_config(broker_roots.clone());
        let broker_ca_pem = match config.destinations_tls_ca_file.as_deref() {
            Some(path) => {
                Some(Arc::from(std::fs::read_to_string(path).map_err(|e| {
                    format!("OUTRIDER_DESTINATIONS_TLS_CA_FILE: {}: {e}", path.display())
                })?))
            }
            None => None,
        };
        Ok(Self {
            config,
            webhook_signer: Arc::new(signer),
            broker_tls,
            broker_roots: Arc::new(broker_roots),
            broker_ca_pem,
        })
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let mut m = std::collections::HashMap::new();
        m.insert("AES_ENCRYPTION_SECRET".to_string(), "x".to_string());
        let src = crate::config::Sources::from_map(m);
        let config = Arc::new(Config::from_sources(&src).expect("the test config is valid"));
        Self::new(config).expect("the test config is valid")
    }
}

/// Failure codes that only the destination's owner can fix: refused or
/// insufficient credentials, an address the SSRF guard forbids, a Redis key
/// of the wrong type. Not retried on the schedule.
pub const PERMANENT_CODES: &[&str] = &["auth_failed", "access_denied", "forbidden", "wrong_type"];

/// Result of one delivery attempt at the adapter level.
#[derive(Debug, Clone)]
pub struct PublishResult {
    pub status: AttemptStatus,
    pub code: String,
    pub response_data: Option<Value>,
    /// `false` for a failure only the destination's owner can fix (refused
    /// credentials, a forbidden address): it is recorded and counts toward
    /// the consecutive-failure alert, but the schedule does not retry it
    /// (a manual retry still can, once the owner fixed it).
    pub retryable: bool,
    /// How long the destination asked us to wait (`Retry-After` on a 429
    /// or 503): the next retry waits at least this, up to the schedule's
    /// longest delay.
    pub retry_after: Option<std::time::Duration>,
    /// Nothing reached the destination, through no fault of its own (the
    /// operator's egress proxy is down or refuses our credentials): no
    /// attempt is recorded or counted, and the delivery is tried again
    /// later under the same attempt number. `response_data.error` says why.
    pub not_attempted: bool,
}

impl PublishResult {
    pub fn success(code: impl Into<String>, response_data: Value) -> Self {
        Self {
            status: AttemptStatus::Success,
            code: code.into(),
            response_data: Some(response_data),
            retryable: false,
            retry_after: None,
            not_attempted: false,
        }
    }

    /// A failed attempt with `{"error": ...}` that the schedule retries.
    pub fn failed(code: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: AttemptStatus::Failed,
            code: code.into(),
            response_data: Some(serde_json::json!({ "error": error.into() })),
            retryable: true,
            retry_after: None,
            not_attempted: false,
        }
    }

    /// A failed attempt, permanent when `code` is one of [`PERMANENT_CODES`].
    pub fn error(code: &str, error: impl Into<String>) -> Self {
        if PERMANENT_CODES.contains(&code) {
            Self::permanent(code, error)
        } else {
            Self::failed(code, error)
        }
    }

    /// See [`Self::not_attempted`].
    pub fn not_attempted(why: impl Into<String>) -> Self {
        Self {
            not_attempted: true,
            ..Self::failed("not_attempted", why)
        }
    }

    /// A failed attempt that retrying cannot fix.
    pub fn permanent(code: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::failed(code, error)
        }
    }
}

/// Delivers events to one destination. Lives on its shard's thread.
pub trait Publisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult>;
}

/// All types this build can create and deliver to, in listing order.
pub struct Registry {
    types: Vec<Box<dyn DestinationType>>,
    overrides: Arc<crate::metadata_overrides::Overrides>,
}

impl Registry {
    pub fn new(config: &Arc<Config>) -> Self {
        let aws_creds = aws::CredentialPolicy::new(config);
        // Outpost's listing order, then the types Outpost does not have.
        Self {
            types: vec![
                Box::new(webhook::Webhook::new(config.clone())),
                Box::new(hookdeck::Hookdeck::new(config.clone())),
                Box::new(aws_sqs::AwsSqs { credentials: aws_creds }),
                Box::new(aws_kinesis::AwsKinesis { credentials: aws_creds }),
                Box::new(aws_s3::AwsS3 { credentials: aws_creds }),
                Box::new(gcp_pubsub::GcpPubSub),
                Box::new(azure_servicebus::AzureServiceBus),
                Box::new(rabbitmq::RabbitMq),
                Box::new(kafka::Kafka),
                Box::new(aws_eventbridge::AwsEventBridge { credentials: aws_creds }),
                Box::new(nats::Nats),
                Box::new(mqtt::Mqtt),
                Box::new(redis_stream::RedisStream),
                #[cfg(test)]
                Box::new(test_panic::Panicking),
            ],
            overrides: config.destination_metadata.clone(),
        }
    }

    /// `t`'s `/destination-types` description, with the operator's
    /// overrides (`DESTINATIONS_METADATA_PATH`) applied.
    pub fn metadata(&self, t: &dyn DestinationType) -> Value {
        let mut m = t.metadata();
        self.overrides.apply(t.kind(), &mut m);
        m
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
/// Broker types send it as message attributes or headers.
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

/// A destination of `kind` with the given config and credentials, for unit tests.
#[cfg(test)]
pub(crate) fn test_destination(kind: &str, config: &[(&str, &str)], credentials: &[(&str, &str)]) -> Destination {
    let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Destination {
        id: "des_test".into(),
        tenant_id: "t".into(),
        kind: kind.into(),
        topics: vec!["*".into()],
        filter: None,
        config: map(config),
        credentials: map(credentials),
        delivery_metadata: None,
        metadata: None,
        created_at: 0,
        updated_at: 0,
        disabled_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_timeout_key() {
        let ctx = PublishContext::for_tests();
        let listed: Vec<&str> = Registry::new(&ctx.config)
            .all()
            .map(|t| t.kind())
            .filter(|k| *k != "test_panic")
            .collect();
        let keyed: Vec<&str> = crate::config::TYPE_TIMEOUT_KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, keyed);
    }
}

/// Unit tests only: a type whose publisher panics, standing for a bug in a
/// publisher, which a shard must survive.
#[cfg(test)]
pub(crate) mod test_panic {
    use super::*;

    pub struct Panicking;

    impl DestinationType for Panicking {
        fn kind(&self) -> &'static str {
            "test_panic"
        }
        fn validate(&self, _dest: &Destination) -> Result<(), Violations> {
            Ok(())
        }
        fn target(&self, _dest: &Destination) -> (String, Option<String>) {
            ("panic".into(), None)
        }
        fn publisher(&self, _dest: &Destination, _ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
            Ok(Box::new(PanickingPublisher))
        }
    }

    struct PanickingPublisher;

    impl Publisher for PanickingPublisher {
        fn publish<'a>(&'a self, _: &'a ShardClients, _: &'a Event, _: i64) -> LocalBoxFuture<'a, PublishResult> {
            Box::pin(async { panic!("a publisher bug (test)") })
        }
    }
}
