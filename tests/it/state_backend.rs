//! gantry's Terraform `http` backend: real terraform from a "laptop" against a
//! TestApp, two terraform processes racing for the lock, run tokens scoped to
//! their run and workspace, and applies that do not finish locking the workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::apply::{merge_dns, post, wait_state};
use crate::support::origin::null_config;
use crate::support::*;

fn dns_yaml(env: &TestEnv, auto_apply: bool) -> String {
    env.config_yaml(
        &format!(
            r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    auto_apply: {auto_apply}
  - name: network
    environment: production
    provider: github
    repo: acme/infra
    dir: network
"#
        ),
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    )
}

/// A configuration using gantry's backend for `workspace`, as a CLI user
/// writes it (credentials come from the environment).
fn cli_config(app: &TestApp, workspace: &str, body: &str) -> String {
    let address = app.url(&format!("/state/v1/{workspace}"));
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
  }}
}}
{body}"#
    )
}

/// A null_resource that takes `secs` to create.
fn slow_resource(marker: &str, secs: u64) -> String {
    format!(
        r#"resource "null_resource" "slow" {{
  triggers = {{
    marker = "{marker}"
  }}
  provisioner "local-exec" {{
    command = "touch creating; sleep {secs}"
  }}
}}
"#
    )
}

/// terraform as a CLI user runs it: its own HOME, the test's provider mirror,
/// the backend password in `TF_HTTP_PASSWORD`.
fn terraform(dir: &Path, password: &str, args: &[&str]) -> tokio::process::Command {
    let home = dir.join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(terraform_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("TF_CLI_CONFIG_FILE", terraform_rc())
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_HTTP_USERNAME", "laptop")
        .env("TF_HTTP_PASSWORD", password)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run_ok(dir: &Path, password: &str, args: &[&str]) -> String {
    let out = terraform(dir, password, args).output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "terraform {args:?} failed:\n{text}");
    text
}

fn project(env: &TestEnv, name: &str, config: &str) -> PathBuf {
    let dir = env.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.tf"), config).unwrap();
    dir
}

async fn versions(app: &TestApp, ws: &str) -> Vec<Value> {
    app.api(&format!("/api/workspaces/{ws}/state-versions"))
        .await["state_versions"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_cli_user_inits_plans_and_applies_through_the_backend_with_the_api_token() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&dns_yaml(&env, false)).await;
        let dir = project(
            &env,
            "laptop",
            &cli_config(&app, "dns", &null_config("cli-1")),
        );

        // Without credentials the backend refuses terraform.
        let out = terraform(
            &dir,
            "not-the-token",
            &["init", "-input=false", "-no-color"],
        )
        .output()
        .await
        .unwrap();
        assert!(
            !out.status.success(),
            "{db:?}: a wrong token must be refused"
        );

        run_ok(
            &dir,
            API_TOKEN,
            &["init", "-input=false", "-no-color", "-reconfigure"],
        )
        .await;
        let plan = run_ok(
            &dir,
            API_TOKEN,
            &["plan", "-input=false", "-no-color", "-out=p.tfplan"],
        )
        .await;
        assert!(plan.contains("1 to add"), "{db:?}: {plan}");
        // The credentials came from the environment: the saved plan does not hold them.
        let listing = std::process::Command::new("unzip")
            .args(["-p", "p.tfplan"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(listing.status.success());
        assert!(
            !String::from_utf8_lossy(&listing.stdout).contains(API_TOKEN),
            "{db:?}: the backend password was saved in the plan"
        );
        run_ok(
            &dir,
            API_TOKEN,
            &["apply", "-input=false", "-no-color", "p.tfplan"],
        )
        .await;

        let state = app.api("/api/workspaces/dns/state").await;
        assert_eq!(state["resources"][0]["type"], "null_resource", "{db:?}");
        let v = versions(&app, "dns").await;
        assert_eq!(v.len(), 1, "{db:?}: {v:?}");
        assert_eq!(
            v[0]["run_id"],
            Value::Null,
            "{db:?}: a CLI version has no run"
        );
        assert_eq!(v[0]["written_by"], "api", "{db:?}");
        // Nothing is left locked, and the write is in the audit log.
        assert!(app.ctx.store.state_lock("dns").await.unwrap().is_none());
        let audit = app.api("/api/audit?workspace=dns").await;
        assert_eq!(audit["entries"][0]["action"], "state write", "{db:?}");

        // A second change from the laptop: the serial grows, the lineage stays.
        std::fs::write(
            dir.join("main.tf"),
            cli_config(&app, "dns", &null_config("cli-2")),
        )
        .unwrap();
        run_ok(
            &dir,
            API_TOKEN,
            &["apply", "-input=false", "-no-color", "-auto-approve"],
        )
        .await;
        let v = versions(&app, "dns").await;
        assert_eq!(v.len(), 2, "{db:?}");
        assert!(v[0]["serial"].as_i64() > v[1]["serial"].as_i64(), "{db:?}");
        assert_eq!(v[0]["lineage"], v[1]["lineage"], "{db:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn two_terraform_processes_on_one_state_one_fails_on_the_lock_and_the_state_stays_whole() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&dns_yaml(&env, false)).await;
        let a = project(&env, "a", &cli_config(&app, "dns", &slow_resource("a", 6)));
        let b = project(&env, "b", &cli_config(&app, "dns", &slow_resource("b", 0)));
        run_ok(&a, API_TOKEN, &["init", "-input=false", "-no-color"]).await;
        run_ok(&b, API_TOKEN, &["init", "-input=false", "-no-color"]).await;

        let first = terraform(
            &a,
            API_TOKEN,
            &["apply", "-input=false", "-no-color", "-auto-approve"],
        )
        .output();
        let first = tokio::spawn(first);
        // B starts while A holds the lock (A's provisioner sleeps).
        let holder = wait_until(Duration::from_secs(60), || async {
            app.ctx.store.state_lock("dns").await.unwrap()
        })
        .await;
        let second = terraform(
            &b,
            API_TOKEN,
            &["apply", "-input=false", "-no-color", "-auto-approve"],
        )
        .output()
        .await
        .unwrap();
        let second_text = String::from_utf8_lossy(&second.stderr).to_string();
        assert!(
            !second.status.success(),
            "{db:?}: B ran while A held the lock"
        );
        assert!(
            second_text.contains("already locked") && second_text.contains(&holder.lock_id),
            "{db:?}: B names A's lock:\n{second_text}"
        );
        let first = first.await.unwrap().unwrap();
        assert!(
            first.status.success(),
            "{db:?}: {}",
            String::from_utf8_lossy(&first.stderr)
        );

        // Now B goes through; every version continues the one before.
        run_ok(
            &b,
            API_TOKEN,
            &["apply", "-input=false", "-no-color", "-auto-approve"],
        )
        .await;
        let v = versions(&app, "dns").await;
        assert!(v.len() >= 2, "{db:?}: {v:?}");
        for pair in v.windows(2) {
            assert!(
                pair[0]["serial"].as_i64() > pair[1]["serial"].as_i64(),
                "{db:?}: {v:?}"
            );
            assert_eq!(pair[0]["lineage"], pair[1]["lineage"], "{db:?}");
        }
        let state = app.api("/api/workspaces/dns/state").await;
        assert_eq!(
            state["resources"][0]["instances"][0]["attributes"]["triggers"]["marker"], "b",
            "{db:?}"
        );
        assert!(app.ctx.store.state_lock("dns").await.unwrap().is_none());
        app.stop().await;
    }
}

/// A run in `applying`, held by another node (so no worker here touches it).
async fn active_run(app: &TestApp, workspace: &str) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    sqlx::query_scalar(
        "INSERT INTO runs (workspace, kind, source, state, provider_id, repo, branch, head_sha, git_ref,
                           enqueued_at, updated_at, claimed_by, lease_until)
         VALUES ($1, 'apply', 'push', 'applying', 'github', 'acme/infra', 'main', 'abc', 'refs/heads/main',
                 $2, $2, 'elsewhere', $3) RETURNING id",
    )
    .bind(workspace)
    .bind(now)
    .bind(now + 3_600_000)
    .fetch_one(app.ctx.store.pool())
    .await
    .unwrap()
}

async fn call(
    app: &TestApp,
    method: &str,
    ws: &str,
    password: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(&format!("/state/v1/{ws}")),
        )
        .basic_auth("terraform", Some(password));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn lock_info(id: &str) -> Value {
    json!({"ID": id, "Operation": "OperationTypeApply", "Info": "", "Who": "someone@laptop",
           "Version": "1.0.3", "Created": "2026-01-01T00:00:00Z", "Path": ""})
}

#[tokio::test]
async fn run_tokens_are_scoped_to_their_workspace_and_run_and_lock_conflicts_answer_423() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&dns_yaml(&env, false)).await;
        let run = active_run(&app, "dns").await;
        let scratch = tempfile::tempdir().unwrap();
        let base = gantry::state::backend_base(&app.ctx.config(), app.addr);
        let creds = gantry::state::configure_run(&app.ctx.store, &base, "dns", run, scratch.path())
            .await
            .unwrap();
        let token = secrecy::ExposeSecret::expose_secret(&creds.password).to_string();
        // A plan's token reads and locks; only an apply's writes.
        let writer = gantry::state::run_credentials(
            &app.ctx.store,
            &base,
            "dns",
            run,
            gantry::state::Access::Write,
        )
        .await
        .unwrap();
        let writer = secrecy::ExposeSecret::expose_secret(&writer.password).to_string();
        // The override file names the backend and holds no secret; the
        // address comes with the credentials.
        let hcl =
            std::fs::read_to_string(scratch.path().join(gantry::state::OVERRIDE_FILE)).unwrap();
        assert!(hcl.contains("backend \"http\""), "{hcl}");
        assert_eq!(creds.address, app.url("/state/v1/dns"));
        assert!(!hcl.contains(&token));

        assert_eq!(
            call(&app, "GET", "dns", &token, None).await.status(),
            204,
            "{db:?}"
        );
        assert_eq!(
            call(&app, "GET", "network", &token, None).await.status(),
            403,
            "{db:?}"
        );
        assert_eq!(
            call(&app, "LOCK", "network", &token, Some(lock_info("x")))
                .await
                .status(),
            403
        );
        assert_eq!(
            call(&app, "GET", "dns", "guess", None).await.status(),
            401,
            "{db:?}"
        );
        assert_eq!(
            app.client
                .get(app.url("/state/v1/dns"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );

        // The run locks; the API token's LOCK gets 423 and the holder's info.
        assert_eq!(
            call(&app, "LOCK", "dns", &token, Some(lock_info("run-lock")))
                .await
                .status(),
            200
        );
        let refused = call(&app, "LOCK", "dns", API_TOKEN, Some(lock_info("cli-lock"))).await;
        assert_eq!(refused.status(), 423, "{db:?}");
        let holder: Value = refused.json().await.unwrap();
        assert_eq!(holder["ID"], "run-lock", "{db:?}");
        assert_eq!(holder["Who"], "someone@laptop");
        // Writes need the holder's id.
        let state = json!({"version": 4, "terraform_version": "1.0.3", "serial": 1,
                           "lineage": "l-1", "outputs": {}, "resources": []});
        let post = |id: &'static str, token: String, state: Value| {
            let app = &app;
            async move {
                app.client
                    .post(app.url(&format!("/state/v1/dns?ID={id}")))
                    .basic_auth("t", Some(token))
                    .json(&state)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(
            post("cli-lock", API_TOKEN.into(), state.clone()).await,
            423,
            "{db:?}"
        );
        assert_eq!(
            post("run-lock", token.clone(), state.clone()).await,
            403,
            "{db:?}: a plan's token wrote state"
        );
        assert_eq!(
            post("run-lock", writer.clone(), state.clone()).await,
            200,
            "{db:?}"
        );
        let v = versions(&app, "dns").await;
        assert_eq!(v[0]["run_id"], run, "{db:?}");
        assert_eq!(v[0]["written_by"], format!("run {run}"), "{db:?}");
        // Another lineage or an older serial would corrupt the state: refused.
        let mut other = state.clone();
        other["lineage"] = json!("l-2");
        other["serial"] = json!(2);
        assert_eq!(post("run-lock", writer.clone(), other).await, 409, "{db:?}");
        // A run's token cannot force-unlock; the wrong id gets the holder back.
        assert_eq!(
            call(&app, "UNLOCK", "dns", &token, None).await.status(),
            409
        );
        assert_eq!(
            call(
                &app,
                "UNLOCK",
                "dns",
                API_TOKEN,
                Some(lock_info("cli-lock"))
            )
            .await
            .status(),
            423
        );
        assert_eq!(
            call(&app, "UNLOCK", "dns", &token, Some(lock_info("run-lock")))
                .await
                .status(),
            200
        );

        // Once the run ends its token is worthless, and a lock it left behind
        // (a killed terraform never unlocks) is taken over.
        assert_eq!(
            call(&app, "LOCK", "dns", &token, Some(lock_info("run-lock-2")))
                .await
                .status(),
            200
        );
        sqlx::query("UPDATE runs SET state = 'errored' WHERE id = $1")
            .bind(run)
            .execute(app.ctx.store.pool())
            .await
            .unwrap();
        assert_eq!(
            call(&app, "GET", "dns", &token, None).await.status(),
            401,
            "{db:?}"
        );
        assert_eq!(
            call(&app, "LOCK", "dns", API_TOKEN, Some(lock_info("cli-lock")))
                .await
                .status(),
            200
        );
        // The API token may force-unlock (terraform force-unlock sends no body), audited.
        let forced = call(&app, "UNLOCK", "dns", API_TOKEN, None).await;
        assert_eq!(forced.status(), 200);
        let audit = app.api("/api/audit?workspace=dns").await;
        assert_eq!(
            audit["entries"][0]["action"], "state force-unlock",
            "{db:?}"
        );
        app.stop().await;
    }
}

/// Merges `dns` with a slow resource (a push webhook, `auto_apply`); returns
/// the run once it is applying.
async fn merge_slow(env: &TestEnv, app: &TestApp, secs: u64) -> i64 {
    let base = env.origin.initial();
    merge_dns(env, app, base, slow_resource("v2", secs), "merge-1", 7).await;
    wait_until(Duration::from_secs(120), || async {
        app.runs()
            .await
            .into_iter()
            .find(|r| r["workspace"] == "dns" && r["state"] == "applying")
            .and_then(|r| r["id"].as_i64())
    })
    .await
}

#[tokio::test]
async fn a_canceled_apply_locks_the_workspace_with_its_reason() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&dns_yaml(&env, true)).await;
        let id = merge_slow(&env, &app, 60).await;
        // The run's terraform holds the state lock while it applies.
        wait_until(Duration::from_secs(60), || async {
            app.ctx.store.state_lock("dns").await.unwrap()
        })
        .await;
        assert_eq!(
            post(&app, &format!("/api/runs/{id}/cancel"), json!({}))
                .await
                .status(),
            200
        );
        wait_state(&app, id, "canceled").await;
        let lock = app
            .ctx
            .store
            .workspace_lock("dns")
            .await
            .unwrap()
            .expect("the workspace is locked");
        assert_eq!(lock.run_id, Some(id), "{db:?}");
        assert!(
            lock.reason.contains("was canceled"),
            "{db:?}: {}",
            lock.reason
        );
        let audit = app.api("/api/audit?workspace=dns").await;
        let entries = audit["entries"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == "lock" && e["run_id"] == id),
            "{db:?}: {entries:?}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn an_apply_whose_state_cannot_be_stored_spools_it_and_locks_the_workspace() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&dns_yaml(&env, true)).await;
        let id = merge_slow(&env, &app, 8).await;
        // While the resource is being created (its provisioner has started),
        // someone else's version lands: another lineage, a newer serial.
        // terraform's write is refused.
        let marker = env
            .data_dir()
            .join(format!("work/run-{id}/src/dns/creating"));
        wait_until(Duration::from_secs(60), || async {
            marker.exists().then_some(())
        })
        .await;
        let theirs = json!({"version": 4, "terraform_version": "1.0.3", "serial": 99,
                            "lineage": "someone-else", "outputs": {}, "resources": []});
        app.ctx
            .store
            .add_state_version("dns", 99, "someone-else", 0, &theirs.to_string())
            .await
            .unwrap();
        let run = wait_state(&app, id, "errored").await;
        let lock = app
            .ctx
            .store
            .workspace_lock("dns")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{db:?}: the workspace is not locked: {run}"));
        assert!(
            lock.reason.contains("could not store its state")
                && lock.reason.contains("spooled state"),
            "{db:?}: {} / {}",
            lock.reason,
            run["state_reason"]
        );
        // The state terraform could not store is kept, whole.
        let spooled = app.ctx.store.spooled_states("dns").await.unwrap();
        assert_eq!(spooled.len(), 1, "{db:?}");
        assert_eq!(spooled[0].run_id, Some(id));
        let doc: Value = serde_json::from_str(&spooled[0].state).unwrap();
        assert_eq!(doc["resources"][0]["type"], "null_resource", "{db:?}");
        // An operator fetches it as terraform wrote it, to `terraform state push`.
        let fetched = app
            .client
            .get(app.url(&format!("/state/v1/dns/spool/{}", spooled[0].id)))
            .basic_auth("operator", Some(API_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(fetched.status(), 200, "{db:?}");
        assert_eq!(fetched.text().await.unwrap(), spooled[0].state);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_apply_that_times_out_locks_the_workspace_with_its_reason() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.config_yaml(
        r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    auto_apply: true
    timeout: 20s
"#,
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    );
    let app = env.spawn_app(&yaml).await;
    let id = merge_slow(&env, &app, 300).await;
    let run = wait_state(&app, id, "errored").await;
    assert!(
        run["state_reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 20s"),
        "{run}"
    );
    let lock = app
        .ctx
        .store
        .workspace_lock("dns")
        .await
        .unwrap()
        .expect("the workspace is locked");
    assert_eq!(lock.run_id, Some(id));
    assert!(
        lock.reason.contains("timed out after 20s"),
        "{}",
        lock.reason
    );
    let audit = app.api("/api/audit?workspace=dns").await;
    assert_eq!(audit["entries"][0]["action"], "lock");
    assert_eq!(audit["entries"][0]["run_id"], id);
    app.stop().await;
}
