//! The `wechat-sim` binary: the `scan` client subcommand, or the simulator
//! through the common daemon lifecycle (`daemon_kit::daemon::main`).

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use wechat_sim::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = daemon_kit::config::load().unwrap_or_else(|e| e.exit());
    if let Some(Command::Scan(args)) = cli.command {
        let code = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(wechat_sim::cli::scan(args)),
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                1
            }
        };
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    daemon_kit::daemon::main(cli.server, |config, shutdown| async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        wechat_sim::run(config, listener, shutdown).await?;
        Ok(())
    })
}
