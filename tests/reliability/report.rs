//! The suite's figures: what each section did, and the totals printed at the end.

use std::time::Duration;

/// How a section is run.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--long` (or `COSELL_RELIABILITY_LONG=1`): the long variants (more referrals, more
    /// kills, more inputs). CI runs the short ones.
    pub long: bool,
    /// Seed of every generator a section uses (`COSELL_RELIABILITY_SEED` replays a run).
    pub seed: u64,
}

impl Ctx {
    /// `short` in CI, `long` with `--long`.
    pub fn pick<T>(&self, short: T, long: T) -> T {
        if self.long { long } else { short }
    }
}

/// What one section did. Sections assert their own guarantees (a failed guarantee panics);
/// the figures say how much was tried.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Sync operations carried out (referrals and records created or updated, requests
    /// answered, inputs checked), in the section's own unit; `notes` says which.
    pub operations: u64,
    /// Faults the sandbox injected (429, 503, timeouts, resets, dropped webhooks, human
    /// edits between our read and our write).
    pub faults_injected: u64,
    /// SIGKILLs of the engine process it recovered from.
    pub crashes_survived: u64,
    /// Hostile inputs tried (configs, webhook requests, referrals, fuzz cases).
    pub inputs_tried: u64,
    /// Records that exist twice (must be 0).
    pub duplicates: u64,
    /// Referrals or records that never arrived (must be 0).
    pub lost: u64,
    /// One line each: what the figures count, anything worth knowing.
    pub notes: Vec<String>,
}

impl Figures {
    /// Adds another section's figures to these (the totals row).
    pub fn add(&mut self, other: &Figures) {
        self.operations += other.operations;
        self.faults_injected += other.faults_injected;
        self.crashes_survived += other.crashes_survived;
        self.inputs_tried += other.inputs_tried;
        self.duplicates += other.duplicates;
        self.lost += other.lost;
    }
}

/// One finished section.
pub struct Outcome {
    pub name: &'static str,
    pub took: Duration,
    /// The figures, or the failure message.
    pub result: Result<Figures, String>,
}

/// The table printed at the end of a run (also the README's reliability section).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str(
        "| section | result | time | operations | faults injected | crashes survived | inputs tried | duplicates | lost |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut total = Figures::default();
    let mut took = Duration::ZERO;
    for outcome in outcomes {
        took += outcome.took;
        match &outcome.result {
            Ok(f) => {
                total.add(f);
                out.push_str(&format!(
                    "| {} | ✔ | {:.0} s | {} | {} | {} | {} | {} | {} |\n",
                    outcome.name,
                    outcome.took.as_secs_f64(),
                    f.operations,
                    f.faults_injected,
                    f.crashes_survived,
                    f.inputs_tried,
                    f.duplicates,
                    f.lost
                ));
            }
            Err(_) => out.push_str(&format!(
                "| {} | ✘ | {:.0} s | | | | | | |\n",
                outcome.name,
                outcome.took.as_secs_f64()
            )),
        }
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    out.push_str(&format!(
        "| **total** | {} | {:.0} s | {} | {} | {} | {} | {} | {} |\n",
        if failed == 0 { "✔" } else { "✘" },
        took.as_secs_f64(),
        total.operations,
        total.faults_injected,
        total.crashes_survived,
        total.inputs_tried,
        total.duplicates,
        total.lost
    ));
    out
}
