//! API economy (`design.md` §8), counted by the sandbox per endpoint: what one webhook event
//! costs, apart from the periodic reconcile and CRM poll. The breakdown is printed for
//! `BENCHMARKS.md` (`cargo test --test engine_economy -- --nocapture`).

use cosell::config::model::CrmKind;
use serde_json::json;

mod common;
#[path = "common/world.rs"]
mod world;
use world::{Stage, world};

async fn economy(crm: CrmKind) {
    let w = world(crm).await;
    let n = w.names();

    // A new incoming referral, new customer: webhook → CRM record → PC knows the CRM id.
    let rid = w.incoming("Economy first").await;
    let before = w.call_log().await;
    w.deliver("referral-created", &rid).await;
    let new_referral = before.since(&w.call_log().await);
    eprintln!("{crm:?} new incoming referral (new customer): {new_referral}");
    let (opp, _) = w.opportunity_of(&rid).await;
    assert_eq!(w.referral(&rid).await["externalReferenceId"], json!(opp));

    // The same customer again: account and contact are found, the currency is cached.
    let second = w.incoming("Economy second").await;
    let before = w.call_log().await;
    w.deliver("referral-created", &second).await;
    let known_customer = before.since(&w.call_log().await);
    eprintln!("{crm:?} new incoming referral (known customer): {known_customer}");

    // Our PATCH of externalReferenceId comes back as referral-updated: 1 read, 0 writes.
    let before = w.call_log().await;
    w.deliver("referral-updated", &rid).await;
    let echo = before.since(&w.call_log().await);
    eprintln!("{crm:?} echo of our own PC write: {echo}");
    assert_eq!(echo.writes(), 0, "{echo}");
    assert!(echo.reads() <= 1, "{echo}");

    // The same webhook delivered again: 1 read, 0 writes.
    let before = w.call_log().await;
    w.deliver("referral-updated", &rid).await;
    let redelivery = before.since(&w.call_log().await);
    eprintln!("{crm:?} re-delivered unchanged webhook: {redelivery}");
    assert_eq!(redelivery.writes(), 0, "{redelivery}");
    assert!(redelivery.reads() <= 1, "{redelivery}");

    // Our CRM writes come back through the CRM poll: no writes.
    w.sync().await;
    let before = w.call_log().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.sync().await;
    let quiet = before.since(&w.call_log().await);
    eprintln!("{crm:?} a quiet round (reconcile + CRM poll, nothing changed): {quiet}");
    assert_eq!(quiet.writes(), 0, "{quiet}");

    // The seller accepts (the first CRM → PC sync also starts the record's audit trail).
    w.update_opportunity(&opp, w.stage(Stage::Active)).await;
    w.sync().await;

    // A seller's edit → one PATCH to Partner Center: one CRM poll, then the job.
    w.update_opportunity(&opp, json!({ n.value: 61_000 })).await;
    let before = w.call_log().await;
    w.runner.poll_crm().await.unwrap();
    let drained = w.runner.drain().await.unwrap();
    assert_eq!(drained.dead, 0);
    let edit = before.since(&w.call_log().await);
    eprintln!("{crm:?} CRM edit → PC (the poll that finds it included): {edit}");
    // Microsoft was on this engagement from the start: no second referral to Microsoft.
    assert_eq!(
        w.engine
            .partner_center()
            .related_referrals(w.referral(&rid).await["engagementId"].as_str().unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    let pc_writes: u64 = edit
        .by_endpoint
        .iter()
        .filter(|(k, _)| k.starts_with("partner_center PATCH"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(pc_writes, 1, "{edit}");
    assert_eq!(edit.writes(), 1, "only the PATCH: {edit}");

    // The budget is 5 (design §8); 4 is what it takes: the event's read, the lookups in
    // one batch, the customer records + opportunity + solutions as one atomic batch, and
    // externalReferenceId back to Partner Center.
    assert!(
        new_referral.total() <= 4,
        "a new incoming referral, new customer: {new_referral}"
    );
    assert!(
        known_customer.total() <= 4,
        "a new incoming referral, known customer: {known_customer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_api_economy() {
    economy(CrmKind::Dynamics365).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_api_economy() {
    economy(CrmKind::Salesforce).await;
}
