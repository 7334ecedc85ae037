//! Human edits interleaved between a client's read and its write: the race the engine's
//! optimistic concurrency exists for, made deterministic.
//!
//! `POST /_sandbox/interleave` arms a rule; the next write request that matches it (API,
//! method, a piece of the path) first gets the rule's edit applied to the record it
//! addresses — by another user, through the emulator's own write path, so the row's
//! version moves exactly as a real edit would move it (Dataverse `versionnumber` and
//! eTag, Salesforce `LastModifiedDate` / `SystemModstamp`, Partner Center `eTag` and
//! `updatedDateTime`) — and only then is the client's request processed, preconditions
//! and all. A rule fires `times` times (default once: `times: N` repeats the edit on every
//! retry, for testing that clients give up), and stays armed, without editing, until
//! `DELETE /_sandbox/interleave`, so its log also shows the requests that followed.
//!
//! | Call | Effect |
//! |---|---|
//! | `POST /_sandbox/interleave` | arm `{api, method?, path_contains, edit, times?, target?, advance_clock_seconds?}`; answers `{id}` |
//! | `GET /_sandbox/interleave` | `{applied, rules, log}`: edits applied, the rules, every matching request |
//! | `DELETE /_sandbox/interleave` | disarm every rule, forget the log (`applied` stays; `/_sandbox/reset` zeroes it) |
//!
//! The edit, by API:
//! - `dataverse`: a Web API body (`{"name": "…"}`), PATCHed with `If-Match: *` to the
//!   request's path (or `target`, e.g. `/api/data/v9.2/opportunities(<id>)`).
//! - `salesforce`: an sObject body, PATCHed to the request's path (or `target`, e.g.
//!   `/services/data/v59.0/sobjects/Opportunity/<id>`: a composite request has none).
//! - `partner_center`: a Microsoft-side change as `/_sandbox/partner-center/referrals/{id}
//!   /microsoft` takes it (`status`, `substatus`, `dealValue`, `notes`, …) on the referral
//!   of the request's path (or `target`, a referral id); its webhook fires as usual.
//!
//! `advance_clock_seconds` moves the sandbox clock before each edit: a person edits at a
//! person's pace, so the edit's timestamps fall in a later second than the change before
//! it — what whole-second preconditions (Salesforce's `If-Unmodified-Since`) rely on.
//! Without it, edits land milliseconds after the previous change, in the same second.
//!
//! The log records, per matching request, the client's `If-Match` and
//! `If-Unmodified-Since` headers and the status it got: how a test proves the write was
//! conditional and was refused.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::control::{bad_request, parse_body};
use super::{Api, Sandbox, json_response, lock};

/// Longest log kept (entries); older ones are dropped.
const LOG_LIMIT: usize = 1000;

/// The armed rules, what they did and the requests they saw.
#[derive(Debug, Default)]
pub struct Interleave {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rules: Vec<Rule>,
    next_id: u64,
    applied: u64,
    log: Vec<Value>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: u64,
    api: Api,
    method: Method,
    path_contains: String,
    edit: Value,
    target: Option<String>,
    advance_clock_seconds: u32,
    remaining: u32,
}

/// `POST /_sandbox/interleave`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    api: String,
    #[serde(default)]
    method: Option<String>,
    path_contains: String,
    edit: Value,
    #[serde(default)]
    times: Option<u32>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    advance_clock_seconds: Option<u32>,
}

impl Interleave {
    /// Human edits applied so far.
    pub fn applied(&self) -> u64 {
        lock(&self.inner).applied
    }

    /// Disarms every rule and forgets the log; the count of applied edits stays.
    pub fn disarm(&self) {
        let mut inner = lock(&self.inner);
        inner.rules.clear();
        inner.log.clear();
    }

    /// Forgets everything (sandbox reset).
    pub fn reset(&self) {
        *lock(&self.inner) = Inner::default();
    }

    /// The rule a request matches, decremented if it still edits: `(rule, edit now)`.
    fn take(&self, api: Api, method: &Method, path: &str) -> Option<(Rule, bool)> {
        let mut inner = lock(&self.inner);
        let rule = inner.rules.iter_mut().find(|r| {
            r.api == api && r.method == *method && path.contains(r.path_contains.as_str())
        })?;
        let edit = rule.remaining > 0;
        if edit {
            rule.remaining -= 1;
        }
        Some((rule.clone(), edit))
    }
}

/// The control routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new().route("/_sandbox/interleave", get(show).post(arm).delete(disarm))
}

async fn show(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let inner = lock(&sandbox.interleave.inner);
    let rules: Vec<Value> = inner
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "api": r.api.name(), "method": r.method.as_str(),
                "path_contains": r.path_contains, "edit": r.edit, "target": r.target,
                "advance_clock_seconds": r.advance_clock_seconds, "remaining": r.remaining,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "applied": inner.applied, "rules": rules, "log": inner.log }),
    )
}

async fn arm(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let spec: Spec = match parse_body(&body) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    let api = match Api::from_name(&spec.api) {
        Some(api @ (Api::Dataverse | Api::Salesforce | Api::PartnerCenter)) => api,
        _ => {
            return bad_request(format!(
                "api `{}`: expected dataverse, salesforce or partner_center",
                spec.api
            ));
        }
    };
    let method = match spec.method.as_deref().unwrap_or("PATCH") {
        m if m.eq_ignore_ascii_case("GET") => {
            return bad_request("only writes are interleaved (PATCH, POST, PUT, DELETE)");
        }
        m => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(method) => method,
            Err(_) => return bad_request(format!("method `{m}` is not an HTTP method")),
        },
    };
    if spec.path_contains.is_empty() {
        return bad_request("path_contains must not be empty");
    }
    if !spec.edit.is_object() {
        return bad_request("edit must be a JSON object");
    }
    let mut inner = lock(&sandbox.interleave.inner);
    inner.next_id += 1;
    let id = inner.next_id;
    inner.rules.push(Rule {
        id,
        api,
        method,
        path_contains: spec.path_contains,
        edit: spec.edit,
        target: spec.target,
        advance_clock_seconds: spec.advance_clock_seconds.unwrap_or(0),
        remaining: spec.times.unwrap_or(1),
    });
    json_response(StatusCode::CREATED, &json!({ "id": id }))
}

async fn disarm(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.interleave.disarm();
    StatusCode::NO_CONTENT
}

/// The middleware: behind the gate (token checked, faults and quotas applied), in front of
/// the emulators.
pub async fn layer(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    if lock(&sandbox.interleave.inner).rules.is_empty() {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let Some(api) = Api::classify(&path) else {
        return next.run(request).await;
    };
    let Some((rule, edit)) = sandbox.interleave.take(api, &method, &path) else {
        return next.run(request).await;
    };
    let if_match = header_text(request.headers(), header::IF_MATCH);
    let if_unmodified_since = header_text(request.headers(), header::IF_UNMODIFIED_SINCE);
    let edit_status = if edit {
        let target = rule.target.clone().unwrap_or_else(|| path.clone());
        if rule.advance_clock_seconds > 0 {
            sandbox.advance_clock(i64::from(rule.advance_clock_seconds));
        }
        let status = apply(&sandbox, rule.api, &target, &rule.edit).await;
        if status.is_success() {
            lock(&sandbox.interleave.inner).applied += 1;
        }
        Some(status.as_u16())
    } else {
        None
    };
    let response = next.run(request).await;
    let mut inner = lock(&sandbox.interleave.inner);
    if inner.log.len() >= LOG_LIMIT {
        inner.log.remove(0);
    }
    inner.log.push(json!({
        "rule": rule.id,
        "api": api.name(),
        "method": method.as_str(),
        "path": path,
        "if_match": if_match,
        "if_unmodified_since": if_unmodified_since,
        "edited": edit,
        "edit_status": edit_status,
        "status": response.status().as_u16(),
    }));
    response
}

/// Applies a human edit through the emulator's own write path; its status.
async fn apply(sandbox: &Arc<Sandbox>, api: Api, target: &str, edit: &Value) -> StatusCode {
    let body = Bytes::from(edit.to_string());
    let status = match api {
        Api::Dataverse => {
            let mut request = Request::new(Body::from(body));
            *request.method_mut() = Method::PATCH;
            *request.uri_mut() = match target.parse::<Uri>() {
                Ok(uri) => uri,
                Err(_) => return StatusCode::BAD_REQUEST,
            };
            let headers = request.headers_mut();
            headers.insert(header::CONTENT_TYPE, json_type());
            headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
            super::dataverse::handle(State(Arc::clone(sandbox)), request)
                .await
                .status()
        }
        Api::Salesforce => {
            let Ok(uri) = target.parse::<Uri>() else {
                return StatusCode::BAD_REQUEST;
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, json_type());
            super::salesforce::dispatch(
                State(Arc::clone(sandbox)),
                Method::PATCH,
                uri,
                headers,
                body,
            )
            .await
            .status()
        }
        Api::PartnerCenter => {
            let id = target
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            super::partner_center::microsoft_change(State(Arc::clone(sandbox)), Path(id), body)
                .await
                .status()
        }
        _ => StatusCode::BAD_REQUEST,
    };
    if !status.is_success() {
        tracing::warn!(api = api.name(), target, %status, "interleaved edit refused");
    }
    status
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn json_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}
