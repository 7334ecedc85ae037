//! Operations on the state store: `cosell status`, `cosell audit`, `cosell failures`,
//! `cosell replay`. They read (and, for replay, re-queue) what the engine recorded; they
//! never call Partner Center or the CRM.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Format;
use crate::mapping::transforms::datetime::DateTime;
use crate::store::DEFAULT_PIPELINE;
use crate::store::{AuditEntry, PollerRun, Store, utc_day};

/// Where the state lives, shared by the operations commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// State store: `sqlite://path/to/state.db` or `postgres://user@host/db`.
    #[arg(long, env = "COSELL_STATE", default_value = DEFAULT_STATE, value_name = "URL")]
    pub state: String,
    /// The pipeline to show or act on, when several configs share the store (see
    /// `cosell run --pipeline`).
    #[arg(long, env = "COSELL_PIPELINE", default_value = DEFAULT_PIPELINE, value_name = "NAME")]
    pub pipeline: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// The state store used when neither `--state` nor `COSELL_STATE` is given.
pub const DEFAULT_STATE: &str = "sqlite://.cosell/state.db";

/// What an operations command does.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Links by state, inbox depth, lag, dead letters, API calls today per upstream.
    Status,
    /// The history of one referral, newest first.
    Audit {
        /// Referral id.
        referral_id: String,
        /// At most this many entries.
        limit: usize,
    },
    /// Recent failed syncs and the dead letters.
    Failures {
        /// At most this many audit entries.
        limit: usize,
    },
    /// Re-queue dead letters.
    Replay {
        /// One dead letter, or every one when `None`.
        id: Option<i64>,
    },
}

/// Runs an operations command.
pub fn run(args: &StateArgs, operation: &Operation) -> ExitCode {
    let runtime = match super::runtime(false) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match Store::open(&args.state)
            .await
            .and_then(|store| store.pipeline(&args.pipeline))
        {
            Ok(store) => store,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        let result = match operation {
            Operation::Status => status(&store, args.format).await,
            Operation::Audit { referral_id, limit } => {
                audit(&store, referral_id, *limit, args.format).await
            }
            Operation::Failures { limit } => failures(&store, *limit, args.format).await,
            Operation::Replay { id } => replay(&store, *id, args.format).await,
        };
        store.close().await;
        match result {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        }
    })
}

type Outcome = Result<ExitCode, crate::store::StoreError>;

fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    DateTime::from_unix(
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        since.subsec_millis() * 1_000_000,
    )
    .utc_string()
}

fn seconds(duration: Option<Duration>) -> Value {
    duration.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// Percent of `limit` that `calls` is, one decimal.
fn percent(calls: u64, limit: u64) -> f64 {
    if limit == 0 {
        // A zero allocation is spent before the first call.
        return 100.0;
    }
    (calls as f64 * 1000.0 / limit as f64).round() / 10.0
}

async fn status(store: &Store, format: Format) -> Outcome {
    let links = store.links_by_state().await?;
    let inbox = store.inbox_stats().await?;
    let day = utc_day(SystemTime::now());
    let usage = store.api_usage(&day).await?;
    // The newest run of each poller: which instance leads, and whether polling is alive.
    let mut pollers: Vec<PollerRun> = Vec::new();
    for run in store.poller_runs(20).await?.into_iter().rev() {
        if !pollers.iter().any(|p| p.poller == run.poller) {
            pollers.push(run);
        }
    }
    pollers.sort_by(|a, b| a.poller.cmp(&b.poller));
    let ms = |at: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
    match format {
        Format::Json => {
            println!(
                "{}",
                json!({
                    "state": store.url(),
                    "pipeline": store.pipeline_name(),
                    "links": links,
                    "inbox": {
                        "pending": inbox.pending,
                        "leased": inbox.leased,
                        "scheduled": inbox.scheduled,
                        "lag_seconds": seconds(inbox.lag),
                    },
                    "dead_letters": inbox.dead_letters,
                    "pollers": pollers.iter().map(|p| (p.poller.clone(), json!({
                        "instance": p.instance,
                        "started_at": timestamp(ms(p.started_at)),
                        "finished_at": p.finished_at.map(|f| timestamp(ms(f))),
                        "outcome": p.outcome,
                    }))).collect::<serde_json::Map<_, _>>(),
                    "api_usage": {
                        "day": day,
                        "upstreams": usage.iter().map(|u| (u.api.clone(), json!({
                            "calls": u.calls,
                            "daily_limit": u.daily_limit,
                            "used_percent": u.daily_limit.map(|l| percent(u.calls, l)),
                            "updated_at": timestamp(u.updated_at),
                        }))).collect::<serde_json::Map<_, _>>(),
                    },
                })
            );
        }
        Format::Human => {
            println!("state      {}", store.url());
            println!("pipeline   {}", store.pipeline_name());
            let total: u64 = links.values().sum();
            println!("links      {total}");
            for (state, count) in &links {
                println!("  {state:<12} {count}");
            }
            println!(
                "inbox      {} pending, {} in progress, {} scheduled",
                inbox.pending, inbox.leased, inbox.scheduled
            );
            match inbox.lag {
                Some(lag) => println!("lag        {:.1} s", lag.as_secs_f64()),
                None => println!("lag        none"),
            }
            println!("dead       {}", inbox.dead_letters);
            if inbox.dead_letters > 0 {
                println!("           see `cosell failures`, then `cosell replay --all`");
            }
            if pollers.is_empty() {
                println!("pollers    none run yet");
            } else {
                println!("pollers    last run (on the leading instance)");
                for p in &pollers {
                    let ago = SystemTime::now()
                        .duration_since(ms(p.started_at))
                        .unwrap_or_default()
                        .as_secs();
                    let how = match (&p.outcome, p.finished_at) {
                        (Some(outcome), _) if outcome == "ok" => "ok".to_owned(),
                        (Some(outcome), _) => format!("failed: {outcome}"),
                        (None, _) => "running (or its instance stopped)".to_owned(),
                    };
                    println!("  {:<10} {ago} s ago on {}, {how}", p.poller, p.instance);
                }
            }
            if usage.is_empty() {
                println!("api calls  none recorded on {day} (UTC)");
            } else {
                println!("api calls  {day} (UTC)");
                let width = usage.iter().map(|u| u.api.len()).max().unwrap_or(0);
                for u in &usage {
                    match u.daily_limit {
                        Some(limit) => println!(
                            "  {:<width$}  {} of {limit} ({:.1} %)",
                            u.api,
                            u.calls,
                            percent(u.calls, limit)
                        ),
                        None => println!("  {:<width$}  {}", u.api, u.calls),
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(entry: &AuditEntry) -> Value {
    json!({
        "at": timestamp(entry.at),
        "referral_id": entry.referral_id,
        "crm_entity": entry.crm_entity,
        "crm_id": entry.crm_id,
        "flow": entry.flow,
        "outcome": entry.outcome,
        "message": entry.message,
        "details": entry.details,
    })
}

fn print_entry(entry: &AuditEntry) {
    let record = match (&entry.crm_entity, &entry.crm_id) {
        (Some(entity), Some(id)) => format!(" {entity} {id}"),
        _ => String::new(),
    };
    println!(
        "{}  {:<9} {}{record}: {}",
        timestamp(entry.at),
        entry.outcome,
        entry.flow,
        entry.message
    );
}

async fn audit(store: &Store, referral_id: &str, limit: usize, format: Format) -> Outcome {
    let trail = store.audit_trail(referral_id, limit).await?;
    let link = store.link(referral_id).await?;
    match format {
        Format::Json => {
            println!(
                "{}",
                json!({
                    "referral_id": referral_id,
                    "link": link.as_ref().map(|l| json!({
                        "entity": l.entity, "crm_id": l.crm_id, "state": l.state,
                    })),
                    "entries": trail.iter().map(entry_json).collect::<Vec<_>>(),
                })
            );
        }
        Format::Human => {
            match &link {
                Some(link) => println!(
                    "referral {referral_id} ⇄ {} {} ({})",
                    link.entity,
                    link.crm_id.as_deref().unwrap_or("not created yet"),
                    link.state
                ),
                None => println!("referral {referral_id}: not linked to a CRM record"),
            }
            if trail.is_empty() {
                println!("no audit entries");
            }
            for entry in &trail {
                print_entry(entry);
            }
        }
    }
    // An unknown referral is not an error of the command, but scripts want to know.
    Ok(if trail.is_empty() && link.is_none() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn failures(store: &Store, limit: usize, format: Format) -> Outcome {
    let failed = store.recent_failures(limit).await?;
    let dead = store.dead_letters().await?;
    match format {
        Format::Json => {
            println!(
                "{}",
                json!({
                    "failed": failed.iter().map(entry_json).collect::<Vec<_>>(),
                    "dead_letters": dead.iter().map(|d| json!({
                        "id": d.id, "key": d.key, "kind": d.kind, "attempts": d.attempts,
                        "error": d.error, "failed_at": timestamp(d.failed_at),
                    })).collect::<Vec<_>>(),
                })
            );
        }
        Format::Human => {
            if failed.is_empty() && dead.is_empty() {
                println!("no failures");
            }
            if !failed.is_empty() {
                println!("failed syncs (newest first):");
                for entry in &failed {
                    print_entry(entry);
                }
            }
            if !dead.is_empty() {
                println!("dead letters (replay with `cosell replay ID` or `--all`):");
                for letter in &dead {
                    println!(
                        "  #{:<5} {} {} after {} attempts, {}: {}",
                        letter.id,
                        letter.kind,
                        letter.key,
                        letter.attempts,
                        timestamp(letter.failed_at),
                        letter.error
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(store: &Store, id: Option<i64>, format: Format) -> Outcome {
    let (replayed, missing) = match id {
        Some(id) => {
            let found = store.replay(id).await?;
            (u64::from(found), (!found).then_some(id))
        }
        None => (store.replay_all().await?, None),
    };
    match format {
        Format::Json => println!("{}", json!({ "replayed": replayed, "unknown": missing })),
        Format::Human => match missing {
            Some(id) => eprintln!("error: no dead letter #{id} (see `cosell failures`)"),
            None => println!("re-queued {replayed} dead letter(s)"),
        },
    }
    Ok(if missing.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
