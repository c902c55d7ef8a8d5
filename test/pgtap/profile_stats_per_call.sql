-- A profile's event count and first and last seen times are gathered over
-- the batches of one cdp.process_inbox call and written to its record once:
-- a record updated once per batch left a dead version per batch that every
-- later lookup of the profile walked.  The figures must be exactly what
-- writing them batch by batch gave: through merges inside the call, and
-- without the events of a message that fails after it was counted.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(7);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
SET LOCAL cdp.batch_size = 2;

\ir include/profile_stats_checks.psql

-- one visitor, six events, three batches of two, one call
DO $$ BEGIN
    PERFORM pg_temp.send('k-1', '{"anonymousId": "k1"}', '2026-06-01 10:00+00');
    PERFORM pg_temp.send('k-2', '{"anonymousId": "k1"}', '2026-06-01 11:00+00');
    PERFORM pg_temp.send('k-3', '{"anonymousId": "k1"}', '2026-06-01 08:00+00');
    PERFORM pg_temp.send('k-4', '{"anonymousId": "k1"}', '2026-06-01 12:00+00');
    PERFORM pg_temp.send('k-5', '{"anonymousId": "k1"}', '2026-06-01 09:00+00');
    PERFORM pg_temp.send('k-6', '{"anonymousId": "k1"}', '2026-06-01 10:30+00');
END $$;
CREATE TEMP TABLE updates_before AS SELECT pg_temp.record_updates() AS n;
SELECT is(pg_temp.run(), 6::bigint, 'one call takes the six messages, two a batch');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:k1')$$,
    $$VALUES (6::bigint, '2026-06-01 08:00+00'::timestamptz, '2026-06-01 12:00+00'::timestamptz)$$,
    'the profile counts the events of every batch, with the earliest and the latest time');
SELECT is(pg_temp.record_updates() - (SELECT n FROM updates_before), 1::bigint,
          'its record is updated once for the call, not once per batch');

-- two visitors counted in one batch, merged in the next, more events after;
-- a message a trigger on cdp.events refuses, after identity resolution
-- counted it, is rolled back with its counts (its batch is retried without it)
\ir include/refuse_bad_events.psql
DO $$ BEGIN
    PERFORM pg_temp.send('m-1', '{"anonymousId": "m1"}', '2026-06-02 10:00+00');
    PERFORM pg_temp.send('m-2', '{"anonymousId": "m2"}', '2026-06-02 07:00+00');
    PERFORM pg_temp.send('m-3', '{"anonymousId": "m2", "context": {"device": {"id": "md"}}}', '2026-06-02 11:00+00');
    PERFORM pg_temp.send('m-4', '{"anonymousId": "m1", "context": {"device": {"id": "md"}}}', '2026-06-02 11:01+00');
    PERFORM pg_temp.send('m-5', '{"anonymousId": "m1", "event": "Bad"}', '2026-06-02 23:00+00');
    PERFORM pg_temp.send('m-6', '{"anonymousId": "m2"}', '2026-06-02 12:00+00');
    PERFORM pg_temp.send('m-7', '{"anonymousId": "m1", "event": "Bad"}', '2026-06-02 06:00+00');
END $$;
SELECT is(pg_temp.run(), 7::bigint, 'one call takes the seven messages');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters
            WHERE payload::jsonb->>'messageId' IN ('m-5', 'm-7') AND error_code = 'processing_error'), 2,
          'the two refused messages are processing_error dead letters');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:m1')$$,
    $$VALUES (5::bigint, '2026-06-02 07:00+00'::timestamptz, '2026-06-02 12:00+00'::timestamptz)$$,
    'the merged profile holds the five stored events of both visitors, before and after the merge, '
    'and nothing of the refused ones');
SELECT is_empty('SELECT * FROM pg_temp.miscounted()',
                'every profile counts exactly the events that resolve to it');

SELECT * FROM finish();
ROLLBACK;
