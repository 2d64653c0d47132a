//! Faults of the WeChat API, injected at the simulator while the three
//! real daemons run: whatever the API does, every callback is answered
//! within WeChat's 5 s (one attempt, no retry needed), and the gateway
//! serves codes again as soon as the API is back, without a restart.

use std::time::Duration;

use e2e::browser::next_json_within;
use serde_json::{Value, json};

use crate::stack::{Options, Stack};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn faults(stack: &Stack, body: Value) {
    let r = stack
        .http
        .post(format!("{}/sim/faults", stack.sim_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{body}");
}

async fn clear(stack: &Stack) {
    let r = stack
        .http
        .delete(format!("{}/sim/faults", stack.sim_url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// A scan of `page` answered within WeChat's 5 s at the first attempt,
/// and what the user was told matches what the page got.
async fn scan_in_time(stack: &Stack, page: &mut crate::stack::Browser, openid: &str) {
    let answer = stack.scan(&page.ticket, openid, false).await;
    assert_eq!(answer["http_status"], 200, "{answer}");
    assert_eq!(answer["attempts"], 1, "answered past 5 s: {answer}");
    let reply = answer["reply"].as_str().unwrap_or_default().to_string();
    assert!(reply.contains("login successful"), "{answer}");
    let ok = page.wait_for("scan_success", WAIT).await;
    assert_eq!(ok["openid"], openid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_never_break_the_five_second_promise() {
    let stack = Stack::start(Options::default()).await;

    // The page minted its code before the API broke.
    let mut page = stack.browser().await;
    // The token endpoint down, with every token expired: user/info cannot
    // be asked, so the fallback name is used, in time.
    faults(
        &stack,
        json!({"fail_next": 100000, "errcode": -1, "path": "/cgi-bin/stable_token", "expire_tokens": true}),
    )
    .await;
    let openid = "oFault0000000000000000000Ft01";
    let answer = stack.scan(&page.ticket, openid, false).await;
    assert_eq!(
        (answer["http_status"].clone(), answer["attempts"].clone()),
        (json!(200), json!(1)),
        "{answer}"
    );
    assert_eq!(
        answer["reply"], "WeChat user Ft01, login successful! This is your 1st login.",
        "{answer}"
    );
    page.wait_for("scan_success", WAIT).await;

    // A new page cannot get a code while the token endpoint is down...
    let url = format!("ws://127.0.0.1:{}/ws", stack.gateway_port);
    let mut ws = e2e::browser::connect(&url, &[]).await.unwrap();
    let first = next_json_within(&mut ws, WAIT).await;
    assert_eq!(first["error"], "wechat_unavailable", "{first}");
    // ...and gets one, unasked, once it is back.
    clear(&stack).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = next_json_within(&mut ws, left).await;
        if v["message_type"] == "qrcode_url" {
            break;
        }
        assert_eq!(v["error"], "wechat_unavailable", "{v}");
    }

    // A 40001 storm (every token "invalid" for a while): refreshed once,
    // retried once, never a retry storm; scans still answered in time.
    let mut page = stack.browser().await;
    faults(&stack, json!({"fail_next": 20, "errcode": 40001})).await;
    scan_in_time(&stack, &mut page, "oFault0000000000000000000Ft02").await;
    clear(&stack).await;

    // Three seconds of latency on every API call: user/info is given up
    // on (fallback name), the reply still comes in time.
    let mut page = stack.browser().await;
    faults(&stack, json!({"latency_ms": 3000})).await;
    scan_in_time(&stack, &mut page, "oFault0000000000000000000Ft03").await;
    clear(&stack).await;
}

/// SIGKILL of the gateway in the middle of a burst of 500 scans: every
/// callback is answered in time; every login either reached its page and
/// was counted once (and the user told so), or was not counted and the
/// user was told to scan again (and the page has nothing), or, for a line
/// whose answer died with the gateway after its page may have been
/// written, was not counted and the user was told it could not be
/// confirmed (never that it failed); no page got anyone else's login;
/// after a restart (no manual action on the callback) logins go through
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_burst_leaves_an_exact_ledger() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PAGES: usize = 500;
    let mut stack = Stack::start(Options {
        many_pages: true,
        ..Options::default()
    })
    .await;
    let mut pages = Vec::with_capacity(PAGES);
    for _ in 0..PAGES {
        pages.push(stack.browser().await);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut scans = Vec::with_capacity(PAGES);
    for (i, page) in pages.iter().enumerate() {
        let (http, url, done, limit) = (
            stack.http.clone(),
            format!("{}/sim/scan", stack.sim_url),
            Arc::clone(&done),
            Arc::clone(&limit),
        );
        let body =
            json!({"ticket": page.ticket, "openid": format!("oBurst{i:024}"), "subscribed": false});
        scans.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let answer = crate::stack::sim_post(&http, &url, &body).await;
            done.fetch_add(1, Ordering::SeqCst);
            answer
        }));
    }
    // Mid-burst: a third of the scans are answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < PAGES / 3 {
        assert!(tokio::time::Instant::now() < deadline, "the burst stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.gateway.as_mut().expect("gateway").kill();
    stack.start_gateway().await;

    let mut answers = Vec::with_capacity(PAGES);
    for scan in scans {
        answers.push(scan.await.unwrap());
    }
    let mut logged_in = 0;
    let mut unconfirmed = 0;
    for (i, (page, answer)) in pages.iter_mut().zip(&answers).enumerate() {
        let openid = format!("oBurst{i:024}");
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(answer["attempts"], 1, "not answered within 5 s: {answer}");
        let reply = answer["reply"].as_str().unwrap_or_default();
        // What the page got before its gateway died (frames already sent
        // are still readable), up to the close.
        let mut got = Vec::new();
        while let Some(frame) = page.next_frame_or_close(Duration::from_secs(10)).await {
            if frame["message_type"] == "scan_success" {
                got.push(frame["openid"].as_str().unwrap_or_default().to_string());
            }
        }
        assert!(
            got.iter().all(|o| *o == openid),
            "a page got someone else's login: {got:?}"
        );
        if reply.contains("login successful! This is your 1st login.") {
            assert_eq!(
                got,
                std::slice::from_ref(&openid),
                "told logged in, page did not get it: {answer}"
            );
            logged_in += 1;
        } else if reply.contains("could not be confirmed") {
            unconfirmed += 1;
            assert!(got.len() <= 1, "{answer}");
        } else {
            assert!(reply.contains("did not complete"), "{answer}");
            assert!(
                got.is_empty(),
                "told it failed, but the page was logged in: {answer}"
            );
        }
    }
    let metrics = stack.callback_metrics().await;
    let counted = e2e::http::metric(&metrics, "wechat_callback_logins_total");
    assert_eq!(
        counted,
        Some(logged_in as f64),
        "counted logins = logins the pages got"
    );
    assert!(
        logged_in > 0 && logged_in < PAGES,
        "the kill was not mid-burst: {logged_in}"
    );
    eprintln!(
        "burst: {logged_in} logged in, {unconfirmed} unconfirmed, the rest told to scan again"
    );
    // Back without manual action.
    let mut page = stack.browser().await;
    scan_in_time(&stack, &mut page, "oBurstAfter0000000000000000").await;
}

/// A callback instance pushed a login and died before recording it.
/// WeChat's retry reaches another instance, which takes the stale claim
/// over and resends the line (`resend`): the gateway pushes the spent
/// ticket again for the same openid, so the login is counted exactly once
/// and the user reads the success reply, not "scan again". Another
/// openid's resend of that ticket is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_pushed_by_an_instance_that_died_is_counted_once_by_the_next() {
    let pg = e2e::postgres::cluster();
    let url = pg.fresh_database("takeover");
    let db = e2e::postgres::Cluster::database_of(&url);
    let stack = Stack::start(Options {
        db_url: Some(url),
        gateway_extra: vec!["--notify-require-ticket".into()],
        ..Options::default()
    })
    .await;
    let mut page = stack.browser().await;
    let fd = stack.fd_of(&page.ticket).await;
    let openid = "o-takeover";
    let created = e2e::wechat::now();
    let body = e2e::wechat::scan_event(openid, fd, &page.ticket, true, created);
    let key = protocol::wechat::xml::Message::parse(body.as_bytes())
        .unwrap()
        .dedupe_key();

    // The instance that died: it claimed the event a minute ago ...
    pg.psql(
        &db,
        &format!(
            "INSERT INTO events(key, state, claimed_at) VALUES ('{key}', 0, {})",
            created - 60
        ),
    );
    // ... and pushed the login before it could record it.
    let mut bus = e2e::bus::Bus::connect(("127.0.0.1", stack.notify_port)).await;
    let pushed = json!({"type": "scan", "fd": fd, "nickname": "Dead", "openid": openid,
        "ticket": page.ticket});
    assert_eq!(bus.ask(&pushed.to_string()).await, e2e::bus::OK);
    page.wait_for("scan_success", Duration::from_secs(5)).await;
    // Someone else cannot use the resend door.
    let other = json!({"type": "scan", "fd": fd, "nickname": "M", "openid": "o-mallory",
        "ticket": page.ticket, "resend": true});
    assert_eq!(
        bus.ask(&other.to_string()).await,
        e2e::bus::err("ticket_mismatch")
    );

    // WeChat's retry reaches the surviving instance.
    let query = e2e::wechat::signed_query(crate::stack::TOKEN, e2e::wechat::now());
    let resp = stack
        .http
        .post(format!("{}/wechat?{query}", stack.callback_url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reply = resp.text().await.unwrap();
    assert!(reply.contains("login successful"), "{reply}");
    let again = page.wait_for("scan_success", Duration::from_secs(5)).await;
    assert_eq!(again["openid"], openid);
    assert_eq!(
        pg.psql(
            &db,
            &format!("SELECT login_count FROM users WHERE openid = '{openid}'")
        ),
        "1"
    );
}

/// The store's disk fills up: the callback answers 503 (WeChat retries),
/// records and pushes nothing, stays up, and WeChat's retry of the very
/// same request logs the user in once space is back. The database lives
/// on a 2 MiB tmpfs mounted by the test (root), filled by a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_503_and_the_retry_succeeds_once_space_is_back() {
    use std::io::Write;

    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = e2e::process::temp_dir("diskfull");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "cannot mount a tmpfs at {} (this test needs root)",
        dir.display()
    );
    let _mount = Mount(dir.clone());
    let stack = Stack::start(Options {
        db_url: Some(dir.join("scan-login.db").display().to_string()),
        ..Options::default()
    })
    .await;
    let mut page = stack.browser().await;
    let fd = stack.fd_of(&page.ticket).await;
    let openid = "o-diskfull";
    let body = e2e::wechat::scan_event(openid, fd, &page.ticket, true, e2e::wechat::now());
    let query = e2e::wechat::signed_query(crate::stack::TOKEN, e2e::wechat::now());
    let post = || async {
        let r = stack
            .http
            .post(format!("{}/wechat?{query}", stack.callback_url))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    // Fill the disk.
    let filler = dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let (status, text) = post().await;
    assert_eq!(status, 503, "disk full: {text}");
    // Nothing pushed while nothing can be recorded.
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = page.ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                return Some(t.to_string());
            }
        }
        None
    })
    .await;
    assert!(
        matches!(quiet, Err(_) | Ok(None)),
        "a frame arrived while the disk was full: {quiet:?}"
    );
    let metrics = stack.callback_metrics().await;
    let errors = e2e::http::metric(&metrics, "wechat_callback_store_errors_total");
    assert!(errors.is_some_and(|n| n >= 1.0), "{metrics}");

    // Space is back: WeChat's retry of the same request goes through.
    std::fs::remove_file(&filler).unwrap();
    let (status, text) = post().await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("login successful"), "{text}");
    let f = page.wait_for("scan_success", Duration::from_secs(5)).await;
    assert_eq!(f["openid"], openid);
    // Once: a further retry is answered from the store.
    let (status, again) = post().await;
    assert_eq!(
        (status, again.contains("1st login")),
        (200, true),
        "{again}"
    );
}
