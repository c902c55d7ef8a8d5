-- Computed traits kept at ingest chunk by chunk: the stored states read
-- back, combined with a chunk's events and written again are exactly the
-- states a backfill makes from the same events (strings with escapes and
-- non-ASCII text, objects, numbers with trailing zeros, booleans), the
-- values are what each kind says, and a chunk that changes neither a state
-- nor a value leaves its row alone.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(10);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

SELECT cdp.define_computed_trait('n', 'count', 'T');
SELECT cdp.define_computed_trait('first_v', 'first', 'T', 'v');
SELECT cdp.define_computed_trait('last_o', 'last', 'T', 'o');
SELECT cdp.define_computed_trait('vs', 'unique_list', 'T', 'v');
SELECT cdp.define_computed_trait('os', 'unique_count', 'T', 'o');
SELECT cdp.define_computed_trait('top_b', 'most_frequent', 'T', 'b');
SELECT cdp.define_computed_trait('total', 'sum', 'T', 'x');
SELECT cdp.define_computed_trait('low', 'min', 'T', 'x');
SELECT cdp.define_computed_trait('high', 'max', 'T', 'x', '3650 days');
SELECT cdp.define_computed_trait('mean', 'avg', 'T', 'x');
SELECT cdp.define_computed_trait('first_w', 'first', 'W', 'w');

-- one event per call: each chunk combines with the states stored before it
SELECT pg_temp.send('t1', '{"event": "T", "userId": "u1", "properties": {"v": "a\"b", "x": 1.50, "o": {"k": [1, "é"]}, "b": true}}',
                    '2026-03-30 10:00:00+00');
SELECT pg_temp.run();
SELECT pg_temp.send('t2', '{"event": "T", "userId": "u1", "properties": {"v": "plain", "x": -0.25, "o": {"k": 2}, "b": false}}',
                    '2026-03-30 11:00:00+00');
SELECT pg_temp.run();
SELECT pg_temp.send('t3', '{"event": "T", "userId": "u1", "properties": {"v": "é\n", "x": 100, "o": [true, null], "b": true}}',
                    '2026-03-30 09:00:00+00');
SELECT pg_temp.run();

SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u1')) - 'mean',
          '{"n": 3, "first_v": "é\n", "last_o": {"k": 2}, "vs": ["a\"b", "plain", "é\n"], "os": 3,
            "top_b": true, "total": 101.25, "low": -0.25, "high": 100, "first_w": null}'::jsonb,
          'every kind''s value over events stored one chunk at a time');
SELECT is((cdp.computed_traits_of(pg_temp.pid('user_id:u1'))->>'mean')::numeric, 33.75, 'the average');
SELECT is((SELECT state FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id WHERE t.name = 'vs'),
          '{"values": [["a\"b", 1], ["plain", 1], ["é\n", 1]]}'::jsonb,
          'a state keeps escaped and non-ASCII values as their JSON text, and no oldest time without a window');
SELECT is((SELECT state FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id WHERE t.name = 'high'),
          jsonb_build_object('n', 3, 'max', 100,
                             'oldest', (extract(epoch FROM timestamptz '2026-03-30 09:00:00+00' - timestamptz '2000-01-01 00:00:00+00') * 1e6)::bigint),
          'a windowed state keeps the time of its oldest event');
SELECT is((SELECT s.expires_at FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id WHERE t.name = 'high'),
          timestamptz '2026-03-30 09:00:00+00' + interval '3650 days', 'a windowed state expires when its oldest event leaves');

-- the same states as counting every event again
CREATE TEMP TABLE kept AS SELECT profile_id, trait_id, state, expires_at FROM cdp.trait_state_rows;
SELECT cdp.recount_trait(id, NULL) FROM cdp.computed_traits;
SELECT is((SELECT count(*) FROM ((TABLE kept EXCEPT SELECT profile_id, trait_id, state, expires_at FROM cdp.trait_state_rows)
                                 UNION ALL
                                 (SELECT profile_id, trait_id, state, expires_at FROM cdp.trait_state_rows EXCEPT TABLE kept)) d),
          0::bigint, 'the states kept chunk by chunk equal those a recount makes');

-- a later event does not change a "first" state or value: its row stays
SELECT pg_temp.send('w1', '{"event": "W", "userId": "u2", "properties": {"w": "x"}}', '2026-03-30 10:00:00+00');
SELECT pg_temp.run();
CREATE TEMP TABLE rows_before AS
SELECT (SELECT s.ctid FROM cdp.trait_states s WHERE s.profile_id = pg_temp.pid('user_id:u2')) AS state_row,
       (SELECT pc.traits FROM cdp.profile_computed pc WHERE pc.profile_id = pg_temp.pid('user_id:u2')) AS traits;
SELECT pg_temp.send('w2', '{"event": "W", "userId": "u2", "properties": {"w": "y"}}', '2026-03-30 12:00:00+00');
SELECT pg_temp.run();
SELECT is((SELECT s.ctid FROM cdp.trait_states s WHERE s.profile_id = pg_temp.pid('user_id:u2')),
          (SELECT state_row FROM rows_before), 'a state no event changed is not written again, nor its row''s values');
SELECT is((SELECT pc.traits FROM cdp.profile_computed pc WHERE pc.profile_id = pg_temp.pid('user_id:u2')),
          (SELECT traits FROM rows_before), 'a profile whose values did not change keeps them');
-- an earlier one does
SELECT pg_temp.send('w3', '{"event": "W", "userId": "u2", "properties": {"w": "z"}}', '2026-03-30 08:00:00+00');
SELECT pg_temp.run();
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u2'))->'first_w', '"z"'::jsonb, 'an earlier event changes "first"');
SELECT is((SELECT pc.traits FROM cdp.profile_computed pc WHERE pc.profile_id = pg_temp.pid('user_id:u2')),
          '{"first_w": "z"}'::jsonb, 'only the values the profile has');

SELECT * FROM finish();
ROLLBACK;
