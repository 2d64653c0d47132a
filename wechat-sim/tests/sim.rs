//! The real `wechat-sim` binary over real sockets: the API's token and QR
//! semantics, the phone's callback delivery (plain and safe mode, retries),
//! fault injection and the `scan` subcommand. A tiny callback server in
//! this file plays `wechat-callback`, checking everything with `protocol`.

// Helpers outside #[test] fns are test code too: a failed unwrap is a
// failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemon_kit::http::{ServeOptions, query_pairs};
use http_body_util::BodyExt;
use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::{encrypted_envelope, text_reply};
use protocol::wechat::signature;
use protocol::wechat::xml::{EncryptedEnvelope, Event, Fields, Message, MessageKind};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const APP_ID: &str = "wxsimtest0000001";
const SECRET: &str = "sim-secret";
const TOKEN: &str = "sim-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const BIN: &str = env!("CARGO_BIN_EXE_wechat-sim");

// ---- helpers -------------------------------------------------------------

use e2e::free_port;

/// A running simulator (the test kit's launcher), killed on drop.
struct Sim {
    _daemon: e2e::Daemon,
    base: String,
    http: reqwest::Client,
}

impl Sim {
    async fn start(extra: &[&str]) -> Sim {
        let listen = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = [
            "--listen",
            &listen,
            "--app-id",
            APP_ID,
            "--app-secret",
            SECRET,
            "--token",
            TOKEN,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let mut daemon =
            e2e::Daemon::spawn(std::path::Path::new(BIN), &args, &[("RUST_LOG", "warn")]);
        let base = format!("http://{listen}");
        daemon.wait_healthy(&format!("{base}/healthz")).await;
        Sim {
            _daemon: daemon,
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stable_token(&self, force: bool) -> Value {
        self.post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET, "force_refresh": force}),
        )
        .await
        .1
    }

    async fn token(&self) -> String {
        self.stable_token(false).await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn create_qr(&self, token: &str, body: Value) -> Value {
        self.post(
            &format!("/cgi-bin/qrcode/create?access_token={token}"),
            body,
        )
        .await
        .1
    }

    async fn qr_scene(&self, scene_id: u32, expire: u32) -> String {
        let token = self.token().await;
        let v = self
            .create_qr(
                &token,
                json!({"expire_seconds": expire, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": scene_id}}}),
            )
            .await;
        v["ticket"].as_str().unwrap().to_string()
    }

    async fn scan(&self, body: Value) -> (u16, Value) {
        self.post("/sim/scan", body).await
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One request the fake callback received.
#[derive(Debug, Clone)]
struct Received {
    query: Vec<(String, String)>,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn q(&self, name: &str) -> &str {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// How the fake callback behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Never answer the first request (it hangs until the callback server
    /// stops), so only a timeout can end that attempt.
    hang_first: bool,
    /// Answer with this status and an empty body instead of a reply.
    status: Option<u16>,
    /// Answer `success` instead of a text reply.
    success: bool,
}

/// A fake `wechat-callback`: records every request; checks its signature
/// and decodes it with `protocol`; answers `Hello <openid>` as a passive
/// reply, encrypted exactly when the request was.
struct Callback {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// How many requests got an answer.
    answered: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Callback {
    async fn start(behaviour: Behaviour) -> Callback {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::<Received>::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let rec = received.clone();
        let ans = answered.clone();
        let hang = stop.clone();
        tokio::spawn(daemon_kit::http::serve(
            listener,
            ServeOptions::default(),
            stop.clone(),
            move |req: hyper::Request<hyper::body::Incoming>, _peer| {
                let rec = rec.clone();
                let ans = ans.clone();
                let hang = hang.clone();
                let behaviour = behaviour.clone();
                async move {
                    let query = query_pairs(req.uri().query());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let n = {
                        let mut r = rec.lock().unwrap();
                        r.push(Received {
                            query: query.clone(),
                            body: body.clone(),
                            at: Instant::now(),
                        });
                        r.len()
                    };
                    if n == 1 && behaviour.hang_first {
                        hang.cancelled().await;
                        return daemon_kit::http::text(hyper::StatusCode::SERVICE_UNAVAILABLE, "");
                    }
                    ans.fetch_add(1, Ordering::SeqCst);
                    if let Some(status) = behaviour.status {
                        return daemon_kit::http::text(
                            hyper::StatusCode::from_u16(status).unwrap(),
                            "",
                        );
                    }
                    if behaviour.success {
                        return daemon_kit::http::text(hyper::StatusCode::OK, "success");
                    }
                    let rx = Received {
                        query,
                        body,
                        at: Instant::now(),
                    };
                    let (msg, encrypted) = decode(&rx);
                    let content = format!("Hello {}", msg.from_user);
                    let reply = text_reply(&msg.from_user, &msg.to_user, msg.create_time, &content);
                    let out = if encrypted {
                        let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
                        let e = key.encrypt(reply.as_bytes(), APP_ID, &[9; 16]);
                        let sig = signature::msg_signature(TOKEN, "1700000000", "77", &e);
                        encrypted_envelope(&e, &sig, "1700000000", "77")
                    } else {
                        reply
                    };
                    daemon_kit::http::with_type(hyper::StatusCode::OK, "application/xml", out)
                }
            },
        ));
        Callback {
            url: format!("http://{addr}/wechat"),
            received,
            answered,
            stop,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

/// Checks a delivery's signatures and decodes its event (decrypting in
/// safe mode). Panics on anything WeChat would not have sent.
fn decode(rx: &Received) -> (Message, bool) {
    assert!(
        signature::verify(TOKEN, rx.q("timestamp"), rx.q("nonce"), rx.q("signature")),
        "bad signature in {:?}",
        rx.query
    );
    let fields = Fields::parse(&rx.body).unwrap();
    if rx.q("encrypt_type") == "aes" {
        let env = EncryptedEnvelope::from_fields(&fields).expect("Encrypt field");
        assert!(
            signature::verify_msg(
                TOKEN,
                rx.q("timestamp"),
                rx.q("nonce"),
                &env.encrypt,
                rx.q("msg_signature")
            ),
            "bad msg_signature"
        );
        let plain = AesKey::from_encoding_aes_key(AES_KEY)
            .unwrap()
            .decrypt(&env.encrypt)
            .unwrap();
        assert_eq!(plain.appid, APP_ID);
        (Message::parse(&plain.message).unwrap(), true)
    } else {
        assert!(fields.get("Encrypt").is_none());
        (Message::from_fields(&fields).unwrap(), false)
    }
}

// ---- access tokens ---------------------------------------------------------

#[tokio::test]
async fn access_tokens() {
    let sim = Sim::start(&[]).await;
    let a = sim.stable_token(false).await;
    let t1 = a["access_token"].as_str().unwrap().to_string();
    assert!(t1.len() > 60, "{t1}");
    assert!(
        t1.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    assert_eq!(a["expires_in"], 7200);
    assert!(a.get("errcode").is_none());

    // Same token to every caller while valid.
    let b = sim.stable_token(false).await;
    assert_eq!(b["access_token"], t1.as_str());
    assert!(b["expires_in"].as_u64().unwrap() <= 7200);

    // force_refresh: a new one; the old one is dead.
    let c = sim.stable_token(true).await;
    let t2 = c["access_token"].as_str().unwrap().to_string();
    assert_ne!(t2, t1);
    let qr = json!({"action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 5}}});
    assert_eq!(sim.create_qr(&t1, qr.clone()).await["errcode"], 40001);
    assert!(sim.create_qr(&t2, qr.clone()).await["ticket"].is_string());
    assert_eq!(sim.stable_token(false).await["access_token"], t2.as_str());

    // Credentials.
    let wrong_secret = sim
        .post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": APP_ID, "secret": "nope"}),
        )
        .await;
    assert_eq!(wrong_secret.0, 200, "WeChat answers errors with HTTP 200");
    assert_eq!(wrong_secret.1["errcode"], 40125);
    assert!(wrong_secret.1["errmsg"].is_string());
    let wrong_app = sim
        .post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": "wxother", "secret": SECRET}),
        )
        .await;
    assert_eq!(wrong_app.1["errcode"], 40013);
    let (_, v) = sim.get("/cgi-bin/stable_token").await;
    assert_eq!(v["errcode"], 43002);

    // cgi-bin/token: a new token per call, the previous one invalid.
    let q = format!("/cgi-bin/token?grant_type=client_credential&appid={APP_ID}&secret={SECRET}");
    let p1 = sim.get(&q).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let p2 = sim.get(&q).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(p1, p2);
    assert_eq!(sim.create_qr(&p1, qr.clone()).await["errcode"], 40001);
    assert!(sim.create_qr(&p2, qr.clone()).await["ticket"].is_string());

    // Missing token, expired tokens.
    let (_, v) = sim.post("/cgi-bin/qrcode/create", qr.clone()).await;
    assert_eq!(v["errcode"], 41001);
    let (s, _) = sim
        .post("/sim/faults", json!({"expire_tokens": true}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(sim.create_qr(&t2, qr.clone()).await["errcode"], 42001);
    let t3 = sim.token().await;
    assert_ne!(t3, t2);
    assert!(sim.create_qr(&t3, qr).await["ticket"].is_string());

    let (_, stats) = sim.get("/sim/stats").await;
    assert_eq!(stats["force_refreshes"], 1);
    assert_eq!(stats["tokens_issued"], 5);
}

// ---- QR codes ----------------------------------------------------------------

#[tokio::test]
async fn qr_codes_tickets_and_images() {
    let sim = Sim::start(&[]).await;
    let token = sim.token().await;
    let v = sim
        .create_qr(
            &token,
            json!({"expire_seconds": 120, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 4_000_000_000u32}}}),
        )
        .await;
    assert_eq!(v["expire_seconds"], 120);
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("http://weixin.qq.com/q/")
    );
    let ticket = v["ticket"].as_str().unwrap();
    let (s, info) = sim.get(&format!("/sim/tickets/{}", enc(ticket))).await;
    assert_eq!(s, 200);
    assert_eq!(info["scene_id"], 4_000_000_000u32);
    assert_eq!(info["ticket"], ticket);
    assert_eq!(info["url"], v["url"]);
    assert_eq!(info["expire_seconds"], 120);
    assert!(info["expires_in"].as_u64().unwrap() <= 120);

    // Default lifetime, string scenes, bad requests.
    let d = sim
        .create_qr(
            &token,
            json!({"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "login-1"}}}),
        )
        .await;
    assert_eq!(d["expire_seconds"], 60);
    let (_, info) = sim
        .get(&format!(
            "/sim/tickets/{}",
            enc(d["ticket"].as_str().unwrap())
        ))
        .await;
    assert_eq!(info["scene_str"], "login-1");
    assert!(info["scene_id"].is_null());
    let bad = sim
        .create_qr(
            &token,
            json!({"action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 0}}}),
        )
        .await;
    assert_eq!(bad["errcode"], 40097);
    let bad = sim
        .create_qr(&token, json!({"action_name": "QR_NOPE"}))
        .await;
    assert_eq!(bad["errcode"], 40052);
    let r = sim
        .http
        .post(sim.url(&format!("/cgi-bin/qrcode/create?access_token={token}")))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], 47001);
    let clamp = sim
        .create_qr(
            &token,
            json!({"expire_seconds": 99_999_999, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 1}}}),
        )
        .await;
    assert_eq!(clamp["expire_seconds"], 2_592_000);

    // Tickets with + / = show up, and round-trip through URL encoding.
    let mut special = Vec::new();
    for i in 1..=9 {
        let t = sim.qr_scene(i, 60).await;
        if t.contains(['+', '/', '=']) {
            special.push(t);
        }
    }
    assert!(special.len() >= 3, "{special:?}");
    assert!(special.iter().any(|t| t.contains('+')));
    for t in &special {
        let (s, info) = sim.get(&format!("/sim/tickets/{}", enc(t))).await;
        assert_eq!(s, 200);
        assert_eq!(info["ticket"], t.as_str());
        let r = sim
            .http
            .get(sim.url(&format!("/cgi-bin/showqrcode?ticket={}", enc(t))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/svg+xml");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let svg = r.text().await.unwrap();
        assert!(svg.contains("<svg") && svg.contains("<path"));
    }
    // The same ticket not URL-encoded: '+' decodes as a space, so WeChat
    // (and the simulator) cannot find it.
    let with_plus = special.iter().find(|t| t.contains('+')).unwrap();
    let r = sim
        .http
        .get(sim.url(&format!("/cgi-bin/showqrcode?ticket={with_plus}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = sim
        .http
        .get(sim.url("/cgi-bin/showqrcode?ticket=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(sim.get("/sim/tickets/nope").await.0, 404);

    // Expiry is honoured.
    let short = sim.qr_scene(77, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = sim
        .http
        .get(sim.url(&format!("/cgi-bin/showqrcode?ticket={}", enc(&short))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, v) = sim.scan(json!({"ticket": short})).await;
    assert_eq!(s, 410);
    assert_eq!(v["error"], "ticket_expired");
    let (_, info) = sim.get(&format!("/sim/tickets/{}", enc(&short))).await;
    assert_eq!(info["expired"], true);
    assert_eq!(info["expires_in"], 0);
}

// ---- the phone ---------------------------------------------------------------

#[tokio::test]
async fn scan_delivers_a_signed_event() {
    let cb = Callback::start(Behaviour::default()).await;
    let sim = Sim::start(&["--callback-url", &cb.url, "--account", "gh_test"]).await;
    let ticket = sim.qr_scene(4242, 120).await;

    // A user who does not follow yet: subscribe, qrscene_ prefix. The body
    // comes as text/plain, as the demo page sends it.
    let r = sim
        .http
        .post(sim.url("/sim/scan"))
        .header("content-type", "text/plain")
        .body(
            json!({"ticket": ticket, "openid": "oAlice0000000000000000000001", "subscribed": false, "nickname": "Alice"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reply"], "Hello oAlice0000000000000000000001");
    assert_eq!(v["status"], 200);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["event"], "subscribe");
    assert_eq!(v["scene"], 4242);
    assert!(v["raw"].as_str().unwrap().contains("<Content>"));

    let got = cb.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].q("openid"), "oAlice0000000000000000000001");
    let now = state_now();
    let ts: i64 = got[0].q("timestamp").parse().unwrap();
    assert!((now - ts).abs() < 30);
    let (msg, encrypted) = decode(&got[0]);
    assert!(!encrypted);
    assert_eq!(msg.to_user, "gh_test");
    assert_eq!(msg.from_user, "oAlice0000000000000000000001");
    assert!((now - msg.create_time).abs() < 30);
    assert_eq!(
        msg.kind,
        MessageKind::Event(Event::Subscribe {
            event_key: Some("qrscene_4242".into()),
            ticket: Some(ticket.clone()),
        })
    );
    let scan = msg.qr_scan().unwrap();
    assert_eq!(scan.scene, 4242);

    // The same user again (the sim remembers the follow): SCAN, no prefix.
    let (s, v) = sim
        .scan(json!({"ticket": ticket, "openid": "oAlice0000000000000000000001"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["event"], "SCAN");
    let got = cb.received();
    let (msg, _) = decode(&got[1]);
    assert_eq!(
        msg.kind,
        MessageKind::Event(Event::Scan {
            event_key: "4242".into(),
            ticket: Some(ticket.clone()),
        })
    );
    // subscribed:true for a new user is a SCAN too.
    let (_, v) = sim
        .scan(json!({"ticket": ticket, "subscribed": true}))
        .await;
    assert_eq!(v["event"], "SCAN");
    let random_openid = v["openid"].as_str().unwrap().to_string();
    assert!(random_openid.starts_with('o') && random_openid.len() == 28);

    // user/info: the nickname given at scan time; none otherwise.
    let token = sim.token().await;
    let (_, alice) = sim
        .get(&format!(
            "/cgi-bin/user/info?access_token={token}&openid=oAlice0000000000000000000001&lang=zh_CN"
        ))
        .await;
    assert_eq!(alice["subscribe"], 1);
    assert_eq!(alice["nickname"], "Alice");
    assert_eq!(alice["qr_scene"], 4242);
    assert_eq!(alice["subscribe_scene"], "ADD_SCENE_QR_CODE");
    let (_, anon) = sim
        .get(&format!(
            "/cgi-bin/user/info?access_token={token}&openid={random_openid}&lang=zh_CN"
        ))
        .await;
    assert_eq!(anon["openid"], random_openid.as_str());
    assert!(anon.get("nickname").is_none() && anon.get("headimgurl").is_none());
    let (_, unknown) = sim
        .get(&format!(
            "/cgi-bin/user/info?access_token={token}&openid=oNobody&lang=zh_CN"
        ))
        .await;
    assert_eq!(unknown["errcode"], 40003);

    // Unknown ticket.
    let (s, v) = sim.scan(json!({"ticket": "gQnope"})).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"], "unknown_ticket");

    // String scenes carry the string in EventKey.
    let d = sim
        .create_qr(
            &token,
            json!({"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "abc"}}}),
        )
        .await;
    let (s, v) = sim
        .scan(json!({"ticket": d["ticket"], "subscribed": false}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["event_key"], "qrscene_abc");
    let (_, stats) = sim.get("/sim/stats").await;
    assert_eq!(stats["callbacks_delivered"], 4);
    assert_eq!(stats["callback_attempts"], 4);
}

fn state_now() -> i64 {
    wechat_sim::state::unix_now()
}

#[tokio::test]
async fn safe_mode_delivery_is_encrypted() {
    let cb = Callback::start(Behaviour::default()).await;
    let sim = Sim::start(&["--callback-url", &cb.url, "--encoding-aes-key", AES_KEY]).await;
    let ticket = sim.qr_scene(99, 120).await;
    let (s, v) = sim
        .scan(json!({"ticket": ticket, "openid": "oSafe", "subscribed": true}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reply"], "Hello oSafe", "decrypted reply");
    assert_eq!(v["encrypted"], true);
    assert!(v["raw"].as_str().unwrap().contains("<Encrypt>"));
    let got = cb.received();
    assert_eq!(got[0].q("encrypt_type"), "aes");
    assert!(!got[0].q("msg_signature").is_empty());
    let body = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(
        !body.contains("oSafe"),
        "the event is not readable in transit"
    );
    let (msg, encrypted) = decode(&got[0]);
    assert!(encrypted);
    assert_eq!(msg.from_user, "oSafe");
    assert_eq!(
        msg.qr_scan().map(|s| (s.scene, s.ticket)),
        Some((99, Some(ticket)))
    );
}

#[tokio::test]
async fn callback_failures_and_retries() {
    // The first attempt is never answered, so only the simulator's timeout
    // can end it (no race between a slow answer and the timer): WeChat
    // retries with the same request, so the second attempt, answered at
    // once, has the same body and CreateTime. The timeout only bounds how
    // long an immediate answer may take on a loaded box.
    const TIMEOUT_MS: u64 = 2000;
    let cb = Callback::start(Behaviour {
        hang_first: true,
        ..Behaviour::default()
    })
    .await;
    let sim = Sim::start(&[
        "--callback-url",
        &cb.url,
        "--callback-timeout-ms",
        &TIMEOUT_MS.to_string(),
    ])
    .await;
    let ticket = sim.qr_scene(7, 120).await;
    let scan_started = Instant::now();
    let (s, v) = sim
        .scan(json!({"ticket": ticket, "openid": "oRetry"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["reply"], "Hello oRetry");
    let got = cb.received();
    assert_eq!(got.len(), 2);
    // The retry came while the first request was still unanswered: it was
    // the timeout, not an answer, that ended the first attempt.
    assert_eq!(cb.answered(), 1, "only the retry was answered");
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].query, got[1].query);
    // The retry waited for the whole timeout of the first attempt. A lower
    // bound that load cannot break: the scan began before the first
    // attempt's timer started, and the retry is recorded after it fired
    // (tokio timers never fire early; both instants are this process's).
    assert!(
        got[1].at.duration_since(scan_started) >= Duration::from_millis(TIMEOUT_MS),
        "retried {:?} after the scan began, before the {TIMEOUT_MS} ms timeout",
        got[1].at.duration_since(scan_started)
    );
    let (_, stats) = sim.get("/sim/stats").await;
    assert_eq!(stats["callback_attempts"], 2);
    assert_eq!(stats["callbacks_delivered"], 1);
    assert_eq!(stats["callbacks_failed"], 0);
    let (a, _) = decode(&got[0]);
    let (b, _) = decode(&got[1]);
    assert_eq!(a.create_time, b.create_time);
    assert_eq!(a.dedupe_key(), b.dedupe_key());

    // "success": no reply text.
    let ok = Callback::start(Behaviour {
        success: true,
        ..Behaviour::default()
    })
    .await;
    let sim2 = Sim::start(&["--callback-url", &ok.url]).await;
    let t = sim2.qr_scene(8, 120).await;
    let (s, v) = sim2.scan(json!({"ticket": t})).await;
    assert_eq!((s, v["reply"].as_str()), (200, Some("")));
    assert_eq!(v["raw"], "success");

    // A 403 is not retried; 5xx is, up to 3 more times.
    let forbidden = Callback::start(Behaviour {
        status: Some(403),
        ..Behaviour::default()
    })
    .await;
    let sim3 = Sim::start(&["--callback-url", &forbidden.url]).await;
    let t = sim3.qr_scene(9, 120).await;
    let (s, v) = sim3.scan(json!({"ticket": t})).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "callback_status");
    assert_eq!(v["status"], 403);
    assert_eq!(v["attempts"], 1);
    let broken = Callback::start(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    })
    .await;
    let sim4 = Sim::start(&["--callback-url", &broken.url]).await;
    let t = sim4.qr_scene(10, 120).await;
    let (s, v) = sim4.scan(json!({"ticket": t})).await;
    assert_eq!(s, 502);
    assert_eq!(v["attempts"], 4);
    assert_eq!(broken.received().len(), 4);

    // Nobody listening.
    let sim5 = Sim::start(&[
        "--callback-url",
        &format!("http://127.0.0.1:{}/wechat", free_port()),
        "--callback-retries",
        "1",
    ])
    .await;
    let t = sim5.qr_scene(11, 120).await;
    let (s, v) = sim5.scan(json!({"ticket": t})).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "callback_unreachable");
    assert_eq!(v["attempts"], 2);
}

// ---- fault injection ---------------------------------------------------------

#[tokio::test]
async fn fault_injection() {
    let sim = Sim::start(&[]).await;
    let token = sim.token().await;
    let qr = json!({"action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 1}}});
    let (s, view) = sim
        .post(
            "/sim/faults",
            json!({"fail_next": 2, "errcode": 45009, "path": "/cgi-bin/qrcode/create"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(view["fail_next"], 2);
    // Other paths are not affected.
    assert!(sim.stable_token(false).await["access_token"].is_string());
    assert_eq!(sim.create_qr(&token, qr.clone()).await["errcode"], 45009);
    assert_eq!(sim.create_qr(&token, qr.clone()).await["errcode"], 45009);
    assert!(sim.create_qr(&token, qr.clone()).await["ticket"].is_string());

    // Any path, default errcode -1.
    sim.post("/sim/faults", json!({"fail_next": 1, "path": ""}))
        .await;
    assert_eq!(sim.stable_token(false).await["errcode"], -1);
    assert!(sim.stable_token(false).await["access_token"].is_string());

    // Latency on every API call until reset. A lower bound load cannot
    // break: the simulator sleeps (tokio timers never fire early) before
    // answering, and this clock started before the request was sent.
    let (_, view) = sim.post("/sim/faults", json!({"latency_ms": 300})).await;
    assert_eq!(view["latency_ms"], 300);
    let started = Instant::now();
    assert!(sim.stable_token(false).await["access_token"].is_string());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Whether a reset removes it is checked with a margin no load can eat:
    // an hour of latency versus a client that gives up after a second,
    // then (after the reset) the same call answered within a minute.
    let (_, view) = sim
        .post("/sim/faults", json!({"latency_ms": 3_600_000}))
        .await;
    assert_eq!(view["latency_ms"], 3_600_000);
    let delayed = sim
        .http
        .post(sim.url("/cgi-bin/stable_token"))
        .json(&json!({"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(
        delayed.as_ref().is_err_and(reqwest::Error::is_timeout),
        "answered despite an hour of latency: {delayed:?}"
    );
    let (s, view) = {
        let r = sim
            .http
            .delete(sim.url("/sim/faults"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(view["latency_ms"], 0);
    let r = sim
        .http
        .post(sim.url("/cgi-bin/stable_token"))
        .json(&json!({"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the latency is gone after a reset");
    assert!(r.json::<Value>().await.unwrap()["access_token"].is_string());

    let (s, v) = sim.post("/sim/faults", json!({"fail_nxt": 1})).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_json")));

    let (_, stats) = sim.get("/sim/stats").await;
    assert_eq!(stats["faults_injected"], 3);
    assert_eq!(stats["api_calls"]["/cgi-bin/qrcode/create"], 3);
    assert_eq!(stats["tickets_created"], 1);
}

#[tokio::test]
async fn cors_and_health() {
    let sim = Sim::start(&[]).await;
    let r = sim
        .http
        .request(reqwest::Method::OPTIONS, sim.url("/sim/scan"))
        .header("origin", "http://127.0.0.1:1099")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let r = sim.http.get(sim.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let m = e2e::http::get_text(&sim.http, &sim.url("/metrics")).await;
    assert!(m.contains("wechat_sim_api_calls_total"));
}

// ---- the scan subcommand -----------------------------------------------------

#[tokio::test]
async fn scan_subcommand() {
    let cb = Callback::start(Behaviour::default()).await;
    let sim = Sim::start(&["--callback-url", &cb.url]).await;
    let ticket = sim.qr_scene(31337, 120).await;
    let bin = std::path::Path::new(BIN);
    let (status, stdout, stderr) = e2e::process::run_to_end_async(
        bin,
        &[
            "scan",
            "--ticket",
            &ticket,
            "--openid",
            "oCli",
            "--nickname",
            "Carol",
            "--sim",
            &sim.base,
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "Hello oCli");
    let (msg, _) = decode(&cb.received()[0]);
    assert_eq!(msg.qr_scan().map(|s| s.scene), Some(31337));

    let (status, _, stderr) = e2e::process::run_to_end_async(
        bin,
        &["scan", "--ticket", "gQunknown", "--sim", &sim.base],
        &[],
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("unknown_ticket"));
}
