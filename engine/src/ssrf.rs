//! SSRF guard for webhook URLs: after DNS resolution, addresses that point into
//! the operator's own network (loopback, private, link-local, CGNAT, multicast,
//! cloud metadata, ...) are refused, and the connection goes to the address that
//! was checked, so a second lookup cannot swap it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is refused, for the attempt's error message.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4);
            }
            v6_reason(v6)
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 169 && o[1] == 254 {
        // Includes 169.254.169.254, the cloud metadata endpoint.
        Some("link-local or cloud metadata")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() || o[0] >= 240 || ip.is_broadcast() {
        Some("multicast or reserved")
    } else if (o[0] == 192 && o[1] == 0 && o[2] == 0) || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("reserved (IETF or benchmarking)")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique local (private)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        Some("cloud metadata")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation")
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64 can reach embedded IPv4 addresses; check the embedded one.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        v4_reason(v4)
    } else {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("dns lookup failed for {host}: {message}")]
    Dns { host: String, message: String },
    #[error("destination address {addr} is not allowed ({reason}); set OUTRIDER_ALLOW_PRIVATE_DESTINATIONS=true to allow it")]
    Forbidden { addr: IpAddr, reason: &'static str },
}

/// Resolves `host:port` and applies the guard. With the guard on, every
/// resolved address must be public: a name that resolves to any internal
/// address is refused as a whole.
pub async fn resolve(host: &str, port: u16, guard: bool) -> Result<Vec<SocketAddr>, ResolveError> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match trimmed.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((trimmed, port))
            .await
            .map_err(|e| ResolveError::Dns {
                host: host.to_string(),
                message: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ResolveError::Dns {
            host: host.to_string(),
            message: "no addresses".into(),
        });
    }
    if guard {
        for a in &addrs {
            if let Some(reason) = forbidden_reason(a.ip()) {
                return Err(ResolveError::Forbidden { addr: a.ip(), reason });
            }
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "64:ff9b::a00:1",
        ] {
            assert!(forbidden_reason(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(forbidden_reason(good.parse().unwrap()).is_none(), "{good}");
        }
    }

    #[tokio::test]
    async fn resolve_guards() {
        assert!(matches!(
            resolve("127.0.0.1", 80, true).await,
            Err(ResolveError::Forbidden { .. })
        ));
        assert!(resolve("127.0.0.1", 80, false).await.is_ok());
        assert!(matches!(
            resolve("localhost", 80, true).await,
            Err(ResolveError::Forbidden { .. })
        ));
    }
}
