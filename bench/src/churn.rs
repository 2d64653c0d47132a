//! `churn`: many short visits (connect, wait for the QR code, close), with
//! bounded concurrency. Compares the gateway's settled RSS after all cycles
//! with its settled RSS after the warm-up: memory a visit leaves behind
//! shows up as a ratio above 1.
//!
//! A closed connection's fd stays tombstoned until its QR code expires, so
//! the gateway runs with a short `--qr-expire-seconds` here and "settled"
//! means no open connection and no tombstone left (from `/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use crate::cli::ChurnArgs;
use crate::procs::{Env, Stack, StackOptions, rss_bytes};
use crate::report::{Report, at_most};
use crate::ws_clients::{close, connect, source_ip};

/// The gateway's tombstone sweep period (ws-gateway's `SWEEP_INTERVAL`).
const SWEEP_PERIOD: Duration = Duration::from_secs(10);
/// How long past its code's expiry a closed fd stays reserved
/// (ws-gateway's `registry::TOMBSTONE_GRACE`).
const TOMBSTONE_GRACE: Duration = Duration::from_secs(30);

/// Resolved `churn` settings.
#[derive(Debug, Clone)]
pub struct ChurnParams {
    pub cycles: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub qr_expire_seconds: u32,
    pub settle_limit: Duration,
}

impl ChurnParams {
    pub fn new(args: &ChurnArgs, tiny: bool) -> ChurnParams {
        let cycles = args
            .churn_cycles
            .unwrap_or(if tiny { 500 } else { 100_000 });
        let qr_expire_seconds = args
            .churn_qr_expire_seconds
            .unwrap_or(if tiny { 1 } else { 10 })
            .max(1);
        ChurnParams {
            cycles,
            warmup: args
                .churn_warmup
                .unwrap_or(if tiny { 100 } else { 1_000 })
                .min(cycles),
            concurrency: args.churn_concurrency.max(1),
            qr_expire_seconds,
            settle_limit: if tiny {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(u64::from(qr_expire_seconds))
                    + TOMBSTONE_GRACE
                    + 2 * SWEEP_PERIOD
                    + Duration::from_secs(5)
            },
        }
    }
}

/// One phase's outcome.
struct Phase {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

pub async fn run(env: &Env, p: &ChurnParams, report: &mut Report) -> anyhow::Result<()> {
    report.param(
        "churn",
        json!({
            "cycles": p.cycles,
            "warmup_cycles": p.warmup,
            "concurrency": p.concurrency,
            "gateway_qr_expire_seconds": p.qr_expire_seconds,
            "settle_limit_secs": p.settle_limit.as_secs_f64(),
        }),
    );
    println!(
        "churn: {} cycles ({} warm-up), {} at once, gateway --qr-expire-seconds {}, {} run(s)",
        p.cycles, p.warmup, p.concurrency, p.qr_expire_seconds, env.runs
    );
    for run in 0..env.runs {
        let stack = Stack::start(
            env,
            &StackOptions {
                max_connections: p.concurrency + 64,
                qr_expire_seconds: Some(p.qr_expire_seconds),
                ..StackOptions::default()
            },
        )
        .await?;
        let result = measure(&stack, p, report, run).await;
        for w in stack.stop().await {
            report.note(w);
        }
        result?;
    }
    Ok(())
}

async fn measure(
    stack: &Stack,
    p: &ChurnParams,
    report: &mut Report,
    run: usize,
) -> anyhow::Result<()> {
    let warm = phase(stack, 0, p.warmup, p.concurrency).await;
    settle(stack, p, report, "after the warm-up").await;
    let baseline = stack.gateway_rss()?;

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (peak, pid) = (peak.clone(), stack.gateway.pid());
        tokio::spawn(async move {
            loop {
                if let Ok(r) = rss_bytes(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let cpu = stack.cpu();
    let main = phase(stack, p.warmup, p.cycles - p.warmup, p.concurrency).await;
    cpu.report_since(stack, main.ok + main.failed, "churn", report);
    sampler.abort();
    let peak_rss = peak.load(Ordering::Relaxed);
    settle(stack, p, report, "after the churn").await;
    let after = stack.gateway_rss()?;

    for (what, ph) in [("warm-up", &warm), ("churn", &main)] {
        if ph.failed > 0 {
            report.fail(format!(
                "churn {what}: {} of {} cycles failed (first: {})",
                ph.failed,
                ph.ok + ph.failed,
                ph.first_error.clone().unwrap_or_default()
            ));
        }
    }
    let ratio = after as f64 / baseline.max(1) as f64;
    let rate = main.ok as f64 / main.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  run {}: {:.0} cycles/s; RSS baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB: ratio {:.3}",
        run + 1,
        rate,
        mib(baseline),
        mib(peak_rss),
        mib(after),
        ratio
    );
    report.add("churn.rss_ratio", "after/baseline", ratio, at_most(1.10));
    report.add("churn.cycles_per_s", "cycles/s", rate, None);
    report.add("churn.rss_baseline", "MiB", mib(baseline), None);
    report.add("churn.rss_peak", "MiB", mib(peak_rss), None);
    report.add("churn.rss_after", "MiB", mib(after), None);
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Waits until the gateway has no open connection and no tombstone (at
/// most the settle limit), then a little longer.
async fn settle(stack: &Stack, p: &ChurnParams, report: &mut Report, when: &str) {
    let deadline = Instant::now() + p.settle_limit;
    loop {
        let open = stack
            .gateway_metric("ws_gateway_connections_open")
            .await
            .ok()
            .flatten();
        let tombs = stack
            .gateway_metric("ws_gateway_fd_tombstones")
            .await
            .ok()
            .flatten();
        if open == Some(0.0) && tombs == Some(0.0) {
            break;
        }
        if Instant::now() > deadline {
            report.note(format!(
                "churn: not settled {when} within {:?} (open {open:?}, tombstones {tombs:?})",
                p.settle_limit
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// `count` cycles, `concurrency` at once; cycle `i` comes from source
/// address `first + i`.
async fn phase(stack: &Stack, first: usize, count: usize, concurrency: usize) -> Phase {
    let gw = stack.gateway_addr;
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<(usize, Option<String>)>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (next, ok, errors) = (next.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let result = match connect(gw, source_ip(first + i)).await {
                    Ok((ws, _ticket)) => close(ws, Duration::from_secs(5)).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let mut er = errors.lock().await;
                        er.0 += 1;
                        if er.1.is_none() {
                            er.1 = Some(format!("{e:#}"));
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let (failed, first_error) = std::mem::take(&mut *errors.lock().await);
    Phase {
        ok: ok.load(Ordering::Relaxed),
        failed,
        first_error,
        elapsed,
    }
}
