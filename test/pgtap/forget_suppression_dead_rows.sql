-- After cdp.forget, an inbox row carrying one of the person's identifiers
-- is dropped even when the whole row would be one dead letter, never
-- parsed as messages: its source is unknown or disabled, it is not JSON, it
-- is over cdp.max_request_bytes (its first 4 kB kept), or an envelope wrong
-- as a whole.  Someone else's such rows are still dead-lettered.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql
SET LOCAL cdp.max_request_bytes = 5000;

DO $$ BEGIN
    PERFORM pg_temp.send('r1', '{"type": "identify", "userId": "row-user", "traits": {"email": "row@example.com"}}');
    PERFORM pg_temp.run();
    PERFORM cdp.forget('user_id:row-user');
END $$;

CREATE TEMP TABLE rows (who text, payload text, source text);
INSERT INTO rows
SELECT who, format(p, CASE WHEN p LIKE '%email%' THEN email ELSE who END), s
  FROM (VALUES ('row-user', 'row@example.com'), ('other-user', 'other@example.com')) w(who, email),
       (VALUES
        -- unknown source
        ('{"type": "track", "event": "e", "userId": "%s", "messageId": "x1"}', 'no-such-source'),
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
INSERT INTO cdp.inbox (payload, source) SELECT payload, source FROM rows;

SELECT is(pg_temp.run(), 12::bigint, 'process_inbox takes the twelve rows');
SELECT is((SELECT sum(dropped) FROM cdp.suppressions), 6::numeric,
          'the person''s six rows are dropped and counted');
SELECT is((SELECT count(*) FROM cdp.dead_letters), 6::bigint, 'the other six are dead letters');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['row-user', 'row@example.com'])$$,
                'nothing of the person is dead-lettered again');

SELECT * FROM finish();
ROLLBACK;
