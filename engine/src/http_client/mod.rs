//! The shard's HTTP/1.1 client: our own small codec ([`codec`], on
//! `httparse`) over tokio sockets, a keep-alive pool owned by one shard
//! (single-threaded, no locks), TLS by rustls, the SSRF guard at connect
//! time, no redirects, and a capped body read.
//!
//! A connection belongs to the attempt using it: when the attempt's timeout
//! drops the future, the connection closes with it.

pub mod codec;
pub mod named_tls;
pub mod proxy;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use codec::Headers;
use codec::{ResponseReader, Step};
pub use proxy::{Proxy, PROXY_UNAVAILABLE};

use crate::ssrf::{self, ResolveError};

/// Idle connections kept per (scheme, host, port).
const MAX_IDLE_PER_HOST: usize = 256;

/// An idle connection older than this is closed instead of reused: the
/// receiver has most likely closed it already.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A body up to this size is copied behind the head so the request leaves in
/// one write (one syscall); larger ones are written on their own.
const INLINE_BODY: usize = 16 * 1024;

/// Bytes read per `read` call, at least.
const READ_CHUNK: usize = 8 * 1024;

/// Connections being opened to one host at once, per shard. A burst of
/// hundreds of SYNs overflows a destination's accept backlog and every
/// dropped SYN costs a 1 s retransmit (measured: 110 listen overflows and a
/// 1.07 s maximum latency in a 10 s harness run); attempts beyond this wait,
/// and meanwhile a connection may come back to the pool.
const MAX_CONNECTING_PER_HOST: usize = 64;

/// A parsed, validated target URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as sent in the `Host` header.
    pub authority: String,
    pub path_and_query: String,
    /// Keep the response's headers ([`Response::headers`]).
    pub keep_headers: bool,
    /// The destination type sending, for `outpost.delivery_connections`.
    pub kind: &'static str,
    key: PoolKey,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("URL scheme must be http or https".into()),
        };
        let authority = uri.authority().ok_or("URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("URL must not contain credentials".into());
        }
        let host = authority.host().to_string();
        if host.is_empty() {
            return Err("URL has no host".into());
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            key: (tls, Arc::from(host.as_str()), port),
            tls,
            host,
            port,
            authority: authority.as_str().to_string(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            keep_headers: false,
            kind: "webhook",
        })
    }
}

/// Computed once per target, so a request hashes it without allocating.
type PoolKey = (bool, Arc<str>, u16);

/// Why a request did not produce a response. `code` follows Outpost's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub code: &'static str,
    pub message: String,
}

impl SendError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A response with its body read up to the cap.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// The body was larger than the cap and was not kept.
    pub truncated: bool,
    /// The response's `Retry-After`, as a wait from now.
    pub retry_after: Option<std::time::Duration>,
    /// The response's `Location`, cut to [`codec::MAX_LOCATION`] bytes.
    pub location: Option<String>,
    /// Its headers, when the target asked for them.
    pub headers: Vec<(String, String)>,
}

/// A byte stream a request can go over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// An open connection with its buffers (kept across requests).
struct Conn {
    io: Box<dyn Io>,
    read: BytesMut,
    write: Vec<u8>,
    idle_since: Instant,
}

/// One shard's client. Clone is cheap (shared pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Rc<Inner>,
}

struct Inner {
    idle: RefCell<HashMap<PoolKey, Vec<Conn>>>,
    connecting: RefCell<HashMap<PoolKey, Rc<tokio::sync::Semaphore>>>,
    tls: tokio_rustls::TlsConnector,
    guard: ssrf::Guard,
    max_body: usize,
    /// Every connection is tunnelled through this proxy when set.
    proxy: Option<Proxy>,
}

/// rustls client config with the Mozilla roots, shared by all shards.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    client_config(roots)
}

/// [`tls_config`] that also trusts the PEM certificates in `ca_file`.
pub fn tls_config_with(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    Ok(client_config(roots_with(ca_file)?))
}

/// The Mozilla roots plus the PEM certificates in `ca_file`.
pub fn roots_with(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs =
            rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate in the file", path.display()));
        }
    }
    Ok(roots)
}

/// A client config trusting `roots` (ring, TLS 1.2 and 1.3).
pub fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3 is supported by ring")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    Arc::new(cfg)
}

impl HttpClient {
    /// `guard`: apply the SSRF guard. `max_body`: 0 = unlimited.
    pub fn new(tls: Arc<rustls::ClientConfig>, guard: ssrf::Guard, max_body: usize) -> Self {
        Self::build(tls, guard, max_body, None)
    }

    /// A client whose connections all go through `proxy` (the guard still
    /// checks every destination address; the proxy is asked for that address).
    pub fn with_proxy(tls: Arc<rustls::ClientConfig>, guard: ssrf::Guard, max_body: usize, proxy: Proxy) -> Self {
        Self::build(tls, guard, max_body, Some(proxy))
    }

    fn build(tls: Arc<rustls::ClientConfig>, guard: ssrf::Guard, max_body: usize, proxy: Option<Proxy>) -> Self {
        Self {
            inner: Rc::new(Inner {
                idle: RefCell::new(HashMap::new()),
                connecting: RefCell::new(HashMap::new()),
                tls: tokio_rustls::TlsConnector::from(tls),
                guard,
                max_body,
                proxy,
            }),
        }
    }

    /// Sends `POST` with `headers` and `body`. A request that fails on a reused
    /// connection before any response byte is retried once on a fresh
    /// connection (the server may have closed the idle connection).
    pub async fn post(&self, target: &Target, headers: &Headers<'_>, body: &[u8]) -> Result<Response, SendError> {
        if let Some(r) = self.pooled(target, headers, body).await {
            return r;
        }
        let gate = self
            .inner
            .connecting
            .borrow_mut()
            .entry(target.key.clone())
            .or_insert_with(|| Rc::new(tokio::sync::Semaphore::new(MAX_CONNECTING_PER_HOST)))
            .clone();
        let permit = gate
            .acquire()
            .await
            .map_err(|_| SendError::new("network_error", "connection gate closed"))?;
        if let Some(r) = self.pooled(target, headers, body).await {
            return r;
        }
        let conn = self.connect(target).await?;
        drop(permit);
        if let Some(otel) = crate::otel::get() {
            otel.delivery_connection(target.kind, false);
        }
        match self.exchange(conn, target, headers, body).await {
            Ok(r) => Ok(r),
            Err(Exchange::BeforeResponse(e)) | Err(Exchange::Failed(e)) => Err(e),
        }
    }

    /// Idle connections open to `target` in this shard's pool.
    pub fn idle_connections(&self, target: &Target) -> usize {
        self.inner.idle.borrow().get(&target.key).map_or(0, Vec::len)
    }

    /// Tries an idle pooled connection: `None` when there is none, or when it
    /// failed before any response byte (the server may have closed it).
    async fn pooled(&self, target: &Target, headers: &Headers<'_>, body: &[u8]) -> Option<Result<Response, SendError>> {
        let conn = self.checkout(&target.key)?;
        match self.exchange(conn, target, headers, body).await {
            Ok(r) => {
                if let Some(otel) = crate::otel::get() {
                    otel.delivery_connection(target.kind, true);
                }
                Some(Ok(r))
            }
            Err(Exchange::BeforeResponse(_)) => None,
            Err(Exchange::Failed(e)) => Some(Err(e)),
        }
    }

    fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let mut idle = self.inner.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < IDLE_TIMEOUT {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, key: &PoolKey, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.inner.idle.borrow_mut();
        let list = idle.entry(key.clone()).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(conn);
        }
    }

    async fn connect(&self, target: &Target) -> Result<Conn, SendError> {
        let addrs = ssrf::resolve(&target.host, target.port, &self.inner.guard)
            .await
            .map_err(|e| match e {
                ResolveError::Dns { .. } => SendError::new("dns_error", e.to_string()),
                ResolveError::Forbidden { .. } => SendError::new("destination_blocked", e.to_string()),
            })?;
        let tcp: Box<dyn Io> = match &self.inner.proxy {
            None => {
                let tcp = connect_any(&addrs).await?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
            Some(proxy) => self.tunnel(proxy, &addrs, &target.host).await?,
        };
        let io: Box<dyn Io> = if target.tls {
            let name = rustls::pki_types::ServerName::try_from(
                target.host.trim_start_matches('[').trim_end_matches(']').to_string(),
            )
            .map_err(|e| SendError::new("tls_error", format!("invalid TLS server name: {e}")))?;
            let stream = self
                .inner
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| SendError::new("tls_error", e.to_string()))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        Ok(Conn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            idle_since: Instant::now(),
        })
    }

    /// A tunnel to the first checked address the proxy can reach; a failure
    /// of the proxy itself is not worth trying the other addresses for.
    async fn tunnel(&self, proxy: &Proxy, addrs: &[SocketAddr], name: &str) -> Result<Box<dyn Io>, SendError> {
        let mut last = SendError::new("network_error", "no address to connect to");
        for a in addrs {
            match proxy.tunnel(&self.inner.tls, *a, name).await {
                Ok(io) => return Ok(io),
                Err(e) if e.code == PROXY_UNAVAILABLE => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        target: &Target,
        headers: &Headers<'_>,
        body: &[u8],
    ) -> Result<Response, Exchange> {
        let before = |e: std::io::Error| Exchange::BeforeResponse(classify_io(&e));
        conn.write.clear();
        codec::write_post_head(
            &mut conn.write,
            &target.path_and_query,
            &target.authority,
            headers,
            body.len(),
        );
        if body.len() <= INLINE_BODY {
            conn.write.extend_from_slice(body);
            conn.io.write_all(&conn.write).await.map_err(before)?;
        } else {
            conn.io.write_all(&conn.write).await.map_err(before)?;
            conn.io.write_all(body).await.map_err(before)?;
        }
        conn.io.flush().await.map_err(before)?;
        let mut reader = ResponseReader::new(self.inner.max_body).keeping_headers(target.keep_headers);
        let mut received = false;
        loop {
            let step = reader
                .feed(&mut conn.read)
                .map_err(|e| Exchange::Failed(SendError::new("network_error", e.to_string())))?;
            if step == Step::Done {
                break;
            }
            if conn.read.capacity() - conn.read.len() < READ_CHUNK / 2 {
                conn.read.reserve(READ_CHUNK);
            }
            let n = match conn.io.read_buf(&mut conn.read).await {
                Ok(n) => n,
                Err(e) if !received => return Err(before(e)),
                Err(e) => return Err(Exchange::Failed(classify_io(&e))),
            };
            if n == 0 {
                if !received {
                    return Err(Exchange::BeforeResponse(SendError::new(
                        "connection_reset",
                        "connection closed before any response",
                    )));
                }
                reader
                    .eof()
                    .map_err(|e| Exchange::Failed(SendError::new("connection_reset", e.to_string())))?;
                break;
            }
            received = true;
        }
        let parsed = reader.finish(conn.read.len());
        if parsed.reusable {
            self.checkin(&target.key, conn);
        }
        Ok(Response {
            status: parsed.status,
            body: parsed.body,
            truncated: parsed.truncated,
            retry_after: parsed.retry_after,
            location: parsed.location,
            headers: parsed.headers,
        })
    }
}

enum Exchange {
    /// Failed before any response byte: safe to retry on a new connection.
    BeforeResponse(SendError),
    Failed(SendError),
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, SendError> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(|e| classify_io(&e))
        .unwrap_or_else(|| SendError::new("network_error", "no address to connect to")))
}

fn classify_io(e: &std::io::Error) -> SendError {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::ConnectionRefused => "connection_refused",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "connection_reset",
        K::NetworkUnreachable | K::HostUnreachable => "network_unreachable",
        K::TimedOut => "timeout",
        _ => "network_error",
    };
    SendError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("https://example.com/hook?x=1").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("example.com", 443, "/hook?x=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.port, t.path_and_query.as_str(), t.authority.as_str()),
            (8080, "/", "127.0.0.1:8080")
        );
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://user:pw@x/").is_err());
    }

    /// A tiny HTTP/1.1 server on any byte stream: reads each request (head +
    /// Content-Length body), records it, and answers with `reply(n)` for the
    /// n-th request on this connection; closes after `close_after` requests.
    async fn serve_conn<S>(mut s: S, seen: Rc<RefCell<Vec<String>>>, replies: Vec<&'static str>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        for reply in replies {
            let req = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let whole = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
                        buf.drain(..end + 4 + len);
                        break whole;
                    }
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            seen.borrow_mut().push(req);
            if s.write_all(reply.as_bytes()).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
        let _ = s.shutdown().await;
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn headers() -> Headers<'static> {
        let mut h = Headers::default();
        h.insert("content-type", "application/json");
        h.insert("x-outpost-event-id", "evt_1");
        h
    }

    /// Keep-alive reuse, the exact bytes on the wire, and a pooled connection
    /// the server closed while idle: the next request goes out on a fresh one.
    #[tokio::test(flavor = "current_thread")]
    async fn reuses_connections_and_recovers_from_a_closed_idle_one() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let seen = Rc::new(RefCell::new(Vec::new()));
                let accepted = Rc::new(std::cell::Cell::new(0));
                let (s2, a2) = (seen.clone(), accepted.clone());
                tokio::task::spawn_local(async move {
                    loop {
                        let (tcp, _) = listener.accept().await.unwrap();
                        a2.set(a2.get() + 1);
                        // The first connection answers twice, then closes while idle.
                        let replies = if a2.get() == 1 { vec![OK, OK] } else { vec![OK, OK, OK] };
                        tokio::task::spawn_local(serve_conn(tcp, s2.clone(), replies));
                    }
                });
                let client = HttpClient::new(tls_config(), ssrf::Guard::off(), 1024);
                let target = Target::parse(&format!("http://127.0.0.1:{port}/hook?a=1")).unwrap();
                for _ in 0..2 {
                    let r = client.post(&target, &headers(), b"{\"a\":1}").await.unwrap();
                    assert_eq!((r.status, &r.body[..], r.truncated), (200, &b"ok"[..], false));
                }
                assert_eq!(accepted.get(), 1, "the second request reused the connection");
                assert_eq!(
                    seen.borrow()[0],
                    format!(
                        "POST /hook?a=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\nx-outpost-event-id: evt_1\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
                    )
                );
                // Let the server's close reach us, then send again: the dead
                // pooled connection fails before any response and a new one is used.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let r = client.post(&target, &headers(), b"{}").await.unwrap();
                assert_eq!(r.status, 200);
                assert_eq!(accepted.get(), 2);
                assert_eq!(seen.borrow().len(), 3);
                assert_eq!(client.idle_connections(&target), 1);
            })
            .await;
    }

    /// Errors map to Outpost's codes; a body over the cap is not kept and its
    /// connection is not reused.
    #[tokio::test(flavor = "current_thread")]
    async fn refused_connections_and_oversized_bodies() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let client = HttpClient::new(tls_config(), ssrf::Guard::off(), 4);
                let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = closed.local_addr().unwrap().port();
                drop(closed);
                let t = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
                let e = client.post(&t, &headers(), b"{}").await.unwrap_err();
                assert_eq!(e.code, "connection_refused", "{e:?}");

                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let seen = Rc::new(RefCell::new(Vec::new()));
                let s2 = seen.clone();
                tokio::task::spawn_local(async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    serve_conn(
                        tcp,
                        s2,
                        vec!["HTTP/1.1 500 Boom\r\ncontent-length: 10\r\n\r\n0123456789"],
                    )
                    .await;
                });
                let t = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
                let r = client.post(&t, &headers(), b"{}").await.unwrap();
                assert_eq!((r.status, r.truncated, r.body.len()), (500, true, 0));
                assert_eq!(client.idle_connections(&t), 0);
            })
            .await;
    }

    /// The same exchange over TLS (rustls on both sides, a CA and a
    /// `localhost` certificate made by openssl): the request is flushed through TLS and
    /// the connection is reused.
    #[tokio::test(flavor = "current_thread")]
    async fn posts_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                ])
                .args(args)
                .output()
                .expect("openssl is needed to make the test certificates");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        // A CA, and a leaf for `localhost` signed by it.
        openssl(&["-subj", "/CN=outrider-test-ca", "-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&[
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ]);
        let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
        use rustls::pki_types::pem::PemObject;
        let ca_der = rustls::pki_types::CertificateDer::from_pem_file(&ca).unwrap();
        let cert_der = rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
                let seen = Rc::new(RefCell::new(Vec::new()));
                let s2 = seen.clone();
                tokio::task::spawn_local(async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let tls = acceptor.accept(tcp).await.unwrap();
                    serve_conn(
                        tls,
                        s2,
                        vec![
                            OK,
                            "HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n3\r\nyes\r\n0\r\n\r\n",
                        ],
                    )
                    .await;
                });
                let client = HttpClient::new(Arc::new(client_cfg), ssrf::Guard::off(), 1024);
                let t = Target::parse(&format!("https://localhost:{port}/tls")).unwrap();
                let r = client.post(&t, &headers(), b"{\"secure\":true}").await.unwrap();
                assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
                let r = client.post(&t, &headers(), b"{}").await.unwrap();
                assert_eq!((r.status, &r.body[..]), (202, &b"yes"[..]));
                assert!(seen.borrow()[0].ends_with("content-length: 15\r\n\r\n{\"secure\":true}"));
                assert_eq!(seen.borrow().len(), 2, "both requests on the one TLS connection");
            })
            .await;
    }
}
