//! The phone: `POST /sim/scan` scans a ticket as a WeChat user would, and
//! the simulator delivers to `--callback-url` what WeChat's servers
//! deliver: a signed `subscribe` or `SCAN` event (encrypted in safe mode),
//! with WeChat's timeout and retry policy (the same request every attempt).
//! `POST /sim/message` sends a text message from a user the same way (the
//! `1` that confirms a login with `--confirm-login`).
//! The passive reply is read back the way WeChat reads it (signature and
//! decryption checked, addressed to the right user) and returned as JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_kit::http::{Response, json};
use hyper::StatusCode;
use protocol::wechat::reply::{encrypted_post, event_body, text_message_body};
use protocol::wechat::signature;
use protocol::wechat::xml::{EncryptedEnvelope, Fields, Message, MessageKind};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::respond::sim_error;
use crate::state::{SimState, unix_now};
use crate::tickets::Lookup;
use crate::users::random_openid;

/// Largest callback answer read.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Longest openid or nickname accepted in a scan.
const MAX_NAME_LEN: usize = 128;

/// The body of `POST /sim/scan` (JSON, whatever the content type says).
#[derive(Debug, Deserialize)]
pub struct ScanRequest {
    pub ticket: String,
    #[serde(default)]
    pub openid: Option<String>,
    /// Whether the user already follows the account (`SCAN`) or not
    /// (`subscribe`); absent: the simulator remembers.
    #[serde(default)]
    pub subscribed: Option<bool>,
    #[serde(default)]
    pub nickname: Option<String>,
}

/// How a delivery went, as the phone saw it (shared by `/sim/scan` and
/// `/sim/message` answers).
#[derive(Debug, Default, Serialize)]
pub struct Seen {
    /// The passive reply's text, decrypted; "" for `success` or nothing.
    pub reply: String,
    /// The callback's HTTP status (of the last attempt), if it answered.
    pub status: Option<u16>,
    pub attempts: u32,
    /// The callback's raw answer body (of the last attempt).
    pub raw: String,
    /// The reply's `MsgType` when it is not `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_type: Option<String>,
    /// Why WeChat would show "this account cannot serve you right now".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer of `POST /sim/scan`.
#[derive(Debug, Serialize)]
pub struct ScanAnswer {
    #[serde(flatten)]
    pub seen: Seen,
    pub event: &'static str,
    pub scene: Option<u32>,
    pub scene_str: Option<String>,
    pub event_key: String,
    pub openid: String,
    pub ticket: String,
    pub encrypted: bool,
}

/// The body of `POST /sim/message`.
#[derive(Debug, Deserialize)]
pub struct MessageRequest {
    pub openid: String,
    pub content: String,
}

/// The answer of `POST /sim/message`.
#[derive(Debug, Serialize)]
pub struct MessageAnswer {
    #[serde(flatten)]
    pub seen: Seen,
    pub openid: String,
    pub msg_id: u64,
    pub encrypted: bool,
}

/// Longest text message sent (WeChat's limit is about 2,048 bytes).
const MAX_CONTENT_BYTES: usize = 2048;

/// One callback request, sent the same way on every attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The first callback URL with the signed query.
    pub url: url::Url,
    /// Every callback URL with the same query (`url` first).
    pub urls: Vec<url::Url>,
    pub body: String,
    pub encrypted: bool,
}

/// How the deliveries went.
#[derive(Debug)]
pub struct Delivered {
    pub attempts: u32,
    pub outcome: Outcome,
}

/// The last attempt's result.
#[derive(Debug)]
pub enum Outcome {
    /// The callback answered with this status and body.
    Answered { status: u16, body: String },
    /// No answer within the timeout.
    Timeout,
    /// Could not connect or the connection broke.
    Unreachable(String),
}

/// The passive reply as WeChat would show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub text: String,
    pub msg_type: Option<String>,
}

/// `POST /sim/scan`.
pub async fn scan(state: Arc<SimState>, body: &[u8]) -> Response {
    let req: ScanRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return sim_error(StatusCode::BAD_REQUEST, "bad_json", e),
    };
    let ticket = req.ticket.trim();
    if ticket.is_empty() {
        return sim_error(
            StatusCode::BAD_REQUEST,
            "missing_ticket",
            "ticket is required",
        );
    }
    let openid = match req.openid.as_deref().map(str::trim) {
        None | Some("") => random_openid(),
        Some(o) if o.len() <= MAX_NAME_LEN && !o.chars().any(char::is_control) => o.to_string(),
        Some(_) => {
            return sim_error(
                StatusCode::BAD_REQUEST,
                "bad_openid",
                "openid must be 1 to 128 characters without control characters",
            );
        }
    };
    let nickname = match req.nickname {
        Some(n) if n.chars().count() > MAX_NAME_LEN => {
            return sim_error(
                StatusCode::BAD_REQUEST,
                "bad_nickname",
                "nickname is too long",
            );
        }
        Some(n) if !n.trim().is_empty() => Some(n),
        _ => None,
    };
    let t = match state.tickets.get(ticket, Instant::now()) {
        Lookup::Live(t) => t,
        Lookup::Expired(_) => {
            state.stats.scans_refused.inc();
            return sim_error(
                StatusCode::GONE,
                "ticket_expired",
                "the QR code has expired",
            );
        }
        Lookup::Unknown => {
            state.stats.scans_refused.inc();
            return sim_error(StatusCode::NOT_FOUND, "unknown_ticket", "no such QR code");
        }
    };
    state.stats.scans.inc();
    let now = unix_now();
    // The user exists (and user/info answers) before the callback arrives.
    let subscribe = state
        .users
        .scan(&openid, nickname, req.subscribed, &t.scene, now);
    let event = if subscribe { "subscribe" } else { "SCAN" };
    let event_key = t.scene.event_key(subscribe);
    let xml = event_body(
        &state.settings.account,
        &openid,
        now,
        event,
        &event_key,
        Some(&t.ticket),
    );
    let delivery = prepare(&state.settings, &xml, &openid, now);
    tracing::info!(event, %event_key, openid = %openid, encrypted = delivery.encrypted, "scan: delivering callback");

    let (status, seen) = deliver_and_read(&state, &delivery, &openid).await;
    let answer = ScanAnswer {
        seen,
        event,
        scene: t.scene.id(),
        scene_str: t.scene.str().map(str::to_string),
        event_key,
        openid,
        ticket: t.ticket.to_string(),
        encrypted: delivery.encrypted,
    };
    json(status, serde_json::to_string(&answer).unwrap_or_default())
}

/// `POST /sim/message`: a text message from `openid` to the account.
pub async fn message(state: Arc<SimState>, body: &[u8]) -> Response {
    let req: MessageRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return sim_error(StatusCode::BAD_REQUEST, "bad_json", e),
    };
    let openid = req.openid.trim().to_string();
    if openid.is_empty() || openid.len() > MAX_NAME_LEN || openid.chars().any(char::is_control) {
        return sim_error(
            StatusCode::BAD_REQUEST,
            "bad_openid",
            "openid must be 1 to 128 characters without control characters",
        );
    }
    if req.content.is_empty() || req.content.len() > MAX_CONTENT_BYTES {
        return sim_error(
            StatusCode::BAD_REQUEST,
            "bad_content",
            "content must be 1 to 2048 bytes",
        );
    }
    let now = unix_now();
    let msg_id: u64 = rand::rng().random_range(1_000_000_000_000_000..u64::MAX / 2);
    let xml = text_message_body(&state.settings.account, &openid, now, &req.content, msg_id);
    let delivery = prepare(&state.settings, &xml, &openid, now);
    tracing::info!(openid = %openid, encrypted = delivery.encrypted, "message: delivering callback");
    let (status, seen) = deliver_and_read(&state, &delivery, &openid).await;
    let answer = MessageAnswer {
        seen,
        openid,
        msg_id,
        encrypted: delivery.encrypted,
    };
    json(status, serde_json::to_string(&answer).unwrap_or_default())
}

/// Delivers (with retries) and reads the reply the way WeChat shows it:
/// 200 with what the user would see, or 502/504 with why WeChat would
/// show "this account cannot serve you right now".
async fn deliver_and_read(
    state: &Arc<SimState>,
    delivery: &Delivery,
    openid: &str,
) -> (StatusCode, Seen) {
    // Delivery runs on its own, so it completes (retries included) even if
    // whoever asked for it goes away.
    let task_state = state.clone();
    let task_delivery = delivery.clone();
    let delivered = tokio::spawn(async move { deliver(&task_state, &task_delivery).await }).await;
    let delivered = match delivered {
        Ok(d) => d,
        Err(e) => {
            let seen = Seen {
                error: Some("internal"),
                message: Some(e.to_string()),
                ..Seen::default()
            };
            return (StatusCode::INTERNAL_SERVER_ERROR, seen);
        }
    };
    let mut seen = Seen {
        attempts: delivered.attempts,
        ..Seen::default()
    };
    let status = match delivered.outcome {
        Outcome::Answered { status, body } => {
            seen.status = Some(status);
            let result = if (200..300).contains(&status) {
                read_reply(&state.settings, &body, delivery.encrypted, openid)
                    .map_err(|m| ("bad_reply", m))
            } else {
                Err((
                    "callback_status",
                    format!("the callback answered HTTP {status}"),
                ))
            };
            seen.raw = body;
            match result {
                Ok(reply) => {
                    seen.reply = reply.text;
                    seen.msg_type = reply.msg_type;
                    StatusCode::OK
                }
                Err((code, message)) => {
                    seen.error = Some(code);
                    seen.message = Some(message);
                    StatusCode::BAD_GATEWAY
                }
            }
        }
        Outcome::Timeout => {
            seen.error = Some("callback_timeout");
            seen.message = Some(format!(
                "no answer within {} ms, {} attempts",
                state.settings.callback_timeout.as_millis(),
                delivered.attempts
            ));
            StatusCode::GATEWAY_TIMEOUT
        }
        Outcome::Unreachable(e) => {
            seen.error = Some("callback_unreachable");
            seen.message = Some(e);
            StatusCode::BAD_GATEWAY
        }
    };
    if status == StatusCode::OK {
        state.stats.callbacks_delivered.inc();
    } else {
        state.stats.callbacks_failed.inc();
        tracing::warn!(
            error = seen.error,
            message = seen.message.as_deref(),
            attempts = seen.attempts,
            "callback failed"
        );
    }
    (status, seen)
}

/// Builds the callback request: signed query, plain or encrypted body.
pub fn prepare(settings: &Settings, xml: &str, openid: &str, now: i64) -> Delivery {
    let mut rng = rand::rng();
    let timestamp = now.to_string();
    let nonce = rng.random_range(100_000_000u32..=u32::MAX).to_string();
    let token = settings.token.expose();
    let mut url = settings.callback_url.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair(
            "signature",
            &signature::signature(token, &timestamp, &nonce),
        )
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce)
        .append_pair("openid", openid);
    }
    match &settings.aes_key {
        None => Delivery {
            urls: same_query(&settings.callback_urls, &url),
            url,
            body: xml.to_string(),
            encrypted: false,
        },
        Some(key) => {
            let random: [u8; 16] = rng.random();
            let encrypt = key.encrypt(xml.as_bytes(), &settings.app_id, &random);
            let msg_signature = signature::msg_signature(token, &timestamp, &nonce, &encrypt);
            url.query_pairs_mut()
                .append_pair("encrypt_type", "aes")
                .append_pair("msg_signature", &msg_signature);
            Delivery {
                urls: same_query(&settings.callback_urls, &url),
                url,
                body: encrypted_post(&settings.account, &encrypt),
                encrypted: true,
            }
        }
    }
}

/// `urls`, each with `signed`'s query.
fn same_query(urls: &[url::Url], signed: &url::Url) -> Vec<url::Url> {
    urls.iter()
        .map(|u| {
            let mut u = u.clone();
            u.set_query(signed.query());
            u
        })
        .collect()
}

/// Which callback URL the next delivery starts at (round robin).
static NEXT_URL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sends the request until it gets an answer that is not 5xx, at most
/// `1 + callback_retries` times, each within `callback_timeout`; with
/// several callback URLs, deliveries take turns and each retry goes to
/// the next one.
pub async fn deliver(state: &SimState, delivery: &Delivery) -> Delivered {
    let timeout = state.settings.callback_timeout;
    let max_attempts = state.settings.callback_retries.saturating_add(1);
    let mut outcome = Outcome::Timeout;
    let mut attempts = 0;
    let start = NEXT_URL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    while attempts < max_attempts {
        let n = delivery.urls.len().max(1);
        let url = delivery
            .urls
            .get((start + attempts as usize) % n)
            .unwrap_or(&delivery.url);
        attempts += 1;
        state.stats.callback_attempts.inc();
        outcome = attempt(&state.http, url, delivery, timeout).await;
        match &outcome {
            Outcome::Answered { status, .. } if *status < 500 => break,
            other => {
                tracing::info!(attempt = attempts, outcome = ?other, "callback attempt failed")
            }
        }
    }
    Delivered { attempts, outcome }
}

async fn attempt(
    http: &reqwest::Client,
    url: &url::Url,
    delivery: &Delivery,
    timeout: Duration,
) -> Outcome {
    let send = async {
        let mut resp = http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(delivery.body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            let room = MAX_REPLY_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room < chunk.len() {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok((status, body))) => Outcome::Answered {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        Ok(Err(e)) if e.is_timeout() => Outcome::Timeout,
        // Without the URL: its query holds the signature that vouches for
        // this body (a replay would need it), so it stays out of logs.
        Ok(Err(e)) => Outcome::Unreachable(error_chain(&e.without_url())),
        Err(_) => Outcome::Timeout,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Reads a callback's answer as WeChat does: `success` or nothing means no
/// reply; otherwise a passive reply addressed to `openid` from the account,
/// encrypted exactly when the request was (signature and appid checked).
pub fn read_reply(
    settings: &Settings,
    raw: &str,
    sent_encrypted: bool,
    openid: &str,
) -> Result<Reply, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed == "success" {
        return Ok(Reply::default());
    }
    let fields =
        Fields::parse(trimmed.as_bytes()).map_err(|e| format!("reply is not valid XML: {e}"))?;
    let message = match EncryptedEnvelope::from_fields(&fields) {
        Some(env) => {
            let key = match (&settings.aes_key, sent_encrypted) {
                (Some(k), true) => k,
                _ => return Err("encrypted reply to a plain message".into()),
            };
            let get = |name: &str| fields.get(name).map(str::trim).unwrap_or_default();
            let (sig, ts, nonce) = (get("MsgSignature"), get("TimeStamp"), get("Nonce"));
            if sig.is_empty() || ts.is_empty() || nonce.is_empty() {
                return Err("encrypted reply without MsgSignature, TimeStamp and Nonce".into());
            }
            if !signature::verify_msg(settings.token.expose(), ts, nonce, &env.encrypt, sig) {
                return Err("reply MsgSignature does not match".into());
            }
            let plain = key
                .decrypt(&env.encrypt)
                .map_err(|e| format!("cannot decrypt the reply: {e}"))?;
            if plain.appid != settings.app_id {
                return Err(format!(
                    "reply encrypted for appid {:?}, not {:?}",
                    plain.appid, settings.app_id
                ));
            }
            Message::parse(&plain.message)
                .map_err(|e| format!("decrypted reply is not a message: {e}"))?
        }
        None if sent_encrypted => return Err("plain reply to an encrypted message".into()),
        None => {
            Message::from_fields(&fields).map_err(|e| format!("reply is not a message: {e}"))?
        }
    };
    if message.to_user != openid {
        return Err(format!(
            "reply ToUserName {:?} is not the user's openid {openid:?}",
            message.to_user
        ));
    }
    if message.from_user != settings.account {
        return Err(format!(
            "reply FromUserName {:?} is not the account {:?}",
            message.from_user, settings.account
        ));
    }
    Ok(match message.kind {
        MessageKind::Text { content } => Reply {
            text: content,
            msg_type: None,
        },
        other => Reply {
            text: String::new(),
            msg_type: Some(msg_type_name(&other).to_string()),
        },
    })
}

/// The `MsgType` of a parsed message.
fn msg_type_name(kind: &MessageKind) -> &str {
    match kind {
        MessageKind::Text { .. } => "text",
        MessageKind::Image { .. } => "image",
        MessageKind::Voice { .. } => "voice",
        MessageKind::Video { short: false, .. } => "video",
        MessageKind::Video { short: true, .. } => "shortvideo",
        MessageKind::Location { .. } => "location",
        MessageKind::Link { .. } => "link",
        MessageKind::Event(_) => "event",
        MessageKind::Other { msg_type } => msg_type,
    }
}

/// Query value of a callback URL (for tests).
pub fn query_value(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser;
    use protocol::wechat::crypto::AesKey;
    use protocol::wechat::reply::{encrypted_envelope, text_reply};

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: Config,
    }

    fn settings(aes: bool) -> Settings {
        let mut args = vec![
            "x",
            "--app-id",
            "wxapp",
            "--app-secret",
            "s",
            "--token",
            "tok",
            "--callback-url",
            "http://127.0.0.1:1/wechat?x=1",
        ];
        if aes {
            args.extend(["--encoding-aes-key", KEY]);
        }
        T::try_parse_from(args).unwrap().c.settings().unwrap()
    }

    #[test]
    fn plain_delivery_is_signed() {
        let s = settings(false);
        let xml = event_body("gh_simulator", "oU", 100, "SCAN", "5", Some("t+/="));
        let d = prepare(&s, &xml, "oU", 100);
        assert!(!d.encrypted);
        assert_eq!(d.body, xml);
        let q = |n| query_value(&d.url, n).unwrap();
        assert_eq!(q("x"), "1");
        assert_eq!(q("timestamp"), "100");
        assert_eq!(q("openid"), "oU");
        assert!(signature::verify(
            "tok",
            &q("timestamp"),
            &q("nonce"),
            &q("signature")
        ));
        assert!(query_value(&d.url, "encrypt_type").is_none());
    }

    #[test]
    fn safe_mode_delivery_is_encrypted_and_signed() {
        let s = settings(true);
        let xml = event_body(
            "gh_simulator",
            "oU",
            100,
            "subscribe",
            "qrscene_5",
            Some("t"),
        );
        let d = prepare(&s, &xml, "oU", 100);
        assert!(d.encrypted);
        let q = |n| query_value(&d.url, n).unwrap();
        assert_eq!(q("encrypt_type"), "aes");
        assert!(signature::verify(
            "tok",
            &q("timestamp"),
            &q("nonce"),
            &q("signature")
        ));
        let f = Fields::parse(d.body.as_bytes()).unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_simulator"));
        let env = EncryptedEnvelope::from_fields(&f).unwrap();
        assert!(signature::verify_msg(
            "tok",
            &q("timestamp"),
            &q("nonce"),
            &env.encrypt,
            &q("msg_signature")
        ));
        let plain = AesKey::from_encoding_aes_key(KEY)
            .unwrap()
            .decrypt(&env.encrypt)
            .unwrap();
        assert_eq!(plain.appid, "wxapp");
        assert_eq!(plain.message, xml.as_bytes());
    }

    #[test]
    fn plain_replies() {
        let s = settings(false);
        assert_eq!(read_reply(&s, "", false, "oU"), Ok(Reply::default()));
        assert_eq!(
            read_reply(&s, " success\n", false, "oU"),
            Ok(Reply::default())
        );
        let xml = text_reply("oU", "gh_simulator", 1, "Alice, login successful!");
        assert_eq!(
            read_reply(&s, &xml, false, "oU").unwrap().text,
            "Alice, login successful!"
        );
        assert!(read_reply(&s, &xml, false, "oOther").is_err());
        let wrong_from = text_reply("oU", "gh_other", 1, "x");
        assert!(read_reply(&s, &wrong_from, false, "oU").is_err());
        assert!(read_reply(&s, "<xml><a>", false, "oU").is_err());
        assert!(read_reply(&s, "hello", false, "oU").is_err());
    }

    #[test]
    fn encrypted_replies() {
        let s = settings(true);
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        let inner = text_reply("oU", "gh_simulator", 1, "你好 Alice");
        let enc = key.encrypt(inner.as_bytes(), "wxapp", &[3; 16]);
        let sig = signature::msg_signature("tok", "123", "n1", &enc);
        let env = encrypted_envelope(&enc, &sig, "123", "n1");
        assert_eq!(read_reply(&s, &env, true, "oU").unwrap().text, "你好 Alice");
        // Wrong signature, wrong appid, plain reply to an encrypted request.
        let bad_sig = encrypted_envelope(&enc, "0000", "123", "n1");
        assert!(read_reply(&s, &bad_sig, true, "oU").is_err());
        let enc2 = key.encrypt(inner.as_bytes(), "wxother", &[3; 16]);
        let sig2 = signature::msg_signature("tok", "123", "n1", &enc2);
        let env2 = encrypted_envelope(&enc2, &sig2, "123", "n1");
        assert!(
            read_reply(&s, &env2, true, "oU")
                .unwrap_err()
                .contains("appid")
        );
        assert!(read_reply(&s, &inner, true, "oU").is_err());
        // "success" is fine in safe mode too.
        assert_eq!(read_reply(&s, "success", true, "oU"), Ok(Reply::default()));
    }

    #[test]
    fn scan_request_shapes() {
        let r: ScanRequest = serde_json::from_str(r#"{"ticket":"t"}"#).unwrap();
        assert!(r.openid.is_none() && r.subscribed.is_none() && r.nickname.is_none());
        let r: ScanRequest = serde_json::from_str(
            r#"{"ticket":"t","openid":"o","subscribed":false,"nickname":"N"}"#,
        )
        .unwrap();
        assert_eq!(r.subscribed, Some(false));
    }
}
