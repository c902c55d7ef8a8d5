-- Ingest: the convenience wrappers, cdp.ingest for every message type,
-- receipt time, and cdp.process_inbox's limits and counts.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(49);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

-- process_inbox on an empty inbox
SELECT is(cdp.process_inbox(), 0::bigint, 'process_inbox on an empty inbox returns 0');
SELECT is(cdp.process_inbox(10), 0::bigint, 'process_inbox(10) on an empty inbox returns 0');

-- the wrappers
SELECT is(cdp.track('u1', 'Signed Up', '{"plan": "pro"}', 'anon-1', '2026-01-05 10:00:00+00'), 1::bigint,
          'track returns 1');
SELECT is(cdp.identify('u1', '{"email": "a@example.com"}', 'anon-1', '2026-01-05 10:00:01+00'), 1::bigint,
          'identify returns 1');
SELECT is(cdp.alias('anon-1', 'u1', '2026-01-05 10:00:02+00'), 1::bigint, 'alias returns 1');
SELECT is(cdp.track('u2', 'Defaults Only'), 1::bigint, 'track with only user and event returns 1');
SELECT is(cdp.identify(NULL, '{"k": 1}', 'anon-only', '2026-01-05 10:00:03+00'), 1::bigint,
          'identify with only an anonymous id returns 1');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 5, 'the wrappers enqueue one inbox row each');
SELECT is((SELECT count(*)::int FROM cdp.inbox WHERE received_at = now() AND source = 'sql'), 5,
          'received_at is set at enqueue, and the default source is sql');
SELECT is(cdp.process_inbox(), 5::bigint, 'process_inbox returns how many messages it took');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 0, 'the inbox is drained');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'no wrapper message is dead-lettered');

SELECT results_eq(
    $$SELECT type, user_id, anonymous_id, previous_id, event, properties, traits, ts
        FROM cdp.events WHERE user_id = 'u1' AND type = 'track'$$,
    $$VALUES ('track', 'u1', 'anon-1', NULL::text, 'Signed Up', '{"plan": "pro"}'::jsonb, NULL::jsonb,
              '2026-01-05 10:00:00+00'::timestamptz)$$,
    'track stores type, user_id, anonymous_id, event, properties and ts');
SELECT results_eq(
    $$SELECT type, user_id, anonymous_id, previous_id, event, properties, traits, ts
        FROM cdp.events WHERE user_id = 'u1' AND type = 'identify'$$,
    $$VALUES ('identify', 'u1', 'anon-1', NULL::text, NULL::text, NULL::jsonb,
              '{"email": "a@example.com"}'::jsonb, '2026-01-05 10:00:01+00'::timestamptz)$$,
    'identify stores type, user_id, anonymous_id, traits and ts');
SELECT results_eq(
    $$SELECT type, user_id, anonymous_id, previous_id, event, ts
        FROM cdp.events WHERE type = 'alias'$$,
    $$VALUES ('alias', 'u1', NULL::text, 'anon-1', NULL::text, '2026-01-05 10:00:02+00'::timestamptz)$$,
    'alias stores previous_id, user_id and ts');
SELECT results_eq(
    $$SELECT properties, anonymous_id, ts, received_at FROM cdp.events WHERE user_id = 'u2'$$,
    $$VALUES ('{}'::jsonb, NULL::text, now(), now())$$,
    'track defaults: empty properties, no anonymous id, ts = now()');
SELECT results_eq(
    $$SELECT user_id, anonymous_id, traits FROM cdp.events WHERE anonymous_id = 'anon-only'$$,
    $$VALUES (NULL::text, 'anon-only', '{"k": 1}'::jsonb)$$,
    'identify with only an anonymous id stores it');
SELECT is((SELECT count(DISTINCT message_id)::int FROM cdp.events), 5,
          'every wrapper message gets its own messageId');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE source = 'sql'), 5,
          'events keep the source they were enqueued with');

-- page, screen and group through cdp.ingest
SELECT is(cdp.ingest('{"type": "page", "userId": "u3", "name": "Pricing", "properties": {"path": "/pricing"},
                       "messageId": "pg-1", "timestamp": "2026-01-06T08:00:00Z"}', 'web'), 1::bigint,
          'ingest returns 1 for a page');
SELECT is(cdp.ingest('{"type": "screen", "anonymousId": "dev-9", "name": "Home",
                       "messageId": "sc-1", "timestamp": "2026-01-06T08:00:01Z"}', 'ios'), 1::bigint,
          'ingest returns 1 for a screen');
SELECT is(cdp.ingest('{"type": "group", "userId": "u3", "groupId": "acme", "traits": {"seats": 10},
                       "messageId": "gr-1", "timestamp": "2026-01-06T08:00:02Z"}', 'web'), 1::bigint,
          'ingest returns 1 for a group');
SELECT is(cdp.ingest('{"type": "group", "userId": "u3", "groupId": 42,
                       "messageId": "gr-2", "timestamp": "2026-01-06T08:00:03Z"}', 'web'), 1::bigint,
          'ingest returns 1 for a group with a numeric groupId');
SELECT is(cdp.process_inbox(), 4::bigint, 'process_inbox took the four');
SELECT results_eq(
    $$SELECT message_id, source, type, name, user_id, anonymous_id, group_id, properties, traits, ts
        FROM cdp.events WHERE message_id IN ('pg-1', 'sc-1', 'gr-1', 'gr-2') ORDER BY message_id$$,
    $$VALUES ('gr-1', 'web', 'group', NULL::text, 'u3', NULL::text, 'acme', NULL::jsonb,
              '{"seats": 10}'::jsonb, '2026-01-06 08:00:02+00'::timestamptz),
             ('gr-2', 'web', 'group', NULL::text, 'u3', NULL::text, '42', NULL::jsonb, NULL::jsonb,
              '2026-01-06 08:00:03+00'::timestamptz),
             ('pg-1', 'web', 'page', 'Pricing', 'u3', NULL::text, NULL::text,
              '{"path": "/pricing"}'::jsonb, NULL::jsonb, '2026-01-06 08:00:00+00'::timestamptz),
             ('sc-1', 'ios', 'screen', 'Home', NULL::text, 'dev-9', NULL::text, NULL::jsonb, NULL::jsonb,
              '2026-01-06 08:00:01+00'::timestamptz)$$,
    'page and screen store name, group stores group_id and traits');

-- type is case-insensitive and stored lower-case
DO $$ BEGIN PERFORM cdp.ingest('{"type": "Track", "userId": "u4", "event": "Mixed Case", "messageId": "case-1"}'); END $$;
DO $$ BEGIN PERFORM cdp.ingest('{"type": "IDENTIFY", "userId": "u4", "messageId": "case-2"}'); END $$;
DO $$ BEGIN PERFORM cdp.process_inbox(); END $$;
SELECT results_eq($$SELECT type FROM cdp.events WHERE message_id IN ('case-1', 'case-2') ORDER BY message_id$$,
                  $$VALUES ('track'), ('identify')$$,
                  'type is case-insensitive ("Track", "IDENTIFY") and stored lower-case');

-- received_at is the enqueue time carried through, not the processing time
DO $$ BEGIN PERFORM cdp.ingest('{"type": "track", "userId": "u5", "event": "Queued", "messageId": "rcv-1"}'); END $$;
SELECT is((SELECT received_at FROM cdp.inbox WHERE payload LIKE '%rcv-1%'), now(),
          'the inbox row has received_at before processing');
UPDATE cdp.inbox SET received_at = '2026-01-03 04:05:06+00' WHERE payload LIKE '%rcv-1%';
DO $$ BEGIN PERFORM cdp.process_inbox(); END $$;
SELECT is((SELECT received_at FROM cdp.events WHERE message_id = 'rcv-1'), '2026-01-03 04:05:06+00'::timestamptz,
          'the stored received_at is the inbox row''s, not the processing time');
SELECT is((SELECT ts FROM cdp.events WHERE message_id = 'rcv-1'), '2026-01-03 04:05:06+00'::timestamptz,
          'a message without timestamp is stored at its receipt time');

-- process_inbox(max_messages)
DO $$ BEGIN PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'lim', 'event', 'Limited',
                                     'messageId', 'lim-' || i))
  FROM generate_series(1, 5) i; END $$;
SELECT is(cdp.process_inbox(2), 2::bigint, 'process_inbox(2) takes two');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 3, 'three stay queued');
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE user_id = 'lim' ORDER BY message_id$$,
                  $$VALUES ('lim-1'), ('lim-2')$$,
                  'the oldest two were taken, in inbox order');
SELECT is(cdp.process_inbox(0), 0::bigint, 'process_inbox(0) takes nothing');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 3, 'process_inbox(0) leaves the inbox alone');
SELECT throws_ok($$SELECT cdp.process_inbox(-1)$$, '22023', 'max_messages must not be negative',
                 'a negative max_messages is refused with 22023');
SELECT is(cdp.process_inbox(NULL), 3::bigint, 'process_inbox(NULL) takes everything left');
SELECT is(cdp.process_inbox(), 0::bigint, 'and then there is nothing');

-- the limit counts inbox rows: an envelope is taken whole and all of it counted
DO $$ BEGIN PERFORM cdp.ingest('{"batch": [{"type": "track", "userId": "env", "event": "A"},
                              {"type": "track", "userId": "env", "event": "B"},
                              {"type": "track", "userId": "env", "event": "C"}]}'); END $$;
DO $$ BEGIN PERFORM cdp.ingest('{"type": "track", "userId": "env", "event": "D"}'); END $$;
SELECT is(cdp.process_inbox(1), 3::bigint, 'process_inbox(1) takes one envelope and counts its three messages');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 1, 'the next row waits');
SELECT is(cdp.process_inbox(), 1::bigint, 'the rest is taken by the next call');

-- several batches in one call (cdp.batch_size)
SET LOCAL cdp.batch_size = 2;
DO $$ BEGIN PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'bs', 'event', 'Batched',
                                     'messageId', 'bs-' || i))
  FROM generate_series(1, 7) i; END $$;
SELECT is(cdp.process_inbox(), 7::bigint, 'process_inbox goes on batch after batch until the inbox is empty');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE user_id = 'bs'), 7, 'every batch is stored');
SELECT is(cdp.process_inbox(5), 0::bigint, 'a limit above what is queued is fine');
RESET cdp.batch_size;

-- a counted message is stored or dead, never lost
DO $$ BEGIN PERFORM cdp.ingest('{"type": "track", "userId": "u6", "messageId": "no-event"}'); END $$;
DO $$ BEGIN PERFORM cdp.ingest('{"type": "track", "userId": "u6", "event": "Fine", "messageId": "fine-1"}'); END $$;
SELECT is(cdp.process_inbox(), 2::bigint, 'a bad message is counted as taken');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE payload LIKE '%no-event%'), 1,
          'the bad message is a dead letter');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'fine-1'), 1,
          'its neighbour is stored');

-- cdp.ingest with a NULL source must not silently drop the message: it
-- either refuses it or enqueues it
CREATE FUNCTION pg_temp.ingest_null_source() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before int := (SELECT count(*) FROM cdp.inbox);
    n bigint;
BEGIN
    BEGIN
        n := cdp.ingest('{"type": "track", "userId": "u7", "event": "Null Source"}', NULL);
    EXCEPTION WHEN OTHERS THEN
        RETURN 'refused';
    END;
    IF (SELECT count(*) FROM cdp.inbox) > before THEN
        RETURN 'enqueued';
    END IF;
    RETURN 'dropped, ingest returned ' || coalesce(n::text, 'NULL');
END
$$;
SELECT ok(pg_temp.ingest_null_source() IN ('refused', 'enqueued'),
          'cdp.ingest(payload, NULL) refuses or enqueues, never drops silently');
TRUNCATE cdp.inbox;

-- the wrappers' own timestamps must parse whatever the session's TimeZone:
-- a historical offset with seconds (Asia/Kolkata in 1900 is +05:21:10)
SET LOCAL timezone = 'Asia/Kolkata';
DO $$ BEGIN PERFORM cdp.track('u8', 'Historical', '{}', NULL, '1900-01-01 12:00:00+00'); END $$;
DO $$ BEGIN PERFORM cdp.identify('u8', '{}', NULL, '1900-01-01 12:00:01+00'); END $$;
SET LOCAL timezone = 'UTC';
SET LOCAL cdp.max_event_age = 2147483647;	-- 1900 is older than the default accepts
DO $$ BEGIN PERFORM cdp.process_inbox(); END $$;
RESET cdp.max_event_age;
SELECT is((SELECT ts FROM cdp.events WHERE user_id = 'u8' AND type = 'track'),
          '1900-01-01 12:00:00+00'::timestamptz,
          'track with a ts whose zone offset has seconds is stored at that ts');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE payload LIKE '%u8%'), 0,
          'no wrapper message is dead-lettered for the session''s TimeZone');

SELECT * FROM finish();
ROLLBACK;
