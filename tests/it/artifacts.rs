//! Run artifacts live in the store: a plan made on one replica is applied on
//! another (its hash checked), any replica shows a run's log, and a run's log
//! is in the store while terraform is still printing it.

use std::time::Duration;

use gantry::store::{sha256_hex, ArtifactKind};
use serde_json::json;

use crate::apply::{dns_yaml, merge, planning_slowly, post, resources, wait_state};
use crate::support::*;

#[tokio::test]
async fn a_plan_made_on_one_replica_is_applied_on_another() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        // Replica A plans the merge; the workspace waits for a confirmation.
        let yaml = dns_yaml(&env, false);
        let a = env.spawn_app(&env.replica_yaml(&yaml, "replica-a")).await;
        merge(&env, &a, base, "dns-v2", "merge-1", 7).await;
        let runs = a.wait_for_runs_done(1).await;
        let id = runs[0]["id"].as_i64().unwrap();
        assert_eq!(runs[0]["state"], "needs_confirmation", "{db:?}");
        a.stop().await;
        // Nothing of the run stays on A's disk: its scratch is gone.
        let a_data = env.dir.path().join("data-replica-a");
        assert!(!a_data.join(format!("work/run-{id}")).exists());
        assert!(!a_data.join("runs").exists());

        // Replica B, with its own data_dir, applies exactly that plan.
        let b = env.spawn_app(&env.replica_yaml(&yaml, "replica-b")).await;
        let r = post(&b, &format!("/api/runs/{id}/apply"), json!({})).await;
        assert_eq!(r.status(), 200);
        let run = wait_state(&b, id, "applied").await;
        let recorded = run["plan_sha256"].as_str().unwrap();
        let stored = b
            .ctx
            .store
            .artifact(id, ArtifactKind::PlanFile)
            .await
            .unwrap()
            .expect("the plan file is in the store");
        assert_eq!(stored.sha256, recorded, "{db:?}");
        assert_eq!(sha256_hex(&stored.bytes), recorded, "{db:?}");
        assert_eq!(
            resources(&b.api("/api/workspaces/dns/state").await),
            ["null_resource.this"]
        );
        let versions = b.api("/api/workspaces/dns/state-versions").await;
        assert_eq!(versions["state_versions"][0]["run_id"], id, "{versions}");

        // B shows the whole log: A's plan, then its own apply.
        let log = b.run_log(id).await;
        let plan_at = log.find("Plan: 1 to add").expect("the plan's output");
        let apply_at = log.find("Apply complete!").expect("the apply's output");
        assert!(plan_at < apply_at, "{log}");
        // The plan JSON is kept for policies and impact analysis.
        let json = b
            .ctx
            .store
            .artifact(id, ArtifactKind::PlanJson)
            .await
            .unwrap()
            .unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&json.bytes).unwrap();
        assert_eq!(
            plan["resource_changes"][0]["address"], "null_resource.this",
            "{db:?}"
        );
        b.stop().await;
    }
}

#[tokio::test]
async fn a_runs_log_is_in_the_store_while_terraform_prints_it() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let base = env.origin.initial();
        let (app, id) = planning_slowly(&env, base).await;
        // While terraform still runs, what it printed is already stored: a
        // SIGKILL now would keep it.
        let log = wait_until(Duration::from_secs(30), || async {
            let log = app.run_log(id).await;
            log.contains("slow plan: started").then_some(log)
        })
        .await;
        assert!(
            log.contains("Terraform has been successfully initialized"),
            "{log}"
        );
        assert_eq!(
            app.api(&format!("/api/runs/{id}")).await["state"],
            "planning",
            "{db:?}"
        );

        // Stopped midway, the run keeps that log and says why it ended.
        assert_eq!(
            post(&app, &format!("/api/runs/{id}/cancel"), json!({}))
                .await
                .status(),
            200
        );
        wait_state(&app, id, "canceled").await;
        let log = wait_until(Duration::from_secs(30), || async {
            let log = app.run_log(id).await;
            log.contains("gantry: canceled").then_some(log)
        })
        .await;
        assert!(log.contains("slow plan: started"), "{log}");
        // Folded into the compressed artifact once the run ended.
        let folded = wait_until(Duration::from_secs(10), || async {
            app.ctx.store.artifact(id, ArtifactKind::Log).await.unwrap()
        })
        .await;
        assert_eq!(String::from_utf8(folded.bytes).unwrap(), log);
        assert_eq!(folded.sha256, sha256_hex(log.as_bytes()));
        app.stop().await;
    }
}

/// The kinds of artifact run `id` has in the store.
async fn kinds(app: &TestApp, id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM run_artifacts WHERE run_id = $1 ORDER BY kind")
        .bind(id)
        .fetch_all(app.ctx.store.pool())
        .await
        .unwrap()
}

/// Waits until run `id`'s log is folded into its artifact (the log is
/// finished just after the run's last state is recorded) and no chunk is
/// left, then returns the run's artifact kinds.
async fn folded_kinds(app: &TestApp, id: i64) -> Vec<String> {
    wait_until(Duration::from_secs(20), || async {
        let chunks: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM run_log_chunks WHERE run_id = $1")
                .bind(id)
                .fetch_one(app.ctx.store.pool())
                .await
                .unwrap();
        let kinds = kinds(app, id).await;
        (chunks == 0 && kinds.iter().any(|k| k == "log")).then_some(kinds)
    })
    .await
}

/// Everything stored is older than any retention keeps it.
async fn age_everything(app: &TestApp) {
    for table in ["run_artifacts", "run_log_chunks"] {
        sqlx::query(&format!("UPDATE {table} SET created_at = 1"))
            .execute(app.ctx.store.pool())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn retention_deletes_old_plans_but_keeps_what_a_pr_and_a_confirmation_need() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", crate::support::origin::null_config("dns-pr"))],
        "dns change",
        &["refs/pull/7/head"],
    );
    let app = env.spawn_app(&dns_yaml(&env, false)).await;
    // A merge waits for confirmation; pull request 7 has a plan.
    merge(&env, &app, base, "dns-v2", "merge-1", 5).await;
    let waiting = app.wait_for_runs_done(1).await[0]["id"].as_i64().unwrap();
    app.send_webhook(
        "pull_request",
        "pr-7",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(2).await;
    let pr_run = runs.iter().find(|r| r["id"] != waiting).unwrap()["id"]
        .as_i64()
        .unwrap();
    let all = ["log", "plan_file", "plan_json"];
    assert_eq!(folded_kinds(&app, waiting).await, all);
    assert_eq!(folded_kinds(&app, pr_run).await, all);

    age_everything(&app).await;
    gantry::retention::pass(&app.ctx.store, &app.ctx.config()).await;
    assert_eq!(
        kinds(&app, waiting).await,
        all,
        "a waiting confirmation keeps its plan"
    );
    assert_eq!(
        kinds(&app, pr_run).await,
        all,
        "a PR's newest run keeps its plan"
    );

    // Once applied, the merge's plan is only old data.
    post(&app, &format!("/api/runs/{waiting}/apply"), json!({})).await;
    wait_state(&app, waiting, "applied").await;
    // The apply's log is folded again, now with the apply's output.
    wait_until(Duration::from_secs(20), || async {
        let chunks: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM run_log_chunks WHERE run_id = $1")
                .bind(waiting)
                .fetch_one(app.ctx.store.pool())
                .await
                .unwrap();
        let log = app.run_log(waiting).await;
        (chunks == 0 && log.contains("Apply complete")).then_some(())
    })
    .await;
    age_everything(&app).await;
    gantry::retention::pass(&app.ctx.store, &app.ctx.config()).await;
    assert!(kinds(&app, waiting).await.is_empty());
    assert_eq!(kinds(&app, pr_run).await, all);
    // The current state is never pruned.
    assert_eq!(
        resources(&app.api("/api/workspaces/dns/state").await),
        ["null_resource.this"]
    );
    app.stop().await;
}

/// A run that waited for confirmation across the upgrade has its plan on the
/// planning replica's disk, where gantry kept it before: it is taken into the
/// store and applied, hash checked.
#[tokio::test]
async fn a_plan_kept_on_disk_before_the_upgrade_is_still_applied() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let base = env.origin.initial();
    let app = env.spawn_app(&dns_yaml(&env, false)).await;
    merge(&env, &app, base, "dns-v2", "merge-1", 7).await;
    let id = app.wait_for_runs_done(1).await[0]["id"].as_i64().unwrap();
    // As an older gantry left it: the plan file on disk, not in the store.
    let store = &app.ctx.store;
    let plan = store
        .artifact(id, ArtifactKind::PlanFile)
        .await
        .unwrap()
        .unwrap();
    sqlx::query("DELETE FROM run_artifacts WHERE run_id = $1 AND kind = 'plan_file'")
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    let legacy = env.data_dir().join(format!("runs/{id}/plan.tfplan"));
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    std::fs::write(&legacy, &plan.bytes).unwrap();

    post(&app, &format!("/api/runs/{id}/apply"), json!({})).await;
    wait_state(&app, id, "applied").await;
    let imported = store
        .artifact(id, ArtifactKind::PlanFile)
        .await
        .unwrap()
        .expect("taken into the store");
    assert_eq!(imported.sha256, plan.sha256);
    assert!(!legacy.exists());
    app.stop().await;
}
