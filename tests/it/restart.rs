//! Crash safety: the real binary is killed (SIGKILL) with runs queued and one in
//! flight; started again, it marks the interrupted run once its lease has run
//! out, re-queues its plan once, and completes everything.

use std::time::Duration;

use serde_json::Value;

use crate::support::origin::null_config;
use crate::support::replica::{free_listen, kill, slow_terraform, start, start_ready};
use crate::support::*;

/// The killed process's claims come back once their lease runs out (the
/// restarted process has a new node id), so the lease is kept short here.
const SHORT_LEASE: &str = "queue:\n  lease: 3s\n";

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
        let slow = slow_terraform(&env, "plan", 2);
        let listen = free_listen();
        let yaml = env.config_yaml(TestEnv::standard_workspaces(), 1, &listen, &slow) + SHORT_LEASE;
        let (mut child, remote) = start_ready(&env, &listen, &yaml).await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = remote.send_webhook("pull_request", "kill-1", &body).await;
        assert_eq!(resp.status(), 202);

        // Kill while the first run is planning and the others wait in the queue.
        wait_until(Duration::from_secs(60), || async {
            let runs = remote.runs().await?;
            let planning = runs.iter().filter(|r| r["state"] == "planning").count();
            let queued = runs.iter().filter(|r| r["state"] == "queued").count();
            (runs.len() == 3 && planning == 1 && queued == 2).then_some(())
        })
        .await;
        kill(&mut child);

        let mut child = start(&env);
        let all = wait_until(Duration::from_secs(120), || async {
            let runs = remote.runs().await?;
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
        kill(&mut child);

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
        let (_, base, merged) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "merge",
            &["refs/heads/main"],
        );

        // terraform whose apply takes a while, so the kill lands mid-apply.
        let slow = slow_terraform(&env, "apply", 30);
        let listen = free_listen();
        let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n";
        let yaml = env.config_yaml(workspaces, 1, &listen, &slow) + SHORT_LEASE;
        let (mut child, remote) = start_ready(&env, &listen, &yaml).await;
        let body = push_payload("main", &base.to_string(), &merged.to_string());
        let resp = remote.send_webhook("push", "apply-kill-1", &body).await;
        assert_eq!(resp.status(), 202);
        remote.wait_single_run("applying").await;
        kill(&mut child);

        let mut child = start(&env);
        let run = remote.wait_single_run("errored").await;
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
        let ws = remote.api("/api/workspaces").await.unwrap();
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
        assert_eq!(remote.runs().await.unwrap().len(), 1);
        // A person looks, then unlocks.
        let r = remote
            .client
            .post(remote.url("/api/workspaces/dns/unlock"))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({"reason": "checked the state by hand"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        kill(&mut child);
    }
}
