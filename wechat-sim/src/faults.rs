//! Fault injection for tests and benchmarks: make the next N API calls (all,
//! or those to one path) fail with an errcode, add latency to every API
//! call, expire every token at once. Set with `POST /sim/faults`, cleared
//! with `DELETE /sim/faults`. The fast path (no faults) takes no lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::errcode;

/// The body of `POST /sim/faults`; every field optional, the ones given
/// replace the current setting. A `fail_next` starts a new batch: its
/// `errcode` and `path` are the ones in the same request (default -1, any
/// path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// How many of the next API calls fail.
    pub fail_next: Option<u32>,
    /// With which errcode (default -1, "system error").
    pub errcode: Option<i64>,
    /// Only calls to this path fail (e.g. `/cgi-bin/qrcode/create`).
    pub path: Option<String>,
    /// Milliseconds added to every API call until reset.
    pub latency_ms: Option<u64>,
    /// Expire every access token now.
    pub expire_tokens: Option<bool>,
}

/// The current settings, as `GET /sim/faults` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultView {
    pub fail_next: u32,
    pub errcode: i64,
    pub path: Option<String>,
    pub latency_ms: u64,
}

#[derive(Debug)]
struct Plan {
    errcode: i64,
    path: Option<String>,
}

/// The faults in force.
#[derive(Debug)]
pub struct Faults {
    /// Failures left; read without the lock on every call.
    remaining: AtomicU32,
    latency_ms: AtomicU64,
    plan: Mutex<Plan>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            remaining: AtomicU32::new(0),
            latency_ms: AtomicU64::new(0),
            plan: Mutex::new(Plan {
                errcode: errcode::SYSTEM_ERROR,
                path: None,
            }),
        }
    }
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a request (except `expire_tokens`, which the caller does).
    pub fn apply(&self, req: &FaultRequest) -> FaultView {
        let mut plan = self.lock();
        if req.fail_next.is_some() {
            // A new batch of failures: errcode and path default afresh.
            plan.errcode = errcode::SYSTEM_ERROR;
            plan.path = None;
        }
        if let Some(code) = req.errcode {
            plan.errcode = code;
        }
        if let Some(path) = &req.path {
            plan.path = match path.trim() {
                "" => None,
                p if p.starts_with('/') => Some(p.to_string()),
                p => Some(format!("/{p}")),
            };
        }
        if let Some(n) = req.fail_next {
            self.remaining.store(n, Ordering::SeqCst);
        }
        if let Some(ms) = req.latency_ms {
            self.latency_ms.store(ms, Ordering::SeqCst);
        }
        self.view_locked(&plan)
    }

    /// Back to no faults.
    pub fn reset(&self) -> FaultView {
        let mut plan = self.lock();
        plan.errcode = errcode::SYSTEM_ERROR;
        plan.path = None;
        self.remaining.store(0, Ordering::SeqCst);
        self.latency_ms.store(0, Ordering::SeqCst);
        self.view_locked(&plan)
    }

    pub fn view(&self) -> FaultView {
        let plan = self.lock();
        self.view_locked(&plan)
    }

    fn view_locked(&self, plan: &Plan) -> FaultView {
        FaultView {
            fail_next: self.remaining.load(Ordering::SeqCst),
            errcode: plan.errcode,
            path: plan.path.clone(),
            latency_ms: self.latency_ms.load(Ordering::SeqCst),
        }
    }

    /// The latency to add to an API call, if any.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Whether this call to `path` is one of the failures asked for, and
    /// with which errcode. Each failure is spent once.
    pub fn take_failure(&self, path: &str) -> Option<i64> {
        if self.remaining.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let plan = self.lock();
        if plan.path.as_deref().is_some_and(|p| p != path) {
            return None;
        }
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| plan.errcode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_with_path_filter() {
        let f = Faults::default();
        assert_eq!(f.take_failure("/cgi-bin/qrcode/create"), None);
        f.apply(&FaultRequest {
            fail_next: Some(2),
            errcode: Some(45009),
            path: Some("cgi-bin/qrcode/create".into()),
            ..Default::default()
        });
        assert_eq!(f.take_failure("/cgi-bin/stable_token"), None);
        assert_eq!(f.take_failure("/cgi-bin/qrcode/create"), Some(45009));
        assert_eq!(f.view().fail_next, 1);
        assert_eq!(f.take_failure("/cgi-bin/qrcode/create"), Some(45009));
        assert_eq!(f.take_failure("/cgi-bin/qrcode/create"), None);
    }

    #[test]
    fn latency_and_reset() {
        let f = Faults::default();
        assert_eq!(f.latency(), None);
        let v = f.apply(&FaultRequest {
            latency_ms: Some(20),
            fail_next: Some(1),
            ..Default::default()
        });
        assert_eq!(v.latency_ms, 20);
        assert_eq!(v.errcode, -1);
        assert_eq!(f.latency(), Some(Duration::from_millis(20)));
        assert_eq!(f.take_failure("/any"), Some(-1));
        f.apply(&FaultRequest {
            fail_next: Some(1),
            errcode: Some(40001),
            ..Default::default()
        });
        // A new batch without errcode is back to -1.
        assert_eq!(
            f.apply(&FaultRequest {
                fail_next: Some(1),
                ..Default::default()
            })
            .errcode,
            -1
        );
        f.apply(&FaultRequest {
            fail_next: Some(5),
            ..Default::default()
        });
        let v = f.reset();
        assert_eq!(
            v,
            FaultView {
                fail_next: 0,
                errcode: -1,
                path: None,
                latency_ms: 0
            }
        );
        assert_eq!(f.take_failure("/any"), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<FaultRequest>(r#"{"fail_nxt":1}"#).is_err());
        assert!(serde_json::from_str::<FaultRequest>(r#"{"expire_tokens":true}"#).is_ok());
    }
}
