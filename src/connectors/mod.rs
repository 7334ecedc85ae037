//! Production clients for Partner Center, Dataverse and Salesforce. This layer knows HTTP
//! and the three APIs, and nothing about flows or mappings.
//!
//! Every call goes through an [`http::Upstream`]: one HTTP client per upstream with connect
//! and request timeouts, a token from [`auth::TokenSource`] (refreshed once on 401), the
//! shared [`budget::Limiter`] built from the connection's `budget:` (rate windows,
//! concurrency cap, daily allocation), bounded retries with backoff and jitter that honour
//! `Retry-After` ([`retry`]), and per-call metrics. Secrets are [`Secret`]s: redacted in
//! `Debug`, never formatted into logs or errors.
//!
//! - [`partner_center`]: referrals (list as a stream, get, create incl. the two-step co-sell,
//!   JSON Patch with `If-Match`, related referrals) and webhook registration.
//! - [`dataverse`]: rows (create, retrieve, update, upsert by alternate key, query as a
//!   stream), currencies by ISO code, change polling, `$batch` (queries and atomic change
//!   sets in one call).
//! - [`salesforce`]: sObjects, upsert by external id, SOQL as a stream, API usage.

pub mod auth;
pub mod budget;
pub mod dataverse;
pub mod http;
pub mod partner_center;
pub mod retry;
pub mod salesforce;

use std::time::Duration;

pub use crate::config::secrets::Secret;

/// What can go wrong talking to an upstream. Messages name the API and operation and carry
/// the service's own error code and message; they never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The service refused the request (a 4xx other than 404/412, or a 5xx after retries).
    #[error("{api} {operation}: HTTP {status}{}: {message}", code_suffix(code))]
    Status {
        /// `partner_center`, `dataverse`, `salesforce`, …
        api: &'static str,
        /// The operation, e.g. `create_referral`.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// The service's error code (`invalidRequest`, `0x80040217`, `INVALID_FIELD`).
        code: Option<String>,
        /// The service's error message.
        message: String,
    },
    /// 404: the record does not exist (or, in Salesforce, was deleted).
    #[error("{api} {operation}: not found{}: {message}", code_suffix(code))]
    NotFound {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
        /// The service's error code (`ENTITY_IS_DELETED`, `NOT_FOUND`, `0x80040217`).
        code: Option<String>,
        /// The service's message.
        message: String,
    },
    /// 412: the record changed since it was read (stale eTag / modified since).
    #[error("{api} {operation}: the record changed since it was read (412 precondition failed)")]
    PreconditionFailed {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
    },
    /// The upstream's call allocation is spent (Salesforce 403 `REQUEST_LIMIT_EXCEEDED`);
    /// defer the work, do not drop it.
    #[error("{api} {operation}: API call allocation exhausted: {message}")]
    BudgetExhausted {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
        /// The service's message.
        message: String,
    },
    /// Retries ran out on throttling, server errors or transport failures.
    #[error("{api} {operation}: gave up after {attempts} attempts; last: {last}")]
    RetriesExhausted {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A transport failure that must not be retried (a create whose request may have
    /// reached the service).
    #[error("{api} {operation}: {message}")]
    Transport {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
        /// What happened.
        message: String,
    },
    /// The token endpoint refused the credentials or could not be reached.
    #[error("{api}: authentication failed: {message}")]
    Auth {
        /// API name.
        api: &'static str,
        /// What the token endpoint said (never the credentials).
        message: String,
    },
    /// The connection settings cannot work (http:// without allow_insecure_http, bad key).
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The service answered something this client cannot read.
    #[error("{api} {operation}: unexpected response: {message}")]
    Decode {
        /// API name.
        api: &'static str,
        /// Operation.
        operation: &'static str,
        /// What was wrong with it.
        message: String,
    },
}

fn code_suffix(code: &Option<String>) -> String {
    match code {
        Some(code) if !code.is_empty() => format!(" {code}"),
        _ => String::new(),
    }
}

impl ConnectorError {
    /// The HTTP status behind the error, when there is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectorError::Status { status, .. } => Some(*status),
            ConnectorError::NotFound { .. } => Some(404),
            ConnectorError::PreconditionFailed { .. } => Some(412),
            ConnectorError::BudgetExhausted { .. } => Some(403),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (throttling, outages, budget) as opposed to
    /// the request being wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectorError::BudgetExhausted { .. }
                | ConnectorError::RetriesExhausted { .. }
                | ConnectorError::Transport { .. }
        ) || matches!(self, ConnectorError::Auth { message, .. } if message.contains("unreachable"))
    }

    /// A suggested wait before trying again, for transient errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::BudgetExhausted { .. } => Some(Duration::from_secs(3600)),
            ConnectorError::RetriesExhausted { .. } | ConnectorError::Transport { .. } => {
                Some(Duration::from_secs(60))
            }
            _ => None,
        }
    }
}

/// A transport error in words, without the URL's query string (which may hold SOQL with
/// customer data).
pub(crate) fn describe_transport(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "the response body broke off"
    } else {
        "the connection failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// Locks a std mutex, recovering from poisoning (a panicked holder leaves consistent data
/// in every use here).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refuses `http://` unless explicitly allowed (the local sandbox).
pub fn require_https(
    what: &str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<(), ConnectorError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") || (allow_insecure_http && lower.starts_with("http://")) {
        return Ok(());
    }
    let hint = if lower.starts_with("http://") {
        "production endpoints must use https; set `allow_insecure_http: true` only for the local sandbox"
    } else {
        "give an absolute https:// URL"
    };
    Err(ConnectorError::Config {
        message: format!("{what} `{url}` is not allowed: {hint}"),
    })
}

/// Where secret references (`${ENV}`, `${file:…}`) are resolved: the process environment
/// in production, a map in tests (so tests never touch the process environment).
pub type SecretEnv<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Resolves the secret reference of `field` (e.g. `connections.crm.auth.client_secret`).
/// The error names the field and the reference, never a value.
pub fn resolve_secret(
    field: &str,
    reference: &crate::config::model::SecretRef,
    env: SecretEnv<'_>,
) -> Result<Secret, ConnectorError> {
    crate::config::secrets::resolve_with(&reference.0, env).map_err(|error| {
        ConnectorError::Config {
            message: format!("{field}: cannot resolve {}: {error}", reference.0),
        }
    })
}

/// The process environment, for [`resolve_secret`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A non-secret setting that may hold references (`base_url: "${DATAVERSE_URL}"`): resolved
/// when it contains `${`, returned as is otherwise.
pub fn resolve_text(field: &str, text: &str, env: SecretEnv<'_>) -> Result<String, ConnectorError> {
    if !text.contains("${") {
        return Ok(text.trim().to_owned());
    }
    crate::config::secrets::resolve_with(text, env)
        .map(|value| value.expose().trim().to_owned())
        .map_err(|error| ConnectorError::Config {
            message: format!("{field}: cannot resolve {text}: {error}"),
        })
}
