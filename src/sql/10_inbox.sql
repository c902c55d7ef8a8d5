-- The type of the inbox's payload: text in which the value of every
-- writeKey member is replaced by "[redacted]" as the value is made, so a
-- key never reaches the inbox's heap or WAL, whichever way a row comes: COPY
-- (text, CSV or binary) and literals through the input and receive
-- functions, INSERT of text (cdp.ingest, the HTTP endpoint) through the
-- assignment cast, any other type through its text form.  Redacting as the
-- value is read, rather than in a BEFORE row trigger, lets COPY insert the
-- rows in groups.  Readers see text: the cast back is binary and implicit.
CREATE TYPE cdp.redacted_text;
CREATE FUNCTION cdp.redacted_text_in(cstring) RETURNS cdp.redacted_text
    AS 'MODULE_PATHNAME', 'cdp_redacted_text_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.redacted_text_out(cdp.redacted_text) RETURNS cstring
    AS 'textout' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.redacted_text_recv(internal) RETURNS cdp.redacted_text
    AS 'MODULE_PATHNAME', 'cdp_redacted_text_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.redacted_text_send(cdp.redacted_text) RETURNS bytea
    AS 'textsend' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE cdp.redacted_text (
    INPUT = cdp.redacted_text_in,
    OUTPUT = cdp.redacted_text_out,
    RECEIVE = cdp.redacted_text_recv,
    SEND = cdp.redacted_text_send,
    LIKE = text,
    CATEGORY = 'S',
    COLLATABLE = true
);
COMMENT ON TYPE cdp.redacted_text IS
    'text with the value of every writeKey member replaced by "[redacted]" (cdp.inbox''s payload)';
CREATE FUNCTION cdp.redacted_text(text) RETURNS cdp.redacted_text
    AS 'MODULE_PATHNAME', 'cdp_redacted_text' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE CAST (text AS cdp.redacted_text) WITH FUNCTION cdp.redacted_text(text) AS ASSIGNMENT;
CREATE CAST (cdp.redacted_text AS text) WITHOUT FUNCTION AS IMPLICIT;

-- The inbox: where every message waits between enqueue and processing.
-- payload is text, not jsonb, so a malformed line in a bulk COPY is kept
-- verbatim (and dead-lettered later) instead of aborting the whole load.
CREATE TABLE cdp.inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     cdp.redacted_text,  -- NULL (a blank CSV line) is dead-lettered like bad JSON
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

-- Rows a statement queued are counted once it is done (cdp.max_inbox_depth,
-- cdp.stats, waking a worker), from PostgreSQL's count of the rows it
-- inserted into the table: statement triggers leave COPY its grouped inserts.
CREATE FUNCTION cdp.inbox_statement_begins()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_inbox_statement_begins'
LANGUAGE C;
CREATE FUNCTION cdp.inbox_rows_queued()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_inbox_rows_queued'
LANGUAGE C;
CREATE TRIGGER inbox_statement_begins BEFORE INSERT ON cdp.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION cdp.inbox_statement_begins();
CREATE TRIGGER inbox_rows_queued AFTER INSERT ON cdp.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION cdp.inbox_rows_queued();

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
