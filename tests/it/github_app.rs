//! GitHub App authentication: the app's JWT finds the repository's
//! installation, whose token then authenticates statuses, comments and git.

use crate::support::fake_github::{APP_BOT_LOGIN, INSTALLATION_TOKEN};
use crate::support::origin::null_config;
use crate::support::*;

/// The standard configuration with the provider authenticating as a GitHub
/// App (a fresh RSA key).
/// The default config with the GitHub provider as an App whose key is `app.pem`
/// in the test's directory (made here).
pub(crate) fn app_yaml(env: &TestEnv) -> String {
    let key = env.dir.path().join("app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl makes the test key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.config_yaml(
        TestEnv::standard_workspaces(),
        2,
        "127.0.0.1:0",
        &terraform_bin(),
    )
    .replace(
        "    token_env: GITHUB_TOKEN\n",
        &format!(
            "    app_id: 12345\n    private_key_file: \"{}\"\n",
            key.display()
        ),
    )
}

#[tokio::test]
async fn a_github_app_provider_reports_with_its_installation_token() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = app_yaml(&env);
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let app = env.spawn_app(&yaml).await;
    app.send_webhook(
        "pull_request",
        "app-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    app.wait_for_runs_done(1).await;
    env.wait_for_final_status(&head.to_string(), "gantry/dns")
        .await;
    env.wait_for_comment(7, "✅ planned").await;

    let requests = env.github.requests();
    let lookup = requests
        .iter()
        .find(|r| r.path == "/repos/acme/infra/installation")
        .expect("installation lookup");
    assert!(
        lookup
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer eyJ"),
        "the app's JWT"
    );
    assert!(requests
        .iter()
        .any(|r| r.method == "POST" && r.path == "/app/installations/1/access_tokens"));
    let expected = format!("Bearer {INSTALLATION_TOKEN}");
    for r in requests
        .iter()
        .filter(|r| r.path.contains("/statuses/") || r.path.contains("/comments"))
    {
        assert_eq!(
            r.authorization.as_deref(),
            Some(expected.as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
    // One lookup for the repository, however many calls followed.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path == "/repos/acme/infra/installation")
            .count(),
        1
    );
    app.stop().await;
}

/// The app's comments are written by its bot, `<slug>[bot]` (`GET /app`, as
/// the app): a stranger's comment with the marker is left alone.
#[tokio::test]
async fn a_github_app_edits_only_its_bots_comments() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = app_yaml(&env);
    crate::pr_checks::only_own_comments_are_edited(&env, &yaml, APP_BOT_LOGIN, "/app").await;
    let lookup = env
        .github
        .requests()
        .into_iter()
        .find(|r| r.path == "/app")
        .unwrap();
    assert!(
        lookup
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer eyJ"),
        "the app's JWT"
    );
    assert!(
        env.github.requests().iter().all(|r| r.path != "/user"),
        "an app has no user"
    );
}

#[tokio::test]
async fn a_bad_app_key_is_a_config_error() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let key = env.dir.path().join("not-a-key.pem");
    std::fs::write(&key, "hello").unwrap();
    let yaml = env
        .config_yaml(
            TestEnv::standard_workspaces(),
            2,
            "127.0.0.1:0",
            &terraform_bin(),
        )
        .replace(
            "    token_env: GITHUB_TOKEN\n",
            &format!(
                "    app_id: 12345\n    private_key_file: \"{}\"\n",
                key.display()
            ),
        );
    let path = env.write_config(&yaml);
    let err = gantry::Config::load(&path, &test_env_lookup)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: providers[0].private_key_file: `{}` does not hold an RSA private key in PEM format",
            path.display(),
            key.display()
        )
    );
}
