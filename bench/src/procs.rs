//! The daemons under test: finding the binaries, starting wechat-sim,
//! wechat-callback and ws-gateway on free loopback ports with benchmark
//! flags, waiting for `/healthz`, reading RSS and metrics, and stopping them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::cli::Common;
use crate::http;

/// App id, secret and callback token shared by the three daemons.
pub const APP_ID: &str = "wxbench";
pub const APP_SECRET: &str = "s";
pub const TOKEN: &str = "t";

/// How long a daemon may take to answer `/healthz`.
const HEALTH_LIMIT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Raises this process's open-file soft limit to the hard limit (children
/// inherit it, so call before spawning anything) and returns the limit now
/// in force.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// The open-file limit in force now.
pub fn nofile_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Where the binaries are and where daemons write their logs.
pub struct Env {
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub daemon_log: String,
    pub daemon_env: Vec<(String, String)>,
    pub keep_logs: bool,
    pub runs: usize,
    started: AtomicUsize,
}

impl Env {
    /// Resolves the binaries and makes a scratch directory.
    pub fn new(common: &Common) -> anyhow::Result<Env> {
        let bin_dir = match &common.bin_dir {
            Some(d) => d.clone(),
            None => default_bin_dir(),
        };
        for name in ["ws-gateway", "wechat-callback", "wechat-sim"] {
            let p = bin_dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found: build with `cargo build --release --workspace --bins` or pass --bin-dir",
                    p.display()
                );
            }
        }
        let work_dir = std::env::temp_dir().join(format!(
            "scan-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        let daemon_env = common
            .daemon_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--daemon-env {kv}: expected KEY=VALUE"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Env {
            bin_dir,
            work_dir,
            daemon_log: common.daemon_log.clone(),
            daemon_env,
            keep_logs: common.keep_logs,
            runs: common.runs(),
            started: AtomicUsize::new(0),
        })
    }

    /// The SHA-1 of each daemon binary, so figures can be tied to a build.
    pub fn binary_ids(&self) -> serde_json::Value {
        use sha1::{Digest, Sha1};
        let mut out = serde_json::Map::new();
        for name in ["ws-gateway", "wechat-callback", "wechat-sim"] {
            let id = std::fs::read(self.bin_dir.join(name))
                .map(|bytes| {
                    Sha1::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                })
                .unwrap_or_default();
            out.insert(name.to_string(), id.into());
        }
        out.into()
    }

    fn next_id(&self) -> usize {
        self.started.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes the scratch directory unless `--keep-logs`.
    pub fn cleanup(&self) {
        if self.keep_logs {
            eprintln!("daemon logs kept in {}", self.work_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        && dir.join("ws-gateway").is_file()
    {
        return dir;
    }
    PathBuf::from("target/release")
}

/// A loopback port that is free now (see `daemon_kit::accept::free_test_port`).
pub fn free_port() -> anyhow::Result<u16> {
    daemon_kit::accept::free_test_port().context("no free port")
}

/// A running daemon, started through the test kit's launcher
/// (`e2e::Daemon`, which captures its stderr); killed if dropped without
/// [`Daemon::stop`]. The log is written to the work dir when it stops, for
/// `--keep-logs`.
pub struct Daemon {
    pub name: &'static str,
    inner: Option<e2e::Daemon>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(env: &Env, name: &'static str, args: &[String]) -> anyhow::Result<Daemon> {
        let log = env.work_dir.join(format!("{name}-{}.log", env.next_id()));
        let mut cmd = Command::new(env.bin_dir.join(name));
        cmd.args(args)
            .env("RUST_LOG", &env.daemon_log)
            .envs(env.daemon_env.iter().map(|(k, v)| (k, v)));
        let inner =
            e2e::Daemon::try_spawn_command(cmd).with_context(|| format!("cannot start {name}"))?;
        Ok(Daemon {
            name,
            inner: Some(inner),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map(e2e::Daemon::pid).unwrap_or(0)
    }

    /// The last lines the daemon logged.
    pub fn log_tail(&self) -> String {
        let text = self
            .inner
            .as_ref()
            .map(e2e::Daemon::stderr)
            .unwrap_or_else(|| std::fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_healthy(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTH_LIMIT;
        loop {
            if let Some(status) = self.inner.as_mut().and_then(e2e::Daemon::try_wait) {
                bail!(
                    "{} exited early ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(Ok((status, _))) =
                tokio::time::timeout(Duration::from_millis(500), http::get(addr, "/healthz")).await
                && status.is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not healthy at {addr} within {HEALTH_LIMIT:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then waits; SIGKILL after [`STOP_LIMIT`].
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut inner) = self.inner.take() else {
            bail!("{} already stopped", self.name);
        };
        inner.signal("TERM");
        let deadline = Instant::now() + STOP_LIMIT;
        let outcome = loop {
            if let Some(status) = inner.try_wait() {
                break Ok(status);
            }
            if Instant::now() > deadline {
                inner.kill();
                break Err(anyhow::anyhow!(
                    "{} did not exit within {STOP_LIMIT:?} of SIGTERM",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader thread may still hold the last lines for a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = std::fs::write(&self.log, inner.stderr());
        outcome
    }
}

/// How to start the stack for one scenario.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// The gateway's --max-connections.
    pub max_connections: usize,
    /// The gateway's --qr-expire-seconds (its default when `None`).
    pub qr_expire_seconds: Option<u32>,
    /// EncodingAESKey for the callback (safe mode accepted when set).
    pub encoding_aes_key: Option<String>,
    /// The callback's `--db` (a fresh SQLite file when `None`).
    pub db: Option<String>,
    /// The gateway's `--qr-mint-rate` (0, no limit, when `None`).
    pub qr_mint_rate: Option<u32>,
}

/// The three daemons, wired to each other.
pub struct Stack {
    pub sim: Daemon,
    pub callback: Daemon,
    pub gateway: Daemon,
    pub sim_addr: SocketAddr,
    pub callback_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub notify_addr: SocketAddr,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Stack {
    /// Starts sim, gateway and callback and waits until each is healthy.
    pub async fn start(env: &Env, opts: &StackOptions) -> anyhow::Result<Stack> {
        let sim_addr = loopback(free_port()?);
        let callback_addr = loopback(free_port()?);
        let gateway_addr = loopback(free_port()?);
        let notify_addr = loopback(free_port()?);
        let sim_base = format!("http://{sim_addr}");

        let mut sim_flags = sim_args(sim_addr);
        sim_flags.extend(strings(&[
            "--callback-url",
            &format!("http://{callback_addr}/wechat"),
        ]));
        let mut sim = Daemon::spawn(env, "wechat-sim", &sim_flags)?;
        sim.wait_healthy(sim_addr).await?;

        let mut gw_args = gateway_args(
            gateway_addr,
            notify_addr,
            opts.max_connections,
            &sim_base,
            opts.qr_mint_rate.unwrap_or(0),
        );
        if let Some(s) = opts.qr_expire_seconds {
            gw_args.extend(strings(&["--qr-expire-seconds", &s.to_string()]));
        }
        let mut gateway = Daemon::spawn(env, "ws-gateway", &gw_args)?;
        gateway.wait_healthy(gateway_addr).await?;

        let db = match &opts.db {
            Some(url) => url.clone(),
            None => env
                .work_dir
                .join(format!("callback-{}.db", env.next_id()))
                .to_string_lossy()
                .into_owned(),
        };
        let mut cb_args = strings(&[
            "--listen",
            &callback_addr.to_string(),
            "--token",
            TOKEN,
            "--app-id",
            APP_ID,
            "--app-secret",
            APP_SECRET,
            "--wechat-api-base",
            &sim_base,
            "--notify-addr",
            &notify_addr.to_string(),
            "--db",
            &db,
        ]);
        if let Some(k) = &opts.encoding_aes_key {
            // Plain and safe logins against one callback: the console's
            // compatible mode (兼容) accepts both.
            cb_args.extend(strings(&[
                "--encoding-aes-key",
                k,
                "--message-mode",
                "compatible",
            ]));
        }
        let mut callback = Daemon::spawn(env, "wechat-callback", &cb_args)?;
        callback.wait_healthy(callback_addr).await?;

        Ok(Stack {
            sim,
            callback,
            gateway,
            sim_addr,
            callback_addr,
            gateway_addr,
            notify_addr,
        })
    }

    /// CPU time used so far by each process.
    pub fn cpu(&self) -> CpuSnapshot {
        let t = |pid: u32| cpu_time(pid).unwrap_or_default();
        CpuSnapshot {
            gateway: t(self.gateway.pid()),
            callback: t(self.callback.pid()),
            sim: t(self.sim.pid()),
            bench: t(std::process::id()),
        }
    }

    /// The gateway's resident set size in bytes.
    pub fn gateway_rss(&self) -> anyhow::Result<u64> {
        rss_bytes(self.gateway.pid())
    }

    /// A gauge or counter from the gateway's `/metrics` (the first sample
    /// whose name matches exactly, labels ignored).
    pub async fn gateway_metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let (status, body) = http::get(self.gateway_addr, "/metrics").await?;
        if !status.is_success() {
            bail!("gateway /metrics answered {status}");
        }
        Ok(metric_value(&String::from_utf8_lossy(&body), name))
    }

    /// SIGTERM to each daemon; a non-zero exit is returned as a warning.
    pub async fn stop(mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        for d in [&mut self.callback, &mut self.gateway, &mut self.sim] {
            match d.stop().await {
                Ok(s) if s.success() => {}
                Ok(s) => warnings.push(format!(
                    "{} exited with {s} after SIGTERM:\n{}",
                    d.name,
                    d.log_tail()
                )),
                Err(e) => warnings.push(format!("{e:#}")),
            }
        }
        warnings
    }
}

/// The simulator's flags: the benchmark account, room for every page's
/// connection.
fn sim_args(listen: SocketAddr) -> Vec<String> {
    strings(&[
        "--listen",
        &listen.to_string(),
        "--app-id",
        APP_ID,
        "--app-secret",
        APP_SECRET,
        "--token",
        TOKEN,
        "--max-connections",
        "30000",
    ])
}

/// A benchmark gateway's flags: the simulator's API, QR codes minted per
/// address per minute `mint_rate` (0: no limit).
fn gateway_args(
    listen: SocketAddr,
    notify: SocketAddr,
    max_connections: usize,
    sim_base: &str,
    mint_rate: u32,
) -> Vec<String> {
    strings(&[
        "--listen",
        &listen.to_string(),
        "--notify-listen",
        &notify.to_string(),
        "--qr-mint-rate",
        &mint_rate.to_string(),
        "--max-connections",
        &max_connections.max(1).to_string(),
        "--wechat-api-base",
        sim_base,
        "--app-id",
        APP_ID,
        "--app-secret",
        APP_SECRET,
    ])
}

/// One gateway node of [`Nodes`].
pub struct Node {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub notify: SocketAddr,
}

/// The simulator and `n` gateways with `--node-id 0..n` (no callback: the
/// `nodes` scenario writes bus lines itself).
pub struct Nodes {
    pub sim: Daemon,
    pub sim_addr: SocketAddr,
    pub gateways: Vec<Node>,
}

impl Nodes {
    pub async fn start(env: &Env, n: usize, max_connections: usize) -> anyhow::Result<Nodes> {
        let sim_addr = loopback(free_port()?);
        let sim_base = format!("http://{sim_addr}");
        let mut sim = Daemon::spawn(env, "wechat-sim", &sim_args(sim_addr))?;
        sim.wait_healthy(sim_addr).await?;
        let mut gateways = Vec::new();
        for node in 0..n {
            let addr = loopback(free_port()?);
            let notify = loopback(free_port()?);
            let mut args = gateway_args(addr, notify, max_connections, &sim_base, 0);
            args.extend(strings(&["--node-id", &node.to_string()]));
            let mut daemon = Daemon::spawn(env, "ws-gateway", &args)?;
            daemon.wait_healthy(addr).await?;
            gateways.push(Node {
                daemon,
                addr,
                notify,
            });
        }
        Ok(Nodes {
            sim,
            sim_addr,
            gateways,
        })
    }

    /// SIGTERM to each daemon; a non-zero exit is returned as a warning.
    pub async fn stop(mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let daemons = self
            .gateways
            .iter_mut()
            .map(|g| &mut g.daemon)
            .chain(std::iter::once(&mut self.sim));
        for d in daemons {
            match d.stop().await {
                Ok(s) if s.success() => {}
                Ok(s) => warnings.push(format!("{} exited with {s} after SIGTERM", d.name)),
                Err(e) => warnings.push(format!("{e:#}")),
            }
        }
        warnings
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// The first sample of `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if let Some(r) = rest.strip_prefix('{') {
            r.split_once('}')?.1
        } else {
            rest
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system, all threads) of `pid` so far, from
/// `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields 14 and 15 count
    // from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // After ")": state is index 0, utime (field 14) index 11, stime index 12.
    Ok(ticks_to_time(ticks(11) + ticks(12)))
}

/// Clock ticks (as `/proc` counts them) as time.
fn ticks_to_time(ticks: u64) -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// CPU time of each daemon and of this process, to attribute a phase's
/// CPU use.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    pub gateway: Duration,
    pub callback: Duration,
    pub sim: Duration,
    pub bench: Duration,
}

impl CpuSnapshot {
    /// CPU µs per operation spent by each process since `self`, for `ops`
    /// operations, into figures `<prefix>.cpu_us.<process>`.
    pub fn report_since(
        &self,
        stack: &Stack,
        ops: usize,
        prefix: &str,
        report: &mut crate::report::Report,
    ) {
        let now = stack.cpu();
        let ops = ops.max(1) as f64;
        let per = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() * 1e6 / ops;
        for (name, v) in [
            ("gateway", per(self.gateway, now.gateway)),
            ("callback", per(self.callback, now.callback)),
            ("sim", per(self.sim, now.sim)),
            ("bench", per(self.bench, now.bench)),
        ] {
            report.add(&format!("{prefix}.cpu_us.{name}"), "µs/op", v, None);
        }
    }
}

/// Busy CPU time of the whole machine (every process), from `/proc/stat`.
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|rest| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            [0, 1, 2, 5, 6, 7]
                .iter()
                .map(|&i| f.get(i).copied().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    ticks_to_time(ticks)
}

/// CPU time of this process plus its reaped children (the daemons and
/// workers, once stopped).
pub fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .filter_map(|w| getrusage(w).ok())
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .sum()
}

/// VmRSS of `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values() {
        let text = "# HELP a x\n# TYPE a gauge\na 5\na_total{result=\"ok\"} 7\nb{x=\"1\"} 2.5\n";
        assert_eq!(metric_value(text, "a"), Some(5.0));
        assert_eq!(metric_value(text, "a_total"), Some(7.0));
        assert_eq!(metric_value(text, "b"), Some(2.5));
        assert_eq!(metric_value(text, "c"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        // Spins until the reading grows (a tick is 10 ms), within a
        // minute of wall time however loaded the machine is.
        let t0 = cpu_time(std::process::id()).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while cpu_time(std::process::id()).unwrap() <= t0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "CPU time never grew"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
