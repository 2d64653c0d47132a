//! `--forward-url` against a real account handler: a Python server written
//! with wechatpy (tests/upstream/wechatpy_handler.py) that checks WeChat's
//! signature and decrypts safe-mode messages itself. Everything that is not
//! a login reaches it byte for byte and its answer reaches the phone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::Daemon;
use e2e::wechat::{now, post_signed, reply_content, scan_event, signed_query};
use serde_json::Value;

use crate::stack::{AES_KEY, APPID, Options, Stack, TOKEN};

const WAIT: Duration = Duration::from_secs(10);

/// The site's own handler, and the file it logs each request to.
struct Upstream {
    _process: Daemon,
    url: String,
    log: PathBuf,
}

impl Upstream {
    async fn start(aes_key: Option<&str>, slow: Option<&str>) -> Upstream {
        let port = e2e::free_port();
        let log = e2e::process::temp_dir("upstream").join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/wechatpy_handler.py");
        let mut args = vec![
            script.display().to_string(),
            port.to_string(),
            TOKEN.to_string(),
            APPID.to_string(),
            log.display().to_string(),
        ];
        args.extend(aes_key.map(str::to_string));
        if let Some(s) = slow {
            args.extend(["--slow".to_string(), s.to_string()]);
        }
        let mut process = Daemon::spawn(Path::new("python3"), &args, &[]);
        let url = format!("http://127.0.0.1:{port}/wechat-handler");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = process.try_wait() {
                panic!(
                    "the wechatpy handler exited ({status}); is wechatpy installed (scripts/install-test-deps.sh)?\n{}",
                    process.stderr()
                );
            }
            assert!(tokio::time::Instant::now() < deadline, "handler not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Upstream {
            _process: process,
            url,
            log,
        }
    }

    /// What the handler saw, one JSON object per request.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn reply(v: &Value) -> String {
    v["reply"].as_str().unwrap_or_default().to_string()
}

async fn stack_with(upstream: &Upstream, safe_mode: bool, extra: &[&str]) -> Stack {
    let mut callback_extra = vec!["--forward-url".to_string(), upstream.url.clone()];
    callback_extra.extend(extra.iter().map(|s| s.to_string()));
    Stack::start(Options {
        safe_mode,
        callback_extra,
        ..Options::default()
    })
    .await
}

/// The three message modes: the handler's own signature check and
/// decryption pass on what it is forwarded, and its reply (encrypted when
/// the request was) is what the user sees. Logins stay here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_messages_pass_the_handlers_own_checks_in_every_mode() {
    for (mode, safe_mode, extra) in [
        ("plain", false, vec![]),
        ("safe", true, vec![]),
        ("compatible", true, vec!["--message-mode", "compatible"]),
    ] {
        let upstream = Upstream::start(safe_mode.then_some(AES_KEY), None).await;
        let stack = stack_with(&upstream, safe_mode, &extra).await;
        let openid = "oFwd00000000000000000000Fw01";
        let answer = stack.message(openid, "hello site").await;
        assert_eq!(
            reply(&answer),
            "handled by the site: hello site",
            "{mode}: {answer}"
        );
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "{mode}: {seen:?}");
        assert_eq!(
            seen[0]["ok"], true,
            "{mode}: the handler's checks: {seen:?}"
        );
        assert_eq!(seen[0]["encrypted"], safe_mode, "{mode}");
        assert_eq!(seen[0]["content"], "hello site");

        // A login is handled here and never reaches the handler.
        let mut page = stack.browser().await;
        let login = stack.scan(&page.ticket, openid, false).await;
        assert!(
            reply(&login).contains("login successful"),
            "{mode}: {login}"
        );
        page.wait_for("scan_success", WAIT).await;
        assert_eq!(upstream.seen().len(), 1, "{mode}: a login was forwarded");
    }
}

/// Plain mode details: the account's own QR codes (scene below 2^20) are
/// the handler's; compatible mode's plaintext POSTs too; GET verification
/// is answered here; a slow handler gives `success` within WeChat's 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_codes_go_to_the_handler_get_stays_and_a_slow_handler_gives_success() {
    let upstream = Upstream::start(None, None).await;
    let stack = stack_with(&upstream, false, &[]).await;
    let http = reqwest::Client::new();
    // A follower scans the account's permanent code 100.
    let raw = post_signed(
        &http,
        &stack.callback_url,
        TOKEN,
        scan_event(
            "oOwnCode000000000000000Oc01",
            100,
            "permanent-ticket",
            true,
            now(),
        ),
    )
    .await;
    assert_eq!(
        reply_content(&raw).as_deref(),
        Some("handled by the site: event/scan"),
        "{raw}"
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0]["ok"].clone(), seen[0]["scene_id"].clone()),
        (true.into(), "100".into())
    );
    // URL verification is this daemon's.
    let q = signed_query(TOKEN, now());
    let url = format!("{}/wechat?{q}&echostr=check123", stack.callback_url);
    let echo = e2e::http::get_text(&http, &url).await;
    assert_eq!(echo, "check123");
    assert_eq!(upstream.seen().len(), 1, "GET was forwarded");
    drop(stack);

    let slow = Upstream::start(None, Some("8")).await;
    let stack = stack_with(&slow, false, &["--reply-deadline-ms", "2000"]).await;
    let answer = stack.message("oSlowSite00000000000000Ss01", "hi").await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["raw"], "success", "{answer}");
    let metrics = stack.callback_metrics().await;
    assert!(
        metrics.contains(r#"wechat_callback_forwarded_total{result="failed"} 1"#),
        "{metrics}"
    );
}
