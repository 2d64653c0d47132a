//! The login token handed to the browser in `scan_success`: a JWT (HS256)
//! with `sub` = openid, `nickname`, `iat`, `exp` (5 minutes later), a
//! random `jti`, `iss`, `aud` (when configured) and `unionid` (when WeChat
//! gave one), so the site's backend can check it with any JWT library.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::{Deserialize, Serialize};

/// How long a login token is valid.
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// The token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub nickname: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
}

/// Signs login tokens with the configured secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    issuer: String,
    audience: Option<String>,
}

impl TokenSigner {
    pub fn new(secret: &str, issuer: &str, audience: Option<&str>) -> TokenSigner {
        TokenSigner {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: issuer.to_string(),
            audience: audience.map(str::to_string),
        }
    }

    /// A fresh token for `openid` shown as `nickname`.
    pub fn sign(
        &self,
        openid: &str,
        nickname: &str,
        unionid: Option<&str>,
        now: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let jti: [u8; 16] = rand::random();
        let claims = Claims {
            sub: openid.to_string(),
            nickname: nickname.to_string(),
            iat: now,
            exp: now + TOKEN_LIFETIME_SECS,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            unionid: unionid.map(str::to_string),
        };
        encode(&Header::default(), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[test]
    fn verifies_with_the_same_secret_only() {
        let now = protocol::wechat::unix_now();
        let signer = TokenSigner::new("s3cret", "iss-x", Some("https://site"));
        let t = signer.sign("o1", "Alice", Some("u1"), now).unwrap();
        let mut strict = Validation::default();
        strict.set_audience(&["https://site"]);
        strict.set_issuer(&["iss-x"]);
        let c = decode::<Claims>(&t, &DecodingKey::from_secret(b"s3cret"), &strict)
            .unwrap()
            .claims;
        assert_eq!(
            (c.sub.as_str(), c.nickname.as_str(), c.exp - c.iat),
            ("o1", "Alice", 300)
        );
        assert_eq!(c.unionid.as_deref(), Some("u1"));
        let plain = TokenSigner::new("s3cret", "iss-x", None)
            .sign("o1", "Alice", None, now)
            .unwrap();
        let v = Validation::default();
        let c = decode::<Claims>(&plain, &DecodingKey::from_secret(b"s3cret"), &v)
            .unwrap()
            .claims;
        assert_eq!((c.aud, c.unionid), (None, None));
        assert_eq!(c.jti.len(), 32);
        assert!(decode::<Claims>(&t, &DecodingKey::from_secret(b"other"), &strict).is_err());
        let t2 = signer.sign("o1", "Alice", None, now).unwrap();
        assert_ne!(t, t2, "jti makes every token unique");
    }
}
