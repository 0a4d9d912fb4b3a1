//! Guard rails at the edge: which senders are heard, and a log that says
//! "refused" once per sender per minute rather than once per datagram.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An IP network in CIDR notation (`127.0.0.0/8`, `::1/128`, or a bare
/// address meaning just that host).
///
/// ```
/// use monitor_core::IpNet;
///
/// let net: IpNet = "10.10.0.0/16".parse().unwrap();
/// assert!(net.contains("10.10.3.4".parse().unwrap()));
/// assert!(!net.contains("10.11.0.1".parse().unwrap()));
/// assert!("127.0.0.1".parse::<IpNet>().unwrap().contains("127.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    address: IpAddr,
    prefix: u8,
}

/// A string that is not an address or an `ADDRESS/PREFIX` network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP network (expected ADDRESS or ADDRESS/PREFIX, e.g. 10.0.0.0/8)")]
pub struct IpNetParseError {
    input: String,
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || IpNetParseError {
            input: input.to_owned(),
        };
        let (address, prefix) = match input.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (input.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| error())?,
            None => max,
        };
        if prefix > max {
            return Err(error());
        }
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl IpNet {
    /// Whether `ip` is in this network. IPv4-mapped IPv6 senders
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) match
    /// IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The senders a monitor listens to: everyone when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

impl AllowList {
    /// Only senders in `networks`; everyone when `networks` is empty.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    /// Whether datagrams from `sender` are accepted.
    pub fn allows(&self, sender: IpAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|net| net.contains(sender))
    }
}

/// How often one sender's refusals of one kind are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Bound on remembered (sender, kind) pairs: a flood from many addresses
/// must not grow memory; when full, the memory is cleared.
const MAX_REMEMBERED: usize = 10_000;

/// Decides whether a refusal deserves a log line: the first from a
/// (sender address, kind) pair, then at most one a minute, reporting how
/// many were suppressed in between.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// (sender, kind) → (last logged, suppressed since).
    seen: Mutex<HashMap<LimiterKey, (Instant, u64)>>,
}

type LimiterKey = (IpAddr, &'static str);

impl LogLimiter {
    /// `Some(suppressed)` when a line should be logged now, with how many
    /// refusals of this kind from this sender were not logged since the last.
    pub(crate) fn should_log(&self, sender: SocketAddr, kind: &'static str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        let now = Instant::now();
        match seen.get_mut(&(sender.ip(), kind)) {
            Some((last, suppressed)) if now.duration_since(*last) < LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let count = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(count)
            }
            None => {
                seen.insert((sender.ip(), kind), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        let net: IpNet = "192.168.1.0/24".parse().unwrap();
        assert!(net.contains(ip("192.168.1.200")));
        assert!(!net.contains(ip("192.168.2.1")));
        assert!(net.contains(ip("::ffff:192.168.1.7")), "v4-mapped v6");
        assert!(!net.contains(ip("::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        for bad in ["", "10.0.0.0/", "10.0.0.0/x", "::/129", "host.example/8"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "10.1.0.0/16".parse::<IpNet>().unwrap().to_string(),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn allow_list_empty_means_everyone() {
        assert!(AllowList::default().allows(ip("203.0.113.9")));
        let list = AllowList::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(list.allows(ip("127.0.0.2")));
        assert!(!list.allows(ip("10.0.0.1")));
    }

    #[test]
    fn limiter_logs_once_per_sender_and_kind() {
        let limiter = LogLimiter::default();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let a_other_port: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        assert_eq!(limiter.should_log(a, "malformed"), Some(0));
        assert_eq!(limiter.should_log(a, "malformed"), None);
        assert_eq!(limiter.should_log(a_other_port, "malformed"), None);
        assert_eq!(limiter.should_log(a, "too_large"), Some(0));
        assert_eq!(limiter.should_log(b, "malformed"), Some(0));
    }
}
