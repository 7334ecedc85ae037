//! Running a mapping file's inline `tests:`.
//!
//! A test maps an input record (inline or from a JSON file next to the mapping) through one
//! flow and compares what comes out — fields, rule violations, lookups, write-backs — with what
//! the test expects. Lookups are resolved against the test's `records` when it has any.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::model::{Config, Expectation, Scalar, TestCase};
use crate::load::Checked;
use crate::mapping::lookup::{self, Outcome};
use crate::mapping::{Input, Mapped, Plan};

/// The result of one test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    /// The test's name.
    pub name: String,
    /// The flow it exercises.
    pub flow: String,
    /// Line of the test in the mapping file.
    pub line: u32,
    /// What did not match; empty when the test passed.
    pub failures: Vec<String>,
}

impl TestResult {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of a checked file whose name contains `filter` (all when `None`).
pub fn run(checked: &Checked, filter: Option<&str>) -> Vec<TestResult> {
    let (Some(config), Some(plan)) = (&checked.config, &checked.plan) else {
        return Vec::new();
    };
    let base_dir = Path::new(&checked.path).parent().unwrap_or(Path::new("."));
    config
        .tests
        .iter()
        .enumerate()
        .filter(|(_, t)| filter.is_none_or(|f| t.name.contains(f)))
        .map(|(i, t)| {
            let line = checked.spans.value_span(&format!("/tests/{i}")).line;
            let failures = match run_one(config, plan, t, base_dir) {
                Ok(f) => f,
                Err(e) => vec![e],
            };
            TestResult {
                name: t.name.clone(),
                flow: t.flow.clone(),
                line,
                failures,
            }
        })
        .collect()
}

fn run_one(
    config: &Config,
    plan: &Plan,
    test: &TestCase,
    base_dir: &Path,
) -> Result<Vec<String>, String> {
    let mut input = match (&test.input, &test.input_file) {
        (Some(v), _) => v.clone(),
        (None, Some(file)) => {
            let path = base_dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read input_file {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("input_file {} is not JSON: {e}", path.display()))?
        }
        (None, None) => return Err("the test has no input".into()),
    };
    for (path, value) in &test.set {
        set_dotted(&mut input, path, value.clone()).map_err(|e| format!("set {path}: {e}"))?;
    }
    for path in &test.remove {
        remove_dotted(&mut input, path);
    }
    let own_plan;
    let plan = if test.settings.is_empty() {
        plan
    } else {
        own_plan = plan_with_settings(config, plan, &test.settings)?;
        &own_plan
    };
    let flow = plan
        .flow(&test.flow)
        .ok_or_else(|| format!("unknown flow `{}`", test.flow))?;
    let record = Arc::new(input);
    let mapped = plan.evaluate(
        flow,
        &Input {
            record: &record,
            parent: test.parent.as_ref(),
            operation: test.operation,
        },
    );
    let mut failures = Vec::new();
    compare(
        plan,
        flow,
        &record,
        test,
        &test.expect,
        mapped,
        &mut failures,
    );
    Ok(failures)
}

fn plan_with_settings(
    config: &Config,
    plan: &Plan,
    overrides: &BTreeMap<String, Scalar>,
) -> Result<Plan, String> {
    let mut settings: Map<String, Value> = plan.settings().as_object().cloned().unwrap_or_default();
    for (k, v) in overrides {
        let Some(existing) = settings.get(k) else {
            return Err(format!("unknown setting `{k}` in the test's settings"));
        };
        let v = v.to_json();
        if existing.is_boolean() != v.is_boolean() && !existing.is_null() {
            return Err(format!(
                "setting `{k}` is {existing}, the test gives {v}: the types differ"
            ));
        }
        settings.insert(k.clone(), v);
    }
    Plan::compile(config, settings).map_err(|errors| {
        let msgs: Vec<String> = errors.into_iter().map(|e| e.message).collect();
        format!(
            "the test's settings make the mapping invalid: {}",
            msgs.join("; ")
        )
    })
}

fn compare(
    plan: &Plan,
    flow: &crate::mapping::FlowPlan,
    record: &Arc<Value>,
    test: &TestCase,
    expect: &Expectation,
    mut mapped: Mapped,
    failures: &mut Vec<String>,
) {
    let expected_skip = expect.skipped.unwrap_or(false);
    if mapped.skipped != expected_skip {
        failures.push(if mapped.skipped {
            "the flow skipped the record (its `when` is false), but the test expects it to be mapped".into()
        } else {
            "the test expects the record to be skipped, but the flow mapped it".into()
        });
        return;
    }
    let messages: Vec<String> = mapped
        .violations
        .iter()
        .map(|v| v.message.clone())
        .collect();
    let expected_violations = expect.violations.clone().unwrap_or_default();
    if messages != expected_violations {
        failures.push(format!(
            "violations: expected {}, got {}",
            serde_json::to_string(&expected_violations).unwrap_or_default(),
            serde_json::to_string(&messages).unwrap_or_default()
        ));
    }
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let input = Input {
        record,
        parent: test.parent.as_ref(),
        operation: test.operation,
    };
    let create = |name: &str| plan.lookup_create_text(flow, name, &input);
    if !test.records.is_empty() {
        for r in &mut mapped.records {
            outcomes.extend(lookup::resolve_offline(plan, r, &test.records, &create));
        }
    }
    let first = mapped.records.first().cloned().unwrap_or_default();
    for (k, v) in &expect.fields {
        match get_field(&first.fields, k) {
            Some(actual) if json_eq(actual, v) => {}
            Some(actual) => failures.push(format!("field `{k}`: expected {}, got {}", v, actual)),
            None => failures.push(format!("field `{k}`: expected {v}, but it is not written")),
        }
    }
    for k in &expect.absent {
        if let Some(actual) = get_field(&first.fields, k) {
            failures.push(format!(
                "field `{k}` should not be written, but is {actual}"
            ));
        }
    }
    if let Some(expected_records) = &expect.records {
        if expected_records.len() != mapped.records.len() {
            failures.push(format!(
                "expected {} records, got {}",
                expected_records.len(),
                mapped.records.len()
            ));
        }
        for (i, (exp, got)) in expected_records.iter().zip(&mapped.records).enumerate() {
            for (k, v) in exp {
                match get_field(&got.fields, k) {
                    Some(actual) if json_eq(actual, v) => {}
                    Some(actual) => failures.push(format!(
                        "record {i} field `{k}`: expected {v}, got {actual}"
                    )),
                    None => failures.push(format!(
                        "record {i} field `{k}`: expected {v}, but it is not written"
                    )),
                }
            }
        }
    }
    for (name, exp) in &expect.lookups {
        let Some(request) = first.lookups.iter().find(|l| &l.name == name) else {
            failures.push(format!(
                "lookup `{name}`: expected, but the record needs no such lookup"
            ));
            continue;
        };
        let got = serde_json::to_value(request).unwrap_or(Value::Null);
        let mut got = got.as_object().cloned().unwrap_or_default();
        if request.on_missing == crate::config::model::OnMissing::Create {
            match create(name) {
                Ok(fields) => {
                    got.insert("create".into(), Value::Object(fields));
                }
                Err(message) => failures.push(format!("lookup `{name}` create: {message}")),
            }
        }
        if let Some(o) = outcomes.get(name)
            && let Ok(Value::Object(om)) = serde_json::to_value(o)
        {
            got.extend(om);
        }
        match exp {
            Value::Object(exp) => {
                for (k, v) in exp {
                    match got.get(k) {
                        Some(actual) if subset(v, actual) => {}
                        Some(actual) => failures
                            .push(format!("lookup `{name}` {k}: expected {v}, got {actual}")),
                        None => {
                            failures.push(format!("lookup `{name}` {k}: expected {v}, got nothing"))
                        }
                    }
                }
            }
            other => failures.push(format!(
                "lookup `{name}`: expectation must be a mapping, got {other}"
            )),
        }
    }
    if !expect.on_failure.is_empty() {
        match plan.on_failure(flow, record, &mapped.violations) {
            Ok(fields) => check_fields("on_failure", &fields, &expect.on_failure, failures),
            Err(v) => failures.push(format!("on_failure could not be computed: {:?}", v)),
        }
    }
    if !expect.on_success.is_empty() {
        let result = test
            .result
            .clone()
            .unwrap_or_else(|| Value::Object(first.fields.clone()));
        match plan.on_success(flow, record, &result) {
            Ok(fields) => check_fields("on_success", &fields, &expect.on_success, failures),
            Err(v) => failures.push(format!("on_success could not be computed: {:?}", v)),
        }
    }
}

fn check_fields(
    what: &str,
    got: &Map<String, Value>,
    expected: &BTreeMap<String, Value>,
    failures: &mut Vec<String>,
) {
    for (k, v) in expected {
        match get_field(got, k) {
            Some(actual) if json_eq(actual, v) => {}
            Some(actual) => {
                failures.push(format!("{what} field `{k}`: expected {v}, got {actual}"))
            }
            None => failures.push(format!(
                "{what} field `{k}`: expected {v}, but it is not written"
            )),
        }
    }
}

/// A field by name, or by dotted path into nested objects.
fn get_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(v) = fields.get(key) {
        return Some(v);
    }
    let mut parts = key.split('.');
    let mut current = fields.get(parts.next()?)?;
    for p in parts {
        current = match current {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Equality where `50000` and `50000.0` are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `expected` is contained in `actual` (objects: every expected key matches).
fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|w| subset(v, w))),
        _ => json_eq(expected, actual),
    }
}

/// Sets a dotted path (`customerProfile.team.0.email`), creating objects on the way.
pub fn set_dotted(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err("empty path".into());
    };
    let mut current = root;
    for p in parents {
        current = match current {
            Value::Object(m) => m
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => {
                let i: usize = p
                    .parse()
                    .map_err(|_| format!("`{p}` is not an index into a list"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} is past the end of the list"))?
            }
            _ => {
                return Err(format!(
                    "`{p}` is inside a value that is not an object or list"
                ));
            }
        };
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
    }
    match current {
        Value::Object(m) => {
            m.insert(last.to_string(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not an index into a list"))?;
            let slot = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of the list"))?;
            *slot = value;
            Ok(())
        }
        _ => Err("the parent is not an object or list".into()),
    }
}

/// Removes a dotted path if present.
pub fn remove_dotted(root: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut current = root;
    for p in parents {
        let next = match current {
            Value::Object(m) => m.get_mut(*p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        match next {
            Some(n) => current = n,
            None => return,
        }
    }
    match current {
        Value::Object(m) => {
            m.remove(*last);
        }
        Value::Array(a) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}
