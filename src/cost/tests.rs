//! The estimator over plans in `terraform show -json`'s format (format 0.2, as
//! terraform 1.0 writes it): each priced type, each action, count/for_each
//! instances, unknown-after-apply values, regions.

use serde_json::{json, Value};

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.011
}

/// A resource change as `terraform show -json` writes it.
fn rc(
    address: &str,
    ty: &str,
    actions: &[&str],
    before: Value,
    after: Value,
    after_unknown: Value,
) -> Value {
    let provider = if ty.starts_with("aws_") {
        "registry.terraform.io/hashicorp/aws"
    } else if ty.starts_with("google_") {
        "registry.terraform.io/hashicorp/google"
    } else if ty.starts_with("azurerm_") {
        "registry.terraform.io/hashicorp/azurerm"
    } else {
        "registry.terraform.io/hashicorp/null"
    };
    let (base, index) = match address.split_once('[') {
        Some((b, rest)) => (b.to_string(), Some(rest.trim_end_matches(']').to_string())),
        None => (address.to_string(), None),
    };
    let name = base.rsplit('.').next().unwrap().to_string();
    let mut v = json!({
        "address": address,
        "mode": "managed",
        "type": ty,
        "name": name,
        "provider_name": provider,
        "change": {
            "actions": actions,
            "before": before,
            "after": after,
            "after_unknown": after_unknown,
            "before_sensitive": if actions == ["create"] { json!(false) } else { json!({}) },
            "after_sensitive": if actions == ["delete"] { json!(false) } else { json!({}) }
        }
    });
    if let Some(i) = index {
        v["index"] = serde_json::from_str(&i).unwrap_or(json!(i));
    }
    if actions == ["delete", "create"] {
        v["action_reason"] = json!("replace_because_cannot_update");
    }
    v
}

/// A whole plan document around `changes`, with the configuration's constant
/// expressions for `config` resources and the AWS provider's region.
fn plan(changes: Vec<Value>, config: Vec<Value>, aws_region: Option<&str>) -> Value {
    let mut provider_config = json!({});
    if let Some(r) = aws_region {
        provider_config["aws"] =
            json!({"name": "aws", "expressions": {"region": {"constant_value": r}}});
    }
    json!({
        "format_version": "0.2",
        "terraform_version": "1.0.3",
        "planned_values": {"root_module": {}},
        "resource_changes": changes,
        "configuration": {"provider_config": provider_config, "root_module": {"resources": config}}
    })
}

fn instance(ty: &str) -> Value {
    json!({"ami": "ami-0c55b159cbfafe1f0", "instance_type": ty, "tags": {"Name": "web"}})
}

fn est(p: &Value) -> CostEstimate {
    estimate(p, &Catalog::shipped())
}

#[test]
fn create_update_replace_delete_and_no_op() {
    let p = plan(
        vec![
            rc(
                "aws_instance.new",
                "aws_instance",
                &["create"],
                Value::Null,
                instance("t3.micro"),
                json!({"id": true, "arn": true}),
            ),
            rc(
                "aws_instance.grow",
                "aws_instance",
                &["update"],
                instance("t3.micro"),
                instance("t3.large"),
                json!({}),
            ),
            rc(
                "aws_instance.swap",
                "aws_instance",
                &["delete", "create"],
                instance("m5.large"),
                instance("m5.large"),
                json!({"id": true}),
            ),
            rc(
                "aws_instance.gone",
                "aws_instance",
                &["delete"],
                instance("t3.micro"),
                Value::Null,
                json!(false),
            ),
            rc(
                "aws_instance.same",
                "aws_instance",
                &["no-op"],
                instance("t3.small"),
                instance("t3.small"),
                json!({}),
            ),
        ],
        vec![],
        Some("us-east-1"),
    );
    let e = est(&p);
    assert!(e.unpriced.is_empty(), "{:?}", e.unpriced);
    let by = |a: &str| e.resources.iter().find(|r| r.address == a).unwrap().clone();
    let new = by("aws_instance.new");
    assert_eq!(
        (new.action.as_str(), new.prior_monthly_cost),
        ("create", 0.0)
    );
    assert!(close(new.proposed_monthly_cost, 0.0104 * 730.0));
    let grow = by("aws_instance.grow");
    assert_eq!(grow.action, "update");
    assert!(close(grow.prior_monthly_cost, 7.59) && close(grow.proposed_monthly_cost, 60.74));
    let swap = by("aws_instance.swap");
    assert_eq!(swap.action, "replace");
    assert!(close(swap.prior_monthly_cost, 70.08) && close(swap.proposed_monthly_cost, 70.08));
    let gone = by("aws_instance.gone");
    assert!(close(gone.prior_monthly_cost, 7.59) && gone.proposed_monthly_cost == 0.0);
    let same = by("aws_instance.same");
    assert!(close(same.prior_monthly_cost, 15.18) && close(same.delta_monthly_cost, 0.0));
    assert!(close(e.prior_monthly_cost, 7.59 + 70.08 + 7.59 + 15.18));
    assert!(close(e.proposed_monthly_cost, 7.59 + 60.74 + 70.08 + 15.18));
    assert!(close(
        e.delta_monthly_cost,
        e.proposed_monthly_cost - e.prior_monthly_cost
    ));
}

#[test]
fn every_count_and_for_each_instance_is_priced() {
    let p = plan(
        vec![
            rc(
                "aws_instance.web[0]",
                "aws_instance",
                &["create"],
                Value::Null,
                instance("t3.medium"),
                json!({}),
            ),
            rc(
                "aws_instance.web[1]",
                "aws_instance",
                &["create"],
                Value::Null,
                instance("t3.medium"),
                json!({}),
            ),
            rc(
                "aws_eip.ip[\"a\"]",
                "aws_eip",
                &["create"],
                Value::Null,
                json!({"domain": "vpc"}),
                json!({"public_ip": true}),
            ),
            rc(
                "aws_eip.ip[\"b\"]",
                "aws_eip",
                &["create"],
                Value::Null,
                json!({"domain": "vpc"}),
                json!({"public_ip": true}),
            ),
        ],
        vec![],
        None,
    );
    let e = est(&p);
    assert_eq!(e.resources.len(), 4);
    assert!(
        close(e.proposed_monthly_cost, 2.0 * 30.37 + 2.0 * 3.65),
        "{}",
        e.proposed_monthly_cost
    );
}

#[test]
fn unknown_values_are_priced_from_the_configuration_or_not_at_all() {
    let mut after = instance("t3.micro");
    after["instance_type"] = Value::Null;
    let config = vec![json!({
        "address": "aws_instance.known",
        "mode": "managed",
        "type": "aws_instance",
        "name": "known",
        "provider_config_key": "aws",
        "expressions": {"instance_type": {"constant_value": "m5.xlarge"}, "ami": {"references": ["data.aws_ami.ubuntu.id"]}},
        "schema_version": 1
    })];
    let p = plan(
        vec![
            rc(
                "aws_instance.known",
                "aws_instance",
                &["create"],
                Value::Null,
                after.clone(),
                json!({"instance_type": true}),
            ),
            rc(
                "aws_instance.computed",
                "aws_instance",
                &["create"],
                Value::Null,
                after,
                json!({"instance_type": true}),
            ),
        ],
        config,
        Some("us-east-1"),
    );
    let e = est(&p);
    assert_eq!(e.resources.len(), 1);
    assert!(close(e.resources[0].proposed_monthly_cost, 140.16));
    assert_eq!(e.unpriced.len(), 1);
    assert_eq!(e.unpriced[0].address, "aws_instance.computed");
    assert_eq!(
        e.unpriced[0].reason,
        "`instance_type` is unknown until apply"
    );
}

#[test]
fn unpriced_types_are_listed_not_counted_and_data_sources_skipped() {
    let mut data = rc(
        "data.aws_ami.ubuntu",
        "aws_ami",
        &["read"],
        Value::Null,
        json!({}),
        json!({}),
    );
    data["mode"] = json!("data");
    let p = plan(
        vec![
            rc(
                "null_resource.this",
                "null_resource",
                &["create"],
                Value::Null,
                json!({"triggers": {"v": "1"}}),
                json!({"id": true}),
            ),
            rc(
                "aws_instance.odd",
                "aws_instance",
                &["create"],
                Value::Null,
                instance("x9.mega"),
                json!({}),
            ),
            data,
        ],
        vec![],
        None,
    );
    let e = est(&p);
    assert!(e.resources.is_empty());
    assert_eq!(e.proposed_monthly_cost, 0.0);
    let reasons: Vec<&str> = e.unpriced.iter().map(|u| u.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "no price for null_resource in the catalog",
            "no price for instance_type `x9.mega` in us-east-1"
        ]
    );
    assert_eq!(e.status_suffix(), "cost: 2 not priced");
}

#[test]
fn regions_come_from_attributes_then_provider_then_default() {
    let p = plan(
        vec![rc(
            "aws_instance.eu",
            "aws_instance",
            &["create"],
            Value::Null,
            instance("t3.micro"),
            json!({}),
        )],
        vec![],
        Some("eu-west-1"),
    );
    assert!(close(est(&p).proposed_monthly_cost, 0.0114 * 730.0));
    let p = plan(
        vec![rc(
            "aws_instance.eu",
            "aws_instance",
            &["create"],
            Value::Null,
            instance("t3.micro"),
            json!({}),
        )],
        vec![],
        Some("ap-south-1"),
    );
    assert_eq!(
        est(&p).unpriced[0].reason,
        "no compute prices for region ap-south-1"
    );
}

#[test]
fn aws_storage_databases_and_network() {
    let p = plan(
        vec![
            rc(
                "aws_ebs_volume.data",
                "aws_ebs_volume",
                &["create"],
                Value::Null,
                json!({"availability_zone": "us-east-1a", "size": 100, "type": "gp3"}),
                json!({}),
            ),
            rc(
                "aws_ebs_volume.default",
                "aws_ebs_volume",
                &["create"],
                Value::Null,
                json!({"availability_zone": "us-east-1a", "size": 10, "type": null}),
                json!({"type": false}),
            ),
            rc(
                "aws_db_instance.db",
                "aws_db_instance",
                &["create"],
                Value::Null,
                json!({"instance_class": "db.t3.micro", "allocated_storage": 20, "storage_type": "gp2", "engine": "postgres"}),
                json!({}),
            ),
            rc(
                "aws_nat_gateway.nat",
                "aws_nat_gateway",
                &["create"],
                Value::Null,
                json!({"connectivity_type": "public"}),
                json!({}),
            ),
            rc(
                "aws_lb.front",
                "aws_lb",
                &["create"],
                Value::Null,
                json!({"load_balancer_type": "application"}),
                json!({}),
            ),
            rc(
                "aws_alb.legacy",
                "aws_alb",
                &["delete"],
                json!({"load_balancer_type": "application"}),
                Value::Null,
                json!(false),
            ),
            rc(
                "aws_s3_bucket.logs",
                "aws_s3_bucket",
                &["create"],
                Value::Null,
                json!({"bucket": "acme-logs"}),
                json!({}),
            ),
        ],
        vec![],
        None,
    );
    let e = est(&p);
    assert!(e.unpriced.is_empty(), "{:?}", e.unpriced);
    let cost = |a: &str| e.resources.iter().find(|r| r.address == a).unwrap();
    assert!(close(
        cost("aws_ebs_volume.data").proposed_monthly_cost,
        8.0
    ));
    assert!(close(
        cost("aws_ebs_volume.default").proposed_monthly_cost,
        0.8
    ));
    assert!(close(
        cost("aws_db_instance.db").proposed_monthly_cost,
        12.41 + 2.30
    ));
    assert!(close(
        cost("aws_nat_gateway.nat").proposed_monthly_cost,
        32.85
    ));
    assert!(close(cost("aws_lb.front").proposed_monthly_cost, 16.43));
    assert!(close(cost("aws_alb.legacy").prior_monthly_cost, 16.43));
    let s3 = cost("aws_s3_bucket.logs");
    assert_eq!(s3.proposed_monthly_cost, 0.0);
    assert_eq!(
        s3.notes,
        ["usage-based (storage, requests, transfer): not estimated"]
    );
    assert!(cost("aws_nat_gateway.nat").notes[0].contains("usage-based"));
}

#[test]
fn google_and_azure() {
    let p = plan(
        vec![
            rc(
                "google_compute_instance.vm",
                "google_compute_instance",
                &["create"],
                Value::Null,
                json!({"machine_type": "e2-medium", "zone": "us-central1-a"}),
                json!({}),
            ),
            rc(
                "google_compute_instance.eu",
                "google_compute_instance",
                &["create"],
                Value::Null,
                json!({"machine_type": "e2-medium", "zone": "europe-west1-b"}),
                json!({}),
            ),
            rc(
                "google_sql_database_instance.db",
                "google_sql_database_instance",
                &["create"],
                Value::Null,
                json!({"region": "us-central1", "settings": [{"tier": "db-f1-micro", "disk_size": 10}]}),
                json!({}),
            ),
            rc(
                "azurerm_linux_virtual_machine.vm",
                "azurerm_linux_virtual_machine",
                &["create"],
                Value::Null,
                json!({"size": "Standard_B2s", "location": "East US"}),
                json!({}),
            ),
            rc(
                "azurerm_windows_virtual_machine.vm",
                "azurerm_windows_virtual_machine",
                &["update"],
                json!({"size": "Standard_B2s", "location": "eastus"}),
                json!({"size": "Standard_D2s_v3", "location": "eastus"}),
                json!({}),
            ),
            rc(
                "azurerm_managed_disk.data",
                "azurerm_managed_disk",
                &["create"],
                Value::Null,
                json!({"storage_account_type": "Premium_LRS", "disk_size_gb": 128, "location": "eastus"}),
                json!({}),
            ),
        ],
        vec![],
        None,
    );
    let e = est(&p);
    assert!(e.unpriced.is_empty(), "{:?}", e.unpriced);
    let cost = |a: &str| e.resources.iter().find(|r| r.address == a).unwrap();
    assert!(close(
        cost("google_compute_instance.vm").proposed_monthly_cost,
        24.46
    ));
    assert!(close(
        cost("google_compute_instance.eu").proposed_monthly_cost,
        26.90
    ));
    assert!(close(
        cost("google_sql_database_instance.db").proposed_monthly_cost,
        7.67
    ));
    assert!(close(
        cost("azurerm_linux_virtual_machine.vm").proposed_monthly_cost,
        30.37
    ));
    let win = cost("azurerm_windows_virtual_machine.vm");
    assert!(close(win.prior_monthly_cost, 43.22) && close(win.proposed_monthly_cost, 137.24));
    assert!(close(
        cost("azurerm_managed_disk.data").proposed_monthly_cost,
        19.71
    ));
}

#[test]
fn formats() {
    assert_eq!(format_delta(73.0), "+$73.00/mo");
    assert_eq!(format_delta(-5.5), "-$5.50/mo");
    assert_eq!(format_delta(0.001), "$0.00/mo");
    assert_eq!(
        strip_instance_keys("module.a[\"x\"].aws_instance.web[0]"),
        "module.a.aws_instance.web"
    );
}
