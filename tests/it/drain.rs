//! Drain on deploy: the real binary gets SIGTERM. A running apply finishes and
//! nothing is locked; a running plan goes back to the queue and another
//! replica finishes it; `readyz` answers 503 meanwhile; an unreachable VCS API
//! never holds the shutdown past its grace.

use std::time::Duration;

use gantry::runs::RunState;

use crate::support::origin::null_config;
use crate::support::replica::{
    exited, free_listen, sigterm, slow_terraform, spawn_beside, start_ready,
};
use crate::support::*;

const DNS: &str = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n";

#[tokio::test]
async fn sigterm_during_an_apply_lets_it_finish_then_exits_with_nothing_locked() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, merged) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "merge",
            &["refs/heads/main"],
        );
        let listen = free_listen();
        let tf = slow_terraform(&env, "apply", 6);
        let yaml = env.config_yaml(DNS, 1, &listen, &tf) + "node_id: replica-a\n";
        let (mut child, remote) = start_ready(&env, &listen, &yaml).await;
        let body = push_payload("main", &base.to_string(), &merged.to_string());
        let resp = remote.send_webhook("push", "drain-apply-1", &body).await;
        assert_eq!(resp.status(), 202);
        let id = remote.wait_single_run("applying").await["id"]
            .as_i64()
            .unwrap();

        sigterm(&child);
        // Draining: out of the load balancer, the apply still going.
        remote.wait_readyz(503, Duration::from_secs(5)).await;
        let now = remote.runs().await.unwrap();
        assert_eq!(now[0]["state"], "applying", "{db:?}: {now:?}");

        let status = exited(&mut child, Duration::from_secs(120)).await;
        assert!(status.success(), "{db:?}: {status}");
        let store = gantry::store::Store::connect(&env.db_url.clone().into())
            .await
            .unwrap();
        let run = store.run(id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Applied, "{db:?}: {run:?}");
        assert!(store.workspace_lock("dns").await.unwrap().is_none());
        assert!(store.latest_state("dns").await.unwrap().is_some());
        store.close().await;
    }
}

#[tokio::test]
async fn sigterm_during_a_plan_hands_it_back_and_another_replica_finishes_it() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "dns",
            &["refs/pull/7/head"],
        );
        let listen = free_listen();
        // Long enough that only the drain can end it in time.
        let tf = slow_terraform(&env, "plan", 300);
        let yaml = env.config_yaml(DNS, 1, &listen, &tf) + "node_id: replica-a\n";
        let (mut a, remote) = start_ready(&env, &listen, &yaml).await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = remote
            .send_webhook("pull_request", "drain-plan-1", &body)
            .await;
        assert_eq!(resp.status(), 202);
        let id = remote.wait_single_run("planning").await["id"]
            .as_i64()
            .unwrap();

        // Replica B on the same database, with its own data_dir and a
        // terraform that plans at once.
        let b_yaml = env.config_yaml(DNS, 1, "127.0.0.1:0", &terraform_bin());
        let b = spawn_beside(&env, &env.replica_yaml(&b_yaml, "replica-b"), "b").await;

        sigterm(&a);
        let status = exited(&mut a, Duration::from_secs(60)).await;
        assert!(status.success(), "{db:?}: {status}");
        let run = wait_until(Duration::from_secs(120), || async {
            let run = b.api(&format!("/api/runs/{id}")).await;
            (run["state"] == "planned").then_some(run)
        })
        .await;
        assert_eq!(run["attempt"], 1, "the same run, not a retry: {run}");
        assert_eq!(b.runs().await.len(), 1, "{db:?}");
        let states: Vec<(&str, &str)> = run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["state"].as_str().unwrap(),
                    t["reason"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            states.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            ["queued", "fetching", "planning", "queued", "fetching", "planning", "planned"],
            "{db:?}: {run}"
        );
        assert_eq!(
            states[3].1, "handed back by replica-a, which is shutting down",
            "{run}"
        );
        b.stop().await;
    }
}

#[tokio::test]
async fn shutdown_with_the_vcs_api_unreachable_completes_within_the_grace() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        // A VCS API that accepts connections and never answers: every report
        // waits for its timeout, then retries.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hole_url = format!("http://{}", hole.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            for stream in hole.incoming().flatten() {
                held.push(stream);
            }
        });
        let (_, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "dns",
            &["refs/pull/7/head"],
        );
        let listen = free_listen();
        let grace = Duration::from_secs(45);
        let mut yaml = env
            .config_yaml(DNS, 1, &listen, &terraform_bin())
            .replace(&env.github.url(), &hole_url);
        yaml.push_str(&format!(
            "node_id: replica-a\nshutdown_grace: {}s\n",
            grace.as_secs()
        ));
        let (mut child, remote) = start_ready(&env, &listen, &yaml).await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = remote
            .send_webhook("pull_request", "drain-vcs-1", &body)
            .await;
        assert_eq!(resp.status(), 202);
        // Planned, while its reports still wait on the API.
        remote.wait_single_run("planned").await;

        sigterm(&child);
        let status = exited(&mut child, grace).await;
        assert!(status.success(), "{db:?}: {status}");
    }
}
