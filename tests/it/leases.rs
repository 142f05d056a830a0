//! Leases that mean something: a claim is renewed while its work runs, only
//! its holder's writes count, and a replica that cannot renew a run's lease
//! stops that run's terraform before another replica may take the run over.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::origin::{null_config, write_script};
use crate::support::*;

fn lease(seconds: u64) -> String {
    format!("queue:\n  lease: {seconds}s\n")
}

#[tokio::test]
async fn a_dispatch_slower_than_the_lease_is_dispatched_once() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let (_, _base, head) = env.origin.standard_change(
            vec![
                ("modules/vpc/main.tf", null_config("vpc-v2")),
                ("dns/main.tf", null_config("dns-v2")),
            ],
            "three workspaces",
            &["refs/pull/7/head"],
        );
        env.github.set_pr_head(7, &head.to_string());
        env.github.set_permission("octocat", "write");
        // The dispatch of `/gantry plan` reads the pull request: that call takes
        // three leases.
        env.github
            .delay("/repos/acme/infra/pulls/7", Duration::from_secs(6));
        let yaml = env.config_yaml(
            TestEnv::standard_workspaces(),
            2,
            "127.0.0.1:0",
            &terraform_bin(),
        ) + &lease(2);
        let app = env.spawn_app(&yaml).await;
        let payload = payload(
            "issue_comment.created.json",
            &[
                ("/comment/body", json!("/gantry plan")),
                ("/comment/user/login", json!("octocat")),
                ("/issue/number", json!(7)),
            ],
        );
        let r = app.send_webhook("issue_comment", "slow-1", &payload).await;
        assert_eq!(r.status(), 202);
        app.wait_for_dispatch().await;
        let runs = app.wait_for_runs_done(3).await;

        // One set of runs, from one dispatch that asked for the pull request once.
        let workspaces: HashSet<&str> = runs
            .iter()
            .map(|r| r["workspace"].as_str().unwrap())
            .collect();
        assert_eq!(runs.len(), 3, "{db:?}: {runs:?}");
        assert_eq!(
            workspaces,
            HashSet::from(["network", "app", "dns"]),
            "{db:?}"
        );
        assert!(runs.iter().all(|r| r["state"] == "planned"), "{runs:?}");
        let reads = env
            .github
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == "/repos/acme/infra/pulls/7")
            .count();
        assert_eq!(reads, 1, "{db:?}: the event was dispatched again");
        let (attempts, state): (i64, String) =
            sqlx::query_as("SELECT attempts, state FROM events WHERE delivery_id = 'slow-1'")
                .fetch_one(app.ctx.store.pool())
                .await
                .unwrap();
        assert_eq!((attempts, state.as_str()), (1, "dispatched"), "{db:?}");
        app.stop().await;
    }
}

/// A TCP proxy to PostgreSQL that the test can cut: every connection through it
/// is closed and new ones are refused, as when a replica loses its network.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        let done = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut down, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        connections.spawn(async move {
                            if let Ok(mut up) = TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                }
            }
            drop(listener);
            // Dropping each forwarding task closes both of its sockets.
            connections.shutdown().await;
        });
        Proxy { addr, cut, done }
    }

    async fn sever(self) {
        self.cut.cancel();
        self.done.await.unwrap();
    }
}

/// `url` with its `host:port` replaced, and the `host:port` it had.
fn via(url: &str, addr: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, rest) = match rest.split_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let (hostport, path) = rest.split_once('/').unwrap();
    (
        format!("{scheme}://{user}{addr}/{path}"),
        hostport.to_string(),
    )
}

/// A run's time holding its workspace: from its claim to the state it left
/// the active states for (ms), from its recorded transitions.
async fn active_interval(store: &gantry::store::Store, run_id: i64) -> (i64, i64) {
    let transitions = store.transitions(run_id).await.unwrap();
    let start = transitions
        .iter()
        .find(|t| t.state == "fetching")
        .expect("claimed")
        .at;
    let end = transitions
        .iter()
        .find(|t| !["queued", "fetching", "planning", "applying"].contains(&t.state.as_str()))
        .expect("finished")
        .at;
    (start, end)
}

/// The admin URL of PostgreSQL, when the tests have one.
fn postgres() -> Option<Db> {
    databases()
        .into_iter()
        .find(|d| matches!(d, Db::Postgres(_)))
}

/// A terraform wrapper whose first `step` (plan or apply) runs until it is
/// interrupted, and writes into `marks` when it started (its pid), when it was
/// stopped, or that it finished (ms since the epoch); other calls run terraform.
fn interruptible_first(step: &str, marks: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         if [ \"$1\" = {step} ] && mkdir \"{m}/first\" 2>/dev/null; then\n\
           trap 'date +%s%3N > \"{m}/stopped\"; exit 130' INT TERM\n\
           echo $$ > \"{m}/started\"\n\
           sleep 120 &\n\
           wait $!\n\
           date +%s%3N > \"{m}/finished\"\n\
           exit 1\n\
         fi\n\
         exec \"{tf}\" \"$@\"\n",
        m = marks.display(),
        tf = terraform_bin(),
    )
}

/// Two replicas on one PostgreSQL database: A (started now) reaches it through
/// a [`Proxy`] the test cuts; B (started later from the YAML returned) directly,
/// with its own `data_dir`. terraform is the [`interruptible_first`] `step`.
struct TwoReplicas {
    a: TestApp,
    proxy: Proxy,
    yaml_b: String,
    marks: std::path::PathBuf,
}

async fn two_replicas(env: &TestEnv, step: &str, workspaces: &str) -> TwoReplicas {
    let marks = env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let wrapper = env.dir.path().join("interruptible-terraform");
    write_script(&wrapper, &interruptible_first(step, &marks));
    let yaml = env
        .config_yaml(workspaces, 1, "127.0.0.1:0", &wrapper.display().to_string())
        // The wrapper writes its marks outside the run's directories.
        .replace("runner:\n", "runner:\n  sandbox: off\n")
        + &lease(4);
    let (_, upstream) = via(&env.db_url, "unused");
    let proxy = Proxy::start(upstream).await;
    let (through_proxy, _) = via(&env.db_url, &proxy.addr.to_string());
    let yaml_a = yaml.replace(&env.db_url, &through_proxy) + "node_id: replica-a\n";
    let yaml_b = yaml.replace(
        &env.data_dir().display().to_string(),
        &env.dir.path().join("data-b").display().to_string(),
    ) + "node_id: replica-b\n";
    let a = env.spawn_app(&yaml_a).await;
    TwoReplicas {
        a,
        proxy,
        yaml_b,
        marks,
    }
}

impl TwoReplicas {
    /// Waits until A's terraform runs the interruptible step; its pid.
    async fn wait_started(&self) -> i32 {
        wait_until(Duration::from_secs(60), || async {
            std::fs::read_to_string(self.marks.join("started"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        })
        .await
    }

    /// Cuts A off, then waits until A's terraform says it was stopped (ms),
    /// and checks the process is gone (or only waits to be reaped).
    async fn cut_a_and_wait_stopped(self, pid: i32) -> (TestApp, i64) {
        self.proxy.sever().await;
        let stopped_at: i64 = wait_until(Duration::from_secs(30), || async {
            std::fs::read_to_string(self.marks.join("stopped"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        })
        .await;
        assert!(!self.marks.join("finished").exists());
        // The wrapper exits right after writing its mark (a loaded machine
        // may show it running a moment longer); then it is gone or a zombie.
        let gone = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z")
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gone() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(gone(), "terraform still running: {stat}");
        (self.a, stopped_at)
    }
}

async fn states(store: &gantry::store::Store, run_id: i64) -> Vec<String> {
    store
        .transitions(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.state)
        .collect()
}

const DNS: &str = "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n";

#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_its_plan_and_another_reruns_it_once() {
    let Some(db) = postgres() else {
        eprintln!("GANTRY_TEST_POSTGRES_URL not set: the fencing test needs PostgreSQL");
        return;
    };
    let env = TestEnv::new(&db).await;
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "dns",
        &["refs/pull/7/head"],
    );
    let replicas = two_replicas(&env, "plan", DNS).await;
    let r = replicas
        .a
        .send_webhook(
            "pull_request",
            "open-1",
            &pr_payload("opened", &head.to_string(), &base.to_string()),
        )
        .await;
    assert_eq!(r.status(), 202);
    // A plans; its terraform is running.
    let pid = replicas.wait_started().await;
    let first = replicas.a.runs().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["state"], "planning");
    let first_id = first[0]["id"].as_i64().unwrap();

    // B starts: A's claim is live, so B's start-up reaping leaves it alone.
    let b = env.spawn_app(&replicas.yaml_b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.runs().await[0]["state"], "planning");

    // A loses the database and stops its terraform on its own.
    let (a, stopped_at) = replicas.cut_a_and_wait_stopped(pid).await;

    // B reaps the run once the lease expired and plans it again, once.
    let runs = wait_until(Duration::from_secs(120), || async {
        let runs = b.runs().await;
        let retry = runs.iter().find(|r| r["retry_of"] == json!(first_id))?;
        (retry["state"] == "planned").then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let original = runs.iter().find(|r| r["id"] == json!(first_id)).unwrap();
    let retry = runs.iter().find(|r| r["id"] != json!(first_id)).unwrap();
    assert_eq!(original["state"], "errored");
    assert_eq!(original["state_reason"], "interrupted");
    assert_eq!(retry["attempt"], 2);
    let retry_id = retry["id"].as_i64().unwrap();

    // A wrote nothing after it was fenced: the reaper's record stands.
    let store = &b.ctx.store;
    assert_eq!(
        states(store, first_id).await,
        ["queued", "fetching", "planning", "errored"]
    );

    // Never two active runs of the workspace at once: by the records, and by
    // when terraform really stopped.
    let (_, first_end) = active_interval(store, first_id).await;
    let (retry_start, retry_end) = active_interval(store, retry_id).await;
    assert!(first_end <= retry_start, "{first_end} > {retry_start}");
    assert!(retry_start <= retry_end);
    assert!(
        stopped_at <= retry_start,
        "A's terraform stopped at {stopped_at}, after the retry started at {retry_start}"
    );

    b.stop().await;
    // A cannot stop cleanly without its database; dropping it stops its tasks.
    drop(a);
}

#[tokio::test]
async fn an_apply_whose_replica_is_cut_off_is_stopped_marked_interrupted_and_locked() {
    let Some(db) = postgres() else {
        eprintln!("GANTRY_TEST_POSTGRES_URL not set: the fencing test needs PostgreSQL");
        return;
    };
    let env = TestEnv::new(&db).await;
    let (_, base, merged) = env.origin.standard_change(
        vec![("dns/main.tf", null_config("dns-v2"))],
        "merge",
        &["refs/heads/main"],
    );
    let replicas = two_replicas(&env, "apply", &format!("{DNS}    auto_apply: true\n")).await;
    let r = replicas
        .a
        .send_webhook(
            "push",
            "push-1",
            &push_payload("main", &base.to_string(), &merged.to_string()),
        )
        .await;
    assert_eq!(r.status(), 202);
    let pid = replicas.wait_started().await;
    let runs = replicas.a.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["state"], "applying");
    let id = runs[0]["id"].as_i64().unwrap();
    let b = env.spawn_app(&replicas.yaml_b).await;

    let (a, stopped_at) = replicas.cut_a_and_wait_stopped(pid).await;

    let run = wait_until(Duration::from_secs(120), || async {
        let runs = b.runs().await;
        (runs[0]["state"] == "errored").then_some(runs)
    })
    .await;
    // Reaped in one transaction with the lock, and never retried.
    assert_eq!(run.len(), 1, "{run:?}");
    assert_eq!(run[0]["state_reason"], "interrupted during apply");
    assert_eq!(run[0]["failure"], "interrupted_apply");
    let store = &b.ctx.store;
    assert_eq!(
        states(store, id).await,
        ["queued", "fetching", "planning", "applying", "errored"]
    );
    let (_, ended) = active_interval(store, id).await;
    assert!(stopped_at <= ended, "{stopped_at} > {ended}");
    let lock = store.workspace_lock("dns").await.unwrap().expect("locked");
    assert_eq!(lock.run_id, Some(id));
    assert!(
        lock.reason.contains("interrupted during apply"),
        "{}",
        lock.reason
    );

    b.stop().await;
    drop(a);
}
