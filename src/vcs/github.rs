//! GitHub (github.com and GitHub Enterprise Server): webhook verification
//! (`X-Hub-Signature-256`), payload parsing, commit statuses and the PR comment,
//! through octocrab pointed at the configured API base URL.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use octocrab::Octocrab;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use super::{
    parse_json, CommandEvent, CommitStatus, GitCredentials, Incoming, PrAction, PullRequestEvent,
    PullRequestInfo, PushEvent, VcsError, VcsEvent, VcsProvider, WebhookError,
};
use crate::config::{ProviderAuth, ProviderConfig};

/// GitHub rejects comments over 65,536 characters; stay clear of it.
pub const COMMENT_LIMIT: usize = 60_000;

pub struct GitHub {
    id: String,
    auth: Auth,
    git_url: String,
    webhook_secret: SecretString,
    /// gantry's own login (the token's user, or the App's `<slug>[bot]`),
    /// looked up the first time a comment carrying a marker needs it.
    own_login: tokio::sync::OnceCell<String>,
}

/// Installation tokens last an hour; reuse one for git for at most this long.
const INSTALLATION_TOKEN_REUSE: Duration = Duration::from_secs(45 * 60);

enum Auth {
    Token {
        client: Octocrab,
        token: SecretString,
    },
    /// A GitHub App: `app` authenticates as the app (JWT); each repository's
    /// installation gets its own client, which refreshes its token itself.
    App {
        app: Octocrab,
        installations: std::sync::Mutex<std::collections::HashMap<String, Installation>>,
    },
}

#[derive(Clone)]
struct Installation {
    id: u64,
    client: Octocrab,
    git_token: Option<(SecretString, std::time::Instant)>,
}

impl GitHub {
    pub fn new(p: &ProviderConfig) -> anyhow::Result<GitHub> {
        let builder = Octocrab::builder()
            .base_uri(p.api_url.as_str())
            .map_err(|e| anyhow::anyhow!("provider {}: api_url: {e}", p.id))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)));
        let built = |r: octocrab::Result<Octocrab>| {
            r.map_err(|e| anyhow::anyhow!("provider {}: building the GitHub client: {e}", p.id))
        };
        let auth = match &p.auth {
            ProviderAuth::Token(token) => Auth::Token {
                client: built(
                    builder
                        .personal_token(token.expose_secret().to_string())
                        .build(),
                )?,
                token: token.clone(),
            },
            ProviderAuth::App {
                app_id,
                private_key,
            } => {
                let key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose_secret().as_bytes())
                        .map_err(|e| anyhow::anyhow!("provider {}: private key: {e}", p.id))?;
                Auth::App {
                    app: built(builder.app(octocrab::models::AppId(*app_id), key).build())?,
                    installations: Default::default(),
                }
            }
        };
        Ok(GitHub {
            id: p.id.clone(),
            auth,
            git_url: p.git_url.clone(),
            webhook_secret: p.webhook_secret.clone(),
            own_login: tokio::sync::OnceCell::new(),
        })
    }

    /// The login gantry's comments are written by: `GET /user` with a token,
    /// `<slug>[bot]` of `GET /app` (as the app, JWT) with a GitHub App.
    async fn own_login(&self) -> Result<&str, VcsError> {
        #[derive(Deserialize)]
        struct App {
            slug: String,
        }
        self.own_login
            .get_or_try_init(|| async {
                match &self.auth {
                    Auth::Token { client, .. } => {
                        let user: User = self
                            .with_retry("user lookup", || async {
                                client.get("/user", None::<&()>).await.map_err(map_error)
                            })
                            .await
                            .map_err(|e| e.context("looking up the token's user (GET /user)"))?;
                        Ok(user.login)
                    }
                    Auth::App { app, .. } => {
                        let found: App = self
                            .with_retry("app lookup", || async {
                                app.get("/app", None::<&()>).await.map_err(map_error)
                            })
                            .await
                            .map_err(|e| e.context("looking up the GitHub App (GET /app)"))?;
                        Ok(format!("{}[bot]", found.slug))
                    }
                }
            })
            .await
            .map(String::as_str)
    }

    /// The app installation that covers `repo`, looked up once and cached.
    async fn installation(&self, repo: &str) -> Result<Installation, VcsError> {
        let Auth::App { app, installations } = &self.auth else {
            return Err(VcsError::Other("not a GitHub App provider".into()));
        };
        if let Some(i) = installations
            .lock()
            .expect("installation cache poisoned")
            .get(repo)
        {
            return Ok(i.clone());
        }
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/installation");
        let found: InstallationRef = self
            .with_retry("installation lookup", || async {
                app.get(&route, None::<&()>).await.map_err(map_error)
            })
            .await?;
        let client = app
            .installation(octocrab::models::InstallationId(found.id))
            .map_err(|e| VcsError::Other(first_line(&e.to_string())))?;
        let inst = Installation {
            id: found.id,
            client,
            git_token: None,
        };
        installations
            .lock()
            .expect("installation cache poisoned")
            .insert(repo.to_string(), inst.clone());
        Ok(inst)
    }

    /// The client to call the API about `repo` with.
    async fn client(&self, repo: &str) -> Result<Octocrab, VcsError> {
        match &self.auth {
            Auth::Token { client, .. } => Ok(client.clone()),
            Auth::App { .. } => Ok(self.installation(repo).await?.client),
        }
    }

    async fn with_retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T, VcsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, VcsError>>,
    {
        super::retry_transient(&self.id, &format!("GitHub {what}"), f).await
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, body)
/// in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header =
        header.ok_or_else(|| WebhookError::Unauthorized("missing X-Hub-Signature-256".into()))?;
    verify_hmac_sha256(secret, body, header, "X-Hub-Signature-256")
}

/// Checks a `sha256=<hex>` header value (named `name` in errors) against
/// HMAC-SHA256(secret, body) in constant time.
pub fn verify_hmac_sha256(
    secret: &[u8],
    body: &[u8],
    value: &str,
    name: &str,
) -> Result<(), WebhookError> {
    let hex_sig = value
        .strip_prefix("sha256=")
        .ok_or_else(|| WebhookError::Unauthorized(format!("{name} is not sha256=<hex>")))?;
    let sig = hex::decode(hex_sig)
        .map_err(|_| WebhookError::Unauthorized(format!("{name} is not hex")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| WebhookError::Unauthorized("signature does not match".into()))
}

use super::header;

fn map_error(e: octocrab::Error) -> VcsError {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            let message = source.message.clone();
            match status {
                401 => VcsError::Unauthorized(message),
                403 if message.to_ascii_lowercase().contains("rate limit") => {
                    VcsError::RateLimited(message)
                }
                403 => VcsError::Forbidden(message),
                404 => VcsError::NotFound(message),
                429 => VcsError::RateLimited(message),
                500..=599 => VcsError::Server { status, message },
                _ => VcsError::Other(format!("HTTP {status}: {message}")),
            }
        }
        // Connection failures and timeouts: worth another try.
        octocrab::Error::Hyper { source, .. } => VcsError::Server {
            status: 0,
            message: source.to_string(),
        },
        octocrab::Error::Service { source, .. } => VcsError::Server {
            status: 0,
            message: source.to_string(),
        },
        other => VcsError::Other(first_line(&other.to_string())),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn split_repo(repo: &str) -> (&str, &str) {
    repo.split_once('/').unwrap_or((repo, ""))
}

// --- Payloads: only the fields gantry reads; everything else is ignored. ---

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct GitRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
    /// Null when the head repository (a fork) was deleted.
    #[serde(default)]
    repo: Option<Repository>,
}

impl GitRef {
    fn repo_name(&self) -> Option<&str> {
        self.repo.as_ref().map(|r| r.full_name.as_str())
    }
}

/// Whether a pull request's head lives in another repository than its base.
fn is_fork(head: &GitRef, base: &GitRef) -> bool {
    match (head.repo_name(), base.repo_name()) {
        (Some(h), Some(b)) => !h.eq_ignore_ascii_case(b),
        // A deleted fork.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

#[derive(Deserialize)]
struct PullRequest {
    number: i64,
    title: String,
    user: User,
    head: GitRef,
    base: GitRef,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    merged: Option<bool>,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    number: i64,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
}

#[derive(Deserialize)]
struct IssueRef {
    number: i64,
    #[serde(default)]
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CommentBody {
    #[serde(default)]
    body: Option<String>,
    user: User,
}

#[derive(Deserialize)]
struct IssueCommentPayload {
    action: String,
    issue: IssueRef,
    comment: CommentBody,
    repository: Repository,
}

#[derive(Deserialize)]
struct PingPayload {
    zen: Option<String>,
}

/// Parses a verified GitHub delivery.
pub fn parse_payload(
    event_type: &str,
    delivery_id: &str,
    body: &[u8],
) -> Result<Incoming, WebhookError> {
    // Every delivery must at least be JSON, whatever its type.
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
        "pull_request" => {
            let p: PullRequestPayload = parse_json(event_type, body)?;
            let action = match p.action.as_str() {
                "opened" => PrAction::Opened,
                "reopened" => PrAction::Reopened,
                "synchronize" => PrAction::Synchronize,
                "ready_for_review" => PrAction::ReadyForReview,
                "closed" => PrAction::Closed,
                other => return Ok(ignored(format!("pull_request action `{other}` is ignored"))),
            };
            let pr = p.pull_request;
            let from_fork = is_fork(&pr.head, &pr.base);
            let actionable = action != PrAction::Closed;
            Ok(event(
                Some(p.action.clone()),
                VcsEvent::PullRequest(PullRequestEvent {
                    action,
                    repo: p.repository.full_name,
                    number: p.number,
                    title: pr.title,
                    author: pr.user.login,
                    head_sha: pr.head.sha,
                    head_ref: pr.head.name,
                    base_ref: pr.base.name,
                    base_sha: pr.base.sha,
                    draft: pr.draft,
                    merged: pr.merged.unwrap_or(false),
                    from_fork,
                    fetch_ref: format!("refs/pull/{}/head", pr.number),
                    // Apply on merge follows the push GitHub sends with the merge.
                    merge_sha: None,
                    head_repo: None,
                }),
                actionable,
            ))
        }
        "push" => {
            let p: PushPayload = parse_json(event_type, body)?;
            let Some(branch) = p.git_ref.strip_prefix("refs/heads/") else {
                return Ok(ignored(format!("push to `{}` is not a branch", p.git_ref)));
            };
            if p.deleted || p.after.bytes().all(|b| b == b'0') {
                return Ok(ignored(format!("branch `{branch}` was deleted")));
            }
            Ok(event(
                None,
                VcsEvent::Push(PushEvent {
                    repo: p.repository.full_name,
                    branch: branch.to_string(),
                    before: p.before,
                    after: p.after,
                }),
                true,
            ))
        }
        "issue_comment" => {
            let p: IssueCommentPayload = parse_json(event_type, body)?;
            if p.action != "created" {
                return Ok(ignored(format!(
                    "issue_comment action `{}` is ignored",
                    p.action
                )));
            }
            if p.issue.pull_request.is_none() {
                return Ok(ignored("comment on an issue, not a pull request".into()));
            }
            let Some(command) =
                crate::commands::parse(p.comment.body.as_deref().unwrap_or_default())
            else {
                return Ok(ignored("comment is not a /gantry command".into()));
            };
            Ok(event(
                Some(p.action.clone()),
                VcsEvent::Command(CommandEvent {
                    repo: p.repository.full_name,
                    pr_number: p.issue.number,
                    author: p.comment.user.login,
                    command,
                }),
                true,
            ))
        }
        "ping" => {
            let p: PingPayload = parse_json(event_type, body)?;
            Ok(event(None, VcsEvent::Ping { zen: p.zen }, false))
        }
        other => Ok(ignored(format!("event `{other}` is ignored"))),
    }
}

#[derive(Deserialize)]
struct InstallationRef {
    id: u64,
}

#[derive(Deserialize)]
struct CommentRef {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    /// Null for some deleted accounts.
    #[serde(default)]
    user: Option<User>,
}

#[async_trait]
impl VcsProvider for GitHub {
    fn id(&self) -> &str {
        &self.id
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn parse_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<Incoming, WebhookError> {
        verify_signature(
            self.webhook_secret.expose_secret().as_bytes(),
            body,
            header(headers, "x-hub-signature-256"),
        )?;
        let event_type = header(headers, "x-github-event")
            .ok_or_else(|| WebhookError::BadRequest("missing X-GitHub-Event".into()))?;
        let delivery_id = header(headers, "x-github-delivery")
            .filter(|d| !d.is_empty() && d.len() <= 200)
            .ok_or_else(|| WebhookError::BadRequest("missing X-GitHub-Delivery".into()))?;
        parse_payload(event_type, delivery_id, body)
    }

    fn clone_url(&self, repo: &str) -> String {
        crate::config::expand_git_url(&self.git_url, repo)
    }

    async fn git_credentials(&self, repo: &str) -> Result<Option<GitCredentials>, VcsError> {
        let password = match &self.auth {
            Auth::Token { token, .. } => token.clone(),
            Auth::App { app, installations } => {
                let inst = self.installation(repo).await?;
                match &inst.git_token {
                    Some((token, at)) if at.elapsed() < INSTALLATION_TOKEN_REUSE => token.clone(),
                    _ => {
                        let (_, token) = app
                            .installation_and_token(octocrab::models::InstallationId(inst.id))
                            .await
                            .map_err(map_error)?;
                        if let Some(cached) = installations
                            .lock()
                            .expect("installation cache poisoned")
                            .get_mut(repo)
                        {
                            cached.git_token = Some((token.clone(), std::time::Instant::now()));
                        }
                        token
                    }
                }
            }
        };
        Ok(Some(GitCredentials {
            username: "x-access-token".into(),
            password,
        }))
    }

    async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), VcsError> {
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/statuses/{sha}");
        let client = self.client(repo).await?;
        // GitHub caps descriptions at 140 characters.
        let description: String = status.description.chars().take(140).collect();
        let mut body = serde_json::json!({
            "state": status.state,
            "context": status.context,
            "description": description,
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = serde_json::Value::String(url.clone());
        }
        self.with_retry("status", || async {
            client
                .post::<_, serde_json::Value>(&route, Some(&body))
                .await
                .map_err(map_error)
        })
        .await?;
        Ok(())
    }

    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError> {
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/issues/{pr}/comments");
        let client = self.client(repo).await?;
        let payload = serde_json::json!({ "body": body });
        let c: CommentRef = self
            .with_retry("comment", || async {
                client.post(&route, Some(&payload)).await.map_err(map_error)
            })
            .await?;
        Ok(c.id.to_string())
    }

    async fn update_comment(
        &self,
        repo: &str,
        _pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError> {
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/issues/comments/{comment_id}");
        let client = self.client(repo).await?;
        let payload = serde_json::json!({ "body": body });
        self.with_retry("comment edit", || async {
            client
                .patch::<serde_json::Value, _, _>(&route, Some(&payload))
                .await
                .map_err(map_error)
        })
        .await?;
        Ok(())
    }

    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError> {
        #[derive(Deserialize)]
        struct IssueNumber {
            number: i64,
        }
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/issues");
        let payload = serde_json::json!({ "title": title, "body": body });
        let client = self.client(repo).await?;
        let issue: IssueNumber = self
            .with_retry("issue", || async {
                client.post(&route, Some(&payload)).await.map_err(map_error)
            })
            .await?;
        Ok(issue.number)
    }

    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError> {
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/issues/{number}");
        let mut payload = serde_json::json!({ "body": body });
        if close {
            payload["state"] = serde_json::json!("closed");
            payload["state_reason"] = serde_json::json!("completed");
        }
        let client = self.client(repo).await?;
        self.with_retry("issue edit", || async {
            client
                .patch::<serde_json::Value, _, _>(&route, Some(&payload))
                .await
                .map_err(map_error)
        })
        .await?;
        Ok(())
    }

    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError> {
        #[derive(Deserialize)]
        struct Pr {
            state: String,
            head: GitRef,
            base: GitRef,
            #[serde(default)]
            mergeable: Option<bool>,
        }
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/pulls/{pr}");
        let client = self.client(repo).await?;
        let p: Pr = self
            .with_retry("pull request", || async {
                client.get(&route, None::<&()>).await.map_err(map_error)
            })
            .await?;
        Ok(PullRequestInfo {
            from_fork: is_fork(&p.head, &p.base),
            head_sha: p.head.sha,
            base_ref: p.base.name,
            fetch_ref: format!("refs/pull/{pr}/head"),
            mergeable: p.mergeable,
            open: p.state == "open",
            head_repo: None,
        })
    }

    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct Review {
            user: Option<User>,
            state: String,
        }
        let (owner, name) = split_repo(repo);
        let client = self.client(repo).await?;
        // Each reviewer's latest decisive review counts.
        let mut latest: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        for page in 1..=20u32 {
            let route =
                format!("/repos/{owner}/{name}/pulls/{pr}/reviews?per_page=100&page={page}");
            let reviews: Vec<Review> = self
                .with_retry("reviews", || async {
                    client.get(&route, None::<&()>).await.map_err(map_error)
                })
                .await?;
            for r in &reviews {
                if let (Some(u), "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED") =
                    (&r.user, r.state.as_str())
                {
                    latest.insert(u.login.clone(), r.state.clone());
                }
            }
            if reviews.len() < 100 {
                break;
            }
        }
        Ok(latest.values().any(|s| s == "APPROVED")
            && !latest.values().any(|s| s == "CHANGES_REQUESTED"))
    }

    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct Permission {
            permission: String,
        }
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/collaborators/{user}/permission");
        let client = self.client(repo).await?;
        let result = self
            .with_retry("permission", || async {
                client
                    .get::<Permission, _, _>(&route, None::<&()>)
                    .await
                    .map_err(map_error)
            })
            .await;
        match result {
            Ok(p) => Ok(matches!(
                p.permission.as_str(),
                "admin" | "maintain" | "write"
            )),
            // Not a collaborator at all.
            Err(VcsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn pull_request_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<i64>, VcsError> {
        #[derive(Deserialize)]
        struct Pr {
            number: i64,
            merged_at: Option<String>,
        }
        let (owner, name) = split_repo(repo);
        let route = format!("/repos/{owner}/{name}/commits/{sha}/pulls");
        let client = self.client(repo).await?;
        let prs: Vec<Pr> = self
            .with_retry("pull request lookup", || async {
                client.get(&route, None::<&()>).await.map_err(map_error)
            })
            .await?;
        let merged = prs.iter().find(|p| p.merged_at.is_some()).or(prs.first());
        Ok(merged.map(|p| p.number))
    }

    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError> {
        let (owner, name) = split_repo(repo);
        let client = self.client(repo).await?;
        let mut marked = Vec::new();
        for page in 1..=50u32 {
            let route =
                format!("/repos/{owner}/{name}/issues/{pr}/comments?per_page=100&page={page}");
            let comments: Vec<CommentRef> = self
                .with_retry("comment list", || async {
                    client.get(&route, None::<&()>).await.map_err(map_error)
                })
                .await?;
            let count = comments.len();
            marked.extend(
                comments
                    .into_iter()
                    .filter(|c| c.body.as_deref().is_some_and(|b| b.contains(marker)))
                    .map(|c| super::Marked {
                        id: c.id,
                        author: c.user.map(|u| u.login).unwrap_or_default(),
                    }),
            );
            if count < 100 {
                break;
            }
        }
        if marked.is_empty() {
            return Ok(None);
        }
        let me = self.own_login().await?;
        Ok(super::newest_own(&self.id, marked, |login| {
            !login.is_empty() && login.eq_ignore_ascii_case(me)
        })
        .map(|id| id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_vector() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(
            verify_signature(b"It's a Secret to Everybody", b"Hello, World!", Some(sig)).is_ok()
        );
        assert!(verify_signature(b"wrong secret", b"Hello, World!", Some(sig)).is_err());
        assert!(
            verify_signature(b"It's a Secret to Everybody", b"Hello, World?", Some(sig)).is_err()
        );
        assert!(verify_signature(b"It's a Secret to Everybody", b"Hello, World!", None).is_err());
        assert!(verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha1=abc")
        )
        .is_err());
    }
}
