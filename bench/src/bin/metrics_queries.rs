//! The metrics API's queries on a large PostgreSQL log: seeds `attempts`
//! delivery attempts (for 16/21 as many events) over 30 days through the log
//! writer itself (`PostgresLogStore::write_logs`, which keeps the rollups),
//! then times the queries a dashboard makes, each `runs` times.
//!
//! cargo run --release -p outrider-bench --bin metrics_queries -- [postgres_url] [attempts] [runs] [--keep]
//!
//! The seed goes into the schema `outrider_metrics_bench`; an existing seed
//! of the same size is reused (`--keep` leaves it for the next run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_engine::metrics::{Dataset, Dim, Granularity, Measure, Query};
use outrider_engine::model::{Attempt, AttemptStatus, Event, StringMap};
use outrider_engine::store::postgres::PostgresLogStore;
use outrider_engine::store::LogWriter;

const DAY: i64 = 86_400_000;
/// 2026-10-01T00:00:00Z: the seed covers October.
const T0: i64 = 1_790_812_800_000;
const TENANTS: usize = 50;
const DESTINATIONS_PER_TENANT: usize = 4;
const TOPICS: [&str; 5] = [
    "user.created",
    "user.updated",
    "order.created",
    "order.paid",
    "invoice.sent",
];

/// A cheap deterministic mix (splitmix64).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn batch(from: usize, to: usize, events_total: usize) -> (Vec<Arc<Event>>, Vec<Attempt>) {
    let mut events = Vec::new();
    let mut attempts = Vec::new();
    let spacing = (30 * DAY) as f64 / events_total as f64;
    for n in from..to {
        let r = mix(n as u64);
        let tenant = (r % TENANTS as u64) as usize;
        let dest = (r >> 8) as usize % DESTINATIONS_PER_TENANT;
        let topic = TOPICS[(r >> 16) as usize % TOPICS.len()];
        let t = T0 + (n as f64 * spacing) as i64;
        let mut metadata = StringMap::new();
        metadata.insert("source".into(), "bench".into());
        let destination_id = format!("des_{tenant}_{dest}");
        events.push(Arc::new(Event {
            id: format!("evt_{n}"),
            tenant_id: format!("tenant_{tenant}"),
            destination_id: None,
            topic: topic.into(),
            eligible_for_retry: true,
            time: t,
            time_ns: 0,
            metadata,
            data: Arc::from(format!(r#"{{"n":{n}}}"#)),
            matched_destination_ids: vec![destination_id.clone()],
        }));
        // One attempt for 13 events in 16, two for one, three for two
        // (1.31 attempts per event).
        let tries = match (r >> 24) % 16 {
            0 | 1 => 3,
            2 => 2,
            _ => 1,
        };
        for k in 1..=tries {
            let last = k == tries;
            let ok = last && !(r >> 32).is_multiple_of(10);
            attempts.push(Attempt {
                id: format!("atm_{n}_{k}"),
                tenant_id: format!("tenant_{tenant}"),
                event_id: format!("evt_{n}"),
                destination_id: destination_id.clone(),
                destination_type: if dest == 3 { "aws_sqs" } else { "webhook" }.into(),
                attempt_number: k,
                manual: k == 3,
                status: if ok {
                    AttemptStatus::Success
                } else {
                    AttemptStatus::Failed
                },
                time: t + (k as i64 - 1) * 30_000,
                code: Some(
                    if ok {
                        "200"
                    } else if (r >> 40).is_multiple_of(2) {
                        "500"
                    } else {
                        "timeout"
                    }
                    .into(),
                ),
                response_data: None,
                topic: topic.into(),
            });
        }
    }
    (events, attempts)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let base = pos
        .first()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let target: usize = pos.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let runs: usize = pos.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);

    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {base}: {e}"));
    tokio::spawn(conn);
    let schema = "outrider_metrics_bench";
    admin
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = PostgresLogStore::connect(&url, Duration::from_secs(5)).await.unwrap();
    store.migrate().await.unwrap();
    let have: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {schema}.attempts"), &[])
        .await
        .unwrap()
        .get(0);
    // Events needed for `target` attempts at 1.31 attempts per event.
    let events_total = target * 16 / 21;
    if (have as usize) < target * 95 / 100 {
        admin
            .batch_execute(&format!(
                "TRUNCATE {schema}.events, {schema}.attempts, {schema}.metric_events, {schema}.metric_event_destinations, \
                 {schema}.metric_attempts, {schema}.metric_attempts_wide, {schema}.metric_attempts_tenant"
            ))
            .await
            .unwrap();
        let started = Instant::now();
        let mut n = 0;
        let mut attempts_written = 0usize;
        while n < events_total {
            let end = (n + 5_000).min(events_total);
            let (events, attempts) = batch(n, end, events_total);
            attempts_written += attempts.len();
            store.write_logs(events, attempts).await.unwrap();
            n = end;
            if n.is_multiple_of(500_000) {
                eprintln!(
                    "seeded {n} events, {attempts_written} attempts ({:.0?})",
                    started.elapsed()
                );
            }
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "seeded {events_total} events and {attempts_written} attempts in {took:.0} s through write_logs \
             ({:.0} attempts/s, rollups included)",
            attempts_written as f64 / took
        );
        admin
            .batch_execute(&format!(
                "ANALYZE {schema}.events; ANALYZE {schema}.attempts; ANALYZE {schema}.metric_attempts; \
                 ANALYZE {schema}.metric_attempts_tenant; ANALYZE {schema}.metric_attempts_wide; \
                 ANALYZE {schema}.metric_events; ANALYZE {schema}.metric_event_destinations"
            ))
            .await
            .unwrap();
    } else {
        println!("reusing the seed: {have} attempts");
    }
    let sizes = admin
        .query(
            &format!(
                "SELECT c.relname, c.reltuples::BIGINT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '{schema}' AND c.relkind = 'r' ORDER BY c.relname"
            ),
            &[],
        )
        .await
        .unwrap();
    for r in sizes {
        println!("  {:<28} {:>12} rows", r.get::<_, String>(0), r.get::<_, i64>(1));
    }

    let week = (T0 + 7 * DAY, T0 + 14 * DAY);
    let month = (T0, T0 + 30 * DAY);
    let q = |dataset, range: (i64, i64), g: Option<&str>, measures: Vec<Measure>, dims: Vec<Dim>, filters| Query {
        dataset,
        start_ms: range.0,
        end_ms: range.1,
        granularity: g.map(|g| Granularity::parse(g).unwrap()),
        measures,
        dims,
        filters,
    };
    let att = vec![Measure::Count, Measure::SuccessfulCount, Measure::ErrorRate];
    let cases: Vec<(&str, Query)> = vec![
        (
            "attempts, hourly over one week",
            q(Dataset::Attempts, week, Some("1h"), att.clone(), vec![], vec![]),
        ),
        (
            "attempts, daily over one month",
            q(Dataset::Attempts, month, Some("1d"), att.clone(), vec![], vec![]),
        ),
        (
            "events, hourly over one week",
            q(Dataset::Events, week, Some("1h"), vec![Measure::Count], vec![], vec![]),
        ),
        (
            "events, daily over one month",
            q(Dataset::Events, month, Some("1d"), vec![Measure::Count], vec![], vec![]),
        ),
        (
            "attempts, hourly over one week, by status, one tenant",
            q(
                Dataset::Attempts,
                week,
                Some("1h"),
                att.clone(),
                vec![Dim::Status],
                vec![(Dim::TenantId, vec!["tenant_7".into()])],
            ),
        ),
        (
            "attempts, daily over one month, by destination",
            q(
                Dataset::Attempts,
                month,
                Some("1d"),
                att.clone(),
                vec![Dim::DestinationId],
                vec![],
            ),
        ),
        (
            "attempts, hourly over one week, unaligned start (raw and minute edges)",
            q(
                Dataset::Attempts,
                (week.0 + 1_234_567, week.1),
                Some("1h"),
                att.clone(),
                vec![],
                vec![],
            ),
        ),
    ];
    println!("\n{runs} runs each, store-level (store::answer_metrics against PostgreSQL):");
    println!(
        "{:<72} {:>9} {:>9} {:>9} {:>6}",
        "query", "p50 ms", "p90 ms", "max ms", "rows"
    );
    for (name, query) in cases {
        let mut times = Vec::with_capacity(runs);
        let mut rows = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let a = outrider_engine::store::answer_metrics(&store, &query).await.unwrap();
            times.push(started.elapsed());
            rows = a.data.len();
        }
        times.sort();
        println!(
            "{name:<72} {:>9.1} {:>9.1} {:>9.1} {rows:>6}",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.9).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    if !keep {
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }
}
