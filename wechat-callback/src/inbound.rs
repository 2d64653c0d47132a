//! Turns an HTTP callback into a trusted [`Message`], or a rejection.
//!
//! Checks, in the contract's order (the body size is enforced while
//! reading it, before this runs): `signature` over token/timestamp/nonce
//! and the timestamp's age (403), then the XML (400; any DOCTYPE refused by
//! the parser), then, for `encrypt_type=aes`, `msg_signature` over the
//! `Encrypt` field (403) and decryption with the current key, else the
//! previous one, with the appid checked (400).
//!
//! **Invariant:** nothing is recorded, sent or replied for a request that
//! did not pass every check here.

use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::{encrypted_envelope, text_reply};
use protocol::wechat::signature;
use protocol::wechat::xml::{EncryptedEnvelope, Fields, Message, XmlError};

use crate::config::Settings;

/// Why a callback was refused; [`Rejection::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("body larger than 1 MiB")]
    TooLarge,
    #[error("missing or invalid signature")]
    BadSignature,
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
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
            Rejection::BadSignature | Rejection::StaleTimestamp => StatusCode::FORBIDDEN,
            Rejection::BadXml(_) | Rejection::Decrypt(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<XmlError> for Rejection {
    fn from(e: XmlError) -> Self {
        Rejection::BadXml(e.to_string())
    }
}

/// How the reply must be wrapped: plain, or encrypted with the key (and for
/// the appid) that opened the request.
#[derive(Debug, Clone)]
pub enum Wrap {
    Plain,
    Encrypted { key: AesKey, appid: String },
}

/// A verified callback.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: Message,
    pub wrap: Wrap,
    /// True when only `--encoding-aes-key-previous` opened it.
    pub used_previous_key: bool,
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
        return Err(Rejection::BadSignature);
    };
    if signature::verify(settings.token.expose(), ts, nonce, sig) {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
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
        return Ok(Inbound {
            message: Message::from_fields(&fields)?,
            wrap: Wrap::Plain,
            used_previous_key: false,
        });
    }
    let Some(current) = &settings.aes_key else {
        // Compatible mode without a key configured here: the plaintext
        // fields are in the body too, and a plain reply is accepted.
        return match Message::from_fields(&fields) {
            Ok(message) => Ok(Inbound {
                message,
                wrap: Wrap::Plain,
                used_previous_key: false,
            }),
            Err(_) => Err(Rejection::Decrypt(
                "encrypted message but no --encoding-aes-key is set".into(),
            )),
        };
    };
    let envelope = EncryptedEnvelope::from_fields(&fields)
        .ok_or_else(|| Rejection::BadXml("encrypt_type=aes but no Encrypt field".into()))?;
    let (Some(msg_sig), Some(ts), Some(nonce)) = (
        param(query, "msg_signature"),
        param(query, "timestamp"),
        param(query, "nonce"),
    ) else {
        return Err(Rejection::BadSignature);
    };
    if !signature::verify_msg(
        settings.token.expose(),
        ts,
        nonce,
        &envelope.encrypt,
        msg_sig,
    ) {
        return Err(Rejection::BadSignature);
    }
    let open = |key: &AesKey| -> Result<(Vec<u8>, String), String> {
        let d = key.decrypt(&envelope.encrypt).map_err(|e| e.to_string())?;
        if let Some(app_id) = &settings.app_id
            && &d.appid != app_id
        {
            return Err("appid does not match --app-id".into());
        }
        Ok((d.message, d.appid))
    };
    let (plain, appid, key, used_previous_key) = match open(current) {
        Ok((m, a)) => (m, a, current.clone(), false),
        Err(first) => match &settings.aes_key_previous {
            Some(prev) => match open(prev) {
                Ok((m, a)) => (m, a, prev.clone(), true),
                Err(_) => return Err(Rejection::Decrypt(first)),
            },
            None => return Err(Rejection::Decrypt(first)),
        },
    };
    let message = Message::parse(&plain)?;
    Ok(Inbound {
        message,
        wrap: Wrap::Encrypted { key, appid },
        used_previous_key,
    })
}

/// The HTTP body answering `inbound`: `success` when there is nothing to
/// say, else a text reply, encrypted exactly when the request was.
pub fn reply_body(
    settings: &Settings,
    inbound: &Inbound,
    content: Option<&str>,
    now: i64,
) -> String {
    let Some(content) = content else {
        return "success".to_string();
    };
    let m = &inbound.message;
    let xml = text_reply(&m.from_user, &m.to_user, now, content);
    match &inbound.wrap {
        Wrap::Plain => xml,
        Wrap::Encrypted { key, appid } => {
            let random: [u8; 16] = rand::random::<[u8; 16]>()
                .map(|b| b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(b) % 36]);
            let encrypt = key.encrypt(xml.as_bytes(), appid, &random);
            let timestamp = now.to_string();
            let nonce = rand::random::<u32>().to_string();
            let sig =
                signature::msg_signature(settings.token.expose(), &timestamp, &nonce, &encrypt);
            encrypted_envelope(&encrypt, &sig, &timestamp, &nonce)
        }
    }
}
