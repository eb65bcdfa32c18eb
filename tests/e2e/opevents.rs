//! Alerts, auto-disable and operator events, against real sinks on loopback:
//! an HTTP receiver, SQS (moto), Pub/Sub (the emulator) and RabbitMQ.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrider_engine::queue::pubsub::{PubSubConfig, PubSubQueue};
use outrider_engine::queue::sqs::{SqsConfig, SqsQueue};
use outrider_engine::queue::{ByteHandler, Disposition, MessageSource};
use serde_json::{json, Value};

use crate::common::*;

const SECRET: &str = "opevents-secret";
const WAIT: Duration = Duration::from_secs(15);

/// The sink's requests that carried `topic`, as (envelope, request).
fn of_topic(sink: &Receiver, topic: &str) -> Vec<(Value, Received)> {
    sink.got()
        .into_iter()
        .map(|r| (r.json(), r))
        .filter(|(v, _)| v["topic"] == topic)
        .collect()
}

async fn wait_topic(sink: &Receiver, topic: &str, n: usize, timeout: Duration) -> Vec<(Value, Received)> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = of_topic(sink, topic);
        if got.len() >= n || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn assert_envelope(v: &Value, topic: &str, tenant: &str) {
    assert!(!v["id"].as_str().unwrap().is_empty(), "id: {v}");
    assert_eq!(v["topic"], topic);
    chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).expect("time is RFC 3339");
    assert_eq!(v["deployment_id"], "dep-e2e");
    assert_eq!(v["tenant_id"], tenant);
    assert!(v["data"].is_object());
}

fn assert_signed(r: &Received) {
    let sig = r.header("x-outpost-signature").expect("signature header");
    assert_eq!(sig, format!("v0={}", hmac_hex(SECRET.as_bytes(), &r.body)));
}

/// A server whose operator events go to a recording HTTP sink (signed with
/// `SECRET`), with tenant `t1` and one webhook destination that always
/// answers 500.
struct Failing {
    s: Server,
    api: Api,
    sink: Receiver,
    rx: Receiver,
    did: String,
}

async fn failing_setup(env: &[(&str, &str)]) -> Failing {
    let sink = Receiver::start().await;
    let url = sink.url("/ops");
    let mut all: Vec<(&str, &str)> = vec![
        ("OPERATION_EVENTS_HTTP_URL", &url),
        ("OPERATION_EVENTS_HTTP_SIGNING_SECRET", SECRET),
        ("DEPLOYMENT_ID", "dep-e2e"),
    ];
    all.extend_from_slice(env);
    let s = Server::start(&all).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    *rx.state.always.lock().unwrap() = Some(500);
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/fail"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    Failing { s, api, sink, rx, did }
}

#[tokio::test]
async fn consecutive_failures_alert_at_thresholds_then_auto_disable() {
    let Failing {
        s: _server,
        api,
        sink,
        rx,
        did,
    } = failing_setup(&[
        ("ALERT_CONSECUTIVE_FAILURE_COUNT", "10"),
        ("ALERT_AUTO_DISABLE_DESTINATION", "true"),
        ("OPERATION_EVENTS_TOPICS", "*"),
        ("RETRY_SCHEDULE", "1,1,1"),
    ])
    .await;
    for i in 0..12 {
        let r = api
            .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": i}}))
            .await;
        assert_eq!(r.status, 202);
    }
    let disabled = wait_topic(&sink, "alert.destination.disabled", 1, WAIT).await;
    assert_eq!(disabled.len(), 1, "one disabled alert");
    let alerts = of_topic(&sink, "alert.destination.consecutive_failure");
    let counts: Vec<(u64, u64, u64)> = alerts
        .iter()
        .map(|(v, _)| {
            let c = &v["data"]["consecutive_failures"];
            (
                c["current"].as_u64().unwrap(),
                c["max"].as_u64().unwrap(),
                c["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, vec![(5, 10, 50), (7, 10, 70), (9, 10, 90), (10, 10, 100)]);
    // Order on the wire: the four thresholds, then the disabled alert.
    let order: Vec<String> = sink
        .got()
        .iter()
        .map(|r| r.json()["topic"].as_str().unwrap().to_string())
        .filter(|t| t.starts_with("alert."))
        .collect();
    assert_eq!(order.last().unwrap(), "alert.destination.disabled");
    for (v, r) in &alerts {
        assert_envelope(v, "alert.destination.consecutive_failure", "t1");
        assert_signed(r);
        let data = &v["data"];
        assert_eq!(data["tenant_id"], "t1");
        assert_eq!(data["destination"]["id"], did.as_str());
        assert_eq!(data["destination"]["type"], "webhook");
        assert!(
            data["destination"].get("credentials").is_none(),
            "no credentials in alerts"
        );
        assert_eq!(data["attempt"]["status"], "failed");
        assert_eq!(data["attempt"]["destination_id"], did.as_str());
        assert_eq!(data["event"]["tenant_id"], "t1");
        assert_eq!(data["attempt"]["event_id"], data["event"]["id"]);
    }
    let (v, r) = &disabled[0];
    assert_envelope(v, "alert.destination.disabled", "t1");
    assert_signed(r);
    assert_eq!(v["data"]["reason"], "consecutive_failure");
    assert!(v["data"]["disabled_at"].is_string());
    assert_eq!(v["data"]["destination"]["disabled_at"], v["data"]["disabled_at"]);
    assert_eq!(v["data"]["attempt"]["status"], "failed");
    // Visible in the API, and nothing is attempted any more (retries included).
    let got = api.get(&format!("/tenants/t1/destinations/{did}")).await;
    assert!(got.body["disabled_at"].is_string(), "{}", got.body);
    let before = rx.count();
    let r = api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.count(), before, "no attempt after auto-disable");
    assert_eq!(of_topic(&sink, "alert.destination.consecutive_failure").len(), 4);
    assert_eq!(of_topic(&sink, "alert.destination.disabled").len(), 1);
    // attempt.failed was emitted for every attempt made.
    let failed = wait_topic(&sink, "attempt.failed", before, WAIT).await;
    assert_eq!(failed.len(), before);
}

#[tokio::test]
async fn exhausted_retries_alert_once_per_event_within_the_window() {
    // Every field is bound: the server lives until the end of the test.
    let Failing {
        s: _server,
        api,
        sink,
        rx: _rx,
        did,
    } = failing_setup(&[
        ("OPERATION_EVENTS_TOPICS", "alert.attempt.exhausted_retries"),
        ("RETRY_SCHEDULE", "1"),
        ("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS", "3"),
    ])
    .await;
    let topic = "alert.attempt.exhausted_retries";
    api.publish(json!({"id": "ev-a", "tenant_id": "t1", "topic": "x", "data": {}}))
        .await;
    let got = wait_topic(&sink, topic, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    let v = &got[0].0;
    assert_envelope(v, topic, "t1");
    assert_eq!(v["data"]["event"]["id"], "ev-a");
    assert_eq!(v["data"]["attempt"]["attempt_number"], 2, "1 + 1 retry");
    assert_eq!(v["data"]["destination"]["id"], did.as_str());
    // A manual retry that fails again exhausts the same event + destination: suppressed.
    let r = api
        .post("/retry", json!({"event_id": "ev-a", "destination_id": did}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    api.wait_attempts("event_id=ev-a", WAIT, |m| m.len() >= 3).await;
    // Another event alerts on its own.
    api.publish(json!({"id": "ev-b", "tenant_id": "t1", "topic": "x", "data": {}}))
        .await;
    let got = wait_topic(&sink, topic, 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<Value> = of_topic(&sink, topic)
        .iter()
        .map(|(v, _)| v["data"]["event"]["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("ev-a"), json!("ev-b")], "{got:?}");
    // After the window, the same event + destination alerts again.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    api.post("/retry", json!({"event_id": "ev-a", "destination_id": did}))
        .await;
    let got = wait_topic(&sink, topic, 3, WAIT).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].0["data"]["event"]["id"], "ev-a");
    assert_eq!(got[2].0["data"]["attempt"]["attempt_number"], 4);
}

#[tokio::test]
async fn exhausted_retries_per_destination_option() {
    let Failing {
        s: _server,
        api,
        sink,
        rx,
        did: _,
    } = failing_setup(&[
        ("OPERATION_EVENTS_TOPICS", "alert.attempt.exhausted_retries"),
        ("RETRY_SCHEDULE", "1"),
        ("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS", "60"),
        ("OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE", "destination"),
    ])
    .await;
    for i in 0..5 {
        api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": i}}))
            .await;
    }
    // 5 events × (1 + 1 retry) attempts.
    rx.wait_for(10, WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.count(), 10);
    assert_eq!(
        of_topic(&sink, "alert.attempt.exhausted_retries").len(),
        1,
        "one per destination per window"
    );
}

#[tokio::test]
async fn subscription_updates_and_attempt_events_over_http() {
    let sink = Receiver::start().await;
    let url = sink.url("/ops");
    let s = Server::start(&[
        (
            "OPERATION_EVENTS_TOPICS",
            "tenant.subscription.updated,attempt.success,attempt.failed",
        ),
        ("OPERATION_EVENTS_HTTP_URL", &url),
        ("OPERATION_EVENTS_HTTP_SIGNING_SECRET", SECRET),
        ("DEPLOYMENT_ID", "dep-e2e"),
    ])
    .await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api
        .call(
            "POST",
            "/tenants/t1/destinations",
            Some(json!({"type": "webhook", "topics": ["a"], "config": {"url": rx.url("/ok")}})),
        )
        .await;
    assert_eq!(d.status, 201);
    let did = d.body["id"].as_str().unwrap().to_string();
    let topic = "tenant.subscription.updated";
    let got = wait_topic(&sink, topic, 1, WAIT).await;
    assert_envelope(&got[0].0, topic, "t1");
    assert_signed(&got[0].1);
    assert_eq!(
        got[0].0["data"],
        json!({"tenant_id": "t1", "topics": ["a"], "previous_topics": [],
               "destinations_count": 1, "previous_destinations_count": 0})
    );
    // Same topics again: no event. New topics: one.
    api.patch(&format!("/tenants/t1/destinations/{did}"), json!({"topics": ["a"]}))
        .await;
    api.patch(
        &format!("/tenants/t1/destinations/{did}"),
        json!({"topics": ["a", "b"]}),
    )
    .await;
    let got = wait_topic(&sink, topic, 2, WAIT).await;
    assert_eq!(got[1].0["data"]["topics"], json!(["a", "b"]));
    assert_eq!(got[1].0["data"]["previous_topics"], json!(["a"]));
    // attempt.success / attempt.failed, one per attempt.
    rx.state.script.lock().unwrap().push_back(500);
    api.publish(json!({"tenant_id": "t1", "topic": "a", "eligible_for_retry": false, "data": {"k": 1}}))
        .await;
    api.publish(json!({"tenant_id": "t1", "topic": "a", "eligible_for_retry": false, "data": {"k": 2}}))
        .await;
    let failed = wait_topic(&sink, "attempt.failed", 1, WAIT).await;
    let ok = wait_topic(&sink, "attempt.success", 1, WAIT).await;
    assert_eq!((failed.len(), ok.len()), (1, 1));
    for (v, r) in failed.iter().chain(ok.iter()) {
        assert_signed(r);
        assert_eq!(v["data"]["destination"]["id"], did.as_str());
        assert_eq!(v["data"]["attempt"]["event_id"], v["data"]["event"]["id"]);
        assert!(v["data"]["event"]["data"].is_object());
    }
    assert_eq!(failed[0].0["data"]["attempt"]["status"], "failed");
    assert_eq!(failed[0].0["data"]["attempt"]["code"], "500");
    assert_eq!(ok[0].0["data"]["attempt"]["status"], "success");
    // The sender's counters are on /healthz.
    let h = reqwest::get(format!("http://127.0.0.1:{}/healthz", s.port))
        .await
        .unwrap();
    let h: Value = h.json().await.unwrap();
    let ops = &h["workers"]["operator-events"];
    assert!(ops["sent"].as_u64().unwrap() >= 4, "{h}");
    assert_eq!(ops["dropped"], 0);
    // Delete: count back to zero.
    api.call("DELETE", &format!("/tenants/t1/destinations/{did}"), None)
        .await;
    let got = wait_topic(&sink, topic, 3, WAIT).await;
    assert_eq!(got[2].0["data"]["destinations_count"], 0);
    assert_eq!(got[2].0["data"]["previous_destinations_count"], 1);
    assert_eq!(got[2].0["data"]["topics"], json!([]));
}

#[tokio::test]
async fn alert_survives_a_sink_outage_and_a_restart() {
    let Failing {
        mut s,
        api,
        sink,
        rx: _rx,
        did: _,
    } = failing_setup(&[
        ("ALERT_CONSECUTIVE_FAILURE_COUNT", "2"),
        ("OPERATION_EVENTS_TOPICS", "alert.destination.consecutive_failure"),
    ])
    .await;
    *sink.state.always.lock().unwrap() = Some(503);
    for _ in 0..2 {
        api.publish(json!({"tenant_id": "t1", "topic": "x", "eligible_for_retry": false, "data": {}}))
            .await;
    }
    // The sink refuses: the first alert is tried, then retried.
    let tried = sink.wait_for(2, WAIT).await;
    assert!(tried.len() >= 2, "alert sent and retried while the sink is down");
    let first_id = tried[0].json()["id"].clone();
    s.kill9();
    *sink.state.always.lock().unwrap() = None;
    let refused = sink.count();
    s.spawn().await;
    // 2 failures with a limit of 2: thresholds 50% (at 1), 70%, 90%, 100% (at 2).
    let deadline = Instant::now() + WAIT;
    let accepted = loop {
        let acc: Vec<Value> = sink.got()[refused..].iter().map(|r| r.json()).collect();
        if acc.len() >= 4 || Instant::now() >= deadline {
            break acc;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let thresholds: Vec<u64> = accepted
        .iter()
        .map(|v| v["data"]["consecutive_failures"]["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(
        thresholds,
        vec![50, 70, 90, 100],
        "all alerts arrive after the restart, in order"
    );
    assert_eq!(accepted[0]["id"], first_id, "the persisted alert, not a new one");
}

#[tokio::test]
async fn misconfigured_operator_events_refuse_to_start() {
    let base = [
        ("API_KEY", "k"),
        ("AES_ENCRYPTION_SECRET", "s"),
        ("OUTRIDER_DATA_DIR", "./data"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        Server::run_once(&v)
    };
    let (code, err) = with(&[("OPERATION_EVENTS_TOPICS", "*")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("OPERATION_EVENTS_TOPICS") && err.contains("no sink"),
        "{err}"
    );
    let (code, err) = with(&[
        ("OPERATION_EVENTS_TOPICS", "*"),
        ("OPERATION_EVENTS_HTTP_URL", "http://127.0.0.1:9/x"),
        (
            "OPERATION_EVENTS_RABBITMQ_SERVER_URL",
            "amqp://guest:guest@127.0.0.1:5672",
        ),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("exactly one sink") && err.contains("http, rabbitmq"),
        "{err}"
    );
    let (code, err) = with(&[
        ("OPERATION_EVENTS_TOPICS", "alert.nope"),
        ("OPERATION_EVENTS_HTTP_URL", "http://127.0.0.1:9/x"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown topic \"alert.nope\""), "{err}");
    // Outpost's code spelling is accepted too.
    let (code, err) = with(&[("OPERATOR_EVENTS_TOPICS", "*")]);
    assert_ne!(code, 0);
    assert!(err.contains("no sink"), "{err}");
    let (code, err) = with(&[("ALERT_CONSECUTIVE_FAILURE_COUNT", "zero")]);
    assert_ne!(code, 0);
    assert!(err.contains("ALERT_CONSECUTIVE_FAILURE_COUNT"), "{err}");
}

/// Publishes through a server whose only sink is `sink_env`, then reads one
/// subscription update back with `read` and checks the envelope.
async fn broker_sink(sink_env: Vec<(&'static str, String)>, read: impl AsyncFnOnce() -> Vec<u8>) {
    let mut env: Vec<(&str, String)> = vec![
        ("OPERATION_EVENTS_TOPICS", "tenant.subscription.updated".into()),
        ("DEPLOYMENT_ID", "dep-e2e".into()),
    ];
    env.extend(sink_env);
    let s = Server::start(&env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let api = Api::admin(&s);
    api.tenant("t9").await;
    api.webhook("t9", "http://127.0.0.1:9/never", json!({"topics": ["orders"]}))
        .await;
    let body = tokio::time::timeout(WAIT, read())
        .await
        .expect("operator event arrives");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_envelope(&v, "tenant.subscription.updated", "t9");
    assert_eq!(
        v.as_object().unwrap().len(),
        6,
        "id, topic, time, deployment_id, tenant_id, data: {v}"
    );
    assert_eq!(
        v["data"],
        json!({"tenant_id": "t9", "topics": ["orders"], "previous_topics": [],
               "destinations_count": 1, "previous_destinations_count": 0})
    );
}

/// Reads the first message from a source, acking it.
async fn first_message(source: Arc<dyn MessageSource>) -> Vec<u8> {
    let got: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let g = got.clone();
    let handler: ByteHandler = Arc::new(move |b: Vec<u8>| {
        g.lock().unwrap().get_or_insert(b);
        Box::pin(async { Disposition::Ack })
    });
    let task = tokio::spawn(async move {
        let _ = source.consume_bytes(10, handler).await;
    });
    loop {
        if let Some(b) = got.lock().unwrap().take() {
            task.abort();
            return b;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sqs_sink() {
    let endpoint = std::env::var("OUTRIDER_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("OUTRIDER_TEST_AWS_ENDPOINT is not set: run through scripts/test.sh (it starts moto)")
    });
    let queue = SqsQueue::connect(
        SqsConfig {
            region: "us-east-1".into(),
            endpoint: Some(endpoint.clone()),
            credentials: Some(("test".into(), "test".into())),
            delivery_queue: format!("outrider-opevents-e2e-{}", free_port()),
            dlq: None,
            auto_provision: true,
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let url = queue.url().to_string();
    broker_sink(
        vec![
            ("OPERATION_EVENTS_AWS_SQS_QUEUE_URL", url),
            ("OPERATION_EVENTS_AWS_SQS_REGION", "us-east-1".into()),
            ("OPERATION_EVENTS_AWS_SQS_ENDPOINT", endpoint),
            ("OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID", "test".into()),
            ("OPERATION_EVENTS_AWS_SQS_SECRET_ACCESS_KEY", "test".into()),
        ],
        async || first_message(Arc::new(queue)).await,
    )
    .await;
}

#[tokio::test]
async fn gcp_pubsub_sink() {
    let host = std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!("PUBSUB_EMULATOR_HOST is not set: run through scripts/test.sh (it starts the emulator)")
    });
    let topic = format!("outrider-opevents-e2e-{}", free_port());
    // The subscription must exist before the event is published.
    let queue = PubSubQueue::connect(
        PubSubConfig {
            project: "outrider-test".into(),
            credentials: None,
            topic: topic.clone(),
            subscription: format!("{topic}-sub"),
            dlq_topic: None,
            dlq_subscription: None,
            auto_provision: true,
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    broker_sink(
        vec![
            ("OPERATION_EVENTS_GCP_PUBSUB_PROJECT_ID", "outrider-test".into()),
            ("OPERATION_EVENTS_GCP_PUBSUB_TOPIC_ID", topic),
            ("PUBSUB_EMULATOR_HOST", host),
        ],
        async || first_message(Arc::new(queue)).await,
    )
    .await;
}

#[tokio::test]
async fn rabbitmq_sink() {
    use futures_util::StreamExt;
    use lapin::options::*;
    use lapin::types::FieldTable;
    let url = "amqp://guest:guest@127.0.0.1:5672";
    let exchange = format!("outrider-opevents-e2e-{}", free_port());
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let conn = lapin::Connection::connect(url, props)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e} (scripts/services.sh up)"));
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        &exchange,
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().as_str(),
        &exchange,
        "tenant.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.name().as_str(),
            "t",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    broker_sink(
        vec![
            ("OPERATION_EVENTS_RABBITMQ_SERVER_URL", url.into()),
            ("OPERATION_EVENTS_RABBITMQ_EXCHANGE", exchange.clone()),
        ],
        async || {
            let d = consumer.next().await.unwrap().unwrap();
            assert_eq!(d.routing_key.as_str(), "tenant.subscription.updated");
            d.ack(BasicAckOptions::default()).await.unwrap();
            d.data.clone()
        },
    )
    .await;
    let _ = ch.exchange_delete(&exchange, ExchangeDeleteOptions::default()).await;
}

#[tokio::test]
async fn a_redelivered_queue_task_is_acked_without_a_second_attempt_or_alert() {
    use outrider_engine::model::{Event, StringMap};
    use outrider_engine::queue::rabbitmq::{RabbitConfig, RabbitQueue};
    use outrider_engine::queue::Task;
    // One node with Redis (the suppression key), RabbitMQ and PostgreSQL.
    let id = format!("{}{}", std::process::id(), free_port());
    let (url, _pg) = crate::postgres::fresh_schema(&crate::postgres::pg_url()).await;
    let queue = format!("outrider-e2e-redeliver-{id}");
    let sink = Receiver::start().await;
    let sink_url = sink.url("/ops");
    let dep = format!("r{id}");
    let s = Server::start(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("DEPLOYMENT_ID", &dep),
        ("POSTGRES_URL", &url),
        ("RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672"),
        ("RABBITMQ_EXCHANGE", "outrider-e2e"),
        ("RABBITMQ_DELIVERY_QUEUE", &queue),
        ("RETRY_SCHEDULE", "1"),
        ("OPERATION_EVENTS_TOPICS", "alert.attempt.exhausted_retries"),
        ("OPERATION_EVENTS_HTTP_URL", &sink_url),
    ])
    .await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    *rx.state.always.lock().unwrap() = Some(500);
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/x"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    // The last allowed attempt (2 of 1 + 1 retry), put on the queue twice: a redelivery.
    let task = Task {
        event: Arc::new(Event {
            id: format!("redeliver-{id}"),
            tenant_id: "t1".into(),
            destination_id: None,
            topic: "x".into(),
            eligible_for_retry: true,
            time: chrono::Utc::now().timestamp_millis(),
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from("{}"),
            matched_destination_ids: vec![did.clone()],
        }),
        destination_id: did.clone(),
        attempt: 2,
        manual: false,
    };
    let producer = RabbitQueue::connect(
        RabbitConfig {
            url: "amqp://guest:guest@127.0.0.1:5672".into(),
            exchange: "outrider-e2e".into(),
            delivery_queue: queue.clone(),
            dlq: None,
            auto_provision: true,
            ca_pem: None,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e} (scripts/services.sh up)"));
    producer.publish(std::slice::from_ref(&task)).await.unwrap();
    rx.wait_for(1, WAIT).await;
    let got = wait_topic(&sink, "alert.attempt.exhausted_retries", 1, WAIT).await;
    producer.publish(&[task]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The copy of a task whose outcome is committed is acked, not attempted
    // (its done mark in Redis), so neither a second attempt nor a second alert.
    assert_eq!(rx.count(), 1, "the redelivered copy is not attempted again");
    assert_eq!(got.len(), 1);
    assert_eq!(
        of_topic(&sink, "alert.attempt.exhausted_retries").len(),
        1,
        "one exhaustion alert"
    );
    assert_eq!(got[0].0["data"]["attempt"]["attempt_number"], 2);
}
