//! AWS SQS as the delivery queue (`AWS_SQS_*`). Messages are the same
//! DeliveryTask JSON. Publishing uses SendMessageBatch (10 per call) and
//! succeeds only when every entry was accepted; a consumed message is deleted
//! after the handler made it durable, made visible again at once when the
//! handler failed, and deleted (with a warning) when it can never be parsed.
//! `AWS_SQS_ENDPOINT` points the SDK at a local emulator (moto).

use std::time::Duration;

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

use super::{
    encode_all, BoxFuture, ByteHandler, DeliveryBus, Disposition, MessageSource, QueueError, Task, TaskHandler,
};
use crate::error_text::with_causes;

/// How long a received task stays hidden. A delivery node deletes it once it
/// is durable on the node, and extends the timeout every third of it while
/// that takes longer; the tasks of a node that died reappear after this long.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub region: String,
    pub endpoint: Option<String>,
    /// Static keys; `None` uses the default AWS credential chain.
    pub credentials: Option<(String, crate::secret::Secret)>,
    pub delivery_queue: String,
    /// The dead-letter queue; `None` = `<queue>-dlq`, as Outpost names it.
    pub dlq: Option<String>,
    pub auto_provision: bool,
}

pub struct SqsQueue {
    client: Client,
    url: String,
    /// `<queue>-dlq`: rejected messages are moved here; the main queue's
    /// redrive policy sends a message here after MAX_RECEIVES receives.
    dlq_url: Option<String>,
    visibility: Duration,
    settling: std::sync::Arc<super::Settling>,
}

const MAX_RECEIVES: u32 = 6;

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue").field("url", &self.url).finish()
    }
}

fn broker(e: impl std::fmt::Display) -> QueueError {
    QueueError::Broker {
        what: "AWS SQS",
        message: e.to_string(),
    }
}

/// An SQS client for a region, an optional endpoint (moto) and optional static keys.
pub(crate) async fn client(region: &str, endpoint: Option<&str>, credentials: Option<(&str, &str)>) -> Client {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(region.to_string()));
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep);
    }
    if let Some((key, secret)) = credentials {
        loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "outrider-config"));
    }
    Client::new(&loader.load().await)
}

impl SqsQueue {
    pub async fn connect(cfg: SqsConfig, patience: Duration) -> Result<Self, QueueError> {
        let client = client(
            &cfg.region,
            cfg.endpoint.as_deref(),
            cfg.credentials.as_ref().map(|(k, s)| (k.as_str(), s.expose())),
        )
        .await;
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let dlq_name = cfg.dlq.clone().unwrap_or_else(|| format!("{}-dlq", cfg.delivery_queue));
        let url = loop {
            let result = if cfg.auto_provision {
                Self::provision(&client, &cfg.delivery_queue, &dlq_name).await
            } else {
                client
                    .get_queue_url()
                    .queue_name(&cfg.delivery_queue)
                    .send()
                    .await
                    .map(|o| o.queue_url().map(String::from))
                    .map_err(|e| with_causes(&e))
            };
            match result {
                Ok(Some(url)) => break url,
                Ok(None) => return Err(broker("no queue URL returned")),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(QueueError::Unreachable {
                        what: "AWS SQS",
                        message: format!("queue {}: {e}", cfg.delivery_queue),
                    })
                }
                Err(_) => {}
            }
            backoff.wait().await;
        };
        let dlq_url = client
            .get_queue_url()
            .queue_name(&dlq_name)
            .send()
            .await
            .ok()
            .and_then(|o| o.queue_url().map(String::from));
        Ok(Self {
            client,
            url,
            dlq_url,
            visibility: VISIBILITY_TIMEOUT,
            settling: Default::default(),
        })
    }

    /// A shorter visibility timeout (whole seconds, at least 1), for tests
    /// that watch a message outlive it.
    pub fn with_visibility_timeout(mut self, t: Duration) -> Self {
        self.visibility = t.max(Duration::from_secs(1));
        self
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates the dead-letter queue and the main queue with its redrive policy.
    async fn provision(client: &Client, queue: &str, dlq: &str) -> Result<Option<String>, String> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let dlq_url = client
            .create_queue()
            .queue_name(dlq)
            .send()
            .await
            .map_err(|e| with_causes(&e))?
            .queue_url()
            .map(String::from)
            .ok_or("no dead-letter queue URL returned")?;
        let arn = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| with_causes(&e))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or("no dead-letter queue ARN returned")?;
        let url = client
            .create_queue()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| with_causes(&e))?
            .queue_url()
            .map(String::from);
        if let Some(u) = &url {
            let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVES.to_string()});
            client
                .set_queue_attributes()
                .queue_url(u)
                .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
                .send()
                .await
                .map_err(|e| with_causes(&e))?;
        }
        Ok(url)
    }

    /// Takes one message from the dead-letter queue (for tests and tooling).
    pub async fn get_dead_letter(&self) -> Result<Option<String>, QueueError> {
        let Some(dlq) = &self.dlq_url else { return Ok(None) };
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| broker(with_causes(&e)))?;
        let Some(m) = out.messages().first() else {
            return Ok(None);
        };
        if let Some(r) = m.receipt_handle() {
            let _ = self
                .client
                .delete_message()
                .queue_url(dlq)
                .receipt_handle(r)
                .send()
                .await;
        }
        Ok(m.body().map(String::from))
    }

    /// Sends a raw message (used by tests and producers).
    pub async fn send_raw(&self, body: &str) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| broker(with_causes(&e)))?;
        Ok(())
    }

    async fn publish_tasks(&self, tasks: &[Task]) -> Result<(), QueueError> {
        let messages = encode_all(tasks);
        // SQS takes 10 messages and 256 KiB per batch request.
        for chunk in super::batch_requests(&messages, 10, 256 * 1024) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(String::from_utf8_lossy(m).into_owned())
                        .build()
                        .map_err(broker)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| broker(with_causes(&e)))?;
            if !out.failed().is_empty() {
                return Err(QueueError::Nacked);
            }
        }
        Ok(())
    }

    /// Receives in batches of up to 10 while fewer than `prefetch` messages
    /// are being handled; each message is settled when its handler returns.
    async fn consume_messages(&self, prefetch: u16, handle: ByteHandler) -> Result<(), QueueError> {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(prefetch.max(1) as usize));
        loop {
            let want = (slots.available_permits() as u32).clamp(1, 10);
            let Ok(mut permits) = slots.clone().acquire_many_owned(want).await else {
                return Err(broker("consumer stopped"));
            };
            let receive = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(want as i32)
                .wait_time_seconds(5)
                .visibility_timeout(self.visibility.as_secs() as i32)
                .send();
            // Stopping drops a receive in flight: what it would have taken
            // reappears after the visibility timeout, handled by no one here.
            let out = tokio::select! {
                out = receive => out.map_err(|e| broker(with_causes(&e)))?,
                _ = self.settling.stopped() => return Ok(()),
            };
            for m in out.messages() {
                let Some(permit) = permits.split(1) else { break };
                let handle = handle.clone();
                let client = self.client.clone();
                let url = self.url.clone();
                let dlq_url = self.dlq_url.clone();
                let receipt = m.receipt_handle().unwrap_or_default().to_string();
                let body = m.body().unwrap_or_default().as_bytes().to_vec();
                let visibility = self.visibility;
                self.settling.spawn(async move {
                    let _permit = permit;
                    settle(&client, &url, dlq_url.as_deref(), &receipt, body, &handle, visibility).await;
                });
            }
            // Unused permits go back when `permits` drops here.
        }
    }
}

/// Runs the handler on one message, then deletes it, moves it to the
/// dead-letter queue, or makes it visible again.
async fn settle(
    client: &Client,
    url: &str,
    dlq_url: Option<&str>,
    receipt: &str,
    body: Vec<u8>,
    handle: &ByteHandler,
    visibility: Duration,
) {
    // Requeue = visible again at once; reject = moved to the dead-letter
    // queue; both ack and reject then delete it.
    let extend = || -> super::BoxFuture<'static, ()> {
        let (client, url, receipt) = (client.clone(), url.to_string(), receipt.to_string());
        Box::pin(async move {
            let r = client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(receipt)
                .visibility_timeout(visibility.as_secs() as i32)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %with_causes(&e), "cannot extend an SQS message's visibility timeout");
            }
        })
    };
    let disposition = super::while_extending(handle(body.clone()), visibility / 3, extend).await;
    if disposition == Disposition::Reject {
        if let Some(dlq) = dlq_url {
            let moved = client
                .send_message()
                .queue_url(dlq)
                .message_body(String::from_utf8_lossy(&body).into_owned())
                .send()
                .await;
            if let Err(e) = moved {
                // Leave it: the redrive policy moves it after MAX_RECEIVES receives.
                tracing::warn!(error = %with_causes(&e), "cannot move a rejected message to the dead-letter queue");
                return;
            }
        }
    }
    let r = if disposition == Disposition::Requeue {
        client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| with_causes(&e))
    } else {
        client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| with_causes(&e))
    };
    if let Err(e) = r {
        // The message reappears after its visibility timeout: at least once.
        tracing::warn!(error = %e, "cannot settle an SQS message");
    }
}

impl MessageSource for SqsQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn consume_bytes(&self, prefetch: u16, handle: ByteHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.consume_messages(prefetch, handle))
    }
}

impl DeliveryBus for SqsQueue {
    fn settling(&self) -> std::sync::Arc<super::Settling> {
        self.settling.clone()
    }

    fn publish(&self, tasks: Vec<Task>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move { self.publish_tasks(&tasks).await })
    }

    fn consume(&self, prefetch: u16, handle: TaskHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.consume_messages(prefetch, super::task_handler(handle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moto's endpoint, exported by scripts/services.sh.
    fn endpoint() -> String {
        std::env::var("OUTRIDER_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "OUTRIDER_TEST_AWS_ENDPOINT is not set: run the tests through scripts/test.sh (it starts moto_server)"
            )
        })
    }

    fn task(n: u32) -> Task {
        crate::queue::sample_task(n, "{\"b\":1,\"a\":2}")
    }

    /// A new, uniquely named queue (with its dead-letter queue) on moto.
    async fn fresh_queue() -> SqsQueue {
        queue_named(&format!("outrider-test-{}", crate::ids::random_hex(4))).await
    }

    /// A connection to queue `name` (made if missing), as one node has.
    async fn queue_named(name: &str) -> SqsQueue {
        SqsQueue::connect(
            SqsConfig {
                region: "us-east-1".into(),
                endpoint: Some(endpoint()),
                credentials: Some(("test".into(), "test".into())),
                delivery_queue: name.to_string(),
                dlq: None,
                auto_provision: true,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("moto is required for this test: {e}"))
    }

    #[tokio::test]
    async fn delivery_bus_conformance_batches_and_redrive() {
        let q = std::sync::Arc::new(fresh_queue().await);
        let p = q.clone();
        crate::queue::conformance::run(q.clone(), async move |b| {
            p.send_raw(std::str::from_utf8(&b).unwrap()).await.unwrap()
        })
        .await;
        assert_eq!(
            q.get_dead_letter().await.unwrap().as_deref(),
            Some("not a task"),
            "rejected → dead-letter queue"
        );
        // More than one SendMessageBatch call (10 per call), on a fresh queue:
        // the suite's aborted long poll may still hold messages of this one.
        let q2 = fresh_queue().await;
        let tasks: Vec<Task> = (20..32).map(task).collect();
        DeliveryBus::publish(&q2, tasks).await.unwrap();
        let (handler, seen) = crate::queue::recording_handler("{\"b\":1,\"a\":2}", "none");
        let _ = tokio::time::timeout(Duration::from_secs(6), DeliveryBus::consume(&q2, 10, handler)).await;
        assert_eq!(seen.lock().unwrap().len(), 12, "all 12 tasks of two batches");
    }

    /// A node whose shard is busy may hold a task longer than its
    /// visibility timeout. Two nodes consume one queue; the handler takes
    /// 7 s against a 2 s timeout. Without the extension the message became
    /// visible again and the other node handled it too.
    #[tokio::test]
    async fn a_message_held_past_its_visibility_timeout_is_not_handed_to_another_node() {
        let name = format!("outrider-test-{}", crate::ids::random_hex(4));
        let short = Duration::from_secs(2);
        let a = std::sync::Arc::new(queue_named(&name).await.with_visibility_timeout(short));
        let b = std::sync::Arc::new(queue_named(&name).await.with_visibility_timeout(short));
        let send = async { a.send_raw("held").await.unwrap() };
        let handled = crate::queue::handlings_of_a_held_message(
            a.clone(),
            b,
            Duration::from_secs(7),
            Duration::from_secs(10),
            send,
        )
        .await;
        assert_eq!(handled, 1, "handled by one node only");
        let left = a
            .client
            .receive_message()
            .queue_url(a.url())
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        assert!(left.messages().is_empty(), "deleted once handled");
    }
}
