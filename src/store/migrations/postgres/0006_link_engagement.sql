-- cosell state store, schema 6 (PostgreSQL): the engagement of each link's referral, indexed. A
-- referral nobody linked yet that shares its engagement with a linked one is the other
-- party's side of that co-sell (Microsoft's related referral); the reconcile, which lists
-- referrals without their webhook's event name, needs this to route it to the related flow
-- instead of treating it as a new referral. Keep the logical schema identical to
-- ../sqlite/0006_link_engagement.sql.
ALTER TABLE links ADD COLUMN engagement_id TEXT;
UPDATE links SET engagement_id = snapshot::jsonb #>> '{referral,engagementId}'
  WHERE snapshot IS NOT NULL;
CREATE INDEX links_engagement ON links (pipeline, engagement_id);
