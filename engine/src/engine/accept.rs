//! The accept path: publish (idempotency, then the owning shards' journals),
//! manual retry, and tasks taken from the delivery queue.
use super::*;
use crate::store::redis::IdemClaim;

/// How long a publish's pending idempotency claim in Redis lives unless it
/// is confirmed: the longest a publish to the delivery queue should take.
/// A node that dies mid-publish blocks a retry of the same id this long.
const CLAIM_LEASE_MS: i64 = 5_000;
/// How long a publish waits for a concurrent publish of the same id (longer
/// than the lease, so a dead node's claim is taken over).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

impl Engine {
    /// Makes deliveries durable on the shards that own their destinations and
    /// returns once every one of those shards has committed them.
    ///
    /// Cancel-safe once called: every shard message is sent before the first
    /// await (a full inbox hands the rest to a task), so a dropped caller
    /// cannot leave some of an event's deliveries unsent.
    pub(crate) async fn accept_on_shards(
        &self,
        event: Arc<Event>,
        targets: Vec<AcceptTarget>,
    ) -> Result<(), EngineError> {
        let n = self.shards.len();
        let mut groups: Vec<(usize, Vec<AcceptTarget>)> = Vec::new();
        for t in targets {
            let i = shard::shard_for(&t.destination_id, n);
            match groups.iter_mut().find(|(s, _)| *s == i) {
                Some((_, v)) => v.push(t),
                None => groups.push((i, vec![t])),
            }
        }
        let mut replies = Vec::with_capacity(groups.len());
        let mut blocked = Vec::new();
        for (i, targets) in groups {
            let (tx, rx) = tokio::sync::oneshot::channel();
            replies.push(rx);
            let msg = ShardMsg::Accept(Box::new(AcceptMsg {
                event: event.clone(),
                targets,
                reply: Some(tx),
                done: None,
            }));
            match self.shards[i].tx.try_send(msg) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(msg)) => blocked.push((self.shards[i].tx.clone(), msg)),
                Err(flume::TrySendError::Disconnected(_)) => return Err(EngineError::Closed),
            }
        }
        if !blocked.is_empty() {
            // Backpressure: a shard's inbox is full. The rest is sent from a
            // task of its own so it happens even if this caller goes away.
            tokio::spawn(async move {
                for (tx, msg) in blocked {
                    let _ = tx.send_async(msg).await;
                }
            });
        }
        let mut result = Ok(());
        for rx in replies {
            let r = match rx.await {
                Ok(r) => r.map_err(EngineError::from),
                Err(_) => Err(EngineError::Closed),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Matches, then makes the event durable on the shards that own its
    /// destinations; they deliver once it is committed. Returns after the
    /// commit: a success means the event survives a crash (a power loss too
    /// unless `OUTRIDER_EMBEDDED_SYNCHRONOUS=normal`).
    pub async fn publish(&self, event: Event) -> Result<PublishOutcome, EngineError> {
        let Some(otel) = crate::otel::get() else {
            return self.publish_matched(event, None).await;
        };
        let start = std::time::SystemTime::now();
        // The spans name the event; it moves into the publish.
        let names = crate::otel::EventNames {
            tenant_id: event.tenant_id.clone(),
            event_id: event.id.clone(),
            topic: event.topic.clone(),
        };
        let mut matched = None;
        let out = self.publish_matched(event, Some(&mut matched)).await;
        let end = match &out {
            Ok(o) => crate::otel::PublishEnd::Accepted { duplicate: o.duplicate },
            Err(e) => crate::otel::PublishEnd::Failed(match e {
                EngineError::NotFound(_) => "not_found",
                EngineError::BadRequest(_) => "bad_request",
                EngineError::Queue(_) | EngineError::PublishInProgress => "unavailable",
                EngineError::Closed => "shutting_down",
                _ => "error",
            }),
        };
        otel.published(&names, start, matched, end);
        out
    }

    async fn publish_matched(
        &self,
        mut event: Event,
        timing: Option<&mut Option<crate::otel::Matched>>,
    ) -> Result<PublishOutcome, EngineError> {
        let match_start = timing.as_ref().map(|_| std::time::SystemTime::now());
        // One read of the routing table: the tenant and its matches.
        let matched = {
            let st = self.state.read();
            match st.tenants.get(&event.tenant_id) {
                None => return Err(EngineError::NotFound("tenant not found")),
                Some(entry) => crate::routing::matching(&entry.dests, &event),
            }
        };
        if let (Some(slot), Some(start)) = (timing, match_start) {
            *slot = Some(crate::otel::Matched {
                start,
                end: std::time::SystemTime::now(),
                destinations: matched.len(),
            });
        }
        if matched.is_empty() {
            return Ok(PublishOutcome {
                id: event.id,
                duplicate: false,
                destination_ids: matched,
            });
        }
        event.matched_destination_ids = matched.clone();
        let event = Arc::new(event);
        let ttl = self.config.publish_idempotency_key_ttl.as_millis() as i64;
        if let (Some(bus), Some(redis)) = (&self.bus, &self.redis) {
            return self.publish_to_queue(bus, redis, event, matched, ttl).await;
        }
        let claim = match self.claim(&event.id).await? {
            Some(c) => c,
            None => {
                return Ok(PublishOutcome {
                    id: event.id.clone(),
                    duplicate: true,
                    destination_ids: matched,
                })
            }
        };
        let targets = matched
            .iter()
            .map(|d| AcceptTarget {
                destination_id: d.clone(),
                attempt: 1,
                manual: false,
                due_ms: 0,
            })
            .collect();
        self.accept_on_shards(event.clone(), targets).await?;
        claim.confirm();
        Ok(PublishOutcome {
            id: event.id.clone(),
            duplicate: false,
            destination_ids: matched,
        })
    }

    /// Claims an event id for a publish; `None` when it is a duplicate. A
    /// concurrent publish of the same id is waited for, not reported as a
    /// duplicate (it may still fail).
    async fn claim(&self, id: &str) -> Result<Option<ClaimGuard<'_>>, EngineError> {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.idempotency.claim(id, now_ms()) {
                ClaimResult::Claimed => {
                    let guard = ClaimGuard {
                        map: &self.idempotency,
                        id: id.to_string(),
                        confirmed: false,
                    };
                    // Memory was trimmed inside the window: the index decides.
                    if self.idempotency.needs_lookup(now_ms()) {
                        let ttl = self.config.publish_idempotency_key_ttl.as_millis() as i64;
                        if let Some(at) = self.store.event_accepted_at(id).await? {
                            if at + ttl > now_ms() {
                                return Ok(None);
                            }
                        }
                    }
                    return Ok(Some(guard));
                }
                ClaimResult::Duplicate => return Ok(None),
                ClaimResult::Busy if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                ClaimResult::Busy => return Err(EngineError::PublishInProgress),
            }
        }
    }

    /// Queue mode: the idempotency key lives in Redis, and the event is
    /// durable once the broker confirmed every task.
    async fn publish_to_queue(
        &self,
        bus: &Arc<dyn DeliveryBus>,
        redis: &Arc<RedisEntityStore>,
        event: Arc<Event>,
        matched: Vec<String>,
        ttl: i64,
    ) -> Result<PublishOutcome, EngineError> {
        // Accepted here while Redis was down, its confirmation not written
        // yet (the key is built only when some mark is kept).
        if let Some(m) = &self.unwritten_marks {
            if !m.is_empty() && m.contains(&redis.idempotency_key(&event.id)) {
                return Ok(PublishOutcome {
                    id: event.id.clone(),
                    duplicate: true,
                    destination_ids: matched,
                });
            }
        }
        // A concurrent publish of the same id is waited for (it may still
        // fail), never both accepted.
        let owner = crate::ids::random_hex(8);
        let give_up = std::time::Instant::now() + CLAIM_WAIT;
        loop {
            match redis.claim_idempotency(&event.id, &owner, CLAIM_LEASE_MS).await? {
                IdemClaim::Claimed => break,
                IdemClaim::Duplicate => {
                    return Ok(PublishOutcome {
                        id: event.id.clone(),
                        duplicate: true,
                        destination_ids: matched,
                    })
                }
                IdemClaim::Busy if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                IdemClaim::Busy => return Err(EngineError::PublishInProgress),
            }
        }
        let tasks: Vec<Task> = matched
            .iter()
            .map(|d| Task {
                event: event.clone(),
                destination_id: d.clone(),
                attempt: 1,
                manual: false,
            })
            .collect();
        if let Err(e) = bus.publish(tasks).await {
            let _ = redis.release_idempotency(&event.id, &owner).await;
            return Err(EngineError::Queue(e));
        }
        if let Err(e) = redis.confirm_idempotency(&event.id, ttl).await {
            // The tasks are on the queue: the event is accepted. The
            // confirmation is kept and written once Redis answers (before,
            // the claim expired after its lease and a retried publish was
            // delivered again).
            tracing::warn!(error = %e, event_id = %event.id,
                "cannot confirm a publish's idempotency key; kept until Redis answers");
            if let Some(m) = &self.unwritten_marks {
                let key = redis.idempotency_key(&event.id);
                m.keep(key, crate::store::redis::IDEMPOTENCY_DONE, ttl).await;
            }
        }
        Ok(PublishOutcome {
            id: event.id.clone(),
            duplicate: false,
            destination_ids: matched,
        })
    }

    /// Manual retry of the latest attempt of (event, destination).
    /// `tenant_scope` restricts the lookup to one tenant (tenant tokens).
    pub async fn retry(
        &self,
        tenant_scope: Option<&str>,
        event_id: &str,
        destination_id: &str,
    ) -> Result<(), EngineError> {
        let latest = self
            .logs
            .latest_attempt(tenant_scope.map(String::from), event_id.into(), destination_id.into())
            .await?
            .ok_or(EngineError::NotFound("event not found"))?;
        let dest = self
            .destination(&latest.tenant_id, destination_id)
            .ok_or(EngineError::NotFound("destination not found"))?;
        if !dest.is_enabled() {
            return Err(EngineError::DestinationDisabled);
        }
        let event = self
            .logs
            .get_event(Some(latest.tenant_id.clone()), event_id.into())
            .await?
            .ok_or(EngineError::NotFound("event not found"))?;
        let topic_ok = crate::topics::matches(&dest.topics, &event.topic);
        let filter_ok = dest
            .filter
            .as_ref()
            .is_none_or(|f| crate::filter::matches(&crate::routing::filter_document(&event), f));
        if !topic_ok || !filter_ok {
            return Err(EngineError::BadRequest("destination does not match event".into()));
        }
        let event = Arc::new(event);
        let attempt = latest.attempt_number + 1;
        if let Some(bus) = &self.bus {
            let task = Task {
                event,
                destination_id: destination_id.into(),
                attempt,
                manual: true,
            };
            return bus.publish(vec![task]).await.map_err(EngineError::Queue);
        }
        // A new accept record; the index stores the event again if it was
        // pruned after shipping.
        let target = AcceptTarget {
            destination_id: destination_id.into(),
            attempt,
            manual: true,
            due_ms: 0,
        };
        self.accept_on_shards(event, vec![target]).await
    }
}

/// Holds a claimed event id; released on drop unless confirmed, so a publish
/// that failed or was cancelled never leaves its id marked as accepted.
struct ClaimGuard<'a> {
    map: &'a Idempotency,
    id: String,
    confirmed: bool,
}

impl ClaimGuard<'_> {
    fn confirm(mut self) {
        self.map.confirm(&self.id, now_ms());
        self.confirmed = true;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.confirmed {
            self.map.release(&self.id);
        }
    }
}

impl Engine {
    /// Takes over one task from the delivery queue and returns once its
    /// attempt outcome (and any retry) is durable, or once the task is back
    /// in the shared schedule because its destination is backed up here
    /// (`shard::defer`): only then is the message acked, so a node that
    /// dies mid-attempt leaves the task to another node.
    /// The local record also feeds the log pipeline, and makes the node
    /// resume the delivery itself if it restarts first (at least once).
    pub async fn receive(&self, task: Task) -> Result<(), EngineError> {
        let key = (task.event.id.clone(), task.destination_id.clone(), task.attempt);
        // Pending in this node's journal since the last start: the journal
        // delivers it; this copy is acked.
        if self.held_locally.lock().remove(&key) {
            tracing::debug!(event_id = %key.0, destination_id = %key.1, attempt = key.2,
                "delivery task already in this node's journal; acking the copy");
            return Ok(());
        }
        // Being taken here now (the broker handed it out again after the
        // connection it came on dropped): wait for that taking's outcome.
        let (tx, rx) = tokio::sync::watch::channel(None);
        loop {
            let other = {
                let mut taking = self.taking.lock();
                match taking.get(&key) {
                    Some(other) => Some(other.clone()),
                    None => {
                        taking.insert(key.clone(), rx.clone());
                        None
                    }
                }
            };
            let Some(mut other) = other else { break };
            match other.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(true)) => return Ok(()),
                // That taking failed (or was dropped): try again ourselves.
                _ => {
                    let mut taking = self.taking.lock();
                    if taking.get(&key).is_some_and(|r| r.same_channel(&other)) {
                        taking.remove(&key);
                    }
                }
            }
        }
        let result = self.take(task).await;
        tx.send_replace(Some(result.is_ok()));
        self.taking.lock().remove(&key);
        result
    }

    /// Takes one delivery task: accepted on its shard, attempted, and
    /// returns once the attempt's outcome is committed.
    async fn take(&self, task: Task) -> Result<(), EngineError> {
        // A copy of a task whose outcome some node already committed (its
        // ack was lost with the node): ack it, attempt nothing.
        // The event (an `Arc`, not a copy) names the task if its mark cannot be written.
        let marker = self
            .redis
            .as_ref()
            .map(|r| (r.clone(), r.task_key(&task), task.event.clone()));
        if let Some((redis, key, _)) = &marker {
            // Committed here while Redis was down, its mark not written yet.
            let unwritten = self.unwritten_marks.as_ref().is_some_and(|m| m.contains(key));
            if unwritten || redis.task_done(key).await? {
                tracing::debug!(event_id = %task.event.id, destination_id = %task.destination_id,
                    attempt = task.attempt, "delivery task already done; acking the copy");
                return Ok(());
            }
        }
        let d = Delivery {
            event: task.event,
            destination_id: task.destination_id,
            attempt: task.attempt,
            manual: task.manual,
            due_ms: 0,
        };
        // A destination created a moment ago on another node may not have
        // reached this node's table yet: read it from Redis before the shard
        // would drop the task as "deleted".
        if let Some(redis) = &self.redis {
            if !self.state.read().owners.contains_key(&d.destination_id) {
                let change = Change::Destination {
                    id: d.destination_id.clone(),
                    tenant_id: d.event.tenant_id.clone(),
                    deleted: false,
                };
                self.apply_change(redis, change).await?;
            }
        }
        let id = d.destination_id.clone();
        let (d_attempt, d_manual) = (d.attempt, d.manual);
        let (done, finished) = tokio::sync::oneshot::channel();
        let (reply, accepted) = tokio::sync::oneshot::channel();
        let msg = AcceptMsg {
            event: d.event,
            targets: vec![AcceptTarget {
                destination_id: d.destination_id,
                attempt: d.attempt,
                manual: d.manual,
                due_ms: 0,
            }],
            reply: Some(reply),
            done: Some(done),
        };
        self.send(&id, ShardMsg::Accept(Box::new(msg))).await?;
        accepted.await.map_err(|_| EngineError::Closed)??;
        // Fires once the attempt's outcome is committed to the journal, or
        // once the task went back to the shared schedule (its destination
        // is backed up here): not done then, so it is not marked. A retry
        // handed to the shared schedule wrote the mark with it.
        let handled = finished.await.map_err(|_| EngineError::Closed)?;
        if handled != crate::shard::Handled::Committed {
            return Ok(());
        }
        if let Some((redis, key, event)) = marker {
            let ttl_ms = self.config.delivery_idempotency_key_ttl.as_millis() as i64;
            if let Err(e) = redis.mark_task_done(key, ttl_ms).await {
                // Kept (on disk before the ack) and written once Redis
                // answers: a stale copy of this task must find it. The key
                // is built again here so a delivery copies it on no path.
                tracing::warn!(error = %e, event_id = %event.id, destination_id = %id,
                    attempt = d_attempt, "cannot mark a delivery task done in Redis; kept until it answers");
                if let Some(m) = &self.unwritten_marks {
                    let key = redis.task_key_of(&event.id, &id, d_attempt, d_manual);
                    m.keep(key, crate::store::redis::TASK_DONE, ttl_ms).await;
                }
            }
        }
        Ok(())
    }
}
