//! Publishing through a queue: a producer puts the same JSON as `POST /publish`
//! on RabbitMQ; valid events are delivered, invalid ones rejected (not looped).

use std::time::Duration;

use outrider_engine::queue::rabbitmq::{RabbitConfig, RabbitQueue};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn events_from_the_publish_queue_are_delivered() {
    let queue = format!("outrider-publish-e2e-{}", free_port());
    let s = Server::start(&[
        ("PUBLISH_RABBITMQ_SERVER_URL", "amqp://guest:guest@127.0.0.1:5672"),
        ("PUBLISH_RABBITMQ_QUEUE", &queue),
    ])
    .await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/p"), json!({})).await;

    let producer = RabbitQueue::connect(
        RabbitConfig {
            url: "amqp://guest:guest@127.0.0.1:5672".into(),
            exchange: String::new(),
            delivery_queue: queue.clone(),
            auto_provision: true,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e} (scripts/services.sh up)"));
    producer.publish_bytes(b"not json").await.unwrap();
    producer
        .publish_bytes(br#"{"tenant_id":"ghost","topic":"x","data":{}}"#)
        .await
        .unwrap();
    for n in 0..3 {
        producer
            .publish_bytes(
                format!(r#"{{"id":"pq-{n}","tenant_id":"t1","topic":"x","data":{{"zebra":{n},"alpha":1}}}}"#)
                    .as_bytes(),
            )
            .await
            .unwrap();
    }
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    assert!(
        std::str::from_utf8(&got[0].body).unwrap().starts_with(r#"{"zebra":"#),
        "key order kept"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 3, "invalid messages were rejected, not delivered or looped");
    let e = api.get("/events/pq-1").await;
    assert_eq!(e.status, 200);
}
