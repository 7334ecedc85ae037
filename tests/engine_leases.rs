//! A job that outlives its lease stays its worker's: the runner renews the lease while the
//! job runs, so a second worker (another instance on the same store) never runs the same
//! referral at the same time — even when the upstream is slow or throttles for minutes.

use std::time::Duration;

use cosell::config::model::CrmKind;
use cosell::engine::runner::{RunOptions, Runner};
use serde_json::json;

mod common;
#[path = "common/world.rs"]
mod world;
use world::world;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_keeps_its_lease_and_runs_once() {
    let w = world(CrmKind::Dynamics365).await;
    // Every call takes 250 ms: a new referral (find, write, Partner Center write-back) takes
    // three times the 300 ms lease.
    let (status, body) =
        common::control(w.base(), "/_sandbox/faults", &json!({ "latency_ms": 250 })).await;
    assert!(status.is_success(), "{status} {body}");
    let lease = Duration::from_millis(300);
    let instance = |name: &str| {
        Runner::new(
            w.engine.clone(),
            RunOptions {
                worker: name.into(),
                lease,
                ..RunOptions::default()
            },
        )
    };
    let (a, b) = (instance("a"), instance("b"));
    let rid = w.incoming("Slow upstream").await;
    w.engine
        .store()
        .enqueue(&cosell::store::NewJob::new(
            cosell::engine::inbox::referral_key(&rid),
            cosell::engine::inbox::PC_EVENT,
            json!({ "event": "referral-created", "referral_id": rid }),
        ))
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let first = a.drain();
    // The other instance keeps looking for work the whole time.
    let second = async {
        let mut done = 0;
        while started.elapsed() < Duration::from_secs(3) {
            done += b.drain().await.unwrap().done;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done
    };
    let (first, second) = tokio::join!(first, second);
    let first = first.unwrap();
    assert!(
        started.elapsed() > 2 * lease,
        "the job must outlive its lease for this test to mean anything"
    );
    assert_eq!(
        first.done + second,
        1,
        "the job ran once, on one of the instances (a: {}, b: {second})",
        first.done
    );
    let (opp, _) = w.opportunity_of(&rid).await;
    assert_eq!(w.referral(&rid).await["externalReferenceId"], json!(opp));
    assert_eq!(w.engine.store().inbox_stats().await.unwrap().leased, 0);
}
