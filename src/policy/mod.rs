//! OPA policies, evaluated in process with regorus, in Scalr's layout: a
//! folder with `scalr-policy.hcl` listing each policy's `enforcement_level`
//! (`advisory`, `soft-mandatory`, `hard-mandatory`) and `enabled`, each policy
//! in `NAME.rego` (or `NAME/NAME.rego`), `package terraform`, and a `deny` set
//! of messages. Both pre-1.0 (`deny[msg] { … }`) and 1.0 (`deny contains msg
//! if { … }`) rego evaluate. JSON files in the folder are policy data.
//!
//! Policies are compiled once when the set is loaded; each evaluation clones
//! the compiled engine, so nothing is parsed again per plan.

pub mod groups;
pub mod impact;
pub mod testing;
pub mod tfrun;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A check's level is stored with it: the store owns the type.
pub use crate::store::policy_checks::failure_summary;
pub use crate::store::EnforcementLevel;

pub const POLICY_FILE: &str = "scalr-policy.hcl";

/// A problem loading a policy set; it names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

/// One compiled policy.
#[derive(Clone)]
pub struct Policy {
    pub name: String,
    pub level: EnforcementLevel,
    pub file: PathBuf,
    engine: regorus::Engine,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Policy({} {}, {})",
            self.name,
            self.level.as_str(),
            self.file.display()
        )
    }
}

/// The policies of one folder, compiled.
#[derive(Clone, Debug)]
pub struct PolicySet {
    pub dir: PathBuf,
    pub policies: Vec<Policy>,
    /// Policies listed with `enabled = false`.
    pub disabled: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub enforcement_level: EnforcementLevel,
    /// `passed`, `failed`, or `errored` (the policy could not be evaluated).
    pub result: &'static str,
    pub messages: Vec<String>,
}

/// Adds a rego module, as rego 1.0 first and pre-1.0 when that fails.
pub(crate) fn add_module(engine: &mut regorus::Engine, path: &Path) -> Result<(), PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: file.clone(),
        message: format!("cannot read: {e}"),
    })?;
    engine.set_rego_v0(false);
    if engine.add_policy(file.clone(), text.clone()).is_ok() {
        return Ok(());
    }
    engine.set_rego_v0(true);
    let result = engine.add_policy(file.clone(), text);
    engine.set_rego_v0(false);
    result.map(|_| ()).map_err(|e| PolicyError {
        file,
        message: first_lines(&e.to_string()),
    })
}

/// The start of an error: its first lines, each cut to a readable length.
pub(crate) fn first_lines(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .map(|l| {
            if l.chars().count() > 300 {
                format!("{}…", l.chars().take(300).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// JSON files under `dir`, as one data document: each file's contents are
/// placed at its directory's path relative to `dir` (`a/b/x.json` → `data.a.b`).
pub(crate) fn load_data(dir: &Path, recursive: bool) -> Result<regorus::Value, PolicyError> {
    let mut data = serde_json::Map::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| PolicyError {
            file: d.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                if recursive {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file = p.display().to_string();
            let text = std::fs::read_to_string(&p).map_err(|e| PolicyError {
                file: file.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| PolicyError {
                    file: file.clone(),
                    message: format!("invalid JSON: {e}"),
                })?;
            let rel = p
                .parent()
                .and_then(|parent| parent.strip_prefix(dir).ok())
                .unwrap_or(Path::new(""));
            let mut node = &mut data;
            for seg in rel.iter().filter_map(|s| s.to_str()) {
                node = node
                    .entry(seg.to_string())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()))
                    .as_object_mut()
                    .ok_or_else(|| PolicyError {
                        file: file.clone(),
                        message: format!("data path `{seg}` is not an object"),
                    })?;
            }
            match value {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        node.insert(k, v);
                    }
                }
                _ => {
                    return Err(PolicyError {
                        file,
                        message: "a data file must hold a JSON object".into(),
                    });
                }
            }
        }
    }
    Ok(regorus::Value::from(serde_json::Value::Object(data)))
}

impl PolicySet {
    /// Loads and compiles the policies listed in `dir/scalr-policy.hcl`.
    pub fn load(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
        let hcl_path = dir.join(POLICY_FILE);
        let hcl_file = hcl_path.display().to_string();
        let err = |message: String| {
            vec![PolicyError {
                file: hcl_file.clone(),
                message,
            }]
        };
        let text =
            std::fs::read_to_string(&hcl_path).map_err(|e| err(format!("cannot read: {e}")))?;
        let body = hcl::parse(&text).map_err(|e| err(format!("invalid HCL: {e}")))?;
        let data = load_data(dir, false).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut disabled = Vec::new();
        let mut seen = BTreeMap::new();
        for block in body.blocks().filter(|b| b.identifier() == "policy") {
            let Some(name) = block.labels().first().map(|l| l.as_str().to_string()) else {
                errors.push(PolicyError {
                    file: hcl_file.clone(),
                    message: "a policy block needs a name".into(),
                });
                continue;
            };
            if seen.insert(name.clone(), ()).is_some() {
                errors.push(PolicyError {
                    file: hcl_file.clone(),
                    message: format!("policy `{name}` is listed twice"),
                });
                continue;
            }
            let attr = |key: &str| {
                block
                    .body()
                    .attributes()
                    .find(|a| a.key.as_str() == key)
                    .map(|a| a.expr.clone())
            };
            let enabled = match attr("enabled") {
                None => true,
                Some(hcl::Expression::Bool(b)) => b,
                Some(_) => {
                    errors.push(PolicyError {
                        file: hcl_file.clone(),
                        message: format!("policy `{name}`: enabled must be true or false"),
                    });
                    continue;
                }
            };
            let level = match attr("enforcement_level") {
                Some(hcl::Expression::String(s)) => match EnforcementLevel::parse(&s) {
                    Some(l) => l,
                    None => {
                        errors.push(PolicyError {
                            file: hcl_file.clone(),
                            message: format!(
                                "policy `{name}`: unknown enforcement_level `{s}` (expected advisory, soft-mandatory or hard-mandatory)"
                            ),
                        });
                        continue;
                    }
                },
                _ => {
                    errors.push(PolicyError {
                        file: hcl_file.clone(),
                        message: format!("policy `{name}`: enforcement_level is required"),
                    });
                    continue;
                }
            };
            if !enabled {
                disabled.push(name);
                continue;
            }
            let file = [
                dir.join(format!("{name}.rego")),
                dir.join(&name).join(format!("{name}.rego")),
            ]
            .into_iter()
            .find(|p| p.exists());
            let Some(file) = file else {
                errors.push(PolicyError {
                    file: hcl_file.clone(),
                    message: format!(
                        "policy `{name}`: neither {name}.rego nor {name}/{name}.rego exists"
                    ),
                });
                continue;
            };
            let mut engine = regorus::Engine::new();
            if let Err(e) = add_module(&mut engine, &file) {
                errors.push(e);
                continue;
            }
            if let Err(e) = engine.add_data(data.clone()) {
                errors.push(PolicyError {
                    file: dir.display().to_string(),
                    message: format!("policy data: {e}"),
                });
                continue;
            }
            // Compile now: a policy that cannot be evaluated is a load error.
            engine.set_input(regorus::Value::new_object());
            if let Err(e) = engine.eval_rule("data.terraform.deny".to_string()) {
                errors.push(PolicyError {
                    file: file.display().to_string(),
                    message: first_lines(&e.to_string()),
                });
                continue;
            }
            policies.push(Policy {
                name,
                level,
                file,
                engine,
            });
        }
        if errors.is_empty() {
            Ok(PolicySet {
                dir: dir.to_path_buf(),
                policies,
                disabled,
            })
        } else {
            Err(errors)
        }
    }

    /// Evaluates every policy against `input` (`{"tfplan": …, "tfrun": …}`).
    pub fn evaluate(&self, input: &regorus::Value) -> Vec<PolicyResult> {
        self.policies
            .iter()
            .map(|p| {
                let mut engine = p.engine.clone();
                engine.set_input(input.clone());
                match engine.eval_rule("data.terraform.deny".to_string()) {
                    Ok(v) => {
                        let messages = deny_messages(&v);
                        PolicyResult {
                            policy: p.name.clone(),
                            enforcement_level: p.level,
                            result: if messages.is_empty() {
                                "passed"
                            } else {
                                "failed"
                            },
                            messages,
                        }
                    }
                    Err(e) => PolicyResult {
                        policy: p.name.clone(),
                        enforcement_level: p.level,
                        result: "errored",
                        messages: vec![first_lines(&e.to_string())],
                    },
                }
            })
            .collect()
    }
}

/// The messages of a `deny` set (or array); undefined means none.
fn deny_messages(v: &regorus::Value) -> Vec<String> {
    let text = |x: &regorus::Value| match x {
        regorus::Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_default(),
    };
    let mut out: Vec<String> = match v {
        regorus::Value::Set(s) => s.iter().map(text).collect(),
        regorus::Value::Array(a) => a.iter().map(text).collect(),
        regorus::Value::Undefined | regorus::Value::Null => Vec::new(),
        regorus::Value::Bool(false) => Vec::new(),
        other => vec![text(other)],
    };
    out.sort();
    out
}

/// The policy input: `{"tfplan": plan, "tfrun": run}`.
pub fn input(tfplan: serde_json::Value, tfrun: serde_json::Value) -> regorus::Value {
    regorus::Value::from(serde_json::json!({ "tfplan": tfplan, "tfrun": tfrun }))
}

/// [`failure_summary`] of one policy set's results.
pub fn status_summary(results: &[PolicyResult]) -> Option<String> {
    failure_summary(results.iter().map(|r| (r.enforcement_level, r.result)))
}

#[cfg(test)]
mod tests;
