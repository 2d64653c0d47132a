//! Client for the WeChat Official Account API subset wechat-scan-login
//! uses, shared by `ws-gateway` (QR codes) and `wechat-callback` (user
//! info):
//!
//! - `POST /cgi-bin/stable_token`: the access token, cached in [`token`],
//!   refreshed ahead of expiry by one caller at a time while the others wait
//!   for the same result;
//! - `POST /cgi-bin/qrcode/create`: temporary `QR_SCENE` codes;
//! - `GET /cgi-bin/user/info`: who scanned (nickname is usually absent since
//!   2021).
//!
//! Every answer with a non-zero `errcode` is [`ApiError::WeChat`] with that
//! code and `errmsg`. On 40001/42001/40014 the token is refreshed once and
//! the call retried once.

mod token;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use token::TokenCache;

/// WeChat's production API.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";

/// errcodes meaning "this access token is not (or no longer) valid".
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 42001, 40014];

/// Longest API answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or timed out.
    #[error("WeChat API unreachable: {0}")]
    Transport(String),
    /// WeChat answered with a non-zero errcode.
    #[error("WeChat API error {errcode}: {errmsg}")]
    WeChat { errcode: i64, errmsg: String },
    /// The answer was not the JSON expected.
    #[error("unexpected WeChat API answer: {0}")]
    BadAnswer(String),
}

/// Errcodes that no retry can fix: the account's credentials or this
/// server's address are wrong, and only the operator can change that.
pub const CREDENTIAL_ERRCODES: [i64; 5] = [40013, 40125, 40164, 41002, 41004];

impl ApiError {
    /// The WeChat errcode, when there is one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// Whether retrying cannot help (see [`CREDENTIAL_ERRCODES`]).
    pub fn is_credential_error(&self) -> bool {
        self.errcode()
            .is_some_and(|c| CREDENTIAL_ERRCODES.contains(&c))
    }

    /// Whether retrying the same call soon cannot help: a credential error,
    /// an API this account may not use (48001), or the day's quota spent
    /// (45009).
    pub fn is_permanent(&self) -> bool {
        self.is_credential_error() || matches!(self.errcode(), Some(48001 | 45009))
    }

    /// What the operator should do about a credential error.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.errcode()? {
            40013 => {
                "the AppID is not valid: check --app-id against the WeChat console (Settings and development → Basic configuration)"
            }
            40125 => {
                "the AppSecret is not valid: check it in the WeChat console (Basic configuration → AppSecret; resetting it there invalidates the old one)"
            }
            40164 => {
                "this server's IP address is not on the account's IP whitelist: add it in the WeChat console (Basic configuration → IP whitelist)"
            }
            41002 => "the AppID is missing: set --app-id",
            41004 => "the AppSecret is missing: set --app-secret or WECHAT_APP_SECRET",
            _ => return None,
        })
    }
}

/// A transport error without its URL: `qrcode/create` and `user/info`
/// URLs carry `access_token=` in their query, and reqwest's errors print
/// the URL they failed on. Every error that leaves this crate goes through
/// here, so no log line can show a token.
fn transport(e: reqwest::Error) -> ApiError {
    ApiError::Transport(e.without_url().to_string())
}

/// The start-up error for a credential errcode: the code, WeChat's
/// message and what to do.
pub fn credential_message(e: &ApiError) -> String {
    match e.hint() {
        Some(hint) => format!("cannot get a WeChat access token: {e}; {hint}"),
        None => format!("cannot get a WeChat access token: {e}"),
    }
}

/// Where and as whom to call the API.
#[derive(Clone)]
pub struct ApiConfig {
    /// e.g. [`DEFAULT_API_BASE`], or the simulator's address.
    pub base: String,
    pub app_id: String,
    pub app_secret: String,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .field("app_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A temporary QR code as `qrcode/create` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrCode {
    pub ticket: String,
    pub expire_seconds: u32,
    /// What the QR code encodes (`http://weixin.qq.com/q/...`).
    pub url: String,
}

/// A user as `user/info` returns it. Since 2021-12-27 `nickname` and
/// `headimgurl` are absent or empty for most accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub subscribe: i64,
    #[serde(default)]
    pub openid: String,
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub headimgurl: Option<String>,
    #[serde(default)]
    pub remark: Option<String>,
    #[serde(default)]
    pub unionid: Option<String>,
}

/// The API client. Cheap to clone; clones share the token cache.
#[derive(Clone)]
pub struct WeChatApi {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ApiConfig,
    tokens: TokenCache,
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

impl WeChatApi {
    /// Builds a client (no request is made yet).
    pub fn new(config: ApiConfig) -> Result<WeChatApi, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wechat-scan-login/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(transport)?;
        Ok(WeChatApi {
            inner: std::sync::Arc::new(Inner {
                http,
                config,
                tokens: TokenCache::default(),
            }),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.config.base.trim_end_matches('/'), path)
    }

    /// Fetches an access token at start: `Ok` once one is had; a credential
    /// error (see [`ApiError::is_credential_error`]) is returned at once;
    /// any other error is reported to `on_retry` and retried with backoff
    /// (1 s doubling to 60 s); the caller bounds it (e.g. with shutdown).
    pub async fn first_token(
        &self,
        mut on_retry: impl FnMut(&ApiError, Duration),
    ) -> Result<(), ApiError> {
        let mut backoff = daemon_kit::backoff::Backoff::<1_000, 60_000>::default();
        loop {
            match self.access_token().await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_credential_error() => return Err(e),
                Err(e) => {
                    let delay = backoff.next_delay();
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The start-up token fetch every daemon with an AppSecret does: `Ok`
    /// when a token was had at once; `Err` with what to do about it for a
    /// credential error (the daemon must not start); for any other error
    /// `Ok` too, with `health` not ready (503 with the reason) while a
    /// background task retries with backoff, ready once a token is had, and
    /// failed (shutting the daemon down) if a credential error turns up.
    pub async fn start_up(
        &self,
        health: &std::sync::Arc<daemon_kit::health::Health>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        match self.access_token().await {
            Ok(_) => {
                tracing::info!("access token fetched");
                Ok(())
            }
            Err(e) if e.is_credential_error() => Err(credential_message(&e)),
            Err(e) => {
                health.not_ready(format!("no WeChat access token yet: {e}"));
                let (api, health, shutdown) = (
                    self.clone(),
                    std::sync::Arc::clone(health),
                    shutdown.clone(),
                );
                tokio::spawn(async move {
                    let retry = api.first_token(|e, delay| {
                        tracing::warn!(cause = %e, retry_in_s = delay.as_secs(), "no WeChat access token yet; retrying");
                        health.not_ready(format!("no WeChat access token yet: {e}"));
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = retry => match r {
                            Ok(()) => {
                                tracing::info!("access token fetched");
                                health.ready();
                            }
                            Err(e) => {
                                let msg = credential_message(&e);
                                tracing::error!("{msg}");
                                health.fail(msg, &shutdown);
                            }
                        },
                    }
                });
                Ok(())
            }
        }
    }

    /// The current access token (from the cache, or fetched).
    pub async fn access_token(&self) -> Result<String, ApiError> {
        self.inner.tokens.get(|force| self.fetch_token(force)).await
    }

    async fn fetch_token(&self, force_refresh: bool) -> Result<token::Fetched, ApiError> {
        #[derive(Serialize)]
        struct Req<'a> {
            grant_type: &'static str,
            appid: &'a str,
            secret: &'a str,
            force_refresh: bool,
        }
        #[derive(Deserialize)]
        struct Resp {
            access_token: String,
            expires_in: u64,
        }
        let cfg = &self.inner.config;
        let req = self
            .inner
            .http
            .post(self.url("/cgi-bin/stable_token"))
            .json(&Req {
                grant_type: "client_credential",
                appid: &cfg.app_id,
                secret: &cfg.app_secret,
                force_refresh,
            });
        let resp: Resp = self.send(req).await?;
        tracing::debug!(
            expires_in = resp.expires_in,
            force_refresh,
            "access token fetched"
        );
        Ok(token::Fetched {
            token: resp.access_token,
            expires_in: Duration::from_secs(resp.expires_in),
        })
    }

    /// Sends a request and reads a WeChat JSON answer.
    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ApiError> {
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::BadAnswer(format!(
                "answer of {} bytes",
                body.len()
            )));
        }
        if !status.is_success() {
            return Err(ApiError::Transport(format!("HTTP {status}")));
        }
        // Success answers carry no errcode: parse the error shape only when
        // the key is there, so a success is parsed once.
        if body.windows(9).any(|w| w == b"\"errcode\"")
            && let Ok(e) = serde_json::from_slice::<ErrorFields>(&body)
            && e.errcode != 0
        {
            return Err(ApiError::WeChat {
                errcode: e.errcode,
                errmsg: e.errmsg,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer(e.to_string()))
    }

    /// Runs a call that needs the access token; on a token errcode the token
    /// is refreshed (once, shared with concurrent callers) and the call
    /// retried once.
    async fn with_token<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let token = self.access_token().await?;
        match self.send(build(&token)).await {
            Err(ApiError::WeChat { errcode, .. }) if TOKEN_ERRCODES.contains(&errcode) => {
                tracing::info!(errcode, "access token rejected; refreshing once");
                let fresh = self
                    .inner
                    .tokens
                    .invalidate(&token, |force| self.fetch_token(force))
                    .await?;
                self.send(build(&fresh)).await
            }
            other => other,
        }
    }

    /// Mints a temporary `QR_SCENE` code for `scene_id` (non-zero).
    pub async fn create_qr_scene(
        &self,
        scene_id: u32,
        expire_seconds: u32,
    ) -> Result<QrCode, ApiError> {
        let body = serde_json::json!({
            "expire_seconds": expire_seconds,
            "action_name": "QR_SCENE",
            "action_info": {"scene": {"scene_id": scene_id}},
        });
        self.with_token(|t| {
            self.inner
                .http
                .post(self.url("/cgi-bin/qrcode/create"))
                .query(&[("access_token", t)])
                .json(&body)
        })
        .await
    }

    /// Looks a user up by openid.
    pub async fn user_info(&self, openid: &str) -> Result<UserInfo, ApiError> {
        self.with_token(|t| {
            self.inner.http.get(self.url("/cgi-bin/user/info")).query(&[
                ("access_token", t),
                ("openid", openid),
                ("lang", "zh_CN"),
            ])
        })
        .await
    }
}
