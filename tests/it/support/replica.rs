//! Replicas as processes: the real `gantry serve` binary started on a known
//! port, signalled and restarted by a test, and reached over HTTP only (it
//! shares no memory with the test), plus in-process replicas beside it.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::origin::write_script;
use super::{
    sign, terraform_bin, test_env_lookup, wait_until, TestApp, TestEnv, API_TOKEN, GITHUB_TOKEN,
    WEBHOOK_SECRET,
};

/// A `listen` address on a port free now, for a process that must be found
/// again at the same address after a restart.
pub fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Starts `gantry serve` with the env's config file and only the environment
/// it names (secrets included), its output discarded.
pub fn start(env: &TestEnv) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--config"])
        .arg(env.config_path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("GANTRY_API_TOKEN", API_TOKEN)
        .env("GITHUB_TOKEN", GITHUB_TOKEN)
        .env("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Writes `yaml` as the env's config, starts `gantry serve` with it, and
/// waits until it is ready at `listen` (the config's `listen`).
pub async fn start_ready(env: &TestEnv, listen: &str, yaml: &str) -> (Child, Remote) {
    env.write_config(yaml);
    let remote = Remote::at(listen);
    let child = start(env);
    remote.wait_ready().await;
    (child, remote)
}

/// Sends SIGTERM to a process the test started (a deploy's stop).
pub fn sigterm(child: &Child) {
    // SAFETY: a signal to the child process this test started.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Waits for the process to exit; panics after `within`.
pub async fn exited(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the process with SIGKILL and reaps it.
pub fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// terraform that sleeps `secs` before `step` (plan or apply), so a signal
/// lands while that step runs; the path of the wrapper.
pub fn slow_terraform(env: &TestEnv, step: &str, secs: u32) -> String {
    let path = env.dir.path().join(format!("slow-{step}"));
    write_script(
        &path,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = {step} ]; then sleep {secs}; fi\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    path.display().to_string()
}

/// An in-process replica on the env's database whose config is written to its
/// own file (`{name}.yaml`): the real binary's config file, which it watches,
/// is left alone.
pub async fn spawn_beside(env: &TestEnv, yaml: &str, name: &str) -> TestApp {
    let path = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    TestApp::spawn(gantry::Config::load(&path, &test_env_lookup).unwrap()).await
}

/// A replica seen from outside, by its base URL: it may be down, restarting
/// or killed while it answers.
pub struct Remote {
    pub client: reqwest::Client,
    pub base: String,
}

impl Remote {
    /// The replica listening on `listen` (`host:port`).
    pub fn at(listen: &str) -> Remote {
        Remote {
            client: reqwest::Client::new(),
            base: format!("http://{listen}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `readyz`'s status, or `None` when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        let r = self.client.get(self.url("/readyz")).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// Waits until `readyz` answers `status`; panics after `within`.
    pub async fn wait_readyz(&self, status: u16, within: Duration) {
        wait_until(within, || async {
            (self.readyz().await? == status).then_some(())
        })
        .await
    }

    /// Waits until the replica is ready (30s at the most).
    pub async fn wait_ready(&self) {
        self.wait_readyz(200, Duration::from_secs(30)).await
    }

    /// A GitHub webhook delivery signed with the test secret, ready to send.
    pub fn webhook(&self, event: &str, delivery: &str, body: &[u8]) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/webhooks/github"))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, body))
            .header("Content-Type", "application/json")
            .body(body.to_vec())
    }

    /// Sends a signed webhook; panics when nothing answers.
    pub async fn send_webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.webhook(event, delivery, body).send().await.unwrap()
    }

    /// `GET path` with the API token; `None` when nothing answers.
    pub async fn api(&self, path: &str) -> Option<Value> {
        let request = self.client.get(self.url(path)).bearer_auth(API_TOKEN);
        request.send().await.ok()?.json().await.ok()
    }

    /// The runs (newest first); `None` when nothing answers.
    pub async fn runs(&self) -> Option<Vec<Value>> {
        self.api("/api/runs").await?["runs"].as_array().cloned()
    }

    /// Waits until there is one run and it is in `state` (60s at the most);
    /// that run.
    pub async fn wait_single_run(&self, state: &str) -> Value {
        wait_until(Duration::from_secs(60), || async {
            let runs = self.runs().await?;
            (runs.len() == 1 && runs[0]["state"] == state).then(|| runs[0].clone())
        })
        .await
    }
}
