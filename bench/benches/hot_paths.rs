//! Criterion benchmarks of the hot paths:
//! signing (default and Standard Webhooks), topic + filter matching with
//! 10 / 1k / 100k destinations per tenant, shard routing, event
//! serialization, and one shard's delivery loop against an in-process sink.
//!
//! cargo bench -p outrider-bench --bench hot_paths

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use outrider_engine::config::{Config, Sources};
use outrider_engine::model::{Destination, Event, StringMap};
use outrider_engine::{routing, shard, signing, Engine};
use serde_json::json;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut m: HashMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    m.insert("AES_ENCRYPTION_SECRET".into(), "bench".into());
    Config::from_sources(&Sources::from_map(m)).expect("config")
}

fn event(data: &str) -> Event {
    let mut metadata = StringMap::new();
    metadata.insert("source".into(), "bench".into());
    Event {
        id: "evt_0123456789".into(),
        tenant_id: "t".into(),
        destination_id: None,
        topic: "order.created".into(),
        eligible_for_retry: true,
        time: 1_700_000_000_000,
        time_ns: 0,
        metadata,
        data: Arc::from(data),
        matched_destination_ids: vec![],
    }
}

fn signing(c: &mut Criterion) {
    let body = loadtest::payload(1024);
    let mut g = c.benchmark_group("signing_1KiB");
    g.throughput(Throughput::Elements(1));
    let signer = signing::DefaultSigner::new(&config(&[]).webhook).expect("signer");
    g.bench_function("default_v0_hmac_sha256", |b| {
        b.iter(|| signer.header_value(black_box(&["whsec_0123456789abcdef"]), &body, "evt_1", "t", 0))
    });
    g.bench_function("default_two_secrets", |b| {
        b.iter(|| signer.header_value(black_box(&["whsec_new", "whsec_old"]), &body, "evt_1", "t", 0))
    });
    let key = [7u8; 32];
    g.bench_function("standard_webhooks_v1", |b| {
        b.iter(|| signing::standard_header_value(black_box(&[&key[..]]), "evt_1", 1_700_000_000, &body))
    });
    g.finish();
}

fn destinations(n: usize) -> Vec<Arc<Destination>> {
    (0..n)
        .map(|i| {
            // A realistic mix: a quarter wildcard, half on a few topics, a
            // quarter with a data filter.
            let (topics, filter) = match i % 4 {
                0 => (vec!["*".to_string()], None),
                1 => (vec!["order.*".to_string(), "user.created".to_string()], None),
                2 => (vec![format!("topic.{}", i % 50)], None),
                _ => (
                    vec!["*".to_string()],
                    Some(json!({"data": {"amount": {"$gte": i % 200}}})),
                ),
            };
            Arc::new(Destination {
                id: format!("des_{i}"),
                tenant_id: "t".into(),
                kind: "webhook".into(),
                topics,
                filter,
                config: StringMap::new(),
                credentials: StringMap::new(),
                delivery_metadata: None,
                metadata: None,
                created_at: 0,
                updated_at: 0,
                disabled_at: None,
            })
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let ev = event(r#"{"amount":120,"currency":"eur","customer":{"tier":"pro"}}"#);
    let mut g = c.benchmark_group("match_topic_and_filter");
    for n in [10usize, 1_000, 100_000] {
        let dests = destinations(n);
        g.throughput(Throughput::Elements(n as u64));
        if n == 100_000 {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &dests, |b, d| {
            b.iter(|| routing::matching(black_box(d), &ev))
        });
    }
    g.finish();
}

fn routing_to_shard(c: &mut Criterion) {
    let ids: Vec<String> = (0..1024).map(|i| format!("des_{i:08}")).collect();
    let mut g = c.benchmark_group("shard_routing");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("fnv1a_1024_ids", |b| {
        b.iter(|| ids.iter().map(|id| shard::shard_for(black_box(id), 8)).sum::<usize>())
    });
    g.finish();
}

fn serialization(c: &mut Criterion) {
    let body = format!(
        r#"{{"id":"evt_1","tenant_id":"t1","topic":"order.created","metadata":{{"source":"crm"}},"data":{}}}"#,
        loadtest::payload(1024)
    );
    #[derive(serde::Deserialize)]
    struct PublishBody<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
        #[allow(dead_code)]
        metadata: Option<StringMap>,
    }
    let mut g = c.benchmark_group("event_serialization_1KiB");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_publish_body_and_compact_data", |b| {
        b.iter(|| {
            let p: PublishBody = serde_json::from_str(black_box(&body)).expect("parse");
            outrider_engine::json::compact(p.data.get())
        })
    });
    let ev = event(&loadtest::payload(1024));
    g.bench_function("filter_document", |b| {
        b.iter(|| routing::filter_document(black_box(&ev)))
    });
    g.finish();
}

/// One shard, full path: durable accept → shard → HTTP POST to an in-process
/// sink → attempt and pending record committed.
fn shard_delivery(c: &mut Criterion) {
    let sink = loadtest::sink::start(None, Default::default(), "none-".into(), 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().display().to_string();
    let cfg = config(&[
        ("DELIVERY_SHARDS", "1"),
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("OUTRIDER_DATA_DIR", &data_dir),
    ]);
    let engine = rt.block_on(async {
        let e = Engine::start(cfg).await.expect("engine");
        e.upsert_tenant("t", None).await.expect("tenant");
        let mut d = (*destinations(1)[0]).clone();
        d.config.insert("url".into(), format!("http://{}/hook", sink.addr));
        d.credentials.insert("secret".into(), "whsec_bench".into());
        e.create_destination(d).await.expect("destination");
        e
    });
    let body: Arc<str> = Arc::from(loadtest::payload(1024));
    let mut g = c.benchmark_group("shard_delivery_loop");
    const BATCH: u64 = 2000;
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let mut seq = 0u64;
    g.bench_function("publish_to_delivered_2000_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start_attempts = engine.attempts_made();
                let t0 = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for w in 0..64u64 {
                        let (engine, body) = (engine.clone(), body.clone());
                        let base = seq;
                        tasks.push(tokio::spawn(async move {
                            for i in (w..BATCH).step_by(64) {
                                let mut ev = event("{}");
                                ev.id = format!("evt_{}_{i}", base);
                                ev.data = body.clone();
                                ev.tenant_id = "t".into();
                                engine.publish(ev).await.expect("publish");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("publisher");
                    }
                    while engine.attempts_made() < start_attempts + BATCH {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                });
                total += t0.elapsed();
                seq += 1;
            }
            total
        })
    });
    g.finish();
    rt.block_on(engine.shutdown());
}

criterion_group!(
    benches,
    signing,
    matching,
    routing_to_shard,
    serialization,
    shard_delivery
);
criterion_main!(benches);
