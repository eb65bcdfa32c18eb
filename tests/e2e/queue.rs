//! Scale-out: an API node and a delivery node, sharing Redis (entities,
//! idempotency), RabbitMQ (the delivery queue) and PostgreSQL (logs).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::postgres::{count, fresh_schema, pg_url};

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A node sharing Redis (entities, idempotency), PostgreSQL (logs) and a
/// RabbitMQ delivery queue of its own.
fn queue_node_env(deployment: String, postgres_url: String, queue: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_HOST", "127.0.0.1".into()),
        ("DEPLOYMENT_ID", deployment),
        ("POSTGRES_URL", postgres_url),
        ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".into()),
        ("RABBITMQ_EXCHANGE", "outrider-e2e".into()),
        ("RABBITMQ_DELIVERY_QUEUE", queue.to_string()),
    ]
}

fn uniq() -> String {
    format!("{}{}", std::process::id(), free_port())
}

#[tokio::test]
async fn api_and_delivery_nodes_split_over_rabbitmq() {
    let queue = format!("outrider-e2e-{}", uniq());
    split_scenario(vec![
        ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".to_string()),
        ("RABBITMQ_EXCHANGE", "outrider-e2e".to_string()),
        ("RABBITMQ_DELIVERY_QUEUE", queue),
    ])
    .await;
}

#[tokio::test]
async fn api_and_delivery_nodes_split_over_sqs() {
    let endpoint = std::env::var("OUTRIDER_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("OUTRIDER_TEST_AWS_ENDPOINT is not set: run through scripts/test.sh (it starts moto)")
    });
    split_scenario(vec![
        ("AWS_SQS_REGION", "us-east-1".to_string()),
        ("AWS_SQS_ENDPOINT", endpoint),
        ("AWS_SQS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SQS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_SQS_DELIVERY_QUEUE", format!("outrider-e2e-{}", uniq())),
    ])
    .await;
}

#[tokio::test]
async fn api_and_delivery_nodes_split_over_gcp_pubsub() {
    assert!(
        std::env::var("PUBSUB_EMULATOR_HOST").is_ok(),
        "PUBSUB_EMULATOR_HOST is not set: run through scripts/test.sh (it starts the emulator)"
    );
    let topic = format!("outrider-e2e-{}", uniq());
    split_scenario(vec![
        ("GCP_PUBSUB_PROJECT", "outrider-test".to_string()),
        ("GCP_PUBSUB_DELIVERY_TOPIC", topic),
        (
            "PUBSUB_EMULATOR_HOST",
            std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_default(),
        ),
    ])
    .await;
}

async fn split_scenario(broker: Vec<(&'static str, String)>) {
    let id = uniq();
    let (url, pg) = fresh_schema(&pg_url()).await;
    let dep = format!("q{id}");
    let shared = |service: &'static str| -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("SERVICE", service.to_string()),
            ("REDIS_HOST", "127.0.0.1".to_string()),
            ("DEPLOYMENT_ID", dep.clone()),
            ("POSTGRES_URL", url.clone()),
            ("RETRY_SCHEDULE", "1,1,1,1,1".to_string()),
        ];
        v.extend(broker.iter().cloned());
        v
    };
    let (api_owned, del_owned) = (shared("api"), shared("delivery"));
    let (api_env, del_env) = (refs(&api_owned), refs(&del_owned));

    let api_node = Server::start(&api_env).await;
    let mut delivery_node = Server::start(&del_env).await;
    let api = Api::admin(&api_node);
    let rx = Receiver::start().await;

    // The delivery node serves health only.
    assert_eq!(Api::admin(&delivery_node).get("/healthz").await.status, 200);
    assert_eq!(Api::admin(&delivery_node).get("/tenants").await.status, 404);

    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/q"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await; // the delivery node follows Redis

    let r = api
        .publish(json!({"id": format!("evt-{id}-0"), "tenant_id": "t1", "topic": "x", "data": {"n": 0}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["destination_ids"], json!([did]));
    let again = api
        .publish(json!({"id": format!("evt-{id}-0"), "tenant_id": "t1", "topic": "x", "data": {"n": 0}}))
        .await;
    assert_eq!(again.body["duplicate"], true, "idempotency is shared through Redis");
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "delivered by the delivery node");

    // The API node answers attempts from PostgreSQL, fed by the delivery node.
    let a = api
        .wait_attempts(&format!("event_id=evt-{id}-0"), Duration::from_secs(10), |m| {
            m.len() == 1
        })
        .await;
    assert_eq!(a.len(), 1);
    // A manual retry from the API node travels through the queue.
    let r = api
        .post(
            "/retry",
            json!({"event_id": format!("evt-{id}-0"), "destination_id": did}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let a = api
        .wait_attempts(&format!("event_id=evt-{id}-0&dir=asc"), Duration::from_secs(10), |m| {
            m.len() == 2
        })
        .await;
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[1]["attempt_number"].as_i64(), a[1]["manual"].as_bool()),
        (Some(2), Some(true))
    );

    // The delivery node dies; publishing goes on into the queue; nothing is lost.
    delivery_node.kill9();
    // Published all at once: the API node batches them onto shared messages.
    let accepted: Vec<String> = (1..=50).map(|n| format!("evt-{id}-{n}")).collect();
    let answers = futures_util::future::join_all(
        accepted
            .iter()
            .enumerate()
            .map(|(i, e)| api.publish(json!({"id": e, "tenant_id": "t1", "topic": "x", "data": {"n": i + 1}}))),
    )
    .await;
    for r in &answers {
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let text = api_node.metrics_text().await;
    let metric = |name: &str| metric_sum(&text, &format!("{name}{{kind=\"queue_publish\"}} ")) as u64;
    let (calls, batches) = (metric("outrider_batched_calls_total"), metric("outrider_batches_total"));
    // The first publish (its duplicate sent nothing) and the manual retry
    // before, and the 50: some of those went together.
    assert_eq!(calls, 52, "{text}");
    assert!(batches < calls, "50 concurrent publishes in {batches} batches");
    delivery_node.spawn().await;
    // A task the dead node had received reappears after the broker's
    // visibility timeout (10 s on SQS), hence the generous window.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let ids: std::collections::HashSet<String> =
            rx.got().iter().filter_map(|g| g.header("x-outpost-event-id")).collect();
        let missing = accepted.iter().filter(|e| !ids.contains(*e)).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} accepted events never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&pg, "events").await < 51 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pg, "events").await, 51, "every event logged in PostgreSQL");
}

#[test]
fn split_services_need_their_back_ends() {
    let base = [("API_KEY", "k"), ("AES_ENCRYPTION_SECRET", "x")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        Server::run_once(&v)
    };
    let (code, err) = with(&[("SERVICE", "api")]);
    assert!(
        code != 0 && err.contains("SERVICE") && err.contains("RABBITMQ_SERVER_URL"),
        "{err}"
    );
    let (code, err) = with(&[("RABBITMQ_SERVER_URL", "amqp://127.0.0.1")]);
    assert!(
        code != 0 && err.contains("RABBITMQ_SERVER_URL") && err.contains("REDIS_HOST"),
        "{err}"
    );
    let (code, err) = with(&[("SERVICE", "log")]);
    assert!(code != 0 && err.contains("log service"), "{err}");
    // The command-line flag behaves like SERVICE.
    let (code, _, err) = Server::run_args(&["serve", "--service", "delivery"], &base);
    assert!(code != 0 && err.contains("SERVICE"), "{err}");
}

#[tokio::test]
async fn retries_survive_the_loss_of_the_delivery_node_that_scheduled_them() {
    let id = uniq();
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let mut env = queue_node_env(format!("r{id}"), url, &format!("outrider-e2e-retry-{id}"));
    env.push(("RETRY_SCHEDULE", "2".into()));
    let with = |service: &'static str| {
        let mut v = env.clone();
        v.push(("SERVICE", service.into()));
        v
    };
    let (api_env, del_env) = (with("api"), with("delivery"));
    let api_node = Server::start(&refs(&api_env)).await;
    let mut node_a = Server::start(&refs(&del_env)).await;
    let api = Api::admin(&api_node);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().push_back(500);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/lost"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": 1}}))
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    // Attempt 1 failed on node A (and is logged)...
    let a = api
        .wait_attempts(&format!("event_id={ev}"), Duration::from_secs(10), |m| m.len() == 1)
        .await;
    assert_eq!(a[0]["status"], "failed");
    // ...then node A is gone for good, its disk with it.
    node_a.kill9();
    drop(node_a);
    let _node_b = Server::start(&refs(&del_env)).await;
    let a = api
        .wait_attempts(&format!("event_id={ev}&dir=asc"), Duration::from_secs(20), |m| {
            m.len() == 2
        })
        .await;
    assert_eq!(a.len(), 2, "the retry was run by another node: {a:?}");
    assert_eq!(
        (a[1]["attempt_number"].as_i64(), a[1]["status"].as_str()),
        (Some(2), Some("success"))
    );
    assert_eq!(rx.count(), 2);
}

/// A node that claimed an event id in Redis and died before the broker had
/// the event leaves a `pending` claim: the client's retry of that publish
/// must be delivered, not answered "duplicate" and dropped.
#[tokio::test]
async fn a_publish_claimed_by_a_node_that_died_before_queueing_is_not_dropped_on_retry() {
    let id = uniq();
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let dep = format!("i{id}");
    let env = queue_node_env(dep.clone(), url, &format!("outrider-e2e-idem-{id}"));
    let node = Server::start(&refs(&env)).await;
    let api = Api::admin(&node);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/idem"), json!({})).await;
    // What the dead node left: its claim, and no task on the queue.
    let redis = outrider_engine::store::redis::RedisEntityStore::connect(
        &outrider_engine::store::redis::RedisConfig::plain("127.0.0.1", 6379),
        &dep,
        outrider_engine::crypto::Cipher::new("test-aes-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Its lease (5 s, as a node takes) outlives its owner.
    let claim = redis.claim_idempotency("evt_orphan", "dead-node", 5_000).await.unwrap();
    assert_eq!(claim, outrider_engine::store::redis::IdemClaim::Claimed);
    let body = json!({"id": "evt_orphan", "tenant_id": "t1", "topic": "x", "data": {"n": 1}});
    let t0 = Instant::now();
    let r = api.publish(body.clone()).await;
    eprintln!("retry of a dead node's publish answered after {:?}", t0.elapsed());
    assert_eq!(
        (r.status, r.body["duplicate"].as_bool()),
        (202, Some(false)),
        "{}",
        r.text
    );
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the retried publish was delivered");
    // Once it is on the queue, the id is a duplicate.
    let r = api.publish(body).await;
    assert_eq!(
        (r.status, r.body["duplicate"].as_bool()),
        (202, Some(true)),
        "{}",
        r.text
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 1);
}

/// Concurrent publishes of one event id over the delivery queue: exactly one
/// is accepted, the others are duplicates, and one delivery arrives.
#[tokio::test]
async fn concurrent_publishes_of_one_id_are_accepted_once() {
    let id = uniq();
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let env = queue_node_env(format!("c{id}"), url, &format!("outrider-e2e-conc-{id}"));
    let node = Server::start(&refs(&env)).await;
    let api = Api::admin(&node);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/conc"), json!({})).await;
    let mut accepted = 0;
    for round in 0..5 {
        let body = json!({"id": format!("evt_conc_{round}"), "tenant_id": "t1", "topic": "x", "data": {"n": round}});
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (api, body) = (api.clone(), body.clone());
                tokio::spawn(async move { api.publish(body).await })
            })
            .collect();
        let mut fresh = 0;
        for c in calls {
            let r = c.await.unwrap();
            assert_eq!(r.status, 202, "{}", r.text);
            if r.body["duplicate"] == json!(false) {
                fresh += 1;
            }
        }
        assert_eq!(
            fresh, 1,
            "round {round}: {fresh} of 8 concurrent publishes of one id were accepted"
        );
        accepted += fresh;
    }
    let got = rx.wait_for(accepted, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 5, "one delivery per id: {}", got.len());
}

/// Item 5 of the journal issue: at SIGTERM a delivery node stopped its
/// consumer before the acks of tasks it had just made durable went out, so
/// the broker handed those tasks to the next node and they were delivered
/// twice. A backlog of 2,000 events waits in RabbitMQ; the delivery node
/// starts on it and gets SIGTERM after its first 200 deliveries; a new
/// node finishes. Every event arrives, and none twice (the receiver answers
/// at once, so no attempt is abandoned at the drain deadline either).
#[tokio::test]
async fn sigterm_on_a_delivery_node_acks_what_it_holds_so_nothing_is_delivered_twice() {
    let id = uniq();
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let mut env = queue_node_env(format!("s{id}"), url, &format!("outrider-e2e-term-{id}"));
    env.push(("OUTRIDER_SHUTDOWN_DRAIN_SECONDS", "10".into()));
    let with = |service: &'static str| {
        let mut v = env.clone();
        v.push(("SERVICE", service.into()));
        v
    };
    let (api_env, del_env) = (with("api"), with("delivery"));
    let api_node = Server::start(&refs(&api_env)).await;
    let api = Api::admin(&api_node);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/term"), json!({})).await;
    const N: usize = 2_000;
    let publish = |n: usize| {
        let api = &api;
        async move {
            let r = api
                .publish(json!({"id": format!("e{n}"), "tenant_id": "t1", "topic": "x", "data": {"n": n}}))
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
        }
    };
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        futures_util::future::join_all(chunk.iter().map(|n| publish(*n))).await;
    }
    let mut node = Server::start(&refs(&del_env)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.count() < 200 {
        assert!(
            Instant::now() < deadline,
            "the delivery node delivered {} in 30 s",
            rx.count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, took) = node.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "clean exit after {took:?}");
    let at_term = rx.count();
    node.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let ids: Vec<String> = rx.got().iter().filter_map(|g| g.header("x-outpost-event-id")).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        if unique.len() == N {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} events delivered ({at_term} before SIGTERM)",
            unique.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Late duplicates would arrive after the last first delivery.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = rx.count();
    println!("SIGTERM after {at_term} deliveries; {total} deliveries of {N} events");
    assert_eq!(seen.len(), N);
    assert_eq!(total, N, "{total} deliveries of {N} events: {} twice", total - N);
}

/// `/healthz` reports each part from its real state: with RabbitMQ cut, the
/// delivery queue consumer is `failed` (503, naming it and the error), and
/// the node is healthy again once the broker is back; with Redis cut, `redis`
/// is `failed`. PostgreSQL being down is `degraded` (records wait on disk).
#[tokio::test]
async fn healthz_names_the_back_end_a_queue_node_cannot_reach() {
    let rabbit = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let postgres = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let proxied_pg = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", postgres.port));
    assert_ne!(proxied_pg, url, "test URL must point at 127.0.0.1:5432");
    let mut env = queue_node_env(format!("h{}", uniq()), proxied_pg, &format!("outrider-e2e-{}", uniq()));
    env.retain(|(k, _)| *k != "RABBITMQ_SERVER_URL");
    env.push((
        "RABBITMQ_SERVER_URL",
        format!("amqp://guest:guest@127.0.0.1:{}", rabbit.port),
    ));
    env.push(("REDIS_PORT", redis.port.to_string()));
    let s = Server::start(&refs(&env)).await;
    let api = Api::admin(&s);
    let health = || async { api.get("/healthz").await };
    let wait_for = |want: u16, part: &'static str, status: &'static str| {
        let health = &health;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let h = health().await;
                if h.status == want && h.body["workers"][part]["status"] == status {
                    return h;
                }
                assert!(
                    Instant::now() < deadline,
                    "waiting for {part} {status} ({want}): {}",
                    h.text
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let h = health().await;
    assert_eq!(h.status, 200, "{}", h.text);
    for part in [
        "delivery-queue-consumer",
        "redis",
        "redis-change-follower",
        "shared-retry-poller",
        "log-pipeline",
    ] {
        assert_eq!(h.body["workers"][part]["status"], "healthy", "{part}: {}", h.text);
    }

    rabbit.down();
    let h = wait_for(503, "delivery-queue-consumer", "failed").await;
    assert_eq!(h.body["status"], "failed");
    assert!(
        h.body["workers"]["delivery-queue-consumer"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        h.text
    );
    rabbit.up();
    wait_for(200, "delivery-queue-consumer", "healthy").await;

    redis.down();
    let h = wait_for(503, "redis", "failed").await;
    assert!(h.body["workers"]["redis"]["error"].as_str().is_some(), "{}", h.text);
    redis.up();
    wait_for(200, "redis", "healthy").await;
    // The change follower reloads every entity when it resubscribes and
    // installs that snapshot; a tenant written before the install lands is
    // back only when its change message (already subscribed) is applied a
    // moment later. Wait for the reload, so the publish below cannot fall
    // into that window (it did once in CI: 404 tenant not found).
    wait_for(200, "redis-change-follower", "healthy").await;

    // PostgreSQL down: shipping waits, the node still serves.
    postgres.down();
    let r = api.put("/tenants/hz").await;
    assert!(r.status < 300, "{}", r.text);
    api.webhook("hz", "http://127.0.0.1:9/never", json!({})).await;
    assert_eq!(
        api.publish(json!({"tenant_id": "hz", "topic": "x", "data": {}}))
            .await
            .status,
        202
    );
    let h = wait_for(200, "log-pipeline", "degraded").await;
    assert!(
        h.body["workers"]["log-pipeline"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        h.text
    );
    postgres.up();
    wait_for(200, "log-pipeline", "healthy").await;
}

/// The delivery queue over `amqps://` to a broker with a private CA:
/// trusted through `OUTRIDER_RABBITMQ_TLS_CA_FILE`, events go through the
/// queue and are delivered; without it the start is refused, naming
/// RabbitMQ and the certificate problem.
// Multi-threaded: the TLS front keeps answering while `run_once` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_queue_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let tls_port = tls_front(dir.path(), "127.0.0.1:5672".parse().unwrap()).await;
    let (url, _pg) = fresh_schema(&pg_url()).await;
    let mut env = queue_node_env(format!("t{}", uniq()), url, &format!("outrider-e2e-{}", uniq()));
    env.retain(|(k, _)| *k != "RABBITMQ_SERVER_URL");
    env.push((
        "RABBITMQ_SERVER_URL",
        format!("amqps://guest:guest@127.0.0.1:{tls_port}"),
    ));
    env.push(("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "3".into()));
    let ca = dir.path().join("ca.crt");
    env.push(("OUTRIDER_RABBITMQ_TLS_CA_FILE", ca.to_string_lossy().to_string()));
    let s = Server::start(&refs(&env)).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/q"), json!({})).await;
    for n in 0..5 {
        assert_eq!(
            api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": n}}))
                .await
                .status,
            202
        );
    }
    assert_eq!(rx.wait_for(5, Duration::from_secs(20)).await.len(), 5);

    drop(s);
    env.retain(|(k, _)| *k != "OUTRIDER_RABBITMQ_TLS_CA_FILE");
    let mut without = refs(&env);
    without.push(("AES_ENCRYPTION_SECRET", "x"));
    without.push(("API_KEY", "k"));
    let (code, err) = Server::run_once(&without);
    assert_ne!(code, 0);
    assert!(
        err.contains("RabbitMQ") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// Publishes `n` events to `tenant` one after another (so each is a message
/// of its own on the delivery queue, not packed with the others).
async fn publish_one_by_one(api: &Api, tenant: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let r = api
            .publish(json!({"id": format!("{prefix}{i}"), "tenant_id": tenant, "topic": "k", "data": {"i": i}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
}

/// One node (API and delivery) on RabbitMQ and Redis, one shard, 5 s
/// delivery timeout, holding at most `unacked` queue messages.
fn one_shard_queue_node(name: &str, unacked: u32) -> Vec<(&'static str, String)> {
    let id = uniq();
    vec![
        ("REDIS_HOST", "127.0.0.1".into()),
        ("DEPLOYMENT_ID", format!("{name}{id}")),
        ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672".into()),
        ("RABBITMQ_EXCHANGE", "outrider-e2e".into()),
        ("RABBITMQ_DELIVERY_QUEUE", format!("outrider-e2e-{name}-{id}")),
        ("DELIVERY_SHARDS", "1".into()),
        ("DELIVERY_MAX_CONCURRENCY", unacked.to_string()),
        ("DELIVERY_TIMEOUT_SECONDS", "5".into()),
    ]
}

/// A delivery node holds a queue message until its tasks' outcomes, and
/// takes at most `DELIVERY_MAX_CONCURRENCY` messages at once. Tasks waiting
/// behind their own backed-up destination (a black hole, an endpoint slower
/// than its traffic) must not take those messages from every other tenant:
/// the node hands them to the shared schedule and acks them, and they still
/// arrive, each once.
#[tokio::test]
async fn a_backed_up_destination_does_not_stop_a_delivery_node_taking_other_tenants_tasks() {
    let env = one_shard_queue_node("backed-up", 64);
    let s = Server::start(&refs(&env)).await;
    let api = Api::admin(&s);
    let (hole, _, _) = black_hole().await;
    let slow = Receiver::start().await;
    *slow.state.delay.lock().unwrap() = Duration::from_secs(2);
    let good = Receiver::start().await;
    for t in ["bad", "slow", "good"] {
        api.tenant(t).await;
    }
    api.webhook("bad", &format!("http://{hole}/never"), json!({})).await;
    api.webhook("slow", &slow.url("/slow"), json!({})).await;
    api.webhook("good", &good.url("/good"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 300 messages to a destination that never answers and 150 to one that
    // takes 2 s a request: far more than the node's 64 unacked messages.
    publish_one_by_one(&api, "bad", "b", 300).await;
    publish_one_by_one(&api, "slow", "s", 150).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    publish_one_by_one(&api, "good", "g", 20).await;
    let got = good.wait_for(20, Duration::from_secs(20)).await.len();
    let took = t0.elapsed();
    eprintln!("20 events beside a black hole (300 events) and a 2 s endpoint (150): {got} in {took:?}");
    assert_eq!(
        got, 20,
        "the other tenant's events were not taken off the queue within {took:?}"
    );
    assert!(took <= Duration::from_secs(6), "20 events took {took:?}");

    // The slow destination's events, handed to the schedule and back,
    // arrive, each once.
    let (distinct, deliveries) = slow.wait_for_distinct_events(150, Duration::from_secs(90)).await;
    assert_eq!(
        distinct, 150,
        "only {distinct} of the slow destination's 150 events arrived"
    );
    assert_eq!(deliveries, 150, "some events were delivered twice");
    let text = s.metrics_text().await;
    let deferred = metric_sum(&text, "outrider_deliveries_deferred_total");
    eprintln!("deferred to the shared schedule: {deferred}");
    assert!(deferred > 0.0, "{text}");
}

/// Deferred tasks live in the shared schedule, not on the node: a `kill -9`
/// while a backed-up destination's tasks go back and forth loses none, and
/// only attempts in flight at the kill may repeat.
#[tokio::test]
async fn deferred_tasks_survive_a_kill9_of_the_node_that_deferred_them() {
    let mut env = one_shard_queue_node("deferred-kill", 32);
    env.push(("OUTRIDER_DESTINATION_MAX_CONCURRENCY", "8".into()));
    let mut s = Server::start(&refs(&env)).await;
    let api = Api::admin(&s);
    let slow = Receiver::start().await;
    *slow.state.delay.lock().unwrap() = Duration::from_millis(500);
    api.tenant("t").await;
    api.webhook("t", &slow.url("/slow"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 8 at a time, 0.5 s each: 16 a second, so most of the 200 are deferred.
    publish_one_by_one(&api, "t", "k", 200).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deferred = metric_sum(&s.metrics_text().await, "outrider_deliveries_deferred_total");
        if deferred >= 50.0 {
            break;
        }
        assert!(Instant::now() < deadline, "only {deferred} deferred");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = slow.count();
    s.kill9();
    s.spawn().await;
    let (distinct, deliveries) = slow.wait_for_distinct_events(200, Duration::from_secs(90)).await;
    assert_eq!(
        distinct, 200,
        "{distinct} of 200 arrived after the kill ({before} before it)"
    );
    let repeated = deliveries - 200;
    eprintln!("kill -9 with {before} of 200 delivered: all arrived, {repeated} twice");
    assert!(repeated <= 32, "{repeated} delivered twice: more than were in flight");
}

/// The one scheduled retry waiting in a private Redis: `(member, task)`.
async fn scheduled_retry(redis: &mut redis::aio::MultiplexedConnection) -> Option<(String, String, String)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*retry:tasks").query_async(redis).await.ok()?;
    let tasks = keys.first()?;
    let entries: Vec<(String, String)> = redis::cmd("HGETALL").arg(tasks).query_async(redis).await.ok()?;
    let (member, body) = entries.into_iter().next()?;
    Some((tasks.replace("retry:tasks", "retry:due"), member, body))
}

/// A failed attempt whose outcome was committed while Redis was down (no
/// retry hand-over, no done mark): once Redis is back, a stale copy of that
/// attempt's task (here its schedule entry, left as if the retry poller
/// could not clear it, which sends it again after its lease) must be acked,
/// not attempted again after the task's own retry. Without the mark kept
/// and written when Redis answers, attempt 2 ran again after attempt 3.
async fn stale_copy_after_a_missed_done_mark(kill_node: bool) {
    let mut redis = crate::outage::PrivateRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let connect = || async {
        let client = redis::Client::open(url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    };
    let mut env = one_shard_queue_node("missed-mark", 8);
    env.push(("REDIS_PORT", redis.port.to_string()));
    env.push(("RETRY_SCHEDULE", "2,1,1".into()));
    let mut s = Server::start(&refs(&env)).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().extend([500, 500]);
    api.tenant("t").await;
    api.webhook("t", &rx.url("/d"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api.publish(json!({"tenant_id": "t", "topic": "k", "data": {}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = r.body["id"].as_str().unwrap().to_string();
    // Attempt 1 failed; its retry (attempt 2) waits 2 s in the shared schedule.
    let mut c = connect().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (due_key, member, task) = loop {
        if let Some(found) = scheduled_retry(&mut c).await {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "attempt 1's retry never reached the schedule"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(task.contains(&ev), "{task}");
    // Attempt 2 takes 2 s; Redis dies while it runs.
    *rx.state.delay.lock().unwrap() = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while rx.arrivals() < 2 {
        assert!(Instant::now() < deadline, "attempt 2 never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    *rx.state.delay.lock().unwrap() = Duration::ZERO;
    redis.kill();
    // Its outcome is committed with Redis down: no mark could be written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kept = metric_sum(&s.metrics_text().await, "outrider_done_marks_unwritten");
        if kept >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempt 2's unwritten done mark was not kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if kill_node {
        s.kill9();
    }
    redis.spawn().await;
    if kill_node {
        s.spawn().await;
    }
    // The kept mark is written once Redis answers; attempt 3 (kept on the
    // node while Redis was down) succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kept = metric_sum(&s.metrics_text().await, "outrider_done_marks_unwritten");
        if kept == 0.0 && rx.count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "marks kept: {kept}, deliveries: {}",
            rx.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rx.count();
    // The stale copy of attempt 2's task comes back through the schedule.
    let mut c = connect().await;
    let _: () = redis::pipe()
        .zadd(
            &due_key,
            &member,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        )
        .hset(due_key.replace("retry:due", "retry:tasks"), &member, &task)
        .query_async(&mut c)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: u64 = redis::cmd("ZCARD").arg(&due_key).query_async(&mut c).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stale copy was never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = api
        .wait_attempts(&format!("event_id={ev}&dir=asc"), Duration::from_secs(5), |m| {
            m.len() >= 3
        })
        .await;
    let numbers: Vec<i64> = a.iter().filter_map(|m| m["attempt_number"].as_i64()).collect();
    assert_eq!(
        rx.count(),
        before,
        "the stale copy of attempt 2 was attempted: attempts {numbers:?}"
    );
    assert_eq!(numbers.iter().filter(|n| **n == 2).count(), 1, "attempts {numbers:?}");
    assert_eq!(numbers.last(), Some(&3), "attempts {numbers:?}");
}

#[tokio::test]
async fn a_done_mark_missed_while_redis_was_down_still_refuses_a_stale_copy() {
    stale_copy_after_a_missed_done_mark(false).await;
}

#[tokio::test]
async fn a_done_mark_missed_while_redis_was_down_survives_a_kill9() {
    stale_copy_after_a_missed_done_mark(true).await;
}
