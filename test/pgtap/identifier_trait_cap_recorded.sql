-- An identifier holds at most 256 trait keys; new keys past that are
-- skipped.  Skipping them must leave a record (a too_many_identifier_traits
-- violation naming the identifier), as every other trait bound does, not
-- lose them silently; keys it holds keep updating without one.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

-- 100 keys a message (the message bound), prefixes a, b, c: 300 keys in all
CREATE FUNCTION pg_temp.keys(prefix text, val int) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('anonymousId', 'cap-1', 'context', jsonb_build_object('traits',
        (SELECT jsonb_object_agg(prefix || lpad(g::text, 3, '0'), val) FROM generate_series(1, 100) g)))
$$;
DO $$ BEGIN
    PERFORM pg_temp.send('cap-a', pg_temp.keys('a', 1));
    PERFORM pg_temp.send('cap-b', pg_temp.keys('b', 1));
    PERFORM pg_temp.send('cap-c', pg_temp.keys('c', 1));
END $$;
SELECT is(pg_temp.run(), 3::bigint, 'the three messages are taken');
SELECT is((SELECT count(*) FROM jsonb_object_keys(pg_temp.traits('anonymous_id:cap-1')))::int, 256,
          'the identifier holds 256 keys');
SELECT is((SELECT array_agg(detail) FROM cdp.identity_violations
            WHERE rule = 'too_many_identifier_traits' AND identifier = 'anonymous_id:cap-1'),
          ARRAY['44 trait keys skipped, "c057" the first: an identifier holds at most 256'],
          'the 44 keys it had no room for are recorded');

-- later: keys it holds update (no record), a new one is skipped again (recorded)
DO $$ BEGIN
    PERFORM pg_temp.send('cap-d', pg_temp.keys('a', 2), '2026-06-01 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE rule = 'too_many_identifier_traits')::int, 1,
          'updating keys it holds records nothing');
DO $$ BEGIN
    PERFORM pg_temp.send('cap-e', '{"anonymousId": "cap-1", "context": {"traits": {"zz": 1}}}', '2026-06-01 12:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT array_agg(detail ORDER BY at) FROM cdp.identity_violations
            WHERE rule = 'too_many_identifier_traits'),
          ARRAY['44 trait keys skipped, "c057" the first: an identifier holds at most 256',
                '1 trait keys skipped, "zz" the first: an identifier holds at most 256'],
          'a new key on a full identifier is recorded too');

SELECT * FROM finish();
ROLLBACK;
