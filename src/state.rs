//! Terraform state kept by gantry, for workspaces whose configuration declares
//! no backend. gantry serves Terraform's `http` backend ([`http`]): runs get
//! an override file pointing at it and a token scoped to their run and
//! workspace, so terraform reads, locks and writes the state itself; every
//! write is a version (serial, lineage, run, time) in the database. A CLI
//! user with the API token can use the same backend. Workspaces with a
//! backend of their own (s3, gcs, http, remote, cloud …) are left alone.

pub mod http;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::store::{Store, StoreError};

/// The backend configuration gantry adds to a run's checkout. An override
/// file (`*_override.tf`) is merged into the configuration whatever it says.
pub const OVERRIDE_FILE: &str = "gantry_backend_override.tf";

/// What terraform writes into its working directory when it cannot store
/// the state it produced.
pub const ERRORED_FILE: &str = "errored.tfstate";

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

/// Writes a copy of the workspace's latest state into `dir` as
/// `terraform.tfstate`, for a one-off check outside the daemon (`gantry drift
/// run`), where no backend is served. Nothing is ever stored back from it.
/// Returns the version placed (0 when the workspace has no state yet).
pub async fn restore(store: &Store, workspace: &str, dir: &Path) -> Result<i64, StateError> {
    match store.latest_state(workspace).await? {
        Some(v) => {
            tokio::fs::write(dir.join("terraform.tfstate"), v.state.as_bytes()).await?;
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

/// Where runs reach gantry's backend: `state_backend_url`, or this process's
/// own listen address (`0.0.0.0` / `::` become loopback: the local runner
/// runs terraform on this host).
pub fn backend_base(config: &Config, local: SocketAddr) -> String {
    if let Some(url) = &config.state_backend_url {
        return url.clone();
    }
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, local.port()))
}

/// The backend address of one workspace's state under `base`.
pub fn backend_address(base: &str, workspace: &str) -> String {
    format!("{}{}/{workspace}", base.trim_end_matches('/'), http::PATH)
}

/// The credentials terraform presents to gantry's backend (through
/// `TF_HTTP_USERNAME` / `TF_HTTP_PASSWORD`, so they never land in a file in
/// the checkout or in the saved plan).
pub struct RunCredentials {
    /// The workspace's state URL (also its lock and unlock URL).
    pub address: String,
    pub username: String,
    pub password: SecretString,
}

/// What a run's backend token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and lock: a plan or drift check (a pull request's code runs
    /// there, and must never be able to write the state).
    Read,
    /// Read, lock and write: an apply.
    Write,
}

/// Points a run's terraform at gantry's backend: writes [`OVERRIDE_FILE`]
/// into `dir` and issues a read-only token (see [`run_credentials`]).
///
/// The file names only the backend type. Its address travels with the
/// credentials, in the environment (`TF_HTTP_ADDRESS` …): a saved plan keeps
/// the backend settings written in the configuration, so an address there
/// would tie the plan to the replica that made it, while one from the
/// environment is the applying replica's own.
pub async fn configure_run(
    store: &Store,
    base: &str,
    workspace: &str,
    run_id: i64,
    dir: &Path,
) -> Result<RunCredentials, StateError> {
    let hcl = "# Written by gantry: this workspace's state is kept by gantry, behind\n\
               # Terraform's http backend, with locking. Its address and credentials\n\
               # come from the environment of each run.\n\
               terraform {\n  backend \"http\" {}\n}\n";
    tokio::fs::write(dir.join(OVERRIDE_FILE), hcl).await?;
    run_credentials(store, base, workspace, run_id, Access::Read).await
}

/// Issues a token good for `workspace` while run `run_id` is active, with
/// `access`, for the backend at `base`. Only its sha256 is stored.
pub async fn run_credentials(
    store: &Store,
    base: &str,
    workspace: &str,
    run_id: i64,
    access: Access,
) -> Result<RunCredentials, StateError> {
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    store
        .add_state_token(
            &token_sha256(&token),
            run_id,
            workspace,
            access == Access::Write,
        )
        .await?;
    Ok(RunCredentials {
        address: backend_address(base, workspace),
        username: format!("run-{run_id}"),
        password: SecretString::from(token),
    })
}

/// The form a backend token is stored in.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Keeps the state terraform could not store (it writes `errored.tfstate`
/// into its working directory when the backend refuses or is unreachable) in
/// the store's spool. Returns the spool id, or `None` when there is no such file.
pub async fn spool_errored(
    store: &Store,
    workspace: &str,
    run_id: i64,
    dir: &Path,
    reason: &str,
) -> Result<Option<i64>, StateError> {
    let path = dir.join(ERRORED_FILE);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(
        store
            .spool_state(workspace, Some(run_id), reason, &text)
            .await?,
    ))
}

/// The serial and lineage of a state document.
pub fn serial_and_lineage(text: &str) -> Result<(i64, String), StateError> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| StateError::Invalid(e.to_string()))?;
    let serial = doc
        .get("serial")
        .and_then(|s| s.as_i64())
        .ok_or_else(|| StateError::Invalid("no serial".into()))?;
    let lineage = doc
        .get("lineage")
        .and_then(|s| s.as_str())
        .ok_or_else(|| StateError::Invalid("no lineage".into()))?
        .to_string();
    Ok((serial, lineage))
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
