-- The inbox: where every message waits between enqueue and processing.
-- payload is text, not jsonb, so a malformed line in a bulk COPY is kept
-- verbatim (and dead-lettered later) instead of aborting the whole load.
CREATE TABLE cdp.inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     text,   -- NULL (a blank CSV line) is dead-lettered like bad JSON
    source      text NOT NULL DEFAULT 'copy',
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cdp.inbox IS
    'queued Segment-spec messages or batch envelopes; COPY cdp.inbox (payload) FROM ... for bulk loads';

-- Payloads stay in the inbox only until processed: lz4 compresses large ones
-- (batch envelopes) several times faster than the default pglz, which took
-- two fifths of the HTTP endpoint's time.  Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE cdp.inbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- A writeKey in a row COPY loads is redacted before the row is queued
-- (cdp.ingest removes keys itself).  A BEFORE row trigger makes COPY insert
-- row by row instead of in groups; measured on bench/ingest's COPY into the
-- inbox, that costs less than keeping the key would.
CREATE FUNCTION cdp.inbox_redact_write_keys()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_inbox_redact_write_keys'
LANGUAGE C;
CREATE TRIGGER inbox_redact_write_keys BEFORE INSERT ON cdp.inbox
    FOR EACH ROW EXECUTE FUNCTION cdp.inbox_redact_write_keys();

-- Messages that could not be stored, with their original payload and why.
CREATE TABLE cdp.dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload       text NOT NULL,
    source        text NOT NULL,
    error_code    text NOT NULL,
    error_message text NOT NULL,
    received_at   timestamptz NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_error_code_idx ON cdp.dead_letters (error_code);
COMMENT ON TABLE cdp.dead_letters IS
    'messages that could not be stored; cdp.replay_dead_letters() re-enqueues them';

-- messageId deduplication: a 128-bit digest of the messageId (fixed width keeps
-- the index small and fast) and when it was last accepted.
CREATE TABLE cdp.message_ids (
    message_key uuid PRIMARY KEY,
    seen_at     timestamptz NOT NULL
);
COMMENT ON TABLE cdp.message_ids IS
    'messageIds accepted within cdp.dedup_window (digests), purged by cdp.run_maintenance()';
