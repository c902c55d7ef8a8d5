-- Online resolution after a rebuild picks the profile a merge goes into (and
-- whose merges the hub guard counts) as the next rebuild's replay does, also
-- when split_profile gave a profile an id that orders otherwise than the id
-- the replay knows it by: a dry run after more messages reports 0.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql
SET LOCAL cdp.max_merges_per_profile = 1;
CREATE FUNCTION pg_temp.dry() RETURNS text LANGUAGE sql AS $$
    SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r
$$;

DO $$ BEGIN
    -- profile 1 {y, d}; profile 2 {z}, merged into 1 through d
    PERFORM pg_temp.send('mo-1', '{"anonymousId": "mo-y", "context": {"device": {"id": "mo-d"}}}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('mo-2', '{"anonymousId": "mo-z"}');
    PERFORM pg_temp.run();
    -- profile 3 {q1, q2} has absorbed a merge: the hub guard's limit (1)
    PERFORM pg_temp.send('mo-3', '{"anonymousId": "mo-q1"}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('mo-4', '{"anonymousId": "mo-q2"}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('mo-5', '{"anonymousId": "mo-q1", "userId": "mo-u"}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('mo-6', '{"anonymousId": "mo-q2", "userId": "mo-u"}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('mo-7', '{"anonymousId": "mo-z", "context": {"device": {"id": "mo-d"}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:mo-z'), pg_temp.pid('anonymous_id:mo-y'), 'z joined y through d');
SELECT is((SELECT merges_absorbed FROM cdp.profile_records WHERE profile_id = pg_temp.pid('anonymous_id:mo-q1')),
          1, 'the profile of q1 and q2 has absorbed one merge');

-- taking d out leaves y (profile 1) and z apart; z's part gets a new id,
-- above q's, while a replay knows it by the id its first message created (2)
SELECT is((SELECT count(*) FROM cdp.split_profile(pg_temp.pid('device_id:mo-d'), 'device_id:mo-d')),
          3::bigint, 'the split leaves three profiles');
SELECT cmp_ok(pg_temp.pid('anonymous_id:mo-z'), '>', pg_temp.pid('anonymous_id:mo-q1'),
              'z''s profile now has a higher id than q''s');
SELECT lives_ok($$ SELECT cdp.rebuild_identities() $$, 'a rebuild after the split');
SELECT is(pg_temp.dry(), '0/0', 'a dry run after it reports 0');

-- z with u (in q's profile): the replay merges q's profile into z's, the one
-- it knows as older, which has absorbed nothing; online resolution did not
-- (it took q's, full, as the older) and must do the same
DO $$ BEGIN
    PERFORM pg_temp.send('mo-8', '{"anonymousId": "mo-z", "userId": "mo-u"}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:mo-z'), pg_temp.pid('anonymous_id:mo-q1'),
          'z and q1 share a profile online');
SELECT is(pg_temp.dry(), '0/0', 'a dry run after more messages reports 0');

SELECT * FROM finish();
ROLLBACK;
