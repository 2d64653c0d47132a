//! `idle`: hold N login pages open and measure what they cost the gateway
//! (RSS per connection) and how fast they open (connect, upgrade, QR code
//! minted at the simulator, `qrcode_url` received). Past what one process
//! may hold open, the connections are spread over `idle-client` worker
//! processes of this same binary.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::cli::{IdleArgs, IdleClientArgs};
use crate::procs::{self, Env, Stack, StackOptions};
use crate::report::{Report, at_least, at_most};
use crate::ws_clients::{Fleet, KeyBy, Recorder, open_fleet};

/// File descriptors a client process keeps for itself.
const CLIENT_FD_OVERHEAD: usize = 512;
/// File descriptors the gateway needs besides the connections (listeners,
/// log, connections to the simulator).
const GATEWAY_FD_OVERHEAD: usize = 300;

/// Resolved `idle` settings.
#[derive(Debug, Clone)]
pub struct IdleParams {
    pub connections: usize,
    pub open_concurrency: usize,
    pub settle: Duration,
    pub client_procs: Option<usize>,
}

impl IdleParams {
    pub fn new(args: &IdleArgs, tiny: bool) -> IdleParams {
        IdleParams {
            connections: args
                .idle_connections
                .unwrap_or(if tiny { 200 } else { 19_000 }),
            open_concurrency: args.open_concurrency.max(1),
            settle: Duration::from_secs_f64(
                args.settle_secs
                    .filter(|s| s.is_finite())
                    .unwrap_or(if tiny { 0.5 } else { 2.0 })
                    .clamp(0.0, 3600.0),
            ),
            client_procs: args.client_procs,
        }
    }
}

/// What one worker (or the in-process opener) reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Opened {
    pub(crate) opened: usize,
    pub(crate) failed: usize,
    first_connect_ns: u64,
    last_qr_ns: u64,
    pub(crate) error: Option<String>,
}

impl Opened {
    pub(crate) fn from_fleet(f: &Fleet) -> Opened {
        Opened {
            opened: f.conns.len(),
            failed: f.failures,
            first_connect_ns: f.first_connect_ns,
            last_qr_ns: f.last_qr_ns,
            error: f.first_error.clone(),
        }
    }

    pub(crate) fn merge(&mut self, o: Opened) {
        self.opened += o.opened;
        self.failed += o.failed;
        self.first_connect_ns = if self.first_connect_ns == 0 {
            o.first_connect_ns
        } else {
            self.first_connect_ns.min(o.first_connect_ns)
        };
        self.last_qr_ns = self.last_qr_ns.max(o.last_qr_ns);
        if self.error.is_none() {
            self.error = o.error;
        }
    }
}

/// Connections held until dropped.
pub(crate) enum Holder {
    InProcess(Fleet),
    Workers(Vec<Worker>),
}

impl Holder {
    pub(crate) async fn close(self) {
        match self {
            Holder::InProcess(f) => f.close().await,
            Holder::Workers(ws) => {
                for mut w in ws {
                    let _ = w.stdin.write_all(b"close\n").await;
                    drop(w.stdin);
                    let _ = tokio::time::timeout(Duration::from_secs(20), w.child.wait()).await;
                    let _ = w.child.kill().await;
                }
            }
        }
    }
}

pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

pub async fn run(env: &Env, p: &IdleParams, report: &mut Report) -> anyhow::Result<()> {
    let limit = usize::try_from(procs::nofile_limit()).unwrap_or(usize::MAX);
    let mut n = p.connections.max(1);
    let gateway_max = limit.saturating_sub(GATEWAY_FD_OVERHEAD + p.open_concurrency);
    if n > gateway_max {
        report.note(format!(
            "idle: {n} connections do not fit the open-file limit {limit} of one gateway; measuring {gateway_max}"
        ));
        n = gateway_max.max(1);
    }
    let per_proc = limit.saturating_sub(CLIENT_FD_OVERHEAD).max(1);
    let procs_needed = n.div_ceil(per_proc);
    let client_procs = p.client_procs.unwrap_or(procs_needed).max(procs_needed);
    report.param(
        "idle",
        json!({
            "connections": n,
            "open_concurrency": p.open_concurrency,
            "settle_secs": p.settle.as_secs_f64(),
            "client_procs": client_procs,
        }),
    );
    println!(
        "idle: {n} connections from {client_procs} client process(es), {} opening at once, {} run(s)",
        p.open_concurrency, env.runs
    );
    for run in 0..env.runs {
        let stack = Stack::start(
            env,
            &StackOptions {
                max_connections: n + 64,
                ..StackOptions::default()
            },
        )
        .await?;
        let result = measure(&stack, n, client_procs, p, report).await;
        for w in stack.stop().await {
            report.note(w);
        }
        let (rss_per_conn, rate) = result?;
        println!(
            "  run {}: {:.0} B/connection, {:.0} connections/s",
            run + 1,
            rss_per_conn,
            rate
        );
    }
    Ok(())
}

async fn measure(
    stack: &Stack,
    n: usize,
    client_procs: usize,
    p: &IdleParams,
    report: &mut Report,
) -> anyhow::Result<(f64, f64)> {
    let gw = stack.gateway_addr;
    // Warm-up: the first connections pay for the access token, the HTTP
    // client pool and the runtime's threads; they are not the per-connection
    // cost.
    let warm = open_fleet(gw, 16, 16, 0, Recorder::new(0), KeyBy::Nothing).await;
    if warm.conns.is_empty() {
        bail!(
            "idle warm-up: no connection got a QR code: {}",
            warm.first_error.unwrap_or_default()
        );
    }
    warm.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stack.gateway_rss()?;
    let cpu = stack.cpu();

    let (opened, holder) = if client_procs <= 1 {
        let fleet = open_fleet(
            gw,
            n,
            p.open_concurrency,
            0,
            Recorder::new(0),
            KeyBy::Nothing,
        )
        .await;
        (Opened::from_fleet(&fleet), Holder::InProcess(fleet))
    } else {
        open_in_workers(gw, n, client_procs, p.open_concurrency).await?
    };
    cpu.report_since(stack, opened.opened, "idle.open", report);
    tokio::time::sleep(p.settle).await;
    let after = stack.gateway_rss()?;
    let open_gauge = stack
        .gateway_metric("ws_gateway_connections_open")
        .await
        .ok()
        .flatten();
    holder.close().await;

    if opened.failed > 0 {
        report.fail(format!(
            "idle: {} of {n} connections got no QR code (first error: {})",
            opened.failed,
            opened.error.clone().unwrap_or_default()
        ));
    }
    if let Some(g) = open_gauge
        && (g as usize) < opened.opened
    {
        report.fail(format!(
            "idle: the gateway reports {g} open connections, {} were opened",
            opened.opened
        ));
    }
    let count = opened.opened.max(1) as f64;
    let rss_per_conn = (after as f64 - before as f64) / count;
    let secs = opened.last_qr_ns.saturating_sub(opened.first_connect_ns) as f64 / 1e9;
    let rate = if secs > 0.0 { count / secs } else { f64::NAN };
    report.add("idle.rss_per_conn", "B", rss_per_conn, at_most(2048.0));
    report.add("idle.open_rate", "conn/s", rate, at_least(10_000.0));
    report.add(
        "idle.gateway_rss_before",
        "MiB",
        before as f64 / 1048576.0,
        None,
    );
    report.add(
        "idle.gateway_rss_after",
        "MiB",
        after as f64 / 1048576.0,
        None,
    );
    Ok((rss_per_conn, rate))
}

pub(crate) async fn open_in_workers(
    gw: std::net::SocketAddr,
    n: usize,
    procs: usize,
    concurrency: usize,
) -> anyhow::Result<(Opened, Holder)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let per = n.div_ceil(procs);
    let mut workers = Vec::new();
    let mut first = 0;
    while first < n {
        let count = per.min(n - first);
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "idle-client",
                "--gateway",
                &gw.to_string(),
                "--count",
                &count.to_string(),
                "--concurrency",
                &concurrency.div_ceil(procs).max(1).to_string(),
                "--first-index",
                &first.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start an idle-client worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let mut w = Worker {
            child,
            stdin,
            stdout,
        };
        let ready = w.stdout.next_line().await?;
        if ready.as_deref() != Some("ready") {
            bail!("idle-client worker did not start: {ready:?}");
        }
        workers.push(w);
        first += count;
    }
    for w in &mut workers {
        w.stdin.write_all(b"go\n").await?;
        w.stdin.flush().await?;
    }
    let mut total = Opened::default();
    for w in &mut workers {
        let line = w
            .stdout
            .next_line()
            .await?
            .context("idle-client worker exited before reporting")?;
        total.merge(serde_json::from_str(&line).context("idle-client report")?);
    }
    Ok((total, Holder::Workers(workers)))
}

/// The `idle-client` worker: waits for `go`, opens its connections,
/// reports, and holds them until `close` or end of input.
pub async fn client(args: &IdleClientArgs) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    match stdin.next_line().await? {
        Some(l) if l.trim() == "go" => {}
        other => bail!("expected `go`, got {other:?}"),
    }
    let recorder: Arc<Recorder> = Recorder::new(0);
    let fleet = open_fleet(
        args.gateway,
        args.count,
        args.concurrency,
        args.first_index,
        recorder,
        KeyBy::Nothing,
    )
    .await;
    let line = serde_json::to_string(&Opened::from_fleet(&fleet))?;
    stdout.write_all(line.as_bytes()).await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    while let Some(l) = stdin.next_line().await? {
        if l.trim() == "close" {
            break;
        }
    }
    fleet.close().await;
    Ok(())
}
