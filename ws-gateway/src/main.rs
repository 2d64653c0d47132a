//! The `ws-gateway` binary: the common daemon lifecycle
//! (`daemon_kit::daemon::main`: settings, `--check-config`, logging,
//! runtime, signals), both listeners bound, then [`ws_gateway::run`].

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use ws_gateway::{Config, Listeners};

fn main() -> ExitCode {
    let config: Config = daemon_kit::config::load().unwrap_or_else(|e| e.exit());
    daemon_kit::daemon::main(config, |config, shutdown| async move {
        let http = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
        let notify = TcpListener::bind(config.notify_listen)
            .await
            .with_context(|| {
                format!("cannot listen on --notify-listen {}", config.notify_listen)
            })?;
        ws_gateway::run(config, Listeners { http, notify }, shutdown).await
    })
}
