//! The raw key/value view of the configuration: a file (YAML or dotenv)
//! overlaid by the environment, with the typed getters the sections use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{invalid, ConfigError, TYPE_TIMEOUT_KEYS};

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
    ("outrider.journal_dir", "OUTRIDER_JOURNAL_DIR"),
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
    pub(super) values: HashMap<String, String>,
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        if !self.read.borrow().contains(key) {
            self.read.borrow_mut().insert(key.to_string());
        }
        self.values.get(key).map(String::as_str)
    }

    /// A lookup that is not recorded: the settings check looks at every
    /// Outpost key, which says nothing about which ones are used.
    pub(super) fn peek(&self, key: &str) -> Option<&str> {
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

    pub(super) fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|s| !s.is_empty())
    }

    pub(super) fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_string()
    }

    pub(super) fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.non_empty(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(key, format!("expected true or false, got {v:?}"))),
            },
        }
    }

    pub(super) fn num<T: std::str::FromStr>(&self, key: &'static str, default: T) -> Result<T, ConfigError> {
        match self.non_empty(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(key, format!("expected a non-negative integer, got {v:?}"))),
        }
    }

    /// The first key set that configures a back end (Redis, PostgreSQL, a
    /// delivery or publish queue, operator events).
    pub(super) fn backend_key(&self) -> Option<&'static str> {
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

pub(super) fn parse_dotenv(text: &str) -> HashMap<String, String> {
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

pub(super) fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
