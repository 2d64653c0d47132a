//! Runs the chosen scenarios against freshly started daemons and turns
//! their measurements into one [`Report`].

use crate::churn::{self, ChurnParams};
use crate::cli::{Cli, Command};
use crate::idle::{self, IdleParams};
use crate::login::{self, LoginParams};
use crate::nodes::{self, NodesParams};
use crate::procs::{self, Env};
use crate::push::{self, PushParams};
use crate::report::{Machine, Report};

/// The scenarios of one invocation, resolved.
struct Plan {
    idle: Option<IdleParams>,
    push: Option<PushParams>,
    login: Option<LoginParams>,
    churn: Option<ChurnParams>,
    nodes: Option<NodesParams>,
}

/// Runs `cli` and returns the process exit code.
pub async fn run(cli: Cli, nofile_limit: u64) -> anyhow::Result<i32> {
    let tiny = cli.common.tiny;
    let plan = match &cli.command {
        Command::IdleClient(args) => {
            idle::client(args).await?;
            return Ok(0);
        }
        Command::Idle(a) => Plan {
            idle: Some(IdleParams::new(a, tiny)),
            push: None,
            login: None,
            churn: None,
            nodes: None,
        },
        Command::Push(a) => Plan {
            idle: None,
            push: Some(PushParams::new(a, tiny)),
            login: None,
            churn: None,
            nodes: None,
        },
        Command::Login(a) => Plan {
            idle: None,
            push: None,
            login: Some(LoginParams::new(a, tiny)),
            churn: None,
            nodes: None,
        },
        Command::Churn(a) => Plan {
            idle: None,
            push: None,
            login: None,
            churn: Some(ChurnParams::new(a, tiny)),
            nodes: None,
        },
        Command::Nodes(a) => Plan {
            idle: None,
            push: None,
            login: None,
            churn: None,
            nodes: Some(NodesParams::new(a, tiny)),
        },
        Command::All(a) => Plan {
            idle: Some(IdleParams::new(&a.idle, tiny)),
            push: Some(PushParams::new(&a.push, tiny)),
            login: Some(LoginParams::new(&a.login, tiny)),
            churn: Some(ChurnParams::new(&a.churn, tiny)),
            nodes: Some(NodesParams::new(&a.nodes, tiny)),
        },
    };
    let env = Env::new(&cli.common)?;
    let mut report = Report::new(Machine::detect(nofile_limit), env.runs, tiny);
    report.param("bin_dir", env.bin_dir.display().to_string().into());
    report.param("daemon_log", env.daemon_log.clone().into());
    report.param("binaries_sha1", env.binary_ids());
    if !env.daemon_env.is_empty() {
        report.param(
            "daemon_env",
            env.daemon_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    let started = std::time::Instant::now();
    let (busy0, own0) = (procs::machine_busy(), procs::own_cpu());
    let outcome = scenarios(&env, &plan, &mut report).await;
    if let Err(e) = &outcome {
        report.fail(format!("{e:#}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.param("elapsed_secs", elapsed.into());
    // CPU used meanwhile by processes other than this benchmark and its
    // daemons: others' builds on a shared machine make figures low.
    let foreign = (procs::machine_busy().saturating_sub(busy0))
        .saturating_sub(procs::own_cpu().saturating_sub(own0))
        .as_secs_f64()
        / elapsed.max(1e-9);
    report.param("foreign_cpu_cores", foreign.into());
    if foreign > 0.1 {
        report.note(format!(
            "other processes used {foreign:.2} CPU cores on average during the benchmark; timings are pessimistic"
        ));
    }
    env.cleanup();
    print!("{}", report.human());
    println!("{}", report.json_line());
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

async fn scenarios(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    if let Some(p) = &plan.idle {
        idle::run(env, p, report).await?;
    }
    if let Some(p) = &plan.push {
        push::run(env, p, report).await?;
    }
    if let Some(p) = &plan.login {
        login::run(env, p, report).await?;
    }
    if let Some(p) = &plan.churn {
        churn::run(env, p, report).await?;
    }
    if let Some(p) = &plan.nodes {
        nodes::run(env, p, report).await?;
    }
    Ok(())
}
