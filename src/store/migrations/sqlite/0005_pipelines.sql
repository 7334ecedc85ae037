-- cosell state store, schema 5 (SQLite): several pipelines (a partner + CRM pair, one config
-- each) share one database. Keep the logical schema identical to
-- ../postgres/0005_pipelines.sql.
--
-- Every row carries its pipeline. Rows written before this version belong to `default`, the
-- pipeline of an engine started without `--pipeline`. SQLite cannot change a primary key or
-- drop a column default in place: links, cursors and api_usage are rebuilt (without a
-- default); jobs, dead_letters and audit_log keep their AUTOINCREMENT sequences and get the
-- column with a default, which the store never relies on (it always names the pipeline).

CREATE TABLE links_v5 (
    pipeline      TEXT NOT NULL,
    referral_id   TEXT NOT NULL,
    entity        TEXT NOT NULL,
    crm_id        TEXT,
    state         TEXT NOT NULL,
    pc_hash       TEXT,
    crm_hash      TEXT,
    pc_etag       TEXT,
    crm_version   TEXT,
    pc_synced_at  INTEGER,
    crm_synced_at INTEGER,
    updated_at    INTEGER NOT NULL,
    snapshot      TEXT,
    PRIMARY KEY (pipeline, referral_id)
);
INSERT INTO links_v5 (pipeline, referral_id, entity, crm_id, state, pc_hash, crm_hash, pc_etag,
    crm_version, pc_synced_at, crm_synced_at, updated_at, snapshot)
SELECT 'default', referral_id, entity, crm_id, state, pc_hash, crm_hash, pc_etag, crm_version,
    pc_synced_at, crm_synced_at, updated_at, snapshot FROM links;
DROP TABLE links;
ALTER TABLE links_v5 RENAME TO links;
CREATE UNIQUE INDEX links_crm_record ON links (pipeline, entity, crm_id);
CREATE INDEX links_state ON links (pipeline, state);

CREATE TABLE cursors_v5 (
    pipeline   TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, name)
);
INSERT INTO cursors_v5 (pipeline, name, value, updated_at)
SELECT 'default', name, value, updated_at FROM cursors;
DROP TABLE cursors;
ALTER TABLE cursors_v5 RENAME TO cursors;

ALTER TABLE jobs ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
DROP INDEX jobs_key;
CREATE INDEX jobs_key ON jobs (pipeline, job_key, id);
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (pipeline, not_before);

ALTER TABLE dead_letters ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
CREATE INDEX dead_letters_pipeline ON dead_letters (pipeline, id);

ALTER TABLE audit_log ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
DROP INDEX audit_referral;
CREATE INDEX audit_referral ON audit_log (pipeline, referral_id, id);
DROP INDEX audit_outcome;
CREATE INDEX audit_outcome ON audit_log (pipeline, outcome, id);
DROP INDEX audit_record;
CREATE INDEX audit_record ON audit_log (pipeline, crm_id, id);

CREATE TABLE api_usage_v5 (
    pipeline    TEXT NOT NULL,
    api         TEXT NOT NULL,
    day         TEXT NOT NULL,
    calls       INTEGER NOT NULL,
    daily_limit INTEGER,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (pipeline, api, day)
);
INSERT INTO api_usage_v5 (pipeline, api, day, calls, daily_limit, updated_at)
SELECT 'default', api, day, calls, daily_limit, updated_at FROM api_usage;
DROP TABLE api_usage;
ALTER TABLE api_usage_v5 RENAME TO api_usage;

-- The pipelines this database holds and the CRM each syncs with.
CREATE TABLE pipelines (
    pipeline   TEXT PRIMARY KEY NOT NULL,
    crm        TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Each run of a periodic poller: which instance ran it and when. Pruned to the last 7 days.
CREATE TABLE poller_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline    TEXT NOT NULL,
    poller      TEXT NOT NULL,
    instance    TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT
);
CREATE INDEX poller_runs_pipeline ON poller_runs (pipeline, id);
