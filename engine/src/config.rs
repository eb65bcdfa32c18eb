//! One typed configuration, loaded from built-in defaults, then a config file
//! (YAML or dotenv), then environment variables (highest precedence).
//!
//! Names and defaults follow Outpost's (`API_PORT`, `TOPICS`, `RETRY_SCHEDULE`, ...)
//! so an Outpost deployment's environment works unchanged. Keys that only
//! Outrider understands are prefixed `OUTRIDER_` (except `DELIVERY_SHARDS`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;

/// A configuration error always names the key that is wrong.
// Settings types owned by the modules that use them; the loader below
// fills them in.
pub use crate::alerts::{AlertConfig, ExhaustedScope};
pub use crate::ids::IdGen;
pub use crate::signing::{
    valid_header_token, HeaderName, SignatureAlgorithm, SignatureEncoding, WebhookConfig, WebhookMode,
    PROTECTED_HEADERS, RESERVED_HEADERS,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{key} is required")]
    Missing { key: &'static str },
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Which services this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    All,
    Api,
    Delivery,
    Log,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub service: Service,
    pub log_level: String,
    /// `LOG_FORMAT`: `text` (default) or `json`, one object per line.
    pub log_format: LogFormat,
    /// `LOG_RETENTION_DAYS`: log rows (events, attempts and their metrics)
    /// older than this many whole UTC days are deleted; `None` keeps them.
    pub log_retention_days: Option<u32>,
    pub api_port: u16,
    /// OpenTelemetry export (`OTEL_*`); `None` without `OTEL_SERVICE_NAME`.
    pub otel: Option<crate::otel::OtelConfig>,
    /// `METRICS_PORT`: a second listener for `GET /metrics` only; when set,
    /// the API port does not serve it.
    pub metrics_port: Option<u16>,
    /// Empty means no authentication at all (Outpost's "VPC mode").
    pub api_key: Secret,
    pub api_jwt_secret: Secret,
    pub aes_encryption_secret: Secret,
    pub deployment_id: String,
    pub topics: Vec<String>,
    pub topics_allow_wildcards: bool,
    pub http_user_agent: String,
    pub max_destinations_per_tenant: usize,
    pub delivery_timeout: Duration,
    /// Types whose timeout differs from `delivery_timeout` (`TYPE_TIMEOUT_KEYS`).
    pub type_delivery_timeouts: HashMap<&'static str, Duration>,
    pub publish_idempotency_key_ttl: Duration,
    /// Queue mode: how long a delivery task whose outcome was committed is
    /// remembered in Redis, so a copy the broker hands out again (its ack
    /// was lost with a node) is acked instead of attempted.
    pub delivery_idempotency_key_ttl: Duration,
    pub retry: RetryConfig,
    pub idgen: IdGen,
    pub event_id_prefix: String,
    pub destination_id_prefix: String,
    pub attempt_id_prefix: String,
    pub webhook: WebhookConfig,
    /// Where the embedded store keeps its database.
    pub data_dir: PathBuf,
    /// Number of delivery shards; default = number of cores.
    pub delivery_shards: usize,
    /// In-flight deliveries per shard.
    pub delivery_max_concurrency: usize,
    /// In-flight deliveries per destination on its shard, so one slow
    /// destination cannot take every slot of the shard.
    pub destination_max_concurrency: usize,
    /// How long a stopping node waits for attempts in flight.
    pub shutdown_drain_timeout: Duration,
    /// Turns off the SSRF guard for webhook URLs and broker addresses.
    pub allow_private_destinations: bool,
    /// Internal networks destinations may reach with the guard on
    /// (`OUTRIDER_ALLOWED_PRIVATE_NETWORKS`, comma-separated CIDRs).
    pub allowed_private_networks: Vec<ipnet::IpNet>,
    /// Hookdeck's API (token verification) and publish base URLs; settable
    /// so a test or a proxy can stand in for Hookdeck.
    pub hookdeck_api_url: String,
    pub hookdeck_publish_url: String,
    /// `aws_kinesis` records are `{"data","metadata"}` (true, Outpost's
    /// default) or the bare event data.
    pub kinesis_metadata_in_payload: bool,
    /// Extra PEM roots trusted, besides the Mozilla roots, when the `kafka`
    /// and `azure_servicebus` types connect over TLS (a private CA).
    pub destinations_tls_ca_file: Option<PathBuf>,
    /// AWS destinations without keys call AWS as the server (its default
    /// credential chain); admins only (`destinations::aws::CredentialPolicy`).
    pub destinations_aws_default_credentials: bool,
    /// Embedded store: fsync every commit (FULL) or rely on the WAL (NORMAL).
    pub embedded_synchronous_full: bool,
    /// Size at which a shard's journal segment is closed and the next begins
    /// (`OUTRIDER_JOURNAL_SEGMENT_BYTES`; small values are for tests).
    pub journal_segment_bytes: u64,
    /// AWS SQS as the delivery queue (wins over RabbitMQ, as in Outpost).
    pub sqs: Option<crate::queue::sqs::SqsConfig>,
    /// GCP Pub/Sub as the delivery queue (after SQS, before RabbitMQ).
    pub pubsub: Option<crate::queue::pubsub::PubSubConfig>,
    /// The delivery queue between API and delivery nodes.
    pub rabbitmq: Option<crate::queue::rabbitmq::RabbitConfig>,
    /// Publish queue on AWS SQS (chosen first, as in Outpost).
    pub publish_sqs: Option<crate::queue::sqs::SqsConfig>,
    /// Publish queue on GCP Pub/Sub.
    pub publish_pubsub: Option<crate::queue::pubsub::PubSubConfig>,
    /// An inbound queue producers publish events to (same JSON as `POST /publish`).
    pub publish_rabbitmq: Option<crate::queue::rabbitmq::RabbitConfig>,
    /// Redis entity store shared by all nodes; `None` keeps entities embedded.
    pub redis: Option<crate::store::redis::RedisConfig>,
    /// PostgreSQL log store; `None` keeps logs in the embedded store.
    pub postgres_url: Option<Secret>,
    /// Most log records shipped to the log store in one batch.
    pub log_batch_size: usize,
    /// Messages taken from the publish queue at once (`PUBLISH_MAX_CONCURRENCY`).
    pub publish_max_concurrency: u16,
    /// One line per Outpost setting that is set but ignored or not built
    /// yet (see `outpost_settings`), logged at start.
    pub notices: Vec<String>,
    /// `DESTINATIONS_METADATA_PATH`: what `/destination-types` says per type.
    pub destination_metadata: Arc<crate::metadata_overrides::Overrides>,
    /// How long a start waits for a configured back end before refusing.
    pub backend_connect_timeout: Duration,
    /// Consecutive-failure alerts, auto-disable and exhausted-retries alerts.
    pub alert: AlertConfig,
    /// Operator events: `None` when `OPERATION_EVENTS_TOPICS` is empty or unset.
    pub operator_events: Option<crate::opevents::OperatorEventsConfig>,
    /// The tenant portal's branding, links and optional features (`PORTAL_*`).
    pub portal: crate::portal::PortalConfig,
    /// True when the server started with no configuration at all and generated its secrets.
    pub dev_mode: bool,
    /// Where the generated dev secrets were written, in dev mode.
    pub dev_credentials_path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Explicit per-retry delays; when set, max retries = its length.
    pub schedule: Vec<Duration>,
    pub interval: Duration,
    pub max_limit: u32,
    /// `OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES`: failures only the
    /// destination's owner can fix (refused credentials, a forbidden
    /// address) wait for a manual retry instead of the schedule. Off by
    /// default: Outpost retries every failure on the schedule.
    pub skip_permanent: bool,
}

impl RetryConfig {
    /// Number of automatic retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        if self.schedule.is_empty() {
            self.max_limit
        } else {
            self.schedule.len() as u32
        }
    }

    /// The longest delay the schedule ever waits: what a destination's
    /// `Retry-After` is capped at.
    pub fn max_delay(&self) -> Duration {
        if self.schedule.is_empty() {
            self.delay(self.max_limit.max(1))
        } else {
            self.schedule.iter().copied().max().unwrap_or_default()
        }
    }

    /// Delay before retry number `n` (1-based): `schedule[n-1]` or `interval * 2^(n-1)`.
    pub fn delay(&self, n: u32) -> Duration {
        let i = n.saturating_sub(1);
        if let Some(d) = self.schedule.get(i as usize) {
            return *d;
        }
        let factor = 1u64.checked_shl(i.min(40)).unwrap_or(u64::MAX);
        self.interval
            .checked_mul(factor.min(u32::MAX as u64) as u32)
            .unwrap_or(Duration::from_secs(u32::MAX as u64))
    }
}

/// Per-type delivery timeouts: a destination type and the key that sets
/// its timeout (YAML: `destinations.<type>.timeout_seconds`); unset, a type
/// gets `DELIVERY_TIMEOUT_SECONDS`.
pub const TYPE_TIMEOUT_KEYS: &[(&str, &str)] = &[
    ("webhook", "DESTINATIONS_WEBHOOK_TIMEOUT_SECONDS"),
    ("hookdeck", "DESTINATIONS_HOOKDECK_TIMEOUT_SECONDS"),
    ("aws_sqs", "DESTINATIONS_AWS_SQS_TIMEOUT_SECONDS"),
    ("aws_kinesis", "DESTINATIONS_AWS_KINESIS_TIMEOUT_SECONDS"),
    ("aws_s3", "DESTINATIONS_AWS_S3_TIMEOUT_SECONDS"),
    ("gcp_pubsub", "DESTINATIONS_GCP_PUBSUB_TIMEOUT_SECONDS"),
    ("azure_servicebus", "DESTINATIONS_AZURE_SERVICEBUS_TIMEOUT_SECONDS"),
    ("rabbitmq", "DESTINATIONS_RABBITMQ_TIMEOUT_SECONDS"),
    ("kafka", "DESTINATIONS_KAFKA_TIMEOUT_SECONDS"),
    ("aws_eventbridge", "DESTINATIONS_AWS_EVENTBRIDGE_TIMEOUT_SECONDS"),
    ("nats", "DESTINATIONS_NATS_TIMEOUT_SECONDS"),
    ("mqtt", "DESTINATIONS_MQTT_TIMEOUT_SECONDS"),
    ("redis_stream", "DESTINATIONS_REDIS_STREAM_TIMEOUT_SECONDS"),
];

/// YAML path → environment name, for the keys a YAML file may set.
const YAML_KEYS: &[(&str, &str)] = &[
    ("service", "SERVICE"),
    ("portal.proxy_url", "PORTAL_PROXY_URL"),
    ("portal.referer_url", "PORTAL_REFERER_URL"),
    ("portal.refresh_url", "PORTAL_REFRESH_URL"),
    ("portal.favicon_url", "PORTAL_FAVICON_URL"),
    ("portal.brand_color", "PORTAL_BRAND_COLOR"),
    ("portal.logo", "PORTAL_LOGO"),
    ("portal.logo_dark", "PORTAL_LOGO_DARK"),
    ("portal.organization_name", "PORTAL_ORGANIZATION_NAME"),
    ("portal.force_theme", "PORTAL_FORCE_THEME"),
    ("portal.disable_outpost_branding", "PORTAL_DISABLE_OUTPOST_BRANDING"),
    ("portal.enable_destination_filter", "PORTAL_ENABLE_DESTINATION_FILTER"),
    (
        "portal.enable_webhook_custom_headers",
        "PORTAL_ENABLE_WEBHOOK_CUSTOM_HEADERS",
    ),
    ("log_level", "LOG_LEVEL"),
    ("otel.service_name", "OTEL_SERVICE_NAME"),
    ("otel.exporter", "OTEL_EXPORTER"),
    ("otel.protocol", "OTEL_PROTOCOL"),
    ("log_format", "LOG_FORMAT"),
    ("log_retention_days", "LOG_RETENTION_DAYS"),
    ("api_port", "API_PORT"),
    ("metrics_port", "METRICS_PORT"),
    ("api_key", "API_KEY"),
    ("api_jwt_secret", "API_JWT_SECRET"),
    ("aes_encryption_secret", "AES_ENCRYPTION_SECRET"),
    ("deployment_id", "DEPLOYMENT_ID"),
    ("topics", "TOPICS"),
    ("topics_allow_wildcards", "TOPICS_ALLOW_WILDCARDS"),
    ("http_user_agent", "HTTP_USER_AGENT"),
    ("max_destinations_per_tenant", "MAX_DESTINATIONS_PER_TENANT"),
    ("delivery_timeout_seconds", "DELIVERY_TIMEOUT_SECONDS"),
    ("publish_idempotency_key_ttl", "PUBLISH_IDEMPOTENCY_KEY_TTL"),
    ("delivery_idempotency_key_ttl", "DELIVERY_IDEMPOTENCY_KEY_TTL"),
    ("retry_schedule", "RETRY_SCHEDULE"),
    ("retry_interval_seconds", "RETRY_INTERVAL_SECONDS"),
    ("retry_max_limit", "MAX_RETRY_LIMIT"),
    ("delivery_max_concurrency", "DELIVERY_MAX_CONCURRENCY"),
    ("idgen.type", "IDGEN_TYPE"),
    ("idgen.event_prefix", "IDGEN_EVENT_PREFIX"),
    ("idgen.destination_prefix", "IDGEN_DESTINATION_PREFIX"),
    ("idgen.attempt_prefix", "IDGEN_ATTEMPT_PREFIX"),
    (
        "destinations.include_millisecond_timestamp",
        "DESTINATIONS_INCLUDE_MILLISECOND_TIMESTAMP",
    ),
    (
        "destinations.aws_kinesis.metadata_in_payload",
        "DESTINATIONS_AWS_KINESIS_METADATA_IN_PAYLOAD",
    ),
    ("destinations.webhook.mode", "DESTINATIONS_WEBHOOK_MODE"),
    (
        "destinations.webhook.header_prefix",
        "DESTINATIONS_WEBHOOK_HEADER_PREFIX",
    ),
    (
        "destinations.webhook.event_id_header_name",
        "DESTINATIONS_WEBHOOK_EVENT_ID_HEADER_NAME",
    ),
    (
        "destinations.webhook.signature_header_name",
        "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME",
    ),
    (
        "destinations.webhook.timestamp_header_name",
        "DESTINATIONS_WEBHOOK_TIMESTAMP_HEADER_NAME",
    ),
    (
        "destinations.webhook.topic_header_name",
        "DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME",
    ),
    (
        "destinations.webhook.disable_default_event_id_header",
        "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_EVENT_ID_HEADER",
    ),
    (
        "destinations.webhook.disable_default_signature_header",
        "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_SIGNATURE_HEADER",
    ),
    (
        "destinations.webhook.disable_default_timestamp_header",
        "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TIMESTAMP_HEADER",
    ),
    (
        "destinations.webhook.disable_default_topic_header",
        "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TOPIC_HEADER",
    ),
    (
        "destinations.webhook.signature_content_template",
        "DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE",
    ),
    (
        "destinations.webhook.signature_header_template",
        "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE",
    ),
    (
        "destinations.webhook.signature_encoding",
        "DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING",
    ),
    (
        "destinations.webhook.signature_algorithm",
        "DESTINATIONS_WEBHOOK_SIGNATURE_ALGORITHM",
    ),
    (
        "destinations.webhook.signing_secret_template",
        "DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE",
    ),
    (
        "destinations.webhook.max_response_body_bytes",
        "DESTINATIONS_WEBHOOK_MAX_RESPONSE_BODY_BYTES",
    ),
    ("destinations.webhook.proxy_url", "DESTINATIONS_WEBHOOK_PROXY_URL"),
    ("postgres", "POSTGRES_URL"),
    ("mqs.aws_sqs.region", "AWS_SQS_REGION"),
    ("mqs.aws_sqs.endpoint", "AWS_SQS_ENDPOINT"),
    ("mqs.aws_sqs.access_key_id", "AWS_SQS_ACCESS_KEY_ID"),
    ("mqs.aws_sqs.secret_access_key", "AWS_SQS_SECRET_ACCESS_KEY"),
    ("mqs.aws_sqs.delivery_queue", "AWS_SQS_DELIVERY_QUEUE"),
    ("mqs.gcp_pubsub.project", "GCP_PUBSUB_PROJECT"),
    (
        "mqs.gcp_pubsub.service_account_credentials",
        "GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
    ),
    ("mqs.gcp_pubsub.delivery_topic", "GCP_PUBSUB_DELIVERY_TOPIC"),
    (
        "mqs.gcp_pubsub.delivery_subscription",
        "GCP_PUBSUB_DELIVERY_SUBSCRIPTION",
    ),
    ("mqs.rabbitmq.server_url", "RABBITMQ_SERVER_URL"),
    ("mqs.rabbitmq.exchange", "RABBITMQ_EXCHANGE"),
    ("mqs.rabbitmq.delivery_queue", "RABBITMQ_DELIVERY_QUEUE"),
    ("mqs.auto_provision", "MQS_AUTO_PROVISION"),
    ("publishmq.aws_sqs.region", "PUBLISH_AWS_SQS_REGION"),
    ("publishmq.aws_sqs.endpoint", "PUBLISH_AWS_SQS_ENDPOINT"),
    ("publishmq.aws_sqs.access_key_id", "PUBLISH_AWS_SQS_ACCESS_KEY_ID"),
    (
        "publishmq.aws_sqs.secret_access_key",
        "PUBLISH_AWS_SQS_SECRET_ACCESS_KEY",
    ),
    ("publishmq.aws_sqs.queue", "PUBLISH_AWS_SQS_QUEUE"),
    ("publishmq.gcp_pubsub.project", "PUBLISH_GCP_PUBSUB_PROJECT"),
    ("publishmq.gcp_pubsub.topic", "PUBLISH_GCP_PUBSUB_TOPIC"),
    ("publishmq.gcp_pubsub.subscription", "PUBLISH_GCP_PUBSUB_SUBSCRIPTION"),
    (
        "publishmq.gcp_pubsub.service_account_credentials",
        "PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
    ),
    ("publishmq.rabbitmq.server_url", "PUBLISH_RABBITMQ_SERVER_URL"),
    ("publishmq.rabbitmq.exchange", "PUBLISH_RABBITMQ_EXCHANGE"),
    ("publishmq.rabbitmq.queue", "PUBLISH_RABBITMQ_QUEUE"),
    ("redis.host", "REDIS_HOST"),
    ("redis.port", "REDIS_PORT"),
    ("redis.username", "REDIS_USERNAME"),
    ("redis.password", "REDIS_PASSWORD"),
    ("redis.database", "REDIS_DATABASE"),
    ("redis.tls_enabled", "REDIS_TLS_ENABLED"),
    ("redis.cluster_enabled", "REDIS_CLUSTER_ENABLED"),
    ("redis.tls_verify", "REDIS_TLS_VERIFY"),
    ("publish_max_concurrency", "PUBLISH_MAX_CONCURRENCY"),
    ("outrider.redis_tls_ca_file", "OUTRIDER_REDIS_TLS_CA_FILE"),
    ("outrider.rabbitmq_tls_ca_file", "OUTRIDER_RABBITMQ_TLS_CA_FILE"),
    ("outrider.redis_tls_insecure", "OUTRIDER_REDIS_TLS_INSECURE"),
    ("log_batch_size", "LOG_BATCH_SIZE"),
    ("alert.consecutive_failure_count", "ALERT_CONSECUTIVE_FAILURE_COUNT"),
    ("alert.auto_disable_destination", "ALERT_AUTO_DISABLE_DESTINATION"),
    (
        "alert.exhausted_retries_window_seconds",
        "ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS",
    ),
    (
        "alert.exhausted_retries_scope",
        "OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE",
    ),
    ("operator_events.topics", "OPERATION_EVENTS_TOPICS"),
    ("operator_events.http.url", "OPERATION_EVENTS_HTTP_URL"),
    (
        "operator_events.http.signing_secret",
        "OPERATION_EVENTS_HTTP_SIGNING_SECRET",
    ),
    (
        "operator_events.aws_sqs.queue_url",
        "OPERATION_EVENTS_AWS_SQS_QUEUE_URL",
    ),
    (
        "operator_events.aws_sqs.access_key_id",
        "OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID",
    ),
    (
        "operator_events.aws_sqs.secret_access_key",
        "OPERATION_EVENTS_AWS_SQS_SECRET_ACCESS_KEY",
    ),
    ("operator_events.aws_sqs.region", "OPERATION_EVENTS_AWS_SQS_REGION"),
    ("operator_events.aws_sqs.endpoint", "OPERATION_EVENTS_AWS_SQS_ENDPOINT"),
    (
        "operator_events.gcp_pubsub.project_id",
        "OPERATION_EVENTS_GCP_PUBSUB_PROJECT_ID",
    ),
    (
        "operator_events.gcp_pubsub.topic_id",
        "OPERATION_EVENTS_GCP_PUBSUB_TOPIC_ID",
    ),
    (
        "operator_events.gcp_pubsub.credentials",
        "OPERATION_EVENTS_GCP_PUBSUB_CREDENTIALS",
    ),
    (
        "operator_events.rabbitmq.server_url",
        "OPERATION_EVENTS_RABBITMQ_SERVER_URL",
    ),
    (
        "operator_events.rabbitmq.exchange",
        "OPERATION_EVENTS_RABBITMQ_EXCHANGE",
    ),
    ("outrider.data_dir", "OUTRIDER_DATA_DIR"),
    (
        "outrider.backend_connect_timeout_seconds",
        "OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS",
    ),
    ("outrider.delivery_shards", "DELIVERY_SHARDS"),
    (
        "outrider.destination_max_concurrency",
        "OUTRIDER_DESTINATION_MAX_CONCURRENCY",
    ),
    ("outrider.shutdown_drain_seconds", "OUTRIDER_SHUTDOWN_DRAIN_SECONDS"),
    (
        "outrider.allow_private_destinations",
        "OUTRIDER_ALLOW_PRIVATE_DESTINATIONS",
    ),
    ("outrider.allowed_private_networks", "OUTRIDER_ALLOWED_PRIVATE_NETWORKS"),
    ("outrider.embedded_synchronous", "OUTRIDER_EMBEDDED_SYNCHRONOUS"),
    ("outrider.journal_segment_bytes", "OUTRIDER_JOURNAL_SEGMENT_BYTES"),
    (
        "outrider.retry_skip_permanent_failures",
        "OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES",
    ),
    ("outrider.hookdeck_api_url", "OUTRIDER_HOOKDECK_API_URL"),
    ("outrider.hookdeck_publish_url", "OUTRIDER_HOOKDECK_PUBLISH_URL"),
    ("outrider.destinations_tls_ca_file", "OUTRIDER_DESTINATIONS_TLS_CA_FILE"),
    (
        "outrider.destinations_aws_default_credentials",
        "OUTRIDER_DESTINATIONS_AWS_DEFAULT_CREDENTIALS",
    ),
];

/// Where Outpost looks for per-type metadata overrides when
/// `DESTINATIONS_METADATA_PATH` is unset.
const DEFAULT_METADATA_DIR: &str = "config/outpost/destinations";

/// Files looked for, in order, when neither `--config` nor `CONFIG` names one.
const DEFAULT_FILES: &[&str] = &[
    ".env",
    ".outpost.yaml",
    "config/outpost.yaml",
    "config/outpost/config.yaml",
    "config/outpost/.env",
];

/// The raw key/value view of all sources, before typing.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    values: HashMap<String, String>,
    pub file: Option<PathBuf>,
    /// Every key looked up, so a test can hold the settings table to what
    /// the loader really reads.
    read: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Sources {
    /// Reads the config file (explicit path, `CONFIG`, or the first default file
    /// that exists) and overlays the given environment.
    pub fn load(explicit: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let path = explicit
            .map(Path::to_path_buf)
            .or_else(|| env.get("CONFIG").filter(|s| !s.is_empty()).map(PathBuf::from))
            .or_else(|| DEFAULT_FILES.iter().map(PathBuf::from).find(|p| p.is_file()));
        let mut values = HashMap::new();
        if let Some(p) = &path {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                path: p.clone(),
                message: e.to_string(),
            })?;
            let is_env = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".env"));
            if is_env {
                values.extend(parse_dotenv(&text));
            } else {
                values.extend(parse_yaml(&text).map_err(|message| ConfigError::File {
                    path: p.clone(),
                    message,
                })?);
            }
        }
        values.extend(env);
        Ok(Self {
            values,
            file: path,
            read: Default::default(),
        })
    }

    pub fn from_map(values: HashMap<String, String>) -> Self {
        Self {
            values,
            file: None,
            read: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        if !self.read.borrow().contains(key) {
            self.read.borrow_mut().insert(key.to_string());
        }
        self.values.get(key).map(String::as_str)
    }

    /// A lookup that is not recorded: the settings check looks at every
    /// Outpost key, which says nothing about which ones are used.
    fn peek(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The keys looked up so far.
    pub fn keys_read(&self) -> std::collections::BTreeSet<String> {
        self.read.borrow().clone()
    }

    /// The keys set to a non-empty value.
    pub fn keys_set(&self) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, _)| k.as_str())
    }

    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|s| !s.is_empty())
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_string()
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.non_empty(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(key, format!("expected true or false, got {v:?}"))),
            },
        }
    }

    fn num<T: std::str::FromStr>(&self, key: &'static str, default: T) -> Result<T, ConfigError> {
        match self.non_empty(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(key, format!("expected a non-negative integer, got {v:?}"))),
        }
    }

    fn header_name(&self, name_key: &'static str, disable_key: &'static str) -> Result<HeaderName, ConfigError> {
        if self.bool(disable_key, false)? {
            return Ok(HeaderName::Disabled);
        }
        match self.get(name_key) {
            None => Ok(HeaderName::Default),
            Some(v) if v.trim().is_empty() => Ok(HeaderName::Disabled),
            Some(v) => {
                let v = v.trim();
                if !valid_header_token(v) {
                    return Err(invalid(name_key, format!("{v:?} is not a valid header name")));
                }
                if RESERVED_HEADERS.contains(&v.to_ascii_lowercase().as_str()) {
                    return Err(invalid(name_key, format!("{v:?} is a reserved header")));
                }
                Ok(HeaderName::Named(v.to_string()))
            }
        }
    }

    /// The first key set that configures a back end (Redis, PostgreSQL, a
    /// delivery or publish queue, operator events).
    fn backend_key(&self) -> Option<&'static str> {
        const PREFIXES: &[&str] = &[
            "REDIS_",
            "POSTGRES_",
            "RABBITMQ_",
            "AWS_SQS_",
            "GCP_PUBSUB_",
            "PUBLISH_",
            "OPERATION_EVENTS_",
        ];
        YAML_KEYS
            .iter()
            .map(|(_, env)| *env)
            .filter(|env| PREFIXES.iter().any(|p| env.starts_with(p)))
            .find(|env| self.non_empty(env).is_some())
    }

    /// Whether any source set anything at all: no file and no known key means
    /// "no configuration", which starts the embedded dev mode.
    pub fn is_empty_config(&self) -> bool {
        self.file.is_none()
            && ["API_KEY", "API_JWT_SECRET", "AES_ENCRYPTION_SECRET"]
                .iter()
                .all(|k| self.get(k).is_none())
    }
}

fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn parse_yaml(text: &str) -> Result<HashMap<String, String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    let per_type: Vec<(String, &str)> = TYPE_TIMEOUT_KEYS
        .iter()
        .map(|(kind, env)| (format!("destinations.{kind}.timeout_seconds"), *env))
        .collect();
    let keys = YAML_KEYS
        .iter()
        .map(|(path, env)| (*path, *env))
        .chain(per_type.iter().map(|(path, env)| (path.as_str(), *env)));
    for (path, env) in keys {
        let mut node = &doc;
        let mut found = true;
        for part in path.split('.') {
            match node.get(part) {
                Some(n) => node = n,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let value = match node {
            serde_yaml::Value::Null => String::new(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(|i| match i {
                    serde_yaml::Value::String(s) => Ok(s.clone()),
                    serde_yaml::Value::Number(n) => Ok(n.to_string()),
                    _ => Err(format!("{path}: list items must be strings or numbers")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(format!("{path}: expected a scalar or a list")),
        };
        out.insert(env.to_string(), value);
    }
    Ok(out)
}

fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `OUTRIDER_RABBITMQ_TLS_CA_FILE`'s certificates, read once at start.
fn rabbitmq_ca(src: &Sources) -> Result<Option<String>, ConfigError> {
    let Some(path) = src.non_empty("OUTRIDER_RABBITMQ_TLS_CA_FILE") else {
        return Ok(None);
    };
    let pem =
        std::fs::read_to_string(path).map_err(|e| invalid("OUTRIDER_RABBITMQ_TLS_CA_FILE", format!("{path}: {e}")))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            "OUTRIDER_RABBITMQ_TLS_CA_FILE",
            format!("{path}: no PEM certificate in the file"),
        ));
    }
    Ok(Some(pem))
}

impl Config {
    /// The SSRF guard every destination endpoint passes.
    pub fn ssrf_guard(&self) -> crate::ssrf::Guard {
        if self.allow_private_destinations {
            crate::ssrf::Guard::off()
        } else {
            crate::ssrf::Guard::on(self.allowed_private_networks.clone())
        }
    }

    /// The deadline of one attempt to a destination of `kind`.
    pub fn delivery_timeout_for(&self, kind: &str) -> Duration {
        self.type_delivery_timeouts
            .get(kind)
            .copied()
            .unwrap_or(self.delivery_timeout)
    }

    /// Types every value; the first bad key is reported by name.
    pub fn from_sources(src: &Sources) -> Result<Self, ConfigError> {
        let mut notices = crate::outpost_settings::check(|k| src.peek(k)).map_err(|b| invalid(b.key, b.message))?;
        // Outpost reads per-type metadata overrides from this directory when
        // DESTINATIONS_METADATA_PATH is unset; so do we.
        let metadata_dir = match src.non_empty("DESTINATIONS_METADATA_PATH") {
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(PathBuf::from(DEFAULT_METADATA_DIR)).filter(|d| d.is_dir()),
        };
        let destination_metadata = match metadata_dir {
            Some(dir) => {
                let kinds: Vec<&str> = TYPE_TIMEOUT_KEYS.iter().map(|(k, _)| *k).collect();
                let (o, more) = crate::metadata_overrides::Overrides::load(&dir, &kinds)
                    .map_err(|e| invalid("DESTINATIONS_METADATA_PATH", e.to_string()))?;
                notices.extend(more);
                o
            }
            None => crate::metadata_overrides::Overrides::default(),
        };
        notices.sort();
        let service = match src.non_empty("SERVICE").unwrap_or("all") {
            "all" | "" => Service::All,
            "api" => Service::Api,
            "delivery" => Service::Delivery,
            "log" => Service::Log,
            other => {
                return Err(invalid(
                    "SERVICE",
                    format!("expected api, delivery, log or all, got {other:?}"),
                ))
            }
        };
        match service {
            Service::Log => {
                return Err(invalid(
                    "SERVICE",
                    "there is no separate log service in Outrider: delivery nodes ship their logs to POSTGRES_URL themselves; run api and delivery nodes",
                ))
            }
            Service::Api | Service::Delivery
                if (src.non_empty("RABBITMQ_SERVER_URL").is_none()
                    && src.non_empty("AWS_SQS_REGION").is_none()
                    && src.non_empty("GCP_PUBSUB_PROJECT").is_none())
                    || src.non_empty("POSTGRES_URL").is_none() =>
            {
                return Err(invalid(
                    "SERVICE",
                    "running api and delivery as separate services needs a delivery queue (AWS_SQS_REGION, GCP_PUBSUB_PROJECT or RABBITMQ_SERVER_URL), REDIS_HOST and a shared log store (POSTGRES_URL)",
                ))
            }
            _ => {}
        }
        let deployment_id = src.string("DEPLOYMENT_ID", "");
        if !deployment_id.is_empty()
            && (deployment_id.len() > 64
                || !deployment_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(invalid("DEPLOYMENT_ID", "must match ^[a-zA-Z0-9_-]{1,64}$"));
        }
        let api_port: u16 = src.num("API_PORT", 3333)?;
        let retry_schedule = match src.non_empty("RETRY_SCHEDULE") {
            None => vec![],
            Some(v) => comma_list(v)
                .iter()
                .map(|s| match s.parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(Duration::from_secs(n)),
                    _ => Err(invalid(
                        "RETRY_SCHEDULE",
                        format!("each delay must be an integer number of seconds >= 1, got {s:?}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let retry_interval: u64 = src.num("RETRY_INTERVAL_SECONDS", 30)?;
        if retry_interval < 1 {
            return Err(invalid("RETRY_INTERVAL_SECONDS", "must be >= 1"));
        }
        let delivery_timeout: u64 = src.num("DELIVERY_TIMEOUT_SECONDS", 5)?;
        if delivery_timeout < 1 {
            return Err(invalid("DELIVERY_TIMEOUT_SECONDS", "must be >= 1"));
        }
        let mut type_delivery_timeouts = HashMap::new();
        for (kind, key) in TYPE_TIMEOUT_KEYS {
            if src.non_empty(key).is_some() {
                let secs: u64 = src.num(key, delivery_timeout)?;
                if secs < 1 {
                    return Err(invalid(key, "must be >= 1"));
                }
                type_delivery_timeouts.insert(*kind, Duration::from_secs(secs));
            }
        }
        let idgen = match src.non_empty("IDGEN_TYPE").unwrap_or("uuidv4") {
            "uuidv4" => IdGen::UuidV4,
            "uuidv7" => IdGen::UuidV7,
            "nanoid" => IdGen::Nanoid,
            other => {
                return Err(invalid(
                    "IDGEN_TYPE",
                    format!("expected uuidv4, uuidv7 or nanoid, got {other:?}"),
                ))
            }
        };
        let mode = match src.non_empty("DESTINATIONS_WEBHOOK_MODE").unwrap_or("default") {
            "default" => WebhookMode::Default,
            "standard" => WebhookMode::Standard,
            other => {
                return Err(invalid(
                    "DESTINATIONS_WEBHOOK_MODE",
                    format!("expected default or standard, got {other:?}"),
                ))
            }
        };
        let header_prefix = match src.get("DESTINATIONS_WEBHOOK_HEADER_PREFIX") {
            Some(v) => v.trim().to_string(),
            None if mode == WebhookMode::Standard => "webhook-".into(),
            None => "x-outpost-".into(),
        };
        let webhook = WebhookConfig {
            mode,
            header_prefix,
            event_id_header: src.header_name(
                "DESTINATIONS_WEBHOOK_EVENT_ID_HEADER_NAME",
                "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_EVENT_ID_HEADER",
            )?,
            signature_header: src.header_name(
                "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME",
                "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_SIGNATURE_HEADER",
            )?,
            timestamp_header: src.header_name(
                "DESTINATIONS_WEBHOOK_TIMESTAMP_HEADER_NAME",
                "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TIMESTAMP_HEADER",
            )?,
            topic_header: src.header_name(
                "DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME",
                "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TOPIC_HEADER",
            )?,
            signature_content_template: src
                .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE")
                .unwrap_or("{{.Body}}")
                .to_string(),
            signature_header_template: src
                .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE")
                .unwrap_or("v0={{.Signatures | join \",\"}}")
                .to_string(),
            signature_encoding: match src
                .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING")
                .unwrap_or("hex")
            {
                "hex" => SignatureEncoding::Hex,
                "base64" => SignatureEncoding::Base64,
                other => {
                    return Err(invalid(
                        "DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING",
                        format!("expected hex or base64, got {other:?}"),
                    ))
                }
            },
            // Outpost falls back to sha256 for unknown names; we do the same.
            signature_algorithm: match src.non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_ALGORITHM") {
                Some("hmac-sha1") => SignatureAlgorithm::HmacSha1,
                _ => SignatureAlgorithm::HmacSha256,
            },
            signing_secret_template: src
                .non_empty("DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE")
                .unwrap_or("whsec_{{.RandomHex}}")
                .to_string(),
            max_response_body_bytes: src.num("DESTINATIONS_WEBHOOK_MAX_RESPONSE_BODY_BYTES", 131_072)?,
            include_millisecond_timestamp: src.bool("DESTINATIONS_INCLUDE_MILLISECOND_TIMESTAMP", false)?,
            proxy: src
                .non_empty("DESTINATIONS_WEBHOOK_PROXY_URL")
                .map(crate::http_client::Proxy::parse)
                .transpose()
                .map_err(|e| invalid("DESTINATIONS_WEBHOOK_PROXY_URL", e))?,
        };
        crate::signing::validate_templates(&webhook).map_err(|(key, message)| invalid(key, message))?;
        check_header_collisions(&webhook)?;

        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let delivery_shards: usize = src.num("DELIVERY_SHARDS", cores)?;
        if delivery_shards == 0 || delivery_shards > 1024 {
            return Err(invalid("DELIVERY_SHARDS", "must be between 1 and 1024"));
        }
        let delivery_max_concurrency: usize = src.num("DELIVERY_MAX_CONCURRENCY", 512)?;
        if delivery_max_concurrency == 0 {
            return Err(invalid("DELIVERY_MAX_CONCURRENCY", "must be >= 1"));
        }
        let destination_max_concurrency: usize =
            src.num("OUTRIDER_DESTINATION_MAX_CONCURRENCY", delivery_max_concurrency.min(64))?;
        if destination_max_concurrency == 0 {
            return Err(invalid("OUTRIDER_DESTINATION_MAX_CONCURRENCY", "must be >= 1"));
        }
        let shutdown_drain_seconds: u64 = src.num("OUTRIDER_SHUTDOWN_DRAIN_SECONDS", 10)?;
        let embedded_synchronous_full = match src.non_empty("OUTRIDER_EMBEDDED_SYNCHRONOUS").unwrap_or("full") {
            "full" => true,
            "normal" => false,
            other => {
                return Err(invalid(
                    "OUTRIDER_EMBEDDED_SYNCHRONOUS",
                    format!("expected full or normal, got {other:?}"),
                ))
            }
        };

        let journal_segment_bytes: u64 = src.num("OUTRIDER_JOURNAL_SEGMENT_BYTES", crate::journal::SEGMENT_BYTES)?;
        if !(4096..=(1u64 << 39)).contains(&journal_segment_bytes) {
            return Err(invalid(
                "OUTRIDER_JOURNAL_SEGMENT_BYTES",
                "must be between 4096 and 549755813888 (512 GiB)",
            ));
        }

        let aes_encryption_secret = src.string("AES_ENCRYPTION_SECRET", "");
        if aes_encryption_secret.is_empty() {
            return Err(ConfigError::Missing {
                key: "AES_ENCRYPTION_SECRET",
            });
        }

        Ok(Config {
            service,
            log_level: src.non_empty("LOG_LEVEL").unwrap_or("info").to_string(),
            log_format: match src.non_empty("LOG_FORMAT").map(str::to_ascii_lowercase).as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => return Err(invalid("LOG_FORMAT", format!("'{other}' is not one of text, json"))),
            },
            log_retention_days: match src.num("LOG_RETENTION_DAYS", 0u32)? {
                0 => None,
                n if n > 36_500 => return Err(invalid("LOG_RETENTION_DAYS", "must be at most 36500 (100 years)")),
                n => Some(n),
            },
            api_port,
            otel: crate::otel::OtelConfig::resolve(|k| src.non_empty(k).map(String::from))
                .map_err(|b| invalid(b.key, b.message))?,
            portal: crate::portal::PortalConfig::resolve(|k| src.non_empty(k).map(String::from))
                .map_err(|b| invalid(b.key, b.message))?,
            metrics_port: match src.num("METRICS_PORT", 0u16)? {
                0 => None,
                p if p == api_port => return Err(invalid("METRICS_PORT", "must differ from API_PORT")),
                p => Some(p),
            },
            api_key: src.string("API_KEY", "").into(),
            api_jwt_secret: src.string("API_JWT_SECRET", "").into(),
            aes_encryption_secret: aes_encryption_secret.into(),
            deployment_id,
            topics: src.get("TOPICS").map(comma_list).unwrap_or_default(),
            topics_allow_wildcards: src.bool("TOPICS_ALLOW_WILDCARDS", false)?,
            http_user_agent: src
                .non_empty("HTTP_USER_AGENT")
                .map(String::from)
                .unwrap_or_else(|| format!("Outrider/{}", env!("CARGO_PKG_VERSION"))),
            max_destinations_per_tenant: src.num("MAX_DESTINATIONS_PER_TENANT", 20)?,
            delivery_timeout: Duration::from_secs(delivery_timeout),
            type_delivery_timeouts,
            publish_idempotency_key_ttl: Duration::from_secs(src.num("PUBLISH_IDEMPOTENCY_KEY_TTL", 3600)?),
            delivery_idempotency_key_ttl: Duration::from_secs(src.num("DELIVERY_IDEMPOTENCY_KEY_TTL", 3600)?.max(1)),
            retry: RetryConfig {
                schedule: retry_schedule,
                interval: Duration::from_secs(retry_interval),
                max_limit: src.num("MAX_RETRY_LIMIT", 10)?,
                skip_permanent: src.bool("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", false)?,
            },
            idgen,
            event_id_prefix: src.string("IDGEN_EVENT_PREFIX", ""),
            destination_id_prefix: src.string("IDGEN_DESTINATION_PREFIX", ""),
            attempt_id_prefix: src.string("IDGEN_ATTEMPT_PREFIX", ""),
            webhook,
            data_dir: PathBuf::from(src.non_empty("OUTRIDER_DATA_DIR").unwrap_or("./data")),
            delivery_shards,
            delivery_max_concurrency,
            destination_max_concurrency,
            shutdown_drain_timeout: Duration::from_secs(shutdown_drain_seconds),
            allow_private_destinations: src.bool("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", false)?,
            allowed_private_networks: crate::ssrf::parse_networks(&src.string("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", ""))
                .map_err(|m| invalid("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", m))?,
            hookdeck_api_url: src
                .string("OUTRIDER_HOOKDECK_API_URL", "https://api.hookdeck.com/2025-01-01")
                .trim_end_matches('/')
                .to_string(),
            kinesis_metadata_in_payload: src.bool("DESTINATIONS_AWS_KINESIS_METADATA_IN_PAYLOAD", true)?,
            destinations_tls_ca_file: src.non_empty("OUTRIDER_DESTINATIONS_TLS_CA_FILE").map(PathBuf::from),
            destinations_aws_default_credentials: src.bool("OUTRIDER_DESTINATIONS_AWS_DEFAULT_CREDENTIALS", false)?,
            hookdeck_publish_url: src
                .string("OUTRIDER_HOOKDECK_PUBLISH_URL", "https://hkdk.events")
                .trim_end_matches('/')
                .to_string(),
            embedded_synchronous_full,
            journal_segment_bytes,
            redis: match src.non_empty("REDIS_HOST") {
                None => None,
                Some(host) => {
                    let cluster = src.bool("REDIS_CLUSTER_ENABLED", false)?;
                    if cluster && src.non_empty("OUTRIDER_REDIS_TLS_CA_FILE").is_some() {
                        return Err(invalid(
                            "OUTRIDER_REDIS_TLS_CA_FILE",
                            "a custom CA is not supported with REDIS_CLUSTER_ENABLED yet: use system roots or OUTRIDER_REDIS_TLS_INSECURE",
                        ));
                    }
                    if cluster && src.num("REDIS_DATABASE", 0i64)? != 0 {
                        return Err(invalid("REDIS_DATABASE", "a Redis Cluster has only database 0"));
                    }
                    Some(crate::store::redis::RedisConfig {
                        host: host.to_string(),
                        port: src.num("REDIS_PORT", 6379)?,
                        username: src.non_empty("REDIS_USERNAME").map(String::from),
                        password: src.non_empty("REDIS_PASSWORD").map(String::from),
                        database: src.num("REDIS_DATABASE", 0)?,
                        tls: if src.bool("REDIS_TLS_ENABLED", false)? {
                            Some(crate::store::redis::RedisTls {
                                ca_file: src.non_empty("OUTRIDER_REDIS_TLS_CA_FILE").map(PathBuf::from),
                                // Outpost's newer REDIS_TLS_VERIFY=false means the same.
                                insecure: src.bool("OUTRIDER_REDIS_TLS_INSECURE", false)?
                                    || !src.bool("REDIS_TLS_VERIFY", true)?,
                            })
                        } else {
                            None
                        },
                        cluster,
                    })
                }
            },
            rabbitmq: match src.non_empty("RABBITMQ_SERVER_URL") {
                None => None,
                Some(url) => {
                    if src.non_empty("REDIS_HOST").is_none() {
                        return Err(invalid(
                            "RABBITMQ_SERVER_URL",
                            "a delivery queue needs REDIS_HOST too: tenants, destinations and publish idempotency are shared through Redis",
                        ));
                    }
                    Some(crate::queue::rabbitmq::RabbitConfig {
                        url: url.into(),
                        exchange: src.non_empty("RABBITMQ_EXCHANGE").unwrap_or("outpost").to_string(),
                        delivery_queue: src
                            .non_empty("RABBITMQ_DELIVERY_QUEUE")
                            .unwrap_or("outpost-delivery")
                            .to_string(),
                        dlq: src.non_empty("RABBITMQ_DELIVERY_DLQ").map(String::from),
                        auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                        ca_pem: rabbitmq_ca(src)?,
                    })
                }
            },
            sqs: match src.non_empty("AWS_SQS_REGION") {
                None => None,
                Some(region) => {
                    if src.non_empty("REDIS_HOST").is_none() {
                        return Err(invalid(
                            "AWS_SQS_REGION",
                            "a delivery queue needs REDIS_HOST too: tenants, destinations and publish idempotency are shared through Redis",
                        ));
                    }
                    let credentials = match (src.non_empty("AWS_SQS_ACCESS_KEY_ID"), src.non_empty("AWS_SQS_SECRET_ACCESS_KEY")) {
                        (Some(k), Some(s)) => Some((k.to_string(), Secret::from(s))),
                        (None, None) => None,
                        _ => {
                            return Err(invalid(
                                "AWS_SQS_ACCESS_KEY_ID",
                                "set both AWS_SQS_ACCESS_KEY_ID and AWS_SQS_SECRET_ACCESS_KEY, or neither (default credential chain)",
                            ))
                        }
                    };
                    Some(crate::queue::sqs::SqsConfig {
                        region: region.to_string(),
                        endpoint: src.non_empty("AWS_SQS_ENDPOINT").map(String::from),
                        credentials,
                        delivery_queue: src
                            .non_empty("AWS_SQS_DELIVERY_QUEUE")
                            .unwrap_or("outpost-delivery")
                            .to_string(),
                        dlq: src.non_empty("AWS_SQS_DELIVERY_DLQ").map(String::from),
                        auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                    })
                }
            },
            pubsub: match src.non_empty("GCP_PUBSUB_PROJECT") {
                None => None,
                Some(project) => {
                    if src.non_empty("REDIS_HOST").is_none() {
                        return Err(invalid(
                            "GCP_PUBSUB_PROJECT",
                            "a delivery queue needs REDIS_HOST too: tenants, destinations and publish idempotency are shared through Redis",
                        ));
                    }
                    let topic = src
                        .non_empty("GCP_PUBSUB_DELIVERY_TOPIC")
                        .unwrap_or("outpost-delivery")
                        .to_string();
                    Some(crate::queue::pubsub::PubSubConfig {
                        credentials: gcp_credentials(
                            "GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
                            src.non_empty("GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS"),
                        )?
                        .map(Secret::from),
                        project: project.to_string(),
                        subscription: src
                            .non_empty("GCP_PUBSUB_DELIVERY_SUBSCRIPTION")
                            .map(String::from)
                            .unwrap_or_else(|| format!("{topic}-sub")),
                        topic,
                        dlq_topic: src.non_empty("GCP_PUBSUB_DELIVERY_DLQ_TOPIC").map(String::from),
                        dlq_subscription: src.non_empty("GCP_PUBSUB_DELIVERY_DLQ_SUBSCRIPTION").map(String::from),
                        auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                    })
                }
            },
            publish_sqs: match src.non_empty("PUBLISH_AWS_SQS_REGION") {
                None => None,
                Some(region) => Some(crate::queue::sqs::SqsConfig {
                    region: region.to_string(),
                    endpoint: src.non_empty("PUBLISH_AWS_SQS_ENDPOINT").map(String::from),
                    credentials: match (
                        src.non_empty("PUBLISH_AWS_SQS_ACCESS_KEY_ID"),
                        src.non_empty("PUBLISH_AWS_SQS_SECRET_ACCESS_KEY"),
                    ) {
                        (Some(k), Some(s)) => Some((k.to_string(), Secret::from(s))),
                        (None, None) => None,
                        _ => return Err(invalid(
                            "PUBLISH_AWS_SQS_ACCESS_KEY_ID",
                            "set both PUBLISH_AWS_SQS_ACCESS_KEY_ID and PUBLISH_AWS_SQS_SECRET_ACCESS_KEY, or neither",
                        )),
                    },
                    delivery_queue: src
                        .non_empty("PUBLISH_AWS_SQS_QUEUE")
                        .ok_or(ConfigError::Missing {
                            key: "PUBLISH_AWS_SQS_QUEUE",
                        })?
                        .to_string(),
                    dlq: None,
                    auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                }),
            },
            publish_pubsub: match src.non_empty("PUBLISH_GCP_PUBSUB_PROJECT") {
                None => None,
                Some(project) => {
                    let topic = src
                        .non_empty("PUBLISH_GCP_PUBSUB_TOPIC")
                        .ok_or(ConfigError::Missing {
                            key: "PUBLISH_GCP_PUBSUB_TOPIC",
                        })?
                        .to_string();
                    Some(crate::queue::pubsub::PubSubConfig {
                        credentials: gcp_credentials(
                            "PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
                            src.non_empty("PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS"),
                        )?
                        .map(Secret::from),
                        project: project.to_string(),
                        subscription: src
                            .non_empty("PUBLISH_GCP_PUBSUB_SUBSCRIPTION")
                            .map(String::from)
                            .unwrap_or_else(|| format!("{topic}-sub")),
                        topic,
                        dlq_topic: None,
                        dlq_subscription: None,
                        auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                    })
                }
            },
            publish_rabbitmq: match src.non_empty("PUBLISH_RABBITMQ_SERVER_URL") {
                None => None,
                Some(url) => Some(crate::queue::rabbitmq::RabbitConfig {
                    url: url.into(),
                    exchange: src.non_empty("PUBLISH_RABBITMQ_EXCHANGE").unwrap_or("").to_string(),
                    delivery_queue: src
                        .non_empty("PUBLISH_RABBITMQ_QUEUE")
                        .ok_or(ConfigError::Missing {
                            key: "PUBLISH_RABBITMQ_QUEUE",
                        })?
                        .to_string(),
                    dlq: None,
                    auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                    ca_pem: rabbitmq_ca(src)?,
                }),
            },
            postgres_url: src.non_empty("POSTGRES_URL").map(Secret::from),
            log_batch_size: match src.num("LOG_BATCH_SIZE", 1000usize)? {
                0 => return Err(invalid("LOG_BATCH_SIZE", "must be >= 1")),
                n => n,
            },
            publish_max_concurrency: match src.num("PUBLISH_MAX_CONCURRENCY", 64u16)? {
                0 => return Err(invalid("PUBLISH_MAX_CONCURRENCY", "must be >= 1")),
                n => n,
            },
            notices,
            destination_metadata: Arc::new(destination_metadata),
            backend_connect_timeout: Duration::from_secs(src.num("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", 30)?),
            alert: alert_config(src)?,
            operator_events: operator_events_config(src)?,
            dev_mode: false,
            dev_credentials_path: None,
        })
    }

    /// Loads the configuration; with no configuration at all, generates dev
    /// secrets, stores them under the data dir (reused on the next start) and
    /// turns the SSRF guard off so a local receiver can be used.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut src = Sources::load(explicit, std::env::vars())?;
        if !src.is_empty_config() {
            return Self::from_sources(&src);
        }
        // Generated secrets, an open guard and a printed key are for one
        // embedded node on a laptop. A back end means a deployment: starting
        // it that way would serve shared data with secrets nobody chose.
        if let Some(key) = src.backend_key() {
            return Err(invalid(
                "API_KEY",
                format!(
                    "{key} configures a back end, so this is not a local embedded node: set API_KEY, \
                     API_JWT_SECRET and AES_ENCRYPTION_SECRET (dev mode, with generated secrets, runs only \
                     without any back end)"
                ),
            ));
        }
        let data_dir = PathBuf::from(src.non_empty("OUTRIDER_DATA_DIR").unwrap_or("./data"));
        let path = data_dir.join("dev-credentials.env");
        let creds = match std::fs::read_to_string(&path) {
            Ok(text) => parse_dotenv(&text),
            Err(_) => {
                let creds: HashMap<String, String> = [
                    ("API_KEY", format!("dev_{}", crate::ids::random_hex(24))),
                    ("API_JWT_SECRET", crate::ids::random_hex(32)),
                    ("AES_ENCRYPTION_SECRET", crate::ids::random_hex(32)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                write_private_file(&path, &creds).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                creds
            }
        };
        src.values.extend(creds);
        src.values
            .entry("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS".into())
            .or_insert_with(|| "true".into());
        let mut cfg = Self::from_sources(&src)?;
        cfg.dev_mode = true;
        cfg.dev_credentials_path = Some(path);
        Ok(cfg)
    }
}

/// A service-account key given inline: it must be a JSON object with a
/// `type` (checked here so a bad value stops the start, naming the key but
/// never echoing the secret).
fn gcp_credentials(key: &'static str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let ok = serde_json::from_str::<serde_json::Value>(v)
        .ok()
        .is_some_and(|j| j.get("type").and_then(|t| t.as_str()).is_some());
    if !ok {
        return Err(invalid(
            key,
            "must be the JSON of a service-account key (an object with a \"type\" field)",
        ));
    }
    Ok(Some(v.to_string()))
}

fn alert_config(src: &Sources) -> Result<AlertConfig, ConfigError> {
    // Unset means the default; set to an empty string turns the rule off.
    let consecutive_failure_count = match src.get("ALERT_CONSECUTIVE_FAILURE_COUNT").map(str::trim) {
        None => Some(100),
        Some("") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(invalid(
                    "ALERT_CONSECUTIVE_FAILURE_COUNT",
                    format!("must be an integer >= 1 (or empty to turn it off), got {v:?}"),
                ))
            }
        },
    };
    let exhausted_retries_window = match src.get("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS").map(str::trim) {
        None => Some(Duration::from_secs(3600)),
        Some("") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            _ => {
                return Err(invalid(
                    "ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS",
                    format!("must be a whole number of seconds (0 = no suppression, empty = off), got {v:?}"),
                ))
            }
        },
    };
    let exhausted_retries_scope = match src
        .non_empty("OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE")
        .unwrap_or("event")
    {
        "event" => ExhaustedScope::Event,
        "destination" => ExhaustedScope::Destination,
        other => {
            return Err(invalid(
                "OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE",
                format!("expected event or destination, got {other:?}"),
            ))
        }
    };
    Ok(AlertConfig {
        consecutive_failure_count,
        auto_disable_destination: src.bool("ALERT_AUTO_DISABLE_DESTINATION", false)?,
        exhausted_retries_window,
        exhausted_retries_scope,
    })
}

/// Outpost's docs say `OPERATION_EVENTS_*`, its code reads `OPERATOR_EVENTS_*`:
/// both are accepted, the documented name wins when both are set.
fn opev<'a>(src: &'a Sources, suffix: &str) -> Option<&'a str> {
    src.non_empty(&format!("OPERATION_EVENTS_{suffix}"))
        .or_else(|| src.non_empty(&format!("OPERATOR_EVENTS_{suffix}")))
}

fn operator_events_config(src: &Sources) -> Result<Option<crate::opevents::OperatorEventsConfig>, ConfigError> {
    use crate::opevents::{OperatorEventsConfig, SinkConfig, TopicSet, TOPICS};
    let mut sinks = Vec::new();
    if let Some(url) = opev(src, "HTTP_URL") {
        crate::http_client::Target::parse(url).map_err(|e| invalid("OPERATION_EVENTS_HTTP_URL", e))?;
        sinks.push(SinkConfig::Http {
            url: url.to_string(),
            signing_secret: opev(src, "HTTP_SIGNING_SECRET").map(String::from),
        });
    }
    if let Some(queue_url) = opev(src, "AWS_SQS_QUEUE_URL") {
        let credentials = match (opev(src, "AWS_SQS_ACCESS_KEY_ID"), opev(src, "AWS_SQS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => Some((k.to_string(), s.to_string())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID",
                    "set both OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID and OPERATION_EVENTS_AWS_SQS_SECRET_ACCESS_KEY, or neither",
                ))
            }
        };
        sinks.push(SinkConfig::Sqs {
            queue_url: queue_url.to_string(),
            region: opev(src, "AWS_SQS_REGION").unwrap_or("us-east-1").to_string(),
            endpoint: opev(src, "AWS_SQS_ENDPOINT").map(String::from),
            credentials,
        });
    }
    if let Some(project) = opev(src, "GCP_PUBSUB_PROJECT_ID") {
        let credentials = gcp_credentials(
            "OPERATION_EVENTS_GCP_PUBSUB_CREDENTIALS",
            opev(src, "GCP_PUBSUB_CREDENTIALS"),
        )?;
        sinks.push(SinkConfig::PubSub {
            project: project.to_string(),
            credentials,
            topic: opev(src, "GCP_PUBSUB_TOPIC_ID")
                .ok_or(ConfigError::Missing {
                    key: "OPERATION_EVENTS_GCP_PUBSUB_TOPIC_ID",
                })?
                .to_string(),
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
        });
    }
    if let Some(url) = opev(src, "RABBITMQ_SERVER_URL") {
        sinks.push(SinkConfig::RabbitMq {
            url: url.to_string(),
            exchange: opev(src, "RABBITMQ_EXCHANGE").unwrap_or("outpost-events").to_string(),
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
        });
    }
    let topics = match opev(src, "TOPICS").map(str::trim) {
        None | Some("") => return Ok(None),
        Some("*") => TopicSet::All,
        Some(list) => {
            let topics = comma_list(list);
            if let Some(bad) = topics.iter().find(|t| !TOPICS.contains(&t.as_str())) {
                return Err(invalid(
                    "OPERATION_EVENTS_TOPICS",
                    format!("unknown topic {bad:?}; expected * or a list of: {}", TOPICS.join(", ")),
                ));
            }
            TopicSet::List(topics)
        }
    };
    if sinks.len() > 1 {
        return Err(invalid(
            "OPERATION_EVENTS_TOPICS",
            format!(
                "exactly one sink may be configured, found {}: {}",
                sinks.len(),
                sinks.iter().map(SinkConfig::kind).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    match sinks.pop() {
        Some(sink) => Ok(Some(OperatorEventsConfig { topics, sink })),
        None => Err(invalid(
            "OPERATION_EVENTS_TOPICS",
            "topics are set but no sink is configured: set OPERATION_EVENTS_HTTP_URL, OPERATION_EVENTS_AWS_SQS_QUEUE_URL, OPERATION_EVENTS_GCP_PUBSUB_PROJECT_ID or OPERATION_EVENTS_RABBITMQ_SERVER_URL",
        )),
    }
}

fn write_private_file(path: &Path, creds: &HashMap<String, String>) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let mut keys: Vec<_> = creds.keys().collect();
    keys.sort();
    writeln!(
        f,
        "# Generated by outrider on first start with no configuration. Keep private."
    )?;
    for k in keys {
        writeln!(f, "{k}={}", creds[k])?;
    }
    f.sync_all()
}

fn check_header_collisions(w: &WebhookConfig) -> Result<(), ConfigError> {
    if w.mode != WebhookMode::Default {
        return Ok(());
    }
    let resolve = |h: &HeaderName, key: &str| match h {
        HeaderName::Default => Some(format!("{}{}", w.header_prefix, key).to_ascii_lowercase()),
        HeaderName::Named(n) => Some(n.to_ascii_lowercase()),
        HeaderName::Disabled => None,
    };
    let names = [
        resolve(&w.event_id_header, "event-id"),
        resolve(&w.signature_header, "signature"),
        resolve(&w.timestamp_header, "timestamp"),
        resolve(&w.topic_header, "topic"),
    ];
    let set: Vec<_> = names.iter().flatten().collect();
    for (i, a) in set.iter().enumerate() {
        if set[i + 1..].contains(a) {
            return Err(invalid(
                "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME",
                format!("two webhook headers resolve to the same name {a:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.entry("AES_ENCRYPTION_SECRET".into())
            .or_insert_with(|| "secret".into());
        Config::from_sources(&Sources::from_map(m))
    }

    /// Every secret a configuration can hold, each a distinct marker: `{:?}`
    /// of the whole config (what a panic or a debug log would print) shows
    /// none of them.
    #[test]
    fn debug_output_holds_no_secret() {
        let gcp = r#"{"type":"service_account","private_key":"S-gcp-key"}"#;
        let pairs = [
            ("API_KEY", "S-api-key"),
            ("API_JWT_SECRET", "S-jwt"),
            ("AES_ENCRYPTION_SECRET", "S-aes"),
            ("POSTGRES_URL", "postgres://u:S-pg-pass@db/x"),
            ("REDIS_HOST", "redis"),
            ("REDIS_PASSWORD", "S-redis-pass"),
            ("RABBITMQ_SERVER_URL", "amqp://u:S-amqp-pass@mq/"),
            ("PUBLISH_RABBITMQ_SERVER_URL", "amqp://u:S-pub-amqp@mq/"),
            ("PUBLISH_RABBITMQ_QUEUE", "in"),
            ("PUBLISH_AWS_SQS_REGION", "eu-west-1"),
            ("PUBLISH_AWS_SQS_QUEUE", "in"),
            ("PUBLISH_AWS_SQS_ACCESS_KEY_ID", "AKIA"),
            ("PUBLISH_AWS_SQS_SECRET_ACCESS_KEY", "S-pub-sqs"),
            ("PUBLISH_GCP_PUBSUB_PROJECT", "p"),
            ("PUBLISH_GCP_PUBSUB_TOPIC", "t"),
            ("PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS", gcp),
            ("OPERATION_EVENTS_TOPICS", "*"),
            ("OPERATION_EVENTS_HTTP_URL", "https://ops.example.com/S-ops-url-token"),
            ("OPERATION_EVENTS_HTTP_SIGNING_SECRET", "S-ops-signing"),
        ];
        let c = cfg(&pairs).unwrap();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("S-"), "{shown}");
        for (sqs, pubsub) in [
            (
                &[
                    ("AWS_SQS_REGION", "eu-west-1"),
                    ("AWS_SQS_ACCESS_KEY_ID", "AKIA"),
                    ("AWS_SQS_SECRET_ACCESS_KEY", "S-sqs"),
                ][..],
                None,
            ),
            (&[][..], Some(("GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS", gcp))),
        ] {
            let mut p: Vec<(&str, &str)> = vec![("REDIS_HOST", "redis")];
            p.extend_from_slice(sqs);
            if let Some(kv) = pubsub {
                p.push(("GCP_PUBSUB_PROJECT", "p"));
                p.push(kv);
            }
            let c = cfg(&p).unwrap();
            let shown = format!("{c:?}");
            assert!(!shown.contains("S-"), "{shown}");
        }
    }

    #[test]
    fn defaults_match_outpost() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.api_port, 3333);
        assert_eq!(c.max_destinations_per_tenant, 20);
        assert_eq!(c.delivery_timeout, Duration::from_secs(5));
        assert_eq!(c.retry.max_retries(), 10);
        assert_eq!(c.retry.delay(1), Duration::from_secs(30));
        assert_eq!(c.retry.delay(3), Duration::from_secs(120));
        assert_eq!(c.retry.max_delay(), c.retry.delay(c.retry.max_limit));
        assert_eq!(c.webhook.header_prefix, "x-outpost-");
        assert_eq!(c.webhook.max_response_body_bytes, 131_072);
    }

    #[test]
    fn gcp_service_account_credentials_are_checked_and_never_echoed() {
        let base = [("REDIS_HOST", "127.0.0.1"), ("GCP_PUBSUB_PROJECT", "p")];
        let mut bad = base.to_vec();
        bad.push((
            "GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
            "{not json, private_key: s3cret",
        ));
        let e = cfg(&bad).unwrap_err().to_string();
        assert!(
            e.contains("GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS") && !e.contains("s3cret"),
            "{e}"
        );
        let mut good = base.to_vec();
        let key = r#"{"type":"service_account","project_id":"p","private_key":"k","client_email":"a@p"}"#;
        good.push(("GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS", key));
        let c = cfg(&good).unwrap();
        assert_eq!(c.pubsub.unwrap().credentials.as_ref().map(Secret::expose), Some(key));
        let e = cfg(&[
            ("OPERATION_EVENTS_TOPICS", "*"),
            ("OPERATION_EVENTS_GCP_PUBSUB_PROJECT_ID", "p"),
            ("OPERATION_EVENTS_GCP_PUBSUB_TOPIC_ID", "t"),
            ("OPERATION_EVENTS_GCP_PUBSUB_CREDENTIALS", "[]"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("OPERATION_EVENTS_GCP_PUBSUB_CREDENTIALS"), "{e}");
    }

    #[test]
    fn alert_settings_follow_outpost() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.alert, AlertConfig::default());
        let c = cfg(&[
            ("ALERT_CONSECUTIVE_FAILURE_COUNT", ""),
            ("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS", "0"),
        ])
        .unwrap();
        assert_eq!(c.alert.consecutive_failure_count, None, "empty turns it off");
        assert_eq!(
            c.alert.exhausted_retries_window,
            Some(Duration::ZERO),
            "0 = no suppression"
        );
        let c = cfg(&[("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS", "")]).unwrap();
        assert_eq!(c.alert.exhausted_retries_window, None, "empty turns it off");
        assert!(cfg(&[("ALERT_CONSECUTIVE_FAILURE_COUNT", "0")]).is_err());
    }

    #[test]
    fn schedule_overrides_limit() {
        let c = cfg(&[("RETRY_SCHEDULE", "1, 2,5"), ("MAX_RETRY_LIMIT", "9")]).unwrap();
        assert_eq!(c.retry.max_retries(), 3);
        assert_eq!(c.retry.delay(3), Duration::from_secs(5));
        assert_eq!(c.retry.max_delay(), *c.retry.schedule.iter().max().unwrap());
    }

    #[test]
    fn errors_name_the_key() {
        let e = cfg(&[("API_PORT", "abc")]).unwrap_err().to_string();
        assert!(e.contains("API_PORT"), "{e}");
        let e = cfg(&[("RETRY_SCHEDULE", "1,0")]).unwrap_err().to_string();
        assert!(e.contains("RETRY_SCHEDULE"), "{e}");
        let e = Config::from_sources(&Sources::from_map(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AES_ENCRYPTION_SECRET"), "{e}");
        let e = cfg(&[("DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME", "x-outpost-event-id")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("same name"), "{e}");
    }

    #[test]
    fn three_state_header_names() {
        let c = cfg(&[
            ("DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME", ""),
            ("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME", "X-Sig"),
        ])
        .unwrap();
        assert_eq!(c.webhook.topic_header, HeaderName::Disabled);
        assert_eq!(c.webhook.signature_header, HeaderName::Named("X-Sig".into()));
        assert_eq!(c.webhook.event_id_header, HeaderName::Default);
    }

    #[test]
    fn yaml_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.yaml");
        std::fs::write(
            &p,
            "api_port: 4000\ntopics: [a.b, c]\naes_encryption_secret: x\ndestinations:\n  webhook:\n    mode: standard\n",
        )
        .unwrap();
        let src = Sources::load(Some(&p), [("API_PORT".to_string(), "5000".to_string())]).unwrap();
        let c = Config::from_sources(&src).unwrap();
        assert_eq!(c.api_port, 5000);
        assert_eq!(c.topics, vec!["a.b", "c"]);
        assert_eq!(c.webhook.mode, WebhookMode::Standard);
        assert_eq!(c.webhook.header_prefix, "webhook-");
    }

    #[test]
    fn per_type_delivery_timeouts() {
        let c = cfg(&[
            ("DELIVERY_TIMEOUT_SECONDS", "7"),
            ("DESTINATIONS_AWS_S3_TIMEOUT_SECONDS", "30"),
        ])
        .unwrap();
        assert_eq!(c.delivery_timeout_for("aws_s3"), Duration::from_secs(30));
        assert_eq!(c.delivery_timeout_for("webhook"), Duration::from_secs(7));
        let e = cfg(&[("DESTINATIONS_KAFKA_TIMEOUT_SECONDS", "0")]).unwrap_err();
        assert!(e.to_string().contains("DESTINATIONS_KAFKA_TIMEOUT_SECONDS"), "{e}");
        let e = cfg(&[("DESTINATIONS_KAFKA_TIMEOUT_SECONDS", "soon")]).unwrap_err();
        assert!(e.to_string().contains("DESTINATIONS_KAFKA_TIMEOUT_SECONDS"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.yaml");
        std::fs::write(
            &p,
            "aes_encryption_secret: x\ndestinations:\n  kafka:\n    timeout_seconds: 12\n",
        )
        .unwrap();
        let c = Config::from_sources(&Sources::load(Some(&p), []).unwrap()).unwrap();
        assert_eq!(c.delivery_timeout_for("kafka"), Duration::from_secs(12));
        assert_eq!(c.delivery_timeout_for("mqtt"), Duration::from_secs(5));
    }
}
