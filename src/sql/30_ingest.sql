-- Ingest: enqueue, process, dead letters.  The work is in C (src/ingest.c,
-- src/process.c); these declarations pin search_path and privileges.

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

-- ISO 8601 in UTC, whatever the session's TimeZone and DateStyle.
CREATE FUNCTION cdp.iso_timestamp(ts timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, cdp
AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

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
