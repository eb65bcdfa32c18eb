//! The journal across segment rotation, collection and `kill -9`: nothing
//! settled comes back, no retry runs early or with its count reset, nothing
//! pending is dropped, and one data directory serves one process.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// Journal segment files of shard `shard` under the default journal dir.
fn segments(data: &Path, shard: usize) -> Vec<std::path::PathBuf> {
    segments_in(&data.join("journal"), shard)
}

/// Journal segment files of shard `shard` under journal dir `root`.
fn segments_in(root: &Path, shard: usize) -> Vec<std::path::PathBuf> {
    let dir = root.join(format!("{shard:04}"));
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn attempts_of(body: &serde_json::Value) -> Vec<(String, u64, String)> {
    body["models"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                a["destination_id"].as_str().unwrap_or_default().to_string(),
                a["attempt_number"].as_u64().unwrap_or_default(),
                a["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Reproduces the collection bug: a delivery pending in an old segment
/// (a failing destination's retry due in an hour, a slow destination whose
/// timeout settles it many segments later) while another tenant's healthy
/// traffic rotates and collects segments; then `kill -9` and a restart.
#[tokio::test]
async fn collected_segments_bring_back_no_settled_delivery_and_no_early_retry() {
    let mut s = Server::start(&[
        ("DELIVERY_SHARDS", "1"),
        ("RETRY_SCHEDULE", "3600"),
        ("DELIVERY_TIMEOUT_SECONDS", "1"),
        ("OUTRIDER_JOURNAL_SEGMENT_BYTES", "65536"),
    ])
    .await;
    let api = Api::admin(&s);
    let failing = Receiver::start().await;
    *failing.state.always.lock().unwrap() = Some(500);
    let slow = Receiver::start().await;
    *slow.state.delay.lock().unwrap() = Duration::from_secs(3);
    let healthy = Receiver::start().await;
    api.tenant("t1").await;
    api.tenant("t2").await;
    api.webhook("t1", &failing.url("/a"), json!({})).await;
    api.webhook("t1", &slow.url("/b"), json!({})).await;
    api.webhook("t2", &healthy.url("/c"), json!({})).await;

    let r = api
        .publish(json!({"id": "e1", "tenant_id": "t1", "topic": "k", "data": {"n": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // ~2 KB events: 600 of them fill about 20 segments of 64 KiB.
    let pad = "x".repeat(2000);
    let n = 600;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let r = api
                    .publish(
                        json!({"id": format!("c{i}"), "tenant_id": "t2", "topic": "k", "data": {"i": i, "pad": pad}}),
                    )
                    .await;
                assert_eq!(r.status, 202, "{}", r.text);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = healthy.wait_for(n, Duration::from_secs(60)).await;
    assert_eq!(got.len(), n, "healthy destination got every event once before the kill");
    let data = s.dir.join("data");
    // Collection and compaction run: the retries pending in segment 0 must
    // not keep 20 segments on disk.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut on_disk = segments(&data, 0).len();
    while on_disk > 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        on_disk = segments(&data, 0).len();
    }
    eprintln!("segments on disk with 2 retries pending after 600 x 2 KB events: {on_disk}");
    assert!(on_disk <= 3, "{on_disk} segments kept for 2 pending retries");
    assert_eq!(failing.arrivals(), 1);
    assert_eq!(slow.arrivals(), 1);

    s.kill9();
    s.spawn().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(healthy.count(), n, "delivered events were sent again after the restart");
    assert_eq!(
        failing.arrivals(),
        1,
        "a retry due in an hour ran at once after the restart"
    );
    assert_eq!(
        slow.arrivals(),
        1,
        "a retry due in an hour ran at once after the restart"
    );
    let a = attempts_of(&api.get("/attempts?event_id=e1").await.body);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a.iter().all(|(_, n, st)| *n == 1 && st == "failed"), "{a:?}");

    // A second kill after the carried records are the only copy.
    s.kill9();
    s.spawn().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(healthy.count(), n);
    assert_eq!(failing.arrivals() + slow.arrivals(), 2);
}

/// A delivery whose event cannot be read back (here: its segment is
/// briefly out of reach) is tried again, never settled as done.
#[tokio::test]
async fn an_event_that_cannot_be_read_back_is_retried_not_dropped() {
    let s = Server::start(&[("DELIVERY_SHARDS", "1"), ("RETRY_SCHEDULE", "2")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().push_back(500);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/r"), json!({})).await;
    let r = api
        .publish(json!({"id": "e1", "tenant_id": "t1", "topic": "k", "data": {}}))
        .await;
    assert_eq!(r.status, 202);
    rx.wait_for(1, Duration::from_secs(5)).await;
    // The retry (due in 2 s) reads its event from the journal: hide it.
    let data = s.dir.join("data");
    let segs = segments(&data, 0);
    assert!(!segs.is_empty());
    for p in &segs {
        std::fs::rename(p, p.with_extension("hidden")).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(rx.count(), 1, "no attempt can run without the event");
    for p in &segs {
        std::fs::rename(p.with_extension("hidden"), p).unwrap();
    }
    let got = rx.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "the delivery was dropped after a read error");
    let a = api
        .wait_attempts("event_id=e1", Duration::from_secs(5), |m| m.len() == 2)
        .await;
    let mut a = attempts_of(&json!({ "models": a }));
    a.sort_by_key(|x| x.1);
    assert_eq!(
        a.iter().map(|x| (x.1, x.2.as_str())).collect::<Vec<_>>(),
        vec![(1, "failed"), (2, "success")]
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let s = Server::start(&[]).await;
    let data = s.dir.join("data");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_outrider"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_PORT", free_port().to_string())
        .env("API_KEY", API_KEY)
        .env("AES_ENCRYPTION_SECRET", "test-aes-secret")
        .env("OUTRIDER_DATA_DIR", &data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second process started on a data directory in use");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("in use by another Outrider process"), "{err}");
    // The first one still serves.
    assert_eq!(Api::admin(&s).get("/tenants/none").await.status, 404);
}

/// SIGTERM with a client that never finishes its request (a publish whose
/// body never comes): the process still exits, within the drain time.
#[tokio::test]
async fn sigterm_exits_within_the_drain_time_despite_a_request_that_never_ends() {
    use tokio::io::AsyncWriteExt;
    let mut s = Server::start(&[("OUTRIDER_SHUTDOWN_DRAIN_SECONDS", "2")]).await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    sock.write_all(
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"tenant_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, took) = s.terminate(Duration::from_secs(20)).await;
    eprintln!("SIGTERM with a request that never ends: exit {code:?} after {took:?}");
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    drop(sock);
}

/// `OUTRIDER_JOURNAL_DIR` puts the journals elsewhere (a disk of their
/// own): the segments are written there, `kill -9` + restart replays them
/// from there, a start that would leave segments behind in the old place is
/// refused, and a journal moved whole starts.
#[tokio::test]
async fn a_journal_in_its_own_directory_replays_from_there_and_a_move_is_checked() {
    let jtmp = tempfile::tempdir().unwrap();
    let first = jtmp.path().join("j1");
    let mut s = Server::start(&[
        ("DELIVERY_SHARDS", "1"),
        ("RETRY_SCHEDULE", "8"),
        ("OUTRIDER_JOURNAL_DIR", first.to_str().unwrap()),
    ])
    .await;
    let api = Api::admin(&s);
    let failing = Receiver::start().await;
    *failing.state.always.lock().unwrap() = Some(500);
    let healthy = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &failing.url("/a"), json!({"topics": ["f"]})).await;
    api.webhook("t1", &healthy.url("/b"), json!({"topics": ["h"]})).await;
    let r = api
        .publish(json!({"id": "e-fail", "tenant_id": "t1", "topic": "f", "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    for i in 0..20 {
        let r = api
            .publish(json!({"id": format!("e{i}"), "tenant_id": "t1", "topic": "h", "data": {"i": i}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    assert_eq!(healthy.wait_for(20, Duration::from_secs(20)).await.len(), 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while failing.arrivals() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failing.arrivals(), 1);
    // The index follows only what the journal made durable: once it lists
    // the 21 attempts, their settles survive the kill (an attempt whose
    // settle was not yet committed may be sent again, by design).
    let got = api
        .wait_attempts("limit=100", Duration::from_secs(20), |m| m.len() >= 21)
        .await;
    assert_eq!(got.len(), 21, "attempts indexed before the kill");
    let data = s.dir.join("data");
    assert!(
        !segments_in(&first, 0).is_empty(),
        "no segment under OUTRIDER_JOURNAL_DIR"
    );
    assert!(segments(&data, 0).is_empty(), "segments written under the data dir");
    s.kill9();

    // Without the setting the journal would be <data>/journal: the pending
    // retry in the first directory would be lost, so the start is refused.
    let (code, _, err) = Server::run_args(
        &[],
        &[
            ("PATH", &std::env::var("PATH").unwrap_or_default()),
            ("API_KEY", API_KEY),
            ("API_JWT_SECRET", JWT_SECRET),
            ("AES_ENCRYPTION_SECRET", "test-aes-secret"),
            ("OUTRIDER_DATA_DIR", data.to_str().unwrap()),
            ("DELIVERY_SHARDS", "1"),
        ],
    );
    assert_ne!(code, 0, "started with the journal's segments left behind: {err}");
    assert!(err.contains("still holds segments"), "{err}");

    // Moved whole, it starts and replays from the new place: nothing is sent
    // again, and the retry pending there (due 8 s after the first attempt)
    // runs, once.
    let second = jtmp.path().join("j2");
    std::fs::rename(&first, &second).unwrap();
    s.set_env("OUTRIDER_JOURNAL_DIR", second.to_str().unwrap());
    s.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while failing.arrivals() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        failing.arrivals(),
        2,
        "the retry pending in the moved journal did not run"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        healthy.count(),
        20,
        "delivered events were sent again after the restart"
    );
}
