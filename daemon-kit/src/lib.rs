//! What every daemon in wechat-scan-login does the same way, so each does it
//! once: the lifecycle from settings to exit code ([`daemon`]), layered
//! configuration ([`config`]), secrets that never print
//! ([`Secret`]), one shutdown signal ([`shutdown`]), logging
//! ([`telemetry`]), the TCP accept loop ([`accept`]) and the HTTP server
//! on it ([`http`]), Prometheus text
//! ([`metrics`]), readiness for `/healthz` ([`health`]) and systemd
//! readiness and watchdog ([`systemd`]), exponential [`backoff`], and
//! giving freed heap back to the system ([`memory`]).

pub mod accept;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;

mod secret;
pub use secret::Secret;
