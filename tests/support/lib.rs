//! The test kit, shared by the daemons' integration tests, the end-to-end
//! suite and the benchmarks: finding and spawning the real binaries, test
//! ports, signed and encrypted WeChat callbacks, the fake notify bus and
//! the fake WeChat API, the browser and bus clients, HTTP, each on a real
//! socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod bus;
pub mod fake_api;
pub mod fake_bus;
pub mod http;
pub mod postgres;
pub mod process;
pub mod token;
pub mod wechat;

pub use process::{Daemon, bin_path, free_port};

/// The bound on a single wait of the kit's clients (a connect, a write,
/// an answer, a frame).
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
