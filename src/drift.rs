//! Drift detection: a drift check plans the tracked branch head without
//! applying (`plan -refresh-only -detailed-exitcode` by default: changes made
//! outside Terraform; `plan` mode also reports unapplied configuration) and
//! records a report of what differs.
//!
//! Checks run on demand (`POST /api/workspaces/{name}/drift-check`,
//! `gantry drift run`) and on each workspace's schedule. The settings that say
//! how, when and where to report (mode, schedule, notify) are configuration
//! (`config::drift`), re-exported here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workspace's drift settings are configuration, parsed at load.
pub use crate::config::drift::{DriftMode, DriftNotify, DriftSchedule};

/// One resource that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftedResource {
    pub address: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub actions: Vec<String>,
    /// Top-level attributes whose values differ.
    pub changed_attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub drifted: bool,
    pub mode: DriftMode,
    pub resources: Vec<DriftedResource>,
}

impl crate::store::DriftRecord for DriftReport {
    fn drifted(&self) -> bool {
        self.drifted
    }
}

fn changed_attributes(change: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let before = change
        .get("before")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let after = change
        .get("after")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut keys: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn resources(list: Option<&Value>, skip_no_op: bool) -> Vec<DriftedResource> {
    list.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.get("mode").and_then(Value::as_str) != Some("data"))
        .filter_map(|r| {
            let change = r.get("change")?;
            let actions: Vec<String> = change
                .get("actions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if skip_no_op && actions.iter().all(|a| a == "no-op" || a == "read") {
                return None;
            }
            Some(DriftedResource {
                address: r
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                resource_type: r
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                actions,
                changed_attributes: changed_attributes(change),
            })
        })
        .collect()
}

/// The report of a drift plan (`terraform show -json`): `resource_drift` for
/// changes outside Terraform, and in `plan` mode the planned changes too.
pub fn report(plan: &Value, mode: DriftMode, exit_changes: bool) -> DriftReport {
    let mut found = resources(plan.get("resource_drift"), false);
    if mode == DriftMode::Plan {
        for r in resources(plan.get("resource_changes"), true) {
            if !found.iter().any(|f| f.address == r.address) {
                found.push(r);
            }
        }
    }
    DriftReport {
        drifted: exit_changes || !found.is_empty(),
        mode,
        resources: found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_drift_and_planned_changes_by_mode() {
        let plan = json!({
            "resource_drift": [{
                "address": "aws_instance.web", "mode": "managed", "type": "aws_instance",
                "change": {"actions": ["update"], "before": {"instance_type": "t3.micro", "tags": {"a": "1"}},
                           "after": {"instance_type": "t3.large", "tags": {"a": "1"}}}
            }],
            "resource_changes": [
                {"address": "null_resource.x", "mode": "managed", "type": "null_resource",
                 "change": {"actions": ["delete", "create"], "before": {"triggers": {"v": "1"}}, "after": {"triggers": {"v": "2"}}}},
                {"address": "null_resource.same", "mode": "managed", "type": "null_resource",
                 "change": {"actions": ["no-op"], "before": {}, "after": {}}}
            ]
        });
        let r = report(&plan, DriftMode::RefreshOnly, true);
        assert!(r.drifted);
        assert_eq!(r.resources.len(), 1);
        assert_eq!(r.resources[0].changed_attributes, ["instance_type"]);
        let r = report(&plan, DriftMode::Plan, true);
        let addrs: Vec<&str> = r.resources.iter().map(|x| x.address.as_str()).collect();
        assert_eq!(addrs, ["aws_instance.web", "null_resource.x"]);
        assert_eq!(r.resources[1].changed_attributes, ["triggers"]);
        let none = report(&json!({"resource_changes": []}), DriftMode::Plan, false);
        assert!(!none.drifted && none.resources.is_empty());
    }
}
