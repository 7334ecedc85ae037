-- cosell state store, schema 4 (SQLite): the audit log by CRM record. `cosell audit ID` takes a
-- referral id or a CRM record id; a seller's opportunity that never became a referral (a rule
-- violation) has its history only under the record's id. Keep identical to
-- ../postgres/0004_audit_by_record.sql.
CREATE INDEX audit_record ON audit_log (crm_id, id);
