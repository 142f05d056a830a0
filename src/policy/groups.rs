//! Policy groups: a repository folder of policies governing environments.
//! A group's branch is fetched into the mirror cache, checked out at its head
//! and compiled; a set that loads is stored in the database (commit, files,
//! digest), and every replica compiles that stored set, so all of them
//! evaluate the same policies within seconds of a change ([`watch`]). A set
//! that fails to load never replaces the last good one (the error is reported
//! on the policy repository's commit status).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{EnforcementLevel, PolicySet};
use tokio_util::sync::CancellationToken;

use crate::config::PolicyGroupConfig;
use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::settings::Settings;
/// A run's policy checks are stored with it: the store owns their types.
pub use crate::store::policy_checks::{summary, verdict, PolicyCheck, Verdict};
use crate::store::Store;
use crate::store::{PolicySetWrite, StoredPolicySet};
use crate::vcs::{CommitStatus, StatusState};

/// A group's compiled policies at one commit.
#[derive(Clone)]
pub struct LoadedGroup {
    pub sha: String,
    /// sha256 over the folder's files: equal digests are the same policies.
    pub digest: String,
    /// The stored version this set is (0: not stored).
    pub version: i64,
    pub set: Arc<PolicySet>,
}

/// This process's compiled copies of the stored sets, and the last load
/// error of each group.
#[derive(Default)]
pub struct PolicyGroups {
    loaded: Mutex<HashMap<String, LoadedGroup>>,
    errors: Mutex<HashMap<String, String>>,
}

/// The policy groups, and what syncing, loading and evaluating them uses.
#[derive(Clone)]
pub struct Policies {
    pub settings: Settings,
    /// The source of truth: every replica evaluates the stored sets.
    pub store: Store,
    pub mirrors: Mirrors,
    /// Statuses on a policy repository's commits (a group that does not load).
    pub outbox: Outbox,
    /// This process's compiled copies.
    pub policy_groups: Arc<PolicyGroups>,
}

impl PolicyGroups {
    pub fn get(&self, name: &str) -> Option<LoadedGroup> {
        self.loaded
            .lock()
            .expect("policy groups poisoned")
            .get(name)
            .cloned()
    }

    pub fn error(&self, name: &str) -> Option<String> {
        self.errors
            .lock()
            .expect("policy groups poisoned")
            .get(name)
            .cloned()
    }

    fn set_loaded(&self, name: &str, group: LoadedGroup) {
        self.loaded
            .lock()
            .expect("policy groups poisoned")
            .insert(name.to_string(), group);
        self.errors
            .lock()
            .expect("policy groups poisoned")
            .remove(name);
    }

    fn set_error(&self, name: &str, error: &str) {
        self.errors
            .lock()
            .expect("policy groups poisoned")
            .insert(name.to_string(), error.to_string());
    }

    fn version(&self, name: &str) -> Option<i64> {
        self.get(name).map(|g| g.version)
    }
}

/// Fetches a group's branch and loads its policies if the head moved; a set
/// that loads becomes the stored set every replica evaluates. Returns the sha
/// of the active set; on a broken set the last good one stays.
pub async fn sync(policies: &Policies, group: &PolicyGroupConfig) -> Result<String, String> {
    let provider = policies
        .settings
        .providers()
        .get(&group.provider)
        .ok_or_else(|| format!("provider {} is not configured", group.provider))?;
    // Read before fetching: a set stored after this read may be newer than
    // what the fetch sees, and must not be overwritten (compare-and-swap).
    let expected = policies
        .store
        .policy_set_version(&group.name)
        .await
        .map_err(|e| e.to_string())?;
    let branch_ref = format!("refs/heads/{}", group.branch);
    let creds = provider
        .git_credentials(&group.repo)
        .await
        .map_err(|e| e.to_string())?;
    let mirror = policies
        .mirrors
        .fetch(
            &group.provider,
            &group.repo,
            &provider.clone_url(&group.repo),
            creds,
            std::slice::from_ref(&branch_ref),
        )
        .await
        .map_err(|e| e.to_string())?;
    let sha = mirror
        .resolve(&branch_ref)
        .map_err(|e| e.to_string())?
        .to_string();
    if let Some(active) = refresh(policies, &group.name).await? {
        if active.sha == sha {
            return Ok(sha);
        }
    }
    let short = &sha[..8.min(sha.len())];
    match load_with_files(policies, group, &mirror, &sha).await {
        Ok((set, files)) => {
            let digest = digest(&files);
            let node = policies.settings.config().node_id.clone();
            let write = policies
                .store
                .put_policy_set(&group.name, expected, &sha, &digest, &files, &node)
                .await
                .map_err(|e| e.to_string())?;
            match write {
                PolicySetWrite::Stored(version) => {
                    tracing::info!(policy_group = %group.name, sha = %sha, version, policies = set.policies.len(), "policy group {} loaded at {short}", group.name);
                    policies.policy_groups.set_loaded(
                        &group.name,
                        LoadedGroup {
                            sha: sha.clone(),
                            digest,
                            version,
                            set: Arc::new(set),
                        },
                    );
                    Ok(sha)
                }
                PolicySetWrite::Conflict => {
                    // Another replica stored a set after this one started
                    // fetching: it is at least as new, so it wins.
                    tracing::info!(policy_group = %group.name, "policy group {} was stored by another replica meanwhile; using that set", group.name);
                    refresh(policies, &group.name)
                        .await?
                        .map(|g| g.sha)
                        .ok_or_else(|| "the stored policy set disappeared".to_string())
                }
            }
        }
        Err(error) => {
            tracing::error!(policy_group = %group.name, sha = %sha, "policy group {} at {short} is broken; keeping the last good set: {error}", group.name);
            policies.policy_groups.set_error(&group.name, &error);
            let status = CommitStatus {
                state: StatusState::Error,
                context: "gantry/policy-group".into(),
                description: format!(
                    "policy group {} does not load: {}",
                    group.name,
                    error.lines().next().unwrap_or_default()
                ),
                target_url: None,
                pull_request: None,
            };
            crate::outbox::post_status(
                &policies.outbox,
                &group.provider,
                &group.repo,
                &sha,
                status,
            )
            .await;
            Err(error)
        }
    }
}

/// Checks out `sha` and compiles the group's folder.
pub async fn load_at(
    policies: &Policies,
    group: &PolicyGroupConfig,
    mirror: &crate::git::Mirror,
    sha: &str,
) -> Result<PolicySet, String> {
    load_with_files(policies, group, mirror, sha)
        .await
        .map(|(set, _)| set)
}

/// [`load_at`], also returning the folder's files, to store.
async fn load_with_files(
    policies: &Policies,
    group: &PolicyGroupConfig,
    mirror: &crate::git::Mirror,
    sha: &str,
) -> Result<(PolicySet, BTreeMap<String, String>), String> {
    let dir = policies
        .settings
        .config()
        .data_dir
        .join("policy-groups")
        .join(&group.name)
        .join(sha);
    if !dir.exists() {
        let (mirror, sha2, tmp) = (mirror.clone(), sha.to_string(), dir.with_extension("tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        tokio::task::spawn_blocking(move || mirror.checkout(&sha2, &tmp).map(|_| tmp))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
            .and_then(|tmp| std::fs::rename(&tmp, &dir).map_err(|e| e.to_string()))?;
    }
    let folder = dir.join(group.path.as_str());
    tokio::task::spawn_blocking(move || {
        let set = compile(&folder)?;
        let files = read_folder(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        Ok((set, files))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn compile(folder: &Path) -> Result<PolicySet, String> {
    PolicySet::load(folder).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The text files under `folder` (recursively; symbolic links and files that
/// are not UTF-8 are left out: policies, their config and data are text).
fn read_folder(folder: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let Ok(text) = String::from_utf8(std::fs::read(&path)?) else {
                    continue;
                };
                let rel = path.strip_prefix(folder).expect("under folder");
                files.insert(rel.to_string_lossy().into_owned(), text);
            }
        }
    }
    Ok(files)
}

/// sha256 over the files' paths and contents.
pub fn digest(files: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (path, text) in files {
        h.update(path.as_bytes());
        h.update([0]);
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Makes this process's copy of `group` the stored set, compiling it from the
/// stored files when the stored version differs from the local one. Returns
/// the active set (`None`: nothing stored yet and nothing loaded).
pub async fn refresh(policies: &Policies, group: &str) -> Result<Option<LoadedGroup>, String> {
    let stored_version = policies
        .store
        .policy_set_version(group)
        .await
        .map_err(|e| e.to_string())?;
    let local = policies.policy_groups.get(group);
    match (stored_version, &local) {
        (None, _) => return Ok(local),
        (Some(v), Some(l)) if l.version == v => return Ok(local),
        _ => {}
    }
    let Some(stored) = policies
        .store
        .policy_set(group)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(local);
    };
    if let Some(l) = local.as_ref().filter(|l| l.digest == stored.digest) {
        // Same policies (another commit of the branch): nothing to compile.
        let same = LoadedGroup {
            sha: stored.sha,
            version: stored.version,
            ..l.clone()
        };
        policies.policy_groups.set_loaded(group, same.clone());
        return Ok(Some(same));
    }
    let dir = policies
        .settings
        .config()
        .data_dir
        .join("policy-sets")
        .join(group)
        .join(&stored.digest);
    let (sha, digest, version) = (stored.sha.clone(), stored.digest.clone(), stored.version);
    let compiled = tokio::task::spawn_blocking(move || {
        materialize(&stored, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        compile(&dir)
    })
    .await
    .map_err(|e| e.to_string())?;
    match compiled {
        Ok(set) => {
            tracing::info!(policy_group = %group, sha = %sha, version, "policy group {group} now at {} (stored set)", &sha[..8.min(sha.len())]);
            let loaded = LoadedGroup {
                sha,
                digest,
                version,
                set: Arc::new(set),
            };
            policies.policy_groups.set_loaded(group, loaded.clone());
            Ok(Some(loaded))
        }
        Err(error) => {
            // Another replica compiled it; this one cannot (a different
            // engine during a rolling deploy?). Keep what this one has.
            tracing::error!(policy_group = %group, sha = %sha, "the stored set of policy group {group} does not compile here: {error}");
            policies.policy_groups.set_error(group, &error);
            Ok(local)
        }
    }
}

/// Writes a stored set's files into `dir` (once per digest).
fn materialize(stored: &StoredPolicySet, dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    for (rel, text) in &stored.files {
        let rel = Path::new(rel);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(std::io::Error::other(format!(
                "stored path {} leaves the folder",
                rel.display()
            )));
        }
        let path = tmp.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(path, text)?;
    }
    std::fs::create_dir_all(&tmp)?;
    std::fs::rename(&tmp, dir)
}

/// How often SQLite replicas compare the stored versions with theirs.
const POLL_SQLITE: Duration = Duration::from_secs(2);
/// PostgreSQL replicas are notified; they compare anyway this often, for
/// notifications lost while their listening connection was away.
const POLL_POSTGRES: Duration = Duration::from_secs(30);

/// Keeps this process's sets equal to the stored ones until shutdown:
/// notified on PostgreSQL (LISTEN/NOTIFY), polling on SQLite. `listening`
/// is called once the listener (if any) is connected.
pub async fn watch(policies: Policies, shutdown: CancellationToken, listening: impl FnOnce()) {
    let mut listener = None;
    if policies.store.backend() == crate::store::Backend::Postgres {
        match crate::store::listen_policy_sets(&policies.settings.config().database_url).await {
            Ok(l) => listener = Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "listening for policy set changes failed; polling instead")
            }
        }
    }
    listening();
    let every = if listener.is_some() {
        POLL_POSTGRES
    } else {
        POLL_SQLITE
    };
    loop {
        // `Some(group)`: that group changed; `None`: compare every version
        // (the poll, or the listener reconnected and may have missed some).
        let notified = async {
            match listener.as_mut() {
                Some(l) => l
                    .try_recv()
                    .await
                    .map(|n| n.map(|n| n.payload().to_string())),
                None => std::future::pending().await,
            }
        };
        let which: Option<String> = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = notified => match n {
                Ok(group) => group,
                Err(e) => {
                    tracing::warn!(error = %e, "policy set listener failed");
                    tokio::time::sleep(POLL_SQLITE).await;
                    None
                }
            },
            _ = tokio::time::sleep(every) => None,
        };
        let changed: Vec<String> = match which {
            Some(group) => vec![group],
            None => match policies.store.policy_set_versions().await {
                Ok(versions) => versions
                    .into_iter()
                    .filter(|(g, v)| policies.policy_groups.version(g) != Some(*v))
                    .map(|(g, _)| g)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading policy set versions failed");
                    continue;
                }
            },
        };
        let configured = policies.settings.config();
        for group in changed
            .iter()
            .filter(|g| configured.policy_groups.iter().any(|c| &c.name == *g))
        {
            if let Err(e) = refresh(&policies, group).await {
                tracing::warn!(policy_group = %group, "refreshing policy group {group} failed: {e}");
            }
        }
    }
}

/// The set to evaluate `group` with: the stored one (this process's copy is
/// checked against the stored version first); a group never stored is
/// loaded now. On a database error, this process's copy.
pub async fn active(policies: &Policies, group: &PolicyGroupConfig) -> Option<LoadedGroup> {
    let mut active = refresh(policies, &group.name).await;
    if matches!(active, Ok(None)) {
        active = sync(policies, group)
            .await
            .map(|_| policies.policy_groups.get(&group.name));
    }
    match active {
        Ok(active) => active,
        Err(e) => {
            tracing::warn!(policy_group = %group.name, "policy group {} not available: {e}", group.name);
            policies.policy_groups.get(&group.name)
        }
    }
}

/// Evaluates every group governing `environment` with its [`active`] set. A
/// group that cannot be loaded at all fails the check.
pub async fn evaluate(
    policies: &Policies,
    environment: &str,
    input: &regorus::Value,
) -> Vec<PolicyCheck> {
    let config = policies.settings.config();
    let mut checks = Vec::new();
    for group in config
        .policy_groups
        .iter()
        .filter(|g| g.environments.iter().any(|e| e == environment))
    {
        match active(policies, group).await {
            Some(loaded) => {
                for r in loaded.set.evaluate(input) {
                    checks.push(PolicyCheck {
                        group: group.name.clone(),
                        policy: r.policy,
                        enforcement_level: r.enforcement_level,
                        result: r.result.to_string(),
                        messages: r.messages,
                    });
                }
            }
            None => checks.push(PolicyCheck {
                group: group.name.clone(),
                policy: "(policy group)".into(),
                enforcement_level: EnforcementLevel::HardMandatory,
                result: "errored".into(),
                messages: vec![policies
                    .policy_groups
                    .error(&group.name)
                    .unwrap_or_else(|| "the policy group could not be loaded".into())],
            }),
        }
    }
    checks
}
