-- Metrics rollups for GET /metrics/events and /metrics/attempts: counts per
-- minute (res 1), hour (res 2) and day (res 3), `unit` = the unit's start in Unix
-- milliseconds. The log writer adds to them in the transaction that writes
-- the rows they count; the migration fills them from the rows already here.

CREATE TABLE IF NOT EXISTS metric_events (
    res SMALLINT NOT NULL, unit BIGINT NOT NULL, tenant_id TEXT NOT NULL, topic TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, topic)
);
CREATE TABLE IF NOT EXISTS metric_event_destinations (
    res SMALLINT NOT NULL, unit BIGINT NOT NULL, tenant_id TEXT NOT NULL, topic TEXT NOT NULL,
    destination_id TEXT NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, topic, destination_id)
);
CREATE TABLE IF NOT EXISTS metric_attempts (
    res SMALLINT NOT NULL, unit BIGINT NOT NULL, tenant_id TEXT NOT NULL, destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL, topic TEXT NOT NULL,
    n BIGINT NOT NULL, successful BIGINT NOT NULL, failed BIGINT NOT NULL, first_n BIGINT NOT NULL,
    retry_n BIGINT NOT NULL, manual_n BIGINT NOT NULL, attempt_sum BIGINT NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, destination_id, destination_type, topic)
);
CREATE TABLE IF NOT EXISTS metric_attempts_wide (
    res SMALLINT NOT NULL, unit BIGINT NOT NULL, tenant_id TEXT NOT NULL, destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL, topic TEXT NOT NULL, status TEXT NOT NULL, code TEXT NOT NULL,
    manual BOOLEAN NOT NULL, attempt_number INTEGER NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, destination_id, destination_type, topic, status, code, manual, attempt_number)
);
CREATE TABLE IF NOT EXISTS metric_attempts_tenant (
    res SMALLINT NOT NULL, unit BIGINT NOT NULL, tenant_id TEXT NOT NULL,
    n BIGINT NOT NULL, successful BIGINT NOT NULL, failed BIGINT NOT NULL, first_n BIGINT NOT NULL,
    retry_n BIGINT NOT NULL, manual_n BIGINT NOT NULL, attempt_sum BIGINT NOT NULL,
    PRIMARY KEY (res, unit, tenant_id)
);
CREATE INDEX IF NOT EXISTS metric_events_by_tenant ON metric_events (tenant_id, res, unit);
CREATE INDEX IF NOT EXISTS metric_attempts_by_tenant ON metric_attempts (tenant_id, res, unit);
