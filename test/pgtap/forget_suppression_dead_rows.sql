-- After cdp.forget, an inbox row carrying one of the person's identifiers
-- is dropped even when the whole row would be one dead letter, never
-- parsed as messages: its source is unknown or disabled, it is not JSON, it
-- is over cdp.max_request_bytes (its first 4 kB kept), or an envelope wrong
-- as a whole.  Someone else's such rows are still dead-lettered.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql
SET LOCAL cdp.max_request_bytes = 5000;

DO $$ BEGIN
    PERFORM pg_temp.send('r1', '{"type": "identify", "userId": "row-user", "traits": {"email": "row@example.com"}}');
    PERFORM pg_temp.run();
    PERFORM cdp.forget('user_id:row-user');
    PERFORM cdp.forget('user_id:4711');
END $$;

CREATE TEMP TABLE rows (who text, payload text, source text);
INSERT INTO rows
SELECT who, format(p, CASE WHEN p LIKE '%email%' THEN email ELSE who END), s
  FROM (VALUES ('row-user', 'row@example.com'), ('other-user', 'other@example.com')) w(who, email),
       (VALUES
        -- unknown source
        ('{"type": "track", "event": "e", "userId": "%s", "messageId": "x1"}', 'no-such-source'),
        -- unknown source, with a number numeric cannot hold
        ('{"type": "track", "event": "e", "userId": "%s", "n": 1e1000000}', 'no-such-source'),
        -- not JSON
        ('{"type": "track", "event": "e", "userId": "%s", "messageId": "x2"', 'copy'),
        -- not JSON, the value spelled with an escape
        ('{"type": "identify", "traits": {"email": "\u0020%s"}', 'copy'),
        -- an envelope wrong as a whole
        ('{"type": "track", "event": "e", "userId": "%s", "batch": 7}', 'copy'),
        -- a JSON array: not an object
        ('[{"type": "track", "event": "e", "anonymousId": "x", "context": {"traits": {"email": "%s"}}}]', 'copy')
       ) r(p, s);
-- over cdp.max_request_bytes
INSERT INTO rows
SELECT who, format('{"type": "track", "event": "e", "userId": "%s", "messageId": "x3"}', who) || repeat(' ', 6000), 'copy'
  FROM (VALUES ('row-user'), ('other-user')) w(who);
-- a user id sent as a number
INSERT INTO rows VALUES ('4711', '{"type": "track", "event": "e", "userId": 4711}', 'no-such-source');
INSERT INTO cdp.inbox (payload, source) SELECT payload, source FROM rows;

SELECT is(pg_temp.run(), 15::bigint, 'process_inbox takes the fifteen rows');
SELECT is((SELECT sum(dropped) FROM cdp.suppressions), 8::numeric,
          'the forgotten people''s eight rows are dropped and counted');
SELECT is((SELECT count(*) FROM cdp.dead_letters), 7::bigint, 'the other seven are dead letters');
SELECT is((SELECT count(*) FROM cdp.dead_letters WHERE error_code = 'processing_error'), 0::bigint,
          'each with its own error code (reading a row''s identifiers raises nothing)');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['row-user', 'row@example.com'])$$,
                'nothing of the person is dead-lettered again');

SELECT * FROM finish();
ROLLBACK;
