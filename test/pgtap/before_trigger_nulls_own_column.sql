-- A BEFORE ROW trigger on cdp.events may change any column, also one that
-- pg_cdp always fills (message_id, source, type, ts, received_at).  If it
-- sets one of those to NULL, its NOT NULL still holds: the event becomes a
-- constraint_violation dead letter with its payload, never a stored row with
-- a NULL where cdp.events forbids one, and its siblings are stored.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);
\ir include/partition_setup.psql

CREATE FUNCTION pg_temp.track(id text, event text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u-' || id, 'event', event,
                              'messageId', id, 'timestamp', '2026-02-01T10:00:00Z')
$$;
CREATE FUNCTION pg_temp.null_own() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'No id' THEN
        NEW.message_id := NULL;
    ELSIF NEW.event = 'No source' THEN
        NEW.source := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_null_own BEFORE INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.null_own();

SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
    pg_temp.track('k-1', 'Fine'), pg_temp.track('n-1', 'No id'),
    pg_temp.track('n-2', 'No source'), pg_temp.track('k-2', 'Fine'))));
SELECT is(cdp.process_inbox(), 4::bigint, 'the four messages are taken');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE (message_id || '') IS NULL OR (source || '') IS NULL), 0,
          'no event is stored with a NULL in a NOT NULL column');
SELECT results_eq($$SELECT message_id FROM cdp.events ORDER BY 1$$, $$VALUES ('k-1'), ('k-2')$$,
                  'the siblings are stored');
SELECT results_eq($$SELECT error_code, payload::jsonb->>'messageId' FROM cdp.dead_letters ORDER BY 2$$,
                  $$VALUES ('constraint_violation', 'n-1'), ('constraint_violation', 'n-2')$$,
                  'each nulled event is a constraint_violation dead letter with its payload');
SELECT ok((SELECT bool_and(error_message ~ 'null value in column "(message_id|source)" .* violates not-null constraint')
           FROM cdp.dead_letters), 'the dead letters name the column');

SELECT * FROM finish();
ROLLBACK;
