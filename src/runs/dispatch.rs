//! From a stored webhook event to runs: fetch the mirror, diff the change,
//! find the affected workspaces, and store the runs (superseding stale ones)
//! together with marking the event dispatched.

use std::time::Duration;

use crate::config::{Workflow, Workspace};
use crate::git::{GitError, Mirrors};
use crate::outbox::Outbox;
use crate::planner;
use crate::policy::groups::Policies;
use crate::runs::{RunKind, RunSource};
use crate::settings::Settings;
use crate::store::{short_sha, EventRow, Lease, NewRun, RunsQueued, Store, StoreError, Supersede};
use crate::vcs::{PrAction, PullRequestEvent, PushEvent, VcsEvent};

/// Attempts before a failing event is given up (it stays stored as `failed`).
const MAX_ATTEMPTS: i64 = 5;

/// What a dispatch decided.
/// What dispatching an event uses (and a comment command, which is one).
pub struct Deps {
    pub settings: Settings,
    pub store: Store,
    pub mirrors: Mirrors,
    /// PR comments (refreshed when a new head affects nothing).
    pub outbox: Outbox,
    /// Pushes to a policy repository reload its group; its PRs get an impact analysis.
    pub policies: Policies,
    pub runs_queued: RunsQueued,
}

pub(super) struct Outcome {
    pub(super) detail: String,
    pub(super) runs: Vec<NewRun>,
    pub(super) supersede: Option<Supersede>,
    /// The pull request whose comment to refresh, with its head.
    pub(super) pr: Option<(String, i64, String)>,
}

impl Outcome {
    pub(super) fn nothing(detail: impl Into<String>) -> Outcome {
        Outcome {
            detail: detail.into(),
            runs: Vec::new(),
            supersede: None,
            pr: None,
        }
    }
}

/// Dispatches a claimed event, renewing its lease meanwhile: a dispatch may
/// outlast the lease (the first clone of a big repository, VCS retries), and
/// an event whose lease ran out would be dispatched again by another replica.
#[tracing::instrument(skip_all, fields(event.id = event.id, delivery.id = %event.delivery_id))]
pub async fn dispatch(ctx: &Deps, event: EventRow, lease: Lease) {
    let _renewal = renew_while_dispatching(ctx, &lease);
    dispatch_claimed(ctx, event, &lease).await;
}

/// Renews the event's lease every quarter lease until dropped.
fn renew_while_dispatching(ctx: &Deps, lease: &Lease) -> AbortOnDrop {
    let store = ctx.store.clone();
    let duration = ctx.settings.config().queue.lease;
    let lease = lease.clone();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(duration / 4).await;
            match store.renew_event(&lease, duration).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        event.id = lease.id,
                        "event {} lost its lease; this dispatch's result will be ignored",
                        lease.id
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(event.id = lease.id, error = %e, "renewing the lease of event {} failed", lease.id)
                }
            }
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a holder's write that failed; a lost lease is not an error of this
/// replica, only a late write that the store ignored.
fn log_write(result: Result<(), StoreError>, what: &str, event_id: i64) {
    match result {
        Ok(()) => {}
        Err(e @ StoreError::LeaseLost { .. }) => {
            tracing::warn!(
                event.id = event_id,
                "{what} of event {event_id} ignored: {e}"
            )
        }
        Err(e) => {
            tracing::error!(event.id = event_id, error = %e, "{what} of event {event_id} failed")
        }
    }
}

async fn dispatch_claimed(ctx: &Deps, event: EventRow, lease: &Lease) {
    let parsed: VcsEvent = match serde_json::from_str(&event.body) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "stored event {} is unreadable", event.id);
            let failed = ctx
                .store
                .fail_dispatch(lease, &format!("unreadable event: {e}"))
                .await;
            log_write(failed, "giving up", event.id);
            return;
        }
    };
    let result = match &parsed {
        VcsEvent::PullRequest(pr) => pull_request(ctx, &event, pr).await,
        VcsEvent::Push(push) => push_event(ctx, &event, push).await,
        VcsEvent::Pushes { pushes } => pushes_event(ctx, &event, pushes).await,
        VcsEvent::Command(c) => super::command::handle(ctx, &event, c).await,
        VcsEvent::Ping { .. } => Ok(Outcome::nothing("ping")),
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let message = e.to_string();
            if event.attempts >= MAX_ATTEMPTS {
                tracing::error!(error = %message, "event {} failed {} times; giving up", event.id, event.attempts);
                let failed = ctx.store.fail_dispatch(lease, &message).await;
                log_write(failed, "giving up", event.id);
            } else {
                let delay = Duration::from_secs(2u64.pow(event.attempts as u32).min(300));
                tracing::warn!(error = %message, retry_in_s = delay.as_secs(), "dispatching event {} failed; will retry", event.id);
                let retried = ctx.store.retry_dispatch(lease, &message, delay).await;
                log_write(retried, "retrying", event.id);
            }
            return;
        }
    };
    let created = match ctx
        .store
        .complete_dispatch(
            lease,
            &outcome.detail,
            &outcome.runs,
            outcome.supersede.as_ref(),
        )
        .await
    {
        Ok(c) => c,
        Err(e @ StoreError::LeaseLost { .. }) => {
            // Another dispatcher took the event over: its runs are the ones kept.
            tracing::warn!("runs of event {} not stored: {e}", event.id);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "storing the runs of event {} failed", event.id);
            let retried = ctx
                .store
                .retry_dispatch(lease, &e.to_string(), Duration::from_secs(5))
                .await;
            log_write(retried, "retrying", event.id);
            return;
        }
    };
    tracing::info!(
        runs = created.len(),
        "event {} dispatched: {}",
        event.id,
        outcome.detail
    );
    if !created.is_empty() {
        ctx.runs_queued.notify();
    }
    // Statuses are posted by the worker that claims each run (pending at claim
    // time), so they cannot arrive out of order; the comment shows the queue.
    if let Some((repo, pr, head)) = outcome.pr {
        let nothing_affected_at = created.is_empty().then_some(head.as_str());
        crate::outbox::refresh_pr_comment(
            &ctx.outbox,
            &event.provider_id,
            &repo,
            pr,
            nothing_affected_at,
        )
        .await;
    }
}

/// Where a change lives and how to diff it.
pub(super) struct Change<'a> {
    pub(super) repo: &'a str,
    /// The branch workspaces must track: the PR's base or the pushed branch.
    pub(super) branch: &'a str,
    pub(super) head_sha: &'a str,
    /// The ref runs fetch the head by.
    pub(super) git_ref: String,
    /// The fork `git_ref` lives in, when it is not in `repo` itself.
    pub(super) head_repo: Option<&'a str>,
    pub(super) source: RunSource,
    pub(super) pr_number: Option<i64>,
    /// Diff against the fork point from this ref (pull requests), or from this
    /// commit (pushes; `None` = every file).
    pub(super) diff_from: DiffFrom,
    /// Plan just this workspace, whatever the diff (`/gantry plan -w NAME`).
    pub(super) only: Option<&'a str>,
}

pub(super) enum DiffFrom {
    ForkOf(String),
    Commit(Option<String>),
    /// A merge (or squash) commit: what it brought to its first parent.
    FirstParent,
}

/// The runs a change causes.
pub(super) struct Found {
    pub(super) runs: Vec<NewRun>,
    /// Files changed.
    pub(super) changed: usize,
    /// The head as a full SHA (some providers send abbreviated ones).
    pub(super) head_sha: String,
}

/// Fetches a pull request's head from the fork it lives in into the base
/// repository's mirror (under gantry's own ref name).
pub(crate) async fn fetch_fork(
    mirrors: &Mirrors,
    provider: &dyn crate::vcs::VcsProvider,
    repo: &str,
    fork: &str,
    git_ref: &str,
    pr: Option<i64>,
) -> Result<crate::git::Mirror, GitError> {
    let url = provider.clone_url(fork);
    let creds = provider
        .git_credentials(fork)
        .await
        .map_err(|e| GitError::Fetch {
            url: url.clone(),
            message: e.to_string(),
        })?;
    mirrors
        .fetch(
            provider.id(),
            repo,
            &url,
            creds,
            &[crate::git::fork_refspec(git_ref, pr)],
        )
        .await
}

/// The runs a change causes, or why it causes none.
pub(super) async fn runs_for(
    ctx: &Deps,
    event: &EventRow,
    change: &Change<'_>,
) -> Result<Result<Found, String>, GitError> {
    let config = ctx.settings.config();
    let candidates: Vec<&Workspace> = config
        .workspaces
        .iter()
        .filter(|w| w.tracks_repo(&event.provider_id, change.repo) && w.branch == change.branch)
        .filter(|w| change.only.is_none_or(|only| w.name == only))
        .collect();
    if candidates.is_empty() {
        if let Some(only) = change.only {
            return Ok(Err(format!(
                "no workspace `{only}` tracks {} on branch {}",
                change.repo, change.branch
            )));
        }
        return Ok(Err(format!(
            "no workspace tracks {} on branch {}",
            change.repo, change.branch
        )));
    }
    let Some(provider) = ctx.settings.providers().get(&event.provider_id) else {
        return Ok(Err(format!(
            "provider {} is no longer configured",
            event.provider_id
        )));
    };
    let url = provider.clone_url(change.repo);
    let creds = provider
        .git_credentials(change.repo)
        .await
        .map_err(|e| GitError::Fetch {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let mut refs = Vec::new();
    if change.head_repo.is_none() {
        refs.push(change.git_ref.clone());
    }
    if let DiffFrom::ForkOf(base) = &change.diff_from {
        refs.push(base.clone());
    }
    let mut mirror = ctx
        .mirrors
        .fetch(&event.provider_id, change.repo, &url, creds, &refs)
        .await?;
    if let Some(fork) = change.head_repo {
        mirror = fetch_fork(
            &ctx.mirrors,
            &*provider,
            change.repo,
            fork,
            &change.git_ref,
            change.pr_number,
        )
        .await?;
    }
    let Ok(head) = mirror.resolve(change.head_sha) else {
        return Ok(Err(format!(
            "commit {} is no longer there; a newer event follows",
            short_sha(change.head_sha)
        )));
    };
    let head_sha = head.to_string();
    let changed = match &change.diff_from {
        DiffFrom::ForkOf(base) => mirror.changed_since_fork(base, &head_sha)?,
        DiffFrom::FirstParent => {
            let parent = mirror.resolve(&format!("{head_sha}^")).ok();
            mirror.changed_between(parent.map(|p| p.to_string()).as_deref(), &head_sha)?
        }
        DiffFrom::Commit(from) => {
            // A new branch, or a force push whose old tip we never saw: every file changed.
            let from = from
                .as_deref()
                .filter(|f| !f.bytes().all(|b| b == b'0') && mirror.has_commit(f));
            mirror.changed_between(from, &head_sha)?
        }
    };
    let tree = mirror.tree_at(&head_sha)?;
    let affected = match change.only {
        // Asked for by name: planned whatever the diff.
        Some(_) => candidates
            .iter()
            .map(|w| (*w, planner::Reason::Requested))
            .collect(),
        None => planner::affected(&candidates, &tree, &changed),
    };
    let runs = affected
        .iter()
        .map(|(ws, reason)| {
            tracing::debug!(workspace.name = %ws.name, ?reason, "workspace {} affected", ws.name);
            // Merges apply (workspaces that apply before merge only re-plan).
            let kind = match (change.source, ws.workflow) {
                (RunSource::Push, Workflow::ApplyOnMerge) => RunKind::Apply,
                _ => RunKind::Plan,
            };
            NewRun {
                workspace: ws.name.clone(),
                event_id: Some(event.id),
                kind,
                source: change.source,
                provider_id: event.provider_id.clone(),
                repo: change.repo.to_string(),
                branch: change.branch.to_string(),
                pr_number: change.pr_number,
                head_sha: head_sha.clone(),
                git_ref: change.git_ref.clone(),
                head_repo: change.head_repo.map(str::to_string),
            }
        })
        .collect();
    Ok(Ok(Found {
        runs,
        changed: changed.len(),
        head_sha,
    }))
}

async fn pull_request(
    ctx: &Deps,
    event: &EventRow,
    pr: &PullRequestEvent,
) -> anyhow::Result<Outcome> {
    // A merge is the base branch's business (from a fork too): apply on merge.
    if pr.action == PrAction::Closed {
        return match (&pr.merge_sha, pr.merged) {
            (Some(sha), true) => merged_pull_request(ctx, event, pr, sha).await,
            _ => Ok(Outcome::nothing(format!(
                "pull request #{} was closed",
                pr.number
            ))),
        };
    }
    if pr.from_fork && !ctx.settings.config().allow_fork_prs {
        return Ok(Outcome::nothing(format!(
            "pull request #{} comes from a fork; set allow_fork_prs: true to plan forks",
            pr.number
        )));
    }
    // A pull request on a policy group's repository: report its impact.
    let groups = policy_groups_of(ctx, &event.provider_id, &pr.repo, &pr.base_ref);
    for g in &groups {
        if let Err(e) =
            crate::policy::impact::analyze(&ctx.policies, &event.provider_id, pr, g).await
        {
            tracing::warn!(policy_group = %g.name, "policy impact analysis of #{} failed: {e:#}", pr.number);
        }
    }
    if pr.action == PrAction::Synchronize {
        // Providers that report every edit as an update (Azure DevOps, Bitbucket).
        if let Some((head, runs)) = ctx
            .store
            .pr_head_runs(&event.provider_id, &pr.repo, pr.number)
            .await?
        {
            if !runs.is_empty() && crate::store::same_commit(&head, &pr.head_sha) {
                return Ok(Outcome::nothing(format!(
                    "pull request #{} at {} is planned already",
                    pr.number,
                    short_sha(&pr.head_sha)
                )));
            }
        }
    }
    if pr.draft {
        return Ok(Outcome::nothing(format!(
            "pull request #{} is a draft; planned when ready for review",
            pr.number
        )));
    }
    let change = Change {
        repo: &pr.repo,
        branch: &pr.base_ref,
        head_sha: &pr.head_sha,
        git_ref: pr.fetch_ref.clone(),
        head_repo: pr.head_repo.as_deref(),
        source: RunSource::PullRequest,
        pr_number: Some(pr.number),
        diff_from: DiffFrom::ForkOf(format!("refs/heads/{}", pr.base_ref)),
        only: None,
    };
    let Found {
        runs,
        changed,
        head_sha,
    } = match runs_for(ctx, event, &change).await? {
        Ok(found) => found,
        Err(why) => return Ok(Outcome::nothing(why)),
    };
    Ok(Outcome {
        detail: format!(
            "pull request #{} at {}: {changed} changed files, {} workspaces affected",
            pr.number,
            short_sha(&head_sha),
            runs.len()
        ),
        runs,
        supersede: Some(Supersede {
            provider_id: event.provider_id.clone(),
            repo: pr.repo.clone(),
            pr_number: pr.number,
            head_sha: head_sha.clone(),
        }),
        pr: Some((pr.repo.clone(), pr.number, head_sha)),
    })
}

/// A merged pull request (providers whose merged event names the merge
/// commit): the same runs as the push of that commit to the base branch.
/// Whichever of the two arrives first starts them; the other finds them
/// there and starts nothing for those workspaces.
async fn merged_pull_request(
    ctx: &Deps,
    event: &EventRow,
    pr: &PullRequestEvent,
    merge_sha: &str,
) -> anyhow::Result<Outcome> {
    // Like the push of the merge.
    reload_policy_groups(ctx, &event.provider_id, &pr.repo, &pr.base_ref).await;
    let change = Change {
        repo: &pr.repo,
        branch: &pr.base_ref,
        head_sha: merge_sha,
        git_ref: format!("refs/heads/{}", pr.base_ref),
        head_repo: None,
        source: RunSource::Push,
        pr_number: None,
        diff_from: DiffFrom::FirstParent,
        only: None,
    };
    let found = match runs_for(ctx, event, &change).await? {
        Ok(found) => found,
        Err(why) => return Ok(Outcome::nothing(why)),
    };
    merge_outcome(
        ctx,
        event,
        &pr.repo,
        found,
        format!("pull request #{} merged into {}", pr.number, pr.base_ref),
    )
    .await
}

/// The runs of a merge to a tracked branch, less the workspaces already run
/// for that commit.
async fn merge_outcome(
    ctx: &Deps,
    event: &EventRow,
    repo: &str,
    found: Found,
    what: String,
) -> anyhow::Result<Outcome> {
    let done = ctx
        .store
        .merge_run_workspaces(&event.provider_id, repo, &found.head_sha)
        .await?;
    let total = found.runs.len();
    let runs: Vec<NewRun> = found
        .runs
        .into_iter()
        .filter(|r| !done.contains(&r.workspace))
        .collect();
    let already = total - runs.len();
    let mut detail = format!(
        "{what} at {}: {} changed files, {total} workspaces affected",
        short_sha(&found.head_sha),
        found.changed,
    );
    if already > 0 {
        detail.push_str(&format!(", {already} already run for this commit"));
    }
    Ok(Outcome {
        detail,
        runs,
        supersede: None,
        pr: None,
    })
}

/// A change to a policy group's branch reloads the group.
async fn reload_policy_groups(ctx: &Deps, provider_id: &str, repo: &str, branch: &str) {
    for g in &policy_groups_of(ctx, provider_id, repo, branch) {
        if let Err(e) = crate::policy::groups::sync(&ctx.policies, g).await {
            tracing::warn!(policy_group = %g.name, "policy group {} not reloaded: {e}", g.name);
        }
    }
}

/// The policy groups kept in `repo` on `branch`.
fn policy_groups_of(
    ctx: &Deps,
    provider_id: &str,
    repo: &str,
    branch: &str,
) -> Vec<crate::config::PolicyGroupConfig> {
    ctx.settings
        .config()
        .policy_groups
        .iter()
        .filter(|g| {
            g.provider == provider_id && g.repo.eq_ignore_ascii_case(repo) && g.branch == branch
        })
        .cloned()
        .collect()
}

/// One push that updated several branches: each branch as its own push.
async fn pushes_event(
    ctx: &Deps,
    event: &EventRow,
    pushes: &[PushEvent],
) -> anyhow::Result<Outcome> {
    let mut all = Outcome::nothing("");
    let mut details = Vec::with_capacity(pushes.len());
    for push in pushes {
        let outcome = push_event(ctx, event, push).await?;
        details.push(outcome.detail);
        all.runs.extend(outcome.runs);
    }
    all.detail = details.join("; ");
    Ok(all)
}

async fn push_event(ctx: &Deps, event: &EventRow, push: &PushEvent) -> anyhow::Result<Outcome> {
    reload_policy_groups(ctx, &event.provider_id, &push.repo, &push.branch).await;
    let change = Change {
        repo: &push.repo,
        branch: &push.branch,
        head_sha: &push.after,
        git_ref: format!("refs/heads/{}", push.branch),
        head_repo: None,
        source: RunSource::Push,
        pr_number: None,
        diff_from: DiffFrom::Commit(Some(push.before.clone())),
        only: None,
    };
    let found = match runs_for(ctx, event, &change).await? {
        Ok(found) => found,
        Err(why) => return Ok(Outcome::nothing(why)),
    };
    merge_outcome(
        ctx,
        event,
        &push.repo,
        found,
        format!("push to {}", push.branch),
    )
    .await
}
