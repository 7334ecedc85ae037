//! Partner Center referrals: `/v1.0/engagements/referrals` (partner-center-api.md §1–§2).
//!
//! What it enforces, because the real service does:
//! - create: `name`, `type`, `customerProfile`, `consent`, `details` required; enums checked;
//!   a two-letter customer country; a co-sell (`Shared`) referral needs a solution, and a
//!   request for Microsoft's help needs a customer contact. Outbound creates land
//!   `Active/Accepted` whatever status was sent (the documented create example).
//! - JSON Patch with `replace` and `add` only; read-only paths refused; `If-Match` checked
//!   when sent (412 `preconditionFailed`); the status/substatus transition table; terminal
//!   states (`Closed`) take no update at all.
//! - list: `$filter` (eq/ne/…, and/or/not, parentheses, `team/any(t:t/email eq '…')`),
//!   `$orderby` on `createdDateTime`/`updatedDateTime` only, `$top`, `$select`, keyset
//!   paging through an opaque `$skiptoken` in an absolute `@odata.nextLink`.
//! - New referrals nobody answers expire after 14 days (sandbox clock) into
//!   `Closed/Expired`.
//!
//! Microsoft's side is driven through the control API:
//! `POST /_sandbox/partner-center/referrals/incoming` and
//! `POST /_sandbox/partner-center/referrals/{id}/microsoft`.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::odata::{self, MatchOptions};
use super::{Rng, Sandbox, json_response, lock, seed_data};
use crate::mapping::transforms::datetime::DateTime;

/// Organization id of the partner the sandbox plays (the API caller).
pub const PARTNER_ORGANIZATION_ID: &str = "7d23e5ca-19dc-4eaa-aac8-5e6b559f0d1d";
/// The partner's organization name.
pub const PARTNER_ORGANIZATION_NAME: &str = "Contoso Partner (sandbox)";
/// Microsoft's organization id in referrals (`inviteContext.invitedBy.organizationId`).
pub const MICROSOFT_ORGANIZATION_ID: &str = "msft";

/// Characters percent-encoded in query values of `@odata.nextLink`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b',');

/// Default and maximum page size. The real limits are undocumented (partner-center-api.md
/// §2.2, UNCERTAIN); 100 matches the 2018 API's documented maximum.
const MAX_PAGE: usize = 100;
/// "If you don't respond … within 14 days, we'll archive it as Expired."
const EXPIRY_SECONDS: i64 = 14 * 86_400;

const STATUSES: &[&str] = &["None", "New", "Active", "Closed"];
const SUBSTATUSES: &[&str] = &[
    "None", "Pending", "Received", "Accepted", "Won", "Lost", "Declined", "Expired",
];
const TYPES: &[&str] = &["Shared", "Independent"];
const QUALIFICATIONS: &[&str] = &["None", "Direct", "MarketingQualified", "SalesQualified"];
const TARGET_TYPES: &[&str] = &["None", "BusinessProfileLocation", "SolutionProfile"];
const ASSISTANCE_CODES: &[&str] = &[
    "Unknown",
    "GeneralOrOther",
    "CustomerTechnicalArchitecture",
    "ProofOfConceptOrDemo",
    "QuotesOrLicensing",
    "PostSalesCustomerSuccess",
    "WorkloadSpecificValueProposition",
];
const SALES_STAGES: &[&str] = &["Qualify", "Develop", "Propose", "Close"];
/// Properties the caller cannot set; on create they are overwritten, in a patch refused.
const READ_ONLY: &[&str] = &[
    "id",
    "engagementId",
    "organizationId",
    "organizationName",
    "createdDateTime",
    "updatedDateTime",
    "acceptedDateTime",
    "closedDateTime",
    "expirationDateTime",
    "eTag",
    "links",
    "direction",
    "@odata.context",
];
/// Top-level properties a `$filter` may name.
const FILTERABLE: &[&str] = &[
    "id",
    "engagementId",
    "name",
    "externalReferenceId",
    "createdDateTime",
    "updatedDateTime",
    "expirationDateTime",
    "status",
    "substatus",
    "statusReason",
    "type",
    "qualification",
    "direction",
    "organizationId",
    "organizationName",
    "customerProfile",
    "details",
    "team",
    "target",
    "consent",
    "inviteContext",
    "trackingInfo",
    "salesStage",
    "campaignId",
];

/// The referral store.
#[derive(Debug, Default)]
pub struct State {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each value is a JSON object; kept as `Value` so `$filter` evaluates it in place.
    referrals: HashMap<String, Value>,
    etag_counter: u64,
    /// `(expirationDateTime, id)` of referrals still `New`, soonest first.
    expiries: BTreeSet<(String, String)>,
}

impl Inner {
    fn next_etag(&mut self, sandbox: &Sandbox) -> String {
        self.etag_counter += 1;
        let stamp = sandbox
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        format!("\"{:08x}-0000-0000-0000-{stamp:012x}\"", self.etag_counter)
    }

    fn insert(&mut self, referral: Map<String, Value>) {
        let id = text(&referral, "id").to_owned();
        self.track_expiry(&referral);
        self.referrals.insert(id, Value::Object(referral));
    }

    fn track_expiry(&mut self, referral: &Map<String, Value>) {
        let id = text(referral, "id").to_owned();
        self.expiries.retain(|(_, other)| other != &id);
        if text(referral, "status") == "New"
            && let Some(expires) = referral.get("expirationDateTime").and_then(Value::as_str)
        {
            self.expiries.insert((expires.to_owned(), id));
        }
    }

    /// Expires unanswered `New` referrals whose time has come; returns their ids.
    fn expire(&mut self, sandbox: &Sandbox) -> Vec<String> {
        let now = sandbox.now_partner_center();
        let due: Vec<(String, String)> = self
            .expiries
            .iter()
            .take_while(|(at, _)| at.as_str() <= now.as_str())
            .cloned()
            .collect();
        let mut expired = Vec::new();
        for key in due {
            self.expiries.remove(&key);
            let etag = self.next_etag(sandbox);
            if let Some(referral) = self
                .referrals
                .get_mut(&key.1)
                .and_then(Value::as_object_mut)
                && text(referral, "status") == "New"
            {
                referral.insert("status".into(), json!("Closed"));
                referral.insert("substatus".into(), json!("Expired"));
                referral.insert("updatedDateTime".into(), json!(now));
                referral.insert("closedDateTime".into(), json!(now));
                referral.insert("eTag".into(), json!(etag));
                expired.push(key.1);
            }
        }
        expired
    }
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl State {
    /// Forgets every referral.
    pub fn reset(&self) {
        *lock(&self.inner) = Inner::default();
    }

    /// Referrals as JSON for `--data`.
    pub fn snapshot(&self) -> Value {
        let inner = lock(&self.inner);
        let mut referrals: Vec<&Map<String, Value>> = inner
            .referrals
            .values()
            .filter_map(Value::as_object)
            .collect();
        referrals.sort_by(|a, b| {
            text(a, "createdDateTime")
                .cmp(text(b, "createdDateTime"))
                .then_with(|| text(a, "id").cmp(text(b, "id")))
        });
        json!({ "etag_counter": inner.etag_counter, "referrals": referrals })
    }

    /// Inverse of [`State::snapshot`]; `null` means empty.
    pub fn restore(&self, value: Value) -> anyhow::Result<()> {
        let mut inner = Inner::default();
        if !value.is_null() {
            inner.etag_counter = value
                .get("etag_counter")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let referrals = value
                .get("referrals")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow::anyhow!("`referrals` is not an array"))?;
            for referral in referrals {
                let Value::Object(map) = referral else {
                    anyhow::bail!("a referral is not an object");
                };
                if text(map, "id").is_empty() {
                    anyhow::bail!("a referral has no id");
                }
                inner.insert(map.clone());
            }
        }
        *lock(&self.inner) = inner;
        Ok(())
    }

    /// Number of referrals stored.
    pub fn len(&self) -> usize {
        lock(&self.inner).referrals.len()
    }

    /// Whether no referral is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One referral as the API returns it, for assertions in tests.
    pub fn get(&self, sandbox: &Sandbox, id: &str) -> Option<Value> {
        lock(&self.inner)
            .referrals
            .get(id)
            .and_then(Value::as_object)
            .map(|r| present(sandbox, r))
    }

    /// Adds `count` realistic referrals — mostly incoming co-sell referrals from Microsoft
    /// waiting for an answer, some marketing leads, some already accepted — without
    /// firing webhooks (they existed before anyone listened; a reconcile finds them).
    pub fn seed(&self, sandbox: &Sandbox, rng: &mut Rng, count: usize) -> usize {
        let start = self.len();
        for i in 0..count {
            let company = seed_data::company(start + i);
            let contact = seed_data::person(rng, &company);
            let cosell = rng.chance(0.7);
            let (status, substatus) = *rng.pick(&[
                ("New", "Pending"),
                ("New", "Pending"),
                ("New", "Received"),
                ("Active", "Accepted"),
            ]);
            let solution = *rng.pick(&[
                ("SOL-34104-EBB", "Contoso Cloud Migration"),
                ("SOL-1234-PQRS", "Contoso Modern Workplace"),
                ("SOL-5678-WXYZ", "Contoso Data Platform"),
            ]);
            let closing = sandbox.now_datetime().unix_seconds()
                + i64::try_from(30 + rng.below(150)).unwrap_or(30) * 86_400;
            let body = json!({
                "name": format!("{} - {}", company.name, solution.1),
                "type": if cosell { "Shared" } else { "Independent" },
                "qualification": if cosell { "SalesQualified" } else { "MarketingQualified" },
                "status": status,
                "substatus": substatus,
                "target": [{ "type": "SolutionProfile", "id": solution.0 }],
                "customerProfile": {
                    "name": company.name,
                    "address": {
                        "addressLine1": company.street,
                        "city": company.city,
                        "state": company.state,
                        "postalCode": company.postal_code,
                        "country": company.country_code,
                    },
                    "size": *rng.pick(&["1to50employees", "51to500employees", "Morethan500employees"]),
                    "team": [{
                        "firstName": contact.first_name,
                        "lastName": contact.last_name,
                        "email": contact.email,
                        "phoneNumber": contact.phone,
                        "contactPreference": { "locale": "en-us", "disableNotifications": false },
                    }],
                    "ids": [],
                },
                "consent": { "consentToContact": true, "consentToToShareInfoWithOthers": true },
                "details": {
                    "notes": "Customer is evaluating a migration this quarter.",
                    "dealValue": seed_data::deal_value(rng),
                    "currency": *rng.pick(&["USD", "USD", "EUR", "GBP"]),
                    "closingDateTime": DateTime::from_unix(closing, 0).date_string() + "T00:00:00Z",
                    "requirements": {
                        "industries": [], "products": [], "services": [],
                        "solutions": [{ "id": solution.0, "name": solution.1 }],
                    },
                },
                "team": [{
                    "firstName": "John", "lastName": "Doe", "email": "john.doe@microsoft.com",
                    "phoneNumber": "1231231234",
                }],
                "inviteContext": {
                    "notes": "Hi partner, hoping you can help this customer.",
                    "invitedBy": { "organizationId": MICROSOFT_ORGANIZATION_ID, "organizationName": "Microsoft" },
                },
            });
            let Value::Object(body) = body else { continue };
            let mut inner = lock(&self.inner);
            let referral = build(sandbox, &mut inner, body, Origin::Incoming, rng);
            inner.insert(referral);
        }
        self.len() - start
    }
}

/// Who creates a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The partner through the API: Outgoing, lands Active/Accepted.
    Partner,
    /// Microsoft shares it with the partner: Incoming, New/Pending unless told otherwise.
    Incoming,
    /// Microsoft's own referral in a partner's engagement (a "related referral").
    Microsoft,
}

/// Fills the server-side fields of a new referral. `body` has been validated.
fn build(
    sandbox: &Sandbox,
    inner: &mut Inner,
    mut body: Map<String, Value>,
    origin: Origin,
    rng: &mut Rng,
) -> Map<String, Value> {
    let now = sandbox.now_partner_center();
    let id = rng.guid();
    let engagement = body
        .get("engagementId")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty() && origin != Origin::Incoming)
        .map_or_else(|| rng.guid(), str::to_owned);
    for key in READ_ONLY {
        body.remove(*key);
    }
    let (organization_id, organization_name, direction) = match origin {
        Origin::Partner => (
            PARTNER_ORGANIZATION_ID,
            PARTNER_ORGANIZATION_NAME,
            "Outgoing",
        ),
        Origin::Incoming => (
            PARTNER_ORGANIZATION_ID,
            PARTNER_ORGANIZATION_NAME,
            "Incoming",
        ),
        Origin::Microsoft => (MICROSOFT_ORGANIZATION_ID, "Microsoft", "Incoming"),
    };
    let mut referral = Map::new();
    referral.insert("id".into(), json!(id));
    referral.insert("engagementId".into(), json!(engagement));
    referral.insert("organizationId".into(), json!(organization_id));
    referral.insert("organizationName".into(), json!(organization_name));
    referral.insert("externalReferenceId".into(), Value::Null);
    referral.insert("createdDateTime".into(), json!(now));
    referral.insert("updatedDateTime".into(), json!(now));
    referral.insert("expirationDateTime".into(), Value::Null);
    referral.insert("direction".into(), json!(direction));
    referral.insert("status".into(), json!("New"));
    referral.insert("substatus".into(), json!("Pending"));
    for (key, value) in body {
        referral.insert(key, value);
    }
    match origin {
        Origin::Partner => {
            // "All the deals you have created are in Accepted stage by default."
            referral.insert("status".into(), json!("Active"));
            referral.insert("substatus".into(), json!("Accepted"));
            referral.insert("acceptedDateTime".into(), json!(now));
        }
        Origin::Incoming | Origin::Microsoft => {
            if text(&referral, "status") == "New" {
                let expires = sandbox.now_datetime().unix_seconds() + EXPIRY_SECONDS;
                let expires = DateTime::from_unix(expires, 0);
                referral.insert(
                    "expirationDateTime".into(),
                    json!(format!(
                        "{}T{:02}:{:02}:{:02}.0000000Z",
                        expires.date_string(),
                        expires.hour,
                        expires.minute,
                        expires.second
                    )),
                );
            }
            if text(&referral, "status") == "Active" {
                referral.insert("acceptedDateTime".into(), json!(now));
            }
        }
    }
    if let Some(Value::Object(details)) = referral.get_mut("details")
        && let Some(value) = details.get("dealValue").and_then(number_like)
    {
        details.insert("dealValue".into(), value);
    }
    let etag = inner.next_etag(sandbox);
    referral.insert("eTag".into(), json!(etag));
    referral
}

/// A number, or a string holding one (the documented PATCH sends `"10000"`).
fn number_like(value: &Value) -> Option<Value> {
    match value {
        Value::Number(_) => Some(value.clone()),
        Value::String(s) => {
            let parsed: f64 = s.trim().parse().ok()?;
            if !parsed.is_finite() {
                return None;
            }
            serde_json::Number::from_f64(parsed).map(|n| {
                // Keep integers integral on the wire: 10000, not 10000.0.
                if parsed.fract() == 0.0 && parsed.abs() < 9.0e15 {
                    json!(parsed as i64)
                } else {
                    Value::Number(n)
                }
            })
        }
        _ => None,
    }
}

/// The referral as the API shows it: stored fields plus `links` and `@odata.context`.
fn present(sandbox: &Sandbox, referral: &Map<String, Value>) -> Value {
    let base = &sandbox.base_url;
    let id = text(referral, "id");
    let engagement = text(referral, "engagementId");
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!(format!(
            "{base}/v1.0/engagements/referrals/$metadata#Referrals/$entity"
        )),
    );
    for (key, value) in referral {
        out.insert(key.clone(), value.clone());
    }
    out.insert(
        "links".into(),
        json!({
            "relatedReferrals": {
                "uri": format!("{base}/v1.0/engagements/referrals?$filter=engagementId eq '{engagement}'"),
                "method": "GET",
            },
            "self": { "uri": format!("{base}/v1.0/engagements/referrals/{id}"), "method": "GET" },
        }),
    );
    Value::Object(out)
}

fn pc_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message, "target": "referral" } }),
    )
}

fn invalid(message: impl Into<String>) -> Response {
    pc_error(StatusCode::BAD_REQUEST, "invalidRequest", &message.into())
}

fn not_found(id: &str) -> Response {
    pc_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        &format!("Referral '{id}' was not found."),
    )
}

fn precondition_failed() -> Response {
    pc_error(
        StatusCode::PRECONDITION_FAILED,
        "preconditionFailed",
        "A precondition provided in the request (such as an if-match header) does not match the resource's current state.",
    )
}

/// Checks a referral body against the documented enums and rules. `creating` adds the
/// create-only requirements.
fn validate(referral: &Map<String, Value>, creating: bool) -> Result<(), String> {
    if creating {
        for required in ["name", "type", "customerProfile", "consent", "details"] {
            match referral.get(required) {
                None | Some(Value::Null) => {
                    return Err(format!("The '{required}' field is required."));
                }
                _ => {}
            }
        }
    }
    let enum_field = |name: &str, allowed: &[&str], value: Option<&Value>| -> Result<(), String> {
        match value {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(other) => Err(format!(
                "The value {other} is not valid for '{name}'. Allowed values: {}.",
                allowed.join(", ")
            )),
        }
    };
    enum_field("status", STATUSES, referral.get("status"))?;
    enum_field("substatus", SUBSTATUSES, referral.get("substatus"))?;
    enum_field("type", TYPES, referral.get("type"))?;
    enum_field(
        "qualification",
        QUALIFICATIONS,
        referral.get("qualification"),
    )?;
    enum_field("salesStage", SALES_STAGES, referral.get("salesStage"))?;
    if let Some(name) = referral.get("name") {
        match name.as_str() {
            Some(s) if !s.trim().is_empty() && s.chars().count() <= 250 => {}
            Some(s) if s.trim().is_empty() => return Err("The 'name' field is required.".into()),
            Some(_) => return Err("The 'name' field must be at most 250 characters.".into()),
            None => return Err("The 'name' field must be a string.".into()),
        }
    }
    match referral.get("target") {
        None | Some(Value::Null) => {}
        Some(Value::Array(targets)) => {
            for target in targets {
                enum_field("target.type", TARGET_TYPES, target.get("type"))?;
            }
        }
        Some(_) => return Err("The 'target' field must be an array.".into()),
    }
    let object = |name: &str| -> Result<Option<&Map<String, Value>>, String> {
        match referral.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(format!("The '{name}' field must be an object.")),
        }
    };
    if let Some(profile) = object("customerProfile")? {
        let name_ok = profile
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.trim().is_empty());
        if creating && !name_ok {
            return Err("The 'customerProfile.name' field is required.".into());
        }
        let country = profile
            .get("address")
            .and_then(|a| a.get("country"))
            .and_then(Value::as_str);
        match country {
            Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) => {}
            Some(c) => {
                return Err(format!(
                    "The customer country '{c}' is not a two-letter ISO 3166 country code."
                ));
            }
            None if creating => {
                return Err(
                    "It's mandatory to provide a two-letter country code (ISO 3166) in 'customerProfile.address.country'."
                        .into(),
                );
            }
            None => {}
        }
        if let Some(team) = profile.get("team")
            && !team.is_array()
            && !team.is_null()
        {
            return Err("The 'customerProfile.team' field must be an array.".into());
        }
    }
    if let Some(details) = object("details")? {
        if let Some(value) = details.get("dealValue")
            && !value.is_null()
        {
            match number_like(value).and_then(|v| v.as_f64()) {
                Some(v) if v >= 0.0 => {}
                _ => {
                    return Err(format!(
                        "The value {value} is not valid for 'details.dealValue'."
                    ));
                }
            }
        }
        if let Some(currency) = details.get("currency").and_then(Value::as_str)
            && !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "The currency '{currency}' is not an ISO 4217 code."
            ));
        }
        if let Some(closing) = details.get("closingDateTime")
            && !closing.is_null()
            && closing.as_str().and_then(DateTime::parse).is_none()
        {
            return Err(format!(
                "The value {closing} is not a valid date time for 'details.closingDateTime'."
            ));
        }
        if let Some(solutions) = details
            .get("requirements")
            .and_then(|r| r.get("solutions"))
            .filter(|s| !s.is_null())
        {
            let Some(solutions) = solutions.as_array() else {
                return Err("'details.requirements.solutions' must be an array.".into());
            };
            if solutions.len() > 50 {
                return Err("A referral can have at most 50 solutions.".into());
            }
        }
    }
    let invite = object("inviteContext")?;
    if let Some(invite) = invite {
        enum_field(
            "inviteContext.assistanceRequestCode",
            ASSISTANCE_CODES,
            invite.get("assistanceRequestCode"),
        )?;
    }
    let status = referral.get("status").and_then(Value::as_str);
    let substatus = referral.get("substatus").and_then(Value::as_str);
    if let (Some(status), Some(substatus)) = (status, substatus)
        && !substatus_allowed(status, substatus)
    {
        return Err(format!(
            "Substatus '{substatus}' is not allowed with status '{status}'."
        ));
    }
    if creating && referral.get("type").and_then(Value::as_str) == Some("Shared") {
        let solutions = referral
            .get("details")
            .and_then(|d| d.get("requirements"))
            .and_then(|r| r.get("solutions"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let solution_target = referral
            .get("target")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t.get("type").and_then(Value::as_str) == Some("SolutionProfile"))
            });
        if solutions == 0 && !solution_target {
            return Err(
                "A co-sell (Shared) referral needs at least one solution in 'details.requirements.solutions'."
                    .into(),
            );
        }
    }
    let help = invite
        .and_then(|i| i.get("assistanceRequestCode"))
        .and_then(Value::as_str)
        .is_some_and(|code| code != "Unknown");
    if help {
        let contacts = referral
            .get("customerProfile")
            .and_then(|p| p.get("team"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if contacts == 0 {
            return Err(
                "Customer contact information is required when help from Microsoft is requested."
                    .into(),
            );
        }
    }
    Ok(())
}

/// The documented table: New → Pending/Received, Active → Accepted, Closed → Won, Lost,
/// Declined, Expired.
fn substatus_allowed(status: &str, substatus: &str) -> bool {
    match status {
        "New" => matches!(substatus, "Pending" | "Received"),
        "Active" => substatus == "Accepted",
        "Closed" => matches!(substatus, "Won" | "Lost" | "Declined" | "Expired"),
        "None" => substatus == "None",
        _ => false,
    }
}

/// The documented table: New → New, Active, Closed; Active → Active, Closed; Closed →
/// nothing (terminal).
fn status_transition_allowed(from: &str, to: &str) -> bool {
    match from {
        "New" | "None" => matches!(to, "New" | "Active" | "Closed"),
        "Active" => matches!(to, "Active" | "Closed"),
        _ => false,
    }
}

/// The routes of the referrals API and of its control endpoints.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/v1.0/engagements/referrals", get(list).post(create))
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(get_one).patch(patch).put(replace),
        )
        // The webhook ResourceUri's documented shape; serve it so a client that GETs the
        // ResourceUri verbatim (as Microsoft's own flow sample does) works.
        .route("/engagements/v1/referrals/{id}", get(get_one))
        .route(
            "/_sandbox/partner-center/referrals/incoming",
            post(incoming),
        )
        .route(
            "/_sandbox/partner-center/referrals/{id}/microsoft",
            post(microsoft_change),
        )
}

fn sweep(sandbox: &Sandbox) {
    let expired = lock(&sandbox.partner_center.inner).expire(sandbox);
    if !expired.is_empty() {
        sandbox.changed();
    }
    for id in expired {
        sandbox.webhooks.notify(sandbox, "referral-updated", &id);
    }
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn get_one(AxumState(sandbox): AxumState<Arc<Sandbox>>, Path(id): Path<String>) -> Response {
    sweep(&sandbox);
    let inner = lock(&sandbox.partner_center.inner);
    match inner.referrals.get(&id).and_then(Value::as_object) {
        Some(referral) => with_etag(
            json_response(StatusCode::OK, &present(&sandbox, referral)),
            text(referral, "eTag"),
        ),
        None => not_found(&id),
    }
}

/// The parsed query of a list call.
struct ListQuery {
    filter: Option<(String, odata::Filter)>,
    order: Vec<(String, bool)>,
    top: Option<usize>,
    select: Option<Vec<String>>,
    after: Option<Vec<String>>,
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, Response> {
    let mut query = ListQuery {
        filter: None,
        order: Vec::new(),
        top: None,
        select: None,
        after: None,
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "$filter" => {
                let filter = odata::parse_filter(&value).map_err(|e| invalid(e.to_string()))?;
                for property in filter.properties() {
                    if !FILTERABLE.contains(&property.as_str()) {
                        return Err(invalid(format!(
                            "Could not find a property named '{property}' on type 'Referral'."
                        )));
                    }
                }
                query.filter = Some((value.into_owned(), filter));
            }
            "$orderby" => {
                let order = odata::parse_orderby(&value).map_err(|e| invalid(e.to_string()))?;
                for (path, _) in &order {
                    if !matches!(path.as_str(), "createdDateTime" | "updatedDateTime") {
                        return Err(invalid(format!(
                            "$orderby supports createdDateTime and updatedDateTime, not '{path}'."
                        )));
                    }
                }
                query.order = order;
            }
            "$top" => {
                let top: usize = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| invalid(format!("Invalid value '{value}' for $top.")))?;
                query.top = Some(top);
            }
            "$select" => {
                query.select = Some(
                    value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                );
            }
            "$skiptoken" => {
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value.as_bytes())
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Vec<String>>(&bytes).ok())
                    .ok_or_else(|| invalid("The $skiptoken is invalid."))?;
                query.after = Some(decoded);
            }
            "$count" | "$expand" => {}
            other if other.starts_with('$') => {
                return Err(invalid(format!(
                    "The query parameter '{other}' is not supported."
                )));
            }
            _ => {}
        }
    }
    Ok(query)
}

/// The sort key of a referral: the `$orderby` values, then the id as a tie-breaker so
/// keyset paging never skips or repeats.
fn sort_key(referral: &Map<String, Value>, order: &[(String, bool)]) -> Vec<String> {
    let mut key: Vec<String> = order
        .iter()
        .map(|(path, _)| text(referral, path).to_owned())
        .collect();
    key.push(text(referral, "id").to_owned());
    key
}

fn compare_keys(a: &[String], b: &[String], order: &[(String, bool)]) -> Ordering {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let descending = order.get(i).is_some_and(|(_, desc)| *desc);
        let ordering = if descending { y.cmp(x) } else { x.cmp(y) };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

async fn list(AxumState(sandbox): AxumState<Arc<Sandbox>>, RawQuery(raw): RawQuery) -> Response {
    sweep(&sandbox);
    let query = match parse_list_query(raw.as_deref()) {
        Ok(query) => query,
        Err(response) => return response,
    };
    // Without an explicit order, newest first — the order the UI and the doc examples use.
    let order = if query.order.is_empty() {
        vec![("createdDateTime".to_owned(), true)]
    } else {
        query.order.clone()
    };
    // Referrals owned by another organization (Microsoft's side of an engagement) only
    // show up when asked for by engagement, which is how `links.relatedReferrals` reads
    // them. UNCERTAIN upstream; it keeps a partner's own list to its own referrals.
    let related_wanted = query
        .filter
        .as_ref()
        .is_some_and(|(text, _)| text.contains("engagementId"));
    let options = MatchOptions {
        case_insensitive_strings: true,
    };
    let page_size = query.top.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let inner = lock(&sandbox.partner_center.inner);
    let mut matching: Vec<(Vec<String>, &Map<String, Value>)> = inner
        .referrals
        .values()
        .filter_map(|value| Some((value, value.as_object()?)))
        .filter(|(_, r)| related_wanted || text(r, "organizationId") == PARTNER_ORGANIZATION_ID)
        .filter(|(value, _)| {
            query
                .filter
                .as_ref()
                .is_none_or(|(_, filter)| filter.matches(value, &options))
        })
        .map(|(_, r)| r)
        .map(|r| (sort_key(r, &order), r))
        .filter(|(key, _)| {
            query
                .after
                .as_ref()
                .is_none_or(|after| compare_keys(key, after, &order) == Ordering::Greater)
        })
        .collect();
    let more = matching.len() > page_size;
    if more {
        matching.select_nth_unstable_by(page_size, |a, b| compare_keys(&a.0, &b.0, &order));
        matching.truncate(page_size);
    }
    matching.sort_by(|a, b| compare_keys(&a.0, &b.0, &order));
    let values: Vec<Value> = matching
        .iter()
        .map(|(_, r)| {
            let full = present(&sandbox, r);
            match &query.select {
                Some(select) => {
                    let mut out = Map::new();
                    for key in select {
                        if let Some(value) = full.get(key) {
                            out.insert(key.clone(), value.clone());
                        }
                    }
                    Value::Object(out)
                }
                None => full,
            }
        })
        .collect();
    let base = &sandbox.base_url;
    let mut body = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#Referrals"),
        // UNCERTAIN upstream whether this is the page's or the total count; the documented
        // examples are consistent with the page's.
        "@odata.count": values.len(),
        "value": values,
    });
    if more && let Some((last_key, _)) = matching.last() {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(last_key).unwrap_or_default());
        // Option names stay literal (`$skiptoken=`), values are percent-encoded.
        let mut next: Vec<String> = Vec::new();
        let mut push = |name: &str, value: &str| {
            next.push(format!(
                "{name}={}",
                percent_encoding::utf8_percent_encode(value, QUERY_VALUE)
            ));
        };
        if let Some((filter, _)) = &query.filter {
            push("$filter", filter);
        }
        if !query.order.is_empty() {
            let orderby: Vec<String> = query
                .order
                .iter()
                .map(|(path, desc)| format!("{path} {}", if *desc { "desc" } else { "asc" }))
                .collect();
            push("$orderby", &orderby.join(","));
        }
        if let Some(top) = query.top {
            push("$top", &top.to_string());
        }
        if let Some(select) = &query.select {
            push("$select", &select.join(","));
        }
        push("$skiptoken", &token);
        body["@odata.nextLink"] = json!(format!(
            "{base}/v1.0/engagements/referrals?{}",
            next.join("&")
        ));
    }
    json_response(StatusCode::OK, &body)
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("The request body must be a JSON object.")),
        Err(error) => Err(invalid(format!(
            "The request body is not valid JSON: {error}."
        ))),
    }
}

fn prefers_representation(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=representation"))
}

async fn create(AxumState(sandbox): AxumState<Arc<Sandbox>>, body: Bytes) -> Response {
    let body = match parse_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(message) = validate(&body, true) {
        return invalid(message);
    }
    let (id, response) = {
        let mut inner = lock(&sandbox.partner_center.inner);
        let referral = {
            let mut rng = sandbox.rng();
            build(&sandbox, &mut inner, body, Origin::Partner, &mut rng)
        };
        let id = text(&referral, "id").to_owned();
        let response = with_etag(
            json_response(StatusCode::CREATED, &present(&sandbox, &referral)),
            text(&referral, "eTag"),
        );
        inner.insert(referral);
        (id, response)
    };
    sandbox.changed();
    sandbox.webhooks.notify(&sandbox, "referral-created", &id);
    response
}

/// `true` when the `If-Match` header (if any) matches `etag`.
fn if_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let normalize = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    };
    let current = normalize(etag);
    value
        .split(',')
        .any(|candidate| candidate.trim() == "*" || normalize(candidate) == current)
}

/// Applies a JSON Patch (`replace` and `add` only) to a copy of `referral`.
fn apply_patch(referral: &Map<String, Value>, patch: &Value) -> Result<Map<String, Value>, String> {
    let Some(operations) = patch.as_array() else {
        return Err("The request body must be a JSON Patch array.".into());
    };
    if operations.is_empty() {
        return Err("The JSON Patch document is empty.".into());
    }
    let mut document = Value::Object(referral.clone());
    for (index, operation) in operations.iter().enumerate() {
        let op = operation
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(path) = operation.get("path").and_then(Value::as_str) else {
            return Err(format!("Operation {index}: 'path' is required."));
        };
        if !matches!(op, "replace" | "add") {
            return Err(format!(
                "Operation {index}: '{op}' is not supported; the API currently only supports the replace and add operations."
            ));
        }
        let Some(value) = operation.get("value") else {
            return Err(format!("Operation {index}: 'value' is required."));
        };
        let segments: Vec<String> = parse_pointer(path)
            .ok_or_else(|| format!("Operation {index}: '{path}' is not a JSON Pointer."))?;
        let Some(first) = segments.first() else {
            return Err(format!(
                "Operation {index}: the whole referral cannot be replaced."
            ));
        };
        if READ_ONLY.contains(&first.as_str())
            || (segments.len() >= 2 && first == "customerProfile" && segments[1] == "address")
        {
            return Err(format!("Operation {index}: '{path}' cannot be modified."));
        }
        let mut value = value.clone();
        if segments == ["details", "dealValue"] {
            value = number_like(&value)
                .ok_or_else(|| format!("Operation {index}: {value} is not a valid deal value."))?;
        }
        set_pointer(&mut document, &segments, value, op == "add")
            .map_err(|e| format!("Operation {index}: {e}"))?;
    }
    match document {
        Value::Object(map) => Ok(map),
        _ => Err("The patched referral is not an object.".into()),
    }
}

fn parse_pointer(path: &str) -> Option<Vec<String>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let rest = path.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// RFC 6902 `add` / `replace` at `segments`.
fn set_pointer(
    document: &mut Value,
    segments: &[String],
    value: Value,
    add: bool,
) -> Result<(), String> {
    let (last, parents) = segments.split_last().ok_or("empty path")?;
    let mut current = document;
    for (depth, segment) in parents.iter().enumerate() {
        // The container a missing parent becomes: an array when the next segment indexes.
        let next = segments.get(depth + 1).map_or("", String::as_str);
        let empty = if next == "-" || next.parse::<usize>().is_ok() {
            Value::Array(Vec::new())
        } else {
            Value::Object(Map::new())
        };
        current = match current {
            Value::Object(map) => {
                if add && map.get(segment).is_none_or(Value::is_null) {
                    // Partner Center's documented adds create missing parents
                    // (`/team/-` on a referral without a team), a lenient reading of
                    // RFC 6902.
                    map.insert(segment.clone(), empty);
                }
                map.get_mut(segment)
                    .ok_or_else(|| format!("the path segment '{segment}' does not exist"))?
            }
            Value::Array(items) => {
                let index: usize = segment
                    .parse()
                    .map_err(|_| format!("'{segment}' is not an array index"))?;
                items
                    .get_mut(index)
                    .ok_or_else(|| format!("index {index} is out of range"))?
            }
            _ => return Err(format!("the path segment '{segment}' does not exist")),
        };
    }
    match current {
        Value::Object(map) => {
            if !add && !map.contains_key(last) {
                return Err(format!("the path '{last}' does not exist, use 'add'"));
            }
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            if add && last == "-" {
                items.push(value);
                return Ok(());
            }
            let index: usize = last
                .parse()
                .map_err(|_| format!("'{last}' is not an array index"))?;
            if add {
                if index > items.len() {
                    return Err(format!("index {index} is out of range"));
                }
                items.insert(index, value);
            } else {
                let slot = items
                    .get_mut(index)
                    .ok_or_else(|| format!("index {index} is out of range"))?;
                *slot = value;
            }
            Ok(())
        }
        Value::Null if add => {
            let mut map = Map::new();
            map.insert(last.clone(), value);
            *current = Value::Object(map);
            Ok(())
        }
        _ => Err(format!("the path segment '{last}' cannot be set")),
    }
}

/// Validates an update of `before` into `after` against the transition table.
fn check_update(before: &Map<String, Value>, after: &Map<String, Value>) -> Result<(), String> {
    let old_status = text(before, "status");
    if old_status == "Closed" {
        return Err(format!(
            "The referral is {}/{}, a terminal state; no further updates are possible.",
            old_status,
            text(before, "substatus")
        ));
    }
    let new_status = text(after, "status");
    if new_status != old_status && !status_transition_allowed(old_status, new_status) {
        return Err(format!(
            "The status cannot change from '{old_status}' to '{new_status}'."
        ));
    }
    validate(after, false)
}

/// Stores an updated referral: new eTag, `updatedDateTime`, accepted/closed stamps.
fn commit(
    sandbox: &Sandbox,
    inner: &mut Inner,
    before_status: &str,
    mut after: Map<String, Value>,
) -> Map<String, Value> {
    let now = sandbox.now_partner_center();
    after.insert("updatedDateTime".into(), json!(now));
    let status = text(&after, "status").to_owned();
    if status != before_status {
        match status.as_str() {
            "Active" => {
                after.insert("acceptedDateTime".into(), json!(now));
            }
            "Closed" => {
                after.insert("closedDateTime".into(), json!(now));
            }
            _ => {}
        }
    }
    let etag = inner.next_etag(sandbox);
    after.insert("eTag".into(), json!(etag));
    inner.insert(after.clone());
    after
}

async fn patch(
    AxumState(sandbox): AxumState<Arc<Sandbox>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sweep(&sandbox);
    let operations: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => return invalid(format!("The request body is not valid JSON: {error}.")),
    };
    let updated = {
        let mut inner = lock(&sandbox.partner_center.inner);
        let Some(before) = inner.referrals.get(&id).and_then(Value::as_object).cloned() else {
            return not_found(&id);
        };
        if text(&before, "organizationId") != PARTNER_ORGANIZATION_ID {
            return pc_error(
                StatusCode::FORBIDDEN,
                "accessDenied",
                "Caller is not authorized to update a referral of another organization.",
            );
        }
        if !if_match(&headers, text(&before, "eTag")) {
            return precondition_failed();
        }
        let after = match apply_patch(&before, &operations) {
            Ok(after) => after,
            Err(message) => return invalid(message),
        };
        if let Err(message) = check_update(&before, &after) {
            return invalid(message);
        }
        commit(&sandbox, &mut inner, text(&before, "status"), after)
    };
    sandbox.changed();
    sandbox.webhooks.notify(&sandbox, "referral-updated", &id);
    respond_updated(&sandbox, &headers, &updated)
}

fn respond_updated(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    referral: &Map<String, Value>,
) -> Response {
    let etag = text(referral, "eTag");
    if prefers_representation(headers) {
        // UNCERTAIN upstream (200 or 201); 200 is what OData services answer for an
        // update with a representation.
        let mut response = with_etag(
            json_response(StatusCode::OK, &present(sandbox, referral)),
            etag,
        );
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("return=representation"),
        );
        response
    } else {
        with_etag(StatusCode::NO_CONTENT.into_response(), etag)
    }
}

/// The obsolete full-replace update: `If-Match` is required and `links` must be left out.
async fn replace(
    AxumState(sandbox): AxumState<Arc<Sandbox>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sweep(&sandbox);
    let mut replacement = match parse_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    if !headers.contains_key(header::IF_MATCH) {
        return invalid("The If-Match header is required to update a referral with PUT.");
    }
    if replacement.contains_key("links") {
        return invalid("Remove the 'links' object from the PUT resource.");
    }
    let updated = {
        let mut inner = lock(&sandbox.partner_center.inner);
        let Some(before) = inner.referrals.get(&id).and_then(Value::as_object).cloned() else {
            return not_found(&id);
        };
        if !if_match(&headers, text(&before, "eTag")) {
            return precondition_failed();
        }
        for key in READ_ONLY {
            replacement.remove(*key);
            if let Some(value) = before.get(*key) {
                replacement.insert((*key).to_owned(), value.clone());
            }
        }
        if let Err(message) = check_update(&before, &replacement) {
            return invalid(message);
        }
        commit(&sandbox, &mut inner, text(&before, "status"), replacement)
    };
    sandbox.changed();
    sandbox.webhooks.notify(&sandbox, "referral-updated", &id);
    respond_updated(&sandbox, &headers, &updated)
}

/// `POST /_sandbox/partner-center/referrals/incoming`: Microsoft shares a referral with the
/// partner. Missing parts get realistic defaults; `type` defaults to `Shared`.
async fn incoming(AxumState(sandbox): AxumState<Arc<Sandbox>>, body: Bytes) -> Response {
    let mut body = match parse_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    body.entry("type").or_insert(json!("Shared"));
    body.entry("qualification")
        .or_insert(json!("SalesQualified"));
    body.entry("consent").or_insert(json!({
        "consentToContact": true,
        "consentToToShareInfoWithOthers": true,
    }));
    body.entry("inviteContext").or_insert(json!({
        "invitedBy": { "organizationId": MICROSOFT_ORGANIZATION_ID, "organizationName": "Microsoft" },
    }));
    body.entry("status").or_insert(json!("New"));
    body.entry("substatus").or_insert(json!("Pending"));
    if let Err(message) = validate(&body, true) {
        return invalid(message);
    }
    if !matches!(
        (text(&body, "status"), text(&body, "substatus")),
        ("New", "Pending" | "Received")
    ) {
        return invalid("An incoming referral starts as New/Pending or New/Received.");
    }
    let (id, referral) = {
        let mut inner = lock(&sandbox.partner_center.inner);
        let referral = {
            let mut rng = sandbox.rng();
            build(&sandbox, &mut inner, body, Origin::Incoming, &mut rng)
        };
        let id = text(&referral, "id").to_owned();
        inner.insert(referral.clone());
        (id, referral)
    };
    sandbox.changed();
    sandbox.webhooks.notify(&sandbox, "referral-created", &id);
    json_response(StatusCode::CREATED, &present(&sandbox, &referral))
}

/// A Microsoft-side change (`POST /_sandbox/partner-center/referrals/{id}/microsoft`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MicrosoftChange {
    status: Option<String>,
    substatus: Option<String>,
    status_reason: Option<String>,
    deal_value: Option<f64>,
    closing_date_time: Option<String>,
    microsoft_msx_id: Option<String>,
    notes: Option<String>,
}

/// Applies what a Microsoft seller does.
///
/// - On a referral Microsoft shared with the partner (Incoming): the change applies to it
///   and `referral-updated` fires.
/// - On the partner's own (Outgoing) referral: Microsoft's side of the engagement — a
///   referral owned by `msft` with the same `engagementId` — is created on first contact
///   (`related-referral-created`) and updated afterwards (`related-referral-updated`).
pub(crate) async fn microsoft_change(
    AxumState(sandbox): AxumState<Arc<Sandbox>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    sweep(&sandbox);
    let change: MicrosoftChange = match super::control::parse_body(&body) {
        Ok(change) => change,
        Err(response) => return response,
    };
    let (event, target_id, result) = {
        let mut inner = lock(&sandbox.partner_center.inner);
        let Some(referral) = inner.referrals.get(&id).and_then(Value::as_object).cloned() else {
            return not_found(&id);
        };
        let (event, before) = if text(&referral, "direction") == "Outgoing" {
            let engagement = text(&referral, "engagementId").to_owned();
            let existing = inner
                .referrals
                .values()
                .filter_map(Value::as_object)
                .find(|r| {
                    text(r, "engagementId") == engagement
                        && text(r, "organizationId") == MICROSOFT_ORGANIZATION_ID
                })
                .cloned();
            match existing {
                Some(existing) => ("related-referral-updated", existing),
                None => {
                    let mut body = referral.clone();
                    body.retain(|key, _| {
                        matches!(
                            key.as_str(),
                            "name"
                                | "type"
                                | "qualification"
                                | "customerProfile"
                                | "consent"
                                | "details"
                                | "target"
                                | "engagementId"
                        )
                    });
                    body.insert("status".into(), json!("New"));
                    body.insert("substatus".into(), json!("Pending"));
                    let related = {
                        let mut rng = sandbox.rng();
                        build(&sandbox, &mut inner, body, Origin::Microsoft, &mut rng)
                    };
                    ("related-referral-created", related)
                }
            }
        } else {
            ("referral-updated", referral)
        };
        let mut after = before.clone();
        if let Some(status) = &change.status {
            after.insert("status".into(), json!(status));
        }
        if let Some(substatus) = &change.substatus {
            after.insert("substatus".into(), json!(substatus));
        }
        if let Some(reason) = &change.status_reason {
            after.insert("statusReason".into(), json!(reason));
        }
        let details = after
            .entry("details")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(details) = details {
            if let Some(value) = change.deal_value {
                details.insert("dealValue".into(), json!(value));
            }
            if let Some(closing) = &change.closing_date_time {
                details.insert("closingDateTime".into(), json!(closing));
            }
            if let Some(notes) = &change.notes {
                details.insert("notes".into(), json!(notes));
            }
        }
        if let Some(msx) = &change.microsoft_msx_id {
            after.insert("trackingInfo".into(), json!({ "microsoftMsxId": msx }));
        }
        let creating_related = event == "related-referral-created";
        if !creating_related && let Err(message) = check_update(&before, &after) {
            return invalid(message);
        }
        if creating_related && let Err(message) = validate(&after, false) {
            return invalid(message);
        }
        let target_id = text(&after, "id").to_owned();
        let stored = commit(&sandbox, &mut inner, text(&before, "status"), after);
        (event, target_id, stored)
    };
    sandbox.changed();
    sandbox.webhooks.notify(&sandbox, event, &target_id);
    json_response(StatusCode::OK, &present(&sandbox, &result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referral(status: &str, substatus: &str) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "id": "r1", "status": status, "substatus": substatus, "eTag": "\"1\"",
            "details": { "dealValue": 5 }, "customerProfile": { "address": { "country": "US" } },
        }) else {
            unreachable!()
        };
        map
    }

    #[test]
    fn patch_supports_replace_and_add_only() {
        let before = referral("New", "Pending");
        let after = apply_patch(
            &before,
            &json!([{"op":"replace","path":"/details/dealValue","value":"10000"}]),
        )
        .unwrap();
        assert_eq!(after["details"]["dealValue"], json!(10000));
        let after = apply_patch(
            &before,
            &json!([{"op":"add","path":"/team/-","value":{"email":"a@b.c"}}]),
        )
        .unwrap();
        assert_eq!(
            after["team"],
            json!([{"email":"a@b.c"}]),
            "a missing array is created"
        );
        let error = apply_patch(
            &before,
            &json!([{"op":"replace","path":"/details/notes","value":"x"}]),
        )
        .unwrap_err();
        assert!(error.contains("use 'add'"), "{error}");
        let error = apply_patch(&before, &json!([{"op":"remove","path":"/details"}])).unwrap_err();
        assert!(
            error.contains("only supports the replace and add"),
            "{error}"
        );
        let error =
            apply_patch(&before, &json!([{"op":"replace","path":"/id","value":"x"}])).unwrap_err();
        assert!(error.contains("cannot be modified"), "{error}");
        let error = apply_patch(
            &before,
            &json!([{"op":"replace","path":"/customerProfile/address/country","value":"NL"}]),
        )
        .unwrap_err();
        assert!(error.contains("cannot be modified"), "{error}");
    }

    #[test]
    fn transitions_follow_the_documented_table() {
        let new = referral("New", "Pending");
        assert!(check_update(&new, &referral("Active", "Accepted")).is_ok());
        assert!(check_update(&new, &referral("Closed", "Declined")).is_ok());
        assert!(check_update(&new, &referral("Active", "Won")).is_err());
        let active = referral("Active", "Accepted");
        assert!(check_update(&active, &referral("New", "Pending")).is_err());
        assert!(check_update(&active, &referral("Closed", "Won")).is_ok());
        let closed = referral("Closed", "Won");
        let error = check_update(&closed, &referral("Closed", "Won")).unwrap_err();
        assert!(error.contains("terminal"), "{error}");
    }

    #[test]
    fn if_match_compares_quoted_and_weak_forms() {
        let mut headers = HeaderMap::new();
        assert!(if_match(&headers, "\"abc\""));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(if_match(&headers, "\"abc\""));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("abc"));
        assert!(if_match(&headers, "\"abc\""));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abd\""));
        assert!(!if_match(&headers, "\"abc\""));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert!(if_match(&headers, "\"abc\""));
    }
}
