//! The local runner: a clean environment for terraform, and a timeout that
//! stops the whole process group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry::redact::Redactor;

use gantry::runner::{JobPhase, JobSpec, LocalRunner, Runner, RunnerError};
use tokio_util::sync::CancellationToken;

use crate::support::origin::{null_config, write_script};
use crate::support::*;

fn daemon_env(name: &str) -> Option<String> {
    match name {
        "AWS_REGION" => Some("eu-west-1".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("aws-secret-value-123".into()),
        other => test_env_lookup(other),
    }
}

#[tokio::test]
async fn terraform_sees_only_what_the_operator_passes() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let wrapper = env.dir.path().join("tf-wrapper");
    // The sandbox lets terraform write only to its own directories: the
    // environment is dumped into the run's HOME.
    write_script(&wrapper,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = plan ]; then env > \"$HOME/env.txt\"; echo \"secret is $AWS_SECRET_ACCESS_KEY\"; fi\nexec \"{}\" \"$@\"\n",
            terraform_bin()
        ),
    );
    let yaml = env
        .config_yaml(TestEnv::standard_workspaces(), 1, "127.0.0.1:0", &wrapper.display().to_string())
        .replace("  timeout: 5m\n", "  timeout: 5m\n  pass_env: [AWS_REGION, AWS_SECRET_ACCESS_KEY]\n  env:\n    TF_VAR_team: platform\n");
    let config = gantry::Config::load(&env.write_config(&yaml), &daemon_env).unwrap();
    let sandbox = gantry::app::sandbox_for_runs(&config, &daemon_env)
        .await
        .unwrap();
    let runner = LocalRunner::new(
        &config,
        &daemon_env,
        sandbox,
        Arc::new(Redactor::for_config(&config)),
    )
    .unwrap();
    let job = spec(&config, "network", JobPhase::Plan);
    write_file(&runner.workdir(&job).join("main.tf"), &null_config("x"));

    let streamed = std::sync::Mutex::new(String::new());
    let out = runner
        .run(&job, &Collect(&streamed), &CancellationToken::new())
        .await
        .unwrap();
    let plan = out.plan.as_ref().expect("a plan job saves a plan");
    assert_eq!(plan.summary.add, 1);
    assert_eq!(
        plan.file.sha256,
        gantry::store::sha256_hex(&plan.file.bytes)
    );
    assert!(plan.parsed["resource_changes"].is_array());
    // The plan leaves as a value: nothing of it stays in the scratch.
    let scratch = runner.dirs(job.run_id);
    assert!(!scratch.out().join("plan.tfplan").exists());

    let seen = std::fs::read_to_string(scratch.home().join("env.txt")).unwrap();
    for expected in [
        "TF_IN_AUTOMATION=1",
        "AWS_REGION=eu-west-1",
        "TF_VAR_team=platform",
        "TF_PLUGIN_CACHE_DIR=",
        "TF_CLI_CONFIG_FILE=",
    ] {
        assert!(
            seen.contains(expected),
            "{expected} missing from terraform's environment:\n{seen}"
        );
    }
    for secret in [GITHUB_TOKEN, WEBHOOK_SECRET, API_TOKEN] {
        assert!(!seen.contains(secret), "a daemon secret reached terraform");
    }
    // Secret-looking pass-through values are redacted from captured output.
    assert!(out.text.contains("secret is ***"), "{}", out.text);
    assert!(!out.log.contains("aws-secret-value-123"));
    assert!(out.log.contains("secret is ***"), "{}", out.log);
    // The sink got the same log, as it went.
    assert_eq!(*streamed.lock().unwrap(), out.log);
}

/// A sink that keeps what it is sent.
struct Collect<'a>(&'a std::sync::Mutex<String>);

impl gantry::runner::LogSink for Collect<'_> {
    fn append(&self, text: &str) {
        self.0.lock().unwrap().push_str(text);
    }
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let marker = env.dir.path().join("still-running");
    let wrapper = env.dir.path().join("tf-hang");
    // plan hangs in a child process of the wrapper: the whole group must go.
    write_script(&wrapper,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = plan ]; then (sleep 3; touch \"{}\") & wait; fi\nexec \"{}\" \"$@\"\n",
            marker.display(),
            terraform_bin()
        ),
    );
    let yaml = env.config_yaml(
        TestEnv::standard_workspaces(),
        1,
        "127.0.0.1:0",
        &wrapper.display().to_string(),
    );
    let config = env.load_config(&yaml);
    let sandbox = gantry::app::sandbox_for_runs(&config, &test_env_lookup)
        .await
        .unwrap();
    let runner = LocalRunner::new(
        &config,
        &test_env_lookup,
        sandbox,
        Arc::new(Redactor::for_config(&config)),
    )
    .unwrap()
    .with_interrupt_grace(Duration::from_millis(500));
    let mut job = spec(&config, "network", JobPhase::Plan);
    job.timeout = Duration::from_millis(500);
    write_file(&runner.workdir(&job).join("main.tf"), &null_config("x"));
    let started = Instant::now();
    let err = runner
        .run(&job, &gantry::runner::NoLog, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunnerError::TimedOut {
                step: "init" | "plan",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the hung child survived the timeout");
}

/// A job of run 1 of `workspace`.
fn spec(config: &gantry::Config, workspace: &str, phase: JobPhase) -> JobSpec {
    let ws = config.workspace(workspace).unwrap();
    gantry::runs::job::job_spec(config, ws, 1, "0000000", phase)
}
