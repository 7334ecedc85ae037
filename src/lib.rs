//! cosell keeps Microsoft Partner Center co-sell referrals in two-way sync with a CRM
//! (Dynamics 365 / Dataverse, Salesforce). Every sync behaviour is declared in a YAML mapping
//! file; this crate loads, validates, compiles and evaluates those files.
//!
//! Layers (lower never depend on higher):
//! - [`config`]: the mapping file's model, YAML with positions, JSON Schema, diagnostics,
//!   settings, secret references. No evaluation.
//! - [`mapping`]: compiles a config into a [`mapping::Plan`] and evaluates it. Pure: no IO.
//! - [`load`]: the front door that turns a file into diagnostics or a plan.
//! - [`testing`]: runs a mapping file's inline tests.
//! - [`cli`]: the `cosell` command.

pub mod cli;
pub mod config;
pub mod load;
pub mod mapping;
pub mod testing;
