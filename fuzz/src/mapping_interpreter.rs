//! `mapping_interpreter`: the shipped mappings (compiled once) interpret fuzzed records, and
//! fuzzed expressions and templates are compiled and evaluated on their own.
//!
//! The first byte picks the mode (the rest is the payload):
//! - `b'c'` / `b'u'`: the payload is a JSON record, mapped through every flow of both shipped
//!   mappings as a create / an update, with a parent record; then the lookups it asked for
//!   are "created", and the write-backs run as after a success and after a failure. Any
//!   other byte does the same, as an update when its bit 0 is clear, without a parent when
//!   its bit 2 is set;
//! - `b'e'`: `EXPRESSION\n---\nJSON`: the expression is compiled and evaluated on the record
//!   (as `referral`, `parent`, `item`) both as a value and as a condition;
//! - `b't'`: `TEMPLATE\n---\nJSON`: the template is rendered by the fast path and by
//!   minijinja, which must agree (the fast path is an optimisation, never a different
//!   meaning).
//!
//! Inputs that are not JSON are skipped: the interpreter is only ever given parsed records.

use std::sync::{Arc, OnceLock};

use cosell::config::model::Operation;
use cosell::load;
use cosell::mapping::template::{Engine, VarValue, Vars, json_to_minijinja_eager};
use cosell::mapping::{Input, Plan};
use serde_json::{Value, json};

/// Separates the expression or template from the JSON record in `e` and `t` inputs.
const SEPARATOR: &[u8] = b"\n---\n";
/// Put before a template so minijinja renders it (the fast path refuses `{% … %}`). Before,
/// not after: minijinja drops one trailing newline of a template, so a suffix would change
/// what the source's end renders to.
const FORCE_MINIJINJA: &str = "{% if false %}{% endif %}";

fn plans() -> &'static [Plan] {
    static PLANS: OnceLock<Vec<Plan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        [
            (
                "dynamics365.yaml",
                include_str!("../../mappings/dynamics365.yaml"),
            ),
            (
                "salesforce.yaml",
                include_str!("../../mappings/salesforce.yaml"),
            ),
        ]
        .into_iter()
        .map(|(name, text)| {
            let checked = load::check_bytes(name, text.as_bytes(), &[]);
            checked
                .plan
                .unwrap_or_else(|| panic!("{name} compiles: {:?}", checked.diagnostics))
        })
        .collect()
    })
}

pub fn run(data: &[u8]) {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode {
        b'e' => expression(payload),
        b't' => template(payload),
        _ => {
            let Ok(record) = serde_json::from_slice::<Value>(payload) else {
                return;
            };
            let (operation, with_parent) = match mode {
                b'c' => (Operation::Create, true),
                b'u' => (Operation::Update, true),
                _ if mode & 1 == 0 => (Operation::Update, mode & 4 == 0),
                _ => (Operation::Create, mode & 4 == 0),
            };
            record_through_flows(record, operation, with_parent);
        }
    }
}

/// Maps `record` through every flow of every shipped plan, then the lookup creations and
/// write-backs the engine would run next.
pub fn record_through_flows(record: Value, operation: Operation, with_parent: bool) {
    let record = Arc::new(record);
    let parent = json!({"id": "p", "engagementId": "e", "opportunityid": "o", "Id": "i"});
    let input = Input {
        record: &record,
        parent: with_parent.then_some(&parent),
        operation,
    };
    for plan in plans() {
        for flow in plan.flows() {
            let mapped = plan.evaluate(flow, &input);
            for target in &mapped.records {
                for lookup in &target.lookups {
                    let _ = plan.lookup_create(flow, &lookup.name, &input, Some(&record));
                    let _ =
                        plan.lookup_result(&lookup.name, "00000000-0000-0000-0000-000000000001");
                }
            }
            let _ = plan.on_success(flow, &record, &record);
            let _ = plan.on_failure(flow, &record, &mapped.violations);
        }
    }
}

/// Splits `SOURCE\n---\nJSON`; `None` when the source is not UTF-8 or the record not JSON.
fn source_and_record(payload: &[u8]) -> Option<(&str, Arc<Value>)> {
    let at = payload
        .windows(SEPARATOR.len())
        .position(|w| w == SEPARATOR)?;
    let source = std::str::from_utf8(&payload[..at]).ok()?;
    let record = serde_json::from_slice(&payload[at + SEPARATOR.len()..]).ok()?;
    Some((source, Arc::new(record)))
}

fn with_vars<R>(record: &Arc<Value>, f: impl FnOnce(&Vars<'_>) -> R) -> R {
    let settings = json!({"checkmark_in_name": true, "deal_value_field": "estimatedvalue"});
    let prepared = json_to_minijinja_eager(&settings);
    let vars = Vars {
        entries: vec![
            ("referral", VarValue::Shared(record)),
            ("parent", VarValue::Borrowed(record.as_ref())),
            ("item", VarValue::Borrowed(record.as_ref())),
            ("settings", VarValue::Prepared(&settings, &prepared)),
        ],
    };
    f(&vars)
}

fn expression(payload: &[u8]) {
    let Some((source, record)) = source_and_record(payload) else {
        return;
    };
    let mut engine = Engine::new();
    let Ok(expression) = engine.expression(source) else {
        return;
    };
    with_vars(&record, |vars| {
        let _ = engine.eval(&expression, vars);
        let _ = engine.is_true(&expression, vars);
    });
}

fn template(payload: &[u8]) {
    let Some((source, record)) = source_and_record(payload) else {
        return;
    };
    let mut engine = Engine::new();
    let Ok(fast) = engine.template(source) else {
        return;
    };
    let slow = engine.template(&format!("{FORCE_MINIJINJA}{source}"));
    with_vars(&record, |vars| {
        let fast_out = engine.render(&fast, vars);
        if !fast.is_fast() {
            return;
        }
        let Ok(slow) = slow else {
            return;
        };
        let slow_out = engine.render(&slow, vars);
        match (&fast_out, &slow_out) {
            (Ok(f), Ok(s)) => assert_eq!(f, s, "fast path and minijinja disagree on {source:?}"),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                panic!(
                    "fast path and minijinja disagree on {source:?}: {fast_out:?} vs {slow_out:?}"
                )
            }
            (Err(_), Err(_)) => {}
        }
    });
}
