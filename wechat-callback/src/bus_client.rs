//! The client side of the notify bus: one persistent TCP connection to
//! ws-gateway, requests pipelined over it and answers matched in order.
//!
//! One actor task owns the connection. A request is written at once
//! (writes are flushed when no other request is waiting) and its answer
//! slot queued; a reader task hands answers to the slots in order. When
//! there is no connection, the next request connects first (at once: a
//! restarted gateway is used by the very next scan), but after a failed
//! connect further attempts wait out a short backoff (100 ms doubling to
//! 2 s) and fail fast meanwhile. A request that gets no answer within its
//! timeout fails, and the connection is dropped so a wedged gateway cannot
//! hold later requests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::bus::{Answer, BusError, Line, MAX_LINE_BYTES, ScanNotify, split_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests waiting for the actor.
const QUEUE: usize = 1024;
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a notification did not get `{"ok":true}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The gateway answered with an error code.
    #[error("gateway answered {0}")]
    Refused(BusError),
    /// The gateway could not be reached (or the connection broke).
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("gateway did not answer in time")]
    Timeout,
    /// An answer that is not a known answer line.
    #[error("unreadable answer from the gateway")]
    BadAnswer,
}

impl NotifyError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            NotifyError::Refused(e) => e.code(),
            NotifyError::Unreachable(_) => "unreachable",
            NotifyError::Timeout => "timeout",
            NotifyError::BadAnswer => "bad_answer",
        }
    }
}

type Slot = oneshot::Sender<Result<(), NotifyError>>;

enum Msg {
    Send(Vec<u8>, Slot),
    /// A request timed out: drop the connection.
    Reset,
}

/// Handle to the bus client; cheap to clone.
#[derive(Clone)]
pub struct BusClient {
    tx: mpsc::Sender<Msg>,
    timeout: Duration,
}

impl BusClient {
    /// Starts the actor for `addr` (host:port).
    pub fn start(addr: String, timeout: Duration) -> BusClient {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(actor(addr, rx));
        BusClient { tx, timeout }
    }

    /// Sends one notification and waits for its answer.
    pub async fn notify(&self, req: &ScanNotify) -> Result<(), NotifyError> {
        let (slot, answer) = oneshot::channel();
        let deadline = Instant::now() + self.timeout;
        let sent =
            tokio::time::timeout_at(deadline, self.tx.send(Msg::Send(req.to_line(), slot))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NotifyError::Unreachable("bus client stopped".into())),
            Err(_) => return Err(NotifyError::Timeout),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NotifyError::Unreachable("connection lost".into())),
            Err(_) => {
                let _ = self.tx.try_send(Msg::Reset);
                Err(NotifyError::Timeout)
            }
        }
    }
}

struct Conn {
    writer: BufWriter<OwnedWriteHalf>,
    pending: Arc<Mutex<VecDeque<Slot>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn close(self, why: &str) {
        self.reader.abort();
        fail_all(&self.pending, why);
    }

    fn is_alive(&self) -> bool {
        !self.reader.is_finished()
    }
}

fn fail_all(pending: &Mutex<VecDeque<Slot>>, why: &str) {
    if let Ok(mut p) = pending.lock() {
        for slot in p.drain(..) {
            let _ = slot.send(Err(NotifyError::Unreachable(why.to_string())));
        }
    }
}

async fn actor(addr: String, mut rx: mpsc::Receiver<Msg>) {
    let mut conn: Option<Conn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    while let Some(msg) = rx.recv().await {
        let (line, slot) = match msg {
            Msg::Reset => {
                if let Some(c) = conn.take() {
                    tracing::warn!("notify bus request timed out; reconnecting");
                    c.close("connection reset after a timeout");
                }
                continue;
            }
            Msg::Send(line, slot) => (line, slot),
        };
        if conn.as_ref().is_some_and(|c| !c.is_alive())
            && let Some(c) = conn.take()
        {
            c.close("connection closed by the gateway");
        }
        if conn.is_none() {
            if retry_at.is_some_and(|t| Instant::now() < t) {
                let _ = slot.send(Err(NotifyError::Unreachable("reconnect backoff".into())));
                continue;
            }
            match connect(&addr).await {
                Ok(c) => {
                    tracing::info!(%addr, "connected to the notify bus");
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                    retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(%addr, cause = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the notify bus");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    let _ = slot.send(Err(NotifyError::Unreachable(e.to_string())));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Ok(mut p) = c.pending.lock() {
            p.push_back(slot);
        }
        let mut result = c.writer.write_all(&line).await;
        // Pipeline: write whatever else is already waiting before flushing.
        while result.is_ok() {
            match rx.try_recv() {
                Ok(Msg::Send(line, slot)) => {
                    if let Ok(mut p) = c.pending.lock() {
                        p.push_back(slot);
                    }
                    result = c.writer.write_all(&line).await;
                }
                Ok(Msg::Reset) => {
                    result = Err(std::io::Error::other("reset after a timeout"));
                }
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = c.writer.flush().await;
        }
        if let Err(e) = result {
            tracing::warn!(cause = %e, "notify bus write failed");
            if let Some(c) = conn.take() {
                c.close("write failed");
            }
        }
    }
}

async fn connect(addr: &str) -> std::io::Result<Conn> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (mut read, write) = stream.into_split();
    let pending: Arc<Mutex<VecDeque<Slot>>> = Arc::default();
    let reader_pending = pending.clone();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(4096);
        let mut scanned = 0;
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(line) = split_line(&mut buf, &mut scanned, MAX_LINE_BYTES) {
                let result = match line {
                    Line::Complete(l) => match Answer::parse(&l) {
                        Ok(()) => Ok(()),
                        Err(Some(code)) => Err(NotifyError::Refused(code)),
                        Err(None) => Err(NotifyError::BadAnswer),
                    },
                    Line::TooLong => Err(NotifyError::BadAnswer),
                };
                let slot = reader_pending.lock().ok().and_then(|mut p| p.pop_front());
                if let Some(slot) = slot {
                    let _ = slot.send(result);
                }
            }
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        fail_all(&reader_pending, "connection closed by the gateway");
    });
    Ok(Conn {
        writer: BufWriter::new(write),
        pending,
        reader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    fn req(fd: u32) -> ScanNotify {
        ScanNotify {
            fd,
            nickname: "n".into(),
            openid: None,
            token: None,
            ticket: None,
            secret: None,
        }
    }

    /// A gateway stand-in: answers ok for even fds, no_such_client for odd.
    async fn fake_gateway(listener: TcpListener) {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let n = ScanNotify::parse(line.as_bytes()).unwrap();
                    let answer: &[u8] = if n.fd.is_multiple_of(2) {
                        protocol::bus::OK_LINE
                    } else {
                        BusError::NoSuchClient.answer_line()
                    };
                    if w.write_all(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn pipelined_answers_match_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(fake_gateway(listener));
        let client = BusClient::start(addr, Duration::from_secs(1));
        let mut tasks = Vec::new();
        for fd in 1..=200u32 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move { (fd, c.notify(&req(fd)).await) }));
        }
        for t in tasks {
            let (fd, r) = t.await.unwrap();
            if fd.is_multiple_of(2) {
                assert_eq!(r, Ok(()));
            } else {
                assert_eq!(r, Err(NotifyError::Refused(BusError::NoSuchClient)));
            }
        }
    }

    #[tokio::test]
    async fn unreachable_then_recovers_without_restart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = BusClient::start(addr.to_string(), Duration::from_secs(1));
        assert!(matches!(
            client.notify(&req(2)).await,
            Err(NotifyError::Unreachable(_))
        ));
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(fake_gateway(listener));
        // Within the backoff the client fails fast; after it, it reconnects.
        let mut ok = false;
        for _ in 0..50 {
            if client.notify(&req(2)).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "client did not reconnect");
    }

    #[tokio::test]
    async fn silent_gateway_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let client = BusClient::start(addr, Duration::from_millis(200));
        assert_eq!(client.notify(&req(2)).await, Err(NotifyError::Timeout));
    }
}
