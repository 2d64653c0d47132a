//! The gateway's Prometheus metrics (`GET /metrics`): connections, QR codes
//! minted / failed / minted today (Beijing time, when WeChat's quotas
//! reset), pushes, bus lines by result, WeChat API call durations, build
//! info and the process's own figures.

use std::sync::atomic::{AtomicU64, Ordering};

use daemon_kit::metrics::{Counter, Exposition, Gauge, Histogram};
use protocol::bus::BusError;

use crate::registry::Counts;

/// Number of bus result kinds: `ok` plus every [`BusError`].
pub const BUS_RESULTS: usize = BusError::ALL.len() + 1;

/// Counters shared by every task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ws_open: Gauge,
    pub ws_accepted: Counter,
    /// Upgrades refused with 503 (`--max-connections`, or shutting down).
    pub ws_refused: Counter,
    /// Upgrades refused with 403: the page's origin is not allowed.
    pub ws_origin_refused: Counter,
    /// Upgrades refused with 429: `--max-connections-per-ip`.
    pub ws_ip_refused: Counter,
    pub ws_idle_closed: Counter,
    /// Connections closed for sending too many frames.
    pub ws_flood_closed: Counter,
    /// Connections closed because a write to the browser stalled.
    pub ws_write_stalled: Counter,
    pub qr_minted: Counter,
    pub qr_minted_today: DailyCounter,
    pub qr_failed: Counter,
    /// `rate_limited` answers: `refresh` too soon.
    pub qr_refresh_limited: Counter,
    /// `rate_limited` answers: the client IP's `--qr-mint-rate` budget.
    pub qr_ip_limited: Counter,
    pub qr_expired: Counter,
    /// `scan_success` frames sent to browsers.
    pub pushes: Counter,
    pub bus_connections: Gauge,
    /// Bus connections closed for idling or evicted at the cap.
    pub bus_idle_closed: Counter,
    pub bus_evicted: Counter,
    pub bus_lines: [Counter; BUS_RESULTS],
    pub wechat_api_latency: Histogram,
}

/// The index of a bus result in [`Metrics::bus_lines`].
pub fn bus_index(result: Result<(), BusError>) -> usize {
    match result {
        Ok(()) => 0,
        Err(e) => 1 + BusError::ALL.iter().position(|x| *x == e).unwrap_or(0),
    }
}

fn bus_label(index: usize) -> &'static str {
    match index.checked_sub(1) {
        None => "ok",
        Some(i) => BusError::ALL.get(i).map_or("unknown", |e| e.code()),
    }
}

impl Metrics {
    /// The text exposition, with the registry's sizes.
    pub fn render(&self, registry: Counts) -> String {
        let today = beijing_day();
        Exposition::new()
            .gauge(
                "ws_gateway_connections_open",
                "Browser WebSocket connections open now.",
                self.ws_open.get(),
            )
            .counter(
                "ws_gateway_connections_total",
                "Browser WebSocket connections accepted.",
                self.ws_accepted.get(),
            )
            .counter(
                "ws_gateway_connections_refused_total",
                "WebSocket upgrades refused with 503 (max connections or shutdown).",
                self.ws_refused.get(),
            )
            .counters(
                "ws_gateway_connections_forbidden_total",
                "WebSocket upgrades refused before opening, by reason.",
                "reason",
                [
                    ("origin", self.ws_origin_refused.get()),
                    ("per_ip_limit", self.ws_ip_refused.get()),
                ],
            )
            .counter(
                "ws_gateway_connections_flood_closed_total",
                "WebSocket connections closed for sending more frames than allowed between pings.",
                self.ws_flood_closed.get(),
            )
            .counter(
                "ws_gateway_connections_idle_closed_total",
                "WebSocket connections closed for idling.",
                self.ws_idle_closed.get(),
            )
            .counter(
                "ws_gateway_connections_stalled_total",
                "WebSocket connections closed because writes to the browser stalled.",
                self.ws_write_stalled.get(),
            )
            .gauge(
                "ws_gateway_fd_tombstones",
                "fds of closed connections reserved until their last QR code expires.",
                i64::try_from(registry.tombstones).unwrap_or(i64::MAX),
            )
            .counter(
                "ws_gateway_qr_minted_total",
                "Temporary QR codes minted.",
                self.qr_minted.get(),
            )
            .gauge(
                "ws_gateway_qr_minted_today",
                "Temporary QR codes minted since 00:00 Beijing time (UTC+8), when WeChat's daily quotas reset.",
                i64::try_from(self.qr_minted_today.get(today)).unwrap_or(i64::MAX),
            )
            .counter(
                "ws_gateway_qr_failed_total",
                "QR code requests to WeChat that failed.",
                self.qr_failed.get(),
            )
            .counters(
                "ws_gateway_qr_rate_limited_total",
                "QR codes refused with rate_limited.",
                "reason",
                [
                    ("refresh", self.qr_refresh_limited.get()),
                    ("client_ip", self.qr_ip_limited.get()),
                ],
            )
            .counter(
                "ws_gateway_qr_expired_total",
                "qrcode_expired frames sent.",
                self.qr_expired.get(),
            )
            .counter(
                "ws_gateway_pushes_total",
                "scan_success frames sent to browsers.",
                self.pushes.get(),
            )
            .gauge(
                "ws_gateway_bus_connections_open",
                "Notify bus connections open now.",
                self.bus_connections.get(),
            )
            .counters(
                "ws_gateway_bus_connections_closed_total",
                "Notify bus connections closed by the gateway, by reason.",
                "reason",
                [
                    ("idle", self.bus_idle_closed.get()),
                    ("evicted", self.bus_evicted.get()),
                ],
            )
            .counters(
                "ws_gateway_bus_lines_total",
                "Notify bus lines answered, by result.",
                "result",
                self.bus_lines
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (bus_label(i), c.get())),
            )
            .histograms(
                "ws_gateway_api_call_duration_seconds",
                "Duration of WeChat API calls, by endpoint (qrcode/create includes getting the access token).",
                "endpoint",
                [("qrcode/create", &self.wechat_api_latency)],
            )
            .build_and_process("ws_gateway", env!("CARGO_PKG_VERSION"))
            .finish()
    }
}

/// A count that starts over each day (see [`beijing_day`]).
#[derive(Debug, Default)]
pub struct DailyCounter {
    /// Days since the Unix epoch the count belongs to.
    day: AtomicU64,
    count: AtomicU64,
}

impl DailyCounter {
    pub fn inc(&self, today: u64) {
        let day = self.day.load(Ordering::Acquire);
        if day != today
            && self
                .day
                .compare_exchange(day, today, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.count.store(0, Ordering::Release);
        }
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, today: u64) -> u64 {
        if self.day.load(Ordering::Acquire) == today {
            self.count.load(Ordering::Acquire)
        } else {
            0
        }
    }
}

/// Days since the Unix epoch in Beijing time (UTC+8): WeChat's daily API
/// quotas start over at 00:00 there.
pub fn beijing_day() -> u64 {
    day_at_utc8(u64::try_from(protocol::wechat::unix_now()).unwrap_or(0))
}

/// The UTC+8 day of a Unix time.
fn day_at_utc8(unix_secs: u64) -> u64 {
    (unix_secs + 8 * 3600) / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_turns_at_midnight_beijing_time() {
        // 2026-12-01 15:59:59 UTC is 23:59:59 in Beijing; a second later
        // it is the next day there, though still the same day in UTC.
        let before = 1_796_140_799;
        assert_eq!(day_at_utc8(before) + 1, day_at_utc8(before + 1));
        assert_eq!(before / 86_400, (before + 1) / 86_400);
    }

    #[test]
    fn daily_counter_starts_over() {
        let c = DailyCounter::default();
        c.inc(100);
        c.inc(100);
        assert_eq!(c.get(100), 2);
        assert_eq!(c.get(101), 0);
        c.inc(101);
        assert_eq!(c.get(101), 1);
    }

    #[test]
    fn every_bus_result_has_a_label() {
        let m = Metrics::default();
        m.bus_lines[bus_index(Ok(()))].inc();
        for e in BusError::ALL {
            m.bus_lines[bus_index(Err(e))].inc();
        }
        let text = m.render(Counts::default());
        assert!(text.contains("ws_gateway_bus_lines_total{result=\"ok\"} 1"));
        for e in BusError::ALL {
            assert!(text.contains(&format!(
                "ws_gateway_bus_lines_total{{result=\"{}\"}} 1",
                e.code()
            )));
        }
        assert!(text.contains("ws_gateway_qr_minted_today 0"));
    }
}
