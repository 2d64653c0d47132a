//! `scan-bench`: load benchmarks for scan-login against the real daemons
//! (see BENCHMARKS.md). Parses flags, raises the open-file limit, and runs.

mod bench;
mod churn;
mod cli;
mod http;
mod idle;
mod login;
mod nodes;
mod procs;
mod push;
mod report;
mod stats;
mod ws_clients;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Before any socket or child process: children inherit the limit.
    let nofile = procs::raise_nofile_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.common.client_threads {
        rt.worker_threads(n.max(1));
    }
    let outcome = rt.build().map_err(anyhow::Error::from).and_then(|rt| {
        let code = rt.block_on(bench::run(cli, nofile));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        code
    });
    match outcome {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("scan-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
