//! Retention: what old data is deleted, and what never is.
//!
//! Never deleted, whatever its age: anything of a run that is queued, active
//! or waiting for a confirmation; anything of the newest run of each pull
//! request and workspace (a `gantry apply` comment applies it; its comment
//! shows it); the plan JSON and log of each workspace's newest planned run
//! (policy impact analysis reads it), though not its plan file; the newest
//! state version of each workspace.

use std::time::Duration;

use super::{now_ms, Store, StoreResult};

/// The runs that may still be applied, as a subquery: retention keeps all
/// their artifacts.
macro_rules! applicable_runs {
    () => {
        "SELECT id FROM runs WHERE state IN ('queued', 'fetching', 'planning', 'applying', 'needs_confirmation')
         UNION SELECT MAX(id) FROM runs WHERE pr_number IS NOT NULL
             GROUP BY provider_id, repo, pr_number, workspace"
    };
}
const APPLICABLE_RUNS: &str = applicable_runs!();

/// [`APPLICABLE_RUNS`] and each workspace's newest planned run (whose plan
/// JSON impact analysis reads): retention keeps their plan JSON and log.
const PROTECTED_RUNS: &str = concat!(
    applicable_runs!(),
    " UNION SELECT MAX(id) FROM runs WHERE planned_at IS NOT NULL GROUP BY workspace"
);

/// How long each kind of data is kept; a time is a Unix-millisecond cutoff
/// (older is deleted).
#[derive(Debug, Clone, Copy)]
pub struct Cutoffs {
    /// Plan files and plan JSON (they hold secrets in the clear).
    pub plans_before: i64,
    pub logs_before: i64,
    /// The newest this many state versions of each workspace are kept (at least 1).
    pub state_versions: i64,
    /// Dispatched or failed webhook deliveries.
    pub events_before: i64,
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub plan_artifacts: u64,
    pub logs: u64,
    pub state_versions: u64,
    pub events: u64,
}

impl Store {
    /// Takes (or renews) the lease on maintenance job `name` for `holder`, if
    /// no other holder's lease is running. Only the holder runs the job.
    pub async fn take_maintenance_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO maintenance_leases (name, holder, lease_until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
             WHERE maintenance_leases.lease_until < $4 OR maintenance_leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes what is older than `cutoffs` and not protected (see the module docs).
    pub async fn prune(&self, cutoffs: Cutoffs) -> StoreResult<Pruned> {
        let plan_files = self
            .delete_older(
                &format!("DELETE FROM run_artifacts WHERE kind = 'plan_file' AND created_at < $1 AND run_id NOT IN ({APPLICABLE_RUNS})"),
                cutoffs.plans_before,
            )
            .await?;
        let plan_json = self
            .delete_older(
                &format!("DELETE FROM run_artifacts WHERE kind = 'plan_json' AND created_at < $1 AND run_id NOT IN ({PROTECTED_RUNS})"),
                cutoffs.plans_before,
            )
            .await?;
        let logs = self
            .delete_older(
                &format!("DELETE FROM run_artifacts WHERE kind = 'log' AND created_at < $1 AND run_id NOT IN ({PROTECTED_RUNS})"),
                cutoffs.logs_before,
            )
            .await?;
        self.delete_older(
            &format!("DELETE FROM run_log_chunks WHERE created_at < $1 AND run_id NOT IN ({PROTECTED_RUNS})"),
            cutoffs.logs_before,
        )
        .await?;
        // The newest `state_versions` of each workspace stay ($1 is a count here).
        let state_versions = self
            .delete_older(
                "DELETE FROM state_versions WHERE id IN (
                     SELECT id FROM (
                         SELECT id, ROW_NUMBER() OVER (PARTITION BY workspace ORDER BY id DESC) AS newer
                         FROM state_versions
                     ) ranked WHERE newer > $1)",
                cutoffs.state_versions.max(1),
            )
            .await?;
        // Old runs forget their delivery (only their policy input's PR
        // details came from it); protected runs keep theirs, and it stays.
        const OLD_EVENTS: &str =
            "SELECT id FROM events WHERE state IN ('dispatched', 'failed') AND received_at < $1";
        self.delete_older(
            &format!("UPDATE runs SET event_id = NULL WHERE event_id IN ({OLD_EVENTS}) AND id NOT IN ({PROTECTED_RUNS})"),
            cutoffs.events_before,
        )
        .await?;
        let events = self
            .delete_older(
                &format!("DELETE FROM events WHERE id IN ({OLD_EVENTS}) AND id NOT IN (SELECT event_id FROM runs WHERE event_id IS NOT NULL)"),
                cutoffs.events_before,
            )
            .await?;
        Ok(Pruned {
            plan_artifacts: plan_files + plan_json,
            logs,
            state_versions,
            events,
        })
    }

    /// Runs one statement bound to `$1` (a cutoff, or a count); returns how
    /// many rows it deleted or changed.
    async fn delete_older(&self, sql: &str, before: i64) -> StoreResult<u64> {
        Ok(sqlx::query(sql)
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{new_run, stores};
    use crate::store::{ArtifactKind, RunState};

    async fn age(s: &Store, table: &str, run: i64) {
        sqlx::query(&format!(
            "UPDATE {table} SET created_at = 1 WHERE run_id = $1"
        ))
        .bind(run)
        .execute(s.pool())
        .await
        .unwrap();
    }

    async fn kinds(s: &Store, run: i64) -> Vec<String> {
        sqlx::query_scalar("SELECT kind FROM run_artifacts WHERE run_id = $1 ORDER BY kind")
            .bind(run)
            .fetch_all(s.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn old_artifacts_go_and_what_prs_and_confirmations_need_stays() {
        for (s, _dir) in stores().await {
            // PR 7 planned twice (the newer head is what its comment shows),
            // a merge waits for confirmation, an old merge was applied.
            let runs = s
                .insert_runs(&[
                    new_run("a", Some(7), "1", None),
                    new_run("a", Some(7), "2", None),
                    new_run("b", None, "3", None),
                    new_run("c", None, "4", None),
                ])
                .await
                .unwrap();
            let (old_pr, new_pr, waiting, applied) =
                (runs[0].id, runs[1].id, runs[2].id, runs[3].id);
            for id in [old_pr, new_pr] {
                s.transition_unclaimed(id, &[RunState::Queued], RunState::Planned, None)
                    .await
                    .unwrap();
            }
            s.transition_unclaimed(
                waiting,
                &[RunState::Queued],
                RunState::NeedsConfirmation,
                None,
            )
            .await
            .unwrap();
            s.transition_unclaimed(applied, &[RunState::Queued], RunState::Applied, None)
                .await
                .unwrap();
            for id in [old_pr, new_pr, waiting, applied] {
                s.put_artifact(id, ArtifactKind::PlanFile, b"plan")
                    .await
                    .unwrap();
                s.put_artifact(id, ArtifactKind::PlanJson, b"{}")
                    .await
                    .unwrap();
                s.append_log(id, "log\n").await.unwrap();
                s.fold_log(id).await.unwrap();
                age(&s, "run_artifacts", id).await;
            }
            s.append_log(applied, "unfolded\n").await.unwrap();
            age(&s, "run_log_chunks", applied).await;
            for serial in 1..=4 {
                s.add_state_version("c", serial, "l", applied, "{}")
                    .await
                    .unwrap();
            }
            let now = now_ms();
            let pruned = s
                .prune(Cutoffs {
                    plans_before: now,
                    logs_before: now,
                    state_versions: 2,
                    events_before: now,
                })
                .await
                .unwrap();
            assert_eq!(pruned.plan_artifacts, 4, "{pruned:?}");
            assert_eq!(pruned.logs, 2, "{pruned:?}");
            assert_eq!(pruned.state_versions, 2, "{pruned:?}");
            assert!(kinds(&s, old_pr).await.is_empty());
            assert!(kinds(&s, applied).await.is_empty());
            assert_eq!(s.run_log(applied).await.unwrap(), None);
            for kept in [new_pr, waiting] {
                assert_eq!(kinds(&s, kept).await, ["log", "plan_file", "plan_json"]);
            }
            let serials: Vec<i64> = s
                .state_versions("c")
                .await
                .unwrap()
                .iter()
                .map(|v| v.serial)
                .collect();
            assert_eq!(serials.len(), 2);
            assert!(serials.contains(&4) && serials.contains(&3), "{serials:?}");

            // Young data stays.
            s.put_artifact(applied, ArtifactKind::PlanFile, b"new")
                .await
                .unwrap();
            let pruned = s
                .prune(Cutoffs {
                    plans_before: now - 1000,
                    logs_before: now - 1000,
                    state_versions: 2,
                    events_before: now - 1000,
                })
                .await
                .unwrap();
            assert_eq!(pruned, Pruned::default());
            assert_eq!(kinds(&s, applied).await, ["plan_file"]);
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_runs_maintenance() {
        for (s, _dir) in stores().await {
            let ttl = Duration::from_secs(60);
            assert!(s
                .take_maintenance_lease("retention", "a", ttl)
                .await
                .unwrap());
            assert!(!s
                .take_maintenance_lease("retention", "b", ttl)
                .await
                .unwrap());
            // The holder renews.
            assert!(s
                .take_maintenance_lease("retention", "a", ttl)
                .await
                .unwrap());
            // An expired lease is taken over.
            sqlx::query("UPDATE maintenance_leases SET lease_until = 0")
                .execute(s.pool())
                .await
                .unwrap();
            assert!(s
                .take_maintenance_lease("retention", "b", ttl)
                .await
                .unwrap());
            assert!(!s
                .take_maintenance_lease("retention", "a", ttl)
                .await
                .unwrap());
        }
    }
}
