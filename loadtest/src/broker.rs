//! Broker destinations for the harness (`destination_type` in a scenario):
//! the server delivers to a real broker on loopback, the broker's own
//! consumer drains it and records each harness event it sees (as the HTTP
//! sink does for webhooks), and the baseline is a raw client of the same
//! broker doing the same publishes (same body, same metadata, the same
//! acknowledgement: publisher confirms, XADD replies, JetStream acks) with
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
}

impl Kind {
    pub fn parse(s: &str) -> Result<Option<Kind>, String> {
        Ok(match s {
            "" | "webhook" => None,
            "rabbitmq" => Some(Kind::RabbitMq),
            "redis_stream" => Some(Kind::RedisStream),
            "nats" => Some(Kind::Nats),
            other => {
                return Err(format!(
                    "destination_type {other:?}: the harness drives webhook, rabbitmq, redis_stream and nats"
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
}

const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672";
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const NATS_ADDR: &str = "127.0.0.1:4222";

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
        }
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
    }
}
