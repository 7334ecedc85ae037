//! The durable state store: links between referrals and CRM records, cursors, the inbox of
//! jobs with its retry schedule, dead letters, the audit log, and API calls per upstream and
//! day.
//!
//! One [`Store`] type over two backends, chosen by URL: SQLite (the default, one file, one
//! engine process) and PostgreSQL (several engine workers sharing one database). Both run the
//! same logical schema from [`migrations`](self#migrations) and pass the same conformance
//! suite (`tests/store_conformance.rs`); the SQL is shared except where the dialects differ
//! (claiming jobs, identity columns).
//!
//! # Jobs
//!
//! The inbox delivers jobs at least once, one job per key at a time, in the order they were
//! enqueued:
//! - [`Store::enqueue`] stores a job before anything acknowledges the work (a webhook is only
//!   answered after this returns).
//! - [`Store::claim`] leases due jobs to a worker: only the oldest job of each key, and only
//!   while no other job of that key holds a live lease. A lease that expires (the worker
//!   crashed or stalled) makes the job claimable again; that is the crash recovery, so effects
//!   must be idempotent. A SQLite store has one engine process, which releases the leases its
//!   crashed predecessor left at start instead of waiting for them ([`Store::lock_single_engine`]).
//! - The worker then calls exactly one of [`Store::complete`], [`Store::retry_later`] or
//!   [`Store::dead_letter`]; each first checks the job is still leased to that worker by that
//!   very claim, else [`StoreError::LeaseLost`] and nothing changes. Long jobs extend their
//!   lease with [`Store::renew_lease`].
//!
//! A job scheduled for a retry stays the oldest of its key, so later jobs of the same key wait
//! behind it: a referral's events are never applied out of order.
//!
//! # Time
//!
//! Timestamps are stored as unix milliseconds (UTC) in both backends and read back as
//! [`SystemTime`] truncated to the millisecond. "Now" is this process's clock: workers sharing a
//! PostgreSQL database need clocks kept in sync (NTP), with leases far longer than the skew.
//!
//! # Migrations
//!
//! Versioned with sqlx's migrator (table `cosell_migrations`), one SQL file per version and
//! backend under `src/store/migrations/{sqlite,postgres}/`. [`Store::open`] applies the
//! missing ones; applying is idempotent, and a database migrated by a newer cosell is refused
//! rather than used with a schema this build does not know.

mod url;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqlSafeStr, Transaction};

pub use url::redact_url;

/// Everything that can go wrong in the store. Messages never contain database passwords.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported backend or cannot be parsed.
    #[error("invalid state store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Applying the schema migrations failed.
    #[error("state store {url}: migrating the schema failed: {message}")]
    Migration {
        /// The URL with its password masked.
        url: String,
        /// The migrator's error.
        message: String,
    },
    /// The database refused or failed an operation (including connecting to it).
    #[error("state store: {message}")]
    Database {
        /// What was being done and the driver's error.
        message: String,
    },
    /// A write would break a uniqueness rule, e.g. linking a CRM record that is already
    /// linked to another referral.
    #[error("state store conflict: {message}")]
    Conflict {
        /// Which rule and which records.
        message: String,
    },
    /// A pipeline name that is empty, too long or has characters other than
    /// `a-z A-Z 0-9 . _ -`.
    #[error(
        "invalid pipeline name {name:?}: use 1–63 letters, digits, '.', '_' or '-' \
         (e.g. contoso-dynamics)"
    )]
    InvalidPipeline {
        /// The name given (first 80 characters).
        name: String,
    },
    /// The job is no longer leased by this worker under this claim: its lease expired and
    /// another claim took it over, or it was already completed. The caller must drop its
    /// result; whoever holds the job now will redo the work.
    #[error("job {job} is no longer leased by worker {worker}")]
    LeaseLost {
        /// The job.
        job: JobId,
        /// The worker that asked.
        worker: String,
    },
}

/// Wraps a driver error with the operation it failed in.
fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Database {
        message: format!("{operation}: {e}"),
    }
}

/// The id of a job in the inbox, unique for the life of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The link between one referral and the CRM record it is synced with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Partner Center referral id; the key.
    pub referral_id: String,
    /// CRM entity of the record (`opportunity`, `lead`, …).
    pub entity: String,
    /// CRM record id; `None` until the record exists. Unique per entity.
    pub crm_id: Option<String>,
    /// Sync state chosen by the engine (`synced`, `on_hold`, `failed`, `closed`, …).
    pub state: String,
    /// Hash of the projection last synced from/to Partner Center.
    pub pc_hash: Option<String>,
    /// Hash of the projection last synced from/to the CRM.
    pub crm_hash: Option<String>,
    /// Partner Center ETag last seen.
    pub pc_etag: Option<String>,
    /// CRM record version last seen (Dataverse `@odata.etag` / version number, Salesforce
    /// `SystemModstamp`).
    pub crm_version: Option<String>,
    /// When the Partner Center side was last synced.
    pub pc_synced_at: Option<SystemTime>,
    /// When the CRM side was last synced.
    pub crm_synced_at: Option<SystemTime>,
    /// When the link was last saved; set by [`Store::save_link`], ignored on input.
    pub updated_at: SystemTime,
    /// What both sides looked like at the last sync (the engine's business: the referral as
    /// last read or written and the projections last synced each way); `None` before the
    /// first sync.
    pub snapshot: Option<serde_json::Value>,
}

impl Link {
    /// A link with no CRM record, hashes or sync times yet.
    pub fn new(
        referral_id: impl Into<String>,
        entity: impl Into<String>,
        state: impl Into<String>,
    ) -> Link {
        Link {
            referral_id: referral_id.into(),
            entity: entity.into(),
            crm_id: None,
            state: state.into(),
            pc_hash: None,
            crm_hash: None,
            pc_etag: None,
            crm_version: None,
            pc_synced_at: None,
            crm_synced_at: None,
            updated_at: UNIX_EPOCH,
            snapshot: None,
        }
    }
}

/// A job to put in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// What the job is about, e.g. `referral:<id>` or `opportunity:<id>`. Jobs of one key run
    /// one at a time, in order.
    pub key: String,
    /// What to do, e.g. `pc_event`, `reconcile`, `crm_change`.
    pub kind: String,
    /// The job's data.
    pub payload: serde_json::Value,
    /// Not to be claimed before this time; `None` for now.
    pub not_before: Option<SystemTime>,
    /// When a job with the same key, kind and payload is already waiting (never claimed, or
    /// waiting for a retry), return its id instead of adding another: webhook re-deliveries
    /// then cost nothing. Best effort on PostgreSQL (two simultaneous identical enqueues may
    /// both insert, which at-least-once delivery tolerates); exact on SQLite.
    pub dedupe: bool,
}

impl NewJob {
    /// A job due now, deduplicated against identical waiting jobs.
    pub fn new(
        key: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
    ) -> NewJob {
        NewJob {
            key: key.into(),
            kind: kind.into(),
            payload,
            not_before: None,
            dedupe: true,
        }
    }

    /// The same job, not due before `at`.
    pub fn not_before(mut self, at: SystemTime) -> NewJob {
        self.not_before = Some(at);
        self
    }

    /// The same job, always inserted even if an identical one is waiting.
    pub fn without_dedupe(mut self) -> NewJob {
        self.dedupe = false;
        self
    }
}

/// A job leased to a worker by [`Store::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// See [`NewJob::key`].
    pub key: String,
    /// See [`NewJob::kind`].
    pub kind: String,
    /// See [`NewJob::payload`].
    pub payload: serde_json::Value,
    /// Failed attempts so far (each [`Store::retry_later`] adds one).
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the job was enqueued.
    pub enqueued_at: SystemTime,
    /// When the job became due.
    pub not_before: SystemTime,
    /// The worker holding the lease.
    pub lease_owner: String,
    /// When the lease expires unless renewed.
    pub lease_until: SystemTime,
    /// How many times the job has been claimed, this claim included. More claims than
    /// attempts means earlier claims ended without a verdict (a crash or an expired lease);
    /// it is also the lease's fencing token.
    pub claims: u32,
}

/// The exclusive right to run the engine on a SQLite state file, from
/// [`Store::lock_single_engine`]; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct EngineLock {
    _file: std::fs::File,
}

/// A job that ran out of retries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The dead letter's id, for [`Store::replay`].
    pub id: i64,
    /// The id the job had in the inbox.
    pub job_id: JobId,
    /// See [`NewJob::key`].
    pub key: String,
    /// See [`NewJob::kind`].
    pub kind: String,
    /// See [`NewJob::payload`].
    pub payload: serde_json::Value,
    /// Failed attempts, the final one included.
    pub attempts: u32,
    /// The final error.
    pub error: String,
    /// When the job was first enqueued.
    pub enqueued_at: SystemTime,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
}

/// The inbox at a glance, for `cosell status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboxStats {
    /// Due jobs waiting for a worker (including ones whose lease expired).
    pub pending: u64,
    /// Jobs leased to a worker right now.
    pub leased: u64,
    /// Jobs not yet due (retries waiting for their backoff, delayed jobs).
    pub scheduled: u64,
    /// Dead letters waiting for a replay.
    pub dead_letters: u64,
    /// How long the oldest pending job has been in the inbox; `None` when nothing is pending.
    pub lag: Option<Duration>,
}

/// An audit log entry to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    /// The referral concerned, if known.
    pub referral_id: Option<String>,
    /// The CRM entity concerned, if any.
    pub crm_entity: Option<String>,
    /// The CRM record concerned, if known.
    pub crm_id: Option<String>,
    /// The mapping flow that ran (which also tells the direction).
    pub flow: String,
    /// What happened: `created`, `updated`, `skipped`, `failed`, `conflict`, `ignored`, …
    /// [`Store::recent_failures`] lists the `failed` ones.
    pub outcome: String,
    /// One line for humans.
    pub message: String,
    /// Structured details (changed fields, error bodies, …).
    pub details: serde_json::Value,
}

/// A recorded audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing with insertion order.
    pub id: i64,
    /// When it was recorded.
    pub at: SystemTime,
    /// See [`NewAudit::referral_id`].
    pub referral_id: Option<String>,
    /// See [`NewAudit::crm_entity`].
    pub crm_entity: Option<String>,
    /// See [`NewAudit::crm_id`].
    pub crm_id: Option<String>,
    /// See [`NewAudit::flow`].
    pub flow: String,
    /// See [`NewAudit::outcome`].
    pub outcome: String,
    /// See [`NewAudit::message`].
    pub message: String,
    /// See [`NewAudit::details`].
    pub details: serde_json::Value,
}

/// Calls to add to one upstream's count of a day ([`Store::add_api_usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCalls {
    /// The upstream (`partner_center`, `dataverse`, …).
    pub api: String,
    /// Calls made since the last addition (may be 0, to record the limit).
    pub calls: u64,
    /// The configured daily allocation, if any; replaces the one stored.
    pub daily_limit: Option<u64>,
}

/// One upstream's calls on one UTC day ([`Store::api_usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUsage {
    /// The upstream.
    pub api: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Calls recorded that day, by every worker sharing the store.
    pub calls: u64,
    /// The daily allocation configured at the last addition, if any.
    pub daily_limit: Option<u64>,
    /// When calls were last added.
    pub updated_at: SystemTime,
}

/// The UTC day of `t` as `YYYY-MM-DD` (the key of [`Store::api_usage`]).
pub fn utc_day(t: SystemTime) -> String {
    let days = to_ms(t).div_euclid(86_400_000);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The outcome [`Store::recent_failures`] selects.
pub const FAILED: &str = "failed";

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the state store; cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The URL it was opened with, password masked.
    url: String,
    /// The database file, for a SQLite file store.
    sqlite_file: Option<std::path::PathBuf>,
    /// The pipeline every row this handle reads or writes belongs to ([`Store::pipeline`]).
    pipeline: Arc<str>,
    /// PostgreSQL connections that hold session advisory locks (customer find-or-create),
    /// apart from the main pool so a worker waiting for a lock never starves the others of
    /// connections for their ordinary queries.
    lock_pool: Option<PgPool>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("kind", &self.kind())
            .field("url", &self.url)
            .field("pipeline", &&*self.pipeline)
            .finish()
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store has. The body is compiled once
/// per backend, so shared SQL (written with `$N` parameters, which SQLite also accepts) is
/// typed against each driver without trait objects.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

// After `with_pool!`: macro_rules are visible only below their definition.
mod cluster;
pub use cluster::{InstanceLock, KeyLocks, Leadership, PollerRun};

/// Starting a transaction that will write.
trait WritePool {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl WritePool for SqlitePool {
    type Db = sqlx::Sqlite;
    // IMMEDIATE takes the write lock up front. A deferred transaction that reads first and
    // writes later fails with SQLITE_BUSY, without waiting, when another connection wrote
    // in between.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl WritePool for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

/// Column access shared by both row types.
trait Cols {
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
        }
    };
}
impl_cols!(SqliteRow);
impl_cols!(PgRow);

/// One schema version: the same logical change in each dialect.
struct Step {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every schema version, oldest first. Later issues append here; applied files must never
/// change (the migrator checks their checksums).
const STEPS: &[Step] = &[
    Step {
        version: 1,
        description: "initial",
        sqlite: include_str!("migrations/sqlite/0001_initial.sql"),
        postgres: include_str!("migrations/postgres/0001_initial.sql"),
    },
    Step {
        version: 2,
        description: "link snapshot",
        sqlite: include_str!("migrations/sqlite/0002_link_snapshot.sql"),
        postgres: include_str!("migrations/postgres/0002_link_snapshot.sql"),
    },
    Step {
        version: 3,
        description: "api usage",
        sqlite: include_str!("migrations/sqlite/0003_api_usage.sql"),
        postgres: include_str!("migrations/postgres/0003_api_usage.sql"),
    },
    Step {
        version: 4,
        description: "audit by record",
        sqlite: include_str!("migrations/sqlite/0004_audit_by_record.sql"),
        postgres: include_str!("migrations/postgres/0004_audit_by_record.sql"),
    },
    Step {
        version: 5,
        description: "pipelines",
        sqlite: include_str!("migrations/sqlite/0005_pipelines.sql"),
        postgres: include_str!("migrations/postgres/0005_pipelines.sql"),
    },
    Step {
        version: 6,
        description: "link engagement",
        sqlite: include_str!("migrations/sqlite/0006_link_engagement.sql"),
        postgres: include_str!("migrations/postgres/0006_link_engagement.sql"),
    },
];

/// The newest schema version this build knows (what [`Store::open`] migrates to).
pub const SCHEMA_VERSION: i64 = 6;

/// The pipeline of a store opened without [`Store::pipeline`] (and of every row written before
/// schema 5).
pub const DEFAULT_PIPELINE: &str = "default";

/// Connections a PostgreSQL store keeps apart for advisory locks: one per job that holds a
/// find-or-create lock at a time (at most the engine's concurrency).
const LOCK_CONNECTIONS: u32 = 32;

/// Where applied versions are recorded. Not sqlx's default `_sqlx_migrations`: a PostgreSQL
/// schema shared with another sqlx application would mix both histories.
const MIGRATIONS_TABLE: &str = "cosell_migrations";

fn migrator(postgres: bool) -> Migrator {
    let mut migrator = Migrator::with_migrations(
        STEPS
            .iter()
            .map(|step| {
                let sql = if postgres { step.postgres } else { step.sqlite };
                Migration::new(
                    step.version,
                    step.description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

const LINK_COLUMNS: &str = "referral_id, entity, crm_id, state, pc_hash, crm_hash, pc_etag, \
     crm_version, pc_synced_at, crm_synced_at, updated_at, snapshot";

const JOB_COLUMNS: &str = "id, job_key, kind, payload, attempts, last_error, enqueued_at, \
     not_before, lease_owner, lease_until, claims";

const AUDIT_COLUMNS: &str =
    "id, at, referral_id, crm_entity, crm_id, flow, outcome, message, details";

const DEAD_LETTER_COLUMNS: &str =
    "id, job_id, job_key, kind, payload, attempts, error, enqueued_at, failed_at";

/// A query string assembled from the column constants above: static text only, never data.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

// Claiming: due (not_before <= now), lease free or expired, the oldest job of its key, and no
// job of the key with a live lease. The last test is redundant while only heads get leased,
// but it keeps a key exclusive even if two jobs of a key were enqueued concurrently and
// committed out of id order (PostgreSQL), the later one becoming visible as head first.
const CLAIMABLE: &str = "j.pipeline = $5 AND j.not_before <= $1 \
     AND (j.lease_until IS NULL OR j.lease_until <= $1) \
     AND j.id = (SELECT min(o.id) FROM jobs o WHERE o.pipeline = $5 AND o.job_key = j.job_key) \
     AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.pipeline = $5 AND l.job_key = j.job_key \
         AND l.lease_until > $1)";

fn claim_sql(postgres: bool) -> String {
    if postgres {
        // SKIP LOCKED: concurrent claimers pass over rows another claim is taking instead of
        // waiting for it. A row whose lease a concurrent claim committed after this
        // statement's snapshot is re-checked against its new version (lease_until is live),
        // so it is not claimed twice.
        format!(
            "WITH picked AS (SELECT j.id FROM jobs j WHERE {CLAIMABLE} \
             ORDER BY j.id LIMIT $4 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE jobs SET lease_owner = $2, lease_until = $3, claims = claims + 1 \
             FROM picked WHERE jobs.id = picked.id RETURNING {}",
            prefixed(JOB_COLUMNS, "jobs.")
        )
    } else {
        // SQLite runs this inside BEGIN IMMEDIATE: one writer at a time, so no race at all.
        // NOT INDEXED: walk the jobs in id (rowid) order and stop at `limit` claimable ones.
        // Left to itself, SQLite picks `jobs_due`, collects every due job and sorts them: O(jobs)
        // per claim, 15 ms at 3 600 jobs and growing, which capped a 10 000-referral backfill
        // well below its bound (bench/run). The per-key checks still use `jobs_key`.
        format!(
            "UPDATE jobs SET lease_owner = $2, lease_until = $3, claims = claims + 1 \
             WHERE id IN (SELECT j.id FROM jobs j NOT INDEXED WHERE {CLAIMABLE} \
             ORDER BY j.id LIMIT $4) \
             RETURNING {JOB_COLUMNS}"
        )
    }
}

/// `a, b` → `p.a, p.b` (PostgreSQL's `UPDATE … FROM` needs qualified names).
fn prefixed(columns: &str, prefix: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{prefix}{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Unix milliseconds of `t` (negative before 1970, saturating far outside).
fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The instant `ms` unix milliseconds denote (the epoch if unrepresentable).
fn from_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn small(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json_text(value: &serde_json::Value) -> String {
    // serde_json orders object keys (no `preserve_order`), so equal values serialize equally,
    // which dedupe relies on.
    value.to_string()
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database {
        message: format!("{what} holds invalid JSON: {e}"),
    })
}

fn link_from_row(row: &impl Cols) -> Result<Link, sqlx::Error> {
    Ok(Link {
        referral_id: row.text("referral_id")?,
        entity: row.text("entity")?,
        crm_id: row.opt_text("crm_id")?,
        state: row.text("state")?,
        pc_hash: row.opt_text("pc_hash")?,
        crm_hash: row.opt_text("crm_hash")?,
        pc_etag: row.opt_text("pc_etag")?,
        crm_version: row.opt_text("crm_version")?,
        pc_synced_at: row.opt_int("pc_synced_at")?.map(from_ms),
        crm_synced_at: row.opt_int("crm_synced_at")?.map(from_ms),
        updated_at: from_ms(row.int("updated_at")?),
        snapshot: row
            .opt_text("snapshot")?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

fn job_from_row(row: &impl Cols) -> Result<Job, StoreError> {
    let read = || -> Result<Job, sqlx::Error> {
        let id = row.int("id")?;
        Ok(Job {
            id: JobId(id),
            key: row.text("job_key")?,
            kind: row.text("kind")?,
            payload: serde_json::Value::Null,
            attempts: small(row.int("attempts")?),
            last_error: row.opt_text("last_error")?,
            enqueued_at: from_ms(row.int("enqueued_at")?),
            not_before: from_ms(row.int("not_before")?),
            lease_owner: row.opt_text("lease_owner")?.unwrap_or_default(),
            lease_until: from_ms(row.opt_int("lease_until")?.unwrap_or(0)),
            claims: small(row.int("claims")?),
        })
    };
    let mut job = read().map_err(db("reading a job"))?;
    let payload = row.text("payload").map_err(db("reading a job"))?;
    job.payload = parse_json(&payload, &format!("job {}", job.id))?;
    Ok(job)
}

fn dead_letter_from_row(row: &impl Cols) -> Result<DeadLetter, StoreError> {
    let read = || -> Result<(DeadLetter, String), sqlx::Error> {
        Ok((
            DeadLetter {
                id: row.int("id")?,
                job_id: JobId(row.int("job_id")?),
                key: row.text("job_key")?,
                kind: row.text("kind")?,
                payload: serde_json::Value::Null,
                attempts: small(row.int("attempts")?),
                error: row.text("error")?,
                enqueued_at: from_ms(row.int("enqueued_at")?),
                failed_at: from_ms(row.int("failed_at")?),
            },
            row.text("payload")?,
        ))
    };
    let (mut letter, payload) = read().map_err(db("reading a dead letter"))?;
    letter.payload = parse_json(&payload, &format!("dead letter {}", letter.id))?;
    Ok(letter)
}

fn audit_from_row(row: &impl Cols) -> Result<AuditEntry, StoreError> {
    let read = || -> Result<(AuditEntry, String), sqlx::Error> {
        Ok((
            AuditEntry {
                id: row.int("id")?,
                at: from_ms(row.int("at")?),
                referral_id: row.opt_text("referral_id")?,
                crm_entity: row.opt_text("crm_entity")?,
                crm_id: row.opt_text("crm_id")?,
                flow: row.text("flow")?,
                outcome: row.text("outcome")?,
                message: row.text("message")?,
                details: serde_json::Value::Null,
            },
            row.text("details")?,
        ))
    };
    let (mut entry, details) = read().map_err(db("reading the audit log"))?;
    entry.details = parse_json(&details, &format!("audit entry {}", entry.id))?;
    Ok(entry)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Opens (creating if needed) the store at `url` and brings its schema up to date.
    ///
    /// - `sqlite://relative/path.db`, `sqlite:///absolute/path.db`: a file, created with its
    ///   parent directories; WAL journal, `synchronous=FULL` (a stored job survives power
    ///   loss), 30 s busy timeout.
    /// - `sqlite::memory:`: a private in-memory database, gone when the store is dropped.
    /// - `postgres://user[:password]@host[:port]/database[?…]`: any URL sqlx accepts; a
    ///   schema other than `public` is chosen with `?options=-c%20search_path%3D<schema>`.
    ///
    /// Errors name the URL with its password masked.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        let mut sqlite_file = None;
        let mut lock_pool = None;
        let backend = match url::parse(url)? {
            url::Target::SqliteMemory => {
                // Every connection to `:memory:` is a separate database, so exactly one
                // connection, kept forever.
                let options = SqliteConnectOptions::new()
                    .in_memory(true)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await
                    .map_err(|e| open_error(&shown, e))?;
                Backend::Sqlite(pool)
            }
            url::Target::SqliteFile(path) => {
                sqlite_file = Some(path.clone());
                Backend::Sqlite(open_sqlite_file(&path, &shown).await?)
            }
            url::Target::Postgres => {
                let options =
                    PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
                        url: shown.clone(),
                        reason: e.to_string(),
                    })?;
                // One direct connection first: the pool would keep retrying a refused or
                // rejected connection until its acquire timeout, so a wrong URL would take
                // half a minute to report.
                let probe = PgConnection::connect_with(&options)
                    .await
                    .map_err(|e| open_error(&shown, e))?;
                probe.close().await.map_err(|e| open_error(&shown, e))?;
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_lazy_with(options.clone());
                lock_pool = Some(
                    PgPoolOptions::new()
                        .max_connections(LOCK_CONNECTIONS)
                        .min_connections(0)
                        .acquire_timeout(Duration::from_secs(60))
                        .connect_lazy_with(options),
                );
                Backend::Postgres(pool)
            }
        };
        let store = Store {
            backend,
            url: shown,
            sqlite_file,
            pipeline: Arc::from(DEFAULT_PIPELINE),
            lock_pool,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let result = match &self.backend {
            Backend::Sqlite(pool) => {
                // Two processes opening one file at once (`cosell status` while `cosell run`
                // starts after an upgrade) can both see a version missing: sqlx does not lock
                // SQLite migrations. The second one's transaction then fails ("table already
                // exists") and rolls back whole; run again, it finds the version applied.
                let mut attempt = 0;
                loop {
                    match migrator(false).run(pool).await {
                        Err(_) if attempt < 4 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        result => break result,
                    }
                }
            }
            // sqlx holds a PostgreSQL advisory lock while it migrates.
            Backend::Postgres(pool) => migrator(true).run(pool).await,
        };
        result.map_err(|e| StoreError::Migration {
            url: self.url.clone(),
            message: e.to_string(),
        })
    }

    /// The same store scoped to pipeline `name`: every link, cursor, job, dead letter, audit
    /// entry and usage count it reads or writes is that pipeline's, invisible to the others.
    /// [`StoreError::InvalidPipeline`] unless `name` is 1–63 characters of `a-z A-Z 0-9 . _ -`.
    pub fn pipeline(&self, name: &str) -> Result<Store, StoreError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(StoreError::InvalidPipeline {
                name: name.chars().take(80).collect(),
            });
        }
        let mut scoped = self.clone();
        scoped.pipeline = Arc::from(name);
        Ok(scoped)
    }

    /// The pipeline this handle is scoped to ([`DEFAULT_PIPELINE`] unless [`Store::pipeline`]
    /// chose another).
    pub fn pipeline_name(&self) -> &str {
        &self.pipeline
    }

    /// Records that this pipeline syncs with `crm` (`dynamics365`, `salesforce`), or checks
    /// that it already does: [`StoreError::Conflict`] if the pipeline belongs to another
    /// CRM, so two configs that forgot to name their pipelines never share state.
    pub async fn claim_pipeline(&self, crm: &str) -> Result<(), StoreError> {
        let owner = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO pipelines (pipeline, crm, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (pipeline) DO NOTHING",
            )
            .bind(&*self.pipeline)
            .bind(crm)
            .bind(now_ms())
            .execute(pool)
            .await
            .map_err(db("registering the pipeline"))?;
            sqlx::query("SELECT crm FROM pipelines WHERE pipeline = $1")
                .bind(&*self.pipeline)
                .fetch_one(pool)
                .await
                .and_then(|row| row.text("crm"))
                .map_err(db("registering the pipeline"))?
        });
        if owner != crm {
            return Err(StoreError::Conflict {
                message: format!(
                    "pipeline '{}' in {} syncs with {owner}, not {crm}; give this config a \
                     pipeline of its own (--pipeline NAME or COSELL_PIPELINE)",
                    self.pipeline, self.url
                ),
            });
        }
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The URL the store was opened with, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection, waiting for the ones in use to be returned. Later calls on
    /// this store (or its clones) fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    // ---- links -------------------------------------------------------------------------

    /// The link of `referral_id`, if any.
    pub async fn link(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        let text = sql(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE pipeline = $2 AND referral_id = $1"
        ));
        with_pool!(self, |pool| {
            let row = sqlx::query(text)
                .bind(referral_id)
                .bind(&*self.pipeline)
                .fetch_optional(pool)
                .await
                .map_err(db("reading a link"))?;
            row.as_ref()
                .map(link_from_row)
                .transpose()
                .map_err(db("reading a link"))
        })
    }

    /// The link of the CRM record `crm_id` of `entity`, if any.
    pub async fn link_by_crm(
        &self,
        entity: &str,
        crm_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        let text = sql(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE pipeline = $3 AND entity = $1 AND crm_id = $2"
        ));
        with_pool!(self, |pool| {
            let row = sqlx::query(text)
                .bind(entity)
                .bind(crm_id)
                .bind(&*self.pipeline)
                .fetch_optional(pool)
                .await
                .map_err(db("reading a link"))?;
            row.as_ref()
                .map(link_from_row)
                .transpose()
                .map_err(db("reading a link"))
        })
    }

    /// Inserts or replaces the link of `link.referral_id`, stamping `updated_at` with now.
    ///
    /// [`StoreError::Conflict`] when `link.crm_id` is already linked to another referral:
    /// one CRM record never stands for two referrals.
    pub async fn save_link(&self, link: &Link) -> Result<(), StoreError> {
        let text = sql(format!(
            "INSERT INTO links ({LINK_COLUMNS}, pipeline, engagement_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (pipeline, referral_id) DO UPDATE SET entity = excluded.entity, \
             crm_id = excluded.crm_id, state = excluded.state, pc_hash = excluded.pc_hash, \
             crm_hash = excluded.crm_hash, pc_etag = excluded.pc_etag, \
             crm_version = excluded.crm_version, pc_synced_at = excluded.pc_synced_at, \
             crm_synced_at = excluded.crm_synced_at, updated_at = excluded.updated_at, \
             snapshot = excluded.snapshot, engagement_id = excluded.engagement_id"
        ));
        // The engagement of the referral as last read or written (see
        // `Store::linked_on_engagement`).
        let engagement = link
            .snapshot
            .as_ref()
            .and_then(|s| s.pointer("/referral/engagementId"))
            .and_then(serde_json::Value::as_str)
            .filter(|e| !e.is_empty());
        let result = with_pool!(self, |pool| {
            sqlx::query(text)
                .bind(&link.referral_id)
                .bind(&link.entity)
                .bind(&link.crm_id)
                .bind(&link.state)
                .bind(&link.pc_hash)
                .bind(&link.crm_hash)
                .bind(&link.pc_etag)
                .bind(&link.crm_version)
                .bind(link.pc_synced_at.map(to_ms))
                .bind(link.crm_synced_at.map(to_ms))
                .bind(now_ms())
                .bind(link.snapshot.as_ref().map(json_text))
                .bind(&*self.pipeline)
                .bind(engagement)
                .execute(pool)
                .await
                .map(|_| ())
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                let crm_id = link.crm_id.as_deref().unwrap_or_default();
                let holder = match self.link_by_crm(&link.entity, crm_id).await {
                    Ok(Some(other)) => format!("referral {}", other.referral_id),
                    _ => "another referral".to_string(),
                };
                Err(StoreError::Conflict {
                    message: format!(
                        "{} {crm_id} is already linked to {holder}; cannot link it to referral {}",
                        link.entity, link.referral_id
                    ),
                })
            }
            Err(e) => Err(db("saving a link")(e)),
        }
    }

    /// A link to a CRM record of another referral than `except` on engagement `engagement`:
    /// when a referral nobody linked yet has one, it is the other party's side of a
    /// co-sell we already sync (Microsoft's related referral), not a new referral.
    pub async fn linked_on_engagement(
        &self,
        engagement: &str,
        except: &str,
    ) -> Result<Option<Link>, StoreError> {
        let text = sql(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE pipeline = $3 AND engagement_id = $1 \
             AND referral_id <> $2 AND crm_id IS NOT NULL ORDER BY referral_id LIMIT 1"
        ));
        with_pool!(self, |pool| {
            let row = sqlx::query(text)
                .bind(engagement)
                .bind(except)
                .bind(&*self.pipeline)
                .fetch_optional(pool)
                .await
                .map_err(db("reading links"))?;
            row.as_ref()
                .map(link_from_row)
                .transpose()
                .map_err(db("reading links"))
        })
    }

    /// Up to `limit` links of co-sells we shared (our outgoing `Shared` referral, linked,
    /// not closed) that have not heard from Microsoft's side yet (no related referral
    /// synced), in referral id order after `after`: what the reconcile checks for a missed
    /// `related-referral-*` webhook, since Partner Center lists another organization's
    /// referral only when asked by engagement. A scan of the snapshot text; the reconcile
    /// runs every few minutes.
    pub async fn links_awaiting_related(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Link>, StoreError> {
        let text = sql(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE pipeline = $3 AND referral_id > $1 \
             AND engagement_id IS NOT NULL AND crm_id IS NOT NULL AND state <> 'closed' \
             AND snapshot LIKE '%\"direction\":\"Outgoing\"%' \
             AND snapshot LIKE '%\"type\":\"Shared\"%' \
             AND snapshot NOT LIKE '%\"related_projection\"%' \
             ORDER BY referral_id LIMIT $2"
        ));
        with_pool!(self, |pool| {
            let rows = sqlx::query(text)
                .bind(after)
                .bind(i64::from(limit))
                .bind(&*self.pipeline)
                .fetch_all(pool)
                .await
                .map_err(db("reading links"))?;
            rows.iter()
                .map(link_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("reading links"))
        })
    }

    /// Links whose snapshot mentions `needle` (a CRM child record's id): how a deletion
    /// that names only the child finds its parent. A scan, meant for rare events.
    pub async fn links_mentioning(&self, needle: &str) -> Result<Vec<Link>, StoreError> {
        let text = sql(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE pipeline = $2 AND snapshot LIKE $1"
        ));
        let pattern = format!(
            "%\"{}\"%",
            // LIKE wildcards and JSON quoting out: ids never contain them.
            needle.replace(['\\', '%', '_', '"'], "")
        );
        with_pool!(self, |pool| {
            let rows = sqlx::query(text)
                .bind(&pattern)
                .bind(&*self.pipeline)
                .fetch_all(pool)
                .await
                .map_err(db("reading links"))?;
            rows.iter()
                .map(link_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("reading links"))
        })
    }

    /// How many links are in each state.
    pub async fn links_by_state(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT state, count(*) AS n FROM links WHERE pipeline = $1 GROUP BY state",
            )
            .bind(&*self.pipeline)
            .fetch_all(pool)
            .await
            .map_err(db("counting links"))?;
            rows.iter()
                .map(|row| Ok((row.text("state")?, count(row.int("n")?))))
                .collect::<Result<BTreeMap<_, _>, sqlx::Error>>()
                .map_err(db("counting links"))
        })
    }

    // ---- cursors -----------------------------------------------------------------------

    /// The value of cursor `name`, if set.
    pub async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query("SELECT value FROM cursors WHERE pipeline = $2 AND name = $1")
                .bind(name)
                .bind(&*self.pipeline)
                .fetch_optional(pool)
                .await
                .map_err(db("reading a cursor"))?;
            row.as_ref()
                .map(|r| r.text("value"))
                .transpose()
                .map_err(db("reading a cursor"))
        })
    }

    /// Sets cursor `name` to `value`.
    pub async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO cursors (name, value, updated_at, pipeline) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (pipeline, name) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value)
            .bind(now_ms())
            .bind(&*self.pipeline)
            .execute(pool)
            .await
            .map_err(db("writing a cursor"))?;
        });
        Ok(())
    }

    // ---- inbox -------------------------------------------------------------------------

    /// Stores `job` durably and returns its id; see [`NewJob::dedupe`] for when an existing
    /// job's id is returned instead.
    pub async fn enqueue(&self, job: &NewJob) -> Result<JobId, StoreError> {
        let now = now_ms();
        let payload = json_text(&job.payload);
        let not_before = job.not_before.map_or(now, to_ms);
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await.map_err(db("enqueueing a job"))?;
            if job.dedupe {
                // lease_owner IS NULL: never claimed, or cleared by retry_later (or released by
                // lock_single_engine: its worker is gone, it will run again). A job a worker
                // has started may already have read the state this re-delivery reports.
                let existing = sqlx::query(
                    "SELECT id FROM jobs WHERE pipeline = $4 AND job_key = $1 AND kind = $2 \
                     AND payload = $3 AND lease_owner IS NULL ORDER BY id LIMIT 1",
                )
                .bind(&job.key)
                .bind(&job.kind)
                .bind(&payload)
                .bind(&*self.pipeline)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("enqueueing a job"))?;
                if let Some(row) = existing {
                    let id = row.int("id").map_err(db("enqueueing a job"))?;
                    tx.commit().await.map_err(db("enqueueing a job"))?;
                    return Ok(JobId(id));
                }
            }
            let row = sqlx::query(
                "INSERT INTO jobs (job_key, kind, payload, enqueued_at, not_before, pipeline) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&job.key)
            .bind(&job.kind)
            .bind(&payload)
            .bind(now)
            .bind(not_before)
            .bind(&*self.pipeline)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("enqueueing a job"))?;
            let id = row.int("id").map_err(db("enqueueing a job"))?;
            tx.commit().await.map_err(db("enqueueing a job"))?;
            Ok(JobId(id))
        })
    }

    /// Leases up to `limit` due jobs to `worker` for `lease`, oldest first: at most one per
    /// key, only the oldest job of its key, and none of a key whose job is leased. Jobs whose
    /// lease expired are claimable again. Safe with concurrent claimers on PostgreSQL.
    pub async fn claim(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let postgres = matches!(self.backend, Backend::Postgres(_));
        let text = sql(claim_sql(postgres));
        let mut jobs = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await.map_err(db("claiming jobs"))?;
            if postgres {
                // The claim must walk the jobs in id order and stop at `limit` claimable
                // ones. Without statistics (a fresh table filling up during a backfill) the
                // planner instead collects every due job, runs the per-key checks on each
                // and sorts: O(jobs) per claim, seconds at 10 000 jobs (seen in CI). No sort
                // leaves it the ordered primary-key scan, about a millisecond.
                sqlx::query("SET LOCAL enable_sort = off")
                    .execute(&mut *tx)
                    .await
                    .map_err(db("claiming jobs"))?;
            }
            let rows = sqlx::query(text)
                .bind(now)
                .bind(worker)
                .bind(now.saturating_add(duration_ms(lease)))
                .bind(self::limit(limit))
                .bind(&*self.pipeline)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("claiming jobs"))?;
            tx.commit().await.map_err(db("claiming jobs"))?;
            rows.iter()
                .map(job_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Makes this process the only engine working on a SQLite state file, and hands the
    /// jobs a previous engine process left leased back to the inbox.
    ///
    /// A SQLite store serves one engine process (see the module docs). This takes an
    /// exclusive OS lock on `<file>.lock`, held until the returned [`EngineLock`] is dropped
    /// or the process ends — however it ends: the OS releases it on SIGKILL too. While it is
    /// held, no other engine works on the file, so every lease found in it belongs to an
    /// engine that is gone, and waiting for it to expire (a minute by default) would only
    /// delay those referrals; they become claimable at once, like a retry due now (their
    /// `claims` count keeps the interrupted attempt on record). Returns the lock and how many
    /// leases were released; [`StoreError::Conflict`] if another process holds the lock.
    ///
    /// PostgreSQL stores are shared by several engine processes, and an in-memory SQLite
    /// store by whoever holds it: a lease there may well belong to a live worker, so nothing
    /// is locked or released (`Ok(None)`); expired leases remain the crash recovery.
    pub async fn lock_single_engine(&self) -> Result<Option<(EngineLock, u64)>, StoreError> {
        let Some(path) = &self.sqlite_file else {
            return Ok(None);
        };
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Database {
                message: format!("cannot open {}: {e}", lock_path.display()),
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Conflict {
                    message: format!(
                        "another cosell engine is using {} (it holds {}); a SQLite state store \
                         serves one engine process — stop the other one, or use PostgreSQL \
                         for several",
                        self.url,
                        lock_path.display()
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Database {
                    message: format!("cannot lock {}: {e}", lock_path.display()),
                });
            }
        }
        let released = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL",
            )
            .execute(pool)
            .await
            .map_err(db("releasing the leases of a stopped engine"))?
            .rows_affected()
        });
        Ok(Some((EngineLock { _file: file }, released)))
    }

    /// Extends `job`'s lease to `lease` from now and updates `job.lease_until`;
    /// [`StoreError::LeaseLost`] if the claim is no longer this worker's.
    pub async fn renew_lease(&self, job: &mut Job, lease: Duration) -> Result<(), StoreError> {
        let until = now_ms().saturating_add(duration_ms(lease));
        let changed = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET lease_until = $4 \
                 WHERE id = $1 AND lease_owner = $2 AND claims = $3",
            )
            .bind(job.id.0)
            .bind(&job.lease_owner)
            .bind(i64::from(job.claims))
            .bind(until)
            .execute(pool)
            .await
            .map_err(db("renewing a lease"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(lease_lost(job));
        }
        job.lease_until = from_ms(until);
        Ok(())
    }

    /// Removes a finished job from the inbox. An expired lease that nobody took over still
    /// counts as held: the work is done, so redoing it would be waste.
    pub async fn complete(&self, job: &Job) -> Result<(), StoreError> {
        let changed = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_owner = $2 AND claims = $3")
                .bind(job.id.0)
                .bind(&job.lease_owner)
                .bind(i64::from(job.claims))
                .execute(pool)
                .await
                .map_err(db("completing a job"))?
                .rows_affected()
        });
        if changed == 0 {
            return Err(lease_lost(job));
        }
        Ok(())
    }

    /// Records a failed attempt and schedules the job again at `at`, releasing the lease.
    /// Later jobs of the same key keep waiting behind it.
    pub async fn retry_later(
        &self,
        job: &Job,
        at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let changed = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET attempts = attempts + 1, last_error = $4, not_before = $5, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND claims = $3",
            )
            .bind(job.id.0)
            .bind(&job.lease_owner)
            .bind(i64::from(job.claims))
            .bind(error)
            .bind(to_ms(at))
            .execute(pool)
            .await
            .map_err(db("scheduling a retry"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(lease_lost(job));
        }
        Ok(())
    }

    /// Moves a job that failed for good (attempt `job.attempts + 1`) to the dead letters,
    /// with its payload and `error`; the next job of its key becomes claimable.
    pub async fn dead_letter(&self, job: &Job, error: &str) -> Result<(), StoreError> {
        let now = now_ms();
        with_pool!(self, |pool| {
            let mut tx = pool
                .begin_write()
                .await
                .map_err(db("dead-lettering a job"))?;
            let row = sqlx::query(
                "DELETE FROM jobs WHERE id = $1 AND lease_owner = $2 AND claims = $3 \
                 RETURNING job_key, kind, payload, attempts, enqueued_at",
            )
            .bind(job.id.0)
            .bind(&job.lease_owner)
            .bind(i64::from(job.claims))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("dead-lettering a job"))?;
            let Some(row) = row else {
                return Err(lease_lost(job));
            };
            let read = || -> Result<_, sqlx::Error> {
                Ok((
                    row.text("job_key")?,
                    row.text("kind")?,
                    row.text("payload")?,
                    row.int("attempts")?,
                    row.int("enqueued_at")?,
                ))
            };
            let (key, kind, payload, attempts, enqueued_at) =
                read().map_err(db("dead-lettering a job"))?;
            sqlx::query(
                "INSERT INTO dead_letters \
                 (job_id, job_key, kind, payload, attempts, error, enqueued_at, failed_at, \
                 pipeline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(job.id.0)
            .bind(key)
            .bind(kind)
            .bind(payload)
            .bind(attempts.saturating_add(1))
            .bind(error)
            .bind(enqueued_at)
            .bind(now)
            .bind(&*self.pipeline)
            .execute(&mut *tx)
            .await
            .map_err(db("dead-lettering a job"))?;
            tx.commit().await.map_err(db("dead-lettering a job"))?;
        });
        Ok(())
    }

    /// All dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let text = sql(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE pipeline = $1 ORDER BY id"
        ));
        with_pool!(self, |pool| {
            let rows = sqlx::query(text)
                .bind(&*self.pipeline)
                .fetch_all(pool)
                .await
                .map_err(db("reading dead letters"))?;
            rows.iter().map(dead_letter_from_row).collect()
        })
    }

    /// Puts dead letter `id` back in the inbox as a fresh job (no attempts, due now, behind
    /// any waiting job of its key); `false` if there is no such dead letter.
    pub async fn replay(&self, id: i64) -> Result<bool, StoreError> {
        self.replay_where(Some(id)).await.map(|n| n > 0)
    }

    /// Replays every dead letter, oldest first; returns how many.
    pub async fn replay_all(&self) -> Result<u64, StoreError> {
        self.replay_where(None).await
    }

    async fn replay_where(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let now = now_ms();
        // Delete first and re-insert what the delete returned: two concurrent replays of the
        // same letter cannot both get it, so it is re-queued once.
        let text = sql(match id {
            Some(_) => "DELETE FROM dead_letters WHERE pipeline = $1 AND id = $2 \
                 RETURNING id, job_key, kind, payload"
                .to_string(),
            None => "DELETE FROM dead_letters WHERE pipeline = $1 \
                 RETURNING id, job_key, kind, payload"
                .to_string(),
        });
        with_pool!(self, |pool| {
            let mut tx = pool
                .begin_write()
                .await
                .map_err(db("replaying dead letters"))?;
            let mut query = sqlx::query(text).bind(&*self.pipeline);
            if let Some(id) = id {
                query = query.bind(id);
            }
            let rows = query
                .fetch_all(&mut *tx)
                .await
                .map_err(db("replaying dead letters"))?;
            let mut letters = rows
                .iter()
                .map(|row| {
                    Ok((
                        row.int("id")?,
                        row.text("job_key")?,
                        row.text("kind")?,
                        row.text("payload")?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db("replaying dead letters"))?;
            letters.sort_by_key(|letter| letter.0);
            for (_, key, kind, payload) in &letters {
                sqlx::query(
                    "INSERT INTO jobs (job_key, kind, payload, enqueued_at, not_before, pipeline) \
                     VALUES ($1, $2, $3, $4, $4, $5)",
                )
                .bind(key)
                .bind(kind)
                .bind(payload)
                .bind(now)
                .bind(&*self.pipeline)
                .execute(&mut *tx)
                .await
                .map_err(db("replaying dead letters"))?;
            }
            tx.commit().await.map_err(db("replaying dead letters"))?;
            Ok(letters.len() as u64)
        })
    }

    /// Counts of pending, leased and scheduled jobs and dead letters, and the lag.
    pub async fn inbox_stats(&self) -> Result<InboxStats, StoreError> {
        let now = now_ms();
        let (pending, leased, scheduled, oldest, dead) = with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT \
                 count(CASE WHEN lease_until > $1 THEN 1 END) AS leased, \
                 count(CASE WHEN (lease_until IS NULL OR lease_until <= $1) \
                     AND not_before <= $1 THEN 1 END) AS pending, \
                 count(CASE WHEN (lease_until IS NULL OR lease_until <= $1) \
                     AND not_before > $1 THEN 1 END) AS scheduled, \
                 min(CASE WHEN (lease_until IS NULL OR lease_until <= $1) \
                     AND not_before <= $1 THEN enqueued_at END) AS oldest, \
                 (SELECT count(*) FROM dead_letters WHERE pipeline = $2) AS dead \
                 FROM jobs WHERE pipeline = $2",
            )
            .bind(now)
            .bind(&*self.pipeline)
            .fetch_one(pool)
            .await
            .map_err(db("reading inbox stats"))?;
            let read = || -> Result<_, sqlx::Error> {
                Ok((
                    row.int("pending")?,
                    row.int("leased")?,
                    row.int("scheduled")?,
                    row.opt_int("oldest")?,
                    row.int("dead")?,
                ))
            };
            read().map_err(db("reading inbox stats"))?
        });
        Ok(InboxStats {
            pending: count(pending),
            leased: count(leased),
            scheduled: count(scheduled),
            dead_letters: count(dead),
            lag: oldest.map(|t| Duration::from_millis(count(now.saturating_sub(t)))),
        })
    }

    // ---- API usage ---------------------------------------------------------------------

    /// Adds `usage` to the counts of UTC day `day` (`YYYY-MM-DD`, see [`utc_day`]) in one
    /// transaction, creating rows as needed; each row's limit becomes the one given. Made
    /// for periodic batches: concurrent additions (several workers) add up.
    pub async fn add_api_usage(&self, day: &str, usage: &[ApiCalls]) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        // Rows locked in one order by every worker: two concurrent batches cannot deadlock.
        let mut sorted: Vec<&ApiCalls> = usage.iter().collect();
        sorted.sort_by(|a, b| a.api.cmp(&b.api));
        with_pool!(self, |pool| {
            let mut tx = pool
                .begin_write()
                .await
                .map_err(db("recording API usage"))?;
            for entry in &sorted {
                sqlx::query(
                    "INSERT INTO api_usage (api, day, calls, daily_limit, updated_at, pipeline) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (pipeline, api, day) DO UPDATE SET \
                     calls = api_usage.calls + excluded.calls, \
                     daily_limit = excluded.daily_limit, updated_at = excluded.updated_at",
                )
                .bind(&entry.api)
                .bind(day)
                .bind(i64::try_from(entry.calls).unwrap_or(i64::MAX))
                .bind(
                    entry
                        .daily_limit
                        .map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
                )
                .bind(now)
                .bind(&*self.pipeline)
                .execute(&mut *tx)
                .await
                .map_err(db("recording API usage"))?;
            }
            tx.commit().await.map_err(db("recording API usage"))?;
        });
        Ok(())
    }

    /// Every upstream's calls on UTC day `day`, by API name.
    pub async fn api_usage(&self, day: &str) -> Result<Vec<ApiUsage>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT api, day, calls, daily_limit, updated_at FROM api_usage \
                 WHERE pipeline = $2 AND day = $1 ORDER BY api",
            )
            .bind(day)
            .bind(&*self.pipeline)
            .fetch_all(pool)
            .await
            .map_err(db("reading API usage"))?;
            rows.iter()
                .map(|row| {
                    Ok(ApiUsage {
                        api: row.text("api")?,
                        day: row.text("day")?,
                        calls: count(row.int("calls")?),
                        daily_limit: row.opt_int("daily_limit")?.map(count),
                        updated_at: from_ms(row.int("updated_at")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db("reading API usage"))
        })
    }

    // ---- audit -------------------------------------------------------------------------

    /// Appends `entry` to the audit log, stamped with now.
    pub async fn audit(&self, entry: &NewAudit) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log \
                 (at, referral_id, crm_entity, crm_id, flow, outcome, message, details, pipeline) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(now_ms())
            .bind(&entry.referral_id)
            .bind(&entry.crm_entity)
            .bind(&entry.crm_id)
            .bind(&entry.flow)
            .bind(&entry.outcome)
            .bind(&entry.message)
            .bind(json_text(&entry.details))
            .bind(&*self.pipeline)
            .execute(pool)
            .await
            .map_err(db("writing the audit log"))?;
        });
        Ok(())
    }

    /// The newest `limit` audit entries of a referral, newest first. `referral_id` may also
    /// be a CRM record id: a seller's opportunity that never became a referral (a rule
    /// violation) has its history under the record's id.
    pub async fn audit_trail(
        &self,
        referral_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let text = sql(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE pipeline = $3 AND (referral_id = $1 OR crm_id = $1) \
             ORDER BY id DESC LIMIT $2"
        ));
        with_pool!(self, |pool| {
            let rows = sqlx::query(text)
                .bind(referral_id)
                .bind(self::limit(limit))
                .bind(&*self.pipeline)
                .fetch_all(pool)
                .await
                .map_err(db("reading the audit log"))?;
            rows.iter().map(audit_from_row).collect()
        })
    }

    /// The newest `limit` audit entries with outcome [`FAILED`], newest first.
    pub async fn recent_failures(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let text = sql(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE pipeline = $3 AND outcome = $1 \
             ORDER BY id DESC LIMIT $2"
        ));
        with_pool!(self, |pool| {
            let rows = sqlx::query(text)
                .bind(FAILED)
                .bind(self::limit(limit))
                .bind(&*self.pipeline)
                .fetch_all(pool)
                .await
                .map_err(db("reading the audit log"))?;
            rows.iter().map(audit_from_row).collect()
        })
    }
}

fn lease_lost(job: &Job) -> StoreError {
    StoreError::LeaseLost {
        job: job.id,
        worker: job.lease_owner.clone(),
    }
}

fn open_error(shown: &str, e: sqlx::Error) -> StoreError {
    StoreError::Database {
        message: format!("cannot open {shown}: {e}"),
    }
}

async fn open_sqlite_file(path: &Path, shown: &str) -> Result<SqlitePool, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StoreError::Database {
                message: format!(
                    "cannot open {shown}: creating directory {}: {e}",
                    parent.display()
                ),
            })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    // One connection: SQLite has one writer at a time anyway, and a second connection of
    // this process wanting to write is not queued but put to sleep by SQLite's busy handler
    // (1, 2, 5, 10, 15, 20, 25 … ms between attempts), which made the webhook → CRM latency's
    // p99 45 ms at 0 ms upstream latency (bench/run). The pool's queue wakes the next caller
    // as soon as the connection is free. Other processes (`cosell status`) read alongside
    // under WAL.
    let mut attempt = 0;
    loop {
        let result = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await;
        match result {
            // Switching a new file to WAL takes an exclusive lock that the busy timeout does
            // not wait for: a process opening the file while another one creates or migrates
            // it (`cosell status` beside a starting engine) is told "database is locked".
            Err(e) if attempt < 20 && is_busy(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
            }
            result => return result.map_err(|e| open_error(shown, e)),
        }
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6).
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "5" || code == "6")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_round_trip() {
        for ms in [0, 1, 1_700_000_000_123, -86_400_000, i64::MAX / 2] {
            assert_eq!(to_ms(from_ms(ms)), ms);
        }
    }

    #[test]
    fn utc_days_follow_the_calendar() {
        let at = |ms: i64| utc_day(from_ms(ms));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(86_399_999), "1970-01-01");
        assert_eq!(at(86_400_000), "1970-01-02");
        assert_eq!(at(-1), "1969-12-31");
        // 2024-02-29T23:59:59.999Z, then 2024-03-01T00:00:00Z.
        assert_eq!(at(1_709_251_199_999), "2024-02-29");
        assert_eq!(at(1_709_251_200_000), "2024-03-01");
        assert_eq!(at(1_735_689_599_000), "2024-12-31");
        assert_eq!(at(4_102_444_800_000), "2100-01-01");
    }

    #[test]
    fn claim_sql_qualifies_postgres_columns() {
        let pg = claim_sql(true);
        assert!(pg.contains("FOR UPDATE OF j SKIP LOCKED"), "{pg}");
        assert!(pg.contains("RETURNING jobs.id, jobs.job_key,"), "{pg}");
        assert!(!claim_sql(false).contains("SKIP LOCKED"));
    }

    #[tokio::test]
    async fn sqlite_claim_walks_the_jobs_in_id_order_without_sorting() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let Backend::Sqlite(pool) = &store.backend else {
            panic!("a SQLite store");
        };
        let text = sql(format!("EXPLAIN QUERY PLAN {}", claim_sql(false)));
        let plan: Vec<String> = sqlx::query(text)
            .bind(0_i64)
            .bind("worker")
            .bind(0_i64)
            .bind(8_i64)
            .bind(DEFAULT_PIPELINE)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        // A sort means every due job is read for each claim.
        assert!(!plan.iter().any(|d| d.contains("B-TREE")), "{plan:#?}");
        assert!(plan.iter().any(|d| d.contains("jobs_key")), "{plan:#?}");
    }

    #[tokio::test]
    async fn open_names_the_url_without_password() {
        let err = Store::open("postgres://cosell:hunter2@127.0.0.1:1/cosell")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("postgres://cosell:***@127.0.0.1:1/cosell"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn memory_store_opens_and_debug_hides_password() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(store.kind(), "sqlite");
        store.set_cursor("c", "1").await.unwrap();
        assert_eq!(store.cursor("c").await.unwrap().as_deref(), Some("1"));
        assert!(format!("{store:?}").contains("sqlite::memory:"));
    }
}
