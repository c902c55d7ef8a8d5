-- cdp.forget reaches partitions detached from cdp.events that still exist
-- (retention in 'detach' mode) and lists any it could not erase.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

-- three recent days, one partition each
DO $$ BEGIN
    PERFORM pg_temp.send('d1', '{"userId": "det-user"}', date_trunc('day', now()) - interval '3 days' + interval '10 hours');
    PERFORM pg_temp.send('d2', '{"userId": "det-user"}', date_trunc('day', now()) - interval '2 days' + interval '10 hours');
    PERFORM pg_temp.send('d3', '{"userId": "det-user"}', date_trunc('day', now()) - interval '1 day' + interval '10 hours');
    PERFORM pg_temp.send('o1', '{"userId": "det-other"}', date_trunc('day', now()) - interval '3 days' + interval '11 hours');
    PERFORM pg_temp.run();
END $$;
CREATE TEMP TABLE parts AS
SELECT (SELECT tableoid::regclass FROM cdp.events WHERE message_id = 'd1') AS reached,
       (SELECT tableoid::regclass FROM cdp.events WHERE message_id = 'd2') AS refused;
-- one an operator made read-only
CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'archived: read only';
END
$$;
DO $$
DECLARE
    p record;
BEGIN
    SELECT * INTO p FROM parts;
    EXECUTE format('ALTER TABLE cdp.events DETACH PARTITION %s', p.reached);
    EXECUTE format('ALTER TABLE cdp.events DETACH PARTITION %s', p.refused);
    EXECUTE format('CREATE TRIGGER read_only BEFORE DELETE ON %s FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()',
                   p.refused);
END $$;

-- "other events/the person's events" in a table
CREATE FUNCTION pg_temp.count_in(rel regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    res text;
BEGIN
    EXECUTE format('SELECT count(*) FILTER (WHERE user_id <> ''det-user'') || ''/'' || '
                   'count(*) FILTER (WHERE user_id = ''det-user'') FROM %s', rel) INTO res;
    RETURN res;
END
$$;

-- export reads the detached partitions too
CREATE TEMP TABLE export AS SELECT cdp.export_subject('user_id:det-user') AS j;
SELECT is((SELECT array_agg(e->>'message_id' ORDER BY e->>'message_id')
             FROM export, jsonb_each(j->'detached_partition_events') d, jsonb_array_elements(d.value) e),
          '{d1,d2}', 'export includes the events in detached partitions');
SELECT is((SELECT jsonb_array_length(j->'events') FROM export), 1, 'beside those attached');

CREATE TEMP TABLE result AS SELECT cdp.forget('user_id:det-user') AS r;

SELECT is((SELECT r->'detached_partitions' FROM result), (SELECT jsonb_build_object(reached::text, 1) FROM parts),
          'the detached partition is reached');
SELECT is(pg_temp.count_in((SELECT reached FROM parts)), '1/0', 'only the person''s event is erased there');
SELECT is((SELECT r->'not_erased' FROM result),
          (SELECT jsonb_build_array(jsonb_build_object('relation', refused::text, 'error', 'archived: read only'))
             FROM parts),
          'the one that refused is listed as not erased');
SELECT is(pg_temp.count_in((SELECT refused FROM parts)), '0/1', 'and still holds the event, as the result says');
SELECT is((SELECT (r->>'events')::int FROM result), 1, 'the attached partitions are erased');
SELECT is((SELECT summary->'not_erased'->0->>'relation' FROM cdp.forget_log), (SELECT refused::text FROM parts),
          'the forget log records what was not erased');

SELECT * FROM finish();
ROLLBACK;
