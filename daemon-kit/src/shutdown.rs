//! The single shutdown path: SIGTERM or SIGINT → one [`CancellationToken`]
//! that every task watches → the daemon drains within a grace period and
//! exits 0.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// How long a daemon waits for its tasks after the signal before giving up
/// on them.
pub const GRACE: Duration = Duration::from_secs(5);

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; falling back to ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A token cancelled when the process is told to stop.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}
