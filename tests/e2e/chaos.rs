//! Crash-consistency soak: small journal segments, healthy, failing, slow
//! and black-holed destinations with fan-out and retries due during the run,
//! repeated `kill -9` while publishing, then a SIGTERM and a restart with a
//! different `DELIVERY_SHARDS`. Checked from the sinks' own records and the
//! attempt log once everything has drained:
//!
//! - every accepted event is delivered (healthy, slow) or exhausted per the
//!   schedule (failing, black-holed: exactly 3 logged attempts);
//! - per (event, destination) the logged attempt numbers are 1, 2, 3... in
//!   time order, none repeated, and attempt n+1 starts no earlier than
//!   attempt n plus the schedule's delay (no early retry, no reset count);
//! - sink arrivals beyond the logged attempts (re-sent attempts) are at most
//!   what was in flight at the kills: requests open at a sink at the kill
//!   plus those answered in the second before it;
//! - journal disk use after the drain is back under two segments per shard.
//!
//! The back-end variant (Redis, PostgreSQL, RabbitMQ; run alone) checks the
//! same, except that an attempt may be logged twice under one number when
//! its outcome was committed just before a kill, ahead of the broker's ack:
//! such repeats count as re-sent attempts and stay within the same bound.
//!
//! Short form by default (10 kills, 30 events per round); the long form:
//! `OUTRIDER_CHAOS_KILLS=40 OUTRIDER_CHAOS_EVENTS=200 cargo nextest run --test e2e chaos --no-capture`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

const SEGMENT: u64 = 64 * 1024;
const SCHEDULE_MS: [i64; 2] = [1000, 2000];

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Bytes of every journal segment under `data`.
fn journal_bytes(data: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(data.join("journal")) {
        for d in rd.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                total += files
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>();
            }
        }
    }
    total
}

/// A small deterministic generator (the seed is printed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct Sink {
    name: &'static str,
    rx: Receiver,
}

/// Requests a sink may see twice because of a kill at `at`: open at the
/// sink then, or answered within the second before (the outcome may not
/// have been committed).
fn at_risk(rx: &Receiver, at: Instant) -> usize {
    let arrived = rx.state.arrived.lock().unwrap().len();
    let got = rx.got();
    let recent = got
        .iter()
        .filter(|g| at.duration_since(g.at) <= Duration::from_secs(1))
        .count();
    arrived.saturating_sub(got.len()) + recent
}

async fn publish_round(api: &Api, round: usize, events: usize, every_rare: usize) -> Vec<(String, String, String)> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let pad = "p".repeat(1500);
    let mut tasks = Vec::new();
    for w in 0..3 {
        let api = api.clone();
        let accepted = accepted.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in (w..events).step_by(3) {
                let id = format!("x{round}_{i}");
                let g = round * events + i;
                let tenant = if g.is_multiple_of(4) { "t2" } else { "t1" };
                let topic = if g % every_rare == 1 { "rare" } else { "k" };
                let r = http
                    .post(format!("{}/publish", api.base))
                    .bearer_auth(&api.token)
                    .json(&json!({"id": id, "tenant_id": tenant, "topic": topic, "data": {"i": i, "pad": pad}}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted
                            .lock()
                            .unwrap()
                            .push((id, tenant.to_string(), topic.to_string()))
                    }
                    _ => break, // killed
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = accepted.lock().unwrap().clone();
    v
}

#[tokio::test]
async fn kill9_sigterm_and_a_shard_change_keep_every_journal_invariant() {
    soak(None).await;
}

/// The back-end variant: the node keeps entities and the retry schedule in
/// Redis (its own, with an fsync'ed append-only file, so a restart keeps
/// the deployment), logs in PostgreSQL and its deliveries on a RabbitMQ
/// queue; between kills, Redis is killed and restarted, PostgreSQL stopped
/// and started, and RabbitMQ's app stopped and started, in turn, while
/// events are being published. Run alone (it restarts the machine's shared
/// PostgreSQL and RabbitMQ), like the other outage test.
#[tokio::test]
#[ignore = "restarts the shared PostgreSQL and RabbitMQ: scripts/test.sh runs it alone, after the other tests"]
async fn outage_chaos_kill9_and_back_end_restarts_keep_every_invariant() {
    let redis = crate::outage::PrivateRedis::start().await;
    let (url, _pg) = crate::postgres::fresh_schema(&crate::postgres::pg_url()).await;
    soak(Some(Backends {
        redis,
        postgres_url: url,
        queue: format!("outrider-e2e-chaos-{}{}", std::process::id(), free_port()),
    }))
    .await;
}

struct Backends {
    redis: crate::outage::PrivateRedis,
    postgres_url: String,
    queue: String,
}

impl Backends {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", self.redis.port.to_string()),
            ("DEPLOYMENT_ID", self.queue.replace('-', "_")),
            ("POSTGRES_URL", self.postgres_url.clone()),
            ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".into()),
            ("RABBITMQ_EXCHANGE", "outrider-e2e".into()),
            ("RABBITMQ_DELIVERY_QUEUE", self.queue.clone()),
        ]
    }

    /// Restarts one back end, in turn: Redis, PostgreSQL, RabbitMQ.
    async fn restart(&mut self, round: usize) -> &'static str {
        match round % 3 {
            0 => {
                self.redis.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.redis.spawn().await;
                "redis"
            }
            // Blocking commands, off the test's runtime (the sinks run on it).
            1 => {
                tokio::task::spawn_blocking(|| crate::outage::restart_postgres(Duration::from_millis(500)))
                    .await
                    .unwrap();
                "postgresql"
            }
            _ => {
                tokio::task::spawn_blocking(|| crate::outage::restart_rabbitmq(Duration::from_millis(500)))
                    .await
                    .unwrap();
                "rabbitmq"
            }
        }
    }
}

async fn soak(mut backends: Option<Backends>) {
    let kills = env_num("OUTRIDER_CHAOS_KILLS", 10);
    let per_round = env_num("OUTRIDER_CHAOS_EVENTS", 30);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let t_start = Instant::now();
    let queue_mode = backends.is_some();
    let mut env: Vec<(&'static str, String)> = vec![
        ("DELIVERY_SHARDS", "2".into()),
        ("OUTRIDER_JOURNAL_SEGMENT_BYTES", SEGMENT.to_string()),
        ("RETRY_SCHEDULE", "1,2".into()),
        ("DELIVERY_TIMEOUT_SECONDS", "1".into()),
        ("OUTRIDER_SHUTDOWN_DRAIN_SECONDS", "3".into()),
    ];
    if let Some(b) = &backends {
        env.extend(b.env());
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The server's log (warnings, appended across restarts): on a failure its
    // lines about the failing events are printed, so a rare interleaving
    // leaves a trace.
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("server.log");
    let mut s = Server::start_logged(&env, Some(log.clone())).await;
    let api = Api::admin(&s);
    let data = s.dir.join("data");
    let healthy = Receiver::start().await;
    let failing = Receiver::start().await;
    *failing.state.always.lock().unwrap() = Some(500);
    let slow = Receiver::start().await;
    *slow.state.delay.lock().unwrap() = Duration::from_millis(300);
    let hole = Receiver::start().await;
    *hole.state.delay.lock().unwrap() = Duration::from_secs(30);
    let other = Receiver::start().await;
    api.tenant("t1").await;
    api.tenant("t2").await;
    let mut dest_of: HashMap<String, &'static str> = HashMap::new();
    for (name, rx, topics) in [
        ("healthy", &healthy, json!("*")),
        ("failing", &failing, json!("*")),
        ("slow", &slow, json!("*")),
        ("hole", &hole, json!(["rare"])),
    ] {
        let d = api
            .webhook("t1", &rx.url(&format!("/{name}")), json!({ "topics": topics }))
            .await;
        dest_of.insert(d["id"].as_str().unwrap().to_string(), name);
    }
    let d = api.webhook("t2", &other.url("/other"), json!({})).await;
    dest_of.insert(d["id"].as_str().unwrap().to_string(), "other");
    let sinks = [
        Sink {
            name: "healthy",
            rx: healthy.clone(),
        },
        Sink {
            name: "failing",
            rx: failing.clone(),
        },
        Sink {
            name: "slow",
            rx: slow.clone(),
        },
        Sink {
            name: "hole",
            rx: hole.clone(),
        },
        Sink {
            name: "other",
            rx: other.clone(),
        },
    ];

    // The black-holed destination drains at about one attempt per timeout
    // (its limit falls to 1), so it gets at most ~20 events whatever the size.
    let every_rare = ((kills + 1) * per_round / 20).max(10);
    let mut accepted = Vec::new();
    let mut risk: HashMap<&str, usize> = HashMap::new();
    let mut max_disk = 0u64;
    let mut restarted: Vec<&'static str> = Vec::new();
    for round in 0..kills {
        let api2 = api.clone();
        let publishing = tokio::spawn(async move { publish_round(&api2, round, per_round, every_rare).await });
        tokio::time::sleep(Duration::from_millis(150 + rng.next(600))).await;
        if let Some(b) = backends.as_mut() {
            restarted.push(b.restart(round).await);
        }
        let at = Instant::now();
        s.kill9();
        for k in &sinks {
            *risk.entry(k.name).or_default() += at_risk(&k.rx, at);
        }
        accepted.extend(publishing.await.unwrap());
        max_disk = max_disk.max(journal_bytes(&data));
        s.spawn().await;
    }
    // A last round ends with SIGTERM, and the next start has 3 shards.
    accepted.extend(publish_round(&api, kills, per_round, every_rare).await);
    let (code, took) = s.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "SIGTERM exit");
    let at = Instant::now();
    for k in &sinks {
        *risk.entry(k.name).or_default() += at_risk(&k.rx, at);
    }
    s.set_env("DELIVERY_SHARDS", "3");
    s.spawn().await;

    // Drain: nothing pending, every healthy delivery in.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        max_disk = max_disk.max(journal_bytes(&data));
        let pending = api.get("/healthz").await.body["workers"]["delivery-shards"]["pending_deliveries"].as_u64();
        if pending == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("chaos: still {pending:?} deliveries pending after the drain deadline");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // With back ends, retries wait in Redis's schedule and attempts reach
    // PostgreSQL through the log pipeline: wait until the schedule is empty
    // and the logged attempts stop changing for 5 s. (With the count alone,
    // one CI run checked after 53 s instead of the usual 68-72 s and found
    // 31 black-holed deliveries short of their retries: the count had held
    // still for 5 s while retries were still due, most likely while the
    // retry poller reconnected after the last Redis restart.)
    if let Some(b) = &backends {
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut since) = (-1i64, Instant::now());
        let redis_url = format!("redis://127.0.0.1:{}", b.redis.port);
        while Instant::now() < deadline {
            if scheduled_retries(&redis_url).await != Some(0) {
                since = Instant::now();
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let n = match tokio_postgres::connect(&b.postgres_url, tokio_postgres::NoTls).await {
                Ok((pg, conn)) => {
                    tokio::spawn(conn);
                    pg.query_one("SELECT count(*) FROM attempts", &[])
                        .await
                        .map(|r| r.get::<_, i64>(0))
                        .unwrap_or(-1)
                }
                Err(_) => -1,
            };
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // The index catches up, then segments are collected (index synced every 2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let disk_after = journal_bytes(&data);

    // Sink arrivals per (sink, event).
    let mut arrivals: HashMap<(&str, String), usize> = HashMap::new();
    for k in &sinks {
        for g in k.rx.state.arrived.lock().unwrap().iter() {
            if let Some(id) = g.header("x-outpost-event-id") {
                *arrivals.entry((k.name, id)).or_default() += 1;
            }
        }
    }
    let (mut lost, mut early, mut misnumbered, mut duplicates, mut logged) = (0, 0, 0, 0, 0);
    let mut examples: Vec<String> = Vec::new();
    let mut resent: HashMap<&str, usize> = HashMap::new();
    for (id, tenant, topic) in &accepted {
        let r = api.get(&format!("/attempts?event_id={id}&limit=100")).await;
        let models = r.body["models"].as_array().cloned().unwrap_or_default();
        let mut per_dest: HashMap<&str, Vec<(i64, u64, String)>> = HashMap::new();
        for a in &models {
            let name = dest_of
                .get(a["destination_id"].as_str().unwrap_or_default())
                .copied()
                .unwrap_or("?");
            let t = chrono::DateTime::parse_from_rfc3339(a["time"].as_str().unwrap_or_default())
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            per_dest.entry(name).or_default().push((
                t,
                a["attempt_number"].as_u64().unwrap_or(0),
                a["status"].as_str().unwrap_or_default().to_string(),
            ));
        }
        let expected: Vec<(&str, usize)> = if tenant == "t2" {
            vec![("other", 1)]
        } else {
            let mut v = vec![("healthy", 1), ("failing", 3), ("slow", 1)];
            if topic == "rare" {
                v.push(("hole", 3));
            }
            v
        };
        for (name, attempts) in expected {
            let mut list = per_dest.remove(name).unwrap_or_default();
            list.sort();
            logged += list.len();
            let mut numbers: Vec<u64> = list.iter().map(|a| a.1).collect();
            let want: Vec<u64> = (1..=attempts as u64).collect();
            // With a delivery queue, an attempt whose outcome was committed
            // just before a kill, ahead of its ack, is handed out again and
            // made again under the same number (at least once): such a
            // repeat counts as re-sent, within the in-flight bound below.
            let mut repeats = 0;
            if queue_mode {
                let before = numbers.len();
                numbers.dedup();
                repeats = before - numbers.len();
                let mut first_of: Vec<(i64, u64, String)> = Vec::new();
                for a in &list {
                    if first_of.last().is_none_or(|l| l.1 != a.1) {
                        first_of.push(a.clone());
                    }
                }
                list = first_of;
            }
            let outcome_ok = match name {
                "failing" | "hole" => numbers == want && list.iter().all(|a| a.2 == "failed"),
                _ => list.last().is_some_and(|a| a.2 == "success"),
            };
            if !outcome_ok {
                if list.is_empty() || (name != "failing" && name != "hole") {
                    lost += 1;
                }
                if numbers.len() > 1 || !list.is_empty() {
                    misnumbered += (numbers != want && (name == "failing" || name == "hole")) as usize;
                }
                if examples.len() < 5 {
                    examples.push(format!("{id} {name}: {list:?}"));
                }
            }
            // Strictly increasing, contiguous, none early.
            for w in list.windows(2) {
                if w[1].1 != w[0].1 + 1 {
                    misnumbered += 1;
                }
                let delay = SCHEDULE_MS[(w[0].1 as usize - 1).min(SCHEDULE_MS.len() - 1)];
                if w[1].0 - w[0].0 < delay - 5 {
                    early += 1;
                    if examples.len() < 5 {
                        examples.push(format!("{id} {name} early: {list:?}"));
                    }
                }
            }
            let seen = arrivals.get(&(name, id.clone())).copied().unwrap_or(0);
            let extra = seen.saturating_sub(list.len() + repeats) + repeats;
            duplicates += extra;
            *resent.entry(name).or_default() += extra;
        }
    }
    let deliveries: usize = accepted
        .iter()
        .map(|(_, t, topic)| {
            if t == "t2" {
                1
            } else if topic == "rare" {
                4
            } else {
                3
            }
        })
        .sum();
    eprintln!(
        "chaos (seed {seed}){}: kills {kills} + 1 SIGTERM ({took:?}) + DELIVERY_SHARDS 2→3; events accepted {}, deliveries {deliveries}, attempts logged {logged}; \
         lost {lost}, misnumbered {misnumbered}, early retries {early}, re-sent {duplicates} {resent:?} (bound from in-flight at kills {risk:?}); \
         journal max {} KiB, after drain {} KiB; {:.0} s",
        if restarted.is_empty() {
            String::new()
        } else {
            format!(" with back-end restarts {restarted:?}")
        },
        accepted.len(),
        max_disk / 1024,
        disk_after / 1024,
        t_start.elapsed().as_secs_f64()
    );
    assert!(
        accepted.len() >= kills * per_round / 4,
        "too few events accepted: {}",
        accepted.len()
    );
    print_fallbacks(&log);
    // Every done mark Redis missed (kept across kills in the data dir) is
    // written by the end.
    let unwritten = metric_sum(&s.metrics_text().await, "outrider_done_marks_unwritten");
    let unwritten_file = std::fs::metadata(data.join("unwritten-done-marks")).map_or(0, |m| m.len());
    assert_eq!(
        (unwritten, unwritten_file),
        (0.0, 0),
        "done marks still unwritten after the drain (count, file bytes)"
    );
    if lost + misnumbered + early > 0 {
        print_log_about(&log, &examples);
    }
    assert_eq!(lost, 0, "lost deliveries: {examples:?}");
    assert_eq!(misnumbered, 0, "attempt numbers: {examples:?}");
    assert_eq!(early, 0, "early retries: {examples:?}");
    for (name, n) in &resent {
        let bound = risk.get(name).copied().unwrap_or(0);
        assert!(
            *n <= bound,
            "{name}: {n} re-sent, more than the {bound} in flight at the kills"
        );
    }
    assert!(
        disk_after <= 3 * 2 * SEGMENT,
        "journal holds {disk_after} bytes once drained"
    );
}

/// Retries waiting in the node's Redis schedule (every `…retry:due` set);
/// `None` while Redis does not answer.
async fn scheduled_retries(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*retry:due").query_async(&mut c).await.ok()?;
    let mut total = 0;
    for k in keys {
        let n: u64 = redis::cmd("ZCARD").arg(&k).query_async(&mut c).await.ok()?;
        total += n;
    }
    Some(total)
}

/// How often the server took the paths that keep a Redis write for later
/// (its log's warnings), so a run shows whether its outages reached them.
fn print_fallbacks(log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "Redis fallbacks: done marks kept {}, schedule entries cleared later {}, retries kept on the node {}",
        count("cannot mark a delivery task done in Redis"),
        count("cannot clear a sent retry"),
        count("retry schedule unavailable"),
    );
}

/// Prints the server log's lines that name an event of `examples` (each
/// starts with the event id), and how many lines the log has.
fn print_log_about(log: &std::path::Path, examples: &[String]) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let ids: Vec<&str> = examples.iter().filter_map(|e| e.split_whitespace().next()).collect();
    eprintln!(
        "server log {} ({} lines); lines naming {ids:?}:",
        log.display(),
        text.lines().count()
    );
    for line in text.lines().filter(|l| ids.iter().any(|id| l.contains(id))) {
        eprintln!("  {line}");
    }
}
