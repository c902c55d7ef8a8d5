-- A writeKey is never stored: not in the inbox (cdp.ingest strips it from
-- the envelope and from every item), not in events, not in dead letters;
-- payloads that cannot be parsed (bad JSON, too large) are stored with every
-- writeKey value redacted, never with the key.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(20);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

-- rows anywhere holding a key that starts with SECRET
CREATE FUNCTION pg_temp.leaks() RETURNS int LANGUAGE sql AS $$
    SELECT ((SELECT count(*) FROM cdp.inbox WHERE payload LIKE '%SECRET%') +
            (SELECT count(*) FROM cdp.events e WHERE to_jsonb(e)::text LIKE '%SECRET%') +
            (SELECT count(*) FROM cdp.dead_letters WHERE payload LIKE '%SECRET%'))::int;
$$;

-- cdp.ingest: keys of batch items are stripped before the payload is queued
SELECT is(cdp.ingest('{"writeKey":"SECRET-top","batch":[
    {"type":"track","userId":"u","event":"a","writeKey":"SECRET-item-1"},
    {"type":"track","userId":"u","writeKey":"SECRET-item-2"}]}'), 2::bigint,
          'an envelope whose items carry keys is queued');
SELECT is(pg_temp.leaks(), 0, 'the inbox holds no key, neither the envelope''s nor an item''s');
SELECT is((SELECT payload::jsonb -> 'batch' -> 0 ->> 'event' FROM cdp.inbox), 'a',
          'the rest of the items is kept');
SELECT is(cdp.process_inbox(), 2::bigint, 'both items taken');
SELECT is(pg_temp.leaks(), 0, 'no key in events or dead letters');

-- rows COPY (or a plain INSERT) loads into the inbox: keys redacted before they are queued
INSERT INTO cdp.inbox (payload) VALUES
    ('{"writeKey":"SECRET-copy-top","batch":[{"type":"track","userId":"u","event":"c","writeKey":"SECRET-copy-item"}]}'),
    ('{"type":"track","userId":"u","event":"d","writeKey" : "SECRET-copy-spaced"'),
    ('{"type":"track","userId":"u","event":"e","properties":{"path":"C:\\tmp"}}');
SELECT is(pg_temp.leaks(), 0, 'rows loaded into the inbox hold no key, whole or cut off');
SELECT is((SELECT count(*)::int FROM cdp.inbox WHERE payload LIKE '%"writeKey":"[redacted]"%'
                                                  OR payload LIKE '%"writeKey" : "[redacted]"%'), 2,
          'each loaded key is replaced by "[redacted]", the rest of the row kept');
SELECT is((SELECT payload FROM cdp.inbox WHERE payload LIKE '%"e"%'),
          '{"type":"track","userId":"u","event":"e","properties":{"path":"C:\\tmp"}}',
          'a row without a key is queued as loaded');
SELECT is(cdp.process_inbox(), 3::bigint, 'the loaded rows are processed');
DELETE FROM cdp.dead_letters WHERE payload LIKE '%"event":"d"%';
TRUNCATE cdp.events, cdp.message_ids;

-- cdp.ingest refuses an envelope over cdp.max_request_bytes, naming size and limit
SET LOCAL cdp.max_request_bytes = '1kB';
SELECT throws_ok($$SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
                       jsonb_build_object('type', 'track', 'userId', 'u', 'event', repeat('x', 2000)))))$$,
                 '54000', 'payload is 2058 bytes, more than cdp.max_request_bytes (1024)',
                 'an envelope over cdp.max_request_bytes is refused at enqueue');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 0, 'and not queued');
RESET cdp.max_request_bytes;

-- rows loaded straight into the inbox (COPY), keys redacted as they were queued: what each
-- becomes keeps no key either
INSERT INTO cdp.inbox (payload) VALUES
    -- items carrying keys, one of them dead
    ('{"batch":[{"type":"track","userId":"u","event":"b","writeKey":"SECRET-copy-1"},'
     '{"type":"track","userId":"u","writeKey":"SECRET-copy-2"}],"writeKey":"SECRET-copy-top"}'),
    -- not JSON
    ('{"type":"track","writeKey":"SECRET-broken", "userId":'),
    -- not JSON, the key spelled with an escape and its value an object
    ('{"write\u004bey": {"k": "SECRET-escaped"}, "oops"}'),
    -- an array of messages: not an object
    ('[{"type":"track","userId":"u","event":"c","writeKey":"SECRET-array"}]'),
    -- a number beyond numeric's range: processing_error for the whole message
    ('{"type":"track","userId":"u","event":"d","writeKey":"SECRET-poison","properties":{"n":1e999999}}'),
    -- a batch that is not an array
    ('{"batch":{"type":"track"},"writeKey":"SECRET-batch-object"}');
-- too large for the envelope limit, and an item too large for the message limit
SET LOCAL cdp.max_event_bytes = '1kB';
SET LOCAL cdp.max_request_bytes = '8kB';
INSERT INTO cdp.inbox (payload) VALUES
    ('{"writeKey":"SECRET-too-large","batch":[' ||
     repeat('{"type":"track","userId":"u","event":"big"},', 300) || '{}]}'),
    ('{"batch":[{"type":"track","userId":"u","event":"big item","writeKey":"SECRET-big-item",'
     '"properties":{"pad":"' || repeat('p', 2000) || '"}}]}'),
    ('{"type":"track","userId":"u","event":"big single","writeKey":"SECRET-big-single",'
     '"properties":{"pad":"' || repeat('p', 2000) || '"}}');
SELECT is(cdp.process_inbox(), 10::bigint, 'every message is taken');
SELECT is(pg_temp.leaks(), 0, 'no key is stored anywhere');
SELECT results_eq(
    $$SELECT error_code FROM cdp.dead_letters ORDER BY id$$,
    $$VALUES ('missing_event'), ('missing_event'), ('invalid_json'), ('invalid_json'), ('not_an_object'),
             ('processing_error'), ('batch_not_array'), ('too_large'), ('too_large'), ('too_large')$$,
    'each of them is a dead letter (after the first envelope''s)');
SELECT is((SELECT payload FROM cdp.dead_letters WHERE error_code = 'invalid_json' ORDER BY id LIMIT 1),
          '{"type":"track","writeKey":"[redacted]", "userId":',
          'a payload that is not JSON keeps everything but the key''s value');
SELECT is((SELECT payload FROM cdp.dead_letters WHERE error_code = 'invalid_json' ORDER BY id DESC LIMIT 1),
          '{"write\u004bey": "[redacted]", "oops"}',
          'a key spelled with an escape is redacted too, whatever its value');
SELECT is((SELECT length(payload) FROM cdp.dead_letters WHERE error_message LIKE 'payload is%'),
          4096,
          'a payload over cdp.max_request_bytes keeps its first 4 kB (the key redacted)');
SELECT ok((SELECT payload LIKE '{"writeKey":"[redacted]","batch":[{"type":"track"%'
             FROM cdp.dead_letters WHERE error_message LIKE 'payload is%'),
          'its beginning, key redacted');
SELECT ok((SELECT payload::jsonb ->> 'event' = 'big item' AND NOT payload::jsonb ? 'writeKey'
             FROM cdp.dead_letters WHERE payload LIKE '%big item%'),
          'a too large item keeps its own payload without its key');
SELECT ok((SELECT payload LIKE '%"writeKey":"[redacted]"%'
             FROM cdp.dead_letters WHERE payload LIKE '%big single%'),
          'a too large message keeps its payload with the key redacted');

SELECT * FROM finish();
ROLLBACK;
