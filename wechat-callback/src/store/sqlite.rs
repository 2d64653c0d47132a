//! The SQLite backend: one file, shared by the instances on one host.
//!
//! WAL mode, a busy timeout, and schema migrations by `user_version` under
//! `BEGIN IMMEDIATE`, so several instances can open one file at once. All
//! calls are blocking and run on tokio's blocking pool, one at a time per
//! process (one connection).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Claim, EVENT_RETENTION, NewLogin, PENDING_GRACE, PendingLogin, Recorded, Seen, StoreError,
    Taken, UserRecord, is_stale, known_version, seen, taken,
};
use crate::envelope::Reply;

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

/// The SQLite handle; clones share the connection.
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

use protocol::wechat::unix_now as now_secs;

impl Sqlite {
    /// Opens (creating and migrating as needed) the database file.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Sqlite {
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
            return known_version(version, MIGRATIONS.len());
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

    pub async fn claim(&self, key: String) -> Result<Claim, StoreError> {
        self.with(move |c| {
            let now = now_secs();
            let inserted = c
                .prepare_cached(
                    "INSERT INTO events(key, state, claimed_at) VALUES (?1, 0, ?2)
                     ON CONFLICT(key) DO NOTHING",
                )?
                .execute(params![key, now])?;
            if inserted == 1 {
                return Ok(Claim::Claimed);
            }
            let row: Option<(i64, Option<String>, i64)> = c
                .prepare_cached("SELECT state, reply, claimed_at FROM events WHERE key = ?1")?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match row {
                Some((1, reply, _)) => Ok(Claim::Done(Reply::from_stored(reply))),
                Some((_, _, claimed_at)) if is_stale(claimed_at, now) => {
                    let took = c
                        .prepare_cached(
                            "UPDATE events SET claimed_at = ?2
                             WHERE key = ?1 AND state = 0 AND claimed_at = ?3",
                        )?
                        .execute(params![key, now, claimed_at])?;
                    Ok(if took == 1 {
                        Claim::TakenOver
                    } else {
                        Claim::Pending
                    })
                }
                // Pruned between the two statements: someone else's.
                Some(_) | None => Ok(Claim::Pending),
            }
        })
        .await
    }

    pub async fn finish(&self, key: String, reply: Reply) -> Result<(), StoreError> {
        let reply = reply.into_stored();
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE events SET state = 1, reply = ?2, done_at = ?3 WHERE key = ?1 AND state = 0",
            )?
            .execute(params![key, reply, now_secs()])?;
            Ok(())
        })
        .await
    }

    pub async fn record_login(&self, login: NewLogin) -> Result<Recorded, StoreError> {
        let NewLogin { key, user, render } = login;
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_secs();
            let moved = tx
                .prepare_cached(
                    "UPDATE events SET state = 1, done_at = ?2 WHERE key = ?1 AND state = 0",
                )?
                .execute(params![key, now])?;
            if moved == 0 {
                let reply: Option<String> = tx
                    .prepare_cached("SELECT reply FROM events WHERE key = ?1")?
                    .query_row(params![key], |r| r.get(0))
                    .optional()?
                    .flatten();
                return Ok(Recorded::AlreadyDone(Reply::from_stored(reply)));
            }
            let count: i64 = tx
                .prepare_cached(
                    "INSERT INTO users(openid, unionid, display_name, subscribed, first_login_at,
                        last_login_at, login_count, updated_at)
                     VALUES (?1, ?2, ?3, 1, ?4, ?4, 1, ?4)
                     ON CONFLICT(openid) DO UPDATE SET
                        unionid = COALESCE(excluded.unionid, users.unionid),
                        display_name = excluded.display_name,
                        subscribed = 1,
                        first_login_at = COALESCE(users.first_login_at, excluded.first_login_at),
                        last_login_at = excluded.last_login_at,
                        login_count = users.login_count + 1,
                        updated_at = excluded.updated_at
                     RETURNING login_count",
                )?
                .query_row(
                    params![user.openid, user.unionid, user.display_name, now],
                    |r| r.get(0),
                )?;
            let reply = render(count);
            tx.prepare_cached("UPDATE events SET reply = ?2 WHERE key = ?1")?
                .execute(params![key, reply])?;
            tx.commit()?;
            Ok(Recorded::Counted(count, reply))
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
    pub async fn see_signature(&self, sig: String, sha1: [u8; 20]) -> Result<Seen, StoreError> {
        self.with(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO signatures(sig, body_sha1, seen_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(sig) DO NOTHING",
                )?
                .execute(params![sig, sha1.as_slice(), now_secs()])?;
            if inserted == 1 {
                return Ok(Seen::New);
            }
            let stored: Option<Vec<u8>> = c
                .prepare_cached("SELECT body_sha1 FROM signatures WHERE sig = ?1")?
                .query_row(params![sig], |r| r.get(0))
                .optional()?;
            Ok(seen(stored, &sha1))
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
            Ok(taken(row, now_secs()))
        })
        .await
    }

    /// Deletes handled events older than [`EVENT_RETENTION`], signatures
    /// older than `signature_retention` and expired pending logins;
    /// returns how many rows went.
    pub async fn prune(&self, signature_retention: Duration) -> Result<u64, StoreError> {
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
                .execute(params![now - PENDING_GRACE.as_secs() as i64])?;
            Ok((events + sigs + pending) as u64)
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
    known_version(version, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    tx.commit()?;
    Ok(())
}
