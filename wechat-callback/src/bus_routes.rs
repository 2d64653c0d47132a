//! `--notify-addr`: which gateway node's bus gets a scan. The list's
//! entries are `ADDR` or `N=ADDR`; a scan for fd goes to node `fd >> 27`
//! ([`protocol::fd`]); a bare `ADDR` serves every node without an entry of
//! its own (so a single bare `ADDR` serves them all). One pipelined,
//! reconnecting [`BusClient`] per distinct address.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use protocol::fd::{Fd, MAX_NODE_ID};

use crate::bus_client::BusClient;

/// Most entries in the list (one per node, plus the bare default).
const MAX_ENTRIES: usize = MAX_NODE_ID as usize + 2;

/// The parsed `--notify-addr` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyAddrs {
    /// The bare `ADDR`, for nodes without an entry.
    default: Option<String>,
    nodes: BTreeMap<u8, String>,
}

impl NotifyAddrs {
    /// Parses `ADDR` or `N=ADDR` entries, comma-separated. An `ADDR` is
    /// `host:port`.
    pub fn parse(list: &str) -> Result<NotifyAddrs, String> {
        let mut default = None;
        let mut nodes = BTreeMap::new();
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        if entries.len() > MAX_ENTRIES {
            return Err(format!("at most {MAX_ENTRIES} entries"));
        }
        for entry in entries {
            if entry.is_empty() {
                return Err("an empty entry".into());
            }
            match entry.split_once('=') {
                Some((n, addr)) => {
                    let node: u8 = n
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_NODE_ID)
                        .ok_or_else(|| {
                            format!("`{entry}`: the node must be a number from 0 to {MAX_NODE_ID}")
                        })?;
                    let addr = check_addr(addr.trim())?;
                    if nodes.insert(node, addr).is_some() {
                        return Err(format!("node {node} is listed twice"));
                    }
                }
                None => {
                    if default.replace(check_addr(entry)?).is_some() {
                        return Err(
                            "more than one bare ADDR: name each node's address with N=ADDR".into(),
                        );
                    }
                }
            }
        }
        Ok(NotifyAddrs { default, nodes })
    }

    /// The bus address of `node`, if any.
    pub fn addr(&self, node: u8) -> Option<&str> {
        self.nodes
            .get(&node)
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

impl fmt::Display for NotifyAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.default.iter().cloned().collect();
        parts.extend(self.nodes.iter().map(|(n, a)| format!("{n}={a}")));
        f.write_str(&parts.join(","))
    }
}

/// `host:port` with a port number and a non-empty host.
fn check_addr(addr: &str) -> Result<String, String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(addr.to_string())
        }
        _ => Err(format!("`{addr}` is not host:port")),
    }
}

/// One bus client per node that has an address.
#[derive(Clone)]
pub struct BusRoutes {
    clients: Vec<Option<BusClient>>,
}

impl BusRoutes {
    /// Starts a client for each distinct address; nodes sharing one share
    /// its connection.
    pub fn start(addrs: &NotifyAddrs, io_timeout: Duration) -> BusRoutes {
        let mut by_addr: BTreeMap<&str, BusClient> = BTreeMap::new();
        let clients = (0..=MAX_NODE_ID)
            .map(|node| {
                addrs.addr(node).map(|a| {
                    by_addr
                        .entry(a)
                        .or_insert_with(|| BusClient::start(a.to_string(), io_timeout))
                        .clone()
                })
            })
            .collect();
        BusRoutes { clients }
    }

    /// The client for the gateway node holding `fd`.
    pub fn for_fd(&self, fd: Fd) -> Option<&BusClient> {
        self.clients.get(usize::from(fd.node()))?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_bare_address_serves_every_node() {
        let a = NotifyAddrs::parse("127.0.0.1:9999").unwrap();
        for n in 0..=MAX_NODE_ID {
            assert_eq!(a.addr(n), Some("127.0.0.1:9999"));
        }
    }

    #[test]
    fn nodes_get_their_own_address_and_others_none() {
        let a = NotifyAddrs::parse("0=10.0.0.11:9999, 1=gw1.internal:9999").unwrap();
        assert_eq!(a.addr(0), Some("10.0.0.11:9999"));
        assert_eq!(a.addr(1), Some("gw1.internal:9999"));
        assert_eq!(a.addr(2), None);
        assert_eq!(a.to_string(), "0=10.0.0.11:9999,1=gw1.internal:9999");
        let mixed = NotifyAddrs::parse("3=h3:1,h:2").unwrap();
        assert_eq!((mixed.addr(3), mixed.addr(4)), (Some("h3:1"), Some("h:2")));
        let v6 = NotifyAddrs::parse("[::1]:9999").unwrap();
        assert_eq!(v6.addr(0), Some("[::1]:9999"));
    }

    #[test]
    fn bad_lists_are_refused_saying_why() {
        for (list, why) in [
            ("", "empty"),
            ("a:1,,b:2", "empty"),
            ("16=h:1", "0 to 15"),
            ("x=h:1", "0 to 15"),
            ("0=h:1,0=h:2", "twice"),
            ("h:1,h:2", "more than one bare"),
            ("h", "host:port"),
            ("h:0", "host:port"),
            ("h:99999", "host:port"),
            ("1=:80", "host:port"),
        ] {
            let e = NotifyAddrs::parse(list).unwrap_err();
            assert!(e.contains(why), "{list:?}: {e}");
        }
    }

    #[tokio::test]
    async fn routes_follow_the_fd_node() {
        let a = NotifyAddrs::parse("0=h0:1,2=h2:1").unwrap();
        let routes = BusRoutes::start(&a, Duration::from_millis(100));
        let fd = |node| Fd::new(node, 1 << 20).unwrap();
        assert!(routes.for_fd(fd(0)).is_some());
        assert!(routes.for_fd(fd(1)).is_none());
        assert!(routes.for_fd(fd(2)).is_some());
    }
}
