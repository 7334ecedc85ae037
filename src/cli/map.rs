//! `cosell map`: records through one flow, offline.
//!
//! Input is one JSON document (pretty-printed or not) or JSON Lines. JSON Lines are processed
//! in chunks spread over the available cores, output in input order, so large samples (the
//! 100k-referral benchmark) run at the speed of the machine.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use super::{SettingArgs, check, print_diagnostics, read_input, usage_error};
use crate::config::model::Operation;
use crate::mapping::lookup;
use crate::mapping::{FlowPlan, Input, Plan};

/// Arguments of `cosell map`.
#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// The mapping file.
    #[arg(long)]
    config: PathBuf,
    /// The flow to map through.
    #[arg(long)]
    flow: String,
    /// Input file (`-` or absent: stdin): one JSON record or JSON Lines.
    #[arg(long)]
    input: Option<PathBuf>,
    /// CRM records lookups search, as JSON `{ "accounts": [ … ], … }`. Without it, lookups are
    /// printed as `{"$lookup": {…}}` descriptions of what the engine would look up.
    #[arg(long)]
    records: Option<PathBuf>,
    /// The record the parent flow wrote (flows with `parent:`), as JSON.
    #[arg(long)]
    parent: Option<PathBuf>,
    /// Map as an update of an existing target record (skips `on: create` fields).
    #[arg(long)]
    update: bool,
    /// Pretty-print the output.
    #[arg(long)]
    pretty: bool,
    /// Worker threads for JSON Lines input (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    settings: SettingArgs,
}

struct Job<'a> {
    plan: &'a Plan,
    flow: &'a FlowPlan,
    records: Option<BTreeMap<String, Vec<Value>>>,
    parent: Option<Value>,
    operation: Operation,
    pretty: bool,
}

/// What one input record produced.
#[derive(Default)]
struct Produced {
    /// The flow's `when` was false (counted, reported once at the end).
    skipped: bool,
    /// An input record was seen (blank lines are not records).
    counted: bool,
    stdout: Vec<u8>,
    stderr: String,
    failed: bool,
}

fn read_json_file(path: &PathBuf, what: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{what} {} is not JSON: {e}", path.display()))
}

/// Runs `cosell map`.
pub fn run(args: &MapArgs) -> ExitCode {
    let checked = match check(&args.config, &args.settings) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    if checked.has_errors() {
        print_diagnostics(&checked);
        eprintln!("✘ {}: the mapping is invalid", checked.path);
        return ExitCode::from(2);
    }
    let Some(plan) = &checked.plan else {
        return usage_error("the mapping did not compile");
    };
    let Some(flow) = plan.flow(&args.flow) else {
        let names: Vec<&str> = plan.flows().map(|f| f.name.as_str()).collect();
        let hint = crate::config::diagnostic::did_you_mean(&args.flow, names.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| format!("flows in {}: {}", checked.path, names.join(", ")));
        return usage_error(&format!("unknown flow `{}`; {hint}", args.flow));
    };
    let records = match &args.records {
        Some(p) => match read_json_file(p, "records file").and_then(|v| {
            serde_json::from_value::<BTreeMap<String, Vec<Value>>>(v)
                .map_err(|e| format!("records file must map table names to lists of records: {e}"))
        }) {
            Ok(r) => Some(r),
            Err(e) => return usage_error(&e),
        },
        None => None,
    };
    let parent = match &args.parent {
        Some(p) => match read_json_file(p, "parent file") {
            Ok(v) => Some(v),
            Err(e) => return usage_error(&e),
        },
        None => None,
    };
    let job = Job {
        plan,
        flow,
        records,
        parent,
        operation: if args.update {
            Operation::Update
        } else {
            Operation::Create
        },
        pretty: args.pretty,
    };
    let mut reader = match read_input(args.input.as_deref()) {
        Ok(r) => r,
        Err(e) => return usage_error(&e),
    };
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, 64);
    match stream(&job, &mut reader, threads) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => usage_error(&e),
    }
}

/// Processes the whole input; `Ok(false)` when some record failed.
fn stream(job: &Job<'_>, reader: &mut dyn BufRead, threads: usize) -> Result<bool, String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut all_ok = true;
    let mut tally = Tally::default();
    let mut first = Vec::new();
    // Skip leading blank lines, then decide: a first line that is a whole JSON value means
    // JSON Lines; anything else is one (possibly multi-line) document.
    loop {
        first.clear();
        if reader
            .read_until(b'\n', &mut first)
            .map_err(|e| format!("cannot read input: {e}"))?
            == 0
        {
            return Ok(true);
        }
        if !first.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&first).is_err() {
        let mut rest = first;
        reader
            .read_to_end(&mut rest)
            .map_err(|e| format!("cannot read input: {e}"))?;
        let mut n = 0;
        for item in serde_json::Deserializer::from_slice(&rest).into_iter::<Value>() {
            n += 1;
            let produced = match item {
                Ok(v) => map_value(job, v, n),
                Err(e) => Produced {
                    stderr: format!("record {n}: not valid JSON: {e}\n"),
                    failed: true,
                    ..Default::default()
                },
            };
            all_ok &= emit(&mut out, produced, &mut tally)?;
        }
        out.flush().map_err(|e| e.to_string())?;
        report_skipped(&tally);
        return Ok(all_ok);
    }
    const CHUNK: usize = 4096;
    let mut line_no = 1usize;
    let mut chunk: Vec<Vec<u8>> = vec![first];
    loop {
        let mut eof = false;
        while chunk.len() < CHUNK {
            let mut line = Vec::new();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("cannot read input: {e}"))?
                == 0
            {
                eof = true;
                break;
            }
            chunk.push(line);
        }
        let results = process_chunk(job, &chunk, line_no, threads);
        for p in results {
            all_ok &= emit(&mut out, p, &mut tally)?;
        }
        line_no += chunk.len();
        chunk.clear();
        if eof {
            break;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    report_skipped(&tally);
    Ok(all_ok)
}

/// Records seen and skipped, for the closing note on stderr.
#[derive(Default)]
struct Tally {
    records: usize,
    skipped: usize,
}

fn emit(out: &mut impl Write, p: Produced, tally: &mut Tally) -> Result<bool, String> {
    out.write_all(&p.stdout)
        .map_err(|e| format!("cannot write output: {e}"))?;
    if !p.stderr.is_empty() {
        eprint!("{}", p.stderr);
    }
    tally.records += usize::from(p.counted || p.failed);
    tally.skipped += usize::from(p.skipped);
    Ok(!p.failed)
}

fn report_skipped(tally: &Tally) {
    match (tally.skipped, tally.records) {
        (0, _) => {}
        (1, 1) => eprintln!("the record was skipped: the flow's `when` is false"),
        (s, n) => eprintln!("{s} of {n} records skipped: the flow's `when` is false"),
    }
}

fn process_chunk(
    job: &Job<'_>,
    lines: &[Vec<u8>],
    first_line: usize,
    threads: usize,
) -> Vec<Produced> {
    let map_line = |(i, line): (usize, &Vec<u8>)| -> Produced {
        let n = first_line + i;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Produced::default();
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => map_value(job, v, n),
            Err(e) => Produced {
                stderr: format!("line {n}: not valid JSON: {e}\n"),
                failed: true,
                ..Default::default()
            },
        }
    };
    if threads <= 1 || lines.len() < 64 {
        return lines.iter().enumerate().map(map_line).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(per)
            .enumerate()
            .map(|(c, part)| {
                let offset = c * per;
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, l)| map_line((offset + i, l)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn map_value(job: &Job<'_>, value: Value, n: usize) -> Produced {
    let record = Arc::new(value);
    let mapped = job.plan.evaluate(
        job.flow,
        &Input {
            record: &record,
            parent: job.parent.as_ref(),
            operation: job.operation,
        },
    );
    let mut p = Produced {
        counted: true,
        ..Default::default()
    };
    if mapped.skipped {
        p.skipped = true;
        return p;
    }
    if !mapped.violations.is_empty() {
        p.failed = true;
        for v in &mapped.violations {
            p.stderr.push_str(&format!("record {n}: ✘ {}\n", v.message));
        }
        return p;
    }
    let input = Input {
        record: &record,
        parent: job.parent.as_ref(),
        operation: job.operation,
    };
    let create = |name: &str| job.plan.lookup_create_text(job.flow, name, &input);
    for mut target in mapped.records {
        if let Some(records) = &job.records {
            let outcomes = lookup::resolve_offline(job.plan, &mut target, records, &create);
            for (name, o) in outcomes {
                if let lookup::Outcome::Failed { message } = o {
                    p.failed = true;
                    p.stderr
                        .push_str(&format!("record {n}: ✘ lookup {name}: {message}\n"));
                }
            }
        } else if !target.lookups.is_empty() {
            let mut described: BTreeMap<String, Value> = BTreeMap::new();
            for l in &target.lookups {
                let mut l = l.clone();
                if l.on_missing == crate::config::model::OnMissing::Create {
                    match create(&l.name) {
                        Ok(fields) => l.create = fields,
                        Err(message) => {
                            p.failed = true;
                            p.stderr
                                .push_str(&format!("record {n}: ✘ lookup {}: {message}\n", l.name));
                        }
                    }
                }
                let mut m = serde_json::Map::new();
                m.insert(
                    "$lookup".into(),
                    serde_json::to_value(&l).unwrap_or(Value::Null),
                );
                described.insert(l.name.clone(), Value::Object(m));
            }
            lookup::substitute(&mut target.fields, &described);
        }
        // No partial output: a record whose lookups cannot be completed is not printed.
        if p.failed {
            continue;
        }
        let written = if job.pretty {
            serde_json::to_writer_pretty(&mut p.stdout, &target.fields)
        } else {
            serde_json::to_writer(&mut p.stdout, &target.fields)
        };
        if written.is_ok() {
            p.stdout.push(b'\n');
        }
    }
    p
}
