//! `wechat-callback`: the endpoint WeChat's servers call when a user scans
//! a login QR code.
//!
//! Modules: [`config`] (settings), [`handler`] (HTTP routing), [`inbound`]
//! (signature, timestamp, message mode, XML), [`envelope`] (safe-mode
//! decryption and reply sealing), [`dispatch`] (dedupe, the login and
//! confirm flows), [`forward`] (`--forward-url`: the account's own
//! handler for everything that is not a login), [`single_flight`] (retries joining work in flight),
//! [`store`] (SQLite or PostgreSQL), [`bus_client`] (notify ws-gateway), [`bus_routes`] (which node), [`text`] (names
//! and reply templates), [`login_token`] (JWT), [`metrics`].

pub mod bus_client;
pub mod bus_routes;
pub mod config;
pub mod dispatch;
pub mod envelope;
pub mod forward;
pub mod handler;
pub mod inbound;
pub mod login_token;
pub mod metrics;
pub mod single_flight;
pub mod store;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use daemon_kit::http::ServeOptions;
use daemon_kit::shutdown::{CancellationToken, GRACE};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::{Config, Settings};

/// How often old handled events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Shared state of the running server.
pub struct App {
    pub settings: Settings,
    pub store: store::Store,
    pub bus: bus_routes::BusRoutes,
    pub api: Option<wechat_api::WeChatApi>,
    pub signer: Option<login_token::TokenSigner>,
    pub forwarder: Option<forward::Forwarder>,
    pub metrics: metrics::Metrics,
    pub inflight: dispatch::Inflight,
    /// Work that must finish before the process exits.
    pub tasks: TaskTracker,
    /// Not ready while no access token could be had (`/healthz` 503).
    pub health: Arc<daemon_kit::health::Health>,
    /// This instance in log lines: its listen address (`wechat-callback@PORT`).
    pub instance: String,
}

pub use protocol::wechat::unix_now as now_secs;

/// Builds the server state: validates settings, opens the store, creates
/// the API and bus clients.
pub async fn build(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Arc<App>> {
    let settings = config.settings()?;
    let store = open_store(&settings.db, shutdown).await?;
    let api = settings
        .api
        .clone()
        .map(wechat_api::WeChatApi::new)
        .transpose()?;
    let signer = settings.login_token_secret.as_ref().map(|s| {
        login_token::TokenSigner::new(
            s.expose(),
            &settings.login_token_issuer,
            settings.login_token_audience.as_deref(),
        )
    });
    let forwarder = settings
        .forward_url
        .clone()
        .map(|url| forward::Forwarder::new(url, settings.reply_deadline))
        .transpose()
        .map_err(|e| anyhow::anyhow!("cannot build the --forward-url client: {e}"))?;
    let bus = bus_routes::BusRoutes::start(&settings.notify_addr, settings.notify_timeout);
    Ok(Arc::new(App {
        settings,
        store,
        bus,
        api,
        signer,
        forwarder,
        metrics: metrics::Metrics::default(),
        inflight: dispatch::Inflight::default(),
        tasks: TaskTracker::new(),
        health: Arc::default(),
        instance: config.listen.to_string(),
    }))
}

/// Opens the store; a database server that cannot be reached yet (a host
/// booting with its database) is waited for, up to [`STORE_START_WAIT`],
/// with a warning each attempt. Anything else ends the start at once.
async fn open_store(db: &store::Db, shutdown: &CancellationToken) -> anyhow::Result<store::Store> {
    let started = tokio::time::Instant::now();
    let mut backoff = daemon_kit::backoff::Backoff::<500, 5_000>::default();
    loop {
        match store::Store::open(db).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_unreachable() && started.elapsed() < STORE_START_WAIT => {
                let wait = backoff.next_delay();
                tracing::warn!(db = %db, cause = %e, retry_ms = wait.as_millis() as u64,
                    "database unreachable; waiting for it");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for database {db}"),
                }
            }
            Err(e) => anyhow::bail!("cannot open database {db}: {e}"),
        }
    }
}

/// How long a start waits for an unreachable database server.
const STORE_START_WAIT: Duration = Duration::from_secs(60);

/// How long a request signature is remembered: a timestamp may be off by
/// the tolerance either way, so a signature stays usable for twice that.
fn signature_retention(settings: &Settings) -> Duration {
    settings.timestamp_tolerance * 2 + Duration::from_secs(60)
}

/// Serves on `listener` until `shutdown`, then lets work in flight finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = build(&config, &shutdown).await?;
    // A wrong AppID or AppSecret, or an address off the IP whitelist, ends
    // the start here, saying what to fix; a passing fault only holds
    // /healthz at 503 until a token is had.
    if let Some(api) = &app.api
        && let Err(msg) = api.start_up(&app.health, &shutdown).await
    {
        anyhow::bail!(msg);
    }
    let pruner = {
        let app = app.clone();
        daemon_kit::shutdown::every(PRUNE_EVERY, &shutdown, move || {
            let app = app.clone();
            async move {
                match app.store.prune(signature_retention(&app.settings)).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "old events pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(cause = %e, "prune failed"),
                }
            }
        })
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr()?,
        notify = %app.settings.notify_addr,
        db = %app.settings.db,
        store = app.store.backend(),
        app_id = app.settings.app_id.as_deref().unwrap_or(""),
        message_mode = app.settings.message_mode.name(),
        forward_url = app.settings.forward_url.as_ref().map(|u| u.as_str()).unwrap_or(""),
        confirm_login = app.settings.confirm_login,
        "wechat-callback listening"
    );
    if app.signer.is_none() {
        tracing::warn!(
            "--login-token-secret is not set: pages receive the user's openid without a \
             login token, and your backend has nothing it can verify"
        );
    }
    daemon_kit::systemd::ready(&shutdown);
    let options = ServeOptions {
        max_connections: app.settings.max_connections,
        ..ServeOptions::default()
    };
    let handler_app = app.clone();
    daemon_kit::http::serve(listener, options, shutdown, move |req, peer| {
        handler::handle(handler_app.clone(), req, peer)
    })
    .await;
    pruner.abort();
    app.tasks.close();
    if tokio::time::timeout(GRACE, app.tasks.wait()).await.is_err() {
        tracing::warn!("callback work still running after the grace period");
    }
    if let Some(reason) = app.health.failure() {
        anyhow::bail!(reason);
    }
    tracing::info!("wechat-callback stopped");
    Ok(())
}
