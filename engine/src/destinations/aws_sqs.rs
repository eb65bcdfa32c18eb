//! The `aws_sqs` destination type: each event becomes one `SendMessage` to
//! the destination's queue. The body is the event data; the merged delivery
//! metadata travels as one String message attribute, `metadata`, holding its
//! JSON (as in Outpost, so consumers of either read the same message).
//!
//! The region comes from an `sqs.<region>.amazonaws.com` queue URL (else
//! `us-east-1`). As in Outpost, two keys are read without being listed in
//! the field list: `config.endpoint` sends the calls elsewhere (LocalStack,
//! moto) and `credentials.session` adds a session token (masked on read).
//! A queue URL that is not on `amazonaws.com` is its own endpoint.

use std::rc::Rc;

use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_sdk_sqs::Client;
use serde_json::{json, Value};

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[Field::text("queue_url", "Queue URL", "The URL of your AWS SQS queue")
    .required()
    .pattern("^https?:\\/\\/[^\\s]+$", fields::http_url)];
const CREDENTIALS: &[Field] = &[
    Field::text("key", "Access Key ID", "AWS Access Key ID")
        .required()
        .sensitive(),
    Field::text("secret", "Secret Access Key", "AWS Secret Access Key")
        .required()
        .sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "aws_sqs",
    label: "AWS SQS",
    description: "Send events to an Amazon SQS queue, authenticating with an access key.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#D82D6D\"/><path d=\"M4 8h8M9.5 5.5 12 8l-2.5 2.5M6.5 5.5 4 8l2.5 2.5\" stroke=\"#fff\" fill=\"none\"/></svg>",
    instructions: "Give the queue's URL and an access key allowed `sqs:SendMessage` on it (with temporary credentials, add `session` to the credentials; for LocalStack, `endpoint` to the config). Each message's body is the event data (JSON); the message attribute `metadata` holds a JSON object with `event-id`, `topic`, `timestamp` and the event's metadata. FIFO queues are not supported yet (no group id is sent).",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct AwsSqs;

/// What makes two destinations' clients differ; equal keys share one on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    region: String,
    endpoint: Option<String>,
    key: String,
    secret: String,
    session: Option<String>,
}

/// `<region>` of `https://sqs.<region>.amazonaws.com/...`.
fn region_of(queue_url: &str) -> Option<String> {
    let (host, _) = clients::url_host_port(queue_url)?;
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [first, region, rest @ ..]
            if (*first == "sqs" || first.starts_with("sqs-")) && rest.ends_with(&["amazonaws", "com"]) =>
        {
            Some(region.to_string())
        }
        _ => None,
    }
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    Some(&url[..end])
}

/// The endpoint the SDK calls: the configured one, else a non-AWS queue's own origin.
fn endpoint_for(config: &StringMap) -> Option<String> {
    if let Some(e) = config.get("endpoint").filter(|e| !e.is_empty()) {
        return Some(e.trim_end_matches('/').to_string());
    }
    let url = config.get("queue_url")?;
    let (host, _) = clients::url_host_port(url)?;
    if host.ends_with(".amazonaws.com") {
        None
    } else {
        origin(url).map(String::from)
    }
}

/// `url.QueryEscape`, for the console link.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl DestinationType for AwsSqs {
    fn kind(&self) -> &'static str {
        SCHEMA.kind
    }

    fn metadata(&self) -> Value {
        SCHEMA.metadata()
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(u) = d.config.get("queue_url").filter(|u| fields::http_url(u)) {
            if clients::url_host_port(u).is_none() {
                errs.push("config.queue_url is invalid".into());
            }
        }
        // Read though not listed (Outpost lists only the queue URL).
        if let Some(e) = d.config.get("endpoint").filter(|e| !e.is_empty()) {
            if !fields::http_url(e) || clients::url_host_port(e).is_none() {
                errs.push("config.endpoint is invalid".into());
            }
        }
        fields::result(errs)
    }

    fn preprocess(
        &self,
        _d: &mut Destination,
        _previous: Option<&Destination>,
        _raw: &RawInput,
        _actor: Actor,
        _now_ms: i64,
    ) -> Result<(), Violations> {
        Ok(())
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let url = d.config.get("queue_url").cloned().unwrap_or_default();
        let link = region_of(&url).map(|r| {
            format!(
                "https://{r}.console.aws.amazon.com/sqs/v3/home?region={r}#/queues/{}",
                query_escape(&url)
            )
        });
        (url, link)
    }

    fn display_credentials(&self, d: &Destination, _now_ms: i64) -> StringMap {
        let mut shown = SCHEMA.display_credentials(&d.credentials);
        if let Some(s) = d.credentials.get("session") {
            shown.insert("session".into(), obfuscate(s));
        }
        shown
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, String> {
        let queue_url = d
            .config
            .get("queue_url")
            .cloned()
            .ok_or("config.queue_url is required")?;
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Box::new(SqsPublisher {
            key: Key {
                region: region_of(&queue_url).unwrap_or_else(|| "us-east-1".into()),
                endpoint: endpoint_for(&d.config),
                key: cred("key").ok_or("credentials.key is required")?,
                secret: cred("secret").ok_or("credentials.secret is required")?,
                session: cred("session"),
            },
            queue_url,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
        }))
    }
}

pub struct SqsPublisher {
    key: Key,
    queue_url: String,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
}

/// The host the SDK will connect to must pass the SSRF guard.
async fn connect(key: &Key, queue_url: &str, guard: bool) -> Result<Client, PublishResult> {
    let host = match &key.endpoint {
        Some(e) => clients::url_host_port(e),
        None => Some((format!("sqs.{}.amazonaws.com", key.region), 443)),
    };
    let (host, port) = host.ok_or_else(|| PublishResult::failed("ERR", format!("invalid queue URL {queue_url}")))?;
    clients::checked_addr(&host, port, guard)
        .await
        .map_err(|e| PublishResult::error(resolve_code(&e), e.to_string()))?;
    let creds = Credentials::new(&key.key, &key.secret, key.session.clone(), None, "outrider-destination");
    let mut conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(key.region.clone()))
        .credentials_provider(creds)
        // The delivery schedule retries; an SDK retry inside one attempt would
        // only hide the failure from the attempt log.
        .retry_config(RetryConfig::disabled());
    if let Some(e) = &key.endpoint {
        conf = conf.endpoint_url(e);
    }
    Ok(Client::from_conf(conf.build()))
}

fn resolve_code(e: &crate::ssrf::ResolveError) -> &'static str {
    match e {
        crate::ssrf::ResolveError::Dns { .. } => "dns_error",
        crate::ssrf::ResolveError::Forbidden { .. } => "forbidden",
    }
}

/// A transport failure's code from its description.
fn network_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("refused") {
        "connection_refused"
    } else if t.contains("reset") || t.contains("broken pipe") || t.contains("connection closed") {
        "connection_reset"
    } else if t.contains("dns") || t.contains("lookup") || t.contains("resolve") {
        "dns_error"
    } else if t.contains("certificate") || t.contains("tls") {
        "tls_error"
    } else if t.contains("timed out") || t.contains("timeout") {
        "timeout"
    } else {
        "network_error"
    }
}

fn classify<E, R>(e: &SdkError<E, R>) -> PublishResult
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(e).to_string();
    match e {
        SdkError::TimeoutError(_) => PublishResult::failed("timeout", text),
        SdkError::DispatchFailure(d) if d.is_timeout() => PublishResult::failed("timeout", text),
        SdkError::DispatchFailure(_) => PublishResult::failed(network_code(&text), text),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let message = s.err().message().unwrap_or("").to_string();
            let detail = if message.is_empty() {
                code.to_string()
            } else {
                format!("{code}: {message}")
            };
            let ours = match code {
                "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "UnrecognizedClientException"
                | "InvalidSecurity"
                | "ExpiredToken" => "auth_failed",
                "AccessDenied" | "AccessDeniedException" | "KMS.AccessDeniedException" => "access_denied",
                "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => "queue_not_found",
                _ => "ERR",
            };
            PublishResult::error(ours, detail)
        }
        _ => PublishResult::failed("ERR", text),
    }
}

impl Publisher for SqsPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let metadata = merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms);
            let attribute = match serde_json::to_string(&metadata)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(m)
                        .build()
                        .map_err(|e| e.to_string())
                }) {
                Ok(a) => a,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let client: Rc<Client> = match clients
                .sqs
                .get(&self.key, || connect(&self.key, &self.queue_url, clients.guard))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            let sent = client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(&*event.data)
                .message_attributes("metadata", attribute)
                .send()
                .await;
            match sent {
                Ok(_) => PublishResult::success("OK", json!({})),
                Err(e) => classify(&e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_endpoints_and_links() {
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of("http://localhost:4566/000000000000/q"), None);
        let mut c = StringMap::new();
        c.insert("queue_url".into(), "http://localhost:4566/000000000000/q".into());
        assert_eq!(endpoint_for(&c).as_deref(), Some("http://localhost:4566"));
        c.insert("queue_url".into(), "https://sqs.us-east-2.amazonaws.com/1/q".into());
        assert_eq!(endpoint_for(&c), None);
        c.insert("endpoint".into(), "http://moto:5000/".into());
        assert_eq!(endpoint_for(&c).as_deref(), Some("http://moto:5000"));
        assert_eq!(query_escape("https://a/b c"), "https%3A%2F%2Fa%2Fb+c");
        let d = test_destination(
            "aws_sqs",
            &[("queue_url", "https://sqs.us-east-2.amazonaws.com/1/q")],
            &[],
        );
        let (t, link) = AwsSqs.target(&d);
        assert_eq!(t, "https://sqs.us-east-2.amazonaws.com/1/q");
        assert_eq!(
            link.as_deref(),
            Some("https://us-east-2.console.aws.amazon.com/sqs/v3/home?region=us-east-2#/queues/https%3A%2F%2Fsqs.us-east-2.amazonaws.com%2F1%2Fq")
        );
    }

    #[test]
    fn validation() {
        let mut d = test_destination("aws_sqs", &[], &[]);
        let e = AwsSqs.validate(&d).unwrap_err();
        assert!(e.contains(&"config.queue_url is required".to_string()), "{e:?}");
        assert!(e.contains(&"credentials.key is required".to_string()), "{e:?}");
        d.config.insert("queue_url".into(), "sqs.example/q".into());
        d.credentials.insert("key".into(), "AKIA".into());
        d.credentials.insert("secret".into(), "s".into());
        let e = AwsSqs.validate(&d).unwrap_err();
        assert_eq!(e, vec!["config.queue_url failed pattern validation".to_string()]);
        d.config
            .insert("queue_url".into(), "https://sqs.us-east-1.amazonaws.com/1/q".into());
        assert!(AwsSqs.validate(&d).is_ok());
    }
}
