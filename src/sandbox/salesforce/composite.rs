//! The Composite resource: `POST /services/data/vXX.X/composite` (`crm-apis.md` §B8).
//!
//! `{"allOrNone":bool,"compositeRequest":[{"method","url","referenceId","body",
//! "httpHeaders"}]}` runs up to [`MAX_SUBREQUESTS`] subrequests in order, at most
//! [`MAX_QUERIES`] of them queries, as ONE API call. Each subrequest goes through the same
//! [`route`] as a standalone call, so every rule of the standalone endpoints (restricted
//! and country picklists, required fields, unique External IDs, conditional headers, …)
//! applies unchanged. Later subrequests use earlier results through `@{refId.path}` in
//! their url and body, where `path` is `.member` and `[index]` steps into the earlier
//! response body (`@{refAccount.id}`, `@{refQuery.records[0].Id}`).
//!
//! The answer is always 200 `{"compositeResponse":[{"body","httpHeaders",
//! "httpStatusCode","referenceId"}]}`:
//! - `allOrNone: true`: the first failure stops the run and rolls every write back (the
//!   store's journal, [`super::store::Store::begin`]); that subrequest keeps its own error
//!   and every other one answers 400 `PROCESSING_HALTED` "The transaction was rolled back
//!   since another operation in the same transaction failed." (the wording Salesforce
//!   clients match on).
//! - `allOrNone: false`: every subrequest runs; one that references a failed (or unknown)
//!   subrequest answers 400 `PROCESSING_HALTED` "Invalid reference specified. No value for
//!   refX.path found in refX."; the others keep their results.
//!
//! Isolation: the composite holds the org's transaction gate exclusively, so no other call
//! reads its uncommitted writes or writes between its subrequests, and changes are
//! announced (for persistence) only once committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::write::{self, Body};
use super::{
    Call, decode_segment, lock, method_not_allowed, not_found, parse_version, route, sf_error,
    sf_errors,
};

/// Most subrequests in one composite request.
pub const MAX_SUBREQUESTS: usize = 25;
/// Most query / queryAll / query-more subrequests in one composite request.
pub const MAX_QUERIES: usize = 5;

const HALTED: &str = "PROCESSING_HALTED";
const ROLLED_BACK: &str =
    "The transaction was rolled back since another operation in the same transaction failed.";

/// Headers a subrequest inherits from the composite request and must not set itself.
const FORBIDDEN_HEADERS: [&str; 3] = ["accept", "authorization", "content-type"];

/// What is escaped when a referenced value is put into a subrequest's url: everything but
/// RFC 3986 unreserved characters, so a value cannot add path segments or parameters.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Deserialize)]
struct CompositeRequest {
    #[serde(default, rename = "allOrNone")]
    all_or_none: bool,
    // `collateSubrequests` only lets Salesforce reorder unrelated subrequests for speed;
    // the sandbox always runs them in order, which every collation setting allows.
    #[serde(rename = "compositeRequest")]
    subrequests: Vec<Subrequest>,
}

#[derive(Deserialize)]
struct Subrequest {
    method: SubMethod,
    url: String,
    #[serde(rename = "referenceId")]
    reference_id: String,
    #[serde(default)]
    body: Option<SubBody>,
    #[serde(default, rename = "httpHeaders")]
    http_headers: HashMap<String, String>,
}

/// The methods Salesforce accepts, case-sensitively; anything else fails deserialization
/// the way its enum binding does.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum SubMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "PATCH")]
    Patch,
    #[serde(rename = "DELETE")]
    Delete,
}

impl SubMethod {
    fn http(self) -> Method {
        match self {
            SubMethod::Get => Method::GET,
            SubMethod::Post => Method::POST,
            SubMethod::Put => Method::PUT,
            SubMethod::Patch => Method::PATCH,
            SubMethod::Delete => Method::DELETE,
        }
    }
}

/// A subrequest body. Objects keep their member order ([`Body`]): the record handlers
/// report the first bad field in body order, as they do for a standalone call.
#[derive(Deserialize)]
#[serde(untagged)]
enum SubBody {
    Object(Body),
    Other(Value),
}

/// One subrequest's result.
struct Outcome {
    status: u16,
    /// `{"Location": …}`: the subrequest's response headers, without Content-Type and
    /// Content-Length (the Composite resource reports neither).
    headers: serde_json::Map<String, Value>,
    /// The response body as JSON, for references.
    body: Value,
    /// The body as the handler wrote it (member order kept), for the answer.
    raw: String,
    failed: bool,
}

impl Outcome {
    fn error(status: u16, code: &str, message: &str) -> Outcome {
        let body = json!([{ "errorCode": code, "message": message }]);
        Outcome {
            status,
            headers: serde_json::Map::new(),
            raw: body.to_string(),
            body,
            failed: true,
        }
    }

    fn json(&self, reference_id: &str) -> String {
        // Assembled by hand so `raw` goes in verbatim; the members are in the order
        // Salesforce documents them (which is also alphabetical).
        format!(
            "{{\"body\":{},\"httpHeaders\":{},\"httpStatusCode\":{},\"referenceId\":{}}}",
            self.raw,
            Value::Object(self.headers.clone()),
            self.status,
            Value::String(reference_id.to_owned()),
        )
    }
}

/// A composite subrequest cannot be another composite request.
pub(super) fn nested() -> Response {
    // UNCERTAIN: Salesforce's code and wording for a nested composite are undocumented.
    sf_error(
        StatusCode::BAD_REQUEST,
        "INVALID_API_INPUT",
        "A composite subrequest cannot be a composite request",
    )
}

/// `POST /composite`.
pub(super) fn handle(call: &Call<'_>) -> Response {
    if call.method != Method::POST {
        return method_not_allowed(&call.method, "POST");
    }
    if call.body.iter().all(u8::is_ascii_whitespace) {
        return sf_errors(
            StatusCode::BAD_REQUEST,
            &write::SfError::new(
                "JSON_PARSER_ERROR",
                "The HTTP entity body is required, but this request has no entity body.",
            ),
        );
    }
    let request: CompositeRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => {
            return sf_errors(StatusCode::BAD_REQUEST, &write::json_syntax_error(error));
        }
    };
    if let Err(refused) = validate(&request) {
        return refused;
    }
    let state = call.state();
    let exclusive = state.exclusive();
    let all_or_none = request.all_or_none;
    // Open only when there may be something to undo: the journal copies every record a
    // subrequest replaces.
    let cursors_before: Option<HashSet<String>> = all_or_none.then(|| {
        let mut data = lock(&state.data);
        data.store.begin();
        data.cursors.open.keys().cloned().collect()
    });
    let changes = AtomicBool::new(false);
    let mut done: Vec<(&str, Outcome)> = Vec::with_capacity(request.subrequests.len());
    let mut failed = false;
    for sub in &request.subrequests {
        let outcome = if failed && all_or_none {
            // Not run: the transaction is already lost.
            Outcome::error(400, HALTED, ROLLED_BACK)
        } else {
            run(call, sub, &done, &changes, all_or_none)
        };
        failed |= outcome.failed;
        done.push((&sub.reference_id, outcome));
    }
    let rolled_back = all_or_none && failed;
    if let Some(before) = cursors_before {
        let mut data = lock(&state.data);
        if rolled_back {
            data.store.roll_back(&state.schema);
            // A cursor opened by a rolled-back query could list rows that are gone now.
            data.cursors.open.retain(|key, _| before.contains(key));
            data.cursors.order.retain(|key| before.contains(key));
        } else {
            data.store.commit();
        }
    }
    drop(exclusive);
    if !rolled_back && changes.load(Ordering::Relaxed) {
        call.sandbox.changed();
    }

    let mut first_failure = true;
    let items: Vec<String> = done
        .iter()
        .map(|(reference_id, outcome)| {
            if rolled_back {
                // The failure that lost the transaction keeps its own error; every other
                // subrequest, run or not, reports the rollback.
                if outcome.failed && first_failure {
                    first_failure = false;
                    return outcome.json(reference_id);
                }
                return Outcome::error(400, HALTED, ROLLED_BACK).json(reference_id);
            }
            outcome.json(reference_id)
        })
        .collect();
    composite_response(&items)
}

fn composite_response(items: &[String]) -> Response {
    let text = format!("{{\"compositeResponse\":[{}]}}", items.join(","));
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// Refuses requests Salesforce refuses before running anything.
fn validate(request: &CompositeRequest) -> Result<(), Response> {
    // UNCERTAIN: the wording and code for an empty list are undocumented.
    if request.subrequests.is_empty() {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_API_INPUT",
            "compositeRequest must contain at least one subrequest",
        ));
    }
    // The limits are answered as a 200 with one result without a referenceId: observed
    // from Salesforce for the 25-operation limit (`LIMIT_EXCEEDED`, "The request can’t
    // contain more than 25 operations."). UNCERTAIN: the query limit's wording is assumed
    // to follow the same pattern.
    let limit = |message: &str| {
        let body = json!([{ "errorCode": "LIMIT_EXCEEDED", "message": message }]);
        let item = format!(
            "{{\"body\":{body},\"httpHeaders\":{{}},\"httpStatusCode\":400,\"referenceId\":null}}"
        );
        composite_response(&[item])
    };
    if request.subrequests.len() > MAX_SUBREQUESTS {
        return Err(limit(&format!(
            "The request can’t contain more than {MAX_SUBREQUESTS} operations."
        )));
    }
    let queries = request
        .subrequests
        .iter()
        .filter(|sub| sub.method == SubMethod::Get && is_query(&sub.url))
        .count();
    if queries > MAX_QUERIES {
        return Err(limit(&format!(
            "The request can’t contain more than {MAX_QUERIES} queries."
        )));
    }
    let mut seen = HashSet::new();
    for sub in &request.subrequests {
        // UNCERTAIN: the code and wording; documented is only that the whole request
        // fails with 400 ("subrequests inherit these from the top-level request").
        for name in sub.http_headers.keys() {
            let lower = name.to_ascii_lowercase();
            if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
                return Err(sf_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_API_INPUT",
                    &format!(
                        "Subrequest {} sets the {name} header: subrequests inherit Accept, Authorization and Content-Type from the composite request and must not set them",
                        sub.reference_id
                    ),
                ));
            }
        }
        if let Some((name, _)) = sub.http_headers.iter().find(|(name, value)| {
            HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value).is_err()
        }) {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                &format!(
                    "Subrequest {} has an invalid header {name:?}",
                    sub.reference_id
                ),
            ));
        }
        // UNCERTAIN: the wording; a reference to a duplicated id would be ambiguous.
        if !seen.insert(sub.reference_id.as_str()) {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_API_INPUT",
                &format!("Duplicate referenceId provided: {}", sub.reference_id),
            ));
        }
    }
    Ok(())
}

/// Whether a subrequest url is a query or query-more (`/services/data/vNN.N/query…`).
fn is_query(url: &str) -> bool {
    let path = url.split('?').next().unwrap_or("");
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let (Some("services"), Some("data"), Some(_version), Some(resource)) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    resource == "query" || resource == "queryAll"
}

/// Runs one subrequest through the router, with references resolved.
fn run(
    call: &Call<'_>,
    sub: &Subrequest,
    done: &[(&str, Outcome)],
    changes: &AtomicBool,
    all_or_none: bool,
) -> Outcome {
    let resolved = resolve_text(&sub.url, done, true).and_then(|url| {
        let body = match &sub.body {
            None => None,
            Some(SubBody::Object(body)) => Some(SubBody::Object(Body(
                body.0
                    .iter()
                    .map(|(key, value)| Ok((key.clone(), resolve_value(value, done)?)))
                    .collect::<Result<_, Unresolved>>()?,
            ))),
            Some(SubBody::Other(value)) => Some(SubBody::Other(resolve_value(value, done)?)),
        };
        Ok((url, body))
    });
    let (url, mut body) = match resolved {
        Ok(resolved) => resolved,
        Err(unresolved) => return Outcome::error(400, HALTED, &unresolved.message()),
    };

    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let segments: Vec<String> = path
        .strip_prefix("/services/data")
        .unwrap_or("/(unknown)")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let Some(major) = segments.first().and_then(|s| parse_version(s)) else {
        return outcome_of(not_found(), false);
    };
    let tail: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
    let collection = tail == ["composite", "sobjects"];
    // The composite's allOrNone overrides a collection subrequest's own when true (the
    // "allOrNone Parameters in Composite and Collections Requests" page).
    if collection
        && all_or_none
        && let Some(SubBody::Object(members)) = &mut body
    {
        members.0.retain(|(key, _)| key != "allOrNone");
        members.0.push(("allOrNone".to_owned(), Value::Bool(true)));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &sub.http_headers {
        // Checked in `validate`.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let body_bytes = match &body {
        None => Bytes::new(),
        Some(SubBody::Other(value)) => Bytes::from(value.to_string()),
        Some(SubBody::Object(members)) => Bytes::from(object_text(members)),
    };
    let sub_call = Call {
        sandbox: call.sandbox,
        method: sub.method.http(),
        version: format!("{major}.0"),
        major,
        params: form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        headers,
        body: body_bytes,
        changes: Some(changes),
    };
    let (response, _template) = route(&sub_call, &tail);
    outcome_of(response, collection)
}

/// `{"k":v,…}` in the members' order.
fn object_text(body: &Body) -> String {
    let members: Vec<String> = body
        .0
        .iter()
        .map(|(key, value)| format!("{}:{value}", Value::String(key.clone())))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn outcome_of(response: Response, collection: bool) -> Outcome {
    let status = response.status().as_u16();
    let mut headers = serde_json::Map::new();
    for (name, value) in response.headers() {
        if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
            continue;
        }
        if let Ok(value) = value.to_str() {
            headers.insert(header_case(name.as_str()), Value::String(value.to_owned()));
        }
    }
    // The handlers answer with complete in-memory bodies, so this never waits.
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .now_or_never()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (body, raw) = if bytes.iter().all(u8::is_ascii_whitespace) {
        (Value::Null, "null".to_owned())
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => (value, String::from_utf8_lossy(&bytes).into_owned()),
            Err(_) => {
                let text = Value::String(String::from_utf8_lossy(&bytes).into_owned());
                (text.clone(), text.to_string())
            }
        }
    };
    // A collection answers 200 even when records fail; with allOrNone those failures
    // still lose the transaction (Salesforce's own example shows exactly that).
    let collection_failed = collection
        && body.as_array().is_some_and(|results| {
            results
                .iter()
                .any(|r| r.get("success").and_then(Value::as_bool) == Some(false))
        });
    Outcome {
        status,
        headers,
        failed: status >= 400 || status == 300 || collection_failed,
        body,
        raw,
    }
}

/// `location` → `Location`, `etag` → `ETag`, as Salesforce spells its headers.
fn header_case(name: &str) -> String {
    if name == "etag" {
        return "ETag".to_owned();
    }
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A reference that names no value.
struct Unresolved {
    expression: String,
    reference: String,
}

impl Unresolved {
    fn message(&self) -> String {
        format!(
            "Invalid reference specified. No value for {} found in {}.",
            self.expression, self.reference
        )
    }
}

/// The value `@{expression}` names: a reference id (letters, digits, `_`) of an earlier
/// subrequest that succeeded, then `.member` / `[index]` steps into its response body.
/// Only scalars can be referenced (Salesforce lists DateTime, String, Boolean and number
/// types); null counts as no value.
fn lookup<'a>(expression: &str, done: &'a [(&str, Outcome)]) -> Result<&'a Value, Unresolved> {
    let end = expression
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expression.len());
    let reference = &expression[..end];
    let unresolved = || Unresolved {
        expression: expression.to_owned(),
        reference: reference.to_owned(),
    };
    // A failed subrequest's body is its error, not a value to build on: dependants of a
    // failure do not run ("Dependent subrequests aren't executed").
    let (_, outcome) = done
        .iter()
        .find(|(id, outcome)| *id == reference && !outcome.failed)
        .ok_or_else(unresolved)?;
    let mut current = &outcome.body;
    let mut rest = &expression[end..];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let stop = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..stop];
            let object = current.as_object().ok_or_else(unresolved)?;
            // UNCERTAIN: an exact match first, then any case (field names are
            // case-insensitive in Salesforce; `id` vs `Id` is an easy slip).
            current = object
                .get(key)
                .or_else(|| {
                    object
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v)
                })
                .ok_or_else(unresolved)?;
            rest = &after[stop..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let stop = after.find(']').ok_or_else(unresolved)?;
            let index: usize = after[..stop].trim().parse().map_err(|_| unresolved())?;
            current = current
                .as_array()
                .and_then(|items| items.get(index))
                .ok_or_else(unresolved)?;
            rest = &after[stop + 1..];
        } else {
            return Err(unresolved());
        }
    }
    match current {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(current),
        _ => Err(unresolved()),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `@{…}` in `text`; `in_url` escapes the values.
fn resolve_text(text: &str, done: &[(&str, Outcome)], in_url: bool) -> Result<String, Unresolved> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let value = scalar_text(lookup(&after[..end], done)?);
        if in_url {
            out.extend(utf8_percent_encode(&value, URL_VALUE));
        } else {
            out.push_str(&value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves references in the string values of a body, at any depth. A string that is
/// exactly one reference takes the referenced value with its JSON type (a number stays a
/// number); references inside longer strings are spliced in as text.
fn resolve_value(value: &Value, done: &[(&str, Outcome)]) -> Result<Value, Unresolved> {
    Ok(match value {
        Value::String(text) => {
            let whole = text
                .strip_prefix("@{")
                .and_then(|t| t.strip_suffix('}'))
                .filter(|inner| !inner.contains('}'));
            match whole {
                Some(expression) => lookup(expression, done)?.clone(),
                None if text.contains("@{") => Value::String(resolve_text(text, done, false)?),
                None => value.clone(),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| resolve_value(item, done))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), resolve_value(item, done)?)))
                .collect::<Result<_, Unresolved>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(body: Value) -> Vec<(&'static str, Outcome)> {
        vec![(
            "refQuery",
            Outcome {
                status: 200,
                headers: serde_json::Map::new(),
                raw: body.to_string(),
                body,
                failed: false,
            },
        )]
    }

    #[test]
    fn references_step_into_bodies() {
        let done = done(json!({"records": [{"Id": "001A", "Amount": 5}], "done": true}));
        assert_eq!(
            lookup("refQuery.records[0].Id", &done).ok(),
            Some(&json!("001A"))
        );
        assert_eq!(
            resolve_value(&json!("@{refQuery.records[0].Amount}"), &done).ok(),
            Some(json!(5))
        );
        assert_eq!(
            resolve_value(&json!("x-@{refQuery.records[0].Amount}-y"), &done).ok(),
            Some(json!("x-5-y"))
        );
        assert_eq!(
            resolve_text(
                "/a/@{refQuery.records[0].Id}?q=@{refQuery.done}",
                &done,
                true
            )
            .ok(),
            Some("/a/001A?q=true".to_owned())
        );
        for bad in [
            "refQuery.records[1].Id",
            "refQuery.records",
            "refOther.id",
            "refQuery.records[x]",
            "refQuery.records[0",
        ] {
            let error = lookup(bad, &done).err().map(|e| e.message());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Invalid reference specified.")),
                "{bad}"
            );
        }
    }

    #[test]
    fn queries_are_counted_by_resource() {
        assert!(is_query(
            "/services/data/v59.0/query?q=SELECT+Id+FROM+Account"
        ));
        assert!(is_query("/services/data/v59.0/queryAll/01gXYZ-2000"));
        assert!(!is_query("/services/data/v59.0/sobjects/Account"));
        assert_eq!(header_case("location"), "Location");
        assert_eq!(header_case("last-modified"), "Last-Modified");
    }
}
