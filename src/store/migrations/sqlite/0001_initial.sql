-- cosell state store, schema 1 (SQLite). Keep the logical schema identical to
-- ../postgres/0001_initial.sql: same tables, columns, indexes and meanings.
-- Timestamps are unix milliseconds (UTC); JSON is stored as text.

-- One row per referral and the CRM record it is synced with.
CREATE TABLE links (
    referral_id   TEXT PRIMARY KEY NOT NULL,
    entity        TEXT NOT NULL,
    crm_id        TEXT,
    state         TEXT NOT NULL,
    pc_hash       TEXT,
    crm_hash      TEXT,
    pc_etag       TEXT,
    crm_version   TEXT,
    pc_synced_at  INTEGER,
    crm_synced_at INTEGER,
    updated_at    INTEGER NOT NULL
);
-- A CRM record belongs to at most one referral; NULL crm_ids (not yet created) do not collide.
CREATE UNIQUE INDEX links_crm_record ON links (entity, crm_id);
CREATE INDEX links_state ON links (state);

-- Named watermarks (reconcile, CRM poll, delta links).
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The durable inbox. AUTOINCREMENT so ids are never reused: they order jobs of a key and a
-- reused id could reorder them or confuse a dead letter's job_id.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    enqueued_at INTEGER NOT NULL,
    not_before  INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    claims      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_key ON jobs (job_key, id);
CREATE INDEX jobs_due ON jobs (not_before);

-- Jobs that ran out of retries, kept until replayed.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL,
    job_key     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    enqueued_at INTEGER NOT NULL,
    failed_at   INTEGER NOT NULL
);

-- What happened to each referral, append-only.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    referral_id TEXT,
    crm_entity  TEXT,
    crm_id      TEXT,
    flow        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    message     TEXT NOT NULL,
    details     TEXT NOT NULL
);
CREATE INDEX audit_referral ON audit_log (referral_id, id);
CREATE INDEX audit_outcome ON audit_log (outcome, id);
