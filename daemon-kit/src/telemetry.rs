//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
//! Secrets are [`crate::Secret`]s and print as `<redacted>`.

/// Installs the global subscriber. Safe to call more than once (later calls
/// do nothing).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}
