//! Checking a login token as the site's backend would: with the shared
//! secret and any JWT library, not with the daemon's own code.

use serde::Deserialize;

/// The issuer the daemons put in `iss` unless `--login-token-issuer` says
/// otherwise.
pub const DEFAULT_ISSUER: &str = "wechat-scan-login";

/// The claims a login token carries.
#[derive(Debug, Deserialize)]
pub struct LoginClaims {
    pub iss: String,
    pub aud: Option<String>,
    pub sub: String,
    pub nickname: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Verifies an HS256 token with `secret`, the default issuer and, when
/// given, `audience` (a token with an `aud` verified without one fails);
/// panics when it does not verify.
pub fn verify(token: &str, secret: &str, audience: Option<&str>) -> LoginClaims {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[DEFAULT_ISSUER]);
    if let Some(aud) = audience {
        validation.set_audience(&[aud]);
    }
    jsonwebtoken::decode::<LoginClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("the token does not verify with the shared secret: {e}"))
    .claims
}
