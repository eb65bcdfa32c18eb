use super::*;
use crate::config::Sources;
use crate::model::StringMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP sink that reports each request, then answers 200 only when
/// released.
async fn gated_sink() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<()>,
    tokio::sync::mpsc::Sender<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::mpsc::channel(16);
    let (rel_tx, mut rel_rx) = tokio::sync::mpsc::channel::<()>(16);
    tokio::spawn(async move {
        let (mut sock, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a full request");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        got_tx.send(()).await.unwrap();
        rel_rx.recv().await;
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let _ = sock.read(&mut chunk).await;
    });
    (addr, got_rx, rel_tx)
}

/// An engine on `dir` with one shard, the SSRF guard off and `extra` settings.
async fn start_engine(dir: &std::path::Path, extra: &[(&str, &str)]) -> Arc<Engine> {
    let mut m = std::collections::HashMap::new();
    for (k, v) in [
        ("AES_ENCRYPTION_SECRET", "test"),
        ("DELIVERY_SHARDS", "1"),
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]
    .iter()
    .chain(extra)
    {
        m.insert(k.to_string(), v.to_string());
    }
    m.insert("OUTRIDER_DATA_DIR".into(), dir.display().to_string());
    Engine::start(Config::from_sources(&Sources::from_map(m)).unwrap())
        .await
        .unwrap()
}

/// A destination of tenant `t` on every topic.
fn destination(id: &str, kind: &str, config: StringMap, credentials: StringMap) -> Destination {
    Destination {
        id: id.into(),
        tenant_id: "t".into(),
        kind: kind.into(),
        topics: vec!["*".into()],
        filter: None,
        config,
        credentials,
        delivery_metadata: None,
        metadata: None,
        created_at: 1,
        updated_at: 1,
        disabled_at: None,
    }
}

fn webhook_config(addr: std::net::SocketAddr) -> StringMap {
    let mut config = StringMap::new();
    config.insert("url".into(), format!("http://{addr}/hook"));
    config
}

/// A first-attempt queue task of `tenant`'s event `id` for `destination`.
fn task(id: &str, tenant: &str, destination: &str, data: &str) -> Task {
    Task {
        event: Arc::new(Event {
            id: id.into(),
            tenant_id: tenant.into(),
            destination_id: None,
            topic: "k".into(),
            eligible_for_retry: true,
            time: now_ms(),
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from(data),
            matched_destination_ids: vec![destination.into()],
        }),
        destination_id: destination.into(),
        attempt: 1,
        manual: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_delivery_is_acked_only_after_its_outcome_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut got, release) = gated_sink().await;
    let engine = start_engine(dir.path(), &[]).await;
    engine.upsert_tenant("t", None).await.unwrap();
    let mut credentials = StringMap::new();
    credentials.insert("secret".into(), "whsec_test".into());
    engine
        .create_destination(destination("d1", "webhook", webhook_config(addr), credentials))
        .await
        .unwrap();
    let task = task("e1", "t", "d1", "{\"a\":1}");
    let e2 = engine.clone();
    let mut acked = tokio::spawn(async move { e2.receive(task).await });
    got.recv().await.unwrap();
    // The attempt is running; hold the journal's commits, then let it end.
    let progress = engine.shard_handles()[0].progress.clone();
    progress.hold.store(true, std::sync::atomic::Ordering::Release);
    release.send(()).await.unwrap();
    let journal = crate::journal::shard_dir(&dir.path().join("journal"), 0);
    tokio::select! {
        r = &mut acked => panic!("acked before its outcome was committed: {r:?}"),
        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
    }
    let on_disk = crate::journal::replay::replay(&journal, 0).unwrap();
    assert_eq!(on_disk.pending.len(), 1, "outcome not on disk while commits are held");
    progress.hold.store(false, std::sync::atomic::Ordering::Release);
    tokio::time::timeout(std::time::Duration::from_secs(5), acked)
        .await
        .expect("acked once committed")
        .unwrap()
        .unwrap();
    let on_disk = crate::journal::replay::replay(&journal, 0).unwrap();
    assert_eq!(
        on_disk.pending.len(),
        0,
        "the outcome is committed when the ack is given"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_naming_another_tenants_destination_is_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut got, _release) = gated_sink().await;
    let engine = start_engine(dir.path(), &[]).await;
    engine.upsert_tenant("t", None).await.unwrap();
    engine.upsert_tenant("other", None).await.unwrap();
    engine
        .create_destination(destination("d1", "webhook", webhook_config(addr), StringMap::new()))
        .await
        .unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        engine.receive(task("e1", "other", "d1", "{}")),
    )
    .await
    .expect("settled")
    .expect("acked");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), got.recv())
            .await
            .is_err(),
        "delivered to another tenant's destination"
    );
    let dropped = engine.shard_handles()[0]
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1);
    assert_eq!(engine.attempts_made(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_releases_its_slot_and_is_retried_on_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut got, release) = gated_sink().await;
    // One slot: a slot leaked by the panic would block the next delivery.
    let engine = start_engine(
        dir.path(),
        &[("DELIVERY_MAX_CONCURRENCY", "1"), ("RETRY_SCHEDULE", "1")],
    )
    .await;
    engine.upsert_tenant("t", None).await.unwrap();
    engine
        .create_destination(destination("dp", "test_panic", StringMap::new(), StringMap::new()))
        .await
        .unwrap();
    engine
        .create_destination(destination("dw", "webhook", webhook_config(addr), StringMap::new()))
        .await
        .unwrap();
    let stats = engine.shard_handles()[0].stats.clone();
    let panics = || stats.panics.load(std::sync::atomic::Ordering::Relaxed);
    // The attempt panics: its outcome is a failed attempt (no ack for the task).
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        engine.receive(task("e1", "t", "dp", "{}")),
    )
    .await
    .expect("the panicked delivery settles");
    assert!(r.is_err(), "{r:?}");
    // The task's sender is dropped while the panic unwinds, a moment before
    // the shard counts it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while panics() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(panics(), 1);
    // The only slot is free again: another destination is delivered to.
    let e2 = engine.clone();
    let ok = tokio::spawn(async move { e2.receive(task("e2", "t", "dw", "{}")).await });
    tokio::time::timeout(std::time::Duration::from_secs(5), got.recv())
        .await
        .expect("the slot was released")
        .unwrap();
    release.send(()).await.unwrap();
    ok.await.unwrap().unwrap();
    // Retried once on the schedule (1 s), then done: nothing left pending.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (panics() < 2 || engine.pending_deliveries() > 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(panics(), 2, "one retry after the panic, then exhausted");
    assert_eq!(engine.pending_deliveries(), 0);
    assert_eq!(engine.shards_running(), 1);
}

/// Item 8 of the journal issue: a dead index follower silently stopped
/// segment collection and index updates, and nothing said so. Its thread
/// ending (as after a panic; here through its stop flag) now reads as not
/// running, which `/healthz` reports as a failed `journal-index` worker
/// (503), while the shards go on delivering.
#[tokio::test]
async fn a_dead_index_follower_reads_as_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &[]).await;
    assert!(engine.index_running());
    engine.index_stop.store(true, std::sync::atomic::Ordering::Release);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while engine.index_running() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!engine.index_running(), "the follower's end is seen");
    assert_eq!(
        engine.shards_running(),
        engine.shard_count(),
        "the shards are not affected"
    );
    engine.shutdown().await;
}

/// Issue 34, item 1: the API's accept loops are started through
/// `on_shard_threads`. What each start spawns must run on that shard's own
/// thread (so a publish read there shares the shard's core), on every shard,
/// and keep running after the start returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_started_on_the_shards_runs_on_their_threads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &[("DELIVERY_SHARDS", "3")]).await;
    assert_eq!(engine.shard_count(), 3);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .on_shard_threads(|i| {
            let tx = tx.clone();
            Box::new(move || {
                // Spawned, then run later by the shard's runtime.
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let name = std::thread::current().name().map(String::from);
                    let _ = tx.send((i, name));
                });
            })
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a spawned task ran")
            .unwrap();
        seen.push(got);
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..3)
            .map(|i| (i, Some(format!("outrider-shard-{i}"))))
            .collect::<Vec<_>>()
    );
    engine.shutdown().await;
}

/// Issue 34 (provisioning): one lock for every control-plane write made
/// each create wait for the previous one's sync, so 64 tenants created at
/// once took 64 store commits. Different tenants now share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_created_at_once_share_store_commits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &[]).await;
    let stats = engine.store.writer_stats.clone();
    let before = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let creates: Vec<_> = (0..64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.upsert_tenant(&format!("t{i}"), None).await.map(|(_, c)| c) })
        })
        .collect();
    for c in creates {
        assert!(c.await.unwrap().unwrap(), "created");
    }
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(commits <= 32, "64 tenant creates took {commits} store commits");
    engine.shutdown().await;
}

/// Two tenants' creates no longer exclude each other, so a destination id
/// (unique across tenants: shards route by it) is held while it is created:
/// of two tenants creating the same id at once, exactly one gets it, and the
/// other's create does not replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_destination_id_created_by_two_tenants_at_once_goes_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &[]).await;
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for round in 0..20 {
        let (a, b) = (format!("ta{round}"), format!("tb{round}"));
        engine.upsert_tenant(&a, None).await.unwrap();
        engine.upsert_tenant(&b, None).await.unwrap();
        let id = format!("des_same_{round}");
        let create = |tenant: String| {
            let engine = engine.clone();
            let mut d = destination(&id, "webhook", webhook_config(addr), StringMap::new());
            d.tenant_id = tenant;
            tokio::spawn(async move { engine.create_destination(d).await })
        };
        let (ra, rb) = (create(a.clone()), create(b.clone()));
        let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
        assert!(ra.is_ok() != rb.is_ok(), "round {round}: exactly one create succeeds");
        let owner = if ra.is_ok() { &a } else { &b };
        let (_, stored) = engine.entities.load_entities().await.unwrap();
        let stored: Vec<_> = stored.into_iter().filter(|d| d.id == id).map(|d| d.tenant_id).collect();
        assert_eq!(stored, vec![owner.clone()], "round {round}");
        let other = if ra.is_ok() { &b } else { &a };
        assert!(engine.destination(other, &id).is_none(), "round {round}");
    }
    engine.shutdown().await;
}

/// A steady trickle of publishes (each one waiting for its journal commit,
/// so they arrive one by one) reaches the index in at most one transaction
/// per pause, not one per event: the follower waits after each transaction
/// even when it was small. Every event still gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_events_is_indexed_in_few_transactions() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    // No failure alerts: their operator events would be store writes too.
    let engine = start_engine(dir.path(), &[("ALERT_CONSECUTIVE_FAILURE_COUNT", "")]).await;
    engine.upsert_tenant("t", None).await.unwrap();
    // Nothing listens on port 9: each delivery fails at once and its
    // attempt is indexed too.
    let closed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    engine
        .create_destination(destination("d1", "webhook", webhook_config(closed), StringMap::new()))
        .await
        .unwrap();
    let stats = engine.store.writer_stats.clone();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (commits_before, records_before) = (stats.commits.load(Relaxed), stats.records.load(Relaxed));
    let started = std::time::Instant::now();
    const EVENTS: u64 = 200;
    for i in 0..EVENTS {
        let mut e = (*task(&format!("trickle-{i}"), "t", "d1", "{}").event).clone();
        e.matched_destination_ids.clear();
        engine.publish(e).await.unwrap();
    }
    let elapsed = started.elapsed();
    let commits = stats.commits.load(Relaxed) - commits_before;
    // LIGHT_PAUSE is 10 ms; a few more for the transaction in flight when
    // publishing began and the writer's other (entity) commits.
    let bound = elapsed.as_millis() as u64 / 10 + 5;
    assert!(
        commits <= bound,
        "{EVENTS} publishes over {elapsed:?} took {commits} index transactions (at most {bound})"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats.records.load(Relaxed) - records_before < EVENTS {
        assert!(
            std::time::Instant::now() < deadline,
            "the index did not take every event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    engine.shutdown().await;
}
