-- A chunk's new messageIds go into cdp.message_ids in one multi-insert, and
-- then into its unique index, which still refuses a key recorded already
-- (the chunk then takes the upsert): a WAL record per page instead of per
-- key, and no INSERT statement to run.  A trigger users put on the table
-- still fires (the statement is used then).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
SELECT plan(7);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
CREATE FUNCTION pg_temp.track(mid text) RETURNS void LANGUAGE sql AS $$
    SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', mid,
                                         'anonymousId', 'multi-keys', 'timestamp', now()))
$$;
SELECT pg_temp.track('multi-' || i) FROM generate_series(1, 6) AS i;

-- WAL records of a kind (+INIT too) on cdp.message_ids' heap since a position
-- (a log switch flushes what this open transaction wrote, so that it can
-- be read back)
CREATE FUNCTION pg_temp.key_records(from_lsn pg_lsn, rmgr text, kind text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*)
      FROM pg_get_wal_records_info(from_lsn, pg_current_wal_flush_lsn())
     WHERE resource_manager = rmgr AND split_part(record_type, '+', 1) = kind
       AND block_ref ~ ('rel \d+/\d+/' || pg_relation_filenode('cdp.message_ids') || ' ')
$$;
CREATE TEMP TABLE start AS SELECT pg_current_wal_insert_lsn() AS lsn;

SELECT is(cdp.process_inbox(), 6::bigint, 'the call takes the six messages');
SELECT pg_switch_wal() IS NOT NULL AS flushed \gset
SELECT is(pg_temp.key_records((SELECT lsn FROM start), 'Heap', 'INSERT'), 0::bigint,
          'no messageId is inserted row by row');
SELECT cmp_ok(pg_temp.key_records((SELECT lsn FROM start), 'Heap2', 'MULTI_INSERT'), '>=', 1::bigint,
              'they are inserted together');
SELECT is((SELECT count(*) FROM cdp.message_ids), 6::bigint, 'every messageId is recorded');

-- a retry of one of them, with new ones: the unique index refuses it, and the
-- chunk is recorded by the upsert instead
SELECT pg_temp.track('multi-3') AS retried, pg_temp.track('multi-7') AS new \gset
SELECT is(cdp.process_inbox(), 2::bigint, 'a retry and a new message are taken');
SELECT is((SELECT count(*) FROM cdp.events WHERE message_id LIKE 'multi-%'), 7::bigint,
          'the retry is a duplicate, the new one stored');

-- a trigger users put on cdp.message_ids fires for every key
CREATE TABLE pg_temp.recorded (n int);
CREATE FUNCTION pg_temp.note_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.recorded VALUES (1);
    RETURN NEW;
END $$;
CREATE TRIGGER note_key AFTER INSERT ON cdp.message_ids FOR EACH ROW EXECUTE FUNCTION pg_temp.note_key();
SELECT pg_temp.track('multi-trigger-' || i) FROM generate_series(1, 3) AS i;
SELECT cdp.process_inbox() AS taken \gset
SELECT is((SELECT count(*) FROM pg_temp.recorded), 3::bigint, 'a trigger on cdp.message_ids fires for each key');

SELECT * FROM finish();
ROLLBACK;
