//! Crash safety (design §6): the `cosell run` process is SIGKILLed at random points while
//! it creates and updates records in both directions, restarted each time, and finally run
//! `--once` to completion. Afterwards every referral must be synced exactly once — one CRM
//! record, its solutions, its link, `externalReferenceId`; one referral of ours and one
//! for Microsoft per flagged opportunity; no customer created twice — and every edit made
//! on either side must have arrived.
//!
//! Per CRM: the first half of the kills land during the backfill (creates: incoming
//! referrals → CRM, flagged opportunities → Partner Center), each at a random point of its
//! own slice of the backlog; the second half right after a batch of edits (updates:
//! Microsoft's notes → CRM, sellers' deal values → Partner Center, Microsoft accepting our
//! co-sells → the opportunity's Microsoft CRM ID), after a random delay.
//!
//! Kill delays come from the suite's seed (`COSELL_RELIABILITY_SEED`); the engine's own
//! timing still varies. `COSELL_RELIABILITY_KEEP=1` keeps logs and state files.

use std::time::{Duration, Instant};

use cosell::config::model::CrmKind;

use crate::backfill::SplitMix;
use crate::report::{Ctx, Figures};
use crate::scenario::{CRMS, Options, Scenario, kill};

/// How long a restarted engine may take to reach its kill point before the test calls it
/// stuck.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(90);
/// How long the final `--once` run may take.
const ONCE_DEADLINE: Duration = Duration::from_secs(300);

struct Size {
    referrals: usize,
    flagged: usize,
    kills: usize,
    edits: usize,
}

pub fn run(ctx: &Ctx) -> Figures {
    let size = ctx.pick(
        Size {
            referrals: 300,
            flagged: 20,
            kills: 12,
            edits: 60,
        },
        Size {
            referrals: 1000,
            flagged: 60,
            kills: 40,
            edits: 200,
        },
    );
    let mut figures = Figures::default();
    for (index, kind) in CRMS.into_iter().enumerate() {
        let one = crash(kind, ctx.seed.wrapping_add(index as u64), &size);
        figures.add(&one);
        figures.notes.extend(one.notes);
    }
    figures.notes.push(
        "operations = records created + edits synced; crashes = SIGKILLs of `cosell run` \
         (half during creates, half during updates)"
            .to_owned(),
    );
    figures
}

fn crash(kind: CrmKind, seed: u64, size: &Size) -> Figures {
    let started = Instant::now();
    let mut rng = SplitMix(seed);
    let mut world = Scenario::new(kind, "crash", seed, &Options::default());
    println!("   {kind:?}: state and logs in {}", world.dir().display());

    // 1. The backlog: referrals waiting in Partner Center, half of the flagged
    //    opportunities (the other half is flagged in the middle of the backfill).
    world.flag(size.flagged / 2);
    world.share(size.referrals);

    // 2. Kills during the creates: each waits for a random delay and for the backfill to
    //    pass a random point of its own slice of the backlog.
    let create_kills = size.kills / 2;
    let slice = (size.referrals * 9 / 10) as u64 / create_kills.max(1) as u64;
    let mut at = Vec::new();
    for round in 0..create_kills {
        if round == create_kills / 2 {
            world.flag(size.flagged - size.flagged / 2);
        }
        let target = (slice * round as u64 + rng.in_range(0..slice.max(1))) as usize;
        let delay = Duration::from_millis(rng.in_range(100..1500));
        let mut child = world.engine(&[]);
        let start = Instant::now();
        std::thread::sleep(delay);
        let mut linked = world.links();
        while linked < target && start.elapsed() < PROGRESS_DEADLINE {
            std::thread::sleep(Duration::from_millis(50));
            linked = world.links();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{kind:?}: the engine exited by itself ({status}) before kill {}\n{}",
                round + 1,
                world.log_tail()
            );
        }
        kill(&mut child);
        assert!(
            linked >= target,
            "{kind:?}: no progress after restart {round}: {linked} link(s), wanted {target}\n{}",
            world.log_tail()
        );
        at.push(format!("{linked} links"));
    }

    // 3. Kills during the updates: a batch of edits on both sides, a start, a random
    //    delay, a kill. The edits go to referrals that are synced by now (a referral not
    //    synced yet would only test the create again).
    let update_kills = size.kills - create_kills;
    let per_round = size.edits.div_ceil(update_kills.max(1));
    let incoming: Vec<String> = world.incoming.iter().cloned().collect();
    let mut notes_next = 0;
    let mut note_edits = 0;
    let mut deals_next = 0;
    let mut deal_edits = 0;
    let flagged: Vec<String> = world.flagged.iter().cloned().collect();
    let mut accepts_next = 0;
    for round in 0..update_kills {
        let mut edits = 0;
        while edits < per_round && notes_next < incoming.len() {
            world.microsoft_notes(&incoming[notes_next]);
            notes_next += 1;
            edits += 1;
        }
        note_edits += edits;
        // Sellers' deal values on flagged opportunities (an incoming referral's opportunity
        // is on hold until a seller accepts it, and edits on hold are not sent). Change
        // stamps are whole seconds: step past the second of the engine's last write.
        std::thread::sleep(Duration::from_millis(1100));
        for _ in 0..3 {
            if world.seller_deal_value(&flagged[deals_next % flagged.len()]) {
                deal_edits += 1;
            }
            deals_next += 1;
        }
        // Microsoft accepts a couple of co-sells per round.
        for _ in 0..2 {
            if accepts_next < flagged.len() && world.microsoft_accepts(&flagged[accepts_next]) {
                accepts_next += 1;
            }
        }
        let delay = Duration::from_millis(rng.in_range(300..2500));
        let mut child = world.engine(&[]);
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{kind:?}: the engine exited by itself ({status}) before update kill {}\n{}",
                round + 1,
                world.log_tail()
            );
        }
        kill(&mut child);
        at.push(format!("{} ms", delay.as_millis()));
    }

    // 4. A last start, to completion.
    let summary = world.run_once(ONCE_DEADLINE);
    let check = world.assert_converged(&format!("{kind:?} after {} kills", size.kills));

    let creates = world.incoming.len() + 2 * world.flagged.len();
    let edits = note_edits + deal_edits + world.msx_ids.len();
    let mut figures = Figures {
        operations: (creates + edits) as u64,
        crashes_survived: size.kills as u64,
        duplicates: check.duplicates.len() as u64,
        lost: check.lost.len() as u64,
        ..Figures::default()
    };
    figures.notes.push(format!(
        "{kind:?}: {} kills (at {}), {} referrals + {} flagged opportunities created, \
         {} edits ({} notes, {} deal values, {} accepts), {} records checked; final run: \
         {summary}; {:.0} s",
        size.kills,
        at.join(", "),
        world.incoming.len(),
        world.flagged.len(),
        edits,
        note_edits,
        deal_edits,
        world.msx_ids.len(),
        check.checked,
        started.elapsed().as_secs_f64()
    ));
    figures
}
