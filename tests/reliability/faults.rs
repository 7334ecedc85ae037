//! Faults on every API while referrals sync both ways: the sandbox answers 10 % of the
//! calls of Partner Center, the CRM (Dataverse or Salesforce) and their token endpoints
//! with 429 (+ `Retry-After`), 5 % with 503, drops 2 % of the connections without an
//! answer and times out 2 % — a timed-out call has been carried out (the write happened),
//! only its answer comes too late (after 3 s; the engine's `timeout_seconds` is 2), which
//! is the case where a blindly retried create would write twice.
//!
//! Per CRM, 1 000 referrals are created while the faults are on (CI; `--long`: 2 000):
//! 95 % shared by Microsoft (Partner Center → CRM), 5 % opportunities flagged by sellers
//! (CRM → Partner Center, each also creating the referral for Microsoft); then edits on
//! both sides and Microsoft accepting co-sells. The engine (`cosell run`, webhooks on)
//! must converge with the faults still on: every referral exactly once, every edit
//! applied, no dead letter (nothing here is permanently wrong), and retries bounded —
//! the calls the engine made stay within a small factor of the calls that succeeded.

use std::time::{Duration, Instant};

use cosell::config::model::CrmKind;
use serde_json::{Value, json};

use crate::report::{Ctx, Figures};
use crate::scenario::{CRMS, Options, Scenario};

/// The nominal mix. `decide` draws the error mix first, then resets among the calls left,
/// then timeouts among those: the conditional rates below make each kind's share of all
/// calls the nominal one.
const THROTTLED: f64 = 0.10;
const UNAVAILABLE: f64 = 0.05;
const RESETS: f64 = 0.02;
const TIMEOUTS: f64 = 0.02;

/// How long the engine may take to converge once the last change is made.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(600);

/// The fault settings for one API.
fn mix() -> Value {
    let left = 1.0 - THROTTLED - UNAVAILABLE;
    json!({
        "errors": [
            { "rate": THROTTLED, "status": 429, "retry_after_seconds": 1 },
            { "rate": UNAVAILABLE, "status": 503, "retry_after_seconds": 1 },
        ],
        "reset_rate": RESETS / left,
        "timeout_rate": TIMEOUTS / (left - RESETS),
        "timeout_ms": 3000,
    })
}

pub fn run(ctx: &Ctx) -> Figures {
    let referrals = ctx.pick(1000, 2000);
    let mut figures = Figures::default();
    for (index, kind) in CRMS.into_iter().enumerate() {
        let one = faults(kind, ctx.seed.wrapping_add(100 + index as u64), referrals);
        figures.add(&one);
        figures.notes.extend(one.notes);
    }
    figures.notes.push(
        "operations = referrals created + edits synced; faults = 429 + 503 + resets + \
         timeouts the sandbox injected into the engine's calls"
            .to_owned(),
    );
    figures
}

fn faults(kind: CrmKind, seed: u64, referrals: usize) -> Figures {
    let started = Instant::now();
    let mut world = Scenario::new(
        kind,
        "faults",
        seed,
        &Options {
            timeout_seconds: Some(2),
        },
    );
    let flagged = referrals / 20;
    let incoming = referrals - flagged;
    let crm_api = match kind {
        CrmKind::Dynamics365 => "dataverse",
        CrmKind::Salesforce => "salesforce",
    };
    let auth_api = match kind {
        CrmKind::Dynamics365 => "entra_id",
        CrmKind::Salesforce => "salesforce_auth",
    };
    let on = json!({
        "partner_center": mix(),
        "partner_center_webhooks": mix(),
        crm_api: mix(),
        "entra_id": mix(),
        auth_api: mix(),
    });
    world.set_faults(on);
    let before = world.stats();

    let mut engine = world.engine(&["--poll-every", "2", "--reconcile-every", "30"]);
    // The work arrives while the engine runs: flagged opportunities first, then the
    // referrals in waves (each share is a webhook into a faulty world).
    world.flag(flagged / 2);
    let wave = 100;
    let mut shared = 0;
    while shared < incoming {
        let n = wave.min(incoming - shared);
        world.share(n);
        shared += n;
        if shared >= incoming / 2 && world.flagged.len() < flagged {
            world.flag(flagged - world.flagged.len());
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // Edits on both sides once the records exist: Microsoft's notes, sellers' deal
    // values, Microsoft accepting our co-sells.
    let edits = referrals / 10;
    let ids: Vec<String> = world.incoming.iter().cloned().collect();
    for rid in ids.iter().take(edits) {
        world.microsoft_notes(rid);
    }
    // Sellers' deal values on the flagged opportunities (an incoming referral's
    // opportunity is on hold until a seller accepts it; edits on hold are not sent) and
    // Microsoft accepting half of those co-sells, once our referrals exist.
    let wait_until = Instant::now() + CONVERGE_DEADLINE;
    let opportunities: Vec<String> = world.flagged.iter().cloned().collect();
    std::thread::sleep(Duration::from_millis(1100));
    for (index, opportunity) in opportunities.iter().enumerate() {
        while !world.seller_deal_value(opportunity) {
            assert!(
                Instant::now() < wait_until,
                "{kind:?}: opportunity {opportunity} never reached Partner Center\n{}",
                world.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        if index % 2 == 0 {
            assert!(world.microsoft_accepts(opportunity), "our referral exists");
        }
    }
    let changes_done = started.elapsed();

    // Converge with the faults still on.
    let mut check = world.check();
    let mut reported = Instant::now();
    while !check.converged() && Instant::now() < wait_until {
        if let Some(status) = engine.try_wait().unwrap() {
            panic!(
                "{kind:?}: the engine exited ({status})\n{}",
                world.log_tail()
            );
        }
        if reported.elapsed() > Duration::from_secs(30) {
            println!("   {kind:?}: waiting: {}", check.describe());
            reported = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(3));
        check = world.check();
    }
    let converged_after = started.elapsed();
    let after = world.stats();
    crate::scenario::kill(&mut engine);
    assert!(
        check.converged(),
        "{kind:?}: not converged {:?} after the last change: {}\n{}",
        converged_after - changes_done,
        check.describe(),
        world.log_tail()
    );

    // Retries bounded: every injected fault costs at most a few more calls, and nothing
    // was given up on (no dead letter — checked by `check`).
    let injected = &after["faults_injected"];
    let count = |key: &str| injected[key].as_u64().unwrap_or(0);
    let faults = count("throttled")
        + count("unavailable")
        + count("internal_errors")
        + count("resets")
        + count("timeouts");
    let calls = total_calls(&after) - total_calls(&before);
    let answered = calls.saturating_sub(faults);
    let amplification = calls as f64 / answered.max(1) as f64;
    assert!(
        faults > (calls as f64 * 0.08) as u64,
        "{kind:?}: only {faults} faults injected into {calls} calls"
    );
    assert!(
        amplification < 1.6,
        "{kind:?}: {calls} calls for {answered} answered ones: retries are not bounded"
    );
    // The test's own calls (edits, checks) went through the same faults; they are a
    // small part of `calls`.
    let mut figures = Figures {
        operations: (world.incoming.len()
            + 2 * world.flagged.len()
            + world.notes.len()
            + world.deal_values.len()
            + world.msx_ids.len()) as u64,
        faults_injected: faults,
        duplicates: check.duplicates.len() as u64,
        lost: check.lost.len() as u64,
        ..Figures::default()
    };
    figures.notes.push(format!(
        "{kind:?}: {} referrals shared, {} opportunities flagged, {} notes, {} deal values, \
         {} accepts; {calls} calls with {} × 429, {} × 503, {} resets, {} timeouts \
         ({:.1} % faulted, {amplification:.2} calls per answered call); converged {:.0} s \
         after the last change, {:.0} s in all",
        world.incoming.len(),
        world.flagged.len(),
        world.notes.len(),
        world.deal_values.len(),
        world.msx_ids.len(),
        count("throttled"),
        count("unavailable"),
        count("resets"),
        count("timeouts"),
        100.0 * faults as f64 / calls.max(1) as f64,
        (converged_after - changes_done).as_secs_f64(),
        started.elapsed().as_secs_f64(),
    ));
    figures
}

/// Every call the sandbox counted, over all APIs.
fn total_calls(stats: &Value) -> u64 {
    stats["apis"].as_object().map_or(0, |apis| {
        apis.values().filter_map(|api| api["calls"].as_u64()).sum()
    })
}
