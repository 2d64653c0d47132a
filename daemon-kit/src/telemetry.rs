//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text or as one JSON object per line (`--log-format json`). Under
//! systemd (`JOURNAL_STREAM` set) the journal stamps each line itself, so
//! no timestamp is printed. Secrets are [`crate::Secret`]s and print as
//! `<redacted>`.

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls
/// do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match (format, journal) {
        (LogFormat::Json, false) => builder.json().with_current_span(false).try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .with_current_span(false)
            .without_time()
            .try_init(),
        (LogFormat::Text, journal) => {
            let text = builder
                .with_ansi(
                    !journal
                        && std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none(),
                )
                .with_target(false);
            if journal {
                text.without_time().try_init()
            } else {
                text.try_init()
            }
        }
    };
}
