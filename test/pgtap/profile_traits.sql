-- Profile traits: identify traits and context.traits on any message type
-- merge into the profile key by key, and for each key the value with the
-- latest event time wins whatever order messages arrive in; a group call's
-- traits are the company's and never the person's; bounds per message.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(18);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

-- the newer identify arrives first, the older one after it, in later batches
DO $$ BEGIN
    PERFORM pg_temp.send('pt-2', '{"type": "identify", "userId": "pt-u1",
        "traits": {"plan": "pro", "name": "Ann B"}}', '2026-04-02 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('pt-1', '{"type": "identify", "userId": "pt-u1",
        "traits": {"plan": "free", "name": "Ann", "city": "Oslo"}}', '2026-04-01 10:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:pt-u1'), '{"plan": "pro", "name": "Ann B", "city": "Oslo"}',
          'a late identify cannot overwrite newer traits, and adds the keys it alone sets');
SELECT is((SELECT trait_times FROM cdp.profiles p JOIN cdp.profile_records r USING (profile_id)
            WHERE p.profile_id = pg_temp.pid('user_id:pt-u1')) ->> 'plan',
          '2026-04-02T10:00:00.000000Z', 'each key keeps the event time of its value');

-- both orders inside one batch
DO $$ BEGIN
    PERFORM pg_temp.send('pt-4', '{"type": "identify", "userId": "pt-u2", "traits": {"plan": "b"}}', '2026-04-02 10:00+00');
    PERFORM pg_temp.send('pt-3', '{"type": "identify", "userId": "pt-u2", "traits": {"plan": "a"}}', '2026-04-01 10:00+00');
    PERFORM pg_temp.send('pt-5', '{"type": "identify", "userId": "pt-u3", "traits": {"plan": "a"}}', '2026-04-01 10:00+00');
    PERFORM pg_temp.send('pt-6', '{"type": "identify", "userId": "pt-u3", "traits": {"plan": "b"}}', '2026-04-02 10:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(ARRAY[pg_temp.traits('user_id:pt-u2') ->> 'plan', pg_temp.traits('user_id:pt-u3') ->> 'plan'],
          ARRAY['b', 'b'], 'within one batch the latest event wins in either arrival order');

-- context.traits on other types; a group call's own traits are not the person's
DO $$ BEGIN
    PERFORM pg_temp.send('pt-7', '{"type": "track", "userId": "pt-u4", "context": {"traits": {"tier": "gold"}}}');
    PERFORM pg_temp.send('pt-8', '{"type": "page", "userId": "pt-u4", "context": {"traits": {"lang": "de"}}}');
    PERFORM pg_temp.send('pt-9', '{"type": "group", "userId": "pt-u4", "groupId": "acme",
        "traits": {"name": "Acme Inc", "employees": 50}, "context": {"traits": {"role": "cto"}}}');
    PERFORM pg_temp.send('pt-10', '{"type": "track", "userId": "pt-u4", "traits": {"top": "level"}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:pt-u4'), '{"tier": "gold", "lang": "de", "role": "cto"}',
          'context.traits count on every type; group traits and a track''s top-level traits do not');

-- an identify's own traits win over its context.traits for the same key
DO $$ BEGIN
    PERFORM pg_temp.send('pt-11', '{"type": "identify", "userId": "pt-u5", "traits": {"plan": "own"},
        "context": {"traits": {"plan": "ctx", "extra": 1}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:pt-u5'), '{"plan": "own", "extra": 1}',
          'an identify''s traits win over its context.traits');

-- values of every JSON type, null included, are kept as sent
DO $$ BEGIN
    PERFORM pg_temp.send('pt-12', '{"type": "identify", "userId": "pt-u6", "traits":
        {"n": 1.5, "b": true, "o": {"city": "Rome"}, "a": [1, 2], "z": null}}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('pt-13', '{"type": "identify", "userId": "pt-u6", "traits": {"o": {"zip": "00100"}}}',
                         '2026-04-03 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:pt-u6'), '{"n": 1.5, "b": true, "o": {"zip": "00100"}, "a": [1, 2], "z": null}',
          'values of any JSON type are kept; a nested object is one value, replaced whole');

-- same event time, different values: a fixed order decides, whatever the arrival order
DO $$ BEGIN
    PERFORM pg_temp.send('pt-14', '{"type": "identify", "userId": "pt-u7", "traits": {"k": "alpha"}}');
    PERFORM pg_temp.send('pt-15', '{"type": "identify", "userId": "pt-u7", "traits": {"k": "beta"}}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('pt-16', '{"type": "identify", "userId": "pt-u8", "traits": {"k": "beta"}}');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('pt-17', '{"type": "identify", "userId": "pt-u8", "traits": {"k": "alpha"}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(ARRAY[pg_temp.traits('user_id:pt-u7') ->> 'k', pg_temp.traits('user_id:pt-u8') ->> 'k'],
          ARRAY['beta', 'beta'], 'at the same event time the same value wins in any arrival order');

-- traits belong to the strongest identifier the message linked
SELECT is((SELECT count(*) FROM cdp.identifier_traits WHERE cdp.id_type(identifier) <> 'user_id')::int, 0,
          'traits of messages with a userId are kept under the userId');
DO $$ BEGIN
    PERFORM pg_temp.send('pt-18', '{"type": "track", "anonymousId": "pt-a9", "context": {"traits": {"seen": "ad"}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT traits FROM cdp.identifier_traits WHERE identifier = 'anonymous_id:pt-a9'), '{"seen": "ad"}',
          'an anonymous visitor''s traits are kept under the anonymousId');

-- counts and seen times stay exact
SELECT is((SELECT array[event_count::text, first_seen::text, last_seen::text] FROM cdp.profiles
            WHERE profile_id = pg_temp.pid('user_id:pt-u1')),
          array['2', '2026-04-01 10:00:00+00', '2026-04-02 10:00:00+00'],
          'event_count, first_seen and last_seen are exact beside the traits');

-- bounds: 100 keys a message, the rest skipped and recorded
DO $$ BEGIN
    PERFORM pg_temp.send('pt-19', jsonb_build_object('type', 'identify', 'userId', 'pt-u10', 'traits',
        (SELECT jsonb_object_agg(format('k%s', lpad(i::text, 3, '0')), i) FROM generate_series(1, 150) i)));
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM jsonb_object_keys(pg_temp.traits('user_id:pt-u10')))::int, 100,
          'a message sets at most 100 traits');
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE message_id = 'pt-19' AND rule = 'too_many_traits')::int, 1,
          '... the rest are skipped and recorded as a violation');
SELECT is((SELECT count(*) FROM cdp.events WHERE message_id = 'pt-19')::int, 1,
          '... and the event itself is stored whole');
-- 256 keys an identifier: stored keys stay, new keys past it are skipped
DO $$ BEGIN
    FOR b IN 0..2 LOOP
        PERFORM pg_temp.send('pt-20-' || b, jsonb_build_object('type', 'identify', 'userId', 'pt-u10', 'traits',
            (SELECT jsonb_object_agg(format('b%s-%s', b, lpad(i::text, 3, '0')), i) FROM generate_series(1, 100) i)));
    END LOOP;
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identifier_traits i, jsonb_object_keys(i.traits)
            WHERE identifier = 'user_id:pt-u10')::int, 256, 'an identifier holds at most 256 trait keys');
SELECT ok((SELECT traits ?& (SELECT array_agg(format('k%s', lpad(i::text, 3, '0'))) FROM generate_series(1, 100) i)
             FROM cdp.identifier_traits WHERE identifier = 'user_id:pt-u10'),
          '... keys it held before stay');

-- a value over 2 kB or a key over 128 bytes is skipped and recorded, the rest kept
DO $$ BEGIN
    PERFORM pg_temp.send('pt-21', jsonb_build_object('type', 'identify', 'userId', 'pt-u11', 'traits',
        jsonb_build_object('bio', repeat('x', 3000), repeat('k', 200), 1, 'ok', 'yes',
                           'list', (SELECT jsonb_agg(i) FROM generate_series(1, 1000) i))));
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.traits('user_id:pt-u11'), '{"ok": "yes"}', 'a trait value over 2 kB or a key over 128 bytes is skipped');
SELECT is((SELECT detail FROM cdp.identity_violations WHERE message_id = 'pt-21' AND rule = 'trait_too_large'),
          '3 traits skipped, "bio" the first: keys are at most 128 bytes, values at most 2048 bytes as jsonb',
          '... and recorded as a violation');

SELECT is(pg_temp.state_drift(), 0::bigint, 'every profile''s traits equal a recompute from its identifiers');

SELECT * FROM finish();
ROLLBACK;
