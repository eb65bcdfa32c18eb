//! Two nodes sharing tenants and destinations through Redis: a change made on
//! one node reaches the other's routing table and shards; a restart reloads
//! from Redis; an unreachable Redis refuses the start.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), f).await
}

async fn eventually_within(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `api`'s node lists `n` destinations of tenant `t1`.
async fn sees_destinations(api: &Api, n: usize) {
    sees_destinations_within(api, n, Duration::from_secs(10)).await
}

async fn sees_destinations_within(api: &Api, n: usize, limit: Duration) {
    eventually_within("the node sees the destinations", limit, async || {
        api.get("/tenants/t1/destinations")
            .await
            .body
            .as_array()
            .is_some_and(|v| v.len() == n)
    })
    .await;
}

#[tokio::test]
async fn two_nodes_share_entities_through_redis() {
    let dep = format!("e2e{}", std::process::id() as u64 * 1000 + free_port() as u64);
    let env = [("REDIS_HOST", "127.0.0.1"), ("DEPLOYMENT_ID", dep.as_str())];
    let a = Server::start(&env).await;
    let mut b = Server::start(&env).await;
    let (api_a, api_b) = (Api::admin(&a), Api::admin(&b));
    let rx = Receiver::start().await;

    api_a.tenant("t1").await;
    let d = api_a.webhook("t1", &rx.url("/r"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    sees_destinations(&api_b, 1).await;
    // B delivers to a destination created on A, signed with the same secret.
    let r = api_b
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"from": "b"}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([did]));
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let secret = d["credentials"]["secret"].as_str().unwrap();
    assert_eq!(
        got[0].header("x-outpost-signature").unwrap(),
        format!("v0={}", hmac_hex(secret.as_bytes(), &got[0].body))
    );

    // Disabling on A stops matching on B.
    api_a.put(&format!("/tenants/t1/destinations/{did}/disable")).await;
    eventually("node B sees the destination disabled", async || {
        api_b.get(&format!("/tenants/t1/destinations/{did}")).await.body["disabled_at"].is_string()
    })
    .await;
    let r = api_b
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([]));

    // A restarted node loads everything from Redis.
    b.kill9();
    b.spawn().await;
    assert_eq!(api_b.get(&format!("/tenants/t1/destinations/{did}")).await.status, 200);

    // Deleting the tenant on A removes it on B.
    api_a.call("DELETE", "/tenants/t1", None).await;
    eventually("node B sees the tenant deleted", async || {
        api_b.get("/tenants/t1").await.status == 404
    })
    .await;
}

#[test]
fn unreachable_redis_refuses_start_without_leaking_the_password() {
    let (code, err) = Server::run_once(&[
        ("API_KEY", "k"),
        ("AES_ENCRYPTION_SECRET", "x"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", "1"),
        ("REDIS_PASSWORD", "hunter2pw"),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "1"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("REDIS_HOST") && err.contains("cannot reach Redis"),
        "{err}"
    );
    assert!(!err.contains("hunter2pw"), "{err}");
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub(crate) fn make_certs(dir: &std::path::Path) {
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=outrider-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    sh("printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf");
    sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf");
}

#[tokio::test]
async fn tls_to_redis_verifies_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port", &port.to_string()])
        .args(["--tls-cert-file", "server.crt", "--tls-key-file", "server.key"])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", ""])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server is required for this test: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let port_s = port.to_string();
    let ca = dir.path().join("ca.crt");
    let ca_s = ca.to_string_lossy().into_owned();
    let base = [
        ("API_KEY", "k"),
        ("AES_ENCRYPTION_SECRET", "s"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port_s.as_str()),
        ("REDIS_TLS_ENABLED", "true"),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "2"),
    ];
    // Without the CA the certificate is not trusted: the start is refused.
    let (code, err) = Server::run_once(&base);
    assert_ne!(code, 0);
    assert!(err.contains("REDIS_HOST"), "{err}");
    // With it, the node works over TLS: entities stored, deliveries made.
    let mut env: Vec<(&str, &str)> = base.to_vec();
    env.push(("OUTRIDER_REDIS_TLS_CA_FILE", ca_s.as_str()));
    env.retain(|(k, _)| *k != "API_KEY" && *k != "AES_ENCRYPTION_SECRET");
    let s = Server::start(&env).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/tls"), json!({})).await;
    let r = api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    assert_eq!(r.status, 202);
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // Outpost's behaviour (no verification) is available explicitly.
    let mut insecure: Vec<(&str, &str)> = base.to_vec();
    insecure.push(("OUTRIDER_REDIS_TLS_INSECURE", "true"));
    insecure.retain(|(k, _)| *k != "API_KEY" && *k != "AES_ENCRYPTION_SECRET");
    let s2 = Server::start(&insecure).await;
    assert_eq!(
        Api::admin(&s2).get("/tenants/t1").await.status,
        200,
        "same data over an unverified TLS link"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A three-master Redis Cluster of private `redis-server`s on free ports.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(0).await
    }

    /// Three masters with `replicas` replicas each; a replica takes over a
    /// master that has been unreachable for 1 s.
    async fn start_with(replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for p in &ports {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{p}.conf"),
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may take over however long ago it last
                    // heard from its master (a loaded test machine).
                    "--cluster-replica-validity-factor",
                    "0",
                ])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("redis-server is required for this test: {e}"));
            children.push(child);
        }
        for p in &ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(Instant::now() < deadline, "cluster node did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = ports.iter().all(|p| cluster_ok(*p));
            // Every replica in sync with its master, so one can take over.
            let synced = ok
                && ports.iter().all(|p| {
                    let text = redis_cli(*p, &["info", "replication"]);
                    text.contains("role:master") || text.contains("master_link_status:up")
                });
            if synced {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not converge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Cluster {
            ports,
            children,
            _dir: dir,
        }
    }
}

impl Cluster {
    /// The port of the master that serves `key`'s slot, and of another master.
    fn slot_owner_and_another_master(&self, key: &str) -> (u16, u16) {
        let slot: u32 = redis_cli(self.ports[0], &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot number");
        let nodes = redis_cli(self.ports[0], &["cluster", "nodes"]);
        let mut owner = None;
        let mut others = Vec::new();
        // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") {
                continue;
            }
            let port: u16 = f[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a port");
            let serves = f[8..].iter().any(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                matches!((lo.parse::<u32>(), hi.parse::<u32>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                owner = Some(port);
            } else {
                others.push(port);
            }
        }
        (owner.expect("a master serves the slot"), others[0])
    }
}

/// Waits until every replica of the master on `port` has acknowledged
/// its whole replication stream (`INFO replication`: each `slaveN` line's
/// `offset` equals `master_repl_offset`).
async fn replicas_caught_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = redis_cli(port, &["info", "replication"]);
        let master = info.lines().find_map(|l| {
            l.strip_prefix("master_repl_offset:")
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let replicas: Vec<u64> = info
            .lines()
            .filter(|l| l.starts_with("slave"))
            .filter_map(|l| {
                l.split(',')
                    .find_map(|kv| kv.strip_prefix("offset=").and_then(|v| v.parse::<u64>().ok()))
            })
            .collect();
        if let Some(m) = master {
            if !replicas.is_empty() && replicas.iter().all(|r| *r >= m) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the replicas did not catch up:\n{info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `redis-cli -p <port> <args>` prints (empty when it cannot run).
fn redis_cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn cluster_ok(port: u16) -> bool {
    redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn redis_cluster_shares_entities_idempotency_and_retries() {
    let cluster = Cluster::start().await;
    let (pa, pb) = (cluster.ports[0].to_string(), cluster.ports[1].to_string());
    let dep = format!("e2e{}", std::process::id() as u64 * 1000 + free_port() as u64);
    let queue = format!("outrider-e2e-cluster-{}", free_port());
    let (url, _pg) = crate::postgres::fresh_schema(&crate::postgres::pg_url()).await;
    let env = |port: &str| -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", port.into()),
            ("REDIS_CLUSTER_ENABLED", "true".into()),
            ("DEPLOYMENT_ID", dep.clone()),
            ("POSTGRES_URL", url.clone()),
            ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".into()),
            ("RABBITMQ_EXCHANGE", "outrider-e2e".into()),
            ("RABBITMQ_DELIVERY_QUEUE", queue.clone()),
            ("RETRY_SCHEDULE", "1".into()),
        ]
    };
    // Each node is given a different seed node of the cluster.
    let (ea, eb) = (env(&pa), env(&pb));
    let a = Server::start(&ea.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let b = Server::start(&eb.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let (api_a, api_b) = (Api::admin(&a), Api::admin(&b));
    let rx = Receiver::start().await;
    api_a.tenant("t1").await;
    api_a.webhook("t1", &rx.url("/c"), json!({})).await;
    sees_destinations(&api_b, 1).await;
    // The first attempt will fail: set before publishing (set after, the
    // attempt could already have succeeded).
    rx.state.script.lock().unwrap().push_back(500);
    // Idempotency across nodes, through the cluster.
    let ev = json!({"id": format!("cl-{dep}"), "tenant_id": "t1", "topic": "x", "data": {}});
    assert_eq!(api_b.publish(ev.clone()).await.body["duplicate"], false);
    assert_eq!(api_a.publish(ev).await.body["duplicate"], true);
    // A failed attempt's retry goes through the shared schedule (a multi-key script).
    let got = rx.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(
        got.len(),
        2,
        "first attempt failed, the retry from the cluster-held schedule succeeded"
    );
    assert_eq!(got[0].header("x-outpost-event-id"), got[1].header("x-outpost-event-id"));
}

/// The report: a node follows entity changes through the cluster node it was
/// given (`REDIS_HOST`); when that node died, its replica took over, but the
/// node kept trying the dead one and never learnt of another node's changes.
/// Now it resubscribes through a live node the cluster lists.
#[tokio::test]
async fn the_change_feed_survives_the_loss_of_the_seed_node() {
    let mut cluster = Cluster::start_with(1).await;
    let dep = format!("e2e{}", std::process::id() as u64 * 1000 + free_port() as u64);
    // A's seed is the master of the deployment's slot (every key shares the
    // `{<deployment>:outrider}` hash tag), so its loss is a failover of the
    // slot both nodes write to, whatever slot the random deployment id has.
    let (seed, other) = cluster.slot_owner_and_another_master(&format!("{{{dep}:outrider}}"));
    let seed_child = cluster.ports.iter().position(|p| *p == seed).unwrap();
    let env = |port: u16| -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", port.to_string()),
            ("REDIS_CLUSTER_ENABLED", "true".into()),
            ("DEPLOYMENT_ID", dep.clone()),
        ]
    };
    let (ea, eb) = (env(seed), env(other));
    let a = Server::start(&ea.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let b = Server::start(&eb.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let (api_a, api_b) = (Api::admin(&a), Api::admin(&b));
    let rx = Receiver::start().await;
    api_b.tenant("t1").await;
    api_b.webhook("t1", &rx.url("/before"), json!({})).await;
    sees_destinations(&api_a, 1).await;

    // Redis replicates asynchronously: a master killed right after a write
    // takes it with it when its replica had not received it yet (then the
    // tenant itself was gone after the failover, and A rightly said 404).
    // Wait until the replica holds everything the seed acknowledged.
    replicas_caught_up(seed).await;
    // Node A's seed dies; its replica is promoted: the cluster has marked
    // it failed and covers every slot again.
    let _ = cluster.children[seed_child].kill();
    let _ = cluster.children[seed_child].wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = redis_cli(other, &["cluster", "nodes"]);
        let seed_failed = nodes
            .lines()
            .any(|l| l.contains(&format!(":{seed}@")) && l.contains("fail") && !l.contains("fail?"));
        if seed_failed && cluster_ok(other) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not fail over:\n{nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Right after a failover B's cluster client still holds the old slot
    // map: a write may fail (503, "retry later") and is retried, as a client
    // would. Inside MULTI the commands answered MOVED, which the client read
    // as an aborted transaction, not as a redirect: B answered 503 to every
    // create for over 45 s (CI, 2026-12-06) until the store refreshed the
    // slot map itself on such an abort. Seen since: 4 ms to 0.7 s.
    let failed_over = Instant::now();
    let deadline = failed_over + Duration::from_secs(15);
    loop {
        let body = json!({"type": "webhook", "topics": "*", "config": {"url": rx.url("/after")}});
        let r = api_b.post("/tenants/t1/destinations", body).await;
        if r.status == 201 {
            eprintln!("create after the failover: 201 after {:?}", failed_over.elapsed());
            break;
        }
        // Transient, and said so: 503, never a 500.
        assert_eq!(r.status, 503, "create after the failover: {}", r.text);
        assert!(
            Instant::now() < deadline,
            "create after the failover: {} {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A resubscribes on its own schedule: its reconnect backoff grew (up to
    // 5 s) while the cluster failed over, and the full suite shares two
    // cores; 10 s timed out there (19.8 s for the whole test against 9-10 s
    // alone). What this checks is that A gets there, not how fast.
    sees_destinations_within(&api_a, 2, Duration::from_secs(30)).await;
    // And A routes to it: a publish through A reaches both.
    let r = api_a
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let got = rx.wait_for(2, Duration::from_secs(15)).await;
    let mut paths: Vec<String> = got.iter().map(|g| g.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/after", "/before"]);
}
