//! Section `edits`: people editing a record *exactly* between the engine's read and its
//! write, on both CRMs and in both directions.
//!
//! The sandbox's interleave hook (`POST /_sandbox/interleave`, `src/sandbox/interleave.rs`)
//! applies a human edit to the record the engine is about to write, through the emulator's
//! own write path (new eTag / version / modstamp, Partner Center's webhook), and only then
//! lets the engine's request through. Every edit is made a second after the change before
//! it (`advance_clock_seconds: 1`): people edit at a person's pace, and Salesforce's
//! precondition, `If-Unmodified-Since`, has whole seconds.
//!
//! The mapping is the shipped one with owners declared the three ways a mapping can:
//! the deal value stays `newest` (as shipped), the notes / description are owned by the CRM
//! (`owner: crm`) and the closing date by Partner Center (`owner: partner_center`); an
//! unmapped CRM field (Dataverse `budgetamount`, Salesforce `NextStep`) stands for
//! everything the engine does not write. Per CRM:
//!
//! - PC → CRM: Microsoft updates the referral; while the engine updates the opportunity a
//!   seller edits it. The engine's conditional write is refused (412), it re-reads and
//!   settles each field by its owner: the seller's newer value and CRM-owned notes survive,
//!   Partner Center's closing date wins, the unmapped field survives; one `conflict` audit
//!   entry says who kept what. Then both systems converge.
//! - CRM → PC: a seller edits the opportunity; while the engine PATCHes the referral,
//!   Microsoft changes it. 412, fresh read, re-diff: Microsoft's newer value and Partner
//!   Center's closing date stay, the seller's CRM-owned notes go through; audited; Microsoft's
//!   winning values then reach the CRM.
//! - Microsoft closes the referral while the engine PATCHes it: nothing is written over the
//!   terminal state, audited, and the CRM follows the close.
//! - Repeated: the edit comes back on every retry. The engine gives up after its attempt
//!   limit (dead letter, audited), never overwrote anything, and a replay after the edits
//!   stop settles it.

use std::time::Duration;

use cosell::config::model::CrmKind;
use cosell::engine::runner::Drained;
use cosell::store::NewJob;
use serde_json::{Map, Value, json};

use crate::report::{Ctx, Figures};

use crate::{common, world};
use world::{Stage, World, shipped, world_with};

pub fn run(ctx: &Ctx) -> Figures {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut figures = Figures::default();
        let rounds = ctx.pick(1, 4);
        for crm in [CrmKind::Dynamics365, CrmKind::Salesforce] {
            let dir = tempfile::tempdir().expect("temp dir");
            let w = world_with(&owned_mapping(crm, dir.path()), crm).await;
            let mut t = Tally::default();
            for round in 0..rounds {
                // The seed varies the values written (a replayed seed writes the same).
                let k = u32::try_from(ctx.seed % 1000).unwrap_or(0) * 10 + round;
                pc_to_crm(&w, &mut t, k).await;
                crm_to_pc(&w, &mut t, k).await;
            }
            closed_meanwhile(&w, &mut t).await;
            repeated_pc_to_crm(&w, &mut t).await;
            repeated_crm_to_pc(&w, &mut t).await;
            let (duplicates, lost) = census(&w, &t.referrals).await;
            let edits = w.stats().await["interleaved_edits"].as_u64().unwrap_or(0);
            assert_eq!(edits, t.edits, "{crm:?}: edits the sandbox applied");
            figures.operations += t.jobs;
            figures.faults_injected += edits;
            figures.duplicates += duplicates;
            figures.lost += lost;
            figures.notes.push(format!(
                "{crm:?}: {} referrals, {edits} human edits between read and write, {} writes refused 412 ({} If-Match, {} If-Unmodified-Since), {} jobs",
                t.referrals.len(),
                t.refused,
                t.if_match,
                t.if_unmodified_since,
                t.jobs,
            ));
        }
        figures.notes.push(
            "operations = sync jobs run; faults injected = human edits interleaved; duplicates / lost = opportunities per referral ≠ 1"
                .into(),
        );
        figures.notes.push(
            "Dataverse, Partner Center: If-Match eTag, no window. Salesforce: If-Unmodified-Since (whole seconds): an edit in the same second as the record's previous change is not seen".into(),
        );
        figures
    })
}

/// What a CRM's run did.
#[derive(Default)]
struct Tally {
    jobs: u64,
    edits: u64,
    refused: u64,
    if_match: u64,
    if_unmodified_since: u64,
    referrals: Vec<String>,
}

// -------------------------------------------------------------------------------------------
// The mapping and the fields
// -------------------------------------------------------------------------------------------

/// The shipped mapping with the closing date owned by Partner Center and the notes by the
/// CRM, both ways (inline tests dropped: their input files are relative to `mappings/`).
fn owned_mapping(crm: CrmKind, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(shipped(crm)).expect("shipped mapping");
    let text = &text[..text.find("\ntests:").unwrap_or(text.len())];
    let edits: &[(&str, &str)] = match crm {
        CrmKind::Dynamics365 => &[
            (
                "estimatedclosedate: { path: $.details.closingDateTime, transform: [date], owner: newest }",
                "estimatedclosedate: { path: $.details.closingDateTime, transform: [date], owner: partner_center }",
            ),
            (
                "description: { path: $.details.notes, transform: [{ truncate: 2000 }] }\n      \"customerid_account",
                "description: { path: $.details.notes, transform: [{ truncate: 2000 }], owner: crm }\n      \"customerid_account",
            ),
            (
                "details.closingDateTime: { path: $.estimatedclosedate, transform: [datetime], owner: newest }",
                "details.closingDateTime: { path: $.estimatedclosedate, transform: [datetime], owner: partner_center }",
            ),
            (
                "details.notes: { path: $.description, transform: [{ truncate: 1000 }] }",
                "details.notes: { path: $.description, transform: [{ truncate: 1000 }], owner: crm }",
            ),
        ],
        CrmKind::Salesforce => &[
            (
                "required: Closing date is required\n        owner: newest",
                "required: Closing date is required\n        owner: partner_center",
            ),
            (
                "Description: { path: $.details.notes, transform: [{ truncate: 32000 }] }\n      StageName",
                "Description: { path: $.details.notes, transform: [{ truncate: 32000 }], owner: crm }\n      StageName",
            ),
            (
                "details.closingDateTime: { path: $.CloseDate, transform: [datetime], owner: newest }",
                "details.closingDateTime: { path: $.CloseDate, transform: [datetime], owner: partner_center }",
            ),
            (
                "details.notes: { path: $.Description, transform: [{ truncate: 1000 }] }",
                "details.notes: { path: $.Description, transform: [{ truncate: 1000 }], owner: crm }",
            ),
        ],
    };
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "the shipped {crm:?} mapping changed: `{from}` not found once"
        );
        text = text.replace(from, to);
    }
    let path = dir.join("owned.yaml");
    std::fs::write(&path, text).expect("write mapping");
    path
}

/// The opportunity fields the scenarios edit, per CRM.
struct Fields {
    value: &'static str,
    notes: &'static str,
    close: &'static str,
    /// Not mapped: the engine never writes it.
    unmapped: &'static str,
    unmapped_value: Value,
}

fn fields(crm: CrmKind) -> Fields {
    match crm {
        CrmKind::Dynamics365 => Fields {
            value: "estimatedvalue",
            notes: "description",
            close: "estimatedclosedate",
            unmapped: "budgetamount",
            unmapped_value: json!(4242.0),
        },
        CrmKind::Salesforce => Fields {
            value: "Amount",
            notes: "Description",
            close: "CloseDate",
            unmapped: "NextStep",
            unmapped_value: json!("Call the CFO"),
        },
    }
}

// -------------------------------------------------------------------------------------------
// The interleave hook and the engine
// -------------------------------------------------------------------------------------------

fn crm_api(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Dynamics365 => "dataverse",
        CrmKind::Salesforce => "salesforce",
    }
}

/// The piece of the path of an opportunity's own URL.
fn opportunity_path(crm: CrmKind, id: &str) -> String {
    match crm {
        CrmKind::Dynamics365 => format!("/opportunities({id})"),
        CrmKind::Salesforce => format!("/sobjects/Opportunity/{id}"),
    }
}

/// Arms a human edit for the next `times` writes matching `path_contains`; the rule id.
async fn arm(w: &World, api: &str, path_contains: &str, edit: Value, times: u32) -> u64 {
    let (status, body) = common::control(
        w.base(),
        "/_sandbox/interleave",
        &json!({
            "api": api, "method": "PATCH", "path_contains": path_contains, "edit": edit,
            "times": times, "advance_clock_seconds": 1,
        }),
    )
    .await;
    assert!(
        status.is_success(),
        "arming the interleave: {status} {body}"
    );
    body["id"].as_u64().expect("rule id")
}

/// The requests rule `id` saw, in order.
async fn seen(w: &World, id: u64) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{}/_sandbox/interleave", w.base()))
        .await
        .expect("interleave state")
        .json()
        .await
        .expect("interleave JSON");
    body["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["rule"] == json!(id))
        .cloned()
        .collect()
}

async fn disarm(w: &World) {
    let status = reqwest::Client::new()
        .delete(format!("{}/_sandbox/interleave", w.base()))
        .send()
        .await
        .expect("disarm")
        .status();
    assert!(status.is_success(), "disarm: {status}");
}

/// Checks the engine's writes that rule `id` saw: `edits` of them met a human edit and
/// were refused with 412 (each conditional: `If-Match` with an eTag, or Salesforce's
/// `If-Unmodified-Since`), then `then_ok` went through. Counts them into `t`.
async fn check_writes(w: &World, t: &mut Tally, id: u64, edits: usize, then_ok: usize, what: &str) {
    let log = seen(w, id).await;
    assert_eq!(
        log.len(),
        edits + then_ok,
        "{what}: the engine's writes to the record: {log:#?}"
    );
    for (i, entry) in log.iter().enumerate() {
        let edited = i < edits;
        assert_eq!(entry["edited"], json!(edited), "{what}: {entry}");
        if edited {
            assert!(
                entry["edit_status"]
                    .as_u64()
                    .is_some_and(|s| (200..300).contains(&s)),
                "{what}: the human edit itself failed: {entry}"
            );
            assert_eq!(
                entry["status"],
                json!(412),
                "{what}: a write over a human edit must be refused: {entry}"
            );
            t.refused += 1;
            t.edits += 1;
        } else {
            assert!(
                entry["status"]
                    .as_u64()
                    .is_some_and(|s| (200..300).contains(&s)),
                "{what}: the write after the re-read: {entry}"
            );
        }
        match entry["if_match"].as_str() {
            Some(tag) if tag != "*" => t.if_match += 1,
            _ => {
                assert_eq!(
                    entry["api"],
                    json!("salesforce"),
                    "{what}: no If-Match: {entry}"
                );
                assert!(
                    entry["if_unmodified_since"].is_string(),
                    "{what}: an unconditional Salesforce write: {entry}"
                );
                t.if_unmodified_since += 1;
            }
        }
    }
}

/// Enqueues Partner Center's webhook for `rid` and runs the inbox until nothing is left
/// (retries included).
async fn deliver(w: &World, t: &mut Tally, rid: &str) -> Drained {
    w.engine
        .store()
        .enqueue(&NewJob::new(
            cosell::engine::inbox::referral_key(rid),
            cosell::engine::inbox::PC_EVENT,
            json!({ "event": "referral-updated", "referral_id": rid }),
        ))
        .await
        .expect("enqueue");
    settle(w, t).await
}

/// Polls the CRM once and runs the inbox until nothing is left.
async fn poll(w: &World, t: &mut Tally) -> Drained {
    w.runner.poll_crm().await.expect("CRM poll");
    settle(w, t).await
}

async fn settle(w: &World, t: &mut Tally) -> Drained {
    let mut total = Drained::default();
    for _ in 0..100 {
        let d = w.runner.drain().await.expect("drain");
        total.done += d.done;
        total.retried += d.retried;
        total.dead += d.dead;
        t.jobs += d.done + d.dead;
        let stats = w.engine.store().inbox_stats().await.expect("inbox");
        if stats.scheduled == 0 && stats.pending == 0 && stats.leased == 0 {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the inbox never emptied: the engine loops");
}

/// Syncs everything (reconcile, poll, inbox); nothing may be dead-lettered.
async fn sync(w: &World, t: &mut Tally) {
    let d = w.runner.run_once().await.expect("sync");
    t.jobs += d.done + d.dead;
    assert_eq!(
        d.dead,
        0,
        "dead letters: {:?}",
        w.engine.store().dead_letters().await
    );
}

/// A new incoming referral, synced and accepted by the seller: (referral, opportunity).
async fn accepted(w: &World, t: &mut Tally, name: &str) -> (String, String) {
    let rid = w.incoming(name).await;
    sync(w, t).await;
    let (opp, _) = w.opportunity_of(&rid).await;
    w.update_opportunity(&opp, w.stage(Stage::Active)).await;
    sync(w, t).await;
    assert_eq!(
        w.referral(&rid).await["status"],
        json!("Active"),
        "{name}: accepted"
    );
    t.referrals.push(rid.clone());
    (rid, opp)
}

/// The `conflict` audit entries of a referral since `after` (an audit id), newest first:
/// field → (owner, kept).
async fn conflicts(w: &World, rid: &str, after: i64) -> Vec<Map<String, Value>> {
    let trail = w.engine.store().audit_trail(rid, 100).await.expect("audit");
    trail
        .into_iter()
        .filter(|e| e.id > after && e.outcome == "conflict")
        .map(|e| {
            e.details["conflicts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["field"].as_str().unwrap_or_default().to_owned(),
                        json!([c["owner"], c["kept"]]),
                    )
                })
                .collect()
        })
        .collect()
}

async fn last_audit_id(w: &World, rid: &str) -> i64 {
    let trail = w.engine.store().audit_trail(rid, 100).await.expect("audit");
    trail.iter().map(|e| e.id).max().unwrap_or(0)
}

/// Equal, numbers by value (`4242` is `4242.0`).
fn same(a: Option<&Value>, b: &Value) -> bool {
    match (a.and_then(Value::as_f64), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == Some(b),
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// The CRM date field as `YYYY-MM-DD`.
fn day(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(10)
        .collect()
}

// -------------------------------------------------------------------------------------------
// The scenarios
// -------------------------------------------------------------------------------------------

/// Microsoft updates the referral; a seller edits the opportunity while the engine writes it.
async fn pc_to_crm(w: &World, t: &mut Tally, round: u32) {
    let f = fields(w.crm);
    let n = f64::from(round);
    let (rid, opp) = accepted(w, t, &format!("Edits PC to CRM {round}")).await;
    w.microsoft(
        &rid,
        json!({ "dealValue": 70_000.0 + n, "notes": "Microsoft's notes", "closingDateTime": "2028-01-31T00:00:00Z" }),
    )
    .await;
    let seller = json!({
        f.value: 81_000.0 + n, f.notes: "Seller's notes", f.close: "2028-06-30",
        f.unmapped: f.unmapped_value,
    });
    let rule = arm(w, crm_api(w.crm), &opportunity_path(w.crm, &opp), seller, 1).await;
    let audit = last_audit_id(w, &rid).await;
    let d = deliver(w, t, &rid).await;
    assert_eq!(d.dead, 0);
    check_writes(w, t, rule, 1, 1, "PC → CRM").await;
    disarm(w).await;

    let record = w.record(w.names().opportunity, &opp).await;
    let what = format!("{:?} PC → CRM, opportunity {opp}", w.crm);
    assert_eq!(
        number(record.get(f.value)),
        Some(81_000.0 + n),
        "{what}: the seller's newer value (owner: newest) survives"
    );
    assert_eq!(
        record[f.notes],
        json!("Seller's notes"),
        "{what}: CRM-owned notes survive"
    );
    assert_eq!(
        day(record.get(f.close)),
        "2028-01-31",
        "{what}: Partner Center owns the closing date"
    );
    assert!(
        same(record.get(f.unmapped), &f.unmapped_value),
        "{what}: the unmapped field survives: {:?}",
        record.get(f.unmapped)
    );
    let found = conflicts(w, &rid, audit).await;
    assert_eq!(found.len(), 1, "{what}: one conflict entry: {found:?}");
    let c = &found[0];
    assert_eq!(
        c.get(f.value),
        Some(&json!(["newest", "crm"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.get(f.notes),
        Some(&json!(["crm", "crm"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.get(f.close),
        Some(&json!(["partner_center", "partner_center"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.len(),
        3,
        "{what}: only the fields both sides changed: {c:?}"
    );

    // The seller's winning values then reach Partner Center; nothing moves after that.
    sync(w, t).await;
    let referral = w.referral(&rid).await;
    assert_eq!(
        number(referral["details"].get("dealValue")),
        Some(81_000.0 + n),
        "{what}: PC converges"
    );
    assert_eq!(
        referral["details"]["notes"],
        json!("Seller's notes"),
        "{what}: PC converges"
    );
    assert_eq!(
        day(referral["details"].get("closingDateTime")),
        "2028-01-31",
        "{what}"
    );
    let again = w.record(w.names().opportunity, &opp).await;
    for field in [f.value, f.notes, f.close, f.unmapped] {
        let before = record.get(field).cloned().unwrap_or(Value::Null);
        assert!(
            same(again.get(field), &before),
            "{what}: {field} after convergence"
        );
    }
}

/// A seller edits the opportunity; Microsoft changes the referral while the engine PATCHes it.
async fn crm_to_pc(w: &World, t: &mut Tally, round: u32) {
    let f = fields(w.crm);
    let n = f64::from(round);
    let (rid, opp) = accepted(w, t, &format!("Edits CRM to PC {round}")).await;
    w.update_opportunity(
        &opp,
        json!({ f.value: 91_000.0 + n, f.notes: "Seller's notes v2", f.close: "2028-03-31" }),
    )
    .await;
    let microsoft = json!({ "dealValue": 72_000.0 + n, "notes": "Microsoft's notes v2", "closingDateTime": "2028-09-30T00:00:00Z" });
    let rule = arm(
        w,
        "partner_center",
        &format!("/referrals/{rid}"),
        microsoft,
        1,
    )
    .await;
    let audit = last_audit_id(w, &rid).await;
    let d = poll(w, t).await;
    assert_eq!(d.dead, 0);
    check_writes(w, t, rule, 1, 1, "CRM → PC").await;
    disarm(w).await;

    let what = format!("{:?} CRM → PC, referral {rid}", w.crm);
    let referral = w.referral(&rid).await;
    assert_eq!(
        number(referral["details"].get("dealValue")),
        Some(72_000.0 + n),
        "{what}: Microsoft's newer value (owner: newest) stays"
    );
    assert_eq!(
        referral["details"]["notes"],
        json!("Seller's notes v2"),
        "{what}: CRM-owned notes go through"
    );
    assert_eq!(
        day(referral["details"].get("closingDateTime")),
        "2028-09-30",
        "{what}: Partner Center owns the closing date"
    );
    let found = conflicts(w, &rid, audit).await;
    assert_eq!(found.len(), 1, "{what}: one conflict entry: {found:?}");
    let c = &found[0];
    assert_eq!(
        c.get("details.dealValue"),
        Some(&json!(["newest", "partner_center"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.get("details.notes"),
        Some(&json!(["crm", "crm"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.get("details.closingDateTime"),
        Some(&json!(["partner_center", "partner_center"])),
        "{what}: {c:?}"
    );
    assert_eq!(
        c.len(),
        3,
        "{what}: only the fields both sides changed: {c:?}"
    );

    // Microsoft's change announces itself by webhook: the values Partner Center kept reach
    // the CRM, the seller's notes stay.
    let d = deliver(w, t, &rid).await;
    assert_eq!(d.dead, 0);
    sync(w, t).await;
    let record = w.record(w.names().opportunity, &opp).await;
    assert_eq!(
        number(record.get(f.value)),
        Some(72_000.0 + n),
        "{what}: the CRM converges on the value Partner Center kept"
    );
    assert_eq!(
        day(record.get(f.close)),
        "2028-09-30",
        "{what}: the CRM converges on Partner Center's closing date"
    );
    assert_eq!(
        record[f.notes],
        json!("Seller's notes v2"),
        "{what}: CRM-owned notes stay"
    );
    let again = w.referral(&rid).await;
    assert_eq!(
        again["details"], referral["details"],
        "{what}: Partner Center unchanged after convergence"
    );
}

/// Microsoft closes the referral while the engine PATCHes it.
async fn closed_meanwhile(w: &World, t: &mut Tally) {
    let f = fields(w.crm);
    let (rid, opp) = accepted(w, t, "Edits closed meanwhile").await;
    w.update_opportunity(&opp, json!({ f.value: 55_000.0 }))
        .await;
    let close = json!({ "status": "Closed", "substatus": "Lost" });
    let rule = arm(w, "partner_center", &format!("/referrals/{rid}"), close, 1).await;
    let audit = last_audit_id(w, &rid).await;
    let d = poll(w, t).await;
    assert_eq!(d.dead, 0);
    // The stale write is refused and, the referral now being Closed, not tried again.
    check_writes(w, t, rule, 1, 0, "closed meanwhile").await;
    disarm(w).await;
    let what = format!("{:?} closed meanwhile, referral {rid}", w.crm);
    let referral = w.referral(&rid).await;
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Closed"), Some("Lost")),
        "{what}"
    );
    assert_eq!(
        number(referral["details"].get("dealValue")),
        Some(50_000.0),
        "{what}: nothing written over the closed referral"
    );
    let trail = w
        .engine
        .store()
        .audit_trail(&rid, 100)
        .await
        .expect("audit");
    assert!(
        trail
            .iter()
            .any(|e| e.id > audit && e.outcome == "skipped" && e.message.contains("Closed/Lost")),
        "{what}: the skip is audited: {trail:#?}"
    );
    // The close reaches the CRM.
    deliver(w, t, &rid).await;
    let record = w.record(w.names().opportunity, &opp).await;
    let lost = w.stage(Stage::Lost);
    for (field, value) in lost.as_object().expect("stage") {
        assert_eq!(
            record.get(field),
            Some(value),
            "{what}: the CRM follows the close ({field})"
        );
    }
}

/// Attempts before the engine gives up on a job (`RunOptions::default().max_attempts`).
const ATTEMPTS: usize = 8;

/// A seller keeps editing the opportunity (a field the engine does not write, so the
/// engine's change stays due) on every retry of a PC → CRM write.
async fn repeated_pc_to_crm(w: &World, t: &mut Tally) {
    let f = fields(w.crm);
    let (rid, opp) = accepted(w, t, "Edits repeated PC to CRM").await;
    w.microsoft(&rid, json!({ "dealValue": 73_000.0 })).await;
    let edit = json!({ f.unmapped: f.unmapped_value });
    let rule = arm(w, crm_api(w.crm), &opportunity_path(w.crm, &opp), edit, 100).await;
    let audit = last_audit_id(w, &rid).await;
    let d = deliver(w, t, &rid).await;
    let what = format!("{:?} repeated PC → CRM, referral {rid}", w.crm);
    assert_eq!(d.dead, 1, "{what}: the engine gives up, bounded: {d:?}");
    check_writes(w, t, rule, ATTEMPTS, 0, &what).await;
    let record = w.record(w.names().opportunity, &opp).await;
    assert_eq!(
        number(record.get(f.value)),
        Some(50_000.0),
        "{what}: no write got through"
    );
    assert!(
        same(record.get(f.unmapped), &f.unmapped_value),
        "{what}: the seller's edit stands"
    );
    let trail = w
        .engine
        .store()
        .audit_trail(&rid, 100)
        .await
        .expect("audit");
    assert!(
        trail
            .iter()
            .any(|e| e.id > audit && e.outcome == "dead_letter" && e.message.contains("412")),
        "{what}: giving up is audited: {trail:#?}"
    );
    disarm(w).await;
    // Once the seller stops, the replay writes Microsoft's change next to the seller's edit.
    assert_eq!(w.engine.store().replay_all().await.expect("replay"), 1);
    let d = settle(w, t).await;
    assert_eq!(d.dead, 0, "{what}: the replay");
    sync(w, t).await;
    let record = w.record(w.names().opportunity, &opp).await;
    assert_eq!(
        number(record.get(f.value)),
        Some(73_000.0),
        "{what}: after the replay"
    );
    assert!(
        same(record.get(f.unmapped), &f.unmapped_value),
        "{what}: after the replay"
    );
    assert_eq!(
        number(w.referral(&rid).await["details"].get("dealValue")),
        Some(73_000.0),
        "{what}"
    );
}

/// Microsoft's change comes back on every retry of a CRM → PC write.
async fn repeated_crm_to_pc(w: &World, t: &mut Tally) {
    let f = fields(w.crm);
    let (rid, opp) = accepted(w, t, "Edits repeated CRM to PC").await;
    w.update_opportunity(&opp, json!({ f.notes: "Seller's notes v3" }))
        .await;
    let microsoft = json!({ "notes": "Microsoft's notes v3" });
    let rule = arm(
        w,
        "partner_center",
        &format!("/referrals/{rid}"),
        microsoft,
        100,
    )
    .await;
    let audit = last_audit_id(w, &rid).await;
    let d = poll(w, t).await;
    let what = format!("{:?} repeated CRM → PC, referral {rid}", w.crm);
    assert_eq!(d.dead, 1, "{what}: the engine gives up, bounded: {d:?}");
    // Each attempt: the PATCH with the eTag last seen, and one with a fresh read's.
    check_writes(w, t, rule, 2 * ATTEMPTS, 0, &what).await;
    assert_eq!(
        w.referral(&rid).await["details"]["notes"],
        json!("Microsoft's notes v3"),
        "{what}: never overwritten"
    );
    let trail = w
        .engine
        .store()
        .audit_trail(&rid, 100)
        .await
        .expect("audit");
    assert!(
        trail
            .iter()
            .any(|e| e.id > audit && e.outcome == "dead_letter"),
        "{what}: giving up is audited: {trail:#?}"
    );
    disarm(w).await;
    assert_eq!(w.engine.store().replay_all().await.expect("replay"), 1);
    let d = settle(w, t).await;
    assert_eq!(d.dead, 0, "{what}: the replay");
    sync(w, t).await;
    // The notes are the CRM's: the seller's text wins once Microsoft stops.
    assert_eq!(
        w.referral(&rid).await["details"]["notes"],
        json!("Seller's notes v3"),
        "{what}: after the replay"
    );
    let record = w.record(w.names().opportunity, &opp).await;
    assert_eq!(record[f.notes], json!("Seller's notes v3"), "{what}");
}

/// Opportunities per referral: (duplicates, lost).
async fn census(w: &World, referrals: &[String]) -> (u64, u64) {
    use futures_util::TryStreamExt as _;
    let n = w.names();
    let records: Vec<Map<String, Value>> = w
        .engine
        .crm()
        .changed_since(
            n.opportunity,
            &[n.opportunity_id, n.referral_key],
            "2000-01-01T00:00:00Z",
        )
        .expect("list opportunities")
        .try_collect()
        .await
        .expect("opportunities");
    let (mut duplicates, mut lost) = (0, 0);
    for rid in referrals {
        let count = records
            .iter()
            .filter(|r| r.get(n.referral_key) == Some(&json!(rid)))
            .count() as u64;
        duplicates += count.saturating_sub(1);
        lost += u64::from(count == 0);
    }
    assert_eq!(
        (duplicates, lost),
        (0, 0),
        "{:?}: opportunities per referral",
        w.crm
    );
    (duplicates, lost)
}
