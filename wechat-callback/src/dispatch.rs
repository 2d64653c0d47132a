//! What a verified callback does, exactly once per event.
//!
//! Each delivery is keyed by [`Message::dedupe_key`]. The first delivery
//! claims the key in the store and a resolver task does the work; a retry
//! in this process joins the same resolver's result, and a retry at another
//! instance finds the claim in the shared database and polls it until the
//! reply is stored. Requests wait at most the reply deadline; after it the
//! answer is `success` and the work still completes.
//!
//! **Invariant:** a login is counted (and the gateway notified) only by the
//! handler that claimed the event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::bus::ScanNotify;
use protocol::wechat::xml::{Event, Message, MessageKind, QrScan};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::App;
use crate::bus_client::NotifyError;
use crate::store::{Claim, StoreError, UserRecord};
use crate::text::{display_name, render};

/// How often a retry polls an event another instance is handling.
const POLL: Duration = Duration::from_millis(50);
/// How long a resolver waits for another instance before giving up.
const POLL_LIMIT: Duration = Duration::from_secs(40);

/// The reply content of a handled event (`None` = `success`), or nothing
/// yet.
type Outcome = Option<Option<String>>;

/// Events being resolved in this process.
#[derive(Default)]
pub struct Inflight {
    map: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

/// Resolves `message` and returns its reply content, or `None` (answer
/// `success`) when the deadline passes first.
pub async fn respond(app: &Arc<App>, message: Message) -> Option<String> {
    let key = message.dedupe_key();
    let mut rx = {
        let mut map = match app.inflight.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match map.get(&key) {
            Some(rx) => {
                app.metrics.retries_answered.inc();
                rx.clone()
            }
            None => {
                let (tx, rx) = watch::channel(None);
                map.insert(key.clone(), rx.clone());
                let app2 = app.clone();
                app.tasks.spawn(async move {
                    let outcome = resolve(&app2, &key, message).await;
                    let _ = tx.send(Some(outcome));
                    if let Ok(mut m) = app2.inflight.map.lock() {
                        m.remove(&key);
                    }
                });
                rx
            }
        }
    };
    let waited =
        tokio::time::timeout(app.settings.reply_deadline, rx.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(outcome)) => outcome.clone().flatten(),
        Ok(Err(_)) => None,
        Err(_) => {
            app.metrics.deadline_success.inc();
            warn!("reply deadline passed; answering success while the work completes");
            None
        }
    }
}

async fn resolve(app: &Arc<App>, key: &str, message: Message) -> Option<String> {
    let started = tokio::time::Instant::now();
    loop {
        match app.store.claim(key.to_string()).await {
            Ok(Claim::Claimed) => {
                return match handle(app, key, &message).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        app.metrics.store_errors.inc();
                        warn!(cause = %e, "store error while handling a callback");
                        None
                    }
                };
            }
            Ok(Claim::Done(reply)) => {
                app.metrics.retries_answered.inc();
                info!(key, "retried delivery answered from the store");
                return reply;
            }
            Ok(Claim::Pending) => {
                if started.elapsed() > POLL_LIMIT {
                    warn!(key, "another handler never finished this event");
                    return None;
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                app.metrics.store_errors.inc();
                warn!(cause = %e, "store unavailable; handling without dedupe is refused");
                return None;
            }
        }
    }
}

/// Does the event's work; the caller holds the claim.
async fn handle(
    app: &Arc<App>,
    key: &str,
    message: &Message,
) -> Result<Option<String>, StoreError> {
    if let Some(scan) = message.qr_scan() {
        return Ok(Some(login(app, key, message, scan).await?));
    }
    let reply = match &message.kind {
        MessageKind::Event(Event::Unsubscribe) => {
            app.store.unsubscribe(message.from_user.clone()).await?;
            None
        }
        MessageKind::Text { .. } if !app.settings.text_reply.is_empty() => {
            Some(app.settings.text_reply.clone())
        }
        _ => None,
    };
    app.store.finish(key.to_string(), reply.clone()).await?;
    Ok(reply)
}

/// A QR scan: look the user up, tell the gateway, count the login.
async fn login(
    app: &Arc<App>,
    key: &str,
    message: &Message,
    scan: QrScan,
) -> Result<String, StoreError> {
    let openid = message.from_user.as_str();
    let info = match &app.api {
        Some(api) => {
            match tokio::time::timeout(app.settings.user_info_timeout, api.user_info(openid)).await
            {
                Ok(Ok(info)) => Some(info),
                Ok(Err(e)) => {
                    warn!(cause = %e, "user/info failed; using the fallback name");
                    app.metrics.user_info_fallback.inc();
                    None
                }
                Err(_) => {
                    warn!("user/info too slow; using the fallback name");
                    app.metrics.user_info_fallback.inc();
                    None
                }
            }
        }
        None => None,
    };
    let name = display_name(
        info.as_ref().and_then(|i| i.nickname.as_deref()),
        info.as_ref().and_then(|i| i.remark.as_deref()),
        openid,
    );
    let user = UserRecord {
        openid: openid.to_string(),
        unionid: info
            .as_ref()
            .and_then(|i| i.unionid.clone())
            .filter(|u| !u.is_empty()),
        display_name: name.clone(),
    };
    let token = app
        .signer
        .as_ref()
        .and_then(|s| match s.sign(openid, &name, crate::now_secs()) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(cause = %e, "cannot sign the login token");
                None
            }
        });
    let notify = ScanNotify {
        fd: scan.scene,
        nickname: name.clone(),
        openid: Some(openid.to_string()),
        token,
        ticket: scan.ticket,
        secret: app
            .settings
            .notify_secret
            .as_ref()
            .map(|s| s.expose().to_string()),
    };
    let t0 = tokio::time::Instant::now();
    let sent = app.bus.notify(&notify).await;
    app.metrics.notify_latency.observe(t0.elapsed());
    match sent {
        Ok(()) => {
            let template = app.settings.reply_template.clone();
            let render_name = name.clone();
            match app
                .store
                .record_login(key.to_string(), user, move |count| {
                    render(&template, &render_name, count)
                })
                .await
            {
                Ok((count, reply)) => {
                    app.metrics.logins.inc();
                    info!(fd = scan.scene, count, "login");
                    Ok(reply)
                }
                Err(e) => {
                    // The page is already logged in; say so even though the
                    // count could not be stored.
                    app.metrics.store_errors.inc();
                    warn!(cause = %e, fd = scan.scene, "login delivered but not recorded");
                    Ok(format!("{name}, login successful!"))
                }
            }
        }
        Err(e) => {
            match &e {
                NotifyError::Refused(_) | NotifyError::BadAnswer => {
                    app.metrics.notify_refused.inc()
                }
                NotifyError::Unreachable(_) => app.metrics.notify_unreachable.inc(),
                NotifyError::Timeout => app.metrics.notify_timeout.inc(),
            }
            app.metrics.logins_not_counted.inc();
            warn!(
                fd = scan.scene,
                reason = e.label(),
                "login page not told; asking the user to scan again"
            );
            let reply = render(&app.settings.retry_template, &name, 0);
            if let Err(e) = app.store.touch_user(user).await {
                warn!(cause = %e, "cannot record the user");
            }
            app.store
                .finish(key.to_string(), Some(reply.clone()))
                .await?;
            Ok(reply)
        }
    }
}
