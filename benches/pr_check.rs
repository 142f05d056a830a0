//! Daemon overhead on a PR check: bare `terraform init && terraform plan` on a
//! workspace vs. the daemon's webhook-to-final-status time for the same change
//! (warm mirror). Run with `scripts/bench-pr-check`; prints medians.
//!
//! With `--agent` (`scripts/bench-pr-check --agent`) it compares instead the
//! same PR check run by the local runner and by a `gantry agent` of the
//! workspace's pool on loopback (the agent's library loop, in-process, with
//! its own sandbox, scratch and plugin cache, as `gantry agent` runs it).

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::origin::{null_config, standard_files};
use support::*;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bare `init && plan` (and, with `show`, the `show -json` the daemon also runs).
fn bare_terraform(env: &TestEnv, round: usize, show: bool) -> Duration {
    let dir = env.dir.path().join(format!("bare-{round}-{show}"));
    write_file(
        &dir.join("main.tf"),
        &null_config(&format!("bench-{round}")),
    );
    let cache = env.dir.path().join("bare-plugin-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(terraform_bin())
            .args(args)
            .current_dir(&dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_PLUGIN_CACHE_DIR", &cache)
            .env("TF_CLI_CONFIG_FILE", terraform_rc())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let start = Instant::now();
    run(&["init", "-input=false", "-no-color"]);
    run(&["plan", "-input=false", "-no-color", "-out=plan.tfplan"]);
    if show {
        run(&["show", "-json", "plan.tfplan"]);
    }
    start.elapsed()
}

/// Where the PR check's terraform runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    /// The replica's own (local) runner.
    Local,
    /// One agent of pool `blue`, on loopback.
    Agent,
}

/// Starts an agent of pool `blue` against `app`, as `gantry agent --server
/// URL --pool blue --terraform BIN` runs it (sandbox on). Cancel the token to
/// drain it.
async fn spawn_agent(
    env: &TestEnv,
    app: &TestApp,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), gantry::agent::AgentError>>,
) {
    let work = env.dir.path().join("agent");
    let mut o = gantry::agent::Options::new(
        url::Url::parse(&app.url("")).unwrap(),
        "blue",
        BLUE_POOL_TOKEN.to_string().into(),
        "bench-agent",
    );
    o.sandbox = Some(
        gantry::agent::sandbox(&work, &test_env_lookup)
            .await
            .expect("the agent's sandbox"),
    );
    o.work_dir = work;
    o.terraform = Some(terraform_bin());
    o.path = std::env::var("PATH").unwrap_or_default();
    o.cli_config_file = Some(terraform_rc());
    let drain = CancellationToken::new();
    let agent = tokio::spawn(gantry::agent::run(o, drain.clone()));
    (drain, agent)
}

/// Median webhook-to-final-status time of a PR check, with the sandbox on or
/// off, its terraform run locally or by an agent.
async fn daemon_rounds(sandbox: bool, runner: Where) -> Duration {
    let env = TestEnv::new(&Db::Sqlite).await;
    let mut files = standard_files();
    let base = env
        .origin
        .commit(&files, &[], "initial", &["refs/heads/main"]);
    let mut workspaces = TestEnv::standard_workspaces().to_string();
    if runner == Where::Agent {
        // `dns` is the last workspace: it gets the pool.
        workspaces.push_str("    agent_pool: blue\n");
    }
    let mut yaml = env.config_yaml(&workspaces, 4, "127.0.0.1:0", &terraform_bin());
    if runner == Where::Agent {
        yaml = format!("agent_pools:\n  - name: blue\n    token_env: BLUE_POOL_TOKEN\n{yaml}");
    }
    if !sandbox {
        yaml = yaml.replace("runner:\n", "runner:\n  sandbox: \"off\"\n");
    }
    let app = env.spawn_app(&yaml).await;
    let agent = match runner {
        Where::Local => None,
        Where::Agent => Some(spawn_agent(&env, &app).await),
    };

    // Warm-up: fills the mirror and the plugin cache, like a daemon that has run before.
    let mut parent = base;
    let mut daemon = Vec::new();
    for round in 0..=ROUNDS {
        files.insert("dns/main.tf".into(), null_config(&format!("round-{round}")));
        let head = env
            .origin
            .commit(&files, &[parent], "bench", &["refs/pull/7/head"]);
        parent = head;
        let action = if round == 0 { "opened" } else { "synchronize" };
        let body = pr_payload(action, &head.to_string(), &base.to_string());
        let start = Instant::now();
        let resp = app
            .send_webhook("pull_request", &format!("bench-{round}"), &body)
            .await;
        assert_eq!(resp.status(), 202);
        let sha = head.to_string();
        wait_until(Duration::from_secs(120), || async {
            env.github
                .statuses(&sha)
                .iter()
                .any(|s| s["context"] == "gantry/dns" && s["state"] != "pending")
                .then_some(())
        })
        .await;
        if round > 0 {
            daemon.push(start.elapsed());
        }
    }
    if runner == Where::Agent {
        let runs = app
            .api(&format!("/api/runs?workspace=dns&limit={ROUNDS}"))
            .await;
        for run in runs["runs"].as_array().unwrap() {
            assert_eq!(run["runner"], "agent:blue/bench-agent", "{run}");
        }
    }
    if let Some((drain, agent)) = agent {
        drain.cancel();
        agent.await.unwrap().unwrap();
    }
    app.stop().await;
    median(daemon)
}

/// `--agent`: the same PR check through the local runner and through an
/// agent on loopback.
async fn agent_vs_local() {
    let local = daemon_rounds(true, Where::Local).await;
    let agent = daemon_rounds(true, Where::Agent).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "pr-check benchmark, agent vs local runner ({ROUNDS} rounds, medians, one null_resource workspace, warm mirror and plugin cache, sandbox on)"
    );
    println!(
        "  webhook -> final status, local runner:       {:>7.1} ms",
        ms(local)
    );
    println!(
        "  webhook -> final status, agent on loopback:  {:>7.1} ms",
        ms(agent)
    );
    println!(
        "  agent overhead:                              {:>7.1} ms  (goal: <= 50 ms)",
        ms(agent) - ms(local)
    );
}

/// Median time to start and finish one process, bare and through the
/// sandbox: the sandbox's cost per process.
async fn per_process(
    sandbox: &gantry::runner::Sandbox,
    tmp: &std::path::Path,
    program: &std::path::Path,
    args: &[&str],
    rounds: usize,
) -> (Duration, Duration) {
    let confinement = gantry::runner::sandbox::Confinement {
        read: Vec::new(),
        write: vec![tmp.to_path_buf()],
    };
    let mut bare = Vec::new();
    let mut boxed = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let out = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("TMPDIR", tmp)
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        bare.push(start.elapsed());
        let start = Instant::now();
        let out = sandbox
            .command(program, args, &confinement)
            .env_clear()
            .env("TMPDIR", tmp)
            .current_dir("/")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        boxed.push(start.elapsed());
    }
    (median(bare), median(boxed))
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::args().any(|a| a == "--agent") {
        return agent_vs_local().await;
    }
    let env = TestEnv::new(&Db::Sqlite).await;
    let daemon = daemon_rounds(true, Where::Local).await;
    let daemon_off = daemon_rounds(false, Where::Local).await;
    let config = env.load_config(&env.default_yaml());
    let sandbox = gantry::app::sandbox_for_runs(&config, &test_env_lookup)
        .await
        .unwrap()
        .expect("the sandbox is on");
    // Terraform writes a log file into TMPDIR as it starts.
    let tmp = env.dir.path().join("process-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    sandbox.hand_over(&[&tmp]).unwrap();
    let terraform = std::path::PathBuf::from(terraform_bin());
    let (process_bare, process_boxed) =
        per_process(&sandbox, &tmp, &terraform, &["version"], ROUNDS * 3).await;
    let (true_bare, true_boxed) = per_process(
        &sandbox,
        &tmp,
        std::path::Path::new("/bin/true"),
        &[],
        ROUNDS * 15,
    )
    .await;
    let bare: Vec<Duration> = (0..ROUNDS)
        .map(|r| bare_terraform(&env, r, false))
        .collect();
    let bare_show: Vec<Duration> = (0..ROUNDS).map(|r| bare_terraform(&env, r, true)).collect();
    let (bare, bare_show) = (median(bare), median(bare_show));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "pr-check benchmark ({ROUNDS} rounds, medians, one null_resource workspace, warm mirror)"
    );
    println!(
        "  bare terraform init + plan:              {:>7.1} ms",
        ms(bare)
    );
    println!(
        "  bare terraform init + plan + show -json: {:>7.1} ms",
        ms(bare_show)
    );
    println!(
        "  daemon webhook -> final status, sandbox on:  {:>7.1} ms",
        ms(daemon)
    );
    println!(
        "  daemon webhook -> final status, sandbox off: {:>7.1} ms",
        ms(daemon_off)
    );
    println!(
        "  daemon overhead vs init + plan:          {:>7.1} ms  (goal: < 150 ms)",
        ms(daemon) - ms(bare)
    );
    println!(
        "  gantry's own share (vs init+plan+show):  {:>7.1} ms",
        ms(daemon) - ms(bare_show)
    );
    println!(
        "  one terraform process, bare / sandboxed: {:>7.1} ms / {:.1} ms  (sandbox cost {:.1} ms; goal: <= 5 ms)",
        ms(process_bare),
        ms(process_boxed),
        ms(process_boxed) - ms(process_bare)
    );
    println!(
        "  /bin/true, bare / sandboxed:             {:>7.1} ms / {:.1} ms  (sandbox cost {:.1} ms; goal: <= 5 ms)",
        ms(true_bare),
        ms(true_boxed),
        ms(true_boxed) - ms(true_bare)
    );
}
