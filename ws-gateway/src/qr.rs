//! QR minting: one `qrcode/create` call per code (scene = the
//! connection's fd), bounded by a process-wide concurrency limit, timed
//! into the latency histogram and counted; the `qrcode_url` frame with the
//! percent-encoded ticket; and the retry backoff used while WeChat fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use protocol::ws::ServerFrame;
use tokio::sync::Semaphore;
use wechat_api::{ApiError, QrCode, WeChatApi};

use crate::metrics::{Metrics, beijing_day};

/// Most `qrcode/create` calls in flight at once, process-wide: a gateway
/// restart reconnects every browser at once, and WeChat should see a
/// steady stream rather than a burst of thousands.
pub const MINT_CONCURRENCY: usize = 64;

/// Timeout of each WeChat API request.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything but RFC 3986 unreserved characters is encoded (tickets
/// contain `+`, `/` and `=`).
const TICKET_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A mint in progress; the connection task polls it next to its socket.
pub type MintFuture = Pin<Box<dyn Future<Output = Result<QrCode, ApiError>> + Send>>;

/// Mints codes for every connection.
pub struct Minter {
    api: WeChatApi,
    expire_seconds: u32,
    image_base: String,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
    /// Unix second of the last failure logged at warn (failures are logged
    /// at most once a second; the rest at debug).
    last_warned: AtomicU64,
}

impl Minter {
    pub fn new(
        api: WeChatApi,
        expire_seconds: u32,
        image_base: String,
        metrics: Arc<Metrics>,
    ) -> Minter {
        Minter {
            api,
            expire_seconds,
            image_base,
            in_flight: Semaphore::new(MINT_CONCURRENCY),
            metrics,
            last_warned: AtomicU64::new(0),
        }
    }

    /// Starts minting a code whose scene is `fd`.
    pub fn mint(self: &Arc<Self>, fd: u32) -> MintFuture {
        let this = Arc::clone(self);
        Box::pin(async move {
            // The semaphore is never closed.
            let _permit = this
                .in_flight
                .acquire()
                .await
                .map_err(|_| ApiError::Transport("gateway shutting down".into()))?;
            let start = Instant::now();
            let result = this.api.create_qr_scene(fd, this.expire_seconds).await;
            this.metrics.wechat_api_latency.observe(start.elapsed());
            match &result {
                Ok(_) => {
                    this.metrics.qr_minted.inc();
                    this.metrics.qr_minted_today.inc(beijing_day());
                }
                Err(e) => {
                    this.metrics.qr_failed.inc();
                    this.log_failure(fd, e);
                }
            }
            result
        })
    }

    fn log_failure(&self, fd: u32, e: &ApiError) {
        let now = u64::try_from(protocol::wechat::unix_now()).unwrap_or(0);
        let last = self.last_warned.load(Ordering::Relaxed);
        if now != last
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match e.hint() {
                Some(hint) => tracing::error!(fd, cause = %e, hint, "WeChat qrcode/create refused"),
                None if e.is_permanent() => {
                    tracing::error!(fd, cause = %e, "WeChat qrcode/create refused; not retried")
                }
                None => tracing::warn!(
                    fd,
                    cause = %e,
                    "WeChat qrcode/create failed; retrying with backoff"
                ),
            }
        } else {
            tracing::debug!(fd, cause = %e, "WeChat qrcode/create failed");
        }
    }

    /// How long a code minted as `qr` stays scannable.
    pub fn lifetime(&self, qr: &QrCode) -> Duration {
        let secs = if qr.expire_seconds == 0 {
            self.expire_seconds
        } else {
            qr.expire_seconds
        };
        Duration::from_secs(u64::from(secs))
    }

    /// The `qrcode_url` frame for `qr`.
    pub fn frame(&self, qr: &QrCode) -> ServerFrame {
        ServerFrame::QrcodeUrl {
            url: image_url(&self.image_base, &qr.ticket),
            qr_content: qr.url.clone(),
            expire_seconds: if qr.expire_seconds == 0 {
                self.expire_seconds
            } else {
                qr.expire_seconds
            },
        }
    }
}

/// `base` followed by the percent-encoded `ticket`.
pub fn image_url(base: &str, ticket: &str) -> String {
    let mut url = String::with_capacity(base.len() + ticket.len() * 3);
    url.push_str(base);
    url.extend(utf8_percent_encode(ticket, TICKET_ESCAPE));
    url
}

/// The wait between failed mints of one connection: 1 s, 2 s, 4 s …
/// capped at 30 s.
pub type Backoff = daemon_kit::backoff::Backoff<1_000, 30_000>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_fully_encoded() {
        assert_eq!(
            image_url("https://x/show?ticket=", "gQH+8Dw/AAA=="),
            "https://x/show?ticket=gQH%2B8Dw%2FAAA%3D%3D"
        );
        assert_eq!(image_url("b=", "a-b_c.d~e f&g"), "b=a-b_c.d~e%20f%26g");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::MIN);
    }
}
