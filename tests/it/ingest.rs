//! Webhook ingestion at the HTTP level: signatures, bad input, deduplication.

use serde_json::Value;

use crate::support::*;

async fn counts(app: &TestApp) -> (i64, i64) {
    (
        app.ctx.store.count_events().await.unwrap(),
        app.ctx.store.count_runs().await.unwrap(),
    )
}

#[tokio::test]
async fn bad_input_is_rejected_and_changes_nothing() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let yaml = env.default_yaml();
        let app = env.spawn_app(&yaml).await;
        let body = pr_payload("opened", &"a".repeat(40), &"b".repeat(40));

        let r = app
            .send_webhook_signed("pull_request", "d-1", &body, &sign("wrong secret", &body))
            .await;
        assert_eq!(r.status(), 401);
        let r = app
            .client
            .post(app.url("/webhooks/github"))
            .header("X-GitHub-Event", "pull_request")
            .header("X-GitHub-Delivery", "d-2")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a missing signature is 401");

        let r = app.send_webhook("pull_request", "d-3", b"{not json").await;
        assert_eq!(r.status(), 400);

        let big = vec![b' '; 25 * 1024 * 1024 + 1];
        let r = app.send_webhook("pull_request", "d-4", &big).await;
        assert_eq!(r.status(), 413);

        let r = app
            .send_webhook("check_suite", "d-5", b"{\"action\":\"completed\"}")
            .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "ignored");

        let labeled = payload("pull_request.labeled.json", &[]);
        let r = app.send_webhook("pull_request", "d-6", &labeled).await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");

        let r = app
            .client
            .post(app.url("/webhooks/nope"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        assert_eq!(counts(&app).await, (0, 0), "{db:?}: nothing stored");
        app.stop().await;
    }
}

#[tokio::test]
async fn ping_closed_tag_and_branch_deletion_start_nothing() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let yaml = env.default_yaml();
    let app = env.spawn_app(&yaml).await;

    let r = app
        .send_webhook("ping", "p-1", &payload("ping.json", &[]))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "recorded");
    let r = app
        .send_webhook(
            "pull_request",
            "c-1",
            &payload("pull_request.closed.json", &[]),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "recorded");
    let r = app
        .send_webhook("push", "t-1", &payload("push.tag.json", &[]))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
    let r = app
        .send_webhook("push", "x-1", &payload("push.branch_deleted.json", &[]))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");

    assert_eq!(counts(&app).await, (2, 0));
    app.stop().await;
}

#[tokio::test]
async fn api_requires_the_bearer_token_and_health_answers() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let yaml = env.default_yaml();
        let app = env.spawn_app(&yaml).await;
        for path in ["/api/runs", "/api/runs/1", "/api/workspaces"] {
            let r = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            let r = app
                .client
                .get(app.url(path))
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{path}");
        }
        let r = app
            .client
            .get(app.url("/api/runs/999"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let ws = app.api("/api/workspaces").await;
        let names: Vec<&str> = ws["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["network", "app", "dns"]);
        assert_eq!(
            app.client
                .get(app.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            app.client
                .get(app.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        app.stop().await;
    }
}
