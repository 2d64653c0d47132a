//! Spawning the real binaries, for every test crate and the benchmarks:
//! free ports, waiting for `/healthz` or for a line in the log (a daemon
//! bound to port 0 logs its address), captured stderr, signals, running a
//! command to its end. This is the one place test and benchmark code
//! starts the daemons.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback port that is free now (see `daemon_kit::accept::free_test_port`).
pub fn free_port() -> u16 {
    daemon_kit::accept::free_test_port().expect("no free port")
}

/// Where the workspace's binaries are: `$SCAN_LOGIN_BIN_DIR`, else the
/// target directory this test binary was built into.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SCAN_LOGIN_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Daemon {
    /// Spawns `path` with `args` and extra `env`, capturing stderr;
    /// panics if it cannot be started.
    pub fn spawn(path: &std::path::Path, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(path);
        cmd.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::try_spawn_command(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()))
    }

    /// Spawns a prepared command (its program, arguments and environment
    /// as given; stdin and stdout are closed, stderr is captured).
    pub fn try_spawn_command(mut cmd: Command) -> std::io::Result<Daemon> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let name = std::path::Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Ok(Daemon {
            name,
            child: Some(child),
            stderr,
        })
    }

    /// Waits (at most `limit`) until `find` recognises something in the
    /// captured stderr, and returns it; panics with the log if the daemon
    /// exits first or the time runs out.
    pub async fn wait_for_log<T>(
        &mut self,
        limit: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = find(&self.stderr()) {
                return found;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("{} exited early ({status}):\n{}", self.name, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log what was awaited within {limit:?}:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `limit`) for the exit without blocking the runtime;
    /// panics with the log after `limit`.
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                // Let the stderr reader catch up with the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits (at most 20 s) until `GET url` answers 200; panics with the
    /// daemon's stderr otherwise.
    pub async fn wait_healthy(&mut self, url: &str) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited early ({status}):\n{}", self.name, self.stderr());
            }
            if let Ok(r) = client
                .get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} not healthy at {url} within 20 s:\n{}",
            self.name,
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(10))
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// The exit status, if the process has exited (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("already reaped");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a binary to completion (for `--help`, `--check-config`, CLI
/// subcommands) and returns (status, stdout, stderr).
pub fn run_to_end(
    path: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(path);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory unique to this test run.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "scan-login-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// [`run_to_end`] without blocking the async runtime (for a command that
/// talks to a server in the test's own process).
pub async fn run_to_end_async(
    path: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
