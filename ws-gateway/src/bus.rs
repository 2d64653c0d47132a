//! The notify bus on `--notify-listen`: raw TCP, newline-delimited JSON,
//! many lines per connection, one answer per line in order.
//!
//! Each connection is one task that reads whatever has arrived, answers
//! every complete line in it into one output buffer, and writes that
//! buffer with one call, so a pipelining client gets its answers in
//! batches (one read and one write per batch, not per line). A client may
//! half-close after its last line: the lines before EOF (and a final line
//! without a newline) are still answered, then the gateway closes its side.
//!
//! Checks per line, in order: longer than `MAX_LINE_BYTES` →
//! `line_too_long` and the connection is closed; `bad_json` /
//! `unknown_type`; `--notify-secret` (constant-time) → `unauthorized`;
//! `--notify-require-ticket` → `ticket_required`; fd lookup →
//! `no_such_client`; ticket → `ticket_mismatch`; a full push queue →
//! `client_busy`; else the push is queued and the answer is `ok`.

use std::sync::Arc;
use std::time::Duration;

use protocol::bus::{BusError, LineBuffer, LineRef, MAX_LINE_BYTES, OK_LINE, ScanNotify};
use protocol::ws::ServerFrame;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::Gateway;
use crate::metrics::{BUS_RESULTS, bus_index};

/// Most bus connections open at once (the callback keeps a few).
pub const MAX_BUS_CONNECTIONS: usize = 1024;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

/// After `line_too_long`, how long the rest of the client's data is read
/// and dropped so closing does not reset the connection before the client
/// has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// Accepts bus connections until shutdown, then waits (bounded) for the
/// open ones to answer what they have read.
pub(crate) async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_BUS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(cause = %e, "bus accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(
            connection(stream, Arc::clone(&gw), permit)
                .instrument(tracing::debug_span!("bus", %peer)),
        );
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(daemon_kit::shutdown::GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("bus connections still open after the grace period");
    }
}

async fn connection(mut stream: TcpStream, gw: Arc<Gateway>, _permit: OwnedSemaphorePermit) {
    gw.metrics.bus_connections.inc();
    debug!("bus client connected");
    match answer_lines(&mut stream, &gw).await {
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

async fn answer_lines(stream: &mut TcpStream, gw: &Gateway) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    // Lines are answered as slices of the read buffer: no copy, no shift
    // per line; consumed bytes are dropped once per read.
    let mut lines = LineBuffer::new(READ_CHUNK, MAX_LINE_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut tally = [0u64; BUS_RESULTS];
    let after = loop {
        let eof = tokio::select! {
            biased;
            // Lines already read have been answered; stop reading.
            _ = gw.shutdown.cancelled() => break After::Finish,
            n = rd.read_buf(lines.read_target(READ_CHUNK / 4)) => n? == 0,
        };
        let mut after = After::Continue;
        while let Some(line) = lines.next_line() {
            match line {
                LineRef::Complete(line) => record(answer(line, gw), &mut out, &mut tally),
                LineRef::TooLong => {
                    record(Err(BusError::LineTooLong), &mut out, &mut tally);
                    after = After::TooLong;
                    break;
                }
            }
        }
        if eof && after == After::Continue {
            // A last line without a newline before the half-close.
            if !lines.remainder().is_empty() {
                record(answer(lines.remainder(), gw), &mut out, &mut tally);
                lines.clear();
            }
            after = After::Finish;
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

fn record(result: Result<(), BusError>, out: &mut Vec<u8>, tally: &mut [u64; BUS_RESULTS]) {
    match result {
        Ok(()) => out.extend_from_slice(OK_LINE),
        Err(e) => out.extend_from_slice(e.answer_line()),
    }
    tally[bus_index(result)] += 1;
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
fn answer(line: &[u8], gw: &Gateway) -> Result<(), BusError> {
    let ScanNotify {
        fd,
        nickname,
        openid,
        token,
        ticket,
        secret,
    } = ScanNotify::parse(line)?;
    if let Some(expected) = &gw.settings.notify_secret {
        let given = secret.as_deref().unwrap_or("");
        let same: bool = given.as_bytes().ct_eq(expected.expose().as_bytes()).into();
        if secret.is_none() || !same {
            return Err(BusError::Unauthorized);
        }
    }
    if gw.settings.notify_require_ticket && ticket.is_none() {
        return Err(BusError::TicketRequired);
    }
    let frame = ServerFrame::ScanSuccess {
        user: nickname,
        openid: openid.unwrap_or_default(),
        token,
    };
    match gw.registry.push(fd, ticket.as_deref(), frame) {
        Err(BusError::NoSuchClient) if gw.shutdown.is_cancelled() => Err(BusError::ShuttingDown),
        other => other,
    }
}
