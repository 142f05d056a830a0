//! The agent's side of [`protocol`]: one method per endpoint, each call
//! retried with backoff while the failure is transient (the network, a 5xx).
//! A 401, 404 or 409 is an answer, not a failure, and is never retried.

use std::time::Duration;

use backon::Retryable;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::runner::protocol::{
    self, ClaimRequest, Heartbeat, JobGrant, JobResult, LogChunk, AGENT_NAME_HEADER, LEASE_HEADER,
    SHA256_HEADER,
};

/// How long a request other than a claim may take (a source archive is the
/// largest body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The pool token is wrong: nothing the agent does will work.
    #[error("the server refused the pool token (401)")]
    Unauthorized,
    /// The job is not this agent's (or no longer exists).
    #[error("the server knows no such job for this agent (404)")]
    NotFound,
    /// The agent no longer holds the job's lease: stop and drop the job.
    #[error("the job's lease is lost (409)")]
    LeaseLost,
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the server: {0}")]
    Network(String),
}

impl ClientError {
    /// Worth another try: the server may answer differently in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network(_) => true,
            ClientError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Delays between the tries of one call.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    /// Tries after the first, for calls about a job (a claim retries forever).
    pub times: usize,
}

impl Default for Backoff {
    /// About a minute of retries: a job's lease is lost by then anyway.
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(15),
            times: 7,
        }
    }
}

/// A job the agent holds: its id and lease token, sent with every call about it.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub id: i64,
    pub lease: String,
}

impl JobRef {
    pub fn of(grant: &JobGrant) -> JobRef {
        JobRef {
            id: grant.job_id,
            lease: grant.lease_token.clone(),
        }
    }
}

/// Speaks the protocol to one server as one agent of one pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `--server`, without a trailing slash.
    base: String,
    token: SecretString,
    name: String,
    backoff: Backoff,
}

impl Client {
    pub fn new(
        server: &url::Url,
        token: SecretString,
        name: &str,
        backoff: Backoff,
    ) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gantry-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Network(e.to_string()))?;
        Ok(Client {
            http,
            base: server.as_str().trim_end_matches('/').to_string(),
            token,
            name: name.to_string(),
            backoff,
        })
    }

    /// `--server` joined with an absolute `path` (the state backend's address).
    pub fn server_url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, rel: &str, job: Option<&JobRef>) -> RequestBuilder {
        let url = format!("{}{}/{}", self.base, protocol::PREFIX, rel);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header(AGENT_NAME_HEADER, &self.name)
            .timeout(REQUEST_TIMEOUT);
        if let Some(job) = job {
            req = req.header(LEASE_HEADER, &job.lease);
        }
        req
    }

    /// Sends what `build` makes, again after a delay while the failure is
    /// transient (`forever`: until it is not).
    async fn send(
        &self,
        what: &str,
        forever: bool,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.backoff.min)
            .with_max_delay(self.backoff.max)
            .with_jitter();
        backoff = if forever {
            backoff.without_max_times()
        } else {
            backoff.with_max_times(self.backoff.times)
        };
        (|| async { answer(build().send().await).await })
            .retry(backoff)
            .when(ClientError::is_transient)
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "{what} failed; retrying")
            })
            .await
    }

    /// `POST claim`: a job, or `None` when the server had none within its
    /// long poll. Retries transient failures forever.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<Option<JobGrant>, ClientError> {
        let resp = self
            .send("claim", true, || {
                self.request(Method::POST, "claim", None)
                    .timeout(protocol::CLAIM_WAIT + Duration::from_secs(15))
                    .json(req)
            })
            .await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json(resp).await.map(Some)
    }

    /// `GET jobs/{id}/source`: the checkout as a `tar.gz`.
    pub async fn source(&self, job: &JobRef) -> Result<Vec<u8>, ClientError> {
        self.download(job, "source").await
    }

    /// `GET jobs/{id}/plan`: the reviewed plan file an apply applies.
    pub async fn plan(&self, job: &JobRef) -> Result<Vec<u8>, ClientError> {
        self.download(job, "plan").await
    }

    async fn download(&self, job: &JobRef, what: &str) -> Result<Vec<u8>, ClientError> {
        let rel = format!("jobs/{}/{what}", job.id);
        let resp = self
            .send(&format!("{what} download"), false, || {
                self.request(Method::GET, &rel, Some(job))
            })
            .await?;
        bytes(resp).await
    }

    /// `POST jobs/{id}/heartbeat`: renews the lease; says whether to cancel.
    pub async fn heartbeat(&self, job: &JobRef) -> Result<Heartbeat, ClientError> {
        let rel = format!("jobs/{}/heartbeat", job.id);
        let resp = self
            .send("heartbeat", false, || {
                self.request(Method::POST, &rel, Some(job))
            })
            .await?;
        json(resp).await
    }

    /// `POST jobs/{id}/log`: one chunk of the log (a retried chunk keeps its `seq`).
    pub async fn log(&self, job: &JobRef, chunk: &LogChunk) -> Result<(), ClientError> {
        let rel = format!("jobs/{}/log", job.id);
        self.send("log upload", false, || {
            self.request(Method::POST, &rel, Some(job)).json(chunk)
        })
        .await
        .map(drop)
    }

    /// `PUT jobs/{id}/artifacts/{name}` with the bytes' sha256.
    pub async fn upload(&self, job: &JobRef, name: &str, body: &[u8]) -> Result<(), ClientError> {
        let rel = format!("jobs/{}/artifacts/{name}", job.id);
        let sha = crate::store::sha256_hex(body);
        self.send("artifact upload", false, || {
            self.request(Method::PUT, &rel, Some(job))
                .header(SHA256_HEADER, &sha)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body.to_vec())
        })
        .await
        .map(drop)
    }

    /// `POST jobs/{id}/complete`.
    pub async fn complete(&self, job: &JobRef, result: &JobResult) -> Result<(), ClientError> {
        let rel = format!("jobs/{}/complete", job.id);
        self.send("completion", false, || {
            self.request(Method::POST, &rel, Some(job)).json(result)
        })
        .await
        .map(drop)
    }
}

/// The server's answer as a result: 2xx is `Ok`; 401, 404 and 409 are the
/// protocol's own answers.
async fn answer(sent: reqwest::Result<Response>) -> Result<Response, ClientError> {
    let resp = sent.map_err(|e| ClientError::Network(e.without_url().to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
        StatusCode::NOT_FOUND => ClientError::NotFound,
        StatusCode::CONFLICT => ClientError::LeaseLost,
        _ => {
            let body = resp.text().await.unwrap_or_default();
            ClientError::Status {
                status: status.as_u16(),
                body: body.chars().take(500).collect(),
            }
        }
    })
}

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let body = bytes(resp).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Status {
        status: 200,
        body: format!("unreadable answer: {e}"),
    })
}

async fn bytes(resp: Response) -> Result<Vec<u8>, ClientError> {
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| ClientError::Network(e.without_url().to_string()))
}
