//! The configuration file's shape, exactly as written, before validation.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, ConfigErrors};

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_api_token_env")]
    pub api_token_env: String,
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub state_backend_url: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub terraform: RawTerraform,
    #[serde(default)]
    pub runner: RawRunner,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub pricing_dir: Option<String>,
    #[serde(default)]
    pub allow_fork_prs: bool,
    #[serde(default)]
    pub drift_jitter: Option<String>,
    #[serde(default)]
    pub shutdown_grace: Option<String>,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub workspaces: Vec<RawWorkspace>,
    #[serde(default)]
    pub policy_groups: Vec<RawPolicyGroup>,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    /// Self-hosted agent pools: `gantry agent` processes holding a pool's
    /// token run the terraform of workspaces that name the pool.
    #[serde(default)]
    pub agent_pools: Vec<RawAgentPool>,
    /// Account-scope variables: every workspace inherits them.
    #[serde(default)]
    pub variables: Vec<RawVariable>,
}

/// One variable for terraform runs, at whichever scope it is written.
#[derive(Debug, Deserialize)]
pub struct RawVariable {
    pub name: String,
    /// `name` is a terraform input variable, set as `TF_VAR_<name>`.
    #[serde(default)]
    pub terraform_var: bool,
    #[serde(default)]
    pub from_env: Option<String>,
    #[serde(default)]
    pub from_file: Option<String>,
    /// A literal: a string, number or boolean.
    #[serde(default)]
    pub value: Option<serde_yaml::Value>,
    #[serde(default)]
    pub sensitive: Option<bool>,
    #[serde(default)]
    pub phases: Option<Vec<String>>,
}

/// One agent pool: its name and the variable holding its token.
#[derive(Debug, Deserialize)]
pub struct RawAgentPool {
    pub name: String,
    pub token_env: String,
}

/// Settings every workspace of an environment inherits (a workspace's own win).
#[derive(Debug, Deserialize)]
pub struct RawEnvironment {
    pub name: String,
    #[serde(default)]
    pub agent_pool: Option<String>,
    #[serde(default)]
    pub drift_schedule: Option<String>,
    #[serde(default)]
    pub drift_mode: Option<String>,
    #[serde(default)]
    pub drift_notify: Option<String>,
    #[serde(default)]
    pub drift_webhook_url: Option<String>,
    #[serde(default)]
    pub variables: Vec<RawVariable>,
}

#[derive(Debug, Deserialize)]
pub struct RawPolicyGroup {
    pub name: String,
    pub provider: String,
    pub repo: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default = "default_dir")]
    pub path: String,
    pub environments: Vec<String>,
}

/// The durable queues' claims.
#[derive(Debug, Default, Deserialize)]
pub struct RawQueue {
    /// How long a claim lasts without a heartbeat, e.g. `60s`.
    #[serde(default)]
    pub lease: Option<String>,
}

/// How long old data is kept: days, and state versions by count.
#[derive(Debug, Default, Deserialize)]
pub struct RawRetention {
    #[serde(default)]
    pub plan_files_days: Option<i64>,
    #[serde(default)]
    pub logs_days: Option<i64>,
    #[serde(default)]
    pub state_versions: Option<i64>,
    #[serde(default)]
    pub events_days: Option<i64>,
}

/// How terraform processes run.
#[derive(Debug, Default, Deserialize)]
pub struct RawRunner {
    /// `on` (default) or `off`.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Extra paths sandboxed runs may read and execute (tool chains, the
    /// targets of a wrapper `terraform.bin`).
    #[serde(default)]
    pub allow_read: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTerraform {
    #[serde(default = "default_terraform_bin")]
    pub bin: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub cli_config_file: Option<String>,
    #[serde(default)]
    pub pass_env: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Default for RawTerraform {
    fn default() -> Self {
        RawTerraform {
            bin: default_terraform_bin(),
            timeout: default_timeout(),
            cli_config_file: None,
            pass_env: Vec::new(),
            env: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RawProvider {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub git_url: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub app_id: Option<u64>,
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    pub webhook_secret_env: String,
    #[serde(default)]
    pub webhook_user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawWorkspace {
    pub name: String,
    pub environment: String,
    pub provider: String,
    pub repo: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default = "default_dir")]
    pub dir: String,
    #[serde(default)]
    pub trigger_patterns: Vec<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub auto_apply: bool,
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub apply_requirements: Vec<String>,
    #[serde(default)]
    pub drift_mode: Option<String>,
    #[serde(default)]
    pub drift_schedule: Option<String>,
    #[serde(default)]
    pub drift_notify: Option<String>,
    #[serde(default)]
    pub drift_webhook_url: Option<String>,
    #[serde(default)]
    pub agent_pool: Option<String>,
    #[serde(default)]
    pub variables: Vec<RawVariable>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> String {
    "./.gantry".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_api_token_env() -> String {
    "GANTRY_API_TOKEN".into()
}
fn default_terraform_bin() -> String {
    "terraform".into()
}
fn default_timeout() -> String {
    "1h".into()
}
fn default_branch() -> String {
    "main".into()
}
fn default_dir() -> String {
    ".".into()
}

/// Converts serde_ignored's path (`workspaces.0.foo`, `?` for options) to the
/// notation used in messages (`workspaces[0].foo`).
fn key_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_of(parent)),
        Path::Map { parent, key } => {
            let p = key_of(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

/// Parses YAML into the raw shape. Reports every unknown key, or the first
/// structural error (wrong type, missing field, bad YAML) with its key and line.
pub fn parse(file: &str, text: &str) -> Result<RawConfig, ConfigErrors> {
    parse_yaml(file, text)
}

/// Parses a YAML file into `T`, reporting every unknown key, or the first
/// structural error, with the file and the key.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigErrors> {
    let mut unknown: Vec<String> = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(key_of(&p));
    let ignored = serde_ignored::Deserializer::new(de, &mut on_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    let mut errors: Vec<ConfigError> = unknown
        .iter()
        .map(|key| ConfigError {
            file: file.to_string(),
            key: key.clone(),
            message: "unknown key".to_string(),
        })
        .collect();
    match result {
        Ok(raw) if errors.is_empty() => Ok(raw),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.to_string();
            // serde_yaml already prefixes the path; the key is shown once.
            if let Some(rest) = message.strip_prefix(&format!("{key}: ")) {
                message = rest.to_string();
            }
            // serde_yaml appends " at line L column C"; keep it, it helps find the spot.
            if message.is_empty() {
                message = "invalid value".to_string();
            }
            errors.push(ConfigError {
                file: file.to_string(),
                key: if key == "." { String::new() } else { key },
                message,
            });
            Err(ConfigErrors(errors))
        }
    }
}
