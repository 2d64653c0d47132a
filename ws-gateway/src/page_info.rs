//! What the bus answers to `scanned` about a page: its client address and
//! User-Agent, as a ready answer line. Lines are interned: the pages of one
//! browser behind one address share a single allocation, so an idle
//! connection pays one pointer for it (the gateway's memory budget is
//! about 2 KiB per idle page).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use protocol::bus::{Answer, MAX_USER_AGENT_CHARS};

/// Interned `scanned` answer lines.
#[derive(Default)]
pub struct PageInfos {
    lines: Mutex<HashSet<Arc<[u8]>>>,
}

impl PageInfos {
    /// The answer line for a page at `ip` with `user_agent` (cut to
    /// [`MAX_USER_AGENT_CHARS`]).
    pub fn line(&self, ip: IpAddr, user_agent: &str) -> Arc<[u8]> {
        let ua: String = user_agent
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT_CHARS)
            .collect();
        let line: Arc<[u8]> = Arc::from(Answer::scanned_line(&ip.to_string(), &ua));
        let mut set = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = set.get(&line) {
            return Arc::clone(existing);
        }
        set.insert(Arc::clone(&line));
        line
    }

    /// Forgets lines no page holds any more; returns how many are kept.
    pub fn sweep(&self) -> usize {
        let mut set = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        set.retain(|l| Arc::strong_count(l) > 1);
        if set.capacity() > 64 && set.len() < set.capacity() / 4 {
            set.shrink_to_fit();
        }
        set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_page_same_line_and_unused_lines_go() {
        let p = PageInfos::default();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let a = p.line(ip, "UA/1");
        let b = p.line(ip, "UA/1");
        assert!(Arc::ptr_eq(&a, &b));
        let c = p.line(ip, &"x".repeat(1000));
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["ip"], "203.0.113.7");
        assert_eq!(
            v["user_agent"].as_str().unwrap().len(),
            MAX_USER_AGENT_CHARS
        );
        drop(c);
        assert_eq!(p.sweep(), 1);
        drop((a, b));
        assert_eq!(p.sweep(), 0);
    }
}
