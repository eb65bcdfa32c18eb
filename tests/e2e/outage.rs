//! Back-end restarts mid-run: Redis, then PostgreSQL, then RabbitMQ are
//! restarted (for real) while an API node and a delivery node keep serving a
//! steady publisher. Nothing accepted may be lost, the nodes log each outage
//! and recover without being restarted.
//!
//! Restarting the machine's shared PostgreSQL and RabbitMQ would break every
//! other test running beside it, so this test is ignored by a plain run and
//! run alone by `scripts/test.sh` (its serial phase). Redis on this machine
//! keeps nothing on disk, and a Redis restart without persistence loses the
//! deployment's state, as it would in production: the test runs its own
//! `redis-server` with an fsync'ed append-only file and restarts that.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::postgres::{fresh_schema, pg_url};

pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn().await;
        r
    }

    pub(crate) async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is required for this test: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the append-only file (fsync'ed per write) is all that survives.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql (Debian's PostgreSQL cluster layout)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster")
}

/// Stops the machine's PostgreSQL (fast), waits `down`, starts it again.
pub(crate) fn restart_postgres(down: Duration) {
    let v = pg_version();
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &v, "main", "stop", "-m", "fast"],
    );
    std::thread::sleep(down);
    run("pg_ctlcluster", &["--skip-systemctl-redirect", &v, "main", "start"]);
}

/// Stops RabbitMQ's app, waits `down`, starts it and waits for it.
pub(crate) fn restart_rabbitmq(down: Duration) {
    run("rabbitmqctl", &["stop_app"]);
    std::thread::sleep(down);
    run("rabbitmqctl", &["start_app"]);
    run("rabbitmqctl", &["await_startup"]);
}

#[tokio::test]
#[ignore = "restarts the shared PostgreSQL and RabbitMQ: scripts/test.sh runs it alone, after the other tests"]
async fn outage_redis_postgres_and_rabbitmq_restarts_lose_nothing() {
    let mut redis = PrivateRedis::start().await;
    // The test's own connection does not survive the restart; counts use new ones.
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let id = format!("{}{}", std::process::id(), free_port());
    let logs = tempfile::tempdir().unwrap();
    let env = |service: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("SERVICE", service.into()),
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", redis.port.to_string()),
            ("DEPLOYMENT_ID", format!("o{id}")),
            ("POSTGRES_URL", url.clone()),
            ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".into()),
            ("RABBITMQ_EXCHANGE", "outrider-e2e".into()),
            ("RABBITMQ_DELIVERY_QUEUE", format!("outrider-e2e-outage-{id}")),
            ("RETRY_SCHEDULE", "1,1,1,1,1".into()),
        ]
    };
    let (a, d) = (env("api"), env("delivery"));
    let refs = |v: &[(&'static str, String)]| -> Vec<(&'static str, String)> { v.to_vec() };
    let (a, d) = (refs(&a), refs(&d));
    let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d: Vec<(&str, &str)> = d.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let api_log = logs.path().join("api.log");
    let del_log = logs.path().join("delivery.log");
    let api_node = Server::start_logged(&a, Some(api_log.clone())).await;
    let _delivery = Server::start_logged(&d, Some(del_log.clone())).await;
    let api = Arc::new(Api::admin(&api_node));
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    for k in 0..5 {
        api.webhook("t1", &rx.url(&format!("/o/{k}")), json!({"topics": [format!("k{k}")]}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A steady publisher: each event is retried (same id) until accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (api, stop, accepted, refused) = (api.clone(), stop.clone(), accepted.clone(), refused.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("out-{i}");
                let body = json!({"id": id, "tenant_id": "t1", "topic": format!("k{}", i % 5), "data": {"i": i}});
                loop {
                    let r = tokio::time::timeout(Duration::from_secs(10), api.publish(body.clone())).await;
                    match r {
                        Ok(r) if r.status == 202 => break,
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                accepted.lock().unwrap().push(id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let step = Duration::from_secs(3);
    tokio::time::sleep(step).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.spawn().await;
    tokio::time::sleep(step).await;
    // Stop, two seconds down, start: long enough for writes to fail meanwhile.
    tokio::task::spawn_blocking(|| restart_postgres(Duration::from_secs(2)))
        .await
        .unwrap();
    tokio::time::sleep(step).await;
    tokio::task::spawn_blocking(|| restart_rabbitmq(Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(step).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();

    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let got: HashSet<String> = rx.got().iter().filter_map(|r| r.header("x-outpost-event-id")).collect();
        let missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deliveries = rx.count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let in_pg = loop {
        // PostgreSQL was just restarted by this test: until it accepts
        // connections again the count is unknown (-1), not a failure (seen
        // once in CI: connection refused here).
        let n: i64 = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((pg, conn)) => {
                tokio::spawn(conn);
                match pg.query_one("SELECT count(*) FROM events", &[]).await {
                    Ok(row) => row.get(0),
                    Err(_) => -1,
                }
            }
            Err(_) => -1,
        };
        if n >= accepted.len() as i64 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "outage: accepted={} delivered={} deliveries={deliveries} duplicates={} lost={missing} refused_publishes={} events_in_postgres={in_pg}",
        accepted.len(),
        accepted.len() - missing,
        deliveries.saturating_sub(accepted.len() - missing),
        refused.load(Ordering::Relaxed),
    );
    assert!(accepted.len() > 100, "the publisher kept going");
    assert_eq!(missing, 0, "every accepted event delivered");
    assert_eq!(
        in_pg,
        accepted.len() as i64,
        "every accepted event logged in PostgreSQL"
    );
    let text = std::fs::read_to_string(&api_log).unwrap_or_default() + &std::fs::read_to_string(&del_log).unwrap();
    let lower = text.to_lowercase();
    for what in ["redis", "postgres", "rabbitmq"] {
        assert!(lower.contains(what), "the nodes logged the {what} outage:\n{text}");
    }
}
