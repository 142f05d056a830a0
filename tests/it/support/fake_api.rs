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
    /// Pull request comments (GitLab notes, Bitbucket comments, Azure DevOps
    /// threads), in the order they were made.
    comments: Vec<Comment>,
    /// Comments added by tests, numbered apart from the API's answers.
    seeded: i64,
    /// The identity endpoints refuse the token (a missing scope).
    identity_refused: bool,
}

/// Who wrote a comment: the token's user (every comment made through the
/// API), or another account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    Gantry,
    Stranger,
}

#[derive(Debug, Clone)]
pub struct Comment {
    /// The path comments are listed at (`…/notes`, `…/comments`, `…/threads`).
    pub list: String,
    pub id: i64,
    pub body: String,
    pub author: Author,
}

/// The token's user, and another account, as each provider's API shows them.
fn account(list: &str, who: Author) -> Value {
    let gantry = who == Author::Gantry;
    if list.starts_with("/api/v4/") {
        let (id, username, name) = if gantry {
            (42, "gantry-bot", "gantry")
        } else {
            (66, "mallory", "Mallory")
        };
        json!({
            "id": id, "username": username, "name": name, "state": "active", "locked": false,
            "avatar_url": format!("https://gitlab.example.com/uploads/-/system/user/avatar/{id}/avatar.png"),
            "web_url": format!("https://gitlab.example.com/{username}")
        })
    } else if list.starts_with("/2.0/") {
        let (display_name, uuid, account_id) = if gantry {
            (
                "gantry",
                "{4f0b7d2e-9c1a-4e6b-8d3f-5a2c1b0e9d87}",
                "712020:6c0f2b1e-7a8d-4c3b-9e5f-1d2a3b4c5d6e",
            )
        } else {
            (
                "Mallory",
                "{9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4}",
                "557058:1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6",
            )
        };
        json!({
            "type": "user", "display_name": display_name, "uuid": uuid, "account_id": account_id,
            "nickname": display_name.to_lowercase(),
            "links": {"avatar": {"href": format!("https://secure.gravatar.com/avatar/{account_id}")}}
        })
    } else {
        let (display_name, id, unique_name) = if gantry {
            (
                "gantry",
                "d6245f20-2af8-44f4-9451-8107cb2767db",
                "gantry@acme.com",
            )
        } else {
            (
                "Mallory",
                "0a7e3f52-6c1d-4b8e-9f2a-3d4c5b6a7e8f",
                "mallory@acme.com",
            )
        };
        json!({
            "displayName": display_name, "id": id, "uniqueName": unique_name,
            "url": format!("https://spsprodweu5.vssps.visualstudio.com/A1b2c3d4/_apis/Identities/{id}"),
            "imageUrl": format!("https://dev.azure.com/acme/_api/_common/identityImage?id={id}")
        })
    }
}

/// One comment as its provider's API answers it.
fn comment_json(c: &Comment) -> Value {
    let user = account(&c.list, c.author);
    if c.list.starts_with("/api/v4/") {
        json!({
            "id": c.id, "type": null, "body": c.body, "author": user,
            "created_at": "2026-11-22T10:00:00.000Z", "updated_at": "2026-11-22T10:00:00.000Z",
            "system": false, "noteable_id": 99, "noteable_type": "MergeRequest", "noteable_iid": 7,
            "resolvable": false, "confidential": false, "internal": false
        })
    } else if c.list.starts_with("/2.0/") {
        json!({
            "type": "pullrequest_comment", "id": c.id,
            "content": {"type": "rendered", "raw": c.body, "markup": "markdown", "html": ""},
            "user": user, "deleted": false,
            "created_on": "2026-11-22T10:00:00.000000+00:00", "updated_on": "2026-11-22T10:00:00.000000+00:00",
            "pullrequest": {"type": "pullrequest", "id": 7, "title": "Widen the VPC"}
        })
    } else {
        json!({
            "id": c.id, "publishedDate": "2026-11-22T10:00:00.000Z", "lastUpdatedDate": "2026-11-22T10:00:00.000Z",
            "comments": [{
                "id": 1, "parentCommentId": 0, "author": user, "content": c.body,
                "publishedDate": "2026-11-22T10:00:00.000Z", "lastUpdatedDate": "2026-11-22T10:00:00.000Z",
                "lastContentUpdatedDate": "2026-11-22T10:00:00.000Z", "commentType": "text"
            }],
            "status": "active", "properties": {}, "identities": null, "isDeleted": false
        })
    }
}

/// The identity endpoints: GitLab's and Bitbucket's `GET /user` (which
/// Bitbucket refuses to access tokens), Azure DevOps' connection data.
fn identity_answer(path: &str, authorization: Option<&str>) -> Option<(StatusCode, Value)> {
    Some(match path {
        "/api/v4/user" => {
            let mut u = account("/api/v4/", Author::Gantry);
            for (k, v) in [
                ("created_at", json!("2026-01-01T10:00:00.000Z")),
                ("bio", json!("")),
                ("public_email", Value::Null),
                ("bot", json!(false)),
                ("email", json!("gantry@acme.com")),
                ("can_create_group", json!(false)),
                ("can_create_project", json!(false)),
                ("two_factor_enabled", json!(false)),
                ("external", json!(false)),
                ("private_profile", json!(false)),
            ] {
                u[k] = v;
            }
            (StatusCode::OK, u)
        }
        "/2.0/user" if authorization.is_some_and(|a| a.starts_with("Basic ")) => {
            let mut u = account("/2.0/", Author::Gantry);
            u["created_on"] = json!("2026-01-01T10:00:00.000000+00:00");
            u["is_staff"] = json!(false);
            u["account_status"] = json!("active");
            (StatusCode::OK, u)
        }
        "/2.0/user" => (
            StatusCode::UNAUTHORIZED,
            json!({"type": "error", "error": {"message": "Token is invalid or not supported for this endpoint."}}),
        ),
        "/acme/_apis/connectionData" => {
            let me = account("", Author::Gantry);
            let identity = json!({
                "id": me["id"],
                "descriptor": "Microsoft.IdentityModel.Claims.ClaimsIdentity;acme.onmicrosoft.com\\gantry@acme.com",
                "subjectDescriptor": "aad.ZDYyNDVmMjAtMmFmOC03NGY0LTk0NTEtODEwN2NiMjc2N2Ri",
                "providerDisplayName": "gantry", "isActive": true,
                "properties": {"Account": {"$type": "System.String", "$value": "gantry@acme.com"}},
                "resourceVersion": 2, "metaTypeId": 0
            });
            (
                StatusCode::OK,
                json!({
                    "authenticatedUser": identity, "authorizedUser": identity,
                    "instanceId": "4a7c6f2e-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
                    "deploymentId": "8b9c0d1e-2f3a-4b5c-9d6e-7f8a9b0c1d2e",
                    "deploymentType": "hosted",
                    "locationServiceData": {"serviceOwner": "00025394-6065-48ca-87d9-7f5672854ef7",
                                            "defaultAccessMappingMoniker": "PublicAccessMapping",
                                            "lastChangeId": 1, "lastChangeId64": 1}
                }),
            )
        }
        _ => return None,
    })
}

/// How each provider refuses a token that may not read its own user.
fn identity_refusal(path: &str) -> (StatusCode, Value) {
    if path.starts_with("/api/v4/") {
        (
            StatusCode::FORBIDDEN,
            json!({"error": "insufficient_scope", "scope": "read_user",
                   "error_description": "The request requires higher privileges than provided by the access token."}),
        )
    } else if path.starts_with("/2.0/") {
        (
            StatusCode::FORBIDDEN,
            json!({"type": "error", "error": {"message": "Your credentials lack one or more required privilege scopes.",
                   "detail": {"granted": ["pullrequest:write"], "required": ["account"]}}}),
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            json!({"$id": "1", "innerException": null, "typeKey": "UnauthorizedRequestException", "errorCode": 0, "eventId": 3000,
                   "message": "TF400813: The user 'gantry@acme.com' is not authorized to access this resource.",
                   "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, Microsoft.TeamFoundation.Framework.Server"}),
        )
    }
}

/// Comments kept across calls: created, listed and edited per pull request.
fn comment_answer(
    inner: &mut Inner,
    method: &Method,
    path: &str,
    body: &Value,
    id: i64,
) -> Option<(StatusCode, Value)> {
    let not_found = || (StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    // The list path, and the comment's id for an edit.
    let gitlab = path.starts_with("/api/v4/") && path.contains("/merge_requests/");
    let bitbucket = path.starts_with("/2.0/") && path.contains("/pullrequests/");
    let azure = path.contains("/_apis/git/repositories/") && path.contains("/threads");
    if !(gitlab || bitbucket || azure) {
        return None;
    }
    let list_suffix = if gitlab {
        "/notes"
    } else if bitbucket {
        "/comments"
    } else {
        "/threads"
    };
    if path.ends_with(list_suffix) {
        if method == Method::POST {
            let text = if gitlab {
                &body["body"]
            } else if bitbucket {
                &body["content"]["raw"]
            } else {
                &body["comments"][0]["content"]
            };
            let c = Comment {
                list: path.to_string(),
                id,
                body: text.as_str().unwrap_or_default().to_string(),
                author: Author::Gantry,
            };
            let answer = comment_json(&c);
            inner.comments.push(c);
            let status = if azure {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            return Some((status, answer));
        }
        if method == Method::GET {
            let list: Vec<Value> = inner
                .comments
                .iter()
                .filter(|c| c.list == path)
                .map(comment_json)
                .collect();
            let n = list.len();
            return Some((
                StatusCode::OK,
                if gitlab {
                    Value::Array(list)
                } else if bitbucket {
                    json!({"pagelen": 100, "size": n, "page": 1, "values": list})
                } else {
                    json!({"value": list, "count": n})
                },
            ));
        }
        return None;
    }
    // An edit: `…/notes/{id}` (PUT), `…/comments/{id}` (PUT), `…/threads/{id}/comments/1` (PATCH).
    let (list, rest) = path.split_once(&format!("{list_suffix}/"))?;
    let list = format!("{list}{list_suffix}");
    let target: i64 = rest.split('/').next()?.parse().ok()?;
    let edit = if azure {
        method == Method::PATCH && rest.ends_with("/comments/1")
    } else {
        method == Method::PUT && !rest.contains('/')
    };
    if !edit {
        return None;
    }
    let Some(c) = inner
        .comments
        .iter_mut()
        .find(|c| c.list == list && c.id == target)
    else {
        return Some(not_found());
    };
    let text = if gitlab {
        &body["body"]
    } else if bitbucket {
        &body["content"]["raw"]
    } else {
        &body["content"]
    };
    c.body = text.as_str().unwrap_or_default().to_string();
    let mut answer = comment_json(c);
    if azure {
        // Azure DevOps answers an edit with the comment, not the thread.
        answer = answer["comments"][0].clone();
    }
    Some((StatusCode::OK, answer))
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
                    let call = s.calls.last().cloned().expect("just recorded");
                    let (status, value) =
                        identity_answer(uri.path(), call.authorization.as_deref())
                            .filter(|_| method == Method::GET)
                            .map(|answer| match s.identity_refused {
                                true => identity_refusal(uri.path()),
                                false => answer,
                            })
                            .or_else(|| comment_answer(&mut s, &method, uri.path(), &call.body, id))
                            .unwrap_or_else(|| answer(&method, uri.path(), id, &s.head));
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

    /// A comment written outside the API gantry calls (unrecorded), on the
    /// pull request whose comments are listed at `list`; returns its id,
    /// newer than every comment before it.
    pub fn add_comment(&self, list: &str, author: Author, body: &str) -> i64 {
        let mut s = self.inner.lock().unwrap();
        s.seeded += 1;
        let id = 9000 + s.seeded;
        s.comments.push(Comment {
            list: list.to_string(),
            id,
            body: body.to_string(),
            author,
        });
        id
    }

    /// The identity endpoints answer 403 from now on.
    pub fn refuse_identity(&self) {
        self.inner.lock().unwrap().identity_refused = true;
    }

    /// The comments on the pull request whose comments are listed at `list`.
    pub fn comments(&self, list: &str) -> Vec<Comment> {
        let s = self.inner.lock().unwrap();
        s.comments
            .iter()
            .filter(|c| c.list == list)
            .cloned()
            .collect()
    }

    /// Calls with `method` whose path (without query) ends with `suffix`.
    pub fn find(&self, method: &str, suffix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path().ends_with(suffix))
            .collect()
    }
}
