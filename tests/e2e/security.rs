//! The attacks of SECURITY.md played against the three real binaries, and
//! the reliability promises that go with them.

use std::time::Duration;

use serde_json::Value;

use crate::stack::{JWT_SECRET, Options, Stack};

const WAIT: Duration = Duration::from_secs(10);
const CHROME_ON_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn reply(v: &Value) -> String {
    v["reply"].as_str().unwrap_or_default().to_string()
}

/// QR-login phishing: a page shown to a victim by someone else. With
/// `--confirm-login` a scan only marks the page `scanned` and asks the
/// user, naming the page's device and address, to reply `1`; only that
/// user's `1` logs the page in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_on_the_phone_end_to_end() {
    let stack = Stack::start(Options {
        callback_extra: vec![
            "--confirm-login".into(),
            "--login-token-audience".into(),
            "https://site.test".into(),
        ],
        ..Options::default()
    })
    .await;
    let victim = "oVictim0000000000000000000Vc01";
    let other = "oOther00000000000000000000Ot02";
    let mut page =
        crate::stack::Browser::connect_as(stack.gateway_port, Some(CHROME_ON_WINDOWS)).await;

    let scanned = stack.scan(&page.ticket, victim, false).await;
    let text = reply(&scanned);
    assert!(
        text.contains("Chrome on Windows")
            && text.contains("127.0.0.1")
            && text.contains("Reply 1"),
        "{scanned}"
    );
    let frame = page.next_frame(WAIT).await;
    assert_eq!(frame["message_type"], "scanned", "{frame}");
    assert_eq!(frame["user"], "WeChat user Vc01");

    // Someone else's `1` confirms nothing.
    let answer = stack.message(other, "1").await;
    assert!(reply(&answer).contains("no login to confirm"), "{answer}");
    // The user's own `1` completes the login, once.
    let answer = stack.message(victim, "1").await;
    assert_eq!(
        reply(&answer),
        "WeChat user Vc01, login successful! This is your 1st login.",
        "{answer}"
    );
    // The next frame is the victim's login: the other `1` pushed nothing.
    let ok = page.next_frame(WAIT).await;
    assert_eq!(ok["message_type"], "scan_success", "{ok}");
    assert_eq!(ok["openid"], victim);
    let token = ok["token"].as_str().expect("token");
    let claims = e2e::token::verify(token, JWT_SECRET, Some("https://site.test"));
    assert_eq!(
        (
            claims.sub.as_str(),
            claims.iss.as_str(),
            claims.aud.as_deref()
        ),
        (victim, "wechat-scan-login", Some("https://site.test"))
    );
    let again = stack.message(victim, "1").await;
    assert!(reply(&again).contains("no login to confirm"), "{again}");

    // Any other text cancels a pending login; a `1` after it does nothing.
    let mut second = stack.browser().await;
    let scanned = stack.scan(&second.ticket, victim, true).await;
    assert!(reply(&scanned).contains("Reply 1"), "{scanned}");
    assert_eq!(second.next_frame(WAIT).await["message_type"], "scanned");
    let cancel = stack.message(victim, "no, that was not me").await;
    assert!(reply(&cancel).contains("cancelled"), "{cancel}");
    let late = stack.message(victim, "1").await;
    assert!(reply(&late).contains("no login to confirm"), "{late}");
    // The page is still waiting: a new scan (after refresh) works again.
    second.send(r#"{"cmd":"ping"}"#).await;
    assert_eq!(second.next_frame(WAIT).await["message_type"], "pong");
}

/// 0.1.0 told the user "login did not complete" when the gateway paused
/// for 1.5 s, while the page got `scan_success` and nothing was counted.
/// The answer is now awaited until the reply deadline: one story on the
/// phone, on the page and in the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_gateway_does_not_split_the_story() {
    let stack = Stack::start(Options::default()).await;
    let mut page = stack.browser().await;
    let openid = "oPause00000000000000000000Pa01";
    let gateway = stack.gateway.as_ref().expect("gateway");
    gateway.signal("STOP");
    let scan = {
        let http = stack.http.clone();
        let url = format!("{}/sim/scan", stack.sim_url);
        let body =
            serde_json::json!({"ticket": page.ticket, "openid": openid, "subscribed": false});
        tokio::spawn(async move {
            http.post(url)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.signal("CONT");
    let answer = scan.await.unwrap();
    assert_eq!(
        reply(&answer),
        "WeChat user Pa01, login successful! This is your 1st login.",
        "{answer}"
    );
    let ok = page.wait_for("scan_success", WAIT).await;
    assert_eq!(ok["openid"], openid);
}
