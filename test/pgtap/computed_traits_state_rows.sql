-- A stored profile id's computed trait states are one row of
-- cdp.trait_states ({"<trait id>": state}, and the values of a canonical
-- profile): a process_inbox call writes a
-- person's row once, whatever number of traits their events changed, and
-- leaves the row alone when none changed.  Defining, backfilling, dropping
-- and expiring a trait change its key in the rows and keep the others; a
-- row's expires_at is the earliest of its windowed states'.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(16);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

SELECT cdp.define_computed_trait('n', 'count', 'T');
SELECT cdp.define_computed_trait('spent', 'sum', 'T', 'x');
SELECT cdp.define_computed_trait('plans', 'unique_list', 'T', 'plan');
SELECT cdp.define_computed_trait('n_3650d', 'count', 'T', time_window => '3650 days');

-- rows of cdp.trait_states this transaction inserted or updated so far
CREATE FUNCTION pg_temp.state_writes() RETURNS bigint LANGUAGE sql AS $$
    SELECT n_tup_ins + n_tup_upd FROM pg_stat_xact_user_tables
     WHERE relid = 'cdp.trait_states'::regclass
$$;
CREATE TEMP TABLE writes (at text PRIMARY KEY, n bigint);
INSERT INTO writes VALUES ('start', pg_temp.state_writes());

SELECT pg_temp.send('a1', '{"event": "T", "userId": "u1", "properties": {"x": 1, "plan": "free"}}', '2026-03-30 10:00:00+00');
SELECT pg_temp.send('a2', '{"event": "T", "userId": "u1", "properties": {"x": 2, "plan": "pro"}}', '2026-03-30 09:00:00+00');
SELECT pg_temp.send('a3', '{"event": "T", "userId": "u1", "properties": {"x": 3}}', '2026-03-30 11:00:00+00');
SELECT pg_temp.send('b1', '{"event": "T", "userId": "u2", "properties": {"x": 5}}', '2026-03-31 10:00:00+00');
SELECT pg_temp.run();
INSERT INTO writes VALUES ('first call', pg_temp.state_writes());

SELECT is((SELECT count(*) FROM cdp.trait_states), 2::bigint, 'one row per stored profile id');
SELECT is((SELECT count(*) FROM cdp.trait_state_rows), 7::bigint, 'holding every state (u2 has no plan)');
SELECT is((SELECT w.n - s.n FROM writes w, writes s WHERE w.at = 'first call' AND s.at = 'start'),
          2::bigint, 'the call wrote each person''s row once');
SELECT is((SELECT s.expires_at FROM cdp.trait_states s WHERE s.profile_id = pg_temp.pid('user_id:u1')),
          timestamptz '2026-03-30 09:00:00+00' + interval '3650 days',
          'a row expires when its oldest windowed event leaves the window');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u1')),
          '{"n": 3, "spent": 6, "plans": ["free", "pro"], "n_3650d": 3}'::jsonb, 'the values');
SELECT is((SELECT s.traits FROM cdp.trait_states s WHERE s.profile_id = pg_temp.pid('user_id:u1')),
          '{"n": 3, "spent": 6, "plans": ["free", "pro"], "n_3650d": 3}'::jsonb,
          'a person''s values are on their state row: the row written once holds both');

-- a later event changes three of u1's states: one row written again
SELECT pg_temp.send('a4', '{"event": "T", "userId": "u1", "properties": {"x": 4, "plan": "free"}}', '2026-03-30 12:00:00+00');
SELECT pg_temp.run();
INSERT INTO writes VALUES ('second call', pg_temp.state_writes());
SELECT is((SELECT w.n - s.n FROM writes w, writes s WHERE w.at = 'second call' AND s.at = 'first call'),
          1::bigint, 'a call changing several of a person''s states writes their row once');
SELECT is((SELECT state->'values' FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id
            WHERE t.name = 'plans' AND s.profile_id = pg_temp.pid('user_id:u1')),
          '[["free", 2], ["pro", 1]]'::jsonb, 'a state combines the stored one with the new events');

-- a new trait is backfilled into the rows beside the others, a dropped one
-- leaves them, and a row left with no state goes
SELECT cdp.define_computed_trait('big', 'count', 'T', filter => '{"x": {"gte": 5}}');
SELECT is((SELECT jsonb_object_agg(t.name, s.state->'n') FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id
            WHERE s.profile_id = pg_temp.pid('user_id:u2') AND t.name IN ('n', 'big')),
          '{"n": 1, "big": 1}'::jsonb, 'a backfilled trait joins the states already in the row');
SELECT cdp.drop_computed_trait('spent');
SELECT is((SELECT count(*) FROM cdp.trait_state_rows), 6::bigint, 'a dropped trait''s states leave the rows, the others stay');
SELECT cdp.drop_computed_trait('n');
SELECT cdp.drop_computed_trait('plans');
SELECT cdp.drop_computed_trait('n_3650d');
SELECT is((SELECT array_agg(s.profile_id) FROM cdp.trait_states s), ARRAY[pg_temp.pid('user_id:u2')],
          'a row left with no state goes');
SELECT is((SELECT s.expires_at FROM cdp.trait_states s), NULL, 'and with no windowed state, no expiry');
SELECT is((SELECT array_agg(pc.profile_id ORDER BY pc.profile_id) FROM cdp.profile_computed pc
            WHERE pc.traits ?| ARRAY['n', 'plans', 'n_3650d', 'spent'] OR pc.traits = '{}'),
          NULL, 'a value row left with no value goes too, the dropped traits'' values with it');

-- a row taken as due with no state due is given its true expiry, once
SELECT cdp.define_computed_trait('w', 'count', 'T', time_window => '3650 days');
UPDATE cdp.trait_states SET expires_at = now() - interval '1 second';
SELECT is(cdp.expire_computed_traits(), 0, 'nothing was due');
SELECT is((SELECT array_agg(s.expires_at ORDER BY s.profile_id) FROM cdp.trait_states s),
          ARRAY[timestamptz '2026-03-30 09:00:00+00' + interval '3650 days',
                timestamptz '2026-03-31 10:00:00+00' + interval '3650 days'],
          'the rows expire when their windowed states do');

-- a backfill step merges a partition's states into the rows
UPDATE cdp.computed_traits SET status = 'backfilling', backfill_done = 0,
       backfill_partitions = ARRAY(SELECT p.partition FROM cdp.partition_bounds() p ORDER BY p.range_from)
 WHERE name = 'w';
SELECT cdp.remove_trait_states((SELECT id FROM cdp.computed_traits WHERE name = 'w'), NULL);
DO $$ BEGIN WHILE cdp.backfill_step() IS NOT NULL LOOP END LOOP; END $$;
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u1')), '{"w": 4, "big": 0}'::jsonb,
          'a background backfill fills the rows as a definition does');

SELECT * FROM finish();
ROLLBACK;
