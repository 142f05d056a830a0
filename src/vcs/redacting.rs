//! The way out to a VCS goes through the redactor: every status, comment and
//! issue gantry sends is masked (secrets in clear and in their encodings)
//! whatever code path produced it.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

use super::{
    CommitStatus, GitCredentials, Incoming, PullRequestInfo, VcsError, VcsProvider, WebhookError,
};
use crate::redact::Redactor;

/// A provider whose outgoing texts pass through a redactor.
pub struct Redacting {
    inner: Arc<dyn VcsProvider>,
    redactor: Arc<Redactor>,
}

impl Redacting {
    pub fn new(inner: Arc<dyn VcsProvider>, redactor: Arc<Redactor>) -> Redacting {
        Redacting { inner, redactor }
    }
}

#[async_trait]
impl VcsProvider for Redacting {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn comment_limit(&self) -> usize {
        self.inner.comment_limit()
    }
    fn parse_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<Incoming, WebhookError> {
        self.inner.parse_webhook(headers, body)
    }
    fn clone_url(&self, repo: &str) -> String {
        self.inner.clone_url(repo)
    }
    async fn git_credentials(&self, repo: &str) -> Result<Option<GitCredentials>, VcsError> {
        self.inner.git_credentials(repo).await
    }
    async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), VcsError> {
        let mut status = status.clone();
        status.description = self.redactor.redact(&status.description);
        self.inner.set_status(repo, sha, &status).await
    }
    async fn create_comment(&self, repo: &str, pr: i64, body: &str) -> Result<String, VcsError> {
        self.inner
            .create_comment(repo, pr, &self.redactor.redact(body))
            .await
    }
    async fn update_comment(
        &self,
        repo: &str,
        pr: i64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), VcsError> {
        self.inner
            .update_comment(repo, pr, comment_id, &self.redactor.redact(body))
            .await
    }
    async fn pull_request(&self, repo: &str, pr: i64) -> Result<PullRequestInfo, VcsError> {
        self.inner.pull_request(repo, pr).await
    }
    async fn is_approved(&self, repo: &str, pr: i64) -> Result<bool, VcsError> {
        self.inner.is_approved(repo, pr).await
    }
    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, VcsError> {
        self.inner.can_write(repo, user).await
    }
    async fn create_issue(&self, repo: &str, title: &str, body: &str) -> Result<i64, VcsError> {
        self.inner
            .create_issue(
                repo,
                &self.redactor.redact(title),
                &self.redactor.redact(body),
            )
            .await
    }
    async fn update_issue(
        &self,
        repo: &str,
        number: i64,
        body: &str,
        close: bool,
    ) -> Result<(), VcsError> {
        self.inner
            .update_issue(repo, number, &self.redactor.redact(body), close)
            .await
    }
    async fn pull_request_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<i64>, VcsError> {
        self.inner.pull_request_for_commit(repo, sha).await
    }
    async fn find_comment(
        &self,
        repo: &str,
        pr: i64,
        marker: &str,
    ) -> Result<Option<String>, VcsError> {
        self.inner.find_comment(repo, pr, marker).await
    }
}
