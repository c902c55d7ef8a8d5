-- A pair of identifiers a message carried but a rule refused to link is no
-- link: explain_link must not show it as one, and splitting a profile must
-- not keep its parts together through it (a rebuild would not).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(7);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql
-- one device per profile within an hour
UPDATE cdp.identity_rules SET max_per_profile = 1, time_window = '1 hour' WHERE id_type = 'device_id';

DO $$ BEGIN
    PERFORM pg_temp.send('rp-1', '{"userId": "rp-u", "context": {"device": {"id": "rp-d1"}}}', '2026-05-01 10:00+00');
    PERFORM pg_temp.run();
    -- a second device within the hour: device_id:rp-d2 is refused, the pair is no link
    PERFORM pg_temp.send('rp-2', '{"userId": "rp-u", "context": {"device": {"id": "rp-d2"}}}', '2026-05-01 10:01+00');
    PERFORM pg_temp.run();
    -- hours later an anonymous id joins both
    PERFORM pg_temp.send('rp-3', '{"userId": "rp-u", "anonymousId": "rp-k"}', '2026-05-01 13:00+00');
    PERFORM pg_temp.send('rp-4', '{"anonymousId": "rp-k", "context": {"device": {"id": "rp-d2"}}}', '2026-05-01 13:01+00');
    PERFORM pg_temp.run();
END $$;

SELECT is(pg_temp.pid('device_id:rp-d2'), pg_temp.pid('user_id:rp-u'), 'the anonymous id joined the device');
SELECT is((SELECT string_agg(message_id, ' ' ORDER BY step) FROM cdp.explain_link('user_id:rp-u', 'device_id:rp-d2')),
          'rp-3 rp-4', 'explain_link shows the messages that linked them, not the refused one');

SELECT ok(count(*) > 0, 'split_profile takes the anonymous id out')
  FROM cdp.split_profile(pg_temp.pid('user_id:rp-u'), 'anonymous_id:rp-k');
SELECT isnt(pg_temp.pid('device_id:rp-d2'), pg_temp.pid('user_id:rp-u'),
            'without it nothing links them: the refused pair does not');
SELECT is((SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r),
          '0/0', 'a dry run after the split reports nothing to change');

-- a later message that links a refused pair makes it a link, with that message
DO $$ BEGIN
    PERFORM pg_temp.send('rp-5', '{"userId": "rp-u", "context": {"device": {"id": "rp-d2"}}}', '2026-05-01 16:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT string_agg(message_id, ' ' ORDER BY step) FROM cdp.explain_link('user_id:rp-u', 'device_id:rp-d2')),
          'rp-5', 'a refused pair linked later is a link of the message that linked it');
SELECT is((SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(dry_run => true) r),
          '0/0', '... and a dry run agrees');

SELECT * FROM finish();
ROLLBACK;
