//! `wechat-callback` through its real interface: the spawned binary, real
//! HTTP requests with signed (and encrypted) WeChat payloads, a fake notify
//! bus and a fake WeChat API on real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::Daemon;
use e2e::fake_api::FakeApi;
use e2e::fake_bus::{FakeBus, Mode};
use e2e::process::{run_to_end, temp_dir};
use e2e::wechat::{
    encrypt_post, now, open_encrypted_reply, reply_content, scan_event, signed_query,
};
use protocol::bus::BusError;
use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::text_message_body;

const TOKEN: &str = "cb-test-token";
/// Login fds start at 2^20 (`protocol::fd`): scenes below are the
/// account's own codes, not logins.
const F: u32 = 1 << 20;
const APPID: &str = "wxtestappid000001";
const KEY1: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const KEY2: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
const KEY3: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wechat-callback"))
}

struct Cb {
    daemon: Daemon,
    url: String,
    http: reqwest::Client,
}

impl Cb {
    async fn start(bus: &FakeBus, api: Option<&FakeApi>, db: &Path, extra: &[&str]) -> Cb {
        Cb::start_env(bus, api, db, extra, &[]).await
    }

    async fn start_env(
        bus: &FakeBus,
        api: Option<&FakeApi>,
        db: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Cb {
        Cb::start_at(&bus.addr, api, db, extra, env).await
    }

    /// [`Cb::start_env`] with the notify bus at `bus_addr`.
    async fn start_at(
        bus_addr: &str,
        api: Option<&FakeApi>,
        db: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Cb {
        let port = e2e::free_port();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--token".into(),
            TOKEN.into(),
            "--notify-addr".into(),
            bus_addr.to_string(),
            "--db".into(),
            db.display().to_string(),
        ];
        if let Some(api) = api {
            args.extend(["--app-id".into(), APPID.into()]);
            // The flag would override the environment's secret.
            if !env.iter().any(|(k, _)| *k == "WECHAT_APP_SECRET") {
                args.extend(["--app-secret".into(), "api-secret".into()]);
            }
            args.extend(["--wechat-api-base".into(), api.base.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn(&bin(), &args, env);
        let url = format!("http://127.0.0.1:{port}");
        daemon.wait_healthy(&format!("{url}/healthz")).await;
        Cb {
            daemon,
            url,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, query: &str, body: impl Into<String>) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/wechat?{query}", self.url))
            .body(body.into())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A signed plain scan; returns (status, reply Content or raw body).
    async fn scan(&self, openid: &str, fd: u32, ticket: &str, create_time: i64) -> (u16, String) {
        let (status, body) = self
            .post(
                &signed_query(TOKEN, now()),
                scan_event(openid, fd, ticket, false, create_time),
            )
            .await;
        (status, reply_content(&body).unwrap_or(body))
    }

    async fn metrics(&self) -> String {
        e2e::http::get_text(&self.http, &format!("{}/metrics", self.url)).await
    }
}

/// POSTs over a raw socket and returns the status: a server may answer 413
/// and close before the client has written the whole body, which an HTTP
/// client library reports as a write error.
async fn raw_post(url: &str, query: &str, body: &str, chunked: bool) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = if chunked {
        format!("POST /wechat?{query} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    } else {
        format!(
            "POST /wechat?{query} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
    };
    let payload = if chunked {
        format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
    } else {
        body.to_string()
    };
    let (mut r, mut w) = s.into_split();
    // Read while writing, so the answer is taken before any reset.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64];
        let n = r.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let writer = async {
        let _ = w.write_all(head.as_bytes()).await;
        let _ = w.write_all(payload.as_bytes()).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let line = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn db(tag: &str) -> PathBuf {
    temp_dir(tag).join("scan-login.db")
}

#[tokio::test]
async fn url_verification_echoes_only_when_signed() {
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(&bus, None, &db("get"), &[]).await;
    // GET has no timestamp window: WeChat's console check may be old.
    let q = signed_query(TOKEN, 1_000_000);
    let r = cb
        .http
        .get(format!("{}/wechat?{q}&echostr=hello123", cb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello123");
    let q = signed_query("wrong-token", now());
    let r = cb
        .http
        .get(format!("{}/wechat?{q}&echostr=x", cb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = cb
        .http
        .get(format!("{}/wechat?echostr=x", cb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Signed, but no echostr, or one past 1,024 bytes: 400, nothing echoed.
    let q = signed_query(TOKEN, now());
    for (query, what) in [
        (q.clone(), "no echostr"),
        (format!("{q}&echostr={}", "e".repeat(1025)), "1,025 bytes"),
    ] {
        let r = cb
            .http
            .get(format!("{}/wechat?{query}", cb.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(r.text().await.unwrap(), "missing echostr\n", "{what}");
    }
    let r = cb
        .http
        .get(format!(
            "{}/wechat?{q}&echostr={}",
            cb.url,
            "e".repeat(1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "1,024 bytes are echoed");
    assert_eq!(r.text().await.unwrap().len(), 1024);
}

#[tokio::test]
async fn plain_login_notifies_counts_and_replies() {
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(&bus, None, &db("plain"), &[]).await;
    let t = now();
    let (status, reply) = cb
        .scan("oUser00000000000000000000A1b2", F + 4242, "tk+/=1", t)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        "WeChat user A1b2, login successful! This is your 1st login."
    );
    let lines = bus.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].fd, F + 4242);
    assert_eq!(lines[0].ticket.as_deref(), Some("tk+/=1"));
    assert_eq!(
        lines[0].openid.as_deref(),
        Some("oUser00000000000000000000A1b2")
    );
    assert_eq!(lines[0].nickname, "WeChat user A1b2");
    assert_eq!(
        lines[0].token, None,
        "no token without --login-token-secret"
    );
    assert_eq!(lines[0].secret, None);

    // A follower scanning (SCAN event, bare scene) is a second login.
    let body = scan_event(
        "oUser00000000000000000000A1b2",
        F + 4243,
        "tk2",
        true,
        t + 1,
    );
    let (_, raw) = cb.post(&signed_query(TOKEN, now()), body).await;
    assert_eq!(
        reply_content(&raw).unwrap(),
        "WeChat user A1b2, login successful! This is your 2nd login."
    );
    assert_eq!(bus.lines()[1].fd, F + 4243);
    // The reply is addressed back to the user from the account.
    let f = protocol::wechat::xml::Fields::parse(raw.as_bytes()).unwrap();
    assert_eq!(f.get("ToUserName"), Some("oUser00000000000000000000A1b2"));
    assert_eq!(f.get("FromUserName"), Some("gh_test"));
    assert!(
        cb.metrics()
            .await
            .contains("wechat_callback_logins_total 2")
    );
}

#[tokio::test]
async fn nickname_token_and_secret_reach_the_gateway() {
    let bus = FakeBus::start(Mode::Ok).await;
    let api = FakeApi::start().await;
    api.set_nickname("oAlice", "Alice");
    let cb = Cb::start(
        &bus,
        Some(&api),
        &db("nick"),
        &[
            "--login-token-secret",
            "jwt-secret-1-0123456789abcdef0123",
            "--notify-secret",
            "bus-secret-1-0123456789abcdef01234",
        ],
    )
    .await;
    let (_, reply) = cb.scan("oAlice", F + 7, "T", now()).await;
    assert_eq!(reply, "Alice, login successful! This is your 1st login.");
    let line = &bus.lines()[0];
    assert_eq!(line.nickname, "Alice");
    assert_eq!(
        line.secret.as_deref(),
        Some("bus-secret-1-0123456789abcdef01234")
    );
    let token = line.token.as_deref().expect("token");
    let c = e2e::token::verify(token, "jwt-secret-1-0123456789abcdef0123", None);
    assert_eq!(
        (c.sub.as_str(), c.nickname.as_str(), c.exp - c.iat),
        ("oAlice", "Alice", 300)
    );
    assert!(!c.jti.is_empty());
    assert_eq!(api.calls("/cgi-bin/stable_token"), 1);
    assert_eq!(api.calls("/cgi-bin/user/info"), 1);

    // An expired access token (42001) is refreshed once and the call retried.
    api.fail_next("/cgi-bin/user/info", 42001);
    let (_, reply) = cb.scan("oAlice", F + 8, "T2", now()).await;
    assert_eq!(reply, "Alice, login successful! This is your 2nd login.");
    assert_eq!(api.calls("/cgi-bin/user/info"), 3);
}

#[tokio::test]
async fn retries_get_the_same_reply_and_count_once() {
    let bus = FakeBus::start(Mode::Delay(Duration::from_millis(400))).await;
    let cb = Cb::start(&bus, None, &db("retry"), &[]).await;
    let body = scan_event("oRetry0000000000000000000wxyz", F + 99, "T", false, now());
    // Two deliveries at once (the second while the first is in flight) and
    // one after: all get the same reply, the gateway hears once.
    let q1 = signed_query(TOKEN, now());
    let (a, b) = tokio::join!(cb.post(&q1, body.clone()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cb.post(&signed_query(TOKEN, now()), body.clone()).await
    });
    let c = cb.post(&signed_query(TOKEN, now()), body.clone()).await;
    let ra = reply_content(&a.1).unwrap();
    assert_eq!(
        ra,
        "WeChat user wxyz, login successful! This is your 1st login."
    );
    assert_eq!(reply_content(&b.1).unwrap(), ra);
    assert_eq!(reply_content(&c.1).unwrap(), ra);
    assert_eq!(bus.lines().len(), 1);
    // A new event (later CreateTime) is a new login.
    let (_, r) = cb
        .scan("oRetry0000000000000000000wxyz", F + 99, "T", now() + 5)
        .await;
    assert!(r.ends_with("This is your 2nd login."), "{r}");
    let m = cb.metrics().await;
    assert!(m.contains("wechat_callback_retries_total 2"), "{m}");
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_contract_order() {
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(&bus, None, &db("bad"), &[]).await;
    let body = scan_event("oBad", F + 5, "T", false, now());
    // Bad signature.
    assert_eq!(
        cb.post(&signed_query("not-the-token", now()), body.clone())
            .await
            .0,
        403
    );
    assert_eq!(cb.post("timestamp=1&nonce=2", body.clone()).await.0, 403);
    // A correct signature over a timestamp that is not a number.
    let sig = protocol::wechat::signature::signature(TOKEN, "soon", "2");
    let q = format!("signature={sig}&timestamp=soon&nonce=2");
    assert_eq!(cb.post(&q, body.clone()).await.0, 403);
    // Timestamp outside 300 s, either way (by a minute: a clock tick
    // between signing and checking must not bring it back inside).
    assert_eq!(
        cb.post(&signed_query(TOKEN, now() - 360), body.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        cb.post(&signed_query(TOKEN, now() + 360), body.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        cb.post(&signed_query(TOKEN, now() - 200), body.clone())
            .await
            .0,
        200
    );
    // Malformed XML, DOCTYPE, missing fields.
    let q = signed_query(TOKEN, now());
    assert_eq!(cb.post(&q, "<xml><ToUserName>").await.0, 400);
    assert_eq!(
        cb.post(&q, "<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><ToUserName>&e;</ToUserName></xml>")
            .await
            .0,
        400
    );
    assert_eq!(
        cb.post(&q, "<xml><ToUserName>a</ToUserName></xml>").await.0,
        400
    );
    // Over 1 MiB: 413 before the signature is even looked at.
    let big = format!("<xml>{}</xml>", "a".repeat(1024 * 1024));
    assert_eq!(raw_post(&cb.url, "signature=bad", &big, false).await, 413);
    assert_eq!(
        raw_post(&cb.url, &signed_query(TOKEN, now()), &big, false).await,
        413
    );
    // Without a Content-Length (chunked), the limit holds while reading.
    assert_eq!(
        raw_post(&cb.url, &signed_query(TOKEN, now()), &big, true).await,
        413
    );
    // Only the one valid scan reached the gateway.
    assert_eq!(bus.lines().len(), 1);
    let m = cb.metrics().await;
    for needle in [
        "outcome=\"bad_signature\"} 2",
        "outcome=\"stale_timestamp\"} 3",
        "outcome=\"bad_xml\"} 3",
        "outcome=\"too_large\"} 3",
    ] {
        assert!(m.contains(needle), "{needle} missing in\n{m}");
    }
}

#[tokio::test]
async fn safe_mode_and_compatible_mode() {
    let bus = FakeBus::start(Mode::Ok).await;
    // With a key and no --message-mode: safe.
    let cb = Cb::start(
        &bus,
        None,
        &db("safe"),
        &["--encoding-aes-key", KEY1, "--app-id", APPID],
    )
    .await;
    let key = AesKey::from_encoding_aes_key(KEY1).unwrap();
    let openid = "oSafe000000000000000000000SAFE";
    let xml = scan_event(openid, F + 31, "ticket=", false, now());
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    let (status, raw) = cb.post(&q, body).await;
    assert_eq!(status, 200);
    let (appid, inner) = open_encrypted_reply(TOKEN, &key, &raw).unwrap();
    assert_eq!(appid, APPID);
    assert_eq!(
        reply_content(&inner).unwrap(),
        "WeChat user SAFE, login successful! This is your 1st login."
    );
    assert_eq!(bus.lines()[0].fd, F + 31);

    // Safe mode: a correctly signed plaintext POST is refused, since its
    // signature does not cover the body.
    let (status, _) = cb.scan(openid, F + 32, "t2", now() + 1).await;
    assert_eq!(status, 403);
    assert_eq!(bus.lines().len(), 1, "nothing sent for a refused POST");

    // A wrong msg_signature is 403; a wrong appid is 400; a missing
    // msg_signature is 403; encrypt_type=aes without Encrypt is 400.
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    let bad = q.replace("msg_signature=", "msg_signature=0");
    assert_eq!(cb.post(&bad, body.clone()).await.0, 403);
    let without: Vec<&str> = q
        .split('&')
        .filter(|p| !p.starts_with("msg_signature="))
        .collect();
    assert_eq!(cb.post(&without.join("&"), body).await.0, 403);
    let (q, body) = encrypt_post(
        TOKEN,
        &key,
        "wxsomeoneelse",
        &scan_event("o", F + 33, "t", false, now()),
        now(),
    );
    assert_eq!(cb.post(&q, body).await.0, 400);
    let (q, _) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    assert_eq!(
        cb.post(&q, "<xml><ToUserName>gh</ToUserName></xml>")
            .await
            .0,
        400
    );
    assert_eq!(bus.lines().len(), 1);
    drop(cb);

    // Compatible mode: both, each answered the way it came.
    let cb = Cb::start(
        &bus,
        None,
        &db("compatible"),
        &[
            "--encoding-aes-key",
            KEY1,
            "--app-id",
            APPID,
            "--message-mode",
            "compatible",
        ],
    )
    .await;
    let (status, reply) = cb.scan(openid, F + 34, "t3", now() + 2).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        "WeChat user SAFE, login successful! This is your 1st login."
    );
    let xml = scan_event(openid, F + 35, "t4", true, now() + 3);
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    let (_, raw) = cb.post(&q, body).await;
    let (_, inner) = open_encrypted_reply(TOKEN, &key, &raw).unwrap();
    assert!(reply_content(&inner).unwrap().contains("2nd login"));
    drop(cb);

    // Plain mode without a key: an encrypted POST cannot be opened.
    let cb = Cb::start(&bus, None, &db("plain"), &[]).await;
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    assert_eq!(cb.post(&q, body).await.0, 400);
    assert_eq!(bus.lines().len(), 3);
}

/// 0.1.0's forged login: a callback URL seen once (an access log, a log
/// shipper) gives signature, timestamp and nonce; a plaintext body of the
/// attacker's making (FromUserName = the victim, EventKey = the attacker's
/// page) was accepted with them, and the attacker's page was logged in as
/// the victim. Now refused in safe mode, and, in plain mode, by the replay
/// rule, on every instance sharing the store.
#[tokio::test]
async fn a_seen_callback_url_cannot_sign_a_forged_body() {
    let bus = FakeBus::start(Mode::Ok).await;
    let key = AesKey::from_encoding_aes_key(KEY1).unwrap();

    // Safe mode (the default with a key): the real, encrypted callback...
    let cb = Cb::start(
        &bus,
        None,
        &db("forge-safe"),
        &["--encoding-aes-key", KEY1, "--app-id", APPID],
    )
    .await;
    let real = scan_event("oVictim", F + 51, "victim-ticket", true, now());
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &real, now());
    assert_eq!(cb.post(&q, body).await.0, 200);
    // ...then its query, minus the encryption parameters, on a forged body.
    let seen: Vec<&str> = q
        .split('&')
        .filter(|p| !p.starts_with("encrypt_type=") && !p.starts_with("msg_signature="))
        .collect();
    let forged = scan_event("oVictim", F + 666, "attacker-ticket", true, now());
    assert_eq!(cb.post(&seen.join("&"), forged.clone()).await.0, 403);
    // Even with encrypt_type kept but the body swapped for a plaintext one.
    assert_ne!(cb.post(&q, forged.clone()).await.0, 200);
    assert_eq!(bus.lines().len(), 1);
    assert!(bus.lines().iter().all(|l| l.fd == F + 51));
    drop(cb);

    // Plain mode, two instances on one store: the signature of a real
    // callback, reused with another body, is refused on both; the same
    // body again is WeChat retrying and answered as a retry.
    let path = db("forge-plain");
    let a = Cb::start(&bus, None, &path, &[]).await;
    let b = Cb::start(&bus, None, &path, &[]).await;
    let q = signed_query(TOKEN, now());
    let real = scan_event("oVictim2", F + 61, "victim-ticket-2", true, now());
    let (status, first) = a.post(&q, real.clone()).await;
    assert_eq!(status, 200);
    let forged = scan_event("oVictim2", F + 667, "attacker-ticket", true, now());
    let (status, text) = b.post(&q, forged.clone()).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("replay"), "{text}");
    assert_eq!(a.post(&q, forged).await.0, 403);
    let (status, again) = b.post(&q, real).await;
    assert_eq!((status, again), (200, first), "a retry gets the same reply");
    let sent: Vec<u32> = bus.lines().iter().map(|l| l.fd).collect();
    assert_eq!(
        sent,
        [F + 51, F + 61],
        "only the real events reached the gateway"
    );
    assert!(a.metrics().await.contains(r#"outcome="replay"} 1"#));
}

#[tokio::test]
async fn key_rotation_answers_with_the_key_that_opened_the_request() {
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(
        &bus,
        None,
        &db("rotate"),
        &[
            "--encoding-aes-key",
            KEY2,
            "--encoding-aes-key-previous",
            KEY1,
            "--app-id",
            APPID,
        ],
    )
    .await;
    let (old, new, other) = (
        AesKey::from_encoding_aes_key(KEY1).unwrap(),
        AesKey::from_encoding_aes_key(KEY2).unwrap(),
        AesKey::from_encoding_aes_key(KEY3).unwrap(),
    );
    for (i, key) in [&old, &new].into_iter().enumerate() {
        let xml = scan_event("oRot", F + 40 + i as u32, "t", false, now() + i as i64);
        let (q, body) = encrypt_post(TOKEN, key, APPID, &xml, now());
        let (status, raw) = cb.post(&q, body).await;
        assert_eq!(status, 200);
        let (_, inner) =
            open_encrypted_reply(TOKEN, key, &raw).expect("reply opens with the request's key");
        assert!(reply_content(&inner).unwrap().contains("login successful"));
    }
    let (q, body) = encrypt_post(
        TOKEN,
        &other,
        APPID,
        &scan_event("oRot", F + 50, "t", false, now()),
        now(),
    );
    assert_eq!(cb.post(&q, body).await.0, 400);
    assert!(
        cb.metrics()
            .await
            .contains("wechat_callback_previous_key_total 1")
    );
}

#[tokio::test]
async fn gateway_down_or_refusing_means_scan_again_and_no_count() {
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let bus = FakeBus::start_at(&addr, Mode::Ok).await;
    let path = db("down");
    let cb = Cb::start(&bus, None, &path, &[]).await;
    drop(bus);
    // Wait until the bus port really refuses connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake bus kept listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = now();
    let (_, reply) = cb.scan("oDown", F + 60, "t", t).await;
    assert!(reply.contains("refresh the login page"), "{reply}");
    // The gateway comes back: the next scan works without restarting.
    let bus = FakeBus::start_at(&addr, Mode::Ok).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let reply = loop {
        i += 1;
        let reply = cb.scan("oDown", F + 61, "t", t + i).await.1;
        if reply.contains("login successful") || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reply,
        "WeChat user Down, login successful! This is your 1st login."
    );
    // The page is gone (or the ticket was used): scan again, not counted.
    for code in [
        BusError::NoSuchClient,
        BusError::TicketMismatch,
        BusError::Unauthorized,
    ] {
        bus.set_mode(Mode::Refuse(code));
        let (_, reply) = cb
            .scan("oDown", F + 62, "t", now() + 100 + code as i64)
            .await;
        assert!(reply.contains("refresh the login page"), "{code}: {reply}");
    }
    bus.set_mode(Mode::Ok);
    let (_, reply) = cb.scan("oDown", F + 63, "t", now() + 200).await;
    assert!(reply.ends_with("This is your 2nd login."), "{reply}");
}

/// A bus answer the callback cannot read, or none before the reply
/// deadline: the page may or may not have the login, so the user is told
/// it could not be confirmed, and nothing is counted; the next scan with a
/// working gateway is the user's first login.
#[tokio::test]
async fn an_unreadable_or_missing_bus_answer_is_unconfirmed_and_not_counted() {
    let bus = FakeBus::start(Mode::Garbage).await;
    // The silent answer is waited for until the reply deadline less a
    // 250 ms margin, then the user is told.
    let cb = Cb::start(
        &bus,
        None,
        &db("unreadable"),
        &["--reply-deadline-ms", "1500", "--notify-timeout-ms", "200"],
    )
    .await;
    let (status, reply) = cb.scan("oUnread", F + 64, "t", now()).await;
    assert_eq!(status, 200);
    assert!(reply.contains("could not be confirmed"), "{reply}");
    bus.set_mode(Mode::Silent);
    let (status, reply) = cb.scan("oUnread", F + 65, "t", now() + 1).await;
    assert_eq!(status, 200);
    assert!(reply.contains("could not be confirmed"), "{reply}");
    let m = cb.metrics().await;
    let failures = |kind: &str| {
        let name = format!(r#"wechat_callback_notify_failures_total{{kind="{kind}"}}"#);
        e2e::http::metric(&m, &name)
    };
    assert_eq!(failures("lost"), Some(1.0), "{m}");
    assert_eq!(failures("timeout"), Some(1.0), "{m}");
    bus.set_mode(Mode::Ok);
    let (_, reply) = cb.scan("oUnread", F + 66, "t", now() + 2).await;
    assert!(reply.ends_with("This is your 1st login."), "{reply}");
}

#[tokio::test]
async fn two_instances_share_one_database() {
    let bus = FakeBus::start(Mode::Delay(Duration::from_millis(300))).await;
    let path = db("two");
    let a = Cb::start(&bus, None, &path, &[]).await;
    let b = Cb::start(&bus, None, &path, &[]).await;
    let (_, r) = a.scan("oTwo", F + 70, "t", now()).await;
    assert!(r.ends_with("1st login."), "{r}");
    let (_, r) = b.scan("oTwo", F + 71, "t", now() + 1).await;
    assert!(r.ends_with("2nd login."), "{r}");
    // The same delivery reaching both instances at once is handled once.
    let body = scan_event("oTwo", F + 72, "t", false, now() + 2);
    let q1 = signed_query(TOKEN, now());
    let (ra, rb) = tokio::join!(a.post(&q1, body.clone()), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.post(&signed_query(TOKEN, now()), body.clone()).await
    });
    let ra = reply_content(&ra.1).unwrap();
    assert!(ra.ends_with("3rd login."), "{ra}");
    assert_eq!(reply_content(&rb.1).unwrap(), ra);
    assert_eq!(bus.lines().len(), 3);
}

#[tokio::test]
async fn slow_work_answers_success_in_time_and_still_completes() {
    let bus = FakeBus::start(Mode::Ok).await;
    let api = FakeApi::start().await;
    // user/info slower than the reply deadline but inside its own budget.
    api.set_latency(Duration::from_millis(900));
    let cb = Cb::start(
        &bus,
        Some(&api),
        &db("slow"),
        &["--reply-deadline-ms", "300"],
    )
    .await;
    let body = scan_event("oSlow", F + 80, "t", false, now());
    let (status, raw) = cb.post(&signed_query(TOKEN, now()), body.clone()).await;
    assert_eq!((status, raw.as_str()), (200, "success"));
    let lines = bus.wait_for_lines(1, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 1, "the work completed after the answer");
    // WeChat's retry (or a late one) gets the finished reply once the work
    // has stored it (until then a retry inside the 300 ms deadline is
    // answered `success` again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, raw) = cb.post(&signed_query(TOKEN, now()), body.clone()).await;
        if let Some(reply) = reply_content(&raw) {
            assert!(reply.ends_with("1st login."), "{reply}");
            break;
        }
        assert_eq!(raw, "success");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reply was never stored"
        );
    }
    assert_eq!(bus.lines().len(), 1, "a retry notified the gateway again");

    // user/info past its budget: the fallback name, within the deadline.
    let cb2 = Cb::start(
        &bus,
        Some(&api),
        &db("slow2"),
        &["--user-info-timeout-ms", "200"],
    )
    .await;
    api.set_latency(Duration::from_secs(3));
    let (_, reply) = cb2.scan("oSlowUserXYZW", F + 81, "t", now()).await;
    assert_eq!(
        reply,
        "WeChat user XYZW, login successful! This is your 1st login."
    );
}

#[tokio::test]
async fn other_messages_get_short_replies() {
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(&bus, None, &db("other"), &[]).await;
    // Each request signed afresh, as WeChat signs each (a signature seen
    // with another body is a replay).
    let q = || signed_query(TOKEN, now());
    let (_, raw) = cb
        .post(
            &q(),
            text_message_body("gh_test", "oText", now(), "hello", 1234567),
        )
        .await;
    assert!(reply_content(&raw).unwrap().contains("scan the QR code"));
    let click = "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey></xml>";
    assert_eq!(cb.post(&q(), click).await.1, "success");
    let unsub = "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>2</CreateTime><MsgType>event</MsgType><Event>unsubscribe</Event></xml>";
    assert_eq!(cb.post(&q(), unsub).await.1, "success");
    // A subscribe without a scene (search, not a QR code) is no login.
    let plain_sub = "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>3</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey></EventKey></xml>";
    assert_eq!(cb.post(&q(), plain_sub).await.1, "success");
    assert!(bus.lines().is_empty());
}

#[tokio::test]
async fn secrets_never_reach_the_logs_and_sigterm_exits_zero() {
    let bus = FakeBus::start(Mode::Ok).await;
    let api = FakeApi::start().await;
    let mut cb = Cb::start_env(
        &bus,
        Some(&api),
        &db("secrets"),
        &[
            "--encoding-aes-key",
            KEY1,
            "--login-token-secret",
            "SECRET-jwt-7f3a-0123456789abcdef0123",
            "--notify-secret",
            "SECRET-bus-91c2-0123456789abcdef0123",
        ],
        &[
            ("RUST_LOG", "trace"),
            ("WECHAT_APP_SECRET", "SECRET-app-5d6e"),
        ],
    )
    .await;
    // A login that uses every secret: the token and the AES key to open and
    // seal the callback, the AppSecret for the user lookup, the bus secret
    // on the line, the JWT secret for the token the line carries.
    let key = AesKey::from_encoding_aes_key(KEY1).unwrap();
    let xml = scan_event("oSecret", F + 90, "t", false, now());
    let (q, body) = encrypt_post(TOKEN, &key, APPID, &xml, now());
    let (status, raw) = cb.post(&q, body).await;
    assert_eq!(status, 200, "{raw}");
    let (_, inner) = open_encrypted_reply(TOKEN, &key, &raw).unwrap();
    let reply = reply_content(&inner).unwrap();
    assert!(reply.contains("login successful"), "{reply}");
    assert_eq!(api.secrets(), ["SECRET-app-5d6e"], "the AppSecret is used");
    let line = &bus.lines()[0];
    assert_eq!(
        line.secret.as_deref(),
        Some("SECRET-bus-91c2-0123456789abcdef0123"),
        "the bus secret is used"
    );
    let token = line.token.as_deref().expect("a token");
    e2e::token::verify(token, "SECRET-jwt-7f3a-0123456789abcdef0123", None);
    // A request signed with another token, refused (and logged).
    let (status, _) = cb.post(&signed_query("bad", now()), "<xml/>").await;
    assert_eq!(status, 403);
    let status = cb.daemon.terminate();
    assert!(status.success(), "exit status {status}");
    let log = cb.daemon.stderr();
    assert!(log.contains("wechat-callback listening"), "{log}");
    for secret in [
        "SECRET-jwt-7f3a-0123456789abcdef0123",
        "SECRET-bus-91c2-0123456789abcdef0123",
        "SECRET-app-5d6e",
        KEY1,
        TOKEN,
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

#[test]
fn help_lists_every_flag() {
    let (status, out, _) = run_to_end(&bin(), &["--help"], &[]);
    assert!(status.success());
    for flag in [
        "--listen",
        "--token",
        "--encoding-aes-key",
        "--encoding-aes-key-previous",
        "--app-id",
        "--app-secret",
        "--wechat-api-base",
        "--notify-addr",
        "--notify-secret",
        "--db",
        "--login-token-secret",
        "--timestamp-tolerance-seconds",
        "--reply-template",
        "--config",
        "--check-config",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    for env in [
        "WECHAT_TOKEN",
        "WECHAT_ENCODING_AES_KEY",
        "NOTIFY_SECRET",
        "LOGIN_TOKEN_SECRET",
        "SCAN_LOGIN_NOTIFY_ADDR",
    ] {
        assert!(out.contains(env), "--help lacks {env}");
    }
}

#[test]
fn settings_layer_flag_over_env_over_file_and_check_config() {
    let dir = temp_dir("layers");
    let cfg = dir.join("callback.toml");
    let db = dir.join("x.db");
    std::fs::write(
        &cfg,
        format!(
            "token = \"from-file\"\ndb = \"{}\"\nreply_template = \"file {{name}}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let (status, out, err) = run_to_end(&bin(), &["--config", cfg_s, "--check-config"], &[]);
    assert!(status.success(), "{out}{err}");
    // A bad key in env is caught; a flag overrides it.
    let env = [("WECHAT_ENCODING_AES_KEY", "short")];
    let (status, _, err) = run_to_end(&bin(), &["--config", cfg_s, "--check-config"], &env);
    assert!(!status.success());
    assert!(err.contains("encoding-aes-key"), "{err}");
    let (status, _, err) = run_to_end(
        &bin(),
        &[
            "--config",
            cfg_s,
            "--check-config",
            "--encoding-aes-key",
            KEY1,
        ],
        &env,
    );
    assert!(status.success(), "{err}");
    // No token anywhere: a clear error.
    let (status, _, err) = run_to_end(
        &bin(),
        &["--check-config", "--db", db.to_str().unwrap()],
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("--token"), "{err}");
    // A typo in the file is an error, not silently ignored.
    std::fs::write(&cfg, "tokn = \"x\"\n").unwrap();
    let (status, _, err) = run_to_end(&bin(), &["--config", cfg_s, "--check-config"], &[]);
    assert!(!status.success());
    assert!(err.contains("tokn"), "{err}");
    // SCAN_LOGIN_CONFIG names the file too.
    std::fs::write(&cfg, "timestamp_tolerance_seconds = 0\ntoken = \"t\"\n").unwrap();
    let (status, _, err) = run_to_end(&bin(), &["--check-config"], &[("SCAN_LOGIN_CONFIG", cfg_s)]);
    assert!(!status.success());
    assert!(err.contains("timestamp-tolerance"), "{err}");
}

#[tokio::test]
async fn env_and_file_settings_take_effect_on_the_running_daemon() {
    let bus = FakeBus::start(Mode::Ok).await;
    let dir = temp_dir("envfile");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "reply_template = \"FILE {name} #{count}\"\n").unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let cb = Cb::start_env(&bus, None, &dir.join("db"), &["--config", &cfg_s], &[]).await;
    assert_eq!(
        cb.scan("oEnv1", F + 1, "t", now()).await.1,
        "FILE WeChat user Env1 #1"
    );
    let cb = Cb::start_env(
        &bus,
        None,
        &dir.join("db2"),
        &["--config", &cfg_s],
        &[("SCAN_LOGIN_REPLY_TEMPLATE", "ENV {ordinal}")],
    )
    .await;
    assert_eq!(cb.scan("oEnv2", F + 2, "t", now()).await.1, "ENV 1st");
    let cb = Cb::start_env(
        &bus,
        None,
        &dir.join("db3"),
        &["--config", &cfg_s, "--reply-template", "FLAG {count}"],
        &[("SCAN_LOGIN_REPLY_TEMPLATE", "ENV {ordinal}")],
    )
    .await;
    assert_eq!(cb.scan("oEnv3", F + 3, "t", now()).await.1, "FLAG 1");
}

/// 0.1.0 answered `success` when the store was locked past its busy
/// timeout: nothing recorded, nothing pushed, and WeChat never retries
/// after `success`. Now 503, and WeChat's retry logs the user in once the
/// lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_is_503_and_the_retry_succeeds() {
    let bus = FakeBus::start(Mode::Ok).await;
    let path = db("locked");
    let cb = Cb::start(&bus, None, &path, &[]).await;
    // Another writer holds the database.
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let q = signed_query(TOKEN, now());
    let body = scan_event("oLocked00000000000000000LOCK", F + 70, "t", false, now());
    let (status, text) = cb.post(&q, body.clone()).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        bus.lines().is_empty(),
        "nothing pushed for an unrecorded login"
    );
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    // WeChat retries the very same request.
    let (status, raw) = cb.post(&q, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply_content(&raw).unwrap(),
        "WeChat user LOCK, login successful! This is your 1st login."
    );
    assert_eq!(bus.lines().len(), 1);
    let m = cb.metrics().await;
    let errors = e2e::http::metric(&m, "wechat_callback_store_errors_total");
    assert!(errors.is_some_and(|n| n >= 1.0), "{m}");
}

/// 0.1.0 held a connection slot for as long as a client cared to trickle
/// its body (30 s and more); a body must now arrive within a few seconds.
#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bus = FakeBus::start(Mode::Ok).await;
    let cb = Cb::start(&bus, None, &db("body-timeout"), &[]).await;
    let addr = cb.url.trim_start_matches("http://").to_string();
    let q = signed_query(TOKEN, now());
    for head in [
        format!("POST /wechat?{q} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"),
        format!(
            "POST /wechat?{q} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\n<xml\r\n"
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        // Nothing more is sent; the server must answer on its own.
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("the callback kept waiting for the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(bus.lines().is_empty());
    assert!(cb.metrics().await.contains(r#"outcome="body_timeout"} 2"#));
}

/// 0.1.0's bus client never consumed an over-long answer line and spun at
/// 100% CPU: whoever squatted the bus port (while the gateway restarted)
/// hung the callback for good, `/healthz` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_on_the_bus_port_cannot_hang_the_callback() {
    use tokio::io::AsyncWriteExt;
    let squatter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = squatter.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = squatter.accept().await {
            // An endless answer: 70 KiB and never a newline.
            let _ = s.write_all(&vec![b'x'; 70 * 1024]).await;
            held.push(s);
        }
    });
    let cb = Cb::start_at(&addr, None, &db("squat"), &[], &[]).await;
    for (i, openid) in [
        "oSquat0000000000000000000SQ01",
        "oSquat0000000000000000000SQ02",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, reply) = cb
            .scan(openid, F + 80 + i as u32, "t", now() + i as i64)
            .await;
        assert_eq!(status, 200);
        assert!(reply.contains("refresh the login page"), "{reply}");
        let health = cb
            .http
            .get(format!("{}/healthz", cb.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("healthz answers");
        assert_eq!(health.status(), 200);
    }
}

#[test]
fn weak_or_contradictory_settings_are_refused() {
    let base = ["--token", TOKEN, "--check-config", "--db"];
    let dir = temp_dir("weak");
    let db = dir.join("x.db");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(db.to_str().unwrap());
        args.extend_from_slice(extra);
        run_to_end(&bin(), &args, &[])
    };
    let (status, _, err) = run(&["--login-token-secret", "short"]);
    assert!(!status.success());
    assert!(
        err.contains("--login-token-secret") && err.contains("32"),
        "{err}"
    );
    let (status, _, err) = run(&["--notify-secret", "0123456789"]);
    assert!(!status.success());
    assert!(err.contains("--notify-secret"), "{err}");
    let (status, _, err) = run(&["--message-mode", "safe"]);
    assert!(!status.success());
    assert!(err.contains("--encoding-aes-key"), "{err}");
    let (status, _, err) = run(&["--message-mode", "compatible"]);
    assert!(!status.success(), "{err}");
    for flag in ["--reply-template", "--retry-template"] {
        let (status, _, err) = run(&[flag, "{nam}, hello"]);
        assert!(!status.success());
        assert!(err.contains(flag) && err.contains("{nam}"), "{err}");
    }
    let (status, _, err) = run(&["--confirm-template", "{nam}, reply 1"]);
    assert!(!status.success());
    assert!(err.contains("{nam}"), "{err}");
    let (status, out, err) = run(&[
        "--login-token-secret",
        "0123456789abcdef0123456789abcdef",
        "--encoding-aes-key",
        KEY1,
        "--message-mode",
        "compatible",
    ]);
    assert!(status.success(), "{out}{err}");
}

#[tokio::test]
async fn starting_without_a_login_token_secret_warns() {
    let bus = FakeBus::start(Mode::Ok).await;
    let mut cb = Cb::start(&bus, None, &db("nojwt"), &[]).await;
    assert!(cb.daemon.terminate().success());
    let log = cb.daemon.stderr();
    assert!(
        log.contains("WARN") && log.contains("--login-token-secret is not set"),
        "{log}"
    );
}
