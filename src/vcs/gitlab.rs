//! GitLab (gitlab.com and self-managed): webhook verification (`X-Gitlab-Token`),
//! payload parsing, commit statuses and the merge request note, through the
//! `gitlab` crate's endpoints over gantry's own HTTP client (so `api_url` may
//! carry a port or a path prefix, and nothing is called at start-up).

use async_trait::async_trait;
use gitlab::api::projects::issues::{CreateIssue, EditIssue, IssueStateEvent};
use gitlab::api::projects::members::AllProjectMember;
use gitlab::api::projects::merge_requests::approvals::MergeRequestApprovals;
use gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes,
};
use gitlab::api::projects::merge_requests::MergeRequest;
use gitlab::api::projects::repository::commits::{
    CommitStatusState, CreateCommitStatus, MergeRequests as CommitMergeRequests,
};
use gitlab::api::users::{CurrentUser, Users};
use gitlab::api::{ApiError, AsyncQuery, Pagination};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::rest::from_status;
use super::{
    parse_json, CommandEvent, CommitStatus, GitCredentials, Incoming, PrAction, PullRequestEvent,
    PullRequestInfo, PushEvent, StatusState, VcsError, VcsEvent, VcsProvider, WebhookError,
};
use crate::config::{ProviderAuth, ProviderConfig};

/// GitLab notes hold up to 1,000,000 characters; stay clear of it.
pub const COMMENT_LIMIT: usize = 990_000;

/// Developer: may push to unprotected branches.
const DEVELOPER_ACCESS: u64 = 30;

pub struct GitLab {
    id: String,
    api: Api,
    token: SecretString,
    git_url: String,
    webhook_secret: SecretString,
    /// The id of the token's user (`GET /user`), looked up the first time a
    /// note carrying a marker needs it.
    own_id: tokio::sync::OnceCell<u64>,
}

impl GitLab {
    pub fn new(p: &ProviderConfig) -> anyhow::Result<GitLab> {
        let ProviderAuth::Token(token) = &p.auth else {
            anyhow::bail!("provider {}: GitLab authenticates with token_env", p.id);
        };
        let mut base = url::Url::parse(&format!("{}/", p.api_url.trim_end_matches('/')))
            .map_err(|e| anyhow::anyhow!("provider {}: api_url: {e}", p.id))?;
        base.set_query(None);
        let mut private_token =
            http::HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                anyhow::anyhow!("provider {}: the token is not a valid header value", p.id)
            })?;
        private_token.set_sensitive(true);
        let http = super::rest::http_client()?;
        Ok(GitLab {
            id: p.id.clone(),
            api: Api {
                http,
                base,
                private_token,
            },
            token: token.clone(),
            git_url: p.git_url.clone(),
            webhook_secret: p.webhook_secret.clone(),
            own_id: tokio::sync::OnceCell::new(),
        })
    }

    /// The id of the user gantry's notes are written by: the token's user.
    async fn own_id(&self) -> Result<u64, VcsError> {
        #[derive(Deserialize)]
        struct Me {
            id: u64,
        }
        self.own_id
            .get_or_try_init(|| async {
                let endpoint = CurrentUser::builder().build().map_err(build_error)?;
                let me: Me = self
                    .query("user lookup", &endpoint)
                    .await
                    .map_err(|e| e.context("looking up the token's user (GET /user)"))?;
                Ok(me.id)
            })
            .await
            .copied()
    }

    /// Runs one endpoint query, retrying transient failures.
    async fn query<E, T>(&self, what: &str, endpoint: &E) -> Result<T, VcsError>
    where
        E: AsyncQuery<T, Api> + Sync,
        T: Send,
    {
        super::retry_transient(&self.id, what, || async {
            endpoint.query_async(&self.api).await.map_err(map_error)
        })
        .await
    }
}

// --- The HTTP client the gitlab crate's endpoints run on. ---

pub struct Api {
    http: reqwest::Client,
    /// `…/api/v4/`, with the trailing slash endpoints are joined onto.
    base: url::Url,
    private_token: http::HeaderValue,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transport(String);

impl gitlab::api::RestClient for Api {
    type Error = Transport;

    fn rest_endpoint(&self, endpoint: &str) -> Result<url::Url, ApiError<Transport>> {
        Ok(self.base.join(endpoint)?)
    }
}

#[async_trait]
impl gitlab::api::AsyncClient for Api {
    async fn rest_async(
        &self,
        request: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<http::Response<bytes::Bytes>, ApiError<Transport>> {
        let fail = |m: String| ApiError::client(Transport(m));
        let request = request.body(body).map_err(|e| fail(e.to_string()))?;
        let mut request = reqwest::Request::try_from(request).map_err(|e| fail(e.to_string()))?;
        request
            .headers_mut()
            .insert("PRIVATE-TOKEN", self.private_token.clone());
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| fail(super::rest::without_url(&e)))?;
        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| fail(super::rest::without_url(&e)))?;
        out.body(bytes).map_err(|e| fail(e.to_string()))
    }
}

fn map_error(e: ApiError<Transport>) -> VcsError {
    match e {
        // Connection failures and timeouts: worth another try.
        ApiError::Client { source } => VcsError::Server {
            status: 0,
            message: source.0,
        },
        ApiError::GitlabWithStatus { status, msg } => from_status(status.as_u16(), msg),
        ApiError::GitlabObjectWithStatus { status, obj }
        | ApiError::GitlabUnrecognizedWithStatus { status, obj } => {
            from_status(status.as_u16(), obj.to_string())
        }
        ApiError::GitlabService { status, data } => from_status(
            status.as_u16(),
            String::from_utf8_lossy(&data).chars().take(200).collect(),
        ),
        ApiError::GitlabRateLimited { rl_reset, .. } => {
            VcsError::RateLimited(format!("rate limited until {rl_reset}"))
        }
        other => VcsError::Other(other.to_string()),
    }
}

fn build_error(e: impl std::fmt::Display) -> VcsError {
    VcsError::Other(format!("invalid GitLab request: {e}"))
}

// --- Payloads: only the fields gantry reads; everything else is ignored. ---

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: i64,
    title: String,
    source_branch: String,
    target_branch: String,
    #[serde(default)]
    source_project_id: Option<i64>,
    #[serde(default)]
    target_project_id: Option<i64>,
    /// Absent on hooks of very old merge requests without commits.
    #[serde(default)]
    last_commit: Option<LastCommit>,
    /// Absent when the merge request was changed through the API without one.
    #[serde(default)]
    action: Option<String>,
    /// `draft` since GitLab 15; `work_in_progress` before.
    #[serde(default)]
    draft: Option<bool>,
    #[serde(default)]
    work_in_progress: Option<bool>,
    /// Present on `update` only when commits were pushed.
    #[serde(default)]
    oldrev: Option<String>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    #[serde(default)]
    squash_commit_sha: Option<String>,
}

#[derive(Deserialize)]
struct MrChanges {
    #[serde(default)]
    draft: Option<Change<bool>>,
}

#[derive(Deserialize)]
struct Change<T> {
    previous: Option<T>,
    current: Option<T>,
}

#[derive(Deserialize)]
struct MergeRequestHook {
    user: User,
    project: Project,
    object_attributes: MrAttributes,
    #[serde(default)]
    changes: Option<MrChanges>,
}

#[derive(Deserialize)]
struct PushHook {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    project: Project,
}

#[derive(Deserialize)]
struct NoteAttributes {
    note: String,
    noteable_type: String,
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize)]
struct NotedMergeRequest {
    iid: i64,
}

#[derive(Deserialize)]
struct NoteHook {
    user: User,
    project: Project,
    object_attributes: NoteAttributes,
    #[serde(default)]
    merge_request: Option<NotedMergeRequest>,
}

/// The delivery id: GitLab's `Idempotency-Key` (17.4+; the same on every
/// retry of one event to one hook), else `X-Gitlab-Webhook-UUID` (16.2+; new
/// on each attempt), else a hash of the body (the same on retries).
/// `X-Gitlab-Event-UUID` is not used: hooks fired by one request share it.
pub fn delivery_id(headers: &HeaderMap, body: &[u8]) -> String {
    for name in ["idempotency-key", "x-gitlab-webhook-uuid"] {
        if let Some(v) = super::header(headers, name).filter(|v| !v.is_empty() && v.len() <= 200) {
            return v.to_string();
        }
    }
    super::body_hash(body)
}

/// Parses a verified GitLab delivery.
pub fn parse_payload(
    event_type: &str,
    delivery_id: &str,
    body: &[u8],
) -> Result<Incoming, WebhookError> {
    let _: serde::de::IgnoredAny = parse_json(event_type, body)?;
    let delivery = super::Delivery {
        id: delivery_id,
        event_type,
    };
    let ignored = |reason: String| delivery.ignored(reason);
    let event = |action: Option<String>, event: VcsEvent, actionable: bool| {
        delivery.event(action, event, actionable)
    };
    match event_type {
        "Merge Request Hook" => {
            let p: MergeRequestHook = parse_json(event_type, body)?;
            let mr = p.object_attributes;
            let raw_action = mr.action.clone().unwrap_or_default();
            let draft = mr.draft.or(mr.work_in_progress).unwrap_or(false);
            let action = match raw_action.as_str() {
                "open" => PrAction::Opened,
                "reopen" => PrAction::Reopened,
                "update" if mr.oldrev.is_some() => PrAction::Synchronize,
                "update"
                    if p.changes
                        .as_ref()
                        .and_then(|c| c.draft.as_ref())
                        .is_some_and(|d| d.previous == Some(true) && d.current == Some(false)) =>
                {
                    PrAction::ReadyForReview
                }
                "update" => {
                    return Ok(ignored(
                        "merge request update without new commits is ignored".into(),
                    ))
                }
                "close" | "merge" => PrAction::Closed,
                "" => return Ok(ignored("merge request hook without an action".into())),
                other => {
                    return Ok(ignored(format!(
                        "merge request action `{other}` is ignored"
                    )))
                }
            };
            let Some(head) = mr.last_commit else {
                return Ok(ignored(format!("merge request !{} has no commits", mr.iid)));
            };
            let merged = raw_action == "merge";
            let merge_sha = if merged {
                mr.merge_commit_sha.or(mr.squash_commit_sha)
            } else {
                None
            };
            let from_fork = match (mr.source_project_id, mr.target_project_id) {
                (Some(s), Some(t)) => s != t,
                _ => false,
            };
            Ok(event(
                Some(raw_action),
                VcsEvent::PullRequest(PullRequestEvent {
                    action,
                    repo: p.project.path_with_namespace,
                    number: mr.iid,
                    title: mr.title,
                    author: p.user.username,
                    head_sha: head.id,
                    head_ref: mr.source_branch,
                    base_ref: mr.target_branch,
                    base_sha: String::new(),
                    draft,
                    merged,
                    from_fork,
                    fetch_ref: format!("refs/merge-requests/{}/head", mr.iid),
                    merge_sha,
                    head_repo: None,
                }),
                // A merge applies (once, with the push of the same commit).
                action != PrAction::Closed || merged,
            ))
        }
        "Push Hook" => {
            let p: PushHook = parse_json(event_type, body)?;
            let Some(branch) = p.git_ref.strip_prefix("refs/heads/") else {
                return Ok(ignored(format!("push to `{}` is not a branch", p.git_ref)));
            };
            if super::is_zero_sha(&p.after) {
                tracing::info!(branch, repo = %p.project.path_with_namespace, "branch deleted; ignored");
                return Ok(ignored(format!("branch `{branch}` was deleted")));
            }
            Ok(event(
                None,
                VcsEvent::Push(PushEvent {
                    repo: p.project.path_with_namespace,
                    branch: branch.to_string(),
                    before: p.before,
                    after: p.after,
                }),
                true,
            ))
        }
        "Note Hook" => {
            let p: NoteHook = parse_json(event_type, body)?;
            let note = p.object_attributes;
            if note.action.as_deref().is_some_and(|a| a != "create") {
                return Ok(ignored("edited comment is ignored".into()));
            }
            let (Some(mr), "MergeRequest") = (p.merge_request, note.noteable_type.as_str()) else {
                return Ok(ignored(format!(
                    "comment on a {}, not a merge request",
                    note.noteable_type
                )));
            };
            let Some(command) = crate::commands::parse(&note.note) else {
                return Ok(ignored("comment is not a /gantry command".into()));
            };
            Ok(event(
                note.action,
                VcsEvent::Command(CommandEvent {
                    repo: p.project.path_with_namespace,
                    pr_number: mr.iid,
                    author: p.user.username,
                    command,
                }),
                true,
            ))
        }
        other => Ok(ignored(format!("event `{other}` is ignored"))),
    }
}

#[derive(Deserialize)]
struct NoteRef {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    author: Option<NoteAuthor>,
}

#[derive(Deserialize)]
struct NoteAuthor {
    id: u64,
}

#[derive(Deserialize)]
struct MrRef {
    iid: i64,
    #[serde(default)]
    state: Option<String>,
}

#[async_trait]
impl VcsProvider for GitLab {
    fn id(&self) -> &str {
        &self.id
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn parse_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<Incoming, WebhookError> {
        let token = super::header(headers, "x-gitlab-token")
            .ok_or_else(|| WebhookError::Unauthorized("missing X-Gitlab-Token".into()))?;
        let expected = self.webhook_secret.expose_secret().as_bytes();
        if !bool::from(token.as_bytes().ct_eq(expected)) {
            return Err(WebhookError::Unauthorized(
                "X-Gitlab-Token does not match".into(),
            ));
        }
        let event_type = super::header(headers, "x-gitlab-event")
            .ok_or_else(|| WebhookError::BadRequest("missing X-Gitlab-Event".into()))?;
        parse_payload(event_type, &delivery_id(headers, body), body)
    }

    fn clone_url(&self, repo: &str) -> String {
        crate::config::expand_git_url(&self.git_url, repo)
    }

    async fn git_credentials(&self, _repo: &str) -> Result<Option<GitCredentials>, VcsError> {
        Ok(Some(GitCredentials {
            username: "oauth2".into(),
            password: self.token.clone(),
        }))
    }

    async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), VcsError> {
        let state = match status.state {
            StatusState::Pending => CommitStatusState::Running,
            StatusState::Success => CommitStatusState::Success,
            StatusState::Failure | StatusState::Error => CommitStatusState::Failed,
        };
        // GitLab caps descriptions (and URLs) at 255 characters.
        let description: String = status.description.chars().take(255).collect();
        let mut builder = CreateCommitStatus::builder();
        builder
            .project(repo)
            .commit(sha)
            .state(state)
            .name(status.context.as_str())
            .description(description);
        if let Some(url) = status.target_url.as_deref().filter(|u| u.len() <= 255) {
            builder.target_url(url);
        }
        let endpoint = builder.build().map_err(build_error)?;
        match self
            .query::<_, ()>("status", &gitlab::api::ignore(endpoint))
            .await
        {
            // Posting the state a status already has: nothing to change.
            Err(VcsError::Other(m)) if m.contains("Cannot transition status") => Ok(()),
            other => other,
        }
    }

    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError> {
        let endpoint = CreateMergeRequestNote::builder()
            .project(repo)
            .merge_request(pr as u64)
            .body(body)
            .build()
            .map_err(build_error)?;
        let note: NoteRef = self.query("note", &endpoint).await?;
        Ok(note.id.to_string())
    }

    async fn update_comment(
        &self,
        repo: &str,
        pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError> {
        let note = comment_id
            .parse::<u64>()
            .map_err(|_| VcsError::NotFound(format!("note id `{comment_id}`")))?;
        let endpoint = EditMergeRequestNote::builder()
            .project(repo)
            .merge_request(pr as u64)
            .note(note)
            .body(body)
            .build()
            .map_err(build_error)?;
        self.query("note edit", &gitlab::api::ignore(endpoint))
            .await
    }

    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError> {
        #[derive(Deserialize)]
        struct Mr {
            state: String,
            sha: Option<String>,
            target_branch: String,
            #[serde(default)]
            source_project_id: Option<i64>,
            #[serde(default)]
            target_project_id: Option<i64>,
            #[serde(default)]
            has_conflicts: bool,
            #[serde(default)]
            detailed_merge_status: Option<String>,
            #[serde(default)]
            merge_status: Option<String>,
        }
        let endpoint = MergeRequest::builder()
            .project(repo)
            .merge_request(pr as u64)
            .build()
            .map_err(build_error)?;
        let mr: Mr = self.query("merge request", &endpoint).await?;
        let mergeable = match (
            mr.detailed_merge_status.as_deref(),
            mr.merge_status.as_deref(),
        ) {
            _ if mr.has_conflicts => Some(false),
            (Some("checking" | "unchecked" | "preparing" | "approvals_syncing"), _) => None,
            (Some("mergeable"), _) => Some(true),
            // Blocked only by the approvals gantry checks itself.
            (Some("not_approved"), _) => Some(true),
            (Some(_), _) => Some(false),
            (None, Some("can_be_merged")) => Some(true),
            (None, Some("unchecked" | "checking")) | (None, None) => None,
            (None, Some(_)) => Some(false),
        };
        Ok(PullRequestInfo {
            head_sha: mr.sha.unwrap_or_default(),
            base_ref: mr.target_branch,
            fetch_ref: format!("refs/merge-requests/{pr}/head"),
            mergeable,
            open: mr.state == "opened",
            from_fork: match (mr.source_project_id, mr.target_project_id) {
                (Some(s), Some(t)) => s != t,
                _ => false,
            },
            head_repo: None,
        })
    }

    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct Approvals {
            #[serde(default)]
            approved: Option<bool>,
            #[serde(default)]
            approvals_left: Option<u64>,
            #[serde(default)]
            approved_by: Vec<serde::de::IgnoredAny>,
        }
        let endpoint = MergeRequestApprovals::builder()
            .project(repo)
            .merge_request(pr as u64)
            .build()
            .map_err(build_error)?;
        let a: Approvals = self.query("approvals", &endpoint).await?;
        // At least one approval, and none of the required ones missing.
        let rules_met = a.approved.unwrap_or(true) && a.approvals_left.unwrap_or(0) == 0;
        Ok(rules_met && !a.approved_by.is_empty())
    }

    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct UserId {
            id: u64,
        }
        #[derive(Deserialize)]
        struct Member {
            access_level: u64,
        }
        let endpoint = Users::builder()
            .username(user)
            .build()
            .map_err(build_error)?;
        let users: Vec<UserId> = self.query("user lookup", &endpoint).await?;
        let Some(found) = users.first() else {
            return Ok(false);
        };
        let endpoint = AllProjectMember::builder()
            .project(repo)
            .user(found.id)
            .build()
            .map_err(build_error)?;
        match self.query::<_, Member>("membership", &endpoint).await {
            Ok(m) => Ok(m.access_level >= DEVELOPER_ACCESS),
            Err(VcsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError> {
        #[derive(Deserialize)]
        struct Issue {
            iid: i64,
        }
        let endpoint = CreateIssue::builder()
            .project(repo)
            .title(title)
            .description(body)
            .build()
            .map_err(build_error)?;
        let issue: Issue = self.query("issue", &endpoint).await?;
        Ok(issue.iid)
    }

    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError> {
        let mut builder = EditIssue::builder();
        builder.project(repo).issue(number as u64).description(body);
        if close {
            builder.state_event(IssueStateEvent::Close);
        }
        let endpoint = builder.build().map_err(build_error)?;
        self.query("issue edit", &gitlab::api::ignore(endpoint))
            .await
    }

    async fn pull_request_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<i64>, VcsError> {
        let endpoint = CommitMergeRequests::builder()
            .project(repo)
            .sha(sha)
            .build()
            .map_err(build_error)?;
        let mrs: Vec<MrRef> = self.query("merge request lookup", &endpoint).await?;
        let merged = mrs
            .iter()
            .find(|m| m.state.as_deref() == Some("merged"))
            .or(mrs.first());
        Ok(merged.map(|m| m.iid))
    }

    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError> {
        let endpoint = MergeRequestNotes::builder()
            .project(repo)
            .merge_request(pr as u64)
            .build()
            .map_err(build_error)?;
        let notes: Vec<NoteRef> = self
            .query(
                "note list",
                &gitlab::api::paged(endpoint, Pagination::Limit(5000)),
            )
            .await?;
        let marked: Vec<_> = notes
            .into_iter()
            .filter(|n| n.body.as_deref().is_some_and(|b| b.contains(marker)))
            .map(|n| super::Marked {
                id: n.id,
                author: n
                    .author
                    .map(|a| a.id.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            })
            .collect();
        if marked.is_empty() {
            return Ok(None);
        }
        let me = self.own_id().await?.to_string();
        // The newest of gantry's own (ids grow with time).
        Ok(super::newest_own(&self.id, marked, |author| *author == me).map(|id| id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_id_prefers_the_idempotency_key_then_the_webhook_uuid_then_the_body() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-gitlab-event-uuid",
            "shared-by-one-request".parse().unwrap(),
        );
        assert_eq!(delivery_id(&h, b"{}"), super::super::body_hash(b"{}"));
        h.insert("x-gitlab-webhook-uuid", "per-attempt".parse().unwrap());
        assert_eq!(delivery_id(&h, b"{}"), "per-attempt");
        h.insert("idempotency-key", "per-event".parse().unwrap());
        assert_eq!(delivery_id(&h, b"{}"), "per-event");
    }
}
