//! `ws-gateway` as a library: holds browsers' WebSockets, gives each a
//! random `fd`, mints a temporary WeChat QR code whose scene is that fd,
//! and pushes the scan results that `wechat-callback` reports on the NDJSON
//! notify bus. The binary (`main.rs`) only parses settings, binds and
//! calls [`run`]; a test can call [`run`] in-process on port 0 the same
//! way (most tests spawn the binary instead).
//!
//! Code map:
//! - [`config`]: flags / env / TOML and their validation;
//! - [`registry`]: fd → connection (sharded map, tickets, push queues,
//!   tombstones);
//! - `ws`: one task per browser connection (socket, pushes, timers, QR
//!   minting and refresh);
//! - [`qr`]: WeChat `qrcode/create` calls, the `qrcode_url` frame, backoff;
//! - [`bus`]: the notify bus listener (NDJSON, pipelined, half-close);
//! - [`delivery`]: whether a push reached its page (`ok` means written);
//! - [`ratelimit`]: `--qr-mint-rate` token buckets and
//!   `--max-connections-per-ip` counts per client IP;
//! - [`origin`]: which pages may open a WebSocket (`--allowed-origins`);
//! - [`page_info`]: each page's address and User-Agent for `scanned`;
//! - [`client_ip`]: the client address behind `--trusted-proxy`;
//! - [`metrics`]: the Prometheus counters;
//! - [`page`]: the embedded login page and browser client;
//! - `routes`: HTTP routing on `--listen`.
//!
//! **Invariant:** an fd is never handed to a second connection while a QR
//! code minted for the first can still be scanned (see [`registry`]).

pub mod bus;
pub mod client_ip;
pub mod config;
pub mod delivery;
pub mod metrics;
pub mod origin;
pub mod page;
pub mod page_info;
pub mod qr;
pub mod ratelimit;
pub mod registry;
mod routes;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use daemon_kit::health::Health;
use daemon_kit::http::ServeOptions;
use daemon_kit::shutdown::GRACE;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use wechat_api::{ApiConfig, WeChatApi};

pub use config::{Config, ConfigError, Settings};
pub use ws::MAX_FRAMES_PER_PING;

use client_ip::TrustedProxies;
use metrics::Metrics;
use page::Pages;
use page_info::PageInfos;
use qr::Minter;
use ratelimit::{ConnLimiter, MintLimiter};
use registry::Registry;

/// Extra HTTP connections allowed above `--max-connections`, so page loads,
/// health checks and the 503 answers themselves still get through when the
/// WebSocket limit is reached (an upgraded connection no longer counts as
/// an HTTP one).
pub const HTTP_SLACK: usize = 1024;

/// How often closed connections' tombstones and idle rate-limit buckets
/// are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The two bound sockets the gateway serves.
pub struct Listeners {
    /// `--listen`: HTTP and WebSocket.
    pub http: TcpListener,
    /// `--notify-listen`: the NDJSON notify bus.
    pub notify: TcpListener,
}

/// State shared by every task of one gateway.
pub(crate) struct Gateway {
    pub settings: Settings,
    pub registry: Registry,
    pub minter: Arc<Minter>,
    pub limiter: MintLimiter,
    pub conn_limiter: ConnLimiter,
    pub page_infos: PageInfos,
    pub trusted: TrustedProxies,
    pub metrics: Arc<Metrics>,
    pub pages: Pages,
    /// One permit per open browser connection (`--max-connections`).
    pub ws_permits: Arc<Semaphore>,
    /// Every browser connection task, so shutdown can wait for them.
    pub ws_tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Not ready while no access token could be had (`/healthz` 503).
    pub health: Arc<Health>,
}

/// Serves until `shutdown` is cancelled, then closes every browser
/// connection with 1001 (going away), answers the bus lines already read,
/// and returns within a few seconds.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let http_addr = listeners.http.local_addr().context("--listen socket")?;
    let notify_addr = listeners
        .notify
        .local_addr()
        .context("--notify-listen socket")?;

    let metrics = Arc::new(Metrics::default());
    let api = WeChatApi::new(ApiConfig {
        base: settings.wechat_api_base.clone(),
        app_id: settings.app_id.clone(),
        app_secret: settings.app_secret.expose().to_string(),
        timeout: qr::API_TIMEOUT,
    })
    .context("cannot build the WeChat API client")?;
    // A wrong AppID or AppSecret, or an address off the IP whitelist, ends
    // the start here, saying what to fix; a passing fault only holds
    // /healthz at 503 until a token is had.
    let health = Arc::new(Health::default());
    if let Err(msg) = api.start_up(&health, &shutdown).await {
        anyhow::bail!(msg);
    }
    let gw = Arc::new(Gateway {
        registry: Registry::for_node(settings.node_id),
        minter: Arc::new(Minter::new(
            api,
            settings.qr_expire_seconds,
            settings.qrcode_image_base.clone(),
            Arc::clone(&metrics),
        )),
        limiter: MintLimiter::new(settings.qr_mint_rate),
        conn_limiter: ConnLimiter::new(settings.max_connections_per_ip),
        page_infos: PageInfos::default(),
        trusted: TrustedProxies::new(settings.trusted_proxies.clone()),
        metrics,
        pages: Pages::new(&settings.demo_sim_url),
        ws_permits: Arc::new(Semaphore::new(settings.max_connections)),
        ws_tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
        health,
        settings,
    });

    info!(
        version = env!("CARGO_PKG_VERSION"),
        app_id = %gw.settings.app_id,
        node_id = gw.settings.node_id,
        http = %http_addr,
        notify = %notify_addr,
        "listening"
    );
    tracing::debug!(
        app_id = %gw.settings.app_id,
        wechat_api_base = %gw.settings.wechat_api_base,
        qr_expire_seconds = gw.settings.qr_expire_seconds,
        idle_timeout = ?gw.settings.idle_timeout,
        max_connections = gw.settings.max_connections,
        notify_require_ticket = gw.settings.notify_require_ticket,
        notify_secret_set = gw.settings.notify_secret.is_some(),
        qr_mint_rate = gw.settings.qr_mint_rate,
        trusted_proxies = gw.settings.trusted_proxies.len(),
        "settings"
    );

    let options = ServeOptions {
        max_connections: gw.settings.max_connections.saturating_add(HTTP_SLACK),
        ..ServeOptions::default()
    };
    let handler = {
        let gw = Arc::clone(&gw);
        move |req, peer| routes::handle(Arc::clone(&gw), req, peer)
    };
    let http_task = tokio::spawn(daemon_kit::http::serve(
        listeners.http,
        options,
        shutdown.clone(),
        handler,
    ));
    let bus_task = tokio::spawn(bus::serve(listeners.notify, Arc::clone(&gw)));
    let sweeper = sweep(Arc::clone(&gw));

    daemon_kit::systemd::ready(&shutdown);
    shutdown.cancelled().await;
    info!(
        connections = gw.metrics.ws_open.get(),
        "shutting down: closing browser connections"
    );

    gw.registry.wake_all();
    gw.ws_tasks.close();
    let drain = async {
        let _ = http_task.await;
        let _ = bus_task.await;
        gw.ws_tasks.wait().await;
    };
    if tokio::time::timeout(GRACE + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        warn!("some connections were still open after the grace period");
    }
    sweeper.abort();
    if let Some(reason) = gw.health.failure() {
        anyhow::bail!(reason);
    }
    info!("stopped");
    Ok(())
}

/// Periodic housekeeping: dead tombstones, idle rate-limit buckets and
/// page descriptions no page holds.
fn sweep(gw: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    let shutdown = gw.shutdown.clone();
    daemon_kit::shutdown::every(SWEEP_INTERVAL, &shutdown, move || {
        let now = Instant::now();
        let counts = gw.registry.sweep(now);
        let buckets = gw.limiter.sweep(now);
        let pages = gw.page_infos.sweep();
        if counts.shrunk {
            // The registry just gave back a table sized for a peak: let
            // glibc return it, and what the peak's connections freed.
            daemon_kit::memory::give_back();
        }
        tracing::trace!(
            live = counts.live,
            tombstones = counts.tombstones,
            buckets,
            pages,
            "swept"
        );
        async {}
    })
}

/// A gateway with default settings and no listeners, for unit tests of
/// the pieces that take one (its API points at a closed port).
#[cfg(test)]
pub(crate) fn test_gateway() -> Arc<Gateway> {
    let cfg = <crate::Config as clap::Parser>::try_parse_from([
        "ws-gateway",
        "--app-id",
        "a",
        "--app-secret",
        "s",
    ])
    .unwrap();
    let settings = cfg.validate().unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let api = wechat_api::WeChatApi::new(wechat_api::ApiConfig {
        base: "http://127.0.0.1:9".into(),
        app_id: "a".into(),
        app_secret: "s".into(),
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    Arc::new(Gateway {
        registry: crate::registry::Registry::new(),
        minter: Arc::new(crate::qr::Minter::new(api, 1, "x".into(), metrics.clone())),
        limiter: crate::ratelimit::MintLimiter::new(0),
        conn_limiter: crate::ratelimit::ConnLimiter::new(0),
        page_infos: Default::default(),
        trusted: Default::default(),
        metrics,
        pages: crate::page::Pages::new(""),
        ws_permits: Arc::new(tokio::sync::Semaphore::new(1)),
        ws_tasks: Default::default(),
        shutdown: Default::default(),
        health: Default::default(),
        settings,
    })
}
