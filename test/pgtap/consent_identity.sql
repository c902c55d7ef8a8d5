-- Consent across identity changes: a merge takes per purpose the latest
-- decision over both profiles, a split takes each identifier's decisions
-- with it, a rebuild recomputes them; the number of categories a message
-- states is bounded.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(11);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
CREATE FUNCTION pg_temp.dry() RETURNS text LANGUAGE sql AS $$
    SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r
$$;

-- the visitor granted marketing later than the user denied it; the user denied advertising later
DO $$ BEGIN
    PERFORM pg_temp.send('ci-1', '{"userId": "ci-u1", "context": {"consent": {"categoryPreferences":
        {"marketing": false, "advertising": false}}}}', '2026-04-01 09:00+00');
    PERFORM pg_temp.send('ci-2', '{"anonymousId": "ci-a1", "context": {"consent": {"categoryPreferences":
        {"marketing": true, "advertising": true}}}}', '2026-04-01 08:00+00');
    PERFORM pg_temp.run();
    PERFORM cdp.set_consent('anonymous_id:ci-a1', 'marketing', true, '2026-04-01 10:00+00');
    PERFORM pg_temp.send('ci-3', '{"type": "alias", "userId": "ci-u1", "previousId": "ci-a1"}', '2026-04-01 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:ci-a1'), pg_temp.pid('user_id:ci-u1'), 'setup: the alias merges the visitor into the user');
SELECT is(ARRAY[pg_temp.granted('user_id:ci-u1', 'marketing'), pg_temp.granted('user_id:ci-u1', 'advertising')],
          ARRAY[true, false], 'a merge keeps per purpose the latest decision over both profiles');
SELECT is(pg_temp.state_drift(), 0::bigint, '... equal to a recompute');

-- set_consent on the merged-away identifier reaches the canonical profile
DO $$ BEGIN
    PERFORM cdp.set_consent('anonymous_id:ci-a1', 'personalization', true, '2026-04-01 12:00+00');
END $$;
SELECT is(pg_temp.granted('user_id:ci-u1', 'personalization'), true, 'set_consent on any identifier of a profile reaches it');

-- a split takes the visitor's decisions with the visitor
DO $$ BEGIN
    PERFORM cdp.split_profile(pg_temp.pid('user_id:ci-u1'), 'anonymous_id:ci-a1');
END $$;
SELECT is(ARRAY[pg_temp.granted('user_id:ci-u1', 'marketing'), pg_temp.granted('user_id:ci-u1', 'personalization')],
          ARRAY[false, false], 'after a split the user''s profile holds only the user''s decisions');
SELECT is(ARRAY[pg_temp.granted('anonymous_id:ci-a1', 'marketing'), pg_temp.granted('anonymous_id:ci-a1', 'advertising')],
          ARRAY[true, true], '... and the visitor''s profile the visitor''s');
SELECT is(pg_temp.state_drift(), 0::bigint, '... equal to a recompute');

-- a rebuild: join the two again through a device, then a rule keeps devices to one profile
DO $$ BEGIN
    PERFORM pg_temp.send('ci-4', '{"userId": "ci-u2", "context": {"device": {"id": "ci-d"},
        "consent": {"categoryPreferences": {"advertising": true}}}}', '2026-04-02 00:00+00');
    PERFORM pg_temp.send('ci-5', '{"userId": "ci-u3", "context": {"consent": {"categoryPreferences": {"advertising": false}}}}',
                         '2026-04-01 00:00+00');
    PERFORM pg_temp.run();
    PERFORM cdp.set_identity_rule('user_id', 1, 2);
    PERFORM pg_temp.send('ci-6', '{"userId": "ci-u3", "context": {"device": {"id": "ci-d"}}}', '2026-04-03 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.granted('user_id:ci-u3', 'advertising'), true, 'setup: the device joins the two users, the later grant wins');
DO $$ BEGIN
    PERFORM cdp.set_identity_rule('user_id', 1, 1);
    PERFORM cdp.rebuild_identities();
END $$;
SELECT is(ARRAY[pg_temp.granted('user_id:ci-u2', 'advertising'), pg_temp.granted('user_id:ci-u3', 'advertising')],
          ARRAY[true, false], 'after a rebuild takes them apart each holds its own decision');
SELECT is(pg_temp.dry() || ' ' || pg_temp.state_drift(), '0/0 0', '... a dry run finds nothing and consent equals a recompute');

-- at most 64 categories a message
DO $$ BEGIN
    PERFORM pg_temp.send('ci-7', jsonb_build_object('userId', 'ci-u9', 'context', jsonb_build_object('consent',
        jsonb_build_object('categoryPreferences',
            (SELECT jsonb_object_agg('c' || i, true) FROM generate_series(1, 70) i) || '{"zzmarketing": true}'))));
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE message_id = 'ci-7' AND rule = 'too_many_consent_categories')::int,
          1, 'a message stating more than 64 consent categories is recorded as a violation, the first 64 kept');

SELECT * FROM finish();
ROLLBACK;
