//! The engine's loops: workers draining the durable inbox, the Partner Center reconcile and
//! the CRM change poll feeding it. Every trigger only enqueues; only workers write, one job
//! per referral at a time (the store's claim guarantees it), so webhooks, reconciles and
//! polls can overlap freely.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::inbox::referral_key;
use super::sync::{CRM_CHANGE, Engine, JobError, JobOutcome, PC_REFERRAL};
use crate::connectors::partner_center::{ODataFilter, ReferralQuery};
use crate::mapping::transforms::datetime::DateTime;
use crate::store::{Job, Leadership, NewJob, StoreError};

/// Cursor of the Partner Center reconcile (an `updatedDateTime`).
pub const RECONCILE_CURSOR: &str = "pc_reconcile";

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This instance's name: the owner of its job leases and of its poller runs. Unique
    /// among the live instances of a pipeline (the store refuses a second one).
    pub worker: String,
    /// Jobs processed at once.
    pub concurrency: usize,
    /// How long a claimed job is ours before another worker may take it over.
    pub lease: Duration,
    /// Attempts before a job becomes a dead letter.
    pub max_attempts: u32,
    /// Partner Center reconcile interval.
    pub reconcile_every: Duration,
    /// CRM change poll interval.
    pub poll_every: Duration,
    /// How far behind the last seen change time the poll and reconcile look again: both
    /// systems stamp whole seconds, and a change committed late within its second must
    /// not be missed.
    pub overlap: Duration,
    /// First backoff after a failed attempt (doubles, with jitter, up to 10 minutes).
    pub backoff: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            worker: format!("cosell-{}", std::process::id()),
            concurrency: 8,
            lease: Duration::from_secs(60),
            max_attempts: 8,
            reconcile_every: Duration::from_secs(300),
            poll_every: Duration::from_secs(15),
            overlap: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
        }
    }
}

/// What one drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Jobs finished (any outcome).
    pub done: u64,
    /// Jobs that wrote something.
    pub written: u64,
    /// Jobs scheduled for another attempt.
    pub retried: u64,
    /// Jobs moved to the dead letters.
    pub dead: u64,
}

/// What a runner has done since it was made, for progress displays ([`Runner::activity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Jobs settled: completed, scheduled for a retry or dead-lettered.
    pub settled: u64,
    /// Partner Center reconciles that finished (without error).
    pub reconciles: u64,
    /// CRM polls that finished (without error).
    pub polls: u64,
}

/// Runs the engine's loops.
#[derive(Debug, Clone)]
pub struct Runner {
    engine: Arc<Engine>,
    options: RunOptions,
    wake: Arc<Notify>,
    seen: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Where the related-referral sweep goes on next round (a referral id; empty: from
    /// the start).
    related_after: Arc<std::sync::Mutex<String>>,
    activity: Arc<watch::Sender<Activity>>,
    /// Whether this instance runs the periodic pollers (one instance of a pipeline at a time).
    leadership: Arc<tokio::sync::Mutex<Leadership>>,
}

/// Co-sells whose Microsoft side each reconcile round asks for (one Partner Center call
/// each): at the default 5-minute interval, at most 5 760 calls a day, and only while
/// co-sells wait for Microsoft.
pub const RELATED_PER_ROUND: u32 = 20;

/// The Partner Center reconcile, as named in poller runs.
pub const RECONCILE_POLLER: &str = "reconcile";
/// The CRM change poll, as named in poller runs.
pub const CRM_POLLER: &str = "crm_poll";

impl Runner {
    /// A runner for `engine`.
    pub fn new(engine: Arc<Engine>, options: RunOptions) -> Runner {
        Runner {
            options,
            wake: Arc::new(Notify::new()),
            seen: Arc::new(std::sync::Mutex::new(HashMap::new())),
            related_after: Arc::new(std::sync::Mutex::new(String::new())),
            activity: Arc::new(watch::channel(Activity::default()).0),
            leadership: Arc::new(tokio::sync::Mutex::new(engine.store().leadership())),
            engine,
        }
    }

    /// Whether this instance runs the pollers now: takes the pipeline's poller leadership
    /// when it is free, keeps it while this instance's session lives. Always on SQLite.
    pub async fn leads(&self) -> bool {
        self.leadership.lock().await.check().await
    }

    /// Runs poller `poller` ([`RECONCILE_POLLER`] or [`CRM_POLLER`]) if this instance leads,
    /// recording the run in the store; `None` when another instance leads.
    pub async fn run_poller(&self, poller: &'static str) -> Option<Result<u64, JobError>> {
        if !self.leads().await {
            return None;
        }
        let store = self.engine.store();
        let run = match store.poller_started(poller, &self.options.worker).await {
            Ok(id) => id,
            Err(error) => return Some(Err(error.into())),
        };
        let result = if poller == RECONCILE_POLLER {
            self.reconcile().await
        } else {
            self.poll_crm().await
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.message().to_owned(),
        };
        if let Err(error) = store.poller_finished(run, &outcome).await {
            tracing::warn!("{poller}: recording the run: {error}");
        }
        Some(result)
    }

    /// What this runner (and its clones) has done so far; the receiver sees every change.
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.activity.subscribe()
    }

    /// Wakes idle workers (the webhook sink calls it after storing an event).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Lists referrals changed since the reconcile cursor and enqueues them; returns how
    /// many were enqueued. Referrals whose eTag the link already knows are not enqueued.
    pub async fn reconcile(&self) -> Result<u64, JobError> {
        let store = self.engine.store();
        let since = store.cursor(RECONCILE_CURSOR).await?;
        let filter = since.as_deref().and_then(|s| {
            let at = DateTime::parse(s)?.unix_seconds() - secs(self.options.overlap);
            Some(ODataFilter::gt(
                "updatedDateTime",
                DateTime::from_unix(at, 0).utc_string(),
            ))
        });
        let query = ReferralQuery {
            filter: filter.map(Into::into),
            orderby: Some("updatedDateTime".into()),
            top: Some(100),
        };
        let mut stream = Box::pin(self.engine.partner_center().list_referrals(query));
        let mut newest = since.clone();
        let mut enqueued = 0;
        while let Some(referral) = stream.try_next().await? {
            let value = serde_json::to_value(&referral).unwrap_or(Value::Null);
            let Some(id) = value["id"].as_str() else {
                continue;
            };
            let etag = value["eTag"].as_str().unwrap_or_default().to_owned();
            if let Some(updated) = value["updatedDateTime"].as_str()
                && newest.as_deref().is_none_or(|n| later(updated, n))
            {
                newest = Some(updated.to_owned());
            }
            if self.already_seen(&format!("pc:{id}"), &etag) {
                continue;
            }
            if let Some(link) = store.link(id).await?
                && link.pc_etag.as_deref() == Some(etag.as_str())
                && !etag.is_empty()
            {
                continue;
            }
            store
                .enqueue(&NewJob::new(
                    referral_key(id),
                    PC_REFERRAL,
                    json!({ "referral": value }),
                ))
                .await?;
            enqueued += 1;
        }
        if let Some(newest) = newest
            && Some(&newest) != since.as_ref()
        {
            store.set_cursor(RECONCILE_CURSOR, &newest).await?;
        }
        enqueued += self.sweep_related().await?;
        if enqueued > 0 {
            self.wake.notify_one();
        }
        self.activity.send_modify(|a| a.reconciles += 1);
        Ok(enqueued)
    }

    /// Microsoft's side of the co-sells we shared that have not heard from it yet: Partner
    /// Center lists another organization's referral only when asked by engagement, so a
    /// missed `related-referral-*` webhook is found by asking, [`RELATED_PER_ROUND`]
    /// engagements per reconcile (round-robin over the rounds, to keep the calls bounded).
    /// Returns how many referrals were enqueued.
    async fn sweep_related(&self) -> Result<u64, JobError> {
        let store = self.engine.store();
        let after = crate::connectors::lock(&self.related_after).clone();
        let mut links = store
            .links_awaiting_related(&after, RELATED_PER_ROUND)
            .await?;
        if links.len() < RELATED_PER_ROUND as usize && !after.is_empty() {
            // Wrapped around: the rest of this round starts from the beginning.
            let more = RELATED_PER_ROUND - links.len() as u32;
            let seen: std::collections::HashSet<String> =
                links.iter().map(|l| l.referral_id.clone()).collect();
            links.extend(
                store
                    .links_awaiting_related("", more)
                    .await?
                    .into_iter()
                    .filter(|l| !seen.contains(&l.referral_id)),
            );
        }
        let mut enqueued = 0;
        for link in &links {
            *crate::connectors::lock(&self.related_after) = link.referral_id.clone();
            let Some(engagement) = link
                .snapshot
                .as_ref()
                .and_then(|s| s.pointer("/referral/engagementId"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            for candidate in self
                .engine
                .partner_center()
                .related_referrals(engagement)
                .await?
            {
                let value = serde_json::to_value(&candidate).unwrap_or(Value::Null);
                let Some(id) = value["id"].as_str() else {
                    continue;
                };
                // Ours: the referral itself, and the one we created for Microsoft (it
                // names our CRM record).
                if id == link.referral_id
                    || value["externalReferenceId"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty())
                {
                    continue;
                }
                let etag = value["eTag"].as_str().unwrap_or_default().to_owned();
                if self.already_seen(&format!("pc:{id}"), &etag) {
                    continue;
                }
                store
                    .enqueue(&NewJob::new(
                        referral_key(&link.referral_id),
                        PC_REFERRAL,
                        json!({ "referral": value }),
                    ))
                    .await?;
                enqueued += 1;
            }
        }
        if links.len() < RELATED_PER_ROUND as usize {
            // A short page: everything was seen; the next round starts over.
            crate::connectors::lock(&self.related_after).clear();
        }
        Ok(enqueued)
    }

    fn already_seen(&self, key: &str, version: &str) -> bool {
        if version.is_empty() {
            return false;
        }
        let mut seen = crate::connectors::lock(&self.seen);
        if seen.get(key).map(String::as_str) == Some(version) {
            return true;
        }
        seen.insert(key.to_owned(), version.to_owned());
        false
    }

    /// Polls the CRM for records changed since the poll cursor and enqueues those that
    /// take part in the sync (sync flag on, or linked to a referral); changes of child
    /// records (solutions, deletions included) enqueue their parent.
    pub async fn poll_crm(&self) -> Result<u64, JobError> {
        let store = self.engine.store();
        let crm = self.engine.crm();
        let modified = crm.modified_field();
        let mut enqueued = 0;
        for polled in self.engine.polled_entities() {
            let cursor_name = format!("crm_poll:{}", polled.entity);
            let since = store
                .cursor(&cursor_name)
                .await?
                .unwrap_or_else(|| "2000-01-01T00:00:00Z".to_owned());
            let since_at = DateTime::parse(&since).map_or(0, |d| d.unix_seconds());
            let from = DateTime::from_unix(since_at - secs(self.options.overlap), 0).utc_string();
            let mut fields: Vec<&str> = vec![
                polled.id_field.as_str(),
                polled.referral_id_field.as_str(),
                modified,
            ];
            if let Some(flag) = &polled.sync_flag {
                fields.push(flag);
            }
            let mut newest = since.clone();
            let mut changes = crm.changed_since(&polled.entity, &fields, &from)?;
            while let Some(row) = changes.next().await {
                let row = row?;
                let Some(id) = row.get(&polled.id_field).and_then(Value::as_str) else {
                    continue;
                };
                let version = row
                    .get(modified)
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if later(version, &newest) {
                    newest = version.to_owned();
                }
                let flagged = polled
                    .sync_flag
                    .as_ref()
                    .is_none_or(|f| row.get(f).is_some_and(|v| v.as_bool() == Some(true)));
                let referral = row
                    .get(&polled.referral_id_field)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let linked = match referral {
                    Some(_) => true,
                    None => store.link_by_crm(&polled.entity, id).await?.is_some(),
                };
                if !flagged && !linked {
                    continue;
                }
                // The change stamp alone would merge two changes of one second (Dataverse's
                // `modifiedon` has whole seconds): a seller's edit right after the engine's
                // own write-back was taken for that write's echo and never synced.
                let seen_version = match row.get("@odata.etag").and_then(Value::as_str) {
                    Some(etag) => format!("{version} {etag}"),
                    None => version.to_owned(),
                };
                if self.already_seen(&format!("crm:{}:{id}", polled.entity), &seen_version) {
                    continue;
                }
                enqueued += self.enqueue_crm(&polled.entity, id, referral).await?;
            }
            // Child records: a solution added, changed or removed changes its parent.
            for child in &polled.children {
                let child_cursor = format!("crm_poll:{}", child.entity);
                let child_since = store
                    .cursor(&child_cursor)
                    .await?
                    .unwrap_or_else(|| "2000-01-01T00:00:00Z".to_owned());
                let at = DateTime::parse(&child_since).map_or(0, |d| d.unix_seconds());
                let from = DateTime::from_unix(at - secs(self.options.overlap), 0).utc_string();
                let mut child_newest = child_since.clone();
                let mut parents: Vec<String> = Vec::new();
                let mut rows = crm.changed_since(
                    &child.entity,
                    &[
                        child.id_field.as_str(),
                        child.parent_column.as_str(),
                        modified,
                    ],
                    &from,
                )?;
                while let Some(row) = rows.next().await {
                    let row = row?;
                    let version = row
                        .get(modified)
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if later(version, &child_newest) {
                        child_newest = version.to_owned();
                    }
                    let child_id = row
                        .get(&child.id_field)
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if self.already_seen(&format!("crm:{}:{child_id}", child.entity), version) {
                        continue;
                    }
                    if let Some(parent) = row.get(&child.parent_column).and_then(Value::as_str)
                        && !parents.iter().any(|p| p == parent)
                    {
                        parents.push(parent.to_owned());
                    }
                }
                for (parent_id, _) in self.deleted_children(child, &from).await? {
                    if !parents.contains(&parent_id) {
                        parents.push(parent_id);
                    }
                }
                // Unlinked parents too: a seller fixing a rejected opportunity (S9) by adding
                // the missing solution changes only the child. The job reads the parent and
                // skips it when it is not flagged for sync.
                for parent in parents {
                    let link = store.link_by_crm(&polled.entity, &parent).await?;
                    enqueued += self
                        .enqueue_crm(
                            &polled.entity,
                            &parent,
                            link.as_ref().map(|l| l.referral_id.as_str()),
                        )
                        .await?;
                }
                if child_newest != child_since {
                    store.set_cursor(&child_cursor, &child_newest).await?;
                }
            }
            if newest != since {
                store.set_cursor(&cursor_name, &newest).await?;
            }
        }
        if enqueued > 0 {
            self.wake.notify_one();
        }
        self.activity.send_modify(|a| a.polls += 1);
        Ok(enqueued)
    }

    /// Child records deleted since `from`, as (parent id, child id). Salesforce keeps
    /// deleted rows (with their parent) for `queryAll`; Dataverse change tracking reports
    /// only the id, so the parent is found through the links that remember their children.
    async fn deleted_children(
        &self,
        child: &super::sync::ChildTable,
        from: &str,
    ) -> Result<Vec<(String, String)>, JobError> {
        use crate::connectors::salesforce::soql::{Soql, SoqlValue};
        use crate::engine::crm::Crm;
        let mut out = Vec::new();
        match self.engine.crm() {
            Crm::Salesforce(client) => {
                let query = Soql::select(&[child.id_field.as_str(), child.parent_column.as_str()])
                    .from(&child.entity)
                    .where_eq("IsDeleted", SoqlValue::bool(true))
                    .where_gt("SystemModstamp", SoqlValue::datetime(from)?)
                    .build()?;
                let rows: Vec<_> = client.query_all(&query).try_collect().await?;
                for row in rows {
                    let id = row
                        .get(&child.id_field)
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if self.already_seen(&format!("deleted:{id}"), "1") {
                        continue;
                    }
                    if let Some(parent) = row.get(&child.parent_column).and_then(Value::as_str) {
                        out.push((parent.to_owned(), id.to_owned()));
                    }
                }
            }
            Crm::Dataverse(client) => {
                let cursor = format!("crm_delta:{}", child.entity);
                let store = self.engine.store();
                let link = store.cursor(&cursor).await?.filter(|l| !l.is_empty());
                let batch = match client
                    .track_changes(&child.entity, &[child.id_field.as_str()], link.as_deref())
                    .await
                {
                    Ok(batch) => batch,
                    // Change tracking off for the table (or a stale delta link): deletions
                    // are then seen with the parent's next change; start the delta anew.
                    Err(error) => {
                        tracing::debug!("change tracking of {}: {error}", child.entity);
                        if link.is_some() {
                            store.set_cursor(&cursor, "").await?;
                        }
                        return Ok(out);
                    }
                };
                // The first round lists every row: only its delta link matters.
                if link.as_deref().is_some_and(|l| !l.is_empty()) {
                    for id in &batch.deleted {
                        for parent in store.links_mentioning(id).await? {
                            if let Some(crm_id) = parent.crm_id {
                                out.push((crm_id, id.clone()));
                            }
                        }
                    }
                }
                store.set_cursor(&cursor, &batch.delta_link).await?;
            }
        }
        Ok(out)
    }

    async fn enqueue_crm(
        &self,
        entity: &str,
        id: &str,
        referral: Option<&str>,
    ) -> Result<u64, StoreError> {
        // Keyed by the referral when there is one, so PC and CRM changes of one referral
        // never run at the same time.
        let key = match referral {
            Some(rid) => referral_key(rid),
            None => format!("crm:{entity}:{id}"),
        };
        self.engine
            .store()
            .enqueue(&NewJob::new(
                key,
                CRM_CHANGE,
                json!({ "entity": entity, "id": id }),
            ))
            .await?;
        Ok(1)
    }

    /// Claims and runs due jobs until none is due (or `stop` says so). Returns the tally.
    pub async fn drain(&self) -> Result<Drained, StoreError> {
        let mut tally = Drained::default();
        let mut running: JoinSet<(Job, Option<JobResult>, Duration)> = JoinSet::new();
        loop {
            let mut free = self.options.concurrency.saturating_sub(running.len());
            if free > 0 {
                let jobs = self
                    .engine
                    .store()
                    .claim(&self.options.worker, self.options.lease, free)
                    .await?;
                free -= jobs.len();
                for job in jobs {
                    let engine = self.engine.clone();
                    let lease = self.options.lease;
                    running.spawn(async move {
                        let started = std::time::Instant::now();
                        let result = run_leased(&engine, &job, lease).await;
                        (job, result, started.elapsed())
                    });
                }
            }
            if running.is_empty() {
                return Ok(tally);
            }
            // A webhook stored while jobs run is claimed at once by a free worker, not
            // after the running jobs finish.
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                () = self.wake.notified(), if free > 0 => continue,
            };
            let Some(joined) = joined else {
                return Ok(tally);
            };
            let Ok((job, result, elapsed)) = joined else {
                continue;
            };
            let Some(result) = result else {
                // The lease was lost mid-job: the job is another worker's now.
                self.activity.send_modify(|a| a.settled += 1);
                continue;
            };
            self.settle(&job, result, elapsed, &mut tally).await?;
            self.activity.send_modify(|a| a.settled += 1);
        }
    }

    async fn settle(
        &self,
        job: &Job,
        result: Result<JobOutcome, JobError>,
        elapsed: Duration,
        tally: &mut Drained,
    ) -> Result<(), StoreError> {
        let store = self.engine.store();
        metrics::histogram!("cosell_sync_seconds", "kind" => job.kind.clone())
            .record(elapsed.as_secs_f64());
        match result {
            Ok(outcome) => {
                metrics::counter!("cosell_job_outcomes_total", "kind" => job.kind.clone(), "outcome" => outcome.as_str())
                    .increment(1);
                if outcome == JobOutcome::Written {
                    tally.written += 1;
                }
                tally.done += 1;
                ignore_lost(store.complete(job).await)
            }
            Err(JobError::Retry { message, after })
                if job.attempts + 1 < self.options.max_attempts =>
            {
                metrics::counter!("cosell_job_outcomes_total", "kind" => job.kind.clone(), "outcome" => "retry")
                    .increment(1);
                tracing::warn!(job = %job.id, key = %job.key, attempt = job.attempts + 1, "{message}");
                let wait = after.unwrap_or_else(|| backoff(self.options.backoff, job.attempts));
                tally.retried += 1;
                ignore_lost(
                    store
                        .retry_later(job, SystemTime::now() + wait, &message)
                        .await,
                )
            }
            Err(error) => {
                metrics::counter!("cosell_job_outcomes_total", "kind" => job.kind.clone(), "outcome" => "dead_letter")
                    .increment(1);
                tracing::error!(job = %job.id, key = %job.key, "giving up: {}", error.message());
                tally.dead += 1;
                let referral = job.key.strip_prefix("referral:").map(str::to_owned);
                store
                    .audit(&crate::store::NewAudit {
                        referral_id: referral,
                        crm_entity: None,
                        crm_id: None,
                        flow: job.kind.clone(),
                        outcome: "dead_letter".into(),
                        message: error.message().to_owned(),
                        details: json!({"job": job.id.0, "attempts": job.attempts + 1}),
                    })
                    .await?;
                ignore_lost(store.dead_letter(job, error.message()).await)
            }
        }
    }

    /// `--once`: reconcile, poll and drain until a round finds nothing new and nothing is
    /// waiting for a retry. Returns the totals.
    pub async fn run_once(&self) -> Result<Drained, JobError> {
        let mut total = Drained::default();
        let mut rounds = 0;
        loop {
            // Pollers run on the leader only: with other instances running, this one may
            // just help drain what they find.
            let mut found = 0;
            for poller in [RECONCILE_POLLER, CRM_POLLER] {
                if let Some(result) = self.run_poller(poller).await {
                    found += result?;
                }
            }
            // Drain until the inbox is empty. This ends: retries are bounded (then a dead
            // letter), and leases left by a crashed worker expire. Leased jobs are not ours
            // once `drain` returns: another worker's, or a dead one's.
            let mut done = 0;
            loop {
                let drained = self.drain().await?;
                done += drained.done;
                total.done += drained.done;
                total.written += drained.written;
                total.retried += drained.retried;
                total.dead += drained.dead;
                let stats = self.engine.store().inbox_stats().await?;
                if stats.scheduled == 0 && stats.pending == 0 && stats.leased == 0 {
                    break;
                }
                // A retry is due later (or a lease has yet to expire): wait without
                // re-reading either system meanwhile.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if found == 0 && done == 0 {
                break;
            }
            rounds += 1;
            if rounds >= 20 {
                // Records that change every round (a CRM workflow rewriting a field we
                // write, say) would keep `--once` going forever.
                tracing::warn!(
                    "still finding changes after {rounds} rounds; stopping (the next run continues)"
                );
                break;
            }
            // Our writes show up as changes on the other side: one more round confirms
            // they are echoes (a second after, so whole-second stamps move on).
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        Ok(total)
    }

    /// Runs until `shutdown` resolves: workers woken by webhooks (through [`Runner::waker`])
    /// or a short idle tick, plus the reconcile and poll loops.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), JobError> {
        let workers = {
            let runner = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(error) = runner.drain().await {
                        tracing::error!("inbox: {error}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    tokio::select! {
                        () = runner.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            })
        };
        let reconcile = {
            let runner = self.clone();
            tokio::spawn(async move {
                loop {
                    match runner.run_poller(RECONCILE_POLLER).await {
                        Some(Ok(n)) if n > 0 => {
                            tracing::info!("reconcile: {n} referral(s) to sync");
                        }
                        Some(Err(error)) => tracing::warn!("reconcile: {}", error.message()),
                        Some(Ok(_)) | None => {}
                    }
                    tokio::time::sleep(runner.options.reconcile_every).await;
                }
            })
        };
        let poll = {
            let runner = self.clone();
            tokio::spawn(async move {
                loop {
                    // Also how a follower notices the leader is gone: each tick tries to take
                    // the leadership.
                    match runner.run_poller(CRM_POLLER).await {
                        Some(Ok(n)) if n > 0 => tracing::info!("CRM poll: {n} record(s) to sync"),
                        Some(Err(error)) => tracing::warn!("CRM poll: {}", error.message()),
                        Some(Ok(_)) | None => {}
                    }
                    let depth = runner
                        .engine
                        .store()
                        .inbox_stats()
                        .await
                        .map(|s| s.pending + s.scheduled + s.leased)
                        .unwrap_or(0);
                    metrics::gauge!("cosell_inbox_depth").set(depth as f64);
                    tokio::time::sleep(runner.options.poll_every).await;
                }
            })
        };
        shutdown.await;
        workers.abort();
        reconcile.abort();
        poll.abort();
        Ok(())
    }
}

/// What handling one job came to.
type JobResult = Result<JobOutcome, JobError>;

/// Runs `job`, renewing its lease every third of `lease` while it runs, so a job that takes
/// long (a `Retry-After` of minutes from a throttled service, a slow upstream) stays this
/// worker's and is never run by two workers at once. `None` when the lease was lost anyway
/// (this worker stalled past it and another took the job over): the job is then abandoned
/// mid-way — its effects are idempotent and the new holder redoes it.
async fn run_leased(engine: &Engine, job: &Job, lease: Duration) -> Option<JobResult> {
    let mut held = job.clone();
    let work = engine.handle(job);
    tokio::pin!(work);
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = renew.tick() => match engine.store().renew_lease(&mut held, lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::warn!(
                        job = %job.id, key = %job.key,
                        "lease lost: another worker has the job; abandoning it"
                    );
                    return None;
                }
                // A store hiccup: keep working and try again at the next tick — until the
                // lease has run out unrenewed. Then another worker may take the job any
                // moment (this instance may be cut off from the store): stop, so the two
                // never work on one referral for longer than the hiccup.
                Err(error) if SystemTime::now() >= held.lease_until => {
                    tracing::warn!(
                        job = %job.id, key = %job.key,
                        "lease expired unrenewed ({error}); abandoning the job"
                    );
                    return None;
                }
                Err(error) => tracing::warn!(job = %job.id, "renewing the lease: {error}"),
            },
        }
    }
}

fn ignore_lost(result: Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        // Another worker took the job over after our lease expired: its verdict stands.
        Err(StoreError::LeaseLost { .. }) => Ok(()),
        other => other,
    }
}

fn backoff(first: Duration, attempts: u32) -> Duration {
    let base = first
        .saturating_mul(1 << attempts.min(10))
        .min(Duration::from_secs(600));
    // Jitter: up to a quarter more, from the clock's sub-second noise (no RNG dependency).
    let noise = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(noise % 1000) / 4000.0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(0)
}

/// Whether time `a` is after time `b` (RFC 3339 in any of the services' formats).
fn later(a: &str, b: &str) -> bool {
    match (DateTime::parse(a), DateTime::parse(b)) {
        (Some(x), Some(y)) => {
            (x.unix_seconds(), x.to_utc().utc_string())
                > (y.unix_seconds(), y.to_utc().utc_string())
        }
        (Some(_), None) => true,
        _ => false,
    }
}
