//! API economy (`design.md` §8), counted by the sandbox per endpoint: what one webhook event
//! costs, apart from the periodic reconcile and CRM poll. The figures are reported by the
//! `sync` benchmark (`bench/run`, BENCHMARKS.md); this test holds the budgets.

use cosell::config::model::CrmKind;

mod common;
#[path = "common/economy.rs"]
mod economy;
#[path = "common/world.rs"]
mod world;

async fn economy(crm: CrmKind) {
    let e = economy::measure(crm).await;
    for (name, calls) in [
        ("new incoming referral (new customer)", &e.new_customer),
        ("new incoming referral (known customer)", &e.known_customer),
        ("echo of our own PC write", &e.echo),
        ("re-delivered unchanged webhook", &e.redelivery),
        ("a quiet round (reconcile + CRM poll)", &e.quiet_round),
        (
            "CRM edit → PC (the poll that finds it included)",
            &e.crm_edit,
        ),
    ] {
        eprintln!("{crm:?} {name}: {calls}");
    }
    // The budget is 5 (design §8); 4 is what it takes: the event's read, the lookups in
    // one batch, the customer records + opportunity + solutions as one atomic batch, and
    // externalReferenceId back to Partner Center.
    assert!(e.new_customer.total() <= 4, "{}", e.new_customer);
    assert!(e.known_customer.total() <= 4, "{}", e.known_customer);
    for calls in [&e.echo, &e.redelivery] {
        assert_eq!(calls.writes(), 0, "{calls}");
        assert!(calls.reads() <= 1, "{calls}");
    }
    assert_eq!(e.quiet_round.writes(), 0, "{}", e.quiet_round);
    assert_eq!(e.crm_edit.pc_patches(), 1, "{}", e.crm_edit);
    assert_eq!(e.crm_edit.writes(), 1, "only the PATCH: {}", e.crm_edit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_api_economy() {
    economy(CrmKind::Dynamics365).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_api_economy() {
    economy(CrmKind::Salesforce).await;
}
