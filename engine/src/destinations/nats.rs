//! The `nats` destination type (ours): each event is published to the
//! destination's subject, the data as the payload and the merged metadata as
//! NATS headers. With `jetstream` on (the default) the publish waits for the
//! stream's acknowledgement and carries `Nats-Msg-Id` = the event id, so the
//! stream drops a redelivered duplicate within its dedup window; off, it is a
//! core NATS publish, flushed to the server (no acknowledgement exists).

use std::rc::Rc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap};
use bytes::Bytes;
use serde_json::json;

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text(
        "server_url",
        "Server",
        "The NATS server's host and port, e.g. nats.example.com:4222.",
    )
    .required()
    .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text("subject", "Subject", "The subject each event is published to.")
        .required()
        .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text(
        "jetstream",
        "JetStream",
        "Publish to a JetStream stream and wait for its acknowledgement.",
    )
    .checkbox("on"),
    Field::text("tls", "TLS", "Connect over TLS.").checkbox("off"),
];
const CREDENTIALS: &[Field] = &[
    Field::text("username", "Username", "The user, if the server requires one."),
    Field::text("password", "Password", "That user's password.").sensitive(),
    Field::text(
        "token",
        "Token",
        "An authentication token, instead of a user and password.",
    )
    .sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "nats",
    label: "NATS",
    description: "Publish each event to a NATS subject, acknowledged by JetStream.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\"><rect width=\"24\" height=\"24\" rx=\"4\" fill=\"#27AAE1\"/><path d=\"M6 17V7l12 10V7\" stroke=\"#fff\" stroke-width=\"2\" fill=\"none\"/></svg>",
    instructions: "Give the server's address and a subject. With JetStream (the default) a stream must capture the subject (`nats stream add EVENTS --subjects 'events.>'`); each publish waits for the stream's acknowledgement and carries `Nats-Msg-Id` = the event id, so a redelivery inside the stream's duplicate window is dropped. Headers carry `event-id`, `topic`, `timestamp` and the event's metadata.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct Nats;

/// Where and as whom a destination connects; equal keys share a connection on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

impl DestinationType for Nats {
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
            if a.contains("://") || clients::host_port(a, 4222).is_none() {
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
        if d.config.get("jetstream").is_none_or(|v| v.is_empty()) {
            d.config.insert("jetstream".into(), "true".into());
        }
        let mut errs = Vec::new();
        for k in ["jetstream", "tls"] {
            if let Err(e) = fields::normalise_flag(&mut d.config, k) {
                errs.extend(e);
            }
        }
        fields::result(errs)
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        (format!("{} on {}", get("subject"), get("server_url")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let server = d
            .config
            .get("server_url")
            .ok_or(PublisherError::Missing("config.server_url"))?;
        let (host, port) = clients::host_port(server, 4222).ok_or(PublisherError::Invalid("config.server_url"))?;
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Box::new(NatsPublisher {
            key: Key {
                tls: fields::flag(&d.config, "tls"),
                host,
                port,
                username: cred("username"),
                password: cred("password"),
                token: cred("token"),
            },
            subject: d
                .config
                .get("subject")
                .cloned()
                .ok_or(PublisherError::Missing("config.subject"))?,
            // Stored destinations created before the flag existed default to JetStream.
            jetstream: d.config.get("jetstream").is_none_or(|v| v != "false"),
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            timeout: ctx.config.delivery_timeout_for("nats"),
            ack_timeout: ctx.config.delivery_timeout_for("nats"),
            roots: ctx.broker_roots.clone(),
        }))
    }
}

pub struct NatsPublisher {
    key: Key,
    subject: String,
    jetstream: bool,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    /// Bounds connecting as well as each attempt.
    timeout: Duration,
    ack_timeout: Duration,
    /// Trusted for TLS: the Mozilla roots and `OUTRIDER_DESTINATIONS_TLS_CA_FILE`.
    roots: std::sync::Arc<rustls::RootCertStore>,
}

fn connect_failed(e: &async_nats::ConnectError) -> PublishResult {
    let text = e.to_string();
    match e.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            PublishResult::permanent("auth_failed", text)
        }
        ConnectErrorKind::TimedOut => PublishResult::failed("timeout", text),
        ConnectErrorKind::Tls => PublishResult::failed("tls_error", text),
        ConnectErrorKind::Dns => PublishResult::failed("dns_error", text),
        // A failed TLS handshake (a certificate for another name) comes as I/O.
        ConnectErrorKind::Io => PublishResult::failed(clients::network_code(&text), text),
        _ => PublishResult::failed("nats_error", text),
    }
}

/// The URL the library dials: always the address the guard checked. With
/// TLS the library would take the certificate's name from the URL too, so the
/// certificate is verified for the configured host by [`named_tls`] instead.
///
/// [`named_tls`]: crate::http_client::named_tls
fn dial_url(key: &Key, checked: std::net::SocketAddr) -> String {
    let scheme = if key.tls { "tls" } else { "nats" };
    format!("{scheme}://{checked}")
}

async fn open(
    key: &Key,
    guard: &crate::ssrf::Guard,
    roots: &std::sync::Arc<rustls::RootCertStore>,
    timeout: Duration,
) -> Result<async_nats::Client, PublishResult> {
    let addr = clients::checked_target(&key.host, key.port, guard).await?;
    open_at(key, addr, roots, timeout).await
}

/// Connects to `addr`, which the guard checked for `key.host`.
async fn open_at(
    key: &Key,
    addr: std::net::SocketAddr,
    roots: &std::sync::Arc<rustls::RootCertStore>,
    timeout: Duration,
) -> Result<async_nats::Client, PublishResult> {
    let mut opts = ConnectOptions::new()
        .connection_timeout(timeout)
        .require_tls(key.tls)
        // A lost connection is reconnected by the pool, not behind its back.
        .max_reconnects(Some(1))
        // A server advertises its cluster's other members (`connect_urls`)
        // and the library would reconnect to them unchecked: a tenant's
        // server could point it at any address. Only the checked one is used.
        .ignore_discovered_servers()
        .retain_servers_order();
    if key.tls {
        let mut tls = crate::http_client::named_tls::verified_for(roots.clone(), &key.host)
            .map_err(|e| PublishResult::failed("tls_error", e))?;
        tls.alpn_protocols.clear();
        opts = opts.tls_client_config(tls);
    }
    if let (Some(u), Some(p)) = (&key.username, &key.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    } else if let Some(t) = &key.token {
        opts = opts.token(t.clone());
    }
    opts.connect(dial_url(key, addr)).await.map_err(|e| connect_failed(&e))
}

impl Publisher for NatsPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            for (k, v) in merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms).iter() {
                headers.insert(k.as_str(), v.as_str());
            }
            let payload = Bytes::copy_from_slice(event.data.as_bytes());
            let mut client: Rc<async_nats::Client> = match clients
                .nats
                .get(&self.key, || open(&self.key, &clients.guard, &self.roots, self.timeout))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            if client.connection_state() == State::Disconnected {
                clients.nats.discard(&self.key, &client);
                client = match clients
                    .nats
                    .get(&self.key, || open(&self.key, &clients.guard, &self.roots, self.timeout))
                    .await
                {
                    Ok(c) => c,
                    Err(r) => return r,
                };
            }
            if !self.jetstream {
                let sent = async {
                    client
                        .publish_with_headers(self.subject.clone(), headers, payload)
                        .await
                        .map_err(|e| e.to_string())?;
                    client.flush().await.map_err(|e| e.to_string())
                }
                .await;
                return match sent {
                    Ok(()) => PublishResult::success("OK", json!({ "subject": self.subject })),
                    Err(e) => {
                        clients.nats.discard(&self.key, &client);
                        PublishResult::failed("nats_error", e)
                    }
                };
            }
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
            let js = async_nats::jetstream::ContextBuilder::new()
                .timeout(self.ack_timeout)
                .ack_timeout(self.ack_timeout)
                .build((*client).clone());
            let acked = async {
                js.publish_with_headers(self.subject.clone(), headers, payload)
                    .await?
                    .await
            }
            .await;
            match acked {
                Ok(ack) => PublishResult::success(
                    "OK",
                    json!({ "stream": ack.stream, "sequence": ack.sequence, "duplicate": ack.duplicate }),
                ),
                Err(e) => {
                    let text = e.to_string();
                    match e.kind() {
                        PublishErrorKind::StreamNotFound => PublishResult::failed("stream_not_found", text),
                        PublishErrorKind::TimedOut => PublishResult::failed("timeout", text),
                        PublishErrorKind::BrokenPipe => {
                            clients.nats.discard(&self.key, &client);
                            PublishResult::failed("connection_reset", text)
                        }
                        _ => PublishResult::failed("nats_error", text),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_flags() {
        let mut d = test_destination(
            "nats",
            &[("server_url", "nats.example:4222"), ("subject", "events.a")],
            &[],
        );
        assert!(Nats.validate(&d).is_ok());
        Nats.preprocess(&mut d, None, &RawInput::default(), Actor::Admin, 0)
            .unwrap();
        assert_eq!(d.config.get("jetstream").map(String::as_str), Some("true"));
        assert_eq!(d.config.get("tls").map(String::as_str), Some("false"));
        assert_eq!(Nats.target(&d).0, "events.a on nats.example:4222");
        let d = test_destination("nats", &[("server_url", "nats://x"), ("subject", "a b")], &[]);
        assert_eq!(
            Nats.validate(&d).unwrap_err(),
            vec![
                "config.subject failed pattern validation",
                "config.server_url is invalid"
            ]
        );
    }

    /// Speaks just enough NATS for a client to connect: INFO (advertising
    /// `advertised` as another cluster member), then PONG to its PING.
    async fn handshake(mut sock: tokio::net::TcpStream, advertised: std::net::SocketAddr) -> tokio::net::TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let info = format!(
            "INFO {{\"server_id\":\"fake\",\"version\":\"2.10.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"connect_urls\":[\"{advertised}\"]}}\r\n"
        );
        sock.write_all(info.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(6).any(|w| w == b"PING\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"PONG\r\n").await.unwrap();
        sock
    }

    /// A TLS server whose certificate names a host that resolves nowhere:
    /// the connection can only work if it goes to the checked address and
    /// checks the certificate for the name (a lookup of the name would fail).
    #[tokio::test]
    async fn tls_goes_to_the_checked_address_and_checks_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir.path())
                .output()
                .expect("sh");
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=outrider-test-ca");
        sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=outrider-pinned.invalid");
        sh("printf 'subjectAltName=DNS:outrider-pinned.invalid\\n' > ext.cnf");
        sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--tls", "--tlscert", "server.crt", "--tlskey", "server.key"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server is required for this test: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "TLS nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(dir.path().join("ca.crt")).unwrap())
            .unwrap();
        let roots = std::sync::Arc::new(roots);
        let key = |host: &str| Key {
            tls: true,
            host: host.into(),
            port,
            username: None,
            password: None,
            token: None,
        };
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let client = open_at(&key("outrider-pinned.invalid"), addr, &roots, Duration::from_secs(5))
            .await
            .unwrap_or_else(|r| panic!("{:?}", r.response_data));
        client.publish("outrider.pinned", "x".into()).await.unwrap();
        client.flush().await.unwrap();
        // The same address under a name the certificate does not carry.
        let Err(refused) = open_at(&key("outrider-other.invalid"), addr, &roots, Duration::from_secs(5)).await else {
            panic!("a certificate for another name must be refused");
        };
        assert_eq!(refused.code, "tls_error", "{:?}", refused.response_data);
        let _ = server.kill();
        let _ = server.wait();
    }

    #[tokio::test]
    async fn servers_a_server_advertises_are_never_contacted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_addr = other.local_addr().unwrap();
        let contacted = Arc::new(AtomicUsize::new(0));
        let seen = contacted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = other.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                held.push(handshake(sock, other_addr).await);
            }
        });
        // The tenant's server: every connection advertises `other`, then is
        // dropped, so the client reconnects; without the fix it picks a
        // discovered server about half the time.
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = first.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let sock = handshake(sock, other_addr).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(sock);
            }
        });
        let key = Key {
            tls: false,
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            token: None,
        };
        let roots = std::sync::Arc::new(rustls::RootCertStore::empty());
        let client = open(&key, &crate::ssrf::Guard::off(), &roots, Duration::from_secs(2))
            .await
            .expect("connects to the fake server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::SeqCst) + contacted.load(Ordering::SeqCst) < 8
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(client);
        assert_eq!(
            contacted.load(Ordering::SeqCst),
            0,
            "the client connected to an advertised server"
        );
        assert!(
            accepted.load(Ordering::SeqCst) >= 8,
            "the client reconnected only {} times",
            accepted.load(Ordering::SeqCst)
        );
    }
}
