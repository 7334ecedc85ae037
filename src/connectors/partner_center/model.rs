//! Typed models of the Partner Center resources this client touches: the V3 `Referral`
//! with every property of partner-center-api.md §1 (the documented table plus the
//! connector contract of §1.3), the webhook registration, the webhook event and the
//! validation-event status (§3).
//!
//! Three rules make a read → modify → write lossless, whatever the service sends:
//! - every struct keeps the properties it does not name in `extra`, verbatim;
//! - a named property that arrives as `null`, or in a shape the model cannot read (a
//!   string where a boolean is documented, say), is also kept in `extra`, untouched, and
//!   written back as it came — reading a referral never fails because of one odd field;
//! - an absent property stays absent on write (no invented `null`s).
//!
//! Setting a typed field overrides whatever `extra` kept under the same name. Enums are
//! closed sets of the documented values plus `Other(String)`, so a value newer than the
//! documentation is carried, not refused. `dealValue` and the other amounts accept a
//! number or a numeric string and write back what they read ([`Amount`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Reads the named property `key` out of `extra` into `T`. A `null`, or a value `T`
/// cannot read, stays in `extra` (and is written back as it came).
fn take<T: DeserializeOwned>(extra: &mut Map<String, Value>, key: &str) -> Option<T> {
    let value = extra.get(key)?;
    if value.is_null() {
        return None;
    }
    match T::deserialize(value) {
        Ok(parsed) => {
            extra.remove(key);
            Some(parsed)
        }
        Err(_) => {
            // The serde message would quote the value (customer data); name the type only.
            tracing::warn!(
                property = key,
                expected = std::any::type_name::<T>(),
                "a Partner Center property is not in its documented shape; kept verbatim"
            );
            None
        }
    }
}

/// A struct with typed `Option` properties and an `extra` map, serialized by hand so the
/// three rules of this module hold for every model.
macro_rules! model {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $json:literal => $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: Option<$ty>,
            )*
            /// Properties this model does not name, and named properties that arrived as
            /// `null` or in a shape the model cannot read: written back verbatim.
            pub extra: Map<String, Value>,
        }

        impl $name {
            /// The JSON property names this model reads into typed fields.
            pub const PROPERTIES: &'static [&'static str] = &[$($json),*];

            /// Whether the typed field for JSON property `key` is set.
            fn typed_is_set(&self, key: &str) -> bool {
                match key {
                    $($json => self.$field.is_some(),)*
                    _ => false,
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut map = serializer.serialize_map(None)?;
                $(
                    if let Some(value) = &self.$field {
                        map.serialize_entry($json, value)?;
                    }
                )*
                for (key, value) in &self.extra {
                    // A typed field that is set wins over what was kept from the read.
                    if !self.typed_is_set(key) {
                        map.serialize_entry(key, value)?;
                    }
                }
                map.end()
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let mut extra = Map::<String, Value>::deserialize(deserializer)?;
                let mut out = $name::default();
                $(
                    out.$field = take(&mut extra, $json);
                )*
                out.extra = extra;
                Ok(out)
            }
        }
    };
}

/// An enum of documented string values with an `Other` fallback.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $wire:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )*
            /// A value the documentation does not list; carried verbatim.
            Other(String),
        }

        impl $name {
            /// The value on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)*
                    $name::Other(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                match value {
                    $($wire => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Ok($name::from(value.as_str()))
            }
        }
    };
}

string_enum! {
    /// `status` (§1.4).
    pub enum ReferralStatus {
        /// `None`.
        None = "None",
        /// `New`: not answered yet.
        New = "New",
        /// `Active`: accepted.
        Active = "Active",
        /// `Closed`: terminal.
        Closed = "Closed",
    }
}

string_enum! {
    /// `substatus` (§1.4). `Error` is seen in the UI/CSV since 2023 but not in the API table.
    pub enum ReferralSubstatus {
        /// `None`.
        None = "None",
        /// `Pending` (New).
        Pending = "Pending",
        /// `Received` (New).
        Received = "Received",
        /// `Accepted` (Active).
        Accepted = "Accepted",
        /// `Won` (Closed).
        Won = "Won",
        /// `Lost` (Closed).
        Lost = "Lost",
        /// `Declined` (Closed).
        Declined = "Declined",
        /// `Expired` (Closed).
        Expired = "Expired",
        /// `Error` (Closed; UI/CSV only).
        Error = "Error",
    }
}

string_enum! {
    /// `type` (the docs' `ReferralType`).
    pub enum ReferralType {
        /// Visible to two parties working together (co-sell).
        Shared = "Shared",
        /// Visible to one partner.
        Independent = "Independent",
    }
}

string_enum! {
    /// `qualification`.
    pub enum ReferralQualification {
        /// `None`.
        None = "None",
        /// Created directly by a customer.
        Direct = "Direct",
        /// From Microsoft marketing automation.
        MarketingQualified = "MarketingQualified",
        /// From a Microsoft sales agent.
        SalesQualified = "SalesQualified",
    }
}

string_enum! {
    /// `direction` (present in every response, used in `$filter`).
    pub enum Direction {
        /// Shared with this partner.
        Incoming = "Incoming",
        /// Created by this partner.
        Outgoing = "Outgoing",
    }
}

string_enum! {
    /// `target[].type`.
    pub enum TargetType {
        /// `None`.
        None = "None",
        /// A location of a business profile (`{id: "msft"}` targets Microsoft).
        BusinessProfileLocation = "BusinessProfileLocation",
        /// A solution profile of the partner.
        SolutionProfile = "SolutionProfile",
    }
}

string_enum! {
    /// `details.requirements.solutions[].type`.
    pub enum SolutionType {
        /// `None`.
        None = "None",
        /// Pre-defined solution names.
        Category = "Category",
        /// Solutions from the Microsoft catalog.
        Name = "Name",
    }
}

string_enum! {
    /// `salesStage` (connector contract; exact wire values UNCERTAIN in the docs).
    pub enum SalesStage {
        /// Qualify.
        Qualify = "Qualify",
        /// Develop.
        Develop = "Develop",
        /// Propose.
        Propose = "Propose",
        /// Close.
        Close = "Close",
    }
}

string_enum! {
    /// `inviteContext.assistanceRequestCode` ("How can Microsoft help?").
    pub enum AssistanceRequestCode {
        /// No help requested.
        Unknown = "Unknown",
        /// General or other.
        GeneralOrOther = "GeneralOrOther",
        /// Customer technical architecture.
        CustomerTechnicalArchitecture = "CustomerTechnicalArchitecture",
        /// Proof of concept or demo.
        ProofOfConceptOrDemo = "ProofOfConceptOrDemo",
        /// Quotes or licensing.
        QuotesOrLicensing = "QuotesOrLicensing",
        /// Post-sales customer success.
        PostSalesCustomerSuccess = "PostSalesCustomerSuccess",
        /// Workload-specific value proposition.
        WorkloadSpecificValueProposition = "WorkloadSpecificValueProposition",
    }
}

/// A decimal amount (`details.dealValue`, contract and solution values): a JSON number,
/// or a string holding one (the documented PATCH example sends `"10000"`). Written back
/// in the form it was read, so `50000` stays `50000` and `"10000"` stays a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Amount {
    /// A JSON number, kept exactly (integers stay integers).
    Number(serde_json::Number),
    /// A numeric string, kept as sent.
    Text(String),
}

impl Amount {
    /// The amount as a float.
    pub fn as_f64(&self) -> f64 {
        match self {
            Amount::Number(number) => number.as_f64().unwrap_or_default(),
            Amount::Text(text) => text.trim().parse().unwrap_or_default(),
        }
    }

    /// A number amount; `None` for NaN or infinity, which JSON cannot carry.
    pub fn from_f64(value: f64) -> Option<Amount> {
        serde_json::Number::from_f64(value).map(Amount::Number)
    }
}

impl From<i64> for Amount {
    fn from(value: i64) -> Self {
        Amount::Number(value.into())
    }
}

impl From<u64> for Amount {
    fn from(value: u64) -> Self {
        Amount::Number(value.into())
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Number(number) => number.serialize(serializer),
            Amount::Text(text) => serializer.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(deserializer)? {
            Value::Number(number) => Ok(Amount::Number(number)),
            Value::String(text) => match text.trim().parse::<f64>() {
                Ok(parsed) if parsed.is_finite() => Ok(Amount::Text(text)),
                _ => Err(D::Error::custom("a string amount must hold a number")),
            },
            _ => Err(D::Error::custom(
                "an amount is a number or a numeric string",
            )),
        }
    }
}

model! {
    /// A co-sell referral (lead or opportunity), `V3.Referral`: the documented table of
    /// partner-center-api.md §1.2 plus the connector contract of §1.3.
    pub struct Referral {
        /// `@odata.context` (single GET).
        "@odata.context" => odata_context: String,
        /// The referral id.
        "id" => id: String,
        /// Referrals of one engagement share it (the partner's and Microsoft's side).
        "engagementId" => engagement_id: String,
        /// Name of the referral.
        "name" => name: String,
        /// The partner's own id, e.g. the CRM opportunity id.
        "externalReferenceId" => external_reference_id: String,
        /// Owning organization.
        "organizationId" => organization_id: String,
        /// Owning organization's name.
        "organizationName" => organization_name: String,
        /// UTC date time.
        "createdDateTime" => created_date_time: String,
        /// UTC date time.
        "updatedDateTime" => updated_date_time: String,
        /// When the referral expires (often `null`).
        "expirationDateTime" => expiration_date_time: String,
        /// When the partner accepted it.
        "acceptedDateTime" => accepted_date_time: String,
        /// When it was closed.
        "closedDateTime" => closed_date_time: String,
        /// Status.
        "status" => status: ReferralStatus,
        /// Substatus.
        "substatus" => substatus: ReferralSubstatus,
        /// Why the status is what it is (e.g. why it was lost).
        "statusReason" => status_reason: String,
        /// `Shared` or `Independent`.
        "type" => referral_type: ReferralType,
        /// Qualification.
        "qualification" => qualification: ReferralQualification,
        /// Source of a marketplace lead (values undocumented).
        "referralSource" => referral_source: String,
        /// Call to action of a marketplace lead (values undocumented).
        "callToAction" => call_to_action: String,
        /// The customer.
        "customerProfile" => customer_profile: CustomerProfile,
        /// Consents.
        "consent" => consent: Consent,
        /// Deal details.
        "details" => details: ReferralDetails,
        /// Customer's intent to transact on the marketplace ("Yes", "No", "Have not decided").
        "customerMarketplaceIntent" => customer_marketplace_intent: String,
        /// The partner's team on the referral.
        "team" => team: Vec<Member>,
        /// Who invited and why.
        "inviteContext" => invite_context: InviteContext,
        /// Concurrency token; send it as `If-Match`.
        "eTag" => e_tag: String,
        /// Who the referral is for.
        "target" => target: Vec<Target>,
        /// `Incoming` or `Outgoing`.
        "direction" => direction: Direction,
        /// `self` and `relatedReferrals` links.
        "links" => links: Links,
        /// Marketing campaign id.
        "campaignId" => campaign_id: String,
        /// Marked as favourite.
        "favorite" => favorite: bool,
        /// What last modified it.
        "lastModifiedVia" => last_modified_via: String,
        /// Run id of the last modification.
        "lastRunId" => last_run_id: String,
        /// Referral program.
        "referralProgram" => referral_program: String,
        /// Sales stage.
        "salesStage" => sales_stage: SalesStage,
        /// Microsoft-side tracking (MSX id).
        "trackingInfo" => tracking_info: TrackingInfo,
        /// Partner id (formerly MPN id).
        "mpnId" => mpn_id: String,
        /// Deal registrations.
        "registrations" => registrations: Vec<DealRegistration>,
        /// Deal registration status.
        "registrationStatus" => registration_status: String,
        /// Lead quality.
        "quality" => quality: String,
        /// Reported as spam.
        "isSpam" => is_spam: bool,
        /// Tags.
        "tags" => tags: Vec<String>,
    }
}

impl Referral {
    /// The id, when present.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The engagement id, when present.
    pub fn engagement_id(&self) -> Option<&str> {
        self.engagement_id.as_deref()
    }

    /// The eTag, when present (send it verbatim as `If-Match`).
    pub fn e_tag(&self) -> Option<&str> {
        self.e_tag.as_deref()
    }
}

model! {
    /// `customerProfile`.
    pub struct CustomerProfile {
        /// Customer name.
        "name" => name: String,
        /// Customer address.
        "address" => address: Address,
        /// Number of employees (`10to50employees`, …).
        "size" => size: String,
        /// Customer contacts.
        "team" => team: Vec<Member>,
        /// External ids (DUNS, …); the wire shape is uncertain (`[]` and `{}` both seen),
        /// so it is kept as JSON.
        "ids" => ids: Value,
    }
}

model! {
    /// `customerProfile.address`.
    pub struct Address {
        /// Line 1.
        "addressLine1" => address_line1: String,
        /// Line 2.
        "addressLine2" => address_line2: String,
        /// City.
        "city" => city: String,
        /// State.
        "state" => state: String,
        /// Postal code.
        "postalCode" => postal_code: String,
        /// ISO 3166 two-letter country code.
        "country" => country: String,
        /// Region.
        "region" => region: String,
    }
}

model! {
    /// A person on a team (`team[]`, `customerProfile.team[]`).
    pub struct Member {
        /// First name.
        "firstName" => first_name: String,
        /// Last name.
        "lastName" => last_name: String,
        /// Phone.
        "phoneNumber" => phone_number: String,
        /// Email.
        "email" => email: String,
        /// Notification preferences.
        "contactPreference" => contact_preference: ContactPreference,
    }
}

model! {
    /// `contactPreference`.
    pub struct ContactPreference {
        /// Culture name, e.g. `en-us`.
        "locale" => locale: String,
        /// No notifications.
        "disableNotifications" => disable_notifications: bool,
    }
}

model! {
    /// `consent`.
    pub struct Consent {
        /// Consent to contact.
        "consentToContact" => consent_to_contact: bool,
        /// Consent to share personal data with others (the doubled "To" is the API's).
        "consentToToShareInfoWithOthers" => consent_to_to_share_info_with_others: bool,
        /// Share the deal with Microsoft sellers.
        "consentToShareReferralWithMicrosoftSellers" => consent_to_share_referral_with_microsoft_sellers: bool,
    }
}

model! {
    /// `details`.
    pub struct ReferralDetails {
        /// Notes.
        "notes" => notes: String,
        /// Estimated deal value (number or numeric string).
        "dealValue" => deal_value: Amount,
        /// ISO 4217 currency code.
        "currency" => currency: String,
        /// When the customer wants to close.
        "closingDateTime" => closing_date_time: String,
        /// Customer action.
        "customerAction" => customer_action: String,
        /// The customer asked to be contacted.
        "customerRequestedContact" => customer_requested_contact: bool,
        /// Requirements.
        "requirements" => requirements: ReferralRequirements,
    }
}

model! {
    /// `details.requirements`.
    pub struct ReferralRequirements {
        /// Industries.
        "industries" => industries: Vec<Tag>,
        /// Products.
        "products" => products: Vec<Tag>,
        /// Services.
        "services" => services: Vec<Tag>,
        /// Solutions (co-sell solution ids such as `SOL-34104-EBB`).
        "solutions" => solutions: Vec<SolutionTag>,
        /// Offers (shape undocumented).
        "offers" => offers: Vec<Value>,
        /// Partner role, solution area and play (shape undocumented).
        "additionalRequirements" => additional_requirements: Value,
    }
}

model! {
    /// `{ "id": … }` in `industries`, `products`, `services`.
    pub struct Tag {
        /// The tag.
        "id" => id: String,
    }
}

model! {
    /// A solution in `details.requirements.solutions`.
    pub struct SolutionTag {
        /// Solution id.
        "id" => id: String,
        /// Solution name.
        "name" => name: String,
        /// Solution type.
        "type" => solution_type: SolutionType,
    }
}

model! {
    /// `target[]`.
    pub struct Target {
        /// Solution or profile id (`msft` for Microsoft).
        "id" => id: String,
        /// Target type.
        "type" => target_type: TargetType,
    }
}

model! {
    /// `inviteContext`.
    pub struct InviteContext {
        /// Notes to the invitee.
        "notes" => notes: String,
        /// Who invited.
        "invitedBy" => invited_by: InvitedBy,
        /// What help is asked of Microsoft.
        "assistanceRequestCode" => assistance_request_code: AssistanceRequestCode,
    }
}

model! {
    /// `inviteContext.invitedBy`.
    pub struct InvitedBy {
        /// Organization id (`msft` for Microsoft).
        "organizationId" => organization_id: String,
        /// Organization name.
        "organizationName" => organization_name: String,
    }
}

model! {
    /// `links`.
    pub struct Links {
        /// Referrals of the same engagement.
        "relatedReferrals" => related_referrals: Link,
        /// This referral.
        "self" => self_link: Link,
    }
}

model! {
    /// One link.
    pub struct Link {
        /// The URI.
        "uri" => uri: String,
        /// The HTTP method.
        "method" => method: String,
    }
}

model! {
    /// `trackingInfo`.
    pub struct TrackingInfo {
        /// The deal's id in Microsoft's MSX ("Microsoft CRM identifier").
        "microsoftMsxId" => microsoft_msx_id: String,
    }
}

model! {
    /// A deal registration (`registrations[]`).
    pub struct DealRegistration {
        /// Id.
        "id" => id: String,
        /// Type (`AzureIPCoSell`).
        "type" => registration_type: String,
        /// When registered.
        "registrationDateTime" => registration_date_time: String,
        /// Status.
        "status" => status: String,
        /// Status reason.
        "statusReason" => status_reason: String,
        /// Contract.
        "contract" => contract: Contract,
        /// Solutions.
        "solutionDetails" => solution_details: Vec<SolutionDetail>,
        /// Status timestamps.
        "statusHistory" => status_history: StatusHistory,
    }
}

model! {
    /// `registrations[].contract`.
    pub struct Contract {
        /// Value.
        "value" => value: Amount,
        /// Currency.
        "currency" => currency: String,
        /// Start.
        "startDateTime" => start_date_time: String,
        /// End.
        "endDateTime" => end_date_time: String,
        /// Signed.
        "signDateTime" => sign_date_time: String,
        /// `Perpetual` or `Finite`.
        "term" => term: String,
    }
}

model! {
    /// `registrations[].solutionDetails[]`.
    pub struct SolutionDetail {
        /// Solution id.
        "id" => id: String,
        /// Name.
        "name" => name: String,
        /// Value.
        "value" => value: Amount,
        /// Deployed on Azure.
        "isDeployedOnAzure" => is_deployed_on_azure: bool,
        /// `Customer` or `Partner`.
        "primaryDeploymentOn" => primary_deployment_on: String,
        /// `PayAsYouGo` or `Other`.
        "pricingModel" => pricing_model: String,
        /// Marketplace transaction.
        "marketplaceTransactionDetails" => marketplace_transaction_details: MarketplaceTransactionDetails,
    }
}

model! {
    /// `solutionDetails[].marketplaceTransactionDetails`.
    pub struct MarketplaceTransactionDetails {
        /// Transacted through the marketplace.
        "isMarketplaceTransacted" => is_marketplace_transacted: bool,
        /// When.
        "marketplaceTransactionDateTime" => marketplace_transaction_date_time: String,
    }
}

model! {
    /// `registrations[].statusHistory`.
    pub struct StatusHistory {
        /// Review pending since.
        "reviewPendingDateTime" => review_pending_date_time: String,
        /// Action required since.
        "actionRequiredDateTime" => action_required_date_time: String,
        /// Passed.
        "passedDateTime" => passed_date_time: String,
        /// Failed.
        "failedDateTime" => failed_date_time: String,
        /// Approved.
        "approvedDateTime" => approved_date_time: String,
    }
}

/// One page of `GET /v1.0/engagements/referrals`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReferralPage {
    /// The referrals of this page.
    #[serde(default)]
    pub value: Vec<Referral>,
    /// The absolute URL of the next page, followed verbatim.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
    /// `@odata.count` (whether it counts the page or all matches is undocumented).
    #[serde(rename = "@odata.count", default)]
    pub count: Option<u64>,
}

model! {
    /// The webhook registration (§3.2). The service answers in PascalCase (docs) or
    /// camelCase (swagger); the client canonicalizes names before reading.
    pub struct WebhookRegistration {
        /// Subscriber id.
        "SubscriberId" => subscriber_id: String,
        /// Where events are delivered.
        "WebhookUrl" => webhook_url: String,
        /// Subscribed event names.
        "WebhookEvents" => webhook_events: Vec<String>,
        /// The signature goes in `x-ms-signature` instead of `Authorization`.
        "SignatureTokenToMsSignatureHeader" => signature_token_to_ms_signature_header: bool,
        /// Extra properties (swagger `properties`).
        "Properties" => properties: Map<String, Value>,
        /// Last modification.
        "LastModifiedTimestamp" => last_modified_timestamp: String,
    }
}

model! {
    /// A delivered webhook event (§3.1). Take the referral id with
    /// [`WebhookEvent::referral_id`], never by calling `ResourceUri`.
    pub struct WebhookEvent {
        /// `referral-created`, `referral-updated`, `related-referral-*`, `test-created`, …
        "EventName" => event_name: String,
        /// The resource; its last path segment is the id.
        "ResourceUri" => resource_uri: String,
        /// `referral` or `test`.
        "ResourceName" => resource_name: String,
        /// Optional audit record.
        "AuditUri" => audit_uri: String,
        /// When the change happened.
        "ResourceChangeUtcDate" => resource_change_utc_date: String,
    }
}

impl WebhookEvent {
    /// The referral the event is about: the last segment of `ResourceUri`, when the event
    /// is about a referral (`ResourceName` is `referral`, or absent).
    pub fn referral_id(&self) -> Option<String> {
        if let Some(name) = &self.resource_name
            && !name.eq_ignore_ascii_case("referral")
        {
            return None;
        }
        super::referral_id_from_resource_uri(self.resource_uri.as_deref()?)
    }
}

model! {
    /// `GET /webhooks/v1/registration/validationEvents/{correlationId}`.
    pub struct ValidationStatus {
        /// The correlation id the validation POST returned.
        "correlationId" => correlation_id: String,
        /// Partner id.
        "partnerId" => partner_id: String,
        /// `pending`, `completed`, …
        "status" => status: String,
        /// Where the test event was sent.
        "callbackUrl" => callback_url: String,
        /// Delivery attempts.
        "results" => results: Vec<ValidationResult>,
    }
}

model! {
    /// One delivery attempt of a validation event.
    pub struct ValidationResult {
        /// .NET status name, `OK` on success.
        "responseCode" => response_code: String,
        /// Response excerpt.
        "responseMessage" => response_message: String,
        /// Whether Partner Center itself failed.
        "systemError" => system_error: bool,
        /// When.
        "dateTimeUtc" => date_time_utc: String,
    }
}

/// Renames the keys of `map` that match one of `canonical` ignoring ASCII case to that
/// spelling (`webhookUrl` → `WebhookUrl`), for services that are case-insensitive.
pub(crate) fn canonicalize_keys(map: Map<String, Value>, canonical: &[&str]) -> Map<String, Value> {
    map.into_iter()
        .map(|(key, value)| {
            let key = canonical
                .iter()
                .find(|name| name.eq_ignore_ascii_case(&key))
                .map_or(key, |name| (*name).to_owned());
            (key, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn round_trip<T: Serialize + DeserializeOwned>(value: &Value) -> Value {
        let typed: T = serde_json::from_value(value.clone()).expect("reads");
        serde_json::to_value(&typed).expect("writes")
    }

    /// Fixtures shipped in the repository (always present) and the shared research
    /// fixtures (when the checkout has them), each read as the type it documents.
    #[test]
    fn fixtures_round_trip_exactly() {
        let mut checked = 0;
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/examples");
        let shared = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/partner-center"
        );
        for dir in [repo, shared] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !name.ends_with(".json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("readable fixture");
                let value: Value = serde_json::from_str(&text).expect("fixture is JSON");
                let back = if name.contains("referral") && name.starts_with("list-") {
                    let page = value.as_object().expect("page object");
                    for item in page["value"].as_array().expect("value array") {
                        assert_eq!(&round_trip::<Referral>(item), item, "{name}");
                    }
                    let page: ReferralPage = serde_json::from_value(value.clone()).unwrap();
                    assert_eq!(page.value.len(), 1);
                    assert!(page.next_link.is_some());
                    value.clone()
                } else if name.contains("referral") && !name.starts_with("webhook-") {
                    if name.starts_with("patch-") {
                        for ops in value.as_object().expect("examples").values() {
                            assert_eq!(
                                &round_trip::<Vec<super::super::PatchOp>>(ops),
                                ops,
                                "{name}"
                            );
                        }
                        value.clone()
                    } else {
                        round_trip::<Referral>(&value)
                    }
                } else if name.starts_with("webhook-event") {
                    round_trip::<WebhookEvent>(&value)
                } else if name.starts_with("webhook-registration") {
                    round_trip::<WebhookRegistration>(&value)
                } else {
                    continue;
                };
                assert_eq!(back, value, "{name} did not round-trip");
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} fixtures checked");
    }

    #[test]
    fn documented_fields_are_typed_and_nulls_kept() {
        let value: Value = serde_json::from_str(include_str!(
            "../../../mappings/examples/referral-doc-create-response.json"
        ))
        .unwrap();
        let referral: Referral = serde_json::from_value(value).unwrap();
        assert_eq!(referral.status, Some(ReferralStatus::Active));
        assert_eq!(referral.referral_type, Some(ReferralType::Shared));
        assert_eq!(referral.external_reference_id, None);
        assert_eq!(
            referral.extra.get("externalReferenceId"),
            Some(&Value::Null)
        );
        let details = referral.details.as_ref().unwrap();
        assert_eq!(details.deal_value.as_ref().unwrap().as_f64(), 50000.0);
        let team = referral
            .customer_profile
            .as_ref()
            .unwrap()
            .team
            .as_ref()
            .unwrap();
        assert_eq!(team[0].first_name.as_deref(), Some("Sue"));
        assert_eq!(
            referral.target.as_ref().unwrap()[0].target_type,
            Some(TargetType::SolutionProfile)
        );
        assert!(referral.e_tag().unwrap().starts_with('"'));

        // Setting a field that was null overrides the kept null.
        let mut referral = referral;
        referral.external_reference_id = Some("opp-1".into());
        let back = serde_json::to_value(&referral).unwrap();
        assert_eq!(back["externalReferenceId"], "opp-1");
    }

    #[test]
    fn odd_values_are_carried_not_refused() {
        let value = json!({
            "status": "Engaged",
            "favorite": "yes",
            "details": { "dealValue": "10000", "currency": 5, "futureDetail": [1] },
            "team": "not-an-array",
            "customerProfile": { "ids": {}, "address": { "country": "US", "geo": { "lat": 1 } } },
            "futureField": { "x": 1 }
        });
        let referral: Referral = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            referral.status,
            Some(ReferralStatus::Other("Engaged".into()))
        );
        assert_eq!(referral.favorite, None);
        assert_eq!(referral.extra["favorite"], "yes");
        let details = referral.details.as_ref().unwrap();
        assert_eq!(details.deal_value, Some(Amount::Text("10000".into())));
        assert_eq!(details.deal_value.as_ref().unwrap().as_f64(), 10000.0);
        assert_eq!(details.currency, None);
        assert_eq!(referral.extra["futureField"], json!({ "x": 1 }));
        assert_eq!(serde_json::to_value(&referral).unwrap(), value);
        // A string that is not a number is not an amount; it is kept verbatim.
        let odd: ReferralDetails = serde_json::from_value(json!({ "dealValue": "lots" })).unwrap();
        assert_eq!(odd.deal_value, None);
        assert_eq!(
            serde_json::to_value(&odd).unwrap(),
            json!({ "dealValue": "lots" })
        );
    }

    #[test]
    fn built_referrals_write_no_nulls() {
        let referral = Referral {
            name: Some("Deal".into()),
            target: Some(vec![Target {
                id: Some("msft".into()),
                target_type: Some(TargetType::BusinessProfileLocation),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&referral).unwrap(),
            json!({ "name": "Deal", "target": [{ "id": "msft", "type": "BusinessProfileLocation" }] })
        );
    }

    #[test]
    fn registration_names_are_canonicalized() {
        let Value::Object(map) =
            json!({ "webhookUrl": "https://x", "webhookEvents": ["a"], "subscriberId": "s" })
        else {
            unreachable!()
        };
        let map = canonicalize_keys(map, WebhookRegistration::PROPERTIES);
        let registration: WebhookRegistration = serde_json::from_value(Value::Object(map)).unwrap();
        assert_eq!(registration.webhook_url.as_deref(), Some("https://x"));
        assert_eq!(registration.subscriber_id.as_deref(), Some("s"));
    }

    /// Keys drawn from every model's vocabulary (so typed paths are exercised with values
    /// of every type) plus unknown ones.
    fn key() -> impl Strategy<Value = String> {
        let mut names: Vec<&'static str> = Vec::new();
        for list in [
            Referral::PROPERTIES,
            CustomerProfile::PROPERTIES,
            Address::PROPERTIES,
            Member::PROPERTIES,
            ContactPreference::PROPERTIES,
            Consent::PROPERTIES,
            ReferralDetails::PROPERTIES,
            ReferralRequirements::PROPERTIES,
            SolutionTag::PROPERTIES,
            InviteContext::PROPERTIES,
            Links::PROPERTIES,
            DealRegistration::PROPERTIES,
            SolutionDetail::PROPERTIES,
        ] {
            names.extend_from_slice(list);
        }
        names.extend_from_slice(&["futureField", "x", "@odata.etag"]);
        proptest::sample::select(names).prop_map(str::to_owned)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
            proptest::sample::select(vec![
                "New",
                "Active",
                "Shared",
                "SolutionProfile",
                "10000",
                " 1.5 ",
                "x",
                "",
                "1e999"
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever object the service sends, reading and writing it gives it back.
        #[test]
        fn any_object_round_trips(map in proptest::collection::btree_map(key(), json_value(), 0..8)) {
            let value = Value::Object(map.into_iter().collect());
            prop_assert_eq!(round_trip::<Referral>(&value), value);
        }
    }
}
