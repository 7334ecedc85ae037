//! The mapping file: its model, how YAML becomes that model with a position for every value,
//! the JSON Schema generated from the model, and user-facing diagnostics.

pub mod diagnostic;
pub mod model;
pub mod schema;
pub mod secrets;
pub mod settings;
pub mod yaml;
