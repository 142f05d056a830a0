//! Queue semantics on both engines: SQLite always, PostgreSQL when
//! `GANTRY_TEST_POSTGRES_URL` is set.

use std::time::Duration;

use secrecy::SecretString;

use super::*;

pub(super) async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let s = Store::connect(&SecretString::from(url)).await.unwrap();
    s.migrate().await.unwrap();
    out.push((s, dir));
    if let Ok(admin) = std::env::var("GANTRY_TEST_POSTGRES_URL") {
        if !admin.is_empty() {
            use sqlx::Connection;
            let name = format!("gantry_unit_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            let base = admin.split('?').next().unwrap();
            let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
            let s = Store::connect(&SecretString::from(url)).await.unwrap();
            s.migrate().await.unwrap();
            out.push((s, tempfile::tempdir().unwrap()));
        }
    }
    out
}

pub(super) fn new_run(ws: &str, pr: Option<i64>, sha: &str, event_id: Option<i64>) -> NewRun {
    NewRun {
        workspace: ws.into(),
        event_id,
        kind: RunKind::Plan,
        source: if pr.is_some() {
            RunSource::PullRequest
        } else {
            RunSource::Push
        },
        provider_id: "github".into(),
        repo: "acme/infra".into(),
        branch: "main".into(),
        pr_number: pr,
        head_sha: sha.into(),
        git_ref: "refs/pull/7/head".into(),
        head_repo: None,
    }
}

fn event(delivery: &str) -> NewEvent {
    NewEvent {
        provider_id: "github".into(),
        delivery_id: delivery.into(),
        event_type: "pull_request".into(),
        action: Some("opened".into()),
        repo: Some("acme/infra".into()),
        body: "{}".into(),
        state: "pending",
        detail: None,
    }
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn deliveries_are_deduplicated() {
    for (s, _d) in stores().await {
        let id = s.insert_event(&event("a")).await.unwrap();
        assert!(id.is_some());
        assert_eq!(s.insert_event(&event("a")).await.unwrap(), None);
        assert_eq!(s.count_events().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn one_active_run_per_workspace_in_arrival_order() {
    for (s, _d) in stores().await {
        let runs = s
            .insert_runs(&[
                new_run("a", None, "1", None),
                new_run("a", None, "2", None),
                new_run("b", None, "3", None),
            ])
            .await
            .unwrap();
        let (first, lease) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        assert_eq!(first.id, runs[0].id);
        assert_eq!(first.state, RunState::Fetching);
        // a is busy: the next claim skips a's second run and takes b's.
        let (second, _) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        assert_eq!(second.id, runs[2].id);
        assert!(s.claim_run("n1", LEASE).await.unwrap().is_none());
        assert!(s
            .transition(&lease, &[RunState::Fetching], RunState::Planning, None)
            .await
            .unwrap());
        s.record_plan(
            first.id,
            PlanSummary {
                add: 1,
                change: 0,
                destroy: 0,
            },
            Some(0),
            Some("0123abcd"),
        )
        .await
        .unwrap();
        assert!(s
            .transition(&lease, &[RunState::Planning], RunState::Planned, None)
            .await
            .unwrap());
        let (third, _) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        assert_eq!(third.id, runs[1].id);
        let states: Vec<String> = s
            .transitions(first.id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(states, ["queued", "fetching", "planning", "planned"]);
        // A finished run cannot move again: its worker's lease was released.
        assert!(matches!(
            s.transition(
                &lease,
                &[RunState::Fetching, RunState::Planning],
                RunState::Errored,
                Some("x")
            )
            .await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert!(!s
            .transition_unclaimed(
                first.id,
                &[RunState::Fetching, RunState::Planning],
                RunState::Errored,
                Some("x")
            )
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn a_newer_commit_supersedes_queued_runs_of_the_pull_request() {
    for (s, _d) in stores().await {
        let e1 = s.insert_event(&event("e1")).await.unwrap().unwrap();
        let e2 = s.insert_event(&event("e2")).await.unwrap().unwrap();
        let (_, l1) = s.claim_event("n", LEASE).await.unwrap().unwrap();
        let old = s
            .complete_dispatch(
                &l1,
                "d",
                &[
                    new_run("a", Some(7), "old", Some(e1)),
                    new_run("b", Some(7), "old", Some(e1)),
                ],
                None,
            )
            .await
            .unwrap();
        // b's run is already running: it is not superseded.
        let (running, _) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        assert_eq!(running.id, old[0].id);
        let sup = Supersede {
            provider_id: "github".into(),
            repo: "acme/infra".into(),
            pr_number: 7,
            head_sha: "new".into(),
        };
        let (_, l2) = s.claim_event("n", LEASE).await.unwrap().unwrap();
        assert_eq!(l2.id, e2);
        let new = s
            .complete_dispatch(
                &l2,
                "d",
                &[new_run("a", Some(7), "new", Some(e2))],
                Some(&sup),
            )
            .await
            .unwrap();
        assert_eq!(
            s.run(old[1].id).await.unwrap().unwrap().state,
            RunState::Superseded
        );
        assert_eq!(
            s.run(old[0].id).await.unwrap().unwrap().state,
            RunState::Fetching
        );
        assert_eq!(
            s.run(new[0].id).await.unwrap().unwrap().state,
            RunState::Queued
        );
        let (head, runs) = s
            .pr_head_runs("github", "acme/infra", 7)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head, "new");
        assert_eq!(runs.len(), 1);
    }
}

/// A lease short enough to run out within a test.
const SHORT: Duration = Duration::from_millis(50);

async fn let_leases_expire() {
    tokio::time::sleep(SHORT * 3).await;
}

#[tokio::test]
async fn interrupted_plans_are_marked_and_requeued_once() {
    for (s, _d) in stores().await {
        let runs = s
            .insert_runs(&[new_run("a", None, "1", None)])
            .await
            .unwrap();
        let (claimed, _) = s.claim_run("dead-node", SHORT).await.unwrap().unwrap();
        assert_eq!(claimed.id, runs[0].id);
        let_leases_expire().await;
        let reaped = s.reap_runs().await.unwrap();
        assert_eq!(reaped.len(), 1);
        let old = s.run(claimed.id).await.unwrap().unwrap();
        assert_eq!(
            (old.state, old.state_reason.as_deref()),
            (RunState::Errored, Some("interrupted"))
        );
        assert_eq!(old.failure, Some(FailureKind::Interrupted));
        let (retry, _) = s.claim_run("n2", SHORT).await.unwrap().unwrap();
        assert_eq!((retry.attempt, retry.retry_of), (2, Some(claimed.id)));
        // The retry dies too: not queued a third time.
        let_leases_expire().await;
        assert_eq!(s.reap_runs().await.unwrap().len(), 1);
        assert!(s.claim_run("n3", LEASE).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_run_s_end_is_stored_with_its_failure_kind_and_its_report() {
    for (s, _d) in stores().await {
        s.insert_runs(&[new_run("a", Some(7), "1", None)])
            .await
            .unwrap();
        let (run, lease) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        let queued = s.undelivered_reports().await.unwrap();
        let failed = Some(FailureKind::Terraform);
        let reason = Some("terraform plan failed: x");
        let active = [RunState::Fetching, RunState::Planning];
        assert!(s
            .transition_and_report(&lease, &active, RunState::Errored, failed, reason)
            .await
            .unwrap());
        let ended = s.run(run.id).await.unwrap().unwrap();
        assert_eq!((ended.state, ended.failure), (RunState::Errored, failed));
        // The end's report was queued with it.
        assert_eq!(s.undelivered_reports().await.unwrap(), queued + 1);
        // A stale holder records nothing, and queues nothing.
        assert!(matches!(
            s.transition_and_report(&lease, &active, RunState::Canceled, None, None)
                .await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert_eq!(s.undelivered_reports().await.unwrap(), queued + 1);
        // A cancel request on a waiting run records its kind too.
        let waiting = s
            .insert_runs(&[new_run("b", None, "2", None)])
            .await
            .unwrap();
        assert!(s.request_cancel(waiting[0].id, "api").await.unwrap());
        let canceled = s.run(waiting[0].id).await.unwrap().unwrap();
        assert_eq!(canceled.failure, Some(FailureKind::Canceled));
    }
}

#[tokio::test]
async fn a_live_lease_is_never_reaped_whatever_the_node_id() {
    for (s, _d) in stores().await {
        s.insert_runs(&[new_run("a", None, "1", None)])
            .await
            .unwrap();
        let (run, lease) = s.claim_run("same-node", LEASE).await.unwrap().unwrap();
        // A second process with the same node id starts and reaps: nothing is taken.
        assert!(s.reap_runs().await.unwrap().is_empty());
        assert_eq!(s.heartbeat(&lease, LEASE).await.unwrap(), Some(false));
        assert_eq!(
            s.run(run.id).await.unwrap().unwrap().state,
            RunState::Fetching
        );
        // Its holder stops (a shutdown) and ends the lease: reaped at once.
        assert!(s.expire_lease(&lease).await.unwrap());
        assert_eq!(s.reap_runs().await.unwrap().len(), 1);
        assert!(!s.expire_lease(&lease).await.unwrap());
    }
}

#[tokio::test]
async fn a_stale_run_holder_changes_nothing() {
    for (s, _d) in stores().await {
        s.insert_runs(&[new_run("a", None, "1", None)])
            .await
            .unwrap();
        let (run, stale) = s.claim_run("a", SHORT).await.unwrap().unwrap();
        let_leases_expire().await;
        assert_eq!(s.reap_runs().await.unwrap().len(), 1);
        // The retry is claimed by another worker.
        let (retry, fresh) = s.claim_run("b", LEASE).await.unwrap().unwrap();
        assert_eq!(retry.retry_of, Some(run.id));
        // The first holder wakes up: no heartbeat, no transition.
        assert_eq!(s.heartbeat(&stale, LEASE).await.unwrap(), None);
        assert!(matches!(
            s.transition(&stale, &[RunState::Fetching], RunState::Planning, None)
                .await,
            Err(StoreError::LeaseLost { .. })
        ));
        let old = s.run(run.id).await.unwrap().unwrap();
        assert_eq!(
            (old.state, old.state_reason.as_deref()),
            (RunState::Errored, Some("interrupted"))
        );
        // A token of one run never moves another.
        let wrong = Lease {
            id: retry.id,
            token: stale.token.clone(),
        };
        assert!(s
            .transition(&wrong, &[RunState::Fetching], RunState::Planning, None)
            .await
            .is_err());
        assert!(s
            .transition(&fresh, &[RunState::Fetching], RunState::Planning, None)
            .await
            .unwrap());
        // The API cannot move a run a worker holds.
        assert!(!s
            .transition_unclaimed(retry.id, &[RunState::Planning], RunState::Canceled, None)
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn events_of_one_repository_dispatch_one_at_a_time() {
    for (s, _d) in stores().await {
        let a = s.insert_event(&event("a")).await.unwrap().unwrap();
        let b = s.insert_event(&event("b")).await.unwrap().unwrap();
        let (first, lease) = s.claim_event("n", LEASE).await.unwrap().unwrap();
        assert_eq!(first.id, a);
        assert!(
            s.claim_event("n", LEASE).await.unwrap().is_none(),
            "b waits for a"
        );
        s.complete_dispatch(&lease, "done", &[], None)
            .await
            .unwrap();
        let (second, _) = s.claim_event("n", SHORT).await.unwrap().unwrap();
        assert_eq!(second.id, b);
        // A live claim is not reaped; a dispatcher that died gives its event back.
        assert_eq!(s.reap_events().await.unwrap(), 0);
        let_leases_expire().await;
        assert_eq!(s.reap_events().await.unwrap(), 1);
        assert_eq!(s.claim_event("m", LEASE).await.unwrap().unwrap().0.id, b);
    }
}

#[tokio::test]
async fn a_stale_dispatch_completion_changes_nothing() {
    for (s, _d) in stores().await {
        let id = s.insert_event(&event("slow")).await.unwrap().unwrap();
        let (_, stale) = s.claim_event("a", SHORT).await.unwrap().unwrap();
        // Renewed while it runs, the claim is kept past its first expiry.
        assert!(s.renew_event(&stale, LEASE).await.unwrap());
        let_leases_expire().await;
        assert_eq!(s.reap_events().await.unwrap(), 0);
        // Not renewed any more: it expires and another dispatcher takes it.
        assert!(s.renew_event(&stale, SHORT).await.unwrap());
        let_leases_expire().await;
        assert_eq!(s.reap_events().await.unwrap(), 1);
        let (again, fresh) = s.claim_event("b", LEASE).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (id, 2));
        // The first dispatcher finishes late: no runs, no state change.
        let late = s
            .complete_dispatch(&stale, "late", &[new_run("a", None, "1", Some(id))], None)
            .await;
        assert!(
            matches!(late, Err(StoreError::LeaseLost { .. })),
            "{late:?}"
        );
        assert!(s.retry_dispatch(&stale, "x", SHORT).await.is_err());
        assert!(s.fail_dispatch(&stale, "x").await.is_err());
        assert!(!s.renew_event(&stale, LEASE).await.unwrap());
        assert_eq!(s.count_runs().await.unwrap(), 0);
        assert_eq!(s.event(id).await.unwrap().unwrap().state, "dispatching");
        // The holder's completion counts.
        let runs = s
            .complete_dispatch(&fresh, "done", &[new_run("a", None, "1", Some(id))], None)
            .await
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(s.event(id).await.unwrap().unwrap().state, "dispatched");
    }
}

#[tokio::test]
async fn the_pr_comment_slot_is_held_by_one_process_at_a_time_on_postgres() {
    for (s, _d) in stores().await {
        let first = s
            .lock_pr_comment("github", "acme/infra", 7, "plan")
            .await
            .unwrap();
        assert_eq!(first.comment_id, None);
        if s.backend() == Backend::Postgres {
            // A second replica waits until the first has made the comment, then sees it.
            let other = s.clone();
            let waiter = tokio::spawn(async move {
                other
                    .lock_pr_comment("github", "acme/infra", 7, "plan")
                    .await
                    .unwrap()
                    .comment_id
            });
            // Give the waiter time to reach the row lock; were it not blocked it
            // would read the empty placeholder and return None.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!waiter.is_finished(), "the second locker must wait");
            first.finish(Some("1001")).await.unwrap();
            assert_eq!(waiter.await.unwrap().as_deref(), Some("1001"));
        } else {
            first.finish(Some("1001")).await.unwrap();
            let again = s
                .lock_pr_comment("github", "acme/infra", 7, "plan")
                .await
                .unwrap();
            assert_eq!(again.comment_id.as_deref(), Some("1001"));
        }
    }
}

#[tokio::test]
async fn a_drift_tick_is_handled_once_and_skipped_when_the_workspace_is_busy() {
    for (s, _d) in stores().await {
        let mut drift = new_run("dns", None, "abc", None);
        drift.kind = RunKind::Drift;
        let first = s.claim_drift_tick(1_000, &drift).await.unwrap();
        assert!(matches!(first, TickOutcome::Queued(_)));
        assert!(matches!(
            s.claim_drift_tick(1_000, &drift).await.unwrap(),
            TickOutcome::AlreadyHandled
        ));
        // The drift run of the first tick is still queued: the next tick is skipped.
        assert!(matches!(
            s.claim_drift_tick(2_000, &drift).await.unwrap(),
            TickOutcome::Skipped
        ));
        assert_eq!(s.last_drift_tick("dns").await.unwrap(), Some(2_000));
        let ticks = s.drift_ticks("dns").await.unwrap();
        assert_eq!(ticks[0].1, "skipped");
        assert_eq!(ticks[1].1, "queued");
        assert_eq!(s.count_runs().await.unwrap(), 1);
        // While that run is active (claimed by a worker) the next tick is skipped too.
        let (active, _) = s.claim_run("n1", LEASE).await.unwrap().unwrap();
        assert_eq!(active.state, RunState::Fetching);
        assert!(matches!(
            s.claim_drift_tick(3_000, &drift).await.unwrap(),
            TickOutcome::Skipped
        ));
        assert_eq!(s.count_runs().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn a_policy_set_is_only_written_over_the_version_its_writer_read() {
    for (s, _d) in stores().await {
        let files = std::collections::BTreeMap::from([("a.rego".to_string(), "x".to_string())]);
        assert_eq!(s.policy_set_version("g").await.unwrap(), None);
        let put = |expected, sha: &'static str| {
            let (s, files) = (s.clone(), files.clone());
            async move {
                s.put_policy_set("g", expected, sha, "d", &files, "node")
                    .await
                    .unwrap()
            }
        };
        assert_eq!(put(None, "s1").await, PolicySetWrite::Stored(1));
        // Both read "nothing stored": the second writer loses.
        assert_eq!(put(None, "s0").await, PolicySetWrite::Conflict);
        assert_eq!(put(Some(1), "s2").await, PolicySetWrite::Stored(2));
        // Its reader's version is gone: a set fetched before s2 never replaces it.
        assert_eq!(put(Some(1), "s1").await, PolicySetWrite::Conflict);
        let stored = s.policy_set("g").await.unwrap().unwrap();
        assert_eq!((stored.sha.as_str(), stored.version), ("s2", 2));
        assert_eq!(stored.files, files);
        assert_eq!(
            s.policy_set_versions().await.unwrap(),
            [("g".to_string(), 2)]
        );
    }
}

#[tokio::test]
async fn a_draining_node_hands_back_only_its_own_runs_before_they_apply() {
    for (s, _d) in stores().await {
        let run = &s
            .insert_runs(&[new_run("dns", Some(7), "aaa", None)])
            .await
            .unwrap()[0];
        let (claimed, lease) = s.claim_run("a", LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.id, run.id);
        let forged = Lease {
            id: run.id,
            token: "not-the-holders".into(),
        };
        assert!(!s.requeue_run(&forged, "b").await.unwrap(), "not b's");
        assert!(s.requeue_run(&lease, "a").await.unwrap());
        let back = s.run(run.id).await.unwrap().unwrap();
        assert_eq!(back.state, RunState::Queued);
        // Another node takes the very same run.
        let (again, lease) = s.claim_run("b", LEASE).await.unwrap().unwrap();
        assert_eq!(again.id, run.id);
        for (from, to) in [
            (RunState::Fetching, RunState::Planning),
            (RunState::Planning, RunState::Applying),
        ] {
            assert!(s.transition(&lease, &[from], to, None).await.unwrap());
        }
        assert!(
            !s.requeue_run(&lease, "b").await.unwrap(),
            "an apply is never handed over"
        );
        assert_eq!(
            s.run(run.id).await.unwrap().unwrap().state,
            RunState::Applying
        );
    }
}
