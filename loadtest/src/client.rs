//! Lean HTTP/1.1 keep-alive clients: one connection per worker task, no pool
//! locking. Used for the raw-client baseline and for driving the API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("request failed: {0}")]
    Request(String),
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    send: SendRequest<Full<Bytes>>,
    auth: Option<String>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, bearer: Option<&str>) -> Result<Conn, ClientError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
        tokio::spawn(conn);
        Ok(Conn {
            addr,
            send,
            auth: bearer.map(|t| format!("Bearer {t}")),
        })
    }

    /// Sends one request; reconnects once if the connection was closed.
    pub async fn request(&mut self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes), ClientError> {
        if self.send.is_closed() {
            let auth = self
                .auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(String::from);
            *self = Conn::open(self.addr, auth.as_deref()).await?;
        }
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if let Some(a) = &self.auth {
            b = b.header("authorization", a.as_str());
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.send
            .ready()
            .await
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Request(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The ceiling: `conns` keep-alive connections POSTing `body` to the sink as
/// fast as it answers, for `dur`, on one runtime with `threads` workers.
/// Returns requests/s.
pub fn raw_baseline(addr: SocketAddr, threads: usize, conns: usize, body: Bytes, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    // One thread: run on the calling thread (which the caller may have pinned).
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("baseline runtime");
    let d = done.clone();
    let elapsed = rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (body, d) = (body.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = Conn::open(addr, None).await else {
                    return;
                };
                while Instant::now() < deadline {
                    match c.request("POST", "/baseline", body.clone()).await {
                        Ok(_) => {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        start.elapsed()
    });
    done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}
