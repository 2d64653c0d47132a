//! Safe-mode envelopes in both directions: [`open`] decrypts an incoming
//! `Encrypt` field (current key, then the previous one, appid checked) and
//! [`Wrap::seal`] turns a [`Reply`] into the HTTP body WeChat reads,
//! encrypted with the very key that opened the request.

use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::{encrypted_envelope, text_reply};
use protocol::wechat::signature;

use crate::config::Settings;

/// What the callback answers to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to say: the body `success` (WeChat shows nothing).
    Success,
    /// A passive text reply to the user.
    Text(String),
}

impl Reply {
    /// The stored form (`None` = [`Reply::Success`]).
    pub fn into_stored(self) -> Option<String> {
        match self {
            Reply::Success => None,
            Reply::Text(t) => Some(t),
        }
    }

    /// Back from the stored form.
    pub fn from_stored(stored: Option<String>) -> Reply {
        stored.map_or(Reply::Success, Reply::Text)
    }
}

/// How the reply must be wrapped: plain, or encrypted with the key (and for
/// the appid) that opened the request.
#[derive(Debug, Clone)]
pub enum Wrap {
    Plain,
    Encrypted { key: AesKey, appid: String },
}

/// A decrypted message and the wrap its reply needs.
pub struct Opened {
    pub plain: Vec<u8>,
    pub wrap: Wrap,
    /// True when only `--encoding-aes-key-previous` opened it.
    pub used_previous_key: bool,
}

/// Decrypts `encrypt` with the current key, else the previous one; the
/// appid inside must be `--app-id` when that is set.
pub fn open(settings: &Settings, current: &AesKey, encrypt: &str) -> Result<Opened, String> {
    let try_key = |key: &AesKey| -> Result<(Vec<u8>, String), String> {
        let d = key.decrypt(encrypt).map_err(|e| e.to_string())?;
        if let Some(app_id) = &settings.app_id
            && &d.appid != app_id
        {
            return Err("appid does not match --app-id".into());
        }
        Ok((d.message, d.appid))
    };
    let (plain, appid, key, used_previous_key) = match try_key(current) {
        Ok((m, a)) => (m, a, current.clone(), false),
        Err(first) => match &settings.aes_key_previous {
            Some(prev) => match try_key(prev) {
                Ok((m, a)) => (m, a, prev.clone(), true),
                Err(_) => return Err(first),
            },
            None => return Err(first),
        },
    };
    Ok(Opened {
        plain,
        wrap: Wrap::Encrypted { key, appid },
        used_previous_key,
    })
}

impl Wrap {
    /// The HTTP body answering a message from `from_user` to `to_user`:
    /// `success`, or a text reply encrypted exactly when the request was.
    pub fn seal(
        &self,
        token: &str,
        reply: &Reply,
        from_user: &str,
        to_user: &str,
        now: i64,
    ) -> String {
        let Reply::Text(content) = reply else {
            return "success".to_string();
        };
        let xml = text_reply(from_user, to_user, now, content);
        match self {
            Wrap::Plain => xml,
            Wrap::Encrypted { key, appid } => {
                let random: [u8; 16] = rand::random::<[u8; 16]>()
                    .map(|b| b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(b) % 36]);
                let encrypt = key.encrypt(xml.as_bytes(), appid, &random);
                let timestamp = now.to_string();
                let nonce = rand::random::<u32>().to_string();
                let sig = signature::msg_signature(token, &timestamp, &nonce, &encrypt);
                encrypted_envelope(&encrypt, &sig, &timestamp, &nonce)
            }
        }
    }
}
