//! Test helpers: a fake WeChat API, the real `ws-gateway` binary as a child
//! process, and WebSocket / bus / HTTP clients over real sockets. Every
//! wait is bounded.

// Helpers panic on purpose: a failed step fails the test that called it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemon_kit::http::json;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// The access token the fake hands out unless told otherwise.
pub const FAKE_ACCESS_TOKEN: &str = "fake-access-token";

/// The bound on every single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The QR image base the tests configure.
pub const IMAGE_BASE: &str = "http://img.test/cgi-bin/showqrcode?ticket=";

// ---------------------------------------------------------------------------
// Fake WeChat API

/// A stand-in for `api.weixin.qq.com`: `stable_token` and `qrcode/create`,
/// tickets containing `+`, `/` and `=`, and switches to fail on demand
/// (with a WeChat errcode, or by dropping the connection) and to choose
/// the token and its `expires_in`.
pub struct FakeWeChat {
    pub base: String,
    state: Arc<FakeState>,
    stop: CancellationToken,
}

#[derive(Default)]
struct FakeState {
    /// `qrcode/create` answers this errcode while set.
    failing_with: Mutex<Option<i64>>,
    /// `qrcode/create` is read, then its connection is closed unanswered.
    create_drops: AtomicBool,
    access_token: Mutex<String>,
    expires_in: AtomicU64,
    counter: AtomicU64,
    creates: AtomicUsize,
    tickets: Mutex<HashMap<String, u32>>,
    appids: Mutex<Vec<String>>,
    secrets: Mutex<Vec<String>>,
}

impl FakeWeChat {
    pub async fn start() -> FakeWeChat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            access_token: Mutex::new(FAKE_ACCESS_TOKEN.to_string()),
            expires_in: AtomicU64::new(7200),
            ..FakeState::default()
        });
        let stop = CancellationToken::new();
        tokio::spawn(fake_serve(listener, Arc::clone(&state), stop.clone()));
        FakeWeChat {
            base: format!("http://{addr}"),
            state,
            stop,
        }
    }

    /// `qrcode/create` fails with WeChat's "system error" (-1, worth
    /// retrying) while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.set_failing_with(failing.then_some(-1));
    }

    /// `qrcode/create` fails with `errcode` while it is `Some`.
    pub fn set_failing_with(&self, errcode: Option<i64>) {
        *self.state.failing_with.lock().unwrap() = errcode;
    }

    /// While on, every `qrcode/create` request is read (and counted) and
    /// then its connection is closed without an answer: a transport error
    /// for the gateway, not a WeChat errcode.
    pub fn set_create_drops_connection(&self, drops: bool) {
        self.state.create_drops.store(drops, Ordering::SeqCst);
    }

    /// The access token `stable_token` hands out.
    pub fn set_access_token(&self, token: &str) {
        *self.state.access_token.lock().unwrap() = token.to_string();
    }

    /// The `expires_in` `stable_token` answers with.
    pub fn set_token_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// How many `stable_token` calls arrived.
    pub fn token_fetches(&self) -> usize {
        self.state.appids.lock().unwrap().len()
    }

    /// The scene (fd) a ticket was minted for.
    pub fn fd_of(&self, ticket: &str) -> u32 {
        *self
            .state
            .tickets
            .lock()
            .unwrap()
            .get(ticket)
            .unwrap_or_else(|| panic!("unknown ticket {ticket}"))
    }

    /// How many `qrcode/create` calls arrived (failed ones included).
    pub fn creates(&self) -> usize {
        self.state.creates.load(Ordering::SeqCst)
    }

    pub fn appids(&self) -> Vec<String> {
        self.state.appids.lock().unwrap().clone()
    }

    pub fn secrets(&self) -> Vec<String> {
        self.state.secrets.lock().unwrap().clone()
    }
}

impl Drop for FakeWeChat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The fake's accept loop: HTTP/1.1, one task per connection. Unlike
/// `daemon_kit::http::serve` it can close a connection without answering
/// (the service's error does that), for [`FakeWeChat::set_create_drops_connection`].
async fn fake_serve(
    listener: tokio::net::TcpListener,
    state: Arc<FakeState>,
    stop: CancellationToken,
) {
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
                async move { fake_answer(&state, req).await }
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

async fn fake_answer(
    state: &FakeState,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<daemon_kit::http::Response, std::io::Error> {
    let path = req.uri().path().to_string();
    let body: Bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match path.as_str() {
        "/cgi-bin/stable_token" => {
            state
                .appids
                .lock()
                .unwrap()
                .push(body["appid"].as_str().unwrap_or("").to_string());
            state
                .secrets
                .lock()
                .unwrap()
                .push(body["secret"].as_str().unwrap_or("").to_string());
            let token = state.access_token.lock().unwrap().clone();
            let expires_in = state.expires_in.load(Ordering::SeqCst);
            Ok(json(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": expires_in}).to_string(),
            ))
        }
        "/cgi-bin/qrcode/create" => {
            state.creates.fetch_add(1, Ordering::SeqCst);
            if state.create_drops.load(Ordering::SeqCst) {
                return Err(std::io::Error::other(
                    "fake: qrcode/create connection dropped",
                ));
            }
            if let Some(errcode) = state.failing_with.lock().unwrap().as_ref() {
                return Ok(json(
                    StatusCode::OK,
                    json!({"errcode": errcode, "errmsg": "fake failure"}).to_string(),
                ));
            }
            let scene = body["action_info"]["scene"]["scene_id"]
                .as_u64()
                .unwrap_or(0) as u32;
            let expire = body["expire_seconds"].as_u64().unwrap_or(0);
            let n = state.counter.fetch_add(1, Ordering::SeqCst);
            let ticket = format!("gQ+{n}/{scene}==");
            state.tickets.lock().unwrap().insert(ticket.clone(), scene);
            Ok(json(
                StatusCode::OK,
                json!({
                    "ticket": ticket,
                    "expire_seconds": expire,
                    "url": format!("http://weixin.qq.com/q/fake{n}"),
                })
                .to_string(),
            ))
        }
        _ => Ok(json(
            StatusCode::NOT_FOUND,
            json!({"errcode": 404, "errmsg": "no such api"}).to_string(),
        )),
    }
}

// ---------------------------------------------------------------------------
// The gateway process

/// A running `ws-gateway` child process (started through the test kit's
/// launcher, `e2e::Daemon`, on port 0: the addresses come from its log).
pub struct Gw {
    daemon: e2e::Daemon,
    pub http: SocketAddr,
    pub notify: SocketAddr,
}

/// Arguments every test gateway gets before its own.
pub fn base_args(fake: &FakeWeChat) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--notify-listen",
        "127.0.0.1:0",
        "--app-id",
        "wxtestapp",
        "--app-secret",
        "test-app-secret",
        "--wechat-api-base",
        &fake.base,
        "--qrcode-image-base",
        IMAGE_BASE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn command(args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-gateway"));
    cmd.args(args)
        .env_clear()
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Gw {
    /// Starts the gateway with [`base_args`] plus `extra`.
    pub async fn start(fake: &FakeWeChat, extra: &[&str]) -> Gw {
        Gw::start_with(fake, extra, &[]).await
    }

    pub async fn start_with(fake: &FakeWeChat, extra: &[&str], env: &[(&str, &str)]) -> Gw {
        let mut args = base_args(fake);
        args.extend(extra.iter().map(|s| s.to_string()));
        Gw::spawn(command(&args, env)).await
    }

    /// Spawns the command and waits (bounded) for its `listening` line.
    pub async fn spawn(cmd: Command) -> Gw {
        let mut daemon = e2e::Daemon::try_spawn_command(cmd).expect("spawn ws-gateway");
        let (http, notify) = daemon
            .wait_for_log(WAIT, |log| log.lines().find_map(parse_listening))
            .await;
        Gw {
            daemon,
            http,
            notify,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn stderr(&self) -> String {
        self.daemon.stderr()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.http, path)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.daemon.signal("TERM");
    }

    /// Sends a signal by name (`INT`, `KILL`, …).
    pub fn signal(&self, sig: &str) {
        self.daemon.signal(sig);
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.daemon.exited(within).await
    }
}

/// `... listening http=A notify=B` → (A, B).
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("http=")?, field("notify=")?))
}

/// Runs the binary to completion (for `--help`, `--check-config`).
pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = command(&args, env).output().expect("run ws-gateway");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `args`, waiting (bounded) for it to exit; one
/// still running after `within` is killed. (exit status if it exited by
/// itself, stdout, stderr).
pub async fn run_bounded(
    args: &[String],
    env: &[(&str, &str)],
    within: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut child = command(args, env).spawn().expect("spawn ws-gateway");
    let deadline = Instant::now() + within;
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The process is gone: reading its pipes to EOF cannot block.
    let out = child.wait_with_output().expect("collect ws-gateway output");
    (
        exited,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Browser side

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket with extra request headers.
pub async fn ws_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let authority = req.uri().authority().unwrap().as_str().to_string();
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(authority))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("WebSocket handshake timed out")?;
    Ok(ws)
}

/// A WebSocket upgrade on `/ws` with extra request headers: the socket,
/// or the HTTP status the gateway refused it with.
pub async fn try_upgrade(gw: &Gw, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    match ws_connect_with(&gw.ws_url("/ws"), headers).await {
        Ok(ws) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade with {headers:?} failed without an HTTP answer: {e}"),
    }
}

/// The upgrade is accepted and the browser gets its first code.
pub async fn expect_upgrade(gw: &Gw, headers: &[(&str, &str)]) -> Ws {
    match try_upgrade(gw, headers).await {
        Ok(mut ws) => {
            expect_frame(&mut ws, "qrcode_url").await;
            ws
        }
        Err(status) => panic!("upgrade with {headers:?} refused with HTTP {status}"),
    }
}

/// The upgrade is refused with `status`.
pub async fn expect_refused(gw: &Gw, headers: &[(&str, &str)], status: u16) {
    match try_upgrade(gw, headers).await {
        Ok(_) => panic!("upgrade with {headers:?} accepted; expected HTTP {status}"),
        Err(got) => assert_eq!(got, status, "upgrade with {headers:?}"),
    }
}

pub async fn ws_connect(gw: &Gw) -> Ws {
    ws_connect_with(&gw.ws_url("/ws"), &[])
        .await
        .expect("WebSocket connect")
}

/// The next JSON text frame (pings and pongs skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame in time")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The next frame, which must be of `message_type`.
pub async fn expect_frame(ws: &mut Ws, message_type: &str) -> Value {
    let v = next_json(ws).await;
    assert_eq!(v["message_type"], message_type, "{v}");
    v
}

/// The next frame must be an `error` frame with `code`.
pub async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = expect_frame(ws, "error").await;
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].is_string(), "{v}");
    v
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send");
}

/// Sends `{"cmd":"ping"}` and checks the very next frame is `pong` (so
/// nothing else was queued for this browser before it).
pub async fn expect_nothing_pending(ws: &mut Ws) {
    send_text(ws, r#"{"cmd":"ping"}"#).await;
    expect_frame(ws, "pong").await;
}

/// A browser connection with its first code.
pub struct Browser {
    pub ws: Ws,
    pub code: Value,
    pub ticket: String,
    pub fd: u32,
}

impl Browser {
    pub async fn open(gw: &Gw, fake: &FakeWeChat) -> Browser {
        let mut ws = ws_connect(gw).await;
        let code = expect_frame(&mut ws, "qrcode_url").await;
        let ticket = ticket_of(&code);
        let fd = fake.fd_of(&ticket);
        Browser {
            ws,
            code,
            ticket,
            fd,
        }
    }
}

/// The ticket inside a `qrcode_url` frame's `url`.
pub fn ticket_of(code: &Value) -> String {
    let url = code["url"].as_str().expect("url");
    let encoded = url
        .strip_prefix(IMAGE_BASE)
        .expect("url starts with the image base");
    percent_decode(encoded)
}

pub use e2e::wechat::{percent_decode, percent_encode};

// ---------------------------------------------------------------------------
// Bus side

/// One notify-bus connection.
pub struct Bus {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Bus {
    pub async fn connect(gw: &Gw) -> Bus {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(gw.notify))
            .await
            .expect("bus connect timed out")
            .expect("bus connect");
        let (r, w) = stream.into_split();
        Bus {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.writer.write_all(bytes))
            .await
            .expect("bus write timed out")
            .expect("bus write");
    }

    /// The next answer line (without newline); `None` at EOF.
    pub async fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("bus answer timed out")
            .expect("bus read");
        if n == 0 {
            return None;
        }
        Some(line.trim_end_matches('\n').to_string())
    }

    /// Sends one line and returns its answer.
    pub async fn ask(&mut self, line: &str) -> String {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write(&bytes).await;
        self.read_line().await.expect("an answer, not EOF")
    }

    /// Half-closes (no more lines from us).
    pub async fn finish(&mut self) {
        self.writer.shutdown().await.expect("shutdown");
    }

    /// Reads to EOF; every remaining answer line.
    pub async fn read_to_end(&mut self) -> Vec<String> {
        let mut rest = String::new();
        tokio::time::timeout(WAIT, self.reader.read_to_string(&mut rest))
            .await
            .expect("bus EOF timed out")
            .expect("bus read");
        rest.lines().map(str::to_string).collect()
    }
}

/// The answer line for an error code.
pub fn err(code: &str) -> String {
    format!(r#"{{"ok":false,"error":"{code}"}}"#)
}

pub const OK: &str = r#"{"ok":true}"#;

/// A scan request line.
pub fn scan(fd: u32, nickname: &str, ticket: Option<&str>, secret: Option<&str>) -> String {
    let mut v = json!({"type": "scan", "fd": fd, "nickname": nickname});
    if let Some(t) = ticket {
        v["ticket"] = t.into();
    }
    if let Some(s) = secret {
        v["secret"] = s.into();
    }
    v.to_string()
}

// ---------------------------------------------------------------------------
// Plain HTTP

pub struct HttpAnswer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpAnswer {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("HTTP answer timed out")
        .expect("HTTP read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpAnswer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// The gateway's `/metrics` text.
pub async fn metrics(gw: &Gw) -> String {
    let answer = http(gw.http, "GET", "/metrics").await;
    assert_eq!(answer.status, 200, "GET /metrics");
    answer.body
}

pub use e2e::http::metric;

/// Waits (bounded) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The gateway's metric `name` (labels included) has the value `want`.
pub async fn expect_metric(gw: &Gw, name: &str, want: f64) {
    let m = metrics(gw).await;
    assert_eq!(metric(&m, name), Some(want), "{name} in\n{m}");
}
