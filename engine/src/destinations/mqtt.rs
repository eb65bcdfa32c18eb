//! The `mqtt` destination type (ours): each event is published with QoS 1
//! (MQTT 5) to the destination's topic, the data as the payload
//! (`content-type: application/json`) and the merged metadata as user
//! properties. An attempt succeeds only when the broker's PUBACK for that
//! very packet arrives with a success reason.
//!
//! One connection per (broker, credentials) on a shard: its event loop runs
//! as a task on the shard and matches each PUBACK to the attempt waiting for
//! it. Publishes enter the client's queue without waiting (`try_publish`), so
//! the order they enter equals the order the event loop assigns packet ids,
//! which is how an outgoing packet id is matched to its attempt.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde_json::json;
use tokio::sync::oneshot;

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text(
        "server_url",
        "Broker",
        "The broker's host and port, e.g. mqtt.example.com:1883.",
    )
    .required()
    .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text("topic", "Topic", "The MQTT topic each event is published to.")
        .required()
        .pattern("^[^\\s+#]+$", mqtt_topic_ok),
    Field::text("tls", "TLS", "Connect over TLS (usually port 8883).").checkbox("off"),
];
const CREDENTIALS: &[Field] = &[
    Field::text("username", "Username", "The user, if the broker requires one."),
    Field::text("password", "Password", "That user's password.").sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "mqtt",
    label: "MQTT",
    description: "Publish each event to an MQTT 5 broker with QoS 1 (acknowledged).",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\"><rect width=\"24\" height=\"24\" rx=\"4\" fill=\"#660066\"/><path d=\"M5 19a14 14 0 0 1 14-14M5 14a9 9 0 0 1 9-9M5 9a4 4 0 0 1 4-4\" stroke=\"#fff\" stroke-width=\"2\" fill=\"none\"/></svg>",
    instructions: "Give the broker's address (MQTT 5) and a topic without wildcards. Each event is published with QoS 1 and counts as delivered when the broker acknowledges it. The payload is the event data; `event-id`, `topic`, `timestamp` and the event's metadata are MQTT 5 user properties.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

/// A topic to publish to: no wildcards, not empty.
fn mqtt_topic_ok(v: &str) -> bool {
    !v.is_empty() && !v.contains(['+', '#']) && fields::no_whitespace(v)
}

pub struct Mqtt;

/// Where and as whom a destination connects; equal keys share a connection on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
}

type Waiter = oneshot::Sender<Result<(), PublishResult>>;

#[derive(Default)]
struct Pending {
    /// Handed to the client, packet id not yet known (in queue order).
    queued: VecDeque<Waiter>,
    /// Written, waiting for the PUBACK.
    inflight: HashMap<u16, Waiter>,
    dead: bool,
}

impl Pending {
    fn fail_all(&mut self, why: &PublishResult) {
        self.dead = true;
        for w in self.queued.drain(..).chain(self.inflight.drain().map(|(_, w)| w)) {
            let _ = w.send(Err(why.clone()));
        }
    }
}

/// One broker connection and the attempts waiting on it.
pub struct Link {
    client: AsyncClient,
    pending: Rc<RefCell<Pending>>,
    /// The guard's hop the connection goes through (TLS with the guard on).
    _hop: Option<crate::ssrf::socks::GuardProxy>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the event-loop task once the pool let go of the connection.
        let _ = self.client.try_disconnect();
    }
}

impl DestinationType for Mqtt {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(a) = d
            .config
            .get("server_url")
            .filter(|a| !a.is_empty() && fields::no_whitespace(a))
        {
            if a.contains("://") || clients::host_port(a, 1883).is_none() {
                errs.push("config.server_url is invalid".into());
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
        fields::normalise_flag(&mut d.config, "tls")
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        (format!("{} on {}", get("topic"), get("server_url")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let server = d
            .config
            .get("server_url")
            .ok_or(PublisherError::Missing("config.server_url"))?;
        let tls = fields::flag(&d.config, "tls");
        let (host, port) = clients::host_port(server, if tls { 8883 } else { 1883 })
            .ok_or(PublisherError::Invalid("config.server_url"))?;
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Box::new(MqttPublisher {
            tls: ctx.broker_tls.clone(),
            key: Key {
                tls,
                host,
                port,
                username: cred("username"),
                password: cred("password"),
            },
            topic: d
                .config
                .get("topic")
                .cloned()
                .ok_or(PublisherError::Missing("config.topic"))?,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
        }))
    }
}

pub struct MqttPublisher {
    key: Key,
    /// The Mozilla roots plus `OUTRIDER_DESTINATIONS_TLS_CA_FILE`.
    tls: Arc<rustls::ClientConfig>,
    topic: String,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
}

fn connection_failed(e: &ConnectionError) -> PublishResult {
    let text = e.to_string();
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => PublishResult::permanent("auth_failed", text),
        ConnectionError::ConnectionRefused(_) => PublishResult::failed("connection_refused", text),
        ConnectionError::Timeout(_) => PublishResult::failed("timeout", text),
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            PublishResult::failed("connection_refused", text)
        }
        ConnectionError::Io(_) => PublishResult::failed("connection_reset", text),
        ConnectionError::Tls(_) => PublishResult::failed("tls_error", text),
        _ => PublishResult::failed("mqtt_error", text),
    }
}

/// Connects (waiting for the CONNACK), then leaves the event loop running on the shard.
async fn open(key: &Key, guard: &crate::ssrf::Guard, tls: &Arc<rustls::ClientConfig>) -> Result<Link, PublishResult> {
    let addr = clients::checked_target(&key.host, key.port, guard).await?;
    // Plain TCP goes to the checked address. TLS needs the name for the
    // certificate and SNI, and the library would look it up again: with the
    // guard on, it goes through the guard's hop (HTTP CONNECT to the name,
    // resolved, checked and connected there).
    let host = if key.tls {
        key.host.clone()
    } else {
        addr.ip().to_string()
    };
    let hop = if key.tls && guard.is_on() {
        let h = crate::ssrf::socks::GuardProxy::start(guard.clone(), Duration::from_secs(5))
            .await
            .map_err(|e| PublishResult::failed("mqtt_error", format!("cannot start the SSRF guard's proxy: {e}")))?;
        Some(h)
    } else {
        None
    };
    let client_id = format!("outrider-{}", uuid::Uuid::new_v4().simple());
    let mut opts = MqttOptions::new(client_id, host, key.port);
    if let Some(h) = &hop {
        opts.set_proxy(rumqttc::Proxy {
            ty: rumqttc::ProxyType::Http,
            auth: rumqttc::ProxyAuth::None,
            addr: h.addr().ip().to_string(),
            port: h.addr().port(),
        });
    }
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true)
        .set_connection_timeout(5);
    if key.tls {
        let mut tls = (**tls).clone();
        tls.alpn_protocols.clear();
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    if let Some(u) = &key.username {
        opts.set_credentials(u.clone(), key.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(opts, 1024);
    loop {
        match events.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => {
                // The hop refused the broker's address: say so, as Kafka does.
                if let Some(why) = hop.as_ref().and_then(|h| h.last_refusal()) {
                    return Err(PublishResult::error("forbidden", why));
                }
                return Err(connection_failed(&e));
            }
        }
    }
    let pending = Rc::new(RefCell::new(Pending::default()));
    tokio::task::spawn_local(drive(events, pending.clone()));
    Ok(Link {
        client,
        pending,
        _hop: hop,
    })
}

/// The connection's event loop: packet ids to attempts, PUBACKs to outcomes.
async fn drive(mut events: EventLoop, pending: Rc<RefCell<Pending>>) {
    loop {
        match events.poll().await {
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                let mut p = pending.borrow_mut();
                if let Some(w) = p.queued.pop_front() {
                    p.inflight.insert(pkid, w);
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                if let Some(w) = pending.borrow_mut().inflight.remove(&ack.pkid) {
                    let outcome = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        PubAckReason::NotAuthorized => Err(PublishResult::permanent(
                            "access_denied",
                            "the broker refused the publish (not authorized)",
                        )),
                        other => Err(PublishResult::failed("mqtt_error", format!("PUBACK {other:?}"))),
                    };
                    let _ = w.send(outcome);
                }
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                let why = PublishResult::failed(
                    "connection_reset",
                    format!("the broker disconnected: {:?}", d.reason_code),
                );
                pending.borrow_mut().fail_all(&why);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                pending.borrow_mut().fail_all(&connection_failed(&e));
                return;
            }
        }
    }
}

impl Publisher for MqttPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let props = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            };
            let payload = Bytes::copy_from_slice(event.data.as_bytes());
            for fresh in [false, true] {
                let link: Rc<Link> = match clients
                    .mqtt
                    .get(&self.key, || open(&self.key, &clients.guard, &self.tls))
                    .await
                {
                    Ok(l) => l,
                    Err(r) => return r,
                };
                if link.pending.borrow().dead {
                    clients.mqtt.discard(&self.key, &link);
                    if fresh {
                        return PublishResult::failed("connection_reset", "the connection to the broker closed");
                    }
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                link.pending.borrow_mut().queued.push_back(tx);
                if let Err(e) = link.client.try_publish_with_properties(
                    self.topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                    props.clone(),
                ) {
                    // Not queued: take the waiter back out (it is the newest).
                    link.pending.borrow_mut().queued.pop_back();
                    return PublishResult::failed("mqtt_error", format!("the publish was not queued: {e}"));
                }
                return match rx.await {
                    Ok(Ok(())) => PublishResult::success("OK", json!({ "topic": self.topic })),
                    Ok(Err(r)) => {
                        if link.pending.borrow().dead {
                            clients.mqtt.discard(&self.key, &link);
                        }
                        r
                    }
                    Err(_) => PublishResult::failed("connection_reset", "the connection to the broker closed"),
                };
            }
            PublishResult::failed("connection_reset", "the connection to the broker closed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let d = test_destination(
            "mqtt",
            &[("server_url", "mqtt.example:1883"), ("topic", "events/orders")],
            &[],
        );
        assert!(Mqtt.validate(&d).is_ok());
        assert_eq!(Mqtt.target(&d).0, "events/orders on mqtt.example:1883");
        let d = test_destination("mqtt", &[("server_url", "mqtt://x"), ("topic", "events/#")], &[]);
        assert_eq!(
            Mqtt.validate(&d).unwrap_err(),
            vec!["config.topic failed pattern validation", "config.server_url is invalid"]
        );
    }
}
