//! GCP Pub/Sub as the delivery queue (`GCP_PUBSUB_*`): a topic
//! (`GCP_PUBSUB_DELIVERY_TOPIC`, default `outpost-delivery`) and a pull
//! subscription (`GCP_PUBSUB_DELIVERY_SUBSCRIPTION`, `outpost-delivery-sub`).
//! Publishing is a synchronous Publish call per batch (the server returns ids
//! only for stored messages); consumed messages are acked after the handler
//! made them durable, nacked (redelivered at once) when it failed, and acked
//! with a warning when they can never be parsed. `PUBSUB_EMULATOR_HOST`
//! points the client at the emulator.

use std::time::Duration;

use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::{Client, ClientConfig};

use crate::secret::Secret;
use gcloud_pubsub::subscription::{Subscription, SubscriptionConfig};
use gcloud_pubsub::topic::Topic;

use super::{
    encode_all, BoxFuture, ByteHandler, DeliveryBus, Disposition, MessageSource, QueueError, Task, TaskHandler,
};

#[derive(Debug, Clone)]
pub struct PubSubConfig {
    pub project: String,
    /// A service-account key (JSON); `None` = Application Default Credentials.
    pub credentials: Option<crate::secret::Secret>,
    pub topic: String,
    pub subscription: String,
    /// The dead-letter topic and its subscription; `None` = `<topic>-dlq`
    /// and `<dlq topic>-sub`, as Outpost names them.
    pub dlq_topic: Option<String>,
    pub dlq_subscription: Option<String>,
    pub auto_provision: bool,
}

pub struct PubSubQueue {
    topic: Topic,
    subscription: Subscription,
    /// `<topic>-dlq` (with `<topic>-dlq-sub` so what lands there is kept):
    /// rejected messages are moved there. `None` if it does not exist and
    /// auto-provisioning is off.
    dlq: Option<(Topic, Subscription)>,
    settling: std::sync::Arc<super::Settling>,
}

impl std::fmt::Debug for PubSubQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubQueue")
            .field("topic", &self.topic.fully_qualified_name())
            .finish()
    }
}

fn broker(e: impl std::fmt::Display) -> QueueError {
    QueueError::Broker {
        what: "GCP Pub/Sub",
        message: e.to_string(),
    }
}

/// The ack deadline of a subscription we create, and what a message that
/// takes longer to handle is extended to.
const ACK_DEADLINE: Duration = Duration::from_secs(30);
/// How often a message still being handled gets its deadline extended:
/// under Pub/Sub's shortest deadline (10 s), so a subscription an operator
/// made with any deadline is extended in time.
const EXTEND_EVERY: Duration = Duration::from_secs(3);

/// Messages per Publish call (well under the 10 MB / 1,000 message limits).
const PUBLISH_BATCH: usize = 100;
/// Pub/Sub's limit on one publish request is 10 MB.
const PUBLISH_BATCH_BYTES: usize = 9 * 1024 * 1024;

impl PubSubQueue {
    /// The emulator (`PUBSUB_EMULATOR_HOST`) needs no credentials; Google
    /// Cloud uses the configured service-account key, else Application
    /// Default Credentials.
    pub(crate) async fn client_config(project: &str, credentials: Option<&str>) -> Result<ClientConfig, String> {
        use gcloud_pubsub::client::google_cloud_auth::credentials::CredentialsFile;
        let mut cc = ClientConfig::default();
        if std::env::var("PUBSUB_EMULATOR_HOST").is_err() {
            cc = match credentials {
                Some(json) => {
                    // The error text never repeats the key material.
                    let file = CredentialsFile::new_from_str(json)
                        .await
                        .map_err(|_| "the service-account credentials are not a valid key file".to_string())?;
                    cc.with_credentials(file)
                        .await
                        .map_err(|e| format!("credentials: {e}"))?
                }
                None => cc.with_auth().await.map_err(|e| format!("credentials: {e}"))?,
            };
        }
        cc.project_id = Some(project.to_string());
        Ok(cc)
    }

    pub async fn connect(cfg: PubSubConfig, patience: Duration) -> Result<Self, QueueError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let attempt = async {
                let client =
                    Client::new(Self::client_config(&cfg.project, cfg.credentials.as_ref().map(Secret::expose)).await?)
                        .await
                        .map_err(|e| e.to_string())?;
                let topic = client.topic(&cfg.topic);
                let subscription = client.subscription(&cfg.subscription);
                if !topic.exists(None).await.map_err(|e| e.to_string())? {
                    if !cfg.auto_provision {
                        return Err(format!("topic {} does not exist (MQS_AUTO_PROVISION=false)", cfg.topic));
                    }
                    topic.create(None, None).await.map_err(|e| e.to_string())?;
                }
                if !subscription.exists(None).await.map_err(|e| e.to_string())? {
                    if !cfg.auto_provision {
                        return Err(format!(
                            "subscription {} does not exist (MQS_AUTO_PROVISION=false)",
                            cfg.subscription
                        ));
                    }
                    // A delivery node acks once the task is durable on the node (and
                    // extends the deadline while that takes longer); the tasks a dead
                    // node had pulled come back after this long.
                    let sc = SubscriptionConfig {
                        ack_deadline_seconds: ACK_DEADLINE.as_secs() as i32,
                        ..Default::default()
                    };
                    subscription
                        .create(topic.fully_qualified_name(), sc, None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let dlq_topic_name = cfg.dlq_topic.clone().unwrap_or_else(|| format!("{}-dlq", cfg.topic));
                let dlq_sub = client.subscription(
                    &cfg.dlq_subscription
                        .clone()
                        .unwrap_or_else(|| format!("{dlq_topic_name}-sub")),
                );
                let dlq_topic = client.topic(&dlq_topic_name);
                let mut dlq = None;
                if dlq_topic.exists(None).await.map_err(|e| e.to_string())? {
                    dlq = Some((dlq_topic, dlq_sub));
                } else if cfg.auto_provision {
                    dlq_topic.create(None, None).await.map_err(|e| e.to_string())?;
                    if !dlq_sub.exists(None).await.map_err(|e| e.to_string())? {
                        dlq_sub
                            .create(dlq_topic.fully_qualified_name(), SubscriptionConfig::default(), None)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    dlq = Some((dlq_topic, dlq_sub));
                }
                Ok::<_, String>(Self {
                    topic,
                    subscription,
                    dlq,
                    settling: Default::default(),
                })
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(q)) => return Ok(q),
                other => {
                    if tokio::time::Instant::now() >= deadline {
                        let message = match other {
                            Ok(Err(e)) => e,
                            _ => "timed out".into(),
                        };
                        return Err(QueueError::Unreachable {
                            what: "GCP Pub/Sub",
                            message,
                        });
                    }
                }
            }
            backoff.wait().await;
        }
    }

    /// Takes one message from the dead-letter subscription (tests and tooling).
    pub async fn get_dead_letter(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let Some((_, sub)) = &self.dlq else { return Ok(None) };
        let msgs = sub.pull(1, None).await.map_err(broker)?;
        let Some(m) = msgs.into_iter().next() else {
            return Ok(None);
        };
        let data = m.message.data.clone();
        m.ack().await.map_err(broker)?;
        Ok(Some(data))
    }

    /// Publishes raw messages (tests and producers).
    pub async fn publish_raw(&self, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        let publisher = self.topic.new_publisher(None);
        for chunk in super::batch_requests(&bodies, PUBLISH_BATCH, PUBLISH_BATCH_BYTES) {
            let msgs: Vec<PubsubMessage> = chunk
                .iter()
                .map(|b| PubsubMessage {
                    data: b.clone(),
                    ..Default::default()
                })
                .collect();
            let ids = publisher.publish_immediately(msgs, None).await.map_err(broker)?;
            if ids.len() != chunk.len() {
                return Err(QueueError::Nacked);
            }
        }
        Ok(())
    }

    /// Pulls while fewer than `prefetch` messages are being handled; each
    /// message is settled when its handler returns.
    async fn consume_messages(&self, prefetch: u16, handle: ByteHandler) -> Result<(), QueueError> {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(prefetch.clamp(1, 1000) as usize));
        loop {
            let want = (slots.available_permits() as u32).clamp(1, 1000);
            let Ok(mut permits) = slots.clone().acquire_many_owned(want).await else {
                return Err(broker("consumer stopped"));
            };
            let msgs = tokio::select! {
                m = self.subscription.pull(want as i32, None) => m.map_err(broker)?,
                _ = self.settling.stopped() => return Ok(()),
            };
            for m in msgs {
                let Some(permit) = permits.split(1) else { break };
                let handle = handle.clone();
                let dlq = self.dlq.as_ref().map(|(t, _)| t.clone());
                self.settling.spawn(async move {
                    let _permit = permit;
                    // Requeue = nack (redelivered at once); reject = moved to the
                    // dead-letter topic, then acked; ack acks.
                    let work = handle(m.message.data.clone());
                    let disposition = super::while_extending(work, EXTEND_EVERY, || {
                        let m = m.clone();
                        Box::pin(async move {
                            if let Err(e) = m.modify_ack_deadline(ACK_DEADLINE.as_secs() as i32).await {
                                tracing::warn!(error = %e, "cannot extend a Pub/Sub message's ack deadline");
                            }
                        })
                    })
                    .await;
                    let r = match disposition {
                        Disposition::Requeue => m.nack().await,
                        Disposition::Ack => m.ack().await,
                        Disposition::Reject => match dlq {
                            Some(t) => {
                                let moved = t
                                    .new_publisher(None)
                                    .publish_immediately(
                                        vec![PubsubMessage {
                                            data: m.message.data.clone(),
                                            ..Default::default()
                                        }],
                                        None,
                                    )
                                    .await;
                                match moved {
                                    Ok(_) => m.ack().await,
                                    Err(e) => {
                                        // Not lost: it comes back and is moved on a later try.
                                        tracing::warn!(error = %e, "cannot move a rejected message to the dead-letter topic");
                                        m.nack().await
                                    }
                                }
                            }
                            None => {
                                tracing::warn!("dropping a rejected Pub/Sub message: no dead-letter topic");
                                m.ack().await
                            }
                        },
                    };
                    if let Err(e) = r {
                        // Not settled: it comes back after the ack deadline (at least once).
                        tracing::warn!(error = %e, "cannot settle a Pub/Sub message");
                    }
                });
            }
        }
    }
}

impl MessageSource for PubSubQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn consume_bytes(&self, prefetch: u16, handle: ByteHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.consume_messages(prefetch, handle))
    }
}

impl DeliveryBus for PubSubQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn publish(&self, tasks: Vec<Task>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.publish_raw(encode_all(&tasks)))
    }

    fn consume(&self, prefetch: u16, handle: TaskHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.consume_messages(prefetch, super::task_handler(handle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivery_bus_conformance_and_dead_letter_topic() {
        assert!(
            std::env::var("PUBSUB_EMULATOR_HOST").is_ok(),
            "PUBSUB_EMULATOR_HOST is not set: run the tests through scripts/test.sh (it starts the emulator)"
        );
        let name = format!("outrider-test-{}", crate::ids::random_hex(4));
        let q = std::sync::Arc::new(
            PubSubQueue::connect(
                PubSubConfig {
                    project: "outrider-test".into(),
                    credentials: None,
                    topic: name.clone(),
                    subscription: format!("{name}-sub"),
                    dlq_topic: None,
                    dlq_subscription: None,
                    auto_provision: true,
                },
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("the Pub/Sub emulator is required for this test: {e}")),
        );
        let p = q.clone();
        crate::queue::conformance::run(q.clone(), async move |b| p.publish_raw(vec![b]).await.unwrap()).await;
        let dead = tokio::time::timeout(Duration::from_secs(5), q.get_dead_letter())
            .await
            .expect("dead-letter pull")
            .unwrap();
        assert_eq!(
            dead.as_deref(),
            Some(&b"not a task"[..]),
            "the malformed message was dead-lettered"
        );
    }

    /// Like the SQS case: two nodes pull from one subscription whose ack
    /// deadline is Pub/Sub's shortest (10 s); the handler takes 14 s.
    /// Without the extension the emulator redelivered the message.
    #[tokio::test]
    async fn a_message_held_past_its_ack_deadline_is_not_redelivered() {
        assert!(
            std::env::var("PUBSUB_EMULATOR_HOST").is_ok(),
            "PUBSUB_EMULATOR_HOST is not set: run the tests through scripts/test.sh (it starts the emulator)"
        );
        let name = format!("outrider-test-{}", crate::ids::random_hex(4));
        let cfg = PubSubConfig {
            project: "outrider-test".into(),
            credentials: None,
            topic: name.clone(),
            subscription: format!("{name}-sub"),
            dlq_topic: None,
            dlq_subscription: None,
            auto_provision: true,
        };
        // The subscription made first, with the 10 s deadline.
        let client = Client::new(PubSubQueue::client_config("outrider-test", None).await.unwrap())
            .await
            .unwrap();
        let topic = client.topic(&name);
        topic.create(None, None).await.unwrap();
        let sc = SubscriptionConfig {
            ack_deadline_seconds: 10,
            ..Default::default()
        };
        client
            .subscription(&cfg.subscription)
            .create(topic.fully_qualified_name(), sc, None)
            .await
            .unwrap();
        let a = std::sync::Arc::new(
            PubSubQueue::connect(cfg.clone(), Duration::from_secs(20))
                .await
                .unwrap(),
        );
        let b = std::sync::Arc::new(PubSubQueue::connect(cfg, Duration::from_secs(20)).await.unwrap());
        let send = async { a.publish_raw(vec![b"held".to_vec()]).await.unwrap() };
        let handled = crate::queue::handlings_of_a_held_message(
            a.clone(),
            b,
            Duration::from_secs(14),
            Duration::from_secs(18),
            send,
        )
        .await;
        assert_eq!(handled, 1, "handled by one node only");
    }
}
