//! Every setting Outpost's configuration reads, and what Outrider does with
//! it. A deployment that moves from Outpost keeps its environment, so no key
//! of Outpost's may be dropped without a word: each is honoured, ignored for
//! a stated reason (it asks for something that has no meaning here), refused
//! at start naming the alternative (it asks for a feature we have not built),
//! or not built yet and warned about at start.
//!
//! The README's settings table is generated from [`SETTINGS`] (a test checks
//! it), and a test checks that every key marked honoured is read by the
//! loader.

use crate::settings::BadSetting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Read, with Outpost's meaning (the note says where ours differs).
    Honoured,
    /// Accepted and ignored: it has no meaning here (the note says why).
    Ignored,
    /// The server refuses to start when it is set to anything but its
    /// "off" value; the note names the alternative.
    Refused,
    /// Not built yet: a warning at start names the issue that builds it.
    NotYet,
}

impl Treatment {
    pub fn word(self) -> &'static str {
        match self {
            Treatment::Honoured => "honoured",
            Treatment::Ignored => "ignored",
            Treatment::Refused => "refused",
            Treatment::NotYet => "not yet",
        }
    }
}

pub struct Setting {
    pub key: &'static str,
    pub treatment: Treatment,
    pub note: &'static str,
}

const fn s(key: &'static str, treatment: Treatment, note: &'static str) -> Setting {
    Setting { key, treatment, note }
}

use Treatment::{Honoured as H, Ignored as I, Refused as R};

const LOG_QUEUE: &str =
    "there is no log queue: delivery nodes write their log to POSTGRES_URL themselves, through an outbox on disk";
const TELEMETRY: &str = "Outrider sends no usage telemetry or error reports anywhere";
const AZURE_QUEUE: &str =
    "an Azure Service Bus delivery queue is not built: use RABBITMQ_SERVER_URL, AWS_SQS_REGION or GCP_PUBSUB_PROJECT";
const AZURE_PUBLISH: &str = "an Azure Service Bus publish queue is not built: use PUBLISH_RABBITMQ_SERVER_URL, PUBLISH_AWS_SQS_REGION or PUBLISH_GCP_PUBSUB_PROJECT";
const CLICKHOUSE: &str = "a ClickHouse log store is not built: use POSTGRES_URL";
const OTEL_ENV: &str = "read from the environment by the OTLP exporter, as the OpenTelemetry SDKs do";
const OPEV: &str = "also read as OPERATION_EVENTS_*, the name Outpost's docs use";

/// Outpost's keys, in the order of its configuration reference.
pub const SETTINGS: &[Setting] = &[
    // Core
    s("CONFIG", H, "path of the YAML or .env file"),
    s("SERVICE", H, "`api` or `delivery`; `log` is refused: there is no separate log service"),
    s("LOG_LEVEL", H, ""),
    s("API_PORT", H, ""),
    s("API_KEY", H, ""),
    s("API_JWT_SECRET", H, ""),
    s("GIN_MODE", I, "mode of the Go web framework Outpost uses; its debug-only routes do not exist here"),
    s("PPROF_ENABLED", I, "Go's profiler; Outrider exposes no profiling endpoint"),
    s("AES_ENCRYPTION_SECRET", H, ""),
    s("DEPLOYMENT_ID", H, ""),
    s("TOPICS", H, ""),
    s("TOPICS_ALLOW_WILDCARDS", H, ""),
    s("HTTP_USER_AGENT", H, ""),
    s("MAX_DESTINATIONS_PER_TENANT", H, ""),
    s("DELIVERY_TIMEOUT_SECONDS", H, ""),
    s(
        "PUBLISH_MAX_CONCURRENCY",
        H,
        "messages taken from the publish queue at once; default 64 (Outpost's is 1)",
    ),
    s(
        "PUBLISH_MAX_REDELIVERIES",
        R,
        "a limit on publish-queue redeliveries is not built: leave it unset or 0 (the broker's own limit applies)",
    ),
    s(
        "DELIVERY_MAX_CONCURRENCY",
        H,
        "attempts in flight per node; default 512 (Outpost's is 1)",
    ),
    s("LOG_MAX_CONCURRENCY", I, LOG_QUEUE),
    s("PUBLISH_IDEMPOTENCY_KEY_TTL", H, ""),
    s("DELIVERY_IDEMPOTENCY_KEY_TTL", H, ""),
    s(
        "LOG_BATCH_THRESHOLD_SECONDS",
        I,
        "a maximum wait; records ship at most 100 ms after they are written, sooner than any threshold",
    ),
    s("LOG_BATCH_SIZE", H, ""),
    s("DISABLE_TELEMETRY", I, TELEMETRY),
    s("TELEMETRY_BATCH_SIZE", I, TELEMETRY),
    s("TELEMETRY_BATCH_INTERVAL", I, TELEMETRY),
    s("TELEMETRY_HOOKDECK_SOURCE_URL", I, TELEMETRY),
    s("TELEMETRY_SENTRY_DSN", I, TELEMETRY),
    s("IDGEN_TYPE", H, ""),
    s("IDGEN_EVENT_PREFIX", H, ""),
    s("IDGEN_DESTINATION_PREFIX", H, ""),
    s("IDGEN_ATTEMPT_PREFIX", H, ""),
    // Retry
    s("RETRY_SCHEDULE", H, ""),
    s("RETRY_INTERVAL_SECONDS", H, ""),
    s("MAX_RETRY_LIMIT", H, ""),
    s(
        "RETRY_POLL_BACKOFF_MS",
        I,
        "retries are timers on the shard that owns the destination, not a Redis queue a monitor polls",
    ),
    s(
        "RETRY_VISIBILITY_TIMEOUT_SECONDS",
        I,
        "retries are timers on the shard that owns the destination, not a Redis queue with a visibility timeout",
    ),
    // Message queues
    s("MQS_AUTO_PROVISION", H, ""),
    s("RABBITMQ_SERVER_URL", H, ""),
    s("RABBITMQ_EXCHANGE", H, ""),
    s("RABBITMQ_DELIVERY_QUEUE", H, ""),
    s("RABBITMQ_DELIVERY_DLQ", H, ""),
    s("RABBITMQ_LOG_QUEUE", I, LOG_QUEUE),
    s("RABBITMQ_LOG_DLQ", I, LOG_QUEUE),
    s("AWS_SQS_ACCESS_KEY_ID", H, ""),
    s("AWS_SQS_SECRET_ACCESS_KEY", H, ""),
    s("AWS_SQS_REGION", H, ""),
    s("AWS_SQS_ENDPOINT", H, ""),
    s("AWS_SQS_DELIVERY_QUEUE", H, ""),
    s("AWS_SQS_DELIVERY_DLQ", H, ""),
    s("AWS_SQS_LOG_QUEUE", I, LOG_QUEUE),
    s("AWS_SQS_LOG_DLQ", I, LOG_QUEUE),
    s("GCP_PUBSUB_PROJECT", H, ""),
    s(
        "GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
        H,
        "a JSON key inline (a file path is refused with a clear error)",
    ),
    s("GCP_PUBSUB_DELIVERY_TOPIC", H, ""),
    s("GCP_PUBSUB_DELIVERY_SUBSCRIPTION", H, ""),
    s("GCP_PUBSUB_DELIVERY_DLQ_TOPIC", H, ""),
    s("GCP_PUBSUB_DELIVERY_DLQ_SUBSCRIPTION", H, ""),
    s("GCP_PUBSUB_LOG_TOPIC", I, LOG_QUEUE),
    s("GCP_PUBSUB_LOG_SUBSCRIPTION", I, LOG_QUEUE),
    s("GCP_PUBSUB_LOG_DLQ_TOPIC", I, LOG_QUEUE),
    s("GCP_PUBSUB_LOG_DLQ_SUBSCRIPTION", I, LOG_QUEUE),
    s("AZURE_SERVICEBUS_CONNECTION_STRING", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_TENANT_ID", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_CLIENT_ID", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_CLIENT_SECRET", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_SUBSCRIPTION_ID", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_RESOURCE_GROUP", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_NAMESPACE", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_DELIVERY_TOPIC", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_DELIVERY_SUBSCRIPTION", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_LOG_TOPIC", R, AZURE_QUEUE),
    s("AZURE_SERVICEBUS_LOG_SUBSCRIPTION", R, AZURE_QUEUE),
    // Publish queue
    s("PUBLISH_AWS_SQS_ACCESS_KEY_ID", H, ""),
    s("PUBLISH_AWS_SQS_SECRET_ACCESS_KEY", H, ""),
    s("PUBLISH_AWS_SQS_REGION", H, ""),
    s("PUBLISH_AWS_SQS_ENDPOINT", H, ""),
    s("PUBLISH_AWS_SQS_QUEUE", H, ""),
    s("PUBLISH_AZURE_SERVICEBUS_CONNECTION_STRING", R, AZURE_PUBLISH),
    s("PUBLISH_AZURE_SERVICEBUS_TOPIC", R, AZURE_PUBLISH),
    s("PUBLISH_AZURE_SERVICEBUS_SUBSCRIPTION", R, AZURE_PUBLISH),
    s("PUBLISH_GCP_PUBSUB_PROJECT", H, ""),
    s("PUBLISH_GCP_PUBSUB_TOPIC", H, ""),
    s("PUBLISH_GCP_PUBSUB_SUBSCRIPTION", H, ""),
    s("PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS", H, ""),
    s("PUBLISH_RABBITMQ_SERVER_URL", H, ""),
    s("PUBLISH_RABBITMQ_EXCHANGE", H, ""),
    s("PUBLISH_RABBITMQ_QUEUE", H, ""),
    // Storage
    s("REDIS_HOST", H, ""),
    s("REDIS_PORT", H, ""),
    s("REDIS_USERNAME", H, ""),
    s("REDIS_PASSWORD", H, ""),
    s("REDIS_DATABASE", H, ""),
    s(
        "REDIS_TLS_ENABLED",
        H,
        "the certificate is verified (Outpost skips verification); OUTRIDER_REDIS_TLS_CA_FILE adds a CA",
    ),
    s(
        "REDIS_TLS_VERIFY",
        H,
        "`false` skips certificate verification, as OUTRIDER_REDIS_TLS_INSECURE=true does",
    ),
    s("REDIS_CLUSTER_ENABLED", H, ""),
    s(
        "REDIS_DEV_CLUSTER_HOST_OVERRIDE",
        R,
        "a development-only cluster override that is not built: leave it unset or false",
    ),
    s(
        "REDIS_POOL_SIZE",
        I,
        "a node keeps one multiplexed Redis connection per purpose, not a pool",
    ),
    s("POSTGRES_URL", H, ""),
    s("CLICKHOUSE_ADDR", R, CLICKHOUSE),
    s("CLICKHOUSE_USERNAME", R, CLICKHOUSE),
    s("CLICKHOUSE_PASSWORD", R, CLICKHOUSE),
    s("CLICKHOUSE_DATABASE", R, CLICKHOUSE),
    s("CLICKHOUSE_TLS_ENABLED", R, CLICKHOUSE),
    s("CLICKHOUSE_LOG_RETENTION_TTL_DAYS", R, CLICKHOUSE),
    // Destinations
    s(
        "DESTINATIONS_METADATA_PATH",
        H,
        "a file that cannot be read as an override stops the start, naming it (Outpost skips it)",
    ),
    s("DESTINATIONS_INCLUDE_MILLISECOND_TIMESTAMP", H, ""),
    s("DESTINATIONS_WEBHOOK_MODE", H, ""),
    s(
        "DESTINATIONS_WEBHOOK_PROXY_URL",
        H,
        "every webhook connection, http:// too, is a CONNECT tunnel to the address the SSRF guard checked (Outpost forwards http:// request by request)",
    ),
    s("DESTINATIONS_WEBHOOK_HEADER_PREFIX", H, ""),
    s("DESTINATIONS_WEBHOOK_EVENT_ID_HEADER_NAME", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME", H, ""),
    s("DESTINATIONS_WEBHOOK_TIMESTAMP_HEADER_NAME", H, ""),
    s("DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME", H, ""),
    s("DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_EVENT_ID_HEADER", H, ""),
    s("DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_SIGNATURE_HEADER", H, ""),
    s("DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TIMESTAMP_HEADER", H, ""),
    s("DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TOPIC_HEADER", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNATURE_ALGORITHM", H, ""),
    s("DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE", H, ""),
    s("DESTINATIONS_WEBHOOK_MAX_RESPONSE_BODY_BYTES", H, ""),
    s("DESTINATIONS_AWS_KINESIS_METADATA_IN_PAYLOAD", H, ""),
    // Portal
    s("PORTAL_PROXY_URL", H, "the portal's public address, used in the URL `/tenants/{id}/portal` returns (Outpost: a dev-only proxy to its Vite server; the portal here is always built in)"),
    s("PORTAL_REFERER_URL", H, ""),
    s("PORTAL_REFRESH_URL", H, ""),
    s("PORTAL_FAVICON_URL", H, ""),
    s("PORTAL_BRAND_COLOR", H, "a hex colour; anything else stops the start"),
    s("PORTAL_LOGO", H, ""),
    s("PORTAL_LOGO_DARK", H, ""),
    s("PORTAL_ORGANIZATION_NAME", H, ""),
    s("PORTAL_FORCE_THEME", H, "`light` or `dark`"),
    s("PORTAL_DISABLE_OUTPOST_BRANDING", H, "hides the \"Powered by Outrider\" line"),
    s("PORTAL_ENABLE_DESTINATION_FILTER", H, ""),
    s("PORTAL_ENABLE_WEBHOOK_CUSTOM_HEADERS", H, ""),
    // Alerts
    s("ALERT_CONSECUTIVE_FAILURE_COUNT", H, ""),
    s("ALERT_AUTO_DISABLE_DESTINATION", H, ""),
    s("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS", H, ""),
    // Operator events
    s("OPERATOR_EVENTS_TOPICS", H, OPEV),
    s("OPERATOR_EVENTS_HTTP_URL", H, OPEV),
    s("OPERATOR_EVENTS_HTTP_SIGNING_SECRET", H, OPEV),
    s("OPERATOR_EVENTS_AWS_SQS_QUEUE_URL", H, OPEV),
    s("OPERATOR_EVENTS_AWS_SQS_ACCESS_KEY_ID", H, OPEV),
    s("OPERATOR_EVENTS_AWS_SQS_SECRET_ACCESS_KEY", H, OPEV),
    s("OPERATOR_EVENTS_AWS_SQS_REGION", H, OPEV),
    s("OPERATOR_EVENTS_AWS_SQS_ENDPOINT", H, OPEV),
    s("OPERATOR_EVENTS_GCP_PUBSUB_PROJECT_ID", H, OPEV),
    s("OPERATOR_EVENTS_GCP_PUBSUB_TOPIC_ID", H, OPEV),
    s("OPERATOR_EVENTS_GCP_PUBSUB_CREDENTIALS", H, OPEV),
    s("OPERATOR_EVENTS_RABBITMQ_SERVER_URL", H, OPEV),
    s("OPERATOR_EVENTS_RABBITMQ_EXCHANGE", H, OPEV),
    // OpenTelemetry
    s("OTEL_SERVICE_NAME", H, "turns traces, metrics and logs on"),
    s("OTEL_EXPORTER", H, "`otlp` or `none`; `console`/`stdout` are refused (not built)"),
    s("OTEL_TRACES_EXPORTER", H, "`otlp` or `none`"),
    s("OTEL_METRICS_EXPORTER", H, "`otlp` or `none`"),
    s("OTEL_LOGS_EXPORTER", H, "`otlp` or `none`"),
    s("OTEL_PROTOCOL", H, "`grpc`, `http`, `http/protobuf`"),
    s("OTEL_EXPORTER_OTLP_ENDPOINT", H, OTEL_ENV),
    s("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", H, OTEL_ENV),
    s("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", H, OTEL_ENV),
    s("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", H, OTEL_ENV),
];

/// Values that ask for nothing: a refused key set to one of them is let be
/// (a copied `.env.example` sets `CLICKHOUSE_TLS_ENABLED=false`, say).
fn is_off(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// Refuses a configuration that sets a key whose feature is not built, and
/// returns one notice per ignored or not-yet key that is set, for the log.
///
/// `lookup` reads a key from the merged sources (file and environment).
pub fn check<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Result<Vec<String>, BadSetting> {
    let mut notices = Vec::new();
    for setting in SETTINGS {
        let Some(value) = lookup(setting.key) else {
            continue;
        };
        match setting.treatment {
            Treatment::Honoured => {}
            Treatment::Refused if !is_off(value) => {
                return Err(BadSetting::new(setting.key, format!("is set, but {}", setting.note)));
            }
            Treatment::Refused => {}
            Treatment::Ignored if value.trim().is_empty() => {}
            Treatment::Ignored => notices.push(format!("{} is ignored: {}", setting.key, setting.note)),
            Treatment::NotYet if value.trim().is_empty() => {}
            Treatment::NotYet => notices.push(format!("{} has no effect yet: {}", setting.key, setting.note)),
        }
    }
    Ok(notices)
}

/// The README's table.
pub fn markdown_table() -> String {
    let mut out = String::from("| Outpost setting | Outrider | Note |\n|---|---|---|\n");
    for setting in SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            setting.key,
            setting.treatment.word(),
            setting.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use std::collections::{BTreeSet, HashMap};

    fn sources(pairs: &[(&str, &str)]) -> Sources {
        let mut m: HashMap<String, String> = [
            ("API_KEY", "key"),
            ("API_JWT_SECRET", "jwt"),
            ("AES_ENCRYPTION_SECRET", "aes"),
        ]
        .iter()
        .chain(pairs)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.retain(|_, v| !v.is_empty());
        Sources::from_map(m)
    }

    #[test]
    fn the_readme_table_is_generated_from_the_settings() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let (start, end) = ("<!-- outpost-settings:start -->\n", "<!-- outpost-settings:end -->");
        let from = readme
            .find(start)
            .expect("README has the settings table's start marker")
            + start.len();
        let to = readme.find(end).expect("README has the settings table's end marker");
        let want = markdown_table();
        assert!(
            readme[from..to] == want,
            "README's settings table is stale; replace it with:\n{want}"
        );
    }

    #[test]
    fn each_setting_is_listed_once() {
        let mut seen = BTreeSet::new();
        for setting in SETTINGS {
            assert!(seen.insert(setting.key), "{} is listed twice", setting.key);
            assert!(
                setting.treatment == Treatment::Honoured || !setting.note.is_empty(),
                "{} needs a note saying why",
                setting.key
            );
        }
        // Outpost's configuration reference names 163 keys (its docs' own
        // misspelling PORTAL_ACCENT_COLOR aside).
        assert_eq!(SETTINGS.len(), 163);
    }

    /// Loads configurations that between them switch on every part of the
    /// loader, and checks that each key the table calls honoured was read.
    #[test]
    fn every_honoured_setting_is_read_by_the_loader() {
        let backends = [("REDIS_HOST", "127.0.0.1"), ("POSTGRES_URL", "postgres://db/x")];
        let scenarios: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("DESTINATIONS_WEBHOOK_MODE", "standard")],
            vec![("OTEL_SERVICE_NAME", "outpost")],
            vec![
                ("RABBITMQ_SERVER_URL", "amqp://mq"),
                ("REDIS_TLS_ENABLED", "true"),
                ("PUBLISH_RABBITMQ_SERVER_URL", "amqp://mq"),
                ("PUBLISH_RABBITMQ_QUEUE", "publish"),
                ("OPERATOR_EVENTS_TOPICS", "*"),
                ("OPERATOR_EVENTS_HTTP_URL", "http://ops.example/hook"),
            ],
            vec![
                ("AWS_SQS_REGION", "eu-west-1"),
                ("PUBLISH_AWS_SQS_REGION", "eu-west-1"),
                ("PUBLISH_AWS_SQS_QUEUE", "publish"),
                ("OPERATOR_EVENTS_TOPICS", "*"),
                ("OPERATOR_EVENTS_AWS_SQS_QUEUE_URL", "http://sqs.example/q"),
            ],
            vec![
                ("GCP_PUBSUB_PROJECT", "p"),
                ("PUBLISH_GCP_PUBSUB_PROJECT", "p"),
                ("PUBLISH_GCP_PUBSUB_TOPIC", "publish"),
                ("OPERATOR_EVENTS_TOPICS", "*"),
                ("OPERATOR_EVENTS_GCP_PUBSUB_PROJECT_ID", "p"),
                ("OPERATOR_EVENTS_GCP_PUBSUB_TOPIC_ID", "ops"),
            ],
            vec![
                ("OPERATOR_EVENTS_TOPICS", "*"),
                ("OPERATOR_EVENTS_RABBITMQ_SERVER_URL", "amqp://mq"),
            ],
        ];
        let mut read = BTreeSet::new();
        for extra in scenarios {
            let pairs: Vec<(&str, &str)> = backends.iter().copied().chain(extra).collect();
            let src = sources(&pairs);
            if let Err(e) = Config::from_sources(&src) {
                panic!("{pairs:?}: {e}");
            }
            read.extend(src.keys_read());
        }
        // CONFIG names the file, so it is read before the sources exist.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("outpost.yaml");
        std::fs::write(&file, "api_port: 4444\n").unwrap();
        let src = Sources::load(None, [("CONFIG".to_string(), file.display().to_string())]).unwrap();
        assert_eq!(src.file.as_deref(), Some(file.as_path()));
        read.insert("CONFIG".into());

        let unread: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| s.treatment == Treatment::Honoured && !read.contains(s.key))
            .map(|s| s.key)
            .collect();
        assert!(unread.is_empty(), "marked honoured but never read: {unread:?}");
        // And the other way: every key the loader reads is either ours or in
        // the table.
        let listed: BTreeSet<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let ours = |k: &str| {
            k.starts_with("OUTRIDER_")
                || k.starts_with("OPERATION_EVENTS_")
                || k == "DELIVERY_SHARDS"
                // Per-type deadlines (`DESTINATIONS_KAFKA_TIMEOUT_SECONDS`, ...).
                || (k.starts_with("DESTINATIONS_") && k.ends_with("_TIMEOUT_SECONDS"))
                || ["LOG_FORMAT", "LOG_RETENTION_DAYS", "METRICS_PORT"].contains(&k)
                // The OpenTelemetry SDKs' own protocol variables, which
                // Outpost's docs name but its reference table does not.
                || (k.starts_with("OTEL_EXPORTER_OTLP_") && k.ends_with("PROTOCOL"))
        };
        let unlisted: Vec<&String> = read
            .iter()
            .filter(|k| !listed.contains(k.as_str()) && !ours(k))
            .collect();
        assert!(unlisted.is_empty(), "read but missing from the table: {unlisted:?}");
    }

    #[test]
    fn a_refused_setting_stops_the_start_naming_it_and_its_alternative() {
        let refused: Vec<&Setting> = SETTINGS.iter().filter(|s| s.treatment == Treatment::Refused).collect();
        assert!(refused.len() >= 20, "{}", refused.len());
        for setting in refused {
            let e = Config::from_sources(&sources(&[(setting.key, "something")]))
                .err()
                .unwrap_or_else(|| panic!("{} was accepted", setting.key))
                .to_string();
            assert!(e.contains(setting.key) && e.contains(setting.note), "{e}");
            // Its "off" value asks for nothing, so it is let be.
            for off in ["false", "0"] {
                assert!(
                    Config::from_sources(&sources(&[(setting.key, off)])).is_ok(),
                    "{}={off}",
                    setting.key
                );
            }
        }
        let e = Config::from_sources(&sources(&[("CLICKHOUSE_ADDR", "ch:9000")]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("CLICKHOUSE_ADDR") && e.contains("POSTGRES_URL"), "{e}");
    }

    #[test]
    fn ignored_and_unbuilt_settings_are_named_in_the_start_log() {
        let cfg = Config::from_sources(&sources(&[
            ("GIN_MODE", "debug"),
            ("RABBITMQ_LOG_QUEUE", "logs"),
            ("PORTAL_LOGO", "https://example.com/logo.svg"),
            ("PORTAL_BRAND_COLOR", "#123456"),
            ("RETRY_POLL_BACKOFF_MS", ""),
        ]))
        .unwrap();
        let joined = cfg.notices.join("\n");
        for key in ["GIN_MODE", "RABBITMQ_LOG_QUEUE"] {
            assert!(joined.contains(key), "{key} missing from {joined}");
        }
        // The portal's keys are honoured now: no notice for them.
        assert_eq!(cfg.notices.len(), 2, "{joined}");
        let quiet = Config::from_sources(&sources(&[])).unwrap();
        assert!(quiet.notices.is_empty(), "{:?}", quiet.notices);
    }

    #[test]
    fn dead_letter_names_and_publish_concurrency_are_read() {
        let cfg = Config::from_sources(&sources(&[
            ("REDIS_HOST", "127.0.0.1"),
            ("POSTGRES_URL", "postgres://db/x"),
            ("RABBITMQ_SERVER_URL", "amqp://mq"),
            ("RABBITMQ_DELIVERY_DLQ", "dead-tasks"),
            ("PUBLISH_MAX_CONCURRENCY", "8"),
        ]))
        .unwrap();
        assert_eq!(cfg.rabbitmq.unwrap().dlq.as_deref(), Some("dead-tasks"));
        assert_eq!(cfg.publish_max_concurrency, 8);
        let cfg = Config::from_sources(&sources(&[
            ("REDIS_HOST", "127.0.0.1"),
            ("AWS_SQS_REGION", "eu-west-1"),
            ("AWS_SQS_DELIVERY_DLQ", "dead-sqs"),
        ]))
        .unwrap();
        assert_eq!(cfg.sqs.unwrap().dlq.as_deref(), Some("dead-sqs"));
        let cfg = Config::from_sources(&sources(&[
            ("REDIS_HOST", "127.0.0.1"),
            ("GCP_PUBSUB_PROJECT", "p"),
            ("GCP_PUBSUB_DELIVERY_DLQ_TOPIC", "dead-topic"),
            ("GCP_PUBSUB_DELIVERY_DLQ_SUBSCRIPTION", "dead-sub"),
        ]))
        .unwrap();
        let p = cfg.pubsub.unwrap();
        assert_eq!(
            (p.dlq_topic.as_deref(), p.dlq_subscription.as_deref()),
            (Some("dead-topic"), Some("dead-sub"))
        );
        assert!(Config::from_sources(&sources(&[("PUBLISH_MAX_CONCURRENCY", "0")])).is_err());
    }
}
