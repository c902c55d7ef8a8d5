-- Forgetting an identifier that split_profile took out of another profile:
-- the messages that carried it before the split stayed with that profile
-- (partitions are never rewritten); forget finds and erases them there, as
-- ingest reads identifiers (anonymousId, device id, email in any letters),
-- and that profile's counts follow.  Its other events stay.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('a1', '{"userId": "spl-keep"}', '2026-05-01 10:00+00');
    PERFORM pg_temp.send('b1', '{"userId": "spl-keep", "anonymousId": "ga-anon"}', '2026-05-02 10:00+00');
    PERFORM pg_temp.send('b2', '{"userId": "spl-keep", "context": {"device": {"id": "gd-device"}}}',
                         '2026-05-02 11:00+00');
    PERFORM pg_temp.send('b3', '{"userId": "spl-keep", "context": {"traits": {"email": " GE@Example.com"}}}',
                         '2026-05-02 12:00+00');
    PERFORM pg_temp.send('a2', '{"userId": "spl-keep"}', '2026-05-03 10:00+00');
    PERFORM pg_temp.run();
    -- what ingest keeps of b3's traits (context.traits) for the user id
    INSERT INTO cdp.identifier_traits VALUES
        ('user_id:spl-keep', '{"email": " GE@Example.com", "plan": "pro"}',
         '{"email": "2026-05-02T12:00:00Z", "plan": "2026-05-02T12:00:00Z"}')
    ON CONFLICT (identifier) DO UPDATE SET traits = excluded.traits, trait_times = excluded.trait_times;
    PERFORM cdp.split_profile(pg_temp.pid('user_id:spl-keep'), 'anonymous_id:ga-anon');
    PERFORM cdp.split_profile(pg_temp.pid('user_id:spl-keep'), 'device_id:gd-device');
    PERFORM cdp.split_profile(pg_temp.pid('user_id:spl-keep'), 'email:ge@example.com');
END $$;
INSERT INTO saved VALUES ('keep', pg_temp.pid('user_id:spl-keep'));
SELECT is((SELECT count(DISTINCT cdp.resolve(x::cdp.identifier))
             FROM unnest('{user_id:spl-keep,anonymous_id:ga-anon,device_id:gd-device,email:ge@example.com}'::text[]) x),
          4::bigint, 'setup: split into four profiles');

CREATE TEMP TABLE result AS
SELECT x AS id, (cdp.forget(x::cdp.identifier)->>'events')::int AS events
  FROM unnest('{anonymous_id:ga-anon,device_id:gd-device,email:ge@example.com}'::text[]) x;

SELECT is((SELECT events FROM result WHERE id = 'anonymous_id:ga-anon'), 1, 'the message with the anonymousId is erased');
SELECT is((SELECT events FROM result WHERE id = 'device_id:gd-device'), 1, 'the message with the device is erased');
SELECT is((SELECT events FROM result WHERE id = 'email:ge@example.com'), 1, 'the message with the email is erased');
SELECT is_empty($$ SELECT * FROM pg_temp.find_values('{ga-anon, gd-device, ge@example.com}') $$,
                'no trace of the forgotten identifiers is left');
SELECT is((SELECT array_agg(message_id ORDER BY ts) FROM cdp.events_resolved WHERE profile_id = pg_temp.saved('keep')),
          '{a1,a2}', 'the other profile keeps its own events');
SELECT is((SELECT (event_count, first_seen, last_seen) FROM cdp.profile_records WHERE profile_id = pg_temp.saved('keep')),
          (2::bigint, '2026-05-01 10:00+00'::timestamptz, '2026-05-03 10:00+00'::timestamptz),
          'and its counts follow');

SELECT is((SELECT traits->>'plan' FROM cdp.identifier_traits WHERE identifier = 'user_id:spl-keep'), 'pro',
          'the other identifier keeps its other traits');

SELECT * FROM finish();
ROLLBACK;
