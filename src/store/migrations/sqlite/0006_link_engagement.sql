-- cosell state store, schema 6 (SQLite): the engagement of each link's referral, indexed. A
-- referral nobody linked yet that shares its engagement with a linked one is the other
-- party's side of that co-sell (Microsoft's related referral); the reconcile, which lists
-- referrals without their webhook's event name, needs this to route it to the related flow
-- instead of treating it as a new referral. Keep identical to
-- ../postgres/0006_link_engagement.sql.
ALTER TABLE links ADD COLUMN engagement_id TEXT;
UPDATE links SET engagement_id = json_extract(snapshot, '$.referral.engagementId')
  WHERE snapshot IS NOT NULL AND json_valid(snapshot);
CREATE INDEX links_engagement ON links (pipeline, engagement_id);
