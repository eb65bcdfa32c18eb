//! The engine: the in-memory routing table (tenants → destinations), the
//! store, and the shards. The API calls into it; it sends destination changes
//! and deliveries to the owning shard over its bounded inbox.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::alerts::{AlertActions, AlertState, MemoryAlertState, Signal};
use crate::config::Config;
use crate::config::Service;
use crate::crypto::Cipher;
use crate::destinations::{PublishContext, Registry};
use crate::idempotency::{ClaimResult, Idempotency};
use crate::ids::IdGenerator;
use crate::journal::AcceptTarget;
use crate::model::{Delivery, Destination, Event, Tenant};
use crate::opevents::OperatorEvents;
use crate::queue::pubsub::PubSubQueue;
use crate::queue::rabbitmq::RabbitQueue;
use crate::queue::sqs::SqsQueue;
use crate::queue::{DeliveryBus, Disposition, MessageSource, Task, TaskHandler};
use crate::shard::{self, AcceptMsg, ShardDeps, ShardError, ShardHandle, ShardMsg};
use crate::store::embedded::EmbeddedStore;
use crate::store::postgres::PostgresLogStore;
use crate::store::redis::{Change, RedisEntityStore};
use crate::store::{EntityStore, LogStore, StoreError};
use crate::timefmt::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("Destination is disabled")]
    DestinationDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine is shutting down")]
    Closed,
    #[error("{0}")]
    Startup(String),
    /// A shared back end (the delivery queue) is unavailable right now.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// A tenant with the fields derived from its destinations.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub tenant: Tenant,
    pub destinations_count: usize,
    /// Sorted union of destination topics, or `["*"]` if any has `*`.
    pub topics: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub id: String,
    pub duplicate: bool,
    pub destination_ids: Vec<String>,
}

struct TenantEntry {
    tenant: Tenant,
    /// In creation order.
    dests: Vec<Arc<Destination>>,
}

impl TenantEntry {
    fn view(&self) -> TenantView {
        let mut topics: Vec<String> = Vec::new();
        if self.dests.iter().any(|d| d.topics.iter().any(|t| t == "*")) {
            topics.push("*".into());
        } else {
            for d in &self.dests {
                topics.extend(d.topics.iter().cloned());
            }
            topics.sort();
            topics.dedup();
        }
        TenantView {
            tenant: self.tenant.clone(),
            destinations_count: self.dests.len(),
            topics,
        }
    }
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, TenantEntry>,
    /// destination id → tenant id (ids are unique across tenants: shards route by id).
    owners: HashMap<String, String>,
}

pub struct Engine {
    pub config: Arc<Config>,
    /// Entities and the local event/attempt index (SQLite).
    pub store: Arc<EmbeddedStore>,
    /// Event ids accepted within the idempotency window (this node).
    idempotency: Arc<Idempotency>,
    /// Tenants and destinations: the embedded store, or Redis shared by all nodes.
    pub entities: Arc<dyn EntityStore>,
    /// Where the API's event and attempt queries go: the embedded store, or
    /// PostgreSQL when `POSTGRES_URL` is set (fed by the log pipeline).
    pub logs: Arc<dyn LogStore>,
    pub types: Arc<Registry>,
    pub ids: IdGenerator,
    state: RwLock<State>,
    /// Serialises control-plane writes so store, table and shards agree.
    writes: tokio::sync::Mutex<()>,
    shards: Vec<ShardHandle>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pipeline: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Follows entity changes made on other nodes (Redis).
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The delivery queue between nodes, when configured.
    bus: Option<Arc<dyn DeliveryBus>>,
    redis: Option<Arc<RedisEntityStore>>,
    consumer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    publish_consumer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    retry_poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Operator events, when `OPERATION_EVENTS_TOPICS` and a sink are set.
    pub opevents: Option<Arc<OperatorEvents>>,
    /// The shards' alert signals, taken by the tracker when it starts.
    signals: Mutex<Option<flume::Receiver<Signal>>>,
    /// The alert tracker and the operator-event senders.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The index follower (journals → SQLite) and its stop flag.
    index: Mutex<Option<std::thread::JoinHandle<()>>>,
    index_stop: Arc<std::sync::atomic::AtomicBool>,
    /// What recovery found, until the shards are told to resume.
    recovery: Mutex<Option<crate::recovery::Plan>>,
}

impl Engine {
    /// Opens the embedded store, loads the routing table, starts the shards and
    /// re-dispatches every delivery that was pending when the process stopped.
    pub async fn start(config: Config) -> Result<Arc<Engine>, EngineError> {
        // Several rustls providers are linked in (the cloud SDKs bring their
        // own); clients that do not pick one explicitly use this default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Arc::new(config);
        let cipher = Cipher::new(&config.aes_encryption_secret);
        let embedded = Arc::new(EmbeddedStore::open(
            &config.data_dir,
            cipher,
            config.embedded_synchronous_full,
        )?);
        let store = embedded.clone();
        let (logs, pipeline) = match &config.postgres_url {
            None => (store.clone() as Arc<dyn LogStore>, None),
            Some(url) => {
                // The URL may carry a password: errors name the key, not the value.
                let pg = PostgresLogStore::connect(url, config.backend_connect_timeout)
                    .await
                    .map_err(|e| EngineError::Startup(format!("POSTGRES_URL: {e}")))?;
                let applied = pg
                    .migrate()
                    .await
                    .map_err(|e| EngineError::Startup(format!("POSTGRES_URL: migrations failed: {e}")))?;
                if !applied.is_empty() {
                    tracing::info!(?applied, "PostgreSQL migrations applied");
                }
                let pg = Arc::new(pg);
                (pg.clone() as Arc<dyn LogStore>, Some(pg))
            }
        };
        let redis = match &config.redis {
            None => None,
            Some(rc) => Some(Arc::new(
                RedisEntityStore::connect(
                    rc,
                    &config.deployment_id,
                    Cipher::new(&config.aes_encryption_secret),
                    config.backend_connect_timeout,
                )
                .await
                .map_err(|e| EngineError::Startup(format!("REDIS_HOST: {e}")))?,
            )),
        };
        let entities: Arc<dyn EntityStore> = match &redis {
            Some(r) => r.clone(),
            None => store.clone(),
        };
        // Outpost's selection order: AWS SQS, then GCP Pub/Sub, then RabbitMQ.
        let bus: Option<Arc<dyn DeliveryBus>> = match (&config.sqs, &config.pubsub, &config.rabbitmq) {
            (Some(sc), _, _) => Some(Arc::new(
                SqsQueue::connect(sc.clone(), config.backend_connect_timeout)
                    .await
                    .map_err(|e| EngineError::Startup(format!("AWS_SQS_REGION: {e}")))?,
            )),
            (None, Some(pc), _) => Some(Arc::new(
                PubSubQueue::connect(pc.clone(), config.backend_connect_timeout)
                    .await
                    .map_err(|e| EngineError::Startup(format!("GCP_PUBSUB_PROJECT: {e}")))?,
            )),
            (None, None, Some(rc)) => Some(Arc::new(
                RabbitQueue::connect(rc.clone(), config.backend_connect_timeout)
                    .await
                    .map_err(|e| EngineError::Startup(format!("RABBITMQ_SERVER_URL: {e}")))?,
            )),
            (None, None, None) => None,
        };
        let opevents = config
            .operator_events
            .as_ref()
            .map(|c| OperatorEvents::new(c, &config.deployment_id, embedded.clone()));
        let engine = Self::build(
            config.clone(),
            store,
            entities,
            logs,
            bus.clone(),
            redis.clone(),
            opevents,
        )
        .await?;
        engine.recover().await?;
        engine.start_alerting();
        if let Some(r) = redis {
            *engine.follower.lock() = Some(tokio::spawn(follow(engine.clone(), r)));
        }
        if let Some(b) = bus {
            if matches!(config.service, Service::All | Service::Delivery) {
                *engine.consumer.lock() = Some(tokio::spawn(consume(engine.clone(), b.clone())));
                if let Some(r) = &engine.redis {
                    *engine.retry_poller.lock() = Some(tokio::spawn(poll_retries(r.clone(), b)));
                }
            }
        }
        if matches!(config.service, Service::All | Service::Api) {
            let t = config.backend_connect_timeout;
            // Outpost's order: AWS SQS, then GCP Pub/Sub, then RabbitMQ.
            let source: Option<Arc<dyn MessageSource>> =
                match (&config.publish_sqs, &config.publish_pubsub, &config.publish_rabbitmq) {
                    (Some(c), _, _) => {
                        Some(Arc::new(SqsQueue::connect(c.clone(), t).await.map_err(|e| {
                            EngineError::Startup(format!("PUBLISH_AWS_SQS_REGION: {e}"))
                        })?))
                    }
                    (None, Some(c), _) => {
                        Some(Arc::new(PubSubQueue::connect(c.clone(), t).await.map_err(|e| {
                            EngineError::Startup(format!("PUBLISH_GCP_PUBSUB_PROJECT: {e}"))
                        })?))
                    }
                    (None, None, Some(c)) => {
                        Some(Arc::new(RabbitQueue::connect(c.clone(), t).await.map_err(|e| {
                            EngineError::Startup(format!("PUBLISH_RABBITMQ_SERVER_URL: {e}"))
                        })?))
                    }
                    (None, None, None) => None,
                };
            if let Some(q) = source {
                *engine.publish_consumer.lock() = Some(tokio::spawn(consume_publish_queue(engine.clone(), q)));
            }
        }
        if let Some(pg) = pipeline {
            // With a delivery queue, publish idempotency lives in Redis: shipped
            // events need not stay on the node for the idempotency window.
            let window = if engine.bus.is_some() {
                0
            } else {
                config.publish_idempotency_key_ttl.as_millis() as i64
            };
            let handle = crate::log_pipeline::spawn(embedded, pg, config.log_batch_size, window);
            *engine.pipeline.lock() = Some(handle);
        }
        Ok(engine)
    }

    async fn build(
        config: Arc<Config>,
        store: Arc<EmbeddedStore>,
        entities: Arc<dyn EntityStore>,
        logs: Arc<dyn LogStore>,
        bus: Option<Arc<dyn DeliveryBus>>,
        redis: Option<Arc<RedisEntityStore>>,
        opevents: Option<Arc<OperatorEvents>>,
    ) -> Result<Arc<Engine>, EngineError> {
        let types = Arc::new(Registry::new(&config));
        let wants = |t: &str| opevents.as_ref().is_some_and(|o| o.wants(t));
        let count_failures = config.alert.consecutive_failure_count.is_some()
            && (config.alert.auto_disable_destination
                || wants(crate::alerts::TOPIC_CONSECUTIVE_FAILURE)
                || redis.is_some());
        let exhausted = config.alert.exhausted_retries_window.is_some() && wants(crate::alerts::TOPIC_EXHAUSTED);
        let (signal_tx, signal_rx) = flume::bounded(4096);
        let alerts = (count_failures || exhausted).then(|| shard::AlertHooks {
            tx: signal_tx,
            count_failures,
            keep_samples: config.alert.consecutive_failure_count.unwrap_or(0) as usize,
            shared: redis.is_some(),
            exhausted,
        });
        let ids = IdGenerator::new(config.idgen);
        let signer = crate::signing::DefaultSigner::new(&config.webhook).map_err(EngineError::Startup)?;
        let deps = ShardDeps {
            types: types.clone(),
            publish: PublishContext {
                config: config.clone(),
                webhook_signer: Arc::new(signer),
            },
            tls: crate::http_client::tls_config(),
            ids: ids.clone(),
            shared_retries: bus.as_ref().and(redis.clone()),
            alerts,
            opevents: opevents.clone().filter(|o| o.wants_attempts()),
        };
        let ttl = config.publish_idempotency_key_ttl.as_millis() as i64;
        let idempotency = Arc::new(Idempotency::new(ttl));
        let (plan, inits, followed, wake_rx) = crate::recovery::prepare(&config, &store, &idempotency).await?;
        let (shards, threads) =
            shard::start(inits, deps).map_err(|e| EngineError::Startup(format!("cannot start shards: {e}")))?;
        let index_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let index = crate::journal::index::spawn(store.clone(), followed, wake_rx, index_stop.clone())
            .map_err(|e| EngineError::Startup(format!("cannot start the index follower: {e}")))?;
        let engine = Arc::new(Engine {
            config,
            idempotency,
            store,
            entities,
            logs,
            types,
            ids,
            state: RwLock::new(State::default()),
            writes: tokio::sync::Mutex::new(()),
            shards,
            threads: Mutex::new(threads),
            pipeline: Mutex::new(None),
            follower: Mutex::new(None),
            bus,
            redis,
            consumer: Mutex::new(None),
            publish_consumer: Mutex::new(None),
            retry_poller: Mutex::new(None),
            opevents,
            signals: Mutex::new(Some(signal_rx)),
            background: Mutex::new(Vec::new()),
            index: Mutex::new(Some(index)),
            index_stop,
            recovery: Mutex::new(Some(plan)),
        });
        Ok(engine)
    }

    /// Starts the alert tracker (where shards deliver) and the operator-event senders.
    fn start_alerting(self: &Arc<Self>) {
        let mut bg = self.background.lock();
        if let Some(o) = &self.opevents {
            bg.extend(o.spawn());
        }
        let rx = self.signals.lock().take();
        if let (Some(rx), true) = (rx, matches!(self.config.service, Service::All | Service::Delivery)) {
            let state: Arc<dyn AlertState> = match &self.redis {
                Some(r) => r.clone(),
                None => Arc::new(MemoryAlertState::default()),
            };
            let actions = Arc::new(EngineAlerts {
                engine: Arc::downgrade(self),
                opevents: self.opevents.clone(),
            });
            bg.push(tokio::spawn(crate::alerts::track(
                self.config.alert.clone(),
                state,
                actions,
                rx,
            )));
        }
    }

    /// Disables a destination after its failure streak reached the limit.
    /// `None` when it is gone or was already disabled.
    pub async fn auto_disable(&self, tenant_id: &str, id: &str) -> Option<Arc<Destination>> {
        let current = self.destination(tenant_id, id)?;
        if !current.is_enabled() {
            return None;
        }
        let mut next = (*current).clone();
        next.disabled_at = Some(now_ms());
        match self.update_destination(next).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, destination_id = id, "cannot auto-disable a destination");
                None
            }
        }
    }

    /// `tenant.subscription.updated` when a destination change altered the
    /// tenant's topics or destination count.
    fn subscription_changed(&self, before: Option<TenantView>, tenant_id: &str) {
        let Some(o) = &self.opevents else { return };
        let (Some(before), Some(after)) = (before, self.tenant(tenant_id)) else {
            return;
        };
        if before.topics == after.topics && before.destinations_count == after.destinations_count {
            return;
        }
        o.best_effort(
            crate::opevents::TOPIC_SUBSCRIPTION_UPDATED,
            Some(tenant_id),
            serde_json::json!({
                "tenant_id": tenant_id,
                "topics": after.topics,
                "previous_topics": before.topics,
                "destinations_count": after.destinations_count,
                "previous_destinations_count": before.destinations_count,
            }),
        );
    }

    async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        let (tenants, dests) = self.entities.load_entities().await?;
        self.install(tenants, dests).await?;
        // Every destination is on its shard now: recovered work may run.
        let plan = self.recovery.lock().take();
        if let Some(plan) = plan {
            crate::recovery::finish(self, plan).await?;
        }
        for s in &self.shards {
            s.tx.send_async(ShardMsg::Resume)
                .await
                .map_err(|_| EngineError::Closed)?;
        }
        let legacy = self.store.legacy_pending().await?;
        if !legacy.is_empty() {
            tracing::info!(
                deliveries = legacy.len(),
                "moving pending deliveries from the old store into the journals"
            );
            for d in legacy {
                let target = AcceptTarget {
                    destination_id: d.destination_id.clone(),
                    attempt: d.attempt,
                    manual: d.manual,
                    due_ms: d.due_ms,
                };
                self.accept_on_shards(d.event, vec![target]).await?;
            }
            self.store.clear_legacy_pending().await?;
        }
        let idem = self.idempotency.clone();
        self.background.lock().push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tick.tick().await;
                idem.prune(now_ms());
            }
        }));
        Ok(())
    }

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

    /// Replaces the routing table with these entities and tells the shards
    /// what changed (new or different destinations, removed ones).
    async fn install(&self, tenants: Vec<Tenant>, mut loaded: Vec<Destination>) -> Result<(), EngineError> {
        loaded.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut next = State::default();
        for t in tenants {
            next.tenants.insert(
                t.id.clone(),
                TenantEntry {
                    tenant: t,
                    dests: Vec::new(),
                },
            );
        }
        let (upserts, removes) = {
            let st = self.state.read();
            let mut upserts = Vec::new();
            for mut d in loaded {
                d.shrink();
                // Keep the existing Arc when nothing changed, so shards are left alone.
                let d = match st
                    .owners
                    .get(&d.id)
                    .and_then(|t| st.tenants.get(t))
                    .and_then(|e| e.dests.iter().find(|x| x.id == d.id))
                {
                    Some(old) if **old == d => old.clone(),
                    _ => {
                        let d = Arc::new(d);
                        upserts.push(d.clone());
                        d
                    }
                };
                if let Some(entry) = next.tenants.get_mut(&d.tenant_id) {
                    next.owners.insert(d.id.clone(), d.tenant_id.clone());
                    entry.dests.push(d);
                }
            }
            let removes: Vec<String> = st
                .owners
                .keys()
                .filter(|id| !next.owners.contains_key(*id))
                .cloned()
                .collect();
            (upserts, removes)
        };
        *self.state.write() = next;
        for d in upserts {
            self.send(&d.id.clone(), ShardMsg::Upsert(d)).await?;
        }
        for id in removes {
            self.send(&id, ShardMsg::Remove(id.clone())).await?;
        }
        Ok(())
    }

    /// Applies one change announced on the Redis channel (made by any node,
    /// this one included): the store is read again, so the latest state wins.
    async fn apply_change(&self, redis: &RedisEntityStore, change: Change) -> Result<(), EngineError> {
        let _w = self.writes.lock().await;
        match change {
            Change::Tenant { id, .. } => match redis.get_tenant(&id).await? {
                Some(t) => {
                    let mut st = self.state.write();
                    let entry = st.tenants.entry(id).or_insert_with(|| TenantEntry {
                        tenant: t.clone(),
                        dests: vec![],
                    });
                    entry.tenant = t;
                }
                None => {
                    let removed = {
                        let mut st = self.state.write();
                        let dests = st.tenants.remove(&id).map(|e| e.dests).unwrap_or_default();
                        for d in &dests {
                            st.owners.remove(&d.id);
                        }
                        dests
                    };
                    for d in removed {
                        self.send(&d.id, ShardMsg::Remove(d.id.clone())).await?;
                    }
                }
            },
            Change::Destination { id, tenant_id, .. } => match redis.get_destination(&id).await? {
                Some(mut d) => {
                    d.shrink();
                    // The tenant's own change may not have arrived yet.
                    let missing = !self.state.read().tenants.contains_key(&d.tenant_id);
                    let fetched = if missing {
                        redis.get_tenant(&d.tenant_id).await?
                    } else {
                        None
                    };
                    let changed = {
                        let mut st = self.state.write();
                        if let Some(t) = fetched {
                            st.tenants.entry(t.id.clone()).or_insert(TenantEntry {
                                tenant: t,
                                dests: vec![],
                            });
                        }
                        let d = Arc::new(d);
                        let mut changed = None;
                        if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                            match e.dests.iter_mut().find(|x| x.id == d.id) {
                                Some(slot) if **slot == *d => {}
                                Some(slot) => {
                                    *slot = d.clone();
                                    changed = Some(d.clone());
                                }
                                None => {
                                    e.dests.push(d.clone());
                                    e.dests
                                        .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                                    changed = Some(d.clone());
                                }
                            }
                        }
                        if changed.is_some() {
                            st.owners.insert(d.id.clone(), d.tenant_id.clone());
                        }
                        changed
                    };
                    if let Some(d) = changed {
                        self.send(&d.id.clone(), ShardMsg::Upsert(d)).await?;
                    }
                }
                None => {
                    let existed = {
                        let mut st = self.state.write();
                        let had = st.owners.remove(&id).is_some();
                        if let Some(e) = st.tenants.get_mut(&tenant_id) {
                            e.dests.retain(|d| d.id != id);
                        }
                        had
                    };
                    if existed {
                        self.send(&id, ShardMsg::Remove(id.clone())).await?;
                    }
                }
            },
        }
        Ok(())
    }

    async fn send(&self, destination_id: &str, msg: ShardMsg) -> Result<(), EngineError> {
        let i = shard::shard_for(destination_id, self.shards.len());
        self.shards[i].tx.send_async(msg).await.map_err(|_| EngineError::Closed)
    }

    /// Total attempts made by all shards since start.
    pub fn attempts_made(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.stats.attempts.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Stops the node: the consumers and background tasks first, then each
    /// shard drains (attempts in flight finish or are abandoned at
    /// `OUTRIDER_SHUTDOWN_DRAIN_SECONDS`, outcomes are committed). Deliveries
    /// not started stay in the journals for the next start. Never waits on a
    /// shard past the deadline.
    pub async fn shutdown(&self) -> shard::DrainReport {
        if let Some(p) = self.pipeline.lock().take() {
            p.abort();
        }
        for t in [
            &self.follower,
            &self.consumer,
            &self.publish_consumer,
            &self.retry_poller,
        ] {
            if let Some(h) = t.lock().take() {
                h.abort();
            }
        }
        for h in self.background.lock().drain(..) {
            h.abort();
        }
        let deadline = std::time::Instant::now() + self.config.shutdown_drain_timeout;
        let mut reports = Vec::new();
        for s in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = ShardMsg::Shutdown { deadline, report: tx };
            let send = tokio::time::timeout_at(deadline.into(), s.tx.send_async(msg));
            if matches!(send.await, Ok(Ok(()))) {
                reports.push(rx);
            }
        }
        let mut total = shard::DrainReport::default();
        // A little past the deadline: the shards commit after it.
        let give_up = deadline + std::time::Duration::from_secs(6);
        for rx in reports {
            if let Ok(Ok(r)) = tokio::time::timeout_at(give_up.into(), rx).await {
                total.finished += r.finished;
                total.abandoned += r.abandoned;
                total.left += r.left;
            }
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.index_stop.store(true, std::sync::atomic::Ordering::Release);
        let index = self.index.lock().take();
        if let Some(h) = index {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        total
    }

    /// Whether every shard's loop is running (for `/healthz`).
    pub fn shards_running(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| s.stats.running.load(std::sync::atomic::Ordering::Acquire))
            .count()
    }

    /// Deliveries accepted and not yet settled, over all shards.
    pub fn pending_deliveries(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.stats.pending.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn shard_handles(&self) -> &[ShardHandle] {
        &self.shards
    }

    // ---- tenants ----

    pub fn tenant(&self, id: &str) -> Option<TenantView> {
        self.state.read().tenants.get(id).map(TenantEntry::view)
    }

    pub fn tenant_exists(&self, id: &str) -> bool {
        self.state.read().tenants.contains_key(id)
    }

    /// All tenants, newest first (ties by id).
    pub fn tenants(&self) -> Vec<TenantView> {
        let st = self.state.read();
        let mut v: Vec<TenantView> = st.tenants.values().map(TenantEntry::view).collect();
        v.sort_by(|a, b| (b.tenant.created_at, &b.tenant.id).cmp(&(a.tenant.created_at, &a.tenant.id)));
        v
    }

    /// Creates or replaces a tenant's metadata; `true` when it was created.
    pub async fn upsert_tenant(
        &self,
        id: &str,
        metadata: Option<crate::model::StringMap>,
    ) -> Result<(TenantView, bool), EngineError> {
        let _w = self.writes.lock().await;
        let now = now_ms();
        let existing = self.state.read().tenants.get(id).map(|e| e.tenant.clone());
        let created = existing.is_none();
        let tenant = Tenant {
            id: id.to_string(),
            metadata,
            created_at: existing.map(|t| t.created_at).unwrap_or(now),
            updated_at: now,
        };
        self.entities.put_tenant(tenant.clone()).await?;
        let mut st = self.state.write();
        let entry = st.tenants.entry(id.to_string()).or_insert_with(|| TenantEntry {
            tenant: tenant.clone(),
            dests: vec![],
        });
        entry.tenant = tenant;
        Ok((entry.view(), created))
    }

    pub async fn delete_tenant(&self, id: &str) -> Result<bool, EngineError> {
        let _w = self.writes.lock().await;
        if !self.tenant_exists(id) {
            return Ok(false);
        }
        self.entities.delete_tenant(id.to_string()).await?;
        let removed = {
            let mut st = self.state.write();
            let entry = st.tenants.remove(id);
            let dests = entry.map(|e| e.dests).unwrap_or_default();
            for d in &dests {
                st.owners.remove(&d.id);
            }
            dests
        };
        for d in removed {
            self.send(&d.id, ShardMsg::Remove(d.id.clone())).await?;
        }
        Ok(true)
    }

    // ---- destinations ----

    pub fn destinations(&self, tenant_id: &str) -> Option<Vec<Arc<Destination>>> {
        self.state.read().tenants.get(tenant_id).map(|e| e.dests.clone())
    }

    pub fn destination(&self, tenant_id: &str, id: &str) -> Option<Arc<Destination>> {
        self.state
            .read()
            .tenants
            .get(tenant_id)
            .and_then(|e| e.dests.iter().find(|d| d.id == id).cloned())
    }

    /// Stores a new destination (already validated and preprocessed).
    pub async fn create_destination(&self, d: Destination) -> Result<Arc<Destination>, EngineError> {
        let _w = self.writes.lock().await;
        let before = self.tenant(&d.tenant_id);
        {
            let st = self.state.read();
            let entry = st
                .tenants
                .get(&d.tenant_id)
                .ok_or(EngineError::NotFound("tenant not found"))?;
            if st.owners.contains_key(&d.id) {
                return Err(EngineError::BadRequest("destination already exists".into()));
            }
            if entry.dests.len() >= self.config.max_destinations_per_tenant {
                return Err(EngineError::BadRequest(
                    "maximum number of destinations per tenant reached".into(),
                ));
            }
        }
        self.entities.put_destination(d.clone()).await?;
        let mut d = d;
        d.shrink();
        let d = Arc::new(d);
        {
            let mut st = self.state.write();
            st.owners.insert(d.id.clone(), d.tenant_id.clone());
            if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                e.dests.push(d.clone());
            }
        }
        self.send(&d.id, ShardMsg::Upsert(d.clone())).await?;
        self.subscription_changed(before, &d.tenant_id);
        Ok(d)
    }

    /// Replaces a stored destination (same id and tenant).
    pub async fn update_destination(&self, mut d: Destination) -> Result<Arc<Destination>, EngineError> {
        d.shrink();
        let _w = self.writes.lock().await;
        if self.destination(&d.tenant_id, &d.id).is_none() {
            return Err(EngineError::NotFound("destination not found"));
        }
        let before = self.tenant(&d.tenant_id);
        self.entities.put_destination(d.clone()).await?;
        let d = Arc::new(d);
        {
            let mut st = self.state.write();
            if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                if let Some(slot) = e.dests.iter_mut().find(|x| x.id == d.id) {
                    *slot = d.clone();
                }
            }
        }
        self.send(&d.id, ShardMsg::Upsert(d.clone())).await?;
        self.subscription_changed(before, &d.tenant_id);
        Ok(d)
    }

    pub async fn delete_destination(&self, tenant_id: &str, id: &str) -> Result<bool, EngineError> {
        let _w = self.writes.lock().await;
        if self.destination(tenant_id, id).is_none() {
            return Ok(false);
        }
        let before = self.tenant(tenant_id);
        self.entities
            .delete_destination(tenant_id.to_string(), id.to_string())
            .await?;
        {
            let mut st = self.state.write();
            st.owners.remove(id);
            if let Some(e) = st.tenants.get_mut(tenant_id) {
                e.dests.retain(|d| d.id != id);
            }
        }
        self.send(id, ShardMsg::Remove(id.to_string())).await?;
        self.subscription_changed(before, tenant_id);
        Ok(true)
    }

    // ---- publish and retry ----

    /// Ids of the enabled destinations whose topics and filter match the event.
    pub fn match_destinations(&self, event: &Event) -> Vec<String> {
        let st = self.state.read();
        match st.tenants.get(&event.tenant_id) {
            Some(entry) => crate::routing::matching(&entry.dests, event),
            None => vec![],
        }
    }

    /// Matches, then makes the event durable on the shards that own its
    /// destinations; they deliver once it is committed. Returns after the
    /// commit: a success means the event survives a crash.
    pub async fn publish(&self, mut event: Event) -> Result<PublishOutcome, EngineError> {
        // One read of the routing table: the tenant and its matches.
        let matched = {
            let st = self.state.read();
            match st.tenants.get(&event.tenant_id) {
                None => return Err(EngineError::NotFound("tenant not found")),
                Some(entry) => crate::routing::matching(&entry.dests, &event),
            }
        };
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
                ClaimResult::Busy => {
                    return Err(EngineError::Unavailable(
                        "another publish of this event id is still in progress".into(),
                    ))
                }
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
        if !redis.claim_idempotency(&event.id, ttl).await? {
            return Ok(PublishOutcome {
                id: event.id.clone(),
                duplicate: true,
                destination_ids: matched,
            });
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
        if let Err(e) = bus.publish(&tasks).await {
            let _ = redis.release_idempotency(&event.id).await;
            return Err(EngineError::Unavailable(format!("delivery queue: {e}")));
        }
        if let Err(e) = redis.confirm_idempotency(&event.id, ttl).await {
            // The tasks are on the queue: the event is accepted. Left
            // unconfirmed, the claim expires early and a retried publish
            // is delivered again (at least once), never dropped.
            tracing::warn!(error = %e, "cannot confirm a publish's idempotency key");
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
            return bus
                .publish(&[task])
                .await
                .map_err(|e| EngineError::Unavailable(format!("delivery queue: {e}")));
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

/// What the alert tracker may do to this node.
struct EngineAlerts {
    engine: std::sync::Weak<Engine>,
    opevents: Option<Arc<OperatorEvents>>,
}

impl AlertActions for EngineAlerts {
    fn disable(&self, destination: Arc<Destination>) -> futures_util::future::BoxFuture<'_, Option<Arc<Destination>>> {
        Box::pin(async move {
            let engine = self.engine.upgrade()?;
            engine.auto_disable(&destination.tenant_id, &destination.id).await
        })
    }

    fn alert(
        &self,
        topic: &'static str,
        tenant_id: String,
        data: serde_json::Value,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(o) = &self.opevents {
                o.alert(topic, tenant_id, data).await;
            }
        })
    }

    fn wants(&self, topic: &str) -> bool {
        self.opevents.as_ref().is_some_and(|o| o.wants(topic))
    }
}

/// Keeps this node's routing table in step with Redis: subscribe to the
/// change channel, resynchronise fully after every (re)subscription (changes
/// published while disconnected are not replayed), then apply each change.
async fn follow(engine: Arc<Engine>, redis: Arc<RedisEntityStore>) {
    use futures_util::StreamExt;
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match redis.subscribe().await {
            Ok(mut ps) => {
                match redis.load_entities().await {
                    Ok((t, d)) => {
                        if let Err(e) = engine.install(t, d).await {
                            tracing::warn!(error = %e, "entity resync failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "entity resync failed"),
                }
                backoff = std::time::Duration::from_millis(100);
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let change = msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Change>(&p).ok());
                    match change {
                        Some(c) => {
                            if let Err(e) = engine.apply_change(&redis, c).await {
                                tracing::warn!(error = %e, "cannot apply an entity change");
                            }
                        }
                        None => tracing::warn!("ignoring a malformed entity change message"),
                    }
                }
                tracing::warn!("Redis change channel closed; resubscribing");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to Redis entity changes");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// The delivery node's consumer: each task is made durable in the local store
/// (then acked) and handed to its shard. Reconnects with backoff.
async fn consume(engine: Arc<Engine>, bus: Arc<dyn DeliveryBus>) {
    let prefetch = engine.config.delivery_max_concurrency.clamp(1, u16::MAX as usize) as u16;
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        let e = engine.clone();
        let handler: TaskHandler = Arc::new(move |task| {
            let e = e.clone();
            Box::pin(async move { e.receive(task).await.map_err(|err| err.to_string()) })
        });
        let result = bus.consume(prefetch, handler).await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "delivery queue consumer stopped; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

impl Engine {
    /// Takes over one task from the delivery queue and returns once its
    /// attempt outcome (and any retry) is durable: only then is the message
    /// acked, so a node that dies mid-attempt leaves the task to another node.
    /// The local record also feeds the log pipeline, and makes the node
    /// resume the delivery itself if it restarts first (at least once).
    pub async fn receive(&self, task: Task) -> Result<(), EngineError> {
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
        // Fires once the attempt's outcome is committed to the journal.
        finished.await.map_err(|_| EngineError::Closed)
    }
}

/// Events a producer put straight on the publish queue: the same document
/// and rules as `POST /publish`. Invalid ones (bad JSON, failed validation,
/// unknown tenant) are rejected without requeue so the broker's dead-letter
/// policy applies; transient failures are requeued.
async fn consume_publish_queue(engine: Arc<Engine>, queue: Arc<dyn MessageSource>) {
    let mut backoff = std::time::Duration::from_millis(200);
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
        let result = queue.consume_bytes(64, handler).await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "publish queue consumer stopped; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Moves due retries from the shared schedule onto the delivery queue. Every
/// delivery node runs one; leases keep two pollers from sending the same
/// retry, and a poller that dies mid-way only delays it by the lease.
async fn poll_retries(redis: Arc<RedisEntityStore>, bus: Arc<dyn DeliveryBus>) {
    const LEASE_MS: i64 = 30_000;
    const BATCH: usize = 100;
    let idle = std::time::Duration::from_millis(200);
    loop {
        let leased = match redis.lease_due_retries(now_ms(), LEASE_MS, BATCH).await {
            Ok(l) => l,
            Err(e) => {
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
        match bus.publish(&tasks).await {
            Ok(()) => {
                for (member, score) in done {
                    if let Err(e) = redis.finish_retry(&member, score).await {
                        // Left leased: it is sent again after the lease (at least once).
                        tracing::warn!(error = %e, "cannot clear a sent retry");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot queue due retries; they stay scheduled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use crate::model::StringMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP sink that reports each request, then answers 200 only when
    /// released.
    async fn gated_sink() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::Receiver<()>,
        tokio::sync::mpsc::Sender<()>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (got_tx, got_rx) = tokio::sync::mpsc::channel(16);
        let (rel_tx, mut rel_rx) = tokio::sync::mpsc::channel::<()>(16);
        tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before a full request");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            got_tx.send(()).await.unwrap();
            rel_rx.recv().await;
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = sock.read(&mut chunk).await;
        });
        (addr, got_rx, rel_tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_delivery_is_acked_only_after_its_outcome_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, mut got, release) = gated_sink().await;
        let mut m = std::collections::HashMap::new();
        for (k, v) in [
            ("AES_ENCRYPTION_SECRET", "test"),
            ("DELIVERY_SHARDS", "1"),
            ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        m.insert("OUTRIDER_DATA_DIR".into(), dir.path().display().to_string());
        let engine = Engine::start(Config::from_sources(&Sources::from_map(m)).unwrap())
            .await
            .unwrap();
        engine.upsert_tenant("t", None).await.unwrap();
        let mut config = StringMap::new();
        config.insert("url".into(), format!("http://{addr}/hook"));
        let mut credentials = StringMap::new();
        credentials.insert("secret".into(), "whsec_test".into());
        engine
            .create_destination(Destination {
                id: "d1".into(),
                tenant_id: "t".into(),
                kind: "webhook".into(),
                topics: vec!["*".into()],
                filter: None,
                config,
                credentials,
                delivery_metadata: None,
                metadata: None,
                created_at: 1,
                updated_at: 1,
                disabled_at: None,
            })
            .await
            .unwrap();
        let task = Task {
            event: Arc::new(Event {
                id: "e1".into(),
                tenant_id: "t".into(),
                destination_id: None,
                topic: "k".into(),
                eligible_for_retry: true,
                time: now_ms(),
                metadata: StringMap::new(),
                data: Arc::from("{\"a\":1}"),
                matched_destination_ids: vec!["d1".into()],
            }),
            destination_id: "d1".into(),
            attempt: 1,
            manual: false,
        };
        let e2 = engine.clone();
        let mut acked = tokio::spawn(async move { e2.receive(task).await });
        got.recv().await.unwrap();
        // The attempt is running; hold the journal's commits, then let it end.
        let progress = engine.shard_handles()[0].progress.clone();
        progress.hold.store(true, std::sync::atomic::Ordering::Release);
        release.send(()).await.unwrap();
        let journal = crate::journal::shard_dir(&dir.path().join("journal"), 0);
        tokio::select! {
            r = &mut acked => panic!("acked before its outcome was committed: {r:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        let on_disk = crate::journal::replay::replay(&journal, 0).unwrap();
        assert_eq!(on_disk.pending.len(), 1, "outcome not on disk while commits are held");
        progress.hold.store(false, std::sync::atomic::Ordering::Release);
        tokio::time::timeout(std::time::Duration::from_secs(5), acked)
            .await
            .expect("acked once committed")
            .unwrap()
            .unwrap();
        let on_disk = crate::journal::replay::replay(&journal, 0).unwrap();
        assert_eq!(
            on_disk.pending.len(),
            0,
            "the outcome is committed when the ack is given"
        );
        engine.shutdown().await;
    }
}
