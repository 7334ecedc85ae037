//! `config_loader`: the bytes are a mapping file, checked the way `cosell validate` checks
//! one (YAML → JSON Schema → typed model → settings → compilation), its diagnostics rendered
//! as text and as JSON. A file that compiles is then evaluated on the documented referral
//! through every flow, and its inline tests run when they need no other file.

use std::sync::Arc;

use cosell::config::diagnostic::{self, Severity};
use cosell::config::model::Operation;
use cosell::load;
use cosell::mapping::Input;
use serde_json::Value;

/// The documented referral (Partner Center API reference), the input every compiled flow
/// is evaluated on.
const REFERRAL: &str = include_str!("../../mappings/examples/referral-doc-get-response.json");

pub fn run(data: &[u8]) {
    let checked = load::check_bytes("fuzz.yaml", data, &[]);
    let source = checked.source();
    let _ = diagnostic::render(&source, &checked.diagnostics, false);
    let _ = diagnostic::render(&source, &checked.diagnostics, true);
    for d in &checked.diagnostics {
        let _ = diagnostic::to_json(&source, d);
        // Every located problem points inside the text it was found in.
        if let Some(span) = d.span {
            assert!(
                span.line >= 1 && span.offset <= checked.text.len() + 1,
                "diagnostic outside the file: {d:?}"
            );
        }
    }
    let Some(plan) = &checked.plan else {
        return;
    };
    assert!(
        !checked
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error),
        "a plan despite errors: {:?}",
        checked.diagnostics
    );
    let referral: Value = serde_json::from_str(REFERRAL).expect("the example referral is JSON");
    let record = Arc::new(referral);
    for flow in plan.flows() {
        for operation in [Operation::Create, Operation::Update] {
            let _ = plan.evaluate(
                flow,
                &Input {
                    record: &record,
                    parent: Some(&record),
                    operation,
                },
            );
        }
    }
    // Inline tests, unless one reads an input file: the fuzzer's paths could name anything.
    let self_contained = checked
        .config
        .as_ref()
        .is_some_and(|c| c.tests.iter().all(|t| t.input_file.is_none()));
    if self_contained {
        let _ = cosell::testing::run(&checked, None);
    }
}
