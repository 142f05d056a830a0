//! Cost estimation: the monthly cost of a plan's resources before and after the
//! change, from the pricing [`Catalog`] (part of the configuration). Reads
//! `terraform show -json` output (`resource_changes[].change.before/after`,
//! each `count`/`for_each` instance on its own). Attributes unknown until apply are priced from the
//! configuration when it holds a constant; anything gantry cannot price is
//! listed in `unpriced` with the reason, never counted as zero.
//!
//! The result has Scalr's field names (`prior_monthly_cost`,
//! `proposed_monthly_cost`, `delta_monthly_cost`), the shape policies see as
//! `tfrun.cost_estimate`.

use std::collections::HashMap;

use serde_json::Value;

pub use crate::config::pricing::Catalog;
use crate::config::pricing::{Cloud, Component, Entry, Prices, Unit, HOURS_PER_MONTH};
/// The estimate is stored with its run: the store owns its shape.
pub use crate::store::{CostEstimate, ResourceCost, Unpriced};

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `+$73.00/mo`, `-$5.50/mo`, `$0.00/mo`.
pub fn format_delta(delta: f64) -> String {
    let d = cents(delta);
    if d > 0.0 {
        format!("+${d:.2}/mo")
    } else if d < 0.0 {
        format!("-${:.2}/mo", -d)
    } else {
        "$0.00/mo".to_string()
    }
}

pub fn format_money(x: f64) -> String {
    format!("${:.2}", cents(x))
}

/// How an estimate reads is the estimator's concern, not the store's.
impl CostEstimate {
    /// The short form for a commit status: `+$73.00/mo`, with the unpriced count.
    pub fn status_suffix(&self) -> String {
        match (self.resources.is_empty(), self.unpriced.len()) {
            (false, 0) => format_delta(self.delta_monthly_cost),
            (false, n) => format!("{} ({n} not priced)", format_delta(self.delta_monthly_cost)),
            (true, 0) => format_delta(0.0),
            (true, n) => format!("cost: {n} not priced"),
        }
    }
}

/// A step of an attribute path: `settings.0.tier`.
fn lookup<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Configuration expressions per resource address (module path + address).
struct ConfigIndex<'p> {
    resources: HashMap<String, &'p Value>,
    provider_regions: HashMap<String, String>,
}

impl<'p> ConfigIndex<'p> {
    fn build(plan: &'p Value) -> ConfigIndex<'p> {
        let mut resources = HashMap::new();
        fn walk<'p>(module: &'p Value, prefix: &str, out: &mut HashMap<String, &'p Value>) {
            if let Some(rs) = module.get("resources").and_then(Value::as_array) {
                for r in rs {
                    if let Some(addr) = r.get("address").and_then(Value::as_str) {
                        out.insert(format!("{prefix}{addr}"), r);
                    }
                }
            }
            if let Some(calls) = module.get("module_calls").and_then(Value::as_object) {
                for (name, call) in calls {
                    if let Some(m) = call.get("module") {
                        walk(m, &format!("{prefix}module.{name}."), out);
                    }
                }
            }
        }
        if let Some(root) = plan.pointer("/configuration/root_module") {
            walk(root, "", &mut resources);
        }
        let mut provider_regions = HashMap::new();
        if let Some(pc) = plan
            .pointer("/configuration/provider_config")
            .and_then(Value::as_object)
        {
            for (key, p) in pc {
                // Aliased providers ("aws.west") are keyed by their full name.
                let region = p
                    .pointer("/expressions/region/constant_value")
                    .and_then(Value::as_str);
                if let Some(region) = region {
                    provider_regions.insert(key.clone(), region.to_string());
                }
            }
        }
        ConfigIndex {
            resources,
            provider_regions,
        }
    }

    /// The configuration of the resource at `address` (instance keys removed).
    fn resource(&self, address: &str) -> Option<&'p Value> {
        self.resources.get(&strip_instance_keys(address)).copied()
    }
}

/// `module.a["x"].aws_instance.web[0]` → `module.a.aws_instance.web`.
fn strip_instance_keys(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    let mut depth = 0;
    for c in address.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// One side (before or after) of a resource change.
struct Side<'v> {
    values: &'v Value,
    unknown: Option<&'v Value>,
}

struct Pricer<'a> {
    config: &'a ConfigIndex<'a>,
    address: &'a str,
    change: &'a Value,
}

impl Pricer<'_> {
    /// The value of an attribute, from the plan, or from the configuration when
    /// the plan only knows it after apply. `Ok(None)`: absent or null.
    fn attribute(&self, side: &Side<'_>, path: &[String]) -> Result<Option<Value>, String> {
        let unknown = side
            .unknown
            .and_then(|u| lookup(u, path))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !unknown {
            return Ok(lookup(side.values, path).filter(|v| !v.is_null()).cloned());
        }
        let from_config = self.config.resource(self.address).and_then(|r| {
            let mut cur = r.get("expressions")?;
            for seg in path {
                cur = match cur {
                    Value::Object(m) => m.get(seg)?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            cur.get("constant_value").cloned()
        });
        from_config
            .map(Some)
            .ok_or_else(|| format!("`{}` is unknown until apply", path.join(".")))
    }

    fn region(&self, entry: &Entry, side: &Side<'_>) -> String {
        let attr = |name: &str| {
            lookup(side.values, &[name.to_string()])
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let provider_key = self
            .change
            .get("provider_config_key")
            .and_then(Value::as_str)
            .map(|k| k.rsplit(':').next().unwrap_or(k).to_string());
        let from_provider = || {
            provider_key
                .as_ref()
                .and_then(|k| self.config.provider_regions.get(k))
                .or_else(|| {
                    let name = match entry.cloud {
                        Cloud::Aws => "aws",
                        Cloud::Google => "google",
                        Cloud::Azure => "azurerm",
                    };
                    self.config.provider_regions.get(name)
                })
                .cloned()
        };
        let region = match entry.cloud {
            Cloud::Aws => attr("region").or_else(from_provider),
            Cloud::Google => attr("zone")
                .map(|z| z.rsplit_once('-').map(|(r, _)| r.to_string()).unwrap_or(z))
                .or_else(|| attr("region"))
                .or_else(from_provider),
            Cloud::Azure => attr("location").map(|l| l.to_lowercase().replace(' ', "")),
        };
        region.unwrap_or_else(|| entry.default_region.clone())
    }

    fn component(&self, c: &Component, side: &Side<'_>, region: &str) -> Result<f64, String> {
        let per_unit = match &c.prices {
            Prices::Fixed(p) => *p,
            Prices::ByRegion(by) => *by
                .get(region)
                .ok_or_else(|| format!("no {} price for region {region}", c.name))?,
            Prices::ByRegionKey(by) => {
                let key_path = c.key.as_ref().expect("keyed prices have a key");
                let key = match self.attribute(side, key_path)? {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => c
                        .default_key
                        .clone()
                        .ok_or_else(|| format!("`{}` is not set", key_path.join(".")))?,
                };
                let table = by
                    .get(region)
                    .ok_or_else(|| format!("no {} prices for region {region}", c.name))?;
                *table.get(&key).ok_or_else(|| {
                    format!("no price for {} `{key}` in {region}", key_path.join("."))
                })?
            }
        };
        Ok(match c.unit {
            Unit::Hour => per_unit * HOURS_PER_MONTH,
            Unit::Month => per_unit,
            Unit::GbMonth => {
                let q_path = c.quantity.as_ref().expect("gb_month has a quantity");
                let gb = self
                    .attribute(side, q_path)?
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| format!("`{}` is not set", q_path.join(".")))?;
                per_unit * gb
            }
        })
    }

    fn monthly(
        &self,
        entry: &Entry,
        side: &Side<'_>,
        notes: &mut Vec<String>,
    ) -> Result<f64, String> {
        let region = self.region(entry, side);
        let mut total = 0.0;
        for c in &entry.components {
            total += self.component(c, side, &region)?;
            if let Some(n) = &c.note {
                if !notes.contains(n) {
                    notes.push(n.clone());
                }
            }
        }
        Ok(cents(total))
    }
}

fn action_of(actions: &[&str]) -> &'static str {
    match actions {
        ["create"] => "create",
        ["delete"] => "delete",
        ["update"] => "update",
        ["no-op"] => "no-op",
        ["read"] => "read",
        ["delete", "create"] | ["create", "delete"] => "replace",
        _ => "unknown",
    }
}

/// Estimates a plan (`terraform show -json` output).
pub fn estimate(plan: &Value, catalog: &Catalog) -> CostEstimate {
    let config = ConfigIndex::build(plan);
    let mut out = CostEstimate {
        currency: "USD".into(),
        prior_monthly_cost: 0.0,
        proposed_monthly_cost: 0.0,
        delta_monthly_cost: 0.0,
        resources: Vec::new(),
        unpriced: Vec::new(),
    };
    let changes = plan
        .get("resource_changes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for rc in changes {
        if rc.get("mode").and_then(Value::as_str) == Some("data") {
            continue;
        }
        let address = rc
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ty = rc.get("type").and_then(Value::as_str).unwrap_or_default();
        let Some(change) = rc.get("change") else {
            continue;
        };
        let actions: Vec<&str> = change
            .get("actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let action = action_of(&actions);
        if action == "read" {
            continue;
        }
        let unpriced = |reason: String| Unpriced {
            address: address.to_string(),
            resource_type: ty.to_string(),
            action: action.to_string(),
            reason,
        };
        let Some(entry) = catalog.entries.get(ty) else {
            out.unpriced
                .push(unpriced(format!("no price for {ty} in the catalog")));
            continue;
        };
        let pricer = Pricer {
            config: &config,
            address,
            change: rc,
        };
        let before = change.get("before").filter(|v| !v.is_null());
        let after = change.get("after").filter(|v| !v.is_null());
        let mut notes = Vec::new();
        let prior = match (action, before) {
            ("create", _) | (_, None) => Ok(0.0),
            (_, Some(values)) => pricer.monthly(
                entry,
                &Side {
                    values,
                    unknown: None,
                },
                &mut notes,
            ),
        };
        let proposed = match (action, after) {
            ("delete", _) | (_, None) => Ok(0.0),
            (_, Some(values)) => pricer.monthly(
                entry,
                &Side {
                    values,
                    unknown: change.get("after_unknown"),
                },
                &mut notes,
            ),
        };
        match (prior, proposed) {
            (Ok(prior), Ok(proposed)) => {
                out.prior_monthly_cost += prior;
                out.proposed_monthly_cost += proposed;
                out.resources.push(ResourceCost {
                    address: address.to_string(),
                    resource_type: ty.to_string(),
                    action: action.to_string(),
                    prior_monthly_cost: prior,
                    proposed_monthly_cost: proposed,
                    delta_monthly_cost: cents(proposed - prior),
                    notes,
                });
            }
            (Err(reason), _) | (_, Err(reason)) => out.unpriced.push(unpriced(reason)),
        }
    }
    out.prior_monthly_cost = cents(out.prior_monthly_cost);
    out.proposed_monthly_cost = cents(out.proposed_monthly_cost);
    out.delta_monthly_cost = cents(out.proposed_monthly_cost - out.prior_monthly_cost);
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A plain-text table of an estimate, for the CLI.
pub fn render_table(e: &CostEstimate) -> String {
    let mut rows = vec![(
        "RESOURCE".to_string(),
        "ACTION".to_string(),
        "BEFORE".to_string(),
        "AFTER".to_string(),
        "DELTA".to_string(),
    )];
    for r in &e.resources {
        rows.push((
            r.address.clone(),
            r.action.clone(),
            format_money(r.prior_monthly_cost),
            format_money(r.proposed_monthly_cost),
            format_delta(r.delta_monthly_cost),
        ));
    }
    for u in &e.unpriced {
        rows.push((
            u.address.clone(),
            u.action.clone(),
            "not priced".into(),
            String::new(),
            u.reason.clone(),
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let w3 = rows.iter().map(|r| r.3.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in &rows {
        out.push_str(
            &format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}\n",
                r.0, r.1, r.2, r.3, r.4
            )
            .replace("  \n", "\n"),
        );
    }
    out.push_str(&format!(
        "\nMonthly cost: {} → {} ({}){}\n",
        format_money(e.prior_monthly_cost),
        format_money(e.proposed_monthly_cost),
        format_delta(e.delta_monthly_cost),
        if e.unpriced.is_empty() {
            String::new()
        } else {
            format!("; {} not priced", plural(e.unpriced.len(), "resource"))
        }
    ));
    out
}

#[cfg(test)]
mod tests;
