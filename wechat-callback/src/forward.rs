//! `--forward-url`: the account's own message handler behind this one. An
//! account has one server URL, and most already run a handler (EasyWeChat,
//! WxJava, …); every verified POST that is not a login is passed on to it
//! with the same query string, the same raw body and the same
//! `Content-Type`, so its own signature check and decryption pass
//! unchanged, and its 2xx answer goes back to WeChat as it is. An error, a
//! non-2xx answer or no answer within the budget gives `success` (WeChat
//! then shows nothing and does not retry).

use std::time::Duration;

use bytes::Bytes;

/// Largest upstream answer relayed (WeChat's replies are small XML).
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a forward gave `success` instead of the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream unreachable: {0}")]
    Transport(String),
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("upstream answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
}

/// The upstream handler.
#[derive(Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    url: url::Url,
    budget: Duration,
}

/// The upstream's answer, to relay.
pub struct Relayed {
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Forwarder {
    /// A forwarder to `url` that gives up after `budget`.
    pub fn new(url: url::Url, budget: Duration) -> Result<Forwarder, String> {
        let http = reqwest::Client::builder()
            .timeout(budget)
            .connect_timeout(budget.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Forwarder { http, url, budget })
    }

    /// POSTs `body` with WeChat's `query` and `content_type`.
    pub async fn forward(
        &self,
        query: Option<&str>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Relayed, ForwardError> {
        let mut url = self.url.clone();
        url.set_query(query);
        let mut req = self.http.post(url).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let send = async {
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(ForwardError::Status(status.as_u16()));
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
            {
                return Err(ForwardError::TooLarge);
            }
            let body = resp.bytes().await.map_err(transport)?;
            if body.len() > MAX_ANSWER_BYTES {
                return Err(ForwardError::TooLarge);
            }
            Ok(Relayed { content_type, body })
        };
        tokio::time::timeout(self.budget, send)
            .await
            .unwrap_or(Err(ForwardError::Timeout(self.budget)))
    }
}

/// Without the URL: it carries WeChat's signature in its query.
fn transport(e: reqwest::Error) -> ForwardError {
    if e.is_timeout() {
        return ForwardError::Timeout(Duration::ZERO);
    }
    ForwardError::Transport(e.without_url().to_string())
}
