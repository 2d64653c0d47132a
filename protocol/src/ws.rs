//! JSON text frames between a browser and `ws-gateway`.
//!
//! Server → browser frames are tagged by `message_type`, browser → server
//! commands by `cmd`. [`MAX_CLIENT_FRAME_BYTES`] bounds what a browser may
//! send.

use serde::{Deserialize, Serialize};

/// The largest frame or message a browser may send; commands are tiny.
pub const MAX_CLIENT_FRAME_BYTES: usize = 4 * 1024;

/// A frame the gateway sends to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "message_type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A QR code to show: `url` is the image, `qr_content` the string it
    /// encodes, valid for `expire_seconds`.
    QrcodeUrl {
        url: String,
        qr_content: String,
        expire_seconds: u32,
    },
    /// Someone scanned this connection's code and is asked to confirm the
    /// login on the phone (`--confirm-login`); `scan_success` follows.
    Scanned { user: String },
    /// Someone scanned this connection's code and is logged in.
    ScanSuccess {
        user: String,
        #[serde(default)]
        openid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The current code can no longer be scanned; send `refresh`.
    QrcodeExpired,
    /// Something went wrong; `error` is a stable code, `message` for people.
    Error { error: String, message: String },
    /// The answer to `{"cmd":"ping"}`.
    Pong,
}

impl ServerFrame {
    /// Builds an `error` frame.
    pub fn error(code: WsErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            error: code.code().to_string(),
            message: message.into(),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Stable codes in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsErrorCode {
    /// Not JSON, or not a known `cmd`.
    BadCommand,
    /// A binary frame, or a frame over [`MAX_CLIENT_FRAME_BYTES`].
    BadFrame,
    /// `refresh` too soon, or the client IP's QR budget is spent.
    RateLimited,
    /// WeChat's API failed while minting a code; the gateway retries.
    WechatUnavailable,
    /// The gateway is shutting down.
    ShuttingDown,
}

impl WsErrorCode {
    /// The code as it appears on the wire.
    pub fn code(self) -> &'static str {
        match self {
            WsErrorCode::BadCommand => "bad_command",
            WsErrorCode::BadFrame => "bad_frame",
            WsErrorCode::RateLimited => "rate_limited",
            WsErrorCode::WechatUnavailable => "wechat_unavailable",
            WsErrorCode::ShuttingDown => "shutting_down",
        }
    }
}

/// A command a browser sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ClientCommand {
    /// Answered with `pong`.
    Ping,
    /// Asks for a new QR code (rate-limited).
    Refresh,
}

impl ClientCommand {
    /// Parses a text frame; `None` for anything that is not a known command.
    pub fn parse(text: &str) -> Option<ClientCommand> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_match_the_contract() {
        let f = ServerFrame::QrcodeUrl {
            url: "u".into(),
            qr_content: "c".into(),
            expire_seconds: 120,
        };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"message_type":"qrcode_url","url":"u","qr_content":"c","expire_seconds":120})
        );
        let f = ServerFrame::ScanSuccess {
            user: "Alice".into(),
            openid: "o".into(),
            token: None,
        };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"message_type":"scan_success","user":"Alice","openid":"o"})
        );
        assert_eq!(
            ServerFrame::QrcodeExpired.to_json(),
            r#"{"message_type":"qrcode_expired"}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"message_type":"pong"}"#);
        assert_eq!(
            serde_json::to_value(ServerFrame::error(WsErrorCode::RateLimited, "slow down"))
                .unwrap(),
            json!({"message_type":"error","error":"rate_limited","message":"slow down"})
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            ClientCommand::parse(r#"{"cmd":"ping"}"#),
            Some(ClientCommand::Ping)
        );
        assert_eq!(
            ClientCommand::parse(r#"{"cmd":"refresh"}"#),
            Some(ClientCommand::Refresh)
        );
        assert_eq!(ClientCommand::parse(r#"{"cmd":"nope"}"#), None);
        assert_eq!(ClientCommand::parse("garbage"), None);
    }
}
