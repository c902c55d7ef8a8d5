-- A batch is bounded in bytes, not only in rows: cdp.batch_size counts inbox
-- rows, and twelve 500 kB envelopes of 8 000 messages each once made one
-- batch of 96 000 messages that took about 800 MB of backend memory.  Now a
-- batch takes rows up to a byte budget and processes their messages in
-- bounded chunks.  Peak private memory from /proc, as in batch_memory.sql.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

CREATE FUNCTION pg_temp.status_kb(field text) RETURNS bigint LANGUAGE sql AS $$
    SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'),
                         field || ':\s+(\d+) kB'))[1]::bigint;
$$;

-- valid messages of one known visitor: stored, cheaply
SELECT is(cdp.ingest('{"type": "track", "anonymousId": "visitor", "event": "first"}'), 1::bigint,
          'a first message is queued');
SELECT is(cdp.process_inbox(), 1::bigint, 'its visitor is known from then on');
INSERT INTO cdp.inbox (payload)
SELECT '{"batch":[' || repeat('{"type":"track","anonymousId":"visitor","event":"e"},', 7999) ||
       '{"type":"track","anonymousId":"visitor","event":"last"}]}'
  FROM generate_series(1, 12);

CREATE TEMP TABLE before AS
SELECT pg_temp.status_kb('VmHWM') AS hwm, pg_temp.status_kb('RssShmem') AS shmem;
SELECT is(cdp.process_inbox(), 96000::bigint, 'every message of the twelve envelopes is taken');
SELECT is((SELECT count(*)::int FROM cdp.events), 96001, 'and stored');
SELECT cmp_ok((SELECT (pg_temp.status_kb('VmHWM') - hwm) - (pg_temp.status_kb('RssShmem') - shmem)
                 FROM before), '<', 64 * 1024::bigint,
              'processing them grew the backend''s private memory by less than 64 MB');

SELECT * FROM finish();
ROLLBACK;
