//! The soak: pages coming and going, scans through the simulator (with
//! its retries), and faults at random (gateway restarts, user/info
//! failing, pages closed before their scan, a code scanned twice), then an
//! exact ledger over every scan:
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
//! form; each round is a few seconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::stack::{Browser, Options, Stack, sim_post};

/// Pages opened per round.
const PAGES_PER_ROUND: usize = 12;

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
    let pg = e2e::postgres::cluster();
    let url = pg.fresh_database("soak");
    let db = e2e::postgres::Cluster::database_of(&url);
    let mut stack = Stack::start(Options {
        db_url: Some(url),
        gateway_extra: vec![
            "--notify-require-ticket".into(),
            "--qr-mint-rate".into(),
            "0".into(),
            "--max-connections-per-ip".into(),
            "0".into(),
        ],
        ..Options::default()
    })
    .await;
    // Each scan: (openid, the page's id, what the user was told).
    let mut ledger: Vec<(String, usize, Told)> = Vec::new();
    let mut all_pages: Vec<Page> = Vec::new();
    let mut rss = Vec::new();
    let mut next_user = 0usize;
    let mut restarts = 0;
    for round in 0..rounds {
        let mut pages = Vec::new();
        for _ in 0..PAGES_PER_ROUND {
            let id = all_pages.len() + pages.len();
            pages.push(open(&stack, id).await);
        }
        // Faults for this round, from the round number (reproducible).
        let api_down = round % 4 == 1;
        if api_down {
            crate::faults::faults(
                &stack,
                json!({"fail_next": 6, "errcode": -1, "path": "/cgi-bin/user/info"}),
            )
            .await;
        }
        // Two pages close before their scan.
        for p in pages.iter().take(2) {
            p.reader.abort();
        }
        // Let the gateway see them go before their codes are scanned.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Scans: one per page, and a second user on one page's code.
        let mut scans: Vec<(String, usize, String)> = pages
            .iter()
            .map(|p| {
                next_user += 1;
                (format!("o-soak-{next_user:06}"), p.id, p.ticket.clone())
            })
            .collect();
        next_user += 1;
        scans.push((
            format!("o-soak-{next_user:06}"),
            pages[5].id,
            pages[5].ticket.clone(),
        ));
        let restart_mid_round = round % 5 == 3;
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
        if restart_mid_round {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while done.load(std::sync::atomic::Ordering::SeqCst) < 4 {
                assert!(tokio::time::Instant::now() < deadline, "the burst stalled");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stack.gateway.as_mut().expect("gateway").kill();
            stack.start_gateway().await;
            restarts += 1;
        }
        let answers: Vec<Value> = join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for ((openid, page, _), answer) in scans.into_iter().zip(&answers) {
            assert_eq!(answer["http_status"], 200, "{answer}");
            ledger.push((openid, page, told(answer)));
        }
        // Pages of this round leave (as browsers do), after their frames
        // have had time to arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
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
        "soak: {rounds} rounds, {} pages, {} scans, {restarts} gateway restarts: {tally:?}; gateway RSS per round (KiB): {:?}",
        all_pages.len(),
        ledger.len(),
        rss.iter().map(|b| b / 1024).collect::<Vec<_>>()
    );
    // Each round had logins and refusals (closed pages, a second user);
    // a restart refuses more.
    assert!(
        tally.get("logged_in").copied().unwrap_or(0) >= rounds * 3,
        "{tally:?}"
    );
    assert!(
        tally.get("scan_again").copied().unwrap_or(0) >= rounds * 3 + restarts,
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
