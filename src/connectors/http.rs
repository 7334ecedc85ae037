//! [`Upstream`]: the one way this crate talks to a service. It owns the HTTP client, the
//! token, the budget and the retry loop, so every client method gets them for free.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::TokenSource;
use super::budget::Limiter;
use super::retry::{RetryPolicy, jitter, retry_after, retryable_status};
use super::{ConnectorError, describe_transport, lock, require_https};
use crate::config::model::Budget;

/// Counter of HTTP requests to an upstream by `api`, `operation` and `status` (an HTTP
/// status or `transport_error`); retries included.
pub const METRIC_CALLS: &str = "cosell_upstream_calls_total";
/// Histogram of request durations in seconds by `api` and `operation`.
pub const METRIC_CALL_DURATION: &str = "cosell_upstream_call_duration_seconds";
/// Gauge of calls left in the daily allocation (`budget.per_day`, a sliding 24 h window)
/// by `api`; only for upstreams with a daily budget.
pub const METRIC_BUDGET_REMAINING: &str = "cosell_upstream_budget_remaining";
/// Gauge of the daily allocation (`budget.per_day`) by `api`; only where configured.
pub const METRIC_BUDGET_LIMIT: &str = "cosell_upstream_budget_daily_limit";

/// How long one API call may take unless the connection sets `timeout_seconds`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection's `timeout_seconds`, or the default.
pub fn request_timeout(seconds: Option<u32>) -> Duration {
    seconds.map_or(DEFAULT_REQUEST_TIMEOUT, |s| {
        Duration::from_secs(u64::from(s.max(1)))
    })
}

/// How to build an [`Upstream`].
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Name in errors, logs and metrics: `partner_center`, `dataverse`, …
    pub api: &'static str,
    /// API root (`https://api.partner.microsoft.com`). For Salesforce the token response's
    /// `instance_url` replaces it (see `base_from_token`).
    pub base_url: String,
    /// Allow `http://` (the local sandbox only).
    pub allow_insecure_http: bool,
    /// Rate windows and concurrency cap.
    pub budget: Budget,
    /// Retries.
    pub retry: RetryPolicy,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Extra CA certificates (PEM) to trust, e.g. the sandbox CA for `--tls`.
    pub extra_root_certificates: Vec<String>,
    /// Take the API root from the token's `instance_url` (Salesforce).
    pub base_from_token: bool,
}

impl UpstreamOptions {
    /// Defaults for `api` at `base_url`: no budget, default retries, 10 s connect and 60 s
    /// request timeouts.
    pub fn new(api: &'static str, base_url: impl Into<String>) -> UpstreamOptions {
        UpstreamOptions {
            api,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            allow_insecure_http: false,
            budget: Budget::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            extra_root_certificates: Vec::new(),
            base_from_token: false,
        }
    }
}

/// A reqwest client with the timeouts and trust of `options` (rustls, no redirects: a
/// redirect would carry the bearer token to wherever it points).
pub fn http_client(options: &UpstreamOptions) -> Result<reqwest::Client, ConnectorError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cosell/", env!("CARGO_PKG_VERSION")));
    for pem in &options.extra_root_certificates {
        let certificate =
            reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| ConnectorError::Config {
                message: format!(
                    "{}: a trusted CA certificate is not valid PEM: {e}",
                    options.api
                ),
            })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|e| ConnectorError::Config {
        message: format!("{}: cannot build the HTTP client: {e}", options.api),
    })
}

/// One request, described before it is sent (so it can be sent again).
#[derive(Debug, Clone)]
pub struct Request {
    operation: &'static str,
    method: Method,
    target: String,
    absolute: bool,
    query: Vec<(String, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
    idempotent: bool,
    multipart_answers: bool,
}

impl Request {
    /// `method` on `path` (relative to the API root, starting with `/`).
    pub fn new(operation: &'static str, method: Method, path: impl Into<String>) -> Request {
        // Creates (POST) and JSON Patch are not safe to repeat blindly; the rest are.
        let idempotent = !matches!(method, Method::POST | Method::PATCH);
        Request {
            operation,
            method,
            target: path.into(),
            absolute: false,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            idempotent,
            multipart_answers: false,
        }
    }

    /// GET `path`.
    pub fn get(operation: &'static str, path: impl Into<String>) -> Request {
        Request::new(operation, Method::GET, path)
    }

    /// POST `path`.
    pub fn post(operation: &'static str, path: impl Into<String>) -> Request {
        Request::new(operation, Method::POST, path)
    }

    /// PATCH `path`.
    pub fn patch(operation: &'static str, path: impl Into<String>) -> Request {
        Request::new(operation, Method::PATCH, path)
    }

    /// PUT `path`.
    pub fn put(operation: &'static str, path: impl Into<String>) -> Request {
        Request::new(operation, Method::PUT, path)
    }

    /// DELETE `path`.
    pub fn delete(operation: &'static str, path: impl Into<String>) -> Request {
        Request::new(operation, Method::DELETE, path)
    }

    /// GET an absolute URL the service handed out (`@odata.nextLink`). It must be on the
    /// API's own origin, or the call is refused: the bearer token goes nowhere else.
    pub fn follow(operation: &'static str, url: impl Into<String>) -> Request {
        Request {
            absolute: true,
            ..Request::get(operation, url)
        }
    }

    /// Adds a query parameter (encoded on send).
    pub fn query(mut self, name: &str, value: impl Into<String>) -> Request {
        self.query.push((name.to_owned(), value.into()));
        self
    }

    /// Adds a header (names are case-insensitive: `MS-CorrelationId` is fine). Invalid
    /// names or values are dropped: they can only come from a bug in this crate, never from
    /// user data that would be silently lost.
    pub fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Request {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.as_ref()),
        ) {
            self.headers.push((name, value));
        }
        self
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(mut self, body: &impl Serialize) -> Request {
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self.header("content-type", "application/json")
    }

    /// A raw body with its content type (multipart `$batch` bodies).
    pub fn bytes(mut self, content_type: &str, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self.header("content-type", content_type)
    }

    /// Whether sending it twice is harmless (decides retries after transport failures).
    pub fn idempotent(mut self, idempotent: bool) -> Request {
        self.idempotent = idempotent;
        self
    }

    /// Returns an error status whose body is `multipart/mixed` as a [`Reply`] instead of
    /// an error, and does not retry it: that is an OData `$batch` the service processed up
    /// to a failing inner request, and only its parts say what was applied and what failed.
    pub fn multipart_answers(mut self) -> Request {
        self.multipart_answers = true;
        self
    }

    /// The operation name.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path (relative to the API root, or the absolute URL of [`Request::follow`])
    /// with the query parameters encoded exactly as [`Upstream::send`] encodes them
    /// (`application/x-www-form-urlencoded`, as reqwest's `query`), for requests written
    /// into a `$batch` body.
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            return self.target.clone();
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.query)
            .finish();
        let separator = if self.target.contains('?') { '&' } else { '?' };
        format!("{}{separator}{query}", self.target)
    }

    /// The headers added so far (not the ones `send` adds: `Accept`, the token).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The body, if any.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// 2xx (or 304).
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Vec<u8>,
    api: &'static str,
    operation: &'static str,
}

impl Reply {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| ConnectorError::Decode {
            api: self.api,
            operation: self.operation,
            message: format!("body is not the expected JSON: {e}"),
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an upstream's calls did, for tests and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Requests per `operation status` (`get_referral 200`, `create_row reset`).
    pub by_outcome: BTreeMap<String, u64>,
    /// Retries after throttling, server errors or transport failures.
    pub retries: u64,
    /// Tokens dropped after a 401.
    pub token_refreshes: u64,
}

#[derive(Debug)]
struct Inner {
    options: UpstreamOptions,
    http: reqwest::Client,
    tokens: Option<TokenSource>,
    limiter: Limiter,
    stats: Mutex<CallStats>,
}

/// One upstream API: client, token, budget, retries, metrics. Cheap to clone; clones share
/// everything (that is the point of a shared budget).
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

impl Upstream {
    /// An upstream calling `options.base_url` with `tokens` (none for unauthenticated
    /// endpoints). Refuses `http://` unless allowed.
    pub fn new(
        options: UpstreamOptions,
        tokens: Option<TokenSource>,
    ) -> Result<Upstream, ConnectorError> {
        require_https(
            &format!("{} base URL", options.api),
            &options.base_url,
            options.allow_insecure_http,
        )?;
        if let Some(tokens) = &tokens {
            // The client secret travels to the token endpoint: same rule.
            require_https(
                &format!("{} token endpoint", options.api),
                tokens.token_url(),
                options.allow_insecure_http,
            )?;
        }
        let http = http_client(&options)?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                limiter: Limiter::new(&options.budget),
                http,
                tokens,
                options,
                stats: Mutex::new(CallStats::default()),
            }),
        })
    }

    /// The API name.
    pub fn api(&self) -> &'static str {
        self.inner.options.api
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// The HTTP client (for token sources built alongside).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// A copy of the call counters.
    pub fn stats(&self) -> CallStats {
        lock(&self.inner.stats).clone()
    }

    /// HTTP requests sent so far (retries included; token requests are not API calls and
    /// are not counted). Cheaper than [`Upstream::stats`] for periodic readers.
    pub fn requests(&self) -> u64 {
        lock(&self.inner.stats).requests
    }

    /// The configured daily allocation (`budget.per_day`), if any.
    pub fn daily_limit(&self) -> Option<u32> {
        self.inner.options.budget.per_day
    }

    /// Makes sure a valid access token is held, without calling the API: the cached token
    /// while it has more than a minute left, else a new one from the token endpoint. What
    /// a readiness probe asks ("could the next call authenticate?"); an upstream without
    /// tokens is always fine. Errors name the API and carry the token endpoint's OAuth
    /// error, never a credential.
    pub async fn ensure_token(&self) -> Result<(), ConnectorError> {
        match &self.inner.tokens {
            Some(tokens) => tokens.token().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Sets `cosell_upstream_budget_daily_limit{api}` and
    /// `cosell_upstream_budget_remaining{api}` when a daily budget is configured. Called
    /// after every call and periodically: the window slides, so the remaining allocation
    /// grows back while no call is made.
    pub fn publish_budget_metrics(&self) {
        let api = self.api();
        if let (Some(limit), Some(remaining)) =
            (self.daily_limit(), self.inner.limiter.daily_remaining())
        {
            metrics::gauge!(METRIC_BUDGET_LIMIT, "api" => api).set(f64::from(limit));
            metrics::gauge!(METRIC_BUDGET_REMAINING, "api" => api).set(f64::from(remaining));
        }
    }

    /// The API root: the configured base URL, or the token's `instance_url`.
    pub async fn base_url(&self) -> Result<String, ConnectorError> {
        let options = &self.inner.options;
        if options.base_from_token
            && let Some(tokens) = &self.inner.tokens
            && let Some(instance) = tokens.token().await?.instance_url
        {
            require_https(
                &format!("{} instance_url", options.api),
                &instance,
                options.allow_insecure_http,
            )?;
            return Ok(instance);
        }
        Ok(options.base_url.clone())
    }

    fn count(&self, operation: &str, outcome: &str) {
        let mut stats = lock(&self.inner.stats);
        stats.requests += 1;
        *stats
            .by_outcome
            .entry(format!("{operation} {outcome}"))
            .or_default() += 1;
    }

    /// Sends `request`: waits for the budget, attaches the token, retries what is worth
    /// retrying, refreshes the token once on 401, and classifies the final answer.
    pub async fn send(&self, request: Request) -> Result<Reply, ConnectorError> {
        let api = self.api();
        let operation = request.operation;
        let policy = &self.inner.options.retry;
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let base = self.base_url().await?;
            let url = if request.absolute {
                if !same_origin(&request.target, &base) {
                    return Err(ConnectorError::Decode {
                        api,
                        operation,
                        message: "the service handed out a link to another host; not following it with our token".to_owned(),
                    });
                }
                request.target.clone()
            } else {
                format!("{base}{}", request.target)
            };
            let token = match &self.inner.tokens {
                Some(tokens) => Some(tokens.token().await?.access_token),
                None => None,
            };
            let mut builder = self
                .inner
                .http
                .request(request.method.clone(), &url)
                .header("accept", "application/json");
            if !request.query.is_empty() {
                builder = builder.query(&request.query);
            }
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            if let Some(token) = &token {
                builder = builder.bearer_auth(token.expose());
            }
            if let Some(body) = &request.body {
                builder = builder.body(body.clone());
            }

            let permit = self.inner.limiter.acquire().await;
            let started = std::time::Instant::now();
            let sent = builder.send().await;
            let outcome = match sent {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) => Ok((status, headers, body.to_vec())),
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            };
            drop(permit);
            let elapsed = started.elapsed();

            let (status, headers, body) = match outcome {
                Ok(answer) => answer,
                Err(error) => {
                    self.count(operation, "transport_error");
                    record_metrics(api, operation, "transport_error", elapsed);
                    let message = describe_transport(&error);
                    // Retry only when a repeat cannot duplicate an effect.
                    let safe = request.idempotent || error.is_connect();
                    if safe && attempt < policy.max_attempts {
                        lock(&self.inner.stats).retries += 1;
                        tracing::warn!(api, operation, attempt, "{message}; retrying");
                        tokio::time::sleep(policy.delay(attempt, None, jitter())).await;
                        continue;
                    }
                    if !safe {
                        return Err(ConnectorError::Transport {
                            api,
                            operation,
                            message: format!(
                                "{message}; not retried because the request may have been applied"
                            ),
                        });
                    }
                    return Err(ConnectorError::RetriesExhausted {
                        api,
                        operation,
                        attempts: attempt,
                        last: message,
                    });
                }
            };
            self.count(operation, status.as_str());
            record_metrics(api, operation, status.as_str(), elapsed);
            self.publish_budget_metrics();
            tracing::debug!(
                api,
                operation,
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "call"
            );

            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                return Ok(Reply {
                    status,
                    headers,
                    body,
                    api,
                    operation,
                });
            }
            if request.multipart_answers
                && status.as_u16() != 401
                && headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| crate::multipart::media_type(v) == "multipart/mixed")
            {
                return Ok(Reply {
                    status,
                    headers,
                    body,
                    api,
                    operation,
                });
            }
            let (code, message) = service_error(&body);
            match status.as_u16() {
                401 if !refreshed => {
                    if let (Some(tokens), Some(token)) = (&self.inner.tokens, &token) {
                        tokens.invalidate(token).await;
                        lock(&self.inner.stats).token_refreshes += 1;
                        refreshed = true;
                        // A refresh is not a retry of a failing call; do not spend an attempt.
                        attempt -= 1;
                        continue;
                    }
                }
                // Salesforce's concurrent-request limit (`ConcurrentPerOrgLongTxn Limit
                // exceeded`) clears as soon as running requests finish: a throttle to back
                // off from, like a 429 without Retry-After. Any other REQUEST_LIMIT_EXCEEDED
                // is the org's daily allocation: defer the work.
                403 if code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED")
                    && message.contains("Concurrent")
                    && attempt < policy.max_attempts =>
                {
                    lock(&self.inner.stats).retries += 1;
                    tracing::info!(
                        api,
                        operation,
                        attempt,
                        "concurrent-request limit; retrying"
                    );
                    tokio::time::sleep(policy.delay(attempt, None, jitter())).await;
                    continue;
                }
                403 if code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED") => {
                    return Err(ConnectorError::BudgetExhausted {
                        api,
                        operation,
                        message,
                    });
                }
                404 => {
                    return Err(ConnectorError::NotFound {
                        api,
                        operation,
                        code,
                        message,
                    });
                }
                412 => return Err(ConnectorError::PreconditionFailed { api, operation }),
                _ => {}
            }
            if retryable_status(status) {
                // Only this caller waits out `Retry-After`. Pausing every caller on each 429
                // would also be defensible, but a 429 costs the service nothing, and other
                // callers learn their own wait from their own answers; the budget limiter is
                // what keeps the steady-state rate under the service's limits.
                let wait = retry_after(&headers);
                if attempt < policy.max_attempts {
                    lock(&self.inner.stats).retries += 1;
                    tracing::info!(
                        api,
                        operation,
                        attempt,
                        status = status.as_u16(),
                        "retrying"
                    );
                    tokio::time::sleep(policy.delay(attempt, wait, jitter())).await;
                    continue;
                }
                return Err(ConnectorError::RetriesExhausted {
                    api,
                    operation,
                    attempts: attempt,
                    last: format!("HTTP {status}: {message}"),
                });
            }
            return Err(ConnectorError::Status {
                api,
                operation,
                status: status.as_u16(),
                code,
                message,
            });
        }
    }
}

fn record_metrics(api: &'static str, operation: &'static str, status: &str, elapsed: Duration) {
    metrics::counter!(
        METRIC_CALLS,
        "api" => api,
        "operation" => operation,
        "status" => status.to_owned()
    )
    .increment(1);
    metrics::histogram!(
        METRIC_CALL_DURATION,
        "api" => api,
        "operation" => operation
    )
    .record(elapsed.as_secs_f64());
}

/// `scheme://host[:port]` of both URLs are equal.
fn same_origin(url: &str, base: &str) -> bool {
    fn origin(url: &str) -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        ))
    }
    origin(url).is_some() && origin(url) == origin(base)
}

/// The service's error code and message, from any of the three shapes:
/// `{"error":{"code","message"}}` (Partner Center, Dataverse), `[{"errorCode","message"}]`
/// (Salesforce), `{"error","error_description"}` (OAuth), else the text itself.
pub fn service_error(body: &[u8]) -> (Option<String>, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(value) = &parsed {
        if let Some(error) = value.get("error").filter(|e| e.is_object()) {
            let code = error.get("code").and_then(Value::as_str).map(str::to_owned);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return (code, message);
        }
        if let Some(first) = value.as_array().and_then(|a| a.first()) {
            let code = first
                .get("errorCode")
                .or_else(|| first.get("statusCode"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let message = first
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return (code, message);
        }
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            let description = value
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return (Some(error.to_owned()), description.to_owned());
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(500).collect();
    (None, text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_only_on_the_same_origin() {
        assert!(same_origin("https://a.example/x?y", "https://a.example"));
        assert!(same_origin(
            "HTTPS://A.example:443/x",
            "https://a.example:443"
        ));
        assert!(!same_origin("https://evil.example/x", "https://a.example"));
        assert!(!same_origin(
            "https://a.example.evil/x",
            "https://a.example"
        ));
        assert!(!same_origin("/relative", "https://a.example"));
    }

    #[test]
    fn paths_and_queries_are_encoded_like_send_encodes_them() {
        let request = Request::get("q", "/accounts")
            .query("$select", "name")
            .query("$filter", "name eq 'O''B & c/d'");
        assert_eq!(
            request.path_and_query(),
            "/accounts?%24select=name&%24filter=name+eq+%27O%27%27B+%26+c%2Fd%27"
        );
        assert_eq!(Request::get("q", "/x").path_and_query(), "/x");
    }

    #[test]
    fn service_errors_are_read_from_every_shape() {
        assert_eq!(
            service_error(br#"{"error":{"code":"invalidRequest","message":"bad"}}"#),
            (Some("invalidRequest".into()), "bad".into())
        );
        assert_eq!(
            service_error(br#"[{"errorCode":"INVALID_FIELD","message":"No such column"}]"#),
            (Some("INVALID_FIELD".into()), "No such column".into())
        );
        assert_eq!(
            service_error(
                br#"{"error":"invalid_grant","error_description":"authentication failure"}"#
            ),
            (
                Some("invalid_grant".into()),
                "authentication failure".into()
            )
        );
        assert_eq!(
            service_error(b"Service Unavailable"),
            (None, "Service Unavailable".into())
        );
    }
}
