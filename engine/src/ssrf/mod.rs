//! SSRF guard for destination endpoints: after DNS resolution, addresses that
//! point into the operator's own network (loopback, private, link-local, CGNAT,
//! multicast, cloud metadata, transition prefixes that embed one of those, ...)
//! are refused, and the connection goes to the address that was checked, so a
//! second lookup cannot swap it. [`socks`] applies the same check to
//! connections a client library opens on its own (Kafka's advertised brokers).

pub mod socks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// What destinations may reach. Cloning is cheap (the allow list is shared).
#[derive(Clone, Debug)]
pub struct Guard {
    on: bool,
    /// Internal networks the operator lets destinations reach although the
    /// guard is on (an in-house broker, say).
    allowed: Arc<[IpNet]>,
}

impl Guard {
    /// No checks: every address may be reached.
    pub fn off() -> Self {
        Self {
            on: false,
            allowed: Arc::from(Vec::new()),
        }
    }

    /// Internal addresses are refused unless they fall in `allowed`.
    pub fn on(allowed: Vec<IpNet>) -> Self {
        Self {
            on: true,
            allowed: Arc::from(allowed),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Why `ip` may not be reached; `None` when it may.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        if !self.on {
            return None;
        }
        let reason = forbidden_reason(ip)?;
        let ip = ip.to_canonical();
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            None
        } else {
            Some(reason)
        }
    }
}

/// Parses `OUTRIDER_ALLOWED_PRIVATE_NETWORKS`: comma-separated CIDRs (a bare
/// address is one host).
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{s:?} is not a network (e.g. 10.1.0.0/16) or an address"))
        })
        .collect()
}

/// Why an address is refused, for the attempt's error message.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
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
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        Some("6to4 relay anycast")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from(((hi as u32) << 16) | lo as u32)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if s[..5] == [0; 5] && s[5] == 0xffff {
        // ::ffff:0:0/96. Sockets treat these as the IPv4 address inside, and
        // no public service is published under one: refused whatever it holds.
        Some("IPv4-mapped")
    } else if s[..6] == [0; 6] {
        // ::/96, the deprecated IPv4-compatible form.
        Some("IPv4-compatible (deprecated)")
    } else if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        Some("IPv4-translated")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique local (private)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local (deprecated)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        Some("cloud metadata")
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
        Some("documentation")
    } else if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        // 64:ff9b:1::/48, local-use NAT64: translates into the operator's
        // own IPv4 space.
        Some("local-use NAT64")
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // 64:ff9b::/96, well-known NAT64: reaches the embedded IPv4 address.
        if s[2..6] == [0; 4] {
            v4_reason(embedded_v4(s[6], s[7]))
        } else {
            Some("reserved (NAT64 prefix)")
        }
    } else if s[0] == 0x2002 {
        // 6to4: the relay delivers to the IPv4 address in bits 16..48.
        v4_reason(embedded_v4(s[1], s[2])).map(|_| "6to4 with an internal IPv4 address inside")
    } else if s[0] == 0x2001 && s[1] == 0 {
        Some("Teredo")
    } else if s[0] == 0x2001 && ((0x10..0x30).contains(&s[1]) || (s[1] == 0x0002 && s[2] == 0)) {
        Some("reserved (ORCHID or benchmarking)")
    } else if s[..4] == [0x0100, 0, 0, 0] {
        Some("discard-only")
    } else {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("dns lookup failed for {host}: {message}")]
    Dns { host: String, message: String },
    #[error("destination address {addr} is not allowed ({reason}); add it to OUTRIDER_ALLOWED_PRIVATE_NETWORKS or set OUTRIDER_ALLOW_PRIVATE_DESTINATIONS=true to allow it")]
    Forbidden { addr: IpAddr, reason: &'static str },
}

/// Resolves `host:port` and applies the guard. With the guard on, every
/// resolved address must be allowed: a name that resolves to any internal
/// address is refused as a whole.
pub async fn resolve(host: &str, port: u16, guard: &Guard) -> Result<Vec<SocketAddr>, ResolveError> {
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
    for a in &addrs {
        if let Some(reason) = guard.refuses(a.ip()) {
            return Err(ResolveError::Forbidden { addr: a.ip(), reason });
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
            "192.88.99.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:10.0.0.1",
            "fd00:ec2::254",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "2001::1",
            "2001:10::1",
            "2001:2::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden_reason(ip).is_some(), "{bad}");
            assert!(Guard::on(vec![]).refuses(ip).is_some(), "{bad}");
            assert!(Guard::off().refuses(ip).is_none(), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2a00:1450::1",
        ] {
            assert!(forbidden_reason(good.parse().unwrap()).is_none(), "{good}");
        }
    }

    /// A small deterministic generator: the property tests below need many
    /// addresses, not a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Every address of every internal class is refused, whatever its host
    /// bits, directly and through each IPv6 form that embeds it.
    #[test]
    fn every_address_of_an_internal_class_is_refused() {
        let classes: [(&str, u8); 14] = [
            ("0.0.0.0", 8),
            ("10.0.0.0", 8),
            ("100.64.0.0", 10),
            ("127.0.0.0", 8),
            ("169.254.0.0", 16),
            ("172.16.0.0", 12),
            ("192.0.0.0", 24),
            ("192.0.2.0", 24),
            ("192.88.99.0", 24),
            ("192.168.0.0", 16),
            ("198.18.0.0", 15),
            ("198.51.100.0", 24),
            ("203.0.113.0", 24),
            ("224.0.0.0", 3),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (base, len) in classes {
            let base = u32::from(base.parse::<Ipv4Addr>().unwrap());
            for _ in 0..2_000 {
                let host = (rng.next() as u32) & (u32::MAX >> len);
                let v4 = Ipv4Addr::from(base | host);
                let [a, b] = [(u32::from(v4) >> 16) as u16, u32::from(v4) as u16];
                let forms = [
                    IpAddr::V4(v4),
                    IpAddr::V6(v4.to_ipv6_mapped()),
                    IpAddr::V6(v4.to_ipv6_compatible()),
                    IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, a, b)),
                    IpAddr::V6(Ipv6Addr::new(0x2002, a, b, rng.next() as u16, 0, 0, 0, 1)),
                ];
                for ip in forms {
                    assert!(forbidden_reason(ip).is_some(), "{ip} ({v4})");
                }
            }
        }
        let v6_classes: [(&str, u8); 9] = [
            ("fc00::", 7),
            ("fe80::", 10),
            ("fec0::", 10),
            ("ff00::", 8),
            ("64:ff9b:1::", 48),
            ("2001::", 32),
            ("2001:db8::", 32),
            ("::ffff:0:0", 96),
            ("100::", 64),
        ];
        for (base, len) in v6_classes {
            let base = u128::from(base.parse::<Ipv6Addr>().unwrap());
            for _ in 0..2_000 {
                let host = ((rng.next() as u128) << 64 | rng.next() as u128) & (u128::MAX >> len);
                let ip = IpAddr::V6(Ipv6Addr::from(base | host));
                assert!(forbidden_reason(ip).is_some(), "{ip}");
            }
        }
    }

    /// Public IPv4 addresses stay reachable, directly and through the two
    /// transition prefixes that reach the public Internet.
    #[test]
    fn public_addresses_pass() {
        let mut rng = Rng(42);
        let mut checked = 0;
        while checked < 5_000 {
            let v4 = Ipv4Addr::from(rng.next() as u32);
            if v4_reason(v4).is_some() {
                continue;
            }
            checked += 1;
            let [a, b] = [(u32::from(v4) >> 16) as u16, u32::from(v4) as u16];
            assert_eq!(forbidden_reason(IpAddr::V4(v4)), None, "{v4}");
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, a, b);
            assert_eq!(forbidden_reason(IpAddr::V6(nat64)), None, "{nat64}");
            let six_to_four = Ipv6Addr::new(0x2002, a, b, 7, 0, 0, 0, 1);
            assert_eq!(forbidden_reason(IpAddr::V6(six_to_four)), None, "{six_to_four}");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_networks() {
        let g = Guard::on(parse_networks("10.1.0.0/16, 127.0.0.1 ,fd12::/16").unwrap());
        assert_eq!(g.refuses("10.1.200.3".parse().unwrap()), None);
        assert_eq!(g.refuses("::ffff:10.1.0.9".parse().unwrap()), None);
        assert_eq!(g.refuses("127.0.0.1".parse().unwrap()), None);
        assert_eq!(g.refuses("fd12::1".parse().unwrap()), None);
        assert_eq!(g.refuses("10.2.0.1".parse().unwrap()), Some("private"));
        assert_eq!(g.refuses("127.0.0.2".parse().unwrap()), Some("loopback"));
        assert_eq!(
            g.refuses("169.254.169.254".parse().unwrap()),
            Some("link-local or cloud metadata")
        );
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("intranet").is_err());
        assert_eq!(parse_networks(" ").unwrap(), vec![]);
    }

    #[tokio::test]
    async fn resolve_guards() {
        let on = Guard::on(vec![]);
        assert!(matches!(
            resolve("127.0.0.1", 80, &on).await,
            Err(ResolveError::Forbidden { .. })
        ));
        assert!(resolve("127.0.0.1", 80, &Guard::off()).await.is_ok());
        // A name that resolves to an internal address is refused by what it
        // resolves to, not by its spelling.
        for name in ["localhost", "[::1]", "[::ffff:169.254.169.254]"] {
            assert!(
                matches!(resolve(name, 80, &on).await, Err(ResolveError::Forbidden { .. })),
                "{name}"
            );
        }
    }
}
