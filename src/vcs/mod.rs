//! Version-control providers: the [`VcsProvider`] trait (the border tests point
//! at a fake API), the provider-neutral events webhooks are normalized into, and
//! one file per provider.

pub mod azure_devops;
pub mod bitbucket;
pub mod github;
pub mod gitlab;
pub mod redacting;
pub mod rest;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ProviderConfig, ProviderKind};

/// A webhook that failed verification or parsing. Nothing is stored for it.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
}

/// What a verified webhook means to gantry.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// An event to store. `actionable` events are dispatched (they may start
    /// runs); others are only recorded (a closed pull request, a ping).
    Event {
        delivery_id: String,
        event_type: String,
        action: Option<String>,
        event: Box<VcsEvent>,
        actionable: bool,
    },
    /// Verified, understood, and of no interest (unknown event type, an action
    /// gantry does not act on, a tag push, a deleted branch).
    Ignored { event_type: String, reason: String },
}

/// A provider-neutral event, stored as JSON with the delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VcsEvent {
    PullRequest(PullRequestEvent),
    Push(PushEvent),
    /// One push that updated several branches (Bitbucket, Azure DevOps).
    Pushes {
        pushes: Vec<PushEvent>,
    },
    /// A `/gantry …` comment on a pull request.
    Command(CommandEvent),
    Ping {
        zen: Option<String>,
    },
}

impl VcsEvent {
    pub fn repo(&self) -> Option<&str> {
        match self {
            VcsEvent::PullRequest(pr) => Some(&pr.repo),
            VcsEvent::Push(p) => Some(&p.repo),
            VcsEvent::Pushes { pushes } => pushes.first().map(|p| p.repo.as_str()),
            VcsEvent::Command(c) => Some(&c.repo),
            VcsEvent::Ping { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    Opened,
    Reopened,
    Synchronize,
    ReadyForReview,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequestEvent {
    pub action: PrAction,
    pub repo: String,
    pub number: i64,
    pub title: String,
    pub author: String,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    pub base_sha: String,
    pub draft: bool,
    pub merged: bool,
    /// The head branch lives in a fork (another repository).
    #[serde(default)]
    pub from_fork: bool,
    /// The ref the provider keeps for the head commit (`refs/pull/N/head`).
    pub fetch_ref: String,
    /// The commit a merge made on the base branch, for providers whose merged
    /// event drives apply on merge (deduplicated with the push of the same
    /// commit). `None` for GitHub, where the push alone drives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_sha: Option<String>,
    /// The fork `fetch_ref` lives in, for providers that keep no ref for a
    /// fork's commits in the base repository (Bitbucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_repo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    pub repo: String,
    pub branch: String,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEvent {
    pub repo: String,
    pub pr_number: i64,
    /// The commenter's login.
    pub author: String,
    pub command: crate::commands::Command,
}

/// What gantry needs to know about an open pull request.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequestInfo {
    pub head_sha: String,
    pub base_ref: String,
    pub fetch_ref: String,
    /// `None` while the provider is still computing it.
    pub mergeable: Option<bool>,
    pub open: bool,
    pub from_fork: bool,
    /// See [`PullRequestEvent::head_repo`].
    pub head_repo: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

/// A commit status for one workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitStatus {
    pub state: StatusState,
    /// `gantry/<workspace>`.
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
    /// The pull request the commit is the head of, for providers that show
    /// statuses on the pull request itself (Azure DevOps).
    pub pull_request: Option<i64>,
}

/// A provider API failure, classified so callers can retry, report or give up.
#[derive(Debug, thiserror::Error)]
pub enum VcsError {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("rate limited: {0}")]
    RateLimited(String),
    #[error("provider error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    #[error("{0}")]
    Other(String),
}

impl VcsError {
    /// Worth trying again after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(self, VcsError::RateLimited(_) | VcsError::Server { .. })
    }

    /// The same error (same class), its message prefixed with what failed.
    pub fn context(self, what: &str) -> VcsError {
        match self {
            VcsError::Unauthorized(m) => VcsError::Unauthorized(format!("{what}: {m}")),
            VcsError::Forbidden(m) => VcsError::Forbidden(format!("{what}: {m}")),
            VcsError::NotFound(m) => VcsError::NotFound(format!("{what}: {m}")),
            VcsError::RateLimited(m) => VcsError::RateLimited(format!("{what}: {m}")),
            VcsError::Server { status, message } => VcsError::Server {
                status,
                message: format!("{what}: {message}"),
            },
            VcsError::Other(m) => VcsError::Other(format!("{what}: {m}")),
        }
    }
}

/// Username and password for git over HTTPS.
#[derive(Clone)]
pub struct GitCredentials {
    pub username: String,
    pub password: SecretString,
}

/// One VCS provider instance (a `providers[]` entry).
#[async_trait]
pub trait VcsProvider: Send + Sync {
    fn id(&self) -> &str;
    /// Largest comment body the provider accepts, with a safety margin.
    fn comment_limit(&self) -> usize;
    /// Verifies a webhook's authenticity, then parses it.
    fn parse_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<Incoming, WebhookError>;
    fn clone_url(&self, repo: &str) -> String;
    async fn git_credentials(&self, repo: &str) -> Result<Option<GitCredentials>, VcsError>;
    async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), VcsError>;
    /// Creates a comment on a pull request; returns its id.
    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError>;
    async fn update_comment(
        &self,
        repo: &str,
        pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError>;
    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError>;
    /// Whether the pull request is approved (and no reviewer requests changes).
    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError>;
    /// Whether `user` may push to the repository.
    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError>;
    /// Opens an issue; returns its number.
    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError>;
    /// Replaces an issue's body, or closes it (with `body` as its last text).
    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError>;
    /// The pull request a (merge) commit belongs to, if any.
    async fn pull_request_for_commit(&self, repo: &str, sha: &str)
        -> Result<Option<i64>, VcsError>;
    /// The newest comment on the pull request whose body contains `marker`
    /// and that gantry's own identity wrote (the token's user, or the GitHub
    /// App's bot): a stranger's comment carrying the marker is never returned.
    /// The identity is looked up once, when a marked comment first needs it;
    /// failing to learn it is an error, never a match.
    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError>;
}

/// The providers of one configuration, by id.
#[derive(Clone, Default)]
pub struct Providers(HashMap<String, Arc<dyn VcsProvider>>);

impl Providers {
    /// Every provider of the configuration, each behind the redactor of
    /// that configuration's secrets.
    pub fn from_config(config: &Config) -> anyhow::Result<Providers> {
        Self::with_redactor(
            config,
            Arc::new(crate::redact::Redactor::for_config(config)),
        )
    }

    /// Like [`Providers::from_config`], with the configuration's redactor
    /// already built (the app shares one for the API, logs and providers).
    pub fn with_redactor(
        config: &Config,
        redactor: Arc<crate::redact::Redactor>,
    ) -> anyhow::Result<Providers> {
        let mut map: HashMap<String, Arc<dyn VcsProvider>> = HashMap::new();
        for p in &config.providers {
            let provider = redacting::Redacting::new(build(p)?, redactor.clone());
            map.insert(p.id.clone(), Arc::new(provider));
        }
        Ok(Providers(map))
    }

    pub fn get(&self, id: &str) -> Option<Arc<dyn VcsProvider>> {
        self.0.get(id).cloned()
    }
}

fn build(p: &ProviderConfig) -> anyhow::Result<Arc<dyn VcsProvider>> {
    Ok(match p.kind {
        ProviderKind::Github => Arc::new(github::GitHub::new(p)?),
        ProviderKind::Gitlab => Arc::new(gitlab::GitLab::new(p)?),
        ProviderKind::Bitbucket => Arc::new(bitbucket::Bitbucket::new(p)?),
        ProviderKind::AzureDevops => Arc::new(azure_devops::AzureDevOps::new(p)?),
    })
}

/// Parses a webhook body (or a part of it) as `T`; a malformed one is a 400
/// that names the event.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(
    event: &str,
    body: &'a [u8],
) -> Result<T, WebhookError> {
    serde_json::from_slice(body)
        .map_err(|e| WebhookError::BadRequest(format!("malformed {event} payload: {e}")))
}

/// A verified delivery being parsed: builds what it means to gantry.
pub(crate) struct Delivery<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
}

impl Delivery<'_> {
    pub fn ignored(&self, reason: String) -> Incoming {
        Incoming::Ignored {
            event_type: self.event_type.to_string(),
            reason,
        }
    }

    pub fn event(&self, action: Option<String>, event: VcsEvent, actionable: bool) -> Incoming {
        Incoming::Event {
            delivery_id: self.id.to_string(),
            event_type: self.event_type.to_string(),
            action,
            event: Box::new(event),
            actionable,
        }
    }
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A stable delivery id for providers that send none: the body's SHA-256.
pub(crate) fn body_hash(body: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256-{}", hex::encode(sha2::Sha256::digest(body)))
}

/// The event for the branches one push updated: none, one, or several.
pub(crate) fn pushes(mut updated: Vec<PushEvent>) -> Option<VcsEvent> {
    match updated.len() {
        0 => None,
        1 => updated.pop().map(VcsEvent::Push),
        _ => Some(VcsEvent::Pushes { pushes: updated }),
    }
}

/// The all-zero SHA providers send for a deleted (or not yet existing) ref.
pub(crate) fn is_zero_sha(sha: &str) -> bool {
    sha.bytes().all(|b| b == b'0')
}

/// A comment that carries gantry's marker, as `find_comment` sees it: its id
/// (ids grow with time) and its author, in the provider's terms.
pub(crate) struct Marked<I, A> {
    pub id: I,
    pub author: A,
}

/// The newest of the `marked` comments that `is_mine` says gantry wrote. The
/// others are strangers' comments that copied the marker: left alone, logged.
pub(crate) fn newest_own<I, A>(
    provider_id: &str,
    marked: Vec<Marked<I, A>>,
    is_mine: impl Fn(&A) -> bool,
) -> Option<I>
where
    I: Ord + std::fmt::Display,
    A: std::fmt::Display,
{
    let mut newest: Option<I> = None;
    for m in marked {
        if is_mine(&m.author) {
            if newest.as_ref().is_none_or(|n| m.id > *n) {
                newest = Some(m.id);
            }
        } else {
            tracing::warn!(
                provider.id = %provider_id,
                comment.id = %m.id,
                comment.author = %m.author,
                "a comment by another user carries gantry's marker; leaving it alone"
            );
        }
    }
    newest
}

/// Runs `f`, retrying transient provider failures with backoff.
pub(crate) async fn retry_transient<T, F, Fut>(
    provider_id: &str,
    what: &str,
    f: F,
) -> Result<T, VcsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, VcsError>>,
{
    use backon::Retryable;
    f.retry(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(500))
            .with_max_delay(std::time::Duration::from_secs(30))
            .with_max_times(4),
    )
    .when(VcsError::is_transient)
    .notify(|e, after| {
        tracing::warn!(provider.id = %provider_id, error = %e, retry_in_ms = after.as_millis() as u64, "{what} failed; retrying")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(id: u64, author: &str) -> Marked<u64, String> {
        Marked {
            id,
            author: author.to_string(),
        }
    }

    #[test]
    fn every_provider_kind_builds_from_its_config() {
        let config = crate::config::tests::every_provider_kind();
        assert!(Providers::from_config(&config).is_ok());
    }

    #[test]
    fn only_gantrys_own_marked_comments_are_found() {
        let mine = |a: &String| a == "gantry-bot";
        // A stranger's newer comment carrying the marker is passed over.
        let found = newest_own(
            "gh",
            vec![
                marked(10, "gantry-bot"),
                marked(30, "mallory"),
                marked(20, "gantry-bot"),
            ],
            mine,
        );
        assert_eq!(found, Some(20));
        // Only strangers' comments: none is gantry's.
        assert_eq!(
            newest_own("gh", vec![marked(5, "mallory"), marked(6, "eve")], mine),
            None
        );
        assert_eq!(newest_own::<u64, String>("gh", Vec::new(), mine), None);
    }
}
