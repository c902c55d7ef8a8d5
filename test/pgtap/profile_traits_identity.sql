-- Traits across identity changes: a merge gives the profile the latest value
-- of every key over both, a split takes each identifier's traits with it,
-- a rebuild recomputes them, cdp.link merges them too, and after each the
-- derived columns equal a recompute from the per-identifier stores.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(16);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
CREATE FUNCTION pg_temp.dry() RETURNS text LANGUAGE sql AS $$
    SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r
$$;

-- an anonymous visitor's newer trait and a known user's older one, then the alias
DO $$ BEGIN
    PERFORM pg_temp.send('tm-1', '{"type": "identify", "userId": "tm-u1", "traits": {"plan": "free", "name": "Bo"}}',
                         '2026-04-01 09:00+00');
    PERFORM pg_temp.send('tm-2', '{"type": "page", "anonymousId": "tm-a1", "context": {"traits": {"plan": "pro", "ref": "ad"}}}',
                         '2026-04-01 10:00+00');
    PERFORM pg_temp.send('tm-3', '{"type": "identify", "userId": "tm-u1", "traits": {"name": "Bob"}}',
                         '2026-04-01 11:00+00');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('u1', pg_temp.pid('user_id:tm-u1')), ('a1', pg_temp.pid('anonymous_id:tm-a1'));
    PERFORM pg_temp.send('tm-4', '{"type": "alias", "userId": "tm-u1", "previousId": "tm-a1"}', '2026-04-01 12:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:tm-a1'), pg_temp.saved('u1'), 'setup: the alias merges the visitor into the user');
SELECT is(pg_temp.traits('user_id:tm-u1'), '{"plan": "pro", "name": "Bob", "ref": "ad"}',
          'a merge keeps per key the latest value over both profiles');
SELECT is(pg_temp.state_drift(), 0::bigint, '... equal to a recompute');
SELECT is((SELECT traits || consent FROM cdp.profile_records WHERE profile_id = pg_temp.saved('a1')), '{}',
          '... and the merged-away record keeps no copy of them');

-- a late event of the merged-away visitor cannot overwrite the newer value
DO $$ BEGIN
    PERFORM pg_temp.send('tm-5', '{"type": "track", "anonymousId": "tm-a1", "context": {"traits": {"plan": "trial"}}}',
                         '2026-04-01 08:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:tm-u1') ->> 'plan', 'pro', 'a late event after the merge does not overwrite');

-- a merge of two stored profiles and the new events in one batch
DO $$ BEGIN
    PERFORM pg_temp.send('tm-6', '{"type": "identify", "userId": "tm-u2", "traits": {"x": 1}}', '2026-04-01 09:00+00');
    PERFORM pg_temp.send('tm-7', '{"type": "identify", "anonymousId": "tm-a2", "traits": {"y": 1, "x": 0}}', '2026-04-01 08:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('tm-8', '{"type": "identify", "userId": "tm-u2", "anonymousId": "tm-a2", "traits": {"y": 2}}',
                         '2026-04-01 10:00+00');
    PERFORM pg_temp.send('tm-9', '{"type": "track", "anonymousId": "tm-a2", "context": {"traits": {"z": 3}}}',
                         '2026-04-01 07:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:tm-u2'), '{"x": 1, "y": 2, "z": 3}', 'a merge and new traits in one batch');

-- cdp.link merges traits the same way
DO $$ BEGIN
    PERFORM pg_temp.send('tm-10', '{"type": "identify", "userId": "tm-u3", "traits": {"c": "old"}}', '2026-04-01 09:00+00');
    PERFORM pg_temp.send('tm-11', '{"type": "identify", "userId": "tm-u4", "traits": {"c": "new", "d": 4}}', '2026-04-01 10:00+00');
    PERFORM pg_temp.run();
    PERFORM cdp.set_identity_rule('user_id', 1, 2);
    PERFORM cdp.link('user_id:tm-u3', 'user_id:tm-u4');
END $$;
SELECT is(pg_temp.traits('user_id:tm-u3'), '{"c": "new", "d": 4}', 'cdp.link merges traits too');
SELECT is(pg_temp.state_drift(), 0::bigint, '... equal to a recompute');

-- a split takes the visitor's traits with the visitor's identifier
DO $$ BEGIN
    PERFORM cdp.split_profile(pg_temp.pid('user_id:tm-u1'), 'anonymous_id:tm-a1');
END $$;
SELECT isnt(pg_temp.pid('anonymous_id:tm-a1'), pg_temp.pid('user_id:tm-u1'), 'setup: the split takes the visitor out');
SELECT is(pg_temp.traits('user_id:tm-u1'), '{"plan": "free", "name": "Bob"}',
          'after a split the user''s profile holds only the user''s own traits');
SELECT is(pg_temp.traits('anonymous_id:tm-a1'), '{"plan": "pro", "ref": "ad"}',
          '... and the visitor''s profile the visitor''s (the late event''s older value still loses)');
SELECT is(pg_temp.state_drift(), 0::bigint, '... equal to a recompute');

-- a rebuild under a rule that keeps one userId per profile takes tm-u4 out again
DO $$ BEGIN
    PERFORM cdp.set_identity_rule('user_id', 1, 1);
    PERFORM cdp.rebuild_identities();
END $$;
SELECT isnt(pg_temp.pid('user_id:tm-u4'), pg_temp.pid('user_id:tm-u3'), 'setup: the rebuild takes the linked user apart');
SELECT is(ARRAY[pg_temp.traits('user_id:tm-u3'), pg_temp.traits('user_id:tm-u4')],
          ARRAY['{"c": "old"}'::jsonb, '{"c": "new", "d": 4}'::jsonb],
          'after a rebuild each profile holds the traits of the identifiers it holds');
SELECT is(pg_temp.dry(), '0/0', '... a dry run after it finds nothing to change');
SELECT is(pg_temp.state_drift(), 0::bigint, '... and the traits equal a recompute');

SELECT * FROM finish();
ROLLBACK;
