//! A local stand-in for the GitLab, Bitbucket Cloud and Azure DevOps REST APIs:
//! the endpoints gantry calls, answered in each provider's documented shape,
//! recording every request (method, path with query, content type, body) for
//! assertions on the exact paths and bodies.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path and query, as sent (percent-encoding kept).
    pub uri: String,
    pub content_type: String,
    pub authorization: Option<String>,
    pub private_token: Option<String>,
    /// JSON bodies as JSON; form bodies as an object of their fields.
    pub body: Value,
}

impl Call {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    next_id: i64,
}

#[derive(Clone)]
pub struct FakeApi {
    addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn decode_body(content_type: &str, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let fields: serde_json::Map<String, Value> = url::form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        return Value::Object(fields);
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The answer to one call, by provider route.
fn answer(method: &Method, path: &str, id: i64) -> (StatusCode, Value) {
    let post = method == Method::POST;
    let get = method == Method::GET;
    let created = StatusCode::CREATED;
    let ok = StatusCode::OK;
    // GitLab (`/api/v4/projects/:id/…`).
    if path.starts_with("/api/v4/") {
        return if post && path.contains("/statuses/") {
            (
                created,
                json!({"id": id, "status": "running", "name": "gantry"}),
            )
        } else if post && path.ends_with("/notes") {
            (
                created,
                json!({"id": id, "body": "", "system": false, "noteable_type": "MergeRequest"}),
            )
        } else if method == Method::PUT && path.contains("/notes/") {
            (ok, json!({"id": 1, "body": ""}))
        } else if get && path.ends_with("/notes") {
            (ok, json!([]))
        } else if get && path.ends_with("/merge_requests") && path.contains("/commits/") {
            (
                ok,
                json!([{"id": 99, "iid": 7, "state": "merged", "target_branch": "main"}]),
            )
        } else {
            (StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}))
        };
    }
    // Bitbucket Cloud (`/2.0/repositories/{workspace}/{repo_slug}/…`).
    if path.starts_with("/2.0/") {
        return if post && path.ends_with("/statuses/build") {
            (created, json!({"type": "build", "state": "INPROGRESS"}))
        } else if post && path.ends_with("/comments") {
            (
                created,
                json!({"type": "pullrequest_comment", "id": id, "content": {"raw": ""}}),
            )
        } else if method == Method::PUT && path.contains("/comments/") {
            (ok, json!({"type": "pullrequest_comment", "id": id}))
        } else if get && path.ends_with("/comments") {
            (
                ok,
                json!({"pagelen": 100, "size": 0, "page": 1, "values": []}),
            )
        } else if get && path.ends_with("/pullrequests") && path.contains("/commit/") {
            (
                ok,
                json!({"pagelen": 10, "page": 1, "values": [{"type": "pullrequest", "id": 7, "state": "MERGED"}]}),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                json!({"type": "error", "error": {"message": "Resource not found"}}),
            )
        };
    }
    // Azure DevOps (`/{organization}/{project}/_apis/git/repositories/{repo}/…`).
    if post && path.ends_with("/statuses") {
        (created, json!({"id": id, "state": "pending"}))
    } else if post && path.ends_with("/threads") {
        (
            ok,
            json!({"id": id, "comments": [{"id": 1, "parentCommentId": 0, "content": ""}], "status": "active"}),
        )
    } else if method == Method::PATCH && path.contains("/threads/") {
        (ok, json!({"id": 1, "parentCommentId": 0}))
    } else if get && path.ends_with("/threads") {
        (ok, json!({"value": [], "count": 0}))
    } else if post && path.ends_with("/pullrequestquery") {
        (
            ok,
            json!({"results": [{"merge": [{"pullRequestId": 7, "status": "completed"}]}]}),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            json!({"$id": "1", "message": "not found", "typeKey": "NotFoundException"}),
        )
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let state = inner.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let content_type = header("content-type").unwrap_or_default();
                    let mut s = state.lock().unwrap();
                    s.next_id += 1;
                    let id = 100 + s.next_id;
                    s.calls.push(Call {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        body: decode_body(&content_type, &body),
                        content_type,
                        authorization: header("authorization"),
                        private_token: header("private-token"),
                    });
                    let (status, value) = answer(&method, uri.path(), id);
                    (status, Json(value)).into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls with `method` whose path (without query) ends with `suffix`.
    pub fn find(&self, method: &str, suffix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path().ends_with(suffix))
            .collect()
    }
}
