-- The event store, range-partitioned on the corrected event time.  Partitions
-- are created on demand by the ingest path and ahead of time by maintenance;
-- there is never a default partition.
CREATE TABLE cdp.events (
    message_id          text NOT NULL,
    source              text NOT NULL,
    type                text NOT NULL,
    event               text,
    name                text,
    profile_id          bigint,
    user_id             text,
    anonymous_id        text,
    group_id            text,
    previous_id         text,
    ts                  timestamptz NOT NULL,
    original_timestamp  timestamptz,
    sent_at             timestamptz,
    received_at         timestamptz NOT NULL,
    properties          jsonb,
    traits              jsonb,
    context             jsonb,
    extra               jsonb
) PARTITION BY RANGE (ts);
COMMENT ON TABLE cdp.events IS 'stored events, one row per accepted message';
COMMENT ON COLUMN cdp.events.ts IS
    'event time corrected for client clock skew: receivedAt - (sentAt - originalTimestamp)';
COMMENT ON COLUMN cdp.events.extra IS
    'top-level message fields that have no column of their own (integrations, channel, ...)';

CREATE INDEX events_ts_brin ON cdp.events USING brin (ts);
CREATE INDEX events_profile_ts_idx ON cdp.events (profile_id, ts);

-- Partition layout and retention; a single row edited by configure_partitions.
-- Ranges that ended more than archive_after ago span archive_interval (NULL:
-- part_interval throughout).
CREATE TABLE cdp.partition_config (
    singleton        bool PRIMARY KEY DEFAULT true CHECK (singleton),
    part_interval    interval NOT NULL,
    premake          int NOT NULL,
    retention        interval,
    retention_mode   text NOT NULL,
    archive_interval interval,
    archive_after    interval NOT NULL
);
INSERT INTO cdp.partition_config VALUES (true, '1 day', 7, NULL, 'drop', '1 month', '3 months');
