//! Benchmark browsers: WebSocket connections to the gateway from spread
//! loopback source addresses, each waiting for its `qrcode_url` and then
//! read by its own task, which stamps every `scan_success` into a shared
//! [`Recorder`]. Also finds each connection's `fd` through the simulator.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hyper::Method;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::http;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long connecting and receiving the first QR code may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Client-side buffers: the frames here are a few hundred bytes, and a
/// client holding 19,000 connections must not spend 128 KiB on each.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// The loopback source address for connection `i`: 4,000 addresses
/// (127.0.1.1 – 127.0.16.250) so neither ephemeral ports nor TIME_WAIT
/// entries run out at 100k+ connections.
pub fn source_ip(i: usize) -> Ipv4Addr {
    let k = i % 4000;
    let hi = u8::try_from(k / 250 + 1).unwrap_or(1);
    let lo = u8::try_from(k % 250 + 1).unwrap_or(1);
    Ipv4Addr::new(127, 0, hi, lo)
}

/// Opens one WebSocket from `src` and waits for its first `qrcode_url`;
/// returns the socket and the QR ticket.
pub async fn connect(gateway: SocketAddr, src: Ipv4Addr) -> anyhow::Result<(Ws, String)> {
    tokio::time::timeout(OPEN_TIMEOUT, connect_inner(gateway, src))
        .await
        .context("no qrcode_url within the open timeout")?
}

async fn connect_inner(gateway: SocketAddr, src: Ipv4Addr) -> anyhow::Result<(Ws, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("cannot bind {src}"))?;
    let stream = socket.connect(gateway).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut ws, _) =
        client_async_with_config(format!("ws://{gateway}/ws"), stream, Some(client_config()))
            .await
            .context("WebSocket handshake")?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg.context("reading the first frame")? {
            let v: serde_json::Value =
                serde_json::from_str(text.as_str()).context("frame is not JSON")?;
            match v.get("message_type").and_then(|t| t.as_str()) {
                Some("qrcode_url") => {
                    let url = v
                        .get("url")
                        .and_then(|u| u.as_str())
                        .context("qrcode_url without url")?;
                    return Ok((ws, ticket_from_url(url)?));
                }
                Some("error") => bail!("gateway sent an error instead of a QR code: {text}"),
                _ => {}
            }
        }
    }
    bail!("connection closed before a qrcode_url")
}

/// The `ticket` query parameter of a QR image URL, percent-decoded.
pub fn ticket_from_url(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).with_context(|| format!("bad QR url {url}"))?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v.into_owned())
        .with_context(|| format!("no ticket in QR url {url}"))
}

/// Closes a WebSocket politely (Close frame, then wait for the server's
/// close) within `limit`.
pub async fn close(mut ws: Ws, limit: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(limit, async {
        ws.close(None).await?;
        while let Some(m) = ws.next().await {
            m?;
        }
        anyhow::Ok(())
    })
    .await
    .context("close handshake timed out")?
}

/// Nanoseconds since the Unix epoch (comparable across processes).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a reader task uses as the slot of a `scan_success`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    /// Nothing is recorded (idle connections).
    Nothing,
    /// The connection's index (one login per connection).
    Connection,
    /// The nickname, `b<run>-<seq>`, and only for the current run (pushes).
    Nickname,
}

/// Arrival times of `scan_success` frames, by slot, in nanoseconds since
/// [`Recorder::base`] (0 = not arrived).
pub struct Recorder {
    pub base: Instant,
    pub run: AtomicU32,
    pub arrived: Vec<AtomicU64>,
    pub count: AtomicUsize,
    /// Frames that were not expected (error frames, unknown slots, repeats).
    pub unexpected: AtomicUsize,
    pub first_unexpected: std::sync::Mutex<Option<String>>,
    /// When set, each recorded slot gives one permit back to semaphore
    /// `slot % len` (closed-loop pushes: in flight until delivered).
    release: std::sync::RwLock<Vec<Arc<Semaphore>>>,
}

impl Recorder {
    pub fn new(slots: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            base: Instant::now(),
            run: AtomicU32::new(0),
            arrived: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
            unexpected: AtomicUsize::new(0),
            first_unexpected: std::sync::Mutex::new(None),
            release: std::sync::RwLock::new(Vec::new()),
        })
    }

    /// Nanoseconds since `base`.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Clears every slot for run `run`.
    pub fn reset(&self, run: u32) {
        self.run.store(run, Ordering::SeqCst);
        for a in &self.arrived {
            a.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::SeqCst);
    }

    /// Permits to give back as slots arrive (empty: none).
    pub fn set_release(&self, semaphores: Vec<Arc<Semaphore>>) {
        if let Ok(mut r) = self.release.write() {
            *r = semaphores;
        }
    }

    fn record(&self, slot: usize) {
        let t = self.now_ns().max(1);
        match self.arrived.get(slot) {
            Some(a)
                if a.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok() =>
            {
                self.count.fetch_add(1, Ordering::Release);
                if let Ok(r) = self.release.read()
                    && !r.is_empty()
                {
                    r[slot % r.len()].add_permits(1);
                }
            }
            _ => self.note_unexpected(&format!(
                "scan_success for slot {slot} (repeat or out of range)"
            )),
        }
    }

    fn note_unexpected(&self, what: &str) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_unexpected.lock()
            && f.is_none()
        {
            *f = Some(what.chars().take(300).collect());
        }
    }

    /// Waits until `expected` frames arrived, at most `limit`; returns how
    /// many did.
    pub async fn wait_for(&self, expected: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.count.load(Ordering::Acquire);
            if n >= expected || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The first unexpected frame seen, if any.
    pub fn unexpected_sample(&self) -> Option<String> {
        self.first_unexpected.lock().ok().and_then(|f| f.clone())
    }
}

/// Extracts `b<run>-<seq>` from a `scan_success` frame's `user` without a
/// full JSON parse (the reader must keep up with 100k+ frames/s).
fn nickname_slot(text: &str) -> Option<(u32, usize)> {
    let start = text.find("\"user\":\"b")? + "\"user\":\"b".len();
    let rest = &text[start..];
    let end = rest.find('"')?;
    let (run, seq) = rest[..end].split_once('-')?;
    Some((run.parse().ok()?, seq.parse().ok()?))
}

fn spawn_reader(index: usize, mut ws: Ws, recorder: Arc<Recorder>, key: KeyBy) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = ws.next().await {
            let Ok(msg) = msg else { break };
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            if !text.contains("\"scan_success\"") {
                if text.contains("\"error\"") {
                    recorder.note_unexpected(text);
                }
                continue;
            }
            match key {
                KeyBy::Nothing => recorder.note_unexpected(text),
                KeyBy::Connection => recorder.record(index),
                KeyBy::Nickname => match nickname_slot(text) {
                    Some((run, seq)) if run == recorder.run.load(Ordering::Relaxed) => {
                        recorder.record(seq);
                    }
                    Some(_) => {}
                    None => recorder.note_unexpected(text),
                },
            }
        }
    })
}

/// One open connection of a [`Fleet`].
pub struct ConnInfo {
    pub ticket: String,
}

/// Connections held open, each read by its own task.
pub struct Fleet {
    pub conns: Vec<ConnInfo>,
    pub readers: Vec<JoinHandle<()>>,
    /// Unix ns of the first connect and of the last `qrcode_url`.
    pub first_connect_ns: u64,
    pub last_qr_ns: u64,
    pub failures: usize,
    pub first_error: Option<String>,
}

impl Fleet {
    /// Drops every connection (the sockets close; the gateway sees EOF).
    pub async fn close(self) {
        for r in &self.readers {
            r.abort();
        }
        for r in self.readers {
            let _ = r.await;
        }
    }
}

/// Opens `n` connections with at most `concurrency` opening at once.
/// Source addresses start at connection index `first_index`.
pub async fn open_fleet(
    gateway: SocketAddr,
    n: usize,
    concurrency: usize,
    first_index: usize,
    recorder: Arc<Recorder>,
    key: KeyBy,
) -> Fleet {
    struct Slot {
        info: Option<(ConnInfo, JoinHandle<()>)>,
    }
    let next = Arc::new(AtomicUsize::new(0));
    let slots: Arc<Mutex<Vec<Slot>>> =
        Arc::new(Mutex::new((0..n).map(|_| Slot { info: None }).collect()));
    let errors: Arc<Mutex<(usize, Option<String>)>> = Arc::default();
    let last_qr = Arc::new(AtomicU64::new(0));
    let first_connect_ns = unix_ns();
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (next, slots, errors, last_qr, recorder) = (
            next.clone(),
            slots.clone(),
            errors.clone(),
            last_qr.clone(),
            recorder.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match connect(gateway, source_ip(first_index + i)).await {
                    Ok((ws, ticket)) => {
                        last_qr.fetch_max(unix_ns(), Ordering::Relaxed);
                        let reader = spawn_reader(i, ws, recorder.clone(), key);
                        slots.lock().await[i].info = Some((ConnInfo { ticket }, reader));
                    }
                    Err(e) => {
                        let mut er = errors.lock().await;
                        er.0 += 1;
                        if er.1.is_none() {
                            er.1 = Some(format!("{e:#}"));
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut conns = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for slot in std::mem::take(&mut *slots.lock().await) {
        if let Some((info, reader)) = slot.info {
            conns.push(info);
            readers.push(reader);
        }
    }
    let (failures, first_error) = std::mem::take(&mut *errors.lock().await);
    Fleet {
        conns,
        readers,
        first_connect_ns,
        last_qr_ns: last_qr.load(Ordering::Relaxed),
        failures,
        first_error,
    }
}

/// Each ticket's scene id (the connection's `fd`), from the simulator's
/// `GET /sim/tickets/<ticket>`, looked up over `parallel` connections.
pub async fn lookup_fds(
    sim: SocketAddr,
    tickets: Vec<String>,
    parallel: usize,
) -> anyhow::Result<Vec<u32>> {
    let tickets = Arc::new(tickets);
    let out: Arc<Vec<AtomicU32>> =
        Arc::new((0..tickets.len()).map(|_| AtomicU32::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (tickets, out, next) = (tickets.clone(), out.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::new(sim);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(ticket) = tickets.get(i) else { break };
                let path = format!(
                    "/sim/tickets/{}",
                    percent_encoding::utf8_percent_encode(
                        ticket,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                let (status, body) = conn
                    .request(Method::GET, &path, None, bytes::Bytes::new())
                    .await?;
                if !status.is_success() {
                    bail!("sim answered {status} for ticket {ticket}");
                }
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                let fd = v
                    .get("scene_id")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .with_context(|| format!("no scene_id for ticket {ticket}"))?;
                out[i].store(fd, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("fd lookup task")??;
    }
    Ok(out.iter().map(|a| a.load(Ordering::Relaxed)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_come_out_decoded() {
        let url = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=gQ%2B%2F%3Dab";
        assert_eq!(ticket_from_url(url).unwrap(), "gQ+/=ab");
    }

    #[test]
    fn nicknames_parse() {
        let f = r#"{"message_type":"scan_success","user":"b3-1234","openid":""}"#;
        assert_eq!(nickname_slot(f), Some((3, 1234)));
        assert_eq!(nickname_slot(r#"{"user":"alice"}"#), None);
    }

    #[test]
    fn source_ips_are_spread_and_valid() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(source_ip(249), Ipv4Addr::new(127, 0, 1, 250));
        assert_eq!(source_ip(250), Ipv4Addr::new(127, 0, 2, 1));
        assert_eq!(source_ip(3999), Ipv4Addr::new(127, 0, 16, 250));
        assert_eq!(source_ip(4000), source_ip(0));
    }
}
