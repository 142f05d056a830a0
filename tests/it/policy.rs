//! OPA policy checks on real plans: a policy group in its own repository,
//! enforcement levels deciding what may be applied, overrides, and policy
//! errors failing the check.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::origin::{null_config, Origin};
use crate::support::*;

const HCL: &str = r#"version = "v1"
policy "no_forbidden" {
  enabled           = true
  enforcement_level = "hard-mandatory"
}
policy "soft_marker" {
  enabled           = true
  enforcement_level = "soft-mandatory"
}
policy "advice" {
  enabled           = true
  enforcement_level = "advisory"
}
"#;

/// Pre-1.0 syntax.
const HARD: &str = r#"package terraform

deny[msg] {
	r := input.tfplan.resource_changes[_]
	r.type == "null_resource"
	r.change.after.triggers.marker == "forbidden"
	msg := sprintf("%s: marker %q is forbidden", [r.address, r.change.after.triggers.marker])
}
"#;

/// Rego 1.0 syntax.
const SOFT: &str = r#"package terraform

deny contains msg if {
	some r in input.tfplan.resource_changes
	r.change.after.triggers.marker == "soft"
	msg := sprintf("%s: needs a second look (workspace %s)", [r.address, input.tfrun.workspace.name])
}
"#;

const ADVICE: &str = r#"package terraform

deny contains msg if {
	some r in input.tfplan.resource_changes
	r.change.after.triggers.marker == "advice"
	msg := "consider another marker"
}
"#;

fn policy_files(hard: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("terraform/scalr-policy.hcl".to_string(), HCL.to_string()),
        ("terraform/no_forbidden.rego".to_string(), hard.to_string()),
        ("terraform/soft_marker.rego".to_string(), SOFT.to_string()),
        ("terraform/advice.rego".to_string(), ADVICE.to_string()),
    ])
}

fn yaml(env: &TestEnv) -> String {
    let mut y = env.config_yaml(
        "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    auto_apply: true\n",
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    );
    y.push_str(
        "policy_groups:\n  - name: baseline\n    provider: github\n    repo: acme/policies\n    branch: main\n    path: terraform\n    environments: [production]\n",
    );
    y
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn merge(
    env: &TestEnv,
    app: &TestApp,
    parent: git2::Oid,
    marker: &str,
    delivery: &str,
) -> (git2::Oid, Value) {
    let mut files = crate::support::origin::standard_files();
    files.insert("dns/main.tf".into(), null_config(marker));
    let sha = env
        .origin
        .commit(&files, &[parent], "merge", &["refs/heads/main"]);
    app.send_webhook(
        "push",
        delivery,
        &push_payload("main", &parent.to_string(), &sha.to_string()),
    )
    .await;
    let run = wait_until(Duration::from_secs(120), || async {
        let runs = app.runs().await;
        runs.into_iter()
            .find(|r| r["commit_sha"] == sha.to_string())
            .filter(|r| {
                ["applied", "errored", "needs_confirmation"].contains(&r["state"].as_str().unwrap())
            })
    })
    .await;
    (sha, run)
}

#[tokio::test]
async fn enforcement_levels_decide_what_is_applied() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let policies = Origin::new(&env.origin.root, "acme/policies");
        policies.commit(&policy_files(HARD), &[], "policies", &["refs/heads/main"]);
        let base = env.origin.initial();
        let app = env.spawn_app(&yaml(&env)).await;

        // Hard-mandatory failure: the check fails and nothing is applied.
        let (sha, run) = merge(&env, &app, base, "forbidden", "m-1").await;
        assert_eq!(run["state"], "errored", "{db:?}: {run}");
        assert_eq!(
            run["state_reason"],
            "apply refused: blocked by policy: no_forbidden (hard-mandatory) failed"
        );
        let status = env
            .wait_for_final_status(&sha.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "failure");
        let r = app
            .client
            .get(app.url("/api/workspaces/dns/state"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "nothing applied");
        let checks = &app.api(&format!("/api/runs/{}", run["id"])).await["policy_results"];
        assert_eq!(checks[0]["policy"], "no_forbidden");
        assert_eq!(checks[0]["result"], "failed");
        assert_eq!(
            checks[0]["messages"][0],
            "null_resource.this: marker \"forbidden\" is forbidden"
        );
        assert_eq!(checks[1]["result"], "passed");

        // Soft-mandatory failure: blocked until an override, then applied.
        let (sha2, run) = merge(&env, &app, sha, "soft", "m-2").await;
        let id = run["id"].as_i64().unwrap();
        assert_eq!(run["state"], "needs_confirmation", "{run}");
        assert!(run["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("blocked by policy: soft_marker (soft-mandatory) failed"));
        let r = post(&app, &format!("/api/runs/{id}/apply"), json!({})).await;
        assert_eq!(r.status(), 409);
        assert_eq!(
            post(&app, &format!("/api/runs/{id}/override"), json!({}))
                .await
                .status(),
            400,
            "a reason is required"
        );
        assert_eq!(
            post(
                &app,
                &format!("/api/runs/{id}/override"),
                json!({"reason": "reviewed by platform"})
            )
            .await
            .status(),
            200
        );
        assert_eq!(
            post(&app, &format!("/api/runs/{id}/apply"), json!({}))
                .await
                .status(),
            200
        );
        let applied = wait_until(Duration::from_secs(120), || async {
            let r = app.api(&format!("/api/runs/{id}")).await;
            (r["state"] == "applied").then_some(r)
        })
        .await;
        assert_eq!(applied["policy_override"], "api: reviewed by platform");
        assert_eq!(
            app.api("/api/workspaces/dns/state").await["resources"][0]["instances"][0]
                ["attributes"]["triggers"]["marker"],
            "soft"
        );
        let audit = app.api("/api/audit?workspace=dns").await;
        assert!(audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "override" && e["detail"] == "reviewed by platform"));

        // Advisory failure: a warning only.
        let (sha3, run) = merge(&env, &app, sha2, "advice", "m-3").await;
        assert_eq!(run["state"], "applied", "{run}");
        let status = env
            .wait_for_final_status(&sha3.to_string(), "gantry/dns")
            .await;
        assert_eq!(status["state"], "success");
        assert!(
            status["description"]
                .as_str()
                .unwrap()
                .ends_with("· policies: 1 failed (advisory)"),
            "{status}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn pr_checks_report_policies_and_a_broken_policy_fails_the_check() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let policies = Origin::new(&env.origin.root, "acme/policies");
    // A policy that does not compile: the check fails, it never passes silently.
    policies.commit(
        &policy_files("package terraform\n\ndeny[msg] { this is not rego }\n"),
        &[],
        "broken",
        &["refs/heads/main"],
    );
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("forbidden"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let app = env.spawn_app(&yaml(&env)).await;
    app.send_webhook(
        "pull_request",
        "p-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs[0]["state"], "planned");
    let status = env
        .wait_for_final_status(&head.to_string(), "gantry/dns")
        .await;
    assert_eq!(status["state"], "failure", "{status}");
    assert!(
        status["description"]
            .as_str()
            .unwrap()
            .ends_with("· policies: 1 failed (hard)"),
        "{status}"
    );
    let checks = &app.api(&format!("/api/runs/{}", runs[0]["id"])).await["policy_results"];
    assert_eq!(checks[0]["result"], "errored");
    assert!(
        checks[0]["messages"][0]
            .as_str()
            .unwrap()
            .contains("no_forbidden.rego"),
        "{checks}"
    );
    // The policy repository's commit says the group does not load.
    let policy_sha = policies
        .repo
        .refname_to_id("refs/heads/main")
        .unwrap()
        .to_string();
    let group_status = wait_until(Duration::from_secs(30), || async {
        let st = env.github.statuses(&policy_sha);
        (!st.is_empty()).then_some(st)
    })
    .await;
    assert_eq!(group_status[0]["context"], "gantry/policy-group");
    assert_eq!(group_status[0]["state"], "error");

    // Fixed on the policy branch (push webhook): the next plan is evaluated and reported.
    let fixed = policies.commit(
        &policy_files(HARD),
        &[git2::Oid::from_str(&policy_sha).unwrap()],
        "fix",
        &["refs/heads/main"],
    );
    let mut push =
        serde_json::from_slice::<Value>(&push_payload("main", &policy_sha, &fixed.to_string()))
            .unwrap();
    push["repository"]["full_name"] = json!("acme/policies");
    app.send_webhook("push", "policy-push", &serde_json::to_vec(&push).unwrap())
        .await;
    app.wait_for_dispatch().await;
    let mut files = crate::support::origin::standard_files();
    files.insert("dns/main.tf".into(), null_config("forbidden"));
    files.insert("dns/extra.tf".into(), "# re-plan\n".into());
    let head2 = env
        .origin
        .commit(&files, &[head], "again", &["refs/pull/7/head"]);
    app.send_webhook(
        "pull_request",
        "p-2",
        &pr_payload("synchronize", &head2.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(2).await;
    let comment = env.wait_for_comment(7, "baseline/no_forbidden").await;
    assert!(comment.contains("| `baseline/no_forbidden` | hard-mandatory | ❌ failed | null_resource.this: marker \"forbidden\" is forbidden |"), "{comment}");
    assert!(
        comment.contains("| `baseline/soft_marker` | soft-mandatory | ✅ passed |"),
        "{comment}"
    );

    // Broken again: the last good set stays in force and the policy commit says why.
    let broken = policies.commit(
        &policy_files("package terraform\n\ndeny[msg] { nope nope }\n"),
        &[fixed],
        "oops",
        &["refs/heads/main"],
    );
    let mut push = serde_json::from_slice::<Value>(&push_payload(
        "main",
        &fixed.to_string(),
        &broken.to_string(),
    ))
    .unwrap();
    push["repository"]["full_name"] = json!("acme/policies");
    app.send_webhook("push", "policy-push-2", &serde_json::to_vec(&push).unwrap())
        .await;
    app.wait_for_dispatch().await;
    // Through the outbox: delivered just after the dispatch.
    let broken_status = wait_until(Duration::from_secs(30), || async {
        env.github.statuses(&broken.to_string()).first().cloned()
    })
    .await;
    assert_eq!(broken_status["state"], "error");
    assert_eq!(
        app.ctx.policy_groups.get("baseline").unwrap().sha,
        fixed.to_string()
    );
    files.insert("dns/extra.tf".into(), "# once more\n".into());
    let head3 = env
        .origin
        .commit(&files, &[head2], "third", &["refs/pull/7/head"]);
    app.send_webhook(
        "pull_request",
        "p-3",
        &pr_payload("synchronize", &head3.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(3).await;
    let checks = &app.api(&format!("/api/runs/{}", runs[0]["id"])).await["policy_results"];
    assert_eq!(
        checks[0]["result"], "failed",
        "evaluated with the last good set: {checks}"
    );
    app.stop().await;
}

#[tokio::test]
async fn gantry_override_lets_a_soft_mandatory_failure_be_applied_before_merge() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let policies = Origin::new(&env.origin.root, "acme/policies");
    policies.commit(&policy_files(HARD), &[], "policies", &["refs/heads/main"]);
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("soft"))],
        "dns",
        &["refs/pull/7/head"],
    );
    env.github.set_pr_head(7, &head.to_string());
    env.github.set_permission("octocat", "write");
    let app = env
        .spawn_app(&yaml(&env).replace(
            "    auto_apply: true\n",
            "    workflow: apply_before_merge\n",
        ))
        .await;
    app.send_webhook(
        "pull_request",
        "p-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(1).await;
    let id = runs[0]["id"].as_i64().unwrap();
    let comment = |delivery: &'static str, login: &'static str, body: &'static str| {
        let app = &app;
        async move {
            let p = payload(
                "issue_comment.created.json",
                &[
                    ("/comment/body", json!(body)),
                    ("/comment/user/login", json!(login)),
                    ("/issue/number", json!(7)),
                ],
            );
            app.send_webhook("issue_comment", delivery, &p).await;
            app.wait_for_dispatch().await;
        }
    };
    let replied = |needle: &'static str| {
        let env = &env;
        async move {
            wait_until(Duration::from_secs(30), || async {
                env.github
                    .comments(7)
                    .into_iter()
                    .map(|(_, b)| b)
                    .find(|b| b.contains(needle))
            })
            .await
        }
    };

    comment("c-1", "octocat", "/gantry apply").await;
    replied(
        "apply refused: the plan of dns is blocked by policy: soft_marker (soft-mandatory) failed",
    )
    .await;
    comment("c-2", "mallory", "/gantry override trust me").await;
    replied("override refused: mallory needs write access").await;
    comment(
        "c-3",
        "octocat",
        "/gantry override\nchecked with the DNS team",
    )
    .await;
    replied("soft-mandatory policy failures overridden for dns.").await;
    assert_eq!(
        app.api(&format!("/api/runs/{id}")).await["policy_override"],
        "github:octocat: checked with the DNS team"
    );
    comment("c-4", "octocat", "/gantry apply").await;
    wait_until(Duration::from_secs(120), || async {
        (app.api(&format!("/api/runs/{id}")).await["state"] == "applied").then_some(())
    })
    .await;
    let text = env.wait_for_comment(7, "✅ applied").await;
    assert!(
        text.contains(
            "Soft-mandatory failures overridden by github:octocat: checked with the DNS team."
        ),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_policy_pull_request_gets_an_impact_table_and_status() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let policies = Origin::new(&env.origin.root, "acme/policies");
    let policy_base = policies.commit(&policy_files(HARD), &[], "policies", &["refs/heads/main"]);
    let workspaces = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n  - name: network\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: network\n";
    let mut y = env.config_yaml(workspaces, 2, "127.0.0.1:0", &terraform_bin());
    y.push_str("policy_groups:\n  - name: baseline\n    provider: github\n    repo: acme/policies\n    branch: main\n    path: terraform\n    environments: [production]\n");
    let planner = env.spawn_app(&y).await;

    // Both workspaces have a stored plan (a merge, waiting for confirmation).
    let base = env.origin.initial();
    let mut files = crate::support::origin::standard_files();
    files.insert("dns/main.tf".into(), null_config("dns-v2"));
    files.insert("modules/vpc/main.tf".into(), null_config("vpc-v2"));
    let merged = env
        .origin
        .commit(&files, &[base], "merge", &["refs/heads/main"]);
    planner
        .send_webhook(
            "push",
            "m-1",
            &push_payload("main", &base.to_string(), &merged.to_string()),
        )
        .await;
    let runs = planner.wait_for_runs_done(2).await;
    assert!(
        runs.iter().all(|r| r["state"] == "needs_confirmation"),
        "{runs:?}"
    );
    // The analysis runs on another replica, with a data_dir of its own: the
    // plans it reads come from the store.
    planner.stop().await;
    let app = env.spawn_app(&env.replica_yaml(&y, "analyst")).await;

    // The policy PR forbids dns's marker: dns flips to failing, network is unaffected.
    let stricter = HARD.replace("== \"forbidden\"", "== \"dns-v2\"");
    let head = policies.commit(
        &policy_files(&stricter),
        &[policy_base],
        "stricter",
        &["refs/pull/3/head"],
    );
    let pr = payload(
        "pull_request.opened.json",
        &[
            ("/number", json!(3)),
            ("/pull_request/number", json!(3)),
            ("/pull_request/head/sha", json!(head.to_string())),
            ("/pull_request/base/sha", json!(policy_base.to_string())),
            ("/repository/full_name", json!("acme/policies")),
            ("/pull_request/head/repo/full_name", json!("acme/policies")),
            ("/pull_request/base/repo/full_name", json!("acme/policies")),
        ],
    );
    let started = std::time::Instant::now();
    app.send_webhook("pull_request", "policy-pr-1", &pr).await;
    let comment = env.wait_for_comment(3, "gantry policy impact").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no terraform runs for impact analysis"
    );
    let lines: Vec<&str> = comment.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(lines.len(), 2, "{comment}");
    assert!(lines[0].starts_with("| `dns` | passed | ❌ 1 failed (hard) | + no_forbidden: null_resource.this: marker \"dns-v2\" is forbidden |"), "{comment}");
    assert_eq!(
        lines[1], "| `network` | passed | passed | unchanged |",
        "{comment}"
    );
    assert!(
        comment.contains("2 workspaces evaluated against their latest plan; 1 change outcome."),
        "{comment}"
    );
    // Reports go out through the outbox: the status may land just after the comment.
    let status = wait_until(Duration::from_secs(30), || async {
        let st = env.github.statuses(&head.to_string());
        (!st.is_empty()).then_some(st)
    })
    .await;
    assert_eq!(status[0]["context"], "gantry/policy-impact");
    assert_eq!(status[0]["state"], "failure");
    assert_eq!(
        status[0]["description"],
        "1 workspaces would newly fail hard-mandatory policies"
    );
    // No runs were started by the policy PR.
    assert_eq!(app.runs().await.len(), 2);
    app.stop().await;
}
