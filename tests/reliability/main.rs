//! The reliability and security suite (issue 8): faults on every API, SIGKILLed engines,
//! dropped webhooks, humans editing between our read and our write, and hostile input —
//! broken configs, forged webhooks, odd referral data, secret canaries.
//!
//! One test binary with its own `main` (`harness = false`) so the sections run one after
//! the other on CI's two cores and the figures are printed together at the end:
//!
//! ```text
//! cargo test --test reliability                 # the CI variant
//! cargo test --test reliability -- --long       # the long variants (README, "Reliability")
//! cargo test --test reliability -- faults edits # only the sections whose name matches
//! cargo test --test reliability -- --list       # the section names
//! ```
//!
//! `COSELL_RELIABILITY_SEED=<n>` replays a run's generators (the seed is printed);
//! `COSELL_RELIABILITY_OUT=<file>` also writes the figures table there.

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[path = "../common/backfill.rs"]
mod backfill;
#[path = "../common/mod.rs"]
mod common;
mod report;
mod scenario;
#[path = "../common/world.rs"]
mod world;

mod configs;
mod crashes;
mod edits;
mod faults;
mod missed;
mod referrals;
mod secrets;
mod webhooks;

use report::{Ctx, Figures, Outcome};

/// Every section, in the order they run: cheap input checks first, so a broken build
/// fails fast, then the long-running sync scenarios.
type Section = (&'static str, fn(&Ctx) -> Figures);

const SECTIONS: &[Section] = &[
    ("configs", configs::run),
    ("webhooks", webhooks::run),
    ("referrals", referrals::run),
    ("secrets", secrets::run),
    ("edits", edits::run),
    ("missed", missed::run),
    ("faults", faults::run),
    ("crashes", crashes::run),
];

fn main() -> ExitCode {
    let mut long = std::env::var("COSELL_RELIABILITY_LONG").is_ok_and(|v| v == "1");
    let mut filters = Vec::new();
    let mut list = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--long" => long = true,
            "--list" => list = true,
            // libtest flags cargo may pass through (`--nocapture`, `--quiet`, ...): this
            // binary always shows its output.
            flag if flag.starts_with('-') => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    if list {
        for (name, _) in SECTIONS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let seed = std::env::var("COSELL_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let ctx = Ctx { long, seed };
    // A failed guarantee is reported once, with its message, in the section's result
    // line; the default hook's backtrace of the test code would only bury it.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("   panicked at {location}");
    }));
    println!(
        "reliability suite: {} variant, COSELL_RELIABILITY_SEED={seed}",
        if long { "long" } else { "CI" }
    );

    let mut outcomes = Vec::new();
    for (name, run) in SECTIONS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("\n== {name}");
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(&ctx))).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned())
        });
        let took = started.elapsed();
        match &result {
            Ok(figures) => {
                for note in &figures.notes {
                    println!("   {note}");
                }
                println!("== {name}: ✔ in {:.1} s", took.as_secs_f64());
            }
            Err(message) => println!("== {name}: ✘ in {:.1} s: {message}", took.as_secs_f64()),
        }
        outcomes.push(Outcome { name, took, result });
    }

    let table = report::table(&outcomes);
    println!("\n{table}");
    if let Ok(path) = std::env::var("COSELL_RELIABILITY_OUT")
        && let Err(error) = std::fs::write(&path, &table)
    {
        eprintln!("could not write {path}: {error}");
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name)
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
