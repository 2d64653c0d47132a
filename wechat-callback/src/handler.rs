//! HTTP routing: `GET /wechat` (URL verification), `POST /wechat`
//! (callbacks), `/healthz`, `/metrics`. Bodies are read with a hard 1 MiB
//! limit before anything else happens.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use daemon_kit::http::{Response, metrics, query_pairs, text, with_type};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, StatusCode};
use protocol::wechat::MAX_BODY_BYTES;
use tracing::{Instrument, debug, info_span, warn};

use crate::App;
use crate::inbound::{self, Rejection};

/// Longest `echostr` echoed back.
const MAX_ECHOSTR: usize = 1024;

/// Routes one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/wechat") => {
            let span = info_span!("callback", %peer);
            post(app, req).instrument(span).await
        }
        (&Method::GET, "/wechat") => get(&app, &req),
        (_, "/wechat") => text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
        (&Method::GET, "/healthz") => match app.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
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
fn get(app: &App, req: &Request<Incoming>) -> Response {
    let query = query_pairs(req.uri().query());
    if inbound::check_signature(&app.settings, &query).is_err() {
        app.metrics.rejected_signature.inc();
        return text(StatusCode::FORBIDDEN, "invalid signature\n");
    }
    match query.iter().find(|(k, _)| k == "echostr") {
        Some((_, echo)) if echo.len() <= MAX_ECHOSTR => text(StatusCode::OK, echo.clone()),
        _ => text(StatusCode::BAD_REQUEST, "missing echostr\n"),
    }
}

async fn post(app: Arc<App>, req: Request<Incoming>) -> Response {
    let started = tokio::time::Instant::now();
    let response = post_inner(&app, req).await;
    app.metrics.callback_latency.observe(started.elapsed());
    response
}

async fn post_inner(app: &Arc<App>, req: Request<Incoming>) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return reject(app, Rejection::TooLarge);
    }
    let query = query_pairs(req.uri().query());
    let body: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return reject(app, Rejection::TooLarge);
        }
        Err(e) => {
            debug!(cause = %e, "body read failed");
            return text(StatusCode::BAD_REQUEST, "cannot read body\n");
        }
    };
    let now = crate::now_secs();
    let inbound = match inbound::verify_post(&app.settings, &query, &body, now) {
        Ok(i) => i,
        Err(r) => return reject(app, r),
    };
    if inbound.used_previous_key {
        app.metrics.decrypted_with_previous_key.inc();
    }
    app.metrics.requests_ok.inc();
    let content = crate::dispatch::respond(app, inbound.message.clone()).await;
    let body = inbound::reply_body(
        &app.settings,
        &inbound,
        content.as_deref(),
        crate::now_secs(),
    );
    if body == "success" {
        text(StatusCode::OK, body)
    } else {
        with_type(StatusCode::OK, "application/xml; charset=utf-8", body)
    }
}

fn reject(app: &App, r: Rejection) -> Response {
    let m = &app.metrics;
    match &r {
        Rejection::TooLarge => m.rejected_too_large.inc(),
        Rejection::BadSignature => m.rejected_signature.inc(),
        Rejection::StaleTimestamp => m.rejected_timestamp.inc(),
        Rejection::BadXml(_) => m.rejected_xml.inc(),
        Rejection::Decrypt(_) => m.rejected_decrypt.inc(),
    }
    warn!(reason = %r, "callback rejected");
    text(r.status(), format!("{r}\n"))
}
