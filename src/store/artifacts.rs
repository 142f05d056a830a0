//! Run artifacts in the database: the saved plan file, the plan JSON and the
//! log, each gzip-compressed with the sha256 and size of its uncompressed
//! bytes, so any replica can apply, show or analyse a run another replica made.
//!
//! The log is written twice over: while a run goes, each redacted chunk is a
//! row of its own (`run_log_chunks`), so a run killed with SIGKILL keeps what
//! it printed; when a phase ends the chunks are folded into the compressed
//! `log` artifact in one transaction. [`Store::run_log`] reads both.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{now_ms, Store, StoreError, StoreResult};

/// What a run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// The binary plan terraform saved (`plan -out`): applied as is, once its
    /// sha256 matches the one reviewed. It holds secrets in the clear.
    PlanFile,
    /// `terraform show -json` of the plan (policy input, impact analysis).
    PlanJson,
    /// The run's log, every phase, redacted.
    Log,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::PlanFile => "plan_file",
            ArtifactKind::PlanJson => "plan_json",
            ArtifactKind::Log => "log",
        }
    }
}

/// One stored artifact, decompressed, its integrity checked.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`, hex, as recorded when it was stored.
    pub sha256: String,
    pub created_at: i64,
}

const GZIP: &str = "gzip";

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

fn decompress(encoding: &str, data: &[u8]) -> StoreResult<Vec<u8>> {
    if encoding != GZIP {
        return Err(StoreError::Corrupt(format!(
            "artifact encoding `{encoding}`"
        )));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::Corrupt(format!("artifact does not decompress: {e}")))?;
    Ok(out)
}

/// Stores (or replaces) one artifact of a run, compressed; returns the
/// sha256 of `bytes`.
async fn write_artifact<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    run_id: i64,
    kind: ArtifactKind,
    bytes: &[u8],
) -> StoreResult<String> {
    let sha = sha256_hex(bytes);
    sqlx::query(
        "INSERT INTO run_artifacts (run_id, kind, encoding, data, sha256, size, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (run_id, kind) DO UPDATE SET encoding = excluded.encoding,
             data = excluded.data, sha256 = excluded.sha256, size = excluded.size,
             created_at = excluded.created_at",
    )
    .bind(run_id)
    .bind(kind.as_str())
    .bind(GZIP)
    .bind(compress(bytes))
    .bind(&sha)
    .bind(bytes.len() as i64)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(sha)
}

impl Store {
    /// Stores (or replaces) one artifact of a run; returns the sha256 of `bytes`.
    pub async fn put_artifact(
        &self,
        run_id: i64,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> StoreResult<String> {
        write_artifact(&self.pool, run_id, kind, bytes).await
    }

    /// One artifact of a run. The bytes are checked against the stored size;
    /// the sha256 is returned as recorded, for the caller to compare with what
    /// it expects (an apply compares it with the reviewed plan's).
    pub async fn artifact(&self, run_id: i64, kind: ArtifactKind) -> StoreResult<Option<Artifact>> {
        let row = sqlx::query(
            "SELECT encoding, data, sha256, size, created_at FROM run_artifacts
             WHERE run_id = $1 AND kind = $2",
        )
        .bind(run_id)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let encoding: String = row.try_get("encoding")?;
        let data: Vec<u8> = row.try_get("data")?;
        let size: i64 = row.try_get("size")?;
        let bytes = decompress(&encoding, &data)?;
        if bytes.len() as i64 != size {
            return Err(StoreError::Corrupt(format!(
                "{} of run {run_id} is {} bytes, recorded {size}",
                kind.as_str(),
                bytes.len()
            )));
        }
        Ok(Some(Artifact {
            bytes,
            sha256: row.try_get("sha256")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    /// The plan JSON of run `run_id`, if it kept one.
    pub async fn plan_json(&self, run_id: i64) -> StoreResult<Option<serde_json::Value>> {
        match self.artifact(run_id, ArtifactKind::PlanJson).await? {
            Some(a) => serde_json::from_slice(&a.bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("plan JSON of run {run_id}: {e}"))),
            None => Ok(None),
        }
    }

    /// Appends one redacted chunk to a run's log.
    pub async fn append_log(&self, run_id: i64, text: &str) -> StoreResult<()> {
        if text.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO run_log_chunks (run_id, text, created_at) VALUES ($1, $2, $3)")
            .bind(run_id)
            .bind(text)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A run's whole log: the folded `log` artifact, then chunks appended since.
    /// `None` when the run never logged anything.
    pub async fn run_log(&self, run_id: i64) -> StoreResult<Option<String>> {
        let folded = self.artifact(run_id, ArtifactKind::Log).await?;
        let chunks: Vec<String> =
            sqlx::query_scalar("SELECT text FROM run_log_chunks WHERE run_id = $1 ORDER BY id")
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
        if folded.is_none() && chunks.is_empty() {
            return Ok(None);
        }
        let mut log = folded
            .map(|a| String::from_utf8_lossy(&a.bytes).into_owned())
            .unwrap_or_default();
        for chunk in chunks {
            log.push_str(&chunk);
        }
        Ok(Some(log))
    }

    /// Folds a run's log chunks into its compressed `log` artifact, in one
    /// transaction: a reader sees either the chunks or the artifact, never
    /// both or neither.
    pub async fn fold_log(&self, run_id: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite it takes the write lock up front.
        let touched =
            sqlx::query("UPDATE run_log_chunks SET created_at = created_at WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if touched == 0 {
            tx.commit().await?;
            return Ok(());
        }
        let rows = sqlx::query("SELECT id, text FROM run_log_chunks WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(&mut *tx)
            .await?;
        let old =
            sqlx::query("SELECT encoding, data FROM run_artifacts WHERE run_id = $1 AND kind = $2")
                .bind(run_id)
                .bind(ArtifactKind::Log.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let mut log = match old {
            Some(row) => decompress(
                &row.try_get::<String, _>("encoding")?,
                &row.try_get::<Vec<u8>, _>("data")?,
            )?,
            None => Vec::new(),
        };
        let mut last = 0i64;
        for row in &rows {
            log.extend_from_slice(row.try_get::<String, _>("text")?.as_bytes());
            last = row.try_get("id")?;
        }
        write_artifact(&mut *tx, run_id, ArtifactKind::Log, &log).await?;
        sqlx::query("DELETE FROM run_log_chunks WHERE run_id = $1 AND id <= $2")
            .bind(run_id)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{new_run, stores};

    #[tokio::test]
    async fn artifacts_round_trip_compressed_with_their_sha256() {
        for (s, _dir) in stores().await {
            let run = s
                .insert_runs(&[new_run("a", None, "1", None)])
                .await
                .unwrap()[0]
                .id;
            assert!(s
                .artifact(run, ArtifactKind::PlanFile)
                .await
                .unwrap()
                .is_none());
            // Every byte value, and enough of it to compress.
            let plan: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
            let sha = s
                .put_artifact(run, ArtifactKind::PlanFile, &plan)
                .await
                .unwrap();
            assert_eq!(sha, sha256_hex(&plan));
            let got = s
                .artifact(run, ArtifactKind::PlanFile)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.bytes, plan);
            assert_eq!(got.sha256, sha);
            let stored: i64 = sqlx::query_scalar(
                "SELECT length(data) FROM run_artifacts WHERE run_id = $1 AND kind = 'plan_file'",
            )
            .bind(run)
            .fetch_one(s.pool())
            .await
            .unwrap();
            assert!(stored < plan.len() as i64 / 4, "compressed: {stored} bytes");

            // Replacing keeps one row per kind; kinds are separate.
            s.put_artifact(run, ArtifactKind::PlanFile, b"v2")
                .await
                .unwrap();
            s.put_artifact(run, ArtifactKind::PlanJson, b"{}")
                .await
                .unwrap();
            let got = s
                .artifact(run, ArtifactKind::PlanFile)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (got.bytes.as_slice(), got.sha256),
                (&b"v2"[..], sha256_hex(b"v2"))
            );
            assert_eq!(
                s.artifact(run, ArtifactKind::PlanJson)
                    .await
                    .unwrap()
                    .unwrap()
                    .bytes,
                b"{}"
            );
        }
    }

    #[tokio::test]
    async fn log_chunks_are_readable_before_and_after_folding() {
        for (s, _dir) in stores().await {
            let run = s
                .insert_runs(&[new_run("a", None, "1", None)])
                .await
                .unwrap()[0]
                .id;
            assert_eq!(s.run_log(run).await.unwrap(), None);
            s.append_log(run, "$ terraform init\n").await.unwrap();
            s.append_log(run, "Initializing…\n").await.unwrap();
            assert_eq!(
                s.run_log(run).await.unwrap().unwrap(),
                "$ terraform init\nInitializing…\n"
            );
            s.fold_log(run).await.unwrap();
            let chunks: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM run_log_chunks WHERE run_id = $1")
                    .bind(run)
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
            assert_eq!(chunks, 0);
            // A later phase appends, and folds onto what was there.
            s.append_log(run, "$ terraform apply\n").await.unwrap();
            let whole = "$ terraform init\nInitializing…\n$ terraform apply\n";
            assert_eq!(s.run_log(run).await.unwrap().unwrap(), whole);
            s.fold_log(run).await.unwrap();
            s.fold_log(run).await.unwrap();
            let log = s.artifact(run, ArtifactKind::Log).await.unwrap().unwrap();
            assert_eq!(log.bytes, whole.as_bytes());
            assert_eq!(log.sha256, sha256_hex(whole.as_bytes()));
            assert_eq!(s.run_log(run).await.unwrap().unwrap(), whole);
        }
    }
}
