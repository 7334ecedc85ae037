//! The Composite resource (`POST /services/data/vXX.X/composite`, `crm-apis.md` §B8):
//! up to 25 subrequests — at most 5 of them queries — as ONE API call, later ones using
//! earlier results through `@{refId.path}` (`@{refAccount.id}`,
//! `@{refQuery.records[0].Id}`), optionally all-or-none.
//!
//! [`SalesforceClient::composite`] sends [`CompositeRequest`]s (built with the helpers
//! [`CompositeRequest::query`], [`CompositeRequest::create`], [`CompositeRequest::upsert`],
//! [`CompositeRequest::update`], [`CompositeRequest::delete`]) and returns one
//! [`CompositeReply`] per subrequest, in order. Salesforce answers a composite 200 even
//! when subrequests fail: [`CompositeReply::error`] turns a failed reply into the
//! [`ConnectorError`] the single call would have returned, and [`composite_failure`] finds
//! the root cause among replies (with `allOrNone`, every bystander reports
//! `PROCESSING_HALTED`).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::soql::identifier;
use super::{API, Record, SalesforceClient, decode, invalid_input, record_id, strip_attributes};
use crate::connectors::ConnectorError;
use crate::connectors::http::{Request, service_error};

/// Most subrequests in one composite request.
pub const MAX_SUBREQUESTS: usize = 25;
/// Most query / queryAll / query-more subrequests in one composite request.
pub const MAX_QUERIES: usize = 5;

/// The error code of subrequests that did not run or were rolled back because another
/// one failed, or that referenced a failed one.
pub const PROCESSING_HALTED: &str = "PROCESSING_HALTED";

/// Headers every subrequest inherits from the composite call; setting them on a
/// subrequest makes Salesforce refuse the whole call.
const FORBIDDEN_HEADERS: [&str; 3] = ["accept", "authorization", "content-type"];

/// What is escaped in a url segment or query value: everything but RFC 3986 unreserved
/// characters (as the single-call methods do). References are kept as they are.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One subrequest of a composite call.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeRequest {
    /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: Method,
    /// The resource relative to the versioned API root, e.g. `/sobjects/Account` or
    /// `/query?q=…` (the client prefixes `/services/data/vXX.X`). May contain
    /// `@{refId.path}` references, which are sent untouched.
    pub url: String,
    /// Names the result for later references and in the reply: letters, digits and `_`,
    /// starting with a letter or digit.
    pub reference_id: String,
    /// The JSON body, if any. String values may be or contain `@{refId.path}` references.
    pub body: Option<Value>,
    /// Extra headers (`If-Match`, `Sforce-Query-Options`, …); not Accept, Authorization
    /// or Content-Type.
    pub http_headers: Vec<(String, String)>,
}

/// Escapes `text` for a url, leaving `@{…}` references intact so Salesforce can resolve
/// them (it substitutes the value, not the escaped form).
fn escape_keeping_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.extend(utf8_percent_encode(&rest[..start], ESCAPED));
        out.push_str(&rest[start..start + end + 1]);
        rest = &rest[start + end + 1..];
    }
    out.extend(utf8_percent_encode(rest, ESCAPED));
    out
}

/// `id` if it is a record id or exactly one `@{…}` reference (an id created earlier in
/// the same call).
fn id_or_reference(id: &str) -> Result<String, ConnectorError> {
    let reference = id
        .strip_prefix("@{")
        .and_then(|inner| inner.strip_suffix('}'))
        .is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b))
        });
    if reference {
        Ok(id.to_owned())
    } else {
        record_id(id).map(str::to_owned)
    }
}

fn sobject_name(sobject: &str) -> Result<&str, ConnectorError> {
    let name = identifier("sObject", sobject)?;
    if name.contains('.') {
        return Err(invalid_input(format!("`{name}` is not an sObject name")));
    }
    Ok(name)
}

impl CompositeRequest {
    /// A subrequest without body or headers.
    pub fn new(
        method: Method,
        url: impl Into<String>,
        reference_id: impl Into<String>,
    ) -> CompositeRequest {
        CompositeRequest {
            method,
            url: url.into(),
            reference_id: reference_id.into(),
            body: None,
            http_headers: Vec::new(),
        }
    }

    /// With a JSON body.
    pub fn with_body(mut self, body: Value) -> CompositeRequest {
        self.body = Some(body);
        self
    }

    /// With an extra header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.http_headers.push((name.into(), value.into()));
        self
    }

    /// `GET /query?q=soql`. The SOQL may contain references (`WHERE AccountId =
    /// '@{refAccount.id}'`); build it with [`super::soql::Soql`] for safe literals.
    pub fn query(reference_id: impl Into<String>, soql: &str) -> CompositeRequest {
        CompositeRequest::new(
            Method::GET,
            format!("/query?q={}", escape_keeping_references(soql)),
            reference_id,
        )
    }

    /// `POST /sobjects/{sobject}`: creates a record. The reply body is
    /// `{"id","success","errors"}`; later subrequests use `@{refId.id}`.
    pub fn create(
        reference_id: impl Into<String>,
        sobject: &str,
        fields: &Map<String, Value>,
    ) -> Result<CompositeRequest, ConnectorError> {
        let sobject = sobject_name(sobject)?;
        Ok(
            CompositeRequest::new(Method::POST, format!("/sobjects/{sobject}"), reference_id)
                .with_body(Value::Object(fields.clone())),
        )
    }

    /// `PATCH /sobjects/{sobject}/{field}/{value}`: creates (201) or updates (200) the
    /// record whose External ID `field` is `value`; the reply body is
    /// `{"id","success","errors","created"}`. `value` may contain references.
    pub fn upsert(
        reference_id: impl Into<String>,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &Map<String, Value>,
    ) -> Result<CompositeRequest, ConnectorError> {
        let sobject = sobject_name(sobject)?;
        let field = identifier("External ID field", field)?;
        if value.is_empty() {
            return Err(invalid_input(format!("upsert by {field} needs a value")));
        }
        Ok(CompositeRequest::new(
            Method::PATCH,
            format!(
                "/sobjects/{sobject}/{field}/{}",
                escape_keeping_references(value)
            ),
            reference_id,
        )
        .with_body(Value::Object(fields.clone())))
    }

    /// `PATCH /sobjects/{sobject}/{id}`: changes the given fields (204). `id` is a record
    /// id or a reference such as `@{refQuery.records[0].Id}`.
    pub fn update(
        reference_id: impl Into<String>,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<CompositeRequest, ConnectorError> {
        let sobject = sobject_name(sobject)?;
        let id = id_or_reference(id)?;
        Ok(CompositeRequest::new(
            Method::PATCH,
            format!("/sobjects/{sobject}/{id}"),
            reference_id,
        )
        .with_body(Value::Object(fields.clone())))
    }

    /// `DELETE /sobjects/{sobject}/{id}` (204). `id` is a record id or a reference.
    pub fn delete(
        reference_id: impl Into<String>,
        sobject: &str,
        id: &str,
    ) -> Result<CompositeRequest, ConnectorError> {
        let sobject = sobject_name(sobject)?;
        let id = id_or_reference(id)?;
        Ok(CompositeRequest::new(
            Method::DELETE,
            format!("/sobjects/{sobject}/{id}"),
            reference_id,
        ))
    }

    fn is_query(&self) -> bool {
        let path = self.url.split('?').next().unwrap_or("");
        let resource = path
            .strip_prefix("/services/data/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(path, |(_version, rest)| rest);
        let first = resource.trim_start_matches('/').split('/').next();
        self.method == Method::GET && matches!(first, Some("query" | "queryAll"))
    }

    /// Whether sending this twice could do something once more: a create makes a
    /// second record, and a conditional write fails its own precondition the second time.
    fn repeatable(&self) -> bool {
        self.method != Method::POST
            && !self
                .http_headers
                .iter()
                .any(|(name, _)| name.to_ascii_lowercase().starts_with("if-"))
    }
}

/// One subrequest's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeReply {
    /// The subrequest's reference id (empty when Salesforce gives none, as for a refused
    /// call's single limit error).
    pub reference_id: String,
    /// Its HTTP status (`201` created, `200`, `204`, `400`, `404`, …).
    pub status: u16,
    /// Its response body (`Null` for none): a record, a save result, a query page, or an
    /// error array.
    pub body: Value,
    /// Its response headers (`Location`, …).
    pub headers: Map<String, Value>,
}

impl CompositeReply {
    /// 2xx, and not a save result or collection result reporting `success: false`.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status) && !reports_failure(&self.body)
    }

    /// The first error's code (`PROCESSING_HALTED`, `DUPLICATE_VALUE`, …), if it failed.
    pub fn error_code(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        service_error(self.body.to_string().as_bytes()).0
    }

    /// Whether it failed only because another subrequest did (rolled back, not run, or
    /// referencing a failed one).
    pub fn is_halted(&self) -> bool {
        self.error_code().as_deref() == Some(PROCESSING_HALTED)
    }

    /// The `id` of a create or upsert result.
    pub fn id(&self) -> Option<&str> {
        self.body.get("id").and_then(Value::as_str)
    }

    /// Whether an upsert created its record (`created`, else status 201).
    pub fn created(&self) -> bool {
        self.body
            .get("created")
            .and_then(Value::as_bool)
            .unwrap_or(self.status == 201)
    }

    /// The records of a query reply, without their `attributes` (like
    /// [`SalesforceClient::query`]); empty for any other reply.
    pub fn records(&self) -> Vec<Record> {
        let Some(records) = self.body.get("records").and_then(Value::as_array) else {
            return Vec::new();
        };
        records
            .iter()
            .filter_map(|record| {
                let mut record = record.clone();
                strip_attributes(&mut record);
                match record {
                    Value::Object(map) => Some(map),
                    _ => None,
                }
            })
            .collect()
    }

    /// `None` if it succeeded, else the [`ConnectorError`] the same request sent on its
    /// own would have produced, under `operation`: 404 → [`ConnectorError::NotFound`],
    /// 412 → [`ConnectorError::PreconditionFailed`], 403 `REQUEST_LIMIT_EXCEEDED` →
    /// [`ConnectorError::BudgetExhausted`], anything else (a `DUPLICATE_VALUE` or
    /// `FIELD_INTEGRITY_EXCEPTION` 400, a 300 for an ambiguous External ID, a
    /// `PROCESSING_HALTED`) → [`ConnectorError::Status`] with Salesforce's code and message.
    pub fn error(&self, operation: &'static str) -> Option<ConnectorError> {
        if self.is_success() {
            return None;
        }
        let errors = if (200..300).contains(&self.status) {
            // A save result with `success: false` carries its errors inside.
            self.body.get("errors").cloned().unwrap_or(Value::Null)
        } else {
            self.body.clone()
        };
        let (code, message) = service_error(errors.to_string().as_bytes());
        Some(match self.status {
            404 => ConnectorError::NotFound {
                api: API,
                operation,
                code,
                message,
            },
            412 => ConnectorError::PreconditionFailed {
                api: API,
                operation,
            },
            403 if code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED") => {
                ConnectorError::BudgetExhausted {
                    api: API,
                    operation,
                    message,
                }
            }
            status => ConnectorError::Status {
                api: API,
                operation,
                status,
                code,
                message,
            },
        })
    }

    /// `Ok(self)` if it succeeded, else [`CompositeReply::error`].
    pub fn into_result(self, operation: &'static str) -> Result<CompositeReply, ConnectorError> {
        match self.error(operation) {
            Some(error) => Err(error),
            None => Ok(self),
        }
    }
}

/// A save result (`{"success":false}`) or collection result (`[{"success":false}]`).
fn reports_failure(body: &Value) -> bool {
    let failed = |v: &Value| v.get("success").and_then(Value::as_bool) == Some(false);
    match body {
        Value::Array(items) => items.iter().any(failed),
        other => failed(other),
    }
}

/// The error that explains a composite's failure, `None` if every subrequest succeeded:
/// the first failed reply that is not `PROCESSING_HALTED` (with `allOrNone` every other
/// subrequest reports that), else the first failed one.
pub fn composite_failure(
    replies: &[CompositeReply],
    operation: &'static str,
) -> Option<ConnectorError> {
    replies
        .iter()
        .find(|r| !r.is_success() && !r.is_halted())
        .or_else(|| replies.iter().find(|r| !r.is_success()))
        .and_then(|r| r.error(operation))
}

/// Refuses what Salesforce would refuse for the whole call, before spending a call on it.
fn check(requests: &[CompositeRequest]) -> Result<(), ConnectorError> {
    if requests.is_empty() {
        return Err(invalid_input("a composite call needs a subrequest".into()));
    }
    if requests.len() > MAX_SUBREQUESTS {
        return Err(invalid_input(format!(
            "a composite call takes at most {MAX_SUBREQUESTS} subrequests, not {}; split it",
            requests.len()
        )));
    }
    let queries = requests.iter().filter(|r| r.is_query()).count();
    if queries > MAX_QUERIES {
        return Err(invalid_input(format!(
            "a composite call takes at most {MAX_QUERIES} queries, not {queries}; split it"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for request in requests {
        let id = &request.reference_id;
        let valid = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(invalid_input(format!(
                "composite referenceId `{}` must be letters, digits and `_`, starting with a letter or digit",
                id.chars().take(80).collect::<String>()
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(invalid_input(format!(
                "composite referenceId `{id}` is used twice"
            )));
        }
        if !request.url.starts_with('/') {
            return Err(invalid_input(format!(
                "composite subrequest {id}: the url must start with `/`"
            )));
        }
        if let Some((name, _)) = request
            .http_headers
            .iter()
            .find(|(name, _)| FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
        {
            return Err(invalid_input(format!(
                "composite subrequest {id} must not set {name}: subrequests inherit it"
            )));
        }
    }
    Ok(())
}

impl SalesforceClient {
    /// Sends `requests` as one Composite call (one API call) and returns their replies in
    /// order. With `all_or_none`, the first failing subrequest rolls back all of them.
    ///
    /// A reply's failure is not an `Err` here (Salesforce answers the call 200 either
    /// way): check [`CompositeReply::error`] / [`composite_failure`]. `Err` is for the
    /// call itself: invalid input (more than 25 subrequests or 5 queries, a bad
    /// referenceId, a forbidden header), an HTTP error of the composite, throttling and
    /// transport failures after the usual retries.
    ///
    /// A lost answer is retried only if repeating the call cannot do anything twice: no
    /// subrequest creates (POST) and none is conditional (`If-*`). Upserts, updates,
    /// deletes and reads give the same end state when repeated, whether or not the first
    /// attempt was applied (all-or-none or not).
    pub async fn composite(
        &self,
        all_or_none: bool,
        requests: &[CompositeRequest],
    ) -> Result<Vec<CompositeReply>, ConnectorError> {
        check(requests)?;
        let subrequests: Vec<Value> = requests
            .iter()
            .map(|request| {
                let url = if request.url.starts_with("/services/data/") {
                    request.url.clone()
                } else {
                    self.data_path(&request.url)
                };
                let mut sub = json!({
                    "method": request.method.as_str(),
                    "url": url,
                    "referenceId": request.reference_id,
                });
                if let Some(body) = &request.body {
                    sub["body"] = body.clone();
                }
                if !request.http_headers.is_empty() {
                    let headers: Map<String, Value> = request
                        .http_headers
                        .iter()
                        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                        .collect();
                    sub["httpHeaders"] = Value::Object(headers);
                }
                sub
            })
            .collect();
        let body = json!({ "allOrNone": all_or_none, "compositeRequest": subrequests });
        let repeatable = requests.iter().all(CompositeRequest::repeatable);
        let request = Request::post("composite", self.data_path("/composite"))
            .json(&body)
            .idempotent(repeatable);
        let mut answer: Value = self.send(request).await?.json()?;
        let Some(Value::Array(items)) = answer.get_mut("compositeResponse").map(Value::take) else {
            return Err(decode(
                "composite",
                "the composite answer has no compositeResponse list",
            ));
        };
        let replies = items
            .into_iter()
            .map(|mut item| {
                let status = item
                    .get("httpStatusCode")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| decode("composite", "a subrequest result has no status"))?;
                Ok(CompositeReply {
                    reference_id: item
                        .get("referenceId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    status,
                    body: item.get_mut("body").map(Value::take).unwrap_or(Value::Null),
                    headers: match item.get_mut("httpHeaders").map(Value::take) {
                        Some(Value::Object(headers)) => headers,
                        _ => Map::new(),
                    },
                })
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_values_but_keep_references() {
        let query = CompositeRequest::query(
            "refQ",
            "SELECT Id FROM Contact WHERE AccountId = '@{refAccount.id}'",
        );
        assert_eq!(
            query.url,
            "/query?q=SELECT%20Id%20FROM%20Contact%20WHERE%20AccountId%20%3D%20%27@{refAccount.id}%27"
        );
        assert!(query.is_query());
        let upsert = CompositeRequest::upsert(
            "refOpp",
            "Opportunity",
            "Referral_Id__c",
            "a/b c",
            &Map::new(),
        )
        .unwrap();
        assert_eq!(upsert.url, "/sobjects/Opportunity/Referral_Id__c/a%2Fb%20c");
        assert!(
            CompositeRequest::update("u", "Account", "@{refQ.records[0].Id}", &Map::new()).is_ok()
        );
        assert!(CompositeRequest::update("u", "Account", "../limits", &Map::new()).is_err());
        assert!(CompositeRequest::create("c", "Account.x", &Map::new()).is_err());
    }

    #[test]
    fn failed_replies_become_the_single_call_errors() {
        let reply = CompositeReply {
            reference_id: "refOpp".into(),
            status: 400,
            body: json!([{"errorCode": "DUPLICATE_VALUE", "message": "duplicate value found", "fields": []}]),
            headers: Map::new(),
        };
        assert!(matches!(
            reply.error("upsert"),
            Some(ConnectorError::Status { status: 400, code: Some(code), .. }) if code == "DUPLICATE_VALUE"
        ));
        let halted = CompositeReply {
            reference_id: "refAccount".into(),
            status: 400,
            body: json!([{"errorCode": PROCESSING_HALTED, "message": "rolled back"}]),
            headers: Map::new(),
        };
        assert!(halted.is_halted());
        let failure = composite_failure(&[halted, reply], "sync");
        assert!(matches!(
            failure,
            Some(ConnectorError::Status { code: Some(code), .. }) if code == "DUPLICATE_VALUE"
        ));
        let missing = CompositeReply {
            reference_id: "refGet".into(),
            status: 404,
            body: json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
            headers: Map::new(),
        };
        assert!(matches!(
            missing.error("get"),
            Some(ConnectorError::NotFound { .. })
        ));
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let many: Vec<CompositeRequest> = (0..26)
            .map(|i| CompositeRequest::new(Method::DELETE, "/sobjects/Account/x", format!("r{i}")))
            .collect();
        assert!(check(&many).is_err());
        assert!(check(&many[..25]).is_ok());
        let queries: Vec<CompositeRequest> = (0..6)
            .map(|i| CompositeRequest::query(format!("q{i}"), "SELECT Id FROM Account"))
            .collect();
        assert!(check(&queries).is_err());
        assert!(check(&queries[..5]).is_ok());
        let header =
            [CompositeRequest::new(Method::GET, "/limits", "l").with_header("Content-Type", "x")];
        assert!(check(&header).is_err());
        let bad_id = [CompositeRequest::new(Method::GET, "/limits", "a.b")];
        assert!(check(&bad_id).is_err());
    }
}
