//! End-to-end: the real `wechat-sim`, `wechat-callback` and `ws-gateway`
//! binaries on loopback, a real WebSocket client as the browser, the
//! simulator's phone as the user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_units;
mod docs;
mod faults;
mod flows;
mod forward;
mod multihost;
mod security;
mod soak;
mod stack;
mod startup;
