-- A BEFORE ROW trigger created on one partition of cdp.events (not on
-- cdp.events itself, where PostgreSQL refuses the move) that changes ts past
-- the partition's bounds must not leave the event in a partition it does not
-- belong to: as COPY checks the partition constraint after such a trigger,
-- the event becomes a constraint_violation dead letter with its payload, and
-- its siblings are stored where they belong.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(6);
\ir include/partition_setup.psql

CREATE FUNCTION pg_temp.track(id text, day text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u-' || id, 'event', 'E',
                              'messageId', id, 'timestamp', day || 'T10:00:00Z')
$$;
SELECT cdp.ingest(pg_temp.track('w-1', '2026-02-01'));
SELECT cdp.process_inbox();
CREATE FUNCTION pg_temp.move_ts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'E' AND NEW.message_id LIKE 'm-%' THEN
        NEW.ts := NEW.ts + interval '120 days';
    END IF;
    RETURN NEW;
END $$;
DO $$
BEGIN
    EXECUTE format('CREATE TRIGGER move_ts BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION pg_temp.move_ts()',
                   (SELECT tableoid::regclass FROM cdp.events WHERE message_id = 'w-1'));
END $$;

SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
    pg_temp.track('k-1', '2026-02-02'), pg_temp.track('m-1', '2026-02-03'),
    pg_temp.track('k-2', '2026-02-04'))));
SELECT is(cdp.process_inbox(), 3::bigint, 'the three messages are taken');
SET LOCAL constraint_exclusion = off;
SELECT is((SELECT count(*)::int FROM cdp.events e JOIN pg_class c ON c.oid = e.tableoid
            JOIN pg_inherits i ON i.inhrelid = c.oid
           WHERE NOT (e.ts >= (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz
                  AND e.ts < (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz)),
          0, 'no stored event lies outside its partition''s bounds');
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE message_id LIKE 'k-%' ORDER BY 1$$,
                  $$VALUES ('k-1'), ('k-2')$$, 'the siblings the trigger left alone are stored');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'm-1'), 0,
          'the moved event is not stored');
SELECT results_eq($$SELECT error_code, payload::jsonb->>'messageId' FROM cdp.dead_letters$$,
                  $$VALUES ('constraint_violation', 'm-1')$$,
                  'it is a constraint_violation dead letter with its own payload');
SELECT matches((SELECT error_message FROM cdp.dead_letters), 'partition constraint',
               'the dead letter says the row left its partition');

SELECT * FROM finish();
ROLLBACK;
