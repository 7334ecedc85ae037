//! The Salesforce REST API client: sObject CRUD, upsert by External ID, SOQL as a stream,
//! API usage (`shared/reference/crm-apis.md` part B).
//!
//! Every call goes through the shared [`Upstream`]: the token comes from one of the three
//! OAuth flows (client credentials, refresh token, JWT bearer), the API root is the token
//! response's `instance_url` (the login host only issues tokens), a 401 fetches a new token
//! once, and 403 `REQUEST_LIMIT_EXCEEDED` is [`ConnectorError::BudgetExhausted`].
//!
//! Outcomes worth knowing:
//! - [`SalesforceClient::fetch`] tells a record that never existed ([`Lookup::Missing`],
//!   `404 NOT_FOUND`) from one that was deleted ([`Lookup::Deleted`], `404
//!   ENTITY_IS_DELETED`); [`SalesforceClient::get`] folds the first into `Ok(None)` and
//!   reports the second as [`ConnectorError::NotFound`] whose message starts with
//!   `ENTITY_IS_DELETED` (see [`is_entity_deleted`]), because a deleted CRM record usually
//!   needs different handling from a stale id.
//! - Salesforce offers ETags on Account rows only, so optimistic concurrency uses
//!   `If-Unmodified-Since` with the `LastModifiedDate` / `SystemModstamp` the caller read
//!   ([`SalesforceClient::update_if_unmodified`]). HTTP dates have whole seconds: a change
//!   made in the same second as the one read is not detected.
//! - `Sforce-Limit-Info: api-usage=N/M` of every successful reply feeds the gauges
//!   `cosell_salesforce_api_usage` / `cosell_salesforce_api_limit` and
//!   [`SalesforceClient::last_api_usage`].
//! - [`SalesforceClient::composite`] sends up to 25 subrequests (lookups, or a referral's
//!   writes all-or-none) as one API call; see [`composite`].

pub mod composite;
pub mod soql;

pub use composite::{CompositeReply, CompositeRequest, composite_failure};

use std::sync::{Arc, Mutex};

use futures_util::stream::{self, Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use super::auth::TokenSource;
use super::http::{CallStats, Reply, Request, Upstream, UpstreamOptions, http_client};
use super::{ConnectorError, SecretEnv, lock, require_https, resolve_secret};
use crate::config::model::{Budget, CrmConnection};
use crate::config::secrets::Secret;
use soql::{Order, Soql, SoqlValue, identifier};

/// API name in errors, logs and metrics.
const API: &str = "salesforce";
/// The API version used when the configuration names none.
pub const DEFAULT_API_VERSION: &str = "61.0";

/// A record as Salesforce returns it, without the `attributes` members (type and URL),
/// which are not fields.
pub type Record = Map<String, Value>;

/// How the client gets its token.
#[derive(Debug, Clone)]
pub enum SalesforceAuth {
    /// Client credentials (the connected app's "Run As" user). Needs the My Domain login
    /// URL.
    ClientCredentials {
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: Secret,
    },
    /// Refresh token grant; the secret may be absent when the app does not require it.
    RefreshToken {
        /// Consumer key.
        client_id: String,
        /// Consumer secret, if the connected app requires it.
        client_secret: Option<Secret>,
        /// The refresh token.
        refresh_token: Secret,
    },
    /// JWT bearer: an RS256 assertion signed with the connected app's private key.
    JwtBearer {
        /// Consumer key (the assertion's `iss`).
        client_id: String,
        /// The user to act as (`sub`).
        username: String,
        /// PEM private key (PKCS#8 or PKCS#1).
        private_key: Secret,
    },
}

/// Everything the client needs.
#[derive(Debug, Clone)]
pub struct SalesforceSettings {
    /// Login host: `https://login.salesforce.com`, `https://test.salesforce.com` or the
    /// org's My Domain. Only tokens come from here; the API is at `instance_url`.
    pub login_url: String,
    /// `61.0` (a leading `v` is accepted).
    pub api_version: String,
    /// Credentials.
    pub auth: SalesforceAuth,
    /// Call budget.
    pub budget: Budget,
    /// Allow `http://` (the local sandbox only).
    pub allow_insecure_http: bool,
    /// Extra CA certificates (PEM) to trust.
    pub trusted_certificates: Vec<String>,
    /// Whole-request timeout of every API call ([`super::http::DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: std::time::Duration,
}

impl SalesforceSettings {
    /// Settings for `login_url` with `auth`, the default API version, no budget, https only.
    pub fn new(login_url: impl Into<String>, auth: SalesforceAuth) -> SalesforceSettings {
        SalesforceSettings {
            login_url: login_url.into(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            auth,
            budget: Budget::default(),
            allow_insecure_http: false,
            trusted_certificates: Vec::new(),
            request_timeout: super::http::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What [`SalesforceClient::fetch`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The record.
    Found(Record),
    /// No record has this id (`404 NOT_FOUND`).
    Missing,
    /// The record existed and was deleted (`404 ENTITY_IS_DELETED`; it may be in the
    /// recycle bin).
    Deleted,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertOutcome {
    /// The record's id.
    pub id: String,
    /// Whether it was created (201) rather than updated.
    pub created: bool,
}

/// Query options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `Sforce-Query-Options: batchSize=N` (200–2000; Salesforce may return fewer).
    pub batch_size: Option<u32>,
    /// `queryAll`: include deleted and archived records.
    pub include_deleted: bool,
}

/// Whether `error` is the [`ConnectorError::NotFound`] that [`SalesforceClient::get`]
/// returns for a deleted record.
pub fn is_entity_deleted(error: &ConnectorError) -> bool {
    matches!(error, ConnectorError::NotFound { code, .. } if code.as_deref() == Some("ENTITY_IS_DELETED"))
}

/// The Salesforce REST client. Cheap to clone; clones share the token, budget and counters.
#[derive(Debug, Clone)]
pub struct SalesforceClient {
    upstream: Upstream,
    api_version: String,
    usage: Arc<Mutex<Option<(u64, u64)>>>,
}

/// Characters kept as they are in a path segment: RFC 3986 unreserved. Everything else —
/// `/`, `?`, `#`, `%`, `+` (which Salesforce's decoder reads as a space) — is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

fn invalid_input(message: String) -> ConnectorError {
    ConnectorError::Config {
        message: format!("{API}: {message}"),
    }
}

/// `61.0` from `61.0` or `v61.0`.
fn normalize_version(version: &str) -> Result<String, ConnectorError> {
    let bare = version.trim().trim_start_matches(['v', 'V']);
    let valid = bare.split_once('.').is_some_and(|(major, minor)| {
        !major.is_empty()
            && !minor.is_empty()
            && major.bytes().all(|b| b.is_ascii_digit())
            && minor.bytes().all(|b| b.is_ascii_digit())
    });
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(ConnectorError::Config {
            message: format!(
                "salesforce api_version `{version}` is not a version like `61.0` or `v61.0`"
            ),
        })
    }
}

/// A 15- or 18-character record id (checked so it can go into a path as it is).
fn record_id(id: &str) -> Result<&str, ConnectorError> {
    if matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(invalid_input(format!(
            "`{}` is not a Salesforce record id",
            id.chars().take(40).collect::<String>()
        )))
    }
}

/// `api-usage=N/M` from `Sforce-Limit-Info` (ignoring `per-app-api-usage` and
/// `api-bursts`).
pub fn parse_limit_info(value: &str) -> Option<(u64, u64)> {
    value.split([';', ',']).find_map(|part| {
        let (used, limit) = part.trim().strip_prefix("api-usage=")?.split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

/// An HTTP date (`Wed, 31 Jan 2024 10:00:00 GMT`) from a Salesforce date-time.
pub fn http_date(datetime: &str) -> Result<String, ConnectorError> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 1970-01-01 was a Thursday.
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let parsed = soql::parse_salesforce_datetime(datetime).ok_or_else(|| {
        invalid_input("the modification date is not an ISO 8601 date-time".into())
    })?;
    let seconds = parsed.unix_seconds();
    let t = crate::mapping::transforms::datetime::DateTime::from_unix(seconds, 0);
    let weekday = WEEKDAYS[usize::try_from(seconds.div_euclid(86_400).rem_euclid(7)).unwrap_or(0)];
    Ok(format!(
        "{weekday}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        t.day,
        MONTHS[usize::from(t.month.saturating_sub(1)).min(11)],
        t.year,
        t.hour,
        t.minute,
        t.second
    ))
}

/// Removes the `attributes` members (type and URL) from a record and from the related
/// records nested in it.
fn strip_attributes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("attributes").is_some_and(Value::is_object) {
                map.remove("attributes");
            }
            map.values_mut().for_each(strip_attributes);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_attributes),
        _ => {}
    }
}

fn decode(operation: &'static str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Decode {
        api: API,
        operation,
        message: message.into(),
    }
}

/// Where the next page of a query comes from.
enum Page {
    First { soql: String, options: QueryOptions },
    More { next: String, options: QueryOptions },
}

impl SalesforceClient {
    /// A client for `settings`. Refuses `http://` unless allowed and an unusable JWT key
    /// at once, not at the first call.
    pub fn new(settings: SalesforceSettings) -> Result<SalesforceClient, ConnectorError> {
        let api_version = normalize_version(&settings.api_version)?;
        require_https(
            "salesforce login URL",
            &settings.login_url,
            settings.allow_insecure_http,
        )?;
        let mut options = UpstreamOptions::new(API, settings.login_url.clone());
        options.allow_insecure_http = settings.allow_insecure_http;
        options.budget = settings.budget;
        options.extra_root_certificates = settings.trusted_certificates;
        options.request_timeout = settings.request_timeout;
        options.base_from_token = true;
        let http = http_client(&options)?;
        let login = options.base_url.clone();
        let tokens = match settings.auth {
            SalesforceAuth::ClientCredentials {
                client_id,
                client_secret,
            } => {
                TokenSource::salesforce_client_credentials(&login, &client_id, client_secret, http)
            }
            SalesforceAuth::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => TokenSource::salesforce_refresh_token(
                &login,
                &client_id,
                client_secret,
                refresh_token,
                http,
            ),
            SalesforceAuth::JwtBearer {
                client_id,
                username,
                private_key,
            } => TokenSource::salesforce_jwt_bearer(
                &login,
                &client_id,
                &username,
                private_key,
                http,
            )?,
        };
        Ok(SalesforceClient {
            upstream: Upstream::new(options, Some(tokens))?,
            api_version,
            usage: Arc::new(Mutex::new(None)),
        })
    }

    /// A client for the configured CRM connection. The flow follows from the credentials
    /// given: `private_key` + `username` → JWT bearer, `refresh_token` → refresh token,
    /// otherwise client credentials (which needs `client_secret`). Secret references are
    /// resolved through `env`; `trusted` are extra CA certificates (PEM).
    pub fn from_config(
        connection: &CrmConnection,
        env: SecretEnv<'_>,
        trusted: &[String],
    ) -> Result<SalesforceClient, ConnectorError> {
        const AUTH: &str = "connections.crm.auth";
        let auth = &connection.auth;
        // Non-secret values may interpolate references too (`https://${MY_DOMAIN}…`).
        let plain = |field: &str, text: &str| super::resolve_text(field, text, env);
        let client_id = plain(&format!("{AUTH}.client_id"), &auth.client_id)?;
        let secret = |name: &str, reference: &crate::config::model::SecretRef| {
            resolve_secret(&format!("{AUTH}.{name}"), reference, env)
        };
        let credentials = match (&auth.private_key, &auth.refresh_token) {
            (Some(key), _) => {
                let username = auth.username.as_deref().ok_or_else(|| ConnectorError::Config {
                    message: format!(
                        "{AUTH}.username is required with {AUTH}.private_key (the JWT bearer flow acts as that user)"
                    ),
                })?;
                SalesforceAuth::JwtBearer {
                    client_id,
                    username: plain(&format!("{AUTH}.username"), username)?,
                    private_key: secret("private_key", key)?,
                }
            }
            (None, Some(refresh)) => SalesforceAuth::RefreshToken {
                client_id,
                client_secret: auth
                    .client_secret
                    .as_ref()
                    .map(|s| secret("client_secret", s))
                    .transpose()?,
                refresh_token: secret("refresh_token", refresh)?,
            },
            (None, None) => {
                let reference = auth.client_secret.as_ref().ok_or_else(|| ConnectorError::Config {
                    message: format!(
                        "{AUTH}.client_secret is required for the client credentials flow (or give {AUTH}.refresh_token, or {AUTH}.private_key with {AUTH}.username for JWT bearer)"
                    ),
                })?;
                SalesforceAuth::ClientCredentials {
                    client_id,
                    client_secret: secret("client_secret", reference)?,
                }
            }
        };
        let mut settings = SalesforceSettings::new(
            plain("connections.crm.base_url", &connection.base_url)?,
            credentials,
        );
        if let Some(version) = &connection.api_version {
            settings.api_version = version.clone();
        }
        settings.budget = connection.budget.clone();
        settings.allow_insecure_http = connection.allow_insecure_http;
        settings.trusted_certificates = trusted.to_vec();
        settings.request_timeout = super::http::request_timeout(connection.timeout_seconds);
        SalesforceClient::new(settings)
    }

    /// The API version in use (`61.0`).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The org's API host from the token response (fetching a token if there is none).
    pub async fn instance_url(&self) -> Result<String, ConnectorError> {
        self.upstream.base_url().await
    }

    /// Call counters (requests, outcomes, retries, token refreshes).
    pub fn stats(&self) -> CallStats {
        self.upstream.stats()
    }

    /// The shared upstream (budget, counters).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// `(used, limit)` from the last `Sforce-Limit-Info` seen.
    pub fn last_api_usage(&self) -> Option<(u64, u64)> {
        *lock(&self.usage)
    }

    /// `/services/data/vXX.X{rest}`: the path of a REST resource (relative to the instance).
    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.api_version)
    }

    /// Sends any request (paths from [`SalesforceClient::data_path`]) and records the API
    /// usage the reply reports. For resources this client has no method for.
    pub async fn send(&self, request: Request) -> Result<Reply, ConnectorError> {
        let reply = self.upstream.send(request).await?;
        if let Some((used, limit)) = reply.header("sforce-limit-info").and_then(parse_limit_info) {
            *lock(&self.usage) = Some((used, limit));
            metrics::gauge!("cosell_salesforce_api_usage").set(used as f64);
            metrics::gauge!("cosell_salesforce_api_limit").set(limit as f64);
        }
        Ok(reply)
    }

    fn sobject_path(&self, sobject: &str, rest: &str) -> Result<String, ConnectorError> {
        let sobject = identifier("sObject", sobject)?;
        if sobject.contains('.') {
            return Err(invalid_input(format!("`{sobject}` is not an sObject name")));
        }
        Ok(self.data_path(&format!("/sobjects/{sobject}{rest}")))
    }

    /// Creates a record; its id.
    pub async fn create(
        &self,
        sobject: &str,
        fields: &Map<String, Value>,
    ) -> Result<String, ConnectorError> {
        let path = self.sobject_path(sobject, "/")?;
        let reply = self
            .send(Request::post("create", path).json(fields))
            .await?;
        let body: Value = reply.json()?;
        if body.get("success").and_then(Value::as_bool) == Some(false) {
            let (code, message) = super::http::service_error(
                body.get("errors")
                    .map(Value::to_string)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            return Err(ConnectorError::Status {
                api: API,
                operation: "create",
                status: reply.status.as_u16(),
                code,
                message,
            });
        }
        body.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| decode("create", "the create answer has no id"))
    }

    /// Reads a record (all fields, or `fields`), telling missing from deleted.
    pub async fn fetch(
        &self,
        sobject: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Lookup, ConnectorError> {
        let path = self.sobject_path(sobject, &format!("/{}", record_id(id)?))?;
        self.read("get", path, fields).await
    }

    async fn read(
        &self,
        operation: &'static str,
        path: String,
        fields: &[&str],
    ) -> Result<Lookup, ConnectorError> {
        let mut request = Request::get(operation, path);
        if !fields.is_empty() {
            for field in fields {
                identifier("field", field)?;
            }
            request = request.query("fields", fields.join(","));
        }
        match self.send(request).await {
            Ok(reply) => {
                let mut body: Value = reply.json()?;
                strip_attributes(&mut body);
                match body {
                    Value::Object(record) => Ok(Lookup::Found(record)),
                    _ => Err(decode(operation, "the record is not a JSON object")),
                }
            }
            Err(ConnectorError::NotFound { code, .. })
                if code.as_deref() == Some("ENTITY_IS_DELETED") =>
            {
                Ok(Lookup::Deleted)
            }
            // An unknown External ID field is a configuration mistake, not a missing record.
            Err(ConnectorError::NotFound { code, message, .. })
                if message.starts_with("Provided external ID field") =>
            {
                Err(ConnectorError::NotFound {
                    api: API,
                    operation,
                    code,
                    message,
                })
            }
            Err(ConnectorError::NotFound { .. }) => Ok(Lookup::Missing),
            Err(error) => Err(error),
        }
    }

    /// Reads a record: `None` when no record has this id; a deleted record is
    /// [`ConnectorError::NotFound`] with an `ENTITY_IS_DELETED` message
    /// ([`is_entity_deleted`]). Use [`SalesforceClient::fetch`] to branch without errors.
    pub async fn get(
        &self,
        sobject: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Option<Record>, ConnectorError> {
        match self.fetch(sobject, id, fields).await? {
            Lookup::Found(record) => Ok(Some(record)),
            Lookup::Missing => Ok(None),
            Lookup::Deleted => Err(ConnectorError::NotFound {
                api: API,
                operation: "get",
                code: Some("ENTITY_IS_DELETED".to_owned()),
                message: "entity is deleted".to_owned(),
            }),
        }
    }

    /// Reads the record whose External ID `field` is `value`; `None` when there is none.
    pub async fn get_by_external_id(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &[&str],
    ) -> Result<Option<Record>, ConnectorError> {
        let field = identifier("External ID field", field)?;
        let path = self.sobject_path(sobject, &format!("/{field}/{}", encode_segment(value)))?;
        match self.read("get_by_external_id", path, fields).await {
            Ok(Lookup::Found(record)) => Ok(Some(record)),
            Ok(Lookup::Missing | Lookup::Deleted) => Ok(None),
            Err(ConnectorError::Status { status: 300, .. }) => {
                Err(self.ambiguous(sobject, field, value).await)
            }
            Err(error) => Err(error),
        }
    }

    /// Changes the given fields of a record (others stay as they are).
    pub async fn update(
        &self,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), ConnectorError> {
        let path = self.sobject_path(sobject, &format!("/{}", record_id(id)?))?;
        // Setting fields to values is safe to repeat after a lost answer.
        let request = Request::patch("update", path).json(fields).idempotent(true);
        self.send(request).await.map(drop)
    }

    /// Like [`SalesforceClient::update`], but only if the record has not changed since
    /// `since` (its `LastModifiedDate` or `SystemModstamp` as read), via
    /// `If-Unmodified-Since`; [`ConnectorError::PreconditionFailed`] if it has. The check
    /// has whole-second precision.
    pub async fn update_if_unmodified(
        &self,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
        since: &str,
    ) -> Result<(), ConnectorError> {
        let path = self.sobject_path(sobject, &format!("/{}", record_id(id)?))?;
        // Not repeated after a lost answer: the repeat would fail its own precondition.
        let request = Request::patch("update_if_unmodified", path)
            .json(fields)
            .header("if-unmodified-since", http_date(since)?)
            .idempotent(false);
        self.send(request).await.map(drop)
    }

    /// Deletes a record. A record that is already deleted counts as done (a retried
    /// delete meets `ENTITY_IS_DELETED`); one that never existed is
    /// [`ConnectorError::NotFound`].
    pub async fn delete(&self, sobject: &str, id: &str) -> Result<(), ConnectorError> {
        let path = self.sobject_path(sobject, &format!("/{}", record_id(id)?))?;
        match self.send(Request::delete("delete", path)).await {
            Ok(_) => Ok(()),
            Err(ConnectorError::NotFound { message, .. })
                if message.eq_ignore_ascii_case("entity is deleted") =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Creates or updates the record whose External ID `field` is `value`. Several
    /// matching records (300) are an error naming them.
    pub async fn upsert(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &Map<String, Value>,
    ) -> Result<UpsertOutcome, ConnectorError> {
        let field = identifier("External ID field", field)?;
        if value.is_empty() {
            return Err(invalid_input(format!("upsert by {field} needs a value")));
        }
        let path = self.sobject_path(sobject, &format!("/{field}/{}", encode_segment(value)))?;
        // Repeating an upsert leaves the same record; only `created` may read false then.
        let request = Request::patch("upsert", path).json(fields).idempotent(true);
        let reply = match self.send(request).await {
            Ok(reply) => reply,
            Err(ConnectorError::Status { status: 300, .. }) => {
                return Err(self.ambiguous(sobject, field, value).await);
            }
            Err(error) => return Err(error),
        };
        let created = reply.status.as_u16() == 201;
        if reply.status.as_u16() == 204 || reply.body.is_empty() {
            // API versions before 46.0 answer an update with 204 and no id.
            let found = self
                .get_by_external_id(sobject, field, value, &["Id"])
                .await?;
            let id = found
                .and_then(|r| r.get("Id").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| decode("upsert", "the upserted record cannot be read back"))?;
            return Ok(UpsertOutcome { id, created });
        }
        let body: Value = reply.json()?;
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| decode("upsert", "the upsert answer has no id"))?;
        Ok(UpsertOutcome {
            id: id.to_owned(),
            created: body
                .get("created")
                .and_then(Value::as_bool)
                .unwrap_or(created),
        })
    }

    /// The error for an External ID matching several records, naming them when a query
    /// can find them (the core does not pass the 300 body on).
    async fn ambiguous(&self, sobject: &str, field: &str, value: &str) -> ConnectorError {
        let mut ids = Vec::new();
        if let Ok(query) = Soql::select(&["Id"])
            .from(sobject)
            .where_eq(field, value)
            .limit(20)
            .build()
        {
            let mut records = std::pin::pin!(self.query(&query));
            while let Some(Ok(record)) = records.next().await {
                if let Some(id) = record.get("Id").and_then(Value::as_str) {
                    ids.push(id.to_owned());
                }
            }
        }
        let which = if ids.is_empty() {
            String::new()
        } else {
            format!(" ({})", ids.join(", "))
        };
        ConnectorError::Status {
            api: API,
            operation: "upsert",
            status: 300,
            code: Some("MULTIPLE_CHOICES".to_owned()),
            message: format!(
                "{sobject}.{field} = {value} matches several records{which}; it is ambiguous which to update, remove the duplicates"
            ),
        }
    }

    /// Runs a SOQL query; records arrive as a stream, fetching the next batch
    /// (`nextRecordsUrl`) only when the previous one is consumed. An error ends the stream.
    pub fn query(
        &self,
        soql: &str,
    ) -> impl Stream<Item = Result<Record, ConnectorError>> + Send + use<> {
        self.query_with(soql, QueryOptions::default())
    }

    /// [`SalesforceClient::query`] through `queryAll`: deleted and archived records too.
    pub fn query_all(
        &self,
        soql: &str,
    ) -> impl Stream<Item = Result<Record, ConnectorError>> + Send + use<> {
        self.query_with(
            soql,
            QueryOptions {
                include_deleted: true,
                ..QueryOptions::default()
            },
        )
    }

    /// [`SalesforceClient::query`] with options (batch size, deleted records).
    pub fn query_with(
        &self,
        soql: &str,
        options: QueryOptions,
    ) -> impl Stream<Item = Result<Record, ConnectorError>> + Send + use<> {
        let client = self.clone();
        let first = Page::First {
            soql: soql.to_owned(),
            options,
        };
        stream::unfold(Some(first), move |page| {
            let client = client.clone();
            async move {
                let page = page?;
                Some(match client.page(page).await {
                    Ok((records, next)) => (Ok(records), next),
                    Err(error) => (Err(error), None),
                })
            }
        })
        .flat_map(|page| {
            stream::iter(match page {
                Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(error) => vec![Err(error)],
            })
        })
    }

    /// One batch of records and where the next one is.
    async fn page(&self, page: Page) -> Result<(Vec<Record>, Option<Page>), ConnectorError> {
        let (request, options) = match page {
            Page::First { soql, options } => {
                let resource = if options.include_deleted {
                    "queryAll"
                } else {
                    "query"
                };
                let request = Request::get("query", self.data_path(&format!("/{resource}/")))
                    .query("q", soql);
                (request, options)
            }
            Page::More { next, options } => {
                // nextRecordsUrl is a path on the instance. Anything not starting with a
                // single `/` could re-point the host (`@evil.example/…`) once appended to
                // it, so only absolute URLs on the same origin are followed otherwise.
                let request = if next.starts_with('/') && !next.starts_with("//") {
                    Request::get("query_more", next)
                } else if next.starts_with("https://") || next.starts_with("http://") {
                    Request::follow("query_more", next)
                } else {
                    return Err(decode(
                        "query_more",
                        "nextRecordsUrl is neither a path nor a URL",
                    ));
                };
                (request, options)
            }
        };
        let request = match options.batch_size {
            Some(size) => request.header("sforce-query-options", format!("batchSize={size}")),
            None => request,
        };
        let operation = request.operation();
        let reply = self.send(request).await?;
        let mut body: Value = reply.json()?;
        let done = body.get("done").and_then(Value::as_bool).unwrap_or(true);
        let next = body
            .get("nextRecordsUrl")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut records = match body.get_mut("records").map(Value::take) {
            Some(Value::Array(records)) => records,
            _ => return Err(decode(operation, "the query answer has no records list")),
        };
        let mut out = Vec::with_capacity(records.len());
        for record in &mut records {
            strip_attributes(record);
            match record.take() {
                Value::Object(map) => out.push(map),
                _ => return Err(decode(operation, "a query record is not a JSON object")),
            }
        }
        let next = match (done, next) {
            (true, _) => None,
            (false, Some(next)) => Some(Page::More { next, options }),
            (false, None) => {
                return Err(decode(
                    operation,
                    "done is false but there is no nextRecordsUrl",
                ));
            }
        };
        Ok((out, next))
    }

    /// Records of `sobject` changed after `since` (any ISO 8601 date-time, e.g. a
    /// `SystemModstamp` read earlier), oldest change first: `WHERE SystemModstamp > since
    /// ORDER BY SystemModstamp, Id`. `Id` and `SystemModstamp` are always selected, so the
    /// last record's `SystemModstamp` is the next `since`. Fractions of `since` are
    /// dropped, so records of that very second may come again; none are skipped.
    pub fn changed_since(
        &self,
        sobject: &str,
        fields: &[&str],
        since: &str,
    ) -> Result<impl Stream<Item = Result<Record, ConnectorError>> + Send + use<>, ConnectorError>
    {
        let mut selected: Vec<&str> = vec!["Id", "SystemModstamp"];
        for field in fields {
            if !selected.iter().any(|s| s.eq_ignore_ascii_case(field)) {
                selected.push(field);
            }
        }
        let query = Soql::select(&selected)
            .from(sobject)
            .where_gt("SystemModstamp", SoqlValue::datetime(since)?)
            .order_by("SystemModstamp", Order::Asc)
            .order_by("Id", Order::Asc)
            .build()?;
        Ok(self.query(&query))
    }

    /// The org's limits (`DailyApiRequests` and the rest), as Salesforce returns them.
    pub async fn limits(&self) -> Result<Value, ConnectorError> {
        self.send(Request::get("limits", self.data_path("/limits/")))
            .await?
            .json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_takes_the_org_wide_usage() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some((10018, 100_000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=x); api-usage=25/5000"),
            Some((25, 5000))
        );
        assert_eq!(
            parse_limit_info("api-usage=1/100; api-bursts=1/750"),
            Some((1, 100))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=x)"),
            None
        );
        assert_eq!(parse_limit_info("api-usage=lots"), None);
    }

    #[test]
    fn versions_and_ids_and_segments() {
        assert_eq!(normalize_version("v61.0").unwrap(), "61.0");
        assert_eq!(normalize_version("59.0").unwrap(), "59.0");
        for bad in ["61", "v", "61.0/../x", ""] {
            assert!(normalize_version(bad).is_err(), "{bad}");
        }
        assert!(record_id("0065g00000ABCDEFGH").is_ok());
        assert!(record_id("0065g00000ABCDE").is_ok());
        assert!(record_id("../../limits").is_err());
        assert_eq!(
            encode_segment("a b/c+d%e?f#g.h"),
            "a%20b%2Fc%2Bd%25e%3Ff%23g.h"
        );
    }

    #[test]
    fn http_dates_from_salesforce_datetimes() {
        assert_eq!(
            http_date("2024-01-31T10:00:00.999+0000").unwrap(),
            "Wed, 31 Jan 2024 10:00:00 GMT"
        );
        assert_eq!(
            http_date("1994-11-06T09:49:37+01:00").unwrap(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert!(http_date("2024-01-31").is_err());
    }

    #[test]
    fn attributes_are_removed_at_every_level() {
        let mut record = serde_json::json!({
            "attributes": {"type": "Opportunity", "url": "/x"},
            "Name": "A",
            "Account": {"attributes": {"type": "Account"}, "Name": "B"},
            "Contacts": {"records": [{"attributes": {"type": "Contact"}, "Id": "c"}]}
        });
        strip_attributes(&mut record);
        assert_eq!(
            record,
            serde_json::json!({"Name": "A", "Account": {"Name": "B"}, "Contacts": {"records": [{"Id": "c"}]}})
        );
    }
}
