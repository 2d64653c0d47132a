//! One lifecycle for every daemon: load the layered settings, validate
//! them (a mistake is exit 2, with the message), stop there with
//! `--check-config` (printing the effective settings, secrets shown only as
//! set, and no side effects), set up logging, build the runtime, run until
//! SIGTERM or SIGINT (one [`CancellationToken`]; systemd hears `STOPPING=1`
//! as soon as the signal arrives), and exit 0, or 1 with the reason.

use std::future::Future;
use std::process::ExitCode;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{self, LogFormat};

/// The flags every daemon has (flattened into each one's settings).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CommonFlags {
    /// Log lines as text, or as one JSON object per line (`timestamp`,
    /// `level`, `target`, `fields`). Under systemd no timestamp is printed
    /// (the journal adds its own).
    #[arg(
        long,
        env = "SCAN_LOGIN_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// Check the settings (and what they name, e.g. that the database can
    /// be opened, creating nothing), print them with secrets redacted, and
    /// exit: 0 when valid, 2 with the reason otherwise. For systemd's
    /// ExecStartPre=. An action, so a flag only (not a key or an env var).
    #[arg(long, action = clap::ArgAction::SetTrue)]
    #[serde(skip)]
    pub check_config: bool,
}

/// What the common `main` needs from a daemon's settings.
pub trait Daemon: Serialize {
    /// The binary's name, for messages.
    const NAME: &'static str;
    fn common(&self) -> &CommonFlags;
    /// Checks the settings, and with `--check-config` what they name (a
    /// database can be opened), without changing anything.
    fn validate(&self) -> Result<(), String>;

    /// Whether `--check-config` was given.
    fn check_config(&self) -> bool {
        self.common().check_config
    }

    fn log_format(&self) -> LogFormat {
        self.common().log_format
    }
}

/// Exit code for settings that cannot work.
pub const EXIT_CONFIG: u8 = 2;

/// Runs a daemon: `serve` gets the settings and the shutdown token.
pub fn main<D, F, Fut>(config: D, serve: F) -> ExitCode
where
    D: Daemon,
    F: FnOnce(D, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.check_config() {
        println!("# {}: configuration ok", D::NAME);
        print!("{}", summary(&config));
        return ExitCode::SUCCESS;
    }
    telemetry::init(config.log_format());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = crate::shutdown::on_signal();
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                crate::systemd::stopping();
            });
        }
        serve(config, shutdown).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(cause = format!("{e:#}"), "{} failed", D::NAME);
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The effective settings as TOML (`key = value` lines); secrets appear as
/// `"<set>"`, unset settings not at all.
pub fn summary<D: Serialize>(config: &D) -> String {
    toml::to_string(config).unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
}
