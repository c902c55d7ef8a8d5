-- cdp.export_subject returns everything held about a person: the profile
-- and those merged into it, identifiers, per-identifier traits, consent now
-- and its history, every event (those stored before the person had a
-- profile too), merges, queued and dead-lettered messages.  After forget it
-- holds nothing but the fact that the identifier is suppressed.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(13);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('e1', '{"type": "identify", "userId": "exp-user", "traits": {"email": "exp@example.com"}}',
                         '2026-05-01 10:00+00');
    PERFORM pg_temp.send('e2', '{"anonymousId": "exp-anon"}', '2026-05-02 10:00+00');
    PERFORM pg_temp.send('o1', '{"userId": "exp-other"}', '2026-05-02 11:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('e3', '{"userId": "exp-user", "anonymousId": "exp-anon"}', '2026-05-03 10:00+00');
    PERFORM cdp.ingest('{"type": "track", "event": "e", "userId": "exp-user", "timestamp": "never"}');
    PERFORM pg_temp.run();
    PERFORM cdp.ingest('{"type": "track", "event": "queued", "anonymousId": "exp-anon"}');
END $$;
INSERT INTO cdp.events (message_id, source, type, event, user_id, ts, received_at)
VALUES ('e0', 'sql', 'track', 'Old', 'exp-user', '2026-05-01 09:00+00', '2026-05-01 09:00+00');
INSERT INTO cdp.identifier_traits VALUES
    ('email:exp@example.com', '{"plan": "pro"}', '{"plan": "2026-05-01T10:00:00Z"}')
ON CONFLICT (identifier) DO UPDATE SET traits = cdp.identifier_traits.traits || excluded.traits,
                                       trait_times = cdp.identifier_traits.trait_times || excluded.trait_times;
INSERT INTO cdp.consent_log (identifier, purpose, granted, at, message_id, source) VALUES
    ('user_id:exp-user', 'marketing', true, '2026-05-01 10:00+00', 'e1', 'sql'),
    ('user_id:exp-user', 'marketing', false, '2026-05-02 10:00+00', NULL, 'api');
INSERT INTO cdp.identifier_consent (identifier, purpose, granted, at, message_id, source) VALUES
    ('user_id:exp-user', 'marketing', false, '2026-05-02 10:00+00', NULL, 'api')
ON CONFLICT (identifier, purpose) DO NOTHING;

CREATE TEMP TABLE x AS SELECT cdp.export_subject('anonymous_id:exp-anon') AS j;

SELECT is((SELECT (j->'profile'->>'profile_id')::bigint FROM x), pg_temp.pid('user_id:exp-user'),
          'the canonical profile, whichever identifier asks');
SELECT is((SELECT jsonb_array_length(j->'merged_profiles') FROM x), 1, 'and the profile merged into it');
SELECT is((SELECT array_agg(i->>'identifier' ORDER BY i->>'identifier') FROM x, jsonb_array_elements(j->'identifiers') i),
          '{anonymous_id:exp-anon,email:exp@example.com,user_id:exp-user}', 'every identifier');
SELECT ok((SELECT bool_or(t->>'identifier' = 'email:exp@example.com' AND t->'traits' @> '{"plan": "pro"}')
             FROM x, jsonb_array_elements(j->'traits') t), 'per-identifier traits');
SELECT is((SELECT c->>'granted' FROM x, jsonb_array_elements(j->'consent') c
            WHERE c->>'identifier' = 'user_id:exp-user' AND c->>'purpose' = 'marketing'), 'false', 'consent now');
SELECT is((SELECT array_agg(c->>'granted' ORDER BY c->>'at') FROM x, jsonb_array_elements(j->'consent_history') c
            WHERE c->>'purpose' = 'marketing'),
          '{true,false}', 'and its history');
SELECT is((SELECT array_agg(e->>'message_id') FROM x, jsonb_array_elements(j->'events') e),
          '{e0,e1,e2,e3}', 'every event by time, the one stored without a profile too');
SELECT is((SELECT jsonb_array_length(j->'merges') FROM x), 1, 'the merge');
SELECT is((SELECT (jsonb_array_length(j->'inbox'), jsonb_array_length(j->'dead_letters')) FROM x), (1, 1),
          'the queued message and the dead letter');
SELECT is((SELECT j->>'suppressed' FROM x), 'false', 'not suppressed');

SELECT is((cdp.forget('user_id:exp-user')->>'events')::int, 4, 'forget erases the four events exported');
CREATE TEMP TABLE y AS SELECT cdp.export_subject('user_id:exp-user') AS j;
SELECT is((SELECT j->>'suppressed' FROM y), 'true', 'after forget: suppressed');
SELECT is((SELECT (j->'profile', jsonb_array_length(j->'events'), jsonb_array_length(j->'identifiers'),
                   jsonb_array_length(j->'consent_history'), jsonb_array_length(j->'inbox')) FROM y),
          ('null'::jsonb, 0, 0, 0, 0), 'and nothing else is held');

SELECT * FROM finish();
ROLLBACK;
