//! `nodes`: many idle login pages over several gateway nodes, as a site
//! that outgrows one gateway process runs them (one process may hold only
//! so many files): `G` gateways with `--node-id 0..G`, the pages split
//! evenly and held by `idle-client` worker processes. Reports the total
//! RSS per page, and, while every page is held, the paced push latency to
//! a few probe pages on each node (their fds carry the node's id).

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use crate::cli::{InFlightUntil, NodesArgs};
use crate::idle::{Holder, Opened, open_in_workers};
use crate::procs::{self, Env, Nodes, rss_bytes};
use crate::push::push_once;
use crate::report::{Report, at_most};
use crate::ws_clients::{KeyBy, Recorder, lookup_fds, open_fleet};

/// File descriptors a gateway needs besides its pages.
const GATEWAY_FD_OVERHEAD: usize = 300;
/// File descriptors a client worker keeps for itself.
const CLIENT_FD_OVERHEAD: usize = 512;
/// Pushes in flight per bus connection during the paced run.
const IN_FLIGHT: usize = 64;

/// Resolved `nodes` settings.
#[derive(Debug, Clone)]
pub struct NodesParams {
    pub gateways: usize,
    pub pages: usize,
    pub probe_pages: usize,
    pub paced_rate: f64,
    pub paced_lines: usize,
    pub open_concurrency: usize,
    pub settle: Duration,
}

impl NodesParams {
    pub fn new(args: &NodesArgs, tiny: bool) -> NodesParams {
        NodesParams {
            gateways: args
                .gateways
                .unwrap_or(if tiny { 2 } else { 6 })
                .clamp(1, usize::from(protocol::fd::MAX_NODE_ID) + 1),
            pages: args
                .pages
                .unwrap_or(if tiny { 200 } else { 100_000 })
                .max(1),
            probe_pages: args
                .probe_pages
                .unwrap_or(if tiny { 20 } else { 200 })
                .max(1),
            paced_rate: args.nodes_paced_rate,
            paced_lines: args
                .nodes_paced_lines
                .unwrap_or(if tiny { 200 } else { 4_000 })
                .max(1),
            open_concurrency: args.nodes_open_concurrency.max(1),
            settle: Duration::from_secs(if tiny { 1 } else { 3 }),
        }
    }
}

pub async fn run(env: &Env, p: &NodesParams, report: &mut Report) -> anyhow::Result<()> {
    let limit = usize::try_from(procs::nofile_limit()).unwrap_or(usize::MAX);
    let per_gateway = p.pages.div_ceil(p.gateways);
    let gateway_fit =
        limit.saturating_sub(GATEWAY_FD_OVERHEAD + p.probe_pages + p.open_concurrency);
    if per_gateway > gateway_fit {
        bail!(
            "nodes: {per_gateway} pages per gateway do not fit the open-file limit {limit}; \
             use more --gateways"
        );
    }
    let per_proc = limit.saturating_sub(CLIENT_FD_OVERHEAD).max(1);
    report.param(
        "nodes",
        json!({
            "gateways": p.gateways,
            "pages": per_gateway * p.gateways,
            "probe_pages_per_gateway": p.probe_pages,
            "paced_rate": p.paced_rate,
            "paced_lines_per_gateway": p.paced_lines,
        }),
    );
    println!(
        "nodes: {} pages over {} gateway nodes ({per_gateway} each), {} probe pages each, {} run(s)",
        per_gateway * p.gateways,
        p.gateways,
        p.probe_pages,
        env.runs
    );
    for run in 0..env.runs {
        let nodes = Nodes::start(env, p.gateways, per_gateway + p.probe_pages + 64).await?;
        let result = measure(&nodes, per_gateway, per_proc, p, report).await;
        for w in nodes.stop().await {
            report.note(w);
        }
        let (per_page, worst) = result?;
        println!(
            "  run {}: {per_page:.0} B per page (all gateways), worst node's paced p99 {worst:.0} µs",
            run + 1
        );
    }
    Ok(())
}

/// Returns RSS per page and the worst node's paced p99 (µs).
async fn measure(
    nodes: &Nodes,
    per_gateway: usize,
    per_proc: usize,
    p: &NodesParams,
    report: &mut Report,
) -> anyhow::Result<(f64, f64)> {
    // Warm-up: token, HTTP pools, runtime threads.
    for g in &nodes.gateways {
        let warm = open_fleet(g.addr, 16, 16, 0, Recorder::new(0), KeyBy::Nothing).await;
        if warm.conns.is_empty() {
            bail!(
                "nodes warm-up: no QR code: {}",
                warm.first_error.unwrap_or_default()
            );
        }
        warm.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = |nodes: &Nodes| -> anyhow::Result<u64> {
        nodes
            .gateways
            .iter()
            .map(|g| rss_bytes(g.daemon.pid()))
            .sum::<anyhow::Result<u64>>()
    };
    let before = rss(nodes)?;

    let mut holders: Vec<Holder> = Vec::new();
    let mut opened = Opened::default();
    for g in &nodes.gateways {
        let procs = per_gateway.div_ceil(per_proc).max(1);
        let (o, h) = open_in_workers(g.addr, per_gateway, procs, p.open_concurrency).await?;
        opened.merge(o);
        holders.push(h);
    }
    tokio::time::sleep(p.settle).await;
    let after = rss(nodes)?;
    let held = opened.opened.max(1) as f64;
    let per_page = (after as f64 - before as f64) / held;

    // Probes: pushes to a few pages of each node while all are held.
    let mut p99s = Vec::new();
    for (node, g) in nodes.gateways.iter().enumerate() {
        let recorder = Recorder::new(p.paced_lines);
        let fleet = open_fleet(
            g.addr,
            p.probe_pages,
            32,
            3_000,
            recorder.clone(),
            KeyBy::Nickname,
        )
        .await;
        if fleet.conns.is_empty() {
            bail!("nodes: no probe page on node {node}");
        }
        let tickets = fleet.conns.iter().map(|c| c.ticket.clone()).collect();
        let fds = lookup_fds(nodes.sim_addr, tickets, 16).await?;
        if let Some(fd) = fds
            .iter()
            .find(|fd| (**fd >> protocol::fd::NODE_SHIFT) as usize != node)
        {
            report.fail(format!(
                "nodes: fd {fd} from node {node} names another node"
            ));
        }
        let r = push_once(
            g.notify,
            recorder,
            Arc::new(fds),
            u32::try_from(node + 1).unwrap_or(1),
            p.paced_lines,
            1,
            IN_FLIGHT,
            InFlightUntil::Delivery,
            Some(p.paced_rate),
        )
        .await?;
        if r.delivered < p.paced_lines {
            report.fail(format!(
                "nodes: node {node}: {} of {} pushes reached their page",
                r.delivered, p.paced_lines
            ));
        }
        report.add(
            &format!("nodes.node{node}.paced_p99"),
            "µs",
            r.latency.p99,
            None,
        );
        p99s.push(r.latency.p99);
        fleet.close().await;
    }
    for h in holders {
        h.close().await;
    }
    if opened.failed > 0 {
        report.fail(format!(
            "nodes: {} of {} pages got no QR code (first error: {})",
            opened.failed,
            per_gateway * nodes.gateways.len(),
            opened.error.clone().unwrap_or_default()
        ));
    }
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    report.add("nodes.pages_held", "pages", opened.opened as f64, None);
    report.add("nodes.rss_per_page", "B", per_page, at_most(2048.0));
    report.add(
        "nodes.gateways_rss_total",
        "MiB",
        after as f64 / 1048576.0,
        None,
    );
    report.add("nodes.paced_p99_worst_node", "µs", worst, at_most(300.0));
    Ok((per_page, worst))
}
