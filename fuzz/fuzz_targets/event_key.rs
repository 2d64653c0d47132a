//! EventKey → scene → fd: `scene_from_event_key` on the input (UTF-8,
//! lossy) and `Fd::from_scene` on the scene it gives, and on the first four
//! bytes read as a u32 (so every scene value is reached). Invariants: a
//! scene is the key's digits and reads back from `n` and `qrscene_n`; a
//! login fd is its own scene, in the node/random layout; and a SCAN event
//! carrying the key (through `reply::event_body`) scans as that scene.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::wechat::reply;
use protocol::wechat::xml::Message;
use wechat_scan_login_fuzz::{check_event_key, check_message, check_scene};

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..4) {
        let scene = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let _ = check_scene(scene);
    }
    let key = String::from_utf8_lossy(data);
    let scene = check_event_key(&key);
    for event in ["SCAN", "subscribe"] {
        let body = reply::event_body("gh_x", "openid", 1, event, &key, Some("t"));
        let m = Message::parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("event body does not parse ({e}): {body:?}"));
        check_message(&m);
        let want = if event == "SCAN" || key.starts_with("qrscene_") {
            scene
        } else {
            None
        };
        assert_eq!(m.qr_scan().map(|q| q.scene), want, "{event} {key:?}");
    }
});
