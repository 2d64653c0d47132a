//! The embedded SQLite store: users with their login counts, handled
//! callback events (for deduplicating WeChat's retries, also across
//! instances sharing the file), the signatures seen (replay refusal) and
//! logins awaiting confirmation on the phone.
//!
//! WAL mode, a busy timeout, and schema migrations by `user_version` under
//! `BEGIN IMMEDIATE`, so several instances can open one file at once. All
//! calls are blocking and run on tokio's blocking pool.
//!
//! **Invariant:** an event is claimed by exactly one handler (the
//! `INSERT ... ON CONFLICT DO NOTHING` on its key wins once); a login is
//! counted in the same transaction that marks its event done.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::envelope::Reply;

/// How long handled events are kept (WeChat retries within ~15 s; the
/// contract asks for at least 5 minutes).
pub const EVENT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A claim older than this whose handler never finished (crashed) may be
/// taken over by a retry.
pub const STALE_CLAIM: Duration = Duration::from_secs(30);
/// How long a connection waits for another writer's lock: well inside the
/// reply deadline, so a locked store is answered 503 (WeChat retries)
/// rather than timing out into `success`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const MIGRATIONS: &[&str] = &[
    // 1: users and handled events.
    "CREATE TABLE users (
        openid TEXT PRIMARY KEY,
        unionid TEXT,
        display_name TEXT NOT NULL,
        subscribed INTEGER NOT NULL DEFAULT 1,
        first_login_at INTEGER,
        last_login_at INTEGER,
        login_count INTEGER NOT NULL DEFAULT 0,
        unsubscribed_at INTEGER,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        key TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        reply TEXT,
        claimed_at INTEGER NOT NULL,
        done_at INTEGER
    );
    CREATE INDEX events_claimed_at ON events(claimed_at);",
    // 2: signatures seen (replay refusal) and logins awaiting confirmation.
    "CREATE TABLE signatures (
        sig TEXT PRIMARY KEY,
        body_sha1 BLOB NOT NULL,
        seen_at INTEGER NOT NULL
    );
    CREATE INDEX signatures_seen_at ON signatures(seen_at);
    CREATE TABLE pending (
        openid TEXT PRIMARY KEY,
        fd INTEGER NOT NULL,
        ticket TEXT,
        display_name TEXT NOT NULL,
        unionid TEXT,
        expires_at INTEGER NOT NULL
    );",
];

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: i64 },
}

/// What claiming an event found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller handles the event.
    Claimed,
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

/// The store handle; clones share the connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

use protocol::wechat::unix_now as now_secs;

impl Store {
    /// Opens (creating and migrating as needed) the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Checks, without creating or migrating anything, that the database
    /// at `path` can be used: an existing file opens read-only with a
    /// schema this binary knows; a missing one can be created in its
    /// directory.
    pub fn check(path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            let conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return Err(StoreError::TooNew {
                    found: version,
                    known,
                });
            }
            return Ok(());
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let meta = std::fs::metadata(dir)
            .map_err(|e| StoreError::Task(format!("directory {}: {e}", dir.display())))?;
        if !meta.is_dir() || meta.permissions().readonly() {
            return Err(StoreError::Task(format!(
                "directory {} is not a writable directory",
                dir.display()
            )));
        }
        Ok(())
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("store lock poisoned".into()))?;
            f(&mut guard).map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Claims the event `key` for handling (see [`Claim`]).
    pub async fn claim(&self, key: String) -> Result<Claim, StoreError> {
        self.with(move |c| {
            let now = now_secs();
            let inserted = c.prepare_cached("INSERT INTO events(key, state, claimed_at) VALUES (?1, 0, ?2) ON CONFLICT(key) DO NOTHING")?.execute(params![key, now],
            )?;
            if inserted == 1 {
                return Ok(Claim::Claimed);
            }
            let row: Option<(i64, Option<String>, i64)> = c
                .prepare_cached("SELECT state, reply, claimed_at FROM events WHERE key = ?1")?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match row {
                Some((1, reply, _)) => Ok(Claim::Done(Reply::from_stored(reply))),
                Some((_, _, claimed_at)) if now - claimed_at > STALE_CLAIM.as_secs() as i64 => {
                    let took = c.prepare_cached("UPDATE events SET claimed_at = ?2 WHERE key = ?1 AND state = 0 AND claimed_at = ?3")?.execute(params![key, now, claimed_at],
                    )?;
                    Ok(if took == 1 { Claim::Claimed } else { Claim::Pending })
                }
                Some(_) => Ok(Claim::Pending),
                // Pruned between the two statements: treat as new.
                None => Ok(Claim::Pending),
            }
        })
        .await
    }

    /// Marks an event handled with its reply, without counting a login.
    pub async fn finish(&self, key: String, reply: Reply) -> Result<(), StoreError> {
        let reply = reply.into_stored();
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE events SET state = 1, reply = ?2, done_at = ?3 WHERE key = ?1",
            )?
            .execute(params![key, reply, now_secs()])?;
            Ok(())
        })
        .await
    }

    /// Counts a login for `user` and marks `key` handled with the reply
    /// `render(count)` builds, in one transaction. Returns the new count and
    /// the reply.
    pub async fn record_login<R>(
        &self,
        key: String,
        user: UserRecord,
        render: R,
    ) -> Result<(i64, String), StoreError>
    where
        R: FnOnce(i64) -> String + Send + 'static,
    {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_secs();
            let count: i64 = tx.prepare_cached("INSERT INTO users(openid, unionid, display_name, subscribed, first_login_at, last_login_at, login_count, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?4, 1, ?4)
                 ON CONFLICT(openid) DO UPDATE SET
                    unionid = COALESCE(excluded.unionid, users.unionid),
                    display_name = excluded.display_name,
                    subscribed = 1,
                    first_login_at = COALESCE(users.first_login_at, excluded.first_login_at),
                    last_login_at = excluded.last_login_at,
                    login_count = users.login_count + 1,
                    updated_at = excluded.updated_at
                 RETURNING login_count")?.query_row(params![user.openid, user.unionid, user.display_name, now],
                |r| r.get(0),
            )?;
            let reply = render(count);
            tx.prepare_cached("UPDATE events SET state = 1, reply = ?2, done_at = ?3 WHERE key = ?1")?.execute(params![key, reply, now],
            )?;
            tx.commit()?;
            Ok((count, reply))
        })
        .await
    }

    /// Records that a user was seen (a scan that did not log in) without
    /// counting a login.
    pub async fn touch_user(&self, user: UserRecord) -> Result<(), StoreError> {
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO users(openid, unionid, display_name, subscribed, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT(openid) DO UPDATE SET
                    unionid = COALESCE(excluded.unionid, users.unionid),
                    display_name = excluded.display_name,
                    subscribed = 1,
                    updated_at = excluded.updated_at",
            )?
            .execute(params![
                user.openid,
                user.unionid,
                user.display_name,
                now_secs()
            ])?;
            Ok(())
        })
        .await
    }

    /// Records an unsubscribe.
    pub async fn unsubscribe(&self, openid: String) -> Result<(), StoreError> {
        self.with(move |c| {
            let now = now_secs();
            c.prepare_cached("INSERT INTO users(openid, display_name, subscribed, unsubscribed_at, updated_at)
                 VALUES (?1, '', 0, ?2, ?2)
                 ON CONFLICT(openid) DO UPDATE SET subscribed = 0, unsubscribed_at = ?2, updated_at = ?2")?.execute(params![openid, now],
            )?;
            Ok(())
        })
        .await
    }

    /// A user's login count (0 if unknown).
    pub async fn login_count(&self, openid: String) -> Result<i64, StoreError> {
        self.with(move |c| {
            Ok(
                c.prepare_cached("SELECT login_count FROM users WHERE openid = ?1")?
                    .query_row(params![openid], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
            )
        })
        .await
    }

    /// Records that `sig` vouched for a body with this SHA-1, or says
    /// whether it already did for this body or another one.
    pub async fn see_signature(
        &self,
        sig: String,
        body_sha1: [u8; 20],
    ) -> Result<Seen, StoreError> {
        self.with(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO signatures(sig, body_sha1, seen_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(sig) DO NOTHING",
                )?
                .execute(params![sig, body_sha1.as_slice(), now_secs()])?;
            if inserted == 1 {
                return Ok(Seen::New);
            }
            let stored: Option<Vec<u8>> = c
                .prepare_cached("SELECT body_sha1 FROM signatures WHERE sig = ?1")?
                .query_row(params![sig], |r| r.get(0))
                .optional()?;
            Ok(match stored {
                Some(d) if d.as_slice() == body_sha1.as_slice() => Seen::Retry,
                Some(_) => Seen::OtherBody,
                // Pruned in between: as good as new.
                None => Seen::New,
            })
        })
        .await
    }

    /// Stores (or replaces) the user's pending login.
    pub async fn put_pending(&self, p: PendingLogin) -> Result<(), StoreError> {
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO pending(openid, fd, ticket, display_name, unionid, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(openid) DO UPDATE SET fd = excluded.fd, ticket = excluded.ticket,
                    display_name = excluded.display_name, unionid = excluded.unionid,
                    expires_at = excluded.expires_at",
            )?
            .execute(params![
                p.openid,
                p.fd,
                p.ticket,
                p.display_name,
                p.unionid,
                p.expires_at
            ])?;
            Ok(())
        })
        .await
    }

    /// Removes and returns the user's pending login (at most one caller
    /// gets it, whichever instance asks).
    pub async fn take_pending(&self, openid: String) -> Result<Taken, StoreError> {
        self.with(move |c| {
            let row = c
                .prepare_cached(
                    "DELETE FROM pending WHERE openid = ?1
                     RETURNING fd, ticket, display_name, unionid, expires_at",
                )?
                .query_row(params![openid], |r| {
                    Ok(PendingLogin {
                        openid: openid.clone(),
                        fd: r.get(0)?,
                        ticket: r.get(1)?,
                        display_name: r.get(2)?,
                        unionid: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })
                .optional()?;
            Ok(match row {
                Some(p) if p.expires_at >= now_secs() => Taken::Live(p),
                Some(_) => Taken::Expired,
                None => Taken::None,
            })
        })
        .await
    }

    /// Deletes handled events older than [`EVENT_RETENTION`], signatures
    /// older than `signature_retention` and expired pending logins;
    /// returns how many rows went.
    pub async fn prune(&self, signature_retention: Duration) -> Result<usize, StoreError> {
        self.with(move |c| {
            let now = now_secs();
            let events = c
                .prepare_cached("DELETE FROM events WHERE claimed_at < ?1")?
                .execute(params![now - EVENT_RETENTION.as_secs() as i64])?;
            let sigs = c
                .prepare_cached("DELETE FROM signatures WHERE seen_at < ?1")?
                .execute(params![now - signature_retention.as_secs() as i64])?;
            let pending = c
                .prepare_cached("DELETE FROM pending WHERE expires_at < ?1")?
                .execute(params![now - 3600])?;
            Ok(events + sigs + pending)
        })
        .await
    }

    /// A cheap query, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.prepare_cached("SELECT 1")?.query_row([], |_| Ok(())))
            .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wcb-store-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    }

    #[tokio::test]
    async fn claim_once_and_count_logins() {
        let path = temp_db("claim");
        let a = Store::open(&path).unwrap();
        let b = Store::open(&path).unwrap(); // a second instance on the same file
        assert_eq!(a.claim("k1".into()).await.unwrap(), Claim::Claimed);
        assert_eq!(b.claim("k1".into()).await.unwrap(), Claim::Pending);
        let user = UserRecord {
            openid: "o1".into(),
            unionid: None,
            display_name: "A".into(),
        };
        let (n, reply) = a
            .record_login("k1".into(), user.clone(), |n| format!("n={n}"))
            .await
            .unwrap();
        assert_eq!((n, reply.as_str()), (1, "n=1"));
        assert_eq!(
            b.claim("k1".into()).await.unwrap(),
            Claim::Done(Reply::Text("n=1".into()))
        );
        assert_eq!(b.claim("k2".into()).await.unwrap(), Claim::Claimed);
        let (n, _) = b
            .record_login("k2".into(), user, |n| n.to_string())
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(a.login_count("o1".into()).await.unwrap(), 2);
        a.finish("k3".into(), Reply::Success).await.unwrap();
        assert_eq!(a.claim("k3".into()).await.unwrap(), Claim::Claimed);
        a.finish("k3".into(), Reply::Success).await.unwrap();
        assert_eq!(
            a.claim("k3".into()).await.unwrap(),
            Claim::Done(Reply::Success)
        );
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let path = temp_db("reopen");
        {
            let s = Store::open(&path).unwrap();
            s.claim("k".into()).await.unwrap();
            s.unsubscribe("o".into()).await.unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.claim("k".into()).await.unwrap(), Claim::Pending);
        assert_eq!(s.prune(Duration::from_secs(600)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn signatures_tell_retries_from_replays_across_instances() {
        let path = temp_db("sig");
        let a = Store::open(&path).unwrap();
        let b = Store::open(&path).unwrap();
        assert_eq!(
            a.see_signature("s1".into(), [1; 20]).await.unwrap(),
            Seen::New
        );
        assert_eq!(
            b.see_signature("s1".into(), [1; 20]).await.unwrap(),
            Seen::Retry
        );
        assert_eq!(
            b.see_signature("s1".into(), [2; 20]).await.unwrap(),
            Seen::OtherBody
        );
        assert_eq!(
            b.see_signature("s2".into(), [2; 20]).await.unwrap(),
            Seen::New
        );
    }

    #[tokio::test]
    async fn a_pending_login_is_taken_once() {
        let path = temp_db("pending");
        let a = Store::open(&path).unwrap();
        let b = Store::open(&path).unwrap();
        let p = PendingLogin {
            openid: "o".into(),
            fd: 5 << 20,
            ticket: Some("t".into()),
            display_name: "A".into(),
            unionid: None,
            expires_at: now_secs() + 60,
        };
        a.put_pending(p.clone()).await.unwrap();
        assert_eq!(
            b.take_pending("o".into()).await.unwrap(),
            Taken::Live(p.clone())
        );
        assert_eq!(a.take_pending("o".into()).await.unwrap(), Taken::None);
        a.put_pending(PendingLogin {
            expires_at: now_secs() - 1,
            ..p
        })
        .await
        .unwrap();
        assert_eq!(a.take_pending("o".into()).await.unwrap(), Taken::Expired);
    }
}
