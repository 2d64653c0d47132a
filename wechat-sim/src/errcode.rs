//! WeChat API error codes the simulator answers with, their `errmsg` texts,
//! and the error answer itself (HTTP 200 with `{"errcode","errmsg"}`, as
//! WeChat's API does).

use daemon_kit::http::{Response, json};
use hyper::StatusCode;
use rand::Rng;

pub const SYSTEM_ERROR: i64 = -1;
pub const INVALID_CREDENTIAL: i64 = 40001;
pub const INVALID_GRANT_TYPE: i64 = 40002;
pub const INVALID_OPENID: i64 = 40003;
pub const INVALID_APPID: i64 = 40013;
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
pub const INVALID_ACTION_NAME: i64 = 40052;
pub const INVALID_ARGS: i64 = 40097;
pub const INVALID_APPSECRET: i64 = 40125;
pub const MISSING_ACCESS_TOKEN: i64 = 41001;
pub const MISSING_APPID: i64 = 41002;
pub const MISSING_SECRET: i64 = 41004;
pub const MISSING_OPENID: i64 = 41009;
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
pub const REQUIRE_GET: i64 = 43001;
pub const REQUIRE_POST: i64 = 43002;
pub const EMPTY_POST_DATA: i64 = 44002;
pub const DAILY_QUOTA: i64 = 45009;
pub const MINUTE_QUOTA: i64 = 45011;
pub const DATA_FORMAT_ERROR: i64 = 47001;
pub const API_UNAUTHORIZED: i64 = 48001;

/// WeChat's `errmsg` for a code (without the `rid` suffix).
pub fn errmsg(code: i64) -> &'static str {
    match code {
        SYSTEM_ERROR => "system error",
        INVALID_CREDENTIAL => "invalid credential, access_token is invalid or not latest",
        INVALID_GRANT_TYPE => "invalid grant_type",
        INVALID_OPENID => "invalid openid",
        INVALID_APPID => "invalid appid",
        INVALID_ACCESS_TOKEN => "invalid access_token",
        INVALID_ACTION_NAME => "invalid action name",
        INVALID_ARGS => "invalid args",
        INVALID_APPSECRET => "invalid appsecret",
        40164 => "invalid ip, not in whitelist",
        MISSING_ACCESS_TOKEN => "access_token missing",
        MISSING_APPID => "appid missing",
        MISSING_SECRET => "appsecret missing",
        MISSING_OPENID => "missing openid",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        REQUIRE_GET => "require GET method",
        REQUIRE_POST => "require POST method",
        EMPTY_POST_DATA => "empty post data",
        DAILY_QUOTA => "reach max api daily quota limit",
        MINUTE_QUOTA => "api minute-quota reach limit, must slower, retry next minute",
        DATA_FORMAT_ERROR => "data format error",
        API_UNAUTHORIZED => "api unauthorized",
        50002 => "user limited",
        _ => "simulated error",
    }
}

/// The JSON error answer, with a random `rid` as WeChat adds for support
/// requests. Clients must go by `errcode`, never by the text.
pub fn answer(code: i64) -> Response {
    let rid: String = {
        let mut rng = rand::rng();
        format!(
            "{:08x}-{:08x}-{:08x}",
            rng.random::<u32>(),
            rng.random::<u32>(),
            rng.random::<u32>()
        )
    };
    let body = serde_json::json!({
        "errcode": code,
        "errmsg": format!("{} rid: {rid}", errmsg(code)),
    });
    json(StatusCode::OK, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_answers_are_http_200_with_errcode() {
        let resp = answer(INVALID_CREDENTIAL);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errcode"], 40001);
        assert!(
            v["errmsg"]
                .as_str()
                .unwrap()
                .starts_with("invalid credential")
        );
        assert_eq!(errmsg(12345), "simulated error");
    }
}
