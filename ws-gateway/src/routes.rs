//! HTTP routing on the `--listen` port: WebSocket upgrades on `/` and
//! `/ws`, the login page and browser client, `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use daemon_kit::http::{Response, metrics, text};
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue, UPGRADE};
use hyper::{Method, Request, StatusCode};

use crate::{Gateway, ws};

/// Paths this listener knows (for 405 versus 404).
const KNOWN: [&str; 7] = [
    "/",
    "/ws",
    "/index.html",
    "/scan-login.js",
    "/scan-login.mjs",
    "/healthz",
    "/metrics",
];

pub(crate) async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    let path = req.uri().path();
    if (path == "/" || path == "/ws") && ws::is_upgrade(&req) {
        return ws::accept(gw, req, peer);
    }
    let method = req.method();
    let readable = method == Method::GET || method == Method::HEAD;
    if !readable {
        if KNOWN.contains(&path) {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match path {
        "/healthz" => {
            if gw.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if let Err(reason) = gw.health.check() {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        "/metrics" => metrics(gw.metrics.render(gw.registry.counts())),
        "/ws" => {
            let mut resp = text(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket only\n",
            );
            resp.headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
            resp
        }
        p => gw
            .pages
            .get(p)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
    }
}
