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
//! - [`server`]: the HTTP server: verified Partner Center webhooks in, health and metrics out.
//! - [`store`]: the durable state store (links, cursors, inbox, dead letters, audit log).
//! - [`cli`]: the `cosell` command.
//! - [`multipart`]: the `multipart/mixed` codec of OData `$batch`, shared by the Dataverse
//!   client and the sandbox.
//!
//! Compiling a mapping once and mapping a referral with it:
//!
//! ```
//! use std::sync::Arc;
//! use cosell::config::model::Operation;
//! use cosell::mapping::Input;
//!
//! let yaml = r#"
//! version: 1
//! crm: dynamics365
//! flows:
//!   referral_to_opportunity:
//!     source: referral
//!     target: opportunity
//!     when: "referral.type == 'Shared'"
//!     fields:
//!       name: "{{ referral.name }}{{ ' ✔' if settings.checkmark_in_name else '' }}"
//!       "{{ settings.deal_value_field }}": $.details.dealValue
//!       estimatedclosedate: { path: $.details.closingDateTime, transform: [date] }
//!     require:
//!       - check: referral.customerProfile.address.country is country_code
//!         message: Two letter country code is required
//! "#;
//! let checked = cosell::load::check_bytes("example.yaml", yaml.as_bytes(), &[]);
//! assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
//! let plan = checked.plan.unwrap();
//! let flow = plan.flow("referral_to_opportunity").unwrap();
//!
//! let referral = Arc::new(serde_json::json!({
//!     "name": "Contoso deal", "type": "Shared",
//!     "details": { "dealValue": 50000, "closingDateTime": "2018-11-14T00:00:00Z" },
//!     "customerProfile": { "address": { "country": "usa" } }
//! }));
//! let mapped = plan.evaluate(flow, &Input { record: &referral, parent: None, operation: Operation::Create });
//! assert_eq!(mapped.records[0].fields["name"], "Contoso deal ✔");
//! assert_eq!(mapped.records[0].fields["estimatedvalue"], 50000);
//! assert_eq!(mapped.records[0].fields["estimatedclosedate"], "2018-11-14");
//! // "usa" is a country, but not the two-letter code Partner Center requires.
//! assert_eq!(mapped.violations[0].message, "Two letter country code is required");
//! ```

pub mod cli;
pub mod config;
pub mod connectors;
pub mod engine;
pub mod load;
pub mod mapping;
pub mod multipart;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod testing;
