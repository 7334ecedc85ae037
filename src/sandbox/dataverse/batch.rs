//! `POST /api/data/v9.2/$batch`: several requests in one HTTP call, following Microsoft's
//! "Execute batch operations using the Web API" and OData v4 part 1 §11.7.
//!
//! The body is `multipart/mixed; boundary=batch_…`. Each part is either one request
//! (`Content-Type: application/http`, then `GET <url> HTTP/1.1`, headers, an empty line and
//! the body) or a change set (`multipart/mixed; boundary=changeset_…`) of write requests
//! with `Content-ID`s. Every inner request goes through the same `dispatch` as a
//! standalone call, so every rule (validation, alternate keys, `If-Match`,
//! `Prefer: return=representation`, query options) applies unchanged.
//!
//! Change sets are atomic: they run under one lock of the store, on top of a snapshot
//! taken when they start; when a request fails the snapshot is put back, so no row,
//! alternate-key entry, tombstone or row version of the change set survives (and change
//! tracking cannot see a version it handed out), and the sandbox is not marked changed.
//! The change set's answer is then just the failing request's error, nested in a
//! `changesetresponse` part under that request's `Content-ID` (as Dataverse answers, per a
//! response quoted in MicrosoftDocs/powerapps-docs issue 2843). Within a change set, `$n`
//! names the row that the request with `Content-ID: n` wrote: as the whole URL or its first
//! segment (`PATCH $1`, `PUT $1/name`) and as an `@odata.bind` / `@odata.id` value.
//!
//! Without `Prefer: odata.continue-on-error` the batch stops at the first failing request
//! or change set: the answer carries the responses so far and that failure, with the
//! failure's status as the batch's own (the documented example answers `400` for a
//! batch whose first request failed). With the preference every part runs and the batch
//! answers `200 OK`.
//!
//! Limits: at most [`MAX_REQUESTS`] requests; no batch inside a batch; no `GET` inside a
//! change set. A body that is not a well-formed batch is refused as a whole with a
//! Dataverse-shaped `400` before anything runs.
//!
//! The sandbox counts a `$batch` as one call (`POST /api/data/v9.2/$batch` in
//! `/_sandbox/stats`, one unit of any injected quota), as the service protection limit on
//! the number of requests does ("A batch can contain up to 1000 operations and will avoid
//! the number of requests limit", api-limits.md). Dataverse still charges the work inside:
//! the inner requests' execution time counts toward the 20-minute service protection
//! window, and each inner operation is believed to count toward the Power Platform
//! request entitlement (UNCERTAIN: stated by secondary sources, not found in Microsoft's
//! pages read).

use std::cell::RefCell;
use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::FutureExt as _;
use serde_json::Value;

use super::store::Store;
use super::{Call, DvError, MAX_BODY, Prefer, VERSIONS, dispatch, finish, lock};
use crate::multipart::{self, HttpMessage, Part};

/// Most requests one batch may hold (change set members included).
pub const MAX_REQUESTS: usize = 1000;

/// One inner request, parsed.
struct Inner {
    method: Method,
    target: String,
    headers: HeaderMap,
    body: Bytes,
    content_id: Option<String>,
}

/// One top-level part of the batch.
enum Item {
    Single(Inner),
    ChangeSet(Vec<Inner>),
}

/// One inner response, serialized.
struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn failed(&self) -> bool {
        self.status.is_client_error() || self.status.is_server_error()
    }

    fn http(&self) -> Vec<u8> {
        HttpMessage {
            start_line: format!(
                "HTTP/1.1 {} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            ),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
        .to_bytes()
    }
}

fn malformed(message: &str) -> DvError {
    // The service's exact wording for a malformed batch is not documented; the code is the
    // one the sandbox uses for OData syntax errors.
    DvError::bad_request(
        "0x80060888",
        &format!("The batch request body is not valid: {message}"),
    )
}

/// `POST $batch`.
pub fn execute(call: &Call<'_>) -> Result<Response, DvError> {
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multipart::boundary(content_type).ok_or_else(|| {
        malformed(&format!(
            "the Content-Type must be multipart/mixed with a boundary, not '{content_type}'"
        ))
    })?;
    let parts = multipart::parse(&call.body, &boundary).map_err(|m| malformed(&m))?;
    let items = read_items(&parts)?;
    let continue_on_error = call.headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("odata.continue-on-error"))
        })
    });

    let mut out = Vec::new();
    let mut failure = None;
    for item in items {
        match item {
            Item::Single(inner) => {
                let answer = run(call, &inner, None, &HashMap::new());
                let failed = answer.failed();
                out.push(Part {
                    headers: http_part_headers(None),
                    body: answer.http(),
                });
                if failed && failure.is_none() {
                    failure = Some(answer.status);
                }
            }
            Item::ChangeSet(requests) => {
                let (answers, failed) = change_set(call, &requests);
                let boundary = format!("changesetresponse_{}", call.sandbox.new_guid());
                let nested: Vec<Part> = answers
                    .iter()
                    .map(|(content_id, answer)| Part {
                        headers: http_part_headers(content_id.as_deref()),
                        body: answer.http(),
                    })
                    .collect();
                out.push(Part {
                    headers: vec![(
                        "Content-Type".into(),
                        format!("multipart/mixed; boundary={boundary}"),
                    )],
                    body: multipart::write(&boundary, &nested),
                });
                if let Some(status) = failed
                    && failure.is_none()
                {
                    failure = Some(status);
                }
            }
        }
        if failure.is_some() && !continue_on_error {
            break;
        }
    }

    let boundary = format!("batchresponse_{}", call.sandbox.new_guid());
    let mut response = Response::new(Body::from(multipart::write(&boundary, &out)));
    // UNCERTAIN: Dataverse's documented example answers a batch stopped by a failing
    // request with that request's status (400); the same is assumed for other statuses and
    // for failed change sets.
    *response.status_mut() = match failure {
        Some(status) if !continue_on_error => status,
        _ => StatusCode::OK,
    };
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if continue_on_error {
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("odata.continue-on-error"),
        );
    }
    Ok(response)
}

fn http_part_headers(content_id: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Content-Type".to_owned(), "application/http".to_owned()),
        ("Content-Transfer-Encoding".to_owned(), "binary".to_owned()),
    ];
    if let Some(id) = content_id {
        headers.push(("Content-ID".to_owned(), id.to_owned()));
    }
    headers
}

/// Reads and checks the whole structure before anything runs, so a malformed batch has no
/// effect at all.
fn read_items(parts: &[Part]) -> Result<Vec<Item>, DvError> {
    let mut items = Vec::new();
    let mut count = 0usize;
    for part in parts {
        let media = part.media_type().unwrap_or_default();
        match media.as_str() {
            "application/http" => {
                items.push(Item::Single(read_request(part)?));
                count += 1;
            }
            "multipart/mixed" => {
                let content_type = part.header("content-type").unwrap_or("");
                let boundary = multipart::boundary(content_type)
                    .ok_or_else(|| malformed("a change set has no boundary"))?;
                let nested = multipart::parse(&part.body, &boundary)
                    .map_err(|m| malformed(&format!("change set: {m}")))?;
                let mut requests = Vec::new();
                let mut ids: Vec<String> = Vec::new();
                for member in &nested {
                    if member.media_type().as_deref() != Some("application/http") {
                        return Err(malformed(
                            "every part of a change set must be application/http; change sets cannot be nested",
                        ));
                    }
                    let request = read_request(member)?;
                    if request.method == Method::GET {
                        return Err(malformed("GET requests are not allowed within change sets"));
                    }
                    if let Some(id) = &request.content_id {
                        // UNCERTAIN: OData requires Content-IDs unique within the change
                        // set; Dataverse's reaction to a duplicate is not documented.
                        if ids.contains(id) {
                            return Err(malformed(&format!(
                                "Content-ID '{id}' is used twice in one change set"
                            )));
                        }
                        ids.push(id.clone());
                    }
                    requests.push(request);
                }
                count += requests.len();
                items.push(Item::ChangeSet(requests));
            }
            other => {
                return Err(malformed(&format!(
                    "a batch part must be application/http or a multipart/mixed change set, not '{other}'"
                )));
            }
        }
        if count > MAX_REQUESTS {
            // UNCERTAIN: the limit is documented, the service's wording is not.
            return Err(DvError::bad_request(
                "0x80060888",
                &format!(
                    "The number of requests in the batch exceeds the limit of {MAX_REQUESTS}."
                ),
            ));
        }
    }
    Ok(items)
}

fn read_request(part: &Part) -> Result<Inner, DvError> {
    let message = multipart::parse_http(&part.body).map_err(|m| malformed(&m))?;
    let (method, target) = message.request_line().ok_or_else(|| {
        malformed(&format!(
            "'{}' is not a request line (METHOD url HTTP/1.1)",
            message.start_line
        ))
    })?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| malformed(&format!("'{method}' is not an HTTP method")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| malformed(&format!("'{name}' is not a header name")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| malformed(&format!("the value of '{name}' is not a header value")))?;
        headers.append(name, value);
    }
    Ok(Inner {
        method,
        target: target.to_owned(),
        headers,
        body: Bytes::from(message.body),
        content_id: part.header("content-id").map(str::to_owned),
    })
}

/// Runs a change set under one lock; on the first failure restores the snapshot and
/// answers only that failure. Returns the answers with their Content-IDs, and the failing
/// status.
fn change_set(
    call: &Call<'_>,
    requests: &[Inner],
) -> (Vec<(Option<String>, Answer)>, Option<StatusCode>) {
    let state = &call.sandbox.dataverse;
    let mut guard = lock(&state.store);
    guard.begin();
    let mut answers = Vec::new();
    let mut failure = None;
    {
        let cell = RefCell::new(&mut *guard);
        // Content-ID → URL of the row that request wrote.
        let mut written: HashMap<String, String> = HashMap::new();
        for request in requests {
            let answer = run(call, request, Some(&cell), &written);
            if answer.failed() {
                failure = Some((request.content_id.clone(), answer));
                break;
            }
            if let Some(id) = &request.content_id
                && let Some(url) = written_url(call, request, &answer, &written)
            {
                written.insert(id.clone(), url);
            }
            answers.push((request.content_id.clone(), answer));
        }
    }
    match failure {
        Some((content_id, answer)) => {
            guard.rollback(&state.schema);
            let status = answer.status;
            (vec![(content_id, answer)], Some(status))
        }
        None => {
            guard.commit();
            drop(guard);
            call.sandbox.changed();
            (answers, None)
        }
    }
}

/// The URL of the row a successful write names: its `OData-EntityId`, or (with
/// `return=representation`, which sends none) the primary id in the body.
fn written_url(
    call: &Call<'_>,
    request: &Inner,
    answer: &Answer,
    written: &HashMap<String, String>,
) -> Option<String> {
    if let Some((_, url)) = answer
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("odata-entityid"))
    {
        return Some(url.clone());
    }
    let (_, path, _) = split_target(call, &request.target, written).ok()?;
    let resource = path.strip_prefix("/api/data/")?.split_once('/')?.1;
    let set = resource.split(['(', '/']).next()?;
    let table = call.sandbox.dataverse.schema.by_set(set)?;
    let body: Value = serde_json::from_slice(&answer.body).ok()?;
    let id = body.get(table.id())?.as_str()?;
    Some(format!("{}/{set}({id})", call.api_root()))
}

fn reference_error(reference: &str) -> DvError {
    // Wording from the documented 400 for a Content-ID used before it is declared.
    DvError::bad_request(
        "0x80060888",
        &format!("Content-ID Reference: '{reference}' does not exist in the batch context."),
    )
}

/// Content-IDs are numbers in every Dataverse example; an unknown `$<digits>` is a
/// reference to a request that does not exist (400), anything else is left as written.
fn is_numeric(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_digit())
}

/// The `$n` at the start of a URL or value, and what follows it.
fn content_reference(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('$')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (id, tail) = rest.split_at(end);
    (!id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some((id, tail))
}

/// Splits an inner request's URL into (version, path, query): absolute URLs lose their
/// origin, paths relative to the service root (`accounts?…`) gain it, and `$n` is replaced
/// by the URL of the row request `n` wrote.
fn split_target(
    call: &Call<'_>,
    target: &str,
    written: &HashMap<String, String>,
) -> Result<(String, String, Option<String>), DvError> {
    let mut url = target.to_owned();
    if let Some((id, tail)) = content_reference(target) {
        match written.get(id) {
            Some(base) => url = format!("{base}{tail}"),
            None if is_numeric(id) => return Err(reference_error(&format!("${id}"))),
            // `$batch`, `$metadata`: a resource, not a reference.
            None => {}
        }
    }
    let url = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(at) => rest[at..].to_owned(),
            None => "/".to_owned(),
        },
        None if url.starts_with('/') => url,
        None => format!("/api/data/{}/{url}", call.version),
    };
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (url, None),
    };
    let version = path
        .strip_prefix("/api/data/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    Ok((version, path, query))
}

/// Replaces `"$n"` values of `…@odata.bind` and `@odata.id` by the URL of the row request
/// `n` wrote. Bodies that are not JSON objects are left for the handler to refuse.
fn resolve_body(body: &Bytes, written: &HashMap<String, String>) -> Result<Bytes, DvError> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return Ok(body.clone());
    };
    let mut touched = false;
    for (key, value) in &mut map {
        if !(key.ends_with("@odata.bind") || key == "@odata.id") {
            continue;
        }
        let Some(text) = value.as_str() else {
            continue;
        };
        let Some((id, "")) = content_reference(text) else {
            continue;
        };
        let Some(url) = written.get(id) else {
            if is_numeric(id) {
                return Err(reference_error(text));
            }
            continue;
        };
        *value = Value::String(url.clone());
        touched = true;
    }
    if !touched {
        return Ok(body.clone());
    }
    Ok(Bytes::from(Value::Object(map).to_string()))
}

/// Runs one inner request through the standalone handlers and serializes the answer.
fn run<'x>(
    outer: &'x Call<'_>,
    request: &Inner,
    txn: Option<&'x RefCell<&'x mut Store>>,
    written: &HashMap<String, String>,
) -> Answer {
    let result = prepare_and_dispatch(outer, request, txn, written);
    let response = finish(result.unwrap_or_else(DvError::into_response), "");
    serialize(response)
}

fn prepare_and_dispatch<'x>(
    outer: &'x Call<'_>,
    request: &Inner,
    txn: Option<&'x RefCell<&'x mut Store>>,
    written: &HashMap<String, String>,
) -> Result<Response, DvError> {
    let (version, path, query) = split_target(outer, &request.target, written)?;
    let Some(rest) = path.strip_prefix("/api/data/") else {
        return Err(DvError::no_segment(path.trim_start_matches('/')));
    };
    if !VERSIONS.contains(&version.as_str()) {
        return Err(DvError::no_segment(&version));
    }
    let resource = rest.split_once('/').map_or("", |(_, r)| r);
    if resource == "$batch" {
        return Err(malformed(
            "batch requests cannot contain other batch requests",
        ));
    }
    let body = if txn.is_some() {
        resolve_body(&request.body, written)?
    } else {
        request.body.clone()
    };
    let call = Call {
        sandbox: outer.sandbox,
        method: request.method.clone(),
        version,
        prefer: Prefer::parse(&request.headers),
        headers: request.headers.clone(),
        query,
        body,
        txn,
    };
    dispatch(&call, resource).1
}

/// Status, headers and body of a handler's response. Handler bodies are in memory, so
/// they are complete at the first poll; anything else (a bug) becomes a 500.
fn serialize(response: Response) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY).now_or_never();
    let Some(Ok(bytes)) = bytes else {
        return serialize(
            DvError::internal("the inner response body was not ready").into_response(),
        );
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((canonical(name.as_str()), value.to_str().ok()?.to_owned()))
        })
        .collect();
    Answer {
        status: parts.status,
        headers,
        body: bytes.to_vec(),
    }
}

/// `odata-entityid` → `OData-EntityId`, as Dataverse writes its headers.
fn canonical(name: &str) -> String {
    match name {
        "odata-entityid" => "OData-EntityId".to_owned(),
        "odata-version" => "OData-Version".to_owned(),
        "etag" => "ETag".to_owned(),
        _ => name
            .split('-')
            .map(|word| {
                let mut chars = word.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_references_are_recognized() {
        assert_eq!(content_reference("$1"), Some(("1", "")));
        assert_eq!(content_reference("$12/name"), Some(("12", "/name")));
        assert_eq!(content_reference("$"), None);
        assert_eq!(content_reference("accounts"), None);
        assert_eq!(content_reference("$batch"), Some(("batch", "")));
    }

    #[test]
    fn header_names_are_written_the_way_dataverse_writes_them() {
        assert_eq!(canonical("odata-entityid"), "OData-EntityId");
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("preference-applied"), "Preference-Applied");
    }
}
