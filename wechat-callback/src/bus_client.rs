//! The client side of the notify bus: one persistent TCP connection to
//! ws-gateway, requests pipelined over it and answers matched in order.
//!
//! One actor task owns the connection. A request is written at once
//! (writes are flushed when no other request is waiting) and its answer
//! slot queued; a reader task hands answers to the slots in order. When
//! there is no connection, the next request connects first (at once: a
//! restarted gateway is used by the very next scan), but after a failed
//! connect further attempts wait out a short backoff (100 ms doubling to
//! 2 s) and fail fast meanwhile.
//!
//! A request waits for its answer until the deadline its caller gives (the
//! callback's reply deadline, not a short fixed timeout): a gateway that
//! pauses for a second still answers in time, and the login is decided by
//! the answer actually received, so the user is never told "failed" for a
//! page that got its push. Only past that deadline does the request fail
//! and the connection drop, so a wedged gateway cannot hold later requests.
//! Connecting and writing are bounded by `--notify-timeout-ms`: a gateway
//! that stops reading cannot stall the queue. Answers are read with the
//! same line reader the gateway uses ([`LineBuffer`]); an answer longer than
//! [`MAX_LINE_BYTES`] closes the connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::bus::{Answer, BusError, LineBuffer, LineRef, MAX_LINE_BYTES, PageInfo, ScanNotify};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests waiting for the actor.
const QUEUE: usize = 1024;
/// Bytes asked for per read of answers.
const READ_CHUNK: usize = 4096;
/// Waits between failed connects: 100 ms doubling to 2 s.
type Backoff = daemon_kit::backoff::Backoff<100, 2_000>;

/// Why a notification did not get `{"ok":true}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The gateway answered with an error code.
    #[error("gateway answered {0}")]
    Refused(BusError),
    /// The gateway could not be reached: the line was never sent.
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    /// The line was sent but the connection broke before its answer: the
    /// gateway may or may not have pushed it (its fate is unknown).
    #[error("connection lost before the answer: {0}")]
    Lost(String),
    /// No `--notify-addr` for the gateway node of this fd: nothing sent.
    #[error("no --notify-addr for gateway node {0}")]
    NoRoute(u8),
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
            NotifyError::NoRoute(_) => "no_route",
            NotifyError::Lost(_) => "lost",
            NotifyError::Timeout => "timeout",
            NotifyError::BadAnswer => "bad_answer",
        }
    }
}

type Slot = oneshot::Sender<Result<PageInfo, NotifyError>>;

enum Msg {
    Send(Vec<u8>, Slot),
    /// A request timed out: drop the connection.
    Reset,
}

/// Handle to the bus client; cheap to clone.
#[derive(Clone)]
pub struct BusClient {
    tx: mpsc::Sender<Msg>,
}

impl BusClient {
    /// Starts the actor for `addr` (host:port); connecting and each write
    /// may take at most `io_timeout`.
    pub fn start(addr: String, io_timeout: Duration) -> BusClient {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(actor(addr, io_timeout, rx));
        BusClient { tx }
    }

    /// Sends one request and waits for its answer until `deadline`.
    pub async fn notify(
        &self,
        req: &ScanNotify,
        deadline: Instant,
    ) -> Result<PageInfo, NotifyError> {
        let (slot, answer) = oneshot::channel();
        let sent =
            tokio::time::timeout_at(deadline, self.tx.send(Msg::Send(req.to_line(), slot))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NotifyError::Unreachable("bus client stopped".into())),
            Err(_) => return Err(NotifyError::Timeout),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NotifyError::Lost("answer slot dropped".into())),
            Err(_) => {
                let _ = self.tx.try_send(Msg::Reset);
                Err(NotifyError::Timeout)
            }
        }
    }
}

/// Requests written and waiting for their answers, in order. Once the
/// reader has stopped it is `closed`, and a request added later fails at
/// once instead of waiting for an answer nobody will read.
#[derive(Default)]
struct Pending {
    slots: VecDeque<Slot>,
    closed: bool,
}

impl Pending {
    fn push(pending: &Mutex<Pending>, slot: Slot) {
        if let Ok(mut p) = pending.lock() {
            if p.closed {
                let _ = slot.send(Err(NotifyError::Unreachable("connection closed".into())));
            } else {
                p.slots.push_back(slot);
            }
        }
    }
}

struct Conn {
    writer: BufWriter<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
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

/// Fails every request written and not yet answered: their fate is
/// unknown ([`NotifyError::Lost`]).
fn fail_all(pending: &Mutex<Pending>, why: &str) {
    if let Ok(mut p) = pending.lock() {
        p.closed = true;
        for slot in p.slots.drain(..) {
            let _ = slot.send(Err(NotifyError::Lost(why.to_string())));
        }
    }
}

async fn actor(addr: String, io_timeout: Duration, mut rx: mpsc::Receiver<Msg>) {
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::default();
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
            match connect(&addr, io_timeout).await {
                Ok(c) => {
                    tracing::info!(%addr, "connected to the notify bus");
                    conn = Some(c);
                    backoff.reset();
                    retry_at = None;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%addr, cause = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach the notify bus");
                    retry_at = Some(Instant::now() + wait);
                    let _ = slot.send(Err(NotifyError::Unreachable(e.to_string())));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        Pending::push(&c.pending, slot);
        let write = async {
            let mut result = c.writer.write_all(&line).await;
            // Pipeline: write whatever else is already waiting before flushing.
            while result.is_ok() {
                match rx.try_recv() {
                    Ok(Msg::Send(line, slot)) => {
                        Pending::push(&c.pending, slot);
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
            result
        };
        let result = tokio::time::timeout(io_timeout, write)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the gateway is not reading (write timed out)",
                ))
            });
        if let Err(e) = result {
            tracing::warn!(cause = %e, "notify bus write failed");
            if let Some(c) = conn.take() {
                c.close("write failed");
            }
        }
    }
}

async fn connect(addr: &str, timeout: Duration) -> std::io::Result<Conn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (mut read, write) = stream.into_split();
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let reader_pending = pending.clone();
    let reader = tokio::spawn(async move {
        let mut lines = LineBuffer::new(READ_CHUNK, MAX_LINE_BYTES);
        'read: loop {
            while let Some(line) = lines.next_line() {
                let (result, fatal) = match line {
                    LineRef::Complete(l) => (
                        Answer::parse(l).map_err(|code| match code {
                            Some(code) => NotifyError::Refused(code),
                            None => NotifyError::BadAnswer,
                        }),
                        false,
                    ),
                    // Not a gateway: stop reading this connection at once
                    // (the partial line is never consumed otherwise).
                    LineRef::TooLong => (Err(NotifyError::BadAnswer), true),
                };
                let slot = reader_pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.slots.pop_front());
                if let Some(slot) = slot {
                    let _ = slot.send(result);
                }
                if fatal {
                    tracing::warn!("notify bus answer longer than {MAX_LINE_BYTES} bytes; closing");
                    break 'read;
                }
            }
            match read.read_buf(lines.read_target(READ_CHUNK)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
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
            kind: Default::default(),
            fd,
            nickname: "n".into(),
            openid: None,
            token: None,
            ticket: None,
            secret: None,
            resend: false,
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
            tasks.push(tokio::spawn(async move {
                (fd, c.notify(&req(fd), in_secs(1)).await)
            }));
        }
        for t in tasks {
            let (fd, r) = t.await.unwrap();
            if fd.is_multiple_of(2) {
                assert_eq!(r, Ok(PageInfo::default()));
            } else {
                assert_eq!(r, Err(NotifyError::Refused(BusError::NoSuchClient)));
            }
        }
    }

    #[tokio::test]
    async fn unreachable_then_recovers_without_restart() {
        // A port below the ephemeral range: no outgoing connection takes
        // it while nothing listens there.
        let port = daemon_kit::accept::free_test_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let client = BusClient::start(addr.clone(), Duration::from_secs(1));
        assert!(matches!(
            client.notify(&req(2), in_secs(1)).await,
            Err(NotifyError::Unreachable(_))
        ));
        let listener = TcpListener::bind(&addr).await.unwrap();
        tokio::spawn(fake_gateway(listener));
        // Within the backoff the client fails fast; after it, it reconnects.
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.notify(&req(2), in_secs(1)).await.is_err() {
            assert!(Instant::now() < deadline, "client did not reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        assert_eq!(
            client
                .notify(&req(2), Instant::now() + Duration::from_millis(200))
                .await,
            Err(NotifyError::Timeout)
        );
    }

    fn in_secs(n: u64) -> Instant {
        Instant::now() + Duration::from_secs(n)
    }

    /// A squatter on the bus port that answers with an endless line: the
    /// request fails, the client does not spin, and a real gateway that
    /// takes the port back is used again.
    #[tokio::test]
    async fn an_endless_answer_line_fails_the_request_and_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let squatter = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let junk = vec![b'x'; MAX_LINE_BYTES + 4096];
            let _ = s.write_all(&junk).await;
            // Keep the connection open, never sending a newline.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let client = BusClient::start(addr.to_string(), Duration::from_secs(1));
        // BadAnswer when the request was queued before the junk was read,
        // Unreachable when the reader had already given up; never the
        // deadline's Timeout.
        let r = client.notify(&req(2), in_secs(20)).await;
        assert!(
            matches!(
                r,
                Err(NotifyError::BadAnswer | NotifyError::Lost(_) | NotifyError::Unreachable(_))
            ),
            "{r:?}"
        );
        squatter.abort();
        let _ = squatter.await;
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(fake_gateway(listener));
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.notify(&req(2), in_secs(1)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "client did not recover after the squatter"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gateway that pauses longer than the old 1 s timeout but answers
    /// before the deadline: the answer decides.
    #[tokio::test]
    async fn a_late_answer_within_the_deadline_counts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if w.write_all(protocol::bus::OK_LINE).await.is_err() {
                    break;
                }
            }
        });
        let client = BusClient::start(addr, Duration::from_secs(1));
        assert_eq!(
            client.notify(&req(2), in_secs(4)).await,
            Ok(PageInfo::default())
        );
    }
}
