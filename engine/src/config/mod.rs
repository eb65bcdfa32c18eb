//! One typed configuration, loaded from built-in defaults, then a config file
//! (YAML or dotenv), then environment variables (highest precedence).
//!
//! Names and defaults follow Outpost's (`API_PORT`, `TOPICS`, `RETRY_SCHEDULE`, ...)
//! so an Outpost deployment's environment works unchanged. Keys that only
//! Outrider understands are prefixed `OUTRIDER_` (except `DELIVERY_SHARDS`).
//!
//! `sources` reads the file and the environment into raw keys; one module
//! per section types its keys (`retry`, `webhook`, `backends`, `alerts`,
//! `opevents`, `dev` for the generated secrets); `Config::from_sources`
//! reads the node-wide keys itself and puts the sections together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;
use sources::comma_list;

mod alerts;
mod backends;
mod dev;
mod opevents;
mod retry;
mod sources;
mod webhook;

pub use retry::RetryConfig;
pub use sources::Sources;

// Settings types owned by the modules that use them; the loader below
// fills them in.
pub use crate::alerts::{AlertConfig, ExhaustedScope};
pub use crate::ids::IdGen;
pub use crate::signing::{
    valid_header_token, HeaderName, SignatureAlgorithm, SignatureEncoding, WebhookConfig, WebhookMode,
    PROTECTED_HEADERS, RESERVED_HEADERS,
};

/// A configuration error always names the key that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{key} is required")]
    Missing { key: &'static str },
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

pub(super) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
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
    /// Where the shards' journals live (`OUTRIDER_JOURNAL_DIR`, default
    /// `<data dir>/journal`): a disk of their own keeps the index's writes
    /// out of the queue each group commit's `fdatasync` waits in.
    pub journal_dir: PathBuf,
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

/// Where Outpost looks for per-type metadata overrides when
/// `DESTINATIONS_METADATA_PATH` is unset.
const DEFAULT_METADATA_DIR: &str = "config/outpost/destinations";

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
        let retry = retry::read(src)?;
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
        let webhook = webhook::read(src)?;

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
            retry,
            idgen,
            event_id_prefix: src.string("IDGEN_EVENT_PREFIX", ""),
            destination_id_prefix: src.string("IDGEN_DESTINATION_PREFIX", ""),
            attempt_id_prefix: src.string("IDGEN_ATTEMPT_PREFIX", ""),
            webhook,
            journal_dir: match src.non_empty("OUTRIDER_JOURNAL_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(src.non_empty("OUTRIDER_DATA_DIR").unwrap_or("./data")).join("journal"),
            },
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
            redis: backends::redis(src)?,
            rabbitmq: backends::rabbitmq(src)?,
            sqs: backends::sqs(src)?,
            pubsub: backends::pubsub(src)?,
            publish_sqs: backends::publish_sqs(src)?,
            publish_pubsub: backends::publish_pubsub(src)?,
            publish_rabbitmq: backends::publish_rabbitmq(src)?,
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
            alert: alerts::read(src)?,
            operator_events: opevents::read(src)?,
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
        let (path, creds) = dev::credentials(&src)?;
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
