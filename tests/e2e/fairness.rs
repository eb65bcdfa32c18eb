//! One tenant's destinations that never answer must not take a shard's
//! capacity from another tenant: deliveries and publishes go on.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// Publishes `n` events to `tenant` from 8 tasks; returns the time taken.
async fn publish_many(api: &Api, tenant: &str, prefix: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let (tenant, prefix) = (tenant.to_string(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let r = api
                    .publish(json!({"id": format!("{prefix}{i}"), "tenant_id": tenant, "topic": "k", "data": {"i": i}}))
                    .await;
                assert_eq!(r.status, 202, "{}", r.text);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

#[tokio::test]
async fn sixteen_black_holed_destinations_do_not_starve_another_tenant() {
    let s = Server::start(&[("DELIVERY_SHARDS", "1"), ("DELIVERY_TIMEOUT_SECONDS", "5")]).await;
    let api = Api::admin(&s);
    let good = Receiver::start().await;
    api.tenant("good").await;
    api.webhook("good", &good.url("/g"), json!({})).await;

    // Alone.
    let t0 = Instant::now();
    let publish_alone = publish_many(&api, "good", "a", 300).await;
    let got = good.wait_for(300, Duration::from_secs(30)).await.len();
    let alone = t0.elapsed();
    assert_eq!(got, 300);

    // Beside 16 black holes of another tenant, each with a deep backlog.
    let (hole, _, _) = black_hole().await;
    api.tenant("bad").await;
    for i in 0..16 {
        api.webhook("bad", &format!("http://{hole}/b{i}"), json!({})).await;
    }
    let publish_bad = publish_many(&api, "bad", "b", 1500).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let publish_beside = publish_many(&api, "good", "c", 300).await;
    let got = good.wait_for(600, Duration::from_secs(30)).await.len();
    let beside = t0.elapsed();
    eprintln!(
        "fairness (1 shard): healthy 300 events alone {alone:?} (publishes {publish_alone:?}); \
         beside 16 black holes with 1,500 events (24,000 deliveries; published in {publish_bad:?}): \
         {beside:?} (publishes {publish_beside:?})"
    );
    assert_eq!(got, 600, "the healthy tenant's events did not all arrive");
    assert!(
        beside <= Duration::from_secs(3),
        "300 events took {beside:?} beside the black holes"
    );
    assert!(
        publish_beside <= publish_alone * 2 + Duration::from_millis(300),
        "publishes slowed from {publish_alone:?} to {publish_beside:?}"
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Events queued behind a destination that does not answer stay in memory
/// up to a byte bound (64 MiB a shard), not a count: 300 events of ~1 MB
/// queued must not cost 300 MB.
#[tokio::test]
async fn queued_large_events_are_bounded_in_bytes_not_count() {
    let s = Server::start(&[("DELIVERY_SHARDS", "1"), ("DELIVERY_TIMEOUT_SECONDS", "60")]).await;
    let api = Api::admin(&s);
    let (hole, _, _) = black_hole().await;
    api.tenant("t1").await;
    api.webhook("t1", &format!("http://{hole}/big"), json!({})).await;
    let pid = s.pid().unwrap();
    let idle = vm_hwm_kib(pid);
    let big = "y".repeat(1_000_000);
    for i in 0..300 {
        let r = api
            .publish(json!({"id": format!("big{i}"), "tenant_id": "t1", "topic": "k", "data": {"b": big}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = vm_hwm_kib(pid).saturating_sub(idle) / 1024;
    eprintln!("300 queued events of 1 MB: peak RSS grew {grown} MiB above idle");
    // Without the byte bound this grew 310 MiB; with it 96 MiB when the
    // test was written (2026-12-04) and 145-163 MiB on 2026-12-05 (another
    // machine, mimalloc by then the default allocator; 163 under the full
    // parallel test run). 200 keeps a count-only bound failing.
    assert!(grown <= 200, "peak RSS grew {grown} MiB with 300 MB of queued events");
}
