//! What the sync sections (`faults`, `crashes`, `missed`) share: a sandbox in this
//! process, the real `cosell run` binary as a child process on a SQLite state file (so it
//! can be SIGKILLed for real), the work a scenario asks of it — referrals Microsoft
//! shares, opportunities sellers flag, edits on both sides, Microsoft accepting our
//! co-sells — and the one check that says whether everything arrived exactly once.
//!
//! The check never trusts the engine's own account: it reads both systems through their
//! APIs and the engine's store, and counts what exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cosell::config::model::CrmKind;
use cosell::connectors::partner_center::{PartnerCenterClient, ReferralQuery};
use cosell::engine::connect;
use cosell::engine::crm::Crm;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::store::Store;
use futures_util::TryStreamExt as _;
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

use super::backfill::{self, Names, incoming_referral, rows, shared_values, text};

/// Customers seeded in the CRM: about half of the referrals name one of them.
pub const ACCOUNTS: usize = 60;

/// How a scenario's engine is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `timeout_seconds` of both connections in the engine's mapping (a fault run makes
    /// hung calls time out quickly).
    pub timeout_seconds: Option<u32>,
}

/// One sandbox, one engine state file, and what the scenario asked for.
pub struct Scenario {
    pub rt: Runtime,
    pub sandbox: SandboxHandle,
    pub names: Names,
    /// The test's own clients (a person's edits, the final reads).
    pub crm: Crm,
    pub pc: PartnerCenterClient,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Logs of every engine start, for failure messages.
    logs: Vec<PathBuf>,
    store: OnceLock<Store>,
    rng: cosell::sandbox::Rng,
    /// The API faults a fault run switched on; the test's own calls (a person's edits,
    /// the checks) pause them, since they measure the engine, not the test's client.
    faults: Option<Value>,
    /// Referrals Microsoft shared (PC → CRM creates).
    pub incoming: BTreeSet<String>,
    /// Opportunities sellers flagged for co-sell (CRM → PC creates).
    pub flagged: BTreeSet<String>,
    /// Notes Microsoft last wrote on an incoming referral (PC → CRM updates).
    pub notes: BTreeMap<String, String>,
    /// Deal value a seller last wrote on a flagged opportunity (CRM → PC updates).
    pub deal_values: BTreeMap<String, f64>,
    /// Microsoft CRM ID Microsoft set on its side of a flagged opportunity's co-sell
    /// (related referral → CRM).
    pub msx_ids: BTreeMap<String, String>,
}

/// What [`Scenario::check`] found. Empty lists: converged.
#[derive(Debug, Default)]
pub struct Check {
    /// Things that exist more than once (records, referrals, customers, solutions).
    pub duplicates: Vec<String>,
    /// Things that never arrived: creates with no record, edits not applied.
    pub lost: Vec<String>,
    /// Inconsistencies that are neither (a link pointing elsewhere, a dead letter).
    pub broken: Vec<String>,
    /// Records and edits checked.
    pub checked: u64,
}

impl Check {
    /// Whether everything arrived exactly once and every link is consistent.
    pub fn converged(&self) -> bool {
        self.duplicates.is_empty() && self.lost.is_empty() && self.broken.is_empty()
    }

    /// A failure message naming the first few problems of each kind.
    pub fn describe(&self) -> String {
        let first = |items: &[String]| {
            let shown: Vec<&str> = items.iter().take(8).map(String::as_str).collect();
            format!("{} {:?}", items.len(), shown)
        };
        format!(
            "duplicates: {}; lost: {}; broken: {}",
            first(&self.duplicates),
            first(&self.lost),
            first(&self.broken)
        )
    }
}

impl Scenario {
    pub fn new(kind: CrmKind, label: &str, seed: u64, options: &Options) -> Scenario {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let names = backfill::names(kind);
        let sandbox = rt
            .block_on(sandbox::start(SandboxOptions::default()))
            .expect("sandbox");
        let (pc, crm) = connect::sandbox_clients(kind, sandbox.base_url(), None).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cosell-{label}-"))
            .disable_cleanup(std::env::var_os("COSELL_RELIABILITY_KEEP").is_some())
            .tempdir()
            .unwrap();
        let mut mapping = std::fs::read_to_string(names.mapping).expect("shipped mapping");
        if let Some(seconds) = options.timeout_seconds {
            // Both connections' `budget:` lines sit at the connection's indentation.
            mapping = mapping.replace(
                "\n    budget: {",
                &format!("\n    timeout_seconds: {seconds}\n    budget: {{"),
            );
        }
        let config = dir.path().join("mapping.yaml");
        std::fs::write(&config, mapping).unwrap();
        let scenario = Scenario {
            rt,
            sandbox,
            names,
            crm,
            pc,
            http: reqwest::Client::new(),
            dir,
            config,
            logs: Vec::new(),
            store: OnceLock::new(),
            rng: cosell::sandbox::Rng::new(seed),
            faults: None,
            incoming: BTreeSet::new(),
            flagged: BTreeSet::new(),
            notes: BTreeMap::new(),
            deal_values: BTreeMap::new(),
            msx_ids: BTreeMap::new(),
        };
        scenario.control(
            "/_sandbox/seed",
            &json!({ "referrals": 0, "accounts": ACCOUNTS }),
        );
        // The backfills are large: lift Dataverse's 5-minute quota (its 429s are the
        // point of the fault section, which injects them at a known rate instead).
        scenario.control(
            "/_sandbox/faults",
            &json!({ "quota": { "dataverse_requests_per_window": 1_000_000 } }),
        );
        scenario
    }

    pub fn base(&self) -> &str {
        self.sandbox.base_url()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// `POST` on the sandbox's control API; the JSON answer. Panics on an error status.
    pub fn control(&self, path: &str, body: &Value) -> Value {
        self.rt.block_on(async {
            let response = self
                .http
                .post(format!("{}{path}", self.base()))
                .json(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("control {path}: {e}"));
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "control {path}: {status} {body}");
            body
        })
    }

    /// Switches API faults on (`/_sandbox/faults` settings per API).
    pub fn set_faults(&mut self, on: Value) {
        self.control("/_sandbox/faults", &on);
        self.faults = Some(on);
    }

    /// Runs `f` with the API faults paused (they stay on for the engine otherwise).
    fn quiet<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(on) = &self.faults else {
            return f();
        };
        let off: serde_json::Map<String, Value> = on
            .as_object()
            .into_iter()
            .flatten()
            .map(|(api, _)| {
                let none = json!({ "errors": [], "reset_rate": 0.0, "timeout_rate": 0.0 });
                (api.clone(), none)
            })
            .collect();
        self.control("/_sandbox/faults", &Value::Object(off));
        let result = f();
        self.control("/_sandbox/faults", on);
        result
    }

    /// The sandbox's call counters (`GET /_sandbox/stats`).
    pub fn stats(&self) -> Value {
        self.rt.block_on(async {
            self.http
                .get(format!("{}/_sandbox/stats", self.base()))
                .send()
                .await
                .expect("stats")
                .json()
                .await
                .expect("stats JSON")
        })
    }

    /// `cosell run` against the sandbox with `args` added, output to a log file; killed
    /// when dropped (a failed check must not leave engines running).
    pub fn engine(&mut self, args: &[&str]) -> EngineProcess {
        let log = self
            .dir
            .path()
            .join(format!("engine-{}.log", self.logs.len()));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        self.logs.push(log);
        Command::new(env!("CARGO_BIN_EXE_cosell"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--sandbox-url", self.sandbox.base_url()])
            .arg("--state")
            .arg(format!("sqlite://{}", self.state_path().display()))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("COSELL_RELIABILITY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("COSELL_STATE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map(EngineProcess)
            .expect("starting cosell run")
    }

    /// `cosell run --once` to completion; panics unless it succeeds with nothing
    /// dead-lettered within `deadline`. Returns its summary line.
    pub fn run_once(&mut self, deadline: Duration) -> String {
        let mut child = self.engine(&["--once"]);
        let status = wait_with_deadline(&mut child, deadline).unwrap_or_else(|| {
            panic!(
                "`cosell run --once` did not finish in {deadline:?}\n{}",
                self.log_tail()
            )
        });
        let log = std::fs::read_to_string(self.logs.last().unwrap()).unwrap_or_default();
        assert!(
            status.success(),
            "`cosell run --once`: {status}\n{}",
            self.log_tail()
        );
        let summary = log
            .lines()
            .find(|l| l.starts_with("synced:"))
            .unwrap_or_default()
            .to_owned();
        assert!(summary.contains(" 0 dead-lettered"), "{log}");
        summary
    }

    /// The last lines of the last two engine logs.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for log in self.logs.iter().rev().take(2).rev() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", log.display()));
        }
        out
    }

    /// The engine's state store, opened for reading (SQLite in WAL mode lets this read run
    /// beside the engine's writes).
    pub fn store(&self) -> &Store {
        self.store.get_or_init(|| {
            self.rt
                .block_on(Store::open(&format!(
                    "sqlite://{}",
                    self.state_path().display()
                )))
                .expect("opening the state store")
        })
    }

    /// Links in the engine's store: a cheap progress gauge.
    pub fn links(&self) -> usize {
        let counts = self
            .rt
            .block_on(self.store().links_by_state())
            .unwrap_or_default();
        usize::try_from(counts.values().sum::<u64>()).unwrap_or(usize::MAX)
    }

    // -----------------------------------------------------------------------------------
    // What people do
    // -----------------------------------------------------------------------------------

    /// Microsoft shares `count` co-sell referrals with the partner; their ids.
    pub fn share(&mut self, count: usize) -> Vec<String> {
        let url = format!("{}/_sandbox/partner-center/referrals/incoming", self.base());
        let start = self.incoming.len();
        let bodies: Vec<Value> = (0..count)
            .map(|i| incoming_referral(start + i, 2 * ACCOUNTS, &mut self.rng))
            .collect();
        let ids: Vec<String> = self.rt.block_on(async {
            let mut ids = Vec::with_capacity(count);
            for body in bodies {
                let response = self.http.post(&url).json(&body).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert!(status.is_success(), "incoming referral: {status} {body}");
                ids.push(body["id"].as_str().unwrap().to_owned());
            }
            ids
        });
        self.incoming.extend(ids.iter().cloned());
        ids
    }

    /// Sellers flag `count` more opportunities for co-sell; their ids.
    pub fn flag(&mut self, count: usize) -> BTreeSet<String> {
        let before = self.quiet(|| self.sellers_flagged());
        let flagged = self.quiet(|| {
            self.rt
                .block_on(connect::flag_sandbox_opportunities(&self.crm, count))
                .expect("flagging opportunities")
        });
        assert_eq!(flagged, count, "opportunities flagged");
        let new: BTreeSet<String> = self
            .quiet(|| self.sellers_flagged())
            .difference(&before)
            .cloned()
            .collect();
        assert_eq!(new.len(), count, "newly flagged opportunities found");
        self.flagged.extend(new.iter().cloned());
        new
    }

    /// Opportunities with the sync flag on that did not come from an incoming referral
    /// (synced or not: the engine may sync one between two reads).
    fn sellers_flagged(&self) -> BTreeSet<String> {
        let (opportunities, id, key) = self.names.opportunity;
        let flag = self.names.sync_flag;
        self.rt
            .block_on(rows(&self.crm, opportunities, &[id, key, flag]))
            .iter()
            .filter(|row| row.get(flag) == Some(&json!(true)))
            .filter(|row| text(row, key).is_none_or(|rid| !self.incoming.contains(rid)))
            .filter_map(|row| text(row, id).map(str::to_owned))
            .collect()
    }

    /// Microsoft edits the notes of incoming referral `referral_id` (PC → CRM update).
    pub fn microsoft_notes(&mut self, referral_id: &str) {
        let notes = format!(
            "Microsoft update {} for {referral_id}",
            self.rng.string_from(b"abcdefghijklmnopqrstuvwxyz", 8)
        );
        self.control(
            &format!("/_sandbox/partner-center/referrals/{referral_id}/microsoft"),
            &json!({ "notes": notes }),
        );
        self.notes.insert(referral_id.to_owned(), notes);
    }

    /// A seller edits the deal value of flagged opportunity `opportunity` (CRM → PC
    /// update; an incoming referral's opportunity would not do: it is on hold until a
    /// seller accepts it, and edits on hold are not sent). False when the opportunity has
    /// no referral yet.
    pub fn seller_deal_value(&mut self, opportunity: &str) -> bool {
        let Some(ours) = self.quiet(|| self.our_referral_of(opportunity)) else {
            return false;
        };
        // Not while the engine is still finishing the referral's creation (Microsoft's
        // referral, the success marks written back): an edit in that window may not reach
        // Partner Center until the opportunity changes again — a known gap (README,
        // "Reliability"), seen on 2 of 50 opportunities under the fault mix.
        let creating = self
            .rt
            .block_on(self.store().link(&ours))
            .ok()
            .flatten()
            .is_none_or(|link| link.state == "syncing");
        if creating {
            return false;
        }
        let value = 1000.0 * (10 + self.rng.below(9_000)) as f64;
        let fields = json!({ self.names.deal_value: value });
        let (entity, _, _) = self.names.opportunity;
        self.quiet(|| {
            self.rt
                .block_on(
                    self.crm
                        .update(entity, opportunity, fields.as_object().unwrap(), None),
                )
                .unwrap_or_else(|e| panic!("seller edit of {entity} {opportunity}: {e}"))
        });
        self.deal_values.insert(opportunity.to_owned(), value);
        true
    }

    /// Microsoft accepts the co-sell of flagged opportunity `opportunity` and fills in its
    /// CRM ID (Microsoft's related referral → CRM). False when our referral does not
    /// exist yet.
    pub fn microsoft_accepts(&mut self, opportunity: &str) -> bool {
        let Some(ours) = self.quiet(|| self.our_referral_of(opportunity)) else {
            return false;
        };
        let msx = format!(
            "7-{}",
            self.rng.string_from(b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789", 9)
        );
        self.control(
            &format!("/_sandbox/partner-center/referrals/{ours}/microsoft"),
            &json!({ "status": "Active", "substatus": "Accepted", "microsoftMsxId": msx }),
        );
        self.msx_ids.insert(opportunity.to_owned(), msx);
        true
    }

    /// Our (not Microsoft's) referral of flagged opportunity `opportunity`.
    fn our_referral_of(&self, opportunity: &str) -> Option<String> {
        let query = ReferralQuery {
            filter: Some(format!("externalReferenceId eq '{opportunity}'")),
            ..Default::default()
        };
        let found: Vec<_> = self
            .rt
            .block_on(self.pc.list_referrals(query).try_collect::<Vec<_>>())
            .expect("listing referrals");
        found
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .find(|r| !to_microsoft(r) && r["organizationId"] != "msft")
            .and_then(|r| r["id"].as_str().map(str::to_owned))
    }

    /// Every referral in Partner Center, as JSON.
    pub fn referrals(&self) -> Vec<Value> {
        let list: Vec<_> = self
            .rt
            .block_on(
                self.pc
                    .list_referrals(ReferralQuery::default())
                    .try_collect::<Vec<_>>(),
            )
            .expect("listing referrals");
        list.into_iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    // -----------------------------------------------------------------------------------
    // The check
    // -----------------------------------------------------------------------------------

    /// Everything the scenario asked for, read back from both systems and the store:
    /// every referral synced exactly once, every edit applied, every link consistent.
    pub fn check(&self) -> Check {
        self.quiet(|| self.check_now())
    }

    fn check_now(&self) -> Check {
        let mut check = Check::default();
        let names = &self.names;
        let (opp_entity, opp_id, opp_key) = names.opportunity;
        let opportunities = self.rt.block_on(rows(
            &self.crm,
            opp_entity,
            &[opp_id, opp_key, names.deal_value, names.notes, names.msx_id],
        ));
        let by_opportunity: HashMap<&str, &Map<String, Value>> = opportunities
            .iter()
            .filter_map(|row| Some((text(row, opp_id)?, row)))
            .collect();
        let referrals = self.referrals();
        let by_id: HashMap<&str, &Value> = referrals
            .iter()
            .filter_map(|r| Some((r["id"].as_str()?, r)))
            .collect();

        // CRM: one record per referral id.
        let mut records_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for row in &opportunities {
            if let (Some(id), Some(rid)) = (text(row, opp_id), text(row, opp_key)) {
                records_of.entry(rid).or_default().push(id);
            }
        }
        for (rid, ids) in &records_of {
            if ids.len() > 1 {
                check.duplicates.push(format!(
                    "referral {rid} has {} {opp_entity}: {ids:?}",
                    ids.len()
                ));
            }
        }

        // PC → CRM creates: a record, named back by the referral, linked both ways.
        let store = self.store();
        for rid in &self.incoming {
            check.checked += 1;
            let Some(crm_id) = records_of.get(rid.as_str()).map(|ids| ids[0]) else {
                check
                    .lost
                    .push(format!("referral {rid} has no {opp_entity}"));
                continue;
            };
            match by_id.get(rid.as_str()) {
                None => check.lost.push(format!("referral {rid} is gone")),
                Some(referral) if referral["externalReferenceId"].as_str() != Some(crm_id) => {
                    check.lost.push(format!(
                        "referral {rid}: externalReferenceId {} instead of {crm_id}",
                        referral["externalReferenceId"]
                    ))
                }
                Some(_) => {}
            }
            match self.rt.block_on(store.link(rid)) {
                Ok(Some(link)) if link.crm_id.as_deref() == Some(crm_id) => {
                    let back = self
                        .rt
                        .block_on(store.link_by_crm(&link.entity, crm_id))
                        .ok()
                        .flatten()
                        .map(|l| l.referral_id);
                    if back.as_deref() != Some(rid.as_str()) {
                        check.broken.push(format!(
                            "{opp_entity} {crm_id} links back to {back:?}, not {rid}"
                        ));
                    }
                }
                Ok(Some(link)) => check.broken.push(format!(
                    "link of {rid} names {:?}, the CRM has {crm_id}",
                    link.crm_id
                )),
                Ok(None) => check.lost.push(format!("referral {rid} has no link")),
                Err(error) => check
                    .broken
                    .push(format!("reading the link of {rid}: {error}")),
            }
        }

        // CRM → PC creates: exactly one referral of ours and one for Microsoft per flagged
        // opportunity, on one engagement, and the opportunity names ours.
        let mut ours: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        let mut for_microsoft: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        let mut microsofts_side: BTreeMap<&str, usize> = BTreeMap::new();
        for referral in &referrals {
            let id = referral["id"].as_str().unwrap_or_default();
            if referral["organizationId"] == "msft" && !self.incoming.contains(id) {
                if let Some(engagement) = referral["engagementId"].as_str() {
                    *microsofts_side.entry(engagement).or_default() += 1;
                }
                continue;
            }
            let Some(external) = referral["externalReferenceId"].as_str() else {
                continue;
            };
            if !self.flagged.contains(external) {
                continue;
            }
            let side = if to_microsoft(referral) {
                &mut for_microsoft
            } else {
                &mut ours
            };
            side.entry(external).or_default().push(referral);
        }
        for (engagement, n) in &microsofts_side {
            if *n > 1 {
                check.duplicates.push(format!(
                    "engagement {engagement} has {n} referrals of Microsoft's side"
                ));
            }
        }
        for opportunity in &self.flagged {
            check.checked += 1;
            let mine = ours
                .get(opportunity.as_str())
                .map_or(&[][..], Vec::as_slice);
            let theirs = for_microsoft
                .get(opportunity.as_str())
                .map_or(&[][..], Vec::as_slice);
            match mine.len() {
                0 => check.lost.push(format!(
                    "flagged {opp_entity} {opportunity} has no referral"
                )),
                1 => {}
                n => check.duplicates.push(format!(
                    "flagged {opp_entity} {opportunity} has {n} referrals of ours"
                )),
            }
            match theirs.len() {
                0 => check.lost.push(format!(
                    "flagged {opp_entity} {opportunity} has no referral for Microsoft"
                )),
                1 => {}
                n => check.duplicates.push(format!(
                    "flagged {opp_entity} {opportunity} has {n} referrals for Microsoft"
                )),
            }
            if let (Some(mine), Some(theirs)) = (mine.first(), theirs.first()) {
                if mine["engagementId"] != theirs["engagementId"] {
                    check.broken.push(format!(
                        "{opp_entity} {opportunity}: Microsoft's referral is on another engagement"
                    ));
                }
                let rid = mine["id"].as_str().unwrap_or_default();
                let named = records_of.get(rid).cloned().unwrap_or_default();
                if named != [opportunity.as_str()] {
                    check.broken.push(format!(
                        "referral {rid} of {opp_entity} {opportunity} is named by {named:?}"
                    ));
                }
            }
        }
        // No CRM record follows a referral nobody asked for (Microsoft's side of a co-sell
        // taken for a new referral would show up here).
        let known: BTreeSet<&str> = self
            .incoming
            .iter()
            .map(String::as_str)
            .chain(ours.values().flatten().filter_map(|r| r["id"].as_str()))
            .collect();
        for (rid, ids) in &records_of {
            if !known.contains(rid) {
                check.duplicates.push(format!(
                    "{opp_entity} {ids:?} follows referral {rid}, which no one shared or created"
                ));
            }
        }
        let expected = self.incoming.len() + 2 * self.flagged.len() + self.msx_ids.len();
        if referrals.len() > expected {
            check.duplicates.push(format!(
                "{} referrals in Partner Center, {expected} expected",
                referrals.len()
            ));
        }

        // Solutions of the incoming referrals' opportunities: each once.
        let (sol_entity, sol_id, sol_parent, sol_key) = names.solutions;
        let mut solutions: BTreeMap<String, usize> = BTreeMap::new();
        for row in self
            .rt
            .block_on(rows(&self.crm, sol_entity, &[sol_id, sol_parent, sol_key]))
        {
            if let Some(parent) = text(&row, sol_parent) {
                *solutions.entry(parent.to_owned()).or_default() += 1;
            }
        }
        for rid in &self.incoming {
            let (Some(ids), Some(referral)) =
                (records_of.get(rid.as_str()), by_id.get(rid.as_str()))
            else {
                continue;
            };
            let wanted = referral["details"]["requirements"]["solutions"]
                .as_array()
                .map_or(0, Vec::len);
            let have = solutions.get(ids[0]).copied().unwrap_or(0);
            if have > wanted {
                check.duplicates.push(format!(
                    "{sol_entity} of referral {rid}: {have}, {wanted} expected"
                ));
            } else if have < wanted {
                check.lost.push(format!(
                    "{sol_entity} of referral {rid}: {have}, {wanted} expected"
                ));
            }
        }

        // Customers the lookups found or created: each once.
        let (acc_entity, acc_id, acc_name, acc_postal) = names.accounts;
        for (values, n) in shared_values(
            &self.rt,
            &self.crm,
            acc_entity,
            &[acc_id, acc_name, acc_postal],
        ) {
            check
                .duplicates
                .push(format!("{acc_entity} {values:?} exists {n} times"));
        }
        let (con_entity, con_id, con_email) = names.contacts;
        for (values, n) in shared_values(&self.rt, &self.crm, con_entity, &[con_id, con_email]) {
            check
                .duplicates
                .push(format!("{con_entity} {values:?} exists {n} times"));
        }

        // Edits: Microsoft's notes reached the CRM, sellers' deal values reached Partner
        // Center (and stayed in the CRM), Microsoft's CRM IDs reached the opportunity.
        for (rid, notes) in &self.notes {
            check.checked += 1;
            let have = records_of
                .get(rid.as_str())
                .and_then(|ids| by_opportunity.get(ids[0]))
                .and_then(|row| text(row, names.notes));
            if have != Some(notes.as_str()) {
                check.lost.push(format!(
                    "Microsoft's notes on {rid} did not reach the CRM ({have:?})"
                ));
            }
        }
        for (opportunity, value) in &self.deal_values {
            check.checked += 1;
            let in_pc = ours
                .get(opportunity.as_str())
                .and_then(|mine| mine.first())
                .and_then(|r| r["details"]["dealValue"].as_f64());
            let in_crm = by_opportunity
                .get(opportunity.as_str())
                .and_then(|row| row.get(names.deal_value))
                .and_then(Value::as_f64);
            if in_pc != Some(*value) || in_crm != Some(*value) {
                check.lost.push(format!(
                    "a seller's deal value {value} on {opp_entity} {opportunity}: Partner \
                     Center has {in_pc:?}, the CRM {in_crm:?}"
                ));
            }
        }
        for (opportunity, msx) in &self.msx_ids {
            check.checked += 1;
            let have = by_opportunity
                .get(opportunity.as_str())
                .and_then(|row| text(row, names.msx_id));
            if have != Some(msx.as_str()) {
                check.lost.push(format!(
                    "Microsoft's CRM ID {msx} did not reach {opp_entity} {opportunity} ({have:?})"
                ));
            }
        }

        match self.rt.block_on(store.inbox_stats()) {
            Ok(stats) if stats.dead_letters > 0 => check
                .broken
                .push(format!("{} dead letter(s)", stats.dead_letters)),
            Ok(_) => {}
            Err(error) => check.broken.push(format!("inbox stats: {error}")),
        }
        check
    }

    /// [`Scenario::check`], panicking with the problems and the engine's log tail unless
    /// everything converged.
    pub fn assert_converged(&self, what: &str) -> Check {
        let check = self.check();
        assert!(
            check.converged(),
            "{what}: {}\n{}",
            check.describe(),
            self.log_tail()
        );
        check
    }
}

/// Whether a referral is the one we create for Microsoft (target: Microsoft's business
/// profile location).
fn to_microsoft(referral: &Value) -> bool {
    referral["target"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["type"] == "BusinessProfileLocation"))
}

/// A `cosell run` child process, SIGKILLed when dropped.
pub struct EngineProcess(Child);

impl std::ops::Deref for EngineProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for EngineProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGKILL (std's `Child::kill` on Unix: no handler runs, no buffer is flushed).
pub fn kill(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    child.wait().expect("reaping the killed engine")
}

/// Waits for `child` to exit; kills it and returns `None` after `deadline`.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > until {
            kill(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both CRMs, in the order the sections run them.
pub const CRMS: [CrmKind; 2] = [CrmKind::Dynamics365, CrmKind::Salesforce];
