//! The store: users with their login counts, handled callback events (for
//! deduplicating WeChat's retries across every instance sharing the
//! store), the signatures seen (replay refusal) and logins awaiting
//! confirmation on the phone.
//!
//! Two backends behind one interface, chosen by `--db` ([`Db`]): SQLite
//! (a file path, embedded; instances on one host share the file) and
//! PostgreSQL (a `postgres://` URL; instances on several hosts share the
//! database). Both keep the same tables and give the same guarantees:
//!
//! - **one claim:** an event is claimed by exactly one handler (the
//!   `INSERT … ON CONFLICT DO NOTHING` on its key wins once); a claim left
//!   behind by a handler that died is taken over by compare-and-swap on
//!   its claim time after [`STALE_CLAIM`];
//! - **one count:** a login is counted in the transaction that moves its
//!   event from claimed to done, and only if that move happens, so a
//!   takeover racing a slow handler cannot count it twice;
//! - **one confirmation:** a pending login is removed and returned by one
//!   statement, so one `1` confirms it once, whichever instance gets it.
//!
//! Any store failure is a [`StoreError`]; the handler answers it with 503,
//! so WeChat retries and a login is never answered for without being
//! recorded.

mod postgres;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::envelope::Reply;

/// How long handled events are kept (WeChat retries within ~15 s; the
/// contract asks for at least 5 minutes).
pub const EVENT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A claim older than this whose handler never finished (crashed) may be
/// taken over by a retry. A live handler is done well before: its reply
/// deadline is at most 4.9 s and the bus answer may take 1 s more. WeChat
/// retries 5 s apart, so the third attempt finds a dead instance's claim
/// stale.
pub const STALE_CLAIM: Duration = Duration::from_secs(8);
/// How long pending confirmations stay past their expiry before pruning.
const PENDING_GRACE: Duration = Duration::from_secs(3600);

/// Where the data lives: the value of `--db`.
#[derive(Clone, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl Db {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; anything else
    /// is a SQLite path.
    pub fn parse(s: &str) -> Db {
        let lower = s.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Db::Postgres(s.trim().to_string())
        } else {
            Db::Sqlite(PathBuf::from(s))
        }
    }
}

impl fmt::Display for Db {
    /// The path, or the URL without its password: safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Db::Sqlite(p) => write!(f, "{}", p.display()),
            Db::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Db({self})")
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad database URL: {0}")]
    BadUrl(String),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: i64 },
}

impl StoreError {
    /// The database server could not be reached (as opposed to refusing
    /// us): worth waiting for at start.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => postgres::unreachable(e),
            StoreError::Timeout(_) | StoreError::Pool(_) => true,
            _ => false,
        }
    }
}

/// What claiming an event found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller handles the event.
    Claimed,
    /// This caller handles the event, taken over from a handler that
    /// claimed it [`STALE_CLAIM`] ago and never finished (it may have
    /// pushed the login before it died).
    TakenOver,
    /// Already handled; the stored reply.
    Done(Reply),
    /// Another handler is on it.
    Pending,
}

/// What the signature record says about a verified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time this signature is used.
    New,
    /// Seen before with the same body: WeChat retrying.
    Retry,
    /// Seen before with another body: a replay.
    OtherBody,
}

/// A login awaiting the user's `1` (`--confirm-login`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub openid: String,
    pub fd: u32,
    pub ticket: Option<String>,
    pub display_name: String,
    pub unionid: Option<String>,
    /// Unix seconds after which a `1` confirms nothing.
    pub expires_at: i64,
}

/// What taking a pending login found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Live(PendingLogin),
    Expired,
    None,
}

/// What is known about the user at login time.
#[derive(Debug, Clone, Default)]
pub struct UserRecord {
    pub openid: String,
    pub unionid: Option<String>,
    pub display_name: String,
}

/// A login to count: the event that carries it, the user, and how to
/// render the reply stored with the event once the user's new login count
/// is known (the count is read in the same transaction).
pub struct NewLogin {
    pub key: String,
    pub user: UserRecord,
    pub render: Box<dyn FnOnce(i64) -> String + Send>,
}

impl NewLogin {
    pub fn new(
        key: impl Into<String>,
        user: UserRecord,
        render: impl FnOnce(i64) -> String + Send + 'static,
    ) -> Self {
        Self {
            key: key.into(),
            user,
            render: Box::new(render),
        }
    }
}

/// What recording a login did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Counted: the user's new count and the reply stored with the event.
    Counted(i64, String),
    /// The event was already done (another handler finished it after a
    /// takeover): nothing counted; its stored reply.
    AlreadyDone(Reply),
}

/// The store handle; clones share the connection (SQLite) or the pool
/// (PostgreSQL).
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Calls the same method on whichever backend this is.
macro_rules! on_backend {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store, creating and migrating its tables as needed.
    pub async fn open(db: &Db) -> Result<Store, StoreError> {
        Ok(match db {
            Db::Sqlite(path) => Store::Sqlite(sqlite::Sqlite::open(path)?),
            Db::Postgres(url) => Store::Postgres(postgres::Postgres::open(url).await?),
        })
    }

    /// Checks, without creating or migrating anything, that the store can
    /// be used (for `--check-config`): a SQLite file opens read-only with a
    /// known schema, or can be created; a PostgreSQL URL parses, the
    /// server answers and its schema, if any, is one this binary knows.
    /// Blocking.
    pub fn check(db: &Db) -> Result<(), StoreError> {
        match db {
            Db::Sqlite(path) => sqlite::Sqlite::check(path),
            Db::Postgres(url) => postgres::Postgres::check(url),
        }
    }

    /// Which backend, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Claims the event `key` for handling (see [`Claim`]).
    pub async fn claim(&self, key: String) -> Result<Claim, StoreError> {
        on_backend!(self, s => s.claim(key).await)
    }

    /// Marks an event handled with its reply, without counting a login
    /// (a no-op when it is already done).
    pub async fn finish(&self, key: String, reply: Reply) -> Result<(), StoreError> {
        on_backend!(self, s => s.finish(key, reply).await)
    }

    /// Counts a login for `user` and marks `key` handled with the reply
    /// `render(count)` builds, in one transaction, if the event is not
    /// already done (see [`Recorded`]).
    pub async fn record_login(&self, login: NewLogin) -> Result<Recorded, StoreError> {
        on_backend!(self, s => s.record_login(login).await)
    }

    /// Records that a user was seen (a scan that did not log in) without
    /// counting a login.
    pub async fn touch_user(&self, user: UserRecord) -> Result<(), StoreError> {
        on_backend!(self, s => s.touch_user(user).await)
    }

    /// Records an unsubscribe.
    pub async fn unsubscribe(&self, openid: String) -> Result<(), StoreError> {
        on_backend!(self, s => s.unsubscribe(openid).await)
    }

    /// A user's login count (0 if unknown).
    pub async fn login_count(&self, openid: String) -> Result<i64, StoreError> {
        on_backend!(self, s => s.login_count(openid).await)
    }

    /// Records that `sig` vouched for a body with this SHA-1, or says
    /// whether it already did for this body or another one.
    pub async fn see_signature(&self, sig: String, sha1: [u8; 20]) -> Result<Seen, StoreError> {
        on_backend!(self, s => s.see_signature(sig, sha1).await)
    }

    /// Stores (or replaces) the user's pending login.
    pub async fn put_pending(&self, p: PendingLogin) -> Result<(), StoreError> {
        on_backend!(self, s => s.put_pending(p).await)
    }

    /// Removes and returns the user's pending login (at most one caller
    /// gets it, whichever instance asks).
    pub async fn take_pending(&self, openid: String) -> Result<Taken, StoreError> {
        on_backend!(self, s => s.take_pending(openid).await)
    }

    /// Deletes handled events older than [`EVENT_RETENTION`], signatures
    /// older than `signature_retention` and long-expired pending logins;
    /// returns how many rows went.
    pub async fn prune(&self, signature_retention: Duration) -> Result<u64, StoreError> {
        on_backend!(self, s => s.prune(signature_retention).await)
    }

    /// A cheap query, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.ping().await)
    }
}

/// What a pending row says at `now`.
fn taken(row: Option<PendingLogin>, now: i64) -> Taken {
    match row {
        Some(p) if p.expires_at >= now => Taken::Live(p),
        Some(_) => Taken::Expired,
        None => Taken::None,
    }
}

/// What a stored body digest says about a signature seen again.
fn seen(stored: Option<Vec<u8>>, body_sha1: &[u8; 20]) -> Seen {
    match stored {
        Some(d) if d.as_slice() == body_sha1.as_slice() => Seen::Retry,
        Some(_) => Seen::OtherBody,
        // Pruned in between: as good as new.
        None => Seen::New,
    }
}

/// A stored schema `version` this binary can use (it knows `known`
/// migrations); a newer one is [`StoreError::TooNew`].
fn known_version(version: i64, known: usize) -> Result<(), StoreError> {
    let known = known as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    Ok(())
}

/// Whether a claim made at `claimed_at` may be taken over at `now`.
fn is_stale(claimed_at: i64, now: i64) -> bool {
    now - claimed_at >= STALE_CLAIM.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_is_chosen_by_the_url_scheme() {
        assert_eq!(
            Db::parse("scan-login.db"),
            Db::Sqlite("scan-login.db".into())
        );
        assert_eq!(
            Db::parse("/var/lib/x/postgres.db"),
            Db::Sqlite("/var/lib/x/postgres.db".into())
        );
        assert!(matches!(Db::parse("postgres://u@h/d"), Db::Postgres(_)));
        assert!(matches!(Db::parse("PostgreSQL://u@h/d"), Db::Postgres(_)));
    }

    #[test]
    fn the_password_never_reaches_logs() {
        let db = Db::parse("postgres://scan:s3cret@db.internal:5433/scan_login?sslmode=require");
        let shown = db.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal:5433/scan_login"), "{shown}");
        assert!(!format!("{db:?}").contains("s3cret"));
        let db = Db::parse("postgres://h/d?password=s3cret&user=u");
        assert!(!db.to_string().contains("s3cret"), "{db}");
    }

    #[test]
    fn stale_claims_after_the_threshold() {
        assert!(!is_stale(100, 100 + STALE_CLAIM.as_secs() as i64 - 1));
        assert!(is_stale(100, 100 + STALE_CLAIM.as_secs() as i64));
    }
}
