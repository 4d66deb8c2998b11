-- Schema 2: indexes for the spend queries by user, organization and model, and for reading the
-- audit log by time. Same on SQLite and Postgres.
CREATE INDEX spend_logs_by_user ON spend_logs (user_id, day);
CREATE INDEX spend_logs_by_org ON spend_logs (organization_id, day);
CREATE INDEX spend_logs_by_model ON spend_logs (model_group, day);
CREATE INDEX audit_by_time ON audit_log (at);
