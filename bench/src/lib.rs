//! Shared pieces for the benchmarks: a minimal keep-alive HTTP sink pinned to
//! one core, and a raw keep-alive client used as the ceiling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Starts the sink on its own thread (pinned to `core` when given). Every
/// request is answered `200 ok` after its body is read; `count` is incremented.
pub fn start_sink(core: Option<usize>) -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let c = count.clone();
    std::thread::spawn(move || {
        pin(core);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            c.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (rx.recv().expect("sink address"), count)
}

pub fn pin(core: Option<usize>) {
    if let Some(i) = core {
        if let Some(ids) = core_affinity::get_core_ids() {
            if let Some(id) = ids.get(i % ids.len().max(1)) {
                core_affinity::set_for_current(*id);
            }
        }
    }
}

/// The ceiling: `conns` keep-alive connections on one pinned current-thread
/// runtime, each POSTing `body` in a loop for `dur`. Returns requests/s.
pub fn raw_client(addr: SocketAddr, core: Option<usize>, conns: usize, body: Bytes, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    std::thread::spawn(move || {
        pin(core);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let deadline = Instant::now() + dur;
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let body = body.clone();
                let d = d.clone();
                tasks.push(tokio::spawn(async move {
                    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    let _ = stream.set_nodelay(true);
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        let req = hyper::Request::post("/sink")
                            .header("host", "127.0.0.1")
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .expect("request");
                        let Ok(resp) = send.send_request(req).await else { break };
                        let _ = resp.into_body().collect().await;
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    })
    .join()
    .expect("raw client thread");
    done.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
}

/// A JSON object of about `n` bytes.
pub fn payload(n: usize) -> String {
    let filler = "x".repeat(n.saturating_sub(40));
    serde_json::json!({"user_id": "u_123", "pad": filler}).to_string()
}
