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

/// Runs `tick` every `period` (the first time after one period) until
/// `shutdown`; a late tick is delayed, not bunched.
pub fn every<F, Fut>(
    period: Duration,
    shutdown: &CancellationToken,
    mut tick: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => tick().await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn every_ticks_until_shutdown() {
        let stop = CancellationToken::new();
        let n = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&n);
        let task = every(Duration::from_secs(10), &stop, move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
        stop.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }
}
