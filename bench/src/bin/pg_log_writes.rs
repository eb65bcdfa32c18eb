//! Log-write throughput into PostgreSQL: the log pipeline's batched writes
//! (`PostgresLogStore::write_logs`: one event and one attempt per delivery)
//! at several batch sizes, beside batches of one (a row-at-a-time writer),
//! measured in the same run against the same server.
//!
//! cargo run --release -p outrider-bench --bin pg_log_writes -- [postgres_url] [deliveries] [batch sizes, comma separated]
//!
//! Each batch size writes into a fresh schema, which is dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_engine::model::{Attempt, AttemptStatus, Event, StringMap};
use outrider_engine::store::postgres::PostgresLogStore;
use outrider_engine::store::LogWriter;

fn event(n: usize, now: i64) -> Arc<Event> {
    let mut metadata = StringMap::new();
    metadata.insert("source".into(), "bench".into());
    Arc::new(Event {
        id: format!("ev-{n}"),
        tenant_id: format!("t{}", n % 100),
        destination_id: None,
        topic: "order.created".into(),
        eligible_for_retry: true,
        time: now + n as i64,
        time_ns: 0,
        metadata,
        data: Arc::from(format!(
            r#"{{"order":{n},"items":[1,2,3],"note":"{}"}}"#,
            "x".repeat(200)
        )),
        matched_destination_ids: vec![format!("des-{}", n % 1000)],
    })
}

fn attempt(n: usize, now: i64) -> Attempt {
    Attempt {
        id: format!("att-{n}"),
        tenant_id: format!("t{}", n % 100),
        event_id: format!("ev-{n}"),
        destination_id: format!("des-{}", n % 1000),
        destination_type: "webhook".into(),
        attempt_number: 1,
        manual: false,
        status: AttemptStatus::Success,
        time: now + n as i64,
        code: Some("200".into()),
        response_data: Some(serde_json::json!({"status": 200, "body": "ok"})),
        topic: "order.created".into(),
    }
}

async fn one_run(base: &str, deliveries: usize, batch: usize) -> Duration {
    let (admin, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required: {e}"));
    tokio::spawn(conn);
    let schema = format!("outrider_bench_{}_{batch}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = PostgresLogStore::connect(&url, Duration::from_secs(5)).await.unwrap();
    store.migrate().await.unwrap();
    let now = 1_700_000_000_000i64;
    let started = Instant::now();
    let mut n = 0;
    while n < deliveries {
        let end = (n + batch).min(deliveries);
        let events: Vec<Arc<Event>> = (n..end).map(|i| event(i, now)).collect();
        let attempts: Vec<Attempt> = (n..end).map(|i| attempt(i, now)).collect();
        store.write_logs(events, attempts).await.unwrap();
        n = end;
    }
    let took = started.elapsed();
    let rows: i64 = admin
        .query_one(
            &format!("SELECT (SELECT count(*) FROM {schema}.events) + (SELECT count(*) FROM {schema}.attempts)"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, 2 * deliveries, "every row written");
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).cloned().unwrap_or_else(|| {
        std::env::var("OUTRIDER_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });
    let deliveries: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let batches: Vec<usize> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1000, 5000]);
    // Row at a time is slow: a smaller sample gives its rate.
    let single_n = (deliveries / 20).max(1000);
    let single = one_run(&base, single_n, 1).await;
    let single_rate = 2.0 * single_n as f64 / single.as_secs_f64();
    println!("batch 1 (baseline): {single_n} deliveries, {:.0} rows/s", single_rate);
    for b in batches {
        let took = one_run(&base, deliveries, b).await;
        let rate = 2.0 * deliveries as f64 / took.as_secs_f64();
        println!(
            "batch {b}: {deliveries} deliveries ({} rows) in {:.2} s = {:.0} rows/s ({:.0} deliveries/s), ratio to batch 1: {:.1}",
            2 * deliveries,
            took.as_secs_f64(),
            rate,
            rate / 2.0,
            rate / single_rate
        );
    }
}
