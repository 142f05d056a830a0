//! The wire protocol between gantry's replicas and `gantry agent` (a remote
//! [`super::Runner`] of a self-hosted agent pool): JSON over HTTPS under
//! `/api/agent/`, spoken by the server's handlers and by the agent.
//!
//! Every request carries the pool's token (`Authorization: Bearer …`) and the
//! agent's name ([`AGENT_NAME_HEADER`]); a request about one job also carries
//! the lease token it was granted ([`LEASE_HEADER`]). The server answers:
//! - 401 for a missing or wrong pool token (compared in constant time);
//! - 404 for a job of another pool (indistinguishable from one that does not
//!   exist), or one granted to another agent;
//! - 409 once the agent no longer holds the job's lease (it was re-queued,
//!   the run was canceled or taken back): the agent stops terraform and
//!   drops the job.
//!
//! The job's flow, all under [`PREFIX`]:
//! 1. `POST claim` with a [`ClaimRequest`]: long-polls up to
//!    [`CLAIM_WAIT`]; `200` with a [`JobGrant`], or `204` (nothing to do).
//! 2. `GET jobs/{id}/source`: the checkout of the run's commit as a
//!    `tar.gz` (gantry made it; the agent never gets a VCS credential).
//!    `GET jobs/{id}/plan` (apply jobs): the reviewed plan file's bytes, to
//!    be applied only if they hash to [`JobGrant::plan_sha256`].
//! 3. `POST jobs/{id}/heartbeat` every third of [`JobGrant::lease_ms`]:
//!    `200` with a [`Heartbeat`] (renewed; `cancel` asks the agent to stop
//!    terraform), or `409` (lease lost: stop at once).
//! 4. `POST jobs/{id}/log` with a [`LogChunk`], about every second while
//!    terraform runs: appended to the run's log in the store.
//! 5. `PUT jobs/{id}/artifacts/plan_file` and `…/plan_json` (plan and drift
//!    jobs): the raw bytes, with [`SHA256_HEADER`]; the server checks the
//!    hash, the lease and that the job is of that run.
//! 6. `POST jobs/{id}/complete` with a [`JobResult`]: the job is done (`204`).
//!
//! An agent that stops heartbeating loses the job after its lease: a plan or
//! drift job is queued again once (for another agent); an apply job is never
//! repeated: its run ends `interrupted during apply` and the workspace is
//! locked, as for a replica.

use serde::{Deserialize, Serialize};

/// Where the agent endpoints live on every replica.
pub const PREFIX: &str = "/api/agent";
/// The agent's name within its pool (stable across restarts: the host name
/// by default).
pub const AGENT_NAME_HEADER: &str = "x-gantry-agent";
/// The lease token of the job a request is about.
pub const LEASE_HEADER: &str = "x-gantry-lease";
/// The hex sha256 of an uploaded artifact's bytes.
pub const SHA256_HEADER: &str = "x-gantry-sha256";
/// How long a claim waits for a job before answering `204`.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `POST claim`: who asks, and how many more jobs it can take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClaimRequest {
    /// The agent's version (`gantry --version`), shown by `GET /api/agents`.
    pub version: String,
    /// Free slots (`--concurrency` minus running jobs); at least 1.
    pub free: u32,
    /// Jobs the agent is running now (shown by `GET /api/agents`).
    pub running: Vec<i64>,
}

/// What a job does: the agent-side form of [`super::JobPhase`] (the plan
/// file of an apply is fetched separately).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    Plan,
    Drift { refresh_only: bool },
    Apply { init: bool },
}

/// One variable of the job's phase.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Variable {
    pub name: String,
    pub value: String,
    /// Masked in everything the agent sends back.
    pub sensitive: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sensitive {
            write!(f, "{}=***", self.name)
        } else {
            write!(f, "{}={}", self.name, self.value)
        }
    }
}

/// gantry's `http` state backend for the job's workspace, with a token
/// scoped to this run and workspace (read-only unless the job is an apply).
/// The agent sets `TF_HTTP_ADDRESS`, `TF_HTTP_LOCK_ADDRESS` and
/// `TF_HTTP_UNLOCK_ADDRESS` to its `--server` URL joined with `path`, and
/// `TF_HTTP_USERNAME`/`TF_HTTP_PASSWORD` to these.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Backend {
    /// e.g. `/state/v1/dns`.
    pub path: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Backend({} as {}, password ***)",
            self.path, self.username
        )
    }
}

/// `200` to `POST claim`: one job, held by the agent under `lease_token`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobGrant {
    pub job_id: i64,
    pub lease_token: String,
    /// The lease's length; heartbeat every third of it.
    pub lease_ms: u64,
    pub run_id: i64,
    pub workspace: String,
    pub job: JobKind,
    /// The commit the source archive holds.
    pub commit: String,
    /// The workspace's directory inside the repository.
    pub dir: String,
    /// The run's variables for this phase only.
    pub variables: Vec<Variable>,
    /// `None`: the workspace declares its own backend; leave it alone.
    pub backend: Option<Backend>,
    /// terraform's timeout for the job.
    pub timeout_ms: u64,
    /// The CLI the workspace is run with (`terraform.bin`'s file name, e.g.
    /// `terraform` or `tofu`); the agent runs its own installed binary of
    /// that name unless `--terraform` says otherwise.
    pub terraform: String,
    /// Apply jobs: the sha256 the fetched plan file must hash to.
    pub plan_sha256: Option<String>,
}

/// `200` to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// The run was canceled: stop terraform (SIGINT, then SIGKILL) and
    /// complete the job as [`Outcome::Canceled`].
    pub cancel: bool,
}

/// `POST jobs/{id}/log`: redacted text terraform printed, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogChunk {
    /// 0, 1, 2…: a retried chunk (same `seq`) is stored once.
    pub seq: u64,
    pub text: String,
}

/// How a job ended, as the agent's runner saw it (the remote form of
/// [`super::RunnerError`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Terraform finished; for plan and drift jobs the plan file and its
    /// JSON were uploaded first.
    Succeeded {
        /// A drift check's `plan -detailed-exitcode` exited 2.
        changes: bool,
    },
    /// Terraform ran and failed at `step` (`init`, `plan`, `apply`…).
    Failed {
        step: String,
        message: String,
    },
    TimedOut {
        step: String,
        after_ms: u64,
    },
    /// Stopped on a cancel request (or the lease was lost).
    Canceled,
    /// The agent is draining (SIGTERM) and stopped a plan or drift job
    /// before it finished: queue it again for another agent.
    HandedBack,
    /// The fetched plan file did not hash to `plan_sha256`: nothing applied.
    PlanTampered {
        expected: String,
        actual: String,
    },
    /// The agent could not run terraform at all (no binary, no sandbox, a
    /// bad archive…).
    Error {
        message: String,
    },
}

/// `POST jobs/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobResult {
    pub outcome: Outcome,
    /// The main step's output, redacted (the plan text or the apply's output).
    pub text: String,
}

/// One agent as `GET /api/agents` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    pub pool: String,
    pub name: String,
    pub version: String,
    /// RFC 3339.
    pub last_seen: String,
    /// Whether it asked for work or heartbeated within two leases.
    pub live: bool,
    /// The jobs it is running: run ids.
    pub running_runs: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_outcomes_are_tagged_snake_case() {
        let j = serde_json::to_value(JobKind::Drift { refresh_only: true }).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind": "drift", "refresh_only": true})
        );
        let o = serde_json::to_value(Outcome::HandedBack).unwrap();
        assert_eq!(o, serde_json::json!({"kind": "handed_back"}));
    }

    #[test]
    fn secrets_never_print() {
        let v = Variable {
            name: "TF_VAR_password".into(),
            value: "hunter2".into(),
            sensitive: true,
        };
        let b = Backend {
            path: "/state/v1/dns".into(),
            username: "run-1".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{v:?} {b:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
