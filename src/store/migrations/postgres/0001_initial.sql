-- cosell state store, schema 1 (PostgreSQL). Keep the logical schema identical to
-- ../sqlite/0001_initial.sql: same tables, columns, indexes and meanings.
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
    pc_synced_at  BIGINT,
    crm_synced_at BIGINT,
    updated_at    BIGINT NOT NULL
);
-- A CRM record belongs to at most one referral; NULL crm_ids (not yet created) do not collide.
CREATE UNIQUE INDEX links_crm_record ON links (entity, crm_id);
CREATE INDEX links_state ON links (state);

-- Named watermarks (reconcile, CRM poll, delta links).
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The durable inbox. Identity ids are never reused: they order jobs of a key, and a reused id
-- could reorder them or confuse a dead letter's job_id.
CREATE TABLE jobs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_key     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    enqueued_at BIGINT NOT NULL,
    not_before  BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    claims      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_key ON jobs (job_key, id);
CREATE INDEX jobs_due ON jobs (not_before);

-- Jobs that ran out of retries, kept until replayed.
CREATE TABLE dead_letters (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      BIGINT NOT NULL,
    job_key     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    error       TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    failed_at   BIGINT NOT NULL
);

-- What happened to each referral, append-only.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
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
