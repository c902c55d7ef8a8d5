-- An event that violates a foreign key (or unique index) on cdp.events is a
-- processing_error dead letter and its siblings are stored, also when the
-- chunk it came in had to create the partition it goes to: rolling the chunk
-- back removes that partition again, and the error must still be known as
-- one on cdp.events (content), not on pg_cdp's own tables (which would stop
-- cdp.process_inbox and hold the message in the inbox for ever).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);
\ir include/partition_setup.psql
SELECT pg_temp.drop_partitions();

CREATE TABLE public.allowed_events (name text PRIMARY KEY);
INSERT INTO public.allowed_events VALUES ('Known');
ALTER TABLE cdp.events ADD CONSTRAINT events_allowed_event
    FOREIGN KEY (event) REFERENCES public.allowed_events;
CREATE FUNCTION pg_temp.track(id text, event text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u-' || id, 'event', event,
                              'messageId', id, 'timestamp', '2026-02-01T10:00:00Z')
$$;

SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
    pg_temp.track('k-1', 'Known'), pg_temp.track('f-1', 'Unknown'), pg_temp.track('k-2', 'Known'))));
SELECT lives_ok($$SELECT cdp.process_inbox()$$,
                'a chunk that made a new partition and broke a foreign key is processed');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 0, 'nothing is left in the inbox');
SELECT results_eq($$SELECT message_id FROM cdp.events ORDER BY 1$$, $$VALUES ('k-1'), ('k-2')$$,
                  'the siblings are stored in the partition made for them');
SELECT results_eq($$SELECT error_code, payload::jsonb->>'messageId' FROM cdp.dead_letters$$,
                  $$VALUES ('processing_error', 'f-1')$$,
                  'the violating event is a processing_error dead letter with its payload');
SELECT matches((SELECT error_message FROM cdp.dead_letters), '^23503: ',
               'the dead letter carries the SQLSTATE of the foreign key violation');

SELECT * FROM finish();
ROLLBACK;
