//! Test support shared by the daemons' integration tests and the
//! end-to-end suite: finding and spawning the real binaries, free ports,
//! signed and encrypted WeChat callbacks, a fake notify bus and a fake
//! WeChat API, each on a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fake_api;
pub mod fake_bus;
pub mod http;
pub mod postgres;
pub mod process;
pub mod token;
pub mod wechat;

pub use process::{Daemon, bin_path, free_port};
