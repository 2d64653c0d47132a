//! The command line: global options, one subcommand per scenario (plus
//! `all` and the hidden `idle-client` worker), and the defaults that
//! `--tiny` shrinks.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Measures scan-login under load on loopback: starts the real
/// `ws-gateway`, `wechat-callback` and `wechat-sim` binaries on free ports,
/// drives them, prints figures and one final JSON line.
#[derive(Debug, Parser)]
#[command(name = "scan-bench", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Directory holding ws-gateway, wechat-callback and wechat-sim
    /// (default: the directory of this executable when they are there, else
    /// ./target/release).
    #[arg(long, global = true, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Runs per figure; each figure is the median of these (default 3, or 1
    /// with --tiny).
    #[arg(long, global = true)]
    pub runs: Option<usize>,

    /// Every scenario small enough to finish in seconds (for CI: checks the
    /// tool and the system still work; timings are not meaningful).
    #[arg(long, global = true)]
    pub tiny: bool,

    /// RUST_LOG given to the daemons. `error` keeps per-request logging out
    /// of the figures.
    #[arg(long, global = true, default_value = "error")]
    pub daemon_log: String,

    /// Extra environment for the daemons, KEY=VALUE (repeatable), e.g.
    /// MALLOC_ARENA_MAX=2 for an experiment.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub daemon_env: Vec<String>,

    /// Keep the daemons' logs and databases (their directory is printed).
    #[arg(long, global = true)]
    pub keep_logs: bool,

    /// Worker threads of the benchmark client's runtime (default: all cores).
    #[arg(long, global = true)]
    pub client_threads: Option<usize>,
}

impl Common {
    /// Runs per figure.
    pub fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.tiny { 1 } else { 3 }).max(1)
    }
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Many idle login pages: gateway RSS per connection and open rate.
    Idle(IdleArgs),
    /// Notify-bus pushes to connected pages: latency and throughput.
    Push(PushArgs),
    /// Signed WeChat callbacks through callback → gateway → page.
    Login(LoginArgs),
    /// Connect/disconnect cycles: does the gateway's RSS come back?
    Churn(ChurnArgs),
    /// Many idle pages over several gateway nodes (--node-id): RSS per
    /// page and paced push latency while they are all held.
    Nodes(NodesArgs),
    /// Every scenario, one report.
    All(Box<AllArgs>),
    /// (internal) Holds idle connections for `idle` when one process cannot
    /// hold them all.
    #[command(hide = true)]
    IdleClient(IdleClientArgs),
}

/// `idle` settings.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to hold open (default 19,000; --tiny 200).
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub open_concurrency: usize,
    /// Seconds to wait after the last QR code before reading RSS (default 2;
    /// --tiny 0.5).
    #[arg(long)]
    pub settle_secs: Option<f64>,
    /// Client processes holding the connections (default: 1 when this
    /// process can hold them all under its open-file limit, else enough
    /// `idle-client` workers).
    #[arg(long)]
    pub client_procs: Option<usize>,
}

/// `nodes` settings.
#[derive(Debug, Clone, Args)]
pub struct NodesArgs {
    /// Gateway processes, nodes 0..N (default 6; --tiny 2).
    #[arg(long)]
    pub gateways: Option<usize>,
    /// Pages held over all gateways (default 100,000; --tiny 200).
    #[arg(long)]
    pub pages: Option<usize>,
    /// Extra pages per gateway that receive the paced pushes (default 200;
    /// --tiny 20).
    #[arg(long)]
    pub probe_pages: Option<usize>,
    /// Pushes per second to each node's probe pages.
    #[arg(long, default_value_t = 2000.0)]
    pub nodes_paced_rate: f64,
    /// Paced pushes per node (default 4,000; --tiny 200).
    #[arg(long)]
    pub nodes_paced_lines: Option<usize>,
    /// Pages being opened at once per gateway.
    #[arg(long, default_value_t = 128)]
    pub nodes_open_concurrency: usize,
}

/// `push` settings.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Connected pages the pushes are spread over (default 1,000; --tiny
    /// 100; at least in-flight × the largest --bus-conns).
    #[arg(long)]
    pub push_connections: Option<usize>,
    /// Lines per unpaced run (default 200,000; --tiny 2,000).
    #[arg(long)]
    pub push_lines: Option<usize>,
    /// Most lines in flight per bus connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// When a line stops being in flight: when its page got the push
    /// (`delivery`, a closed loop end to end) or when the bus answered it
    /// (`answer`; the gateway answers once the push is queued, so pages can
    /// fall behind and the gateway then refuses lines with `client_busy`).
    #[arg(long, value_enum, default_value = "delivery")]
    pub in_flight_until: InFlightUntil,
    /// Bus connection counts for the unpaced runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub bus_conns: Vec<usize>,
    /// Lines per second of the paced run (one bus connection).
    #[arg(long, default_value_t = 2000.0)]
    pub paced_rate: f64,
    /// Lines per paced run (default 20,000; --tiny 500).
    #[arg(long)]
    pub paced_lines: Option<usize>,
    /// Abusive clients during a second paced run, in the same stack: this
    /// many frame flooders (reconnecting when cut off), as many pages that
    /// never read, and as many stalled handshakes (default 20; --tiny 4;
    /// 0: no such run).
    #[arg(long)]
    pub abusers: Option<usize>,
}

/// When a pushed line stops counting against `--in-flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InFlightUntil {
    Delivery,
    Answer,
}

/// `login` settings.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Logins per paced run (default 5,000; --tiny 200).
    #[arg(long)]
    pub logins_paced: Option<usize>,
    /// Logins per second of the paced runs.
    #[arg(long, default_value_t = 1000.0)]
    pub login_rate: f64,
    /// Logins per saturated run (default 10,000; --tiny 200).
    #[arg(long)]
    pub logins_saturated: Option<usize>,
    /// Concurrent POSTs (closed loop) of the saturated runs.
    #[arg(long, default_value_t = 64)]
    pub login_concurrency: usize,
    /// Callback modes: `plain`, `safe` (AES, shared EncodingAESKey).
    #[arg(long, value_delimiter = ',', default_value = "plain,safe")]
    pub login_modes: Vec<LoginMode>,
    /// The callback's stores, one stack each, in this order: `sqlite` (a
    /// file in the work dir), `postgres` (a throwaway cluster with the
    /// distribution's default durability, on loopback), or a
    /// `postgres://` URL of an existing database.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    pub db: Vec<String>,
}

/// How a callback POST is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoginMode {
    Plain,
    Safe,
}

impl LoginMode {
    pub fn name(self) -> &'static str {
        match self {
            LoginMode::Plain => "plain",
            LoginMode::Safe => "safe",
        }
    }
}

/// `churn` settings.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Connect/disconnect cycles per run, warm-up included (default
    /// 100,000; --tiny 500).
    #[arg(long)]
    pub churn_cycles: Option<usize>,
    /// Cycles before the baseline RSS is taken (default 1,000; --tiny 100).
    #[arg(long)]
    pub churn_warmup: Option<usize>,
    /// Cycles in progress at once.
    #[arg(long, default_value_t = 64)]
    pub churn_concurrency: usize,
    /// The gateway's --qr-expire-seconds for churn: closed fds stay
    /// tombstoned this long, so RSS can only settle after it (default 10;
    /// --tiny 1).
    #[arg(long)]
    pub churn_qr_expire_seconds: Option<u32>,
}

/// `all` settings: every scenario's.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub idle: IdleArgs,
    #[command(flatten)]
    pub push: PushArgs,
    #[command(flatten)]
    pub login: LoginArgs,
    #[command(flatten)]
    pub churn: ChurnArgs,
    #[command(flatten)]
    pub nodes: NodesArgs,
}

/// `idle-client` (internal worker) settings.
#[derive(Debug, Clone, Args)]
pub struct IdleClientArgs {
    /// The gateway's HTTP/WebSocket address.
    #[arg(long)]
    pub gateway: SocketAddr,
    /// Connections this worker opens.
    #[arg(long)]
    pub count: usize,
    /// Connections being opened at once by this worker.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Index of this worker's first connection (spreads source addresses).
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
}
