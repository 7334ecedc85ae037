-- cosell state store, schema 2 (PostgreSQL): what each side looked like at the last sync, so
-- the engine can write only changed fields, recognise its own writes coming back (echoes)
-- and tell a one-sided change from a conflict without re-reading both systems.
-- JSON text: {"referral": …, "pc_projection": …, "crm_projection": …}.
ALTER TABLE links ADD COLUMN snapshot TEXT;
