//! Turns an HTTP callback into a trusted [`Message`], or a rejection.
//!
//! Checks, in the contract's order (the body size is enforced while
//! reading it, before this runs): `signature` over token/timestamp/nonce
//! and the timestamp's age (403), then the XML (400; any DOCTYPE refused by
//! the parser), then the message mode: in `safe` mode a plaintext POST is
//! refused (403: its `signature` does not cover the body, so whoever saw
//! one callback URL could sign a body of their own with it); for
//! `encrypt_type=aes`, `msg_signature` over the `Encrypt` field (403) and
//! decryption (`envelope::open`, 400). The replay rule (same signature,
//! other body) needs the store and is applied by the handler with
//! [`Inbound::replay_key`].
//!
//! **Invariant:** nothing is recorded, sent or replied for a request that
//! did not pass every check here.

use protocol::wechat::signature;
use protocol::wechat::xml::{EncryptedEnvelope, Fields, Message, XmlError};

use crate::config::{MessageMode, Settings};
use crate::envelope::{self, Wrap};

/// Why a callback was refused; [`Rejection::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("body larger than 1 MiB")]
    TooLarge,
    #[error("body not received in time")]
    BodyTimeout,
    #[error("signature check failed: {0}")]
    BadSignature(&'static str),
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    #[error("plaintext message refused: --message-mode is safe")]
    PlaintextRefused,
    #[error("signature already used with another body (replay)")]
    Replay,
    #[error("invalid XML: {0}")]
    BadXml(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

impl Rejection {
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BadSignature(_)
            | Rejection::StaleTimestamp
            | Rejection::PlaintextRefused
            | Rejection::Replay => StatusCode::FORBIDDEN,
            Rejection::BadXml(_) | Rejection::Decrypt(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<XmlError> for Rejection {
    fn from(e: XmlError) -> Self {
        Rejection::BadXml(e.to_string())
    }
}

/// A verified callback.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: Message,
    pub wrap: Wrap,
    /// True when only `--encoding-aes-key-previous` opened it.
    pub used_previous_key: bool,
    /// The signature that vouched for the request (`msg_signature` when
    /// encrypted, `signature` otherwise): a second request with it and
    /// another body is a replay.
    pub replay_key: String,
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks `signature`, `timestamp` and `nonce` (the GET check and the
/// first POST check).
pub fn check_signature(settings: &Settings, query: &[(String, String)]) -> Result<(), Rejection> {
    let (Some(sig), Some(ts), Some(nonce)) = (
        param(query, "signature"),
        param(query, "timestamp"),
        param(query, "nonce"),
    ) else {
        return Err(Rejection::BadSignature(
            "signature, timestamp or nonce missing",
        ));
    };
    if signature::verify(settings.token.expose(), ts, nonce, sig) {
        Ok(())
    } else {
        Err(Rejection::BadSignature(
            "signature does not match (is the Token the one set in the console?)",
        ))
    }
}

/// Verifies (and decrypts) a POST body.
pub fn verify_post(
    settings: &Settings,
    query: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Result<Inbound, Rejection> {
    check_signature(settings, query)?;
    let ts: i64 = param(query, "timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or(Rejection::StaleTimestamp)?;
    if now.abs_diff(ts) > settings.timestamp_tolerance.as_secs() {
        return Err(Rejection::StaleTimestamp);
    }
    let fields = Fields::parse(body)?;
    let encrypted = param(query, "encrypt_type").is_some_and(|t| t.eq_ignore_ascii_case("aes"));
    if !encrypted {
        if settings.message_mode == MessageMode::Safe {
            return Err(Rejection::PlaintextRefused);
        }
        return Ok(Inbound {
            message: Message::from_fields(&fields)?,
            wrap: Wrap::Plain,
            used_previous_key: false,
            replay_key: param(query, "signature").unwrap_or_default().to_string(),
        });
    }
    let Some(current) = &settings.aes_key else {
        return Err(Rejection::Decrypt(
            "encrypted message but no --encoding-aes-key is set".into(),
        ));
    };
    let envelope = EncryptedEnvelope::from_fields(&fields)
        .ok_or_else(|| Rejection::BadXml("encrypt_type=aes but no Encrypt field".into()))?;
    let (Some(msg_sig), Some(ts), Some(nonce)) = (
        param(query, "msg_signature"),
        param(query, "timestamp"),
        param(query, "nonce"),
    ) else {
        return Err(Rejection::BadSignature("msg_signature missing"));
    };
    if !signature::verify_msg(
        settings.token.expose(),
        ts,
        nonce,
        &envelope.encrypt,
        msg_sig,
    ) {
        return Err(Rejection::BadSignature("msg_signature does not match"));
    }
    let opened =
        envelope::open(settings, current, &envelope.encrypt).map_err(Rejection::Decrypt)?;
    let message = Message::parse(&opened.plain)?;
    Ok(Inbound {
        message,
        wrap: opened.wrap,
        used_previous_key: opened.used_previous_key,
        replay_key: msg_sig.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use protocol::wechat::reply::event_body;
    use std::time::Duration;

    const NOW: i64 = 1_790_000_000;

    /// A plain-mode callback signed with `token` at `timestamp`, checked at
    /// [`NOW`] with the default tolerance (300 s).
    fn verify_at(timestamp: &str) -> Result<Inbound, Rejection> {
        let settings = crate::config::Config::try_parse_from(["wechat-callback", "--token", "tok"])
            .expect("flags")
            .settings()
            .expect("settings");
        assert_eq!(settings.timestamp_tolerance, Duration::from_secs(300));
        let nonce = "n0nce";
        let query = vec![
            (
                "signature".to_string(),
                signature::signature("tok", timestamp, nonce),
            ),
            ("timestamp".to_string(), timestamp.to_string()),
            ("nonce".to_string(), nonce.to_string()),
        ];
        let body = event_body("gh_test", "oUser", NOW, "SCAN", "1048577", None);
        verify_post(&settings, &query, body.as_bytes(), NOW)
    }

    /// The window is inclusive: 300 s either side passes, 301 does not.
    /// (The integration tests use ±360 s, so a clock tick between the
    /// signing and the check cannot change their outcome.)
    #[test]
    fn the_timestamp_window_is_300_seconds_either_side() {
        for ok in [NOW - 300, NOW, NOW + 300] {
            assert!(verify_at(&ok.to_string()).is_ok(), "{ok}");
        }
        for stale in [NOW - 301, NOW + 301, 0] {
            assert_eq!(
                verify_at(&stale.to_string()).err(),
                Some(Rejection::StaleTimestamp),
                "{stale}"
            );
        }
    }

    /// A signed timestamp that is not a number is stale, not a panic or a
    /// pass.
    #[test]
    fn a_signed_non_numeric_timestamp_is_stale() {
        for t in ["", "abc", "1.5e9", "99999999999999999999"] {
            assert_eq!(verify_at(t).err(), Some(Rejection::StaleTimestamp), "{t:?}");
        }
    }
}
