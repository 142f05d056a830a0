//! One redactor on every way out: secrets that reached stored states, runs or
//! audit details come back masked from the API, in clear and encoded.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

use crate::support::*;

/// A sensitive terraform variable with characters that URL-encoding changes.
const DB_PASSWORD: &str = "p@ss w0rd/with&more";
const ROTATED_PASSWORD: &str = "rotated:pa55word!";

fn yaml_with_env(env: &TestEnv, password: &str) -> String {
    env.default_yaml().replace(
        "terraform:\n",
        &format!("terraform:\n  env:\n    TF_VAR_db_password: \"{password}\"\n    TF_VAR_region: eu-west-1\n"),
    )
}

/// The forms the secret is written in, each as some tool would write it.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        secret.to_string(),
        // Basic auth header: the secret at alignment 0 after "x:" → 2.
        STANDARD.encode(format!("x:{secret}")),
        // A URL-safe token blob with the secret at alignment 1.
        URL_SAFE_NO_PAD.encode(format!("{{\"k\":\"{secret}\"}}")),
        hex::encode(secret),
        hex::encode_upper(secret),
        form,
    ]
}

async fn get_text(app: &TestApp, path: &str) -> String {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    let declared = resp.content_length().expect("Content-Length is set");
    let body = resp.text().await.unwrap();
    assert_eq!(
        declared as usize,
        body.len(),
        "Content-Length matches the redacted body"
    );
    body
}

fn assert_masked(body: &str, secret: &str) {
    for form in encodings(secret) {
        // The unmasked residue of a base64 form is at most 3 characters before
        // and 4 after: whatever the 8-character window, it is gone.
        let middle = &form[4..form.len() - 4];
        assert!(!body.contains(middle), "{form} leaked in {body}");
    }
}

#[tokio::test]
async fn api_responses_mask_secrets_and_their_encodings() {
    for db in databases() {
        let env = TestEnv::new(&db).await;
        let app = env.spawn_app(&yaml_with_env(&env, DB_PASSWORD)).await;

        // A state holding the sensitive variable and gantry's own GitHub token.
        let state = json!({
            "version": 4,
            "outputs": {
                "password": {"value": encodings(DB_PASSWORD), "sensitive": true},
                "token": {"value": encodings(GITHUB_TOKEN)},
                "region": {"value": "eu-west-1"}
            }
        })
        .to_string();
        app.ctx
            .store
            .add_state_version("network", 1, "lineage-1", 1, &state)
            .await
            .unwrap();
        let body = get_text(&app, "/api/workspaces/network/state").await;
        assert_masked(&body, DB_PASSWORD);
        assert_masked(&body, GITHUB_TOKEN);
        let masked: serde_json::Value = serde_json::from_str(&body).expect("still JSON");
        assert_eq!(masked["outputs"]["region"]["value"], "eu-west-1");
        for output in ["password", "token"] {
            let values = masked["outputs"][output]["value"].as_array().unwrap();
            for (i, v) in values.iter().enumerate() {
                let v = v.as_str().unwrap();
                if matches!(i, 0 | 3 | 4 | 5) {
                    // Clear, hex, URL-encoded: replaced whole.
                    assert_eq!(v, "***", "{output}[{i}]");
                } else {
                    // base64: what is left is the encoded neighbours (at most
                    // the 8 characters of `{"k":"`), the characters shared with
                    // them (3 + 4) and padding.
                    assert!(
                        v.contains("***") && v.len() <= 8 + 3 + 3 + 4 + 2,
                        "{output}[{i}]: {v}"
                    );
                }
            }
        }

        // An audit detail (and the API's JSON escaping of it).
        app.ctx
            .store
            .audit(gantry::store::Audit {
                actor: "api",
                action: "lock",
                workspace: Some("network"),
                detail: Some(&format!("pasted {} by mistake", encodings(DB_PASSWORD)[3])),
                ..Default::default()
            })
            .await
            .unwrap();
        let body = get_text(&app, "/api/audit").await;
        assert!(body.contains("pasted *** by mistake"), "{body}");
        assert_masked(&body, DB_PASSWORD);

        // After a reload, the new config's secrets are the ones masked.
        env.write_config(&yaml_with_env(&env, ROTATED_PASSWORD));
        assert!(app.ctx.reload());
        app.ctx
            .store
            .add_state_version(
                "network",
                2,
                "lineage-1",
                2,
                &json!({"version": 4, "outputs": {"p": {"value": encodings(ROTATED_PASSWORD)}}})
                    .to_string(),
            )
            .await
            .unwrap();
        let body = get_text(&app, "/api/workspaces/network/state").await;
        assert_masked(&body, ROTATED_PASSWORD);
        app.stop().await;
    }
}

/// A PR's terraform prints a sensitive variable in clear, in base64 at each
/// alignment (both alphabets) and URL-encoded; the comment and the statuses
/// carry none of it.
#[tokio::test]
async fn comments_mask_secrets_and_their_encodings() {
    let env = TestEnv::new(&Db::Sqlite).await;
    let secret = "s3cr3t-T0ken/with+chars";
    let yaml = env.default_yaml().replace(
        "    dir: dns\n",
        &format!(
            "    dir: dns\n    variables:\n      - {{ name: deploy_token, terraform_var: true, value: \"{secret}\", sensitive: true }}\n"
        ),
    );
    let tf = r#"variable "deploy_token" {}
output "clear" { value = var.deploy_token }
output "b64_0" { value = base64encode(var.deploy_token) }
output "b64_1" { value = base64encode("x${var.deploy_token}") }
output "b64_2" { value = base64encode("xy${var.deploy_token}") }
output "b64_url" { value = replace(replace(base64encode("x${var.deploy_token}"), "+", "-"), "/", "_") }
output "url" { value = urlencode(var.deploy_token) }
resource "null_resource" "this" {}
"#;
    let (_, base, head) = env.origin.standard_change(
        vec![("dns/main.tf", tf.to_string())],
        "dns",
        &["refs/pull/7/head"],
    );
    let app = env.spawn_app(&yaml).await;
    app.send_webhook(
        "pull_request",
        "redact-comment-1",
        &pr_payload("opened", &head.to_string(), &base.to_string()),
    )
    .await;
    let runs = app.wait_for_runs_done(1).await;
    assert_eq!(runs[0]["state"], "planned", "{}", runs[0]);
    let comment = env.wait_for_comment(7, "planned").await;
    assert!(comment.contains("+ url"), "{comment}");
    assert!(comment.contains("***"), "{comment}");
    assert_masked(&comment, secret);
    // Exactly what terraform printed, at each alignment and in both alphabets.
    for prefix in ["", "x", "xy"] {
        let std = STANDARD.encode(format!("{prefix}{secret}"));
        let url = URL_SAFE_NO_PAD.encode(format!("{prefix}{secret}"));
        for form in [std, url] {
            let middle = &form[4..form.len() - 4];
            assert!(!comment.contains(middle), "{form} leaked in {comment}");
        }
    }
    let urlencoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    assert!(!comment.contains(&urlencoded), "{comment}");
    for r in env.github.requests() {
        assert_masked(&r.body.to_string(), secret);
    }
    app.stop().await;
}
