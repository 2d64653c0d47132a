//! Who the client is, for `--qr-mint-rate`: the TCP peer, unless the peer
//! is a `--trusted-proxy`; then the rightmost `X-Forwarded-For` entry that
//! is not itself a trusted proxy (entries left of it are written by the
//! client and cannot be believed).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Every X-Forwarded-For header, in order, as one list; walk it from
        // the right past trusted hops.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            match parse_entry(entry) {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                // Garbage where a trusted proxy should have written an
                // address: stop at the last hop we could read.
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let s = entry.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("192.0.2.9"), &xff(&["198.51.100.1"])),
            ip("192.0.2.9")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("127.0.0.1"), &xff(&["1.2.3.4"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let t = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        assert_eq!(
            t.client_ip(peer, &xff(&["6.6.6.6, 203.0.113.7, 10.1.2.3"])),
            ip("203.0.113.7")
        );
        // Several headers form one list.
        assert_eq!(
            t.client_ip(peer, &xff(&["6.6.6.6", "203.0.113.8"])),
            ip("203.0.113.8")
        );
        assert_eq!(
            t.client_ip(peer, &xff(&["[2001:db8::5]:443"])),
            ip("2001:db8::5")
        );
        assert_eq!(
            t.client_ip(peer, &xff(&["203.0.113.9:1234"])),
            ip("203.0.113.9")
        );
        // No header, or only trusted hops: the last hop seen.
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(t.client_ip(peer, &xff(&["10.0.0.1"])), ip("10.0.0.1"));
        // Garbage stops the walk.
        assert_eq!(t.client_ip(peer, &xff(&["1.1.1.1, nonsense"])), peer);
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let t = proxies(&["127.0.0.1/32"]);
        assert_eq!(
            t.client_ip(ip("::ffff:127.0.0.1"), &xff(&["::ffff:192.0.2.1"])),
            ip("192.0.2.1")
        );
    }
}
