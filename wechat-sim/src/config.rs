//! The command line: the server's settings ([`Config`], every flag also an
//! env var and a TOML key through `daemon_kit::config::load`) and the `scan`
//! client subcommand ([`ScanArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use daemon_kit::Secret;
use daemon_kit::config::bool_flag;
use protocol::wechat::crypto::AesKey;

/// `wechat-sim`: with no subcommand, runs the simulated WeChat platform.
#[derive(Debug, Parser)]
#[command(
    name = "wechat-sim",
    version,
    about = "A stand-in for the WeChat platform: the API subset scan-login uses, plus a phone that scans QR codes and delivers signed callbacks."
)]
pub struct Cli {
    #[command(flatten)]
    pub server: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scan a QR ticket as a phone would (POSTs /sim/scan to a running
    /// simulator) and print the reply WeChat would show.
    Scan(ScanArgs),
}

/// Flags of `wechat-sim scan`.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// The QR ticket to scan (as qrcode/create returned it, not URL-encoded).
    #[arg(long, env = "SCAN_LOGIN_TICKET")]
    pub ticket: String,
    /// The scanning user's openid (default: a new random one).
    #[arg(long, env = "SCAN_LOGIN_OPENID")]
    pub openid: Option<String>,
    /// The user already follows the account: WeChat sends `SCAN` instead of
    /// `subscribe`. Without it the simulator decides from what it remembers.
    #[arg(long, env = "SCAN_LOGIN_SUBSCRIBED", action = ArgAction::SetTrue, value_parser = bool_flag())]
    pub subscribed: bool,
    /// A nickname that user/info will return for this user.
    #[arg(long, env = "SCAN_LOGIN_NICKNAME")]
    pub nickname: Option<String>,
    /// Base URL of the running simulator.
    #[arg(long, env = "SCAN_LOGIN_SIM", default_value = "http://127.0.0.1:9000")]
    pub sim: String,
    /// Print the simulator's whole JSON answer instead of the reply text.
    #[arg(long, env = "SCAN_LOGIN_JSON", action = ArgAction::SetTrue, value_parser = bool_flag())]
    pub json: bool,
}

/// The server's settings.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Config {
    /// TOML file with any of these settings (keys are the flag names with `_`).
    #[arg(long, env = "SCAN_LOGIN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP listener (the API, /sim/* and /healthz).
    #[arg(long, env = "SCAN_LOGIN_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The official account's appid the API accepts (required to serve).
    #[arg(long, env = "SCAN_LOGIN_APP_ID")]
    pub app_id: Option<String>,
    /// The appsecret the API accepts (required to serve).
    #[arg(long, env = "WECHAT_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<Secret>,
    /// The callback token callbacks are signed with (required to serve).
    #[arg(long, env = "WECHAT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// EncodingAESKey (43 characters): when set, callbacks are delivered in
    /// safe mode (encrypted, with msg_signature) and replies must be too.
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY", hide_env_values = true)]
    pub encoding_aes_key: Option<Secret>,
    /// Where scans are delivered (the account's server URL). A
    /// comma-separated list stands for a load balancer in front of several
    /// callback instances: deliveries take turns, and each retry goes to
    /// the next URL.
    #[arg(
        long,
        env = "SCAN_LOGIN_CALLBACK_URL",
        default_value = "http://127.0.0.1:8080/wechat"
    )]
    pub callback_url: String,
    /// The account's original id (gh_...), sent as ToUserName.
    #[arg(long, env = "SCAN_LOGIN_ACCOUNT", default_value = "gh_simulator")]
    pub account: String,
    /// user/info returns nicknames and avatars (WeChat stopped in 2021).
    #[arg(long, env = "SCAN_LOGIN_NICKNAMES", action = ArgAction::SetTrue, value_parser = bool_flag())]
    pub nicknames: bool,
    /// How long one callback delivery may take (WeChat: 5 s).
    #[arg(long, env = "SCAN_LOGIN_CALLBACK_TIMEOUT_MS", default_value_t = 5000)]
    pub callback_timeout_ms: u64,
    /// Redeliveries after a timeout, a connection error or a 5xx (WeChat: 3).
    #[arg(long, env = "SCAN_LOGIN_CALLBACK_RETRIES", default_value_t = 3)]
    pub callback_retries: u32,
    /// Lifetime of access tokens in seconds (WeChat: 7200).
    #[arg(long, env = "SCAN_LOGIN_TOKEN_EXPIRES_SECONDS", default_value_t = 7200)]
    pub token_expires_seconds: u64,
    /// Most QR tickets remembered; the oldest are dropped past it.
    #[arg(long, env = "SCAN_LOGIN_MAX_TICKETS", default_value_t = 1_000_000)]
    pub max_tickets: usize,
    /// Most HTTP connections open at once.
    #[arg(long, env = "SCAN_LOGIN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: daemon_kit::daemon::CommonFlags,
}

impl daemon_kit::daemon::Daemon for Config {
    const NAME: &'static str = "wechat-sim";

    fn common(&self) -> &daemon_kit::daemon::CommonFlags {
        &self.common
    }

    fn validate(&self) -> Result<(), String> {
        self.settings().map(drop).map_err(|e| e.to_string())
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("required settings missing: {0}")]
    Missing(String),
    #[error("--encoding-aes-key must be 43 base64 characters")]
    BadAesKey,
    #[error("--callback-url is not an http(s) URL: {0}")]
    BadCallbackUrl(String),
    #[error("--{0} must be positive")]
    Zero(&'static str),
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app_id: String,
    pub app_secret: Secret,
    pub token: Secret,
    pub aes_key: Option<AesKey>,
    /// The first of `callback_urls`.
    pub callback_url: url::Url,
    pub callback_urls: Vec<url::Url>,
    pub account: String,
    pub nicknames: bool,
    pub callback_timeout: Duration,
    pub callback_retries: u32,
    pub token_lifetime: Duration,
    pub max_tickets: usize,
    pub max_connections: usize,
}

impl Config {
    /// Checks the settings and derives what the server needs from them.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let app_id = self.app_id.clone().filter(|s| !s.is_empty());
        let app_secret = self.app_secret.clone().filter(|s| !s.is_empty());
        let token = self.token.clone().filter(|s| !s.is_empty());
        let (Some(app_id), Some(app_secret), Some(token)) =
            (app_id.clone(), app_secret.clone(), token.clone())
        else {
            let missing: Vec<&str> = [
                (app_id.is_none(), "--app-id"),
                (app_secret.is_none(), "--app-secret"),
                (token.is_none(), "--token"),
            ]
            .into_iter()
            .filter_map(|(gone, flag)| gone.then_some(flag))
            .collect();
            return Err(ConfigError::Missing(missing.join(", ")));
        };
        let aes_key = match &self.encoding_aes_key {
            Some(k) if !k.is_empty() => Some(
                AesKey::from_encoding_aes_key(k.expose()).map_err(|_| ConfigError::BadAesKey)?,
            ),
            _ => None,
        };
        let callback_urls = self
            .callback_url
            .split(',')
            .map(|one| {
                url::Url::parse(one.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| ConfigError::BadCallbackUrl(one.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let callback_url = callback_urls[0].clone();
        if self.callback_timeout_ms == 0 {
            return Err(ConfigError::Zero("callback-timeout-ms"));
        }
        if self.token_expires_seconds == 0 {
            return Err(ConfigError::Zero("token-expires-seconds"));
        }
        if self.max_tickets == 0 {
            return Err(ConfigError::Zero("max-tickets"));
        }
        Ok(Settings {
            app_id,
            app_secret,
            token,
            aes_key,
            callback_url,
            callback_urls,
            account: self.account.clone(),
            nicknames: self.nicknames,
            callback_timeout: Duration::from_millis(self.callback_timeout_ms),
            callback_retries: self.callback_retries,
            token_lifetime: Duration::from_secs(self.token_expires_seconds),
            max_tickets: self.max_tickets,
            max_connections: self.max_connections.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn parse(args: &[&str]) -> Cli {
        daemon_kit::config::load_from(
            std::iter::once("wechat-sim").chain(args.iter().copied()),
            |_: &str| None::<OsString>,
        )
        .unwrap()
    }

    /// `parse` with the account's three required flags and `extra`.
    fn with_account(extra: &[&str]) -> Cli {
        let account = ["--app-id", "wx1", "--app-secret", "s", "--token", "t"];
        parse(&[&account[..], extra].concat())
    }

    #[test]
    fn defaults_and_validation() {
        let cli = with_account(&[]);
        assert!(cli.command.is_none());
        let s = cli.server.settings().unwrap();
        assert_eq!(cli.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.callback_url.as_str(), "http://127.0.0.1:8080/wechat");
        assert_eq!(s.account, "gh_simulator");
        assert_eq!(s.callback_timeout, Duration::from_secs(5));
        assert_eq!(s.callback_retries, 3);
        assert!(!s.nicknames);
        assert!(s.aes_key.is_none());
        assert_eq!(format!("{:?}", s.app_secret), "<redacted>");

        let cli = parse(&["--app-id", "wx1", "--token", "t"]);
        assert!(matches!(
            cli.server.settings(),
            Err(ConfigError::Missing(m)) if m == "--app-secret"
        ));
        let cli = parse(&[]);
        assert!(matches!(
            cli.server.settings(),
            Err(ConfigError::Missing(m)) if m == "--app-id, --app-secret, --token"
        ));
        let cli = with_account(&["--encoding-aes-key", "short"]);
        assert!(matches!(cli.server.settings(), Err(ConfigError::BadAesKey)));
        let cli = with_account(&["--callback-url", "ftp://x/"]);
        assert!(matches!(
            cli.server.settings(),
            Err(ConfigError::BadCallbackUrl(_))
        ));
    }

    #[test]
    fn scan_subcommand_needs_no_server_settings() {
        let cli = parse(&["scan", "--ticket", "gQ+/=", "--subscribed"]);
        match cli.command {
            Some(Command::Scan(a)) => {
                assert_eq!(a.ticket, "gQ+/=");
                assert!(a.subscribed);
                assert_eq!(a.sim, "http://127.0.0.1:9000");
                assert!(a.openid.is_none());
            }
            None => panic!("expected scan"),
        }
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut all: Vec<&clap::Arg> = cmd.get_arguments().collect();
        if let Some(scan) = cmd.find_subcommand("scan") {
            all.extend(scan.get_arguments());
        }
        for arg in all {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            if id == "check_config" {
                // An action, not a setting: a flag only.
                assert_eq!(env, "", "--check-config must have no env var");
                continue;
            }
            let expected = match id {
                "app_secret" => "WECHAT_APP_SECRET".to_string(),
                "token" => "WECHAT_TOKEN".to_string(),
                "encoding_aes_key" => "WECHAT_ENCODING_AES_KEY".to_string(),
                other => format!("SCAN_LOGIN_{}", other.to_ascii_uppercase()),
            };
            assert_eq!(env, expected, "env of --{id}");
        }
    }
}
