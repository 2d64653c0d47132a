//! The `wechat-callback` binary: the common daemon lifecycle
//! (`daemon_kit::daemon::main`: settings, `--check-config`, logging,
//! runtime, signals), the listener bound, then [`wechat_callback::run`].

use std::process::ExitCode;

use anyhow::Context;
use wechat_callback::Config;

fn main() -> ExitCode {
    let config: Config = daemon_kit::config::load().unwrap_or_else(|e| e.exit());
    daemon_kit::daemon::main(config, |config, shutdown| async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
        wechat_callback::run(config, listener, shutdown).await
    })
}
