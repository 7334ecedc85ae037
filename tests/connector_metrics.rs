//! Every upstream call is measured: a counter by API / operation / status, a latency
//! histogram, and the budget's remaining daily allocation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosell::config::model::Budget;
use cosell::connectors::Secret;
use cosell::connectors::auth::TokenSource;
use cosell::connectors::http::{Request, Upstream, UpstreamOptions};
use cosell::sandbox::{self, SandboxOptions};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Values by `name{label=value,…}`.
type Values = Arc<Mutex<BTreeMap<String, f64>>>;

struct Cell {
    key: String,
    values: Values,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.values
            .lock()
            .unwrap()
            .insert(self.key.clone(), value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.values.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        // Count the samples: that is what proves every call was timed.
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += 1.0;
    }
}

#[derive(Default)]
struct Collect {
    values: Values,
}

impl Collect {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Cell {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: Arc::clone(&self.values),
        })
    }
}

impl Recorder for Collect {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

#[test]
fn calls_are_counted_timed_and_the_budget_reported() {
    let recorder = Collect::default();
    let values = Arc::clone(&recorder.values);
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
            let base = handle.base_url();
            let mut options = UpstreamOptions::new("partner_center", base);
            options.allow_insecure_http = true;
            options.budget = Budget {
                per_day: Some(10_000),
                ..Budget::default()
            };
            options.retry.base_delay = Duration::from_millis(10);
            let http = cosell::connectors::http::http_client(&options).unwrap();
            let tokens = TokenSource::entra_client_credentials(
                "partner_center",
                base,
                "contoso",
                "cosell-sandbox",
                Secret::new("sandbox-secret"),
                "https://api.partner.microsoft.com/.default",
                http,
            );
            let upstream = Upstream::new(options, Some(tokens)).unwrap();
            for _ in 0..3 {
                upstream
                    .send(Request::get(
                        "list_referrals",
                        "/v1.0/engagements/referrals",
                    ))
                    .await
                    .unwrap();
            }
            let missing = upstream
                .send(Request::get(
                    "get_referral",
                    "/v1.0/engagements/referrals/nope",
                ))
                .await;
            assert!(missing.is_err());
        });
    });
    let values = values.lock().unwrap().clone();
    let get = |key: &str| values.get(key).copied().unwrap_or_default();
    assert_eq!(
        get("cosell_upstream_calls_total{api=partner_center,operation=list_referrals,status=200}"),
        3.0,
        "{values:#?}"
    );
    assert_eq!(
        get("cosell_upstream_calls_total{api=partner_center,operation=get_referral,status=404}"),
        1.0,
        "{values:#?}"
    );
    assert_eq!(
        get("cosell_upstream_call_duration_seconds{api=partner_center,operation=list_referrals}"),
        3.0,
        "{values:#?}"
    );
    assert_eq!(
        get("cosell_upstream_budget_remaining{api=partner_center}"),
        9_996.0,
        "{values:#?}"
    );
}
