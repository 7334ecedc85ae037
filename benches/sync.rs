//! End-to-end benchmarks of the sync engine, run by `bench/run` (BENCHMARKS.md):
//!
//! - **latency**: a referral shared in the sandbox's Partner Center (its webhook goes out at
//!   once) → the opportunity written to the CRM, per referral, over ≥ 1 000 referrals arriving
//!   at a steady rate, with 0 ms of sandbox latency (what the engine itself adds) and with
//!   50 ms per call;
//! - **backfill**: referrals waiting in Partner Center when the engine starts, synced with
//!   the configured concurrency C against a sandbox answering every call after L ms, as a
//!   fraction of the bound C / (calls per referral × L); peak RSS and CPU seconds of the
//!   engine process meanwhile;
//! - **economy**: the calls of each scenario, counted by the sandbox;
//! - **resources**: binary size and the start-up time of `cosell validate`.
//!
//! The engine is the release `cosell run` binary, a process of its own (so its memory and CPU
//! are its own), with a SQLite state file; the sandbox runs in this process. Settings come
//! from the environment (cargo passes its own flags to bench binaries):
//!
//! | variable | default | |
//! |---|---|---|
//! | `COSELL_BENCH_ONLY` | all | comma-separated: `latency`, `backfill`, `economy`, `resources` |
//! | `COSELL_BENCH_OUT` | `bench/results-sync.json` | where the figures go (JSON) |
//! | `COSELL_BENCH_LATENCY_REFERRALS` | 1000 | referrals per latency run |
//! | `COSELL_BENCH_RATE_0` / `COSELL_BENCH_RATE_50` | 40 / 20 | referrals shared per second |
//! | `COSELL_BENCH_BACKFILL_REFERRALS` | 10000 | |
//! | `COSELL_BENCH_BACKFILL_LATENCY_MS` | 50 | L |
//! | `COSELL_BENCH_CONCURRENCY` | 8 | C, the engine's `--concurrency` (its default) |
//! | `COSELL_BENCH_LOG` | `warn` | the engine's `RUST_LOG` |
//! | `COSELL_BENCH_KEEP` | unset | set: keep the runs' directories (engine log, state) |

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosell::config::model::CrmKind;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::store::Store;
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

#[path = "../tests/common/backfill.rs"]
mod backfill;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/economy.rs"]
mod economy;
#[path = "../tests/common/world.rs"]
mod world;

/// Customers in the CRM before a run; referrals name one of twice as many companies, so
/// about half of them bring a customer the engine must create.
const ACCOUNTS: usize = 60;
/// Referrals synced before a latency run's clock starts (tokens, the signing certificate,
/// the currency cache, SQLite's page cache).
const WARMUP: usize = 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let only: Option<Vec<String>> = std::env::var("COSELL_BENCH_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    let out = PathBuf::from(
        std::env::var("COSELL_BENCH_OUT").unwrap_or_else(|_| "bench/results-sync.json".into()),
    );
    let concurrency: usize = env_or("COSELL_BENCH_CONCURRENCY", 8);
    let mut results = Map::new();
    if wanted("economy") {
        results.insert("economy".into(), economy());
    }
    if wanted("latency") {
        let n = env_or("COSELL_BENCH_LATENCY_REFERRALS", 1000);
        let runs = [
            (0, env_or("COSELL_BENCH_RATE_0", 40.0)),
            (50, env_or("COSELL_BENCH_RATE_50", 20.0)),
        ];
        let figures: Vec<Value> = runs
            .iter()
            .map(|&(ms, rate)| latency(ms, rate, n, concurrency))
            .collect();
        results.insert("latency".into(), Value::Array(figures));
    }
    if wanted("backfill") {
        results.insert(
            "backfill".into(),
            backfill(
                env_or("COSELL_BENCH_BACKFILL_REFERRALS", 10_000),
                env_or("COSELL_BENCH_BACKFILL_LATENCY_MS", 50),
                concurrency,
            ),
        );
    }
    if wanted("resources") {
        results.insert("resources".into(), resources());
    }
    let text = serde_json::to_string_pretty(&Value::Object(results)).expect("JSON");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("creating the output directory");
    }
    std::fs::write(&out, format!("{text}\n"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    eprintln!("sync bench: figures written to {}", out.display());
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Milliseconds since the epoch, as the store records its audit entries.
fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The sandbox (in this process) and the engine (a `cosell run` process) syncing with it.
struct Bench {
    rt: Runtime,
    sandbox: SandboxHandle,
    dir: tempfile::TempDir,
    config: PathBuf,
    state_url: String,
    engine: Option<Child>,
    port: u16,
    http: reqwest::Client,
}

impl Bench {
    /// A sandbox answering every API call after `latency`, with the Dynamics 365 mapping as
    /// shipped. Dataverse's service-protection quota (6 000 requests per 5 minutes, enforced
    /// by the sandbox) would make every run here a measurement of that quota; it is lifted,
    /// and BENCHMARKS.md states what it means for a real backfill.
    fn new(latency: Duration) -> Bench {
        let rt = runtime();
        let sandbox = rt
            .block_on(sandbox::start(SandboxOptions {
                latency,
                ..SandboxOptions::default()
            }))
            .expect("starting the sandbox");
        let http = reqwest::Client::new();
        let dir = tempfile::Builder::new()
            .prefix("cosell-bench-")
            .disable_cleanup(std::env::var_os("COSELL_BENCH_KEEP").is_some())
            .tempdir()
            .expect("a temporary directory");
        let config = dir.path().join("dynamics365.yaml");
        std::fs::copy("mappings/dynamics365.yaml", &config).expect("copying the mapping");
        let bench = Bench {
            state_url: format!("sqlite://{}", dir.path().join("state.db").display()),
            rt,
            sandbox,
            dir,
            config,
            engine: None,
            port: common::free_port(),
            http,
        };
        bench.control(
            "/_sandbox/faults",
            &json!({ "quota": { "dataverse_requests_per_window": 100_000_000 } }),
        );
        bench.control(
            "/_sandbox/seed",
            &json!({ "referrals": 0, "accounts": ACCOUNTS }),
        );
        bench
    }

    fn control(&self, path: &str, body: &Value) -> Value {
        let (status, body) = self
            .rt
            .block_on(common::control(self.sandbox.base_url(), path, body));
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    fn stats(&self) -> Value {
        self.rt.block_on(async {
            self.http
                .get(format!("{}/_sandbox/stats", self.sandbox.base_url()))
                .send()
                .await
                .expect("sandbox stats")
                .json()
                .await
                .expect("sandbox stats JSON")
        })
    }

    fn clear_stats(&self) {
        self.rt.block_on(async {
            self.http
                .delete(format!("{}/_sandbox/stats", self.sandbox.base_url()))
                .send()
                .await
                .expect("clearing the sandbox stats");
        });
    }

    /// Microsoft shares `referrals` (Incoming, Shared): their ids, and when each was shared.
    async fn share(&self, referral: &Value) -> String {
        let url = format!(
            "{}/_sandbox/partner-center/referrals/incoming",
            self.sandbox.base_url()
        );
        let response = self
            .http
            .post(url)
            .json(referral)
            .send()
            .await
            .expect("sharing a referral");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "incoming referral: {status} {body}");
        body["id"].as_str().expect("the referral's id").to_owned()
    }

    /// Starts `cosell run` (release) and waits until it is ready and its webhook registered.
    fn start_engine(&mut self, concurrency: usize) {
        let log = std::fs::File::create(self.dir.path().join("engine.log")).expect("engine log");
        let child = Command::new(env!("CARGO_BIN_EXE_cosell"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--sandbox-url", self.sandbox.base_url()])
            .args(["--state", &self.state_url])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--concurrency", &concurrency.to_string()])
            // The production defaults, stated: the bench measures webhooks and the
            // reconcile's first round, not a sandbox-brisk poll.
            .args(["--poll-every", "15", "--reconcile-every", "300"])
            .args(["--instance", "bench"])
            .env(
                "RUST_LOG",
                std::env::var("COSELL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("engine log"))
            .stderr(log)
            .spawn()
            .expect("starting cosell run");
        self.engine = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.rt.block_on(async {
                self.http
                    .get(format!("http://127.0.0.1:{}/readyz", self.port))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
            let registered = !self.sandbox.state().webhooks.status()["registration"].is_null();
            if ready && registered {
                return;
            }
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "the engine is not ready after 60 s\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) {
        if let Some(child) = &mut self.engine
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("cosell run exited: {status}\n{}", self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("engine.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Warning and error lines the engine logged (printed, at most five).
    fn warnings(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("engine.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        for line in lines.iter().take(5) {
            eprintln!("sync bench: engine said: {line}");
        }
        lines.len()
    }

    fn pid(&self) -> u32 {
        self.engine.as_ref().expect("a running engine").id()
    }

    fn stop_engine(&mut self) {
        if let Some(mut child) = self.engine.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn store(&self) -> Store {
        self.rt
            .block_on(Store::open(&self.state_url))
            .expect("opening the engine's state store")
    }

    /// Referrals synced to the end (linked, written back to Partner Center).
    fn synced(&self, store: &Store) -> u64 {
        self.rt
            .block_on(store.links_by_state())
            .map(|states| {
                states
                    .iter()
                    .filter(|(state, _)| state.as_str() != "syncing")
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn wait_synced(&mut self, store: &Store, count: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.synced(store) < count {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "{} of {count} referrals synced after {within:?}\n{}",
                self.synced(store),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_engine();
    }
}

/// Referral bodies `from..to`, the same for every run.
fn referrals(from: usize, to: usize) -> Vec<Value> {
    let mut rng = cosell::sandbox::Rng::new(20_261_122);
    (0..to)
        .map(|i| backfill::incoming_referral(i, 2 * ACCOUNTS, &mut rng))
        .skip(from)
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Referral shared → CRM write recorded, for `n` referrals shared `rate` per second.
fn latency(latency_ms: u64, rate: f64, n: usize, concurrency: usize) -> Value {
    eprintln!(
        "sync bench: latency, sandbox {latency_ms} ms/call, {n} referrals at {rate}/s, concurrency {concurrency}"
    );
    let mut bench = Bench::new(Duration::from_millis(latency_ms));
    bench.start_engine(concurrency);
    let store = bench.store();
    bench.rt.block_on(async {
        for referral in referrals(0, WARMUP) {
            bench.share(&referral).await;
        }
    });
    bench.wait_synced(&store, WARMUP as u64, Duration::from_secs(120));

    let bodies = referrals(WARMUP, WARMUP + n);
    let started = Instant::now();
    let shared: Vec<(String, SystemTime)> = bench.rt.block_on(async {
        let mut shared = Vec::with_capacity(n);
        let start = tokio::time::Instant::now();
        for (i, body) in bodies.iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
            let at = SystemTime::now();
            shared.push((bench.share(body).await, at));
        }
        shared
    });
    let sharing = started.elapsed();
    bench.wait_synced(
        &store,
        (WARMUP + n) as u64,
        Duration::from_secs(120) + Duration::from_secs_f64(n as f64 / rate),
    );
    let (rss_kib, cpu_s) = proc_usage(bench.pid()).unwrap_or((0, 0.0));
    bench.stop_engine();

    let mut millis: Vec<f64> = Vec::with_capacity(n);
    // (seconds into the run, latency) of the slowest, to tell a periodic stall (a poll
    // round) from noise.
    let mut slowest: Vec<(f64, f64)> = Vec::with_capacity(n);
    let first = shared.first().map_or(0, |(_, at)| unix_ms(*at));
    let mut missing = 0;
    for (id, at) in &shared {
        let trail = bench
            .rt
            .block_on(store.audit_trail(id, 50))
            .expect("reading the audit trail");
        // The trail is newest first: the first CRM write is the oldest "created".
        match trail
            .iter()
            .rev()
            .find(|e| e.outcome == "created" || e.outcome == "updated")
        {
            // Both stamps in whole milliseconds (the store's resolution).
            Some(entry) => {
                let ms = (unix_ms(entry.at) - unix_ms(*at)) as f64;
                millis.push(ms);
                slowest.push(((unix_ms(*at) - first) as f64 / 1000.0, ms));
            }
            None => missing += 1,
        }
    }
    assert_eq!(
        missing, 0,
        "{missing} referrals have no CRM write in their trail"
    );
    millis.sort_by(f64::total_cmp);
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(10);
    let mean = millis.iter().sum::<f64>() / millis.len().max(1) as f64;
    let figures = json!({
        "sandbox_latency_ms": latency_ms,
        "referrals": n,
        "rate_per_s": rate,
        "achieved_rate_per_s": round(n as f64 / sharing.as_secs_f64(), 1),
        "concurrency": concurrency,
        "p50_ms": percentile(&millis, 50.0),
        "p95_ms": percentile(&millis, 95.0),
        "p99_ms": percentile(&millis, 99.0),
        "max_ms": millis.last().copied().unwrap_or(f64::NAN),
        "mean_ms": round(mean, 1),
        "engine_peak_rss_mib": round(rss_kib as f64 / 1024.0, 1),
        "engine_cpu_s": round(cpu_s, 2),
        "slowest_at_s_ms": slowest,
        "engine_warnings": bench.warnings(),
    });
    eprintln!("sync bench: {figures}");
    figures
}

/// Peak resident set (KiB) and CPU seconds (user + system) of a live process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((hwm, ticks as f64 / clock_ticks()))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Every call of a stats snapshot, tokens left out: (all, per endpoint).
fn count_calls(stats: &Value) -> (u64, Map<String, Value>) {
    let mut all = 0;
    let mut by_endpoint = Map::new();
    for (api, s) in stats["apis"].as_object().into_iter().flatten() {
        for (endpoint, e) in s["endpoints"].as_object().into_iter().flatten() {
            if endpoint.contains("/oauth2/") || api == "entra_id" {
                continue;
            }
            let calls = e["calls"].as_u64().unwrap_or(0);
            all += calls;
            by_endpoint.insert(format!("{api} {endpoint}"), json!(calls));
        }
    }
    (all, by_endpoint)
}

/// `count` referrals waiting in Partner Center when the engine starts.
fn backfill(count: usize, latency_ms: u64, concurrency: usize) -> Value {
    eprintln!(
        "sync bench: backfill of {count} referrals, sandbox {latency_ms} ms/call, concurrency {concurrency}"
    );
    let mut bench = Bench::new(Duration::from_millis(latency_ms));
    let bodies = referrals(0, count);
    bench.rt.block_on(async {
        for body in &bodies {
            bench.share(body).await;
        }
    });
    drop(bodies);
    bench.clear_stats();
    let started = Instant::now();
    bench.start_engine(concurrency);
    let store = bench.store();
    let mut peak_rss_kib = 0;
    let deadline = started + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    loop {
        let synced = bench.synced(&store);
        if let Some((rss, _)) = proc_usage(bench.pid()) {
            peak_rss_kib = peak_rss_kib.max(rss);
        }
        if synced >= count as u64 {
            break;
        }
        bench.check_alive();
        assert!(
            Instant::now() < deadline,
            "{synced} of {count} referrals synced after 30 minutes\n{}",
            bench.log_tail()
        );
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "sync bench: {synced} of {count} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_kib, cpu_s) = proc_usage(bench.pid()).unwrap_or((peak_rss_kib, 0.0));
    let stats = bench.stats();
    bench.stop_engine();
    let dead = bench
        .rt
        .block_on(store.inbox_stats())
        .map_or(0, |s| s.dead_letters);
    let (all, by_endpoint) = count_calls(&stats);
    // Every call the engine made, echo reads of its own writes included. The pollers' few
    // (the reconcile's pages of 100, the CRM poll's queries) do not hold a worker; counting
    // them lowers the bound by well under 1 %.
    let per_referral = all as f64 / count as f64;
    let rate = count as f64 / elapsed;
    // Each call holds one of the C workers for L: at most C / (calls × L) referrals/s.
    let bound = concurrency as f64 / (per_referral * latency_ms as f64 / 1000.0);
    let figures = json!({
        "referrals": count,
        "sandbox_latency_ms": latency_ms,
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "referrals_per_s": round(rate, 1),
        "calls": all,
        "calls_per_referral": round(per_referral, 2),
        "bound_per_s": round(bound, 1),
        "fraction_of_bound": round(rate / bound, 3),
        "dead_letters": dead,
        "engine_warnings": bench.warnings(),
        "engine_peak_rss_mib": round(rss_kib.max(peak_rss_kib) as f64 / 1024.0, 1),
        "engine_cpu_s": round(cpu_s, 1),
        "engine_cpu_ms_per_referral": round(1000.0 * cpu_s / count as f64, 2),
        "calls_by_endpoint": by_endpoint,
    });
    eprintln!("sync bench: {figures}");
    figures
}

/// The calls of each scenario, per CRM (in-process engine, the sandbox's counters).
fn economy() -> Value {
    eprintln!("sync bench: API economy");
    let rt = runtime();
    let mut out = Map::new();
    for crm in [CrmKind::Dynamics365, CrmKind::Salesforce] {
        let e = rt.block_on(economy::measure(crm));
        let rows: Vec<Value> = [
            ("new_referral_new_customer", &e.new_customer),
            ("new_referral_known_customer", &e.known_customer),
            ("unchanged_redelivery", &e.redelivery),
            ("echo_of_our_pc_write", &e.echo),
            ("quiet_poll_round", &e.quiet_round),
            ("crm_edit_to_pc_patch", &e.crm_edit),
        ]
        .into_iter()
        .map(|(scenario, calls)| {
            json!({
                "scenario": scenario,
                "calls": calls.total(),
                "reads": calls.reads(),
                "writes": calls.writes(),
                "by_endpoint": calls.by_endpoint,
            })
        })
        .collect();
        out.insert(crm.as_str().to_owned(), Value::Array(rows));
    }
    let figures = Value::Object(out);
    eprintln!("sync bench: {figures}");
    figures
}

/// Binary size and the start-up of `cosell validate` on the shipped mappings.
fn resources() -> Value {
    let binary = Path::new(env!("CARGO_BIN_EXE_cosell"));
    let size = std::fs::metadata(binary).map_or(0, |m| m.len());
    let run = || {
        let started = Instant::now();
        let status = Command::new(binary)
            .args([
                "validate",
                "mappings/dynamics365.yaml",
                "mappings/salesforce.yaml",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running cosell validate");
        assert!(
            status.success(),
            "cosell validate failed on the shipped mappings"
        );
        started.elapsed().as_secs_f64() * 1000.0
    };
    let first = run();
    let mut runs: Vec<f64> = (0..20).map(|_| run()).collect();
    runs.sort_by(f64::total_cmp);
    // What a deployment ships: the same binary without its symbol table.
    let stripped = std::env::temp_dir().join(format!("cosell-stripped-{}", std::process::id()));
    let stripped_size = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&stripped);
    let figures = json!({
        "binary_stripped_mib": round(stripped_size as f64 / 1_048_576.0, 1),
        "binary_bytes": size,
        "binary_mib": round(size as f64 / 1_048_576.0, 1),
        "validate_first_ms": round(first, 1),
        "validate_median_ms": round(percentile(&runs, 50.0), 1),
        "validate_runs": runs.len(),
    });
    eprintln!("sync bench: {figures}");
    figures
}
