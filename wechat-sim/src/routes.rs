//! The HTTP front: routes each request to the API ([`crate::api`]), the phone
//! ([`crate::phone`]) or the `/sim/*` control endpoints, answers CORS
//! preflights, and puts `Access-Control-Allow-Origin: *` on every answer
//! (the demo page calls `/sim/scan` from another origin).

use std::sync::Arc;
use std::time::Instant;

use daemon_kit::http::{Response, json, text};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::faults::FaultRequest;
use crate::respond::{body_error, read_body, sim_error};
use crate::state::SimState;
use crate::tickets::{Lookup, Ticket};
use crate::{api, phone};

/// Serves one request.
pub async fn handle(state: Arc<SimState>, req: Request<Incoming>) -> Response {
    let preflight_headers = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let private_network = req
        .headers()
        .contains_key("access-control-request-private-network");
    let mut resp = if req.method() == Method::OPTIONS {
        preflight(preflight_headers, private_network)
    } else {
        route(state, req).await
    };
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

fn preflight(request_headers: Option<HeaderValue>, private_network: bool) -> Response {
    let mut resp = text(StatusCode::NO_CONTENT, "");
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        request_headers.unwrap_or_else(|| HeaderValue::from_static("content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    if private_network {
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    resp
}

const INDEX: &str = "wechat-sim: a stand-in for the WeChat platform.

API:    POST /cgi-bin/stable_token, GET /cgi-bin/token,
        POST /cgi-bin/qrcode/create?access_token=T, GET /cgi-bin/user/info,
        GET /cgi-bin/showqrcode?ticket=<url-encoded ticket>
Phone:  POST /sim/scan {\"ticket\":\"...\",\"openid\":\"...\",\"subscribed\":false,\"nickname\":\"...\"}
        POST /sim/message {\"openid\":\"...\",\"content\":\"1\"}
Tools:  GET /sim/tickets/<url-encoded ticket>, GET|POST|DELETE /sim/faults,
        GET /sim/stats, GET /healthz, GET /metrics
";

async fn route(state: Arc<SimState>, req: Request<Incoming>) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path.starts_with("/cgi-bin/") {
        return api::handle(&state, req).await;
    }
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/metrics") => {
            daemon_kit::http::metrics(state.stats.to_prometheus(state.tickets.len()))
        }
        (Method::GET, "/") => text(StatusCode::OK, INDEX),
        (Method::POST, "/sim/scan") => match read_body(req.into_body()).await {
            Ok(body) => phone::scan(state, &body).await,
            Err(e) => body_error(&e),
        },
        (Method::POST, "/sim/message") => match read_body(req.into_body()).await {
            Ok(body) => phone::message(state, &body).await,
            Err(e) => body_error(&e),
        },
        (Method::GET, p) if p.starts_with("/sim/tickets/") => {
            ticket_info(&state, &p["/sim/tickets/".len()..])
        }
        (Method::GET, "/sim/faults") => json(
            StatusCode::OK,
            serde_json::to_string(&state.faults.view()).unwrap_or_default(),
        ),
        (Method::POST, "/sim/faults") => match read_body(req.into_body()).await {
            Ok(body) => set_faults(&state, &body),
            Err(e) => body_error(&e),
        },
        (Method::DELETE, "/sim/faults") => json(
            StatusCode::OK,
            serde_json::to_string(&state.faults.reset()).unwrap_or_default(),
        ),
        (Method::GET, "/sim/stats") => json(
            StatusCode::OK,
            state
                .stats
                .to_json(state.tickets.len(), state.users.len())
                .to_string(),
        ),
        (
            _,
            "/sim/scan" | "/sim/message" | "/sim/faults" | "/sim/stats" | "/healthz" | "/metrics",
        ) => sim_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        _ => sim_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// `POST /sim/faults`.
fn set_faults(state: &SimState, body: &[u8]) -> Response {
    let req: FaultRequest = if body.iter().all(u8::is_ascii_whitespace) {
        FaultRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return sim_error(StatusCode::BAD_REQUEST, "bad_json", e),
        }
    };
    if req.expire_tokens == Some(true) {
        state.tokens.expire_all(Instant::now());
    }
    let view = state.faults.apply(&req);
    tracing::info!(
        ?view,
        expire_tokens = req.expire_tokens == Some(true),
        "faults set"
    );
    json(
        StatusCode::OK,
        serde_json::to_string(&view).unwrap_or_default(),
    )
}

/// The `/sim/tickets/<ticket>` answer body for a ticket.
pub fn ticket_json(t: &Ticket, now: Instant) -> serde_json::Value {
    json!({
        "ticket": &*t.ticket,
        "action_name": t.action_name,
        "scene_id": t.scene.id(),
        "scene_str": t.scene.str(),
        "expire_seconds": t.expire_seconds,
        "expires_in": t.expires_in(now),
        "expired": t.expired(now),
        "url": t.url,
    })
}

/// `GET /sim/tickets/<url-encoded ticket>`. A ticket sent without
/// encoding still works: the path is decoded as a path (`+` stays `+`).
fn ticket_info(state: &SimState, encoded: &str) -> Response {
    let ticket = match percent_encoding::percent_decode_str(encoded).decode_utf8() {
        Ok(t) => t,
        Err(_) => return sim_error(StatusCode::BAD_REQUEST, "bad_ticket", "not UTF-8"),
    };
    let now = Instant::now();
    match state.tickets.get(&ticket, now) {
        Lookup::Live(t) | Lookup::Expired(t) => {
            json(StatusCode::OK, ticket_json(&t, now).to_string())
        }
        Lookup::Unknown => sim_error(StatusCode::NOT_FOUND, "unknown_ticket", "no such ticket"),
    }
}
