//! The durable inbox as the webhook server's [`EventSink`]: a verified Partner Center event
//! becomes a job in the state store before the webhook is answered 200, so a crash after
//! the answer loses nothing. Jobs are keyed by referral, so one referral's events are
//! processed one at a time and in order; an identical re-delivery that is still waiting is
//! deduplicated by the store.

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

/// Stores verified webhook events as inbox jobs.
#[derive(Debug, Clone)]
pub struct InboxSink {
    store: Store,
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl InboxSink {
    /// A sink writing to `store`.
    pub fn new(store: Store) -> InboxSink {
        InboxSink { store, wake: None }
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
            self.store
                .enqueue(&NewJob::new(referral_key(&referral_id), PC_EVENT, payload))
                .await
                .map_err(|error| SinkError::new(format!("cannot store the event: {error}")))?;
            if let Some(wake) = &self.wake {
                wake.notify_one();
            }
            Ok(())
        })
    }
}
