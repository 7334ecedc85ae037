//! A sandbox, an engine on a real SQLite state file and helpers to act as Microsoft and as a
//! seller; shared by the engine's scenario tests (`#[path]`-included, not a test crate).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cosell::config::model::CrmKind;
use cosell::config::settings::Override;
use cosell::engine::connect;
use cosell::engine::inbox::InboxSink;
use cosell::engine::runner::{RunOptions, Runner};
use cosell::engine::sync::Engine;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::server::{self, ServerHandle, ServerOptions};
use cosell::store::Store;
use serde_json::{Map, Value, json};

use super::common;

/// One sandbox and one engine; the runner drives the engine like `cosell run --once`.
pub struct World {
    pub sandbox: SandboxHandle,
    pub runner: Runner,
    pub engine: Arc<Engine>,
    pub crm: CrmKind,
    server: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

/// The shipped mapping of a CRM.
pub fn shipped(crm: CrmKind) -> &'static Path {
    Path::new(match crm {
        CrmKind::Dynamics365 => "mappings/dynamics365.yaml",
        CrmKind::Salesforce => "mappings/salesforce.yaml",
    })
}

/// The shipped mapping of `crm` with `--set name=value` overrides.
pub async fn world_set(crm: CrmKind, settings: &[&str]) -> World {
    let overrides: Vec<Override> = settings
        .iter()
        .map(|s| Override::parse_cli(s).expect("override"))
        .collect();
    world_with_overrides(shipped(crm), crm, &overrides).await
}

/// A world for the shipped mapping of `crm`.
pub async fn world(crm: CrmKind) -> World {
    world_with(shipped(crm), crm).await
}

/// A world for `mapping`.
pub async fn world_with(mapping: &Path, crm: CrmKind) -> World {
    world_with_overrides(mapping, crm, &[]).await
}

async fn world_with_overrides(mapping: &Path, crm: CrmKind, overrides: &[Override]) -> World {
    let checked = cosell::load::check_file(mapping, overrides).expect("mapping readable");
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let plan = checked.plan.expect("plan");
    let sandbox = sandbox::start(SandboxOptions::default()).await.unwrap();
    let (pc, client) = connect::sandbox_clients(crm, sandbox.base_url(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();
    let engine = Arc::new(Engine::new(Arc::new(plan), pc, client, store));
    let runner = Runner::new(engine.clone(), RunOptions::default());
    World {
        sandbox,
        runner,
        engine,
        crm,
        server: None,
        _dir: dir,
    }
}

/// CRM names the scenarios need.
pub struct Names {
    pub opportunity: &'static str,
    pub opportunity_id: &'static str,
    pub referral_key: &'static str,
    pub name: &'static str,
    pub value: &'static str,
    pub stage: &'static str,
    pub audit: &'static str,
    pub description: &'static str,
    pub microsoft_crm_id: &'static str,
    pub lead: &'static str,
    pub lead_id: &'static str,
    pub lead_name: &'static str,
    pub solution: &'static str,
    pub solution_key: &'static str,
}

impl World {
    pub fn base(&self) -> &str {
        self.sandbox.base_url()
    }

    pub fn names(&self) -> Names {
        match self.crm {
            CrmKind::Dynamics365 => Names {
                opportunity: "opportunities",
                opportunity_id: "opportunityid",
                referral_key: "cosell_referralid",
                name: "name",
                value: "estimatedvalue",
                stage: "statuscode",
                audit: "cosell_audit",
                description: "description",
                microsoft_crm_id: "cosell_microsoftcrmid",
                lead: "leads",
                lead_id: "leadid",
                lead_name: "subject",
                solution: "cosell_solutions",
                solution_key: "cosell_pcsolutionid",
            },
            CrmKind::Salesforce => Names {
                opportunity: "Opportunity",
                opportunity_id: "Id",
                referral_key: "Referral_Id__c",
                name: "Name",
                value: "Amount",
                stage: "StageName",
                audit: "Partner_Center_Audit__c",
                description: "Description",
                microsoft_crm_id: "Microsoft_CRM_Id__c",
                lead: "Lead",
                lead_id: "Id",
                lead_name: "Company",
                solution: "Microsoft_Solution__c",
                solution_key: "Solution_Id__c",
            },
        }
    }

    /// Serves webhooks like `cosell run` does and registers them with the sandbox, so
    /// Microsoft-side events (related referrals) reach the inbox.
    pub async fn with_webhooks(mut self) -> World {
        let verifier =
            connect::sandbox_verifier(self.base(), &self.sandbox.ca_pem()).expect("verifier");
        let options = ServerOptions::new("127.0.0.1:0".parse().unwrap(), verifier);
        let path = options.webhook_path.clone();
        let sink =
            Arc::new(InboxSink::new(self.engine.store().clone()).waking(self.runner.waker()));
        let handle = server::serve(options, sink).await.expect("server");
        let url = format!("http://{}{path}", handle.local_addr());
        let events = [
            "referral-created",
            "referral-updated",
            "related-referral-created",
            "related-referral-updated",
        ];
        self.engine
            .partner_center()
            .register(&url, &events, false, true)
            .await
            .expect("webhook registered");
        self.server = Some(handle);
        self
    }

    /// Syncs until there is nothing left to do; nothing may be dead-lettered.
    pub async fn sync(&self) {
        let drained = self.runner.run_once().await.expect("sync");
        if drained.dead > 0 {
            let dead = self.engine.store().dead_letters().await.unwrap();
            let why: Vec<String> = dead
                .iter()
                .map(|d| format!("{} {}: {}", d.kind, d.payload, d.error))
                .collect();
            panic!("{} job(s) dead-lettered: {why:#?}", drained.dead);
        }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_sandbox/stats", self.base()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn crm_api(&self) -> &'static str {
        match self.crm {
            CrmKind::Dynamics365 => "dataverse",
            CrmKind::Salesforce => "salesforce",
        }
    }

    /// Calls received so far: (Partner Center, CRM).
    pub async fn calls(&self) -> (u64, u64) {
        let stats = self.stats().await;
        (
            stats["apis"]["partner_center"]["calls"]
                .as_u64()
                .unwrap_or(0),
            stats["apis"][self.crm_api()]["calls"].as_u64().unwrap_or(0),
        )
    }

    /// Writes (anything but GET, and Salesforce's composite reads aside) received so far:
    /// (Partner Center, CRM).
    pub async fn writes(&self) -> (u64, u64) {
        let stats = self.stats().await;
        let count = |api: &str| -> u64 {
            stats["apis"][api]["endpoints"]
                .as_object()
                .map(|endpoints| {
                    endpoints
                        .iter()
                        .filter(|(endpoint, _)| !endpoint.starts_with("GET "))
                        .filter(|(endpoint, _)| !endpoint.contains("/oauth2/"))
                        .map(|(_, e)| e["calls"].as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0)
        };
        (count("partner_center"), count(self.crm_api()))
    }

    /// A referral Microsoft shares with the partner (`body` overrides the defaults of
    /// [`common::cosell_referral`]); its id.
    pub async fn incoming_with(&self, name: &str, changes: Value) -> String {
        let mut body = common::cosell_referral(name);
        if let (Some(body), Value::Object(changes)) = (body.as_object_mut(), changes) {
            for (key, value) in changes {
                body.insert(key, value);
            }
        }
        let (status, body) = common::control(
            self.base(),
            "/_sandbox/partner-center/referrals/incoming",
            &body,
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// A co-sell referral Microsoft shares with the partner; its id.
    pub async fn incoming(&self, name: &str) -> String {
        self.incoming_with(name, json!({})).await
    }

    /// What a Microsoft seller does to a referral (see the sandbox's control API).
    pub async fn microsoft(&self, referral_id: &str, change: Value) {
        let (status, body) = common::control(
            self.base(),
            &format!("/_sandbox/partner-center/referrals/{referral_id}/microsoft"),
            &change,
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
    }

    pub async fn referral(&self, id: &str) -> Value {
        serde_json::to_value(self.engine.partner_center().get_referral(id).await.unwrap()).unwrap()
    }

    /// The partner's referrals naming `crm_id` as their `externalReferenceId`.
    pub async fn referrals_for(&self, crm_id: &str) -> Vec<Value> {
        use futures_util::TryStreamExt as _;
        let query = cosell::connectors::partner_center::ReferralQuery {
            filter: Some(format!("externalReferenceId eq '{crm_id}'")),
            ..Default::default()
        };
        self.engine
            .partner_center()
            .list_referrals(query)
            .map_ok(|r| serde_json::to_value(r).unwrap())
            .try_collect()
            .await
            .unwrap()
    }

    /// The id of the CRM record of `entity` whose referral-id key names `referral_id`.
    pub async fn crm_id_of(&self, entity: &str, referral_id: &str) -> Option<String> {
        let names = self.names();
        let id_field = if entity == names.lead {
            names.lead_id
        } else {
            names.opportunity_id
        };
        let criteria = json!({ names.referral_key: referral_id });
        self.engine
            .crm()
            .find(entity, id_field, criteria.as_object().unwrap())
            .await
            .unwrap()
    }

    /// One CRM record, all fields.
    pub async fn record(&self, entity: &str, id: &str) -> Map<String, Value> {
        self.engine
            .crm()
            .get(entity, id, &[])
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no {entity} {id}"))
            .fields
    }

    /// The CRM opportunity of a referral, all fields.
    pub async fn opportunity_of(&self, referral_id: &str) -> (String, Map<String, Value>) {
        let entity = self.names().opportunity;
        let id = self
            .crm_id_of(entity, referral_id)
            .await
            .unwrap_or_else(|| panic!("no {entity} for referral {referral_id}"));
        let record = self.record(entity, &id).await;
        (id, record)
    }

    /// A seller's edit of an opportunity.
    pub async fn update_opportunity(&self, id: &str, fields: Value) {
        // Whole-second change stamps: step past the last sync's second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.engine
            .crm()
            .update(
                self.names().opportunity,
                id,
                fields.as_object().unwrap(),
                None,
            )
            .await
            .unwrap();
    }

    /// A CRM record a seller creates; its id.
    pub async fn create(&self, entity: &str, fields: Value) -> String {
        self.engine
            .crm()
            .create(entity, fields.as_object().unwrap())
            .await
            .unwrap_or_else(|e| panic!("creating {entity}: {e}"))
    }

    /// A solution child record under an opportunity; its id.
    pub async fn add_solution(&self, opportunity: &str, solution_id: &str, name: &str) -> String {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fields = match self.crm {
            CrmKind::Dynamics365 => json!({
                "cosell_name": name,
                "cosell_pcsolutionid": solution_id,
                "cosell_opportunityid@odata.bind": format!("/opportunities({opportunity})"),
            }),
            CrmKind::Salesforce => json!({
                "Name": name,
                "Solution_Id__c": solution_id,
                "Opportunity__c": opportunity,
            }),
        };
        self.create(self.names().solution, fields).await
    }

    /// Removes a solution child record.
    pub async fn remove_solution(&self, id: &str) {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.engine
            .crm()
            .delete(self.names().solution, id)
            .await
            .unwrap();
    }

    /// The stage value a scenario names, per CRM.
    pub fn stage(&self, stage: Stage) -> Value {
        match (self.crm, stage) {
            (CrmKind::Dynamics365, Stage::OnHold) => json!({ "statuscode": 2 }),
            (CrmKind::Dynamics365, Stage::Active) => json!({ "statuscode": 1 }),
            (CrmKind::Dynamics365, Stage::Won) => json!({ "statecode": 1, "statuscode": 3 }),
            (CrmKind::Dynamics365, Stage::Lost) => json!({ "statecode": 2, "statuscode": 5 }),
            (CrmKind::Dynamics365, Stage::Declined) => json!({ "statecode": 2, "statuscode": 4 }),
            (CrmKind::Salesforce, Stage::OnHold) => json!({ "StageName": "On Hold" }),
            (CrmKind::Salesforce, Stage::Active) => json!({ "StageName": "Qualification" }),
            (CrmKind::Salesforce, Stage::Won) => json!({ "StageName": "Closed Won" }),
            (CrmKind::Salesforce, Stage::Lost) => json!({ "StageName": "Closed Lost" }),
            (CrmKind::Salesforce, Stage::Declined) => json!({ "StageName": "Closed Declined" }),
        }
    }

    /// A seller's opportunity flagged for co-sell: customer account (with `country`),
    /// optionally a contact, Microsoft help, and the given solutions. Its id.
    pub async fn seller_opportunity(&self, seller: Seller<'_>) -> String {
        let opportunity = match self.crm {
            CrmKind::Dynamics365 => {
                let account = self
                    .create(
                        "accounts",
                        json!({
                            "name": format!("{} Customer", seller.name),
                            "address1_line1": "1 Harbour Street",
                            "address1_city": "Sydney",
                            "address1_postalcode": "2000",
                            "address1_country": seller.country,
                        }),
                    )
                    .await;
                let currency = self
                    .engine
                    .crm()
                    .find(
                        "transactioncurrencies",
                        "transactioncurrencyid",
                        json!({ "isocurrencycode": "USD" }).as_object().unwrap(),
                    )
                    .await
                    .unwrap()
                    .expect("USD is enabled in the sandbox");
                let mut fields = json!({
                    "name": seller.name,
                    "estimatedvalue": 120000,
                    "estimatedclosedate": "2027-03-31",
                    "statuscode": 1,
                    "parentaccountid@odata.bind": format!("/accounts({account})"),
                    "customerid_account@odata.bind": format!("/accounts({account})"),
                    "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({currency})"),
                    "cosell_synctopartnercenter": true,
                });
                if seller.help {
                    fields["cosell_microsofthelp"] = json!(100_000_001);
                }
                if seller.contact {
                    let contact = self
                        .create(
                            "contacts",
                            json!({
                                "firstname": "Ada",
                                "lastname": "Lovelace",
                                "emailaddress1": format!("ada.{}@example.com", seller.name.len()),
                                "parentcustomerid_account@odata.bind": format!("/accounts({account})"),
                            }),
                        )
                        .await;
                    fields["parentcontactid@odata.bind"] = json!(format!("/contacts({contact})"));
                }
                self.create("opportunities", fields).await
            }
            CrmKind::Salesforce => {
                let account = self
                    .create(
                        "Account",
                        json!({
                            "Name": format!("{} Customer", seller.name),
                            "BillingStreet": "1 Harbour Street",
                            "BillingCity": "Sydney",
                            "BillingPostalCode": "2000",
                            "BillingCountry": seller.country,
                        }),
                    )
                    .await;
                let mut fields = json!({
                    "Name": seller.name,
                    "Amount": 120000,
                    "CloseDate": "2027-03-31",
                    "StageName": "Prospecting",
                    "CurrencyIsoCode": "USD",
                    "AccountId": account,
                    "Sync_With_Partner_Center__c": true,
                });
                if seller.help {
                    fields["Microsoft_Help__c"] = json!("WorkloadSpecificValueProposition");
                }
                if seller.contact {
                    let contact = self
                        .create(
                            "Contact",
                            json!({
                                "FirstName": "Ada",
                                "LastName": "Lovelace",
                                "Email": format!("ada.{}@example.com", seller.name.len()),
                                "AccountId": account,
                            }),
                        )
                        .await;
                    fields["ContactId"] = json!(contact);
                }
                self.create("Opportunity", fields).await
            }
        };
        for solution in seller.solutions {
            let fields = match self.crm {
                CrmKind::Dynamics365 => json!({
                    "cosell_name": format!("Solution {solution}"),
                    "cosell_pcsolutionid": solution,
                    "cosell_opportunityid@odata.bind": format!("/opportunities({opportunity})"),
                }),
                CrmKind::Salesforce => json!({
                    "Name": format!("Solution {solution}"),
                    "Solution_Id__c": solution,
                    "Opportunity__c": opportunity,
                }),
            };
            self.create(self.names().solution, fields).await;
        }
        opportunity
    }

    /// The audit log of a referral (or CRM record id), as `flow outcome: message` lines.
    pub async fn audit(&self, referral_id: &str) -> Vec<String> {
        self.engine
            .store()
            .audit_trail(referral_id, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}: {}", e.flow, e.outcome, e.message))
            .collect()
    }

    /// Syncs until `done` holds (webhook deliveries are asynchronous), at most ~10 s.
    pub async fn sync_until<F, Fut>(&self, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..50 {
            self.sync().await;
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for: {what}");
    }
}

/// Stages the scenarios move opportunities through.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    OnHold,
    Active,
    Won,
    Lost,
    Declined,
}

/// What a seller puts on a new opportunity.
pub struct Seller<'a> {
    pub name: &'a str,
    /// The customer's country as typed (`None`: left empty).
    pub country: Option<&'a str>,
    pub contact: bool,
    pub help: bool,
    pub solutions: &'a [&'a str],
}

impl<'a> Seller<'a> {
    /// A complete co-sell opportunity: country AU, a contact, Microsoft help, one solution.
    pub fn cosell(name: &'a str) -> Seller<'a> {
        Seller {
            name,
            country: Some("AU"),
            contact: true,
            help: true,
            solutions: &["SOL-34104-EBB"],
        }
    }
}

/// Calls made to the sandbox between two snapshots of `/_sandbox/stats`, per `api METHOD path`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Calls {
    pub by_endpoint: std::collections::BTreeMap<String, u64>,
}

impl Calls {
    fn of(stats: &Value) -> Calls {
        let mut by_endpoint = std::collections::BTreeMap::new();
        if let Some(apis) = stats["apis"].as_object() {
            for (api, s) in apis {
                for (endpoint, e) in s["endpoints"].as_object().into_iter().flatten() {
                    // Token calls are not API calls (and are cached for an hour).
                    if endpoint.contains("/oauth2/") {
                        continue;
                    }
                    let n = e["calls"].as_u64().unwrap_or(0);
                    by_endpoint.insert(format!("{api} {endpoint}"), n);
                }
            }
        }
        Calls { by_endpoint }
    }

    /// What `after` adds to `self`.
    pub fn since(&self, after: &Calls) -> Calls {
        let by_endpoint = after
            .by_endpoint
            .iter()
            .map(|(k, n)| (k.clone(), n - self.by_endpoint.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Calls { by_endpoint }
    }

    pub fn total(&self) -> u64 {
        self.by_endpoint.values().sum()
    }

    /// Calls that change something (anything but GET).
    pub fn writes(&self) -> u64 {
        self.by_endpoint
            .iter()
            .filter(|(k, _)| k.split(' ').nth(1).is_none_or(|m| m != "GET"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn reads(&self) -> u64 {
        self.total() - self.writes()
    }
}

impl std::fmt::Display for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} calls ({} writes)", self.total(), self.writes())?;
        for (endpoint, n) in &self.by_endpoint {
            write!(f, "\n    {n} × {endpoint}")?;
        }
        Ok(())
    }
}

impl World {
    /// Every call so far, per endpoint.
    pub async fn call_log(&self) -> Calls {
        Calls::of(&self.stats().await)
    }

    /// Delivers a Partner Center event the way the webhook endpoint stores it, then runs the
    /// inbox only (no reconcile, no CRM poll): what one event costs.
    pub async fn deliver(&self, event: &str, referral_id: &str) {
        use cosell::store::NewJob;
        self.engine
            .store()
            .enqueue(&NewJob::new(
                cosell::engine::inbox::referral_key(referral_id),
                cosell::engine::inbox::PC_EVENT,
                json!({ "event": event, "referral_id": referral_id }),
            ))
            .await
            .unwrap();
        let drained = self.runner.drain().await.unwrap();
        assert_eq!(drained.dead, 0);
    }
}
