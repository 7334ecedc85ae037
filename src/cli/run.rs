//! `cosell run` and `cosell plan`: the sync engine as a service, and its dry run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use indicatif::ProgressDrawTarget;
use serde_json::json;

use super::progress::BackfillBar;
use super::{Format, SettingArgs, check, print_diagnostics, runtime};
use crate::config::model::Config;
use crate::connectors::process_env;
use crate::engine::connect;
use crate::engine::health::{self, Readiness};
use crate::engine::inbox::InboxSink;
use crate::engine::runner::{RunOptions, Runner};
use crate::engine::sync::Engine;
use crate::engine::usage::{self, UsageRecorder};
use crate::mapping::plan::Plan;
use crate::sandbox::{self, SandboxOptions};
use crate::server::{self, ServerOptions};
use crate::store::{DEFAULT_PIPELINE, Store, redact_url};

/// The instance name used without `--instance`: the host name (a Kubernetes pod's name, a
/// VM's name), else `cosell-<pid>`.
fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("cosell-{}", std::process::id()))
}

/// Where to find Partner Center and the CRM.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Mapping file (flows, lookups, value maps, settings, connections).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Start an embedded sandbox, seed it, register the webhook and point every
    /// connection at it (nothing leaves this machine).
    #[arg(long, conflicts_with = "sandbox_url")]
    sandbox: bool,
    /// Use an already running sandbox (`cosell sandbox`) at this base URL.
    #[arg(long, value_name = "URL")]
    sandbox_url: Option<String>,
    /// State store: `sqlite://path` or `postgres://…` (default `sqlite://.cosell/state.db`;
    /// with --sandbox a fresh `sqlite://.cosell/sandbox-state.db`).
    #[arg(long, env = "COSELL_STATE", value_name = "URL")]
    state: Option<String>,
    /// The pipeline this config's state is kept under. Configs (partners, CRMs) sharing one
    /// state database each need their own; the instances running one config share it.
    #[arg(long, env = "COSELL_PIPELINE", default_value = DEFAULT_PIPELINE, value_name = "NAME")]
    pipeline: String,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Keep referrals and CRM records in sync.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sync until there is nothing left to do, then exit (0; 1 if anything was
    /// dead-lettered).
    #[arg(long)]
    once: bool,
    /// HTTP server for webhooks, /healthz, /readyz and /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Jobs processed at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    concurrency: usize,
    /// This instance's name among the instances sharing a PostgreSQL store (default: the
    /// host name). Unique among live instances; a restart under the same name takes back
    /// its predecessor's jobs at once instead of waiting for their leases to expire.
    #[arg(long, env = "COSELL_INSTANCE", value_name = "NAME")]
    instance: Option<String>,
    /// Seconds a claimed job stays this instance's without renewal; after a crash, another
    /// instance takes the job over when it expires.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lease: u64,
    /// Seconds between Partner Center reconciles (catches missed webhooks) [default: 300;
    /// 30 against a sandbox].
    #[arg(long, value_name = "SECONDS")]
    reconcile_every: Option<u64>,
    /// Seconds between CRM change polls [default: 15; 2 against a sandbox].
    #[arg(long, value_name = "SECONDS")]
    poll_every: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Show what a run would create and update, without writing anything.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Through the progress bar's writer, so log lines never cut the bar in two.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(super::progress::LogWriter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A connected engine plus what keeps it alive.
struct Setup {
    engine: Engine,
    /// The embedded sandbox, when there is one.
    sandbox: Option<sandbox::SandboxHandle>,
    /// The sandbox's CA (trust anchor for its webhooks).
    sandbox_ca: Option<String>,
    /// The sandbox's base URL.
    sandbox_base: Option<String>,
    config: Config,
}

fn load(target: &TargetArgs) -> Result<(Config, Plan), ExitCode> {
    let checked = check(&target.config, &target.settings).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })?;
    if checked.has_errors() {
        print_diagnostics(&checked);
        return Err(ExitCode::from(1));
    }
    match (checked.config, checked.plan) {
        (Some(config), Some(plan)) => Ok((config, plan)),
        _ => {
            eprintln!("error: {} could not be compiled", target.config.display());
            Err(ExitCode::from(1))
        }
    }
}

async fn setup(
    target: &TargetArgs,
    config: Config,
    plan: Plan,
    dry_run: bool,
) -> anyhow::Result<Setup> {
    let (sandbox, base, ca) = if target.sandbox {
        let handle = sandbox::start(SandboxOptions::default()).await?;
        let base = handle.base_url().to_owned();
        let ca = handle.ca_pem();
        (Some(handle), Some(base), Some(ca))
    } else if let Some(url) = &target.sandbox_url {
        let url = url.trim_end_matches('/').to_owned();
        let ca = reqwest::get(format!("{url}/_sandbox/ca.pem"))
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("cannot reach the sandbox's /_sandbox/ca.pem")?
            .text()
            .await?;
        (None, Some(url), Some(ca))
    } else {
        (None, None, None)
    };
    let (pc, crm) = match &base {
        Some(base) => connect::sandbox_clients_with(
            config.crm,
            base,
            ca.as_deref(),
            connect::Timeouts::of(&config),
        )?,
        None => connect::configured_clients(&config, &process_env)?,
    };
    let state = match &target.state {
        Some(url) => url.clone(),
        None if target.sandbox => {
            // The embedded sandbox starts empty; yesterday's links would point nowhere.
            let path = std::path::Path::new(".cosell/sandbox-state.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}", path.display())
        }
        None => super::ops::DEFAULT_STATE.to_owned(),
    };
    let store = Store::open(&state)
        .await
        .and_then(|store| store.pipeline(&target.pipeline))
        .with_context(|| format!("state store {}", redact_url(&state)))?;
    if !dry_run {
        store.claim_pipeline(config.crm.as_str()).await?;
    }
    if let Some(handle) = &sandbox {
        // Seed: referrals waiting in Partner Center, customers and opportunities in the
        // CRM, a few of them flagged for co-sell by a seller.
        let client = reqwest::Client::new();
        client
            .post(format!("{}/_sandbox/seed", handle.base_url()))
            .json(&json!({ "referrals": 8, "accounts": 8 }))
            .send()
            .await?
            .error_for_status()?;
        if !dry_run {
            let flagged = connect::flag_sandbox_opportunities(&crm, 3).await?;
            tracing::info!(
                "sandbox: seeded 8 referrals and 8 customers; {flagged} opportunities flagged for co-sell"
            );
        }
    }
    let mut engine = Engine::new(Arc::new(plan), pc, crm, store);
    if dry_run {
        engine = engine.dry_run();
    }
    Ok(Setup {
        engine,
        sandbox,
        sandbox_ca: ca,
        sandbox_base: base,
        config,
    })
}

/// `cosell run`.
pub fn run(args: &RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let (config, plan) = match load(&args.target) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        match run_async(args, config, plan).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn run_async(args: &RunArgs, config: Config, plan: Plan) -> anyhow::Result<ExitCode> {
    let setup = setup(&args.target, config, plan, false).await?;
    let sandboxed = setup.sandbox_ca.is_some();
    if let Some(handle) = &setup.sandbox {
        tracing::info!(
            "sandbox: {} (try `curl {}/_sandbox/`)",
            handle.base_url(),
            handle.base_url()
        );
    }
    let engine = Arc::new(setup.engine);
    // This instance's name: one engine per SQLite state file, one live instance per name
    // on PostgreSQL. What a crashed predecessor held is claimable now rather than when its
    // leases expire. Held until this function returns.
    let instance = args.instance.clone().unwrap_or_else(default_instance);
    let (_instance_lock, released) = engine.store().start_instance(&instance).await?;
    if released > 0 {
        tracing::info!("{released} job(s) left in progress by a stopped engine are queued again");
    }
    tracing::info!(
        "instance '{instance}' of pipeline '{}' on {} store",
        engine.store().pipeline_name(),
        engine.store().kind()
    );
    let mut options = RunOptions {
        worker: instance,
        lease: Duration::from_secs(args.lease.max(5)),
        concurrency: args.concurrency.max(1),
        ..RunOptions::default()
    };
    // The sandbox is local: unless told otherwise, poll it briskly so edits show up within
    // seconds.
    let (reconcile_every, poll_every) = if sandboxed { (30, 2) } else { (300, 15) };
    options.reconcile_every =
        Duration::from_secs(args.reconcile_every.unwrap_or(reconcile_every).max(1));
    options.poll_every = Duration::from_secs(args.poll_every.unwrap_or(poll_every).max(1));
    let runner = Runner::new(engine.clone(), options);

    // The HTTP server: webhooks (stored before the 200), health, metrics.
    let server_options = match (
        &setup.sandbox_ca,
        setup.config.connections.webhooks.as_ref(),
    ) {
        (Some(ca), _) => Some(ServerOptions::new(
            args.listen,
            connect::sandbox_verifier(setup.sandbox_base.as_deref().unwrap_or_default(), ca)?,
        )),
        (None, Some(webhooks)) => Some(ServerOptions::from_settings(
            args.listen,
            webhooks,
            &process_env,
        )?),
        // A one-off sync needs no webhooks: the reconcile finds every change.
        (None, None) if args.once => None,
        (None, None) => {
            return Err(anyhow!(
                "the mapping has no `connections.webhooks` (trust anchors for Partner Center's signing certificate); add it, or use --once to sync without webhooks"
            ));
        }
    };
    let mut server = None;
    if let Some(mut server_options) = server_options {
        let path = server_options.webhook_path.clone();
        server_options.readiness = Readiness::new(engine.clone(), health::CACHE_FOR).into_check();
        let sink = Arc::new(InboxSink::new(engine.store().clone()).waking(runner.waker()));
        let handle = server::serve(server_options, sink).await?;
        let bound = handle.local_addr();
        tracing::info!(
            "listening on http://{bound} (webhooks at {path}, /healthz, /readyz, /metrics)"
        );
        if sandboxed {
            // The webhook goes to the address actually bound, or to the configured public
            // URL (a load balancer in front of several instances).
            let url = setup
                .config
                .connections
                .webhooks
                .as_ref()
                .and_then(|w| w.public_url.clone())
                .filter(|_| setup.sandbox.is_none())
                .unwrap_or_else(|| format!("http://{bound}{path}"));
            let mut events: Vec<&str> = super::webhook::REFERRAL_EVENTS.to_vec();
            events.push("test-created");
            engine
                .partner_center()
                .register(&url, &events, false, true)
                .await
                .context("registering the webhook with the sandbox")?;
            tracing::info!("webhook registered with the sandbox: {url}");
        }
        server = Some(handle);
    }

    // Call counts go to the store every few seconds for `cosell status`; the bar shows the
    // first round's backlog draining when a person is watching.
    let usage = UsageRecorder::for_engine(&engine).spawn(usage::FLUSH_EVERY);
    let bar = super::progress::enabled(args.log_format)
        .then(|| BackfillBar::spawn(&runner, ProgressDrawTarget::stderr));
    let outcome = run_engine(args, &engine, &runner, bar).await;
    if let Err(error) = usage.stop().await {
        tracing::warn!("recording API usage: {error}");
    }
    let code = outcome?;
    if let Some(server) = server {
        server.shutdown().await?;
    }
    engine.store().close().await;
    drop(setup.sandbox);
    Ok(code)
}

/// `--once` or until Ctrl-C; the bar goes away before the summary line is printed.
async fn run_engine(
    args: &RunArgs,
    engine: &Engine,
    runner: &Runner,
    bar: Option<BackfillBar>,
) -> anyhow::Result<ExitCode> {
    let stop_bar = async move {
        if let Some(bar) = bar {
            bar.stop().await;
        }
    };
    if args.once {
        let total = runner.run_once().await;
        stop_bar.await;
        let total = total.map_err(|e| anyhow!("{}", e.message()))?;
        let stats = engine.store().inbox_stats().await?;
        println!(
            "synced: {} job(s), {} with writes, {} retried, {} dead-lettered",
            total.done, total.written, total.retried, stats.dead_letters
        );
        if stats.dead_letters > 0 {
            eprintln!(
                "error: {} job(s) failed for good; see `cosell failures`",
                stats.dead_letters
            );
            Ok(ExitCode::from(1))
        } else {
            Ok(ExitCode::SUCCESS)
        }
    } else {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping");
        };
        let result = runner.run(shutdown).await;
        stop_bar.await;
        result.map_err(|e| anyhow!("{}", e.message()))?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `cosell plan`.
pub fn plan(args: &PlanArgs) -> ExitCode {
    init_logging(LogFormat::Text);
    let (config, plan) = match load(&args.target) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        match plan_async(args, config, plan).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn plan_async(args: &PlanArgs, config: Config, plan: Plan) -> anyhow::Result<ExitCode> {
    let setup = setup(&args.target, config, plan, true).await?;
    let engine = Arc::new(setup.engine);
    // A dry run reads what a run would read, from the same cursors, and decides the same
    // way; the store is only read.
    let referrals = engine.dry_referrals().await?;
    for referral in referrals {
        let _ = engine.sync_referral(referral).await;
    }
    for (entity, id) in engine.dry_crm_records().await? {
        let _ = engine.sync_crm_record(&entity, &id).await;
    }
    let planned = engine.planned();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&planned)?),
        Format::Human => {
            if planned.is_empty() {
                println!("nothing to do: both systems are in sync");
            } else {
                println!(
                    "{:<15} {:<7} {:<22} {:<38} {:<30} fields",
                    "system", "action", "entity", "id", "flow"
                );
                for w in &planned {
                    println!(
                        "{:<15} {:<7} {:<22} {:<38} {:<30} {}",
                        w.system,
                        w.action,
                        w.entity,
                        w.id.as_deref().unwrap_or("(new)"),
                        w.flow,
                        w.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                let creates = planned.iter().filter(|w| w.action == "create").count();
                println!(
                    "\n{} create(s), {} update(s); nothing was written",
                    creates,
                    planned.len() - creates
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
