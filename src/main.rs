//! `outrider`: the server binary. Thin: parse arguments and configuration,
//! start the engine (store + shards) and the API, wait for a signal.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use outrider_engine::config::Service;
use outrider_engine::{Config, Engine};

#[derive(Parser)]
#[command(
    name = "outrider",
    version,
    about = "Outpost-compatible event delivery, thread-per-core"
)]
struct Cli {
    /// Configuration file (YAML, or dotenv when it ends in .env).
    #[arg(long, global = true, env = "CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve {
        /// Which service to run: all, api, delivery or log.
        #[arg(long)]
        service: Option<String>,
    },
    /// Apply the PostgreSQL log-store migrations (POSTGRES_URL) and exit.
    /// The server also applies them at start; this is for operators who
    /// migrate before rolling out.
    Migrate {
        /// Only list the migrations that are not applied yet.
        #[arg(long)]
        plan: bool,
    },
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Migrate { plan }) = &cli.command {
        return migrate(cli.config.as_deref(), *plan);
    }
    let service = match &cli.command {
        Some(Command::Serve { service }) => service.clone(),
        _ => None,
    };
    if let Some(s) = service {
        // The flag wins over SERVICE, as a command-line option should.
        std::env::set_var("SERVICE", s);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The control plane, the queue consumers and the metrics port run here;
    // the API's accept loops run on the shards' threads (`spawn_servers`).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .thread_name("outrider-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The OTLP gRPC client lives on this runtime.
    let logs = match &config.otel {
        None => None,
        Some(otel) => {
            let _in_runtime = rt.enter();
            match outrider_engine::otel::install(otel) {
                Ok(logs) => logs,
                Err(e) => {
                    eprintln!("outrider: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
    };
    init_tracing(&config.log_level, config.log_format, logs.as_ref());
    let result = rt.block_on(serve(config));
    // The last spans, metrics and logs leave before the runtime stops.
    outrider_engine::otel::shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrider: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn migrate(config: Option<&std::path::Path>, plan: bool) -> std::process::ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let Some(url) = config.postgres_url.clone() else {
        eprintln!("outrider migrate: POSTGRES_URL is not set; the embedded store creates its own schema at start");
        return std::process::ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let pg =
            outrider_engine::store::postgres::PostgresLogStore::connect(url.expose(), config.backend_connect_timeout)
                .await
                .map_err(|e| format!("POSTGRES_URL: {e}"))?;
        if plan {
            pg.pending_migrations().await.map_err(|e| e.to_string())
        } else {
            pg.migrate().await.map_err(|e| e.to_string())
        }
    });
    match result {
        Ok(list) if list.is_empty() => {
            println!("outrider migrate: the database is up to date");
            std::process::ExitCode::SUCCESS
        }
        Ok(list) => {
            let verb = if plan { "pending" } else { "applied" };
            for m in list {
                println!("{verb}: {m}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outrider migrate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(
    level: &str,
    format: outrider_engine::config::LogFormat,
    otel_logs: Option<&opentelemetry_sdk::logs::SdkLoggerProvider>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    // Log records to OTLP at LOG_LEVEL; the exporter's own HTTP and gRPC
    // stack never feeds back into it.
    let otel = otel_logs.map(|p| {
        let filter = tracing_subscriber::EnvFilter::try_new(format!(
            "{level},h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off"
        ))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p).with_filter(filter)
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // One of the two is set: the layer types differ, an Option of each is a layer.
    let (text, json) = match format {
        outrider_engine::config::LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_target(false)), None),
        outrider_engine::config::LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(filter)
        .with(text)
        .with(json)
        .init();
}

async fn serve(config: Config) -> Result<(), String> {
    let port = config.api_port;
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    if config.dev_mode {
        // Loud on purpose: these are generated secrets, fine for a laptop only.
        eprintln!("==================================================================");
        eprintln!(" outrider: no configuration found, running in embedded dev mode");
        eprintln!("   API key:     {}", config.api_key.expose());
        if let Some(p) = &config.dev_credentials_path {
            eprintln!("   stored in:   {} (reused on the next start)", p.display());
        }
        eprintln!("   data dir:    {}", config.data_dir.display());
        eprintln!("   SSRF guard:  OFF (private and loopback webhook URLs allowed)");
        eprintln!("   listening:   127.0.0.1:{port} only");
        eprintln!("==================================================================");
    } else if config.api_key.is_empty() {
        tracing::warn!("API_KEY is empty: the API accepts every request without authentication");
    }
    if config.allow_private_destinations && !config.dev_mode {
        tracing::warn!("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS=true: webhook URLs may point at private networks");
    }
    let shards = config.delivery_shards;
    let service = config.service;
    let data_dir = config.data_dir.clone();
    let dev_mode = config.dev_mode;
    let engine = Engine::start(config)
        .await
        .map_err(|e| format!("cannot start engine: {e}"))?;
    // Dev mode's generated key is printed on the console: only this machine
    // may use it.
    let host = if dev_mode { "127.0.0.1" } else { "0.0.0.0" };
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| format!("cannot listen on {host}:{port} (API_PORT): {e}"))?;
    tracing::info!(port, shards, ?service, data_dir = %data_dir.display(), "outrider listening");
    let state = outrider_api::AppState::new(engine.clone());
    let router = match service {
        // A delivery node serves health only; the API lives on api nodes.
        Service::Delivery => outrider_api::health_router(state),
        _ => outrider_api::router(state),
    };
    // Graceful shutdown waits for open requests; a client that never ends
    // its request must not hold the process: past the drain time it stops.
    let drain = engine.config.shutdown_drain_timeout;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    if let Some(mport) = engine.config.metrics_port {
        let listener = tokio::net::TcpListener::bind((host, mport))
            .await
            .map_err(|e| format!("cannot listen on {host}:{mport} (METRICS_PORT): {e}"))?;
        let metrics = outrider_api::metrics_router(outrider_api::AppState::new(engine.clone()));
        tokio::spawn(outrider_api::serve_router(listener, metrics, stopping(stop_rx.clone())));
        tracing::info!(port = mport, "metrics listening");
    }
    let servers = spawn_servers(&engine, listener, router, &stop_rx).await?;
    let all_served = async {
        let (count, mut lost) = (servers.len(), 0);
        for (i, server) in servers.into_iter().enumerate() {
            match server.await {
                Ok(r) => r.map_err(|e| format!("server error: {e}"))?,
                // Its shard's thread ended (a panic): the other accept loops
                // go on taking the connections; `/healthz` reports the shard.
                Err(e) => {
                    lost += 1;
                    tracing::error!(accept_loop = i, error = %e, "an API accept loop ended with its shard");
                }
            }
        }
        if lost == count {
            return Err("every shard's thread ended: nothing serves the API".to_string());
        }
        Ok::<(), String>(())
    };
    tokio::select! {
        r = all_served => r?,
        _ = async { stopping(stop_rx).await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "open API requests did not end within OUTRIDER_SHUTDOWN_DRAIN_SECONDS; closing them");
        }
    }
    tracing::info!("shutting down: draining the shards");
    let report = engine.shutdown().await;
    tracing::info!(
        finished = report.finished,
        abandoned = report.abandoned,
        left_for_next_start = report.left,
        "stopped"
    );
    Ok(())
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts the API's accept loops: one on each shard's thread (its pinned
/// `current_thread` runtime), all taking connections from the one listening
/// socket. A publish is then read, parsed and matched on a shard's core and
/// handed to the owning shard's inbox, a wake on the same thread when that is
/// its own; no shared multi-thread runtime sits on the publish path. One
/// shared socket rather than one `SO_REUSEPORT` socket per shard: the kernel
/// gives each new connection to whichever loop takes it first (a busy shard
/// tends to take fewer), a connection never waits in the backlog of a shard whose
/// thread died, and no other process can bind the port beside us. Every
/// node has at least one shard (`DELIVERY_SHARDS` ≥ 1), API-only ones too.
async fn spawn_servers(
    engine: &Engine,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Server>, String> {
    // Non-blocking already (tokio set it); the copies share that.
    let shared = listener
        .into_std()
        .map_err(|e| format!("cannot share the API socket: {e}"))?;
    let mut started = Vec::with_capacity(engine.shard_count());
    engine
        .on_shard_threads(|_| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            started.push(rx);
            let copy = shared.try_clone();
            let router = router.clone();
            let stop = stop.clone();
            Box::new(move || {
                // Registered with this thread's runtime, so its connections
                // are read here.
                let server = copy
                    .and_then(tokio::net::TcpListener::from_std)
                    .map(|l| tokio::spawn(outrider_api::serve_router(l, router, stopping(stop))));
                let _ = tx.send(server);
            })
        })
        .await
        .map_err(|e| format!("cannot start the API on the shards: {e}"))?;
    let mut servers = Vec::with_capacity(started.len());
    for rx in started {
        match rx.await {
            Ok(Ok(server)) => servers.push(server),
            Ok(Err(e)) => return Err(format!("cannot start the API on a shard: {e}")),
            Err(_) => return Err("a shard ended before its API accept loop started".into()),
        }
    }
    Ok(servers)
}

/// Resolves once the stop signal has been given.
async fn stopping(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
