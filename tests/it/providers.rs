//! GitLab, Bitbucket Cloud and Azure DevOps end to end: authenticated webhooks
//! built from the providers' documented payloads (`webhooks/<provider>/`) →
//! real git and terraform → statuses and one comment edited in place on a fake
//! API (exact paths and bodies), apply on merge driven once by the merged pull
//! request and the push of the same commit, bad credentials refused.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::fake_api::{Author, Call, FakeApi};
use crate::support::origin::{null_config, standard_files};
use crate::support::*;

/// Test values for one provider.
trait Case {
    fn kind(&self) -> &'static str;
    fn repo(&self) -> &'static str;
    /// API base path on the fake server.
    fn api_path(&self) -> &'static str;
    /// The ref the provider keeps for the pull request's commits.
    fn pr_ref(&self) -> &'static str;
    fn extra_yaml(&self) -> &'static str {
        ""
    }
    /// Headers and body of a delivery, authenticated with `secret`.
    fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: Value,
        secret: &str,
    ) -> (Vec<(String, String)>, Vec<u8>);
    fn pr_opened(&self, head: &str) -> (&'static str, Value);
    fn pr_updated(&self, head: &str, before: &str) -> (&'static str, Value);
    fn pr_merged(&self, head: &str, merge: &str) -> (&'static str, Value);
    fn push(&self, before: &str, after: &str) -> (&'static str, Value);
    fn branch_deleted(&self) -> (&'static str, Value);
    /// A new comment on pull request 7 by octocat.
    fn comment(&self, text: &str) -> (&'static str, Value);
    /// The final status call for `workspace` at `sha` (PR head or merge).
    fn is_final_status(&self, call: &Call, sha: &str, pr: bool) -> bool;
    fn comment_create_path(&self) -> String;
    fn comment_text<'a>(&self, call: &'a Call) -> &'a str;
    fn comment_edit_path(&self, id: &str) -> String;
    fn comment_id(&self, create_answer_id: &Call, calls: &[Call]) -> Option<String>;
}

fn fixture(provider: &str, name: &str) -> Value {
    let path = repo_root().join("webhooks").join(provider).join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

// --- GitLab ---

struct GitLabCase;

impl Case for GitLabCase {
    fn kind(&self) -> &'static str {
        "gitlab"
    }
    fn repo(&self) -> &'static str {
        "acme/infra"
    }
    fn api_path(&self) -> &'static str {
        "/api/v4"
    }
    fn pr_ref(&self) -> &'static str {
        "refs/merge-requests/7/head"
    }
    fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: Value,
        secret: &str,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        (
            json_headers(&[
                ("X-Gitlab-Event", event),
                ("X-Gitlab-Token", secret),
                ("Idempotency-Key", delivery),
                ("X-Gitlab-Webhook-UUID", &uuid::Uuid::new_v4().to_string()),
                (
                    "X-Gitlab-Event-UUID",
                    "b3a1f7c4-0b5e-4a8e-9f6d-2c1e0d9b8a7f",
                ),
            ]),
            serde_json::to_vec(&body).unwrap(),
        )
    }
    fn pr_opened(&self, head: &str) -> (&'static str, Value) {
        let mut p = fixture("gitlab", "merge_request.open.json");
        p["object_attributes"]["last_commit"]["id"] = json!(head);
        ("Merge Request Hook", p)
    }
    fn pr_updated(&self, head: &str, before: &str) -> (&'static str, Value) {
        let mut p = fixture("gitlab", "merge_request.update.json");
        p["object_attributes"]["last_commit"]["id"] = json!(head);
        p["object_attributes"]["oldrev"] = json!(before);
        ("Merge Request Hook", p)
    }
    fn pr_merged(&self, head: &str, merge: &str) -> (&'static str, Value) {
        let mut p = fixture("gitlab", "merge_request.merge.json");
        p["object_attributes"]["last_commit"]["id"] = json!(head);
        p["object_attributes"]["merge_commit_sha"] = json!(merge);
        ("Merge Request Hook", p)
    }
    fn push(&self, before: &str, after: &str) -> (&'static str, Value) {
        let mut p = fixture("gitlab", "push.json");
        p["ref"] = json!("refs/heads/main");
        p["before"] = json!(before);
        p["after"] = json!(after);
        p["checkout_sha"] = json!(after);
        ("Push Hook", p)
    }
    fn branch_deleted(&self) -> (&'static str, Value) {
        ("Push Hook", fixture("gitlab", "push.branch_deleted.json"))
    }
    fn comment(&self, text: &str) -> (&'static str, Value) {
        let mut p = fixture("gitlab", "note.merge_request.json");
        p["object_attributes"]["note"] = json!(text);
        ("Note Hook", p)
    }
    fn is_final_status(&self, c: &Call, sha: &str, _pr: bool) -> bool {
        c.method == "POST"
            && c.path() == format!("/api/v4/projects/acme%2Finfra/statuses/{sha}")
            && c.content_type
                .starts_with("application/x-www-form-urlencoded")
            && c.body["name"] == "gantry/network"
            && c.body["state"] == "success"
    }
    fn comment_create_path(&self) -> String {
        "/api/v4/projects/acme%2Finfra/merge_requests/7/notes".into()
    }
    fn comment_text<'a>(&self, c: &'a Call) -> &'a str {
        c.body["body"].as_str().unwrap_or_default()
    }
    fn comment_edit_path(&self, id: &str) -> String {
        format!("/api/v4/projects/acme%2Finfra/merge_requests/7/notes/{id}")
    }
    fn comment_id(&self, create: &Call, calls: &[Call]) -> Option<String> {
        answer_id(create, calls)
    }
}

// --- Bitbucket Cloud ---

struct BitbucketCase;

fn short(sha: &str) -> &str {
    &sha[..12]
}

impl Case for BitbucketCase {
    fn kind(&self) -> &'static str {
        "bitbucket"
    }
    fn repo(&self) -> &'static str {
        "acme/infra"
    }
    fn api_path(&self) -> &'static str {
        "/2.0"
    }
    fn pr_ref(&self) -> &'static str {
        "refs/heads/widen-vpc"
    }
    fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: Value,
        secret: &str,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let signature = sign(secret, &bytes);
        (
            json_headers(&[
                ("X-Event-Key", event),
                ("X-Request-UUID", delivery),
                ("X-Hook-UUID", "{0b7b4a36-6e5f-4a0e-9d8c-7b6a5f4e3d2c}"),
                ("X-Attempt-Number", "1"),
                ("X-Hub-Signature", &signature),
                ("User-Agent", "Bitbucket-Webhooks/2.0"),
            ]),
            bytes,
        )
    }
    fn pr_opened(&self, head: &str) -> (&'static str, Value) {
        let mut p = fixture("bitbucket", "pullrequest.created.json");
        p["pullrequest"]["source"]["commit"]["hash"] = json!(short(head));
        ("pullrequest:created", p)
    }
    fn pr_updated(&self, head: &str, _before: &str) -> (&'static str, Value) {
        let mut p = fixture("bitbucket", "pullrequest.updated.json");
        p["pullrequest"]["source"]["commit"]["hash"] = json!(short(head));
        ("pullrequest:updated", p)
    }
    fn pr_merged(&self, head: &str, merge: &str) -> (&'static str, Value) {
        let mut p = fixture("bitbucket", "pullrequest.fulfilled.json");
        p["pullrequest"]["source"]["commit"]["hash"] = json!(short(head));
        p["pullrequest"]["merge_commit"]["hash"] = json!(short(merge));
        ("pullrequest:fulfilled", p)
    }
    fn push(&self, before: &str, after: &str) -> (&'static str, Value) {
        let mut p = fixture("bitbucket", "repo.push.json");
        let change = &mut p["push"]["changes"][0];
        change["old"]["name"] = json!("main");
        change["old"]["target"]["hash"] = json!(before);
        change["new"]["name"] = json!("main");
        change["new"]["target"]["hash"] = json!(after);
        ("repo:push", p)
    }
    fn branch_deleted(&self) -> (&'static str, Value) {
        (
            "repo:push",
            fixture("bitbucket", "repo.push.branch_deleted.json"),
        )
    }
    fn comment(&self, text: &str) -> (&'static str, Value) {
        let mut p = fixture("bitbucket", "pullrequest.comment_created.json");
        p["comment"]["content"]["raw"] = json!(text);
        ("pullrequest:comment_created", p)
    }
    fn is_final_status(&self, c: &Call, sha: &str, _pr: bool) -> bool {
        c.method == "POST"
            && c.path() == format!("/2.0/repositories/acme/infra/commit/{sha}/statuses/build")
            && c.body["key"] == "gantry/network"
            && c.body["name"] == "gantry/network"
            && c.body["state"] == "SUCCESSFUL"
            && c.body["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://gantry.test/"))
    }
    fn comment_create_path(&self) -> String {
        "/2.0/repositories/acme/infra/pullrequests/7/comments".into()
    }
    fn comment_text<'a>(&self, c: &'a Call) -> &'a str {
        c.body["content"]["raw"].as_str().unwrap_or_default()
    }
    fn comment_edit_path(&self, id: &str) -> String {
        format!("/2.0/repositories/acme/infra/pullrequests/7/comments/{id}")
    }
    fn comment_id(&self, create: &Call, calls: &[Call]) -> Option<String> {
        answer_id(create, calls)
    }
}

// --- Azure DevOps ---

struct AzureCase;

const AZURE_USER: &str = "gantry-hooks";

impl Case for AzureCase {
    fn kind(&self) -> &'static str {
        "azure_devops"
    }
    fn repo(&self) -> &'static str {
        "platform/infra"
    }
    fn api_path(&self) -> &'static str {
        "/acme"
    }
    fn pr_ref(&self) -> &'static str {
        "refs/pull/7/merge"
    }
    fn extra_yaml(&self) -> &'static str {
        "    webhook_user: gantry-hooks\n"
    }
    fn webhook(
        &self,
        _event: &str,
        delivery: &str,
        mut body: Value,
        secret: &str,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        body["id"] = json!(delivery);
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{AZURE_USER}:{secret}"))
        );
        (
            json_headers(&[("Authorization", &auth)]),
            serde_json::to_vec(&body).unwrap(),
        )
    }
    fn pr_opened(&self, head: &str) -> (&'static str, Value) {
        let mut p = fixture("azure_devops", "git.pullrequest.created.json");
        p["resource"]["lastMergeSourceCommit"]["commitId"] = json!(head);
        ("", p)
    }
    fn pr_updated(&self, head: &str, _before: &str) -> (&'static str, Value) {
        let mut p = fixture("azure_devops", "git.pullrequest.updated.json");
        p["resource"]["lastMergeSourceCommit"]["commitId"] = json!(head);
        ("", p)
    }
    fn pr_merged(&self, head: &str, merge: &str) -> (&'static str, Value) {
        let mut p = fixture("azure_devops", "git.pullrequest.merged.json");
        p["resource"]["lastMergeSourceCommit"]["commitId"] = json!(head);
        p["resource"]["lastMergeCommit"]["commitId"] = json!(merge);
        ("", p)
    }
    fn push(&self, before: &str, after: &str) -> (&'static str, Value) {
        let mut p = fixture("azure_devops", "git.push.json");
        // Azure DevOps batches the branches of one push: main and another.
        p["resource"]["refUpdates"] = json!([
            {"name": "refs/heads/main", "oldObjectId": before, "newObjectId": after},
            {"name": "refs/heads/staging", "oldObjectId": before, "newObjectId": after}
        ]);
        ("", p)
    }
    fn branch_deleted(&self) -> (&'static str, Value) {
        ("", fixture("azure_devops", "git.push.branch_deleted.json"))
    }
    fn comment(&self, text: &str) -> (&'static str, Value) {
        let mut p = fixture("azure_devops", "git.pullrequest.comment.json");
        p["resource"]["comment"]["content"] = json!(text);
        ("", p)
    }
    fn is_final_status(&self, c: &Call, sha: &str, pr: bool) -> bool {
        let repo = "/acme/platform/_apis/git/repositories/infra";
        let path = if pr {
            format!("{repo}/pullRequests/7/statuses")
        } else {
            format!("{repo}/commits/{sha}/statuses")
        };
        c.method == "POST"
            && c.path() == path
            && c.uri.ends_with("?api-version=7.1")
            && c.body["context"] == json!({"genre": "gantry", "name": "network"})
            && c.body["state"] == "succeeded"
    }
    fn comment_create_path(&self) -> String {
        "/acme/platform/_apis/git/repositories/infra/pullRequests/7/threads".into()
    }
    fn comment_text<'a>(&self, c: &'a Call) -> &'a str {
        c.body["comments"][0]["content"]
            .as_str()
            .or(c.body["content"].as_str())
            .unwrap_or_default()
    }
    fn comment_edit_path(&self, id: &str) -> String {
        format!(
            "/acme/platform/_apis/git/repositories/infra/pullRequests/7/threads/{id}/comments/1"
        )
    }
    fn comment_id(&self, create: &Call, calls: &[Call]) -> Option<String> {
        answer_id(create, calls)
    }
}

/// The fake answers a create with id 100 + the call's 1-based position.
fn answer_id(create: &Call, calls: &[Call]) -> Option<String> {
    let pos = calls
        .iter()
        .position(|c| c.method == create.method && c.uri == create.uri && c.body == create.body)?;
    Some((100 + pos as i64 + 1).to_string())
}

fn yaml(env: &TestEnv, case: &dyn Case, api: &FakeApi, origin: &Origin) -> String {
    yaml_with(env, case, api, origin, "")
}

fn yaml_with(
    env: &TestEnv,
    case: &dyn Case,
    api: &FakeApi,
    origin: &Origin,
    workspace_extra: &str,
) -> String {
    format!(
        r#"listen: "127.0.0.1:0"
data_dir: "{data}"
database_url: "{db}"
concurrency: 2
api_token_env: GANTRY_API_TOKEN
public_url: http://gantry.test
terraform:
  bin: "{tf}"
  cli_config_file: "{rc}"
  timeout: 5m
providers:
  - id: vcs
    kind: {kind}
    api_url: "{api}{api_path}"
    git_url: "{git}"
    token_env: VCS_TOKEN
    webhook_secret_env: VCS_WEBHOOK_SECRET
{extra}workspaces:
  - name: network
    environment: production
    provider: vcs
    repo: {repo}
    dir: network
    auto_apply: true
{workspace_extra}"#,
        data = env.data_dir().display(),
        db = env.db_url,
        tf = terraform_bin(),
        rc = terraform_rc().display(),
        kind = case.kind(),
        api = api.url(),
        api_path = case.api_path(),
        git = origin.url_template(),
        extra = case.extra_yaml(),
        repo = case.repo(),
    )
}

async fn deliver(
    app: &TestApp,
    case: &dyn Case,
    (event, body): (&str, Value),
    delivery: &str,
    secret: &str,
) -> reqwest::Response {
    let (headers, bytes) = case.webhook(event, delivery, body, secret);
    let mut req = app.client.post(app.url("/webhooks/vcs"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.body(bytes).send().await.unwrap()
}

async fn wait_for_call(api: &FakeApi, what: &str, f: impl Fn(&Call) -> bool) -> Call {
    wait_until(Duration::from_secs(60), || async {
        api.calls().into_iter().find(|c| f(c))
    })
    .await;
    api.calls()
        .into_iter()
        .find(|c| f(c))
        .unwrap_or_else(|| panic!("no {what}"))
}

async fn provider_end_to_end(case: &dyn Case) {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let api = FakeApi::start().await;
        let origin = Origin::new(&env.dir.path().join("origin-vcs"), case.repo());
        let mut files = standard_files();
        let base = origin.commit(&files, &[], "initial", &["refs/heads/main"]);
        files.insert("modules/vpc/main.tf".into(), null_config("vpc-v2"));
        let pr_refs = ["refs/heads/widen-vpc", case.pr_ref()];
        let head = origin.commit(&files, &[base], "widen", &pr_refs);
        let (head_s, base_s) = (head.to_string(), base.to_string());
        let app = env.spawn_app(&yaml(&env, case, &api, &origin)).await;
        let kind = case.kind();

        // Wrong secret: refused, nothing stored, no call to the provider.
        let r = deliver(&app, case, case.pr_opened(&head_s), "d-0", "wrong").await;
        assert_eq!(r.status(), 401, "{kind} {db:?}");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(app.ctx.store.pool())
            .await
            .unwrap();
        assert_eq!(stored, 0, "{kind}: nothing stored");
        assert!(app.runs().await.is_empty());

        // Opened: a plan, its final status, one comment.
        let r = deliver(&app, case, case.pr_opened(&head_s), "d-1", WEBHOOK_SECRET).await;
        assert_eq!(r.status(), 202, "{kind}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
        let runs = app.wait_for_runs_done(1).await;
        assert_eq!(runs.len(), 1, "{kind}: {runs:?}");
        assert_eq!(runs[0]["workspace"], "network");
        assert_eq!(runs[0]["state"], "planned", "{kind}: {}", runs[0]);
        assert_eq!(runs[0]["commit_sha"], head_s, "{kind}: full sha");
        let status = wait_for_call(&api, "final status", |c| {
            case.is_final_status(c, &head_s, true)
        })
        .await;
        let description = status.body["description"].as_str().unwrap_or_default();
        assert!(
            description.starts_with("Plan: 1 to add, 0 to change, 0 to destroy."),
            "{kind}: {description}"
        );
        let comment_path = case.comment_create_path();
        let created = wait_for_call(&api, "comment", |c| {
            c.method == "POST" && c.path() == comment_path
        })
        .await;
        let comment_id = case.comment_id(&created, &api.calls()).unwrap();
        let edit_path = case.comment_edit_path(&comment_id);
        // Created while queued, edited as the run goes: the last text shows the plan.
        let shown = wait_for_call(&api, "planned comment", |c| {
            (c.path() == comment_path || c.path() == edit_path)
                && case.comment_text(c).contains("planned")
        })
        .await;
        assert!(case.comment_text(&shown).contains(&head_s[..8]), "{kind}");
        assert!(
            api.calls()
                .iter()
                .all(|c| c.authorization.is_some() || c.private_token.is_some()),
            "{kind}: every API call is authenticated"
        );

        // Updated with a new commit: planned again, the same comment edited.
        files.insert("modules/vpc/main.tf".into(), null_config("vpc-v3"));
        let head2 = origin.commit(&files, &[head], "wider", &pr_refs);
        let head2_s = head2.to_string();
        let r = deliver(
            &app,
            case,
            case.pr_updated(&head2_s, &head_s),
            "d-2",
            WEBHOOK_SECRET,
        )
        .await;
        assert_eq!(r.status(), 202);
        wait_for_call(&api, "comment edit", |c| {
            (c.method == "PUT" || c.method == "PATCH")
                && c.path() == edit_path
                && case.comment_text(c).contains(&head2_s[..8])
                && case.comment_text(c).contains("planned")
        })
        .await;
        let creates = api
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path() == comment_path)
            .count();
        assert_eq!(creates, 1, "{kind}: one comment, edited in place");
        // The same head reported again (a vote, a title edit): not planned twice.
        let r = deliver(
            &app,
            case,
            case.pr_updated(&head2_s, &head_s),
            "d-2b",
            WEBHOOK_SECRET,
        )
        .await;
        assert_eq!(r.status(), 202);
        app.wait_for_dispatch().await;
        assert_eq!(app.wait_for_runs_done(2).await.len(), 2, "{kind}");

        // A deleted branch: verified, then ignored.
        let r = deliver(&app, case, case.branch_deleted(), "d-3", WEBHOOK_SECRET).await;
        assert_eq!(r.status(), 202);
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "ignored",
            "{kind}"
        );

        // Merged: the merged event applies the merge commit; the push of the
        // same commit then starts nothing more.
        let merged = origin.commit(&files, &[base, head2], "Merge !7", &["refs/heads/main"]);
        let merged_s = merged.to_string();
        let r = deliver(
            &app,
            case,
            case.pr_merged(&head2_s, &merged_s),
            "d-4",
            WEBHOOK_SECRET,
        )
        .await;
        assert_eq!(r.status(), 202);
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "queued",
            "{kind}"
        );
        let runs = app.wait_for_runs_done(3).await;
        let applies: Vec<&Value> = runs
            .iter()
            .filter(|r| r["commit_sha"] == merged_s)
            .collect();
        assert_eq!(applies.len(), 1, "{kind}: {runs:?}");
        assert_eq!(applies[0]["kind"], "apply");
        assert_eq!(applies[0]["state"], "applied", "{kind}: {}", applies[0]);
        let r = deliver(
            &app,
            case,
            case.push(&base_s, &merged_s),
            "d-5",
            WEBHOOK_SECRET,
        )
        .await;
        assert_eq!(r.status(), 202);
        app.wait_for_dispatch().await;
        let runs = app.wait_for_runs_done(3).await;
        assert_eq!(
            runs.iter().filter(|r| r["commit_sha"] == merged_s).count(),
            1,
            "{kind}: the push of the merged commit is not applied again"
        );
        wait_for_call(&api, "merge status", |c| {
            case.is_final_status(c, &merged_s, false)
        })
        .await;
        // The merged pull request gets the apply comment (a second comment).
        wait_for_call(&api, "apply comment", |c| {
            c.path().starts_with(&comment_path)
                && c.path() != edit_path
                && case.comment_text(c).contains("applied")
        })
        .await;

        // A redelivery of the push starts nothing either.
        let r = deliver(
            &app,
            case,
            case.push(&base_s, &merged_s),
            "d-5",
            WEBHOOK_SECRET,
        )
        .await;
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "duplicate",
            "{kind}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn gitlab_merge_requests_are_planned_commented_and_applied_on_merge() {
    provider_end_to_end(&GitLabCase).await;
}

#[tokio::test]
async fn bitbucket_pull_requests_are_planned_commented_and_applied_on_merge() {
    provider_end_to_end(&BitbucketCase).await;
}

#[tokio::test]
async fn azure_devops_pull_requests_are_planned_commented_and_applied_on_merge() {
    provider_end_to_end(&AzureCase).await;
}

// --- Parsing the documented payloads, every field as the services send it. ---

mod parsing {
    use gantry::commands::Command;
    use gantry::vcs::{self, Incoming, PrAction, VcsEvent};
    use serde_json::Value;

    use super::fixture;

    const HEAD: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    const MERGE: &str = "e3a1c7f0b9d24c6a8f5e1d2c3b4a59687f6e5d4c";

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn event(i: Incoming) -> (VcsEvent, bool) {
        match i {
            Incoming::Event {
                event, actionable, ..
            } => (*event, actionable),
            Incoming::Ignored { reason, .. } => panic!("ignored: {reason}"),
        }
    }

    fn pr(i: Incoming) -> (vcs::PullRequestEvent, bool) {
        match event(i) {
            (VcsEvent::PullRequest(pr), actionable) => (pr, actionable),
            other => panic!("not a pull request: {other:?}"),
        }
    }

    fn ignored(i: Incoming) -> String {
        match i {
            Incoming::Ignored { reason, .. } => reason,
            other => panic!("not ignored: {other:?}"),
        }
    }

    fn plan_command(i: Incoming) -> vcs::CommandEvent {
        match event(i) {
            (VcsEvent::Command(c), true) => c,
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn gitlab_payloads() {
        let parse = |event: &str, file: &str| {
            vcs::gitlab::parse_payload(event, "d", &bytes(&fixture("gitlab", file))).unwrap()
        };
        let mr = "Merge Request Hook";
        let (open, actionable) = pr(parse(mr, "merge_request.open.json"));
        assert!(actionable);
        assert_eq!(open.action, PrAction::Opened);
        assert_eq!(
            (open.repo.as_str(), open.number, open.head_sha.as_str()),
            ("acme/infra", 7, HEAD)
        );
        assert_eq!(
            (
                open.head_ref.as_str(),
                open.base_ref.as_str(),
                open.author.as_str()
            ),
            ("widen-vpc", "main", "octocat")
        );
        assert_eq!(open.fetch_ref, "refs/merge-requests/7/head");
        assert!(!open.draft && !open.from_fork && !open.merged);
        let (update, _) = pr(parse(mr, "merge_request.update.json"));
        assert_eq!(update.action, PrAction::Synchronize);
        assert_eq!(update.head_sha, "0f1e2d3c4b5a69788796a5b4c3d2e1f001234567");
        assert!(
            ignored(parse(mr, "merge_request.update_title.json")).contains("without new commits")
        );
        let (merged, actionable) = pr(parse(mr, "merge_request.merge.json"));
        assert!(actionable && merged.merged);
        assert_eq!(merged.action, PrAction::Closed);
        assert_eq!(merged.merge_sha.as_deref(), Some(MERGE));
        assert!(pr(parse(mr, "merge_request.draft.json")).0.draft);
        assert!(pr(parse(mr, "merge_request.fork.json")).0.from_fork);

        match event(parse("Push Hook", "push.json")) {
            (VcsEvent::Push(p), true) => {
                assert_eq!((p.repo.as_str(), p.branch.as_str()), ("acme/infra", "main"));
                assert_eq!(p.after, MERGE);
            }
            other => panic!("{other:?}"),
        }
        assert!(ignored(parse("Push Hook", "push.branch_deleted.json")).contains("deleted"));
        assert!(ignored(parse("Tag Push Hook", "tag_push.json")).contains("ignored"));
        let c = plan_command(parse("Note Hook", "note.merge_request.json"));
        assert_eq!(
            (c.repo.as_str(), c.pr_number, c.author.as_str()),
            ("acme/infra", 7, "octocat")
        );
        assert_eq!(c.command, Command::Plan { workspace: None });
        assert!(ignored(parse("Note Hook", "note.issue.json")).contains("not a merge request"));
    }

    #[test]
    fn bitbucket_payloads() {
        let parse = |event: &str, file: &str| {
            vcs::bitbucket::parse_payload(event, "d", &bytes(&fixture("bitbucket", file))).unwrap()
        };
        let (open, actionable) = pr(parse("pullrequest:created", "pullrequest.created.json"));
        assert!(actionable);
        assert_eq!(open.action, PrAction::Opened);
        assert_eq!(
            (open.repo.as_str(), open.number, open.head_sha.as_str()),
            ("acme/infra", 7, &HEAD[..12])
        );
        assert_eq!(
            (
                open.head_ref.as_str(),
                open.base_ref.as_str(),
                open.author.as_str()
            ),
            ("widen-vpc", "main", "octocat")
        );
        assert_eq!(open.fetch_ref, "refs/heads/widen-vpc");
        assert!(!open.draft && !open.from_fork);
        let (update, _) = pr(parse("pullrequest:updated", "pullrequest.updated.json"));
        assert_eq!(update.action, PrAction::Synchronize);
        assert_eq!(update.head_sha, "0f1e2d3c4b5a");
        let (merged, actionable) = pr(parse("pullrequest:fulfilled", "pullrequest.fulfilled.json"));
        assert!(actionable && merged.merged);
        assert_eq!(merged.merge_sha.as_deref(), Some(&MERGE[..12]));
        let (declined, actionable) = pr(parse("pullrequest:rejected", "pullrequest.rejected.json"));
        assert!(!actionable && !declined.merged);
        assert_eq!(declined.action, PrAction::Closed);
        assert!(
            pr(parse(
                "pullrequest:created",
                "pullrequest.created.draft.json"
            ))
            .0
            .draft
        );
        assert!(
            pr(parse(
                "pullrequest:created",
                "pullrequest.created.fork.json"
            ))
            .0
            .from_fork
        );
        let c = plan_command(parse(
            "pullrequest:comment_created",
            "pullrequest.comment_created.json",
        ));
        assert_eq!((c.repo.as_str(), c.pr_number), ("acme/infra", 7));
        assert_eq!(
            c.author, "557058:0d1b0c3c-8e33-4a6c-b1b2-2f0a1c0d9e77",
            "account_id"
        );
        match event(parse("repo:push", "repo.push.json")) {
            (VcsEvent::Push(p), true) => {
                assert_eq!((p.repo.as_str(), p.branch.as_str()), ("acme/infra", "main"));
                assert_eq!(p.before, "3d5c6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5");
                assert_eq!(p.after, MERGE);
            }
            other => panic!("{other:?}"),
        }
        assert!(ignored(parse("repo:push", "repo.push.branch_deleted.json")).contains("deleted"));
        // One push updating two branches (and deleting a third): both handled.
        let mut two = fixture("bitbucket", "repo.push.json");
        let mut staging = two["push"]["changes"][0].clone();
        staging["new"]["name"] = "staging".into();
        staging["old"]["name"] = "staging".into();
        let deleted =
            fixture("bitbucket", "repo.push.branch_deleted.json")["push"]["changes"][0].clone();
        two["push"]["changes"] =
            serde_json::json!([two["push"]["changes"][0].clone(), deleted, staging]);
        match event(vcs::bitbucket::parse_payload("repo:push", "d", &bytes(&two)).unwrap()) {
            (VcsEvent::Pushes { pushes: p }, true) => {
                let branches: Vec<&str> = p.iter().map(|p| p.branch.as_str()).collect();
                assert_eq!(branches, ["main", "staging"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(ignored(parse("repo:push", "repo.push.tag.json")).contains("tags"));
        assert!(ignored(parse("repo:fork", "repo.push.json")).contains("ignored"));
    }

    #[test]
    fn azure_devops_payloads() {
        let parse = |file: &str| {
            vcs::azure_devops::parse_payload(&bytes(&fixture("azure_devops", file)), None).unwrap()
        };
        let created = parse("git.pullrequest.created.json");
        let Incoming::Event { delivery_id, .. } = &created else {
            panic!()
        };
        let body_id = fixture("azure_devops", "git.pullrequest.created.json")["id"].clone();
        assert_eq!(Some(delivery_id.as_str()), body_id.as_str(), "the body id");
        let (open, actionable) = pr(created);
        assert!(actionable);
        assert_eq!(open.action, PrAction::Opened);
        assert_eq!(
            (open.repo.as_str(), open.number, open.head_sha.as_str()),
            ("platform/infra", 7, HEAD)
        );
        assert_eq!(
            (
                open.head_ref.as_str(),
                open.base_ref.as_str(),
                open.author.as_str()
            ),
            ("widen-vpc", "main", "octocat@acme.com")
        );
        assert_eq!(open.fetch_ref, "refs/pull/7/merge");
        assert!(!open.draft && !open.from_fork);
        let (update, _) = pr(parse("git.pullrequest.updated.json"));
        assert_eq!(update.action, PrAction::Synchronize);
        assert_eq!(update.head_sha, "0f1e2d3c4b5a69788796a5b4c3d2e1f001234567");
        for file in [
            "git.pullrequest.merged.json",
            "git.pullrequest.updated.completed.json",
        ] {
            let (merged, actionable) = pr(parse(file));
            assert!(actionable && merged.merged, "{file}");
            assert_eq!(merged.merge_sha.as_deref(), Some(MERGE), "{file}");
        }
        // A merge attempt that did not complete.
        let mut conflicted = fixture("azure_devops", "git.pullrequest.merged.json");
        conflicted["resource"]["status"] = "active".into();
        conflicted["resource"]["mergeStatus"] = "conflicts".into();
        let i = vcs::azure_devops::parse_payload(&bytes(&conflicted), None).unwrap();
        assert!(ignored(i).contains("merge not completed"));
        assert!(pr(parse("git.pullrequest.created.draft.json")).0.draft);
        assert!(pr(parse("git.pullrequest.created.fork.json")).0.from_fork);
        let c = plan_command(parse("git.pullrequest.comment.json"));
        assert_eq!(
            (c.repo.as_str(), c.pr_number, c.author.as_str()),
            ("platform/infra", 7, "octocat@acme.com")
        );
        match event(parse("git.push.json")) {
            (VcsEvent::Push(p), true) => {
                assert_eq!(
                    (p.repo.as_str(), p.branch.as_str()),
                    ("platform/infra", "main")
                );
                assert_eq!(p.after, MERGE);
            }
            other => panic!("{other:?}"),
        }
        assert!(ignored(parse("git.push.branch_deleted.json")).contains("deleted"));
        let mut two = fixture("azure_devops", "git.push.json");
        two["resource"]["refUpdates"] = serde_json::json!([
            {"name": "refs/heads/main", "oldObjectId": "3d5c6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5", "newObjectId": MERGE},
            {"name": "refs/tags/v1", "oldObjectId": "0000000000000000000000000000000000000000", "newObjectId": MERGE},
            {"name": "refs/heads/staging", "oldObjectId": "3d5c6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5", "newObjectId": MERGE}
        ]);
        match event(vcs::azure_devops::parse_payload(&bytes(&two), None).unwrap()) {
            (VcsEvent::Pushes { pushes: p }, true) => {
                let branches: Vec<&str> = p.iter().map(|p| p.branch.as_str()).collect();
                assert_eq!(branches, ["main", "staging"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(ignored(parse("git.push.tag.json")).contains("tags"));
    }
}

/// `/gantry apply` on a pull request whose workspace applies before merge:
/// approval, mergeability and the commenter's write access are read from the
/// provider's API, then the plan shown on the pull request is applied.
async fn apply_by_comment(case: &dyn Case) {
    let db = Db::Sqlite;
    let env = TestEnv::new(&db).await;
    let api = FakeApi::start().await;
    let origin = Origin::new(&env.dir.path().join("origin-vcs"), case.repo());
    let mut files = standard_files();
    let base = origin.commit(&files, &[], "initial", &["refs/heads/main"]);
    files.insert("modules/vpc/main.tf".into(), null_config("vpc-v2"));
    let head = origin.commit(
        &files,
        &[base],
        "widen",
        &["refs/heads/widen-vpc", case.pr_ref()],
    );
    let head_s = head.to_string();
    api.set_pr_head(&head_s);
    let extra = "    workflow: apply_before_merge\n    apply_requirements: [approved, mergeable]\n";
    let app = env
        .spawn_app(&yaml_with(&env, case, &api, &origin, extra))
        .await;
    let kind = case.kind();
    deliver(&app, case, case.pr_opened(&head_s), "c-1", WEBHOOK_SECRET).await;
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs[0]["state"], "planned", "{kind}: {}", runs[0]);
    let id = runs[0]["id"].as_i64().unwrap();

    let r = deliver(
        &app,
        case,
        case.comment("/gantry apply"),
        "c-2",
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap()["status"],
        "queued",
        "{kind}"
    );
    let run = wait_until(Duration::from_secs(60), || async {
        let run = app.api(&format!("/api/runs/{id}")).await;
        (run["state"] == "applied" || run["state"] == "errored").then_some(run)
    })
    .await;
    assert_eq!(run["state"], "applied", "{kind}: {run}");
    let paths: Vec<String> = api.calls().iter().map(|c| c.path().to_string()).collect();
    let expected: &[&str] = match kind {
        "gitlab" => &[
            "/api/v4/projects/acme%2Finfra/merge_requests/7/approvals",
            "/api/v4/projects/acme%2Finfra/members/all/6",
        ],
        "bitbucket" => &[
            "/2.0/repositories/acme/infra/pullrequests/7/diffstat",
            "/2.0/workspaces/acme/permissions/repositories/infra",
        ],
        _ => &[
            "/acme/_apis/identities",
            "/acme/_apis/accesscontrollists/2e9eb7ed-3c0a-47d4-87c1-0ffdd275fd87",
        ],
    };
    for p in expected {
        assert!(
            paths.iter().any(|x| x == p),
            "{kind}: no call to {p}: {paths:?}"
        );
    }
    let audit = app.api("/api/audit?workspace=network").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "comment-command" || e["action"] == "apply"),
        "{kind}: {audit}"
    );
    app.stop().await;
}

#[tokio::test]
async fn gitlab_apply_by_comment_checks_approval_and_access() {
    apply_by_comment(&GitLabCase).await;
}

#[tokio::test]
async fn bitbucket_apply_by_comment_checks_approval_and_access() {
    apply_by_comment(&BitbucketCase).await;
}

#[tokio::test]
async fn azure_devops_apply_by_comment_checks_approval_and_access() {
    apply_by_comment(&AzureCase).await;
}

/// The drift issue calls: opened, updated, closed, on each provider's API.
async fn drift_issue_calls(case: &dyn Case) {
    let env = TestEnv::new(&Db::Sqlite).await;
    let api = FakeApi::start().await;
    let origin = Origin::new(&env.dir.path().join("origin-vcs"), case.repo());
    let config = env.load_config(&yaml(&env, case, &api, &origin));
    let providers = gantry::vcs::Providers::from_config(&config).unwrap();
    let p = providers.get("vcs").unwrap();
    let number = p
        .create_issue(case.repo(), "Drift in network", "**drifted**: 1 resource")
        .await
        .unwrap();
    assert_eq!(number, 3);
    p.update_issue(case.repo(), 3, "still drifted", false)
        .await
        .unwrap();
    p.update_issue(case.repo(), 3, "no drift any more", true)
        .await
        .unwrap();
    let calls = api.calls();
    let bodies: Vec<(&str, &str, &Value)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.path(), &c.body))
        .collect();
    match case.kind() {
        "gitlab" => {
            let issues = "/api/v4/projects/acme%2Finfra/issues";
            assert_eq!(bodies[0].0, "POST");
            assert_eq!(bodies[0].1, issues);
            assert_eq!(bodies[0].2["title"], "Drift in network");
            assert_eq!(bodies[0].2["description"], "**drifted**: 1 resource");
            assert_eq!(
                (bodies[2].0, bodies[2].1),
                ("PUT", "/api/v4/projects/acme%2Finfra/issues/3")
            );
            assert_eq!(bodies[1].2.get("state_event"), None);
            assert_eq!(bodies[2].2["state_event"], "close");
        }
        "bitbucket" => {
            assert_eq!(
                (bodies[0].0, bodies[0].1),
                ("POST", "/2.0/repositories/acme/infra/issues")
            );
            assert_eq!(bodies[0].2["content"]["raw"], "**drifted**: 1 resource");
            assert_eq!(
                (bodies[2].0, bodies[2].1),
                ("PUT", "/2.0/repositories/acme/infra/issues/3")
            );
            assert_eq!(bodies[1].2.get("state"), None);
            assert_eq!(bodies[2].2["state"], "resolved");
        }
        _ => {
            assert_eq!(
                (bodies[0].0, bodies[0].1),
                ("POST", "/acme/platform/_apis/wit/workitems/$Issue")
            );
            assert_eq!(calls[0].content_type, "application/json-patch+json");
            assert_eq!(bodies[0].2[0]["path"], "/fields/System.Title");
            assert_eq!(bodies[0].2[0]["value"], "Drift in network");
            assert_eq!(
                (bodies[2].0, bodies[2].1),
                ("PATCH", "/acme/platform/_apis/wit/workitems/3")
            );
            assert_eq!(bodies[1].2.as_array().unwrap().len(), 1);
            assert_eq!(bodies[2].2[1]["path"], "/fields/System.State");
            assert_eq!(bodies[2].2[1]["value"], "Done");
        }
    }
    assert_eq!(calls.len(), 3, "{}: {bodies:?}", case.kind());
}

#[tokio::test]
async fn drift_issues_on_gitlab_bitbucket_and_azure_devops() {
    drift_issue_calls(&GitLabCase).await;
    drift_issue_calls(&BitbucketCase).await;
    drift_issue_calls(&AzureCase).await;
}

/// A Bitbucket pull request from a fork (with `allow_fork_prs`): Bitbucket
/// keeps no ref for it in the destination repository, so its head is fetched
/// from the fork.
#[tokio::test]
async fn a_bitbucket_pull_request_from_a_fork_is_fetched_from_the_fork() {
    let case = BitbucketCase;
    let env = TestEnv::new(&Db::Sqlite).await;
    let api = FakeApi::start().await;
    let root = env.dir.path().join("origin-vcs");
    let origin = Origin::new(&root, "acme/infra");
    let fork = Origin::new(&root, "octocat/infra");
    let mut files = standard_files();
    let base = origin.commit(&files, &[], "initial", &["refs/heads/main"]);
    assert_eq!(
        fork.commit(&files, &[], "initial", &["refs/heads/main"]),
        base
    );
    files.insert("modules/vpc/main.tf".into(), null_config("vpc-v2"));
    // The head exists in the fork only.
    let head = fork.commit(&files, &[base], "widen", &["refs/heads/widen-vpc"]);
    let yaml = yaml(&env, &case, &api, &origin)
        .replace("concurrency: 2\n", "concurrency: 2\nallow_fork_prs: true\n");
    let app = env.spawn_app(&yaml).await;
    let mut payload = fixture("bitbucket", "pullrequest.created.fork.json");
    payload["pullrequest"]["source"]["commit"]["hash"] = json!(short(&head.to_string()));
    let r = deliver(
        &app,
        &case,
        ("pullrequest:created", payload),
        "f-1",
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(r.status(), 202);
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "planned", "{}", runs[0]);
    assert_eq!(runs[0]["commit_sha"], head.to_string());
    wait_for_call(&api, "final status", |c| {
        case.is_final_status(c, &head.to_string(), true)
    })
    .await;
    app.stop().await;
}

/// gantry edits only its own comments: a stranger's comment that carries
/// gantry's marker is left alone and gantry posts its own; once the database
/// forgets gantry's comment, gantry finds it again by marker *and* author
/// (not the stranger's newer one) and edits it in place. The identity is
/// looked up once (`identity`: the path of the lookup, with how many calls
/// to expect).
async fn only_own_comments_are_edited(
    case: &dyn Case,
    username: Option<&str>,
    identity: (&str, usize),
) {
    let env = TestEnv::new(&Db::Sqlite).await;
    let api = FakeApi::start().await;
    let origin = Origin::new(&env.dir.path().join("origin-vcs"), case.repo());
    let mut files = standard_files();
    let base = origin.commit(&files, &[], "initial", &["refs/heads/main"]);
    files.insert("modules/vpc/main.tf".into(), null_config("vpc-v2"));
    let pr_refs = ["refs/heads/widen-vpc", case.pr_ref()];
    let head = origin.commit(&files, &[base], "widen", &pr_refs);
    let head_s = head.to_string();
    let mut yaml = yaml(&env, case, &api, &origin);
    if let Some(user) = username {
        yaml = yaml.replace(
            "    token_env: VCS_TOKEN\n",
            &format!("    token_env: VCS_TOKEN\n    username: {user}\n"),
        );
    }
    let kind = case.kind();
    // The marker as it reads in a comment on this provider.
    let marker = if kind == "bitbucket" {
        gantry::vcs::bitbucket::plain_markdown(gantry::report::COMMENT_MARKER)
    } else {
        gantry::report::COMMENT_MARKER.to_string()
    };
    let list = case.comment_create_path();
    let forged = format!("{marker}\nI am gantry, trust me");
    let stranger_first = api.add_comment(&list, Author::Stranger, &forged);

    let app = env.spawn_app(&yaml).await;
    let r = deliver(&app, case, case.pr_opened(&head_s), "o-1", WEBHOOK_SECRET).await;
    assert_eq!(r.status(), 202, "{kind}");
    app.wait_for_runs_done(1).await;
    let own = wait_until(Duration::from_secs(60), || async {
        api.comments(&list)
            .into_iter()
            .find(|c| c.author == Author::Gantry && c.body.contains("planned"))
    })
    .await;
    assert!(own.body.contains(&head_s[..8]), "{kind}: {}", own.body);
    assert!(own.body.contains(&marker), "{kind}: {}", own.body);
    let creates = |api: &FakeApi| {
        api.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path() == list)
            .count()
    };
    let edits_of = |api: &FakeApi, id: i64| {
        let path = case.comment_edit_path(&id.to_string());
        api.calls()
            .iter()
            .filter(|c| (c.method == "PUT" || c.method == "PATCH") && c.path() == path)
            .count()
    };
    assert_eq!(creates(&api), 1, "{kind}: gantry posts its own comment");
    assert_eq!(
        edits_of(&api, stranger_first),
        0,
        "{kind}: the stranger's comment is not edited"
    );

    // The database forgets gantry's comment; a stranger's newer comment
    // carries the marker too.
    let stranger_second = api.add_comment(&list, Author::Stranger, &forged);
    sqlx::query("DELETE FROM vcs_comments")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    files.insert("modules/vpc/main.tf".into(), null_config("vpc-v3"));
    let head2 = origin.commit(&files, &[head], "wider", &pr_refs);
    let head2_s = head2.to_string();
    let r = deliver(
        &app,
        case,
        case.pr_updated(&head2_s, &head_s),
        "o-2",
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(r.status(), 202, "{kind}");
    app.wait_for_runs_done(2).await;
    wait_until(Duration::from_secs(60), || async {
        api.comments(&list).into_iter().find(|c| {
            c.id == own.id && c.body.contains(&head2_s[..8]) && c.body.contains("planned")
        })
    })
    .await;
    assert_eq!(creates(&api), 1, "{kind}: its own comment, edited in place");
    assert!(edits_of(&api, own.id) >= 1, "{kind}");
    for stranger in [stranger_first, stranger_second] {
        assert_eq!(
            edits_of(&api, stranger),
            0,
            "{kind}: a stranger's comment is not edited"
        );
        let c = api
            .comments(&list)
            .into_iter()
            .find(|c| c.id == stranger)
            .unwrap();
        assert_eq!(c.body, forged, "{kind}");
        assert_eq!(c.author, Author::Stranger);
    }
    let (identity_path, lookups) = identity;
    assert_eq!(
        api.find("GET", identity_path).len(),
        lookups,
        "{kind}: gantry's identity is looked up once and kept"
    );
    app.stop().await;
}

#[tokio::test]
async fn gitlab_edits_only_its_own_notes() {
    only_own_comments_are_edited(&GitLabCase, None, ("/api/v4/user", 1)).await;
}

/// With a user's API token, `GET /user` names gantry's account.
#[tokio::test]
async fn bitbucket_with_a_users_token_edits_only_its_own_comments() {
    only_own_comments_are_edited(&BitbucketCase, Some("ci@acme.com"), ("/2.0/user", 1)).await;
}

/// An access token's bot cannot call `GET /user`: gantry knows its account
/// from the comment it posted, and never asks.
#[tokio::test]
async fn bitbucket_with_an_access_token_edits_only_its_own_comments() {
    only_own_comments_are_edited(&BitbucketCase, None, ("/2.0/user", 0)).await;
}

#[tokio::test]
async fn azure_devops_edits_only_its_own_threads() {
    only_own_comments_are_edited(&AzureCase, None, ("/acme/_apis/connectionData", 1)).await;
}

/// gantry's identity is looked up only when a comment carrying the marker
/// needs it, and failing to learn it is an error of `find_comment`, never a
/// match.
#[tokio::test]
async fn an_identity_that_cannot_be_learned_is_an_error_not_a_match() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let cases: [(&dyn Case, Option<&str>, &str); 3] = [
        (&GitLabCase, None, "/api/v4/user"),
        (&BitbucketCase, Some("ci@acme.com"), "/2.0/user"),
        (&AzureCase, None, "/acme/_apis/connectionData"),
    ];
    for (case, username, identity) in cases {
        let kind = case.kind();
        let api = FakeApi::start().await;
        api.refuse_identity();
        let origin = Origin::new(&env.dir.path().join(format!("origin-{kind}")), case.repo());
        let mut yaml = yaml(&env, case, &api, &origin);
        if let Some(user) = username {
            yaml = yaml.replace(
                "    token_env: VCS_TOKEN\n",
                &format!("    token_env: VCS_TOKEN\n    username: {user}\n"),
            );
        }
        let providers = gantry::vcs::Providers::from_config(&env.load_config(&yaml)).unwrap();
        let vcs = providers.get("vcs").unwrap();
        let marker = if kind == "bitbucket" {
            gantry::vcs::bitbucket::plain_markdown(gantry::report::COMMENT_MARKER)
        } else {
            gantry::report::COMMENT_MARKER.to_string()
        };
        let list = case.comment_create_path();
        api.add_comment(&list, Author::Stranger, "LGTM");
        assert_eq!(
            vcs.find_comment(case.repo(), 7, &marker).await.unwrap(),
            None,
            "{kind}"
        );
        assert!(
            api.find("GET", identity).is_empty(),
            "{kind}: nothing to ask"
        );

        api.add_comment(&list, Author::Gantry, &format!("{marker}\n✅ planned"));
        let err = vcs.find_comment(case.repo(), 7, &marker).await.unwrap_err();
        assert!(
            matches!(&err, gantry::vcs::VcsError::Forbidden(m) | gantry::vcs::VcsError::Unauthorized(m)
                if m.starts_with("looking up the token's user")),
            "{kind}: {err}"
        );
        assert_eq!(api.find("GET", identity).len(), 1, "{kind}");
    }
}
