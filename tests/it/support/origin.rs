//! A real git repository standing in for the VCS remote (`file://` URL), with
//! commits built straight from file maps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature};

pub struct Origin {
    pub root: PathBuf,
    pub repo: Repository,
}

/// A null_resource configuration; `marker` changes the resource's trigger.
pub fn null_config(marker: &str) -> String {
    format!(
        r#"resource "null_resource" "this" {{
  triggers = {{
    marker = "{marker}"
  }}
}}
"#
    )
}

/// The repository layout the end-to-end tests share.
pub fn standard_files() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    f.insert("README.md".into(), "# infra\n".into());
    f.insert(
        "network/main.tf".into(),
        "module \"vpc\" {\n  source = \"../modules/vpc\"\n}\n".into(),
    );
    f.insert(
        "app/main.tf".into(),
        "module \"service\" {\n  source = \"../modules/service\"\n}\n".into(),
    );
    f.insert("dns/main.tf".into(), null_config("dns-v1"));
    f.insert(
        "modules/service/main.tf".into(),
        "module \"vpc\" {\n  source = \"../vpc\"\n}\n".into(),
    );
    f.insert("modules/vpc/main.tf".into(), null_config("vpc-v1"));
    f
}

impl Origin {
    /// A bare repository at `root/<owner>/<name>.git`.
    pub fn new(root: &Path, full_name: &str) -> Origin {
        let path = root.join(format!("{full_name}.git"));
        std::fs::create_dir_all(&path).unwrap();
        let repo = Repository::init_bare(&path).unwrap();
        Origin {
            root: root.to_path_buf(),
            repo,
        }
    }

    /// `git_url` template for the config.
    pub fn url_template(&self) -> String {
        format!("file://{}/{{repo}}.git", self.root.display())
    }

    /// Commits the whole snapshot `files` with `parents`, and points `refs` at it.
    pub fn commit(
        &self,
        files: &BTreeMap<String, String>,
        parents: &[Oid],
        message: &str,
        refs: &[&str],
    ) -> Oid {
        let tree_id = self.write_tree(files, "");
        let tree = self.repo.find_tree(tree_id).unwrap();
        let sig = Signature::new(
            "Octo Cat",
            "octocat@example.com",
            &git2::Time::new(1_700_000_000, 0),
        )
        .unwrap();
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p).unwrap())
            .collect();
        let parent_refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let id = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &parent_refs)
            .unwrap();
        for r in refs {
            self.repo.reference(r, id, true, message).unwrap();
        }
        id
    }

    fn write_tree(&self, files: &BTreeMap<String, String>, prefix: &str) -> Oid {
        let mut builder = self.repo.treebuilder(None).unwrap();
        let mut subdirs: BTreeMap<String, ()> = BTreeMap::new();
        for (path, content) in files {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            match rest.split_once('/') {
                None => {
                    let blob = self.repo.blob(content.as_bytes()).unwrap();
                    builder.insert(rest, blob, 0o100644).unwrap();
                }
                Some((dir, _)) => {
                    subdirs.insert(dir.to_string(), ());
                }
            }
        }
        for dir in subdirs.keys() {
            let sub = self.write_tree(files, &format!("{prefix}{dir}/"));
            builder.insert(dir, sub, 0o040000).unwrap();
        }
        builder.write().unwrap()
    }
}

impl Origin {
    /// The standard files on `main`, then `edits` on top of them in a commit
    /// that `head_refs` point at. Returns the head's files, base and head.
    pub fn standard_change(
        &self,
        edits: Vec<(&str, String)>,
        message: &str,
        head_refs: &[&str],
    ) -> (BTreeMap<String, String>, Oid, Oid) {
        let base = self.initial();
        let mut files = standard_files();
        for (path, text) in edits {
            files.insert(path.to_string(), text);
        }
        let head = self.commit(&files, &[base], message, head_refs);
        (files, base, head)
    }

    /// The standard files committed on `main` ("initial"); the commit.
    pub fn initial(&self) -> Oid {
        self.commit(&standard_files(), &[], "initial", &["refs/heads/main"])
    }

    /// The standard files with `edits` on top, committed on `main` over
    /// `parent` (a merge, as a push to main sees it); the commit.
    pub fn merge_standard(&self, parent: Oid, edits: Vec<(&str, String)>, message: &str) -> Oid {
        let mut files = standard_files();
        for (path, text) in edits {
            files.insert(path.to_string(), text);
        }
        self.commit(&files, &[parent], message, &["refs/heads/main"])
    }
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
