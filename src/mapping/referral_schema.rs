//! The shape of a Partner Center referral, as documented (see `shared/reference/partner-center-api.md`
//! §1.2–1.5; the connector's V3 contract is the superset used here).
//!
//! The CRM side of a mapping is the customer's own schema and cannot be checked offline, but the
//! Partner Center side can: `cosell validate` uses this table to catch `$.details.dealvalue`
//! (did you mean `dealValue`?), a `date` transform on a number, or a stage map that misses a
//! status/substatus combination.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The type of a referral field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text.
    String,
    /// A number (`dealValue` is a decimal).
    Number,
    /// `true` / `false`.
    Boolean,
    /// A UTC date-time string.
    Datetime,
    /// Text restricted to these values.
    Enum(&'static [&'static str]),
    /// An object with documented members.
    Object,
    /// An array; its elements are described under `<path>[]`.
    Array,
    /// Free-form JSON (documented as JToken).
    Any,
}

/// `status` values.
pub const STATUS: &[&str] = &["None", "New", "Active", "Closed"];
/// `substatus` values (`Error` is used by the Partner Center UI since 2023).
pub const SUBSTATUS: &[&str] = &[
    "None", "Pending", "Received", "Accepted", "Won", "Lost", "Declined", "Expired", "Error",
];
/// The status/substatus pairs a referral can be in, per the documented transition table.
pub const STATUS_PAIRS: &[&str] = &[
    "New/Pending",
    "New/Received",
    "Active/Accepted",
    "Closed/Won",
    "Closed/Lost",
    "Closed/Declined",
    "Closed/Expired",
];
/// `inviteContext.assistanceRequestCode` values.
pub const ASSISTANCE_REQUEST_CODE: &[&str] = &[
    "Unknown",
    "GeneralOrOther",
    "CustomerTechnicalArchitecture",
    "ProofOfConceptOrDemo",
    "QuotesOrLicensing",
    "PostSalesCustomerSuccess",
    "WorkloadSpecificValueProposition",
];
/// `salesStage` values.
pub const SALES_STAGE: &[&str] = &["Qualify", "Develop", "Propose", "Close"];
/// `type` values.
pub const REFERRAL_TYPE: &[&str] = &["Shared", "Independent"];
/// `qualification` values.
pub const QUALIFICATION: &[&str] = &["None", "Direct", "MarketingQualified", "SalesQualified"];
/// `direction` values.
pub const DIRECTION: &[&str] = &["Incoming", "Outgoing"];
/// `target[].type` values.
pub const TARGET_TYPE: &[&str] = &["None", "BusinessProfileLocation", "SolutionProfile"];

const MEMBER: &[(&str, FieldType)] = &[
    ("firstName", FieldType::String),
    ("lastName", FieldType::String),
    ("phoneNumber", FieldType::String),
    ("email", FieldType::String),
    ("contactPreference", FieldType::Object),
    ("contactPreference.locale", FieldType::String),
    ("contactPreference.disableNotifications", FieldType::Boolean),
];

const TAG: &[(&str, FieldType)] = &[("id", FieldType::String)];
const SOLUTION: &[(&str, FieldType)] = &[
    ("id", FieldType::String),
    ("name", FieldType::String),
    ("type", FieldType::Enum(&["None", "Category", "Name"])),
];

/// Top-level and nested fields (arrays' elements under `name[]`).
const FIELDS: &[(&str, FieldType)] = &[
    ("@odata.context", FieldType::String),
    ("id", FieldType::String),
    ("engagementId", FieldType::String),
    ("organizationId", FieldType::String),
    ("organizationName", FieldType::String),
    ("name", FieldType::String),
    ("externalReferenceId", FieldType::String),
    ("createdDateTime", FieldType::Datetime),
    ("updatedDateTime", FieldType::Datetime),
    ("expirationDateTime", FieldType::Datetime),
    ("acceptedDateTime", FieldType::Datetime),
    ("closedDateTime", FieldType::Datetime),
    ("status", FieldType::Enum(STATUS)),
    ("substatus", FieldType::Enum(SUBSTATUS)),
    ("statusReason", FieldType::String),
    ("type", FieldType::Enum(REFERRAL_TYPE)),
    ("qualification", FieldType::Enum(QUALIFICATION)),
    ("direction", FieldType::Enum(DIRECTION)),
    ("salesStage", FieldType::Enum(SALES_STAGE)),
    ("campaignId", FieldType::String),
    ("mpnId", FieldType::String),
    ("favorite", FieldType::Boolean),
    ("isSpam", FieldType::Boolean),
    ("lastModifiedVia", FieldType::String),
    ("lastRunId", FieldType::String),
    ("referralProgram", FieldType::String),
    ("referralSource", FieldType::String),
    ("callToAction", FieldType::String),
    ("quality", FieldType::String),
    ("registrationStatus", FieldType::String),
    ("customerMarketplaceIntent", FieldType::String),
    ("eTag", FieldType::String),
    ("tags", FieldType::Array),
    ("tags[]", FieldType::String),
    ("registrations", FieldType::Array),
    ("registrations[]", FieldType::Any),
    ("trackingInfo", FieldType::Object),
    ("trackingInfo.microsoftMsxId", FieldType::String),
    ("consent", FieldType::Object),
    ("consent.consentToContact", FieldType::Boolean),
    ("consent.consentToToShareInfoWithOthers", FieldType::Boolean),
    (
        "consent.consentToShareReferralWithMicrosoftSellers",
        FieldType::Boolean,
    ),
    ("customerProfile", FieldType::Object),
    ("customerProfile.name", FieldType::String),
    ("customerProfile.size", FieldType::String),
    ("customerProfile.ids", FieldType::Any),
    ("customerProfile.address", FieldType::Object),
    ("customerProfile.address.addressLine1", FieldType::String),
    ("customerProfile.address.addressLine2", FieldType::String),
    ("customerProfile.address.city", FieldType::String),
    ("customerProfile.address.state", FieldType::String),
    ("customerProfile.address.postalCode", FieldType::String),
    ("customerProfile.address.country", FieldType::String),
    ("customerProfile.address.region", FieldType::String),
    ("customerProfile.team", FieldType::Array),
    ("customerProfile.team[]", FieldType::Object),
    ("details", FieldType::Object),
    ("details.notes", FieldType::String),
    ("details.dealValue", FieldType::Number),
    ("details.currency", FieldType::String),
    ("details.closingDateTime", FieldType::Datetime),
    ("details.customerAction", FieldType::String),
    ("details.customerRequestedContact", FieldType::Boolean),
    ("details.requirements", FieldType::Object),
    ("details.requirements.industries", FieldType::Array),
    ("details.requirements.industries[]", FieldType::Object),
    ("details.requirements.products", FieldType::Array),
    ("details.requirements.products[]", FieldType::Object),
    ("details.requirements.services", FieldType::Array),
    ("details.requirements.services[]", FieldType::Object),
    ("details.requirements.solutions", FieldType::Array),
    ("details.requirements.solutions[]", FieldType::Object),
    ("details.requirements.offers", FieldType::Array),
    ("details.requirements.offers[]", FieldType::Any),
    (
        "details.requirements.additionalRequirements",
        FieldType::Any,
    ),
    ("inviteContext", FieldType::Object),
    ("inviteContext.notes", FieldType::String),
    (
        "inviteContext.assistanceRequestCode",
        FieldType::Enum(ASSISTANCE_REQUEST_CODE),
    ),
    ("inviteContext.invitedBy", FieldType::Object),
    ("inviteContext.invitedBy.organizationId", FieldType::String),
    (
        "inviteContext.invitedBy.organizationName",
        FieldType::String,
    ),
    ("team", FieldType::Array),
    ("team[]", FieldType::Object),
    ("target", FieldType::Array),
    ("target[]", FieldType::Object),
    ("target[].id", FieldType::String),
    ("target[].type", FieldType::Enum(TARGET_TYPE)),
    ("links", FieldType::Object),
    ("links.self", FieldType::Object),
    ("links.self.uri", FieldType::String),
    ("links.self.method", FieldType::String),
    ("links.relatedReferrals", FieldType::Object),
    ("links.relatedReferrals.uri", FieldType::String),
    ("links.relatedReferrals.method", FieldType::String),
];

fn table() -> &'static HashMap<String, FieldType> {
    static TABLE: OnceLock<HashMap<String, FieldType>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map: HashMap<String, FieldType> =
            FIELDS.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        for (prefix, members) in [
            ("customerProfile.team[]", MEMBER),
            ("team[]", MEMBER),
            ("details.requirements.industries[]", TAG),
            ("details.requirements.products[]", TAG),
            ("details.requirements.services[]", TAG),
            ("details.requirements.solutions[]", SOLUTION),
        ] {
            for (k, t) in members {
                map.insert(format!("{prefix}.{k}"), *t);
            }
        }
        map
    })
}

/// The result of checking a path against the referral schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathCheck {
    /// The path names a documented field of this type.
    Known(FieldType),
    /// The path goes inside a free-form field: nothing can be said.
    Opaque,
    /// `segment` (at index `at` of the path) is not a member of its parent; `members` are the
    /// documented ones, for "did you mean".
    Unknown {
        /// Index of the bad segment.
        at: usize,
        /// The documented members of the parent.
        members: Vec<&'static str>,
    },
}

/// A path step for [`check`]: a member name or an array index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A member.
    Key(&'a str),
    /// An array element.
    Index,
}

/// Checks a member chain (from the referral root) against the documented fields.
pub fn check(steps: &[Step<'_>]) -> PathCheck {
    let table = table();
    let mut key = String::new();
    let mut current = FieldType::Object;
    for (at, step) in steps.iter().enumerate() {
        match (step, current) {
            (_, FieldType::Any) => return PathCheck::Opaque,
            (Step::Index, FieldType::Array) => key.push_str("[]"),
            (Step::Key(name), FieldType::Object) => {
                let candidate = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
                if !table.contains_key(&candidate) {
                    return PathCheck::Unknown {
                        at,
                        members: members_of(&key),
                    };
                }
                key = candidate;
            }
            // Indexing a non-array or taking a member of a scalar.
            _ => {
                return PathCheck::Unknown {
                    at,
                    members: members_of(&key),
                };
            }
        }
        current = match table.get(&key) {
            Some(t) => *t,
            None => {
                return PathCheck::Unknown {
                    at,
                    members: members_of(&key),
                };
            }
        };
    }
    PathCheck::Known(current)
}

/// Documented members of the object at `key` (a table key such as `customerProfile.team[]`).
pub fn members_of(key: &str) -> Vec<&'static str> {
    let prefix = if key.is_empty() {
        String::new()
    } else {
        format!("{key}.")
    };
    let mut out: Vec<&'static str> = Vec::new();
    for (k, _) in FIELDS.iter().chain(MEMBER).chain(SOLUTION) {
        if let Some(rest) = k.strip_prefix(prefix.as_str())
            && !rest.is_empty()
            && !rest.contains(['.', '['])
            && table().contains_key(&format!("{prefix}{rest}"))
            && !out.contains(&rest)
        {
            out.push(rest);
        }
    }
    out
}

/// Splits a dotted target key (`details.dealValue`, `customerProfile.team.0.email`) into steps.
pub fn dotted_steps(path: &str) -> Vec<Step<'_>> {
    path.split('.')
        .map(|s| {
            if s.parse::<usize>().is_ok() {
                Step::Index
            } else {
                Step::Key(s)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_have_types() {
        assert_eq!(
            check(&dotted_steps("details.dealValue")),
            PathCheck::Known(FieldType::Number)
        );
        assert_eq!(
            check(&[
                Step::Key("customerProfile"),
                Step::Key("team"),
                Step::Index,
                Step::Key("email")
            ]),
            PathCheck::Known(FieldType::String)
        );
        assert_eq!(
            check(&dotted_steps("details.requirements.solutions.0.id")),
            PathCheck::Known(FieldType::String)
        );
        assert_eq!(
            check(&dotted_steps("registrations.0.contract.value")),
            PathCheck::Opaque
        );
    }

    #[test]
    fn unknown_paths_name_the_bad_segment_and_the_alternatives() {
        match check(&dotted_steps("details.dealvalue")) {
            PathCheck::Unknown { at, members } => {
                assert_eq!(at, 1);
                assert!(members.contains(&"dealValue"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check(&dotted_steps("name.first")),
            PathCheck::Unknown { at: 1, .. }
        ));
    }
}
