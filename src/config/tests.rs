use std::collections::HashMap;
use std::path::Path;

use super::*;

const GOOD: &str = r#"
listen: 127.0.0.1:8080
data_dir: ./.gantry
database_url: sqlite://./.gantry/gantry.db
concurrency: 4
api_token_env: GANTRY_API_TOKEN
terraform:
  bin: terraform
providers:
  - id: github
    kind: github
    api_url: https://api.github.com
    git_url: "https://github.com/{repo}.git"
    token_env: GITHUB_TOKEN
    webhook_secret_env: GITHUB_WEBHOOK_SECRET
workspaces:
  - name: network
    environment: production
    provider: github
    repo: acme/infra
    branch: main
    dir: network
    trigger_patterns: ["modules/**"]
"#;

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("GANTRY_API_TOKEN", "api-token-123"),
        ("GITHUB_TOKEN", "ghp_token_123"),
        ("GITHUB_WEBHOOK_SECRET", "webhook-secret"),
    ])
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    let env = env();
    Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
}

fn messages(text: &str) -> Vec<String> {
    load(text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_documented_example_is_valid() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.concurrency, 4);
    let w = c.workspace("network").unwrap();
    assert_eq!(w.dir.as_str(), "network");
    assert!(w.triggers.is_match("modules/vpc/main.tf"));
    assert_eq!(
        c.provider("github").unwrap().clone_url("acme/infra"),
        "https://github.com/acme/infra.git"
    );
    assert_eq!(c.terraform.timeout, std::time::Duration::from_secs(3600));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gantry.yaml"))
        .unwrap();
    load(&text).unwrap();
}

#[test]
fn every_unknown_key_is_reported() {
    let text = GOOD
        .replace("concurrency: 4", "concurrency: 4\nconcurency: 5")
        .replace(
            "    branch: main\n",
            "    branch: main\n    auto_aply: true\n",
        );
    assert_eq!(
        messages(&text),
        [
            "gantry.yaml: concurency: unknown key",
            "gantry.yaml: workspaces[0].auto_aply: unknown key",
        ]
    );
}

#[test]
fn semantic_errors_are_all_reported_with_file_and_key() {
    let text = GOOD
        .replace("dir: network", "dir: ../outside")
        .replace("provider: github\n    repo", "provider: gitlab\n    repo")
        + r#"  - name: network
    environment: production
    provider: github
    repo: acme/infra
"#;
    let env = HashMap::from([
        ("GANTRY_API_TOKEN", "api-token-123"),
        ("GITHUB_TOKEN", "ghp_token_123"),
    ]);
    let errors = Config::from_yaml(Path::new("gantry.yaml"), &text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        errors,
        "gantry.yaml: providers[0].webhook_secret_env: environment variable GITHUB_WEBHOOK_SECRET is not set\n\
         gantry.yaml: workspaces[0].provider: unknown provider id `gitlab`\n\
         gantry.yaml: workspaces[0].dir: `../outside` escapes the repository\n\
         gantry.yaml: workspaces[1].name: duplicate workspace name `network`"
    );
}

#[test]
fn type_errors_name_the_key() {
    let m = messages(&GOOD.replace("concurrency: 4", "concurrency: lots"));
    assert_eq!(m.len(), 1);
    assert!(
        m[0].starts_with("gantry.yaml: concurrency: invalid type: string \"lots\", expected usize"),
        "{}",
        m[0]
    );
}

#[test]
fn daemon_secrets_cannot_be_passed_to_terraform() {
    let text = GOOD.replace(
        "  bin: terraform",
        "  bin: terraform\n  pass_env: [AWS_REGION, GITHUB_TOKEN]",
    );
    assert_eq!(
        messages(&text),
        ["gantry.yaml: terraform.pass_env[1]: GITHUB_TOKEN holds one of gantry's own secrets and is never passed to terraform"]
    );
}

#[test]
fn other_checks() {
    let text = GOOD
        .replace("listen: 127.0.0.1:8080", "listen: localhost")
        .replace("concurrency: 4", "concurrency: 0")
        .replace("repo: acme/infra", "repo: infra")
        .replace("\"modules/**\"", "\"modules/[\"")
        .replace("kind: github", "kind: svn");
    assert_eq!(
        messages(&text),
        [
            "gantry.yaml: listen: `localhost` is not an address like 127.0.0.1:8080",
            "gantry.yaml: concurrency: must be at least 1",
            "gantry.yaml: providers[0].kind: unknown provider kind `svn` (supported: github, gitlab, bitbucket, azure_devops)",
            "gantry.yaml: workspaces[0].repo: `infra` is not a repository like owner/name",
            "gantry.yaml: workspaces[0].trigger_patterns[0]: invalid glob `modules/[`: unclosed character class; missing ']'",
        ]
    );
}

#[test]
fn repo_paths_normalize_and_never_escape() {
    assert_eq!(RepoPath::parse("./a/b/../c/").unwrap().as_str(), "a/c");
    assert!(RepoPath::parse(".").unwrap().is_root());
    assert!(RepoPath::parse("a/../..").is_err());
    assert!(RepoPath::parse("/etc").is_err());
    let d = RepoPath::parse("network").unwrap();
    assert!(d.contains("network/main.tf"));
    assert!(!d.contains("networking/main.tf"));
    assert!(!d.contains("network"));
    assert_eq!(d.join("../modules/vpc").unwrap().as_str(), "modules/vpc");
}

#[test]
fn a_bad_pricing_catalog_is_a_config_error_with_its_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aws.yaml");
    std::fs::write(
        &file,
        "provider: aws\ncurrency: USD\nas_of: \"2026-11-01\"\nsource: ours\ndefault_region: us-east-1\nresources:\n  aws_eip:\n    - name: ip\n      unit: hour\n      price: -1\n",
    )
    .unwrap();
    let text = format!("pricing_dir: \"{}\"\n{GOOD}", dir.path().display());
    assert_eq!(
        messages(&text),
        [format!(
            "{}: resources.aws_eip[0].price: must be a number of at least 0",
            file.display()
        )]
    );
    // A valid directory replaces the shipped catalog.
    std::fs::write(&file, "provider: aws\ncurrency: USD\nas_of: \"2026-11-01\"\nsource: ours\ndefault_region: us-east-1\nresources:\n  aws_eip:\n    - name: ip\n      unit: hour\n      price: 0.004\n").unwrap();
    let c = load(&text).unwrap();
    assert_eq!(c.pricing.entries.len(), 1);
    assert!(load(GOOD)
        .unwrap()
        .pricing
        .entries
        .contains_key("aws_instance"));
}

#[test]
fn drift_schedules_are_parsed_at_load_and_inherited_from_environments() {
    let text = format!(
        "{GOOD}  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n    drift_schedule: \"@daily\"\nenvironments:\n  - name: production\n    drift_schedule: \"0 */6 * * *\"\n    drift_mode: plan\n"
    );
    let c = load(&text).unwrap();
    let net = c.workspace("network").unwrap();
    assert_eq!(
        net.drift_schedule.as_ref().unwrap().expr,
        "0 */6 * * *",
        "inherited"
    );
    assert_eq!(net.drift_mode, crate::drift::DriftMode::Plan);
    assert_eq!(
        c.workspace("dns")
            .unwrap()
            .drift_schedule
            .as_ref()
            .unwrap()
            .expr,
        "@daily",
        "its own wins"
    );

    let bad = text
        .replace("\"@daily\"", "\"every day\"")
        .replace("\"0 */6 * * *\"", "\"61 * * * *\"");
    let m = messages(&bad);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m[0].starts_with(
            "gantry.yaml: environments[0].drift_schedule: `61 * * * *` is not a cron schedule"
        ),
        "{m:?}"
    );
    assert!(
        m[1].starts_with(
            "gantry.yaml: workspaces[1].drift_schedule: `every day` is not a cron schedule"
        ),
        "{m:?}"
    );
}

#[test]
fn drift_notifications_are_checked() {
    let text = format!(
        "{GOOD}    drift_notify: webhook\nenvironments:\n  - name: staging\n    drift_notify: pager\n"
    );
    assert_eq!(
        messages(&text),
        [
            "gantry.yaml: environments[0].drift_notify: unknown drift_notify `pager` (expected issue or webhook)",
            "gantry.yaml: workspaces[0].drift_notify: webhook needs drift_webhook_url (an http:// or https:// URL)",
        ]
    );
    let ok = format!(
        "{GOOD}    drift_notify: webhook\n    drift_webhook_url: https://hooks.example.com/x\n"
    );
    assert_eq!(
        load(&ok)
            .unwrap()
            .workspace("network")
            .unwrap()
            .drift_notify,
        Some(crate::drift::DriftNotify::Webhook(
            "https://hooks.example.com/x".into()
        ))
    );
}

#[test]
fn every_provider_kind_loads_with_its_own_settings() {
    let text = r#"listen: 127.0.0.1:8080
data_dir: ./.gantry
database_url: sqlite://./.gantry/gantry.db
api_token_env: GANTRY_API_TOKEN
providers:
  - id: gitlab
    kind: gitlab
    api_url: https://gitlab.example.com/gitlab/api/v4
    git_url: https://gitlab.example.com/gitlab/{repo}.git
    token_env: TOKEN
    webhook_secret_env: SECRET
  - id: bitbucket
    kind: bitbucket
    username: platform-bot
    token_env: TOKEN
    webhook_secret_env: SECRET
  - id: ado
    kind: azure_devops
    api_url: https://dev.azure.com/acme/
    token_env: TOKEN
    webhook_secret_env: SECRET
    webhook_user: gantry-hooks
workspaces:
  - name: a
    environment: production
    provider: gitlab
    repo: acme/platform/infra
  - name: b
    environment: production
    provider: bitbucket
    repo: acme/infra
  - name: c
    environment: production
    provider: ado
    repo: platform/infra
"#;
    let env = HashMap::from([("GANTRY_API_TOKEN", "api"), ("TOKEN", "t"), ("SECRET", "s")]);
    let config = Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
    .unwrap();
    let gitlab = config.provider("gitlab").unwrap();
    assert_eq!(gitlab.kind, ProviderKind::Gitlab);
    assert_eq!(
        gitlab.clone_url("acme/platform/infra"),
        "https://gitlab.example.com/gitlab/acme/platform/infra.git"
    );
    let bitbucket = config.provider("bitbucket").unwrap();
    assert_eq!(bitbucket.api_url, "https://api.bitbucket.org/2.0");
    assert_eq!(bitbucket.username.as_deref(), Some("platform-bot"));
    assert_eq!(
        bitbucket.clone_url("acme/infra"),
        "https://bitbucket.org/acme/infra.git"
    );
    let ado = config.provider("ado").unwrap();
    assert_eq!(ado.api_url, "https://dev.azure.com/acme");
    assert_eq!(ado.webhook_user.as_deref(), Some("gantry-hooks"));
    assert_eq!(
        ado.clone_url("platform/infra"),
        "https://dev.azure.com/acme/platform/_git/infra"
    );
    assert!(crate::vcs::Providers::from_config(&config).is_ok());
}

#[test]
fn provider_settings_are_checked_per_kind() {
    let text = r#"listen: 127.0.0.1:8080
data_dir: ./.gantry
database_url: sqlite://./.gantry/gantry.db
api_token_env: GANTRY_API_TOKEN
providers:
  - id: ado
    kind: azure_devops
    token_env: TOKEN
    webhook_secret_env: SECRET
  - id: gl
    kind: gitlab
    username: someone
    token_env: TOKEN
    webhook_secret_env: SECRET
    webhook_user: hooks
workspaces:
  - name: c
    environment: production
    provider: ado
    repo: acme/platform/infra
"#;
    let env = HashMap::from([("GANTRY_API_TOKEN", "api"), ("TOKEN", "t"), ("SECRET", "s")]);
    let errors = Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        errors,
        "gantry.yaml: providers[0].api_url: required for azure_devops: the organization URL, e.g. https://dev.azure.com/ORG\n\
         gantry.yaml: providers[0].webhook_user: required for azure_devops: the Basic auth user of the service hooks\n\
         gantry.yaml: providers[1].webhook_user: only azure_devops providers authenticate webhooks with a user\n\
         gantry.yaml: providers[1].username: only bitbucket providers take a username (for an app password or API token)\n\
         gantry.yaml: workspaces[0].repo: `acme/platform/infra` is not an Azure DevOps repository like project/repository"
    );
}
