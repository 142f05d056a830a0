use std::path::Path;

use serde_json::json;

use super::*;

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const HCL: &str = r#"
version = "v1"
policy "old_syntax" {
  enabled           = true
  enforcement_level = "hard-mandatory"
}
policy "new_syntax" {
  enabled           = true
  enforcement_level = "advisory"
}
policy "switched_off" {
  enabled           = false
  enforcement_level = "soft-mandatory"
}
"#;

fn plan_with(types: &[&str]) -> serde_json::Value {
    json!({"resource_changes": types.iter().enumerate().map(|(i, t)| json!({
        "address": format!("aws_instance.w{i}"), "mode": "managed", "type": "aws_instance", "name": format!("w{i}"),
        "change": {"actions": ["create"], "before": null, "after": {"instance_type": t}}
    })).collect::<Vec<_>>()})
}

fn set_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "scalr-policy.hcl", HCL);
    write(
        d.path(),
        "old_syntax.rego",
        "package terraform\n\ndeny[msg] {\n  r := input.tfplan.resource_changes[_]\n  r.change.after.instance_type == data.banned\n  msg := sprintf(\"%s uses %s\", [r.address, data.banned])\n}\n",
    );
    write(
        d.path(),
        "new_syntax/new_syntax.rego",
        "package terraform\n\ndeny contains msg if {\n  input.tfrun.cost_estimate.delta_monthly_cost > 10\n  msg := \"too expensive\"\n}\n",
    );
    write(d.path(), "banned.json", "{\"banned\": \"m5.4xlarge\"}");
    d
}

#[test]
fn pre_1_0_and_1_0_policies_evaluate_with_their_levels_and_data() {
    let d = set_dir();
    let set = PolicySet::load(d.path()).unwrap();
    assert_eq!(set.disabled, ["switched_off"]);
    let input = input(
        plan_with(&["t3.micro", "m5.4xlarge"]),
        json!({"cost_estimate": {"delta_monthly_cost": 50}}),
    );
    let results = set.evaluate(&input);
    assert_eq!(
        results,
        [
            PolicyResult {
                policy: "old_syntax".into(),
                enforcement_level: EnforcementLevel::HardMandatory,
                result: "failed",
                messages: vec!["aws_instance.w1 uses m5.4xlarge".into()],
            },
            PolicyResult {
                policy: "new_syntax".into(),
                enforcement_level: EnforcementLevel::Advisory,
                result: "failed",
                messages: vec!["too expensive".into()],
            },
        ]
    );
    assert_eq!(
        status_summary(&results).as_deref(),
        Some("policies: 2 failed (hard)")
    );
    let ok = set.evaluate(&super::input(
        plan_with(&["t3.micro"]),
        json!({"cost_estimate": {"delta_monthly_cost": 1}}),
    ));
    assert!(ok
        .iter()
        .all(|r| r.result == "passed" && r.messages.is_empty()));
    assert_eq!(status_summary(&ok), None);
}

#[test]
fn load_errors_name_the_file() {
    let d = set_dir();
    write(
        d.path(),
        "old_syntax.rego",
        "package terraform\n\ndeny[msg] {\n  this is not rego\n}\n",
    );
    let errors = PolicySet::load(d.path()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].file,
        d.path().join("old_syntax.rego").display().to_string()
    );

    let d = set_dir();
    write(
        d.path(),
        "scalr-policy.hcl",
        &HCL.replace("\"advisory\"", "\"strict\"")
            .replace("\"switched_off\"", "\"missing\"")
            .replace("enabled           = false", "enabled = true"),
    );
    let errors: Vec<String> = PolicySet::load(d.path())
        .unwrap_err()
        .iter()
        .map(|e| e.message.clone())
        .collect();
    assert_eq!(
        errors,
        [
            "policy `new_syntax`: unknown enforcement_level `strict` (expected advisory, soft-mandatory or hard-mandatory)",
            "policy `missing`: neither missing.rego nor missing/missing.rego exists",
        ]
    );
}
