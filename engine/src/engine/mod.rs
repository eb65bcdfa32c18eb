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
use crate::store::embedded::{EmbeddedStore, LogRole};
use crate::store::postgres::PostgresLogStore;
use crate::store::redis::{Change, RedisEntityStore};
use crate::store::{EntityStore, LogStore, StoreError};
use crate::timefmt::now_ms;

mod accept;
mod control;
mod exposition;
pub mod health;
mod marks;
mod recovery;
mod routing_table;
mod startup;
mod tenant_locks;
mod workers;

pub use startup::StartupError;
use workers::{consume, consume_publish_queue, follow, poll_retries};

/// A delivery task's identity: event id, destination id, attempt number.
type TaskKey = (String, String, u32);

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
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The delivery queue did not take the tasks right now (the broker is
    /// away or refused them): nothing was accepted, the publish may be retried.
    #[error("delivery queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    /// Another publish of the same event id holds its claim (still waiting
    /// for its commit or its broker confirm) past the wait.
    #[error("another publish of this event id is still in progress")]
    PublishInProgress,
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
    /// `(created_at, id)` of every tenant: `GET /tenants` pages by seeking
    /// here instead of copying and sorting every tenant per request.
    tenant_order: std::collections::BTreeSet<(i64, String)>,
    /// destination id → tenant id (ids are unique across tenants: shards route by id).
    owners: HashMap<String, String>,
}

impl State {
    /// Adds the tenant, or replaces the stored one and keeps its destinations.
    fn put_tenant(&mut self, t: Tenant) -> &mut TenantEntry {
        let key = (t.created_at, t.id.clone());
        let entry = match self.tenants.entry(t.id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let entry = e.into_mut();
                if entry.tenant.created_at != t.created_at {
                    self.tenant_order.remove(&(entry.tenant.created_at, t.id.clone()));
                }
                entry.tenant = t;
                entry
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(TenantEntry {
                tenant: t,
                dests: vec![],
            }),
        };
        self.tenant_order.insert(key);
        entry
    }

    fn remove_tenant(&mut self, id: &str) -> Option<TenantEntry> {
        let entry = self.tenants.remove(id)?;
        self.tenant_order
            .remove(&(entry.tenant.created_at, entry.tenant.id.clone()));
        Some(entry)
    }
}

/// Where a page of tenants starts, in the listing's order.
pub enum TenantSeek {
    First,
    /// Rows strictly after this `(created_at, id)`.
    After(i64, String),
    /// Rows strictly before it.
    Before(i64, String),
}

/// A page of tenants and whether rows lie beyond it on either side.
pub struct TenantPage {
    pub rows: Vec<TenantView>,
    pub more_after: bool,
    pub more_before: bool,
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
    /// Orders each tenant's control-plane writes so store, table and shards
    /// agree; different tenants' writes run side by side.
    writes: tenant_locks::TenantLocks,
    shards: Vec<ShardHandle>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pipeline: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Queue mode: tasks pending in this node's journals at start. The
    /// broker still holds them unacked and hands them out again; the
    /// journal delivers them, so a copy that arrives is acked, not taken.
    held_locally: Mutex<std::collections::HashSet<TaskKey>>,
    /// Queue mode: tasks being taken now, each with the outcome of its
    /// taking; a copy handed out meanwhile (the broker connection dropped
    /// under the first) waits for it instead of being attempted again.
    taking: Mutex<std::collections::HashMap<TaskKey, tokio::sync::watch::Receiver<Option<bool>>>>,
    /// Queue mode: done marks Redis did not take yet (see [`marks`]).
    unwritten_marks: Option<Arc<marks::UnwrittenMarks>>,
    /// What the log pipeline shipped and quarantined (zero without one).
    pub log_stats: Arc<crate::log_pipeline::Stats>,
    /// How long `POST /publish` takes to accept (the API records it).
    pub publish_latency: Arc<crate::latency::Histogram>,
    /// What log retention (`LOG_RETENTION_DAYS`) has deleted.
    pub retention_stats: Arc<crate::store::retention::Stats>,
    /// Alerts raised and destinations disabled by this node's tracker.
    pub alert_counts: Arc<AlertCounts>,
    /// Follows entity changes made on other nodes (Redis).
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The delivery queue between nodes, when configured.
    bus: Option<Arc<dyn DeliveryBus>>,
    redis: Option<Arc<RedisEntityStore>>,
    consumer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    publish_consumer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The consumers' messages still being handled or settled: shutdown
    /// waits for them (see [`crate::queue::Settling`]).
    settling: Mutex<Vec<Arc<crate::queue::Settling>>>,
    retry_poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What the reconnecting workers above last saw of their back ends.
    links: health::Links,
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
    recovery: Mutex<Option<recovery::Plan>>,
    /// Queue mode's batched calls (publishes, Redis commands), by kind.
    batch_stats: Mutex<Vec<(&'static str, Arc<crate::coalesce::BatchStats>)>>,
    /// The exclusive locks on the data directory and, when it lives
    /// elsewhere, the journal directory, held while the engine lives.
    dir_locks: Mutex<Vec<std::fs::File>>,
}

/// Takes an exclusive lock on `<data dir>/LOCK` so that a second process on
/// the same directory refuses to start instead of replaying (and delivering)
/// the first one's pending work and writing into its journals. The OS drops
/// the lock when the process dies, `kill -9` included.
fn lock_dir(dir: &std::path::Path, setting: &'static str) -> Result<std::fs::File, StartupError> {
    std::fs::create_dir_all(dir).map_err(StartupError::file("create", dir))?;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StartupError::file("open", &path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartupError::InUse {
            dir: dir.to_path_buf(),
            setting,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StartupError::file("lock", path)(e)),
    }
}

impl Engine {
    /// Opens the embedded store, loads the routing table, starts the shards and
    /// re-dispatches every delivery that was pending when the process stopped.
    pub async fn start(config: Config) -> Result<Arc<Engine>, EngineError> {
        // Several rustls providers are linked in (the cloud SDKs bring their
        // own); clients that do not pick one explicitly use this default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Arc::new(config);
        let mut dir_locks = vec![lock_dir(&config.data_dir, "OUTRIDER_DATA_DIR")?];
        if !config.journal_dir.starts_with(&config.data_dir) {
            dir_locks.push(lock_dir(&config.journal_dir, "OUTRIDER_JOURNAL_DIR")?);
        }
        recovery::check_journal_location(&config)?;
        let cipher = Cipher::new(config.aes_encryption_secret.expose());
        // With PostgreSQL as the log's home, the embedded rows only wait to be shipped.
        let role = if config.postgres_url.is_some() {
            LogRole::Outbox
        } else {
            LogRole::Home
        };
        let embedded = Arc::new(EmbeddedStore::open_as(
            &config.data_dir,
            cipher,
            config.embedded_synchronous_full,
            role,
        )?);
        let store = embedded.clone();
        let (logs, pipeline) = match &config.postgres_url {
            None => (store.clone() as Arc<dyn LogStore>, None),
            Some(url) => {
                // The URL may carry a password: errors name the key, not the value.
                let pg = PostgresLogStore::connect(url.expose(), config.backend_connect_timeout)
                    .await
                    .map_err(StartupError::store("POSTGRES_URL"))?;
                let applied = pg.migrate().await.map_err(StartupError::Migrations)?;
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
                    Cipher::new(config.aes_encryption_secret.expose()),
                    config.backend_connect_timeout,
                )
                .await
                .map_err(StartupError::store("REDIS_HOST"))?,
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
                    .map_err(StartupError::queue("AWS_SQS_REGION"))?,
            )),
            (None, Some(pc), _) => Some(Arc::new(
                PubSubQueue::connect(pc.clone(), config.backend_connect_timeout)
                    .await
                    .map_err(StartupError::queue("GCP_PUBSUB_PROJECT"))?,
            )),
            (None, None, Some(rc)) => Some(Arc::new(
                RabbitQueue::connect(rc.clone(), config.backend_connect_timeout)
                    .await
                    .map_err(StartupError::queue("RABBITMQ_SERVER_URL"))?,
            )),
            (None, None, None) => None,
        };
        let mut batch_stats = redis.as_ref().map(|r| r.batch_stats()).unwrap_or_default();
        let bus = bus.map(|b| {
            let coalesced = crate::queue::Coalesced::new(b);
            batch_stats.push(("queue_publish", coalesced.stats()));
            Arc::new(coalesced) as Arc<dyn DeliveryBus>
        });
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
        *engine.dir_locks.lock() = dir_locks;
        *engine.batch_stats.lock() = batch_stats;
        engine.recover().await?;
        engine.start_alerting();
        if let (Some(m), Some(r)) = (&engine.unwritten_marks, &engine.redis) {
            engine.background.lock().push(tokio::spawn(m.clone().run(r.clone())));
        }
        if let Some(r) = redis {
            *engine.follower.lock() = Some(tokio::spawn(follow(
                engine.clone(),
                r,
                engine.links.entity_follower.clone(),
            )));
        }
        if let Some(b) = bus {
            if matches!(config.service, Service::All | Service::Delivery) {
                engine.settling.lock().push(b.settling());
                *engine.consumer.lock() = Some(tokio::spawn(consume(
                    engine.clone(),
                    b.clone(),
                    engine.links.delivery_queue.clone(),
                )));
                if let Some(r) = &engine.redis {
                    *engine.retry_poller.lock() = Some(tokio::spawn(poll_retries(
                        r.clone(),
                        b,
                        engine.links.retry_poller.clone(),
                    )));
                }
            }
        }
        if matches!(config.service, Service::All | Service::Api) {
            let t = config.backend_connect_timeout;
            // Outpost's order: AWS SQS, then GCP Pub/Sub, then RabbitMQ.
            let source: Option<Arc<dyn MessageSource>> =
                match (&config.publish_sqs, &config.publish_pubsub, &config.publish_rabbitmq) {
                    (Some(c), _, _) => Some(Arc::new(
                        SqsQueue::connect(c.clone(), t)
                            .await
                            .map_err(StartupError::queue("PUBLISH_AWS_SQS_REGION"))?,
                    )),
                    (None, Some(c), _) => Some(Arc::new(
                        PubSubQueue::connect(c.clone(), t)
                            .await
                            .map_err(StartupError::queue("PUBLISH_GCP_PUBSUB_PROJECT"))?,
                    )),
                    (None, None, Some(c)) => Some(Arc::new(
                        RabbitQueue::connect(c.clone(), t)
                            .await
                            .map_err(StartupError::queue("PUBLISH_RABBITMQ_SERVER_URL"))?,
                    )),
                    (None, None, None) => None,
                };
            if let Some(q) = source {
                engine.settling.lock().push(q.settling());
                *engine.publish_consumer.lock() = Some(tokio::spawn(consume_publish_queue(
                    engine.clone(),
                    q,
                    engine.links.publish_queue.clone(),
                )));
            }
        }
        if let Some(days) = config.log_retention_days {
            // The log's home prunes itself: PostgreSQL when it is the log
            // store (every node may run it; one at a time does), else this
            // node's embedded store, which keeps events inside the publish
            // idempotency window whatever their time.
            let window = config.publish_idempotency_key_ttl.as_millis() as i64;
            let home = engine.logs.clone();
            let stats = engine.retention_stats.clone();
            engine
                .background
                .lock()
                .push(tokio::spawn(crate::store::retention::run(home, days, window, stats)));
        }
        if let Some(pg) = pipeline {
            // With a delivery queue, publish idempotency lives in Redis: shipped
            // events need not stay on the node for the idempotency window.
            let window = if engine.bus.is_some() {
                0
            } else {
                config.publish_idempotency_key_ttl.as_millis() as i64
            };
            let handle =
                crate::log_pipeline::spawn(embedded, pg, config.log_batch_size, window, engine.log_stats.clone());
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
        let publish = PublishContext::new(config.clone()).map_err(StartupError::Settings)?;
        let deps = ShardDeps {
            types: types.clone(),
            publish,
            tls: crate::http_client::tls_config(),
            ids: ids.clone(),
            shared_retries: bus.as_ref().and(redis.clone()),
            alerts,
            opevents: opevents.clone().filter(|o| o.wants_attempts()),
        };
        let ttl = config.publish_idempotency_key_ttl.as_millis() as i64;
        let idempotency = Arc::new(Idempotency::new(ttl));
        let (mut plan, inits, followed, wake_rx) =
            recovery::prepare(&config, &store, &idempotency, bus.is_some(), redis.as_deref()).await?;
        let held_locally: std::collections::HashSet<TaskKey> = plan.take_task_keys().into_iter().collect();
        let unwritten_marks = match (&bus, &redis) {
            (Some(_), Some(_)) => Some(Arc::new(
                marks::UnwrittenMarks::open(&config.data_dir)
                    .map_err(StartupError::file("read", config.data_dir.join("unwritten-done-marks")))?,
            )),
            _ => None,
        };
        let (shards, threads) =
            shard::start(inits, deps).map_err(|source| StartupError::Thread { what: "shards", source })?;
        let index_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let index =
            crate::journal::index::spawn(store.clone(), followed, wake_rx, index_stop.clone()).map_err(|source| {
                StartupError::Thread {
                    what: "the index follower",
                    source,
                }
            })?;
        let engine = Arc::new(Engine {
            config,
            idempotency,
            store,
            entities,
            logs,
            types,
            ids,
            state: RwLock::new(State::default()),
            writes: tenant_locks::TenantLocks::new(),
            shards,
            threads: Mutex::new(threads),
            pipeline: Mutex::new(None),
            log_stats: Arc::default(),
            publish_latency: Arc::default(),
            retention_stats: Arc::default(),
            alert_counts: Arc::default(),
            held_locally: Mutex::new(held_locally),
            taking: Mutex::new(std::collections::HashMap::new()),
            unwritten_marks,
            follower: Mutex::new(None),
            bus,
            redis,
            consumer: Mutex::new(None),
            publish_consumer: Mutex::new(None),
            settling: Mutex::new(Vec::new()),
            retry_poller: Mutex::new(None),
            links: health::Links::default(),
            opevents,
            signals: Mutex::new(Some(signal_rx)),
            background: Mutex::new(Vec::new()),
            index: Mutex::new(Some(index)),
            index_stop,
            recovery: Mutex::new(Some(plan)),
            dir_locks: Mutex::new(Vec::new()),
            batch_stats: Mutex::new(Vec::new()),
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
                counts: self.alert_counts.clone(),
            });
            bg.push(tokio::spawn(crate::alerts::track(
                self.config.alert.clone(),
                state,
                actions,
                rx,
            )));
        }
    }

    async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        let (tenants, dests) = self.entities.load_entities().await?;
        self.install(tenants, dests).await?;
        // Every destination is on its shard now: recovered work may run.
        let plan = self.recovery.lock().take();
        if let Some(plan) = plan {
            recovery::finish(self, plan).await?;
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

    /// Runs `start(i)` on shard `i`'s thread, inside its runtime, for every
    /// shard, and returns once each has run: what it spawns there (the API's
    /// accept loops) runs on the shard's core beside its deliveries, and a
    /// publish read there reaches a destination the shard owns without
    /// waking another thread.
    pub async fn on_shard_threads(
        &self,
        mut start: impl FnMut(usize) -> Box<dyn FnOnce() + Send>,
    ) -> Result<(), EngineError> {
        let mut ran = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let f = start(i);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = ShardMsg::OnThread(Box::new(move || {
                f();
                let _ = tx.send(());
            }));
            s.tx.send_async(msg).await.map_err(|_| EngineError::Closed)?;
            ran.push(rx);
        }
        for rx in ran {
            rx.await.map_err(|_| EngineError::Closed)?;
        }
        Ok(())
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
        for t in [&self.follower, &self.retry_poller] {
            if let Some(h) = t.lock().take() {
                h.abort();
            }
        }
        // The queue consumers are asked to stop, not aborted: see below.
        let settling: Vec<_> = self.settling.lock().clone();
        for s in &settling {
            s.stop();
        }
        for h in self.background.lock().drain(..) {
            h.abort();
        }
        let deadline = std::time::Instant::now() + self.config.shutdown_drain_timeout;
        // No message is taken any more; those taken finish on the running
        // shards and are acked, so the broker does not hand a task that is
        // durable here to another node. Then the consumers go.
        for s in &settling {
            let left = s.count();
            if tokio::time::timeout_at(deadline.into(), s.idle()).await.is_err() {
                tracing::warn!(
                    left = s.count(),
                    "consumed messages still unsettled at the drain deadline; the broker redelivers them"
                );
            } else if left > 0 {
                tracing::info!(settled = left, "consumed messages settled before stopping");
            }
        }
        // A consumer returns once it has closed its channel cleanly (the
        // acks above reach the broker first); past the deadline it is cut.
        for t in [&self.consumer, &self.publish_consumer] {
            let h = t.lock().take();
            if let Some(mut h) = h {
                if tokio::time::timeout_at(deadline.into(), &mut h).await.is_err() {
                    h.abort();
                }
            }
        }
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
            // Its position is stored with its rows: if it is stuck (a slow
            // disk), the next start resumes where its last commit ended.
            let join = tokio::task::spawn_blocking(move || h.join());
            if tokio::time::timeout(std::time::Duration::from_secs(5), join)
                .await
                .is_err()
            {
                tracing::warn!("the index follower did not stop within 5 s; exiting without it");
            }
        }
        total
    }

    /// How many shards run with a working journal (for `/healthz`).
    pub fn shards_running(&self) -> usize {
        use std::sync::atomic::Ordering::Acquire;
        self.shards
            .iter()
            .filter(|s| s.stats.running.load(Acquire) && !s.progress.failed.load(Acquire))
            .count()
    }

    /// Whether the index follower (journals → event/attempt index) runs: if
    /// it died, queries go stale and no journal segment is collected.
    pub fn index_running(&self) -> bool {
        self.index.lock().as_ref().is_some_and(|h| !h.is_finished())
    }

    /// `None` without a log pipeline (no `POSTGRES_URL`), else whether its
    /// task is still running.
    pub fn log_pipeline_running(&self) -> Option<bool> {
        self.pipeline.lock().as_ref().map(|h| !h.is_finished())
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
}

/// What the alert tracker may do to this node.
struct EngineAlerts {
    engine: std::sync::Weak<Engine>,
    opevents: Option<Arc<OperatorEvents>>,
    counts: Arc<AlertCounts>,
}

/// Alerts this node raised for the operator-event sink (only topics a sink
/// takes are raised), by kind, and destinations it disabled (`GET /metrics`).
#[derive(Debug, Default)]
pub struct AlertCounts {
    pub consecutive_failure: std::sync::atomic::AtomicU64,
    pub exhausted_retries: std::sync::atomic::AtomicU64,
    pub auto_disabled: std::sync::atomic::AtomicU64,
}

impl AlertActions for EngineAlerts {
    fn disable(&self, destination: Arc<Destination>) -> futures_util::future::BoxFuture<'_, Option<Arc<Destination>>> {
        Box::pin(async move {
            let engine = self.engine.upgrade()?;
            let disabled = engine.auto_disable(&destination.tenant_id, &destination.id).await;
            if disabled.is_some() {
                self.counts
                    .auto_disabled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            disabled
        })
    }

    fn alert(
        &self,
        topic: &'static str,
        tenant_id: String,
        data: serde_json::Value,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let counter = match topic {
                crate::alerts::TOPIC_CONSECUTIVE_FAILURE => Some(&self.counts.consecutive_failure),
                crate::alerts::TOPIC_EXHAUSTED => Some(&self.counts.exhausted_retries),
                _ => None,
            };
            if let Some(c) = counter {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(o) = &self.opevents {
                o.alert(topic, tenant_id, data).await;
            }
        })
    }

    fn wants(&self, topic: &str) -> bool {
        self.opevents.as_ref().is_some_and(|o| o.wants(topic))
    }
}

#[cfg(test)]
mod tests;
