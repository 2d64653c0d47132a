//! `wechat-sim`: a faithful stand-in for the WeChat platform, for
//! development, demos, tests and benchmarks.
//!
//! - [`api`]: the WeChat API subset (`stable_token`, `token`,
//!   `qrcode/create`, `user/info`, `showqrcode`) with WeChat's shapes and
//!   errcodes ([`errcode`]);
//! - [`phone`]: `POST /sim/scan`, which delivers a signed (optionally
//!   encrypted) `subscribe`/`SCAN` callback with WeChat's retry policy;
//! - [`tokens`], [`tickets`], [`users`]: the state behind them, held in
//!   [`state::SimState`];
//! - [`faults`] and [`stats`]: fault injection and counters for tests;
//! - [`routes`]: the HTTP front (CORS, `/sim/*`, `/healthz`, `/metrics`);
//! - [`config`] and [`cli`]: flags, and the `scan` subcommand.
//!
//! **Invariant:** every wire format (signatures, event XML, safe-mode
//! crypto, replies) comes from the `protocol` crate, never from here.

pub mod api;
pub mod cli;
pub mod config;
pub mod errcode;
pub mod faults;
pub mod phone;
pub mod respond;
pub mod routes;
pub mod state;
pub mod stats;
pub mod tickets;
pub mod tokens;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_kit::http::ServeOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config};
use state::SimState;

/// How often expired tickets are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Serves the simulator on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let settings = config.settings()?;
    let state = Arc::new(SimState::new(settings)?);
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            %addr,
            app_id = %state.settings.app_id,
            callback_url = %state.settings.callback_url,
            safe_mode = state.settings.aes_key.is_some(),
            "wechat-sim listening"
        ),
        Err(e) => tracing::warn!(cause = %e, "wechat-sim listening (address unknown)"),
    }

    let sweeper = {
        let state = state.clone();
        daemon_kit::shutdown::every(SWEEP_INTERVAL, &shutdown, move || {
            state.tickets.sweep(Instant::now());
            async {}
        })
    };

    daemon_kit::systemd::ready(&shutdown);
    let options = ServeOptions {
        max_connections: state.settings.max_connections,
        ..ServeOptions::default()
    };
    let handler_state = state.clone();
    daemon_kit::http::serve(listener, options, shutdown, move |req, _peer| {
        routes::handle(handler_state.clone(), req)
    })
    .await;
    sweeper.abort();
    tracing::info!("wechat-sim stopped");
    Ok(())
}
