//! The `wechat-sim` binary: parses flags, then runs the simulator (no
//! subcommand) or the `scan` client.

use anyhow::Context;
use daemon_kit::{shutdown, telemetry};
use tokio::net::TcpListener;
use wechat_sim::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = daemon_kit::config::load().unwrap_or_else(|e| e.exit());
    if let Some(Command::Scan(args)) = cli.command {
        std::process::exit(wechat_sim::cli::scan(args).await);
    }
    telemetry::init();
    if let Err(e) = cli.server.settings() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(cli.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.listen))?;
    let shutdown = shutdown::on_signal();
    wechat_sim::run(cli.server, listener, shutdown).await?;
    Ok(())
}
