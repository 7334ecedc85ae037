//! Hostile input never panics and never uses unbounded memory: mutated mapping files through
//! the loader, arbitrary JSON records through every shipped flow.

use std::path::Path;
use std::sync::Arc;

use cosell::config::model::Operation;
use cosell::load;
use cosell::mapping::Input;
use proptest::prelude::*;
use serde_json::Value;

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("mappings")
            .join(name),
    )
    .unwrap()
}

/// Arbitrary JSON, biased towards the shapes referrals have.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9 ✔✘é/._-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("US"),
            Just("usa"),
            Just("Narnia"),
            Just("2018-11-14T00:00:00Z"),
            Just("Shared"),
            Just("New")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("name"),
            Just("type"),
            Just("status"),
            Just("substatus"),
            Just("details"),
            Just("dealValue"),
            Just("customerProfile"),
            Just("address"),
            Just("country"),
            Just("team"),
            Just("email"),
            Just("solutions"),
            Just("requirements"),
            Just("closingDateTime"),
            Just("currency"),
            Just("parentaccountid"),
            Just("statuscode"),
            Just("cosell_microsofthelp"),
            Just("cosell_opportunity_solutions"),
            Just("Account"),
            Just("x")
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_string), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_flow_survives_arbitrary_records(record in json(), update in any::<bool>()) {
        for file in ["dynamics365.yaml", "salesforce.yaml"] {
            let checked = load::check_bytes(file, shipped(file).as_bytes(), &[]);
            let plan = checked.plan.as_ref().expect("shipped mapping compiles");
            let record = Arc::new(record.clone());
            let parent = serde_json::json!({"id": "p", "engagementId": "e", "opportunityid": "o", "Id": "i"});
            for flow in plan.flows() {
                let op = if update { Operation::Update } else { Operation::Create };
                let _ = plan.evaluate(flow, &Input { record: &record, parent: Some(&parent), operation: op });
            }
        }
    }

    #[test]
    fn mutated_mapping_files_never_panic(pos in any::<prop::sample::Index>(), len in 0usize..40, insert in "[ -~\\n\\t{}\\[\\]:$&*!|>%#'\"]{0,40}") {
        let original = shipped("dynamics365.yaml");
        let bytes = original.as_bytes();
        let at = pos.index(bytes.len());
        let end = (at + len).min(bytes.len());
        let mut mutated = bytes[..at].to_vec();
        mutated.extend_from_slice(insert.as_bytes());
        mutated.extend_from_slice(&bytes[end..]);
        let checked = load::check_bytes("mutated.yaml", &mutated, &[]);
        // Either valid, or every error has a position inside the file.
        for d in &checked.diagnostics {
            if let Some(span) = d.span {
                prop_assert!(span.line >= 1 && span.offset <= mutated.len() + 1, "{d:?}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = load::check_bytes("random.yaml", &bytes, &[]);
    }
}

#[test]
fn huge_and_deep_inputs_are_rejected_quickly() {
    // Deeply nested YAML.
    let deep = format!(
        "version: 1\nx: {}{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let checked = load::check_bytes("deep.yaml", deep.as_bytes(), &[]);
    assert!(checked.has_errors());
    // Alias expansion bomb.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        bomb.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    let started = std::time::Instant::now();
    let checked = load::check_bytes("bomb.yaml", bomb.as_bytes(), &[]);
    assert!(checked.has_errors());
    assert!(
        started.elapsed().as_secs() < 10,
        "alias bomb took {:?}",
        started.elapsed()
    );
    // A huge but flat file is fine up to the size limit, then an error.
    let big = format!("version: 1\n# {}\n", "x".repeat(9 * 1024 * 1024));
    let checked = load::check_bytes("big.yaml", big.as_bytes(), &[]);
    assert!(checked.has_errors());
}

#[test]
fn deeply_nested_records_are_mapped_without_stack_overflow() {
    let checked = load::check_bytes("d.yaml", shipped("dynamics365.yaml").as_bytes(), &[]);
    let plan = checked.plan.unwrap();
    // Built by hand: `json!` would serialize (recursively) the value it wraps.
    let mut v = serde_json::json!({"x": 1});
    for _ in 0..10_000 {
        let mut m = serde_json::Map::new();
        m.insert("details".to_string(), v);
        v = Value::Object(m);
    }
    let record = Arc::new(v);
    for flow in plan.flows() {
        let _ = plan.evaluate(
            flow,
            &Input {
                record: &record,
                parent: None,
                operation: Operation::Create,
            },
        );
    }
    // Dropping a 10 000-deep serde_json value recurses; do it on a thread with a big stack.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || drop(record))
        .unwrap()
        .join()
        .unwrap();
}
