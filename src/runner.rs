//! Runners execute terraform (or tofu) for a run. [`Runner`] is the border a
//! remote agent will implement; [`LocalRunner`] runs the CLI as a subprocess:
//! `init`, `plan -out`, `show -json`, in its own process group, with a clean
//! environment, a timeout that kills the whole group, and output captured to the
//! run's log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::redact::Redactor;
use crate::runs::PlanSummary;

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
    #[error("cannot run terraform: {0}")]
    Spawn(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One plan to make.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Directory terraform runs in (the workspace `dir` inside a checkout).
    pub workdir: PathBuf,
    /// Where plan file, plan JSON and log are kept.
    pub artifacts: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PlanOutput {
    pub summary: PlanSummary,
    /// The human-readable plan (`terraform plan` output), redacted.
    pub plan_text: String,
    pub plan_file: PathBuf,
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

    /// Applies the saved plan file from `req.artifacts` (running `init` first
    /// when `init` is set: a fresh checkout). Returns the apply output.
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

/// Runs the terraform CLI on this machine.
pub struct LocalRunner {
    bin: String,
    interrupt_grace: Duration,
    env: Vec<(String, String)>,
    redactor: Redactor,
}

impl LocalRunner {
    /// Builds the runner for the current configuration. The environment is built
    /// from scratch: PATH, HOME, `TF_IN_AUTOMATION`, the shared plugin cache, the
    /// CLI config file, and only the variables the operator listed.
    pub fn from_config(
        config: &Config,
        daemon_env: &dyn Fn(&str) -> Option<String>,
    ) -> std::io::Result<LocalRunner> {
        let cache = config.data_dir.join("plugin-cache");
        std::fs::create_dir_all(&cache)?;
        let cache = std::path::absolute(&cache)?;
        let mut env: Vec<(String, String)> = Vec::new();
        for name in ["PATH", "HOME"] {
            if let Some(v) = daemon_env(name) {
                env.push((name.into(), v));
            }
        }
        env.push(("TF_IN_AUTOMATION".into(), "1".into()));
        env.push(("TF_INPUT".into(), "0".into()));
        env.push(("TF_PLUGIN_CACHE_DIR".into(), cache.display().to_string()));
        match &config.terraform.cli_config_file {
            Some(f) => env.push((
                "TF_CLI_CONFIG_FILE".into(),
                std::path::absolute(f)?.display().to_string(),
            )),
            None => {
                if let Some(v) = daemon_env("TF_CLI_CONFIG_FILE") {
                    env.push(("TF_CLI_CONFIG_FILE".into(), v));
                }
            }
        }
        let redactor = Redactor::for_config(config, daemon_env);
        for name in &config.terraform.pass_env {
            if let Some(v) = daemon_env(name) {
                env.push((name.clone(), v));
            }
        }
        for (k, v) in &config.terraform.env {
            env.push((k.clone(), v.clone()));
        }
        Ok(LocalRunner {
            bin: config.terraform.bin.clone(),
            interrupt_grace: INTERRUPT_GRACE,
            env,
            redactor,
        })
    }

    /// How long terraform gets between SIGINT and SIGKILL (default 10 s).
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.interrupt_grace = grace;
        self
    }

    async fn init(
        &self,
        req: &PlanRequest,
        log: &mut tokio::fs::File,
        cancel: &CancellationToken,
    ) -> Result<String, RunnerError> {
        let _one_at_a_time = INIT_LOCK.lock().await;
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

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
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
        log.write_all(format!("$ {} {}\n", self.bin, args.join(" ")).as_bytes())
            .await?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(&req.workdir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RunnerError::Spawn(format!("{}: {e}", self.bin)))?;
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
        let stdout_text = self.redactor.redact(&String::from_utf8_lossy(&out?));
        let stderr_text = self.redactor.redact(&String::from_utf8_lossy(&err?));
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
}

async fn read_to_vec(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Terraform's plugin cache is not safe for concurrent `init`s (two inits
/// creating the same cache directory fail with "file exists"): this process
/// runs one `init` at a time; plans and applies still run in parallel.
static INIT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        tokio::fs::create_dir_all(&req.artifacts).await?;
        let mut log = tokio::fs::File::create(req.artifacts.join("log.txt")).await?;
        let plan_file = std::path::absolute(plan_file(&req.artifacts))?;
        let plan_json = req.artifacts.join("plan.json");
        let out_arg = format!("-out={}", plan_file.display());
        self.init(req, &mut log, cancel).await?;
        let plan_text = self
            .step(
                "plan",
                &[
                    "plan",
                    "-input=false",
                    "-no-color",
                    "-lock-timeout=60s",
                    &out_arg,
                ],
                req,
                &mut log,
                None,
                cancel,
            )
            .await?;
        let json = self
            .show_json(req, &mut log, &plan_file, &plan_json, cancel)
            .await?;
        Ok(PlanOutput {
            summary: PlanSummary::from_plan_json(&json),
            plan: json,
            plan_text,
            plan_file,
            plan_json,
        })
    }

    async fn drift(
        &self,
        req: &PlanRequest,
        refresh_only: bool,
        cancel: &CancellationToken,
    ) -> Result<DriftOutput, RunnerError> {
        tokio::fs::create_dir_all(&req.artifacts).await?;
        let mut log = tokio::fs::File::create(req.artifacts.join("log.txt")).await?;
        let plan_file = std::path::absolute(plan_file(&req.artifacts))?;
        let plan_json = req.artifacts.join("plan.json");
        let out_arg = format!("-out={}", plan_file.display());
        self.init(req, &mut log, cancel).await?;
        let mut args = vec![
            "plan",
            "-input=false",
            "-no-color",
            "-lock-timeout=60s",
            "-detailed-exitcode",
        ];
        if refresh_only {
            args.push("-refresh-only");
        }
        args.push(&out_arg);
        let (plan_text, code) = self
            .step_with_codes("plan", &args, req, &mut log, None, cancel, &[0, 2])
            .await?;
        let plan = self
            .show_json(req, &mut log, &plan_file, &plan_json, cancel)
            .await?;
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
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.artifacts.join("log.txt"))
            .await?;
        let plan = std::path::absolute(plan_file(&req.artifacts))?;
        if !plan.exists() {
            return Err(RunnerError::Failed {
                step: "apply",
                message: "the saved plan file is missing".into(),
            });
        }
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
