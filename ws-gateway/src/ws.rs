//! One browser connection: the upgrade (`accept`), then a single task per
//! connection that selects over the socket, its push queue (woken through
//! the registry), its QR mint in flight, and one timer for pings, idling,
//! code expiry and mint retries. No other task or channel per connection.
//!
//! Memory per idle connection is kept small on purpose (about 2.0 KB of
//! RSS per connection at 19,000 idle connections, release build; see
//! BENCHMARKS.md): tungstenite's read buffer is [`READ_BUFFER_BYTES`]
//! instead of 128 KiB; frames are written straight to the socket
//! ([`Conn::send`]), so tungstenite's write buffer never holds the
//! capacity of the largest frame sent; the TcpStream is taken back out of
//! hyper's boxed upgrade; the upgrade, the mint future and event handling
//! are boxed only while they run, and no tracing span wraps the task, so
//! the task fits tokio's 896-byte cell (a test keeps it there); pushes and
//! shutdown wake the task through the waker it leaves in its registry
//! entry (no `Notify` allocation); and that entry holds a digest of the
//! ticket, not the ticket.
//!
//! Slow consumers: a write that cannot complete within [`WRITE_TIMEOUT`]
//! closes the connection; pushes beyond the registry's small queue are
//! refused to the bus with `client_busy` rather than buffered. A push is
//! reported written to the bus only once it is on the socket.
//!
//! Before upgrading: the page's `Origin` must be allowed (403, see
//! `origin`), the client address must be under `--max-connections-per-ip`
//! (429) and the gateway under `--max-connections` (503).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemon_kit::http::{Response, text};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HOST, HeaderValue, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE, USER_AGENT,
};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::fd::Fd;
use protocol::ws::{ClientCommand, MAX_CLIENT_FRAME_BYTES, ServerFrame, WsErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;
use wechat_api::{ApiError, QrCode};

use crate::Gateway;
use crate::qr::{Backoff, MintFuture};

/// tungstenite's read buffer (allocated up front per connection). Browser
/// commands are a few dozen bytes; a bigger frame grows it on demand, up
/// to [`MAX_CLIENT_FRAME_BYTES`].
pub const READ_BUFFER_BYTES: usize = 64;

/// Most bytes queued for one browser when the socket does not take them
/// (a frame is a few hundred bytes; a push with a long nickname or token a
/// few KiB).
pub const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A write to a browser that takes longer than this closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the close handshake may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most frames a browser may send between two of the server's pings (half
/// the idle timeout): the client sends one ping in that time, and a
/// refresh now and then. Past it the connection is closed (1008), so a
/// flooding client cannot make the gateway answer at its pace.
pub const MAX_FRAMES_PER_PING: u16 = 100;

/// `refresh` is allowed once per this long, counted from the last code
/// minted for the connection.
pub const REFRESH_SPACING: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TcpStream>;

/// The tungstenite settings of every browser connection.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_CLIENT_FRAME_BYTES))
        .max_frame_size(Some(MAX_CLIENT_FRAME_BYTES))
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(UPGRADE, "websocket") && has_token(CONNECTION, "upgrade")
}

/// Answers an upgrade request: 101 and a connection task, or 503 past
/// `--max-connections` (or while shutting down), or 4xx for a malformed
/// handshake.
pub(crate) fn accept(gw: Arc<Gateway>, mut req: Request<Incoming>, peer: SocketAddr) -> Response {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades use GET\n",
        );
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut resp = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return resp;
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if !crate::origin::allowed(header(ORIGIN), header(HOST), &gw.settings.allowed_origins) {
        gw.metrics.ws_origin_refused.inc();
        debug!(%peer, origin = header(ORIGIN).unwrap_or("?"), "upgrade from a foreign origin refused");
        return text(
            StatusCode::FORBIDDEN,
            "this page's origin may not open the login WebSocket (see --allowed-origins)\n",
        );
    }
    if gw.shutdown.is_cancelled() {
        gw.metrics.ws_refused.inc();
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Ok(accept_value) = HeaderValue::from_str(&accept_key) else {
        return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n");
    };
    let Ok(permit) = Arc::clone(&gw.ws_permits).try_acquire_owned() else {
        gw.metrics.ws_refused.inc();
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let ip = gw.trusted.client_ip(peer.ip(), req.headers());
    if !gw.conn_limiter.try_acquire(ip) {
        gw.metrics.ws_ip_refused.inc();
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        );
    }
    let page = gw.page_infos.line(ip, header(USER_AGENT).unwrap_or(""));
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);

    // No tracing span per task: it would add 40 bytes to every idle
    // connection; the debug lines carry the fd instead.
    // The upgrade and registration are boxed up front, so the long-lived
    // task holds one pointer instead of their arguments.
    let opening = Box::pin(open(Arc::clone(&gw), on_upgrade, peer, ip, page, permit));
    gw.ws_tasks.spawn(connection(opening));

    let mut resp = hyper::Response::new(http_body_util::Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept_value);
    resp
}

/// The connection task: the upgrade and registration (boxed, so their
/// state does not stay in the long-lived task), then the event loop.
async fn connection(opening: Pin<Box<impl Future<Output = Option<Conn>>>>) {
    let Some(mut conn) = opening.await else {
        return;
    };
    let end = conn.run().await;
    let fd = conn.fd.get();
    match end {
        End::Failed(e) => debug!(fd, cause = %e, "browser connection failed"),
        end => debug!(fd, ?end, "browser connection closed"),
    }
}

/// Gives back the per-IP place of a connection that never got as far as
/// a [`Conn`] (which gives it back itself when dropped).
struct IpPlace<'a> {
    gw: &'a Gateway,
    ip: IpAddr,
    armed: bool,
}

impl Drop for IpPlace<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gw.conn_limiter.release(self.ip);
        }
    }
}

/// Completes the upgrade and registers the connection under a fresh fd.
async fn open(
    gw: Arc<Gateway>,
    on_upgrade: OnUpgrade,
    peer: SocketAddr,
    ip: IpAddr,
    page: Arc<[u8]>,
    permit: OwnedSemaphorePermit,
) -> Option<Conn> {
    let mut place = IpPlace {
        gw: &gw,
        ip,
        armed: true,
    };
    let upgraded = tokio::select! {
        _ = gw.shutdown.cancelled() => return None,
        u = on_upgrade => match u {
            Ok(u) => u,
            Err(e) => {
                debug!(%peer, cause = %e, "upgrade failed");
                return None;
            }
        },
    };
    // daemon-kit serves `TokioIo<TcpStream>`: take the TcpStream back out
    // of hyper's boxed upgrade so the socket is not reached through a
    // `Box<dyn Io>` for the connection's whole life.
    let mut ws = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            WebSocketStream::from_raw_socket(parts.io.into_inner(), Role::Server, Some(config()))
                .await
        }
        Ok(parts) => {
            // The browser sent frames right behind its handshake.
            WebSocketStream::from_partially_read(
                parts.io.into_inner(),
                parts.read_buf.to_vec(),
                Role::Server,
                Some(config()),
            )
            .await
        }
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP stream");
            return None;
        }
    };
    let now = Instant::now();
    let Some(fd) = gw.registry.register(now) else {
        tracing::error!("no free fd could be drawn");
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            ws.close(Some(CloseFrame {
                code: CloseCode::Again,
                reason: "try again later".into(),
            })),
        )
        .await;
        return None;
    };
    gw.registry.set_page(fd, page);
    gw.metrics.ws_open.inc();
    gw.metrics.ws_accepted.inc();
    debug!(fd = fd.get(), %peer, %ip, "browser connected");
    // From here the Conn gives the per-IP place back.
    place.armed = false;
    drop(place);

    let next_ping = now + ping_every(&gw);
    Some(Conn {
        gw,
        ws,
        fd,
        ip,
        last_activity: now,
        frames_since_ping: 0,
        next_ping,
        _permit: permit,
        code_expires: None,
        last_minted: None,
        mint: None,
        retry_at: None,
        backoff: Backoff::default(),
    })
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The browser closed it (or the socket went away).
    Closed,
    Idle,
    Shutdown,
    /// A write did not complete within [`WRITE_TIMEOUT`].
    Stalled,
    /// More than [`MAX_FRAMES_PER_PING`] frames between two pings.
    Flood,
    /// A protocol or I/O error.
    Failed(WsError),
}

/// What woke the connection task.
enum Event {
    Shutdown,
    Pushes,
    Minted(Result<QrCode, ApiError>),
    Frame(Option<Result<Message, WsError>>),
    Timer,
}

struct Conn {
    gw: Arc<Gateway>,
    ws: Socket,
    fd: Fd,
    ip: IpAddr,
    last_activity: Instant,
    /// Frames received since the last ping went out (see
    /// [`MAX_FRAMES_PER_PING`]).
    frames_since_ping: u16,
    next_ping: Instant,
    /// When the code on screen expires; `None` once `qrcode_expired` went
    /// out (or before the first code).
    code_expires: Option<Instant>,
    last_minted: Option<Instant>,
    mint: Option<MintFuture>,
    /// When to try minting again after WeChat failed.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// A place under `--max-connections`, given back when the task ends.
    _permit: OwnedSemaphorePermit,
}

/// How often the server pings: half the idle timeout (at least 100 ms), so
/// a live browser's pong always arrives in time.
fn ping_every(gw: &Gateway) -> Duration {
    (gw.settings.idle_timeout / 2).max(Duration::from_millis(100))
}

/// However the task ends, the fd leaves the registry (as a tombstone while
/// its last code can still be scanned) and the gauge goes down.
impl Drop for Conn {
    fn drop(&mut self) {
        // Pushes still queued are dropped unwritten: their bus lines are
        // answered `no_such_client`.
        self.gw.registry.remove(self.fd, Instant::now());
        self.gw.conn_limiter.release(self.ip);
        self.gw.metrics.ws_open.dec();
    }
}

/// Polls an optional future; never ready when there is none.
async fn poll_opt<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Conn {
    /// The event loop. While idle the task is parked in the `select!`
    /// below; each event is handled in a boxed future, so the (rare)
    /// handling code does not enlarge every idle connection's task.
    async fn run(&mut self) -> End {
        if let Err(end) = Box::pin(self.request_code(Instant::now())).await {
            return end;
        }
        let sleep = tokio::time::sleep_until(self.next_deadline().into());
        tokio::pin!(sleep);
        loop {
            let deadline = tokio::time::Instant::from(self.next_deadline());
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            // Shutdown arrives as a wake-up from the registry too
            // (`Registry::wake_all`), so the idle task does not also wait
            // on the cancellation token.
            let event = if self.gw.shutdown.is_cancelled() {
                Event::Shutdown
            } else {
                tokio::select! {
                    biased;
                    () = std::future::poll_fn(|cx| self.gw.registry.poll_wake(self.fd, cx)) => {
                        Event::Pushes
                    }
                r = poll_opt(&mut self.mint) => Event::Minted(r),
                    m = self.ws.next() => Event::Frame(m),
                    _ = &mut sleep => Event::Timer,
                }
            };
            if let Err(end) = Box::pin(self.handle(event, Instant::now())).await {
                if let End::Stalled = end {
                    self.gw.metrics.ws_write_stalled.inc();
                }
                return end;
            }
        }
    }

    async fn handle(&mut self, event: Event, now: Instant) -> Result<(), End> {
        match event {
            Event::Shutdown => {
                let _ = self.send_pushes().await;
                let _ = self
                    .send_error(
                        WsErrorCode::ShuttingDown,
                        "the server is restarting; reconnecting".into(),
                    )
                    .await;
                self.close(CloseCode::Away, "server shutting down").await;
                Err(End::Shutdown)
            }
            Event::Pushes => self.send_pushes().await,
            Event::Minted(r) => {
                self.mint = None;
                self.on_minted(r, now).await
            }
            Event::Frame(m) => self.on_frame(m, now).await,
            Event::Timer => self.on_timer(now).await,
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = (self.last_activity + self.gw.settings.idle_timeout).min(self.next_ping);
        if let Some(t) = self.code_expires {
            d = d.min(t);
        }
        if let Some(t) = self.retry_at {
            d = d.min(t);
        }
        d
    }

    /// Writes one frame straight to the socket. tungstenite formats it,
    /// but it does not go through tungstenite's write buffer: that buffer
    /// keeps the capacity of the largest frame ever sent (the ~260-byte
    /// `qrcode_url`) for the connection's whole life, which is a tenth of
    /// an idle connection's memory. Whatever tungstenite queued itself (a
    /// pong, a close) is flushed first, so frames never interleave, and
    /// after a close from the browser the flush fails as a send would.
    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let mut bytes = Vec::with_capacity(frame.len());
        frame.format(&mut bytes).map_err(End::Failed)?;
        let ws = &mut self.ws;
        let write = async {
            ws.flush().await?;
            ws.get_mut().write_all(&bytes).await.map_err(WsError::Io)
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => Err(End::Closed),
            Ok(Err(WsError::Io(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(End::Closed)
            }
            Ok(Err(e)) => Err(End::Failed(e)),
            Err(_) => Err(End::Stalled),
        }
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Frame::message(
            frame.to_json(),
            OpCode::Data(Data::Text),
            true,
        ))
        .await
    }

    async fn send_error(&mut self, code: WsErrorCode, message: String) -> Result<(), End> {
        self.send_frame(&ServerFrame::error(code, message)).await
    }

    /// Sends a close frame and waits briefly for the browser's answer.
    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Writes the queued pushes and settles each one's receipt: written,
    /// or not (see `delivery`). A push the bus already gave up on, or a
    /// write the bus asks to abort, closes the connection, so the browser
    /// never gets a frame the bus reported as failed. On a failed write the
    /// remaining pushes are dropped, unwritten.
    async fn send_pushes(&mut self) -> Result<(), End> {
        let pushes = self.gw.registry.take_pushes(self.fd);
        for mut push in pushes {
            if !push.receipt.begin() {
                debug!(
                    fd = self.fd.get(),
                    "push abandoned by the bus before it was written"
                );
                continue;
            }
            let receipt = &push.receipt;
            let frame = Frame::message(push.frame.to_json(), OpCode::Data(Data::Text), true);
            let written = tokio::select! {
                r = self.send(frame) => r,
                () = receipt.abort_requested() => Err(End::Stalled),
            };
            push.receipt.finish(written.is_ok());
            written?;
            self.gw.metrics.pushes.inc();
            debug!(fd = self.fd.get(), "push written");
        }
        Ok(())
    }

    /// A code asked for by the browser (on connect, or `refresh`), subject
    /// to the client IP's budget.
    async fn request_code(&mut self, now: Instant) -> Result<(), End> {
        if !self.gw.limiter.try_take(self.ip, now) {
            self.gw.metrics.qr_ip_limited.inc();
            return self
                .send_error(
                    WsErrorCode::RateLimited,
                    "too many QR codes for this address; try again in a minute".into(),
                )
                .await;
        }
        self.mint = Some(self.gw.minter.mint(self.fd.get()));
        Ok(())
    }

    async fn on_refresh(&mut self, now: Instant) -> Result<(), End> {
        if self.mint.is_some() {
            // A code is on its way already.
            return Ok(());
        }
        if self.retry_at.is_some() {
            return self
                .send_error(
                    WsErrorCode::WechatUnavailable,
                    "WeChat is not answering; the gateway keeps retrying".into(),
                )
                .await;
        }
        if let Some(last) = self.last_minted {
            let allowed = last + REFRESH_SPACING;
            if now < allowed {
                self.gw.metrics.qr_refresh_limited.inc();
                let wait_ms = allowed.duration_since(now).as_millis();
                return self
                    .send_error(
                        WsErrorCode::RateLimited,
                        format!("one new code per 5 s; try again in {wait_ms} ms"),
                    )
                    .await;
            }
        }
        self.request_code(now).await
    }

    async fn on_minted(
        &mut self,
        result: Result<QrCode, ApiError>,
        now: Instant,
    ) -> Result<(), End> {
        match result {
            Ok(qr) => {
                let expires = now + self.gw.minter.lifetime(&qr);
                self.gw.registry.set_code(self.fd, &qr.ticket, expires);
                self.code_expires = Some(expires);
                self.last_minted = Some(now);
                self.backoff.reset();
                let frame = self.gw.minter.frame(&qr);
                self.send_frame(&frame).await
            }
            Err(e) if e.is_permanent() => {
                // Logged (rate-limited) by the minter. Retrying cannot help
                // (credentials, API not allowed, daily quota): say so once;
                // the page may still ask again with `refresh`.
                self.send_error(
                    WsErrorCode::WechatUnavailable,
                    "WeChat refuses to issue login codes right now; try again later".into(),
                )
                .await
            }
            Err(_) => {
                // Logged (rate-limited) by the minter.
                let delay = self.backoff.next_delay();
                self.retry_at = Some(now + delay);
                self.send_error(
                    WsErrorCode::WechatUnavailable,
                    format!(
                        "WeChat did not issue a QR code; retrying in {} s",
                        delay.as_secs()
                    ),
                )
                .await
            }
        }
    }

    async fn on_frame(
        &mut self,
        msg: Option<Result<Message, WsError>>,
        now: Instant,
    ) -> Result<(), End> {
        let msg = match msg {
            None => return Err(End::Closed),
            Some(Ok(m)) => m,
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Err(End::Closed);
            }
            Some(Err(WsError::Capacity(e))) => {
                debug!(fd = self.fd.get(), cause = %e, "frame too large");
                let _ = self
                    .send_error(
                        WsErrorCode::BadFrame,
                        format!("frames are limited to {MAX_CLIENT_FRAME_BYTES} bytes"),
                    )
                    .await;
                self.close(CloseCode::Size, "frame too large").await;
                return Err(End::Failed(WsError::Capacity(e)));
            }
            Some(Err(e)) => return Err(End::Failed(e)),
        };
        self.last_activity = now;
        self.frames_since_ping = self.frames_since_ping.saturating_add(1);
        if self.frames_since_ping > MAX_FRAMES_PER_PING {
            self.gw.metrics.ws_flood_closed.inc();
            let _ = self
                .send_error(
                    WsErrorCode::RateLimited,
                    format!("more than {MAX_FRAMES_PER_PING} frames between pings"),
                )
                .await;
            self.close(CloseCode::Policy, "too many frames").await;
            return Err(End::Flood);
        }
        match msg {
            Message::Text(t) => match ClientCommand::parse(t.as_str()) {
                Some(ClientCommand::Ping) => self.send_frame(&ServerFrame::Pong).await,
                Some(ClientCommand::Refresh) => self.on_refresh(now).await,
                None => {
                    self.send_error(
                        WsErrorCode::BadCommand,
                        r#"expected {"cmd":"ping"} or {"cmd":"refresh"}"#.into(),
                    )
                    .await
                }
            },
            Message::Binary(_) => {
                self.send_error(
                    WsErrorCode::BadFrame,
                    "binary frames are not accepted; send JSON text".into(),
                )
                .await
            }
            // tungstenite answers pings and close frames itself; a close
            // ends the stream on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_timer(&mut self, now: Instant) -> Result<(), End> {
        if now >= self.last_activity + self.gw.settings.idle_timeout {
            self.gw.metrics.ws_idle_closed.inc();
            self.close(CloseCode::Normal, "idle timeout").await;
            return Err(End::Idle);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.mint = Some(self.gw.minter.mint(self.fd.get()));
        }
        if self.code_expires.is_some_and(|t| now >= t) {
            self.code_expires = None;
            self.gw.metrics.qr_expired.inc();
            self.send_frame(&ServerFrame::QrcodeExpired).await?;
        }
        if now >= self.next_ping {
            self.next_ping = now + ping_every(&self.gw);
            self.frames_since_ping = 0;
            self.send(Frame::ping(Bytes::new())).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle browser connection is one task holding this future, so
    /// its size is most of the per-connection memory; handling code is
    /// boxed so it stays small. tokio allocates a task as a 128-byte
    /// aligned cell with ~104 bytes of its own beside the future, so a
    /// future (with the task tracker's token) of up to 792 bytes gets an
    /// 896-byte cell, one byte more a 1,024-byte cell: 128 bytes more for
    /// every idle connection. (784 bytes in release, 792 in debug, with
    /// Rust 1.95 and tokio 1.54.)
    #[test]
    fn the_idle_connection_task_stays_small() {
        let gw = crate::test_gateway();
        let mut req = hyper::Request::new(());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let permit = gw.ws_permits.clone().try_acquire_owned().unwrap();
        let tasks = gw.ws_tasks.clone();
        let page = gw.page_infos.line("127.0.0.1".parse().unwrap(), "ua");
        let opening = Box::pin(open(
            gw,
            on_upgrade,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            page,
            permit,
        ));
        let task = tasks.track_future(connection(opening));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 792, "connection task future is {size} bytes");
    }

    #[test]
    fn upgrade_detection_reads_header_tokens() {
        let req = |upgrade: &str, connection: &str| {
            hyper::Request::builder()
                .header(UPGRADE, upgrade)
                .header(CONNECTION, connection)
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&req("websocket", "Upgrade")));
        assert!(is_upgrade(&req("WebSocket", "keep-alive, upgrade")));
        assert!(!is_upgrade(&req("h2c", "Upgrade")));
        assert!(!is_upgrade(&req("websocket", "keep-alive")));
    }
}
