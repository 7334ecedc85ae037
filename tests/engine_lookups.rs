//! The shipped mappings' lookups resolved against the emulated CRMs: the customer account
//! is found by name + postal code or created, the contact likewise, the currency found —
//! and the mapped opportunity is then accepted by the CRM as it is.

use std::path::Path;
use std::sync::Arc;

use cosell::config::model::Operation;
use cosell::connectors::Secret;
use cosell::connectors::dataverse::{DataverseClient, DataverseSettings, QueryOptions};
use cosell::connectors::salesforce::{SalesforceAuth, SalesforceClient, SalesforceSettings};
use cosell::engine::crm::Crm;
use cosell::engine::lookups::{LookupCache, resolve_live};
use cosell::mapping::Input;
use cosell::mapping::lookup::Outcome;
use cosell::sandbox::{self, SandboxOptions};
use futures_util::StreamExt as _;
use serde_json::Value;

fn plan(file: &str) -> cosell::mapping::plan::Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappings")
        .join(file);
    let checked = cosell::load::check_file(&path, &[]).unwrap();
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.plan.unwrap()
}

fn referral(postal_code: &str) -> Arc<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappings/examples/referral-doc-create-request.json");
    let mut referral: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    referral["customerProfile"]["address"]["postalCode"] = Value::from(postal_code);
    Arc::new(referral)
}

/// Maps the referral, resolves its lookups live, writes the opportunity; returns the
/// lookup outcomes.
async fn sync_once(
    plan: &cosell::mapping::plan::Plan,
    crm: &Crm,
    entity: &str,
    referral: &Arc<Value>,
    cache: &mut LookupCache,
) -> std::collections::BTreeMap<String, Outcome> {
    let flow = plan.flow("referral_to_opportunity").unwrap();
    let input = Input {
        record: referral,
        parent: None,
        operation: Operation::Create,
    };
    let mapped = plan.evaluate(flow, &input);
    assert!(mapped.violations.is_empty(), "{:?}", mapped.violations);
    let mut record = mapped.records.into_iter().next().unwrap();
    let create = |name: &str| {
        plan.lookup_create(flow, name, &input, None)
            .map_err(|violations| violations[0].message.clone())
    };
    let outcomes = resolve_live(plan, &mut record, crm, &create, cache)
        .await
        .unwrap();
    // Nulls mean "leave it out" on create.
    let fields: serde_json::Map<String, Value> = record
        .fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    crm.create(entity, &fields)
        .await
        .unwrap_or_else(|e| panic!("the CRM refused the mapped opportunity: {e}\n{fields:#?}"));
    outcomes
}

fn created(outcome: Option<&Outcome>) -> bool {
    matches!(outcome, Some(Outcome::Created { .. }))
}

fn found(outcome: Option<&Outcome>) -> bool {
    matches!(outcome, Some(Outcome::Found { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_lookups_find_or_create_and_the_opportunity_is_accepted() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url();
    let mut settings = DataverseSettings::new(
        base,
        "contoso",
        "cosell-sandbox",
        Secret::new("sandbox-secret"),
    );
    settings.authority = base.to_owned();
    settings.allow_insecure_http = true;
    let crm = Crm::Dataverse(DataverseClient::new(settings).unwrap());
    let plan = plan("dynamics365.yaml");
    let mut cache = LookupCache::default();

    let first = sync_once(&plan, &crm, "opportunities", &referral("98052"), &mut cache).await;
    assert!(created(first.get("customer_account")), "{first:?}");
    assert!(
        found(first.get("currency")),
        "USD exists in every org: {first:?}"
    );
    let second = sync_once(&plan, &crm, "opportunities", &referral("98052"), &mut cache).await;
    assert!(found(second.get("customer_account")), "{second:?}");
    // Another postal code is another customer.
    let third = sync_once(&plan, &crm, "opportunities", &referral("10001"), &mut cache).await;
    assert!(created(third.get("customer_account")), "{third:?}");

    // Two customers, not three: the second referral found the first one's account.
    let Crm::Dataverse(client) = &crm else {
        unreachable!()
    };
    let accounts: Vec<_> = client
        .query(
            "accounts",
            QueryOptions {
                filter: Some("name eq 'Contoso Customer Inc'".into()),
                ..QueryOptions::default()
            },
        )
        .collect()
        .await;
    assert_eq!(accounts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_lookups_find_or_create_and_the_opportunity_is_accepted() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let mut settings = SalesforceSettings::new(
        handle.base_url(),
        SalesforceAuth::ClientCredentials {
            client_id: "cosell-sandbox".into(),
            client_secret: Secret::new("sandbox-secret"),
        },
    );
    settings.allow_insecure_http = true;
    let crm = Crm::Salesforce(SalesforceClient::new(settings).unwrap());
    let plan = plan("salesforce.yaml");
    let mut cache = LookupCache::default();

    let first = sync_once(&plan, &crm, "Opportunity", &referral("98052"), &mut cache).await;
    assert!(created(first.get("customer_account")), "{first:?}");
    assert!(created(first.get("customer_contact")), "{first:?}");
    let second = sync_once(&plan, &crm, "Opportunity", &referral("98052"), &mut cache).await;
    assert!(found(second.get("customer_account")), "{second:?}");
    assert!(found(second.get("customer_contact")), "{second:?}");
}
