//! The shard engine's own guarantees: a SIGTERM drains without losing or
//! repeating deliveries, a large backlog restarts fast in bounded memory, and
//! one black-holed destination cannot starve another on the same shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn event_ids(rx: &Receiver) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for g in rx.got() {
        if let Some(id) = g.header("x-outpost-event-id") {
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

/// Publishes from `workers` clients until `stop` is set or the server goes
/// away; returns the ids that got a 202.
fn publish_until(
    api: &Api,
    workers: usize,
    topic: &'static str,
    stop: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..workers)
        .map(|w| {
            let api = api.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let http = reqwest::Client::new();
                for i in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) != 0 {
                        break;
                    }
                    let id = format!("{topic}_{w}_{i}");
                    let r = http
                        .post(format!("{}/publish", api.base))
                        .bearer_auth(&api.token)
                        .json(&json!({"id": id, "tenant_id": "t1", "topic": topic, "data": {"w": w, "i": i}}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => ok.push(id),
                        Ok(r) if r.status().is_server_error() => {}
                        _ => break, // the server is going away
                    }
                }
                ok
            })
        })
        .collect()
}

#[tokio::test]
async fn sigterm_drains_in_flight_attempts_and_a_restart_delivers_the_rest() {
    let mut s = Server::start(&[("DELIVERY_SHARDS", "2")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    // Slow answers keep attempts in flight when the signal comes.
    *rx.state.delay.lock().unwrap() = Duration::from_millis(200);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/a"), json!({})).await;
    api.webhook("t1", &rx.url("/b"), json!({})).await;
    let stop = Arc::new(AtomicUsize::new(0));
    let tasks = publish_until(&api, 8, "k", stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, took) = s.terminate(Duration::from_secs(30)).await;
    stop.store(1, Ordering::Relaxed);
    let mut accepted = Vec::new();
    for t in tasks {
        accepted.extend(t.await.unwrap());
    }
    let before = rx.count();
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    assert!(!accepted.is_empty());
    *rx.state.delay.lock().unwrap() = Duration::ZERO;
    s.spawn().await;
    let want = accepted.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.count() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything still arriving (a duplicate) would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<(String, String)> = rx
        .got()
        .iter()
        .filter_map(|g| Some((g.path.clone(), g.header("x-outpost-event-id")?)))
        .collect();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for k in got {
        *seen.entry(k).or_insert(0) += 1;
    }
    let lost = accepted
        .iter()
        .flat_map(|id| ["/a", "/b"].map(|p| (p.to_string(), id.clone())))
        .filter(|k| !seen.contains_key(k))
        .count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "SIGTERM drain: accepted {} events ({} deliveries), exit {:?} after {} ms, delivered before exit {}, after restart {}, lost {}, duplicates {}",
        accepted.len(),
        want,
        code,
        took.as_millis(),
        before,
        rx.count() - before,
        lost,
        duplicates
    );
    assert_eq!(lost, 0, "accepted deliveries lost across SIGTERM + restart");
    assert_eq!(duplicates, 0, "deliveries repeated across SIGTERM + restart");
}

/// Publishes to `topics` for `secs`; returns the healthy destination's
/// deliveries per second and the `ok` events accepted.
async fn healthy_rate(api: &Api, rx: &Receiver, topics: &[(&'static str, usize)], secs: u64) -> (f64, Vec<String>) {
    let stop = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (t, workers) in topics {
        tasks.push((*t, publish_until(api, *workers, t, stop.clone())));
    }
    let healthy = |rx: &Receiver| rx.got().iter().filter(|g| g.path == "/healthy").count();
    let (c0, t0) = (healthy(rx), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (healthy(rx) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let mut ok = Vec::new();
    for (t, ts) in tasks {
        for h in ts {
            let ids = h.await.unwrap();
            if t == "ok" {
                ok.extend(ids);
            }
        }
    }
    (rate, ok)
}

#[tokio::test]
async fn a_black_holed_destination_cannot_starve_another_on_its_shard() {
    let (hole, open, peak) = black_hole().await;
    let s = Server::start(&[
        ("DELIVERY_SHARDS", "1"),
        ("DELIVERY_MAX_CONCURRENCY", "64"),
        ("OUTRIDER_DESTINATION_MAX_CONCURRENCY", "8"),
        ("DELIVERY_TIMEOUT_SECONDS", "4"),
        ("RETRY_SCHEDULE", "3600"),
    ])
    .await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/healthy"), json!({"topics": ["ok"]})).await;
    api.webhook("t1", &format!("http://{hole}/never"), json!({"topics": ["slow"]}))
        .await;
    let (alone, _) = healthy_rate(&api, &rx, &[("ok", 2)], 2).await;
    // The black hole gets far more deliveries than the shard has slots (64),
    // each held for the 4 s timeout.
    let (beside, ok) = healthy_rate(&api, &rx, &[("ok", 2), ("slow", 2)], 3).await;
    // Every healthy event published beside the black hole arrives promptly.
    let deadline = Instant::now() + Duration::from_secs(3);
    let missing = loop {
        let ids = event_ids(&rx);
        let missing = ok.iter().filter(|id| !ids.contains_key(*id)).count();
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "noisy neighbour: healthy destination alone {alone:.0}/s, beside a black-holed one {beside:.0}/s ({:.2}x); {} healthy events published beside it, {missing} not delivered within 3 s of the end; black hole peak open connections {} (cap 8), open now {}",
        beside / alone.max(1.0),
        ok.len(),
        peak.load(Ordering::SeqCst),
        open.load(Ordering::SeqCst),
    );
    assert!(peak.load(Ordering::SeqCst) <= 8, "the per-destination cap held");
    assert!(!ok.is_empty());
    assert_eq!(missing, 0, "healthy deliveries were held up behind the black hole");
}

/// Writes `n` pending first attempts for one destination straight into the
/// journal of the shard that owns it, as a crashed node would leave them.
async fn write_backlog(data: &std::path::Path, shards: usize, destination: &str, prefix: &str, n: usize) {
    use outrider_engine::journal::{self, AcceptTarget, Journal, Progress, Record};
    let shard = outrider_engine::shard::shard_for(destination, shards);
    let dir = journal::shard_dir(&data.join("journal"), shard);
    let next = journal::list_segments(&dir).unwrap().last().map_or(0, |s| s + 1);
    let mut j = Journal::open(&dir, next, false, Arc::new(Progress::default()), None).unwrap();
    let body: String = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let event = Arc::new(outrider_engine::model::Event {
            id: format!("{prefix}{i}"),
            tenant_id: "t1".into(),
            destination_id: None,
            topic: "k".into(),
            eligible_for_retry: true,
            time: now,
            time_ns: 0,
            metadata: Default::default(),
            data: Arc::from(body.as_str()),
            matched_destination_ids: vec![destination.to_string()],
        });
        j.append(&Record::Accept {
            accepted_at: now,
            index_event: true,
            event,
            targets: vec![AcceptTarget {
                destination_id: destination.to_string(),
                attempt: 1,
                manual: false,
                due_ms: 0,
            }],
        });
        if i % 10_000 == 9_999 {
            j.flush();
        }
    }
    let c = j.commit();
    j.flush();
    c.await.unwrap().unwrap();
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak memory at a restart with a backlog: at most the idle server's, plus
/// a fixed allowance for what grows to a cap whatever the backlog (the
/// index follower's read buffers, SQLite's page cache, allocator arenas),
/// plus a cost per pending delivery. Measured (debug build): about 200 bytes
/// per pending delivery between 50,000 and 200,000, and 48 MiB above idle
/// with 50,000 (b477075). On 2026-12-06, with mimalloc (which keeps more at
/// a burst's peak): 53 to 77 MiB above idle with 50,000 over 6 runs (one CI
/// run 1 MiB over the old 64 MiB allowance), 103 MiB with 200,000: the
/// per-delivery cost unchanged (~250 B), the fixed part both larger and
/// noisier, so the allowance is 80 MiB.
const FIXED_KIB: u64 = 80 * 1024;
const PER_PENDING_BYTES: u64 = 256;

/// What one restart with a backlog of `n` did.
struct BacklogRun {
    listening: Duration,
    delivered_in: Duration,
    hwm_kib: u64,
    lost: usize,
    duplicates: usize,
}

/// Stops the server, writes `n` pending deliveries with ids `{prefix}{i}`,
/// restarts it and waits until they are delivered.
async fn backlog_restart(
    s: &mut Server,
    rx: &Receiver,
    dest: &str,
    prefix: &str,
    n: usize,
    shards_after: Option<&str>,
) -> BacklogRun {
    let (code, _) = s.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    if let Some(k) = shards_after {
        s.set_env("DELIVERY_SHARDS", k);
    }
    rx.state.got.lock().unwrap().clear();
    let t = Instant::now();
    write_backlog(&s.dir.join("data"), 2, dest, prefix, n).await;
    eprintln!(
        "backlog: wrote {n} pending deliveries in {} ms",
        t.elapsed().as_millis()
    );
    let t0 = Instant::now();
    s.spawn().await;
    let listening = t0.elapsed();
    let pid = s.pid().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 1000);
    while rx.count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_in = t0.elapsed();
    let hwm_kib = rss_kib(pid, "VmHWM:");
    let ids = event_ids(rx);
    BacklogRun {
        listening,
        delivered_in,
        hwm_kib,
        lost: (0..n).filter(|i| !ids.contains_key(&format!("{prefix}{i}"))).count(),
        duplicates: ids.values().map(|c| c - 1).sum(),
    }
}

#[tokio::test]
async fn a_large_backlog_restarts_fast_in_bounded_memory_then_delivers() {
    // 50,000 here; `OUTRIDER_TEST_BACKLOG=1000000` for the full-size run.
    let n: usize = std::env::var("OUTRIDER_TEST_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut s = Server::start(&[("DELIVERY_SHARDS", "2")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    // An id whose shard differs between 2 and 3 shards, so that a shard
    // count change moves the whole backlog.
    use outrider_engine::shard::shard_for;
    let id = (0..)
        .map(|k| format!("backlog-dest-{k}"))
        .find(|id| shard_for(id, 2) != shard_for(id, 3))
        .unwrap();
    let d = api.webhook("t1", &rx.url("/backlog"), json!({ "id": id })).await;
    let dest = d["id"].as_str().unwrap().to_string();
    let idle = rss_kib(s.pid().unwrap(), "VmHWM:");
    // `OUTRIDER_TEST_BACKLOG_SHARDS_AFTER=3`: the restart also changes the
    // shard count, so about a third of the backlog moves between shards.
    let after = std::env::var("OUTRIDER_TEST_BACKLOG_SHARDS_AFTER").ok();
    let r = backlog_restart(&mut s, &rx, &dest, "backlog_", n, after.as_deref()).await;
    let bound = idle + FIXED_KIB + n as u64 * PER_PENDING_BYTES / 1024;
    eprintln!(
        "backlog restart (DELIVERY_SHARDS 2 -> {}): {n} pending, healthy after {} ms, all delivered after {} ms, peak RSS {} MiB (idle server {} MiB, bound {} MiB = idle + {} MiB + {PER_PENDING_BYTES} B per pending), lost {}, duplicates {}",
        after.as_deref().unwrap_or("2"),
        r.listening.as_millis(),
        r.delivered_in.as_millis(),
        r.hwm_kib / 1024,
        idle / 1024,
        bound / 1024,
        FIXED_KIB / 1024,
        r.lost,
        r.duplicates
    );
    assert_eq!(r.lost, 0);
    assert!(
        r.listening < Duration::from_secs(10),
        "listening after {:?}",
        r.listening
    );
    assert!(
        r.hwm_kib <= bound,
        "peak RSS {} MiB over the bound {} MiB",
        r.hwm_kib / 1024,
        bound / 1024
    );
}

/// Pending deliveries follow their destinations when `DELIVERY_SHARDS`
/// changes between runs (3 → 2: some move between shards, shard 2's journal
/// has no shard any more), and the old journal goes once it is empty.
#[tokio::test]
async fn pending_deliveries_move_when_the_shard_count_changes() {
    let mut s = Server::start(&[("DELIVERY_SHARDS", "3"), ("RETRY_SCHEDULE", "2")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    *rx.state.always.lock().unwrap() = Some(503);
    api.tenant("t1").await;
    // Destination ids chosen so that two live on shard 2 (which goes away)
    // and two move between shards 0 and 1; two stay where they are.
    use outrider_engine::shard::shard_for;
    let (mut gone, mut moved, mut stay) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0.. {
        let id = format!("mv-dest-{k}");
        let (a, b) = (shard_for(&id, 3), shard_for(&id, 2));
        let bucket = if a == 2 {
            &mut gone
        } else if a != b {
            &mut moved
        } else {
            &mut stay
        };
        if bucket.len() < 2 {
            bucket.push(id);
        }
        if gone.len() + moved.len() + stay.len() == 6 {
            break;
        }
    }
    let ids: Vec<String> = gone.into_iter().chain(moved).chain(stay).collect();
    let paths: Vec<String> = (0..ids.len()).map(|i| format!("/d{i}")).collect();
    for (id, p) in ids.iter().zip(&paths) {
        api.webhook("t1", &rx.url(p), json!({ "id": id })).await;
    }
    let n = 40;
    for i in 0..n {
        let r = api
            .publish(json!({"id": format!("mv_{i}"), "tenant_id": "t1", "topic": "k", "data": {"i": i}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let want = n * paths.len();
    // Every first attempt failed; the retries are due 2 s later.
    rx.wait_for(want, Duration::from_secs(20)).await;
    let (code, _) = s.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    rx.state.got.lock().unwrap().clear();
    *rx.state.always.lock().unwrap() = None;
    s.set_env("DELIVERY_SHARDS", "2");
    s.spawn().await;
    let health = api.get("/healthz").await;
    assert_eq!(health.body["workers"]["delivery-shards"]["shards"], 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    while Instant::now() < deadline {
        seen.clear();
        for g in rx.got() {
            if let Some(id) = g.header("x-outpost-event-id") {
                *seen.entry((g.path.clone(), id)).or_insert(0) += 1;
            }
        }
        if seen.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "shard count 3 → 2: {want} deliveries pending across the restart, {} delivered after it, duplicates {duplicates}",
        seen.len()
    );
    assert_eq!(seen.len(), want, "every pending delivery reached its destination");
    assert_eq!(duplicates, 0);
    // Settled everywhere: the journal of shard 2 is removed at the next start.
    let journal = s.dir.join("data").join("journal");
    let (code, _) = s.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.spawn().await;
    let pending = api.get("/healthz").await.body["workers"]["delivery-shards"]["pending_deliveries"].clone();
    assert_eq!(pending, 0, "nothing left pending");
    let left: Vec<(String, u64)> = std::fs::read_dir(journal.join("0002"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !journal.join("0002").exists(),
        "the journal of the shard that is gone was removed; left: {left:?}"
    );
    assert_eq!(
        rx.count(),
        seen.values().sum::<usize>(),
        "no delivery repeated after the second restart"
    );
}
