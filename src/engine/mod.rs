//! The sync engine's building blocks. Today: the CRM port ([`crm::Crm`]), live lookup
//! resolution ([`lookups::resolve_live`]) and the durable inbox behind the webhook server
//! ([`inbox::InboxSink`]); the flows, triggers and scheduling build on them.

pub mod connect;
pub mod crm;
pub mod inbox;
pub mod lookups;
pub mod runner;
pub mod sync;
