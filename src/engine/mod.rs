//! The sync engine's building blocks. Today: the CRM port ([`crm::Crm`]), live lookup
//! resolution ([`lookups::resolve_live`]) and the durable inbox behind the webhook server
//! ([`inbox::InboxSink`]); the flows, triggers and scheduling build on them. Around them:
//! readiness for `/readyz` ([`health::Readiness`]) and API calls per upstream persisted for
//! `cosell status` ([`usage::UsageRecorder`]).

pub mod connect;
pub mod crm;
pub mod health;
pub mod inbox;
pub mod lookups;
pub mod runner;
pub mod sync;
pub mod usage;
