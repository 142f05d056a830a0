//! Bitbucket Cloud: webhook verification (`X-Hub-Signature: sha256=…`), payload
//! parsing, build statuses and the pull request comment, over the 2.0 REST API.
//!
//! Bitbucket sends abbreviated (12-digit) commit hashes in pull request
//! payloads; dispatch resolves them against the mirror. Users are identified by
//! `account_id` (nicknames can change), so comment commands carry it as author.

use async_trait::async_trait;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::rest::{basic, RestClient};
use super::{
    parse_json, CommandEvent, CommitStatus, GitCredentials, Incoming, PrAction, PullRequestEvent,
    PullRequestInfo, PushEvent, StatusState, VcsError, VcsEvent, VcsProvider, WebhookError,
};
use crate::config::{ProviderAuth, ProviderConfig};

/// Bitbucket rejects comments over 32,768 characters; stay clear of it.
pub const COMMENT_LIMIT: usize = 32_000;

/// Bitbucket build status keys hold at most 40 characters.
const MAX_KEY: usize = 40;

pub struct Bitbucket {
    id: String,
    api: RestClient,
    git_user: String,
    token: SecretString,
    git_url: String,
    webhook_secret: SecretString,
    /// An access token (Bearer) rather than a user's app password or API token.
    access_token: bool,
    /// The account gantry's comments are written by: `GET /user` for a user's
    /// credentials, looked up the first time a marked comment needs it. An
    /// access token's bot user cannot call `GET /user`, so for it this is
    /// learned from the first comment gantry posts.
    own_account: tokio::sync::OnceCell<Account>,
}

impl Bitbucket {
    pub fn new(p: &ProviderConfig) -> anyhow::Result<Bitbucket> {
        let ProviderAuth::Token(token) = &p.auth else {
            anyhow::bail!("provider {}: Bitbucket authenticates with token_env", p.id);
        };
        let access_token = p.username.is_none();
        let (authorization, git_user) = match &p.username {
            // An API token (Atlassian account email) or an app password (username).
            Some(user) => (
                basic(user, token.expose_secret()),
                if user.contains('@') {
                    "x-bitbucket-api-token-auth".to_string()
                } else {
                    user.clone()
                },
            ),
            // A repository, project or workspace access token.
            None => (
                format!("Bearer {}", token.expose_secret()),
                "x-token-auth".to_string(),
            ),
        };
        Ok(Bitbucket {
            id: p.id.clone(),
            api: RestClient::new(&p.id, &p.api_url, &authorization)?,
            git_user,
            token: token.clone(),
            git_url: p.git_url.clone(),
            webhook_secret: p.webhook_secret.clone(),
            access_token,
            own_account: tokio::sync::OnceCell::new(),
        })
    }

    /// The account gantry's comments are written by, if it can be known:
    /// `GET /user` for a user's credentials (an error if that fails); for an
    /// access token, the author of a comment gantry posted, else `None`.
    async fn own_account(&self) -> Result<Option<&Account>, VcsError> {
        if self.access_token {
            return Ok(self.own_account.get());
        }
        self.own_account
            .get_or_try_init(|| async {
                self.api
                    .get::<Account>("/user")
                    .await
                    .map_err(|e| e.context("looking up the token's user (GET /user)"))
            })
            .await
            .map(Some)
    }

    fn repo_path(repo: &str) -> String {
        let (workspace, slug) = repo.split_once('/').unwrap_or((repo, ""));
        format!(
            "/repositories/{}/{}",
            super::rest::encode_segment(workspace),
            super::rest::encode_segment(slug)
        )
    }

    /// Every value of a paginated listing (following `next`), up to `max` pages.
    async fn all_pages<T: serde::de::DeserializeOwned>(
        &self,
        first: String,
        max: usize,
    ) -> Result<Vec<T>, VcsError> {
        #[derive(Deserialize)]
        struct Page<T> {
            #[serde(default = "Vec::new")]
            values: Vec<T>,
            #[serde(default)]
            next: Option<String>,
        }
        let mut out = Vec::new();
        let mut url = Some(first);
        for _ in 0..max {
            let Some(u) = url.take() else { break };
            let page: Page<T> = self.api.get(&u).await?;
            out.extend(page.values);
            url = page.next;
        }
        Ok(out)
    }
}

/// Build status keys: `gantry/<workspace>`, shortened with a hash when longer
/// than Bitbucket allows (the name keeps the full context).
pub fn status_key(context: &str) -> String {
    if context.len() <= MAX_KEY {
        return context.to_string();
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(context.as_bytes()));
    let mut cut = MAX_KEY - 9;
    while !context.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{}", &context[..cut], &digest[..8])
}

/// Bitbucket renders no HTML in comments: a `<!-- marker -->` becomes a link
/// reference (`[//]: # (marker)`, invisible once rendered), a collapsible
/// block a bold caption, a line break in a table cell a separator.
pub fn plain_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!-- ") {
        let Some(len) = rest[start..].find(" -->") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&format!("[//]: # ({})", &rest[start + 5..start + len]));
        rest = &rest[start + len + 4..];
    }
    out.push_str(rest);
    out.replace("<details><summary>", "**")
        .replace("</summary>", "**")
        .replace("</details>", "")
        .replace("<br>", " · ")
}

/// Checks `X-Hub-Signature: sha256=<hex>` against HMAC-SHA256(secret, body).
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header =
        header.ok_or_else(|| WebhookError::Unauthorized("missing X-Hub-Signature".into()))?;
    super::github::verify_hmac_sha256(secret, body, header, "X-Hub-Signature")
}

// --- Payloads: only the fields gantry reads; everything else is ignored. ---

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    account_id: Option<String>,
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

impl User {
    /// The stable identity: `account_id`, else the nickname.
    fn identity(&self) -> String {
        self.account_id
            .clone()
            .or_else(|| self.nickname.clone())
            .or_else(|| self.display_name.clone())
            .unwrap_or_default()
    }

    fn display(&self) -> String {
        self.nickname
            .clone()
            .or_else(|| self.display_name.clone())
            .or_else(|| self.account_id.clone())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct Branch {
    name: String,
}

#[derive(Deserialize)]
struct Commit {
    hash: String,
}

#[derive(Deserialize)]
struct Endpoint {
    branch: Branch,
    /// Null when the branch has no commit any more.
    #[serde(default)]
    commit: Option<Commit>,
    /// Null when the source repository (a fork) was deleted.
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct PullRequest {
    id: i64,
    title: String,
    state: String,
    #[serde(default)]
    draft: bool,
    author: User,
    source: Endpoint,
    destination: Endpoint,
    #[serde(default)]
    merge_commit: Option<Commit>,
    #[serde(default)]
    participants: Vec<Participant>,
}

impl PullRequest {
    /// The fork the source branch lives in; Bitbucket keeps no ref for it
    /// in the destination repository, so it is fetched from there.
    fn fork_name(&self) -> Option<String> {
        match &self.source.repository {
            Some(r) if self.is_fork() => Some(r.full_name.clone()),
            _ => None,
        }
    }

    fn is_fork(&self) -> bool {
        match (&self.source.repository, &self.destination.repository) {
            (Some(s), Some(d)) => !s.full_name.eq_ignore_ascii_case(&d.full_name),
            (None, _) => true,
            (Some(_), None) => false,
        }
    }
}

#[derive(Deserialize)]
struct Participant {
    #[serde(default)]
    approved: bool,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    pullrequest: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct RefState {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    target: Option<Commit>,
}

#[derive(Deserialize)]
struct PushChange {
    #[serde(default)]
    old: Option<RefState>,
    #[serde(default)]
    new: Option<RefState>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(default)]
    changes: Vec<PushChange>,
}

#[derive(Deserialize)]
struct PushPayload {
    push: Push,
    repository: Repository,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    raw: Option<String>,
}

#[derive(Deserialize)]
struct Comment {
    content: Content,
    user: User,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
struct PrRef {
    id: i64,
}

#[derive(Deserialize)]
struct CommentPayload {
    comment: Comment,
    pullrequest: PrRef,
    repository: Repository,
}

/// Parses a verified Bitbucket Cloud delivery.
pub fn parse_payload(
    event_key: &str,
    delivery_id: &str,
    body: &[u8],
) -> Result<Incoming, WebhookError> {
    let _: serde::de::IgnoredAny = parse_json(event_key, body)?;
    let delivery = super::Delivery {
        id: delivery_id,
        event_type: event_key,
    };
    let ignored = |reason: String| delivery.ignored(reason);
    let action = event_key.split_once(':').map(|(_, a)| a.to_string());
    let event =
        |event: VcsEvent, actionable: bool| delivery.event(action.clone(), event, actionable);
    match event_key {
        "pullrequest:created"
        | "pullrequest:updated"
        | "pullrequest:fulfilled"
        | "pullrequest:rejected" => {
            let p: PullRequestPayload = parse_json(event_key, body)?;
            let pr = p.pullrequest;
            let merged = event_key == "pullrequest:fulfilled";
            let action = match event_key {
                "pullrequest:created" => PrAction::Opened,
                "pullrequest:updated" => PrAction::Synchronize,
                _ => PrAction::Closed,
            };
            let Some(head) = &pr.source.commit else {
                return Ok(ignored(format!(
                    "pull request #{} has no source commit",
                    pr.id
                )));
            };
            let merge_sha = if merged {
                pr.merge_commit.as_ref().map(|c| c.hash.clone())
            } else {
                None
            };
            let from_fork = pr.is_fork();
            let head_repo = pr.fork_name();
            Ok(event(
                VcsEvent::PullRequest(PullRequestEvent {
                    action,
                    repo: p.repository.full_name,
                    number: pr.id,
                    title: pr.title,
                    author: pr.author.display(),
                    head_sha: head.hash.clone(),
                    head_ref: pr.source.branch.name.clone(),
                    base_ref: pr.destination.branch.name.clone(),
                    base_sha: pr
                        .destination
                        .commit
                        .as_ref()
                        .map(|c| c.hash.clone())
                        .unwrap_or_default(),
                    draft: pr.draft,
                    merged: merged || pr.state == "MERGED",
                    from_fork,
                    fetch_ref: format!("refs/heads/{}", pr.source.branch.name),
                    merge_sha,
                    head_repo,
                }),
                action != PrAction::Closed || merged,
            ))
        }
        "pullrequest:comment_created" => {
            let p: CommentPayload = parse_json(event_key, body)?;
            if p.comment.deleted {
                return Ok(ignored("deleted comment".into()));
            }
            let Some(command) =
                crate::commands::parse(p.comment.content.raw.as_deref().unwrap_or_default())
            else {
                return Ok(ignored("comment is not a /gantry command".into()));
            };
            Ok(event(
                VcsEvent::Command(CommandEvent {
                    repo: p.repository.full_name,
                    pr_number: p.pullrequest.id,
                    author: p.comment.user.identity(),
                    command,
                }),
                true,
            ))
        }
        "repo:push" => {
            let p: PushPayload = parse_json(event_key, body)?;
            let repo = p.repository.full_name;
            let mut updated = Vec::new();
            let mut deleted = Vec::new();
            for change in &p.push.changes {
                let Some(state) = change.new.as_ref().or(change.old.as_ref()) else {
                    continue;
                };
                if state.kind != "branch" {
                    continue;
                }
                match change
                    .new
                    .as_ref()
                    .and_then(|n| n.target.as_ref().map(|t| (n, t)))
                {
                    Some((new, after)) => updated.push(PushEvent {
                        repo: repo.clone(),
                        branch: new.name.clone(),
                        before: change
                            .old
                            .as_ref()
                            .and_then(|o| o.target.as_ref())
                            .map(|t| t.hash.clone())
                            .unwrap_or_else(|| "0".repeat(40)),
                        after: after.hash.clone(),
                    }),
                    None => {
                        tracing::info!(branch = %state.name, repo = %repo, "branch deleted; ignored");
                        deleted.push(state.name.clone());
                    }
                }
            }
            match super::pushes(updated) {
                Some(e) => Ok(event(e, true)),
                None if !deleted.is_empty() => Ok(ignored(format!(
                    "branch `{}` was deleted",
                    deleted.join("`, `")
                ))),
                None => Ok(ignored("push of tags only".into())),
            }
        }
        other => Ok(ignored(format!("event `{other}` is ignored"))),
    }
}

#[derive(Deserialize)]
struct IdRef {
    id: i64,
}

#[derive(Deserialize)]
struct CommentRef {
    id: i64,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    user: Option<Account>,
}

/// A Bitbucket account as the API names it: `account_id` (Atlassian-wide)
/// and `uuid`; either identifies it.
#[derive(Clone, Default, Deserialize)]
struct Account {
    #[serde(default)]
    account_id: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
}

impl Account {
    fn is(&self, other: &Account) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if !a.is_empty() && a == b);
        same(&self.account_id, &other.account_id) || same(&self.uuid, &other.uuid)
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.account_id.as_deref().or(self.uuid.as_deref());
        f.write_str(name.unwrap_or("unknown"))
    }
}

#[async_trait]
impl VcsProvider for Bitbucket {
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
            super::header(headers, "x-hub-signature"),
        )?;
        let event_key = super::header(headers, "x-event-key")
            .ok_or_else(|| WebhookError::BadRequest("missing X-Event-Key".into()))?;
        let delivery_id = super::header(headers, "x-request-uuid")
            .filter(|d| !d.is_empty() && d.len() <= 200)
            .ok_or_else(|| WebhookError::BadRequest("missing X-Request-UUID".into()))?;
        parse_payload(event_key, delivery_id, body)
    }

    fn clone_url(&self, repo: &str) -> String {
        crate::config::expand_git_url(&self.git_url, repo)
    }

    async fn git_credentials(&self, _repo: &str) -> Result<Option<GitCredentials>, VcsError> {
        Ok(Some(GitCredentials {
            username: self.git_user.clone(),
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
            StatusState::Pending => "INPROGRESS",
            StatusState::Success => "SUCCESSFUL",
            StatusState::Failure | StatusState::Error => "FAILED",
        };
        // The URL is required; without a public URL, the commit's own page.
        let url = status.target_url.clone().unwrap_or_else(|| {
            format!(
                "{}/commits/{sha}",
                self.clone_url(repo).trim_end_matches(".git")
            )
        });
        let body = json!({
            "key": status_key(&status.context),
            "state": state,
            "name": status.context,
            "description": status.description.chars().take(255).collect::<String>(),
            "url": url,
        });
        let path = format!("{}/commit/{sha}/statuses/build", Self::repo_path(repo));
        let _: serde_json::Value = self.api.post(&path, &body).await?;
        Ok(())
    }

    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError> {
        let path = format!("{}/pullrequests/{pr}/comments", Self::repo_path(repo));
        let c: CommentRef = self
            .api
            .post(
                &path,
                &json!({ "content": { "raw": plain_markdown(body) } }),
            )
            .await?;
        if self.access_token {
            // The access token's bot user wrote it: that is gantry's identity.
            if let Some(user) = c
                .user
                .filter(|u| u.account_id.is_some() || u.uuid.is_some())
            {
                let _ = self.own_account.set(user);
            }
        }
        Ok(c.id.to_string())
    }

    async fn update_comment(
        &self,
        repo: &str,
        pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError> {
        let path = format!(
            "{}/pullrequests/{pr}/comments/{}",
            Self::repo_path(repo),
            super::rest::encode_segment(comment_id)
        );
        let _: serde_json::Value = self
            .api
            .put(
                &path,
                &json!({ "content": { "raw": plain_markdown(body) } }),
            )
            .await?;
        Ok(())
    }

    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError> {
        #[derive(Deserialize)]
        struct DiffStat {
            #[serde(default)]
            status: String,
        }
        let base = format!("{}/pullrequests/{pr}", Self::repo_path(repo));
        let p: PullRequest = self.api.get(&base).await?;
        let open = p.state == "OPEN";
        let head_repo = p.fork_name();
        // Bitbucket has no mergeable flag: a conflicted file marks the diffstat.
        let mergeable = if open {
            let stats: Vec<DiffStat> = self
                .all_pages(format!("{base}/diffstat?pagelen=500"), 20)
                .await?;
            Some(!stats.iter().any(|s| s.status.contains("conflict")))
        } else {
            Some(false)
        };
        Ok(PullRequestInfo {
            from_fork: p.is_fork(),
            head_sha: p.source.commit.map(|c| c.hash).unwrap_or_default(),
            base_ref: p.destination.branch.name,
            fetch_ref: format!("refs/heads/{}", p.source.branch.name),
            head_repo,
            mergeable,
            open,
        })
    }

    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError> {
        let path = format!("{}/pullrequests/{pr}", Self::repo_path(repo));
        let p: PullRequest = self.api.get(&path).await?;
        let changes_requested = p
            .participants
            .iter()
            .any(|x| x.state.as_deref() == Some("changes_requested"));
        Ok(p.participants.iter().any(|x| x.approved) && !changes_requested)
    }

    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError> {
        #[derive(Deserialize)]
        struct Permission {
            permission: String,
        }
        let (workspace, slug) = repo.split_once('/').unwrap_or((repo, ""));
        let query = format!("user.account_id=\"{}\"", user.replace('"', ""));
        let path = format!(
            "/workspaces/{}/permissions/repositories/{}?q={}",
            super::rest::encode_segment(workspace),
            super::rest::encode_segment(slug),
            super::rest::encode_segment(&query)
        );
        let perms: Vec<Permission> = self.all_pages(path, 5).await?;
        Ok(perms
            .iter()
            .any(|p| matches!(p.permission.as_str(), "write" | "admin")))
    }

    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError> {
        let path = format!("{}/issues", Self::repo_path(repo));
        let issue: IdRef = self
            .api
            .post(
                &path,
                &json!({ "title": title, "content": { "raw": body }, "kind": "bug" }),
            )
            .await?;
        Ok(issue.id)
    }

    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError> {
        let path = format!("{}/issues/{number}", Self::repo_path(repo));
        let mut payload = json!({ "content": { "raw": body } });
        if close {
            payload["state"] = json!("resolved");
        }
        let _: serde_json::Value = self.api.put(&path, &payload).await?;
        Ok(())
    }

    async fn pull_request_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<i64>, VcsError> {
        #[derive(Deserialize)]
        struct Pr {
            id: i64,
            #[serde(default)]
            state: String,
        }
        let path = format!("{}/commit/{sha}/pullrequests", Self::repo_path(repo));
        let prs: Vec<Pr> = self.all_pages(path, 2).await?;
        let merged = prs.iter().find(|p| p.state == "MERGED").or(prs.first());
        Ok(merged.map(|p| p.id))
    }

    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError> {
        let path = format!(
            "{}/pullrequests/{pr}/comments?pagelen=100",
            Self::repo_path(repo)
        );
        let comments: Vec<CommentRef> = self.all_pages(path, 50).await?;
        let marker = plain_markdown(marker);
        let marked: Vec<_> = comments
            .into_iter()
            .filter(|c| {
                c.content
                    .as_ref()
                    .and_then(|x| x.raw.as_deref())
                    .is_some_and(|b| b.contains(&marker))
            })
            .map(|c| super::Marked {
                id: c.id,
                author: c.user.unwrap_or_default(),
            })
            .collect();
        if marked.is_empty() {
            return Ok(None);
        }
        let Some(me) = self.own_account().await? else {
            // An access token's bot is not known until gantry posts once: no
            // marked comment is provably gantry's, so none is edited.
            tracing::warn!(
                provider.id = %self.id,
                "comments carry gantry's marker, but an access token cannot tell whether gantry wrote them; posting a new comment"
            );
            return Ok(None);
        };
        Ok(super::newest_own(&self.id, marked, |author| author.is(me)).map(|id| id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_plain_markdown() {
        let html = "<!-- gantry:pr-comment -->\n### plan\n<details><summary>Plan output</summary>\n\n```\n+ x\n```\n</details>\n| a<br>b |";
        assert_eq!(
            plain_markdown(html),
            "[//]: # (gantry:pr-comment)\n### plan\n**Plan output**\n\n```\n+ x\n```\n\n| a · b |"
        );
        assert_eq!(plain_markdown("no html"), "no html");
        assert_eq!(plain_markdown("<!-- unclosed"), "<!-- unclosed");
    }

    #[test]
    fn status_keys_fit_bitbucket() {
        assert_eq!(status_key("gantry/network"), "gantry/network");
        let long = status_key("gantry/a-very-long-workspace-name-for-the-platform-team");
        assert_eq!(long.len(), 40);
        assert_ne!(
            long,
            status_key("gantry/a-very-long-workspace-name-for-the-platform-team-2")
        );
    }
}
