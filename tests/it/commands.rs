//! Apply before merge: `/gantry plan|apply` comments, the commenter's write
//! access and the workspace's apply requirements checked through the API.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::origin::null_config;
use crate::support::*;

fn yaml(env: &TestEnv) -> String {
    env.config_yaml(
        r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    workflow: apply_before_merge
    apply_requirements: [approved]
"#,
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    )
}

async fn comment(app: &TestApp, delivery: &str, login: &str, body: &str) -> Value {
    let payload = payload(
        "issue_comment.created.json",
        &[
            ("/comment/body", json!(body)),
            ("/comment/user/login", json!(login)),
            ("/issue/number", json!(7)),
        ],
    );
    let r = app.send_webhook("issue_comment", delivery, &payload).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// Waits for a reply to `login` containing `needle`.
async fn reply(env: &TestEnv, login: &str, needle: &str) -> String {
    let prefix = format!("@{login} ");
    wait_until(Duration::from_secs(60), || async {
        env.github
            .comments(7)
            .into_iter()
            .map(|(_, b)| b)
            .find(|b| b.starts_with(&prefix) && b.contains(needle))
    })
    .await
}

#[tokio::test]
async fn gantry_apply_checks_access_and_requirements_then_applies_the_shown_plan() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "dns",
            &["refs/pull/7/head"],
        );
        env.github.set_pr_head(7, &head.to_string());
        env.github.set_permission("octocat", "write");
        env.github.set_permission("reader", "read");
        let app = env.spawn_app(&yaml(&env)).await;
        app.send_webhook(
            "pull_request",
            "open-1",
            &pr_payload("opened", &head.to_string(), &base.to_string()),
        )
        .await;
        let runs = app.wait_for_runs_done(1).await;
        let id = runs[0]["id"].as_i64().unwrap();
        assert_eq!(runs[0]["state"], "planned");
        env.wait_for_comment(7, "✅ planned").await;

        // Not a collaborator, and read-only: refused.
        comment(&app, "c-1", "mallory", "/gantry apply").await;
        reply(
            &env,
            "mallory",
            "apply refused: mallory needs write access to acme/infra to apply.",
        )
        .await;
        comment(&app, "c-2", "reader", "/gantry apply").await;
        reply(&env, "reader", "apply refused: reader needs write access").await;
        // Write access, but the PR is not approved.
        comment(&app, "c-3", "octocat", "/gantry apply").await;
        reply(
            &env,
            "octocat",
            "apply refused: the pull request is not approved (`apply_requirements: [approved]`).",
        )
        .await;
        app.wait_for_dispatch().await;
        assert_eq!(
            app.api(&format!("/api/runs/{id}")).await["state"],
            "planned",
            "{db:?}: nothing applied"
        );

        // Approved: the plan shown on the PR is applied.
        env.github.approve(7);
        comment(&app, "c-4", "octocat", "/gantry apply -w dns").await;
        let run = wait_until(Duration::from_secs(120), || async {
            let run = app.api(&format!("/api/runs/{id}")).await;
            (run["state"] == "applied").then_some(run)
        })
        .await;
        assert_eq!(run["apply_requested_by"], "github:octocat");
        let state = app.api("/api/workspaces/dns/state").await;
        assert_eq!(state["resources"][0]["type"], "null_resource");
        let text = env.wait_for_comment(7, "✅ applied").await;
        assert!(
            text.contains("gantry apply for") && text.contains("Apply complete!"),
            "{text}"
        );
        assert_eq!(
            env.wait_for_final_status(&head.to_string(), "gantry/dns")
                .await["state"],
            "success"
        );

        let audit = app.api("/api/audit?workspace=dns").await;
        let actions: Vec<(String, String)> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            actions.contains(&("github:octocat".into(), "apply".into())),
            "{actions:?}"
        );
        let all = app.api("/api/audit").await;
        let refused = all["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "apply refused")
            .count();
        assert_eq!(refused, 3);
        app.stop().await;
    }
}

#[tokio::test]
async fn other_comments_are_ignored_and_unknown_commands_get_help() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    env.github.set_pr_head(7, &head.to_string());
    let app = env.spawn_app(&yaml(&env)).await;
    app.send_webhook(
        "pull_request",
        "open-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(1).await;

    let r = comment(&app, "c-1", "octocat", "LGTM, nice work").await;
    assert_eq!(r["status"], "ignored");
    comment(&app, "c-2", "octocat", "/gantry destroy").await;
    let help = reply(&env, "octocat", "unknown command `destroy`").await;
    assert!(help.contains("/gantry plan -w NAME"), "{help}");

    // /gantry plan -w re-plans that workspace at the head.
    comment(&app, "c-3", "octocat", "/gantry plan -w dns").await;
    let runs = app.wait_for_runs_done(2).await;
    assert_eq!(runs[0]["source"], "comment");
    assert_eq!(runs[0]["state"], "planned");
    assert_eq!(runs[0]["commit_sha"], head.to_string());
    comment(&app, "c-4", "octocat", "/gantry plan -w nope").await;
    reply(
        &env,
        "octocat",
        "nothing to plan: no workspace `nope` tracks acme/infra on branch main.",
    )
    .await;
    app.stop().await;
}
