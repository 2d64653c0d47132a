//! Whether a push reached its page: the contract between a bus line
//! (which answers `ok` only for a frame written to the page's socket) and
//! the connection task that writes it.
//!
//! A push has one shared state, moved forward by compare-and-swap so both
//! sides agree on one verdict:
//!
//! ```text
//! QUEUED ──page starts writing──▶ WRITING ──written──▶ WRITTEN
//!    │                               │
//!    └──bus gives up──▶ ABANDONED    └──failed, or bus asks to abort──▶ FAILED
//! ```
//!
//! The bus waits a short while ([`Verdict::wait`]); a page that has not
//! started writing by then is abandoned (it will skip the frame), and a
//! page stuck in the middle of the write is told to abort (it closes the
//! socket, so the browser never gets a whole frame). A slow or hostile
//! browser therefore holds a bus connection for [`PATIENCE`] at most, and
//! never gets a login the bus reported as failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long the bus waits for a page to start and finish a write before
/// giving up on it.
pub const PATIENCE: Duration = Duration::from_millis(500);

/// How long the bus waits for a page it told to abort (it reacts at once;
/// this only bounds a starved runtime).
const ABORT_WAIT: Duration = Duration::from_secs(2);

const QUEUED: u8 = 0;
const WRITING: u8 = 1;
const WRITTEN: u8 = 2;
const FAILED: u8 = 3;
const ABANDONED: u8 = 4;

#[derive(Default)]
struct Shared {
    state: AtomicU8,
    /// Wakes the bus: the page reached a verdict.
    to_bus: Notify,
    /// Wakes the page: abort the write in progress.
    to_page: Notify,
}

/// Creates the two halves for one push.
pub fn pair() -> (Receipt, Verdict) {
    let shared = Arc::new(Shared::default());
    (
        Receipt {
            shared: Arc::clone(&shared),
            settled: false,
        },
        Verdict { shared },
    )
}

/// The page's half, queued with the frame.
pub struct Receipt {
    shared: Arc<Shared>,
    settled: bool,
}

impl Receipt {
    /// Claims the write. `false`: the bus gave up; skip the frame.
    pub fn begin(&mut self) -> bool {
        let ok = self
            .shared
            .state
            .compare_exchange(QUEUED, WRITING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if !ok {
            self.settled = true;
        }
        ok
    }

    /// Resolves when the bus asks for the write in progress to be aborted.
    pub async fn abort_requested(&self) {
        self.shared.to_page.notified().await;
    }

    /// The write ended: `written` when the whole frame is on the socket.
    pub fn finish(mut self, written: bool) {
        self.settle(if written { WRITTEN } else { FAILED });
    }

    fn settle(&mut self, to: u8) {
        if self.settled {
            return;
        }
        self.settled = true;
        // QUEUED or WRITING → the verdict; never overwrites ABANDONED.
        let _ = self
            .shared
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s == QUEUED || s == WRITING).then_some(to)
            });
        self.shared.to_bus.notify_one();
    }
}

/// A push dropped unwritten (the page went away) failed.
impl Drop for Receipt {
    fn drop(&mut self) {
        self.settle(FAILED);
    }
}

/// How a push ended, as the bus answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The whole frame is on the page's socket: `ok`.
    Written,
    /// The page went away or the write failed: `no_such_client`.
    Gone,
    /// The page did not take it within [`PATIENCE`] (it is aborted if it
    /// was mid-write): `client_busy`.
    TooSlow,
}

/// The bus's half.
pub struct Verdict {
    shared: Arc<Shared>,
}

impl Verdict {
    fn state(&self) -> u8 {
        self.shared.state.load(Ordering::Acquire)
    }

    /// Waits (until `deadline`, then briefly for an abort) for the page's
    /// verdict; [`Delivered::Written`] only when the frame was written
    /// whole.
    pub async fn wait(self, deadline: tokio::time::Instant) -> Delivered {
        loop {
            match self.state() {
                WRITTEN => return Delivered::Written,
                FAILED | ABANDONED => return Delivered::Gone,
                _ => {}
            }
            if tokio::time::timeout_at(deadline, self.shared.to_bus.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        // Out of patience: abandon a push not yet started, or abort the
        // write in progress and take the page's word for how it ended.
        if self
            .shared
            .state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Delivered::TooSlow;
        }
        self.shared.to_page.notify_one();
        let limit = tokio::time::Instant::now() + ABORT_WAIT;
        loop {
            match self.state() {
                WRITTEN => return Delivered::Written,
                FAILED | ABANDONED => return Delivered::TooSlow,
                _ => {}
            }
            if tokio::time::timeout_at(limit, self.shared.to_bus.notified())
                .await
                .is_err()
            {
                // Told to abort, the page skips or abandons the frame.
                return Delivered::TooSlow;
            }
        }
    }
}

/// A bus line that will never be answered (its connection went away)
/// abandons its push, so the page does not get a login nobody confirmed.
impl Drop for Verdict {
    fn drop(&mut self) {
        if let Err(WRITING) = self.shared.state.compare_exchange(
            QUEUED,
            ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            self.shared.to_page.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn written_is_ok() {
        let (mut r, v) = pair();
        let page = tokio::spawn(async move {
            assert!(r.begin());
            r.finish(true);
        });
        assert_eq!(v.wait(Instant::now() + PATIENCE).await, Delivered::Written);
        page.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_that_never_starts_is_abandoned_and_skips() {
        let (mut r, v) = pair();
        assert_eq!(v.wait(Instant::now() + PATIENCE).await, Delivered::TooSlow);
        assert!(!r.begin(), "the page must skip an abandoned push");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_write_is_aborted_and_reported_failed() {
        let (mut r, v) = pair();
        assert!(r.begin());
        let page = tokio::spawn(async move {
            // Stuck in the write until told to abort.
            r.abort_requested().await;
            r.finish(false);
        });
        assert_eq!(v.wait(Instant::now() + PATIENCE).await, Delivered::TooSlow);
        page.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_completes_as_the_bus_gives_up_counts_as_written() {
        let (mut r, v) = pair();
        assert!(r.begin());
        let page = tokio::spawn(async move {
            r.abort_requested().await;
            // The last byte went out before the abort was seen.
            r.finish(true);
        });
        assert_eq!(v.wait(Instant::now() + PATIENCE).await, Delivered::Written);
        page.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_halves_settle_the_other() {
        let (r, v) = pair();
        drop(r);
        assert_eq!(v.wait(Instant::now() + PATIENCE).await, Delivered::Gone);
        let (mut r, v) = pair();
        drop(v);
        assert!(!r.begin(), "a line nobody will answer abandons its push");
    }
}
