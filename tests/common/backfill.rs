//! What the backfill tests (the reliability suite, `scale_out`) share: generated incoming
//! referrals, the CRM's names for what they read back, and readers for the sandbox's records
//! and call counters. Included with `#[path = "common/backfill.rs"] mod backfill;`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use cosell::config::model::CrmKind;
use cosell::connectors::dataverse::QueryOptions;
use cosell::engine::crm::Crm;
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// A small deterministic generator (SplitMix64): enough for kill delays, no dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn in_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// A co-sell referral Microsoft shares (Shared, so the default mapping syncs it to an
/// opportunity): realistic customer, contact, deal and solution, varied by `index`.
pub fn incoming_referral(index: usize, companies: usize, rng: &mut cosell::sandbox::Rng) -> Value {
    let company = cosell::sandbox::seed_data::company(index % companies);
    let contact = cosell::sandbox::seed_data::person(rng, &company);
    let (solution, solution_name) = *rng.pick(&[
        ("SOL-34104-EBB", "Contoso Cloud Migration"),
        ("SOL-1234-PQRS", "Contoso Modern Workplace"),
        ("SOL-5678-WXYZ", "Contoso Data Platform"),
    ]);
    let substatus = *rng.pick(&["Pending", "Pending", "Received"]);
    json!({
        "name": format!("{} - {solution_name} #{index}", company.name),
        "substatus": substatus,
        "target": [{ "type": "SolutionProfile", "id": solution }],
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
            }],
            "ids": [],
        },
        "details": {
            "notes": "Customer is evaluating a migration this quarter.",
            "dealValue": cosell::sandbox::seed_data::deal_value(rng),
            "currency": *rng.pick(&["USD", "USD", "EUR", "GBP"]),
            "closingDateTime": format!("2027-{:02}-15T00:00:00Z", 1 + index % 12),
            "requirements": { "solutions": [{ "id": solution, "name": solution_name }] },
        },
        "team": [{
            "firstName": "John", "lastName": "Doe", "email": "john.doe@microsoft.com",
            "phoneNumber": "1231231234",
        }],
    })
}

/// The CRM's names for what the test reads back.
pub struct Names {
    pub mapping: &'static str,
    /// Opportunities: (entity set / object, id column, referral-id column).
    pub opportunity: (&'static str, &'static str, &'static str),
    /// The opportunity's sync flag column.
    pub sync_flag: &'static str,
    /// Solutions: (entity, id column, parent column, solution-id column).
    pub solutions: (&'static str, &'static str, &'static str, &'static str),
    /// Accounts: (entity, id column, name column, postal code column) — the lookup's match.
    pub accounts: (&'static str, &'static str, &'static str, &'static str),
    /// Contacts: (entity, id column, e-mail column) — the lookup's match.
    pub contacts: (&'static str, &'static str, &'static str),
    /// The opportunity's deal value column (a seller's edit goes to Partner Center).
    pub deal_value: &'static str,
    /// The opportunity's description column (Partner Center's notes land there).
    pub notes: &'static str,
    /// The opportunity's Microsoft CRM ID column (from Microsoft's related referral).
    pub msx_id: &'static str,
}

pub fn names(crm: CrmKind) -> Names {
    match crm {
        CrmKind::Dynamics365 => Names {
            mapping: "mappings/dynamics365.yaml",
            opportunity: ("opportunities", "opportunityid", "cosell_referralid"),
            sync_flag: "cosell_synctopartnercenter",
            solutions: (
                "cosell_solutions",
                "cosell_solutionid",
                "_cosell_opportunityid_value",
                "cosell_pcsolutionid",
            ),
            accounts: ("accounts", "accountid", "name", "address1_postalcode"),
            contacts: ("contacts", "contactid", "emailaddress1"),
            deal_value: "estimatedvalue",
            notes: "description",
            msx_id: "cosell_microsoftcrmid",
        },
        CrmKind::Salesforce => Names {
            mapping: "mappings/salesforce.yaml",
            opportunity: ("Opportunity", "Id", "Referral_Id__c"),
            sync_flag: "Sync_With_Partner_Center__c",
            solutions: (
                "Microsoft_Solution__c",
                "Id",
                "Opportunity__c",
                "Solution_Id__c",
            ),
            accounts: ("Account", "Id", "Name", "BillingPostalCode"),
            contacts: ("Contact", "Id", "Email"),
            deal_value: "Amount",
            notes: "Description",
            msx_id: "Microsoft_CRM_Id__c",
        },
    }
}

/// Calls the sandbox counted on `endpoint` of `api` whose status passes `wanted`.
pub fn calls(stats: &Value, api: &str, endpoint: &str, wanted: impl Fn(&str) -> bool) -> u64 {
    stats["apis"][api]["endpoints"][endpoint]["status"]
        .as_object()
        .map_or(0, |by_status| {
            by_status
                .iter()
                .filter(|(status, _)| wanted(status))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
}

/// Values of `columns` that more than one row of `entity` shares, with their counts.
pub fn shared_values(
    rt: &Runtime,
    crm: &Crm,
    entity: &str,
    columns: &[&str],
) -> Vec<(Vec<String>, usize)> {
    let mut seen: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for row in rt.block_on(rows(crm, entity, columns)) {
        let key: Vec<String> = columns[1..]
            .iter()
            .map(|c| text(&row, c).unwrap_or_default().to_lowercase())
            .collect();
        if key.iter().any(String::is_empty) {
            continue;
        }
        *seen.entry(key).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Every row of `entity` with `columns` (as JSON objects, id column included).
pub async fn rows(
    crm: &Crm,
    entity: &str,
    columns: &[&str],
) -> Vec<serde_json::Map<String, Value>> {
    match crm {
        Crm::Dataverse(client) => {
            let options = QueryOptions {
                select: columns.iter().map(|c| (*c).to_owned()).collect(),
                filter: None,
                orderby: None,
                top: None,
                page_size: Some(5000),
                expand: None,
            };
            let rows: Vec<_> = client
                .query(entity, options)
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("listing {entity}: {e}"));
            rows.into_iter()
                .map(|row| {
                    let mut fields = row.fields;
                    if let Some(id) = row.id {
                        fields.insert(columns[0].to_owned(), json!(id));
                    }
                    fields
                })
                .collect()
        }
        Crm::Salesforce(client) => {
            let soql = format!("SELECT {} FROM {entity}", columns.join(", "));
            client
                .query(&soql)
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("{soql}: {e}"))
        }
    }
}

pub fn text<'a>(row: &'a serde_json::Map<String, Value>, column: &str) -> Option<&'a str> {
    row.get(column)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
