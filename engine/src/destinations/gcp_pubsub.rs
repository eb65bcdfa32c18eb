//! The `gcp_pubsub` destination type: each event is published to the
//! destination's topic with the event data as the message data and the
//! merged delivery metadata as its attributes. `endpoint` (the emulator's
//! `host:port`) switches to plain gRPC with no credentials, as in Outpost.
//!
//! Publishing calls the Publish RPC directly, without the client library's
//! publisher (and its background tasks and timers): concurrent deliveries to
//! one topic share a call (up to 1,000 messages, see [`super::batch`]), and a
//! success means Pub/Sub returned the message id for this very message.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use gcloud_gax::conn::{Channel, ConnectionManager, ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use gcloud_googleapis::pubsub::v1::{PublishRequest, PubsubMessage};
use gcloud_pubsub::apiv1::conn_pool::{AUDIENCE, PUBSUB, SCOPES};
use gcloud_pubsub::client::google_cloud_auth;
use serde_json::{json, Value};

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text("project_id", "Project ID", "The GCP project ID").required(),
    Field::text("topic", "Topic", "The Pub/Sub topic").required(),
    Field::text(
        "endpoint",
        "Endpoint",
        "Custom endpoint (host:port), e.g. localhost:8085 for the emulator; it is used without TLS or credentials.",
    ),
];
const CREDENTIALS: &[Field] = &[Field::text(
    "service_account_json",
    "Service Account JSON",
    "Service account key JSON",
)
.required()
.sensitive()];

const SCHEMA: Schema = Schema {
    kind: "gcp_pubsub",
    label: "GCP Pub/Sub",
    description: "Send events to Google Cloud Pub/Sub topics using service account authentication.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\"><circle cx=\"12\" cy=\"12\" r=\"3\" fill=\"#4285f4\"/><circle cx=\"5\" cy=\"8\" r=\"1.7\" fill=\"#669df6\"/><circle cx=\"19\" cy=\"8\" r=\"1.7\" fill=\"#669df6\"/><circle cx=\"12\" cy=\"20\" r=\"1.7\" fill=\"#669df6\"/></svg>",
    instructions: "Create the topic, then a service account with the `roles/pubsub.publisher` role on it, and paste its JSON key. Each message's data is the event data (JSON) and its attributes are `event-id`, `topic`, `timestamp` and the event's metadata.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct GcpPubSub;

/// What makes two destinations' clients differ; equal keys share one on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The emulator's `host:port`; `None` is Google Cloud.
    emulator: Option<String>,
    /// The key file; empty for the emulator.
    service_account_json: String,
}

/// `host:port` of the endpoint field (a scheme, if given, is dropped).
fn emulator_host(config: &StringMap) -> Option<String> {
    let e = config.get("endpoint").map(|e| e.trim()).filter(|e| !e.is_empty())?;
    let e = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .unwrap_or(e);
    Some(e.trim_end_matches('/').to_string())
}

impl DestinationType for GcpPubSub {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        match emulator_host(&d.config) {
            Some(h) => {
                if clients::host_port(&h, 8085).is_none() {
                    errs.push("config.endpoint is invalid".into());
                }
            }
            None => {
                if let Some(key) = d.credentials.get("service_account_json").filter(|k| !k.is_empty()) {
                    match serde_json::from_str::<Value>(key) {
                        Ok(Value::Object(m)) if m.contains_key("type") => {
                            if !is_service_account(&m) {
                                errs.push("credentials.service_account_json failed type validation".into())
                            }
                        }
                        Ok(Value::Object(_)) => {
                            errs.push("credentials.service_account_json failed missing_type validation".into())
                        }
                        _ => errs.push("credentials.service_account_json failed format validation".into()),
                    }
                }
            }
        }
        fields::result(errs)
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        let (project, topic) = (get("project_id"), get("topic"));
        let link = format!("https://console.cloud.google.com/cloudpubsub/topic/detail/{topic}?project={project}");
        (format!("{project}/{topic}"), Some(link))
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let get = |k: &str| d.config.get(k).filter(|v| !v.is_empty()).cloned();
        let project = get("project_id").ok_or(PublisherError::Missing("config.project_id"))?;
        let topic = get("topic").ok_or(PublisherError::Missing("config.topic"))?;
        let emulator = emulator_host(&d.config);
        let service_account_json = if emulator.is_some() {
            String::new()
        } else {
            d.credentials
                .get("service_account_json")
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or(PublisherError::Missing("credentials.service_account_json"))?
        };
        Ok(Box::new(PubSubPublisher {
            lane: Arc::new((
                Key {
                    emulator,
                    service_account_json,
                },
                format!("projects/{project}/topics/{topic}"),
            )),
            project,
            topic,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            timeout: ctx.config.delivery_timeout_for("gcp_pubsub"),
        }))
    }
}

pub struct PubSubPublisher {
    /// The client key and full topic name: also the batch lane's key, made once.
    lane: Arc<(Key, String)>,
    project: String,
    topic: String,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    /// Bounds connecting as well as each attempt.
    timeout: Duration,
}

/// Only a service-account key is accepted. With an audience set the library
/// signs its own token and makes no request; any other credential type
/// (`authorized_user`, `external_account`) makes it POST to a URL taken from
/// the key itself (`token_uri`), with its own HTTP client that the SSRF guard
/// never sees: a tenant could aim it at any address.
fn is_service_account(key: &serde_json::Map<String, Value>) -> bool {
    key.get("type").and_then(Value::as_str) == Some("service_account")
}

/// The Publish RPC's client over one gRPC channel (authenticated per call
/// on Google Cloud).
pub type Client = PublisherClient<Channel>;

async fn connect(key: &Key, guard: &crate::ssrf::Guard, timeout: Duration) -> Result<Client, PublishResult> {
    let options = ConnectionOptions {
        connect_timeout: Some(timeout),
        ..Default::default()
    };
    let environment = match &key.emulator {
        Some(host) => {
            // The emulator endpoint is user-supplied: it must pass the guard.
            let (h, port) = clients::host_port(host, 8085)
                .ok_or_else(|| PublishResult::failed("ERR", "config.endpoint is invalid"))?;
            // Plain gRPC: it goes to the checked address, not to a second
            // lookup of the name.
            let addr = clients::checked_target(&h, port, guard).await?;
            Environment::Emulator(addr.to_string())
        }
        None => {
            // Destinations saved before the type check are refused here too.
            let service_account = serde_json::from_str::<Value>(&key.service_account_json)
                .ok()
                .and_then(|v| v.as_object().map(is_service_account))
                .unwrap_or(false);
            if !service_account {
                return Err(PublishResult::permanent(
                    "auth_failed",
                    "only a service-account key (\"type\": \"service_account\") is accepted",
                ));
            }
            // The error text never repeats the key material.
            let file = google_cloud_auth::credentials::CredentialsFile::new_from_str(&key.service_account_json)
                .await
                .map_err(|_| {
                    PublishResult::permanent("auth_failed", "the service-account key is not a valid key file")
                })?;
            let config = google_cloud_auth::project::Config::default()
                .with_audience(AUDIENCE)
                .with_scopes(&SCOPES);
            let ts = google_cloud_auth::token::DefaultTokenSourceProvider::new_with_credentials(config, Box::new(file))
                .await
                .map_err(|e| PublishResult::failed("auth_failed", format!("credentials: {e}")))?;
            Environment::GoogleCloud(Box::new(ts))
        }
    };
    let cm = ConnectionManager::new(1, PUBSUB, &format!("https://{PUBSUB}/"), &environment, &options)
        .await
        .map_err(|e| PublishResult::failed(clients::network_code(&e.to_string()), e.to_string()))?;
    Ok(PublisherClient::new(cm.conn()))
}

fn classify(s: &Status) -> PublishResult {
    let code = match s.code() {
        Code::NotFound => "topic_not_found",
        Code::PermissionDenied => "access_denied",
        Code::Unauthenticated => "auth_failed",
        Code::DeadlineExceeded => "timeout",
        Code::Unavailable => clients::network_code(s.message()),
        _ => "ERR",
    };
    PublishResult::error(code, format!("{:?}: {}", s.code(), s.message()))
}

/// One message of a Publish call.
pub type Item = PubsubMessage;

/// Publish takes 1,000 messages and 10 MB; data and attributes are counted,
/// with room left for the request's own framing.
const LIMITS: batch::Limits = batch::Limits {
    max_items: 1000,
    max_bytes: 9 * 1024 * 1024,
};

impl PubSubPublisher {
    async fn send(&self, clients: &ShardClients, client: &Rc<Client>, messages: Vec<Item>) -> Vec<PublishResult> {
        let n = messages.len();
        let request = PublishRequest {
            topic: self.lane.1.clone(),
            messages,
        };
        // One call, no retries inside the attempt: the delivery schedule retries.
        match (**client).clone().publish(request).await {
            Ok(r) => {
                // Pub/Sub publishes all or none and answers the ids in order.
                let mut ids = r.into_inner().message_ids.into_iter();
                (0..n)
                    .map(|_| match ids.next() {
                        Some(id) => PublishResult::success(
                            "OK",
                            json!({ "message_id": id, "topic": self.topic, "project": self.project }),
                        ),
                        None => PublishResult::failed("ERR", "Publish did not answer a message id for this message"),
                    })
                    .collect()
            }
            Err(s) => {
                if s.code() == Code::Unavailable {
                    clients.pubsub.discard(&self.lane.0, client);
                }
                vec![classify(&s); n]
            }
        }
    }
}

impl Publisher for PubSubPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let attributes: HashMap<String, String> =
                merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            let client: Rc<Client> = match clients
                .pubsub
                .get(&self.lane.0, || connect(&self.lane.0, &clients.guard, self.timeout))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            let size = event.data.len() + attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let message = PubsubMessage {
                data: event.data.as_bytes().to_vec(),
                attributes,
                ..Default::default()
            };
            clients
                .pubsub_batches
                .submit(&self.lane, message, size, LIMITS, |messages| {
                    self.send(clients, &client, messages)
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_target() {
        let ok_key = r#"{"type":"service_account","project_id":"p"}"#;
        let d = test_destination(
            "gcp_pubsub",
            &[("project_id", "p"), ("topic", "t")],
            &[("service_account_json", ok_key)],
        );
        assert!(GcpPubSub.validate(&d).is_ok());
        assert_eq!(GcpPubSub.target(&d).0, "p/t");
        for other in [
            r#"{"type":"authorized_user","token_uri":"http://10.0.0.1/token","refresh_token":"r"}"#,
            r#"{"type":"external_account","token_url":"http://10.0.0.1/"}"#,
            r#"{"type":7}"#,
        ] {
            let d = test_destination(
                "gcp_pubsub",
                &[("project_id", "p"), ("topic", "t")],
                &[("service_account_json", other)],
            );
            assert_eq!(
                GcpPubSub.validate(&d).unwrap_err(),
                vec!["credentials.service_account_json failed type validation".to_string()],
                "{other}"
            );
        }
        let d = test_destination(
            "gcp_pubsub",
            &[("project_id", "p"), ("topic", "t")],
            &[("service_account_json", "{\"a\":1}")],
        );
        assert_eq!(
            GcpPubSub.validate(&d).unwrap_err(),
            vec!["credentials.service_account_json failed missing_type validation".to_string()]
        );
        let d = test_destination(
            "gcp_pubsub",
            &[("project_id", "p")],
            &[("service_account_json", "nope")],
        );
        assert_eq!(
            GcpPubSub.validate(&d).unwrap_err(),
            vec![
                "config.topic is required".to_string(),
                "credentials.service_account_json failed format validation".to_string()
            ]
        );
        // With the emulator the key is still required (Outpost lists it as
        // required) but not parsed.
        let d = test_destination(
            "gcp_pubsub",
            &[
                ("project_id", "p"),
                ("topic", "t"),
                ("endpoint", "http://localhost:8085"),
            ],
            &[("service_account_json", "x")],
        );
        assert!(GcpPubSub.validate(&d).is_ok());
        assert_eq!(emulator_host(&d.config).as_deref(), Some("localhost:8085"));
    }
}
