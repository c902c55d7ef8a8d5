-- When every identifier a call gives traits or consent is new to the
-- per-identifier stores (new people), the call already holds their maps and
-- the profile each belongs to: the profile records take them without reading
-- the rows just written to cdp.identifier_traits and cdp.identifier_consent
-- back, merged per profile, with the events' counts in the same write.  The records must end as a recompute from the stores makes
-- them, also when a profile has two such identifiers, when a profile has
-- events and no state, and when a merge later in the call moved an
-- identifier (then the stores are read as before).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(11);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

CREATE FUNCTION pg_temp.store_reads() RETURNS bigint LANGUAGE sql AS $$
    SELECT sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::bigint FROM pg_stat_xact_user_tables
     WHERE relid IN ('cdp.identifier_traits'::regclass, 'cdp.identifier_consent'::regclass)
$$;
CREATE FUNCTION pg_temp.state(ids jsonb, plan text, color text, marketing bool) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT ids || jsonb_build_object('context', jsonb_build_object(
        'traits', jsonb_strip_nulls(jsonb_build_object('plan', plan, 'color', color)),
        'consent', jsonb_build_object('categoryPreferences', jsonb_build_object('Marketing', marketing))))
$$;

-- one call: n1 alone; n2 and then u2 (with n2) on one profile, each with
-- state of its own, u2's plan later; n3 with events and no state
DO $$ BEGIN
    PERFORM pg_temp.send('n1-a', pg_temp.state('{"anonymousId":"n1"}', 'free', 'red', true),
                         '2026-06-01 10:00+00');
    PERFORM pg_temp.send('n2-a', pg_temp.state('{"anonymousId":"n2"}', 'free', 'blue', true),
                         '2026-06-01 10:00+00');
    PERFORM pg_temp.send('n2-b', pg_temp.state('{"anonymousId":"n2","userId":"u2"}', 'pro', NULL, false),
                         '2026-06-01 11:00+00');
    PERFORM pg_temp.send('n1-b', pg_temp.state('{"anonymousId":"n1"}', 'team', NULL, false),
                         '2026-06-01 09:00+00');
    PERFORM pg_temp.send('n3-a', '{"anonymousId":"n3"}', '2026-06-01 08:00+00');
    PERFORM pg_temp.send('n3-b', '{"anonymousId":"n3"}', '2026-06-01 12:00+00');
END $$;
SELECT pg_temp.store_reads() AS before \gset
SELECT is(pg_temp.run(), 6::bigint, 'six messages of three new people');
SELECT is(pg_temp.store_reads() - :before, 0::bigint,
          'all of them new: no row of the stores is read back');

SELECT is(pg_temp.traits('anonymous_id:n1'), '{"plan": "free", "color": "red"}',
          'a lone identifier''s traits: the later of its two messages wins per key');
SELECT is(pg_temp.granted('anonymous_id:n1', 'marketing'), true, 'and its later decision');
SELECT is(pg_temp.traits('user_id:u2'), '{"plan": "pro", "color": "blue"}',
          'two identifiers of one profile with state: merged key by key');
SELECT is(pg_temp.granted('user_id:u2', 'marketing'), false, 'the later decision of the two');
SELECT is((SELECT (event_count, first_seen, last_seen)::text FROM cdp.profiles
            WHERE profile_id = pg_temp.pid('anonymous_id:n3')),
          '(2,"2026-06-01 08:00:00+00","2026-06-01 12:00:00+00")',
          'a profile with events and no state gets its counts and times');
SELECT is((SELECT event_count FROM cdp.profiles WHERE profile_id = pg_temp.pid('user_id:u2')), 2::bigint,
          'and one with both, in the same write');
SELECT is(pg_temp.state_drift(), 0::bigint, 'every profile as a recompute from the stores makes it');

-- one call, a batch per message: m4 gets state, then a later batch merges
-- m4's profile into u5's, so the profile m4's message resolved to is gone
SET LOCAL cdp.batch_size = 1;
DO $$ BEGIN
    PERFORM pg_temp.send('u5-a', pg_temp.state('{"userId":"u5"}', 'gold', NULL, true), '2026-06-01 09:00+00');
    PERFORM pg_temp.send('m4-a', pg_temp.state('{"anonymousId":"m4"}', 'free', 'green', false),
                         '2026-06-01 10:00+00');
    PERFORM pg_temp.send('m4-b', '{"anonymousId":"m4","userId":"u5"}', '2026-06-01 11:00+00');
END $$;
SELECT pg_temp.run() AS taken \gset
SELECT is(pg_temp.traits('anonymous_id:m4'), '{"plan": "free", "color": "green"}',
          'state of an identifier merged away later in the call reaches the profile holding it');
SELECT is(pg_temp.state_drift(), 0::bigint, 'and every profile is still as a recompute makes it');

SELECT * FROM finish();
ROLLBACK;
