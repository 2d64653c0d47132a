//! Browser frames: `ClientCommand::parse` on the input (UTF-8, lossy), as
//! the gateway does for text frames up to `MAX_CLIENT_FRAME_BYTES`. A
//! command written back as JSON parses back equal. The server's frames are
//! read too (`ServerFrame`), and one that reads must round-trip through
//! `to_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ws::{ClientCommand, MAX_CLIENT_FRAME_BYTES, ServerFrame};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_CLIENT_FRAME_BYTES {
        return;
    }
    let text = String::from_utf8_lossy(data);
    if let Some(cmd) = ClientCommand::parse(&text) {
        let json = serde_json::to_string(&cmd).expect("serialise a command");
        assert_eq!(ClientCommand::parse(&json), Some(cmd), "{json}");
    }
    if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
        let json = frame.to_json();
        assert!(!json.is_empty());
        let back: ServerFrame = serde_json::from_str(&json).expect("to_json reads back");
        assert_eq!(back, frame, "{json}");
    }
});
