//! The gateway's test support: the real `ws-gateway` binary, started
//! through the test kit's launcher on port 0 against the kit's fake WeChat
//! API, and the few helpers that need a running gateway. The clients
//! (browser, bus, HTTP) and the fake are the kit's (`e2e`), re-exported
//! here. Every wait is bounded.

// Helpers panic on purpose: a failed step fails the test that called it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use e2e::WAIT;
pub use e2e::browser::{
    Browser, Ws, connect as ws_connect_with, expect_error, expect_frame, expect_nothing_pending,
    next_json, send_text, ticket_of,
};
pub use e2e::bus::{Bus, OK, err, scan};
pub use e2e::fake_api::FakeApi;
pub use e2e::http::{metric, request as http};
pub use e2e::wechat::percent_encode;

/// The QR image base the tests configure.
pub const IMAGE_BASE: &str = "http://img.test/cgi-bin/showqrcode?ticket=";

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
pub fn base_args(fake: &FakeApi) -> Vec<String> {
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
    pub async fn start(fake: &FakeApi, extra: &[&str]) -> Gw {
        Gw::start_with(fake, extra, &[]).await
    }

    pub async fn start_with(fake: &FakeApi, extra: &[&str], env: &[(&str, &str)]) -> Gw {
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
// Pages and upgrades

/// A page of the gateway under test: the kit's [`Browser`] with its first
/// code, and the fd the fake API saw that code minted for.
pub struct Page {
    pub browser: Browser,
    pub fd: u32,
}

impl Page {
    pub async fn open(gw: &Gw, fake: &FakeApi) -> Page {
        let browser = Browser::open(&gw.ws_url("/ws"), &[]).await;
        let fd = fake.fd_of(&browser.ticket);
        Page { browser, fd }
    }
}

impl Deref for Page {
    type Target = Browser;
    fn deref(&self) -> &Browser {
        &self.browser
    }
}

impl DerefMut for Page {
    fn deref_mut(&mut self) -> &mut Browser {
        &mut self.browser
    }
}

/// A WebSocket upgrade on `/ws` with extra request headers: the socket,
/// or the HTTP status the gateway refused it with.
pub async fn try_upgrade(gw: &Gw, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    match ws_connect_with(&gw.ws_url("/ws"), headers).await {
        Ok(ws) => Ok(ws),
        Err(e2e::browser::WsError::Http(resp)) => Err(resp.status().as_u16()),
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

/// The gateway's `/metrics` text.
pub async fn metrics(gw: &Gw) -> String {
    let answer = http(gw.http, "GET", "/metrics").await;
    assert_eq!(answer.status, 200, "GET /metrics");
    answer.body
}

/// The gateway's metric `name` (labels included) has the value `want`.
pub async fn expect_metric(gw: &Gw, name: &str, want: f64) {
    let m = metrics(gw).await;
    assert_eq!(metric(&m, name), Some(want), "{name} in\n{m}");
}
