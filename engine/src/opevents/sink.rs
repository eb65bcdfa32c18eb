//! Where operator events go: exactly one of an HTTP endpoint, an SQS queue,
//! a Pub/Sub topic or a RabbitMQ exchange. Broker sinks connect on first use
//! and reconnect after an error, so a sink that is down at start (or goes
//! down later) only delays events.

use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Mutex;

#[derive(Clone)]
pub enum SinkConfig {
    Http {
        url: String,
        signing_secret: Option<String>,
    },
    Sqs {
        queue_url: String,
        region: String,
        endpoint: Option<String>,
        credentials: Option<(String, String)>,
    },
    PubSub {
        project: String,
        topic: String,
        credentials: Option<String>,
        auto_provision: bool,
    },
    RabbitMq {
        url: String,
        exchange: String,
        auto_provision: bool,
    },
}

// Secrets and URLs with passwords stay out of logs and panics.
impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Http { .. } => "http",
            SinkConfig::Sqs { .. } => "aws_sqs",
            SinkConfig::PubSub { .. } => "gcp_pubsub",
            SinkConfig::RabbitMq { .. } => "rabbitmq",
        }
    }
}

/// Why an operator event did not reach its sink. Either way the caller
/// retries (alerts until accepted, best-effort events a few times).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink was not reached: connection, timeout or transport.
    #[error("{sink} sink: {message}")]
    Unreachable { sink: &'static str, message: String },
    /// The sink answered and did not take the event.
    #[error("{sink} sink: {message}")]
    Refused { sink: &'static str, message: String },
}

fn unreachable(sink: &'static str, message: impl Into<String>) -> SinkError {
    SinkError::Unreachable {
        sink,
        message: message.into(),
    }
}

fn refused(sink: &'static str, message: impl Into<String>) -> SinkError {
    SinkError::Refused {
        sink,
        message: message.into(),
    }
}

/// Accepts one serialised envelope; `Ok` means the sink has it.
pub trait Sink: Send + Sync + 'static {
    fn send<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>>;
}

pub fn build(cfg: SinkConfig) -> std::sync::Arc<dyn Sink> {
    match cfg {
        SinkConfig::Http { url, signing_secret } => std::sync::Arc::new(HttpSink {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            url,
            secret: signing_secret,
        }),
        SinkConfig::Sqs {
            queue_url,
            region,
            endpoint,
            credentials,
        } => std::sync::Arc::new(SqsSink {
            queue_url,
            region,
            endpoint,
            credentials,
            client: Mutex::new(None),
        }),
        SinkConfig::PubSub {
            project,
            topic,
            credentials,
            auto_provision,
        } => std::sync::Arc::new(PubSubSink {
            project,
            topic,
            credentials,
            auto_provision,
            publisher: Mutex::new(None),
        }),
        SinkConfig::RabbitMq {
            url,
            exchange,
            auto_provision,
        } => std::sync::Arc::new(RabbitSink {
            url,
            exchange,
            auto_provision,
            channel: Mutex::new(None),
        }),
    }
}

/// `v0=<hex HMAC-SHA256(secret, body)>`, Outpost's operator-event signature.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

struct HttpSink {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, _topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.to_vec());
            if let Some(s) = &self.secret {
                req = req.header("x-outpost-signature", signature(s, body));
            }
            // The error text names the host, never a secret.
            let resp = req
                .send()
                .await
                .map_err(|e| unreachable("HTTP", e.without_url().to_string()))?;
            let status = resp.status();
            if status.as_u16() >= 400 {
                return Err(refused("HTTP", format!("answered {status}")));
            }
            Ok(())
        })
    }
}

struct SqsSink {
    queue_url: String,
    region: String,
    endpoint: Option<String>,
    credentials: Option<(String, String)>,
    client: Mutex<Option<aws_sdk_sqs::Client>>,
}

impl Sink for SqsSink {
    fn send<'a>(&'a self, _topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let client = {
                let mut c = self.client.lock().await;
                match &*c {
                    Some(c) => c.clone(),
                    None => {
                        let made = crate::queue::sqs::client(
                            &self.region,
                            self.endpoint.as_deref(),
                            self.credentials.as_ref().map(|(k, s)| (k.as_str(), s.as_str())),
                        )
                        .await;
                        *c = Some(made.clone());
                        made
                    }
                }
            };
            let body = String::from_utf8_lossy(body).into_owned();
            client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| {
                    let message = crate::error_text::with_causes(&e);
                    match e {
                        aws_sdk_sqs::error::SdkError::ServiceError(_) => refused("SQS", message),
                        _ => unreachable("SQS", message),
                    }
                })?;
            Ok(())
        })
    }
}

struct PubSubSink {
    project: String,
    topic: String,
    credentials: Option<String>,
    auto_provision: bool,
    publisher: Mutex<Option<gcloud_pubsub::publisher::Publisher>>,
}

impl PubSubSink {
    async fn connect(&self) -> Result<gcloud_pubsub::publisher::Publisher, String> {
        let cc = crate::queue::pubsub::PubSubQueue::client_config(&self.project, self.credentials.as_deref()).await?;
        let client = gcloud_pubsub::client::Client::new(cc)
            .await
            .map_err(|e| e.to_string())?;
        let topic = client.topic(&self.topic);
        if !topic.exists(None).await.map_err(|e| e.to_string())? {
            if !self.auto_provision {
                return Err(format!(
                    "topic {} does not exist (MQS_AUTO_PROVISION=false)",
                    self.topic
                ));
            }
            topic.create(None, None).await.map_err(|e| e.to_string())?;
        }
        Ok(topic.new_publisher(None))
    }
}

impl Sink for PubSubSink {
    fn send<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut slot = self.publisher.lock().await;
            if slot.is_none() {
                let p = tokio::time::timeout(Duration::from_secs(10), self.connect())
                    .await
                    .map_err(|_| unreachable("Pub/Sub", "connect timed out"))?
                    .map_err(|e| unreachable("Pub/Sub", e))?;
                *slot = Some(p);
            }
            let Some(p) = slot.as_ref() else {
                return Err(unreachable("Pub/Sub", "not connected"));
            };
            let msg = gcloud_googleapis::pubsub::v1::PubsubMessage {
                data: body.to_vec(),
                attributes: [("topic".to_string(), topic.to_string())].into_iter().collect(),
                ..Default::default()
            };
            let sent = tokio::time::timeout(Duration::from_secs(10), p.publish_immediately(vec![msg], None)).await;
            match sent {
                Ok(Ok(ids)) if ids.len() == 1 => Ok(()),
                Ok(Ok(_)) => Err(refused("Pub/Sub", "message not stored")),
                Ok(Err(e)) => {
                    *slot = None;
                    Err(unreachable("Pub/Sub", e.to_string()))
                }
                Err(_) => {
                    *slot = None;
                    Err(unreachable("Pub/Sub", "publish timed out"))
                }
            }
        })
    }
}

struct RabbitSink {
    url: String,
    exchange: String,
    auto_provision: bool,
    channel: Mutex<Option<(lapin::Connection, lapin::Channel)>>,
}

impl RabbitSink {
    async fn connect(&self) -> Result<(lapin::Connection, lapin::Channel), String> {
        use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
        let props = lapin::ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = tokio::time::timeout(Duration::from_secs(3), lapin::Connection::connect(&self.url, props))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        ch.exchange_declare(
            &self.exchange,
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                passive: !self.auto_provision,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange {}: {e}", self.exchange))?;
        Ok((conn, ch))
    }
}

impl Sink for RabbitSink {
    fn send<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            use lapin::options::BasicPublishOptions;
            use lapin::publisher_confirm::Confirmation;
            let mut slot = self.channel.lock().await;
            if slot.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                *slot = Some(self.connect().await.map_err(|e| unreachable("RabbitMQ", e))?);
            }
            let Some((_, ch)) = slot.as_ref() else {
                return Err(unreachable("RabbitMQ", "not connected"));
            };
            // The routing key is the operator-event topic, so consumers can bind per topic.
            let sent = async {
                let confirm = ch
                    .basic_publish(
                        &self.exchange,
                        topic,
                        BasicPublishOptions::default(),
                        body,
                        lapin::BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into()),
                    )
                    .await
                    .map_err(|e| unreachable("RabbitMQ", e.to_string()))?;
                match confirm.await.map_err(|e| unreachable("RabbitMQ", e.to_string()))? {
                    Confirmation::Nack(_) => Err(refused("RabbitMQ", "broker refused the message")),
                    _ => Ok(()),
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), sent).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    *slot = None;
                    Err(e)
                }
                Err(_) => {
                    *slot = None;
                    Err(unreachable("RabbitMQ", "publish timed out"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "v0=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
