//! Drain on deploy: the real binary gets SIGTERM. A running apply finishes and
//! nothing is locked; a running plan goes back to the queue and another
//! replica finishes it; `readyz` answers 503 meanwhile; an unreachable VCS API
//! never holds the shutdown past its grace.

use std::process::{Child, ExitStatus};
use std::time::Duration;

use gantry::runs::RunState;
use serde_json::Value;

use crate::restart::{free_port, runs, start};
use crate::support::origin::{null_config, write_script};
use crate::support::*;

const DNS: &str = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n";

fn sigterm(child: &Child) {
    // SAFETY: a signal to the child process this test started.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Waits for the process to exit; panics after `within`.
async fn exited(child: &mut Child, within: Duration) -> ExitStatus {
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

async fn readyz(client: &reqwest::Client, base: &str) -> Option<u16> {
    let r = client.get(format!("{base}/readyz")).send().await.ok()?;
    Some(r.status().as_u16())
}

/// terraform that sleeps `secs` before `step`.
fn slow_terraform(env: &TestEnv, step: &str, secs: u32) -> String {
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

#[tokio::test]
async fn sigterm_during_an_apply_lets_it_finish_then_exits_with_nothing_locked() {
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
        let listen = format!("127.0.0.1:{}", free_port());
        let tf = slow_terraform(&env, "apply", 6);
        let mut yaml = env.config_yaml(DNS, 1, &listen, &tf);
        yaml.push_str("node_id: replica-a\n");
        env.write_config(&yaml);
        let base_url = format!("http://{listen}");
        let client = reqwest::Client::new();

        let mut child = start(&env);
        wait_until(Duration::from_secs(30), || async {
            (readyz(&client, &base_url).await? == 200).then_some(())
        })
        .await;
        let body = push_payload("main", &base.to_string(), &merged.to_string());
        let resp = client
            .post(format!("{base_url}/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "drain-apply-1")
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let id = wait_until(Duration::from_secs(60), || async {
            let runs = runs(&client, &base_url).await?;
            (runs.len() == 1 && runs[0]["state"] == "applying").then(|| runs[0]["id"].as_i64())?
        })
        .await;

        sigterm(&child);
        // Draining: out of the load balancer, the apply still going.
        wait_until(Duration::from_secs(5), || async {
            (readyz(&client, &base_url).await? == 503).then_some(())
        })
        .await;
        let now = runs(&client, &base_url).await.unwrap();
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
        let listen = format!("127.0.0.1:{}", free_port());
        // Long enough that only the drain can end it in time.
        let tf = slow_terraform(&env, "plan", 300);
        let mut yaml = env.config_yaml(DNS, 1, &listen, &tf);
        yaml.push_str("node_id: replica-a\n");
        env.write_config(&yaml);
        let base_url = format!("http://{listen}");
        let client = reqwest::Client::new();

        let mut a = start(&env);
        wait_until(Duration::from_secs(30), || async {
            (readyz(&client, &base_url).await? == 200).then_some(())
        })
        .await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = client
            .post(format!("{base_url}/webhooks/github"))
            .header("X-GitHub-Event", "pull_request")
            .header("X-GitHub-Delivery", "drain-plan-1")
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let id = wait_until(Duration::from_secs(60), || async {
            let runs = runs(&client, &base_url).await?;
            (runs.len() == 1 && runs[0]["state"] == "planning").then(|| runs[0]["id"].as_i64())?
        })
        .await;

        // Replica B on the same database, with its own data_dir and a
        // terraform that plans at once.
        let mut b_yaml = env.config_yaml(DNS, 1, "127.0.0.1:0", &terraform_bin());
        b_yaml = b_yaml.replace(
            &format!("data_dir: \"{}\"", env.data_dir().display()),
            &format!("data_dir: \"{}\"", env.dir.path().join("data-b").display()),
        );
        b_yaml.push_str("node_id: replica-b\n");
        let b_path = env.dir.path().join("b.yaml");
        std::fs::write(&b_path, &b_yaml).unwrap();
        let b = TestApp::spawn(gantry::Config::load(&b_path, &test_env_lookup).unwrap()).await;

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
        let listen = format!("127.0.0.1:{}", free_port());
        let grace = Duration::from_secs(45);
        let mut yaml = env
            .config_yaml(DNS, 1, &listen, &terraform_bin())
            .replace(&env.github.url(), &hole_url);
        yaml.push_str(&format!(
            "node_id: replica-a\nshutdown_grace: {}s\n",
            grace.as_secs()
        ));
        env.write_config(&yaml);
        let base_url = format!("http://{listen}");
        let client = reqwest::Client::new();

        let mut child = start(&env);
        wait_until(Duration::from_secs(30), || async {
            (readyz(&client, &base_url).await? == 200).then_some(())
        })
        .await;
        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let resp = client
            .post(format!("{base_url}/webhooks/github"))
            .header("X-GitHub-Event", "pull_request")
            .header("X-GitHub-Delivery", "drain-vcs-1")
            .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        // Planned, while its reports still wait on the API.
        wait_until(Duration::from_secs(60), || async {
            let runs: Vec<Value> = runs(&client, &base_url).await?;
            (runs.len() == 1 && runs[0]["state"] == "planned").then_some(())
        })
        .await;

        sigterm(&child);
        let status = exited(&mut child, grace).await;
        assert!(status.success(), "{db:?}: {status}");
    }
}
