-- Outrider log store: events and delivery attempts.
-- Shaped like Outpost's PostgreSQL log store (same table names, key columns,
-- primary keys and TEXT payloads that keep the publisher's key order) so a
-- database can move between the two; range-partitioned by time with a default
-- partition so operators can add monthly partitions and drop old ones.

CREATE TABLE IF NOT EXISTS events (
    id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    topic TEXT NOT NULL,
    eligible_for_retry BOOLEAN NOT NULL,
    data TEXT NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    matched_destination_ids TEXT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT;
CREATE INDEX IF NOT EXISTS events_tenant_time ON events (tenant_id, time DESC, id DESC);
CREATE INDEX IF NOT EXISTS events_tenant_topic_time ON events (tenant_id, topic, time DESC, id DESC);
CREATE INDEX IF NOT EXISTS events_id ON events (id);
CREATE INDEX IF NOT EXISTS events_matched ON events USING GIN (matched_destination_ids);

CREATE TABLE IF NOT EXISTS attempts (
    id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    code TEXT,
    response_data TEXT,
    manual BOOLEAN NOT NULL DEFAULT FALSE,
    attempt_number INTEGER NOT NULL DEFAULT 0,
    tenant_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS attempts_default PARTITION OF attempts DEFAULT;
CREATE INDEX IF NOT EXISTS attempts_tenant_time ON attempts (tenant_id, time DESC, id DESC);
CREATE INDEX IF NOT EXISTS attempts_tenant_destination_time ON attempts (tenant_id, destination_id, time DESC, id DESC);
CREATE INDEX IF NOT EXISTS attempts_time ON attempts (time DESC, id DESC);
CREATE INDEX IF NOT EXISTS attempts_event_time ON attempts (event_id, time DESC, id DESC);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (id);
