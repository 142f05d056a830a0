//! Agent pools, server side: a workspace with `agent_pool` runs its terraform
//! as agent jobs, driven here by a scripted agent that speaks the wire
//! protocol (`gantry::runner::protocol`) and runs real terraform with the
//! `LocalRunner` in the source it downloaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry::runner::protocol::{
    self, ClaimRequest, JobGrant, JobKind, JobResult, LogChunk, Outcome,
};
use gantry::runner::{BackendConfig, EnvVar, JobPhase, JobSpec, LocalRunner, NoLog, Runner};
use gantry::store::sha256_hex;
use git2::Oid;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::origin::{null_config, standard_files};
use crate::support::*;

const POOLS: &str = "agent_pools:
  - name: blue
    token_env: BLUE_POOL_TOKEN
  - name: green
    token_env: GREEN_POOL_TOKEN
";

/// `dns` in pool blue (with a plan variable and an apply-only secret), and
/// `network` with no pool; `extra` is added at the top.
pub(crate) fn pools_yaml(env: &TestEnv, extra: &str, auto_apply: bool) -> String {
    let workspaces = format!(
        r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    auto_apply: {auto_apply}
    agent_pool: blue
    variables:
      - {{ name: PLAN_VISIBLE, value: seen-by-plans }}
      - {{ name: APPLY_ONLY_SECRET, value: apply-only-value-123, sensitive: true, phases: [apply] }}
  - name: network
    environment: production
    provider: github
    repo: acme/infra
    dir: network
"#
    );
    let yaml = env.config_yaml(&workspaces, 2, "127.0.0.1:0", &terraform_bin());
    format!("{POOLS}{extra}{yaml}")
}

/// An agent driven step by step by the test.
#[derive(Clone)]
struct ScriptedAgent {
    client: reqwest::Client,
    base: String,
    token: &'static str,
    name: &'static str,
}

impl ScriptedAgent {
    fn new(app: &TestApp, token: &'static str, name: &'static str) -> ScriptedAgent {
        ScriptedAgent {
            client: app.client.clone(),
            base: app.url(""),
            token,
            name,
        }
    }

    fn request(&self, method: Method, path: &str, lease: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method, format!("{}{}/{path}", self.base, protocol::PREFIX))
            .bearer_auth(self.token)
            .header(protocol::AGENT_NAME_HEADER, self.name);
        if let Some(lease) = lease {
            r = r.header(protocol::LEASE_HEADER, lease);
        }
        r
    }

    async fn claim_response(&self) -> reqwest::Response {
        let req = ClaimRequest {
            version: "0.1.0-test".into(),
            free: 1,
            running: vec![],
        };
        self.request(Method::POST, "claim", None)
            .json(&req)
            .send()
            .await
            .unwrap()
    }

    /// Claims until a job is granted.
    async fn claim(&self) -> JobGrant {
        loop {
            let r = self.claim_response().await;
            match r.status() {
                StatusCode::OK => return r.json().await.unwrap(),
                StatusCode::NO_CONTENT => continue,
                s => panic!("claim: {s}: {}", r.text().await.unwrap()),
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        job: i64,
        path: &str,
        lease: Option<&str>,
    ) -> reqwest::Response {
        self.request(method, &format!("jobs/{job}/{path}"), lease)
            .send()
            .await
            .unwrap()
    }

    async fn heartbeat(&self, job: i64, lease: &str) -> StatusCode {
        self.call(Method::POST, job, "heartbeat", Some(lease))
            .await
            .status()
    }

    async fn log(&self, job: i64, lease: Option<&str>, seq: u64, text: &str) -> StatusCode {
        self.request(Method::POST, &format!("jobs/{job}/log"), lease)
            .json(&LogChunk {
                seq,
                text: text.into(),
            })
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn upload(
        &self,
        job: i64,
        lease: Option<&str>,
        kind: &str,
        bytes: &[u8],
        sha: &str,
    ) -> StatusCode {
        self.request(Method::PUT, &format!("jobs/{job}/artifacts/{kind}"), lease)
            .header(protocol::SHA256_HEADER, sha)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn complete(
        &self,
        job: i64,
        lease: Option<&str>,
        outcome: Outcome,
        text: &str,
    ) -> StatusCode {
        self.request(Method::POST, &format!("jobs/{job}/complete"), lease)
            .json(&JobResult {
                outcome,
                text: text.into(),
            })
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Heartbeats `grant`'s job every third of its lease until aborted.
    fn keep_alive(&self, grant: &JobGrant) -> tokio::task::JoinHandle<()> {
        let (me, id, lease) = (self.clone(), grant.job_id, grant.lease_token.clone());
        let every = Duration::from_millis(grant.lease_ms / 3);
        tokio::spawn(async move {
            loop {
                me.heartbeat(id, &lease).await;
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Downloads the source, runs the grant's plan with real terraform in
    /// it (state through the grant's backend), uploads plan file and JSON
    /// and completes the job.
    async fn plan(&self, app: &TestApp, grant: &JobGrant, work: &Path) -> String {
        let beat = self.keep_alive(grant);
        let lease = Some(grant.lease_token.as_str());
        let source = self.call(Method::GET, grant.job_id, "source", lease).await;
        assert_eq!(source.status(), 200);
        let source = source.bytes().await.unwrap();
        let config = app.ctx.config();
        let redactor = Arc::new(gantry::redact::Redactor::for_config(&config));
        let runner = LocalRunner::new(&config, &test_env_lookup, None, redactor)
            .unwrap()
            .with_work_root(work);
        unpack(&source, &runner.dirs(grant.run_id).checkout());
        let out = runner
            .run(
                &spec(app, grant, JobPhase::Plan),
                &NoLog,
                &Default::default(),
            )
            .await
            .unwrap();
        let plan = out.plan.unwrap();
        let (file, json) = (&plan.file.bytes, &plan.json);
        assert_eq!(
            self.upload(grant.job_id, lease, "plan_file", file, &sha256_hex(file))
                .await,
            204
        );
        assert_eq!(
            self.upload(grant.job_id, lease, "plan_json", json, &sha256_hex(json))
                .await,
            204
        );
        let done = Outcome::Succeeded { changes: false };
        assert_eq!(
            self.complete(grant.job_id, lease, done, &out.text).await,
            204
        );
        beat.abort();
        out.text
    }
}

/// The job spec an agent builds from its grant.
fn spec(app: &TestApp, grant: &JobGrant, phase: JobPhase) -> JobSpec {
    let var = |name: &str, value: String, sensitive: bool| EnvVar {
        name: name.into(),
        value,
        sensitive,
    };
    let backend = grant
        .backend
        .as_ref()
        .map(|b| BackendConfig::http(&app.url(&b.path), &b.username, &b.password));
    JobSpec {
        run_id: grant.run_id,
        workspace: grant.workspace.clone(),
        phase,
        commit: grant.commit.clone(),
        dir: grant.dir.clone(),
        variables: grant
            .variables
            .iter()
            .map(|v| var(&v.name, v.value.clone(), v.sensitive))
            .collect(),
        backend,
        timeout: Duration::from_millis(grant.timeout_ms),
    }
}

fn unpack(tar_gz: &[u8], dest: &Path) {
    gantry::runner::archive::unpack(tar_gz, dest).unwrap();
}

async fn run_json(app: &TestApp, id: i64) -> Value {
    app.api(&format!("/api/runs/{id}")).await
}

async fn run_of(app: &TestApp, workspace: &str) -> Value {
    wait_until(Duration::from_secs(60), || async {
        app.runs()
            .await
            .into_iter()
            .find(|r| r["workspace"] == workspace)
    })
    .await
}

/// PR 7 changing `dns` (in pool blue) and `network` (no pool): the head's
/// files, base and head.
pub(crate) fn dns_and_network_pr(env: &TestEnv) -> (BTreeMap<String, String>, Oid, Oid) {
    env.origin.standard_change(
        vec![
            ("dns/main.tf", null_config("dns-v2")),
            (
                "network/main.tf",
                format!("{}\n# wider\n", standard_files()["network/main.tf"]),
            ),
        ],
        "dns and network",
        &["refs/heads/feature", "refs/pull/7/head"],
    )
}

#[tokio::test]
async fn a_pool_workspace_runs_on_an_agent_of_its_pool_and_no_other() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = dns_and_network_pr(&env);
        let app = env.spawn_app(&pools_yaml(&env, "", false)).await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        assert_eq!(
            app.send_webhook("pull_request", "d-1", &body)
                .await
                .status(),
            202
        );

        // No agent of blue was ever seen: the run says it waits for one.
        let dns = wait_until(Duration::from_secs(60), || async {
            let r = run_of(&app, "dns").await;
            (r["waiting_for"] == "an agent of pool blue").then_some(r)
        })
        .await;
        let id = dns["id"].as_i64().unwrap();
        assert_eq!(dns["state"], "planning", "{db:?}: {dns}");
        env.wait_for_comment(7, "waiting for an agent of pool blue")
            .await;
        env.wait_for_final_status_or_pending(
            &head.to_string(),
            "gantry/dns",
            "Waiting for an agent of pool blue",
        )
        .await;

        // The workspace with no pool ran locally meanwhile.
        let network = wait_until(Duration::from_secs(120), || async {
            let r = run_of(&app, "network").await;
            (r["state"] == "planned").then_some(r)
        })
        .await;
        assert_eq!(network["runner"], "local", "{db:?}: {network}");

        // Tokens open only their own endpoints.
        let blue = ScriptedAgent::new(&app, BLUE_POOL_TOKEN, "blue-1");
        let green = ScriptedAgent::new(&app, GREEN_POOL_TOKEN, "green-1");
        let wrong = ScriptedAgent::new(&app, "not-a-pool-token-at-all", "blue-1");
        assert_eq!(wrong.claim_response().await.status(), 401);
        let api_as_agent = ScriptedAgent::new(&app, API_TOKEN, "blue-1");
        assert_eq!(api_as_agent.claim_response().await.status(), 401);
        let runs_with_pool_token = app
            .client
            .get(app.url("/api/runs"))
            .bearer_auth(BLUE_POOL_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(runs_with_pool_token.status(), 401);

        // A green agent asking meanwhile never gets blue's job.
        let green_claim = {
            let green = green.clone();
            tokio::spawn(async move { green.claim_response().await.status() })
        };
        let grant = blue.claim().await;
        assert_eq!((grant.run_id, grant.workspace.as_str()), (id, "dns"));
        assert_eq!(grant.job, JobKind::Plan);
        assert_eq!(grant.dir, "dns");
        assert_eq!(grant.commit, head.to_string());
        let names: Vec<&str> = grant.variables.iter().map(|v| v.name.as_str()).collect();
        assert!(names.contains(&"PLAN_VISIBLE"), "{names:?}");
        assert!(
            !names.contains(&"APPLY_ONLY_SECRET"),
            "a plan job got an apply-only variable: {names:?}"
        );
        let backend = grant.backend.clone().expect("gantry keeps dns's state");
        assert_eq!(backend.path, "/state/v1/dns");
        // The plan's backend token may read, never write.
        let write = app
            .client
            .post(app.url(&backend.path))
            .basic_auth(&backend.username, Some(&backend.password))
            .body(r#"{"version":4,"serial":9,"lineage":"x","resources":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), 403, "{db:?}");
        let running = run_json(&app, id).await;
        assert_eq!(running["runner"], "agent:blue/blue-1", "{running}");
        assert_eq!(running["waiting_for"], Value::Null);

        // Green can do nothing with blue's job, even with its lease.
        let (job, lease) = (grant.job_id, grant.lease_token.as_str());
        for (method, path) in [
            (Method::GET, "source"),
            (Method::GET, "plan"),
            (Method::POST, "heartbeat"),
        ] {
            let r = green.call(method, job, path, Some(lease)).await;
            assert_eq!(r.status(), 404, "green {path}");
        }
        assert_eq!(green.log(job, Some(lease), 0, "x").await, 404);
        assert_eq!(
            green
                .upload(job, Some(lease), "plan_file", b"x", &sha256_hex(b"x"))
                .await,
            404
        );
        assert_eq!(
            green
                .complete(job, Some(lease), Outcome::Canceled, "")
                .await,
            404
        );
        // Nor can another blue agent, or blue without the lease.
        let other_blue = ScriptedAgent::new(&app, BLUE_POOL_TOKEN, "blue-2");
        assert_eq!(other_blue.heartbeat(job, lease).await, 404);
        assert_eq!(
            blue.call(Method::GET, job, "source", None).await.status(),
            409
        );
        assert_eq!(
            blue.upload(job, None, "plan_file", b"x", &sha256_hex(b"x"))
                .await,
            409
        );

        // A log chunk sent twice is stored once.
        assert_eq!(
            blue.log(job, Some(lease), 0, "scripted agent: started\n")
                .await,
            204
        );
        assert_eq!(
            blue.log(job, Some(lease), 0, "scripted agent: started\n")
                .await,
            204
        );
        // An upload whose hash does not match is refused and stores nothing.
        let bad = blue
            .upload(
                job,
                Some(lease),
                "plan_file",
                b"plan",
                &sha256_hex(b"other"),
            )
            .await;
        assert_eq!(bad, 400);
        let stored = app
            .ctx
            .store
            .agent_artifact(job, "plan_file")
            .await
            .unwrap();
        assert!(stored.is_none(), "{db:?}");

        let work = env.dir.path().join("agent-blue-1");
        let text = blue.plan(&app, &grant, &work).await;
        assert!(text.contains("Plan: 1 to add"), "{text}");

        let run = wait_until(Duration::from_secs(60), || async {
            let r = run_json(&app, id).await;
            (r["state"] == "planned").then_some(r)
        })
        .await;
        assert_eq!(run["runner"], "agent:blue/blue-1", "{db:?}: {run}");
        assert_eq!(run["plan"], json!({"add": 1, "change": 0, "destroy": 0}));
        assert!(run["plan_sha256"].is_string());
        let log = app.run_log(id).await;
        assert_eq!(log.matches("scripted agent: started").count(), 1, "{log}");
        let status = env
            .wait_for_final_status(&head.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "success", "{status}");
        let comment = env.wait_for_comment(7, "Plan: 1 to add").await;
        assert!(!comment.contains("waiting for an agent"), "{comment}");

        // The job is over: its agent's lease with it.
        assert_eq!(blue.heartbeat(job, lease).await, 409);
        let agents = app.api("/api/agents").await;
        let listed = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "blue-1")
            .cloned()
            .unwrap_or_else(|| panic!("{agents}"));
        assert_eq!(
            (listed["pool"].as_str(), listed["live"].as_bool()),
            (Some("blue"), Some(true))
        );
        assert_eq!(listed["version"], "0.1.0-test");
        assert_eq!(green_claim.await.unwrap(), StatusCode::NO_CONTENT, "{db:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_vanished_agent_s_plan_is_retried_once_and_its_apply_never() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env
            .origin
            .commit(&standard_files(), &[], "initial", &["refs/heads/main"]);
        let app = env
            .spawn_app(&pools_yaml(&env, "queue:\n  lease: 2s\n", true))
            .await;
        let mut files = standard_files();
        files.insert("dns/main.tf".into(), null_config("dns-v2"));
        let sha = env
            .origin
            .commit(&files, &[base], "Merge", &["refs/heads/main"]);
        env.github.set_commit_pr(&sha.to_string(), 7);
        let push = push_payload("main", &base.to_string(), &sha.to_string());
        assert_eq!(
            app.send_webhook("push", "merge-1", &push).await.status(),
            202
        );

        // Agent A takes the plan and vanishes: after its lease, agent B gets it.
        let a = ScriptedAgent::new(&app, BLUE_POOL_TOKEN, "blue-a");
        let b = ScriptedAgent::new(&app, BLUE_POOL_TOKEN, "blue-b");
        let first = a.claim().await;
        assert_eq!(first.job, JobKind::Plan);
        let id = first.run_id;
        let again = b.claim().await;
        // B keeps its lease from the moment it has the job (a loaded machine
        // may take longer than the 2 s lease to reach B's plan).
        let b_alive = b.keep_alive(&again);
        assert_eq!((again.job_id, again.run_id), (first.job_id, id), "{db:?}");
        assert_ne!(again.lease_token, first.lease_token);
        // A's late writes change nothing: the job is B's now.
        let stale = Some(first.lease_token.as_str());
        assert_eq!(a.heartbeat(first.job_id, &first.lease_token).await, 404);
        assert_eq!(a.log(first.job_id, stale, 0, "late\n").await, 404);
        let late = Outcome::Succeeded { changes: false };
        assert_eq!(a.complete(first.job_id, stale, late, "").await, 404);
        let work = env.dir.path().join("agent-blue-b");
        b.plan(&app, &again, &work).await;
        b_alive.abort();

        // The apply (auto_apply) goes to A, which takes the plan and vanishes.
        let apply = a.claim().await;
        assert_eq!(apply.run_id, id);
        // Its scratch is fresh: the agent runs `init` before applying.
        assert_eq!(apply.job, JobKind::Apply { init: true });
        let names: Vec<&str> = apply.variables.iter().map(|v| v.name.as_str()).collect();
        assert!(names.contains(&"APPLY_ONLY_SECRET"), "{names:?}");
        let plan = a
            .call(Method::GET, apply.job_id, "plan", Some(&apply.lease_token))
            .await;
        assert_eq!(plan.status(), 200);
        let bytes = plan.bytes().await.unwrap();
        assert_eq!(Some(sha256_hex(&bytes)), apply.plan_sha256);

        let run = wait_until(Duration::from_secs(60), || async {
            let r = run_json(&app, id).await;
            (r["state"] == "errored").then_some(r)
        })
        .await;
        assert_eq!(
            run["state_reason"], "interrupted during apply",
            "{db:?}: {run}"
        );
        assert_eq!(run["failure"], "interrupted_apply");
        let dns = app.workspace("dns").await;
        let lock = dns["lock"]["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{dns}"));
        assert!(lock.contains("interrupted during apply"), "{lock}");
        // Never applied twice: the job is lost, nothing of the pool is queued.
        assert_eq!(a.heartbeat(apply.job_id, &apply.lease_token).await, 409);
        let queued: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_jobs WHERE state IN ('queued', 'running')",
        )
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap();
        assert_eq!(queued, 0, "{db:?}");
        let state: String = sqlx::query_scalar("SELECT state FROM agent_jobs WHERE id = $1")
            .bind(apply.job_id)
            .fetch_one(app.ctx.store.pool())
            .await
            .unwrap();
        assert_eq!(state, "lost");
        app.stop().await;
    }
}
