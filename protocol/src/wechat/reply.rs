//! XML that goes back to WeChat (passive replies, the encrypted reply
//! envelope) and, for the simulator and tests, the event bodies WeChat sends.
//!
//! Every text goes into CDATA through [`cdata`], which splits any `]]>` so no
//! text can end the section early.

use std::fmt::Write;

/// Wraps `text` in a CDATA section, splitting every `]]>` across two
/// sections so the text comes back unchanged whatever it holds.
pub fn cdata(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 12);
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
    out
}

/// A passive text reply. `to_user` is the user's openid (the request's
/// `FromUserName`), `from_user` the account (the request's `ToUserName`).
pub fn text_reply(to_user: &str, from_user: &str, create_time: i64, content: &str) -> String {
    let mut out = String::with_capacity(200 + content.len());
    let _ = write!(
        out,
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content></xml>",
        cdata(to_user),
        cdata(from_user),
        cdata(content)
    );
    out
}

/// The envelope of an encrypted passive reply.
pub fn encrypted_envelope(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    format!(
        "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{}</TimeStamp><Nonce>{}</Nonce></xml>",
        cdata(encrypt),
        cdata(msg_signature),
        xml_text(timestamp),
        cdata(nonce)
    )
}

/// The body of a safe-mode POST as WeChat sends it.
pub fn encrypted_post(to_user: &str, encrypt: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt></xml>",
        cdata(to_user),
        cdata(encrypt)
    )
}

/// A QR `subscribe` or `SCAN` event body as WeChat sends it. `event` is
/// `subscribe` or `SCAN`; `event_key` is already `qrscene_<n>` or `<n>`.
pub fn event_body(
    to_user: &str,
    from_user: &str,
    create_time: i64,
    event: &str,
    event_key: &str,
    ticket: Option<&str>,
) -> String {
    let mut out = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event>{}</Event><EventKey>{}</EventKey>",
        cdata(to_user),
        cdata(from_user),
        cdata(event),
        cdata(event_key)
    );
    if let Some(t) = ticket {
        let _ = write!(out, "<Ticket>{}</Ticket>", cdata(t));
    }
    out.push_str("</xml>");
    out
}

/// A text message body as WeChat sends it.
pub fn text_message_body(
    to_user: &str,
    from_user: &str,
    create_time: i64,
    content: &str,
    msg_id: u64,
) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId></xml>",
        cdata(to_user),
        cdata(from_user),
        cdata(content)
    )
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::xml::{Fields, Message, MessageKind, QrScan};
    use proptest::prelude::*;

    #[test]
    fn reply_round_trips_hostile_text() {
        let content = "a]]>b<![CDATA[c]]]]>&amp;<x>";
        let xml = text_reply("openid", "gh_1", 5, content);
        let f = Fields::parse(xml.as_bytes()).unwrap();
        assert_eq!(f.get("Content"), Some(content));
        assert_eq!(f.get("ToUserName"), Some("openid"));
        assert_eq!(f.get("MsgType"), Some("text"));
        assert_eq!(f.get("CreateTime"), Some("5"));
    }

    #[test]
    fn event_body_parses_as_a_scan() {
        let xml = event_body("gh", "o", 9, "subscribe", "qrscene_77", Some("t+/="));
        let m = Message::parse(xml.as_bytes()).unwrap();
        assert_eq!(
            m.qr_scan(),
            Some(QrScan {
                scene: 77,
                ticket: Some("t+/=".into())
            })
        );
    }

    #[test]
    fn envelope_fields() {
        let xml = encrypted_envelope("abc==", "sig", "123", "n");
        let f = Fields::parse(xml.as_bytes()).unwrap();
        assert_eq!(f.get("Encrypt"), Some("abc=="));
        assert_eq!(f.get("MsgSignature"), Some("sig"));
        assert_eq!(f.get("TimeStamp"), Some("123"));
        assert_eq!(f.get("Nonce"), Some("n"));
    }

    proptest! {
        #[test]
        fn any_text_survives_a_reply(content in "\\PC*", to in "[a-zA-Z0-9_-]{1,28}") {
            let xml = text_reply(&to, "gh_x", 1, &content);
            let m = Message::parse(xml.as_bytes()).unwrap();
            prop_assert_eq!(m.kind, MessageKind::Text { content: content.clone() });
            prop_assert_eq!(m.to_user, to);
        }

        #[test]
        fn any_message_round_trips(content in "\\PC*", id in any::<u64>(), t in any::<i64>()) {
            let xml = text_message_body("gh", "user", t, &content, id);
            let m = Message::parse(xml.as_bytes()).unwrap();
            prop_assert_eq!(m.create_time, t);
            prop_assert_eq!(m.msg_id, Some(id.to_string()));
            prop_assert_eq!(m.kind, MessageKind::Text { content });
        }
    }
}
