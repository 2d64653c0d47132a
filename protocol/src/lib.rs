//! Wire formats shared by every process of wechat-scan-login, with no I/O of
//! their own:
//!
//! - [`fd`]: the connection id that is also a login QR code's scene value
//!   (node id and random part; scenes below 2^20 are never logins);
//! - [`bus`]: the NDJSON notify bus between `wechat-callback` and `ws-gateway`
//!   (request and answer lines, the line splitter with its 64 KiB limit);
//! - [`ws`]: the JSON frames between a browser and `ws-gateway`;
//! - [`wechat`]: what WeChat's servers send and expect: query-string
//!   signatures, callback XML, passive replies, and safe-mode crypto.
//!
//! **Invariant:** only this crate defines what goes over a wire. The daemons
//! and the simulator build and parse every line, frame and body through it.

pub mod bus;
pub mod fd;
pub mod wechat;
pub mod ws;
