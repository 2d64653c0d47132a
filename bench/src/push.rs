//! `push`: NDJSON scan lines on the notify bus to C connected pages, over
//! one or several persistent bus connections with a cap on unanswered
//! lines, unpaced and paced. Latency runs from writing a line to its
//! `scan_success` frame arriving at the addressed WebSocket.
//!
//! Lines carry no `ticket` (a ticket is spent by its push; ticketless lines
//! spend nothing), so every page can take any number of pushes. Each line's
//! nickname is `b<run>-<seq>`, which the page's reader uses to stamp it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cli::{InFlightUntil, PushArgs};
use crate::procs::{Env, Stack, StackOptions};
use crate::report::{Report, Target, at_least, at_most};
use crate::stats::{Latency, stamped};
use crate::ws_clients::{KeyBy, Recorder, lookup_fds, open_fleet};

/// How long pushes may keep arriving after the bus answered the last line.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Resolved `push` settings.
#[derive(Debug, Clone)]
pub struct PushParams {
    pub connections: usize,
    pub lines: usize,
    pub in_flight: usize,
    pub until: InFlightUntil,
    pub bus_conns: Vec<usize>,
    pub paced_rate: f64,
    pub paced_lines: usize,
    pub warmup_lines: usize,
    pub abusers: usize,
}

impl PushParams {
    pub fn new(args: &PushArgs, tiny: bool) -> PushParams {
        let lines = args
            .push_lines
            .unwrap_or(if tiny { 2_000 } else { 200_000 })
            .max(1);
        let in_flight = args.in_flight.max(1);
        let max_bus = args.bus_conns.iter().copied().max().unwrap_or(1).max(1);
        // Every line in flight must address its own page: the gateway
        // queues at most a few pushes per page and refuses the rest.
        let connections = args
            .push_connections
            .unwrap_or(if tiny { 100 } else { 1_000 })
            .max(in_flight * max_bus);
        PushParams {
            connections,
            lines,
            in_flight,
            until: args.in_flight_until,
            bus_conns: args.bus_conns.iter().copied().filter(|&b| b > 0).collect(),
            paced_rate: args.paced_rate,
            paced_lines: args.paced_lines.unwrap_or(if tiny { 500 } else { 20_000 }),
            warmup_lines: (lines / 20).clamp(100, 5_000),
            abusers: args.abusers.unwrap_or(if tiny { 4 } else { 20 }),
        }
    }
}

/// One push run's outcome.
#[derive(Debug, Clone)]
pub struct PushResult {
    pub delivered: usize,
    /// Lines the gateway refused with `client_busy` (a page's queue full).
    pub busy: usize,
    pub latency: Latency,
    pub answer_latency: Latency,
    pub lines_per_s: f64,
}

/// A bus connection's answers.
#[derive(Debug, Default)]
struct Answers {
    ok: usize,
    busy: usize,
    refused: usize,
    first_refusal: Option<String>,
}

pub async fn run(env: &Env, p: &PushParams, report: &mut Report) -> anyhow::Result<()> {
    report.param(
        "push",
        json!({
            "connections": p.connections,
            "lines": p.lines,
            "in_flight_per_bus_connection": p.in_flight,
            "in_flight_until": match p.until {
                InFlightUntil::Delivery => "delivery",
                InFlightUntil::Answer => "answer",
            },
            "bus_conns": p.bus_conns,
            "paced_rate": p.paced_rate,
            "paced_lines": p.paced_lines,
            "warmup_lines": p.warmup_lines,
            "abusers": p.abusers,
        }),
    );
    let stack = Stack::start(
        env,
        &StackOptions {
            max_connections: p.connections + 3 * p.abusers + 64,
            // With abusers, the production per-address mint limit: each
            // page has an address of its own, the flooders do not.
            qr_mint_rate: (p.abusers > 0).then_some(120),
            ..StackOptions::default()
        },
    )
    .await?;
    let result = measure(env, &stack, p, report).await;
    for w in stack.stop().await {
        report.note(w);
    }
    result
}

async fn measure(
    env: &Env,
    stack: &Stack,
    p: &PushParams,
    report: &mut Report,
) -> anyhow::Result<()> {
    let slots = p.lines.max(p.paced_lines).max(p.warmup_lines);
    let recorder = Recorder::new(slots);
    let fleet = open_fleet(
        stack.gateway_addr,
        p.connections,
        128,
        0,
        recorder.clone(),
        KeyBy::Nickname,
    )
    .await;
    if fleet.failures > 0 {
        report.fail(format!(
            "push: {} of {} connections got no QR code (first error: {})",
            fleet.failures,
            p.connections,
            fleet.first_error.clone().unwrap_or_default()
        ));
    }
    if fleet.conns.is_empty() {
        bail!("push: no connection could be opened");
    }
    let tickets = fleet.conns.iter().map(|c| c.ticket.clone()).collect();
    let fds = Arc::new(lookup_fds(stack.sim_addr, tickets, 16).await?);
    println!(
        "push: {} pages, {} in flight per bus connection, {} run(s) per variant",
        fds.len(),
        p.in_flight,
        env.runs
    );

    let mut run_id = 0u32;
    let mut once = |lines: usize, bus: usize, pace: Option<f64>| {
        run_id += 1;
        push_once(
            stack.notify_addr,
            recorder.clone(),
            fds.clone(),
            run_id,
            lines,
            bus,
            p.in_flight,
            p.until,
            pace,
        )
    };
    once(p.warmup_lines, 1, None).await?;

    let mut variants: Vec<(String, usize, Option<f64>, usize)> = p
        .bus_conns
        .iter()
        .map(|&b| (format!("push.unpaced_{b}bus"), b, None, p.lines))
        .collect();
    if p.paced_lines > 0 && p.paced_rate > 0.0 {
        variants.push((
            format!("push.paced_{}", p.paced_rate),
            1,
            Some(p.paced_rate),
            p.paced_lines,
        ));
    }
    for (label, bus, pace, lines) in variants {
        for run in 0..env.runs {
            let cpu = stack.cpu();
            let r = once(lines, bus, pace).await?;
            cpu.report_since(stack, lines, &label, report);
            println!(
                "  {label} run {}: {:.0} lines/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs (bus answer p99 {:.0} µs)",
                run + 1,
                r.lines_per_s,
                r.latency.p50,
                r.latency.p99,
                r.latency.p999,
                r.latency.max,
                r.answer_latency.p99
            );
            if r.delivered + r.busy < lines {
                report.fail(format!(
                    "{label}: only {} of {} accepted pushes reached their page",
                    r.delivered,
                    lines - r.busy
                ));
            }
            if r.busy > 0 {
                let what = format!(
                    "{label}: the gateway refused {} of {lines} lines with client_busy (pages fell behind the bus)",
                    r.busy
                );
                match p.until {
                    InFlightUntil::Delivery => report.fail(what),
                    InFlightUntil::Answer => report.note(what),
                }
            }
            let rate_target: Option<Target> = if pace.is_none() && bus == 1 {
                at_least(150_000.0)
            } else {
                None
            };
            let p99_target = if pace.is_some() { at_most(300.0) } else { None };
            report.add(
                &format!("{label}.lines_per_s"),
                "lines/s",
                r.lines_per_s,
                rate_target,
            );
            report.add(&format!("{label}.p50"), "µs", r.latency.p50, None);
            report.add(&format!("{label}.p90"), "µs", r.latency.p90, None);
            report.add(&format!("{label}.p99"), "µs", r.latency.p99, p99_target);
            report.add(&format!("{label}.p99.9"), "µs", r.latency.p999, None);
            report.add(&format!("{label}.max"), "µs", r.latency.max, None);
            report.add(
                &format!("{label}.bus_answer_p99"),
                "µs",
                r.answer_latency.p99,
                None,
            );
            report.add(
                &format!("{label}.client_busy"),
                "lines",
                r.busy as f64,
                None,
            );
        }
    }
    if p.abusers > 0 && p.paced_lines > 0 && p.paced_rate > 0.0 {
        let label = format!("push.paced_{}.under_abuse", p.paced_rate);
        let abuse = Abuse::start(stack.gateway_addr, p.abusers);
        // Let the abusers get going before the pushes start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for run in 0..env.runs {
            let r = once(p.paced_lines, 1, Some(p.paced_rate)).await?;
            println!(
                "  {label} run {}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} flooder connections cut off so far)",
                run + 1,
                r.latency.p50,
                r.latency.p99,
                r.latency.max,
                abuse.cut_off.load(Ordering::Relaxed)
            );
            if r.delivered < p.paced_lines {
                report.fail(format!(
                    "{label}: only {} of {} pushes reached their page",
                    r.delivered, p.paced_lines
                ));
            }
            report.add(&format!("{label}.p50"), "µs", r.latency.p50, None);
            report.add(&format!("{label}.p99"), "µs", r.latency.p99, at_most(300.0));
            report.add(&format!("{label}.max"), "µs", r.latency.max, None);
        }
        report.add(
            &format!("{label}.flooders_cut_off"),
            "connections",
            abuse.cut_off.load(Ordering::Relaxed) as f64,
            None,
        );
        abuse.stop();
    }
    if recorder.unexpected.load(Ordering::Relaxed) > 0 {
        report.fail(format!(
            "push: {} unexpected frames at the pages (first: {})",
            recorder.unexpected.load(Ordering::Relaxed),
            recorder.unexpected_sample().unwrap_or_default()
        ));
    }
    fleet.close().await;
    Ok(())
}

/// Sends `lines` pushes (line `seq` to page `seq % pages`) over `bus`
/// connections; with `pace`, line `seq` is due `seq / pace` seconds after
/// the start.
#[allow(clippy::too_many_arguments)]
pub async fn push_once(
    notify: SocketAddr,
    recorder: Arc<Recorder>,
    fds: Arc<Vec<u32>>,
    run_id: u32,
    lines: usize,
    bus: usize,
    in_flight: usize,
    until: InFlightUntil,
    pace: Option<f64>,
) -> anyhow::Result<PushResult> {
    recorder.reset(run_id);
    let bus = bus.max(1);
    let permits: Vec<Arc<Semaphore>> = (0..bus)
        .map(|_| Arc::new(Semaphore::new(in_flight)))
        .collect();
    recorder.set_release(match until {
        InFlightUntil::Delivery => permits.clone(),
        InFlightUntil::Answer => Vec::new(),
    });
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..lines).map(|_| AtomicU64::new(0)).collect());
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..lines).map(|_| AtomicU64::new(0)).collect());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (b, sem) in permits.iter().enumerate() {
        let seqs: Vec<usize> = (b..lines).step_by(bus).collect();
        tasks.push(tokio::spawn(bus_connection(
            notify,
            seqs,
            run_id,
            fds.clone(),
            recorder.clone(),
            sent.clone(),
            answered.clone(),
            sem.clone(),
            until == InFlightUntil::Answer,
            pace.map(|r| (r, start)),
        )));
    }
    let mut answers = Answers::default();
    for t in tasks {
        let a = t.await.context("bus task")??;
        answers.ok += a.ok;
        answers.busy += a.busy;
        answers.refused += a.refused;
        if answers.first_refusal.is_none() {
            answers.first_refusal = a.first_refusal;
        }
    }
    if answers.refused > 0 {
        bail!(
            "the gateway refused {} of {lines} lines (first: {})",
            answers.refused,
            answers.first_refusal.unwrap_or_default()
        );
    }
    let delivered = recorder.wait_for(lines - answers.busy, DRAIN_LIMIT).await;
    recorder.set_release(Vec::new());
    let st = stamped(
        (0..lines).map(|seq| {
            (
                sent[seq].load(Ordering::Relaxed),
                recorder.arrived[seq].load(Ordering::Relaxed),
                answered[seq].load(Ordering::Relaxed),
            )
        }),
        delivered,
    );
    Ok(PushResult {
        delivered,
        busy: answers.busy,
        latency: st.arrival,
        answer_latency: st.answer,
        lines_per_s: st.per_s,
    })
}

/// One bus connection: writes its lines (batched into one write while
/// permits allow), reads answers in order, and stamps send and answer
/// times.
#[allow(clippy::too_many_arguments)]
async fn bus_connection(
    notify: SocketAddr,
    seqs: Vec<usize>,
    run_id: u32,
    fds: Arc<Vec<u32>>,
    recorder: Arc<Recorder>,
    sent: Arc<Vec<AtomicU64>>,
    answered: Arc<Vec<AtomicU64>>,
    permits: Arc<Semaphore>,
    release_on_answer: bool,
    pace: Option<(f64, Instant)>,
) -> anyhow::Result<Answers> {
    let stream = TcpStream::connect(notify)
        .await
        .with_context(|| format!("cannot connect to the notify bus at {notify}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let seqs = Arc::new(seqs);

    let reader = {
        let (permits, seqs, recorder, answered) = (
            permits.clone(),
            seqs.clone(),
            recorder.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            let mut answers = Answers::default();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut partial: Vec<u8> = Vec::new();
            let mut got = 0usize;
            while got < seqs.len() {
                let n = rd.read(&mut chunk).await?;
                if n == 0 {
                    bail!(
                        "the gateway closed the bus connection after {got} of {} answers",
                        seqs.len()
                    );
                }
                let now = recorder.now_ns();
                partial.extend_from_slice(&chunk[..n]);
                let mut start = 0;
                let mut released = 0;
                while let Some(pos) = partial[start..].iter().position(|&b| b == b'\n') {
                    let line = &partial[start..start + pos];
                    if line == b"{\"ok\":true}" {
                        answers.ok += 1;
                        if release_on_answer {
                            released += 1;
                        }
                    } else if line
                        == protocol::bus::BusError::ClientBusy
                            .answer_line()
                            .trim_ascii_end()
                    {
                        // Refused: it will not arrive, so it is no longer in flight.
                        answers.busy += 1;
                        released += 1;
                    } else {
                        released += 1;
                        answers.refused += 1;
                        if answers.first_refusal.is_none() {
                            answers.first_refusal =
                                Some(String::from_utf8_lossy(line).into_owned());
                        }
                    }
                    if let Some(&seq) = seqs.get(got) {
                        answered[seq].store(now.max(1), Ordering::Relaxed);
                    }
                    got += 1;
                    start += pos + 1;
                }
                partial.drain(..start);
                permits.add_permits(released);
            }
            anyhow::Ok(answers)
        })
    };

    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut i = 0;
    while i < seqs.len() {
        if let Some((rate, start)) = pace {
            let due = start + Duration::from_secs_f64(seqs[i] as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        permits.acquire().await.context("permits closed")?.forget();
        let mut take = 1;
        while i + take < seqs.len() {
            if let Some((rate, start)) = pace {
                let due = start + Duration::from_secs_f64(seqs[i + take] as f64 / rate);
                if due > Instant::now() {
                    break;
                }
            }
            match permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
            take += 1;
        }
        buf.clear();
        for &seq in &seqs[i..i + take] {
            let fd = fds[seq % fds.len()];
            use std::io::Write;
            let _ = writeln!(
                buf,
                "{{\"type\":\"scan\",\"fd\":{fd},\"nickname\":\"b{run_id}-{seq}\"}}"
            );
        }
        let now = recorder.now_ns().max(1);
        for &seq in &seqs[i..i + take] {
            sent[seq].store(now, Ordering::Relaxed);
        }
        wr.write_all(&buf).await.context("bus write")?;
        i += take;
    }
    let answers = reader.await.context("bus reader")??;
    Ok(answers)
}

/// Abusive clients for the `under_abuse` run: frame flooders (each sends
/// `ping` commands as fast as it can and reconnects when the gateway cuts
/// it off), pages that never read, and handshakes that never finish.
struct Abuse {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Flooder connections the gateway closed.
    cut_off: Arc<AtomicU64>,
}

impl Abuse {
    fn start(gateway: SocketAddr, n: usize) -> Abuse {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let cut_off = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..n {
            // Sources far from the fleet's, so per-address limits see them apart.
            let src = crate::ws_clients::source_ip(3_000 + i);
            let cut = cut_off.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((ws, _)) = crate::ws_clients::connect(gateway, src).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let (mut tx, mut rx) = ws.split();
                    let drain = tokio::spawn(async move { while rx.next().await.is_some() {} });
                    while tx.send(Message::text(r#"{"cmd":"ping"}"#)).await.is_ok() {}
                    drain.abort();
                    cut.fetch_add(1, Ordering::Relaxed);
                }
            }));
            let src = crate::ws_clients::source_ip(3_500 + i);
            tasks.push(tokio::spawn(async move {
                // A page that never reads: holds its socket until the end.
                if let Ok((ws, _)) = crate::ws_clients::connect(gateway, src).await {
                    std::future::pending::<()>().await;
                    drop(ws);
                }
            }));
            tasks.push(tokio::spawn(async move {
                // Half a handshake, then silence.
                if let Ok(mut s) = TcpStream::connect(gateway).await {
                    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
                    std::future::pending::<()>().await;
                }
            }));
        }
        Abuse { tasks, cut_off }
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}
