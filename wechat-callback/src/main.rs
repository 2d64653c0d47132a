//! The `wechat-callback` binary: settings, logging, the listener, then
//! [`wechat_callback::run`] until SIGTERM/SIGINT.

use std::process::ExitCode;

use wechat_callback::Config;

fn main() -> ExitCode {
    let config: Config = daemon_kit::config::load().unwrap_or_else(|e| e.exit());
    daemon_kit::telemetry::init();
    if config.check_config {
        return match config
            .settings()
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                wechat_callback::store::Store::open(&s.db)
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", s.db.display()))
            }) {
            Ok(()) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = daemon_kit::shutdown::on_signal();
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, cause = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match wechat_callback::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(cause = %e, "wechat-callback failed");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
