//! The Dataverse Web API client (`<env-url>/api/data/v9.2/`), following crm-apis.md PART A.
//!
//! Every call goes through the shared [`Upstream`] (token, budget, retries honouring
//! `Retry-After`, one token refresh on 401, metrics) and carries the OData headers the
//! service expects (A1): `Accept: application/json` (added by the upstream),
//! `OData-MaxVersion: 4.0`, `OData-Version: 4.0`, `If-None-Match: null` on reads so no cache
//! between us and the service answers with a stale row, and `Content-Type:
//! application/json` on bodies.
//!
//! What it does:
//! - rows: [`DataverseClient::create`] (id from `OData-EntityId`),
//!   [`DataverseClient::create_returning`], [`DataverseClient::retrieve`] (404 → `None`),
//!   [`DataverseClient::update`] (always conditional: the row's eTag or `If-Match: *`, so an
//!   update never creates), [`DataverseClient::upsert`] by alternate key (created vs updated
//!   with [`DataverseClient::upsert_returning`]), [`DataverseClient::delete`];
//! - queries as a stream of rows, following `@odata.nextLink` verbatim with the same
//!   `Prefer: odata.maxpagesize` ([`DataverseClient::query`]);
//! - lookups written with [`bind`] (`"customerid_account@odata.bind": "/accounts(<id>)"`);
//! - currencies by ISO code, cached per client ([`DataverseClient::currency_id`]);
//! - change polling by `modifiedon` ([`DataverseClient::changes_since`]) and change tracking
//!   with delta links where the table has it ([`DataverseClient::track_changes`]), which
//!   says [`ChangeTrackingError::NotEnabled`] when the engine must fall back to polling;
//! - several queries and atomic change sets in one `$batch` call
//!   ([`DataverseClient::batch`]): queries built exactly like [`DataverseClient::query`]'s,
//!   writes like the single-row calls, later writes naming earlier ones as `$n`
//!   ([`batch_ref`]), and each inner failure convertible into the error the single call
//!   would have returned ([`BatchResponse::error`]).
//!
//! Values that end up in URLs (entity set names, column names, ids, key values, filter
//! literals) are checked or escaped here, so data can never change the shape of a request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use futures_util::StreamExt as _;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::auth::TokenSource;
use super::http::{CallStats, Reply, Request, Upstream, UpstreamOptions, http_client};
use super::{ConnectorError, Secret, SecretEnv, lock, require_https, resolve_secret, resolve_text};
use crate::config::model::{Budget, CrmConnection};
use crate::mapping::transforms::datetime::DateTime;
use crate::multipart;

/// The API name in errors, logs and metrics.
const API: &str = "dataverse";

/// Entra ID's public cloud token host.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The Web API version used when the connection does not name one.
pub const DEFAULT_API_VERSION: &str = "v9.2";

/// Rows per page when the caller does not choose (the service allows up to 5,000).
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// Largest page the service serves.
const MAX_PAGE_SIZE: u32 = 5000;

/// How to reach one Dataverse environment.
#[derive(Debug, Clone)]
pub struct DataverseSettings {
    /// Environment URL, `https://<org>.crm.dynamics.com` (no `/api/data`).
    pub base_url: String,
    /// Web API version, `v9.2` by default.
    pub api_version: String,
    /// Entra ID token host, [`DEFAULT_AUTHORITY`] by default.
    pub authority: String,
    /// Entra ID tenant of the app registration.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Its client secret (redacted in `Debug`).
    pub client_secret: Secret,
    /// The connection's call budget.
    pub budget: Budget,
    /// Allow `http://` (the local sandbox only).
    pub allow_insecure_http: bool,
    /// Extra CA certificates (PEM) to trust, e.g. the sandbox CA with `--tls`.
    pub trusted_certificates: Vec<String>,
    /// Whole-request timeout of every API call ([`super::http::DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: std::time::Duration,
    /// Rows per page for queries and change tracking when not chosen per call.
    pub page_size: u32,
}

impl DataverseSettings {
    /// Settings with the defaults: API `v9.2`, the public cloud authority, no budget,
    /// https only, [`DEFAULT_PAGE_SIZE`] rows per page.
    pub fn new(
        base_url: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
    ) -> DataverseSettings {
        DataverseSettings {
            base_url: base_url.into(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            authority: DEFAULT_AUTHORITY.to_owned(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret,
            budget: Budget::default(),
            allow_insecure_http: false,
            trusted_certificates: Vec::new(),
            request_timeout: super::http::DEFAULT_REQUEST_TIMEOUT,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Settings from the configuration's `connections.crm`, resolving references
    /// (`${ENV}`, `${file:…}`) through `env`. The tenant and the client secret are required.
    ///
    /// The token host is `connections.crm.auth.authority` (a sovereign cloud, the sandbox),
    /// by default the public cloud's `https://login.microsoftonline.com`.
    pub fn from_config(
        conn: &CrmConnection,
        env: SecretEnv<'_>,
        trusted: &[String],
    ) -> Result<DataverseSettings, ConnectorError> {
        let base_url = resolve_text("connections.crm.base_url", &conn.base_url, env)?;
        let tenant_id = match &conn.auth.tenant_id {
            Some(tenant) if !tenant.trim().is_empty() => {
                resolve_text("connections.crm.auth.tenant_id", tenant, env)?
            }
            _ => {
                return Err(ConnectorError::Config {
                    message: "connections.crm.auth.tenant_id is required for Dataverse: the Entra ID tenant (directory) id of the app registration".to_owned(),
                });
            }
        };
        let client_id = resolve_text("connections.crm.auth.client_id", &conn.auth.client_id, env)?;
        let client_secret = match &conn.auth.client_secret {
            Some(reference) => {
                resolve_secret("connections.crm.auth.client_secret", reference, env)?
            }
            None => {
                return Err(ConnectorError::Config {
                    message: "connections.crm.auth.client_secret is required for Dataverse (client credentials), e.g. ${DV_CLIENT_SECRET}".to_owned(),
                });
            }
        };
        let mut settings = DataverseSettings::new(base_url, tenant_id, client_id, client_secret);
        if let Some(version) = &conn.api_version {
            settings.api_version = version.trim().to_owned();
        }
        if let Some(authority) = &conn.auth.authority {
            settings.authority = resolve_text("connections.crm.auth.authority", authority, env)?;
        }
        settings.budget = conn.budget.clone();
        settings.allow_insecure_http = conn.allow_insecure_http;
        settings.trusted_certificates = trusted.to_vec();
        settings.request_timeout = super::http::request_timeout(conn.timeout_seconds);
        Ok(settings)
    }
}

/// One row as the service returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The primary id (`accountid`, …), when the row carries it.
    pub id: Option<String>,
    /// `@odata.etag` (`W/"12345"`), for [`DataverseClient::update`] with `If-Match`.
    pub etag: Option<String>,
    /// Every other property, lookups as `_<name>_value`, annotations included.
    pub fields: Map<String, Value>,
}

impl Row {
    /// Builds a row from a response object of `entity_set`.
    fn from_object(entity_set: &str, mut object: Map<String, Value>) -> Row {
        object.remove("@odata.context");
        let etag = match object.remove("@odata.etag") {
            Some(Value::String(tag)) => Some(tag),
            _ => None,
        };
        let id = primary_id_candidates(entity_set)
            .iter()
            .find_map(|column| object.get(column).and_then(Value::as_str))
            .map(str::to_owned);
        Row {
            id,
            etag,
            fields: object,
        }
    }

    /// A property.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A text property.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// The GUID a lookup column points to (`lookup("customerid")` reads
    /// `_customerid_value`).
    pub fn lookup(&self, column: &str) -> Option<&str> {
        self.str(&format!("_{column}_value"))
    }
}

/// The primary id column of an entity set: Dataverse names it `<logical name>id`, and
/// entity sets are the logical name pluralized (`opportunities`, `accounts`,
/// `customeraddresses`); activities use `activityid`. Candidates in order; the first one
/// the row has wins.
fn primary_id_candidates(entity_set: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(stem) = entity_set.strip_suffix("ies") {
        out.push(format!("{stem}yid"));
    }
    if let Some(stem) = entity_set.strip_suffix("es") {
        out.push(format!("{stem}id"));
    }
    if let Some(stem) = entity_set.strip_suffix('s') {
        out.push(format!("{stem}id"));
    }
    out.push(format!("{entity_set}id"));
    out.push("activityid".to_owned());
    out
}

/// A value in an alternate key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    /// A text column: quoted, `'` doubled.
    Text(String),
    /// A lookup column (the related row's GUID): unquoted.
    Guid(String),
    /// A whole-number column.
    Integer(i64),
}

impl From<&str> for KeyValue {
    fn from(value: &str) -> Self {
        KeyValue::Text(value.to_owned())
    }
}

impl From<String> for KeyValue {
    fn from(value: String) -> Self {
        KeyValue::Text(value)
    }
}

impl From<i64> for KeyValue {
    fn from(value: i64) -> Self {
        KeyValue::Integer(value)
    }
}

/// An alternate key (`opportunities(cosell_referralid='…')`), one or more columns.
#[derive(Debug, Clone, PartialEq)]
pub struct AlternateKey {
    parts: Vec<(String, KeyValue)>,
}

impl AlternateKey {
    /// A key of one column.
    pub fn new(column: impl Into<String>, value: impl Into<KeyValue>) -> AlternateKey {
        AlternateKey {
            parts: vec![(column.into(), value.into())],
        }
    }

    /// Adds a column (composite keys such as `cosell_opportunityid` + `cosell_pcsolutionid`).
    pub fn and(mut self, column: impl Into<String>, value: impl Into<KeyValue>) -> AlternateKey {
        self.parts.push((column.into(), value.into()));
        self
    }

    /// The text between the parentheses, percent-encoded for a URL path:
    /// `cosell_referralid='O''Brien%2F1'`.
    fn segment(&self) -> Result<String, ConnectorError> {
        if self.parts.is_empty() {
            return Err(invalid("an alternate key needs at least one column"));
        }
        let mut pairs = Vec::with_capacity(self.parts.len());
        for (column, value) in &self.parts {
            check_name("alternate key column", column)?;
            let value = match value {
                KeyValue::Text(text) => format!(
                    "'{}'",
                    utf8_percent_encode(&text.replace('\'', "''"), KEY_TEXT)
                ),
                KeyValue::Guid(guid) => check_guid(guid)?.to_owned(),
                KeyValue::Integer(n) => n.to_string(),
            };
            pairs.push(format!("{column}={value}"));
        }
        Ok(pairs.join(","))
    }
}

/// Characters escaped inside a quoted key value in a path: everything a URL parser or the
/// OData path splitter would read as structure (the `'` stays, doubled).
const KEY_TEXT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'(')
    .add(b')')
    .add(b'+')
    .add(b',')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The `@odata.bind` value for a lookup to row `id` of `entity_set`: `/accounts(<id>)`.
/// Use it as `"customerid_account@odata.bind": bind("accounts", id)`.
pub fn bind(entity_set: &str, id: &str) -> String {
    format!("/{entity_set}({id})")
}

/// An OData string literal for `$filter`: quoted, `'` doubled (`'O''Brien'`).
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An OData date-time literal for `$filter` (unquoted, UTC): any RFC 3339 / ISO 8601
/// date-time is accepted and normalized (`2024-01-01T01:00:00+01:00` →
/// `2024-01-01T00:00:00Z`). `None` when `value` is not a date-time, so arbitrary text can
/// never reach a filter unquoted.
pub fn odata_datetime(value: &str) -> Option<String> {
    DateTime::parse(value).map(|dt| dt.to_utc().utc_string())
}

/// What to read in [`DataverseClient::query`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryOptions {
    /// `$select` columns (empty: all; always name them in production, the service returns
    /// every column otherwise).
    pub select: Vec<String>,
    /// `$filter`, sent as given: build literals with [`odata_string`] and
    /// [`odata_datetime`].
    pub filter: Option<String>,
    /// `$orderby`, e.g. `modifiedon asc`.
    pub orderby: Option<String>,
    /// At most this many rows. The service ignores `$top` when paging, so the stream also
    /// stops after `top` rows itself.
    pub top: Option<u32>,
    /// Rows per page (`Prefer: odata.maxpagesize`); the client's page size when `None`.
    pub page_size: Option<u32>,
    /// `$expand`, e.g. `parentaccountid($select=name)`.
    pub expand: Option<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertOutcome {
    /// The row's id. A plain [`DataverseClient::upsert`] learns it only when the service's
    /// `OData-EntityId` names the GUID (it usually repeats the alternate key instead).
    pub id: Option<String>,
    /// `Some(true)` created, `Some(false)` updated; `None` when the service did not say
    /// (plain upsert: 204 either way).
    pub created: Option<bool>,
    /// The row after the write, with [`DataverseClient::upsert_returning`].
    pub row: Option<Row>,
}

/// One round of change tracking.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    /// Rows created or updated since the previous delta link (every row on the first
    /// call), each once, in the order the service reported them.
    pub upserted: Vec<Row>,
    /// Ids of rows deleted since the previous delta link.
    pub deleted: Vec<String>,
    /// Where the next round starts: pass it to the next [`DataverseClient::track_changes`].
    pub delta_link: String,
}

/// Why [`DataverseClient::track_changes`] gave no batch.
#[derive(Debug, thiserror::Error)]
pub enum ChangeTrackingError {
    /// The table does not have change tracking enabled: poll with
    /// [`DataverseClient::changes_since`] instead.
    #[error(
        "dataverse track_changes: change tracking is not enabled for {entity_set}; poll by modifiedon instead"
    )]
    NotEnabled {
        /// The entity set asked for.
        entity_set: String,
    },
    /// The service refused the delta link (expired after the organization's retention,
    /// or no longer valid): start over with `delta_link: None` (a full read).
    #[error(
        "dataverse track_changes: the delta link was refused ({message}); start over with a full read"
    )]
    DeltaLinkRejected {
        /// The service's message.
        message: String,
    },
    /// Any other failure.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}

/// `$n`: the URL of the row the change set request with `Content-ID: n` wrote, for an
/// `@odata.bind` value (`"parentcustomerid_account@odata.bind": batch_ref(1)`). Valid only
/// in a later request of the same change set.
pub fn batch_ref(content_id: u32) -> String {
    format!("${content_id}")
}

/// The row a change set request addresses.
#[derive(Debug, Clone, PartialEq)]
enum BatchTarget {
    /// `POST /<set>`.
    Set(String),
    /// `/<set>(<guid>)`.
    Id(String, String),
    /// `/<set>(<alternate key>)`.
    Key(String, AlternateKey),
    /// `$n`: the row an earlier request of the change set wrote.
    Reference(u32),
}

/// A write inside a `$batch` change set: built with [`BatchRequest::create`],
/// [`BatchRequest::upsert`], [`BatchRequest::update`], [`BatchRequest::update_reference`] or
/// [`BatchRequest::delete`], then adjusted with the builder methods. Names, ids and key
/// values are checked and escaped exactly as the single-row calls do, when the batch is
/// sent.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    method: reqwest::Method,
    operation: &'static str,
    target: BatchTarget,
    content_id: Option<u32>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    prefer: Option<String>,
    select: Vec<String>,
    body: Option<Map<String, Value>>,
}

impl BatchRequest {
    fn new(
        method: reqwest::Method,
        operation: &'static str,
        target: BatchTarget,
        body: Option<Map<String, Value>>,
    ) -> BatchRequest {
        BatchRequest {
            method,
            operation,
            target,
            content_id: None,
            if_match: None,
            if_none_match: None,
            prefer: None,
            select: Vec::new(),
            body,
        }
    }

    /// `POST /<entity_set>`: creates a row (like [`DataverseClient::create`]). Its answer
    /// carries the new id in `OData-EntityId`.
    pub fn create(entity_set: &str, fields: Map<String, Value>) -> BatchRequest {
        BatchRequest::new(
            reqwest::Method::POST,
            "create_row",
            BatchTarget::Set(entity_set.to_owned()),
            Some(fields),
        )
    }

    /// `PATCH /<entity_set>(<key>)` without `If-Match`: creates or updates the row with
    /// that alternate key (like [`DataverseClient::upsert`]). Add
    /// [`BatchRequest::if_none_match`]`("*")` for create-only, [`BatchRequest::if_match`]
    /// for update-only.
    pub fn upsert(
        entity_set: &str,
        key: &AlternateKey,
        fields: Map<String, Value>,
    ) -> BatchRequest {
        BatchRequest::new(
            reqwest::Method::PATCH,
            "upsert_row",
            BatchTarget::Key(entity_set.to_owned(), key.clone()),
            Some(fields),
        )
    }

    /// `PATCH /<entity_set>(<id>)` with `If-Match: *` (replace it with the row's eTag
    /// through [`BatchRequest::if_match`]): updates an existing row and never creates one,
    /// like [`DataverseClient::update`].
    pub fn update(entity_set: &str, id: &str, fields: Map<String, Value>) -> BatchRequest {
        let mut request = BatchRequest::new(
            reqwest::Method::PATCH,
            "update_row",
            BatchTarget::Id(entity_set.to_owned(), id.to_owned()),
            Some(fields),
        );
        request.if_match = Some("*".to_owned());
        request
    }

    /// `PATCH $n` with `If-Match: *`: updates the row an earlier request of the same change
    /// set wrote.
    pub fn update_reference(content_id: u32, fields: Map<String, Value>) -> BatchRequest {
        let mut request = BatchRequest::new(
            reqwest::Method::PATCH,
            "update_row",
            BatchTarget::Reference(content_id),
            Some(fields),
        );
        request.if_match = Some("*".to_owned());
        request
    }

    /// `DELETE /<entity_set>(<id>)` (like [`DataverseClient::delete`], but a missing row
    /// is a 404 failure that rolls the change set back).
    pub fn delete(entity_set: &str, id: &str) -> BatchRequest {
        BatchRequest::new(
            reqwest::Method::DELETE,
            "delete_row",
            BatchTarget::Id(entity_set.to_owned(), id.to_owned()),
            None,
        )
    }

    /// Sets the `Content-ID` that later requests of the change set use as `$n`
    /// ([`batch_ref`]). Requests without one get the smallest number no other request of
    /// the batch uses; ids must be unique within the batch.
    pub fn content_id(mut self, content_id: u32) -> BatchRequest {
        self.content_id = Some(content_id);
        self
    }

    /// `If-Match`: the row's eTag (412 when it changed) or `*` (404 when it is missing).
    pub fn if_match(mut self, tag: &str) -> BatchRequest {
        self.if_match = Some(tag.to_owned());
        self
    }

    /// `If-None-Match: *`: create only (412 when the row exists).
    pub fn if_none_match(mut self, tag: &str) -> BatchRequest {
        self.if_none_match = Some(tag.to_owned());
        self
    }

    /// `Prefer: return=representation` with `$select` columns (all when empty): the answer
    /// is the row as stored (201 created, 200 updated) in [`BatchResponse::row`].
    pub fn return_representation(mut self, select: &[&str]) -> BatchRequest {
        self.prefer = Some("return=representation".to_owned());
        self.select = select.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The `Content-ID` set with [`BatchRequest::content_id`], if any.
    pub fn get_content_id(&self) -> Option<u32> {
        self.content_id
    }
}

/// One top-level part of a `$batch`.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchPart {
    /// A query (a `GET` outside any change set), built exactly like
    /// [`DataverseClient::query`]'s first page. Its answer holds that page's rows.
    Query {
        /// The entity set.
        entity_set: String,
        /// What to read.
        options: QueryOptions,
    },
    /// Writes applied atomically: all or none.
    ChangeSet(Vec<BatchRequest>),
}

impl BatchPart {
    /// A [`BatchPart::Query`].
    pub fn query(entity_set: &str, options: QueryOptions) -> BatchPart {
        BatchPart::Query {
            entity_set: entity_set.to_owned(),
            options,
        }
    }
}

/// How the service runs a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOptions {
    /// `Prefer: odata.continue-on-error`: run every part even after one fails (each
    /// change set stays atomic). Without it the service stops at the first failure and
    /// the requests after it are answered [`StatusCode::FAILED_DEPENDENCY`] here.
    pub continue_on_error: bool,
}

/// The answer to one inner request of a `$batch`, in the order the requests were given
/// (each query, then each request of each change set).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResponse {
    /// The inner response's status. `424 Failed Dependency` when the service did not
    /// answer this request (its change set was rolled back because another of its
    /// requests failed, or the batch stopped at an earlier failure); this is how OData
    /// 4.01 JSON batches report such requests, set by the client because multipart
    /// answers simply leave them out. See [`BatchResponse::answered`].
    pub status: StatusCode,
    /// Whether the service answered this request itself.
    pub answered: bool,
    /// The request's `Content-ID` (change set requests).
    pub content_id: Option<u32>,
    /// The row's GUID: from `OData-EntityId` (creates, updates by id), else from the
    /// returned row. An upsert by alternate key answers with the key's URL, so its id is
    /// known only with [`BatchRequest::return_representation`].
    pub entity_id: Option<String>,
    /// `OData-EntityId` as sent.
    pub entity_url: Option<String>,
    /// The inner response's headers.
    pub headers: Vec<(String, String)>,
    /// The body as JSON, when there is one (an error body, a returned row, a page).
    pub body: Option<Value>,
    /// The row returned with [`BatchRequest::return_representation`].
    pub row: Option<Row>,
    /// A query's rows (its first page).
    pub rows: Vec<Row>,
    /// A query's `@odata.nextLink`, when more rows remain.
    pub next_link: Option<String>,
    operation: &'static str,
}

impl BatchResponse {
    /// The single-call operation this request stands for (`create_row`, `upsert_row`,
    /// `query_rows`, …), as errors and metrics name it.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// A header of the inner response (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request succeeded (2xx).
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error the same request sent alone would have produced: 404 →
    /// [`ConnectorError::NotFound`], 412 (stale eTag, duplicate alternate key,
    /// `If-None-Match: *` on an existing row) → [`ConnectorError::PreconditionFailed`],
    /// 429 and 5xx → [`ConnectorError::RetriesExhausted`] (transient: try again later;
    /// inner requests are never retried one by one), anything else →
    /// [`ConnectorError::Status`] with the service's code and message. `None` on success.
    pub fn error(&self) -> Option<ConnectorError> {
        if self.status.is_success() {
            return None;
        }
        let (code, message) = match &self.body {
            Some(body) => super::http::service_error(body.to_string().as_bytes()),
            None => (None, String::new()),
        };
        let operation = self.operation;
        Some(match self.status.as_u16() {
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
            status @ (429 | 500..=599) => ConnectorError::RetriesExhausted {
                api: API,
                operation,
                attempts: 1,
                last: format!("HTTP {status} inside a $batch: {message}"),
            },
            status => ConnectorError::Status {
                api: API,
                operation,
                status,
                code,
                message,
            },
        })
    }

    /// `Ok(self)` on success, else [`BatchResponse::error`].
    pub fn into_result(self) -> Result<BatchResponse, ConnectorError> {
        match self.error() {
            Some(error) => Err(error),
            None => Ok(self),
        }
    }

    fn unanswered(operation: &'static str, content_id: Option<u32>, why: String) -> BatchResponse {
        BatchResponse {
            status: StatusCode::FAILED_DEPENDENCY,
            answered: false,
            content_id,
            entity_id: None,
            entity_url: None,
            headers: Vec::new(),
            body: Some(serde_json::json!({ "error": { "code": "", "message": why } })),
            row: None,
            rows: Vec::new(),
            next_link: None,
            operation,
        }
    }
}

/// The first failure among batch answers, as the single call would have reported it:
/// requests the service answered come first (a rolled-back request's 424 only echoes the
/// failure that caused it).
pub fn batch_failure(responses: &[BatchResponse]) -> Option<ConnectorError> {
    responses
        .iter()
        .filter(|r| r.answered)
        .find_map(BatchResponse::error)
        .or_else(|| responses.iter().find_map(BatchResponse::error))
}

#[derive(Debug)]
struct Inner {
    upstream: Upstream,
    page_size: u32,
    /// ISO code (upper case) → transactioncurrencyid. Only hits are kept, so a currency an
    /// admin enables later is found without a restart.
    currencies: Mutex<HashMap<String, String>>,
}

/// A Dataverse Web API client. Cheap to clone; clones share the token, budget, metrics
/// and the currency cache.
#[derive(Debug, Clone)]
pub struct DataverseClient {
    inner: Arc<Inner>,
}

fn invalid(message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config {
        message: format!("dataverse: {}", message.into()),
    }
}

/// Entity set and column names go into URLs unescaped, so they must be plain identifiers.
fn check_name<'a>(what: &str, name: &'a str) -> Result<&'a str, ConnectorError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err(invalid(format!(
            "{what} `{name}` is not a valid name (letters, digits and _ only)"
        )))
    }
}

fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn check_guid(id: &str) -> Result<&str, ConnectorError> {
    if is_guid(id) {
        Ok(id)
    } else {
        Err(invalid(format!("`{id}` is not a row id (a GUID)")))
    }
}

/// The GUID at the end of an `OData-EntityId` (`…/accounts(<guid>)`); `None` when the URL
/// names an alternate key instead.
fn id_from_entity_url(url: &str) -> Option<String> {
    let inner = url.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    let id = &inner[open + 1..];
    is_guid(id).then(|| id.to_ascii_lowercase())
}

/// Headers every Dataverse request carries (Accept comes from the upstream).
fn odata(request: Request) -> Request {
    request
        .header("odata-maxversion", "4.0")
        .header("odata-version", "4.0")
}

/// A read: also `If-None-Match: null`, so no intermediary answers from a cache.
fn read(request: Request) -> Request {
    odata(request).header("if-none-match", "null")
}

fn decode_error(operation: &'static str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Decode {
        api: API,
        operation,
        message: message.into(),
    }
}

/// A page of a collection response: its rows (raw objects) and links.
struct Page {
    items: Vec<Map<String, Value>>,
    next_link: Option<String>,
    delta_link: Option<String>,
}

fn parse_page(reply: &Reply, operation: &'static str) -> Result<Page, ConnectorError> {
    let body: Value = reply.json()?;
    let Some(items) = body.get("value").and_then(Value::as_array) else {
        return Err(decode_error(
            operation,
            "the collection has no `value` array",
        ));
    };
    let mut objects = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Object(object) => objects.push(object.clone()),
            _ => {
                return Err(decode_error(
                    operation,
                    "a collection item is not an object",
                ));
            }
        }
    }
    let link = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    };
    Ok(Page {
        items: objects,
        next_link: link("@odata.nextLink"),
        delta_link: link("@odata.deltaLink"),
    })
}

/// Where a query stream stands.
enum Cursor {
    /// The first page, not yet asked for.
    First(Request),
    /// A next link to follow.
    Next(String),
    /// No more pages (or an error was reported).
    Done,
}

struct QueryState {
    client: DataverseClient,
    entity_set: String,
    prefer: Option<String>,
    buffer: VecDeque<Row>,
    cursor: Cursor,
}

impl DataverseClient {
    /// A client for `settings`: checks the URLs (https unless allowed), builds the HTTP
    /// client and the Entra ID client-credentials token source for `<base_url>/.default`.
    /// No request is made until the first call.
    pub fn new(settings: DataverseSettings) -> Result<DataverseClient, ConnectorError> {
        let env_url = settings.base_url.trim().trim_end_matches('/').to_owned();
        if env_url.to_ascii_lowercase().contains("/api/data") {
            return Err(invalid(format!(
                "base URL `{env_url}`: give the environment URL (https://<org>.crm.dynamics.com) without /api/data"
            )));
        }
        require_https("dataverse base URL", &env_url, settings.allow_insecure_http)?;
        let authority = settings.authority.trim().trim_end_matches('/').to_owned();
        require_https(
            "dataverse token authority",
            &authority,
            settings.allow_insecure_http,
        )?;
        let version = settings.api_version.trim();
        let version_ok = version.strip_prefix('v').is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
        });
        if !version_ok {
            return Err(invalid(format!(
                "api_version `{version}` is not a Web API version such as v9.2"
            )));
        }
        if settings.tenant_id.trim().is_empty() || settings.client_id.trim().is_empty() {
            return Err(invalid("the tenant id and the client id must not be empty"));
        }
        let mut options = UpstreamOptions::new(API, format!("{env_url}/api/data/{version}"));
        options.allow_insecure_http = settings.allow_insecure_http;
        options.budget = settings.budget.clone();
        options.extra_root_certificates = settings.trusted_certificates.clone();
        options.request_timeout = settings.request_timeout;
        let tokens = TokenSource::entra_client_credentials(
            API,
            &authority,
            settings.tenant_id.trim(),
            settings.client_id.trim(),
            settings.client_secret.clone(),
            &format!("{env_url}/.default"),
            http_client(&options)?,
        );
        let upstream = Upstream::new(options, Some(tokens))?;
        Ok(DataverseClient {
            inner: Arc::new(Inner {
                upstream,
                page_size: settings.page_size.clamp(1, MAX_PAGE_SIZE),
                currencies: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A client from the configuration's `connections.crm` (see
    /// [`DataverseSettings::from_config`]).
    pub fn from_config(
        conn: &CrmConnection,
        env: SecretEnv<'_>,
        trusted: &[String],
    ) -> Result<DataverseClient, ConnectorError> {
        DataverseClient::new(DataverseSettings::from_config(conn, env, trusted)?)
    }

    /// The shared upstream (budget, metrics).
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// What this client's calls did (requests, retries, token refreshes).
    pub fn stats(&self) -> CallStats {
        self.inner.upstream.stats()
    }

    /// Creates a row; returns its id from the `OData-EntityId` header (204, no body).
    /// Not retried after a transport failure that may have reached the service, so a row
    /// is never created twice; put the id in `fields` (or use [`DataverseClient::upsert`])
    /// when a retry must be safe. A value of an alternate key that another row already has
    /// is refused with 412 (DuplicateRecord), which the core reports as
    /// [`ConnectorError::PreconditionFailed`].
    pub async fn create(
        &self,
        entity_set: &str,
        fields: &Map<String, Value>,
    ) -> Result<String, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let request = odata(Request::post("create_row", format!("/{set}")).json(fields));
        let reply = self.inner.upstream.send(request).await?;
        reply
            .header("odata-entityid")
            .and_then(id_from_entity_url)
            .ok_or_else(|| {
                decode_error(
                    "create_row",
                    "the create answer has no OData-EntityId header naming the new row",
                )
            })
    }

    /// Creates a row and returns it as stored (`Prefer: return=representation`, 201), with
    /// `select` columns (all when empty).
    pub async fn create_returning(
        &self,
        entity_set: &str,
        fields: &Map<String, Value>,
        select: &[&str],
    ) -> Result<Row, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let mut request = odata(Request::post("create_row", format!("/{set}")).json(fields))
            .header("prefer", "return=representation");
        request = with_select(request, select)?;
        let reply = self.inner.upstream.send(request).await?;
        row_from_reply(&reply, set, "create_row")
    }

    /// Reads one row by id; `None` when it does not exist (404).
    pub async fn retrieve(
        &self,
        entity_set: &str,
        id: &str,
        select: &[&str],
    ) -> Result<Option<Row>, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let id = check_guid(id)?;
        self.retrieve_path(set, format!("/{set}({id})"), select)
            .await
    }

    /// Reads one row by alternate key; `None` when no row has it.
    pub async fn retrieve_by_key(
        &self,
        entity_set: &str,
        key: &AlternateKey,
        select: &[&str],
    ) -> Result<Option<Row>, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let path = format!("/{set}({})", key.segment()?);
        self.retrieve_path(set, path, select).await
    }

    async fn retrieve_path(
        &self,
        set: &str,
        path: String,
        select: &[&str],
    ) -> Result<Option<Row>, ConnectorError> {
        let request = with_select(read(Request::get("retrieve_row", path)), select)?;
        match self.inner.upstream.send(request).await {
            Ok(reply) => row_from_reply(&reply, set, "retrieve_row").map(Some),
            Err(error) if is_missing_row(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Updates columns of an existing row. With `if_match` (the row's eTag) the service
    /// answers 412 → [`ConnectorError::PreconditionFailed`] when the row changed since it
    /// was read; without it `If-Match: *` is sent, because a PATCH without any `If-Match`
    /// is an upsert and would create a row that was deleted meanwhile (404 →
    /// [`ConnectorError::NotFound`] instead). Conditional, so safe to retry.
    pub async fn update(
        &self,
        entity_set: &str,
        id: &str,
        fields: &Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let id = check_guid(id)?;
        let request = odata(Request::patch("update_row", format!("/{set}({id})")).json(fields))
            .header("if-match", if_match.unwrap_or("*"))
            .idempotent(true);
        self.inner.upstream.send(request).await.map(drop)
    }

    /// Creates or updates the row with alternate key `key` (PATCH without `If-Match`).
    /// The service answers 204 either way; see [`DataverseClient::upsert_returning`] to
    /// learn which happened. Applying the same upsert twice leaves the same row, so it is
    /// retried after transport failures. Keep the key's columns out of `fields` (the
    /// service takes them from the URL).
    pub async fn upsert(
        &self,
        entity_set: &str,
        key: &AlternateKey,
        fields: &Map<String, Value>,
    ) -> Result<UpsertOutcome, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let path = format!("/{set}({})", key.segment()?);
        let request = odata(Request::patch("upsert_row", path).json(fields)).idempotent(true);
        let reply = self.inner.upstream.send(request).await?;
        Ok(UpsertOutcome {
            id: reply.header("odata-entityid").and_then(id_from_entity_url),
            created: None,
            row: None,
        })
    }

    /// [`DataverseClient::upsert`] with `Prefer: return=representation`: 201 created or
    /// 200 updated, and the row as stored with `select` columns (all when empty).
    pub async fn upsert_returning(
        &self,
        entity_set: &str,
        key: &AlternateKey,
        fields: &Map<String, Value>,
        select: &[&str],
    ) -> Result<UpsertOutcome, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let path = format!("/{set}({})", key.segment()?);
        let request = odata(Request::patch("upsert_row", path).json(fields))
            .header("prefer", "return=representation")
            .idempotent(true);
        let request = with_select(request, select)?;
        let reply = self.inner.upstream.send(request).await?;
        let row = row_from_reply(&reply, set, "upsert_row")?;
        Ok(UpsertOutcome {
            id: row.id.clone(),
            created: Some(reply.status == StatusCode::CREATED),
            row: Some(row),
        })
    }

    /// Deletes a row (`If-Match` with its eTag when given, 412 when it changed). Returns
    /// `false` when it was already gone.
    pub async fn delete(
        &self,
        entity_set: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<bool, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let id = check_guid(id)?;
        let mut request = odata(Request::delete("delete_row", format!("/{set}({id})")));
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        match self.inner.upstream.send(request).await {
            Ok(_) => Ok(true),
            Err(error) if is_missing_row(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Rows of `entity_set` matching `options`, page by page as the caller consumes them:
    /// each `@odata.nextLink` is followed verbatim (it holds the paging cookie) with the same
    /// `Prefer: odata.maxpagesize`. A failure ends the stream after yielding the error.
    pub fn query(
        &self,
        entity_set: &str,
        options: QueryOptions,
    ) -> impl Stream<Item = Result<Row, ConnectorError>> + Send + 'static {
        let first = self.first_query_request(entity_set, &options);
        let top = options.top.map(|n| n as usize);
        let (cursor, prefer, failure) = match first {
            Ok((request, prefer)) => (Cursor::First(request), prefer, None),
            Err(error) => (Cursor::Done, None, Some(error)),
        };
        let state = QueryState {
            client: self.clone(),
            entity_set: entity_set.to_owned(),
            prefer,
            buffer: VecDeque::new(),
            cursor,
        };
        let pages = futures_util::stream::unfold(state, next_row);
        futures_util::stream::iter(failure.map(Err))
            .chain(pages)
            .take(top.unwrap_or(usize::MAX))
    }

    fn first_query_request(
        &self,
        entity_set: &str,
        options: &QueryOptions,
    ) -> Result<(Request, Option<String>), ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let mut request = read(Request::get("query_rows", format!("/{set}")));
        let select: Vec<&str> = options.select.iter().map(String::as_str).collect();
        request = with_select(request, &select)?;
        if let Some(filter) = options.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            request = request.query("$filter", filter);
        }
        if let Some(orderby) = options.orderby.as_deref().filter(|o| !o.trim().is_empty()) {
            request = request.query("$orderby", orderby);
        }
        if let Some(expand) = options.expand.as_deref().filter(|e| !e.trim().is_empty()) {
            request = request.query("$expand", expand);
        }
        if let Some(top) = options.top {
            request = request.query("$top", top.to_string());
        }
        // With $top alone the service returns one result of at most `top` rows; paging
        // would make it ignore $top, so only page when asked or when there is no $top.
        let page_size = match (options.page_size, options.top) {
            (Some(size), _) => Some(size),
            (None, Some(_)) => None,
            (None, None) => Some(self.inner.page_size),
        };
        let prefer = page_size.map(|n| format!("odata.maxpagesize={}", n.clamp(1, MAX_PAGE_SIZE)));
        if let Some(prefer) = &prefer {
            request = request.header("prefer", prefer);
        }
        Ok((request, prefer))
    }

    /// Rows of `entity_set` modified after `since` (`modifiedon gt <since>`), oldest
    /// first, with `select` columns (`modifiedon` is added so the caller can move its
    /// watermark). `modifiedon` has whole seconds: rows changed within the second of the
    /// last poll but after it are missed by `gt`, so keep the watermark a little behind the
    /// newest `modifiedon` seen and drop rows whose eTag you already synced.
    pub fn changes_since(
        &self,
        entity_set: &str,
        since: &str,
        select: &[&str],
    ) -> impl Stream<Item = Result<Row, ConnectorError>> + Send + 'static {
        let literal = odata_datetime(since);
        let mut columns: Vec<String> = select.iter().map(|s| (*s).to_owned()).collect();
        if !columns.is_empty() && !columns.iter().any(|c| c == "modifiedon") {
            columns.push("modifiedon".to_owned());
        }
        let options = QueryOptions {
            select: columns,
            filter: literal.as_ref().map(|at| format!("modifiedon gt {at}")),
            orderby: Some("modifiedon asc".to_owned()),
            ..QueryOptions::default()
        };
        let failure = literal.is_none().then(|| {
            invalid(format!(
                "changes_since: `{since}` is not an ISO 8601 date-time"
            ))
        });
        let query = failure.is_none().then(|| self.query(entity_set, options));
        futures_util::stream::iter(failure.map(Err))
            .chain(futures_util::stream::iter(query).flatten())
    }

    /// The `transactioncurrencyid` of the currency with ISO code `iso_code` (`EUR`), or
    /// `None` when the organization has not enabled it. Found ids are cached for the
    /// client's lifetime (currency ids never change); misses are asked again next time.
    pub async fn currency_id(&self, iso_code: &str) -> Result<Option<String>, ConnectorError> {
        let code = iso_code.trim().to_ascii_uppercase();
        if code.len() != 3 || !code.chars().all(|c| c.is_ascii_alphabetic()) {
            return Ok(None);
        }
        if let Some(id) = lock(&self.inner.currencies).get(&code) {
            return Ok(Some(id.clone()));
        }
        let request = read(Request::get("currency_by_iso", "/transactioncurrencies"))
            .query("$select", "transactioncurrencyid,isocurrencycode")
            .query(
                "$filter",
                format!("isocurrencycode eq {}", odata_string(&code)),
            );
        let reply = self.inner.upstream.send(request).await?;
        let page = parse_page(&reply, "currency_by_iso")?;
        let id = page
            .items
            .iter()
            .filter(|row| {
                row.get("isocurrencycode")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.eq_ignore_ascii_case(&code))
            })
            .find_map(|row| row.get("transactioncurrencyid").and_then(Value::as_str))
            .map(str::to_owned);
        if let Some(id) = &id {
            lock(&self.inner.currencies).insert(code, id.clone());
        }
        Ok(id)
    }

    /// Whether the table behind `entity_set` has change tracking enabled
    /// (`EntityDefinitions` `ChangeTrackingEnabled`).
    pub async fn change_tracking_enabled(&self, entity_set: &str) -> Result<bool, ConnectorError> {
        let set = check_name("entity set", entity_set)?;
        let request = read(Request::get("entity_definition", "/EntityDefinitions"))
            .query("$select", "EntitySetName,ChangeTrackingEnabled")
            .query("$filter", format!("EntitySetName eq {}", odata_string(set)));
        let reply = self.inner.upstream.send(request).await?;
        let page = parse_page(&reply, "entity_definition")?;
        let Some(definition) = page.items.first() else {
            return Err(ConnectorError::NotFound {
                api: API,
                operation: "entity_definition",
                code: None,
                message: format!("no table has the entity set {set}"),
            });
        };
        Ok(definition
            .get("ChangeTrackingEnabled")
            .and_then(Value::as_bool)
            .unwrap_or(false))
    }

    /// One round of change tracking (crm-apis.md A10). With `delta_link: None`, every row
    /// (the initial load) and a delta link; with the delta link of the previous round, the
    /// rows created or updated and the ids deleted since, and the next delta link. Pages
    /// are followed to the end before returning, so the batch is complete or an error.
    ///
    /// `select` names the columns (change tracking allows no `$filter`, `$orderby`,
    /// `$expand` or `$top`); a delta link keeps the columns of the round that made it.
    /// [`ChangeTrackingError::NotEnabled`] says to poll with
    /// [`DataverseClient::changes_since`] instead; [`ChangeTrackingError::DeltaLinkRejected`]
    /// says to start over with `None`.
    pub async fn track_changes(
        &self,
        entity_set: &str,
        select: &[&str],
        delta_link: Option<&str>,
    ) -> Result<ChangeBatch, ChangeTrackingError> {
        let set = check_name("entity set", entity_set)?;
        let prefer = format!(
            "odata.track-changes,odata.maxpagesize={}",
            self.inner.page_size
        );
        let first = match delta_link {
            Some(link) => odata(Request::follow("track_changes", link)),
            None => with_select(
                odata(Request::get("track_changes", format!("/{set}"))),
                select,
            )?,
        }
        .header("prefer", &prefer);
        let reply = match self.inner.upstream.send(first).await {
            Ok(reply) => reply,
            Err(ConnectorError::Status {
                status: 400,
                message,
                code,
                ..
            }) => {
                if delta_link.is_some() {
                    return Err(ChangeTrackingError::DeltaLinkRejected { message });
                }
                // A 400 on the first round is either "not enabled" (whose wording is not
                // documented) or a bad column: the table's metadata tells which.
                if !self.change_tracking_enabled(set).await? {
                    return Err(ChangeTrackingError::NotEnabled {
                        entity_set: set.to_owned(),
                    });
                }
                return Err(ChangeTrackingError::Connector(ConnectorError::Status {
                    api: API,
                    operation: "track_changes",
                    status: 400,
                    code,
                    message,
                }));
            }
            Err(error) => return Err(error.into()),
        };
        let applied = reply
            .header("preference-applied")
            .is_some_and(|p| p.to_ascii_lowercase().contains("odata.track-changes"));

        let mut upserted: Vec<Option<Row>> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut deleted: Vec<String> = Vec::new();
        let mut page = parse_page(&reply, "track_changes")?;
        loop {
            for item in std::mem::take(&mut page.items) {
                match deleted_id(&item) {
                    Some(id) => {
                        if let Some(index) = position.remove(&id) {
                            upserted[index] = None;
                        }
                        if !deleted.contains(&id) {
                            deleted.push(id);
                        }
                    }
                    None => {
                        let row = Row::from_object(set, item);
                        match row.id.clone() {
                            Some(id) => {
                                deleted.retain(|d| *d != id);
                                // A row changed while paging may come twice: keep the newest.
                                if let Some(index) = position.get(&id) {
                                    upserted[*index] = None;
                                }
                                position.insert(id, upserted.len());
                                upserted.push(Some(row));
                            }
                            None => upserted.push(Some(row)),
                        }
                    }
                }
            }
            if let Some(delta_link) = page.delta_link.take() {
                return Ok(ChangeBatch {
                    upserted: upserted.into_iter().flatten().collect(),
                    deleted,
                    delta_link,
                });
            }
            let Some(next) = page.next_link.take() else {
                if !applied && delta_link.is_none() {
                    return Err(ChangeTrackingError::NotEnabled {
                        entity_set: set.to_owned(),
                    });
                }
                return Err(decode_error(
                    "track_changes",
                    "the last page has neither @odata.nextLink nor @odata.deltaLink",
                )
                .into());
            };
            let request = odata(Request::follow("track_changes", next)).header("prefer", &prefer);
            let reply = self.inner.upstream.send(request).await?;
            page = parse_page(&reply, "track_changes")?;
        }
    }
    /// Sends `parts` as one `$batch` call (one HTTP request, one unit of the budget): each
    /// [`BatchPart::Query`] as a `GET`, each [`BatchPart::ChangeSet`] as an atomic change
    /// set. Returns one [`BatchResponse`] per inner request, in order; a failed inner
    /// request is an answer, not an `Err` (see [`BatchResponse::error`] and
    /// [`batch_failure`]). `Err` means the batch as a whole failed: refused before it ran
    /// (auth, throttling after retries, a malformed batch) or unreadable.
    ///
    /// Without `Prefer: odata.continue-on-error` the service stops at the first failing
    /// request or change set; see [`DataverseClient::batch_with`]. A batch that creates a
    /// row is not retried after a transport failure that may have reached the service
    /// (like [`DataverseClient::create`]), nor is one that deletes.
    ///
    /// Limits: at most [`MAX_BATCH_REQUESTS`] requests. Dataverse counts the batch as one
    /// request toward the service protection request count ("will avoid the number of
    /// requests limit", api-limits.md), but the inner requests' execution time counts in
    /// full toward the execution-time limit, and each inner operation is believed to count
    /// toward the Power Platform request entitlement (UNCERTAIN: secondary sources only).
    pub async fn batch(&self, parts: Vec<BatchPart>) -> Result<Vec<BatchResponse>, ConnectorError> {
        self.batch_with(parts, BatchOptions::default()).await
    }

    /// [`DataverseClient::batch`] with [`BatchOptions`].
    pub async fn batch_with(
        &self,
        parts: Vec<BatchPart>,
        options: BatchOptions,
    ) -> Result<Vec<BatchResponse>, ConnectorError> {
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let total: usize = parts
            .iter()
            .map(|part| match part {
                BatchPart::Query { .. } => 1,
                BatchPart::ChangeSet(requests) => requests.len(),
            })
            .sum();
        if total > MAX_BATCH_REQUESTS {
            return Err(invalid(format!(
                "a $batch holds at most {MAX_BATCH_REQUESTS} requests, not {total}"
            )));
        }
        // Content-IDs: explicit ones must be unique; the others get the smallest free
        // numbers, so every change set request can be matched to its answer.
        let mut used = std::collections::HashSet::new();
        for part in &parts {
            if let BatchPart::ChangeSet(requests) = part {
                for id in requests.iter().filter_map(|r| r.content_id) {
                    if !used.insert(id) {
                        return Err(invalid(format!(
                            "Content-ID {id} is used twice in one $batch"
                        )));
                    }
                }
            }
        }
        let mut next_free = 1u32;
        let mut take_free = || {
            while used.contains(&next_free) {
                next_free += 1;
            }
            used.insert(next_free);
            next_free
        };

        let base = self.inner.upstream.base_url().await?;
        let mut written = Vec::with_capacity(parts.len());
        let mut expected = Vec::with_capacity(parts.len());
        let mut idempotent = true;
        for part in &parts {
            match part {
                BatchPart::Query {
                    entity_set,
                    options,
                } => {
                    let (request, _) = self.first_query_request(entity_set, options)?;
                    let mut headers = vec![("Accept".to_owned(), "application/json".to_owned())];
                    headers.extend(header_pairs(&request));
                    let message = multipart::HttpMessage {
                        start_line: format!("GET {base}{} HTTP/1.1", request.path_and_query()),
                        headers,
                        body: Vec::new(),
                    };
                    written.push(http_part(None, &message));
                    expected.push(ExpectedPart::Query(Expected {
                        operation: "query_rows",
                        entity_set: Some(entity_set.clone()),
                        content_id: None,
                        query: true,
                    }));
                }
                BatchPart::ChangeSet(requests) => {
                    if requests.is_empty() {
                        return Err(invalid("a $batch change set needs at least one request"));
                    }
                    let mut members = Vec::with_capacity(requests.len());
                    let mut sets: HashMap<u32, Option<String>> = HashMap::new();
                    let mut expected_members = Vec::with_capacity(requests.len());
                    for request in requests {
                        let content_id = request.content_id.unwrap_or_else(&mut take_free);
                        // A repeated create duplicates the row; a repeated delete fails
                        // with 404 and rolls back the repeat, reporting an error for work
                        // that was done. Upserts and conditional updates are safe to repeat.
                        if matches!(
                            request.method,
                            reqwest::Method::POST | reqwest::Method::DELETE
                        ) {
                            idempotent = false;
                        }
                        let (path, entity_set) = match &request.target {
                            BatchTarget::Set(set) => {
                                let set = check_name("entity set", set)?;
                                (format!("/{set}"), Some(set.to_owned()))
                            }
                            BatchTarget::Id(set, id) => {
                                let set = check_name("entity set", set)?;
                                (format!("/{set}({})", check_guid(id)?), Some(set.to_owned()))
                            }
                            BatchTarget::Key(set, key) => {
                                let set = check_name("entity set", set)?;
                                (format!("/{set}({})", key.segment()?), Some(set.to_owned()))
                            }
                            BatchTarget::Reference(n) => {
                                // Only rows written earlier in the same change set can be named.
                                let Some(set) = sets.get(n) else {
                                    return Err(invalid(format!(
                                        "${n} names no earlier request of the same change set"
                                    )));
                                };
                                (format!("${n}"), set.clone())
                            }
                        };
                        let select: Vec<&str> = request.select.iter().map(String::as_str).collect();
                        let inner = with_select(
                            Request::new(request.operation, request.method.clone(), path),
                            &select,
                        )?;
                        let url = match &request.target {
                            BatchTarget::Reference(_) => inner.path_and_query(),
                            _ => format!("{base}{}", inner.path_and_query()),
                        };
                        let mut headers = Vec::new();
                        let mut body = Vec::new();
                        if let Some(fields) = &request.body {
                            headers
                                .push(("Content-Type".to_owned(), "application/json".to_owned()));
                            body = serde_json::to_vec(fields).unwrap_or_default();
                        }
                        for (name, value) in [
                            ("If-Match", &request.if_match),
                            ("If-None-Match", &request.if_none_match),
                            ("Prefer", &request.prefer),
                        ] {
                            if let Some(value) = value {
                                check_header_value(value)?;
                                headers.push((name.to_owned(), value.clone()));
                            }
                        }
                        let message = multipart::HttpMessage {
                            start_line: format!("{} {url} HTTP/1.1", request.method),
                            headers,
                            body,
                        };
                        members.push(http_part(Some(content_id), &message));
                        sets.insert(content_id, entity_set.clone());
                        expected_members.push(Expected {
                            operation: request.operation,
                            entity_set,
                            content_id: Some(content_id),
                            query: false,
                        });
                    }
                    let boundary = fresh_boundary("changeset", &members);
                    written.push(multipart::Part {
                        headers: vec![(
                            "Content-Type".to_owned(),
                            format!("multipart/mixed; boundary={boundary}"),
                        )],
                        body: multipart::write(&boundary, &members),
                    });
                    expected.push(ExpectedPart::ChangeSet(expected_members));
                }
            }
        }
        let boundary = fresh_boundary("batch", &written);
        let mut request = odata(Request::post("batch", "/$batch"))
            .bytes(
                &format!("multipart/mixed; boundary={boundary}"),
                multipart::write(&boundary, &written),
            )
            .idempotent(idempotent)
            .multipart_answers();
        if options.continue_on_error {
            request = request.header("prefer", "odata.continue-on-error");
        }
        let reply = self.inner.upstream.send(request).await?;
        read_batch_reply(&reply, expected)
    }
}

/// Most requests one `$batch` may hold (crm-apis.md A6, Microsoft's batch page).
pub const MAX_BATCH_REQUESTS: usize = 1000;

/// What the client expects back for one request it wrote.
struct Expected {
    operation: &'static str,
    entity_set: Option<String>,
    content_id: Option<u32>,
    query: bool,
}

enum ExpectedPart {
    Query(Expected),
    ChangeSet(Vec<Expected>),
}

/// The headers of a built request as text pairs.
fn header_pairs(request: &Request) -> Vec<(String, String)> {
    request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// Header values written into a batch body must not break its lines.
fn check_header_value(value: &str) -> Result<(), ConnectorError> {
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(
            "a $batch header value contains a control character",
        ));
    }
    Ok(())
}

fn http_part(content_id: Option<u32>, message: &multipart::HttpMessage) -> multipart::Part {
    let mut headers = vec![
        ("Content-Type".to_owned(), "application/http".to_owned()),
        ("Content-Transfer-Encoding".to_owned(), "binary".to_owned()),
    ];
    if let Some(id) = content_id {
        headers.push(("Content-ID".to_owned(), id.to_string()));
    }
    multipart::Part {
        headers,
        body: message.to_bytes(),
    }
}

/// `<prefix>_<unique>`: unique per process and absent from every part (a boundary must
/// not occur in the content it separates).
fn fresh_boundary(prefix: &str, parts: &[multipart::Part]) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let candidate = format!("{prefix}_{nanos:x}-{n:x}");
        let needle = candidate.as_bytes();
        let clash = parts.iter().any(|part| {
            part.body.windows(needle.len()).any(|w| w == needle)
                || part.headers.iter().any(|(_, v)| v.contains(&candidate))
        });
        if !clash {
            return candidate;
        }
    }
}

fn read_batch_reply(
    reply: &Reply,
    expected: Vec<ExpectedPart>,
) -> Result<Vec<BatchResponse>, ConnectorError> {
    let content_type = reply.header("content-type").unwrap_or("");
    let boundary = multipart::boundary(content_type).ok_or_else(|| {
        decode_error(
            "batch",
            format!("the $batch answer is not multipart/mixed but '{content_type}'"),
        )
    })?;
    let parts = multipart::parse(&reply.body, &boundary).map_err(|m| decode_error("batch", m))?;
    let mut answers = parts.into_iter();
    let mut out = Vec::new();
    let stopped = "not run: the batch stopped at an earlier failure";
    for part in expected {
        match part {
            ExpectedPart::Query(expected) => match answers.next() {
                None => out.push(BatchResponse::unanswered(
                    expected.operation,
                    None,
                    stopped.to_owned(),
                )),
                Some(answer) if answer.media_type().as_deref() == Some("application/http") => {
                    out.push(read_answer(&answer, &expected)?);
                }
                Some(_) => {
                    return Err(decode_error(
                        "batch",
                        "a query was answered with a change set response",
                    ));
                }
            },
            ExpectedPart::ChangeSet(members) => {
                let Some(answer) = answers.next() else {
                    for member in &members {
                        out.push(BatchResponse::unanswered(
                            member.operation,
                            member.content_id,
                            stopped.to_owned(),
                        ));
                    }
                    continue;
                };
                out.extend(read_change_set(&answer, &members)?);
            }
        }
    }
    Ok(out)
}

/// The answers of one change set. A successful one answers every request (matched by
/// Content-ID); a failed one only the request that failed, and the others were rolled
/// back. A failure answered without a Content-ID (as OData 4.0 also allows, as one
/// `application/http` part for the whole change set) is reported for every request.
fn read_change_set(
    answer: &multipart::Part,
    members: &[Expected],
) -> Result<Vec<BatchResponse>, ConnectorError> {
    let media = answer.media_type().unwrap_or_default();
    let nested = match media.as_str() {
        "multipart/mixed" => {
            let boundary = multipart::boundary(answer.header("content-type").unwrap_or(""))
                .ok_or_else(|| decode_error("batch", "a change set response has no boundary"))?;
            multipart::parse(&answer.body, &boundary).map_err(|m| decode_error("batch", m))?
        }
        "application/http" => vec![answer.clone()],
        other => {
            return Err(decode_error(
                "batch",
                format!("unexpected change set response type '{other}'"),
            ));
        }
    };
    let mut by_id: HashMap<u32, multipart::Part> = HashMap::new();
    let mut anonymous = Vec::new();
    for part in nested {
        match part
            .header("content-id")
            .and_then(|id| id.parse::<u32>().ok())
        {
            Some(id) => {
                by_id.insert(id, part);
            }
            None => anonymous.push(part),
        }
    }
    if by_id.is_empty() && anonymous.len() == members.len() {
        // No Content-IDs echoed: the answers are in request order.
        return members
            .iter()
            .zip(&anonymous)
            .map(|(member, part)| read_answer(part, member))
            .collect();
    }
    let mut out = Vec::with_capacity(members.len());
    let mut failed: Option<(Option<u32>, StatusCode)> = None;
    for member in members {
        let part = member.content_id.and_then(|id| by_id.remove(&id));
        match part {
            Some(part) => {
                let response = read_answer(&part, member)?;
                if !response.is_success() {
                    failed = Some((member.content_id, response.status));
                }
                out.push(response);
            }
            None => match anonymous.first() {
                Some(part) => out.push(read_answer(part, member)?),
                None => out.push(BatchResponse::unanswered(
                    member.operation,
                    member.content_id,
                    String::new(),
                )),
            },
        }
    }
    // Explain the requests the service left out.
    let why = match failed {
        Some((Some(id), status)) => format!(
            "not applied: the change set was rolled back because request ${id} failed (HTTP {})",
            status.as_u16()
        ),
        _ => "not applied: the change set was rolled back".to_owned(),
    };
    for response in &mut out {
        if !response.answered {
            response.body = Some(serde_json::json!({ "error": { "code": "", "message": why } }));
        }
    }
    Ok(out)
}

/// One inner response.
fn read_answer(
    part: &multipart::Part,
    expected: &Expected,
) -> Result<BatchResponse, ConnectorError> {
    let message = multipart::parse_http(&part.body).map_err(|m| decode_error("batch", m))?;
    let status = message
        .status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            decode_error(
                "batch",
                format!("'{}' is not a status line", message.start_line),
            )
        })?;
    let text = message.body.trim_ascii();
    let body = (!text.is_empty()).then(|| {
        serde_json::from_slice::<Value>(text)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(text).into_owned()))
    });
    let mut row = None;
    let mut rows = Vec::new();
    let mut next_link = None;
    if status.is_success()
        && let (Some(Value::Object(object)), Some(set)) = (&body, &expected.entity_set)
    {
        if expected.query {
            let items = object
                .get("value")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    decode_error(expected.operation, "the collection has no `value` array")
                })?;
            for item in items {
                match item {
                    Value::Object(item) => rows.push(Row::from_object(set, item.clone())),
                    _ => {
                        return Err(decode_error(
                            expected.operation,
                            "a collection item is not an object",
                        ));
                    }
                }
            }
            next_link = object
                .get("@odata.nextLink")
                .and_then(Value::as_str)
                .map(str::to_owned);
        } else {
            let mut stored = Row::from_object(set, object.clone());
            if stored.etag.is_none() {
                stored.etag = message.header("etag").map(str::to_owned);
            }
            row = Some(stored);
        }
    }
    let entity_url = message.header("odata-entityid").map(str::to_owned);
    let entity_id = entity_url
        .as_deref()
        .and_then(id_from_entity_url)
        .or_else(|| row.as_ref().and_then(|r| r.id.clone()));
    Ok(BatchResponse {
        status,
        answered: true,
        content_id: expected.content_id,
        entity_id,
        entity_url,
        headers: message.headers.clone(),
        body,
        row,
        rows,
        next_link,
        operation: expected.operation,
    })
}

/// A 404 that means "no such row", as opposed to "no such entity set" (`Resource not found
/// for the segment 'x'`), which is a configuration mistake that must not read as a missing
/// row. Both carry the same (often empty) code, so the message decides.
fn is_missing_row(error: &ConnectorError) -> bool {
    matches!(error, ConnectorError::NotFound { message, .. }
        if !message.starts_with("Resource not found for the segment"))
}

/// The id of a `$deletedEntity` entry of a delta response.
fn deleted_id(item: &Map<String, Value>) -> Option<String> {
    let deleted = item.get("reason").and_then(Value::as_str) == Some("deleted")
        || item
            .get("@odata.context")
            .and_then(Value::as_str)
            .is_some_and(|c| c.ends_with("$deletedEntity"));
    if !deleted {
        return None;
    }
    item.get("id")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

fn with_select(request: Request, select: &[&str]) -> Result<Request, ConnectorError> {
    if select.is_empty() {
        return Ok(request);
    }
    for column in select {
        check_name("column", column)?;
    }
    Ok(request.query("$select", select.join(",")))
}

fn row_from_reply(
    reply: &Reply,
    entity_set: &str,
    operation: &'static str,
) -> Result<Row, ConnectorError> {
    match reply.json::<Value>()? {
        Value::Object(object) => {
            let mut row = Row::from_object(entity_set, object);
            if row.etag.is_none() {
                row.etag = reply.header("etag").map(str::to_owned);
            }
            Ok(row)
        }
        _ => Err(decode_error(operation, "the row is not a JSON object")),
    }
}

/// One step of a query stream: the next buffered row, else the next page.
async fn next_row(mut state: QueryState) -> Option<(Result<Row, ConnectorError>, QueryState)> {
    loop {
        if let Some(row) = state.buffer.pop_front() {
            return Some((Ok(row), state));
        }
        let request = match std::mem::replace(&mut state.cursor, Cursor::Done) {
            Cursor::Done => return None,
            Cursor::First(request) => request,
            Cursor::Next(link) => {
                let mut request = read(Request::follow("query_rows", link));
                if let Some(prefer) = &state.prefer {
                    request = request.header("prefer", prefer);
                }
                request
            }
        };
        let page = match state.client.inner.upstream.send(request).await {
            Ok(reply) => parse_page(&reply, "query_rows"),
            Err(error) => Err(error),
        };
        match page {
            Ok(page) => {
                state.buffer = page
                    .items
                    .into_iter()
                    .map(|item| Row::from_object(&state.entity_set, item))
                    .collect();
                if let Some(link) = page.next_link {
                    state.cursor = Cursor::Next(link);
                }
            }
            // The cursor is Done: the stream ends after this error.
            Err(error) => return Some((Err(error), state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00000000-0000-4000-8000-00000000000a";

    #[test]
    fn keys_quote_text_double_quotes_and_leave_guids_bare() {
        let key = AlternateKey::new("cosell_referralid", "O'Brien/1 (x)");
        assert_eq!(
            key.segment().unwrap(),
            "cosell_referralid='O''Brien%2F1%20%28x%29'"
        );
        let key = AlternateKey::new("cosell_opportunityid", KeyValue::Guid(ID.into()))
            .and("cosell_pcsolutionid", "SOL-1")
            .and("n", 5i64);
        assert_eq!(
            key.segment().unwrap(),
            format!("cosell_opportunityid={ID},cosell_pcsolutionid='SOL-1',n=5")
        );
        assert!(AlternateKey::new("bad name", "x").segment().is_err());
        assert!(
            AlternateKey::new("k", KeyValue::Guid("1 or 1".into()))
                .segment()
                .is_err()
        );
    }

    #[test]
    fn filter_literals_escape_strings_and_normalize_datetimes() {
        assert_eq!(odata_string("O'Brien"), "'O''Brien'");
        assert_eq!(
            odata_datetime("2024-01-01T01:00:00+01:00").as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            odata_datetime("2024-05-06T07:08:09Z").as_deref(),
            Some("2024-05-06T07:08:09Z")
        );
        assert_eq!(odata_datetime("yesterday or 1 eq 1"), None);
    }

    #[test]
    fn binds_and_entity_ids() {
        assert_eq!(bind("accounts", ID), format!("/accounts({ID})"));
        assert_eq!(
            id_from_entity_url(&format!(
                "https://org.crm.dynamics.com/api/data/v9.2/accounts({})",
                ID.to_uppercase()
            )),
            Some(ID.to_owned())
        );
        assert_eq!(
            id_from_entity_url("https://x/api/data/v9.2/opportunities(cosell_referralid='a')"),
            None
        );
    }

    #[test]
    fn rows_find_their_primary_id_and_etag() {
        for (set, column) in [
            ("opportunities", "opportunityid"),
            ("accounts", "accountid"),
            ("transactioncurrencies", "transactioncurrencyid"),
            ("cosell_solutions", "cosell_solutionid"),
            ("customeraddresses", "customeraddressid"),
        ] {
            let mut object = Map::new();
            object.insert("@odata.etag".into(), Value::from("W/\"7\""));
            object.insert("@odata.context".into(), Value::from("x"));
            object.insert(column.into(), Value::from(ID));
            object.insert("_customerid_value".into(), Value::from(ID));
            let row = Row::from_object(set, object);
            assert_eq!(row.id.as_deref(), Some(ID), "{set}");
            assert_eq!(row.etag.as_deref(), Some("W/\"7\""));
            assert_eq!(row.lookup("customerid"), Some(ID));
            assert!(!row.fields.contains_key("@odata.context"));
        }
    }

    #[test]
    fn deleted_entities_are_recognized() {
        let item: Map<String, Value> = serde_json::from_str(&format!(
            r#"{{"@odata.context":"https://x/api/data/v9.2/$metadata#accounts/$deletedEntity","id":"{}","reason":"deleted"}}"#,
            ID.to_uppercase()
        ))
        .unwrap();
        assert_eq!(deleted_id(&item), Some(ID.to_owned()));
        let mut row = Map::new();
        row.insert("accountid".into(), Value::from(ID));
        assert_eq!(deleted_id(&row), None);
    }

    #[test]
    fn settings_refuse_insecure_or_malformed_urls() {
        let settings = |url: &str| DataverseSettings::new(url, "t", "c", Secret::new("s"));
        let error = DataverseClient::new(settings("http://org.crm.dynamics.com")).unwrap_err();
        assert!(matches!(error, ConnectorError::Config { .. }), "{error}");
        let error = DataverseClient::new(settings("https://org.crm.dynamics.com/api/data/v9.2"))
            .unwrap_err();
        assert!(error.to_string().contains("without /api/data"), "{error}");
        let mut bad_version = settings("https://org.crm.dynamics.com");
        bad_version.api_version = "9.2/../x".into();
        assert!(DataverseClient::new(bad_version).is_err());
        assert!(DataverseClient::new(settings("https://org.crm.dynamics.com/")).is_ok());
    }
}
