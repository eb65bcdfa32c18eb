//! The portal's delivery log on a large embedded store: seeds one
//! destination with `attempts` delivery attempts (one event each, over 30
//! days, 1 in 10 failed, three topics) beside a second tenant's destination
//! that never fails (an eighth of the rows), through
//! the index writer the server uses (`EmbeddedStore::index`), then times the
//! pages the portal asks for, each `runs` times: the query
//! `GET /tenants/{t}/destinations/{d}/attempts?include=event&limit=25` makes
//! (attempts of one destination, newest first, one extra row, then the
//! page's events in one lookup), with and without its filters and cursors.
//!
//! cargo run --release -p outrider-bench --bin log_pages -- [attempts] [runs] [dir]
//!
//! Without `dir` the seed goes to a temporary directory; with it, an
//! existing seed there of the same size is reused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_engine::crypto::Cipher;
use outrider_engine::model::{Attempt, AttemptStatus, Event, StringMap};
use outrider_engine::store::embedded::EmbeddedStore;
use outrider_engine::store::{Dir, ListQuery, LogStore, Seek};

const DAY: i64 = 86_400_000;
const TOPICS: [&str; 3] = ["user.created", "order.paid", "invoice.sent"];
const PAGE: usize = 25;

fn rows(from: usize, to: usize, total: usize, now: i64) -> (Vec<Arc<Event>>, Vec<Attempt>) {
    let spacing = (30 * DAY) as f64 / total as f64;
    let mut events = Vec::with_capacity(to - from);
    let mut attempts = Vec::with_capacity(to - from);
    for n in from..to {
        // Every 8th row belongs to another tenant, so the filters matter.
        let (tenant, dest) = if n % 8 == 7 {
            ("other", "des_other")
        } else {
            ("t", "des_big")
        };
        let topic = TOPICS[n % 3];
        let t = now - 30 * DAY + (n as f64 * spacing) as i64;
        events.push(Arc::new(Event {
            id: format!("evt_{n:08}"),
            tenant_id: tenant.into(),
            destination_id: None,
            topic: topic.into(),
            eligible_for_retry: true,
            time: t,
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from(format!(
                r#"{{"n":{n},"user":{{"id":"u_{n}","email":"u{n}@example.com"}}}}"#
            )),
            matched_destination_ids: vec![dest.into()],
        }));
        // The other tenant's destination never fails: its "failed" page is empty.
        let ok = tenant == "other" || n % 10 != 3;
        attempts.push(Attempt {
            id: format!("atm_{n:08}"),
            tenant_id: tenant.into(),
            event_id: format!("evt_{n:08}"),
            destination_id: dest.into(),
            destination_type: "webhook".into(),
            attempt_number: 1,
            manual: false,
            status: if ok {
                AttemptStatus::Success
            } else {
                AttemptStatus::Failed
            },
            time: t + 40,
            code: Some(if ok { "200" } else { "500" }.into()),
            response_data: Some(serde_json::json!({"status": if ok { 200 } else { 500 }, "body": "ok"})),
            topic: topic.into(),
        });
    }
    (events, attempts)
}

/// One portal page: the attempts and then their events, as the API does.
async fn page(store: &EmbeddedStore, q: &ListQuery) -> (Vec<Attempt>, usize) {
    let rows = store.list_attempts(q.clone()).await.expect("list attempts");
    let keys: Vec<(String, String)> = rows
        .iter()
        .take(PAGE)
        .map(|a| (a.tenant_id.clone(), a.event_id.clone()))
        .collect();
    let events = store.get_events(keys).await.expect("get events");
    (rows, events.len())
}

fn base() -> ListQuery {
    ListQuery {
        tenant_ids: vec!["t".into()],
        destination_ids: vec!["des_big".into()],
        dir: Dir::Desc,
        limit: PAGE + 1,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("create dir");
    let store = EmbeddedStore::open(&dir, Cipher::new("bench"), false).expect("open store");
    let (_, have) = store.log_counts().await.expect("count");
    let now = outrider_engine::timefmt::now_ms();
    if have as usize != total {
        let started = Instant::now();
        let chunk = 20_000;
        let mut from = 0;
        while from < total {
            let to = (from + chunk).min(total);
            let (events, attempts) = rows(from, to, total, now);
            store.index(events, attempts, vec![], false).await.expect("seed");
            from = to;
        }
        store.index(vec![], vec![], vec![], true).await.expect("sync");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "seeded {total} attempts and events ({} for the measured destination) in {secs:.1} s ({:.0} rows/s)",
            total - total / 8,
            total as f64 / secs
        );
    } else {
        println!("reusing the seed of {total} attempts in {}", dir.display());
    }

    // Cursors from real pages: the second page, and one in the middle.
    let (first, _) = page(&store, &base()).await;
    let last = first.get(PAGE - 1).expect("a full first page");
    let second = ListQuery {
        after: Some(Seek {
            time_ms: last.time,
            id: last.id.clone(),
        }),
        ..base()
    };
    let middle = ListQuery {
        after: Some(Seek {
            time_ms: now - 15 * DAY,
            id: "atm_".into(),
        }),
        ..base()
    };
    let prev = ListQuery {
        dir: Dir::Asc,
        after: Some(Seek {
            time_ms: now - 15 * DAY,
            id: "atm_".into(),
        }),
        ..base()
    };
    let failed = ListQuery {
        status: Some(AttemptStatus::Failed),
        ..base()
    };
    let topic = ListQuery {
        topics: vec!["order.paid".into()],
        ..base()
    };
    let failed_topic_24h = ListQuery {
        status: Some(AttemptStatus::Failed),
        topics: vec!["invoice.sent".into()],
        time_gte: Some(now - DAY),
        ..base()
    };
    let last_hour = ListQuery {
        time_gte: Some(now - 3_600_000),
        ..base()
    };
    let nothing = ListQuery {
        topics: vec!["no.such.topic".into()],
        ..base()
    };
    let nothing_24h = ListQuery {
        topics: vec!["no.such.topic".into()],
        time_gte: Some(now - DAY),
        ..base()
    };
    let healthy_failed = ListQuery {
        tenant_ids: vec!["other".into()],
        destination_ids: vec!["des_other".into()],
        status: Some(AttemptStatus::Failed),
        ..base()
    };
    let cases: Vec<(&str, ListQuery)> = vec![
        ("first page (newest 25)", base()),
        ("next page (cursor)", second),
        ("page from the middle (15 days back)", middle),
        ("previous page from the middle", prev),
        ("status=failed", failed),
        ("topic=order.paid", topic),
        ("failed + topic + last 24 h", failed_topic_24h),
        ("last hour", last_hour),
        ("status=failed, destination never failed", healthy_failed),
        ("topic nobody used, last 24 h (default)", nothing_24h),
        ("topic nobody used, all time (full walk)", nothing),
    ];
    println!("{runs} runs each, store reads with the page's event lookup:");
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>6}",
        "query", "p50 ms", "p95 ms", "max ms", "rows"
    );
    for (name, q) in cases {
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut n = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let (rows, _) = page(&store, &q).await;
            times.push(t.elapsed());
            n = rows.len().min(PAGE);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<40} {:>8.2} {:>8.2} {:>8.2} {n:>6}",
            ms(times[runs / 2]),
            ms(times[(runs * 95 / 100).min(runs - 1)]),
            ms(times[runs - 1])
        );
    }
}
