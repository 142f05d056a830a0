//! The reporter outbox: everything gantry tells the VCS about runs (commit
//! statuses, the PR comment, the merge's apply comment, drift issues and drift
//! webhooks) is first a row in the database, then delivered by the sender loop
//! of any replica.
//!
//! Why: a run only writes a row, so worker slots never wait on the VCS API; a
//! report survives a restart, a crash or an outage, and is delivered once the
//! API answers again. Rows of one order key (a commit's status context, a pull
//! request's comment, a workspace's drift issue) go out one at a time and in
//! order, by whichever replica claims them. A new status supersedes the older
//! ones still pending, so an older status is never sent after a newer one.
//! Comments are rendered from the store at delivery time, so one delivery
//! carries the newest state of every run it shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Workspace, DRAIN_IN_FLIGHT};
use crate::report::{self, Section, COMMENT_MARKER};
use crate::settings::Settings;
use crate::store::{short_sha, Lease, NewReport, ReportRow, Store, StoreError};
use crate::store::{Run, RunKind, RunState};
use crate::vcs::{CommitStatus, StatusState, VcsError};

/// One delivery (with the provider client's own retries) may take this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(1);
/// Reports delivered at once, each of a different order key.
const SENDERS: usize = 4;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A report the API keeps refusing (not a transient error) is given up after this many attempts.
const MAX_REFUSED_ATTEMPTS: i64 = 10;
/// Any report is given up once this old: nobody reads a day-old status.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Finished rows are kept this long for inspection.
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The outbox handle: queueing a report stores its row and wakes this
/// process's sender; [`sender`] delivers them.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    /// The public URL (status links), the redactor (drift webhooks) and the
    /// providers reports are delivered through, as the config is now.
    settings: Settings,
    /// Wakes the sender when a report was stored.
    queued: Arc<Notify>,
    /// Whether terraform runs sandboxed: every comment says when it does not.
    sandboxed: bool,
}

impl Outbox {
    pub fn new(store: Store, settings: Settings, sandboxed: bool) -> Outbox {
        Outbox {
            store,
            settings,
            queued: Arc::default(),
            sandboxed,
        }
    }

    /// The store queued reports itself (reaped runs): wake the sender.
    pub fn reports_queued(&self) {
        self.queued.notify_one();
    }

    /// The footer every gantry comment ends with.
    pub fn footer(&self) -> String {
        report::footer(self.sandboxed)
    }

    /// A link to a run for statuses, when `public_url` is configured.
    fn run_url(&self, run_id: i64) -> Option<String> {
        self.settings
            .config()
            .public_url
            .as_ref()
            .map(|u| format!("{u}/api/runs/{run_id}"))
    }
}

/// What one outbox row asks to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Report {
    /// A commit status, exactly as it was when it was enqueued (for a run:
    /// its state then).
    Status {
        #[serde(default)]
        run_id: Option<i64>,
        sha: String,
        context: String,
        state: StatusState,
        description: String,
        target_url: Option<String>,
        pull_request: Option<i64>,
    },
    /// The status of run `run_id` as it is at delivery, then its comment:
    /// queued by the store in the transaction that ended the run (a reaped
    /// run), so its end is reported whatever happens to the process after.
    #[serde(rename = "run_report")]
    RunEnd { run_id: i64 },
    /// The PR's gantry comment, rendered from the runs of its newest head.
    /// `nothing_affected_at`: a newest head that affects no workspace.
    PrComment {
        pr: i64,
        nothing_affected_at: Option<String>,
    },
    /// The merged PR's comment on the applies of merge commit `sha`.
    ApplyComment { sha: String },
    /// A comment rendered when it was enqueued (policy impact): gantry's one
    /// comment of `kind` on the PR, found by `marker`.
    Comment {
        pr: i64,
        comment_kind: String,
        marker: String,
        body: String,
    },
    /// A new comment on the PR: gantry's answer to a `/gantry` command.
    Reply { pr: i64, body: String },
    /// Open, update or close the workspace's drift issue.
    DriftIssue {
        workspace: String,
        title: String,
        text: String,
        drifted: bool,
    },
    /// POST `body` (already redacted) to the workspace's drift webhook, whose
    /// URL (often itself a secret) is read from the config at delivery.
    DriftWebhook { workspace: String, body: String },
}

impl Report {
    fn kind(&self) -> &'static str {
        match self {
            Report::Status { .. } => "status",
            Report::RunEnd { .. } => "run_report",
            Report::PrComment { .. } => "pr_comment",
            Report::ApplyComment { .. } => "apply_comment",
            Report::Comment { .. } => "comment",
            Report::Reply { .. } => "reply",
            Report::DriftIssue { .. } => "drift_issue",
            Report::DriftWebhook { .. } => "drift_webhook",
        }
    }
}

/// Stores `report` and wakes the sender. A failure is logged: a report is not
/// part of the run.
async fn enqueue(outbox: &Outbox, provider_id: &str, repo: &str, report: Report) {
    let (order_key, coalesce_key) = match &report {
        Report::Status { sha, context, .. } => {
            // The store builds the same key for run reports (store::outbox::run_status_key).
            let k = format!("status|{provider_id}|{repo}|{sha}|{context}");
            (k.clone(), Some(k))
        }
        Report::RunEnd { .. } => {
            tracing::error!("run reports are queued by the store");
            return;
        }
        Report::PrComment { pr, .. } => {
            let k = format!("pr|{provider_id}|{repo}|{pr}");
            (k.clone(), Some(format!("{k}|plan")))
        }
        Report::ApplyComment { sha } => {
            let k = format!("apply|{provider_id}|{repo}|{sha}");
            (k.clone(), Some(k))
        }
        Report::Comment {
            pr, comment_kind, ..
        } => {
            let k = format!("pr|{provider_id}|{repo}|{pr}");
            (k.clone(), Some(format!("{k}|{comment_kind}")))
        }
        // Every answer is its own comment, in order with the PR's others.
        Report::Reply { pr, .. } => (format!("pr|{provider_id}|{repo}|{pr}"), None),
        Report::DriftIssue { workspace, .. } => {
            let k = format!("drift_issue|{workspace}");
            (k.clone(), Some(k))
        }
        // Every detection is its own notification.
        Report::DriftWebhook { workspace, .. } => (format!("drift_webhook|{workspace}"), None),
    };
    let payload = match serde_json::to_string(&report) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "encoding a {} report failed", report.kind());
            return;
        }
    };
    let row = NewReport {
        kind: report.kind(),
        order_key,
        coalesce_key,
        provider_id: provider_id.to_string(),
        repo: repo.to_string(),
        payload,
        skip_if_sent: matches!(report, Report::Status { .. }),
    };
    match outbox.store.enqueue_report(&row).await {
        Ok(Some(_)) => outbox.queued.notify_one(),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "storing a {} report for {repo} failed", report.kind())
        }
    }
}

/// Run `run_id`'s state changed: queue its commit status and its comment.
pub async fn run_changed(outbox: &Outbox, run_id: i64) {
    match outbox.store.run(run_id).await {
        Ok(Some(run)) => report_run(outbox, &run).await,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(run.id = run_id, error = %e, "reading run {run_id} for its report failed")
        }
    }
}

/// Queues the reports that show `run` as it is: its commit status (unless
/// unchanged; drift checks report through their drift report), and its pull
/// request's comment, or for a finished merge apply the merged PR's comment.
pub async fn report_run(outbox: &Outbox, run: &Run) {
    if run.kind != RunKind::Drift {
        let status = report::status_for(run, outbox.run_url(run.id));
        let report = Report::Status {
            run_id: Some(run.id),
            sha: run.head_sha.clone(),
            context: status.context,
            state: status.state,
            description: status.description,
            target_url: status.target_url,
            pull_request: status.pull_request,
        };
        enqueue(outbox, &run.provider_id, &run.repo, report).await;
    }
    report_comments(outbox, run).await;
}

/// Queues a refresh of the comment that shows `run`: its pull request's, or
/// for a finished merge apply the merged PR's.
async fn report_comments(outbox: &Outbox, run: &Run) {
    if let Some(pr) = run.pr_number {
        refresh_pr_comment(outbox, &run.provider_id, &run.repo, pr, None).await;
    } else if run.kind == RunKind::Apply && run.state.is_terminal() {
        let report = Report::ApplyComment {
            sha: run.head_sha.clone(),
        };
        enqueue(outbox, &run.provider_id, &run.repo, report).await;
    }
}

/// Queues a commit status no run owns (e.g. policy impact).
pub async fn post_status(
    outbox: &Outbox,
    provider_id: &str,
    repo: &str,
    sha: &str,
    status: CommitStatus,
) {
    let report = Report::Status {
        run_id: None,
        sha: sha.to_string(),
        context: status.context,
        state: status.state,
        description: status.description,
        target_url: status.target_url,
        pull_request: status.pull_request,
    };
    enqueue(outbox, provider_id, repo, report).await;
}

/// Queues `body` as gantry's one comment of `kind` on a pull request, found
/// again by `marker` (which `body` carries).
pub async fn put_comment(
    outbox: &Outbox,
    provider_id: &str,
    repo: &str,
    pr: i64,
    kind: &str,
    marker: &str,
    body: String,
) {
    let report = Report::Comment {
        pr,
        comment_kind: kind.to_string(),
        marker: marker.to_string(),
        body,
    };
    enqueue(outbox, provider_id, repo, report).await;
}

/// Queues `body` as a new comment on pull request `pr` (a command's answer).
pub async fn reply(outbox: &Outbox, provider_id: &str, repo: &str, pr: i64, body: String) {
    enqueue(outbox, provider_id, repo, Report::Reply { pr, body }).await;
}

/// Queues a refresh of the PR's one gantry comment. `nothing_affected_at` is
/// a newest head that affects no workspace: an existing comment says so, and
/// a PR without a comment gets none.
pub async fn refresh_pr_comment(
    outbox: &Outbox,
    provider_id: &str,
    repo: &str,
    pr: i64,
    nothing_affected_at: Option<&str>,
) {
    let report = Report::PrComment {
        pr,
        nothing_affected_at: nothing_affected_at.map(str::to_string),
    };
    enqueue(outbox, provider_id, repo, report).await;
}

/// Queues a drift check's notification: the workspace's drift issue is
/// opened, updated or closed; or the report is POSTed to the webhook (on drift
/// only).
pub async fn notify_drift(
    outbox: &Outbox,
    ws: &Workspace,
    run: &Run,
    report: &crate::drift::DriftReport,
    notify: &crate::config::drift::DriftNotify,
) {
    let text = drift_text(ws, run, report);
    let out = match notify {
        crate::config::drift::DriftNotify::Issue => Report::DriftIssue {
            workspace: ws.name.clone(),
            title: format!("Drift detected in workspace {}", ws.name),
            text,
            drifted: report.drifted,
        },
        crate::config::drift::DriftNotify::Webhook(_) => {
            if !report.drifted {
                return;
            }
            let body = serde_json::json!({
                "text": text,
                "workspace": ws.name,
                "environment": ws.environment,
                "drifted": true,
                "run_id": run.id,
                "commit_sha": run.head_sha,
                "resources": report.resources,
            });
            // The way out goes through the redactor, like every report.
            Report::DriftWebhook {
                workspace: ws.name.clone(),
                body: outbox.settings.redactor().redact(&body.to_string()),
            }
        }
    };
    enqueue(outbox, &ws.provider, &ws.repo, out).await;
}

/// The text of a drift notification.
fn drift_text(ws: &Workspace, run: &Run, report: &crate::drift::DriftReport) -> String {
    if !report.drifted {
        return format!(
            "No drift in workspace `{}` any more (run {}, commit {}).",
            ws.name,
            run.id,
            short_sha(&run.head_sha)
        );
    }
    let mut text = format!(
        "Drift detected in workspace `{}` ({} resources differ; run {}, commit {} of {}):\n",
        ws.name,
        report.resources.len(),
        run.id,
        short_sha(&run.head_sha),
        ws.branch
    );
    for r in report.resources.iter().take(50) {
        text.push_str(&format!(
            "- `{}` ({}): {}\n",
            r.address,
            r.actions.join(", "),
            r.changed_attributes.join(", ")
        ));
    }
    text
}

/// Delivers reports until the replica drains, up to `SENDERS` (4) order keys
/// at once. Then deliveries in flight get [`DRAIN_IN_FLIGHT`], and what is
/// left is released for another replica or the next start: a shutdown never
/// waits on VCS retries.
pub async fn sender(outbox: Outbox, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(SENDERS));
    let mut running = JoinSet::new();
    // This process's claims in flight, by report id: what a drain releases.
    let in_flight: Arc<std::sync::Mutex<HashMap<i64, Lease>>> = Arc::default();
    let mut last_cleanup = tokio::time::Instant::now();
    loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (node, lease) = {
            let config = outbox.settings.config();
            (config.node_id.clone(), config.queue.lease)
        };
        match outbox.store.claim_report(&node, lease).await {
            Ok(Some(row)) => {
                let (outbox, in_flight) = (outbox.clone(), in_flight.clone());
                in_flight
                    .lock()
                    .expect("in-flight reports")
                    .insert(row.id, row.lease.clone());
                running.spawn(async move {
                    let id = row.id;
                    deliver_row(&outbox, row, lease).await;
                    in_flight.lock().expect("in-flight reports").remove(&id);
                    drop(permit);
                });
                continue;
            }
            Ok(None) => drop(permit),
            Err(e) => {
                drop(permit);
                tracing::error!(error = %e, "claiming a report failed");
            }
        }
        if last_cleanup.elapsed() > Duration::from_secs(3600) {
            last_cleanup = tokio::time::Instant::now();
            let before = crate::store::now_ms() - KEEP_FINISHED.as_millis() as i64;
            if let Err(e) = outbox.store.delete_finished_reports(before).await {
                tracing::warn!(error = %e, "deleting old reports failed");
            }
        }
        tokio::select! {
            _ = outbox.queued.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Draining: deliveries in flight get a moment, then are abandoned (their
    // rows go back to pending for another replica or the next start).
    let finish = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_IN_FLIGHT, finish).await.is_err() {
        tracing::warn!(
            reports = running.len(),
            "abandoning reports still in flight"
        );
        running.shutdown().await;
    }
    let left: Vec<Lease> = in_flight
        .lock()
        .expect("in-flight reports")
        .values()
        .cloned()
        .collect();
    match outbox.store.release_reports(&left).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} reports in flight left for the next sender"),
        Err(e) => tracing::warn!(error = %e, "releasing reports in flight failed"),
    }
}

/// Delivers one claimed row and records how it went. The claim's lease (the
/// queue's) is renewed while the delivery lasts, so the report of a sender
/// that died is taken over within one lease, not after the delivery timeout.
async fn deliver_row(outbox: &Outbox, row: ReportRow, lease: Duration) {
    let delivery = async {
        match serde_json::from_str::<Report>(&row.payload) {
            Ok(report) => {
                match tokio::time::timeout(DELIVERY_TIMEOUT, deliver(outbox, &row, &report)).await {
                    Ok(r) => r,
                    Err(_) => Err(DeliveryError::TimedOut),
                }
            }
            Err(e) => Err(DeliveryError::Gone(format!("unreadable report: {e}"))),
        }
    };
    let renew = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            match outbox.store.renew_report(&row.lease, lease).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    report.id = row.id,
                    "report {} was taken back from this sender",
                    row.id
                ),
                Err(e) => {
                    tracing::warn!(report.id = row.id, error = %e, "renewing the lease of report {} failed", row.id)
                }
            }
        }
    };
    let result = tokio::select! {
        r = delivery => r,
        never = renew => never,
    };
    let recorded = match &result {
        Ok(()) => {
            tracing::debug!(
                report.id = row.id,
                "{} report {} delivered",
                row.kind,
                row.id
            );
            if row.attempts > 1 {
                // The API answers again: what waited out a backoff goes now.
                if let Err(e) = outbox.store.reports_due_now(&row.provider_id).await {
                    tracing::warn!(error = %e, "rescheduling reports failed");
                }
                outbox.queued.notify_one();
            }
            outbox.store.finish_report(&row.lease, true, None).await
        }
        Err(e) => {
            let age = crate::store::now_ms() - row.created_at;
            let give_up = matches!(e, DeliveryError::Gone(_))
                || (!e.is_transient() && row.attempts >= MAX_REFUSED_ATTEMPTS)
                || age > GIVE_UP_AFTER.as_millis() as i64;
            let message = e.to_string();
            if give_up {
                tracing::error!(report.id = row.id, error = %message, "{} report {} for {} given up after {} attempts", row.kind, row.id, row.repo, row.attempts);
                outbox
                    .store
                    .finish_report(&row.lease, false, Some(&message))
                    .await
            } else {
                let delay = backoff(row.attempts);
                tracing::warn!(report.id = row.id, error = %message, retry_in_ms = delay.as_millis() as u64, "{} report {} for {} failed; retrying", row.kind, row.id, row.repo);
                outbox.store.retry_report(&row.lease, &message, delay).await
            }
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            report.id = row.id,
            "report {} was taken back from this sender before it finished",
            row.id
        ),
        Err(e) => {
            tracing::error!(report.id = row.id, error = %e, "recording report {} failed", row.id)
        }
    }
}

/// Exponential from [`FIRST_BACKOFF`], capped at [`MAX_BACKOFF`].
fn backoff(attempts: i64) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 16) as u32;
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF)
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error(transparent)]
    Vcs(#[from] VcsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("webhook: {message}")]
    Webhook { message: String, transient: bool },
    #[error("delivery timed out after {}s", DELIVERY_TIMEOUT.as_secs())]
    TimedOut,
    /// Nothing to deliver to any more (e.g. the provider was removed from the config).
    #[error("{0}")]
    Gone(String),
}

impl DeliveryError {
    fn is_transient(&self) -> bool {
        match self {
            // Unreachable APIs come back as `Server` errors too.
            DeliveryError::Vcs(e) => e.is_transient(),
            DeliveryError::Webhook { transient, .. } => *transient,
            DeliveryError::Store(_) | DeliveryError::TimedOut => true,
            DeliveryError::Gone(_) => false,
        }
    }
}

async fn deliver(outbox: &Outbox, row: &ReportRow, report: &Report) -> Result<(), DeliveryError> {
    let provider = outbox
        .settings
        .providers()
        .get(&row.provider_id)
        .ok_or_else(|| {
            DeliveryError::Gone(format!(
                "provider {} is no longer configured",
                row.provider_id
            ))
        })?;
    let repo = row.repo.as_str();
    match report {
        Report::Status {
            sha,
            context,
            state,
            description,
            target_url,
            pull_request,
            ..
        } => {
            let status = CommitStatus {
                state: *state,
                context: context.clone(),
                description: description.clone(),
                target_url: target_url.clone(),
                pull_request: *pull_request,
            };
            provider.set_status(repo, sha, &status).await?;
        }
        Report::RunEnd { run_id } => {
            let Some(run) = outbox.store.run(*run_id).await? else {
                return Ok(());
            };
            if run.kind != RunKind::Drift {
                let status = report::status_for(&run, outbox.run_url(run.id));
                provider.set_status(repo, &run.head_sha, &status).await?;
            }
            report_comments(outbox, &run).await;
        }
        Report::PrComment {
            pr,
            nothing_affected_at,
        } => {
            upsert_comment(
                outbox,
                &*provider,
                &row.provider_id,
                repo,
                *pr,
                "plan",
                nothing_affected_at.is_some(),
                || async {
                    match nothing_affected_at {
                        Some(sha) => Ok(Some((sha.to_string(), Vec::new()))),
                        None => Ok(outbox
                            .store
                            .pr_head_runs(&row.provider_id, repo, *pr)
                            .await?),
                    }
                },
            )
            .await?;
        }
        Report::ApplyComment { sha } => {
            // A merge: the merged pull request hears how the apply went.
            let Some(pr) = provider.pull_request_for_commit(repo, sha).await? else {
                return Ok(());
            };
            let kind = format!("apply:{sha}");
            upsert_comment(
                outbox,
                &*provider,
                &row.provider_id,
                repo,
                pr,
                &kind,
                false,
                || async {
                    let runs = outbox
                        .store
                        .commit_runs(&row.provider_id, repo, sha, RunKind::Apply)
                        .await?;
                    Ok(Some((sha.clone(), runs)))
                },
            )
            .await?;
        }
        Report::Comment {
            pr,
            comment_kind,
            marker,
            body,
        } => {
            let slot = outbox
                .store
                .lock_pr_comment(&row.provider_id, repo, *pr, comment_kind)
                .await?;
            let id = write_comment(
                &*provider,
                repo,
                *pr,
                slot.comment_id.clone(),
                marker,
                body,
                false,
            )
            .await?;
            slot.finish(id.as_deref()).await?;
        }
        Report::Reply { pr, body } => {
            provider.create_comment(repo, *pr, body).await?;
        }
        Report::DriftIssue {
            workspace,
            title,
            text,
            drifted,
        } => {
            let open = outbox.store.drift_issue(workspace).await?;
            match (drifted, open) {
                (true, Some((repo, number))) => {
                    provider.update_issue(&repo, number, text, false).await?
                }
                (true, None) => {
                    let number = provider.create_issue(repo, title, text).await?;
                    outbox
                        .store
                        .set_drift_issue(workspace, repo, number)
                        .await?;
                }
                (false, Some((repo, number))) => {
                    provider.update_issue(&repo, number, text, true).await?;
                    outbox.store.clear_drift_issue(workspace).await?;
                }
                (false, None) => {}
            }
        }
        Report::DriftWebhook { workspace, body } => {
            let config = outbox.settings.config();
            let url = match config
                .workspace(workspace)
                .and_then(|w| w.drift_notify.as_ref())
            {
                Some(crate::config::drift::DriftNotify::Webhook(url)) => url.clone(),
                _ => {
                    return Err(DeliveryError::Gone(format!(
                        "workspace {workspace} no longer has a drift webhook"
                    )))
                }
            };
            post_webhook(&url, body).await?;
        }
    }
    Ok(())
}

async fn post_webhook(url: &str, body: &str) -> Result<(), DeliveryError> {
    let response = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(10))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| DeliveryError::Webhook {
            // Never the URL: it may be a secret.
            message: e.without_url().to_string(),
            transient: true,
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    Err(DeliveryError::Webhook {
        message: format!("answered HTTP {status}"),
        transient: status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS,
    })
}

/// Renders (once the comment slot is held, so the newest state lands last) and
/// creates or edits one gantry comment of `kind` on a pull request.
#[allow(clippy::too_many_arguments)]
async fn upsert_comment<F, Fut>(
    outbox: &Outbox,
    provider: &dyn crate::vcs::VcsProvider,
    provider_id: &str,
    repo: &str,
    pr: i64,
    kind: &str,
    only_if_exists: bool,
    runs: F,
) -> Result<(), DeliveryError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Option<(String, Vec<Run>)>, StoreError>>,
{
    let slot = outbox
        .store
        .lock_pr_comment(provider_id, repo, pr, kind)
        .await?;
    let Some((head, runs)) = runs().await? else {
        return Ok(());
    };
    let mut sections = Vec::with_capacity(runs.len());
    for run in &runs {
        let output = match run.state {
            RunState::Applied | RunState::Applying => outbox.store.apply_text(run.id).await?,
            RunState::Errored if run.failure == Some(crate::store::FailureKind::Apply) => {
                outbox.store.apply_text(run.id).await?
            }
            RunState::Planned | RunState::NeedsConfirmation | RunState::Errored => {
                outbox.store.plan_text(run.id).await?
            }
            _ => None,
        };
        let lock = outbox.store.workspace_lock(&run.workspace).await?;
        sections.push(Section { run, output, lock });
    }
    let marker = if kind == "plan" {
        COMMENT_MARKER.to_string()
    } else {
        report::apply_marker(&head)
    };
    let footer = outbox.footer();
    let limit = provider.comment_limit().saturating_sub(footer.len());
    let body = report::render_comment(&head, &sections, limit, &marker) + &footer;
    let id = write_comment(
        provider,
        repo,
        pr,
        slot.comment_id.clone(),
        &marker,
        &body,
        only_if_exists,
    )
    .await?;
    slot.finish(id.as_deref()).await?;
    Ok(())
}

/// Edits gantry's comment (`known`, or the one carrying `marker`) to `body`,
/// or creates it; returns its id.
async fn write_comment(
    provider: &dyn crate::vcs::VcsProvider,
    repo: &str,
    pr: i64,
    known: Option<String>,
    marker: &str,
    body: &str,
    only_if_exists: bool,
) -> Result<Option<String>, VcsError> {
    let existing = match known {
        Some(id) => Some(id),
        None => provider.find_comment(repo, pr, marker).await?,
    };
    Ok(match existing {
        Some(id) => match provider.update_comment(repo, pr, &id, body).await {
            Ok(()) => Some(id),
            // Someone deleted it: start a new one.
            Err(VcsError::NotFound(_)) => Some(provider.create_comment(repo, pr, body).await?),
            Err(e) => return Err(e),
        },
        None if only_if_exists => None,
        None => Some(provider.create_comment(repo, pr, body).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn reports_round_trip_as_json() {
        let r = Report::Status {
            run_id: Some(3),
            sha: "abc".into(),
            context: "gantry/dns".into(),
            state: StatusState::Error,
            description: "gantry error: interrupted during apply".into(),
            target_url: None,
            pull_request: Some(7),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""kind":"status""#), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), r);
        // As the store writes a reaped run's report.
        let end = serde_json::json!({"kind": "run_report", "run_id": 9}).to_string();
        assert_eq!(
            serde_json::from_str::<Report>(&end).unwrap(),
            Report::RunEnd { run_id: 9 }
        );
    }
}
