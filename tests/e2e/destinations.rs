//! Every non-webhook destination type against its real broker: events
//! published through the API are read back from the broker (body, metadata,
//! routing), and a broker that goes away mid-run (a TCP forwarder in front of
//! it is cut) costs failed attempts, never events: once it is back, the
//! retries deliver everything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

fn uniq() -> String {
    format!("{}{}", std::process::id(), free_port())
}

fn require(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: {what} is required for this test; run it through scripts/test.sh")
    })
}

fn socket_of(host_port: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("{host_port}: {e}"))
        .next()
        .unwrap()
}

/// An `XRANGE` entry: id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Publishes an MQTT subscriber received: payload, user properties, content type.
type MqttInbox = Arc<Mutex<Vec<(Vec<u8>, Vec<(String, String)>, Option<String>)>>>;

/// One message as the broker gave it back.
#[derive(Debug)]
struct Msg {
    body: Value,
    /// Headers / attributes / stream fields.
    attrs: HashMap<String, String>,
    /// The routing key, where the broker has one.
    route: Option<String>,
}

enum Backend {
    Rabbit {
        _conn: Box<lapin::Connection>,
        ch: lapin::Channel,
        queue: String,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        stream: String,
        last: String,
    },
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
    },
    PubSub {
        sub: gcloud_pubsub::subscription::Subscription,
    },
    Kinesis {
        client: aws_sdk_kinesis::Client,
        iterator: String,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        seen: std::collections::HashSet<String>,
    },
    Mqtt {
        got: MqttInbox,
        taken: usize,
        _client: rumqttc::v5::AsyncClient,
    },
    Nats {
        stream: Box<async_nats::jetstream::stream::Stream>,
        next: u64,
    },
    /// EventBridge entries, routed by a rule to an SQS queue.
    EventBridge {
        client: aws_sdk_sqs::Client,
        url: String,
    },
}

impl Backend {
    /// The messages that arrived since the last call.
    async fn drain(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        match self {
            Backend::Rabbit { ch, queue, .. } => {
                use lapin::types::AMQPValue;
                while let Some(m) = ch
                    .basic_get(queue.as_str(), lapin::options::BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    let d = m.delivery;
                    let mut attrs = HashMap::new();
                    if let Some(h) = d.properties.headers() {
                        for (k, v) in h.inner() {
                            if let AMQPValue::LongString(s) = v {
                                attrs.insert(k.to_string(), String::from_utf8_lossy(s.as_bytes()).into_owned());
                            }
                        }
                    }
                    assert_eq!(
                        d.properties.content_type().as_ref().map(|c| c.to_string()).as_deref(),
                        Some("application/json")
                    );
                    assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
                    out.push(Msg {
                        body: serde_json::from_slice(&d.data).unwrap(),
                        attrs,
                        route: Some(d.routing_key.to_string()),
                    });
                }
            }
            Backend::Redis { conn, stream, last } => {
                let reply: redis::Value = redis::cmd("XRANGE")
                    .arg(stream.as_str())
                    .arg(format!("({last}"))
                    .arg("+")
                    .query_async(conn)
                    .await
                    .unwrap();
                let entries: Vec<StreamEntry> = redis::FromRedisValue::from_redis_value(reply).unwrap();
                for (id, fields) in entries {
                    let mut attrs: HashMap<String, String> = fields
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
                        .collect();
                    let data = attrs.remove("data").expect("a data field");
                    out.push(Msg {
                        body: serde_json::from_str(&data).unwrap(),
                        attrs,
                        route: None,
                    });
                    *last = id;
                }
            }
            Backend::Sqs { client, url } => {
                let r = client
                    .receive_message()
                    .queue_url(url.as_str())
                    .max_number_of_messages(10)
                    .message_attribute_names("All")
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .unwrap();
                for m in r.messages() {
                    let meta = m
                        .message_attributes()
                        .and_then(|a| a.get("metadata"))
                        .and_then(|v| v.string_value())
                        .expect("a metadata attribute");
                    out.push(Msg {
                        body: serde_json::from_str(m.body().unwrap()).unwrap(),
                        attrs: serde_json::from_str(meta).unwrap(),
                        route: None,
                    });
                    client
                        .delete_message()
                        .queue_url(url.as_str())
                        .receipt_handle(m.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
            Backend::Kinesis { client, iterator } => {
                let r = client
                    .get_records()
                    .shard_iterator(iterator.as_str())
                    .send()
                    .await
                    .unwrap();
                for rec in r.records() {
                    let v: Value = serde_json::from_slice(rec.data().as_ref()).unwrap();
                    // The partition key template is `data.n`.
                    assert_eq!(rec.partition_key(), Some(v["data"]["n"].to_string().as_str()), "{v}");
                    out.push(Msg {
                        body: v["data"].clone(),
                        attrs: serde_json::from_value(v["metadata"].clone()).unwrap(),
                        route: None,
                    });
                }
                if let Some(next) = r.next_shard_iterator() {
                    *iterator = next.to_string();
                }
            }
            Backend::S3 { client, bucket, seen } => {
                let list = client.list_objects_v2().bucket(bucket.as_str()).send().await.unwrap();
                for o in list.contents() {
                    let key = o.key().unwrap().to_string();
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let obj = client
                        .get_object()
                        .bucket(bucket.as_str())
                        .key(&key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(obj.content_type(), Some("application/json"));
                    let attrs: HashMap<String, String> = obj.metadata().cloned().unwrap_or_default();
                    // The key template is `join('/', [metadata.topic, metadata."event-id"])`.
                    assert_eq!(key, format!("orders.created/{}", attrs["event-id"]));
                    let body = obj.body.collect().await.unwrap().into_bytes();
                    out.push(Msg {
                        body: serde_json::from_slice(&body).unwrap(),
                        attrs,
                        route: None,
                    });
                }
            }
            Backend::Mqtt { got, taken, .. } => {
                let all = got.lock().unwrap();
                for (payload, props, content_type) in &all[*taken..] {
                    assert_eq!(content_type.as_deref(), Some("application/json"));
                    out.push(Msg {
                        body: serde_json::from_slice(payload).unwrap(),
                        attrs: props.iter().cloned().collect(),
                        route: None,
                    });
                }
                *taken = all.len();
            }
            Backend::Nats { stream, next } => {
                while let Ok(m) = stream.get_raw_message(*next).await {
                    *next += 1;
                    let mut attrs = HashMap::new();
                    for (k, vs) in m.headers.iter() {
                        if let Some(v) = vs.first() {
                            attrs.insert(k.to_string(), v.to_string());
                        }
                    }
                    assert_eq!(attrs.get("Nats-Msg-Id"), attrs.get("event-id"), "dedup id = event id");
                    out.push(Msg {
                        body: serde_json::from_slice(&m.payload).unwrap(),
                        attrs,
                        route: None,
                    });
                }
            }
            Backend::EventBridge { client, url } => {
                let r = client
                    .receive_message()
                    .queue_url(url.as_str())
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .unwrap();
                for m in r.messages() {
                    let v: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                    assert_eq!(v["source"], "outrider.e2e", "{v}");
                    out.push(Msg {
                        body: v["detail"]["data"].clone(),
                        attrs: serde_json::from_value(v["detail"]["metadata"].clone()).unwrap(),
                        route: v["detail-type"].as_str().map(String::from),
                    });
                    client
                        .delete_message()
                        .queue_url(url.as_str())
                        .receipt_handle(m.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
            Backend::PubSub { sub } => {
                let got = tokio::time::timeout(Duration::from_secs(2), sub.pull(50, None)).await;
                for m in got.map(|r| r.unwrap()).unwrap_or_default() {
                    out.push(Msg {
                        body: serde_json::from_slice(&m.message.data).unwrap(),
                        attrs: m.message.attributes.clone().into_iter().collect(),
                        route: None,
                    });
                    m.ack().await.unwrap();
                }
            }
        }
        out
    }
}

/// Reads until `n` messages in all came back (or fails after `WAIT`).
async fn collect(b: &mut Backend, got: &mut Vec<Msg>, n: usize) {
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages reached the broker",
            got.len()
        );
        let more = b.drain().await;
        if more.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got.extend(more);
    }
}

/// What a type's scenario needs: the destination body for a broker reached
/// through `proxy_port`, and the display target expected.
struct Case {
    kind: &'static str,
    upstream: SocketAddr,
    destination: Box<dyn Fn(u16) -> Value>,
    target: Box<dyn Fn(u16) -> String>,
    /// `response_data` keys a success carries.
    response_keys: &'static [&'static str],
}

async fn scenario(case: Case, mut backend: Backend) {
    let proxy = Proxy::start(case.upstream).await;
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1,1,1")]).await;
    let api = Api::admin(&s);
    let tenant = format!("t-{}", case.kind);
    api.tenant(&tenant).await;
    let r = api
        .post(
            &format!("/tenants/{tenant}/destinations"),
            (case.destination)(proxy.port),
        )
        .await;
    assert_eq!(r.status, 201, "create {}: {}", case.kind, r.text);
    let dest = r.body;
    assert_eq!(dest["type"], case.kind);
    assert_eq!(dest["target"], (case.target)(proxy.port), "{dest}");
    let dest_id = dest["id"].as_str().unwrap().to_string();

    let publish = |n: u32| {
        let api = &api;
        let tenant = &tenant;
        async move {
            let r = api
                .publish(json!({
                    "id": format!("evt-{n}"),
                    "tenant_id": tenant,
                    "topic": "orders.created",
                    "metadata": {"source": "e2e"},
                    "data": {"n": n, "text": "héllo"},
                }))
                .await;
            assert!(r.status == 202 || r.status == 200, "publish: {} {}", r.status, r.text);
        }
    };
    for n in 0..3 {
        publish(n).await;
    }
    let mut got = Vec::new();
    collect(&mut backend, &mut got, 3).await;
    for m in &got {
        let n = m.body["n"].as_u64().unwrap();
        assert_eq!(m.body, json!({"n": n, "text": "héllo"}), "{}: body", case.kind);
        assert_eq!(
            m.attrs.get("event-id").map(String::as_str),
            Some(format!("evt-{n}").as_str())
        );
        assert_eq!(m.attrs.get("topic").map(String::as_str), Some("orders.created"));
        assert_eq!(m.attrs.get("source").map(String::as_str), Some("e2e"));
        assert!(m.attrs.contains_key("timestamp"), "{:?}", m.attrs);
        if let Some(route) = &m.route {
            assert_eq!(route, "orders.created");
        }
    }
    let ok = api
        .wait_attempts(
            &format!("tenant_id={tenant}&destination_id={dest_id}&include=response_data"),
            WAIT,
            |m| m.iter().filter(|a| a["status"] == "success").count() >= 3,
        )
        .await;
    let first = ok
        .iter()
        .find(|a| a["status"] == "success")
        .expect("a successful attempt");
    assert_eq!(first["code"], "OK", "{first}");
    assert_eq!(first["destination_type"], case.kind);
    for k in case.response_keys {
        assert!(
            first["response_data"].get(*k).is_some(),
            "response_data lacks {k}: {first}"
        );
    }

    // The broker goes away: the attempt fails, the event waits for a retry.
    proxy.down();
    publish(3).await;
    let failed = api
        .wait_attempts(&format!("tenant_id={tenant}&event_id=evt-3"), WAIT, |m| {
            m.iter().any(|a| a["status"] == "failed")
        })
        .await;
    let f = failed
        .iter()
        .find(|a| a["status"] == "failed")
        .unwrap_or_else(|| panic!("{}: no failed attempt while the broker was away: {failed:?}", case.kind));
    assert_ne!(f["code"], "OK");
    proxy.up();
    let done = api
        .wait_attempts(&format!("tenant_id={tenant}&event_id=evt-3"), WAIT, |m| {
            m.iter().any(|a| a["status"] == "success")
        })
        .await;
    assert!(
        done.iter().any(|a| a["status"] == "success"),
        "{}: the retry after the broker came back did not succeed: {done:?}",
        case.kind
    );
    collect(&mut backend, &mut got, 4).await;
    let mut ns: Vec<u64> = got.iter().map(|m| m.body["n"].as_u64().unwrap()).collect();
    ns.sort();
    ns.dedup();
    assert_eq!(ns, vec![0, 1, 2, 3], "{}: every event arrived", case.kind);
}

#[tokio::test]
async fn rabbitmq_destination() {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let url = require("OUTRIDER_TEST_RABBITMQ_URL", "RabbitMQ");
    let id = uniq();
    let exchange = format!("outrider-e2e-dest-{id}");
    let queue = format!("outrider-e2e-dest-{id}");
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let conn = lapin::Connection::connect(&url, props)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url} is required for this test: {e}"));
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(queue.as_str(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        queue.as_str(),
        exchange.as_str(),
        "orders.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let ex = exchange.clone();
    scenario(
        Case {
            kind: "rabbitmq",
            upstream: socket_of("127.0.0.1:5672"),
            destination: Box::new(move |port| {
                json!({"type": "rabbitmq", "topics": "*",
                    "config": {"server_url": format!("127.0.0.1:{port}"), "exchange": ex, "tls": "false"},
                    "credentials": {"username": "guest", "password": "guest"}})
            }),
            target: Box::new(move |_| format!("{exchange} -> *")),
            response_keys: &[],
        },
        Backend::Rabbit {
            ch: ch.clone(),
            queue: queue.clone(),
            _conn: Box::new(conn),
        },
    )
    .await;
    let _ = ch.queue_delete(queue.as_str(), QueueDeleteOptions::default()).await;
}

#[tokio::test]
async fn redis_stream_destination() {
    let url = require("OUTRIDER_TEST_REDIS_URL", "Redis");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test: {e}"));
    // A name the services script's clean-up recognises.
    let stream = format!("e2e{}:outrider:stream", uniq());
    let s = stream.clone();
    scenario(
        Case {
            kind: "redis_stream",
            upstream: socket_of("127.0.0.1:6379"),
            destination: Box::new(move |port| {
                json!({"type": "redis_stream", "topics": ["orders.created"],
                    "config": {"address": format!("127.0.0.1:{port}"), "stream": s, "max_len": "1000"}})
            }),
            target: Box::new({
                let stream = stream.clone();
                move |port| format!("{stream} on 127.0.0.1:{port}")
            }),
            response_keys: &["id", "stream"],
        },
        Backend::Redis {
            conn: conn.clone(),
            stream: stream.clone(),
            last: "0-0".into(),
        },
    )
    .await;
    let _: Result<i64, _> = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await;
}

#[tokio::test]
async fn aws_sqs_destination() {
    let endpoint = require("OUTRIDER_TEST_AWS_ENDPOINT", "moto (the AWS emulator)");
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "e2e"))
        .endpoint_url(&endpoint)
        .build();
    let client = aws_sdk_sqs::Client::from_conf(conf);
    let name = format!("outrider-e2e-dest-{}", uniq());
    let url = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"))
        .queue_url()
        .unwrap()
        .to_string();
    let upstream = socket_of(endpoint.trim_start_matches("http://"));
    let u = url.clone();
    scenario(
        Case {
            kind: "aws_sqs",
            upstream,
            destination: Box::new(move |port| {
                json!({"type": "aws_sqs", "topics": "*",
                    "config": {"queue_url": u, "endpoint": format!("http://127.0.0.1:{port}")},
                    "credentials": {"key": "test", "secret": "test"}})
            }),
            target: Box::new({
                let url = url.clone();
                move |_| url.clone()
            }),
            response_keys: &[],
        },
        Backend::Sqs {
            client: client.clone(),
            url: url.clone(),
        },
    )
    .await;
    let _ = client.delete_queue().queue_url(&url).send().await;
}

fn moto() -> (String, SocketAddr) {
    let endpoint = require("OUTRIDER_TEST_AWS_ENDPOINT", "moto (the AWS emulator)");
    let upstream = socket_of(endpoint.trim_start_matches("http://"));
    (endpoint, upstream)
}

macro_rules! aws_client {
    ($sdk:ident, $endpoint:expr) => {
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .behavior_version($sdk::config::BehaviorVersion::latest())
                .region($sdk::config::Region::new("us-east-1"))
                .credentials_provider($sdk::config::Credentials::new("test", "test", None, None, "e2e"))
                .endpoint_url($endpoint)
                .build(),
        )
    };
}

fn aws_destination(kind: &str, port: u16, config: Value) -> Value {
    let mut c = config;
    c["region"] = json!("us-east-1");
    c["endpoint"] = json!(format!("http://127.0.0.1:{port}"));
    json!({"type": kind, "topics": "*", "config": c, "credentials": {"key": "test", "secret": "test", "session": "a-session-token"}})
}

#[tokio::test]
async fn aws_kinesis_destination() {
    let (endpoint, upstream) = moto();
    let client = aws_client!(aws_sdk_kinesis, &endpoint);
    let stream = format!("outrider-e2e-dest-{}", uniq());
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(1)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"));
    let d = client.describe_stream().stream_name(&stream).send().await.unwrap();
    let shard = d.stream_description().unwrap().shards()[0].shard_id().to_string();
    let iterator = client
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .unwrap()
        .to_string();
    let st = stream.clone();
    scenario(
        Case {
            kind: "aws_kinesis",
            upstream,
            destination: Box::new(move |port| {
                aws_destination(
                    "aws_kinesis",
                    port,
                    json!({"stream_name": st, "partition_key_template": "data.n"}),
                )
            }),
            target: Box::new({
                let stream = stream.clone();
                move |_| format!("{stream} in us-east-1")
            }),
            response_keys: &["shard_id", "sequence_number", "partition_key"],
        },
        Backend::Kinesis {
            client: client.clone(),
            iterator,
        },
    )
    .await;
    let _ = client.delete_stream().stream_name(&stream).send().await;
}

#[tokio::test]
async fn aws_s3_destination() {
    let (endpoint, upstream) = moto();
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "e2e"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("outrider-e2e-dest-{}", uniq());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"));
    let b = bucket.clone();
    scenario(
        Case {
            kind: "aws_s3",
            upstream,
            destination: Box::new(move |port| {
                aws_destination(
                    "aws_s3",
                    port,
                    json!({"bucket": b, "key_template": "join('/', [metadata.topic, metadata.\"event-id\"])", "storage_class": "standard_ia"}),
                )
            }),
            target: Box::new({
                let bucket = bucket.clone();
                move |_| format!("{bucket} in us-east-1")
            }),
            response_keys: &["bucket", "key"],
        },
        Backend::S3 {
            client: client.clone(),
            bucket: bucket.clone(),
            seen: Default::default(),
        },
    )
    .await;
}

#[tokio::test]
async fn aws_eventbridge_destination() {
    let (endpoint, upstream) = moto();
    let sqs = aws_client!(aws_sdk_sqs, &endpoint);
    let events = aws_client!(aws_sdk_eventbridge, &endpoint);
    let id = uniq();
    let bus = format!("outrider-e2e-bus-{id}");
    let url = sqs
        .create_queue()
        .queue_name(format!("outrider-e2e-eb-{id}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"))
        .queue_url()
        .unwrap()
        .to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    events.create_event_bus().name(&bus).send().await.unwrap();
    events
        .put_rule()
        .name("to-queue")
        .event_bus_name(&bus)
        .event_pattern(r#"{"source": ["outrider.e2e"]}"#)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("to-queue")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let b = bus.clone();
    scenario(
        Case {
            kind: "aws_eventbridge",
            upstream,
            destination: Box::new(move |port| {
                aws_destination(
                    "aws_eventbridge",
                    port,
                    json!({"event_bus": b, "source": "outrider.e2e"}),
                )
            }),
            target: Box::new({
                let bus = bus.clone();
                move |_| format!("{bus} in us-east-1")
            }),
            response_keys: &["event_id", "event_bus"],
        },
        Backend::EventBridge {
            client: sqs.clone(),
            url: url.clone(),
        },
    )
    .await;
    let _ = sqs.delete_queue().queue_url(&url).send().await;
}

#[tokio::test]
async fn mqtt_destination() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let addr = require("OUTRIDER_TEST_MQTT_ADDR", "an MQTT 5 broker (Mosquitto)");
    let broker = socket_of(&addr);
    let id = uniq();
    let topic = format!("outrider/e2e/{id}/events");
    let mut opts = MqttOptions::new(format!("outrider-e2e-sub-{id}"), broker.ip().to_string(), broker.port());
    opts.set_clean_start(true);
    let (client, mut events) = AsyncClient::new(opts, 100);
    client.subscribe(topic.clone(), QoS::AtLeastOnce).await.unwrap();
    // Publishing starts only once the subscription is in place.
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("an MQTT 5 broker at {addr} is required for this test: {e}"),
        }
    }
    let got: MqttInbox = Arc::default();
    let inbox = got.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let props = p.properties.clone().unwrap_or_default();
                inbox
                    .lock()
                    .unwrap()
                    .push((p.payload.to_vec(), props.user_properties, props.content_type));
            }
        }
    });
    let t = topic.clone();
    scenario(
        Case {
            kind: "mqtt",
            upstream: broker,
            destination: Box::new(move |port| {
                json!({"type": "mqtt", "topics": "*",
                    "config": {"server_url": format!("127.0.0.1:{port}"), "topic": t}})
            }),
            target: Box::new({
                let topic = topic.clone();
                move |port| format!("{topic} on 127.0.0.1:{port}")
            }),
            response_keys: &["topic"],
        },
        Backend::Mqtt {
            got,
            taken: 0,
            _client: client,
        },
    )
    .await;
}

#[tokio::test]
async fn nats_destination() {
    let addr = require("OUTRIDER_TEST_NATS_ADDR", "NATS with JetStream");
    let client = async_nats::connect(addr.as_str())
        .await
        .unwrap_or_else(|e| panic!("NATS at {addr} is required for this test: {e}"));
    let js = async_nats::jetstream::new(client);
    let id = uniq();
    let name = format!("outrider-e2e-dest-{id}");
    let subject = format!("outrider.e2e.{id}.events");
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("outrider.e2e.{id}.>")],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NATS at {addr} needs JetStream (-js) for this test: {e}"));
    let sub = subject.clone();
    scenario(
        Case {
            kind: "nats",
            upstream: socket_of(&addr),
            destination: Box::new(move |port| {
                json!({"type": "nats", "topics": "*",
                    "config": {"server_url": format!("127.0.0.1:{port}"), "subject": sub}})
            }),
            target: Box::new({
                let subject = subject.clone();
                move |port| format!("{subject} on 127.0.0.1:{port}")
            }),
            response_keys: &["stream", "sequence"],
        },
        Backend::Nats {
            stream: Box::new(stream),
            next: 1,
        },
    )
    .await;
    let _ = js.delete_stream(&name).await;
}

#[tokio::test]
async fn gcp_pubsub_destination() {
    use gcloud_pubsub::client::{Client, ClientConfig};
    let host = require("PUBSUB_EMULATOR_HOST", "the Pub/Sub emulator");
    let client = Client::new(ClientConfig {
        project_id: Some("outrider-test".into()),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let id = uniq();
    let topic_id = format!("outrider-e2e-dest-{id}");
    let topic = client.topic(&topic_id);
    topic
        .create(None, None)
        .await
        .unwrap_or_else(|e| panic!("the Pub/Sub emulator at {host} is required for this test: {e}"));
    let sub = client
        .create_subscription(
            &format!("{topic_id}-sub"),
            &topic_id,
            gcloud_pubsub::subscription::SubscriptionConfig::default(),
            None,
        )
        .await
        .unwrap();
    let t = topic_id.clone();
    scenario(
        Case {
            kind: "gcp_pubsub",
            upstream: socket_of(&host),
            destination: Box::new(move |port| {
                json!({"type": "gcp_pubsub", "topics": "*",
                    "config": {"project_id": "outrider-test", "topic": t, "endpoint": format!("127.0.0.1:{port}")},
                    "credentials": {"service_account_json": "{}"}})
            }),
            target: Box::new({
                let t = topic_id.clone();
                move |_| format!("outrider-test/{t}")
            }),
            response_keys: &["message_id", "topic", "project"],
        },
        Backend::PubSub { sub: sub.clone() },
    )
    .await;
    let _ = sub.delete(None).await;
    let _ = topic.delete(None).await;
}

#[tokio::test]
async fn destination_types_are_listed_and_validated() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let r = api.get("/destination-types").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let kinds: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "webhook",
            "hookdeck",
            "aws_sqs",
            "aws_kinesis",
            "aws_s3",
            "gcp_pubsub",
            "rabbitmq",
            "aws_eventbridge",
            "nats",
            "mqtt",
            "redis_stream"
        ]
    );
    for t in r.body.as_array().unwrap() {
        let n = |k: &str| {
            t[k].as_array()
                .map(Vec::len)
                .unwrap_or_else(|| panic!("{k} is not a list: {t}"))
        };
        assert!(n("config_fields") + n("credential_fields") > 0, "{t}");
        assert!(t["icon"].as_str().is_some_and(|i| i.starts_with("<svg")), "{t}");
    }
    let one = api.get("/destination-types/rabbitmq").await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["type"], "rabbitmq");

    api.tenant("t1").await;
    let cases = [
        (
            json!({"type": "rabbitmq", "topics": "*", "config": {}, "credentials": {}}),
            vec![
                "config.server_url is required",
                "credentials.username is required",
                "credentials.password is required",
            ],
        ),
        (
            json!({"type": "aws_sqs", "topics": "*", "config": {"queue_url": "not a url"}, "credentials": {"key": "k", "secret": "s"}}),
            vec!["config.queue_url failed pattern validation"],
        ),
        (
            json!({"type": "gcp_pubsub", "topics": "*", "config": {"project_id": "p", "topic": "t"}, "credentials": {"service_account_json": "{}"}}),
            vec!["credentials.service_account_json failed missing_type validation"],
        ),
        (
            json!({"type": "redis_stream", "topics": "*", "config": {"address": "h:6379", "stream": "s", "database": "x"}}),
            vec!["config.database is invalid"],
        ),
    ];
    for (body, want) in cases {
        let r = api.post("/tenants/t1/destinations", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        let got: Vec<&str> = r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{body}");
    }

    // Secrets are masked on read; the TLS flag is normalised on save.
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "rabbitmq", "topics": ["a"], "config": {"server_url": "mq.example:5672", "tls": "on"},
                "credentials": {"username": "guest", "password": "a-long-password"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["config"]["tls"], "true");
    assert_eq!(r.body["credentials"]["username"], "guest");
    assert_eq!(r.body["credentials"]["password"], "a-lo***********");
}

#[tokio::test]
async fn refused_credentials_are_recorded_once_and_not_retried() {
    require("OUTRIDER_TEST_RABBITMQ_URL", "RabbitMQ");
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "rabbitmq", "topics": "*",
                "config": {"server_url": "127.0.0.1:5672", "exchange": "", "tls": "false"},
                "credentials": {"username": "guest", "password": "not-the-password"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .publish(json!({"id": "evt-bad-creds", "tenant_id": "t1", "topic": "a", "data": {"x": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let first = api
        .wait_attempts("event_id=evt-bad-creds&include=response_data", WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["status"], "failed");
    assert_eq!(first[0]["code"], "auth_failed", "{}", first[0]);
    // Three retries would have run by now on the 1 s schedule.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = api.get("/attempts?event_id=evt-bad-creds").await;
    assert_eq!(after.body["models"].as_array().unwrap().len(), 1, "{}", after.text);
}

/// Hookdeck cannot run here: a local HTTP server stands in for both its API
/// (token verification) and its publish endpoint, and the test checks the
/// exact requests Outrider sends.
#[tokio::test]
async fn hookdeck_destination_against_a_fake_hookdeck() {
    use base64::Engine as _;
    let fake = Receiver::start().await;
    *fake.state.body.lock().unwrap() = r#"{"id":"src_1","name":"My source"}"#.into();
    let s = Server::start(&[
        ("OUTRIDER_HOOKDECK_API_URL", fake.url("/api").as_str()),
        ("OUTRIDER_HOOKDECK_PUBLISH_URL", fake.url("/e").as_str()),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let token = base64::engine::general_purpose::STANDARD.encode("src_1:signing-part");
    let create = |token: String| {
        let api = &api;
        async move {
            api.post(
                "/tenants/t1/destinations",
                json!({"type": "hookdeck", "topics": "*", "credentials": {"token": token}}),
            )
            .await
        }
    };
    let r = create("not-a-token".into()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.body["data"],
        json!(["credentials.token failed invalid_token_format validation"])
    );
    assert_eq!(fake.count(), 0, "a malformed token is not sent to Hookdeck");

    fake.state.script.lock().unwrap().push_back(401);
    let r = create(token.clone()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.body["data"],
        json!(["credentials.token failed token_verification_failed validation"])
    );
    let verify = &fake.got()[0];
    assert_eq!(verify.path, "/api/sources/src_1/managed/verify");
    assert_eq!(
        verify.header("x-hookdeck-source-token").as_deref(),
        Some(token.as_str())
    );

    let r = create(token.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["config"]["source_id"], "src_1");
    assert_eq!(r.body["config"]["source_name"], "My source");
    assert_eq!(r.body["target"], "My source");
    assert_eq!(r.body["target_url"], "https://dashboard.hookdeck.com/sources/src_1");
    assert_ne!(r.body["credentials"]["token"], token.as_str(), "the token is masked");

    let publish = |id: &'static str| {
        let api = &api;
        async move {
            let r = api
                .publish(json!({"id": id, "tenant_id": "t1", "topic": "orders.created",
                    "metadata": {"source": "e2e"}, "data": {"id": id}}))
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
        }
    };
    publish("evt-0").await;
    let got = fake.wait_for(3, WAIT).await;
    let post = got.last().unwrap();
    assert_eq!(post.path, "/e/src_1");
    assert_eq!(post.json(), json!({"id": "evt-0"}));
    assert_eq!(post.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(post.header("x-outpost-event-id").as_deref(), Some("evt-0"));
    assert_eq!(post.header("x-outpost-topic").as_deref(), Some("orders.created"));
    assert_eq!(post.header("x-outpost-source").as_deref(), Some("e2e"));
    assert_eq!(
        post.header("x-hookdeck-signature"),
        Some(format!("v0={}", hmac_b64(token.as_bytes(), &post.body)))
    );
    let ok = api
        .wait_attempts("event_id=evt-0&include=response_data", WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(ok[0]["status"], "success");
    assert_eq!(ok[0]["code"], "200");
    assert_eq!(ok[0]["response_data"]["status_code"], 200);

    // Hookdeck answers 503 once: the attempt fails and the retry delivers.
    fake.state.script.lock().unwrap().push_back(503);
    publish("evt-1").await;
    let done = api
        .wait_attempts("event_id=evt-1", WAIT, |m| m.iter().any(|a| a["status"] == "success"))
        .await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().any(|a| a["status"] == "failed" && a["code"] == "503"),
        "{done:?}"
    );
    let posts = fake.got().iter().filter(|r| r.path == "/e/src_1").count();
    assert_eq!(posts, 3);
}
