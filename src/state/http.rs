//! Terraform's `http` backend protocol, served for the state gantry keeps
//! (as terraform's `internal/backend/remote-state/http` client speaks it):
//!
//! - `GET /state/v1/{workspace}`: the latest state, or 204 when there is none;
//! - `POST /state/v1/{workspace}[?ID=<lock id>]`: a new state version. With an
//!   id only while that id holds the lock, without one only while nobody does;
//!   a lineage other than the stored one or a lower serial is refused (409);
//! - `LOCK` / `UNLOCK` (terraform's default `lock_method`/`unlock_method`)
//!   with terraform's lock info JSON; a conflict answers 423 Locked with the
//!   holder's lock info. `UNLOCK` without a body (`terraform force-unlock`)
//!   is for the API token only.
//!
//! For operators (API token only): `GET /state/v1/{workspace}/spool` lists
//! the states applies produced but could not store, and
//! `GET /state/v1/{workspace}/spool/{id}` returns one as terraform wrote it,
//! ready for `terraform state push`.
//!
//! Auth: HTTP basic (terraform's `username`/`password`, or `TF_HTTP_USERNAME`
//! / `TF_HTTP_PASSWORD`) or a bearer token; the secret is either the API token
//! (a CLI user, any workspace) or a run's token (its own workspace, while the
//! run is active). The username is ignored.
//!
//! These routes are outside `/api` on purpose: `/api` responses go through the
//! redactor, which would corrupt a state that holds a secret.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::SharedConfig;
use crate::store::{Audit, PutState, StateLock, Store, StoreError};

/// Where the backend is mounted.
pub const PATH: &str = "/state/v1";

/// States can be large (many resources); terraform sends them whole.
const MAX_STATE_BYTES: usize = 256 * 1024 * 1024;

/// What the backend's handlers use.
#[derive(Clone)]
pub struct Backend {
    pub store: Store,
    /// For the API token and the configured workspaces (hot-reloaded).
    pub config: SharedConfig,
}

/// The backend's routes, to be nested at [`PATH`].
pub fn router(backend: Backend) -> Router {
    Router::new()
        .route("/{workspace}", any(handle))
        .route("/{workspace}/spool", get(list_spool))
        .route("/{workspace}/spool/{id}", get(get_spool))
        .layer(DefaultBodyLimit::max(MAX_STATE_BYTES))
        .with_state(backend)
}

/// The backend's errors: a status and a short reason (details go to the log).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("authentication required")]
    Unauthorized,
    #[error("this token does not grant that on workspace {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Locked by someone else: the holder's lock info JSON.
    #[error("state is locked")]
    Locked(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("internal error")]
    Store(#[from] StoreError),
}

impl IntoResponse for BackendError {
    fn into_response(self) -> Response {
        let status = match &self {
            BackendError::Unauthorized => StatusCode::UNAUTHORIZED,
            BackendError::Forbidden(_) => StatusCode::FORBIDDEN,
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BackendError::Conflict(_) => StatusCode::CONFLICT,
            BackendError::Locked(info) => {
                return (
                    StatusCode::LOCKED,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    info.clone(),
                )
                    .into_response()
            }
            BackendError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BackendError::Store(e) => {
                tracing::error!(error = %e, "state backend request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    /// The API token: a CLI user or an operator.
    Api,
    /// A run's token: its run, and whether it may write.
    Run(i64, bool),
}

impl Caller {
    fn name(&self) -> String {
        match self {
            Caller::Api => "api".into(),
            Caller::Run(id, _) => format!("run {id}"),
        }
    }

    fn run_id(&self) -> Option<i64> {
        match self {
            Caller::Api => None,
            Caller::Run(id, _) => Some(*id),
        }
    }
}

/// The secret of a basic (`user:secret`) or bearer authorization header.
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    Some(password.to_string())
}

impl Backend {
    async fn authorize(
        &self,
        headers: &HeaderMap,
        workspace: &str,
    ) -> Result<Caller, BackendError> {
        let secret = presented_secret(headers).ok_or(BackendError::Unauthorized)?;
        if secret.is_empty() {
            return Err(BackendError::Unauthorized);
        }
        let config = self.config.load();
        if config.workspace(workspace).is_none() {
            // Asked after the token check would leak workspace names.
            let api = config.api_token.expose_secret().as_bytes();
            if !bool::from(secret.as_bytes().ct_eq(api)) {
                return Err(BackendError::Unauthorized);
            }
            return Err(BackendError::NotFound(format!(
                "no workspace `{workspace}`"
            )));
        }
        if bool::from(
            secret
                .as_bytes()
                .ct_eq(config.api_token.expose_secret().as_bytes()),
        ) {
            return Ok(Caller::Api);
        }
        let token = self
            .store
            .state_token(&super::token_sha256(&secret))
            .await?
            .ok_or(BackendError::Unauthorized)?;
        if !token.active {
            return Err(BackendError::Unauthorized);
        }
        if token.workspace != workspace {
            tracing::warn!(run.id = token.run_id, workspace.name = %workspace, "run {}'s state token was presented for workspace {workspace}", token.run_id);
            return Err(BackendError::Forbidden(workspace.to_string()));
        }
        Ok(Caller::Run(token.run_id, token.can_write))
    }
}

#[derive(Deserialize)]
struct PutQuery {
    #[serde(rename = "ID")]
    id: Option<String>,
}

/// Terraform's lock info: only the id matters to gantry; the rest is kept
/// and shown to the next locker as sent.
#[derive(Deserialize)]
struct LockInfo {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Who", default)]
    who: String,
    #[serde(rename = "Operation", default)]
    operation: String,
}

#[tracing::instrument(skip_all, fields(workspace.name = %workspace, method = %method))]
async fn handle(
    State(backend): State<Backend>,
    Path(workspace): Path<String>,
    method: Method,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, BackendError> {
    let caller = backend.authorize(&headers, &workspace).await?;
    match method.as_str() {
        "GET" => get_state(&backend, &workspace).await,
        "POST" => {
            put_state(
                &backend,
                &workspace,
                &caller,
                query.id.as_deref().filter(|id| !id.is_empty()),
                &body,
            )
            .await
        }
        "LOCK" => lock(&backend, &workspace, &caller, &body).await,
        "UNLOCK" => unlock(&backend, &workspace, &caller, &body).await,
        _ => Err(BackendError::MethodNotAllowed),
    }
}

async fn get_state(backend: &Backend, workspace: &str) -> Result<Response, BackendError> {
    Ok(match backend.store.latest_state(workspace).await? {
        Some(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.state,
        )
            .into_response(),
        // terraform reads 204 (and 404) as "no state yet".
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn put_state(
    backend: &Backend,
    workspace: &str,
    caller: &Caller,
    lock_id: Option<&str>,
    body: &[u8],
) -> Result<Response, BackendError> {
    if let Caller::Run(id, false) = caller {
        return Err(BackendError::Forbidden(format!(
            "{workspace}: run {id} may read and lock the state, not write it (only applies write)"
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| BackendError::BadRequest("the state is not UTF-8".into()))?;
    let (serial, lineage) =
        super::serial_and_lineage(text).map_err(|e| BackendError::BadRequest(e.to_string()))?;
    if let Some(latest) = backend.store.latest_state(workspace).await? {
        if latest.lineage != lineage {
            return Err(BackendError::Conflict(format!(
                "the state's lineage {lineage} is not workspace {workspace}'s ({})",
                latest.lineage
            )));
        }
        if serial < latest.serial {
            return Err(BackendError::Conflict(format!(
                "serial {serial} is older than the stored state's ({})",
                latest.serial
            )));
        }
        if serial == latest.serial {
            if latest.state == text {
                return Ok(StatusCode::OK.into_response());
            }
            return Err(BackendError::Conflict(format!(
                "serial {serial} is already stored with other contents"
            )));
        }
    }
    match backend
        .store
        .put_state(
            workspace,
            serial,
            &lineage,
            caller.run_id(),
            &caller.name(),
            lock_id,
            text,
        )
        .await?
    {
        PutState::Stored(id) => {
            tracing::info!(
                state.version = id,
                serial,
                "state of {workspace} stored as version {id} by {}",
                caller.name()
            );
            if *caller == Caller::Api {
                backend
                    .store
                    .audit(Audit {
                        actor: "api",
                        action: "state write",
                        workspace: Some(workspace),
                        detail: Some(&format!("version {id}, serial {serial}")),
                        ..Default::default()
                    })
                    .await?;
            }
            Ok(StatusCode::OK.into_response())
        }
        PutState::Locked(Some(holder)) => Err(BackendError::Locked(holder.info)),
        PutState::Locked(None) => Err(BackendError::Conflict(format!(
            "lock {} is not held on workspace {workspace}",
            lock_id.unwrap_or_default()
        ))),
    }
}

fn lock_info(body: &[u8]) -> Result<LockInfo, BackendError> {
    serde_json::from_slice(body).map_err(|e| BackendError::BadRequest(format!("lock info: {e}")))
}

async fn lock(
    backend: &Backend,
    workspace: &str,
    caller: &Caller,
    body: &[u8],
) -> Result<Response, BackendError> {
    let info = lock_info(body)?;
    if info.id.is_empty() {
        return Err(BackendError::BadRequest("lock info has no ID".into()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| BackendError::BadRequest("lock info is not UTF-8".into()))?;
    let by = caller.name();
    match backend
        .store
        .lock_state(workspace, &info.id, text, &by, caller.run_id())
        .await?
    {
        None => {
            tracing::debug!(lock.id = %info.id, "state of {workspace} locked by {by} ({} {})", info.who, info.operation);
            Ok(StatusCode::OK.into_response())
        }
        Some(holder) => {
            tracing::info!(lock.id = %holder.lock_id, "state of {workspace} is locked by {}; {by} refused", holder.locked_by);
            Err(BackendError::Locked(holder.info))
        }
    }
}

async fn unlock(
    backend: &Backend,
    workspace: &str,
    caller: &Caller,
    body: &[u8],
) -> Result<Response, BackendError> {
    let id = if body.iter().all(u8::is_ascii_whitespace) {
        // `terraform force-unlock` sends no lock info.
        if *caller != Caller::Api {
            return Err(BackendError::Conflict(
                "only the API token can force-unlock a state".into(),
            ));
        }
        None
    } else {
        Some(lock_info(body)?.id)
    };
    match backend.store.unlock_state(workspace, id.as_deref()).await? {
        Ok(released) => {
            if let (None, Some(old)) = (&id, &released) {
                audit_forced_unlock(backend, workspace, old).await?;
            }
            Ok(StatusCode::OK.into_response())
        }
        Err(holder) => Err(BackendError::Locked(holder.info)),
    }
}

async fn audit_forced_unlock(
    backend: &Backend,
    workspace: &str,
    old: &StateLock,
) -> Result<(), BackendError> {
    backend
        .store
        .audit(Audit {
            actor: "api",
            action: "state force-unlock",
            workspace: Some(workspace),
            run_id: old.run_id,
            detail: Some(&format!("lock {} held by {}", old.lock_id, old.locked_by)),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn require_api(
    backend: &Backend,
    headers: &HeaderMap,
    workspace: &str,
) -> Result<(), BackendError> {
    match backend.authorize(headers, workspace).await? {
        Caller::Api => Ok(()),
        Caller::Run(..) => Err(BackendError::Forbidden(workspace.to_string())),
    }
}

/// `GET /state/v1/{workspace}/spool`: states applies could not store, newest first.
async fn list_spool(
    State(backend): State<Backend>,
    Path(workspace): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, BackendError> {
    require_api(&backend, &headers, &workspace).await?;
    let list = backend.store.spooled_states(&workspace).await?;
    Ok(Json(json!({ "spooled_states": list })))
}

/// `GET /state/v1/{workspace}/spool/{id}`: one spooled state, as terraform wrote it.
async fn get_spool(
    State(backend): State<Backend>,
    Path((workspace, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, BackendError> {
    require_api(&backend, &headers, &workspace).await?;
    let found = backend
        .store
        .spooled_states(&workspace)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| BackendError::NotFound(format!("{workspace} has no spooled state {id}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        found.state,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_basic_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_secret(&h), None);
        let basic = base64::engine::general_purpose::STANDARD.encode("run-3:s3cret:x");
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(presented_secret(&h).as_deref(), Some("s3cret:x"));
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer tok".parse().unwrap(),
        );
        assert_eq!(presented_secret(&h).as_deref(), Some("tok"));
    }
}
