//! Checks shared by the fuzz targets: each parses what it is given and
//! asserts the cheap invariants that hold for every accepted input. Any
//! `Err` from the code under test is fine; a panic (or a failed assertion
//! here) is a bug.

use protocol::fd::Fd;
use protocol::wechat::reply;
use protocol::wechat::scene_from_event_key;
use protocol::wechat::xml::{
    EncryptedEnvelope, Event, Fields, MAX_FIELD_BYTES, MAX_FIELDS, Message, MessageKind,
};

/// The EncodingAESKey and appid of WeChat's published test vectors (the
/// ones `protocol::wechat::crypto`'s tests use).
pub const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const APPID: &str = "wxb11529c136998cb6";

/// `Fields::parse`, `Message::from_fields` and `Message::parse` on one
/// body, with the invariants of an accepted document.
pub fn check_callback_body(body: &[u8]) -> Option<Message> {
    let parsed = Fields::parse(body);
    let direct = Message::parse(body);
    let fields = match parsed {
        Ok(f) => f,
        Err(e) => {
            // Message::parse fails the same way when the fields do.
            assert_eq!(direct, Err(e));
            return None;
        }
    };
    check_fields(&fields);
    let from_fields = Message::from_fields(&fields);
    assert_eq!(from_fields, direct, "Message::parse != from_fields(parse)");
    check_envelope(&fields);
    let message = from_fields.ok()?;
    check_message(&message);
    Some(message)
}

/// The limits `Fields::parse` promises.
pub fn check_fields(fields: &Fields) {
    let mut count = 0;
    for (name, value) in fields.iter() {
        count += 1;
        assert!(value.len() <= MAX_FIELD_BYTES, "field {name} too large");
        // Not asserted: a non-empty name. quick-xml does not check names,
        // so `<xml><\r/></xml>` is accepted with a field named "" (found
        // by this target; harmless, as no message field has that name).
    }
    assert!(count <= MAX_FIELDS);
    if let Some((first, value)) = fields.iter().next() {
        assert_eq!(fields.get(first), Some(value), "get returns the first");
    }
}

/// `EncryptedEnvelope::from_fields`, and the envelope written back with
/// `reply::encrypted_post` reads back the same.
pub fn check_envelope(fields: &Fields) -> Option<EncryptedEnvelope> {
    let env = EncryptedEnvelope::from_fields(fields)?;
    assert_eq!(
        fields.get("Encrypt").map(str::trim),
        Some(env.encrypt.as_str())
    );
    assert_eq!(env.to_user.as_deref(), fields.get("ToUserName"));
    if let Some(to_user) = &env.to_user {
        let again = Fields::parse(reply::encrypted_post(to_user, &env.encrypt).as_bytes())
            .expect("encrypted_post output parses");
        assert_eq!(EncryptedEnvelope::from_fields(&again).as_ref(), Some(&env));
    }
    Some(env)
}

/// A typed message: its scan is consistent with the `EventKey` rules, the
/// dedupe key is built, and text messages and QR events written back with
/// `reply` parse back equal.
pub fn check_message(m: &Message) {
    let _ = m.dedupe_key();
    let qr = m.qr_scan();
    if let Some(scan) = &qr {
        assert_ne!(scan.scene, 0);
    }
    match m.login_scan() {
        Some(login) => {
            let qr = qr.as_ref().expect("a login scan is a QR scan");
            assert_eq!(login.fd.get(), qr.scene);
            assert_eq!(login.ticket, qr.ticket);
            assert_eq!(Fd::from_scene(qr.scene), Some(login.fd));
        }
        None => {
            if let Some(scan) = &qr {
                assert_eq!(Fd::from_scene(scan.scene), None);
            }
        }
    }
    match &m.kind {
        MessageKind::Event(Event::Scan { event_key, .. }) => {
            assert_eq!(qr.map(|q| q.scene), scene_from_event_key(event_key));
        }
        MessageKind::Event(Event::Subscribe {
            event_key: Some(k), ..
        }) if k.starts_with("qrscene_") => {
            assert_eq!(qr.map(|q| q.scene), scene_from_event_key(k));
        }
        MessageKind::Event(Event::Subscribe { .. }) => assert_eq!(qr, None),
        _ => {}
    }
    // Written back the way the simulator writes WeChat's bodies.
    let rebuilt = match &m.kind {
        MessageKind::Text { content } => Some(reply::text_message_body(
            &m.to_user,
            &m.from_user,
            m.create_time,
            content,
            0,
        )),
        MessageKind::Event(e @ (Event::Subscribe { .. } | Event::Scan { .. })) => {
            let ticket = match e {
                Event::Subscribe { ticket, .. } | Event::Scan { ticket, .. } => ticket.as_deref(),
                _ => None,
            };
            Some(reply::event_body(
                &m.to_user,
                &m.from_user,
                m.create_time,
                e.name(),
                e.event_key().unwrap_or_default(),
                ticket,
            ))
        }
        _ => None,
    };
    if let Some(body) = rebuilt {
        let back = Message::parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("rebuilt body does not parse ({e}): {body:?}"));
        assert_eq!(
            (&back.to_user, &back.from_user, back.create_time, &back.kind),
            (&m.to_user, &m.from_user, m.create_time, &m.kind),
            "rebuilt body {body:?}"
        );
    }
}

/// `scene_from_event_key`, then `Fd::from_scene` on what it gives.
pub fn check_event_key(key: &str) -> Option<u32> {
    let scene = scene_from_event_key(key);
    if let Some(n) = scene {
        assert_ne!(n, 0);
        let digits = key.strip_prefix("qrscene_").unwrap_or(key);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{key:?}");
        assert_eq!(digits.parse::<u64>().ok(), Some(u64::from(n)), "{key:?}");
        assert_eq!(scene_from_event_key(&n.to_string()), Some(n));
        assert_eq!(scene_from_event_key(&format!("qrscene_{n}")), Some(n));
        check_scene(n);
    }
    scene
}

/// `Fd::from_scene`: a login fd is its own scene, in the documented layout.
pub fn check_scene(scene: u32) -> Option<Fd> {
    let fd = Fd::from_scene(scene);
    match fd {
        Some(fd) => {
            assert_eq!(fd.get(), scene);
            assert_eq!(Fd::from_scene(fd.get()), Some(fd));
            assert!(fd.node() <= protocol::fd::MAX_NODE_ID);
            let r = scene & ((1 << protocol::fd::NODE_SHIFT) - 1);
            assert!(r >= protocol::fd::MIN_RANDOM);
            assert_eq!(Fd::new(fd.node(), r), Some(fd));
            assert_eq!(fd.to_string(), scene.to_string());
            assert!(scene <= i32::MAX as u32, "fits WeChat's signed scene_id");
        }
        None => {
            assert!(
                scene >> protocol::fd::NODE_SHIFT > u32::from(protocol::fd::MAX_NODE_ID)
                    || scene & ((1 << protocol::fd::NODE_SHIFT) - 1) < protocol::fd::MIN_RANDOM,
                "scene {scene} is in the layout but not an fd"
            );
        }
    }
    fd
}
