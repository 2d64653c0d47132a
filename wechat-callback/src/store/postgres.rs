//! The PostgreSQL backend: one database shared by callback instances on
//! several hosts.
//!
//! tokio-postgres under a deadpool pool of at most [`POOL_SIZE`]
//! connections; waiting for a connection, connecting and every operation
//! are bounded ([`OP_TIMEOUT`]), so a database that is down or stuck turns
//! into a [`StoreError`] (HTTP 503, WeChat retries) within the reply
//! deadline. Broken connections are dropped when they come back to the
//! pool, so it recovers by itself once the server is back.
//!
//! The tables live in the first schema of the role's `search_path` and are
//! created and migrated at start, inside one transaction holding an
//! advisory lock, so instances starting together migrate once. The role
//! needs no more than its own schema (see deploy/postgres/scan-login.sql).
//!
//! TLS follows the URL's `sslmode` (`disable`, `prefer` (the default),
//! `require`) and verifies the server against the web PKI roots.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;

use super::{
    Claim, EVENT_RETENTION, NewLogin, PENDING_GRACE, PendingLogin, Recorded, Seen, StoreError,
    Taken, UserRecord, is_stale, known_version, seen, taken,
};
use crate::envelope::Reply;
use protocol::wechat::unix_now as now_secs;

/// Most connections one instance holds.
pub const POOL_SIZE: usize = 16;
/// Longest wait for a pooled connection, a new connection, or one
/// operation: inside the reply deadline, so a stuck database is answered
/// 503 rather than timing out into WeChat's `success`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a start (connect and migrate) may take.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock key held while migrating ("scanlgn" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6361_6e6c_676e;

const MIGRATIONS: &[&str] = &[
    // 1: the same tables as the SQLite backend's first two migrations.
    "CREATE TABLE users (
        openid TEXT PRIMARY KEY,
        unionid TEXT,
        display_name TEXT NOT NULL,
        subscribed BOOLEAN NOT NULL DEFAULT TRUE,
        first_login_at BIGINT,
        last_login_at BIGINT,
        login_count BIGINT NOT NULL DEFAULT 0,
        unsubscribed_at BIGINT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE events (
        key TEXT PRIMARY KEY,
        state SMALLINT NOT NULL,
        reply TEXT,
        claimed_at BIGINT NOT NULL,
        done_at BIGINT
    );
    CREATE INDEX events_claimed_at ON events(claimed_at);
    CREATE TABLE signatures (
        sig TEXT PRIMARY KEY,
        body_sha1 BYTEA NOT NULL,
        seen_at BIGINT NOT NULL
    );
    CREATE INDEX signatures_seen_at ON signatures(seen_at);
    CREATE TABLE pending (
        openid TEXT PRIMARY KEY,
        fd BIGINT NOT NULL,
        ticket TEXT,
        display_name TEXT NOT NULL,
        unionid TEXT,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX pending_expires_at ON pending(expires_at);",
];

/// The PostgreSQL handle; clones share the pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    let Ok(cfg) = url.parse::<tokio_postgres::Config>() else {
        return "postgres://(unparsable URL)".into();
    };
    let user = cfg.get_user().unwrap_or("");
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .zip(cfg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            Host::Tcp(h) => format!("{h}:{p}"),
            Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!(
        "postgres://{user}@{}/{}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or("")
    )
}

fn parse(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::BadUrl(format!("{}: {e}", redact(url))))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(OP_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("wechat-callback");
    }
    Ok(cfg)
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Task(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Whether `e` says the server could not be reached (refused, reset,
/// unresolvable, closed), rather than refusing us (a wrong password, a
/// missing database, an SQL error).
pub fn unreachable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && (e.is_closed() || io_source(e))
}

/// The error with what the server said (`db error` alone says nothing).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn io_source(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Bounds one operation by [`OP_TIMEOUT`].
async fn bounded<T>(f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .map_err(|_| StoreError::Timeout(OP_TIMEOUT))?
}

impl Postgres {
    /// Builds the pool, connects once and migrates.
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let manager = Manager::from_config(
            parse(url)?,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = Postgres { pool };
        tokio::time::timeout(START_TIMEOUT, store.migrate())
            .await
            .map_err(|_| StoreError::Timeout(START_TIMEOUT))??;
        Ok(store)
    }

    /// Connects and reads the schema version without changing anything.
    pub fn check(url: &str) -> Result<(), StoreError> {
        let cfg = parse(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(e.to_string()))?;
        runtime.block_on(async {
            let connected = tokio::time::timeout(START_TIMEOUT, cfg.connect(tls()?))
                .await
                .map_err(|_| StoreError::Timeout(START_TIMEOUT))
                .and_then(|r| r.map_err(StoreError::from));
            let (client, conn) = match connected {
                Ok(c) => c,
                // Not a configuration error: the daemon waits for the
                // server at start.
                Err(e) if e.is_unreachable() => {
                    eprintln!(
                        "warning: database {} cannot be reached now ({e}); \
                         wechat-callback waits for it at start",
                        redact(url)
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let conn = tokio::spawn(conn);
            let found = schema_version(&client).await;
            drop(client);
            let _ = conn.await;
            known_version(found?, MIGRATIONS.len())
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        use deadpool_postgres::PoolError;
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => StoreError::Postgres(e),
            PoolError::Timeout(_) => StoreError::Timeout(OP_TIMEOUT),
            other => StoreError::Pool(other.to_string()),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        // No "already exists, skipping" notice at every start.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS scan_login_schema (version BIGINT NOT NULL)")
            .await?;
        let version = stored_version(&*tx).await?;
        known_version(version, MIGRATIONS.len())?;
        let known = MIGRATIONS.len() as i64;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await?;
            tracing::info!(version = i + 1, "database migrated");
        }
        if version < known {
            tx.execute("DELETE FROM scan_login_schema", &[]).await?;
            tx.execute(
                "INSERT INTO scan_login_schema(version) VALUES ($1)",
                &[&known],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn claim(&self, key: String) -> Result<Claim, StoreError> {
        bounded(async {
            let client = self.client().await?;
            let now = now_secs();
            let insert = client
                .prepare_cached(
                    "INSERT INTO events(key, state, claimed_at) VALUES ($1, 0, $2)
                     ON CONFLICT(key) DO NOTHING",
                )
                .await?;
            if client.execute(&insert, &[&key, &now]).await? == 1 {
                return Ok(Claim::Claimed);
            }
            let select = client
                .prepare_cached("SELECT state, reply, claimed_at FROM events WHERE key = $1")
                .await?;
            let row = client.query_opt(&select, &[&key]).await?;
            let Some(row) = row else {
                return Ok(Claim::Pending);
            };
            let (state, reply, claimed_at): (i16, Option<String>, i64) =
                (row.get(0), row.get(1), row.get(2));
            if state == 1 {
                return Ok(Claim::Done(Reply::from_stored(reply)));
            }
            if !is_stale(claimed_at, now) {
                return Ok(Claim::Pending);
            }
            let take = client
                .prepare_cached(
                    "UPDATE events SET claimed_at = $2
                     WHERE key = $1 AND state = 0 AND claimed_at = $3",
                )
                .await?;
            let took = client.execute(&take, &[&key, &now, &claimed_at]).await?;
            Ok(if took == 1 {
                Claim::TakenOver
            } else {
                Claim::Pending
            })
        })
        .await
    }

    pub async fn finish(&self, key: String, reply: Reply) -> Result<(), StoreError> {
        let reply = reply.into_stored();
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "UPDATE events SET state = 1, reply = $2, done_at = $3
                     WHERE key = $1 AND state = 0",
                )
                .await?;
            client.execute(&st, &[&key, &reply, &now_secs()]).await?;
            Ok(())
        })
        .await
    }

    pub async fn record_login(&self, login: NewLogin) -> Result<Recorded, StoreError> {
        let NewLogin { key, user, render } = login;
        bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = now_secs();
            let mark = tx
                .prepare_cached(
                    "UPDATE events SET state = 1, done_at = $2 WHERE key = $1 AND state = 0",
                )
                .await?;
            if tx.execute(&mark, &[&key, &now]).await? == 0 {
                let reply: Option<String> = tx
                    .query_opt("SELECT reply FROM events WHERE key = $1", &[&key])
                    .await?
                    .and_then(|r| r.get(0));
                return Ok(Recorded::AlreadyDone(Reply::from_stored(reply)));
            }
            let count = tx
                .prepare_cached(
                    "INSERT INTO users(openid, unionid, display_name, subscribed, first_login_at,
                        last_login_at, login_count, updated_at)
                     VALUES ($1, $2, $3, TRUE, $4, $4, 1, $4)
                     ON CONFLICT(openid) DO UPDATE SET
                        unionid = COALESCE(excluded.unionid, users.unionid),
                        display_name = excluded.display_name,
                        subscribed = TRUE,
                        first_login_at = COALESCE(users.first_login_at, excluded.first_login_at),
                        last_login_at = excluded.last_login_at,
                        login_count = users.login_count + 1,
                        updated_at = excluded.updated_at
                     RETURNING login_count",
                )
                .await?;
            let count: i64 = tx
                .query_one(
                    &count,
                    &[&user.openid, &user.unionid, &user.display_name, &now],
                )
                .await?
                .get(0);
            let reply = render(count);
            let set_reply = tx
                .prepare_cached("UPDATE events SET reply = $2 WHERE key = $1")
                .await?;
            tx.execute(&set_reply, &[&key, &reply]).await?;
            tx.commit().await?;
            Ok(Recorded::Counted(count, reply))
        })
        .await
    }

    pub async fn touch_user(&self, user: UserRecord) -> Result<(), StoreError> {
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "INSERT INTO users(openid, unionid, display_name, subscribed, updated_at)
                     VALUES ($1, $2, $3, TRUE, $4)
                     ON CONFLICT(openid) DO UPDATE SET
                        unionid = COALESCE(excluded.unionid, users.unionid),
                        display_name = excluded.display_name,
                        subscribed = TRUE,
                        updated_at = excluded.updated_at",
                )
                .await?;
            client
                .execute(
                    &st,
                    &[&user.openid, &user.unionid, &user.display_name, &now_secs()],
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn unsubscribe(&self, openid: String) -> Result<(), StoreError> {
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "INSERT INTO users(openid, display_name, subscribed, unsubscribed_at, updated_at)
                     VALUES ($1, '', FALSE, $2, $2)
                     ON CONFLICT(openid) DO UPDATE SET subscribed = FALSE,
                        unsubscribed_at = $2, updated_at = $2",
                )
                .await?;
            client.execute(&st, &[&openid, &now_secs()]).await?;
            Ok(())
        })
        .await
    }

    pub async fn login_count(&self, openid: String) -> Result<i64, StoreError> {
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached("SELECT login_count FROM users WHERE openid = $1")
                .await?;
            Ok(client
                .query_opt(&st, &[&openid])
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0))
        })
        .await
    }

    pub async fn see_signature(&self, sig: String, sha1: [u8; 20]) -> Result<Seen, StoreError> {
        bounded(async {
            let client = self.client().await?;
            let insert = client
                .prepare_cached(
                    "INSERT INTO signatures(sig, body_sha1, seen_at) VALUES ($1, $2, $3)
                     ON CONFLICT(sig) DO NOTHING",
                )
                .await?;
            let digest: &[u8] = &sha1;
            if client
                .execute(&insert, &[&sig, &digest, &now_secs()])
                .await?
                == 1
            {
                return Ok(Seen::New);
            }
            let select = client
                .prepare_cached("SELECT body_sha1 FROM signatures WHERE sig = $1")
                .await?;
            let stored: Option<Vec<u8>> =
                client.query_opt(&select, &[&sig]).await?.map(|r| r.get(0));
            Ok(seen(stored, &sha1))
        })
        .await
    }

    pub async fn put_pending(&self, p: PendingLogin) -> Result<(), StoreError> {
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "INSERT INTO pending(openid, fd, ticket, display_name, unionid, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT(openid) DO UPDATE SET fd = excluded.fd,
                        ticket = excluded.ticket, display_name = excluded.display_name,
                        unionid = excluded.unionid, expires_at = excluded.expires_at",
                )
                .await?;
            client
                .execute(
                    &st,
                    &[
                        &p.openid,
                        &i64::from(p.fd),
                        &p.ticket,
                        &p.display_name,
                        &p.unionid,
                        &p.expires_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn take_pending(&self, openid: String) -> Result<Taken, StoreError> {
        bounded(async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "DELETE FROM pending WHERE openid = $1
                     RETURNING fd, ticket, display_name, unionid, expires_at",
                )
                .await?;
            let row = client.query_opt(&st, &[&openid]).await?;
            let row = match row {
                None => None,
                Some(r) => {
                    let fd: i64 = r.get(0);
                    Some(PendingLogin {
                        openid: openid.clone(),
                        // Written from a u32; anything else is not ours.
                        fd: u32::try_from(fd).map_err(|_| {
                            StoreError::Task(format!("pending fd {fd} out of range"))
                        })?,
                        ticket: r.get(1),
                        display_name: r.get(2),
                        unionid: r.get(3),
                        expires_at: r.get(4),
                    })
                }
            };
            Ok(taken(row, now_secs()))
        })
        .await
    }

    pub async fn prune(&self, signature_retention: Duration) -> Result<u64, StoreError> {
        bounded(async {
            let client = self.client().await?;
            let now = now_secs();
            let events = client
                .execute(
                    "DELETE FROM events WHERE claimed_at < $1",
                    &[&(now - EVENT_RETENTION.as_secs() as i64)],
                )
                .await?;
            let sigs = client
                .execute(
                    "DELETE FROM signatures WHERE seen_at < $1",
                    &[&(now - signature_retention.as_secs() as i64)],
                )
                .await?;
            let pending = client
                .execute(
                    "DELETE FROM pending WHERE expires_at < $1",
                    &[&(now - PENDING_GRACE.as_secs() as i64)],
                )
                .await?;
            Ok(events + sigs + pending)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        bounded(async {
            self.client().await?.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }
}

async fn schema_version(client: &tokio_postgres::Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('scan_login_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    stored_version(client).await
}

/// The version row of an existing `scan_login_schema` (0 when empty).
async fn stored_version(client: &impl tokio_postgres::GenericClient) -> Result<i64, StoreError> {
    Ok(client
        .query_opt("SELECT version FROM scan_login_schema", &[])
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}
