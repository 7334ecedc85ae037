//! One referral at a time: the jobs the inbox hands out, run through the flows of the
//! mapping file. Nothing here names a CRM field — tables, columns, stages and rules all come
//! from the compiled [`Plan`]; the CRM differences live in [`Crm`].
//!
//! How the engine stays frugal and safe (design §6):
//! - **Diff-gated writes.** The link's snapshot keeps, per side, the projection last synced.
//!   A change is the set of fields whose mapped value differs from it; nothing changed, no
//!   call. That is also the echo suppression: our own write coming back maps to the
//!   projection we stored when we wrote it.
//! - **Conflicts by owner.** A field changed on both sides since the last sync is settled by
//!   the field's declared `owner` (default: the flow's source side), `newest` comparing the
//!   two records' modification times, and audited.
//! - **No duplicates.** CRM records are upserted by the referral-id key; a referral is only
//!   created after checking links and Partner Center's `externalReferenceId`.
//! - **Concurrency.** Writes carry `If-Match` / `If-Unmodified-Since`; a 412 re-runs the job.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::crm::{Applied, Crm, Find, Write, WriteSet, is_guid};
use super::lookups::{LookupCache, resolve_batched, resolve_live};
use crate::config::model::{CrmKind, Operation, Owner, RecordKind};
use crate::connectors::ConnectorError;
use crate::connectors::partner_center::{
    ODataFilter, PartnerCenterClient, Referral, ReferralQuery, diff_to_patch,
};
use crate::mapping::lookup::Outcome;
use crate::mapping::plan::{FlowPlan, Input, Mapped, Plan, TargetRecord, placeholder_name};
use crate::mapping::transforms::datetime;
use crate::store::{Job, Link, NewAudit, Store, StoreError};

/// Job kind: a Partner Center webhook event (`{event, referral_id}`).
pub const PC_EVENT: &str = super::inbox::PC_EVENT;
/// Job kind: a referral found by the reconcile (`{referral}` — the body as listed).
pub const PC_REFERRAL: &str = "pc_referral";
/// Job kind: a changed CRM record (`{entity, id}`).
pub const CRM_CHANGE: &str = "crm_change";

/// Longest CRM audit trail kept (characters), newest entry first.
const AUDIT_TRAIL_CHARS: usize = 2000;

/// Partner Center refuses these paths in an update (reference §2.8: the customer address is
/// fixed once shared); sending them would fail the whole patch.
const NOT_UPDATABLE: &[&str] = &["customerProfile.address."];

/// What a job did, for metrics and `--once` accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Something was written (to the CRM, to Partner Center or both).
    Written,
    /// Nothing changed (re-delivery, echo of our own write).
    Unchanged,
    /// No flow applies (sync flag off, on hold, co-sell only, secondary referral).
    Skipped,
    /// Bad data: audited (and marked on the CRM record where the flow says so), not retried.
    Rejected,
}

impl JobOutcome {
    /// Label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobOutcome::Written => "written",
            JobOutcome::Unchanged => "unchanged",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Rejected => "rejected",
        }
    }
}

/// Why a job did not finish.
#[derive(Debug, Clone)]
pub enum JobError {
    /// Worth another attempt (throttling, outage, a concurrent change); `after` is the
    /// upstream's hint.
    Retry {
        /// What went wrong.
        message: String,
        /// Wait at least this long.
        after: Option<Duration>,
    },
    /// Trying again cannot help (a request the service refuses); goes to the dead letters.
    Fail {
        /// What went wrong.
        message: String,
    },
}

impl JobError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            JobError::Retry { message, .. } | JobError::Fail { message } => message,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for JobError {}

impl From<ConnectorError> for JobError {
    fn from(error: ConnectorError) -> Self {
        let message = error.to_string();
        match &error {
            ConnectorError::PreconditionFailed { .. } => JobError::Retry {
                message,
                after: Some(Duration::ZERO),
            },
            ConnectorError::Status { status, .. } if *status == 429 || *status >= 500 => {
                JobError::Retry {
                    message,
                    after: None,
                }
            }
            _ if error.is_transient() => JobError::Retry {
                message,
                after: error.retry_after(),
            },
            ConnectorError::Auth { .. } => JobError::Retry {
                message,
                after: Some(Duration::from_secs(30)),
            },
            _ => JobError::Fail { message },
        }
    }
}

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        JobError::Retry {
            message: error.to_string(),
            after: Some(Duration::from_secs(1)),
        }
    }
}

/// What a dry run would write (`cosell plan`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedWrite {
    /// `crm` or `partner_center`.
    pub system: &'static str,
    /// `create` or `update`.
    pub action: &'static str,
    /// Table / object, or `referrals`.
    pub entity: String,
    /// The record written (CRM id or referral id), when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The flow that decided it.
    pub flow: String,
    /// The referral concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referral_id: Option<String>,
    /// The fields that would be written.
    pub fields: Map<String, Value>,
}

/// The flows of a plan by the part they play.
#[derive(Debug, Default)]
struct Roles {
    /// referral → CRM record, first whose `when` holds wins.
    pc_main: Vec<String>,
    /// referral → CRM child records, by parent flow.
    pc_children: Vec<String>,
    /// related referral → CRM record.
    related: Vec<String>,
    /// CRM record → referral.
    crm_main: Vec<String>,
    /// CRM record → a second referral on the same engagement (Microsoft's).
    crm_secondary: Vec<String>,
}

impl Roles {
    fn of(plan: &Plan) -> Roles {
        let mut roles = Roles::default();
        for flow in plan.flows() {
            let name = flow.name.clone();
            match (flow.source, flow.target.is_partner_center(), &flow.parent) {
                (RecordKind::Referral, false, None) => roles.pc_main.push(name),
                (RecordKind::Referral, false, Some(_)) => roles.pc_children.push(name),
                (RecordKind::RelatedReferral, false, _) => roles.related.push(name),
                (source, true, None) if !source.is_partner_center() => roles.crm_main.push(name),
                (source, true, Some(_)) if !source.is_partner_center() => {
                    roles.crm_secondary.push(name)
                }
                _ => {}
            }
        }
        roles
    }
}

/// The per-link memory the engine keeps in [`Link::snapshot`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    /// The referral as last read or written (for patches and CRM → PC diffs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    referral: Option<Value>,
    /// Referral → CRM projection last synced (update operation), by CRM field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pc_projection: Option<Map<String, Value>>,
    /// CRM → referral projection last synced, by dotted referral path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crm_projection: Option<Map<String, Value>>,
    /// Related referral → CRM projection last synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    related_projection: Option<Map<String, Value>>,
    /// Hash of the child records last synced per child flow.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    children: BTreeMap<String, String>,
    /// Ids of the CRM child records read with the record (to route deletions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    crm_children: Vec<String>,
    /// Microsoft's referral on the engagement, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    microsoft_referral: Option<String>,
}

impl Snapshot {
    fn of(link: Option<&Link>) -> Snapshot {
        link.and_then(|l| l.snapshot.clone())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A Salesforce object's field names and child relationship names.
type Described = (Vec<String>, Vec<String>);

/// The sync engine: a compiled plan, both systems and the state store.
pub struct Engine {
    plan: Arc<Plan>,
    pc: PartnerCenterClient,
    crm: Crm,
    store: Store,
    roles: Roles,
    cache: LookupCache,
    /// Salesforce describe results: object → (fields, child relationships).
    describe: Mutex<HashMap<String, Described>>,
    /// Find-or-create of customer records, one at a time per match: two referrals of the
    /// same new customer synced at once must not both create the account. Striped (a
    /// fixed set of locks chosen by the match's hash) so memory stays bounded.
    customer_locks: Vec<Mutex<()>>,
    /// `Some` during a dry run: writes are collected here instead of made.
    dry_run: Option<std::sync::Mutex<Vec<PlannedWrite>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("crm", &self.plan.crm)
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

/// A CRM record id of the mapping's CRM (GUIDs for Dataverse, 15/18 characters for
/// Salesforce); anything else in `externalReferenceId` is not ours.
fn plausible_crm_id(crm: CrmKind, id: &str) -> bool {
    match crm {
        CrmKind::Dynamics365 => is_guid(id),
        CrmKind::Salesforce => {
            (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
        }
    }
}

impl Engine {
    /// An engine over `plan`, both clients and `store`.
    pub fn new(plan: Arc<Plan>, pc: PartnerCenterClient, crm: Crm, store: Store) -> Engine {
        let roles = Roles::of(&plan);
        Engine {
            plan,
            pc,
            crm,
            store,
            roles,
            cache: LookupCache::default(),
            describe: Mutex::new(HashMap::new()),
            customer_locks: (0..CUSTOMER_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            dry_run: None,
        }
    }

    /// The same engine in dry-run mode: reads happen, writes are only recorded
    /// ([`Engine::planned`]) and the store is not changed.
    pub fn dry_run(mut self) -> Engine {
        self.dry_run = Some(std::sync::Mutex::new(Vec::new()));
        self
    }

    /// The writes a dry run collected.
    pub fn planned(&self) -> Vec<PlannedWrite> {
        self.dry_run
            .as_ref()
            .map(|d| crate::connectors::lock(d).clone())
            .unwrap_or_default()
    }

    fn plan_write(&self, write: PlannedWrite) -> bool {
        match &self.dry_run {
            Some(list) => {
                crate::connectors::lock(list).push(write);
                true
            }
            None => false,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The Partner Center client.
    pub fn partner_center(&self) -> &PartnerCenterClient {
        &self.pc
    }

    /// The CRM.
    pub fn crm(&self) -> &Crm {
        &self.crm
    }

    /// The compiled plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// CRM tables whose changes drive CRM → Partner Center flows, with their sync-flag and
    /// referral-id columns.
    pub fn polled_entities(&self) -> Vec<PolledEntity> {
        let mut out: Vec<PolledEntity> = Vec::new();
        for name in &self.roles.crm_main {
            let Some(flow) = self.plan.flow(name) else {
                continue;
            };
            if out.iter().any(|p| p.entity == flow.entity) {
                continue;
            }
            out.push(PolledEntity {
                entity: flow.entity.clone(),
                id_field: self.plan.id_field(&flow.entity),
                sync_flag: flow.sync_flag.clone(),
                referral_id_field: flow.referral_id_field.clone(),
                children: self.child_tables(),
            });
        }
        out
    }

    /// Child tables of a CRM → PC flow's `expand` (solutions), as (table, parent column).
    fn child_tables(&self) -> Vec<ChildTable> {
        let mut out = Vec::new();
        for name in &self.roles.pc_children {
            let Some(child) = self.plan.flow(name) else {
                continue;
            };
            // The child flow writes the column that points at the parent record.
            for field in child.fields() {
                let column = field.target.trim_end_matches("@odata.bind");
                let is_parent_ref = match self.plan.crm {
                    CrmKind::Dynamics365 => field.target.ends_with("@odata.bind"),
                    CrmKind::Salesforce => {
                        column.ends_with("__c") && column.to_lowercase().contains("opportunit")
                    }
                };
                if is_parent_ref && child.target != RecordKind::Referral {
                    let parent_column = match self.plan.crm {
                        CrmKind::Dynamics365 => format!("_{column}_value"),
                        CrmKind::Salesforce => column.to_owned(),
                    };
                    if !out.iter().any(|c: &ChildTable| c.entity == child.entity) {
                        out.push(ChildTable {
                            entity: child.entity.clone(),
                            id_field: self.plan.id_field(&child.entity),
                            parent_column,
                        });
                    }
                }
            }
        }
        out
    }

    // ---------------------------------------------------------------------------------
    // Jobs
    // ---------------------------------------------------------------------------------

    /// Runs one inbox job.
    pub async fn handle(&self, job: &Job) -> Result<JobOutcome, JobError> {
        match job.kind.as_str() {
            PC_EVENT => {
                let referral_id = job.payload["referral_id"].as_str().unwrap_or_default();
                let event = job.payload["event"].as_str().unwrap_or_default();
                if referral_id.is_empty() {
                    return Err(JobError::Fail {
                        message: "the event names no referral".into(),
                    });
                }
                let Some(value) = self.fresh_referral(referral_id, event).await? else {
                    return Ok(JobOutcome::Skipped);
                };
                if event.starts_with("related-referral") {
                    self.sync_related(value).await
                } else {
                    self.sync_referral(value).await
                }
            }
            PC_REFERRAL => {
                let listed = &job.payload["referral"];
                // The payload is the referral as the reconcile listed it. A job claimed before
                // (a retry, or a crash mid-job) may have written to the referral itself since
                // (the externalReferenceId write-back), or met a 412: its eTag is stale, and
                // patching with it would fail with 412 on every attempt until the job is
                // dead-lettered. Such a job re-reads the referral; a first attempt trusts the
                // listing and saves the call — unless the link was saved after the listing
                // was taken (a webhook's job ran first, or the job waited in the inbox across
                // a restart): the listing may then be older than what the CRM has already,
                // and applying it would put old values back (the reliability suite's crash
                // section caught Microsoft's notes being reverted this way).
                // The listing can also be older than what the link last saw although it was
                // enqueued later (the reconcile reads a page, then enqueues its items one by
                // one while other jobs write): a different eTag with an `updatedDateTime`
                // no later than the one last seen is an old version.
                let stale = match listed["id"].as_str() {
                    Some(id) if job.claims <= 1 => self.store.link(id).await?.is_some_and(|link| {
                        link.updated_at >= job.enqueued_at || older_than_seen(&link, listed)
                    }),
                    _ => true,
                };
                match listed["id"].as_str() {
                    Some(id) if stale => match self.fresh_referral(id, "reconcile").await? {
                        Some(value) => self.sync_referral(value).await,
                        None => Ok(JobOutcome::Skipped),
                    },
                    _ => self.sync_referral(listed.clone()).await,
                }
            }
            CRM_CHANGE => {
                let entity = job.payload["entity"].as_str().unwrap_or_default();
                let id = job.payload["id"].as_str().unwrap_or_default();
                self.sync_crm_record(entity, id).await
            }
            other => Err(JobError::Fail {
                message: format!("unknown job kind `{other}`"),
            }),
        }
    }

    /// The referral as Partner Center has it now; `None` (audited) when it no longer exists.
    /// `trigger` names what asked for it, for the audit entry.
    async fn fresh_referral(
        &self,
        referral_id: &str,
        trigger: &str,
    ) -> Result<Option<Value>, JobError> {
        match self.pc.get_referral(referral_id).await {
            Ok(referral) => Ok(Some(serde_json::to_value(&referral).unwrap_or(Value::Null))),
            Err(ConnectorError::NotFound { .. }) => {
                self.audit(
                    Some(referral_id),
                    None,
                    None,
                    "-",
                    "ignored",
                    "the referral no longer exists in Partner Center",
                    json!({"event": trigger}),
                )
                .await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        referral_id: Option<&str>,
        entity: Option<&str>,
        crm_id: Option<&str>,
        flow: &str,
        outcome: &str,
        message: &str,
        details: Value,
    ) -> Result<(), StoreError> {
        if self.dry_run.is_some() {
            return Ok(());
        }
        metrics::counter!("cosell_jobs_total", "flow" => flow.to_owned(), "outcome" => outcome.to_owned())
            .increment(1);
        self.store
            .audit(&NewAudit {
                referral_id: referral_id.map(str::to_owned),
                crm_entity: entity.map(str::to_owned),
                crm_id: crm_id.map(str::to_owned),
                flow: flow.to_owned(),
                outcome: outcome.to_owned(),
                message: message.to_owned(),
                details,
            })
            .await
    }

    async fn save_link(&self, link: &Link) -> Result<(), StoreError> {
        if self.dry_run.is_some() {
            return Ok(());
        }
        self.store.save_link(link).await
    }

    // ---------------------------------------------------------------------------------
    // Partner Center → CRM
    // ---------------------------------------------------------------------------------

    /// Syncs one referral into the CRM (S1, S6, S12, S13 and the echo of S2–S5, S8).
    pub async fn sync_referral(&self, referral: Value) -> Result<JobOutcome, JobError> {
        let Some(referral_id) = referral["id"].as_str().map(str::to_owned) else {
            return Err(JobError::Fail {
                message: "the referral has no id".into(),
            });
        };
        let rid = referral_id.as_str();
        let record = Arc::new(referral.clone());
        let mut link = self.store.link(rid).await?;

        // The other party's side of a co-sell we already sync (Microsoft's referral on our
        // engagement). Its webhook says so (`related-referral-*`); the reconcile lists it
        // without one, so a missed webhook used to leave Microsoft's acceptance unsynced.
        // A referral naming a CRM record is not this case (see below).
        if link.is_none()
            && referral["externalReferenceId"]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            && let Some(engagement) = referral["engagementId"].as_str().filter(|e| !e.is_empty())
            && self
                .store
                .linked_on_engagement(engagement, rid)
                .await?
                .is_some()
        {
            return Box::pin(self.sync_related(referral)).await;
        }

        // A CRM record whose referral is being created right now (the CRM → PC job saved
        // the link, and is still writing Microsoft's referral and the success marks back):
        // this referral's own webhook can arrive first. Without that job's record of what
        // both sides held, every field would look changed in Partner Center and the
        // seller's latest CRM values would be overwritten; wait for the job to finish.
        // (A job killed mid-way leaves `syncing` behind; after a lease's time it is redone
        // and this referral goes ahead.)
        if let Some(l) = &link
            && l.state == "syncing"
            && l.crm_id.is_some()
            && SystemTime::now()
                .duration_since(l.updated_at)
                .is_ok_and(|age| age < Duration::from_secs(120))
        {
            // Look again in a few seconds, as a new job: waiting must not use up this
            // job's attempts (the create can take a while under throttling).
            let mut again = crate::store::NewJob::new(
                super::inbox::referral_key(rid),
                PC_EVENT,
                json!({ "event": "referral-updated", "referral_id": rid }),
            );
            again.not_before = Some(SystemTime::now() + Duration::from_secs(3));
            self.store.enqueue(&again).await?;
            return Ok(JobOutcome::Skipped);
        }

        // Choose the flow (first whose `when` holds).
        let operation = if link.as_ref().is_some_and(|l| l.crm_id.is_some()) {
            Operation::Update
        } else {
            Operation::Create
        };
        let mut chosen: Option<(&FlowPlan, Mapped)> = None;
        for name in &self.roles.pc_main {
            let Some(flow) = self.plan.flow(name) else {
                continue;
            };
            if let Some(l) = &link
                && operation == Operation::Update
                && l.entity != flow.entity
            {
                continue;
            }
            let mapped = self.plan.evaluate(
                flow,
                &Input {
                    record: &record,
                    parent: None,
                    operation,
                },
            );
            if !mapped.skipped {
                chosen = Some((flow, mapped));
                break;
            }
        }
        let Some((flow, mapped)) = chosen else {
            if link.is_none() {
                self.audit(
                    Some(rid),
                    None,
                    None,
                    "-",
                    "skipped",
                    &skip_reason(&referral),
                    json!({}),
                )
                .await?;
            }
            return Ok(JobOutcome::Skipped);
        };

        // A referral naming a CRM record (externalReferenceId) that we did not link yet.
        if link.is_none()
            && let Some(external) = referral["externalReferenceId"]
                .as_str()
                .filter(|s| !s.trim().is_empty())
        {
            if let Some(other) = self.store.link_by_crm(&flow.entity, external).await? {
                // Microsoft's referral of our own engagement, or a copy: the record already
                // follows its referral.
                if other.referral_id != rid {
                    self.audit(
                        Some(rid),
                        Some(&flow.entity),
                        Some(external),
                        &flow.name,
                        "skipped",
                        &format!(
                            "the CRM record {external} already follows referral {}",
                            other.referral_id
                        ),
                        json!({}),
                    )
                    .await?;
                    return Ok(JobOutcome::Skipped);
                }
            }
            let exists = plausible_crm_id(self.plan.crm, external)
                && match self
                    .crm
                    .get(&flow.entity, external, &[&flow.referral_id_field])
                    .await
                {
                    Ok(found) => found.is_some(),
                    // Salesforce answers an id with a wrong checksum suffix (or a deleted
                    // record) with NOT_FOUND: no such record either way.
                    Err(ConnectorError::NotFound { .. }) => false,
                    Err(error) => return Err(error.into()),
                };
            if !exists {
                // Troubleshooting guide: a CRM ID that matches no CRM record → ignored.
                self.audit(
                    Some(rid),
                    Some(&flow.entity),
                    Some(external),
                    &flow.name,
                    "ignored",
                    &format!(
                        "externalReferenceId {external} matches no {} record; the referral is ignored",
                        flow.entity
                    ),
                    json!({}),
                )
                .await?;
                return Ok(JobOutcome::Skipped);
            }
            let mut adopted = Link::new(rid, flow.entity.clone(), "synced");
            adopted.crm_id = Some(external.to_owned());
            link = Some(adopted);
            return Box::pin(self.sync_referral_with(flow, &referral, link, Operation::Update))
                .await;
        }
        if !mapped.violations.is_empty() {
            let message = violation_text(&mapped);
            self.audit(
                Some(rid),
                Some(&flow.entity),
                link.as_ref().and_then(|l| l.crm_id.as_deref()),
                &flow.name,
                "rejected",
                &message,
                json!({"violations": mapped.violations}),
            )
            .await?;
            return Ok(JobOutcome::Rejected);
        }
        self.write_referral(flow, &referral, link, operation, mapped)
            .await
    }

    async fn sync_referral_with(
        &self,
        flow: &FlowPlan,
        referral: &Value,
        link: Option<Link>,
        operation: Operation,
    ) -> Result<JobOutcome, JobError> {
        let record = Arc::new(referral.clone());
        let mapped = self.plan.evaluate(
            flow,
            &Input {
                record: &record,
                parent: None,
                operation,
            },
        );
        if mapped.skipped {
            return Ok(JobOutcome::Skipped);
        }
        if !mapped.violations.is_empty() {
            let rid = referral["id"].as_str();
            self.audit(
                rid,
                Some(&flow.entity),
                None,
                &flow.name,
                "rejected",
                &violation_text(&mapped),
                json!({"violations": mapped.violations}),
            )
            .await?;
            return Ok(JobOutcome::Rejected);
        }
        self.write_referral(flow, referral, link, operation, mapped)
            .await
    }

    /// The projection stored for later diffs: always the update-operation mapping, so that
    /// create-only fields never count as changes.
    fn update_projection(&self, flow: &FlowPlan, referral: &Value) -> Map<String, Value> {
        let record = Arc::new(referral.clone());
        let mapped = self.plan.evaluate(
            flow,
            &Input {
                record: &record,
                parent: None,
                operation: Operation::Update,
            },
        );
        mapped
            .records
            .into_iter()
            .next()
            .map(|r| r.fields)
            .unwrap_or_default()
    }

    async fn write_referral(
        &self,
        flow: &FlowPlan,
        referral: &Value,
        link: Option<Link>,
        operation: Operation,
        mapped: Mapped,
    ) -> Result<JobOutcome, JobError> {
        let rid = referral["id"].as_str().unwrap_or_default();
        let mut snapshot = Snapshot::of(link.as_ref());
        let projection = self.update_projection(flow, referral);
        let Some(mut target) = mapped.records.into_iter().next() else {
            return Ok(JobOutcome::Skipped);
        };
        let id_field = self.plan.id_field(&flow.entity);
        let mut link = link.unwrap_or_else(|| Link::new(rid, flow.entity.clone(), "syncing"));
        let mut written = false;

        let crm_id = match (operation, link.crm_id.clone()) {
            (Operation::Update, Some(crm_id)) => {
                let previous = snapshot.pc_projection.clone().unwrap_or_default();
                let mut changed: Vec<String> = projection
                    .keys()
                    .filter(|k| !same(previous.get(*k), projection.get(*k)))
                    .cloned()
                    .collect();
                if changed.is_empty() {
                    // Re-delivery, reconcile of a synced referral, or our own write.
                    snapshot.referral = Some(referral.clone());
                    link.pc_etag = referral["eTag"].as_str().map(str::to_owned);
                    link.snapshot = Some(snapshot.to_value());
                    if snapshot_changed(&link, referral) {
                        self.save_link(&link).await?;
                    }
                    return Ok(JobOutcome::Unchanged);
                }
                // Conflicts: fields the seller changed too since the last sync.
                let comparable: Vec<String> = changed
                    .iter()
                    .filter(|k| {
                        !k.contains('@')
                            && target
                                .fields
                                .get(k.as_str())
                                .is_some_and(|v| placeholder_name(v).is_none())
                    })
                    .cloned()
                    .collect();
                let modified = self.crm.modified_field();
                let mut read_fields: Vec<&str> = comparable.iter().map(String::as_str).collect();
                read_fields.push(modified);
                let current = self.crm.get(&flow.entity, &crm_id, &read_fields).await?;
                let Some(current) = current else {
                    // The CRM record is gone: the referral goes back to unlinked.
                    self.audit(
                        Some(rid),
                        Some(&flow.entity),
                        Some(&crm_id),
                        &flow.name,
                        "ignored",
                        &format!(
                            "{} {crm_id} no longer exists in the CRM; the referral is not synced",
                            flow.entity
                        ),
                        json!({}),
                    )
                    .await?;
                    link.state = "orphaned".into();
                    self.save_link(&link).await?;
                    return Ok(JobOutcome::Skipped);
                };
                let conflicts = self.settle_conflicts(
                    flow,
                    Owner::PartnerCenter,
                    &mut changed,
                    &Changes {
                        previous: &previous,
                        projection: &projection,
                        comparable: &|field| comparable.iter().any(|c| c == field),
                        now: &|field| current.fields.get(field).cloned(),
                        incoming_modified: referral["updatedDateTime"].as_str(),
                        other_modified: current.fields.get(modified).and_then(Value::as_str),
                    },
                );
                self.audit_conflicts(rid, flow, &crm_id, conflicts).await?;
                let mut fields = Map::new();
                for field in &changed {
                    if let Some(v) = target.fields.get(field) {
                        fields.insert(field.clone(), v.clone());
                    }
                }
                target.fields = fields;
                let wanted: Vec<String> = target
                    .lookups
                    .iter()
                    .filter(|l| {
                        target
                            .fields
                            .values()
                            .any(|v| placeholder_name(v) == Some(l.name.as_str()))
                            || needed_by_others(&target, &l.name)
                    })
                    .map(|l| l.name.clone())
                    .collect();
                target.lookups.retain(|l| wanted.contains(&l.name));
                if !target.fields.is_empty() {
                    if let Err(message) = self.resolve_lookups(flow, referral, &mut target).await? {
                        self.audit(
                            Some(rid),
                            Some(&flow.entity),
                            Some(&crm_id),
                            &flow.name,
                            "rejected",
                            &message,
                            json!({}),
                        )
                        .await?;
                        return Ok(JobOutcome::Rejected);
                    }
                    if !self.plan_write(PlannedWrite {
                        system: "crm",
                        action: "update",
                        entity: flow.entity.clone(),
                        id: Some(crm_id.clone()),
                        flow: flow.name.clone(),
                        referral_id: Some(rid.to_owned()),
                        fields: target.fields.clone(),
                    }) {
                        self.crm
                            .update(
                                &flow.entity,
                                &crm_id,
                                &target.fields,
                                current.version.as_deref(),
                            )
                            .await?;
                    }
                    written = true;
                    self.audit(
                        Some(rid),
                        Some(&flow.entity),
                        Some(&crm_id),
                        &flow.name,
                        "updated",
                        &format!("updated {} in the CRM", keys(&target.fields)),
                        json!({"fields": target.fields}),
                    )
                    .await?;
                }
                crm_id
            }
            _ => {
                // Create (or repair a half-finished create: the upsert by referral id finds
                // the record a crashed attempt made). Two CRM round trips: every lookup plus
                // "does the record exist already" in one, then the new customer records,
                // the record and its children as one set. A dry run plans the set instead.
                let (crm_id, created) = match self
                    .create_in_crm(flow, referral, rid, &id_field, &mut target, &mut snapshot)
                    .await?
                {
                    Ok(done) => done,
                    Err(message) => {
                        self.audit(
                            Some(rid),
                            Some(&flow.entity),
                            None,
                            &flow.name,
                            "rejected",
                            &message,
                            json!({}),
                        )
                        .await?;
                        return Ok(JobOutcome::Rejected);
                    }
                };
                written = true;
                link.crm_id = (!crm_id.is_empty()).then(|| crm_id.clone());
                link.entity = flow.entity.clone();
                // The link first: a crash after this point resumes as an update.
                link.state = "syncing".into();
                self.save_link(&link).await?;
                self.audit(
                    Some(rid),
                    Some(&flow.entity),
                    Some(&crm_id),
                    &flow.name,
                    if created { "created" } else { "updated" },
                    &format!(
                        "{} {} {crm_id} in the CRM",
                        if created { "created" } else { "updated" },
                        flow.entity
                    ),
                    json!({"fields": target.fields}),
                )
                .await?;
                crm_id
            }
        };

        // Child records (solutions).
        if !crm_id.is_empty() {
            self.write_children(flow, referral, &crm_id, &mut snapshot)
                .await?;
        }

        // Write-back to Partner Center (externalReferenceId).
        let mut referral_now = referral.clone();
        if !crm_id.is_empty() {
            let result = json!({ id_field.clone(): crm_id.clone(), "id": crm_id.clone() });
            let record = Arc::new(referral.clone());
            if let Ok(fields) = self.plan.on_success(flow, &record, &result) {
                let mut desired = referral.clone();
                for (path, value) in flatten_object(&fields) {
                    set_path(&mut desired, &path, value);
                }
                let ops = diff_to_patch(referral, &desired);
                if !ops.is_empty() && referral["status"] != "Closed" {
                    if !self.plan_write(PlannedWrite {
                        system: "partner_center",
                        action: "update",
                        entity: "referrals".into(),
                        id: Some(rid.to_owned()),
                        flow: flow.name.clone(),
                        referral_id: Some(rid.to_owned()),
                        fields: fields.clone(),
                    }) {
                        let updated = self
                            .pc
                            .patch_referral_returning(rid, &ops, referral["eTag"].as_str())
                            .await?;
                        referral_now = serde_json::to_value(&updated).unwrap_or(desired);
                    }
                    written = true;
                }
            }
        }
        link.state = state_of(&referral_now);
        link.pc_etag = referral_now["eTag"].as_str().map(str::to_owned);
        link.pc_hash = Some(hash(&Value::Object(projection.clone())));
        link.pc_synced_at = Some(SystemTime::now());
        snapshot.pc_projection = Some(self.update_projection(flow, &referral_now));
        snapshot.referral = Some(referral_now);
        link.snapshot = Some(snapshot.to_value());
        self.save_link(&link).await?;
        Ok(if written {
            JobOutcome::Written
        } else {
            JobOutcome::Unchanged
        })
    }

    /// Settles the fields an incoming change touches (`changed`, from the side `incoming`)
    /// against the other side: a field the other side also changed since the last sync is
    /// a conflict, kept in `changed` only when `incoming` wins it by the field's `owner`
    /// (undeclared: the incoming side; `newest`: by modification time). Returns the
    /// conflicts, for [`Engine::audit_conflicts`].
    fn settle_conflicts(
        &self,
        flow: &FlowPlan,
        incoming: Owner,
        changed: &mut Vec<String>,
        changes: &Changes<'_>,
    ) -> Vec<Value> {
        let side = |owner: Owner| match owner {
            Owner::Crm => "crm",
            _ => "partner_center",
        };
        let other = match incoming {
            Owner::Crm => Owner::PartnerCenter,
            _ => Owner::Crm,
        };
        let mut conflicts = Vec::new();
        changed.retain(|field| {
            let Some(before) = changes.previous.get(field) else {
                return true;
            };
            if !(changes.comparable)(field) {
                return true;
            }
            let now = (changes.now)(field);
            if same(now.as_ref(), Some(before)) || same(now.as_ref(), changes.projection.get(field))
            {
                return true;
            }
            let owner = self.owner(flow, field).unwrap_or(incoming);
            let incoming_wins = match owner {
                Owner::Newest => newer(changes.incoming_modified, changes.other_modified),
                owner => owner == incoming,
            };
            conflicts.push(json!({
                "field": field,
                side(incoming): changes.projection.get(field),
                side(other): now,
                "last_synced": before,
                // As the mapping spells it (`partner_center`, not `partnercenter`).
                "owner": owner,
                "kept": side(if incoming_wins { incoming } else { other }),
            }));
            incoming_wins
        });
        conflicts
    }

    /// One audit entry listing the conflicts of a sync and who kept each field.
    async fn audit_conflicts(
        &self,
        rid: &str,
        flow: &FlowPlan,
        crm_id: &str,
        conflicts: Vec<Value>,
    ) -> Result<(), StoreError> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = conflicts
            .iter()
            .map(|c| {
                format!(
                    "{} ({} kept)",
                    c["field"].as_str().unwrap_or(""),
                    c["kept"].as_str().unwrap_or("")
                )
            })
            .collect();
        self.audit(
            Some(rid),
            Some(&flow.entity),
            Some(crm_id),
            &flow.name,
            "conflict",
            &format!("changed on both sides: {}", fields.join(", ")),
            json!({"conflicts": conflicts}),
        )
        .await
    }

    fn owner(&self, flow: &FlowPlan, field: &str) -> Option<Owner> {
        flow.fields()
            .iter()
            .find(|f| f.target == field || field.starts_with(&format!("{}.", f.target)))
            .and_then(|f| f.owner)
    }

    /// Resolves a target record's lookups against the CRM (find, create, fail). `Ok(Err)`
    /// is a lookup that failed by the mapping's rules (audit text).
    async fn resolve_lookups(
        &self,
        flow: &FlowPlan,
        referral: &Value,
        target: &mut TargetRecord,
    ) -> Result<Result<(), String>, JobError> {
        if target.lookups.is_empty() {
            return Ok(Ok(()));
        }
        let record = Arc::new(referral.clone());
        let plan = &self.plan;
        let input = Input {
            record: &record,
            parent: None,
            operation: Operation::Create,
        };
        let create = |name: &str| plan.lookup_create_text(flow, name, &input);
        let outcomes = if self.dry_run.is_some() {
            // A dry run finds but never creates: a missing record shows as a create.
            let mut out = BTreeMap::new();
            for request in &target.lookups {
                let found = self
                    .crm
                    .find(&request.entity, &request.id_field, &request.matches)
                    .await?;
                out.insert(
                    request.name.clone(),
                    match found {
                        Some(id) => Outcome::Found { id },
                        None => Outcome::Skipped,
                    },
                );
            }
            out
        } else {
            resolve_live(plan, target, &self.crm, &create, &self.cache).await?
        };
        let failures: Vec<String> = outcomes
            .values()
            .filter_map(|o| match o {
                Outcome::Failed { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            return Ok(Err(failures.join("; ")));
        }
        // Skipped lookups leave no value: drop their placeholders.
        target.fields.retain(|_, v| placeholder_name(v).is_none());
        Ok(Ok(()))
    }

    /// Writes a new CRM record for a referral: its lookups (and whether a crashed attempt
    /// already made the record) in one round trip, then the customer records to create, the
    /// record and — for a record that did not exist — its child records as one
    /// [`WriteSet`]. `Ok(Err)` is a lookup that failed by the mapping's rules (audit text).
    async fn create_in_crm(
        &self,
        flow: &FlowPlan,
        referral: &Value,
        rid: &str,
        id_field: &str,
        target: &mut TargetRecord,
        snapshot: &mut Snapshot,
    ) -> Result<Result<(String, bool), String>, JobError> {
        let record = Arc::new(referral.clone());
        let existing = Find {
            entity: flow.entity.clone(),
            id_field: id_field.to_owned(),
            criteria: object(json!({ flow.referral_id_field.clone(): rid })),
        };
        // Hold the locks of every lookup that may create, from its search to the write:
        // in this process (striped mutexes), and across the instances sharing a PostgreSQL
        // store (advisory locks on the same names; a no-op on SQLite, which has one engine).
        let mut names: Vec<String> = target
            .lookups
            .iter()
            .filter(|l| l.on_missing == crate::config::model::OnMissing::Create)
            // Lower case: both CRMs match text ignoring case.
            .map(|l| format!("{}{}", l.name, Value::Object(l.matches.clone())).to_lowercase())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut stripes: Vec<usize> = names
            .iter()
            .map(|name| {
                usize::from_str_radix(&hash(&Value::String(name.clone()))[..8], 16).unwrap_or(0)
                    % CUSTOMER_LOCK_STRIPES
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut _held = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            // Ascending order: no two jobs wait on each other.
            _held.push(self.customer_locks[stripe].lock().await);
        }
        let shared = self.store.lock_names("customer", &names).await?;
        let result = self
            .create_locked(flow, &record, rid, id_field, &existing, target, snapshot)
            .await;
        shared.release().await;
        result
    }

    /// [`Engine::create_in_crm`] once its find-or-create locks are held.
    #[allow(clippy::too_many_arguments)]
    async fn create_locked(
        &self,
        flow: &FlowPlan,
        record: &Arc<Value>,
        rid: &str,
        id_field: &str,
        existing: &Find,
        target: &mut TargetRecord,
        snapshot: &mut Snapshot,
    ) -> Result<Result<(String, bool), String>, JobError> {
        let plan = &self.plan;
        let input = Input {
            record,
            parent: None,
            operation: Operation::Create,
        };
        let create = |name: &str| plan.lookup_create_text(flow, name, &input);
        let mut set = WriteSet::default();
        let (outcomes, found) = resolve_batched(
            plan,
            target,
            &self.crm,
            &create,
            &self.cache,
            &mut set,
            std::slice::from_ref(existing),
        )
        .await?;
        let failures: Vec<String> = outcomes
            .values()
            .filter_map(|o| match o {
                Outcome::Failed { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            return Ok(Err(failures.join("; ")));
        }
        // Skipped lookups leave no value: drop their placeholders.
        target.fields.retain(|_, v| placeholder_name(v).is_none());
        let mut fields = target.fields.clone();
        fields.remove(&flow.referral_id_field);
        let main = set.push(Write::Upsert {
            entity: flow.entity.clone(),
            id_field: id_field.to_owned(),
            key_field: flow.referral_id_field.clone(),
            key: rid.to_owned(),
            fields,
        });
        snapshot.children.clear();
        // Children of a record that is new are new too: they join the set. A record a
        // crashed attempt made may have some already; `write_children` looks before writing.
        let mut children: Vec<String> = Vec::new();
        if found.first().is_none_or(Option::is_none) {
            let reference = WriteSet::reference(main);
            let parent_record = json!({ id_field: reference, "id": reference });
            for name in &self.roles.pc_children {
                let Some(child_flow) = self.plan.flow(name) else {
                    continue;
                };
                if child_flow.parent.as_deref() != Some(flow.name.as_str()) {
                    continue;
                }
                let mapped = self.plan.evaluate(
                    child_flow,
                    &Input {
                        record,
                        parent: Some(&parent_record),
                        operation: Operation::Create,
                    },
                );
                if mapped.skipped || !mapped.violations.is_empty() {
                    // `write_children` audits the violations after the parent exists.
                    continue;
                }
                for child in &mapped.records {
                    set.push(Write::Create {
                        entity: child_flow.entity.clone(),
                        fields: child.fields.clone(),
                    });
                }
                children.push(name.clone());
            }
        }
        if self.dry_run.is_some() {
            // Planned, not made: references read as the record they stand for.
            let planned: Vec<Applied> = set
                .writes()
                .iter()
                .map(|w| Applied {
                    id: format!("(new {})", w.entity()),
                    created: true,
                })
                .collect();
            for write in set.writes() {
                let mut fields = write.fields().clone();
                WriteSet::resolve(&mut fields, &planned);
                self.plan_write(PlannedWrite {
                    system: "crm",
                    action: "create",
                    entity: write.entity().to_owned(),
                    id: None,
                    flow: flow.name.clone(),
                    referral_id: Some(rid.to_owned()),
                    fields,
                });
            }
            WriteSet::resolve(&mut target.fields, &planned);
            return Ok(Ok((String::new(), true)));
        }
        let applied = self.crm.apply(&set).await?;
        WriteSet::resolve(&mut target.fields, &applied);
        let Some(done) = applied.get(main) else {
            return Err(JobError::Retry {
                message: format!("the CRM did not answer for the {} write", flow.entity),
                after: Some(Duration::from_secs(1)),
            });
        };
        // What `write_children` compares against next time: the children as mapped with
        // the parent's real id.
        let parent_record = json!({ id_field: done.id, "id": done.id });
        for name in children {
            let Some(child_flow) = self.plan.flow(&name) else {
                continue;
            };
            let mapped = self.plan.evaluate(
                child_flow,
                &Input {
                    record,
                    parent: Some(&parent_record),
                    operation: Operation::Create,
                },
            );
            let count = mapped.records.len();
            snapshot
                .children
                .insert(name.clone(), children_digest(&mapped));
            self.audit(
                Some(rid),
                self.plan.flow(&name).map(|f| f.entity.as_str()),
                Some(&done.id),
                &name,
                "created",
                &format!("{count} child record(s) created"),
                json!({}),
            )
            .await?;
        }
        Ok(Ok((done.id.clone(), done.created)))
    }

    async fn write_children(
        &self,
        parent_flow: &FlowPlan,
        referral: &Value,
        parent_id: &str,
        snapshot: &mut Snapshot,
    ) -> Result<(), JobError> {
        let parent_record = json!({
            self.plan.id_field(&parent_flow.entity): parent_id,
            "id": parent_id,
        });
        for name in &self.roles.pc_children {
            let Some(flow) = self.plan.flow(name) else {
                continue;
            };
            if flow.parent.as_deref() != Some(parent_flow.name.as_str()) {
                continue;
            }
            let record = Arc::new(referral.clone());
            let mapped = self.plan.evaluate(
                flow,
                &Input {
                    record: &record,
                    parent: Some(&parent_record),
                    operation: Operation::Create,
                },
            );
            if mapped.skipped {
                continue;
            }
            if !mapped.violations.is_empty() {
                self.audit(
                    referral["id"].as_str(),
                    Some(&flow.entity),
                    None,
                    &flow.name,
                    "rejected",
                    &violation_text(&mapped),
                    json!({}),
                )
                .await?;
                continue;
            }
            let digest = children_digest(&mapped);
            if snapshot.children.get(name) == Some(&digest) {
                continue;
            }
            let id_field = self.plan.id_field(&flow.entity);
            for child in &mapped.records {
                let mut criteria = Map::new();
                if let Some(key) = &flow.key
                    && let Some(v) = child.fields.get(key)
                {
                    criteria.insert(key.clone(), v.clone());
                }
                for (field, value) in &child.fields {
                    if let Some(column) = field.strip_suffix("@odata.bind") {
                        if let Some(id) = value.as_str().and_then(bound_id) {
                            criteria.insert(format!("_{column}_value"), json!(id));
                        }
                    } else if value.as_str() == Some(parent_id) {
                        criteria.insert(field.clone(), value.clone());
                    }
                }
                let exists = self
                    .crm
                    .find(&flow.entity, &id_field, &criteria)
                    .await?
                    .is_some();
                if exists {
                    continue;
                }
                if !self.plan_write(PlannedWrite {
                    system: "crm",
                    action: "create",
                    entity: flow.entity.clone(),
                    id: None,
                    flow: flow.name.clone(),
                    referral_id: referral["id"].as_str().map(str::to_owned),
                    fields: child.fields.clone(),
                }) {
                    self.crm.create(&flow.entity, &child.fields).await?;
                }
            }
            self.audit(
                referral["id"].as_str(),
                Some(&flow.entity),
                Some(parent_id),
                &flow.name,
                "updated",
                &format!("{} child record(s) in sync", mapped.records.len()),
                json!({}),
            )
            .await?;
            snapshot.children.insert(name.clone(), digest);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Microsoft's side (related referrals) → CRM
    // ---------------------------------------------------------------------------------

    /// Microsoft's referral on one of our engagements changed (S7): fill the Microsoft CRM
    /// ID and status on the CRM record of our referral.
    pub async fn sync_related(&self, related: Value) -> Result<JobOutcome, JobError> {
        let related_id = related["id"].as_str().unwrap_or_default().to_owned();
        if self.store.link(&related_id).await?.is_some() {
            // One of ours after all.
            return self.sync_referral(related).await;
        }
        let Some(engagement) = related["engagementId"].as_str().filter(|e| !e.is_empty()) else {
            return Ok(JobOutcome::Skipped);
        };
        let mut ours: Option<Link> = None;
        for candidate in self.pc.related_referrals(engagement).await? {
            let Some(id) = candidate.id() else { continue };
            if id == related_id {
                continue;
            }
            if let Some(link) = self.store.link(id).await?
                && link.crm_id.is_some()
            {
                ours = Some(link);
                break;
            }
        }
        let Some(mut link) = ours else {
            self.audit(
                Some(&related_id),
                None,
                None,
                "-",
                "skipped",
                &format!("no referral of engagement {engagement} is linked to a CRM record"),
                json!({}),
            )
            .await?;
            return Ok(JobOutcome::Skipped);
        };
        let crm_id = link.crm_id.clone().unwrap_or_default();
        let mut snapshot = Snapshot::of(Some(&link));
        let record = Arc::new(related.clone());
        let mut written = false;
        for name in &self.roles.related {
            let Some(flow) = self.plan.flow(name) else {
                continue;
            };
            if flow.entity != link.entity {
                continue;
            }
            let mapped = self.plan.evaluate(
                flow,
                &Input {
                    record: &record,
                    parent: None,
                    operation: Operation::Update,
                },
            );
            if mapped.skipped {
                continue;
            }
            if !mapped.violations.is_empty() {
                self.audit(
                    Some(&link.referral_id),
                    Some(&flow.entity),
                    Some(&crm_id),
                    &flow.name,
                    "rejected",
                    &violation_text(&mapped),
                    json!({}),
                )
                .await?;
                return Ok(JobOutcome::Rejected);
            }
            let Some(target) = mapped.records.into_iter().next() else {
                continue;
            };
            let previous = snapshot.related_projection.clone().unwrap_or_default();
            let changed: Map<String, Value> = target
                .fields
                .iter()
                .filter(|(k, v)| !same(previous.get(*k), Some(v)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if changed.is_empty() {
                continue;
            }
            if !self.plan_write(PlannedWrite {
                system: "crm",
                action: "update",
                entity: flow.entity.clone(),
                id: Some(crm_id.clone()),
                flow: flow.name.clone(),
                referral_id: Some(link.referral_id.clone()),
                fields: changed.clone(),
            }) {
                self.crm
                    .update(&flow.entity, &crm_id, &changed, None)
                    .await?;
            }
            written = true;
            self.audit(
                Some(&link.referral_id),
                Some(&flow.entity),
                Some(&crm_id),
                &flow.name,
                "updated",
                &format!(
                    "Microsoft's referral {related_id}: updated {}",
                    keys(&changed)
                ),
                json!({"fields": changed}),
            )
            .await?;
            let mut merged = previous;
            merged.extend(target.fields);
            snapshot.related_projection = Some(merged);
        }
        if written {
            link.snapshot = Some(snapshot.to_value());
            self.save_link(&link).await?;
            Ok(JobOutcome::Written)
        } else {
            Ok(JobOutcome::Unchanged)
        }
    }

    // ---------------------------------------------------------------------------------
    // CRM → Partner Center
    // ---------------------------------------------------------------------------------

    async fn describe(&self, entity: &str) -> Result<(Vec<String>, Vec<String>), JobError> {
        let Crm::Salesforce(client) = &self.crm else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut cache = self.describe.lock().await;
        if let Some(hit) = cache.get(entity) {
            return Ok(hit.clone());
        }
        let path = client.data_path(&format!("/sobjects/{entity}/describe"));
        let reply = client
            .send(crate::connectors::http::Request::get("describe", path))
            .await?;
        let body: Value = reply.json()?;
        let names = |key: &str, field: &str| -> Vec<String> {
            body[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f[field].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let result = (
            names("fields", "name"),
            names("childRelationships", "relationshipName"),
        );
        cache.insert(entity.to_owned(), result.clone());
        Ok(result)
    }

    /// Reads a CRM record the way its CRM → PC flow needs it (expanded).
    async fn read_source(
        &self,
        flow: &FlowPlan,
        id: &str,
    ) -> Result<Option<super::crm::Versioned>, JobError> {
        let (fields, children) = self.describe(&flow.entity).await?;
        let id_field = self.plan.id_field(&flow.entity);
        let mut expand = flow.expand.clone();
        // Read the children's ids too, so deletions can be routed back to this record.
        for table in self.child_tables() {
            for (relationship, columns) in expand.iter_mut() {
                if self.relationship_is_child(relationship, &children)
                    && !columns.contains(&table.id_field)
                {
                    columns.push(table.id_field.clone());
                }
            }
        }
        Ok(self
            .crm
            .read_expanded(&flow.entity, &id_field, id, &fields, &expand, &children)
            .await?)
    }

    fn relationship_is_child(&self, relationship: &str, children: &[String]) -> bool {
        match self.plan.crm {
            CrmKind::Salesforce => children.iter().any(|c| c == relationship),
            // Dataverse collection-valued navigation properties are plural by convention.
            CrmKind::Dynamics365 => relationship.ends_with('s') && !relationship.ends_with("id"),
        }
    }

    /// Syncs one CRM record to Partner Center (S2–S5, S8–S11, S14).
    pub async fn sync_crm_record(&self, entity: &str, id: &str) -> Result<JobOutcome, JobError> {
        let Some(flow) = self
            .roles
            .crm_main
            .iter()
            .filter_map(|n| self.plan.flow(n))
            .find(|f| f.entity == entity)
        else {
            return Err(JobError::Fail {
                message: format!("no flow reads `{entity}` records"),
            });
        };
        let Some(source) = self.read_source(flow, id).await? else {
            return Ok(JobOutcome::Skipped);
        };
        let version = source
            .fields
            .get(self.crm.modified_field())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(source.version.clone());
        let mut fields = source.fields;
        normalize_children(&mut fields);
        let record = Arc::new(Value::Object(fields.clone()));
        let referral_id = fields
            .get(&flow.referral_id_field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let mut link = match &referral_id {
            Some(rid) => self.store.link(rid).await?,
            None => None,
        };
        if link.is_none() {
            link = self.store.link_by_crm(entity, id).await?;
        }
        let flag_on = flow
            .sync_flag
            .as_ref()
            .is_none_or(|f| truthy(fields.get(f)));
        if !flag_on && link.is_none() {
            return Ok(JobOutcome::Skipped); // S10
        }
        if let Some(l) = &mut link {
            l.crm_version = version.clone();
        }
        let operation = if link.is_some() || referral_id.is_some() {
            Operation::Update
        } else {
            Operation::Create
        };
        let mapped = self.plan.evaluate(
            flow,
            &Input {
                record: &record,
                parent: None,
                operation,
            },
        );
        if mapped.skipped {
            return Ok(JobOutcome::Skipped); // S11: on hold, or not for sync
        }
        if !mapped.violations.is_empty() {
            // S9: nothing goes to Partner Center; the seller sees why on the record.
            let message = violation_text(&mapped);
            let rid = link
                .as_ref()
                .map(|l| l.referral_id.clone())
                .or(referral_id.clone());
            let marks = self
                .plan
                .on_failure(flow, &record, &mapped.violations)
                .unwrap_or_default();
            let wrote = self.write_back(flow, id, &fields, marks).await?;
            if wrote {
                self.audit(
                    rid.as_deref(),
                    Some(entity),
                    Some(id),
                    &flow.name,
                    "rejected",
                    &message,
                    json!({"violations": mapped.violations}),
                )
                .await?;
            }
            return Ok(JobOutcome::Rejected);
        }
        let Some(target) = mapped.records.into_iter().next() else {
            return Ok(JobOutcome::Skipped);
        };
        let projection = flatten_object(&self.crm_update_projection(flow, &record));
        let digest = hash(&Value::Object(projection.clone()));
        if let Some(l) = &link
            && l.crm_hash.as_deref() == Some(digest.as_str())
        {
            return Ok(JobOutcome::Unchanged); // echo of our own write, or nothing mapped changed
        }
        let children: Vec<String> = child_ids(&fields);
        match link {
            None => {
                self.create_referral(
                    flow, id, &fields, &record, target, projection, digest, children,
                )
                .await
            }
            Some(link) => {
                self.update_referral(
                    flow, id, &fields, &record, link, projection, digest, children, false,
                )
                .await
            }
        }
    }

    fn crm_update_projection(&self, flow: &FlowPlan, record: &Arc<Value>) -> Map<String, Value> {
        let mapped = self.plan.evaluate(
            flow,
            &Input {
                record,
                parent: None,
                operation: Operation::Update,
            },
        );
        mapped
            .records
            .into_iter()
            .next()
            .map(|r| r.fields)
            .unwrap_or_default()
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_referral(
        &self,
        flow: &FlowPlan,
        id: &str,
        fields: &Map<String, Value>,
        record: &Arc<Value>,
        target: TargetRecord,
        projection: Map<String, Value>,
        digest: String,
        children: Vec<String>,
    ) -> Result<JobOutcome, JobError> {
        // Never twice: a referral made by an attempt that crashed before the write-back
        // carries this record's id in externalReferenceId.
        let query = ReferralQuery {
            filter: Some(ODataFilter::eq("externalReferenceId", id).into()),
            ..ReferralQuery::default()
        };
        use futures_util::TryStreamExt as _;
        let existing: Vec<Referral> = self.pc.list_referrals(query).try_collect().await?;
        let mine = existing.iter().find(|r| !targets_microsoft(r)).cloned();
        let microsoft = existing.iter().find(|r| targets_microsoft(r)).cloned();
        let created = match mine {
            Some(found) => serde_json::to_value(&found).unwrap_or(Value::Null),
            None => {
                let body = Value::Object(target.fields.clone());
                if self.plan_write(PlannedWrite {
                    system: "partner_center",
                    action: "create",
                    entity: "referrals".into(),
                    id: None,
                    flow: flow.name.clone(),
                    referral_id: None,
                    fields: target.fields.clone(),
                }) {
                    return Ok(JobOutcome::Written);
                }
                let referral: Referral =
                    serde_json::from_value(body).map_err(|e| JobError::Fail {
                        message: format!("the mapped referral is not a valid referral: {e}"),
                    })?;
                let created = self.pc.create_referral(&referral).await?;
                serde_json::to_value(&created).unwrap_or(Value::Null)
            }
        };
        let rid = created["id"].as_str().unwrap_or_default().to_owned();
        let mut link = Link::new(rid.clone(), flow.entity.clone(), "syncing");
        link.crm_id = Some(id.to_owned());
        let mut snapshot = Snapshot {
            referral: Some(created.clone()),
            microsoft_referral: microsoft.as_ref().and_then(|m| m.id().map(str::to_owned)),
            crm_children: children,
            ..Snapshot::default()
        };
        link.snapshot = Some(snapshot.to_value());
        self.save_link(&link).await?;
        self.audit(
            Some(&rid),
            Some(&flow.entity),
            Some(id),
            &flow.name,
            "created",
            &format!("created referral {rid} in Partner Center"),
            json!({"fields": target.fields}),
        )
        .await?;
        self.ensure_secondary(flow, record, &created, &mut snapshot)
            .await?;
        self.finish_crm_sync(
            flow,
            id,
            fields,
            record,
            &created,
            link,
            snapshot,
            projection,
            digest,
            Some(&[]),
        )
        .await?;
        Ok(JobOutcome::Written)
    }

    /// Microsoft's referral on the engagement (`opportunity_to_microsoft_referral`), once.
    async fn ensure_secondary(
        &self,
        flow: &FlowPlan,
        record: &Arc<Value>,
        referral: &Value,
        snapshot: &mut Snapshot,
    ) -> Result<(), JobError> {
        if snapshot.microsoft_referral.is_some() {
            return Ok(());
        }
        // Step two belongs to co-sells the partner starts. A referral Microsoft shared with
        // us (Incoming) already has Microsoft on its engagement: a second referral to
        // Microsoft would be a duplicate.
        if referral["direction"].as_str() == Some("Incoming") {
            return Ok(());
        }
        for name in &self.roles.crm_secondary {
            let Some(secondary) = self.plan.flow(name) else {
                continue;
            };
            if secondary.parent.as_deref() != Some(flow.name.as_str()) {
                continue;
            }
            let mapped = self.plan.evaluate(
                secondary,
                &Input {
                    record,
                    parent: Some(referral),
                    operation: Operation::Create,
                },
            );
            if mapped.skipped || !mapped.violations.is_empty() {
                continue;
            }
            let Some(target) = mapped.records.into_iter().next() else {
                continue;
            };
            let Some(engagement) = referral["engagementId"].as_str().filter(|e| !e.is_empty())
            else {
                continue; // no referral read yet: nothing to attach Microsoft's to
            };
            // A crash between the two creates: look before making a second one.
            let existing = self.pc.related_referrals(engagement).await?;
            if let Some(found) = existing.iter().find(|r| targets_microsoft(r)) {
                snapshot.microsoft_referral = found.id().map(str::to_owned);
                continue;
            }
            if self.plan_write(PlannedWrite {
                system: "partner_center",
                action: "create",
                entity: "referrals".into(),
                id: None,
                flow: secondary.name.clone(),
                referral_id: None,
                fields: target.fields.clone(),
            }) {
                continue;
            }
            let body: Referral = serde_json::from_value(Value::Object(target.fields.clone()))
                .map_err(|e| JobError::Fail {
                    message: format!("the mapped referral is not a valid referral: {e}"),
                })?;
            let made = self.pc.create_microsoft_referral(engagement, &body).await?;
            snapshot.microsoft_referral = made.id().map(str::to_owned);
            self.audit(
                referral["id"].as_str(),
                Some(&flow.entity),
                None,
                &secondary.name,
                "created",
                &format!(
                    "created Microsoft's referral {} on engagement {engagement}",
                    made.id().unwrap_or_default()
                ),
                json!({}),
            )
            .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_referral(
        &self,
        flow: &FlowPlan,
        id: &str,
        fields: &Map<String, Value>,
        record: &Arc<Value>,
        link: Link,
        projection: Map<String, Value>,
        digest: String,
        children: Vec<String>,
        fresh: bool,
    ) -> Result<JobOutcome, JobError> {
        let rid = link.referral_id.clone();
        let mut snapshot = Snapshot::of(Some(&link));
        snapshot.crm_children = children;
        let previous = snapshot.crm_projection.clone().unwrap_or_default();
        let known = snapshot.referral.clone().unwrap_or(Value::Null);
        let mut changed: Vec<String> = projection
            .keys()
            .filter(|k| !same(previous.get(*k), projection.get(*k)))
            .filter(|k| !NOT_UPDATABLE.iter().any(|p| k.starts_with(p)))
            .cloned()
            .collect();
        // Fields that only match what Partner Center already has need no write (echoes).
        let needs_write = changed
            .iter()
            .any(|k| !same(get_path(&known, k).as_ref(), projection.get(k)));
        if !needs_write {
            // Partner Center has it all, but Microsoft's referral may still be missing: a
            // crash between `create_referral` saving the link and making it leaves exactly
            // this state, and the rerun of the job lands here. Free when it is known.
            self.ensure_secondary(flow, record, &known, &mut snapshot)
                .await?;
            self.finish_crm_sync(
                flow,
                id,
                fields,
                record,
                &known,
                link,
                snapshot,
                projection,
                digest,
                Some(&[]),
            )
            .await?;
            return Ok(JobOutcome::Unchanged);
        }
        // The referral as we last saw it stands in for a fresh read: the PATCH carries its
        // eTag, so if anyone changed the referral since, Partner Center answers 412 and we
        // read, re-diff (conflicts by owner) and try once more. Saves a read per edit.
        let from_snapshot = !fresh && known["eTag"].is_string();
        let current = match from_snapshot {
            true => Ok(known.clone()),
            false => self
                .pc
                .get_referral(&rid)
                .await
                .map(|r| serde_json::to_value(&r).unwrap_or(Value::Null)),
        };
        let current = match current {
            Ok(r) => r,
            Err(ConnectorError::NotFound { .. }) => {
                self.audit(
                    Some(&rid),
                    Some(&flow.entity),
                    Some(id),
                    &flow.name,
                    "ignored",
                    &format!("referral {rid} no longer exists in Partner Center"),
                    json!({}),
                )
                .await?;
                return Ok(JobOutcome::Skipped);
            }
            Err(e) => return Err(e.into()),
        };
        if current["status"] == "Closed" {
            // Terminal: Won, Lost, Declined, Expired take no further updates.
            let message = format!(
                "referral {rid} is Closed/{}; Partner Center takes no further updates",
                current["substatus"].as_str().unwrap_or_default()
            );
            let mut link = link;
            link.state = "closed".into();
            self.audit(
                Some(&rid),
                Some(&flow.entity),
                Some(id),
                &flow.name,
                "skipped",
                &message,
                json!({}),
            )
            .await?;
            self.finish_crm_sync(
                flow, id, fields, record, &current, link, snapshot, projection, digest, None,
            )
            .await?;
            return Ok(JobOutcome::Skipped);
        }
        let conflicts = self.settle_conflicts(
            flow,
            Owner::Crm,
            &mut changed,
            &Changes {
                previous: &previous,
                projection: &projection,
                comparable: &|_| true,
                now: &|path| get_path(&current, path),
                incoming_modified: fields
                    .get(self.crm.modified_field())
                    .and_then(Value::as_str),
                other_modified: current["updatedDateTime"].as_str(),
            },
        );
        // Fields Partner Center kept: the CRM still holds the seller's values for them.
        let pc_kept: Vec<String> = conflicts
            .iter()
            .filter(|c| c["kept"] == "partner_center")
            .filter_map(|c| c["field"].as_str().map(str::to_owned))
            .collect();
        self.audit_conflicts(&rid, flow, id, conflicts).await?;
        let mut desired = current.clone();
        for path in &changed {
            if let Some(v) = projection.get(path) {
                set_path(&mut desired, path, v.clone());
            }
        }
        let ops = diff_to_patch(&current, &desired);
        let mut now = current.clone();
        if !ops.is_empty() {
            let changes: Map<String, Value> = changed
                .iter()
                .filter_map(|p| projection.get(p).map(|v| (p.clone(), v.clone())))
                .collect();
            if !self.plan_write(PlannedWrite {
                system: "partner_center",
                action: "update",
                entity: "referrals".into(),
                id: Some(rid.clone()),
                flow: flow.name.clone(),
                referral_id: Some(rid.clone()),
                fields: changes.clone(),
            }) {
                match self
                    .pc
                    .patch_referral_returning(&rid, &ops, current["eTag"].as_str())
                    .await
                {
                    Ok(updated) => now = serde_json::to_value(&updated).unwrap_or(desired),
                    // Stale (412), or refused (400) possibly because of what we did not
                    // see: decide on a fresh read.
                    Err(
                        ConnectorError::PreconditionFailed { .. }
                        | ConnectorError::Status { status: 400, .. },
                    ) if from_snapshot => {
                        return Box::pin(self.update_referral(
                            flow,
                            id,
                            fields,
                            record,
                            link,
                            projection,
                            digest,
                            snapshot.crm_children,
                            true,
                        ))
                        .await;
                    }
                    Err(error @ ConnectorError::Status { status: 400, .. }) => {
                        // Partner Center refused the change (a transition it does not allow,
                        // a missing field): the seller has to act, retrying cannot help.
                        let message = error.to_string();
                        let marks = self
                            .plan
                            .on_failure(
                                flow,
                                record,
                                &[crate::mapping::plan::Violation {
                                    field: None,
                                    message: message.clone(),
                                }],
                            )
                            .unwrap_or_default();
                        self.write_back(flow, id, fields, marks).await?;
                        self.audit(
                            Some(&rid),
                            Some(&flow.entity),
                            Some(id),
                            &flow.name,
                            "rejected",
                            &message,
                            json!({"changes": changes}),
                        )
                        .await?;
                        return Ok(JobOutcome::Rejected);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            self.audit(
                Some(&rid),
                Some(&flow.entity),
                Some(id),
                &flow.name,
                "updated",
                &format!("updated {} in Partner Center", keys(&changes)),
                json!({"changes": changes}),
            )
            .await?;
        }
        self.ensure_secondary(flow, record, &now, &mut snapshot)
            .await?;
        self.finish_crm_sync(
            flow,
            id,
            fields,
            record,
            &now,
            link,
            snapshot,
            projection,
            digest,
            Some(&pc_kept),
        )
        .await?;
        Ok(if ops.is_empty() {
            JobOutcome::Unchanged
        } else {
            JobOutcome::Written
        })
    }

    /// After a CRM → PC sync: the success write-back on the CRM record (referral id and
    /// link, ✔, audit trail) and the link.
    ///
    /// `pc_kept`: referral fields a conflict left at Partner Center's value. The CRM still
    /// holds the seller's (losing) values for them, so the PC → CRM snapshot records those,
    /// and a PC job is queued to bring Partner Center's values over. `None`: nothing was
    /// written (a Closed referral); the CRM holds none of the referral's news, so the PC →
    /// CRM snapshot stays as it was, and a PC job brings the news (the close) over.
    /// Recording the referral as it is instead made Partner Center's later events look like
    /// echoes: the CRM kept the value the conflict had ruled out (or never learned of the
    /// close), for good, while the audit said otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn finish_crm_sync(
        &self,
        flow: &FlowPlan,
        id: &str,
        fields: &Map<String, Value>,
        record: &Arc<Value>,
        referral: &Value,
        mut link: Link,
        mut snapshot: Snapshot,
        projection: Map<String, Value>,
        digest: String,
        pc_kept: Option<&[String]>,
    ) -> Result<(), JobError> {
        let marks = self
            .plan
            .on_success(flow, record, referral)
            .unwrap_or_default();
        self.write_back(flow, id, fields, marks).await?;
        // What the PC → CRM flow makes of this referral is what the CRM now holds: its
        // webhook coming back is an echo.
        if let Some(pc_flow) = self
            .roles
            .pc_main
            .iter()
            .filter_map(|n| self.plan.flow(n))
            .find(|f| f.entity == flow.entity)
            && referral.is_object()
            && let Some(pc_kept) = pc_kept
        {
            let mut held = referral.clone();
            for path in pc_kept {
                if let Some(value) = projection.get(path) {
                    set_path(&mut held, path, value.clone());
                }
            }
            let pc_projection = self.update_projection(pc_flow, &held);
            link.pc_hash = Some(hash(&Value::Object(pc_projection.clone())));
            snapshot.pc_projection = Some(pc_projection);
        }
        if referral.is_object() {
            snapshot.referral = Some(referral.clone());
            link.pc_etag = referral["eTag"].as_str().map(str::to_owned);
            if link.state != "closed" {
                link.state = state_of(referral);
            }
        }
        snapshot.crm_projection = Some(projection);
        link.crm_hash = Some(digest);
        link.crm_synced_at = Some(SystemTime::now());
        link.snapshot = Some(snapshot.to_value());
        self.save_link(&link).await?;
        if pc_kept.is_none_or(|kept| !kept.is_empty()) {
            self.store
                .enqueue(&crate::store::NewJob::new(
                    super::inbox::referral_key(&link.referral_id),
                    PC_EVENT,
                    json!({ "event": "referral-updated", "referral_id": link.referral_id }),
                ))
                .await?;
        }
        Ok(())
    }

    /// Writes `marks` (on_success / on_failure fields) to the CRM record where they differ
    /// from what it holds. The audit field keeps a bounded, newest-first trail. Returns
    /// whether anything was written.
    async fn write_back(
        &self,
        flow: &FlowPlan,
        id: &str,
        current: &Map<String, Value>,
        marks: Map<String, Value>,
    ) -> Result<bool, JobError> {
        let audit_field = audit_field(self.plan.crm);
        let mut changes = Map::new();
        for (field, value) in marks {
            let now = current.get(&field);
            if field == audit_field {
                let entry = value.as_str().unwrap_or_default();
                let trail = now.and_then(Value::as_str).unwrap_or_default();
                if entry.is_empty() || latest_entry(trail) == entry {
                    continue;
                }
                changes.insert(field, json!(prepend_entry(trail, entry)));
            } else if !same(now, Some(&value)) {
                changes.insert(field, value);
            }
        }
        if changes.is_empty() {
            return Ok(false);
        }
        if !self.plan_write(PlannedWrite {
            system: "crm",
            action: "update",
            entity: flow.entity.clone(),
            id: Some(id.to_owned()),
            flow: flow.name.clone(),
            referral_id: None,
            fields: changes.clone(),
        }) {
            self.crm.update(&flow.entity, id, &changes, None).await?;
        }
        Ok(true)
    }
}

/// What [`Engine::settle_conflicts`] compares, per field: the last-synced projection, the
/// incoming side's projection, the other side's value now.
struct Changes<'a> {
    previous: &'a Map<String, Value>,
    projection: &'a Map<String, Value>,
    /// Whether the other side's current value of a field is known (was read).
    comparable: &'a dyn Fn(&str) -> bool,
    now: &'a dyn Fn(&str) -> Option<Value>,
    incoming_modified: Option<&'a str>,
    other_modified: Option<&'a str>,
}

/// A CRM table the change poll watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledEntity {
    /// Table / object.
    pub entity: String,
    /// Its primary key column.
    pub id_field: String,
    /// The yes/no column that opts records in.
    pub sync_flag: Option<String>,
    /// The column holding the referral id.
    pub referral_id_field: String,
    /// Child tables whose changes count as changes of the parent record (solutions).
    pub children: Vec<ChildTable>,
}

/// A child table of a polled table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildTable {
    /// Table / object.
    pub entity: String,
    /// Its primary key column.
    pub id_field: String,
    /// The column holding the parent record's id (`_cosell_opportunityid_value`,
    /// `Opportunity__c`).
    pub parent_column: String,
}

/// The CRM column that holds the audit trail.
///
/// UNCERTAIN: the mapping language has no dedicated key for it; the connector's own column
/// names (design §2) are used.
fn audit_field(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Dynamics365 => "cosell_audit",
        CrmKind::Salesforce => "Partner_Center_Audit__c",
    }
}

fn latest_entry(trail: &str) -> &str {
    let first = trail.lines().next().unwrap_or_default();
    // "2026-11-21T10:00:00Z message"
    match first.split_once(' ') {
        Some((stamp, rest)) if datetime::parse(stamp).is_some() => rest,
        _ => first,
    }
}

fn prepend_entry(trail: &str, entry: &str) -> String {
    let stamp = datetime::DateTime::from_unix(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0),
        0,
    )
    .utc_string();
    let mut out = format!("{stamp} {entry}");
    for line in trail.lines() {
        if out.chars().count() + line.chars().count() + 1 > AUDIT_TRAIL_CHARS {
            break;
        }
        out.push('\n');
        out.push_str(line);
    }
    out.chars().take(AUDIT_TRAIL_CHARS).collect()
}

fn targets_microsoft(referral: &Referral) -> bool {
    let value = serde_json::to_value(referral).unwrap_or(Value::Null);
    value["target"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["type"] == "BusinessProfileLocation"))
}

fn skip_reason(referral: &Value) -> String {
    format!(
        "no flow applies to this {} {} referral ({}/{}); see the flows' `when`",
        referral["direction"].as_str().unwrap_or("?"),
        referral["type"].as_str().unwrap_or("?"),
        referral["status"].as_str().unwrap_or("?"),
        referral["substatus"].as_str().unwrap_or("?"),
    )
}

fn violation_text(mapped: &Mapped) -> String {
    mapped
        .violations
        .iter()
        .map(|v| v.message.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

fn keys(fields: &Map<String, Value>) -> String {
    fields.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn needed_by_others(target: &TargetRecord, name: &str) -> bool {
    // A lookup other lookups depend on (contact within account) stays.
    target
        .lookups
        .iter()
        .any(|l| l.name != name && l.create.values().any(|v| placeholder_name(v) == Some(name)))
}

fn state_of(referral: &Value) -> String {
    match referral["status"].as_str() {
        Some("New") => "on_hold",
        Some("Closed") => "closed",
        _ => "synced",
    }
    .to_owned()
}

/// Whether `listed` is another version of the referral than the one `link` last saw, and
/// not a newer one.
fn older_than_seen(link: &Link, listed: &Value) -> bool {
    let Some(seen) = link.snapshot.as_ref().and_then(|s| s.get("referral")) else {
        return false;
    };
    if seen["eTag"] == listed["eTag"] {
        return false;
    }
    let stamp = |v: &Value| {
        v["updatedDateTime"]
            .as_str()
            .and_then(datetime::DateTime::parse)
            .map(|d| (d.unix_seconds(), d.to_utc().utc_string()))
    };
    match (stamp(seen), stamp(listed)) {
        (Some(seen), Some(listed)) => listed <= seen,
        _ => false,
    }
}

fn snapshot_changed(link: &Link, referral: &Value) -> bool {
    link.pc_etag.as_deref() != referral["eTag"].as_str() || link.snapshot.is_none()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn truthy(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1"),
        _ => false,
    }
}

/// Equal for sync purposes: numbers by value (50000 = 50000.0), absent = null.
pub fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a.unwrap_or(&Value::Null), b.unwrap_or(&Value::Null)) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| same(Some(v), y.get(k)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(Some(a), Some(b)))
        }
        (x, y) => x == y,
    }
}

/// Whether time `a` is later than `b` (missing times lose).
fn newer(a: Option<&str>, b: Option<&str>) -> bool {
    let parse = |s: Option<&str>| s.and_then(datetime::parse).map(|d| d.unix_seconds());
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a >= b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// How many locks [`Engine`] stripes customer find-or-create over: many, because two customers
/// sharing a stripe wait for each other for nothing.
const CUSTOMER_LOCK_STRIPES: usize = 1024;

/// The digest of a child flow's mapped records (unchanged children need no write).
fn children_digest(mapped: &Mapped) -> String {
    hash(&json!(
        mapped.records.iter().map(|r| &r.fields).collect::<Vec<_>>()
    ))
}

/// A stable digest of a JSON value (keys are ordered: serde_json without
/// `preserve_order`).
pub fn hash(value: &Value) -> String {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.to_string().as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Nested objects as dotted leaf paths; arrays and scalars are leaves.
pub fn flatten_object(map: &Map<String, Value>) -> Map<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
        match value {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = Map::new();
    for (k, v) in map {
        walk(k, v, &mut out);
    }
    out
}

fn get_path(value: &Value, path: &str) -> Option<Value> {
    let mut here = value;
    for part in path.split('.') {
        here = here.get(part)?;
    }
    Some(here.clone())
}

fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut here = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !here.is_object() {
            *here = Value::Object(Map::new());
        }
        let Value::Object(map) = here else { return };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), new);
            return;
        }
        here = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// `/accounts(<id>)` → `<id>`.
fn bound_id(bind: &str) -> Option<&str> {
    let start = bind.rfind('(')?;
    bind[start + 1..].strip_suffix(')')
}

/// Salesforce answers an empty sub-query with `null`; the mapping reads `.records`.
fn normalize_children(fields: &mut Map<String, Value>) {
    for value in fields.values_mut() {
        if let Value::Object(m) = value {
            m.remove("attributes");
            if let Some(Value::Array(records)) = m.get_mut("records") {
                for r in records {
                    if let Value::Object(r) = r {
                        r.remove("attributes");
                    }
                }
            }
        }
    }
}

/// Ids of the child records read with a record (Dataverse collections, Salesforce
/// sub-queries).
fn child_ids(fields: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for value in fields.values() {
        let rows = match value {
            Value::Array(rows) => rows,
            Value::Object(m) => match m.get("records") {
                Some(Value::Array(rows)) => rows,
                _ => continue,
            },
            _ => continue,
        };
        for row in rows {
            if let Value::Object(row) = row {
                for (k, v) in row {
                    if (k == "Id" || k.ends_with("id"))
                        && !k.starts_with('_')
                        && let Some(id) = v.as_str()
                    {
                        out.push(id.to_owned());
                    }
                }
            }
        }
    }
    out
}

impl Engine {
    /// For a dry run: the referrals a reconcile would look at now (changed since its
    /// cursor; all when it never ran).
    pub async fn dry_referrals(&self) -> Result<Vec<Value>, JobError> {
        use futures_util::TryStreamExt as _;
        let since = self.store.cursor(super::runner::RECONCILE_CURSOR).await?;
        let query = ReferralQuery {
            filter: since.map(|s| ODataFilter::gt("updatedDateTime", s).into()),
            orderby: Some("updatedDateTime".into()),
            top: Some(100),
        };
        let referrals: Vec<Referral> = self.pc.list_referrals(query).try_collect().await?;
        Ok(referrals
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect())
    }

    /// For a dry run: the CRM records a poll would look at now (flagged or linked, changed
    /// since the poll cursor).
    pub async fn dry_crm_records(&self) -> Result<Vec<(String, String)>, JobError> {
        use futures_util::StreamExt as _;
        let mut out = Vec::new();
        for polled in self.polled_entities() {
            let since = self
                .store
                .cursor(&format!("crm_poll:{}", polled.entity))
                .await?
                .unwrap_or_else(|| "2000-01-01T00:00:00Z".to_owned());
            let mut fields: Vec<&str> =
                vec![polled.id_field.as_str(), polled.referral_id_field.as_str()];
            if let Some(flag) = &polled.sync_flag {
                fields.push(flag);
            }
            let mut rows = self.crm.changed_since(&polled.entity, &fields, &since)?;
            while let Some(row) = rows.next().await {
                let row = row?;
                let flagged = polled.sync_flag.as_ref().is_none_or(|f| truthy(row.get(f)));
                let linked = row
                    .get(&polled.referral_id_field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                if let Some(id) = row.get(&polled.id_field).and_then(Value::as_str)
                    && (flagged || linked)
                {
                    out.push((polled.entity.clone(), id.to_owned()));
                }
            }
        }
        Ok(out)
    }
}
