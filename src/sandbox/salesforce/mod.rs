//! The Salesforce REST API emulator: `/services/data/vNN.N/…`.
//!
//! - [`schema`]: the objects and fields, from `sandbox/schemas/salesforce.json`.
//! - [`store`]: records in memory; [`write`](mod@write): create/update/delete validation;
//!   [`soql`]: queries; [`ids`]: 15/18-character record ids.
//!
//! Resources: the versions list and resource directory, sObject create / retrieve / update /
//! delete, get / upsert / delete by External ID, describe and describeGlobal, `updated` and
//! `deleted`, `query` / `queryAll` with cursors (`nextRecordsUrl`), `limits`, sObject
//! Collections (`composite/sobjects`), and Composite (`composite`: up to 25 subrequests
//! with `@{ref.path}` references and `allOrNone` rollback, see [`composite`]). sObject
//! Rows honour conditional request headers ([`conditional`]). Errors are Salesforce's `[{"message","errorCode",
//! "fields"}]` arrays with its codes and wording (`shared/reference/crm-apis.md` part B).
//!
//! Bearer tokens, the daily API allocation, `Sforce-Limit-Info` and injected faults are
//! handled for every API by the sandbox's gate; this module only answers admitted calls.
//! Each response names its endpoint for `/_sandbox/stats` as a template such as
//! `/services/data/vXX.X/sobjects/Opportunity/{id}` (the object name is kept — it is part
//! of the API surface, not an id — but unknown names become `{sobject}`).

pub mod composite;
pub mod conditional;
pub mod ids;
pub mod schema;
pub mod soql;
pub mod store;
pub mod write;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, Endpoint, Rng, Sandbox, json_response, lock, seed_data};
use conditional::Conditions;
use schema::Schema;
use soql::{Ordered, Out};
use store::Store;
use write::{Body, SfError, Target, Undo};

/// Oldest and newest API versions served (`v20.0` is Winter '11, `v64.0` Summer '25).
const MIN_VERSION: u32 = 20;
const MAX_VERSION: u32 = 64;
/// Salesforce keeps at most this many query cursors open per user; opening another closes
/// the oldest.
const MAX_CURSORS: usize = 10;
/// A cursor unused this long is gone.
const CURSOR_IDLE: Duration = Duration::from_secs(15 * 60);
/// Default and bounds of `Sforce-Query-Options: batchSize=N`.
const DEFAULT_BATCH: usize = 2000;
const MIN_BATCH: usize = 200;
/// Records per sObject Collections call.
const MAX_COLLECTION: usize = 200;

/// An open query cursor (`nextRecordsUrl`).
#[derive(Debug)]
struct Cursor {
    plan: soql::Plan,
    rows: Vec<u32>,
    batch: usize,
    resource: &'static str,
    last_used: SystemTime,
}

#[derive(Debug, Default)]
struct Cursors {
    open: HashMap<String, Cursor>,
    order: VecDeque<String>,
}

#[derive(Debug)]
struct Data {
    store: Store,
    cursors: Cursors,
}

/// The emulated org: schema, records and open query cursors.
#[derive(Debug)]
pub struct State {
    schema: Schema,
    data: Mutex<Data>,
    /// Isolation for Composite requests: every other access to the org holds this shared
    /// while a composite holds it exclusively, so no other call sees (or writes between)
    /// its uncommitted subrequests, and rolling it back undoes only its own changes. The
    /// handlers keep locking `data` per step, so a composite can run its subrequests
    /// through the very handlers of the standalone endpoints.
    transaction: RwLock<()>,
}

impl State {
    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.transaction
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.transaction
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Loads the embedded schema (`sandbox/schemas/salesforce.json`).
    pub fn new() -> anyhow::Result<State> {
        let schema = Schema::load()?;
        let store = Store::new(&schema);
        Ok(State {
            schema,
            data: Mutex::new(Data {
                store,
                cursors: Cursors::default(),
            }),
            transaction: RwLock::new(()),
        })
    }

    /// The objects and fields served.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Forgets all records and cursors.
    pub fn reset(&self) {
        let _shared = self.shared();
        let mut data = lock(&self.data);
        data.store = Store::new(&self.schema);
        data.cursors = Cursors::default();
    }

    /// Records as JSON for `--data`: `{"Opportunity": [{field: value, …}], …}`.
    pub fn snapshot(&self) -> Value {
        // Shared: a snapshot saved to disk must not contain a composite's uncommitted writes.
        let _shared = self.shared();
        lock(&self.data).store.snapshot(&self.schema)
    }

    /// Inverse of [`State::snapshot`]; `Null` empties the org.
    pub fn restore(&self, value: Value) -> anyhow::Result<()> {
        let store = Store::restore(&self.schema, &value)?;
        let _shared = self.shared();
        let mut data = lock(&self.data);
        data.store = store;
        data.cursors = Cursors::default();
        Ok(())
    }

    /// Adds `count` customers: an Account per [`seed_data::company`] (skipping names that
    /// already exist, so seeding twice does not duplicate them), a Contact, an Opportunity
    /// and, for every other opportunity, a Microsoft solution.
    pub fn seed(&self, sandbox: &Sandbox, rng: &mut Rng, count: usize) {
        const STAGES: &[&str] = &[
            "Prospecting",
            "Qualification",
            "Needs Analysis",
            "Value Proposition",
            "Proposal/Price Quote",
            "Negotiation/Review",
        ];
        const PRODUCTS: &[&str] = &[
            "Azure migration",
            "Dynamics 365 rollout",
            "Security assessment",
            "Data platform",
            "Copilot adoption",
        ];
        const SOLUTIONS: &[(&str, &str)] = &[
            ("SOL-34104-EBB", "Contoso Cloud Migration"),
            ("SOL-1234-PQRS", "Fabrikam Security Suite"),
            ("SOL-Microsoft365", "Microsoft365"),
        ];
        let schema = &self.schema;
        let (Some(account), Some(contact), Some(opportunity), Some(solution)) = (
            schema.object("Account"),
            schema.object("Contact"),
            schema.object("Opportunity"),
            schema.object("Microsoft_Solution__c"),
        ) else {
            return;
        };
        let now = sandbox.now_datetime();
        let shared = self.shared();
        let mut data = lock(&self.data);
        let store = &mut data.store;
        let name_field = schema.objects[account].must("Name");
        let existing: HashSet<String> = store.tables[account]
            .records
            .iter()
            .filter_map(|r| r.values[name_field].as_text().map(str::to_owned))
            .collect();
        for index in 0..count {
            let company = seed_data::company(index);
            if existing.contains(&company.name) {
                continue;
            }
            // Created some time in the last year, so date filters have something to find.
            let age = i64::try_from(rng.below(365 * 86_400)).unwrap_or(0);
            let created =
                write::format_datetime(&crate::mapping::transforms::datetime::DateTime::from_unix(
                    now.unix_seconds() - age,
                    0,
                ));
            let mut save = |object: usize, body: Vec<(&str, Value)>| -> Option<String> {
                let body = Body(body.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
                let row = write::save(
                    schema,
                    store,
                    object,
                    write::Input {
                        body: &body,
                        raw: "",
                    },
                    Target::Create,
                    &created,
                    &mut Vec::new(),
                )
                .ok()?;
                let obj = &schema.objects[object];
                Some(
                    store.tables[object].records[row as usize]
                        .id(obj)
                        .to_owned(),
                )
            };
            let Some(account_id) = save(
                account,
                vec![
                    ("Name", json!(company.name)),
                    ("BillingStreet", json!(company.street)),
                    ("BillingCity", json!(company.city)),
                    ("BillingState", json!(company.state)),
                    ("BillingPostalCode", json!(company.postal_code)),
                    ("BillingCountryCode", json!(company.country_code)),
                    (
                        "Phone",
                        json!(format!("+1 425 555 {:04}", rng.below(10_000))),
                    ),
                    ("Type", json!("Customer - Direct")),
                ],
            ) else {
                continue;
            };
            let person = seed_data::person(rng, &company);
            let contact_id = save(
                contact,
                vec![
                    ("FirstName", json!(person.first_name)),
                    ("LastName", json!(person.last_name)),
                    ("Email", json!(person.email)),
                    ("Phone", json!(person.phone)),
                    ("AccountId", json!(account_id)),
                    ("MailingCity", json!(company.city)),
                    ("MailingPostalCode", json!(company.postal_code)),
                    ("MailingCountryCode", json!(company.country_code)),
                ],
            );
            let close_in_days = 30 + i64::try_from(rng.below(300)).unwrap_or(0);
            let close = crate::mapping::transforms::datetime::DateTime::from_unix(
                now.unix_seconds() + close_in_days * 86_400,
                0,
            )
            .date_string();
            let product = *rng.pick(PRODUCTS);
            let opportunity_id = save(
                opportunity,
                vec![
                    ("Name", json!(format!("{} - {product}", company.name))),
                    ("AccountId", json!(account_id)),
                    ("ContactId", contact_id.map_or(Value::Null, Value::String)),
                    ("StageName", json!(*rng.pick(STAGES))),
                    ("CloseDate", json!(close)),
                    ("Amount", json!(seed_data::deal_value(rng))),
                    ("CurrencyIsoCode", json!("USD")),
                    ("LeadSource", json!("Partner Referral")),
                ],
            );
            if let Some(opportunity_id) = opportunity_id
                && index % 2 == 0
            {
                let (id, name) = *rng.pick(SOLUTIONS);
                save(
                    solution,
                    vec![
                        ("Name", json!(name)),
                        ("Solution_Id__c", json!(id)),
                        ("Opportunity__c", json!(opportunity_id)),
                    ],
                );
            }
        }
        drop(data);
        drop(shared);
        sandbox.changed();
    }
}

/// Routes under `/services/data`; paths are parsed here rather than by the router so that
/// trailing slashes, tunnelled methods and Salesforce's own 404/405 bodies behave as the
/// real API does.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/services/data", any(dispatch))
        .route("/services/data/", any(dispatch))
        .route("/services/data/{*rest}", any(dispatch))
}

/// One parsed request.
struct Call<'a> {
    sandbox: &'a Sandbox,
    method: Method,
    version: String,
    major: u32,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    /// Inside a composite request: where changes are noted instead of announced, so that
    /// nothing (persistence included) learns of writes that may yet be rolled back.
    changes: Option<&'a AtomicBool>,
}

impl Call<'_> {
    /// Announces that records changed (now, or at the composite's commit).
    fn changed(&self) {
        match self.changes {
            Some(flag) => flag.store(true, Ordering::Relaxed),
            None => self.sandbox.changed(),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn state(&self) -> &State {
        &self.sandbox.salesforce
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn sf_error(status: StatusCode, code: &str, message: &str) -> Response {
    Api::Salesforce.error(status, code, message)
}

fn sf_errors(status: StatusCode, error: &SfError) -> Response {
    json_response(status, &json!([error.rest_json()]))
}

fn not_found() -> Response {
    sf_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

fn deleted() -> Response {
    sf_error(
        StatusCode::NOT_FOUND,
        "ENTITY_IS_DELETED",
        "entity is deleted",
    )
}

fn method_not_allowed(method: &Method, allowed: &str) -> Response {
    let mut response = sf_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
    );
    if let Ok(value) = HeaderValue::from_str(allowed) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

fn ordered_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "[]".into());
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

fn with_endpoint(mut response: Response, template: String) -> Response {
    response.extensions_mut().insert(Endpoint(template));
    response
}

/// Decodes a path segment: percent escapes, and `+` as a space the way Java's URL decoder
/// does (simple-salesforce quotes External ID values with `quote_plus`).
fn decode_segment(segment: &str) -> String {
    let spaced = segment.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) async fn dispatch(
    AxumState(sandbox): AxumState<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let rest = path.strip_prefix("/services/data").unwrap_or("");
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let params: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();

    let Some(first) = segments.first() else {
        let response = if method == Method::GET || method == Method::HEAD {
            json_response(StatusCode::OK, &versions())
        } else {
            method_not_allowed(&method, "GET,HEAD")
        };
        return with_endpoint(response, "/services/data/".into());
    };
    let Some(major) = parse_version(first) else {
        return with_endpoint(not_found(), "/services/data/{unknown}".into());
    };
    // `?_HttpMethod=PATCH` lets clients without PATCH tunnel it through POST.
    let method = match params.iter().find(|(k, _)| k == "_HttpMethod") {
        Some((_, m)) if method == Method::POST => {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or(method)
        }
        _ => method,
    };
    let call = Call {
        sandbox: &sandbox,
        method,
        version: format!("{major}.0"),
        major,
        params,
        headers,
        body,
        changes: None,
    };
    let tail: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
    let (response, template) = if tail == ["composite"] {
        // Takes the gate exclusively itself.
        (composite::handle(&call), "/composite".to_owned())
    } else {
        let _shared = call.state().shared();
        route(&call, &tail)
    };
    with_endpoint(response, format!("/services/data/vXX.X{template}"))
}

fn parse_version(segment: &str) -> Option<u32> {
    let number = segment.strip_prefix('v')?;
    let major = number.strip_suffix(".0")?;
    let major: u32 = major.parse().ok()?;
    (MIN_VERSION..=MAX_VERSION)
        .contains(&major)
        .then_some(major)
}

/// `[{"label":"Winter '24","url":"/services/data/v59.0","version":"59.0"}, …]`.
fn versions() -> Value {
    Value::Array(
        (MIN_VERSION..=MAX_VERSION)
            .map(|major| {
                // Three releases a year, v20.0 = Winter '11.
                let k = major - 20;
                let season = ["Winter", "Spring", "Summer"][(k % 3) as usize];
                json!({
                    "label": format!("{season} '{:02}", 11 + k / 3),
                    "url": format!("/services/data/v{major}.0"),
                    "version": format!("{major}.0"),
                })
            })
            .collect(),
    )
}

fn route(call: &Call<'_>, tail: &[&str]) -> (Response, String) {
    let v = &call.version;
    let get_only = |response: Response| {
        if call.method == Method::GET || call.method == Method::HEAD {
            response
        } else {
            method_not_allowed(&call.method, "GET,HEAD")
        }
    };
    match tail {
        [] => {
            let resources = json!({
                "sobjects": format!("/services/data/v{v}/sobjects"),
                "query": format!("/services/data/v{v}/query"),
                "queryAll": format!("/services/data/v{v}/queryAll"),
                "limits": format!("/services/data/v{v}/limits"),
                "composite": format!("/services/data/v{v}/composite"),
            });
            (
                get_only(json_response(StatusCode::OK, &resources)),
                "/".into(),
            )
        }
        ["limits"] => (get_only(limits(call)), "/limits".into()),
        ["sobjects"] => (get_only(describe_global(call)), "/sobjects/".into()),
        [resource @ ("query" | "queryAll")] => {
            let all = *resource == "queryAll";
            (get_only(query(call, all)), format!("/{resource}"))
        }
        [resource @ ("query" | "queryAll"), locator] => (
            get_only(query_more(call, locator)),
            format!("/{resource}/{{locator}}"),
        ),
        ["composite", "sobjects"] => (collections(call), "/composite/sobjects".into()),
        // Reached only from inside a composite (dispatch sends `/composite` straight to
        // it): a composite cannot nest another.
        ["composite"] => (composite::nested(), "/composite".into()),
        ["sobjects", type_name, rest @ ..] => {
            let Some(object) = call.state().schema.object(type_name) else {
                return (not_found(), "/sobjects/{sobject}".into());
            };
            let name = call.state().schema.objects[object].name.clone();
            match rest {
                [] => (
                    match call.method {
                        Method::POST => create(call, object),
                        Method::GET | Method::HEAD => {
                            json_response(StatusCode::OK, &sobject_info(call, object))
                        }
                        _ => method_not_allowed(&call.method, "GET,HEAD,POST"),
                    },
                    format!("/sobjects/{name}"),
                ),
                ["describe"] => (
                    get_only(json_response(StatusCode::OK, &describe(call, object))),
                    format!("/sobjects/{name}/describe"),
                ),
                ["updated"] => (
                    get_only(updated(call, object)),
                    format!("/sobjects/{name}/updated"),
                ),
                ["deleted"] => (
                    get_only(deleted_list(call, object)),
                    format!("/sobjects/{name}/deleted"),
                ),
                [id] => (record(call, object, id), format!("/sobjects/{name}/{{id}}")),
                [field, value] => (
                    by_external_id(call, object, field, value),
                    format!("/sobjects/{name}/{{field}}/{{value}}"),
                ),
                _ => (not_found(), format!("/sobjects/{name}/(unknown)")),
            }
        }
        _ => (not_found(), "/(unknown)".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Records

/// Where an id segment leads.
enum Found {
    Live(u32),
    Deleted,
    Missing,
}

fn find(store: &Store, schema: &Schema, object: usize, id: &str) -> Found {
    let Some(id) = ids::normalize(id) else {
        return Found::Missing;
    };
    if !id.starts_with(&schema.objects[object].key_prefix) {
        return Found::Missing;
    }
    match store.tables[object].row(&id) {
        Some(row)
            if store.tables[object].records[row as usize]
                .deleted_at
                .is_some() =>
        {
            Found::Deleted
        }
        Some(row) => Found::Live(row),
        None => Found::Missing,
    }
}

fn create(call: &Call<'_>, object: usize) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let body = match write::parse_body(&call.body, &schema.objects[object].name) {
        Ok(body) => body,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
    };
    let now = call.sandbox.now_salesforce();
    let mut data = lock(&state.data);
    match write::save(
        schema,
        &mut data.store,
        object,
        write::Input {
            body: &body,
            raw: &call.body_text(),
        },
        Target::Create,
        &now,
        &mut Vec::new(),
    ) {
        Ok(row) => {
            let id = data.store.tables[object].records[row as usize]
                .id(&schema.objects[object])
                .to_owned();
            drop(data);
            call.changed();
            let mut response = ordered_response(
                StatusCode::CREATED,
                &Ordered(vec![
                    ("id".into(), Out::Json(json!(id))),
                    ("success".into(), Out::Json(json!(true))),
                    ("errors".into(), Out::Json(json!([]))),
                ]),
            );
            if let Ok(location) = HeaderValue::from_str(&format!(
                "/services/data/v{}/sobjects/{}/{id}",
                call.version, schema.objects[object].name
            )) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(error) => sf_errors(StatusCode::BAD_REQUEST, &error),
    }
}

/// `?fields=A,B` → field indexes; `Err` for unknown names.
fn selected_fields(call: &Call<'_>, object: usize) -> Result<Option<Vec<usize>>, SfError> {
    let Some(list) = call.param("fields") else {
        return Ok(None);
    };
    let obj = &call.state().schema.objects[object];
    let mut fields = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match obj.field(name) {
            Some(index) => {
                if !fields.contains(&index) {
                    fields.push(index);
                }
            }
            None => {
                return Err(SfError::new(
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type {}", obj.name),
                ));
            }
        }
    }
    Ok(Some(fields))
}

fn get_record(call: &Call<'_>, object: usize, row: u32) -> Response {
    let fields = match selected_fields(call, object) {
        Ok(fields) => fields,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
    };
    let state = call.state();
    let obj = &state.schema.objects[object];
    let account = is_account(obj);
    let conditions = Conditions::for_read(&call.headers, account);
    let data = lock(&state.data);
    let stored = &data.store.tables[object].records[row as usize];
    if conditions.not_modified(obj, stored) {
        return conditional::not_modified(obj, stored, account);
    }
    let record = soql::render_record(
        &state.schema,
        &data.store,
        object,
        row,
        fields.as_deref(),
        &call.version,
    );
    let mut response = ordered_response(StatusCode::OK, &record);
    if account {
        conditional::add_etag(&mut response, obj, stored);
    }
    response
}

/// ETags and `If-Match` / `If-None-Match` exist for Account rows only (B7).
fn is_account(object: &schema::Object) -> bool {
    object.name == "Account"
}

/// Updates `row` if `conditions` hold, checked under the same lock as the write so no
/// other request can slip in between.
fn update(
    call: &Call<'_>,
    object: usize,
    row: u32,
    body: &Body,
    conditions: &Conditions,
) -> Result<(), Response> {
    let state = call.state();
    let now = call.sandbox.now_salesforce();
    let mut data = lock(&state.data);
    conditions.check_write(
        &state.schema.objects[object],
        &data.store.tables[object].records[row as usize],
    )?;
    write::save(
        &state.schema,
        &mut data.store,
        object,
        write::Input {
            body,
            raw: &call.body_text(),
        },
        Target::Update(row),
        &now,
        &mut Vec::new(),
    )
    .map_err(|error| sf_errors(StatusCode::BAD_REQUEST, &error))?;
    drop(data);
    call.changed();
    Ok(())
}

/// Deletes `row` if `conditions` hold (checked under the write's lock).
fn remove(call: &Call<'_>, object: usize, row: u32, conditions: &Conditions) -> Response {
    let state = call.state();
    let now = call.sandbox.now_salesforce();
    let mut data = lock(&state.data);
    if let Err(refused) = conditions.check_write(
        &state.schema.objects[object],
        &data.store.tables[object].records[row as usize],
    ) {
        return refused;
    }
    write::delete(&state.schema, &mut data.store, object, row, &now);
    drop(data);
    call.changed();
    StatusCode::NO_CONTENT.into_response()
}

/// `/sobjects/{Type}/{id}`. A segment that is not an id of this object is taken as an
/// External ID field name without a value, which Salesforce answers with this 404.
fn record(call: &Call<'_>, object: usize, id: &str) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let found = {
        let data = lock(&state.data);
        find(&data.store, schema, object, id)
    };
    if ids::normalize(id).is_none() {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Provided external ID field does not exist or is not accessible: {id}"),
        );
    }
    let allowed = "GET,HEAD,PATCH,DELETE";
    match (found, &call.method) {
        (Found::Missing, _) => not_found(),
        (Found::Deleted, _) => deleted(),
        (Found::Live(row), &Method::GET | &Method::HEAD) => get_record(call, object, row),
        (Found::Live(row), &Method::PATCH) => {
            let conditions =
                match Conditions::for_write(&call.headers, is_account(&schema.objects[object])) {
                    Ok(conditions) => conditions,
                    Err(invalid) => return invalid,
                };
            let body = match write::parse_body(&call.body, &schema.objects[object].name) {
                Ok(body) => body,
                Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
            };
            match update(call, object, row, &body, &conditions) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(refused) => refused,
            }
        }
        (Found::Live(row), &Method::DELETE) => {
            match Conditions::for_write(&call.headers, is_account(&schema.objects[object])) {
                Ok(conditions) => remove(call, object, row, &conditions),
                Err(invalid) => invalid,
            }
        }
        (Found::Live(_), method) => method_not_allowed(method, allowed),
    }
}

fn save_result(id: &str, created: Option<bool>) -> Ordered {
    let mut members = vec![
        ("id".to_owned(), Out::Json(json!(id))),
        ("success".to_owned(), Out::Json(json!(true))),
        ("errors".to_owned(), Out::Json(json!([]))),
    ];
    if let Some(created) = created {
        members.push(("created".to_owned(), Out::Json(json!(created))));
    }
    Ordered(members)
}

/// `/sobjects/{Type}/{ExtField}/{value}`: get, upsert (PATCH) or delete by External ID.
fn by_external_id(call: &Call<'_>, object: usize, field_name: &str, value: &str) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let obj = &schema.objects[object];
    let no_field = || {
        sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "Provided external ID field does not exist or is not accessible: {field_name}"
            ),
        )
    };
    // UNVERIFIED: a field that exists but is not an External ID gets the same 404 as an
    // unknown one (it is "not accessible" as an external id).
    let Some(field) = obj.field(field_name) else {
        return no_field();
    };
    let is_id = field == obj.id_field;
    if !is_id && !obj.fields[field].external_id {
        return no_field();
    }
    let rows: Vec<u32> = {
        let data = lock(&state.data);
        if is_id {
            match find(&data.store, schema, object, value) {
                Found::Live(row) => vec![row],
                Found::Deleted | Found::Missing => Vec::new(),
            }
        } else {
            data.store.tables[object].rows_with(field, value).to_vec()
        }
    };
    if rows.len() > 1 {
        let data = lock(&state.data);
        let urls: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!(format!(
                    "/services/data/v{}/sobjects/{}/{}",
                    call.version,
                    obj.name,
                    data.store.tables[object].records[*row as usize].id(obj)
                ))
            })
            .collect();
        return json_response(StatusCode::MULTIPLE_CHOICES, &Value::Array(urls));
    }
    let row = rows.first().copied();
    match call.method {
        Method::GET | Method::HEAD => match row {
            Some(row) => get_record(call, object, row),
            None => not_found(),
        },
        Method::DELETE => match row {
            Some(row) => remove(call, object, row, &Conditions::default()),
            None => not_found(),
        },
        Method::PATCH => upsert(call, object, field, value, row),
        ref method => method_not_allowed(method, "GET,HEAD,PATCH,DELETE"),
    }
}

fn upsert(call: &Call<'_>, object: usize, field: usize, value: &str, row: Option<u32>) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let obj = &schema.objects[object];
    let field_name = &obj.fields[field].name;
    let mut body = match write::parse_body(&call.body, &obj.name) {
        Ok(body) => body,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
    };
    // UNVERIFIED: the URL names the record; a different value for the key in the body is
    // refused rather than silently re-keying the record.
    if let Some(given) = body.get(field_name) {
        let given_text = match given {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !given_text.eq_ignore_ascii_case(value) {
            return sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &format!(
                    "The value of {field_name} in the request body ({given_text}) does not match the value in the URL ({value})."
                ),
            );
        }
        body.0.retain(|(k, _)| !k.eq_ignore_ascii_case(field_name));
    }
    // Since v46.0 the upsert answer carries `created`, and an update answers 200 with a
    // body (before: 204). UNVERIFIED for single-record upsert; documented for collections.
    let modern = call.major >= 46;
    match row {
        Some(row) => match update(call, object, row, &body, &Conditions::default()) {
            Ok(()) if modern => {
                let data = lock(&state.data);
                let id = data.store.tables[object].records[row as usize]
                    .id(obj)
                    .to_owned();
                ordered_response(StatusCode::OK, &save_result(&id, Some(false)))
            }
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(refused) => refused,
        },
        None => {
            if field == obj.id_field {
                return not_found();
            }
            if call
                .param("updateOnly")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                return not_found();
            }
            body.0
                .push((field_name.clone(), Value::String(value.to_owned())));
            let now = call.sandbox.now_salesforce();
            let mut data = lock(&state.data);
            match write::save(
                schema,
                &mut data.store,
                object,
                write::Input {
                    body: &body,
                    raw: &call.body_text(),
                },
                Target::Create,
                &now,
                &mut Vec::new(),
            ) {
                Ok(row) => {
                    let id = data.store.tables[object].records[row as usize]
                        .id(obj)
                        .to_owned();
                    drop(data);
                    call.changed();
                    ordered_response(
                        StatusCode::CREATED,
                        &save_result(&id, modern.then_some(true)),
                    )
                }
                Err(error) => sf_errors(StatusCode::BAD_REQUEST, &error),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// sObject Collections

#[derive(Deserialize)]
struct CollectionRequest {
    #[serde(default, rename = "allOrNone")]
    all_or_none: bool,
    records: Vec<Body>,
}

/// `POST` (create) and `PATCH` (update) of up to 200 records; `DELETE ?ids=`.
fn collections(call: &Call<'_>) -> Response {
    match call.method {
        Method::POST | Method::PATCH => save_collection(call, call.method == Method::POST),
        Method::DELETE => delete_collection(call),
        ref method => method_not_allowed(method, "POST,PATCH,DELETE"),
    }
}

fn save_collection(call: &Call<'_>, creating: bool) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let request: CollectionRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &write::json_syntax_error(error)),
    };
    if request.records.len() > MAX_COLLECTION {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    let raw = call.body_text();
    let now = call.sandbox.now_salesforce();
    let mut data = lock(&state.data);
    let mut undo: Vec<Undo> = Vec::new();
    let mut results: Vec<Result<String, SfError>> = Vec::new();
    for record in &request.records {
        let result = save_one(
            schema,
            &mut data.store,
            record,
            &raw,
            creating,
            &now,
            &mut undo,
        );
        let failed = result.is_err();
        results.push(result);
        if failed && request.all_or_none {
            break;
        }
    }
    let failed = results.iter().any(Result::is_err);
    let rolled_back = failed && request.all_or_none;
    if rolled_back {
        write::roll_back(schema, &mut data.store, undo);
    }
    drop(data);
    if !rolled_back && results.iter().any(Result::is_ok) {
        call.changed();
    }
    let rolled = SfError::new(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    );
    let out: Vec<Value> = (0..request.records.len())
        .map(|i| match results.get(i) {
            Some(Ok(id)) if !rolled_back => json!({ "id": id, "success": true, "errors": [] }),
            Some(Err(error)) => json!({ "success": false, "errors": [error.collection_json()] }),
            _ => json!({ "success": false, "errors": [rolled.collection_json()] }),
        })
        .collect();
    json_response(StatusCode::OK, &Value::Array(out))
}

fn save_one(
    schema: &Schema,
    store: &mut Store,
    record: &Body,
    raw: &str,
    creating: bool,
    now: &str,
    undo: &mut Vec<Undo>,
) -> Result<String, SfError> {
    let type_name = record
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| SfError::new("INVALID_TYPE", "Must send a concrete entity type."))?;
    let object = schema.object(type_name).ok_or_else(|| {
        SfError::new(
            "INVALID_TYPE",
            format!("sObject type '{type_name}' is not supported."),
        )
    })?;
    let obj = &schema.objects[object];
    let target = if creating {
        Target::Create
    } else {
        let id = record.get("id").and_then(Value::as_str).unwrap_or("");
        match find(store, schema, object, id) {
            Found::Live(row) => Target::Update(row),
            Found::Deleted => return Err(SfError::new("ENTITY_IS_DELETED", "entity is deleted")),
            Found::Missing if id.is_empty() => {
                return Err(SfError::on(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    vec![],
                ));
            }
            Found::Missing => {
                return Err(SfError::new("MALFORMED_ID", format!("malformed id {id}")));
            }
        }
    };
    let mut body = record.clone();
    if !creating {
        body.0.retain(|(k, _)| !k.eq_ignore_ascii_case("id"));
    }
    let row = write::save(
        schema,
        store,
        object,
        write::Input { body: &body, raw },
        target,
        now,
        undo,
    )?;
    Ok(store.tables[object].records[row as usize]
        .id(obj)
        .to_owned())
}

fn delete_collection(call: &Call<'_>) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let Some(list) = call.param("ids") else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "MISSING_ARGUMENT",
            "Missing parameter: ids",
        );
    };
    let list: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if list.len() > MAX_COLLECTION {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    let all_or_none = call
        .param("allOrNone")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let now = call.sandbox.now_salesforce();
    let mut data = lock(&state.data);
    let targets: Vec<Result<(usize, u32, String), SfError>> = list
        .iter()
        .map(|id| {
            let object = ids::normalize(id)
                .and_then(|n| schema.object_by_prefix(&n[..3]))
                .ok_or_else(|| SfError::new("MALFORMED_ID", format!("malformed id {id}")))?;
            match find(&data.store, schema, object, id) {
                Found::Live(row) => Ok((object, row, ids::normalize(id).unwrap_or_default())),
                Found::Deleted => Err(SfError::new("ENTITY_IS_DELETED", "entity is deleted")),
                Found::Missing => Err(SfError::new(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                )),
            }
        })
        .collect();
    let any_failed = targets.iter().any(Result::is_err);
    let rolled = SfError::new(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    );
    let mut changed = false;
    let out: Vec<Value> = targets
        .iter()
        .map(|target| match target {
            Ok(_) if all_or_none && any_failed => {
                json!({ "success": false, "errors": [rolled.collection_json()] })
            }
            Ok((object, row, id)) => {
                write::delete(schema, &mut data.store, *object, *row, &now);
                changed = true;
                json!({ "id": id, "success": true, "errors": [] })
            }
            Err(error) => json!({ "success": false, "errors": [error.collection_json()] }),
        })
        .collect();
    drop(data);
    if changed {
        call.changed();
    }
    json_response(StatusCode::OK, &Value::Array(out))
}

// ---------------------------------------------------------------------------------------
// Queries

fn batch_size(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("sforce-query-options")?.to_str().ok()?;
    value.split([',', ';']).find_map(|option| {
        let (key, number) = option.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("batchSize") {
            return None;
        }
        let n: usize = number.trim().parse().ok()?;
        Some(n.clamp(MIN_BATCH, DEFAULT_BATCH))
    })
}

#[derive(serde::Serialize)]
struct QueryPage {
    #[serde(rename = "totalSize")]
    total_size: usize,
    done: bool,
    #[serde(rename = "nextRecordsUrl", skip_serializing_if = "Option::is_none")]
    next_records_url: Option<String>,
    records: Vec<Ordered>,
}

fn query(call: &Call<'_>, all: bool) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let Some(q) = call.param("q").filter(|q| !q.trim().is_empty()) else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "A query string has to be specified",
        );
    };
    let plan = match soql::plan(schema, q, call.sandbox.now_datetime()) {
        Ok(plan) => plan,
        Err(error) => return sf_error(StatusCode::BAD_REQUEST, error.code, &error.message),
    };
    let mut data = lock(&state.data);
    let outcome = soql::run(schema, &data.store, &plan, all);
    let rows = match outcome {
        soql::Outcome::Count(n) => {
            return json_response(
                StatusCode::OK,
                &json!({ "totalSize": n, "done": true, "records": [] }),
            );
        }
        soql::Outcome::Aggregate(n) => {
            return json_response(
                StatusCode::OK,
                &json!({ "totalSize": 1, "done": true, "records": [{ "attributes": { "type": "AggregateResult" }, "expr0": n }] }),
            );
        }
        soql::Outcome::Rows(rows) => rows,
    };
    let batch = batch_size(&call.headers).unwrap_or(DEFAULT_BATCH);
    let resource = if all { "queryAll" } else { "query" };
    let first = soql::render_rows(
        schema,
        &data.store,
        &plan,
        &rows[..rows.len().min(batch)],
        &call.version,
    );
    let total = rows.len();
    let next = if total > batch {
        let locator = open_cursor(call.sandbox, &mut data.cursors, plan, rows, batch, resource);
        Some(format!(
            "/services/data/v{}/{resource}/{locator}-{batch}",
            call.version
        ))
    } else {
        None
    };
    ordered_response(
        StatusCode::OK,
        &QueryPage {
            total_size: total,
            done: next.is_none(),
            next_records_url: next,
            records: first,
        },
    )
}

fn open_cursor(
    sandbox: &Sandbox,
    cursors: &mut Cursors,
    plan: soql::Plan,
    rows: Vec<u32>,
    batch: usize,
    resource: &'static str,
) -> String {
    let now = sandbox.now();
    expire_cursors(cursors, now);
    while cursors.open.len() >= MAX_CURSORS {
        match cursors.order.pop_front() {
            Some(oldest) => {
                cursors.open.remove(&oldest);
            }
            None => break,
        }
    }
    let locator = {
        let mut rng = sandbox.rng();
        format!(
            "01g{}",
            rng.string_from(
                b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                15
            )
        )
    };
    cursors.order.push_back(locator.clone());
    cursors.open.insert(
        locator.clone(),
        Cursor {
            plan,
            rows,
            batch,
            resource,
            last_used: now,
        },
    );
    locator
}

fn expire_cursors(cursors: &mut Cursors, now: SystemTime) {
    let stale: Vec<String> = cursors
        .open
        .iter()
        .filter(|(_, c)| now.duration_since(c.last_used).unwrap_or_default() > CURSOR_IDLE)
        .map(|(k, _)| k.clone())
        .collect();
    for key in stale {
        cursors.open.remove(&key);
        cursors.order.retain(|k| *k != key);
    }
}

fn query_more(call: &Call<'_>, locator: &str) -> Response {
    let state = call.state();
    let schema = &state.schema;
    let invalid = || {
        sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        )
    };
    let Some((id, offset)) = locator.rsplit_once('-') else {
        return invalid();
    };
    let Ok(offset) = offset.parse::<usize>() else {
        return invalid();
    };
    let now = call.sandbox.now();
    let mut data = lock(&state.data);
    expire_cursors(&mut data.cursors, now);
    let data = &mut *data;
    let Some(cursor) = data.cursors.open.get_mut(id) else {
        return invalid();
    };
    if offset > cursor.rows.len() {
        return invalid();
    }
    cursor.last_used = now;
    let batch = batch_size(&call.headers).unwrap_or(cursor.batch);
    let end = (offset + batch).min(cursor.rows.len());
    let records = soql::render_rows(
        schema,
        &data.store,
        &cursor.plan,
        &cursor.rows[offset..end],
        &call.version,
    );
    let next = (end < cursor.rows.len()).then(|| {
        format!(
            "/services/data/v{}/{}/{id}-{end}",
            call.version, cursor.resource
        )
    });
    ordered_response(
        StatusCode::OK,
        &QueryPage {
            total_size: cursor.rows.len(),
            done: next.is_none(),
            next_records_url: next,
            records,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Metadata, limits, replication

fn object_summary(call: &Call<'_>, object: usize) -> Value {
    let obj = &call.state().schema.objects[object];
    let base = format!("/services/data/v{}/sobjects/{}", call.version, obj.name);
    json!({
        "name": obj.name,
        "label": obj.label,
        "labelPlural": obj.label_plural,
        "keyPrefix": obj.key_prefix,
        "custom": obj.custom(),
        "createable": true,
        "updateable": true,
        "deletable": true,
        "queryable": true,
        "retrieveable": true,
        "searchable": true,
        "replicateable": true,
        "urls": {
            "sobject": base,
            "describe": format!("{base}/describe"),
            "rowTemplate": format!("{base}/{{ID}}"),
        },
    })
}

fn describe_global(call: &Call<'_>) -> Response {
    let objects: Vec<Value> = (0..call.state().schema.objects.len())
        .map(|i| object_summary(call, i))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "encoding": "UTF-8", "maxBatchSize": MAX_COLLECTION, "sobjects": objects }),
    )
}

fn sobject_info(call: &Call<'_>, object: usize) -> Value {
    json!({ "objectDescribe": object_summary(call, object), "recentItems": [] })
}

fn describe(call: &Call<'_>, object: usize) -> Value {
    let schema = &call.state().schema;
    let obj = &schema.objects[object];
    let mut summary = object_summary(call, object);
    let children: Vec<Value> = obj
        .child_relationships
        .iter()
        .map(|relationship| relationship.describe(schema))
        .collect();
    if let Some(map) = summary.as_object_mut() {
        map.insert(
            "fields".into(),
            Value::Array(obj.fields.iter().map(schema::Field::describe).collect()),
        );
        map.insert("childRelationships".into(), Value::Array(children));
    }
    summary
}

fn limits(call: &Call<'_>) -> Response {
    let (used, max) = call.sandbox.faults.salesforce_usage();
    let pair = |max: u64, remaining: u64| json!({ "Max": max, "Remaining": remaining });
    json_response(
        StatusCode::OK,
        &json!({
            "DailyApiRequests": pair(max, max.saturating_sub(used)),
            "ConcurrentAsyncGetReportInstances": pair(200, 200),
            "DailyAsyncApexExecutions": pair(250_000, 250_000),
            "DailyBulkApiBatches": pair(15_000, 15_000),
            "DailyBulkV2QueryJobs": pair(10_000, 10_000),
            "DataStorageMB": pair(1024, 1024),
            "FileStorageMB": pair(1024, 1024),
            "SingleEmail": pair(5_000, 5_000),
        }),
    )
}

/// `start` and `end` of the replication resources, seconds dropped (Salesforce ignores
/// them), as canonical date-times.
fn replication_window(call: &Call<'_>) -> Result<(String, String), SfError> {
    let read = |name: &str| -> Result<String, SfError> {
        let Some(text) = call.param(name) else {
            return Err(SfError::new(
                "MISSING_ARGUMENT",
                format!("Missing parameter: {name}"),
            ));
        };
        let Some(mut dt) = write::parse_datetime(text).filter(|_| text.len() > 10) else {
            return Err(SfError::new(
                "INVALID_PARAMETER_VALUE",
                format!("Invalid parameter value {name}: {text}"),
            ));
        };
        dt = dt.to_utc();
        dt.second = 0;
        dt.nanos = 0;
        Ok(write::format_datetime(&dt))
    };
    let start = read("start")?;
    let end = read("end")?;
    if end < start {
        return Err(SfError::new(
            "INVALID_REPLICATION_DATE",
            "startDate must chronologically precede endDate",
        ));
    }
    Ok((start, end))
}

fn now_minute(call: &Call<'_>) -> String {
    let mut now = call.sandbox.now_datetime();
    now.second = 0;
    now.nanos = 0;
    write::format_datetime(&now)
}

fn updated(call: &Call<'_>, object: usize) -> Response {
    let (start, end) = match replication_window(call) {
        Ok(window) => window,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
    };
    let state = call.state();
    let obj = &state.schema.objects[object];
    let modstamp = obj.must("SystemModstamp");
    let latest = now_minute(call).min(end.clone());
    let data = lock(&state.data);
    let found: Vec<Value> = data.store.tables[object]
        .records
        .iter()
        .filter(|r| r.deleted_at.is_none())
        .filter(|r| {
            r.values[modstamp]
                .as_text()
                .is_some_and(|t| t >= start.as_str() && t < latest.as_str())
        })
        .map(|r| json!(r.id(obj)))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "ids": found, "latestDateCovered": latest }),
    )
}

fn deleted_list(call: &Call<'_>, object: usize) -> Response {
    let (start, end) = match replication_window(call) {
        Ok(window) => window,
        Err(error) => return sf_errors(StatusCode::BAD_REQUEST, &error),
    };
    let state = call.state();
    let obj = &state.schema.objects[object];
    let latest = now_minute(call).min(end.clone());
    let data = lock(&state.data);
    let table = &data.store.tables[object];
    let found: Vec<Value> = table
        .records
        .iter()
        .filter_map(|r| r.deleted_at.as_deref().map(|at| (r, at)))
        .filter(|(_, at)| *at >= start.as_str() && *at < latest.as_str())
        .map(|(r, at)| json!({ "id": r.id(obj), "deletedDate": at }))
        .collect();
    let earliest = table
        .records
        .iter()
        .filter_map(|r| r.deleted_at.as_deref())
        .min()
        .map_or_else(|| latest.clone(), str::to_owned);
    json_response(
        StatusCode::OK,
        &json!({ "deletedRecords": found, "earliestDateAvailable": earliest, "latestDateCovered": latest }),
    )
}
