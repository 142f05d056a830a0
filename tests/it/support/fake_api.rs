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
    /// The head commit of pull request 7 (the one the fake's answers describe).
    head: String,
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

/// Pull request 7, approved, mergeable, and octocat's write access, as each
/// provider's API describes them.
fn pull_request_answer(path: &str, head: &str) -> Option<Value> {
    Some(match path {
        "/api/v4/projects/acme%2Finfra/merge_requests/7" => json!({
            "id": 99, "iid": 7, "project_id": 15, "title": "Widen the VPC", "state": "opened",
            "sha": head, "source_branch": "widen-vpc", "target_branch": "main",
            "source_project_id": 15, "target_project_id": 15, "draft": false,
            "merge_status": "can_be_merged", "detailed_merge_status": "mergeable", "has_conflicts": false
        }),
        "/api/v4/projects/acme%2Finfra/merge_requests/7/approvals" => json!({
            "id": 99, "iid": 7, "project_id": 15, "state": "opened", "approved": true,
            "approvals_required": 1, "approvals_left": 0,
            "approved_by": [{"user": {"id": 2, "username": "monalisa", "name": "Mona Lisa"}}]
        }),
        "/api/v4/users" => {
            json!([{"id": 6, "username": "octocat", "name": "Octo Cat", "state": "active"}])
        }
        "/api/v4/projects/acme%2Finfra/members/all/6" => json!({
            "id": 6, "username": "octocat", "name": "Octo Cat", "state": "active", "access_level": 30
        }),
        "/2.0/repositories/acme/infra/pullrequests/7" => {
            let endpoint = |branch: &str, hash: &str| {
                json!({
                    "branch": {"name": branch}, "commit": {"hash": hash, "type": "commit"},
                    "repository": {"type": "repository", "full_name": "acme/infra", "name": "infra"}
                })
            };
            json!({
                "type": "pullrequest", "id": 7, "title": "Widen the VPC", "state": "OPEN", "draft": false,
                "author": {"type": "user", "nickname": "octocat", "account_id": "557058:0d1b0c3c-8e33-4a6c-b1b2-2f0a1c0d9e77"},
                "source": endpoint("widen-vpc", &head[..12]),
                "destination": endpoint("main", "3d5c6a7b8c9d"),
                "merge_commit": null,
                "participants": [{"type": "participant", "role": "REVIEWER", "approved": true, "state": "approved",
                                  "user": {"type": "user", "nickname": "monalisa"}}]
            })
        }
        "/2.0/repositories/acme/infra/pullrequests/7/diffstat" => json!({
            "pagelen": 500, "page": 1, "size": 1,
            "values": [{"type": "diffstat", "status": "modified", "lines_added": 1, "lines_removed": 1}]
        }),
        "/2.0/workspaces/acme/permissions/repositories/infra" => json!({
            "pagelen": 10, "page": 1, "size": 1,
            "values": [{"type": "repository_permission", "permission": "write",
                        "user": {"type": "user", "account_id": "557058:0d1b0c3c-8e33-4a6c-b1b2-2f0a1c0d9e77"}}]
        }),
        "/acme/platform/_apis/git/repositories/infra/pullRequests/7" => json!({
            "pullRequestId": 7, "status": "active", "title": "Widen the VPC",
            "repository": {"id": "4bc14d40-c903-45e2-872e-0462c7748079", "name": "infra",
                           "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "name": "platform"}},
            "sourceRefName": "refs/heads/widen-vpc", "targetRefName": "refs/heads/main",
            "mergeStatus": "succeeded", "isDraft": false,
            "lastMergeSourceCommit": {"commitId": head},
            "reviewers": [{"displayName": "Mona Lisa", "uniqueName": "monalisa@acme.com", "vote": 10}]
        }),
        "/acme/platform/_apis/git/repositories/infra" => json!({
            "id": "4bc14d40-c903-45e2-872e-0462c7748079", "name": "infra",
            "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "name": "platform"}
        }),
        "/acme/_apis/identities" => json!({"count": 1, "value": [{
            "id": "54d125f7-69f7-4191-904f-c5b96b6261c8",
            "descriptor": "Microsoft.IdentityModel.Claims.ClaimsIdentity;acme.onmicrosoft.com\\octocat@acme.com",
            "providerDisplayName": "Octo Cat"
        }]}),
        "/acme/_apis/accesscontrollists/2e9eb7ed-3c0a-47d4-87c1-0ffdd275fd87" => {
            json!({"count": 1, "value": [{
                "inheritPermissions": true,
                "token": "repoV2/6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c/4bc14d40-c903-45e2-872e-0462c7748079",
                "acesDictionary": {
                    "Microsoft.IdentityModel.Claims.ClaimsIdentity;acme.onmicrosoft.com\\octocat@acme.com": {
                        "descriptor": "Microsoft.IdentityModel.Claims.ClaimsIdentity;acme.onmicrosoft.com\\octocat@acme.com",
                        "allow": 0, "deny": 0,
                        "extendedInfo": {"effectiveAllow": 16502, "effectiveDeny": 0}
                    }
                }
            }]})
        }
        _ => return None,
    })
}

/// The answer to one call, by provider route.
fn answer(method: &Method, path: &str, id: i64, head: &str) -> (StatusCode, Value) {
    if method == Method::GET && !head.is_empty() {
        if let Some(v) = pull_request_answer(path, head) {
            return (StatusCode::OK, v);
        }
    }
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
        } else if post && path.ends_with("/issues") {
            (
                created,
                json!({"id": 501, "iid": 3, "project_id": 15, "state": "opened"}),
            )
        } else if method == Method::PUT && path.contains("/issues/") {
            (ok, json!({"id": 501, "iid": 3, "project_id": 15}))
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
        } else if post && path.ends_with("/issues") {
            (created, json!({"type": "issue", "id": 3, "state": "new"}))
        } else if method == Method::PUT && path.contains("/issues/") {
            (ok, json!({"type": "issue", "id": 3}))
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
    } else if post && path.ends_with("/_apis/wit/workitems/$Issue") {
        (
            ok,
            json!({"id": 3, "rev": 1, "fields": {"System.WorkItemType": "Issue"}}),
        )
    } else if method == Method::PATCH && path.contains("/_apis/wit/workitems/") {
        (ok, json!({"id": 3, "rev": 2}))
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
                    let (status, value) = answer(&method, uri.path(), id, &s.head);
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

    /// Pull request 7 is open at `sha`, approved, and octocat may write.
    pub fn set_pr_head(&self, sha: &str) {
        self.inner.lock().unwrap().head = sha.to_string();
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
