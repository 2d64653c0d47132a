//! The login flows of the contract, end to end.

use std::time::Duration;

use e2e::wechat::{now, post_signed, reply_content, scan_event};
use serde_json::Value;

use crate::stack::{AES_KEY, JWT_SECRET, Options, SECRET, Stack, TOKEN};

const WAIT: Duration = Duration::from_secs(10);

fn reply(v: &Value) -> String {
    v["reply"].as_str().unwrap_or_default().to_string()
}

fn check_token(token: &str, openid: &str, name: &str) {
    let c = e2e::token::verify(token, JWT_SECRET, None);
    assert_eq!(
        (c.sub.as_str(), c.nickname.as_str(), c.exp - c.iat),
        (openid, name, 300)
    );
}

async fn full_login(safe_mode: bool) {
    let stack = Stack::start(Options {
        safe_mode,
        ..Options::default()
    })
    .await;
    let mut browser = stack.browser().await;
    // The image URL is the simulator's showqrcode with the ticket encoded.
    let img = stack.http.get(&browser.image_url).send().await.unwrap();
    assert_eq!(img.status(), 200, "QR image for {}", browser.image_url);
    let openid = "oE2E00000000000000000000Ab12";
    let answer = stack.scan(&browser.ticket, openid, false).await;
    assert_eq!(
        reply(&answer),
        "WeChat user Ab12, login successful! This is your 1st login.",
        "{answer}"
    );
    let ok = browser.wait_for("scan_success", WAIT).await;
    assert_eq!(ok["user"], "WeChat user Ab12");
    assert_eq!(ok["openid"], openid);
    check_token(
        ok["token"].as_str().expect("token"),
        openid,
        "WeChat user Ab12",
    );

    // The same user again, now a follower (SCAN event): the 2nd login.
    let mut second = stack.browser().await;
    let answer = stack.scan(&second.ticket, openid, true).await;
    assert_eq!(answer["event"], "SCAN", "{answer}");
    assert_eq!(
        reply(&answer),
        "WeChat user Ab12, login successful! This is your 2nd login."
    );
    assert_eq!(
        second.wait_for("scan_success", WAIT).await["user"],
        "WeChat user Ab12"
    );

    // A used code cannot log anyone in again.
    let again = stack
        .scan(&browser.ticket, "oSomeoneElse000000000000Zz99", false)
        .await;
    assert!(reply(&again).contains("refresh the login page"), "{again}");

    let metrics = stack.callback_metrics().await;
    assert!(
        metrics.contains("wechat_callback_logins_total 2"),
        "{metrics}"
    );
    for log in [stack.callback.stderr(), stack.sim.stderr()] {
        for secret in [JWT_SECRET, SECRET, AES_KEY] {
            assert!(!log.contains(secret), "a secret leaked into a log");
        }
    }
}

#[tokio::test]
async fn full_login_plain_mode() {
    full_login(false).await;
}

#[tokio::test]
async fn full_login_safe_mode() {
    full_login(true).await;
}

#[tokio::test]
async fn a_retried_callback_counts_once() {
    // The simulator gives up on each delivery after 300 ms and retries; the
    // callback is slowed by 700 ms of API latency, so WeChat's retries
    // arrive while the first delivery is still being handled.
    let stack = Stack::start(Options {
        sim_callback_timeout_ms: Some(300),
        ..Options::default()
    })
    .await;
    let mut browser = stack.browser().await;
    let r = stack
        .http
        .post(format!("{}/sim/faults", stack.sim_url))
        .json(&serde_json::json!({"latency_ms": 700}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let answer = stack
        .scan(&browser.ticket, "oRetry0000000000000000000Rt01", false)
        .await;
    assert!(
        answer["attempts"].as_u64().unwrap_or(0) >= 2,
        "no retry happened: {answer}"
    );
    browser.wait_for("scan_success", WAIT).await;
    stack
        .http
        .delete(format!("{}/sim/faults", stack.sim_url))
        .send()
        .await
        .unwrap();
    let mut second = stack.browser().await;
    let answer = stack
        .scan(&second.ticket, "oRetry0000000000000000000Rt01", true)
        .await;
    assert_eq!(
        reply(&answer),
        "WeChat user Rt01, login successful! This is your 2nd login.",
        "{answer}"
    );
    second.wait_for("scan_success", WAIT).await;
}

#[tokio::test]
async fn two_callback_instances_share_the_database() {
    let stack = Stack::start(Options::default()).await;
    let port = e2e::free_port();
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--token",
        TOKEN,
        "--notify-addr",
        &format!("127.0.0.1:{}", stack.notify_port),
        "--db",
        &stack.db.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut other = e2e::Daemon::spawn(&e2e::bin_path("wechat-callback"), &args, &[]);
    other
        .wait_healthy(&format!("http://127.0.0.1:{port}/healthz"))
        .await;

    let openid = "oTwoInstances00000000000Tw02";
    let mut first = stack.browser().await;
    assert!(reply(&stack.scan(&first.ticket, openid, false).await).ends_with("1st login."));
    first.wait_for("scan_success", WAIT).await;
    // The second login reaches the other instance (as a load balancer would
    // send it), signed as WeChat signs it.
    let mut second = stack.browser().await;
    let fd = stack.fd_of(&second.ticket).await;
    let body = scan_event(openid, fd, &second.ticket, true, now());
    let raw = post_signed(
        &stack.http,
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        body,
    )
    .await;
    assert!(
        reply_content(&raw).unwrap().ends_with("2nd login."),
        "{raw}"
    );
    second.wait_for("scan_success", WAIT).await;
}

#[tokio::test]
async fn gateway_down_during_a_scan_then_back() {
    let mut stack = Stack::start(Options::default()).await;
    let browser = stack.browser().await;
    let ticket = browser.ticket.clone();
    stack.stop_gateway();
    let answer = stack
        .scan(&ticket, "oDown000000000000000000Dn03", false)
        .await;
    assert!(
        reply(&answer).contains("refresh the login page"),
        "{answer}"
    );
    // Back again: the next scan works without restarting the callback, and
    // the failed one was not counted.
    stack.start_gateway().await;
    let mut browser = stack.browser().await;
    // Until the callback is back on the bus: a deadline, not a count of
    // tries, so a slow box only takes longer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        last = stack
            .scan(&browser.ticket, "oDown000000000000000000Dn03", true)
            .await;
        if reply(&last).contains("login successful") || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reply(&last),
        "WeChat user Dn03, login successful! This is your 1st login.",
        "{last}"
    );
    browser.wait_for("scan_success", WAIT).await;
}

#[tokio::test]
async fn an_expired_code_cannot_be_scanned() {
    let stack = Stack::start(Options {
        qr_expire_seconds: Some(2),
        ..Options::default()
    })
    .await;
    let mut browser = stack.browser().await;
    let minted = tokio::time::Instant::now();
    let ticket = browser.ticket.clone();
    // A refresh within 5 s of the last code is refused: asked at once (the
    // whole 5 s of margin for one WebSocket round trip) and again as soon
    // as the code expires (3 s of margin, before anything slower runs).
    browser.send(r#"{"cmd":"refresh"}"#).await;
    let refused = browser.wait_for("error", WAIT).await;
    assert_eq!(refused["error"], "rate_limited", "{refused}");
    browser
        .wait_for("qrcode_expired", Duration::from_secs(8))
        .await;
    browser.send(r#"{"cmd":"refresh"}"#).await;
    let refused = browser.wait_for("error", WAIT).await;
    assert_eq!(refused["error"], "rate_limited", "{refused}");
    let answer = stack
        .scan(&ticket, "oLate00000000000000000000Lt04", false)
        .await;
    assert!(
        answer["http_status"].as_u64().unwrap() >= 400,
        "expired ticket accepted: {answer}"
    );
    assert!(reply(&answer).is_empty());
    // After 5 s a refresh brings a new code that works. `minted` was taken
    // after the gateway minted, so this wait is past 5 s whatever the load.
    tokio::time::sleep_until(minted + Duration::from_millis(5200)).await;
    browser.send(r#"{"cmd":"refresh"}"#).await;
    browser.wait_for("qrcode_url", WAIT).await;
    assert_ne!(browser.ticket, ticket);
    let answer = stack
        .scan(&browser.ticket, "oLate00000000000000000000Lt04", false)
        .await;
    assert!(reply(&answer).ends_with("1st login."), "{answer}");
}

#[tokio::test]
async fn a_notification_sent_with_netcat_reaches_the_page() {
    // No skip: nc with -N (netcat-openbsd) is a test prerequisite that
    // scripts/install-test-deps.sh and .ci/run install. Without it, or with
    // a netcat that has no -N, this fails and says why.
    let help = std::process::Command::new("nc")
        .arg("-h")
        .output()
        .expect("nc (netcat-openbsd) is not installed: run scripts/install-test-deps.sh");
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(
        help.split_whitespace().any(|w| w == "-N"),
        "this nc has no -N (netcat-openbsd is needed): run scripts/install-test-deps.sh\n{help}"
    );
    let stack = Stack::start(Options::default()).await;
    let mut browser = stack.browser().await;
    let fd = stack.fd_of(&browser.ticket).await;
    let line = format!("{{\"type\":\"scan\",\"fd\":{fd},\"nickname\":\"Alice\"}}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo '{line}' | nc -N 127.0.0.1 {}",
            stack.notify_port
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "echo | nc -N failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"ok":true}"#
    );
    let ok = browser.wait_for("scan_success", WAIT).await;
    assert_eq!(ok["user"], "Alice");
}

#[tokio::test]
async fn the_sim_cli_scans_like_the_phone() {
    let stack = Stack::start(Options::default()).await;
    let mut browser = stack.browser().await;
    let sim = e2e::bin_path("wechat-sim");
    let (status, out, err) = e2e::process::run_to_end(
        &sim,
        &[
            "scan",
            "--ticket",
            &browser.ticket,
            "--openid",
            "oCli00000000000000000000Cl05",
            "--sim",
            &stack.sim_url,
        ],
        &[],
    );
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("WeChat user Cl05, login successful! This is your 1st login."),
        "{out}"
    );
    browser.wait_for("scan_success", WAIT).await;
}
