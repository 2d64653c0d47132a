//! The TCP accept loop every listener here is built on (the HTTP server in
//! [`crate::http`], the gateway's notify bus): take a place first (`admit`,
//! e.g. a connection-cap permit), then accept, set `TCP_NODELAY`, and hand
//! the connection over; an accept error (EMFILE and friends) backs off
//! instead of spinning; the loop ends at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until `shutdown`. `admit` resolves to a place for the next
/// connection (`None` ends the loop); `handle` gets each connection with
/// its place and must not block (spawn the connection's task there).
pub async fn accept_loop<P, A, AF, H>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut admit: A,
    mut handle: H,
) where
    A: FnMut() -> AF,
    AF: Future<Output = Option<P>>,
    H: FnMut(TcpStream, SocketAddr, P),
{
    loop {
        let place = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = admit() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let (stream, peer) = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(x) => break x,
                    Err(e) => {
                        tracing::warn!(cause = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        };
        let _ = stream.set_nodelay(true);
        handle(stream, peer, place);
    }
}
