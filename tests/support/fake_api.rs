//! The one fake of the WeChat API (`api.weixin.qq.com`) on a real socket,
//! for the daemons' integration tests: `stable_token` (the token and its
//! `expires_in` chosen by the test; each call's AppID and AppSecret
//! recorded), `qrcode/create` (tickets with `+`, `/` and `=`, each
//! remembered with its scene), `user/info` (nicknames only where set, as
//! WeChat since 2021). Faults on demand: the next call to a path fails with
//! an errcode, `qrcode/create` fails while set or drops its connection
//! unanswered, every call but `stable_token` is delayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use daemon_kit::http::json;
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The access token `stable_token` hands out unless told otherwise.
pub const FAKE_ACCESS_TOKEN: &str = "fake-access-token";

#[derive(Default)]
struct State {
    access_token: String,
    expires_in: u64,
    nicknames: HashMap<String, String>,
    /// Added to every call but `stable_token`.
    latency: Duration,
    /// (path, errcode): the next call to path answers errcode.
    fail_next: Vec<(String, i64)>,
    /// `qrcode/create` answers this errcode while set.
    create_failing_with: Option<i64>,
    /// `qrcode/create` is read, then its connection closed unanswered.
    create_drops: bool,
    calls: HashMap<String, usize>,
    appids: Vec<String>,
    secrets: Vec<String>,
    /// Ticket → the scene it was minted for.
    tickets: HashMap<String, u32>,
    minted: u64,
}

/// The fake API; stops (and closes its connections) when dropped.
pub struct FakeApi {
    /// `http://127.0.0.1:<port>`, for `--wechat-api-base`.
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            access_token: FAKE_ACCESS_TOKEN.to_string(),
            expires_in: 7200,
            ..State::default()
        }));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::clone(&state), stop.clone()));
        FakeApi { base, state, stop }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// `user/info` returns this nickname for `openid`.
    pub fn set_nickname(&self, openid: &str, nickname: &str) {
        self.with(|s| s.nicknames.insert(openid.into(), nickname.into()));
    }

    /// Delay added to every call but `stable_token`.
    pub fn set_latency(&self, d: Duration) {
        self.with(|s| s.latency = d);
    }

    /// The next call to `path` answers `errcode`.
    pub fn fail_next(&self, path: &str, errcode: i64) {
        self.with(|s| s.fail_next.push((path.into(), errcode)));
    }

    /// `qrcode/create` fails with WeChat's "system error" (-1, worth
    /// retrying) while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.set_failing_with(failing.then_some(-1));
    }

    /// `qrcode/create` fails with `errcode` while it is `Some`.
    pub fn set_failing_with(&self, errcode: Option<i64>) {
        self.with(|s| s.create_failing_with = errcode);
    }

    /// While on, every `qrcode/create` request is read (and counted) and
    /// then its connection is closed without an answer: a transport error
    /// for the caller, not a WeChat errcode.
    pub fn set_create_drops_connection(&self, drops: bool) {
        self.with(|s| s.create_drops = drops);
    }

    /// The access token `stable_token` hands out.
    pub fn set_access_token(&self, token: &str) {
        self.with(|s| s.access_token = token.to_string());
    }

    /// The `expires_in` `stable_token` answers with.
    pub fn set_token_expires_in(&self, secs: u64) {
        self.with(|s| s.expires_in = secs);
    }

    /// Calls made to `path` (failed ones included).
    pub fn calls(&self, path: &str) -> usize {
        self.with(|s| s.calls.get(path).copied().unwrap_or(0))
    }

    /// How many `stable_token` calls arrived.
    pub fn token_fetches(&self) -> usize {
        self.calls("/cgi-bin/stable_token")
    }

    /// How many `qrcode/create` calls arrived (failed ones included).
    pub fn creates(&self) -> usize {
        self.calls("/cgi-bin/qrcode/create")
    }

    /// The AppID each `stable_token` call carried, in order.
    pub fn appids(&self) -> Vec<String> {
        self.with(|s| s.appids.clone())
    }

    /// The AppSecret each `stable_token` call carried, in order.
    pub fn secrets(&self) -> Vec<String> {
        self.with(|s| s.secrets.clone())
    }

    /// The scene (fd) a ticket was minted for.
    pub fn fd_of(&self, ticket: &str) -> u32 {
        self.with(|s| s.tickets.get(ticket).copied())
            .unwrap_or_else(|| panic!("unknown ticket {ticket}"))
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The accept loop: HTTP/1.1, one task per connection. Unlike
/// `daemon_kit::http::serve` it can close a connection without answering
/// (the service's error does that), for
/// [`FakeApi::set_create_drops_connection`].
async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { answer(&state, req).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// What the fake does with one call after the latency: answer this body,
/// or drop the connection.
enum Outcome {
    Answer(StatusCode, Value),
    Drop,
}

async fn answer(
    state: &Mutex<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<daemon_kit::http::Response, std::io::Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body: Bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (latency, outcome) = {
        let mut s = state.lock().unwrap();
        *s.calls.entry(path.clone()).or_default() += 1;
        let latency = if path == "/cgi-bin/stable_token" {
            Duration::ZERO
        } else {
            s.latency
        };
        (latency, outcome(&mut s, &path, &query, &body))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match outcome {
        Outcome::Answer(status, v) => Ok(json(status, v.to_string())),
        Outcome::Drop => Err(std::io::Error::other("fake: connection dropped")),
    }
}

fn outcome(s: &mut State, path: &str, query: &str, body: &Value) -> Outcome {
    let injected = |code: i64| {
        Outcome::Answer(
            StatusCode::OK,
            json!({"errcode": code, "errmsg": "injected"}),
        )
    };
    if path == "/cgi-bin/stable_token" {
        s.appids
            .push(body["appid"].as_str().unwrap_or("").to_string());
        s.secrets
            .push(body["secret"].as_str().unwrap_or("").to_string());
    }
    if let Some(i) = s.fail_next.iter().position(|(p, _)| p == path) {
        return injected(s.fail_next.remove(i).1);
    }
    match path {
        "/cgi-bin/stable_token" => Outcome::Answer(
            StatusCode::OK,
            json!({"access_token": s.access_token, "expires_in": s.expires_in}),
        ),
        "/cgi-bin/qrcode/create" => {
            if s.create_drops {
                return Outcome::Drop;
            }
            if let Some(code) = s.create_failing_with {
                return injected(code);
            }
            let scene = body["action_info"]["scene"]["scene_id"]
                .as_u64()
                .unwrap_or(0) as u32;
            let expire = body["expire_seconds"].as_u64().unwrap_or(60);
            s.minted += 1;
            let n = s.minted;
            let ticket = format!("gQ+{n}/{scene}==");
            s.tickets.insert(ticket.clone(), scene);
            Outcome::Answer(
                StatusCode::OK,
                json!({
                    "ticket": ticket,
                    "expire_seconds": expire,
                    "url": format!("http://weixin.qq.com/q/fake{n}"),
                }),
            )
        }
        "/cgi-bin/user/info" => {
            let openid = url_param(query, "openid");
            let mut v =
                json!({"subscribe": 1, "openid": openid, "language": "zh_CN", "remark": ""});
            if let Some(n) = s.nicknames.get(&openid) {
                v["nickname"] = Value::String(n.clone());
            }
            Outcome::Answer(StatusCode::OK, v)
        }
        _ => Outcome::Answer(
            StatusCode::NOT_FOUND,
            json!({"errcode": 40004, "errmsg": "no such api"}),
        ),
    }
}

fn url_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_default()
        .to_string()
}
