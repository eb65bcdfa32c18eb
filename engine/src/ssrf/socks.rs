//! A loopback hop that puts the guard in front of connections a client
//! library opens on its own. A Kafka client connects to whatever brokers the
//! cluster advertises in its metadata, addresses the destination's owner
//! controls and we never see; an MQTT client over TLS resolves the broker's
//! name itself (it needs the name for the certificate). Pointing the library
//! at this hop makes each of those connections resolve, check and connect to
//! the checked address here, as every other endpoint does, while the library
//! keeps the name for TLS. It speaks SOCKS5 (`CONNECT` only, no
//! authentication: Kafka's client) and HTTP `CONNECT` (MQTT's client).
//!
//! It listens on 127.0.0.1, reaches only what the guard allows, and serves
//! only connections this process opened (on Linux, checked through
//! `/proc`): the client library offers no proxy credentials, and another
//! local process must not borrow the guard's allow list
//! (`OUTRIDER_ALLOWED_PRIVATE_NETWORKS`) to reach networks it cannot.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{resolve, Guard, ResolveError};

/// SOCKS5 reply codes (RFC 1928 §6).
const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const CONNECTION_REFUSED: u8 = 5;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;

/// The text a client library shows for a [`NOT_ALLOWED`] reply
/// (`async-socks5`'s name for it), so a caller can tell a refusal by the
/// guard from a broker that is down.
pub const REFUSAL_TEXT: &str = "ConnectionNotAllowedByRules";

/// A running hop; it stops when dropped.
pub struct GuardProxy {
    addr: SocketAddr,
    refused: Arc<Mutex<Option<String>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for GuardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GuardProxy {
    /// Binds an ephemeral port on 127.0.0.1 and serves on the current
    /// runtime. `timeout` bounds each handshake, lookup and connect.
    pub async fn start(guard: Guard, timeout: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(Mutex::new(None));
        let task = tokio::spawn(serve(listener, guard, timeout, refused.clone())).abort_handle();
        Ok(Self { addr, refused, task })
    }

    /// Where the client library should send its SOCKS5 requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The guard's message for the last connection it refused.
    pub fn last_refusal(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

async fn serve(listener: TcpListener, guard: Guard, timeout: Duration, refused: Arc<Mutex<Option<String>>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, peer)) => {
                let ours = match client.local_addr() {
                    Ok(local) => tokio::task::spawn_blocking(move || opened_by_this_process(peer, local))
                        .await
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if !ours {
                    tracing::warn!(%peer, "ssrf proxy: refused a connection another process opened");
                    continue;
                }
                client
            }
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "ssrf proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (guard, refused) = (guard.clone(), refused.clone());
        tokio::spawn(async move {
            if let Err(e) = relay(client, &guard, timeout, &refused).await {
                tracing::debug!(error = %e, "ssrf proxy: connection ended");
            }
        });
    }
}

async fn relay(
    mut client: TcpStream,
    guard: &Guard,
    timeout: Duration,
    refused: &Mutex<Option<String>>,
) -> io::Result<()> {
    let upstream = tokio::time::timeout(timeout, handshake(&mut client, guard, refused))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SOCKS5 handshake timed out"))??;
    let Some(mut upstream) = upstream else {
        return Ok(());
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// An HTTP `CONNECT` request head larger than this is not answered.
const MAX_HTTP_HEAD: usize = 8 * 1024;

/// Reads one `CONNECT` request (SOCKS5, or HTTP when the first byte is
/// `C`), applies the guard and answers. `None` when the request was refused
/// (the reply says why) or was neither.
async fn handshake(
    client: &mut TcpStream,
    guard: &Guard,
    refused: &Mutex<Option<String>>,
) -> io::Result<Option<TcpStream>> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    if head[0] == b'C' {
        return http_connect(client, head, guard, refused).await;
    }
    if head[0] != 5 {
        return Ok(None);
    }
    let mut methods = vec![0u8; head[1] as usize];
    client.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        client.write_all(&[5, 0xff]).await?;
        return Ok(None);
    }
    client.write_all(&[5, 0]).await?;

    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Ok(None);
    }
    if req[1] != 1 {
        reply(client, COMMAND_NOT_SUPPORTED).await?;
        return Ok(None);
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await?;
            IpAddr::V4(Ipv4Addr::from(a)).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await?;
            IpAddr::V6(Ipv6Addr::from(a)).to_string()
        }
        3 => {
            let len = client.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            client.read_exact(&mut name).await?;
            match String::from_utf8(name) {
                Ok(n) => n,
                Err(_) => {
                    reply(client, ADDRESS_TYPE_NOT_SUPPORTED).await?;
                    return Ok(None);
                }
            }
        }
        _ => {
            reply(client, ADDRESS_TYPE_NOT_SUPPORTED).await?;
            return Ok(None);
        }
    };
    let port = client.read_u16().await?;
    let code = match open_checked(&host, port, guard, refused).await {
        Ok(upstream) => {
            reply(client, SUCCEEDED).await?;
            return Ok(Some(upstream));
        }
        Err(Refusal::Forbidden) => NOT_ALLOWED,
        Err(Refusal::Dns) => HOST_UNREACHABLE,
        Err(Refusal::Refused) => CONNECTION_REFUSED,
        Err(Refusal::Other) => GENERAL_FAILURE,
    };
    reply(client, code).await?;
    Ok(None)
}

/// Why the hop did not open a connection.
enum Refusal {
    Forbidden,
    Dns,
    Refused,
    Other,
}

/// Resolves `host`, applies the guard and connects to the checked address.
async fn open_checked(
    host: &str,
    port: u16,
    guard: &Guard,
    refused: &Mutex<Option<String>>,
) -> Result<TcpStream, Refusal> {
    let addrs = match resolve(host, port, guard).await {
        Ok(a) => a,
        Err(e @ ResolveError::Forbidden { .. }) => {
            tracing::warn!(%host, port, error = %e, "ssrf proxy: refused a connection the client library asked for");
            if let Ok(mut r) = refused.lock() {
                *r = Some(format!("{host}:{port}: {e}"));
            }
            return Err(Refusal::Forbidden);
        }
        Err(ResolveError::Dns { .. }) => return Err(Refusal::Dns),
    };
    // `resolve` never returns an empty list.
    TcpStream::connect(addrs[0]).await.map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Refusal::Refused
        } else {
            Refusal::Other
        }
    })
}

/// `CONNECT host:port HTTP/1.1`, headers, blank line; `first` are the two
/// bytes already read. Answers 200, or 403 (the guard), 502, 504.
async fn http_connect(
    client: &mut TcpStream,
    first: [u8; 2],
    guard: &Guard,
    refused: &Mutex<Option<String>>,
) -> io::Result<Option<TcpStream>> {
    let mut head = first.to_vec();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HTTP_HEAD {
            return Ok(None);
        }
        head.push(client.read_u8().await?);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split(' ');
    let target = match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(t)) => t.to_string(),
        _ => {
            client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(None);
        }
    };
    let parsed = target.rsplit_once(':').and_then(|(h, p)| {
        Some((
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>().ok()?,
        ))
    });
    let Some((host, port)) = parsed else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(None);
    };
    let status: &[u8] = match open_checked(&host, port, guard, refused).await {
        Ok(upstream) => {
            client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
            return Ok(Some(upstream));
        }
        Err(Refusal::Forbidden) => b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
        Err(Refusal::Dns) => b"HTTP/1.1 502 Bad Gateway\r\nx-outrider-reason: dns\r\ncontent-length: 0\r\n\r\n",
        Err(Refusal::Refused | Refusal::Other) => b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
    };
    client.write_all(status).await?;
    Ok(None)
}

/// Whether the loopback TCP connection that reached the proxy at `local`
/// from `peer` belongs to this process: its client end is in
/// `/proc/net/tcp`, and that socket's inode is one of our descriptors.
#[cfg(target_os = "linux")]
fn opened_by_this_process(peer: SocketAddr, local: SocketAddr) -> bool {
    fn hex(addr: SocketAddr) -> Option<String> {
        match addr {
            // The kernel prints the address as the u32 it holds, in host order.
            SocketAddr::V4(a) => Some(format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port())),
            SocketAddr::V6(_) => None,
        }
    }
    let (Some(client_end), Some(proxy_end)) = (hex(peer), hex(local)) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == client_end && f[2] == proxy_end).then(|| f[9].to_string())
    });
    let Some(inode) = inode else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
}

/// Elsewhere there is no `/proc` to ask: the hop serves any local process
/// (it still reaches only what the guard allows).
#[cfg(not(target_os = "linux"))]
fn opened_by_this_process(_peer: SocketAddr, _local: SocketAddr) -> bool {
    true
}

/// A reply with an unspecified bound address (clients do not use it).
async fn reply(client: &mut TcpStream, code: u8) -> io::Result<()> {
    client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_socks5::{connect, Error, UnsuccessfulReply};

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn through(proxy: &GuardProxy, host: &str, port: u16) -> Result<TcpStream, Error> {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        connect(&mut s, (host, port), None).await.map(|_| s)
    }

    #[tokio::test]
    async fn an_allowed_target_is_relayed() {
        let target = echo().await;
        let proxy = GuardProxy::start(Guard::on(vec!["127.0.0.1/32".parse().unwrap()]), Duration::from_secs(5))
            .await
            .unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let Ok(mut s) = through(&proxy, host, target.port()).await else {
                // `localhost` may also resolve to ::1, which the list does not
                // open: refused as a whole, as `resolve` promises.
                assert_eq!(host, "localhost");
                continue;
            };
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        assert_eq!(proxy.last_refusal(), None);
    }

    #[tokio::test]
    async fn an_internal_target_is_refused_with_the_reason() {
        let target = echo().await;
        let proxy = GuardProxy::start(Guard::on(vec![]), Duration::from_secs(5))
            .await
            .unwrap();
        for host in ["127.0.0.1", "localhost", "::ffff:169.254.169.254"] {
            let e = through(&proxy, host, target.port()).await.expect_err("refused");
            assert!(
                matches!(e, Error::Response(UnsuccessfulReply::ConnectionNotAllowedByRules)),
                "{host}: {e:?}"
            );
            assert!(e.to_string().contains(REFUSAL_TEXT), "{e}");
            let why = proxy.last_refusal().unwrap();
            assert!(
                why.starts_with(&format!("{host}:{}: destination address", target.port())),
                "{why}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_and_an_unknown_name_are_not_refusals() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = GuardProxy::start(Guard::off(), Duration::from_secs(5)).await.unwrap();
        let e = through(&proxy, "127.0.0.1", closed).await.expect_err("refused");
        assert!(
            matches!(e, Error::Response(UnsuccessfulReply::ConnectionRefused)),
            "{e:?}"
        );
        let e = through(&proxy, "no-such-host.invalid", 9092)
            .await
            .expect_err("unknown");
        assert!(
            matches!(e, Error::Response(UnsuccessfulReply::HostUnreachable)),
            "{e:?}"
        );
        assert_eq!(proxy.last_refusal(), None);
    }

    /// Another process gets no answer at all, even for an address the
    /// guard would let through; this process's own connections work (every
    /// other test here).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connection_from_another_process_is_closed_unanswered() {
        let proxy = GuardProxy::start(Guard::off(), Duration::from_secs(5)).await.unwrap();
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{}; printf '\\005\\001\\000' >&3; head -c 2 <&3 | od -An -tx1",
            proxy.addr().port()
        );
        let out =
            tokio::task::spawn_blocking(move || std::process::Command::new("bash").args(["-c", &script]).output())
                .await
                .unwrap()
                .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(answer, "", "another process was answered: {answer:?}");
        // The same greeting from this process is answered (no auth, method 0).
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [5, 0]);
    }

    /// The same hop over HTTP `CONNECT` (MQTT's client): an allowed target is
    /// relayed, an internal one refused with 403 and the reason kept.
    #[tokio::test]
    async fn http_connect_is_relayed_or_refused_like_socks() {
        let target = echo().await;
        let ask = |proxy: SocketAddr, host: &'static str| async move {
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.write_all(format!("CONNECT {host}:{} HTTP/1.1\r\nHost: {host}\r\n\r\n", target.port()).as_bytes())
                .await
                .unwrap();
            let mut answer = Vec::new();
            while !answer.ends_with(b"\r\n\r\n") {
                answer.push(s.read_u8().await.unwrap());
            }
            (String::from_utf8(answer).unwrap(), s)
        };
        let open = GuardProxy::start(Guard::off(), Duration::from_secs(5)).await.unwrap();
        let (answer, mut s) = ask(open.addr(), "127.0.0.1").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let guarded = GuardProxy::start(Guard::on(vec![]), Duration::from_secs(5))
            .await
            .unwrap();
        let (answer, _) = ask(guarded.addr(), "localhost").await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(guarded.last_refusal().unwrap().starts_with("localhost:"));
    }

    #[tokio::test]
    async fn dropping_the_proxy_stops_it() {
        let proxy = GuardProxy::start(Guard::off(), Duration::from_secs(5)).await.unwrap();
        let addr = proxy.addr();
        drop(proxy);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
