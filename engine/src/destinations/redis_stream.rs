//! The `redis_stream` destination type (ours; Outpost has none): each event
//! is appended to a Redis stream with `XADD`. The entry's `data` field holds
//! the event data; `event-id`, `topic`, `timestamp` and the rest of the
//! delivery metadata are fields of their own. `max_len` trims the stream
//! approximately (`MAXLEN ~`), so a stream nobody reads stays bounded.

use std::rc::Rc;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use serde_json::json;

use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text(
        "address",
        "Address",
        "The Redis server's host and port, e.g. redis.example.com:6379.",
    )
    .required()
    .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text("stream", "Stream", "The stream key each event is appended to.")
        .required()
        .pattern("^[^\\s]+$", fields::no_whitespace),
    Field::text("database", "Database", "The database number (0 by default).").number(0, 10_000),
    Field::text(
        "max_len",
        "Maximum length",
        "Trim the stream to about this many entries on every append; empty keeps every entry.",
    )
    .number(1, 1_000_000_000),
    Field::text("tls", "TLS", "Connect over TLS.").checkbox("off"),
];
const CREDENTIALS: &[Field] = &[
    Field::text("username", "Username", "The ACL user, if the server uses ACLs."),
    Field::text("password", "Password", "The password (AUTH), if the server needs one.").sensitive(),
];

const SCHEMA: Schema = Schema {
    kind: "redis_stream",
    label: "Redis Stream",
    description: "Append each event to a Redis stream (XADD), optionally capped in length.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\"><path d=\"M3 7h18M3 12h18M3 17h12\"/></svg>",
    instructions: "Give the server's address and the stream key. Each entry has a `data` field with the event's JSON and one field per metadata key (`event-id`, `topic`, `timestamp` and the event's own metadata). Read it with `XREAD` or a consumer group (`XREADGROUP`). Set `max_len` to cap the stream.",
    config: CONFIG,
    credentials: CREDENTIALS,
};

pub struct RedisStream;

/// Where a destination connects; equal keys share a connection on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    tls: bool,
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

impl DestinationType for RedisStream {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(a) = d
            .config
            .get("address")
            .filter(|a| !a.is_empty() && fields::no_whitespace(a))
        {
            if clients::host_port(a, 6379).is_none() || a.contains("://") {
                errs.push("config.address is invalid".into());
            }
        }
        fields::result(errs)
    }

    fn preprocess(
        &self,
        d: &mut Destination,
        _previous: Option<&Destination>,
        _raw: &RawInput,
        _actor: Actor,
        _now_ms: i64,
    ) -> Result<(), Violations> {
        fields::normalise_flag(&mut d.config, "tls")
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        (format!("{} on {}", get("stream"), get("address")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let address = d
            .config
            .get("address")
            .ok_or(PublisherError::Missing("config.address"))?;
        let (host, port) = clients::host_port(address, 6379).ok_or(PublisherError::Invalid("config.address"))?;
        let number = |k: &str, field: &'static str| -> Result<Option<i64>, PublisherError> {
            match d.config.get(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| PublisherError::Invalid(field)),
            }
        };
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Box::new(RedisStreamPublisher {
            key: Key {
                tls: fields::flag(&d.config, "tls"),
                host,
                port,
                db: number("database", "config.database")?.unwrap_or(0),
                username: cred("username"),
                password: cred("password"),
            },
            stream: d
                .config
                .get("stream")
                .cloned()
                .ok_or(PublisherError::Missing("config.stream"))?,
            max_len: number("max_len", "config.max_len")?,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            timeout: ctx.config.delivery_timeout_for("redis_stream"),
        }))
    }
}

pub struct RedisStreamPublisher {
    key: Key,
    stream: String,
    max_len: Option<i64>,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    timeout: std::time::Duration,
}

fn classify(e: &redis::RedisError) -> PublishResult {
    use redis::ErrorKind as K;
    let text = e.to_string();
    if e.is_timeout() {
        return PublishResult::failed("timeout", text);
    }
    if e.is_connection_refusal() {
        return PublishResult::failed("connection_refused", text);
    }
    if e.is_connection_dropped() || e.is_io_error() {
        return PublishResult::failed("connection_reset", text);
    }
    match e.kind() {
        K::AuthenticationFailed => PublishResult::permanent("auth_failed", text),
        // WRONGTYPE: the key exists and is not a stream; NOPERM: ACLs.
        _ if text.contains("NOPERM") => PublishResult::permanent("access_denied", text),
        _ if text.contains("WRONGTYPE") => PublishResult::permanent("wrong_type", text),
        _ => PublishResult::failed("redis_error", text),
    }
}

async fn open(
    key: &Key,
    guard: &crate::ssrf::Guard,
    timeout: std::time::Duration,
) -> Result<MultiplexedConnection, PublishResult> {
    let addr = clients::checked_target(&key.host, key.port, guard).await?;
    open_at(key, addr, timeout).await
}

/// Answers the library's own lookup with the address the guard checked: the
/// connection goes where the check said (a name that resolves elsewhere a
/// moment later changes nothing), while TLS still verifies the certificate
/// against the name and sends it as SNI.
struct Pinned(std::net::SocketAddr);

impl redis::io::AsyncDNSResolver for Pinned {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _host: &'b str,
        _port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as Box<dyn Iterator<Item = _> + Send>) })
    }
}

/// Connects to `addr`, already checked, speaking to `key.host`.
async fn open_at(
    key: &Key,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<MultiplexedConnection, PublishResult> {
    let target = if key.tls {
        ConnectionAddr::TcpTls {
            host: key.host.clone(),
            port: key.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(key.host.clone(), key.port)
    };
    let mut settings = RedisConnectionInfo::default().set_db(key.db);
    if let Some(u) = &key.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &key.password {
        settings = settings.set_password(p);
    }
    let info = target
        .into_connection_info()
        .map_err(|e| classify(&e))?
        .set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(|e| classify(&e))?;
    // The attempt's own deadline bounds a reply; the library's default
    // (500 ms) would fail, and so duplicate, writes that a busy Redis
    // answers late.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(None)
        .set_dns_resolver(Pinned(addr));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| classify(&e))
}

impl Publisher for RedisStreamPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.stream);
            if let Some(n) = self.max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*");
            for (k, v) in merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms).iter() {
                // `data` is the event's own field; metadata cannot replace it.
                if k != "data" {
                    cmd.arg(k.as_str()).arg(v.as_str());
                }
            }
            cmd.arg("data").arg(event.data.as_bytes());
            for fresh in [false, true] {
                let conn: Rc<MultiplexedConnection> = match clients
                    .redis
                    .get(&self.key, || open(&self.key, &clients.guard, self.timeout))
                    .await
                {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                // The multiplexed connection is a cheap handle to one socket.
                let mut c = (*conn).clone();
                match cmd.query_async::<String>(&mut c).await {
                    Ok(id) => return PublishResult::success("OK", json!({ "id": id, "stream": self.stream })),
                    Err(e) => {
                        let dropped = e.is_connection_dropped() || e.is_io_error();
                        if dropped {
                            clients.redis.discard(&self.key, &conn);
                        }
                        if fresh || !dropped {
                            return classify(&e);
                        }
                    }
                }
            }
            PublishResult::failed("connection_reset", "the connection to Redis closed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library never looks the name up itself: a name that does not
    /// resolve at all still reaches the checked address.
    #[tokio::test]
    async fn the_connection_goes_to_the_checked_address_not_a_new_lookup() {
        let key = Key {
            tls: false,
            host: "outrider-pinned.invalid".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
        };
        let addr: std::net::SocketAddr = std::env::var("OUTRIDER_TEST_REDIS_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:6379".into())
            .parse()
            .unwrap();
        let mut conn = open_at(&key, addr, std::time::Duration::from_secs(5))
            .await
            .unwrap_or_else(|r| panic!("Redis at {addr} is required for this test: {:?}", r.response_data));
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }
}
