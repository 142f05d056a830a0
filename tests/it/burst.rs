//! Kill -9 during a burst: signed webhooks alternate between two replicas on
//! one PostgreSQL database while replica A (the real binary) is killed with
//! SIGKILL three times mid-run and restarted; some deliveries are redelivered
//! to the other replica. Once the queue drains, every delivery answered 2xx
//! has led to its runs, no redelivery created a run, no workspace was applied
//! twice for one commit, and no commit status is left pending.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Child;
use std::time::Duration;

use git2::Oid;
use serde_json::{json, Value};

use crate::support::origin::{null_config, write_script};
use crate::support::replica::{free_listen, kill, spawn_beside, start, start_ready, Remote};
use crate::support::*;

/// The workspaces of this test: one directory each, all applied on merge.
const WORKSPACES: [&str; 3] = ["alpha", "beta", "gamma"];

/// Pull requests in the burst, and the heads each gets (opened, then
/// synchronized to each next one).
const PRS: [u64; 6] = [21, 22, 23, 24, 25, 26];
const HEADS_PER_PR: usize = 3;

/// A short lease, so the runs of a killed process are taken back quickly.
const LEASE: &str = "queue:\n  lease: 3s\n";

fn workspaces_yaml() -> String {
    WORKSPACES
        .iter()
        .map(|w| {
            format!(
                "  - name: {w}\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: {w}\n    auto_apply: true\n"
            )
        })
        .collect()
}

/// The workspaces whose `main.tf` differs between two snapshots.
fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> BTreeSet<String> {
    WORKSPACES
        .iter()
        .filter(|w| {
            let f = format!("{w}/main.tf");
            a.get(&f) != b.get(&f)
        })
        .map(|w| w.to_string())
        .collect()
}

/// One webhook delivery of the burst and the runs it must cause.
struct Delivery {
    id: String,
    event: &'static str,
    body: Vec<u8>,
    head: String,
    kind: &'static str,
    workspaces: BTreeSet<String>,
}

/// The commits of the burst, all in the origin before the first webhook: main
/// moves c0 → m1 → m2 → m3 (three pushes), and each pull request, based on c0,
/// gets [`HEADS_PER_PR`] heads, each a child of the one before. Deliveries are
/// interleaved: the heads of every pull request in turn, a push among them.
fn scenario(env: &TestEnv) -> Vec<Delivery> {
    let mut c0_files = BTreeMap::new();
    c0_files.insert("README.md".to_string(), "# infra\n".to_string());
    for w in WORKSPACES {
        c0_files.insert(format!("{w}/main.tf"), null_config(&format!("{w}-v0")));
    }
    let c0 = env.origin.commit(&c0_files, &[], "initial", &[]);

    // Main: which workspaces each push changes.
    let main_edits: [&[&str]; 3] = [&["alpha"], &["beta", "gamma"], &["alpha", "beta"]];
    let mut pushes = Vec::new();
    let (mut prev, mut prev_files) = (c0, c0_files.clone());
    for (i, edits) in main_edits.iter().enumerate() {
        let mut files = prev_files.clone();
        for w in *edits {
            files.insert(format!("{w}/main.tf"), null_config(&format!("{w}-m{i}")));
        }
        let id = env
            .origin
            .commit(&files, &[prev], &format!("merge {i}"), &["refs/heads/main"]);
        pushes.push(Delivery {
            id: format!("push-{i}"),
            event: "push",
            body: push_payload("main", &prev.to_string(), &id.to_string()),
            head: id.to_string(),
            kind: "apply",
            workspaces: changed(&prev_files, &files),
        });
        (prev, prev_files) = (id, files);
    }

    // Pull requests: every head changes the PR's own workspace again; from the
    // second head on, the next workspace too. Runs diff against the fork point.
    let mut by_step: Vec<Vec<Delivery>> = (0..HEADS_PER_PR).map(|_| Vec::new()).collect();
    for (n, pr) in PRS.iter().enumerate() {
        let (mut parent, mut files): (Oid, _) = (c0, c0_files.clone());
        for (k, step) in by_step.iter_mut().enumerate() {
            let own = WORKSPACES[n % WORKSPACES.len()];
            files.insert(
                format!("{own}/main.tf"),
                null_config(&format!("pr{pr}-h{k}")),
            );
            if k > 0 {
                let next = WORKSPACES[(n + 1) % WORKSPACES.len()];
                files.insert(
                    format!("{next}/main.tf"),
                    null_config(&format!("pr{pr}-h{k}-next")),
                );
            }
            let head = env.origin.commit(
                &files,
                &[parent],
                &format!("pr {pr} head {k}"),
                &[&format!("refs/pull/{pr}/head")],
            );
            let action = if k == 0 { "opened" } else { "synchronize" };
            let body = payload(
                &format!("pull_request.{action}.json"),
                &[
                    ("/number", json!(pr)),
                    ("/pull_request/number", json!(pr)),
                    ("/pull_request/head/sha", json!(head.to_string())),
                    ("/pull_request/base/sha", json!(c0.to_string())),
                    ("/pull_request/base/ref", json!("main")),
                ],
            );
            step.push(Delivery {
                id: format!("pr-{pr}-{k}"),
                event: "pull_request",
                body,
                head: head.to_string(),
                kind: "plan",
                workspaces: changed(&c0_files, &files),
            });
            parent = head;
        }
    }
    let mut pushes = pushes.into_iter();
    let mut out = Vec::new();
    for prs in by_step {
        let mut prs = prs.into_iter();
        out.extend(prs.by_ref().take(PRS.len() / 2));
        out.extend(pushes.next());
        out.extend(prs);
    }
    out
}

/// Posts one signed delivery; `None` when no answer came (the replica is down
/// or was killed while answering).
async fn post(replica: &Remote, d: &Delivery) -> Option<u16> {
    let resp = replica
        .webhook(d.event, &d.id, &d.body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

/// Sends `d` to `first`; when that answers nothing or no 2xx, redelivers it to
/// the other replica, as GitHub would. Records every answer.
async fn deliver(
    replicas: [&Remote; 2],
    first: usize,
    d: &Delivery,
    answers: &mut HashMap<String, Vec<(usize, Option<u16>)>>,
) -> usize {
    let mut to = first;
    for _ in 0..2 {
        let status = post(replicas[to], d).await;
        answers.entry(d.id.clone()).or_default().push((to, status));
        if status.is_some_and(|s| (200..300).contains(&s)) {
            return to;
        }
        to = 1 - to;
    }
    panic!("delivery {} answered by neither replica: {answers:?}", d.id);
}

/// Replica A's process, killed when the test ends, also when it fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A claim of a run: its id and lease token, and its state.
type Claim = (i64, String, String);

/// Kills A with SIGKILL once this process of A holds a run whose terraform
/// is running: a claim not in `stale`, which lists the claims of the processes
/// killed before (they keep `replica-a` as their holder until their lease runs
/// out). An apply is preferred for up to `wait_for_apply`, so interrupted
/// applies are part of the burst. Adds the claims it killed to `stale`.
async fn kill_mid_run(
    a: &mut KillOnDrop,
    store: &sqlx::AnyPool,
    stale: &mut Vec<Claim>,
    wait_for_apply: Duration,
) {
    let held = || async {
        let held: Vec<Claim> = sqlx::query_as(
            "SELECT id, lease_token, state FROM runs
             WHERE claimed_by = 'replica-a' AND state IN ('planning', 'applying')
               AND lease_token IS NOT NULL",
        )
        .fetch_all(store)
        .await
        .unwrap();
        held.into_iter()
            .filter(|(id, token, _)| !stale.iter().any(|(i, t, _)| i == id && t == token))
            .collect::<Vec<_>>()
    };
    let patient_until = tokio::time::Instant::now() + wait_for_apply;
    wait_until(Duration::from_secs(60), || async {
        let held = held().await;
        let applying = held.iter().any(|(_, _, state)| state == "applying");
        let ready = applying || (!held.is_empty() && tokio::time::Instant::now() >= patient_until);
        ready.then_some(())
    })
    .await;
    kill(&mut a.0);
    let killed = held().await;
    stale.extend(killed);
}

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    id: i64,
    workspace: String,
    event_id: Option<i64>,
    kind: String,
    state: String,
    state_reason: Option<String>,
    head_sha: String,
    attempt: i64,
    retry_of: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing_and_runs_nothing_twice() {
    let Some(db) = databases()
        .into_iter()
        .find(|d| matches!(d, Db::Postgres(_)))
    else {
        eprintln!("GANTRY_TEST_POSTGRES_URL not set: skipping the two-replica burst");
        return;
    };
    let env = TestEnv::new(&db).await;
    let deliveries = scenario(&env);

    // terraform that takes a while, so kills land mid-run.
    let slow = env.dir.path().join("slow-terraform");
    write_script(
        &slow,
        &format!(
            "#!/bin/sh\ncase \"$1\" in plan|apply) sleep 1;; esac\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    let slow = slow.display().to_string();
    // A takes most of the work (3 workers to B's 1), so each kill finds A
    // holding a run even late in the burst.
    let listen_a = free_listen();
    let yaml_a = format!(
        "node_id: replica-a\n{}{LEASE}",
        env.config_yaml(&workspaces_yaml(), 3, &listen_a, &slow)
    );
    let b_yaml = env.replica_yaml(
        &(env.config_yaml(&workspaces_yaml(), 1, "127.0.0.1:0", &slow) + LEASE),
        "replica-b",
    );
    let b = spawn_beside(&env, &b_yaml, "b").await;
    let pool = b.ctx.store.pool().clone();

    let remote_b = Remote::at(&b.addr.to_string());
    let (a, remote_a) = start_ready(&env, &listen_a, &yaml_a).await;
    let mut a = KillOnDrop(a);

    // The burst: deliveries alternate between A and B; every third one is
    // redelivered to the other replica three deliveries later; A is killed
    // mid-run three times and restarted at once (webhooks sent while it is
    // down go to B, as GitHub's redelivery would).
    let kill_after = [(4, 0), (10, 15), (17, 15)];
    let mut answers: HashMap<String, Vec<(usize, Option<u16>)>> = HashMap::new();
    let mut answered_by: HashMap<usize, usize> = HashMap::new();
    let mut killed_holding: Vec<Claim> = Vec::new();
    let mut kills = 0;
    for (i, d) in deliveries.iter().enumerate() {
        let replicas = [&remote_a, &remote_b];
        answered_by.insert(i, deliver(replicas, i % 2, d, &mut answers).await);
        if i >= 3 && (i - 3) % 3 == 2 {
            let again = &deliveries[i - 3];
            let other = 1 - answered_by[&(i - 3)];
            deliver(replicas, other, again, &mut answers).await;
        }
        if let Some((_, patience)) = kill_after.iter().find(|(after, _)| *after == i) {
            let patience = Duration::from_secs(*patience);
            eprintln!("kill {kills} after delivery {i}");
            kill_mid_run(&mut a, &pool, &mut killed_holding, patience).await;
            kills += 1;
            a = KillOnDrop(start(&env));
        }
    }
    assert_eq!(kills, 3);

    // The queue drains: every event dispatched, every run finished.
    b.wait_for_dispatch().await;
    let runs: Vec<RunRow> = wait_until(Duration::from_secs(100), || async {
        let runs: Vec<RunRow> = sqlx::query_as(
            "SELECT id, workspace, event_id, kind, state, state_reason, head_sha, attempt, retry_of
             FROM runs ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let active = ["queued", "fetching", "planning", "applying"];
        runs.iter()
            .all(|r| !active.contains(&r.state.as_str()))
            .then_some(runs)
    })
    .await;
    let interrupted: Vec<&RunRow> = runs
        .iter()
        .filter(|r| {
            r.state_reason
                .as_deref()
                .is_some_and(|s| s.starts_with("interrupted"))
        })
        .collect();
    eprintln!(
        "{} runs; A held {killed_holding:?} when killed; interrupted: {interrupted:?}",
        runs.len(),
    );

    // Every delivery was answered 2xx, once stored: one event each, dispatched.
    let events: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, delivery_id, state FROM events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(events.len(), deliveries.len(), "{events:?}");
    let event_of: HashMap<&str, i64> = events
        .iter()
        .map(|(id, delivery, state)| {
            assert_eq!(state, "dispatched", "delivery {delivery}");
            (delivery.as_str(), *id)
        })
        .collect();

    // Each delivery led to exactly its runs (first attempts), and nothing
    // else made a run: redeliveries made none.
    let mut first_attempts: HashMap<i64, Vec<(String, String, String)>> = HashMap::new();
    for r in runs.iter().filter(|r| r.retry_of.is_none()) {
        let event = r.event_id.expect("every run comes from a delivery");
        first_attempts.entry(event).or_default().push((
            r.workspace.clone(),
            r.head_sha.clone(),
            r.kind.clone(),
        ));
    }
    for d in &deliveries {
        let event = event_of[d.id.as_str()];
        let mut got = first_attempts.remove(&event).unwrap_or_default();
        got.sort();
        let want: Vec<(String, String, String)> = d
            .workspaces
            .iter()
            .map(|w| (w.clone(), d.head.clone(), d.kind.to_string()))
            .collect();
        assert_eq!(got, want, "runs of delivery {}", d.id);
    }
    assert!(
        first_attempts.is_empty(),
        "runs of no delivery: {first_attempts:?}"
    );
    // A retry only follows an interrupted first attempt, once.
    let by_id: HashMap<i64, &RunRow> = runs.iter().map(|r| (r.id, r)).collect();
    let mut retried = BTreeSet::new();
    for r in runs.iter().filter(|r| r.retry_of.is_some()) {
        let of = by_id[&r.retry_of.unwrap()];
        assert_eq!(
            of.state_reason.as_deref(),
            Some("interrupted"),
            "{r:?} retries {of:?}"
        );
        assert_eq!((of.attempt, r.attempt), (1, 2), "{r:?}");
        assert!(retried.insert(of.id), "run {} retried twice", of.id);
        assert_eq!(
            (&r.workspace, &r.head_sha, &r.kind, r.event_id),
            (&of.workspace, &of.head_sha, &of.kind, of.event_id)
        );
    }

    // No workspace applied twice for one commit: applied runs, and runs that
    // wrote a state version.
    let mut applied: HashMap<(&str, &str), Vec<i64>> = HashMap::new();
    for r in runs.iter().filter(|r| r.state == "applied") {
        applied
            .entry((&r.workspace, &r.head_sha))
            .or_default()
            .push(r.id);
    }
    for (key, ids) in &applied {
        assert_eq!(ids.len(), 1, "{key:?} applied by runs {ids:?}");
    }
    let writers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT DISTINCT workspace, run_id FROM state_versions WHERE run_id IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut wrote: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for (workspace, run) in &writers {
        let r = by_id[run];
        assert_eq!(
            &r.workspace, workspace,
            "run {run} wrote another workspace's state"
        );
        wrote
            .entry((workspace.clone(), r.head_sha.clone()))
            .or_default()
            .push(*run);
    }
    for (key, ids) in &wrote {
        assert_eq!(ids.len(), 1, "{key:?}: state written by runs {ids:?}");
    }
    assert!(!applied.is_empty(), "nothing was applied: {runs:?}");

    // No commit status left pending once the outbox has delivered: the last
    // status of each context on each commit that had runs. A merge waiting
    // for a confirmation (the workspace was locked by an interrupted apply)
    // is pending on purpose, and says so.
    let waiting: BTreeSet<(String, String)> = runs
        .iter()
        .filter(|r| r.state == "needs_confirmation")
        .map(|r| (r.head_sha.clone(), format!("gantry/{}", r.workspace)))
        .collect();
    let shas: BTreeSet<&str> = runs.iter().map(|r| r.head_sha.as_str()).collect();
    let pending = || {
        let mut out = Vec::new();
        for sha in &shas {
            let mut last: BTreeMap<String, Value> = BTreeMap::new();
            for s in env.github.statuses(sha) {
                last.insert(s["context"].as_str().unwrap_or_default().to_string(), s);
            }
            for (context, s) in last {
                let confirm = waiting.contains(&(sha.to_string(), context.clone()))
                    && s["description"]
                        .as_str()
                        .is_some_and(|d| d.contains("Needs confirmation"));
                if s["state"] == "pending" && !confirm {
                    out.push((sha.to_string(), context, s));
                }
            }
        }
        out
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = pending();
    let detail: Vec<String> = left
        .iter()
        .map(|(sha, context, s)| {
            let of: Vec<String> = runs
                .iter()
                .filter(|r| &r.head_sha == sha && *context == format!("gantry/{}", r.workspace))
                .map(|r| {
                    format!(
                        "run {} ({}, attempt {}): {} {:?}",
                        r.id, r.kind, r.attempt, r.state, r.state_reason
                    )
                })
                .collect();
            format!("{sha} {context}: {} | {of:?}", s["description"])
        })
        .collect();
    assert!(
        left.is_empty(),
        "statuses left pending:\n{}",
        detail.join("\n")
    );

    drop(a);
    b.stop().await;
}
