//! A local stand-in for the GitHub REST API: the endpoints gantry calls, with
//! response bodies shaped like GitHub's documented examples, recording every
//! request for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State_ {
    requests: Vec<Recorded>,
    /// comment id → (pr number, body, author's login)
    comments: BTreeMap<u64, (u64, String, String)>,
    next_id: u64,
    /// merge commit sha → pull request number
    commit_prs: BTreeMap<String, u64>,
    /// pull request number → head sha (open pull requests)
    pr_heads: BTreeMap<u64, String>,
    /// pull requests with an approving review
    approved: Vec<u64>,
    /// login → permission (`admin`, `write`, `read`, …); others are not collaborators
    permissions: BTreeMap<String, String>,
    /// (path fragment, delay): requests whose path contains the fragment are answered that late
    delays: Vec<(String, std::time::Duration)>,
    /// An outage: every request is answered 503 (and not recorded).
    down: bool,
    /// Requests answered 503 during outages.
    refused: usize,
}

/// Answers 503 while the fake is down, as GitHub does in an outage.
async fn outage(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    {
        let mut s = state.lock().unwrap();
        if s.down {
            s.refused += 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"message": "Service Unavailable"})),
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[derive(Clone)]
pub struct FakeGitHub {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State_>>,
}

type Shared = Arc<Mutex<State_>>;

fn record(state: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Value) {
    state.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        body: body.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
}

fn user() -> Value {
    json!({
        "login": "gantry-bot", "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://github.com/images/error/octocat_happy.gif", "gravatar_id": "",
        "url": "https://api.github.com/users/gantry-bot", "html_url": "https://github.com/gantry-bot",
        "followers_url": "https://api.github.com/users/gantry-bot/followers",
        "following_url": "https://api.github.com/users/gantry-bot/following{/other_user}",
        "gists_url": "https://api.github.com/users/gantry-bot/gists{/gist_id}",
        "starred_url": "https://api.github.com/users/gantry-bot/starred{/owner}{/repo}",
        "subscriptions_url": "https://api.github.com/users/gantry-bot/subscriptions",
        "organizations_url": "https://api.github.com/users/gantry-bot/orgs",
        "repos_url": "https://api.github.com/users/gantry-bot/repos",
        "events_url": "https://api.github.com/users/gantry-bot/events{/privacy}",
        "received_events_url": "https://api.github.com/users/gantry-bot/received_events",
        "type": "Bot", "site_admin": false
    })
}

/// The login the token's user (`GET /user`) has.
pub const TOKEN_LOGIN: &str = "gantry-bot";
/// The slug of the GitHub App (`GET /app`), and the login of its bot.
pub const APP_SLUG: &str = "gantry";
pub const APP_BOT_LOGIN: &str = "gantry[bot]";

/// The GitHub App as `GET /app` describes it.
fn app() -> Value {
    json!({
        "id": 12345, "slug": APP_SLUG, "node_id": "MDExOkludGVncmF0aW9uMTIzNDU=",
        "client_id": "Iv1.8a61f9b3a7aba766", "owner": user(), "name": "gantry",
        "description": "Terraform plans and applies for pull requests",
        "external_url": "https://gantry.test", "html_url": "https://github.com/apps/gantry",
        "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z",
        "permissions": {"checks": "write", "contents": "read", "metadata": "read", "pull_requests": "write", "statuses": "write"},
        "events": ["pull_request", "push"], "installations_count": 1
    })
}

/// The account `login` as comments show it: the app's bot for its comments
/// (`type: Bot`), a user otherwise.
fn author(login: &str) -> Value {
    let mut u = user();
    u["login"] = json!(login);
    u["url"] = json!(format!("https://api.github.com/users/{login}"));
    u["html_url"] = json!(format!("https://github.com/{login}"));
    if login == APP_BOT_LOGIN {
        u["id"] = json!(41_898_282);
        u["type"] = json!("Bot");
        u["html_url"] = json!(format!("https://github.com/apps/{APP_SLUG}"));
    } else if login != TOKEN_LOGIN {
        u["id"] = json!(583_231);
        u["type"] = json!("User");
    }
    u
}

fn comment_json(owner: &str, repo: &str, id: u64, pr: u64, body: &str, login: &str) -> Value {
    json!({
        "id": id, "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
        "url": format!("https://api.github.com/repos/{owner}/{repo}/issues/comments/{id}"),
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{pr}#issuecomment-{id}"),
        "body": body, "user": author(login),
        "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z",
        "issue_url": format!("https://api.github.com/repos/{owner}/{repo}/issues/{pr}"),
        "author_association": if login == APP_BOT_LOGIN { "NONE" } else { "MEMBER" },
        "performed_via_github_app": if login == APP_BOT_LOGIN { app() } else { Value::Null }
    })
}

/// Who a request's credentials act as: the app's bot with an installation
/// token, the token's user otherwise.
fn caller(headers: &HeaderMap) -> &'static str {
    let installation = format!("Bearer {INSTALLATION_TOKEN}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(a) if a == installation => APP_BOT_LOGIN,
        _ => TOKEN_LOGIN,
    }
}

async fn authenticated_user(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    let mut u = author(TOKEN_LOGIN);
    for (k, v) in [
        ("name", json!("gantry")),
        ("company", Value::Null),
        ("blog", json!("")),
        ("location", Value::Null),
        ("email", Value::Null),
        ("hireable", Value::Null),
        ("bio", Value::Null),
        ("twitter_username", Value::Null),
        ("public_repos", json!(0)),
        ("public_gists", json!(0)),
        ("followers", json!(0)),
        ("following", json!(0)),
        ("created_at", json!("2026-01-01T10:00:00Z")),
        ("updated_at", json!("2026-11-01T10:00:00Z")),
    ] {
        u[k] = v;
    }
    Json(u)
}

async fn authenticated_app(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    Json(app())
}

async fn create_status(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &body);
    let id = {
        let mut s = state.lock().unwrap();
        s.next_id += 1;
        s.next_id
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "url": format!("https://api.github.com/repos/{owner}/{repo}/statuses/{sha}"),
            "avatar_url": "https://github.com/images/error/hubot_happy.gif",
            "id": id, "node_id": "MDY6U3RhdHVzMQ==",
            "state": body["state"], "description": body["description"],
            "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
            "context": body["context"],
            "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z",
            "creator": user()
        })),
    )
}

async fn create_comment(
    State(state): State<Shared>,
    Path((owner, repo, pr)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &body);
    let text = body["body"].as_str().unwrap_or_default().to_string();
    let login = caller(&headers);
    let id = {
        let mut s = state.lock().unwrap();
        s.next_id += 1;
        let id = 1000 + s.next_id;
        s.comments.insert(id, (pr, text.clone(), login.to_string()));
        id
    };
    (
        StatusCode::CREATED,
        Json(comment_json(&owner, &repo, id, pr, &text, login)),
    )
}

async fn edit_comment(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    record(&state, &method, &uri, &headers, &body);
    let text = body["body"].as_str().unwrap_or_default().to_string();
    let mut s = state.lock().unwrap();
    match s.comments.get_mut(&id) {
        Some((pr, b, login)) => {
            *b = text.clone();
            let json = comment_json(&owner, &repo, id, *pr, &text, login);
            (StatusCode::OK, Json(json)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest/issues/comments#update-an-issue-comment"})),
        )
            .into_response(),
    }
}

async fn list_comments(
    State(state): State<Shared>,
    Path((owner, repo, pr)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    let s = state.lock().unwrap();
    let list: Vec<Value> = s
        .comments
        .iter()
        .filter(|(_, (p, _, _))| *p == pr)
        .map(|(id, (p, b, login))| comment_json(&owner, &repo, *id, *p, b, login))
        .collect();
    Json(Value::Array(list))
}

/// The token the fake mints for app installations.
pub const INSTALLATION_TOKEN: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";

async fn repo_installation(
    State(state): State<Shared>,
    Path((owner, _repo)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    Json(json!({
        "id": 1, "account": user(), "repository_selection": "selected",
        "access_tokens_url": "https://api.github.com/app/installations/1/access_tokens",
        "repositories_url": "https://api.github.com/installation/repositories",
        "html_url": format!("https://github.com/organizations/{owner}/settings/installations/1"),
        "app_id": 12345, "app_slug": "gantry", "target_id": 9919, "target_type": "Organization",
        "permissions": {"checks": "write", "contents": "read", "metadata": "read", "pull_requests": "write", "statuses": "write"},
        "events": ["pull_request", "push"], "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z",
        "single_file_name": null, "has_multiple_single_files": false, "single_file_paths": [], "suspended_by": null, "suspended_at": null
    }))
}

async fn access_token(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    (
        StatusCode::CREATED,
        Json(json!({
            "token": INSTALLATION_TOKEN,
            "expires_at": "2099-01-01T00:00:00Z",
            "permissions": {"contents": "read", "pull_requests": "write", "statuses": "write"},
            "repository_selection": "selected"
        })),
    )
}

async fn commit_pulls(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    let pr = state.lock().unwrap().commit_prs.get(&sha).copied();
    let list: Vec<Value> = pr
        .map(|n| {
            let mut p = serde_json::from_slice::<Value>(&crate::support::payload(
                "pull_request.closed.json",
                &[],
            ))
            .unwrap()["pull_request"]
                .clone();
            p["number"] = json!(n);
            p["merge_commit_sha"] = json!(sha);
            p["url"] = json!(format!(
                "https://api.github.com/repos/{owner}/{repo}/pulls/{n}"
            ));
            p
        })
        .into_iter()
        .collect();
    Json(Value::Array(list))
}

async fn get_pull(
    State(state): State<Shared>,
    Path((_owner, _repo, n)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> axum::response::Response {
    record(&state, &method, &uri, &headers, &Value::Null);
    let head = state.lock().unwrap().pr_heads.get(&n).cloned();
    let Some(head) = head else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    let mut p =
        serde_json::from_slice::<Value>(&crate::support::payload("pull_request.opened.json", &[]))
            .unwrap()["pull_request"]
            .clone();
    p["number"] = json!(n);
    p["head"]["sha"] = json!(head);
    p["mergeable"] = json!(true);
    p["mergeable_state"] = json!("clean");
    Json(p).into_response()
}

async fn list_reviews(
    State(state): State<Shared>,
    Path((_owner, _repo, n)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &Value::Null);
    let approved = state.lock().unwrap().approved.contains(&n);
    let mut reviews = vec![json!({
        "id": 80, "node_id": "MDE3OlB1bGxSZXF1ZXN0UmV2aWV3ODA=", "user": user(), "body": "Looks close.",
        "state": "COMMENTED", "html_url": "https://github.com/acme/infra/pull/7#pullrequestreview-80",
        "pull_request_url": "https://api.github.com/repos/acme/infra/pulls/7", "author_association": "MEMBER",
        "submitted_at": "2026-11-22T10:10:00Z", "commit_id": "ecdd80bb57125d7ba9641ffaa4d7d2c19d3f3091"
    })];
    if approved {
        let mut r = reviews[0].clone();
        r["id"] = json!(81);
        r["state"] = json!("APPROVED");
        r["body"] = json!("Ship it.");
        reviews.push(r);
    }
    Json(Value::Array(reviews))
}

async fn permission(
    State(state): State<Shared>,
    Path((_owner, _repo, login)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> axum::response::Response {
    record(&state, &method, &uri, &headers, &Value::Null);
    let perm = state.lock().unwrap().permissions.get(&login).cloned();
    match perm {
        Some(p) => {
            let mut u = user();
            u["login"] = json!(login);
            Json(json!({"permission": p, "role_name": p, "user": u})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("{login} is not a user"), "documentation_url": "https://docs.github.com/rest/collaborators/collaborators#get-repository-permissions-for-a-user"})),
        )
            .into_response(),
    }
}

async fn create_issue(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &body);
    let number = {
        let mut s = state.lock().unwrap();
        s.next_id += 1;
        100 + s.next_id
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "id": 1_000_000 + number, "node_id": "I_kwDOCyMqas5sv9R1", "number": number,
            "url": format!("https://api.github.com/repos/{owner}/{repo}/issues/{number}"),
            "html_url": format!("https://github.com/{owner}/{repo}/issues/{number}"),
            "title": body["title"], "body": body["body"], "state": "open", "user": user(),
            "labels": [], "assignees": [], "comments": 0, "locked": false,
            "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z", "closed_at": null
        })),
    )
}

async fn edit_issue(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    record(&state, &method, &uri, &headers, &body);
    Json(json!({
        "number": number, "url": format!("https://api.github.com/repos/{owner}/{repo}/issues/{number}"),
        "state": body.get("state").cloned().unwrap_or(json!("open")), "body": body["body"], "user": user()
    }))
}

/// Holds back requests [`FakeGitHub::delay`] names.
async fn delayed(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let delay = state
        .lock()
        .unwrap()
        .delays
        .iter()
        .find(|(fragment, _)| request.uri().path().contains(fragment.as_str()))
        .map(|(_, d)| *d);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    next.run(request).await
}

impl FakeGitHub {
    /// Pull request `pr` is open with head `sha`.
    pub fn set_pr_head(&self, pr: u64, sha: &str) {
        self.state
            .lock()
            .unwrap()
            .pr_heads
            .insert(pr, sha.to_string());
    }

    pub fn approve(&self, pr: u64) {
        self.state.lock().unwrap().approved.push(pr);
    }

    pub fn set_permission(&self, login: &str, permission: &str) {
        self.state
            .lock()
            .unwrap()
            .permissions
            .insert(login.to_string(), permission.to_string());
    }

    /// Answers requests whose path contains `path_fragment` only after `by` (a slow API).
    pub fn delay(&self, path_fragment: &str, by: std::time::Duration) {
        self.state
            .lock()
            .unwrap()
            .delays
            .push((path_fragment.to_string(), by));
    }

    /// Makes `GET /repos/{o}/{r}/commits/{sha}/pulls` answer with pull request `pr`.
    pub fn set_commit_pr(&self, sha: &str, pr: u64) {
        self.state
            .lock()
            .unwrap()
            .commit_prs
            .insert(sha.to_string(), pr);
    }

    pub async fn start() -> FakeGitHub {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
            .route(
                "/repos/{owner}/{repo}/issues/{pr}/comments",
                post(create_comment).get(list_comments),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                patch(edit_comment),
            )
            .route("/repos/{owner}/{repo}/installation", get(repo_installation))
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/pulls",
                get(commit_pulls),
            )
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/user", get(authenticated_user))
            .route("/app", get(authenticated_app))
            .route("/repos/{owner}/{repo}/pulls/{pr}", get(get_pull))
            .route("/repos/{owner}/{repo}/issues", post(create_issue))
            .route("/repos/{owner}/{repo}/issues/{number}", patch(edit_issue))
            .route("/repos/{owner}/{repo}/pulls/{pr}/reviews", get(list_reviews))
            .route("/repos/{owner}/{repo}/collaborators/{login}/permission", get(permission))
            .route("/health", get(|| async { "ok" }))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})),
                )
            })
            .layer(axum::middleware::from_fn_with_state(state.clone(), outage))
            .layer(axum::middleware::from_fn_with_state(state.clone(), delayed))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGitHub { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Status bodies posted for `sha`, in order.
    pub fn statuses(&self, sha: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/statuses/{sha}")))
            .map(|r| r.body)
            .collect()
    }

    /// Comment bodies currently on a pull request.
    pub fn comments(&self, pr: u64) -> Vec<(u64, String)> {
        self.comments_by(pr)
            .into_iter()
            .map(|(id, b, _)| (id, b))
            .collect()
    }

    /// Comments currently on a pull request: id, body, author's login.
    pub fn comments_by(&self, pr: u64) -> Vec<(u64, String, String)> {
        let s = self.state.lock().unwrap();
        s.comments
            .iter()
            .filter(|(_, (p, _, _))| *p == pr)
            .map(|(id, (_, b, login))| (*id, b.clone(), login.clone()))
            .collect()
    }

    /// A comment `login` wrote on pull request `pr` (not through the API
    /// gantry calls, so unrecorded); returns its id.
    pub fn add_comment(&self, pr: u64, login: &str, body: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = 1000 + s.next_id;
        s.comments
            .insert(id, (pr, body.to_string(), login.to_string()));
        id
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Starts (`true`) or ends an outage: every request answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// How many requests were answered 503 during outages.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    pub fn delete_all_comments(&self) {
        self.state.lock().unwrap().comments.clear();
    }
}
