//! The `ws-gateway` binary: parse the layered settings, validate them (and
//! stop there with `--check-config`), set up logging, bind both listeners
//! and hand over to [`ws_gateway::run`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use ws_gateway::{Config, Listeners};

fn main() -> ExitCode {
    let config: Config = match daemon_kit::config::load() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if config.check_config {
        println!("# ws-gateway: configuration ok");
        print!("{}", config.summary());
        return ExitCode::SUCCESS;
    }
    daemon_kit::telemetry::init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(cause = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let http = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
        let notify = TcpListener::bind(config.notify_listen)
            .await
            .with_context(|| {
                format!("cannot listen on --notify-listen {}", config.notify_listen)
            })?;
        let shutdown = daemon_kit::shutdown::on_signal();
        ws_gateway::run(config, Listeners { http, notify }, shutdown).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(cause = format!("{e:#}"), "ws-gateway failed");
            ExitCode::FAILURE
        }
    }
}
