//! The scenarios of `design.md` §3 not covered by `engine_sync.rs` (S3, S4, S7, S9, S11,
//! S12, S13, S14), each for Dynamics 365 and Salesforce: the engine against the sandbox over
//! real HTTP with a real SQLite state file, asserting what lands in the emulated systems and
//! what the calls cost.

use cosell::config::model::CrmKind;
use serde_json::{Value, json};

mod common;
#[path = "common/world.rs"]
mod world;
use world::{Seller, Stage, World, world, world_set};

/// Runs a scenario for both CRMs, as two tests.
macro_rules! both_crms {
    ($scenario:ident: $dynamics:ident, $salesforce:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $dynamics() {
            $scenario(CrmKind::Dynamics365).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $salesforce() {
            $scenario(CrmKind::Salesforce).await;
        }
    };
}

fn status(referral: &Value) -> (String, String) {
    (
        referral["status"].as_str().unwrap_or_default().to_owned(),
        referral["substatus"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn pair(status: &str, substatus: &str) -> (String, String) {
    (status.to_owned(), substatus.to_owned())
}

/// An incoming referral, synced into the CRM; its opportunity id.
async fn synced_incoming(w: &World, name: &str) -> (String, String) {
    let rid = w.incoming(name).await;
    w.sync().await;
    let (opp, _) = w.opportunity_of(&rid).await;
    (rid, opp)
}

// -------------------------------------------------------------------------------------------
// S3, S4: the seller closes the opportunity → Partner Center follows
// -------------------------------------------------------------------------------------------

async fn closing_in_the_crm(crm: CrmKind) {
    let w = world(crm).await;
    let (declined, declined_opp) = synced_incoming(&w, "Fabrikam declined").await;
    let (won, won_opp) = synced_incoming(&w, "Fabrikam won").await;
    let (lost, lost_opp) = synced_incoming(&w, "Fabrikam lost").await;

    // S3: declined straight from the on-hold stage.
    w.update_opportunity(&declined_opp, w.stage(Stage::Declined))
        .await;
    // S4: won after being accepted; lost after being accepted.
    w.update_opportunity(&won_opp, w.stage(Stage::Active)).await;
    w.update_opportunity(&lost_opp, w.stage(Stage::Active))
        .await;
    w.sync().await;
    assert_eq!(status(&w.referral(&won).await), pair("Active", "Accepted"));
    w.update_opportunity(&won_opp, w.stage(Stage::Won)).await;
    w.update_opportunity(&lost_opp, w.stage(Stage::Lost)).await;
    w.sync().await;

    assert_eq!(
        status(&w.referral(&declined).await),
        pair("Closed", "Declined")
    );
    assert_eq!(status(&w.referral(&won).await), pair("Closed", "Won"));
    assert_eq!(status(&w.referral(&lost).await), pair("Closed", "Lost"));

    // Closed referrals are terminal: a later CRM edit is not sent (PC would refuse it).
    let n = w.names();
    let (pc_writes, _) = w.writes().await;
    w.update_opportunity(&won_opp, json!({ n.value: 99_000 }))
        .await;
    w.sync().await;
    assert_eq!(
        w.writes().await.0,
        pc_writes,
        "no PATCH of a closed referral"
    );
    assert_eq!(
        w.referral(&won).await["details"]["dealValue"].as_f64(),
        Some(50000.0)
    );
    // The CRM record keeps its closed stage: the echo of our own PATCH changes nothing.
    let closed = w.record(n.opportunity, &won_opp).await;
    for (field, value) in w.stage(Stage::Won).as_object().unwrap() {
        assert_eq!(&closed[field], value, "{field}");
    }
    let trail = w.audit(&won).await;
    assert!(
        trail
            .iter()
            .any(|e| e.contains("opportunity_to_referral updated")),
        "{trail:?}"
    );
}

both_crms!(closing_in_the_crm: dynamics_s3_s4_decline_win_lose, salesforce_s3_s4_decline_win_lose);

// -------------------------------------------------------------------------------------------
// S7: Microsoft accepts the co-sell → the Microsoft CRM ID lands on the opportunity
// -------------------------------------------------------------------------------------------

async fn microsoft_accepts(crm: CrmKind) {
    let w = world(crm).await.with_webhooks().await;
    let n = w.names();
    let opp = w
        .seller_opportunity(Seller::cosell("Northwind data platform"))
        .await;
    w.sync().await;
    let ours = w.referrals_for(&opp).await;
    let partner = ours
        .iter()
        .find(|r| {
            r["direction"] == json!("Outgoing")
                && r["target"][0]["type"] != json!("BusinessProfileLocation")
        })
        .unwrap_or_else(|| panic!("the partner's referral of {opp}: {ours:?}"));
    let rid = partner["id"].as_str().unwrap().to_owned();
    assert_eq!(
        w.record(n.opportunity, &opp).await[n.microsoft_crm_id],
        Value::Null
    );

    // A Microsoft seller accepts: Microsoft's referral on the engagement carries its MSX id;
    // the related-referral webhook brings it in.
    w.microsoft(
        &rid,
        json!({ "status": "Active", "substatus": "Accepted", "microsoftMsxId": "7-2ABCDEF3G" }),
    )
    .await;
    w.sync_until("the Microsoft CRM ID on the opportunity", || async {
        w.record(n.opportunity, &opp).await[n.microsoft_crm_id] == json!("7-2ABCDEF3G")
    })
    .await;
    let record = w.record(n.opportunity, &opp).await;
    let status_field = match crm {
        CrmKind::Dynamics365 => "cosell_microsoftstatus",
        CrmKind::Salesforce => "Microsoft_Status__c",
    };
    assert_eq!(record[status_field], json!("Active/Accepted"));
    // Nothing of Microsoft's went back to Partner Center as our change.
    assert_eq!(status(&w.referral(&rid).await), pair("Active", "Accepted"));

    // The same event delivered again: nothing to write.
    let (_, crm_writes) = w.writes().await;
    w.microsoft(&rid, json!({ "microsoftMsxId": "7-2ABCDEF3G" }))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    w.sync().await;
    assert_eq!(
        w.writes().await.1,
        crm_writes,
        "an unchanged MSX id is not rewritten"
    );
}

both_crms!(microsoft_accepts: dynamics_s7_microsoft_accepts, salesforce_s7_microsoft_accepts);

// -------------------------------------------------------------------------------------------
// S9: broken seller opportunities → no PC write, the reason in the audit, ✘ in the name
// -------------------------------------------------------------------------------------------

async fn broken_opportunities(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let no_solution = w
        .seller_opportunity(Seller {
            solutions: &[],
            ..Seller::cosell("No solution")
        })
        .await;
    let bad_country = w
        .seller_opportunity(Seller {
            // Salesforce's country picklist refuses unknown names; an empty one is what
            // gets through there.
            country: match crm {
                CrmKind::Dynamics365 => Some("Narnia"),
                CrmKind::Salesforce => None,
            },
            ..Seller::cosell("Bad country")
        })
        .await;
    let no_contact = w
        .seller_opportunity(Seller {
            contact: false,
            ..Seller::cosell("Help without contact")
        })
        .await;
    let (pc_writes_before, _) = w.writes().await;
    w.sync().await;
    assert_eq!(
        w.writes().await.0,
        pc_writes_before,
        "nothing written to Partner Center"
    );

    for (opp, name, reason) in [
        (&no_solution, "No solution", "Solution ID is required"),
        (
            &bad_country,
            "Bad country",
            "Two letter country code is required",
        ),
        (
            &no_contact,
            "Help without contact",
            "Customer contact is required when Microsoft help is requested",
        ),
    ] {
        let record = w.record(n.opportunity, opp).await;
        assert_eq!(record[n.name], json!(format!("{name} ✘")));
        let audit = record[n.audit].as_str().unwrap_or_default();
        assert!(audit.contains(reason), "{name}: audit field {audit:?}");
        assert_eq!(
            record[n.referral_key],
            Value::Null,
            "{name}: no referral id"
        );
        assert!(w.referrals_for(opp).await.is_empty(), "{name}: no referral");
        let trail = w.audit(opp).await;
        assert!(
            trail
                .iter()
                .any(|e| e.contains("rejected") && e.contains(reason)),
            "{name}: {trail:?}"
        );
    }

    // The ✘ write-back is ours: the next poll sees it and writes nothing (no loop).
    let before = w.writes().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.sync().await;
    assert_eq!(
        w.writes().await,
        before,
        "the marks do not re-trigger a sync"
    );

    // The seller fixes one: it syncs, and the ✘ becomes ✔.
    w.add_solution(&no_solution, "SOL-34104-EBB", "Contoso Cloud Migration")
        .await;
    w.sync().await;
    let record = w.record(n.opportunity, &no_solution).await;
    assert_eq!(record[n.name], json!("No solution ✔"));
    assert!(record[n.referral_key].is_string(), "{record:?}");
    assert!(!w.referrals_for(&no_solution).await.is_empty());
}

both_crms!(broken_opportunities: dynamics_s9_rule_violations, salesforce_s9_rule_violations);

// -------------------------------------------------------------------------------------------
// S11: edits while on hold are not sent; they go with the acceptance
// -------------------------------------------------------------------------------------------

async fn edits_on_hold(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let (rid, opp) = synced_incoming(&w, "Adatum on hold").await;
    let etag = w.referral(&rid).await["eTag"].clone();
    let (pc_writes, _) = w.writes().await;
    w.update_opportunity(&opp, json!({ n.value: 77_000 })).await;
    w.sync().await;
    assert_eq!(w.writes().await.0, pc_writes, "no PC write while on hold");
    let referral = w.referral(&rid).await;
    assert_eq!(referral["eTag"], etag);
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(50000.0));
    assert_eq!(status(&referral), pair("New", "Pending"));

    // Accepting sends the held edit along.
    w.update_opportunity(&opp, w.stage(Stage::Active)).await;
    w.sync().await;
    let referral = w.referral(&rid).await;
    assert_eq!(status(&referral), pair("Active", "Accepted"));
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(77000.0));
}

both_crms!(edits_on_hold: dynamics_s11_edits_on_hold, salesforce_s11_edits_on_hold);

// -------------------------------------------------------------------------------------------
// S12: independent / marketing leads follow `sync_cosell_only`
// -------------------------------------------------------------------------------------------

fn lead(name: &str) -> Value {
    json!({
        "name": name,
        "type": "Independent",
        "qualification": "MarketingQualified",
        "target": null,
        "inviteContext": null,
    })
}

async fn leads(crm: CrmKind) {
    // Co-sell only (the shipped default): the lead is skipped, and says so.
    let w = world(crm).await;
    let n = w.names();
    let rid = w
        .incoming_with("Litware marketing lead", lead("Litware marketing lead"))
        .await;
    w.sync().await;
    assert_eq!(w.crm_id_of(n.lead, &rid).await, None);
    assert_eq!(w.crm_id_of(n.opportunity, &rid).await, None);
    let trail = w.audit(&rid).await;
    assert!(trail.iter().any(|e| e.contains("skipped")), "{trail:?}");
    assert_eq!(w.writes().await.1, 0, "no CRM write");

    // Co-sell only off: a CRM lead, linked back to the referral.
    let w = world_set(crm, &["sync_cosell_only=false"]).await;
    let rid = w
        .incoming_with("Litware marketing lead", lead("Litware marketing lead"))
        .await;
    w.sync().await;
    let lead_id = w
        .crm_id_of(n.lead, &rid)
        .await
        .expect("a CRM lead for the referral");
    let record = w.record(n.lead, &lead_id).await;
    match crm {
        CrmKind::Dynamics365 => {
            assert_eq!(record["subject"], json!("Litware marketing lead ✔"));
            assert_eq!(record["companyname"], json!("Contoso Customer Inc"));
            assert_eq!(record["budgetamount"].as_f64(), Some(50000.0));
        }
        CrmKind::Salesforce => {
            assert_eq!(record["Company"], json!("Contoso Customer Inc"));
            assert_eq!(record["LeadSource"], json!("Microsoft Partner Center"));
            assert_eq!(record["Email"], json!("sue.smith@contoso.com"));
        }
    }
    assert_eq!(w.crm_id_of(n.opportunity, &rid).await, None);
    assert_eq!(
        w.referral(&rid).await["externalReferenceId"],
        json!(lead_id),
        "PC knows the lead"
    );
}

both_crms!(leads: dynamics_s12_leads, salesforce_s12_leads);

// -------------------------------------------------------------------------------------------
// S13: an externalReferenceId naming no CRM record → ignored, audited
// -------------------------------------------------------------------------------------------

async fn unknown_external_reference(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let missing = match crm {
        CrmKind::Dynamics365 => "0f8fad5b-d9cb-469f-a165-70867728950e",
        CrmKind::Salesforce => "0065g00000ZZZZZZZ9",
    };
    let rid = w
        .incoming_with(
            "Wide World Importers",
            json!({ "externalReferenceId": missing }),
        )
        .await;
    let (_, crm_writes) = w.writes().await;
    w.sync().await;
    assert_eq!(w.writes().await.1, crm_writes, "no CRM write");
    assert_eq!(w.crm_id_of(n.opportunity, &rid).await, None);
    let trail = w.audit(&rid).await;
    assert!(
        trail
            .iter()
            .any(|e| e.contains("ignored") && e.contains(missing) && e.contains("matches no")),
        "{trail:?}"
    );
    assert_eq!(
        w.referral(&rid).await["externalReferenceId"],
        json!(missing),
        "the referral is left as it is"
    );
}

both_crms!(unknown_external_reference: dynamics_s13_unknown_external_reference, salesforce_s13_unknown_external_reference);

// -------------------------------------------------------------------------------------------
// S14: solutions added to / removed from the opportunity → PC solutions follow
// -------------------------------------------------------------------------------------------

fn solution_ids(referral: &Value) -> Vec<String> {
    let mut ids: Vec<String> = referral["details"]["requirements"]["solutions"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

async fn solutions_follow(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let opp = w
        .seller_opportunity(Seller::cosell("Tailspin modern work"))
        .await;
    w.sync().await;
    let rid = w.record(n.opportunity, &opp).await[n.referral_key]
        .as_str()
        .expect("the opportunity has its referral")
        .to_owned();
    assert_eq!(solution_ids(&w.referral(&rid).await), ["SOL-34104-EBB"]);

    let added = w
        .add_solution(
            &opp,
            "Dynamics365forFieldService",
            "Dynamics 365 Field Service",
        )
        .await;
    w.sync().await;
    assert_eq!(
        solution_ids(&w.referral(&rid).await),
        ["Dynamics365forFieldService", "SOL-34104-EBB"]
    );

    // Removing the first one: the deletion alone (the opportunity is untouched) is enough.
    let children = match crm {
        CrmKind::Dynamics365 => {
            let criteria = json!({ "cosell_pcsolutionid": "SOL-34104-EBB" });
            w.engine
                .crm()
                .find(
                    n.solution,
                    "cosell_solutionid",
                    criteria.as_object().unwrap(),
                )
                .await
                .unwrap()
        }
        CrmKind::Salesforce => {
            let criteria = json!({ "Solution_Id__c": "SOL-34104-EBB", "Opportunity__c": opp });
            w.engine
                .crm()
                .find(n.solution, "Id", criteria.as_object().unwrap())
                .await
                .unwrap()
        }
    };
    let first = children.expect("the first solution record");
    assert_ne!(first, added);
    w.remove_solution(&first).await;
    w.sync().await;
    assert_eq!(
        solution_ids(&w.referral(&rid).await),
        ["Dynamics365forFieldService"]
    );

    // Nothing left to send: a further round writes nothing.
    let before = w.writes().await;
    w.sync().await;
    assert_eq!(w.writes().await, before);
}

both_crms!(solutions_follow: dynamics_s14_solutions, salesforce_s14_solutions);

// -------------------------------------------------------------------------------------------
// S1 in detail: the customer account found by name + postal code or created, the contact
// found by e-mail or created, currency and close date
// -------------------------------------------------------------------------------------------

async fn customer_records(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let (account_f, contact_f) = match crm {
        CrmKind::Dynamics365 => ("_parentaccountid_value", "_parentcontactid_value"),
        CrmKind::Salesforce => ("AccountId", "ContactId"),
    };
    let (accounts, contacts) = match crm {
        CrmKind::Dynamics365 => ("accounts", "contacts"),
        CrmKind::Salesforce => ("Account", "Contact"),
    };
    let (first, _) = synced_incoming(&w, "Contoso first").await;
    let (second, _) = synced_incoming(&w, "Contoso second").await;
    // The same company name in another postal code is another customer.
    let mut elsewhere = common::cosell_referral("Contoso elsewhere");
    elsewhere["customerProfile"]["address"]["postalCode"] = json!("10001");
    elsewhere["customerProfile"]["address"]["city"] = json!("New York");
    let third = w
        .incoming_with(
            "Contoso elsewhere",
            json!({ "customerProfile": elsewhere["customerProfile"] }),
        )
        .await;
    w.sync().await;

    let (_, a) = w.opportunity_of(&first).await;
    let (_, b) = w.opportunity_of(&second).await;
    let (_, c) = w.opportunity_of(&third).await;
    let account = a[account_f].as_str().expect("an account").to_owned();
    assert_eq!(b[account_f], json!(account), "found by name + postal code");
    assert_ne!(
        c[account_f],
        json!(account),
        "another postal code, another account"
    );
    assert_eq!(a[contact_f], b[contact_f], "the contact is found by e-mail");
    let record = w.record(accounts, &account).await;
    let contact = w
        .record(contacts, a[contact_f].as_str().expect("a contact"))
        .await;
    match crm {
        CrmKind::Dynamics365 => {
            assert_eq!(record["name"], json!("Contoso Customer Inc"));
            assert_eq!(record["address1_postalcode"], json!("98052"));
            assert_eq!(record["address1_country"], json!("US"));
            assert_eq!(contact["emailaddress1"], json!("sue.smith@contoso.com"));
            assert_eq!(contact["_parentcustomerid_value"], json!(account));
            assert_eq!(a["estimatedclosedate"], json!("2027-11-14"));
            let currency = w
                .record(
                    "transactioncurrencies",
                    a["_transactioncurrencyid_value"].as_str().unwrap(),
                )
                .await;
            assert_eq!(currency["isocurrencycode"], json!("USD"));
        }
        CrmKind::Salesforce => {
            assert_eq!(record["Name"], json!("Contoso Customer Inc"));
            assert_eq!(record["BillingPostalCode"], json!("98052"));
            assert_eq!(record["BillingCountryCode"], json!("US"));
            assert_eq!(contact["Email"], json!("sue.smith@contoso.com"));
            assert_eq!(contact["AccountId"], json!(account));
            assert_eq!(a["CloseDate"], json!("2027-11-14"));
            assert_eq!(a["CurrencyIsoCode"], json!("USD"));
        }
    }
    assert_eq!(a[n.value].as_f64(), Some(50000.0));
}

both_crms!(customer_records: dynamics_s1_customer_records, salesforce_s1_customer_records);

// -------------------------------------------------------------------------------------------
// Conflicts: both sides changed the deal value; the declared owner (newest) decides, audited
// -------------------------------------------------------------------------------------------

async fn conflicts(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    let (rid, opp) = synced_incoming(&w, "Proseware both sides").await;
    w.update_opportunity(&opp, w.stage(Stage::Active)).await;
    w.sync().await;

    // Microsoft changes the value, then the seller does (later, so newer): the CRM job runs
    // first with a stale view of the referral → 412 → fresh read → newest wins.
    w.microsoft(&rid, json!({ "dealValue": 70000 })).await;
    w.update_opportunity(&opp, json!({ n.value: 80_000 })).await;
    w.runner.poll_crm().await.unwrap();
    assert_eq!(w.runner.drain().await.unwrap().dead, 0);
    assert_eq!(
        w.referral(&rid).await["details"]["dealValue"].as_f64(),
        Some(80000.0),
        "the newer edit (the seller's) wins"
    );
    let trail = w.audit(&rid).await;
    assert!(
        trail
            .iter()
            .any(|e| e.contains("conflict") && e.contains("details.dealValue (crm kept)")),
        "{trail:?}"
    );
    // Microsoft's event arrives afterwards: the CRM keeps the seller's value.
    w.sync().await;
    assert_eq!(
        w.record(n.opportunity, &opp).await[n.value].as_f64(),
        Some(80000.0)
    );

    // The other way round: the seller edits, then Microsoft (newer); Microsoft's event is
    // processed first → Partner Center's value wins in the CRM, audited.
    w.update_opportunity(&opp, json!({ n.value: 90_000 })).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.microsoft(&rid, json!({ "dealValue": 95000 })).await;
    w.deliver("referral-updated", &rid).await;
    assert_eq!(
        w.record(n.opportunity, &opp).await[n.value].as_f64(),
        Some(95000.0),
        "the newer edit (Microsoft's) wins"
    );
    let trail = w.audit(&rid).await;
    assert!(
        trail
            .iter()
            .any(|e| e.contains("conflict")
                && e.contains(&format!("{} (partner_center kept)", n.value))),
        "{trail:?}"
    );
}

both_crms!(conflicts: dynamics_conflict_newest_wins, salesforce_conflict_newest_wins);

// -------------------------------------------------------------------------------------------
// Bad referral data: refused as a whole — no customer account left behind without its
// opportunity
// -------------------------------------------------------------------------------------------

async fn no_partial_write(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();
    // An ISO currency the CRM does not have enabled (Dynamics: no transactioncurrency row,
    // the lookup fails; Salesforce: not in the restricted CurrencyIsoCode picklist, the
    // opportunity write is refused after the account and contact in the same set).
    let mut body = common::cosell_referral("Fourth Coffee in krona");
    body["customerProfile"]["name"] = json!("Fourth Coffee");
    body["customerProfile"]["team"][0]["email"] = json!("anna@fourthcoffee.is");
    body["details"]["currency"] = json!("ISK");
    let rid = w
        .incoming_with(
            "Fourth Coffee in krona",
            json!({ "customerProfile": body["customerProfile"], "details": body["details"] }),
        )
        .await;
    let before = w.writes().await;
    let drained = w.runner.run_once().await.unwrap();
    assert_eq!(w.crm_id_of(n.opportunity, &rid).await, None);
    let (accounts, account_id, account_name) = match crm {
        CrmKind::Dynamics365 => ("accounts", "accountid", "name"),
        CrmKind::Salesforce => ("Account", "Id", "Name"),
    };
    let criteria = json!({ account_name: "Fourth Coffee" });
    assert_eq!(
        w.engine
            .crm()
            .find(accounts, account_id, criteria.as_object().unwrap())
            .await
            .unwrap(),
        None,
        "no account without its opportunity"
    );
    assert_eq!(
        w.referral(&rid).await["externalReferenceId"],
        json!(null),
        "nothing written back to Partner Center"
    );
    let trail = w.audit(&rid).await;
    match crm {
        CrmKind::Dynamics365 => {
            assert_eq!(drained.dead, 0);
            assert!(
                trail
                    .iter()
                    .any(|e| e.contains("rejected") && e.contains("Currency ISK is not enabled")),
                "{trail:?}"
            );
            // Only the lookups' `$batch` (a POST that reads) reached the CRM.
            assert!(w.writes().await.1 <= before.1 + 1);
        }
        CrmKind::Salesforce => {
            // The CRM refused the write: a dead letter to replay once the currency is on.
            assert_eq!(drained.dead, 1);
            assert!(
                trail
                    .iter()
                    .any(|e| e.contains("dead_letter") && e.contains("CurrencyIsoCode")),
                "{trail:?}"
            );
        }
    }
}

both_crms!(no_partial_write: dynamics_bad_data_no_partial_write, salesforce_bad_data_no_partial_write);

// -------------------------------------------------------------------------------------------
// Several referrals of one new customer synced at once: one account, one contact
// -------------------------------------------------------------------------------------------

async fn one_customer_at_once(crm: CrmKind) {
    let w = world(crm).await;
    let (account_f, contact_f) = match crm {
        CrmKind::Dynamics365 => ("_parentaccountid_value", "_parentcontactid_value"),
        CrmKind::Salesforce => ("AccountId", "ContactId"),
    };
    let mut body = common::cosell_referral("Blue Yonder");
    body["customerProfile"]["name"] = json!("Blue Yonder Airlines");
    body["customerProfile"]["team"][0]["email"] = json!("kim@blueyonder.example");
    let mut referrals = Vec::new();
    for i in 0..6 {
        referrals.push(
            w.incoming_with(
                &format!("Blue Yonder {i}"),
                json!({ "customerProfile": body["customerProfile"] }),
            )
            .await,
        );
    }
    // The runner's 8 workers take all six at once.
    w.sync().await;
    let mut accounts = std::collections::BTreeSet::new();
    let mut contacts = std::collections::BTreeSet::new();
    for rid in &referrals {
        let (_, opp) = w.opportunity_of(rid).await;
        accounts.insert(opp[account_f].as_str().unwrap().to_owned());
        contacts.insert(opp[contact_f].as_str().unwrap().to_owned());
    }
    assert_eq!(accounts.len(), 1, "one account: {accounts:?}");
    assert_eq!(contacts.len(), 1, "one contact: {contacts:?}");
}

both_crms!(one_customer_at_once: dynamics_one_new_customer_many_referrals, salesforce_one_new_customer_many_referrals);
