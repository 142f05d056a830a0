//! Variables for terraform runs, scoped and split by phase (Scalr's model).
//!
//! Variables are written at three scopes: the account (top-level `variables:`,
//! plus the older `terraform.pass_env` and `terraform.env`), an environment
//! (`environments[].variables`) and a workspace (`workspaces[].variables`). A
//! run of a workspace gets the account's, its environment's and its own, the
//! nearer scope winning, and of those only the ones listed for the run's phase.
//!
//! The override rule is by name and whole: the nearest scope that defines a
//! name supplies every definition of it, with their phases; farther
//! definitions of that name are dropped. So a workspace can narrow an
//! inherited variable (redefine it with fewer phases) and never inherits half
//! of a credential pair by accident.
//!
//! One scope may define a name more than once when the phases do not overlap:
//! that is how one name (`AWS_ACCESS_KEY_ID`) holds a read-only credential for
//! plans and a write credential for applies.
//!
//! Values are resolved when the configuration is loaded (environment
//! variables through the loader's [`EnvLookup`](super::EnvLookup), files read),
//! so a missing source is a configuration error, not a failed run.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::raw::{RawConfig, RawVariable};
use super::Validator;
use crate::redact::Redactor;

/// The terraform step a variable is given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// `init`, `plan` and `show` of any plan: pull requests (every branch and
    /// fork) and the plan step of a run that applies.
    Plan,
    /// `apply` of a saved plan.
    Apply,
    /// A drift check (`init`, `plan -refresh-only` or `plan`, `show`).
    Drift,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Plan, Phase::Apply, Phase::Drift];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Apply => "apply",
            Phase::Drift => "drift",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Phase::Plan => 1,
            Phase::Apply => 2,
            Phase::Drift => 4,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases a variable is given to.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub const ALL: PhaseSet = PhaseSet(7);

    pub fn empty() -> PhaseSet {
        PhaseSet(0)
    }

    pub fn of(phases: &[Phase]) -> PhaseSet {
        let mut s = PhaseSet::empty();
        for p in phases {
            s.insert(*p);
        }
        s
    }

    pub fn insert(&mut self, phase: Phase) {
        self.0 |= phase.bit();
    }

    pub fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The phases in both sets.
    pub fn intersection(self, other: PhaseSet) -> PhaseSet {
        PhaseSet(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl fmt::Display for PhaseSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Phase::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for PhaseSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}

/// Where a variable is defined.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Account,
    Environment(String),
    Workspace(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Account => f.write_str("account"),
            Scope::Environment(e) => write!(f, "environment {e}"),
            Scope::Workspace(w) => write!(f, "workspace {w}"),
        }
    }
}

/// A variable's value: sensitive ones are held as secrets and redacted
/// wherever gantry writes.
#[derive(Clone)]
pub enum VariableValue {
    Plain(String),
    Sensitive(SecretString),
}

impl VariableValue {
    fn new(value: String, sensitive: bool) -> VariableValue {
        if sensitive {
            VariableValue::Sensitive(SecretString::from(value))
        } else {
            VariableValue::Plain(value)
        }
    }

    /// The value, for the environment of the terraform process only.
    pub fn expose(&self) -> &str {
        match self {
            VariableValue::Plain(v) => v,
            VariableValue::Sensitive(v) => v.expose_secret(),
        }
    }

    pub fn is_sensitive(&self) -> bool {
        matches!(self, VariableValue::Sensitive(_))
    }
}

impl fmt::Debug for VariableValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariableValue::Plain(v) => f.debug_tuple("Plain").field(v).finish(),
            VariableValue::Sensitive(_) => f.write_str("Sensitive([redacted])"),
        }
    }
}

/// Where a variable's value came from (shown by `config check`; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableSource {
    /// `from_env: NAME`.
    Env(String),
    /// `from_file: PATH`.
    File(PathBuf),
    /// `value:` in the file.
    Literal,
    /// A name listed in `terraform.pass_env`.
    PassEnv,
    /// An entry of `terraform.env`.
    TerraformEnv,
}

impl fmt::Display for VariableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariableSource::Env(v) => write!(f, "from_env {v}"),
            VariableSource::File(p) => write!(f, "from_file {}", p.display()),
            VariableSource::Literal => f.write_str("value"),
            VariableSource::PassEnv => f.write_str("terraform.pass_env"),
            VariableSource::TerraformEnv => f.write_str("terraform.env"),
        }
    }
}

/// One validated variable definition.
#[derive(Debug, Clone)]
pub struct Variable {
    /// The environment variable terraform gets (`TF_VAR_region`, `AWS_ACCESS_KEY_ID`).
    pub name: String,
    pub value: VariableValue,
    pub phases: PhaseSet,
    pub source: VariableSource,
    /// Where it is written in the file, e.g. `environments[1].variables[0]`.
    pub key: String,
}

/// A variable as one run receives it.
#[derive(Debug, Clone)]
pub struct ResolvedVariable {
    pub name: String,
    pub value: VariableValue,
    /// The scope it was inherited from (for logs and audits; never the value).
    pub scope: Scope,
}

impl ResolvedVariable {
    pub fn is_sensitive(&self) -> bool {
        self.value.is_sensitive()
    }
}

/// Every variable of the configuration, by scope.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    pub account: Vec<Variable>,
    /// By environment name.
    pub environments: BTreeMap<String, Vec<Variable>>,
    /// By workspace name.
    pub workspaces: BTreeMap<String, Vec<Variable>>,
    /// `terraform.pass_env` names not set in the daemon's environment: skipped,
    /// as `pass_env` always did.
    pub unset_pass_env: Vec<String>,
}

impl Variables {
    /// The variables a run of `workspace` (in `environment`) gets for `phase`,
    /// sorted by name. See the module documentation for the override rule.
    pub fn resolve(
        &self,
        workspace: &str,
        environment: Option<&str>,
        phase: Phase,
    ) -> Vec<ResolvedVariable> {
        let empty = Vec::new();
        let scopes = [
            (Scope::Account, &self.account),
            (
                Scope::Environment(environment.unwrap_or_default().to_string()),
                environment
                    .and_then(|e| self.environments.get(e))
                    .unwrap_or(&empty),
            ),
            (
                Scope::Workspace(workspace.to_string()),
                self.workspaces.get(workspace).unwrap_or(&empty),
            ),
        ];
        // Name -> the nearest scope's definitions of it.
        let mut by_name: BTreeMap<&str, (&Scope, Vec<&Variable>)> = BTreeMap::new();
        for (scope, vars) in &scopes {
            let mut here: BTreeMap<&str, Vec<&Variable>> = BTreeMap::new();
            for v in vars.iter() {
                here.entry(v.name.as_str()).or_default().push(v);
            }
            for (name, defs) in here {
                by_name.insert(name, (scope, defs));
            }
        }
        by_name
            .into_values()
            .filter_map(|(scope, defs)| {
                // Definitions of one name in one scope never share a phase.
                defs.into_iter()
                    .find(|v| v.phases.contains(phase))
                    .map(|v| ResolvedVariable {
                        name: v.name.clone(),
                        value: v.value.clone(),
                        scope: scope.clone(),
                    })
            })
            .collect()
    }

    /// Every variable definition at every scope, with its scope.
    pub fn all(&self) -> impl Iterator<Item = (Scope, &Variable)> {
        let account = self.account.iter().map(|v| (Scope::Account, v));
        let envs = self
            .environments
            .iter()
            .flat_map(|(e, vs)| vs.iter().map(move |v| (Scope::Environment(e.clone()), v)));
        let wss = self
            .workspaces
            .iter()
            .flat_map(|(w, vs)| vs.iter().map(move |v| (Scope::Workspace(w.clone()), v)));
        account.chain(envs).chain(wss)
    }

    /// Every sensitive value, for the redactor.
    pub fn sensitive_values(&self) -> Vec<SecretString> {
        self.all()
            .filter_map(|(_, v)| match &v.value {
                VariableValue::Sensitive(s) => Some(s.clone()),
                VariableValue::Plain(_) => None,
            })
            .collect()
    }

    /// A listing by scope of names, phases and sources; never values.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut scope_lines = |title: String, vars: &[Variable]| {
            if vars.is_empty() {
                return;
            }
            out.push(format!("  {title}"));
            for v in vars {
                out.push(format!(
                    "    {} [{}]{} ({})",
                    v.name,
                    v.phases,
                    if v.value.is_sensitive() {
                        " sensitive"
                    } else {
                        ""
                    },
                    v.source
                ));
            }
        };
        scope_lines(Scope::Account.to_string(), &self.account);
        for (e, vars) in &self.environments {
            scope_lines(Scope::Environment(e.clone()).to_string(), vars);
        }
        for (w, vars) in &self.workspaces {
            scope_lines(Scope::Workspace(w.clone()).to_string(), vars);
        }
        for name in &self.unset_pass_env {
            out.push(format!(
                "  terraform.pass_env {name}: not set in this environment, not passed"
            ));
        }
        out
    }
}

/// Variables gantry sets itself for every terraform run; a variable may not
/// replace them.
const RESERVED: [&str; 9] = [
    "PATH",
    "HOME",
    "TMPDIR",
    "TF_IN_AUTOMATION",
    "TF_INPUT",
    "TF_CLI_CONFIG_FILE",
    "TF_PLUGIN_CACHE_DIR",
    "TF_DATA_DIR",
    "TF_CLI_ARGS",
];

/// Why `name` may not be set, if it may not.
fn reserved(name: &str) -> Option<String> {
    if name == "TF_CLI_CONFIG_FILE" {
        return Some(
            "TF_CLI_CONFIG_FILE is set by gantry for every terraform run; use terraform.cli_config_file"
                .to_string(),
        );
    }
    if RESERVED.contains(&name) || name.starts_with("TF_CLI_ARGS_") {
        return Some(format!(
            "{name} is set by gantry for every terraform run and cannot be replaced"
        ));
    }
    None
}

fn valid_terraform_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Files that hold gantry's own secrets (GitHub App keys), as written and
/// canonical.
fn daemon_secret_files(raw: &RawConfig) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for p in &raw.providers {
        if let Some(f) = &p.private_key_file {
            out.insert(PathBuf::from(f));
            if let Ok(c) = std::fs::canonicalize(f) {
                out.insert(c);
            }
        }
    }
    out
}

fn is_daemon_secret_file(files: &HashSet<PathBuf>, file: &Path) -> bool {
    files.contains(file) || std::fs::canonicalize(file).is_ok_and(|c| files.contains(&c))
}

impl Validator<'_> {
    /// Validates and resolves every variable of `raw` at every scope.
    pub(super) fn variables(&mut self, raw: &RawConfig) -> Variables {
        let secret_vars = super::Config::daemon_secret_vars(raw);
        let secret_files = daemon_secret_files(raw);
        let mut out = Variables::default();

        // Account scope: pass_env, terraform.env, then `variables`.
        let t = &raw.terraform;
        for (i, name) in t.pass_env.iter().enumerate() {
            let key = format!("terraform.pass_env[{i}]");
            if !super::valid_env_name(name) {
                self.err(
                    key,
                    format!("`{name}` is not a valid environment variable name"),
                );
            } else if secret_vars.contains(name) {
                self.err(
                    key,
                    format!(
                        "{name} holds one of gantry's own secrets and is never passed to terraform"
                    ),
                );
            } else if let Some(why) = reserved(name) {
                self.err(key, why);
            } else {
                match (self.env)(name) {
                    Some(v) => out.account.push(Variable {
                        name: name.clone(),
                        value: VariableValue::new(v, Redactor::looks_secret(name)),
                        phases: PhaseSet::ALL,
                        source: VariableSource::PassEnv,
                        key,
                    }),
                    None => out.unset_pass_env.push(name.clone()),
                }
            }
        }
        for (name, value) in &t.env {
            let key = format!("terraform.env.{name}");
            if !super::valid_env_name(name) {
                self.err(key, "not a valid environment variable name");
            } else if let Some(why) = reserved(name) {
                self.err(key, why);
            } else {
                out.account.push(Variable {
                    name: name.clone(),
                    value: VariableValue::new(value.clone(), Redactor::looks_secret(name)),
                    phases: PhaseSet::ALL,
                    source: VariableSource::TerraformEnv,
                    key,
                });
            }
        }
        let own = self.scope_variables("variables", &raw.variables, &secret_vars, &secret_files);
        out.account.extend(own);
        self.check_duplicates(&out.account);

        for (i, e) in raw.environments.iter().enumerate() {
            let vars = self.scope_variables(
                &format!("environments[{i}].variables"),
                &e.variables,
                &secret_vars,
                &secret_files,
            );
            self.check_duplicates(&vars);
            if !vars.is_empty() {
                out.environments.entry(e.name.clone()).or_insert(vars);
            }
        }
        for (i, w) in raw.workspaces.iter().enumerate() {
            let vars = self.scope_variables(
                &format!("workspaces[{i}].variables"),
                &w.variables,
                &secret_vars,
                &secret_files,
            );
            self.check_duplicates(&vars);
            if !vars.is_empty() {
                out.workspaces.entry(w.name.clone()).or_insert(vars);
            }
        }
        out
    }

    /// The variables of one scope, written at `prefix` (e.g. `variables`).
    fn scope_variables(
        &mut self,
        prefix: &str,
        raw: &[RawVariable],
        secret_vars: &HashSet<String>,
        secret_files: &HashSet<PathBuf>,
    ) -> Vec<Variable> {
        let mut out = Vec::new();
        for (i, v) in raw.iter().enumerate() {
            let at = format!("{prefix}[{i}]");
            if let Some(var) = self.variable(&at, v, secret_vars, secret_files) {
                out.push(var);
            }
        }
        out
    }

    fn variable(
        &mut self,
        at: &str,
        v: &RawVariable,
        secret_vars: &HashSet<String>,
        secret_files: &HashSet<PathBuf>,
    ) -> Option<Variable> {
        let k = |field: &str| format!("{at}.{field}");
        let before = self.errors.len();

        let name = if v.terraform_var {
            if v.name.starts_with("TF_VAR_") {
                self.err(
                    k("name"),
                    format!(
                        "with terraform_var: true give the terraform variable's own name (`{}`); gantry adds TF_VAR_",
                        &v.name["TF_VAR_".len()..]
                    ),
                );
            } else if !valid_terraform_identifier(&v.name) {
                self.err(
                    k("name"),
                    format!(
                        "`{}` is not a valid terraform variable name (letters, digits, `_`, `-`; starting with a letter or `_`)",
                        v.name
                    ),
                );
            }
            format!("TF_VAR_{}", v.name)
        } else {
            if !super::valid_env_name(&v.name) {
                self.err(
                    k("name"),
                    format!(
                        "`{}` is not a valid environment variable name (letters, digits, `_`; not starting with a digit); for a terraform variable set terraform_var: true",
                        v.name
                    ),
                );
            } else if let Some(why) = reserved(&v.name) {
                self.err(k("name"), why);
            }
            v.name.clone()
        };

        let phases = match &v.phases {
            None => PhaseSet::ALL,
            Some(list) if list.is_empty() => {
                self.err(
                    k("phases"),
                    "name at least one phase (plan, apply, drift), or leave phases out for all",
                );
                PhaseSet::empty()
            }
            Some(list) => {
                let mut set = PhaseSet::empty();
                for (j, p) in list.iter().enumerate() {
                    match Phase::parse(p) {
                        Some(p) => set.insert(p),
                        None => self.err(
                            format!("{at}.phases[{j}]"),
                            format!("unknown phase `{p}` (expected plan, apply or drift)"),
                        ),
                    }
                }
                set
            }
        };

        let sources: Vec<&str> = [
            v.from_env.as_ref().map(|_| "from_env"),
            v.from_file.as_ref().map(|_| "from_file"),
            v.value.as_ref().map(|_| "value"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let resolved = match (sources.len(), &v.from_env, &v.from_file, &v.value) {
            (0, ..) => {
                self.err(at, "set one of from_env, from_file or value");
                None
            }
            (1, Some(var), _, _) => {
                if secret_vars.contains(var) {
                    self.err(
                        k("from_env"),
                        format!(
                            "{var} holds one of gantry's own secrets and is never passed to terraform"
                        ),
                    );
                    None
                } else {
                    self.env_value(&k("from_env"), var)
                        .map(|val| (val, VariableSource::Env(var.clone()), true))
                }
            }
            (1, _, Some(file), _) => {
                let path = PathBuf::from(file);
                if is_daemon_secret_file(secret_files, &path) {
                    self.err(
                        k("from_file"),
                        format!("`{file}` holds one of gantry's own secrets (a GitHub App key) and is never passed to terraform"),
                    );
                    None
                } else {
                    self.file_value(&k("from_file"), &path)
                        .map(|val| (val, VariableSource::File(path), true))
                }
            }
            (1, _, _, Some(value)) => self
                .literal(&k("value"), value)
                .map(|val| (val, VariableSource::Literal, false)),
            _ => {
                self.err(
                    at,
                    format!(
                        "set exactly one of from_env, from_file and value (found {})",
                        sources.join(" and ")
                    ),
                );
                None
            }
        };

        if self.errors.len() != before {
            return None;
        }
        let (value, source, sensitive_by_default) = resolved?;
        Some(Variable {
            name,
            value: VariableValue::new(value, v.sensitive.unwrap_or(sensitive_by_default)),
            phases,
            source,
            key: at.to_string(),
        })
    }

    /// A variable's value from the daemon's environment.
    fn env_value(&mut self, key: &str, var: &str) -> Option<String> {
        if !super::valid_env_name(var) {
            self.err(
                key,
                format!("`{var}` is not a valid environment variable name"),
            );
            return None;
        }
        match (self.env)(var) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => {
                self.err(key, format!("{var} is empty"));
                None
            }
            None => {
                self.err(key, format!("{var} is not set"));
                None
            }
        }
    }

    /// A variable's value from a file: its UTF-8 text, without one trailing
    /// newline.
    fn file_value(&mut self, key: &str, path: &Path) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(&text);
                if text.is_empty() {
                    self.err(key, format!("`{}` is empty", path.display()));
                    None
                } else {
                    Some(text.to_string())
                }
            }
            Err(e) => {
                self.err(key, format!("cannot read `{}`: {e}", path.display()));
                None
            }
        }
    }

    /// A literal: strings as written, numbers and booleans as YAML prints them.
    fn literal(&mut self, key: &str, value: &serde_yaml::Value) -> Option<String> {
        use serde_yaml::Value;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.err(
                    key,
                    "must be a string, number or boolean (write a list or map for a terraform variable as a string, e.g. '[\"a\", \"b\"]')",
                );
                None
            }
        }
    }

    /// One scope may define a name again only for other phases.
    fn check_duplicates(&mut self, vars: &[Variable]) {
        for (i, v) in vars.iter().enumerate() {
            if let Some(first) = vars[..i]
                .iter()
                .find(|w| w.name == v.name && !w.phases.intersection(v.phases).is_empty())
            {
                let shared = first.phases.intersection(v.phases);
                let name_key = match v.source {
                    VariableSource::PassEnv | VariableSource::TerraformEnv => v.key.clone(),
                    _ => format!("{}.name", v.key),
                };
                self.err(
                    name_key,
                    format!(
                        "duplicate variable {} for {shared} (also at {}); one scope may define a name again only for other phases",
                        v.name, first.key
                    ),
                );
            }
        }
    }
}
