//! Runners execute terraform (or tofu) for a run. [`Runner`] is the border a
//! remote agent will implement: it takes a [`JobSpec`] (run, phase, commit,
//! directory, the phase's variables, backend config, timeout), streams the
//! redacted log through a [`LogSink`] as terraform prints it, and returns what
//! the job made as values ([`JobOutput`]: plan file and its sha256, plan JSON,
//! log). Nothing a runner makes stays with it: gantry keeps it in the store,
//! so any replica can apply, show or analyse it.
//!
//! [`LocalRunner`] runs the CLI as a subprocess inside the [`sandbox`]:
//! `init`, `plan -out`, `show -json`, in its own process group, with a clean
//! environment (only the run's own variables for its phase), a timeout that
//! kills the whole group.
//!
//! Its only files are a per-run scratch directory ([`RunDirs`], under
//! `data_dir/work/run-<id>`): the checkout, a fresh HOME and TMPDIR, the plan
//! output, and a read-only copy of the plan an apply uses. Terraform may write
//! only there and in its workspace's plugin cache. The scratch is deleted when
//! the run ends.

pub mod archive;
pub mod protocol;
pub mod remote;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Phase};
use crate::redact::Redactor;
use crate::store::PlanSummary;
pub use remote::RemoteRunner;
pub use sandbox::{Layers, Sandbox, SandboxError};

/// How long terraform gets to stop after SIGINT before the group is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Terraform ran and failed; `message` is the tail of its output.
    #[error("terraform {step} failed: {message}")]
    Failed { step: &'static str, message: String },
    #[error("terraform {step} timed out after {after:?}")]
    TimedOut { step: &'static str, after: Duration },
    #[error("canceled")]
    Canceled,
    /// The saved plan is not the one that was reviewed.
    #[error("the saved plan file does not match the plan that was reviewed (sha256 {actual}, expected {expected})")]
    PlanTampered { expected: String, actual: String },
    #[error("cannot run terraform: {0}")]
    Spawn(String),
    /// The agent running the job stopped answering (its lease ran out) and
    /// the job may not be repeated: an apply, or a plan already retried.
    #[error("agent {agent} stopped answering during the job")]
    AgentLost { agent: String, apply: bool },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One variable a run's terraform receives.
#[derive(Clone)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    /// Masked in everything gantry writes.
    pub sensitive: bool,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sensitive {
            write!(f, "{}=***", self.name)
        } else {
            write!(f, "{}={}", self.name, self.value)
        }
    }
}

/// The directories of one run, all under one root.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub root: PathBuf,
}

impl RunDirs {
    pub fn new(root: impl Into<PathBuf>) -> RunDirs {
        RunDirs { root: root.into() }
    }
    /// The repository checkout (terraform may write).
    pub fn checkout(&self) -> PathBuf {
        self.root.join("src")
    }
    /// HOME of the run's processes (terraform may write).
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    /// TMPDIR of the run's processes (terraform may write).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Where `plan -out` writes (terraform may write).
    pub fn out(&self) -> PathBuf {
        self.root.join("out")
    }
    /// The verified copy of the plan an apply uses (terraform may only read).
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan")
    }
}

/// What a job does.
#[derive(Debug, Clone)]
pub enum JobPhase {
    /// `init`, `plan -out`, `show -json`: a plan to review, and maybe apply.
    Plan,
    /// `init`, `plan [-refresh-only] -detailed-exitcode`, `show -json`.
    /// Never applies.
    Drift { refresh_only: bool },
    /// Applies `plan` once its bytes hash to its `sha256` (running `init`
    /// first when `init` is set: a fresh checkout).
    Apply { plan: PlanFile, init: bool },
}

impl JobPhase {
    /// The phase whose variables the job gets.
    pub fn variables(&self) -> Phase {
        match self {
            JobPhase::Plan => Phase::Plan,
            JobPhase::Drift { .. } => Phase::Drift,
            JobPhase::Apply { .. } => Phase::Apply,
        }
    }
}

/// A saved plan: its bytes and their sha256 (hex). For an apply, `sha256` is
/// the one recorded when the plan was reviewed, and the runner refuses bytes
/// that do not hash to it.
#[derive(Clone)]
pub struct PlanFile {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl std::fmt::Debug for PlanFile {
    // A plan file holds secrets in the clear: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PlanFile({} bytes, sha256 {})",
            self.bytes.len(),
            self.sha256
        )
    }
}

/// How terraform reaches the state backend gantry serves: environment
/// (`TF_HTTP_ADDRESS`, credentials…) added to every terraform command of the
/// job, sensitive values masked in its log. Filled by the state backend;
/// `None` leaves the checkout's own backend (or its local state) alone.
#[derive(Debug, Clone, Default)]
pub struct BackendConfig {
    pub env: Vec<EnvVar>,
}

impl BackendConfig {
    /// gantry's `http` state backend at `address` (also the lock and unlock
    /// address), with a run-scoped token as the password: terraform reads it
    /// all from the environment, so the token is in no file of the checkout
    /// and in no saved plan.
    pub fn http(address: &str, username: &str, password: &str) -> BackendConfig {
        let var = |name: &str, value: &str, sensitive| EnvVar {
            name: name.into(),
            value: value.into(),
            sensitive,
        };
        BackendConfig {
            env: vec![
                var("TF_HTTP_ADDRESS", address, false),
                var("TF_HTTP_LOCK_ADDRESS", address, false),
                var("TF_HTTP_UNLOCK_ADDRESS", address, false),
                var("TF_HTTP_USERNAME", username, false),
                var("TF_HTTP_PASSWORD", password, true),
            ],
        }
    }
}

/// One terraform job: everything a runner, local or remote, is told.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub run_id: i64,
    pub workspace: String,
    pub phase: JobPhase,
    /// The commit to run. A local runner finds it checked out in its scratch
    /// (gantry places it there, with any state); a remote one fetches it.
    pub commit: String,
    /// The workspace's directory inside the repository.
    pub dir: String,
    /// The run's variables for this phase (and nothing else).
    pub variables: Vec<EnvVar>,
    pub backend: Option<BackendConfig>,
    pub timeout: Duration,
}

/// What a job made, as values.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The main step's output, redacted: the plan text, or the apply's output.
    pub text: String,
    /// A drift check's `plan -detailed-exitcode` exited 2: there are differences.
    pub changes: bool,
    /// What a plan or drift check saved.
    pub plan: Option<PlanArtifacts>,
    /// The job's whole log, redacted (the same text the sink received).
    pub log: String,
}

/// The saved plan of a plan or drift job.
#[derive(Debug, Clone)]
pub struct PlanArtifacts {
    pub file: PlanFile,
    /// `terraform show -json` of the plan, redacted.
    pub json: Vec<u8>,
    /// `json`, parsed.
    pub parsed: serde_json::Value,
    pub summary: PlanSummary,
}

/// Where a runner streams a job's log while it goes: redacted text, in order.
/// Appending never blocks terraform; the receiver decides how often it writes.
pub trait LogSink: Send + Sync {
    fn append(&self, text: &str);
}

impl LogSink for mpsc::UnboundedSender<String> {
    fn append(&self, text: &str) {
        // The receiver gone (the run's log writer stopped) loses only the
        // streamed copy: the job's output still carries the whole log.
        let _ = self.send(text.to_string());
    }
}

/// A sink that keeps nothing (the CLI, tests): [`JobOutput::log`] still has it all.
pub struct NoLog;

impl LogSink for NoLog {
    fn append(&self, _text: &str) {}
}

#[async_trait]
pub trait Runner: Send + Sync {
    /// Runs one job. Its log goes to `log` as terraform prints it, so what a
    /// failed, canceled or killed job printed is already out when it returns.
    async fn run(
        &self,
        job: &JobSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobOutput, RunnerError>;
}

/// The variables a run of `workspace` gets for `phase`: that workspace's
/// resolved variables (account, then environment, then workspace; the nearer
/// scope wins), and only those given to the phase.
pub fn variables_for(config: &Config, workspace: &str, phase: crate::config::Phase) -> Vec<EnvVar> {
    config
        .variables_for(workspace, phase)
        .into_iter()
        .map(|v| EnvVar {
            sensitive: v.is_sensitive(),
            value: v.value.expose().to_string(),
            name: v.name,
        })
        .collect()
}

/// sha256 of a saved plan's bytes, hex: recorded when the plan is made and
/// compared before it is applied.
fn plan_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs the terraform CLI on this machine, inside the sandbox (unless the
/// operator turned it off).
pub struct LocalRunner {
    /// The terraform/tofu binary, resolved to a path.
    bin: PathBuf,
    interrupt_grace: Duration,
    /// PATH, TF_IN_AUTOMATION, TF_INPUT, TF_CLI_CONFIG_FILE.
    base_env: Vec<(String, String)>,
    /// `runner.allow_read`, the CLI config file and the paths it names
    /// (mirrors, caches): read-only.
    cli_config_reads: Vec<PathBuf>,
    redactor: Arc<Redactor>,
    sandbox: Option<Sandbox>,
    /// Each job's scratch is `<work_root>/run-<id>` (default `data_dir/work`).
    work_root: PathBuf,
    /// Each workspace's provider plugin cache is `<plugin_caches>/<workspace>`.
    plugin_caches: PathBuf,
}

/// One job on this machine: its spec, scratch, redactor and log.
struct LocalJob<'a> {
    spec: &'a JobSpec,
    dirs: RunDirs,
    /// Where terraform runs: the workspace's `dir` in the checkout.
    workdir: PathBuf,
    plugin_cache: PathBuf,
    /// gantry's secrets plus the job's sensitive variables.
    redactor: Redactor,
    log: JobLog<'a>,
}

impl LocalJob<'_> {
    /// The only places terraform may write: its checkout, HOME, TMPDIR, plan
    /// output and its workspace's plugin cache.
    fn writable(&self) -> [PathBuf; 5] {
        [
            self.dirs.checkout(),
            self.dirs.home(),
            self.dirs.tmp(),
            self.dirs.out(),
            self.plugin_cache.clone(),
        ]
    }
}

/// A job's log: streamed to the sink, and kept for the job's output.
struct JobLog<'a> {
    sink: &'a dyn LogSink,
    text: Mutex<String>,
}

impl JobLog<'_> {
    fn write(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.sink.append(text);
        self.text.lock().expect("log lock").push_str(text);
    }

    fn take(&self) -> String {
        std::mem::take(&mut *self.text.lock().expect("log lock"))
    }
}

/// What a configuration lets terraform read besides the system paths: the
/// binary, `runner.allow_read`, the CLI config file and what it names.
struct Readable {
    /// The daemon's PATH, which the binary is looked up on.
    path: String,
    bin: PathBuf,
    cli_config_file: Option<PathBuf>,
    /// `runner.allow_read`, the CLI config file and the paths it names.
    paths: Vec<PathBuf>,
}

impl Readable {
    fn of(
        config: &Config,
        daemon_env: &dyn Fn(&str) -> Option<String>,
    ) -> std::io::Result<Readable> {
        let path = daemon_env("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let cli_config_file = match &config.terraform.cli_config_file {
            Some(f) => Some(std::path::absolute(f)?),
            None => daemon_env("TF_CLI_CONFIG_FILE").map(PathBuf::from),
        };
        Ok(Readable::new(
            path,
            &config.terraform.bin,
            cli_config_file,
            config.runner.allow_read.clone(),
        ))
    }

    /// `bin` looked up on `path`; `allow_read` plus the CLI config file and
    /// what it names.
    fn new(
        path: String,
        bin: &str,
        cli_config_file: Option<PathBuf>,
        allow_read: Vec<PathBuf>,
    ) -> Readable {
        let mut paths = allow_read;
        if let Some(file) = &cli_config_file {
            paths.push(file.clone());
            paths.extend(cli_config_paths(file));
        }
        Readable {
            bin: resolve_bin(bin, &path),
            path,
            cli_config_file,
            paths,
        }
    }
}

/// What a [`LocalRunner`] is built from where there is no gantry
/// configuration (`gantry agent`): the same settings `serve` reads from its
/// config file and environment.
#[derive(Debug, Clone)]
pub struct Standalone {
    /// The terraform/tofu binary: a path, or a name looked up on `path`.
    pub bin: String,
    /// PATH of terraform's processes (and where `bin` is looked up).
    pub path: String,
    /// `TF_CLI_CONFIG_FILE` for terraform: readable in the sandbox, with the
    /// mirrors and caches it names.
    pub cli_config_file: Option<PathBuf>,
    /// More paths terraform may read (`runner.allow_read`).
    pub allow_read: Vec<PathBuf>,
    /// Each job's scratch is `<work_root>/run-<id>`.
    pub work_root: PathBuf,
    /// Each workspace's plugin cache is `<plugin_caches>/<workspace>`.
    pub plugin_caches: PathBuf,
}

/// Refuses a configuration under which a path gantry must keep to itself
/// (its config, key files, data dir) lies under something runs may read.
pub fn check_exposure(
    config: &Config,
    daemon_env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), SandboxError> {
    let readable = Readable::of(config, daemon_env)?;
    let mut granted = readable.paths;
    granted.push(readable.bin);
    sandbox::check_exposure(&granted, &config.protected_paths())
}

impl LocalRunner {
    /// Builds the runner for the current configuration. The environment is built
    /// from scratch: PATH, `TF_IN_AUTOMATION`, the CLI config file; each run
    /// adds its own HOME, TMPDIR, plugin cache and variables. `sandbox` is
    /// `None` only when the operator set `runner.sandbox: off`; `redactor`
    /// is the configuration's (`Redactor::for_config`).
    pub fn new(
        config: &Config,
        daemon_env: &dyn Fn(&str) -> Option<String>,
        sandbox: Option<Sandbox>,
        redactor: Arc<Redactor>,
    ) -> std::io::Result<LocalRunner> {
        let readable = Readable::of(config, daemon_env)?;
        Ok(LocalRunner::build(
            readable,
            config.data_dir.join("work"),
            config.data_dir.join("plugin-cache"),
            sandbox,
            redactor,
        ))
    }

    /// Builds a runner from `settings` alone (the agent has no gantry
    /// config): the same clean environment and sandbox as [`LocalRunner::new`].
    /// `redactor` masks what the process knows is secret; each job adds its
    /// own sensitive variables.
    pub fn standalone(
        settings: Standalone,
        sandbox: Option<Sandbox>,
        redactor: Arc<Redactor>,
    ) -> LocalRunner {
        let readable = Readable::new(
            settings.path,
            &settings.bin,
            settings.cli_config_file,
            settings.allow_read,
        );
        LocalRunner::build(
            readable,
            settings.work_root,
            settings.plugin_caches,
            sandbox,
            redactor,
        )
    }

    fn build(
        readable: Readable,
        work_root: PathBuf,
        plugin_caches: PathBuf,
        sandbox: Option<Sandbox>,
        redactor: Arc<Redactor>,
    ) -> LocalRunner {
        let mut base_env: Vec<(String, String)> = vec![("PATH".into(), readable.path)];
        base_env.push(("TF_IN_AUTOMATION".into(), "1".into()));
        base_env.push(("TF_INPUT".into(), "0".into()));
        // No call to HashiCorp's version checkpoint from every process: each
        // run has a fresh HOME, so terraform would never find its cache.
        base_env.push(("CHECKPOINT_DISABLE".into(), "1".into()));
        if let Some(file) = &readable.cli_config_file {
            base_env.push(("TF_CLI_CONFIG_FILE".into(), file.display().to_string()));
        }
        LocalRunner {
            bin: readable.bin,
            interrupt_grace: INTERRUPT_GRACE,
            base_env,
            cli_config_reads: readable.paths,
            redactor,
            sandbox,
            work_root,
            plugin_caches,
        }
    }

    /// How long terraform gets between SIGINT and SIGKILL (default 10 s).
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.interrupt_grace = grace;
        self
    }

    /// Puts each job's scratch under `root` instead of `data_dir/work` (the
    /// CLI's one-off plans).
    pub fn with_work_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.work_root = root.into();
        self
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The scratch of run `run_id`: the commit is checked out in its
    /// `checkout()` before a job of that run is given to this runner.
    pub fn dirs(&self, run_id: i64) -> RunDirs {
        RunDirs::new(self.work_root.join(format!("run-{run_id}")))
    }

    /// Where terraform runs for `job`: the workspace's directory in the checkout.
    pub fn workdir(&self, job: &JobSpec) -> PathBuf {
        self.dirs(job.run_id).checkout().join(&job.dir)
    }

    fn local<'a>(&self, spec: &'a JobSpec, sink: &'a dyn LogSink) -> LocalJob<'a> {
        let dirs = self.dirs(spec.run_id);
        LocalJob {
            workdir: dirs.checkout().join(&spec.dir),
            dirs,
            plugin_cache: self.plugin_caches.join(&spec.workspace),
            redactor: self.run_redactor(spec),
            log: JobLog {
                sink,
                text: Mutex::new(String::new()),
            },
            spec,
        }
    }

    /// Creates the run's directories and hands the writable ones to the
    /// sandbox's uid.
    async fn prepare_dirs(&self, job: &LocalJob<'_>) -> Result<(), RunnerError> {
        let d = &job.dirs;
        for dir in [
            d.checkout(),
            d.home(),
            d.tmp(),
            d.out(),
            d.plan(),
            job.plugin_cache.clone(),
        ] {
            tokio::fs::create_dir_all(&dir).await?;
        }
        if let Some(sandbox) = &self.sandbox {
            let sandbox = sandbox.clone();
            let writable = job.writable();
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&Path> = writable.iter().map(|p| p.as_path()).collect();
                sandbox.hand_over(&refs)
            })
            .await
            .map_err(|e| RunnerError::Spawn(format!("preparing the run's directories: {e}")))??;
        }
        Ok(())
    }

    /// The redactor for one job: gantry's secrets plus the job's sensitive
    /// variables and backend credentials (already known ones change nothing
    /// and rebuild nothing). The log is redacted line by line as it streams,
    /// so each line of a multi-line secret is a secret too.
    fn run_redactor(&self, spec: &JobSpec) -> Redactor {
        let mut r = Redactor::clone(&self.redactor);
        let backend = spec.backend.iter().flat_map(|b| b.env.iter());
        let secrets: Vec<&str> = spec
            .variables
            .iter()
            .chain(backend)
            .filter(|v| v.sensitive)
            .flat_map(|v| std::iter::once(v.value.as_str()).chain(v.value.lines()))
            .collect();
        r.extend(secrets);
        r
    }

    async fn init(
        &self,
        job: &LocalJob<'_>,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.step("init", &["init", "-input=false", "-no-color"], job, cancel)
            .await
    }

    /// `show -json` of a saved plan: the JSON (redacted, kept out of the log)
    /// and its parse.
    async fn show_json(
        &self,
        job: &LocalJob<'_>,
        plan_file: &Path,
        cancel: &CancellationToken,
    ) -> Result<(Vec<u8>, serde_json::Value), RunnerError> {
        let plan_path = plan_file.display().to_string();
        let (json, _) = self
            .step_with_codes(
                "show",
                &["show", "-json", &plan_path],
                job,
                true,
                cancel,
                &[0],
            )
            .await?;
        let parsed = serde_json::from_str(&json).map_err(|e| RunnerError::Failed {
            step: "show",
            message: format!("unreadable plan JSON: {e}"),
        })?;
        Ok((json.into_bytes(), parsed))
    }

    /// Runs one terraform command; stdout and stderr go to the log (redacted),
    /// stdout is also returned.
    async fn step(
        &self,
        step: &'static str,
        args: &[&str],
        job: &LocalJob<'_>,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.step_with_codes(step, args, job, false, cancel, &[0])
            .await
            .map(|(text, _)| text)
    }

    /// The command for one terraform step: sandboxed, with a clean environment.
    fn command(&self, args: &[&str], job: &LocalJob<'_>) -> Command {
        let mut cmd = match &self.sandbox {
            Some(sandbox) => {
                let mut read = self.cli_config_reads.clone();
                read.push(job.dirs.plan());
                let confinement = sandbox::Confinement {
                    read,
                    write: job.writable().to_vec(),
                };
                sandbox.command(&self.bin, args, &confinement)
            }
            None => {
                let mut cmd = Command::new(&self.bin);
                cmd.args(args);
                cmd
            }
        };
        let backend = job.spec.backend.iter().flat_map(|b| b.env.iter());
        cmd.current_dir(&job.workdir)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(
                job.spec
                    .variables
                    .iter()
                    .chain(backend)
                    .map(|v| (&v.name, &v.value)),
            )
            .env("HOME", job.dirs.home())
            .env("TMPDIR", job.dirs.tmp())
            .env("TF_PLUGIN_CACHE_DIR", &job.plugin_cache);
        cmd
    }

    /// Like `step`, with the exit codes that mean success (`plan
    /// -detailed-exitcode` exits 2 when there are changes); returns the code
    /// too. Output streams to the log line by line as terraform prints it;
    /// `capture_stdout` keeps stdout out of the log (`show -json`).
    async fn step_with_codes(
        &self,
        step: &'static str,
        args: &[&str],
        job: &LocalJob<'_>,
        capture_stdout: bool,
        cancel: &CancellationToken,
        ok_codes: &[i32],
    ) -> Result<(String, i32), RunnerError> {
        job.log
            .write(&format!("$ {} {}\n", self.bin.display(), args.join(" ")));
        let mut cmd = self.command(args, job);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RunnerError::Spawn(format!("{}: {e}", self.bin.display())))?;
        let pgid = child.id().map(|id| id as i32);
        let (tx, mut lines) = mpsc::unbounded_channel::<(bool, Vec<u8>)>();
        tokio::spawn(read_lines(
            child.stdout.take().expect("piped"),
            true,
            tx.clone(),
        ));
        tokio::spawn(read_lines(child.stderr.take().expect("piped"), false, tx));
        let read_all = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some((is_stdout, line)) = lines.recv().await {
                if is_stdout {
                    out.extend_from_slice(&line);
                    if capture_stdout {
                        continue;
                    }
                } else {
                    err.extend_from_slice(&line);
                }
                job.log
                    .write(&job.redactor.redact(&String::from_utf8_lossy(&line)));
            }
            let status = child.wait().await;
            (out, err, status)
        };
        tokio::pin!(read_all);
        let outcome = tokio::select! {
            r = &mut read_all => Ok(r),
            _ = tokio::time::sleep(job.spec.timeout) => Err(RunnerError::TimedOut { step, after: job.spec.timeout }),
            _ = cancel.cancelled() => Err(RunnerError::Canceled),
        };
        let (out, err, status) = match outcome {
            Ok(r) => r,
            Err(e) => {
                if let Some(pgid) = pgid {
                    stop_group(pgid, self.interrupt_grace, &mut read_all).await;
                }
                job.log.write(&format!("gantry: {e}\n"));
                return Err(e);
            }
        };
        let stdout_text = job.redactor.redact(&String::from_utf8_lossy(&out));
        let stderr_text = job.redactor.redact(&String::from_utf8_lossy(&err));
        let status = status?;
        let code = status.code().unwrap_or(-1);
        if !ok_codes.contains(&code) {
            let combined = if capture_stdout {
                stderr_text
            } else {
                format!("{stdout_text}{stderr_text}")
            };
            return Err(RunnerError::Failed {
                step,
                message: error_excerpt(&combined),
            });
        }
        Ok((stdout_text, code))
    }

    /// `init`, `plan [extra] -out`, `show -json`: the steps a plan and a
    /// drift check share. Returns the plan text, plan's exit code and the
    /// saved plan.
    async fn plan_steps(
        &self,
        job: &LocalJob<'_>,
        extra: &[&str],
        ok_codes: &[i32],
        cancel: &CancellationToken,
    ) -> Result<(String, i32, PlanArtifacts), RunnerError> {
        self.prepare_dirs(job).await?;
        let out_file = std::path::absolute(job.dirs.out().join("plan.tfplan"))?;
        let out_arg = format!("-out={}", out_file.display());
        self.init(job, cancel).await?;
        let mut args = vec!["plan", "-input=false", "-no-color", "-lock-timeout=60s"];
        args.extend_from_slice(extra);
        args.push(&out_arg);
        let (plan_text, code) = self
            .step_with_codes("plan", &args, job, false, cancel, ok_codes)
            .await?;
        let (json, parsed) = self.show_json(job, &out_file, cancel).await?;
        // The plan leaves the scratch as a value; no copy of it stays behind.
        let bytes = tokio::fs::read(&out_file).await?;
        let _ = tokio::fs::remove_file(&out_file).await;
        let artifacts = PlanArtifacts {
            file: PlanFile {
                sha256: plan_sha256(&bytes),
                bytes,
            },
            json,
            summary: PlanSummary::from_plan_json(&parsed),
            parsed,
        };
        Ok((plan_text, code, artifacts))
    }

    /// Applies `plan` once its bytes hash to the sha256 that was reviewed.
    async fn apply(
        &self,
        job: &LocalJob<'_>,
        plan: &PlanFile,
        init: bool,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.prepare_dirs(job).await?;
        // The bytes checked are the bytes applied: terraform reads a copy in a
        // directory it may not write to.
        let actual = plan_sha256(&plan.bytes);
        if actual != plan.sha256 {
            job.log.write(
                "gantry: the saved plan file does not match the reviewed plan; not applying\n",
            );
            return Err(RunnerError::PlanTampered {
                expected: plan.sha256.clone(),
                actual,
            });
        }
        let copy = std::path::absolute(job.dirs.plan().join("plan.tfplan"))?;
        tokio::fs::write(&copy, &plan.bytes).await?;
        if init {
            self.init(job, cancel).await?;
        }
        let plan_path = copy.display().to_string();
        let result = self
            .step(
                "apply",
                &[
                    "apply",
                    "-input=false",
                    "-no-color",
                    "-lock-timeout=60s",
                    &plan_path,
                ],
                job,
                cancel,
            )
            .await;
        let _ = tokio::fs::remove_file(&copy).await;
        result
    }
}

/// The paths a Terraform CLI config file names that terraform must read:
/// `filesystem_mirror` paths, `plugin_cache_dir`, `dev_overrides` targets.
fn cli_config_paths(file: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(body) = hcl::parse(&text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    collect_paths(&body, false, &mut out);
    out
}

fn collect_paths(body: &hcl::Body, in_overrides: bool, out: &mut Vec<PathBuf>) {
    for attr in body.attributes() {
        let named = matches!(attr.key(), "path" | "plugin_cache_dir");
        if named || in_overrides {
            if let hcl::Expression::String(s) = attr.expr() {
                out.push(PathBuf::from(s));
            }
        }
        if in_overrides || attr.key() == "dev_overrides" {
            if let hcl::Expression::Object(o) = attr.expr() {
                for v in o.values() {
                    if let hcl::Expression::String(s) = v {
                        out.push(PathBuf::from(s));
                    }
                }
            }
        }
    }
    for block in body.blocks() {
        collect_paths(
            block.body(),
            in_overrides || block.identifier() == "dev_overrides",
            out,
        );
    }
}

/// `bin` as a path: as given when it has a `/`, else found on `path`.
fn resolve_bin(bin: &str, path: &str) -> PathBuf {
    if bin.contains('/') {
        return std::path::absolute(bin).unwrap_or_else(|_| PathBuf::from(bin));
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(bin))
}

/// SIGINT to the process group (terraform releases its locks), then, after the
/// grace period or once the output closes, SIGKILL to whatever is left of it.
async fn stop_group<F: std::future::Future + Unpin>(pgid: i32, grace: Duration, running: &mut F) {
    // SAFETY: killpg only sends a signal to the process group we created for this step.
    unsafe { libc::killpg(pgid, libc::SIGINT) };
    let finished = tokio::time::timeout(grace, &mut *running).await.is_ok();
    // SAFETY: as above; ESRCH when the group is already gone is harmless.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if !finished {
        let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    }
}

/// The part of terraform's output that says what went wrong: from the first
/// "Error:" line on, else the last lines; at most 2,000 characters.
pub fn error_excerpt(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            l.trim_start()
                .trim_start_matches('│')
                .trim_start()
                .starts_with("Error:")
        })
        .unwrap_or_else(|| lines.len().saturating_sub(20));
    let text = lines[start..].join("\n");
    let text = text.trim();
    if text.chars().count() > 2000 {
        format!("{}…", text.chars().take(2000).collect::<String>())
    } else {
        text.to_string()
    }
}

#[async_trait]
impl Runner for LocalRunner {
    async fn run(
        &self,
        spec: &JobSpec,
        sink: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobOutput, RunnerError> {
        let job = self.local(spec, sink);
        let (text, changes, plan) = match &spec.phase {
            JobPhase::Plan => {
                let (text, _, plan) = self.plan_steps(&job, &[], &[0], cancel).await?;
                (text, false, Some(plan))
            }
            JobPhase::Drift { refresh_only } => {
                let mut args = vec!["-detailed-exitcode"];
                if *refresh_only {
                    args.push("-refresh-only");
                }
                let (text, code, plan) = self.plan_steps(&job, &args, &[0, 2], cancel).await?;
                (text, code == 2, Some(plan))
            }
            JobPhase::Apply { plan, init } => {
                (self.apply(&job, plan, *init, cancel).await?, false, None)
            }
        };
        Ok(JobOutput {
            text,
            changes,
            plan,
            log: job.log.take(),
        })
    }
}

/// Sends `r`'s lines (the last one maybe without its newline) to `tx`, tagged
/// with which stream they came from, until the stream ends.
async fn read_lines(
    r: impl AsyncRead + Unpin,
    is_stdout: bool,
    tx: mpsc::UnboundedSender<(bool, Vec<u8>)>,
) {
    let mut r = BufReader::new(r);
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send((is_stdout, line)).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_starts_at_the_error() {
        let out = "Initializing...\nsome noise\n╷\n│ Error: Unsupported argument\n│ \n│   on main.tf line 3\n╵\n";
        assert!(error_excerpt(out).starts_with("│ Error: Unsupported argument"));
        assert_eq!(error_excerpt("a\nb"), "a\nb");
    }
}
