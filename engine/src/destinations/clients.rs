//! Per-shard client pools. A shard keeps one client per (type, endpoint,
//! credentials), shared by every destination on the shard that uses the same
//! ones: a thousand destinations pointing at one broker cost one connection
//! per shard, not a thousand. Clients are made on first use, dropped when
//! they fail (the next attempt reconnects), and swept when idle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::aws::AwsKey;
use super::batch::Batcher;
use crate::http_client::HttpClient;

/// Clients unused this long are closed by the next sweep.
const IDLE: Duration = Duration::from_secs(300);
/// Sweeps run at most this often, on a pool's use.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Everything a shard's publishers share.
pub struct ShardClients {
    pub http: HttpClient,
    /// Webhook deliveries' client: [`Self::http`], or one that tunnels
    /// through `DESTINATIONS_WEBHOOK_PROXY_URL` (webhooks only, as Outpost).
    pub webhook: HttpClient,
    /// The SSRF guard: user-supplied endpoints must resolve to public addresses.
    pub guard: crate::ssrf::Guard,
    pub amqp: Pool<super::rabbitmq::Key, super::rabbitmq::Link>,
    pub redis: Pool<super::redis_stream::Key, redis::aio::MultiplexedConnection>,
    pub nats: Pool<super::nats::Key, async_nats::Client>,
    pub mqtt: Pool<super::mqtt::Key, super::mqtt::Link>,
    pub sqs: Pool<AwsKey, aws_sdk_sqs::Client>,
    pub kinesis: Pool<AwsKey, aws_sdk_kinesis::Client>,
    pub s3: Pool<AwsKey, aws_sdk_s3::Client>,
    pub eventbridge: Pool<AwsKey, aws_sdk_eventbridge::Client>,
    pub pubsub: Pool<super::gcp_pubsub::Key, super::gcp_pubsub::Client>,
    pub kafka: Pool<super::kafka::Key, super::kafka::Link>,
    pub servicebus: Pool<super::azure_servicebus::Key, super::azure_servicebus::Link>,
    /// Batch lanes, keyed by (client, target) as each publisher holds it, so
    /// finding a lane copies nothing.
    pub sqs_batches: Batcher<Arc<(AwsKey, String)>, super::aws_sqs::Item>,
    pub kinesis_batches: Batcher<Arc<(AwsKey, String)>, super::aws_kinesis::Item>,
    pub eventbridge_batches: Batcher<AwsKey, super::aws_eventbridge::Item>,
    pub pubsub_batches: Batcher<Arc<(super::gcp_pubsub::Key, String)>, super::gcp_pubsub::Item>,
    pub kafka_batches: Batcher<(Arc<(super::kafka::Key, String)>, i32), super::kafka::Item>,
}

impl ShardClients {
    pub fn new(http: HttpClient, webhook: HttpClient, guard: crate::ssrf::Guard) -> Self {
        Self {
            http,
            webhook,
            guard,
            amqp: Pool::default(),
            redis: Pool::default(),
            nats: Pool::default(),
            mqtt: Pool::default(),
            sqs: Pool::default(),
            kinesis: Pool::default(),
            s3: Pool::default(),
            eventbridge: Pool::default(),
            pubsub: Pool::default(),
            kafka: Pool::default(),
            servicebus: Pool::default(),
            sqs_batches: Batcher::default(),
            kinesis_batches: Batcher::default(),
            eventbridge_batches: Batcher::default(),
            pubsub_batches: Batcher::default(),
            kafka_batches: Batcher::default(),
        }
    }
}

struct Slot<V> {
    client: tokio::sync::Mutex<Option<Rc<V>>>,
    used: Cell<Instant>,
}

/// Clients of one type on one shard, keyed by what makes them differ.
pub struct Pool<K, V> {
    slots: RefCell<HashMap<K, Rc<Slot<V>>>>,
    swept: Cell<Instant>,
}

impl<K, V> Default for Pool<K, V> {
    fn default() -> Self {
        Self {
            slots: RefCell::new(HashMap::new()),
            swept: Cell::new(Instant::now()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Pool<K, V> {
    /// The client for `key`, connecting with `connect` when there is none.
    /// Concurrent first uses wait for one connection instead of racing.
    pub async fn get<E, F, Fut>(&self, key: &K, connect: F) -> Result<Rc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.sweep();
        let slot = self
            .slots
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(Slot {
                    client: tokio::sync::Mutex::new(None),
                    used: Cell::new(Instant::now()),
                })
            })
            .clone();
        slot.used.set(Instant::now());
        let mut held = slot.client.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let c = Rc::new(connect().await?);
        *held = Some(c.clone());
        Ok(c)
    }

    /// Forgets `client` (it failed); the next `get` connects again.
    pub fn discard(&self, key: &K, client: &Rc<V>) {
        let slot = self.slots.borrow().get(key).cloned();
        if let Some(slot) = slot {
            if let Ok(mut held) = slot.client.try_lock() {
                if held.as_ref().is_some_and(|c| Rc::ptr_eq(c, client)) {
                    *held = None;
                }
            }
        }
    }

    /// Clients (connected or not) this pool holds.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self) {
        let now = Instant::now();
        if now.duration_since(self.swept.get()) < SWEEP_EVERY {
            return;
        }
        self.swept.set(now);
        self.slots
            .borrow_mut()
            .retain(|_, s| Rc::strong_count(s) > 1 || now.duration_since(s.used.get()) < IDLE);
    }
}

/// The address to connect to for a user-supplied `host:port`: resolved once
/// and checked by the SSRF guard, so the connection goes where the check
/// looked. Types whose client library resolves names itself (TLS with
/// certificate names, the cloud SDKs) still get the check; the gap left is a
/// DNS answer that changes between the check and the library's own lookup.
pub async fn checked_addr(
    host: &str,
    port: u16,
    guard: &crate::ssrf::Guard,
) -> Result<std::net::SocketAddr, crate::ssrf::ResolveError> {
    let addrs = crate::ssrf::resolve(host, port, guard).await?;
    // `resolve` never returns an empty list.
    Ok(addrs[0])
}

/// [`checked_addr`] for a publisher: a refusal or a failed lookup is the
/// attempt's outcome (`forbidden` is permanent, `dns_error` is retried).
pub async fn checked_target(
    host: &str,
    port: u16,
    guard: &crate::ssrf::Guard,
) -> Result<std::net::SocketAddr, super::PublishResult> {
    checked_addr(host, port, guard).await.map_err(|e| {
        let code = match e {
            crate::ssrf::ResolveError::Dns { .. } => "dns_error",
            crate::ssrf::ResolveError::Forbidden { .. } => "forbidden",
        };
        super::PublishResult::error(code, e.to_string())
    })
}

/// A transport failure's code from a client library's description of it
/// (the libraries give no structured kind).
pub fn network_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("refused") {
        "connection_refused"
    } else if t.contains("reset") || t.contains("broken pipe") || t.contains("connection closed") {
        "connection_reset"
    } else if t.contains("certificate") || t.contains("tls") {
        // Before DNS: a certificate error names the certificate's `DnsName`.
        "tls_error"
    } else if t.contains("dns") || t.contains("lookup") || t.contains("resolve") {
        "dns_error"
    } else if t.contains("timed out") || t.contains("timeout") {
        "timeout"
    } else {
        "network_error"
    }
}

/// Splits `host[:port]` (IPv6 in brackets) with a default port.
pub fn host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_string(), default_port)),
    }
}

/// Host and port of an `http(s)://` URL, for the SSRF check of SDK endpoints.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = if let Some(r) = url.strip_prefix("https://") {
        (443, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (80, r)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    host_port(authority, default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(host_port("mq.example:5671", 5672), Some(("mq.example".into(), 5671)));
        assert_eq!(host_port("mq.example", 5672), Some(("mq.example".into(), 5672)));
        assert_eq!(host_port("[::1]:9", 5672), Some(("::1".into(), 9)));
        assert_eq!(host_port("a b", 1), None);
        assert_eq!(host_port("h:x", 1), None);
        assert_eq!(
            url_host_port("http://u:p@localhost:5000/q?x"),
            Some(("localhost".into(), 5000))
        );
        assert_eq!(url_host_port("https://sqs.eu-west-1.amazonaws.com/1/q").unwrap().1, 443);
        assert_eq!(url_host_port("ftp://x"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pool_shares_and_reconnects() {
        let pool: Pool<&str, u32> = Pool::default();
        let made = Cell::new(0);
        let connect = || async {
            made.set(made.get() + 1);
            Ok::<_, ()>(made.get())
        };
        let a = pool.get(&"k", connect).await.unwrap();
        let b = pool.get(&"k", connect).await.unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(made.get(), 1);
        pool.discard(&"k", &a);
        let c = pool.get(&"k", connect).await.unwrap();
        assert_eq!(*c, 2);
        assert_eq!(pool.len(), 1);
        // A failed connect leaves nothing behind to reuse.
        let e: Result<Rc<u32>, &str> = pool.get(&"other", || async { Err("down") }).await;
        assert!(e.is_err());
        assert_eq!(*pool.get(&"other", connect).await.unwrap(), 3);
    }
}
