//! Compiling and evaluating mappings. Everything here is pure (no IO), so it is fast and
//! testable; the engine, `cosell map` and `cosell test` all go through [`Plan`].

pub mod fastexpr;
pub mod lookup;
pub mod plan;
pub mod referral_schema;
pub mod selector;
pub mod template;
pub mod transforms;

pub use plan::{FlowPlan, Input, LookupRequest, Mapped, Plan, PlanError, TargetRecord, Violation};
