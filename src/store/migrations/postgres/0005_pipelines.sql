-- cosell state store, schema 5 (PostgreSQL): several pipelines (a partner + CRM pair, one
-- config each) share one database, and several engine instances share each pipeline.
-- Keep the logical schema identical to ../sqlite/0005_pipelines.sql.
--
-- Every row carries its pipeline. Rows written before this version belong to `default`, the
-- pipeline of an engine started without `--pipeline`; the column has no default afterwards,
-- so a query that forgets its pipeline fails instead of writing into someone else's.

ALTER TABLE links ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE links ALTER COLUMN pipeline DROP DEFAULT;
ALTER TABLE links DROP CONSTRAINT links_pkey;
ALTER TABLE links ADD PRIMARY KEY (pipeline, referral_id);
DROP INDEX links_crm_record;
CREATE UNIQUE INDEX links_crm_record ON links (pipeline, entity, crm_id);
DROP INDEX links_state;
CREATE INDEX links_state ON links (pipeline, state);

ALTER TABLE cursors ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE cursors ALTER COLUMN pipeline DROP DEFAULT;
ALTER TABLE cursors DROP CONSTRAINT cursors_pkey;
ALTER TABLE cursors ADD PRIMARY KEY (pipeline, name);

ALTER TABLE jobs ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ALTER COLUMN pipeline DROP DEFAULT;
DROP INDEX jobs_key;
CREATE INDEX jobs_key ON jobs (pipeline, job_key, id);
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (pipeline, not_before);

ALTER TABLE dead_letters ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE dead_letters ALTER COLUMN pipeline DROP DEFAULT;
CREATE INDEX dead_letters_pipeline ON dead_letters (pipeline, id);

ALTER TABLE audit_log ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE audit_log ALTER COLUMN pipeline DROP DEFAULT;
DROP INDEX audit_referral;
CREATE INDEX audit_referral ON audit_log (pipeline, referral_id, id);
DROP INDEX audit_outcome;
CREATE INDEX audit_outcome ON audit_log (pipeline, outcome, id);
DROP INDEX audit_record;
CREATE INDEX audit_record ON audit_log (pipeline, crm_id, id);

ALTER TABLE api_usage ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'default';
ALTER TABLE api_usage ALTER COLUMN pipeline DROP DEFAULT;
ALTER TABLE api_usage DROP CONSTRAINT api_usage_pkey;
ALTER TABLE api_usage ADD PRIMARY KEY (pipeline, api, day);

-- The pipelines this database holds and the CRM each syncs with: an engine for a Salesforce
-- config refuses to start on a pipeline a Dynamics 365 config owns (two configs that forgot
-- `--pipeline` would otherwise share state).
CREATE TABLE pipelines (
    pipeline   TEXT PRIMARY KEY NOT NULL,
    crm        TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Each run of a periodic poller (Partner Center reconcile, CRM change poll): which instance
-- ran it and when. Pollers run on the leader only; this is the record that they did, shown
-- by `cosell status` and checked by the scale-out test. Pruned to the last 7 days.
CREATE TABLE poller_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    poller      TEXT NOT NULL,
    instance    TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT
);
CREATE INDEX poller_runs_pipeline ON poller_runs (pipeline, id);
