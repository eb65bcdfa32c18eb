//! The webhook egress proxy (`DESTINATIONS_WEBHOOK_PROXY_URL`): an HTTP(S)
//! forward proxy, with optional basic auth, that every webhook connection is
//! tunnelled through with `CONNECT`.
//!
//! Outrider resolves the destination's name and checks every address with
//! the SSRF guard before it asks the proxy for a tunnel, and the tunnel is
//! asked for that checked address, not the name: the proxy cannot be made to
//! reach an address the guard refused by a second DNS answer. Plain `http://`
//! destinations are tunnelled too (Outpost forwards those request by
//! request), so the proxy must allow `CONNECT` to the ports destinations use.
//!
//! Failures are attributed as Outpost attributes them: the proxy being
//! unreachable or refusing our credentials is the operator's problem
//! ([`PROXY_UNAVAILABLE`]: the delivery is tried again later with no attempt
//! recorded); a proxy that could not reach the destination is a failed
//! attempt with the network code it reports (Envoy's `x-envoy-response-flags`).

use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect_any, Io, SendError};

/// The code of a failure the proxy, not the destination, is responsible for.
pub const PROXY_UNAVAILABLE: &str = "proxy_unavailable";

/// Reaching the proxy itself (TCP and TLS) takes at most this: a proxy that
/// does not answer is the operator's outage, and must not run into the
/// attempt's deadline and be recorded as the destination's timeout.
const PROXY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A proxy's answer to `CONNECT` larger than this is refused.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;

/// A parsed proxy URL. Its `Debug` never shows the credentials.
#[derive(Clone)]
pub struct Proxy {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    /// `Basic <base64(user:password)>`.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl Proxy {
    /// `http://[user:password@]host[:port]` or `https://…` (TLS to the proxy).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw.trim()).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("the scheme must be http or https, not {other:?}")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("a proxy URL is scheme://[user:password@]host[:port], with no path or query".into());
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let authorization = (!url.username().is_empty() || url.password().is_some()).then(|| {
            let pair = format!("{}:{}", decode(url.username()), decode(url.password().unwrap_or("")));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            )
        });
        Ok(Self {
            tls,
            host,
            port,
            authorization,
        })
    }

    /// `scheme://host:port`, for logs and errors.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Opens a tunnel through the proxy to `to` (an address the guard
    /// checked). `name` is the destination's host, for error messages.
    pub(super) async fn tunnel(
        &self,
        tls: &tokio_rustls::TlsConnector,
        to: SocketAddr,
        name: &str,
    ) -> Result<Box<dyn Io>, SendError> {
        let unavailable = |why: String| {
            SendError::new(
                PROXY_UNAVAILABLE,
                format!("proxy {} unavailable reaching {name}: {why}", self.redacted()),
            )
        };
        let reach = async {
            // The proxy is the operator's own: it is not checked by the guard.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("DNS: {e}"))?
                .collect();
            let tcp = connect_any(&addrs).await.map_err(|e| e.message)?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if self.tls {
                let server = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("invalid TLS name: {e}"))?;
                Box::new(tls.connect(server, tcp).await.map_err(|e| format!("TLS: {e}"))?)
            } else {
                Box::new(tcp)
            };
            Ok::<_, String>(io)
        };
        let mut io = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, reach)
            .await
            .map_err(|_| unavailable(format!("no connection within {PROXY_CONNECT_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        let mut head = format!("CONNECT {to} HTTP/1.1\r\nhost: {to}\r\n");
        if let Some(a) = &self.authorization {
            head.push_str("proxy-authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        io.write_all(head.as_bytes())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        io.flush().await.map_err(|e| unavailable(e.to_string()))?;
        let answer = read_head(&mut io).await.map_err(unavailable)?;
        match classify(&answer, name) {
            None => Ok(io),
            Some(e) => Err(e),
        }
    }
}

/// The parts of a `CONNECT` answer that decide what happened.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ConnectAnswer {
    pub status: u16,
    pub envoy_flags: Option<String>,
    pub envoy_details: Option<String>,
}

/// Reads the proxy's answer head. Nothing may follow a 2xx head: the tunnel
/// starts with the destination's first byte, which we have not asked for yet.
async fn read_head(io: &mut Box<dyn Io>) -> Result<ConnectAnswer, String> {
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(end)) => {
                let status = resp.code.unwrap_or(0);
                if (200..300).contains(&status) && end != buf.len() {
                    return Err("the proxy sent data after its CONNECT answer".into());
                }
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                        .filter(|v| !v.is_empty() && v != "-")
                };
                return Ok(ConnectAnswer {
                    status,
                    envoy_flags: header("x-envoy-response-flags"),
                    envoy_details: header("x-envoy-response-code-details"),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("invalid CONNECT answer: {e}")),
        }
        if buf.len() >= MAX_CONNECT_RESPONSE {
            return Err(format!("CONNECT answer larger than {MAX_CONNECT_RESPONSE} bytes"));
        }
        let mut chunk = [0u8; 1024];
        // Reading past the head is safe: the destination sends nothing
        // before we speak (HTTP and TLS clients go first), so bytes after a
        // 2xx head can only be the proxy's, and are refused above.
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the proxy closed the connection before answering CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `None`: the tunnel is open. Otherwise whose failure it is: credentials the
/// proxy refuses are [`PROXY_UNAVAILABLE`]; an Envoy RBAC denial (an egress
/// policy about the target) and every other answer are the destination's,
/// with the network code Envoy's response flag names.
pub(super) fn classify(a: &ConnectAnswer, name: &str) -> Option<SendError> {
    if (200..300).contains(&a.status) {
        return None;
    }
    let details = a.envoy_details.as_deref().unwrap_or("");
    let code = match a.status {
        403 if details.contains("rbac_access_denied") => "network_unreachable",
        401 | 403 | 407 => {
            return Some(SendError::new(
                PROXY_UNAVAILABLE,
                format!(
                    "the proxy refused to open a tunnel to {name} ({}): check the credentials in DESTINATIONS_WEBHOOK_PROXY_URL",
                    a.status
                ),
            ))
        }
        _ => a.envoy_flags.as_deref().map_or("connection_refused", envoy_code),
    };
    Some(SendError::new(code, format!("{code} connecting to {name}")))
}

/// Envoy's response flags as the network codes a direct connection gives.
fn envoy_code(flag: &str) -> &'static str {
    match flag {
        "UF" | "UH" | "LH" => "connection_refused",
        "UC" | "UR" | "LR" => "connection_reset",
        "UT" | "SI" | "DT" | "UMSDR" => "timeout",
        "DF" => "dns_error",
        "NR" | "NC" => "network_unreachable",
        "UPE" | "DPE" => "protocol_error",
        _ => "network_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_and_never_shows_the_credentials() {
        let p = Proxy::parse("http://us%40er:p%3Ass@proxy.internal:3128").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port), (false, "proxy.internal", 3128));
        let basic = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(p.authorization.as_deref(), Some(format!("Basic {basic}").as_str()));
        assert_eq!(format!("{p:?}"), "http://proxy.internal:3128");
        let p = Proxy::parse("https://[::1]").unwrap();
        assert_eq!(
            (p.tls, p.host.as_str(), p.port, p.authorization.as_deref()),
            (true, "::1", 443, None)
        );
        assert_eq!(p.redacted(), "https://[::1]:443");
        for bad in [
            "socks5://p:1080",
            "proxy:3128",
            "http://",
            "http://p:1/path",
            "http://p?x=1",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_answers_are_attributed_as_outpost_does() {
        let answer = |status, flags: Option<&str>, details: Option<&str>| ConnectAnswer {
            status,
            envoy_flags: flags.map(String::from),
            envoy_details: details.map(String::from),
        };
        let code = |a: ConnectAnswer| classify(&a, "example.com").map(|e| e.code);
        assert_eq!(code(answer(200, None, None)), None);
        for s in [401, 403, 407] {
            assert_eq!(code(answer(s, None, None)), Some(PROXY_UNAVAILABLE), "{s}");
        }
        assert_eq!(
            code(answer(403, None, Some("rbac_access_denied_matched_policy[none]"))),
            Some("network_unreachable")
        );
        assert_eq!(code(answer(502, None, None)), Some("connection_refused"));
        assert_eq!(code(answer(503, Some("DF"), None)), Some("dns_error"));
        assert_eq!(code(answer(504, Some("UT"), None)), Some("timeout"));
        assert_eq!(code(answer(502, Some("UC"), None)), Some("connection_reset"));
        assert_eq!(code(answer(502, Some("XX"), None)), Some("network_error"));
        let e = classify(&answer(502, Some("UF"), None), "example.com").unwrap();
        assert_eq!(e.message, "connection_refused connecting to example.com");
    }
}
