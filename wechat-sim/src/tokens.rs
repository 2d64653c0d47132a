//! Access tokens with WeChat's semantics: `stable_token` hands every caller
//! the same token while it is valid (a new one on `force_refresh`, which
//! invalidates the old), `cgi-bin/token` mints a new one on every call and
//! invalidates the one it minted before. Expired tokens are remembered for a
//! while so they answer 42001 rather than 40001.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::errcode;

/// How long an expired token is still recognised (42001 instead of 40001).
const EXPIRED_MEMORY: Duration = Duration::from_secs(3600);
/// Most tokens remembered (valid or recently expired).
const MAX_TOKENS: usize = 4096;
/// Characters of WeChat access tokens.
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A token handed out, with its remaining lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    /// True when this call minted it (false: the cached stable token).
    pub minted: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// token → expiry.
    tokens: HashMap<String, Instant>,
    /// The current `stable_token` token.
    stable: Option<String>,
    /// The last token `cgi-bin/token` minted.
    plain: Option<String>,
}

/// All access tokens.
#[derive(Debug)]
pub struct TokenStore {
    inner: Mutex<Inner>,
    lifetime: Duration,
    seq: AtomicU64,
}

impl TokenStore {
    pub fn new(lifetime: Duration) -> TokenStore {
        TokenStore {
            inner: Mutex::new(Inner::default()),
            lifetime,
            seq: AtomicU64::new(rand::rng().random_range(60..90)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mint(&self, inner: &mut Inner, now: Instant) -> Issued {
        if inner.tokens.len() >= MAX_TOKENS {
            inner
                .tokens
                .retain(|_, exp| *exp > now || now.duration_since(*exp) < EXPIRED_MEMORY);
            if inner.tokens.len() >= MAX_TOKENS {
                inner.tokens.retain(|_, exp| *exp > now);
            }
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        let body: String = (0..120)
            .map(|_| char::from(TOKEN_CHARS[rng.random_range(0..TOKEN_CHARS.len())]))
            .collect();
        let token = format!("{seq}_{body}");
        inner.tokens.insert(token.clone(), now + self.lifetime);
        Issued {
            access_token: token,
            expires_in: self.lifetime.as_secs(),
            minted: true,
        }
    }

    /// `POST /cgi-bin/stable_token`.
    pub fn stable(&self, force_refresh: bool, now: Instant) -> Issued {
        let mut inner = self.lock();
        if let Some(current) = inner.stable.clone() {
            let expiry = inner.tokens.get(&current).copied();
            match expiry {
                Some(exp) if exp > now && !force_refresh => {
                    return Issued {
                        access_token: current,
                        expires_in: exp.duration_since(now).as_secs().max(1),
                        minted: false,
                    };
                }
                Some(exp) if exp > now => {
                    // A forced refresh ends the old token at once.
                    inner.tokens.remove(&current);
                }
                _ => {}
            }
        }
        let issued = self.mint(&mut inner, now);
        inner.stable = Some(issued.access_token.clone());
        issued
    }

    /// `GET /cgi-bin/token`: a new token every call; the previous one from
    /// this endpoint stops working.
    pub fn plain(&self, now: Instant) -> Issued {
        let mut inner = self.lock();
        if let Some(prev) = inner.plain.take() {
            inner.tokens.remove(&prev);
        }
        let issued = self.mint(&mut inner, now);
        inner.plain = Some(issued.access_token.clone());
        issued
    }

    /// Checks an `access_token` query value: `Err(errcode)` when it is
    /// missing (41001), unknown or invalidated (40001) or expired (42001).
    pub fn check(&self, token: Option<&str>, now: Instant) -> Result<(), i64> {
        let token = match token {
            None | Some("") => return Err(errcode::MISSING_ACCESS_TOKEN),
            Some(t) => t,
        };
        let inner = self.lock();
        match inner.tokens.get(token) {
            Some(exp) if *exp > now => Ok(()),
            Some(_) => Err(errcode::ACCESS_TOKEN_EXPIRED),
            None => Err(errcode::INVALID_CREDENTIAL),
        }
    }

    /// Expires every token now (fault injection).
    pub fn expire_all(&self, now: Instant) {
        let mut inner = self.lock();
        for exp in inner.tokens.values_mut() {
            if *exp > now {
                *exp = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_token_is_shared_until_forced() {
        let store = TokenStore::new(Duration::from_secs(7200));
        let t0 = Instant::now();
        let a = store.stable(false, t0);
        assert!(a.minted);
        assert_eq!(a.expires_in, 7200);
        let b = store.stable(false, t0 + Duration::from_secs(100));
        assert_eq!(b.access_token, a.access_token);
        assert!(!b.minted);
        assert_eq!(b.expires_in, 7100);
        assert_eq!(store.check(Some(&a.access_token), t0), Ok(()));

        let c = store.stable(true, t0 + Duration::from_secs(200));
        assert_ne!(c.access_token, a.access_token);
        assert_eq!(
            store.check(Some(&a.access_token), t0 + Duration::from_secs(200)),
            Err(errcode::INVALID_CREDENTIAL)
        );
        assert_eq!(store.check(Some(&c.access_token), t0), Ok(()));
        assert!(
            c.access_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }

    #[test]
    fn expiry_gives_42001_and_a_new_stable_token() {
        let store = TokenStore::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a = store.stable(false, t0);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            store.check(Some(&a.access_token), later),
            Err(errcode::ACCESS_TOKEN_EXPIRED)
        );
        let b = store.stable(false, later);
        assert_ne!(b.access_token, a.access_token);
        assert_eq!(store.check(Some(&b.access_token), later), Ok(()));
        assert_eq!(store.check(None, later), Err(errcode::MISSING_ACCESS_TOKEN));
        assert_eq!(
            store.check(Some("nope"), later),
            Err(errcode::INVALID_CREDENTIAL)
        );
    }

    #[test]
    fn plain_token_invalidates_the_previous_one() {
        let store = TokenStore::new(Duration::from_secs(7200));
        let t0 = Instant::now();
        let s = store.stable(false, t0);
        let a = store.plain(t0);
        let b = store.plain(t0);
        assert_ne!(a.access_token, b.access_token);
        assert_eq!(
            store.check(Some(&a.access_token), t0),
            Err(errcode::INVALID_CREDENTIAL)
        );
        assert_eq!(store.check(Some(&b.access_token), t0), Ok(()));
        // The two kinds are independent, as on WeChat.
        assert_eq!(store.check(Some(&s.access_token), t0), Ok(()));
    }

    #[test]
    fn expire_all() {
        let store = TokenStore::new(Duration::from_secs(7200));
        let t0 = Instant::now();
        let a = store.stable(false, t0);
        store.expire_all(t0);
        assert_eq!(
            store.check(Some(&a.access_token), t0),
            Err(errcode::ACCESS_TOKEN_EXPIRED)
        );
        assert_ne!(store.stable(false, t0).access_token, a.access_token);
    }
}
