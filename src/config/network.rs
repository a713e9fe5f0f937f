//! IP networks as `--proxy-allow-from` writes them: an address, or an address with a prefix length. The
//! type of a setting's values, so it lives with the settings: the entries are checked with
//! [`Network::parse`] when the configuration is read, and the PROXY protocol reader (`worker::proxy`)
//! matches peers against them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network of `--proxy-allow-from`: an address, or an address with a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
    /// Written with `/prefix` (kept so the canonical text shows it as given).
    explicit_prefix: bool,
}

impl Network {
    /// `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`. As gunicorn (Python's strict `ip_network`), bits
    /// set past the prefix are refused: `10.0.0.1/8` is most likely a typo.
    pub fn parse(text: &str) -> Result<Network, String> {
        let not_a_network =
            || format!("'{text}' is not an IP address or network (use * to allow every address)");
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| not_a_network())?;
        let bits = max_prefix(addr);
        let prefix = match prefix_text {
            None => bits,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_a_network());
                }
                match p.parse::<u8>() {
                    Ok(n) if n <= bits => n,
                    _ => return Err(not_a_network()),
                }
            }
        };
        let network = Network {
            addr,
            prefix,
            explicit_prefix: prefix_text.is_some(),
        };
        if network.masked(addr) != addr {
            let base = Network {
                addr: network.masked(addr),
                ..network
            };
            return Err(format!("'{text}' has host bits set (did you mean {base}?)"));
        }
        Ok(network)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.explicit_prefix {
            write!(f, "{}/{}", self.addr, self.prefix)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a00:1".parse().unwrap()));
        assert_eq!(n.to_string(), "10.0.0.0/8");
        let n = Network::parse("2001:db8::/32").unwrap();
        assert!(n.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!n.contains("2001:db9::1".parse().unwrap()));
        assert_eq!(Network::parse("0:0::1").unwrap().to_string(), "::1");
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Network::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        let e = Network::parse("10.0.0.1/8").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        for bad in [
            "",
            "nope",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "::/129",
            "*/8",
            "10.0.0.0/8/8",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }
}
