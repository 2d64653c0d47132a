//! systemd `Type=notify` support: `READY=1` once listening, `STOPPING=1` on
//! shutdown, and `WATCHDOG=1` at half of `WATCHDOG_USEC`. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends one state string to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(cause = %e, "sd_notify failed");
    }
}

/// Tells systemd the daemon is ready (and starts the watchdog pings when
/// the unit has `WatchdogSec=`).
pub fn ready(shutdown: &CancellationToken) {
    notify("READY=1");
    if let Some(interval) = watchdog_interval() {
        notify("WATCHDOG=1");
        crate::shutdown::every(interval, shutdown, || async { notify("WATCHDOG=1") });
    }
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify("STOPPING=1");
}

/// Half the watchdog timeout, when systemd asked this process for pings.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
