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

/// A loopback port that is free now, for tests and benchmarks that must
/// name a daemon's port before starting it. Drawn at random below the
/// kernel's ephemeral range (`ip_local_port_range`), where no outgoing
/// connection takes it as a source port between this check and the
/// daemon's bind (a port from `bind(0)` comes from that very range, and a
/// busy test run opens thousands of client connections).
pub fn free_test_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        for _ in 0..64 {
            let port = 10_000 + rand_below(ephemeral_low - 10_000);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A random number below `n` (no rand dependency: a hash of the clock and
/// a counter is plenty to spread test ports).
fn rand_below(n: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % u64::from(n.max(1))) as u16
}
