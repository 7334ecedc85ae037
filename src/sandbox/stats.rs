//! Call counters behind `GET /_sandbox/stats`: per API, per `METHOD path-template`, per
//! status code. Tests use them to prove API-call budgets ("an unchanged re-delivery costs
//! one read and no writes").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Most calls in progress at the same moment (a client's concurrency, as the service
    /// sees it).
    pub max_in_flight: u64,
    /// Most calls that arrived within any one second.
    pub peak_per_second: u64,
    /// Most calls that arrived within any sixty seconds.
    pub peak_per_minute: u64,
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
    load: Arc<Mutex<HashMap<Api, Load>>>,
}

/// Arrivals of the last minute and calls in progress, per API.
#[derive(Debug, Default)]
struct Load {
    arrivals: VecDeque<Instant>,
    in_flight: u64,
}

/// Held while a call is in progress; see [`Stats::enter`].
#[derive(Debug)]
pub struct InFlight {
    api: Api,
    load: Arc<Mutex<HashMap<Api, Load>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(load) = lock(&self.load).get_mut(&self.api) {
            load.in_flight = load.in_flight.saturating_sub(1);
        }
    }
}

impl Stats {
    /// Notes a call arriving for `api`: updates the concurrency and rate peaks. The call
    /// counts as in flight until the guard drops.
    pub fn enter(&self, api: Api) -> InFlight {
        let now = Instant::now();
        let (in_flight, per_second, per_minute) = {
            let mut loads = lock(&self.load);
            let load = loads.entry(api).or_default();
            load.in_flight += 1;
            load.arrivals.push_back(now);
            while load
                .arrivals
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                load.arrivals.pop_front();
            }
            let per_second = load
                .arrivals
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < Duration::from_secs(1))
                .count() as u64;
            (load.in_flight, per_second, load.arrivals.len() as u64)
        };
        {
            let mut inner = lock(&self.inner);
            let stats = inner.apis.entry(api.name()).or_default();
            stats.max_in_flight = stats.max_in_flight.max(in_flight);
            stats.peak_per_second = stats.peak_per_second.max(per_second);
            stats.peak_per_minute = stats.peak_per_minute.max(per_minute);
        }
        InFlight {
            api,
            load: Arc::clone(&self.load),
        }
    }

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

    /// Zeroes every counter and peak (calls in progress keep counting as in flight).
    pub fn reset(&self) {
        *lock(&self.inner) = Snapshot::default();
        for load in lock(&self.load).values_mut() {
            load.arrivals.clear();
        }
    }
}
