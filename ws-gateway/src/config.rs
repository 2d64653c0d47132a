//! Settings of `ws-gateway`: every flag with its environment variable and
//! TOML key (layered by `daemon_kit::config::load`: flag > env > systemd
//! credential > `--config` file > default), and their validation into
//! [`Settings`], the checked form the rest of the crate uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use daemon_kit::Secret;
use daemon_kit::config::bool_flag;
use ipnet::IpNet;

/// Longest QR lifetime WeChat allows for a temporary code (30 days).
pub const MAX_QR_EXPIRE_SECONDS: u32 = 2_592_000;

/// Every setting of the gateway. See `ws-gateway --help`.
#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(
    name = "ws-gateway",
    version,
    about = "WebSocket gateway of wechat-scan-login: holds browsers' connections, \
             mints a temporary WeChat QR code per connection and pushes scan \
             results that arrive on the NDJSON notify bus.",
    long_about = None,
    after_help = "Every flag --foo-bar is also the environment variable SCAN_LOGIN_FOO_BAR \
                  and the key foo_bar in the --config TOML file (secrets: WECHAT_APP_SECRET, \
                  NOTIFY_SECRET, or systemd credentials app_secret / notify_secret). \
                  Flags win over env, env over the file."
)]
pub struct Config {
    /// TOML file with settings; keys are the flag names with `_`
    /// (e.g. `qr_expire_seconds = 120`). An unknown key is an error.
    #[arg(long, env = "SCAN_LOGIN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// HTTP + WebSocket listener: the login page at `/`, `/scan-login.js`,
    /// `/scan-login.mjs`, WebSocket upgrades on `/` and `/ws`, `/healthz`
    /// and `/metrics`.
    #[arg(
        long,
        env = "SCAN_LOGIN_LISTEN",
        default_value = "127.0.0.1:1099",
        value_name = "ADDR:PORT"
    )]
    pub listen: SocketAddr,

    /// Notify bus listener (NDJSON over TCP) where wechat-callback reports
    /// scans. Keep it private: loopback or an internal network only.
    #[arg(
        long,
        env = "SCAN_LOGIN_NOTIFY_LISTEN",
        default_value = "127.0.0.1:9999",
        value_name = "ADDR:PORT"
    )]
    pub notify_listen: SocketAddr,

    /// AppID of the WeChat official account that mints the QR codes
    /// (required).
    #[arg(long, env = "SCAN_LOGIN_APP_ID", value_name = "APPID")]
    pub app_id: Option<String>,

    /// AppSecret of the official account (required). Prefer the env var
    /// or a systemd credential `app_secret` over the command line.
    #[arg(
        long,
        env = "WECHAT_APP_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub app_secret: Option<Secret>,

    /// Base URL of the WeChat API (change only for a test double such as
    /// wechat-sim).
    #[arg(
        long,
        env = "SCAN_LOGIN_WECHAT_API_BASE",
        default_value = wechat_api::DEFAULT_API_BASE,
        value_name = "URL"
    )]
    pub wechat_api_base: String,

    /// Prefix of the QR image URL sent to the browser; the ticket is
    /// appended percent-encoded.
    #[arg(
        long,
        env = "SCAN_LOGIN_QRCODE_IMAGE_BASE",
        default_value = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=",
        value_name = "URL"
    )]
    pub qrcode_image_base: String,

    /// Lifetime of each temporary QR code, in seconds (1..=2592000).
    #[arg(
        long,
        env = "SCAN_LOGIN_QR_EXPIRE_SECONDS",
        default_value_t = 120,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_QR_EXPIRE_SECONDS)),
        value_name = "SECONDS"
    )]
    pub qr_expire_seconds: u32,

    /// A WebSocket that sends nothing (no frame, no pong) for this long is
    /// closed; the gateway pings every half of it.
    #[arg(
        long,
        env = "SCAN_LOGIN_IDLE_TIMEOUT_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        value_name = "SECONDS"
    )]
    pub idle_timeout_seconds: u64,

    /// Most browser WebSocket connections open at once; past it the
    /// upgrade is refused with HTTP 503. Each is an open file: keep
    /// LimitNOFILE above it.
    #[arg(
        long,
        env = "SCAN_LOGIN_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000),
        value_name = "N"
    )]
    pub max_connections: u32,

    /// Accept only bus lines that carry the scanned code's `ticket`
    /// (others get `ticket_required`).
    #[arg(
        long,
        env = "SCAN_LOGIN_NOTIFY_REQUIRE_TICKET",
        action = ArgAction::SetTrue,
        value_parser = bool_flag()
    )]
    pub notify_require_ticket: bool,

    /// Shared secret every bus line must carry in `secret` (answered
    /// `unauthorized`, then the connection is closed); at least 32 bytes.
    /// Unset or empty: no check, allowed only on a loopback --notify-listen.
    #[arg(
        long,
        env = "NOTIFY_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub notify_secret: Option<Secret>,

    /// QR codes minted per client IP per minute (a token bucket; IPv6
    /// counts per /64). Over it the browser gets a `rate_limited` error
    /// instead of a code. 0 = no limit (benchmarks only).
    #[arg(
        long,
        env = "SCAN_LOGIN_QR_MINT_RATE",
        default_value_t = 120,
        value_name = "PER_MINUTE"
    )]
    pub qr_mint_rate: u32,

    /// Reverse proxies whose `X-Forwarded-For` is believed: comma-separated
    /// addresses or CIDR ranges. The client is then the rightmost
    /// forwarded address that is not itself trusted. Default: nobody.
    #[arg(
        long,
        env = "SCAN_LOGIN_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "ADDR|CIDR,..."
    )]
    pub trusted_proxy: Vec<String>,

    /// Origins (scheme://host[:port]) whose pages may open the WebSocket,
    /// comma-separated; `https://*.example.com` allows any subdomain. An
    /// upgrade from another origin is refused with HTTP 403. Unset: only
    /// same-origin pages (and clients that send no Origin, which browsers
    /// always do).
    #[arg(
        long,
        env = "SCAN_LOGIN_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN,..."
    )]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket connections from one client address (IPv6 counted
    /// per /64; the address as --trusted-proxy defines it); past it the
    /// upgrade is refused with HTTP 429. 0 = no per-address limit.
    #[arg(
        long,
        env = "SCAN_LOGIN_MAX_CONNECTIONS_PER_IP",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_connections_per_ip: u32,

    /// A notify-bus connection that sends no complete line for this long is
    /// closed (at the 1,024-connection cap, the longest-idle one is closed
    /// to make room for a new one).
    #[arg(
        long,
        env = "SCAN_LOGIN_NOTIFY_IDLE_TIMEOUT_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        value_name = "SECONDS"
    )]
    pub notify_idle_timeout_seconds: u64,

    /// This gateway's node number (0–15) when several gateways share one
    /// account: every fd it mints is `node * 2^27 + r` (2^20 ≤ r < 2^27),
    /// so wechat-callback's --notify-addr list can send each scan to the
    /// node that holds the page.
    #[arg(
        long,
        env = "SCAN_LOGIN_NODE_ID",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=15),
        value_name = "N"
    )]
    pub node_id: u8,

    /// Demo only: the wechat-sim base URL the login page offers a
    /// "simulate scan" button for. Empty (default): no button.
    #[arg(
        long,
        env = "SCAN_LOGIN_DEMO_SIM_URL",
        default_value = "",
        value_name = "URL"
    )]
    pub demo_sim_url: String,

    #[command(flatten)]
    #[serde(flatten)]
    pub common: daemon_kit::daemon::CommonFlags,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("required settings missing: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("--{flag} must be an http:// or https:// URL, not `{value}`")]
    BadUrl { flag: &'static str, value: String },
    #[error("--trusted-proxy: `{entry}` is neither an IP address nor a CIDR range")]
    BadTrustedProxy { entry: String },
    #[error(
        "--notify-listen {addr} is not a loopback address: set --notify-secret (NOTIFY_SECRET) \
         too, or anyone who reaches that port can log pages in"
    )]
    OpenBusWithoutSecret { addr: SocketAddr },
    #[error(
        "--notify-secret must be at least {MIN_SECRET_BYTES} bytes; generate one with \
         `openssl rand -hex 32`"
    )]
    ShortSecret,
    #[error("--allowed-origins: {0}")]
    BadOrigin(String),
}

/// The shortest `--notify-secret` accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app_id: String,
    pub app_secret: Secret,
    pub wechat_api_base: String,
    pub qrcode_image_base: String,
    pub qr_expire_seconds: u32,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub notify_require_ticket: bool,
    /// `None` when unset or empty.
    pub notify_secret: Option<Secret>,
    pub qr_mint_rate: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub allowed_origins: Vec<crate::origin::AllowedOrigin>,
    pub max_connections_per_ip: u32,
    pub notify_idle_timeout: Duration,
    pub node_id: u8,
    pub demo_sim_url: String,
}

impl Config {
    /// Checks the settings and returns their usable form.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let app_id = self
            .app_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let app_secret = self.app_secret.clone().filter(|s| !s.is_empty());
        let (app_id, app_secret) = match (app_id, app_secret) {
            (Some(id), Some(secret)) => (id.to_string(), secret),
            (id, secret) => {
                let mut missing = Vec::new();
                if id.is_none() {
                    missing.push("--app-id (SCAN_LOGIN_APP_ID, app_id)");
                }
                if secret.is_none() {
                    missing.push("--app-secret (WECHAT_APP_SECRET, app_secret)");
                }
                return Err(ConfigError::Missing(missing));
            }
        };
        check_url("wechat-api-base", &self.wechat_api_base)?;
        check_url("qrcode-image-base", &self.qrcode_image_base)?;
        let trusted_proxies = self
            .trusted_proxy
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(parse_proxy)
            .collect::<Result<Vec<_>, _>>()?;
        let notify_secret = self.notify_secret.clone().filter(|s| !s.is_empty());
        if notify_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < MIN_SECRET_BYTES)
        {
            return Err(ConfigError::ShortSecret);
        }
        if notify_secret.is_none() && !self.notify_listen.ip().is_loopback() {
            return Err(ConfigError::OpenBusWithoutSecret {
                addr: self.notify_listen,
            });
        }
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(crate::origin::AllowedOrigin::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::BadOrigin)?;
        Ok(Settings {
            app_id,
            app_secret,
            wechat_api_base: self.wechat_api_base.clone(),
            qrcode_image_base: self.qrcode_image_base.clone(),
            qr_expire_seconds: self.qr_expire_seconds,
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            notify_require_ticket: self.notify_require_ticket,
            notify_secret,
            qr_mint_rate: self.qr_mint_rate,
            trusted_proxies,
            allowed_origins,
            max_connections_per_ip: self.max_connections_per_ip,
            notify_idle_timeout: Duration::from_secs(self.notify_idle_timeout_seconds),
            node_id: self.node_id,
            demo_sim_url: self.demo_sim_url.clone(),
        })
    }

    /// The effective settings as `key = value` lines (TOML), secrets shown
    /// only as set. Printed by `--check-config`.
    pub fn summary(&self) -> String {
        daemon_kit::daemon::summary(self)
    }
}

impl daemon_kit::daemon::Daemon for Config {
    const NAME: &'static str = "ws-gateway";

    fn common(&self) -> &daemon_kit::daemon::CommonFlags {
        &self.common
    }

    fn validate(&self) -> Result<(), String> {
        Config::validate(self).map(drop).map_err(|e| e.to_string())
    }
}

fn check_url(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = ["http://", "https://"].iter().any(|p| {
        value
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
            && value.len() > p.len()
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadUrl {
            flag,
            value: value.to_string(),
        })
    }
}

/// An address (a /32 or /128) or a CIDR range.
fn parse_proxy(entry: &str) -> Result<IpNet, ConfigError> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::BadTrustedProxy {
            entry: entry.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["ws-gateway"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&["--app-id", "wx1", "--app-secret", "s"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:1099");
        assert_eq!(c.notify_listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.wechat_api_base, "https://api.weixin.qq.com");
        assert_eq!(
            c.qrcode_image_base,
            "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
        );
        assert_eq!(c.qr_expire_seconds, 120);
        assert_eq!(c.idle_timeout_seconds, 60);
        assert_eq!(c.qr_mint_rate, 120);
        assert!(!c.notify_require_ticket);
        let s = c.validate().unwrap();
        assert!(s.trusted_proxies.is_empty());
        assert!(s.notify_secret.is_none());
    }

    #[test]
    fn validation_catches_mistakes() {
        assert!(matches!(
            parse(&["--app-secret", "s"]).validate(),
            Err(ConfigError::Missing(m)) if m.len() == 1 && m[0].starts_with("--app-id")
        ));
        assert!(matches!(
            parse(&["--app-id", "wx"]).validate(),
            Err(ConfigError::Missing(m)) if m.len() == 1 && m[0].starts_with("--app-secret")
        ));
        // All missing settings at once.
        assert!(matches!(
            parse(&[]).validate(),
            Err(ConfigError::Missing(m)) if m.len() == 2
        ));
        assert!(matches!(
            parse(&[
                "--app-id",
                "wx",
                "--app-secret",
                "s",
                "--trusted-proxy",
                "10.0.0.0/8,nope"
            ])
            .validate(),
            Err(ConfigError::BadTrustedProxy { .. })
        ));
        assert!(matches!(
            parse(&[
                "--app-id",
                "wx",
                "--app-secret",
                "s",
                "--wechat-api-base",
                "ftp://x"
            ])
            .validate(),
            Err(ConfigError::BadUrl { .. })
        ));
        let mut all = vec!["ws-gateway", "--qr-expire-seconds", "0"];
        assert!(Config::try_parse_from(&all).is_err());
        all[2] = "2592001";
        assert!(Config::try_parse_from(&all).is_err());
    }

    #[test]
    fn the_bus_is_private_or_secret() {
        let base = ["--app-id", "wx", "--app-secret", "s"];
        let with = |extra: &[&str]| {
            let mut all: Vec<&str> = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all).validate()
        };
        let e = with(&["--notify-listen", "0.0.0.0:9999"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--notify-listen") && msg.contains("--notify-secret"),
            "{msg}"
        );
        assert!(with(&["--notify-listen", "[::1]:9999"]).is_ok());
        assert!(with(&["--notify-listen", "127.0.0.2:9999"]).is_ok());
        assert!(matches!(
            with(&["--notify-secret", "short"]),
            Err(ConfigError::ShortSecret)
        ));
        let long = "k".repeat(MIN_SECRET_BYTES);
        assert!(with(&["--notify-listen", "0.0.0.0:9999", "--notify-secret", &long]).is_ok());
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let s = parse(&[
            "--app-id",
            "wx",
            "--app-secret",
            "s",
            "--trusted-proxy",
            "127.0.0.1, 10.0.0.0/8,::1,",
        ])
        .validate()
        .unwrap();
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn summary_never_shows_secrets() {
        let c = parse(&[
            "--app-id",
            "wx",
            "--app-secret",
            "hunter2",
            "--notify-secret",
            "swordfish-swordfish-swordfish-swordfish",
        ]);
        let s = c.summary();
        assert!(!s.contains("hunter2") && !s.contains("swordfish"));
        assert!(c.validate().is_ok());
        assert!(s.contains("app_secret = \"<set>\""));
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}
