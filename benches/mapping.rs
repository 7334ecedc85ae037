//! Per-referral cost of the default Partner Center → Dynamics 365 opportunity flow, JSON parse
//! excluded (the budget in design.md §8 is ≤ 2 µs per referral per core).
//!
//! Run: `cargo bench --bench mapping`.

use std::hint::black_box;
use std::sync::Arc;

use cosell::config::model::Operation;
use cosell::load;
use cosell::mapping::Input;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let root = env!("CARGO_MANIFEST_DIR");
    let checked = load::check_file(
        std::path::Path::new(&format!("{root}/mappings/dynamics365.yaml")),
        &[],
    )
    .unwrap();
    let plan = checked.plan.expect("shipped mapping compiles");
    let text = std::fs::read_to_string(format!(
        "{root}/mappings/examples/referral-doc-create-request.json"
    ))
    .unwrap();
    let mut referral: serde_json::Value = serde_json::from_str(&text).unwrap();
    referral["id"] = "4111fffc-f9ee-4d53-bba6-569135228642".into();
    let record = Arc::new(referral);

    let flow = plan.flow("referral_to_opportunity").unwrap();
    c.bench_function("map referral_to_opportunity (dynamics365)", |b| {
        b.iter(|| {
            let mapped = plan.evaluate(
                flow,
                &Input {
                    record: black_box(&record),
                    parent: None,
                    operation: Operation::Create,
                },
            );
            black_box(mapped)
        })
    });

    let opp_text = std::fs::read_to_string(format!(
        "{root}/mappings/examples/dynamics-opportunity.json"
    ))
    .unwrap();
    let opp = Arc::new(serde_json::from_str::<serde_json::Value>(&opp_text).unwrap());
    let back = plan.flow("opportunity_to_referral").unwrap();
    c.bench_function("map opportunity_to_referral (dynamics365)", |b| {
        b.iter(|| {
            let mapped = plan.evaluate(
                back,
                &Input {
                    record: black_box(&opp),
                    parent: None,
                    operation: Operation::Create,
                },
            );
            black_box(mapped)
        })
    });

    c.bench_function("parse referral JSON (for reference)", |b| {
        b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
