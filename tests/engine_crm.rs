//! The engine's CRM port against both emulated CRMs: upsert by referral id (never a
//! duplicate), conditional updates that refuse to overwrite a newer change, change polling.

use cosell::connectors::dataverse::{DataverseClient, DataverseSettings};
use cosell::connectors::salesforce::{SalesforceAuth, SalesforceClient, SalesforceSettings};
use cosell::connectors::{ConnectorError, Secret};
use cosell::engine::crm::Crm;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};

mod common;

/// What differs between the CRMs for an opportunity keyed by referral id.
struct Shape {
    entity: &'static str,
    id_field: &'static str,
    key_field: &'static str,
    name_field: &'static str,
    value_field: &'static str,
    base_fields: Map<String, Value>,
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn exercise(handle: &SandboxHandle, crm: &Crm, shape: &Shape) {
    let base = handle.base_url();
    let before = handle.state().now_dataverse();
    common::control(base, "/_sandbox/clock", &json!({"advance_seconds": 2})).await;

    // Upsert twice by the referral id: one record.
    let mut fields = shape.base_fields.clone();
    fields.insert(shape.name_field.into(), json!("Upserted deal"));
    fields.insert(shape.value_field.into(), json!(1000));
    let first = crm
        .upsert_by_key(shape.entity, shape.key_field, "ref-42", &fields)
        .await
        .unwrap();
    fields.insert(shape.value_field.into(), json!(2000));
    let second = crm
        .upsert_by_key(shape.entity, shape.key_field, "ref-42", &fields)
        .await
        .unwrap();
    if let (Some(a), Some(b)) = (&first.id, &second.id) {
        assert_eq!(a, b);
    }
    assert_ne!(second.created, Some(true), "the second upsert updates");
    let criteria = object(json!({ shape.key_field: "ref-42" }));
    let id = crm
        .find(shape.entity, shape.id_field, &criteria)
        .await
        .unwrap()
        .expect("the upserted record");

    // Read with a version; a write with that version succeeds once, then the version is stale.
    let read = crm
        .get(shape.entity, &id, &[shape.value_field])
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(read.fields[shape.value_field].as_f64(), Some(2000.0));
    let version = read.version.expect("a version to compare against");
    common::control(base, "/_sandbox/clock", &json!({"advance_seconds": 2})).await;
    let change = object(json!({ shape.value_field: 3000 }));
    crm.update(shape.entity, &id, &change, Some(&version))
        .await
        .unwrap();
    let stale = crm
        .update(shape.entity, &id, &change, Some(&version))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ConnectorError::PreconditionFailed { .. }),
        "{stale:?}"
    );
    assert!(
        crm.get(shape.entity, "00000000-0000-4000-8000-000000000000", &[])
            .await
            .map(|r| r.is_none())
            .unwrap_or(true)
    );

    // Changed since before the test: the record, once.
    let changed: Vec<_> = crm
        .changed_since(shape.entity, &[shape.value_field], &before)
        .unwrap()
        .collect()
        .await;
    let ids: Vec<String> = changed
        .into_iter()
        .map(|r| r.unwrap()[shape.id_field].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataverse_port() {
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
    let client = DataverseClient::new(settings).unwrap();
    let account = client
        .create("accounts", &object(json!({"name": "Port Customer"})))
        .await
        .unwrap();
    let crm = Crm::Dataverse(client);
    let shape = Shape {
        entity: "opportunities",
        id_field: "opportunityid",
        key_field: "cosell_referralid",
        name_field: "name",
        value_field: "estimatedvalue",
        base_fields: object(
            json!({ "customerid_account@odata.bind": format!("/accounts({account})") }),
        ),
    };
    exercise(&handle, &crm, &shape).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_port() {
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
    let shape = Shape {
        entity: "Opportunity",
        id_field: "Id",
        key_field: "Referral_Id__c",
        name_field: "Name",
        value_field: "Amount",
        base_fields: object(json!({ "StageName": "Prospecting", "CloseDate": "2027-01-31" })),
    };
    exercise(&handle, &crm, &shape).await;
}
