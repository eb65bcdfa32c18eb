//! Runs one scenario: start (or target) a server, provision tenants and
//! destinations pointing at the harness's sink, publish, wait for deliveries,
//! then measure the raw-client ceiling on the same sink.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Conn;
use crate::report::{self, Percentiles, Report};
use crate::scenario::Scenario;
use crate::{procstat, sink};

/// A run's id: unique per run, also between runs in one process (a `scale`
/// invocation) and between processes, with its first hex digits varying
/// (they name the run's events and keys).
fn new_run_id() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seed = nanos ^ (u64::from(std::process::id()) << 40) ^ RUNS.fetch_add(1, Ordering::Relaxed);
    // splitmix64: spreads nearby seeds over every digit.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// A server not started by the harness.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub api_key: String,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: Option<Target>,
    pub server_bin: PathBuf,
    /// CPU list (`taskset -c` syntax) the started server is pinned to.
    pub server_cores: Option<String>,
    pub baseline: bool,
    pub baseline_seconds: u64,
    pub quiet: bool,
}

/// Parses `http://host:port` into a socket address.
pub fn parse_target(url: &str) -> Result<SocketAddr, String> {
    let hostport = url
        .strip_prefix("http://")
        .ok_or("only http:// targets are supported")?
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

struct Spawned {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{sink}` in a server setting stands for the harness sink's address (an
/// operator-events URL, say), `{run}` for this run's id (a `DEPLOYMENT_ID`
/// that keeps runs against a shared Redis apart).
fn spawn_server(
    bin: &PathBuf,
    cores: Option<&str>,
    sc: &Scenario,
    key: &str,
    sink: SocketAddr,
    run: &str,
) -> Result<(Spawned, SocketAddr), String> {
    if !bin.is_file() {
        return Err(format!(
            "server binary {} not found: build it with `cargo build --release` or pass --server-bin / --target",
            bin.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut cmd = match cores {
        // The server and every thread it starts stay on these cores.
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_PORT", port.to_string())
        .env("API_KEY", key)
        .env("API_JWT_SECRET", "loadtest-jwt")
        .env("AES_ENCRYPTION_SECRET", "loadtest-aes")
        .env("OUTRIDER_DATA_DIR", dir.path().join("data"))
        .env("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true")
        .env(
            "MAX_DESTINATIONS_PER_TENANT",
            sc.destinations_per_tenant.max(20).to_string(),
        )
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in &sc.server_env {
        cmd.env(k, v.replace("{sink}", &sink.to_string()).replace("{run}", run));
    }
    let child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
    Ok((Spawned { child, dir }, SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn wait_healthy(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Conn::open(addr, None).await {
            if let Ok((200, _)) = c.request("GET", "/healthz", Bytes::new()).await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("server at {addr} did not become healthy in 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(msg.to_string());
    b
}

/// Runs the scenario end to end and returns its report.
pub fn run(sc: &Scenario, opts: &Options) -> Result<Report, String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = new_run_id();
    let prefix = format!("lt{}-", &run_id[..run_id.len().min(6)]);
    let secret = format!("whsec_loadtest_{run_id}");
    let m = sc.destinations_per_tenant;
    let sink = sink::start(
        None,
        sink::Behaviour {
            delay: Duration::from_millis(sc.sink.delay_ms),
            fail_half_first_attempts: sc.sink.fail_half_first_attempts,
            secret: Some(secret.clone()),
        },
        prefix.clone(),
        m,
    );
    let broker = crate::broker::Kind::parse(&sc.destination_type)?.map(|k| crate::broker::Broker::new(k, &run_id));
    if let Some(b) = &broker {
        if m != 1 {
            return Err(format!(
                "destination_type {:?} needs destinations_per_tenant: 1 (every destination writes to the same broker target)",
                sc.destination_type
            ));
        }
        rt.block_on(b.start_consumer(sink.stats.clone(), prefix.clone()))?;
    }
    let destination_body: DestinationBody = match &broker {
        Some(b) => {
            let bodies: Vec<String> = (0..sc.tenants).map(|t| b.destination_json(t, 0)).collect();
            Arc::new(move |t, _d| bodies[t as usize].clone())
        }
        None => {
            let (sink, secret) = (sink.addr, secret.clone());
            Arc::new(move |t, d| {
                format!(
                    r#"{{"id":"lt-t{t}-d{d}","type":"webhook","topics":"*","config":{{"url":"http://{sink}/d/{d}"}},"credentials":{{"secret":"{secret}"}}}}"#
                )
            })
        }
    };

    let api_key = opts
        .target
        .as_ref()
        .map(|t| t.api_key.clone())
        .unwrap_or_else(|| format!("lt-key-{run_id}"));
    let (spawned, addr) = match &opts.target {
        Some(t) => (None, t.addr),
        None => {
            let (s, a) = spawn_server(
                &opts.server_bin,
                opts.server_cores.as_deref(),
                sc,
                &api_key,
                sink.addr,
                &run_id,
            )?;
            (Some(s), a)
        }
    };
    let pid = spawned.as_ref().map(|s| s.child.id());
    rt.block_on(wait_healthy(addr))?;

    // ---- provisioning ----
    let rss_before = pid.and_then(procstat::memory).map(|m| m.0);
    let split_before = pid.and_then(procstat::rss_split);
    let prov_start = Instant::now();
    let total = sc.tenants * (1 + m);
    let pb = bar(total, "provision", opts.quiet);
    rt.block_on(provision(addr, &api_key, sc, destination_body, &pb))?;
    pb.finish();
    let provision_secs = prov_start.elapsed().as_secs_f64();
    // Let the allocator settle before reading RSS.
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = pid.and_then(procstat::memory).map(|m| m.0);
    let split_after = pid.and_then(procstat::rss_split);

    // ---- publishing ----
    let lag = LagSampler::start(&rt, addr);
    let cpu0 = pid.and_then(procstat::cpu_seconds);
    let threads0 = pid.map(procstat::thread_cpu).unwrap_or_default();
    let back_ends0 = pid.map(|_| procstat::back_end_cpu()).unwrap_or_default();
    let disk0 = spawned.as_ref().and_then(|s| procstat::device_writes(s.dir.path()));
    let journal0 = rt.block_on(journal_commits(addr));
    let publish = rt.block_on(publish(addr, &api_key, sc, &prefix, opts.quiet))?;
    let journal = match (journal0, rt.block_on(journal_commits(addr))) {
        (Some(a), Some(b)) => b.since(&a).summary(),
        _ => None,
    };
    let expected = publish.accepted * m;

    // ---- draining ----
    let pb = bar(expected, "delivered", opts.quiet);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs(sc.drain_seconds);
    loop {
        let d = sink.stats.delivered() as u64;
        pb.set_position(d.min(expected));
        if d >= expected || Instant::now() > drain_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_lag = rt.block_on(lag.finish(addr));
    // A short grace period catches duplicates that are still in flight.
    std::thread::sleep(Duration::from_millis(500));
    pb.finish();
    let cpu1 = pid.and_then(procstat::cpu_seconds);
    let threads1 = pid.map(procstat::thread_cpu).unwrap_or_default();
    let back_ends1 = pid.map(|_| procstat::back_end_cpu()).unwrap_or_default();
    let disk1 = spawned.as_ref().and_then(|s| procstat::device_writes(s.dir.path()));
    // Read before the baseline also uses the sink.
    let sink_requests = sink.stats.requests.load(Ordering::Relaxed);
    let foreign = sink.stats.foreign.load(Ordering::Relaxed);
    if foreign > 0 {
        eprintln!("sink: {foreign} requests that were not harness deliveries (operator events, say)");
    }
    let peak_rss = pid.and_then(procstat::memory).map(|m| m.1);
    drop(spawned);

    // ---- analysis ----
    let arrivals = sink.stats.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let n_keys = (publish.published * m) as usize;
    let mut seen = vec![false; n_keys];
    let mut unique = 0u64;
    let mut dups = 0u64;
    let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    let mut last_arrival = publish.start;
    let bucket = Duration::from_millis(250);
    let mut delivered_series: Vec<u64> = Vec::new();
    for a in &arrivals {
        let k = a.key as usize;
        let n = (a.key / m) as usize;
        if k >= n_keys || !publish.accepted_mask[n] {
            continue;
        }
        if seen[k] {
            dups += 1;
            continue;
        }
        seen[k] = true;
        unique += 1;
        last_arrival = last_arrival.max(a.at);
        let since_start = a.at.saturating_duration_since(publish.start);
        let sent = Duration::from_nanos(publish.send_ns[n]);
        let _ = e2e.record(since_start.saturating_sub(sent).as_micros().max(1) as u64);
        let b = (since_start.as_nanos() / bucket.as_nanos()) as usize;
        if delivered_series.len() <= b {
            delivered_series.resize(b + 1, 0);
        }
        delivered_series[b] += 1;
    }
    let lost = expected.saturating_sub(unique);
    let delivery_span = last_arrival.saturating_duration_since(publish.start).as_secs_f64();
    let deliveries_per_s = if delivery_span > 0.0 {
        unique as f64 / delivery_span
    } else {
        0.0
    };
    let mut published_series = vec![0u64; delivered_series.len().max(publish.series.len())];
    for (i, v) in publish.series.iter().enumerate() {
        published_series[i] = *v;
    }
    delivered_series.resize(published_series.len(), 0);

    // ---- the ceiling, same sink, same cores ----
    let baseline = match (&broker, opts.baseline) {
        (_, false) => None,
        (None, true) => {
            let body = Bytes::from(crate::payload(sc.payload_bytes));
            let secs = opts.baseline_seconds;
            let rps = crate::client::raw_baseline(sink.addr, cores, 64, body, Duration::from_secs(secs));
            Some(report::Baseline {
                requests_per_s: rps,
                seconds: secs,
                connections: 64,
                threads: cores,
                client: "raw keep-alive client → same sink".into(),
            })
        }
        (Some(b), true) => {
            let body = Bytes::from(crate::payload(sc.payload_bytes));
            let secs = opts.baseline_seconds;
            let rps = rt.block_on(b.raw_baseline(body, secs))?;
            Some(report::Baseline {
                requests_per_s: rps,
                seconds: secs,
                connections: crate::broker::RAW_IN_FLIGHT,
                threads: cores,
                client: format!(
                    "raw {} client, each publish acknowledged → same broker",
                    sc.destination_type
                ),
            })
        }
    };
    if let Some(b) = &broker {
        rt.block_on(b.finish());
    }
    let over_baseline = baseline.as_ref().map(|b| deliveries_per_s / b.requests_per_s);
    let (ratio, vs_raw_client) = if broker.is_some() {
        (None, over_baseline)
    } else {
        (over_baseline, None)
    };

    Ok(Report {
        scenario: sc.clone(),
        date: chrono::Utc::now().to_rfc3339(),
        cores,
        server: match &opts.target {
            Some(t) => format!("external {}", t.addr),
            None => format!("spawned {}", opts.server_bin.display()),
        },
        provisioning: report::Provisioning {
            tenants: sc.tenants,
            destinations: sc.tenants * m,
            seconds: provision_secs,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            bytes_per_destination: match (rss_before, rss_after) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / (sc.tenants * m) as f64),
                _ => None,
            },
            heap_bytes_per_destination: match (split_before, split_after) {
                (Some(a), Some(b)) => Some(b.0.saturating_sub(a.0) as f64 / (sc.tenants * m) as f64),
                _ => None,
            },
            file_bytes_per_destination: match (split_before, split_after) {
                (Some(a), Some(b)) => Some(b.1.saturating_sub(a.1) as f64 / (sc.tenants * m) as f64),
                _ => None,
            },
        },
        publish: report::Publish {
            published: publish.sent,
            accepted: publish.accepted,
            rejected: publish.rejected,
            errors: publish.errors,
            seconds: publish.seconds,
            per_s: publish.accepted as f64 / publish.seconds.max(1e-9),
            latency_us: Percentiles::from(&publish.latency),
        },
        delivery: report::Delivery {
            expected,
            delivered: unique,
            duplicates: dups,
            lost,
            per_s: deliveries_per_s,
            span_seconds: delivery_span,
            latency_us: Percentiles::from(&e2e),
            sink_requests,
            failures_sent: sink.stats.failures_sent.load(Ordering::Relaxed),
            bad_signatures: sink.stats.bad_signatures.load(Ordering::Relaxed),
        },
        server_process: report::Process {
            cpu_seconds: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            peak_rss_bytes: peak_rss,
            threads: match (cpu0, cpu1) {
                (Some(a), Some(b)) if !threads1.is_empty() => procstat::cpu_by_role(&threads0, &threads1, b - a)
                    .into_iter()
                    .map(|(role, cpu_seconds)| report::ThreadRole { role, cpu_seconds })
                    .collect(),
                _ => Vec::new(),
            },
            device_writes: match (disk0, disk1) {
                (Some(a), Some(b)) => Some(report::DeviceWrites {
                    bytes: b.0.saturating_sub(a.0),
                    requests: b.1.saturating_sub(a.1),
                }),
                _ => None,
            },
            back_ends: procstat::back_end_cpu_between(&back_ends0, &back_ends1)
                .into_iter()
                .map(|(role, cpu_seconds)| report::ThreadRole { role, cpu_seconds })
                .collect(),
        },
        baseline,
        ratio,
        vs_raw_client,
        series: report::Series {
            bucket_ms: bucket.as_millis() as u64,
            published: published_series,
            delivered: delivered_series,
        },
        latency_quantiles: report::quantiles(&publish.latency, &e2e),
        log_lag,
        journal,
    })
}

/// The server's journal commit counters and histogram (summed over shards),
/// as `/metrics` shows them at one moment.
#[derive(Debug, Clone, Default)]
struct CommitScrape {
    commits: f64,
    requests: f64,
    sum_seconds: f64,
    count: f64,
    /// Cumulative `(le seconds, count)` per bucket, `le` ascending.
    buckets: Vec<(f64, f64)>,
}

impl CommitScrape {
    fn since(&self, before: &CommitScrape) -> CommitScrape {
        CommitScrape {
            commits: self.commits - before.commits,
            requests: self.requests - before.requests,
            sum_seconds: self.sum_seconds - before.sum_seconds,
            count: self.count - before.count,
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let was = before.buckets.iter().find(|b| b.0 == *le).map(|b| b.1).unwrap_or(0.0);
                    (*le, n - was)
                })
                .collect(),
        }
    }

    fn summary(&self) -> Option<report::JournalCommits> {
        if self.count <= 0.0 {
            return None;
        }
        let le_ms = |q: f64| {
            let want = q * self.count;
            self.buckets
                .iter()
                .find(|(_, n)| *n >= want)
                .map(|(le, _)| if le.is_finite() { le * 1000.0 } else { f64::INFINITY })
                .unwrap_or(f64::INFINITY)
        };
        Some(report::JournalCommits {
            commits: self.commits as u64,
            requests_per_commit: self.requests / self.commits.max(1.0),
            mean_ms: self.sum_seconds * 1000.0 / self.count,
            p50_le_ms: le_ms(0.5),
            p99_le_ms: le_ms(0.99),
            max_le_ms: le_ms(1.0),
            over_5ms: (self.count
                - self
                    .buckets
                    .iter()
                    .find(|(le, _)| (*le - 0.005).abs() < 1e-9)
                    .map_or(self.count, |b| b.1))
            .max(0.0) as u64,
        })
    }
}

/// Reads [`CommitScrape`] from the server's `/metrics`.
async fn journal_commits(addr: SocketAddr) -> Option<CommitScrape> {
    let mut c = Conn::open(addr, None).await.ok()?;
    let (status, body) = c.request("GET", "/metrics", Bytes::new()).await.ok()?;
    if status != 200 {
        return None;
    }
    parse_commits(std::str::from_utf8(&body).ok()?)
}

/// The journal commit series of a Prometheus text exposition, summed over
/// shards; `None` when it has none.
fn parse_commits(text: &str) -> Option<CommitScrape> {
    let mut s = CommitScrape::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else { continue };
        let name = name_labels.split('{').next().unwrap_or_default();
        match name {
            "outrider_journal_commits_total" | "outrider_journal_commits" => s.commits += v,
            "outrider_journal_commit_requests_total" | "outrider_journal_commit_requests" => s.requests += v,
            "outrider_journal_commit_duration_seconds_sum" => s.sum_seconds += v,
            "outrider_journal_commit_duration_seconds_count" => {
                s.count += v;
                seen = true;
            }
            "outrider_journal_commit_duration_seconds_bucket" => {
                let le = name_labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(|l| {
                        if l == "+Inf" {
                            f64::INFINITY
                        } else {
                            l.parse().unwrap_or(f64::NAN)
                        }
                    });
                if let Some(le) = le.filter(|l| !l.is_nan()) {
                    match s.buckets.iter_mut().find(|b| b.0 == le) {
                        Some(b) => b.1 += v,
                        None => s.buckets.push((le, v)),
                    }
                }
            }
            _ => {}
        }
    }
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(s)
}

/// The server's log-pipeline backlog, when its `/metrics` has one.
async fn log_lag(addr: SocketAddr) -> Option<u64> {
    let mut c = Conn::open(addr, None).await.ok()?;
    let (status, body) = c.request("GET", "/metrics", Bytes::new()).await.ok()?;
    if status != 200 {
        return None;
    }
    std::str::from_utf8(&body)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("outrider_log_pipeline_lag_records "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Samples [`log_lag`] every 250 ms while the run publishes and drains.
struct LagSampler {
    max: Arc<AtomicU64>,
    seen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl LagSampler {
    fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Self {
        let s = LagSampler {
            max: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (max, seen, stop) = (s.max.clone(), s.seen.clone(), s.stop.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = log_lag(addr).await {
                    seen.store(true, Ordering::Relaxed);
                    max.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        s
    }

    /// After the last delivery: the backlog then, and how long it takes to
    /// reach zero (up to 60 s).
    async fn finish(self, addr: SocketAddr) -> Option<report::LogLag> {
        self.stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let first = log_lag(addr).await;
        if first.is_none() && !self.seen.load(Ordering::Relaxed) {
            return None;
        }
        let at_last = first.unwrap_or(0);
        self.max.fetch_max(at_last, Ordering::Relaxed);
        let mut caught_up = None;
        while t0.elapsed() < Duration::from_secs(60) {
            if log_lag(addr).await == Some(0) {
                caught_up = Some(t0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(report::LogLag {
            max_records: self.max.load(Ordering::Relaxed),
            at_last_delivery: at_last,
            caught_up_seconds: caught_up,
        })
    }
}

/// The `POST /destinations` body of destination `d` of tenant `t`.
type DestinationBody = Arc<dyn Fn(u64, u64) -> String + Send + Sync>;

async fn provision(
    addr: SocketAddr,
    key: &str,
    sc: &Scenario,
    destination_body: DestinationBody,
    pb: &ProgressBar,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..sc.provision_concurrency.min(sc.tenants as usize).max(1) {
        let (next, failed, pb) = (next.clone(), failed.clone(), pb.clone());
        let (key, destination_body) = (key.to_string(), destination_body.clone());
        let (tenants, m) = (sc.tenants, sc.destinations_per_tenant);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, Some(&key)).await.map_err(|e| e.to_string())?;
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= tenants || failed.load(Ordering::Relaxed) {
                    return Ok::<(), String>(());
                }
                let (s, b) = c
                    .request("PUT", &format!("/api/v1/tenants/lt-t{t}"), Bytes::new())
                    .await
                    .map_err(|e| e.to_string())?;
                if s != 201 && s != 200 {
                    failed.store(true, Ordering::Relaxed);
                    return Err(format!("tenant lt-t{t}: {s} {}", String::from_utf8_lossy(&b)));
                }
                pb.inc(1);
                for d in 0..m {
                    let body = destination_body(t, d);
                    let (s, b) = c
                        .request(
                            "POST",
                            &format!("/api/v1/tenants/lt-t{t}/destinations"),
                            Bytes::from(body),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    if s != 201 {
                        failed.store(true, Ordering::Relaxed);
                        return Err(format!("destination lt-t{t}-d{d}: {s} {}", String::from_utf8_lossy(&b)));
                    }
                    pb.inc(1);
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

struct PublishResult {
    start: Instant,
    seconds: f64,
    /// Event numbers handed out (the size of the per-event tables).
    published: u64,
    /// Requests actually sent.
    sent: u64,
    accepted: u64,
    rejected: u64,
    errors: u64,
    latency: Histogram<u64>,
    /// Per event number: when it was sent, in ns since `start`.
    send_ns: Vec<u64>,
    accepted_mask: Vec<bool>,
    series: Vec<u64>,
}

async fn publish(
    addr: SocketAddr,
    key: &str,
    sc: &Scenario,
    prefix: &str,
    quiet: bool,
) -> Result<PublishResult, String> {
    let max = sc.max_events;
    let send_ns: Arc<Vec<AtomicU64>> = Arc::new((0..max).map(|_| AtomicU64::new(0)).collect());
    let status: Arc<Vec<std::sync::atomic::AtomicU8>> =
        Arc::new((0..max).map(|_| std::sync::atomic::AtomicU8::new(0)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let payload: Arc<str> = Arc::from(crate::payload(sc.payload_bytes));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(sc.duration_seconds);
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(sc.duration_seconds);
        b.set_style(
            ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}s {prefix}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message("publish");
        b
    };
    let mut tasks = Vec::new();
    for _ in 0..sc.publish_concurrency {
        let (send_ns, status, next, accepted, payload) = (
            send_ns.clone(),
            status.clone(),
            next.clone(),
            accepted.clone(),
            payload.clone(),
        );
        let (key, prefix) = (key.to_string(), prefix.to_string());
        let (rate, tenants) = (sc.rate, sc.tenants);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut errors = 0u64;
            let mut c = Conn::open(addr, Some(&key)).await.map_err(|e| e.to_string())?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max || Instant::now() >= deadline {
                    break;
                }
                if let Some(offset) = (n * 1_000_000_000).checked_div(rate) {
                    let at = start + Duration::from_nanos(offset);
                    if at >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                let body = format!(
                    r#"{{"id":"{prefix}{n}","tenant_id":"lt-t{}","topic":"load.test","data":{payload}}}"#,
                    n % tenants
                );
                let t0 = Instant::now();
                send_ns[n as usize].store(t0.duration_since(start).as_nanos() as u64, Ordering::Relaxed);
                match c.request("POST", "/api/v1/publish", Bytes::from(body)).await {
                    Ok((202, _)) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        status[n as usize].store(1, Ordering::Relaxed);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => status[n as usize].store(2, Ordering::Relaxed),
                    Err(_) => {
                        status[n as usize].store(3, Ordering::Relaxed);
                        errors += 1;
                    }
                }
            }
            Ok::<_, String>((hist, errors))
        }));
    }
    let ticker = {
        let pb = pb.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let e = start.elapsed();
                pb.set_position(e.as_secs().min(pb.length().unwrap_or(0)));
                let a = accepted.load(Ordering::Relaxed);
                pb.set_prefix(format!("{a} accepted, {:.0}/s", a as f64 / e.as_secs_f64().max(1e-3)));
            }
        })
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())??;
        latency.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    ticker.abort();
    pb.finish();
    let seconds = start.elapsed().as_secs_f64();
    // Slots handed out; a worker that hit the deadline took one it never sent.
    let published = next.load(Ordering::Relaxed).min(max);
    let mut sent = 0u64;
    let mut accepted_mask = vec![false; published as usize];
    let mut series: Vec<u64> = Vec::new();
    let mut rejected = 0;
    let mut send = vec![0u64; published as usize];
    for n in 0..published as usize {
        send[n] = send_ns[n].load(Ordering::Relaxed);
        let st = status[n].load(Ordering::Relaxed);
        if st != 0 {
            sent += 1;
        }
        match st {
            1 => {
                accepted_mask[n] = true;
                let b = (send[n] / 250_000_000) as usize;
                if series.len() <= b {
                    series.resize(b + 1, 0);
                }
                series[b] += 1;
            }
            2 => rejected += 1,
            _ => {}
        }
    }
    Ok(PublishResult {
        start,
        seconds,
        published,
        sent,
        accepted: accepted.load(Ordering::Relaxed),
        rejected,
        errors,
        latency,
        send_ns: send,
        accepted_mask,
        series,
    })
}

#[cfg(test)]
mod run_id_tests {
    #[test]
    fn run_ids_in_one_process_differ_in_their_first_digits() {
        let ids: Vec<String> = (0..64).map(|_| super::new_run_id()).collect();
        let prefixes: std::collections::HashSet<&str> = ids.iter().map(|i| &i[..6]).collect();
        assert_eq!(prefixes.len(), ids.len(), "{ids:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_commits_are_summed_over_shards_and_differenced() {
        let at = |n: u64| {
            format!(
                "# TYPE outrider_journal_commits counter\n\
                 outrider_journal_commits_total{{shard=\"0\"}} {n}\n\
                 outrider_journal_commits_total{{shard=\"1\"}} {n}\n\
                 outrider_journal_commit_requests_total{{shard=\"0\"}} {}\n\
                 outrider_journal_commit_duration_seconds_sum{{shard=\"0\"}} {}\n\
                 outrider_journal_commit_duration_seconds_count{{shard=\"0\"}} {n}\n\
                 outrider_journal_commit_duration_seconds_count{{shard=\"1\"}} {n}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"0.001\",shard=\"0\"}} {}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"0.001\",shard=\"1\"}} {n}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"0.005\",shard=\"0\"}} {}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"0.005\",shard=\"1\"}} {n}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"+Inf\",shard=\"0\"}} {n}\n\
                 outrider_journal_commit_duration_seconds_bucket{{le=\"+Inf\",shard=\"1\"}} {n}\n",
                n * 4,
                n as f64 * 0.002,
                n / 2,
                n - n / 10,
            )
        };
        let before = parse_commits(&at(100)).unwrap();
        let after = parse_commits(&at(300)).unwrap();
        let j = after.since(&before).summary().unwrap();
        assert_eq!(j.commits, 400);
        assert!((j.requests_per_commit - 2.0).abs() < 1e-9, "{j:?}");
        // Shard 0: half its 200 commits within 1 ms, 180 within 5 ms; shard 1 all within 1 ms.
        assert_eq!(j.p50_le_ms, 1.0);
        assert_eq!(j.p99_le_ms, f64::INFINITY);
        assert_eq!(j.over_5ms, 20);
        assert!(parse_commits("outrider_up 1\n").is_none());
    }
}
