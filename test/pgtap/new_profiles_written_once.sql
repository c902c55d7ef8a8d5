-- A profile a batch makes is written once, with the count and seen times
-- of the batch's events it holds at the end: no update of the row just
-- inserted (that left a dead version of every new profile).  Its events
-- counted later, in other batches, and those of profiles merged into it
-- add to what it was written with.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql

CREATE FUNCTION pg_temp.updates() RETURNS bigint LANGUAGE sql AS $$
    SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'cdp.profile_records'::regclass
$$;
CREATE FUNCTION pg_temp.profile(id text) RETURNS TABLE (n bigint, first timestamptz, last timestamptz)
LANGUAGE sql AS $$
    SELECT event_count, first_seen, last_seen FROM cdp.profiles WHERE profile_id = pg_temp.pid(id)
$$;

-- v1: three events, v2: one; n1 and nu1 meet in the third message of theirs
SELECT pg_temp.send('w-1', '{"anonymousId": "v1"}', '2026-06-01 10:00+00');
SELECT pg_temp.send('w-2', '{"anonymousId": "v1"}', '2026-06-01 08:00+00');
SELECT pg_temp.send('w-3', '{"anonymousId": "v1"}', '2026-06-01 12:00+00');
SELECT pg_temp.send('w-4', '{"anonymousId": "v2"}', '2026-06-01 09:00+00');
SELECT pg_temp.send('w-5', '{"anonymousId": "n1"}', '2026-06-01 07:00+00');
SELECT pg_temp.send('w-6', '{"userId": "nu1"}', '2026-06-01 11:00+00');
SELECT pg_temp.send('w-7', '{"userId": "nu1", "anonymousId": "n1"}', '2026-06-01 13:00+00');
SELECT is(pg_temp.run(), 7::bigint, 'one batch of new visitors');
SELECT is(pg_temp.updates(), 0::bigint, 'no profile record was updated: the new ones were written with their counts');
SELECT results_eq('SELECT * FROM pg_temp.profile(''anonymous_id:v1'')',
                  $$VALUES (3::bigint, '2026-06-01 08:00+00'::timestamptz, '2026-06-01 12:00+00'::timestamptz)$$,
                  'three events, seen from the earliest to the latest');
SELECT results_eq('SELECT * FROM pg_temp.profile(''anonymous_id:v2'')',
                  $$VALUES (1::bigint, '2026-06-01 09:00+00'::timestamptz, '2026-06-01 09:00+00'::timestamptz)$$,
                  'one event');
SELECT results_eq('SELECT * FROM pg_temp.profile(''user_id:nu1'')',
                  $$VALUES (3::bigint, '2026-06-01 07:00+00'::timestamptz, '2026-06-01 13:00+00'::timestamptz)$$,
                  'two new profiles merged in the batch: the one left holds the events of both');
SELECT is((SELECT sum(event_count) FROM cdp.profile_records WHERE merged_into IS NOT NULL), 0::numeric,
          'the one merged away holds none');

-- later batches add to them: an event of v1, and v2 merging into v1
SELECT pg_temp.send('w-8', '{"anonymousId": "v1"}', '2026-06-01 14:00+00');
SELECT pg_temp.run();
SELECT pg_temp.send('w-9', '{"anonymousId": "v2", "context": {"device": {"id": "dv"}}}', '2026-06-01 06:00+00');
SELECT pg_temp.send('w-10', '{"anonymousId": "v1", "context": {"device": {"id": "dv"}}}', '2026-06-01 15:00+00');
SELECT pg_temp.run();
SELECT results_eq('SELECT * FROM pg_temp.profile(''anonymous_id:v1'')',
                  $$VALUES (7::bigint, '2026-06-01 06:00+00'::timestamptz, '2026-06-01 15:00+00'::timestamptz)$$,
                  'the events of later batches and of the profile merged in add up');
SELECT is((SELECT count(*) FROM cdp.profiles p
            WHERE p.event_count <> (SELECT count(*) FROM cdp.events_resolved e WHERE e.profile_id = p.profile_id)),
          0::bigint, 'every profile counts the events it holds');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'a rebuild agrees: 0 changed');

SELECT * FROM finish();
ROLLBACK;
