//! Counts of what the simulator did (API calls per path, tokens minted,
//! force refreshes, scans, callback deliveries and attempts), shown as
//! JSON on `GET /sim/stats` and as Prometheus text on `GET /metrics`.

use daemon_kit::metrics::{Counter, Exposition};
use serde_json::{Value, json};

/// The API paths counted one by one; anything else is `other`.
pub const API_PATHS: [&str; 5] = [
    "/cgi-bin/stable_token",
    "/cgi-bin/token",
    "/cgi-bin/qrcode/create",
    "/cgi-bin/user/info",
    "/cgi-bin/showqrcode",
];

/// Every counter.
#[derive(Debug, Default)]
pub struct Stats {
    api: [Counter; API_PATHS.len()],
    api_other: Counter,
    pub api_errors: Counter,
    pub tokens_issued: Counter,
    pub force_refreshes: Counter,
    pub tickets_created: Counter,
    pub faults_injected: Counter,
    pub scans: Counter,
    pub scans_refused: Counter,
    pub callbacks_delivered: Counter,
    pub callbacks_failed: Counter,
    pub callback_attempts: Counter,
}

impl Stats {
    /// Counts one call to an API path.
    pub fn api_call(&self, path: &str) {
        match API_PATHS.iter().position(|p| *p == path) {
            Some(i) => self.api[i].inc(),
            None => self.api_other.inc(),
        }
    }

    pub fn api_calls(&self, path: &str) -> u64 {
        API_PATHS
            .iter()
            .position(|p| *p == path)
            .map_or(0, |i| self.api[i].get())
    }

    /// The `/sim/stats` answer; `tickets_live` and `users` come from the
    /// stores.
    pub fn to_json(&self, tickets_live: usize, users: usize) -> Value {
        let mut api = serde_json::Map::new();
        for (path, c) in API_PATHS.iter().zip(&self.api) {
            api.insert((*path).to_string(), json!(c.get()));
        }
        api.insert("other".into(), json!(self.api_other.get()));
        json!({
            "api_calls": api,
            "api_errors": self.api_errors.get(),
            "tokens_issued": self.tokens_issued.get(),
            "force_refreshes": self.force_refreshes.get(),
            "tickets_created": self.tickets_created.get(),
            "tickets_live": tickets_live,
            "faults_injected": self.faults_injected.get(),
            "scans": self.scans.get(),
            "scans_refused": self.scans_refused.get(),
            "users": users,
            "callbacks_delivered": self.callbacks_delivered.get(),
            "callbacks_failed": self.callbacks_failed.get(),
            "callback_attempts": self.callback_attempts.get(),
        })
    }

    /// The `/metrics` text.
    pub fn to_prometheus(&self, tickets_live: usize) -> String {
        let mut e = Exposition::new();
        e.counters(
            "wechat_sim_api_calls_total",
            "API calls by path.",
            "path",
            API_PATHS
                .iter()
                .zip(&self.api)
                .map(|(p, c)| (*p, c.get()))
                .chain(std::iter::once(("other", self.api_other.get()))),
        )
        .counter(
            "wechat_sim_api_errors_total",
            "API calls answered with a non-zero errcode.",
            self.api_errors.get(),
        )
        .counter(
            "wechat_sim_tokens_issued_total",
            "Access tokens minted.",
            self.tokens_issued.get(),
        )
        .counter(
            "wechat_sim_force_refreshes_total",
            "stable_token calls with force_refresh.",
            self.force_refreshes.get(),
        )
        .counter(
            "wechat_sim_tickets_created_total",
            "QR tickets minted.",
            self.tickets_created.get(),
        )
        .gauge(
            "wechat_sim_tickets_live",
            "QR tickets remembered.",
            i64::try_from(tickets_live).unwrap_or(i64::MAX),
        )
        .counter(
            "wechat_sim_scans_total",
            "Scans accepted.",
            self.scans.get(),
        )
        .counter(
            "wechat_sim_callbacks_delivered_total",
            "Scans whose callback got a 2xx answer.",
            self.callbacks_delivered.get(),
        )
        .counter(
            "wechat_sim_callbacks_failed_total",
            "Scans whose callback never got a 2xx answer.",
            self.callbacks_failed.get(),
        )
        .counter(
            "wechat_sim_callback_attempts_total",
            "Callback HTTP requests sent, retries included.",
            self.callback_attempts.get(),
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_path() {
        let s = Stats::default();
        s.api_call("/cgi-bin/qrcode/create");
        s.api_call("/cgi-bin/qrcode/create");
        s.api_call("/cgi-bin/nope");
        assert_eq!(s.api_calls("/cgi-bin/qrcode/create"), 2);
        let v = s.to_json(3, 1);
        assert_eq!(v["api_calls"]["/cgi-bin/qrcode/create"], 2);
        assert_eq!(v["api_calls"]["other"], 1);
        assert_eq!(v["tickets_live"], 3);
        let text = s.to_prometheus(3);
        assert!(text.contains("wechat_sim_api_calls_total{path=\"/cgi-bin/qrcode/create\"} 2"));
        assert!(text.contains("wechat_sim_tickets_live 3"));
    }
}
