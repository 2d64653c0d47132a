//! One store test suite, run against both backends: SQLite (a temp file)
//! and PostgreSQL (a fresh database in a throwaway cluster started by the
//! test, see `e2e::postgres`). Every case opens the store twice, as two
//! instances sharing it would; the concurrency cases claim from many tasks
//! and from two processes (this test binary, re-run as a child).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use protocol::wechat::unix_now;
use wechat_callback::envelope::Reply;
use wechat_callback::store::{
    Claim, Db, NewLogin, PendingLogin, Recorded, STALE_CLAIM, Seen, Store, StoreError, Taken,
    UserRecord,
};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A new, empty store location.
    fn fresh(self, tag: &str) -> Db {
        match self {
            Backend::Sqlite => Db::Sqlite(e2e::process::temp_dir(tag).join("store.db")),
            Backend::Postgres => Db::Postgres(e2e::postgres::cluster().fresh_database(tag)),
        }
    }
}

fn user(openid: &str) -> UserRecord {
    UserRecord {
        openid: openid.into(),
        unionid: None,
        display_name: format!("name of {openid}"),
    }
}

async fn open(db: &Db) -> Store {
    Store::open(db).await.unwrap()
}

/// Runs each case once per backend, as `sqlite::case` and `postgres::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_both_backends!(
    an_event_is_claimed_once_and_each_login_counted_once,
    reopening_keeps_data_and_schema,
    signatures_tell_retries_from_replays,
    a_pending_login_is_taken_once,
    a_dead_handlers_claim_is_taken_over_and_counted_once,
    concurrent_claims_from_many_tasks,
    concurrent_claims_from_two_processes,
    unsubscribes_and_pruning,
);

async fn an_event_is_claimed_once_and_each_login_counted_once(b: Backend) {
    let db = b.fresh("claim");
    let a = open(&db).await;
    let other = open(&db).await; // a second instance
    assert_eq!(a.claim("k1".into()).await.unwrap(), Claim::Claimed);
    assert_eq!(other.claim("k1".into()).await.unwrap(), Claim::Pending);
    let got = a
        .record_login(NewLogin::new("k1", user("o1"), |n| format!("n={n}")))
        .await
        .unwrap();
    assert_eq!(got, Recorded::Counted(1, "n=1".into()));
    assert_eq!(
        other.claim("k1".into()).await.unwrap(),
        Claim::Done(Reply::Text("n=1".into()))
    );
    // Recording the same event again counts nothing.
    assert_eq!(
        other
            .record_login(NewLogin::new("k1", user("o1"), |n| format!("n={n}")))
            .await
            .unwrap(),
        Recorded::AlreadyDone(Reply::Text("n=1".into()))
    );
    assert_eq!(other.claim("k2".into()).await.unwrap(), Claim::Claimed);
    let got = other
        .record_login(NewLogin::new("k2", user("o1"), |n| n.to_string()))
        .await
        .unwrap();
    assert_eq!(got, Recorded::Counted(2, "2".into()));
    assert_eq!(a.login_count("o1".into()).await.unwrap(), 2);
    assert_eq!(a.login_count("nobody".into()).await.unwrap(), 0);
    // finish without a claim stores nothing; after a claim it sticks.
    a.finish("k3".into(), Reply::Success).await.unwrap();
    assert_eq!(a.claim("k3".into()).await.unwrap(), Claim::Claimed);
    a.finish("k3".into(), Reply::Success).await.unwrap();
    assert_eq!(
        a.claim("k3".into()).await.unwrap(),
        Claim::Done(Reply::Success)
    );
    // A done event keeps its first reply.
    a.finish("k3".into(), Reply::Text("late".into()))
        .await
        .unwrap();
    assert_eq!(
        a.claim("k3".into()).await.unwrap(),
        Claim::Done(Reply::Success)
    );
    a.touch_user(user("o2")).await.unwrap();
    assert_eq!(a.login_count("o2".into()).await.unwrap(), 0);
    a.ping().await.unwrap();
}

async fn reopening_keeps_data_and_schema(b: Backend) {
    let db = b.fresh("reopen");
    {
        let s = open(&db).await;
        s.claim("k".into()).await.unwrap();
        s.record_login(NewLogin::new("k", user("o"), |n| n.to_string()))
            .await
            .unwrap();
    }
    let s = open(&db).await;
    assert_eq!(
        s.claim("k".into()).await.unwrap(),
        Claim::Done(Reply::Text("1".into()))
    );
    assert_eq!(s.login_count("o".into()).await.unwrap(), 1);
    // As --check-config runs it: before any runtime exists.
    std::thread::spawn(move || Store::check(&db))
        .join()
        .unwrap()
        .unwrap();
}

async fn signatures_tell_retries_from_replays(b: Backend) {
    let db = b.fresh("sig");
    let a = open(&db).await;
    let other = open(&db).await;
    assert_eq!(
        a.see_signature("s1".into(), [1; 20]).await.unwrap(),
        Seen::New
    );
    assert_eq!(
        other.see_signature("s1".into(), [1; 20]).await.unwrap(),
        Seen::Retry
    );
    assert_eq!(
        other.see_signature("s1".into(), [2; 20]).await.unwrap(),
        Seen::OtherBody
    );
    assert_eq!(
        other.see_signature("s2".into(), [2; 20]).await.unwrap(),
        Seen::New
    );
}

async fn a_pending_login_is_taken_once(b: Backend) {
    let db = b.fresh("pending");
    let a = open(&db).await;
    let other = open(&db).await;
    let p = PendingLogin {
        openid: "o".into(),
        // The largest fd a node can mint: above i32::MAX.
        fd: (15 << 27) | ((1 << 27) - 1),
        ticket: Some("t".into()),
        display_name: "A".into(),
        unionid: Some("u".into()),
        expires_at: unix_now() + 60,
    };
    a.put_pending(p.clone()).await.unwrap();
    // Ten instances ask at once: one gets it.
    let mut asks = Vec::new();
    for _ in 0..10 {
        let s = other.clone();
        asks.push(tokio::spawn(async move {
            s.take_pending("o".into()).await.unwrap()
        }));
    }
    let mut live = 0;
    for ask in asks {
        match ask.await.unwrap() {
            Taken::Live(got) => {
                assert_eq!(got, p);
                live += 1;
            }
            Taken::None => {}
            Taken::Expired => panic!("not expired"),
        }
    }
    assert_eq!(live, 1);
    a.put_pending(PendingLogin {
        expires_at: unix_now() - 1,
        ..p
    })
    .await
    .unwrap();
    assert_eq!(a.take_pending("o".into()).await.unwrap(), Taken::Expired);
}

async fn a_dead_handlers_claim_is_taken_over_and_counted_once(b: Backend) {
    let db = b.fresh("stale");
    let dead = open(&db).await;
    let survivor = open(&db).await;
    assert_eq!(dead.claim("k".into()).await.unwrap(), Claim::Claimed);
    drop(dead); // the instance is killed holding its claim
    assert_eq!(survivor.claim("k".into()).await.unwrap(), Claim::Pending);
    tokio::time::sleep(STALE_CLAIM + Duration::from_millis(1100)).await;
    // Two retries reach two instances at once: one takes over.
    let third = open(&db).await;
    let (x, y) = tokio::join!(survivor.claim("k".into()), third.claim("k".into()));
    let claims = [x.unwrap(), y.unwrap()];
    assert_eq!(
        claims.iter().filter(|c| **c == Claim::TakenOver).count(),
        1,
        "{claims:?}"
    );
    assert_eq!(claims.iter().filter(|c| **c == Claim::Pending).count(), 1);
    let got = survivor
        .record_login(NewLogin::new("k", user("o"), |n| n.to_string()))
        .await
        .unwrap();
    assert_eq!(got, Recorded::Counted(1, "1".into()));
    // The slow original handler finishing late counts nothing more.
    let late = third
        .record_login(NewLogin::new("k", user("o"), |n| n.to_string()))
        .await
        .unwrap();
    assert_eq!(late, Recorded::AlreadyDone(Reply::Text("1".into())));
    assert_eq!(third.login_count("o".into()).await.unwrap(), 1);
}

/// 32 tasks over two handles race for the same 100 events and count a
/// login for each one they win.
async fn concurrent_claims_from_many_tasks(b: Backend) {
    let db = b.fresh("tasks");
    let handles = [open(&db).await, open(&db).await];
    let won = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let s = handles[t % 2].clone();
        let won = won.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..100 {
                let key = format!("ev{k}");
                if s.claim(key.clone()).await.unwrap() == Claim::Claimed {
                    let r = s
                        .record_login(NewLogin::new(key.clone(), user("racer"), |n| n.to_string()))
                        .await
                        .unwrap();
                    assert!(matches!(r, Recorded::Counted(..)), "{r:?}");
                    won.lock().unwrap().push(key);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let won = won.lock().unwrap().clone();
    let distinct: HashSet<_> = won.iter().collect();
    assert_eq!(won.len(), 100, "each event claimed exactly once");
    assert_eq!(distinct.len(), 100);
    assert_eq!(handles[0].login_count("racer".into()).await.unwrap(), 100);
}

const CHILD_DB: &str = "STORE_TEST_CHILD_DB";

/// Two copies of this binary race for the same 200 events; each prints
/// the keys it won.
async fn concurrent_claims_from_two_processes(b: Backend) {
    let db = b.fresh("procs");
    let url = match &db {
        Db::Sqlite(p) => p.display().to_string(),
        Db::Postgres(u) => u.clone(),
    };
    open(&db).await; // migrated before the race
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "--exact",
                "claim_as_a_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    let mut all = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let won: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("WON "))
            .map(String::from)
            .collect();
        assert!(stdout.contains("CHILD DONE"), "{stdout}");
        all.extend(won);
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(
        all.len(),
        200,
        "every event claimed once across processes: {all:?}"
    );
    assert_eq!(distinct.len(), 200);
    let s = open(&db).await;
    assert_eq!(s.login_count("proc".into()).await.unwrap(), 200);
}

/// The child side of [`concurrent_claims_from_two_processes`]; a no-op
/// in a normal run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_as_a_child_process() {
    let Ok(url) = std::env::var(CHILD_DB) else {
        return;
    };
    let s = Store::open(&Db::parse(&url)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for k in 0..200 {
                let key = format!("p{}", (k + t * 25) % 200);
                if s.claim(key.clone()).await.unwrap() == Claim::Claimed {
                    s.record_login(NewLogin::new(key.clone(), user("proc"), |n| n.to_string()))
                        .await
                        .unwrap();
                    won.push(key);
                }
            }
            won
        }));
    }
    // The harness has written "test … " without a newline.
    println!();
    for t in tasks {
        for key in t.await.unwrap() {
            println!("WON {key}");
        }
    }
    println!("CHILD DONE");
}

async fn unsubscribes_and_pruning(b: Backend) {
    let db = b.fresh("prune");
    let s = open(&db).await;
    s.unsubscribe("gone".into()).await.unwrap();
    s.claim("fresh".into()).await.unwrap();
    s.see_signature("sig".into(), [3; 20]).await.unwrap();
    // Nothing is old enough yet.
    assert_eq!(s.prune(Duration::from_secs(600)).await.unwrap(), 0);
    // A zero retention drops signatures seen before this second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.prune(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        s.see_signature("sig".into(), [4; 20]).await.unwrap(),
        Seen::New
    );
}

/// PostgreSQL going away: every call fails with an error within the
/// operation bound (the handler answers 503), and the pool works again
/// once the server is back, without a restart of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_is_an_error_and_the_pool_recovers() {
    let cluster = tokio::task::spawn_blocking(|| e2e::postgres::Cluster::start("127.0.0.1", false))
        .await
        .unwrap();
    let db = Db::Postgres(cluster.url("postgres"));
    let s = open(&db).await;
    assert_eq!(s.claim("before".into()).await.unwrap(), Claim::Claimed);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    // Each call ends in an error (bounded at 2 s inside), never hangs: 30 s
    // is only the test's guard against a hang.
    for key in ["down1", "down2"] {
        let e = tokio::time::timeout(Duration::from_secs(30), s.claim(key.into()))
            .await
            .expect("a call to a stopped server hung")
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Postgres(_) | StoreError::Pool(_) | StoreError::Timeout(_)
            ),
            "{e:?}"
        );
    }
    assert!(s.ping().await.is_err());
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.run();
        cluster
    })
    .await
    .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if s.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the pool reconnects once the server is back");
    assert_eq!(s.claim("before".into()).await.unwrap(), Claim::Pending);
    assert_eq!(s.claim("after".into()).await.unwrap(), Claim::Claimed);
    drop(cluster);
}

#[tokio::test]
async fn check_config_passes_an_unreachable_postgres_and_refuses_a_bad_url() {
    // A free port nobody listens on: not a configuration error (the daemon
    // waits for the server at start), so the check passes with a warning.
    let port = e2e::free_port();
    let db = Db::parse(&format!("postgres://u@127.0.0.1:{port}/d?sslmode=disable"));
    // As --check-config runs it: before any runtime exists.
    std::thread::spawn(move || Store::check(&db))
        .join()
        .unwrap()
        .unwrap();
    let e = Store::check(&Db::parse("postgres://u@h/d?sslmode=bogus")).unwrap_err();
    assert!(matches!(e, StoreError::BadUrl(_)), "{e:?}");
    // Unreachable is told apart from refused.
    let down = Store::open(&Db::parse(&format!(
        "postgres://u@127.0.0.1:{port}/d?sslmode=disable"
    )))
    .await
    .err()
    .unwrap();
    assert!(down.is_unreachable(), "{down:?}");
}
