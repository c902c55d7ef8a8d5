-- What a rebuild writes besides identifiers: every profile record points at
-- the profile that holds its identifiers now (a chain of merges a rebuild
-- takes partly apart), the merges and un-merges it makes are logged in
-- cdp.merges and counted for the hub guard, and a dry run after it agrees.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(24);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE FUNCTION pg_temp.rule(t text, lim int) RETURNS void LANGUAGE sql AS $$
    UPDATE cdp.identity_rules SET max_per_profile = lim WHERE id_type = t
$$;
-- both halves of a dry run: identifiers and profile records that would change
CREATE FUNCTION pg_temp.dry() RETURNS text LANGUAGE sql AS $$
    SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r
$$;
-- profiles whose event_count is not the number of their resolved events
CREATE FUNCTION pg_temp.wrong_counts() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM cdp.profiles p
     WHERE p.event_count <> (SELECT count(*) FROM cdp.events_resolved e WHERE e.profile_id = p.profile_id)
$$;
-- redirects that do not end at a canonical profile in one step
CREATE FUNCTION pg_temp.bad_redirects() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM cdp.profile_records r JOIN cdp.profile_records t ON t.profile_id = r.merged_into
     WHERE t.merged_into IS NOT NULL
$$;

--
-- a chain 3 -> 2 -> 1 a rebuild takes apart between 2 and 1
--
DO $$ BEGIN
    PERFORM pg_temp.send('ch-1', '{"userId": "ch-user", "context": {"traits": {"phone": "+49 1"}}}', '2026-05-01 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ch-2', '{"anonymousId": "ch-x2", "context": {"traits": {"phone": "+49 2"}}}', '2026-05-01 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ch-3', '{"anonymousId": "ch-x3", "context": {"device": {"id": "ch-dev"}}}', '2026-05-01 10:02+00');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('p1', pg_temp.pid('user_id:ch-user')), ('p2', pg_temp.pid('anonymous_id:ch-x2')),
                             ('p3', pg_temp.pid('anonymous_id:ch-x3'));
    -- 3 into 2, then 2 into 1
    PERFORM pg_temp.send('ch-4', '{"anonymousId": "ch-x2", "context": {"device": {"id": "ch-dev"}}}', '2026-05-01 10:03+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ch-5', '{"userId": "ch-user", "anonymousId": "ch-x2"}', '2026-05-01 10:04+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:ch-x3'), pg_temp.saved('p1'), 'chain setup: 3 merged into 2, 2 into 1');
SELECT is((SELECT merged_into FROM cdp.profile_records WHERE profile_id = pg_temp.saved('p3')), pg_temp.saved('p1'),
          '... and profile 3 redirects straight to 1');
SELECT is(pg_temp.dry(), '0/0', '... a dry run agrees with online resolution');

-- one phone a profile: the message that joined 2 and 1 no longer does
DO $$ BEGIN PERFORM pg_temp.rule('phone', 1); PERFORM cdp.rebuild_identities(); END $$;
SELECT is(pg_temp.pid('anonymous_id:ch-x2'), pg_temp.saved('p2'), 'the rebuild takes 2 back out of 1');
SELECT is(pg_temp.pid('anonymous_id:ch-x3'), pg_temp.saved('p2'), '... with 3''s identifiers');
SELECT is((SELECT merged_into FROM cdp.profile_records WHERE profile_id = pg_temp.saved('p3')), pg_temp.saved('p2'),
          '... and profile 3 now redirects to 2, where its identifiers are');
SELECT results_eq(
    $$SELECT profile_id, count(*) FROM cdp.events_resolved WHERE message_id IN ('ch-2', 'ch-3', 'ch-4') GROUP BY 1$$,
    $$VALUES (pg_temp.saved('p2'), 3::bigint)$$,
    '... so 3''s events resolve to profile 2 with 2''s');
SELECT is((SELECT event_count FROM cdp.profiles WHERE profile_id = pg_temp.saved('p1')), 2::bigint,
          'profile 1 counts only its own events');
SELECT is(pg_temp.wrong_counts(), 0::bigint, 'every event_count equals the profile''s resolved events');
SELECT is(pg_temp.bad_redirects(), 0::bigint, 'every redirect ends at a canonical profile');
SELECT is(pg_temp.dry(), '0/0', 'a dry run after the rebuild reports 0');
SELECT ok(EXISTS (SELECT 1 FROM cdp.merges WHERE from_profile = pg_temp.saved('p2')
                     AND into_profile = pg_temp.saved('p1') AND reason LIKE 'rebuild: taken apart%'),
          'the un-merge is logged in cdp.merges with a reason naming the rebuild');
DO $$ BEGIN PERFORM pg_temp.rule('phone', 5); PERFORM cdp.rebuild_identities(); END $$;
SELECT is(pg_temp.pid('anonymous_id:ch-x3'), pg_temp.saved('p1'), 'restoring the limit merges them again');
SELECT is(pg_temp.wrong_counts() + pg_temp.bad_redirects(), 0::bigint, '... with exact counts and redirects');

--
-- the hub guard counts the merges a rebuild makes
--
SET LOCAL cdp.max_merges_per_profile = 1;
DO $$ BEGIN
    PERFORM pg_temp.send('hb-1', '{"type": "identify", "userId": "hb-u1", "traits": {"email": "hb@x.io"}}', '2026-05-02 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('hb-2', '{"type": "identify", "userId": "hb-u2", "traits": {"email": "hb2@x.io"}}', '2026-05-02 10:01+00');
    PERFORM pg_temp.run();
    -- the second user with the first one's email: the user_id limit keeps them apart
    PERFORM pg_temp.send('hb-5', '{"type": "identify", "userId": "hb-u2", "traits": {"email": "hb@x.io"}}', '2026-05-02 10:01:30+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('hb-3', '{"anonymousId": "hb-anon", "context": {"device": {"id": "hb-dev"}}}', '2026-05-02 10:02+00');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('h1', pg_temp.pid('user_id:hb-u1')), ('h2', pg_temp.pid('user_id:hb-u2'));
END $$;
SELECT isnt(pg_temp.saved('h2'), pg_temp.saved('h1'), 'hub setup: the user_id limit kept two users apart');
DO $$ BEGIN PERFORM pg_temp.rule('user_id', 2); PERFORM cdp.rebuild_identities(); END $$;
SELECT is(pg_temp.pid('user_id:hb-u2'), pg_temp.saved('h1'), 'with two user ids allowed, the rebuild merges them');
SELECT ok(EXISTS (SELECT 1 FROM cdp.merges WHERE from_profile = pg_temp.saved('h2')
                     AND into_profile = pg_temp.saved('h1') AND reason LIKE 'rebuild: merged%'),
          '... logs the merge in cdp.merges with a reason naming the rebuild');
SELECT is((SELECT merges_absorbed FROM cdp.profile_records WHERE profile_id = pg_temp.saved('h1')), 1,
          '... and counts it for the hub guard');
DO $$ BEGIN
    -- would be a second merge into h1: the guard refuses it
    PERFORM pg_temp.send('hb-4', '{"userId": "hb-u1", "anonymousId": "hb-anon"}', '2026-05-02 10:03+00');
    PERFORM pg_temp.run();
END $$;
SELECT isnt(pg_temp.pid('anonymous_id:hb-anon'), pg_temp.saved('h1'), 'a later online merge the guard refuses stays refused');
SELECT ok(EXISTS (SELECT 1 FROM cdp.identity_violations WHERE message_id = 'hb-4' AND rule = 'hub'),
          '... as a hub violation');
SELECT is(pg_temp.dry(), '0/0', '... and a dry run agrees');
DO $$ BEGIN PERFORM pg_temp.rule('user_id', 1); PERFORM cdp.rebuild_identities(); END $$;
SELECT ok(EXISTS (SELECT 1 FROM cdp.merges WHERE from_profile = pg_temp.saved('h2')
                     AND into_profile = pg_temp.saved('h1') AND reason LIKE 'rebuild: taken apart%'),
          'taking the merge apart again is logged too');
SELECT is((SELECT merges_absorbed || '/' || (pg_temp.pid('anonymous_id:hb-anon') = profile_id)
             FROM cdp.profile_records WHERE profile_id = pg_temp.saved('h1')), '1/true',
          '... which frees the guard for the merge it refused, now made (and counted) instead');
SELECT is(pg_temp.dry(), '0/0', '... and a dry run agrees');

SELECT * FROM finish();
ROLLBACK;
