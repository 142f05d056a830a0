//! The checkout a remote job runs, as the `tar.gz` a replica hands an agent
//! (`GET /api/agent/jobs/{id}/source`): [`pack`] on the replica, [`unpack`]
//! on the agent.
//!
//! The archive comes over the network, so the agent trusts nothing in it:
//! [`unpack`] refuses absolute paths, `..` components, hard links, devices
//! and FIFOs, and symlinks that point (or, once every entry is written,
//! resolve) outside the target directory. A refused archive leaves the
//! target directory to the caller to delete; nothing outside it was written.
//!
//! [`pack`] is deterministic (entries sorted, owner and times zeroed), keeps
//! the executable bit and relative symlinks, and leaves out `.git`: the agent
//! never gets repository metadata, only the commit's files.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive holds an entry the agent will not write.
    #[error("refused archive entry {path}: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("archive i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Directories [`pack`] leaves out, at any depth.
const SKIPPED_DIRS: &[&str] = &[".git"];

/// `dir`'s files as a gzip-compressed tar: paths relative to `dir`, sorted,
/// with zeroed owners and times, so the same tree packs to the same bytes.
pub fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    for rel in entries {
        tar.append_path_with_name(dir.join(&rel), &rel)?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// Every path under `root/rel`, relative to `root`, parents before children,
/// siblings by name; a symlink is an entry, never followed.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    children.sort();
    for name in children {
        let child = rel.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&child))?;
        if meta.is_dir() {
            if SKIPPED_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            out.push(child.clone());
            walk(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Writes the archive's entries under `dir` (created if missing), refusing
/// anything that would reach outside it (see the module docs).
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(dir)?;
    let root = std::fs::canonicalize(dir)?;
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let mut links = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let refuse = |reason| ArchiveError::Refused {
            path: path.display().to_string(),
            reason,
        };
        let rel = relative_inside(&path).ok_or_else(|| refuse("the path leaves the directory"))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| refuse("a symlink without a target"))?
                    .into_owned();
                let parent = rel.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || relative_inside(&parent.join(&target)).is_none() {
                    return Err(refuse("the symlink points outside the directory"));
                }
                links.push(rel.clone());
            }
            // Metadata of the archive itself, not a file.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            _ => return Err(refuse("only files, directories and symlinks are allowed")),
        }
        // `unpack_in` also refuses to write through a symlink that leads out.
        if !entry.unpack_in(&root)? {
            return Err(refuse("the path leaves the directory"));
        }
    }
    // A chain of symlinks can leave the directory although each one, read
    // alone, stays inside: check where each one really leads.
    for link in links {
        match std::fs::canonicalize(root.join(&link)) {
            Ok(real) if !real.starts_with(&root) => {
                return Err(ArchiveError::Refused {
                    path: link.display().to_string(),
                    reason: "the symlink resolves outside the directory",
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// `path` with `.` dropped and `..` applied, when it is relative and never
/// climbs above its start; `None` otherwise.
fn relative_inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// The archive's bytes, decompressed.
    fn raw_tar(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut out).expect("gzip");
        out
    }

    fn gz_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    /// A raw header whose name is written as is (the builder's own setters
    /// refuse `..` and absolute paths, which is what an attacker would send).
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        if !link.is_empty() {
            let field = &mut h.as_old_mut().linkname;
            field[..link.len()].copy_from_slice(link.as_bytes());
        }
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"pwned"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn round_trip_keeps_files_modes_and_inner_symlinks_but_not_git() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("net/modules/vpc")).unwrap();
        std::fs::write(
            s.join("net/main.tf"),
            "resource \"null_resource\" \"a\" {}\n",
        )
        .unwrap();
        std::fs::write(s.join("net/modules/vpc/main.tf"), "# vpc\n").unwrap();
        std::fs::write(s.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(s.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(s.join("empty")).unwrap();
        symlink("../net/main.tf", s.join("empty/link.tf")).unwrap();
        std::fs::create_dir_all(s.join(".git/objects")).unwrap();
        std::fs::write(s.join(".git/config"), "[credential]\n").unwrap();

        let bytes = pack(s).unwrap();
        assert_eq!(bytes, pack(s).unwrap(), "packing is deterministic");
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path().join("src");
        unpack(&bytes, &d).unwrap();

        assert_eq!(
            std::fs::read_to_string(d.join("net/modules/vpc/main.tf")).unwrap(),
            "# vpc\n"
        );
        let mode = std::fs::metadata(d.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit kept: {mode:o}");
        assert_eq!(
            std::fs::read_link(d.join("empty/link.tf")).unwrap(),
            Path::new("../net/main.tf")
        );
        assert!(std::fs::read_to_string(d.join("empty/link.tf"))
            .unwrap()
            .contains("null_resource"));
        assert!(!d.join(".git").exists(), "no repository metadata");
        assert!(!String::from_utf8_lossy(&raw_tar(&bytes)).contains("[credential]"));
    }

    fn refused(bytes: &[u8]) -> (String, tempfile::TempDir) {
        let outer = tempfile::tempdir().unwrap();
        let err = unpack(bytes, &outer.path().join("a/src")).expect_err("must be refused");
        assert!(matches!(err, ArchiveError::Refused { .. }), "{err}");
        (err.to_string(), outer)
    }

    #[test]
    fn paths_leaving_the_directory_are_refused() {
        let (err, outer) = refused(&gz_tar(|b| {
            raw_entry(b, "ok.tf", tar::EntryType::Regular, "");
            raw_entry(b, "../../escaped.tf", tar::EntryType::Regular, "");
        }));
        assert!(err.contains("escaped.tf"), "{err}");
        assert!(!outer.path().join("escaped.tf").exists());

        let (_, _) = refused(&gz_tar(|b| {
            raw_entry(b, "/tmp/gantry-archive-abs.tf", tar::EntryType::Regular, "")
        }));
        assert!(!Path::new("/tmp/gantry-archive-abs.tf").exists());

        refused(&gz_tar(|b| {
            raw_entry(b, "a/../../x", tar::EntryType::Regular, "")
        }));
    }

    #[test]
    fn symlinks_pointing_outside_are_refused() {
        let (err, _) = refused(&gz_tar(|b| {
            raw_entry(b, "etc", tar::EntryType::Symlink, "/etc")
        }));
        assert!(err.contains("symlink"), "{err}");
        refused(&gz_tar(|b| {
            raw_entry(b, "up", tar::EntryType::Symlink, "../..")
        }));
        // Each link alone stays inside; followed one after the other they
        // lead out.
        let (err, _) = refused(&gz_tar(|b| {
            raw_entry(b, "sub/", tar::EntryType::Directory, "");
            raw_entry(b, "sub/up", tar::EntryType::Symlink, "..");
            raw_entry(b, "l", tar::EntryType::Symlink, "sub");
            raw_entry(b, "m", tar::EntryType::Symlink, "l/up/..");
        }));
        assert!(err.contains("resolves outside"), "{err}");
    }

    #[test]
    fn hard_links_and_devices_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let bytes = gz_tar(|b| {
            raw_entry(b, "hard", tar::EntryType::Link, "/etc/passwd");
        });
        let err = unpack(&bytes, &outer.path().join("src")).expect_err("hard link");
        assert!(err.to_string().contains("only files"), "{err}");
        let bytes = gz_tar(|b| {
            raw_entry(b, "dev", tar::EntryType::Char, "");
        });
        let err = unpack(&bytes, &outer.path().join("src2")).expect_err("device");
        assert!(err.to_string().contains("only files"), "{err}");
    }

    #[test]
    fn writing_through_an_escaping_symlink_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("victim")).unwrap();
        // An entry whose parent is an (escaping) symlink already on disk.
        let d = outer.path().join("src");
        std::fs::create_dir(&d).unwrap();
        symlink("../victim", d.join("via")).unwrap();
        let bytes = gz_tar(|b| raw_entry(b, "via/planted.tf", tar::EntryType::Regular, ""));
        assert!(unpack(&bytes, &d).is_err());
        assert!(!outer.path().join("victim/planted.tf").exists());
    }
}
