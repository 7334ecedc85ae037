//! Scale-out (design §6, several instances on one PostgreSQL store), the acceptance test:
//! three `cosell run` processes share one PostgreSQL pipeline and back-fill 3 000 incoming
//! referrals from the sandbox, half of them for customers the CRM does not have yet (so the
//! instances race to create the same new accounts and contacts). The instance that leads
//! the pollers is SIGKILLed mid-run and restarted under its name. Then:
//! - every referral has exactly one CRM opportunity with its solutions, names it in
//!   Partner Center, and is linked once in the store; no customer exists twice;
//! - Partner Center saw exactly one successful write per referral (no write made twice);
//! - nothing was dead-lettered;
//! - the pollers (reconcile, CRM poll) never ran on two instances at once: their runs, as
//!   recorded in the store, do not overlap across instances (a run cut short by the kill
//!   ends at the kill), and the leadership moved when the leader died.
//!
//! Webhooks reach the instances through a round-robin TCP balancer (as a Kubernetes Service
//! would), registered as the mapping's `connections.webhooks.public_url`.
//!
//! PostgreSQL is reached at `COSELL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each run works in a schema of its own.
//! `COSELL_SCALE_REFERRALS` changes the backlog, `COSELL_SCALE_LOG` the engines' log filter,
//! `COSELL_SCALE_KEEP=1` keeps the logs. The ignored `scale_out_throughput` test measures 1 vs
//! 3 instances with 50 ms of sandbox latency per call (BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosell::config::model::CrmKind;
use cosell::connectors::partner_center::{PartnerCenterClient, ReferralQuery};
use cosell::engine::connect;
use cosell::engine::crm::Crm;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::store::{PollerRun, Store};
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

#[path = "common/backfill.rs"]
mod backfill;
mod common;
use backfill::{Names, incoming_referral, names, rows, shared_values, text};
use common::{free_port, postgres_admin, postgres_base_url};

/// Referrals Microsoft shares before the instances start (`COSELL_SCALE_REFERRALS`).
const REFERRALS: usize = 3000;
/// Customers seeded in the CRM; referrals name one of twice as many companies, so about
/// half bring a customer that must be created — once, whichever instance gets there first.
const ACCOUNTS: usize = 60;
/// The pipeline the instances share (not `default`: the pipeline key is what isolates it).
const PIPELINE: &str = "scale-test";
/// How long the backfill may take before the test calls it stuck.
const DEADLINE: Duration = Duration::from_secs(900);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A round-robin TCP balancer in front of `backends`, skipping those that refuse (a killed
/// instance): what a Kubernetes Service does for the webhook. Returns its port.
async fn balancer(backends: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            let first = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let backend = backends[(first + i) % backends.len()];
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// One engine instance: its name, port and (while it runs) process.
struct Instance {
    name: String,
    port: u16,
    child: Option<Child>,
    /// When the test killed it (unix ms), each time.
    killed_at: Vec<i64>,
}

/// The sandbox, the shared PostgreSQL pipeline and the instances working on it.
struct Cluster {
    rt: Runtime,
    sandbox: SandboxHandle,
    names: Names,
    crm: Crm,
    pc: PartnerCenterClient,
    dir: tempfile::TempDir,
    config: PathBuf,
    state_url: String,
    schema: String,
    store: Store,
    instances: Vec<Instance>,
    logs: Vec<PathBuf>,
    concurrency: usize,
}

impl Cluster {
    fn new(crm_kind: CrmKind, instances: usize, latency: Duration, concurrency: usize) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let names = names(crm_kind);
        let sandbox = rt
            .block_on(sandbox::start(SandboxOptions {
                latency,
                ..SandboxOptions::default()
            }))
            .unwrap();
        let (pc, crm) = connect::sandbox_clients(crm_kind, sandbox.base_url(), None).unwrap();
        // Dataverse's service protection (6 000 requests per 5 minutes per user, which the
        // sandbox enforces) caps a backfill at about 7 referrals/s whatever the number of
        // instances: the engine waits out its Retry-After correctly, but this test is about
        // the instances, so the quota is lifted (BENCHMARKS.md states the bound).
        let (status, body) = rt.block_on(common::control(
            sandbox.base_url(),
            "/_sandbox/faults",
            &json!({ "quota": { "dataverse_requests_per_window": 1_000_000 } }),
        ));
        assert!(
            status.is_success(),
            "lifting the Dataverse quota: {status} {body}"
        );
        let dir = tempfile::Builder::new()
            .prefix("cosell-scale-")
            .disable_cleanup(std::env::var_os("COSELL_SCALE_KEEP").is_some())
            .tempdir()
            .unwrap();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let schema = format!(
            "cosell_scale_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            now_ms().rem_euclid(1_000_000)
        );
        rt.block_on(postgres_admin(&format!("CREATE SCHEMA {schema}")));
        let state_url = format!(
            "{}?options=-c%20search_path%3D{schema}",
            postgres_base_url()
        );
        let store = rt
            .block_on(Store::open(&state_url))
            .and_then(|s| s.pipeline(PIPELINE))
            .expect("opening the state store");
        let instances: Vec<Instance> = (0..instances)
            .map(|i| Instance {
                name: format!("node-{}", i + 1),
                port: free_port(),
                child: None,
                killed_at: Vec::new(),
            })
            .collect();
        // The mapping as shipped, plus the public webhook URL: the balancer.
        let ports = instances.iter().map(|i| i.port).collect();
        let lb = rt.block_on(balancer(ports));
        let mapping = std::fs::read_to_string(names.mapping).unwrap();
        let mapping = mapping.replacen(
            "\nconnections:\n",
            &format!(
                "\nconnections:\n  webhooks:\n    public_url: \
                 \"http://127.0.0.1:{lb}/webhooks/partner-center\"\n"
            ),
            1,
        );
        let config = dir.path().join("mapping.yaml");
        std::fs::write(&config, mapping).unwrap();
        Cluster {
            rt,
            sandbox,
            names,
            crm,
            pc,
            dir,
            config,
            state_url,
            schema,
            store,
            instances,
            logs: Vec::new(),
            concurrency,
        }
    }

    /// Seeds the CRM's customers and `count` incoming referrals; their ids.
    fn seed(&self, count: usize) -> BTreeSet<String> {
        let base = self.sandbox.base_url().to_owned();
        let (status, body) = self.rt.block_on(common::control(
            &base,
            "/_sandbox/seed",
            &json!({ "referrals": 0, "accounts": ACCOUNTS }),
        ));
        assert!(status.is_success(), "seeding: {status} {body}");
        let mut data_rng = cosell::sandbox::Rng::new(6);
        let bodies: Vec<Value> = (0..count)
            .map(|i| incoming_referral(i, 2 * ACCOUNTS, &mut data_rng))
            .collect();
        self.rt.block_on(async {
            let client = reqwest::Client::new();
            let url = format!("{base}/_sandbox/partner-center/referrals/incoming");
            let mut ids = BTreeSet::new();
            for body in bodies {
                let response = client.post(&url).json(&body).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert!(status.is_success(), "incoming referral: {status} {body}");
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            ids
        })
    }

    fn start(&mut self, index: usize) {
        let instance = &self.instances[index];
        let log = self.dir.path().join(format!(
            "{}-{}.log",
            instance.name,
            instance.killed_at.len()
        ));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        self.logs.push(log);
        let child = Command::new(env!("CARGO_BIN_EXE_cosell"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--sandbox-url", self.sandbox.base_url()])
            .args(["--state", &self.state_url])
            .args(["--pipeline", PIPELINE])
            .args(["--instance", &instance.name])
            .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args([
                "--poll-every",
                "1",
                "--reconcile-every",
                "2",
                "--lease",
                "20",
            ])
            .env(
                "RUST_LOG",
                std::env::var("COSELL_SCALE_LOG")
                    .unwrap_or_else(|_| "warn,cosell::store=info".into()),
            )
            .env_remove("COSELL_STATE")
            .env_remove("COSELL_PIPELINE")
            .env_remove("COSELL_INSTANCE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting cosell run");
        self.instances[index].child = Some(child);
    }

    /// SIGKILL: no handler runs, the database sessions die with the process.
    fn kill(&mut self, index: usize) {
        let Some(mut child) = self.instances[index].child.take() else {
            return;
        };
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{} exited by itself ({status})\n{}",
                self.instances[index].name,
                self.log_tail()
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        self.instances[index].killed_at.push(now_ms());
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", log.display()));
        }
        out
    }

    fn links(&self) -> u64 {
        self.rt
            .block_on(self.store.links_by_state())
            .map(|c| c.values().sum())
            .unwrap_or(0)
    }

    fn inbox_empty(&self) -> bool {
        self.rt
            .block_on(self.store.inbox_stats())
            .is_ok_and(|s| s.pending + s.leased + s.scheduled == 0)
    }

    /// Waits until `links` referrals are linked; panics after the deadline.
    fn wait_for_links(&self, links: u64, started: Instant) {
        while self.links() < links {
            for instance in &self.instances {
                assert!(instance.child.is_some(), "{} is not running", instance.name);
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{} of {links} referrals linked after {:?}\n{}",
                self.links(),
                started.elapsed(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every job is done and stays done (webhooks of the last writes come in
    /// after them, and are echoes).
    fn wait_until_quiet(&self, started: Instant) {
        let mut quiet_since: Option<Instant> = None;
        loop {
            if self.inbox_empty() {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    return;
                }
            } else {
                quiet_since = None;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the inbox never emptied\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The instance that ran the newest poller run: the leader.
    fn leader(&self) -> Option<usize> {
        let runs = self.rt.block_on(self.store.poller_runs(1)).ok()?;
        let name = &runs.last()?.instance;
        self.instances.iter().position(|i| &i.name == name)
    }

    fn stop_all(&mut self) {
        for index in 0..self.instances.len() {
            self.kill(index);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for instance in &mut self.instances {
            if let Some(mut child) = instance.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let schema = self.schema.clone();
        self.rt.block_on(async {
            self.store.close().await;
            postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
        });
    }
}

/// Every pair of poller runs on different instances is disjoint in time. A run without a
/// finish (its instance was killed during it) ends when the test killed that instance.
fn assert_one_poller_instance_at_a_time(runs: &[PollerRun], instances: &[Instance]) {
    let end = |run: &PollerRun| -> i64 {
        run.finished_at.unwrap_or_else(|| {
            instances
                .iter()
                .find(|i| i.name == run.instance)
                .and_then(|i| {
                    i.killed_at
                        .iter()
                        .copied()
                        .filter(|&t| t >= run.started_at)
                        .min()
                })
                .unwrap_or(i64::MAX)
        })
    };
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.instance == b.instance {
                continue;
            }
            let overlap = a.started_at < end(b) && b.started_at < end(a);
            assert!(
                !overlap,
                "pollers ran on two instances at once:\n  {a:?} (ends {})\n  {b:?} (ends {})",
                end(a),
                end(b)
            );
        }
    }
}

fn scale_out(crm_kind: CrmKind) {
    // One at a time: two clusters of three instances side by side on a small machine would
    // mostly measure each other (and the deadline is per backfill).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = std::env::var("COSELL_SCALE_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REFERRALS);
    let mut cluster = Cluster::new(crm_kind, 3, Duration::ZERO, 8);
    println!(
        "scale_out {crm_kind:?}: {count} referrals, 3 instances, logs in {}",
        cluster.dir.path().display()
    );
    let incoming = cluster.seed(count);
    assert_eq!(incoming.len(), count);

    // 1. Three instances at once (they migrate the fresh schema together).
    let started = Instant::now();
    for index in 0..3 {
        cluster.start(index);
    }
    // 2. A third of the way in, SIGKILL the instance leading the pollers; restart it.
    cluster.wait_for_links(count as u64 / 3, started);
    let leader = cluster.leader().expect("a poller ran");
    let linked_at_kill = cluster.links();
    cluster.kill(leader);
    let killed_at = *cluster.instances[leader].killed_at.last().unwrap();
    println!(
        "scale_out {crm_kind:?}: killed the leader {} at {linked_at_kill} links ({:.1} s)",
        cluster.instances[leader].name,
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    cluster.start(leader);
    // 3. To the end.
    cluster.wait_for_links(count as u64, started);
    let backfill = started.elapsed();
    cluster.wait_until_quiet(started);
    cluster.stop_all();

    // Exactly once in the CRM.
    let (entity, id_field, key) = cluster.names.opportunity;
    let mut records_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in cluster
        .rt
        .block_on(rows(&cluster.crm, entity, &[id_field, key]))
    {
        if let (Some(id), Some(rid)) = (text(&row, id_field), text(&row, key)) {
            records_of
                .entry(rid.to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }
    let twice: Vec<_> = records_of.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "referrals with two opportunities: {twice:?}"
    );
    let missing: Vec<_> = incoming
        .iter()
        .filter(|rid| !records_of.contains_key(*rid))
        .collect();
    assert!(
        missing.is_empty(),
        "{} referrals without an opportunity",
        missing.len()
    );
    let (acc_entity, acc_id, acc_name, acc_postal) = cluster.names.accounts;
    let twice = shared_values(
        &cluster.rt,
        &cluster.crm,
        acc_entity,
        &[acc_id, acc_name, acc_postal],
    );
    assert!(twice.is_empty(), "accounts created twice: {twice:?}");
    let (con_entity, con_id, con_email) = cluster.names.contacts;
    let twice = shared_values(&cluster.rt, &cluster.crm, con_entity, &[con_id, con_email]);
    assert!(twice.is_empty(), "contacts created twice: {twice:?}");
    let (sol_entity, sol_id, sol_parent, sol_key) = cluster.names.solutions;
    let mut solutions: HashMap<String, usize> = HashMap::new();
    for row in cluster.rt.block_on(rows(
        &cluster.crm,
        sol_entity,
        &[sol_id, sol_parent, sol_key],
    )) {
        if let Some(parent) = text(&row, sol_parent) {
            *solutions.entry(parent.to_owned()).or_default() += 1;
        }
    }
    for rid in &incoming {
        let opportunity = &records_of[rid][0];
        assert_eq!(
            solutions.get(opportunity),
            Some(&1),
            "solutions of opportunity {opportunity} (referral {rid})"
        );
    }

    // Exactly once in Partner Center: each referral names its opportunity, written by one
    // successful PATCH, and nothing was created.
    let referrals: Vec<Value> = cluster
        .rt
        .block_on(
            cluster
                .pc
                .list_referrals(ReferralQuery::default())
                .try_collect::<Vec<_>>(),
        )
        .expect("listing referrals")
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(referrals.len(), count, "referrals in Partner Center");
    for referral in &referrals {
        let rid = referral["id"].as_str().unwrap();
        assert_eq!(
            referral["externalReferenceId"].as_str(),
            Some(records_of[rid][0].as_str()),
            "externalReferenceId of {rid}"
        );
    }
    let stats: Value = cluster.rt.block_on(async {
        reqwest::get(format!("{}/_sandbox/stats", cluster.sandbox.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let endpoints = &stats["apis"]["partner_center"]["endpoints"];
    let successful = |method: &str| -> u64 {
        endpoints
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(endpoint, _)| endpoint.starts_with(method))
            .flat_map(|(_, e)| e["status"].as_object().into_iter().flatten())
            .filter(|(status, _)| status.starts_with('2'))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    };
    assert_eq!(
        successful("PATCH "),
        count as u64,
        "successful Partner Center writes, one per referral: {endpoints:#}"
    );
    assert_eq!(
        successful("POST "),
        0,
        "Partner Center creates: {endpoints:#}"
    );

    // The store: one link per referral, pointing at its opportunity; no dead letters.
    let inbox = cluster.rt.block_on(cluster.store.inbox_stats()).unwrap();
    assert_eq!(inbox.dead_letters, 0, "dead letters: {inbox:?}");
    assert_eq!(cluster.links(), count as u64);
    for rid in incoming.iter().step_by(7) {
        let link = cluster
            .rt
            .block_on(cluster.store.link(rid))
            .unwrap()
            .unwrap();
        assert_eq!(
            link.crm_id.as_ref(),
            Some(&records_of[rid][0]),
            "link of {rid}"
        );
    }

    // Pollers: one instance at a time, and the leadership moved when the leader died.
    let runs = cluster
        .rt
        .block_on(cluster.store.poller_runs(1_000_000))
        .unwrap();
    assert_one_poller_instance_at_a_time(&runs, &cluster.instances);
    let before: BTreeSet<&str> = runs
        .iter()
        .filter(|r| r.started_at < killed_at)
        .map(|r| r.instance.as_str())
        .collect();
    assert_eq!(
        before,
        BTreeSet::from([cluster.instances[leader].name.as_str()]),
        "one leader before the kill"
    );
    let successor = runs
        .iter()
        .find(|r| r.started_at >= killed_at)
        .expect("pollers ran after the kill");
    let takeover = successor.started_at - killed_at;
    let by_instance: BTreeMap<&str, usize> = runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.instance.as_str()).or_default() += 1;
        m
    });
    println!(
        "scale_out {crm_kind:?}: {count} referrals synced exactly once in {:.1} s \
         ({:.0}/s); leader killed at {linked_at_kill} links, pollers resumed on {} after \
         {takeover} ms; poller runs per instance {by_instance:?}",
        backfill.as_secs_f64(),
        count as f64 / backfill.as_secs_f64(),
        successor.instance,
    );
}

#[test]
fn dynamics_three_instances_backfill_exactly_once_through_a_kill() {
    scale_out(CrmKind::Dynamics365);
}

#[test]
fn salesforce_three_instances_backfill_exactly_once_through_a_kill() {
    scale_out(CrmKind::Salesforce);
}

/// Backfill throughput of 1 and 3 instances, side by side on the same machine, with sandbox
/// latency per call (`COSELL_SCALE_LATENCY_MS`, default 50) so the upstream, not the CPU, is
/// the bound. Run in release mode:
/// `cargo test --release --test scale_out -- --ignored --nocapture scale_out_throughput`.
#[test]
#[ignore = "a benchmark: about two minutes; see BENCHMARKS.md"]
fn scale_out_throughput() {
    let count = std::env::var("COSELL_SCALE_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REFERRALS);
    let latency = Duration::from_millis(
        std::env::var("COSELL_SCALE_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let concurrency = 8;
    let mut results = Vec::new();
    for instances in [1, 3] {
        let mut cluster = Cluster::new(CrmKind::Dynamics365, instances, latency, concurrency);
        cluster.seed(count);
        let started = Instant::now();
        for index in 0..instances {
            cluster.start(index);
        }
        cluster.wait_for_links(count as u64, started);
        let elapsed = started.elapsed();
        cluster.stop_all();
        let rate = count as f64 / elapsed.as_secs_f64();
        // Every call the engines made (echo reads and polls included) takes a worker slot
        // for the sandbox's latency: the bound is the slots over the calls per referral.
        let stats: Value = cluster.rt.block_on(async {
            reqwest::get(format!("{}/_sandbox/stats", cluster.sandbox.base_url()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let calls: u64 = stats["apis"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, api)| api["calls"].as_u64())
            .sum();
        let per_referral = calls as f64 / count as f64;
        let bound = (instances * concurrency) as f64 / (per_referral * latency.as_secs_f64());
        println!(
            "scale_out_throughput: {instances} instance(s) × concurrency {concurrency}, \
             {} ms/call: {count} referrals in {:.1} s = {rate:.1} referrals/s; \
             {per_referral:.2} calls/referral, bound {bound:.1}/s, {:.0} % of it",
            latency.as_millis(),
            elapsed.as_secs_f64(),
            100.0 * rate / bound
        );
        results.push(rate);
    }
    println!(
        "scale_out_throughput: 3 instances vs 1 = {:.2}×",
        results[1] / results[0]
    );
}
