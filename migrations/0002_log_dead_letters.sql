-- Log records PostgreSQL refused (a NUL in a topic, a value past a limit):
-- the log pipeline moves each one here, with the database's own error, and
-- keeps shipping the rest instead of retrying the refused batch forever.
-- `record` is the record as JSON text (JSON escapes what TEXT cannot hold).

CREATE TABLE IF NOT EXISTS log_dead_letters (
    seq BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    error TEXT NOT NULL,
    record TEXT NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS log_dead_letters_tenant ON log_dead_letters (tenant_id, seq);
