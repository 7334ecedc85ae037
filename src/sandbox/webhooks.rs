//! Placeholder replaced by webhook registration and delivery.

use std::sync::Arc;

use axum::Router;
use serde_json::Value;
use tokio::sync::watch;

use super::Sandbox;

/// Registration and delivery state.
#[derive(Debug, Default)]
pub struct Webhooks {}

impl Webhooks {
    /// Empty state.
    pub fn new() -> Webhooks {
        Webhooks {}
    }
    /// Starts the delivery worker.
    pub fn spawn_delivery(_sandbox: &Arc<Sandbox>, _shutdown: watch::Receiver<bool>) {}
    /// Queues the event `event_name` for referral `referral_id`.
    pub fn notify(&self, _sandbox: &Sandbox, _event_name: &str, _referral_id: &str) {}
    /// Forgets registration and queues.
    pub fn reset(&self) {}
    /// State for `--data`.
    pub fn snapshot(&self) -> Value {
        Value::Null
    }
    /// Inverse of [`Webhooks::snapshot`].
    pub fn restore(&self, _value: Value) -> anyhow::Result<()> {
        Ok(())
    }
    /// Registration, deliveries and offline queue for `/_sandbox/webhooks`.
    pub fn status(&self) -> Value {
        Value::Null
    }
}

/// Routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
}
