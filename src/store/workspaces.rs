//! Per-workspace records: locks, the audit log, and the terraform state gantry
//! keeps for workspaces without a backend of their own.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Store, StoreResult};

#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceLock {
    pub workspace: String,
    pub reason: String,
    pub locked_by: String,
    pub run_id: Option<i64>,
    pub locked_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub workspace: Option<String>,
    pub run_id: Option<i64>,
    pub commit_sha: Option<String>,
    pub detail: Option<String>,
}

/// What the audit log records.
#[derive(Debug, Clone, Default)]
pub struct Audit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub workspace: Option<&'a str>,
    pub run_id: Option<i64>,
    pub commit_sha: Option<&'a str>,
    pub detail: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateVersion {
    pub id: i64,
    pub workspace: String,
    pub serial: i64,
    pub lineage: String,
    pub run_id: Option<i64>,
    pub created_at: i64,
    /// `run N`, or `api` for a CLI user's write; `None` before the backend.
    pub written_by: Option<String>,
    #[serde(skip)]
    pub state: String,
}

fn lock_from_row(r: &sqlx::any::AnyRow) -> StoreResult<WorkspaceLock> {
    Ok(WorkspaceLock {
        workspace: r.try_get("workspace")?,
        reason: r.try_get("reason")?,
        locked_by: r.try_get("locked_by")?,
        run_id: r.try_get("run_id")?,
        locked_at: r.try_get("locked_at")?,
    })
}

fn version_from_row(r: &sqlx::any::AnyRow) -> StoreResult<StateVersion> {
    Ok(StateVersion {
        id: r.try_get("id")?,
        workspace: r.try_get("workspace")?,
        serial: r.try_get("serial")?,
        lineage: r.try_get("lineage")?,
        run_id: r.try_get("run_id")?,
        created_at: r.try_get("created_at")?,
        written_by: r.try_get("written_by")?,
        state: r.try_get("state")?,
    })
}

impl Store {
    /// Locks a workspace. False (and nothing changes) when it is already locked.
    pub async fn lock_workspace(
        &self,
        workspace: &str,
        reason: &str,
        by: &str,
        run_id: Option<i64>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO workspace_locks (workspace, reason, locked_by, run_id, locked_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace) DO NOTHING",
        )
        .bind(workspace)
        .bind(reason)
        .bind(by)
        .bind(run_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a workspace's lock; returns it, or `None` when there was none.
    pub async fn unlock_workspace(&self, workspace: &str) -> StoreResult<Option<WorkspaceLock>> {
        let row = sqlx::query(
            "DELETE FROM workspace_locks WHERE workspace = $1
             RETURNING workspace, reason, locked_by, run_id, locked_at",
        )
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(lock_from_row).transpose()
    }

    pub async fn workspace_lock(&self, workspace: &str) -> StoreResult<Option<WorkspaceLock>> {
        let row = sqlx::query(
            "SELECT workspace, reason, locked_by, run_id, locked_at FROM workspace_locks WHERE workspace = $1",
        )
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(lock_from_row).transpose()
    }

    pub async fn workspace_locks(&self) -> StoreResult<Vec<WorkspaceLock>> {
        let rows = sqlx::query(
            "SELECT workspace, reason, locked_by, run_id, locked_at FROM workspace_locks",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lock_from_row).collect()
    }

    pub async fn audit(&self, a: Audit<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, workspace, run_id, commit_sha, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(a.actor)
        .bind(a.action)
        .bind(a.workspace)
        .bind(a.run_id)
        .bind(a.commit_sha)
        .bind(a.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first.
    pub async fn audit_log(
        &self,
        workspace: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>> {
        let sql =
            "SELECT id, at, actor, action, workspace, run_id, commit_sha, detail FROM audit_log
                   WHERE ($1 = '' OR workspace = $1) ORDER BY id DESC LIMIT $2";
        let rows = sqlx::query(sql)
            .bind(workspace.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    workspace: r.try_get("workspace")?,
                    run_id: r.try_get("run_id")?,
                    commit_sha: r.try_get("commit_sha")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    pub async fn latest_state(&self, workspace: &str) -> StoreResult<Option<StateVersion>> {
        let row = sqlx::query(
            "SELECT id, workspace, serial, lineage, run_id, created_at, written_by, state FROM state_versions
             WHERE workspace = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Newest first, without the state documents.
    pub async fn state_versions(&self, workspace: &str) -> StoreResult<Vec<StateVersion>> {
        let rows = sqlx::query(
            "SELECT id, workspace, serial, lineage, run_id, created_at, written_by, '' AS state FROM state_versions
             WHERE workspace = $1 ORDER BY id DESC",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    pub async fn add_state_version(
        &self,
        workspace: &str,
        serial: i64,
        lineage: &str,
        run_id: i64,
        state: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO state_versions (workspace, serial, lineage, run_id, created_at, state)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(workspace)
        .bind(serial)
        .bind(lineage)
        .bind(run_id)
        .bind(now_ms())
        .bind(state)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// What the store keeps of a drift report: whether it found drift (a column
/// to filter on) and the whole report as JSON. `drift::DriftReport` is one;
/// the store does not know its shape.
pub trait DriftRecord: Serialize {
    fn drifted(&self) -> bool;
}

/// A stored drift report.
#[derive(Debug, Clone, Serialize)]
pub struct DriftEntry {
    pub id: i64,
    pub workspace: String,
    pub run_id: i64,
    pub commit_sha: String,
    pub drifted: bool,
    /// The report as `drift` wrote it (a `DriftReport`).
    pub report: serde_json::Value,
    pub created_at: i64,
}

fn drift_from_row(r: &sqlx::any::AnyRow) -> StoreResult<DriftEntry> {
    let report: String = r.try_get("report")?;
    Ok(DriftEntry {
        id: r.try_get("id")?,
        workspace: r.try_get("workspace")?,
        run_id: r.try_get("run_id")?,
        commit_sha: r.try_get("commit_sha")?,
        drifted: r.try_get::<i64, _>("drifted")? != 0,
        report: serde_json::from_str(&report)
            .map_err(|e| super::StoreError::Corrupt(format!("drift report: {e}")))?,
        created_at: r.try_get("created_at")?,
    })
}

const DRIFT_COLUMNS: &str = "id, workspace, run_id, commit_sha, drifted, report, created_at";

impl Store {
    pub async fn add_drift_report(
        &self,
        workspace: &str,
        run_id: i64,
        sha: &str,
        report: &impl DriftRecord,
    ) -> StoreResult<()> {
        let json =
            serde_json::to_string(report).map_err(|e| super::StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO drift_reports (workspace, run_id, commit_sha, drifted, report, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(workspace)
        .bind(run_id)
        .bind(sha)
        .bind(i64::from(report.drifted()))
        .bind(json)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A workspace's drift reports, newest first.
    pub async fn drift_reports(&self, workspace: &str, limit: i64) -> StoreResult<Vec<DriftEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {DRIFT_COLUMNS} FROM drift_reports WHERE workspace = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(workspace)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(drift_from_row).collect()
    }

    /// The newest drift report of every workspace.
    pub async fn latest_drift_reports(&self) -> StoreResult<Vec<DriftEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {DRIFT_COLUMNS} FROM drift_reports WHERE id IN (SELECT MAX(id) FROM drift_reports GROUP BY workspace)
             ORDER BY workspace"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(drift_from_row).collect()
    }
}

impl Store {
    /// The open drift issue of a workspace: `(repo, number)`.
    pub async fn drift_issue(&self, workspace: &str) -> StoreResult<Option<(String, i64)>> {
        let row = sqlx::query("SELECT repo, number FROM drift_issues WHERE workspace = $1")
            .bind(workspace)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("repo")?, r.try_get("number")?)))
            .transpose()
    }

    pub async fn set_drift_issue(
        &self,
        workspace: &str,
        repo: &str,
        number: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO drift_issues (workspace, repo, number, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace) DO UPDATE SET repo = excluded.repo, number = excluded.number, updated_at = excluded.updated_at",
        )
        .bind(workspace)
        .bind(repo)
        .bind(number)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_drift_issue(&self, workspace: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM drift_issues WHERE workspace = $1")
            .bind(workspace)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
