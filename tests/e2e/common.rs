//! Test harness: the real `outrider` binary on a free port with its own data
//! dir, and a real HTTP receiver that records every delivery.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

pub const API_KEY: &str = "test-admin-key";
pub const JWT_SECRET: &str = "test-jwt-secret";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    /// Where stdout and stderr go (appended across restarts); `None`: stderr inherited, stdout dropped.
    log: Option<PathBuf>,
}

impl Server {
    /// Starts a server with test defaults, overridden by `env`.
    pub async fn start(env: &[(&str, &str)]) -> Server {
        Self::start_logged(env, None).await
    }

    /// Like `start`, with the server's stderr appended to `log`.
    pub async fn start_logged(env: &[(&str, &str)], log: Option<PathBuf>) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server {
            port: free_port(),
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            _tmp: Some(tmp),
            log,
        };
        s.spawn().await;
        s
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    fn command(&self) -> Command {
        // `OUTRIDER_TEST_SERVER_BIN` runs another build (a release binary for
        // the full-size backlog run) under the same tests.
        let bin = std::env::var("OUTRIDER_TEST_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_outrider").into());
        let mut c = Command::new(bin);
        c.current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("API_PORT", self.port.to_string())
            .env("API_KEY", API_KEY)
            .env("API_JWT_SECRET", JWT_SECRET)
            .env("AES_ENCRYPTION_SECRET", "test-aes-secret")
            .env("OUTRIDER_DATA_DIR", self.dir.join("data"))
            .env("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true")
            .env("RETRY_SCHEDULE", "1,1,1")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(path) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            c.stdout(f.try_clone().unwrap()).stderr(f);
        }
        c
    }

    /// (Re)starts the process on the same port and data dir and waits for health.
    pub async fn spawn(&mut self) {
        self.child = Some(self.command().spawn().expect("start outrider"));
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        // Longer for the full-size backlog runs (a shard-count change moves
        // every delivery before the listener binds).
        let secs = std::env::var("OUTRIDER_TEST_START_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("outrider exited during start: {status}");
            }
            assert!(Instant::now() < deadline, "outrider did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Changes one setting for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then waits (up to `limit`) for the exit: `(exit code, time taken)`.
    /// Panics if the process is still running after `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let mut c = self.child.take().expect("server is running");
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return (st.code(), t0.elapsed());
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the server did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the binary with extra env and returns (exit code, stderr) without serving.
    pub fn run_once(env: &[(&str, &str)]) -> (i32, String) {
        let (code, _, err) = Server::run_args(&[], env);
        (code, err)
    }

    /// Runs the binary with arguments and env: (exit code, stdout, stderr).
    pub fn run_args(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_outrider"));
        c.args(args)
            .current_dir(tmp.path())
            .env_clear()
            .env("API_PORT", free_port().to_string());
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An API client with a bearer token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn admin(s: &Server) -> Api {
        Api::with_token(s, API_KEY)
    }

    pub fn with_token(s: &Server, token: &str) -> Api {
        Api {
            base: s.base(),
            token: token.to_string(),
            // A server that stops answering fails the test instead of hanging the run.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("a reqwest client"),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn raw(&self, method: &str, path: &str, body: &str) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(body)).await
    }
    pub async fn put(&self, path: &str) -> Resp {
        self.call("PUT", path, None).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call("PATCH", path, Some(body)).await
    }

    pub async fn tenant(&self, id: &str) {
        let r = self.put(&format!("/tenants/{id}")).await;
        assert!(r.status == 201 || r.status == 200, "tenant: {} {}", r.status, r.text);
    }

    /// Creates a webhook destination and returns its JSON.
    pub async fn webhook(&self, tenant: &str, url: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"type": "webhook", "topics": "*", "config": {"url": url}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.post(&format!("/tenants/{tenant}/destinations"), body).await;
        assert_eq!(r.status, 201, "create destination: {}", r.text);
        r.body
    }

    pub async fn publish(&self, body: Value) -> Resp {
        self.post("/publish", body).await
    }

    /// Polls `/attempts` until `pred` holds or the timeout passes.
    pub async fn wait_attempts(&self, query: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(&format!("/attempts?{query}")).await;
            let models = r.body["models"].as_array().cloned().unwrap_or_default();
            if pred(&models) || Instant::now() > deadline {
                return models;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(String::from)
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
pub struct ReceiverState {
    pub got: Mutex<Vec<Received>>,
    /// Statuses to answer with first, then 200.
    pub script: Mutex<VecDeque<u16>>,
    /// Always answer with this status when set.
    pub always: Mutex<Option<u16>>,
    pub delay: Mutex<Duration>,
    pub body: Mutex<String>,
    /// Paths starting with this always get a 500.
    pub fail_prefix: Mutex<Option<String>>,
    /// A `Retry-After` value sent with every non-2xx answer.
    pub retry_after: Mutex<Option<String>>,
    /// Every request as it arrives, before the delay: a request whose
    /// sender gives up during the delay is here and not in `got`.
    pub arrived: Mutex<Vec<Received>>,
}

/// The sum of the samples in Prometheus `text` whose lines start with
/// `prefix` (a metric's name and the start of its labels); 0 when none do.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real HTTP server on loopback that records deliveries.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
}

async fn record(
    State(s): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    s.arrived.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    });
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    s.got.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let failing = s
        .fail_prefix
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|p| uri.path().starts_with(p));
    let status = if failing {
        500
    } else {
        s.always
            .lock()
            .unwrap()
            .or_else(|| s.script.lock().unwrap().pop_front())
            .unwrap_or(200)
    };
    let text = s.body.lock().unwrap().clone();
    let mut extra = HeaderMap::new();
    if let Some(v) = s.retry_after.lock().unwrap().as_deref().filter(|_| status >= 300) {
        extra.insert("retry-after", v.parse().unwrap());
    }
    if (300..400).contains(&status) {
        extra.insert("location", "/moved".parse().unwrap());
    }
    (
        StatusCode::from_u16(status).unwrap(),
        extra,
        if text.is_empty() { "ok".to_string() } else { text },
    )
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.got.lock().unwrap().len()
    }

    /// Requests that arrived (answered or not).
    pub fn arrivals(&self) -> usize {
        self.state.arrived.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    /// Waits (up to `timeout`) until `n` distinct event ids arrived;
    /// returns `(distinct ids, deliveries)` as they then are.
    pub async fn wait_for_distinct_events(&self, n: usize, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let ids: Vec<String> = self
                .got()
                .iter()
                .filter_map(|g| g.header("x-outpost-event-id"))
                .collect();
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
            if distinct >= n || Instant::now() >= deadline {
                return (distinct, ids.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.got()
    }
}

pub fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    hex::encode(m.finalize().into_bytes())
}

pub fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// A TCP forwarder the test can cut, to simulate a back end going away, or
/// hold, to keep a request in flight. It counts the HTTP/1 requests it
/// forwards (`POST /` starts each AWS SDK call).
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicBool>,
    posts: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Client-to-server bytes: counted, and kept back while `held`.
async fn forward_up(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: Arc<std::sync::atomic::AtomicBool>,
    posts: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use Ordering::SeqCst;
    let mut buf = vec![0u8; 64 * 1024];
    // The tail of the previous read, so a marker split across reads counts.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut seen = std::mem::take(&mut tail);
        seen.extend_from_slice(&buf[..n]);
        posts.fetch_add(seen.windows(6).filter(|w| *w == b"POST /").count(), SeqCst);
        tail = seen[seen.len().saturating_sub(5)..].to_vec();
        while held.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let posts = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, c, h, p) = (up.clone(), conns.clone(), held.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (held, posts) = (h.clone(), p.clone());
                let task = tokio::spawn(async move {
                    if let Ok(out) = tokio::net::TcpStream::connect(target).await {
                        let (in_r, mut in_w) = inbound.into_split();
                        let (mut out_r, out_w) = out.into_split();
                        let down = async move {
                            let _ = tokio::io::copy(&mut out_r, &mut in_w).await;
                        };
                        tokio::join!(forward_up(in_r, out_w, held, posts), down);
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            held,
            posts,
            conns,
        }
    }

    /// Keeps what clients send from reaching the server until `release`.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// HTTP/1 `POST` requests forwarded (or held) so far.
    pub fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    /// Refuses new connections and cuts the open ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A TCP server that accepts connections and never answers.
pub async fn black_hole() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (o, p) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else { return };
            let n = o.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(n, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open, peak)
}

/// A TLS listener (the certificate and key `make_certs` wrote in `dir`, for
/// 127.0.0.1 and localhost) that relays each connection in the clear to
/// `upstream`: a real broker reached over TLS from a private CA.
pub async fn tls_front(dir: &std::path::Path, upstream: SocketAddr) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_file(dir.join("server.crt")).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut out).await;
                }
            });
        }
    });
    port
}
