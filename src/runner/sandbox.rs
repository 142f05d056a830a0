//! The sandbox every terraform/tofu process runs in. A pull request's Terraform
//! is untrusted code (file functions read any path the process can read,
//! `external` data sources and provider binaries run programs), so each process
//! is confined by the kernel, in layers:
//!
//! 1. **A separate unprivileged uid** (`nobody`) when gantry runs as root.
//! 2. **User + PID + mount namespaces with a fresh `/proc`**: the daemon and
//!    every other process are invisible, so `/proc/<pid>/environ` of gantry
//!    cannot even be named.
//! 3. **Landlock** over the filesystem: read (and execute) only the system
//!    directories, the terraform binary, what the CLI config names, and the
//!    run's own plan; write only the checkout, a per-run HOME and TMPDIR, the
//!    plan output directory and the workspace's own plugin cache. Nothing
//!    under `/proc` is readable at all (terraform does not need it), so not
//!    even the sandbox's own processes can read each other's environment.
//!    Where the kernel has it, signals and abstract unix sockets are scoped
//!    to the sandbox too.
//! 4. **`PR_SET_NO_NEW_PRIVS`** and **no capabilities** (bounding, ambient,
//!    effective, permitted and inheritable sets emptied).
//!
//! The daemon itself is non-dumpable from the first line of `main`
//! ([`harden_daemon`]). Children inherit all of it: provider plugins,
//! `external` programs and `local-exec` commands.
//!
//! Entering the sandbox takes a fresh single-threaded process, so the runner
//! starts a helper (`gantry-sandbox sandbox-exec --spec JSON -- terraform
//! ARGS`, or the gantry binary itself with the same arguments when the small
//! one is not installed), which sets the layers up and then executes
//! terraform. [`Sandbox::probe`] runs the helper once at start to learn which
//! layers the host allows; `serve` refuses to start without a sandbox unless
//! the operator sets `runner.sandbox: off`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// The uid and gid sandboxed processes run as when gantry runs as root
/// (`nobody`/`nogroup` on Debian and most distributions).
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;

/// The hidden subcommand of the gantry binary that enters the sandbox.
pub const HELPER_SUBCOMMAND: &str = "sandbox-exec";

/// The small helper binary built beside `gantry` (`src/bin/gantry-sandbox.rs`).
pub const HELPER_BINARY: &str = "gantry-sandbox";

/// The daemon-environment variable that names the gantry binary used as the
/// helper (tests point it at the built binary); default: this executable.
pub const HELPER_ENV: &str = "GANTRY_SANDBOX_HELPER";

/// System paths every terraform process may read and execute. `/etc` is
/// listed file by file (TLS roots, name resolution, users), never whole, so a
/// config file or key kept under `/etc` stays out of reach.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/mime.types",
    "/dev/urandom",
    "/dev/random",
];

/// Devices terraform may also write to.
const DEVICES_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the sandbox helper {helper}: {message}")]
    Helper { helper: String, message: String },
    #[error("the kernel cannot sandbox terraform here: {0}")]
    Unavailable(String),
    #[error("the sandbox would expose {protected} to terraform: it lies under {granted}, which runs may read; move it elsewhere")]
    Exposed { protected: String, granted: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Which layers are in force, as the helper found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// User, PID and mount namespaces with a fresh `/proc`.
    pub namespaces: bool,
    /// Landlock: "fully enforced" or "partially enforced", with the ABI.
    pub landlock: String,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
    /// The uid terraform runs as (outside any namespace).
    pub uid: u32,
}

impl std::fmt::Display for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        parts.push(if self.namespaces {
            "user+pid+mount namespaces with a fresh /proc".to_string()
        } else {
            "no namespaces (not allowed by this host)".to_string()
        });
        parts.push(format!("landlock {}", self.landlock));
        if self.no_new_privs {
            parts.push("no_new_privs".into());
        }
        if self.capabilities_dropped {
            parts.push("no capabilities".into());
        }
        parts.push(format!("uid {}", self.uid));
        f.write_str(&parts.join(", "))
    }
}

/// What one sandboxed process may touch, besides the system paths.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Read and execute (files or directories).
    pub read: Vec<PathBuf>,
    /// Read, write and execute (directories).
    pub write: Vec<PathBuf>,
}

/// What the helper is told (the `--spec` argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    namespaces: bool,
    /// Switch to this uid/gid first (only when running as root).
    uid: Option<u32>,
    gid: Option<u32>,
    /// Probe: set every layer up, print the [`Layers`] as JSON, exit.
    report: bool,
}

impl Spec {
    fn new(
        read: Vec<PathBuf>,
        write: Vec<PathBuf>,
        namespaces: bool,
        switch_uid: bool,
        report: bool,
    ) -> Spec {
        Spec {
            read,
            write,
            namespaces,
            uid: switch_uid.then_some(SANDBOX_UID),
            gid: switch_uid.then_some(SANDBOX_GID),
            report,
        }
    }

    /// `HELPER sandbox-exec --spec JSON`, to which the program is appended.
    fn command(&self, helper: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(helper);
        cmd.arg(HELPER_SUBCOMMAND)
            .arg("--spec")
            .arg(serde_json::to_string(self).expect("spec serializes"));
        cmd
    }
}

/// A probed, working sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
    layers: Layers,
    /// Whether gantry runs as root, so runs switch to [`SANDBOX_UID`].
    switch_uid: bool,
}

impl Sandbox {
    /// The helper binary: `GANTRY_SANDBOX_HELPER` from the daemon environment;
    /// else `gantry-sandbox` beside this executable (small, so it starts
    /// quickly); else this executable itself (`gantry sandbox-exec`).
    pub fn helper_path(daemon_env: &dyn Fn(&str) -> Option<String>) -> std::io::Result<PathBuf> {
        if let Some(p) = daemon_env(HELPER_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()?;
        let small = exe.with_file_name(HELPER_BINARY);
        Ok(if small.is_file() { small } else { exe })
    }

    /// Finds out which layers this host allows by entering the sandbox once.
    /// Namespaces are used where the host allows them; Landlock,
    /// `no_new_privs` and dropping every capability are required.
    pub async fn probe(helper: &Path) -> Result<Sandbox, SandboxError> {
        let switch_uid = nix::unistd::geteuid().is_root();
        let with_ns = Self::run_probe(helper, true, switch_uid).await;
        let layers = match with_ns {
            Ok(l) => l,
            Err(first) => match Self::run_probe(helper, false, switch_uid).await {
                Ok(l) => {
                    tracing::warn!(error = %first, "namespaces are not available for the sandbox; relying on landlock, a separate uid and no capabilities");
                    l
                }
                Err(_) => return Err(first),
            },
        };
        if !layers.no_new_privs || !layers.capabilities_dropped {
            return Err(SandboxError::Unavailable(format!(
                "the helper could not drop privileges ({layers})"
            )));
        }
        Ok(Sandbox {
            helper: helper.to_path_buf(),
            layers,
            switch_uid,
        })
    }

    async fn run_probe(
        helper: &Path,
        namespaces: bool,
        switch_uid: bool,
    ) -> Result<Layers, SandboxError> {
        let spec = Spec::new(Vec::new(), Vec::new(), namespaces, switch_uid, true);
        let out = spec
            .command(helper)
            .env_clear()
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| SandboxError::Helper {
                helper: helper.display().to_string(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim().trim_start_matches("gantry sandbox: ");
            return Err(SandboxError::Unavailable(if err.is_empty() {
                format!("the helper exited with {}", out.status)
            } else {
                err.to_string()
            }));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| SandboxError::Helper {
            helper: helper.display().to_string(),
            message: format!("unreadable probe answer ({e}); is it a gantry binary?"),
        })
    }

    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The uid sandboxed processes run as, when it differs from gantry's.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.switch_uid.then_some((SANDBOX_UID, SANDBOX_GID))
    }

    /// A command that runs `program args…` inside the sandbox, confined to
    /// `confinement` plus the system paths.
    pub fn command(
        &self,
        program: &Path,
        args: &[&str],
        confinement: &Confinement,
    ) -> tokio::process::Command {
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        read.push(program.to_path_buf());
        read.extend(confinement.read.iter().cloned());
        let spec = Spec::new(
            read,
            confinement.write.clone(),
            self.layers.namespaces,
            self.switch_uid,
            false,
        );
        let mut cmd = spec.command(&self.helper);
        cmd.arg("--").arg(program).args(args);
        cmd
    }

    /// Gives the sandbox's uid the directories it writes to (recursively),
    /// when gantry runs as root and runs switch to an unprivileged uid.
    pub fn hand_over(&self, dirs: &[&Path]) -> std::io::Result<()> {
        let Some((uid, gid)) = self.run_as() else {
            return Ok(());
        };
        for dir in dirs {
            chown_tree(dir, uid, gid)?;
        }
        Ok(())
    }
}

/// Makes sure the sandbox's uid can reach the run directories under
/// `data_dir` (search permission only, no listing): gives `data_dir` and
/// `data_dir/work` `o+x`, and checks every ancestor has it.
pub fn ensure_traversable(data_dir: &Path, uid: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = std::path::absolute(data_dir)?;
    let work = data_dir.join("work");
    std::fs::create_dir_all(&work)?;
    // Search only for others: no listing of the data dir, and the database,
    // mirrors and artifacts below it stay out of reach by permissions too.
    for dir in [&data_dir, &work] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    for ancestor in data_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(SandboxError::Unavailable(format!(
                "terraform runs as uid {uid}, which cannot reach data_dir {}: {} is not searchable by others (chmod o+x it, or move data_dir)",
                data_dir.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Refuses a confinement under which one of `protected` (gantry's config
/// file, its key files, its data dir, …) would be readable: Landlock grants
/// whole trees, so a protected path below a granted one would leak.
pub fn check_exposure(granted: &[PathBuf], protected: &[PathBuf]) -> Result<(), SandboxError> {
    let system: Vec<PathBuf> = SYSTEM_READ
        .iter()
        .chain(DEVICES_RW)
        .map(PathBuf::from)
        .collect();
    for p in protected {
        let p = canonical(p);
        for g in granted.iter().chain(system.iter()) {
            let g = canonical(g);
            if p.starts_with(&g) {
                return Err(SandboxError::Exposed {
                    protected: p.display().to_string(),
                    granted: g.display().to_string(),
                });
            }
        }
    }
    Ok(())
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Marks the daemon non-dumpable, so no process without `CAP_SYS_PTRACE` over
/// it can read its memory or `/proc/<pid>/environ`. First line of `main`.
pub fn harden_daemon() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("gantry: cannot mark the process non-dumpable: {e}");
    }
}

/// `gantry sandbox-exec --spec JSON -- PROGRAM ARGS…`: sets up every layer,
/// then executes the program (or, for a probe, reports the layers). Runs in a
/// fresh single-threaded process: nothing here may start threads.
pub fn helper_main(spec: &str, argv: &[OsString]) -> ExitCode {
    match enter(spec, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gantry sandbox: {e}");
            ExitCode::from(126)
        }
    }
}

fn enter(spec: &str, argv: &[OsString]) -> Result<ExitCode, String> {
    use nix::sched::{unshare, CloneFlags};
    use nix::unistd::{fork, ForkResult, Gid, Uid};

    let spec: Spec = serde_json::from_str(spec).map_err(|e| format!("bad --spec: {e}"))?;
    if !spec.report && argv.is_empty() {
        return Err("no program to run".into());
    }
    if let (Some(uid), Some(gid)) = (spec.uid, spec.gid) {
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
            nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
            nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
            nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        }
    }
    // If gantry dies, so does the run: nothing keeps running unwatched. (Set
    // after the uid switch, which clears it.)
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("prctl: {e}"))?;
    if spec.namespaces {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        // A process that changed its uid is non-dumpable, and a non-dumpable
        // process cannot write its own uid_map.
        nix::sys::prctl::set_dumpable(true).map_err(|e| format!("prctl: {e}"))?;
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("unshare(user, mount, pid): {e}"))?;
        std::fs::write("/proc/self/setgroups", "deny")
            .map_err(|e| format!("/proc/self/setgroups: {e}"))?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))
            .map_err(|e| format!("/proc/self/uid_map: {e}"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
            .map_err(|e| format!("/proc/self/gid_map: {e}"))?;
        // The next child is PID 1 of the new PID namespace.
        // SAFETY: this process is single-threaded (the helper starts no threads).
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Parent { child } => return Ok(wait_for(child)),
            ForkResult::Child => {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(|e| format!("prctl: {e}"))?;
                mount_fresh_proc()?;
            }
        }
    }
    let layers = confine(&spec)?;
    if spec.report {
        println!(
            "{}",
            serde_json::to_string(&layers).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| "NUL in an argument".to_string()))
        .collect::<Result<_, _>>()?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    Err(format!("cannot run {}: {err}", argv[0].to_string_lossy()))
}

/// In the helper, after the fork: waits for the sandboxed child and exits
/// with its status. Interrupts reach the child directly (same process
/// group), so this process ignores them and outlives it.
fn wait_for(child: nix::unistd::Pid) -> ExitCode {
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitCode::from(code as u8),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ExitCode::from(128 + sig as u8),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("gantry sandbox: waitpid: {e}");
                return ExitCode::from(126);
            }
        }
    }
}

/// A private mount namespace with a `/proc` of the new PID namespace only.
fn mount_fresh_proc() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting a fresh /proc: {e}"))
}

/// Landlock, `no_new_privs`, and no capabilities: the last steps before exec.
fn confine(spec: &Spec) -> Result<Layers, String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, LandlockStatus, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let ll_err = |e: landlock::RulesetError| format!("landlock: {e}");
    let status = Ruleset::default()
        .handle_access(all)
        .map_err(ll_err)?
        .scope(Scope::from_all(ABI::V6))
        .map_err(ll_err)?
        .create()
        .map_err(ll_err)?
        .add_rules(path_beneath_rules(&spec.read, read))
        .map_err(ll_err)?
        .add_rules(path_beneath_rules(DEVICES_RW, file_rw))
        .map_err(ll_err)?
        .add_rules(path_beneath_rules(&spec.write, all))
        .map_err(ll_err)?
        .restrict_self()
        .map_err(ll_err)?;
    let landlock = match (&status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, LandlockStatus::NotEnabled) => {
            return Err("landlock is built into the kernel but not enabled (add `landlock` to the lsm= boot parameter)".into())
        }
        (RulesetStatus::NotEnforced, _) => {
            return Err("landlock is not available in this kernel (Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK)".into())
        }
        (RulesetStatus::FullyEnforced, l) => format!("fully enforced{}", abi_suffix(l)),
        (_, l) => format!("partially enforced{}", abi_suffix(l)),
    };
    let no_new_privs = status.no_new_privs;
    if !no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    let capabilities_dropped = drop_capabilities()?;
    Ok(Layers {
        namespaces: spec.namespaces,
        landlock,
        no_new_privs: true,
        capabilities_dropped,
        uid: nix::unistd::getuid().as_raw(),
    })
}

fn abi_suffix(status: landlock::LandlockStatus) -> String {
    match status {
        landlock::LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => match kernel_abi {
            Some(k) => format!(" (kernel ABI {k})"),
            None => format!(" (ABI {})", effective_abi as i32),
        },
        _ => String::new(),
    }
}

/// Empties every capability set. Returns whether the effective and permitted
/// sets are empty afterwards.
fn drop_capabilities() -> Result<bool, String> {
    use caps::CapSet;
    let _ = caps::clear(None, CapSet::Ambient);
    // Dropping from the bounding set needs CAP_SETPCAP, which a process in
    // its own user namespace (or root) has; others have nothing to drop.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("clearing capabilities: {e}"))?;
    }
    let empty = caps::read(None, CapSet::Effective)
        .map(|c| c.is_empty())
        .unwrap_or(false)
        && caps::read(None, CapSet::Permitted)
            .map(|c| c.is_empty())
            .unwrap_or(false);
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_path_under_a_granted_one_is_refused() {
        let granted = vec![PathBuf::from("/srv/tools")];
        assert!(check_exposure(&granted, &[PathBuf::from("/srv/data/gantry.yaml")]).is_ok());
        let err = check_exposure(&granted, &[PathBuf::from("/srv/tools/key.pem")]).unwrap_err();
        assert!(err.to_string().contains("/srv/tools/key.pem"), "{err}");
        // System paths count too: a key kept under /usr would be readable.
        assert!(check_exposure(&[], &[PathBuf::from("/usr/local/etc/gantry.yaml")]).is_err());
        // /etc is granted file by file, so a config under /etc/gantry is safe.
        assert!(check_exposure(&[], &[PathBuf::from("/etc/gantry/gantry.yaml")]).is_ok());
    }

    #[test]
    fn layers_read_as_a_sentence() {
        let l = Layers {
            namespaces: true,
            landlock: "fully enforced (ABI 5)".into(),
            no_new_privs: true,
            capabilities_dropped: true,
            uid: 65534,
        };
        assert_eq!(
            l.to_string(),
            "user+pid+mount namespaces with a fresh /proc, landlock fully enforced (ABI 5), no_new_privs, no capabilities, uid 65534"
        );
    }
}
