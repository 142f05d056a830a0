//! `gantry policy test DIR`, with `opa test` semantics: every rule named
//! `test_*` in any `.rego` file under DIR is a test (whatever the file is
//! called), and passes when it evaluates to true. JSON files under DIR are data
//! at their directory's path (a root-level `{"mock": …}` is `data.mock`);
//! `with input as …` works as in OPA.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{add_module, first_lines, load_data, PolicyError};

#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub file: PathBuf,
    /// `data.<package>.<name>`
    pub rule: String,
    pub passed: bool,
    /// Why it failed.
    pub error: Option<String>,
}

fn rego_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()) == Some("rego") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The package and the `test_*` rule names declared in a rego file.
fn tests_in(text: &str) -> (Option<String>, Vec<String>) {
    let mut package = None;
    let mut names = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("test_") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let full = format!("test_{name}");
            if !names.contains(&full) {
                names.push(full);
            }
        }
    }
    (package, names)
}

/// Compiles every module under `dir` and runs its tests. Compile errors are
/// returned as errors (nothing runs).
pub fn run(dir: &Path) -> Result<Vec<TestOutcome>, Vec<PolicyError>> {
    let files = rego_files(dir);
    if files.is_empty() {
        return Err(vec![PolicyError {
            file: dir.display().to_string(),
            message: "no .rego files".into(),
        }]);
    }
    let mut engine = regorus::Engine::new();
    let mut errors = Vec::new();
    for f in &files {
        if let Err(e) = add_module(&mut engine, f) {
            errors.push(e);
        }
    }
    match load_data(dir, true) {
        Ok(data) => {
            if let Err(e) = engine.add_data(data) {
                errors.push(PolicyError {
                    file: dir.display().to_string(),
                    message: format!("data: {e}"),
                });
            }
        }
        Err(e) => errors.push(e),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    engine.set_input(regorus::Value::new_object());
    let mut outcomes = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let (Some(package), names) = tests_in(&text) else {
            continue;
        };
        for name in names {
            let rule = format!("data.{package}.{name}");
            if !seen.insert(rule.clone()) {
                continue;
            }
            let mut e = engine.clone();
            let (passed, error) = match e.eval_rule(rule.clone()) {
                Ok(regorus::Value::Bool(true)) => (true, None),
                Ok(regorus::Value::Undefined) => (
                    false,
                    Some("undefined (a condition was not met)".to_string()),
                ),
                Ok(other) => (
                    false,
                    Some(format!(
                        "evaluated to {}",
                        other.to_json_str().unwrap_or_default()
                    )),
                ),
                Err(err) => (false, Some(first_lines(&err.to_string()))),
            };
            outcomes.push(TestOutcome {
                file: f.clone(),
                rule,
                passed,
                error,
            });
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tests_and_packages() {
        let (p, n) = tests_in("package terraform.x\n\ntest_a {\n true\n}\ntest_b if { true }\nnot_test_c { true }\n  test_indented { true }\ntest_a { false }\n");
        assert_eq!(p.as_deref(), Some("terraform.x"));
        assert_eq!(n, ["test_a", "test_b"]);
    }
}
