-- cosell state store, schema 3 (PostgreSQL): API calls per upstream and UTC day. The engine adds
-- its calls every few seconds (one batched write, never one per call) so `cosell status`,
-- which reads only the store, can show the budget used; several workers sharing a database
-- add to the same rows. Keep identical to ../sqlite/0003_api_usage.sql.
CREATE TABLE api_usage (
    -- The upstream: partner_center, partner_center_webhooks, dataverse, salesforce.
    api         TEXT NOT NULL,
    -- UTC day, YYYY-MM-DD.
    day         TEXT NOT NULL,
    -- HTTP requests sent that day, retries included.
    calls       BIGINT NOT NULL,
    -- The configured budget.per_day at the last flush; NULL when none is configured.
    daily_limit BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (api, day)
);
