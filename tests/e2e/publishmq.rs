//! Publishing through a queue: a producer puts the same JSON as `POST /publish`
//! on RabbitMQ, SQS or Pub/Sub; valid events are delivered, invalid ones
//! rejected (not delivered, not looped).

use std::time::Duration;

use outrider_engine::queue::pubsub::{PubSubConfig, PubSubQueue};
use outrider_engine::queue::rabbitmq::{RabbitConfig, RabbitQueue};
use outrider_engine::queue::sqs::{SqsConfig, SqsQueue};
use serde_json::json;

use crate::common::*;

/// The messages every producer sends: 2 invalid, then 3 valid in key order.
fn messages() -> Vec<Vec<u8>> {
    let mut v = vec![
        b"not json".to_vec(),
        br#"{"tenant_id":"ghost","topic":"x","data":{}}"#.to_vec(),
    ];
    for n in 0..3 {
        v.push(
            format!(r#"{{"id":"pq-{n}","tenant_id":"t1","topic":"x","data":{{"zebra":{n},"alpha":1}}}}"#).into_bytes(),
        );
    }
    v
}

async fn scenario(server_env: Vec<(&'static str, String)>, produce: impl AsyncFnOnce(Vec<Vec<u8>>)) {
    let s = Server::start(&server_env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/p"), json!({})).await;
    produce(messages()).await;
    let got = rx.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 3);
    assert!(
        std::str::from_utf8(&got[0].body).unwrap().starts_with(r#"{"zebra":"#),
        "key order kept"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 3, "invalid messages were rejected, not delivered or looped");
    assert_eq!(api.get("/events/pq-1").await.status, 200);
}

#[tokio::test]
async fn rabbitmq_publish_queue() {
    let queue = format!("outrider-publish-e2e-{}", free_port());
    let env = vec![
        (
            "PUBLISH_RABBITMQ_SERVER_URL",
            "amqp://guest:guest@127.0.0.1:5672".to_string(),
        ),
        ("PUBLISH_RABBITMQ_QUEUE", queue.clone()),
    ];
    scenario(env, async |msgs| {
        let producer = RabbitQueue::connect(
            RabbitConfig {
                url: "amqp://guest:guest@127.0.0.1:5672".into(),
                exchange: String::new(),
                delivery_queue: queue.clone(),
                dlq: None,
                auto_provision: true,
                ca_pem: None,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e} (scripts/services.sh up)"));
        for m in msgs {
            producer.publish_bytes(&m).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn sqs_publish_queue() {
    let endpoint = std::env::var("OUTRIDER_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("OUTRIDER_TEST_AWS_ENDPOINT is not set: run through scripts/test.sh (it starts moto)")
    });
    let queue = format!("outrider-publish-e2e-{}", free_port());
    let env = vec![
        ("PUBLISH_AWS_SQS_REGION", "us-east-1".to_string()),
        ("PUBLISH_AWS_SQS_ENDPOINT", endpoint.clone()),
        ("PUBLISH_AWS_SQS_ACCESS_KEY_ID", "test".to_string()),
        ("PUBLISH_AWS_SQS_SECRET_ACCESS_KEY", "test".to_string()),
        ("PUBLISH_AWS_SQS_QUEUE", queue.clone()),
    ];
    scenario(env, async |msgs| {
        let producer = SqsQueue::connect(
            SqsConfig {
                region: "us-east-1".into(),
                endpoint: Some(endpoint.clone()),
                credentials: Some(("test".into(), "test".into())),
                delivery_queue: queue.clone(),
                dlq: None,
                auto_provision: true,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        for m in msgs {
            producer.send_raw(std::str::from_utf8(&m).unwrap()).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn gcp_pubsub_publish_queue() {
    let host = std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!("PUBSUB_EMULATOR_HOST is not set: run through scripts/test.sh (it starts the emulator)")
    });
    let topic = format!("outrider-publish-e2e-{}", free_port());
    let env = vec![
        ("PUBLISH_GCP_PUBSUB_PROJECT", "outrider-test".to_string()),
        ("PUBLISH_GCP_PUBSUB_TOPIC", topic.clone()),
        ("PUBSUB_EMULATOR_HOST", host),
    ];
    scenario(env, async |msgs| {
        let producer = PubSubQueue::connect(
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
        producer.publish_raw(msgs).await.unwrap();
    })
    .await;
}
