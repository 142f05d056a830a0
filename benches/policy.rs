//! Policy evaluation speed: 30 policies on a 1,000-resource plan (goal: under
//! 50 ms in total). Policies are compiled once; each evaluation reuses them.
//! Run with `scripts/bench-policy`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn plan(resources: usize) -> Value {
    let types = ["t3.micro", "t3.medium", "m5.large", "c5.large"];
    json!({
        "format_version": "0.2",
        "resource_changes": (0..resources).map(|i| json!({
            "address": format!("aws_instance.r[{i}]"), "mode": "managed", "type": "aws_instance", "name": "r", "index": i,
            "change": {"actions": ["create"], "before": null,
                       "after": {"instance_type": types[i % 4], "tags": {"owner": "platform", "team": format!("t{}", i % 7)}}}
        })).collect::<Vec<_>>()
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut hcl = String::from("version = \"v1\"\n");
    for i in 0..30 {
        let level = ["advisory", "soft-mandatory", "hard-mandatory"][i % 3];
        hcl.push_str(&format!(
            "policy \"p{i}\" {{\n  enabled = true\n  enforcement_level = \"{level}\"\n}}\n"
        ));
        let rego = match i % 3 {
            0 => format!(
                "package terraform\n\ndeny[msg] {{\n  r := input.tfplan.resource_changes[_]\n  r.type == \"aws_instance\"\n  r.change.after.instance_type == \"x{i}.huge\"\n  msg := sprintf(\"%s is too big\", [r.address])\n}}\n"
            ),
            1 => format!(
                "package terraform\n\ndeny contains msg if {{\n  some r in input.tfplan.resource_changes\n  not r.change.after.tags.owner\n  msg := sprintf(\"%s: no owner ({i})\", [r.address])\n}}\n"
            ),
            _ => format!(
                "package terraform\n\ndeny contains msg if {{\n  input.tfrun.cost_estimate.delta_monthly_cost > {}\n  msg := \"over budget\"\n}}\n",
                100_000 + i
            ),
        };
        std::fs::write(dir.path().join(format!("p{i}.rego")), rego).unwrap();
    }
    std::fs::write(dir.path().join("scalr-policy.hcl"), hcl).unwrap();
    let started = Instant::now();
    let set = gantry::policy::PolicySet::load(dir.path()).unwrap();
    let load = started.elapsed();
    let input = gantry::policy::input(
        plan(1_000),
        json!({"cost_estimate": {"delta_monthly_cost": 12.5}}),
    );
    let mut times = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let results = set.evaluate(&input);
        times.push(start.elapsed());
        assert_eq!(results.len(), 30);
        assert!(results.iter().all(|r| r.result == "passed"), "{results:?}");
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    println!("policy benchmark (30 policies, 1,000-resource plan, median of 15)");
    println!(
        "  load and compile 30 policies (once):  {:>8.2} ms",
        load.as_secs_f64() * 1e3
    );
    println!(
        "  evaluate all 30 on the plan:          {:>8.2} ms  (goal: < 50 ms)",
        median.as_secs_f64() * 1e3
    );
}
