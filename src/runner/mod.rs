//! Runners execute terraform (or tofu) for a run. [`Runner`] is the border a
//! remote agent will implement; [`LocalRunner`] runs the CLI as a subprocess
//! inside the [`sandbox`]: `init`, `plan -out`, `show -json`, in its own
//! process group, with a clean environment (only the run's own variables for
//! its phase), a timeout that kills the whole group, and output captured to the
//! run's log.
//!
//! Each run has a directory of its own ([`RunDirs`]): the checkout, a fresh
//! HOME and TMPDIR, the plan output, and a read-only copy of the plan an apply
//! uses. Terraform may write only there and in its workspace's plugin cache;
//! the plan file is copied out to the run's artifacts (with its sha256) by
//! gantry, never written there by terraform.

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::redact::Redactor;
use crate::runs::PlanSummary;
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

/// One terraform job: a plan, a drift check or an apply.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Directory terraform runs in (the workspace `dir` inside the checkout).
    pub workdir: PathBuf,
    /// The run's own directories (the checkout is `dirs.checkout()`).
    pub dirs: RunDirs,
    /// Where gantry keeps the plan file, plan JSON and log.
    pub artifacts: PathBuf,
    /// The workspace's own provider plugin cache.
    pub plugin_cache: PathBuf,
    pub timeout: Duration,
    /// The run's variables for this phase (and nothing else).
    pub variables: Vec<EnvVar>,
    /// For an apply: the sha256 the plan file had when it was made.
    pub plan_sha256: Option<String>,
}

impl PlanRequest {
    /// The only places terraform may write: its checkout, HOME, TMPDIR, plan
    /// output and its workspace's plugin cache.
    pub fn writable(&self) -> [PathBuf; 5] {
        [
            self.dirs.checkout(),
            self.dirs.home(),
            self.dirs.tmp(),
            self.dirs.out(),
            self.plugin_cache.clone(),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct PlanOutput {
    pub summary: PlanSummary,
    /// The human-readable plan (`terraform plan` output), redacted.
    pub plan_text: String,
    pub plan_file: PathBuf,
    /// sha256 of the saved plan file, hex.
    pub plan_sha256: String,
    pub plan_json: PathBuf,
    /// The plan JSON, parsed.
    pub plan: serde_json::Value,
}

#[async_trait]
pub trait Runner: Send + Sync {
    /// `init`, `plan -out`, `show -json`.
    async fn plan(
        &self,
        req: &PlanRequest,
        cancel: &CancellationToken,
    ) -> Result<PlanOutput, RunnerError>;

    /// A drift check: `init`, `plan [-refresh-only] -detailed-exitcode`, `show -json`.
    /// Never applies.
    async fn drift(
        &self,
        req: &PlanRequest,
        refresh_only: bool,
        cancel: &CancellationToken,
    ) -> Result<DriftOutput, RunnerError>;

    /// Applies the saved plan file from `req.artifacts` once its sha256 matches
    /// `req.plan_sha256` (running `init` first when `init` is set: a fresh
    /// checkout). Returns the apply output.
    async fn apply(
        &self,
        req: &PlanRequest,
        init: bool,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError>;
}

/// What a drift check found.
#[derive(Debug, Clone)]
pub struct DriftOutput {
    /// `plan -detailed-exitcode` exited 2: there are differences.
    pub changes: bool,
    pub plan_text: String,
    pub plan: serde_json::Value,
}

/// The saved plan of a run, in its artifacts directory.
pub fn plan_file(artifacts: &Path) -> PathBuf {
    artifacts.join("plan.tfplan")
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
        let mut paths = config.runner.allow_read.clone();
        let cli_config_file = match &config.terraform.cli_config_file {
            Some(f) => Some(std::path::absolute(f)?),
            None => daemon_env("TF_CLI_CONFIG_FILE").map(PathBuf::from),
        };
        if let Some(file) = &cli_config_file {
            paths.push(file.clone());
            paths.extend(cli_config_paths(file));
        }
        Ok(Readable {
            bin: resolve_bin(&config.terraform.bin, &path),
            path,
            cli_config_file,
            paths,
        })
    }
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
        let mut base_env: Vec<(String, String)> = vec![("PATH".into(), readable.path)];
        base_env.push(("TF_IN_AUTOMATION".into(), "1".into()));
        base_env.push(("TF_INPUT".into(), "0".into()));
        // No call to HashiCorp's version checkpoint from every process: each
        // run has a fresh HOME, so terraform would never find its cache.
        base_env.push(("CHECKPOINT_DISABLE".into(), "1".into()));
        if let Some(file) = &readable.cli_config_file {
            base_env.push(("TF_CLI_CONFIG_FILE".into(), file.display().to_string()));
        }
        Ok(LocalRunner {
            bin: readable.bin,
            interrupt_grace: INTERRUPT_GRACE,
            base_env,
            cli_config_reads: readable.paths,
            redactor,
            sandbox,
        })
    }

    /// How long terraform gets between SIGINT and SIGKILL (default 10 s).
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.interrupt_grace = grace;
        self
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Creates the run's directories and hands the writable ones to the
    /// sandbox's uid.
    async fn prepare_dirs(&self, req: &PlanRequest) -> Result<(), RunnerError> {
        let d = &req.dirs;
        for dir in [
            d.checkout(),
            d.home(),
            d.tmp(),
            d.out(),
            d.plan(),
            req.plugin_cache.clone(),
            req.artifacts.clone(),
        ] {
            tokio::fs::create_dir_all(&dir).await?;
        }
        if let Some(sandbox) = &self.sandbox {
            let sandbox = sandbox.clone();
            let writable = req.writable();
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&Path> = writable.iter().map(|p| p.as_path()).collect();
                sandbox.hand_over(&refs)
            })
            .await
            .map_err(|e| RunnerError::Spawn(format!("preparing the run's directories: {e}")))??;
        }
        Ok(())
    }

    /// The redactor for one run: gantry's secrets plus the run's sensitive
    /// variables (already known ones change nothing and rebuild nothing).
    fn run_redactor(&self, req: &PlanRequest) -> Redactor {
        let mut r = Redactor::clone(&self.redactor);
        r.extend(
            req.variables
                .iter()
                .filter(|v| v.sensitive)
                .map(|v| v.value.as_str()),
        );
        r
    }

    async fn init(
        &self,
        req: &PlanRequest,
        log: &mut tokio::fs::File,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.step(
            "init",
            &["init", "-input=false", "-no-color"],
            req,
            log,
            None,
            cancel,
        )
        .await
    }

    /// `show -json` of a saved plan into `plan_json`, parsed.
    async fn show_json(
        &self,
        req: &PlanRequest,
        log: &mut tokio::fs::File,
        plan_file: &Path,
        plan_json: &Path,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, RunnerError> {
        let plan_path = plan_file.display().to_string();
        self.step(
            "show",
            &["show", "-json", &plan_path],
            req,
            log,
            Some(plan_json),
            cancel,
        )
        .await?;
        log.flush().await?;
        serde_json::from_slice(&tokio::fs::read(plan_json).await?).map_err(|e| {
            RunnerError::Failed {
                step: "show",
                message: format!("unreadable plan JSON: {e}"),
            }
        })
    }

    /// Runs one terraform command; stdout and stderr go to the log (redacted),
    /// stdout is also returned, or written to `stdout_to` instead of the log.
    async fn step(
        &self,
        step: &'static str,
        args: &[&str],
        req: &PlanRequest,
        log: &mut tokio::fs::File,
        stdout_to: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.step_with_codes(step, args, req, log, stdout_to, cancel, &[0])
            .await
            .map(|(text, _)| text)
    }

    /// The command for one terraform step: sandboxed, with a clean environment.
    fn command(&self, args: &[&str], req: &PlanRequest) -> Command {
        let mut cmd = match &self.sandbox {
            Some(sandbox) => {
                let mut read = self.cli_config_reads.clone();
                read.push(req.dirs.plan());
                let confinement = sandbox::Confinement {
                    read,
                    write: req.writable().to_vec(),
                };
                sandbox.command(&self.bin, args, &confinement)
            }
            None => {
                let mut cmd = Command::new(&self.bin);
                cmd.args(args);
                cmd
            }
        };
        cmd.current_dir(&req.workdir)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(req.variables.iter().map(|v| (&v.name, &v.value)))
            .env("HOME", req.dirs.home())
            .env("TMPDIR", req.dirs.tmp())
            .env("TF_PLUGIN_CACHE_DIR", &req.plugin_cache);
        cmd
    }

    /// Like `step`, with the exit codes that mean success (`plan
    /// -detailed-exitcode` exits 2 when there are changes); returns the code too.
    #[allow(clippy::too_many_arguments)]
    async fn step_with_codes(
        &self,
        step: &'static str,
        args: &[&str],
        req: &PlanRequest,
        log: &mut tokio::fs::File,
        stdout_to: Option<&Path>,
        cancel: &CancellationToken,
        ok_codes: &[i32],
    ) -> Result<(String, i32), RunnerError> {
        log.write_all(format!("$ {} {}\n", self.bin.display(), args.join(" ")).as_bytes())
            .await?;
        let mut cmd = self.command(args, req);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RunnerError::Spawn(format!("{}: {e}", self.bin.display())))?;
        let pgid = child.id().map(|id| id as i32);
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let read_all = async {
            let (out, err) = tokio::join!(read_to_vec(stdout), read_to_vec(stderr));
            let status = child.wait().await;
            (out, err, status)
        };
        tokio::pin!(read_all);
        let outcome = tokio::select! {
            r = &mut read_all => Ok(r),
            _ = tokio::time::sleep(req.timeout) => Err(RunnerError::TimedOut { step, after: req.timeout }),
            _ = cancel.cancelled() => Err(RunnerError::Canceled),
        };
        let (out, err, status) = match outcome {
            Ok(r) => r,
            Err(e) => {
                if let Some(pgid) = pgid {
                    stop_group(pgid, self.interrupt_grace, &mut read_all).await;
                }
                log.write_all(format!("gantry: {e}\n").as_bytes()).await?;
                return Err(e);
            }
        };
        let redactor = self.run_redactor(req);
        let stdout_text = redactor.redact(&String::from_utf8_lossy(&out?));
        let stderr_text = redactor.redact(&String::from_utf8_lossy(&err?));
        match stdout_to {
            Some(path) => tokio::fs::write(path, &stdout_text).await?,
            None => log.write_all(stdout_text.as_bytes()).await?,
        }
        log.write_all(stderr_text.as_bytes()).await?;
        let status = status?;
        let code = status.code().unwrap_or(-1);
        if !ok_codes.contains(&code) {
            let combined = if stdout_to.is_some() {
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

    /// `init`, `plan [extra] -out`, `show -json` into the artifacts: the steps
    /// a plan and a drift check share. Returns the plan text, plan's exit
    /// code and the parsed plan JSON.
    async fn plan_steps(
        &self,
        req: &PlanRequest,
        extra: &[&str],
        ok_codes: &[i32],
        cancel: &CancellationToken,
    ) -> Result<(String, i32, serde_json::Value), RunnerError> {
        self.prepare_dirs(req).await?;
        let mut log = tokio::fs::File::create(req.artifacts.join("log.txt")).await?;
        let out_file = std::path::absolute(req.dirs.out().join("plan.tfplan"))?;
        let out_arg = format!("-out={}", out_file.display());
        self.init(req, &mut log, cancel).await?;
        let mut args = vec!["plan", "-input=false", "-no-color", "-lock-timeout=60s"];
        args.extend_from_slice(extra);
        args.push(&out_arg);
        let (plan_text, code) = self
            .step_with_codes("plan", &args, req, &mut log, None, cancel, ok_codes)
            .await?;
        let json = self
            .show_json(
                req,
                &mut log,
                &out_file,
                &req.artifacts.join("plan.json"),
                cancel,
            )
            .await?;
        Ok((plan_text, code, json))
    }

    /// Keeps the plan terraform wrote: copies it from the run's output
    /// directory to the artifacts and returns its sha256.
    async fn keep_plan(&self, req: &PlanRequest) -> Result<(PathBuf, String), RunnerError> {
        let kept = std::path::absolute(plan_file(&req.artifacts))?;
        let bytes = tokio::fs::read(req.dirs.out().join("plan.tfplan")).await?;
        tokio::fs::write(&kept, &bytes).await?;
        Ok((kept, plan_sha256(&bytes)))
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

async fn read_to_vec(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(buf)
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
    async fn plan(
        &self,
        req: &PlanRequest,
        cancel: &CancellationToken,
    ) -> Result<PlanOutput, RunnerError> {
        let (plan_text, _, json) = self.plan_steps(req, &[], &[0], cancel).await?;
        let (plan_file, plan_sha256) = self.keep_plan(req).await?;
        Ok(PlanOutput {
            summary: PlanSummary::from_plan_json(&json),
            plan: json,
            plan_text,
            plan_file,
            plan_sha256,
            plan_json: req.artifacts.join("plan.json"),
        })
    }

    async fn drift(
        &self,
        req: &PlanRequest,
        refresh_only: bool,
        cancel: &CancellationToken,
    ) -> Result<DriftOutput, RunnerError> {
        let mut args = vec!["-detailed-exitcode"];
        if refresh_only {
            args.push("-refresh-only");
        }
        let (plan_text, code, plan) = self.plan_steps(req, &args, &[0, 2], cancel).await?;
        Ok(DriftOutput {
            changes: code == 2,
            plan_text,
            plan,
        })
    }

    async fn apply(
        &self,
        req: &PlanRequest,
        init: bool,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        self.prepare_dirs(req).await?;
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.artifacts.join("log.txt"))
            .await?;
        let kept = plan_file(&req.artifacts);
        let bytes = match tokio::fs::read(&kept).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RunnerError::Failed {
                    step: "apply",
                    message: "the saved plan file is missing".into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        // The bytes checked are the bytes applied: terraform reads a copy in a
        // directory it may not write to.
        let actual = plan_sha256(&bytes);
        let expected = req.plan_sha256.clone().ok_or_else(|| RunnerError::Failed {
            step: "apply",
            message: "no checksum was recorded for the plan; re-plan".into(),
        })?;
        if actual != expected {
            log.write_all(
                b"gantry: the saved plan file does not match the reviewed plan; not applying\n",
            )
            .await?;
            return Err(RunnerError::PlanTampered { expected, actual });
        }
        let plan = std::path::absolute(req.dirs.plan().join("plan.tfplan"))?;
        tokio::fs::write(&plan, &bytes).await?;
        if init {
            self.init(req, &mut log, cancel).await?;
        }
        let plan_path = plan.display().to_string();
        let text = self
            .step(
                "apply",
                &[
                    "apply",
                    "-input=false",
                    "-no-color",
                    "-lock-timeout=60s",
                    &plan_path,
                ],
                req,
                &mut log,
                None,
                cancel,
            )
            .await?;
        log.flush().await?;
        Ok(text)
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
