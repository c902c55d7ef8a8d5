-- Ingest: enqueue, process, dead letters.  The work is in C (src/ingest/ingest.c,
-- src/ingest/process.c); these declarations pin search_path and privileges.

CREATE FUNCTION cdp.ingest(payload jsonb, source text DEFAULT 'sql')
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_ingest'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.ingest(jsonb, text) IS
    'enqueue one Segment-spec message or batch envelope; returns how many messages it holds';

CREATE FUNCTION cdp.process_inbox(max_messages int DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_process_inbox'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.process_inbox(int) IS
    'validate, deduplicate and store queued messages in this session; returns how many it took';

-- Drain the inbox in chunks, each committed, so that progress survives a
-- cancel or a statement_timeout (which covers the whole CALL).  It stops once
-- max_duration has passed, or earlier when another chunk would likely run
-- into statement_timeout.  SECURITY INVOKER without SET clauses: a procedure
-- with either cannot commit, so every name is schema-qualified instead.
CREATE PROCEDURE cdp.drain_inbox(max_duration interval DEFAULT '50 seconds',
                                 chunk int DEFAULT NULL,
                                 INOUT messages bigint DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    started timestamptz := pg_catalog.statement_timestamp();
    timeout interval := pg_catalog.current_setting('statement_timeout')::interval;
    -- missing_ok: the setting exists only once the library is loaded
    rows_per_chunk int := coalesce(chunk, pg_catalog.current_setting('cdp.batch_size', true)::int, 1000);
    chunk_started timestamptz;
    slowest interval := '0';
    n bigint;
BEGIN
    IF max_duration IS NULL OR max_duration <= '0' THEN
        RAISE EXCEPTION 'max_duration must be a positive interval' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rows_per_chunk < 1 THEN
        RAISE EXCEPTION 'chunk must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    messages := 0;
    LOOP
        chunk_started := pg_catalog.clock_timestamp();
        EXIT WHEN chunk_started >= started + max_duration;
        -- another chunk as slow as the slowest so far would meet the timeout
        EXIT WHEN timeout > '0' AND chunk_started + slowest * 2 >= started + timeout;
        n := cdp.process_inbox(rows_per_chunk);
        COMMIT;
        messages := messages + n;
        -- a chunk of empty envelopes holds no messages: stop only when no
        -- row is left that this session could take.  Looking needs SELECT
        -- and UPDATE on cdp.inbox, which a caller granted only EXECUTE lacks:
        -- it stops at such a chunk, and its next call goes on.
        IF n = 0 THEN
            EXIT WHEN NOT pg_catalog.has_table_privilege('cdp.inbox', 'SELECT, UPDATE');
            EXIT WHEN NOT EXISTS (SELECT FROM cdp.inbox FOR UPDATE SKIP LOCKED);
        END IF;
        slowest := greatest(slowest, pg_catalog.clock_timestamp() - chunk_started);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE cdp.drain_inbox(interval, int, bigint) IS
    'process the inbox in committed chunks (CALL it outside a transaction block) until it is '
    'empty or max_duration has passed; returns how many messages it took';

CREATE FUNCTION cdp.replay_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    WITH moved AS (
        DELETE FROM cdp.dead_letters d
         WHERE ids IS NULL OR d.id = ANY (ids)
        RETURNING d.id, d.payload, d.source, d.received_at
    ), queued AS (
        -- keep the original receipt time so clock-skew correction and the
        -- dedup window behave as they would have the first time
        INSERT INTO cdp.inbox (payload, source, received_at)
        SELECT payload, source, received_at FROM moved ORDER BY id
        RETURNING 1
    )
    SELECT count(*) FROM queued
$$;
COMMENT ON FUNCTION cdp.replay_dead_letters(bigint[]) IS
    're-enqueue dead letters (all, or the given ids); returns how many';

-- ISO 8601 in UTC, whatever the session's TimeZone and DateStyle.  A time a
-- message cannot carry (infinite, before year 1, after 9999) is refused here:
-- formatted, it would silently become another time or the receipt time.
CREATE FUNCTION cdp.iso_timestamp(ts timestamptz)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF NOT isfinite(ts) OR ts < '0001-01-01 00:00:00+00' OR ts >= '10000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'ts % is outside the times a message can carry', ts
            USING ERRCODE = 'datetime_field_overflow',
                  HINT = 'Message times run from 0001-01-01 to 9999-12-31 UTC; pass NULL for the receipt time.';
    END IF;
    RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
END
$$;

-- Convenience wrappers: build a Segment-spec message and enqueue it.
CREATE FUNCTION cdp.track(user_id text, event text, properties jsonb DEFAULT '{}',
                          anonymous_id text DEFAULT NULL, ts timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT cdp.ingest(jsonb_strip_nulls(jsonb_build_object(
               'type', 'track', 'userId', user_id, 'anonymousId', anonymous_id,
               'event', event, 'timestamp', cdp.iso_timestamp(ts)))
           || jsonb_build_object('properties', coalesce(properties, '{}')))
$$;

CREATE FUNCTION cdp.identify(user_id text, traits jsonb DEFAULT '{}',
                             anonymous_id text DEFAULT NULL, ts timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT cdp.ingest(jsonb_strip_nulls(jsonb_build_object(
               'type', 'identify', 'userId', user_id, 'anonymousId', anonymous_id,
               'timestamp', cdp.iso_timestamp(ts)))
           || jsonb_build_object('traits', coalesce(traits, '{}')))
$$;

CREATE FUNCTION cdp.alias(previous_id text, user_id text, ts timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT cdp.ingest(jsonb_strip_nulls(jsonb_build_object(
               'type', 'alias', 'previousId', previous_id, 'userId', user_id,
               'timestamp', cdp.iso_timestamp(ts))))
$$;
