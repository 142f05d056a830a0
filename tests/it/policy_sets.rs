//! One source of truth for policy: the set a replica loads is stored, and
//! every other replica evaluates that same set within seconds, compiled from
//! the stored files (no fetch of the policy repository).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::origin::{null_config, Origin};
use crate::support::*;

const HCL: &str = r#"version = "v1"
policy "no_marker" {
  enabled           = true
  enforcement_level = "hard-mandatory"
}
"#;

/// A hard-mandatory policy denying null resources with `marker`.
fn policy_files(marker: &str) -> BTreeMap<String, String> {
    let rego = format!(
        "package terraform\n\ndeny contains msg if {{\n\tsome r in input.tfplan.resource_changes\n\tr.change.after.triggers.marker == \"{marker}\"\n\tmsg := sprintf(\"%s: marker {marker} is denied\", [r.address])\n}}\n"
    );
    BTreeMap::from([
        ("terraform/scalr-policy.hcl".to_string(), HCL.to_string()),
        ("terraform/no_marker.rego".to_string(), rego),
    ])
}

fn yaml(env: &TestEnv, data_dir: &Path, node: &str) -> String {
    let mut y = env.config_yaml(
        "  - name: dns\n    environment: production\n    provider: github\n    repo: acme/infra\n    dir: dns\n",
        1,
        "127.0.0.1:0",
        &terraform_bin(),
    );
    y = y.replace(
        &format!("data_dir: \"{}\"", env.data_dir().display()),
        &format!("data_dir: \"{}\"", data_dir.display()),
    );
    y.push_str(
        "policy_groups:\n  - name: baseline\n    provider: github\n    repo: acme/policies\n    branch: main\n    path: terraform\n    environments: [production]\n",
    );
    y.push_str(&format!("node_id: {node}\n"));
    y
}

async fn active_sha(app: &TestApp) -> Option<String> {
    app.ctx.policy_groups.get("baseline").map(|g| g.sha)
}

#[tokio::test]
async fn a_policy_push_loaded_by_one_replica_is_evaluated_by_the_other() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let policies = Origin::new(&env.origin.root, "acme/policies");
        let v1 = policies.commit(&policy_files("other"), &[], "v1", &["refs/heads/main"]);
        let (_, base, head) = env.origin.standard_change(
            vec![("dns/main.tf", null_config("forbidden"))],
            "dns",
            &["refs/pull/7/head"],
        );
        let data_b = env.dir.path().join("data-b");
        let a = env
            .spawn_app(&yaml(&env, &env.data_dir(), "replica-a"))
            .await;
        let b = env.spawn_app(&yaml(&env, &data_b, "replica-b")).await;
        for app in [&a, &b] {
            wait_until(Duration::from_secs(30), || async {
                (active_sha(app).await? == v1.to_string()).then_some(())
            })
            .await;
        }

        // The push to the policy branch reaches replica A only.
        let v2 = policies.commit(
            &policy_files("forbidden"),
            &[v1],
            "deny forbidden",
            &["refs/heads/main"],
        );
        let group = a.ctx.config().policy_groups[0].clone();
        let loaded = gantry::policy::groups::sync(&a.ctx.policies(), &group).await;
        assert_eq!(loaded, Ok(v2.to_string()), "{db:?}");

        // B takes the stored set within seconds, compiled from the stored
        // files: it never checked the new commit out.
        wait_until(Duration::from_secs(10), || async {
            (active_sha(&b).await? == v2.to_string()).then_some(())
        })
        .await;
        let digest = b.ctx.policy_groups.get("baseline").unwrap().digest;
        assert_eq!(
            digest,
            a.ctx.policy_groups.get("baseline").unwrap().digest,
            "{db:?}"
        );
        assert!(data_b.join("policy-sets/baseline").join(&digest).exists());
        assert!(!data_b
            .join("policy-groups/baseline")
            .join(v2.to_string())
            .exists());

        // A broken set loaded by A replaces nothing: v2 stays the stored set.
        let version = a.ctx.store.policy_set_version("baseline").await.unwrap();
        let mut broken = policy_files("forbidden");
        broken.insert(
            "terraform/no_marker.rego".into(),
            "package terraform\n\ndeny[msg] { nope nope }\n".into(),
        );
        policies.commit(&broken, &[v2], "oops", &["refs/heads/main"]);
        assert!(gantry::policy::groups::sync(&a.ctx.policies(), &group)
            .await
            .is_err());
        assert_eq!(
            a.ctx.store.policy_set_version("baseline").await.unwrap(),
            version
        );
        assert_eq!(active_sha(&a).await.unwrap(), v2.to_string(), "{db:?}");

        // With A gone, B's next PR check evaluates the new set.
        a.stop().await;
        b.send_webhook(
            "pull_request",
            "p-1",
            &pr_payload("opened", &head.to_string(), &base.to_string()),
        )
        .await;
        let runs = b.wait_for_runs_done(1).await;
        assert_eq!(runs[0]["state"], "planned", "{db:?}: {runs:?}");
        let checks = &b.api(&format!("/api/runs/{}", runs[0]["id"])).await["policy_results"];
        assert_eq!(checks[0]["policy"], "no_marker", "{checks}");
        assert_eq!(checks[0]["result"], "failed", "{db:?}: {checks}");
        assert_eq!(
            checks[0]["messages"][0],
            "null_resource.this: marker forbidden is denied"
        );
        b.stop().await;
    }
}
