//! The sync engine end to end against the sandbox, for both CRMs, over real HTTP with a real
//! SQLite state file: what lands in the emulated systems and how many calls it took.

use cosell::config::model::CrmKind;
use cosell::engine::connect;
use serde_json::{Value, json};

mod common;
#[path = "common/world.rs"]
mod world;
use world::{world, world_with};

fn names(crm: CrmKind) -> (&'static str, &'static str, &'static str, &'static str) {
    // name, value, stage, audit
    match crm {
        CrmKind::Dynamics365 => ("name", "estimatedvalue", "statuscode", "cosell_audit"),
        CrmKind::Salesforce => ("Name", "Amount", "StageName", "Partner_Center_Audit__c"),
    }
}

/// S1, S2, S5, S6 and the API economy of re-deliveries and echoes.
async fn incoming_referral_lifecycle(crm: CrmKind) {
    let w = world(crm).await;
    let (name_f, value_f, stage_f, _) = names(crm);
    let rid = w.incoming("Contoso cloud migration").await;
    let before = w.calls().await;
    w.sync().await;

    // S1: an on-hold opportunity with the referral's data, id and link; ✔ in the name.
    let (opp_id, opp) = w.opportunity_of(&rid).await;
    assert_eq!(opp[name_f], json!("Contoso cloud migration ✔"));
    assert_eq!(opp[value_f].as_f64(), Some(50000.0));
    let on_hold = match crm {
        CrmKind::Dynamics365 => json!(2),
        CrmKind::Salesforce => json!("On Hold"),
    };
    assert_eq!(opp[stage_f], on_hold);
    let referral = w.referral(&rid).await;
    assert_eq!(
        referral["externalReferenceId"],
        json!(opp_id),
        "PC knows the CRM id"
    );
    let after = w.calls().await;
    let used = (after.0 - before.0) + (after.1 - before.1);
    eprintln!(
        "{crm:?}: new referral synced in {used} calls (PC {} CRM {})",
        after.0 - before.0,
        after.1 - before.1
    );

    // Re-delivery of an unchanged referral: the reconcile sees our own write-back; no writes.
    let (pc_before, crm_before) = w.calls().await;
    w.engine
        .sync_referral(w.referral(&rid).await)
        .await
        .unwrap();
    let (pc_after, crm_after) = w.calls().await;
    assert_eq!(
        crm_after - crm_before,
        0,
        "an unchanged referral costs no CRM call"
    );
    assert_eq!(pc_after - pc_before, 1, "only the read of the test itself");

    // S2: the seller accepts by moving to the active stage → Active/Accepted in PC.
    let active = match crm {
        CrmKind::Dynamics365 => json!({ "statuscode": 1 }),
        CrmKind::Salesforce => json!({ "StageName": "Qualification" }),
    };
    w.update_opportunity(&opp_id, active).await;
    w.sync().await;
    let referral = w.referral(&rid).await;
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Active"), Some("Accepted"))
    );

    // S5: the seller edits the value → only that is patched.
    w.update_opportunity(&opp_id, json!({ value_f: 64000 }))
        .await;
    w.sync().await;
    let referral = w.referral(&rid).await;
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(64000.0));

    // S6: Microsoft edits the referral → the CRM follows, and that write is not echoed back.
    let (status, body) = common::control(
        w.base(),
        &format!("/_sandbox/partner-center/referrals/{rid}/microsoft"),
        &json!({ "notes": "Customer wants a pilot first" }),
    )
    .await;
    assert!(status.is_success(), "{body}");
    let etag_before = w.referral(&rid).await["eTag"].clone();
    w.sync().await;
    let (_, opp) = w.opportunity_of(&rid).await;
    let notes = match crm {
        CrmKind::Dynamics365 => &opp["description"],
        CrmKind::Salesforce => &opp["Description"],
    };
    assert_eq!(notes, &json!("Customer wants a pilot first"));
    assert_eq!(
        w.referral(&rid).await["eTag"],
        etag_before,
        "no echo written back to PC"
    );

    let trail = w.audit(&rid).await;
    assert!(
        trail
            .iter()
            .any(|e| e.contains("referral_to_opportunity created")),
        "{trail:?}"
    );
    assert!(
        trail
            .iter()
            .any(|e| e.contains("opportunity_to_referral updated")),
        "{trail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_incoming_referral_lifecycle() {
    incoming_referral_lifecycle(CrmKind::Dynamics365).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_incoming_referral_lifecycle() {
    incoming_referral_lifecycle(CrmKind::Salesforce).await;
}

/// S8, S9, S10 from the CRM side: flagged opportunities become co-sell referrals (plus
/// Microsoft's on the same engagement); broken ones are marked ✘ with the reason; unflagged
/// ones are left alone.
async fn seller_opportunities(crm: CrmKind) {
    let w = world(crm).await;
    let (name_f, _, _, audit_f) = names(crm);
    common::control(
        w.base(),
        "/_sandbox/seed",
        &json!({ "referrals": 0, "accounts": 4 }),
    )
    .await;
    let flagged = connect::flag_sandbox_opportunities(w.engine.crm(), 2)
        .await
        .unwrap();
    assert_eq!(flagged, 2);
    w.sync().await;

    // S8: the flagged opportunities now carry a referral id; the referral is Shared and has
    // Microsoft's referral on its engagement.
    let n = w.names();
    let (entity, id_field, key) = (n.opportunity, n.opportunity_id, n.referral_key);
    let polled = w
        .engine
        .polled_entities()
        .into_iter()
        .find(|p| p.entity == entity)
        .unwrap();
    let mut synced = 0;
    let mut untouched = 0;
    let mut rows = w
        .engine
        .crm()
        .changed_since(
            entity,
            &[
                id_field,
                key,
                name_f,
                audit_f,
                polled.sync_flag.as_deref().unwrap(),
            ],
            "2000-01-01T00:00:00Z",
        )
        .unwrap();
    use futures_util::StreamExt as _;
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        match row
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(rid) => {
                synced += 1;
                assert!(row[name_f].as_str().unwrap().ends_with(" ✔"), "{row:?}");
                let referral = w.referral(rid).await;
                assert_eq!(referral["type"], json!("Shared"));
                let engagement = referral["engagementId"].as_str().unwrap();
                let related = w
                    .engine
                    .partner_center()
                    .related_referrals(engagement)
                    .await
                    .unwrap();
                assert_eq!(related.len(), 2, "the partner's and Microsoft's referral");
            }
            None => {
                // S10: not flagged → untouched.
                untouched += 1;
                assert!(!row[name_f].as_str().unwrap().contains('✔'));
            }
        }
    }
    assert_eq!(synced, 2);
    assert_eq!(untouched, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_seller_opportunities() {
    seller_opportunities(CrmKind::Dynamics365).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_seller_opportunities() {
    seller_opportunities(CrmKind::Salesforce).await;
}

/// S12: leads follow `sync_cosell_only` — a YAML-only change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_only_yaml_changes_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("mappings/dynamics365.yaml").unwrap();
    let edited = text
        .replace(
            "deal_value_field: estimatedvalue",
            "deal_value_field: budgetamount",
        )
        .replace(
            "on_hold_stage: 2                   # status reason \"On Hold\"",
            "on_hold_stage: 1",
        )
        .replace(
            "active_stage: 1                    # status reason \"In Progress\"",
            "active_stage: 2",
        );
    assert_ne!(text, edited);
    let copy = dir.path().join("dynamics365.yaml");
    std::fs::write(&copy, &edited).unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    for entry in std::fs::read_dir("mappings/examples").unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("examples").join(entry.file_name()),
        )
        .unwrap();
    }
    let w = world_with(&copy, CrmKind::Dynamics365).await;
    let rid = w.incoming("Edited mapping").await;
    w.sync().await;
    let (_, opp) = w.opportunity_of(&rid).await;
    assert_eq!(
        opp["budgetamount"].as_f64(),
        Some(50000.0),
        "the deal value went to the new field"
    );
    assert_eq!(opp["estimatedvalue"], Value::Null);
    assert_eq!(opp["statuscode"], json!(1), "the renamed on-hold stage");
}
