//! What a verified callback does, exactly once per event.
//!
//! Each delivery is keyed by [`Message::dedupe_key`]. The first delivery
//! claims the key in the store and a resolver task does the work; a retry
//! in this process joins the same resolver ([`SingleFlight`]), and a retry
//! at another instance finds the claim in the shared database and polls it
//! until the reply is stored. Requests wait at most the reply deadline;
//! what they answer then depends on how far the work got ([`Progress`]):
//! nothing done yet (the store is slow or locked) is answered 503, so
//! WeChat retries; work under way is answered `success` and completes.
//!
//! Logins: a QR scan looks the user up and tells the gateway (`scan`), or,
//! with `--confirm-login`, tells the page it was scanned (`scanned`) and
//! keeps a pending login in the store until the same user replies `1`.
//!
//! **Invariant:** a login is counted (and the gateway notified) only by the
//! handler that claimed the event, and only after the gateway answered
//! `ok` (the page has the frame).

use std::sync::Arc;
use std::time::Duration;

use protocol::bus::{NotifyKind, ScanNotify};
use protocol::fd::Fd;
use protocol::wechat::xml::{Event, LoginScan, Message, MessageKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use wechat_api::UserInfo;

use crate::App;
use crate::bus_client::NotifyError;
use crate::envelope::Reply;
use crate::single_flight::Joined;
use crate::store::{Claim, NewLogin, PendingLogin, Recorded, StoreError, Taken, UserRecord};
use crate::text::{device_summary, display_name, fill, render};

/// How often a retry polls an event another instance is handling.
const POLL: Duration = Duration::from_millis(50);
/// How long a resolver waits for another instance before giving up.
const POLL_LIMIT: Duration = Duration::from_secs(40);
/// Kept between the bus answer's deadline and the reply deadline, so the
/// reply can still be built and sent once the answer is in.
const REPLY_MARGIN: Duration = Duration::from_millis(250);
/// How long a scanned login waits for the user's `1`.
pub const CONFIRM_WINDOW_SECS: i64 = 60;
/// Attempts at recording a login the page already has.
const RECORD_ATTEMPTS: u32 = 3;

/// Reply to a `1` with nothing pending (or too late).
pub const NOTHING_TO_CONFIRM: &str =
    "There is no login to confirm (it may have expired). Scan the QR code on the login page again.";
/// Reply to another text while a login was pending.
pub const LOGIN_CANCELLED: &str = "Login cancelled. Scan the QR code again if you want to log in.";

/// The store could not be read or written: answer 503 so WeChat retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store unavailable")]
pub struct Unavailable;

/// How far the resolver of an event has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Claiming the event in the store: nothing has happened yet.
    Claiming,
    /// The work is under way here.
    Working,
    /// Another instance holds the event's claim (working, or dead: its
    /// claim is taken over once stale).
    Elsewhere,
    Done(Result<Reply, Unavailable>),
}

/// Events being resolved in this process.
pub type Inflight = crate::single_flight::SingleFlight<String, Progress>;

/// Resolves `message` and returns its reply: the work's own, or
/// [`Reply::Success`] when the deadline passes with the work under way,
/// or [`Unavailable`] when the store fails or never let the work start.
pub async fn respond(app: &Arc<App>, message: Message) -> Result<Reply, Unavailable> {
    let key = message.dedupe_key();
    let mut rx = match app.inflight.join(&key, Progress::Claiming) {
        Joined::Follower(rx) => {
            app.metrics.retries_answered.inc();
            rx
        }
        Joined::Leader(tx, rx) => {
            let app2 = app.clone();
            app.tasks.spawn(async move {
                let outcome = resolve(&app2, &key, message, &tx).await;
                tx.send_replace(Progress::Done(outcome));
                app2.inflight.finish(&key);
            });
            rx
        }
    };
    let done = |p: &Progress| matches!(p, Progress::Done(_));
    let waited = tokio::time::timeout(app.settings.reply_deadline, rx.wait_for(done))
        .await
        .map(|r| r.map(|p| p.clone()));
    match waited {
        Ok(Ok(Progress::Done(outcome))) => outcome,
        Ok(_) => Err(Unavailable),
        Err(_) => {
            match *rx.borrow() {
                Progress::Claiming => {
                    app.metrics.store_errors.inc();
                    warn!("store too slow to claim the event; answering 503 so WeChat retries");
                    return Err(Unavailable);
                }
                Progress::Elsewhere => {
                    // `success` would end WeChat's retries while nothing
                    // is known to be done: if that instance died, its claim
                    // is taken over once stale and a later retry gets the
                    // real reply.
                    app.metrics.retries_answered.inc();
                    warn!("another instance holds this event; answering 503 so WeChat retries");
                    return Err(Unavailable);
                }
                _ => {}
            }
            app.metrics.deadline_success.inc();
            warn!("reply deadline passed; answering success while the work completes");
            Ok(Reply::Success)
        }
    }
}

async fn resolve(
    app: &Arc<App>,
    key: &str,
    message: Message,
    progress: &watch::Sender<Progress>,
) -> Result<Reply, Unavailable> {
    let started = Instant::now();
    let deadline = started + app.settings.reply_deadline.saturating_sub(REPLY_MARGIN);
    loop {
        match app.store.claim(key.to_string()).await {
            Ok(claim @ (Claim::Claimed | Claim::TakenOver)) => {
                progress.send_replace(Progress::Working);
                let work = Work {
                    key,
                    deadline,
                    resend: claim == Claim::TakenOver,
                };
                if work.resend {
                    warn!(
                        key,
                        "took over an event another instance claimed and never finished"
                    );
                }
                return handle(app, &work, &message).await.map_err(|e| {
                    app.metrics.store_errors.inc();
                    warn!(cause = %e, "store error while handling a callback; answering 503");
                    Unavailable
                });
            }
            Ok(Claim::Done(reply)) => {
                app.metrics.retries_answered.inc();
                info!(key, "retried delivery answered from the store");
                return Ok(reply);
            }
            Ok(Claim::Pending) => {
                progress.send_replace(Progress::Elsewhere);
                if started.elapsed() > POLL_LIMIT {
                    warn!(key, "another handler never finished this event");
                    return Ok(Reply::Success);
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                app.metrics.store_errors.inc();
                warn!(cause = %e, "store unavailable; answering 503 so WeChat retries");
                return Err(Unavailable);
            }
        }
    }
}

/// An event being handled under this instance's claim.
struct Work<'a> {
    key: &'a str,
    /// When the reply is due (less [`REPLY_MARGIN`]).
    deadline: Instant,
    /// The claim was taken over from an instance that may have pushed
    /// the login before it died: bus lines go out marked `resend`.
    resend: bool,
}

/// Does the event's work; the caller holds the claim.
async fn handle(app: &Arc<App>, work: &Work<'_>, message: &Message) -> Result<Reply, StoreError> {
    let key = work.key;
    if let Some(scan) = message.login_scan() {
        return on_scan(app, work, message, scan).await;
    }
    let reply = match &message.kind {
        MessageKind::Event(Event::Unsubscribe) => {
            app.store.unsubscribe(message.from_user.clone()).await?;
            Reply::Success
        }
        MessageKind::Text { content } if app.settings.confirm_login => {
            match on_text_while_confirming(app, work, message, content).await? {
                Some(reply) => return Ok(reply),
                None => default_text_reply(app),
            }
        }
        MessageKind::Text { .. } => default_text_reply(app),
        // A scan of the account's own (permanent or string-scene) code, with
        // no handler to forward it to.
        _ if message.qr_scan().is_some() => default_text_reply(app),
        _ => Reply::Success,
    };
    app.store.finish(key.to_string(), reply.clone()).await?;
    Ok(reply)
}

/// Whether this callback is handled here even with `--forward-url`: a
/// login scan, or with `--confirm-login` a `1` (which confirms a login, or
/// says there is none).
pub fn handled_here(app: &App, message: &Message) -> bool {
    if message.login_scan().is_some() {
        return true;
    }
    matches!(&message.kind, MessageKind::Text { content }
        if app.settings.confirm_login && content.trim() == "1")
}

/// What a forwarded message still means here: an unsubscribe is recorded,
/// and with `--confirm-login` any text cancels the user's pending login.
pub async fn note_forwarded(app: &App, message: &Message) -> Result<(), StoreError> {
    match &message.kind {
        MessageKind::Event(Event::Unsubscribe) => {
            app.store.unsubscribe(message.from_user.clone()).await
        }
        MessageKind::Text { .. } if app.settings.confirm_login => {
            if let Taken::Live(p) = app.store.take_pending(message.from_user.clone()).await? {
                info!(fd = p.fd, openid = %p.openid, "pending login cancelled by the user");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn default_text_reply(app: &App) -> Reply {
    if app.settings.text_reply.is_empty() {
        Reply::Success
    } else {
        Reply::Text(app.settings.text_reply.clone())
    }
}

/// A text from a user with `--confirm-login`: `1` confirms their pending
/// login, anything else cancels it. `None`: nothing was pending and the
/// text is an ordinary message. A confirmed login stores its own reply.
async fn on_text_while_confirming(
    app: &Arc<App>,
    work: &Work<'_>,
    message: &Message,
    content: &str,
) -> Result<Option<Reply>, StoreError> {
    let confirming = content.trim() == "1";
    let taken = app.store.take_pending(message.from_user.clone()).await?;
    let reply = match (confirming, taken) {
        (true, Taken::Live(p)) => {
            let user = UserRecord {
                openid: p.openid.clone(),
                unionid: p.unionid.clone(),
                display_name: p.display_name.clone(),
            };
            // Written from a login fd; anything else confirms nothing.
            let Some(fd) = Fd::from_scene(p.fd) else {
                return Ok(Some(Reply::Text(NOTHING_TO_CONFIRM.to_string())));
            };
            let reply = complete_login(app, work, fd, p.ticket, user).await?;
            return Ok(Some(reply));
        }
        (true, Taken::Expired | Taken::None) => Reply::Text(NOTHING_TO_CONFIRM.to_string()),
        (false, Taken::Live(p)) => {
            info!(fd = p.fd, openid = %p.openid, "pending login cancelled by the user");
            Reply::Text(LOGIN_CANCELLED.to_string())
        }
        (false, Taken::Expired | Taken::None) => return Ok(None),
    };
    Ok(Some(reply))
}

/// Looks the user up, within its time budget (a fallback name otherwise).
async fn look_up(app: &App, openid: &str) -> Option<UserInfo> {
    let api = app.api.as_ref()?;
    let t0 = Instant::now();
    let result = tokio::time::timeout(app.settings.user_info_timeout, api.user_info(openid)).await;
    app.metrics.user_info_latency.observe(t0.elapsed());
    match result {
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

/// A QR scan: log in at once, or with `--confirm-login` ask first.
async fn on_scan(
    app: &Arc<App>,
    work: &Work<'_>,
    message: &Message,
    scan: LoginScan,
) -> Result<Reply, StoreError> {
    let (key, deadline) = (work.key, work.deadline);
    let openid = message.from_user.as_str();
    let info = look_up(app, openid).await;
    let user = UserRecord {
        openid: openid.to_string(),
        unionid: info
            .as_ref()
            .and_then(|i| i.unionid.clone())
            .filter(|u| !u.is_empty()),
        display_name: display_name(
            info.as_ref().and_then(|i| i.nickname.as_deref()),
            info.as_ref().and_then(|i| i.remark.as_deref()),
            openid,
        ),
    };
    if !app.settings.confirm_login {
        return complete_login(app, work, scan.fd, scan.ticket, user).await;
    }
    let request = ScanNotify {
        kind: NotifyKind::Scanned,
        fd: scan.fd.get(),
        nickname: user.display_name.clone(),
        openid: None,
        token: None,
        ticket: scan.ticket.clone(),
        secret: bus_secret(app),
        // `scanned` spends nothing: nothing to resend.
        resend: false,
    };
    match notify(app, scan.fd, &request, deadline).await {
        Ok(page) => {
            app.store
                .put_pending(PendingLogin {
                    openid: user.openid.clone(),
                    fd: scan.fd.get(),
                    ticket: scan.ticket,
                    display_name: user.display_name.clone(),
                    unionid: user.unionid.clone(),
                    expires_at: crate::now_secs() + CONFIRM_WINDOW_SECS,
                })
                .await?;
            let device = device_summary(page.user_agent.as_deref().unwrap_or(""));
            let ip = page.ip.unwrap_or_else(|| "an unknown address".into());
            let reply = Reply::Text(fill(
                &app.settings.confirm_template,
                &[
                    ("name", &user.display_name),
                    ("device", &device),
                    ("ip", &ip),
                ],
            ));
            info!(fd = scan.fd.get(), openid, %ip, %device, "scan awaiting confirmation on the phone");
            app.store.touch_user(user).await?;
            app.store.finish(key.to_string(), reply.clone()).await?;
            Ok(reply)
        }
        Err(e) => not_told(app, key, scan.fd, user, e).await,
    }
}

fn bus_secret(app: &App) -> Option<String> {
    app.settings
        .notify_secret
        .as_ref()
        .map(|s| s.expose().to_string())
}

/// Sends one bus line and waits for its answer until the reply deadline
/// (less a margin to send the reply), or `--notify-timeout-ms` when the
/// deadline is already that close: past the reply deadline WeChat has
/// been answered `success`, which tells the user nothing, so the answer
/// still decides the count and the stored reply without contradiction.
async fn notify(
    app: &App,
    fd: Fd,
    request: &ScanNotify,
    deadline: Instant,
) -> Result<protocol::bus::PageInfo, NotifyError> {
    let t0 = Instant::now();
    let deadline = deadline.max(t0 + app.settings.notify_timeout);
    let sent = match app.bus.for_fd(fd) {
        Some(bus) => bus.notify(request, deadline).await,
        None => Err(NotifyError::NoRoute(fd.node())),
    };
    app.metrics.notify_latency.observe(t0.elapsed());
    sent
}

/// Tells the page it is logged in and, once it has the frame, counts the
/// login and stores the reply.
async fn complete_login(
    app: &Arc<App>,
    work: &Work<'_>,
    fd: Fd,
    ticket: Option<String>,
    user: UserRecord,
) -> Result<Reply, StoreError> {
    let (key, deadline) = (work.key, work.deadline);
    let started = Instant::now();
    let name = user.display_name.clone();
    let token = app.signer.as_ref().and_then(|s| {
        match s.sign(
            &user.openid,
            &name,
            user.unionid.as_deref(),
            crate::now_secs(),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(cause = %e, "cannot sign the login token");
                None
            }
        }
    });
    let request = ScanNotify {
        kind: NotifyKind::Scan,
        fd: fd.get(),
        nickname: name.clone(),
        openid: Some(user.openid.clone()),
        token,
        ticket,
        secret: bus_secret(app),
        resend: work.resend,
    };
    if let Err(e) = notify(app, fd, &request, deadline).await {
        return not_told(app, key, fd, user, e).await;
    }
    let openid = user.openid.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let template = app.settings.reply_template.clone();
        let render_name = name.clone();
        match app
            .store
            .record_login(NewLogin::new(key, user.clone(), move |count| {
                render(&template, &render_name, count)
            }))
            .await
        {
            Ok(Recorded::AlreadyDone(reply)) => {
                // A takeover finished this event while this handler was
                // slow: it was counted (or refused) there, not twice here.
                warn!(fd = fd.get(), openid = %openid, "event already finished by another handler");
                return Ok(reply);
            }
            Ok(Recorded::Counted(count, reply)) => {
                app.metrics.logins.inc();
                info!(
                    fd = fd.get(),
                    openid = %openid,
                    instance = %app.instance,
                    count,
                    outcome = "logged_in",
                    ms = started.elapsed().as_millis() as u64,
                    "login"
                );
                return Ok(Reply::Text(reply));
            }
            Err(e) if attempt < RECORD_ATTEMPTS => {
                warn!(cause = %e, fd = fd.get(), attempt, "cannot record a delivered login; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                // The page already has its login: say so, even though the
                // count could not be stored.
                app.metrics.store_errors.inc();
                tracing::error!(cause = %e, fd = fd.get(), openid = %openid, "login delivered but not recorded");
                return Ok(Reply::Text(format!("{name}, login successful!")));
            }
        }
    }
}

/// The gateway did not confirm the push: nothing is counted. When it
/// refused or could not be reached, the page does not have it and the
/// user is asked to scan again; when the answer was lost (the connection
/// broke, or no answer in time, after the line was sent) the page may have
/// it, and the user is told exactly that (`--unconfirmed-template`), never
/// that it failed.
async fn not_told(
    app: &Arc<App>,
    key: &str,
    fd: Fd,
    user: UserRecord,
    e: NotifyError,
) -> Result<Reply, StoreError> {
    let template = match &e {
        NotifyError::Refused(_) => {
            app.metrics.notify_refused.inc();
            &app.settings.retry_template
        }
        NotifyError::Unreachable(_) | NotifyError::NoRoute(_) => {
            app.metrics.notify_unreachable.inc();
            &app.settings.retry_template
        }
        NotifyError::BadAnswer | NotifyError::Lost(_) => {
            app.metrics.notify_lost.inc();
            &app.settings.unconfirmed_template
        }
        NotifyError::Timeout => {
            app.metrics.notify_timeout.inc();
            &app.settings.unconfirmed_template
        }
    };
    app.metrics.logins_not_counted.inc();
    warn!(
        fd = fd.get(),
        openid = %user.openid,
        instance = %app.instance,
        reason = e.label(),
        outcome = "not_counted",
        "login page not told; asking the user to scan again"
    );
    let reply = Reply::Text(render(template, &user.display_name, 0));
    if let Err(e) = app.store.touch_user(user).await {
        warn!(cause = %e, "cannot record the user");
    }
    app.store.finish(key.to_string(), reply.clone()).await?;
    Ok(reply)
}
