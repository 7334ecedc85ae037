//! Crash safety (design §6), the acceptance test: the `cosell` engine process is killed with
//! SIGKILL at random points of a 500-referral backfill (plus CRM opportunities flagged for
//! co-sell, the other direction), restarted each time, then run `--once` to completion. Every
//! referral must end up synced exactly once, in the CRM and in Partner Center, and nothing
//! may be dead-lettered.
//!
//! The sandbox runs in this process; only the engine is a child process (the binary, as a
//! user runs it), so it can be killed for real. Kill delays come from a seeded generator:
//! the seed is printed, and `COSELL_CRASH_SEED=<n>` replays a run's schedule (the timing of
//! the engine itself still varies). `COSELL_CRASH_KILLS=<n>` changes the number of kills,
//! `COSELL_CRASH_LOG=<filter>` the engine's log level (`warn`); a failure shows the logs'
//! tails, and `COSELL_CRASH_KEEP=1` keeps them (and the state file) in the printed directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cosell::config::model::CrmKind;
use cosell::connectors::partner_center::ReferralQuery;
use cosell::engine::connect;
use cosell::engine::crm::Crm;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::store::Store;
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

#[path = "common/backfill.rs"]
mod backfill;
mod common;
use backfill::{SplitMix, calls, incoming_referral, names, rows, shared_values, text};

/// Incoming referrals Microsoft shares before the engine's first start.
const REFERRALS: usize = 500;
/// CRM opportunities a seller flags for co-sell (CRM → Partner Center).
const FLAGGED: usize = 20;
/// Customers (accounts, contacts, opportunities) seeded in the CRM; about half of the
/// referrals name one of them, the others bring a new customer.
const ACCOUNTS: usize = 60;
/// SIGKILLs during the backfill (`COSELL_CRASH_KILLS` overrides).
const KILLS: usize = 6;
/// Kill delay after a start, in milliseconds (uniform in this range).
const KILL_AFTER_MS: std::ops::Range<u64> = 100..1500;
/// How long a restarted engine may take to reach its kill point before the test calls it
/// stuck.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);
/// How long the final `--once` run may take before the test gives up.
const ONCE_DEADLINE: Duration = Duration::from_secs(180);

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The world the engine process works against.
struct World {
    rt: Runtime,
    sandbox: SandboxHandle,
    names: backfill::Names,
    crm: Crm,
    pc: cosell::connectors::partner_center::PartnerCenterClient,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Logs of every engine start, for failure messages.
    logs: Vec<PathBuf>,
    /// The engine's state store, opened by the test for reading.
    store: std::sync::OnceLock<Store>,
}

impl World {
    fn new(crm_kind: CrmKind) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let names = names(crm_kind);
        let sandbox = rt
            .block_on(sandbox::start(SandboxOptions::default()))
            .unwrap();
        let (pc, crm) = connect::sandbox_clients(crm_kind, sandbox.base_url(), None).unwrap();
        let config = std::fs::canonicalize(names.mapping).unwrap();
        World {
            rt,
            sandbox,
            names,
            crm,
            pc,
            dir: tempfile::Builder::new()
                .prefix("cosell-crash-")
                .disable_cleanup(std::env::var_os("COSELL_CRASH_KEEP").is_some())
                .tempdir()
                .unwrap(),
            config,
            logs: Vec::new(),
            store: std::sync::OnceLock::new(),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// `cosell run` against the sandbox, output to a log file.
    fn engine(&mut self, once: bool) -> Child {
        let log = self
            .dir
            .path()
            .join(format!("engine-{}.log", self.logs.len()));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        self.logs.push(log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_cosell"));
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--sandbox-url", self.sandbox.base_url()])
            .arg("--state")
            .arg(format!("sqlite://{}", self.state_path().display()))
            .args(["--listen", "127.0.0.1:0"])
            .env(
                "RUST_LOG",
                std::env::var("COSELL_CRASH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("COSELL_STATE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if once {
            command.arg("--once");
        }
        command.spawn().expect("starting cosell run")
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for log in self.logs.iter().rev().take(2).rev() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", log.display()));
        }
        out
    }

    /// The engine's state store, opened for reading.
    fn store(&self) -> &Store {
        self.store.get_or_init(|| {
            self.rt
                .block_on(Store::open(&format!(
                    "sqlite://{}",
                    self.state_path().display()
                )))
                .expect("opening the state store")
        })
    }

    /// Links in the engine's state store (a cheap progress gauge: SQLite in WAL mode lets
    /// this read run beside the engine's writes).
    fn links(&self) -> usize {
        let counts = self
            .rt
            .block_on(self.store().links_by_state())
            .unwrap_or_default();
        usize::try_from(counts.values().sum::<u64>()).unwrap_or(usize::MAX)
    }

    /// CRM opportunities carrying a referral id: (entity, record id, referral id).
    fn crm_records(&self) -> Vec<(&'static str, String, String)> {
        let (entity, id_field, key) = self.names.opportunity;
        self.rt
            .block_on(rows(&self.crm, entity, &[id_field, key]))
            .iter()
            .filter_map(|row| {
                Some((
                    entity,
                    text(row, id_field)?.to_owned(),
                    text(row, key)?.to_owned(),
                ))
            })
            .collect()
    }

    /// Opportunities flagged for co-sell and not synced yet: (id, flag) rows.
    fn flagged_unsynced(&self) -> BTreeSet<String> {
        let (opportunities, id, key) = self.names.opportunity;
        let flag = self.names.sync_flag;
        self.rt
            .block_on(rows(&self.crm, opportunities, &[id, key, flag]))
            .iter()
            .filter(|row| row.get(flag) == Some(&json!(true)) && text(row, key).is_none())
            .filter_map(|row| text(row, id).map(str::to_owned))
            .collect()
    }

    /// Whether every flagged opportunity has its referral (so flagging more cannot pick an
    /// already flagged one again: the helper selects opportunities without a referral).
    fn flagged_all_synced(&self) -> bool {
        self.flagged_unsynced().is_empty()
    }

    /// Flags `count` more opportunities for co-sell, as a seller would; their ids.
    fn flag(&self, count: usize) -> BTreeSet<String> {
        let before = self.flagged_unsynced();
        let flagged = self
            .rt
            .block_on(connect::flag_sandbox_opportunities(&self.crm, count))
            .expect("flagging opportunities");
        assert_eq!(flagged, count, "opportunities flagged");
        let new: BTreeSet<String> = self
            .flagged_unsynced()
            .difference(&before)
            .cloned()
            .collect();
        assert_eq!(new.len(), count, "newly flagged opportunities found");
        new
    }

    /// Every referral in Partner Center, as JSON.
    fn referrals(&self) -> Vec<Value> {
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
}

fn kill(child: &mut Child) -> ExitStatus {
    // std's `Child::kill` is SIGKILL on Unix: no handler runs, no buffer is flushed.
    let _ = child.kill();
    child.wait().expect("reaping the killed engine")
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
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

fn crash_test(crm_kind: CrmKind) {
    // One crash test at a time: two 500-referral backfills side by side on a small machine
    // would mostly measure each other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let seed = env_number("COSELL_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let kills = env_number("COSELL_CRASH_KILLS").map_or(KILLS, |n| n as usize);
    println!("engine_crash {crm_kind:?}: seed {seed} (COSELL_CRASH_SEED={seed} replays it)");
    let mut rng = SplitMix(seed);
    let mut world = World::new(crm_kind);
    let base = world.sandbox.base_url().to_owned();
    println!(
        "engine_crash {crm_kind:?}: logs and state in {}",
        world.dir.path().display()
    );

    // 1. The backlog: referrals waiting in Partner Center, customers and opportunities in
    //    the CRM, some of them flagged for co-sell by a seller.
    let (status, body) = world.rt.block_on(common::control(
        &base,
        "/_sandbox/seed",
        &json!({ "referrals": 0, "accounts": ACCOUNTS }),
    ));
    assert!(status.is_success(), "seeding: {status} {body}");
    // Half of the flagged opportunities now, half in the middle of the backfill, so kills
    // have two chances to land among CRM → Partner Center creates.
    let mut flagged_ids = world.flag(FLAGGED / 2);
    let mut data_rng = cosell::sandbox::Rng::new(seed);
    let incoming: BTreeSet<String> = world.rt.block_on(async {
        // One client for all (a client per call, as `common::control` makes, costs more
        // than the call itself).
        let client = reqwest::Client::new();
        let url = format!("{base}/_sandbox/partner-center/referrals/incoming");
        let mut ids = BTreeSet::new();
        for index in 0..REFERRALS {
            let body = incoming_referral(index, 2 * ACCOUNTS, &mut data_rng);
            let response = client.post(&url).json(&body).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "incoming referral: {status} {body}");
            ids.insert(body["id"].as_str().unwrap().to_owned());
        }
        ids
    });
    assert_eq!(incoming.len(), REFERRALS, "seeded referrals");
    let (opportunities, _, _) = world.names.opportunity;

    // 2. Start, let it work a random while, SIGKILL; again and again. Each kill waits for
    //    a random delay and for the backfill to pass a random point of its own slice of the
    //    backlog, so the kills spread over the whole backfill instead of bunching up early.
    let mut progress = Vec::new();
    let slice = (REFERRALS * 9 / 10) as u64 / kills.max(1) as u64;
    for round in 0..kills {
        if flagged_ids.len() < FLAGGED && round >= kills / 2 && world.flagged_all_synced() {
            let more = world.flag(FLAGGED - flagged_ids.len());
            println!("{} more opportunities flagged for co-sell", more.len());
            flagged_ids.extend(more);
        }
        let target = usize::try_from(slice * round as u64 + rng.in_range(0..slice.max(1)))
            .unwrap_or(usize::MAX);
        let delay = Duration::from_millis(rng.in_range(KILL_AFTER_MS.clone()));
        let mut child = world.engine(false);
        let start = Instant::now();
        std::thread::sleep(delay);
        let mut linked = world.links();
        while linked < target && start.elapsed() < PROGRESS_DEADLINE {
            std::thread::sleep(Duration::from_millis(50));
            linked = world.links();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the engine exited by itself ({status}) before kill {}\n{}",
                round + 1,
                world.log_tail()
            );
        }
        kill(&mut child);
        let after = start.elapsed();
        assert!(
            linked >= target,
            "no progress after restart {round}: {linked} link(s) after {after:?}, wanted \
             {target}\n{}",
            world.log_tail()
        );
        let linked = world.crm_records().len();
        println!(
            "kill {} after {} ms: {linked} CRM record(s) linked",
            round + 1,
            after.as_millis()
        );
        progress.push(linked);
    }

    if flagged_ids.len() < FLAGGED {
        let more = world.flag(FLAGGED - flagged_ids.len());
        flagged_ids.extend(more);
    }
    assert_eq!(flagged_ids.len(), FLAGGED, "opportunities flagged");

    // 3. Restart once more and run to completion.
    let backfill = started.elapsed();
    let mut child = world.engine(true);
    let status = wait_with_deadline(&mut child, ONCE_DEADLINE);
    let once = started.elapsed() - backfill;
    let log = std::fs::read_to_string(world.logs.last().unwrap()).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "`cosell run --once` did not finish in {ONCE_DEADLINE:?}\n{}",
            world.log_tail()
        )
    });
    assert!(
        status.success(),
        "`cosell run --once` after the kills: {status}\n{}",
        world.log_tail()
    );
    assert!(log.contains("0 dead-lettered"), "{log}");

    // 4. Exactly once, everywhere.
    let records = world.crm_records();
    let referrals = world.referrals();
    let by_id: HashMap<&str, &Value> = referrals
        .iter()
        .filter_map(|r| r["id"].as_str().map(|id| (id, r)))
        .collect();

    // CRM: one record per referral id, none missing, none twice.
    let mut records_of: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (entity, id, rid) in &records {
        records_of
            .entry(rid.as_str())
            .or_default()
            .push((entity, id.as_str()));
    }
    let duplicated: Vec<_> = records_of.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "referrals with more than one CRM record: {duplicated:?}"
    );
    let missing: Vec<&String> = incoming
        .iter()
        .filter(|rid| !records_of.contains_key(rid.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {REFERRALS} referrals have no CRM record: {missing:?}\n{}",
        missing.len(),
        world.log_tail()
    );

    // Partner Center: each incoming referral names its CRM record.
    for rid in &incoming {
        let (_, crm_id) = records_of[rid.as_str()][0];
        let referral = by_id
            .get(rid.as_str())
            .unwrap_or_else(|| panic!("referral {rid} is gone"));
        assert_eq!(
            referral["externalReferenceId"].as_str(),
            Some(crm_id),
            "externalReferenceId of referral {rid}"
        );
    }

    // CRM → Partner Center: each flagged opportunity became exactly one referral of ours
    // (plus Microsoft's on the same engagement), and the opportunity names it.
    let mut ours: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    let mut microsoft: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for referral in &referrals {
        let Some(external) = referral["externalReferenceId"].as_str() else {
            continue;
        };
        if !flagged_ids.contains(external) {
            continue;
        }
        let to_microsoft = referral["target"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["type"] == "BusinessProfileLocation"));
        let side = if to_microsoft {
            &mut microsoft
        } else {
            &mut ours
        };
        side.entry(external).or_default().push(referral);
    }
    for opp in &flagged_ids {
        let mine = ours.get(opp.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            mine.len(),
            1,
            "referrals of flagged opportunity {opp}: {:?}",
            mine.iter().map(|r| &r["id"]).collect::<Vec<_>>()
        );
        let rid = mine[0]["id"].as_str().unwrap();
        assert!(
            !incoming.contains(rid),
            "flagged opportunity {opp} adopted an incoming referral"
        );
        let linked: Vec<_> = records_of.get(rid).cloned().unwrap_or_default();
        assert_eq!(
            linked,
            vec![(opportunities, opp.as_str())],
            "the CRM records naming referral {rid} of opportunity {opp}"
        );
        let theirs = microsoft.get(opp.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            theirs.len(),
            1,
            "Microsoft's referrals for opportunity {opp}: {:?}",
            theirs.iter().map(|r| &r["id"]).collect::<Vec<_>>()
        );
        assert_eq!(
            theirs[0]["engagementId"], mine[0]["engagementId"],
            "Microsoft's referral of opportunity {opp} is on our engagement"
        );
    }
    // Nothing else was created in Partner Center.
    assert_eq!(
        referrals.len(),
        REFERRALS + 2 * FLAGGED,
        "referrals in Partner Center"
    );

    // Solutions of the referrals' opportunities (the seeded opportunities have their own).
    let (sol_entity, sol_id, sol_parent, sol_key) = world.names.solutions;
    let mut solutions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for row in world
        .rt
        .block_on(rows(&world.crm, sol_entity, &[sol_id, sol_parent, sol_key]))
    {
        if let (Some(parent), Some(key)) = (text(&row, sol_parent), text(&row, sol_key)) {
            *solutions
                .entry((parent.to_owned(), key.to_owned()))
                .or_default() += 1;
        }
    }
    for rid in &incoming {
        let (entity, crm_id) = records_of[rid.as_str()][0];
        let wanted = by_id[rid.as_str()]["details"]["requirements"]["solutions"]
            .as_array()
            .map_or(0, Vec::len);
        // One record per solution: none missing, none written twice.
        let have: usize = solutions
            .iter()
            .filter(|((parent, _), _)| parent == crm_id)
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(
            have, wanted,
            "solutions of {entity} {crm_id} (referral {rid})"
        );
    }

    // Customers the lookups found or created: each once (a create repeated after a crash
    // would show up as a second account or contact with the same match values).
    let (acc_entity, acc_id, acc_name, acc_postal) = world.names.accounts;
    let twice = shared_values(
        &world.rt,
        &world.crm,
        acc_entity,
        &[acc_id, acc_name, acc_postal],
    );
    assert!(twice.is_empty(), "accounts created twice: {twice:?}");
    let (con_entity, con_id, con_email) = world.names.contacts;
    let twice = shared_values(&world.rt, &world.crm, con_entity, &[con_id, con_email]);
    assert!(twice.is_empty(), "contacts created twice: {twice:?}");

    // The sandbox's call counters: every create happened once — a create that a kill cut
    // off after it reached the service counts too, and must not have been repeated.
    let stats: Value = world.rt.block_on(async {
        reqwest::get(format!("{base}/_sandbox/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let success = |status: &str| status.starts_with('2');
    assert_eq!(
        calls(
            &stats,
            "partner_center",
            "POST /v1.0/engagements/referrals",
            success
        ),
        2 * FLAGGED as u64,
        "referral creates (ours and Microsoft's per flagged opportunity)"
    );
    // The CRM side is written in batches (a referral's account, contact, opportunity and
    // solutions are one `$batch` change set / one Composite call), which per-endpoint
    // counters see as one call each; the record counts above — exactly one opportunity per
    // referral, exactly its solutions, no account or contact twice — are the proof there.

    // The store: no dead letters, every referral linked once.
    let store = world.store();
    let stats = world.rt.block_on(store.inbox_stats()).unwrap();
    assert_eq!(stats.dead_letters, 0, "dead letters: {stats:?}");
    for rid in &incoming {
        let (entity, crm_id) = records_of[rid.as_str()][0];
        let link = world
            .rt
            .block_on(store.link(rid))
            .unwrap()
            .unwrap_or_else(|| panic!("no link for referral {rid}"));
        assert_eq!(link.crm_id.as_deref(), Some(crm_id), "link of {rid}");
        assert_eq!(
            world
                .rt
                .block_on(store.link_by_crm(&link.entity, crm_id))
                .unwrap()
                .map(|l| l.referral_id),
            Some(rid.clone()),
            "{entity} {crm_id} links back to {rid}"
        );
    }

    println!(
        "engine_crash {crm_kind:?}: {kills} kill(s) at {progress:?} linked CRM records; \
         {REFERRALS} referrals and {FLAGGED} flagged opportunities synced exactly once; \
         {:.1} s (setup and kills {:.1} s, --once {:.1} s)",
        started.elapsed().as_secs_f64(),
        backfill.as_secs_f64(),
        once.as_secs_f64(),
    );
}

#[test]
fn dynamics_backfill_survives_sigkill() {
    crash_test(CrmKind::Dynamics365);
}

#[test]
fn salesforce_backfill_survives_sigkill() {
    crash_test(CrmKind::Salesforce);
}
