//! Starting the three daemons wired together.

use std::path::PathBuf;
use std::time::Duration;

use e2e::Daemon;
use e2e::process::temp_dir;
use e2e::wechat::percent_encode;
use serde_json::Value;

pub const TOKEN: &str = "e2e-token";
pub const APPID: &str = "wxe2e000000000001";
pub const SECRET: &str = "e2e-app-secret";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdef012";

/// Options for a stack.
#[derive(Clone, Default)]
pub struct Options {
    pub safe_mode: bool,
    pub qr_expire_seconds: Option<u32>,
    pub sim_callback_timeout_ms: Option<u64>,
    pub callback_extra: Vec<String>,
    pub gateway_extra: Vec<String>,
    /// Lift the gateway's per-address limits (code mints, connections):
    /// every test page comes from 127.0.0.1.
    pub many_pages: bool,
    /// The callback's `--db` (a fresh SQLite file when `None`).
    pub db_url: Option<String>,
}

/// The three daemons, wired together.
pub struct Stack {
    pub sim: Daemon,
    pub callback: Daemon,
    pub gateway: Option<Daemon>,
    pub sim_url: String,
    pub callback_url: String,
    pub gateway_port: u16,
    pub notify_port: u16,
    pub db: PathBuf,
    pub options: Options,
    pub http: reqwest::Client,
}

pub fn s(v: &str) -> String {
    v.to_string()
}

/// The scene (fd) the simulator at `sim_url` recorded for a ticket.
pub async fn fd_of(http: &reqwest::Client, sim_url: &str, ticket: &str) -> u32 {
    let url = format!("{sim_url}/sim/tickets/{}", percent_encode(ticket));
    let v = e2e::http::get_json(http, &url).await;
    let fd = v["scene_id"].as_u64().expect("scene_id");
    u32::try_from(fd).expect("a scene id is a u32")
}

/// Starts the simulator for the test account, listening on `listen`
/// (`host:port`) with `extra` flags, and waits until it is healthy.
pub async fn start_sim(listen: &str, extra: &[String]) -> Daemon {
    let mut args = vec![s("--listen"), s(listen), s("--app-id"), s(APPID)];
    args.extend([s("--app-secret"), s(SECRET), s("--token"), s(TOKEN)]);
    args.extend_from_slice(extra);
    let mut sim = Daemon::spawn(&e2e::bin_path("wechat-sim"), &args, &[]);
    sim.wait_healthy(&format!("http://{listen}/healthz")).await;
    sim
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        let (sim_port, cb_port) = (e2e::free_port(), e2e::free_port());
        let (gateway_port, notify_port) = (e2e::free_port(), e2e::free_port());
        let sim_url = format!("http://127.0.0.1:{sim_port}");
        let callback_url = format!("http://127.0.0.1:{cb_port}");
        let db = temp_dir("e2e").join("scan-login.db");

        let mut sim_args = vec![s("--callback-url"), format!("{callback_url}/wechat")];
        if options.safe_mode {
            sim_args.extend([s("--encoding-aes-key"), s(AES_KEY)]);
        }
        if let Some(ms) = options.sim_callback_timeout_ms {
            sim_args.extend([s("--callback-timeout-ms"), ms.to_string()]);
        }
        let sim = start_sim(&format!("127.0.0.1:{sim_port}"), &sim_args).await;

        let mut cb_args = vec![
            s("--listen"),
            format!("127.0.0.1:{cb_port}"),
            s("--app-id"),
            s(APPID),
            s("--wechat-api-base"),
            sim_url.clone(),
            s("--notify-addr"),
            format!("127.0.0.1:{notify_port}"),
            s("--db"),
            options
                .db_url
                .clone()
                .unwrap_or_else(|| db.display().to_string()),
        ];
        if options.safe_mode {
            cb_args.extend([s("--encoding-aes-key"), s(AES_KEY)]);
        }
        cb_args.extend(options.callback_extra.iter().cloned());
        // Secrets through the environment, as the contract allows.
        let env = [
            ("WECHAT_TOKEN", TOKEN),
            ("WECHAT_APP_SECRET", SECRET),
            ("LOGIN_TOKEN_SECRET", JWT_SECRET),
        ];
        let mut callback = Daemon::spawn(&e2e::bin_path("wechat-callback"), &cb_args, &env);
        callback
            .wait_healthy(&format!("{callback_url}/healthz"))
            .await;

        let mut stack = Stack {
            sim,
            callback,
            gateway: None,
            sim_url,
            callback_url,
            gateway_port,
            notify_port,
            db,
            options,
            http: reqwest::Client::new(),
        };
        stack.start_gateway().await;
        stack
    }

    /// (Re)starts the gateway on the stack's ports.
    pub async fn start_gateway(&mut self) {
        let mut args = vec![
            s("--listen"),
            format!("127.0.0.1:{}", self.gateway_port),
            s("--notify-listen"),
            format!("127.0.0.1:{}", self.notify_port),
            s("--app-id"),
            s(APPID),
            s("--wechat-api-base"),
            self.sim_url.clone(),
            s("--qrcode-image-base"),
            format!("{}/cgi-bin/showqrcode?ticket=", self.sim_url),
        ];
        if let Some(secs) = self.options.qr_expire_seconds {
            args.extend([s("--qr-expire-seconds"), secs.to_string()]);
        }
        args.extend(self.options.gateway_extra.iter().cloned());
        if self.options.many_pages {
            args.extend(["--qr-mint-rate", "0", "--max-connections-per-ip", "0"].map(s));
        }
        let mut gw = Daemon::spawn(
            &e2e::bin_path("ws-gateway"),
            &args,
            &[("WECHAT_APP_SECRET", SECRET)],
        );
        gw.wait_healthy(&format!("http://127.0.0.1:{}/healthz", self.gateway_port))
            .await;
        self.gateway = Some(gw);
    }

    /// Stops the gateway (SIGTERM) and checks it exits 0.
    pub fn stop_gateway(&mut self) {
        if let Some(mut gw) = self.gateway.take() {
            let status = gw.terminate();
            assert!(status.success(), "gateway exit {status}:\n{}", gw.stderr());
        }
    }

    /// Opens a browser connection and waits for its first QR code.
    pub async fn browser(&self) -> Browser {
        Browser::connect(self.gateway_port).await
    }

    /// The scene (fd) the simulator recorded for a ticket.
    pub async fn fd_of(&self, ticket: &str) -> u32 {
        fd_of(&self.http, &self.sim_url, ticket).await
    }

    /// The user sends a text message from the phone; returns the
    /// simulator's answer (`reply` is what WeChat shows).
    pub async fn message(&self, openid: &str, content: &str) -> Value {
        let body = serde_json::json!({"openid": openid, "content": content});
        sim_post(&self.http, &format!("{}/sim/message", self.sim_url), &body).await
    }

    /// The gateway's `/metrics` text.
    pub async fn gateway_metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.gateway_port);
        e2e::http::get_text(&self.http, &url).await
    }

    /// The callback's `/metrics` text.
    pub async fn callback_metrics(&self) -> String {
        e2e::http::get_text(&self.http, &format!("{}/metrics", self.callback_url)).await
    }

    /// The phone scans `ticket`; returns the simulator's answer.
    pub async fn scan(&self, ticket: &str, openid: &str, subscribed: bool) -> Value {
        let body =
            serde_json::json!({"ticket": ticket, "openid": openid, "subscribed": subscribed});
        sim_post(&self.http, &format!("{}/sim/scan", self.sim_url), &body).await
    }
}

/// POSTs `body` to a simulator endpoint (`/sim/scan`, `/sim/message`): its
/// JSON answer, with the HTTP status added as `http_status`.
pub async fn sim_post(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = http
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let mut v: Value = r.json().await.unwrap_or(Value::Null);
    if !v.is_object() {
        v = serde_json::json!({});
    }
    v["http_status"] = status.into();
    v
}

pub use e2e::browser::Browser;
