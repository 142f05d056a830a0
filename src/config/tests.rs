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
    assert_eq!(net.drift_mode, drift::DriftMode::Plan);
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
        Some(drift::DriftNotify::Webhook(
            "https://hooks.example.com/x".into()
        ))
    );
}

/// A configuration with a provider of each kind but GitHub's, with their own
/// settings (the `vcs` tests build their clients from it).
pub(crate) fn every_provider_kind() -> Config {
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
    Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
    .unwrap()
}

#[test]
fn every_provider_kind_loads_with_its_own_settings() {
    let config = every_provider_kind();
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

/// GOOD plus a staging workspace, environments and variables at every scope.
fn with_variables(account: &str, environments: &str, network: &str, dns: &str) -> String {
    let text = GOOD.replace(
        "    trigger_patterns: [\"modules/**\"]\n",
        &format!("    trigger_patterns: [\"modules/**\"]\n{network}"),
    );
    format!(
        "{text}  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n{dns}  - name: sandbox\n    environment: staging\n    provider: github\n    repo: acme/infra\n    dir: sandbox\nvariables:\n{account}environments:\n{environments}"
    )
}

fn vars_env() -> HashMap<&'static str, &'static str> {
    let mut env = env();
    env.extend([
        ("PROD_RO_KEY_ID", "AKIAPRODREADONLY"),
        ("PROD_RO_SECRET", "prod-read-only-secret"),
        ("PROD_RW_KEY_ID", "AKIAPRODWRITE"),
        ("PROD_RW_SECRET", "prod-write-secret"),
        ("STAGING_KEY_ID", "AKIASTAGING"),
        ("STAGING_SECRET", "staging-secret-123"),
        ("DNS_TOKEN", "dns-api-token-456"),
        ("AWS_REGION", "eu-west-1"),
        ("EMPTY", ""),
    ]);
    env
}

fn load_vars(text: &str) -> Result<Config, ConfigErrors> {
    let env = vars_env();
    Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
        env.get(k).map(|v| v.to_string())
    })
}

fn var_messages(text: &str) -> Vec<String> {
    load_vars(text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

/// `name=value (scope)` for each variable of a run, sorted by name.
fn resolved(c: &Config, workspace: &str, phase: Phase) -> Vec<String> {
    c.variables_for(workspace, phase)
        .iter()
        .map(|v| format!("{}={} ({})", v.name, v.value.expose(), v.scope))
        .collect()
}

const SCOPED: (&str, &str, &str, &str) = (
    // account
    "  - name: region\n    terraform_var: true\n    value: eu-west-1\n  - name: AWS_ACCESS_KEY_ID\n    value: account-default-key\n  - name: TF_VAR_team\n    value: platform\n",
    // environments
    "  - name: production\n    variables:\n      - name: AWS_ACCESS_KEY_ID\n        from_env: PROD_RO_KEY_ID\n        phases: [plan, drift]\n      - name: AWS_SECRET_ACCESS_KEY\n        from_env: PROD_RO_SECRET\n        phases: [plan, drift]\n      - name: AWS_ACCESS_KEY_ID\n        from_env: PROD_RW_KEY_ID\n        phases: [apply]\n      - name: AWS_SECRET_ACCESS_KEY\n        from_env: PROD_RW_SECRET\n        phases: [apply]\n  - name: staging\n    variables:\n      - name: AWS_ACCESS_KEY_ID\n        from_env: STAGING_KEY_ID\n      - name: AWS_SECRET_ACCESS_KEY\n        from_env: STAGING_SECRET\n",
    // workspace network
    "    variables:\n      - name: region\n        terraform_var: true\n        value: us-east-1\n",
    // workspace dns
    "    variables:\n      - name: DNS_TOKEN\n        from_env: DNS_TOKEN\n        phases: [apply]\n      - name: AWS_SECRET_ACCESS_KEY\n        from_env: PROD_RW_SECRET\n        phases: [apply]\n",
);

fn scoped() -> Config {
    let (a, e, n, d) = SCOPED;
    load_vars(&with_variables(a, e, n, d)).unwrap()
}

#[test]
fn variables_are_inherited_downwards_and_the_nearer_scope_wins() {
    let c = scoped();
    assert_eq!(
        resolved(&c, "network", Phase::Plan),
        [
            "AWS_ACCESS_KEY_ID=AKIAPRODREADONLY (environment production)",
            "AWS_SECRET_ACCESS_KEY=prod-read-only-secret (environment production)",
            "TF_VAR_region=us-east-1 (workspace network)",
            "TF_VAR_team=platform (account)",
        ]
    );
    assert_eq!(
        resolved(&c, "network", Phase::Apply),
        [
            "AWS_ACCESS_KEY_ID=AKIAPRODWRITE (environment production)",
            "AWS_SECRET_ACCESS_KEY=prod-write-secret (environment production)",
            "TF_VAR_region=us-east-1 (workspace network)",
            "TF_VAR_team=platform (account)",
        ]
    );
    // An environment without variables of a name inherits the account's.
    assert_eq!(
        resolved(&c, "sandbox", Phase::Drift),
        [
            "AWS_ACCESS_KEY_ID=AKIASTAGING (environment staging)",
            "AWS_SECRET_ACCESS_KEY=staging-secret-123 (environment staging)",
            "TF_VAR_region=eu-west-1 (account)",
            "TF_VAR_team=platform (account)",
        ]
    );
    // An unknown workspace gets the account's only.
    assert_eq!(
        resolved(&c, "gone", Phase::Plan),
        [
            "AWS_ACCESS_KEY_ID=account-default-key (account)",
            "TF_VAR_region=eu-west-1 (account)",
            "TF_VAR_team=platform (account)",
        ]
    );
}

#[test]
fn a_nearer_definition_replaces_a_name_whole_phases_included() {
    let c = scoped();
    // dns redefines AWS_SECRET_ACCESS_KEY for apply only: its plans and drift
    // checks get no secret key at all, not the environment's read-only one.
    let plan = resolved(&c, "dns", Phase::Plan);
    assert_eq!(
        plan,
        [
            "AWS_ACCESS_KEY_ID=AKIAPRODREADONLY (environment production)",
            "TF_VAR_region=eu-west-1 (account)",
            "TF_VAR_team=platform (account)",
        ]
    );
    assert_eq!(resolved(&c, "dns", Phase::Drift), plan);
    assert_eq!(
        resolved(&c, "dns", Phase::Apply),
        [
            "AWS_ACCESS_KEY_ID=AKIAPRODWRITE (environment production)",
            "AWS_SECRET_ACCESS_KEY=prod-write-secret (workspace dns)",
            "DNS_TOKEN=dns-api-token-456 (workspace dns)",
            "TF_VAR_region=eu-west-1 (account)",
            "TF_VAR_team=platform (account)",
        ]
    );
}

#[test]
fn plans_never_get_apply_only_variables() {
    let c = scoped();
    for ws in ["network", "dns", "sandbox", "unknown"] {
        for phase in [Phase::Plan, Phase::Drift] {
            let got = c.variables_for(ws, phase);
            for v in &got {
                assert!(
                    !["AKIAPRODWRITE", "prod-write-secret", "dns-api-token-456"]
                        .contains(&v.value.expose()),
                    "{ws} {phase} got the apply-only {}",
                    v.name
                );
            }
        }
    }
    assert!(c
        .variables_for("dns", Phase::Apply)
        .iter()
        .any(|v| v.name == "DNS_TOKEN"));
}

#[test]
fn a_workspace_never_gets_another_workspaces_or_environments_variables() {
    let c = scoped();
    for phase in Phase::ALL {
        let network = c.variables_for("network", phase);
        assert!(!network.iter().any(|v| v.name == "DNS_TOKEN"), "{phase}");
        assert!(
            !network
                .iter()
                .any(|v| v.value.expose().contains("STAGING")
                    || v.value.expose().contains("staging")),
            "{phase}"
        );
        let sandbox = c.variables_for("sandbox", phase);
        assert!(
            !sandbox
                .iter()
                .any(|v| v.value.expose().to_lowercase().contains("prod")
                    || v.value.expose() == "us-east-1"
                    || v.name == "DNS_TOKEN"),
            "{phase}: {sandbox:?}"
        );
    }
}

#[test]
fn sensitivity_defaults_by_source_and_every_sensitive_value_is_redacted() {
    let c = scoped();
    let plan = c.variables_for("network", Phase::Plan);
    let by_name = |n: &str| plan.iter().find(|v| v.name == n).unwrap();
    assert!(by_name("AWS_SECRET_ACCESS_KEY").is_sensitive(), "from_env");
    assert!(!by_name("TF_VAR_region").is_sensitive(), "literal");
    assert_eq!(
        format!("{:?}", by_name("AWS_SECRET_ACCESS_KEY").value),
        "Sensitive([redacted])"
    );
    assert!(!format!("{c:?}").contains("prod-write-secret"));

    let redactor = crate::redact::Redactor::new(&c.secret_values());
    assert_eq!(
        redactor.redact(
            "prod-write-secret dns-api-token-456 staging-secret-123 AKIAPRODREADONLY us-east-1"
        ),
        "*** *** *** *** us-east-1"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "file-secret-789\n").unwrap();
    let text = with_variables(
        &format!(
            "  - name: FROM_FILE\n    from_file: \"{}\"\n  - name: REGION_NAME\n    from_env: AWS_REGION\n    sensitive: false\n  - name: LITERAL_SECRET\n    value: literal-secret-000\n    sensitive: true\n  - name: COUNT\n    value: 3\n  - name: ENABLED\n    value: true\n",
            file.display()
        ),
        "  - name: production\n",
        "",
        "",
    );
    let c = load_vars(&text).unwrap();
    let vars = c.variables_for("network", Phase::Apply);
    let shown: Vec<String> = vars
        .iter()
        .map(|v| format!("{}={} {}", v.name, v.value.expose(), v.is_sensitive()))
        .collect();
    assert_eq!(
        shown,
        [
            "COUNT=3 false",
            "ENABLED=true false",
            "FROM_FILE=file-secret-789 true",
            "LITERAL_SECRET=literal-secret-000 true",
            "REGION_NAME=eu-west-1 false",
        ]
    );
}

#[test]
fn pass_env_and_terraform_env_are_account_scope_variables() {
    let text = GOOD.replace(
        "  bin: terraform",
        "  bin: terraform\n  pass_env: [AWS_REGION, PROD_RO_SECRET, NOT_EXPORTED]\n  env:\n    TF_VAR_team: platform\n    VAULT_TOKEN: vault-token-1234",
    ) + "    variables:\n      - name: AWS_REGION\n        value: us-east-2\n        phases: [apply]\n";
    let c = load_vars(&text).unwrap();
    let account: Vec<String> = c
        .variables
        .account
        .iter()
        .map(|v| {
            format!(
                "{} {:?} {} {}",
                v.name,
                v.phases,
                v.value.is_sensitive(),
                v.key
            )
        })
        .collect();
    assert_eq!(
        account,
        [
            "AWS_REGION [plan, apply, drift] false terraform.pass_env[0]",
            "PROD_RO_SECRET [plan, apply, drift] true terraform.pass_env[1]",
            "TF_VAR_team [plan, apply, drift] false terraform.env.TF_VAR_team",
            "VAULT_TOKEN [plan, apply, drift] true terraform.env.VAULT_TOKEN",
        ]
    );
    // As before, a pass_env name the daemon does not have is skipped.
    assert_eq!(c.variables.unset_pass_env, ["NOT_EXPORTED"]);
    // The workspace's own AWS_REGION (apply only) replaces the account's.
    assert_eq!(
        resolved(&c, "network", Phase::Plan),
        [
            "PROD_RO_SECRET=prod-read-only-secret (account)",
            "TF_VAR_team=platform (account)",
            "VAULT_TOKEN=vault-token-1234 (account)",
        ]
    );
    assert_eq!(
        resolved(&c, "network", Phase::Apply)[0],
        "AWS_REGION=us-east-2 (workspace network)"
    );
    let summary = c.variables.summary().join("\n");
    assert_eq!(
        summary,
        "  account\n    AWS_REGION [plan, apply, drift] (terraform.pass_env)\n    PROD_RO_SECRET [plan, apply, drift] sensitive (terraform.pass_env)\n    TF_VAR_team [plan, apply, drift] (terraform.env)\n    VAULT_TOKEN [plan, apply, drift] sensitive (terraform.env)\n  workspace network\n    AWS_REGION [apply] (value)\n  terraform.pass_env NOT_EXPORTED: not set in this environment, not passed"
    );
    for value in [
        "eu-west-1",
        "prod-read-only-secret",
        "platform",
        "vault-token",
        "us-east-2",
    ] {
        assert!(!summary.contains(value), "{value} in the summary");
    }
}

#[test]
fn variable_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let account = format!(
        "  - name: A\n    from_env: PROD_RO_SECRET\n    phases: [plan, aply]\n  - name: B\n    from_env: AWS_SECRET_ACCESS_KEY\n  - name: C\n    from_file: \"{}\"\n  - name: D\n    from_env: PROD_RO_SECRET\n    value: x\n  - name: E\n  - name: F\n    value: x\n    phases: []\n  - name: G\n    from_env: EMPTY\n  - name: H\n    from_file: \"{}\"\n  - name: I\n    value: [a, b]\n",
        missing.display(),
        empty.display()
    );
    let environments = "  - name: production\n    variables:\n      - name: AWS_ACCESS_KEY_ID\n        from_env: PROD_RO_KEY_ID\n        phases: [plan, drift]\n      - name: AWS_ACCESS_KEY_ID\n        from_env: PROD_RW_KEY_ID\n        phases: [apply, drift]\n      - name: PATH\n        value: /tmp\n      - name: TF_CLI_ARGS_apply\n        value: -target=x\n      - name: TF_CLI_CONFIG_FILE\n        value: /tmp/rc\n";
    let network = "    variables:\n      - name: STOLEN\n        from_env: GITHUB_TOKEN\n      - name: 1BAD\n        value: x\n      - name: TF_VAR_region\n        terraform_var: true\n        value: x\n      - name: bad name\n        terraform_var: true\n        value: x\n";
    let m = var_messages(&with_variables(&account, environments, network, ""));
    assert_eq!(
        m,
        [
            "gantry.yaml: variables[0].phases[1]: unknown phase `aply` (expected plan, apply or drift)".to_string(),
            "gantry.yaml: variables[1].from_env: AWS_SECRET_ACCESS_KEY is not set".to_string(),
            format!("gantry.yaml: variables[2].from_file: cannot read `{}`: No such file or directory (os error 2)", missing.display()),
            "gantry.yaml: variables[3]: set exactly one of from_env, from_file and value (found from_env and value)".to_string(),
            "gantry.yaml: variables[4]: set one of from_env, from_file or value".to_string(),
            "gantry.yaml: variables[5].phases: name at least one phase (plan, apply, drift), or leave phases out for all".to_string(),
            "gantry.yaml: variables[6].from_env: EMPTY is empty".to_string(),
            format!("gantry.yaml: variables[7].from_file: `{}` is empty", empty.display()),
            "gantry.yaml: variables[8].value: must be a string, number or boolean (write a list or map for a terraform variable as a string, e.g. '[\"a\", \"b\"]')".to_string(),
            "gantry.yaml: environments[0].variables[2].name: PATH is set by gantry for every terraform run and cannot be replaced".to_string(),
            "gantry.yaml: environments[0].variables[3].name: TF_CLI_ARGS_apply is set by gantry for every terraform run and cannot be replaced".to_string(),
            "gantry.yaml: environments[0].variables[4].name: TF_CLI_CONFIG_FILE is set by gantry for every terraform run; use terraform.cli_config_file".to_string(),
            "gantry.yaml: environments[0].variables[1].name: duplicate variable AWS_ACCESS_KEY_ID for drift (also at environments[0].variables[0]); one scope may define a name again only for other phases".to_string(),
            "gantry.yaml: workspaces[0].variables[0].from_env: GITHUB_TOKEN holds one of gantry's own secrets and is never passed to terraform".to_string(),
            "gantry.yaml: workspaces[0].variables[1].name: `1BAD` is not a valid environment variable name (letters, digits, `_`; not starting with a digit); for a terraform variable set terraform_var: true".to_string(),
            "gantry.yaml: workspaces[0].variables[2].name: with terraform_var: true give the terraform variable's own name (`region`); gantry adds TF_VAR_".to_string(),
            "gantry.yaml: workspaces[0].variables[3].name: `bad name` is not a valid terraform variable name (letters, digits, `_`, `-`; starting with a letter or `_`)".to_string(),
        ]
    );
}

#[test]
fn duplicates_and_reserved_names_are_checked_for_pass_env_and_env_too() {
    let text = GOOD.replace(
        "  bin: terraform",
        "  bin: terraform\n  pass_env: [AWS_REGION, HOME]\n  env:\n    AWS_REGION: eu-west-1",
    ) + "variables:\n  - name: TF_VAR_x\n    value: a\n  - name: x\n    terraform_var: true\n    value: b\n    phases: [plan]\n";
    assert_eq!(
        var_messages(&text),
        [
            "gantry.yaml: terraform.pass_env[1]: HOME is set by gantry for every terraform run and cannot be replaced",
            "gantry.yaml: terraform.env.AWS_REGION: duplicate variable AWS_REGION for plan, apply, drift (also at terraform.pass_env[0]); one scope may define a name again only for other phases",
            "gantry.yaml: variables[1].name: duplicate variable TF_VAR_x for plan (also at variables[0]); one scope may define a name again only for other phases",
        ]
    );
}

#[test]
fn a_github_app_key_file_is_never_a_variable() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    std::fs::write(&key, "not read: refused first").unwrap();
    let text = GOOD.replace(
        "    token_env: GITHUB_TOKEN\n",
        &format!(
            "    app_id: 1\n    private_key_file: \"{}\"\n",
            key.display()
        ),
    ) + &format!(
        "variables:\n  - name: KEY\n    from_file: \"{}/./app.pem\"\n",
        dir.path().display()
    );
    let m = var_messages(&text);
    assert!(
        m.iter().any(|e| e
            == &format!("gantry.yaml: variables[0].from_file: `{}/./app.pem` holds one of gantry's own secrets (a GitHub App key) and is never passed to terraform", dir.path().display())),
        "{m:?}"
    );
}

#[test]
fn the_readme_credentials_example_is_valid_and_splits_by_phase() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Credentials").nth(1).unwrap();
    let block = section.split("```yaml\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    // Its account and environment scopes; GOOD has the workspace.
    let scopes = block.split("workspaces:\n").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("rw-secret");
    std::fs::write(&secret, "prod-rw-secret-from-file\n").unwrap();
    let scopes = scopes.replace(
        "/run/secrets/prod-rw-aws-secret-access-key",
        &secret.display().to_string(),
    );
    let env = HashMap::from([
        ("GANTRY_API_TOKEN", "api-token-123"),
        ("GITHUB_TOKEN", "ghp_token_123"),
        ("GITHUB_WEBHOOK_SECRET", "webhook-secret"),
        ("PROD_RO_AWS_ACCESS_KEY_ID", "AKIARO"),
        ("PROD_RO_AWS_SECRET_ACCESS_KEY", "prod-ro-secret"),
        ("PROD_RW_AWS_ACCESS_KEY_ID", "AKIARW"),
        ("STAGING_AWS_ACCESS_KEY_ID", "AKIASTG"),
        ("STAGING_AWS_SECRET_ACCESS_KEY", "staging-secret"),
    ]);
    let c = Config::from_yaml(Path::new("gantry.yaml"), &format!("{GOOD}{scopes}"), &|k| {
        env.get(k).map(|v| v.to_string())
    })
    .unwrap();
    assert_eq!(
        resolved(&c, "network", Phase::Plan),
        [
            "AWS_ACCESS_KEY_ID=AKIARO (environment production)",
            "AWS_REGION=eu-west-1 (account)",
            "AWS_SECRET_ACCESS_KEY=prod-ro-secret (environment production)",
        ]
    );
    assert_eq!(
        resolved(&c, "network", Phase::Drift),
        resolved(&c, "network", Phase::Plan)
    );
    assert_eq!(
        resolved(&c, "network", Phase::Apply),
        [
            "AWS_ACCESS_KEY_ID=AKIARW (environment production)",
            "AWS_REGION=eu-west-1 (account)",
            "AWS_SECRET_ACCESS_KEY=prod-rw-secret-from-file (environment production)",
        ]
    );
}

#[test]
fn a_misspelt_variable_key_is_an_unknown_key() {
    let text = format!("{GOOD}variables:\n  - name: A\n    value: x\n    phase: [plan]\n");
    assert_eq!(
        messages(&text),
        ["gantry.yaml: variables[0].phase: unknown key"]
    );
}

#[test]
fn shutdown_grace_defaults_to_30_minutes_and_is_checked() {
    let d = std::time::Duration::from_secs;
    assert_eq!(load(GOOD).unwrap().shutdown_grace, d(30 * 60));
    let text = format!("{GOOD}shutdown_grace: 90s\n");
    assert_eq!(load(&text).unwrap().shutdown_grace, d(90));
    let text = format!("{GOOD}shutdown_grace: soon\n");
    let errors = messages(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("gantry.yaml: shutdown_grace: `soon` is not a duration like 30m or 1h"),
        "{errors:?}"
    );
}

#[test]
fn the_queue_lease_is_checked_and_the_default_node_id_is_unique_per_process() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.queue.lease, DEFAULT_LEASE);
    // Host name plus a suffix, the same for every load in this process (reloads).
    assert_eq!(c.node_id, load(GOOD).unwrap().node_id);
    let (_, suffix) = c.node_id.rsplit_once('-').unwrap();
    assert_eq!(suffix.len(), 8, "{}", c.node_id);
    let with = |lease: &str| format!("{GOOD}queue:\n  lease: {lease}\n");
    assert_eq!(
        load(&with("5s")).unwrap().queue.lease,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        messages(&with("soon")),
        ["gantry.yaml: queue.lease: `soon` is not a duration like 30m or 1h: expected number at 0"]
    );
    assert_eq!(
        messages(&with("500ms")),
        ["gantry.yaml: queue.lease: `500ms` must be between 1s and 1h"]
    );
    let explicit = load(&format!("{GOOD}node_id: gantry-1\n")).unwrap();
    assert_eq!(explicit.node_id, "gantry-1");
}

#[test]
fn retention_has_defaults_and_refuses_zero() {
    let c = load(GOOD).unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        c.retention,
        RetentionConfig {
            plan_files: 14 * day,
            logs: 90 * day,
            state_versions: 100,
            events: 30 * day,
        }
    );
    let c = load(&format!(
        "{GOOD}retention:\n  plan_files_days: 3\n  state_versions: 5\n"
    ))
    .unwrap();
    assert_eq!(
        (c.retention.plan_files, c.retention.state_versions),
        (3 * day, 5)
    );
    let errors = messages(&format!("{GOOD}retention:\n  logs_days: 0\n"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("retention.logs_days") && e.contains("at least 1")),
        "{errors:?}"
    );
    let errors = messages(&format!("{GOOD}retention:\n  keep: 1\n"));
    assert!(
        errors.iter().any(|e| e.contains("retention.keep")),
        "{errors:?}"
    );
}

#[test]
fn agent_pools_are_validated_and_a_workspace_s_own_pool_wins() {
    let pools = "agent_pools:\n  - name: blue\n    token_env: BLUE_TOKEN\n  - name: green\n    token_env: GREEN_TOKEN\n";
    let env = HashMap::from([
        ("GANTRY_API_TOKEN", "api-token-123"),
        ("GITHUB_TOKEN", "ghp_token_123"),
        ("GITHUB_WEBHOOK_SECRET", "webhook-secret"),
        ("BLUE_TOKEN", "blue-pool-token-0123456789"),
        ("GREEN_TOKEN", "short"),
    ]);
    let load_with = |text: &str| {
        Config::from_yaml(Path::new("gantry.yaml"), text, &|k| {
            env.get(k).map(|v| v.to_string())
        })
    };
    let text = format!(
        "{pools}environments:\n  - name: production\n    agent_pool: blue\n{}",
        GOOD.replace(
            "    trigger_patterns:",
            "    agent_pool: nowhere\n    trigger_patterns:"
        )
    );
    let errors: Vec<String> = load_with(&text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("agent_pools[1].token_env")
                && e.contains("GREEN_TOKEN is too short")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("workspaces[0].agent_pool")
            && e.contains("unknown agent pool `nowhere`")),
        "{errors:?}"
    );
    let dup = format!("{pools}  - name: blue\n    token_env: BLUE_TOKEN\n{GOOD}")
        .replace("GREEN_TOKEN", "BLUE_TOKEN");
    let errors = load_with(&dup).unwrap_err().to_string();
    assert!(errors.contains("agent_pools[2].name"), "{errors}");
    assert!(errors.contains("duplicate agent pool `blue`"), "{errors}");

    // Inherited from the environment; the token is a secret to redact.
    let ok = format!(
        "agent_pools:\n  - name: blue\n    token_env: BLUE_TOKEN\nenvironments:\n  - name: production\n    agent_pool: blue\n{GOOD}"
    );
    let c = load_with(&ok).unwrap();
    assert_eq!(
        c.workspace("network").unwrap().agent_pool.as_deref(),
        Some("blue")
    );
    assert!(c.agent_pool("blue").is_some());
    let secrets: Vec<String> = c
        .secret_values()
        .iter()
        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string())
        .collect();
    assert!(secrets.contains(&"blue-pool-token-0123456789".to_string()));
    let unset = ok.replace("BLUE_TOKEN", "UNSET_TOKEN");
    let errors = load_with(&unset).unwrap_err().to_string();
    assert!(
        errors.contains("agent_pools[0].token_env") && errors.contains("UNSET_TOKEN is not set"),
        "{errors}"
    );
}
