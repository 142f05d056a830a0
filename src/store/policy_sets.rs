//! Policy sets: each group's active policies (commit, the files of its folder
//! and their digest), written by the replica that loaded them and read by
//! every other, so all replicas evaluate the same set. On PostgreSQL a write
//! also notifies [`POLICY_SETS_CHANNEL`]; SQLite readers poll the versions.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use sqlx::Row;

use super::{now_ms, Backend, Store, StoreError, StoreResult};

/// The PostgreSQL channel a policy set write notifies, with the group's name.
pub const POLICY_SETS_CHANNEL: &str = "gantry_policy_sets";

/// A group's stored active set.
#[derive(Debug, Clone)]
pub struct StoredPolicySet {
    pub group: String,
    pub sha: String,
    pub digest: String,
    /// Path relative to the group's folder → content.
    pub files: BTreeMap<String, String>,
    pub version: i64,
}

/// What a write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySetWrite {
    /// Stored as this version.
    Stored(i64),
    /// Another replica stored a set since `expected` was read: the caller's
    /// set may be older than it, so it is not written.
    Conflict,
}

impl Store {
    /// The stored version of each group's set.
    pub async fn policy_set_versions(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT group_name, version FROM policy_sets")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("group_name")?, r.try_get("version")?)))
            .collect()
    }

    pub async fn policy_set_version(&self, group: &str) -> StoreResult<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT version FROM policy_sets WHERE group_name = $1")
                .bind(group)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn policy_set(&self, group: &str) -> StoreResult<Option<StoredPolicySet>> {
        let Some(row) = sqlx::query(
            "SELECT group_name, sha, digest, files, version FROM policy_sets WHERE group_name = $1",
        )
        .bind(group)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let files: String = row.try_get("files")?;
        Ok(Some(StoredPolicySet {
            group: row.try_get("group_name")?,
            sha: row.try_get("sha")?,
            digest: row.try_get("digest")?,
            files: serde_json::from_str(&files)
                .map_err(|e| StoreError::Corrupt(format!("policy set files: {e}")))?,
            version: row.try_get("version")?,
        }))
    }

    /// Stores a group's newly loaded set if the stored version is still
    /// `expected` (read before the caller fetched the policy branch; `None`:
    /// nothing was stored). Compare-and-swap, so a replica whose fetch predates
    /// another's newer set never overwrites it.
    pub async fn put_policy_set(
        &self,
        group: &str,
        expected: Option<i64>,
        sha: &str,
        digest: &str,
        files: &BTreeMap<String, String>,
        node: &str,
    ) -> StoreResult<PolicySetWrite> {
        let files = serde_json::to_string(files).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let written = match expected {
            None => sqlx::query(
                "INSERT INTO policy_sets (group_name, sha, digest, files, version, loaded_by, loaded_at)
                 VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT (group_name) DO NOTHING",
            )
            .bind(group)
            .bind(sha)
            .bind(digest)
            .bind(&files)
            .bind(node)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Some(v) => sqlx::query(
                "UPDATE policy_sets SET sha = $3, digest = $4, files = $5, version = version + 1,
                                        loaded_by = $6, loaded_at = $7
                 WHERE group_name = $1 AND version = $2",
            )
            .bind(group)
            .bind(v)
            .bind(sha)
            .bind(digest)
            .bind(&files)
            .bind(node)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        let version = (written == 1).then(|| expected.map_or(1, |v| v + 1));
        let Some(version) = version else {
            tx.rollback().await?;
            return Ok(PolicySetWrite::Conflict);
        };
        if self.backend == Backend::Postgres {
            // Delivered at commit, to every replica listening.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(POLICY_SETS_CHANNEL)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(PolicySetWrite::Stored(version))
    }
}

/// A dedicated PostgreSQL connection listening for policy set writes (the
/// `Any` pool cannot LISTEN). It reconnects by itself; notifications sent
/// while it was away are lost, so its user also polls now and then.
pub async fn listen_policy_sets(
    database_url: &SecretString,
) -> StoreResult<sqlx::postgres::PgListener> {
    let mut listener = sqlx::postgres::PgListener::connect(database_url.expose_secret()).await?;
    listener.listen(POLICY_SETS_CHANNEL).await?;
    Ok(listener)
}
