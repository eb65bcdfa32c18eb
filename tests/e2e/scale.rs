//! Scale-out and faults: one API node and two delivery nodes sharing Redis,
//! PostgreSQL and RabbitMQ; 10k events over 200 destinations; a delivery node
//! killed mid-run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_engine::alerts::AlertState;
use serde_json::json;

use crate::common::*;
use crate::postgres::{fresh_schema, pg_url};

const TENANTS: usize = 20;
const PER_TENANT: usize = 10;

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

struct Cluster {
    api_node: Server,
    delivery: Vec<Server>,
    dep: String,
    pg: tokio_postgres::Client,
    rx: Receiver,
    /// (tenant, topic) → destination id; topic `k0` destinations always fail.
    dests: HashMap<(usize, usize), String>,
}

async fn cluster(tag: &str) -> Cluster {
    let id = format!("{}{}", std::process::id(), free_port());
    let (url, pg) = fresh_schema(&pg_url()).await;
    let dep = format!("s{id}");
    let queue = format!("outrider-e2e-{tag}-{id}");
    let env = |service: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("SERVICE", service.to_string()),
            ("REDIS_HOST", "127.0.0.1".to_string()),
            ("DEPLOYMENT_ID", dep.clone()),
            ("POSTGRES_URL", url.clone()),
            ("RETRY_SCHEDULE", "1".to_string()),
            ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".to_string()),
            ("RABBITMQ_EXCHANGE", "outrider-e2e".to_string()),
            ("RABBITMQ_DELIVERY_QUEUE", queue.clone()),
            ("DELIVERY_SHARDS", "2".to_string()),
        ]
    };
    let (a, d) = (env("api"), env("delivery"));
    let api_node = Server::start(&refs(&a)).await;
    let delivery = vec![Server::start(&refs(&d)).await, Server::start(&refs(&d)).await];
    let rx = Receiver::start().await;
    *rx.state.fail_prefix.lock().unwrap() = Some("/fail/".into());
    let api = Api::admin(&api_node);
    let mut dests = HashMap::new();
    for t in 0..TENANTS {
        api.tenant(&format!("t{t}")).await;
        for k in 0..PER_TENANT {
            let path = if k == 0 {
                format!("/fail/{t}/{k}")
            } else {
                format!("/ok/{t}/{k}")
            };
            let d = api
                .webhook(&format!("t{t}"), &rx.url(&path), json!({"topics": [format!("k{k}")]}))
                .await;
            dests.insert((t, k), d["id"].as_str().unwrap().to_string());
        }
    }
    Cluster {
        api_node,
        delivery,
        dep,
        pg,
        rx,
        dests,
    }
}

/// Event `i` goes to exactly one destination: tenant `i % 20`, topic `k{(i / 20) % 10}`.
fn event(i: usize) -> serde_json::Value {
    json!({"id": format!("ev-{i}"), "tenant_id": format!("t{}", i % TENANTS),
           "topic": format!("k{}", (i / TENANTS) % PER_TENANT), "data": {"i": i}})
}

fn failing(i: usize) -> bool {
    (i / TENANTS).is_multiple_of(PER_TENANT)
}

/// Publishes `n` events with 16 concurrent clients; `during` runs once
/// `at` events were accepted. Returns the accepted count.
async fn publish_all(api_node: &Server, n: usize, at: usize, during: impl FnOnce()) -> usize {
    let api = Arc::new(Api::admin(api_node));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (api, next, accepted) = (api.clone(), next.clone(), accepted.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let r = api.publish(event(i)).await;
                assert_eq!(r.status, 202, "publish {i}: {}", r.text);
                assert_eq!(r.body["destination_ids"].as_array().map(|a| a.len()), Some(1));
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let mut during = Some(during);
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < n && !workers.iter().all(|w| w.is_finished()) {
        if accepted.load(std::sync::atomic::Ordering::Relaxed) >= at {
            if let Some(f) = during.take() {
                f();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    accepted.load(std::sync::atomic::Ordering::Relaxed)
}

/// Per event id, how many successful deliveries and failed attempts the receiver saw.
fn tally(rx: &Receiver) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let (mut ok, mut failed) = (HashMap::new(), HashMap::new());
    for r in rx.got() {
        let id = r.header("x-outpost-event-id").unwrap_or_default();
        let m = if r.path.starts_with("/fail/") {
            &mut failed
        } else {
            &mut ok
        };
        *m.entry(id).or_insert(0) += 1;
    }
    (ok, failed)
}

/// Waits until every healthy event arrived and every failing one was tried twice.
async fn wait_done(rx: &Receiver, n: usize, timeout: Duration) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let healthy = (0..n).filter(|&i| !failing(i)).count();
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, failed) = tally(rx);
        let tries: usize = failed.values().map(|&c| c.min(2)).sum();
        if (ok.len() >= healthy && tries >= 2 * (n - healthy)) || Instant::now() >= deadline {
            return (ok, failed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pg_count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn two_delivery_nodes_deliver_10k_events_over_200_destinations() {
    const N: usize = 10_000;
    let c = cluster("scale").await;
    let started = Instant::now();
    let accepted = publish_all(&c.api_node, N, usize::MAX, || {}).await;
    let published_in = started.elapsed();
    let (ok, failed) = wait_done(&c.rx, N, Duration::from_secs(180)).await;
    let delivered_in = started.elapsed();
    let healthy: HashSet<String> = (0..N).filter(|&i| !failing(i)).map(|i| format!("ev-{i}")).collect();
    let lost = healthy.iter().filter(|id| !ok.contains_key(*id)).count();
    let duplicates: usize = ok.values().map(|&c| c - 1).sum();
    let failed_attempts: usize = failed.values().sum();
    eprintln!(
        "scale: published={accepted} in {published_in:?}; delivered={} (healthy destinations) in {delivered_in:?}; \
         duplicates={duplicates}; lost={lost}; failed attempts={failed_attempts} over {} failing events",
        ok.len(),
        failed.len()
    );
    assert_eq!(accepted, N);
    assert_eq!(lost, 0, "every accepted event delivered");
    assert_eq!(
        failed.len(),
        N / PER_TENANT,
        "every event of a failing destination tried"
    );
    // Both delivery nodes took part.
    for (n, node) in c.delivery.iter().enumerate() {
        let h = Api::admin(node).get("/healthz").await;
        assert_eq!(h.status, 200, "delivery node {n}");
    }
    // Attempts all in PostgreSQL (the log pipelines ship within about a second).
    let want_attempts = (ok.values().sum::<usize>() + failed_attempts) as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (events, attempts) = loop {
        let e = pg_count(&c.pg, "SELECT count(*) FROM events").await;
        let a = pg_count(&c.pg, "SELECT count(*) FROM attempts").await;
        if (e >= N as i64 && a >= want_attempts) || Instant::now() >= deadline {
            break (e, a);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("scale: postgres events={events} attempts={attempts} (receiver saw {want_attempts})");
    assert_eq!(events, N as i64);
    assert_eq!(attempts, want_attempts);
    // Consecutive-failure counters in Redis: each failing destination's equals its failed attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis = outrider_engine::store::redis::RedisEntityStore::connect(
        &outrider_engine::store::redis::RedisConfig::plain("127.0.0.1", 6379),
        &c.dep,
        outrider_engine::crypto::Cipher::new("x"),
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("Redis is required for this test: {e}"));
    let mut sum = 0;
    for t in 0..TENANTS {
        for k in 0..PER_TENANT {
            let id = &c.dests[&(t, k)];
            let counter = redis.failures(id.clone()).await.unwrap();
            let in_pg = pg_count(
                &c.pg,
                &format!("SELECT count(*) FROM attempts WHERE destination_id = '{id}' AND status = 'failed'"),
            )
            .await as u64;
            assert_eq!(counter, in_pg, "destination {t}/{k}: counter vs failed attempts");
            sum += counter;
        }
    }
    eprintln!("scale: sum of Redis failure counters={sum}, failed attempts={failed_attempts}");
    assert_eq!(sum as usize, failed_attempts);
}

#[tokio::test]
async fn a_killed_delivery_node_leaves_its_work_to_the_other() {
    const N: usize = 3_000;
    let mut c = cluster("kill").await;
    let mut victim = c.delivery.pop().unwrap();
    let started = Instant::now();
    let accepted = publish_all(&c.api_node, N, N / 3, || victim.kill9()).await;
    let (ok, failed) = wait_done(&c.rx, N, Duration::from_secs(120)).await;
    let healthy: HashSet<String> = (0..N).filter(|&i| !failing(i)).map(|i| format!("ev-{i}")).collect();
    let lost = healthy.iter().filter(|id| !ok.contains_key(*id)).count();
    let duplicates: usize = ok.values().map(|&c| c - 1).sum();
    eprintln!(
        "kill: published={accepted}; delivered={} in {:?} with one delivery node killed at {} accepted; \
         duplicates={duplicates}; lost={lost}; failing events tried={}",
        ok.len(),
        started.elapsed(),
        N / 3,
        failed.len()
    );
    assert_eq!(accepted, N);
    assert_eq!(lost, 0, "the surviving node finished the work");
    assert_eq!(failed.len(), N / PER_TENANT);
    // Everything the dead node had recorded reaches PostgreSQL once it is back.
    victim.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let e = pg_count(&c.pg, "SELECT count(*) FROM events").await;
        if e >= N as i64 || Instant::now() >= deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events, N as i64);
}
