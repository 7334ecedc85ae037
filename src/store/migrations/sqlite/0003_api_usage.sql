-- cosell state store, schema 3 (SQLite): API calls per upstream and UTC day. The engine adds
-- its calls every few seconds (one batched write, never one per call) so `cosell status`,
-- which reads only the store, can show the budget used; several workers sharing a database
-- add to the same rows. Keep identical to ../postgres/0003_api_usage.sql.
CREATE TABLE api_usage (
    -- The upstream: partner_center, partner_center_webhooks, dataverse, salesforce.
    api         TEXT NOT NULL,
    -- UTC day, YYYY-MM-DD.
    day         TEXT NOT NULL,
    -- HTTP requests sent that day, retries included.
    calls       INTEGER NOT NULL,
    -- The configured budget.per_day at the last flush; NULL when none is configured.
    daily_limit INTEGER,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (api, day)
);
