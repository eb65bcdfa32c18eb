//! `loadtest`: run a scenario against Outrider (started here) or any
//! Outpost-compatible server, or measure the raw-client ceiling alone.
//!
//!   cargo build --release && cargo run --release -p loadtest -- run loadtest/scenarios/single.yaml
//!   cargo run --release -p loadtest -- run loadtest/scenarios/fanout.yaml --target http://127.0.0.1:3333 --api-key KEY
//!   cargo run --release -p loadtest -- baseline --seconds 5
//!   cargo run --release -p loadtest -- scale loadtest/scenarios/single.yaml --shards 1 --server-cores 0 --harness-cores 1

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use loadtest::run::{self, Options, Target};
use loadtest::scenario::Scenario;

#[derive(Parser)]
#[command(name = "loadtest", about = "Outrider's load harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one or more scenario files.
    Run {
        scenarios: Vec<PathBuf>,
        /// An already running server (http://host:port); default: start ours.
        #[arg(long)]
        target: Option<String>,
        /// Admin API key of the --target server.
        #[arg(long, env = "LOADTEST_API_KEY")]
        api_key: Option<String>,
        /// The outrider binary to start (default: next to this executable).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Where reports go.
        #[arg(long, default_value = "loadtest/reports")]
        out: PathBuf,
        /// Skip the raw-client baseline.
        #[arg(long)]
        no_baseline: bool,
        #[arg(long, default_value_t = 5)]
        baseline_seconds: u64,
        /// Override the scenario's rate (events/s, 0 = max).
        #[arg(long)]
        rate: Option<u64>,
        /// Override the scenario's duration (seconds).
        #[arg(long)]
        duration: Option<u64>,
        /// Override the scenario's event cap.
        #[arg(long)]
        max_events: Option<u64>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Extra environment for the started server (KEY=VALUE, repeatable).
        #[arg(long = "server-env", value_name = "KEY=VALUE")]
        server_env: Vec<String>,
        /// Pin the started server to these cores (`taskset -c` list: 0-3,8).
        #[arg(long)]
        server_cores: Option<String>,
        /// Pin the harness (clients, sink, baseline) to these cores.
        #[arg(long)]
        harness_cores: Option<String>,
    },
    /// One scenario at several `DELIVERY_SHARDS` values: deliveries/s,
    /// speed-up over the first value and server CPU per delivery for each.
    /// Shard count N runs the server on the first N cores of --server-cores.
    Scale {
        scenario: PathBuf,
        /// Shard counts to run, in order (the first is the speed-up baseline).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        shards: Vec<usize>,
        /// Cores for the server, in the order shards take them (`taskset -c` list).
        #[arg(long)]
        server_cores: String,
        /// Cores for the harness (`taskset -c` list).
        #[arg(long)]
        harness_cores: String,
        #[arg(long)]
        server_bin: Option<PathBuf>,
        #[arg(long)]
        duration: Option<u64>,
        #[arg(long)]
        quiet: bool,
        /// Extra environment for the started server (KEY=VALUE, repeatable).
        #[arg(long = "server-env", value_name = "KEY=VALUE")]
        server_env: Vec<String>,
    },
    /// Only the ceiling: a raw keep-alive client into the harness's sink.
    Baseline {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Expands a `taskset -c` style list (`0-3,8`) into core numbers.
fn cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad core list {list:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("empty core list {list:?}"));
    }
    Ok(out)
}

/// Pins this process (and every thread it starts afterwards) to `list`.
fn pin_self(list: &str) -> Result<(), String> {
    cpu_list(list)?;
    let ok = std::process::Command::new("taskset")
        .args(["-p", "-c", list, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if !ok.success() {
        return Err(format!("taskset could not pin the harness to {list}"));
    }
    Ok(())
}

fn default_server_bin(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("outrider")))
            .unwrap_or_else(|| PathBuf::from("target/release/outrider"))
    })
}

fn apply_env(sc: &mut Scenario, server_env: &[String]) -> Result<(), String> {
    for kv in server_env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--server-env {kv}: expected KEY=VALUE"))?;
        sc.server_env.insert(k.to_string(), v.to_string());
    }
    Ok(())
}

fn real_main() -> Result<std::process::ExitCode, String> {
    match Cli::parse().cmd {
        Cmd::Scale {
            scenario,
            shards,
            server_cores,
            harness_cores,
            server_bin,
            duration,
            quiet,
            server_env,
        } => {
            pin_self(&harness_cores)?;
            let cores = cpu_list(&server_cores)?;
            let opts_for = |n: usize| -> Result<Options, String> {
                if n == 0 || n > cores.len() {
                    return Err(format!(
                        "{n} shards need {n} server cores; --server-cores has {}",
                        cores.len()
                    ));
                }
                Ok(Options {
                    target: None,
                    server_bin: default_server_bin(server_bin.clone()),
                    server_cores: Some(cores[..n].iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")),
                    baseline: false,
                    baseline_seconds: 0,
                    quiet,
                })
            };
            let mut rows: Vec<(usize, String, f64, f64, f64, f64, u64)> = Vec::new();
            for &n in &shards {
                let mut sc = Scenario::load(&scenario)?;
                if let Some(d) = duration {
                    sc.duration_seconds = d;
                }
                apply_env(&mut sc, &server_env)?;
                sc.server_env.insert("DELIVERY_SHARDS".into(), n.to_string());
                let opts = opts_for(n)?;
                let r = run::run(&sc, &opts)?;
                if !quiet {
                    print!("{}", r.summary());
                }
                let cpu = r.server_process.cpu_seconds.unwrap_or(0.0);
                let per = cpu * 1e6 / r.delivery.delivered.max(1) as f64;
                rows.push((
                    n,
                    opts.server_cores.unwrap_or_default(),
                    r.delivery.per_s,
                    per,
                    cpu / r.delivery.span_seconds.max(1e-9),
                    r.publish.latency_us.p99 as f64 / 1000.0,
                    r.delivery.lost,
                ));
            }
            let base = rows.first().map(|r| r.2).unwrap_or(1.0).max(1e-9);
            println!("== scale: {} (harness on cores {harness_cores})", scenario.display());
            println!("| shards | server cores | deliveries/s | speed-up | server CPU µs/delivery | server cores busy | publish p99 ms | lost |");
            println!("|---|---|---|---|---|---|---|---|");
            for (n, c, rate, per, busy, p99, lost) in &rows {
                println!(
                    "| {n} | {c} | {rate:.0} | {:.2}x | {per:.1} | {busy:.2} | {p99:.2} | {lost} |",
                    rate / base
                );
            }
            let lost: u64 = rows.iter().map(|r| r.6).sum();
            Ok(if lost > 0 {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            })
        }
        Cmd::Baseline {
            seconds,
            connections,
            payload_bytes,
        } => {
            let sink = loadtest::sink::start(None, Default::default(), "none-".into(), 1);
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let rps = loadtest::client::raw_baseline(
                sink.addr,
                cores,
                connections,
                bytes::Bytes::from(loadtest::payload(payload_bytes)),
                Duration::from_secs(seconds),
            );
            println!("raw keep-alive client → sink: {rps:.0} requests/s ({connections} connections, {cores} threads, {payload_bytes} B)");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenarios,
            target,
            api_key,
            server_bin,
            out,
            no_baseline,
            baseline_seconds,
            rate,
            duration,
            max_events,
            quiet,
            server_env,
            server_cores,
            harness_cores,
        } => {
            if let Some(h) = &harness_cores {
                pin_self(h)?;
            }
            if let Some(c) = &server_cores {
                cpu_list(c)?;
            }
            if scenarios.is_empty() {
                return Err("give at least one scenario file (loadtest/scenarios/*.yaml)".into());
            }
            let target = match target {
                Some(url) => Some(Target {
                    addr: run::parse_target(&url)?,
                    api_key: api_key.ok_or("--target needs --api-key (or LOADTEST_API_KEY)")?,
                }),
                None => None,
            };
            let server_bin = default_server_bin(server_bin);
            let opts = Options {
                target,
                server_bin,
                server_cores,
                baseline: !no_baseline,
                baseline_seconds,
                quiet,
            };
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut lost_any = false;
            for path in scenarios {
                let mut sc = Scenario::load(&path)?;
                if let Some(r) = rate {
                    sc.rate = r;
                }
                if let Some(d) = duration {
                    sc.duration_seconds = d;
                }
                if let Some(m) = max_events {
                    sc.max_events = m;
                }
                apply_env(&mut sc, &server_env)?;
                let report = run::run(&sc, &opts)?;
                print!("{}", report.summary());
                let stem = format!("{}-{}", sc.name, chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
                let json = out.join(format!("{stem}.json"));
                let html = out.join(format!("{stem}.html"));
                std::fs::write(&json, serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?)
                    .map_err(|e| format!("{}: {e}", json.display()))?;
                std::fs::write(&html, report.html()).map_err(|e| format!("{}: {e}", html.display()))?;
                println!("report        {} and {}\n", json.display(), html.display());
                lost_any |= report.delivery.lost > 0;
            }
            // Losing an accepted event is a failure of the server under test.
            Ok(if lost_any {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            })
        }
    }
}
