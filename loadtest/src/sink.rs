//! The harness's destination: a small HTTP/1.1 server on loopback that
//! records every successful delivery (which event, which destination, when),
//! checks its signature, and can be slow or fail on purpose.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// How the sink answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer 500 to the first arrival of every other (event, destination),
    /// so half of the deliveries need exactly one retry.
    pub fail_half_first_attempts: bool,
    /// Verify `x-outpost-signature` (default mode) with this secret.
    pub secret: Option<String>,
}

/// One successful delivery: `key = event_number * destinations + destination_index`.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub key: u64,
    pub at: Instant,
}

#[derive(Default)]
pub struct SinkStats {
    pub arrivals: Mutex<Vec<Arrival>>,
    /// First arrivals seen, for the failing behaviour.
    seen: Mutex<HashSet<u64>>,
    pub requests: AtomicU64,
    pub failures_sent: AtomicU64,
    pub bad_signatures: AtomicU64,
    /// Requests without a harness event id (from another run or tool).
    pub foreign: AtomicU64,
}

impl SinkStats {
    pub fn delivered(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub stats: Arc<SinkStats>,
}

/// Event ids the harness publishes: `<prefix><n>`.
pub fn parse_key(event_id: &str, prefix: &str, path: &str, destinations: u64) -> Option<u64> {
    let n: u64 = event_id.strip_prefix(prefix)?.parse().ok()?;
    let d: u64 = path.strip_prefix("/d/")?.parse().ok()?;
    Some(n * destinations + d)
}

fn verify(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    use hmac::{Hmac, Mac};
    let Some(h) = header else { return false };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    let want = hex::encode(mac.finalize().into_bytes());
    h.strip_prefix("v0=")
        .is_some_and(|sigs| sigs.split(',').any(|s| s == want))
}

/// Starts the sink on its own thread with its own runtime, pinned to `core`
/// when given. `prefix` and `destinations` decode the event keys.
pub fn start(core: Option<usize>, behaviour: Behaviour, prefix: String, destinations: u64) -> Sink {
    let stats = Arc::new(SinkStats::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stats.clone();
    std::thread::Builder::new()
        .name("loadtest-sink".into())
        .spawn(move || {
            crate::pin(core);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sink runtime");
            rt.block_on(async move {
                // A deep accept backlog: a burst of new connections must not
                // overflow it (each dropped SYN would add a 1 s retransmit to
                // the measured latency).
                let socket = tokio::net::TcpSocket::new_v4().expect("sink socket");
                socket
                    .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                    .expect("bind sink");
                let listener = socket.listen(4096).expect("listen sink");
                let _ = tx.send(listener.local_addr().expect("sink addr"));
                let behaviour = Arc::new(behaviour);
                let prefix: Arc<str> = Arc::from(prefix);
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (st, behaviour, prefix) = (st.clone(), behaviour.clone(), prefix.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (st, behaviour, prefix) = (st.clone(), behaviour.clone(), prefix.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(req, &st, &behaviour, &prefix, destinations).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })
        .expect("sink thread");
    let addr = rx.recv().expect("sink address");
    Sink { addr, stats }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    st: &SinkStats,
    b: &Behaviour,
    prefix: &str,
    destinations: u64,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let id = req
        .headers()
        .get("x-outpost-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let sig = req
        .headers()
        .get("x-outpost-signature")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.requests.fetch_add(1, Ordering::Relaxed);
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let key = id.as_deref().and_then(|i| parse_key(i, prefix, &path, destinations));
    let Some(key) = key else {
        st.foreign.fetch_add(1, Ordering::Relaxed);
        return hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
    };
    if let Some(secret) = &b.secret {
        if !verify(secret, &body, sig.as_deref()) {
            st.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if b.fail_half_first_attempts && key % 2 == 0 {
        let first = st.seen.lock().map(|mut s| s.insert(key)).unwrap_or(false);
        if first {
            st.failures_sent.fetch_add(1, Ordering::Relaxed);
            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"try again")));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
    }
    if let Ok(mut a) = st.arrivals.lock() {
        a.push(Arrival {
            key,
            at: Instant::now(),
        });
    }
    hyper::Response::new(Full::new(Bytes::from_static(b"ok")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_signatures() {
        assert_eq!(parse_key("lt-7", "lt-", "/d/3", 10), Some(73));
        assert_eq!(parse_key("other", "lt-", "/d/3", 10), None);
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s").unwrap();
        mac.update(b"{}");
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify("s", b"{}", Some(&sig)));
        assert!(!verify("t", b"{}", Some(&sig)));
    }
}
