//! `gantry agent` against a small fake server that speaks the protocol
//! (`runner::protocol`): real terraform on a real checkout packed with
//! `runner::archive::pack`; the agent runs as a library call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gantry::agent::{Backoff, Options};
use gantry::runner::protocol::{
    ClaimRequest, Heartbeat, JobGrant, JobKind, JobResult, LogChunk, Outcome, Variable,
    AGENT_NAME_HEADER, LEASE_HEADER, SHA256_HEADER,
};
use tokio_util::sync::CancellationToken;

use crate::support::origin::{null_config, write_script};
use crate::support::*;

const POOL_TOKEN: &str = "pool-token-blue-0123456789";
const SECRET: &str = "hunter2-sensitive-value";

/// How the fake answers heartbeats.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Beat {
    Renew,
    Cancel,
    Conflict,
}

#[derive(Default)]
struct Fake {
    queue: VecDeque<JobGrant>,
    grants: HashMap<i64, JobGrant>,
    sources: HashMap<i64, Vec<u8>>,
    /// Apply jobs' plan files.
    plans: HashMap<i64, Vec<u8>>,
    beat: HashMap<i64, Beat>,
    heartbeats: HashMap<i64, usize>,
    /// Stored once per seq, as the server does.
    logs: HashMap<i64, BTreeMap<u64, String>>,
    /// Log posts the fake refuses with 503 before it takes one.
    log_failures: usize,
    artifacts: HashMap<(i64, String), Vec<u8>>,
    completions: HashMap<i64, JobResult>,
    claims: Vec<ClaimRequest>,
}

type Shared = Arc<Mutex<Fake>>;

struct FakeServer {
    url: url::Url,
    state: Shared,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let state = Shared::default();
        let app = Router::new()
            .route("/api/agent/claim", post(claim))
            .route("/api/agent/jobs/{id}/source", get(source))
            .route("/api/agent/jobs/{id}/plan", get(plan))
            .route("/api/agent/jobs/{id}/heartbeat", post(heartbeat))
            .route("/api/agent/jobs/{id}/log", post(log))
            .route("/api/agent/jobs/{id}/artifacts/{name}", put(artifact))
            .route("/api/agent/jobs/{id}/complete", post(complete))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeServer {
            url: format!("http://{addr}").parse().unwrap(),
            state,
        }
    }

    fn offer(&self, grant: JobGrant, source: Vec<u8>, beat: Beat) {
        let mut s = self.state.lock().unwrap();
        s.sources.insert(grant.job_id, source);
        s.beat.insert(grant.job_id, beat);
        s.grants.insert(grant.job_id, grant.clone());
        s.queue.push_back(grant);
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn log_text(&self, job: i64) -> String {
        self.with(|s| s.logs.get(&job).map(|l| l.values().cloned().collect()))
            .unwrap_or_default()
    }

    async fn wait_for_completion(&self, job: i64) -> JobResult {
        wait_until(Duration::from_secs(120), || async {
            self.with(|s| s.completions.get(&job).cloned())
        })
        .await
    }
}

/// The pool token and agent name on every call; the lease on a job's calls.
fn check(s: &Fake, headers: &HeaderMap, job: Option<i64>) -> Result<(), StatusCode> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization") != Some(&format!("Bearer {POOL_TOKEN}")) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    if header(AGENT_NAME_HEADER) != Some("agent-1") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if let Some(job) = job {
        let grant = s.grants.get(&job).ok_or(StatusCode::NOT_FOUND)?;
        if header(LEASE_HEADER) != Some(grant.lease_token.as_str()) {
            return Err(StatusCode::CONFLICT);
        }
        if s.beat.get(&job) == Some(&Beat::Conflict) {
            return Err(StatusCode::CONFLICT);
        }
    }
    Ok(())
}

async fn claim(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<ClaimRequest>,
) -> Response {
    // A short long poll: the tests wait on the agent, not on the fake.
    for _ in 0..5 {
        {
            let mut s = s.lock().unwrap();
            if let Err(code) = check(&s, &headers, None) {
                return code.into_response();
            }
            s.claims.push(req.clone());
            if let Some(grant) = s.queue.pop_front() {
                return Json(grant).into_response();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn source(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Response {
    let s = s.lock().unwrap();
    match check(&s, &headers, Some(id)) {
        Ok(()) => s.sources[&id].clone().into_response(),
        Err(code) => code.into_response(),
    }
}

async fn plan(State(s): State<Shared>, headers: HeaderMap, UrlPath(id): UrlPath<i64>) -> Response {
    let s = s.lock().unwrap();
    match check(&s, &headers, Some(id)) {
        Ok(()) => s.plans[&id].clone().into_response(),
        Err(code) => code.into_response(),
    }
}

async fn heartbeat(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Response {
    let mut s = s.lock().unwrap();
    *s.heartbeats.entry(id).or_default() += 1;
    match check(&s, &headers, Some(id)) {
        Ok(()) => Json(Heartbeat {
            cancel: s.beat[&id] == Beat::Cancel,
        })
        .into_response(),
        Err(code) => code.into_response(),
    }
}

async fn log(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
    Json(chunk): Json<LogChunk>,
) -> Response {
    let mut s = s.lock().unwrap();
    if let Err(code) = check(&s, &headers, Some(id)) {
        return code.into_response();
    }
    if s.log_failures > 0 {
        s.log_failures -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.logs.entry(id).or_default().insert(chunk.seq, chunk.text);
    StatusCode::NO_CONTENT.into_response()
}

async fn artifact(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath((id, name)): UrlPath<(i64, String)>,
    body: Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    if let Err(code) = check(&s, &headers, Some(id)) {
        return code.into_response();
    }
    let claimed = headers.get(SHA256_HEADER).and_then(|v| v.to_str().ok());
    if claimed != Some(gantry::store::sha256_hex(&body).as_str()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    s.artifacts.insert((id, name), body.to_vec());
    StatusCode::NO_CONTENT.into_response()
}

async fn complete(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
    Json(result): Json<JobResult>,
) -> Response {
    let mut s = s.lock().unwrap();
    if let Err(code) = check(&s, &headers, Some(id)) {
        return code.into_response();
    }
    s.completions.insert(id, result);
    StatusCode::NO_CONTENT.into_response()
}

/// A real repository with a null_resource workspace in `net/` that uses a
/// sensitive variable, plus whatever `extra` adds to it; packed as the
/// server packs a checkout.
fn packed_repo(dir: &Path, extra: &str) -> Vec<u8> {
    let repo = dir.join("repo");
    git2::Repository::init(&repo).unwrap();
    let main = format!(
        "{}\nvariable \"password\" {{}}\noutput \"echo\" {{ value = var.password }}\n{extra}",
        null_config("agent")
    );
    write_file(&repo.join("net/main.tf"), &main);
    write_file(&repo.join("README.md"), "# infra\n");
    gantry::runner::archive::pack(&repo).unwrap()
}

fn grant(job_id: i64, run_id: i64, kind: JobKind, lease_ms: u64) -> JobGrant {
    JobGrant {
        job_id,
        lease_token: format!("lease-{job_id}"),
        lease_ms,
        run_id,
        workspace: "net".into(),
        job: kind,
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        dir: "net".into(),
        variables: vec![Variable {
            name: "TF_VAR_password".into(),
            value: SECRET.into(),
            sensitive: true,
        }],
        backend: None,
        timeout_ms: 300_000,
        terraform: "terraform".into(),
        plan_sha256: None,
    }
}

fn options(server: &FakeServer, work: &Path, terraform: &str) -> Options {
    let mut o = Options::new(
        server.url.clone(),
        "blue",
        POOL_TOKEN.to_string().into(),
        "agent-1",
    );
    o.work_dir = work.to_path_buf();
    o.terraform = Some(terraform.into());
    o.path = std::env::var("PATH").unwrap_or_default();
    o.cli_config_file = Some(terraform_rc());
    o.backoff = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(300),
        times: 5,
    };
    o.log_every = Duration::from_millis(200);
    o
}

/// A terraform that says so and sleeps before planning: a job to stop.
fn slow_terraform(dir: &Path) -> PathBuf {
    let wrapper = dir.join("slow-terraform");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = plan ]; then echo planning-slowly; sleep 60; fi\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    wrapper
}

/// An agent whose terraform sleeps in `plan`, running job `job` of run
/// `run`; returned once the plan has started.
struct SlowPlan {
    dir: tempfile::TempDir,
    server: FakeServer,
    work: PathBuf,
    drain: CancellationToken,
    agent: tokio::task::JoinHandle<Result<(), gantry::agent::AgentError>>,
}

async fn slow_plan(job: i64, run: i64, lease_ms: u64) -> SlowPlan {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    server.offer(
        grant(job, run, JobKind::Plan, lease_ms),
        packed_repo(dir.path(), ""),
        Beat::Renew,
    );
    let work = dir.path().join("agent");
    let slow = slow_terraform(dir.path());
    let drain = CancellationToken::new();
    let agent = tokio::spawn(gantry::agent::run(
        options(&server, &work, &slow.display().to_string()),
        drain.clone(),
    ));
    wait_until(Duration::from_secs(60), || async {
        server
            .log_text(job)
            .contains("planning-slowly")
            .then_some(())
    })
    .await;
    SlowPlan {
        dir,
        server,
        work,
        drain,
        agent,
    }
}

fn scratch(work: &Path, run_id: i64) -> PathBuf {
    work.join("work").join(format!("run-{run_id}"))
}

#[tokio::test]
async fn an_agent_plans_with_real_terraform_and_reports_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    server.offer(
        grant(1, 41, JobKind::Plan, 30_000),
        packed_repo(dir.path(), ""),
        Beat::Renew,
    );
    // The first log post fails: it is sent again with the same seq.
    server.with(|s| s.log_failures = 1);
    let work = dir.path().join("agent");
    let drain = CancellationToken::new();
    let agent = tokio::spawn(gantry::agent::run(
        options(&server, &work, &terraform_bin()),
        drain.clone(),
    ));

    let done = server.wait_for_completion(1).await;
    assert_eq!(
        done.outcome,
        Outcome::Succeeded { changes: false },
        "{done:?}"
    );
    assert!(done.text.contains("null_resource.this"), "{}", done.text);

    let (file, json) = server.with(|s| {
        (
            s.artifacts.get(&(1, "plan_file".into())).cloned(),
            s.artifacts.get(&(1, "plan_json".into())).cloned(),
        )
    });
    let file = file.expect("the plan file was uploaded (its sha256 checked)");
    assert!(file.starts_with(b"PK"), "a saved plan is a zip file");
    let json: serde_json::Value = serde_json::from_slice(&json.expect("plan JSON")).unwrap();
    assert_eq!(
        json["resource_changes"][0]["address"], "null_resource.this",
        "{json}"
    );

    let log = server.log_text(1);
    let seqs: Vec<u64> = server.with(|s| s.logs[&1].keys().copied().collect());
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    assert!(
        log.contains("init -input=false") && log.contains("plan -input=false"),
        "{log}"
    );
    for (what, text) in [("log", &log), ("text", &done.text)] {
        assert!(
            !text.contains(SECRET),
            "the {what} carries the secret:\n{text}"
        );
    }
    assert!(
        !json.to_string().contains(SECRET),
        "the plan JSON is redacted"
    );
    assert!(server.with(|s| s.heartbeats.get(&1).copied().unwrap_or(0)) >= 1);

    let claim = server.with(|s| s.claims[0].clone());
    assert_eq!(claim.version, env!("CARGO_PKG_VERSION"));
    assert_eq!((claim.free, claim.running.len()), (1, 0));
    // The scratch goes with the job.
    wait_until(Duration::from_secs(10), || async {
        (!scratch(&work, 41).exists()).then_some(())
    })
    .await;
    drain.cancel();
    agent.await.unwrap().expect("a drained agent exits cleanly");
}

#[tokio::test]
async fn a_lost_lease_stops_terraform_and_drops_the_job() {
    let SlowPlan {
        dir: _dir,
        server,
        work,
        drain,
        agent,
    } = slow_plan(2, 42, 900).await;
    let lost_at = Instant::now();
    server.with(|s| s.beat.insert(2, Beat::Conflict));
    // The job ends: its scratch is deleted, the next claim runs nothing.
    wait_until(Duration::from_secs(30), || async {
        (!scratch(&work, 42).exists()).then_some(())
    })
    .await;
    assert!(
        lost_at.elapsed() < Duration::from_secs(30),
        "terraform was stopped"
    );
    assert!(
        server.with(|s| !s.completions.contains_key(&2)),
        "a lost job is not completed"
    );
    wait_until(Duration::from_secs(10), || async {
        server
            .with(|s| {
                s.claims
                    .last()
                    .is_some_and(|c| c.running.is_empty() && c.free == 1)
            })
            .then_some(())
    })
    .await;
    drain.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancel_heartbeat_stops_terraform_and_completes_canceled() {
    let SlowPlan {
        dir: _dir,
        server,
        work,
        drain,
        agent,
    } = slow_plan(3, 43, 900).await;
    let asked = Instant::now();
    server.with(|s| s.beat.insert(3, Beat::Cancel));
    let done = server.wait_for_completion(3).await;
    assert_eq!(done.outcome, Outcome::Canceled);
    assert!(!scratch(&work, 43).exists(), "deleted before completing");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "terraform was stopped"
    );
    assert!(server.with(|s| !s.artifacts.contains_key(&(3, "plan_file".into()))));
    assert!(
        server.log_text(3).contains("gantry: canceled"),
        "{}",
        server.log_text(3)
    );
    drain.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test]
async fn draining_hands_a_running_plan_back_and_exits() {
    let SlowPlan {
        dir,
        server,
        work,
        drain,
        agent,
    } = slow_plan(4, 44, 30_000).await;
    // Queued behind it: a draining agent claims nothing more.
    server.offer(
        grant(5, 45, JobKind::Plan, 30_000),
        packed_repo(&dir.path().join("second"), ""),
        Beat::Renew,
    );
    let drained = Instant::now();
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent exits once the plan is handed back")
        .unwrap()
        .unwrap();
    assert!(drained.elapsed() < Duration::from_secs(30));
    let done = server
        .with(|s| s.completions.get(&4).cloned())
        .expect("completed");
    assert_eq!(done.outcome, Outcome::HandedBack);
    assert!(server.with(|s| s.queue.len() == 1 && !s.completions.contains_key(&5)));
    assert!(!scratch(&work, 44).exists());
}

/// Where the host allows a sandbox (as `serve` requires by default), the
/// agent's terraform runs in it: it can read neither `/proc` nor a file of
/// the agent's host outside its own directories.
#[tokio::test]
async fn a_sandboxed_agents_terraform_reads_nothing_outside_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("agent");
    let sandbox = match gantry::agent::sandbox(&work, &test_env_lookup).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: this host cannot sandbox terraform: {e:#}");
            return;
        }
    };
    let host_file = dir.path().join("host-secret.txt");
    std::fs::write(&host_file, "host-file-canary").unwrap();
    let probes = format!(
        "output \"proc\" {{ value = try(file(\"/proc/self/status\"), \"denied\") }}\noutput \"host\" {{ value = try(file(\"{}\"), \"denied\") }}\n",
        host_file.display()
    );
    let server = FakeServer::start().await;
    server.offer(
        grant(6, 46, JobKind::Plan, 30_000),
        packed_repo(dir.path(), &probes),
        Beat::Renew,
    );
    let mut o = options(&server, &work, &terraform_bin());
    o.sandbox = Some(sandbox);
    let drain = CancellationToken::new();
    let agent = tokio::spawn(gantry::agent::run(o, drain.clone()));
    let done = server.wait_for_completion(6).await;
    assert_eq!(
        done.outcome,
        Outcome::Succeeded { changes: false },
        "{done:?}"
    );
    for probe in ["proc", "host"] {
        let line = done
            .text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("+ {probe} ")))
            .unwrap_or_else(|| panic!("no {probe} output:\n{}", done.text));
        assert!(line.contains("\"denied\""), "{probe} was read: {line}");
    }
    assert!(!done.text.contains("host-file-canary"));
    drain.cancel();
    agent.await.unwrap().unwrap();
}

/// The plan of one job applied by the next (fetched, hash-checked); a drain
/// while it applies lets the apply finish and report.
#[tokio::test]
async fn draining_lets_a_running_apply_finish() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let source = packed_repo(dir.path(), "");
    server.offer(
        grant(7, 47, JobKind::Plan, 30_000),
        source.clone(),
        Beat::Renew,
    );
    let slow_apply = dir.path().join("slow-apply");
    write_script(
        &slow_apply,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = apply ]; then echo applying-slowly; sleep 3; fi\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    let work = dir.path().join("agent");
    let drain = CancellationToken::new();
    let agent = tokio::spawn(gantry::agent::run(
        options(&server, &work, &slow_apply.display().to_string()),
        drain.clone(),
    ));
    let planned = server.wait_for_completion(7).await;
    assert_eq!(
        planned.outcome,
        Outcome::Succeeded { changes: false },
        "{planned:?}"
    );
    let file = server.with(|s| s.artifacts[&(7, "plan_file".to_string())].clone());

    let mut apply = grant(8, 47, JobKind::Apply { init: true }, 30_000);
    apply.plan_sha256 = Some(gantry::store::sha256_hex(&file));
    server.with(|s| s.plans.insert(8, file));
    server.offer(apply, source, Beat::Renew);
    wait_until(Duration::from_secs(60), || async {
        server.log_text(8).contains("applying-slowly").then_some(())
    })
    .await;
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("the agent exits once the apply is done")
        .unwrap()
        .unwrap();
    let applied = server
        .with(|s| s.completions.get(&8).cloned())
        .expect("completed");
    assert_eq!(
        applied.outcome,
        Outcome::Succeeded { changes: false },
        "{applied:?}"
    );
    assert!(applied.text.contains("Apply complete!"), "{}", applied.text);
    assert!(!applied.text.contains(SECRET), "{}", applied.text);
}
