//! Drift checks on demand with real terraform: nothing drifted after an
//! apply; a change behind Terraform's back is found, reported, never applied.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::origin::null_config;
use crate::support::*;

async fn post(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(API_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

async fn check(app: &TestApp) -> Value {
    let r = post(app, "/api/workspaces/dns/drift-check").await;
    assert_eq!(r.status(), 200);
    let run: Value = r.json().await.unwrap();
    assert_eq!(
        (run["kind"].as_str(), run["source"].as_str()),
        (Some("drift"), Some("api"))
    );
    let id = run["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(120), || async {
        let r = app.api(&format!("/api/runs/{id}")).await;
        (r["state"] == "planned" || r["state"] == "errored").then_some(r)
    })
    .await
}

#[tokio::test]
async fn a_change_behind_terraforms_back_is_reported_as_drift() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, merged) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "merge",
            &["refs/heads/main"],
        );
        let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n    drift_mode: plan\n";
        let app = env
            .spawn_app(&env.config_yaml(workspaces, 2, "127.0.0.1:0", &terraform_bin()))
            .await;
        app.send_webhook(
            "push",
            "m-1",
            &push_payload("main", &base.to_string(), &merged.to_string()),
        )
        .await;
        let runs = app.wait_for_runs_done(1).await;
        assert_eq!(runs[0]["state"], "applied", "{db:?}");
        let applied_id = runs[0]["id"].as_i64().unwrap();
        // The apply's final status goes out in the background: wait for it.
        env.wait_for_final_status(&merged.to_string(), "gantry/dns")
            .await;
        let statuses_before = env.github.statuses(&merged.to_string()).len();

        // Right after the apply: no drift.
        let run = check(&app).await;
        assert_eq!(run["state"], "planned", "{run}");
        assert_eq!(run["state_reason"], "no drift");
        let drift = app.api("/api/workspaces/dns/drift").await;
        assert_eq!(drift["latest"]["drifted"], false);

        // Someone changes the resource outside Terraform (here: in the state).
        let mut state = app.api("/api/workspaces/dns/state").await;
        state["resources"][0]["instances"][0]["attributes"]["triggers"]["marker"] =
            json!("changed-by-hand");
        let serial = state["serial"].as_i64().unwrap() + 1;
        state["serial"] = json!(serial);
        app.ctx
            .store
            .add_state_version(
                "dns",
                serial,
                state["lineage"].as_str().unwrap(),
                applied_id,
                &state.to_string(),
            )
            .await
            .unwrap();

        let run = check(&app).await;
        assert_eq!(run["state"], "planned", "{run}");
        assert_eq!(run["state_reason"], "drift found in 1 resource");
        let drift = app.api("/api/workspaces/dns/drift").await;
        assert_eq!(drift["latest"]["drifted"], true);
        assert_eq!(drift["latest"]["run_id"], run["id"]);
        assert_eq!(
            drift["latest"]["resources"][0]["address"],
            "null_resource.this"
        );
        assert!(drift["latest"]["resources"][0]["changed_attributes"]
            .as_array()
            .unwrap()
            .contains(&json!("triggers")));
        assert_eq!(drift["history"].as_array().unwrap().len(), 2);
        let all = app.api("/api/drift?drifted=true").await;
        assert_eq!(all["workspaces"].as_array().unwrap().len(), 1);
        assert_eq!(
            app.api("/api/drift?drifted=false").await["workspaces"],
            json!([])
        );

        // A drift check never applies, and posts no commit status.
        let versions = app.api("/api/workspaces/dns/state-versions").await;
        assert_eq!(
            versions["state_versions"][0]["serial"], serial,
            "nothing applied over the drifted state"
        );
        assert_eq!(
            env.github.statuses(&merged.to_string()).len(),
            statuses_before
        );
        let audit = app.api("/api/audit?workspace=dns").await;
        assert!(audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "drift-check"));
        assert_eq!(
            post(&app, "/api/workspaces/nope/drift-check")
                .await
                .status(),
            404
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_scheduled_tick_runs_once_across_two_instances() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        env.origin.initial();
        let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    drift_mode: plan\nenvironments:\n  - name: production\n    drift_schedule: \"@yearly\"\n";
        let yaml = env.config_yaml(workspaces, 2, "127.0.0.1:0", &terraform_bin());
        let a = env.spawn_app(&yaml).await;
        // A second instance on the same database, with its own data directory.
        let b_yaml = yaml.replace(
            &format!("data_dir: \"{}\"", env.data_dir().display()),
            &format!("data_dir: \"{}-b\"", env.data_dir().display()),
        );
        assert_ne!(b_yaml, yaml);
        let b = env.spawn_app(&b_yaml).await;

        // Both instances look at the same due tick (2027-01-01) at the same moment.
        let since = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let now = chrono::DateTime::parse_from_rfc3339("2027-01-02T00:00:00Z")
            .unwrap()
            .to_utc();
        let (drift_a, drift_b) = (a.ctx.drift(), b.ctx.drift());
        let (ra, rb) = tokio::join!(
            gantry::queue::drift_pass(&drift_a, since, now),
            gantry::queue::drift_pass(&drift_b, since, now)
        );
        let queued = ra
            .iter()
            .chain(rb.iter())
            .filter(|(_, o)| matches!(o, gantry::store::TickOutcome::Queued(_)))
            .count();
        let handled = ra
            .iter()
            .chain(rb.iter())
            .filter(|(_, o)| matches!(o, gantry::store::TickOutcome::AlreadyHandled))
            .count();
        // One queues it; the other finds it claimed (or, if the claim landed
        // before it looked, does not see the tick as due at all).
        assert_eq!(queued, 1, "{db:?}: {ra:?} {rb:?}");
        assert_eq!(handled, ra.len() + rb.len() - 1, "{db:?}: {ra:?} {rb:?}");

        let runs = a.wait_for_runs_done(1).await;
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0]["kind"].as_str(), runs[0]["source"].as_str()),
            (Some("drift"), Some("schedule"))
        );
        assert_eq!(runs[0]["state"], "planned");
        // Plan mode on a workspace never applied: its configuration counts as drift.
        let drift = a.api("/api/workspaces/dns/drift").await;
        assert_eq!(drift["latest"]["drifted"], true);
        // The same tick again, on either instance: nothing.
        assert!(gantry::queue::drift_pass(&drift_b, since, now)
            .await
            .is_empty());
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn a_drift_issue_opens_updates_and_closes_itself() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n    drift_mode: plan\n    drift_notify: issue\n";
    let app = env
        .spawn_app(&env.config_yaml(workspaces, 2, "127.0.0.1:0", &terraform_bin()))
        .await;
    let issue_calls = || {
        env.github
            .requests()
            .into_iter()
            .filter(|r| {
                r.path.starts_with("/repos/acme/infra/issues") && !r.path.contains("comments")
            })
            .collect::<Vec<_>>()
    };

    // Never applied: in plan mode the whole configuration is drift. An issue opens.
    assert_eq!(
        check(&app).await["state_reason"],
        "drift found in 1 resource"
    );
    let calls = issue_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("POST", "/repos/acme/infra/issues")
    );
    assert_eq!(calls[0].body["title"], "Drift detected in workspace dns");
    assert!(
        calls[0].body["body"]
            .as_str()
            .unwrap()
            .contains("- `null_resource.this` (create)"),
        "{}",
        calls[0].body
    );

    // Found again: the same issue is updated.
    check(&app).await;
    let calls = issue_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].method, "PATCH");
    assert!(calls[1].path.starts_with("/repos/acme/infra/issues/"));
    assert_eq!(calls[1].body.get("state"), None);

    // Applied by a merge: the next check finds no drift and closes the issue.
    let merged =
        env.origin
            .merge_standard(base, vec![("dns/main.tf", null_config("dns-v2"))], "merge");
    app.send_webhook(
        "push",
        "m-1",
        &push_payload("main", &base.to_string(), &merged.to_string()),
    )
    .await;
    wait_until(Duration::from_secs(120), || async {
        app.runs()
            .await
            .iter()
            .any(|r| r["kind"] == "apply" && r["state"] == "applied")
            .then_some(())
    })
    .await;
    assert_eq!(check(&app).await["state_reason"], "no drift");
    let calls = issue_calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].path, calls[1].path);
    assert_eq!(calls[2].body["state"], "closed");
    assert!(calls[2].body["body"]
        .as_str()
        .unwrap()
        .starts_with("No drift in workspace `dns` any more"));
    // Closed stays closed while there is no drift.
    check(&app).await;
    assert_eq!(issue_calls().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn drift_is_posted_to_a_webhook_with_slack_text() {
    let received: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let env = TestEnv::new(&Db::Sqlite).await;
    env.origin.initial();
    let workspaces = format!(
        "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    drift_mode: plan\n    drift_notify: webhook\n    drift_webhook_url: \"{url}\"\n"
    );
    let app = env
        .spawn_app(&env.config_yaml(&workspaces, 2, "127.0.0.1:0", &terraform_bin()))
        .await;
    check(&app).await;
    // The outbox delivers the webhook just after the run ends.
    let got = wait_until(Duration::from_secs(20), || async {
        Some(received.lock().unwrap().clone()).filter(|g| !g.is_empty())
    })
    .await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Drift detected in workspace `dns`"),
        "{}",
        got[0]
    );
    assert_eq!(got[0]["workspace"], "dns");
    assert_eq!(got[0]["resources"][0]["address"], "null_resource.this");
    app.stop().await;
}
