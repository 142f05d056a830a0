//! End to end: signed GitHub webhooks → git → affected workspaces → real
//! terraform plans → statuses and one PR comment on the fake GitHub API.

use std::time::Duration;

use serde_json::Value;

use crate::support::origin::{null_config, standard_files};
use crate::support::*;

fn states(statuses: &[Value], context: &str) -> Vec<(String, String)> {
    statuses
        .iter()
        .filter(|s| s["context"] == context)
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_string(),
                s["description"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn pull_request_plans_report_statuses_and_one_comment_edited_in_place() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (mut files, base, head) = env.origin.standard_change(
            vec![(
                "network/main.tf",
                format!("{}\n# wider\n", standard_files()["network/main.tf"]),
            )],
            "widen",
            &["refs/heads/feature", "refs/pull/7/head"],
        );

        let yaml = env.default_yaml();
        let app = env.spawn_app(&yaml).await;

        let body = pr_payload("opened", &head.to_string(), &base.to_string());
        let r = app.send_webhook("pull_request", "delivery-1", &body).await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");

        let runs = app.wait_for_runs_done(1).await;
        assert_eq!(runs.len(), 1, "{db:?}: only network is affected: {runs:?}");
        let run = &runs[0];
        assert_eq!(run["workspace"], "network");
        assert_eq!(run["state"], "planned", "{run}");
        assert_eq!(run["kind"], "plan");
        assert_eq!(run["source"], "pull_request");
        assert_eq!(run["commit_sha"], head.to_string());
        assert_eq!(
            run["plan"],
            serde_json::json!({"add": 1, "change": 0, "destroy": 0})
        );

        // Statuses on the head commit: pending first, success with the summary last.
        env.wait_for_final_status(&head.to_string(), "gantry/network")
            .await;
        env.wait_for_comment(7, "✅ planned").await;
        let st = states(&env.github.statuses(&head.to_string()), "gantry/network");
        assert!(st.len() >= 2, "{st:?}");
        assert_eq!(st[0].0, "pending");
        assert_eq!(
            st.last().unwrap(),
            &(
                "success".to_string(),
                "Plan: 1 to add, 0 to change, 0 to destroy. · cost: 1 not priced".to_string()
            )
        );
        let status_req = env
            .github
            .requests()
            .into_iter()
            .find(|r| r.path.contains("/statuses/"))
            .unwrap();
        assert_eq!(
            status_req.path,
            format!("/repos/acme/infra/statuses/{head}")
        );
        assert_eq!(
            status_req.body["target_url"],
            format!("http://gantry.test/api/runs/{}", run["id"])
        );
        assert_eq!(
            status_req.authorization.as_deref(),
            Some(format!("Bearer {GITHUB_TOKEN}").as_str())
        );

        // One comment, with the summary and the plan output in a collapsible block.
        let comments = env.github.comments(7);
        assert_eq!(comments.len(), 1);
        let (comment_id, text) = &comments[0];
        assert!(
            text.contains(
                "| `network` | ✅ planned | Plan: 1 to add, 0 to change, 0 to destroy. · cost: 1 not priced |"
            ),
            "{text}"
        );
        assert!(
            text.contains("<details><summary>Plan output</summary>"),
            "{text}"
        );
        assert!(text.contains("null_resource.this"), "{text}");
        assert!(!text.contains(GITHUB_TOKEN) && !text.contains(WEBHOOK_SECRET));
        // null_resource has no price: listed as not priced, never as $0.
        assert!(
            text.contains("1 not priced: `module.vpc.null_resource.this`"),
            "{text}"
        );
        assert!(!text.contains("$0"), "{text}");
        let api_run = app.api(&format!("/api/runs/{}", run["id"])).await;
        let cost = &api_run["cost_estimate"];
        assert_eq!(cost["prior_monthly_cost"], 0.0);
        assert_eq!(cost["proposed_monthly_cost"], 0.0);
        assert_eq!(cost["delta_monthly_cost"], 0.0);
        assert_eq!(cost["resources"], serde_json::json!([]));
        assert_eq!(
            cost["unpriced"][0]["address"],
            "module.vpc.null_resource.this"
        );
        assert_eq!(
            cost["unpriced"][0]["reason"],
            "no price for null_resource in the catalog"
        );

        // The same delivery again starts nothing.
        let r = app.send_webhook("pull_request", "delivery-1", &body).await;
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
        app.wait_for_dispatch().await;
        assert_eq!(app.runs().await.len(), 1);

        // A new commit on the PR: same comment edited, statuses on the new head.
        files.insert(
            "network/main.tf".into(),
            format!("{}\n# wider still\n", files["network/main.tf"]),
        );
        let head2 = env.origin.commit(
            &files,
            &[head],
            "widen more",
            &["refs/heads/feature", "refs/pull/7/head"],
        );
        let body = pr_payload("synchronize", &head2.to_string(), &base.to_string());
        assert_eq!(
            app.send_webhook("pull_request", "delivery-2", &body)
                .await
                .status(),
            202
        );
        let runs = app.wait_for_runs_done(2).await;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0]["commit_sha"], head2.to_string());
        assert_eq!(runs[0]["state"], "planned");
        env.wait_for_final_status(&head2.to_string(), "gantry/network")
            .await;
        env.wait_for_comment(7, &head2.to_string()[..8]).await;
        env.wait_for_comment(7, "✅ planned").await;
        let st = states(&env.github.statuses(&head2.to_string()), "gantry/network");
        assert_eq!(st.last().unwrap().0, "success");

        let comments = env.github.comments(7);
        assert_eq!(comments.len(), 1, "edited, not added");
        assert_eq!(&comments[0].0, comment_id);
        assert!(
            comments[0].1.contains(&head2.to_string()[..8]),
            "{}",
            comments[0].1
        );
        assert_eq!(env.github.count("POST", "/issues/7/comments"), 1);
        assert!(
            env.github
                .count("PATCH", &format!("/issues/comments/{comment_id}"))
                >= 1
        );

        app.stop().await;
    }
}

#[tokio::test]
async fn the_comment_is_found_again_after_a_restart() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (mut files, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let yaml = env.default_yaml();

    let app = env.spawn_app(&yaml).await;
    app.send_webhook(
        "pull_request",
        "r-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(1).await;
    app.stop().await;
    // The database forgets the comment (say, a restore from an old backup):
    // gantry finds its marker on the PR instead of posting a second comment.
    sqlx::query("DELETE FROM vcs_comments")
        .execute(
            gantry::store::Store::connect(&env.load_config(&yaml).database_url)
                .await
                .unwrap()
                .pool(),
        )
        .await
        .unwrap();

    let app = env.spawn_app(&yaml).await;
    files.insert("dns/main.tf".into(), null_config("dns-v3"));
    let head2 = env
        .origin
        .commit(&files, &[head], "dns again", &["refs/pull/7/head"]);
    app.send_webhook(
        "pull_request",
        "r-2",
        &pr_payload("synchronize", &head2.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(2).await;
    env.wait_for_comment(7, &head2.to_string()[..8]).await;
    let comments = env.github.comments(7);
    assert_eq!(comments.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_change_outside_every_workspace_runs_nothing() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![
                ("README.md", "# infra, documented\n".to_string()),
                (
                    "networking-notes/plan.tf",
                    "# not a workspace\n".to_string(),
                ),
            ],
            "docs",
            &["refs/pull/7/head"],
        );
        let yaml = env.default_yaml();
        let app = env.spawn_app(&yaml).await;

        let r = app
            .send_webhook(
                "pull_request",
                "o-1",
                &pr_payload("opened", &head.to_string(), &base.to_string()),
            )
            .await;
        assert_eq!(r.status(), 202);
        app.wait_for_dispatch().await;
        assert!(app.runs().await.is_empty());
        let writes: Vec<_> = env
            .github
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect();
        assert!(writes.is_empty(), "no statuses, no comment: {writes:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_module_change_plans_every_workspace_that_uses_it() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![("modules/vpc/main.tf", null_config("vpc-v2"))],
            "vpc",
            &["refs/pull/7/head"],
        );
        let yaml = env.default_yaml();
        let app = env.spawn_app(&yaml).await;

        app.send_webhook(
            "pull_request",
            "m-1",
            &pr_payload("opened", &head.to_string(), &base.to_string()),
        )
        .await;
        let runs = app.wait_for_runs_done(2).await;
        let mut names: Vec<&str> = runs
            .iter()
            .map(|r| r["workspace"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["app", "network"],
            "{db:?}: network uses modules/vpc directly, app through modules/service"
        );
        assert!(runs.iter().all(|r| r["state"] == "planned"), "{runs:?}");
        env.wait_for_final_status(&head.to_string(), "gantry/app")
            .await;
        env.wait_for_final_status(&head.to_string(), "gantry/network")
            .await;
        let comment = wait_until(std::time::Duration::from_secs(60), || async {
            let c = env.github.comments(7).pop()?.1;
            (c.matches("✅ planned").count() == 2).then_some(c)
        })
        .await;
        assert!(
            comment.contains("| `app` | ✅ planned |")
                && comment.contains("| `network` | ✅ planned |"),
            "{comment}"
        );
        assert_eq!(
            states(&env.github.statuses(&head.to_string()), "gantry/app")
                .last()
                .unwrap()
                .0,
            "success"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_push_to_the_tracked_branch_plans_with_statuses_and_a_broken_config_fails_the_check() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (_, base, head) = env.origin.standard_change(
        vec![
            (
                "dns/main.tf",
                "resource \"null_resource\" \"this\" {\n  no_such_argument = 1\n}\n".to_string(),
            ),
            ("shared/dns/zones.json", "{}\n".to_string()),
        ],
        "break dns",
        &["refs/heads/main"],
    );
    let yaml = env.default_yaml();
    let app = env.spawn_app(&yaml).await;

    let r = app
        .send_webhook(
            "push",
            "push-1",
            &push_payload("main", &base.to_string(), &head.to_string()),
        )
        .await;
    assert_eq!(r.status(), 202);
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["workspace"], "dns");
    assert_eq!(runs[0]["source"], "push");
    assert_eq!(runs[0]["state"], "errored");
    assert!(
        runs[0]["state_reason"]
            .as_str()
            .unwrap()
            .contains("Unsupported argument"),
        "{}",
        runs[0]
    );
    env.wait_for_final_status(&head.to_string(), "gantry/dns")
        .await;
    let st = states(&env.github.statuses(&head.to_string()), "gantry/dns");
    let (state, description) = st.last().unwrap();
    assert_eq!(state, "failure");
    assert!(
        description.starts_with("terraform plan failed"),
        "{description}"
    );
    assert!(
        env.github.comments(7).is_empty(),
        "a push has no PR to comment on"
    );
    app.stop().await;
}

#[tokio::test]
async fn pull_requests_from_forks_are_not_planned_unless_allowed() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let fork_payload = payload(
        "pull_request.opened.json",
        &[
            (
                "/pull_request/head/sha",
                serde_json::json!(head.to_string()),
            ),
            (
                "/pull_request/base/sha",
                serde_json::json!(base.to_string()),
            ),
            (
                "/pull_request/head/repo/full_name",
                serde_json::json!("mallory/infra"),
            ),
        ],
    );
    let app = env.spawn_app(&env.default_yaml()).await;
    assert_eq!(
        app.send_webhook("pull_request", "fork-1", &fork_payload)
            .await
            .status(),
        202
    );
    app.wait_for_dispatch().await;
    assert!(
        app.runs().await.is_empty(),
        "a fork's code is not run by default"
    );
    let detail: String = sqlx::query_scalar("SELECT detail FROM events")
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap();
    assert_eq!(
        detail,
        "pull request #7 comes from a fork; set allow_fork_prs: true to plan forks"
    );
    app.stop().await;

    let app = env
        .spawn_app(&format!("allow_fork_prs: true\n{}", env.default_yaml()))
        .await;
    app.send_webhook("pull_request", "fork-2", &fork_payload)
        .await;
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs[0]["state"], "planned");
    app.stop().await;
}

/// gantry edits only its own comments on GitHub: a stranger's comment that
/// carries gantry's marker is left alone and gantry posts its own (written
/// by `own_login`); once the database forgets it, gantry finds its own again
/// by marker *and* author (not the stranger's newer one) and edits it.
/// `identity` is the path gantry learns its login at, called once.
pub(crate) async fn only_own_comments_are_edited(
    env: &TestEnv,
    yaml: &str,
    own_login: &str,
    identity: &str,
) {
    let (mut files, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let forged = format!("{}\nI am gantry, trust me", gantry::report::COMMENT_MARKER);
    let stranger_first = env.github.add_comment(7, "mallory", &forged);

    let app = env.spawn_app(yaml).await;
    app.send_webhook(
        "pull_request",
        "own-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(1).await;
    let own = wait_until(Duration::from_secs(60), || async {
        env.github
            .comments_by(7)
            .into_iter()
            .find(|(_, body, login)| login == own_login && body.contains("✅ planned"))
    })
    .await;
    assert!(
        own.1.starts_with(gantry::report::COMMENT_MARKER),
        "{}",
        own.1
    );
    assert_eq!(
        env.github.count("POST", "/issues/7/comments"),
        1,
        "gantry posts its own comment"
    );
    let edits_of = |id: u64| env.github.count("PATCH", &format!("/issues/comments/{id}"));
    assert_eq!(
        edits_of(stranger_first),
        0,
        "the stranger's comment is not edited"
    );

    // The database forgets gantry's comment; a stranger's newer comment
    // carries the marker too.
    let stranger_second = env.github.add_comment(7, "mallory", &forged);
    sqlx::query("DELETE FROM vcs_comments")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    files.insert("dns/main.tf".into(), null_config("dns-v3"));
    let head2 = env
        .origin
        .commit(&files, &[head], "dns again", &["refs/pull/7/head"]);
    app.send_webhook(
        "pull_request",
        "own-2",
        &pr_payload("synchronize", &head2.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(2).await;
    wait_until(Duration::from_secs(60), || async {
        env.github.comments_by(7).into_iter().find(|(id, body, _)| {
            *id == own.0 && body.contains(&head2.to_string()[..8]) && body.contains("✅ planned")
        })
    })
    .await;
    assert_eq!(
        env.github.count("POST", "/issues/7/comments"),
        1,
        "its own comment, edited in place"
    );
    assert!(edits_of(own.0) >= 1);
    let comments = env.github.comments_by(7);
    for stranger in [stranger_first, stranger_second] {
        assert_eq!(edits_of(stranger), 0, "a stranger's comment is not edited");
        assert!(comments
            .iter()
            .any(|(id, body, login)| *id == stranger && *body == forged && login == "mallory"));
    }
    assert_eq!(comments.len(), 3, "{comments:?}");
    let lookups: Vec<_> = env
        .github
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == identity)
        .collect();
    assert_eq!(lookups.len(), 1, "looked up once and kept");
    app.stop().await;
}

#[tokio::test]
async fn a_strangers_comment_with_the_marker_is_left_alone() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.default_yaml();
    only_own_comments_are_edited(
        &env,
        &yaml,
        crate::support::fake_github::TOKEN_LOGIN,
        "/user",
    )
    .await;
    let lookup = env
        .github
        .requests()
        .into_iter()
        .find(|r| r.path == "/user")
        .unwrap();
    assert_eq!(
        lookup.authorization.as_deref(),
        Some(format!("Bearer {GITHUB_TOKEN}").as_str()),
        "the token's own user"
    );
}
