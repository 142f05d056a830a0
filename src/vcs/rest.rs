//! The JSON-over-HTTPS client the reqwest-based providers (Bitbucket Cloud,
//! Azure DevOps) and the GitLab endpoint client share: one base URL, one
//! authorization header (never logged), timeouts, error classification and
//! retries of transient failures.

use std::time::Duration;

use http::{HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::VcsError;

#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    authorization: HeaderValue,
    /// For logs: `bitbucket`, `azure_devops`, …
    provider_id: String,
}

impl RestClient {
    pub fn new(provider_id: &str, base: &str, authorization: &str) -> anyhow::Result<RestClient> {
        let mut authorization = HeaderValue::from_str(authorization).map_err(|_| {
            anyhow::anyhow!("provider {provider_id}: the token is not a valid header value")
        })?;
        authorization.set_sensitive(true);
        let http = http_client()?;
        Ok(RestClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            authorization,
            provider_id: provider_id.to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path` (which starts with `/`), or `path` itself when it is
    /// an absolute URL on the API's own origin (a pagination link). The token
    /// is never sent anywhere else.
    pub fn url(&self, path: &str) -> Result<String, VcsError> {
        if !(path.starts_with("http://") || path.starts_with("https://")) {
            return Ok(format!("{}{path}", self.base));
        }
        let origin = |u: &str| {
            url::Url::parse(u)
                .ok()
                .map(|u| u.origin().ascii_serialization())
        };
        match (origin(path), origin(&self.base)) {
            (Some(a), Some(b)) if a == b => Ok(path.to_string()),
            _ => Err(VcsError::Other(format!(
                "refusing to follow a link off the API's origin: {}",
                path.split('?').next().unwrap_or_default()
            ))),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, VcsError> {
        self.send(Method::GET, path, None::<&()>, None).await
    }

    pub async fn post<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, VcsError> {
        self.send(Method::POST, path, Some(body), None).await
    }

    pub async fn put<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, VcsError> {
        self.send(Method::PUT, path, Some(body), None).await
    }

    pub async fn patch<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        content_type: Option<&'static str>,
    ) -> Result<T, VcsError> {
        self.send(Method::PATCH, path, Some(body), content_type)
            .await
    }

    /// Sends a JSON request (retrying transient failures) and decodes the
    /// JSON answer; an empty answer decodes as `null`.
    pub async fn send<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        content_type: Option<&'static str>,
    ) -> Result<T, VcsError> {
        let url = self.url(path)?;
        let payload = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| VcsError::Other(e.to_string()))?),
            None => None,
        };
        let what = format!("{method} {path}");
        let bytes = super::retry_transient(&self.provider_id, &what, || async {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(http::header::AUTHORIZATION, self.authorization.clone())
                .header(http::header::ACCEPT, "application/json");
            if let Some(p) = &payload {
                req = req
                    .header(
                        http::header::CONTENT_TYPE,
                        content_type.unwrap_or("application/json"),
                    )
                    .body(p.clone());
            }
            let resp = req.send().await.map_err(|e| VcsError::Server {
                status: 0,
                message: without_url(&e),
            })?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| VcsError::Server {
                status: 0,
                message: without_url(&e),
            })?;
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(classify(status.as_u16(), &bytes))
            }
        })
        .await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map_err(|e| VcsError::Other(format!("unexpected answer to {method} {path}: {e}")))
    }
}

/// The HTTP client provider APIs are called with: timeouts and gantry's user agent.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// reqwest errors name the URL; ours may carry a token in a query, so drop it.
pub fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

/// Classifies an error answer; the message is the provider's own when it sends
/// one (`{"message": …}`, `{"error": {"message": …}}`), kept short.
pub fn classify(status: u16, body: &[u8]) -> VcsError {
    let message = error_message(body).unwrap_or_else(|| {
        String::from_utf8_lossy(body)
            .chars()
            .take(200)
            .collect::<String>()
    });
    from_status(status, message)
}

/// The error an HTTP status stands for.
pub fn from_status(status: u16, message: String) -> VcsError {
    match status {
        401 => VcsError::Unauthorized(message),
        403 => VcsError::Forbidden(message),
        404 => VcsError::NotFound(message),
        429 => VcsError::RateLimited(message),
        500..=599 => VcsError::Server { status, message },
        _ => VcsError::Other(format!("HTTP {status}: {message}")),
    }
}

fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("error"))?;
    Some(match m {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `user:password` as an HTTP Basic authorization value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Percent-encodes one path segment (GitLab project paths, branch names).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_with_the_providers_message() {
        let e = classify(
            404,
            br#"{"type": "error", "error": {"message": "Repository not found"}}"#,
        );
        assert!(matches!(e, VcsError::NotFound(m) if m == "Repository not found"));
        let e = classify(401, br#"{"message": "401 Unauthorized"}"#);
        assert!(matches!(e, VcsError::Unauthorized(m) if m == "401 Unauthorized"));
        assert!(classify(503, b"busy").is_transient());
        assert!(classify(429, b"").is_transient());
        assert!(!classify(400, b"bad").is_transient());
    }

    #[test]
    fn links_are_followed_only_on_the_apis_origin() {
        let c = RestClient::new("bb", "https://api.bitbucket.org/2.0", "Bearer t").unwrap();
        assert_eq!(
            c.url("/user").unwrap(),
            "https://api.bitbucket.org/2.0/user"
        );
        let next = "https://api.bitbucket.org/2.0/repositories/a/b/pullrequests/1/comments?page=2";
        assert_eq!(c.url(next).unwrap(), next);
        assert!(c.url("https://evil.example/2.0/x?page=2").is_err());
        assert!(c.url("http://api.bitbucket.org/2.0/x").is_err());
    }

    #[test]
    fn basic_auth_and_segments() {
        assert_eq!(basic("", "pat"), "Basic OnBhdA==");
        assert_eq!(encode_segment("acme/infra"), "acme%2Finfra");
        assert_eq!(encode_segment("a b"), "a%20b");
    }
}
