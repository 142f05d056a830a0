//! The pricing catalog: YAML files (one per cloud) mapping resource types and
//! the attributes that drive their price to on-demand list prices. The shipped
//! catalog (`config/pricing/`) is built into the binary; `pricing_dir` replaces
//! it with the operator's own files. Every file is validated at load, and
//! errors name the file and the key.
//!
//! Part of the configuration (loaded and validated with it, swapped on reload);
//! `cost` prices plans from it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::{parse_yaml, ConfigError, ConfigErrors};

/// The shipped catalog files, built in.
const SHIPPED: [(&str, &str); 3] = [
    (
        "config/pricing/aws.yaml",
        include_str!("../../config/pricing/aws.yaml"),
    ),
    (
        "config/pricing/google.yaml",
        include_str!("../../config/pricing/google.yaml"),
    ),
    (
        "config/pricing/azure.yaml",
        include_str!("../../config/pricing/azure.yaml"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Google,
    Azure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Price per hour; a month is 730 hours.
    Hour,
    /// Price per month.
    Month,
    /// Price per GB and month, times the `quantity` attribute.
    GbMonth,
}

pub const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Debug, Clone)]
pub enum Prices {
    /// One price everywhere.
    Fixed(f64),
    /// A price per region.
    ByRegion(HashMap<String, f64>),
    /// A price per region and value of the `key` attribute.
    ByRegionKey(HashMap<String, HashMap<String, f64>>),
}

/// One priced part of a resource (an instance's compute, its storage, …).
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub unit: Unit,
    /// Attribute path (`settings.0.tier`) whose value selects the price.
    pub key: Option<Vec<String>>,
    pub default_key: Option<String>,
    /// Attribute path of the quantity (GB) for `gb_month`.
    pub quantity: Option<Vec<String>>,
    pub prices: Prices,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub cloud: Cloud,
    pub currency: String,
    pub default_region: String,
    pub components: Vec<Component>,
}

/// Where a catalog file came from and what it covers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Source {
    pub file: String,
    pub provider: String,
    pub as_of: String,
    pub source: String,
    pub default_region: String,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub entries: HashMap<String, Entry>,
    pub sources: Vec<Source>,
}

#[derive(Deserialize)]
struct RawCatalog {
    provider: String,
    currency: String,
    as_of: String,
    source: String,
    default_region: String,
    resources: BTreeMap<String, Vec<RawComponent>>,
}

#[derive(Deserialize)]
struct RawComponent {
    name: String,
    unit: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    default_key: Option<String>,
    #[serde(default)]
    quantity: Option<String>,
    #[serde(default)]
    prices: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    note: Option<String>,
}

fn path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_string).collect()
}

impl Catalog {
    /// The catalog shipped with gantry.
    pub fn shipped() -> Catalog {
        Self::from_files(
            SHIPPED
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
        )
        .expect("the shipped pricing catalog is valid")
    }

    /// Every `*.yaml`/`*.yml` file in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Catalog, ConfigErrors> {
        let err = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: dir.display().to_string(),
                key: String::new(),
                message,
            }])
        };
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| err(format!("cannot read the pricing directory: {e}")))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| err(format!("cannot read {}: {e}", p.display())))?;
                files.push((p.display().to_string(), text));
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(err("no *.yaml pricing files".into()));
        }
        Self::from_files(files)
    }

    /// Parses and validates catalog files `(name, text)`.
    pub fn from_files(files: Vec<(String, String)>) -> Result<Catalog, ConfigErrors> {
        let mut catalog = Catalog::default();
        let mut errors = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (file, text) in files {
            let raw: RawCatalog = match parse_yaml(&file, &text) {
                Ok(r) => r,
                Err(e) => {
                    errors.extend(e.0);
                    continue;
                }
            };
            let mut err = |key: String, message: String| {
                errors.push(ConfigError {
                    file: file.clone(),
                    key,
                    message,
                })
            };
            let cloud = match raw.provider.as_str() {
                "aws" => Some(Cloud::Aws),
                "google" => Some(Cloud::Google),
                "azurerm" => Some(Cloud::Azure),
                other => {
                    err(
                        "provider".into(),
                        format!("unknown provider `{other}` (expected aws, google or azurerm)"),
                    );
                    None
                }
            };
            if raw.currency != "USD" {
                err(
                    "currency".into(),
                    format!("`{}` is not supported (prices are USD)", raw.currency),
                );
            }
            for (ty, components) in &raw.resources {
                if let Some(other) = seen.insert(ty.clone(), file.clone()) {
                    err(
                        format!("resources.{ty}"),
                        format!("`{ty}` is already priced in {other}"),
                    );
                }
                let mut parsed = Vec::new();
                for (i, c) in components.iter().enumerate() {
                    let k = |f: &str| format!("resources.{ty}[{i}].{f}");
                    match parse_component(c, &raw.default_region) {
                        Ok(p) => parsed.push(p),
                        Err((field, message)) => err(k(field), message),
                    }
                }
                if components.is_empty() {
                    err(
                        format!("resources.{ty}"),
                        "needs at least one component".into(),
                    );
                }
                if let Some(cloud) = cloud {
                    catalog.entries.insert(
                        ty.clone(),
                        Entry {
                            cloud,
                            currency: raw.currency.clone(),
                            default_region: raw.default_region.clone(),
                            components: parsed,
                        },
                    );
                }
            }
            catalog.sources.push(Source {
                file: file.clone(),
                provider: raw.provider.clone(),
                as_of: raw.as_of.clone(),
                source: raw.source.clone(),
                default_region: raw.default_region.clone(),
            });
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn number(v: &serde_yaml::Value) -> Option<f64> {
    v.as_f64().filter(|n| n.is_finite() && *n >= 0.0)
}

fn parse_component(
    c: &RawComponent,
    default_region: &str,
) -> Result<Component, (&'static str, String)> {
    let unit = match c.unit.as_str() {
        "hour" => Unit::Hour,
        "month" => Unit::Month,
        "gb_month" => Unit::GbMonth,
        other => {
            return Err((
                "unit",
                format!("unknown unit `{other}` (expected hour, month or gb_month)"),
            ))
        }
    };
    match (unit, &c.quantity) {
        (Unit::GbMonth, None) => {
            return Err((
                "quantity",
                "gb_month needs the attribute holding the size in GB".into(),
            ))
        }
        (Unit::Hour | Unit::Month, Some(_)) => {
            return Err((
                "quantity",
                "only gb_month components have a quantity".into(),
            ))
        }
        _ => {}
    }
    let prices = match (&c.price, &c.prices) {
        (Some(p), None) if p.is_finite() && *p >= 0.0 => Prices::Fixed(*p),
        (Some(_), None) => return Err(("price", "must be a number of at least 0".into())),
        (None, Some(by_region)) => {
            if !by_region.contains_key(default_region) {
                return Err((
                    "prices",
                    format!("has no prices for the default region `{default_region}`"),
                ));
            }
            if c.key.is_some() {
                let mut out = HashMap::new();
                for (region, v) in by_region {
                    let Some(map) = v.as_mapping() else {
                        return Err((
                            "prices",
                            format!(
                                "`{region}` must map each `{}` value to a price",
                                c.key.as_deref().unwrap_or("")
                            ),
                        ));
                    };
                    let mut m = HashMap::new();
                    for (k, v) in map {
                        let (Some(k), Some(v)) = (k.as_str(), number(v)) else {
                            return Err((
                                "prices",
                                format!("`{region}`: every price must be a number of at least 0"),
                            ));
                        };
                        m.insert(k.to_string(), v);
                    }
                    out.insert(region.clone(), m);
                }
                Prices::ByRegionKey(out)
            } else {
                let mut out = HashMap::new();
                for (region, v) in by_region {
                    let Some(n) = number(v) else {
                        return Err((
                            "prices",
                            format!("`{region}` must be a price (a number of at least 0)"),
                        ));
                    };
                    out.insert(region.clone(), n);
                }
                Prices::ByRegion(out)
            }
        }
        (Some(_), Some(_)) => {
            return Err(("price", "give either price or prices, not both".into()))
        }
        (None, None) => {
            return Err((
                "prices",
                "give price (one price) or prices (by region)".into(),
            ))
        }
    };
    if matches!(prices, Prices::Fixed(_)) && c.key.is_some() {
        return Err(("key", "a fixed price has no key".into()));
    }
    Ok(Component {
        name: c.name.clone(),
        unit,
        key: c.key.as_deref().map(path),
        default_key: c.default_key.clone(),
        quantity: c.quantity.as_deref().map(path),
        prices,
        note: c.note.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_loads_and_covers_the_documented_types() {
        let c = Catalog::shipped();
        for ty in [
            "aws_instance",
            "aws_db_instance",
            "aws_ebs_volume",
            "aws_nat_gateway",
            "aws_lb",
            "aws_alb",
            "aws_s3_bucket",
            "aws_eip",
            "google_compute_instance",
            "google_sql_database_instance",
            "azurerm_linux_virtual_machine",
            "azurerm_windows_virtual_machine",
            "azurerm_managed_disk",
        ] {
            assert!(c.entries.contains_key(ty), "{ty} is not priced");
        }
        assert!(c.sources.iter().all(|s| s.as_of == "2026-11-01"));
        // The directory form of the same files loads identically.
        let dir = Catalog::load_dir(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/pricing"
        )))
        .unwrap();
        assert_eq!(dir.entries.len(), c.entries.len());
    }

    #[test]
    fn bad_catalogs_are_reported_with_file_and_key() {
        let bad = r#"
provider: aws
currency: USD
as_of: "2026-11-01"
source: test
default_region: us-east-1
resources:
  aws_instance:
    - name: compute
      unit: hours
      key: instance_type
      prices: {us-east-1: {t3.micro: 0.01}}
  aws_ebs_volume:
    - name: storage
      unit: gb_month
      key: type
      prices: {us-east-1: {gp3: -1}}
  aws_eip:
    - name: ip
      unit: hour
      prices: {eu-west-1: 0.005}
      colour: blue
"#;
        let err = Catalog::from_files(vec![("pricing/aws.yaml".into(), bad.into())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "pricing/aws.yaml: resources.aws_eip[0].colour: unknown key"
        );
        let bad = bad.replace("      colour: blue\n", "");
        let err = Catalog::from_files(vec![("pricing/aws.yaml".into(), bad)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "pricing/aws.yaml: resources.aws_ebs_volume[0].quantity: gb_month needs the attribute holding the size in GB\n\
             pricing/aws.yaml: resources.aws_eip[0].prices: has no prices for the default region `us-east-1`\n\
             pricing/aws.yaml: resources.aws_instance[0].unit: unknown unit `hours` (expected hour, month or gb_month)"
        );
    }
}
