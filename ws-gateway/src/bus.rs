//! The notify bus on `--notify-listen`: raw TCP, newline-delimited JSON,
//! many lines per connection, one answer per line in order.
//!
//! Each connection is one task that reads whatever has arrived, checks
//! every complete line in it, and writes the batch's answers with one call,
//! so a pipelining client gets its answers in batches. A push is answered
//! `ok` only once its connection task has written the frame to the page's
//! socket (the registry's delivery receipt); a page that went away first
//! is answered `no_such_client`. A client may half-close after its last
//! line: the lines before EOF (and a final line without a newline) are
//! still answered, then the gateway closes its side.
//!
//! Checks per line, in order: longer than `MAX_LINE_BYTES` →
//! `line_too_long` and the connection is closed; `bad_json` /
//! `unknown_type`; `--notify-secret` (constant-time) → `unauthorized`, and
//! the connection is closed; `--notify-require-ticket` →
//! `ticket_required`; fd lookup → `no_such_client`; ticket →
//! `ticket_mismatch`; a full push queue → `client_busy`; else the push is
//! queued and answered once written.
//!
//! Hostile clients: a connection that sends no complete line for
//! `--notify-idle-timeout-seconds` is closed (bytes without a newline are
//! not activity), and at [`MAX_BUS_CONNECTIONS`] a new connection does not
//! wait: the longest-idle one is closed to make room ([`Conns`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::bus::{
    BusError, LineBuffer, LineRef, MAX_LINE_BYTES, NotifyKind, OK_LINE, ScanNotify,
};
use protocol::ws::ServerFrame;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::Gateway;
use crate::delivery::Delivered;
use crate::metrics::{BUS_RESULTS, bus_index};
use crate::registry::Pushed;

/// Most bus connections open at once (the callback keeps a few); at the
/// cap the longest-idle one is closed for a new one.
pub const MAX_BUS_CONNECTIONS: usize = 1024;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

/// After `line_too_long`, how long the rest of the client's data is read
/// and dropped so closing does not reset the connection before the client
/// has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// The open bus connections: when each last sent a complete line, and how
/// to close it.
#[derive(Default)]
pub(crate) struct Conns {
    map: Mutex<HashMap<u64, (Instant, CancellationToken)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Conns {
    /// Registers a new connection; at the cap, closes the longest-idle one
    /// first (returns whether it did).
    fn admit(&self, now: Instant, cap: usize) -> (u64, CancellationToken, bool) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut evicted = false;
        if map.len() >= cap
            && let Some((&oldest, _)) = map.iter().min_by_key(|(_, (last, _))| *last)
            && let Some((_, victim)) = map.remove(&oldest)
        {
            victim.cancel();
            evicted = true;
        }
        map.insert(id, (now, token.clone()));
        (id, token, evicted)
    }

    fn active(&self, id: u64, now: Instant) {
        if let Some(e) = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
        {
            e.0 = now;
        }
    }

    fn leave(&self, id: u64) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Accepts bus connections until shutdown, then waits (bounded) for the
/// open ones to answer what they have read.
pub(crate) async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let tracker = TaskTracker::new();
    let conns = Arc::new(Conns::default());
    // No waiting for a place: at the cap the longest-idle connection goes.
    let admit = || std::future::ready(Some(()));
    daemon_kit::accept::accept_loop(&listener, &gw.shutdown, admit, |stream, peer, ()| {
        let (id, closing, evicted) = conns.admit(Instant::now(), MAX_BUS_CONNECTIONS);
        if evicted {
            gw.metrics.bus_evicted.inc();
            warn!("notify bus full: closed the longest-idle connection");
        }
        let gw2 = Arc::clone(&gw);
        let conns2 = Arc::clone(&conns);
        tracker.spawn(
            async move {
                connection(stream, &gw2, &conns2, id, closing).await;
                conns2.leave(id);
            }
            .instrument(tracing::debug_span!("bus", %peer)),
        );
    })
    .await;
    drop(listener);
    tracker.close();
    if tokio::time::timeout(daemon_kit::shutdown::GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("bus connections still open after the grace period");
    }
}

async fn connection(
    mut stream: TcpStream,
    gw: &Gateway,
    conns: &Conns,
    id: u64,
    closing: CancellationToken,
) {
    gw.metrics.bus_connections.inc();
    debug!("bus client connected");
    match answer_lines(&mut stream, gw, conns, id, &closing).await {
        Ok(()) => debug!("bus client done"),
        Err(e) => debug!(cause = %e, "bus connection ended"),
    }
    gw.metrics.bus_connections.dec();
}

/// What to do after a batch.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    /// EOF, or shutdown: answers written, close.
    Finish,
    /// A line was too long: answer written, drain briefly, close.
    TooLong,
}

/// One line's answer: known at once, or once the page has the frame.
enum Outcome {
    Now(Result<(), BusError>),
    Delivery(Delivery),
}

/// A push waiting for its page, with what the log line says about it.
struct Delivery {
    kind: NotifyKind,
    fd: u32,
    openid: Option<String>,
    pushed: Pushed,
    since: Instant,
}

async fn answer_lines(
    stream: &mut TcpStream,
    gw: &Gateway,
    conns: &Conns,
    id: u64,
    closing: &CancellationToken,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    // Lines are checked as slices of the read buffer: no copy, no shift
    // per line; consumed bytes are dropped once per read.
    let mut lines = LineBuffer::new(READ_CHUNK, MAX_LINE_BYTES);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut tally = [0u64; BUS_RESULTS];
    let idle = gw.settings.notify_idle_timeout;
    let mut idle_at = Instant::now() + idle;
    let after = loop {
        let eof = tokio::select! {
            biased;
            // Lines already read have been answered; stop reading.
            _ = gw.shutdown.cancelled() => break After::Finish,
            _ = closing.cancelled() => {
                // Counted as evicted by the accept loop.
                debug!("bus connection evicted to make room");
                break After::Finish;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                gw.metrics.bus_idle_closed.inc();
                debug!("bus connection idle; closing");
                break After::Finish;
            }
            n = rd.read_buf(lines.read_target(READ_CHUNK / 4)) => n? == 0,
        };
        let mut after = After::Continue;
        let mut complete = 0usize;
        while let Some(line) = lines.next_line() {
            match line {
                LineRef::Complete(line) => {
                    complete += 1;
                    let outcome = answer(line, gw);
                    let unauthorized = matches!(outcome, Outcome::Now(Err(BusError::Unauthorized)));
                    outcomes.push(outcome);
                    if unauthorized {
                        after = After::Finish;
                        break;
                    }
                }
                LineRef::TooLong => {
                    outcomes.push(Outcome::Now(Err(BusError::LineTooLong)));
                    after = After::TooLong;
                    break;
                }
            }
        }
        if eof && after == After::Continue {
            // A last line without a newline before the half-close.
            if !lines.remainder().is_empty() {
                complete += 1;
                outcomes.push(answer(lines.remainder(), gw));
                lines.clear();
            }
            after = After::Finish;
        }
        if complete > 0 {
            let now = Instant::now();
            idle_at = now + idle;
            conns.active(id, now);
        }
        // Every push of the batch gets the same patience, so a batch waits
        // `delivery::PATIENCE` at most however many slow pages it holds.
        let deadline = Instant::now() + crate::delivery::PATIENCE;
        for outcome in outcomes.drain(..) {
            let waited = matches!(outcome, Outcome::Delivery(_));
            let (line, result) = settle(outcome, gw, deadline).await;
            out.extend_from_slice(&line);
            tally[bus_index(result)] += 1;
            if waited {
                // A push's answer goes out as soon as its page has the
                // frame: the fewer answers wait in this buffer, the fewer
                // a crash can lose after their pages were written.
                wr.write_all(&out).await?;
                out.clear();
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        flush_tally(gw, &mut tally);
        if after != After::Continue {
            break after;
        }
    };
    wr.shutdown().await?;
    if after == After::TooLong {
        // Read (and drop) what the client is still sending, so closing
        // with unread data does not reset the connection under the answer.
        let mut sink = vec![0u8; 8192];
        let mut drained = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while drained < LINGER_BYTES {
                match rd.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
    Ok(())
}

/// The answer line for one outcome, waiting for its delivery if needed.
async fn settle(
    outcome: Outcome,
    gw: &Gateway,
    deadline: Instant,
) -> (std::borrow::Cow<'static, [u8]>, Result<(), BusError>) {
    use std::borrow::Cow;
    let d = match outcome {
        Outcome::Now(Ok(())) => return (Cow::Borrowed(OK_LINE), Ok(())),
        Outcome::Now(Err(e)) => return (Cow::Borrowed(e.answer_line()), Err(e)),
        Outcome::Delivery(d) => d,
    };
    let (kind, pushed) = (d.kind, d.pushed);
    let delivered = pushed.verdict.wait(deadline).await;
    tracing::info!(
        fd = d.fd,
        openid = d.openid.as_deref().unwrap_or(""),
        kind = kind.name(),
        outcome = ?delivered,
        ms = d.since.elapsed().as_millis() as u64,
        "push"
    );
    let e = match delivered {
        Delivered::Written => {
            return match (kind, pushed.page) {
                (NotifyKind::Scanned, Some(page)) => (Cow::Owned(page.to_vec()), Ok(())),
                _ => (Cow::Borrowed(OK_LINE), Ok(())),
            };
        }
        Delivered::Gone if gw.shutdown.is_cancelled() => BusError::ShuttingDown,
        Delivered::Gone => BusError::NoSuchClient,
        Delivered::TooSlow => BusError::ClientBusy,
    };
    (Cow::Borrowed(e.answer_line()), Err(e))
}

fn flush_tally(gw: &Gateway, tally: &mut [u64; BUS_RESULTS]) {
    for (counter, n) in gw.metrics.bus_lines.iter().zip(tally.iter_mut()) {
        if *n > 0 {
            counter.add(*n);
            *n = 0;
        }
    }
}

/// Checks one request line and queues its push.
fn answer(line: &[u8], gw: &Gateway) -> Outcome {
    let ScanNotify {
        kind,
        fd,
        nickname,
        openid,
        token,
        ticket,
        secret,
        resend,
    } = match ScanNotify::parse(line) {
        Ok(n) => n,
        Err(e) => return Outcome::Now(Err(e)),
    };
    if let Some(expected) = &gw.settings.notify_secret {
        let given = secret.as_deref().unwrap_or("");
        let same: bool = given.as_bytes().ct_eq(expected.expose().as_bytes()).into();
        if secret.is_none() || !same {
            return Outcome::Now(Err(BusError::Unauthorized));
        }
    }
    if gw.settings.notify_require_ticket && ticket.is_none() {
        return Outcome::Now(Err(BusError::TicketRequired));
    }
    let logged_openid = openid.clone();
    let frame = match kind {
        NotifyKind::Scan => ServerFrame::ScanSuccess {
            user: nickname,
            openid: openid.unwrap_or_default(),
            token,
        },
        NotifyKind::Scanned => ServerFrame::Scanned { user: nickname },
    };
    // Not a login fd at all (a scene below 2^20, another layout): no page.
    let Some(page_fd) = protocol::fd::Fd::from_scene(fd) else {
        return Outcome::Now(Err(BusError::NoSuchClient));
    };
    match gw.registry.push(page_fd, ticket.as_deref(), resend, frame) {
        Ok(pushed) => Outcome::Delivery(Delivery {
            kind,
            fd,
            openid: logged_openid,
            pushed,
            since: Instant::now(),
        }),
        Err(BusError::NoSuchClient) if gw.shutdown.is_cancelled() => {
            Outcome::Now(Err(BusError::ShuttingDown))
        }
        Err(e) => Outcome::Now(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line read before shutdown, for a page that shutdown then closed,
    /// is answered `shutting_down` (the callback tells the user to scan
    /// again), not `no_such_client`. Unit-tested: through real processes
    /// the window between reading the line and the page closing is too
    /// short to hit on purpose.
    #[test]
    fn a_line_for_a_page_gone_in_shutdown_is_shutting_down() {
        let gw = crate::test_gateway();
        let line = br#"{"type":"scan","fd":1048576,"nickname":"A"}"#;
        let error = |o: Outcome| match o {
            Outcome::Now(Err(e)) => e.answer_line(),
            Outcome::Now(Ok(())) => panic!("answered ok"),
            Outcome::Delivery(_) => panic!("queued a push for no page"),
        };
        assert_eq!(
            error(answer(line, &gw)),
            BusError::NoSuchClient.answer_line()
        );
        gw.shutdown.cancel();
        let during = error(answer(line, &gw));
        assert_eq!(during, BusError::ShuttingDown.answer_line());
        let text = std::str::from_utf8(during).unwrap();
        assert!(text.contains(r#""error":"shutting_down""#), "{text}");
    }
}
