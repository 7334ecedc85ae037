//! The Dataverse Web API emulator (`/api/data/v9.2/`), following
//! `shared/reference/crm-apis.md` PART A.
//!
//! Tables are data (`sandbox/schemas/dataverse.yaml`, see [`schema`]). Rows live in memory
//! in their wire form ([`store`]). Requests are parsed here ([`path`] for the resource
//! path), bodies validated in [`write`], rows shaped for responses in [`read`], queries run
//! in [`query`] and the metadata endpoints the Python SDK needs answered in [`metadata`].
//!
//! What is served:
//! - `GET /api/data/v9.2/` (service document), `GET WhoAmI`;
//! - `POST /<set>` (204 + `OData-EntityId`, or 201 with `Prefer: return=representation`);
//! - `GET|PATCH|DELETE /<set>(<id>)` and `/<set>(key='value',…)`: retrieve (with
//!   `If-None-Match` → 304), upsert / update-only (`If-Match: *`) / create-only
//!   (`If-None-Match: *`) / optimistic concurrency (`If-Match: W/"n"` → 412);
//! - `GET|PUT|DELETE /<set>(<id>)/<column>`, `GET|PUT|DELETE /<set>(<id>)/<nav>/$ref`;
//! - `GET /<set>` with `$select $filter $orderby $top $count $expand`, paging through
//!   `Prefer: odata.maxpagesize` and `@odata.nextLink`; `GET /<set>/$count`;
//! - `POST /<set>/Microsoft.Dynamics.CRM.CreateMultiple|UpdateMultiple|UpsertMultiple`;
//! - `EntityDefinitions` (list, single, `/Attributes`, the picklist cast, `/Keys`), with
//!   `ChangeTrackingEnabled` from the schema;
//! - change tracking ([`tracking`]): `Prefer: odata.track-changes` → rows plus
//!   `@odata.deltaLink`; the delta link → changed rows and `$deletedEntity` tombstones;
//!   `GET /<set>/$count?$deltatoken=…`;
//! - `POST $batch` ([`batch`]): `multipart/mixed` requests and atomic change sets with
//!   `Content-ID` references (`$1`), each inner request served by the handlers above;
//!   `Prefer: odata.continue-on-error`; one call in `/_sandbox/stats`.
//!
//! Handlers take the store through [`Call::store`]: locked per call, or held by the
//! `$batch` change set the call runs in, which can then roll everything back.
//!
//! Not emulated: `$apply`, FetchXML, deep insert, filtering through navigation
//! properties, `$metadata` (CSDL).

pub mod batch;
pub mod metadata;
pub mod path;
pub mod query;
pub mod read;
pub mod schema;
pub mod store;
pub mod tracking;
pub mod write;

use std::cell::{RefCell, RefMut};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::any;
use serde_json::{Map, Value, json};

use super::{Api, Endpoint, Rng, Sandbox, lock, seed_data};
use path::Segment;
use read::{Annotations, Shape};
use schema::{Schema, Table};
use store::{LOOKUP_TABLE, Locator, Store};
use write::{Context, Mode};

/// Largest request body accepted (Dataverse's own limit is far lower for single rows; this
/// only guards the sandbox's memory).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// API versions the emulator answers.
const VERSIONS: [&str; 3] = ["v9.0", "v9.1", "v9.2"];

/// The emulator: the schema and the rows.
#[derive(Debug)]
pub struct State {
    schema: Schema,
    store: Mutex<Store>,
}

impl State {
    /// Loads the embedded schema; the organization starts with its built-in rows
    /// (currencies).
    pub fn new() -> anyhow::Result<State> {
        let schema = Schema::load()?;
        let store = Store::new(&schema);
        Ok(State {
            schema,
            store: Mutex::new(store),
        })
    }

    /// Forgets every row except the built-in ones.
    pub fn reset(&self) {
        *lock(&self.store) = Store::new(&self.schema);
    }

    /// Every row, for `--data`.
    pub fn snapshot(&self) -> Value {
        lock(&self.store).snapshot()
    }

    /// Replaces the rows with a [`State::snapshot`]; `Null` resets.
    pub fn restore(&self, value: Value) -> anyhow::Result<()> {
        let store = if value.is_null() {
            Store::new(&self.schema)
        } else {
            Store::restore(&self.schema, &value)?
        };
        *lock(&self.store) = store;
        Ok(())
    }

    /// Adds `count` customers: for each, the account of [`seed_data::company`] (same index,
    /// so seeded referrals name existing accounts), a contact working there and an open
    /// opportunity for the account.
    pub fn seed(&self, sandbox: &Sandbox, rng: &mut Rng, count: usize) {
        let mut store = lock(&self.store);
        let now = sandbox.now_dataverse();
        let currencies = [
            "7a5e1c2d-0000-4000-8000-000000000001",
            "7a5e1c2d-0000-4000-8000-000000000002",
            "7a5e1c2d-0000-4000-8000-000000000003",
        ];
        for index in 0..count {
            let company = seed_data::company(index);
            let person = seed_data::person(rng, &company);
            let account_id = rng.guid();
            let contact_id = rng.guid();
            let opportunity_id = rng.guid();
            let account = json!({
                "accountid": account_id,
                "name": company.name,
                "address1_line1": company.street,
                "address1_city": company.city,
                "address1_stateorprovince": company.state,
                "address1_postalcode": company.postal_code,
                "address1_country": company.country_code,
                "telephone1": person.phone,
            });
            let contact = json!({
                "contactid": contact_id,
                "firstname": person.first_name,
                "lastname": person.last_name,
                "emailaddress1": person.email,
                "telephone1": person.phone,
                "parentcustomerid_account@odata.bind": format!("/accounts({account_id})"),
            });
            let value = seed_data::deal_value(rng);
            let month = 1 + rng.below(12);
            let day = 1 + rng.below(28);
            let opportunity = json!({
                "opportunityid": opportunity_id,
                "name": format!("{} - {}", company.name, rng.pick(&["Cloud migration", "Data platform", "Security review", "AI pilot", "Modern workplace"])),
                "estimatedvalue": value,
                "estimatedclosedate": format!("2026-{month:02}-{day:02}"),
                "customerid_account@odata.bind": format!("/accounts({account_id})"),
                "parentaccountid@odata.bind": format!("/accounts({account_id})"),
                "parentcontactid@odata.bind": format!("/contacts({contact_id})"),
                "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({})", rng.pick(&currencies)),
                "salesstage": rng.below(4),
                "closeprobability": 10 * rng.below(11),
                "statuscode": 1,
            });
            for (set, body) in [
                ("accounts", account),
                ("contacts", contact),
                ("opportunities", opportunity),
            ] {
                let Some(table) = self.schema.by_set(set) else {
                    continue;
                };
                let Value::Object(body) = body else {
                    continue;
                };
                // Seed data is generated to be valid; a failure would be a bug in this
                // function, logged rather than fatal.
                if let Err(error) =
                    create(&self.schema, &mut store, table, &body, None, &now, || {
                        String::new()
                    })
                {
                    tracing::warn!(%set, "seeding failed: {}", error.message);
                }
            }
        }
        drop(store);
        sandbox.changed();
    }
}

/// An error response in Dataverse's shape.
#[derive(Debug, Clone)]
pub struct DvError {
    /// HTTP status.
    pub status: StatusCode,
    /// Dataverse error code (`0x80040217`).
    pub code: &'static str,
    /// Message.
    pub message: String,
}

impl DvError {
    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: &str) -> DvError {
        DvError {
            status,
            code,
            message: message.to_owned(),
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: &str) -> DvError {
        DvError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 for a body the OData reader rejects, wrapped the way Dataverse wraps them.
    pub fn payload(table: &Table, inner: &str) -> DvError {
        DvError::bad_request(
            "0x80048d19",
            &format!(
                "Error identified in Payload provided by the user for Entity :'{}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> InnerException : Microsoft.OData.ODataException: {inner}",
                table.set()
            ),
        )
    }

    /// 404 ObjectDoesNotExist for a primary id.
    pub fn row_not_found(table: &Table, id: &str) -> DvError {
        DvError::new(
            StatusCode::NOT_FOUND,
            "0x80040217",
            &format!("{} With Id = {id} Does Not Exist", table.logical()),
        )
    }

    /// 404 ObjectDoesNotExist for alternate-key values.
    pub fn key_not_found(table: &Table) -> DvError {
        DvError::new(
            StatusCode::NOT_FOUND,
            "0x80040217",
            &format!(
                "A record with the specified key values does not exist in {} entity",
                table.logical()
            ),
        )
    }

    /// 412 DuplicateRecord.
    pub fn duplicate(message: &str) -> DvError {
        DvError::new(StatusCode::PRECONDITION_FAILED, "0x80040237", message)
    }

    /// 404 for an unknown resource segment.
    pub fn no_segment(segment: &str) -> DvError {
        DvError::new(
            StatusCode::NOT_FOUND,
            "0x8006088a",
            &format!("Resource not found for the segment '{segment}'."),
        )
    }

    /// 405 for a method the resource does not support.
    pub fn method(method: &Method) -> DvError {
        DvError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "0x80060888",
            &format!("The requested resource does not support http method '{method}'."),
        )
    }

    /// 500 for a sandbox bug.
    pub fn internal(message: &str) -> DvError {
        DvError::new(StatusCode::INTERNAL_SERVER_ERROR, "0x80040216", message)
    }

    fn into_response(self) -> Response {
        Api::Dataverse.error(self.status, self.code, &self.message)
    }
}

/// The Dataverse routes (all paths under `/api/data/`).
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/api/data/{version}", any(handle))
        .route("/api/data/{version}/", any(handle))
        .route("/api/data/{version}/{*path}", any(handle))
}

/// One parsed call: a request to the API, or one request inside a `$batch`.
pub struct Call<'a> {
    /// The sandbox.
    pub sandbox: &'a Sandbox,
    /// HTTP method.
    pub method: Method,
    /// `v9.2`.
    pub version: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw query string.
    pub query: Option<String>,
    /// Request body.
    pub body: Bytes,
    /// Parsed `Prefer` header.
    pub prefer: Prefer,
    /// The store of the change set this request runs in ([`batch`]): already locked, so
    /// the whole change set is one transaction nobody else sees half of. `None` outside
    /// change sets: each handler then locks the store itself.
    pub txn: Option<&'a RefCell<&'a mut Store>>,
}

/// The store as a handler sees it: locked for this call, or borrowed from the change set
/// that holds the lock.
pub enum StoreGuard<'c, 'a> {
    /// Locked by this call.
    Own(MutexGuard<'c, Store>),
    /// Held by the change set.
    Held(RefMut<'c, &'a mut Store>),
}

impl Deref for StoreGuard<'_, '_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        match self {
            StoreGuard::Own(guard) => guard,
            StoreGuard::Held(held) => held,
        }
    }
}

impl DerefMut for StoreGuard<'_, '_> {
    fn deref_mut(&mut self) -> &mut Store {
        match self {
            StoreGuard::Own(guard) => &mut *guard,
            StoreGuard::Held(held) => &mut *held,
        }
    }
}

impl<'a> Call<'a> {
    /// The store: the change set's when the call runs inside one, else locked now. Handlers
    /// take it once per call (the mutex is not reentrant).
    pub fn store(&self) -> StoreGuard<'_, 'a> {
        match self.txn {
            Some(cell) => StoreGuard::Held(cell.borrow_mut()),
            None => StoreGuard::Own(lock(&self.sandbox.dataverse.store)),
        }
    }

    /// Records that rows changed (so `--data` saves them). Inside a change set the batch
    /// does it once the change set commits: a rolled-back change set changed nothing.
    pub fn changed(&self) {
        if self.txn.is_none() {
            self.sandbox.changed();
        }
    }
}

impl Call<'_> {
    /// `{base}/api/data/v9.2`.
    pub fn api_root(&self) -> String {
        format!("{}/api/data/{}", self.sandbox.base_url, self.version)
    }

    /// Decoded query options in order.
    pub fn options(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One query option's value.
    pub fn option(&self, name: &str) -> Option<String> {
        self.options()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// The body as a JSON object, after the Content-Type check.
    fn json_body(&self, table: &Table) -> Result<Map<String, Value>, DvError> {
        if let Some(content_type) = self.header(header::CONTENT_TYPE) {
            let media = content_type.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/json") {
                return Err(DvError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "0x80060891",
                    &format!(
                        "The content type '{content_type}' is not supported; the Web API accepts 'application/json'."
                    ),
                ));
            }
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(DvError::payload(
                table,
                "A node of type 'StartArray' or a primitive value was read from the JSON reader when trying to read the start of an entry. A 'StartObject' node was expected.",
            )),
            Err(error) if self.body.iter().all(u8::is_ascii_whitespace) => {
                let _ = error;
                Err(DvError::payload(
                    table,
                    "The request body is empty; a JSON object was expected.",
                ))
            }
            Err(error) => Err(DvError::payload(table, &format!("Invalid JSON. {error}"))),
        }
    }
}

/// The `Prefer` preferences the emulator understands.
#[derive(Debug, Clone, Default)]
pub struct Prefer {
    /// `return=representation`.
    pub representation: bool,
    /// `odata.maxpagesize=N`.
    pub max_page_size: Option<usize>,
    /// `odata.include-annotations="…"`: parsed, and the raw pattern to echo back.
    pub annotations: Option<(Annotations, String)>,
    /// `odata.track-changes`.
    pub track_changes: bool,
}

impl Prefer {
    /// Parses every `Prefer` header; unknown preferences are ignored, as HTTP says.
    fn parse(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else {
                continue;
            };
            // Split at commas outside quotes (annotation lists are quoted and contain
            // commas).
            let mut items = Vec::new();
            let mut in_quote = false;
            let mut start = 0;
            for (i, c) in value.char_indices() {
                match c {
                    '"' => in_quote = !in_quote,
                    ',' if !in_quote => {
                        items.push(&value[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&value[start..]);
            for item in items {
                let (name, argument) = item.split_once('=').unwrap_or((item, ""));
                let argument = argument.trim().trim_matches('"');
                match name.trim().to_ascii_lowercase().as_str() {
                    "return" => prefer.representation = argument == "representation",
                    "odata.maxpagesize" => {
                        prefer.max_page_size = argument.parse().ok().filter(|n| *n > 0);
                    }
                    "odata.track-changes" => prefer.track_changes = true,
                    "odata.include-annotations" => {
                        prefer.annotations =
                            Some((Annotations::parse(argument), argument.to_owned()));
                    }
                    _ => {}
                }
            }
        }
        prefer
    }

    /// Requested annotations (none when not asked).
    pub fn annotations(&self) -> Annotations {
        self.annotations.as_ref().map(|a| a.0).unwrap_or_default()
    }
}

pub(crate) async fn handle(
    AxumState(sandbox): AxumState<Arc<Sandbox>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let rest = path.strip_prefix("/api/data/").unwrap_or("");
    let (version, resource) = rest.split_once('/').unwrap_or((rest, ""));
    let version = version.to_owned();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return finish(
                DvError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "0x80040216",
                    "The request body is too large.",
                )
                .into_response(),
                &format!("/api/data/{version}/(too large)"),
            );
        }
    };
    if !VERSIONS.contains(&version.as_str()) {
        return finish(
            DvError::no_segment(&version).into_response(),
            "/api/data/{version}",
        );
    }
    let call = Call {
        sandbox: &sandbox,
        method: parts.method.clone(),
        prefer: Prefer::parse(&parts.headers),
        headers: parts.headers,
        query: parts.uri.query().map(str::to_owned),
        body,
        version: version.clone(),
        txn: None,
    };
    let (template, result) = dispatch(&call, resource);
    let response = result.unwrap_or_else(DvError::into_response);
    finish(response, &format!("/api/data/{version}/{template}"))
}

/// Headers every Dataverse response carries, and the stats template.
pub(crate) fn finish(mut response: Response, template: &str) -> Response {
    let headers = response.headers_mut();
    headers.insert("odata-version", HeaderValue::from_static("4.0"));
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; odata.metadata=minimal"),
        );
    }
    response
        .extensions_mut()
        .insert(Endpoint(template.to_owned()));
    response
}

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Response {
    super::json_response(status, body)
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Routes a call by its resource path; returns the stats template and the response.
fn dispatch(call: &Call<'_>, resource: &str) -> (String, Result<Response, DvError>) {
    let state = &call.sandbox.dataverse;
    if resource.is_empty() {
        return (
            String::new(),
            match call.method {
                Method::GET => Ok(metadata::service_document(call, &state.schema)),
                _ => Err(DvError::method(&call.method)),
            },
        );
    }
    let Some(segments) = path::segments(resource) else {
        return (
            "(invalid)".into(),
            Err(DvError::bad_request(
                "0x80060888",
                &format!(
                    "Bad Request - Error in query syntax: the path '{resource}' is not a valid OData path."
                ),
            )),
        );
    };
    let first = &segments[0];
    match first.name.as_str() {
        "WhoAmI" => {
            return (
                "WhoAmI".into(),
                match (&call.method, segments.len()) {
                    (&Method::GET, 1) => Ok(metadata::who_am_i(call)),
                    (_, 1) => Err(DvError::method(&call.method)),
                    _ => Err(DvError::no_segment(&segments[1].name)),
                },
            );
        }
        "EntityDefinitions" => return metadata::entity_definitions(call, &state.schema, &segments),
        "$batch" => {
            return (
                "$batch".into(),
                match (&call.method, segments.len()) {
                    (&Method::POST, 1) => batch::execute(call),
                    (_, 1) => Err(DvError::method(&call.method)),
                    _ => Err(DvError::no_segment(&segments[1].name)),
                },
            );
        }
        "$metadata" => {
            return (
                "$metadata".into(),
                Err(DvError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "0x8004e301",
                    "The sandbox does not serve the CSDL $metadata document; use EntityDefinitions.",
                )),
            );
        }
        _ => {}
    }
    let Some(table) = state.schema.by_set(&first.name) else {
        return ("{unknown}".into(), Err(DvError::no_segment(&first.name)));
    };
    let set = table.set();
    match (&first.key, segments.get(1), segments.len()) {
        (None, None, _) => {
            let result = match call.method {
                Method::GET => query::list(call, state, table),
                Method::POST => create_call(call, state, table),
                _ => Err(DvError::method(&call.method)),
            };
            (set.to_owned(), result)
        }
        (None, Some(second), 2) if second.name == "$count" => (
            format!("{set}/$count"),
            match call.method {
                Method::GET => query::count(call, table),
                _ => Err(DvError::method(&call.method)),
            },
        ),
        (None, Some(second), 2) if second.name.starts_with("Microsoft.Dynamics.CRM.") => {
            let action = second.name.trim_start_matches("Microsoft.Dynamics.CRM.");
            (
                format!("{set}/Microsoft.Dynamics.CRM.{action}"),
                match call.method {
                    Method::POST => bulk(call, state, table, action),
                    _ => Err(DvError::method(&call.method)),
                },
            )
        }
        (None, Some(second), _) => (
            format!("{set}/{{unknown}}"),
            Err(DvError::no_segment(&second.name)),
        ),
        (Some(key), None, _) => {
            let result = path::locator(key)
                .ok_or_else(|| bad_key(key))
                .and_then(|locator| match call.method {
                    Method::GET => retrieve(call, state, table, &locator),
                    Method::PATCH => upsert_call(call, state, table, &locator),
                    Method::DELETE => delete_call(call, state, table, &locator),
                    _ => Err(DvError::method(&call.method)),
                });
            (format!("{set}({{key}})"), result)
        }
        (Some(key), Some(second), 2) => {
            let result = path::locator(key)
                .ok_or_else(|| bad_key(key))
                .and_then(|locator| property_call(call, state, table, &locator, second));
            (format!("{set}({{key}})/{{property}}"), result)
        }
        (Some(key), Some(second), 3) if segments[2].name == "$ref" && segments[2].key.is_none() => {
            let result = path::locator(key)
                .ok_or_else(|| bad_key(key))
                .and_then(|locator| reference_call(call, state, table, &locator, &second.name));
            (format!("{set}({{key}})/{{navigation}}/$ref"), result)
        }
        (Some(_), Some(_), _) => (
            format!("{set}({{key}})/{{unknown}}"),
            Err(DvError::no_segment(&segments[segments.len() - 1].name)),
        ),
    }
}

fn bad_key(key: &str) -> DvError {
    DvError::bad_request(
        "0x80060888",
        &format!(
            "Bad Request - Error in query syntax: '{key}' is not a valid key; expected a GUID or name='value' pairs."
        ),
    )
}

fn not_found(table: &Table, locator: &Locator) -> DvError {
    match locator {
        Locator::Id(id) => DvError::row_not_found(table, id),
        Locator::Key(_) => DvError::key_not_found(table),
    }
}

/// Checks that a key locator names exactly one alternate key of the table.
fn check_locator(table: &Table, locator: &Locator) -> Result<(), DvError> {
    let Locator::Key(pairs) = locator else {
        return Ok(());
    };
    let known = table.def.alternate_keys.iter().any(|key| {
        key.columns.len() == pairs.len()
            && key
                .columns
                .iter()
                .all(|c| pairs.iter().any(|(n, _)| n == c))
    });
    if known {
        return Ok(());
    }
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    Err(DvError::bad_request(
        "0x80060888",
        &format!(
            "The key '{}' is not defined as an alternate key for entity {}.",
            names.join(","),
            table.logical()
        ),
    ))
}

/// Creates a row from a body; `id` overrides the body's primary id; `fallback_id` makes a
/// new GUID when neither gives one.
fn create(
    schema: &Schema,
    store: &mut Store,
    table: &Table,
    body: &Map<String, Value>,
    id: Option<&str>,
    now: &str,
    fallback_id: impl FnOnce() -> String,
) -> Result<(String, Value), DvError> {
    let changes = write::prepare(schema, store, table, body, Mode::Create, Context::default())?;
    let id = id
        .map(str::to_owned)
        .or_else(|| {
            changes
                .set
                .get(table.id())
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(fallback_id)
        .to_ascii_lowercase();
    let id = if id.is_empty() {
        // Seeding passes an empty fallback: ids always come from the body there.
        return Err(DvError::internal("no id for a new row"));
    } else {
        id
    };
    let version = store.next_version();
    let base = json!({
        table.id(): id,
        "createdon": now,
        "modifiedon": now,
        "versionnumber": version,
    });
    let row = write::apply(schema, table, &base, changes, Mode::Create)?;
    store.insert(table, row.clone())?;
    Ok((id, row))
}

fn entity_id_url(call: &Call<'_>, table: &Table, locator: &Locator) -> String {
    format!(
        "{}/{}({})",
        call.api_root(),
        table.set(),
        path::format_locator(locator)
    )
}

/// `$select` and `$expand` of a single-row call.
fn shape_from_query(call: &Call<'_>, schema: &Schema, table: &Table) -> Result<Shape, DvError> {
    let select = call
        .option("$select")
        .map(|s| read::parse_select(table, &s))
        .transpose()?;
    let expand = call
        .option("$expand")
        .map(|e| read::parse_expand(schema, table, &e))
        .transpose()?
        .unwrap_or_default();
    Ok(Shape {
        select,
        expand,
        annotations: call.prefer.annotations(),
    })
}

fn entity_context(call: &Call<'_>, table: &Table, shape: &Shape) -> String {
    match &shape.select {
        Some(select) => format!(
            "{}/$metadata#{}({})/$entity",
            call.api_root(),
            table.set(),
            select.join(",")
        ),
        None => format!("{}/$metadata#{}/$entity", call.api_root(), table.set()),
    }
}

/// A single-row body (`return=representation`, retrieve) with its `ETag`.
fn entity_response(
    call: &Call<'_>,
    state: &State,
    store: &Store,
    table: &Table,
    row: &Value,
    status: StatusCode,
    shape: &Shape,
) -> Response {
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(entity_context(call, table, shape)),
    );
    body.extend(read::shape_row(&state.schema, store, table, row, shape));
    let mut response = json(status, &Value::Object(body));
    set_header(&mut response, "etag", &read::etag(row));
    response
}

fn preference_applied(call: &Call<'_>, response: &mut Response, representation: bool) {
    let mut applied = Vec::new();
    if representation {
        applied.push("return=representation".to_owned());
    }
    if let Some((_, raw)) = &call.prefer.annotations {
        applied.push(format!("odata.include-annotations=\"{raw}\""));
    }
    if !applied.is_empty() {
        set_header(response, "preference-applied", &applied.join(","));
    }
}

fn create_call(call: &Call<'_>, state: &State, table: &Table) -> Result<Response, DvError> {
    let body = call.json_body(table)?;
    let shape = shape_from_query(call, &state.schema, table)?;
    let now = call.sandbox.now_dataverse();
    let mut store = call.store();
    let (id, row) = create(&state.schema, &mut store, table, &body, None, &now, || {
        call.sandbox.new_guid()
    })?;
    call.changed();
    if call.prefer.representation {
        let mut response = entity_response(
            call,
            state,
            &store,
            table,
            &row,
            StatusCode::CREATED,
            &shape,
        );
        preference_applied(call, &mut response, true);
        return Ok(response);
    }
    let mut response = empty(StatusCode::NO_CONTENT);
    set_header(
        &mut response,
        "odata-entityid",
        &entity_id_url(call, table, &Locator::Id(id)),
    );
    Ok(response)
}

fn retrieve(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
) -> Result<Response, DvError> {
    check_locator(table, locator)?;
    let shape = shape_from_query(call, &state.schema, table)?;
    let store = call.store();
    let id = store
        .find(table, locator)
        .ok_or_else(|| not_found(table, locator))?;
    let row = store
        .get(table, &id)
        .ok_or_else(|| not_found(table, locator))?;
    // 304 is never returned with $expand or annotations [PA-cond].
    if shape.expand.is_empty()
        && !shape.annotations.any()
        && call.header(header::IF_NONE_MATCH) == Some(read::etag(row).as_str())
    {
        let mut response = empty(StatusCode::NOT_MODIFIED);
        set_header(&mut response, "etag", &read::etag(row));
        return Ok(response);
    }
    let mut response = entity_response(call, state, &store, table, row, StatusCode::OK, &shape);
    preference_applied(call, &mut response, false);
    Ok(response)
}

/// The `If-Match` / `If-None-Match` conditions of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition<'a> {
    /// No condition: upsert.
    None,
    /// `If-Match: *`: update only.
    Exists,
    /// `If-Match: W/"n"`: update only, and only that version.
    Version(&'a str),
    /// `If-None-Match: *`: create only.
    Absent,
}

fn condition<'a>(call: &'a Call<'_>) -> Condition<'a> {
    match (
        call.header(header::IF_MATCH),
        call.header(header::IF_NONE_MATCH),
    ) {
        (Some("*"), _) => Condition::Exists,
        (Some(tag), _) => Condition::Version(tag),
        (None, Some("*")) => Condition::Absent,
        // `If-None-Match: null` (recommended by Microsoft to defeat caches) means nothing.
        _ => Condition::None,
    }
}

fn version_mismatch() -> DvError {
    DvError::new(
        StatusCode::PRECONDITION_FAILED,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
}

/// Result of one upsert.
struct Upserted {
    id: String,
    created: bool,
    row: Value,
}

/// Upsert (or update-only / create-only) of one row under the store lock. `undo` collects
/// what to restore if a later step of a bulk call fails.
#[allow(clippy::too_many_arguments)]
fn upsert(
    call: &Call<'_>,
    schema: &Schema,
    store: &mut Store,
    table: &Table,
    locator: &Locator,
    body: &Map<String, Value>,
    condition: Condition<'_>,
    undo: &mut Vec<(String, String, Option<Value>)>,
) -> Result<Upserted, DvError> {
    check_locator(table, locator)?;
    let now = call.sandbox.now_dataverse();
    let existing = store.find(table, locator);
    match (&existing, condition) {
        (Some(_), Condition::Absent) => {
            return Err(DvError::duplicate(
                "A record with matching key values already exists.",
            ));
        }
        (None, Condition::Exists | Condition::Version(_)) => return Err(not_found(table, locator)),
        _ => {}
    }
    if let Some(id) = existing {
        let old = store
            .get(table, &id)
            .cloned()
            .ok_or_else(|| not_found(table, locator))?;
        if let Condition::Version(tag) = condition
            && tag != read::etag(&old)
        {
            return Err(version_mismatch());
        }
        let ignore: Vec<String> = match locator {
            Locator::Key(pairs) => pairs.iter().map(|(n, _)| n.clone()).collect(),
            Locator::Id(_) => Vec::new(),
        };
        let changes = write::prepare(
            schema,
            store,
            table,
            body,
            Mode::Update,
            Context { ignore: &ignore },
        )?;
        let mut row = write::apply(schema, table, &old, changes, Mode::Update)?;
        let version = store.next_version();
        if let Some(map) = row.as_object_mut() {
            map.insert("versionnumber".into(), json!(version));
            map.insert("modifiedon".into(), json!(now));
        }
        store.replace(table, &id, row.clone())?;
        undo.push((table.logical().to_owned(), id.clone(), Some(old)));
        return Ok(Upserted {
            id,
            created: false,
            row,
        });
    }
    // Create: the URL's key values (or id) are the row's.
    let mut body = body.clone();
    let mut id = None;
    match locator {
        Locator::Id(guid) => id = Some(guid.clone()),
        Locator::Key(pairs) => {
            for (name, value) in pairs {
                let Some(column) = table.column(name) else {
                    continue;
                };
                if column.kind.is_lookup() {
                    if let (Some(target), Some(guid)) = (column.targets.first(), value.as_str())
                        && let Some(target_table) = schema.table(&target.table)
                    {
                        body.insert(
                            format!("{}@odata.bind", target.navigation),
                            json!(format!("/{}({guid})", target_table.set())),
                        );
                    }
                } else {
                    body.insert(name.clone(), value.clone());
                }
            }
        }
    }
    let (id, row) = create(schema, store, table, &body, id.as_deref(), &now, || {
        call.sandbox.new_guid()
    })?;
    undo.push((table.logical().to_owned(), id.clone(), None));
    Ok(Upserted {
        id,
        created: true,
        row,
    })
}

fn rollback(schema: &Schema, store: &mut Store, undo: Vec<(String, String, Option<Value>)>) {
    for (logical, id, old) in undo.into_iter().rev() {
        let Some(table) = schema.table(&logical) else {
            continue;
        };
        match old {
            Some(old) => {
                let _ = store.replace(table, &id, old);
            }
            None => {
                store.remove(table, &id);
            }
        }
    }
}

fn upsert_call(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
) -> Result<Response, DvError> {
    let body = call.json_body(table)?;
    let shape = shape_from_query(call, &state.schema, table)?;
    let mut store = call.store();
    let mut undo = Vec::new();
    let done = upsert(
        call,
        &state.schema,
        &mut store,
        table,
        locator,
        &body,
        condition(call),
        &mut undo,
    )?;
    call.changed();
    if call.prefer.representation {
        let status = if done.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        // $expand is ignored on update with return=representation [PA-upd].
        let shape = Shape {
            expand: Vec::new(),
            ..shape
        };
        let mut response = entity_response(call, state, &store, table, &done.row, status, &shape);
        preference_applied(call, &mut response, true);
        return Ok(response);
    }
    let _ = done.id;
    let mut response = empty(StatusCode::NO_CONTENT);
    set_header(
        &mut response,
        "odata-entityid",
        &entity_id_url(call, table, locator),
    );
    Ok(response)
}

fn delete_call(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
) -> Result<Response, DvError> {
    check_locator(table, locator)?;
    let mut store = call.store();
    let id = store
        .find(table, locator)
        .ok_or_else(|| not_found(table, locator))?;
    if let Condition::Version(tag) = condition(call)
        && store.get(table, &id).map(read::etag).as_deref() != Some(tag)
    {
        return Err(version_mismatch());
    }
    store.delete(table, &id);
    // Relationships behave as "Remove Link": rows pointing here lose the lookup.
    let now = call.sandbox.now_dataverse();
    for (logical, row_id, property) in store.referencing(&state.schema, &id) {
        let Some(other) = state.schema.table(&logical) else {
            continue;
        };
        let Some(mut row) = store.get(other, &row_id).cloned() else {
            continue;
        };
        if let Some(map) = row.as_object_mut() {
            map.remove(&property);
            map.remove(&format!("{property}{LOOKUP_TABLE}"));
            let version = store.next_version();
            map.insert("versionnumber".into(), json!(version));
            map.insert("modifiedon".into(), json!(now));
        }
        let _ = store.replace(other, &row_id, row);
    }
    call.changed();
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Updates one row with a body under `If-Match: *` semantics (single-property and $ref
/// calls).
fn update_existing(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
    body: Map<String, Value>,
) -> Result<Response, DvError> {
    let mut store = call.store();
    let mut undo = Vec::new();
    let condition = match condition(call) {
        Condition::Version(tag) => Condition::Version(tag),
        _ => Condition::Exists,
    };
    upsert(
        call,
        &state.schema,
        &mut store,
        table,
        locator,
        &body,
        condition,
        &mut undo,
    )?;
    call.changed();
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `GET|PUT|DELETE /<set>(<id>)/<column>`.
fn property_call(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
    segment: &Segment,
) -> Result<Response, DvError> {
    check_locator(table, locator)?;
    let name = segment.name.as_str();
    if segment.key.is_some() {
        return Err(DvError::no_segment(name));
    }
    let column = table.by_property(name);
    let navigation = table.navigation(name);
    if column.is_none() && navigation.is_none() {
        return Err(read::unknown_property(table, name));
    }
    match call.method {
        Method::GET => {
            let store = call.store();
            let id = store
                .find(table, locator)
                .ok_or_else(|| not_found(table, locator))?;
            let row = store
                .get(table, &id)
                .ok_or_else(|| not_found(table, locator))?;
            if let Some((column, target)) = navigation {
                // The related row itself.
                let related = row
                    .get(column.property())
                    .and_then(Value::as_str)
                    .and_then(|rid| Some((state.schema.table(target)?, rid)))
                    .filter(|(t, _)| {
                        row.get(format!("{}{LOOKUP_TABLE}", column.property()))
                            .and_then(Value::as_str)
                            == Some(t.logical())
                    });
                let Some((target_table, rid)) = related else {
                    return Ok(empty(StatusCode::NO_CONTENT));
                };
                let Some(related_row) = store.get(target_table, rid) else {
                    return Ok(empty(StatusCode::NO_CONTENT));
                };
                let shape = Shape {
                    annotations: call.prefer.annotations(),
                    ..Shape::default()
                };
                return Ok(entity_response(
                    call,
                    state,
                    &store,
                    target_table,
                    related_row,
                    StatusCode::OK,
                    &shape,
                ));
            }
            let value = row.get(name).cloned().unwrap_or(Value::Null);
            if value.is_null() {
                return Ok(empty(StatusCode::NO_CONTENT));
            }
            Ok(json(
                StatusCode::OK,
                &json!({
                    "@odata.context": format!("{}/$metadata#{}({id})/{name}", call.api_root(), table.set()),
                    "value": value,
                }),
            ))
        }
        Method::PUT => {
            let body = call.json_body(table)?;
            let Some(value) = body.get("value") else {
                return Err(DvError::payload(
                    table,
                    "The request body of a single-property update must be {\"value\": …}.",
                ));
            };
            let mut changes = Map::new();
            changes.insert(name.to_owned(), value.clone());
            update_existing(call, state, table, locator, changes)
        }
        Method::DELETE => {
            let mut changes = Map::new();
            changes.insert(name.to_owned(), Value::Null);
            update_existing(call, state, table, locator, changes)
        }
        _ => Err(DvError::method(&call.method)),
    }
}

/// `GET|PUT|DELETE /<set>(<id>)/<navigation>/$ref`.
fn reference_call(
    call: &Call<'_>,
    state: &State,
    table: &Table,
    locator: &Locator,
    navigation: &str,
) -> Result<Response, DvError> {
    check_locator(table, locator)?;
    let Some((column, _)) = table.navigation(navigation) else {
        if table.collection(navigation).is_some() {
            return Err(DvError::bad_request(
                "0x80060888",
                "Associating through a collection-valued navigation property is not supported by the sandbox; bind the lookup on the related row instead.",
            ));
        }
        return Err(read::unknown_property(table, navigation));
    };
    match call.method {
        Method::GET => {
            let store = call.store();
            let id = store
                .find(table, locator)
                .ok_or_else(|| not_found(table, locator))?;
            let row = store
                .get(table, &id)
                .ok_or_else(|| not_found(table, locator))?;
            let property = column.property();
            let target = row
                .get(format!("{property}{LOOKUP_TABLE}"))
                .and_then(Value::as_str)
                .and_then(|t| state.schema.table(t));
            match (target, row.get(&property).and_then(Value::as_str)) {
                (Some(target), Some(rid)) => Ok(json(
                    StatusCode::OK,
                    &json!({
                        "@odata.context": format!("{}/$metadata#$ref", call.api_root()),
                        "@odata.id": format!("{}/{}({rid})", call.api_root(), target.set()),
                    }),
                )),
                _ => Ok(empty(StatusCode::NO_CONTENT)),
            }
        }
        Method::PUT => {
            let body = call.json_body(table)?;
            let Some(reference) = body.get("@odata.id") else {
                return Err(DvError::payload(
                    table,
                    "The request body of a $ref call must be {\"@odata.id\": \"<entityset>(<id>)\"}.",
                ));
            };
            let mut changes = Map::new();
            changes.insert(format!("{navigation}@odata.bind"), reference.clone());
            update_existing(call, state, table, locator, changes)
        }
        Method::DELETE => {
            let mut changes = Map::new();
            changes.insert(format!("{navigation}@odata.bind"), Value::Null);
            update_existing(call, state, table, locator, changes)
        }
        _ => Err(DvError::method(&call.method)),
    }
}

/// `CreateMultiple`, `UpdateMultiple`, `UpsertMultiple`: all-or-nothing.
fn bulk(call: &Call<'_>, state: &State, table: &Table, action: &str) -> Result<Response, DvError> {
    if !matches!(
        action,
        "CreateMultiple" | "UpdateMultiple" | "UpsertMultiple"
    ) {
        return Err(DvError::no_segment(&format!(
            "Microsoft.Dynamics.CRM.{action}"
        )));
    }
    let body = call.json_body(table)?;
    let Some(Value::Array(targets)) = body.get("Targets") else {
        return Err(DvError::bad_request(
            "0x80040203",
            &format!(
                "{action}: the request body needs a 'Targets' array of {} records.",
                table.logical()
            ),
        ));
    };
    let mut store = call.store();
    let mut undo = Vec::new();
    let mut ids = Vec::new();
    let mut results = Vec::new();
    for target in targets {
        let Value::Object(record) = target else {
            rollback(&state.schema, &mut store, undo);
            return Err(DvError::payload(
                table,
                "Each item of 'Targets' must be an object.",
            ));
        };
        let mut record = record.clone();
        let reference = record.remove("@odata.id");
        let outcome = match action {
            "CreateMultiple" => {
                let now = call.sandbox.now_dataverse();
                create(
                    &state.schema,
                    &mut store,
                    table,
                    &record,
                    None,
                    &now,
                    || call.sandbox.new_guid(),
                )
                .map(|(id, _)| {
                    undo.push((table.logical().to_owned(), id.clone(), None));
                    Upserted {
                        id,
                        created: true,
                        row: Value::Null,
                    }
                })
            }
            _ => {
                let locator = match reference.as_ref().and_then(Value::as_str) {
                    Some(text) => path::parse_reference(text)
                        .filter(|(set, _)| set == table.set())
                        .map(|(_, l)| l)
                        .ok_or_else(|| {
                            DvError::bad_request(
                                "0x80040203",
                                &format!(
                                    "'@odata.id' '{text}' does not name a {} record.",
                                    table.logical()
                                ),
                            )
                        }),
                    None => record
                        .get(table.id())
                        .and_then(Value::as_str)
                        .map(|id| Locator::Id(id.to_ascii_lowercase()))
                        .ok_or_else(|| {
                            DvError::bad_request(
                                "0x80040203",
                                &format!(
                                    "{action}: each target needs its primary key '{}'{}.",
                                    table.id(),
                                    if action == "UpsertMultiple" {
                                        " or '@odata.id'"
                                    } else {
                                        ""
                                    }
                                ),
                            )
                        }),
                };
                locator.and_then(|locator| {
                    let condition = if action == "UpdateMultiple" {
                        Condition::Exists
                    } else {
                        Condition::None
                    };
                    upsert(
                        call,
                        &state.schema,
                        &mut store,
                        table,
                        &locator,
                        &record,
                        condition,
                        &mut undo,
                    )
                })
            }
        };
        match outcome {
            Ok(done) => {
                results.push(json!({ "RecordCreated": done.created, "Id": done.id }));
                ids.push(done.id);
            }
            Err(error) => {
                rollback(&state.schema, &mut store, undo);
                return Err(error);
            }
        }
    }
    call.changed();
    Ok(match action {
        "CreateMultiple" => json(
            StatusCode::OK,
            &json!({
                "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", call.api_root()),
                "Ids": ids,
            }),
        ),
        "UpsertMultiple" => json(
            StatusCode::OK,
            &json!({
                "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.UpsertMultipleResponse", call.api_root()),
                "Results": results,
            }),
        ),
        _ => empty(StatusCode::NO_CONTENT),
    })
}
