//! Crash safety: the real binary is killed (SIGKILL) with runs queued and one in
//! flight; started again, it marks the interrupted run once its lease has run
//! out, re-queues its plan once, and completes everything.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::origin::{null_config, write_script};
use crate::support::*;

/// The killed process's claims come back once their lease runs out (the
/// restarted process has a new node id), so the lease is kept short here.
const SHORT_LEASE: &str = "queue:\n  lease: 3s\n";

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn start(env: &TestEnv) -> Child {
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

pub(crate) async fn runs(client: &reqwest::Client, base: &str) -> Option<Vec<Value>> {
    let resp = client
        .get(format!("{base}/api/runs"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    v["runs"].as_array().cloned()
}

#[tokio::test]
async fn killed_mid_queue_then_restarted_completes_every_run() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![
                ("modules/vpc/main.tf", null_config("vpc-v2")),
                ("dns/main.tf", null_config("dns-v2")),
            ],
            "three workspaces",
            &["refs/pull/7/head"],
        );

        // terraform that takes a while to plan, so the kill lands mid-run.
        let slow = env.dir.path().join("slow-terraform");
        write_script(
            &slow,
            &format!(
                "#!/bin/sh\nif [ \"$1\" = plan ]; then sleep 2; fi\nexec \"{}\" \"$@\"\n",
                terraform_bin()
            ),
        );
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let yaml = env.config_yaml(
            TestEnv::standard_workspaces(),
            1,
            &listen,
            &slow.display().to_string(),
        ) + SHORT_LEASE;
        env.write_config(&yaml);
        let base_url = format!("http://{listen}");
        let client = reqwest::Client::new();

        let mut child = start(&env);
        wait_until(Duration::from_secs(30), || async {
            client
                .get(format!("{base_url}/readyz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = client
            .post(format!("{base_url}/webhooks/github"))
            .header("X-GitHub-Event", "pull_request")
            .header("X-GitHub-Delivery", "kill-1")
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);

        // Kill while the first run is planning and the others wait in the queue.
        wait_until(Duration::from_secs(60), || async {
            let runs = runs(&client, &base_url).await?;
            let planning = runs.iter().filter(|r| r["state"] == "planning").count();
            let queued = runs.iter().filter(|r| r["state"] == "queued").count();
            (runs.len() == 3 && planning == 1 && queued == 2).then_some(())
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();

        let mut child = start(&env);
        let all = wait_until(Duration::from_secs(120), || async {
            let runs = runs(&client, &base_url).await?;
            let finished = runs
                .iter()
                .all(|r| ["planned", "errored"].contains(&r["state"].as_str().unwrap()));
            (runs.len() == 4 && finished).then_some(runs)
        })
        .await;
        // No status left pending: each workspace's last status is its plan's
        // (delivered by this process, so before it is killed).
        for ws in ["app", "dns", "network"] {
            let last = env
                .wait_for_final_status(&head.to_string(), &format!("gantry/{ws}"))
                .await;
            assert_eq!(last["state"], "success", "{db:?} {ws}: {last}");
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let interrupted: Vec<&Value> = all.iter().filter(|r| r["state"] == "errored").collect();
        assert_eq!(interrupted.len(), 1, "{db:?}: {all:?}");
        assert_eq!(interrupted[0]["state_reason"], "interrupted");
        let retry = all
            .iter()
            .find(|r| r["retry_of"] == interrupted[0]["id"])
            .expect("the plan is re-queued once");
        assert_eq!(retry["state"], "planned");
        assert_eq!(retry["attempt"], 2);
        let mut planned: Vec<&str> = all
            .iter()
            .filter(|r| r["state"] == "planned")
            .map(|r| r["workspace"].as_str().unwrap())
            .collect();
        planned.sort();
        assert_eq!(planned, ["app", "dns", "network"]);
    }
}

#[tokio::test]
async fn an_apply_killed_midway_locks_the_workspace_and_is_not_retried() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.commit(
            &crate::support::origin::standard_files(),
            &[],
            "initial",
            &["refs/heads/main"],
        );
        let mut files = crate::support::origin::standard_files();
        files.insert("dns/main.tf".into(), null_config("dns-v2"));
        let merged = env
            .origin
            .commit(&files, &[base], "merge", &["refs/heads/main"]);

        // terraform whose apply takes a while, so the kill lands mid-apply.
        let slow = env.dir.path().join("slow-apply");
        write_script(
            &slow,
            &format!(
                "#!/bin/sh\nif [ \"$1\" = apply ]; then sleep 30; fi\nexec \"{}\" \"$@\"\n",
                terraform_bin()
            ),
        );
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n";
        env.write_config(
            &(env.config_yaml(workspaces, 1, &listen, &slow.display().to_string()) + SHORT_LEASE),
        );
        let base_url = format!("http://{listen}");
        let client = reqwest::Client::new();

        let mut child = start(&env);
        wait_until(Duration::from_secs(30), || async {
            client
                .get(format!("{base_url}/readyz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
        let body = push_payload("main", &base.to_string(), &merged.to_string());
        let resp = client
            .post(format!("{base_url}/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "apply-kill-1")
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        wait_until(Duration::from_secs(60), || async {
            let runs = runs(&client, &base_url).await?;
            (runs.len() == 1 && runs[0]["state"] == "applying").then_some(())
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();

        let mut child = start(&env);
        let run = wait_until(Duration::from_secs(60), || async {
            let runs = runs(&client, &base_url).await?;
            (runs.len() == 1 && runs[0]["state"] == "errored").then(|| runs[0].clone())
        })
        .await;
        assert_eq!(run["state_reason"], "interrupted during apply", "{db:?}");
        // Its "Applying…" status is not left pending.
        let last = env
            .wait_for_final_status(&merged.to_string(), "gantry/dns")
            .await;
        assert_eq!(last["state"], "error", "{db:?}: {last}");
        assert_eq!(
            last["description"],
            "gantry error: interrupted during apply: workspace locked"
        );
        let ws: Value = client
            .get(format!("{base_url}/api/workspaces"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lock = &ws["workspaces"][0]["lock"];
        assert_eq!(lock["run_id"], run["id"]);
        assert!(
            lock["reason"]
                .as_str()
                .unwrap()
                .contains("interrupted during apply"),
            "{lock}"
        );
        // Not retried: still one run a while later.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs(&client, &base_url).await.unwrap().len(), 1);
        // A person looks, then unlocks.
        let r = client
            .post(format!("{base_url}/api/workspaces/dns/unlock"))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({"reason": "checked the state by hand"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
