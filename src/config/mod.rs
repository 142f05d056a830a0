//! Daemon configuration and the workspace catalog.
//!
//! A YAML file is read into the `raw` structs (exactly the file's shape), then
//! validated into [`Config`]: typed values, secrets resolved from the environment
//! variables the file names, and every problem collected as a [`ConfigError`] that
//! names the file, the key and the reason. Unknown keys are errors too; all of them
//! are reported, not only the first.

pub mod drift;
pub mod pricing;
mod raw;
pub mod reload;
mod variables;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use secrecy::SecretString;

pub use raw::{parse_yaml, RawConfig};
pub use variables::{
    Phase, PhaseSet, ResolvedVariable, Scope, Variable, VariableSource, VariableValue, Variables,
};

/// Reads an environment variable. Config loading takes this instead of touching
/// the process environment so tests can supply their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// An [`EnvLookup`] a long-lived process keeps (to load the config again on
/// reload, and to resolve variables for each run).
pub type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment, for production use.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Every problem found in one configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Which VCS a provider talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Github,
    Gitlab,
    Bitbucket,
    AzureDevops,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Github,
        ProviderKind::Gitlab,
        ProviderKind::Bitbucket,
        ProviderKind::AzureDevops,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::Bitbucket => "bitbucket",
            ProviderKind::AzureDevops => "azure_devops",
        }
    }

    fn parse(s: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The public service's API, when there is one.
    fn default_api_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Github => Some("https://api.github.com"),
            ProviderKind::Gitlab => Some("https://gitlab.com/api/v4"),
            ProviderKind::Bitbucket => Some("https://api.bitbucket.org/2.0"),
            // Always an organization (or collection) URL.
            ProviderKind::AzureDevops => None,
        }
    }

    fn default_git_url(self, api_url: &str) -> String {
        match self {
            ProviderKind::Github => "https://github.com/{repo}.git".into(),
            ProviderKind::Gitlab => "https://gitlab.com/{repo}.git".into(),
            ProviderKind::Bitbucket => "https://bitbucket.org/{repo}.git".into(),
            ProviderKind::AzureDevops => format!("{api_url}/{{project}}/_git/{{name}}"),
        }
    }
}

/// Expands a clone URL template: `{repo}` is the whole repository path,
/// `{name}` its last segment and `{project}` everything before it.
pub fn expand_git_url(template: &str, repo: &str) -> String {
    let (project, name) = repo.rsplit_once('/').unwrap_or(("", repo));
    template
        .replace("{repo}", repo)
        .replace("{project}", project)
        .replace("{name}", name)
}

/// How gantry authenticates to a provider's API and git remotes.
#[derive(Clone)]
pub enum ProviderAuth {
    Token(SecretString),
    App {
        app_id: u64,
        private_key: SecretString,
    },
}

impl fmt::Debug for ProviderAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderAuth::Token(_) => f.write_str("Token([redacted])"),
            ProviderAuth::App { app_id, .. } => write!(f, "App {{ app_id: {app_id} }}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub kind: ProviderKind,
    /// API base URL without a trailing slash.
    pub api_url: String,
    /// Clone URL template; `{repo}` is replaced with `owner/name`.
    pub git_url: String,
    pub auth: ProviderAuth,
    /// Bitbucket: the user the token (an app password or API token) belongs
    /// to, for HTTP Basic auth; without it the token is a bearer access token.
    pub username: Option<String>,
    /// The webhook secret; for Azure DevOps the Basic auth password.
    pub webhook_secret: SecretString,
    /// Azure DevOps: the Basic auth user service hooks are configured with.
    pub webhook_user: Option<String>,
}

impl ProviderConfig {
    pub fn clone_url(&self, repo: &str) -> String {
        expand_git_url(&self.git_url, repo)
    }
}

/// A path inside a repository that cannot escape it. Stored normalized, with
/// `/` separators and no leading `./`; the repository root is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RepoPath(String);

impl RepoPath {
    pub fn root() -> Self {
        RepoPath(String::new())
    }

    /// Normalizes `raw` (a relative path, `/` separated). `..` may move up inside
    /// the repository but never above its root.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with('/') || raw.starts_with('\\') {
            return Err(format!(
                "`{raw}` is absolute; give a path relative to the repository root"
            ));
        }
        if raw.contains('\\') {
            return Err(format!("`{raw}` contains `\\`; use `/` as the separator"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!("`{raw}` escapes the repository"));
                    }
                }
                p => parts.push(p),
            }
        }
        Ok(RepoPath(parts.join("/")))
    }

    /// `base` joined with a relative `rel` (as a module source), normalized.
    pub fn join(&self, rel: &str) -> Result<Self, String> {
        if self.0.is_empty() {
            Self::parse(rel)
        } else {
            Self::parse(&format!("{}/{}", self.0, rel))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `file` (a repository-relative path) lies inside this directory.
    pub fn contains(&self, file: &str) -> bool {
        self.0.is_empty()
            || (file.len() > self.0.len()
                && file.starts_with(&self.0)
                && file.as_bytes()[self.0.len()] == b'/')
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub name: String,
    pub environment: String,
    pub provider: String,
    pub repo: String,
    pub branch: String,
    pub dir: RepoPath,
    pub trigger_patterns: Vec<String>,
    pub triggers: GlobSet,
    /// Per-workspace override of `terraform.timeout`.
    pub timeout: Option<Duration>,
    /// Apply merged changes without a confirmation.
    pub auto_apply: bool,
    pub workflow: Workflow,
    /// Checked through the provider before `/gantry apply` runs.
    pub apply_requirements: Vec<ApplyRequirement>,
    /// How drift checks plan.
    pub drift_mode: drift::DriftMode,
    /// When drift checks run (own or inherited from the environment).
    pub drift_schedule: Option<drift::DriftSchedule>,
    /// Where drift is reported besides the API.
    pub drift_notify: Option<drift::DriftNotify>,
    /// The agent pool whose agents run this workspace's terraform (own or
    /// inherited from the environment); `None`: the local runner.
    pub agent_pool: Option<String>,
}

/// When a workspace's changes are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workflow {
    /// On merge (a push to the tracked branch); the default.
    ApplyOnMerge,
    /// From the pull request, by a `/gantry apply` comment (Atlantis-style).
    ApplyBeforeMerge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyRequirement {
    Approved,
    Mergeable,
}

impl ApplyRequirement {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyRequirement::Approved => "approved",
            ApplyRequirement::Mergeable => "mergeable",
        }
    }
}

impl Workspace {
    /// Whether the workspace tracks `repo` on `provider` (repository names compare
    /// case-insensitively, as GitHub's do).
    pub fn tracks_repo(&self, provider: &str, repo: &str) -> bool {
        self.provider == provider && self.repo.eq_ignore_ascii_case(repo)
    }
}

#[derive(Debug, Clone)]
pub struct TerraformConfig {
    pub bin: String,
    pub timeout: Duration,
    /// `TF_CLI_CONFIG_FILE` for runs; when unset, the daemon's own variable (if
    /// any) is passed on.
    pub cli_config_file: Option<PathBuf>,
    /// Names of daemon environment variables passed through to terraform.
    /// Also folded into [`Config::variables`] as account-scope variables (all
    /// phases); new code reads those, through [`Config::variables_for`].
    pub pass_env: Vec<String>,
    /// Fixed variables set for every run. Also folded into
    /// [`Config::variables`] as account-scope variables (all phases).
    pub env: BTreeMap<String, String>,
}

/// Whether terraform runs in the sandbox (`runner.sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Every terraform process is sandboxed; `serve` refuses to start when the
    /// kernel cannot do it.
    On,
    /// Runs are not isolated; said at start and in every PR comment.
    Off,
}

/// The durable queues (events to dispatch, runs to work).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a claim on an event or run lasts without a heartbeat.
    /// Heartbeats renew it every quarter of it; a worker that could not renew
    /// for three quarters of it stops its terraform, and once it has run out
    /// another replica takes the work back.
    pub lease: Duration,
}

/// The lease when `queue.lease` is not set.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How long a draining replica waits for the reports and dispatches it has in
/// flight before abandoning them: a shutdown never waits on VCS retries (an
/// abandoned dispatch is handed back and redone by another replica).
pub const DRAIN_IN_FLIGHT: Duration = Duration::from_secs(10);

/// How long old data is kept (`retention:`). What retention never deletes
/// (waiting runs, a pull request's newest runs, the current state) is in
/// `store::retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Plan files and plan JSON (they hold secrets in the clear): 14 days.
    pub plan_files: Duration,
    /// Run logs: 90 days.
    pub logs: Duration,
    /// The newest state versions kept per workspace: 100.
    pub state_versions: i64,
    /// Webhook deliveries, once dispatched: 30 days.
    pub events: Duration,
}

/// A self-hosted agent pool (`agent_pools:`): its agents authenticate with
/// its token, and get only the jobs of workspaces that name it.
#[derive(Debug, Clone)]
pub struct AgentPool {
    pub name: String,
    pub token: SecretString,
}

/// The shortest pool token accepted: a guessable one would hand out jobs
/// and their credentials.
pub const MIN_POOL_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub sandbox: SandboxMode,
    /// Extra paths sandboxed runs may read and execute.
    pub allow_read: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from, as given.
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub concurrency: usize,
    pub api_token: SecretString,
    /// Base URL under which users reach this daemon, for links in statuses.
    pub public_url: Option<String>,
    /// Base URL at which runs' terraform reaches gantry's state backend;
    /// `None`: this process's own listen address.
    pub state_backend_url: Option<String>,
    /// Names this process in the claims it holds (shown in logs and rows).
    /// Defaults to the host name plus a random suffix, new for each process,
    /// so two processes never share an id; claims themselves are told apart
    /// by their lease token, whatever the id.
    pub node_id: String,
    pub queue: QueueConfig,
    pub terraform: TerraformConfig,
    pub runner: RunnerConfig,
    pub retention: RetentionConfig,
    /// Files gantry's configuration names that hold secrets (GitHub App keys),
    /// which a sandboxed run must never read.
    pub key_files: Vec<PathBuf>,
    /// Plan pull requests from forks (their code runs with gantry's credentials).
    pub allow_fork_prs: bool,
    /// The most a scheduled drift check is spread after its tick.
    pub drift_jitter: Duration,
    /// How long a stopping replica (SIGTERM) lets running applies finish
    /// before it interrupts them; keep it below the orchestrator's own limit
    /// (Kubernetes' `terminationGracePeriodSeconds`).
    pub shutdown_grace: Duration,
    /// The pricing catalog: the shipped one, or the files in `pricing_dir`.
    pub pricing: Arc<pricing::Catalog>,
    pub providers: Vec<ProviderConfig>,
    pub workspaces: Vec<Workspace>,
    pub policy_groups: Vec<PolicyGroupConfig>,
    pub agent_pools: Vec<AgentPool>,
    /// Variables for terraform runs at account, environment and workspace
    /// scope, values resolved; a run gets [`Config::variables_for`].
    pub variables: Variables,
}

/// A repository folder of OPA policies governing some environments.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyGroupConfig {
    pub name: String,
    pub provider: String,
    pub repo: String,
    pub branch: String,
    /// The folder holding `scalr-policy.hcl`.
    pub path: RepoPath,
    pub environments: Vec<String>,
}

impl Config {
    /// Reads and validates `path`, resolving secrets through `env`.
    pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_yaml(path, &text, env)
    }

    /// Validates YAML text as if it were the file at `path`.
    pub fn from_yaml(path: &Path, text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let raw = raw::parse(&file, text)?;
        Validator::new(file, env).validate(path, raw)
    }

    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }

    pub fn workspace(&self, name: &str) -> Option<&Workspace> {
        self.workspaces.iter().find(|w| w.name == name)
    }

    pub fn agent_pool(&self, name: &str) -> Option<&AgentPool> {
        self.agent_pools.iter().find(|p| p.name == name)
    }

    /// The variables a run of `workspace` gets for `phase`, sorted by name:
    /// the account's, the workspace's environment's and the workspace's own,
    /// the nearest scope defining a name supplying it (all its definitions,
    /// phases included), then only those listed for `phase`. An unknown
    /// workspace gets the account's only.
    pub fn variables_for(&self, workspace: &str, phase: Phase) -> Vec<ResolvedVariable> {
        let environment = self.workspace(workspace).map(|w| w.environment.as_str());
        self.variables.resolve(workspace, environment, phase)
    }

    /// Every secret value this configuration holds, for redaction: gantry's
    /// own and every sensitive variable's, at every scope.
    pub fn secret_values(&self) -> Vec<SecretString> {
        let mut out = vec![self.api_token.clone()];
        out.extend(self.agent_pools.iter().map(|p| p.token.clone()));
        out.extend(self.variables.sensitive_values());
        for p in &self.providers {
            out.push(p.webhook_secret.clone());
            match &p.auth {
                ProviderAuth::Token(t) => out.push(t.clone()),
                ProviderAuth::App { private_key, .. } => out.push(private_key.clone()),
            }
        }
        out
    }

    /// Paths a sandboxed run must never be able to read: this file, the data
    /// dir (database, other runs, mirrors), the SQLite file and key files.
    pub fn protected_paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.source.clone(), self.data_dir.clone()];
        out.extend(self.key_files.iter().cloned());
        use secrecy::ExposeSecret;
        if let Some(file) = self.database_url.expose_secret().strip_prefix("sqlite://") {
            let file = file.split('?').next().unwrap_or(file);
            out.push(PathBuf::from(file));
        }
        out
    }

    /// Names of environment variables that hold the daemon's own secrets; they
    /// must never reach terraform.
    fn daemon_secret_vars(raw: &RawConfig) -> HashSet<String> {
        let mut out = HashSet::new();
        out.insert(raw.api_token_env.clone());
        out.extend(raw.agent_pools.iter().map(|p| p.token_env.clone()));
        for p in &raw.providers {
            out.extend(p.token_env.clone());
            out.insert(p.webhook_secret_env.clone());
        }
        out
    }
}

pub type SharedConfig = Arc<arc_swap::ArcSwap<Config>>;

struct Validator<'a> {
    file: String,
    env: EnvLookup<'a>,
    errors: Vec<ConfigError>,
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl<'a> Validator<'a> {
    fn new(file: String, env: EnvLookup<'a>) -> Self {
        Validator {
            file,
            env,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Resolves a secret from the variable named at `key`.
    fn secret(&mut self, key: &str, var: &str) -> Option<SecretString> {
        if !valid_env_name(var) {
            self.err(
                key,
                format!("`{var}` is not a valid environment variable name"),
            );
            return None;
        }
        match (self.env)(var) {
            Some(v) if !v.is_empty() => Some(SecretString::from(v)),
            Some(_) => {
                self.err(key, format!("environment variable {var} is empty"));
                None
            }
            None => {
                self.err(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: &str) -> Option<Duration> {
        match humantime::parse_duration(raw) {
            Ok(d) if d.is_zero() => {
                self.err(key, "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    key,
                    format!("`{raw}` is not a duration like 30m or 1h: {e}"),
                );
                None
            }
        }
    }

    fn validate(mut self, path: &Path, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    "listen",
                    format!("`{}` is not an address like 127.0.0.1:8080", raw.listen),
                );
                None
            }
        };
        let data_dir = PathBuf::from(&raw.data_dir);
        if raw.data_dir.is_empty() {
            self.err("data_dir", "must not be empty");
        }
        let database_url = match &raw.database_url {
            Some(url) => {
                if !(url.starts_with("sqlite:")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://"))
                {
                    self.err(
                        "database_url",
                        "must start with sqlite:, postgres:// or postgresql://",
                    );
                }
                url.clone()
            }
            None => format!("sqlite://{}/gantry.db", raw.data_dir.trim_end_matches('/')),
        };
        if raw.concurrency == 0 {
            self.err("concurrency", "must be at least 1");
        }
        let api_token = self.secret("api_token_env", &raw.api_token_env.clone());
        let public_url = raw
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.err("public_url", "must start with http:// or https://");
            }
        }
        let state_backend_url = raw
            .state_backend_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &state_backend_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.err("state_backend_url", "must start with http:// or https://");
            }
        }
        let node_id = raw.node_id.clone().unwrap_or_else(default_node_id);
        let lease = match raw.queue.lease.as_deref() {
            None => Some(DEFAULT_LEASE),
            Some(l) => self.duration("queue.lease", l).and_then(|d| {
                if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                    self.err("queue.lease", format!("`{l}` must be between 1s and 1h"));
                    None
                } else {
                    Some(d)
                }
            }),
        };

        let terraform = self.terraform(&raw);
        let sandbox = match raw.runner.sandbox.as_deref() {
            None | Some("on") => SandboxMode::On,
            Some("off") => SandboxMode::Off,
            Some(other) => {
                self.err("runner.sandbox", format!("`{other}` is not `on` or `off`"));
                SandboxMode::On
            }
        };
        let mut allow_read = Vec::new();
        for (i, p) in raw.runner.allow_read.iter().enumerate() {
            let path = PathBuf::from(p);
            if !path.is_absolute() {
                self.err(
                    format!("runner.allow_read[{i}]"),
                    format!("`{p}` must be an absolute path"),
                );
            } else if path == Path::new("/") {
                self.err(
                    format!("runner.allow_read[{i}]"),
                    "`/` would give runs the whole filesystem",
                );
            } else {
                allow_read.push(path);
            }
        }
        let key_files = raw
            .providers
            .iter()
            .filter_map(|p| p.private_key_file.as_ref().map(PathBuf::from))
            .collect();
        let drift_jitter = match raw.drift_jitter.as_deref() {
            None => None,
            Some("0") | Some("0s") => Some(Duration::ZERO),
            Some(j) => self.duration("drift_jitter", j),
        };
        let shutdown_grace = match raw.shutdown_grace.as_deref() {
            None => Some(DEFAULT_SHUTDOWN_GRACE),
            Some(g) => self.duration("shutdown_grace", g),
        };
        let pricing = match &raw.pricing_dir {
            None => Some(shipped_catalog()),
            Some(dir) => match pricing::Catalog::load_dir(std::path::Path::new(dir)) {
                Ok(c) => Some(Arc::new(c)),
                Err(errors) => {
                    self.errors.extend(errors.0);
                    None
                }
            },
        };
        let providers = self.providers(&raw);
        let agent_pools = self.agent_pools(&raw);
        self.environments(&raw);
        let workspaces = self.workspaces(&raw);
        let policy_groups = self.policy_groups(&raw);
        let variables = self.variables(&raw);
        let retention = self.retention(&raw.retention);

        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        Ok(Config {
            source: path.to_path_buf(),
            listen: listen.expect("validated"),
            data_dir,
            database_url: SecretString::from(database_url),
            concurrency: raw.concurrency,
            api_token: api_token.expect("validated"),
            public_url,
            state_backend_url,
            node_id,
            queue: QueueConfig {
                lease: lease.unwrap_or(DEFAULT_LEASE),
            },
            terraform: terraform.expect("validated"),
            runner: RunnerConfig {
                sandbox,
                allow_read,
            },
            retention,
            key_files,
            pricing: pricing.expect("validated"),
            allow_fork_prs: raw.allow_fork_prs,
            drift_jitter: drift_jitter.unwrap_or(drift::MAX_JITTER),
            shutdown_grace: shutdown_grace.expect("validated"),
            providers,
            workspaces,
            policy_groups,
            agent_pools,
            variables,
        })
    }

    /// `agent_pools:`: unique valid names, each token set and long enough.
    fn agent_pools(&mut self, raw: &RawConfig) -> Vec<AgentPool> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, p) in raw.agent_pools.iter().enumerate() {
            let k = |field: &str| format!("agent_pools[{i}].{field}");
            if !valid_name(&p.name, 64) {
                self.err(
                    k("name"),
                    format!(
                        "`{}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 64)",
                        p.name
                    ),
                );
                continue;
            }
            if !seen.insert(p.name.clone()) {
                self.err(k("name"), format!("duplicate agent pool `{}`", p.name));
                continue;
            }
            let Some(token) = self.secret(&k("token_env"), &p.token_env) else {
                continue;
            };
            use secrecy::ExposeSecret;
            if token.expose_secret().chars().count() < MIN_POOL_TOKEN_LEN {
                self.err(
                    k("token_env"),
                    format!(
                        "the token in {} is too short: at least {MIN_POOL_TOKEN_LEN} characters",
                        p.token_env
                    ),
                );
                continue;
            }
            out.push(AgentPool {
                name: p.name.clone(),
                token,
            });
        }
        out
    }

    /// An `agent_pool:` at `key` must name a pool of `agent_pools:`.
    fn known_pool(&mut self, raw: &RawConfig, key: String, pool: &str) {
        if !raw.agent_pools.iter().any(|p| p.name == pool) {
            self.err(
                key,
                format!("unknown agent pool `{pool}` (not in agent_pools)"),
            );
        }
    }

    fn retention(&mut self, raw: &raw::RawRetention) -> RetentionConfig {
        let mut count = |key: &str, value: Option<i64>, default: i64| match value {
            None => default,
            Some(n) if n >= 1 => n,
            Some(n) => {
                self.err(
                    format!("retention.{key}"),
                    format!("{n} must be at least 1"),
                );
                default
            }
        };
        let day = |n: i64| Duration::from_secs(n as u64 * 86_400);
        RetentionConfig {
            plan_files: day(count("plan_files_days", raw.plan_files_days, 14)),
            logs: day(count("logs_days", raw.logs_days, 90)),
            state_versions: count("state_versions", raw.state_versions, 100),
            events: day(count("events_days", raw.events_days, 30)),
        }
    }

    fn terraform(&mut self, raw: &RawConfig) -> Option<TerraformConfig> {
        let t = &raw.terraform;
        if t.bin.trim().is_empty() {
            self.err("terraform.bin", "must name a terraform or tofu binary");
        }
        let timeout = self.duration("terraform.timeout", &t.timeout);
        // pass_env and env are checked with the other variables.
        Some(TerraformConfig {
            bin: t.bin.clone(),
            timeout: timeout?,
            cli_config_file: t.cli_config_file.as_ref().map(PathBuf::from),
            pass_env: t.pass_env.clone(),
            env: t.env.clone(),
        })
    }

    fn providers(&mut self, raw: &RawConfig) -> Vec<ProviderConfig> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, p) in raw.providers.iter().enumerate() {
            let k = |field: &str| format!("providers[{i}].{field}");
            let before = self.errors.len();
            if !valid_name(&p.id, 64) {
                self.err(
                    k("id"),
                    format!(
                        "`{}` is not a valid id (letters, digits, `-`, `_`, `.`)",
                        p.id
                    ),
                );
            } else if !seen.insert(p.id.clone()) {
                self.err(k("id"), format!("duplicate provider id `{}`", p.id));
            }
            let supported = ProviderKind::ALL.map(ProviderKind::as_str).join(", ");
            let kind = ProviderKind::parse(&p.kind);
            if kind.is_none() {
                self.err(
                    k("kind"),
                    format!(
                        "unknown provider kind `{}` (supported: {supported})",
                        p.kind
                    ),
                );
            }
            let api_url = match (&p.api_url, kind.and_then(ProviderKind::default_api_url)) {
                (Some(url), _) => url.trim_end_matches('/').to_string(),
                (None, Some(default)) => default.to_string(),
                (None, None) => {
                    if kind.is_some() {
                        self.err(
                            k("api_url"),
                            "required for azure_devops: the organization URL, e.g. https://dev.azure.com/ORG",
                        );
                    }
                    String::new()
                }
            };
            if !api_url.is_empty()
                && http::Uri::try_from(api_url.as_str()).map_or(true, |u| u.scheme().is_none())
            {
                self.err(k("api_url"), format!("`{api_url}` is not an absolute URL"));
            }
            let git_url = p.git_url.clone().unwrap_or_else(|| {
                kind.unwrap_or(ProviderKind::Github)
                    .default_git_url(&api_url)
            });
            if !git_url.contains("{repo}") && !git_url.contains("{name}") {
                self.err(
                    k("git_url"),
                    "must contain `{repo}` (the repository path) or `{project}`/`{name}`",
                );
            }
            let azure = kind == Some(ProviderKind::AzureDevops);
            match (&p.webhook_user, azure) {
                (None, true) => self.err(
                    k("webhook_user"),
                    "required for azure_devops: the Basic auth user of the service hooks",
                ),
                (Some(_), false) => self.err(
                    k("webhook_user"),
                    "only azure_devops providers authenticate webhooks with a user",
                ),
                _ => {}
            }
            if p.username.is_some() && kind != Some(ProviderKind::Bitbucket) {
                self.err(
                    k("username"),
                    "only bitbucket providers take a username (for an app password or API token)",
                );
            }
            if (p.app_id.is_some() || p.private_key_file.is_some())
                && kind.is_some_and(|k| k != ProviderKind::Github)
            {
                self.err(
                    k("app_id"),
                    "GitHub App authentication is only for github providers; use token_env",
                );
            }
            let auth = match (&p.token_env, p.app_id, &p.private_key_file) {
                (Some(var), None, None) => {
                    self.secret(&k("token_env"), var).map(ProviderAuth::Token)
                }
                (None, Some(app_id), Some(file)) => match std::fs::read_to_string(file) {
                    Ok(pem) if jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).is_ok() => {
                        Some(ProviderAuth::App {
                            app_id,
                            private_key: SecretString::from(pem),
                        })
                    }
                    Ok(_) => {
                        self.err(
                            k("private_key_file"),
                            format!("`{file}` does not hold an RSA private key in PEM format"),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(k("private_key_file"), format!("cannot read `{file}`: {e}"));
                        None
                    }
                },
                (None, Some(_), None) => {
                    self.err(k("private_key_file"), "required with app_id");
                    None
                }
                (None, None, Some(_)) => {
                    self.err(k("app_id"), "required with private_key_file");
                    None
                }
                (None, None, None) => {
                    self.err(
                        k("token_env"),
                        "set token_env, or app_id and private_key_file",
                    );
                    None
                }
                (Some(_), _, _) => {
                    self.err(
                        k("token_env"),
                        "set either token_env or app_id and private_key_file, not both",
                    );
                    None
                }
            };
            let webhook_secret = self.secret(&k("webhook_secret_env"), &p.webhook_secret_env);
            if self.errors.len() == before {
                out.push(ProviderConfig {
                    id: p.id.clone(),
                    kind: kind.expect("validated"),
                    api_url,
                    git_url,
                    auth: auth.expect("validated"),
                    username: p.username.clone(),
                    webhook_secret: webhook_secret.expect("validated"),
                    webhook_user: p.webhook_user.clone(),
                });
            }
        }
        out
    }

    fn policy_groups(&mut self, raw: &RawConfig) -> Vec<PolicyGroupConfig> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let known: HashSet<&str> = raw.providers.iter().map(|p| p.id.as_str()).collect();
        for (i, g) in raw.policy_groups.iter().enumerate() {
            let k = |field: &str| format!("policy_groups[{i}].{field}");
            let before = self.errors.len();
            if !valid_name(&g.name, 64) {
                self.err(k("name"), format!("`{}` is not a valid name", g.name));
            } else if !seen.insert(g.name.clone()) {
                self.err(
                    k("name"),
                    format!("duplicate policy group name `{}`", g.name),
                );
            }
            if !known.contains(g.provider.as_str()) {
                self.err(
                    k("provider"),
                    format!("unknown provider id `{}`", g.provider),
                );
            }
            if g.repo.split('/').filter(|s| !s.is_empty()).count() < 2 {
                self.err(
                    k("repo"),
                    format!("`{}` is not a repository like owner/name", g.repo),
                );
            }
            let path = match RepoPath::parse(&g.path) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.err(k("path"), e);
                    None
                }
            };
            if g.environments.is_empty() {
                self.err(k("environments"), "name at least one environment");
            }
            if self.errors.len() == before {
                out.push(PolicyGroupConfig {
                    name: g.name.clone(),
                    provider: g.provider.clone(),
                    repo: g.repo.clone(),
                    branch: g.branch.clone(),
                    path: path.expect("validated"),
                    environments: g.environments.clone(),
                });
            }
        }
        out
    }

    fn environments(&mut self, raw: &RawConfig) {
        let mut seen = HashSet::new();
        for (i, e) in raw.environments.iter().enumerate() {
            if !seen.insert(e.name.clone()) {
                self.err(
                    format!("environments[{i}].name"),
                    format!("duplicate environment `{}`", e.name),
                );
            }
            if let Some(s) = &e.drift_schedule {
                if let Err(err) = drift::DriftSchedule::parse(s) {
                    self.err(format!("environments[{i}].drift_schedule"), err);
                }
            }
            if let Some(n) = &e.drift_notify {
                if !matches!(n.as_str(), "issue" | "webhook") {
                    self.err(
                        format!("environments[{i}].drift_notify"),
                        format!("unknown drift_notify `{n}` (expected issue or webhook)"),
                    );
                }
            }
            if let Some(pool) = &e.agent_pool {
                self.known_pool(raw, format!("environments[{i}].agent_pool"), pool);
            }
            if let Some(m) = &e.drift_mode {
                if drift::DriftMode::parse(m).is_none() {
                    self.err(
                        format!("environments[{i}].drift_mode"),
                        format!("unknown drift_mode `{m}` (expected refresh_only or plan)"),
                    );
                }
            }
        }
    }

    fn workspaces(&mut self, raw: &RawConfig) -> Vec<Workspace> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let known: HashSet<&str> = raw.providers.iter().map(|p| p.id.as_str()).collect();
        for (i, w) in raw.workspaces.iter().enumerate() {
            let k = |field: &str| format!("workspaces[{i}].{field}");
            let before = self.errors.len();
            if !valid_name(&w.name, 64) {
                self.err(
                    k("name"),
                    format!(
                        "`{}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 64)",
                        w.name
                    ),
                );
            } else if !seen.insert(w.name.clone()) {
                self.err(k("name"), format!("duplicate workspace name `{}`", w.name));
            }
            if !valid_name(&w.environment, 64) {
                self.err(
                    k("environment"),
                    format!("`{}` is not a valid environment name", w.environment),
                );
            }
            if !known.contains(w.provider.as_str()) {
                self.err(
                    k("provider"),
                    format!("unknown provider id `{}`", w.provider),
                );
            }
            let segments: Vec<&str> = w.repo.split('/').collect();
            let kind = raw
                .providers
                .iter()
                .find(|p| p.id == w.provider)
                .and_then(|p| ProviderKind::parse(&p.kind));
            if segments.len() < 2
                || segments
                    .iter()
                    .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                self.err(
                    k("repo"),
                    format!("`{}` is not a repository like owner/name", w.repo),
                );
            } else if segments.len() > 2 {
                // GitLab groups nest; the others have exactly one slash.
                let shape = match kind {
                    Some(ProviderKind::Bitbucket) => {
                        Some("a Bitbucket repository like workspace/repo_slug")
                    }
                    Some(ProviderKind::AzureDevops) => {
                        Some("an Azure DevOps repository like project/repository")
                    }
                    Some(ProviderKind::Github) => Some("a repository like owner/name"),
                    Some(ProviderKind::Gitlab) | None => None,
                };
                if let Some(shape) = shape {
                    self.err(k("repo"), format!("`{}` is not {shape}", w.repo));
                }
            }
            if w.branch.trim().is_empty() {
                self.err(k("branch"), "must not be empty");
            }
            let dir = match RepoPath::parse(&w.dir) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(k("dir"), e);
                    None
                }
            };
            let mut globs = GlobSetBuilder::new();
            for (j, pat) in w.trigger_patterns.iter().enumerate() {
                match Glob::new(pat) {
                    Ok(g) => {
                        globs.add(g);
                    }
                    Err(e) => self.err(
                        format!("workspaces[{i}].trigger_patterns[{j}]"),
                        format!("invalid glob `{pat}`: {}", e.kind()),
                    ),
                }
            }
            let workflow = match w.workflow.as_deref() {
                None | Some("apply_on_merge") => Workflow::ApplyOnMerge,
                Some("apply_before_merge") => Workflow::ApplyBeforeMerge,
                Some(other) => {
                    self.err(
                        k("workflow"),
                        format!("unknown workflow `{other}` (expected apply_on_merge or apply_before_merge)"),
                    );
                    Workflow::ApplyOnMerge
                }
            };
            let env = raw.environments.iter().find(|e| e.name == w.environment);
            let (schedule_key, schedule_raw) = match (
                &w.drift_schedule,
                env.and_then(|e| e.drift_schedule.as_ref()),
            ) {
                (Some(s), _) => (k("drift_schedule"), Some(s)),
                (None, Some(s)) => {
                    let j = raw
                        .environments
                        .iter()
                        .position(|e| e.name == w.environment)
                        .unwrap_or(0);
                    (format!("environments[{j}].drift_schedule"), Some(s))
                }
                (None, None) => (String::new(), None),
            };
            let drift_notify = match (
                w.drift_notify.as_deref(),
                env.and_then(|e| e.drift_notify.as_deref()),
            ) {
                (None, None) => None,
                (own, inherited) => {
                    let key = if own.is_some() {
                        k("drift_notify")
                    } else {
                        let j = raw
                            .environments
                            .iter()
                            .position(|e| e.name == w.environment)
                            .unwrap_or(0);
                        format!("environments[{j}].drift_notify")
                    };
                    let url = w
                        .drift_webhook_url
                        .clone()
                        .or_else(|| env.and_then(|e| e.drift_webhook_url.clone()));
                    match own.or(inherited) {
                        Some("issue") => Some(drift::DriftNotify::Issue),
                        Some("webhook") => match url {
                            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                                Some(drift::DriftNotify::Webhook(u))
                            }
                            _ => {
                                self.err(
                                    key,
                                    "webhook needs drift_webhook_url (an http:// or https:// URL)",
                                );
                                None
                            }
                        },
                        // An environment's bad value is reported once, with the environment.
                        Some(_) if own.is_none() => None,
                        Some(other) => {
                            self.err(
                                key,
                                format!(
                                    "unknown drift_notify `{other}` (expected issue or webhook)"
                                ),
                            );
                            None
                        }
                        None => None,
                    }
                }
            };
            let inherited = w.drift_schedule.is_none();
            let drift_schedule = match schedule_raw {
                Some(s) => match drift::DriftSchedule::parse(s) {
                    Ok(p) => Some(p),
                    // An environment's bad schedule is reported once, with the environment.
                    Err(_) if inherited => None,
                    Err(e) => {
                        self.err(schedule_key, e);
                        None
                    }
                },
                None => None,
            };
            let drift_mode = match w
                .drift_mode
                .as_deref()
                .or(env.and_then(|e| e.drift_mode.as_deref()))
            {
                None => drift::DriftMode::RefreshOnly,
                Some(m) => drift::DriftMode::parse(m).unwrap_or_else(|| {
                    self.err(
                        k("drift_mode"),
                        format!("unknown drift_mode `{m}` (expected refresh_only or plan)"),
                    );
                    drift::DriftMode::RefreshOnly
                }),
            };
            let mut apply_requirements = Vec::new();
            for (j, r) in w.apply_requirements.iter().enumerate() {
                match r.as_str() {
                    "approved" => apply_requirements.push(ApplyRequirement::Approved),
                    "mergeable" => apply_requirements.push(ApplyRequirement::Mergeable),
                    other => self.err(
                        format!("workspaces[{i}].apply_requirements[{j}]"),
                        format!("unknown requirement `{other}` (expected approved or mergeable)"),
                    ),
                }
            }
            let timeout = w
                .timeout
                .as_ref()
                .and_then(|t| self.duration(&k("timeout"), t));
            // The workspace's own wins; an environment's unknown pool is
            // reported once, with the environment.
            if let Some(pool) = &w.agent_pool {
                self.known_pool(raw, k("agent_pool"), pool);
            }
            let agent_pool = w
                .agent_pool
                .clone()
                .or_else(|| env.and_then(|e| e.agent_pool.clone()));
            if self.errors.len() == before {
                out.push(Workspace {
                    name: w.name.clone(),
                    environment: w.environment.clone(),
                    provider: w.provider.clone(),
                    repo: w.repo.clone(),
                    branch: w.branch.clone(),
                    dir: dir.expect("validated"),
                    trigger_patterns: w.trigger_patterns.clone(),
                    triggers: globs.build().unwrap_or_else(|_| GlobSet::empty()),
                    timeout,
                    auto_apply: w.auto_apply,
                    drift_mode,
                    drift_schedule,
                    drift_notify,
                    workflow,
                    apply_requirements,
                    agent_pool,
                });
            }
        }
        out
    }
}

/// The shipped catalog, parsed once per process.
fn shipped_catalog() -> Arc<pricing::Catalog> {
    static SHIPPED: std::sync::OnceLock<Arc<pricing::Catalog>> = std::sync::OnceLock::new();
    SHIPPED
        .get_or_init(|| Arc::new(pricing::Catalog::shipped()))
        .clone()
}

/// Defined here rather than in `redact`, which sits below the config and
/// knows nothing of it.
impl crate::redact::Redactor {
    /// Every secret a configuration holds (`Config::secret_values`): gantry's
    /// own, and every sensitive variable at every scope, which includes the
    /// secret-looking `terraform.pass_env` and `terraform.env` values.
    pub fn for_config(config: &Config) -> crate::redact::Redactor {
        crate::redact::Redactor::new(&config.secret_values())
    }
}

/// Long enough for most applies; Kubernetes must wait longer than this.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30 * 60);

/// The host name plus a random suffix chosen once per process: containers
/// (or replicas sharing one config) often share a host name, and a process
/// restarted on the same host is a new holder. Stable across config reloads.
fn default_node_id() -> String {
    static NODE_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE_ID
        .get_or_init(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "gantry".to_string());
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}", &suffix[..8])
        })
        .clone()
}

#[cfg(test)]
pub(crate) mod tests;
