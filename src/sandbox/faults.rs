//! Fault injection and service-protection quotas.
//!
//! `POST /_sandbox/faults` merges a JSON document into the current [`FaultSettings`] (so
//! `{"dataverse":{"fail_next":3,"status":429}}` touches nothing else); `DELETE` restores
//! the defaults. The quotas are the services' real limits and are on by default:
//! Dataverse's 6,000 requests per 5-minute window and 52 concurrent requests (429 +
//! `Retry-After`), Salesforce's daily API allocation (403 `REQUEST_LIMIT_EXCEEDED`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Api, Rng, lock};

/// Everything `/_sandbox/faults` can set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Latency in milliseconds added to every API call; overrides `--latency-ms`.
    pub latency_ms: Option<u64>,
    /// Faults of the Entra ID token endpoint.
    pub entra_id: ApiFaults,
    /// Faults of the Partner Center referrals API.
    pub partner_center: ApiFaults,
    /// Faults of the Partner Center webhook registration API.
    pub partner_center_webhooks: ApiFaults,
    /// Faults of the Dataverse Web API.
    pub dataverse: ApiFaults,
    /// Faults of the Salesforce token endpoint.
    pub salesforce_auth: ApiFaults,
    /// Faults of the Salesforce REST API.
    pub salesforce: ApiFaults,
    /// Webhook deliveries that never leave the sandbox (a missed webhook).
    pub webhooks: WebhookFaults,
    /// Service-protection limits.
    pub quota: Quotas,
}

/// Faults of one API. Deterministic counters (`fail_next`, `reset_next`) are consumed
/// first; the rates then apply to every call, drawn from the seeded generator.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiFaults {
    /// Latency in milliseconds for this API only; overrides `latency_ms`.
    pub latency_ms: Option<u64>,
    /// Fail this many next calls with `status`.
    pub fail_next: u64,
    /// Fraction (0–1) of calls failed with `status`.
    pub error_rate: f64,
    /// Status of injected failures: 429, 500 or 503 (Salesforce answers 429 as its 403
    /// `REQUEST_LIMIT_EXCEEDED` of the concurrent-request limit).
    pub status: u16,
    /// `Retry-After` seconds sent with injected 429 and 503 (not by Salesforce).
    pub retry_after_seconds: u64,
    /// Drop the connection without answering on this many next calls.
    pub reset_next: u64,
    /// Fraction (0–1) of calls whose connection is dropped without an answer.
    pub reset_rate: f64,
    /// Further failure mixes drawn independently of `error_rate`, e.g. 20 % 429 with
    /// `Retry-After: 1` plus 10 % 503: `[{"rate":0.2,"status":429,"retry_after_seconds":1},
    /// {"rate":0.1,"status":503}]`. The rates of one call add up (at most 1 in total).
    pub errors: Vec<ErrorMix>,
    /// Fraction (0–1) of calls the service carries out but answers only after
    /// `timeout_ms`: longer than a client waits, so the client sees a timeout without
    /// knowing whether its write happened — the case a retried create must survive
    /// without writing twice.
    pub timeout_rate: f64,
    /// How long a timed-out call holds its answer, in milliseconds.
    pub timeout_ms: u64,
}

/// One kind of injected failure and how often it happens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorMix {
    /// Fraction (0–1) of calls answered with `status`.
    pub rate: f64,
    /// 429, 500 or 503.
    pub status: u16,
    /// `Retry-After` seconds for 429 and 503 (default 1).
    #[serde(default = "one")]
    pub retry_after_seconds: u64,
}

fn one() -> u64 {
    1
}

impl Default for ApiFaults {
    fn default() -> Self {
        ApiFaults {
            latency_ms: None,
            fail_next: 0,
            error_rate: 0.0,
            status: 503,
            retry_after_seconds: 1,
            reset_next: 0,
            reset_rate: 0.0,
            errors: Vec::new(),
            timeout_rate: 0.0,
            timeout_ms: 30_000,
        }
    }
}

/// Webhook faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookFaults {
    /// Silently drop this many next events (they are never delivered nor queued).
    pub drop_next: u64,
    /// Fraction (0–1) of events dropped.
    pub drop_rate: f64,
}

/// Service-protection limits, as the real services enforce them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Dataverse: requests per sliding window (real: 6,000 per 300 s per user).
    pub dataverse_requests_per_window: u64,
    /// Dataverse: window length in seconds.
    pub dataverse_window_seconds: u64,
    /// Dataverse: concurrent requests (real: 52); more answer 429 at once.
    pub dataverse_concurrent_requests: u64,
    /// Salesforce: API requests per rolling 24 hours (the org's allocation).
    pub salesforce_daily_requests: u64,
    /// Partner Center: requests per minute before 429 (undocumented upstream; off when
    /// absent).
    pub partner_center_requests_per_minute: Option<u64>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            dataverse_requests_per_window: 6000,
            dataverse_window_seconds: 300,
            dataverse_concurrent_requests: 52,
            salesforce_daily_requests: 100_000,
            partner_center_requests_per_minute: None,
        }
    }
}

/// What [`Faults::decide`] injects into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Close the connection without a response.
    Reset,
    /// Carry the call out, then hold the answer this long (the client times out).
    Timeout(Duration),
    /// Answer with this status in the API's error shape.
    Error {
        /// 429, 500 or 503.
        status: StatusCode,
        /// `Retry-After` value.
        retry_after_seconds: u64,
    },
}

/// Live fault settings plus the quota counters.
#[derive(Debug, Default)]
pub struct Faults {
    settings: Mutex<FaultSettings>,
    dataverse_calls: Mutex<VecDeque<SystemTime>>,
    dataverse_in_flight: Arc<AtomicU64>,
    salesforce_used: Mutex<VecDeque<SystemTime>>,
    partner_center_calls: Mutex<VecDeque<SystemTime>>,
    webhooks_dropped: AtomicU64,
    injected: Mutex<InjectedCounts>,
}

/// Faults injected since the last reset, by kind (`GET /_sandbox/stats`,
/// `faults_injected`): what a fault-injection run reports next to its results.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectedCounts {
    /// 429 answers (Salesforce: 403 `REQUEST_LIMIT_EXCEEDED`).
    pub throttled: u64,
    /// 503 answers.
    pub unavailable: u64,
    /// 500 answers.
    pub internal_errors: u64,
    /// Connections dropped without an answer.
    pub resets: u64,
    /// Calls carried out whose answer came too late.
    pub timeouts: u64,
}

impl InjectedCounts {
    /// Every injected fault.
    pub fn total(&self) -> u64 {
        self.throttled + self.unavailable + self.internal_errors + self.resets + self.timeouts
    }

    fn count(&mut self, injected: &Injected) {
        match injected {
            Injected::Reset => self.resets += 1,
            Injected::Timeout(_) => self.timeouts += 1,
            Injected::Error { status, .. } => match status.as_u16() {
                429 => self.throttled += 1,
                503 => self.unavailable += 1,
                _ => self.internal_errors += 1,
            },
        }
    }
}

/// Held while a Dataverse call runs; releases its concurrency slot on drop.
#[derive(Debug)]
pub struct ConcurrencyPermit(Arc<AtomicU64>);

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Faults {
    /// The current settings.
    pub fn settings(&self) -> FaultSettings {
        lock(&self.settings).clone()
    }

    /// Replaces the settings.
    pub fn set(&self, settings: FaultSettings) {
        *lock(&self.settings) = settings;
    }

    /// Merges a JSON document (RFC 7386 merge patch) into the settings. On error nothing
    /// changes and the message names the offending field.
    pub fn merge(&self, patch: &Value) -> Result<FaultSettings, String> {
        let mut settings = lock(&self.settings);
        let mut current = serde_json::to_value(&*settings).map_err(|e| e.to_string())?;
        merge_patch(&mut current, patch);
        let updated: FaultSettings = serde_path_to_error::deserialize(current).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.inner())
        })?;
        validate(&updated)?;
        *settings = updated.clone();
        Ok(updated)
    }

    /// Back to defaults; counters restart.
    pub fn reset(&self) {
        self.set(FaultSettings::default());
        lock(&self.dataverse_calls).clear();
        lock(&self.salesforce_used).clear();
        lock(&self.partner_center_calls).clear();
        self.webhooks_dropped.store(0, Ordering::Relaxed);
        *lock(&self.injected) = InjectedCounts::default();
    }

    /// Faults injected since the last reset.
    pub fn injected(&self) -> InjectedCounts {
        *lock(&self.injected)
    }

    /// Latency configured for `api`, if any.
    pub fn latency(&self, api: Api) -> Option<Duration> {
        let settings = lock(&self.settings);
        per_api(&settings, api)
            .and_then(|f| f.latency_ms)
            .or(settings.latency_ms)
            .map(Duration::from_millis)
    }

    /// Whether to reset, fail or time out this call; counted in [`Faults::injected`].
    pub fn decide(&self, api: Api, rng: &mut Rng) -> Option<Injected> {
        let injected = self.choose(api, rng)?;
        lock(&self.injected).count(&injected);
        Some(injected)
    }

    fn choose(&self, api: Api, rng: &mut Rng) -> Option<Injected> {
        let mut settings = lock(&self.settings);
        let faults = per_api_mut(&mut settings, api)?;
        if faults.reset_next > 0 {
            faults.reset_next -= 1;
            return Some(Injected::Reset);
        }
        let fail = if faults.fail_next > 0 {
            faults.fail_next -= 1;
            true
        } else {
            rng.chance(faults.error_rate)
        };
        if fail {
            return Some(Injected::Error {
                status: StatusCode::from_u16(faults.status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                retry_after_seconds: faults.retry_after_seconds,
            });
        }
        if !faults.errors.is_empty() {
            // One draw for the whole mix, so the rates partition the calls.
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let mut cumulative = 0.0;
            for mix in &faults.errors {
                cumulative += mix.rate;
                if draw < cumulative {
                    return Some(Injected::Error {
                        status: StatusCode::from_u16(mix.status)
                            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        retry_after_seconds: mix.retry_after_seconds,
                    });
                }
            }
        }
        if rng.chance(faults.reset_rate) {
            return Some(Injected::Reset);
        }
        if rng.chance(faults.timeout_rate) {
            return Some(Injected::Timeout(Duration::from_millis(faults.timeout_ms)));
        }
        None
    }

    /// Whether the next webhook event is dropped.
    pub fn drop_webhook(&self, rng: &mut Rng) -> bool {
        let mut settings = lock(&self.settings);
        let drop = if settings.webhooks.drop_next > 0 {
            settings.webhooks.drop_next -= 1;
            true
        } else {
            rng.chance(settings.webhooks.drop_rate)
        };
        if drop {
            self.webhooks_dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop
    }

    /// Webhook events dropped by faults since the last reset.
    pub fn webhooks_dropped(&self) -> u64 {
        self.webhooks_dropped.load(Ordering::Relaxed)
    }

    /// Salesforce API requests used in the last 24 hours and the allocation.
    pub fn salesforce_usage(&self) -> (u64, u64) {
        let max = lock(&self.settings).quota.salesforce_daily_requests;
        let used = lock(&self.salesforce_used).len() as u64;
        (used, max)
    }

    /// Counts an authenticated call against the API's quota, or refuses it the way the
    /// service does.
    pub fn take_quota(
        &self,
        api: Api,
        now: SystemTime,
    ) -> Result<Option<ConcurrencyPermit>, Response> {
        let quota = lock(&self.settings).quota.clone();
        match api {
            Api::Dataverse => {
                let in_flight = self.dataverse_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                let permit = ConcurrencyPermit(Arc::clone(&self.dataverse_in_flight));
                if in_flight > quota.dataverse_concurrent_requests {
                    return Err(throttled(
                        Api::Dataverse,
                        "0x80072326",
                        &format!(
                            "Number of concurrent requests exceeded the limit of {}.",
                            quota.dataverse_concurrent_requests
                        ),
                        1,
                    ));
                }
                let window = Duration::from_secs(quota.dataverse_window_seconds.max(1));
                let mut calls = lock(&self.dataverse_calls);
                if let Some(retry) =
                    sliding_window(&mut calls, now, window, quota.dataverse_requests_per_window)
                {
                    return Err(throttled(
                        Api::Dataverse,
                        "0x80072322",
                        &format!(
                            "Number of requests exceeded the limit of {} over time window of {} seconds.",
                            quota.dataverse_requests_per_window, quota.dataverse_window_seconds
                        ),
                        retry,
                    ));
                }
                Ok(Some(permit))
            }
            Api::Salesforce => {
                let mut used = lock(&self.salesforce_used);
                if sliding_window(
                    &mut used,
                    now,
                    Duration::from_secs(86_400),
                    quota.salesforce_daily_requests,
                )
                .is_some()
                {
                    return Err(Api::Salesforce.error(
                        StatusCode::FORBIDDEN,
                        "REQUEST_LIMIT_EXCEEDED",
                        "TotalRequests Limit exceeded.",
                    ));
                }
                Ok(None)
            }
            Api::PartnerCenter => {
                let Some(limit) = quota.partner_center_requests_per_minute else {
                    return Ok(None);
                };
                let mut calls = lock(&self.partner_center_calls);
                if let Some(retry) = sliding_window(&mut calls, now, Duration::from_secs(60), limit)
                {
                    return Err(throttled(
                        Api::PartnerCenter,
                        "tooManyRequests",
                        "Client application has been throttled and should not attempt to repeat the request until an amount of time has elapsed.",
                        retry,
                    ));
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// Counts a call at `now` in a sliding window of `limit` calls per `window`. `Some(secs)`
/// when the window is full: the call is not counted and may be retried after `secs`.
fn sliding_window(
    calls: &mut VecDeque<SystemTime>,
    now: SystemTime,
    window: Duration,
    limit: u64,
) -> Option<u64> {
    while let Some(oldest) = calls.front() {
        if now.duration_since(*oldest).unwrap_or_default() >= window {
            calls.pop_front();
        } else {
            break;
        }
    }
    if calls.len() as u64 >= limit {
        let oldest = calls.front().copied().unwrap_or(now);
        let elapsed = now.duration_since(oldest).unwrap_or_default();
        let wait = window.saturating_sub(elapsed);
        // Round up: a client honouring Retry-After must find room when it comes back.
        return Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1));
    }
    calls.push_back(now);
    None
}

fn throttled(api: Api, code: &str, message: &str, retry_after: u64) -> Response {
    let mut response = api.error(StatusCode::TOO_MANY_REQUESTS, code, message);
    if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn per_api(settings: &FaultSettings, api: Api) -> Option<&ApiFaults> {
    Some(match api {
        Api::EntraId => &settings.entra_id,
        Api::PartnerCenter => &settings.partner_center,
        Api::PartnerCenterWebhooks => &settings.partner_center_webhooks,
        Api::Dataverse => &settings.dataverse,
        Api::SalesforceAuth => &settings.salesforce_auth,
        Api::Salesforce => &settings.salesforce,
        Api::Control => return None,
    })
}

fn per_api_mut(settings: &mut FaultSettings, api: Api) -> Option<&mut ApiFaults> {
    Some(match api {
        Api::EntraId => &mut settings.entra_id,
        Api::PartnerCenter => &mut settings.partner_center,
        Api::PartnerCenterWebhooks => &mut settings.partner_center_webhooks,
        Api::Dataverse => &mut settings.dataverse,
        Api::SalesforceAuth => &mut settings.salesforce_auth,
        Api::Salesforce => &mut settings.salesforce,
        Api::Control => return None,
    })
}

fn validate(settings: &FaultSettings) -> Result<(), String> {
    for api in Api::ALL {
        let Some(faults) = per_api(settings, api) else {
            continue;
        };
        if !matches!(faults.status, 429 | 500 | 503) {
            return Err(format!(
                "{}.status: {} is not one of 429, 500, 503",
                api.name(),
                faults.status
            ));
        }
        let mut mixed = 0.0;
        for (index, mix) in faults.errors.iter().enumerate() {
            if !matches!(mix.status, 429 | 500 | 503) {
                return Err(format!(
                    "{}.errors[{index}].status: {} is not one of 429, 500, 503",
                    api.name(),
                    mix.status
                ));
            }
            mixed += mix.rate;
        }
        for (name, rate) in [
            ("error_rate", faults.error_rate),
            ("reset_rate", faults.reset_rate),
            ("timeout_rate", faults.timeout_rate),
            ("errors (sum of rates)", mixed),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "{}.{name}: {rate} is not between 0 and 1",
                    api.name()
                ));
            }
        }
    }
    if !(0.0..=1.0).contains(&settings.webhooks.drop_rate) {
        return Err(format!(
            "webhooks.drop_rate: {} is not between 0 and 1",
            settings.webhooks.drop_rate
        ));
    }
    if settings.quota.dataverse_window_seconds == 0 {
        return Err("quota.dataverse_window_seconds: must be at least 1".to_owned());
    }
    Ok(())
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in entries {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_touches_only_named_fields_and_rejects_unknown_ones() {
        let faults = Faults::default();
        let merged = faults
            .merge(&serde_json::json!({"dataverse": {"fail_next": 2, "status": 429}}))
            .unwrap();
        assert_eq!(merged.dataverse.fail_next, 2);
        assert_eq!(merged.salesforce, ApiFaults::default());
        let error = faults
            .merge(&serde_json::json!({"dataverse": {"fail_nxt": 1}}))
            .unwrap_err();
        assert!(error.contains("fail_nxt"), "{error}");
        let error = faults
            .merge(&serde_json::json!({"salesforce": {"status": 404}}))
            .unwrap_err();
        assert!(error.contains("salesforce.status"), "{error}");
        assert_eq!(
            faults.settings().dataverse.fail_next,
            2,
            "failed merge changed nothing"
        );
    }

    #[test]
    fn deterministic_failures_come_before_rates() {
        let faults = Faults::default();
        faults
            .merge(&serde_json::json!({"partner_center": {"fail_next": 1, "status": 429, "retry_after_seconds": 7}}))
            .unwrap();
        let mut rng = Rng::new(1);
        assert_eq!(
            faults.decide(Api::PartnerCenter, &mut rng),
            Some(Injected::Error {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after_seconds: 7
            })
        );
        assert_eq!(faults.decide(Api::PartnerCenter, &mut rng), None);
    }

    #[test]
    fn error_mixes_partition_the_calls() {
        let faults = Faults::default();
        faults
            .merge(&serde_json::json!({"dataverse": {"errors": [
                {"rate": 0.2, "status": 429, "retry_after_seconds": 1},
                {"rate": 0.1, "status": 503}
            ]}}))
            .unwrap();
        let mut rng = Rng::new(7);
        let (mut throttled, mut unavailable) = (0, 0);
        for _ in 0..10_000 {
            match faults.decide(Api::Dataverse, &mut rng) {
                Some(Injected::Error { status, .. }) if status == 429 => throttled += 1,
                Some(Injected::Error { status, .. }) if status == 503 => unavailable += 1,
                None => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((1800..2200).contains(&throttled), "{throttled}");
        assert!((850..1150).contains(&unavailable), "{unavailable}");
        let error = faults
            .merge(&serde_json::json!({"dataverse": {"errors": [{"rate": 0.8, "status": 429}, {"rate": 0.5, "status": 503}]}}))
            .unwrap_err();
        assert!(error.contains("sum of rates"), "{error}");
    }

    #[test]
    fn sliding_window_refuses_with_time_until_a_slot_frees() {
        let mut calls = VecDeque::new();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        for i in 0..3 {
            assert_eq!(
                sliding_window(
                    &mut calls,
                    start + Duration::from_secs(i),
                    Duration::from_secs(10),
                    3
                ),
                None
            );
        }
        assert_eq!(
            sliding_window(
                &mut calls,
                start + Duration::from_secs(4),
                Duration::from_secs(10),
                3
            ),
            Some(6)
        );
        assert_eq!(
            sliding_window(
                &mut calls,
                start + Duration::from_secs(10),
                Duration::from_secs(10),
                3
            ),
            None,
            "the first call left the window"
        );
    }
}
