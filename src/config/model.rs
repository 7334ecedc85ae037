//! The mapping file, as written by a CRM administrator.
//!
//! Every type here is deserialized from user-written YAML, so every struct rejects unknown keys
//! and every field carries a doc comment: those comments become the descriptions in
//! `schemas/cosell.schema.json`, which editors show as completion help. Keep them in the users'
//! words. Nothing here is evaluated: `mapping::Plan` compiles a validated `Config` once.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cosell mapping file: how one partner's Partner Center referrals and one CRM stay in sync.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "cosell mapping file")]
pub struct Config {
    /// Version of the mapping language this file is written in. Always `1`.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// The CRM this file syncs with: `dynamics365` (Dataverse Web API) or `salesforce` (REST API).
    pub crm: CrmKind,
    /// How to reach Partner Center and the CRM. Secrets are references (`${ENV}`,
    /// `${ENV:-default}`, `${file:/path}`), never literal values.
    #[serde(default)]
    pub connections: Connections,
    /// The knobs Microsoft's connector exposes as "environment variables" (checkmark in name,
    /// sync co-sell only, deal value / currency / country field names, on-hold and active
    /// stages), plus your own. Usable in templates and expressions as `settings.<name>`, even as
    /// target field names. Override without editing the file with `--set name=value` or the
    /// environment variable `COSELL_SETTING_<NAME>`.
    #[serde(default)]
    pub settings: Settings,
    /// Named translation tables between Partner Center values and CRM values (stages, "How can
    /// Microsoft help?" options, country names), each with a declared fallback.
    #[serde(default)]
    pub value_maps: BTreeMap<String, ValueMap>,
    /// Named rules for finding (or creating) a related CRM record: the customer account by name
    /// and postal code, the currency by ISO code, a contact by e-mail.
    #[serde(default)]
    pub lookups: BTreeMap<String, Lookup>,
    /// The sync flows. Each flow maps one kind of record in one direction: Partner Center → CRM
    /// (`source: referral`) or CRM → Partner Center (`target: referral`).
    pub flows: BTreeMap<String, Flow>,
    /// Inline tests run by `cosell test`: an input record, and the fields or rule violations
    /// you expect the flow to produce.
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

/// The CRM a mapping file targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CrmKind {
    /// Dynamics 365 Sales on Microsoft Dataverse (Web API v9.2).
    Dynamics365,
    /// Salesforce Sales Cloud (REST API).
    Salesforce,
}

impl CrmKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CrmKind::Dynamics365 => "dynamics365",
            CrmKind::Salesforce => "salesforce",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Where the engine connects. Only needed by `cosell run`; `validate`, `test` and `map` never
/// connect anywhere.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// Partner Center: the referrals API and the webhook registration API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_center: Option<PartnerCenterConnection>,
    /// The CRM named by `crm:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm: Option<CrmConnection>,
    /// Receiving Partner Center webhooks: where they arrive and which certificates may sign
    /// them. Needed by `cosell run` as soon as it listens for webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookSettings>,
}

/// How cosell receives and authenticates Partner Center webhook events.
///
/// Partner Center signs every event (RSA-SHA256 over the body) with a certificate it links in
/// the `X-MS-Certificate-Url` header. cosell downloads that certificate only from the hosts
/// listed here, requires it to chain to one of your `trust_anchors` and to be issued by
/// `O=Microsoft Corporation`, and answers 401 (storing nothing) otherwise.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The public URL Partner Center should post events to (what `cosell webhook register`
    /// registers when no `--url` is given), e.g. `https://cosell.contoso.com/webhooks/partner-center`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// URL path Partner Center posts events to. Default `/webhooks/partner-center`; register
    /// `https://<your host><path>` as the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// CA certificates the signing certificate must chain to: PEM file paths, or references
    /// (`${file:/etc/cosell/microsoft-roots.pem}`, `${WEBHOOK_CA_PEM}`) to PEM text or a path.
    /// Required: cosell bundles no Microsoft roots, so without at least one anchor every
    /// webhook is refused. For production, list the Microsoft root (or issuing) CAs that
    /// issue the `pcnotifications-dispatch.microsoft.com` certificate; for the sandbox, its CA
    /// (`GET /_sandbox/ca.pem`, or `<DIR>/pki/ca.pem` with `--data`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors: Vec<String>,
    /// Hosts (`host` or `host:port`, exact, case-insensitive) the signing certificate may be
    /// downloaded from. Default: `3psostorageacct.blob.core.windows.net`, the only host
    /// Microsoft has published.
    #[serde(default = "default_certificate_hosts")]
    pub allowed_certificate_hosts: Vec<String>,
    /// Path prefix the certificate URL must start with, e.g. `/cert/`. Default: any path on
    /// an allowed host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_certificate_path_prefix: Option<String>,
    /// Accept `http://` certificate URLs. Only for the local sandbox; production must use
    /// https.
    #[serde(default)]
    pub allow_insecure_certificate_url: bool,
}

impl WebhookSettings {
    /// The path used when `path` is not set.
    pub const DEFAULT_PATH: &'static str = "/webhooks/partner-center";
    /// The certificate host used when `allowed_certificate_hosts` is not set: the host of
    /// the only certificate URL Microsoft documents.
    pub const DEFAULT_CERTIFICATE_HOST: &'static str = "3psostorageacct.blob.core.windows.net";

    /// `path`, or the default.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(Self::DEFAULT_PATH)
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            public_url: None,
            path: None,
            trust_anchors: Vec::new(),
            allowed_certificate_hosts: default_certificate_hosts(),
            allowed_certificate_path_prefix: None,
            allow_insecure_certificate_url: false,
        }
    }
}

fn default_certificate_hosts() -> Vec<String> {
    vec![WebhookSettings::DEFAULT_CERTIFICATE_HOST.to_owned()]
}

/// How to reach Partner Center.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerCenterConnection {
    /// Base URL of the referrals API. Default `https://api.partner.microsoft.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Base URL of the webhook registration API. Default `https://api.partnercenter.microsoft.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_base_url: Option<String>,
    /// Microsoft Entra ID credentials of the app registered for Partner Center.
    pub auth: EntraAuth,
    /// How many calls cosell may make to Partner Center.
    #[serde(default)]
    pub budget: Budget,
    /// Seconds one API call may take before cosell abandons it and retries (default 60).
    /// A timed-out write is never blindly repeated: the retry first reads what the
    /// service kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: Option<u32>,
    /// Allow `http://` base URLs. Only for the local sandbox; production must use https.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// Microsoft Entra ID (Azure AD) app credentials.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntraAuth {
    /// Directory (tenant) ID, e.g. `${PC_TENANT_ID}`.
    pub tenant_id: String,
    /// Application (client) ID, e.g. `${PC_CLIENT_ID}`.
    pub client_id: String,
    /// Client secret. Must be a reference such as `${PC_CLIENT_SECRET}` or
    /// `${file:/run/secrets/pc_client_secret}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretRef>,
    /// Refresh token of a Referral Admin user (the referrals API needs app + user
    /// credentials). Must be a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<SecretRef>,
    /// Token endpoint host. Default `https://login.microsoftonline.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// How to reach the CRM.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrmConnection {
    /// Environment URL: `https://<org>.crm.dynamics.com` for Dataverse, the login URL
    /// (`https://login.salesforce.com` or your My Domain) for Salesforce.
    pub base_url: String,
    /// API version: `v9.2` for Dataverse, e.g. `v61.0` for Salesforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Credentials.
    pub auth: CrmAuth,
    /// How many calls cosell may make to the CRM.
    #[serde(default)]
    pub budget: Budget,
    /// Seconds one API call may take before cosell abandons it and retries (default 60).
    /// A timed-out write is never blindly repeated: the retry first reads what the
    /// service kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: Option<u32>,
    /// Allow `http://` base URLs. Only for the local sandbox; production must use https.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// CRM credentials: Entra ID client credentials for Dataverse; client credentials, JWT bearer
/// or refresh token for Salesforce.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrmAuth {
    /// Entra ID tenant (Dataverse only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Client ID (Dataverse app registration / Salesforce connected app consumer key).
    pub client_id: String,
    /// Client secret. Must be a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretRef>,
    /// Refresh token (Salesforce). Must be a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<SecretRef>,
    /// PEM private key for the Salesforce JWT bearer flow. Must be a reference, usually
    /// `${file:/run/secrets/sf_key.pem}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<SecretRef>,
    /// Salesforce user the JWT bearer flow acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Entra ID token host (Dataverse only). Default `https://login.microsoftonline.com`;
    /// set it for a sovereign cloud or the local sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A reference to a secret: `${ENV}`, `${ENV:-default}` or `${file:/path}`. The value is read
/// when the engine connects and is never printed.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SecretRef(pub String);

impl JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A secret reference: `${ENV}`, `${ENV:-default}` or `${file:/path}`. Literal secrets are rejected.",
            "pattern": "^\\$\\{[^}]+\\}$"
        })
    }
}

impl std::fmt::Debug for SecretRef {
    // The reference itself names an env var or file, not the secret; still, keep Debug terse so
    // a future literal that slipped through validation can never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if crate::config::secrets::is_reference(&self.0) {
            write!(f, "SecretRef({})", self.0)
        } else {
            f.write_str("SecretRef(<redacted>)")
        }
    }
}

/// Call budget for one upstream. Every call waits for the shared rate limiter; running out slows
/// the engine down, it never drops work.
///
/// Every limit is at least 1: a zero budget would stall the engine without a word (the limiter
/// used to read 0 as 1 a day), so the loader refuses it at its line.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Requests allowed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_second: Option<u32>,
    /// Requests allowed per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_minute: Option<u32>,
    /// Requests allowed per 5 minutes (Dataverse service protection: 6000 per user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_5_minutes: Option<u32>,
    /// Requests allowed per day (the paid connector's 10 000 a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_day: Option<u32>,
    /// Requests in flight at once (Dataverse allows 52 per user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrent: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The connector's "environment variables". Each has a CRM-specific default, so a file may
/// leave them all out.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Show ✔ in the opportunity name when a sync succeeds and ✘ when it fails. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkmark_in_name: Option<bool>,
    /// Sync only co-sell and pipeline-sharing referrals from Partner Center to the CRM (`true`,
    /// the default), or leads too (`false`). No effect on CRM → Partner Center.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_cosell_only: Option<bool>,
    /// CRM field holding the deal value. Default `estimatedvalue` (Dynamics 365), `Amount`
    /// (Salesforce). Give the field's logical/API name, not its display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deal_value_field: Option<String>,
    /// CRM field holding the deal currency. Default `transactioncurrencyid` (Dynamics 365, a
    /// lookup found by ISO code), `CurrencyIsoCode` (Salesforce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deal_currency_field: Option<String>,
    /// Customer account field holding the country. Default `address1_country` (Dynamics 365),
    /// `BillingCountry` (Salesforce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_country_field: Option<String>,
    /// Stage that new incoming co-sell referrals land in until a seller accepts them; edits made
    /// while a record is in it are not sent to Partner Center. Default `2` (Dynamics 365
    /// status reason "On Hold"), `On Hold` (Salesforce stage name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_hold_stage: Option<Scalar>,
    /// Stage that means "accepted": moving a record into it accepts the referral in Partner
    /// Center. Default `1` (Dynamics 365 status reason "In Progress"), `Qualification`
    /// (Salesforce stage name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_stage: Option<Scalar>,
    /// Your own settings, usable as `settings.<name>` like the built-in ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, Scalar>,
}

/// A setting value: text, number or yes/no.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// Text.
    String(String),
}

impl Scalar {
    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Number(n) => Value::Number(n.clone()),
            Scalar::String(s) => Value::String(s.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value maps
// ---------------------------------------------------------------------------------------------

/// A translation table. Keys are matched as text (`1` and `"1"` are the same key).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMap {
    /// What the table is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Partner Center vocabulary the keys come from. When set, keys are checked against it
    /// and, unless a fallback is declared, every value you can meet must have an entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Domain>,
    /// The Partner Center vocabulary the values must come from (for CRM → Partner Center maps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Domain>,
    /// Compare keys ignoring upper/lower case. Default `false`.
    #[serde(default)]
    pub ignore_case: bool,
    /// The table: input value → output value. Templates over `settings` are allowed in keys and
    /// values, e.g. `"{{ settings.active_stage }}": Active`.
    pub entries: BTreeMap<String, Value>,
    /// What a value without an entry becomes: `error` (a rule violation, the default), `keep`
    /// (passed through unchanged), `null`, or `{ value: <constant> }`.
    #[serde(default)]
    pub fallback: Fallback,
}

/// A Partner Center vocabulary, used to check value map keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// `Status/Substatus` pairs a referral can be in, e.g. `New/Pending`, `Closed/Won`.
    ReferralStatus,
    /// `status`: New, Active, Closed.
    Status,
    /// `substatus`: Pending, Received, Accepted, Won, Lost, Declined, Expired, Error.
    Substatus,
    /// `inviteContext.assistanceRequestCode` ("How can Microsoft help?").
    AssistanceRequestCode,
    /// `salesStage`: Qualify, Develop, Propose, Close.
    SalesStage,
    /// `type`: Shared, Independent.
    ReferralType,
    /// `qualification`: None, Direct, MarketingQualified, SalesQualified.
    Qualification,
    /// Two-letter ISO 3166-1 country codes.
    CountryCode,
    /// Three-letter ISO 4217 currency codes.
    CurrencyCode,
}

/// What a value map does with a value it has no entry for.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Fallback {
    /// `error`, `keep` or `null`.
    Action(FallbackAction),
    /// `{ value: <constant> }`: use this value.
    Value(FallbackValue),
    /// A bare `null` means the same as `"null"`.
    NullLiteral(()),
    /// Not declared: same as `error`.
    #[default]
    #[serde(skip)]
    Undeclared,
}

/// Fallback actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FallbackAction {
    /// A rule violation naming the value and the map; the record is not written.
    Error,
    /// Pass the value through unchanged.
    Keep,
    /// Use null (the field is cleared / left empty).
    Null,
}

/// A constant fallback.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackValue {
    /// The value to use.
    pub value: Value,
}

// ---------------------------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------------------------

/// How to find a related CRM record, and what to do when there is none.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// What this lookup is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// CRM table to search: Dataverse entity set (`accounts`) or Salesforce sObject (`Account`).
    pub entity: String,
    /// Primary key column of that table. Default: `<singular>id` for Dataverse standard tables
    /// (`accountid`), `Id` for Salesforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    /// Columns that must all equal these values (text compared ignoring case). Values are field
    /// mappings: JSONPath, template, expression or constant.
    #[serde(rename = "match")]
    pub match_fields: BTreeMap<String, FieldMapping>,
    /// What to do when no record matches: `create` (with the `create` fields), `skip` (leave the
    /// field empty) or `fail` (a rule violation with `message`). Default `skip`.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Fields of the record created when none matches (`on_missing: create`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub create: BTreeMap<String, FieldMapping>,
    /// Violation message when `on_missing: fail`. May be a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the mapped field receives, as a template over `id` (the found or created record's
    /// key). Default `/<entity>({{ id }})` for Dataverse (an `@odata.bind` reference) and
    /// `{{ id }}` for Salesforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Remember results for the life of the engine (currencies never change). Default `false`.
    #[serde(default)]
    pub cache: bool,
}

/// What a lookup does when nothing matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Create a record from the lookup's `create` fields.
    Create,
    /// Leave the mapped field out.
    #[default]
    Skip,
    /// Stop: a rule violation with the lookup's `message`.
    Fail,
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// One direction of sync for one kind of record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// What this flow does, for the people who maintain the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The record this flow reads. In templates and expressions it is the variable of the same
    /// name (`referral.name`, `opportunity.name`); in JSONPath it is `$`.
    pub source: RecordKind,
    /// The record this flow writes. Exactly one of `source` and `target` is a Partner Center
    /// record (`referral` or `related_referral`).
    pub target: RecordKind,
    /// The CRM table on the CRM side of the flow: Dataverse entity set (`opportunities`) or
    /// Salesforce sObject (`Opportunity`). Default: the standard table for the record kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Run this flow only after another flow wrote its record; that record is the variable
    /// `parent`. Used for the Microsoft-targeted referral of a co-sell (same `engagementId`)
    /// and for child records such as solutions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Make one target record per element of this array (JSONPath into the source). Inside the
    /// flow, `$` and the variable `item` are the element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// For `for_each` flows: the target field that identifies a child record, so additions and
    /// removals can be told apart from edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Related CRM records read together with the source record (Dataverse `$expand`,
    /// Salesforce relationship query), by relationship name, with the columns to read. They
    /// appear nested in the source record: `$.parentaccountid.address1_country`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expand: BTreeMap<String, Vec<String>>,
    /// CRM column that holds the Partner Center referral id (an alternate key / External ID),
    /// used to find the CRM record of a referral. Default `cosell_referralid` /
    /// `Referral_Id__c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral_id_field: Option<String>,
    /// CRM yes/no column that opts a record into sync. CRM → Partner Center flows read only
    /// records where it is yes. Default `cosell_synctopartnercenter` /
    /// `Sync_With_Partner_Center__c` for CRM → Partner Center flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_flag: Option<String>,
    /// Sync a record only when this expression is true, e.g.
    /// `referral.type == 'Shared' or not settings.sync_cosell_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Target fields and where their values come from. Keys may be templates over settings:
    /// `"{{ settings.deal_value_field }}": $.details.dealValue`.
    pub fields: BTreeMap<String, FieldMapping>,
    /// Validation rules. A record that breaks one is not written; the message goes to the audit
    /// trail (and, through `on_failure`, to the CRM record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Rule>,
    /// Fields written back to the source record after a successful write. The written record
    /// is the variable `result` (for example `externalReferenceId: "{{ result.opportunityid }}"`,
    /// or the referral id and link on the CRM record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<WriteBack>,
    /// Fields written back to the source record when the sync fails. The messages are the
    /// variable `violations` (for example ✘ in the name and the audit field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<WriteBack>,
}

/// The kinds of record cosell syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A Partner Center referral owned by you.
    Referral,
    /// A referral on the same engagement owned by Microsoft (Microsoft CRM ID and status).
    RelatedReferral,
    /// A CRM opportunity.
    Opportunity,
    /// A CRM lead.
    Lead,
    /// A CRM account (customer).
    Account,
    /// A CRM contact.
    Contact,
    /// A "Microsoft Partner Center Solutions" child record of an opportunity.
    Solution,
}

impl RecordKind {
    /// The name used in the file and as the template variable of a flow's source.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Referral => "referral",
            RecordKind::RelatedReferral => "related_referral",
            RecordKind::Opportunity => "opportunity",
            RecordKind::Lead => "lead",
            RecordKind::Account => "account",
            RecordKind::Contact => "contact",
            RecordKind::Solution => "solution",
        }
    }

    /// Whether this is a Partner Center record.
    pub fn is_partner_center(self) -> bool {
        matches!(self, RecordKind::Referral | RecordKind::RelatedReferral)
    }

    /// The standard CRM table for this record kind.
    pub fn default_entity(self, crm: CrmKind) -> Option<&'static str> {
        use RecordKind::*;
        Some(match (crm, self) {
            (_, Referral | RelatedReferral) => return None,
            (CrmKind::Dynamics365, Opportunity) => "opportunities",
            (CrmKind::Dynamics365, Lead) => "leads",
            (CrmKind::Dynamics365, Account) => "accounts",
            (CrmKind::Dynamics365, Contact) => "contacts",
            (CrmKind::Dynamics365, Solution) => "cosell_solutions",
            (CrmKind::Salesforce, Opportunity) => "Opportunity",
            (CrmKind::Salesforce, Lead) => "Lead",
            (CrmKind::Salesforce, Account) => "Account",
            (CrmKind::Salesforce, Contact) => "Contact",
            (CrmKind::Salesforce, Solution) => "Microsoft_Solution__c",
        })
    }
}

/// Fields written back to a flow's source record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteBack {
    /// Source-record fields and their values.
    pub fields: BTreeMap<String, FieldMapping>,
}

/// A validation rule.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Expression that must be true, e.g. `referral.customerProfile.address.country is
    /// country_code`.
    pub check: String,
    /// What the user sees in the audit trail when the check fails, e.g. "Two letter country
    /// code is required". May be a template.
    pub message: String,
    /// Apply the rule only when this expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// Where a field's value comes from. Short forms: a string starting with `$` is a JSONPath
/// (`$.details.dealValue`); a string containing `{{` or `{%` is a template
/// (`"{{ referral.name }}"`); any other string, number, `true`/`false` or `null` is a constant.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FieldMapping {
    /// Long form with transforms, value map, default, write rules.
    Full(Box<FieldSpec>),
    /// Short form: JSONPath, template or constant.
    Short(ShortMapping),
}

/// The short form of a field mapping: a scalar.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ShortMapping {
    /// `$…` JSONPath, `{{ … }}` template, or constant text.
    Text(String),
    /// A constant number.
    Number(serde_json::Number),
    /// A constant yes/no.
    Bool(bool),
    /// Null: clear the field.
    Null(()),
}

/// A field mapping in long form. Give exactly one of `path`, `template`, `expr`, `const`,
/// `lookup`, `setting` or `each`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// JSONPath into the source record, e.g. `$.customerProfile.address.postalCode`. A path
    /// that matches nothing gives null; one that matches several values gives an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// minijinja template rendered to text, e.g. `"{{ referral.name }} ✔"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// minijinja expression whose value keeps its type (number, yes/no, list), e.g.
    /// `referral.details.dealValue * 1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// A constant value.
    #[serde(default, rename = "const", skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    /// The value of a setting, by name (`deal_value_field`, or one of your `custom` settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// Name of a lookup (in `lookups:`) whose result this field receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
    /// Build an array: one element per match of this JSONPath, each mapped with `fields`
    /// (inside them `$` and `item` are the element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    /// With `each`: the fields of every element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldMapping>>,
    /// Value used when the source is missing, null or empty text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Conversions applied in order, e.g. `[trim, country_code]` or `[{ truncate: 300 }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<Transform>,
    /// Translate the value through this value map (after the transforms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// Translate the value through this value map backwards (values → keys). The map's values
    /// must be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_map: Option<String>,
    /// The value's type, checked after the transforms: a mismatch is a rule violation, and
    /// `cosell validate` checks constants and known Partner Center fields against it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// A rule violation with this message when the value ends up null or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<String>,
    /// Write the field only when this expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// When to write: `always` (default), `create` (only when the target record is created,
    /// e.g. "Sync with Partner Center = Yes" on new records) or `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<WriteOn>,
    /// Who wins when both sides changed this field since the last sync: `partner_center`,
    /// `crm` or `newest`. Default: the flow's source side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// When a field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteOn {
    /// On create and on every update.
    Always,
    /// Only when the target record is created.
    Create,
    /// Only when an existing target record is updated.
    Update,
}

/// Who wins a conflicting change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Partner Center's value wins.
    PartnerCenter,
    /// The CRM's value wins.
    Crm,
    /// The most recent change wins.
    Newest,
}

/// Value types a field can be checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Text.
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// `true` / `false`.
    Boolean,
    /// A date, `YYYY-MM-DD`.
    Date,
    /// A UTC date and time, `YYYY-MM-DDThh:mm:ssZ`.
    Datetime,
    /// A list.
    Array,
    /// An object.
    Object,
}

impl ValueType {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Date => "date",
            ValueType::Datetime => "datetime",
            ValueType::Array => "array",
            ValueType::Object => "object",
        }
    }
}

/// A conversion step. Written as a bare name (`trim`) or a one-key object with an argument
/// (`{ truncate: 300 }`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Remove leading and trailing whitespace.
    Trim,
    /// Upper-case text.
    Upper,
    /// Lower-case text.
    Lower,
    /// Empty text becomes null.
    EmptyToNull,
    /// Cut text to at most this many characters (CRM column length limits).
    Truncate(usize),
    /// Text longer than this many characters is a rule violation.
    MaxLength(usize),
    /// Country name, alpha-3 or alpha-2 code (any case) → two-letter ISO 3166-1 code, e.g.
    /// `United States`, `usa`, `us` → `US`. Unknown countries are a rule violation.
    CountryCode,
    /// Country code (alpha-2 or alpha-3) or name → the English short name, e.g. `US` →
    /// `United States`.
    CountryName,
    /// Country name or code → three-letter ISO 3166-1 code, e.g. `US` → `USA`.
    CountryAlpha3,
    /// Text → upper-case ISO 4217 currency code; unknown codes are a rule violation.
    CurrencyCode,
    /// Date or date-time → date only, `YYYY-MM-DD` (Dataverse DateOnly columns, Salesforce
    /// `CloseDate`).
    Date,
    /// Date or date-time → UTC date-time, `YYYY-MM-DDThh:mm:ssZ` (Partner Center dates).
    Datetime,
    /// Text or number → number (`"10000"` → `10000`).
    Number,
    /// Text or number → whole number, rounding half away from zero.
    Integer,
    /// Round a number to this many decimals.
    Round(u32),
    /// Any scalar → text.
    String,
    /// `true`/`false`, `yes`/`no`, `1`/`0` → `true`/`false`.
    Boolean,
    /// A list → its first element (null when empty).
    First,
    /// A list → its elements joined by this separator.
    Join(String),
    /// Remove a trailing ✔ or ✘ mark (and the space before it) from text.
    StripMarks,
    /// Translate through this value map (same as the field's `map:`, but at this step).
    Map(String),
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// An inline test, run by `cosell test`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the test shows, e.g. "doc example becomes an on-hold opportunity".
    pub name: String,
    /// The flow under test.
    pub flow: String,
    /// The source record, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The source record, from a JSON file (relative to this mapping file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file: Option<String>,
    /// Changes applied to the input before mapping, by dotted path
    /// (`customerProfile.address.country: USA`, `customerProfile.team.0.email: null`).
    /// Lets many tests share one example payload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, Value>,
    /// Dotted paths removed from the input before mapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Setting overrides for this test, e.g. `{ checkmark_in_name: false }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Scalar>,
    /// The record the parent flow wrote (for flows with `parent:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Value>,
    /// Whether the target record is being created (default) or updated; decides `on:` fields.
    #[serde(default)]
    pub operation: Operation,
    /// The written record `on_success` sees as `result` (e.g. `{ opportunityid: … }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// CRM records lookups search, by table: `{ accounts: [ { accountid: …, name: … } ] }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, Vec<Value>>,
    /// What the flow must produce.
    pub expect: Expectation,
}

/// Whether a target record is created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new target record.
    #[default]
    Create,
    /// An existing target record.
    Update,
}

/// Expected outcome of a test.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The flow's `when` is false: nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
    /// Fields that must have exactly these values (other fields are not checked). For
    /// `for_each` flows, the first record; use `records` for all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
    /// Fields that must not be written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// For `for_each` flows: each produced record's expected fields, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<BTreeMap<String, Value>>>,
    /// Rule violation messages, exactly and in order. `[]` asserts there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<String>>,
    /// Lookups the record needs, by lookup name: the `match` values (and, with `records`,
    /// whether a record was `found` or would be `created`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookups: BTreeMap<String, Value>,
    /// Fields written back to the source on failure (`on_failure`), checked like `fields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub on_failure: BTreeMap<String, Value>,
    /// Fields written back to the source on success (`on_success`), given the test's `result`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub on_success: BTreeMap<String, Value>,
}
