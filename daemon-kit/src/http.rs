//! The HTTP/1.1 server every daemon's listener uses, on
//! [`crate::accept::accept_loop`]: a cap on open connections (a permit
//! taken before `accept`), a header read timeout, one task per connection,
//! upgrades allowed, and graceful drain on shutdown.
//! Plus the small response helpers the handlers share.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::shutdown::GRACE;

/// Every response body here is small and built whole.
pub type Body = Full<Bytes>;
/// A response with a [`Body`].
pub type Response = hyper::Response<Body>;

/// Limits on the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Most HTTP connections open at once; the next waits in the backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, calling `handler` for
/// every request with the peer address; then stops accepting and waits up
/// to [`GRACE`] for requests in flight.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let admit = || {
        let permits = Arc::clone(&permits);
        async move { permits.acquire_owned().await.ok() }
    };
    crate::accept::accept_loop(&listener, &shutdown, admit, |stream, peer, permit| {
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move {
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(cause = %e, "http connection ended with an error");
                }
                drop(permit);
            }
            .instrument(tracing::debug_span!("http", %peer)),
        );
    })
    .await;
    drop(listener);
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
        warn!("HTTP connections still open after the grace period");
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A response with the given content type.
pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut resp = hyper::Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response {
    with_type(status, "application/json", body)
}

/// A Prometheus text-format response.
pub fn metrics(body: String) -> Response {
    with_type(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}

/// Splits a query string into decoded pairs
/// (`application/x-www-form-urlencoded`: `+` is a space).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::query_pairs;

    #[test]
    fn query_decoding() {
        let q = query_pairs(Some("a=1&b=x%2By+z&c&d=%zz&e=%4"));
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x+y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "%4".into()),
            ]
        );
        assert!(query_pairs(None).is_empty());
    }
}
