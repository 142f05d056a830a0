//! Apply on merge and the run lifecycle around it, with real terraform and git:
//! auto-apply, confirmation, ordering, stale plans, locks, state kept by gantry.

use std::time::Duration;

use gantry::store::ArtifactKind;
use serde_json::{json, Value};

use crate::support::origin::null_config;
use crate::support::*;

/// One workspace, `dns`, applying on merge.
pub(crate) fn dns_yaml(env: &TestEnv, auto_apply: bool) -> String {
    env.config_yaml(
        &format!(
            r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    auto_apply: {auto_apply}
"#
        ),
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    )
}

pub(crate) async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Waits until run `id` is in `state`.
pub(crate) async fn wait_state(app: &TestApp, id: i64, state: &str) -> Value {
    wait_until(Duration::from_secs(120), || async {
        let run = app.api(&format!("/api/runs/{id}")).await;
        (run["state"] == state).then_some(run)
    })
    .await
}

/// Merges a change to `dns/main.tf` into main (a push webhook); returns the merge sha.
pub(crate) async fn merge(
    env: &TestEnv,
    app: &TestApp,
    parent: git2::Oid,
    marker: &str,
    delivery: &str,
    pr: u64,
) -> git2::Oid {
    merge_dns(env, app, parent, dns_config(marker), delivery, pr).await
}

/// Merges pull request `pr`, which makes `dns/main.tf` the given text, into
/// main (a push webhook); returns the merge sha.
pub(crate) async fn merge_dns(
    env: &TestEnv,
    app: &TestApp,
    parent: git2::Oid,
    dns_main_tf: String,
    delivery: &str,
    pr: u64,
) -> git2::Oid {
    let sha = env.origin.merge_standard(
        parent,
        vec![("dns/main.tf", dns_main_tf)],
        "Merge pull request",
    );
    env.github.set_commit_pr(&sha.to_string(), pr);
    let r = app
        .send_webhook(
            "push",
            delivery,
            &push_payload("main", &parent.to_string(), &sha.to_string()),
        )
        .await;
    assert_eq!(r.status(), 202);
    sha
}

/// The dns workspace's configuration; `marker` sets the resource's trigger, and
/// text after a `#` is a comment (a change that changes no infrastructure).
fn dns_config(marker: &str) -> String {
    // A sensitive output: kept in the state, never shown in a comment.
    let output =
        "output \"zone_key\" {\n  value     = \"s3cr3t-zone-key\"\n  sensitive = true\n}\n";
    match marker.split_once('#') {
        Some((m, comment)) => format!("{}{output}# {comment}\n", null_config(m)),
        None => format!("{}{output}", null_config(marker)),
    }
}

pub(crate) fn resources(state: &Value) -> Vec<String> {
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                r["type"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_merge_with_auto_apply_creates_the_resources_and_comments_on_the_merged_pr() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        let app = env.spawn_app(&dns_yaml(&env, true)).await;
        let sha = merge(&env, &app, base, "dns-v2", "merge-1", 7).await;

        let runs = app.wait_for_runs_done(1).await;
        let run = &runs[0];
        assert_eq!(
            (run["kind"].as_str(), run["state"].as_str()),
            (Some("apply"), Some("applied")),
            "{db:?}: {run}"
        );
        let id = run["id"].as_i64().unwrap();
        let states: Vec<String> = app.api(&format!("/api/runs/{id}")).await["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            states,
            ["queued", "fetching", "planning", "applying", "applied"]
        );

        // The state gantry keeps shows what the apply created.
        let state = app.api("/api/workspaces/dns/state").await;
        assert_eq!(resources(&state), ["null_resource.this"]);
        let versions = app.api("/api/workspaces/dns/state-versions").await;
        assert_eq!(versions["state_versions"][0]["run_id"], id);

        // The merge commit's status and the merged PR's comment.
        let status = env
            .wait_for_final_status(&sha.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "success");
        assert!(
            status["description"]
                .as_str()
                .unwrap()
                .starts_with("Applied."),
            "{status}"
        );
        let comment = env.wait_for_comment(7, "✅ applied").await;
        assert!(
            comment.contains(&format!("gantry apply for `{}`", &sha.to_string()[..8])),
            "{comment}"
        );
        assert!(
            comment.contains("Apply complete! Resources: 1 added"),
            "{comment}"
        );

        // The next plan sees what the last apply created: nothing to change.
        let sha2 = merge(&env, &app, sha, "dns-v2#reformatted", "merge-2", 8).await;
        let runs = app.wait_for_runs_done(2).await;
        assert_eq!(runs[0]["commit_sha"], sha2.to_string());
        assert_eq!(runs[0]["state"], "applied");
        assert_eq!(
            runs[0]["plan"],
            json!({"add": 0, "change": 0, "destroy": 0})
        );
        assert_eq!(runs[0]["state_reason"], "no changes to apply");

        let audit = app.api("/api/audit?workspace=dns").await;
        let entry = &audit["entries"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (entry["actor"].as_str(), entry["action"].as_str()),
            (Some("gantry (auto_apply)"), Some("apply"))
        );
        assert_eq!(entry["commit_sha"], sha.to_string());
        app.stop().await;
    }
}

#[tokio::test]
async fn without_auto_apply_the_run_waits_for_confirmation() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        let app = env.spawn_app(&dns_yaml(&env, false)).await;
        let sha = merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
        let runs = app.wait_for_runs_done(1).await;
        let id = runs[0]["id"].as_i64().unwrap();
        assert_eq!(runs[0]["state"], "needs_confirmation", "{db:?}");
        let status = env
            .wait_for_final_status_or_pending(&sha.to_string(), "gantry/dns", "Needs confirmation")
            .await;
        assert_eq!(status["state"], "pending");
        let r = app
            .client
            .get(app.url("/api/workspaces/dns/state"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "nothing applied yet");

        // Confirmation needs the token; then the saved plan is applied.
        let r = app
            .client
            .post(app.url(&format!("/api/runs/{id}/apply")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = post(&app, &format!("/api/runs/{id}/apply"), json!({})).await;
        assert_eq!(r.status(), 200);
        let run = wait_state(&app, id, "applied").await;
        assert_eq!(run["apply_requested_by"], "api");
        assert_eq!(
            resources(&app.api("/api/workspaces/dns/state").await),
            ["null_resource.this"]
        );
        // An applied run cannot be applied again.
        assert_eq!(
            post(&app, &format!("/api/runs/{id}/apply"), json!({}))
                .await
                .status(),
            409
        );
        let audit = app.api("/api/audit?workspace=dns").await;
        assert!(audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "confirm" && e["run_id"] == id));
        app.stop().await;
    }
}

#[tokio::test]
async fn a_confirmed_apply_of_a_stale_plan_is_refused() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let app = env.spawn_app(&dns_yaml(&env, false)).await;
    let first = merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
    let runs = app.wait_for_runs_done(1).await;
    let old = runs[0]["id"].as_i64().unwrap();
    merge(&env, &app, first, "dns-v3", "merge-2", 8).await;
    let runs = app.wait_for_runs_done(2).await;
    let new = runs[0]["id"].as_i64().unwrap();
    assert_eq!(runs[0]["state"], "needs_confirmation");

    // The newer plan is applied first: the older one is now stale.
    assert_eq!(
        post(&app, &format!("/api/runs/{new}/apply"), json!({}))
            .await
            .status(),
        200
    );
    wait_state(&app, new, "applied").await;
    assert_eq!(
        post(&app, &format!("/api/runs/{old}/apply"), json!({}))
            .await
            .status(),
        200
    );
    let run = wait_state(&app, old, "errored").await;
    assert_eq!(run["failure"], "refused");
    let reason = run["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("apply refused: the plan is stale") && reason.contains("re-plan"),
        "{reason}"
    );
    // Only the newer apply wrote state.
    let versions = app.api("/api/workspaces/dns/state-versions").await;
    assert_eq!(versions["state_versions"].as_array().unwrap().len(), 1);
    assert_eq!(versions["state_versions"][0]["run_id"], new);
    app.stop().await;
}

#[tokio::test]
async fn merges_in_quick_succession_apply_in_order() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        let app = env.spawn_app(&dns_yaml(&env, true)).await;
        let a = merge(&env, &app, base, "dns-a", "m-a", 7).await;
        let b = merge(&env, &app, a, "dns-b", "m-b", 8).await;
        let c = merge(&env, &app, b, "dns-c", "m-c", 9).await;
        let runs = app.wait_for_runs_done(3).await;
        let mut runs: Vec<&Value> = runs.iter().collect();
        runs.sort_by_key(|r| r["id"].as_i64());
        let shas: Vec<&str> = runs
            .iter()
            .map(|r| r["commit_sha"].as_str().unwrap())
            .collect();
        assert_eq!(
            shas,
            [a.to_string(), b.to_string(), c.to_string()],
            "{db:?}"
        );
        assert!(runs.iter().all(|r| r["state"] == "applied"), "{runs:?}");
        // Each applied after the one before finished.
        for w in runs.windows(2) {
            assert!(
                w[0]["finished_at"].as_str().unwrap() <= w[1]["started_at"].as_str().unwrap(),
                "{w:?}"
            );
        }
        // The state holds the last merge's value.
        let state = app.api("/api/workspaces/dns/state").await;
        assert_eq!(
            state["resources"][0]["instances"][0]["attributes"]["triggers"]["marker"],
            "dns-c"
        );
        assert_eq!(
            app.api("/api/workspaces/dns/state-versions").await["state_versions"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_locked_workspace_plans_but_refuses_applies_until_unlocked() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let app = env.spawn_app(&dns_yaml(&env, true)).await;

    assert_eq!(
        post(&app, "/api/workspaces/dns/lock", json!({}))
            .await
            .status(),
        400,
        "a reason is required"
    );
    assert_eq!(
        post(&app, "/api/workspaces/nope/lock", json!({"reason": "x"}))
            .await
            .status(),
        404
    );
    assert_eq!(
        post(
            &app,
            "/api/workspaces/dns/lock",
            json!({"reason": "migrating the zone"})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(&app, "/api/workspaces/dns/lock", json!({"reason": "again"}))
            .await
            .status(),
        409
    );
    let ws = app.api("/api/workspaces").await;
    assert_eq!(ws["workspaces"][0]["lock"]["reason"], "migrating the zone");

    let sha = merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
    let runs = app.wait_for_runs_done(1).await;
    let id = runs[0]["id"].as_i64().unwrap();
    assert_eq!(
        runs[0]["state"], "needs_confirmation",
        "planned, not applied"
    );
    assert!(runs[0]["state_reason"]
        .as_str()
        .unwrap()
        .contains("migrating the zone"));
    let comment = env.wait_for_comment(7, "needs confirmation").await;
    assert!(
        comment.contains("🔒 locked: migrating the zone; applies are refused"),
        "{comment}"
    );
    let r = post(&app, &format!("/api/runs/{id}/apply"), json!({})).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("locked"));

    assert_eq!(
        post(
            &app,
            "/api/workspaces/dns/unlock",
            json!({"reason": "zone migrated"})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post(
            &app,
            "/api/workspaces/dns/unlock",
            json!({"reason": "again"})
        )
        .await
        .status(),
        409
    );
    assert_eq!(
        post(&app, &format!("/api/runs/{id}/apply"), json!({}))
            .await
            .status(),
        200
    );
    wait_state(&app, id, "applied").await;
    env.wait_for_final_status(&sha.to_string(), "gantry/dns")
        .await;

    let audit = app.api("/api/audit?workspace=dns").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["lock", "unlock", "confirm"]);
    app.stop().await;
}

#[tokio::test]
async fn queued_runs_can_be_canceled() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let app = env.spawn_app(&dns_yaml(&env, false)).await;
    merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
    let runs = app.wait_for_runs_done(1).await;
    let id = runs[0]["id"].as_i64().unwrap();
    // Waiting for confirmation counts as not started: cancel ends it.
    assert_eq!(
        post(&app, &format!("/api/runs/{id}/cancel"), json!({}))
            .await
            .status(),
        200
    );
    let run = wait_state(&app, id, "canceled").await;
    assert_eq!(run["state_reason"], "canceled by api");
    assert_eq!(
        post(&app, &format!("/api/runs/{id}/cancel"), json!({}))
            .await
            .status(),
        409
    );
    assert_eq!(
        post(&app, &format!("/api/runs/{id}/apply"), json!({}))
            .await
            .status(),
        409
    );
    app.stop().await;
}

/// An app with one workspace, `dns`, whose `terraform plan` prints
/// "slow plan: started" and then takes a minute, and the id of the run a
/// merge on `base` started, once it is planning.
pub(crate) async fn planning_slowly(env: &TestEnv, base: git2::Oid) -> (TestApp, i64) {
    let slow = env.dir.path().join("slow-plan");
    crate::support::origin::write_script(
        &slow,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = plan ]; then echo \"slow plan: started\"; sleep 60; fi\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n";
    let app = env
        .spawn_app(&env.config_yaml(workspaces, 1, "127.0.0.1:0", &slow.display().to_string()))
        .await;
    merge(env, &app, base, "dns-v2", "merge-1", 7).await;
    let id = wait_until(Duration::from_secs(60), || async {
        let runs = app.runs().await;
        runs.first()
            .filter(|r| r["state"] == "planning")
            .and_then(|r| r["id"].as_i64())
    })
    .await;
    (app, id)
}

#[tokio::test]
async fn a_running_plan_can_be_canceled() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let (app, id) = planning_slowly(&env, base).await;
    let started = std::time::Instant::now();
    assert_eq!(
        post(&app, &format!("/api/runs/{id}/cancel"), json!({}))
            .await
            .status(),
        200
    );
    let run = wait_state(&app, id, "canceled").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "terraform was interrupted, not waited for"
    );
    assert_eq!(run["state_reason"], "canceled on request");
    assert_eq!(run["failure"], "canceled");
    let audit = app.api("/api/audit?workspace=dns").await;
    assert_eq!(audit["entries"][0]["action"], "cancel");
    app.stop().await;
}

#[tokio::test]
async fn a_plan_file_changed_after_planning_is_never_applied() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        let app = env.spawn_app(&dns_yaml(&env, false)).await;
        merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
        let runs = app.wait_for_runs_done(1).await;
        let id = runs[0]["id"].as_i64().unwrap();
        assert_eq!(runs[0]["state"], "needs_confirmation", "{db:?}");
        let recorded = app.api(&format!("/api/runs/{id}")).await["plan_sha256"]
            .as_str()
            .expect("the plan's sha256 is recorded")
            .to_string();
        assert_eq!(recorded.len(), 64);

        // Someone with write access to the database swaps the reviewed plan
        // for another: the whole artifact row, its own sha256 included.
        let store = &app.ctx.store;
        let stored = store
            .artifact(id, ArtifactKind::PlanFile)
            .await
            .unwrap()
            .expect("the plan file is in the store");
        assert_eq!(stored.sha256, recorded);
        let mut bytes = stored.bytes;
        bytes.extend_from_slice(b"tampered");
        store
            .put_artifact(id, ArtifactKind::PlanFile, &bytes)
            .await
            .unwrap();

        let r = post(&app, &format!("/api/runs/{id}/apply"), json!({})).await;
        assert_eq!(r.status(), 200);
        let run = wait_state(&app, id, "errored").await;
        let reason = run["state_reason"].as_str().unwrap();
        assert!(
            reason.starts_with("apply refused: plan file of run") && reason.contains(&recorded),
            "{reason}"
        );
        let r = app
            .client
            .get(app.url("/api/workspaces/dns/state"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{db:?}: nothing was applied");
        let dns = app.workspace("dns").await;
        assert!(
            dns["lock"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("changed after it was reviewed")),
            "{dns}"
        );
        let audit = app.api("/api/audit?workspace=dns").await;
        assert!(
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "apply refused: plan integrity" && e["run_id"] == id),
            "{audit}"
        );
        app.stop().await;
    }
}
