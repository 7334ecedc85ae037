//! Placeholder replaced by the salesforce emulator.

use std::sync::Arc;

use axum::Router;
use serde_json::Value;

use super::{Rng, Sandbox};

/// Emulator state.
#[derive(Debug, Default)]
pub struct State {}

impl State {
    /// Loads the schema files.
    pub fn new() -> anyhow::Result<State> {
        Ok(State {})
    }
    /// Forgets all records.
    pub fn reset(&self) {}
    /// Records as JSON for `--data`.
    pub fn snapshot(&self) -> Value {
        Value::Null
    }
    /// Inverse of [`State::snapshot`].
    pub fn restore(&self, _value: Value) -> anyhow::Result<()> {
        Ok(())
    }
    /// Adds `count` realistic records.
    pub fn seed(&self, _sandbox: &Sandbox, _rng: &mut Rng, _count: usize) {}
}

/// Routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
}
