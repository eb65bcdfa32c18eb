//! Broker destinations for the harness (`destination_type` in a scenario):
//! the server delivers to a real broker on loopback, the broker's own
//! consumer drains it and records each harness event it sees (as the HTTP
//! sink does for webhooks), and the baseline is a raw client of the same
//! broker doing the same publishes (same body, same metadata, the same
//! acknowledgement: publisher confirms, XADD replies, JetStream acks, Kafka
//! `acks=all` produce responses) with
//! 64 in flight, while the same consumer drains.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::sink::{Arrival, SinkStats};

/// Messages each raw client keeps in flight.
pub const RAW_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RabbitMq,
    RedisStream,
    Nats,
    /// A tansu broker (Kafka-compatible, from crates.io) the harness starts:
    /// `OUTRIDER_TANSU_BIN`, else `tansu` on the PATH, else the copy
    /// `scripts/services.sh` installs under `~/.cache/outrider/tools`.
    Kafka,
    /// Mosquitto on 1883: the consumer subscribes with QoS 1; the raw client
    /// publishes with QoS 1 and counts PUBACKs.
    Mqtt,
    /// moto (`OUTRIDER_TEST_AWS_ENDPOINT`, which `scripts/services.sh`
    /// writes): the consumer long-polls the run's queue; the raw client sends
    /// one `SendMessage` per message (the server batches concurrent ones).
    AwsSqs,
    /// The Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`): the consumer pulls
    /// the run's subscription; the raw client is the client library's
    /// publisher (its own batching), each publish awaited.
    GcpPubSub,
    /// moto: the consumer reads the run's one-shard stream from its start;
    /// the raw client sends one `PutRecord` per record.
    AwsKinesis,
    /// moto: the consumer lists the run's bucket (object key = event id);
    /// the raw client sends one `PutObject` per object.
    AwsS3,
    /// moto: a rule on the run's bus forwards to an SQS queue the consumer
    /// drains; the raw client sends one `PutEvents` entry per call.
    AwsEventBridge,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Option<Kind>, String> {
        Ok(match s {
            "" | "webhook" => None,
            "rabbitmq" => Some(Kind::RabbitMq),
            "redis_stream" => Some(Kind::RedisStream),
            "nats" => Some(Kind::Nats),
            "kafka" => Some(Kind::Kafka),
            "mqtt" => Some(Kind::Mqtt),
            "aws_sqs" => Some(Kind::AwsSqs),
            "gcp_pubsub" => Some(Kind::GcpPubSub),
            "aws_kinesis" => Some(Kind::AwsKinesis),
            "aws_s3" => Some(Kind::AwsS3),
            "aws_eventbridge" => Some(Kind::AwsEventBridge),
            other => {
                return Err(format!(
                    "destination_type {other:?}: the harness drives webhook, rabbitmq, redis_stream, nats, kafka, mqtt, aws_sqs, aws_kinesis, aws_s3, aws_eventbridge and gcp_pubsub"
                ))
            }
        })
    }
}

/// One run's broker: where it is, the names this run uses.
pub struct Broker {
    pub kind: Kind,
    run: String,
    /// Set when the run is over: the consumer stops.
    stop: Arc<AtomicBool>,
    /// The Kafka broker process, its port and its storage directory.
    tansu: std::sync::Mutex<Option<std::process::Child>>,
    kafka_port: u16,
    kafka_dir: Option<tempfile::TempDir>,
    /// The run's SQS queue URL, once made.
    sqs_url: std::sync::Mutex<Option<String>>,
}

/// Kafka partitions of the run's topic.
const KAFKA_PARTITIONS: i32 = 3;
/// The SCRAM-SHA-256 user the server and the raw client authenticate as.
const KAFKA_USER: (&str, &str) = ("lt", "lt-secret");

fn tansu_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_TANSU_BIN") {
        return p.into();
    }
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let cached = home.join(".cache/outrider/tools/bin/tansu");
    if cached.is_file() {
        cached
    } else {
        "tansu".into()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn kafka_client(port: u16) -> Result<rskafka::client::Client, String> {
    rskafka::client::ClientBuilder::new(vec![format!("127.0.0.1:{port}")])
        .sasl_config(rskafka::client::SaslConfig::ScramSha256(
            rskafka::client::Credentials::new(KAFKA_USER.0.into(), KAFKA_USER.1.into()),
        ))
        .backoff_config(rskafka::BackoffConfig {
            deadline: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .build()
        .await
        .map_err(|e| format!("Kafka (tansu) on {port}: {e}"))
}

async fn kafka_partitions(
    port: u16,
    topic: &str,
) -> Result<Vec<Arc<rskafka::client::partition::PartitionClient>>, String> {
    let client = kafka_client(port).await?;
    let mut parts = Vec::new();
    for p in 0..KAFKA_PARTITIONS {
        let pc = client
            .partition_client(topic, p, rskafka::client::partition::UnknownTopicHandling::Retry)
            .await
            .map_err(|e| e.to_string())?;
        parts.push(Arc::new(pc));
    }
    Ok(parts)
}

const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672";
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const NATS_ADDR: &str = "127.0.0.1:4222";
const MQTT_ADDR: (&str, u16) = ("127.0.0.1", 1883);
const PUBSUB_PROJECT: &str = "outrider-loadtest";

fn aws_endpoint() -> Result<String, String> {
    std::env::var("OUTRIDER_TEST_AWS_ENDPOINT")
        .map_err(|_| "OUTRIDER_TEST_AWS_ENDPOINT (moto) is not set: run scripts/services.sh up".to_string())
}

fn pubsub_host() -> Result<String, String> {
    std::env::var("PUBSUB_EMULATOR_HOST")
        .map_err(|_| "PUBSUB_EMULATOR_HOST (the Pub/Sub emulator) is not set: run scripts/services.sh up".to_string())
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "lt", "lt", None, None, "loadtest",
            ))
            .endpoint_url(endpoint)
            .build(),
    )
}

async fn pubsub_client() -> Result<gcloud_pubsub::client::Client, String> {
    // The client library reads PUBSUB_EMULATOR_HOST itself.
    pubsub_host()?;
    gcloud_pubsub::client::Client::new(gcloud_pubsub::client::ClientConfig {
        project_id: Some(PUBSUB_PROJECT.into()),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("Pub/Sub emulator: {e}"))
}

/// The event id an `aws_sqs` delivery carries: its `metadata` attribute's JSON.
fn sqs_attribute_event_id(m: &aws_sdk_sqs::types::Message) -> Option<String> {
    let json = m.message_attributes()?.get("metadata")?.string_value()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("event-id")?.as_str().map(String::from)
}

/// The event id of an EventBridge event a rule forwarded to SQS: `detail.metadata`.
fn eventbridge_event_id(m: &aws_sdk_sqs::types::Message) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(m.body()?).ok()?;
    v.get("detail")?
        .get("metadata")?
        .get("event-id")?
        .as_str()
        .map(String::from)
}

/// Four long-polling consumers of `url` that record and delete what they receive.
fn spawn_sqs_consumers<R>(
    client: aws_sdk_sqs::Client,
    url: String,
    stop: Arc<AtomicBool>,
    stats: Arc<SinkStats>,
    record: Arc<R>,
    event_id: fn(&aws_sdk_sqs::types::Message) -> Option<String>,
) where
    R: Fn(&SinkStats, Option<&str>) + Send + Sync + 'static,
{
    for _ in 0..4 {
        let (client, url, stop, stats, record) =
            (client.clone(), url.clone(), stop.clone(), stats.clone(), record.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(out) = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // moto scans every message a queue holds on each receive:
                // deleting keeps the queue, and the scan, short.
                let handles: Vec<_> = out
                    .messages()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_receipt_handle(m.receipt_handle().map(String::from))
                            .build()
                            .ok()
                    })
                    .collect();
                if !handles.is_empty() {
                    let _ = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(handles))
                        .send()
                        .await;
                }
                for m in out.messages() {
                    record(&stats, event_id(m).as_deref());
                }
            }
        });
    }
}

/// A queue that keeps received messages invisible for the whole run (so
/// nothing is counted twice before it is deleted): its URL and ARN.
async fn sqs_queue(client: &aws_sdk_sqs::Client, name: &str) -> Result<(String, String), String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "43200")
        .send()
        .await
        .map_err(|e| format!("moto: CreateQueue: {e}"))?
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let arn = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("moto: GetQueueAttributes: {e}"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    Ok((url, arn))
}

fn aws_conf<C>(endpoint: &str, f: impl FnOnce(&str, aws_sdk_sqs::config::Credentials) -> C) -> C {
    f(
        endpoint,
        aws_sdk_sqs::config::Credentials::new("lt", "lt", None, None, "loadtest"),
    )
}

fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    aws_conf(endpoint, |e, c| {
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::Config::builder()
                .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
                .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
                .credentials_provider(c)
                .endpoint_url(e)
                .build(),
        )
    })
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    aws_conf(endpoint, |e, c| {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .credentials_provider(c)
                .endpoint_url(e)
                .force_path_style(true)
                .build(),
        )
    })
}

fn eventbridge_client(endpoint: &str) -> aws_sdk_eventbridge::Client {
    aws_conf(endpoint, |e, c| {
        aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::Config::builder()
                .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
                .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
                .credentials_provider(c)
                .endpoint_url(e)
                .build(),
        )
    })
}

/// `{"data":...,"metadata":{...}}` with sorted metadata keys, as the server
/// writes Kinesis records and EventBridge details.
fn data_and_metadata(body: &[u8], meta: &[(&str, String)]) -> String {
    let sorted: std::collections::BTreeMap<&str, &str> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    format!(
        "{{\"data\":{},\"metadata\":{}}}",
        String::from_utf8_lossy(body),
        serde_json::to_string(&sorted).unwrap_or_default()
    )
}

const EB_SOURCE: &str = "outrider.loadtest";

fn mqtt_options(name: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(name, MQTT_ADDR.0, MQTT_ADDR.1);
    o.set_clean_start(true);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn lapin_props() -> lapin::ConnectionProperties {
    lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current())
}

impl Broker {
    pub fn new(kind: Kind, run: &str) -> Broker {
        Broker {
            kind,
            run: run.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            tansu: std::sync::Mutex::new(None),
            kafka_port: if kind == Kind::Kafka { free_port() } else { 0 },
            kafka_dir: if kind == Kind::Kafka {
                tempfile::tempdir().ok()
            } else {
                None
            },
            sqs_url: std::sync::Mutex::new(None),
        }
    }

    fn kafka_topic(&self) -> String {
        format!("lt{}", self.run)
    }

    /// Starts tansu on a SQLite file: a first run without authentication
    /// creates the SCRAM user and the run's topic (tansu keeps no users in
    /// memory storage and takes no unauthenticated requests with
    /// authentication on), then the broker restarts with authentication.
    async fn start_tansu(&self) -> Result<(), String> {
        let dir = self
            .kafka_dir
            .as_ref()
            .ok_or("no directory for the Kafka broker")?
            .path()
            .to_path_buf();
        let port = self.kafka_port;
        let url = format!("tcp://127.0.0.1:{port}");
        let spawn = |auth: bool| {
            let mut cmd = std::process::Command::new(tansu_bin());
            cmd.current_dir(&dir)
                .args([
                    "broker",
                    "--storage-engine",
                    "sqlite://tansu.db",
                    "--listener-url",
                    &url,
                ])
                .args(["--advertised-listener-url", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if auth {
                cmd.arg("--authentication");
            }
            cmd.spawn().map_err(|e| {
                format!(
                    "cannot start tansu ({}): {e}; scripts/services.sh installs it",
                    tansu_bin().display()
                )
            })
        };
        let listening = || async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                if Instant::now() > deadline {
                    return Err(format!("tansu did not listen on {port}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        };
        let cli = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new(tansu_bin())
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("tansu {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        let mut setup = spawn(false)?;
        let made = async {
            listening().await?;
            cli(&[
                "user",
                "create",
                "--broker",
                &url,
                "--mechanism",
                "scram256",
                KAFKA_USER.0,
                KAFKA_USER.1,
            ])?;
            let partitions = KAFKA_PARTITIONS.to_string();
            cli(&[
                "topic",
                "create",
                "--broker",
                &url,
                "--partitions",
                &partitions,
                &self.kafka_topic(),
            ])
        }
        .await;
        let _ = setup.kill();
        let _ = setup.wait();
        made?;
        let child = spawn(true)?;
        if let Ok(mut t) = self.tansu.lock() {
            *t = Some(child);
        }
        listening().await
    }

    fn queue(&self) -> String {
        format!("outrider-loadtest-{}", self.run)
    }

    /// Matches the services script's clean-up of harness keys.
    fn stream(&self) -> String {
        format!("lt{}:outrider:stream", self.run)
    }

    fn subject(&self) -> String {
        format!("lt.{}", self.run)
    }

    fn js_stream(&self) -> String {
        format!("LT{}", self.run)
    }

    fn mqtt_topic(&self) -> String {
        format!("outrider/loadtest/{}", self.run)
    }

    /// Queue and Pub/Sub topic name.
    fn cloud_name(&self) -> String {
        format!("outrider-loadtest-{}", self.run)
    }

    fn sqs_queue_url(&self) -> String {
        self.sqs_url.lock().ok().and_then(|u| u.clone()).unwrap_or_default()
    }

    /// The `POST /destinations` body of destination `d` of tenant `t`.
    pub fn destination_json(&self, t: u64, d: u64) -> String {
        let (kind, config, creds) = match self.kind {
            Kind::RabbitMq => (
                "rabbitmq",
                // amq.topic exists on every broker; the run's queue is bound to it.
                serde_json::json!({"server_url": "127.0.0.1:5672", "exchange": "amq.topic", "tls": "false"}),
                serde_json::json!({"username": "guest", "password": "guest"}),
            ),
            Kind::RedisStream => (
                "redis_stream",
                serde_json::json!({"address": "127.0.0.1:6379", "stream": self.stream()}),
                serde_json::json!({}),
            ),
            Kind::Nats => (
                "nats",
                serde_json::json!({"server_url": NATS_ADDR, "subject": self.subject(), "jetstream": "on"}),
                serde_json::json!({}),
            ),
            Kind::Kafka => (
                "kafka",
                serde_json::json!({"brokers": format!("127.0.0.1:{}", self.kafka_port), "topic": self.kafka_topic(),
                    "tls": "false", "sasl_mechanism": "scram-sha-256"}),
                serde_json::json!({"username": KAFKA_USER.0, "password": KAFKA_USER.1}),
            ),
            Kind::Mqtt => (
                "mqtt",
                serde_json::json!({"server_url": format!("{}:{}", MQTT_ADDR.0, MQTT_ADDR.1), "topic": self.mqtt_topic()}),
                serde_json::json!({}),
            ),
            Kind::AwsSqs => (
                "aws_sqs",
                serde_json::json!({"queue_url": self.sqs_queue_url(), "endpoint": aws_endpoint().unwrap_or_default()}),
                serde_json::json!({"key": "lt", "secret": "lt"}),
            ),
            Kind::GcpPubSub => (
                "gcp_pubsub",
                serde_json::json!({"project_id": PUBSUB_PROJECT, "topic": self.cloud_name(),
                    "endpoint": pubsub_host().unwrap_or_default()}),
                serde_json::json!({"service_account_json": "{}"}),
            ),
            Kind::AwsKinesis => (
                "aws_kinesis",
                serde_json::json!({"stream_name": self.cloud_name(), "region": "us-east-1",
                    "endpoint": aws_endpoint().unwrap_or_default()}),
                serde_json::json!({"key": "lt", "secret": "lt"}),
            ),
            Kind::AwsS3 => (
                "aws_s3",
                serde_json::json!({"bucket": self.cloud_name(), "region": "us-east-1",
                    "endpoint": aws_endpoint().unwrap_or_default(), "key_template": "metadata.\"event-id\""}),
                serde_json::json!({"key": "lt", "secret": "lt"}),
            ),
            Kind::AwsEventBridge => (
                "aws_eventbridge",
                serde_json::json!({"event_bus": self.cloud_name(), "region": "us-east-1", "source": EB_SOURCE,
                    "endpoint": aws_endpoint().unwrap_or_default()}),
                serde_json::json!({"key": "lt", "secret": "lt"}),
            ),
        };
        serde_json::json!({"id": format!("lt-t{t}-d{d}"), "type": kind, "topics": "*", "config": config, "credentials": creds})
            .to_string()
    }

    /// Creates what the run needs (queue, JetStream stream) and starts the
    /// consumer, which records harness events into `stats` until [`stop`].
    pub async fn start_consumer(&self, stats: Arc<SinkStats>, prefix: String) -> Result<(), String> {
        let stop = self.stop.clone();
        let record = move |stats: &SinkStats, event_id: Option<&str>| match event_id
            .and_then(|i| i.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => {
                if let Ok(mut a) = stats.arrivals.lock() {
                    a.push(Arrival {
                        key: n,
                        at: Instant::now(),
                    });
                }
            }
            None => {
                stats.foreign.fetch_add(1, Ordering::Relaxed);
            }
        };
        match self.kind {
            Kind::RabbitMq => {
                use lapin::options::*;
                use lapin::types::{AMQPValue, FieldTable};
                let conn = lapin::Connection::connect(RABBIT_URL, lapin_props())
                    .await
                    .map_err(|e| format!("RabbitMQ at {RABBIT_URL}: {e}"))?;
                let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                let q = self.queue();
                let args = FieldTable::default();
                ch.queue_declare(
                    q.as_str(),
                    QueueDeclareOptions {
                        auto_delete: true,
                        ..Default::default()
                    },
                    args.clone(),
                )
                .await
                .map_err(|e| e.to_string())?;
                ch.queue_bind(q.as_str(), "amq.topic", "#", QueueBindOptions::default(), args.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                ch.basic_qos(1000, BasicQosOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut consumer = ch
                    .basic_consume(
                        q.as_str(),
                        "loadtest",
                        BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        },
                        args,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _conn = conn;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
                        else {
                            continue;
                        };
                        let id = d
                            .properties
                            .headers()
                            .as_ref()
                            .and_then(|h| match h.inner().get("event-id") {
                                Some(AMQPValue::LongString(s)) => {
                                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                                }
                                _ => None,
                            });
                        record(&stats, id.as_deref());
                    }
                });
            }
            Kind::RedisStream => {
                let client = redis::Client::open(REDIS_URL).map_err(|e| e.to_string())?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("Redis at {REDIS_URL}: {e}"))?;
                let stream = self.stream();
                tokio::spawn(async move {
                    let mut last = "0-0".to_string();
                    while !stop.load(Ordering::Relaxed) {
                        let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                            .arg("COUNT")
                            .arg(2000)
                            .arg("BLOCK")
                            .arg(200)
                            .arg("STREAMS")
                            .arg(&stream)
                            .arg(&last)
                            .query_async(&mut conn)
                            .await;
                        let Ok(redis::Value::Array(streams)) = reply else {
                            continue;
                        };
                        for s in streams {
                            let Ok((_name, entries)) =
                                redis::from_redis_value::<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>(s)
                            else {
                                continue;
                            };
                            for (id, fields) in entries {
                                let event_id = fields
                                    .iter()
                                    .find(|(k, _)| k == "event-id")
                                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                                record(&stats, event_id.as_deref());
                                last = id;
                            }
                        }
                    }
                    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await;
                });
            }
            Kind::Nats => {
                let client = async_nats::connect(NATS_ADDR)
                    .await
                    .map_err(|e| format!("NATS at {NATS_ADDR}: {e}"))?;
                let js = async_nats::jetstream::new(client.clone());
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: self.js_stream(),
                    subjects: vec![self.subject()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("JetStream stream: {e}"))?;
                // A core subscription on the stream's subject sees every
                // message published to it, JetStream-acknowledged or not; the
                // publishers (the server, the raw client) both wait for acks.
                let mut sub = client.subscribe(self.subject()).await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _client = client;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await else {
                            continue;
                        };
                        let id = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("event-id"))
                            .map(|v| v.to_string());
                        record(&stats, id.as_deref());
                    }
                });
            }
            Kind::Kafka => {
                self.start_tansu().await?;
                let record = Arc::new(record);
                for p in kafka_partitions(self.kafka_port, &self.kafka_topic()).await? {
                    let (stop, stats, record) = (stop.clone(), stats.clone(), record.clone());
                    tokio::spawn(async move {
                        let mut offset = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let Ok((records, _)) = p.fetch_records(offset, 1..4_000_000, 200).await else {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            };
                            for r in records {
                                offset = r.offset + 1;
                                let id = r
                                    .record
                                    .headers
                                    .get("event-id")
                                    .map(|v| String::from_utf8_lossy(v).into_owned());
                                record(&stats, id.as_deref());
                            }
                        }
                    });
                }
            }
            Kind::Mqtt => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::mqttbytes::QoS;
                use rumqttc::v5::{AsyncClient, Event};
                // Mosquitto queues at most 1,000 messages per subscriber
                // beyond its receive window and drops the rest (its log says
                // "Outgoing messages are being dropped"): the widest window
                // keeps the broker sending instead of queueing.
                let mut opts = mqtt_options(&format!("lt-sub-{}", self.run));
                opts.set_receive_maximum(Some(u16::MAX));
                let (client, mut events) = AsyncClient::new(opts, 1000);
                client
                    .subscribe(self.mqtt_topic(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?;
                // Publishing starts only once the subscription is in place.
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("MQTT broker at {}:{}: {e}", MQTT_ADDR.0, MQTT_ADDR.1)),
                        Err(_) => return Err("MQTT: no SUBACK within 10 s".into()),
                    }
                }
                tokio::spawn(async move {
                    let _client = client;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(200), events.poll()).await else {
                            continue;
                        };
                        if let Event::Incoming(Packet::Publish(p)) = ev {
                            let id = p.properties.as_ref().and_then(|props| {
                                props
                                    .user_properties
                                    .iter()
                                    .find(|(k, _)| k == "event-id")
                                    .map(|(_, v)| v.clone())
                            });
                            record(&stats, id.as_deref());
                        }
                    }
                });
            }
            Kind::AwsSqs => {
                let client = sqs_client(&aws_endpoint()?);
                let (url, _) = sqs_queue(&client, &self.cloud_name()).await?;
                if let Ok(mut u) = self.sqs_url.lock() {
                    *u = Some(url.clone());
                }
                spawn_sqs_consumers(client, url, stop, stats, Arc::new(record), sqs_attribute_event_id);
            }
            Kind::AwsKinesis => {
                use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
                let client = kinesis_client(&aws_endpoint()?);
                let name = self.cloud_name();
                client
                    .create_stream()
                    .stream_name(&name)
                    .shard_count(1)
                    .send()
                    .await
                    .map_err(|e| format!("moto: CreateStream: {e}"))?;
                let deadline = Instant::now() + Duration::from_secs(20);
                let shard = loop {
                    let d = client
                        .describe_stream()
                        .stream_name(&name)
                        .send()
                        .await
                        .map_err(|e| format!("moto: DescribeStream: {e}"))?;
                    let desc = d.stream_description();
                    if let Some(desc) = desc.filter(|d| d.stream_status() == &StreamStatus::Active) {
                        break desc
                            .shards()
                            .first()
                            .map(|s| s.shard_id().to_string())
                            .unwrap_or_default();
                    }
                    if Instant::now() > deadline {
                        return Err("moto: the Kinesis stream did not become active".into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let mut iterator = client
                    .get_shard_iterator()
                    .stream_name(&name)
                    .shard_id(shard)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .map_err(|e| format!("moto: GetShardIterator: {e}"))?
                    .shard_iterator()
                    .map(String::from);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(it) = iterator.clone() else { break };
                        let Ok(out) = client.get_records().shard_iterator(it).limit(10_000).send().await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        for r in out.records() {
                            let id = serde_json::from_slice::<serde_json::Value>(r.data().as_ref())
                                .ok()
                                .and_then(|v| v.get("metadata")?.get("event-id")?.as_str().map(String::from));
                            record(&stats, id.as_deref());
                        }
                        if out.records().is_empty() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        iterator = out.next_shard_iterator().map(String::from);
                    }
                });
            }
            Kind::AwsS3 => {
                let client = s3_client(&aws_endpoint()?);
                let bucket = self.cloud_name();
                client
                    .create_bucket()
                    .bucket(&bucket)
                    .send()
                    .await
                    .map_err(|e| format!("moto: CreateBucket: {e}"))?;
                tokio::spawn(async move {
                    let mut seen = std::collections::HashSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        // The delivered objects are named by event id.
                        let mut pages = client.list_objects_v2().bucket(&bucket).into_paginator().send();
                        while let Some(Ok(page)) = pages.next().await {
                            for o in page.contents() {
                                if let Some(key) = o.key() {
                                    if seen.insert(key.to_string()) {
                                        record(&stats, Some(key));
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
            }
            Kind::AwsEventBridge => {
                let endpoint = aws_endpoint()?;
                let (sqs, events) = (sqs_client(&endpoint), eventbridge_client(&endpoint));
                let name = self.cloud_name();
                let (url, arn) = sqs_queue(&sqs, &name).await?;
                if let Ok(mut u) = self.sqs_url.lock() {
                    *u = Some(url.clone());
                }
                events
                    .create_event_bus()
                    .name(&name)
                    .send()
                    .await
                    .map_err(|e| format!("moto: CreateEventBus: {e}"))?;
                events
                    .put_rule()
                    .name("lt-to-queue")
                    .event_bus_name(&name)
                    .event_pattern(format!("{{\"source\": [\"{EB_SOURCE}\"]}}"))
                    .send()
                    .await
                    .map_err(|e| format!("moto: PutRule: {e}"))?;
                let target = aws_sdk_eventbridge::types::Target::builder()
                    .id("q")
                    .arn(arn)
                    .build()
                    .map_err(|e| e.to_string())?;
                events
                    .put_targets()
                    .rule("lt-to-queue")
                    .event_bus_name(&name)
                    .targets(target)
                    .send()
                    .await
                    .map_err(|e| format!("moto: PutTargets: {e}"))?;
                spawn_sqs_consumers(sqs, url, stop, stats, Arc::new(record), eventbridge_event_id);
            }
            Kind::GcpPubSub => {
                let client = pubsub_client().await?;
                let name = self.cloud_name();
                client
                    .topic(&name)
                    .create(None, None)
                    .await
                    .map_err(|e| format!("Pub/Sub emulator: create topic: {e}"))?;
                // Pulled messages are not acked: the deadline outlasts the run.
                let config = gcloud_pubsub::subscription::SubscriptionConfig {
                    ack_deadline_seconds: 600,
                    ..Default::default()
                };
                let sub = client
                    .create_subscription(&format!("{name}-sub"), &name, config, None)
                    .await
                    .map_err(|e| format!("Pub/Sub emulator: create subscription: {e}"))?;
                let record = Arc::new(record);
                for _ in 0..4 {
                    let (sub, stop, stats, record) = (sub.clone(), stop.clone(), stats.clone(), record.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(Ok(msgs)) = tokio::time::timeout(Duration::from_secs(2), sub.pull(1000, None)).await
                            else {
                                continue;
                            };
                            for m in msgs {
                                record(&stats, m.message.attributes.get("event-id").map(String::as_str));
                            }
                        }
                    });
                }
            }
        }
        Ok(())
    }

    /// The raw client: the same publishes for `secs`, `RAW_IN_FLIGHT` at a
    /// time, each waiting for the broker's acknowledgement. Messages per second.
    pub async fn raw_baseline(&self, body: Bytes, secs: u64) -> Result<f64, String> {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = Instant::now();
        let headers = |n: u64| {
            [
                ("event-id", format!("raw-{n}")),
                ("topic", "load.test".to_string()),
                ("timestamp", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ]
        };
        let mut tasks = Vec::new();
        match self.kind {
            Kind::RabbitMq => {
                use lapin::options::*;
                use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
                let conn = lapin::Connection::connect(RABBIT_URL, lapin_props())
                    .await
                    .map_err(|e| e.to_string())?;
                let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (ch, done, body) = (ch.clone(), done.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let mut h = FieldTable::default();
                            for (k, v) in headers(n) {
                                h.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
                            }
                            let props = lapin::BasicProperties::default()
                                .with_content_type(ShortString::from("application/json"))
                                .with_delivery_mode(2)
                                .with_headers(h);
                            let c = ch
                                .basic_publish("amq.topic", "load.test", BasicPublishOptions::default(), &body, props)
                                .await
                                .map_err(|e| e.to_string())?;
                            c.await.map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
                drop(conn);
            }
            Kind::RedisStream => {
                let client = redis::Client::open(REDIS_URL).map_err(|e| e.to_string())?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (mut conn, done, body, stream) = (conn.clone(), done.clone(), body.clone(), self.stream());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let mut cmd = redis::cmd("XADD");
                            cmd.arg(&stream).arg("*").arg("data").arg(body.as_ref());
                            for (k, v) in headers(n) {
                                cmd.arg(k).arg(v);
                            }
                            let _: String = cmd.query_async(&mut conn).await.map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::Nats => {
                let client = async_nats::connect(NATS_ADDR).await.map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(client);
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (js, done, body, subject) = (js.clone(), done.clone(), body.clone(), self.subject());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let mut h = async_nats::HeaderMap::new();
                            for (k, v) in headers(n) {
                                h.insert(k, v.as_str());
                            }
                            h.insert("Nats-Msg-Id", format!("raw-{n}").as_str());
                            let ack = js
                                .publish_with_headers(subject.clone(), h, body.clone())
                                .await
                                .map_err(|e| e.to_string())?;
                            ack.await.map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::Kafka => {
                let parts = kafka_partitions(self.kafka_port, &self.kafka_topic()).await?;
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (parts, done, body) = (parts.clone(), done.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let mut h: std::collections::BTreeMap<String, Vec<u8>> = headers(n)
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v.into_bytes()))
                                .collect();
                            h.insert("content-type".into(), b"application/json".to_vec());
                            let record = rskafka::record::Record {
                                key: Some(format!("raw-{n}").into_bytes()),
                                value: Some(body.to_vec()),
                                headers: h,
                                timestamp: chrono::Utc::now(),
                            };
                            let p = &parts[(n % KAFKA_PARTITIONS as u64) as usize];
                            p.produce(vec![record], rskafka::client::partition::Compression::NoCompression)
                                .await
                                .map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::Mqtt => {
                use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
                use rumqttc::v5::mqttbytes::QoS;
                use rumqttc::v5::{AsyncClient, Event};
                let mut opts = mqtt_options(&format!("lt-raw-{}", self.run));
                opts.set_outgoing_inflight_upper_limit(RAW_IN_FLIGHT as u16);
                let (client, mut events) = AsyncClient::new(opts, RAW_IN_FLIGHT);
                // A PUBACK frees a slot: RAW_IN_FLIGHT unacknowledged at most.
                let slots = Arc::new(tokio::sync::Semaphore::new(RAW_IN_FLIGHT));
                let acks = {
                    let (done, slots) = (done.clone(), slots.clone());
                    tokio::spawn(async move {
                        while Instant::now() < deadline + Duration::from_secs(5) {
                            match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
                                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                    slots.add_permits(1);
                                }
                                Ok(Err(e)) => return Err(e.to_string()),
                                _ => {}
                            }
                        }
                        Ok::<(), String>(())
                    })
                };
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(1), slots.acquire()).await else {
                        continue;
                    };
                    permit.forget();
                    let props = PublishProperties {
                        user_properties: headers(n).iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
                        content_type: Some("application/json".into()),
                        ..Default::default()
                    };
                    client
                        .publish_with_properties(self.mqtt_topic(), QoS::AtLeastOnce, false, body.clone(), props)
                        .await
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
                let counted = done.load(Ordering::Relaxed);
                let elapsed = start.elapsed().as_secs_f64();
                acks.abort();
                let _ = client.disconnect().await;
                return Ok(counted as f64 / elapsed);
            }
            Kind::AwsSqs => {
                use aws_sdk_sqs::types::MessageAttributeValue;
                let client = sqs_client(&aws_endpoint()?);
                let url = self.sqs_queue_url();
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (client, url, done, body) = (client.clone(), url.clone(), done.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        let text = String::from_utf8_lossy(&body).into_owned();
                        while Instant::now() < deadline {
                            let meta: serde_json::Map<String, serde_json::Value> =
                                headers(n).into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
                            let attr = MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(serde_json::Value::Object(meta).to_string())
                                .build()
                                .map_err(|e| e.to_string())?;
                            client
                                .send_message()
                                .queue_url(&url)
                                .message_body(&text)
                                .message_attributes("metadata", attr)
                                .send()
                                .await
                                .map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::AwsKinesis => {
                let client = kinesis_client(&aws_endpoint()?);
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (client, done, body, name) = (client.clone(), done.clone(), body.clone(), self.cloud_name());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let data = data_and_metadata(&body, &headers(n));
                            client
                                .put_record()
                                .stream_name(&name)
                                .partition_key(format!("raw-{n}"))
                                .data(aws_sdk_kinesis::primitives::Blob::new(data.into_bytes()))
                                .send()
                                .await
                                .map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::AwsS3 => {
                let client = s3_client(&aws_endpoint()?);
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (client, done, body, bucket) = (client.clone(), done.clone(), body.clone(), self.cloud_name());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let mut put = client
                                .put_object()
                                .bucket(&bucket)
                                .key(format!("raw-{n}"))
                                .content_type("application/json")
                                .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()));
                            for (k, v) in headers(n) {
                                put = put.metadata(k, v);
                            }
                            put.send().await.map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::AwsEventBridge => {
                let client = eventbridge_client(&aws_endpoint()?);
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (client, done, body, bus) = (client.clone(), done.clone(), body.clone(), self.cloud_name());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                                .event_bus_name(&bus)
                                .source(EB_SOURCE)
                                .detail_type("load.test")
                                .detail(data_and_metadata(&body, &headers(n)))
                                .build();
                            let out = client
                                .put_events()
                                .entries(entry)
                                .send()
                                .await
                                .map_err(|e| e.to_string())?;
                            if out.failed_entry_count() > 0 {
                                return Err("PutEvents: a failed entry".to_string());
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
            Kind::GcpPubSub => {
                let client = pubsub_client().await?;
                let publisher = Arc::new(client.topic(&self.cloud_name()).new_publisher(None));
                for w in 0..RAW_IN_FLIGHT as u64 {
                    let (publisher, done, body) = (publisher.clone(), done.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < deadline {
                            let msg = gcloud_googleapis::pubsub::v1::PubsubMessage {
                                data: body.to_vec(),
                                attributes: headers(n).into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                                ..Default::default()
                            };
                            publisher.publish(msg).await.get().await.map_err(|e| e.to_string())?;
                            done.fetch_add(1, Ordering::Relaxed);
                            n += RAW_IN_FLIGHT as u64;
                        }
                        Ok::<(), String>(())
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
            }
        }
        Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    }

    /// Stops the consumer and removes what the run made.
    pub async fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if self.kind == Kind::Nats {
            if let Ok(c) = async_nats::connect(NATS_ADDR).await {
                let _ = async_nats::jetstream::new(c).delete_stream(self.js_stream()).await;
            }
        }
        if matches!(self.kind, Kind::AwsSqs | Kind::AwsEventBridge) {
            let url = self.sqs_queue_url();
            if let (Ok(endpoint), false) = (aws_endpoint(), url.is_empty()) {
                let _ = sqs_client(&endpoint).delete_queue().queue_url(url).send().await;
            }
        }
        if self.kind == Kind::GcpPubSub {
            if let Ok(client) = pubsub_client().await {
                let name = self.cloud_name();
                let _ = client.subscription(&format!("{name}-sub")).delete(None).await;
                let _ = client.topic(&name).delete(None).await;
            }
        }
        if let Some(mut child) = self.tansu.lock().ok().and_then(|mut t| t.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
