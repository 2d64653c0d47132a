//! HTTP routing: `GET /wechat` (URL verification), `POST /wechat`
//! (callbacks), `/healthz`, `/metrics`. Bodies are read with a hard 1 MiB
//! limit and a time limit ([`BODY_TIMEOUT`]) before anything else
//! happens; then `inbound` verifies, the store's signature record refuses
//! replays, `dispatch` does the work and the envelope seals the reply.
//! Access is never logged with its query string (it holds the signature a
//! replay would need).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use daemon_kit::http::{Response, metrics, query_pairs, text, with_type};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, StatusCode};
use protocol::wechat::MAX_BODY_BYTES;
use sha1::{Digest, Sha1};
use tracing::{Instrument, debug, info_span, warn};

use crate::App;
use crate::envelope::Reply;
use crate::inbound::{self, Rejection};
use crate::store::Seen;

/// Longest `echostr` echoed back.
const MAX_ECHOSTR: usize = 1024;

/// A request body must have arrived this long after its headers: WeChat
/// sends a few hundred bytes at once, and a client that trickles (or
/// announces a length it never sends) must not hold a connection slot.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/wechat") => {
            let span = info_span!("callback", %peer);
            post(app, req, peer).instrument(span).await
        }
        (&Method::GET, "/wechat") => get(&app, &req, peer),
        (_, "/wechat") => text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
        (&Method::GET, "/healthz") => match app.store.ping().await {
            Ok(()) => match app.health.check() {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            Err(e) => {
                warn!(cause = %e, "health check: store unavailable");
                text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        },
        (&Method::GET, "/metrics") => metrics(app.metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// WeChat's server-URL check: echo `echostr` when the signature matches.
fn get(app: &App, req: &Request<Incoming>, peer: SocketAddr) -> Response {
    let query = query_pairs(req.uri().query());
    if let Err(r) = inbound::check_signature(&app.settings, &query) {
        app.metrics.rejected_signature.inc();
        log_rejection(&r, peer, "GET");
        return text(StatusCode::FORBIDDEN, "invalid signature\n");
    }
    match query.iter().find(|(k, _)| k == "echostr") {
        Some((_, echo)) if echo.len() <= MAX_ECHOSTR => text(StatusCode::OK, echo.clone()),
        _ => text(StatusCode::BAD_REQUEST, "missing echostr\n"),
    }
}

async fn post(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    let started = tokio::time::Instant::now();
    let response = post_inner(&app, req, peer).await;
    app.metrics.callback_latency.observe(started.elapsed());
    response
}

async fn post_inner(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return reject(app, Rejection::TooLarge, peer);
    }
    let query = query_pairs(req.uri().query());
    let raw_query = req.uri().query().map(str::to_string);
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => return reject(app, Rejection::BodyTimeout, peer),
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return reject(app, Rejection::TooLarge, peer);
        }
        Ok(Err(e)) => {
            debug!(cause = %e, "body read failed");
            return text(StatusCode::BAD_REQUEST, "cannot read body\n");
        }
    };
    let now = crate::now_secs();
    let inbound = match inbound::verify_post(&app.settings, &query, &body, now) {
        Ok(i) => i,
        Err(r) => return reject(app, r, peer),
    };
    let digest: [u8; 20] = Sha1::digest(&body).into();
    match app
        .store
        .see_signature(inbound.replay_key.clone(), digest)
        .await
    {
        Ok(Seen::New | Seen::Retry) => {}
        Ok(Seen::OtherBody) => return reject(app, Rejection::Replay, peer),
        Err(e) => {
            app.metrics.store_errors.inc();
            warn!(cause = %e, "store unavailable for the replay check; answering 503");
            return unavailable();
        }
    }
    if inbound.used_previous_key {
        app.metrics.decrypted_with_previous_key.inc();
    }
    app.metrics.requests_ok.inc();
    let message = &inbound.message;
    if let Some(forwarder) = &app.forwarder
        && !crate::dispatch::handled_here(app, message)
    {
        if let Err(e) = crate::dispatch::note_forwarded(app, message).await {
            app.metrics.store_errors.inc();
            warn!(cause = %e, "store unavailable; answering 503 so WeChat retries");
            return unavailable();
        }
        return match forwarder
            .forward(raw_query.as_deref(), content_type.as_deref(), body)
            .await
        {
            Ok(relayed) => {
                app.metrics.forwarded.inc();
                let mut resp = hyper::Response::new(http_body_util::Full::new(relayed.body));
                if let Some(ct) = relayed
                    .content_type
                    .and_then(|c| hyper::header::HeaderValue::from_str(&c).ok())
                {
                    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
                }
                resp
            }
            Err(e) => {
                app.metrics.forward_failed.inc();
                warn!(cause = %e, "--forward-url failed; answering success");
                text(StatusCode::OK, "success")
            }
        };
    }
    let reply = match crate::dispatch::respond(app, message.clone()).await {
        Ok(reply) => reply,
        Err(_) => return unavailable(),
    };
    let body = inbound.wrap.seal(
        app.settings.token.expose(),
        &reply,
        &message.from_user,
        &message.to_user,
        crate::now_secs(),
    );
    match reply {
        Reply::Success => text(StatusCode::OK, body),
        Reply::Text(_) => with_type(StatusCode::OK, "application/xml; charset=utf-8", body),
    }
}

/// 503: the store could not record the event; WeChat retries.
fn unavailable() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "store unavailable; retry\n",
    )
}

fn reject(app: &App, r: Rejection, peer: SocketAddr) -> Response {
    let m = &app.metrics;
    match &r {
        Rejection::TooLarge => m.rejected_too_large.inc(),
        Rejection::BodyTimeout => m.rejected_body_timeout.inc(),
        Rejection::BadSignature(_) => m.rejected_signature.inc(),
        Rejection::PlaintextRefused => m.rejected_plaintext.inc(),
        Rejection::StaleTimestamp => m.rejected_timestamp.inc(),
        Rejection::Replay => m.rejected_replay.inc(),
        Rejection::BadXml(_) => m.rejected_xml.inc(),
        Rejection::Decrypt(_) => m.rejected_decrypt.inc(),
    }
    log_rejection(&r, peer, "POST");
    text(r.status(), format!("{r}\n"))
}

/// Seconds (since the epoch) of the last rejection logged, and how many
/// were left out since: at most one WARN line a second, however hard
/// someone knocks, but never silence about a wrong Token.
static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

fn log_rejection(r: &Rejection, peer: SocketAddr, method: &'static str) {
    let now = u64::try_from(crate::now_secs()).unwrap_or(0);
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if now > last
        && LAST_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        warn!(%peer, method, reason = %r, suppressed, "callback rejected");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}
