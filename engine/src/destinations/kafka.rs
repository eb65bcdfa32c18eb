//! The `kafka` destination type: each event is one record on the
//! destination's topic. Key = the partition key (`partition_key_template`,
//! JMESPath over `{metadata, data}`, falling back to the event id), value =
//! the event data, headers = `content-type: application/json` plus the
//! delivery metadata. The partition is chosen as Outpost's writer (and
//! Sarama) choose it: FNV-1a of the key, so the same key lands on the same
//! partition whichever of the three produced it. A success means every
//! in-sync replica has the record (the client produces with `acks=all`).
//! Concurrent deliveries to one partition share a produce request (up to
//! 1,000 records or 900 KiB, see [`super::batch`]).
//!
//! With the SSRF guard on, every broker connection (the bootstrap brokers and
//! the ones the cluster advertises in its metadata, which the destination's
//! owner controls) goes through a loopback SOCKS5 hop that resolves, checks
//! and connects to the checked address ([`crate::ssrf::socks`]): the client
//! library opens those connections itself and has no other hook.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use serde_json::{json, Value};

use super::fields::{self, Field, Schema};
use super::template::{self, Template};
use super::*;
use crate::ssrf::socks::{self, GuardProxy};
use crate::ssrf::Guard;

const MECHANISMS: &[(&str, &str)] = &[
    ("PLAIN", "plain"),
    ("SCRAM-SHA-256", "scram-sha-256"),
    ("SCRAM-SHA-512", "scram-sha-512"),
];

const CONFIG: &[Field] = &[
    Field::text(
        "brokers",
        "Brokers",
        "Bootstrap brokers as host:port, comma-separated (e.g. b1.example.com:9092,b2.example.com:9092).",
    )
    .required(),
    Field::text("topic", "Topic", "The Kafka topic each event is produced to.").required(),
    Field::text("tls", "TLS", "Connect to the brokers over TLS.").checkbox("true"),
    Field::text(
        "partition_key_template",
        "Partition Key Template",
        "A JMESPath expression over {metadata, data} for the record key (e.g. data.customer_id); the event id when empty or when it yields nothing.",
    ),
    Field::text("sasl_mechanism", "SASL Mechanism", "How the client authenticates to the brokers.")
        .required()
        .select(MECHANISMS),
];
const CREDENTIALS: &[Field] = &[
    Field::text("username", "Username", "The SASL user.").required(),
    Field::text("password", "Password", "That user's SASL password.")
        .required()
        .sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "kafka",
    label: "Apache Kafka",
    description: "Produce each event as a record on a Kafka topic, keyed so related events share a partition.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\"><circle cx=\"8\" cy=\"5\" r=\"2\"/><circle cx=\"8\" cy=\"12\" r=\"3\"/><circle cx=\"8\" cy=\"19\" r=\"2\"/><circle cx=\"17\" cy=\"8\" r=\"2\"/><circle cx=\"17\" cy=\"16\" r=\"2\"/><path d=\"M8 7v2M8 15v2M11 11l4-2M11 13l4 2\"/></svg>",
    instructions: "Create the topic first (records to a missing topic fail with `topic_not_found`) and a SASL user allowed to write to it. Each record's value is the event data, its key the partition key (the event id unless `partition_key_template` picks another, e.g. `data.customer_id`), and its headers `content-type`, `event-id`, `topic`, `timestamp` plus the event metadata. The partition is FNV-1a(key) modulo the partition count, as Outpost and Sarama choose it. TLS is on unless `tls` is `false`.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct Kafka;

/// Where a destination connects: destinations with equal keys on one shard
/// share one client (and its broker connections).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    brokers: Vec<(String, u16)>,
    tls: bool,
    mechanism: String,
    username: String,
    password: String,
}

/// A connected client and the partition clients of the topics it wrote to.
pub struct Link {
    client: Client,
    topics: tokio::sync::Mutex<HashMap<String, Rc<Vec<PartitionClient>>>>,
    /// The guard's hop for this client's connections (guard on only).
    proxy: Option<GuardProxy>,
}

/// `brokers` as `(host, port)` pairs; `None` when one is not `host:port`.
fn parse_brokers(brokers: &str) -> Option<Vec<(String, u16)>> {
    let list: Option<Vec<_>> = brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| {
            let (host, port) = clients::host_port(b, 0)?;
            (port != 0).then_some((host, port))
        })
        .collect();
    list.filter(|l| !l.is_empty())
}

/// The partition for `key` among `n`: FNV-1a 32 of the key, read as a signed
/// 32-bit number, remainder by `n`, sign dropped (kafka-go's Hash balancer
/// and Sarama's hash partitioner do exactly this).
pub fn partition_for(key: &[u8], n: usize) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h as i32) % (n as i32)).unsigned_abs() as usize
}

impl DestinationType for Kafka {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(b) = d.config.get("brokers").filter(|b| !b.trim().is_empty()) {
            if parse_brokers(b).is_none() {
                errs.push("config.brokers is invalid".into());
            }
        }
        if let Some(t) = d.config.get("partition_key_template").filter(|t| !t.is_empty()) {
            if let Some(e) = template::invalid(t) {
                errs.push(template::violation("partition_key_template", &e));
            }
        }
        fields::result(errs)
    }

    fn preprocess(
        &self,
        d: &mut Destination,
        _previous: Option<&Destination>,
        _raw: &RawInput,
        _actor: Actor,
        _now_ms: i64,
    ) -> Result<(), Violations> {
        if let Some(b) = d.config.get("brokers") {
            // Outpost trims the whitespace around each broker on save.
            let trimmed = b
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",");
            d.config.insert("brokers".into(), trimmed);
        }
        fields::normalise_flag(&mut d.config, "tls")
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        let first = get("brokers").split(',').next().unwrap_or("").trim();
        (format!("{first} / {}", get("topic")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let get = |k: &str| d.config.get(k).filter(|v| !v.is_empty()).cloned();
        let brokers = get("brokers")
            .as_deref()
            .and_then(parse_brokers)
            .ok_or(PublisherError::Invalid("config.brokers"))?;
        let mechanism = get("sasl_mechanism").ok_or(PublisherError::Missing("config.sasl_mechanism"))?;
        if !MECHANISMS.iter().any(|(_, v)| *v == mechanism) {
            return Err(PublisherError::Invalid("config.sasl_mechanism"));
        }
        let partition_key = match get("partition_key_template") {
            Some(t) => Some(Template::compile(&t).map_err(|e| PublisherError::Refused {
                field: "config.partition_key_template",
                reason: e.to_string(),
            })?),
            None => None,
        };
        let cred = |k: &str| d.credentials.get(k).cloned().unwrap_or_default();
        Ok(Box::new(KafkaPublisher {
            lane: Arc::new((
                Key {
                    brokers,
                    tls: fields::flag(&d.config, "tls"),
                    mechanism,
                    username: cred("username"),
                    password: cred("password"),
                },
                get("topic").ok_or(PublisherError::Missing("config.topic"))?,
            )),
            partition_key,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            tls: ctx.broker_tls.clone(),
            timeout: ctx.config.delivery_timeout_for("kafka"),
        }))
    }
}

pub struct KafkaPublisher {
    /// The client key and topic: with a partition, the batch lane's key.
    lane: Arc<(Key, String)>,
    partition_key: Option<Template>,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// Outpost's Kafka error codes, from the client's description of a failure
/// (its errors nest transport, SASL and broker errors inside retry errors).
fn classify(e: &rskafka::client::error::Error, proxy: Option<&GuardProxy>) -> PublishResult {
    use rskafka::client::error::{Error, ProtocolError};
    let text = e.to_string();
    if text.contains(socks::REFUSAL_TEXT) {
        let why = proxy
            .and_then(GuardProxy::last_refusal)
            .unwrap_or_else(|| "a broker address is not allowed".into());
        return PublishResult::error(
            "forbidden",
            format!("the SSRF guard refused a broker connection: {why}"),
        );
    }
    if let Error::ServerError { protocol_error, .. } = e {
        return match protocol_error {
            ProtocolError::UnknownTopicOrPartition => PublishResult::failed("topic_not_found", text),
            ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge => {
                PublishResult::failed("message_too_large", text)
            }
            ProtocolError::TopicAuthorizationFailed
            | ProtocolError::SaslAuthenticationFailed
            | ProtocolError::ClusterAuthorizationFailed => PublishResult::permanent("auth_failed", text),
            _ => PublishResult::failed("kafka_error", text),
        };
    }
    text_code(&text)
}

fn text_code(text: &str) -> PublishResult {
    let t = text.to_ascii_lowercase();
    if t.contains("sasl") || t.contains("authentication") {
        return PublishResult::permanent("auth_failed", text);
    }
    if t.contains("unknowntopicorpartition") || t.contains("unknown topic") {
        return PublishResult::failed("topic_not_found", text);
    }
    let code = match clients::network_code(text) {
        "network_error" => "kafka_error",
        c => c,
    };
    PublishResult::failed(code, text)
}

async fn connect(
    key: &Key,
    guard: &Guard,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Link, PublishResult> {
    let mut bootstrap = Vec::with_capacity(key.brokers.len());
    for (host, port) in &key.brokers {
        // Checked here too so a refused bootstrap broker fails at once with
        // the guard's own message.
        let addr = clients::checked_target(host, *port, guard).await?;
        // Without the hop, plaintext goes to the checked address; TLS needs
        // the name for the certificate check, and the hop resolves names.
        bootstrap.push(if key.tls || guard.is_on() {
            format!("{host}:{port}")
        } else {
            addr.to_string()
        });
    }
    let proxy = if guard.is_on() {
        let p = GuardProxy::start(guard.clone(), timeout)
            .await
            .map_err(|e| PublishResult::failed("kafka_error", format!("cannot start the SSRF guard's proxy: {e}")))?;
        Some(p)
    } else {
        None
    };
    let credentials = Credentials::new(key.username.clone(), key.password.clone());
    let sasl = match key.mechanism.as_str() {
        "scram-sha-256" => SaslConfig::ScramSha256(credentials),
        "scram-sha-512" => SaslConfig::ScramSha512(credentials),
        _ => SaslConfig::Plain(credentials),
    };
    // The library retries on its own until this deadline; past it the
    // attempt fails and the delivery schedule takes over.
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(timeout / 2),
    };
    let mut builder = ClientBuilder::new(bootstrap)
        .client_id("outrider")
        .backoff_config(backoff)
        .sasl_config(sasl);
    if key.tls {
        builder = builder.tls_config(tls.clone());
    }
    if let Some(p) = &proxy {
        builder = builder.socks5_proxy(p.addr().to_string());
    }
    let client = builder.build().await.map_err(|e| classify(&e, proxy.as_ref()))?;
    Ok(Link {
        client,
        topics: tokio::sync::Mutex::new(HashMap::new()),
        proxy,
    })
}

impl Link {
    /// The partition clients of `topic`, one per partition in id order.
    async fn partitions(&self, topic: &str) -> Result<Rc<Vec<PartitionClient>>, rskafka::client::error::Error> {
        let mut topics = self.topics.lock().await;
        if let Some(p) = topics.get(topic) {
            return Ok(p.clone());
        }
        let listed = self.client.list_topics().await?;
        let Some(t) = listed.into_iter().find(|t| t.name == topic) else {
            return Err(rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::UnknownTopicOrPartition,
                error_message: Some(format!("the cluster has no topic {topic:?}")),
                request: rskafka::client::error::RequestContext::Topic(topic.to_string()),
                response: None,
                is_virtual: true,
            });
        };
        let mut clients = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            clients.push(
                self.client
                    .partition_client(topic, p, UnknownTopicHandling::Error)
                    .await?,
            );
        }
        let clients = Rc::new(clients);
        topics.insert(topic.to_string(), clients.clone());
        Ok(clients)
    }
}

impl KafkaPublisher {
    fn record(&self, event: &Event, now_ms: i64) -> Result<Record, String> {
        let meta = merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms);
        // The data is parsed only when a template has to look into it.
        let key = match &self.partition_key {
            None => None,
            Some(t) => {
                let data: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
                t.key(&json!({ "metadata": &meta, "data": data }))
            }
        };
        let mut headers: BTreeMap<String, Vec<u8>> =
            meta.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
        headers.insert("content-type".into(), b"application/json".to_vec());
        Ok(Record {
            key: Some(key.unwrap_or_else(|| event.id.clone()).into_bytes()),
            value: Some(event.data.as_bytes().to_vec()),
            headers,
            timestamp: chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default(),
        })
    }
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let record = match self.record(event, now_ms) {
                Ok(r) => r,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let link: Rc<Link> = match clients
                .kafka
                .get(&self.lane.0, || {
                    connect(&self.lane.0, &clients.guard, &self.tls, self.timeout)
                })
                .await
            {
                Ok(l) => l,
                Err(r) => return r,
            };
            let partitions = match link.partitions(&self.lane.1).await {
                Ok(p) => p,
                Err(e) => {
                    clients.kafka.discard(&self.lane.0, &link);
                    return classify(&e, link.proxy.as_ref());
                }
            };
            if partitions.is_empty() {
                return PublishResult::failed("topic_not_found", format!("topic {:?} has no partitions", self.lane.1));
            }
            let p = &partitions[partition_for(record.key.as_deref().unwrap_or_default(), partitions.len())];
            let size = record.approximate_size();
            let lane = (self.lane.clone(), p.partition());
            let send = |records: Vec<Item>| async move {
                let n = records.len();
                match p.produce(records, Compression::NoCompression).await {
                    // One offset per record, in order.
                    Ok(offsets) => (0..n)
                        .map(|i| match offsets.get(i) {
                            Some(o) => PublishResult::success("OK", json!({ "partition": p.partition(), "offset": o })),
                            None => {
                                PublishResult::failed("kafka_error", "the broker answered no offset for this record")
                            }
                        })
                        .collect(),
                    Err(e) => {
                        // The next attempt starts from fresh metadata and connections.
                        clients.kafka.discard(&self.lane.0, &link);
                        vec![classify(&e, link.proxy.as_ref()); n]
                    }
                }
            };
            clients.kafka_batches.submit(&lane, record, size, LIMITS, send).await
        })
    }
}

/// One record of a produce request.
pub type Item = Record;

/// A produce request's record batch must fit the broker's
/// `message.max.bytes` (1 MB by default); the encoding adds a little per
/// record beyond the key, value and headers counted here.
const LIMITS: batch::Limits = batch::Limits {
    max_items: 1000,
    max_bytes: 900 * 1024,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_the_fnv1a_hash_balancer() {
        // FNV-1a 32 test vectors: "" = 0x811c9dc5, "a" = 0xe40c292c,
        // "foobar" = 0xbf9cf968.
        assert_eq!(
            partition_for(b"", 7),
            (0x811c_9dc5_u32 as i32 % 7).unsigned_abs() as usize
        );
        assert_eq!(
            partition_for(b"a", 10),
            (0xe40c_292c_u32 as i32 % 10).unsigned_abs() as usize
        );
        assert_eq!(
            partition_for(b"foobar", 3),
            (0xbf9c_f968_u32 as i32 % 3).unsigned_abs() as usize
        );
        // Negative as i32: the sign is dropped, not wrapped.
        assert_eq!(0xe40c_292c_u32 as i32 % 10, -6);
        assert_eq!(partition_for(b"a", 10), 6);
        assert_eq!(partition_for(b"anything", 1), 0);
    }

    #[test]
    fn brokers_and_validation() {
        assert_eq!(
            parse_brokers(" b1:9092 , b2:9093"),
            Some(vec![("b1".into(), 9092), ("b2".into(), 9093)])
        );
        assert_eq!(parse_brokers("b1"), None);
        assert_eq!(parse_brokers(" , "), None);
        let d = test_destination(
            "kafka",
            &[
                ("brokers", "b1:x"),
                ("topic", "t"),
                ("sasl_mechanism", "gssapi"),
                ("partition_key_template", "a.["),
            ],
            &[("username", "u")],
        );
        assert_eq!(
            Kafka.validate(&d).unwrap_err(),
            vec![
                "config.sasl_mechanism is invalid",
                "credentials.password is required",
                "config.brokers is invalid",
                "config.partition_key_template is invalid",
            ]
        );
        let mut d = test_destination(
            "kafka",
            &[
                ("brokers", " b1:9092, b2:9092 "),
                ("topic", "events"),
                ("sasl_mechanism", "scram-sha-512"),
            ],
            &[("username", "u"), ("password", "p")],
        );
        Kafka
            .preprocess(&mut d, None, &RawInput::default(), Actor::Admin, 0)
            .unwrap();
        assert_eq!(d.config["brokers"], "b1:9092,b2:9092");
        assert_eq!(
            d.config["tls"], "false",
            "omitted tls is stored as false, as Outpost does"
        );
        assert!(Kafka.validate(&d).is_ok());
        assert_eq!(Kafka.target(&d).0, "b1:9092 / events");
    }

    #[test]
    fn records() {
        let d = test_destination(
            "kafka",
            &[
                ("brokers", "b:9092"),
                ("topic", "t"),
                ("sasl_mechanism", "plain"),
                ("partition_key_template", "data.customer"),
            ],
            &[("username", "u"), ("password", "p")],
        );
        let ctx = PublishContext::for_tests();
        let p = KafkaPublisher {
            lane: Arc::new((
                Key {
                    brokers: vec![],
                    tls: false,
                    mechanism: "plain".into(),
                    username: String::new(),
                    password: String::new(),
                },
                "t".into(),
            )),
            partition_key: Some(Template::compile(&d.config["partition_key_template"]).unwrap()),
            delivery_metadata: None,
            include_ms: false,
            tls: ctx.broker_tls.clone(),
            timeout: Duration::from_secs(5),
        };
        let mut e = Event::for_tests("e1", "orders", r#"{"customer":"c9"}"#);
        e.metadata.insert("source".into(), "s".into());
        let r = p.record(&e, 1_704_067_200_000).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"c9"[..]));
        assert_eq!(r.value.as_deref(), Some(&br#"{"customer":"c9"}"#[..]));
        assert_eq!(r.headers["content-type"], b"application/json");
        assert_eq!(r.headers["event-id"], b"e1");
        assert_eq!(r.headers["topic"], b"orders");
        // Outpost's system metadata: RFC3339 seconds of the delivery time.
        assert_eq!(r.headers["timestamp"], b"2024-01-01T00:00:00Z");
        assert_eq!(r.headers["source"], b"s");
        let e = Event::for_tests("e2", "orders", r#"{"other":1}"#);
        assert_eq!(
            p.record(&e, 0).unwrap().key.as_deref(),
            Some(&b"e2"[..]),
            "falls back to the event id"
        );
    }
}
