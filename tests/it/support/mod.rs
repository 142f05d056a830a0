//! Test harness: a real app on port 0 with a temp data dir, a real git origin
//! made with git2, real terraform, a fake GitHub API that records requests, and
//! a fresh database (SQLite, or PostgreSQL when `GANTRY_TEST_POSTGRES_URL` is set).

#![allow(dead_code)]

pub mod fake_api;
pub mod fake_github;
pub mod origin;
pub mod replica;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry::{App, Config};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::oneshot;

pub use fake_github::FakeGitHub;
pub use origin::Origin;

pub const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
pub const API_TOKEN: &str = "api-token-for-tests";
pub const GITHUB_TOKEN: &str = "ghp_testtoken0000000000";
/// The tokens of the agent pools `blue` and `green` (`BLUE_POOL_TOKEN`,
/// `GREEN_POOL_TOKEN`).
pub const BLUE_POOL_TOKEN: &str = "blue-pool-token-for-tests";
pub const GREEN_POOL_TOKEN: &str = "green-pool-token-for-tests";

/// Which database a test runs against.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    Postgres(String),
}

/// SQLite always; PostgreSQL too when `GANTRY_TEST_POSTGRES_URL` is set.
pub fn databases() -> Vec<Db> {
    let mut out = vec![Db::Sqlite];
    match std::env::var("GANTRY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => out.push(Db::Postgres(url)),
        _ => eprintln!("GANTRY_TEST_POSTGRES_URL not set: this test runs on SQLite only"),
    }
    out
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_postgres(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("gantry_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to GANTRY_TEST_POSTGRES_URL");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The terraform binary tests use: `GANTRY_TEST_TERRAFORM`, else `.tools/bin/terraform`.
pub fn terraform_bin() -> String {
    if let Ok(t) = std::env::var("GANTRY_TEST_TERRAFORM") {
        return t;
    }
    let local = repo_root().join(".tools/bin/terraform");
    assert!(
        local.exists(),
        "terraform not found: run scripts/install-terraform (or scripts/test)"
    );
    local.display().to_string()
}

pub fn terraform_rc() -> PathBuf {
    std::env::var("TF_CLI_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".tools/terraformrc"))
}

/// Everything one test needs on disk and on the network.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub origin: Origin,
    pub github: FakeGitHub,
    pub db_url: String,
}

impl TestEnv {
    pub async fn new(db: &Db) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        // Sandboxed terraform runs as `nobody` when the tests run as root: it
        // must be able to reach the run directories under the data dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let origin = Origin::new(&dir.path().join("origin"), "acme/infra");
        let github = FakeGitHub::start().await;
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}/gantry.db", dir.path().join("data").display()),
            Db::Postgres(admin) => fresh_postgres(admin).await,
        };
        TestEnv {
            dir,
            origin,
            github,
            db_url,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gantry.yaml")
    }

    /// A config with the given workspaces YAML (a list) and options.
    pub fn config_yaml(
        &self,
        workspaces: &str,
        concurrency: usize,
        listen: &str,
        terraform_bin: &str,
    ) -> String {
        format!(
            r#"listen: "{listen}"
data_dir: "{data}"
database_url: "{db}"
concurrency: {concurrency}
api_token_env: GANTRY_API_TOKEN
public_url: http://gantry.test
terraform:
  bin: "{tf}"
  cli_config_file: "{rc}"
  timeout: 5m
runner:
  allow_read: ["{tools}"]
providers:
  - id: github
    kind: github
    api_url: "{api}"
    git_url: "{git}"
    token_env: GITHUB_TOKEN
    webhook_secret_env: GITHUB_WEBHOOK_SECRET
workspaces:
{workspaces}"#,
            data = self.data_dir().display(),
            db = self.db_url,
            tf = terraform_bin,
            tools = Path::new(&self::terraform_bin())
                .parent()
                .unwrap()
                .display(),
            rc = terraform_rc().display(),
            api = self.github.url(),
            git = self.origin.url_template(),
        )
    }

    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let p = self.config_path();
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn load_config(&self, yaml: &str) -> Config {
        let p = self.write_config(yaml);
        Config::load(&p, &test_env_lookup).unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
    }

    /// The standard workspaces: `network` (uses modules/vpc), `app` (uses
    /// modules/vpc through modules/service), `dns` (no modules).
    pub fn standard_workspaces() -> &'static str {
        r#"  - name: network
    environment: production
    provider: github
    repo: acme/infra
    dir: network
  - name: app
    environment: production
    provider: github
    repo: acme/infra
    dir: app
  - name: dns
    environment: staging
    provider: github
    repo: acme/infra
    dir: dns
    trigger_patterns: ["shared/dns/**"]
"#
    }

    /// `yaml` for another replica on the same database: its own `data_dir`
    /// (under this env's directory) and node id.
    pub fn replica_yaml(&self, yaml: &str, node: &str) -> String {
        let own = self.dir.path().join(format!("data-{node}"));
        let replaced = yaml.replace(
            &format!("data_dir: \"{}\"", self.data_dir().display()),
            &format!("data_dir: \"{}\"", own.display()),
        );
        assert_ne!(replaced, yaml, "the config names this env's data_dir");
        format!("node_id: {node}\n{replaced}")
    }

    pub async fn spawn_app(&self, yaml: &str) -> TestApp {
        let config = self.load_config(yaml);
        TestApp::spawn(config).await
    }
}

pub fn test_env_lookup(name: &str) -> Option<String> {
    match name {
        "GANTRY_API_TOKEN" => Some(API_TOKEN.into()),
        "GITHUB_TOKEN" => Some(GITHUB_TOKEN.into()),
        "GITHUB_WEBHOOK_SECRET" | "VCS_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.into()),
        "VCS_TOKEN" => Some("vcs-token-for-tests".into()),
        "BLUE_POOL_TOKEN" => Some(BLUE_POOL_TOKEN.into()),
        "GREEN_POOL_TOKEN" => Some(GREEN_POOL_TOKEN.into()),
        "PATH" | "HOME" => std::env::var(name).ok(),
        // The sandbox helper is gantry's, not this test binary.
        gantry::runner::sandbox::HELPER_ENV => Some(env!("CARGO_BIN_EXE_gantry-sandbox").into()),
        _ => None,
    }
}

/// A running app.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub ctx: Arc<gantry::app::Ctx>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(config: Config) -> TestApp {
        Self::spawn_with(config, false).await
    }

    /// With the config file watched for edits, as `gantry serve` runs.
    pub async fn spawn_watching(config: Config) -> TestApp {
        Self::spawn_with(config, true).await
    }

    async fn spawn_with(config: Config, watch: bool) -> TestApp {
        let mut app = App::build(config, Arc::new(test_env_lookup)).await.unwrap();
        if !watch {
            app = app.without_config_watch();
        }
        let addr = app.local_addr();
        let ctx = app.ctx();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            ctx,
            stop: Some(tx),
            handle: Some(handle),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub async fn send_webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.send_webhook_signed(event, delivery, body, &sign(WEBHOOK_SECRET, body))
            .await
    }

    pub async fn send_webhook_signed(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: &str,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/webhooks/github"))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn api(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// The run's log (`GET /api/runs/{id}/log`).
    pub async fn run_log(&self, id: i64) -> String {
        let r = self
            .client
            .get(self.url(&format!("/api/runs/{id}/log")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The workspace `name` as `GET /api/workspaces` lists it (with its lock).
    pub async fn workspace(&self, name: &str) -> Value {
        let listed = self.api("/api/workspaces").await;
        listed["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no workspace {name}: {listed}"))
    }

    pub async fn runs(&self) -> Vec<Value> {
        self.api("/api/runs?limit=500").await["runs"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until every run is finished and there is at least `min` of them.
    pub async fn wait_for_runs_done(&self, min: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(120), || async {
            let runs = self.runs().await;
            let done = runs.len() >= min
                && runs.iter().all(|r| {
                    matches!(
                        r["state"].as_str(),
                        Some(
                            "planned"
                                | "needs_confirmation"
                                | "applied"
                                | "errored"
                                | "superseded"
                                | "canceled"
                        )
                    )
                });
            done.then_some(runs)
        })
        .await
    }

    /// Waits until every stored event has been dispatched.
    pub async fn wait_for_dispatch(&self) {
        let store = self.ctx.store.clone();
        wait_until(Duration::from_secs(60), || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM events WHERE state IN ('pending', 'dispatching')",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            (pending == 0).then_some(())
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GitHub sample payload from `webhooks/github/`, with fields replaced.
pub fn payload(name: &str, edits: &[(&str, Value)]) -> Vec<u8> {
    let path = repo_root().join("webhooks/github").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: Value = serde_json::from_str(&text).unwrap();
    for (pointer, value) in edits {
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{name} has no {pointer}")) = value.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A `pull_request` payload for PR 7 of acme/infra at `head`, based on `base`.
pub fn pr_payload(action: &str, head: &str, base_sha: &str) -> Vec<u8> {
    let file = match action {
        "opened" => "pull_request.opened.json",
        "synchronize" => "pull_request.synchronize.json",
        "reopened" => "pull_request.reopened.json",
        "closed" => "pull_request.closed.json",
        other => panic!("no sample for {other}"),
    };
    payload(
        file,
        &[
            ("/pull_request/head/sha", Value::String(head.into())),
            ("/pull_request/base/sha", Value::String(base_sha.into())),
            ("/pull_request/base/ref", Value::String("main".into())),
        ],
    )
}

pub fn push_payload(branch: &str, before: &str, after: &str) -> Vec<u8> {
    payload(
        "push.json",
        &[
            ("/ref", Value::String(format!("refs/heads/{branch}"))),
            ("/before", Value::String(before.into())),
            ("/after", Value::String(after.into())),
        ],
    )
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn count(map: &HashMap<String, usize>, k: &str) -> usize {
    map.get(k).copied().unwrap_or(0)
}

impl TestEnv {
    /// Waits until `sha` has a non-pending status for `context` (reports are
    /// posted just after the run's state is stored).
    pub async fn wait_for_final_status(&self, sha: &str, context: &str) -> Value {
        wait_until(Duration::from_secs(60), || async {
            let last = self
                .github
                .statuses(sha)
                .into_iter()
                .rev()
                .find(|s| s["context"] == context)?;
            (last["state"] != "pending").then_some(last)
        })
        .await
    }

    /// Waits until the PR's gantry comment contains `needle`; returns its text.
    pub async fn wait_for_comment(&self, pr: u64, needle: &str) -> String {
        wait_until(Duration::from_secs(60), || async {
            self.github
                .comments(pr)
                .into_iter()
                .map(|(_, b)| b)
                .find(|b| b.contains(needle))
        })
        .await
    }
}

impl TestEnv {
    /// The standard workspaces, concurrency 2, port 0, the test terraform.
    pub fn default_yaml(&self) -> String {
        self.config_yaml(
            TestEnv::standard_workspaces(),
            2,
            "127.0.0.1:0",
            &terraform_bin(),
        )
    }
}

impl TestEnv {
    /// Waits until the newest status of `context` on `sha` is final, or pending
    /// with a description containing `pending_text`.
    pub async fn wait_for_final_status_or_pending(
        &self,
        sha: &str,
        context: &str,
        pending_text: &str,
    ) -> Value {
        wait_until(Duration::from_secs(60), || async {
            let last = self
                .github
                .statuses(sha)
                .into_iter()
                .rev()
                .find(|s| s["context"] == context)?;
            let done =
                last["state"] != "pending" || last["description"].as_str()?.contains(pending_text);
            done.then_some(last)
        })
        .await
    }
}
