//! Missed webhooks: the sandbox drops 30 % of its webhook deliveries (they are never
//! delivered, never retried — lost, as when a receiver is unreachable for longer than
//! Partner Center retries). Partner Center's side of the sync then rests on the engine's
//! reconcile, which lists the referrals changed since its cursor every
//! `--reconcile-every`; the CRM side is polled anyway.
//!
//! Per CRM, while `cosell run` works: Microsoft shares referrals (`referral-created`),
//! edits some of them (`referral-updated`), sellers flag opportunities and Microsoft
//! accepts some of those co-sells (`related-referral-created` on Microsoft's side of the
//! engagement). After the last change, everything must have converged within one
//! reconcile interval plus the time to drain what that reconcile found.

use std::time::{Duration, Instant};

use cosell::config::model::CrmKind;
use serde_json::json;

use crate::report::{Ctx, Figures};
use crate::scenario::{CRMS, Options, Scenario, kill};

/// Share of webhook deliveries dropped.
const DROP_RATE: f64 = 0.3;
/// Time a reconcile round may take to sync what it found, on top of the interval.
const DRAIN: Duration = Duration::from_secs(15);

pub fn run(ctx: &Ctx) -> Figures {
    let (referrals, interval) = ctx.pick((200, 20), (1000, 60));
    let mut figures = Figures::default();
    for (index, kind) in CRMS.into_iter().enumerate() {
        let one = missed(
            kind,
            ctx.seed.wrapping_add(200 + index as u64),
            referrals,
            interval,
        );
        figures.add(&one);
        figures.notes.extend(one.notes);
    }
    figures.notes.push(
        "operations = referrals created + edits synced; faults = webhook deliveries dropped"
            .to_owned(),
    );
    figures
}

fn missed(kind: CrmKind, seed: u64, referrals: usize, interval: u64) -> Figures {
    let started = Instant::now();
    let mut world = Scenario::new(kind, "missed", seed, &Options::default());
    world.control(
        "/_sandbox/faults",
        &json!({ "webhooks": { "drop_rate": DROP_RATE } }),
    );
    let reconcile_every = Duration::from_secs(interval);
    let mut engine = world.engine(&[
        "--poll-every",
        "2",
        "--reconcile-every",
        &interval.to_string(),
    ]);

    let flagged = 20;
    world.flag(flagged);
    let waves = 4;
    for _ in 0..waves {
        world.share(referrals / waves);
        std::thread::sleep(Duration::from_secs(1));
    }
    let ids: Vec<String> = world.incoming.iter().cloned().collect();
    for rid in ids.iter().step_by(2) {
        world.microsoft_notes(rid);
    }
    // Our referrals of the flagged opportunities come from the CRM poll (no webhook
    // involved); once they exist, Microsoft accepts half of them.
    let opportunities: Vec<String> = world.flagged.iter().cloned().collect();
    let give_up = Instant::now() + Duration::from_secs(120);
    for opportunity in opportunities.iter().take(flagged / 2) {
        while !world.microsoft_accepts(opportunity) {
            assert!(
                Instant::now() < give_up,
                "{kind:?}: opportunity {opportunity} never reached Partner Center\n{}",
                world.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let last_change = Instant::now();

    let deadline = last_change + reconcile_every + DRAIN;
    let mut check = world.check();
    while !check.converged() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        check = world.check();
    }
    let took = last_change.elapsed();
    let stats = world.stats();
    kill(&mut engine);
    let dropped = stats["webhooks_dropped"].as_u64().unwrap_or(0);
    assert!(
        check.converged(),
        "{kind:?}: not converged {took:?} after the last change (reconcile every \
         {interval} s, {dropped} webhooks dropped): {}\n{}",
        check.describe(),
        world.log_tail()
    );
    assert!(dropped > 0, "{kind:?}: no webhook was dropped");

    let mut figures = Figures {
        operations: (world.incoming.len()
            + 2 * world.flagged.len()
            + world.notes.len()
            + world.msx_ids.len()) as u64,
        faults_injected: dropped,
        duplicates: check.duplicates.len() as u64,
        lost: check.lost.len() as u64,
        ..Figures::default()
    };
    figures.notes.push(format!(
        "{kind:?}: {} referrals, {} flagged, {} notes, {} accepts; {dropped} webhooks \
         dropped; converged {:.1} s after the last change (reconcile every {interval} s); \
         {:.0} s in all",
        world.incoming.len(),
        world.flagged.len(),
        world.notes.len(),
        world.msx_ids.len(),
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    figures
}
