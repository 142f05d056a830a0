//! Agent pools end to end: one replica (in process) and two real `gantry
//! agent` processes of pool `blue` on loopback, real terraform, real git. A
//! PR plan and its merge apply run on the agents (state through the http
//! backend) while a workspace with no pool runs locally; an agent killed
//! with SIGKILL mid-plan has its plan finished by the other agent; one
//! killed mid-apply leaves the run interrupted, the workspace locked and the
//! apply never repeated.
//!
//! The agents run terraform sandboxed, as they do by default; this suite's
//! host can sandbox (`sandbox.rs` and `agent_client.rs` check it).
//!
//! A pool with no live agent (the run waits for one, in the API, the status
//! and the comment) is covered by `agents.rs`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry::runner::protocol::JobKind;
use serde_json::{json, Value};

use crate::agents::{dns_and_network_pr, pools_yaml};
use crate::support::origin::null_config;
use crate::support::replica::{kill, slow_terraform};
use crate::support::*;

/// A short lease: a killed agent's job is noticed lost within seconds.
const LEASE: &str = "queue:\n  lease: 2s\n";

/// A `gantry agent` process of pool blue; killed when dropped.
struct Agent {
    name: &'static str,
    child: Child,
}

impl Agent {
    /// Starts `gantry agent` for pool blue against `app`, sandboxed, with
    /// `terraform` (a wrapper may exec the real binary: its directory is
    /// readable in the sandbox) and only the environment an operator gives
    /// it. Its log goes to `<name>.log` in the env's directory.
    fn start(env: &TestEnv, app: &TestApp, name: &'static str, terraform: &str) -> Agent {
        let tools = Path::new(&terraform_bin()).parent().unwrap().to_path_buf();
        let log = std::fs::File::create(env.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("agent")
            .args(["--server", &app.url(""), "--pool", "blue", "--name", name])
            .arg("--work-dir")
            .arg(env.dir.path().join(format!("work-{name}")))
            .args(["--terraform", terraform])
            .arg("--allow-read")
            .arg(tools)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("GANTRY_AGENT_TOKEN", BLUE_POOL_TOKEN)
            .env("TF_CLI_CONFIG_FILE", terraform_rc())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { name, child }
    }

    fn runner(&self) -> String {
        format!("agent:blue/{}", self.name)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replica with pools blue and green (`agents.rs`'s config: `dns` in
/// blue, `network` with no pool) and two blue agents using `terraform`.
async fn replica_and_agents(env: &TestEnv, terraform: &str) -> (TestApp, [Agent; 2]) {
    let app = env.spawn_app(&pools_yaml(env, LEASE, true)).await;
    let agents = [
        Agent::start(env, &app, "blue-1", terraform),
        Agent::start(env, &app, "blue-2", terraform),
    ];
    (app, agents)
}

/// The newest run of `workspace` and `kind` once `done` holds for it.
async fn wait_for_run(
    app: &TestApp,
    workspace: &str,
    kind: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(Duration::from_secs(90), || async {
        app.runs()
            .await
            .into_iter()
            .find(|r| r["workspace"] == workspace && r["kind"] == kind)
            .filter(&done)
    })
    .await
}

/// Waits until the run's log shows terraform's `step` started (the runner
/// writes the command line first); the agent that runs it, as the run says.
async fn wait_for_step<'a>(app: &TestApp, id: i64, step: &str, agents: &'a [Agent]) -> &'a Agent {
    let line = format!("slow-{step} {step}");
    wait_until(Duration::from_secs(60), || async {
        app.run_log(id).await.contains(&line).then_some(())
    })
    .await;
    let run = app.api(&format!("/api/runs/{id}")).await;
    agents
        .iter()
        .find(|a| run["runner"] == a.runner())
        .unwrap_or_else(|| panic!("runner of a running {step}: {run}"))
}

/// The agent jobs of run `id`: kind (`plan`, `apply`, `drift`), state and
/// attempt, oldest first.
async fn agent_jobs(app: &TestApp, id: i64) -> Vec<(&'static str, String, i64)> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT job, state, attempt FROM agent_jobs WHERE run_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(app.ctx.store.pool())
            .await
            .unwrap();
    rows.into_iter()
        .map(|(job, state, attempt)| {
            let kind = match serde_json::from_str(&job).unwrap() {
                JobKind::Plan => "plan",
                JobKind::Apply { .. } => "apply",
                JobKind::Drift { .. } => "drift",
            };
            (kind, state, attempt)
        })
        .collect()
}

async fn state_versions(app: &TestApp, workspace: &str) -> Vec<Value> {
    let path = format!("/api/workspaces/{workspace}/state-versions");
    app.api(&path).await["state_versions"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_pr_plan_and_its_merge_apply_run_on_agents_and_a_poolless_workspace_locally() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (files, base, head) = dns_and_network_pr(&env);
        let (app, agents) = replica_and_agents(&env, &terraform_bin()).await;
        let names: Vec<String> = agents.iter().map(Agent::runner).collect();

        // The PR plan of dns runs on a blue agent and reports to the PR.
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = app.send_webhook("pull_request", "e2e-pr-1", &body).await;
        assert_eq!(resp.status(), 202);
        let plan = wait_for_run(&app, "dns", "plan", |r| r["state"] == "planned").await;
        let runner = plan["runner"].as_str().unwrap_or_default().to_string();
        assert!(names.contains(&runner), "{db:?}: {plan}");
        assert_eq!(plan["plan"], json!({"add": 1, "change": 0, "destroy": 0}));
        assert_eq!(plan["waiting_for"], Value::Null);
        let status = env
            .wait_for_final_status(&head.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "success", "{db:?}: {status}");
        env.wait_for_comment(7, "Plan: 1 to add").await;

        // The workspace with no pool ran locally.
        let network = wait_for_run(&app, "network", "plan", |r| r["state"] == "planned").await;
        assert_eq!(network["runner"], "local", "{db:?}: {network}");
        let status = env
            .wait_for_final_status(&head.to_string(), "gantry/network")
            .await;
        assert_eq!(status["state"], "success", "{db:?}: {status}");

        // The merge applies dns on an agent, its state through gantry's
        // http backend.
        let merged = env.origin.commit(
            &files,
            &[base, head],
            "Merge pull request #7",
            &["refs/heads/main"],
        );
        env.github.set_commit_pr(&merged.to_string(), 7);
        let push = push_payload("main", &base.to_string(), &merged.to_string());
        assert_eq!(
            app.send_webhook("push", "e2e-merge-1", &push)
                .await
                .status(),
            202
        );
        let apply = wait_for_run(&app, "dns", "apply", |r| {
            matches!(r["state"].as_str(), Some("applied" | "errored"))
        })
        .await;
        assert_eq!(apply["state"], "applied", "{db:?}: {apply}");
        let runner = apply["runner"].as_str().unwrap_or_default().to_string();
        assert!(names.contains(&runner), "{db:?}: {apply}");
        let id = apply["id"].as_i64().unwrap();
        assert!(app.run_log(id).await.contains("Apply complete!"));
        let versions = state_versions(&app, "dns").await;
        assert_eq!(versions.len(), 1, "{db:?}: {versions:?}");
        assert_eq!(versions[0]["run_id"], id, "{versions:?}");
        let state = app.api("/api/workspaces/dns/state").await;
        let resources = state["resources"].as_array().unwrap();
        assert!(
            resources
                .iter()
                .any(|r| r["type"] == "null_resource" && r["name"] == "this"),
            "{state}"
        );
        let jobs = agent_jobs(&app, id).await;
        assert_eq!(
            jobs,
            [("plan", "done".into(), 1), ("apply", "done".into(), 1)],
            "{db:?}: {jobs:?}"
        );
        // network (no auto_apply) planned the merge locally.
        let network = wait_for_run(&app, "network", "apply", |r| r["runner"].is_string()).await;
        assert_eq!(network["runner"], "local", "{db:?}: {network}");

        // Both agents are listed, live, under pool blue.
        let listed = app.api("/api/agents").await;
        for agent in &agents {
            let a = listed["agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == agent.name)
                .unwrap_or_else(|| panic!("{listed}"));
            assert_eq!((&a["pool"], &a["live"]), (&json!("blue"), &json!(true)));
        }
        drop(agents);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_agent_killed_mid_plan_has_its_plan_finished_by_the_other() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "dns",
            &["refs/pull/7/head"],
        );
        let tf = slow_terraform(&env, "plan", 8);
        let (app, mut agents) = replica_and_agents(&env, &tf).await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = app.send_webhook("pull_request", "e2e-plan-1", &body).await;
        assert_eq!(resp.status(), 202);
        let id = wait_for_run(&app, "dns", "plan", |_| true).await["id"]
            .as_i64()
            .unwrap();

        let victim = wait_for_step(&app, id, "plan", &agents).await.name;
        let (killed, other) = match agents.iter_mut().position(|a| a.name == victim) {
            Some(0) => (0, 1),
            _ => (1, 0),
        };
        kill(&mut agents[killed].child);

        let run = wait_for_run(&app, "dns", "plan", |r| {
            matches!(r["state"].as_str(), Some("planned" | "errored"))
        })
        .await;
        assert_eq!(run["state"], "planned", "{db:?}: {run}");
        assert_eq!(run["id"], id, "the same run: {run}");
        assert_eq!(run["runner"], agents[other].runner(), "{db:?}: {run}");
        assert_eq!(run["plan"], json!({"add": 1, "change": 0, "destroy": 0}));
        // One job, queued again once and finished on its second claim.
        let jobs = agent_jobs(&app, id).await;
        assert_eq!(jobs, [("plan", "done".to_string(), 2)], "{db:?}: {jobs:?}");
        let status = env
            .wait_for_final_status(&head.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "success", "{db:?}: {status}");
        env.wait_for_comment(7, "Plan: 1 to add").await;
        drop(agents);
        app.stop().await;
    }
}

/// A merge of a `dns` change pushed to the replica, with two blue agents
/// whose applies take `apply_secs`, once an agent has started terraform's
/// apply of it.
struct MergeOnAgents {
    app: TestApp,
    agents: [Agent; 2],
    merged: git2::Oid,
    /// The apply run.
    id: i64,
    /// Which agent is applying.
    applying: usize,
}

async fn merge_applying_on_an_agent(
    env: &TestEnv,
    apply_secs: u32,
    delivery: &str,
) -> MergeOnAgents {
    let base = env.origin.initial();
    let merged =
        env.origin
            .merge_standard(base, vec![("dns/main.tf", null_config("dns-v2"))], "Merge");
    env.github.set_commit_pr(&merged.to_string(), 7);
    let tf = slow_terraform(env, "apply", apply_secs);
    let (app, agents) = replica_and_agents(env, &tf).await;
    let push = push_payload("main", &base.to_string(), &merged.to_string());
    assert_eq!(
        app.send_webhook("push", delivery, &push).await.status(),
        202
    );
    let id = wait_for_run(&app, "dns", "apply", |_| true).await["id"]
        .as_i64()
        .unwrap();
    let name = wait_for_step(&app, id, "apply", &agents).await.name;
    let applying = agents.iter().position(|a| a.name == name).unwrap();
    MergeOnAgents {
        app,
        agents,
        merged,
        id,
        applying,
    }
}

#[tokio::test]
async fn an_agent_killed_mid_apply_leaves_the_run_interrupted_and_the_workspace_locked() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let MergeOnAgents {
            app,
            mut agents,
            merged,
            id,
            applying,
        } = merge_applying_on_an_agent(&env, 8, "e2e-apply-1").await;
        kill(&mut agents[applying].child);

        let run = wait_for_run(&app, "dns", "apply", |r| r["state"] == "errored").await;
        assert_eq!(run["id"], id);
        assert_eq!(
            run["state_reason"], "interrupted during apply",
            "{db:?}: {run}"
        );
        assert_eq!(run["failure"], "interrupted_apply", "{run}");
        let dns = app.workspace("dns").await;
        let lock = dns["lock"]["reason"].as_str().unwrap_or_default();
        assert!(lock.contains("interrupted during apply"), "{db:?}: {dns}");
        let status = env
            .wait_for_final_status(&merged.to_string(), "gantry/dns")
            .await;
        assert_ne!(status["state"], "success", "{db:?}: {status}");

        // Never applied again: give the surviving agent time to claim a
        // second apply if one were queued (several leases), then look.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let jobs = agent_jobs(&app, id).await;
        assert_eq!(
            jobs,
            [
                ("plan", "done".to_string(), 1),
                ("apply", "lost".to_string(), 1),
            ],
            "{db:?}: {jobs:?}"
        );
        assert!(state_versions(&app, "dns").await.is_empty(), "{db:?}");
        let runs = app.runs().await;
        assert_eq!(runs.len(), 1, "no other run: {runs:?}");
        drop(agents);
        app.stop().await;
    }
}

/// SIGTERM to the agent running an apply (a deploy of the agents): the
/// apply finishes on that agent, the agent then exits 0, and nothing is
/// locked; the other agent took nothing.
#[tokio::test]
async fn sigterm_to_an_agent_mid_apply_lets_the_apply_finish_then_it_exits() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let MergeOnAgents {
        app,
        mut agents,
        id,
        applying: at,
        ..
    } = merge_applying_on_an_agent(&env, 4, "e2e-drain-1").await;
    crate::support::replica::sigterm(&agents[at].child);

    let status =
        crate::support::replica::exited(&mut agents[at].child, Duration::from_secs(60)).await;
    assert!(status.success(), "the draining agent exited with {status}");
    let run = wait_for_run(&app, "dns", "apply", |r| {
        matches!(r["state"].as_str(), Some("applied" | "errored"))
    })
    .await;
    assert_eq!(run["state"], "applied", "{run}");
    assert_eq!(run["runner"], agents[at].runner(), "{run}");
    let jobs = agent_jobs(&app, id).await;
    assert_eq!(
        jobs,
        [
            ("plan", "done".to_string(), 1),
            ("apply", "done".to_string(), 1)
        ],
        "{jobs:?}"
    );
    let dns = app.workspace("dns").await;
    assert!(dns["lock"].is_null(), "{dns}");
    drop(agents);
    app.stop().await;
}
