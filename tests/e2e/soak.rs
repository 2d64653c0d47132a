//! The soak: pages coming and going, scans through the simulator (with
//! its retries), and faults at random (gateway restarts mid-burst, the
//! WeChat API failing, slow or with its tokens expired, the store locked
//! for seconds, pages closed before their scan, a code scanned twice),
//! then an exact ledger over every scan:
//!
//! - "login successful" ⇔ exactly one `scan_success` for that user, on
//!   the page scanned ⇔ a count of exactly 1 in the store;
//! - "scan again" ⇔ no `scan_success` for that user anywhere and no count;
//! - "could not be confirmed" (the bus answer was lost with a restarting
//!   gateway) ⇔ no count, and at most one `scan_success`, on its own page;
//! - no page ever got another user's login; the gateway's memory does not
//!   grow with the number of rounds.
//!
//! The store is PostgreSQL (a throwaway cluster), so the counts are read
//! with psql. Length: `SCAN_LOGIN_SOAK_ROUNDS` (default 12, CI's short
//! form; each round is a few seconds). The faults are drawn from a seed
//! the test prints; `SCAN_LOGIN_SOAK_SEED=N` replays a run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::stack::{Browser, Options, Stack, sim_post};

/// Pages opened per round.
const PAGES_PER_ROUND: usize = 12;

/// How long the test waits for a condition (pages seen closed, frames).
const WAIT: Duration = Duration::from_secs(20);

/// The fault schedule's random numbers (splitmix64: small, and the same
/// sequence for the same seed on every machine).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Waits (bounded) until the gateway counts `n` open browser connections.
async fn wait_open_connections(stack: &Stack, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = stack.gateway_metrics().await;
        let open = e2e::http::metric(&m, "ws_gateway_connections_open");
        if open == Some(n as f64) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway still counts {open:?} open connections, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A page whose frames a reader task collects.
struct Page {
    id: usize,
    ticket: String,
    frames: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

async fn open(stack: &Stack, id: usize) -> Page {
    let Browser { mut ws, ticket, .. } = stack.browser().await;
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = frames.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m
                && let Ok(v) = serde_json::from_str::<Value>(&t)
            {
                sink.lock().unwrap().push(v);
            }
        }
    });
    Page {
        id,
        ticket,
        frames,
        reader,
    }
}

/// What the user was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    LoggedIn,
    ScanAgain,
    Unconfirmed,
}

fn told(answer: &Value) -> Told {
    let reply = answer["reply"].as_str().unwrap_or_default();
    if reply.contains("login successful") {
        Told::LoggedIn
    } else if reply.contains("could not be confirmed") {
        Told::Unconfirmed
    } else {
        assert!(
            reply.contains("scan") || reply.contains("Scan"),
            "an answer that is neither success nor scan again: {answer}"
        );
        Told::ScanAgain
    }
}

fn gateway_rss(stack: &Stack) -> u64 {
    let pid = stack.gateway.as_ref().map(|g| g.pid()).unwrap_or(0);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_an_exact_ledger() {
    let rounds: usize = std::env::var("SCAN_LOGIN_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("SCAN_LOGIN_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("soak: seed {seed} (SCAN_LOGIN_SOAK_SEED={seed} replays these faults)");
    let mut rng = Rng(seed);
    let pg = e2e::postgres::cluster();
    let url = pg.fresh_database("soak");
    let db = e2e::postgres::Cluster::database_of(&url);
    let mut stack = Stack::start(Options {
        db_url: Some(url),
        gateway_extra: vec!["--notify-require-ticket".into()],
        many_pages: true,
        ..Options::default()
    })
    .await;
    // Each scan: (openid, the page's id, what the user was told).
    let mut ledger: Vec<(String, usize, Told)> = Vec::new();
    let mut all_pages: Vec<Page> = Vec::new();
    let mut rss = Vec::new();
    let mut next_user = 0usize;
    let mut faults: HashMap<&str, usize> = HashMap::new();
    let mut refusals_at_least = 0;
    for _round in 0..rounds {
        let mut pages = Vec::new();
        for _ in 0..PAGES_PER_ROUND {
            let id = all_pages.len() + pages.len();
            pages.push(open(&stack, id).await);
        }
        // This round's faults, drawn from the seed.
        let api = match rng.below(8) {
            0 | 1 => {
                let n = 1 + rng.below(6);
                let code = [-1, 40001, 45009][rng.below(3) as usize];
                Some(json!({"fail_next": n, "errcode": code, "path": "/cgi-bin/user/info"}))
            }
            2 => Some(json!({"latency_ms": 300 + rng.below(1200)})),
            3 => Some(json!({"expire_tokens": true})),
            _ => None,
        };
        if let Some(body) = &api {
            *faults.entry("api").or_default() += 1;
            crate::faults::faults(&stack, body.clone()).await;
        }
        let restart_after = rng.one_in(5).then(|| 3 + rng.below(6) as usize);
        let lock_store_ms = rng.one_in(5).then(|| 1000 + rng.below(2000));
        // Some pages close before their scan: those scans are refused.
        let closed = 1 + rng.below(3) as usize;
        for p in pages.iter().take(closed) {
            p.reader.abort();
        }
        refusals_at_least += closed + 1;
        // The gateway has seen them go before their codes are scanned.
        wait_open_connections(&stack, PAGES_PER_ROUND - closed).await;
        // Scans: one per page, and a second user on one page's code.
        let mut scans: Vec<(String, usize, String)> = pages
            .iter()
            .map(|p| {
                next_user += 1;
                (format!("o-soak-{next_user:06}"), p.id, p.ticket.clone())
            })
            .collect();
        // A second user scans one live page's code (refused).
        next_user += 1;
        let twice = &pages[closed + rng.below((PAGES_PER_ROUND - closed) as u64) as usize];
        scans.push((
            format!("o-soak-{next_user:06}"),
            twice.id,
            twice.ticket.clone(),
        ));
        let sim = format!("{}/sim/scan", stack.sim_url);
        // Two at a time, so a restart lands in the middle of the burst.
        let limit = Arc::new(tokio::sync::Semaphore::new(2));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = scans
            .iter()
            .map(|(openid, _, ticket)| {
                let body = json!({"ticket": ticket, "openid": openid, "subscribed": true});
                let (http, sim) = (stack.http.clone(), sim.clone());
                let (limit, done) = (limit.clone(), done.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire().await.unwrap();
                    let answer = sim_post(&http, &sim, &body).await;
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    answer
                })
            })
            .collect();
        // The store locked for a while (every statement waits, some past
        // the callback's 2 s bound: 503, and WeChat's retry).
        let lock = lock_store_ms.map(|ms| {
            *faults.entry("store_locked").or_default() += 1;
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
                pg.psql(
                    &db,
                    &format!(
                        "BEGIN; LOCK TABLE events, users IN ACCESS EXCLUSIVE MODE; \
                         SELECT pg_sleep({ms} / 1000.0); COMMIT;"
                    ),
                )
            })
        });
        if let Some(after) = restart_after {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while done.load(std::sync::atomic::Ordering::SeqCst) < after {
                assert!(tokio::time::Instant::now() < deadline, "the burst stalled");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stack.gateway.as_mut().expect("gateway").kill();
            stack.start_gateway().await;
            *faults.entry("gateway_restarts").or_default() += 1;
            refusals_at_least += 1;
        }
        let answers: Vec<Value> = join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if let Some(lock) = lock {
            lock.await.unwrap();
        }
        if api.is_some() {
            crate::faults::faults(&stack, json!({"latency_ms": 0, "fail_next": 0})).await;
        }
        for ((openid, page, _), answer) in scans.into_iter().zip(&answers) {
            assert_eq!(answer["http_status"], 200, "{answer}");
            ledger.push((openid, page, told(answer)));
        }
        // Pages of this round leave (as browsers do), once every page whose
        // user was told "login successful" has its frame.
        let deadline = tokio::time::Instant::now() + WAIT;
        for (openid, page, told) in ledger.iter().rev().take(answers.len()) {
            if *told != Told::LoggedIn {
                continue;
            }
            let p = pages.iter().find(|p| p.id == *page).expect("a page");
            while !p
                .frames
                .lock()
                .unwrap()
                .iter()
                .any(|f| f["openid"] == *openid)
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{openid}: told logged in, no scan_success on page {page}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for p in &pages {
            p.reader.abort();
        }
        all_pages.extend(pages);
        rss.push(gateway_rss(&stack));
    }

    // The ledger.
    let counts_text = pg.psql(&db, "SELECT openid || '=' || login_count FROM users");
    let counts: HashMap<&str, i64> = counts_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(o, n)| (o, n.parse().unwrap()))
        .collect();
    // Every scan_success, by the page that got it.
    let mut got: HashMap<String, Vec<usize>> = HashMap::new();
    for p in &all_pages {
        for f in p.frames.lock().unwrap().iter() {
            if f["message_type"] == "scan_success" {
                got.entry(f["openid"].as_str().unwrap_or_default().to_string())
                    .or_default()
                    .push(p.id);
            }
        }
    }
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for (openid, page, told) in &ledger {
        let pushed = got.get(openid).cloned().unwrap_or_default();
        let count = counts.get(openid.as_str()).copied().unwrap_or(0);
        assert!(
            pushed.iter().all(|p| p == page),
            "{openid}'s login reached another page: {pushed:?}, scanned {page}"
        );
        match told {
            Told::LoggedIn => {
                *tally.entry("logged_in").or_default() += 1;
                assert_eq!(
                    pushed.len(),
                    1,
                    "{openid}: told logged in, pushed {pushed:?}"
                );
                assert_eq!(count, 1, "{openid}: told logged in, counted {count}");
            }
            Told::ScanAgain => {
                *tally.entry("scan_again").or_default() += 1;
                assert!(
                    pushed.is_empty(),
                    "{openid}: told to scan again, pushed {pushed:?}"
                );
                assert_eq!(count, 0, "{openid}: told to scan again, counted {count}");
            }
            Told::Unconfirmed => {
                *tally.entry("unconfirmed").or_default() += 1;
                assert!(pushed.len() <= 1, "{openid}: pushed {pushed:?}");
                assert_eq!(count, 0, "{openid}: unconfirmed, counted {count}");
            }
        }
    }
    // Nothing counted that nobody scanned.
    assert!(
        counts
            .iter()
            .all(|(o, n)| *n == 0 || ledger.iter().any(|(l, _, _)| l == o)),
        "{counts:?}"
    );
    println!(
        "soak: seed {seed}, {rounds} rounds, {} pages, {} scans, faults {faults:?}: {tally:?}; gateway RSS per round (KiB): {:?}",
        all_pages.len(),
        ledger.len(),
        rss.iter().map(|b| b / 1024).collect::<Vec<_>>()
    );
    // Logins happened, and at least the refusals the faults guarantee
    // (closed pages, a second user per round, one per restart).
    assert!(
        tally.get("logged_in").copied().unwrap_or(0) >= rounds,
        "{tally:?}"
    );
    assert!(
        tally.get("scan_again").copied().unwrap_or(0) >= refusals_at_least,
        "{tally:?}"
    );
    // Memory does not grow with the rounds: the last rounds' RSS within
    // 8 MiB of the first full round after the last restart's warm-up.
    if let (Some(first), Some(last)) = (rss.get(rounds / 2), rss.last()) {
        assert!(
            *last < first + 8 * 1024 * 1024,
            "gateway RSS grew from {first} to {last} bytes: {rss:?}"
        );
    }
}
