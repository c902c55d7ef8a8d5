-- A batch's memory is bounded whatever an envelope holds: one inbox row of
-- 170 000 empty items (a 512 kB envelope) once took 800 MB of backend memory,
-- as every item was expanded before any was checked.  The backend's peak
-- private memory is read from /proc (VmHWM, less the shared memory it has
-- touched meanwhile), so this needs Linux and a superuser; it must be the
-- first thing the session does, so that the peak is this call's.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

-- kB of a /proc/self/status field of this backend
CREATE FUNCTION pg_temp.status_kb(field text) RETURNS bigint LANGUAGE sql AS $$
    SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'),
                         field || ':\s+(\d+) kB'))[1]::bigint;
$$;

INSERT INTO cdp.inbox (payload)
SELECT '{"batch":[' || repeat('{},', 170000) || '{}]}';
SELECT cmp_ok((SELECT octet_length(payload) FROM cdp.inbox), '<=', 512 * 1024,
              'the envelope is within cdp.max_request_bytes');

CREATE TEMP TABLE before AS
SELECT pg_temp.status_kb('VmHWM') AS hwm, pg_temp.status_kb('RssShmem') AS shmem;
SELECT is(cdp.process_inbox(), 170001::bigint, 'every item is taken');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE error_code = 'missing_type'), 170001,
          'every item is a dead letter of its own');
SELECT cmp_ok((SELECT (pg_temp.status_kb('VmHWM') - hwm) - (pg_temp.status_kb('RssShmem') - shmem)
                 FROM before), '<', 64 * 1024::bigint,
              'processing it grew the backend''s private memory by less than 64 MB');

SELECT * FROM finish();
ROLLBACK;
