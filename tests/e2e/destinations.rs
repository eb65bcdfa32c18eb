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
    /// What the fake Service Bus accepted.
    ServiceBus {
        got: SbInbox,
        taken: usize,
    },
    /// Every partition of a Kafka topic, each read from its next offset.
    Kafka {
        parts: Vec<rskafka::client::partition::PartitionClient>,
        next: Vec<i64>,
        /// Keys come from the scenario's template (else the event id).
        templated: bool,
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
            Backend::ServiceBus { got, taken } => {
                let all = got.lock().unwrap();
                for (entity, body, attrs, id) in &all[*taken..] {
                    assert_eq!(entity, "orders");
                    // None, as Outpost: duplicate detection would drop a manual retry.
                    assert_eq!(id.as_deref(), None, "no message id");
                    out.push(Msg {
                        body: serde_json::from_slice(body).unwrap(),
                        attrs: attrs.clone(),
                        route: None,
                    });
                }
                *taken = all.len();
            }
            Backend::Kafka { parts, next, templated } => {
                for (i, p) in parts.iter().enumerate() {
                    let (records, _high) = p.fetch_records(next[i], 1..1_000_000, 100).await.unwrap();
                    for r in records {
                        next[i] = r.offset + 1;
                        let rec = r.record;
                        let mut attrs: HashMap<String, String> = rec
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
                            .collect();
                        assert_eq!(attrs.remove("content-type").as_deref(), Some("application/json"));
                        let body: Value = serde_json::from_slice(rec.value.as_deref().unwrap()).unwrap();
                        // The scenario's key template is
                        // `join('-', ['k', to_string(data.n)])`, otherwise the key
                        // is the event id; the partition is FNV-1a(key) mod 3
                        // (checked with the test's own hash, not the engine's).
                        let key = String::from_utf8(rec.key.unwrap()).unwrap();
                        if *templated {
                            assert_eq!(key, format!("k-{}", body["n"]));
                        } else {
                            assert_eq!(Some(&key), attrs.get("event-id"));
                        }
                        assert_eq!(
                            fnv1a_partition(key.as_bytes(), parts.len()),
                            p.partition() as usize,
                            "{key}"
                        );
                        out.push(Msg {
                            body,
                            attrs,
                            route: None,
                        });
                    }
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

/// Reads until `n` distinct events came back (delivery is at least once:
/// a duplicate does not count twice), or fails after `WAIT`.
async fn collect(b: &mut Backend, got: &mut Vec<Msg>, n: usize) {
    let deadline = Instant::now() + WAIT;
    let distinct = |got: &Vec<Msg>| {
        let mut ns: Vec<u64> = got.iter().filter_map(|m| m.body["n"].as_u64()).collect();
        ns.sort();
        ns.dedup();
        ns.len()
    };
    while distinct(got) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events reached the broker",
            distinct(got)
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
    /// A forwarder started beforehand (Kafka advertises it), instead of one
    /// to `upstream`.
    proxy: Option<Proxy>,
    /// The type's batch API is HTTP/1 (the AWS JSON APIs): the burst's nine
    /// queued events must go in one call, counted at the proxy.
    batched_http: bool,
}

async fn scenario(case: Case, mut backend: Backend) {
    let proxy = match case.proxy {
        Some(p) => p,
        None => Proxy::start(case.upstream).await,
    };
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

    // A burst while a call is in flight: the first event's call is held at
    // the proxy and nine more queue behind it. Each must arrive and each
    // attempt get its own outcome; a type with a batch API sends the nine in
    // one call.
    let posts_before = proxy.posts();
    proxy.hold();
    publish(10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    futures_util::future::join_all((11..20).map(publish)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.release();
    collect(&mut backend, &mut got, 13).await;
    let burst = api
        .wait_attempts(
            &format!("tenant_id={tenant}&destination_id={dest_id}&include=response_data&limit=100"),
            WAIT,
            |m| m.iter().filter(|a| a["status"] == "success").count() >= 13,
        )
        .await;
    let mut burst_ids: Vec<&str> = burst
        .iter()
        .filter(|a| a["status"] == "success")
        .map(|a| a["event_id"].as_str().unwrap())
        .collect();
    burst_ids.sort();
    burst_ids.dedup();
    assert_eq!(burst_ids.len(), 13, "{}: one success per event: {burst:?}", case.kind);
    if case.batched_http {
        assert_eq!(
            proxy.posts() - posts_before,
            2,
            "{}: the held call, then one batch call for the nine queued behind it",
            case.kind
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
    collect(&mut backend, &mut got, 14).await;
    let mut ns: Vec<u64> = got.iter().map(|m| m.body["n"].as_u64().unwrap()).collect();
    ns.sort();
    ns.dedup();
    let want: Vec<u64> = (0..4).chain(10..20).collect();
    assert_eq!(ns, want, "{}: every event arrived", case.kind);
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
            proxy: None,
            batched_http: false,
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
            proxy: None,
            batched_http: false,
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
            proxy: None,
            batched_http: true,
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
            proxy: None,
            batched_http: true,
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
            proxy: None,
            batched_http: false,
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
            proxy: None,
            batched_http: true,
        },
        Backend::EventBridge {
            client: sqs.clone(),
            url: url.clone(),
        },
    )
    .await;
    let _ = sqs.delete_queue().queue_url(&url).send().await;
}

/// A subscriber to `topic` on the broker at `addr`, subscribed before this
/// returns (publishing may start), and what it receives.
async fn mqtt_subscriber(addr: &str, topic: &str) -> (rumqttc::v5::AsyncClient, MqttInbox) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = socket_of(addr);
    let mut opts = MqttOptions::new(
        format!("outrider-e2e-sub-{}", uniq()),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_clean_start(true);
    let (client, mut events) = AsyncClient::new(opts, 100);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
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
    (client, got)
}

#[tokio::test]
async fn mqtt_destination() {
    let addr = require("OUTRIDER_TEST_MQTT_ADDR", "an MQTT 5 broker (Mosquitto)");
    let broker = socket_of(&addr);
    let topic = format!("outrider/e2e/{}/events", uniq());
    let (client, got) = mqtt_subscriber(&addr, &topic).await;
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
            proxy: None,
            batched_http: false,
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
            proxy: None,
            batched_http: false,
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
            proxy: None,
            batched_http: false,
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
            "azure_servicebus",
            "rabbitmq",
            "kafka",
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
    let kafka = api.get("/destination-types/kafka").await;
    let sasl = kafka.body["config_fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "sasl_mechanism")
        .unwrap_or_else(|| panic!("{}", kafka.text));
    assert_eq!(sasl["type"], "select");
    assert_eq!(
        sasl["options"],
        json!([{"label": "PLAIN", "value": "plain"}, {"label": "SCRAM-SHA-256", "value": "scram-sha-256"}, {"label": "SCRAM-SHA-512", "value": "scram-sha-512"}])
    );

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
            json!({"type": "kafka", "topics": "*", "config": {"brokers": "b1:9092", "topic": "t", "sasl_mechanism": "gssapi"}, "credentials": {"username": "u"}}),
            vec!["config.sasl_mechanism is invalid", "credentials.password is required"],
        ),
        (
            json!({"type": "azure_servicebus", "topics": "*", "config": {"name": "q"}, "credentials": {"connection_string": "Endpoint=https://x/"}}),
            vec!["credentials.connection_string is invalid"],
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
async fn refused_credentials_are_retried_like_outpost_unless_the_operator_opts_out() {
    require("OUTRIDER_TEST_RABBITMQ_URL", "RabbitMQ");
    // A RabbitMQ destination with a wrong password, and one event for it.
    async fn refused_destination_with_an_event(env: &[(&str, &str)]) -> (Server, Api) {
        let s = Server::start(env).await;
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
        (s, api)
    }
    // Default: retried on the schedule, as Outpost does (issue 31 item 6).
    let (s, api) = refused_destination_with_an_event(&[("RETRY_SCHEDULE", "1,1")]).await;
    let all = api
        .wait_attempts("event_id=evt-bad-creds&dir=asc", Duration::from_secs(15), |m| {
            m.len() >= 3
        })
        .await;
    let got: Vec<(i64, &str)> = all
        .iter()
        .map(|a| (a["attempt_number"].as_i64().unwrap(), a["code"].as_str().unwrap()))
        .collect();
    assert_eq!(got, vec![(1, "auth_failed"), (2, "auth_failed"), (3, "auth_failed")]);
    drop(s);
    // Opted out: recorded once, left to a manual retry.
    let (_s, api) = refused_destination_with_an_event(&[
        ("RETRY_SCHEDULE", "1,1,1"),
        ("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", "true"),
    ])
    .await;
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
    // The response's headers, with Go's canonical names, as Outpost records them.
    let headers = &ok[0]["response_data"]["headers"];
    let body_len = ok[0]["response_data"]["body"].as_str().unwrap().len().to_string();
    assert_eq!(headers["Content-Length"], body_len.as_str(), "{headers}");
    assert!(headers["Content-Type"].is_string(), "{headers}");

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

/// FNV-1a 32 of `key`, as a signed number, remainder by `n`, sign dropped:
/// how Outpost's writer (kafka-go's Hash balancer) picks a partition.
fn fnv1a_partition(key: &[u8], n: usize) -> usize {
    let h = key
        .iter()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(16_777_619));
    ((h as i32) % (n as i32)).unsigned_abs() as usize
}

/// A tansu broker process (a Kafka-compatible broker from crates.io),
/// killed on drop. Its storage is a SQLite file in a directory of the test,
/// so the users and topics a first, unauthenticated run makes are there when
/// the broker restarts with authentication on.
struct Tansu {
    child: std::process::Child,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_bin() -> String {
    require(
        "OUTRIDER_TEST_TANSU_BIN",
        "the tansu Kafka broker (scripts/services.sh installs it)",
    )
}

async fn start_tansu(dir: &std::path::Path, listen: u16, advertised: &str, auth: bool) -> Tansu {
    let mut cmd = std::process::Command::new(tansu_bin());
    cmd.current_dir(dir)
        .arg("broker")
        .arg("--storage-engine")
        .arg("sqlite://tansu.db")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{listen}"))
        .arg("--advertised-listener-url")
        .arg(advertised)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("tansu-{listen}.log"))).unwrap());
    if auth {
        cmd.arg("--authentication");
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
    let t = Tansu { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", listen)).await.is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {listen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t
}

/// A TLS listener in front of a broker port: tansu 0.6's command line cannot
/// take a certificate and a key together, so TLS is terminated here and the
/// broker advertises this port. Returns `(tls port, broker port to start
/// tansu on)`.
async fn tls_terminator(dir: &std::path::Path) -> (u16, u16) {
    let broker = free_port();
    let port = tls_front(dir, socket_of(&format!("127.0.0.1:{broker}"))).await;
    (port, broker)
}

fn tansu_cli(args: &[&str]) {
    let out = std::process::Command::new(tansu_bin())
        .args(args)
        .output()
        .expect("tansu");
    assert!(
        out.status.success(),
        "tansu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker directory holding a Kafka cluster with topic `orders` (3
/// partitions) and SCRAM users `alice` (SHA-256) and `bob` (SHA-512), made
/// by a broker run without authentication.
async fn kafka_cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _setup = start_tansu(dir.path(), port, &url, false).await;
    tansu_cli(&[
        "user",
        "create",
        "--broker",
        &url,
        "--mechanism",
        "scram256",
        "alice",
        "alice-secret",
    ]);
    tansu_cli(&[
        "user",
        "create",
        "--broker",
        &url,
        "--mechanism",
        "scram512",
        "bob",
        "bob-secret",
    ]);
    tansu_cli(&["topic", "create", "--broker", &url, "--partitions", "3", "orders"]);
    dir
}

async fn kafka_reader(
    addr: &str,
    sasl: rskafka::client::SaslConfig,
    tls: Option<&std::path::Path>,
    templated: bool,
) -> Backend {
    use rskafka::client::partition::UnknownTopicHandling;
    let mut b = rskafka::client::ClientBuilder::new(vec![addr.to_string()])
        .sasl_config(sasl)
        .backoff_config(rskafka::BackoffConfig {
            deadline: Some(WAIT),
            ..Default::default()
        });
    if let Some(dir) = tls {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap())
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        b = b.tls_config(Arc::new(cfg));
    }
    let client = b.build().await.unwrap();
    let mut parts = Vec::new();
    for p in 0..3 {
        parts.push(
            client
                .partition_client("orders", p, UnknownTopicHandling::Error)
                .await
                .unwrap(),
        );
    }
    Backend::Kafka {
        parts,
        next: vec![0; 3],
        templated,
    }
}

fn scram(user: &str, password: &str, sha512: bool) -> rskafka::client::SaslConfig {
    let c = rskafka::client::Credentials::new(user.into(), password.into());
    if sha512 {
        rskafka::client::SaslConfig::ScramSha512(c)
    } else {
        rskafka::client::SaslConfig::ScramSha256(c)
    }
}

/// SCRAM-SHA-256 over plaintext through a forwarder the broker advertises,
/// so cutting the forwarder takes the whole cluster away.
#[tokio::test]
async fn kafka_destination() {
    let cluster = kafka_cluster().await;
    let listen = free_port();
    let proxy = Proxy::start(socket_of(&format!("127.0.0.1:{listen}"))).await;
    let advertised = format!("127.0.0.1:{}", proxy.port);
    let _broker = start_tansu(cluster.path(), listen, &format!("tcp://{advertised}"), true).await;
    let reader = kafka_reader(&advertised, scram("alice", "alice-secret", false), None, true).await;
    scenario(
        Case {
            kind: "kafka",
            upstream: socket_of(&format!("127.0.0.1:{listen}")),
            destination: Box::new(move |port| {
                json!({"type": "kafka", "topics": "*",
                    "config": {"brokers": format!(" 127.0.0.1:{port} "), "topic": "orders", "tls": "false",
                        "sasl_mechanism": "scram-sha-256",
                        "partition_key_template": "join('-', ['k', to_string(data.n)])"},
                    "credentials": {"username": "alice", "password": "alice-secret"}})
            }),
            target: Box::new(|port| format!("127.0.0.1:{port} / orders")),
            response_keys: &["partition", "offset"],
            proxy: Some(proxy),
            batched_http: false,
        },
        reader,
    )
    .await;
}

/// TLS to a broker whose certificate comes from a private CA (trusted
/// through `OUTRIDER_DESTINATIONS_TLS_CA_FILE`), SCRAM-SHA-512, and a wrong
/// password: refused once, recorded as `auth_failed`, not retried (with
/// `OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES`).
#[tokio::test]
async fn kafka_tls_scram_sha_512_and_refused_password() {
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let cluster = kafka_cluster().await;
    let tls_port = tls_terminator(dir.path()).await;
    let _broker = start_tansu(
        cluster.path(),
        tls_port.1,
        &format!("tcp://127.0.0.1:{}", tls_port.0),
        true,
    )
    .await;
    let listen = tls_port.0;
    let ca = dir.path().join("ca.crt");
    let s = Server::start(&[
        ("RETRY_SCHEDULE", "1,1,1"),
        ("OUTRIDER_DESTINATIONS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", "true"),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let dest = |password: &str| {
        json!({"type": "kafka", "topics": "*",
            "config": {"brokers": format!("127.0.0.1:{listen}"), "topic": "orders", "tls": "on",
                "sasl_mechanism": "scram-sha-512"},
            "credentials": {"username": "bob", "password": password}})
    };
    let r = api.post("/tenants/t1/destinations", dest("bob-secret")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["config"]["tls"], "true", "{}", r.text);
    assert_eq!(
        r.body["credentials"]["password"],
        "bob-secret".chars().take(4).collect::<String>() + "******"
    );
    let good = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .publish(json!({"id": "evt-tls", "tenant_id": "t1", "topic": "a", "data": {"n": 7}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mut reader = kafka_reader(
        &format!("127.0.0.1:{listen}"),
        scram("bob", "bob-secret", true),
        Some(dir.path()),
        false,
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let m = reader.drain().await;
        if let Some(m) = m.into_iter().next() {
            break m;
        }
        assert!(Instant::now() < deadline, "the record did not reach the broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.body, json!({"n": 7}));
    assert_eq!(got.attrs.get("event-id").map(String::as_str), Some("evt-tls"));
    let ok = api
        .wait_attempts(&format!("destination_id={good}"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(ok[0]["status"], "success", "{:?}", ok);

    // The same broker with a wrong password.
    let r = api
        .call("DELETE", &format!("/tenants/t1/destinations/{good}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.post("/tenants/t1/destinations", dest("not-bobs")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bad = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .publish(json!({"id": "evt-bad-pw", "tenant_id": "t1", "topic": "a", "data": {"n": 8}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let first = api
        .wait_attempts(&format!("destination_id={bad}&include=response_data"), WAIT, |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(first[0]["code"], "auth_failed", "{}", first[0]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = api.get(&format!("/attempts?destination_id={bad}")).await;
    assert_eq!(
        after.body["models"].as_array().unwrap().len(),
        1,
        "not retried: {}",
        after.text
    );
}

/// With the SSRF guard on, the brokers a cluster advertises pass the guard
/// too, not only the bootstrap list: the destination's owner controls the
/// metadata. The allow list opens 127.0.0.1 only; a cluster advertising
/// itself there is written to through the guard's hop, one advertising
/// 127.0.0.2 is refused (`forbidden`, not retried with the opt-out) although its bootstrap
/// address is allowed.
#[tokio::test]
async fn kafka_advertised_brokers_pass_the_ssrf_guard() {
    let cluster = kafka_cluster().await;
    let s = Server::start(&[
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1/32"),
        ("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", "true"),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let dest = |port: u16, topic: &str| {
        json!({"type": "kafka", "topics": [topic],
            "config": {"brokers": format!("127.0.0.1:{port}"), "topic": "orders", "tls": "false",
                "sasl_mechanism": "scram-sha-256"},
            "credentials": {"username": "alice", "password": "alice-secret"}})
    };

    let listen = free_port();
    let broker = start_tansu(cluster.path(), listen, &format!("tcp://127.0.0.1:{listen}"), true).await;
    let r = api.post("/tenants/t1/destinations", dest(listen, "a")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let allowed = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .publish(json!({"id": "evt-allowed", "tenant_id": "t1", "topic": "a", "data": {"n": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ok = api
        .wait_attempts(&format!("destination_id={allowed}&include=response_data"), WAIT, |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(ok[0]["status"], "success", "{}", ok[0]);
    let mut reader = kafka_reader(
        &format!("127.0.0.1:{listen}"),
        scram("alice", "alice-secret", false),
        None,
        false,
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let got = loop {
        if let Some(m) = reader.drain().await.into_iter().next() {
            break m;
        }
        assert!(Instant::now() < deadline, "the record did not reach the broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.attrs.get("event-id").map(String::as_str), Some("evt-allowed"));
    drop(broker);

    // The same cluster, now advertising an address the guard refuses.
    let listen = free_port();
    let _broker = start_tansu(cluster.path(), listen, &format!("tcp://127.0.0.2:{listen}"), true).await;
    let r = api.post("/tenants/t1/destinations", dest(listen, "b")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let refused = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .publish(json!({"id": "evt-refused", "tenant_id": "t1", "topic": "b", "data": {"n": 2}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let a = api
        .wait_attempts(&format!("destination_id={refused}&include=response_data"), WAIT, |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(a[0]["status"], "failed", "{}", a[0]);
    assert_eq!(a[0]["code"], "forbidden", "{}", a[0]);
    let err = a[0]["response_data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains(&format!("127.0.0.2:{listen}")) && err.contains("loopback"),
        "{}",
        a[0]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get(&format!("/attempts?destination_id={refused}")).await;
    assert_eq!(
        after.body["models"].as_array().unwrap().len(),
        1,
        "not retried: {}",
        after.text
    );
}

/// What the fake Service Bus took: the entity, body, application properties
/// and message id of each message it accepted.
type SbInbox = Arc<Mutex<Vec<(String, Vec<u8>, HashMap<String, String>, Option<String>)>>>;

/// A wire-level fake of Azure Service Bus's AMQP 1.0 endpoint (no Service
/// Bus can run here), made with the fe2o3 AMQP library's acceptor: SASL
/// ANONYMOUS, a `$cbs` node that checks each put-token request (operation,
/// token type, audience, expiry) and recomputes the token's signature with
/// the namespace key, answering 202 or 401, and entity links that accept a
/// message only after a valid token for that entity was put.
struct FakeServiceBus {
    addr: SocketAddr,
    got: SbInbox,
    /// Audiences of the tokens put, in order.
    tokens: Arc<Mutex<Vec<String>>>,
}

/// The Service Bus key of the fake namespace.
const SB_KEY: &str = "fake-namespace-key";

fn sb_prop(m: &fe2o3_amqp::types::messaging::ApplicationProperties, k: &str) -> Option<String> {
    use fe2o3_amqp::types::primitives::SimpleValue;
    match m.0.get(k)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// `SharedAccessSignature sr=..&sig=..&se=..&skn=..` checked against `SB_KEY`.
fn sb_token_ok(token: &str, audience: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    let Some(rest) = token.strip_prefix("SharedAccessSignature ") else {
        return false;
    };
    let fields: HashMap<&str, &str> = rest.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let unescape = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() + 1 {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let (Some(sr), Some(sig), Some(se), Some(skn)) =
        (fields.get("sr"), fields.get("sig"), fields.get("se"), fields.get("skn"))
    else {
        return false;
    };
    let expiry: i64 = se.parse().unwrap_or(0);
    if unescape(sr) != audience || *skn != "send" || expiry < chrono::Utc::now().timestamp() {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SB_KEY.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{se}").as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    unescape(sig) == want
}

impl FakeServiceBus {
    async fn start() -> FakeServiceBus {
        use fe2o3_amqp::acceptor::{
            ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SaslAnonymousMechanism, SessionAcceptor,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: SbInbox = Arc::default();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let (g, t) = (got.clone(), tokens.clone());
        tokio::spawn(async move {
            let acceptor = Arc::new(
                ConnectionAcceptor::builder()
                    .container_id("fake-servicebus")
                    .sasl_acceptor(SaslAnonymousMechanism::new())
                    .build(),
            );
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, g, t) = (acceptor.clone(), g.clone(), t.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sessions = SessionAcceptor::new();
                    while let Ok(mut session) = sessions.accept(&mut conn).await {
                        let (g, t) = (g.clone(), t.clone());
                        tokio::spawn(async move {
                            let links = LinkAcceptor::new();
                            let reply: Arc<tokio::sync::Mutex<Option<fe2o3_amqp::Sender>>> = Arc::default();
                            let authorised: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
                            while let Ok(link) = links.accept(&mut session).await {
                                match link {
                                    LinkEndpoint::Sender(s) => *reply.lock().await = Some(s),
                                    LinkEndpoint::Receiver(r) => {
                                        let (g, t, reply, authorised) =
                                            (g.clone(), t.clone(), reply.clone(), authorised.clone());
                                        tokio::spawn(serve_sb_link(r, g, t, reply, authorised, addr));
                                    }
                                }
                            }
                        });
                    }
                    let _ = conn.close().await;
                });
            }
        });
        FakeServiceBus { addr, got, tokens }
    }
}

async fn serve_sb_link(
    mut r: fe2o3_amqp::Receiver,
    got: SbInbox,
    tokens: Arc<Mutex<Vec<String>>>,
    reply: Arc<tokio::sync::Mutex<Option<fe2o3_amqp::Sender>>>,
    authorised: Arc<Mutex<std::collections::HashSet<String>>>,
    _addr: SocketAddr,
) {
    use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Properties};
    use fe2o3_amqp::types::primitives::Value as AmqpValue;
    let target = r.target().as_ref().and_then(|t| t.address.clone()).unwrap_or_default();
    loop {
        let Ok(d) = r.recv::<Body<AmqpValue>>().await else {
            return;
        };
        let m = d.message();
        let props = m.application_properties.clone().unwrap_or_default();
        if target == "$cbs" {
            // A put-token request: checked, then answered on the reply link.
            let audience = sb_prop(&props, "name").unwrap_or_default();
            let token = match &m.body {
                Body::Value(v) => match &v.0 {
                    AmqpValue::String(s) => s.clone(),
                    other => format!("{other:?}"),
                },
                _ => String::new(),
            };
            let ok = sb_prop(&props, "operation").as_deref() == Some("put-token")
                && sb_prop(&props, "type").as_deref() == Some("servicebus.windows.net:sastoken")
                && props.0.contains_key("expiration")
                && sb_token_ok(&token, &audience);
            tokens.lock().unwrap().push(audience.clone());
            if ok {
                authorised
                    .lock()
                    .unwrap()
                    .insert(audience.rsplit('/').next().unwrap_or("").to_string());
            }
            let request_id = m
                .properties
                .as_ref()
                .and_then(|p| p.message_id.clone())
                .expect("a put-token request carries a message id");
            r.accept(&d).await.unwrap();
            let answer = Message::builder()
                .properties(Properties::builder().correlation_id(request_id).build())
                .application_properties(
                    ApplicationProperties::builder()
                        .insert("status-code", if ok { 202i32 } else { 401i32 })
                        .insert("status-description", if ok { "Accepted" } else { "InvalidSignature" })
                        .build(),
                )
                .value(AmqpValue::Null)
                .build();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(s) = reply.lock().await.as_mut() {
                    s.send(answer).await.unwrap();
                    break;
                }
                assert!(Instant::now() < deadline, "no reply link for $cbs");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        if !authorised.lock().unwrap().contains(&target) {
            let e = fe2o3_amqp::types::definitions::Error::new(
                fe2o3_amqp::types::definitions::AmqpError::UnauthorizedAccess,
                Some("no valid token for this entity".to_string()),
                None,
            );
            r.reject(&d, e).await.unwrap();
            continue;
        }
        let body = match &m.body {
            Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
            other => panic!("the body must be a data section, got {other:?}"),
        };
        let attrs = props
            .0
            .keys()
            .map(|k| (k.clone(), sb_prop(&props, k).unwrap()))
            .collect();
        let id = m.properties.as_ref().and_then(|p| match &p.message_id {
            Some(fe2o3_amqp::types::messaging::MessageId::String(s)) => Some(s.clone()),
            _ => None,
        });
        got.lock().unwrap().push((target.clone(), body, attrs, id));
        r.accept(&d).await.unwrap();
    }
}

#[tokio::test]
async fn azure_servicebus_destination_against_a_fake_service_bus() {
    let fake = FakeServiceBus::start().await;
    let connection = |port: u16, key: &str| {
        format!("Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=send;SharedAccessKey={key};UseDevelopmentEmulator=true")
    };
    let got = fake.got.clone();
    scenario(
        Case {
            kind: "azure_servicebus",
            upstream: fake.addr,
            destination: Box::new(move |port| {
                json!({"type": "azure_servicebus", "topics": "*",
                    "config": {"name": "orders"},
                    "credentials": {"connection_string": connection(port, SB_KEY)}})
            }),
            target: Box::new(|_| "127/orders".to_string()),
            response_keys: &[],
            proxy: None,
            batched_http: false,
        },
        Backend::ServiceBus { got, taken: 0 },
    )
    .await;
    let tokens = fake.tokens.lock().unwrap().clone();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|a| a == "amqp://127.0.0.1/orders"),
        "{tokens:?}"
    );

    // A wrong key: the token is refused, recorded once as auth_failed, not
    // retried (with the opt-out; by default it is retried like Outpost).
    let s = Server::start(&[
        ("RETRY_SCHEDULE", "1,1,1"),
        ("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", "true"),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "azure_servicebus", "topics": "*", "config": {"name": "orders"},
                "credentials": {"connection_string": connection(fake.addr.port(), "not-the-key")}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .publish(json!({"id": "evt-bad-key", "tenant_id": "t1", "topic": "a", "data": {"x": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let first = api
        .wait_attempts("event_id=evt-bad-key&include=response_data", WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(first[0]["code"], "auth_failed", "{}", first[0]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = api.get("/attempts?event_id=evt-bad-key").await;
    assert_eq!(
        after.body["models"].as_array().unwrap().len(),
        1,
        "not retried: {}",
        after.text
    );
    assert!(
        !fake
            .got
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.3.as_deref() == Some("evt-bad-key")),
        "a message without a valid token was taken"
    );
}

/// Outpost's destination-type contract, per type: create with a valid
/// config, array topics and a caller-chosen id; retrieve (sensitive
/// credentials masked); list by type; update; an update that breaks the
/// config is refused with the field named; delete. Creating contacts no
/// broker (Hookdeck, which verifies its token on create, has its own test).
#[tokio::test]
async fn every_type_passes_the_destination_crud_contract() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let aws = json!({"key": "AKIAEXAMPLEKEY", "secret": "a-long-secret-key"});
    // (type, config, credentials, a required config key, a sensitive credential key)
    let cases = [
        (
            "aws_sqs",
            json!({"queue_url": "https://sqs.us-east-1.amazonaws.com/123/q"}),
            aws.clone(),
            "queue_url",
            Some("secret"),
        ),
        (
            "aws_kinesis",
            json!({"stream_name": "s", "region": "us-east-1"}),
            aws.clone(),
            "stream_name",
            Some("secret"),
        ),
        (
            "aws_s3",
            json!({"bucket": "b", "region": "us-east-1"}),
            aws.clone(),
            "bucket",
            Some("secret"),
        ),
        (
            "aws_eventbridge",
            json!({"event_bus": "default", "region": "us-east-1"}),
            aws.clone(),
            "region",
            Some("secret"),
        ),
        (
            "gcp_pubsub",
            json!({"project_id": "p", "topic": "t"}),
            json!({"service_account_json": "{\"type\":\"service_account\"}"}),
            "topic",
            Some("service_account_json"),
        ),
        (
            "azure_servicebus",
            json!({"name": "q1"}),
            json!({"connection_string": "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=bbbbbbbbbb"}),
            "name",
            Some("connection_string"),
        ),
        (
            "rabbitmq",
            json!({"server_url": "mq.example.com:5672", "exchange": "x"}),
            json!({"username": "u", "password": "p-long-password"}),
            "server_url",
            Some("password"),
        ),
        (
            "kafka",
            json!({"brokers": "b1.example.com:9092", "topic": "t", "sasl_mechanism": "plain"}),
            json!({"username": "u", "password": "p-long-password"}),
            "brokers",
            Some("password"),
        ),
        (
            "nats",
            json!({"server_url": "nats.example.com:4222", "subject": "s"}),
            json!({}),
            "subject",
            None,
        ),
        (
            "mqtt",
            json!({"server_url": "mqtt.example.com:1883", "topic": "t"}),
            json!({}),
            "topic",
            None,
        ),
        (
            "redis_stream",
            json!({"address": "redis.example.com:6379", "stream": "s"}),
            json!({}),
            "stream",
            None,
        ),
    ];
    for (kind, config, credentials, required, sensitive) in cases {
        let id = format!("des_{kind}");
        let path = format!("/tenants/t1/destinations/{id}");
        let r = api
            .post(
                "/tenants/t1/destinations",
                json!({"id": id, "type": kind, "topics": ["a", "b"], "config": config, "credentials": credentials}),
            )
            .await;
        assert_eq!(r.status, 201, "{kind} create: {}", r.text);
        assert_eq!(r.body["id"], id.as_str(), "{kind}");
        assert_eq!(r.body["topics"], json!(["a", "b"]), "{kind}");
        assert!(
            r.body["target"].as_str().is_some_and(|t| !t.is_empty()),
            "{kind}: {}",
            r.text
        );
        let again = api
            .post(
                "/tenants/t1/destinations",
                json!({"id": id, "type": kind, "topics": "*", "config": config, "credentials": credentials}),
            )
            .await;
        assert_eq!(again.status, 400, "{kind} duplicate id: {}", again.text);

        let got = api.get(&path).await;
        assert_eq!(got.status, 200, "{kind} get: {}", got.text);
        assert_eq!(got.body["type"], kind);
        assert_eq!(got.body["config"][required], config[required], "{kind}");
        if let Some(k) = sensitive {
            let shown = got.body["credentials"][k].as_str().unwrap();
            assert_ne!(shown, credentials[k].as_str().unwrap(), "{kind}: {k} is masked");
            assert!(shown.contains('*'), "{kind}: {shown}");
        }

        let list = api.get(&format!("/tenants/t1/destinations?type={kind}")).await;
        assert_eq!(list.status, 200, "{kind} list: {}", list.text);
        let ids: Vec<&str> = list
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [id.as_str()], "{kind}");

        let up = api.patch(&path, json!({"topics": ["c"]})).await;
        assert_eq!(up.status, 200, "{kind} update: {}", up.text);
        assert_eq!(up.body["topics"], json!(["c"]));
        let mut broken = config.clone();
        broken[required] = json!("");
        let bad = api.patch(&path, json!({"config": broken})).await;
        assert_eq!(bad.status, 422, "{kind} broken update: {}", bad.text);
        assert_eq!(bad.body["message"], "validation error", "{kind}");
        assert!(
            bad.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().starts_with(&format!("config.{required} "))),
            "{kind}: {}",
            bad.text
        );
        assert_eq!(
            api.get(&path).await.body["config"][required],
            config[required],
            "{kind}: the refused update changed nothing"
        );

        let del = api.call("DELETE", &path, None).await;
        assert_eq!(del.status, 200, "{kind} delete: {}", del.text);
        assert_eq!(api.get(&path).await.status, 404, "{kind}");
    }
}

/// With `OUTRIDER_DESTINATIONS_AWS_DEFAULT_CREDENTIALS`, an admin may save an
/// AWS destination without keys: the server calls AWS as itself (here the
/// default chain's environment provider, the server's AWS_* variables). A
/// tenant may not; without the setting nobody may.
#[tokio::test]
async fn aws_server_identity_is_opt_in_and_admin_only() {
    let (endpoint, _) = moto();
    let client = aws_client!(aws_sdk_sqs, &endpoint);
    let url = client
        .create_queue()
        .queue_name(format!("outrider-e2e-ambient-{}", uniq()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"))
        .queue_url()
        .unwrap()
        .to_string();
    let keyless = json!({"type": "aws_sqs", "topics": "*",
        "config": {"queue_url": url, "endpoint": endpoint}});

    // Off by default: the keys are required, as Outpost requires them.
    let off = Server::start(&[]).await;
    let api = Api::admin(&off);
    api.tenant("t-ambient").await;
    let r = api.post("/tenants/t-ambient/destinations", keyless.clone()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("credentials.key is required"), "{}", r.text);
    drop(off);

    let s = Server::start(&[
        ("OUTRIDER_DESTINATIONS_AWS_DEFAULT_CREDENTIALS", "true"),
        ("AWS_ACCESS_KEY_ID", "server-key"),
        ("AWS_SECRET_ACCESS_KEY", "server-secret"),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t-ambient").await;
    let token = api.get("/tenants/t-ambient/token").await.body["token"]
        .as_str()
        .expect("a tenant token")
        .to_string();
    let tenant = Api::with_token(&s, &token);
    let r = tenant.post("/tenants/t-ambient/destinations", keyless.clone()).await;
    assert_eq!(
        r.status, 422,
        "a tenant cannot borrow the server's identity: {}",
        r.text
    );
    assert!(r.text.contains("credentials.key is required"), "{}", r.text);

    let r = api.post("/tenants/t-ambient/destinations", keyless.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let dest_id = r.body["id"].as_str().unwrap().to_string();
    // The tenant may still change what is not the target.
    let r = tenant
        .patch(
            &format!("/tenants/t-ambient/destinations/{dest_id}"),
            json!({"topics": ["orders.created"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .publish(json!({"id": "evt-ambient", "tenant_id": "t-ambient", "topic": "orders.created", "data": {"n": 1}}))
        .await;
    assert!(r.status == 202 || r.status == 200, "{}", r.text);
    let ok = api
        .wait_attempts(&format!("tenant_id=t-ambient&destination_id={dest_id}"), WAIT, |m| {
            m.iter().any(|a| a["status"] == "success")
        })
        .await;
    assert!(ok.iter().any(|a| a["status"] == "success"), "{ok:?}");
    let got = client
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    assert_eq!(got.messages().len(), 1);
    assert_eq!(got.messages()[0].body(), Some(r#"{"n":1}"#));
    let _ = client.delete_queue().queue_url(&url).send().await;
}

/// A moto of this test's own that enforces IAM after `free_actions`
/// requests (moto's INITIAL_NO_AUTH_ACTION_COUNT): the setup's calls pass,
/// everything after them is checked against the caller's policy.
struct IamMoto {
    endpoint: String,
    child: std::process::Child,
}

impl Drop for IamMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IamMoto {
    async fn start(free_actions: u32) -> Self {
        let port = free_port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", free_actions.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server is required for this test ({e}); scripts/services.sh installs it"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// One IAM query call, before enforcement starts (moto routes it by the
    /// service named in the Authorization header; the signature is not
    /// checked yet).
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        fn enc(s: &str) -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect()
        }
        let body: Vec<String> = params
            .iter()
            .chain(&[("Version", "2010-05-08")])
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        let r = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.join("&"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{params:?}: {status} {text}");
        text
    }
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no {tag} in {xml}")) + open.len();
    let end = xml[start..].find("</").unwrap() + start;
    xml[start..end].to_string()
}

/// Outpost sends Kinesis records with PutRecord, and the IAM policy in its
/// docs grants only `kinesis:PutRecord`. With that policy (enforced by moto)
/// our PutRecords is denied; the destination must still deliver every event,
/// with PutRecord. Before the fallback every attempt failed with
/// `access_denied`.
#[tokio::test]
async fn aws_kinesis_delivers_with_outposts_put_record_only_policy() {
    // Setup: CreateUser, PutUserPolicy, CreateAccessKey, CreateStream.
    let moto = IamMoto::start(4).await;
    moto.iam(&[("Action", "CreateUser"), ("UserName", "outpost-kinesis")])
        .await;
    let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
        "Action": ["kinesis:PutRecord", "kinesis:DescribeStream", "kinesis:GetShardIterator", "kinesis:GetRecords"]}]});
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "outpost-kinesis"),
        ("PolicyName", "put-record-only"),
        ("PolicyDocument", &policy.to_string()),
    ])
    .await;
    let created = moto
        .iam(&[("Action", "CreateAccessKey"), ("UserName", "outpost-kinesis")])
        .await;
    let (key, secret) = (
        xml_field(&created, "AccessKeyId"),
        xml_field(&created, "SecretAccessKey"),
    );
    let admin = aws_client!(aws_sdk_kinesis, &moto.endpoint);
    admin
        .create_stream()
        .stream_name("outpost-only")
        .shard_count(1)
        .send()
        .await
        .unwrap();

    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "aws_kinesis", "topics": "*",
                "config": {"stream_name": "outpost-only", "region": "us-east-1", "endpoint": moto.endpoint,
                    "partition_key_template": "data.n"},
                "credentials": {"key": key, "secret": secret}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for n in 0..5 {
        let r = api
            .publish(json!({"id": format!("k{n}"), "tenant_id": "t1", "topic": "t", "data": {"n": n}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let attempts = api
        .wait_attempts("include=response_data", WAIT, |m| {
            m.iter().filter(|a| a["status"] == "success").count() >= 5
        })
        .await;
    let failed: Vec<&Value> = attempts.iter().filter(|a| a["status"] != "success").collect();
    assert!(failed.is_empty(), "no attempt fails: {failed:?}");
    for a in &attempts {
        assert!(a["response_data"]["sequence_number"].is_string(), "{a}");
    }

    // The records are in the stream, read back as the same user.
    let user = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                &key, &secret, None, None, "e2e",
            ))
            .endpoint_url(&moto.endpoint)
            .build(),
    );
    let d = user.describe_stream().stream_name("outpost-only").send().await.unwrap();
    let shard = d.stream_description().unwrap().shards()[0].shard_id().to_string();
    let iterator = user
        .get_shard_iterator()
        .stream_name("outpost-only")
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let records = user
        .get_records()
        .shard_iterator(iterator.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = records
        .records()
        .iter()
        .map(|r| r.partition_key().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["0", "1", "2", "3", "4"]);
}

/// A `rabbitmq` destination over TLS to a broker whose certificate comes
/// from a private CA: trusted through `OUTRIDER_DESTINATIONS_TLS_CA_FILE`,
/// the message arrives (the connection goes to the address the SSRF guard
/// checked, the certificate is checked against the name); without the CA the
/// attempt fails as `tls_error` and nothing arrives.
#[tokio::test]
async fn rabbitmq_destination_over_tls_with_a_private_ca() {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let url = require("OUTRIDER_TEST_RABBITMQ_URL", "RabbitMQ");
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let tls_port = tls_front(dir.path(), socket_of("127.0.0.1:5672")).await;
    let id = uniq();
    let (exchange, queue) = (format!("outrider-e2e-tls-{id}"), format!("outrider-e2e-tls-{id}"));
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let conn = lapin::Connection::connect(&url, props)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url} is required for this test: {e}"));
    let ch = conn.create_channel().await.unwrap();
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.as_str(),
        lapin::ExchangeKind::Topic,
        auto_delete,
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
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let destination = json!({"type": "rabbitmq", "topics": "*",
        "config": {"server_url": format!("localhost:{tls_port}"), "exchange": exchange, "tls": "on"},
        "credentials": {"username": "guest", "password": "guest"}});
    let count = || async {
        ch.queue_declare(
            queue.as_str(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
    };

    let ca = dir.path().join("ca.crt");
    let s = Server::start(&[("OUTRIDER_DESTINATIONS_TLS_CA_FILE", ca.to_str().unwrap())]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api.post("/tenants/t1/destinations", destination.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ev = api
        .publish(json!({"tenant_id": "t1", "topic": "orders.tls", "data": {"n": 1}}))
        .await;
    let ev = ev.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}"), Duration::from_secs(15), |m| !m.is_empty())
        .await;
    assert_eq!((a.len(), a[0]["status"].as_str()), (1, Some("success")), "{a:?}");
    assert_eq!(count().await, 1);
    drop(s);

    // The same broker without the CA: the certificate is not trusted.
    let s = Server::start(&[("RETRY_SCHEDULE", "60")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api.post("/tenants/t1/destinations", destination).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ev = api
        .publish(json!({"tenant_id": "t1", "topic": "orders.tls", "data": {"n": 2}}))
        .await;
    let ev = ev.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(
            &format!("event_id={ev}&include=response_data"),
            Duration::from_secs(15),
            |m| !m.is_empty(),
        )
        .await;
    assert_eq!(
        (a.len(), a[0]["status"].as_str(), a[0]["code"].as_str()),
        (1, Some("failed"), Some("tls_error")),
        "{a:?}"
    );
    assert_eq!(count().await, 1, "nothing more arrived");
    let _ = ch.queue_delete(queue.as_str(), QueueDeleteOptions::default()).await;
}

/// An `mqtt` destination over TLS with the SSRF guard on: the client keeps
/// the broker's name for the certificate (a private CA, trusted through
/// `OUTRIDER_DESTINATIONS_TLS_CA_FILE`) while the connection goes through the
/// guard's hop (HTTP CONNECT), which resolves, checks and connects; the
/// message arrives at the real broker behind a TLS front.
#[tokio::test]
async fn mqtt_destination_over_tls_through_the_guard() {
    let addr = require("OUTRIDER_TEST_MQTT_ADDR", "an MQTT 5 broker (Mosquitto)");
    let broker = socket_of(&addr);
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let tls_port = tls_front(dir.path(), broker).await;
    let topic = format!("outrider/e2e/{}/tls", uniq());
    let (_client, got) = mqtt_subscriber(&addr, &topic).await;
    let ca = dir.path().join("ca.crt");
    let s = Server::start(&[
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1,::1"),
        ("OUTRIDER_DESTINATIONS_TLS_CA_FILE", ca.to_str().unwrap()),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "mqtt", "topics": "*",
                "config": {"server_url": format!("localhost:{tls_port}"), "topic": topic, "tls": "on"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ev = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"tls": true}}))
        .await;
    let ev = ev.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(
            &format!("event_id={ev}&include=response_data"),
            Duration::from_secs(15),
            |m| !m.is_empty(),
        )
        .await;
    assert_eq!((a.len(), a[0]["status"].as_str()), (1, Some("success")), "{a:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payloads: Vec<Vec<u8>> = got.lock().unwrap().iter().map(|m| m.0.clone()).collect();
    assert_eq!(payloads, [b"{\"tls\":true}".to_vec()]);
}

/// NATS over TLS with the guard on: the library is handed the address the
/// guard checked (never the name, which it would resolve again), and the
/// certificate is still verified for the configured name. The server's
/// certificate names only `localhost`: `localhost:<port>` delivers,
/// `127.0.0.1:<port>` is refused as a TLS error.
#[tokio::test]
async fn nats_destination_over_tls_dials_the_checked_address() {
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir.path())
            .output()
            .expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("printf 'subjectAltName=DNS:localhost\\n' > name-only.cnf");
    sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out name-only.crt -days 2 -extfile name-only.cnf");
    let port = free_port();
    let mut server = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--tls", "--tlscert", "name-only.crt", "--tlskey", "server.key"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("nats-server is required for this test: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS nats-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ca = dir.path().join("ca.crt");
    let subject = format!("outrider.e2e.{}.tls", uniq());
    // The test's own client takes the process-wide rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let watcher = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .connect(format!("tls://localhost:{port}"))
        .await
        .expect("the test's own TLS connection to nats-server");
    let mut sub = watcher.subscribe(subject.clone()).await.unwrap();
    watcher.flush().await.unwrap();

    let s = Server::start(&[
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1,::1"),
        ("OUTRIDER_DESTINATIONS_TLS_CA_FILE", ca.to_str().unwrap()),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    for (id, host) in [("by-name", "localhost"), ("by-ip", "127.0.0.1")] {
        let r = api
            .post(
                "/tenants/t1/destinations",
                json!({"id": id, "type": "nats", "topics": [id],
                    "config": {"server_url": format!("{host}:{port}"), "subject": subject,
                        "jetstream": "false", "tls": "on"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let mut codes = HashMap::new();
    for id in ["by-name", "by-ip"] {
        let ev = api
            .publish(json!({"tenant_id": "t1", "topic": id, "data": {"via": id}}))
            .await;
        let ev = ev.body["id"].as_str().unwrap().to_string();
        let a = api
            .wait_attempts(
                &format!("event_id={ev}&include=response_data"),
                Duration::from_secs(15),
                |m| !m.is_empty(),
            )
            .await;
        codes.insert(id, (a[0]["status"].as_str().unwrap().to_string(), a[0]["code"].clone()));
    }
    assert_eq!(codes["by-name"].0, "success", "{codes:?}");
    assert_eq!(codes["by-ip"], ("failed".to_string(), json!("tls_error")), "{codes:?}");
    let msg = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut sub))
        .await
        .expect("the TLS delivery reached the subscriber")
        .unwrap();
    assert_eq!(&msg.payload[..], b"{\"via\":\"by-name\"}");
    let _ = server.kill();
    let _ = server.wait();
}

/// Outpost's default S3 key is `<time.rfc3339_nano>_<event-id>.json`, and
/// Outpost keeps an event's time to the nanosecond: a publish with a
/// nanosecond time (any offset) gets the same key here, in UTC.
#[tokio::test]
async fn aws_s3_default_key_keeps_the_event_time_to_the_nanosecond() {
    let (endpoint, upstream) = moto();
    let client = aws_client!(aws_sdk_s3, &endpoint);
    let bucket = format!("outrider-e2e-ns-{}", uniq());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint} is required for this test: {e:?}"));
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            aws_destination("aws_s3", upstream.port(), json!({"bucket": bucket})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = format!("evt-ns-{}", uniq());
    let r = api
        .publish(json!({"id": id, "tenant_id": "t1", "topic": "x", "time": "2024-06-01T08:23:36.123456789+02:00", "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let a = api
        .wait_attempts(
            &format!("event_id={id}&include=response_data"),
            Duration::from_secs(15),
            |m| !m.is_empty(),
        )
        .await;
    assert_eq!((a.len(), a[0]["status"].as_str()), (1, Some("success")), "{a:?}");
    let key = format!("2024-06-01T06:23:36.123456789Z_{id}.json");
    assert_eq!(a[0]["response_data"]["key"], key.as_str(), "{}", a[0]);
    client.head_object().bucket(&bucket).key(&key).send().await.unwrap();
}
