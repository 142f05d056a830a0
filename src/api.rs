//! HTTP: the router (webhooks, REST API, agent endpoints, health) and the
//! API's error type.
//!
//! `/api/*` needs `Authorization: Bearer <token>` (the token named by
//! `api_token_env`), except `/api/agent/*` ([`agent`]), which needs an agent
//! pool's token instead; health endpoints and webhooks (which carry their own
//! signatures) need neither.

pub mod agent;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::runs::running::Running;
use crate::runs::{PlanSummary, Run};
use crate::settings::Settings;
use crate::store::{EventsStored, RunsQueued, Store};

/// What the HTTP handlers use. Each handler extracts only its parts
/// (`State<Store>`, `State<Settings>`, ...), through [`FromRef`].
#[derive(Clone)]
pub struct ApiState {
    pub settings: Settings,
    pub store: Store,
    /// Drift checks requested through the API fetch the branch head.
    pub mirrors: Mirrors,
    /// A canceled run's final status.
    pub outbox: Outbox,
    /// Cancel requests reach the runs this process executes.
    pub running: Running,
    pub runs_queued: RunsQueued,
    pub events_stored: EventsStored,
    /// Canceled when this replica starts draining: `readyz` answers 503.
    pub shutdown: CancellationToken,
}

macro_rules! substates {
    ($($field:ident: $ty:ty),* $(,)?) => {$(
        impl FromRef<ApiState> for $ty {
            fn from_ref(state: &ApiState) -> $ty {
                state.$field.clone()
            }
        }
    )*};
}

substates! {
    settings: Settings,
    store: Store,
    mirrors: Mirrors,
    outbox: Outbox,
    running: Running,
    runs_queued: RunsQueued,
    events_stored: EventsStored,
    shutdown: CancellationToken,
}

/// The API's errors: a status and a short reason; details go to the log only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state (e.g. applying a finished run).
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/log", get(run_log))
        .route("/runs/{id}/apply", post(confirm_apply))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/override", post(override_policy))
        .route("/workspaces", get(list_workspaces))
        .route("/workspaces/{name}/lock", post(lock_workspace))
        .route("/workspaces/{name}/unlock", post(unlock_workspace))
        .route("/workspaces/{name}/state", get(current_state))
        .route("/workspaces/{name}/state-versions", get(state_versions))
        .route("/workspaces/{name}/drift-check", post(drift_check))
        .route("/workspaces/{name}/drift", get(workspace_drift))
        .route("/drift", get(all_drift))
        .route("/audit", get(audit_log))
        .route("/agents", get(agent::list_agents))
        .route_layer(middleware::from_fn_with_state(
            state.settings.clone(),
            require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state.settings.clone(),
            redact_response,
        ))
        // Merged after both layers: a pool token opens these instead of the
        // API token, and a grant's secrets go to its agent unredacted.
        .merge(agent::router(&state));
    Router::new()
        .route(
            "/webhooks/{provider_id}",
            post(crate::ingest::webhook)
                .layer(DefaultBodyLimit::max(crate::ingest::MAX_BODY_BYTES)),
        )
        .nest("/api", api)
        .nest_service(
            crate::state::http::PATH,
            crate::state::http::router(crate::state::http::Backend {
                store: state.store.clone(),
                config: state.settings.shared_config().clone(),
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn require_token(
    State(settings): State<Settings>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let config = settings.config();
    let expected = config.api_token.expose_secret().as_bytes();
    if !bool::from(presented.as_bytes().ct_eq(expected)) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// Every `/api` response body goes through the redactor: secrets and their
/// encodings that reached stored runs, states or audit details are masked on
/// the way out (and Content-Length fixed).
async fn redact_response(State(settings): State<Settings>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading an API response body to redact it");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let redacted = match settings.redactor().redact_bytes(&bytes) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(v) => Some(v),
    };
    let body = match redacted {
        Some(v) => axum::body::Bytes::from(v),
        None => bytes,
    };
    parts.headers.insert(
        axum::http::header::CONTENT_LENGTH,
        axum::http::HeaderValue::from(body.len()),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

async fn readyz(State(shutdown): State<CancellationToken>, State(store): State<Store>) -> Response {
    if shutdown.is_cancelled() {
        // Out of the load balancer while the replica drains.
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct RunView {
    id: i64,
    workspace: String,
    kind: &'static str,
    source: &'static str,
    state: &'static str,
    state_reason: Option<String>,
    /// How the run failed, as a stable kind (`terraform`, `apply`, `refused`, ...).
    failure: Option<&'static str>,
    repo: String,
    branch: String,
    pull_request: Option<i64>,
    commit_sha: String,
    attempt: i64,
    retry_of: Option<i64>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    updated_at: String,
    plan: Option<PlanSummary>,
    planned_at: Option<String>,
    /// sha256 of the saved plan file, checked before any apply.
    plan_sha256: Option<String>,
    apply_requested_by: Option<String>,
    cost_estimate: Option<crate::cost::CostEstimate>,
    policy_results: Option<Vec<crate::policy::groups::PolicyCheck>>,
    policy_override: Option<String>,
    /// Which runner executed it: `local` or `agent:POOL/NAME`.
    runner: Option<String>,
    /// What the running run waits for, e.g. `an agent of pool blue` while
    /// no agent of its workspace's pool is live.
    waiting_for: Option<String>,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> Self {
        RunView {
            id: r.id,
            workspace: r.workspace.clone(),
            kind: r.kind.as_str(),
            source: r.source.as_str(),
            state: r.state.as_str(),
            state_reason: r.state_reason.clone(),
            failure: r.failure.map(|f| f.as_str()),
            repo: r.repo.clone(),
            branch: r.branch.clone(),
            pull_request: r.pr_number,
            commit_sha: r.head_sha.clone(),
            attempt: r.attempt,
            retry_of: r.retry_of,
            created_at: rfc3339(r.enqueued_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            updated_at: rfc3339(r.updated_at),
            plan: r.plan,
            planned_at: r.planned_at.map(rfc3339),
            plan_sha256: r.plan_sha256.clone(),
            apply_requested_by: r.requested_by.clone(),
            cost_estimate: r.cost.clone(),
            policy_results: r.policy.clone(),
            policy_override: r.policy_override.clone(),
            runner: r.runner.clone(),
            waiting_for: r.waiting_for.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RunsQuery {
    workspace: Option<String>,
    limit: Option<i64>,
}

async fn list_runs(
    State(store): State<Store>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let runs = store.list_runs(q.workspace.as_deref(), limit).await?;
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    Ok(Json(json!({ "runs": views })))
}

fn run_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a run id")))
}

async fn find_run(store: &Store, id: i64) -> Result<Run, ApiError> {
    store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))
}

async fn get_run(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = run_id(&id)?;
    let run = find_run(&store, id).await?;
    let transitions: Vec<serde_json::Value> = store
        .transitions(id)
        .await?
        .into_iter()
        .map(|t| json!({"state": t.state, "reason": t.reason, "at": rfc3339(t.at)}))
        .collect();
    let mut view = serde_json::to_value(RunView::from(&run)).map_err(anyhow::Error::from)?;
    view["transitions"] = serde_json::Value::Array(transitions);
    Ok(Json(view))
}

/// The run's log as text, redacted, from the store: whichever replica ran
/// it, and as far as it got if it is still running or was killed.
async fn run_log(State(store): State<Store>, Path(id): Path<String>) -> Result<String, ApiError> {
    let id = run_id(&id)?;
    find_run(&store, id).await?;
    Ok(store.run_log(id).await?.unwrap_or_default())
}

async fn list_workspaces(
    State(settings): State<Settings>,
    State(store): State<Store>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let config = settings.config();
    let latest = store.latest_runs().await?;
    let locks = store.workspace_locks().await?;
    let list: Vec<serde_json::Value> = config
        .workspaces
        .iter()
        .map(|w| {
            let last = latest
                .iter()
                .find(|r| r.workspace == w.name)
                .map(RunView::from);
            json!({
                "name": w.name,
                "environment": w.environment,
                "provider": w.provider,
                "repo": w.repo,
                "branch": w.branch,
                "dir": w.dir.to_string(),
                "trigger_patterns": w.trigger_patterns,
                "latest_run": last,
                "auto_apply": w.auto_apply,
                "workflow": w.workflow,
                "lock": locks.iter().find(|l| l.workspace == w.name).map(|l| json!({
                    "reason": l.reason, "locked_by": l.locked_by, "run_id": l.run_id, "locked_at": rfc3339(l.locked_at)
                })),
            })
        })
        .collect();
    Ok(Json(json!({ "workspaces": list })))
}

/// Who API calls act as, in the audit log.
const API_ACTOR: &str = "api";

/// Records an API action on a run in the audit log.
async fn audit_run(
    store: &Store,
    action: &str,
    run: &Run,
    detail: Option<&str>,
) -> Result<(), ApiError> {
    store
        .audit(crate::store::Audit {
            actor: API_ACTOR,
            action,
            workspace: Some(&run.workspace),
            run_id: Some(run.id),
            commit_sha: Some(&run.head_sha),
            detail,
        })
        .await?;
    Ok(())
}

/// `POST /api/runs/{id}/apply`: confirms a run waiting for confirmation (or
/// applies a PR plan): its saved plan is applied when the workspace is free.
async fn confirm_apply(
    State(store): State<Store>,
    State(runs_queued): State<RunsQueued>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = run_id(&id)?;
    let run = find_run(&store, id).await?;
    if let Some(lock) = store.workspace_lock(&run.workspace).await? {
        return Err(ApiError::Conflict(format!(
            "workspace {} is locked: {}",
            run.workspace, lock.reason
        )));
    }
    if matches!(
        run.policy_verdict(),
        crate::policy::groups::Verdict::HardBlocked | crate::policy::groups::Verdict::SoftBlocked
    ) {
        return Err(ApiError::Conflict(format!(
            "run {id} is {}",
            crate::runs::execute::policy_block_reason(&run)
        )));
    }
    if !store.request_apply(id, API_ACTOR).await? {
        return Err(ApiError::Conflict(format!(
            "run {id} is {}; only a planned run or one that needs confirmation can be applied",
            run.state
        )));
    }
    audit_run(&store, "confirm", &run, None).await?;
    runs_queued.notify();
    let run = find_run(&store, id).await?;
    Ok(Json(
        serde_json::to_value(RunView::from(&run)).map_err(anyhow::Error::from)?,
    ))
}

/// `POST /api/runs/{id}/cancel`: a queued run is canceled at once; a running
/// one gets SIGINT, then SIGKILL after a grace period.
async fn cancel_run(
    State(store): State<Store>,
    State(running): State<Running>,
    State(outbox): State<Outbox>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = run_id(&id)?;
    let run = find_run(&store, id).await?;
    if !store.request_cancel(id, API_ACTOR).await? {
        return Err(ApiError::Conflict(format!(
            "run {id} is {} and cannot be canceled",
            run.state
        )));
    }
    running.cancel_local_run(id);
    // A queued or waiting run ends here; its status must say so.
    crate::outbox::run_changed(&outbox, id).await;
    audit_run(&store, "cancel", &run, None).await?;
    Ok(Json(json!({"status": "cancel requested", "run": id})))
}

#[derive(Deserialize, Default)]
struct LockRequest {
    reason: Option<String>,
}

fn known_workspace(settings: &Settings, name: &str) -> Result<(), ApiError> {
    settings
        .config()
        .workspace(name)
        .map(|_| ())
        .ok_or_else(|| ApiError::NotFound(format!("no workspace `{name}`")))
}

fn lock_reason(body: Option<Json<LockRequest>>) -> Result<String, ApiError> {
    let reason = body.and_then(|Json(b)| b.reason).unwrap_or_default();
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::BadRequest(
            "a reason is required: {\"reason\": \"...\"}".into(),
        ));
    }
    Ok(reason.to_string())
}

async fn lock_workspace(
    State(settings): State<Settings>,
    State(store): State<Store>,
    Path(name): Path<String>,
    body: Option<Json<LockRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_workspace(&settings, &name)?;
    let reason = lock_reason(body)?;
    if !store
        .lock_workspace(&name, &reason, API_ACTOR, None)
        .await?
    {
        let lock = store.workspace_lock(&name).await?;
        return Err(ApiError::Conflict(format!(
            "workspace {name} is already locked: {}",
            lock.map(|l| l.reason).unwrap_or_default()
        )));
    }
    store
        .audit(crate::store::Audit {
            actor: API_ACTOR,
            action: "lock",
            workspace: Some(&name),
            detail: Some(&reason),
            ..Default::default()
        })
        .await?;
    Ok(Json(
        json!({"workspace": name, "locked": true, "reason": reason}),
    ))
}

async fn unlock_workspace(
    State(settings): State<Settings>,
    State(store): State<Store>,
    State(runs_queued): State<RunsQueued>,
    Path(name): Path<String>,
    body: Option<Json<LockRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_workspace(&settings, &name)?;
    let reason = lock_reason(body)?;
    let Some(old) = store.unlock_workspace(&name).await? else {
        return Err(ApiError::Conflict(format!(
            "workspace {name} is not locked"
        )));
    };
    store
        .audit(crate::store::Audit {
            actor: API_ACTOR,
            action: "unlock",
            workspace: Some(&name),
            run_id: old.run_id,
            detail: Some(&format!("{reason} (was locked: {})", old.reason)),
            ..Default::default()
        })
        .await?;
    runs_queued.notify();
    Ok(Json(json!({"workspace": name, "locked": false})))
}

async fn current_state(
    State(settings): State<Settings>,
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    known_workspace(&settings, &name)?;
    let v = store.latest_state(&name).await?.ok_or_else(|| {
        ApiError::NotFound(format!("workspace {name} has no state kept by gantry"))
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.state,
    )
        .into_response())
}

async fn state_versions(
    State(settings): State<Settings>,
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_workspace(&settings, &name)?;
    let versions: Vec<serde_json::Value> = store
        .state_versions(&name)
        .await?
        .into_iter()
        .map(|v| json!({"id": v.id, "serial": v.serial, "lineage": v.lineage, "run_id": v.run_id, "written_by": v.written_by, "created_at": rfc3339(v.created_at)}))
        .collect();
    Ok(Json(json!({ "state_versions": versions })))
}

#[derive(Deserialize)]
struct AuditQuery {
    workspace: Option<String>,
    limit: Option<i64>,
}

async fn audit_log(
    State(store): State<Store>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries: Vec<serde_json::Value> = store
        .audit_log(q.workspace.as_deref(), limit)
        .await?
        .into_iter()
        .map(|e| {
            json!({"id": e.id, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "workspace": e.workspace,
                   "run_id": e.run_id, "commit_sha": e.commit_sha, "detail": e.detail})
        })
        .collect();
    Ok(Json(json!({ "entries": entries })))
}

/// `POST /api/runs/{id}/override` with `{"reason": "…"}`: lets a run whose
/// soft-mandatory policies failed be applied. Hard-mandatory failures cannot
/// be overridden.
async fn override_policy(
    State(store): State<Store>,
    Path(id): Path<String>,
    body: Option<Json<LockRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = run_id(&id)?;
    let run = find_run(&store, id).await?;
    let reason = lock_reason(body)?;
    match run.policy_verdict() {
        crate::policy::groups::Verdict::SoftBlocked => {}
        crate::policy::groups::Verdict::HardBlocked => {
            return Err(ApiError::Conflict(format!(
                "run {id} failed a hard-mandatory policy, which cannot be overridden"
            )))
        }
        _ => {
            return Err(ApiError::Conflict(format!(
                "run {id} has no soft-mandatory policy failure to override"
            )))
        }
    }
    let by = format!("{API_ACTOR}: {reason}");
    if !store.override_policy(id, &by).await? {
        return Err(ApiError::Conflict(format!(
            "run {id} is already overridden"
        )));
    }
    audit_run(&store, "override", &run, Some(&reason)).await?;
    let run = find_run(&store, id).await?;
    Ok(Json(
        serde_json::to_value(RunView::from(&run)).map_err(anyhow::Error::from)?,
    ))
}

fn drift_view(e: &crate::store::DriftEntry) -> serde_json::Value {
    json!({
        "workspace": e.workspace, "run_id": e.run_id, "commit_sha": e.commit_sha, "drifted": e.drifted,
        "mode": e.report["mode"], "resources": e.report["resources"], "checked_at": rfc3339(e.created_at)
    })
}

/// `POST /api/workspaces/{name}/drift-check`: queues a drift check of the
/// tracked branch head now.
async fn drift_check(
    State(settings): State<Settings>,
    State(store): State<Store>,
    State(mirrors): State<Mirrors>,
    State(runs_queued): State<RunsQueued>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_workspace(&settings, &name)?;
    let config = settings.config();
    let ws = config.workspace(&name).expect("checked").clone();
    let provider = settings
        .providers()
        .get(&ws.provider)
        .ok_or_else(|| ApiError::Conflict(format!("provider {} is not configured", ws.provider)))?;
    let branch_ref = format!("refs/heads/{}", ws.branch);
    let (_, sha) = mirrors
        .fetch_branch(&*provider, &ws.repo, &ws.branch)
        .await
        .map_err(ApiError::Internal)?;
    let runs = store
        .insert_runs(&[crate::store::NewRun {
            workspace: ws.name.clone(),
            event_id: None,
            kind: crate::runs::RunKind::Drift,
            source: crate::runs::RunSource::Api,
            provider_id: ws.provider.clone(),
            repo: ws.repo.clone(),
            branch: ws.branch.clone(),
            pr_number: None,
            head_sha: sha,
            git_ref: branch_ref,
            head_repo: None,
        }])
        .await?;
    audit_run(&store, "drift-check", &runs[0], None).await?;
    runs_queued.notify();
    Ok(Json(
        serde_json::to_value(RunView::from(&runs[0])).map_err(anyhow::Error::from)?,
    ))
}

/// `GET /api/workspaces/{name}/drift`: the latest drift report and the history.
async fn workspace_drift(
    State(settings): State<Settings>,
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_workspace(&settings, &name)?;
    let reports = store.drift_reports(&name, 100).await?;
    let history: Vec<serde_json::Value> = reports.iter().map(drift_view).collect();
    Ok(Json(
        json!({ "workspace": name, "latest": history.first().cloned(), "history": history }),
    ))
}

#[derive(Deserialize)]
struct DriftQuery {
    drifted: Option<bool>,
}

/// `GET /api/drift?drifted=true`: the latest report of every workspace.
async fn all_drift(
    State(store): State<Store>,
    Query(q): Query<DriftQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reports: Vec<serde_json::Value> = store
        .latest_drift_reports()
        .await?
        .iter()
        .filter(|e| q.drifted.is_none_or(|d| e.drifted == d))
        .map(drift_view)
        .collect();
    Ok(Json(json!({ "workspaces": reports })))
}
