//! Every setting of `wechat-callback`: flag, environment variable and TOML
//! key (see `daemon_kit::config` for the layering), with `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use daemon_kit::Secret;
use daemon_kit::config::bool_flag;
use protocol::wechat::crypto::AesKey;

/// The HTTP endpoint WeChat's servers call when a user scans a login QR
/// code: verifies and decrypts the callback, records the login in SQLite,
/// notifies ws-gateway and replies to the user.
#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(name = "wechat-callback", version, about, long_about = None)]
pub struct Config {
    /// TOML file with any of these settings (keys are the flag names with
    /// `_` for `-`). Flags win over env, env over the file.
    #[arg(long, env = "SCAN_LOGIN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to serve `/wechat`, `/healthz` and `/metrics` on.
    #[arg(long, env = "SCAN_LOGIN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The Token set in the WeChat console (server configuration). Required.
    #[arg(long, env = "WECHAT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// The EncodingAESKey (43 characters). When set, encrypted (safe or
    /// compatible mode) messages are accepted and their replies encrypted.
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY", hide_env_values = true)]
    pub encoding_aes_key: Option<Secret>,

    /// The previous EncodingAESKey, tried when the current one does not
    /// decrypt a message, so the key can be rotated without downtime.
    #[arg(
        long,
        env = "SCAN_LOGIN_ENCODING_AES_KEY_PREVIOUS",
        hide_env_values = true
    )]
    pub encoding_aes_key_previous: Option<Secret>,

    /// The official account's AppID (checked against decrypted messages;
    /// with --app-secret, used to look users up).
    #[arg(long, env = "SCAN_LOGIN_APP_ID")]
    pub app_id: Option<String>,

    /// The official account's AppSecret, for `user/info` look-ups.
    #[arg(long, env = "WECHAT_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<Secret>,

    /// Base URL of the WeChat API (the simulator's address in development).
    #[arg(long, env = "SCAN_LOGIN_WECHAT_API_BASE", default_value = wechat_api::DEFAULT_API_BASE)]
    pub wechat_api_base: String,

    /// ws-gateway's notify bus (its --notify-listen): `HOST:PORT`, or with
    /// several gateway nodes a comma-separated list of `N=HOST:PORT` (node N
    /// is the gateway's --node-id); a bare `HOST:PORT` serves every node
    /// not listed.
    #[arg(long, env = "SCAN_LOGIN_NOTIFY_ADDR", default_value = "127.0.0.1:9999")]
    pub notify_addr: String,

    /// Shared secret sent on every bus line (the gateway's --notify-secret);
    /// at least 32 bytes.
    #[arg(long, env = "NOTIFY_SECRET", hide_env_values = true)]
    pub notify_secret: Option<Secret>,

    /// Where users and handled events are kept: a SQLite file (instances on
    /// one host may share it) or a postgres:// URL (instances on several
    /// hosts share the database; `?sslmode=require` for TLS).
    #[arg(
        long,
        env = "SCAN_LOGIN_DB",
        default_value = "scan-login.db",
        hide_env_values = true
    )]
    pub db: String,

    /// When set, `scan_success` carries a login token: a JWT (HS256) signed
    /// with this secret (at least 32 bytes), with sub = openid, nickname,
    /// iat, exp (5 min), jti, iss, aud (if set) and unionid (if known).
    /// Unset: pages get an openid nobody can verify (warned at start).
    #[arg(long, env = "LOGIN_TOKEN_SECRET", hide_env_values = true)]
    pub login_token_secret: Option<Secret>,

    /// How far a POST's timestamp may be from now, either way, in seconds.
    #[arg(
        long,
        env = "SCAN_LOGIN_TIMESTAMP_TOLERANCE_SECONDS",
        default_value_t = 300
    )]
    pub timestamp_tolerance_seconds: u64,

    /// Reply after a login. `{name}`, `{ordinal}` (1st, 2nd…) and `{count}`
    /// are replaced.
    #[arg(
        long,
        env = "SCAN_LOGIN_REPLY_TEMPLATE",
        default_value = "{name}, login successful! This is your {ordinal} login."
    )]
    pub reply_template: String,

    /// Reply when the login page could not be told (gateway down, page
    /// closed, code already used). `{name}` is replaced.
    #[arg(
        long,
        env = "SCAN_LOGIN_RETRY_TEMPLATE",
        default_value = "{name}, the login did not complete: please refresh the login page and scan the new QR code."
    )]
    pub retry_template: String,

    /// Reply when the gateway got the login but its answer was lost (it
    /// stopped, or did not answer in time): the page may or may not be
    /// logged in, and the user is told so, never that it failed. `{name}`
    /// is replaced.
    #[arg(
        long,
        env = "SCAN_LOGIN_UNCONFIRMED_TEMPLATE",
        default_value = "{name}, the login could not be confirmed: if the login page did not log you in, please refresh the login page and scan the new QR code."
    )]
    pub unconfirmed_template: String,

    /// Reply to ordinary text messages (empty: answer `success`, no reply).
    #[arg(
        long,
        env = "SCAN_LOGIN_TEXT_REPLY",
        default_value = "To log in, scan the QR code on the website's login page."
    )]
    pub text_reply: String,

    /// Time limit for connecting to the notify bus and for writing a line to
    /// it, in milliseconds (at most 1000). The answer itself is awaited
    /// until shortly before the reply deadline, so a briefly paused gateway
    /// still logs the user in.
    #[arg(long, env = "SCAN_LOGIN_NOTIFY_TIMEOUT_MS", default_value_t = 1000)]
    pub notify_timeout_ms: u64,

    /// Time budget for the `user/info` look-up, in milliseconds; past it the
    /// fallback display name is used.
    #[arg(long, env = "SCAN_LOGIN_USER_INFO_TIMEOUT_MS", default_value_t = 1500)]
    pub user_info_timeout_ms: u64,

    /// How long WeChat is kept waiting before the answer is `success` (the
    /// work still completes). WeChat gives up after 5 s.
    #[arg(long, env = "SCAN_LOGIN_REPLY_DEADLINE_MS", default_value_t = 4000)]
    pub reply_deadline_ms: u64,

    /// Most HTTP connections open at once.
    #[arg(long, env = "SCAN_LOGIN_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// The console's message encryption mode (明文 plain / 兼容 compatible /
    /// 安全 safe). `safe` accepts only encrypted POSTs: a plaintext POST's
    /// signature does not cover its body, so anyone who saw one callback URL
    /// could forge events with it. Default: `safe` when --encoding-aes-key
    /// is set, else `plain`.
    #[arg(long, env = "SCAN_LOGIN_MESSAGE_MODE", value_enum)]
    pub message_mode: Option<MessageMode>,

    /// Confirm on the phone: a scan does not log in at once; the user is
    /// asked (with the browser's device and IP) to reply `1` within 60 s.
    /// Guards against login pages shown to a victim by someone else.
    #[arg(long, env = "SCAN_LOGIN_CONFIRM_LOGIN", action = ArgAction::SetTrue, value_parser = bool_flag())]
    pub confirm_login: bool,

    /// Reply asking the user to confirm (with --confirm-login). `{name}`,
    /// `{device}` (browser and OS of the login page) and `{ip}` are replaced.
    #[arg(
        long,
        env = "SCAN_LOGIN_CONFIRM_TEMPLATE",
        default_value = "{name}, log in on {device} from {ip}? Reply 1 within 60 seconds to confirm."
    )]
    pub confirm_template: String,

    /// The account's own message handler (EasyWeChat, WxJava, …): every
    /// verified POST that is not a login (text, menu clicks, other events,
    /// scans of the account's own permanent or string-scene QR codes) is
    /// POSTed there with the same query and body, and its answer relayed to
    /// WeChat (`success` if it fails or is slower than the reply deadline).
    #[arg(long, env = "SCAN_LOGIN_FORWARD_URL", value_name = "URL")]
    pub forward_url: Option<String>,

    /// The login token's `iss` claim.
    #[arg(
        long,
        env = "SCAN_LOGIN_LOGIN_TOKEN_ISSUER",
        default_value = "wechat-scan-login"
    )]
    pub login_token_issuer: String,

    /// The login token's `aud` claim (absent when unset), e.g. your site's
    /// origin; your backend then checks it.
    #[arg(long, env = "SCAN_LOGIN_LOGIN_TOKEN_AUDIENCE")]
    pub login_token_audience: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub common: daemon_kit::daemon::CommonFlags,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--token (or WECHAT_TOKEN, or `token` in the config file) is required")]
    MissingToken,
    #[error("--{0} is not a valid EncodingAESKey (43 base64 characters)")]
    BadAesKey(&'static str),
    #[error("--encoding-aes-key-previous needs --encoding-aes-key")]
    PreviousWithoutCurrent,
    #[error("--app-secret needs --app-id")]
    SecretWithoutAppId,
    #[error("--timestamp-tolerance-seconds must be between 1 and 86400")]
    BadTolerance,
    #[error("--notify-timeout-ms must be between 1 and 1000")]
    BadNotifyTimeout,
    #[error("--reply-deadline-ms must be between 100 and 4900")]
    BadDeadline,
    #[error("--reply-template must not be empty")]
    EmptyTemplate,
    #[error(
        "--message-mode {0} needs --encoding-aes-key (or WECHAT_ENCODING_AES_KEY): \
         encrypted messages cannot be opened without it"
    )]
    ModeNeedsKey(&'static str),
    #[error(
        "--{0} must be at least {MIN_SECRET_BYTES} bytes (an HS256 key or a bus \
         secret this short can be guessed offline); generate one with \
         `openssl rand -hex 32`"
    )]
    ShortSecret(&'static str),
    #[error("--{0}: {1}")]
    BadTemplate(&'static str, String),
    #[error("--notify-addr: {0}")]
    BadNotifyAddr(String),
    #[error("--forward-url must be an http:// or https:// URL, not `{0}`")]
    BadForwardUrl(String),
}

/// The shortest `--notify-secret` or `--login-token-secret` accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// Which POSTs are accepted (the WeChat console's message mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageMode {
    /// 明文: plaintext POSTs; an encrypted one is opened only with a key.
    Plain,
    /// 兼容: both; a reply is encrypted exactly when its request was.
    Compatible,
    /// 安全: only encrypted POSTs with a valid `msg_signature`.
    Safe,
}

impl MessageMode {
    pub fn name(self) -> &'static str {
        match self {
            MessageMode::Plain => "plain",
            MessageMode::Compatible => "compatible",
            MessageMode::Safe => "safe",
        }
    }
}

/// A secret that must be long enough when set.
fn long_secret(s: &Option<Secret>, flag: &'static str) -> Result<Option<Secret>, ConfigError> {
    match s.clone().filter(|s| !s.is_empty()) {
        Some(s) if s.expose().len() < MIN_SECRET_BYTES => Err(ConfigError::ShortSecret(flag)),
        other => Ok(other),
    }
}

/// Settings checked and turned into what the server uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub token: Secret,
    pub aes_key: Option<AesKey>,
    pub aes_key_previous: Option<AesKey>,
    pub app_id: Option<String>,
    pub api: Option<wechat_api::ApiConfig>,
    pub notify_addr: crate::bus_routes::NotifyAddrs,
    pub notify_secret: Option<Secret>,
    pub db: crate::store::Db,
    pub login_token_secret: Option<Secret>,
    pub timestamp_tolerance: Duration,
    pub reply_template: String,
    pub retry_template: String,
    pub unconfirmed_template: String,
    pub text_reply: String,
    pub notify_timeout: Duration,
    pub user_info_timeout: Duration,
    pub reply_deadline: Duration,
    pub max_connections: usize,
    pub message_mode: MessageMode,
    pub confirm_login: bool,
    pub confirm_template: String,
    pub login_token_issuer: String,
    pub login_token_audience: Option<String>,
    pub forward_url: Option<url::Url>,
}

impl Config {
    /// Validates the settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(ConfigError::MissingToken)?;
        let key = |s: &Option<Secret>, name| {
            s.as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    AesKey::from_encoding_aes_key(s.expose())
                        .map_err(|_| ConfigError::BadAesKey(name))
                })
                .transpose()
        };
        let aes_key = key(&self.encoding_aes_key, "encoding-aes-key")?;
        let aes_key_previous = key(&self.encoding_aes_key_previous, "encoding-aes-key-previous")?;
        if aes_key_previous.is_some() && aes_key.is_none() {
            return Err(ConfigError::PreviousWithoutCurrent);
        }
        let app_id = self.app_id.clone().filter(|a| !a.is_empty());
        let app_secret = self.app_secret.clone().filter(|s| !s.is_empty());
        let api = match (&app_id, app_secret) {
            (Some(id), Some(secret)) => Some(wechat_api::ApiConfig {
                base: self.wechat_api_base.clone(),
                app_id: id.clone(),
                app_secret: secret.expose().to_string(),
                timeout: Duration::from_millis(self.user_info_timeout_ms.max(100)),
            }),
            (None, Some(_)) => return Err(ConfigError::SecretWithoutAppId),
            _ => None,
        };
        if !(1..=86_400).contains(&self.timestamp_tolerance_seconds) {
            return Err(ConfigError::BadTolerance);
        }
        if !(1..=1000).contains(&self.notify_timeout_ms) {
            return Err(ConfigError::BadNotifyTimeout);
        }
        if !(100..=4900).contains(&self.reply_deadline_ms) {
            return Err(ConfigError::BadDeadline);
        }
        if self.reply_template.trim().is_empty() {
            return Err(ConfigError::EmptyTemplate);
        }
        let message_mode = match self.message_mode {
            Some(m) => m,
            None if aes_key.is_some() => MessageMode::Safe,
            None => MessageMode::Plain,
        };
        if message_mode != MessageMode::Plain && aes_key.is_none() {
            return Err(ConfigError::ModeNeedsKey(message_mode.name()));
        }
        for (flag, template, known) in [
            (
                "reply-template",
                &self.reply_template,
                &["name", "ordinal", "count"][..],
            ),
            ("retry-template", &self.retry_template, &["name"][..]),
            (
                "unconfirmed-template",
                &self.unconfirmed_template,
                &["name"][..],
            ),
            (
                "confirm-template",
                &self.confirm_template,
                &["name", "device", "ip"][..],
            ),
        ] {
            crate::text::check_template(template, known)
                .map_err(|e| ConfigError::BadTemplate(flag, e))?;
        }
        let forward_url = match self.forward_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(
                url::Url::parse(u)
                    .ok()
                    .filter(|p| matches!(p.scheme(), "http" | "https") && p.has_host())
                    .ok_or_else(|| ConfigError::BadForwardUrl(u.to_string()))?,
            ),
        };
        let notify_secret = long_secret(&self.notify_secret, "notify-secret")?;
        let login_token_secret = long_secret(&self.login_token_secret, "login-token-secret")?;
        Ok(Settings {
            token,
            aes_key,
            aes_key_previous,
            app_id,
            api,
            notify_addr: crate::bus_routes::NotifyAddrs::parse(&self.notify_addr)
                .map_err(ConfigError::BadNotifyAddr)?,
            notify_secret,
            db: crate::store::Db::parse(&self.db),
            login_token_secret,
            timestamp_tolerance: Duration::from_secs(self.timestamp_tolerance_seconds),
            reply_template: self.reply_template.clone(),
            retry_template: self.retry_template.clone(),
            unconfirmed_template: self.unconfirmed_template.clone(),
            text_reply: self.text_reply.clone(),
            notify_timeout: Duration::from_millis(self.notify_timeout_ms),
            user_info_timeout: Duration::from_millis(self.user_info_timeout_ms),
            reply_deadline: Duration::from_millis(self.reply_deadline_ms),
            max_connections: self.max_connections.max(1),
            message_mode,
            confirm_login: self.confirm_login,
            confirm_template: self.confirm_template.clone(),
            login_token_issuer: self.login_token_issuer.clone(),
            login_token_audience: self.login_token_audience.clone().filter(|a| !a.is_empty()),
            forward_url,
        })
    }
}

impl daemon_kit::daemon::Daemon for Config {
    const NAME: &'static str = "wechat-callback";

    fn common(&self) -> &daemon_kit::daemon::CommonFlags {
        &self.common
    }

    fn validate(&self) -> Result<(), String> {
        let settings = self.settings().map_err(|e| e.to_string())?;
        if self.common.check_config {
            crate::store::Store::check(&settings.db)
                .map_err(|e| format!("database {}: {e}", settings.db))?;
        }
        Ok(())
    }
}
