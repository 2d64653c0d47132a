//! The registry: `fd` → browser connection (its task's waker, its push
//! queue, its current QR ticket's digest and whether it is spent), shared
//! by every WebSocket task and every bus connection.
//!
//! **Layout.** [`SHARDS`] shards, each a `std::sync::Mutex<HashMap>`
//! (cache-line aligned so neighbouring locks do not false-share), picked by
//! the fd's low bits. fds are drawn at random, so the shards fill evenly and
//! a bus line touches one lock for a few hundred nanoseconds; there is no
//! global lock on the hot path and no `.await` while a lock is held. A
//! plain sharded mutex beats an `RwLock` here: every bus lookup that
//! succeeds also writes (it spends a ticket or queues a push).
//!
//! **Push queue.** Each connection's pending pushes live in its map entry
//! (a `Vec`, allocated only while something is pending) and the
//! connection task is woken through the waker it left there
//! ([`Registry::poll_wake`]; no `Notify` allocation per connection). At most
//! [`PUSH_QUEUE_CAPACITY`] pushes wait; past that the bus gets
//! `client_busy` and nothing is buffered (slow consumers are refused, not
//! buffered, and the WebSocket task closes a socket whose writes stall).
//!
//! **Delivery.** Each queued push carries a [`Receipt`] that the
//! connection task settles once the frame is written to the socket (or
//! not); the bus answers `ok` only for a written frame (see `delivery`). A
//! push dropped unwritten (the page went away, the write failed) settles
//! as failed, and the bus answers `no_such_client`: a login is never
//! counted for a page that did not get it.
//!
//! **Re-push.** A login whose bus line was written but whose answer never
//! reached the callback (the callback instance died) is retried by
//! another instance with the same ticket and openid, marked `resend`. The
//! ticket is spent by then, so the registry remembers who spent it (a
//! digest of the openid, in a side map holding only logged-in pages, so an
//! idle entry stays small): a `resend` of the same ticket for the same
//! openid is pushed again and answered `ok` once written; without
//! `resend`, or for any other openid, it is `ticket_mismatch`.
//!
//! **fd reuse.** A closed connection whose code can still be scanned
//! leaves a tombstone until that code's expiry plus [`TOMBSTONE_GRACE`];
//! drawing skips live fds and live tombstones, so a late scan event can
//! never reach a different browser. [`Registry::sweep`] drops dead
//! tombstones.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use protocol::bus::BusError;
use protocol::fd::Fd;
use protocol::ws::ServerFrame;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::delivery::{self, Receipt, Verdict};

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

/// Most pushes waiting for one browser; past it the bus answers
/// `client_busy`.
pub const PUSH_QUEUE_CAPACITY: usize = 4;

/// How long after a code's expiry its fd stays reserved: a scan made just
/// before expiry may reach the callback (and the bus) a little later, and
/// WeChat retries callbacks for about 15 s.
pub const TOMBSTONE_GRACE: Duration = Duration::from_secs(30);

/// The largest fd drawn. WeChat documents a temporary code's `scene_id`
/// as a "32-bit non-zero integer" and some of its backends treat it as
/// signed, so fds stay within `1..=i32::MAX` (`protocol::fd`'s layout:
/// node id in the top 4 bits, 27 random bits, never below 2^20).
pub const MAX_FD: u32 = 0x7FFF_FFFF;

/// How many random draws [`Registry::register`] tries before giving up
/// (only reachable with a broken random source or ~4 billion fds in use).
const MAX_DRAWS: usize = 64;

/// The fd → connection map.
pub struct Registry {
    shards: Box<[Shard]>,
    /// This gateway's `--node-id`, the top bits of every fd it draws.
    node: u8,
    /// Tombstone times are milliseconds since this instant.
    epoch: Instant,
    /// Who spent each spent ticket (digest of the openid), for re-pushes.
    /// Locked after a shard, never before.
    spent_by: Mutex<HashMap<u32, TicketDigest, BuildHasherDefault<FdHasher>>>,
}

#[repr(align(64))]
struct Shard(Mutex<HashMap<u32, Slot, BuildHasherDefault<FdHasher>>>);

/// A live entry is boxed so a tombstone costs a small map slot (a
/// 24-byte bucket with its key) rather than a whole entry's: after heavy
/// churn the map holds up to one tombstone per connection closed in the
/// last expiry period.
enum Slot {
    Live(Box<Entry>),
    /// A closed connection's fd, reserved until `until_ms` (milliseconds
    /// since the registry's epoch, rounded up).
    Tombstone {
        until_ms: u64,
    },
}

struct Entry {
    /// The connection task's waker, stored by [`Registry::poll_wake`]
    /// while the task waits (no separate `Arc<Notify>` per connection).
    waker: Option<Waker>,
    /// Set by [`Registry::wake_all`]: wake the task even with no push.
    kicked: bool,
    /// The current code's ticket, as its SHA-1: a ticket is ~100 bytes of
    /// text that would be a second allocation per idle connection, and
    /// the registry only ever compares it.
    ticket: Option<TicketDigest>,
    spent: bool,
    /// When the last code minted for this fd can no longer be scanned
    /// (plus [`TOMBSTONE_GRACE`]), as a tombstone keeps it: milliseconds
    /// since the registry's epoch, rounded up; 0 = never minted.
    reserved_until_ms: u64,
    /// Pushes waiting for the task; boxed, so an idle entry pays one
    /// pointer for it (the entry stays within a 72-byte allocation). The
    /// extra allocation happens only while pushes wait; measured: a plain
    /// `Vec` here costs every idle page 16 bytes (BENCHMARKS.md).
    #[allow(clippy::box_collection)]
    queue: Option<Box<Vec<Push>>>,
    /// The answer line to a `scanned` request (the page's address and
    /// User-Agent), shared by every page with the same pair.
    page: Option<Arc<[u8]>>,
}

/// A push waiting for its connection task.
pub struct Push {
    pub frame: ServerFrame,
    /// Settled by the connection task once the frame is written (or not).
    pub receipt: Receipt,
}

/// A push accepted by [`Registry::push`].
pub struct Pushed {
    /// Whether the frame reached the page's socket.
    pub verdict: Verdict,
    /// The page's `scanned` answer line, if one was set.
    pub page: Option<Arc<[u8]>>,
}

/// What the registry keeps of a ticket.
type TicketDigest = [u8; 20];

fn digest(ticket: &str) -> TicketDigest {
    Sha1::digest(ticket.as_bytes()).into()
}

/// Sizes reported by [`Registry::sweep`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub live: usize,
    pub tombstones: usize,
    /// Whether a shard's map gave back spare capacity in this sweep.
    pub shrunk: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::for_node(0)
    }

    /// The registry of gateway node `node` (see `protocol::fd`).
    pub fn for_node(node: u8) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Shard(Mutex::default())).collect(),
            node,
            epoch: Instant::now(),
            spent_by: Mutex::default(),
        }
    }

    /// A reservation's end as milliseconds since the epoch, rounded up,
    /// so that with [`Registry::now_ms`] (rounded down) it never ends
    /// early (at most 1 ms late).
    fn until_ms(&self, until: Instant) -> u64 {
        let d = until.saturating_duration_since(self.epoch);
        u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.epoch);
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, fd: u32) -> MutexGuard<'_, HashMap<u32, Slot, BuildHasherDefault<FdHasher>>> {
        // fds are random, so their low bits spread evenly over the shards.
        let i = (fd as usize) & (SHARDS - 1);
        self.shards[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws a random login fd of this node (`protocol::fd::Fd::random`)
    /// that is neither in use nor reserved and registers a connection
    /// under it. `None` only if no free fd was found.
    pub fn register(&self, now: Instant) -> Option<Fd> {
        let node = self.node;
        self.register_with(now, || Fd::random(node).map_or(0, Fd::get))
    }

    /// [`Registry::register`] with a given source of candidate fds (a
    /// candidate that is not a login fd is skipped).
    pub fn register_with(&self, now: Instant, mut draw: impl FnMut() -> u32) -> Option<Fd> {
        for _ in 0..MAX_DRAWS {
            let Some(login_fd) = Fd::from_scene(draw()) else {
                continue;
            };
            let fd = login_fd.get();
            let mut shard = self.shard(fd);
            let free = match shard.get(&fd) {
                None => true,
                Some(Slot::Live(_)) => false,
                Some(Slot::Tombstone { until_ms }) => *until_ms <= self.now_ms(now),
            };
            if free {
                shard.insert(
                    fd,
                    Slot::Live(Box::new(Entry {
                        waker: None,
                        kicked: false,
                        ticket: None,
                        spent: false,
                        reserved_until_ms: 0,
                        queue: None,
                        page: None,
                    })),
                );
                return Some(login_fd);
            }
        }
        None
    }

    /// Records a freshly minted code for `fd`: its ticket becomes the
    /// current one (unspent), and the fd stays reserved until
    /// `scannable_until` + [`TOMBSTONE_GRACE`].
    pub fn set_code(&self, fd: Fd, ticket: &str, scannable_until: Instant) {
        let fd = fd.get();
        if let Some(Slot::Live(e)) = self.shard(fd).get_mut(&fd) {
            e.ticket = Some(digest(ticket));
            if std::mem::take(&mut e.spent) {
                self.forget_spender(fd);
            }
            let until_ms = self.until_ms(scannable_until + TOMBSTONE_GRACE);
            e.reserved_until_ms = e.reserved_until_ms.max(until_ms);
        }
    }

    /// Keeps the `scanned` answer line describing the page on `fd`.
    pub fn set_page(&self, fd: Fd, page: Arc<[u8]>) {
        let fd = fd.get();
        if let Some(Slot::Live(e)) = self.shard(fd).get_mut(&fd) {
            e.page = Some(page);
        }
    }

    /// Takes every push waiting for `fd`.
    pub fn take_pushes(&self, fd: Fd) -> Vec<Push> {
        let fd = fd.get();
        match self.shard(fd).get_mut(&fd) {
            Some(Slot::Live(e)) => e.queue.take().map(|q| *q).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Ready when the task on `fd` has pushes waiting or was kicked by
    /// [`Registry::wake_all`]; otherwise keeps `cx`'s waker for the next
    /// push. Checking and storing happen under the shard lock that
    /// [`Registry::push`] takes, so no wake-up is lost. Never ready for
    /// an fd that is not registered (nothing can be pushed to it).
    pub fn poll_wake(&self, fd: Fd, cx: &mut Context<'_>) -> Poll<()> {
        let fd = fd.get();
        let mut shard = self.shard(fd);
        let Some(Slot::Live(e)) = shard.get_mut(&fd) else {
            return Poll::Pending;
        };
        if e.queue.as_ref().is_some_and(|q| !q.is_empty()) || std::mem::take(&mut e.kicked) {
            return Poll::Ready(());
        }
        match &mut e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Queues `frame` for the browser on `fd` and wakes its task.
    ///
    /// With a `ticket`, it must be the connection's current unspent ticket,
    /// and a `scan_success` push spends it (a `scanned` one spends
    /// nothing). Errors: `no_such_client`, `ticket_mismatch`,
    /// `client_busy` (queue full; nothing is spent).
    pub fn push(
        &self,
        fd: Fd,
        ticket: Option<&str>,
        resend: bool,
        frame: ServerFrame,
    ) -> Result<Pushed, BusError> {
        let fd = fd.get();
        // The openid of a login: a spent ticket is pushed again for it.
        let spender = match &frame {
            ServerFrame::ScanSuccess { openid, .. } if !openid.is_empty() => Some(digest(openid)),
            _ => None,
        };
        let spends = matches!(frame, ServerFrame::ScanSuccess { .. });
        // Hashed before the lock is taken.
        let wanted = ticket.map(digest);
        let mut shard = self.shard(fd);
        let Some(Slot::Live(e)) = shard.get_mut(&fd) else {
            return Err(BusError::NoSuchClient);
        };
        if let Some(wanted) = &wanted {
            let current = e
                .ticket
                .is_some_and(|current| bool::from(current.ct_eq(wanted)));
            if !current || (e.spent && !(resend && self.spent_by_same(fd, spender.as_ref()))) {
                return Err(BusError::TicketMismatch);
            }
        }
        if e.queue.as_ref().map_or(0, |q| q.len()) >= PUSH_QUEUE_CAPACITY {
            return Err(BusError::ClientBusy);
        }
        if ticket.is_some() && spends && !e.spent {
            e.spent = true;
            if let Some(who) = spender {
                self.spenders().insert(fd, who);
            }
        }
        let (receipt, verdict) = delivery::pair();
        e.queue
            .get_or_insert_with(Default::default)
            .push(Push { frame, receipt });
        if let Some(w) = &e.waker {
            w.wake_by_ref();
        }
        Ok(Pushed {
            verdict,
            page: e.page.clone(),
        })
    }

    fn spenders(&self) -> MutexGuard<'_, HashMap<u32, TicketDigest, BuildHasherDefault<FdHasher>>> {
        self.spent_by.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `fd`'s spent ticket was spent for this openid digest.
    fn spent_by_same(&self, fd: u32, spender: Option<&TicketDigest>) -> bool {
        let Some(spender) = spender else {
            return false;
        };
        self.spenders()
            .get(&fd)
            .is_some_and(|who| bool::from(who.ct_eq(spender)))
    }

    fn forget_spender(&self, fd: u32) {
        self.spenders().remove(&fd);
    }

    /// Unregisters `fd`: it becomes a tombstone while its last code can
    /// still be scanned, else it is freed. Returns pushes that were still
    /// waiting (dropping them tells their bus lines `no_such_client`).
    pub fn remove(&self, fd: Fd, now: Instant) -> Vec<Push> {
        let fd = fd.get();
        let mut shard = self.shard(fd);
        let Some(Slot::Live(e)) = shard.remove(&fd) else {
            return Vec::new();
        };
        if e.spent {
            self.forget_spender(fd);
        }
        if e.reserved_until_ms > self.now_ms(now) {
            shard.insert(
                fd,
                Slot::Tombstone {
                    until_ms: e.reserved_until_ms,
                },
            );
        }
        e.queue.map(|q| *q).unwrap_or_default()
    }

    /// Wakes every connection task (at shutdown: each then sees the
    /// cancelled token and closes).
    pub fn wake_all(&self) {
        for shard in self.shards.iter() {
            let mut map = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in map.values_mut() {
                if let Slot::Live(e) = slot {
                    e.kicked = true;
                    if let Some(w) = &e.waker {
                        w.wake_by_ref();
                    }
                }
            }
        }
    }

    /// Drops tombstones whose time is up and gives back spare map capacity.
    pub fn sweep(&self, now: Instant) -> Counts {
        let mut counts = Counts::default();
        let now_ms = self.now_ms(now);
        for shard in self.shards.iter() {
            let mut map = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, slot| match slot {
                Slot::Live(_) => true,
                Slot::Tombstone { until_ms } => *until_ms > now_ms,
            });
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
                counts.shrunk = true;
            }
            for slot in map.values() {
                match slot {
                    Slot::Live(_) => counts.live += 1,
                    Slot::Tombstone { .. } => counts.tombstones += 1,
                }
            }
        }
        counts
    }

    /// Live connections and tombstones, counted without sweeping.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for shard in self.shards.iter() {
            let map = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in map.values() {
                match slot {
                    Slot::Live(_) => counts.live += 1,
                    Slot::Tombstone { .. } => counts.tombstones += 1,
                }
            }
        }
        counts
    }
}

/// A multiplicative (Fibonacci) hash for u32 keys: fds are random and
/// chosen by the gateway, so SipHash's flooding protection buys nothing,
/// while the multiply spreads them over hashbrown's top control bits.
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(user: &str) -> ServerFrame {
        ServerFrame::ScanSuccess {
            user: user.into(),
            openid: String::new(),
            token: None,
        }
    }

    fn push(
        r: &Registry,
        fd: Fd,
        ticket: Option<&str>,
        frame: ServerFrame,
    ) -> Result<(), BusError> {
        r.push(fd, ticket, false, frame).map(drop)
    }

    fn resend(r: &Registry, fd: Fd, ticket: &str, frame: ServerFrame) -> Result<(), BusError> {
        r.push(fd, Some(ticket), true, frame).map(drop)
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_reports_whether_it_was_written() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[3])).unwrap();
        r.set_code(fd, "t", now + Duration::from_secs(60));
        r.set_page(fd, Arc::from(&b"page"[..]));
        let soon = || tokio::time::Instant::now() + delivery::PATIENCE;
        // `scanned` spends nothing and carries the page's answer.
        let scanned = r
            .push(
                fd,
                Some("t"),
                false,
                ServerFrame::Scanned { user: "a".into() },
            )
            .unwrap();
        assert_eq!(scanned.page.as_deref(), Some(&b"page"[..]));
        let mut push = r.take_pushes(fd).remove(0);
        assert!(push.receipt.begin());
        push.receipt.finish(true);
        assert_eq!(
            scanned.verdict.wait(soon()).await,
            delivery::Delivered::Written
        );
        // A push the page never got is reported as not written.
        let lost = r.push(fd, Some("t"), false, scan("a")).unwrap().verdict;
        assert_eq!(r.remove(fd, now).len(), 1);
        assert_eq!(lost.wait(soon()).await, delivery::Delivered::Gone);
    }

    /// Candidate fds `f(v)` for each `v` (0 stays 0: not a login fd).
    fn seq(values: &[u32]) -> impl FnMut() -> u32 + '_ {
        let mut i = 0;
        move || {
            let v = values[i % values.len()];
            i += 1;
            if v == 0 { 0 } else { f(v).get() }
        }
    }

    /// The login fd of node 0 with random part `MIN_RANDOM + v`.
    fn f(v: u32) -> Fd {
        Fd::new(0, protocol::fd::MIN_RANDOM + v).expect("a login fd")
    }

    #[test]
    fn draws_skip_zero_live_and_reserved_fds() {
        let r = Registry::new();
        let now = Instant::now();
        assert_eq!(r.register_with(now, seq(&[0, 7])), Some(f(7)));
        assert_eq!(r.register_with(now, seq(&[7, 7, 9])), Some(f(9)));
        // 9 minted a code and closed: reserved until expiry + grace.
        r.set_code(f(9), "t9", now + Duration::from_secs(10));
        r.remove(f(9), now);
        assert_eq!(
            r.counts(),
            Counts {
                live: 1,
                tombstones: 1,
                shrunk: false
            }
        );
        assert_eq!(r.register_with(now, seq(&[9, 11])), Some(f(11)));
        let later = now + Duration::from_secs(10) + TOMBSTONE_GRACE + Duration::from_millis(1);
        assert_eq!(
            r.register_with(later - Duration::from_millis(2), seq(&[9])),
            None,
            "not a moment early"
        );
        assert_eq!(r.register_with(later, seq(&[9])), Some(f(9)));
        // 7 never had a code: freed at once.
        r.remove(f(7), now);
        assert_eq!(r.register_with(now, seq(&[7])), Some(f(7)));
        assert_eq!(r.register_with(now, seq(&[7, 9, 11])), None);
    }

    #[test]
    fn real_draws_are_random_distinct_and_in_range() {
        let r = Registry::new();
        let now = Instant::now();
        let fds: Vec<u32> = (0..2000).map(|_| r.register(now).unwrap().get()).collect();
        assert!(fds.iter().all(|&fd| (1..=MAX_FD).contains(&fd)));
        assert!(
            fds.iter()
                .all(|&fd| Fd::from_scene(fd).is_some_and(|f| f.node() == 0))
        );
        let node7 = Registry::for_node(7);
        let fd = node7.register(now).unwrap();
        assert_eq!(fd.node(), 7);
        let distinct: std::collections::HashSet<_> = fds.iter().collect();
        assert_eq!(distinct.len(), fds.len());
        // Not a counter.
        assert!(fds.windows(2).any(|w| w[1] != w[0].wrapping_add(1)));
        assert_eq!(r.counts().live, 2000);
    }

    #[test]
    fn a_live_entry_fits_a_72_byte_allocation() {
        // glibc serves up to 72 requested bytes from an 80-byte chunk; one
        // more byte costs 16 more for every idle connection.
        assert!(
            std::mem::size_of::<Entry>() <= 72,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn a_tombstone_is_a_small_map_slot() {
        // Live entries are boxed; a slot is a u64 plus a tag.
        assert!(
            std::mem::size_of::<Slot>() <= 16,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    /// After a peak, the sweep gives the maps' spare capacity back and
    /// says so (the gateway then has the allocator return the memory).
    #[test]
    fn sweep_shrinks_maps_emptied_after_a_peak() {
        let r = Registry::new();
        let now = Instant::now();
        // 64 shards: some 500 entries each.
        let fds: Vec<Fd> = (0..32_768).filter_map(|_| r.register(now)).collect();
        assert_eq!(fds.len(), 32_768);
        assert!(!r.sweep(now).shrunk, "full maps are not shrunk");
        for fd in fds {
            r.remove(fd, now);
        }
        let swept = r.sweep(now);
        assert_eq!((swept.live, swept.tombstones), (0, 0));
        assert!(swept.shrunk);
        assert!(!r.sweep(now).shrunk, "shrunk once");
    }

    #[test]
    fn sweep_drops_dead_tombstones() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[5])).unwrap();
        r.set_code(fd, "t", now);
        r.remove(fd, now);
        assert_eq!(r.sweep(now).tombstones, 1);
        assert_eq!(
            r.sweep(now + TOMBSTONE_GRACE - Duration::from_millis(1))
                .tombstones,
            1
        );
        assert_eq!(
            r.sweep(now + TOMBSTONE_GRACE + Duration::from_millis(1))
                .tombstones,
            0
        );
        assert_eq!(push(&r, fd, None, scan("a")), Err(BusError::NoSuchClient));
    }

    #[test]
    fn tickets_are_checked_and_spent() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[3])).unwrap();
        assert_eq!(
            push(&r, fd, Some("t1"), scan("a")),
            Err(BusError::TicketMismatch)
        );
        r.set_code(fd, "t1", now + Duration::from_secs(60));
        assert_eq!(
            push(&r, fd, Some("t0"), scan("a")),
            Err(BusError::TicketMismatch)
        );
        assert_eq!(push(&r, fd, Some("t1"), scan("a")), Ok(()));
        assert_eq!(
            push(&r, fd, Some("t1"), scan("a")),
            Err(BusError::TicketMismatch)
        );
        // Without a ticket nothing is checked or spent.
        assert_eq!(push(&r, fd, None, scan("b")), Ok(()));
        assert_eq!(r.take_pushes(fd).len(), 2);
        // A new code is a new, unspent ticket.
        r.set_code(fd, "t2", now + Duration::from_secs(60));
        assert_eq!(push(&r, fd, Some("t2"), scan("c")), Ok(()));
        assert_eq!(
            push(&r, f(99), None, scan("x")),
            Err(BusError::NoSuchClient)
        );
    }

    fn login(openid: &str) -> ServerFrame {
        ServerFrame::ScanSuccess {
            user: "A".into(),
            openid: openid.into(),
            token: None,
        }
    }

    #[test]
    fn a_spent_ticket_is_pushed_again_for_the_same_user_only() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[3])).unwrap();
        r.set_code(fd, "t1", now + Duration::from_secs(60));
        assert_eq!(push(&r, fd, Some("t1"), login("o-alice")), Ok(()));
        // The same line again is refused: the code logs nobody in again.
        assert_eq!(
            push(&r, fd, Some("t1"), login("o-alice")),
            Err(BusError::TicketMismatch)
        );
        // The callback that sent it died; another instance resends it.
        assert_eq!(resend(&r, fd, "t1", login("o-alice")), Ok(()));
        assert_eq!(
            resend(&r, fd, "t1", login("o-mallory")),
            Err(BusError::TicketMismatch)
        );
        // A login without an openid is never resent.
        assert_eq!(
            resend(&r, fd, "t1", login("")),
            Err(BusError::TicketMismatch)
        );
        assert_eq!(r.take_pushes(fd).len(), 2);
        // A new code forgets who spent the old one.
        r.set_code(fd, "t2", now + Duration::from_secs(60));
        assert_eq!(
            resend(&r, fd, "t1", login("o-alice")),
            Err(BusError::TicketMismatch)
        );
        assert!(r.spenders().is_empty());
        assert_eq!(push(&r, fd, Some("t2"), login("o-bob")), Ok(()));
        r.remove(fd, now);
        assert!(
            r.spenders().is_empty(),
            "a closed page leaves nothing behind"
        );
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn pushes_and_shutdown_wake_the_waiting_task() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[3])).unwrap();
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || count.0.load(std::sync::atomic::Ordering::SeqCst);

        // Nothing waiting: the waker is kept; a push wakes it, and the
        // next poll is ready until the pushes are taken.
        assert!(r.poll_wake(fd, &mut cx).is_pending());
        assert_eq!(woken(), 0);
        assert_eq!(push(&r, fd, None, scan("a")), Ok(()));
        assert_eq!(woken(), 1);
        assert!(r.poll_wake(fd, &mut cx).is_ready());
        assert_eq!(r.take_pushes(fd).len(), 1);
        assert!(r.poll_wake(fd, &mut cx).is_pending());

        // wake_all wakes it once, and the kick is consumed by one poll.
        r.wake_all();
        assert_eq!(woken(), 2);
        assert!(r.poll_wake(fd, &mut cx).is_ready());
        assert!(r.poll_wake(fd, &mut cx).is_pending());

        // An fd that is not registered never becomes ready.
        assert!(
            r.poll_wake(Fd::from_scene(fd.get() ^ 1).unwrap(), &mut cx)
                .is_pending()
        );
    }

    #[test]
    fn a_full_queue_refuses_without_spending() {
        let r = Registry::new();
        let now = Instant::now();
        let fd = r.register_with(now, seq(&[3])).unwrap();
        r.set_code(fd, "t", now);
        for _ in 0..PUSH_QUEUE_CAPACITY {
            assert_eq!(push(&r, fd, None, scan("a")), Ok(()));
        }
        assert_eq!(
            push(&r, fd, Some("t"), scan("a")),
            Err(BusError::ClientBusy)
        );
        assert_eq!(r.take_pushes(fd).len(), PUSH_QUEUE_CAPACITY);
        // The refused push did not spend the ticket.
        assert_eq!(push(&r, fd, Some("t"), scan("a")), Ok(()));
        assert_eq!(r.remove(fd, now).len(), 1);
    }
}
