//! The sync engine's building blocks. Today: the CRM port ([`crm::Crm`]) and live lookup
//! resolution ([`lookups::resolve_live`]); the flows, triggers and scheduling build on them.

pub mod crm;
pub mod lookups;
