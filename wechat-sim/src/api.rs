//! The WeChat API subset, with WeChat's request and answer shapes: access
//! tokens (`stable_token`, `token`), temporary and permanent QR codes
//! (`qrcode/create`), `user/info`, and the QR image (`showqrcode`). Errors
//! are HTTP 200 with a non-zero `errcode`, as WeChat answers them.

use std::time::Instant;

use daemon_kit::http::{Response, json, query_pairs};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::errcode::{self, answer};
use crate::respond::{read_body, sim_error, svg};
use crate::state::SimState;
use crate::tickets::{DEFAULT_EXPIRE_SECONDS, Lookup, MAX_EXPIRE_SECONDS, Scene};

/// Longest `scene_str` WeChat accepts, in bytes.
pub const MAX_SCENE_STR: usize = 64;
/// Largest `scene_id` of a permanent code.
pub const MAX_LIMIT_SCENE_ID: u64 = 100_000;

/// What a handler gives back: a success body, or an errcode.
type ApiResult = Result<Response, i64>;

struct Call {
    method: Method,
    query: Vec<(String, String)>,
    body: Incoming,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn json_body(self) -> Result<Value, i64> {
        let bytes = read_body(self.body)
            .await
            .map_err(|_| errcode::DATA_FORMAT_ERROR)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(errcode::EMPTY_POST_DATA);
        }
        serde_json::from_slice(&bytes).map_err(|_| errcode::DATA_FORMAT_ERROR)
    }
}

/// Serves one `/cgi-bin/*` request.
pub async fn handle(state: &SimState, req: Request<Incoming>) -> Response {
    let path = req.uri().path().to_string();
    state.stats.api_call(&path);
    if let Some(delay) = state.faults.latency() {
        tokio::time::sleep(delay).await;
    }
    let call = Call {
        method: req.method().clone(),
        query: query_pairs(req.uri().query()),
        body: req.into_body(),
    };
    if path == "/cgi-bin/showqrcode" {
        return showqrcode(state, &call);
    }
    let known = matches!(
        path.as_str(),
        "/cgi-bin/stable_token"
            | "/cgi-bin/token"
            | "/cgi-bin/qrcode/create"
            | "/cgi-bin/user/info"
    );
    if !known {
        return sim_error(StatusCode::NOT_FOUND, "not_found", "no such API");
    }
    if let Some(code) = state.faults.take_failure(&path) {
        state.stats.faults_injected.inc();
        state.stats.api_errors.inc();
        return answer(code);
    }
    let result = match path.as_str() {
        "/cgi-bin/stable_token" => stable_token(state, call).await,
        "/cgi-bin/token" => token(state, &call),
        "/cgi-bin/qrcode/create" => qrcode_create(state, call).await,
        _ => user_info(state, &call),
    };
    result.unwrap_or_else(|code| {
        state.stats.api_errors.inc();
        answer(code)
    })
}

fn ok_json(body: &impl Serialize) -> Response {
    json(
        StatusCode::OK,
        serde_json::to_string(body).unwrap_or_default(),
    )
}

#[derive(Serialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// Checks the app's credentials as WeChat does.
fn check_app(
    state: &SimState,
    grant_type: Option<&str>,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<(), i64> {
    let appid = appid
        .filter(|s| !s.is_empty())
        .ok_or(errcode::MISSING_APPID)?;
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(errcode::MISSING_SECRET)?;
    if grant_type != Some("client_credential") {
        return Err(errcode::INVALID_GRANT_TYPE);
    }
    if appid != state.settings.app_id {
        return Err(errcode::INVALID_APPID);
    }
    if secret != state.settings.app_secret.expose() {
        return Err(errcode::INVALID_APPSECRET);
    }
    Ok(())
}

/// `POST /cgi-bin/stable_token`.
async fn stable_token(state: &SimState, call: Call) -> ApiResult {
    if call.method != Method::POST {
        return Err(errcode::REQUIRE_POST);
    }
    let body = call.json_body().await?;
    let s = |k: &str| body.get(k).and_then(Value::as_str);
    check_app(state, s("grant_type"), s("appid"), s("secret"))?;
    let force = match body.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(errcode::INVALID_ARGS),
    };
    if force {
        state.stats.force_refreshes.inc();
    }
    let issued = state.tokens.stable(force, Instant::now());
    if issued.minted {
        state.stats.tokens_issued.inc();
        tracing::info!(force_refresh = force, "stable access token minted");
    }
    Ok(ok_json(&TokenAnswer {
        access_token: issued.access_token,
        expires_in: issued.expires_in,
    }))
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`.
fn token(state: &SimState, call: &Call) -> ApiResult {
    if call.method != Method::GET {
        return Err(errcode::REQUIRE_GET);
    }
    check_app(
        state,
        call.param("grant_type"),
        call.param("appid"),
        call.param("secret"),
    )?;
    let issued = state.tokens.plain(Instant::now());
    state.stats.tokens_issued.inc();
    Ok(ok_json(&TokenAnswer {
        access_token: issued.access_token,
        expires_in: issued.expires_in,
    }))
}

#[derive(Serialize)]
struct QrAnswer<'a> {
    ticket: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expire_seconds: Option<u32>,
    url: &'a str,
}

/// A u64 from a JSON number or a numeric string.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `POST /cgi-bin/qrcode/create?access_token=T`.
async fn qrcode_create(state: &SimState, call: Call) -> ApiResult {
    if call.method != Method::POST {
        return Err(errcode::REQUIRE_POST);
    }
    let now = Instant::now();
    state.tokens.check(call.param("access_token"), now)?;
    let body = call.json_body().await?;
    let action: &'static str = match body.get("action_name").and_then(Value::as_str) {
        Some("QR_SCENE") => "QR_SCENE",
        Some("QR_STR_SCENE") => "QR_STR_SCENE",
        Some("QR_LIMIT_SCENE") => "QR_LIMIT_SCENE",
        Some("QR_LIMIT_STR_SCENE") => "QR_LIMIT_STR_SCENE",
        _ => return Err(errcode::INVALID_ACTION_NAME),
    };
    let scene_v = body.pointer("/action_info/scene");
    let scene = if action.ends_with("STR_SCENE") {
        match scene_v
            .and_then(|s| s.get("scene_str"))
            .and_then(Value::as_str)
        {
            Some(s) if !s.is_empty() && s.len() <= MAX_SCENE_STR => Scene::Str(s.to_string()),
            _ => return Err(errcode::INVALID_ARGS),
        }
    } else {
        let max = if action == "QR_LIMIT_SCENE" {
            MAX_LIMIT_SCENE_ID
        } else {
            u64::from(u32::MAX)
        };
        match scene_v
            .and_then(|s| s.get("scene_id"))
            .and_then(as_u64)
            .filter(|n| (1..=max).contains(n))
            .and_then(|n| u32::try_from(n).ok())
        {
            Some(n) => Scene::Id(n),
            None => return Err(errcode::INVALID_ARGS),
        }
    };
    let expire = if action.starts_with("QR_LIMIT") {
        None
    } else {
        let asked = match body.get("expire_seconds") {
            None | Some(Value::Null) => None,
            Some(v) => match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .map(Some)
            .ok_or(errcode::INVALID_ARGS)?,
        };
        Some(match asked {
            Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX).min(MAX_EXPIRE_SECONDS),
            _ => DEFAULT_EXPIRE_SECONDS,
        })
    };
    let t = state.tickets.create(action, scene, expire, now);
    state.stats.tickets_created.inc();
    Ok(ok_json(&QrAnswer {
        ticket: &t.ticket,
        expire_seconds: t.expire_seconds,
        url: &t.url,
    }))
}

/// `GET /cgi-bin/user/info?access_token=T&openid=O&lang=zh_CN`.
fn user_info(state: &SimState, call: &Call) -> ApiResult {
    if call.method != Method::GET {
        return Err(errcode::REQUIRE_GET);
    }
    state
        .tokens
        .check(call.param("access_token"), Instant::now())?;
    let openid = call
        .param("openid")
        .filter(|s| !s.is_empty())
        .ok_or(errcode::MISSING_OPENID)?;
    let lang = call
        .param("lang")
        .filter(|l| matches!(*l, "zh_CN" | "zh_TW" | "en"))
        .unwrap_or("zh_CN");
    let user = state.users.get(openid).ok_or(errcode::INVALID_OPENID)?;
    Ok(ok_json(&user.info(lang, state.settings.nicknames)))
}

/// `GET /cgi-bin/showqrcode?ticket=<url-encoded>`: the code's QR image as
/// SVG; 404 for an unknown or expired ticket.
fn showqrcode(state: &SimState, call: &Call) -> Response {
    if call.method != Method::GET && call.method != Method::HEAD {
        return sim_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET only",
        );
    }
    let Some(ticket) = call.param("ticket").filter(|t| !t.is_empty()) else {
        return sim_error(
            StatusCode::NOT_FOUND,
            "missing_ticket",
            "ticket is required",
        );
    };
    let t = match state.tickets.get(ticket, Instant::now()) {
        Lookup::Live(t) => t,
        Lookup::Expired(_) => {
            return sim_error(
                StatusCode::NOT_FOUND,
                "ticket_expired",
                "the QR code has expired",
            );
        }
        Lookup::Unknown => {
            return sim_error(
                StatusCode::NOT_FOUND,
                "unknown_ticket",
                "no such ticket (was it URL-encoded?)",
            );
        }
    };
    match render_svg(&t.url) {
        Some(image) => svg(image),
        None => sim_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "render_failed",
            "cannot render the QR code",
        ),
    }
}

/// A QR code of `content` as SVG (430 px, like WeChat's images).
pub fn render_svg(content: &str) -> Option<String> {
    let code = qrcode::QrCode::new(content.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(430, 430)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_svg() {
        let svg = render_svg("http://weixin.qq.com/q/02abcdefghijklmnopqrst").unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("<path"));
    }

    #[test]
    fn numbers_or_numeric_strings() {
        assert_eq!(as_u64(&serde_json::json!(5)), Some(5));
        assert_eq!(as_u64(&serde_json::json!("7")), Some(7));
        assert_eq!(as_u64(&serde_json::json!(-1)), None);
        assert_eq!(as_u64(&serde_json::json!(1.5)), None);
        assert_eq!(as_u64(&serde_json::json!([])), None);
    }
}
