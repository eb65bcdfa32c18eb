//! Background loops of a node: following Redis entity changes, consuming the
//! delivery and publish queues, moving due shared retries onto the queue.

use std::time::Duration;

use super::*;
use crate::backoff::Backoff;

/// Keeps this node's routing table in step with Redis: subscribe to the
/// change channel, resynchronise fully after every (re)subscription (changes
/// published while disconnected are not replayed), then apply each change.
/// A change that cannot be applied (its entity could not be read: a cluster
/// failover under way, say) is not dropped: a full resync follows it.
pub(super) async fn follow(engine: Arc<Engine>, redis: Arc<RedisEntityStore>, link: Arc<health::Link>) {
    use futures_util::StreamExt;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        match redis.subscribe().await {
            Ok(mut ps) => {
                // Changes announced before the subscription are only in the
                // resync; changes announced meanwhile wait in the subscription.
                resync(&engine, &redis, &link, started, &mut backoff).await;
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let change = msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Change>(&p).ok());
                    match change {
                        Some(c) => {
                            if let Err(e) = engine.apply_change(&redis, c).await {
                                tracing::warn!(error = %e, "cannot apply an entity change; resynchronising");
                                resync(&engine, &redis, &link, std::time::Instant::now(), &mut backoff).await;
                            }
                        }
                        None => tracing::warn!("ignoring a malformed entity change message"),
                    }
                }
                tracing::warn!("Redis change channel closed; resubscribing");
                link.failed(started, "the Redis change channel closed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to Redis entity changes");
                link.failed(started, format!("cannot subscribe to Redis entity changes: {e}"));
                backoff.wait().await;
            }
        }
    }
}

/// Loads every entity from Redis into the routing table, retried until it
/// succeeds (during a cluster failover the slots can be uncovered for a while).
async fn resync(
    engine: &Engine,
    redis: &RedisEntityStore,
    link: &health::Link,
    started: std::time::Instant,
    backoff: &mut Backoff,
) {
    loop {
        match redis.load_entities().await {
            Ok((t, d)) => {
                if let Err(e) = engine.install(t, d).await {
                    tracing::warn!(error = %e, "entity resync failed");
                }
                link.ok();
                backoff.reset();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "entity resync failed; retrying");
                link.failed(started, format!("entity resync failed: {e}"));
                backoff.wait().await;
            }
        }
    }
}

/// The delivery node's consumer: each task is made durable in its shard's
/// journal, attempted, and acked once its outcome is committed
/// ([`Engine::receive`]). Reconnects with backoff.
pub(super) async fn consume(engine: Arc<Engine>, bus: Arc<dyn DeliveryBus>, link: Arc<health::Link>) {
    let prefetch = engine.config.delivery_max_concurrency.clamp(1, u16::MAX as usize) as u16;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let e = engine.clone();
        let handler: TaskHandler = Arc::new(move |task| {
            let e = e.clone();
            Box::pin(async move {
                e.receive(task)
                    .await
                    .map_err(|err| Box::new(err) as crate::queue::TaskError)
            })
        });
        let started = std::time::Instant::now();
        let result = health::watched(&link, bus.consume(prefetch, handler)).await;
        if bus.settling().is_stopping() {
            return;
        }
        if let Err(err) = result {
            tracing::warn!(error = %err, "delivery queue consumer stopped; reconnecting");
            link.failed(started, err);
        }
        backoff.wait().await;
    }
}

/// Events a producer put straight on the publish queue: the same document
/// and rules as `POST /publish`. Invalid ones (bad JSON, failed validation,
/// unknown tenant) are rejected without requeue so the broker's dead-letter
/// policy applies; transient failures are requeued.
pub(super) async fn consume_publish_queue(engine: Arc<Engine>, queue: Arc<dyn MessageSource>, link: Arc<health::Link>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let e = engine.clone();
        let handler: crate::queue::ByteHandler = Arc::new(move |bytes: Vec<u8>| {
            let e = e.clone();
            let parsed = crate::publish::parse(&bytes, &e.config, &e.ids);
            Box::pin(async move {
                let event = match parsed {
                    Ok(ev) => ev,
                    Err(err) => {
                        tracing::warn!(error = %err, "rejecting an invalid event from the publish queue");
                        return Disposition::Reject;
                    }
                };
                // Its own task, like the API: the hand-off finishes even if this consumer stops.
                match tokio::spawn(async move { e.publish(event).await }).await {
                    Ok(Ok(_)) => Disposition::Ack,
                    Ok(Err(EngineError::NotFound(what))) => {
                        tracing::warn!(what, "rejecting an event from the publish queue");
                        Disposition::Reject
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "publish from the queue failed; requeued");
                        Disposition::Requeue
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "publish task failed; requeued");
                        Disposition::Requeue
                    }
                }
            })
        });
        let started = std::time::Instant::now();
        let result = health::watched(
            &link,
            queue.consume_bytes(engine.config.publish_max_concurrency, handler),
        )
        .await;
        if queue.settling().is_stopping() {
            return;
        }
        if let Err(err) = result {
            link.failed(started, &err);
            tracing::warn!(error = %err, "publish queue consumer stopped; reconnecting");
        }
        backoff.wait().await;
    }
}

/// Moves due retries from the shared schedule onto the delivery queue. Every
/// delivery node runs one; leases keep two pollers from sending the same
/// retry, and a poller that dies mid-way only delays it by the lease.
pub(super) async fn poll_retries(redis: Arc<RedisEntityStore>, bus: Arc<dyn DeliveryBus>, link: Arc<health::Link>) {
    const LEASE_MS: i64 = 30_000;
    const BATCH: usize = 100;
    let idle = std::time::Duration::from_millis(200);
    // Sent retries whose entries could not be cleared (Redis went away
    // between the lease and the clear): cleared once Redis answers, or they
    // would be sent again when their lease ends. Dropped once it has ended.
    let mut unfinished: Vec<(String, i64)> = Vec::new();
    loop {
        if !unfinished.is_empty() {
            let now = now_ms();
            unfinished.retain(|(_, score)| *score > now);
            let mut cleared = 0;
            for (member, score) in &unfinished {
                // Still no answer: the rest wait for the next round.
                if redis.finish_retry(member, *score).await.is_err() {
                    break;
                }
                cleared += 1;
            }
            unfinished.drain(..cleared);
        }
        let started = std::time::Instant::now();
        let leased = match redis.lease_due_retries(now_ms(), LEASE_MS, BATCH).await {
            Ok(l) => {
                link.ok();
                l
            }
            Err(e) => {
                link.failed(started, format!("cannot read the shared retry schedule: {e}"));
                tracing::warn!(error = %e, "cannot read the shared retry schedule");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if leased.is_empty() {
            tokio::time::sleep(idle).await;
            continue;
        }
        let mut tasks = Vec::with_capacity(leased.len());
        let mut done = Vec::with_capacity(leased.len());
        for (member, score, body) in leased {
            match crate::queue::decode(body.as_bytes()) {
                Ok(t) => tasks.push(t),
                Err(e) => tracing::warn!(error = %e, member, "dropping an unreadable scheduled retry"),
            }
            done.push((member, score));
        }
        match bus.publish(tasks).await {
            Ok(()) => {
                for (member, score) in done {
                    if let Err(e) = redis.finish_retry(&member, score).await {
                        tracing::warn!(error = %e, member, "cannot clear a sent retry; clearing it once Redis answers");
                        unfinished.push((member, score));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot queue due retries; they stay scheduled"),
        }
    }
}
