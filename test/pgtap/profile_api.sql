-- The profile API's answers (api.md "Profiles, consent, privacy"):
-- cdp.profile_api_traits and cdp.profile_api_audiences answer for a profile
-- only what a purpose may see, exactly as a generated profile view of that
-- purpose shows it, and NULL for a person unknown, forgotten, merged into
-- nothing visible, or who did not grant the purpose.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(27);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE SCHEMA bi;
TRUNCATE cdp.trait_definitions CASCADE;

CREATE FUNCTION pg_temp.set_state(id text, traits jsonb, consent jsonb) RETURNS void LANGUAGE sql AS $$
    UPDATE cdp.profile_records SET traits = $2, consent = $3 WHERE profile_id = pg_temp.pid($1)
$$;
CREATE FUNCTION pg_temp.traits(id text, purpose text DEFAULT 'personalization') RETURNS jsonb LANGUAGE sql AS $$
    SELECT cdp.profile_api_traits(cdp.resolve(id::cdp.identifier), purpose)
$$;
CREATE FUNCTION pg_temp.granted(VARIADIC purposes text[]) RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(jsonb_object_agg(p, '{"granted": true}'::jsonb), '{}') FROM unnest(purposes) p
$$;

-- a, b, c; m and m2 merge, so m2's record is merged away
SELECT pg_temp.send('m1', '{"type": "identify", "userId": "a"}');
SELECT pg_temp.send('m2', '{"type": "identify", "userId": "b"}');
SELECT pg_temp.send('m3', '{"type": "identify", "userId": "c"}');
SELECT pg_temp.send('m4', '{"type": "identify", "userId": "m"}');
SELECT pg_temp.send('m5', '{"type": "identify", "anonymousId": "m2"}');
SELECT pg_temp.run();
INSERT INTO saved SELECT 'm2', pg_temp.pid('anonymous_id:m2');
SELECT pg_temp.send('m6', '{"type": "track", "anonymousId": "m2", "userId": "m", "event": "Linked"}');
SELECT pg_temp.run();
SELECT is((SELECT merged_into FROM cdp.profile_records WHERE profile_id = pg_temp.saved('m2')), pg_temp.pid('user_id:m'),
          'setup: m2''s first profile was merged into m''s');

SELECT cdp.define_trait('age', 'int', 'personalization');
SELECT cdp.define_trait('vip', 'bool', 'personalization');
SELECT cdp.define_trait('signup', 'timestamptz', 'personalization');
SELECT cdp.define_trait('tags', 'text[]', 'personalization');
SELECT cdp.define_trait('prefs', 'jsonb', 'personalization');
SELECT cdp.define_trait('email', 'text', 'marketing');
-- a: granted personalization only; b: personalization and marketing;
-- c: nothing (personalization is denied by default); m: personalization
SELECT pg_temp.set_state('user_id:a', '{"age": "41", "vip": true, "signup": "2026-01-02T03:04:05Z",
                                        "tags": "{x,y}", "prefs": {"lang": "fr"}, "email": "a@x.io",
                                        "nick": "undeclared"}', pg_temp.granted('personalization'));
SELECT pg_temp.set_state('user_id:b', '{"age": "old", "vip": null, "email": "b@x.io"}',
                         pg_temp.granted('personalization', 'marketing'));
SELECT pg_temp.set_state('user_id:c', '{"age": 3, "email": "c@x.io"}', '{}');
SELECT pg_temp.set_state('user_id:m', '{"age": 7}', pg_temp.granted('personalization'));

SELECT is(pg_temp.traits('user_id:a'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:a'),
                             'traits', jsonb_build_object('age', 41, 'vip', true, 'signup', '2026-01-02T03:04:05+00:00',
                                                          'tags', jsonb_build_array('x', 'y'), 'prefs', '{"lang": "fr"}'::jsonb)),
          'a consenting person: every declared trait of the purpose, typed (a text "41" becomes 41), undeclared ones left out');
SELECT is(pg_temp.traits('user_id:a') -> 'traits' -> 'email', NULL,
          'a trait of another purpose the person did not grant is left out');
SELECT is(pg_temp.traits('user_id:b') -> 'traits',
          '{"email": "b@x.io"}'::jsonb,
          'a trait of another purpose the person granted shows; values that do not convert, and JSON null, are left out');
SELECT is(pg_temp.traits('user_id:c'), NULL, 'a person who did not grant the purpose: NULL');
SELECT is(pg_temp.traits('user_id:c', 'analytics'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:c'), 'traits', '{}'::jsonb),
          'a purpose granted by default answers, without traits of purposes not granted');
SELECT is(pg_temp.traits('user_id:b', 'marketing') -> 'traits',
          '{"email": "b@x.io"}'::jsonb,
          'traits of a purpose granted show to another purpose too (vip is JSON null, age does not convert)');
SELECT is(pg_temp.traits('user_id:nobody'), NULL, 'an unknown identifier: NULL');
SELECT is(cdp.profile_api_traits(-1, 'personalization'), NULL, 'an unknown profile id: NULL');
SELECT is(cdp.profile_api_traits(NULL, 'personalization'), NULL, 'a NULL profile id: NULL');
SELECT is(pg_temp.traits('user_id:a', 'nosuch'), NULL, 'a purpose that does not exist: NULL');

-- merged profiles answer for their canonical profile
SELECT is(cdp.profile_api_traits(pg_temp.saved('m2'), 'personalization'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:m'), 'traits', '{"age": 7}'::jsonb),
          'a merged-away profile id answers for its canonical profile');
SELECT is(cdp.profile_api_audiences(pg_temp.saved('m2'), 'personalization'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:m'), 'audiences', '[]'::jsonb),
          'audiences: the same');
SELECT is(pg_temp.traits('anonymous_id:m2'), pg_temp.traits('user_id:m'), 'either identifier gives the same answer');

-- the same rule as a generated profile view of the purpose
SELECT cdp.create_profile_view('bi.personal', 'personalization');
SELECT is((SELECT array_agg(profile_id ORDER BY profile_id) FROM bi.personal),
          (SELECT array_agg(profile_id ORDER BY profile_id) FROM cdp.profile_records
            WHERE cdp.profile_api_traits(profile_id, 'personalization') ->> 'profile_id' = profile_id::text),
          'the profiles that answer are those the purpose''s profile view shows');
SELECT is((SELECT jsonb_strip_nulls(to_jsonb(p) - 'profile_id') FROM bi.personal p WHERE profile_id = pg_temp.pid('user_id:b')),
          pg_temp.traits('user_id:b') -> 'traits', 'and their traits are the view''s non-NULL columns');

-- audiences: the current memberships, each shown under its own purpose's rule
SELECT is(cdp.profile_api_audiences(pg_temp.pid('user_id:a'), 'personalization'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:a'), 'audiences', '[]'::jsonb),
          'audiences of a consenting person in none: an empty list');
SELECT cdp.define_audience('adults', 'age >= 18', 'personalization');
SELECT cdp.define_audience('everyone', 'age IS NULL OR age >= 0', 'marketing');
SELECT cdp.define_audience('kids', 'age < 18', 'analytics');
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(cdp.profile_api_audiences(pg_temp.pid('user_id:a'), 'personalization'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:a'), 'audiences', '["adults"]'::jsonb),
          'a member of an audience of the purpose: listed; of a purpose the person did not grant: not');
SELECT is(cdp.profile_api_audiences(pg_temp.pid('user_id:b'), 'personalization') -> 'audiences',
          '["everyone"]'::jsonb, 'an audience of another purpose the person granted: listed');
SELECT is(cdp.profile_api_audiences(pg_temp.saved('m2'), 'personalization'),
          jsonb_build_object('profile_id', pg_temp.pid('user_id:m'), 'audiences', '["kids"]'::jsonb),
          'a merged-away profile id: the canonical profile''s audiences (analytics granted by default)');
SELECT is(cdp.profile_api_audiences(pg_temp.pid('user_id:b'), 'marketing') -> 'audiences',
          '["everyone"]'::jsonb, 'the same person to another purpose: what that purpose may see');
SELECT is(cdp.profile_api_audiences(pg_temp.pid('user_id:c'), 'personalization'), NULL,
          'audiences of a person who did not grant the purpose: NULL');

-- computed traits, under their purpose like declared ones
SELECT cdp.define_computed_trait('links', 'count', 'Linked', purpose => 'personalization');
SELECT cdp.define_computed_trait('ads_seen', 'count', 'Ad Seen', purpose => 'advertising');
SELECT pg_temp.set_state('user_id:m', '{}', '{}');
SELECT is(pg_temp.traits('user_id:m', 'analytics') -> 'traits',
          '{}'::jsonb, 'computed traits of purposes the person did not grant: absent');
SELECT pg_temp.set_state('user_id:m', '{}', pg_temp.granted('personalization'));
SELECT is(pg_temp.traits('user_id:m') -> 'traits', '{"links": 1}'::jsonb,
          'a computed trait of the purpose: its value; a count of nothing under an ungranted purpose: absent');

-- consent withdrawn, forgotten
SELECT pg_temp.set_state('user_id:a', '{"age": 41}', '{"personalization": {"granted": false}}');
SELECT is(pg_temp.traits('user_id:a'), NULL, 'consent withdrawn: NULL');
SELECT cdp.forget('user_id:b');
SELECT is(pg_temp.traits('user_id:b'), NULL, 'a forgotten person: NULL');

-- trait_json converts as trait_as does
SELECT is(cdp.trait_json('{"n": "12.50"}', 'n', 'numeric'), to_jsonb(cdp.trait_as('{"n": "12.50"}', 'n', NULL::numeric)),
          'trait_json gives the JSON of what trait_as gives');

SELECT * FROM finish();
ROLLBACK;
