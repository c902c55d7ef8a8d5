-- Processing deletes the rows it takes from cdp.inbox without locking them
-- first: one WAL record a row, where a lock and then a delete wrote two (a
-- seventh of the processing time of small messages).  A row someone else
-- holds is still skipped (test/isolation/specs/forget_inbox_held.spec and
-- inbox_take_held.spec), and a row this transaction locked itself is taken.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
SELECT plan(7);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
SET LOCAL cdp.batch_size = 4;
DO $$ BEGIN
    PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', 'nolock-' || i,
                                          'anonymousId', 'nolock', 'timestamp', now()))
       FROM generate_series(1, 6) AS i;
END $$;

-- WAL records of a kind (+INIT too) on cdp.inbox's heap since a position
-- (a log switch flushes what this open transaction wrote, so that it can
-- be read back)
CREATE FUNCTION pg_temp.inbox_records(from_lsn pg_lsn, kind text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*)
      FROM pg_get_wal_records_info(from_lsn, pg_current_wal_flush_lsn())
     WHERE resource_manager = 'Heap' AND split_part(record_type, '+', 1) = kind
       AND block_ref ~ ('rel \d+/\d+/' || pg_relation_filenode('cdp.inbox') || ' ')
$$;
CREATE TEMP TABLE start AS SELECT pg_current_wal_insert_lsn() AS lsn;

SELECT is(cdp.process_inbox(), 6::bigint, 'the call takes the six messages');
SELECT pg_switch_wal() IS NOT NULL AS flushed \gset
SELECT is(pg_temp.inbox_records((SELECT lsn FROM start), 'DELETE'), 6::bigint,
          'each row is deleted with one record');
SELECT is(pg_temp.inbox_records((SELECT lsn FROM start), 'LOCK'), 0::bigint,
          'and none is locked first');

-- a row this transaction holds itself is no obstacle
SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', 'nolock-own',
                                     'anonymousId', 'nolock', 'timestamp', now())) AS queued \gset
SELECT count(*) AS held FROM (SELECT FROM cdp.inbox FOR UPDATE) l \gset
SELECT is(cdp.process_inbox(), 1::bigint, 'a row this transaction locked is taken');
SELECT is((SELECT count(*) FROM cdp.events WHERE message_id LIKE 'nolock-%'), 7::bigint,
          'and every message is stored');

-- a DELETE trigger users added on cdp.inbox still fires for every row taken
CREATE TABLE pg_temp.taken (id bigint);
CREATE FUNCTION pg_temp.note_taken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.taken VALUES (OLD.id);
    RETURN OLD;
END $$;
CREATE TRIGGER note_taken BEFORE DELETE ON cdp.inbox FOR EACH ROW EXECUTE FUNCTION pg_temp.note_taken();
DO $$ BEGIN
    PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', 'nolock-trigger-' || i,
                                          'anonymousId', 'nolock', 'timestamp', now()))
       FROM generate_series(1, 3) AS i;
END $$;
SELECT is(cdp.process_inbox(), 3::bigint, 'with a DELETE trigger on cdp.inbox the call takes every message');
SELECT is((SELECT count(*) FROM pg_temp.taken), 3::bigint, 'and the trigger fires for each row');

SELECT * FROM finish();
ROLLBACK;
