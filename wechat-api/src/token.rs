//! The access-token cache.
//!
//! Readers take the cached token under a short read lock. A token is
//! refreshed when it reaches its refresh point (a fifth of its lifetime
//! before expiry, at least 30 s, at most 5 min): one caller fetches while the
//! others wait on the refresh lock and then take its result. A token WeChat
//! rejected is invalidated once: fetched again with `force_refresh:false`,
//! and only if that returns the very same token, with `force_refresh:true`
//! (never more often than once per [`FORCE_INTERVAL`]).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ApiError;

/// Least time between two `force_refresh:true` calls (WeChat allows about
/// 20 a day, 30 s apart).
pub const FORCE_INTERVAL: Duration = Duration::from_secs(30);

/// A token as fetched.
pub struct Fetched {
    pub token: String,
    pub expires_in: Duration,
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct RefreshState {
    last_forced: Option<Instant>,
}

/// The longest token lifetime believed, whatever `expires_in` says.
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(7200);

/// See the module doc.
#[derive(Default)]
pub struct TokenCache {
    current: RwLock<Option<Cached>>,
    refresh: Mutex<RefreshState>,
}

impl TokenCache {
    fn snapshot(&self) -> Option<Cached> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn store(&self, fetched: Fetched) -> Arc<str> {
        let now = Instant::now();
        // WeChat's tokens live 7,200 s; a larger (or absurd) `expires_in`
        // is clamped so `now + life` cannot overflow.
        let life = fetched.expires_in.min(MAX_TOKEN_LIFE);
        let margin = (life / 5)
            .clamp(Duration::from_secs(30), Duration::from_secs(300))
            .min(life / 2);
        let cached = Cached {
            token: Arc::from(fetched.token),
            refresh_at: now + life - margin,
            expires_at: now + life,
        };
        let token = cached.token.clone();
        if let Ok(mut c) = self.current.write() {
            *c = Some(cached);
        }
        token
    }

    /// The cached token, refreshing it first when due.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<String, ApiError>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Fetched, ApiError>>,
    {
        if let Some(c) = self.snapshot()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.to_string());
        }
        let _guard = self.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        let cached = self.snapshot();
        if let Some(c) = &cached
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.to_string());
        }
        match fetch(false).await {
            Ok(f) => Ok(self.store(f).to_string()),
            // A token past its refresh point but not expired still works.
            Err(e) => match cached {
                Some(c) if Instant::now() < c.expires_at => {
                    tracing::warn!(cause = %e, "token refresh failed; using the current token until it expires");
                    Ok(c.token.to_string())
                }
                _ => Err(e),
            },
        }
    }

    /// WeChat rejected `failed`: get a different one (see the module doc).
    pub async fn invalidate<F, Fut>(&self, failed: &str, fetch: F) -> Result<String, ApiError>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Fetched, ApiError>>,
    {
        let mut state = self.refresh.lock().await;
        if let Some(c) = self.snapshot()
            && &*c.token != failed
        {
            // Another caller already replaced it.
            return Ok(c.token.to_string());
        }
        let fetched = fetch(false).await?;
        if fetched.token != failed {
            return Ok(self.store(fetched).to_string());
        }
        let now = Instant::now();
        if state
            .last_forced
            .is_some_and(|t| now.duration_since(t) < FORCE_INTERVAL)
        {
            tracing::warn!(
                "WeChat returned the rejected token again; force refresh used less than 30 s ago"
            );
            return Ok(self.store(fetched).to_string());
        }
        state.last_forced = Some(now);
        tracing::warn!("WeChat returned the rejected token again; asking with force_refresh");
        let forced = fetch(true).await?;
        Ok(self.store(forced).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fetched(token: &str, secs: u64) -> Fetched {
        Fetched {
            token: token.into(),
            expires_in: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_expires_in_is_clamped_not_a_panic() {
        let cache = TokenCache::default();
        let t = cache
            .get(|_| async { Ok(fetched("huge", u64::MAX)) })
            .await
            .unwrap();
        assert_eq!(t, "huge");
        // Believed for at most MAX_TOKEN_LIFE: refreshed before it ends.
        tokio::time::advance(MAX_TOKEN_LIFE).await;
        let again = cache
            .get(|_| async { Ok(fetched("next", 7200)) })
            .await
            .unwrap();
        assert_eq!(again, "next");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_and_refresh_ahead_of_expiry() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|_| {
                        let calls = calls.clone();
                        async move {
                            let n = calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(fetched(&format!("t{n}"), 7200))
                        }
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "t0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // 7200 s lifetime: refreshed 300 s before expiry, not earlier.
        tokio::time::advance(Duration::from_secs(6890)).await;
        let n = || {
            let calls = calls.clone();
            move |_| {
                let calls = calls.clone();
                async move {
                    Ok(fetched(
                        &format!("t{}", calls.fetch_add(1, Ordering::SeqCst)),
                        7200,
                    ))
                }
            }
        };
        assert_eq!(cache.get(n()).await.unwrap(), "t0");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(cache.get(n()).await.unwrap(), "t1");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forces_only_when_the_same_token_comes_back() {
        let cache = TokenCache::default();
        let forced = Arc::new(AtomicUsize::new(0));
        cache
            .get(|_| async { Ok(fetched("old", 7200)) })
            .await
            .unwrap();
        let f = |forced: Arc<AtomicUsize>| {
            move |force: bool| {
                let forced = forced.clone();
                async move {
                    if force {
                        forced.fetch_add(1, Ordering::SeqCst);
                        Ok(fetched("new", 7200))
                    } else {
                        Ok(fetched("old", 7200))
                    }
                }
            }
        };
        assert_eq!(
            cache.invalidate("old", f(forced.clone())).await.unwrap(),
            "new"
        );
        assert_eq!(forced.load(Ordering::SeqCst), 1);
        // A stale caller still holding "old" gets "new" without a fetch.
        assert_eq!(
            cache.invalidate("old", f(forced.clone())).await.unwrap(),
            "new"
        );
        assert_eq!(forced.load(Ordering::SeqCst), 1);
        // "new" rejected within 30 s: no second force.
        let g = |force: bool| async move {
            assert!(!force, "must not force twice within 30 s");
            Ok(fetched("new", 7200))
        };
        assert_eq!(cache.invalidate("new", g).await.unwrap(), "new");
        tokio::time::advance(FORCE_INTERVAL).await;
        let h = |force: bool| async move { Ok(fetched(if force { "newer" } else { "new" }, 7200)) };
        assert_eq!(cache.invalidate("new", h).await.unwrap(), "newer");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_a_still_valid_token() {
        let cache = TokenCache::default();
        cache
            .get(|_| async { Ok(fetched("a", 300)) })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(280)).await;
        let fail = |_| async { Err(ApiError::Transport("down".into())) };
        assert_eq!(cache.get(fail).await.unwrap(), "a");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(cache.get(fail).await.is_err());
    }
}
