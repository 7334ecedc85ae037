//! The state store's conformance suite: every test runs against SQLite (a file in a temporary
//! directory) and PostgreSQL (a fresh schema, dropped afterwards), as `sqlite::<name>` and
//! `postgres::<name>`.
//!
//! PostgreSQL is reached at `COSELL_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (`.ci/run` starts the server).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosell::store::{
    ApiCalls, DEFAULT_PIPELINE, InboxStats, Job, JobId, Link, NewAudit, NewJob, SCHEMA_VERSION,
    Store, StoreError, utc_day,
};
use serde_json::json;

mod common;
use common::{postgres_admin, postgres_base_url};

/// A store under test and the URL that opens it again (for reopening and for extra workers).
struct Fixture {
    store: Store,
    url: String,
    /// Keeps the SQLite file's directory alive for the test.
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// Another store on the same database, with its own pool.
    async fn open_again(&self) -> Store {
        Store::open(&self.url).await.expect("reopen store")
    }
}

async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/state/cosell.db", dir.path().display());
    let store = Store::open(&url).await.expect("open sqlite store");
    Fixture {
        store,
        url,
        _dir: Some(dir),
    }
}

/// A schema name no other test (or test process) uses.
fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "cosell_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn postgres_fixture(schema: &str) -> Fixture {
    postgres_admin(&format!("CREATE SCHEMA {schema}")).await;
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        postgres_base_url()
    );
    let store = Store::open(&url).await.expect("open postgres store");
    assert_eq!(store.kind(), "postgres");
    Fixture {
        store,
        url,
        _dir: None,
    }
}

/// Generates `sqlite::<name>` and `postgres::<name>` for each conformance test.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::sqlite_fixture().await;
                    assert_eq!(fixture.store.kind(), "sqlite");
                    super::$name(&fixture).await;
                    fixture.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let schema = super::unique_schema();
                    let fixture = super::postgres_fixture(&schema).await;
                    // Run in a task so a failing test still drops its schema.
                    let outcome = tokio::spawn(async move {
                        super::$name(&fixture).await;
                        fixture.store.close().await;
                    })
                    .await;
                    super::postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
                    if let Err(e) = outcome {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )*
        }
    };
}

conformance!(
    pipelines_are_isolated,
    pipeline_belongs_to_one_crm,
    instance_names_are_exclusive,
    poller_runs_are_recorded,
    upgrade_from_schema_4_keeps_rows_in_the_default_pipeline,
    link_upsert_and_lookup,
    links_by_engagement_and_awaiting_microsoft,
    link_crm_record_is_unique,
    links_counted_by_state,
    cursors,
    enqueue_dedupes_waiting_jobs,
    claim_takes_oldest_job_per_key,
    claim_respects_not_before_and_limit,
    expired_lease_is_claimable_again,
    lease_is_checked_on_every_verdict,
    renewed_lease_keeps_job,
    retry_later_counts_and_delays,
    dead_letter_and_replay,
    inbox_stats,
    audit_trail_newest_first,
    recent_failures,
    concurrent_claimers_keep_keys_exclusive,
    reopening_keeps_data_and_migrates_idempotently,
    api_usage_adds_up_per_upstream_and_day,
    api_usage_from_concurrent_workers_adds_up,
    single_engine_lock_releases_dead_leases,
);

/// Now, truncated to the millisecond the store keeps.
fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("ms fit u64"))
}

fn assert_recent(t: SystemTime) {
    let age = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "{t:?} is not recent");
}

fn lease_lost(result: Result<(), StoreError>) {
    match result {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

async fn claim_one(store: &Store, worker: &str) -> Option<Job> {
    let mut jobs = store
        .claim(worker, Duration::from_secs(60), 1)
        .await
        .expect("claim");
    jobs.pop()
}

// ---- links -----------------------------------------------------------------------------

/// Schema 6: a link knows its referral's engagement (from the snapshot), so Microsoft's
/// side of a co-sell is recognised, and the co-sells still waiting for Microsoft are listed
/// in id order for the reconcile's sweep.
async fn links_by_engagement_and_awaiting_microsoft(fx: &Fixture) {
    let store = &fx.store;
    let save = |rid: &str, crm: Option<&str>, engagement: &str, direction: &str, related: bool| {
        let mut link = Link::new(rid, "opportunity", "synced");
        link.crm_id = crm.map(str::to_owned);
        let mut snapshot = serde_json::json!({
            "referral": {"id": rid, "engagementId": engagement, "direction": direction, "type": "Shared"}
        });
        if related {
            snapshot["related_projection"] = serde_json::json!({"cosell_microsoftcrmid": "7-X"});
        }
        link.snapshot = Some(snapshot);
        link
    };
    for link in [
        save("r-1", Some("crm-1"), "e-1", "Outgoing", false),
        save("r-2", Some("crm-2"), "e-2", "Outgoing", true),
        save("r-3", Some("crm-3"), "e-3", "Incoming", false),
        save("r-4", None, "e-4", "Outgoing", false),
        save("r-5", Some("crm-5"), "e-5", "Outgoing", false),
    ] {
        store.save_link(&link).await.unwrap();
    }
    let found = store.linked_on_engagement("e-1", "other").await.unwrap();
    assert_eq!(found.map(|l| l.referral_id).as_deref(), Some("r-1"));
    assert_eq!(
        store.linked_on_engagement("e-1", "r-1").await.unwrap(),
        None,
        "itself"
    );
    assert_eq!(
        store.linked_on_engagement("e-4", "x").await.unwrap(),
        None,
        "no CRM record"
    );
    assert_eq!(store.linked_on_engagement("e-9", "x").await.unwrap(), None);

    let ids = |links: Vec<Link>| links.into_iter().map(|l| l.referral_id).collect::<Vec<_>>();
    // Outgoing, linked, not heard from Microsoft: r-1 and r-5, in order, paged.
    assert_eq!(
        ids(store.links_awaiting_related("", 10).await.unwrap()),
        ["r-1", "r-5"]
    );
    assert_eq!(
        ids(store.links_awaiting_related("", 1).await.unwrap()),
        ["r-1"]
    );
    assert_eq!(
        ids(store.links_awaiting_related("r-1", 10).await.unwrap()),
        ["r-5"]
    );
    let mut closed = store.link("r-5").await.unwrap().unwrap();
    closed.state = "closed".into();
    store.save_link(&closed).await.unwrap();
    assert_eq!(
        ids(store.links_awaiting_related("", 10).await.unwrap()),
        ["r-1"]
    );
}

async fn link_upsert_and_lookup(fx: &Fixture) {
    let store = &fx.store;
    assert_eq!(store.link("r-1").await.unwrap(), None);

    let synced = now_ms() - Duration::from_secs(5);
    let mut link = Link::new("r-1", "opportunity", "synced");
    link.crm_id = Some("crm-1".into());
    link.pc_hash = Some("pc#1".into());
    link.crm_hash = Some("crm#1".into());
    link.pc_etag = Some("W/\"1\"".into());
    link.crm_version = Some("42".into());
    link.pc_synced_at = Some(synced);
    link.crm_synced_at = Some(synced + Duration::from_millis(7));
    store.save_link(&link).await.unwrap();

    let stored = store.link("r-1").await.unwrap().expect("link saved");
    assert_recent(stored.updated_at);
    assert_eq!(
        stored,
        Link {
            updated_at: stored.updated_at,
            ..link.clone()
        }
    );
    assert_eq!(
        store.link_by_crm("opportunity", "crm-1").await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(store.link_by_crm("lead", "crm-1").await.unwrap(), None);

    // Upsert: same referral, new record and state; the old record id no longer resolves.
    link.crm_id = Some("crm-2".into());
    link.state = "on_hold".into();
    link.pc_synced_at = None;
    store.save_link(&link).await.unwrap();
    let stored = store.link("r-1").await.unwrap().expect("link kept");
    assert_eq!(stored.state, "on_hold");
    assert_eq!(stored.crm_id.as_deref(), Some("crm-2"));
    assert_eq!(stored.pc_synced_at, None);
    assert_eq!(
        store.link_by_crm("opportunity", "crm-1").await.unwrap(),
        None
    );
    assert_eq!(
        store
            .link_by_crm("opportunity", "crm-2")
            .await
            .unwrap()
            .map(|l| l.referral_id),
        Some("r-1".to_string())
    );
}

async fn link_crm_record_is_unique(fx: &Fixture) {
    let store = &fx.store;
    let mut a = Link::new("r-a", "opportunity", "synced");
    a.crm_id = Some("crm-x".into());
    store.save_link(&a).await.unwrap();

    let mut b = Link::new("r-b", "opportunity", "synced");
    b.crm_id = Some("crm-x".into());
    match store.save_link(&b).await {
        Err(StoreError::Conflict { message }) => {
            assert!(
                message.contains("r-a") && message.contains("r-b"),
                "{message}"
            );
            assert!(message.contains("crm-x"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.link("r-b").await.unwrap(), None);

    // The same id in another entity, and links without a CRM record, do not collide.
    b.entity = "lead".into();
    store.save_link(&b).await.unwrap();
    store
        .save_link(&Link::new("r-c", "opportunity", "pending"))
        .await
        .unwrap();
    store
        .save_link(&Link::new("r-d", "opportunity", "pending"))
        .await
        .unwrap();
    // Re-saving the holder itself is no conflict.
    a.state = "closed".into();
    store.save_link(&a).await.unwrap();
}

async fn links_counted_by_state(fx: &Fixture) {
    let store = &fx.store;
    assert!(store.links_by_state().await.unwrap().is_empty());
    for (id, state) in [
        ("r1", "synced"),
        ("r2", "synced"),
        ("r3", "on_hold"),
        ("r4", "failed"),
        ("r5", "synced"),
    ] {
        store
            .save_link(&Link::new(id, "opportunity", state))
            .await
            .unwrap();
    }
    // Moving a link between states moves its count.
    store
        .save_link(&Link::new("r5", "opportunity", "closed"))
        .await
        .unwrap();
    let expected: BTreeMap<String, u64> =
        [("closed", 1), ("failed", 1), ("on_hold", 1), ("synced", 2)]
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
    assert_eq!(store.links_by_state().await.unwrap(), expected);
}

// ---- cursors ---------------------------------------------------------------------------

async fn cursors(fx: &Fixture) {
    let store = &fx.store;
    assert_eq!(store.cursor("reconcile").await.unwrap(), None);
    store
        .set_cursor("reconcile", "2024-01-01T00:00:00Z")
        .await
        .unwrap();
    store
        .set_cursor(
            "crm_poll",
            "https://org/api/data/v9.2/opportunities?$deltatoken=1",
        )
        .await
        .unwrap();
    store
        .set_cursor("reconcile", "2024-02-01T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(
        store.cursor("reconcile").await.unwrap().as_deref(),
        Some("2024-02-01T00:00:00Z")
    );
    assert_eq!(
        store.cursor("crm_poll").await.unwrap().as_deref(),
        Some("https://org/api/data/v9.2/opportunities?$deltatoken=1")
    );
}

// ---- inbox -----------------------------------------------------------------------------

async fn enqueue_dedupes_waiting_jobs(fx: &Fixture) {
    let store = &fx.store;
    let event = json!({"referralId": "r-1", "event": "updated", "n": [1, 2]});
    let first = store
        .enqueue(&NewJob::new("referral:r-1", "pc_event", event.clone()))
        .await
        .unwrap();
    // A re-delivery of the same webhook: same job.
    let again = store
        .enqueue(&NewJob::new("referral:r-1", "pc_event", event.clone()))
        .await
        .unwrap();
    assert_eq!(first, again);
    // Object key order does not matter.
    let reordered: serde_json::Value =
        serde_json::from_str(r#"{"n": [1, 2], "event": "updated", "referralId": "r-1"}"#).unwrap();
    assert_eq!(
        store
            .enqueue(&NewJob::new("referral:r-1", "pc_event", reordered))
            .await
            .unwrap(),
        first
    );
    // Any difference in key, kind or payload is another job, and so is an explicit opt-out.
    let other_payload = store
        .enqueue(&NewJob::new(
            "referral:r-1",
            "pc_event",
            json!({"referralId": "r-1"}),
        ))
        .await
        .unwrap();
    let other_kind = store
        .enqueue(&NewJob::new("referral:r-1", "reconcile", event.clone()))
        .await
        .unwrap();
    let other_key = store
        .enqueue(&NewJob::new("referral:r-2", "pc_event", event.clone()))
        .await
        .unwrap();
    let forced = store
        .enqueue(&NewJob::new("referral:r-1", "pc_event", event.clone()).without_dedupe())
        .await
        .unwrap();
    let ids: HashSet<JobId> = [first, other_payload, other_kind, other_key, forced]
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(
        first < other_payload && other_payload < forced,
        "ids increase"
    );

    // Once a worker holds a job, it is no dedupe target: the worker may already have read the
    // state a new delivery reports. The waiting identical copy (`forced`) still is.
    let job = claim_one(store, "w1").await.expect("claimable");
    assert_eq!(job.id, first);
    assert_eq!(
        store
            .enqueue(&NewJob::new("referral:r-1", "pc_event", event.clone()))
            .await
            .unwrap(),
        forced
    );
    let third = store
        .enqueue(&NewJob::new("referral:r-3", "pc_event", event.clone()))
        .await
        .unwrap();
    let leased_third = store
        .claim("w1", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert!(leased_third.iter().any(|j| j.id == third));
    let after_claim = store
        .enqueue(&NewJob::new("referral:r-3", "pc_event", event.clone()))
        .await
        .unwrap();
    assert_ne!(after_claim, third, "a leased job is not deduplicated into");
    // …but a job waiting for its retry is still waiting: deduplicated into.
    store
        .retry_later(&job, now_ms() + Duration::from_secs(3600), "503")
        .await
        .unwrap();
    assert_eq!(
        store
            .enqueue(&NewJob::new("referral:r-1", "pc_event", event))
            .await
            .unwrap(),
        first
    );
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.scheduled),
        (4, 2, 1),
        "{stats:?}"
    );
}

async fn claim_takes_oldest_job_per_key(fx: &Fixture) {
    let store = &fx.store;
    let a1 = store
        .enqueue(&NewJob::new("referral:a", "pc_event", json!({"n": 1})))
        .await
        .unwrap();
    let b1 = store
        .enqueue(&NewJob::new("referral:b", "pc_event", json!({"n": 2})))
        .await
        .unwrap();
    let a2 = store
        .enqueue(&NewJob::new("referral:a", "pc_event", json!({"n": 3})))
        .await
        .unwrap();

    let jobs = store
        .claim("w1", Duration::from_secs(60), 10)
        .await
        .unwrap();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![a1, b1], "one per key, oldest first");
    let job = &jobs[0];
    assert_eq!(job.key, "referral:a");
    assert_eq!(job.kind, "pc_event");
    assert_eq!(job.payload, json!({"n": 1}));
    assert_eq!(job.attempts, 0);
    assert_eq!(job.last_error, None);
    assert_eq!(job.lease_owner, "w1");
    assert_eq!(job.claims, 1);
    assert_recent(job.enqueued_at);
    assert!(job.lease_until > SystemTime::now() + Duration::from_secs(30));

    // a2 waits while a1 is leased, for every worker.
    assert!(
        store
            .claim("w2", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );

    store.complete(job).await.unwrap();
    let next = claim_one(store, "w2").await.expect("a2 is next");
    assert_eq!(next.id, a2);
    assert_eq!(next.lease_owner, "w2");
    store.complete(&next).await.unwrap();
    store.complete(&jobs[1]).await.unwrap();
    assert!(claim_one(store, "w1").await.is_none());
}

async fn claim_respects_not_before_and_limit(fx: &Fixture) {
    let store = &fx.store;
    let later = now_ms() + Duration::from_secs(3600);
    store
        .enqueue(&NewJob::new("referral:late", "reconcile", json!(null)).not_before(later))
        .await
        .unwrap();
    // A later job of the same key waits behind the scheduled one, even though it is due.
    store
        .enqueue(&NewJob::new("referral:late", "pc_event", json!(1)))
        .await
        .unwrap();
    assert!(claim_one(store, "w1").await.is_none());

    let past = now_ms() - Duration::from_secs(10);
    let due = store
        .enqueue(&NewJob::new("referral:due", "pc_event", json!(2)).not_before(past))
        .await
        .unwrap();
    for i in 0..3 {
        store
            .enqueue(&NewJob::new(format!("referral:k{i}"), "pc_event", json!(i)))
            .await
            .unwrap();
    }
    assert!(
        store
            .claim("w1", Duration::from_secs(60), 0)
            .await
            .unwrap()
            .is_empty()
    );
    let jobs = store.claim("w1", Duration::from_secs(60), 2).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].id, due);
    assert_eq!(jobs[0].not_before, past);
    let rest = store
        .claim("w1", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    // The due job behind the scheduled head counts as pending: it is due, merely blocked.
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.scheduled), (1, 4, 1));
}

async fn expired_lease_is_claimable_again(fx: &Fixture) {
    let store = &fx.store;
    let id = store
        .enqueue(&NewJob::new("referral:x", "pc_event", json!({})))
        .await
        .unwrap();
    let crashed = store
        .claim("w1", Duration::from_millis(50), 1)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.leased),
        (1, 0),
        "expired lease counts as pending"
    );

    let recovered = claim_one(store, "w2")
        .await
        .expect("reclaimed after expiry");
    assert_eq!(recovered.id, id);
    assert_eq!(recovered.lease_owner, "w2");
    assert_eq!(recovered.claims, 2, "the crashed claim is remembered");
    // The first worker comes back: its claim is gone.
    lease_lost(store.complete(&crashed).await);
    lease_lost(store.retry_later(&crashed, now_ms(), "late").await);
    lease_lost(store.dead_letter(&crashed, "late").await);
    store.complete(&recovered).await.unwrap();

    // The same worker re-claiming after its own lease expired also fences the old claim.
    store
        .enqueue(&NewJob::new("referral:y", "pc_event", json!({})))
        .await
        .unwrap();
    let old = store
        .claim("w1", Duration::from_millis(50), 1)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = claim_one(store, "w1").await.expect("reclaimed");
    lease_lost(store.complete(&old).await);
    store.complete(&new).await.unwrap();
}

async fn lease_is_checked_on_every_verdict(fx: &Fixture) {
    let store = &fx.store;
    store
        .enqueue(&NewJob::new("referral:z", "pc_event", json!({})))
        .await
        .unwrap();
    let job = claim_one(store, "w1").await.expect("claimed");
    let impostor = Job {
        lease_owner: "w2".into(),
        ..job.clone()
    };
    lease_lost(store.complete(&impostor).await);
    lease_lost(store.retry_later(&impostor, now_ms(), "x").await);
    lease_lost(store.dead_letter(&impostor, "x").await);
    let mut renewing = impostor.clone();
    lease_lost(
        store
            .renew_lease(&mut renewing, Duration::from_secs(1))
            .await,
    );
    match store.complete(&impostor).await {
        Err(e @ StoreError::LeaseLost { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&job.id.to_string()) && text.contains("w2"),
                "{text}"
            );
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // Nothing changed for the real holder.
    store.complete(&job).await.unwrap();
    // Completing twice: the second one has nothing to complete.
    lease_lost(store.complete(&job).await);
    assert_eq!(store.inbox_stats().await.unwrap(), InboxStats::default());
}

async fn renewed_lease_keeps_job(fx: &Fixture) {
    let store = &fx.store;
    store
        .enqueue(&NewJob::new("referral:long", "pc_event", json!({})))
        .await
        .unwrap();
    let mut job = store
        .claim("w1", Duration::from_millis(300), 1)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let before = job.lease_until;
    store
        .renew_lease(&mut job, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(job.lease_until > before);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        claim_one(store, "w2").await.is_none(),
        "renewed lease still held"
    );
    store.complete(&job).await.unwrap();
}

async fn retry_later_counts_and_delays(fx: &Fixture) {
    let store = &fx.store;
    let id = store
        .enqueue(&NewJob::new("referral:r", "pc_event", json!({"v": 1})))
        .await
        .unwrap();
    let job = claim_one(store, "w1").await.expect("claimed");
    store
        .retry_later(&job, now_ms() - Duration::from_millis(1), "HTTP 503")
        .await
        .unwrap();
    let job = claim_one(store, "w2").await.expect("due again");
    assert_eq!(job.id, id);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(job.claims, 2);

    let at = now_ms() + Duration::from_secs(3600);
    store.retry_later(&job, at, "HTTP 429").await.unwrap();
    let behind = store
        .enqueue(&NewJob::new("referral:r", "pc_event", json!({"v": 2})))
        .await
        .unwrap();
    let other = store
        .enqueue(&NewJob::new("referral:s", "pc_event", json!({})))
        .await
        .unwrap();
    // Only the other key is claimable: the retrying job delays its key's later job too.
    let jobs = store
        .claim("w1", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other]);
    assert_ne!(behind, other);
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(stats.scheduled, 1);
    assert_eq!(stats.leased, 1);
}

async fn dead_letter_and_replay(fx: &Fixture) {
    let store = &fx.store;
    assert!(store.dead_letters().await.unwrap().is_empty());
    let payload = json!({"referralId": "r-9", "event": "created"});
    let id = store
        .enqueue(&NewJob::new("referral:r-9", "pc_event", payload.clone()))
        .await
        .unwrap();
    let next = store
        .enqueue(&NewJob::new(
            "referral:r-9",
            "pc_event",
            json!({"later": true}),
        ))
        .await
        .unwrap();
    let job = claim_one(store, "w1").await.expect("claimed");
    store
        .retry_later(&job, now_ms() - Duration::from_millis(1), "first")
        .await
        .unwrap();
    let job = claim_one(store, "w1").await.expect("claimed again");
    store
        .dead_letter(&job, "HTTP 400: invalid country")
        .await
        .unwrap();

    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.job_id, id);
    assert_eq!(letter.key, "referral:r-9");
    assert_eq!(letter.kind, "pc_event");
    assert_eq!(letter.payload, payload);
    assert_eq!(letter.attempts, 2, "the final failure counts");
    assert_eq!(letter.error, "HTTP 400: invalid country");
    assert_recent(letter.failed_at);
    assert_eq!(letter.enqueued_at, job.enqueued_at);

    // The key is free again: the next job runs.
    let job = claim_one(store, "w1").await.expect("next job of the key");
    assert_eq!(job.id, next);
    store.dead_letter(&job, "second failure").await.unwrap();
    assert_eq!(store.inbox_stats().await.unwrap().dead_letters, 2);

    assert!(!store.replay(letter.id + 1_000_000).await.unwrap());
    assert!(store.replay(letter.id).await.unwrap());
    assert!(!store.replay(letter.id).await.unwrap(), "replayed once");
    let replayed = claim_one(store, "w1").await.expect("replayed job");
    assert_ne!(replayed.id, id, "a fresh job");
    assert_eq!(replayed.payload, payload);
    assert_eq!(replayed.attempts, 0);
    assert_eq!(replayed.last_error, None);
    store.dead_letter(&replayed, "again").await.unwrap();

    assert_eq!(store.replay_all().await.unwrap(), 2);
    assert!(store.dead_letters().await.unwrap().is_empty());
    assert_eq!(store.replay_all().await.unwrap(), 0);
    // Replayed in dead-letter order, so the key's jobs keep their order.
    let first = claim_one(store, "w1").await.expect("replayed");
    assert_eq!(first.payload, json!({"later": true}));
    store.complete(&first).await.unwrap();
    let second = claim_one(store, "w1").await.expect("replayed");
    assert_eq!(second.payload, payload);
    store.complete(&second).await.unwrap();
    assert_eq!(store.inbox_stats().await.unwrap(), InboxStats::default());
}

async fn inbox_stats(fx: &Fixture) {
    let store = &fx.store;
    assert_eq!(store.inbox_stats().await.unwrap(), InboxStats::default());
    for i in 0..3 {
        store
            .enqueue(&NewJob::new(format!("referral:{i}"), "pc_event", json!(i)))
            .await
            .unwrap();
    }
    store
        .enqueue(
            &NewJob::new("referral:later", "pc_event", json!(null))
                .not_before(now_ms() + Duration::from_secs(600)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let leased = claim_one(store, "w1").await.expect("claimed");
    let dead = claim_one(store, "w1").await.expect("claimed");
    store.dead_letter(&dead, "boom").await.unwrap();

    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.leased, 1);
    assert_eq!(stats.scheduled, 1);
    assert_eq!(stats.dead_letters, 1);
    let lag = stats.lag.expect("a pending job");
    assert!(
        lag >= Duration::from_millis(30) && lag < Duration::from_secs(60),
        "{lag:?}"
    );

    store.complete(&leased).await.unwrap();
    let last = claim_one(store, "w1").await.expect("claimed");
    store.complete(&last).await.unwrap();
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.scheduled), (0, 0, 1));
    assert_eq!(stats.lag, None);
}

// ---- audit -----------------------------------------------------------------------------

fn audit(referral: &str, outcome: &str, n: u32) -> NewAudit {
    NewAudit {
        referral_id: Some(referral.to_string()),
        crm_entity: Some("opportunity".into()),
        crm_id: Some(format!("crm-{referral}")),
        flow: "referral_to_opportunity".into(),
        outcome: outcome.into(),
        message: format!("step {n}"),
        details: json!({"n": n, "fields": ["name", "estimatedvalue"]}),
    }
}

async fn audit_trail_newest_first(fx: &Fixture) {
    let store = &fx.store;
    assert!(store.audit_trail("r-1", 10).await.unwrap().is_empty());
    for n in 0..5 {
        store.audit(&audit("r-1", "updated", n)).await.unwrap();
        store.audit(&audit("r-2", "created", n)).await.unwrap();
    }
    store
        .audit(&NewAudit {
            referral_id: None,
            crm_entity: None,
            crm_id: None,
            flow: "opportunity_to_referral".into(),
            outcome: "ignored".into(),
            message: "no referral id".into(),
            details: json!({}),
        })
        .await
        .unwrap();

    let trail = store.audit_trail("r-1", 3).await.unwrap();
    assert_eq!(
        trail.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["step 4", "step 3", "step 2"]
    );
    let newest = &trail[0];
    assert_eq!(newest.referral_id.as_deref(), Some("r-1"));
    assert_eq!(newest.crm_entity.as_deref(), Some("opportunity"));
    assert_eq!(newest.crm_id.as_deref(), Some("crm-r-1"));
    assert_eq!(newest.flow, "referral_to_opportunity");
    assert_eq!(newest.outcome, "updated");
    assert_eq!(
        newest.details,
        json!({"n": 4, "fields": ["name", "estimatedvalue"]})
    );
    assert_recent(newest.at);
    assert!(
        trail
            .windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    assert_eq!(store.audit_trail("r-1", 100).await.unwrap().len(), 5);
    assert!(store.audit_trail("r-1", 0).await.unwrap().is_empty());
    assert!(store.audit_trail("r-3", 10).await.unwrap().is_empty());
}

async fn recent_failures(fx: &Fixture) {
    let store = &fx.store;
    assert!(store.recent_failures(10).await.unwrap().is_empty());
    store.audit(&audit("r-1", "created", 0)).await.unwrap();
    store.audit(&audit("r-1", "failed", 1)).await.unwrap();
    store.audit(&audit("r-2", "conflict", 2)).await.unwrap();
    store.audit(&audit("r-3", "failed", 3)).await.unwrap();
    store.audit(&audit("r-4", "failed", 4)).await.unwrap();
    let failures = store.recent_failures(2).await.unwrap();
    assert_eq!(
        failures
            .iter()
            .map(|e| (
                e.referral_id.as_deref().unwrap_or_default(),
                e.message.as_str()
            ))
            .collect::<Vec<_>>(),
        [("r-4", "step 4"), ("r-3", "step 3")]
    );
    assert_eq!(store.recent_failures(10).await.unwrap().len(), 3);
}

// ---- concurrency and durability ---------------------------------------------------------

async fn concurrent_claimers_keep_keys_exclusive(fx: &Fixture) {
    const JOBS: usize = 200;
    const KEYS: usize = 50;
    const WORKERS: usize = 4;
    let mut enqueued = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let id = fx
            .store
            .enqueue(&NewJob::new(
                format!("referral:{}", i % KEYS),
                "pc_event",
                json!({"i": i}),
            ))
            .await
            .unwrap();
        enqueued.push(id);
    }

    // Keys currently held by some worker, and every completion in order.
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done: Arc<Mutex<Vec<(JobId, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let store = fx.open_again().await;
        let held = held.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "{name}: jobs left undone");
                if done.lock().unwrap().len() == JOBS {
                    break;
                }
                let jobs = store
                    .claim(&name, Duration::from_secs(60), 4)
                    .await
                    .expect("claim");
                if jobs.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                for job in &jobs {
                    assert!(
                        held.lock().unwrap().insert(job.key.clone()),
                        "{name}: key {} claimed while another worker holds it",
                        job.key
                    );
                }
                tokio::task::yield_now().await;
                for job in jobs {
                    // Released from the tracker before the store releases the key, so a
                    // legitimate next claim never trips the check.
                    held.lock().unwrap().remove(&job.key);
                    done.lock().unwrap().push((job.id, job.key.clone()));
                    store.complete(&job).await.expect("complete own job");
                }
            }
            store.close().await;
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }

    let done = done.lock().unwrap().clone();
    let mut times: HashMap<JobId, usize> = HashMap::new();
    for (id, _) in &done {
        *times.entry(*id).or_default() += 1;
    }
    assert_eq!(times.len(), JOBS, "every job completed");
    assert!(times.values().all(|&n| n == 1), "no job completed twice");
    // Per key, jobs completed in the order they were enqueued.
    let mut last: HashMap<&str, JobId> = HashMap::new();
    for (id, key) in &done {
        if let Some(prev) = last.insert(key, *id) {
            assert!(prev < *id, "{key}: {id} completed after {prev}");
        }
    }
    assert_eq!(fx.store.inbox_stats().await.unwrap(), InboxStats::default());
    assert!(enqueued.iter().all(|id| times.contains_key(id)));
}

async fn reopening_keeps_data_and_migrates_idempotently(fx: &Fixture) {
    let store = fx.open_again().await;
    let id = store
        .enqueue(&NewJob::new(
            "referral:durable",
            "pc_event",
            json!({"keep": true}),
        ))
        .await
        .unwrap();
    store.set_cursor("reconcile", "w1").await.unwrap();
    store
        .save_link(&Link::new("r-durable", "opportunity", "synced"))
        .await
        .unwrap();
    store.close().await;
    drop(store);

    // Reopened twice: migrations already applied are skipped, not re-run.
    let reopened = fx.open_again().await;
    let again = fx.open_again().await;
    again.close().await;
    let job = claim_one(&reopened, "w1").await.expect("job survived");
    assert_eq!(job.id, id);
    assert_eq!(job.payload, json!({"keep": true}));
    assert_eq!(
        reopened.cursor("reconcile").await.unwrap().as_deref(),
        Some("w1")
    );
    assert!(reopened.link("r-durable").await.unwrap().is_some());
    reopened.complete(&job).await.unwrap();
    reopened.close().await;
}

fn calls(api: &str, calls: u64, daily_limit: Option<u64>) -> ApiCalls {
    ApiCalls {
        api: api.to_owned(),
        calls,
        daily_limit,
    }
}

async fn api_usage_adds_up_per_upstream_and_day(fx: &Fixture) {
    let store = &fx.store;
    assert!(store.api_usage("2026-03-01").await.unwrap().is_empty());
    // Nothing to add is not a write.
    store.add_api_usage("2026-03-01", &[]).await.unwrap();
    store
        .add_api_usage(
            "2026-03-01",
            &[
                calls("partner_center", 40, Some(1000)),
                calls("dataverse", 7, None),
                calls("partner_center_webhooks", 0, None),
            ],
        )
        .await
        .unwrap();
    store
        .add_api_usage(
            "2026-03-01",
            &[
                calls("partner_center", 2, Some(1200)),
                calls("dataverse", 3, None),
            ],
        )
        .await
        .unwrap();
    // Another day is another row.
    store
        .add_api_usage("2026-03-02", &[calls("partner_center", 5, Some(1200))])
        .await
        .unwrap();

    let day = store.api_usage("2026-03-01").await.unwrap();
    let summary: Vec<(&str, u64, Option<u64>)> = day
        .iter()
        .map(|u| (u.api.as_str(), u.calls, u.daily_limit))
        .collect();
    assert_eq!(
        summary,
        [
            ("dataverse", 10, None),
            ("partner_center", 42, Some(1200)),
            ("partner_center_webhooks", 0, None),
        ],
        "summed per upstream, ordered by name, the last limit kept"
    );
    assert!(day.iter().all(|u| u.day == "2026-03-01"));
    assert_recent(day[0].updated_at);
    let next = store.api_usage("2026-03-02").await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].calls, next[0].daily_limit), (5, Some(1200)));

    // Today's key is the UTC calendar day, as `cosell status` looks it up.
    let today = utc_day(SystemTime::now());
    assert_eq!(today.len(), 10);
    store
        .add_api_usage(
            &today,
            &[calls("salesforce", u64::from(u32::MAX) + 1, None)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.api_usage(&today).await.unwrap()[0].calls,
        u64::from(u32::MAX) + 1,
        "counts are 64-bit"
    );
}

async fn api_usage_from_concurrent_workers_adds_up(fx: &Fixture) {
    // Several engine workers share one database; each flushes its own counts.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = fx.open_again().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                store
                    .add_api_usage(
                        "2026-04-01",
                        &[
                            calls("partner_center", 3, Some(500)),
                            calls("salesforce", 1, None),
                        ],
                    )
                    .await
                    .unwrap();
            }
            store.close().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let usage = fx.store.api_usage("2026-04-01").await.unwrap();
    let totals: Vec<(&str, u64)> = usage.iter().map(|u| (u.api.as_str(), u.calls)).collect();
    assert_eq!(totals, [("partner_center", 120), ("salesforce", 40)]);
}

/// SQLite: one engine per file, and what a dead engine held is claimable at once.
/// PostgreSQL: shared by live engines, so no lock and every lease stands until it expires.
async fn single_engine_lock_releases_dead_leases(fx: &Fixture) {
    let store = &fx.store;
    for key in ["referral:a", "referral:b"] {
        store
            .enqueue(&NewJob::new(key, "pc_event", json!({})))
            .await
            .unwrap();
    }
    // An engine claims both jobs, then dies without a verdict.
    let crashed = store
        .claim("dead", Duration::from_secs(600), 10)
        .await
        .unwrap();
    assert_eq!(crashed.len(), 2);

    let next = fx.open_again().await;
    match next.lock_single_engine().await.unwrap() {
        Some((lock, released)) => {
            assert_eq!(store.kind(), "sqlite");
            assert_eq!(released, 2, "the dead engine's leases");
            let again = next
                .claim("next", Duration::from_secs(600), 10)
                .await
                .unwrap();
            assert_eq!(again.len(), 2, "claimable without waiting for the lease");
            assert!(
                again.iter().all(|j| j.claims == 2),
                "the interrupted claim is remembered: {again:?}"
            );
            for job in &crashed {
                lease_lost(next.complete(job).await);
            }
            // A second engine on the file is refused while the first runs...
            let error = store
                .lock_single_engine()
                .await
                .expect_err("a second engine");
            assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
            assert!(
                error.to_string().contains("another cosell engine"),
                "{error}"
            );
            // ...and takes over once it has stopped.
            drop(lock);
            let (_lock, released) = store
                .lock_single_engine()
                .await
                .unwrap()
                .expect("locked after the first engine stopped");
            assert_eq!(released, 2);
        }
        None => {
            assert_eq!(store.kind(), "postgres");
            assert!(
                next.claim("next", Duration::from_secs(600), 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "a lease may be a live worker's: it stands"
            );
        }
    }
    next.close().await;
}

// ---- pipelines and instances ------------------------------------------------------------

/// Two pipelines in one database see nothing of each other: links (even of the same referral
/// and CRM record), cursors, jobs and claims, dead letters, audit entries and API usage.
async fn pipelines_are_isolated(fx: &Fixture) {
    let a = fx.store.pipeline("contoso-dynamics").unwrap();
    let b = fx.store.pipeline("contoso_salesforce.eu").unwrap();
    assert_eq!(a.pipeline_name(), "contoso-dynamics");
    assert_eq!(fx.store.pipeline_name(), DEFAULT_PIPELINE);

    let mut link = Link::new("R1", "opportunity", "synced");
    link.crm_id = Some("crm-1".into());
    a.save_link(&link).await.unwrap();
    link.state = "closed".into();
    b.save_link(&link)
        .await
        .expect("the same referral and CRM record in another pipeline");
    assert_eq!(a.link("R1").await.unwrap().unwrap().state, "synced");
    assert_eq!(b.link("R1").await.unwrap().unwrap().state, "closed");
    assert!(fx.store.link("R1").await.unwrap().is_none());
    assert_eq!(
        a.link_by_crm("opportunity", "crm-1")
            .await
            .unwrap()
            .unwrap()
            .state,
        "synced"
    );
    assert_eq!(a.links_by_state().await.unwrap().get("synced"), Some(&1));
    assert_eq!(a.links_by_state().await.unwrap().get("closed"), None);
    assert!(fx.store.links_by_state().await.unwrap().is_empty());

    a.set_cursor("pc_reconcile", "2026-01-01T00:00:00Z")
        .await
        .unwrap();
    b.set_cursor("pc_reconcile", "2026-02-02T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(
        a.cursor("pc_reconcile").await.unwrap().as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    assert_eq!(
        b.cursor("pc_reconcile").await.unwrap().as_deref(),
        Some("2026-02-02T00:00:00Z")
    );
    assert_eq!(fx.store.cursor("pc_reconcile").await.unwrap(), None);

    // The same key in both: each pipeline's job is claimable by its own workers only, and
    // holding one does not block the other.
    let job_a = a
        .enqueue(&NewJob::new("referral:R1", "pc_event", json!({"p": "a"})))
        .await
        .unwrap();
    let job_b = b
        .enqueue(&NewJob::new("referral:R1", "pc_event", json!({"p": "a"})))
        .await
        .unwrap();
    assert_ne!(job_a, job_b, "dedupe does not reach across pipelines");
    let claimed_a = a.claim("w", Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(
        claimed_a.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job_a]
    );
    let claimed_b = b.claim("w", Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(
        claimed_b.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job_b]
    );
    assert!(
        fx.store
            .claim("w", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.inbox_stats().await.unwrap().leased, 1);
    assert_eq!(fx.store.inbox_stats().await.unwrap().leased, 0);

    a.dead_letter(&claimed_a[0], "permanent").await.unwrap();
    assert_eq!(a.dead_letters().await.unwrap().len(), 1);
    assert!(b.dead_letters().await.unwrap().is_empty());
    assert_eq!(
        b.replay_all().await.unwrap(),
        0,
        "b cannot replay a's letters"
    );
    assert_eq!(a.inbox_stats().await.unwrap().dead_letters, 1);
    assert_eq!(b.inbox_stats().await.unwrap().dead_letters, 0);
    let letter = a.dead_letters().await.unwrap()[0].id;
    assert!(!b.replay(letter).await.unwrap(), "nor one by its id");
    assert!(a.replay(letter).await.unwrap());
    assert_eq!(a.inbox_stats().await.unwrap().pending, 1);
    assert_eq!(b.inbox_stats().await.unwrap().pending, 0);

    a.audit(&audit("R1", "failed", 1)).await.unwrap();
    assert_eq!(a.audit_trail("R1", 10).await.unwrap().len(), 1);
    assert!(b.audit_trail("R1", 10).await.unwrap().is_empty());
    assert_eq!(a.recent_failures(10).await.unwrap().len(), 1);
    assert!(b.recent_failures(10).await.unwrap().is_empty());

    let day = utc_day(SystemTime::now());
    a.add_api_usage(&day, &[calls("dataverse", 7, None)])
        .await
        .unwrap();
    b.add_api_usage(&day, &[calls("dataverse", 2, None)])
        .await
        .unwrap();
    assert_eq!(a.api_usage(&day).await.unwrap()[0].calls, 7);
    assert_eq!(b.api_usage(&day).await.unwrap()[0].calls, 2);
    assert!(fx.store.api_usage(&day).await.unwrap().is_empty());

    for bad in ["", "two words", "drop;table", "é", &"x".repeat(64)] {
        let error = fx.store.pipeline(bad).expect_err(bad);
        assert!(
            matches!(error, StoreError::InvalidPipeline { .. }),
            "{error}"
        );
    }
}

/// A pipeline records the CRM it syncs with; a config for another CRM is refused on it.
async fn pipeline_belongs_to_one_crm(fx: &Fixture) {
    let store = &fx.store;
    store.claim_pipeline("dynamics365").await.unwrap();
    store.claim_pipeline("dynamics365").await.expect("again");
    let error = fx
        .open_again()
        .await
        .claim_pipeline("salesforce")
        .await
        .expect_err("another CRM on the default pipeline");
    assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
    assert!(error.to_string().contains("--pipeline"), "{error}");
    store
        .pipeline("fabrikam")
        .unwrap()
        .claim_pipeline("salesforce")
        .await
        .expect("a pipeline of its own");
}

/// One live process per instance name; a restarted instance takes back its own leases at
/// once, and only its own. (SQLite: one engine per file, whatever its name.)
async fn instance_names_are_exclusive(fx: &Fixture) {
    let store = &fx.store;
    for key in ["referral:a", "referral:b"] {
        store
            .enqueue(&NewJob::new(key, "pc_event", json!({})))
            .await
            .unwrap();
    }
    let (first, released) = store.start_instance("pod-a").await.unwrap();
    assert_eq!(released, 0);
    let a = store
        .claim("pod-a", Duration::from_secs(600), 1)
        .await
        .unwrap();
    let b = store
        .claim("pod-b", Duration::from_secs(600), 1)
        .await
        .unwrap();
    assert_eq!((a.len(), b.len()), (1, 1));

    let other = fx.open_again().await;
    let error = other
        .start_instance("pod-a")
        .await
        .expect_err("a second live pod-a");
    assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
    drop(first);
    // The server ends the session of a dropped connection as soon as it sees the socket
    // close: wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_second, released) = loop {
        match other.start_instance("pod-a").await {
            Ok(taken) => break taken,
            Err(error) if Instant::now() < deadline => {
                assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("pod-a never released: {error}"),
        }
    };
    let again = other
        .claim("pod-a2", Duration::from_secs(600), 10)
        .await
        .unwrap();
    if store.kind() == "postgres" {
        assert_eq!(released, 1, "pod-a's own lease only; pod-b may be alive");
        assert_eq!(
            again.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![a[0].id]
        );
        let (_b, _) = other.start_instance("pod-b").await.expect("another name");
    } else {
        assert_eq!(
            released, 2,
            "one engine per file: every lease was the dead one's"
        );
        assert_eq!(again.len(), 2);
    }
    other.close().await;
}

async fn poller_runs_are_recorded(fx: &Fixture) {
    let store = &fx.store;
    let mut leadership = store.leadership();
    assert!(leadership.check().await, "alone, this instance leads");
    let first = store.poller_started("reconcile", "pod-a").await.unwrap();
    let second = store.poller_started("crm_poll", "pod-a").await.unwrap();
    store.poller_finished(first, "ok").await.unwrap();
    let other = store.pipeline("other").unwrap();
    other.poller_started("crm_poll", "pod-z").await.unwrap();
    let runs = store.poller_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].id, first);
    assert_eq!(runs[0].outcome.as_deref(), Some("ok"));
    assert!(runs[0].finished_at.is_some_and(|f| f >= runs[0].started_at));
    assert_eq!(runs[1].id, second);
    assert_eq!(runs[1].poller, "crm_poll");
    assert_eq!(runs[1].finished_at, None);
    assert_eq!(other.poller_runs(10).await.unwrap()[0].instance, "pod-z");
}

/// The store as cosell 0.x left it at schema 4 (its migrations, checksums and all), with data:
/// opening it migrates to schema 5 and every row is the default pipeline's.
async fn upgrade_from_schema_4_keeps_rows_in_the_default_pipeline(fx: &Fixture) {
    let postgres = fx.store.kind() == "postgres";
    fx.store.close().await;
    // A fresh database of the same kind, brought to schema 4 by the old migrations.
    let (url, _dir, schema) = if postgres {
        let schema = unique_schema();
        postgres_admin(&format!("CREATE SCHEMA {schema}")).await;
        let url = format!(
            "{}?options=-c%20search_path%3D{schema}",
            postgres_base_url()
        );
        (url, None, Some(schema))
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db", dir.path().display());
        (url, Some(dir), None)
    };
    let old: [(i64, &str, &str, &str); 4] = [
        (
            1,
            "initial",
            include_str!("../src/store/migrations/sqlite/0001_initial.sql"),
            include_str!("../src/store/migrations/postgres/0001_initial.sql"),
        ),
        (
            2,
            "link snapshot",
            include_str!("../src/store/migrations/sqlite/0002_link_snapshot.sql"),
            include_str!("../src/store/migrations/postgres/0002_link_snapshot.sql"),
        ),
        (
            3,
            "api usage",
            include_str!("../src/store/migrations/sqlite/0003_api_usage.sql"),
            include_str!("../src/store/migrations/postgres/0003_api_usage.sql"),
        ),
        (
            4,
            "audit by record",
            include_str!("../src/store/migrations/sqlite/0004_audit_by_record.sql"),
            include_str!("../src/store/migrations/postgres/0004_audit_by_record.sql"),
        ),
    ];
    let mut migrator = sqlx::migrate::Migrator::with_migrations(
        old.iter()
            .map(|(version, description, sqlite, pg)| {
                sqlx::migrate::Migration::new(
                    *version,
                    (*description).into(),
                    sqlx::migrate::MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(if postgres { *pg } else { *sqlite }),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name("cosell_migrations");
    let statements = [
        "INSERT INTO links (referral_id, entity, crm_id, state, updated_at) \
         VALUES ('R1', 'opportunity', 'crm-1', 'synced', 1)",
        "INSERT INTO cursors (name, value, updated_at) VALUES ('pc_reconcile', 'then', 1)",
        "INSERT INTO jobs (job_key, kind, payload, enqueued_at, not_before) \
         VALUES ('referral:R1', 'pc_event', '{}', 1, 1)",
        "INSERT INTO audit_log (at, referral_id, flow, outcome, message, details) \
         VALUES (1, 'R1', 'f', 'failed', 'm', '{}')",
        "INSERT INTO api_usage (api, day, calls, updated_at) VALUES ('dataverse', '2026-01-01', 5, 1)",
    ];
    if postgres {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        migrator.run(&pool).await.expect("schema 4");
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    } else {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        migrator.run(&pool).await.expect("schema 4");
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }

    let store = Store::open(&url).await.expect("migrates to schema 5");
    assert_eq!(
        store.link("R1").await.unwrap().unwrap().crm_id.as_deref(),
        Some("crm-1")
    );
    assert_eq!(
        store.cursor("pc_reconcile").await.unwrap().as_deref(),
        Some("then")
    );
    assert_eq!(store.inbox_stats().await.unwrap().pending, 1);
    assert_eq!(store.recent_failures(5).await.unwrap().len(), 1);
    assert_eq!(store.api_usage("2026-01-01").await.unwrap()[0].calls, 5);
    let other = store.pipeline("other").unwrap();
    assert!(other.link("R1").await.unwrap().is_none());
    assert_eq!(other.inbox_stats().await.unwrap().pending, 0);
    // New rows after the upgrade coexist with the old ones' keys in another pipeline.
    let mut link = Link::new("R1", "opportunity", "synced");
    link.crm_id = Some("crm-1".into());
    other.save_link(&link).await.unwrap();
    store.close().await;
    if let Some(schema) = schema {
        postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

/// Two PostgreSQL stores on one database stand for two instances.
async fn two_instances() -> (Store, Store, String) {
    let schema = unique_schema();
    let fixture = postgres_fixture(&schema).await;
    let second = fixture.open_again().await;
    (fixture.store, second, schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poller_leadership_is_exclusive_and_moves_when_the_leader_dies() {
    let (one, two, schema) = two_instances().await;
    let mut first = one.leadership();
    let mut second = two.leadership();
    assert!(first.check().await, "the first to ask leads");
    assert!(!second.check().await, "one leader at a time");
    assert!(first.check().await, "and it keeps leading");
    assert!(!second.check().await);
    // Another pipeline has a leadership of its own.
    assert!(two.pipeline("other").unwrap().leadership().check().await);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.check().await {
        assert!(Instant::now() < deadline, "the leadership never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.is_leading());
    let mut third = one.leadership();
    assert!(!third.check().await, "the new leader keeps it");
    one.close().await;
    two.close().await;
    postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_name_locks_serialize_instances() {
    let (one, two, schema) = two_instances().await;
    let names = vec!["account{\"name\":\"contoso\"}".to_string()];
    let held = one.lock_names("customer", &names).await.unwrap();
    let waiting = {
        let two = two.clone();
        let names = names.clone();
        tokio::spawn(async move { two.lock_names("customer", &names).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second instance waits for the first"
    );
    // Other names, and the same name in another pipeline, do not wait.
    let free = two
        .lock_names("customer", &["account{\"name\":\"fabrikam\"}".to_string()])
        .await
        .unwrap();
    free.release().await;
    let elsewhere = two
        .pipeline("other")
        .unwrap()
        .lock_names("customer", &names)
        .await
        .unwrap();
    elsewhere.release().await;
    held.release().await;
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("released to the second instance")
        .unwrap()
        .unwrap();
    // A guard dropped without release (a failed or cancelled job) frees the names too.
    drop(second);
    let again = tokio::time::timeout(Duration::from_secs(10), one.lock_names("customer", &names))
        .await
        .expect("a dropped guard releases its names")
        .unwrap();
    again.release().await;
    one.close().await;
    two.close().await;
    postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Advisory locks are database-wide: two stores in different schemas of one database (two
/// deployments, or two test runs) with the same pipeline and instance names must not contend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schemas_do_not_share_locks() {
    let (first, first_schema) = {
        let schema = unique_schema();
        (postgres_fixture(&schema).await.store, schema)
    };
    let (second, second_schema) = {
        let schema = unique_schema();
        (postgres_fixture(&schema).await.store, schema)
    };
    let (_a, _) = first.start_instance("node-1").await.unwrap();
    let (_b, _) = second
        .start_instance("node-1")
        .await
        .expect("the same instance name in another schema");
    assert!(first.leadership().check().await);
    assert!(
        second.leadership().check().await,
        "each schema's pipeline has its own poller leader"
    );
    let names = vec!["account{\"name\":\"contoso\"}".to_string()];
    let held = first.lock_names("customer", &names).await.unwrap();
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        second.lock_names("customer", &names),
    )
    .await
    .expect("a customer lock in another schema does not wait")
    .unwrap();
    other.release().await;
    held.release().await;
    first.close().await;
    second.close().await;
    postgres_admin(&format!("DROP SCHEMA {first_schema} CASCADE")).await;
    postgres_admin(&format!("DROP SCHEMA {second_schema} CASCADE")).await;
}

/// `sslmode=require` (a managed database that refuses plain connections) works: the store's
/// PostgreSQL client speaks TLS (rustls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    let schema = unique_schema();
    postgres_admin(&format!("CREATE SCHEMA {schema}")).await;
    let url = format!(
        "{}?sslmode=require&options=-c%20search_path%3D{schema}",
        postgres_base_url()
    );
    let store = Store::open(&url).await.expect("a TLS connection");
    store.set_cursor("tls", "yes").await.unwrap();
    assert_eq!(store.cursor("tls").await.unwrap().as_deref(), Some("yes"));
    store.close().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
    pool.close().await;
    postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_starting_at_once_migrate_once() {
    let schema = unique_schema();
    postgres_admin(&format!("CREATE SCHEMA {schema}")).await;
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        postgres_base_url()
    );
    let opening: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opening {
        stores.push(open.await.unwrap().expect("every instance opens"));
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM cosell_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, SCHEMA_VERSION, "each version applied once");
    pool.close().await;
    for store in stores {
        store.close().await;
    }
    postgres_admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

// ---- backend-specific ------------------------------------------------------------------

#[tokio::test]
async fn sqlite_memory_store_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.kind(), "sqlite");
    assert!(
        store.lock_single_engine().await.unwrap().is_none(),
        "no file to lock"
    );
    let id = store
        .enqueue(&NewJob::new("referral:m", "pc_event", json!({})))
        .await
        .unwrap();
    let job = claim_one(&store, "w").await.expect("claimed");
    assert_eq!(job.id, id);
    store.complete(&job).await.unwrap();
    store.audit(&audit("m", "created", 1)).await.unwrap();
    assert_eq!(store.audit_trail("m", 5).await.unwrap().len(), 1);
}

/// Several processes (here: pools) opening one new file at once all migrate it without
/// error — `cosell status` started while `cosell run` starts after an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_openers_migrate_once() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url).await })
            })
            .collect();
        for opener in openers {
            let store = opener
                .await
                .unwrap()
                .expect("every opener migrates or finds it done");
            store.close().await;
        }
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM cosell_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied, SCHEMA_VERSION, "each version applied once");
        pool.close().await;
    }
}

#[tokio::test]
async fn sqlite_creates_parent_directories_and_enables_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/state.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url).await.unwrap();
    assert!(path.is_file());
    store.close().await;
    // A second SQLite connection sees the persistent WAL journal mode.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = sqlx::query_scalar("SELECT max(version) FROM cosell_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 6, "every migration applied");
    assert_eq!(version, SCHEMA_VERSION);

    // A database a newer cosell migrated further is refused, not used with an unknown schema.
    sqlx::query(
        "INSERT INTO cosell_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    match Store::open(&url).await {
        Err(StoreError::Migration {
            url: shown,
            message,
        }) => {
            assert_eq!(shown, url);
            assert!(message.contains("999"), "{message}");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_urls_are_rejected() {
    for url in ["mysql://u:pw@h/db", "sqlite://", "file:///tmp/x.db"] {
        match Store::open(url).await {
            Err(StoreError::InvalidUrl { url: shown, .. }) => assert!(!shown.contains("pw")),
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }
}
