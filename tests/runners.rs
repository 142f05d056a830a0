//! `runners/` (how gantry is deployed), checked offline: the Kubernetes
//! manifests parse and carry what runners/README.md promises, the systemd
//! units are hardened without breaking gantry's sandbox, the Containerfile
//! builds a non-root image with a pinned, checksummed terraform, and every
//! gantry command line in them parses with gantry's own CLI. Tools that may be
//! missing (`systemd-analyze`, `kubernetes-validate`) are used when present;
//! a check skipped for want of one says so on stderr.
//!
//! Its own test binary: it reads files and needs no test app.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The runners/ files of one kind, sorted, as paths relative to the root.
fn files(dir: &str, ext: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

/// A tool from `$env_var` or `PATH`, if there is one.
fn tool(env_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Parses a gantry command line with gantry's own CLI. `agent` lines are
/// skipped (with a note) while this build has no `agent` subcommand.
fn check_cli(origin: &str, args: &[String]) {
    if args.first().map(String::as_str) == Some("agent")
        && gantry::cli::Cli::command()
            .find_subcommand("agent")
            .is_none()
    {
        eprintln!("skipped: {origin}: this build has no `gantry agent` to parse {args:?} with");
        return;
    }
    let argv = std::iter::once("gantry".to_string()).chain(args.iter().cloned());
    if let Err(e) = gantry::cli::Cli::try_parse_from(argv) {
        panic!("{origin}: `gantry {}` does not parse:\n{e}", args.join(" "));
    }
}

// ---------------------------------------------------------------- Kubernetes

/// Every document of every runners/kubernetes/*.yaml, with its file.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in files("runners/kubernetes", ".yaml") {
        let text = read(&file);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if !v.is_null() {
                out.push((file.clone(), v));
            }
        }
    }
    assert!(!out.is_empty(), "runners/kubernetes holds no manifest");
    out
}

/// `v` at a dotted path (`spec.template.spec`), or Null.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.').fold(v, |v, k| v.get(k).unwrap_or(&NULL))
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or_default()
}

fn kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| str_at(v, "kind") == kind)
        .collect()
}

fn named<'a>(docs: &'a [(String, Value)], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|v| str_at(v, "metadata.name") == name)
        .unwrap_or_else(|| panic!("no {k} named {name} in runners/kubernetes"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    seq(v)
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect()
}

/// Whether `selector` (matchLabels) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(m) = selector.as_mapping() else {
        return false;
    };
    !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The seconds of a Deployment's termination grace.
fn grace_seconds(deploy: &Value) -> u64 {
    at(deploy, "spec.template.spec.terminationGracePeriodSeconds")
        .as_u64()
        .unwrap_or_else(|| {
            panic!(
                "{} sets no terminationGracePeriodSeconds",
                str_at(deploy, "metadata.name")
            )
        })
}

/// The value that follows `flag` in a command line.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

#[test]
fn kubernetes_manifests_parse_and_carry_the_promised_fields() {
    let docs = manifests();
    for (file, v) in &docs {
        for key in ["apiVersion", "kind", "metadata.name"] {
            assert!(
                !str_at(v, key).is_empty(),
                "{file}: a document has no {key}"
            );
        }
    }
    let secrets: BTreeMap<&str, &Value> = kind(&docs, "Secret")
        .into_iter()
        .map(|s| (str_at(s, "metadata.name"), s))
        .collect();
    let deployments = kind(&docs, "Deployment");
    let (agents, replicas): (Vec<&Value>, Vec<&Value>) = deployments.iter().partition(|d| {
        strings(&at(d, "spec.template.spec.containers")[0]["args"]).first()
            == Some(&"agent".to_string())
    });
    assert_eq!(replicas.len(), 1, "one replica Deployment");
    assert!(!agents.is_empty(), "an agent-pool Deployment");

    // What every pod promises: non-root, no escalation, no API token mounted,
    // secrets only from Secrets that exist, with the key named.
    for d in &deployments {
        let name = str_at(d, "metadata.name");
        let pod = at(d, "spec.template.spec");
        assert!(
            selects(
                at(d, "spec.selector.matchLabels"),
                at(d, "spec.template.metadata.labels")
            ),
            "{name}: its selector selects its own pods"
        );
        assert_eq!(
            at(pod, "securityContext.runAsNonRoot").as_bool(),
            Some(true),
            "{name}: runAsNonRoot"
        );
        assert_ne!(at(pod, "securityContext.runAsUser").as_u64(), Some(0));
        assert_eq!(
            at(pod, "automountServiceAccountToken").as_bool(),
            Some(false),
            "{name}: gantry needs no Kubernetes API token"
        );
        for c in seq(&pod["containers"]) {
            assert_eq!(
                at(c, "securityContext.allowPrivilegeEscalation").as_bool(),
                Some(false),
                "{name}: allowPrivilegeEscalation: false"
            );
            assert_eq!(strings(at(c, "securityContext.capabilities.drop")), ["ALL"]);
            for e in seq(&c["env"]) {
                let r = at(e, "valueFrom.secretKeyRef");
                if r.is_null() {
                    continue;
                }
                let (secret, key) = (str_at(r, "name"), str_at(r, "key"));
                let s = secrets
                    .get(secret)
                    .unwrap_or_else(|| panic!("{name}: Secret {secret} is not in the manifests"));
                assert!(
                    at(s, "stringData").get(key).is_some() || at(s, "data").get(key).is_some(),
                    "{name}: Secret {secret} has no key {key}"
                );
            }
            check_cli(&format!("Deployment {name}"), &strings(&c["args"]));
        }
    }

    // The replicas: PostgreSQL, probes, drain time, a budget, a Service.
    let replica = replicas[0];
    let pod = at(replica, "spec.template.spec");
    let c = &seq(&pod["containers"])[0];
    assert!(at(replica, "spec.replicas").as_u64().unwrap_or(1) >= 2);
    assert_eq!(str_at(c, "readinessProbe.httpGet.path"), "/readyz");
    assert_eq!(str_at(c, "livenessProbe.httpGet.path"), "/healthz");
    // The probes name routes the router serves (src/api.rs).
    let api = read("src/api.rs");
    for path in ["/readyz", "/healthz"] {
        assert!(
            api.contains(&format!(".route(\"{path}\"")),
            "src/api.rs serves no {path}"
        );
    }

    let config = replica_config(&docs, replica);
    let shutdown_grace = config
        .shutdown_grace
        .as_deref()
        .map(|g| humantime::parse_duration(g).expect("shutdown_grace parses"))
        .unwrap_or(gantry::config::DEFAULT_SHUTDOWN_GRACE);
    for d in &deployments {
        let grace = grace_seconds(d);
        assert!(
            grace >= 1800 && Duration::from_secs(grace) > shutdown_grace,
            "{}: terminationGracePeriodSeconds {grace} must be above shutdown_grace ({shutdown_grace:?}) and 30m",
            str_at(d, "metadata.name")
        );
    }
    assert!(
        config.database_url.starts_with("postgres"),
        "replicas share a PostgreSQL database, not {}",
        config.database_url
    );

    let labels = at(replica, "spec.template.metadata.labels");
    let pdbs = kind(&docs, "PodDisruptionBudget");
    assert!(
        pdbs.iter()
            .any(|p| selects(at(p, "spec.selector.matchLabels"), labels)
                && (at(p, "spec.minAvailable").as_u64() >= Some(1)
                    || !at(p, "spec.maxUnavailable").is_null())),
        "a PodDisruptionBudget covers the replicas"
    );
    let port = str_at(&seq(&c["ports"])[0], "name").to_string();
    assert!(
        kind(&docs, "Service")
            .iter()
            .any(|s| selects(at(s, "spec.selector"), labels)
                && seq(at(s, "spec.ports"))
                    .iter()
                    .any(|p| str_at(p, "targetPort") == port)),
        "a Service reaches the replicas' {port} port"
    );

    // The agents: their pool exists, limits are set, the token comes from a Secret.
    for a in &agents {
        let name = str_at(a, "metadata.name");
        let c = &seq(at(a, "spec.template.spec.containers"))[0];
        let args = strings(&c["args"]);
        let pool = flag(&args, "--pool").unwrap_or_else(|| panic!("{name}: no --pool"));
        assert!(flag(&args, "--server").is_some(), "{name}: no --server");
        assert!(
            config.agent_pools.iter().any(|p| p.name == pool),
            "{name}: pool {pool} is not in the replicas' agent_pools"
        );
        for r in ["cpu", "memory"] {
            assert!(
                !at(c, &format!("resources.limits.{r}")).is_null(),
                "{name}: no {r} limit"
            );
            assert!(
                !at(c, &format!("resources.requests.{r}")).is_null(),
                "{name}: no {r} request"
            );
        }
        assert!(
            seq(&c["env"])
                .iter()
                .any(|e| str_at(e, "name") == "GANTRY_AGENT_TOKEN"
                    && !at(e, "valueFrom.secretKeyRef").is_null()),
            "{name}: GANTRY_AGENT_TOKEN from a Secret"
        );
        // No database password, VCS token or webhook secret: none of the
        // replicas' Secrets.
        for secret in secret_refs(a) {
            assert!(
                !secret_refs(replica).contains(&secret),
                "{name}: an agent reads the replicas' Secret {secret}"
            );
        }
    }
}

/// The Secrets a Deployment's containers read.
fn secret_refs(deploy: &Value) -> BTreeSet<String> {
    seq(at(deploy, "spec.template.spec.containers"))
        .iter()
        .flat_map(|c| seq(&c["env"]))
        .map(|e| str_at(e, "valueFrom.secretKeyRef.name").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The part of gantry.yaml these checks read (the rest is checked by
/// gantry's own loader in [`replica_config`]).
#[derive(Deserialize)]
struct ConfigView {
    listen: String,
    data_dir: String,
    database_url: String,
    shutdown_grace: Option<String>,
    #[serde(default)]
    agent_pools: Vec<PoolView>,
}

#[derive(Deserialize)]
struct PoolView {
    name: String,
}

/// The replicas' gantry.yaml from its ConfigMap, checked against the
/// Deployment (mount path, port, data dir) and validated by gantry's own
/// loader with the variables the Deployment sets from Secrets.
fn replica_config(docs: &[(String, Value)], replica: &Value) -> ConfigView {
    let pod = at(replica, "spec.template.spec");
    let c = &seq(&pod["containers"])[0];
    let config_path = flag(&strings(&c["args"]), "--config")
        .expect("the replica names its --config")
        .to_string();
    let path = Path::new(&config_path);
    let (dir, file) = (
        path.parent().unwrap().to_str().unwrap(),
        path.file_name().unwrap().to_str().unwrap(),
    );
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| str_at(m, "mountPath") == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| str_at(v, "name") == str_at(mount, "name"))
        .expect("the config volume");
    let map = named(docs, "ConfigMap", str_at(volume, "configMap.name"));
    let text = map["data"][file]
        .as_str()
        .expect("the ConfigMap holds the --config file");
    let view: ConfigView = serde_yaml::from_str(text).expect("gantry.yaml parses");

    let port = view.listen.rsplit(':').next().unwrap();
    assert_eq!(
        at(&seq(&c["ports"])[0], "containerPort").as_u64(),
        port.parse().ok(),
        "listen port and containerPort"
    );
    assert!(
        view.listen.starts_with("0.0.0.0:") || view.listen.starts_with("[::]:"),
        "a replica listens on every interface, not {}",
        view.listen
    );
    assert!(
        seq(&c["volumeMounts"])
            .iter()
            .any(|m| str_at(m, "mountPath") == view.data_dir),
        "data_dir {} is a mounted volume (the root filesystem is read-only)",
        view.data_dir
    );

    let from_secrets: BTreeSet<String> = seq(&c["env"])
        .iter()
        .filter(|e| !at(e, "valueFrom.secretKeyRef").is_null())
        .map(|e| str_at(e, "name").to_string())
        .collect();
    let env = |name: &str| from_secrets.contains(name).then(|| "x".repeat(32));
    let load = |text: &str| gantry::Config::from_yaml(path, text, &env).map(drop);
    let shown = |e: gantry::config::ConfigErrors| {
        format!("the ConfigMap's gantry.yaml does not load:\n{e}")
    };
    if let Err(errors) = load(text) {
        panic!("{}", shown(errors));
    }
    view
}

#[test]
fn kubernetes_validate_accepts_the_manifests() {
    let Some(kv) = tool("GANTRY_TEST_KUBERNETES_VALIDATE", "kubernetes-validate") else {
        eprintln!(
            "skipped: kubernetes-validate is not installed (scripts/install-kubernetes-validate)"
        );
        return;
    };
    let out = std::process::Command::new(&kv)
        .arg("--strict")
        .arg("--quiet")
        .args(files("runners/kubernetes", ".yaml"))
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", kv.display()));
    assert!(
        out.status.success(),
        "kubernetes-validate --strict:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- systemd

const UNITS: &[&str] = &[
    "runners/systemd/gantry.service",
    "runners/systemd/gantry-agent.service",
];

/// Settings both units share, with the values the README promises.
const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("CapabilityBoundingSet", ""),
    ("KillMode", "mixed"),
    ("Restart", "on-failure"),
    ("User", "gantry"),
];

/// Settings that would break gantry's sandbox (user + mount + PID
/// namespaces, a fresh /proc, Landlock): see the comments in gantry.service.
const BREAK_THE_SANDBOX: &[&str] = &[
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "SystemCallFilter",
    "MemoryDenyWriteExecute",
    "PrivateUsers",
    "ProtectProc",
    "ProcSubset",
    "DynamicUser",
];

/// A unit's `[Service]` settings (the last value of each key).
fn service_section(rel: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in read(rel).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]" {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not a setting: {line}"));
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

#[test]
fn systemd_units_are_hardened_and_keep_the_sandbox_possible() {
    for unit in UNITS {
        let s = service_section(unit);
        for (key, want) in HARDENING {
            assert_eq!(
                s.get(*key).map(String::as_str),
                Some(*want),
                "{unit}: {key}={want}"
            );
        }
        assert!(
            s.contains_key("EnvironmentFile"),
            "{unit}: secrets come from an EnvironmentFile"
        );
        let state_dir = format!(
            "/var/lib/{}",
            s.get("StateDirectory").expect("StateDirectory")
        );
        assert!(
            s.get("ReadWritePaths")
                .is_some_and(|p| p.split_whitespace().any(|p| p == state_dir)),
            "{unit}: ReadWritePaths= the data dir {state_dir}"
        );
        let stop = humantime::parse_duration(s.get("TimeoutStopSec").expect("TimeoutStopSec"))
            .expect("TimeoutStopSec parses");
        assert!(
            stop > gantry::config::DEFAULT_SHUTDOWN_GRACE,
            "{unit}: TimeoutStopSec {stop:?} must be above the 30m shutdown grace"
        );
        let namespaces: BTreeSet<&str> = s
            .get("RestrictNamespaces")
            .expect("RestrictNamespaces")
            .split_whitespace()
            .collect();
        assert_eq!(
            namespaces,
            BTreeSet::from(["user", "mnt", "pid"]),
            "{unit}: exactly the namespaces the sandbox creates"
        );
        for key in BREAK_THE_SANDBOX {
            assert!(
                !s.contains_key(*key),
                "{unit}: {key}= would break gantry's sandbox"
            );
        }
        let exec = s.get("ExecStart").expect("ExecStart");
        let mut words = exec.split_whitespace().map(|w| {
            // `${VAR}` is filled from the EnvironmentFile at start (the
            // server's URL is one; any value parses for the others).
            if w == "${GANTRY_SERVER}" {
                "https://gantry.example.com".to_string()
            } else if w.starts_with("${") {
                "value".to_string()
            } else {
                w.to_string()
            }
        });
        assert_eq!(words.next().as_deref(), Some("/usr/local/bin/gantry"));
        check_cli(unit, &words.collect::<Vec<_>>());
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(analyze) = tool("GANTRY_TEST_SYSTEMD_ANALYZE", "systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    // verify wants ExecStart's binary to exist: point the units at a stand-in.
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("gantry");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut copies = Vec::new();
    for unit in UNITS {
        let copy = dir.path().join(Path::new(unit).file_name().unwrap());
        let text = read(unit).replace("/usr/local/bin/gantry", stand_in.to_str().unwrap());
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let out = std::process::Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", analyze.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values ("…, ignoring"): any
    // complaint about these units fails the test.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("gantry")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

// ---------------------------------------------------------------- container

/// The Containerfile's instructions (continuations joined), by stage.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut joined = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') && joined.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
        } else if !t.is_empty() || !joined.is_empty() {
            joined.push_str(t);
            lines.push(std::mem::take(&mut joined));
        }
    }
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for l in lines {
        let (op, rest) = l.split_once(' ').unwrap_or((&l, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push((op, rest.trim().to_string()));
    }
    out
}

fn json_words(v: &str) -> Vec<String> {
    serde_json::from_str(v).unwrap_or_else(|e| panic!("not an exec-form list: {v}: {e}"))
}

#[test]
fn containerfile_builds_one_non_root_image_with_a_pinned_terraform() {
    let text = read("runners/container/Containerfile");
    let stages = stages(&text);
    let has = |stage: &[(String, String)], op: &str, needle: &str| {
        stage.iter().any(|(o, r)| o == op && r.contains(needle))
    };
    // stages[0] holds the global ARGs; then build, terraform, runtime.
    assert!(stages.len() >= 4, "a multi-stage build");
    let build = stages
        .iter()
        .find(|s| has(s, "RUN", "cargo build --release --locked"))
        .expect("a stage runs `cargo build --release --locked`");
    assert!(
        has(build, "RUN", "gantry-sandbox"),
        "the sandbox helper is kept"
    );

    let tf = stages
        .iter()
        .find(|s| has(s, "RUN", "sha256sum -c"))
        .expect("a stage checks the download's sha256");
    for arg in ["TF_FLAVOR", "TF_VERSION", "TF_SHA256"] {
        assert!(has(tf, "ARG", arg), "build arg {arg}");
    }
    // Pinned by whoever builds: no default version or checksum to go stale.
    assert!(has(tf, "ARG", "TF_FLAVOR=terraform"));
    for (_, rest) in tf.iter().filter(|(o, _)| o == "ARG") {
        assert!(
            !(rest.starts_with("TF_VERSION=") || rest.starts_with("TF_SHA256=")),
            "ARG {rest}: no default"
        );
    }
    let fetch = &tf
        .iter()
        .find(|(o, r)| o == "RUN" && r.contains("sha256sum -c"))
        .unwrap()
        .1;
    for needle in [
        "${TF_SHA256}",
        "terraform/${TF_VERSION}/terraform_${TF_VERSION}_linux_",
        "download/v${TF_VERSION}/tofu_${TF_VERSION}_linux_",
    ] {
        assert!(fetch.contains(needle), "the download uses {needle}");
    }

    let runtime = stages.last().unwrap();
    assert!(
        has(runtime, "FROM", "debian:") && has(runtime, "FROM", "-slim"),
        "a debian-slim runtime"
    );
    for pkg in ["git", "ca-certificates"] {
        assert!(has(runtime, "RUN", pkg), "the runtime installs {pkg}");
    }
    let user = &runtime
        .iter()
        .rfind(|(o, _)| o == "USER")
        .expect("a USER")
        .1;
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: a numeric non-root uid (runAsNonRoot checks it)"
    );
    let entrypoint = json_words(&runtime.iter().rfind(|(o, _)| o == "ENTRYPOINT").unwrap().1);
    assert_eq!(
        entrypoint.last().map(String::as_str),
        Some("/usr/local/bin/gantry")
    );
    let cmd = json_words(&runtime.iter().rfind(|(o, _)| o == "CMD").unwrap().1);
    check_cli("Containerfile CMD", &cmd);

    // The build context leaves the local build and tools out.
    let ignore = read(".dockerignore");
    for p in ["/target", "/.tools"] {
        assert!(ignore.lines().any(|l| l.trim() == p), ".dockerignore: {p}");
    }
}

#[test]
fn runners_readme_covers_every_file() {
    let readme = read("runners/README.md");
    let mut all = Vec::new();
    for dir in ["runners/container", "runners/systemd", "runners/kubernetes"] {
        all.extend(files(dir, ""));
    }
    for f in all {
        let rel = f.trim_start_matches("runners/");
        assert!(
            readme.contains(rel),
            "runners/README.md does not mention {rel}"
        );
    }
    assert!(
        read("README.md").contains("runners/README.md"),
        "the top-level README points at runners/README.md"
    );
}
