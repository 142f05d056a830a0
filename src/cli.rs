//! The command line: one binary, subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{process_env, Config};
use crate::git::Mirrors;
use crate::runner::{JobPhase, LocalRunner, NoLog, RunDirs, Runner};
use crate::store::Store;
use crate::vcs::Providers;

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Self-hosted GitOps daemon for Terraform and OpenTofu"
)]
pub struct Cli {
    /// Log JSON lines instead of text.
    #[arg(long, global = true, env = "GANTRY_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: webhooks, queue, workers, API.
    Serve {
        #[arg(long, default_value = "config/gantry.yaml")]
        config: PathBuf,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Plan one workspace locally and print the summary (no VCS API calls, no database).
    Plan {
        #[arg(long, default_value = "config/gantry.yaml")]
        config: PathBuf,
        #[arg(long)]
        workspace: String,
        /// Branch, full ref (`refs/pull/7/head`) or commit sha; default: the tracked branch.
        #[arg(long = "ref")]
        git_ref: Option<String>,
    },
    /// Drift detection.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// OPA policies: run a folder's tests, or evaluate policies against a plan.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Cost estimation.
    Cost {
        #[command(subcommand)]
        command: CostCommand,
    },
    /// Run terraform for an agent pool: claims the pool's jobs from a
    /// replica. The pool's token is read from GANTRY_AGENT_TOKEN (never a flag).
    Agent {
        /// A replica's base URL, e.g. `https://gantry.example.com`.
        #[arg(long)]
        server: url::Url,
        /// The agent pool (`agent_pools[].name` in the server's config).
        #[arg(long)]
        pool: String,
        /// This agent's name in its pool; default: the host name.
        #[arg(long)]
        name: Option<String>,
        /// Jobs run at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,
        /// Where jobs' scratch and plugin caches live.
        #[arg(long, default_value = "gantry-agent")]
        work_dir: PathBuf,
        /// The terraform/tofu binary for every job; default: the CLI the job
        /// names (`terraform` or `tofu`), looked up on PATH.
        #[arg(long)]
        terraform: Option<String>,
        /// `off` runs terraform without isolation (not recommended).
        #[arg(long, value_enum, default_value_t = SandboxArg::On)]
        sandbox: SandboxArg,
        /// How long a running apply may finish after SIGTERM/SIGINT.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        shutdown_grace: std::time::Duration,
        /// A path terraform may also read in the sandbox (repeatable), as
        /// `runner.allow_read` for `serve`: e.g. where a wrapper given to
        /// `--terraform` finds the real binary.
        #[arg(long)]
        allow_read: Vec<PathBuf>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, default_value = "config/gantry.yaml")]
        config: PathBuf,
    },
    /// Internal: enters the sandbox and runs a program in it (the runner
    /// starts terraform this way).
    #[command(name = "sandbox-exec", hide = true)]
    SandboxExec {
        #[arg(long)]
        spec: String,
        #[arg(last = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxArg {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Checks one workspace's tracked branch for drift locally and prints the report
    /// (no database, no VCS API calls, never applies).
    Run {
        #[arg(long, default_value = "config/gantry.yaml")]
        config: PathBuf,
        #[arg(long)]
        workspace: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Runs every `test_*` rule in the .rego files under DIR (opa test semantics).
    Test { dir: PathBuf },
    /// Evaluates the policies of a folder (with scalr-policy.hcl) against a plan.
    Eval {
        /// `terraform show -json` output.
        #[arg(long)]
        plan: PathBuf,
        /// The folder holding scalr-policy.hcl.
        #[arg(long)]
        policies: PathBuf,
        /// The `tfrun` part of the input (JSON); default: a minimal one with the plan's cost estimate.
        #[arg(long)]
        tfrun: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CostCommand {
    /// Estimate the monthly cost of a plan (`terraform show -json` output).
    Estimate {
        /// The plan JSON file.
        plan: PathBuf,
        /// A directory of pricing catalog files instead of the shipped catalog.
        #[arg(long)]
        pricing_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print every problem.
    Check {
        #[arg(long, default_value = "config/gantry.yaml")]
        config: PathBuf,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => return config_check(&config),
        Command::Serve { config } => with_config(&config, |c| runtime()?.block_on(serve(c))),
        Command::Plan {
            config,
            workspace,
            git_ref,
        } => with_config(&config, |c| {
            runtime()?.block_on(plan(c, &workspace, git_ref.as_deref()))
        }),
        Command::Migrate { config } => with_config(&config, |c| runtime()?.block_on(migrate(c))),
        Command::Agent {
            server,
            pool,
            name,
            concurrency,
            work_dir,
            terraform,
            sandbox,
            shutdown_grace,
            allow_read,
        } => agent_options(server, &pool, name, &work_dir).and_then(|mut o| {
            o.concurrency = concurrency;
            o.terraform = terraform;
            o.shutdown_grace = shutdown_grace;
            o.allow_read = allow_read
                .iter()
                .map(std::path::absolute)
                .collect::<Result<_, _>>()?;
            runtime()?.block_on(agent(o, sandbox))
        }),
        Command::Drift {
            command: DriftCommand::Run { config, workspace },
        } => with_config(&config, |c| runtime()?.block_on(drift_run(c, &workspace))),
        Command::Policy {
            command: PolicyCommand::Test { dir },
        } => return policy_test(&dir),
        Command::Policy {
            command:
                PolicyCommand::Eval {
                    plan,
                    policies,
                    tfrun,
                },
        } => policy_eval(&plan, &policies, tfrun.as_deref()),
        Command::Cost {
            command:
                CostCommand::Estimate {
                    plan,
                    pricing_dir,
                    json,
                },
        } => cost_estimate(&plan, pricing_dir.as_deref(), json),
        Command::SandboxExec { spec, argv } => {
            return crate::runner::sandbox::helper_main(&spec, &argv)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_test(dir: &Path) -> ExitCode {
    let outcomes = match crate::policy::testing::run(dir) {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            println!("0 passed, 0 failed ({} compile errors)", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for o in &outcomes {
        if o.passed {
            println!("PASS  {} ({})", o.rule, o.file.display());
        } else {
            failed += 1;
            println!(
                "FAIL  {} ({}): {}",
                o.rule,
                o.file.display(),
                o.error.as_deref().unwrap_or("failed")
            );
        }
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed > 0 || outcomes.is_empty() {
        if outcomes.is_empty() {
            eprintln!("error: no test_* rules under {}", dir.display());
        }
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn policy_eval(plan: &Path, policies: &Path, tfrun: Option<&Path>) -> anyhow::Result<ExitCode> {
    let set = match crate::policy::PolicySet::load(policies) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let tfplan = read_json(plan)?;
    let tfrun = match tfrun {
        Some(p) => read_json(p)?,
        None => {
            let cost = crate::cost::estimate(&tfplan, &crate::cost::Catalog::shipped());
            serde_json::json!({
                "is_dry": true,
                "is_destroy": false,
                "source": "api",
                "cost_estimate": {
                    "prior_monthly_cost": cost.prior_monthly_cost,
                    "proposed_monthly_cost": cost.proposed_monthly_cost,
                    "delta_monthly_cost": cost.delta_monthly_cost
                }
            })
        }
    };
    let results = set.evaluate(&crate::policy::input(tfplan, tfrun));
    for r in &results {
        println!(
            "{:<8} {} ({})",
            r.result.to_uppercase(),
            r.policy,
            r.enforcement_level.as_str()
        );
        for m in &r.messages {
            println!("         - {m}");
        }
    }
    for d in &set.disabled {
        println!("DISABLED {d}");
    }
    let hard_fail = results.iter().any(|r| {
        r.result != "passed"
            && r.enforcement_level == crate::policy::EnforcementLevel::HardMandatory
    });
    match crate::policy::status_summary(&results) {
        Some(s) => println!("\n{s}"),
        None => println!("\nall {} policies passed", results.len()),
    }
    Ok(if hard_fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn cost_estimate(plan: &Path, pricing_dir: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let catalog = match pricing_dir {
        Some(dir) => match crate::cost::Catalog::load_dir(dir) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                return Ok(ExitCode::from(2));
            }
        },
        None => crate::cost::Catalog::shipped(),
    };
    let text =
        std::fs::read_to_string(plan).with_context(|| format!("reading {}", plan.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", plan.display()))?;
    if doc.get("resource_changes").is_none() && doc.get("format_version").is_none() {
        anyhow::bail!(
            "{} is not `terraform show -json` plan output",
            plan.display()
        );
    }
    let estimate = crate::cost::estimate(&doc, &catalog);
    if json {
        println!("{}", serde_json::to_string_pretty(&estimate)?);
    } else {
        print!("{}", crate::cost::render_table(&estimate));
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Loads the config; from then on the log masks its secrets.
fn load(path: &Path) -> Result<Config, ExitCode> {
    let config = Config::load(path, &process_env).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        eprintln!("{} error(s) in {}", errors.0.len(), path.display());
        ExitCode::from(2)
    })?;
    crate::redact::set_global(crate::redact::Redactor::for_config(&config));
    Ok(config)
}

fn with_config(
    path: &Path,
    f: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match load(path) {
        Ok(c) => f(c),
        Err(code) => Ok(code),
    }
}

fn config_check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} providers, {} workspaces)",
                path.display(),
                c.providers.len(),
                c.workspaces.len()
            );
            let summary = c.variables.summary();
            if !summary.is_empty() {
                println!("variables (names, phases and sources; values are never shown):");
                for line in summary {
                    println!("{line}");
                }
            }
            let sandbox = match runtime() {
                Ok(rt) => rt.block_on(crate::app::sandbox_for(&c, &process_env)),
                Err(e) => Err(e),
            };
            match sandbox {
                Ok(Some(s)) => println!("sandbox: on ({})", s.layers()),
                Ok(None) => {
                    println!("sandbox: off (runner.sandbox: off): terraform runs are NOT isolated")
                }
                Err(e) => {
                    println!("sandbox: unavailable: {e:#}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let app = crate::App::build(config, Arc::new(process_env)).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's options from its flags and environment: the pool token from
/// `GANTRY_AGENT_TOKEN`, PATH and `TF_CLI_CONFIG_FILE` passed to terraform.
fn agent_options(
    server: url::Url,
    pool: &str,
    name: Option<String>,
    work_dir: &Path,
) -> anyhow::Result<crate::agent::Options> {
    let token = process_env("GANTRY_AGENT_TOKEN")
        .filter(|t| !t.is_empty())
        .context("GANTRY_AGENT_TOKEN is not set: the agent needs its pool's token")?;
    // The log masks the token, as `serve` masks its config's secrets.
    let mut redactor = crate::redact::Redactor::default();
    redactor.add(&token);
    crate::redact::set_global(redactor);
    let name = name.unwrap_or_else(host_name);
    let mut o = crate::agent::Options::new(server, pool, token.into(), &name);
    o.work_dir = std::path::absolute(work_dir)?;
    if let Some(path) = process_env("PATH") {
        o.path = path;
    }
    o.cli_config_file = process_env("TF_CLI_CONFIG_FILE").map(PathBuf::from);
    Ok(o)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gantry-agent".into())
}

async fn agent(
    mut options: crate::agent::Options,
    sandbox: SandboxArg,
) -> anyhow::Result<ExitCode> {
    options.sandbox = match sandbox {
        SandboxArg::On => Some(crate::agent::sandbox(&options.work_dir, &process_env).await?),
        SandboxArg::Off => {
            tracing::warn!(
                "--sandbox off: terraform runs are NOT isolated; a job's code can read this host's files and credentials"
            );
            None
        }
    };
    let drain = tokio_util::sync::CancellationToken::new();
    let on_signal = drain.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no more claims; plans are handed back, applies finish");
        on_signal.cancel();
    });
    crate::agent::run(options, drain).await?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn plan(config: Config, workspace: &str, git_ref: Option<&str>) -> anyhow::Result<ExitCode> {
    let ws = config
        .workspace(workspace)
        .with_context(|| format!("no workspace `{workspace}` in {}", config.source.display()))?
        .clone();
    let providers = Providers::from_config(&config)?;
    let provider = providers.get(&ws.provider).context("workspace provider")?;
    let mirrors = Mirrors::new(&config.data_dir);
    let is_sha = |r: &str| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit());
    let mut refs = vec![format!("refs/heads/{}", ws.branch)];
    let target = match git_ref {
        None => refs[0].clone(),
        Some(r) if is_sha(r) => r.to_string(),
        Some(r) if r.starts_with("refs/") => {
            refs.push(r.to_string());
            r.to_string()
        }
        Some(r) => {
            refs.push(format!("refs/heads/{r}"));
            format!("refs/heads/{r}")
        }
    };
    let creds = provider.git_credentials(&ws.repo).await?;
    let mirror = mirrors
        .fetch(
            &ws.provider,
            &ws.repo,
            &provider.clone_url(&ws.repo),
            creds,
            &refs,
        )
        .await?;
    let sha = mirror.resolve(&target)?.to_string();
    let (scratch, _) = check_out(&config, &mirror, &sha).await?;
    let sandbox = crate::app::sandbox_for_runs(&config, &process_env).await?;
    let redactor = Arc::new(crate::redact::Redactor::for_config(&config));
    let runner =
        LocalRunner::new(&config, &process_env, sandbox, redactor)?.with_work_root(&scratch);
    let job = crate::runs::job::job_spec(&config, &ws, CLI_RUN, &sha, JobPhase::Plan);
    eprintln!("planning {} at {} ({})", ws.name, &sha[..12], target);
    let result = runner
        .run(&job, &NoLog, &tokio_util::sync::CancellationToken::new())
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
    match result.and_then(|out| {
        let plan = out.plan.ok_or_else(|| crate::runner::RunnerError::Failed {
            step: "plan",
            message: "no plan was saved".into(),
        })?;
        Ok((out.text, plan))
    }) {
        Ok((text, plan)) => {
            println!("{}", text.trim_end());
            println!();
            println!("{}: {}", ws.name, plan.summary);
            let cost = crate::cost::estimate(&plan.parsed, &config.pricing);
            println!();
            print!("{}", crate::cost::render_table(&cost));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", ws.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn drift_run(config: Config, workspace: &str) -> anyhow::Result<ExitCode> {
    let ws = config
        .workspace(workspace)
        .with_context(|| format!("no workspace `{workspace}` in {}", config.source.display()))?
        .clone();
    let providers = Providers::from_config(&config)?;
    let provider = providers.get(&ws.provider).context("workspace provider")?;
    let mirrors = Mirrors::new(&config.data_dir);
    let (mirror, sha) = mirrors
        .fetch_branch(&*provider, &ws.repo, &ws.branch)
        .await?;
    let (scratch, dirs) = check_out(&config, &mirror, &sha).await?;
    let refresh_only = ws.drift_mode == crate::drift::DriftMode::RefreshOnly;
    let job = crate::runs::job::job_spec(
        &config,
        &ws,
        CLI_RUN,
        &sha,
        JobPhase::Drift { refresh_only },
    );
    let workdir = dirs.checkout().join(&job.dir);
    // State kept by gantry comes from the database, as for the daemon's checks.
    if !crate::state::has_own_backend(&workdir) {
        let store = Store::connect(&config.database_url).await?;
        store.migrate().await?;
        crate::state::restore(&store, &ws.name, &workdir).await?;
    }
    let sandbox = crate::app::sandbox_for_runs(&config, &process_env).await?;
    let redactor = Arc::new(crate::redact::Redactor::for_config(&config));
    let runner =
        LocalRunner::new(&config, &process_env, sandbox, redactor)?.with_work_root(&scratch);
    eprintln!(
        "checking {} for drift at {} ({:?} mode)",
        ws.name,
        &sha[..12],
        ws.drift_mode
    );
    let result = runner
        .run(&job, &NoLog, &tokio_util::sync::CancellationToken::new())
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            eprintln!("{}: {e}", ws.name);
            return Ok(ExitCode::FAILURE);
        }
    };
    let plan = out.plan.as_ref().map(|p| &p.parsed);
    let report = crate::drift::report(
        plan.unwrap_or(&serde_json::Value::Null),
        ws.drift_mode,
        out.changes,
    );
    if report.drifted {
        println!(
            "{}: drift found in {} resource(s)",
            ws.name,
            report.resources.len()
        );
        for r in &report.resources {
            println!(
                "  {} ({}): {}",
                r.address,
                r.actions.join(", "),
                r.changed_attributes.join(", ")
            );
        }
    } else {
        println!("{}: no drift", ws.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The run id of the CLI's one-off jobs, in a work root of their own.
const CLI_RUN: i64 = 0;

/// A scratch work root under `data_dir/work` with `sha` checked out for the
/// runner's job [`CLI_RUN`] (use the runner `with_work_root` of it).
async fn check_out(
    config: &Config,
    mirror: &crate::git::Mirror,
    sha: &str,
) -> anyhow::Result<(PathBuf, RunDirs)> {
    let scratch = tempfile_dir(&config.data_dir)?;
    let dirs = RunDirs::new(scratch.join(format!("run-{CLI_RUN}")));
    let (mirror, sha, checkout) = (mirror.clone(), sha.to_string(), dirs.checkout());
    tokio::task::spawn_blocking(move || mirror.checkout(&sha, &checkout)).await??;
    Ok((scratch, dirs))
}

fn tempfile_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir
        .join("work")
        .join(format!("cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
