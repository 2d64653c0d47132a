//! The answers every part of the simulator shares: reading a bounded
//! request body, `/sim/*` error answers, SVG images. `routes`, `api` and
//! `phone` all use these, and none of them uses another's.

use bytes::Bytes;
use daemon_kit::http::{Response, json, with_type};
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use serde_json::json;

/// Largest request body accepted anywhere here.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {MAX_REQUEST_BODY} bytes")]
    TooLarge,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Reads a whole request body, at most [`MAX_REQUEST_BODY`] bytes.
pub async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// A `/sim/*` error answer: `{"error":"<code>","message":"<text>"}`.
pub fn sim_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    json(
        status,
        json!({"error": code, "message": message.to_string()}).to_string(),
    )
}

/// The answer for a body that could not be read.
pub fn body_error(e: &BodyError) -> Response {
    match e {
        BodyError::TooLarge => sim_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e),
        BodyError::Read(_) => sim_error(StatusCode::BAD_REQUEST, "bad_body", e),
    }
}

/// An SVG answer.
pub fn svg(body: String) -> Response {
    let mut resp = with_type(StatusCode::OK, "image/svg+xml", body);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}
