-- A value whose JSON text is over 2048 bytes is not kept as a distinct
-- value (most_frequent, unique_count, unique_list), so a person's state
-- stays bounded whatever events hold; at ingest and in a backfill alike.
-- Other kinds still see it.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

SELECT cdp.define_computed_trait('vs', 'unique_list', 'T', 'v');
SELECT cdp.define_computed_trait('nv', 'unique_count', 'T', 'v');
SELECT cdp.define_computed_trait('top', 'most_frequent', 'T', 'v');
SELECT cdp.define_computed_trait('last_v', 'last', 'T', 'v');

-- a string of 2046 characters is 2048 bytes of JSON text (with its quotes)
SELECT pg_temp.send('b1', jsonb_build_object('event', 'T', 'userId', 'u1',
                                             'properties', jsonb_build_object('v', repeat('a', 2046))),
                    '2026-03-30 10:00:00+00');
SELECT pg_temp.send('b2', jsonb_build_object('event', 'T', 'userId', 'u1',
                                             'properties', jsonb_build_object('v', repeat('b', 2047))),
                    '2026-03-30 11:00:00+00');
SELECT pg_temp.send('b3', jsonb_build_object('event', 'T', 'userId', 'u1',
                                             'properties', jsonb_build_object('v', repeat('b', 2047))),
                    '2026-03-30 12:00:00+00');
SELECT pg_temp.run();

SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u1')),
          jsonb_build_object('vs', jsonb_build_array(repeat('a', 2046)), 'nv', 1,
                             'top', repeat('a', 2046), 'last_v', repeat('b', 2047)),
          'at ingest, a value of 2048 bytes is kept and one of 2049 is not');
SELECT ok((SELECT octet_length(states::text) FROM cdp.trait_states
            WHERE profile_id = pg_temp.pid('user_id:u1')) < 4 * 2049 + 1000,
          'the states hold the longer value once (for last), in no distinct values');

-- defined again over the same stored events: the backfill keeps the same
SELECT cdp.define_computed_trait('vs', 'unique_list', 'T', 'v', filter => '{"v": {"exists": true}}');
SELECT cdp.define_computed_trait('nv', 'unique_count', 'T', 'v', filter => '{"v": {"exists": true}}');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u1')) - 'top' - 'last_v',
          jsonb_build_object('vs', jsonb_build_array(repeat('a', 2046)), 'nv', 1),
          'a backfill keeps the same values');
SELECT is((SELECT count(*) FROM cdp.events WHERE event = 'T'), 3::bigint, 'every event is stored');

SELECT * FROM finish();
ROLLBACK;
