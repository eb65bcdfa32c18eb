//! The Redis entity store (`REDIS_HOST`, ...): tenants and destinations shared
//! by every node, with a change channel so each node's in-memory routing
//! table and shards follow writes made on other nodes.
//!
//! Layout: every key starts with the hash tag `{<DEPLOYMENT_ID>:outrider}`
//! (`{outrider}` without a deployment id), so on a Redis Cluster all of a
//! deployment's keys share one slot and the multi-key scripts and
//! transactions stay valid (the cluster then gives failover, not sharding).
//! `…:tenants` hash id → JSON, `…:destinations` hash id → JSON (credentials
//! AES-GCM sealed, base64), `…:tenant:<id>:destinations` set of ids, and the
//! pub/sub channel `…:changes`.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::AsyncCommands;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::*;
use crate::coalesce::Coalescer;
use crate::crypto::Cipher;
use crate::model::StringMap;

/// How to reach Redis, from Outpost's `REDIS_*` settings.
#[derive(Clone)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: i64,
    /// `REDIS_TLS_ENABLED`: `None` = plain TCP.
    pub tls: Option<RedisTls>,
    /// `REDIS_CLUSTER_ENABLED`: `host:port` is a seed node of a Redis Cluster.
    pub cluster: bool,
}

/// TLS to Redis. Unlike Outpost (which never verifies), the server's
/// certificate is verified against the system roots, or against
/// `ca_file` when set; `insecure` turns verification off, as Outpost does.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub insecure: bool,
}

// The password stays out of logs and panics.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl RedisConfig {
    /// Plain TCP to one server, database 0, no credentials.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            username: None,
            password: None,
            database: 0,
            tls: None,
            cluster: false,
        }
    }

    fn url(&self) -> String {
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, None) => String::new(),
        };
        let (scheme, fragment) = match &self.tls {
            None => ("redis", ""),
            Some(t) if t.insecure => ("rediss", "#insecure"),
            Some(_) => ("rediss", ""),
        };
        format!(
            "{scheme}://{auth}{}:{}/{}{fragment}",
            self.host, self.port, self.database
        )
    }

    /// A client for these settings (TLS with a custom CA when configured).
    fn client(&self) -> Result<::redis::Client, String> {
        let ca = match self.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            None => None,
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?)
            }
        };
        let built = match ca {
            None => ::redis::Client::open(self.url()),
            Some(root_cert) => ::redis::Client::build_with_tls(
                self.url(),
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        };
        built.map_err(|e| format!("invalid settings: {:?}", e.kind()))
    }
}

fn enc(s: &str) -> String {
    form_urlencoded_min(s)
}

/// Percent-encodes everything but unreserved characters (for userinfo).
fn form_urlencoded_min(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A change another node (or this one) made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Tenant {
        id: String,
        deleted: bool,
    },
    Destination {
        id: String,
        tenant_id: String,
        deleted: bool,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredDestination {
    id: String,
    tenant_id: String,
    #[serde(rename = "type")]
    kind: String,
    topics: Vec<String>,
    filter: Option<serde_json::Value>,
    config: StringMap,
    /// Sealed credentials, base64.
    credentials: String,
    delivery_metadata: Option<StringMap>,
    metadata: Option<StringMap>,
    created_at: i64,
    updated_at: i64,
    disabled_at: Option<i64>,
}

/// A connection to one Redis server (reconnecting) or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl ::redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisEntityStore {
    /// Subscriptions go to the configured node (on a cluster, PUBLISH reaches
    /// every node's subscribers, so when it is gone any live node will do).
    client: ::redis::Client,
    /// The settings, for a subscription client to another cluster node.
    settings: RedisConfig,
    conn: Conn,
    prefix: String,
    cipher: Cipher,
    /// The per-event commands of queue mode's hot path, batched.
    batches: Batches,
}

/// A publish's idempotency claim: the key, its lease and the claiming owner.
struct Claim {
    key: String,
    lease_ms: i64,
    owner: String,
}

/// Queue mode makes a few small commands per publish and per delivery
/// (claim, confirm, done check, done mark). Sent one by one, Redis spent more
/// on dispatching them than on the work; batched ([`crate::coalesce`]), the
/// calls made meanwhile go as one script or one pipeline.
struct Batches {
    claims: Coalescer<Claim, StoreResult<IdemClaim>>,
    sets: Coalescer<(String, &'static str, i64), StoreResult<()>>,
    exists: Coalescer<String, StoreResult<bool>>,
}

/// Most calls in one batch, and batches out at once per kind.
const BATCH_MAX: usize = 256;
const BATCHES_IN_FLIGHT: usize = 2;

/// Claims every key in order: `1` claimed, `2` another claim holds it
/// (busy), `0` published within the window (a duplicate). ARGV holds a
/// lease and an owner per key. (`'pending'` alone is an older build's claim
/// without an owner: it is taken over.)
static CLAIMS: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        r"
        local out = {}
        for i, key in ipairs(KEYS) do
            local v = redis.call('GET', key)
            local r = 1
            if v then
                if string.sub(v, 1, 8) == 'pending:' then r = 2
                elseif v ~= 'pending' then r = 0 end
            end
            if r == 1 then
                redis.call('SET', key, 'pending:' .. ARGV[2 * i], 'PX', ARGV[2 * i - 1])
            end
            out[i] = r
        end
        return out",
    )
});

impl Batches {
    fn spawn(conn: &Conn) -> Self {
        let c = conn.clone();
        let claims = Coalescer::spawn(BATCH_MAX, BATCHES_IN_FLIGHT, move |batch: Vec<Claim>| {
            let mut c = c.clone();
            async move {
                let mut inv = CLAIMS.prepare_invoke();
                for cl in &batch {
                    inv.key(&cl.key).arg(cl.lease_ms.max(1)).arg(&cl.owner);
                }
                let out: Result<Vec<i64>, _> = inv.invoke_async(&mut c).await;
                answer_each(batch.len(), out.map_err(rerr), |codes| {
                    codes
                        .into_iter()
                        .map(|code| match code {
                            1 => IdemClaim::Claimed,
                            2 => IdemClaim::Busy,
                            _ => IdemClaim::Duplicate,
                        })
                        .collect()
                })
            }
        });
        let c = conn.clone();
        let sets = Coalescer::spawn(
            BATCH_MAX,
            BATCHES_IN_FLIGHT,
            move |batch: Vec<(String, &'static str, i64)>| {
                let mut c = c.clone();
                async move {
                    let mut p = ::redis::pipe();
                    for (key, value, ttl_ms) in &batch {
                        p.cmd("SET")
                            .arg(key)
                            .arg(*value)
                            .arg("PX")
                            .arg((*ttl_ms).max(1))
                            .ignore();
                    }
                    let out: Result<(), _> = p.query_async(&mut c).await;
                    answer_each(batch.len(), out.map_err(rerr), |()| vec![(); batch.len()])
                }
            },
        );
        let c = conn.clone();
        let exists = Coalescer::spawn(BATCH_MAX, BATCHES_IN_FLIGHT, move |keys: Vec<String>| {
            let mut c = c.clone();
            async move {
                let mut p = ::redis::pipe();
                for key in &keys {
                    p.exists(key);
                }
                let out: Result<Vec<bool>, _> = p.query_async(&mut c).await;
                answer_each(keys.len(), out.map_err(rerr), |found| found)
            }
        });
        Self { claims, sets, exists }
    }
}

/// One answer per call of a batch: the batch's values, or its error for
/// every call (a reply of the wrong length is an error too).
fn answer_each<R, T>(n: usize, out: StoreResult<R>, values: impl FnOnce(R) -> Vec<T>) -> Vec<StoreResult<T>> {
    match out.map(values) {
        Ok(v) if v.len() == n => v.into_iter().map(Ok).collect(),
        Ok(v) => {
            let e = StoreError::Database(format!("Redis answered {} of a batch of {n}", v.len()));
            (0..n).map(|_| Err(e.clone())).collect()
        }
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

fn stopped(_: crate::coalesce::Stopped) -> StoreError {
    StoreError::Closed
}

impl std::fmt::Debug for RedisEntityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEntityStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The addresses of the nodes `CLUSTER NODES` lists as reachable: a line is
/// `<id> <ip:port@cport[,hostname]> <flags> ...`; the announced hostname is
/// preferred (TLS checks the certificate against it).
fn live_nodes(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, addr, flags) = (f.next()?, f.next()?, f.next()?);
            if flags
                .split(',')
                .any(|x| matches!(x, "fail" | "fail?" | "noaddr" | "handshake"))
            {
                return None;
            }
            let (ip_port, rest) = addr.split_once('@')?;
            let hostname = rest.split_once(',').map(|(_, h)| h).filter(|h| !h.is_empty());
            let (ip, port) = ip_port.rsplit_once(':')?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            let host = hostname.unwrap_or(ip);
            (!host.is_empty()).then(|| (host.to_string(), port))
        })
        .collect()
}

/// How often the cluster client retries one call (a redirect, a lost
/// connection, a slot without a master) before the call fails.
const CLUSTER_RETRIES: u32 = 8;

/// Whether an aborted MULTI/EXEC was aborted because its slot moved (a
/// queued command answered MOVED or ASK).
fn redirected_in_transaction(e: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    e.kind() == ErrorKind::Server(ServerErrorKind::ExecAbort)
        && e.clone().into_server_errors().is_some_and(|errs| {
            errs.iter()
                .any(|(_, se)| matches!(se.kind(), Some(ServerErrorKind::Moved | ServerErrorKind::Ask)))
        })
}

fn rerr(e: ::redis::RedisError) -> StoreError {
    use ::redis::{ErrorKind, ServerErrorKind};
    // Connection trouble and a cluster moving slots pass: the caller (an API
    // client) may retry; anything else is an error of the call itself. Right
    // after a failover the client may have no connection for a slot yet, a
    // promoted replica may still be loading or read-only, and a MULTI whose
    // commands met any of that is discarded as a whole (EXECABORT).
    let failover = matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::ExecAbort
            )
    );
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_cluster_error()
        || failover
    {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Database(format!("redis: {e}"))
    }
}

impl RedisEntityStore {
    /// Connects, retrying for up to `patience`; the error never includes the password.
    pub async fn connect(
        cfg: &RedisConfig,
        deployment_id: &str,
        cipher: Cipher,
        patience: Duration,
    ) -> StoreResult<Self> {
        let client = cfg
            .client()
            .map_err(|message| StoreError::Unreachable { what: "Redis", message })?;
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let cluster = if cfg.cluster {
            // The client's own retries (its default: 16, waits growing from
            // 1.28 s to minutes) kept a call to a slot whose master had died
            // waiting for over 30 s, long after the cluster had failed over;
            // a call now gives up within about 5 s (503 to an API client),
            // and the next one starts afresh on the refreshed slot map.
            Some(
                ::redis::cluster::ClusterClient::builder(vec![cfg.url()])
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(100)
                    .max_retry_wait(2_000)
                    .build()
                    .map_err(|e| StoreError::Unreachable {
                        what: "Redis",
                        message: format!("invalid cluster settings: {:?}", e.kind()),
                    })?,
            )
        } else {
            None
        };
        let conn = loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                match &cluster {
                    Some(cc) => cc.get_async_connection().await.map(Conn::Cluster),
                    None => ConnectionManager::new(client.clone()).await.map(Conn::Single),
                }
            })
            .await;
            match attempt {
                Ok(Ok(c)) => break c,
                other => {
                    if tokio::time::Instant::now() >= deadline {
                        let message = match other {
                            Ok(Err(e)) => format!("{}:{}: {e}", cfg.host, cfg.port),
                            _ => format!("{}:{}: timed out", cfg.host, cfg.port),
                        };
                        return Err(StoreError::Unreachable { what: "Redis", message });
                    }
                }
            }
            backoff.wait().await;
        };
        let prefix = if deployment_id.is_empty() {
            String::new()
        } else {
            format!("{deployment_id}:")
        };
        Ok(Self {
            client,
            settings: cfg.clone(),
            batches: Batches::spawn(&conn),
            conn,
            prefix,
            cipher,
        })
    }

    /// The batched commands' counts, by kind (`GET /metrics`).
    pub fn batch_stats(&self) -> Vec<(&'static str, Arc<crate::coalesce::BatchStats>)> {
        vec![
            ("redis_publish_claim", self.batches.claims.stats()),
            ("redis_set", self.batches.sets.stats()),
            ("redis_task_done_check", self.batches.exists.stats()),
        ]
    }

    fn key(&self, name: &str) -> String {
        format!("{{{}outrider}}:{name}", self.prefix)
    }

    /// Runs a MULTI/EXEC pipeline of this deployment's keys (one slot).
    ///
    /// After a cluster failover the commands queued in a MULTI answer MOVED
    /// and EXEC aborts; the cluster client takes that for a failed
    /// transaction, not a redirect, so its slot map stayed stale and every
    /// later transaction failed the same way (a node answered 503 to
    /// every create for as long as it ran). A plain read of a key in the
    /// slot gets the MOVED the client acts on (it rebuilds its slot map);
    /// then the transaction, which an abort applied none of, goes once more.
    async fn transaction(&self, pipe: &::redis::Pipeline) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let first: Result<(), _> = pipe.query_async(&mut c).await;
        match first {
            Err(e) if self.settings.cluster && redirected_in_transaction(&e) => {
                tracing::info!("a transaction met a moved slot; refreshing the cluster's slot map and retrying");
                let _: Result<bool, _> = c.exists(self.key("tenants")).await;
                let again: Result<(), _> = pipe.query_async(&mut c).await;
                again.map_err(rerr)
            }
            other => other.map_err(rerr),
        }
    }

    pub fn changes_channel(&self) -> String {
        self.key("changes")
    }

    async fn announce(&self, change: &Change) -> StoreResult<()> {
        let payload = serde_json::to_string(change).map_err(|e| StoreError::Database(e.to_string()))?;
        let mut c = self.conn.clone();
        let _: i64 = c.publish(self.changes_channel(), payload).await.map_err(rerr)?;
        Ok(())
    }

    fn decode_destination(&self, json: &str) -> StoreResult<Destination> {
        self.open_destination(json).map(|(d, _)| d)
    }

    /// A stored destination, and whether it was sealed the old way.
    fn open_destination(&self, json: &str) -> StoreResult<(Destination, bool)> {
        let s: StoredDestination = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sealed = B64
            .decode(&s.credentials)
            .map_err(|e| StoreError::Corrupt(format!("destination {}: {e}", s.id)))?;
        let opened = self
            .cipher
            .open_destination(&s.id, &sealed)
            .map_err(|e| StoreError::Corrupt(format!("destination {}: {e}", s.id)))?;
        let mut config = s.config;
        config.extend(opened.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        let d = Destination {
            id: s.id,
            tenant_id: s.tenant_id,
            kind: s.kind,
            topics: s.topics,
            filter: s.filter,
            config,
            credentials: opened.credentials,
            delivery_metadata: s.delivery_metadata,
            metadata: s.metadata,
            created_at: s.created_at,
            updated_at: s.updated_at,
            disabled_at: s.disabled_at,
        };
        Ok((d, opened.legacy))
    }

    /// A destination as stored: its secrets sealed under its id.
    fn stored_json(&self, d: &Destination) -> StoreResult<String> {
        let sealed = self
            .cipher
            .seal_destination(&d.id, &d.credentials, &d.config)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let stored = StoredDestination {
            id: d.id.clone(),
            tenant_id: d.tenant_id.clone(),
            kind: d.kind.clone(),
            topics: d.topics.clone(),
            filter: d.filter.clone(),
            config: crate::crypto::without_sealed_keys(&d.config),
            credentials: B64.encode(sealed),
            delivery_metadata: d.delivery_metadata.clone(),
            metadata: d.metadata.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
            disabled_at: d.disabled_at,
        };
        serde_json::to_string(&stored).map_err(|e| StoreError::Database(e.to_string()))
    }

    /// Seals `d` again in the current format if its stored JSON is still
    /// `was` (another node's write since the read wins). 1 when rewritten.
    async fn reseal(&self, d: &Destination, was: &str) -> StoreResult<usize> {
        const SWAP: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 end return 0";
        let json = self.stored_json(d)?;
        let mut c = self.conn.clone();
        let n: usize = ::redis::Script::new(SWAP)
            .key(self.key("destinations"))
            .arg(&d.id)
            .arg(was)
            .arg(json)
            .invoke_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(n)
    }

    pub async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c.hget(self.key("tenants"), id).await.map_err(rerr)?;
        v.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    pub async fn get_destination(&self, id: &str) -> StoreResult<Option<Destination>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c.hget(self.key("destinations"), id).await.map_err(rerr)?;
        v.map(|j| self.decode_destination(&j)).transpose()
    }

    /// Claims a publish's event id across API nodes for the caller `owner`.
    ///
    /// Two phases, so a crash between the claim and the broker publish
    /// cannot turn the client's retry into a dropped "duplicate": the claim
    /// is `pending:<owner>` for at most `lease_ms` (the publish's own time)
    /// until [`Self::confirm_idempotency`] marks it `done` for the whole
    /// window. A publish of the same id meanwhile is told [`IdemClaim::Busy`]
    /// (it waits, so two concurrent publishes cannot both be accepted); a
    /// lease left by a node that died expires and the next publish takes over.
    pub async fn claim_idempotency(&self, event_id: &str, owner: &str, lease_ms: i64) -> StoreResult<IdemClaim> {
        let claim = Claim {
            key: self.idempotency_key(event_id),
            lease_ms,
            owner: owner.to_string(),
        };
        self.batches.claims.call(claim).await.map_err(stopped)?
    }

    /// The event's tasks are on the queue: later publishes of the id are duplicates.
    pub async fn confirm_idempotency(&self, event_id: &str, ttl_ms: i64) -> StoreResult<()> {
        self.set_for(self.idempotency_key(event_id), IDEMPOTENCY_DONE, ttl_ms)
            .await
    }

    /// `SET key value PX ttl_ms` (at least 1 ms), batched with other such sets.
    async fn set_for(&self, key: String, value: &'static str, ttl_ms: i64) -> StoreResult<()> {
        self.batches.sets.call((key, value, ttl_ms)).await.map_err(stopped)?
    }

    pub fn idempotency_key(&self, event_id: &str) -> String {
        self.key(&format!("idempotency:publish:{event_id}"))
    }

    /// Releases `owner`'s claim after its publish failed, so a retried
    /// publish goes through; a claim another publish holds now is left alone.
    pub async fn release_idempotency(&self, event_id: &str, owner: &str) -> StoreResult<()> {
        const RELEASE: &str = r"
            if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] then
                return redis.call('DEL', KEYS[1])
            end
            return 0";
        let mut c = self.conn.clone();
        let _: i64 = ::redis::Script::new(RELEASE)
            .key(self.idempotency_key(event_id))
            .arg(owner)
            .invoke_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(())
    }
}

impl RedisEntityStore {
    /// Whether a delivery task (event, destination, attempt number, manual)
    /// already had its outcome committed on some node: the broker hands a
    /// task out again when the ack was lost (the node died between commit
    /// and ack), and that copy must be acked, not attempted again.
    pub async fn task_done(&self, key: &str) -> StoreResult<bool> {
        self.batches.exists.call(key.to_string()).await.map_err(stopped)?
    }

    /// Marks the task's outcome committed for `ttl_ms` (set before the ack).
    pub async fn mark_task_done(&self, key: String, ttl_ms: i64) -> StoreResult<()> {
        self.set_for(key, TASK_DONE, ttl_ms).await
    }

    /// Writes marks a node kept while Redis did not answer (task done
    /// marks, confirmed publish idempotency keys): `(key, value, ttl ms)`.
    pub async fn set_marks(&self, marks: &[(&str, &str, i64)]) -> StoreResult<()> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let mut p = ::redis::pipe();
        for (key, value, ttl_ms) in marks {
            p.cmd("SET")
                .arg(*key)
                .arg(*value)
                .arg("PX")
                .arg((*ttl_ms).max(1))
                .ignore();
        }
        let _: () = p.query_async(&mut c).await.map_err(rerr)?;
        Ok(())
    }

    /// What the done marks of these tasks hold, one per key (`None`: not
    /// done): `1` from a node that committed the task's outcome, or the
    /// failed attempt's settle record from a retry hand-over
    /// ([`Self::schedule_retry`]).
    pub async fn task_outcomes(&self, keys: &[String]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let mut c = self.conn.clone();
        let mut p = ::redis::pipe();
        for key in keys {
            p.get(key);
        }
        p.query_async(&mut c).await.map_err(rerr)
    }

    /// The Redis key of a task's done mark (see [`Self::task_done`]).
    pub fn task_key(&self, t: &crate::queue::Task) -> String {
        self.task_key_of(&t.event.id, &t.destination_id, t.attempt, t.manual)
    }

    /// [`Self::task_key`] from the task's parts.
    pub fn task_key_of(&self, event_id: &str, destination_id: &str, attempt: u32, manual: bool) -> String {
        let kind = if manual { "manual" } else { "auto" };
        self.key(&format!(
            "idempotency:delivery:{event_id}:{destination_id}:{attempt}:{kind}"
        ))
    }
}

/// A confirmed publish idempotency key's value ([`RedisEntityStore::confirm_idempotency`]).
pub const IDEMPOTENCY_DONE: &str = "done";
/// A task done mark's value when it holds no settle record.
pub const TASK_DONE: &str = "1";

/// The failed attempt a retry hand-over follows (see
/// [`RedisEntityStore::schedule_retry`]).
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter<'a> {
    pub failed: &'a crate::queue::Task,
    /// How long its done mark lives (`DELIVERY_IDEMPOTENCY_KEY_TTL`).
    pub ttl_ms: i64,
    /// The attempt's outcome as a framed journal settle record.
    pub outcome: &'a [u8],
}

/// What a publish's idempotency claim in Redis found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdemClaim {
    Claimed,
    /// The id was published within the window.
    Duplicate,
    /// Another publish of the id holds its lease right now.
    Busy,
}

impl RedisEntityStore {
    /// Schedules a retry shared by every delivery node: the due time in a
    /// sorted set, the task in a hash, written together. Scheduling the same
    /// (event, destination) again replaces both.
    ///
    /// `after`: the failed attempt this retry follows. Its done mark
    /// ([`Self::task_done`]) is written in the same transaction, holding
    /// `after.outcome` (the attempt's journal settle record) for
    /// [`Self::task_outcomes`]. Once the retry can run anywhere, a copy of
    /// the earlier task (its broker message handed out again because the
    /// node died before its ack, or the node's own journal replaying it
    /// because it died before that attempt's outcome was committed) must
    /// not be attempted, or it would run after the retry, under the older
    /// attempt number.
    pub async fn schedule_retry(
        &self,
        task: &crate::queue::Task,
        due_ms: i64,
        after: Option<RetryAfter<'_>>,
    ) -> StoreResult<()> {
        let member = format!("{}:{}", task.event.id, task.destination_id);
        let mark = after.map(|a| (self.task_key(a.failed), a.ttl_ms, a.outcome));
        self.schedule(member, task, due_ms, mark).await
    }

    /// Puts a task a node deferred (its destination was backed up there)
    /// on the same schedule, under its own member: it neither replaces nor
    /// is replaced by a retry of the same event and destination (a manual
    /// retry deferred while an automatic one is scheduled, say), and a copy
    /// of the same task deferred twice is kept once.
    pub async fn schedule_deferred(&self, task: &crate::queue::Task, due_ms: i64) -> StoreResult<()> {
        let kind = if task.manual { "manual" } else { "auto" };
        let member = format!(
            "deferred:{}:{}:{}:{kind}",
            task.event.id, task.destination_id, task.attempt
        );
        self.schedule(member, task, due_ms, None).await
    }

    async fn schedule(
        &self,
        member: String,
        task: &crate::queue::Task,
        due_ms: i64,
        mark: Option<(String, i64, &[u8])>,
    ) -> StoreResult<()> {
        let body = String::from_utf8_lossy(&crate::queue::encode(task)).into_owned();
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .zadd(self.key("retry:due"), &member, due_ms)
            .ignore()
            .hset(self.key("retry:tasks"), &member, body)
            .ignore();
        if let Some((key, ttl_ms, value)) = mark {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .ignore();
        }
        self.transaction(&pipe).await
    }

    /// Leases up to `limit` due retries until `now + lease_ms`: they stay in
    /// the schedule (so a poller that dies loses nothing) but other pollers
    /// skip them until the lease ends. Returns `(member, lease score, task JSON)`.
    pub async fn lease_due_retries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<(String, i64, String)>> {
        const LEASE: &str = r#"
            local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
            local out = {}
            for _, m in ipairs(due) do
                redis.call('ZADD', KEYS[1], ARGV[2], m)
                local body = redis.call('HGET', KEYS[2], m)
                table.insert(out, m)
                table.insert(out, body or '')
            end
            return out
        "#;
        let lease_until = now_ms + lease_ms;
        let mut c = self.conn.clone();
        let flat: Vec<String> = ::redis::Script::new(LEASE)
            .key(self.key("retry:due"))
            .key(self.key("retry:tasks"))
            .arg(now_ms)
            .arg(lease_until)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(flat
            .chunks(2)
            .filter_map(|p| match p {
                [m, body] => Some((m.clone(), lease_until, body.clone())),
                _ => None,
            })
            .collect())
    }

    /// Removes a retry once it is on the delivery queue, unless it was
    /// rescheduled meanwhile (its score is no longer our lease).
    pub async fn finish_retry(&self, member: &str, lease_score: i64) -> StoreResult<()> {
        const FINISH: &str = r#"
            local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
            if score and tonumber(score) == tonumber(ARGV[2]) then
                redis.call('ZREM', KEYS[1], ARGV[1])
                redis.call('HDEL', KEYS[2], ARGV[1])
                return 1
            end
            return 0
        "#;
        let mut c = self.conn.clone();
        let _: i64 = ::redis::Script::new(FINISH)
            .key(self.key("retry:due"))
            .key(self.key("retry:tasks"))
            .arg(member)
            .arg(lease_score)
            .invoke_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(())
    }

    /// Whether the server answers (`/healthz`).
    pub async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: String = ::redis::cmd("PING").query_async(&mut c).await.map_err(rerr)?;
        Ok(())
    }

    /// A stream of changes. Messages published while it is not connected are
    /// lost, so callers resynchronise after (re)subscribing.
    pub async fn subscribe(&self) -> StoreResult<::redis::aio::PubSub> {
        let first = match self.subscribe_via(&self.client).await {
            Ok(ps) => return Ok(ps),
            Err(e) => e,
        };
        if !self.settings.cluster {
            return Err(first);
        }
        // The configured node is gone (a replica took its slots over, say):
        // a PUBLISH reaches the subscribers of every node, so any live one
        // will do. Its address comes from the cluster itself.
        let nodes = match self.cluster_nodes().await {
            Ok(n) => n,
            Err(_) => return Err(first),
        };
        for (host, port) in nodes {
            if host == self.settings.host && port == self.settings.port {
                continue;
            }
            let cfg = RedisConfig {
                host,
                port,
                ..self.settings.clone()
            };
            let Ok(client) = cfg.client() else { continue };
            if let Ok(ps) = self.subscribe_via(&client).await {
                tracing::info!(node = %format!("{}:{}", cfg.host, cfg.port), "following entity changes through another cluster node");
                return Ok(ps);
            }
        }
        Err(first)
    }

    async fn subscribe_via(&self, client: &::redis::Client) -> StoreResult<::redis::aio::PubSub> {
        let connect = async {
            let mut ps = client.get_async_pubsub().await.map_err(rerr)?;
            ps.subscribe(self.changes_channel()).await.map_err(rerr)?;
            Ok(ps)
        };
        tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .unwrap_or_else(|_| Err(StoreError::Database("redis: no answer to SUBSCRIBE within 2 s".into())))
    }

    /// The cluster's live nodes, from `CLUSTER NODES` (asked through the
    /// cluster connection, which follows failovers).
    async fn cluster_nodes(&self) -> StoreResult<Vec<(String, u16)>> {
        let mut c = self.conn.clone();
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(live_nodes(&text))
    }
}

impl EntityStore for RedisEntityStore {
    fn load_entities(&self) -> BoxFuture<'_, StoreResult<(Vec<Tenant>, Vec<Destination>)>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let tenants: Vec<(String, String)> = c.hgetall(self.key("tenants")).await.map_err(rerr)?;
            let dests: Vec<(String, String)> = c.hgetall(self.key("destinations")).await.map_err(rerr)?;
            let tenants = tenants
                .iter()
                .map(|(_, j)| serde_json::from_str(j).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect::<StoreResult<Vec<Tenant>>>()?;
            let mut out = Vec::with_capacity(dests.len());
            let mut resealed = 0;
            for (_, j) in &dests {
                let (d, legacy) = self.open_destination(j)?;
                if legacy {
                    resealed += self.reseal(&d, j).await?;
                }
                out.push(d);
            }
            if resealed > 0 {
                tracing::info!(
                    resealed,
                    "destination secrets sealed again in the current format (HKDF-SHA256, bound to the destination id)"
                );
            }
            Ok((tenants, out))
        })
    }

    fn put_tenant(&self, tenant: Tenant) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let json = serde_json::to_string(&tenant).map_err(|e| StoreError::Database(e.to_string()))?;
            let mut c = self.conn.clone();
            let _: i64 = c.hset(self.key("tenants"), &tenant.id, json).await.map_err(rerr)?;
            self.announce(&Change::Tenant {
                id: tenant.id,
                deleted: false,
            })
            .await
        })
    }

    fn delete_tenant(&self, id: String) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let set = self.key(&format!("tenant:{id}:destinations"));
            let ids: Vec<String> = c.smembers(&set).await.map_err(rerr)?;
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            for d in &ids {
                pipe.hdel(self.key("destinations"), d).ignore();
            }
            pipe.del(&set).ignore().hdel(self.key("tenants"), &id).ignore();
            self.transaction(&pipe).await?;
            for d in ids {
                self.announce(&Change::Destination {
                    id: d,
                    tenant_id: id.clone(),
                    deleted: true,
                })
                .await?;
            }
            self.announce(&Change::Tenant { id, deleted: true }).await
        })
    }

    fn put_destination(&self, d: Destination) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let json = self.stored_json(&d)?;
            let mut pipe = ::redis::pipe();
            pipe.atomic()
                .hset(self.key("destinations"), &d.id, json)
                .ignore()
                .sadd(self.key(&format!("tenant:{}:destinations", d.tenant_id)), &d.id)
                .ignore();
            self.transaction(&pipe).await?;
            self.announce(&Change::Destination {
                id: d.id,
                tenant_id: d.tenant_id,
                deleted: false,
            })
            .await
        })
    }

    fn delete_destination(&self, tenant_id: String, id: String) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut pipe = ::redis::pipe();
            pipe.atomic()
                .hdel(self.key("destinations"), &id)
                .ignore()
                .srem(self.key(&format!("tenant:{tenant_id}:destinations")), &id)
                .ignore();
            self.transaction(&pipe).await?;
            self.announce(&Change::Destination {
                id,
                tenant_id,
                deleted: true,
            })
            .await
        })
    }
}

/// Counters and claim keys, shared by every node: the data the alert policy
/// (`crate::alerts`) keeps in Redis. Counters expire 24 h after their last
/// change; one that reaches zero is deleted.
impl RedisEntityStore {
    /// Applies `(name, reset, add)` to the counters `name` in order, in one
    /// round trip and atomically: reset to zero first when `reset`, then add.
    /// Returns `(before, after)` per change, `before` taken after the reset.
    pub async fn apply_counters(&self, changes: &[(&str, bool, u32)]) -> StoreResult<Vec<(u64, u64)>> {
        const APPLY: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local reset = ARGV[2 * i - 1] == '1'
  local add = tonumber(ARGV[2 * i])
  local before = 0
  if not reset then before = tonumber(redis.call('GET', key) or '0') end
  local after = before + add
  if after == 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, after, 'PX', 86400000)
  end
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
"#;
        if changes.is_empty() {
            return Ok(vec![]);
        }
        let script = ::redis::Script::new(APPLY);
        let mut inv = script.prepare_invoke();
        for (name, reset, add) in changes {
            inv.key(self.key(&format!("cf:{name}")));
            inv.arg(if *reset { "1" } else { "0" }).arg(*add);
        }
        let mut c = self.conn.clone();
        let flat: Vec<u64> = inv.invoke_async(&mut c).await.map_err(rerr)?;
        Ok(flat.chunks(2).map(|p| (p[0], p.get(1).copied().unwrap_or(0))).collect())
    }

    /// The value of counter `name` (0 when it has none).
    pub async fn counter(&self, name: &str) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c.get(self.key(&format!("cf:{name}"))).await.map_err(rerr)?;
        Ok(v.unwrap_or(0))
    }

    /// `true` when `key` was not claimed within the last `window` (and
    /// claims it); a zero window always answers `true`.
    pub async fn claim_once(&self, key: &str, window: Duration) -> StoreResult<bool> {
        if window.is_zero() {
            return Ok(true);
        }
        let mut c = self.conn.clone();
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.key(&format!("alert:claim:{key}")))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await
            .map_err(rerr)?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn cfg() -> RedisConfig {
        RedisConfig::plain(
            std::env::var("OUTRIDER_TEST_REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            6379,
        )
    }

    pub(crate) async fn store() -> RedisEntityStore {
        // A random deployment prefix keeps test runs apart.
        let dep = format!("t{}", crate::ids::random_hex(6));
        RedisEntityStore::connect(&cfg(), &dep, Cipher::new("k"), Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("Redis is required for this test: {e} (start it with scripts/services.sh up)"))
    }

    /// A dropped connection is `Unavailable` (the API answers 503, retry
    /// later); an error of the command itself is not.
    #[test]
    fn connection_trouble_is_unavailable_not_an_internal_error() {
        let io = ::redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(matches!(rerr(io), StoreError::Unavailable(m) if m.starts_with("redis: ")));
        let typed = ::redis::RedisError::from((::redis::ErrorKind::UnexpectedReturnType, "wrong type"));
        assert!(matches!(rerr(typed), StoreError::Database(_)));
        let no_slot_owner = ::redis::RedisError::from((::redis::ErrorKind::ClusterConnectionNotFound, "no connection"));
        assert!(matches!(rerr(no_slot_owner), StoreError::Unavailable(_)));
    }

    #[test]
    fn live_cluster_nodes_are_read_from_cluster_nodes() {
        let text = "07c3 127.0.0.1:30004@40004 slave e7d1 0 1 5 connected\n\
            67ed 127.0.0.1:30002@40002,redis-2.internal master - 0 1 2 connected 5461-10922\n\
            292f 127.0.0.1:30001@40001 myself,master,fail - 0 0 1 connected\n\
            e7d1 :0@0 master,noaddr - 0 0 3 disconnected\n";
        assert_eq!(
            live_nodes(text),
            vec![
                ("127.0.0.1".to_string(), 30004),
                ("redis-2.internal".to_string(), 30002)
            ]
        );
    }

    /// A destination sealed before the current format (Outpost's key
    /// derivation, credentials only, `custom_headers` in the clear) loads
    /// whole and is stored again sealed the current way; one changed by
    /// another node since it was read is left to that write.
    #[tokio::test]
    async fn destinations_sealed_the_old_way_are_read_and_sealed_again() {
        let s = store().await;
        let old = |id: &str, secret: &str| {
            let sealed = s.cipher.seal_legacy(format!("{{\"secret\":\"{secret}\"}}").as_bytes());
            serde_json::json!({"id": id, "tenant_id": "t1", "type": "webhook", "topics": ["*"], "filter": null,
                "config": {"url": "https://x.example/h", "custom_headers": "{\"X-Key\":\"k1\"}"},
                "credentials": B64.encode(sealed), "delivery_metadata": null, "metadata": null,
                "created_at": 1, "updated_at": 1, "disabled_at": null})
            .to_string()
        };
        let mut c = s.conn.clone();
        let _: () = c
            .hset(s.key("destinations"), "des_old", old("des_old", "whsec_old"))
            .await
            .unwrap();
        let (_, dests) = s.load_entities().await.unwrap();
        let d = dests.iter().find(|d| d.id == "des_old").unwrap();
        assert_eq!(d.credentials.get("secret").map(String::as_str), Some("whsec_old"));
        assert_eq!(
            d.config.get("custom_headers").map(String::as_str),
            Some("{\"X-Key\":\"k1\"}")
        );
        let raw: String = c.hget(s.key("destinations"), "des_old").await.unwrap();
        assert!(
            !raw.contains("X-Key"),
            "custom headers moved into the sealed part: {raw}"
        );
        let (again, legacy) = s.open_destination(&raw).unwrap();
        assert!(!legacy, "sealed in the current format");
        assert_eq!(&again, d);
        // A swap guarded by what was read: a newer write is not overwritten.
        let newer = old("des_old", "whsec_newer");
        let _: () = c.hset(s.key("destinations"), "des_old", &newer).await.unwrap();
        assert_eq!(s.reseal(d, "something else").await.unwrap(), 0);
        let raw: String = c.hget(s.key("destinations"), "des_old").await.unwrap();
        assert_eq!(raw, newer);
    }

    #[tokio::test]
    async fn entity_store_conformance() {
        let s = store().await;
        crate::store::conformance::run_entities(&s).await;
        let mut c = s.conn.clone();
        let raw: Vec<(String, String)> = c.hgetall(s.key("destinations")).await.unwrap();
        assert!(
            raw.iter().all(|(_, j)| !j.contains("whsec_") && !j.contains("Bearer")),
            "credentials and custom headers are sealed at rest"
        );
    }

    #[tokio::test]
    async fn changes_are_announced() {
        let s = store().await;
        let mut ps = s.subscribe().await.unwrap();
        s.put_tenant(Tenant {
            id: "t1".into(),
            metadata: None,
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ps.on_message().next())
            .await
            .unwrap()
            .unwrap();
        let ch: Change = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(
            ch,
            Change::Tenant {
                id: "t1".into(),
                deleted: false
            }
        );
    }

    #[tokio::test]
    async fn retry_schedule_leases_and_finishes() {
        let s = store().await;
        let t = crate::queue::sample_task(1, "{}");
        s.schedule_retry(&t, 1_000, None).await.unwrap();
        let mut later = crate::queue::sample_task(2, "{}");
        later.attempt = 2;
        s.schedule_retry(&later, 9_000, None).await.unwrap();
        let leased = s.lease_due_retries(5_000, 30_000, 10).await.unwrap();
        assert_eq!(leased.len(), 1, "only what is due");
        let (member, score, body) = leased[0].clone();
        assert_eq!(member, "e1:d");
        assert_eq!(crate::queue::decode(body.as_bytes()).unwrap().event.id, "e1");
        assert!(
            s.lease_due_retries(6_000, 30_000, 10).await.unwrap().is_empty(),
            "leased entries are skipped"
        );
        // A poller that died: the lease ends and another poller gets it.
        assert_eq!(s.lease_due_retries(40_000, 30_000, 10).await.unwrap().len(), 2);
        // A stale lease does not remove the entry.
        s.finish_retry(&member, score).await.unwrap();
        assert_eq!(s.lease_due_retries(200_000, 30_000, 10).await.unwrap().len(), 2);
        s.finish_retry(&member, 230_000).await.unwrap();
        let left = s.lease_due_retries(500_000, 30_000, 10).await.unwrap();
        assert_eq!(left.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(), vec!["e2:d"]);
    }

    #[tokio::test]
    async fn a_retry_is_scheduled_with_the_done_mark_of_the_attempt_before_it() {
        let s = store().await;
        let mut failed = crate::queue::sample_task(11, "{}");
        failed.attempt = 2;
        let mut retry = failed.clone();
        retry.attempt = 3;
        assert!(!s.task_done(&s.task_key(&failed)).await.unwrap());
        let after = RetryAfter {
            failed: &failed,
            ttl_ms: 60_000,
            outcome: b"\x00settle\xff",
        };
        s.schedule_retry(&retry, 1_000, Some(after)).await.unwrap();
        // A copy of attempt 2 handed out again is acked, not attempted; the
        // retry itself is not marked. The mark keeps the failed attempt's
        // outcome, byte for byte.
        assert!(s.task_done(&s.task_key(&failed)).await.unwrap());
        assert!(!s.task_done(&s.task_key(&retry)).await.unwrap());
        let outcomes = s
            .task_outcomes(&[s.task_key(&failed), s.task_key(&retry)])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Some(b"\x00settle\xff".to_vec()), None]);
        let leased = s.lease_due_retries(5_000, 30_000, 10).await.unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(crate::queue::decode(leased[0].2.as_bytes()).unwrap().attempt, 3);
    }

    #[tokio::test]
    async fn deferred_tasks_keep_their_own_schedule_entries() {
        let s = store().await;
        let retry = crate::queue::sample_task(7, "{}");
        s.schedule_retry(&retry, 1_000, None).await.unwrap();
        // A manual retry of the same event and destination, deferred, does
        // not replace the scheduled retry, and a copy deferred twice is one.
        let mut manual = crate::queue::sample_task(7, "{}");
        manual.attempt = 3;
        manual.manual = true;
        s.schedule_deferred(&manual, 2_000).await.unwrap();
        s.schedule_deferred(&manual, 2_500).await.unwrap();
        let mut leased = s.lease_due_retries(5_000, 30_000, 10).await.unwrap();
        leased.sort();
        let seen: Vec<(&str, u32, bool)> = leased
            .iter()
            .map(|(m, _, body)| {
                let t = crate::queue::decode(body.as_bytes()).unwrap();
                (m.as_str(), t.attempt, t.manual)
            })
            .collect();
        assert_eq!(seen, vec![("deferred:e7:d:3:manual", 3, true), ("e7:d", 1, false)]);
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_clear_error() {
        let mut c = cfg();
        c.port = 1;
        c.password = Some("hunter2".into());
        let e = RedisEntityStore::connect(&c, "", Cipher::new("k"), Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot reach Redis"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
