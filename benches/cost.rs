//! Cost estimation speed: a 5,000-resource plan JSON (goal: under 50 ms).
//! Run with `scripts/bench-cost`; prints the median of repeated estimates.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn plan(resources: usize) -> Value {
    let types = ["t3.micro", "t3.medium", "m5.large", "c5.large"];
    let changes: Vec<Value> = (0..resources)
        .map(|i| {
            let (ty, before, after, actions) = match i % 5 {
                0 => ("aws_ebs_volume", Value::Null, json!({"size": 100 + i % 50, "type": "gp3"}), vec!["create"]),
                1 => ("null_resource", Value::Null, json!({"triggers": {"i": i.to_string()}}), vec!["create"]),
                2 => ("aws_instance", json!({"instance_type": "t3.micro"}), json!({"instance_type": types[i % 4]}), vec!["update"]),
                _ => ("aws_instance", Value::Null, json!({"instance_type": types[i % 4], "ami": "ami-0c55b159cbfafe1f0"}), vec!["create"]),
            };
            json!({
                "address": format!("{ty}.r[{i}]"), "mode": "managed", "type": ty, "name": "r", "index": i,
                "provider_name": "registry.terraform.io/hashicorp/aws",
                "change": {"actions": actions, "before": before, "after": after, "after_unknown": {"id": true},
                           "before_sensitive": {}, "after_sensitive": {}}
            })
        })
        .collect();
    json!({
        "format_version": "0.2", "terraform_version": "1.0.3",
        "resource_changes": changes,
        "configuration": {"provider_config": {"aws": {"name": "aws", "expressions": {"region": {"constant_value": "us-east-1"}}}},
                          "root_module": {"resources": []}}
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let catalog = gantry::cost::Catalog::shipped();
    let doc = plan(5_000);
    let text = serde_json::to_string(&doc).unwrap();
    let mut estimate_only = Vec::new();
    let mut parse_and_estimate = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let e = gantry::cost::estimate(&doc, &catalog);
        estimate_only.push(start.elapsed());
        assert_eq!(e.resources.len() + e.unpriced.len(), 5_000);
        let start = Instant::now();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        std::hint::black_box(gantry::cost::estimate(&parsed, &catalog));
        parse_and_estimate.push(start.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "cost estimate benchmark (5,000 resources, {} KiB of plan JSON, median of 21)",
        text.len() / 1024
    );
    println!(
        "  estimate:                 {:>7.2} ms  (goal: < 50 ms)",
        median(estimate_only)
    );
    println!(
        "  parse JSON + estimate:    {:>7.2} ms",
        median(parse_and_estimate)
    );
}
