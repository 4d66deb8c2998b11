//! IP allow-lists (`general_settings.allowed_ips`, a key's `allowed_ips`): CIDRs matched against
//! the downstream address Envoy saw (`source.address`, which honours the listener's
//! `xff_num_trusted_hops` when one is configured, never a client header by default). IPv4 rules
//! and addresses live in the IPv4-mapped IPv6 range, so one comparison serves both families and
//! an IPv4 client of a dual-stack listener matches its IPv4 rule.

use std::net::{IpAddr, SocketAddr};

/// One CIDR, as a 128-bit address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    base: u128,
    prefix: u32,
}

impl Net {
    fn contains(&self, ip: u128) -> bool {
        let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
        ip & mask == self.base & mask
    }
}

/// A compiled allow-list; empty lists are never compiled (no rule: everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRules {
    nets: Vec<Net>,
}

fn mapped(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(u128::from(v6), |v4| u128::from(v4.to_ipv6_mapped())),
    }
}

/// A client address as Envoy gives it (`1.2.3.4:5678`, `[::1]:5678`, or a bare address).
pub fn parse_client_address(address: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(address).ok()?;
    text.parse::<SocketAddr>().map(|s| s.ip()).or_else(|_| text.parse::<IpAddr>()).ok()
}

impl IpRules {
    /// Parses `10.0.0.0/8`, `192.168.1.7` (one address), `2001:db8::/32`; None for an empty list;
    /// an entry that does not parse is an error naming it.
    pub fn parse(list: &[String]) -> Result<Option<Self>, String> {
        let mut nets = Vec::with_capacity(list.len());
        for entry in list {
            let bad = || format!("{entry:?} is not an IP address or a CIDR (10.0.0.0/8, 2001:db8::/32)");
            let (addr, prefix) = match entry.trim().split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix.parse::<u32>().map_err(|_| bad())?)),
                None => (entry.trim(), None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| bad())?;
            let (width, offset) = match ip {
                IpAddr::V4(_) => (32, 96),
                IpAddr::V6(_) => (128, 0),
            };
            let prefix = prefix.unwrap_or(width);
            if prefix > width {
                return Err(bad());
            }
            nets.push(Net { base: mapped(ip), prefix: prefix + offset });
        }
        Ok((!nets.is_empty()).then_some(Self { nets }))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = mapped(ip);
        self.nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> IpRules {
        IpRules::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        parse_client_address(text.as_bytes()).unwrap()
    }

    #[test]
    fn cidrs_and_single_addresses_of_both_families_match() {
        let r = rules(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]);
        for allowed in ["10.1.2.3:5000", "10.255.255.255", "192.168.1.7:1", "[2001:db8::1]:443", "::ffff:10.0.0.1"] {
            assert!(r.allows(ip(allowed)), "{allowed}");
        }
        for refused in ["11.0.0.1:5000", "192.168.1.8", "[2001:db9::1]:443", "::1"] {
            assert!(!r.allows(ip(refused)), "{refused}");
        }
        assert!(rules(&["0.0.0.0/0"]).allows(ip("8.8.8.8:53")));
        assert!(!rules(&["0.0.0.0/0"]).allows(ip("[2001:db8::1]:1")), "an IPv4 rule never matches IPv6");
        assert!(rules(&["::/0"]).allows(ip("8.8.8.8:53")));
    }

    #[test]
    fn an_entry_that_does_not_parse_is_named() {
        for bad in ["10.0.0.0/33", "2001:db8::/129", "localhost", "10.0.0/8", "1.2.3.4/x"] {
            let e = IpRules::parse(&[bad.to_owned()]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(IpRules::parse(&[]), Ok(None));
        assert!(parse_client_address(b"not an address").is_none());
    }
}
