//! RabbitMQ as the delivery queue (`RABBITMQ_SERVER_URL`): a durable topic
//! exchange (`RABBITMQ_EXCHANGE`, default `outpost`) and a durable queue
//! (`RABBITMQ_DELIVERY_QUEUE`, default `outpost-delivery`) bound with its own
//! name. Publishing waits for broker confirms; consumers ack a message only
//! after the handler made it durable locally, and requeue it otherwise.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

pub use super::Disposition;
use super::{encode_all, BoxFuture, ByteHandler, DeliveryBus, MessageSource, Task, TaskHandler};

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// May carry a password.
    pub url: Secret,
    pub exchange: String,
    pub delivery_queue: String,
    /// The dead-letter queue; `None` = `<queue>.dlq`, as Outpost names it.
    pub dlq: Option<String>,
    /// Declare the exchange and queue (else only check that they exist).
    pub auto_provision: bool,
    /// PEM roots trusted for `amqps://` besides the Mozilla ones
    /// (`OUTRIDER_RABBITMQ_TLS_CA_FILE`, read at start).
    pub ca_pem: Option<String>,
}

pub use super::QueueError;
use crate::secret::Secret;

fn broker(e: lapin::Error) -> QueueError {
    QueueError::Broker {
        what: "RabbitMQ",
        message: e.to_string(),
    }
}

fn broker_msg(message: String) -> QueueError {
    QueueError::Broker {
        what: "RabbitMQ",
        message,
    }
}

/// Deliveries of one message before it is dead-lettered.
const DELIVERY_LIMIT: i32 = 5;

/// How long a stopping consumer waits between its last ack and closing its
/// channel (see the stop branch of [`RabbitQueue::consume_bytes`]).
const ACK_GRACE: Duration = Duration::from_millis(500);

pub struct RabbitQueue {
    /// The current connection and its confirm-mode publishing channel,
    /// reopened on first use after the broker went away.
    link: tokio::sync::Mutex<Option<Link>>,
    cfg: RabbitConfig,
    settling: std::sync::Arc<super::Settling>,
}

struct Link {
    conn: std::sync::Arc<Connection>,
    publisher: Channel,
}

impl std::fmt::Debug for RabbitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitQueue")
            .field("queue", &self.cfg.delivery_queue)
            .finish()
    }
}

/// How [`RabbitQueue::open`] says its attempt ran out of time.
const OPEN_TIMED_OUT: &str = "timed out";

impl RabbitQueue {
    /// One connection attempt: a connection and a confirm-mode channel.
    async fn open(cfg: &RabbitConfig) -> Result<Link, QueueError> {
        let props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = match tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect_with_config(
                cfg.url.expose(),
                props,
                lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: cfg.ca_pem.clone(),
                },
            ),
        )
        .await
        {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => OPEN_TIMED_OUT.into(),
                };
                return Err(QueueError::Unreachable {
                    what: "RabbitMQ",
                    message: format!("{}: {why}", cfg.url.redacted_url()),
                });
            }
        };
        let publisher = conn.create_channel().await.map_err(broker)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        Ok(Link {
            conn: std::sync::Arc::new(conn),
            publisher,
        })
    }

    pub async fn connect(cfg: RabbitConfig, patience: Duration) -> Result<Self, QueueError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // The last attempt may be cut short by the deadline; an earlier one
        // that failed for a reason (a certificate) says more.
        let mut reason: Option<QueueError> = None;
        let link = loop {
            match Self::open(&cfg).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    let timed_out = e.to_string().ends_with(OPEN_TIMED_OUT);
                    return Err(match reason {
                        Some(r) if timed_out => r,
                        _ => e,
                    });
                }
                Err(e) => {
                    if !e.to_string().ends_with(OPEN_TIMED_OUT) {
                        reason = Some(e);
                    }
                }
            }
            backoff.wait().await;
        };
        let q = Self {
            link: tokio::sync::Mutex::new(None),
            cfg,
            settling: Default::default(),
        };
        q.provision(&link.publisher).await?;
        *q.link.lock().await = Some(link);
        Ok(q)
    }

    /// The live connection and publishing channel, reconnecting (and
    /// declaring the topology again) if the broker went away.
    async fn session(&self) -> Result<(std::sync::Arc<Connection>, Channel), QueueError> {
        let mut slot = self.link.lock().await;
        if let Some(l) = slot.as_ref() {
            if l.conn.status().connected() && l.publisher.status().connected() {
                return Ok((l.conn.clone(), l.publisher.clone()));
            }
        }
        *slot = None;
        let link = Self::open(&self.cfg).await?;
        self.provision(&link.publisher).await?;
        tracing::info!(queue = %self.cfg.delivery_queue, "connected to RabbitMQ");
        let out = (link.conn.clone(), link.publisher.clone());
        *slot = Some(link);
        Ok(out)
    }

    /// Forgets the link after an error, so the next call reconnects.
    async fn reset(&self) {
        *self.link.lock().await = None;
    }

    async fn provision(&self, publisher: &Channel) -> Result<(), QueueError> {
        let passive = !self.cfg.auto_provision;
        // An empty exchange name is the broker's default exchange: nothing to declare or bind.
        let exchange = !self.cfg.exchange.is_empty();
        if exchange {
            publisher
                .exchange_declare(
                    &self.cfg.exchange,
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        passive,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_msg(format!("exchange {}: {e}", self.cfg.exchange)))?;
        }
        // Dead letters (rejected messages, and any redelivered more than
        // DELIVERY_LIMIT times) go to `<queue>.dlq`, as Outpost provisions it:
        // a quorum queue with a delivery limit, dead-lettering to the same exchange.
        let dlq = self.dlq_name();
        let mut args = FieldTable::default();
        if !passive {
            publisher
                .queue_declare(
                    &dlq,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_msg(format!("queue {dlq}: {e}")))?;
            if exchange {
                publisher
                    .queue_bind(
                        &dlq,
                        &self.cfg.exchange,
                        &dlq,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker)?;
            }
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(DELIVERY_LIMIT));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.cfg.exchange.clone().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(dlq.clone().into()),
            );
        }
        publisher
            .queue_declare(
                &self.cfg.delivery_queue,
                QueueDeclareOptions {
                    durable: true,
                    passive,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| broker_msg(format!("queue {}: {e}", self.cfg.delivery_queue)))?;
        if self.cfg.auto_provision && exchange {
            publisher
                .queue_bind(
                    &self.cfg.delivery_queue,
                    &self.cfg.exchange,
                    &self.cfg.delivery_queue,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker)?;
        }
        Ok(())
    }

    /// Where rejected and over-delivered messages end up.
    pub fn dlq_name(&self) -> String {
        self.cfg
            .dlq
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.cfg.delivery_queue))
    }

    /// Takes one message from the dead-letter queue (for tests and tooling).
    pub async fn get_dead_letter(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let (_, publisher) = self.session().await?;
        let m = publisher
            .basic_get(&self.dlq_name(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .map_err(broker)?;
        Ok(m.map(|m| m.delivery.data.clone()))
    }

    /// Publishes persistent messages and returns once the broker confirmed all.
    pub async fn publish(&self, tasks: &[Task]) -> Result<(), QueueError> {
        let payloads: Vec<Vec<u8>> = encode_all(tasks);
        self.publish_confirmed(&payloads).await
    }

    /// Publishes one raw, persistent message to the queue (confirmed).
    pub async fn publish_bytes(&self, payload: &[u8]) -> Result<(), QueueError> {
        self.publish_confirmed(&[payload.to_vec()]).await
    }

    async fn publish_confirmed(&self, payloads: &[Vec<u8>]) -> Result<(), QueueError> {
        let (_, publisher) = self.session().await?;
        let result = async {
            let mut confirms = Vec::with_capacity(payloads.len());
            for p in payloads {
                let c = publisher
                    .basic_publish(
                        &self.cfg.exchange,
                        &self.cfg.delivery_queue,
                        BasicPublishOptions::default(),
                        p,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into()),
                    )
                    .await
                    .map_err(broker)?;
                confirms.push(c);
            }
            for c in confirms {
                match c.await.map_err(broker)? {
                    Confirmation::Ack(_) => {}
                    _ => return Err(QueueError::Nacked),
                }
            }
            Ok(())
        }
        .await;
        if matches!(result, Err(QueueError::Broker { .. })) {
            self.reset().await;
        }
        result
    }

    /// Consumes delivery tasks until the connection fails. `Ok` acks, `Err`
    /// requeues; a malformed message is rejected without requeue (the
    /// broker's dead-letter policy applies).
    pub async fn consume(&self, prefetch: u16, tag: &str, handle: TaskHandler) -> Result<(), QueueError> {
        self.consume_bytes(prefetch, tag, super::task_handler(handle)).await
    }

    /// Consumes raw messages until the connection fails; `handle` decides each
    /// fate. Messages are handled concurrently, up to `prefetch` unacked at a
    /// time (the broker's QoS limit), each settled when its handler returns.
    pub async fn consume_bytes(&self, prefetch: u16, tag: &str, handle: ByteHandler) -> Result<(), QueueError> {
        let (conn, _) = self.session().await?;
        let ch = conn.create_channel().await.map_err(broker)?;
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let mut consumer = ch
            .basic_consume(
                &self.cfg.delivery_queue,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                _ = self.settling.stopped() => {
                    // Cancel, but keep the channel open until every taken
                    // message is settled: closing it would requeue messages
                    // whose tasks are durable here. Those not taken yet are
                    // requeued when the channel closes.
                    let _ = ch.basic_cancel(tag, BasicCancelOptions::default()).await;
                    self.settling.idle().await;
                    // Quorum queues may drop acks that arrive just before a
                    // channel closes and return those messages to the queue
                    // (rabbitmq-server#10327, open): without this pause 3 to
                    // 80 of ~500 acked tasks came back in our test.
                    tokio::time::sleep(ACK_GRACE).await;
                    // An ack returns once its frame is queued, not sent: the
                    // broker's reply to a close comes after it has every
                    // earlier frame, so the process may exit after this.
                    if let Err(e) = ch.close(200, "shutting down").await {
                        tracing::warn!(error = %e, "cannot close the RabbitMQ consumer channel cleanly");
                    }
                    return Ok(());
                }
            };
            let Some(d) = next else { break };
            let d = d.map_err(broker)?;
            let handle = handle.clone();
            self.settling.spawn(async move {
                let disposition = handle(d.data).await;
                let settled = match disposition {
                    Disposition::Ack => d.acker.ack(BasicAckOptions::default()).await,
                    other => {
                        d.acker
                            .nack(BasicNackOptions {
                                requeue: other == Disposition::Requeue,
                                ..Default::default()
                            })
                            .await
                    }
                };
                // Unsettled: the broker redelivers it when the channel closes (at least once).
                match settled {
                    Ok(true) => {}
                    // lapin answers `false` without sending when the channel is closing.
                    Ok(false) => tracing::warn!("cannot settle a RabbitMQ message: its channel is closed"),
                    Err(e) => tracing::warn!(error = %e, "cannot settle a RabbitMQ message"),
                }
            });
        }
        Err(broker_msg("consumer stopped".into()))
    }
}

impl MessageSource for RabbitQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn consume_bytes(&self, prefetch: u16, handle: ByteHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move { RabbitQueue::consume_bytes(self, prefetch, "outrider-publish", handle).await })
    }
}

impl DeliveryBus for RabbitQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn publish(&self, tasks: Vec<Task>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move { RabbitQueue::publish(self, &tasks).await })
    }

    fn consume(&self, prefetch: u16, handle: TaskHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move { RabbitQueue::consume(self, prefetch, "outrider-delivery", handle).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn url() -> String {
        std::env::var("OUTRIDER_TEST_RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
    }

    fn task(n: u32) -> Task {
        crate::queue::sample_task(n, "{\"n\":1}")
    }

    /// A new, uniquely named queue (with its dead-letter queue).
    async fn fresh_queue() -> RabbitQueue {
        named_queue(None).await
    }

    async fn named_queue(dlq: Option<String>) -> RabbitQueue {
        let cfg = RabbitConfig {
            url: url().into(),
            exchange: "outrider-test".into(),
            delivery_queue: format!("outrider-test-{}", crate::ids::random_hex(4)),
            dlq,
            auto_provision: true,
            ca_pem: None,
        };
        RabbitQueue::connect(cfg, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e} (scripts/services.sh up)"))
    }

    #[tokio::test]
    async fn delivery_bus_conformance() {
        let q = Arc::new(fresh_queue().await);
        let p = q.clone();
        crate::queue::conformance::run(q.clone(), async move |b| p.publish_bytes(&b).await.unwrap()).await;
        for qn in [q.cfg.delivery_queue.clone(), q.dlq_name()] {
            let _ = q.session().await.unwrap().1.queue_delete(&qn, Default::default()).await;
        }
    }

    #[tokio::test]
    async fn rejected_and_poison_messages_are_dead_lettered() {
        // RABBITMQ_DELIVERY_DLQ names the dead-letter queue.
        let custom = format!("outrider-test-dead-{}", crate::ids::random_hex(4));
        let q = named_queue(Some(custom.clone())).await;
        assert_eq!(q.dlq_name(), custom);
        q.publish_bytes(b"not a task").await.unwrap();
        q.publish(&[task(7)]).await.unwrap();
        // e7 always fails: requeued until the delivery limit dead-letters it.
        let tries = Arc::new(Mutex::new(0));
        let t = tries.clone();
        let handler: TaskHandler = Arc::new(move |_task| {
            let t = t.clone();
            Box::pin(async move {
                *t.lock().unwrap() += 1;
                Err::<(), crate::queue::TaskError>("always".into())
            })
        });
        let consume = q.consume(10, "t", handler);
        let _ = tokio::time::timeout(Duration::from_secs(4), consume).await;
        let mut dead = Vec::new();
        while let Some(m) = q.get_dead_letter().await.unwrap() {
            dead.push(String::from_utf8_lossy(&m).into_owned());
        }
        for qn in [q.cfg.delivery_queue.clone(), q.dlq_name()] {
            let _ = q.session().await.unwrap().1.queue_delete(&qn, Default::default()).await;
        }
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(dead.iter().any(|d| d == "not a task"));
        assert!(dead.iter().any(|d| d.contains("\"id\":\"e7\"")));
        let n = *tries.lock().unwrap();
        assert!((5..=6).contains(&n), "bounded redeliveries: {n}");
    }

    #[tokio::test]
    async fn unreachable_broker_is_a_clear_error() {
        let cfg = RabbitConfig {
            url: "amqp://app:s3cret@127.0.0.1:1".into(),
            exchange: "x".into(),
            delivery_queue: "q".into(),
            dlq: None,
            auto_provision: true,
            ca_pem: None,
        };
        let e = RabbitQueue::connect(cfg, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot reach RabbitMQ") && !e.contains("s3cret"), "{e}");
    }
}
