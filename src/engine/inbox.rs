//! The durable inbox as the webhook server's [`EventSink`]: a verified Partner Center event
//! becomes a job in the state store before the webhook is answered 200, so a crash after
//! the answer loses nothing. Jobs are keyed by referral, so one referral's events are
//! processed one at a time and in order.
//!
//! # Re-deliveries and replays
//!
//! Partner Center's signature covers the body only — no timestamp, nonce or URL (§3.4) — so
//! a replayed request is indistinguishable from Partner Center delivering the same event
//! again, which it does whenever it did not see our 200 (up to 10 attempts, §3.3). Both are
//! answered 200 and stored at most once:
//! - while the first delivery's job is still waiting, the store returns that job instead of
//!   adding another ([`NewJob::new`] deduplicates identical waiting jobs; durable);
//! - once it ran (completed jobs are deleted), [`InboxSink`] remembers what it stored for
//!   [`REDELIVERY_WINDOW`] (at most [`REDELIVERY_ENTRIES`] events, in memory) and
//!   acknowledges an identical event again without storing it.
//!
//! A 4xx would be wrong for a genuine re-delivery (Partner Center would try 10 times and
//! park the event offline) and buys nothing against a replay. Past the window or after a
//! restart a replay stores one job, which re-reads the referral: effects are idempotent, so
//! that costs one Partner Center read and changes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::connectors::partner_center::WebhookEvent;
use crate::server::{EventSink, SinkError};
use crate::store::{NewJob, Store};

/// The job kind of a Partner Center event.
pub const PC_EVENT: &str = "pc_event";

/// The inbox key of a referral's jobs.
pub fn referral_key(referral_id: &str) -> String {
    format!("referral:{referral_id}")
}

/// How long [`InboxSink`] remembers an event it stored, to acknowledge a re-delivery of it
/// without storing it again.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Events remembered at most (32-byte digests; the oldest are forgotten first).
pub const REDELIVERY_ENTRIES: usize = 50_000;

/// Digests of recently stored events, oldest first.
#[derive(Debug, Default)]
struct Stored {
    at: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Stored {
    fn forget_old(&mut self, now: Instant) {
        while let Some(&(digest, at)) = self.order.front() {
            let expired = now.saturating_duration_since(at) >= REDELIVERY_WINDOW;
            if !expired && self.order.len() <= REDELIVERY_ENTRIES {
                break;
            }
            self.order.pop_front();
            if self.at.get(&digest) == Some(&at) {
                self.at.remove(&digest);
            }
        }
    }

    fn contains(&mut self, digest: &[u8; 32]) -> bool {
        self.forget_old(Instant::now());
        self.at.contains_key(digest)
    }

    fn insert(&mut self, digest: [u8; 32]) {
        let now = Instant::now();
        self.at.insert(digest, now);
        self.order.push_back((digest, now));
        self.forget_old(now);
    }
}

/// Stores verified webhook events as inbox jobs.
#[derive(Debug, Clone)]
pub struct InboxSink {
    store: Store,
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    stored: Arc<Mutex<Stored>>,
}

impl InboxSink {
    /// A sink writing to `store`.
    pub fn new(store: Store) -> InboxSink {
        InboxSink {
            store,
            wake: None,
            stored: Arc::default(),
        }
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The same sink, waking idle workers after each stored event (sub-second sync instead
    /// of waiting for the next idle tick).
    pub fn waking(mut self, wake: std::sync::Arc<tokio::sync::Notify>) -> InboxSink {
        self.wake = Some(wake);
        self
    }
}

impl EventSink for InboxSink {
    fn accept(&self, event: WebhookEvent, _raw: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            // The id comes from the ResourceUri's last segment, never from calling the URI.
            let Some(referral_id) = event.referral_id() else {
                return Err(SinkError::new(
                    "the event names no referral; nothing to store",
                ));
            };
            // Only what the job needs: the change time orders nothing (the referral is
            // re-read when the job runs), but it makes re-deliveries of one change identical
            // so the store can deduplicate them.
            let payload = json!({
                "event": event.event_name,
                "referral_id": referral_id,
                "changed_at": event.resource_change_utc_date,
            });
            let job = NewJob::new(referral_key(&referral_id), PC_EVENT, payload);
            let digest = digest(&job);
            if self.stored().contains(&digest) {
                tracing::info!(
                    referral = referral_id.as_str(),
                    "webhook re-delivered (or replayed); already stored, acknowledged again"
                );
                return Ok(());
            }
            self.store
                .enqueue(&job)
                .await
                .map_err(|error| SinkError::new(format!("cannot store the event: {error}")))?;
            self.stored().insert(digest);
            if let Some(wake) = &self.wake {
                wake.notify_one();
            }
            Ok(())
        })
    }
}

/// SHA-256 of a job's key, kind and payload: equal for re-deliveries of one event.
fn digest(job: &NewJob) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [&job.key, &job.kind, &job.payload.to_string()] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(referral: &str, changed: &str) -> WebhookEvent {
        serde_json::from_value(json!({
            "EventName": "referral-updated",
            "ResourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral}"),
            "ResourceName": "referral",
            "ResourceChangeUtcDate": changed,
        }))
        .expect("event")
    }

    #[tokio::test]
    async fn a_redelivered_event_is_stored_once_even_after_its_job_ran() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = Store::open(&url).await.expect("store");
        let sink = InboxSink::new(store.clone());
        let first = event("r-1", "2018-02-17T00:05:39.5485487+00:00");
        sink.accept(first.clone(), Bytes::new())
            .await
            .expect("stored");
        let jobs = store
            .claim("w", Duration::from_secs(60), 10)
            .await
            .expect("claim");
        assert_eq!(jobs.len(), 1);
        store.complete(&jobs[0]).await.expect("complete");

        // The same event again, after its job ran: acknowledged, not stored.
        sink.accept(first, Bytes::new())
            .await
            .expect("acknowledged");
        assert_eq!(store.inbox_stats().await.expect("stats").pending, 0);
        // A later change of the same referral is a new event.
        sink.accept(event("r-1", "2018-02-17T00:06:00Z"), Bytes::new())
            .await
            .expect("stored");
        assert_eq!(store.inbox_stats().await.expect("stats").pending, 1);
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut stored = Stored::default();
        for n in 0..(REDELIVERY_ENTRIES + 10) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
            stored.insert(digest);
        }
        assert_eq!(stored.order.len(), REDELIVERY_ENTRIES);
        assert_eq!(stored.at.len(), REDELIVERY_ENTRIES);
        assert!(!stored.contains(&[0u8; 32]), "the oldest went first");
    }
}
