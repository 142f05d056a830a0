//! A pull request's Terraform is untrusted code: end to end with real
//! terraform, it reads nothing of gantry's (its process, config, database,
//! other runs, key files), and a program started in the sandbox can neither
//! read those nor write outside its own directories.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use gantry::runner::{JobPhase, NoLog, RunDirs, Runner};
use tokio_util::sync::CancellationToken;

use crate::support::origin::null_config;
use crate::support::*;

/// Planted in gantry's process environment, its config file and its key file.
const CANARY: &str = "canary-7f3a9c1e5b2d48a6";

/// The canary as a leak would carry it: in clear, and base64 at each of the
/// three byte alignments in both alphabets (the part the canary alone determines).
fn leak_forms(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_string()];
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for pad in 0..3usize {
            let mut bytes = vec![b'x'; pad];
            bytes.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&bytes);
            let start = (pad * 8).div_ceil(6);
            let end = (bytes.len() * 8) / 6;
            out.push(enc[start..end].to_string());
        }
    }
    out
}

fn assert_no_leak(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        for form in leak_forms(s) {
            assert!(
                !text.contains(&form),
                "{what} carries a secret (as `{form}`):\n{text}"
            );
        }
    }
}

/// The PR's probe: every read of gantry's things, each wrapped in `try`.
fn probe_tf(config: &Path, data: &Path, other_run: i64, key: &Path) -> String {
    let d = data.display();
    format!(
        r#"locals {{
  stat   = try(file("/proc/self/stat"), "")
  ppid   = try(split(" ", local.stat)[3], "0")
  pstat  = try(file("/proc/${{local.ppid}}/stat"), "")
  gppid  = try(split(" ", local.pstat)[3], "0")
}}
output "parent_environ" {{ value = try(filebase64("/proc/${{local.ppid}}/environ"), "denied") }}
output "grandparent_environ" {{ value = try(filebase64("/proc/${{local.gppid}}/environ"), "denied") }}
output "daemon_environ" {{ value = try(filebase64("/proc/{daemon}/environ"), "denied") }}
output "config_file" {{ value = try(filebase64("{config}"), "denied") }}
output "database" {{ value = try(filebase64("{d}/gantry.db"), "denied") }}
output "database_wal" {{ value = try(filebase64("{d}/gantry.db-wal"), "denied") }}
output "other_run_plan" {{ value = try(filebase64("{d}/runs/{other_run}/plan.json"), "denied") }}
output "other_run_log" {{ value = try(filebase64("{d}/runs/{other_run}/log.txt"), "denied") }}
output "other_run_checkout" {{ value = try(join(",", fileset("{d}/work", "**")), "denied") }}
output "app_key" {{ value = try(filebase64("{key}"), "denied") }}
output "data_dir_listing" {{ value = try(coalesce(join(",", fileset("{d}", "**"))), "denied") }}

resource "null_resource" "ordinary" {{
  triggers = {{
    marker = "still-plans"
  }}
}}
"#,
        daemon = std::process::id(),
        config = config.display(),
        key = key.display(),
    )
}

const PROBES: &[&str] = &[
    "parent_environ",
    "grandparent_environ",
    "daemon_environ",
    "config_file",
    "database",
    "database_wal",
    "other_run_plan",
    "other_run_log",
    "app_key",
    "data_dir_listing",
];

#[tokio::test]
async fn a_pull_requests_terraform_reads_nothing_of_gantrys() {
    // SAFETY: set once, before the app starts; no other test reads it.
    unsafe { std::env::set_var("GANTRY_SANDBOX_CANARY", CANARY) };
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = format!("# {CANARY}\n{}", crate::github_app::app_yaml(&env));
    let key = env.dir.path().join("app.pem");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(3)
        .collect();

    // A first pull request plans `dns`, so another workspace's run has artifacts.
    let (files, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let app = env.spawn_app(&yaml).await;
    app.send_webhook(
        "pull_request",
        "sandbox-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(1).await;
    let dns_run = runs[0]["id"].as_i64().unwrap();
    assert_eq!(runs[0]["state"], "planned", "{}", runs[0]);

    // Then the probe, pushed to the same pull request.
    let mut files = files;
    files.insert(
        "network/main.tf".into(),
        probe_tf(&env.config_path(), &env.data_dir(), dns_run, &key),
    );
    let head2 = env
        .origin
        .commit(&files, &[head], "probe", &["refs/pull/7/head"]);
    app.send_webhook(
        "pull_request",
        "sandbox-2",
        &pr_payload("synchronize", &head2.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(3).await;
    let network = runs
        .iter()
        .find(|r| r["workspace"] == "network")
        .expect("network planned");
    assert_eq!(network["state"], "planned", "{network}");
    assert_eq!(
        network["plan"],
        serde_json::json!({"add": 1, "change": 0, "destroy": 0}),
        "the ordinary null_resource still plans"
    );

    let comment = env.wait_for_comment(7, "network").await;
    let comment = wait_for_comment_with(&env, "data_dir_listing")
        .await
        .unwrap_or(comment);
    for probe in PROBES {
        assert!(
            comment.contains(&format!("+ {probe}"))
                && comment_line(&comment, probe).contains("\"denied\""),
            "{probe} was not denied:\n{comment}"
        );
    }
    assert!(comment.contains("null_resource.ordinary"), "{comment}");
    assert!(!comment.contains("not isolated"), "{comment}");

    // No canary or secret anywhere gantry sent or serves.
    let secrets = vec![
        CANARY.to_string(),
        key_body,
        API_TOKEN.to_string(),
        WEBHOOK_SECRET.to_string(),
    ];
    for r in env.github.requests() {
        assert_no_leak(
            &format!("{} {}", r.method, r.path),
            &format!("{} {}", r.path, r.body),
            &secrets,
        );
    }
    for path in [
        "/api/runs".to_string(),
        format!("/api/runs/{}", network["id"]),
        "/api/audit".to_string(),
    ] {
        let body = app.api(&path).await.to_string();
        assert_no_leak(&path, &body, &secrets);
    }
    app.stop().await;
}

/// The comment's line for one output of the plan.
fn comment_line<'c>(comment: &'c str, output: &str) -> &'c str {
    comment
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("+ {output} ")))
        .unwrap_or("")
}

async fn wait_for_comment_with(env: &TestEnv, needle: &str) -> Option<String> {
    for _ in 0..100 {
        if let Some((_, body)) = env
            .github
            .comments(7)
            .into_iter()
            .find(|(_, b)| b.contains(needle))
        {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A program started through the same sandbox the runner uses can read
/// neither its parent's environment nor gantry's database, and can write
/// nothing outside its checkout, HOME and TMPDIR.
#[tokio::test]
async fn a_program_in_the_sandbox_reads_and_writes_only_its_own() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let config = env.load_config(&env.default_yaml());
    let Some(sandbox) = gantry::app::sandbox_for_runs(&config, &test_env_lookup)
        .await
        .unwrap()
    else {
        panic!("the sandbox is on by default");
    };
    let data = env.data_dir();
    write_file(&data.join("gantry.db"), &format!("database {CANARY}"));
    let dirs = RunDirs::new(data.join("work/run-1"));
    for d in [dirs.checkout(), dirs.home(), dirs.tmp(), dirs.out()] {
        std::fs::create_dir_all(&d).unwrap();
    }
    let cache = data.join("plugin-cache/network");
    std::fs::create_dir_all(&cache).unwrap();
    sandbox
        .hand_over(&[
            &dirs.checkout(),
            &dirs.home(),
            &dirs.tmp(),
            &dirs.out(),
            &cache,
        ])
        .unwrap();
    let script = format!(
        r#"
cat /proc/$PPID/environ >/dev/null 2>&1 && echo "read parent environ" || echo "parent environ denied"
cat /proc/{daemon}/environ >/dev/null 2>&1 && echo "read daemon environ" || echo "daemon environ denied"
cat {data}/gantry.db 2>/dev/null || echo "database denied"
cat {config} >/dev/null 2>&1 && echo "read config" || echo "config denied"
echo x > {data}/planted 2>/dev/null && echo "wrote data dir" || echo "data dir write denied"
echo x > /tmp/gantry-sandbox-planted-$$ 2>/dev/null && echo "wrote /tmp" || echo "/tmp write denied"
echo x > {cache}/../other/provider 2>/dev/null && echo "wrote other cache" || echo "other cache write denied"
echo x > checkout-file && echo "checkout ok"
echo x > "$HOME/home-file" && echo "home ok"
echo x > "$TMPDIR/tmp-file" && echo "tmp ok"
"#,
        daemon = std::process::id(),
        data = data.display(),
        config = env.config_path().display(),
        cache = cache.display(),
    );
    std::fs::create_dir_all(data.join("plugin-cache/other")).unwrap();
    let out = sandbox
        .command(
            Path::new("/bin/sh"),
            &["-c", &script],
            &gantry::runner::sandbox::Confinement {
                read: Vec::new(),
                write: vec![dirs.checkout(), dirs.home(), dirs.tmp(), cache.clone()],
            },
        )
        .current_dir(dirs.checkout())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dirs.home())
        .env("TMPDIR", dirs.tmp())
        .env("GANTRY_SANDBOX_CANARY", CANARY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "parent environ denied",
        "daemon environ denied",
        "database denied",
        "config denied",
        "data dir write denied",
        "/tmp write denied",
        "other cache write denied",
        "checkout ok",
        "home ok",
        "tmp ok",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "`{line}` missing:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!stdout.contains(CANARY), "{stdout}");
    assert!(!data.join("planted").exists());
    assert!(dirs.checkout().join("checkout-file").exists());
}

/// Each phase gets only its own variables, and only its workspace's.
#[tokio::test]
async fn a_plan_never_sees_apply_only_or_other_workspaces_variables() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.default_yaml().replace(
        "workspaces:\n",
        r#"variables:
  - { name: ACCOUNT_REGION, value: eu-west-1 }
  - { name: READ_KEY, value: account-read-key, sensitive: true, phases: [plan, drift] }
  - { name: WRITE_KEY, value: account-write-key, sensitive: true, phases: [apply] }
environments:
  - name: production
    variables:
      - { name: ACCOUNT_REGION, value: us-east-1 }
      - { name: PROD_ONLY, value: prod }
  - name: staging
    variables:
      - { name: STAGING_ONLY, value: staging }
workspaces:
"#,
    );
    let yaml = yaml.replace(
        "    dir: network\n",
        "    dir: network\n    variables:\n      - { name: NETWORK_ONLY, value: net, terraform_var: true }\n",
    );
    let yaml = yaml.replace(
        "    dir: dns\n",
        "    dir: dns\n    variables:\n      - { name: DNS_ONLY, value: dns }\n",
    );
    let wrapper = env.dir.path().join("tf-env");
    crate::support::origin::write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\nenv | sort > \"$HOME/env-$1.txt\"\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    let yaml = yaml.replace(
        &format!("bin: \"{}\"", terraform_bin()),
        &format!("bin: \"{}\"", wrapper.display()),
    );
    let config2 = env.load_config(&yaml);
    let sandbox = gantry::app::sandbox_for_runs(&config2, &test_env_lookup)
        .await
        .unwrap();
    let runner = gantry::runner::LocalRunner::new(
        &config2,
        &test_env_lookup,
        sandbox,
        std::sync::Arc::new(gantry::redact::Redactor::for_config(&config2)),
    )
    .unwrap();

    let ws = config2.workspace("network").unwrap();
    let job = |phase| gantry::runs::job::job_spec(&config2, ws, 7, "0000000", phase);
    let plan = job(JobPhase::Plan);
    write_file(
        &runner.workdir(&plan).join("main.tf"),
        &format!("variable \"NETWORK_ONLY\" {{}}\n{}", null_config("x")),
    );
    let out = runner
        .run(&plan, &NoLog, &CancellationToken::new())
        .await
        .unwrap();
    let home = runner.dirs(7).home();
    let seen = std::fs::read_to_string(home.join("env-plan.txt")).unwrap();
    for expected in [
        "ACCOUNT_REGION=us-east-1",
        "READ_KEY=account-read-key",
        "PROD_ONLY=prod",
        "TF_VAR_NETWORK_ONLY=net",
    ] {
        assert!(
            seen.lines().any(|l| l == expected),
            "{expected} missing from the plan:\n{seen}"
        );
    }
    for absent in [
        "WRITE_KEY",
        "STAGING_ONLY",
        "DNS_ONLY",
        "GITHUB_TOKEN",
        "GANTRY_API_TOKEN",
    ] {
        assert!(!seen.contains(absent), "{absent} reached the plan:\n{seen}");
    }

    let apply = job(JobPhase::Apply {
        plan: out.plan.unwrap().file,
        init: false,
    });
    runner
        .run(&apply, &NoLog, &CancellationToken::new())
        .await
        .unwrap();
    let seen = std::fs::read_to_string(home.join("env-apply.txt")).unwrap();
    assert!(
        seen.lines().any(|l| l == "WRITE_KEY=account-write-key"),
        "{seen}"
    );
    assert!(!seen.contains("READ_KEY"), "{seen}");
}

/// A host that cannot sandbox: the helper cannot enter the sandbox.
fn no_sandbox_env(name: &str) -> Option<String> {
    match name {
        gantry::runner::sandbox::HELPER_ENV => Some("/bin/false".into()),
        other => test_env_lookup(other),
    }
}

#[tokio::test]
async fn without_a_sandbox_gantry_serves_only_when_told_and_every_comment_says_so() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let config = env.load_config(&env.default_yaml());
    let err = gantry::App::build(config, std::sync::Arc::new(no_sandbox_env))
        .await
        .err()
        .expect("no silent fallback");
    let err = format!("{err:#}");
    assert!(
        err.contains("cannot be sandboxed") && err.contains("runner.sandbox: off"),
        "{err}"
    );

    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let yaml = env
        .default_yaml()
        .replace("runner:\n", "runner:\n  sandbox: \"off\"\n");
    let config = env.load_config(&yaml);
    let app = gantry::App::build(config, std::sync::Arc::new(no_sandbox_env))
        .await
        .expect("runner.sandbox: off starts")
        .without_config_watch();
    assert!(app.ctx().sandbox.is_none());
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let body = pr_payload("opened", &head.to_string(), &base.to_string());
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/github"))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", "off-1")
        .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let comment = env.wait_for_comment(7, "planned").await;
    assert!(
        comment.contains("Runs are not isolated: `runner.sandbox` is off"),
        "{comment}"
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// Through webhooks: a pull request's plan gets the plan-phase credential and
/// never the apply-only one; the apply of the merge gets the apply one.
#[tokio::test]
async fn a_pr_plan_never_gets_apply_credentials_and_the_merge_apply_does() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        // Terraform that prints the names (never the values) of the keys it got.
        let wrapper = env.dir.path().join("tf-keys");
        crate::support::origin::write_script(
            &wrapper,
            &format!(
                "#!/bin/sh\ncase \"$1\" in plan|apply) echo \"KEYS-SEEN[$1]: $(env | cut -d= -f1 | grep _KEY | sort | tr '\\n' ' ')\";; esac\nexec \"{}\" \"$@\"\n",
                terraform_bin()
            ),
        );
        let workspaces = r#"  - name: dns
    environment: production
    provider: github
    repo: acme/infra
    dir: dns
    auto_apply: true
"#;
        let yaml = env
            .config_yaml(workspaces, 2, "127.0.0.1:0", &wrapper.display().to_string())
            .replace(
                "workspaces:\n",
                r#"environments:
  - name: production
    variables:
      - { name: READ_KEY, value: read-only-credential, sensitive: true, phases: [plan, drift] }
      - { name: WRITE_KEY, value: write-credential, sensitive: true, phases: [apply] }
workspaces:
"#,
            );
        let (files, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("dns-v2"))],
            "dns",
            &["refs/pull/7/head"],
        );
        let app = env.spawn_app(&yaml).await;
        app.send_webhook(
            "pull_request",
            "keys-1",
            &pr_payload("opened", &head.to_string(), &base.to_string()),
        )
        .await;
        let plan_comment = env.wait_for_comment(7, "KEYS-SEEN[plan]").await;
        assert!(
            plan_comment.contains("KEYS-SEEN[plan]: READ_KEY \n"),
            "{db:?}: the PR plan gets the read key only:\n{plan_comment}"
        );
        assert!(!plan_comment.contains("WRITE_KEY"), "{plan_comment}");

        // The merge: its plan step gets the read key, its apply the write key.
        let merge = env
            .origin
            .commit(&files, &[base], "Merge pull request", &["refs/heads/main"]);
        env.github.set_commit_pr(&merge.to_string(), 7);
        app.send_webhook(
            "push",
            "keys-2",
            &push_payload("main", &base.to_string(), &merge.to_string()),
        )
        .await;
        let apply_comment = env.wait_for_comment(7, "KEYS-SEEN[apply]").await;
        assert!(
            apply_comment.contains("KEYS-SEEN[apply]: WRITE_KEY \n"),
            "{db:?}: the apply gets the write key only:\n{apply_comment}"
        );
        let runs = app.wait_for_runs_done(2).await;
        assert!(
            runs.iter()
                .any(|r| r["kind"] == "apply" && r["state"] == "applied"),
            "{runs:?}"
        );
        for secret in ["read-only-credential", "write-credential"] {
            for r in env.github.requests() {
                assert!(!r.body.to_string().contains(secret), "{secret} leaked");
            }
        }
        app.stop().await;
    }
}

/// Both helpers enter the same sandbox: the small `gantry-sandbox`, and the
/// gantry binary itself when the small one is not installed beside it.
#[tokio::test]
async fn both_helpers_enter_the_sandbox() {
    use gantry::runner::Sandbox;
    let small = Sandbox::probe(Path::new(env!("CARGO_BIN_EXE_gantry-sandbox")))
        .await
        .unwrap();
    let whole = Sandbox::probe(Path::new(env!("CARGO_BIN_EXE_gantry")))
        .await
        .unwrap();
    assert_eq!(small.layers(), whole.layers());
    assert!(
        small.layers().landlock.contains("enforced"),
        "{:?}",
        small.layers()
    );

    // Anything but the helper's own calling convention is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry-sandbox"))
        .args(["--spec", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: gantry-sandbox"));
}
