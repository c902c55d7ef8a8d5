-- cdp.forget erases a person everywhere: after it, no column of any table or
-- partition in schema cdp (inbox and dead letters included) holds any of the
-- person's identifier values; other people's data stays.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(18);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

-- the person, over three days (three partitions), merged from two profiles
DO $$ BEGIN
    PERFORM pg_temp.send('p1', '{"type": "identify", "userId": "fzp-user", "anonymousId": "fzp-anon1",
        "traits": {"email": "FZP.Person@Example.com", "phone": "+1 (555) 010-9999", "name": "Fzp"},
        "context": {"device": {"id": "fzp-device"}}}', '2026-05-01 10:00+00');
    PERFORM pg_temp.send('p2', '{"anonymousId": "fzp-anon2"}', '2026-05-02 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('p3', '{"userId": "fzp-user", "anonymousId": "fzp-anon2"}', '2026-05-02 11:00+00');
    PERFORM pg_temp.send('p4', '{"userId": "fzp-user", "context": {"externalIds": [{"type": "crm", "id": "fzp-crm"}]}}',
                         '2026-05-03 10:00+00');
    PERFORM pg_temp.send('p5', '{"type": "alias", "userId": "fzp-user", "previousId": "fzp-anon3"}', '2026-05-03 11:00+00');
    -- a device wrongly joined, then split off: the split names the person
    PERFORM pg_temp.send('p6', '{"userId": "fzp-user", "context": {"device": {"id": "xsplit-device"}}}',
                         '2026-05-03 12:00+00');
    -- the person's anonymous id beside another user id: the rule refuses it
    -- (a violation names it) and the event goes to that other profile
    PERFORM pg_temp.send('p7', '{"userId": "fzp-second", "anonymousId": "fzp-anon1"}', '2026-05-03 13:00+00');
    -- someone else
    PERFORM pg_temp.send('o1', '{"type": "identify", "userId": "keep-user", "anonymousId": "keep-anon",
        "traits": {"email": "keep@example.com"}}', '2026-05-02 09:00+00');
    PERFORM pg_temp.send('o2', '{"userId": "keep-user"}', '2026-05-03 09:00+00');
    PERFORM pg_temp.run();
    PERFORM cdp.split_profile(pg_temp.pid('user_id:fzp-user'), 'device_id:xsplit-device');
    PERFORM cdp.link('user_id:fzp-user', 'crm:fzp-crm2');
    -- a dead letter of the person (bad time) and one that is not JSON
    PERFORM cdp.ingest('{"type": "track", "event": "e", "userId": "fzp-user", "timestamp": "yesterday"}');
    INSERT INTO cdp.inbox (payload) VALUES ('not json at all: fzp-user');
    PERFORM pg_temp.run();
END $$;
INSERT INTO saved VALUES ('p', pg_temp.pid('user_id:fzp-user')), ('o', pg_temp.pid('user_id:keep-user')),
                         ('second', pg_temp.pid('user_id:fzp-second')),
                         ('x', pg_temp.pid('device_id:xsplit-device'));

-- stored before identity resolution existed: no profile, found by the raw ids
INSERT INTO cdp.events (message_id, source, type, event, user_id, anonymous_id, ts, received_at)
VALUES ('pre1', 'sql', 'track', 'Old', 'fzp-user', NULL, '2026-05-01 09:00+00', '2026-05-01 09:00+00'),
       ('pre2', 'sql', 'track', 'Old', NULL, 'fzp-anon2', '2026-05-02 09:30+00', '2026-05-02 09:30+00');
-- per-identifier traits and consent, as ingest keeps them
INSERT INTO cdp.identifier_traits VALUES
    ('email:fzp.person@example.com', '{"name": "Fzp"}', '{"name": "2026-05-01T10:00:00Z"}'),
    ('user_id:keep-user', '{"plan": "pro"}', '{"plan": "2026-05-02T09:00:00Z"}')
ON CONFLICT (identifier) DO NOTHING;
INSERT INTO cdp.consent_log (identifier, purpose, granted, at, message_id, source) VALUES
    ('user_id:fzp-user', 'marketing', true, '2026-05-01 10:00+00', 'p1', 'sql'),
    ('anonymous_id:fzp-anon2', 'marketing', false, '2026-05-02 10:00+00', 'p2', 'sql'),
    ('user_id:keep-user', 'marketing', true, '2026-05-02 09:00+00', 'o1', 'sql');
INSERT INTO cdp.identifier_consent (identifier, purpose, granted, at, message_id, source) VALUES
    ('anonymous_id:fzp-anon2', 'marketing', false, '2026-05-02 10:00+00', 'p2', 'sql'),
    ('user_id:keep-user', 'marketing', true, '2026-05-02 09:00+00', 'o1', 'sql')
ON CONFLICT (identifier, purpose) DO NOTHING;
-- queued, not processed yet: one message, an envelope carrying the email in
-- other letters, a phone written another way, and one of someone else
SELECT cdp.ingest('{"type": "track", "event": "queued", "userId": "fzp-user"}');
INSERT INTO cdp.inbox (payload) VALUES
    ('{"batch": [{"type": "track", "event": "e", "anonymousId": "q-anon", "context": {"traits": {"email": "FZP.PERSON@example.com"}}}]}'),
    ('{"type": "identify", "anonymousId": "q-anon2", "traits": {"phone": "+1 555 010 9999"}}'),
    ('{"type": "track", "event": "e", "userId": "keep-user"}');

CREATE TEMP TABLE vals AS SELECT '{fzp-user, fzp-anon1, fzp-anon2, fzp-anon3, fzp.person@example.com, 5550109999, 010-9999, 010 9999, fzp-device, fzp-crm, fzp-crm2}'::text[] AS v;
SELECT cmp_ok((SELECT count(*) FROM pg_temp.find_values((SELECT v FROM vals))), '>=', 20::bigint,
              'setup: the person''s identifiers are in many places');
SELECT is(ARRAY[(SELECT count(*) FROM cdp.identity_splits), (SELECT count(*) FROM cdp.dead_letters),
                (SELECT count(*) FROM cdp.identity_violations WHERE identifier = 'anonymous_id:fzp-anon1')],
          '{1,2,1}', 'setup: a split, two dead letters, a violation');
CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('o')) AS o_events,
       (SELECT count(*) FROM cdp.identifier_traits WHERE cdp.resolve(identifier) = pg_temp.saved('o')) AS o_traits,
       (SELECT count(*) FROM cdp.identifier_consent WHERE cdp.resolve(identifier) = pg_temp.saved('o')) AS o_consent,
       (SELECT count(*) FROM cdp.consent_log WHERE cdp.resolve(identifier) = pg_temp.saved('o')) AS o_consent_log,
       (SELECT count(*) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('x')) AS x_events,
       (SELECT count(*) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('p')) AS p_events;

CREATE TEMP TABLE result AS SELECT cdp.forget('user_id:fzp-user', 'ticket 4711') AS r;

SELECT is_empty($$ SELECT * FROM pg_temp.find_values((SELECT v FROM vals)) $$,
                'no column of any table or partition in cdp holds any of the person''s identifier values');
SELECT is((SELECT (r->>'events')::bigint FROM result), (SELECT p_events + 3 FROM before),
          'every event of the person''s profiles, the two without a profile and the one refused to another profile are erased');
SELECT is((SELECT (event_count, first_seen) FROM cdp.profile_records WHERE profile_id = pg_temp.saved('second')),
          (0::bigint, NULL::timestamptz), 'the other profile''s count and times follow');
SELECT is((SELECT r->>'profiles' FROM result), '2', 'the profile and the one merged into it');
SELECT is((SELECT (r->>'inbox', r->>'dead_letters') FROM result), ('3'::text, '2'::text),
          'queued messages and dead letters carrying an identifier are erased');
SELECT is((SELECT payload FROM cdp.inbox), '{"type": "track", "event": "e", "userId": "keep-user"}',
          'someone else''s queued message stays');
SELECT ok((SELECT (r->>'splits')::int = 1 AND (r->>'merges')::int >= 1 AND (r->>'consent_log')::int >= 2
                  AND (r->>'identifier_traits')::int >= 1 AND (r->>'suppressed')::int = 9 FROM result),
          'splits, merges, consent and traits are counted');
SELECT is((SELECT count(*) FROM cdp.profile_records WHERE profile_id = pg_temp.saved('p')), 0::bigint,
          'the profile is gone');
SELECT is((SELECT (count(*), count(*) FILTER (WHERE profile_id = pg_temp.saved('o')))
             FROM cdp.identities WHERE identifier IN ('user_id:keep-user', 'anonymous_id:keep-anon',
                                                       'email:keep@example.com')),
          (3::bigint, 3::bigint), 'someone else keeps their identifiers');
SELECT is((SELECT count(*) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('o')),
          (SELECT o_events FROM before), 'someone else keeps their events');
SELECT is((SELECT count(*) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('x')),
          (SELECT x_events FROM before), 'the profile split off keeps its events');
SELECT is((SELECT ARRAY[(SELECT count(*) FROM cdp.identifier_traits WHERE cdp.resolve(identifier) = pg_temp.saved('o')),
                        (SELECT count(*) FROM cdp.identifier_consent WHERE cdp.resolve(identifier) = pg_temp.saved('o')),
                        (SELECT count(*) FROM cdp.consent_log WHERE cdp.resolve(identifier) = pg_temp.saved('o'))]),
          (SELECT ARRAY[o_traits, o_consent, o_consent_log] FROM before),
          'someone else keeps their consent and traits');
SELECT is((SELECT (reason, summary->>'events') FROM cdp.forget_log),
          ('ticket 4711'::text, (SELECT r->>'events' FROM result)),
          'the forget log keeps when, why and how much');
SELECT is((SELECT count(*) FROM cdp.suppressions), 9::bigint, 'every identifier of the person is suppressed');
SELECT is(cdp.rebuild_identities(true)->>'changed', '0',
          'the evidence left rebuilds to the same profiles');
SELECT throws_ok($$ SELECT cdp.forget('user_id:keep-user', 'customer keep-user asked') $$, '22023',
                 'reason must not contain the person''s identifiers',
                 'a reason naming the person is refused (the log keeps no identifier)');

SELECT * FROM finish();
ROLLBACK;
