-- messageId deduplication within cdp.dedup_window: by messageId only, never
-- by content; a missing messageId gets a fresh one.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(26);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;
DO $$ BEGIN PERFORM cdp.create_source('web'); PERFORM cdp.create_source('ios'); END $$;

CREATE FUNCTION pg_temp.send(msg jsonb, src text DEFAULT 'sql') RETURNS bigint LANGUAGE sql AS $$
    SELECT cdp.ingest(msg, src);
    SELECT cdp.process_inbox();
$$;
CREATE FUNCTION pg_temp.stored(id text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM cdp.events WHERE message_id = id;
$$;

-- across calls
SELECT is(pg_temp.send('{"type": "track", "userId": "u", "event": "First", "messageId": "m-1",
                         "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:00:01Z"}'),
          1::bigint, 'a first message is taken');
SELECT is(pg_temp.send('{"type": "track", "userId": "u", "event": "First", "messageId": "m-1",
                         "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:05:00Z"}'),
          1::bigint, 'its retry is taken (counted) too');
SELECT is(pg_temp.stored('m-1'), 1, 'the same messageId sent twice, in two calls, is stored once');
SELECT is((SELECT sent_at FROM cdp.events WHERE message_id = 'm-1'), '2026-01-01 00:00:01+00'::timestamptz,
          'the first copy is the one kept (an SDK retry with a new sentAt is a duplicate)');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'a duplicate is not a dead letter');

-- inside one batch envelope
SELECT is(pg_temp.send('{"batch": [
    {"type": "track", "userId": "u", "event": "Batch First", "messageId": "m-2"},
    {"type": "track", "userId": "u", "event": "Batch Second", "messageId": "m-2"},
    {"type": "track", "userId": "u", "event": "Other", "messageId": "m-3"}]}'),
    3::bigint, 'all three items of the envelope are taken');
SELECT is(pg_temp.stored('m-2'), 1, 'the same messageId twice inside one envelope is stored once');
SELECT is((SELECT event FROM cdp.events WHERE message_id = 'm-2'), 'Batch First',
          'inside a batch the first item wins');
SELECT is(pg_temp.stored('m-3'), 1, 'its sibling with another messageId is stored');

-- in two inbox rows taken by one process_inbox call
DO $$ BEGIN
    PERFORM cdp.ingest('{"type": "track", "userId": "u", "event": "Row One", "messageId": "m-4"}');
    PERFORM cdp.ingest('{"type": "track", "userId": "u", "event": "Row Two", "messageId": "m-4"}');
END $$;
SELECT is(cdp.process_inbox(), 2::bigint, 'both rows are taken in one call');
SELECT is(pg_temp.stored('m-4'), 1, 'the same messageId in two rows of one call is stored once');
SELECT is((SELECT event FROM cdp.events WHERE message_id = 'm-4'), 'Row One', 'the earlier row wins');

-- by messageId only
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Same Content", "messageId": "c-1"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Same Content", "messageId": "c-2"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Content A", "messageId": "c-3"}');
    PERFORM pg_temp.send('{"type": "identify", "userId": "someone-else", "messageId": "c-3"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Case", "messageId": "CASE"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Case", "messageId": "case"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "From Web", "messageId": "src-1"}', 'web');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "From iOS", "messageId": "src-1"}', 'ios');
END $$;
SELECT is((SELECT count(*)::int FROM cdp.events WHERE event = 'Same Content'), 2,
          'the same content under two messageIds is stored twice');
SELECT results_eq($$SELECT type, event FROM cdp.events WHERE message_id = 'c-3'$$,
                  $$VALUES ('track', 'Content A')$$,
                  'different content under one messageId is stored once, the first');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE event = 'Case'), 2,
          'messageIds are compared exactly (case matters)');
SELECT results_eq($$SELECT source FROM cdp.events WHERE message_id = 'src-1'$$, $$VALUES ('web')$$,
                  'the same messageId from another source is a duplicate');

-- a dead-lettered message does not use up its messageId
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "messageId": "fixme"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Fixed", "messageId": "fixme"}');
END $$;
SELECT is(pg_temp.stored('fixme'), 1, 'a messageId whose first message was dead-lettered is accepted later');

-- missing messageId
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "gen", "event": "No Id"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "gen", "event": "No Id"}');
    PERFORM pg_temp.send('{"type": "track", "userId": "gen", "event": "Empty Id", "messageId": ""}');
    PERFORM pg_temp.send('{"type": "track", "userId": "gen", "event": "Null Id", "messageId": null}');
END $$;
SELECT is((SELECT count(*)::int FROM cdp.events WHERE user_id = 'gen'), 4,
          'messages without a messageId are never deduplicated');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE user_id = 'gen'
            AND message_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'), 4,
          'a missing, empty or null messageId is replaced by a version-4 uuid');
SELECT is((SELECT count(DISTINCT message_id)::int FROM cdp.events WHERE user_id = 'gen'), 4,
          'each generated messageId is different');

-- the window
SET LOCAL cdp.dedup_window = '1s';
SELECT is(pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}'),
          1::bigint, 'a message is taken under a 1 s window');
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}');
END $$;
SELECT is(pg_temp.stored('w-1'), 1, 'within the window its repeat is a duplicate');
UPDATE cdp.message_ids SET seen_at = seen_at - interval '1 hour';
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}');
END $$;
SELECT is(pg_temp.stored('w-1'), 2, 'after the window the same messageId is accepted again');
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}');
END $$;
SELECT is(pg_temp.stored('w-1'), 2, 'and the window starts again from that acceptance');
RESET cdp.dedup_window;
UPDATE cdp.message_ids SET seen_at = seen_at - interval '23 hours';
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}');
END $$;
SELECT is(pg_temp.stored('w-1'), 2, 'the default window is 24 hours: 23 hours later it is still a duplicate');
UPDATE cdp.message_ids SET seen_at = seen_at - interval '2 hours';
DO $$ BEGIN
    PERFORM pg_temp.send('{"type": "track", "userId": "u", "event": "Window", "messageId": "w-1"}');
END $$;
SELECT is(pg_temp.stored('w-1'), 3, '25 hours later it is accepted');

SELECT * FROM finish();
ROLLBACK;
