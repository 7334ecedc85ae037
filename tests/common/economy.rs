//! API economy (`design.md` §8), counted by the sandbox per endpoint: what each event costs,
//! apart from the periodic reconcile and CRM poll. Shared by `tests/engine_economy.rs` (which
//! holds the budgets) and the `sync` benchmark (which reports the figures). Included with
//! `#[path]` next to `common` and `world`.
#![allow(dead_code)]

use cosell::config::model::CrmKind;
use serde_json::json;

use super::world::{Calls, Stage, world};

/// The calls of each scenario.
pub struct Economy {
    /// A new incoming referral whose customer the CRM does not have: webhook → account,
    /// contact, opportunity, solutions → externalReferenceId back to Partner Center.
    pub new_customer: Calls,
    /// A new incoming referral of a customer the CRM has (found, currency cached).
    pub known_customer: Calls,
    /// `referral-updated` after our own PATCH of externalReferenceId.
    pub echo: Calls,
    /// The same webhook delivered again.
    pub redelivery: Calls,
    /// A reconcile plus a CRM poll that find nothing (our own CRM writes included).
    pub quiet_round: Calls,
    /// A seller's edit of the deal value → one PATCH to Partner Center; the CRM poll that
    /// finds it is included.
    pub crm_edit: Calls,
}

/// Runs every scenario against a fresh sandbox and engine for `crm`.
pub async fn measure(crm: CrmKind) -> Economy {
    let w = world(crm).await;
    let n = w.names();

    let rid = w.incoming("Economy first").await;
    let before = w.call_log().await;
    w.deliver("referral-created", &rid).await;
    let new_customer = before.since(&w.call_log().await);
    let (opp, _) = w.opportunity_of(&rid).await;
    assert_eq!(w.referral(&rid).await["externalReferenceId"], json!(opp));

    let second = w.incoming("Economy second").await;
    let before = w.call_log().await;
    w.deliver("referral-created", &second).await;
    let known_customer = before.since(&w.call_log().await);

    let before = w.call_log().await;
    w.deliver("referral-updated", &rid).await;
    let echo = before.since(&w.call_log().await);

    let before = w.call_log().await;
    w.deliver("referral-updated", &rid).await;
    let redelivery = before.since(&w.call_log().await);

    // Our CRM writes come back through the CRM poll.
    w.sync().await;
    let before = w.call_log().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.sync().await;
    let quiet_round = before.since(&w.call_log().await);

    // The seller accepts (the first CRM → PC sync also starts the record's audit trail),
    // then edits the value.
    w.update_opportunity(&opp, w.stage(Stage::Active)).await;
    w.sync().await;
    w.update_opportunity(&opp, json!({ n.value: 61_000 })).await;
    let before = w.call_log().await;
    w.runner.poll_crm().await.unwrap();
    let drained = w.runner.drain().await.unwrap();
    assert_eq!(drained.dead, 0);
    let crm_edit = before.since(&w.call_log().await);
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
    Economy {
        new_customer,
        known_customer,
        echo,
        redelivery,
        quiet_round,
        crm_edit,
    }
}

impl Calls {
    /// Calls to Partner Center's PATCH endpoint.
    pub fn pc_patches(&self) -> u64 {
        self.by_endpoint
            .iter()
            .filter(|(k, _)| k.starts_with("partner_center PATCH"))
            .map(|(_, n)| n)
            .sum()
    }
}
