//! The `azure_servicebus` destination type: each event is one AMQP 1.0
//! message to the queue or topic `name`: body = the event data (a binary
//! data section), application properties = the delivery metadata. The
//! client authenticates as Service Bus expects: SASL ANONYMOUS, then a
//! shared-access-signature token put on the `$cbs` node for the entity
//! (claims-based security), renewed before it expires. A success is the
//! broker's `accepted` outcome for that message.
//!
//! Connection strings name the namespace (`Endpoint=sb://<host>/`) and
//! either a key (`SharedAccessKeyName` + `SharedAccessKey`, tokens made
//! here) or a ready token (`SharedAccessSignature`). `UseDevelopmentEmulator=true`
//! (the Service Bus emulator) connects without TLS to port 5672; otherwise TLS
//! on 5671 with the certificate checked against the host name.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Outcome};
use fe2o3_amqp::types::primitives::{Binary, Timestamp};
use fe2o3_amqp::{Connection, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::fields::{self, Field, Schema};
use super::*;

fn name_ok(v: &str) -> bool {
    let b = v.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    !b.is_empty() && b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric() && b.iter().all(inner)
}

const CONFIG: &[Field] = &[Field::text(
    "name",
    "Queue or Topic Name",
    "The Service Bus queue or topic each event is sent to.",
)
.required()
.pattern("^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?$", name_ok)];
const CREDENTIALS: &[Field] = &[Field::text(
    "connection_string",
    "Connection String",
    "A connection string of the namespace (or the entity) with the Send right.",
)
.required()
.sensitive()];

const SCHEMA: Schema = Schema {
    kind: "azure_servicebus",
    label: "Azure Service Bus",
    description: "Send each event as a message to an Azure Service Bus queue or topic.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\"><rect x=\"3\" y=\"6\" width=\"18\" height=\"12\" rx=\"2\"/><path d=\"M7 10h10M7 14h6\"/></svg>",
    instructions: "Create the queue or topic, then a shared access policy with the Send right (on the namespace or on the entity) and paste its connection string. Each message's body is the event data and its application properties are `event-id`, `topic`, `timestamp` plus the event metadata. Subscriptions of a topic can filter on those properties.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct AzureServiceBus;

/// How a connection string authorises: a key to sign tokens with, or a
/// ready-made token.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Auth {
    Key { name: String, key: String },
    Token(String),
}

/// Where a destination connects: destinations with equal keys on one shard
/// share one connection (one sender link per entity on it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    host: String,
    port: u16,
    tls: bool,
    auth: Auth,
}

/// A parsed connection string.
fn parse_connection_string(s: &str) -> Result<Key, &'static str> {
    let mut endpoint = None;
    let (mut key_name, mut key, mut sas, mut emulator) = (None, None, None, false);
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err("is not a list of Key=Value pairs");
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "endpoint" => endpoint = Some(v.trim()),
            "sharedaccesskeyname" => key_name = Some(v.trim()),
            // The key may end in `=` (base64): everything after the first `=`.
            "sharedaccesskey" => key = Some(v.trim()),
            "sharedaccesssignature" => sas = Some(v.trim()),
            "usedevelopmentemulator" => emulator = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let endpoint = endpoint.ok_or("has no Endpoint")?;
    let authority = endpoint
        .strip_prefix("sb://")
        .ok_or("Endpoint must start with sb://")?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err("Endpoint must be sb://<host>/");
    }
    let tls = !emulator;
    let (host, port) =
        clients::host_port(authority, if tls { 5671 } else { 5672 }).ok_or("Endpoint has an invalid host")?;
    let auth = match (key_name, key, sas) {
        (_, _, Some(t)) if !t.is_empty() => Auth::Token(t.to_string()),
        (Some(n), Some(k), _) if !n.is_empty() && !k.is_empty() => Auth::Key {
            name: n.to_string(),
            key: k.to_string(),
        },
        _ => return Err("needs SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature"),
    };
    Ok(Key { host, port, tls, auth })
}

/// URL query escaping as Go's `url.QueryEscape` does it (space as `+`).
fn query_escape(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A shared access signature for `audience`, valid until `expiry` (Unix
/// seconds): HMAC-SHA256, keyed by the key's text, of the escaped audience,
/// a newline and the expiry.
pub fn sas_token(audience: &str, key_name: &str, key: &str, expiry: i64) -> String {
    let resource = query_escape(audience);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{resource}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={}",
        query_escape(&sig),
        query_escape(key_name)
    )
}

/// Tokens made here are valid this long and renewed when a quarter is left.
const TOKEN_LIFETIME_S: i64 = 3600;
const TOKEN_RENEW_S: i64 = TOKEN_LIFETIME_S / 4;

/// One sender link and until when its entity's token is good.
struct EntityLink {
    sender: tokio::sync::Mutex<Sender>,
    authorised_until: Cell<i64>,
}

/// A connection, its session, its CBS client and the entity senders on it.
pub struct Link {
    _conn: ConnectionHandle<()>,
    session: tokio::sync::Mutex<SessionHandle<()>>,
    cbs: tokio::sync::Mutex<CbsClient>,
    entities: RefCell<HashMap<String, Rc<EntityLink>>>,
}

impl DestinationType for AzureServiceBus {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(cs) = d.credentials.get("connection_string").filter(|c| !c.is_empty()) {
            if parse_connection_string(cs).is_err() {
                errs.push("credentials.connection_string is invalid".into());
            }
        }
        fields::result(errs)
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let name = d.config.get("name").map(String::as_str).unwrap_or("");
        let namespace = d
            .credentials
            .get("connection_string")
            .and_then(|cs| parse_connection_string(cs).ok())
            .map(|k| k.host.split('.').next().unwrap_or("").to_string())
            .unwrap_or_default();
        (format!("{namespace}/{name}"), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let cs = d
            .credentials
            .get("connection_string")
            .ok_or(PublisherError::Missing("credentials.connection_string"))?;
        let key = parse_connection_string(cs).map_err(|why| PublisherError::Unusable {
            field: "credentials.connection_string",
            why,
        })?;
        let entity = d
            .config
            .get("name")
            .filter(|n| !n.is_empty())
            .cloned()
            .ok_or(PublisherError::Missing("config.name"))?;
        Ok(Box::new(ServiceBusPublisher {
            key,
            entity,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            timeout: ctx.config.delivery_timeout_for("azure_servicebus"),
            tls: ctx.broker_tls.clone(),
        }))
    }
}

pub struct ServiceBusPublisher {
    key: Key,
    entity: String,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    /// Bounds connecting as well as each attempt.
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

fn failed_text(code: &str, what: &str, e: impl std::fmt::Display) -> PublishResult {
    PublishResult::error(code, format!("{what}: {e}"))
}

async fn connect(
    key: &Key,
    guard: &crate::ssrf::Guard,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Link, PublishResult> {
    let addr = clients::checked_target(&key.host, key.port, guard).await?;
    // Connect to the checked address; TLS still checks the host's name.
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| PublishResult::failed("timeout", format!("connecting to {addr} timed out")))?
        .map_err(|e| failed_text(clients::network_code(&e.to_string()), "connect", e))?;
    let _ = tcp.set_nodelay(true);
    let builder = Connection::builder()
        .container_id(format!("outrider-{}", uuid::Uuid::new_v4().simple()))
        .hostname(key.host.as_str())
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Anonymous);
    let conn = if key.tls {
        let name = rustls::pki_types::ServerName::try_from(key.host.clone())
            .map_err(|e| PublishResult::failed("tls_error", e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| failed_text("tls_error", "TLS handshake", e))?;
        builder.open_with_stream(stream).await
    } else {
        builder.open_with_stream(tcp).await
    };
    let mut conn = conn.map_err(|e| failed_text(clients::network_code(&e.to_string()), "AMQP open", e))?;
    let mut session = Session::begin(&mut conn)
        .await
        .map_err(|e| failed_text("servicebus_error", "AMQP begin", e))?;
    let cbs = CbsClient::attach(&mut session)
        .await
        .map_err(|e| failed_text("servicebus_error", "attaching to $cbs", e))?;
    Ok(Link {
        _conn: conn,
        session: tokio::sync::Mutex::new(session),
        cbs: tokio::sync::Mutex::new(cbs),
        entities: RefCell::new(HashMap::new()),
    })
}

/// A failure's code from the AMQP error condition it names (Service Bus
/// names the condition; the library gives it only inside its error).
fn condition_code(text: &str) -> &'static str {
    if text.contains("UnauthorizedAccess") || text.contains("unauthorized-access") {
        "auth_failed"
    } else if text.contains("NotFound") || text.contains("not-found") {
        "entity_not_found"
    } else if text.contains("MessageSizeExceeded") || text.contains("message-size-exceeded") {
        "message_too_large"
    } else {
        "servicebus_error"
    }
}

/// A CBS refusal as an attempt result: 401/403 are the owner's to fix.
fn cbs_failed(e: fe2o3_amqp_management::error::Error) -> PublishResult {
    use fe2o3_amqp_management::error::Error as E;
    match &e {
        E::Status(s) => {
            let code = match s.code.0.get() {
                401 => "auth_failed",
                403 => "access_denied",
                404 => "entity_not_found",
                _ => "servicebus_error",
            };
            let text = format!(
                "the broker refused the token ({}): {}",
                s.code.0,
                s.description.as_deref().unwrap_or("")
            );
            PublishResult::error(code, text)
        }
        _ => PublishResult::failed("servicebus_error", format!("put-token: {e}")),
    }
}

impl ServiceBusPublisher {
    /// `amqp://<host>/<entity>`: what the token is for.
    fn audience(&self) -> String {
        format!("amqp://{}/{}", self.key.host, self.entity)
    }

    /// Puts a token for the entity on `$cbs`; returns until when it is good.
    async fn authorise(&self, link: &Link, now_s: i64) -> Result<i64, PublishResult> {
        let audience = self.audience();
        let (token, until) = match &self.key.auth {
            Auth::Key { name, key } => {
                let until = now_s + TOKEN_LIFETIME_S;
                (sas_token(&audience, name, key, until), until)
            }
            // A ready token's expiry is its owner's business: it is put once
            // per hour like ours, and the broker refuses it once it expired.
            Auth::Token(t) => (t.clone(), now_s + TOKEN_LIFETIME_S),
        };
        let expires = Timestamp::from_milliseconds(until * 1000);
        let cbs_token = CbsToken::new(token, "servicebus.windows.net:sastoken", Some(expires));
        link.cbs
            .lock()
            .await
            .put_token(audience, cbs_token)
            .await
            .map_err(cbs_failed)?;
        Ok(until)
    }

    async fn entity_link(&self, link: &Link, now_s: i64) -> Result<Rc<EntityLink>, PublishResult> {
        let existing = link.entities.borrow().get(&self.entity).cloned();
        if let Some(e) = existing {
            if e.authorised_until.get() - now_s < TOKEN_RENEW_S {
                e.authorised_until.set(self.authorise(link, now_s).await?);
            }
            return Ok(e);
        }
        let until = self.authorise(link, now_s).await?;
        let sender = {
            let mut session = link.session.lock().await;
            Sender::attach(
                &mut *session,
                format!("outrider-{}-{}", self.entity, uuid::Uuid::new_v4().simple()),
                self.entity.as_str(),
            )
            .await
            .map_err(|e| {
                let text = format!("attaching a sender: {e:?}");
                PublishResult::error(condition_code(&text), text)
            })?
        };
        let e = Rc::new(EntityLink {
            sender: tokio::sync::Mutex::new(sender),
            authorised_until: Cell::new(until),
        });
        link.entities.borrow_mut().insert(self.entity.clone(), e.clone());
        Ok(e)
    }

    fn message(&self, event: &Event, now_ms: i64) -> Message<fe2o3_amqp::types::messaging::Data> {
        let mut props = ApplicationProperties::builder();
        for (k, v) in merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms).iter() {
            props = props.insert(k.as_str(), v.as_str());
        }
        // No message id and no content type, as Outpost sends: with the
        // entity's duplicate detection on, a message id equal to the event
        // id made Service Bus drop every manual retry as a duplicate.
        Message::builder()
            .application_properties(props.build())
            .data(Binary::from(event.data.as_bytes().to_vec()))
            .build()
    }
}

impl Publisher for ServiceBusPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let link: Rc<Link> = match clients
                .servicebus
                .get(&self.key, || {
                    connect(&self.key, &clients.guard, &self.tls, self.timeout)
                })
                .await
            {
                Ok(l) => l,
                Err(r) => return r,
            };
            let entity = match self.entity_link(&link, now_ms / 1000).await {
                Ok(e) => e,
                Err(r) => {
                    if r.retryable {
                        clients.servicebus.discard(&self.key, &link);
                    }
                    return r;
                }
            };
            let sent = entity.sender.lock().await.send(self.message(event, now_ms)).await;
            match sent {
                Ok(Outcome::Accepted(_)) => PublishResult::success("OK", json!({})),
                Ok(Outcome::Rejected(r)) => {
                    let text = format!("the broker rejected the message: {:?}", r.error);
                    PublishResult::error(condition_code(&text), text)
                }
                Ok(other) => PublishResult::failed("servicebus_error", format!("outcome {other:?}")),
                Err(e) => {
                    // The link or connection is gone: the next attempt starts afresh.
                    clients.servicebus.discard(&self.key, &link);
                    failed_text("servicebus_error", "send", e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let k = parse_connection_string(
            "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc+/=",
        )
        .unwrap();
        assert_eq!(
            (k.host.as_str(), k.port, k.tls),
            ("ns1.servicebus.windows.net", 5671, true)
        );
        assert!(
            k.auth
                == Auth::Key {
                    name: "send".into(),
                    key: "abc+/=".into()
                }
        );
        let k = parse_connection_string(
            "Endpoint=sb://localhost:5673;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!((k.host.as_str(), k.port, k.tls), ("localhost", 5673, false));
        let k = parse_connection_string("Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=x").unwrap();
        assert!(k.auth == Auth::Token("SharedAccessSignature sr=x".into()));
        assert!(parse_connection_string("Endpoint=https://h/;SharedAccessKeyName=a;SharedAccessKey=b").is_err());
        assert!(parse_connection_string("Endpoint=sb://h/").is_err());
        assert!(parse_connection_string("nonsense").is_err());
    }

    #[test]
    fn conditions() {
        assert_eq!(
            condition_code("Rejected { error: Some(Error { condition: AmqpError(UnauthorizedAccess) }) }"),
            "auth_failed"
        );
        assert_eq!(
            condition_code("RemoteClosedWithError(Error { condition: AmqpError(NotFound) })"),
            "entity_not_found"
        );
        assert_eq!(condition_code("anything else"), "servicebus_error");
    }

    #[test]
    fn tokens() {
        let t = sas_token("amqp://ns.example/q 1", "send", "key", 1_700_000_000);
        let resource = "amqp%3A%2F%2Fns.example%2Fq+1";
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"key").unwrap();
        mac.update(format!("{resource}\n1700000000").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            t,
            format!(
                "SharedAccessSignature sr={resource}&sig={}&se=1700000000&skn=send",
                query_escape(&sig)
            )
        );
    }

    #[test]
    fn validation_and_target() {
        let d = test_destination("azure_servicebus", &[("name", "-bad")], &[("connection_string", "x")]);
        assert_eq!(
            AzureServiceBus.validate(&d).unwrap_err(),
            vec![
                "config.name failed pattern validation",
                "credentials.connection_string is invalid"
            ]
        );
        let d = test_destination(
            "azure_servicebus",
            &[("name", "orders.q")],
            &[(
                "connection_string",
                "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b",
            )],
        );
        assert!(AzureServiceBus.validate(&d).is_ok());
        assert_eq!(AzureServiceBus.target(&d).0, "ns1/orders.q");
    }
}
