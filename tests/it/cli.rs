//! The binary's subcommands.

use std::process::Command;

use crate::support::origin::{null_config, standard_files};
use crate::support::*;

fn gantry(_env: &TestEnv) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("GANTRY_API_TOKEN", API_TOKEN)
        .env("GITHUB_TOKEN", GITHUB_TOKEN)
        .env("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET);
    c
}

#[tokio::test]
async fn config_check_prints_every_error_and_fails() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.config_yaml(
        TestEnv::standard_workspaces(),
        2,
        "127.0.0.1:0",
        "terraform",
    );
    let path = env.write_config(&yaml);
    let out = gantry(&env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 providers, 3 workspaces)"));

    let bad = yaml
        .replace("dir: dns", "dir: ../../etc")
        .replace("concurrency: 2", "concurrency: 2\nlisten_addr: x");
    let path = env.write_config(&bad);
    let out = gantry(&env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .env_remove("GITHUB_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}: listen_addr: unknown key")),
        "{stderr}"
    );

    let bad = yaml.replace("dir: dns", "dir: ../../etc");
    let path = env.write_config(&bad);
    let out = gantry(&env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .env_remove("GITHUB_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "{file}: providers[0].token_env: environment variable GITHUB_TOKEN is not set\n\
             {file}: workspaces[2].dir: `../../etc` escapes the repository\n\
             2 error(s) in {file}\n"
        )
    );
    // serve refuses to start with the same messages.
    let out = gantry(&env)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("GITHUB_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), stderr);
}

#[tokio::test]
async fn config_check_lists_variables_by_scope_without_values() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.config_yaml(
        TestEnv::standard_workspaces(),
        2,
        "127.0.0.1:0",
        "terraform",
    ) + "variables:\n  - name: region\n    terraform_var: true\n    value: eu-west-9\nenvironments:\n  - name: production\n    variables:\n      - name: AWS_SECRET_ACCESS_KEY\n        from_env: PROD_RW_SECRET\n        phases: [apply]\n";
    let path = env.write_config(&yaml);
    let out = gantry(&env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("PROD_RW_SECRET", "prod-write-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "variables (names, phases and sources; values are never shown):\n  \
             account\n    TF_VAR_region [plan, apply, drift] (value)\n  \
             environment production\n    AWS_SECRET_ACCESS_KEY [apply] sensitive (from_env PROD_RW_SECRET)\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("prod-write-secret-value") && !stdout.contains("eu-west-9"));

    // A missing source is reported like every other error.
    let out = gantry(&env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{file}: environments[0].variables[0].from_env: PROD_RW_SECRET is not set\n1 error(s) in {file}\n",
            file = path.display()
        )
    );
}

#[tokio::test]
async fn plan_runs_a_local_dry_run_without_vcs_calls() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let mut files = standard_files();
    let base = env
        .origin
        .commit(&files, &[], "initial", &["refs/heads/main"]);
    files.insert(
        "dns/main.tf".into(),
        format!(
            "{}{}",
            null_config("dns-v2"),
            "resource \"null_resource\" \"extra\" {}\n"
        ),
    );
    env.origin
        .commit(&files, &[base], "feature", &["refs/heads/feature"]);
    let yaml = env.default_yaml();
    let path = env.write_config(&yaml);

    let out = gantry(&env)
        .args(["plan", "--workspace", "dns", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dns: Plan: 1 to add, 0 to change, 0 to destroy."),
        "{stdout}"
    );
    assert!(
        stdout.contains("Monthly cost: $0.00 → $0.00 ($0.00/mo); 1 resource not priced"),
        "{stdout}"
    );

    let out = gantry(&env)
        .args(["plan", "--workspace", "dns", "--ref", "feature", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("dns: Plan: 2 to add, 0 to change, 0 to destroy."));
    assert!(env.github.requests().is_empty());

    let out = gantry(&env)
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cost_estimate_prints_a_table_or_json_and_reports_bad_catalogs() {
    let plan = repo_root().join("tests/fixtures/plans/aws_mixed.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["cost", "estimate"])
        .arg(&plan)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("aws_instance.web[1]   create        $0.00  $30.37  +$30.37/mo"),
        "{table}"
    );
    assert!(
        table.contains("null_resource.marker  replace  not priced"),
        "{table}"
    );
    assert!(
        table.contains("Monthly cost: $56.03 → $76.74 (+$20.71/mo); 1 resource not priced"),
        "{table}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["cost", "estimate", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["delta_monthly_cost"], 20.71);
    assert_eq!(v["resources"].as_array().unwrap().len(), 4);
    assert_eq!(v["unpriced"][0]["address"], "null_resource.marker");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws.yaml"), "provider: aws\ncurrency: EUR\nas_of: x\nsource: x\ndefault_region: us-east-1\nresources: {}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["cost", "estimate", "--pricing-dir"])
        .arg(dir.path())
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}: currency: `EUR` is not supported (prices are USD)\n",
            dir.path().join("aws.yaml").display()
        )
    );
}

#[test]
fn policy_test_passes_on_the_shipped_policies_and_fails_on_a_broken_suite() {
    let bin = env!("CARGO_BIN_EXE_gantry");
    let out = Command::new(bin)
        .args(["policy", "test"])
        .arg(repo_root().join("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("8 passed, 0 failed\n"), "{stdout}");
    assert!(
        stdout.contains("PASS  data.terraform.test_untagged_resources_are_denied"),
        "{stdout}"
    );

    // A failing test (in a file named x.test.rego) and a passing one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package terraform\n\ndeny[\"no\"] { input.bad }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.test.rego"),
        "package terraform\n\ntest_bad_is_denied { deny[\"no\"] with input as data.mock.bad }\ntest_wrong { count(deny) == 1 with input as {} }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mock.json"),
        "{\"mock\": {\"bad\": {\"bad\": true}}}",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["policy", "test"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("PASS  data.terraform.test_bad_is_denied"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  data.terraform.test_wrong"),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");

    // A compile error fails the run and names the file.
    std::fs::write(
        dir.path().join("p.rego"),
        "package terraform\n\ndeny[\"no\"] { this is not rego }\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["policy", "test"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("error: {}", dir.path().join("p.rego").display())));
}

#[test]
fn policy_eval_prints_results_per_policy() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["policy", "eval", "--plan"])
        .arg(repo_root().join("tests/fixtures/plans/aws_mixed.json"))
        .arg("--policies")
        .arg(repo_root().join("policies/terraform"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soft failures do not fail the command: {stdout}"
    );
    assert!(
        stdout.contains("PASSED   instance_types (hard-mandatory)"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED   required_tags (soft-mandatory)\n         - aws_ebs_volume.data: missing required tags [\"owner\", \"team\"]"), "{stdout}");
    assert!(stdout.contains("policies: 1 failed (soft)"), "{stdout}");
}

/// `gantry config check` of `yaml`: exit code and everything it printed.
fn config_check(env: &TestEnv, yaml: &str) -> (Option<i32>, String) {
    let path = env.write_config(yaml);
    let out = gantry(env)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn config_check_says_which_sandbox_is_in_force() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let (code, text) = config_check(&env, &env.default_yaml());
    assert_eq!(code, Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("sandbox: "))
        .unwrap_or_else(|| panic!("no sandbox line:\n{text}"));
    assert!(line.starts_with("sandbox: on ("), "{line}");
    for layer in ["landlock", "no_new_privs", "no capabilities"] {
        assert!(line.contains(layer), "{layer} missing: {line}");
    }

    let off = env
        .default_yaml()
        .replace("runner:\n", "runner:\n  sandbox: \"off\"\n");
    let (code, text) = config_check(&env, &off);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("sandbox: off (runner.sandbox: off): terraform runs are NOT isolated"),
        "{text}"
    );

    let bad = env
        .default_yaml()
        .replace("runner:\n", "runner:\n  sandbox: maybe\n");
    let (code, text) = config_check(&env, &bad);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("runner.sandbox: `maybe` is not `on` or `off`"),
        "{text}"
    );
}
