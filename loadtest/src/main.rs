//! `loadtest`: run a scenario against Outrider (started here) or any
//! Outpost-compatible server, or measure the raw-client ceiling alone.
//!
//!   cargo build --release && cargo run --release -p loadtest -- run loadtest/scenarios/single.yaml
//!   cargo run --release -p loadtest -- run loadtest/scenarios/fanout.yaml --target http://127.0.0.1:3333 --api-key KEY
//!   cargo run --release -p loadtest -- baseline --seconds 5

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

fn real_main() -> Result<std::process::ExitCode, String> {
    match Cli::parse().cmd {
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
        } => {
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
            let server_bin = server_bin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("outrider")))
                    .unwrap_or_else(|| PathBuf::from("target/release/outrider"))
            });
            let opts = Options {
                target,
                server_bin,
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
                for kv in &server_env {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--server-env {kv}: expected KEY=VALUE"))?;
                    sc.server_env.insert(k.to_string(), v.to_string());
                }
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
