//! Git: one bare mirror per repository under `data_dir/git`, fetched
//! incrementally (only the refs a run needs), changed files computed from the
//! commits themselves, and clean checkouts of an exact commit for runs.
//!
//! git2 is blocking; the async entry points run it on the blocking pool and
//! serialize work on one mirror with a per-mirror lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{build::CheckoutBuilder, FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository};
use secrecy::ExposeSecret;

use crate::vcs::GitCredentials;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git fetch of {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("commit {0} is not in the mirror")]
    MissingCommit(String),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The mirror cache.
#[derive(Clone)]
pub struct Mirrors {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A mirror that has been fetched; cheap to clone, opened per operation.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub path: PathBuf,
}

impl Mirrors {
    pub fn new(data_dir: &Path) -> Mirrors {
        Mirrors {
            root: data_dir.join("git"),
            locks: Arc::default(),
        }
    }

    /// `data_dir/git/<provider>/<owner>/<name>.git`
    pub fn path_for(&self, provider_id: &str, repo: &str) -> PathBuf {
        let mut p = self.root.join(provider_id);
        for seg in repo.split('/') {
            p.push(seg.replace("..", "_"));
        }
        p.set_extension("git");
        p
    }

    fn lock_for(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("mirror lock map poisoned");
        locks.entry(path.to_path_buf()).or_default().clone()
    }

    /// Fetches `refs` (full ref names, e.g. `refs/heads/main`,
    /// `refs/pull/7/head`, or `src:dst` to rename) from `url` into the mirror,
    /// creating it on first use.
    pub async fn fetch(
        &self,
        provider_id: &str,
        repo: &str,
        url: &str,
        credentials: Option<GitCredentials>,
        refs: &[String],
    ) -> Result<Mirror, GitError> {
        let path = self.path_for(provider_id, repo);
        let lock = self.lock_for(&path);
        let _guard = lock.lock().await;
        let url = url.to_string();
        let refs = refs.to_vec();
        let p = path.clone();
        tokio::task::spawn_blocking(move || fetch_blocking(&p, &url, credentials.as_ref(), &refs))
            .await
            .map_err(|e| GitError::Io(std::io::Error::other(e)))??;
        Ok(Mirror { path })
    }
}

impl Mirrors {
    /// Fetches `branch` of `repo` through `provider` and resolves its head.
    pub async fn fetch_branch(
        &self,
        provider: &dyn crate::vcs::VcsProvider,
        repo: &str,
        branch: &str,
    ) -> anyhow::Result<(Mirror, String)> {
        let branch_ref = format!("refs/heads/{branch}");
        let creds = provider.git_credentials(repo).await?;
        let mirror = self
            .fetch(
                provider.id(),
                repo,
                &provider.clone_url(repo),
                creds,
                std::slice::from_ref(&branch_ref),
            )
            .await?;
        let sha = mirror.resolve(&branch_ref)?.to_string();
        Ok((mirror, sha))
    }
}

fn fetch_blocking(
    path: &Path,
    url: &str,
    credentials: Option<&GitCredentials>,
    refs: &[String],
) -> Result<(), GitError> {
    let repo = match Repository::open_bare(path) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(path)?;
            Repository::init_bare(path)?
        }
    };
    let mut callbacks = RemoteCallbacks::new();
    let mut tried = false;
    callbacks.credentials(move |_url, _user, _allowed| match credentials {
        Some(c) if !tried => {
            tried = true;
            git2::Cred::userpass_plaintext(&c.username, c.password.expose_secret())
        }
        _ => Err(git2::Error::from_str("authentication failed")),
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts.download_tags(git2::AutotagOption::None);
    // `src:dst` maps a ref of another repository (a fork) to a local name.
    let refspecs: Vec<String> = refs
        .iter()
        .map(|r| match r.contains(':') {
            true => format!("+{r}"),
            false => format!("+{r}:{r}"),
        })
        .collect();
    let mut remote = repo.remote_anonymous(url)?;
    remote
        .fetch(&refspecs, Some(&mut opts), None)
        .map_err(|e| GitError::Fetch {
            // Never echo credentials embedded in a URL.
            url: redact_url(url),
            message: e.message().to_string(),
        })?;
    Ok(())
}

/// The refspec that fetches `git_ref` of a fork into the base repository's
/// mirror under gantry's own name for pull request `pr`.
pub fn fork_refspec(git_ref: &str, pr: Option<i64>) -> String {
    format!("{git_ref}:refs/gantry/forks/{}/head", pr.unwrap_or(0))
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl Mirror {
    pub fn open(&self) -> Result<Repository, GitError> {
        Ok(Repository::open_bare(&self.path)?)
    }

    /// Resolves a full sha or a ref name to a commit id.
    pub fn resolve(&self, rev: &str) -> Result<Oid, GitError> {
        let repo = self.open()?;
        let obj = repo
            .revparse_single(rev)
            .map_err(|_| GitError::MissingCommit(rev.to_string()))?;
        let commit = obj
            .peel_to_commit()
            .map_err(|_| GitError::MissingCommit(rev.to_string()))?;
        Ok(commit.id())
    }

    pub fn has_commit(&self, sha: &str) -> bool {
        self.resolve(sha).is_ok()
    }

    /// Files changed on `head` since it forked from `base`: the diff of
    /// merge-base(base, head)..head, as repository-relative paths (both sides of
    /// a rename). Without a common ancestor, every file of `head`.
    pub fn changed_since_fork(&self, base: &str, head: &str) -> Result<Vec<String>, GitError> {
        let repo = self.open()?;
        let head_id = self.resolve(head)?;
        let base_id = self.resolve(base)?;
        let fork = repo.merge_base(base_id, head_id).ok();
        diff_paths(&repo, fork, head_id)
    }

    /// Files changed between two commits (`from` may be absent: everything).
    pub fn changed_between(&self, from: Option<&str>, to: &str) -> Result<Vec<String>, GitError> {
        let repo = self.open()?;
        let to_id = self.resolve(to)?;
        let from_id = match from {
            Some(f) => Some(self.resolve(f)?),
            None => None,
        };
        diff_paths(&repo, from_id, to_id)
    }

    /// Writes the tree of `sha` into `dest` (created; must not exist or be empty).
    pub fn checkout(&self, sha: &str, dest: &Path) -> Result<(), GitError> {
        let repo = self.open()?;
        let id = self.resolve(sha)?;
        let commit = repo.find_commit(id)?;
        std::fs::create_dir_all(dest)?;
        let mut cb = CheckoutBuilder::new();
        cb.target_dir(dest)
            .force()
            .recreate_missing(true)
            .update_index(false);
        repo.checkout_tree(commit.as_object(), Some(&mut cb))?;
        Ok(())
    }

    /// The commit's message (first line) and author name.
    pub fn commit_info(&self, sha: &str) -> Option<(String, String)> {
        let repo = self.open().ok()?;
        let c = repo.find_commit(self.resolve(sha).ok()?).ok()?;
        let message = c.summary().unwrap_or_default().to_string();
        let author = c.author().name().unwrap_or_default().to_string();
        Some((message, author))
    }

    /// Reads files of one commit without checking it out.
    pub fn tree_at(&self, sha: &str) -> Result<CommitTree, GitError> {
        let repo = self.open()?;
        let id = self.resolve(sha)?;
        Ok(CommitTree { repo, commit: id })
    }
}

fn diff_paths(repo: &Repository, from: Option<Oid>, to: Oid) -> Result<Vec<String>, GitError> {
    let to_tree = repo.find_commit(to)?.tree()?;
    let from_tree = match from {
        Some(f) => Some(repo.find_commit(f)?.tree()?),
        None => None,
    };
    let diff = repo.diff_tree_to_tree(from_tree.as_ref(), Some(&to_tree), None)?;
    let mut out = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(p) = file.path().and_then(|p| p.to_str()) {
                if !out.iter().any(|o: &String| o == p) {
                    out.push(p.to_string());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of one commit, read straight from the object database.
pub struct CommitTree {
    repo: Repository,
    commit: Oid,
}

impl crate::planner::SourceTree for CommitTree {
    fn tf_files(&self, dir: &str) -> Vec<(String, String)> {
        let Ok(commit) = self.repo.find_commit(self.commit) else {
            return Vec::new();
        };
        let Ok(root) = commit.tree() else {
            return Vec::new();
        };
        let tree = if dir.is_empty() {
            root
        } else {
            match root
                .get_path(Path::new(dir))
                .and_then(|e| e.to_object(&self.repo))
                .and_then(|o| o.peel_to_tree())
            {
                Ok(t) => t,
                Err(_) => return Vec::new(),
            }
        };
        let mut out = Vec::new();
        for entry in tree.iter() {
            let Some(name) = entry.name() else { continue };
            if !name.ends_with(".tf") || entry.kind() != Some(ObjectType::Blob) {
                continue;
            }
            if let Ok(blob) = self.repo.find_blob(entry.id()) {
                if let Ok(text) = std::str::from_utf8(blob.content()) {
                    out.push((name.to_string(), text.to_string()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://x:secret@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(redact_url("file:///tmp/a.git"), "file:///tmp/a.git");
    }
}
