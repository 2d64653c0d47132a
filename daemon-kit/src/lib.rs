//! What every daemon in wechat-scan-login does the same way, so each does it
//! once: layered configuration ([`config`]), secrets that never print
//! ([`Secret`]), one shutdown signal ([`shutdown`]), logging
//! ([`telemetry`]), the HTTP accept loop ([`http`]), Prometheus text
//! ([`metrics`]), readiness for `/healthz` ([`health`]) and systemd
//! readiness and watchdog ([`systemd`]).

pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;

mod secret;
pub use secret::Secret;
