//! The reporter outbox: statuses and comments are rows in the database,
//! delivered once the VCS API answers, in order, by whichever process runs;
//! a run reaped after a crash still gets its final status.

use std::time::Duration;

use gantry::runs::{RunKind, RunSource, RunState};
use gantry::store::{NewRun, Store};
use serde_json::Value;

use crate::support::origin::standard_files;
use crate::support::*;

/// The statuses of `context` on `sha`, as (state, description), in arrival order.
fn states(env: &TestEnv, sha: &str, context: &str) -> Vec<(String, String)> {
    env.github
        .statuses(sha)
        .iter()
        .filter(|s| s["context"] == context)
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_string(),
                s["description"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn wait_all_delivered(store: &Store) {
    wait_until(Duration::from_secs(90), || async {
        (store.undelivered_reports().await.unwrap() == 0).then_some(())
    })
    .await
}

#[tokio::test]
async fn reports_wait_out_an_api_outage_and_arrive_in_order() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, base, head) = env.origin.standard_change(
            vec![(
                "network/main.tf",
                format!("{}\n# wider\n", standard_files()["network/main.tf"]),
            )],
            "widen",
            &["refs/heads/feature", "refs/pull/7/head"],
        );
        let head = head.to_string();
        let app = env.spawn_app(&env.default_yaml()).await;

        env.github.set_down(true);
        let body = pr_payload("opened", &head, &base.to_string());
        let r = app.send_webhook("pull_request", "outage-1", &body).await;
        assert_eq!(r.status(), 202);

        // The run does not wait on the API: it plans and finishes.
        let runs = app.wait_for_runs_done(1).await;
        assert_eq!(runs[0]["state"], "planned", "{db:?}: {runs:?}");
        // The sender tried and was refused; the reports wait in the store.
        wait_until(Duration::from_secs(60), || async {
            (env.github.refused() > 0).then_some(())
        })
        .await;
        assert!(env.github.statuses(&head).is_empty(), "{db:?}");
        assert!(env.github.comments(7).is_empty(), "{db:?}");
        assert!(app.ctx.store.undelivered_reports().await.unwrap() > 0);

        // The API is back: the final status and the comment arrive.
        env.github.set_down(false);
        let last = env.wait_for_final_status(&head, "gantry/network").await;
        assert_eq!(last["state"], "success", "{db:?}: {last}");
        env.wait_for_comment(7, "✅ planned").await;
        wait_all_delivered(&app.ctx.store).await;

        // In order: nothing after the final status (a superseded pending one
        // is dropped, never sent late), and one comment, not one per retry.
        let st = states(&env, &head, "gantry/network");
        let first_final = st.iter().position(|(s, _)| s != "pending").unwrap();
        assert_eq!(first_final, st.len() - 1, "{db:?}: {st:?}");
        assert_eq!(
            st.last().unwrap().1,
            "Plan: 1 to add, 0 to change, 0 to destroy. · cost: 1 not priced"
        );
        assert_eq!(env.github.count("POST", "/issues/7/comments"), 1, "{db:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_reaped_run_reports_its_end_and_reports_survive_a_restart() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let yaml = env.default_yaml();
        let config = env.load_config(&yaml);
        let sha = "5".repeat(40);

        // A replica died while applying a run of PR 7: claimed, lease run out.
        let store = Store::connect(&config.database_url).await.unwrap();
        store.migrate().await.unwrap();
        let run = store
            .insert_runs(&[NewRun {
                workspace: "dns".into(),
                event_id: None,
                kind: RunKind::Plan,
                source: RunSource::PullRequest,
                provider_id: "github".into(),
                repo: "acme/infra".into(),
                branch: "main".into(),
                pr_number: Some(7),
                head_sha: sha.clone(),
                git_ref: "refs/pull/7/head".into(),
                head_repo: None,
            }])
            .await
            .unwrap()
            .remove(0);
        let (_, lease) = store
            .claim_run("dead-replica", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(store
            .transition(&lease, &[RunState::Fetching], RunState::Applying, None)
            .await
            .unwrap());
        // Another replica reaps it and dies at once: the report was committed
        // with the run's end.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reaped = store.reap_runs().await.unwrap();
        assert_eq!(reaped.len(), 1, "{db:?}");
        assert_eq!(reaped[0].id, run.id);
        assert_eq!(
            reaped[0].state_reason.as_deref(),
            Some("interrupted during apply")
        );
        assert_eq!(store.undelivered_reports().await.unwrap(), 1, "{db:?}");
        store.close().await;

        // Started during an outage: the report waits.
        env.github.set_down(true);
        let app = env.spawn_app(&yaml).await;
        wait_until(Duration::from_secs(60), || async {
            (env.github.refused() > 0).then_some(())
        })
        .await;
        // Shutdown does not wait on the unreachable API.
        tokio::time::timeout(Duration::from_secs(30), app.stop())
            .await
            .expect("shutdown waited on the VCS API");
        assert!(env.github.statuses(&sha).is_empty(), "{db:?}");

        // The process is gone; the report is still in the store.
        let store = Store::connect(&config.database_url).await.unwrap();
        assert!(store.undelivered_reports().await.unwrap() > 0, "{db:?}");
        store.close().await;

        // The next process delivers it once the API answers.
        env.github.set_down(false);
        let app = env.spawn_app(&yaml).await;
        let last: Value = env.wait_for_final_status(&sha, "gantry/dns").await;
        assert_eq!(last["state"], "error", "{db:?}: {last}");
        assert_eq!(
            last["description"],
            "gantry error: interrupted during apply: workspace locked"
        );
        let comment = env.wait_for_comment(7, "⚠️ errored").await;
        assert!(comment.contains("`dns`"), "{comment}");
        wait_all_delivered(&app.ctx.store).await;
        // No status left pending.
        let st = states(&env, &sha, "gantry/dns");
        assert!(st.iter().all(|(s, _)| s == "error"), "{db:?}: {st:?}");
        app.stop().await;
    }
}

fn status_row(key: &str, payload: &str) -> gantry::store::NewReport {
    gantry::store::NewReport {
        kind: "status",
        order_key: key.into(),
        coalesce_key: Some(key.into()),
        provider_id: "github".into(),
        repo: "acme/infra".into(),
        payload: payload.into(),
        skip_if_sent: true,
    }
}

#[tokio::test]
async fn the_store_delivers_one_report_per_key_at_a_time_and_never_an_older_status_after_a_newer() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let config = env.load_config(&env.default_yaml());
        let store = Store::connect(&config.database_url).await.unwrap();
        store.migrate().await.unwrap();
        let lease = Duration::from_secs(60);

        // Two statuses before any delivery: only the newer one is ever sent.
        let old = store
            .enqueue_report(&status_row("a", "planning"))
            .await
            .unwrap();
        let new = store
            .enqueue_report(&status_row("a", "planned"))
            .await
            .unwrap();
        assert!(old.is_some() && new.is_some());
        let other = store
            .enqueue_report(&status_row("b", "queued"))
            .await
            .unwrap();
        let first = store.claim_report("n1", lease).await.unwrap().unwrap();
        assert_eq!(
            (first.id, first.payload.as_str()),
            (new.unwrap(), "planned"),
            "{db:?}"
        );
        // Key `a` is being sent: another replica gets key `b`, then nothing.
        let second = store.claim_report("n2", lease).await.unwrap().unwrap();
        assert_eq!(Some(second.id), other, "{db:?}");
        assert!(store.claim_report("n2", lease).await.unwrap().is_none());
        // A newer status waits for the one in flight, then goes.
        let newest = store
            .enqueue_report(&status_row("a", "applied"))
            .await
            .unwrap();
        assert!(store.claim_report("n2", lease).await.unwrap().is_none());
        // Only the holder finishes a report.
        let stranger = gantry::store::Lease {
            id: first.id,
            token: "not-this-claim".into(),
        };
        assert!(!store.finish_report(&stranger, true, None).await.unwrap());
        assert!(store.finish_report(&first.lease, true, None).await.unwrap());
        let third = store.claim_report("n2", lease).await.unwrap().unwrap();
        assert_eq!(Some(third.id), newest, "{db:?}");
        // A failure backs off: not due again at once.
        assert!(store
            .retry_report(&third.lease, "HTTP 503", Duration::from_secs(60))
            .await
            .unwrap());
        assert!(store.claim_report("n1", lease).await.unwrap().is_none());
        // The API answers again: due now, sent, and the same status is not queued twice.
        store.reports_due_now("github").await.unwrap();
        let again = store.claim_report("n1", lease).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (third.id, 2));
        assert!(store.finish_report(&again.lease, true, None).await.unwrap());
        assert!(store
            .enqueue_report(&status_row("a", "applied"))
            .await
            .unwrap()
            .is_none());
        // A sender that died: its report goes back to pending for anyone.
        assert!(store
            .finish_report(&second.lease, true, None)
            .await
            .unwrap());
        store
            .enqueue_report(&status_row("b", "planned"))
            .await
            .unwrap();
        let held = store
            .claim_report("dead", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.reap_reports().await.unwrap(), 1);
        let taken = store.claim_report("n1", lease).await.unwrap().unwrap();
        assert_eq!(taken.id, held.id);
        // The dead sender's lease is gone: it cannot renew; the holder renews,
        // and a renewed report is not reaped.
        assert!(!store.renew_report(&held.lease, lease).await.unwrap());
        assert!(store.renew_report(&taken.lease, lease).await.unwrap());
        assert_eq!(store.reap_reports().await.unwrap(), 0);
        store.close().await;
    }
}
