//! Placeholder replaced by the Partner Center referrals emulator.

use std::sync::Arc;

use axum::Router;
use serde_json::Value;

use super::{Rng, Sandbox};

/// Referral store.
#[derive(Debug, Default)]
pub struct State {}

impl State {
    /// Forgets all referrals.
    pub fn reset(&self) {}
    /// Referrals as JSON for `--data`.
    pub fn snapshot(&self) -> Value {
        Value::Null
    }
    /// Inverse of [`State::snapshot`].
    pub fn restore(&self, _value: Value) -> anyhow::Result<()> {
        Ok(())
    }
    /// Adds `count` realistic incoming referrals; returns how many.
    pub fn seed(&self, _sandbox: &Sandbox, _rng: &mut Rng, count: usize) -> usize {
        count
    }
}

/// Routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
}
