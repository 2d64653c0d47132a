//! Callback XML: `Fields::parse`, `Message::parse` / `Message::from_fields`
//! (and `EncryptedEnvelope::from_fields` on the same fields). Invariants:
//! the two ways to a message agree, the field limits hold, a QR scan agrees
//! with `scene_from_event_key` and `Fd::from_scene`, and text messages and
//! QR events written back with `protocol::wechat::reply` parse back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The callback refuses larger bodies before parsing.
    if data.len() > protocol::wechat::MAX_BODY_BYTES {
        return;
    }
    let _ = wechat_scan_login_fuzz::check_callback_body(data);
});
