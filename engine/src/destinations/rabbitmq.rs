//! The `rabbitmq` destination type: each event is published to the
//! destination's exchange with the event topic as the routing key, the data
//! as the body and the delivery metadata as AMQP headers. Unlike Outpost,
//! publishes are persistent and wait for the broker's confirm, so a success
//! means the broker has taken the message.

use std::rc::Rc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::publisher_confirm::Confirmation;
use lapin::tcp::{HandshakeResult, TLSConfig, TcpStream};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use serde_json::json;

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text(
        "server_url",
        "Server address",
        "The broker's host and port, e.g. mq.example.com:5672 (add /vhost for a virtual host).",
    )
    .required()
    .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text(
        "exchange",
        "Exchange",
        "The exchange each event is published to; empty means the default exchange.",
    ),
    Field::text("tls", "TLS", "Connect over TLS (amqps).").checkbox("on"),
];
const CREDENTIALS: &[Field] = &[
    Field::text("username", "Username", "The user to connect as.").required(),
    Field::text("password", "Password", "That user's password.")
        .required()
        .sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "rabbitmq",
    label: "RabbitMQ",
    description: "Publish each event to a RabbitMQ exchange, routed by its topic.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\"><rect x=\"4\" y=\"4\" width=\"16\" height=\"16\" rx=\"3\"/><path d=\"M9 4v7h6V4\"/></svg>",
    instructions: "Create the exchange first (a `topic` exchange lets consumers bind queues to topic patterns such as `orders.*`). Each message carries the event data as its JSON body, the event topic as its routing key, and `event-id`, `topic`, `timestamp` plus the event metadata as headers. Publishes are persistent and confirmed by the broker.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct RabbitMq;

/// Where a destination connects: destinations with equal keys on one shard
/// share one connection.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    tls: bool,
    host: String,
    port: u16,
    vhost: String,
    username: String,
    password: String,
}

/// One connection and its confirm-mode channel.
pub struct Link {
    _conn: Connection,
    channel: Channel,
}

/// `host[:port][/vhost]`; the vhost is percent-decoded, `/` by default.
fn parse_server(server_url: &str, tls: bool) -> Option<(String, u16, String)> {
    let (authority, vhost) = match server_url.split_once('/') {
        Some((a, v)) => (a, percent_decode(v)?),
        None => (server_url, "/".to_string()),
    };
    if authority.contains('@') || server_url.contains("://") {
        return None;
    }
    let (host, port) = clients::host_port(authority, if tls { 5671 } else { 5672 })?;
    Some((host, port, vhost))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl DestinationType for RabbitMq {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(s) = d
            .config
            .get("server_url")
            .filter(|s| fields::no_whitespace(s) && !s.is_empty())
        {
            if parse_server(s, fields::flag(&d.config, "tls")).is_none() {
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
        let exchange = d.config.get("exchange").map(String::as_str).unwrap_or("");
        (format!("{exchange} -> {}", d.topics.join(", ")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let tls = fields::flag(&d.config, "tls");
        let server = d
            .config
            .get("server_url")
            .ok_or(PublisherError::Missing("config.server_url"))?;
        let (host, port, vhost) = parse_server(server, tls).ok_or(PublisherError::Invalid("config.server_url"))?;
        let cred = |k: &str| d.credentials.get(k).cloned().unwrap_or_default();
        Ok(Box::new(RabbitPublisher {
            key: Key {
                tls,
                host,
                port,
                vhost,
                username: cred("username"),
                password: cred("password"),
            },
            exchange: d.config.get("exchange").cloned().unwrap_or_default(),
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            timeout: ctx.config.delivery_timeout_for("rabbitmq"),
            ca: ctx.broker_ca_pem.clone(),
        }))
    }
}

pub struct RabbitPublisher {
    key: Key,
    exchange: String,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    /// Bounds connecting as well as each attempt.
    timeout: Duration,
    /// PEM roots trusted besides the Mozilla ones.
    ca: Option<Arc<str>>,
}

/// Why a connection could not be opened, as an attempt result.
fn connect_failed(e: &lapin::Error) -> PublishResult {
    match e.kind() {
        ErrorKind::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)) => {
            PublishResult::permanent("auth_failed", format!("the broker refused the credentials: {e}"))
        }
        _ => classify(e),
    }
}

/// Outpost's RabbitMQ error codes.
fn classify(e: &lapin::Error) -> PublishResult {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => PublishResult::permanent("access_denied", text),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => PublishResult::failed("exchange_not_found", text),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => PublishResult::failed("connection_forced", text),
            AMQPErrorKind::Hard(AMQPHardError::CHANNELERROR) => PublishResult::failed("channel_error", text),
            _ => PublishResult::failed("rabbitmq_error", text),
        },
        ErrorKind::IOError(io) => PublishResult::failed(io_code(io), text),
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidConnectionState(_) => {
            PublishResult::failed("channel_error", text)
        }
        _ => PublishResult::failed("rabbitmq_error", text),
    }
}

fn io_code(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection_refused",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => "connection_reset",
        K::TimedOut => "timeout",
        _ => {
            let t = e.to_string().to_ascii_lowercase();
            if t.contains("certificate") || t.contains("tls") {
                "tls_error"
            } else if t.contains("lookup") || t.contains("resolve") || t.contains("dns") {
                "dns_error"
            } else {
                "rabbitmq_error"
            }
        }
    }
}

async fn open(
    key: &Key,
    guard: &crate::ssrf::Guard,
    timeout: Duration,
    ca: Option<Arc<str>>,
) -> Result<Link, PublishResult> {
    let addr = clients::checked_target(&key.host, key.port, guard).await?;
    let uri = AMQPUri {
        scheme: if key.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: key.username.clone(),
                password: key.password.clone(),
            },
            host: key.host.clone(),
            port: key.port,
        },
        vhost: key.vhost.clone(),
        query: AMQPQueryString {
            connection_timeout: Some(timeout.as_millis() as u64),
            ..Default::default()
        },
    };
    // The socket goes to the address the guard checked (lapin would look
    // the name up again); TLS still checks the certificate against the name,
    // with the operator's CA (`OUTRIDER_DESTINATIONS_TLS_CA_FILE`) trusted too.
    let name = key.host.trim_start_matches('[').trim_end_matches(']').to_string();
    // The error type is lapin's own: its connector takes this signature.
    #[allow(clippy::result_large_err)]
    let connect = Box::new(move |uri: &AMQPUri| -> HandshakeResult {
        let tcp = TcpStream::connect_timeout(addr, timeout)?;
        let tcp = match uri.scheme {
            AMQPScheme::AMQP => tcp,
            AMQPScheme::AMQPS => tcp.into_tls(
                &name,
                TLSConfig {
                    identity: None,
                    cert_chain: ca.as_deref(),
                },
            )?,
        };
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    });
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let conn = Connection::connector(uri, connect, props)
        .await
        .map_err(|e| connect_failed(&e))?;
    let channel = conn.create_channel().await.map_err(|e| classify(&e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| classify(&e))?;
    Ok(Link { _conn: conn, channel })
}

impl RabbitPublisher {
    async fn send(&self, link: &Link, headers: FieldTable, data: &[u8], topic: &str) -> Result<(), lapin::Error> {
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = link
            .channel
            .basic_publish(&self.exchange, topic, BasicPublishOptions::default(), data, props)
            .await?;
        match confirm.await? {
            Confirmation::Nack(_) => Err(lapin::Error::from(ErrorKind::ProtocolError(
                lapin::protocol::AMQPError::new(
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                    ShortString::from("the broker refused the message (nack)"),
                ),
            ))),
            _ => Ok(()),
        }
    }
}

impl Publisher for RabbitPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let mut headers = FieldTable::default();
            for (k, v) in merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms).iter() {
                headers.insert(
                    ShortString::from(k.as_str()),
                    AMQPValue::LongString(LongString::from(v.as_str())),
                );
            }
            // A pooled connection may have died since its last use: one more
            // try on a fresh one before the attempt counts as failed.
            for fresh in [false, true] {
                let link: Rc<Link> = match clients
                    .amqp
                    .get(&self.key, || {
                        open(&self.key, &clients.guard, self.timeout, self.ca.clone())
                    })
                    .await
                {
                    Ok(l) => l,
                    Err(r) => return r,
                };
                let stale = !link.channel.status().connected();
                let sent = if stale {
                    None
                } else {
                    Some(
                        self.send(&link, headers.clone(), event.data.as_bytes(), &event.topic)
                            .await,
                    )
                };
                match sent {
                    Some(Ok(())) => return PublishResult::success("OK", json!({})),
                    Some(Err(e)) => {
                        clients.amqp.discard(&self.key, &link);
                        let closed = matches!(
                            e.kind(),
                            ErrorKind::InvalidChannelState(..)
                                | ErrorKind::InvalidConnectionState(_)
                                | ErrorKind::IOError(_)
                        );
                        if fresh || !closed {
                            return classify(&e);
                        }
                    }
                    None => clients.amqp.discard(&self.key, &link),
                }
            }
            PublishResult::failed("channel_error", "the connection to the broker closed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server("mq.example:5673", false),
            Some(("mq.example".into(), 5673, "/".into()))
        );
        assert_eq!(
            parse_server("mq.example", true),
            Some(("mq.example".into(), 5671, "/".into()))
        );
        assert_eq!(
            parse_server("mq.example:5672/prod%2Fa", false),
            Some(("mq.example".into(), 5672, "prod/a".into()))
        );
        assert_eq!(parse_server("amqp://mq.example", false), None);
        assert_eq!(parse_server("u:p@mq.example", false), None);
    }
}
