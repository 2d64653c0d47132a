//! Per-client-IP limits (IPv6 per /64, since one subscriber usually holds
//! a whole /64):
//! - `--qr-mint-rate` ([`MintLimiter`]): a token bucket per client IP so
//!   one visitor cannot drain the account's daily quota of temporary QR
//!   codes. The map is bounded ([`MAX_BUCKETS`]); full (idle) buckets are
//!   evicted, because a full bucket is the same as no bucket.
//! - `--max-connections-per-ip` ([`ConnLimiter`]): open WebSockets per
//!   client IP, so one client cannot take every browser slot. The map holds
//!   only addresses with open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most client IPs tracked at once. When every tracked IP is still
/// refilling, a new IP is refused (fail closed: the WeChat quota is the
/// thing being protected).
pub const MAX_BUCKETS: usize = 65_536;

/// Per-IP QR mint budget. Minting is not the hot path (one call per code,
/// next to a WeChat API round trip), so one mutex is enough.
pub struct MintLimiter {
    /// Tokens per minute, which is also the bucket size; 0 = unlimited.
    per_minute: u32,
    max_buckets: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl MintLimiter {
    pub fn new(per_minute: u32) -> MintLimiter {
        MintLimiter::with_capacity(per_minute, MAX_BUCKETS)
    }

    /// [`MintLimiter::new`] with a given bound on the map (for tests).
    pub fn with_capacity(per_minute: u32, max_buckets: usize) -> MintLimiter {
        MintLimiter {
            per_minute,
            max_buckets: max_buckets.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; `false` when its budget is spent.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let key = bucket_key(ip);
        let cap = f64::from(self.per_minute);
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&key) && map.len() >= self.max_buckets {
            self.evict_full(&mut map, now);
            if map.len() >= self.max_buckets {
                return false;
            }
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: cap,
            last: now,
        });
        bucket.refill(cap, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        self.evict_full(&mut map, now);
        map.len()
    }

    fn evict_full(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let cap = f64::from(self.per_minute);
        map.retain(|_, b| {
            let mut b = *b;
            b.refill(cap, now);
            b.tokens < cap
        });
        if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
            map.shrink_to_fit();
        }
    }
}

impl Bucket {
    fn refill(&mut self, cap: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        self.last = now;
    }
}

/// The address a bucket is kept under: IPv4 as is, IPv6 by its /64.
/// Open WebSocket connections per client IP.
pub struct ConnLimiter {
    /// 0 = unlimited.
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnLimiter {
    pub fn new(max: u32) -> ConnLimiter {
        ConnLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`; `false` (nothing counted) when it
    /// already has the most allowed.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let mut map = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(bucket_key(ip)).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                map.remove(&bucket_key(ip));
            }
            return false;
        }
        *n += 1;
        true
    }

    /// A connection counted by [`ConnLimiter::try_acquire`] has closed.
    pub fn release(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let key = bucket_key(ip);
        let mut map = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&key);
            }
        }
        if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
            map.shrink_to_fit();
        }
    }

    /// Client addresses (or /64s) with open connections.
    pub fn tracked(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_per_ip_are_capped_and_given_back() {
        let l = ConnLimiter::new(2);
        let a = ip("203.0.113.1");
        assert!(l.try_acquire(a) && l.try_acquire(a));
        assert!(!l.try_acquire(a));
        assert!(l.try_acquire(ip("203.0.113.2")));
        // One /64 is one client.
        assert!(l.try_acquire(ip("2001:db8::1")) && l.try_acquire(ip("2001:db8::2")));
        assert!(!l.try_acquire(ip("2001:db8::ffff")));
        assert!(l.try_acquire(ip("2001:db8:0:1::1")));
        l.release(a);
        assert!(l.try_acquire(a));
        for _ in 0..2 {
            l.release(a);
        }
        l.release(ip("203.0.113.2"));
        assert_eq!(l.tracked(), 2, "only the IPv6 /64s still hold connections");
        assert!(ConnLimiter::new(0).try_acquire(a));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn budget_per_ip_refills_over_a_minute() {
        let l = MintLimiter::new(2);
        let t = Instant::now();
        assert!(l.try_take(ip("10.0.0.1"), t));
        assert!(l.try_take(ip("10.0.0.1"), t));
        assert!(!l.try_take(ip("10.0.0.1"), t));
        assert!(l.try_take(ip("10.0.0.2"), t));
        // One token every 30 s at 2/minute.
        assert!(!l.try_take(ip("10.0.0.1"), t + Duration::from_secs(29)));
        assert!(l.try_take(ip("10.0.0.1"), t + Duration::from_secs(31)));
    }

    #[test]
    fn zero_means_unlimited() {
        let l = MintLimiter::new(0);
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.try_take(ip("10.0.0.1"), t)));
    }

    #[test]
    fn ipv6_shares_a_bucket_per_64() {
        let l = MintLimiter::new(1);
        let t = Instant::now();
        assert!(l.try_take(ip("2001:db8:1:2::1"), t));
        assert!(!l.try_take(ip("2001:db8:1:2:ffff::9"), t));
        assert!(l.try_take(ip("2001:db8:1:3::1"), t));
        // IPv4-mapped addresses count as their IPv4 address.
        assert!(l.try_take(ip("192.0.2.1"), t));
        assert!(!l.try_take(ip("::ffff:192.0.2.1"), t));
    }

    #[test]
    fn the_map_is_bounded_and_evicts_idle_buckets() {
        let l = MintLimiter::with_capacity(60, 2);
        let t = Instant::now();
        assert!(l.try_take(ip("10.0.0.1"), t));
        assert!(l.try_take(ip("10.0.0.2"), t));
        // Both still refilling: a third IP is refused.
        assert!(!l.try_take(ip("10.0.0.3"), t));
        // A second later both are full again and get evicted.
        let later = t + Duration::from_secs(1);
        assert!(l.try_take(ip("10.0.0.3"), later));
        assert_eq!(l.sweep(later), 1);
        assert_eq!(l.sweep(later + Duration::from_secs(1)), 0);
    }
}
