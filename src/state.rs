//! Terraform state kept by gantry, for workspaces whose configuration declares
//! no backend: the latest version is placed in the working directory before
//! `init`, and what `apply` leaves there is stored as a new version (serial,
//! lineage, run, time) in the database. Workspaces with a backend of their own
//! (s3, gcs, http, remote, cloud …) are left alone.

use std::path::Path;

use crate::store::{Store, StoreError};

pub const STATE_FILE: &str = "terraform.tfstate";

/// Whether the `.tf` files directly in `dir` configure a backend (or HCP
/// Terraform's `cloud` block).
pub fn has_own_backend(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("tf") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match hcl::parse(&text) {
            Ok(body) => {
                let declares = body
                    .blocks()
                    .filter(|b| b.identifier() == "terraform")
                    .any(|t| {
                        t.body
                            .blocks()
                            .any(|b| matches!(b.identifier(), "backend" | "cloud"))
                    });
                if declares {
                    return true;
                }
            }
            // terraform will report the syntax error itself; be conservative.
            Err(_) if text.contains("backend \"") || text.contains("cloud {") => return true,
            Err(_) => {}
        }
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("state file: {0}")]
    Io(#[from] std::io::Error),
    #[error("state file is not valid terraform state: {0}")]
    Invalid(String),
}

/// Writes the workspace's latest state into `dir`. Returns the version placed
/// (0 when the workspace has no state yet).
pub async fn restore(store: &Store, workspace: &str, dir: &Path) -> Result<i64, StateError> {
    match store.latest_state(workspace).await? {
        Some(v) => {
            tokio::fs::write(dir.join(STATE_FILE), v.state.as_bytes()).await?;
            Ok(v.id)
        }
        None => Ok(0),
    }
}

/// The version id the workspace's state is at (0: none yet).
pub async fn current_version(store: &Store, workspace: &str) -> Result<i64, StateError> {
    Ok(store
        .latest_state(workspace)
        .await?
        .map(|v| v.id)
        .unwrap_or(0))
}

/// Stores the state an apply left in `dir` as a new version, unless it is the
/// same serial and lineage as the latest. Returns the new version's id.
pub async fn save(
    store: &Store,
    workspace: &str,
    run_id: i64,
    dir: &Path,
) -> Result<Option<i64>, StateError> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = tokio::fs::read_to_string(&path).await?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| StateError::Invalid(e.to_string()))?;
    let serial = doc
        .get("serial")
        .and_then(|s| s.as_i64())
        .ok_or_else(|| StateError::Invalid("no serial".into()))?;
    let lineage = doc
        .get("lineage")
        .and_then(|s| s.as_str())
        .ok_or_else(|| StateError::Invalid("no lineage".into()))?
        .to_string();
    if let Some(latest) = store.latest_state(workspace).await? {
        if latest.serial == serial && latest.lineage == lineage {
            return Ok(None);
        }
    }
    Ok(Some(
        store
            .add_state_version(workspace, serial, &lineage, run_id, &text)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.tf"),
            "resource \"null_resource\" \"x\" {}\n",
        )
        .unwrap();
        assert!(!has_own_backend(dir.path()));
        std::fs::write(
            dir.path().join("backend.tf"),
            "terraform {\n  backend \"s3\" {\n    bucket = \"b\"\n  }\n}\n",
        )
        .unwrap();
        assert!(has_own_backend(dir.path()));
        let cloud = tempfile::tempdir().unwrap();
        std::fs::write(
            cloud.path().join("main.tf"),
            "terraform {\n  cloud {\n    organization = \"o\"\n  }\n}\n",
        )
        .unwrap();
        assert!(has_own_backend(cloud.path()));
        let providers_only = tempfile::tempdir().unwrap();
        std::fs::write(
            providers_only.path().join("versions.tf"),
            "terraform {\n  required_providers {\n    null = { source = \"hashicorp/null\" }\n  }\n}\n",
        )
        .unwrap();
        assert!(!has_own_backend(providers_only.path()));
    }
}
