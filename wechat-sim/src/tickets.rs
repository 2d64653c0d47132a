//! QR tickets: minting them (base64-looking strings that, like WeChat's,
//! now and then hold `+`, `/` or `=`), and a sharded, bounded map from
//! ticket to what the code stands for. Minting is cheap (no rendering);
//! expired tickets are kept a while so a scan can say "expired" rather
//! than "unknown", then swept.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::distr::Alphanumeric;

/// Number of independently locked parts of the map.
const SHARDS: usize = 32;
/// How long an expired ticket is still recognised as "expired".
pub const EXPIRED_MEMORY: Duration = Duration::from_secs(600);
/// Where WeChat's QR contents point.
pub const QR_URL_BASE: &str = "http://weixin.qq.com/q/";
/// Longest temporary code lifetime WeChat allows (30 days).
pub const MAX_EXPIRE_SECONDS: u32 = 2_592_000;
/// Lifetime of a temporary code when `expire_seconds` is not given.
pub const DEFAULT_EXPIRE_SECONDS: u32 = 60;

/// What a QR code carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scene {
    /// `QR_SCENE` / `QR_LIMIT_SCENE`: a non-zero integer.
    Id(u32),
    /// `QR_STR_SCENE` / `QR_LIMIT_STR_SCENE`: a string of 1 to 64 bytes.
    Str(String),
}

impl Scene {
    /// The `EventKey` WeChat sends: `qrscene_<scene>` with a subscribe,
    /// the bare scene with a `SCAN`.
    pub fn event_key(&self, subscribe: bool) -> String {
        let prefix = if subscribe { "qrscene_" } else { "" };
        match self {
            Scene::Id(n) => format!("{prefix}{n}"),
            Scene::Str(s) => format!("{prefix}{s}"),
        }
    }

    pub fn id(&self) -> Option<u32> {
        match self {
            Scene::Id(n) => Some(*n),
            Scene::Str(_) => None,
        }
    }

    pub fn str(&self) -> Option<&str> {
        match self {
            Scene::Id(_) => None,
            Scene::Str(s) => Some(s),
        }
    }
}

/// One QR code.
#[derive(Debug)]
pub struct Ticket {
    pub ticket: Arc<str>,
    pub action_name: &'static str,
    pub scene: Scene,
    /// `None` for permanent codes.
    pub expire_seconds: Option<u32>,
    pub expires_at: Option<Instant>,
    /// The QR content, `http://weixin.qq.com/q/<id>`.
    pub url: String,
}

impl Ticket {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whole seconds left (0 once expired); `None` for permanent codes.
    pub fn expires_in(&self, now: Instant) -> Option<u64> {
        self.expires_at
            .map(|at| at.saturating_duration_since(now).as_secs())
    }
}

/// The result of looking a ticket up.
#[derive(Debug, Clone)]
pub enum Lookup {
    Live(Arc<Ticket>),
    Expired(Arc<Ticket>),
    Unknown,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Arc<str>, Arc<Ticket>>,
    /// Insertion order, for evicting the oldest.
    order: VecDeque<Arc<str>>,
}

impl Shard {
    /// Drops from the front what has expired, and the oldest while full.
    fn make_room(&mut self, cap: usize, now: Instant) {
        while let Some(front) = self.order.front() {
            let evict = self.map.len() >= cap
                || self
                    .map
                    .get(front)
                    .is_none_or(|t| t.expires_at.is_some_and(|at| at + EXPIRED_MEMORY <= now));
            if !evict {
                break;
            }
            if let Some(key) = self.order.pop_front() {
                self.map.remove(&key);
            }
        }
    }
}

/// Every ticket minted, bounded.
#[derive(Debug)]
pub struct TicketStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard_cap: usize,
    minted: AtomicU64,
}

impl TicketStore {
    /// A store holding at most about `cap` tickets.
    pub fn new(cap: usize) -> TicketStore {
        TicketStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard_cap: cap.div_ceil(SHARDS).max(1),
            minted: AtomicU64::new(0),
        }
    }

    fn shard(&self, ticket: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(ticket) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mints a code. `expire_seconds` `None` makes a permanent one.
    pub fn create(
        &self,
        action_name: &'static str,
        scene: Scene,
        expire_seconds: Option<u32>,
        now: Instant,
    ) -> Arc<Ticket> {
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        loop {
            let (ticket, url) = {
                let mut rng = rand::rng();
                (
                    mint_ticket(matches!(n % 3, 0), &mut rng),
                    mint_url(&mut rng),
                )
            };
            let ticket: Arc<str> = Arc::from(ticket);
            let entry = Arc::new(Ticket {
                ticket: ticket.clone(),
                action_name,
                scene: scene.clone(),
                expire_seconds,
                expires_at: expire_seconds.map(|s| now + Duration::from_secs(u64::from(s))),
                url,
            });
            let mut shard = self.shard(&ticket);
            if shard.map.contains_key(&ticket) {
                continue;
            }
            shard.make_room(self.per_shard_cap, now);
            shard.map.insert(ticket.clone(), entry.clone());
            shard.order.push_back(ticket);
            return entry;
        }
    }

    pub fn get(&self, ticket: &str, now: Instant) -> Lookup {
        match self.shard(ticket).map.get(ticket) {
            Some(t) if t.expired(now) => Lookup::Expired(t.clone()),
            Some(t) => Lookup::Live(t.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Forgets tickets that expired more than [`EXPIRED_MEMORY`] ago.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.map.len();
            shard
                .map
                .retain(|_, t| t.expires_at.is_none_or(|at| at + EXPIRED_MEMORY > now));
            if shard.map.len() != before {
                let Shard { map, order } = &mut *shard;
                order.retain(|k| map.contains_key(k));
            }
        }
    }

    /// Tickets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tickets minted since start.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }
}

/// A ticket shaped like WeChat's (`gQ...`, 84 base64 characters). With
/// `special`, it holds at least one `+`, one `/` and a trailing `=`; else
/// only letters and digits.
pub fn mint_ticket(special: bool, rng: &mut impl Rng) -> String {
    if special {
        let mut bytes = [0u8; 62];
        rng.fill(&mut bytes[..]);
        // "gQ" (0b100000, 0b010000) as in WeChat's tickets.
        bytes[0] = 0x81;
        bytes[1] &= 0x0f;
        // One aligned 3-byte group whose first sextet is '+' (62) and third
        // is '/' (63); the others stay random.
        let i = 3 * rng.random_range(2..20usize);
        let s2: u8 = rng.random_range(0..64);
        let s4: u8 = rng.random_range(0..64);
        bytes[i] = (62 << 2) | (s2 >> 4);
        bytes[i + 1] = ((s2 & 0x0f) << 4) | (63 >> 2);
        bytes[i + 2] = ((63 & 0x03) << 6) | s4;
        STANDARD.encode(bytes)
    } else {
        let mut s = String::with_capacity(84);
        s.push_str("gQ");
        s.extend(rng.sample_iter(Alphanumeric).take(82).map(char::from));
        s
    }
}

/// A QR content URL, `http://weixin.qq.com/q/<22 characters>`.
pub fn mint_url(rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(QR_URL_BASE.len() + 22);
    s.push_str(QR_URL_BASE);
    s.push_str("02");
    s.extend(rng.sample_iter(Alphanumeric).take(20).map(char::from));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_shapes() {
        let mut rng = rand::rng();
        for _ in 0..200 {
            let t = mint_ticket(true, &mut rng);
            assert_eq!(t.len(), 84);
            assert!(t.starts_with("gQ"), "{t}");
            assert!(
                t.contains('+') && t.contains('/') && t.ends_with('='),
                "{t}"
            );
            assert!(STANDARD.decode(&t).is_ok());
            let p = mint_ticket(false, &mut rng);
            assert_eq!(p.len(), 84);
            assert!(p.starts_with("gQ"));
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(STANDARD.decode(&p).is_ok());
        }
        let u = mint_url(&mut rng);
        assert!(u.starts_with("http://weixin.qq.com/q/02") && u.len() == 45);
    }

    #[test]
    fn every_third_ticket_is_special() {
        let store = TicketStore::new(100);
        let now = Instant::now();
        let specials = (0..30)
            .map(|i| store.create("QR_SCENE", Scene::Id(i + 1), Some(60), now))
            .filter(|t| t.ticket.contains(['+', '/', '=']))
            .count();
        assert_eq!(specials, 10);
    }

    #[test]
    fn lookup_and_expiry() {
        let store = TicketStore::new(100);
        let now = Instant::now();
        let t = store.create("QR_SCENE", Scene::Id(42), Some(60), now);
        assert!(matches!(store.get(&t.ticket, now), Lookup::Live(x) if x.scene == Scene::Id(42)));
        assert_eq!(t.expires_in(now + Duration::from_secs(10)), Some(50));
        let later = now + Duration::from_secs(61);
        assert!(matches!(store.get(&t.ticket, later), Lookup::Expired(_)));
        assert!(matches!(store.get("nope", now), Lookup::Unknown));
        store.sweep(later);
        assert!(matches!(store.get(&t.ticket, later), Lookup::Expired(_)));
        store.sweep(later + EXPIRED_MEMORY);
        assert!(matches!(
            store.get(&t.ticket, later + EXPIRED_MEMORY),
            Lookup::Unknown
        ));
        let p = store.create("QR_LIMIT_SCENE", Scene::Id(1), None, now);
        store.sweep(now + Duration::from_secs(10_000_000));
        assert!(matches!(
            store.get(&p.ticket, now + Duration::from_secs(10_000_000)),
            Lookup::Live(_)
        ));
    }

    #[test]
    fn bounded() {
        let store = TicketStore::new(64);
        let now = Instant::now();
        let first = store.create("QR_SCENE", Scene::Id(1), Some(60), now);
        for i in 0..10_000 {
            store.create("QR_SCENE", Scene::Id(i + 2), Some(60), now);
        }
        assert!(store.len() <= 64, "{}", store.len());
        assert!(matches!(store.get(&first.ticket, now), Lookup::Unknown));
        assert_eq!(store.minted(), 10_001);
    }

    #[test]
    fn event_keys() {
        assert_eq!(Scene::Id(7).event_key(true), "qrscene_7");
        assert_eq!(Scene::Id(7).event_key(false), "7");
        assert_eq!(Scene::Str("abc".into()).event_key(true), "qrscene_abc");
        assert_eq!(Scene::Str("abc".into()).event_key(false), "abc");
    }
}
