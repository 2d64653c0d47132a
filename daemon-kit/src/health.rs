//! Whether the daemon can do its job, for `GET /healthz`: ready, not ready
//! yet (with the reason, answered 503), or failed for good (the daemon
//! stops and exits non-zero with the reason).

use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Shared readiness of one daemon.
#[derive(Debug, Default)]
pub struct Health {
    not_ready: Mutex<Option<String>>,
    fatal: Mutex<Option<String>>,
}

impl Health {
    /// `Err(reason)` while the daemon is not ready.
    pub fn check(&self) -> Result<(), String> {
        match &*self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    pub fn not_ready(&self, reason: impl Into<String>) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    pub fn ready(&self) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Records why the daemon cannot go on and starts the shutdown.
    pub fn fail(&self, reason: impl Into<String>, shutdown: &CancellationToken) {
        let reason = reason.into();
        self.not_ready(reason.clone());
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        shutdown.cancel();
    }

    /// Why the daemon failed, if it did (checked once it has stopped).
    pub fn failure(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let h = Health::default();
        assert!(h.check().is_ok());
        h.not_ready("no token yet");
        assert_eq!(h.check(), Err("no token yet".to_string()));
        h.ready();
        assert!(h.check().is_ok());
        let stop = CancellationToken::new();
        h.fail("bad secret", &stop);
        assert!(stop.is_cancelled());
        assert_eq!(h.failure().as_deref(), Some("bad secret"));
    }
}
