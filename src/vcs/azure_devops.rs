//! Azure DevOps Services and Server: service hook verification (HTTP Basic
//! auth), payload parsing, pull request (and commit) statuses and the pull
//! request thread whose first comment gantry edits in place.
//!
//! Repositories are named `project/repository`; `api_url` is the organization
//! (or collection) URL, e.g. `https://dev.azure.com/acme`.

use async_trait::async_trait;
use http::{HeaderMap, Method};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::rest::{basic, encode_segment, RestClient};
use super::{
    CommandEvent, CommitStatus, GitCredentials, Incoming, PrAction, PullRequestEvent,
    PullRequestInfo, PushEvent, StatusState, VcsError, VcsEvent, VcsProvider, WebhookError,
};
use crate::config::{ProviderAuth, ProviderConfig};

/// Azure DevOps rejects comments over 150,000 characters; stay clear of it.
pub const COMMENT_LIMIT: usize = 145_000;

const API_VERSION: &str = "api-version=7.1";

/// The Git Repositories security namespace and its GenericContribute bit.
const GIT_NAMESPACE: &str = "2e9eb7ed-3c0a-47d4-87c1-0ffdd275fd87";
const GENERIC_CONTRIBUTE: u64 = 4;

pub struct AzureDevOps {
    id: String,
    api: RestClient,
    /// Where identities are looked up: `vssps.dev.azure.com/ORG` for the
    /// cloud service, the collection URL on a server.
    identities: String,
    token: SecretString,
    git_url: String,
    webhook_user: String,
    webhook_password: SecretString,
    /// The id of the identity the PAT authenticates as (`connectionData`),
    /// looked up the first time a thread carrying a marker needs it.
    own_id: tokio::sync::OnceCell<String>,
}

impl AzureDevOps {
    pub fn new(p: &ProviderConfig) -> anyhow::Result<AzureDevOps> {
        let ProviderAuth::Token(token) = &p.auth else {
            anyhow::bail!(
                "provider {}: Azure DevOps authenticates with token_env (a PAT)",
                p.id
            );
        };
        let identities = match p.api_url.strip_prefix("https://dev.azure.com/") {
            Some(org) => format!("https://vssps.dev.azure.com/{org}"),
            None => p.api_url.clone(),
        };
        Ok(AzureDevOps {
            id: p.id.clone(),
            api: RestClient::new(&p.id, &p.api_url, &basic("", token.expose_secret()))?,
            identities,
            token: token.clone(),
            git_url: p.git_url.clone(),
            webhook_user: p.webhook_user.clone().unwrap_or_default(),
            webhook_password: p.webhook_secret.clone(),
            own_id: tokio::sync::OnceCell::new(),
        })
    }

    /// The identity gantry's threads are written by: `authenticatedUser` of
    /// the organization's (or collection's) connection data.
    async fn own_id(&self) -> Result<&str, VcsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ConnectionData {
            authenticated_user: IdentityId,
        }
        #[derive(Deserialize)]
        struct IdentityId {
            id: String,
        }
        self.own_id
            .get_or_try_init(|| async {
                let data: ConnectionData = self
                    .api
                    .get("/_apis/connectionData?api-version=7.1-preview")
                    .await
                    .map_err(|e| e.context("looking up the token's user (connectionData)"))?;
                Ok(data.authenticated_user.id)
            })
            .await
            .map(String::as_str)
    }

    /// `/{project}/_apis/git/repositories/{name}`.
    fn repo_path(repo: &str) -> String {
        let (project, name) = repo.rsplit_once('/').unwrap_or(("", repo));
        format!(
            "/{}/_apis/git/repositories/{}",
            encode_segment(project),
            encode_segment(name)
        )
    }

    fn project_path(repo: &str) -> String {
        let (project, _) = repo.rsplit_once('/').unwrap_or(("", repo));
        format!("/{}", encode_segment(project))
    }

    /// Checks the service hook's Basic credentials in constant time.
    fn verify(&self, headers: &HeaderMap) -> Result<(), WebhookError> {
        use base64::Engine;
        let value = super::header(headers, "authorization")
            .ok_or_else(|| WebhookError::Unauthorized("missing Authorization".into()))?;
        let encoded = value
            .strip_prefix("Basic ")
            .ok_or_else(|| WebhookError::Unauthorized("Authorization is not Basic".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| WebhookError::Unauthorized("Authorization is not base64".into()))?;
        let expected = format!(
            "{}:{}",
            self.webhook_user,
            self.webhook_password.expose_secret()
        );
        if bool::from(decoded.as_slice().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized(
                "webhook user or password does not match".into(),
            ))
        }
    }
}

// --- Payloads: only the fields gantry reads; everything else is ignored. ---

#[derive(Deserialize)]
struct Project {
    name: String,
}

#[derive(Deserialize)]
struct Repository {
    name: String,
    project: Project,
}

impl Repository {
    fn full_name(&self) -> String {
        format!("{}/{}", self.project.name, self.name)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    #[serde(default)]
    unique_name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

impl Identity {
    fn name(&self) -> String {
        self.unique_name
            .clone()
            .or_else(|| self.display_name.clone())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitRef {
    commit_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reviewer {
    #[serde(default)]
    vote: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullRequest {
    pull_request_id: i64,
    repository: Repository,
    status: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    created_by: Option<Identity>,
    source_ref_name: String,
    target_ref_name: String,
    #[serde(default)]
    merge_status: Option<String>,
    #[serde(default)]
    is_draft: bool,
    #[serde(default)]
    last_merge_source_commit: Option<CommitRef>,
    #[serde(default)]
    last_merge_target_commit: Option<CommitRef>,
    #[serde(default)]
    last_merge_commit: Option<CommitRef>,
    #[serde(default)]
    fork_source: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    reviewers: Vec<Reviewer>,
}

impl PullRequest {
    fn merged(&self) -> bool {
        self.status == "completed" && self.merge_status.as_deref() == Some("succeeded")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdate {
    name: String,
    old_object_id: String,
    new_object_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Push {
    ref_updates: Vec<RefUpdate>,
    repository: Repository,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Comment {
    #[serde(default)]
    content: Option<String>,
    author: Identity,
    #[serde(default)]
    published_date: Option<String>,
    #[serde(default)]
    last_updated_date: Option<String>,
    #[serde(default)]
    is_deleted: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommentResource {
    comment: Comment,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    id: Option<String>,
    event_type: String,
    resource: serde_json::Value,
}

fn parse_resource<T: serde::de::DeserializeOwned>(
    event: &str,
    resource: serde_json::Value,
) -> Result<T, WebhookError> {
    serde_json::from_value(resource)
        .map_err(|e| WebhookError::BadRequest(format!("malformed {event} resource: {e}")))
}

/// The ref a pull request's commits are fetched by: the merge ref Azure keeps
/// (it holds the source commit as a parent, for forks too).
fn fetch_ref(pr: i64) -> String {
    format!("refs/pull/{pr}/merge")
}

/// Parses a verified service hook delivery. `request_id` is the fallback
/// delivery id when the body has none.
pub fn parse_payload(body: &[u8], request_id: Option<&str>) -> Result<Incoming, WebhookError> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| WebhookError::BadRequest(format!("malformed service hook payload: {e}")))?;
    let event_type = envelope.event_type.as_str();
    let delivery_id = envelope
        .id
        .clone()
        .filter(|i| !i.is_empty() && i.len() <= 200)
        .or_else(|| request_id.map(str::to_string))
        .unwrap_or_else(|| super::body_hash(body));
    let delivery = super::Delivery {
        id: &delivery_id,
        event_type,
    };
    let ignored = |reason: String| delivery.ignored(reason);
    let event = |action: Option<String>, event: VcsEvent, actionable: bool| {
        delivery.event(action, event, actionable)
    };
    match event_type {
        "git.pullrequest.created" | "git.pullrequest.updated" | "git.pullrequest.merged" => {
            let pr: PullRequest = parse_resource(event_type, envelope.resource)?;
            let merged = pr.merged();
            let action = match (event_type, pr.status.as_str()) {
                _ if merged => PrAction::Closed,
                (_, "abandoned") => PrAction::Closed,
                // A merge attempt that did not complete (conflicts, policies).
                ("git.pullrequest.merged", _) | (_, "completed") => {
                    return Ok(ignored(format!(
                        "pull request {} merge not completed (status {}, merge status {})",
                        pr.pull_request_id,
                        pr.status,
                        pr.merge_status.as_deref().unwrap_or("unknown")
                    )))
                }
                ("git.pullrequest.created", _) => PrAction::Opened,
                // Pushes, votes, edits and publishing a draft all arrive as
                // updates; a head already planned is not planned again.
                _ => PrAction::Synchronize,
            };
            let Some(head) = &pr.last_merge_source_commit else {
                return Ok(ignored(format!(
                    "pull request {} has no source commit yet",
                    pr.pull_request_id
                )));
            };
            let strip = |r: &str| r.strip_prefix("refs/heads/").unwrap_or(r).to_string();
            let merge_sha = if merged {
                pr.last_merge_commit.as_ref().map(|c| c.commit_id.clone())
            } else {
                None
            };
            Ok(event(
                Some(pr.status.clone()),
                VcsEvent::PullRequest(PullRequestEvent {
                    action,
                    repo: pr.repository.full_name(),
                    number: pr.pull_request_id,
                    title: pr.title.clone(),
                    author: pr
                        .created_by
                        .as_ref()
                        .map(Identity::name)
                        .unwrap_or_default(),
                    head_sha: head.commit_id.clone(),
                    head_ref: strip(&pr.source_ref_name),
                    base_ref: strip(&pr.target_ref_name),
                    base_sha: pr
                        .last_merge_target_commit
                        .as_ref()
                        .map(|c| c.commit_id.clone())
                        .unwrap_or_default(),
                    draft: pr.is_draft,
                    merged,
                    from_fork: pr.fork_source.is_some(),
                    fetch_ref: fetch_ref(pr.pull_request_id),
                    merge_sha,
                    head_repo: None,
                }),
                action != PrAction::Closed || merged,
            ))
        }
        "git.push" => {
            let push: Push = parse_resource(event_type, envelope.resource)?;
            let repo = push.repository.full_name();
            let mut updated = Vec::new();
            let mut deleted = Vec::new();
            for update in &push.ref_updates {
                let Some(branch) = update.name.strip_prefix("refs/heads/") else {
                    continue;
                };
                if super::is_zero_sha(&update.new_object_id) {
                    tracing::info!(branch, repo = %repo, "branch deleted; ignored");
                    deleted.push(branch.to_string());
                    continue;
                }
                updated.push(PushEvent {
                    repo: repo.clone(),
                    branch: branch.to_string(),
                    before: update.old_object_id.clone(),
                    after: update.new_object_id.clone(),
                });
            }
            match super::pushes(updated) {
                Some(e) => Ok(event(None, e, true)),
                None if !deleted.is_empty() => Ok(ignored(format!(
                    "branch `{}` was deleted",
                    deleted.join("`, `")
                ))),
                None => Ok(ignored("push of tags only".into())),
            }
        }
        "ms.vss-code.git-pullrequest-comment-event" => {
            let r: CommentResource = parse_resource(event_type, envelope.resource)?;
            let c = &r.comment;
            if c.is_deleted
                || (c.published_date.is_some() && c.published_date != c.last_updated_date)
            {
                return Ok(ignored("edited or deleted comment is ignored".into()));
            }
            let Some(command) = crate::commands::parse(c.content.as_deref().unwrap_or_default())
            else {
                return Ok(ignored("comment is not a /gantry command".into()));
            };
            Ok(event(
                None,
                VcsEvent::Command(CommandEvent {
                    repo: r.pull_request.repository.full_name(),
                    pr_number: r.pull_request.pull_request_id,
                    author: c.author.name(),
                    command,
                }),
                true,
            ))
        }
        other => Ok(ignored(format!("event `{other}` is ignored"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThreadComment {
    id: i64,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    author: Option<Author>,
}

#[derive(Deserialize)]
struct Author {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Thread {
    id: i64,
    #[serde(default)]
    comments: Vec<ThreadComment>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

#[async_trait]
impl VcsProvider for AzureDevOps {
    fn id(&self) -> &str {
        &self.id
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn parse_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<Incoming, WebhookError> {
        self.verify(headers)?;
        parse_payload(body, super::header(headers, "request-id"))
    }

    fn clone_url(&self, repo: &str) -> String {
        crate::config::expand_git_url(&self.git_url, repo)
    }

    async fn git_credentials(&self, _repo: &str) -> Result<Option<GitCredentials>, VcsError> {
        Ok(Some(GitCredentials {
            username: "gantry".into(),
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
            StatusState::Pending => "pending",
            StatusState::Success => "succeeded",
            StatusState::Failure => "failed",
            StatusState::Error => "error",
        };
        // `gantry/network` shows as genre `gantry`, name `network`.
        let (genre, name) = status
            .context
            .split_once('/')
            .unwrap_or(("gantry", status.context.as_str()));
        let mut body = json!({
            "state": state,
            "description": status.description,
            "context": { "genre": genre, "name": name },
        });
        if let Some(url) = &status.target_url {
            body["targetUrl"] = json!(url);
        }
        let path = match status.pull_request {
            Some(pr) => format!(
                "{}/pullRequests/{pr}/statuses?{API_VERSION}",
                Self::repo_path(repo)
            ),
            None => format!(
                "{}/commits/{sha}/statuses?{API_VERSION}",
                Self::repo_path(repo)
            ),
        };
        let _: serde_json::Value = self.api.post(&path, &body).await?;
        Ok(())
    }

    /// A new thread; the id gantry keeps is the thread's.
    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError> {
        let path = format!(
            "{}/pullRequests/{pr}/threads?{API_VERSION}",
            Self::repo_path(repo)
        );
        let payload = json!({
            "comments": [{ "parentCommentId": 0, "content": body, "commentType": 1 }],
            "status": 1,
        });
        let thread: Thread = self.api.post(&path, &payload).await?;
        Ok(thread.id.to_string())
    }

    /// Edits the first comment of the thread.
    async fn update_comment(
        &self,
        repo: &str,
        pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError> {
        let path = format!(
            "{}/pullRequests/{pr}/threads/{}/comments/1?{API_VERSION}",
            Self::repo_path(repo),
            encode_segment(comment_id)
        );
        let _: serde_json::Value = self
            .api
            .patch(&path, &json!({ "content": body }), None)
            .await?;
        Ok(())
    }

    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError> {
        let path = format!("{}/pullRequests/{pr}?{API_VERSION}", Self::repo_path(repo));
        let p: PullRequest = self.api.get(&path).await?;
        let mergeable = match p.merge_status.as_deref() {
            Some("succeeded") => Some(true),
            Some("queued") | Some("notSet") | None => None,
            Some(_) => Some(false),
        };
        Ok(PullRequestInfo {
            head_sha: p
                .last_merge_source_commit
                .as_ref()
                .map(|c| c.commit_id.clone())
                .unwrap_or_default(),
            base_ref: p
                .target_ref_name
                .strip_prefix("refs/heads/")
                .unwrap_or(&p.target_ref_name)
                .to_string(),
            fetch_ref: fetch_ref(pr),
            mergeable,
            open: p.status == "active",
            from_fork: p.fork_source.is_some(),
            head_repo: None,
        })
    }

    /// Approved: at least one approving vote (10, or 5 "with suggestions")
    /// and no reviewer waiting for the author (-5) or rejecting (-10).
    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError> {
        let path = format!("{}/pullRequests/{pr}?{API_VERSION}", Self::repo_path(repo));
        let p: PullRequest = self.api.get(&path).await?;
        Ok(p.reviewers.iter().any(|r| r.vote >= 5) && !p.reviewers.iter().any(|r| r.vote < 0))
    }

    /// The user's effective GenericContribute permission on the repository,
    /// from the Git Repositories security namespace's access control list.
    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct Ids {
            id: String,
            project: ProjectId,
        }
        #[derive(Deserialize)]
        struct ProjectId {
            id: String,
        }
        #[derive(Deserialize)]
        struct IdentityRef {
            descriptor: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Acl {
            #[serde(default)]
            aces_dictionary: std::collections::HashMap<String, Ace>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ace {
            #[serde(default)]
            allow: u64,
            #[serde(default)]
            extended_info: Option<ExtendedInfo>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ExtendedInfo {
            #[serde(default)]
            effective_allow: Option<u64>,
        }
        let ids: Ids = self
            .api
            .get(&format!("{}?{API_VERSION}", Self::repo_path(repo)))
            .await?;
        let found: List<IdentityRef> = self
            .api
            .get(&format!(
                "{}/_apis/identities?searchFilter=General&filterValue={}&queryMembership=None&{API_VERSION}",
                self.identities,
                encode_segment(user)
            ))
            .await?;
        let Some(identity) = found.value.first() else {
            return Ok(false);
        };
        let token = format!("repoV2/{}/{}", ids.project.id, ids.id);
        let acls: List<Acl> = self
            .api
            .send(
                Method::GET,
                &format!(
                    "/_apis/accesscontrollists/{GIT_NAMESPACE}?token={}&descriptors={}&includeExtendedInfo=true&recurse=false&{API_VERSION}",
                    encode_segment(&token),
                    encode_segment(&identity.descriptor)
                ),
                None::<&()>,
                None,
            )
            .await?;
        Ok(acls.value.iter().any(|acl| {
            acl.aces_dictionary.values().any(|ace| {
                let allow = ace
                    .extended_info
                    .as_ref()
                    .and_then(|e| e.effective_allow)
                    .unwrap_or(ace.allow);
                allow & GENERIC_CONTRIBUTE != 0
            })
        }))
    }

    /// Drift issues are work items of type Issue.
    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError> {
        #[derive(Deserialize)]
        struct WorkItem {
            id: i64,
        }
        let path = format!(
            "{}/_apis/wit/workitems/$Issue?{API_VERSION}",
            Self::project_path(repo)
        );
        let patch = json!([
            { "op": "add", "path": "/fields/System.Title", "value": title },
            { "op": "add", "path": "/fields/System.Description", "value": markdown_to_html(body) },
        ]);
        let item: WorkItem = self
            .api
            .send(
                Method::POST,
                &path,
                Some(&patch),
                Some("application/json-patch+json"),
            )
            .await?;
        Ok(item.id)
    }

    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError> {
        let path = format!(
            "{}/_apis/wit/workitems/{number}?{API_VERSION}",
            Self::project_path(repo)
        );
        let description = json!({ "op": "add", "path": "/fields/System.Description", "value": markdown_to_html(body) });
        if !close {
            let _: serde_json::Value = self
                .api
                .patch(
                    &path,
                    &json!([description]),
                    Some("application/json-patch+json"),
                )
                .await?;
            return Ok(());
        }
        // The closed state is named by the process: Done (Basic, Scrum) or Closed (Agile, CMMI).
        let mut last = None;
        for state in ["Done", "Closed"] {
            let patch = json!([
                description,
                { "op": "add", "path": "/fields/System.State", "value": state },
            ]);
            match self
                .api
                .patch::<_, serde_json::Value>(&path, &patch, Some("application/json-patch+json"))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e @ VcsError::Other(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    async fn pull_request_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<i64>, VcsError> {
        #[derive(Deserialize)]
        struct QueryResult {
            #[serde(default)]
            results: Vec<std::collections::HashMap<String, Vec<PrId>>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct PrId {
            pull_request_id: i64,
        }
        let path = format!("{}/pullrequestquery?{API_VERSION}", Self::repo_path(repo));
        let query = json!({ "queries": [{ "type": "lastMergeCommit", "items": [sha] }] });
        let r: QueryResult = self.api.post(&path, &query).await?;
        Ok(r.results
            .iter()
            .flat_map(|m| m.values())
            .flatten()
            .map(|p| p.pull_request_id)
            .next())
    }

    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError> {
        let path = format!(
            "{}/pullRequests/{pr}/threads?{API_VERSION}",
            Self::repo_path(repo)
        );
        let threads: List<Thread> = self.api.get(&path).await?;
        // A thread is gantry's when its first comment (the one gantry edits)
        // carries the marker and gantry wrote it.
        let marked: Vec<_> = threads
            .value
            .into_iter()
            .filter_map(|t| {
                let first = t.comments.into_iter().find(|c| c.id == 1)?;
                first
                    .content
                    .as_deref()
                    .is_some_and(|b| b.contains(marker))
                    .then(|| super::Marked {
                        id: t.id,
                        author: first.author.map(|a| a.id).unwrap_or_default(),
                    })
            })
            .collect();
        if marked.is_empty() {
            return Ok(None);
        }
        let me = self.own_id().await?;
        Ok(super::newest_own(&self.id, marked, |author| {
            !author.is_empty() && author.eq_ignore_ascii_case(me)
        })
        .map(|id| id.to_string()))
    }
}

/// Work item descriptions are HTML: keep the text readable without rendering
/// markdown (escape it and keep line breaks).
fn markdown_to_html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<pre>{escaped}</pre>")
}
