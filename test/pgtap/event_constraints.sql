-- What a user adds to cdp.events is honoured as COPY honours it: CHECK and
-- NOT NULL constraints (a violating event is a dead letter
-- `constraint_violation` naming the constraint, its neighbours are stored,
-- and a replay after the fix is stored, not taken for a duplicate), BEFORE
-- ROW triggers (may change the row, or drop it by returning NULL), AFTER ROW
-- triggers (once per stored event), statement triggers with transition
-- tables (once per batch), the parent's column defaults, and foreign keys.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(33);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

CREATE FUNCTION pg_temp.send(msg jsonb) RETURNS bigint LANGUAGE sql AS $$
    SELECT cdp.ingest(msg);
    SELECT cdp.process_inbox();
$$;
CREATE FUNCTION pg_temp.track(id text, event text, day text DEFAULT '2026-02-01') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u-' || id, 'event', event,
                              'messageId', id, 'timestamp', day || 'T10:00:00Z')
$$;

-- a CHECK on the parent
ALTER TABLE cdp.events ADD CONSTRAINT events_no_test_event CHECK (event IS DISTINCT FROM 'Test');
SELECT is(pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
              pg_temp.track('c-1', 'Real'), pg_temp.track('c-2', 'Test'), pg_temp.track('c-3', 'Real')))),
          3::bigint, 'a batch with a violating event is processed');
SET LOCAL constraint_exclusion = off;
SELECT results_eq($$SELECT message_id FROM cdp.events ORDER BY 1$$, $$VALUES ('c-1'), ('c-3')$$,
                  'the events that satisfy the CHECK are stored, the violating one is not');
RESET constraint_exclusion;
SELECT results_eq($$SELECT error_code, payload::jsonb->>'messageId' FROM cdp.dead_letters$$,
                  $$VALUES ('constraint_violation', 'c-2')$$,
                  'the violating event is a dead letter constraint_violation with its payload');
SELECT matches((SELECT error_message FROM cdp.dead_letters),
               'violates check constraint "events_no_test_event"',
               'the dead letter names the constraint');
SELECT is(cdp.resolve('user_id:u-c-2'), NULL::bigint,
          'it was refused before identity resolution: its user got no profile');
SELECT is((SELECT count(*)::int FROM cdp.message_ids), 2, 'and it used up no messageId');
ALTER TABLE cdp.events DROP CONSTRAINT events_no_test_event;
SELECT is(cdp.replay_dead_letters() + cdp.process_inbox(), 2::bigint, 'the dead letter is replayed');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'c-2'), 1,
          'after the fix the replayed event is stored, not taken for a duplicate');

-- a CHECK on a column users added is checked when storing, after identity
-- resolution; the refused event's messageId is forgotten, so its replay stores it
ALTER TABLE cdp.events ADD COLUMN tier text DEFAULT 'free';
ALTER TABLE cdp.events ADD CONSTRAINT events_paid_only CHECK (tier <> 'free' OR event <> 'Paid Feature');
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('t-1', 'Paid Feature'), pg_temp.track('t-2', 'Free Feature'))));
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE message_id LIKE 't-_'$$, $$VALUES ('t-2')$$,
                  'a CHECK on an added column (with its default) refuses the violating event when storing');
SELECT matches((SELECT error_message FROM cdp.dead_letters WHERE payload LIKE '%t-1%'),
               'violates check constraint "events_paid_only"', 'the dead letter names it');
ALTER TABLE cdp.events DROP CONSTRAINT events_paid_only;
SELECT is(cdp.replay_dead_letters((SELECT array_agg(id) FROM cdp.dead_letters WHERE payload LIKE '%t-1%'))
          + cdp.process_inbox(), 2::bigint, 'it is replayed after the fix');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 't-1'), 1,
          'and stored: its messageId was forgotten when it was refused');
ALTER TABLE cdp.events DROP COLUMN tier;

-- a NOT NULL a user adds
ALTER TABLE cdp.events ALTER COLUMN event SET NOT NULL;
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           '{"type": "page", "userId": "u", "name": "Home", "messageId": "n-1", "timestamp": "2026-02-01T10:00:00Z"}'::jsonb,
           pg_temp.track('n-2', 'Real'))));
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id IN ('n-1', 'n-2')), 1,
          'a page without event is not stored once event is NOT NULL; its neighbour is');
SELECT matches((SELECT error_message FROM cdp.dead_letters WHERE payload LIKE '%n-1%' AND error_code = 'constraint_violation'),
               'null value in column "event" .* violates not-null constraint',
               'the dead letter says which column is NULL');
ALTER TABLE cdp.events ALTER COLUMN event DROP NOT NULL;

-- a CHECK on one partition only (the two days are months apart: never one partition)
SELECT pg_temp.send(pg_temp.track('p-0', 'Warm up', '2026-03-01'));
CREATE FUNCTION pg_temp.partition_of(day timestamptz) RETURNS regclass LANGUAGE sql AS $$
    SELECT partition FROM cdp.partitions WHERE range_from <= day AND day < range_to
$$;
DO $$ BEGIN
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT only_march_1 CHECK (event <> ''Limited'')',
                   pg_temp.partition_of('2026-03-01 10:00+00'));
END $$;
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('p-1', 'Limited', '2026-03-01'), pg_temp.track('p-2', 'Limited', '2026-08-02'))));
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE message_id LIKE 'p-_' ORDER BY 1$$,
                  $$VALUES ('p-0'), ('p-2')$$,
                  'a partition''s own CHECK refuses events for that partition only');
SELECT matches((SELECT error_message FROM cdp.dead_letters WHERE payload LIKE '%p-1%'),
               'violates check constraint "only_march_1"', 'the partition''s constraint is named');

-- an AFTER ROW trigger feeding an audit table
CREATE TABLE pg_temp.audit (message_id text, tableoid_name text);
CREATE FUNCTION pg_temp.audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.audit VALUES (NEW.message_id, TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER events_audit AFTER INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.audit_event();
ALTER TABLE cdp.events ADD CONSTRAINT events_no_test_event CHECK (event IS DISTINCT FROM 'Test') NOT VALID;
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('a-1', 'Real'), pg_temp.track('a-2', 'Test'), pg_temp.track('a-1', 'Retry'),
           pg_temp.track('a-3', 'Real', '2026-04-01'))));
SELECT results_eq($$SELECT message_id FROM pg_temp.audit ORDER BY 1$$, $$VALUES ('a-1'), ('a-3')$$,
                  'an AFTER ROW trigger fires once per stored event: not for a duplicate or a dead letter');
SELECT ok((SELECT bool_and(tableoid_name LIKE 'events_p%') FROM pg_temp.audit),
          'it fires on the partition the event went to, also one made on demand');
ALTER TABLE cdp.events DROP CONSTRAINT events_no_test_event;
DROP TRIGGER events_audit ON cdp.events;

-- BEFORE ROW triggers: change a column, or drop the row
CREATE FUNCTION pg_temp.shape_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'Drop me' THEN
        RETURN NULL;
    END IF;
    NEW.name := 'seen by trigger';
    NEW.properties := coalesce(NEW.properties, '{}') || '{"enriched": true}';
    RETURN NEW;
END $$;
CREATE TRIGGER events_shape BEFORE INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.shape_event();
SELECT is(pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
              pg_temp.track('b-1', 'Kept'), pg_temp.track('b-2', 'Drop me')))),
          2::bigint, 'both messages are taken');
SELECT results_eq($$SELECT message_id, name, properties->>'enriched' FROM cdp.events WHERE message_id LIKE 'b-_'$$,
                  $$VALUES ('b-1', 'seen by trigger', 'true')$$,
                  'a BEFORE ROW trigger''s changes are stored; the row it returned NULL for is not');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE payload LIKE '%b-2%'), 0,
          'a row a BEFORE trigger drops is the user''s choice, not a dead letter');
CREATE OR REPLACE FUNCTION pg_temp.shape_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.ts := NEW.ts + interval '30 days';
    RETURN NEW;
END $$;
SELECT cdp.ingest(pg_temp.track('b-3', 'Moved'));
SELECT throws_ok($$SELECT cdp.process_inbox()$$, '0A000', NULL,
                 'a BEFORE trigger that moves ts out of the partition stops processing, as it stops COPY');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 1, 'the message stays queued for after the trigger is fixed');
DROP TRIGGER events_shape ON cdp.events;

-- a statement trigger with a transition table (the held-up message goes too): once per batch, every stored row
CREATE TABLE pg_temp.batches (stored int);
CREATE FUNCTION pg_temp.count_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.batches SELECT count(*) FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER events_batch AFTER INSERT ON cdp.events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.count_batch();
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('s-1', 'One'), pg_temp.track('s-2', 'Two', '2026-05-01'), pg_temp.track('s-1', 'Dup'))));
SELECT results_eq($$SELECT stored FROM pg_temp.batches$$, $$VALUES (3)$$,
                  'an AFTER STATEMENT trigger fires once per batch and sees every stored row of it (b-3, s-1, s-2)');
DROP TRIGGER events_batch ON cdp.events;

-- a transition table gets every row in cdp.events' layout, also from a partition
-- made after a column was dropped (whose layout then differs from the parent's)
ALTER TABLE cdp.events ADD COLUMN scratch int;
ALTER TABLE cdp.events DROP COLUMN scratch;
CREATE TABLE pg_temp.seen (message_id text, event text);
CREATE FUNCTION pg_temp.keep_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.seen SELECT message_id, event FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER events_seen AFTER INSERT ON cdp.events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.keep_rows();
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('l-1', 'Old layout'), pg_temp.track('l-2', 'New layout', '2026-07-01'))));
SELECT results_eq($$SELECT message_id, event FROM pg_temp.seen ORDER BY 1$$,
                  $$VALUES ('l-1', 'Old layout'), ('l-2', 'New layout')$$,
                  'rows from partitions of either layout reach the transition table intact');
DROP TRIGGER events_seen ON cdp.events;

-- a column added with a default gets the default
ALTER TABLE cdp.events ADD COLUMN tenant text DEFAULT 'acme';
ALTER TABLE cdp.events ADD COLUMN stored_at timestamptz DEFAULT clock_timestamp();
SELECT pg_temp.send(pg_temp.track('d-1', 'Defaulted'));
SELECT results_eq($$SELECT tenant, stored_at IS NOT NULL FROM cdp.events WHERE message_id = 'd-1'$$,
                  $$VALUES ('acme', true)$$, 'columns users add get cdp.events'' defaults');
ALTER TABLE cdp.events DROP COLUMN tenant, DROP COLUMN stored_at;
ALTER TABLE cdp.events ADD COLUMN event_key text GENERATED ALWAYS AS (lower(event)) STORED;
SELECT pg_temp.send(pg_temp.track('d-3', 'Generated'));
SELECT is((SELECT event_key FROM cdp.events WHERE message_id = 'd-3'), 'generated',
          'stored generated columns are computed');
ALTER TABLE cdp.events DROP COLUMN event_key;
SELECT pg_temp.send(pg_temp.track('d-2', 'After drop'));
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'd-2'), 1,
          'events are stored after the added columns are dropped again');

-- a foreign key: checked when the batch ends; the offending inbox row is a dead letter
CREATE TABLE public.known_users (user_id text PRIMARY KEY);
INSERT INTO public.known_users SELECT DISTINCT user_id FROM cdp.events UNION SELECT 'u-f-1';
ALTER TABLE cdp.events ADD CONSTRAINT events_known_user FOREIGN KEY (user_id) REFERENCES public.known_users;
SELECT cdp.ingest(pg_temp.track('f-1', 'Known'));
SELECT cdp.ingest(pg_temp.track('f-2', 'Unknown'));
SELECT is(cdp.process_inbox(), 2::bigint, 'a batch with a foreign-key violation is processed');
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE message_id LIKE 'f-_'$$, $$VALUES ('f-1')$$,
                  'the event whose user exists is stored');
SELECT results_eq($$SELECT error_code, error_message LIKE '23503:%' FROM cdp.dead_letters WHERE payload LIKE '%f-2%'$$,
                  $$VALUES ('processing_error', true)$$,
                  'the violating one is a processing_error dead letter with SQLSTATE 23503');
ALTER TABLE cdp.events DROP CONSTRAINT events_known_user;

SELECT is((SELECT count(*)::int FROM cdp.inbox), 0, 'nothing is left in the inbox');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'b-3'), 1,
          'the message the broken trigger held up was stored by a later call');

SELECT * FROM finish();
ROLLBACK;
