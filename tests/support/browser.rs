//! The one browser client of the tests: a WebSocket to the gateway's `/ws`
//! over a real socket (extra request headers for origins, proxies and
//! user agents), the JSON frames it receives, and [`Browser`], a page
//! holding its current QR code. Every wait is bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
pub use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::WAIT;
use crate::wechat::percent_decode;

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `url` (`ws://host:port/path`) with extra request
/// headers; the handshake's error (an HTTP refusal included) is returned.
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let authority = req.uri().authority().unwrap().as_str().to_string();
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(authority))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("WebSocket handshake timed out")?;
    Ok(ws)
}

/// The next JSON text frame within `limit` (pings and pongs skipped; the
/// library answers pings). A close, an error or any other message fails.
pub async fn next_json_within(ws: &mut Ws, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {limit:?}"))
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// [`next_json_within`] the default [`WAIT`].
pub async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, WAIT).await
}

/// The next frame, which must be of `message_type`.
pub async fn expect_frame(ws: &mut Ws, message_type: &str) -> Value {
    let v = next_json(ws).await;
    assert_eq!(v["message_type"], message_type, "{v}");
    v
}

/// The next frame must be an `error` frame with `code`.
pub async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = expect_frame(ws, "error").await;
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].is_string(), "{v}");
    v
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send");
}

/// Sends `{"cmd":"ping"}` and checks the very next frame is `pong` (so
/// nothing else was queued for this browser before it).
pub async fn expect_nothing_pending(ws: &mut Ws) {
    send_text(ws, r#"{"cmd":"ping"}"#).await;
    expect_frame(ws, "pong").await;
}

/// The ticket inside a QR image URL (`…?ticket=<percent-encoded>`).
pub fn ticket_of(image_url: &str) -> String {
    percent_decode(image_url.rsplit_once("ticket=").expect("ticket= in url").1)
}

/// A login page: its WebSocket and its current QR code.
pub struct Browser {
    pub ws: Ws,
    /// The last `qrcode_url` frame.
    pub code: Value,
    /// Its image URL and the ticket inside it.
    pub image_url: String,
    pub ticket: String,
}

impl Browser {
    /// Opens `url` with `headers` and waits for the first QR code.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Browser {
        let ws = connect(url, headers)
            .await
            .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
        let mut b = Browser {
            ws,
            code: Value::Null,
            image_url: String::new(),
            ticket: String::new(),
        };
        let qr = b.next_frame(WAIT).await;
        assert_eq!(qr["message_type"], "qrcode_url", "{qr}");
        b.take_qr(qr);
        b
    }

    /// The gateway's page socket at `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Browser {
        Browser::connect_as(port, None).await
    }

    /// [`Browser::connect`] with a `User-Agent` header, as a browser sends.
    pub async fn connect_as(port: u16, user_agent: Option<&str>) -> Browser {
        Browser::connect_to(&format!("127.0.0.1:{port}"), user_agent).await
    }

    /// [`Browser::connect_as`] to a gateway at `addr` (`host:port`).
    pub async fn connect_to(addr: &str, user_agent: Option<&str>) -> Browser {
        let headers: Vec<(&str, &str)> = user_agent
            .map(|ua| ("user-agent", ua))
            .into_iter()
            .collect();
        Browser::open(&format!("ws://{addr}/ws"), &headers).await
    }

    fn take_qr(&mut self, qr: Value) {
        self.image_url = qr["url"].as_str().expect("url").to_string();
        self.ticket = ticket_of(&self.image_url);
        self.code = qr;
    }

    /// The next JSON text frame within `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Value {
        next_json_within(&mut self.ws, limit).await
    }

    /// The next JSON text frame, or `None` once the socket is closed (a
    /// page that neither closes nor sends within `limit` fails the test).
    pub async fn next_frame_or_close(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(&t).unwrap());
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("the page was neither closed nor sent anything in {limit:?}"),
            }
        }
    }

    /// Waits for a frame of `kind`, skipping others, except that an
    /// `error` frame while waiting for anything else fails the test (with
    /// the frame): an error is never noise to wait past. A new
    /// `qrcode_url` becomes the page's code.
    pub async fn wait_for(&mut self, kind: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await;
            if f["message_type"] == kind {
                if kind == "qrcode_url" {
                    self.take_qr(f.clone());
                }
                return f;
            }
            assert_ne!(
                f["message_type"], "error",
                "an error frame arrived while waiting for {kind:?}: {f}"
            );
        }
    }

    pub async fn send(&mut self, text: &str) {
        send_text(&mut self.ws, text).await;
    }
}
