//! The callback's counters, rendered on `GET /metrics`.

use daemon_kit::metrics::{Counter, Exposition, Histogram};

/// What happened to callbacks and logins.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests_ok: Counter,
    pub rejected_signature: Counter,
    pub rejected_timestamp: Counter,
    pub rejected_too_large: Counter,
    pub rejected_xml: Counter,
    pub rejected_decrypt: Counter,
    pub rejected_replay: Counter,
    pub rejected_plaintext: Counter,
    pub forwarded: Counter,
    pub forward_failed: Counter,
    pub rejected_body_timeout: Counter,
    pub retries_answered: Counter,
    pub deadline_success: Counter,
    pub logins: Counter,
    pub logins_not_counted: Counter,
    pub notify_unreachable: Counter,
    pub notify_refused: Counter,
    pub notify_timeout: Counter,
    pub notify_lost: Counter,
    pub user_info_fallback: Counter,
    pub decrypted_with_previous_key: Counter,
    pub store_errors: Counter,
    pub callback_latency: Histogram,
    pub notify_latency: Histogram,
    pub user_info_latency: Histogram,
}

impl Metrics {
    pub fn render(&self) -> String {
        Exposition::new()
            .counters(
                "wechat_callback_requests_total",
                "Callback POSTs by outcome.",
                "outcome",
                [
                    ("ok", self.requests_ok.get()),
                    ("bad_signature", self.rejected_signature.get()),
                    ("stale_timestamp", self.rejected_timestamp.get()),
                    ("too_large", self.rejected_too_large.get()),
                    ("bad_xml", self.rejected_xml.get()),
                    ("decrypt_failed", self.rejected_decrypt.get()),
                    ("replay", self.rejected_replay.get()),
                    ("plaintext_refused", self.rejected_plaintext.get()),
                    ("body_timeout", self.rejected_body_timeout.get()),
                ],
            )
            .counters(
                "wechat_callback_forwarded_total",
                "POSTs passed to --forward-url, by result (failed: answered success).",
                "result",
                [
                    ("relayed", self.forwarded.get()),
                    ("failed", self.forward_failed.get()),
                ],
            )
            .counter(
                "wechat_callback_retries_total",
                "Retried deliveries answered from the store.",
                self.retries_answered.get(),
            )
            .counter(
                "wechat_callback_deadline_success_total",
                "Callbacks answered `success` because the work outran the reply deadline.",
                self.deadline_success.get(),
            )
            .counter(
                "wechat_callback_logins_total",
                "Logins counted.",
                self.logins.get(),
            )
            .counter(
                "wechat_callback_logins_not_counted_total",
                "QR scans whose login page could not be told.",
                self.logins_not_counted.get(),
            )
            .counters(
                "wechat_callback_notify_failures_total",
                "Notify bus failures by kind.",
                "kind",
                [
                    ("unreachable", self.notify_unreachable.get()),
                    ("refused", self.notify_refused.get()),
                    ("timeout", self.notify_timeout.get()),
                    ("lost", self.notify_lost.get()),
                ],
            )
            .counter(
                "wechat_callback_user_info_fallback_total",
                "Logins shown with the fallback name because user/info failed or was slow.",
                self.user_info_fallback.get(),
            )
            .counter(
                "wechat_callback_previous_key_total",
                "Messages that decrypted only with --encoding-aes-key-previous.",
                self.decrypted_with_previous_key.get(),
            )
            .counter(
                "wechat_callback_store_errors_total",
                "SQLite errors.",
                self.store_errors.get(),
            )
            .histogram(
                "wechat_callback_request_duration_seconds",
                "Time to answer a callback POST.",
                &self.callback_latency,
            )
            .histogram(
                "wechat_callback_notify_duration_seconds",
                "Notify bus round trip (request written to answer read).",
                &self.notify_latency,
            )
            .histograms(
                "wechat_callback_api_call_duration_seconds",
                "Duration of WeChat API calls, by endpoint (including getting the access token).",
                "endpoint",
                [("user/info", &self.user_info_latency)],
            )
            .build_and_process("wechat_callback", env!("CARGO_PKG_VERSION"))
            .finish()
    }
}
