-- The identity graph is kept compact: a rebuild holds every identifier and
-- profile in memory.  A rebuild of a graph shaped like real traffic (people
-- with a user id and an email, a third of them merged with an anonymous
-- profile) stays within 130 bytes an identifier; a profile whose members
-- outgrow the small per-type counts (more than 255 of a type, more than four
-- types) is counted right online and in the replay; a replay refuses
-- evidence whose row numbers it cannot keep.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql

-- 30000 people (70000 identifiers), a third of them merged
\set people 30000
\ir include/people_graph.psql

CREATE TEMP TABLE r AS SELECT cdp.rebuild_identities(dry_run => true) AS r;
SELECT is((SELECT (r->>'changed')::int || '/' || (r->>'profiles_changed') || '/' || (r->>'identifiers')
             FROM r), '0/0/70000', 'the replay of the generated graph agrees with the stores');
SELECT cmp_ok((SELECT (r->>'graph_bytes')::numeric / (r->>'identifiers')::numeric FROM r), '<', 130::numeric,
              'the rebuild holds it within 130 bytes an identifier');

-- one person with five types of identifier, then 301 anonymous ids in one
-- batch, where the limit is 300: the 301st is refused
SELECT cdp.set_identity_rule('anonymous_id', 5, 300);
DO $$ BEGIN
    PERFORM pg_temp.send('wide-0', '{"type": "identify", "userId": "wide-u", "anonymousId": "wide-a0",
        "traits": {"email": "wide@example.com", "phone": "+15550001"},
        "context": {"device": {"id": "wide-d"}, "externalIds": [{"type": "crm", "id": "wide-c"}]}}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identities WHERE profile_id = pg_temp.pid('user_id:wide-u')),
          6::bigint, 'one profile holds six identifiers of six types');
DO $$ BEGIN
    FOR k IN 1 .. 300 LOOP
        PERFORM pg_temp.send('wide-' || k, jsonb_build_object('userId', 'wide-u', 'anonymousId', 'wide-a' || k));
    END LOOP;
END $$;
SELECT pg_temp.run() \g /dev/null
SELECT is((SELECT count(*) FROM cdp.identities i
            WHERE i.profile_id = pg_temp.pid('user_id:wide-u') AND cdp.id_type(i.identifier) = 'anonymous_id'),
          300::bigint, 'the profile holds 300 anonymous ids');
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE rule = 'anonymous_id.max_per_profile'),
          1::bigint, 'the 301st was refused');
SELECT is(pg_temp.pid('anonymous_id:wide-a300'), NULL, 'and stays unlinked');
SELECT is(pg_temp.dry(), '0/0', 'the replay counts the same');

-- row numbers are kept in 32 bits from the first row's
INSERT INTO cdp.identity_evidence (seq, message_id, observed_at, identifiers, linked, created_profile)
VALUES (5000000000, 'far', '2026-06-01', ARRAY['user_id:far'::cdp.identifier], ARRAY['user_id:far'::cdp.identifier], NULL);
SELECT throws_ok($$ SELECT cdp.rebuild_identities(dry_run => true) $$, '54000',
                 'the identity evidence spans more than 4294967295 sequence numbers',
                 'a replay refuses evidence spanning more row numbers than it keeps');
DELETE FROM cdp.identity_evidence WHERE seq = 5000000000;
SELECT is(pg_temp.dry(), '0/0', 'without that row it replays as before');

SELECT * FROM finish();
ROLLBACK;
