//! One delivery shard's deliveries/s to a loopback sink, beside a raw
//! keep-alive client into the same sink on the same core, in the same run.
//!
//! cargo run --release -p outrider-bench --bin shard_vs_raw -- [seconds] [payload_bytes] [full|normal] [concurrent_publishers]
//!
//! The engine path measured is the real one minus HTTP parsing of the publish
//! request: `Engine::publish` (match, durable accept in the shard's journal) →
//! shard (sign, HTTP/1.1 keep-alive POST) → attempt + pending record settled
//! in SQLite. Sink pinned to core 1, shard and raw client to core 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outrider_engine::config::{Config, Sources};
use outrider_engine::model::{Destination, Event, StringMap};
use outrider_engine::Engine;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let sync = args.get(3).cloned().unwrap_or_else(|| "full".into());
    let dur = Duration::from_secs(secs);
    let publishers: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(256);
    let body = loadtest::payload(size);
    let sink = loadtest::sink::start(Some(1), Default::default(), "none-".into(), 1);
    let (addr, sink_count) = (sink.addr, sink.stats.clone());

    // Interleave: raw, engine, raw — the machine is noisy. The raw client is
    // one thread pinned beside the shard (core 0), the sink on core 1.
    let raw = |body: &str| {
        let b = Bytes::from(body.to_string());
        std::thread::scope(|s| {
            s.spawn(|| {
                loadtest::pin(Some(0));
                loadtest::client::raw_baseline(addr, 1, 64, b, dur)
            })
            .join()
            .expect("raw client")
        })
    };
    let raw1 = raw(&body);
    let engine = engine_run(addr, &body, dur, &sync, publishers);
    let raw2 = raw(&body);
    let raw = (raw1 + raw2) / 2.0;
    println!(
        "{{\"payload_bytes\":{size},\"seconds\":{secs},\"sync\":\"{sync}\",\"raw_client_rps\":[{raw1:.0},{raw2:.0}],\"engine_deliveries_per_s\":{engine:.0},\"ratio\":{:.3},\"sink_total\":{}}}",
        engine / raw,
        sink_count.requests.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn engine_run(addr: std::net::SocketAddr, body: &str, dur: Duration, sync: &str, publishers: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let env: HashMap<String, String> = [
        ("AES_ENCRYPTION_SECRET", "bench"),
        ("DELIVERY_SHARDS", "1"),
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("OUTRIDER_EMBEDDED_SYNCHRONOUS", sync),
        ("DELIVERY_MAX_CONCURRENCY", "64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("OUTRIDER_DATA_DIR".to_string(), dir.path().display().to_string())])
    .collect();
    let config = Config::from_sources(&Sources::from_map(env)).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let body: Arc<str> = Arc::from(body);
    rt.block_on(async move {
        let engine = Engine::start(config).await.expect("engine");
        engine.upsert_tenant("bench", None).await.expect("tenant");
        let mut cfg = StringMap::new();
        cfg.insert("url".into(), format!("http://{addr}/hook"));
        let mut creds = StringMap::new();
        creds.insert("secret".into(), "whsec_bench".into());
        engine
            .create_destination(Destination {
                id: "des_bench".into(),
                tenant_id: "bench".into(),
                kind: "webhook".into(),
                topics: vec!["*".into()],
                filter: None,
                config: cfg,
                credentials: creds,
                delivery_metadata: None,
                metadata: None,
                created_at: 0,
                updated_at: 0,
                disabled_at: None,
            })
            .await
            .expect("destination");
        let stop = Instant::now() + dur + Duration::from_secs(1);
        let mut tasks = Vec::new();
        for p in 0..publishers {
            let engine = engine.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < stop {
                    let ev = Event {
                        id: format!("evt_{p}_{i}"),
                        tenant_id: "bench".into(),
                        destination_id: None,
                        topic: "bench".into(),
                        eligible_for_retry: true,
                        time: 0,
                        time_ns: 0,
                        metadata: StringMap::new(),
                        data: body.clone(),
                        matched_destination_ids: vec![],
                    };
                    engine.publish(ev).await.expect("publish");
                    i += 1;
                }
            }));
        }
        // 1 s warm-up, then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let a0 = engine.attempts_made();
        let t0 = Instant::now();
        tokio::time::sleep(dur).await;
        let rate = (engine.attempts_made() - a0) as f64 / t0.elapsed().as_secs_f64();
        for p in tasks {
            let _ = p.await;
        }
        engine.shutdown().await;
        rate
    })
}
