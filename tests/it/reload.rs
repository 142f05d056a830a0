//! Hot reload: edits to the watched config file apply without a restart; an
//! invalid edit is rejected and the running config stays.

use std::time::Duration;

use crate::support::*;

async fn names(app: &TestApp) -> Vec<String> {
    app.api("/api/workspaces").await["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn config_edits_apply_live_and_invalid_edits_are_rejected() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.default_yaml();
    let app = TestApp::spawn_watching(env.load_config(&yaml)).await;
    assert_eq!(names(&app).await, ["network", "app", "dns"]);

    // Remove two workspaces, change one, add one.
    let edited = env.config_yaml(
        r#"  - name: network
    environment: production
    provider: github
    repo: acme/infra
    dir: network
    trigger_patterns: ["shared/**"]
  - name: edge
    environment: production
    provider: github
    repo: acme/infra
    dir: edge
"#,
        3,
        "127.0.0.1:0",
        &terraform_bin(),
    );
    env.write_config(&edited);
    wait_until(Duration::from_secs(20), || async {
        (names(&app).await == ["network", "edge"]).then_some(())
    })
    .await;
    let config = app.ctx.config();
    assert_eq!(config.concurrency, 3);
    assert_eq!(
        config.workspace("network").unwrap().trigger_patterns,
        ["shared/**"]
    );

    // An invalid edit changes nothing.
    env.write_config(&edited.replace("dir: edge", "dir: ../edge"));
    assert!(!app.ctx.reload());
    assert_eq!(names(&app).await, ["network", "edge"]);
    assert_eq!(
        app.ctx.config().workspace("edge").unwrap().dir.as_str(),
        "edge"
    );
    app.stop().await;
}
