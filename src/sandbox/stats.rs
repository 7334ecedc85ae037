//! Call counters behind `GET /_sandbox/stats`: per API, per `METHOD path-template`, per
//! status code. Tests use them to prove API-call budgets ("an unchanged re-delivery costs
//! one read and no writes").

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use super::{Api, lock};

/// Counters of one endpoint (`GET /v1.0/engagements/referrals/{id}`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EndpointStats {
    /// Calls received.
    pub calls: u64,
    /// Calls per response status; `reset` counts connections dropped by a fault.
    pub status: BTreeMap<String, u64>,
}

/// Counters of one API.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ApiStats {
    /// Calls received.
    pub calls: u64,
    /// Calls per response status.
    pub status: BTreeMap<String, u64>,
    /// Calls per `METHOD template`.
    pub endpoints: BTreeMap<String, EndpointStats>,
}

/// All counters, as `/_sandbox/stats` returns them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls to every API.
    pub total_calls: u64,
    /// Per API, keyed by [`Api::name`].
    pub apis: BTreeMap<&'static str, ApiStats>,
}

impl Snapshot {
    /// Calls to `api` (0 when none).
    pub fn calls(&self, api: Api) -> u64 {
        self.apis.get(api.name()).map_or(0, |a| a.calls)
    }

    /// Calls to `api` with this method (`GET`, `PATCH`, …).
    pub fn calls_with_method(&self, api: Api, method: &str) -> u64 {
        self.apis.get(api.name()).map_or(0, |a| {
            a.endpoints
                .iter()
                .filter(|(key, _)| key.split(' ').next() == Some(method))
                .map(|(_, e)| e.calls)
                .sum()
        })
    }
}

/// Thread-safe counters.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Snapshot>,
}

impl Stats {
    /// Counts one call; `status` is `None` when the connection was reset.
    pub fn record(&self, api: Api, method: &str, endpoint: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "reset".to_owned(), |s| s.to_string());
        let mut inner = lock(&self.inner);
        inner.total_calls += 1;
        let api_stats = inner.apis.entry(api.name()).or_default();
        api_stats.calls += 1;
        *api_stats.status.entry(status.clone()).or_default() += 1;
        let endpoint = api_stats
            .endpoints
            .entry(format!("{method} {endpoint}"))
            .or_default();
        endpoint.calls += 1;
        *endpoint.status.entry(status).or_default() += 1;
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.inner).clone()
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        *lock(&self.inner) = Snapshot::default();
    }
}
