//! Integration tests of `ws-gateway`: the real binary (and once the library
//! in-process) against a fake WeChat API, real WebSocket clients and real
//! notify-bus TCP clients.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Reads until a Close frame arrives (bounded); returns its code.
async fn expect_close(ws: &mut Ws) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no close frame in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

/// After a close frame: the stream ends (bounded).
async fn expect_end(ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("socket did not end in time")
        {
            None | Some(Err(_)) => return,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_is_pushed_and_scans_reach_only_their_browser() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    let mut a = Page::open(&gw, &fake).await;
    let mut b = Page::open(&gw, &fake).await;

    // The frame: image URL = base + the percent-encoded ticket.
    for br in [&a, &b] {
        assert!(br.ticket.contains('+') && br.ticket.contains('/') && br.ticket.contains('='));
        assert_eq!(
            br.code["url"],
            format!("{IMAGE_BASE}{}", percent_encode(&br.ticket))
        );
        assert!(!br.code["url"].as_str().unwrap().contains('+'));
        assert!(
            br.code["qr_content"]
                .as_str()
                .unwrap()
                .starts_with("http://weixin.qq.com/q/fake")
        );
        assert_eq!(br.code["expire_seconds"], 120);
        assert_ne!(br.fd, 0);
    }
    assert_ne!(a.fd, b.fd);

    let mut bus = Bus::connect(gw.notify).await;
    let line = serde_json::json!({
        "type": "scan", "fd": a.fd, "nickname": "Alice", "openid": "oAlice",
        "token": "jwt.for.alice", "ticket": a.ticket,
    })
    .to_string();
    assert_eq!(bus.ask(&line).await, OK);
    let ok = expect_frame(&mut a.ws, "scan_success").await;
    assert_eq!(ok["user"], "Alice");
    assert_eq!(ok["openid"], "oAlice");
    assert_eq!(ok["token"], "jwt.for.alice");
    // B got nothing.
    expect_nothing_pending(&mut b.ws).await;

    // The ticket is spent: the same scan again is refused.
    assert_eq!(bus.ask(&line).await, err("ticket_mismatch"));
    // Another browser's ticket does not fit either.
    assert_eq!(
        bus.ask(&scan(a.fd, "Mallory", Some(&b.ticket), None)).await,
        err("ticket_mismatch")
    );
    // A line without a ticket spends nothing and still reaches A.
    assert_eq!(bus.ask(&scan(a.fd, "Bob", None, None)).await, OK);
    let ok = expect_frame(&mut a.ws, "scan_success").await;
    assert_eq!(ok["user"], "Bob");
    assert_eq!(ok["openid"], "");
    assert!(ok.get("token").is_none(), "{ok}");
    // B's own ticket still works for B.
    assert_eq!(
        bus.ask(&scan(b.fd, "Carol", Some(&b.ticket), None)).await,
        OK
    );
    assert_eq!(
        expect_frame(&mut b.ws, "scan_success").await["user"],
        "Carol"
    );

    // The WebSocket stays open after scan_success.
    expect_nothing_pending(&mut a.ws).await;

    let m = http(gw.http, "GET", "/metrics").await.body;
    assert_eq!(metric(&m, "ws_gateway_connections_open"), Some(2.0));
    assert_eq!(metric(&m, "ws_gateway_qr_minted_total"), Some(2.0));
    assert_eq!(metric(&m, "ws_gateway_qr_minted_today"), Some(2.0));
    assert_eq!(metric(&m, "ws_gateway_pushes_total"), Some(3.0));
    assert_eq!(
        metric(&m, r#"ws_gateway_bus_lines_total{result="ok"}"#),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_bus_lines_total{result="ticket_mismatch"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "ws_gateway_api_call_duration_seconds_count{endpoint=\"qrcode/create\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bus_error_code_in_the_order_of_checks() {
    let fake = FakeApi::start().await;
    let secret = "bus-secret-1-0123456789abcdef0123456";
    let gw = Gw::start(
        &fake,
        &["--notify-secret", secret, "--notify-require-ticket"],
    )
    .await;
    let mut a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    let s = Some(secret);
    let cases: Vec<(String, String)> = vec![
        ("not json".into(), err("bad_json")),
        ("".into(), err("bad_json")),
        (r#"{"type":"hello","fd":1}"#.into(), err("unknown_type")),
        // Malformed beats unauthorized.
        (
            r#"{"type":"scan","fd":"x","nickname":"a"}"#.into(),
            err("bad_json"),
        ),
        (scan(a.fd, "a", Some(&a.ticket), None), err("unauthorized")),
        (
            scan(a.fd, "a", Some(&a.ticket), Some("wrong")),
            err("unauthorized"),
        ),
        (
            scan(a.fd, "a", Some(&a.ticket), Some("bus-secret-1")),
            err("unauthorized"),
        ),
        // Unauthorized beats ticket_required and no_such_client.
        (scan(1, "a", None, Some("nope")), err("unauthorized")),
        (scan(a.fd, "a", None, s), err("ticket_required")),
        // ticket_required beats no_such_client.
        (scan(a.fd ^ 1, "a", None, s), err("ticket_required")),
        (
            scan(a.fd ^ 1, "a", Some(&a.ticket), s),
            err("no_such_client"),
        ),
        (
            scan(a.fd, "a", Some("other-ticket"), s),
            err("ticket_mismatch"),
        ),
        (scan(a.fd, "Alice", Some(&a.ticket), s), OK.to_string()),
        (
            scan(a.fd, "Alice", Some(&a.ticket), s),
            err("ticket_mismatch"),
        ),
    ];
    for (line, want) in &cases {
        assert_eq!(&bus.ask(line).await, want, "line {line}");
        if *want == err("unauthorized") {
            // Unauthorized lines close the connection: no guessing the
            // secret line after line.
            assert_eq!(bus.read_line().await, None, "still open after {line}");
            bus = Bus::connect(gw.notify).await;
        }
    }
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );

    // A line of exactly the limit is read (and judged) normally.
    let mut exact = scan(a.fd ^ 1, "a", Some("t"), s);
    let pad = protocol::bus::MAX_LINE_BYTES - exact.len();
    exact.insert_str(exact.len() - 1, &" ".repeat(pad));
    assert_eq!(exact.len(), protocol::bus::MAX_LINE_BYTES);
    assert_eq!(bus.ask(&exact).await, err("no_such_client"));

    // One byte more: line_too_long, then the gateway closes.
    let long = format!("{exact} ");
    assert_eq!(bus.ask(&long).await, err("line_too_long"));
    assert_eq!(bus.read_line().await, None);

    // An over-long partial line (no newline yet) is refused as well.
    let mut bus = Bus::connect(gw.notify).await;
    bus.write(&vec![b'x'; protocol::bus::MAX_LINE_BYTES + 10])
        .await;
    assert_eq!(bus.read_line().await, Some(err("line_too_long")));
    assert_eq!(bus.read_line().await, None);

    let m = http(gw.http, "GET", "/metrics").await.body;
    assert_eq!(
        metric(&m, r#"ws_gateway_bus_lines_total{result="unauthorized"}"#),
        Some(4.0)
    );
    assert_eq!(
        metric(&m, r#"ws_gateway_bus_lines_total{result="line_too_long"}"#),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_does_not_read_gets_client_busy() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    // This browser reads its code and then never reads again.
    let a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    let nickname = "n".repeat(60 * 1024);
    let line = scan(a.fd, &nickname, None, None);
    let mut answers = Vec::new();
    for _ in 0..2000 {
        let answer = bus.ask(&line).await;
        let busy = answer == err("client_busy");
        answers.push(answer);
        if busy {
            break;
        }
    }
    assert_eq!(
        answers.last(),
        Some(&err("client_busy")),
        "never got client_busy"
    );
    assert!(answers[..answers.len() - 1].iter().all(|a| a == OK));
    expect_metric(
        &gw,
        r#"ws_gateway_bus_lines_total{result="client_busy"}"#,
        1.0,
    )
    .await;
    // Other browsers are unaffected.
    let mut b = Page::open(&gw, &fake).await;
    assert_eq!(bus.ask(&scan(b.fd, "Bea", Some(&b.ticket), None)).await, OK);
    assert_eq!(expect_frame(&mut b.ws, "scan_success").await["user"], "Bea");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_lines_are_answered_in_order_after_half_close() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    let mut a = Page::open(&gw, &fake).await;
    let mut batch = String::new();
    let mut want = Vec::new();
    for i in 0..300u32 {
        let (line, answer) = match i {
            150 => (scan(a.fd, "Alice", Some(&a.ticket), None), OK.to_string()),
            151 => (
                scan(a.fd, "Alice", Some(&a.ticket), None),
                err("ticket_mismatch"),
            ),
            i if i % 3 == 0 => ("{broken".to_string(), err("bad_json")),
            i if i % 3 == 1 => (format!(r#"{{"type":"t{i}"}}"#), err("unknown_type")),
            _ => (scan(a.fd ^ (i | 1), "x", None, None), err("no_such_client")),
        };
        batch.push_str(&line);
        batch.push('\n');
        want.push(answer);
    }
    // A CRLF line, and a last line without a newline before the half-close.
    batch.push_str("{broken\r\n");
    want.push(err("bad_json"));
    batch.push_str(&scan(a.fd, "Alice", None, None));
    want.push(OK.to_string());

    let mut bus = Bus::connect(gw.notify).await;
    bus.write(batch.as_bytes()).await;
    bus.finish().await;
    let got = bus.read_to_end().await;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "answer {i}");
    }
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_nc_example_works() {
    let has_nc_n = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v nc >/dev/null && nc -h 2>&1 | grep -qE '(^|[[:space:]])-N'",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_nc_n,
        "`nc` with -N (netcat-openbsd) is not installed: run scripts/install-test-deps.sh"
    );
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    let mut a = Page::open(&gw, &fake).await;
    let script = format!(
        "echo '{{\"type\":\"scan\",\"fd\":{},\"nickname\":\"Alice\"}}' | nc -N 127.0.0.1 {}",
        a.fd,
        gw.notify.port()
    );
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("sh")
            .args(["-c", &script])
            .output(),
    )
    .await
    .expect("nc timed out")
    .expect("run nc");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"ok\":true}\n");
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_expire_and_refresh_is_spaced_five_seconds() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &["--qr-expire-seconds", "1"]).await;
    let mut a = Page::open(&gw, &fake).await;
    let first_code_at = Instant::now();
    assert_eq!(a.code["expire_seconds"], 1);
    expect_frame(&mut a.ws, "qrcode_expired").await;

    // Too soon after the last code: refused (and the refusal does not count).
    send_text(&mut a.ws, r#"{"cmd":"refresh"}"#).await;
    expect_error(&mut a.ws, "rate_limited").await;

    // A fresh connection gets a code at once.
    let b = Page::open(&gw, &fake).await;
    assert_ne!(b.ticket, a.ticket);

    // Five seconds after the first code, refresh mints a new one.
    let wait = Duration::from_millis(5300).saturating_sub(first_code_at.elapsed());
    tokio::time::sleep(wait).await;
    send_text(&mut a.ws, r#"{"cmd":"refresh"}"#).await;
    let code = expect_frame(&mut a.ws, "qrcode_url").await;
    let ticket = ticket_of(code["url"].as_str().unwrap());
    assert_ne!(ticket, a.ticket);
    assert_eq!(
        fake.fd_of(&ticket),
        a.fd,
        "a refresh keeps the connection's fd"
    );
    // The old ticket is no longer the current one.
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(
        bus.ask(&scan(a.fd, "x", Some(&a.ticket), None)).await,
        err("ticket_mismatch")
    );
    assert_eq!(bus.ask(&scan(a.fd, "x", Some(&ticket), None)).await, OK);
    assert_eq!(expect_frame(&mut a.ws, "scan_success").await["user"], "x");

    expect_metric(
        &gw,
        r#"ws_gateway_qr_rate_limited_total{reason="refresh"}"#,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_mint_rate_limits_each_client_ip() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(
        &fake,
        &[
            "--qr-mint-rate",
            "2",
            "--trusted-proxy",
            "10.0.0.0/8,127.0.0.1",
        ],
    )
    .await;
    let _a = Page::open(&gw, &fake).await;
    let _b = Page::open(&gw, &fake).await;
    let mut c = ws_connect(&gw).await;
    expect_error(&mut c, "rate_limited").await;
    // The connection stays open.
    expect_nothing_pending(&mut c).await;
    // refresh is refused the same way while the budget is spent.
    send_text(&mut c, r#"{"cmd":"refresh"}"#).await;
    expect_error(&mut c, "rate_limited").await;

    // Behind the trusted proxy, the forwarded client has its own budget;
    // the leftmost (client-written) entry is not believed.
    let mut d = ws_connect_with(
        &gw.ws_url("/ws"),
        &[("x-forwarded-for", "127.0.0.1, 203.0.113.7, 10.1.2.3")],
    )
    .await
    .unwrap();
    expect_frame(&mut d, "qrcode_url").await;
    assert_eq!(fake.creates(), 3);

    expect_metric(
        &gw,
        r#"ws_gateway_qr_rate_limited_total{reason="client_ip"}"#,
        2.0,
    )
    .await;

    // Without --trusted-proxy, X-Forwarded-For is ignored.
    let gw2 = Gw::start(&fake, &["--qr-mint-rate", "1"]).await;
    let _e = Page::open(&gw2, &fake).await;
    let mut f = ws_connect_with(&gw2.ws_url("/"), &[("x-forwarded-for", "203.0.113.9")])
        .await
        .unwrap();
    expect_error(&mut f, "rate_limited").await;
}

/// An errcode no retry can fix (here 48001, API not allowed for this
/// account) is reported once and not retried on its own; the page may ask
/// again with `refresh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_wechat_errors_are_not_retried() {
    let fake = FakeApi::start().await;
    fake.set_failing_with(Some(48001));
    let gw = Gw::start(&fake, &[]).await;
    let mut a = ws_connect(&gw).await;
    let e = expect_error(&mut a, "wechat_unavailable").await;
    assert!(!e["message"].as_str().unwrap().contains("retrying"), "{e}");
    // A retry would come after 1 s: give it more than that.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect_metric(&gw, "ws_gateway_qr_failed_total", 1.0).await;
    fake.set_failing_with(None);
    a.send(Message::text(r#"{"cmd":"refresh"}"#)).await.unwrap();
    let v = next_json(&mut a).await;
    assert_eq!(v["message_type"], "qrcode_url", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_failures_are_reported_and_retried() {
    let fake = FakeApi::start().await;
    fake.set_failing(true);
    let gw = Gw::start(&fake, &[]).await;
    let mut a = ws_connect(&gw).await;
    let e = expect_error(&mut a, "wechat_unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("retrying"), "{e}");
    // The gateway keeps running.
    assert_eq!(http(gw.http, "GET", "/healthz").await.status, 200);
    fake.set_failing(false);
    // Retries after 1 s, 2 s, ...: a code arrives without the browser asking.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = tokio::time::timeout_at(deadline, next_json(&mut a))
            .await
            .expect("no code after WeChat recovered");
        if v["message_type"] == "qrcode_url" {
            break;
        }
        assert_eq!(v["error"], "wechat_unavailable", "{v}");
    }
    let m = http(gw.http, "GET", "/metrics").await.body;
    assert!(metric(&m, "ws_gateway_qr_failed_total").unwrap() >= 1.0);
    assert_eq!(metric(&m, "ws_gateway_qr_minted_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_pongs_keep_others_open() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &["--idle-timeout-seconds", "2"]).await;
    // `quiet` never reads, so it never answers the gateway's pings.
    let mut quiet = ws_connect(&gw).await;
    // `alive` keeps reading; the client library answers every ping.
    let mut alive = ws_connect(&gw).await;
    let started = Instant::now();
    // Pings come every half of the timeout (1 s): a third ping means the
    // connection outlived the 2 s timeout on its pongs alone.
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while pings < 3 {
            let msg = tokio::time::timeout_at(deadline, alive.next())
                .await
                .expect("three pings within the wait");
            match msg {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(c))) => panic!("closed after {pings} pings: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error after {pings} pings: {e}"),
                None => panic!("socket ended after {pings} pings"),
            }
        }
        alive
    });
    let mut alive = reader.await.unwrap();
    expect_nothing_pending(&mut alive).await;

    // The quiet one was closed (normal close, reason says why).
    expect_frame(&mut quiet, "qrcode_url").await;
    assert_eq!(expect_close(&mut quiet).await, Some(CloseCode::Normal));
    expect_end(&mut quiet).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    expect_metric(&gw, "ws_gateway_connections_idle_closed_total", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_upgrade_gets_503() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &["--max-connections", "2"]).await;
    let mut a = Page::open(&gw, &fake).await;
    let _b = Page::open(&gw, &fake).await;
    match ws_connect_with(&gw.ws_url("/ws"), &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("expected HTTP 503, got a connection"),
    }
    // Plain HTTP still works at the limit.
    assert_eq!(http(gw.http, "GET", "/healthz").await.status, 200);
    // A closed connection frees its place.
    a.ws.close(None).await.unwrap();
    expect_end(&mut a.ws).await;
    let mut third = None;
    let deadline = Instant::now() + WAIT;
    while third.is_none() {
        match ws_connect_with(&gw.ws_url("/ws"), &[]).await {
            Ok(ws) => third = Some(ws),
            Err(WsError::Http(resp)) if resp.status() == 503 => {
                assert!(Instant::now() < deadline, "place never freed");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut third = third.unwrap();
    expect_frame(&mut third, "qrcode_url").await;
    let m = http(gw.http, "GET", "/metrics").await.body;
    assert!(metric(&m, "ws_gateway_connections_refused_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_browsers_with_1001_and_exits_zero() {
    let fake = FakeApi::start().await;
    let mut gw = Gw::start(&fake, &[]).await;
    let mut a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(bus.ask(&scan(a.fd, "Alice", None, None)).await, OK);
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );

    gw.sigterm();
    // The page is told why (web/scan-login.js reconnects at once on this
    // error), then closed with 1001.
    expect_error(&mut a.ws, "shutting_down").await;
    assert_eq!(expect_close(&mut a.ws).await, Some(CloseCode::Away));
    // The bus connection is closed after what was read got its answer.
    assert_eq!(bus.read_line().await, None);
    // Within the shutdown grace (5 s) and a margin.
    let status = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit {status}:\n{}", gw.stderr());
    assert!(gw.stderr().contains("SIGTERM"), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_exits_zero() {
    let fake = FakeApi::start().await;
    let mut gw = Gw::start(&fake, &[]).await;
    let _a = Page::open(&gw, &fake).await;
    gw.signal("INT");
    let status = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit {status}:\n{}", gw.stderr());
}

#[test]
fn help_lists_every_flag_with_its_env_var() {
    let (status, out, _) = run_to_end(&["--help"], &[]);
    assert!(status.success());
    for (flag, env) in [
        ("--config", "SCAN_LOGIN_CONFIG"),
        ("--listen", "SCAN_LOGIN_LISTEN"),
        ("--notify-listen", "SCAN_LOGIN_NOTIFY_LISTEN"),
        ("--app-id", "SCAN_LOGIN_APP_ID"),
        ("--app-secret", "WECHAT_APP_SECRET"),
        ("--wechat-api-base", "SCAN_LOGIN_WECHAT_API_BASE"),
        ("--qrcode-image-base", "SCAN_LOGIN_QRCODE_IMAGE_BASE"),
        ("--qr-expire-seconds", "SCAN_LOGIN_QR_EXPIRE_SECONDS"),
        ("--idle-timeout-seconds", "SCAN_LOGIN_IDLE_TIMEOUT_SECONDS"),
        ("--max-connections", "SCAN_LOGIN_MAX_CONNECTIONS"),
        (
            "--notify-require-ticket",
            "SCAN_LOGIN_NOTIFY_REQUIRE_TICKET",
        ),
        ("--notify-secret", "NOTIFY_SECRET"),
        ("--qr-mint-rate", "SCAN_LOGIN_QR_MINT_RATE"),
        ("--trusted-proxy", "SCAN_LOGIN_TRUSTED_PROXY"),
        ("--demo-sim-url", "SCAN_LOGIN_DEMO_SIM_URL"),
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
        assert!(out.contains(env), "--help lacks {env}:\n{out}");
    }
    for default in [
        "127.0.0.1:1099",
        "127.0.0.1:9999",
        "https://api.weixin.qq.com",
        "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=",
    ] {
        assert!(out.contains(default), "--help lacks default {default}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let app_secret = "APPSECRET-7f3e9c5d";
    let bus_secret = "NOTIFYSECRET-a1b2c3-0123456789abcdef";
    let fake = FakeApi::start().await;
    let mut args = base_args(&fake);
    // The app secret from the command line, the bus secret from env.
    let i = args.iter().position(|a| a == "test-app-secret").unwrap();
    args[i] = app_secret.to_string();
    let mut gw = Gw::spawn(command(
        &args,
        &[("RUST_LOG", "debug"), ("NOTIFY_SECRET", bus_secret)],
    ))
    .await;
    let mut a = Page::open(&gw, &fake).await;
    assert_eq!(fake.secrets(), [app_secret], "the app secret is used");
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(
        bus.ask(&scan(a.fd, "a", None, Some("wrong-secret"))).await,
        err("unauthorized")
    );
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(bus.ask(&scan(a.fd, "a", None, Some(bus_secret))).await, OK);
    expect_frame(&mut a.ws, "scan_success").await;
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(8)).await.success());
    let log = gw.stderr();
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    for s in [app_secret, bus_secret, "wrong-secret"] {
        assert!(!log.contains(s), "{s} leaked into the log:\n{log}");
    }

    let (status, out, errs) = run_to_end(
        &args
            .iter()
            .map(String::as_str)
            .chain(["--check-config"])
            .collect::<Vec<_>>(),
        &[("NOTIFY_SECRET", bus_secret)],
    );
    assert!(status.success(), "{errs}");
    assert!(out.contains("notify_secret = \"<set>\""), "{out}");
    assert!(
        !out.contains(app_secret) && !out.contains(bus_secret),
        "{out}"
    );

    // --help shows neither env values nor defaults that came from a file.
    let dir = std::env::temp_dir().join(format!("ws-gateway-help-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret.toml");
    std::fs::write(&file, format!("app_secret = \"{app_secret}\"\n")).unwrap();
    let (status, out, _) = run_to_end(
        &["--help"],
        &[
            ("SCAN_LOGIN_CONFIG", file.to_str().unwrap()),
            ("NOTIFY_SECRET", bus_secret),
        ],
    );
    assert!(status.success());
    assert!(
        !out.contains(app_secret) && !out.contains(bus_secret),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_layer_flag_over_env_over_file() {
    let fake = FakeApi::start().await;
    let dir = std::env::temp_dir().join(format!("ws-gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "app_id = \"wx-from-file\"\n\
             wechat_api_base = \"{}\"\n\
             qrcode_image_base = \"{IMAGE_BASE}\"\n\
             listen = \"127.0.0.1:0\"\n\
             notify_listen = \"127.0.0.1:0\"\n\
             qr_expire_seconds = 77\n\
             idle_timeout_seconds = 33\n\
             qr_mint_rate = 5\n\
             notify_require_ticket = true\n\
             trusted_proxy = [\"10.0.0.0/8\", \"127.0.0.1\"]\n",
            fake.base
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();

    // --check-config prints the effective settings.
    let env = [
        ("SCAN_LOGIN_CONFIG", file.as_str()),
        ("WECHAT_APP_SECRET", "s"),
        ("SCAN_LOGIN_IDLE_TIMEOUT_SECONDS", "44"),
        ("SCAN_LOGIN_QR_MINT_RATE", "6"),
    ];
    let (status, out, errs) = run_to_end(&["--check-config", "--qr-mint-rate", "7"], &env);
    assert!(status.success(), "{errs}");
    for want in [
        "app_id = \"wx-from-file\"",
        "qr_expire_seconds = 77",
        "idle_timeout_seconds = 44",
        "qr_mint_rate = 7",
        "notify_require_ticket = true",
        "trusted_proxy = [\"10.0.0.0/8\", \"127.0.0.1\"]",
        "app_secret = \"<set>\"",
        "listen = \"127.0.0.1:0\"",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }

    // The running binary uses them: expire from env over file, app id and
    // require-ticket from the file.
    let mut cmd = command(
        &["--config".to_string(), file.clone()],
        &[
            ("WECHAT_APP_SECRET", "s"),
            ("SCAN_LOGIN_QR_EXPIRE_SECONDS", "88"),
        ],
    );
    cmd.arg("--idle-timeout-seconds").arg("30");
    let gw = Gw::spawn(cmd).await;
    let mut a = Page::open(&gw, &fake).await;
    assert_eq!(a.code["expire_seconds"], 88);
    assert_eq!(fake.appids(), ["wx-from-file"]);
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(
        bus.ask(&scan(a.fd, "a", None, None)).await,
        err("ticket_required")
    );
    assert_eq!(bus.ask(&scan(a.fd, "a", Some(&a.ticket), None)).await, OK);
    expect_frame(&mut a.ws, "scan_success").await;

    // Booleans in env: `false` beats the file's `true`.
    let (status, out, _) = run_to_end(
        &["--check-config"],
        &[
            ("SCAN_LOGIN_CONFIG", file.as_str()),
            ("WECHAT_APP_SECRET", "s"),
            ("SCAN_LOGIN_NOTIFY_REQUIRE_TICKET", "false"),
        ],
    );
    assert!(status.success());
    assert!(out.contains("notify_require_ticket = false"), "{out}");

    // Mistakes stop the process with a reason.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "qr_expire_secs = 5\n").unwrap();
    let (status, _, errs) = run_to_end(
        &["--check-config", "--config", bad.to_str().unwrap()],
        &[("WECHAT_APP_SECRET", "s")],
    );
    assert!(!status.success());
    assert!(errs.contains("qr_expire_secs"), "{errs}");
    std::fs::write(&bad, "app_id = \"wx\"\nqr_expire_seconds = 0\n").unwrap();
    let (status, _, errs) = run_to_end(
        &["--check-config", "--config", bad.to_str().unwrap()],
        &[("WECHAT_APP_SECRET", "s")],
    );
    assert!(!status.success(), "{errs}");
    let (status, _, errs) = run_to_end(&["--check-config"], &[("WECHAT_APP_SECRET", "s")]);
    assert!(!status.success());
    assert!(errs.contains("--app-id"), "{errs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_assets_health_and_metrics_are_served() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &["--demo-sim-url", "http://sim.test:9000"]).await;
    let page = http(gw.http, "GET", "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(!page.body.contains("__SIM_URL__"));
    assert!(
        page.body.contains("\"http://sim.test:9000\""),
        "sim URL not in the page"
    );
    for path in ["/scan-login.js", "/scan-login.mjs"] {
        let js = http(gw.http, "GET", path).await;
        assert_eq!(js.status, 200, "{path}");
        assert!(
            js.header("content-type")
                .unwrap()
                .starts_with("text/javascript"),
            "{path}"
        );
        assert!(!js.body.is_empty());
    }
    let health = http(gw.http, "GET", "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let m = http(gw.http, "GET", "/metrics").await;
    assert_eq!(m.status, 200);
    for name in [
        "ws_gateway_connections_open",
        "ws_gateway_qr_minted_total",
        "ws_gateway_qr_minted_today",
        "ws_gateway_qr_failed_total",
        "ws_gateway_pushes_total",
        "ws_gateway_api_call_duration_seconds_bucket",
    ] {
        assert!(m.body.contains(name), "metrics lack {name}");
    }
    assert_eq!(http(gw.http, "GET", "/nope").await.status, 404);
    assert_eq!(http(gw.http, "GET", "/ws").await.status, 426);
    assert_eq!(http(gw.http, "POST", "/").await.status, 405);

    // Without --demo-sim-url the placeholder becomes "".
    let gw2 = Gw::start(&fake, &[]).await;
    let page = http(gw2.http, "GET", "/").await;
    assert!(!page.body.contains("__SIM_URL__"));
    assert!(!page.body.contains("sim.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_commands_and_bad_frames() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    // The upgrade works on `/` as well as `/ws`.
    let mut ws = ws_connect_with(&gw.ws_url("/"), &[]).await.unwrap();
    expect_frame(&mut ws, "qrcode_url").await;
    send_text(&mut ws, r#"{"cmd":"ping"}"#).await;
    expect_frame(&mut ws, "pong").await;
    send_text(&mut ws, "hello").await;
    expect_error(&mut ws, "bad_command").await;
    send_text(&mut ws, r#"{"cmd":"launch"}"#).await;
    expect_error(&mut ws, "bad_command").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_error(&mut ws, "bad_frame").await;
    // Still open.
    expect_nothing_pending(&mut ws).await;
    // A frame over the limit: bad_frame, then closed with 1009.
    let big = "x".repeat(protocol::ws::MAX_CLIENT_FRAME_BYTES + 1);
    send_text(&mut ws, &big).await;
    expect_error(&mut ws, "bad_frame").await;
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_runs_in_process_and_stops_on_cancel() {
    use clap::Parser;
    let fake = FakeApi::start().await;
    let args = base_args(&fake);
    let config =
        ws_gateway::Config::try_parse_from(std::iter::once("ws-gateway".to_string()).chain(args))
            .unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let notify = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http_listener.local_addr().unwrap();
    let shutdown = ws_gateway::CancellationToken::new();
    let server = tokio::spawn(ws_gateway::run(
        config,
        ws_gateway::Listeners {
            http: http_listener,
            notify,
        },
        shutdown.clone(),
    ));
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    let v: Value = expect_frame(&mut ws, "qrcode_url").await;
    assert!(v["url"].as_str().unwrap().starts_with(IMAGE_BASE));
    shutdown.cancel();
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(8), server)
        .await
        .expect("run did not return")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_upgrades_are_refused() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    let host = gw.http.to_string();
    let same_origin = format!("http://{host}");

    // A page on another site: 403 before any code is minted.
    expect_refused(
        &gw,
        &[("origin", "https://evil.example"), ("host", &host)],
        403,
    )
    .await;
    assert_eq!(fake.creates(), 0, "a refused upgrade minted a code");
    // The gateway's own page, and a client that sends no Origin.
    expect_upgrade(&gw, &[("origin", &same_origin), ("host", &host)]).await;
    expect_upgrade(&gw, &[("host", &host)]).await;
    assert_eq!(fake.creates(), 2);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_connections_forbidden_total{reason="origin"}"#
        ),
        Some(1.0)
    );

    // An allow-list with a wildcard entry.
    let gw = Gw::start(
        &fake,
        &[
            "--allowed-origins",
            "https://*.example.com,https://site.test",
        ],
    )
    .await;
    let host = gw.http.to_string();
    let same_origin = format!("http://{host}");
    for (origin, allowed) in [
        ("https://a.b.example.com", true),
        ("https://example.com", false),
        ("https://evilexample.com", false),
        ("https://site.test", true),
        (same_origin.as_str(), true),
    ] {
        let headers = [("origin", origin), ("host", host.as_str())];
        if allowed {
            expect_upgrade(&gw, &headers).await;
        } else {
            expect_refused(&gw, &headers, 403).await;
        }
    }
    expect_metric(
        &gw,
        r#"ws_gateway_connections_forbidden_total{reason="origin"}"#,
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_slot() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(
        &fake,
        &[
            "--max-connections-per-ip",
            "3",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let five = [("x-forwarded-for", "203.0.113.5")];
    let mut fives = Vec::new();
    for _ in 0..3 {
        fives.push(expect_upgrade(&gw, &five).await);
    }
    expect_refused(&gw, &five, 429).await;
    // Another client is not affected.
    let _six = expect_upgrade(&gw, &[("x-forwarded-for", "203.0.113.6")]).await;
    // IPv6 counts per /64: ::1 and ::2 share three places.
    let mut v6 = Vec::new();
    for ip in ["2001:db8::1", "2001:db8::2", "2001:db8::1"] {
        v6.push(expect_upgrade(&gw, &[("x-forwarded-for", ip)]).await);
    }
    expect_refused(&gw, &[("x-forwarded-for", "2001:db8::2")], 429).await;
    v6.push(expect_upgrade(&gw, &[("x-forwarded-for", "2001:db8:0:1::1")]).await);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_connections_forbidden_total{reason="per_ip_limit"}"#
        ),
        Some(2.0)
    );

    // Closing one of 203.0.113.5's connections frees a place.
    let mut first = fives.remove(0);
    first.close(None).await.unwrap();
    expect_end(&mut first).await;
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match try_upgrade(&gw, &five).await {
            Ok(ws) => break ws,
            Err(429) => {
                assert!(Instant::now() < deadline, "the place was never freed");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(status) => panic!("expected 101 or 429, got {status}"),
        }
    };
    expect_frame(&mut again, "qrcode_url").await;
    // And that was the only free place.
    expect_refused(&gw, &five, 429).await;

    // Without --trusted-proxy every connection here is 127.0.0.1, whatever
    // X-Forwarded-For says.
    let gw2 = Gw::start(&fake, &["--max-connections-per-ip", "2"]).await;
    let _a = expect_upgrade(&gw2, &[]).await;
    let _b = expect_upgrade(&gw2, &[("x-forwarded-for", "203.0.113.7")]).await;
    expect_refused(&gw2, &[("x-forwarded-for", "203.0.113.8")], 429).await;
    expect_metric(
        &gw2,
        r#"ws_gateway_connections_forbidden_total{reason="per_ip_limit"}"#,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bus_connections_cannot_block_a_push() {
    const SILENT: usize = 1_100;
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(gw.notify))
            .await
            .expect("bus connect timed out")
            .expect("bus connect");
        silent.push(s);
    }
    let mut a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(
        bus.ask(&scan(a.fd, "Alice", Some(&a.ticket), None)).await,
        OK
    );
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );

    // Every connection past the cap closed the longest-idle one: the 76
    // silent ones over 1,024, and one more for `bus`.
    let max = ws_gateway::bus::MAX_BUS_CONNECTIONS;
    let evicted = (SILENT + 1 - max) as f64;
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_bus_connections_closed_total{reason="evicted"}"#
        ),
        Some(evicted)
    );
    // The oldest silent connection was one of them.
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read(&mut silent[0], &mut byte),
    )
    .await
    .expect("the oldest silent connection was not closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "the oldest silent connection got data");
    // Evicted tasks leave the gauge as they wind down: it settles at or
    // under the cap.
    let deadline = Instant::now() + WAIT;
    loop {
        let open = metric(&metrics(&gw).await, "ws_gateway_bus_connections_open")
            .expect("the bus connection gauge");
        if open <= max as f64 {
            assert!(open > 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} bus connections open, over the cap of {max}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bus_connections_are_closed() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &["--notify-idle-timeout-seconds", "3"]).await;
    let mut a = Page::open(&gw, &fake).await;

    // Bytes without a newline are not activity: closed, nothing answered
    // (`read_line` waits at most WAIT for the EOF).
    let mut partial = Bus::connect(gw.notify).await;
    partial.write(br#"{"type":"#).await;
    assert_eq!(partial.read_line().await, None);

    // A connection that sends a complete line every 300 ms stays open past
    // the timeout (a margin of 2.7 s for a loaded machine).
    let mut busy = Bus::connect(gw.notify).await;
    for i in 0..12 {
        let nickname = format!("n{i}");
        assert_eq!(busy.ask(&scan(a.fd, &nickname, None, None)).await, OK);
        assert_eq!(
            expect_frame(&mut a.ws, "scan_success").await["user"],
            nickname.as_str()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Once it stops, it is closed as well.
    assert_eq!(busy.read_line().await, None);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_bus_connections_closed_total{reason="idle"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"ws_gateway_bus_connections_closed_total{reason="evicted"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_bus_needs_a_secret() {
    let fake = FakeApi::start().await;
    let mut public = base_args(&fake);
    let i = public.iter().position(|a| a == "--notify-listen").unwrap();
    public[i + 1] = "0.0.0.0:0".to_string();
    let with = |extra: &[&str]| {
        let mut args = public.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Neither serving nor --check-config accepts an open bus without a
    // secret; the reason names both flags.
    for extra in [&[][..], &["--check-config"][..]] {
        let (status, _, errs) = run_bounded(&with(extra), &[], WAIT).await;
        let status = status.unwrap_or_else(|| panic!("{extra:?}: still running:\n{errs}"));
        assert!(!status.success(), "{extra:?}: {status}");
        assert!(
            errs.contains("--notify-listen") && errs.contains("--notify-secret"),
            "{extra:?}: {errs}"
        );
    }

    // With a long secret, the same settings pass.
    let long = "s".repeat(32);
    let (status, out, errs) = run_bounded(
        &with(&["--notify-secret", &long, "--check-config"]),
        &[],
        WAIT,
    )
    .await;
    assert!(status.is_some_and(|s| s.success()), "{errs}");
    assert!(out.contains("notify_listen = \"0.0.0.0:0\""), "{out}");
    assert!(out.contains("notify_secret = \"<set>\""), "{out}");
    assert!(!out.contains(&long), "{out}");

    // A short secret is refused, even on loopback, from the flag or env.
    let short = "0123456789";
    let loopback: Vec<String> = base_args(&fake);
    for (extra, env) in [
        (vec!["--notify-secret", short, "--check-config"], vec![]),
        (vec!["--notify-secret", short], vec![]),
        (vec!["--check-config"], vec![("NOTIFY_SECRET", short)]),
    ] {
        let mut args = loopback.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (status, _, errs) = run_bounded(&args, &env, WAIT).await;
        let status = status.unwrap_or_else(|| panic!("{extra:?}: still running:\n{errs}"));
        assert!(!status.success(), "{extra:?}");
        assert!(errs.contains("32"), "{extra:?}: {errs}");
        assert!(!errs.contains(short), "the secret was echoed: {errs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_token_in_logs_when_the_api_fails() {
    let token = "TOKEN-SHOULD-NOT-BE-LOGGED-123";
    let fake = FakeApi::start().await;
    fake.set_access_token(token);
    fake.set_create_drops_connection(true);
    let mut gw = Gw::start_with(&fake, &[], &[("RUST_LOG", "debug")]).await;
    let mut ws = ws_connect(&gw).await;
    expect_error(&mut ws, "wechat_unavailable").await;
    // The token was fetched and qrcode/create reached the fake, which
    // dropped it: a transport failure, with the token in the URL.
    assert!(fake.token_fetches() >= 1);
    assert!(fake.creates() >= 1);
    let m = metrics(&gw).await;
    assert!(metric(&m, "ws_gateway_qr_failed_total").unwrap() >= 1.0);
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(8)).await.success());
    let log = gw.stderr();
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    assert!(
        log.contains("qrcode/create") && log.contains("WeChat API unreachable"),
        "the transport failure was not logged:\n{log}"
    );
    assert!(!log.contains(token), "the access token leaked:\n{log}");
    assert!(!log.contains("access_token="), "a token URL leaked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_does_not_crash() {
    let fake = FakeApi::start().await;
    fake.set_token_expires_in(u64::MAX);
    let gw = Gw::start(&fake, &[]).await;
    let a = Page::open(&gw, &fake).await;
    assert!(a.code["url"].as_str().unwrap().starts_with(IMAGE_BASE));
    // The token was cached, not refetched for the next code.
    let b = Page::open(&gw, &fake).await;
    assert_ne!(a.ticket, b.ticket);
    assert_eq!(fake.token_fetches(), 1);
    let health = http(gw.http, "GET", "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(
        metric(&metrics(&gw).await, "ws_gateway_qr_minted_total"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_stops_reading_never_gets_a_login_reported_failed() {
    let fake = FakeApi::start().await;
    let gw = Gw::start(&fake, &[]).await;
    // This page reads its code and then stops reading.
    let mut a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    let nickname = "n".repeat(60 * 1024);
    let line = scan(a.fd, &nickname, None, None);
    let mut oks = 0usize;
    let mut refusal = None;
    for _ in 0..2000 {
        let answer = bus.ask(&line).await;
        if answer != OK {
            refusal = Some(answer);
            break;
        }
        oks += 1;
    }
    assert_eq!(refusal, Some(err("client_busy")), "after {oks} ok answers");

    // Reading again: every frame that arrives is whole, exactly one per
    // `ok`, and then the gateway has closed the page.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut successes = 0usize;
    loop {
        let msg = tokio::time::timeout_at(deadline, a.ws.next())
            .await
            .unwrap_or_else(|_| panic!("the page was not closed ({successes} frames read)"));
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("a whole JSON frame");
                assert_eq!(v["message_type"], "scan_success", "{}", v["message_type"]);
                assert!(
                    v["user"] == nickname.as_str(),
                    "a scan_success for another user"
                );
                successes += 1;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => break,
        }
    }
    assert_eq!(successes, oks, "scan_success frames vs ok answers");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "ws_gateway_pushes_total"), Some(oks as f64));
    assert_eq!(
        metric(&m, "ws_gateway_connections_stalled_total"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "ws_gateway_connections_open"), Some(0.0));
    assert_eq!(
        metric(&m, r#"ws_gateway_bus_lines_total{result="client_busy"}"#),
        Some(1.0)
    );
}

/// Browser abuse at once: stalled handshakes, clients that flood frames,
/// clients that never read. The flooders are cut off (1008 after at most
/// `MAX_FRAMES_PER_PING` frames), memory stays bounded, and an ordinary
/// page still gets its code and its login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_browsers_are_cut_off_and_others_still_log_in() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeApi::start().await;
    let gw = Gw::start(
        &fake,
        &["--max-connections-per-ip", "0", "--qr-mint-rate", "0"],
    )
    .await;
    let rss = |m: &str| metric(m, "process_resident_memory_bytes").expect("rss metric");
    let before = rss(&http(gw.http, "GET", "/metrics").await.body);

    // Handshakes that never finish.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Pages that never read again.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(Page::open(&gw, &fake).await);
    }
    // Floods of pings, without reading the pongs until the end.
    let max = ws_gateway::MAX_FRAMES_PER_PING;
    for _ in 0..20 {
        let mut b = Page::open(&gw, &fake).await;
        for _ in 0..(max as usize * 3) {
            if b.ws.send(Message::text(r#"{"cmd":"ping"}"#)).await.is_err() {
                break;
            }
        }
        let mut pongs = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, b.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["message_type"] == "pong" {
                        pongs += 1;
                    } else {
                        assert_eq!(v["error"], "rate_limited", "{v}");
                    }
                }
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    assert_eq!(f.code, CloseCode::Policy);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("a flooding page was not cut off"),
            }
        }
        assert!(pongs <= max as usize, "{pongs} pongs for a flood");
    }

    // An ordinary page is served as usual.
    let mut a = Page::open(&gw, &fake).await;
    let mut bus = Bus::connect(gw.notify).await;
    assert_eq!(
        bus.ask(&scan(a.fd, "Alice", Some(&a.ticket), None)).await,
        OK
    );
    assert_eq!(
        expect_frame(&mut a.ws, "scan_success").await["user"],
        "Alice"
    );

    let m = http(gw.http, "GET", "/metrics").await.body;
    assert_eq!(
        metric(&m, "ws_gateway_connections_flood_closed_total"),
        Some(20.0)
    );
    let grown = rss(&m) - before;
    assert!(
        grown < 64.0 * 1024.0 * 1024.0,
        "RSS grew by {grown} bytes under abuse"
    );
    drop((stalled, silent));
}
