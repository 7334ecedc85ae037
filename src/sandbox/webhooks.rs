//! Partner Center webhooks: the registration API under `/webhooks/v1/registration`
//! (partner-center-api.md §3.2) and signed event delivery (§3.3, §3.4).
//!
//! | Call | Effect |
//! |---|---|
//! | `GET /webhooks/v1/registration/events` | supported event names |
//! | `POST /webhooks/v1/registration` | register (409 when one exists) |
//! | `GET` / `PUT /webhooks/v1/registration` | view (404 when none) / create or replace |
//! | `POST /webhooks/v1/registration/validationEvents` | send a `test-created` event (2 a minute) |
//! | `GET /webhooks/v1/registration/validationEvents/{correlationId}` | its delivery status |
//! | `GET /_sandbox/certificates/pcnotifications-dispatch.cer` | signing certificate (DER) |
//! | `GET /_sandbox/certificates/pcnotifications-dispatch.pem` | signing certificate (PEM) |
//! | `POST /_sandbox/webhooks/offline/redeliver` | move offline events back to the queue |
//! | `PUT /_sandbox/webhooks/retry` | `{"first_delay_ms","max_delay_ms","max_attempts","timeout_ms"}` |
//!
//! Delivery: every event is POSTed to the registered URL with the documented headers and
//! an RSA-SHA256 signature over the exact body bytes. Any 2xx is success (the documentation
//! does not say; UNCERTAIN). Failures are retried; after [`RetryPolicy::max_attempts`]
//! (10, as documented) the event moves to an offline queue and is not attempted again.
//! Events for one referral are delivered in order; events for different referrals proceed
//! independently, and nothing on the request path ever waits for a receiver.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use super::{Api, Sandbox, json_response, lock};

/// Event names `GET /webhooks/v1/registration/events` lists, i.e. the 2023 documented list
/// (§3.1) plus `indirect-reseller-relationship-accepted-by-customer` (2024+). Only the
/// referral events and `test-created` are ever raised by the sandbox.
pub const EVENT_NAMES: &[&str] = &[
    "azure-fraud-event-detected",
    "dap-admin-relationship-approved",
    "reseller-relationship-accepted-by-customer",
    "indirect-reseller-relationship-accepted-by-customer",
    "dap-admin-relationship-terminated",
    "dap-admin-relationship-terminated-by-microsoft",
    "granular-admin-access-assignment-activated",
    "granular-admin-access-assignment-created",
    "granular-admin-access-assignment-deleted",
    "granular-admin-access-assignment-updated",
    "granular-admin-relationship-activated",
    "granular-admin-relationship-approved",
    "granular-admin-relationship-expired",
    "granular-admin-relationship-terminated",
    "invoice-ready",
    "new-commerce-migration-completed",
    "new-commerce-migration-created",
    "new-commerce-migration-failed",
    "new-commerce-migration-schedule-failed",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "subscription-updated",
    "test-created",
    "usagerecords-thresholdExceeded",
];

/// The event a validation call sends.
pub const TEST_EVENT: &str = "test-created";

/// The partner id validation-event status reports (the sandbox's single partner).
pub const PARTNER_ID: &str = "4f1c2b7e-9d3a-4c8e-b5a1-2e6f0d9c7a31";

/// Path of the signing certificate; `X-MS-Certificate-Url` points here.
pub const CERTIFICATE_PATH: &str = "/_sandbox/certificates/pcnotifications-dispatch.cer";

/// "There is a throttle limit of 2 requests per minute when posting a validation event."
const VALIDATIONS_PER_MINUTE: usize = 2;
/// Delivery log entries kept for `GET /_sandbox/webhooks`.
const RECENT_LIMIT: usize = 200;
/// Events delivered at the same time (each to its own referral).
const CONCURRENT_DELIVERIES: usize = 8;
/// Response bytes kept in a validation result's `responseMessage`.
const RESPONSE_EXCERPT: usize = 512;

/// Delivery retry schedule.
///
/// The documentation gives only the number of attempts (10) and no interval (§3.3,
/// NOT FOUND). The sandbox uses short exponential delays so tests and trials finish in
/// seconds: `first_delay`, doubling, capped at `max_delay` — about 21 s from the first to
/// the last of 10 attempts with the defaults. Tests shorten it with
/// [`Webhooks::set_retry_policy`] or `PUT /_sandbox/webhooks/retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total before an event moves to the offline queue.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub first_delay: Duration,
    /// Cap of the doubling delay.
    pub max_delay: Duration,
    /// Time a receiver gets to answer one attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.first_delay
            .saturating_mul(factor)
            .min(self.max_delay.max(self.first_delay))
    }

    fn to_json(self) -> Value {
        json!({
            "max_attempts": self.max_attempts,
            "first_delay_ms": duration_ms(self.first_delay),
            "max_delay_ms": duration_ms(self.max_delay),
            "timeout_ms": duration_ms(self.timeout),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The one webhook registration a partner has.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registration {
    subscriber_id: String,
    webhook_url: String,
    webhook_events: Vec<String>,
    signature_in_ms_header: bool,
    last_modified: String,
}

impl Registration {
    /// The documented PascalCase shape (POST, PUT and GET responses).
    fn to_json(&self) -> Value {
        json!({
            "SubscriberId": self.subscriber_id,
            "WebhookUrl": self.webhook_url,
            "WebhookEvents": self.webhook_events,
            "SignatureTokenToMsSignatureHeader": self.signature_in_ms_header,
        })
    }
}

/// One event waiting for (or being) delivered, or given up on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: String,
    /// Events with the same key are delivered in order: the referral id, or the
    /// validation's correlation id.
    key: String,
    event_name: String,
    /// The exact bytes sent (and signed).
    body: String,
    correlation_id: Option<String>,
    attempts: u32,
    enqueued_at: String,
    last_error: Option<String>,
    offline_at: Option<String>,
    /// A delivery task owns it; not persisted (a restart starts it afresh).
    #[serde(skip)]
    in_flight: bool,
}

impl Event {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "event": self.event_name,
            "key": self.key,
            "body": serde_json::from_str::<Value>(&self.body).unwrap_or(Value::Null),
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
            "last_error": self.last_error,
            "offline_at": self.offline_at,
        })
    }
}

/// A validation event's delivery record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Validation {
    callback_url: String,
    status: String,
    results: Vec<Value>,
    created: SystemTime,
}

/// One delivery attempt, for the log in `GET /_sandbox/webhooks`.
#[derive(Debug, Clone)]
struct Attempt {
    event_id: String,
    event_name: String,
    url: String,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    time: String,
    duration_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    registration: Option<Registration>,
    queue: VecDeque<Event>,
    offline: Vec<Event>,
    recent: VecDeque<Attempt>,
    validations: HashMap<String, Validation>,
    validation_posts: VecDeque<SystemTime>,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    offline: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for counter in [
            &self.enqueued,
            &self.delivered,
            &self.failed_attempts,
            &self.offline,
            &self.dropped,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Webhook registration, the delivery queue, the offline queue and the delivery log.
#[derive(Debug, Default)]
pub struct Webhooks {
    inner: Mutex<Inner>,
    policy: Mutex<RetryPolicy>,
    counters: Counters,
    /// Wakes the dispatcher: a new event, a finished one (its referral's next may go),
    /// a redelivery.
    wake: Arc<Notify>,
}

/// What the outcome of one attempt means for its event.
enum Next {
    Retry(Duration),
    Done,
}

/// Everything one attempt needs, read under the lock.
struct Prepared {
    url: String,
    body: String,
    event_name: String,
    attempt: u32,
    signature_in_ms_header: bool,
    timeout: Duration,
}

impl Webhooks {
    /// No registration, empty queues.
    pub fn new() -> Webhooks {
        Webhooks::default()
    }

    /// The current retry schedule.
    pub fn retry_policy(&self) -> RetryPolicy {
        *lock(&self.policy)
    }

    /// Replaces the retry schedule (tests shorten the delays); applies to the next wait.
    pub fn set_retry_policy(&self, policy: RetryPolicy) {
        *lock(&self.policy) = RetryPolicy {
            max_attempts: policy.max_attempts.max(1),
            ..policy
        };
    }

    /// Starts the background dispatcher. It holds only a [`Weak`] reference and stops when
    /// `shutdown` turns true (or its sender goes away), as do the deliveries it started.
    pub fn spawn_delivery(sandbox: &Arc<Sandbox>, shutdown: watch::Receiver<bool>) {
        let client = match delivery_client(sandbox) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!("webhook delivery disabled: {error:#}");
                return;
            }
        };
        let weak = Arc::downgrade(sandbox);
        tokio::spawn(dispatch(weak, client, shutdown));
    }

    /// Queues `event_name` about referral `referral_id` when the registration subscribes to
    /// it, unless a `webhooks` fault drops it (a missed webhook).
    pub fn notify(&self, sandbox: &Sandbox, event_name: &str, referral_id: &str) {
        let subscribed = lock(&self.inner)
            .registration
            .as_ref()
            .is_some_and(|r| r.webhook_events.iter().any(|e| e == event_name));
        if !subscribed {
            return;
        }
        let dropped = {
            let mut rng = sandbox.rng();
            sandbox.faults.drop_webhook(&mut rng)
        };
        if dropped {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("webhook {event_name} for {referral_id} dropped by fault injection");
            return;
        }
        // The documented ResourceUri is `{baseURL}/engagements/v1/referrals/{id}` on host
        // api.partnercenter.microsoft.com, which is not where the REST API serves referrals
        // (api.partner.microsoft.com/v1.0/engagements/referrals/{id}); the sandbox reproduces
        // the documented shape, and clients should take the id from the last path segment.
        let resource_uri = format!(
            "{}/engagements/v1/referrals/{}",
            sandbox.base_url,
            percent_encoding::utf8_percent_encode(referral_id, SEGMENT)
        );
        let body = event_body(event_name, &resource_uri, "referral", &event_time(sandbox));
        self.enqueue(sandbox, event_name, referral_id.to_owned(), body, None);
    }

    fn enqueue(
        &self,
        sandbox: &Sandbox,
        event_name: &str,
        key: String,
        body: String,
        correlation_id: Option<String>,
    ) {
        let event = Event {
            id: sandbox.new_guid(),
            key,
            event_name: event_name.to_owned(),
            body,
            correlation_id,
            attempts: 0,
            enqueued_at: sandbox.now_partner_center(),
            last_error: None,
            offline_at: None,
            in_flight: false,
        };
        lock(&self.inner).queue.push_back(event);
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        sandbox.changed();
        self.wake.notify_one();
    }

    /// Forgets the registration, both queues, the log, validations and counters.
    pub fn reset(&self) {
        *lock(&self.inner) = Inner::default();
        self.counters.reset();
        self.wake.notify_one();
    }

    /// Registration, pending and offline events and validations, for `--data`.
    pub fn snapshot(&self) -> Value {
        let inner = lock(&self.inner);
        json!({
            "registration": inner.registration,
            "pending": inner.queue,
            "offline": inner.offline,
            "validations": inner.validations,
        })
    }

    /// Inverse of [`Webhooks::snapshot`]; `Null` means empty.
    pub fn restore(&self, value: Value) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Saved {
            registration: Option<Registration>,
            #[serde(default)]
            pending: VecDeque<Event>,
            #[serde(default)]
            offline: Vec<Event>,
            #[serde(default)]
            validations: HashMap<String, Validation>,
        }
        let mut inner = Inner::default();
        if !value.is_null() {
            let saved: Saved = serde_json::from_value(value)?;
            inner.registration = saved.registration;
            inner.queue = saved.pending;
            inner.offline = saved.offline;
            inner.validations = saved.validations;
        }
        *lock(&self.inner) = inner;
        self.wake.notify_one();
        Ok(())
    }

    /// `GET /_sandbox/webhooks`: registration, counters, queue, offline events and the most
    /// recent delivery attempts (newest last).
    pub fn status(&self) -> Value {
        let inner = lock(&self.inner);
        let counters = &self.counters;
        json!({
            "registration": inner.registration.as_ref().map(Registration::to_json),
            "pending": inner.queue.len(),
            "queue": inner.queue.iter().map(Event::to_json).collect::<Vec<_>>(),
            "offline": inner.offline.iter().map(Event::to_json).collect::<Vec<_>>(),
            "deliveries": inner.recent.iter().map(|a| json!({
                "event_id": a.event_id,
                "event": a.event_name,
                "url": a.url,
                "attempt": a.attempt,
                "status": a.status,
                "error": a.error,
                "time": a.time,
                "duration_ms": a.duration_ms,
            })).collect::<Vec<_>>(),
            "counters": {
                "enqueued": counters.enqueued.load(Ordering::Relaxed),
                "delivered": counters.delivered.load(Ordering::Relaxed),
                "failed_attempts": counters.failed_attempts.load(Ordering::Relaxed),
                "offline": counters.offline.load(Ordering::Relaxed),
                "dropped": counters.dropped.load(Ordering::Relaxed),
            },
            "retry_policy": self.retry_policy().to_json(),
        })
    }

    /// Moves every offline event back to the end of the queue with its attempts reset;
    /// returns how many.
    pub fn redeliver_offline(&self) -> usize {
        let count = {
            let mut inner = lock(&self.inner);
            let offline = std::mem::take(&mut inner.offline);
            let count = offline.len();
            for mut event in offline {
                event.attempts = 0;
                event.offline_at = None;
                event.in_flight = false;
                if let Some(cid) = &event.correlation_id
                    && let Some(validation) = inner.validations.get_mut(cid)
                {
                    validation.status = "pending".to_owned();
                }
                inner.queue.push_back(event);
            }
            count
        };
        self.wake.notify_one();
        count
    }

    /// Marks startable events in flight and returns their ids: the first event of each key
    /// not already being delivered, up to the concurrency limit.
    fn take_startable(&self) -> Vec<String> {
        let mut inner = lock(&self.inner);
        let mut busy = inner.queue.iter().filter(|e| e.in_flight).count();
        let mut seen: HashSet<String> = HashSet::new();
        let mut started = Vec::new();
        for event in &mut inner.queue {
            if !seen.insert(event.key.clone()) {
                continue;
            }
            if event.in_flight {
                continue;
            }
            if busy >= CONCURRENT_DELIVERIES {
                break;
            }
            event.in_flight = true;
            busy += 1;
            started.push(event.id.clone());
        }
        started
    }

    /// Reads what attempt `attempts + 1` of event `id` needs; `None` when the event is gone
    /// (reset) or there is no registration to deliver to (then the event is discarded).
    fn prepare(&self, id: &str) -> Option<Prepared> {
        let timeout = self.retry_policy().timeout;
        let mut inner = lock(&self.inner);
        let Some(registration) = inner.registration.clone() else {
            inner.queue.retain(|e| e.id != id);
            return None;
        };
        let event = inner.queue.iter().find(|e| e.id == id)?;
        Some(Prepared {
            url: registration.webhook_url,
            body: event.body.clone(),
            event_name: event.event_name.clone(),
            attempt: event.attempts + 1,
            signature_in_ms_header: registration.signature_in_ms_header,
            timeout,
        })
    }

    /// Records an attempt's outcome and decides what happens to the event.
    fn finish(&self, sandbox: &Sandbox, id: &str, prepared: &Prepared, outcome: Outcome) -> Next {
        let policy = self.retry_policy();
        let now = sandbox.now_partner_center();
        let success = outcome.status.is_some_and(|s| (200..300).contains(&s));
        let mut inner = lock(&self.inner);
        // Gone means a reset happened during the attempt: nothing to record.
        let Some(index) = inner.queue.iter().position(|e| e.id == id) else {
            return Next::Done;
        };
        inner.recent.push_back(Attempt {
            event_id: id.to_owned(),
            event_name: prepared.event_name.clone(),
            url: prepared.url.clone(),
            attempt: prepared.attempt,
            status: outcome.status,
            error: outcome.error.clone(),
            time: now.clone(),
            duration_ms: outcome.duration_ms,
        });
        while inner.recent.len() > RECENT_LIMIT {
            inner.recent.pop_front();
        }
        let correlation_id = inner.queue[index].correlation_id.clone();
        if let Some(cid) = &correlation_id
            && let Some(validation) = inner.validations.get_mut(cid)
        {
            validation.results.push(json!({
                "responseCode": outcome.status.map(status_name),
                "responseMessage": outcome.message,
                "systemError": outcome.status.is_none(),
                "dateTimeUtc": now.trim_end_matches('Z'),
            }));
            if success {
                validation.status = "completed".to_owned();
            }
        }
        if success {
            inner.queue.remove(index);
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            return Next::Done;
        }
        self.counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        let event = &mut inner.queue[index];
        event.attempts = prepared.attempt;
        event.last_error = Some(
            outcome
                .error
                .unwrap_or_else(|| format!("HTTP {}", outcome.status.map_or(0, |s| s))),
        );
        if event.attempts < policy.max_attempts {
            return Next::Retry(policy.delay_after(event.attempts));
        }
        // "If the event is still not delivered after 10 attempts, it will be moved into an
        // offline queue and no further attempts will be made at delivery."
        let Some(mut event) = inner.queue.remove(index) else {
            return Next::Done;
        };
        event.in_flight = false;
        event.offline_at = Some(now);
        tracing::info!(
            "webhook {} ({}) moved to the offline queue after {} attempts",
            event.event_name,
            event.id,
            event.attempts
        );
        inner.offline.push(event);
        if let Some(cid) = &correlation_id
            && let Some(validation) = inner.validations.get_mut(cid)
        {
            validation.status = "failed".to_owned();
        }
        self.counters.offline.fetch_add(1, Ordering::Relaxed);
        Next::Done
    }
}

/// How one attempt went.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    message: String,
    duration_ms: u64,
}

/// .NET `HttpStatusCode` names, which is what validation results show (`"OK"`).
fn status_name(status: u16) -> String {
    let name = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        301 => "MovedPermanently",
        302 => "Found",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        other => return other.to_string(),
    };
    name.to_owned()
}

/// Characters escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `2018-02-17T00:05:39.5485487+00:00`, the documented `ResourceChangeUtcDate` style.
fn event_time(sandbox: &Sandbox) -> String {
    let now = sandbox.now_partner_center();
    format!("{}+00:00", now.trim_end_matches('Z'))
}

/// The event body in the documented field order. Serialized by hand (each value through
/// serde_json) so the bytes are deterministic and match the documentation's order.
fn event_body(event_name: &str, resource_uri: &str, resource_name: &str, time: &str) -> String {
    let string = |s: &str| Value::String(s.to_owned()).to_string();
    format!(
        "{{\"EventName\":{},\"ResourceUri\":{},\"ResourceName\":{},\"AuditUri\":null,\"ResourceChangeUtcDate\":{}}}",
        string(event_name),
        string(resource_uri),
        string(resource_name),
        string(time)
    )
}

/// The HTTP client deliveries use: trusts the sandbox CA on top of the platform roots (an
/// `https://` receiver may be a `--tls` sandbox-style service or a real endpoint), follows
/// no redirects (a 3xx is not a delivery) and ignores proxy variables (receivers are
/// usually on loopback).
fn delivery_client(sandbox: &Sandbox) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_der(sandbox.pki.ca_der())?;
    let builder = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("cosell-sandbox-webhooks")
    };
    match builder().tls_certs_merge([ca.clone()]).build() {
        Ok(client) => Ok(client),
        // Verifiers that cannot merge roots: trust the sandbox CA alone.
        Err(_) => Ok(builder().tls_certs_only([ca]).build()?),
    }
}

/// Resolves when `shutdown` is (or becomes) true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The dispatcher: starts a delivery task for each startable event, then sleeps until woken.
async fn dispatch(
    weak: Weak<Sandbox>,
    client: reqwest::Client,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(sandbox) = weak.upgrade() else {
            return;
        };
        let wake = Arc::clone(&sandbox.webhooks.wake);
        for id in sandbox.webhooks.take_startable() {
            tokio::spawn(deliver(
                Weak::clone(&weak),
                client.clone(),
                shutdown.clone(),
                id,
            ));
        }
        // Hold no strong reference while idle. `Notify` keeps a permit when nobody waits,
        // so a wake between the scan and this wait is not lost.
        drop(sandbox);
        tokio::select! {
            () = wake.notified() => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Delivers one event: attempts with backoff until success or the offline queue.
async fn deliver(
    weak: Weak<Sandbox>,
    client: reqwest::Client,
    mut shutdown: watch::Receiver<bool>,
    id: String,
) {
    loop {
        let Some(sandbox) = weak.upgrade() else {
            return;
        };
        let Some(prepared) = sandbox.webhooks.prepare(&id) else {
            sandbox.webhooks.wake.notify_one();
            return;
        };
        let outcome = tokio::select! {
            outcome = attempt(&sandbox, &client, &prepared) => outcome,
            () = stopped(&mut shutdown) => return,
        };
        let next = sandbox.webhooks.finish(&sandbox, &id, &prepared, outcome);
        sandbox.changed();
        match next {
            Next::Done => {
                // The referral's next event may go now.
                sandbox.webhooks.wake.notify_one();
                return;
            }
            Next::Retry(delay) => {
                drop(sandbox);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut shutdown) => return,
                }
                if weak.upgrade().is_none() {
                    return;
                }
            }
        }
    }
}

/// One POST to the receiver.
async fn attempt(sandbox: &Sandbox, client: &reqwest::Client, prepared: &Prepared) -> Outcome {
    let signature = base64::engine::general_purpose::STANDARD
        .encode(sandbox.pki.sign_rsa_sha256(prepared.body.as_bytes()));
    let token = format!("Signature {signature}");
    let signature_header = if prepared.signature_in_ms_header {
        "x-ms-signature"
    } else {
        "authorization"
    };
    let started = Instant::now();
    let result = client
        .post(&prepared.url)
        .timeout(prepared.timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .header(signature_header, token)
        .header(
            "X-MS-Certificate-Url",
            format!("{}{CERTIFICATE_PATH}", sandbox.base_url),
        )
        .header("X-MS-Signature-Algorithm", "rsa-sha256")
        .body(prepared.body.clone())
        .send()
        .await;
    let (status, error, message) = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let message: String = text.chars().take(RESPONSE_EXCERPT).collect();
            (Some(status), None, message)
        }
        Err(error) => {
            let text = if error.is_timeout() {
                format!("timed out after {} ms", duration_ms(prepared.timeout))
            } else {
                error_chain(&error)
            };
            (None, Some(text.clone()), text)
        }
    };
    Outcome {
        status,
        error,
        message,
        duration_ms: duration_ms(started.elapsed()),
    }
}

/// An error with its sources ("error sending request: … connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The registration routes, the signing certificate and the webhook control routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/webhooks/v1/registration/events", get(list_events))
        .route(
            "/webhooks/v1/registration",
            get(view_registration)
                .post(create_registration)
                .put(replace_registration)
                .delete(method_not_allowed)
                .patch(method_not_allowed),
        )
        .route(
            "/webhooks/v1/registration/validationEvents",
            post(send_validation_event),
        )
        .route(
            "/webhooks/v1/registration/validationEvents/{correlationId}",
            get(validation_status),
        )
        .route(CERTIFICATE_PATH, get(certificate_der))
        .route(
            "/_sandbox/certificates/pcnotifications-dispatch.pem",
            get(certificate_pem),
        )
        .route(
            "/_sandbox/webhooks/offline/redeliver",
            post(redeliver_offline),
        )
        .route("/_sandbox/webhooks/retry", put(set_retry).get(get_retry))
}

fn webhook_error(status: StatusCode, code: &str, message: &str) -> Response {
    Api::PartnerCenterWebhooks.error(status, code, message)
}

fn bad_request(message: &str) -> Response {
    webhook_error(StatusCode::BAD_REQUEST, "invalidRequest", message)
}

async fn list_events() -> Response {
    json_response(StatusCode::OK, &json!(EVENT_NAMES))
}

/// No DELETE (or PATCH) is documented for the registration (§3.2): ASP.NET Web API's 405.
async fn method_not_allowed(request: axum::extract::Request) -> Response {
    let message = format!(
        "The requested resource does not support http method '{}'.",
        request.method()
    );
    let mut response = webhook_error(StatusCode::METHOD_NOT_ALLOWED, "methodNotAllowed", &message);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT"));
    response
}

async fn view_registration(State(sandbox): State<Arc<Sandbox>>) -> Response {
    match &lock(&sandbox.webhooks.inner).registration {
        Some(registration) => json_response(StatusCode::OK, &registration.to_json()),
        None => webhook_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "No webhook registration exists for this partner.",
        ),
    }
}

async fn create_registration(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    register(&sandbox, &body, false)
}

async fn replace_registration(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    register(&sandbox, &body, true)
}

/// The validated parts of a registration body.
struct RegistrationRequest {
    url: String,
    events: Vec<String>,
    signature_in_ms_header: bool,
}

/// POST (`replace` false: 409 when one exists) and PUT (create or replace).
fn register(sandbox: &Sandbox, body: &[u8], replace: bool) -> Response {
    let request = match parse_registration(body) {
        Ok(request) => request,
        Err(message) => return bad_request(&message),
    };
    let now = sandbox.now_partner_center();
    let registration = {
        let mut inner = lock(&sandbox.webhooks.inner);
        let existing = inner.registration.clone();
        if existing.is_some() && !replace {
            // The error code is not documented (UNCERTAIN); the message is.
            return webhook_error(
                StatusCode::CONFLICT,
                "conflict",
                "Registration already exists, use the PUT method to update a registration.",
            );
        }
        let subscriber_id = existing.map_or_else(|| sandbox.new_guid(), |r| r.subscriber_id);
        let registration = Registration {
            subscriber_id,
            webhook_url: request.url,
            webhook_events: request.events,
            signature_in_ms_header: request.signature_in_ms_header,
            last_modified: now,
        };
        inner.registration = Some(registration.clone());
        registration
    };
    sandbox.changed();
    json_response(StatusCode::OK, &registration.to_json())
}

/// Reads `WebhookUrl`, `WebhookEvents` and `SignatureTokenToMsSignatureHeader`, with
/// property names matched case-insensitively (the docs send PascalCase, the referral
/// connector sample camelCase). Other properties of the swagger model are ignored.
fn parse_registration(body: &[u8]) -> Result<RegistrationRequest, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("The request body is not valid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("The request body must be a JSON object.".to_owned());
    };
    let field = |name: &str| -> Option<&Value> {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    };
    let url = match field("WebhookUrl") {
        Some(Value::String(url)) => url.trim().to_owned(),
        Some(Value::Null) | None => return Err("WebhookUrl is required.".to_owned()),
        Some(_) => return Err("WebhookUrl must be a string.".to_owned()),
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|_| format!("WebhookUrl '{url}' is not an absolute URL."))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "WebhookUrl '{url}' must be an absolute http or https URL."
        ));
    }
    let events = match field("WebhookEvents") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => return Err("WebhookEvents is required.".to_owned()),
        Some(_) => return Err("WebhookEvents must be an array of event names.".to_owned()),
    };
    if events.is_empty() {
        return Err("WebhookEvents must name at least one event.".to_owned());
    }
    let mut names: Vec<String> = Vec::new();
    for item in events {
        let Value::String(name) = item else {
            return Err("WebhookEvents must be an array of event names.".to_owned());
        };
        // Names are matched case-insensitively and stored in their documented spelling.
        let Some(known) = EVENT_NAMES
            .iter()
            .find(|e| e.eq_ignore_ascii_case(name.trim()))
        else {
            return Err(format!("'{name}' is not a supported webhook event."));
        };
        if !names.iter().any(|n| n == known) {
            names.push((*known).to_owned());
        }
    }
    let signature_in_ms_header = match field("SignatureTokenToMsSignatureHeader") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Null) | None => false,
        Some(_) => return Err("SignatureTokenToMsSignatureHeader must be a boolean.".to_owned()),
    };
    Ok(RegistrationRequest {
        url,
        events: names,
        signature_in_ms_header,
    })
}

async fn send_validation_event(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let now = sandbox.now();
    let correlation_id = {
        let mut inner = lock(&sandbox.webhooks.inner);
        let Some(registration) = inner.registration.clone() else {
            return bad_request("No webhook registration exists; register for test-created first.");
        };
        if !registration.webhook_events.iter().any(|e| e == TEST_EVENT) {
            return bad_request(
                "The registration does not include the test-created event; update it with PUT first.",
            );
        }
        let window = Duration::from_secs(60);
        inner
            .validation_posts
            .retain(|t| now.duration_since(*t).is_ok_and(|age| age < window));
        if inner.validation_posts.len() >= VALIDATIONS_PER_MINUTE {
            let oldest = inner.validation_posts.front().copied().unwrap_or(now);
            let waited = now.duration_since(oldest).unwrap_or_default();
            let retry_after = window.saturating_sub(waited).as_secs().max(1);
            let mut response = webhook_error(
                StatusCode::TOO_MANY_REQUESTS,
                "tooManyRequests",
                "There is a throttle limit of 2 requests per minute when posting a validation event.",
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        inner.validation_posts.push_back(now);
        // "This state will be deleted after 7 days."
        let week = Duration::from_secs(7 * 24 * 3600);
        inner
            .validations
            .retain(|_, v| now.duration_since(v.created).map_or(true, |age| age < week));
        let correlation_id = sandbox.new_guid();
        inner.validations.insert(
            correlation_id.clone(),
            Validation {
                callback_url: registration.webhook_url,
                status: "pending".to_owned(),
                results: Vec::new(),
                created: now,
            },
        );
        correlation_id
    };
    let resource_uri = format!(
        "{}/webhooks/v1/registration/validationEvents/{correlation_id}",
        sandbox.base_url
    );
    let body = event_body(TEST_EVENT, &resource_uri, "test", &event_time(&sandbox));
    sandbox.webhooks.enqueue(
        &sandbox,
        TEST_EVENT,
        format!("validation:{correlation_id}"),
        body,
        Some(correlation_id.clone()),
    );
    json_response(StatusCode::OK, &json!({ "correlationId": correlation_id }))
}

async fn validation_status(
    State(sandbox): State<Arc<Sandbox>>,
    Path(correlation_id): Path<String>,
) -> Response {
    let inner = lock(&sandbox.webhooks.inner);
    match inner.validations.get(&correlation_id) {
        Some(validation) => json_response(
            StatusCode::OK,
            &json!({
                "correlationId": correlation_id,
                "partnerId": PARTNER_ID,
                "status": validation.status,
                "callbackUrl": validation.callback_url,
                "results": validation.results,
            }),
        ),
        None => webhook_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            &format!("Validation event '{correlation_id}' was not found."),
        ),
    }
}

/// The signing certificate as the `.cer` the real `X-MS-Certificate-Url` names. Served as
/// DER with `application/pkix-cert`: the real file's encoding is not documented (UNCERTAIN;
/// .NET's `X509Certificate2` loads DER and PEM alike). The `.pem` twin is for clients that
/// prefer text.
async fn certificate_der(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let mut response = sandbox
        .pki
        .signing_certificate_der()
        .to_vec()
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-cert"),
    );
    response
}

async fn certificate_pem(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let mut response = sandbox.pki.signing_certificate_pem().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    response
}

async fn redeliver_offline(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let count = sandbox.webhooks.redeliver_offline();
    sandbox.changed();
    json_response(StatusCode::OK, &json!({ "redelivered": count }))
}

async fn get_retry(State(sandbox): State<Arc<Sandbox>>) -> Response {
    json_response(StatusCode::OK, &sandbox.webhooks.retry_policy().to_json())
}

/// `PUT /_sandbox/webhooks/retry`: any of `max_attempts`, `first_delay_ms`,
/// `max_delay_ms`, `timeout_ms`; the others keep their values.
async fn set_retry(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let patch: Map<String, Value> = match super::control::parse_body(&body) {
        Ok(patch) => patch,
        Err(response) => return response,
    };
    let mut policy = sandbox.webhooks.retry_policy();
    for (key, value) in &patch {
        let Some(number) = value.as_u64() else {
            return super::control::bad_request(format!("{key}: expected a non-negative integer"));
        };
        match key.as_str() {
            "max_attempts" => {
                policy.max_attempts = u32::try_from(number).unwrap_or(u32::MAX).max(1);
            }
            "first_delay_ms" => policy.first_delay = Duration::from_millis(number),
            "max_delay_ms" => policy.max_delay = Duration::from_millis(number),
            "timeout_ms" => policy.timeout = Duration::from_millis(number.max(1)),
            other => {
                return super::control::bad_request(format!(
                    "unknown field {other} (expected max_attempts, first_delay_ms, max_delay_ms, timeout_ms)"
                ));
            }
        }
    }
    sandbox.webhooks.set_retry_policy(policy);
    json_response(StatusCode::OK, &policy.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.delay_after(6), Duration::from_millis(3200));
        assert_eq!(policy.delay_after(7), Duration::from_secs(5));
        assert_eq!(policy.delay_after(40), Duration::from_secs(5));
    }

    #[test]
    fn event_body_has_the_documented_field_order() {
        let body = event_body(
            "referral-created",
            "http://x/engagements/v1/referrals/a\"b",
            "referral",
            "t",
        );
        assert_eq!(
            body,
            r#"{"EventName":"referral-created","ResourceUri":"http://x/engagements/v1/referrals/a\"b","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"t"}"#
        );
    }

    #[test]
    fn registration_properties_are_case_insensitive() {
        let request = parse_registration(
            br#"{"webhookUrl":"https://example.com/hook","webhookEvents":["Referral-Created","referral-created"],"signatureTokenToMsSignatureHeader":true}"#,
        )
        .expect("valid");
        assert_eq!(request.url, "https://example.com/hook");
        assert_eq!(request.events, vec!["referral-created".to_owned()]);
        assert!(request.signature_in_ms_header);
        for bad in [
            &br#"{"WebhookUrl":"/relative","WebhookEvents":["test-created"]}"#[..],
            br#"{"WebhookUrl":"ftp://example.com","WebhookEvents":["test-created"]}"#,
            br#"{"WebhookUrl":"https://example.com","WebhookEvents":[]}"#,
            br#"{"WebhookUrl":"https://example.com","WebhookEvents":["nope"]}"#,
            br#"{"WebhookUrl":"https://example.com"}"#,
            br#"[1]"#,
            b"{",
        ] {
            assert!(
                parse_registration(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
