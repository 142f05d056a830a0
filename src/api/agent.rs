//! `/api/agent/*`: the endpoints `gantry agent` speaks (the wire protocol is
//! [`crate::runner::protocol`]), and `GET /api/agents`.
//!
//! A pool's token opens these endpoints and nothing else; the API token does
//! not open them. Every request about a job is checked against the agent's
//! pool (another pool's job is a 404, as if it did not exist), the agent it
//! was granted to (404) and the lease it holds (409 once lost). A grant is
//! built when the job is claimed, by whichever replica answers: that
//! workspace's variables for the job's phase only, and a backend token for
//! that run and workspace (read-only unless the job is an apply). Nothing
//! here goes through the response redactor: a grant carries the secrets its
//! job needs, to the one agent that holds it.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiState};
use crate::config::{Config, Phase};
use crate::runner::protocol::{self, AgentInfo, ClaimRequest, JobGrant, JobKind, JobResult};
use crate::runner::remote::{PLAN_FILE, PLAN_JSON};
use crate::settings::Settings;
use crate::store::{sha256_hex, AgentJob, ArtifactKind, JobAccess, Store, StoreError};

/// The largest artifact an agent may upload (a plan file holds the whole
/// configuration and its providers' data).
const MAX_ARTIFACT_BYTES: usize = 512 * 1024 * 1024;

/// How often a long-polling claim looks for a job.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How often a long-polling agent is recorded as seen.
const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The agent a request comes from: its pool (known by its token) and name.
#[derive(Debug, Clone)]
pub struct Agent {
    pub pool: String,
    pub name: String,
}

/// The agent endpoints, under `/api` (their paths start with `/agent`).
pub fn router(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/agent/claim", post(claim))
        .route("/agent/jobs/{id}/source", get(source))
        .route("/agent/jobs/{id}/plan", get(plan))
        .route("/agent/jobs/{id}/heartbeat", post(heartbeat))
        .route("/agent/jobs/{id}/log", post(log))
        .route(
            "/agent/jobs/{id}/artifacts/{kind}",
            put(upload).layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES)),
        )
        .route("/agent/jobs/{id}/complete", post(complete))
        .route_layer(middleware::from_fn_with_state(
            state.settings.clone(),
            require_pool_token,
        ))
}

/// Lets a request in with a configured pool's token (compared in constant
/// time with every pool's) and an agent name.
async fn require_pool_token(
    State(settings): State<Settings>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let config = settings.config();
    let mut pool = None;
    for p in &config.agent_pools {
        if bool::from(
            presented
                .as_bytes()
                .ct_eq(p.token.expose_secret().as_bytes()),
        ) {
            pool = Some(p.name.clone());
        }
    }
    let pool = pool.ok_or(ApiError::Unauthorized)?;
    let name = req
        .headers()
        .get(protocol::AGENT_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| valid_agent_name(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{} must name the agent (letters, digits, `-`, `_`, `.`; at most 64)",
                protocol::AGENT_NAME_HEADER
            ))
        })?
        .to_string();
    req.extensions_mut().insert(Agent { pool, name });
    Ok(next.run(req).await)
}

fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a job id")))
}

fn lease_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(protocol::LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
}

fn lost(id: i64) -> ApiError {
    ApiError::Conflict(format!("this agent no longer holds job {id}; stop it"))
}

/// The job `id`, if `agent` holds its lease: 404 for another pool's job or
/// one granted to another agent, 409 once the lease is lost.
async fn held(
    store: &Store,
    agent: &Agent,
    id: &str,
    headers: &HeaderMap,
) -> Result<(AgentJob, String), ApiError> {
    let id = job_id(id)?;
    let token = lease_of(headers);
    match store
        .agent_job_access(id, &agent.pool, &agent.name, token)
        .await?
    {
        JobAccess::Held(job) => Ok((*job, token.unwrap_or_default().to_string())),
        JobAccess::NotFound => Err(ApiError::NotFound(format!("no job {id}"))),
        JobAccess::Lost => Err(lost(id)),
    }
}

/// A store write refused because the lease was lost is a 409.
fn lease_error(id: i64, e: StoreError) -> ApiError {
    match e {
        StoreError::LeaseLost { .. } => lost(id),
        e => e.into(),
    }
}

/// `POST /api/agent/claim`: long-polls up to [`protocol::CLAIM_WAIT`] for a
/// job of the agent's pool; `200` with its grant, or `204`.
async fn claim(
    State(store): State<Store>,
    State(settings): State<Settings>,
    State(shutdown): State<CancellationToken>,
    Extension(agent): Extension<Agent>,
    Json(req): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    if req.free == 0 {
        return Err(ApiError::BadRequest(
            "free must be at least 1 to claim a job".into(),
        ));
    }
    store
        .agent_seen(&agent.pool, &agent.name, Some(&req.version))
        .await?;
    let deadline = tokio::time::Instant::now() + protocol::CLAIM_WAIT;
    let mut seen = tokio::time::Instant::now();
    loop {
        let config = settings.config();
        let lease = config.queue.lease;
        // Made before looking, so a job queued meanwhile wakes this claim.
        let queued = store.agent_jobs_changed();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if let Some(job) = store
            .claim_agent_job(&agent.pool, &agent.name, lease)
            .await?
        {
            tracing::info!(run.id = job.run_id, agent = %agent.name, pool = %agent.pool, "run {}: agent {}/{} claimed job {}", job.run_id, agent.pool, agent.name, job.id);
            return Ok(Json(grant(&config, &store, job).await?).into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep(CLAIM_POLL) => {}
            // This process queued a job: claim it at once.
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => break,
            // A draining replica hands out no work.
            _ = shutdown.cancelled() => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        if seen.elapsed() >= SEEN_EVERY {
            seen = tokio::time::Instant::now();
            store.agent_seen(&agent.pool, &agent.name, None).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What the agent holding `job` is told: built now, from the config and the
/// store (nothing secret is kept with the job).
async fn grant(config: &Config, store: &Store, job: AgentJob) -> Result<JobGrant, ApiError> {
    let kind: JobKind = serde_json::from_str(&job.job)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("agent job {}: {e}", job.id)))?;
    let (phase, access) = match kind {
        JobKind::Plan => (Phase::Plan, crate::state::Access::Read),
        JobKind::Drift { .. } => (Phase::Drift, crate::state::Access::Read),
        JobKind::Apply { .. } => (Phase::Apply, crate::state::Access::Write),
    };
    let variables = crate::runner::variables_for(config, &job.workspace, phase)
        .into_iter()
        .map(|v| protocol::Variable {
            name: v.name,
            value: v.value,
            sensitive: v.sensitive,
        })
        .collect();
    let backend = match job.gantry_state {
        false => None,
        true => {
            // The agent joins the path with its own `--server` URL.
            let creds =
                crate::state::run_credentials(store, "", &job.workspace, job.run_id, access)
                    .await
                    .map_err(|e| ApiError::Internal(e.into()))?;
            Some(protocol::Backend {
                path: creds.address,
                username: creds.username,
                password: creds.password.expose_secret().to_string(),
            })
        }
    };
    let terraform = std::path::Path::new(&config.terraform.bin)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| config.terraform.bin.clone());
    Ok(JobGrant {
        job_id: job.id,
        lease_token: job.lease_token.unwrap_or_default(),
        lease_ms: config.queue.lease.as_millis() as u64,
        run_id: job.run_id,
        workspace: job.workspace,
        job: kind,
        commit: job.commit,
        dir: job.dir,
        variables,
        backend,
        timeout_ms: job.timeout_ms as u64,
        terraform,
        plan_sha256: job.plan_sha256,
    })
}

/// `GET /api/agent/jobs/{id}/source`: the checkout as a tar.gz.
async fn source(
    State(store): State<Store>,
    Extension(agent): Extension<Agent>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (job, _) = held(&store, &agent, &id, &headers).await?;
    let bytes = store.agent_job_source(job.id).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/gzip")],
        bytes,
    )
        .into_response())
}

/// `GET /api/agent/jobs/{id}/plan`: the reviewed plan file an apply job
/// applies (the agent checks it against the grant's `plan_sha256`).
async fn plan(
    State(store): State<Store>,
    Extension(agent): Extension<Agent>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (job, _) = held(&store, &agent, &id, &headers).await?;
    if job.plan_sha256.is_none() {
        return Err(ApiError::NotFound(format!(
            "job {} applies no plan",
            job.id
        )));
    }
    let plan = store
        .artifact(job.run_id, ArtifactKind::PlanFile)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {} has no plan file", job.run_id)))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        plan.bytes,
    )
        .into_response())
}

/// `POST /api/agent/jobs/{id}/heartbeat`: renews the lease; says whether to
/// stop terraform.
async fn heartbeat(
    State(store): State<Store>,
    State(settings): State<Settings>,
    Extension(agent): Extension<Agent>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<protocol::Heartbeat>, ApiError> {
    let (job, token) = held(&store, &agent, &id, &headers).await?;
    store.agent_seen(&agent.pool, &agent.name, None).await?;
    let lease = settings.config().queue.lease;
    match store.heartbeat_agent_job(job.id, &token, lease).await? {
        Some(cancel) => Ok(Json(protocol::Heartbeat { cancel })),
        None => Err(lost(job.id)),
    }
}

/// `POST /api/agent/jobs/{id}/log`: a chunk of the run's log, stored once
/// (redacted again here: the agent's redactor knows only its job's secrets).
async fn log(
    State(store): State<Store>,
    State(settings): State<Settings>,
    Extension(agent): Extension<Agent>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(chunk): Json<protocol::LogChunk>,
) -> Result<StatusCode, ApiError> {
    let (job, token) = held(&store, &agent, &id, &headers).await?;
    let seq =
        i64::try_from(chunk.seq).map_err(|_| ApiError::BadRequest("seq is too large".into()))?;
    let text = settings.redactor().redact(&chunk.text);
    store
        .append_agent_log(&job, &token, seq, &text)
        .await
        .map_err(|e| lease_error(job.id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/agent/jobs/{id}/artifacts/{plan_file|plan_json}`: a plan or
/// drift job's output, refused (400, nothing stored) unless its bytes hash
/// to the [`protocol::SHA256_HEADER`] sent with them.
async fn upload(
    State(store): State<Store>,
    Extension(agent): Extension<Agent>,
    Path((id, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let kind = match kind.as_str() {
        PLAN_FILE => PLAN_FILE,
        PLAN_JSON => PLAN_JSON,
        other => return Err(ApiError::NotFound(format!("no artifact `{other}`"))),
    };
    let (job, token) = held(&store, &agent, &id, &headers).await?;
    if job.plan_sha256.is_some() {
        return Err(ApiError::BadRequest(format!(
            "job {} is an apply; it uploads no plan",
            job.id
        )));
    }
    let claimed = headers
        .get(protocol::SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest(format!("{} is required", protocol::SHA256_HEADER)))?;
    let actual = sha256_hex(&body);
    if !claimed.eq_ignore_ascii_case(&actual) {
        tracing::warn!(run.id = job.run_id, agent = %agent.name, "run {}: {kind} upload refused: its sha256 does not match", job.run_id);
        return Err(ApiError::BadRequest(format!(
            "the {kind} does not hash to {claimed} (sha256 {actual})"
        )));
    }
    store
        .put_agent_artifact(job.id, &token, kind, &body, &actual)
        .await
        .map_err(|e| lease_error(job.id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/agent/jobs/{id}/complete`: how the job ended. A job handed
/// back (the agent drains) is queued again at once for another agent.
async fn complete(
    State(store): State<Store>,
    Extension(agent): Extension<Agent>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(result): Json<JobResult>,
) -> Result<StatusCode, ApiError> {
    let (job, token) = held(&store, &agent, &id, &headers).await?;
    let handed_back = result.outcome == protocol::Outcome::HandedBack;
    let json = serde_json::to_string(&result).map_err(anyhow::Error::from)?;
    store
        .complete_agent_job(job.id, &token, &json, handed_back)
        .await
        .map_err(|e| lease_error(job.id, e))?;
    tracing::info!(run.id = job.run_id, agent = %agent.name, "run {}: agent {}/{} completed job {}", job.run_id, agent.pool, agent.name, job.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/agents` (API token): every agent seen, live or not.
pub async fn list_agents(
    State(store): State<Store>,
    State(settings): State<Settings>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let lease = settings.config().queue.lease;
    let live_since = crate::store::now_ms() - 2 * lease.as_millis() as i64;
    let agents: Vec<AgentInfo> = store
        .agents()
        .await?
        .into_iter()
        .map(|a| AgentInfo {
            live: a.last_seen >= live_since,
            last_seen: super::rfc3339(a.last_seen),
            pool: a.pool,
            name: a.name,
            version: a.version,
            running_runs: a.running_runs,
        })
        .collect();
    Ok(Json(serde_json::json!({ "agents": agents })))
}
