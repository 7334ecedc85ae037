//! The `cosell` command line. All user-facing output goes through here; machine output is JSON
//! behind `--format json`.
//!
//! Exit codes: 0 success; 1 the input is wrong (invalid mapping, failing test, record with
//! rule violations); 2 usage errors (bad arguments, unreadable file, unknown flow).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::diagnostic::{self, Diagnostic};
use crate::config::schema;
use crate::config::settings::Override;
use crate::load::{self, Checked};
use crate::testing;

mod map;
mod ops;
mod progress;
mod run;
mod sandbox;
mod webhook;

/// cosell — Partner Center co-sell referrals in two-way sync with your CRM, driven by YAML.
#[derive(Debug, Parser)]
#[command(name = "cosell", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check mapping files: YAML syntax, schema, references, templates, paths, stage maps.
    Validate {
        /// Mapping files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Run the inline `tests:` of mapping files.
    Test {
        /// Mapping files whose tests to run.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only run tests whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Map records through one flow offline: one JSON record or a JSON Lines stream in, the
    /// target records out (JSON Lines). Violations go to stderr.
    Map(map::MapArgs),
    /// Print the JSON Schema of mapping files.
    Schema,
    /// Run local emulators of Partner Center, Dataverse and Salesforce (see --help).
    Sandbox(sandbox::SandboxArgs),
    /// Keep referrals and CRM records in sync: webhooks, reconcile, CRM poll (see --help).
    Run(run::RunArgs),
    /// Dry run: the creates and updates a run would make now, without writing anything.
    Plan(run::PlanArgs),
    /// Manage the Partner Center webhook registration.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// The sync state at a glance: links by state, inbox depth, lag, dead letters, API calls
    /// today per upstream (of the daily budget, where one is configured).
    Status {
        #[command(flatten)]
        state: ops::StateArgs,
    },
    /// The full history of one referral, newest first.
    Audit {
        /// Referral id, or the id of a CRM record (a seller's opportunity that was rejected
        /// before it became a referral has its history under its own id).
        #[arg(value_name = "REFERRAL_ID|CRM_ID")]
        referral_id: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        state: ops::StateArgs,
    },
    /// Recent failed syncs and the dead letters waiting for a replay.
    Failures {
        /// At most this many failed syncs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        state: ops::StateArgs,
    },
    /// Re-queue dead letters: one by id, or all of them.
    Replay {
        /// Dead letter id (from `cosell failures`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        state: ops::StateArgs,
    },
}

/// `--set name=value` overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingArgs {
    /// Override a setting, e.g. `--set deal_value_field=new_dealvalue` (repeatable). Settings
    /// can also be overridden with COSELL_SETTING_<NAME> environment variables.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

impl SettingArgs {
    /// Environment overrides followed by command-line ones (the later wins).
    pub fn overrides(&self) -> Result<Vec<Override>, String> {
        let mut out = Override::from_env(std::env::vars());
        for s in &self.set {
            out.push(Override::parse_cli(s)?);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Text for people.
    Human,
    /// JSON for programs.
    Json,
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Validate {
            files,
            format,
            settings,
        } => validate(&files, format, &settings),
        Command::Test {
            files,
            filter,
            format,
            settings,
        } => test(&files, filter.as_deref(), format, &settings),
        Command::Map(args) => map::run(&args),
        Command::Sandbox(args) => sandbox::run(&args),
        Command::Webhook(command) => webhook::run(&command),
        Command::Run(args) => run::run(&args),
        Command::Plan(args) => run::plan(&args),
        Command::Status { state } => ops::run(&state, &ops::Operation::Status),
        Command::Audit {
            referral_id,
            limit,
            state,
        } => ops::run(&state, &ops::Operation::Audit { referral_id, limit }),
        Command::Failures { limit, state } => ops::run(&state, &ops::Operation::Failures { limit }),
        Command::Replay { id, all: _, state } => ops::run(&state, &ops::Operation::Replay { id }),
        Command::Schema => {
            let _ = std::io::stdout().write_all(schema::schema_text().as_bytes());
            ExitCode::SUCCESS
        }
    }
}

/// A tokio runtime for a command, or the usage exit code after saying why it failed.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|error| {
        eprintln!("error: cannot start the async runtime: {error}");
        ExitCode::from(2)
    })
}

/// Whether to colour output written to stderr.
pub fn color_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Checks one file, printing nothing. `Err` is a usage error.
pub fn check(path: &Path, settings: &SettingArgs) -> Result<Checked, String> {
    let overrides = settings.overrides()?;
    load::check_file(path, &overrides)
}

fn print_diagnostics(checked: &Checked) {
    let text = diagnostic::render(&checked.source(), &checked.diagnostics, color_stderr());
    eprint!("{text}");
}

fn validate(files: &[PathBuf], format: Format, settings: &SettingArgs) -> ExitCode {
    let mut worst = 0u8;
    let mut json_files = Vec::new();
    for path in files {
        let checked = match check(path, settings) {
            Ok(c) => c,
            Err(e) => {
                worst = 2;
                match format {
                    Format::Human => eprintln!("error: {e}"),
                    Format::Json => json_files.push(serde_json::json!({
                        "file": path.display().to_string(), "valid": false, "error": e, "diagnostics": []
                    })),
                }
                continue;
            }
        };
        let valid = !checked.has_errors();
        if !valid {
            worst = worst.max(1);
        }
        match format {
            Format::Human => {
                if !checked.diagnostics.is_empty() {
                    print_diagnostics(&checked);
                }
                if valid {
                    let (flows, tests) = checked
                        .config
                        .as_ref()
                        .map(|c| (c.flows.len(), c.tests.len()))
                        .unwrap_or((0, 0));
                    println!("✔ {} is valid ({flows} flows, {tests} tests)", checked.path);
                } else {
                    let n = checked
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == diagnostic::Severity::Error)
                        .count();
                    eprintln!(
                        "✘ {}: {n} error{}",
                        checked.path,
                        if n == 1 { "" } else { "s" }
                    );
                }
            }
            Format::Json => {
                let diags: Vec<serde_json::Value> = checked
                    .diagnostics
                    .iter()
                    .map(|d| diagnostic::to_json(&checked.source(), d))
                    .collect();
                json_files.push(serde_json::json!({ "file": checked.path, "valid": valid, "diagnostics": diags }));
            }
        }
    }
    if format == Format::Json {
        let doc = serde_json::json!({ "valid": worst == 0, "files": json_files });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    ExitCode::from(worst)
}

fn test(
    files: &[PathBuf],
    filter: Option<&str>,
    format: Format,
    settings: &SettingArgs,
) -> ExitCode {
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut worst = 0u8;
    let mut json_files = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in files {
        let checked = match check(path, settings) {
            Ok(c) => c,
            Err(e) => return usage_error(&e),
        };
        if checked.has_errors() {
            print_diagnostics(&checked);
            eprintln!(
                "✘ {}: the mapping is invalid; fix it before running its tests",
                checked.path
            );
            worst = worst.max(1);
            continue;
        }
        let results = testing::run(&checked, filter);
        if format == Format::Human {
            let _ = writeln!(out, "{}", checked.path);
        }
        for r in &results {
            if r.passed() {
                passed += 1;
            } else {
                failed += 1;
                worst = worst.max(1);
            }
            if format == Format::Human {
                let mark = if r.passed() { "✔" } else { "✘" };
                let _ = writeln!(out, "  {mark} {} ({}:{})", r.name, checked.path, r.line);
                for f in &r.failures {
                    let _ = writeln!(out, "      {f}");
                }
            }
        }
        if format == Format::Json {
            json_files.push(serde_json::json!({ "file": checked.path, "tests": results.iter().map(|r| serde_json::json!({
                "name": r.name, "flow": r.flow, "line": r.line, "passed": r.passed(), "failures": r.failures
            })).collect::<Vec<_>>() }));
        }
    }
    match format {
        Format::Human => {
            let _ = writeln!(out, "{passed} passed, {failed} failed");
        }
        Format::Json => {
            let doc =
                serde_json::json!({ "passed": passed, "failed": failed, "files": json_files });
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            );
        }
    }
    ExitCode::from(worst)
}

/// Reads a whole file or stdin (`-`).
pub fn read_input(path: Option<&Path>) -> Result<Box<dyn BufRead>, String> {
    match path {
        None => Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::io::stdin(),
        ))),
        Some(p) if p == Path::new("-") => Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::io::stdin(),
        ))),
        Some(p) => {
            let f =
                std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
        }
    }
}

/// Renders diagnostics that have no file (for `map`'s usage errors).
pub fn render_plain(d: &Diagnostic) -> String {
    match &d.hint {
        Some(h) => format!("error: {}\n  help: {h}", d.message),
        None => format!("error: {}", d.message),
    }
}
