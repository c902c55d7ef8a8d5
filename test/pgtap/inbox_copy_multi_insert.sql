-- COPY into cdp.inbox inserts its rows in groups (one WAL record per page,
-- as into a plain table): the inbox has no row trigger, which would make
-- COPY insert row by row.  A writeKey is still never written: the payload's
-- type redacts it as the value is read, whichever way a row comes (COPY in
-- text, CSV or binary, INSERT of a literal, of text, of another type, a
-- prepared statement's parameter, UPDATE, cdp.ingest).  (How the rows
-- are counted, by statement triggers: sql/70_stats.sql.)
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
SELECT plan(12);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
-- WAL records of a kind on cdp.inbox's heap since a position (a log switch
-- flushes what this open transaction wrote, so that it can be read back)
CREATE FUNCTION pg_temp.records(from_lsn pg_lsn, rmgr text, kind text)
RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*)
      FROM pg_get_wal_records_info(from_lsn, pg_current_wal_flush_lsn())
     WHERE resource_manager = rmgr AND split_part(record_type, '+', 1) = kind
       AND block_ref ~ ('rel \d+/\d+/' || pg_relation_filenode('cdp.inbox') || ' ')
$$;
-- whether the WAL from a position to the flushed end holds a string
CREATE FUNCTION pg_temp.wal_holds(from_lsn pg_lsn, s text) RETURNS boolean LANGUAGE sql AS $$
    SELECT bool_or(position(convert_to(s, 'UTF8') IN
                            pg_read_binary_file('pg_wal/' || f.file_name, f.file_offset,
                                                16 * 1024 * 1024 - f.file_offset)) > 0)
      FROM (SELECT * FROM pg_walfile_name_offset(from_lsn)
            UNION ALL
            SELECT file_name, 0 FROM pg_walfile_name_offset(pg_current_wal_flush_lsn() - 1)
             WHERE file_name <> pg_walfile_name(from_lsn)) f
$$;

-- files the server reads back, in its data directory
SELECT current_setting('data_directory') || '/cdp_inbox_copy.' AS file \gset
CREATE TEMP TABLE lines AS
SELECT CASE WHEN i % 50 = 0
            THEN format('{"type":"track","userId":"u","event":"e%s","writeKey":"KEY-b7e1c4-%s"}', i, i)
            ELSE format('{"type":"track","userId":"u","event":"e%s"}', i) END AS line
  FROM generate_series(1, 200) AS i;
SELECT format($$COPY lines TO %L WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')$$, :'file' || 'csv') AS copy_csv_out,
       format($$COPY lines TO %L WITH (FORMAT binary)$$, :'file' || 'bin') AS copy_bin_out,
       format($$COPY cdp.inbox (payload) FROM %L WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')$$, :'file' || 'csv') AS copy_csv_in,
       format($$COPY cdp.inbox (payload) FROM %L WITH (FORMAT binary)$$, :'file' || 'bin') AS copy_bin_in \gset
:copy_csv_out;
:copy_bin_out;

CREATE TEMP TABLE start AS SELECT pg_current_wal_insert_lsn() AS lsn;
:copy_csv_in;
SELECT pg_switch_wal() IS NOT NULL AS flushed \gset
SELECT is(pg_temp.records((SELECT lsn FROM start), 'Heap', 'INSERT'), 0::bigint,
          'COPY inserts no row of cdp.inbox alone');
SELECT cmp_ok(pg_temp.records((SELECT lsn FROM start), 'Heap2', 'MULTI_INSERT'), '>=', 1::bigint,
              'COPY inserts the rows of cdp.inbox together');
SELECT is((SELECT count(*) FROM cdp.inbox), 200::bigint, 'every line is queued');
SELECT is(pg_temp.wal_holds((SELECT lsn FROM start), 'KEY-b7e1c4'), false, 'no key reached the WAL');
SELECT is(pg_temp.wal_holds((SELECT lsn FROM start), '"event":"e199"'), true, '(where the payloads are)');
SELECT is((SELECT count(*) FROM cdp.inbox WHERE payload LIKE '%"writeKey":"[redacted]"}'), 4::bigint,
          'the keys of CSV lines are redacted');

:copy_bin_in;
SELECT is((SELECT count(*) FROM cdp.inbox WHERE payload LIKE '%KEY-b7e1c4%'), 0::bigint,
          'so are the keys of binary COPY rows');

-- every other way of writing a payload
INSERT INTO cdp.inbox (payload) VALUES ('{"writeKey":"SECRET-literal"}');
INSERT INTO cdp.inbox (payload) SELECT '{"writeKey":"SECRET-text"}'::text;
INSERT INTO cdp.inbox (payload) SELECT '{"writeKey":"SECRET-varchar"}'::varchar;
INSERT INTO cdp.inbox (payload) SELECT '{"writeKey":"SECRET-jsonb"}'::jsonb;
PREPARE queue_text(text) AS INSERT INTO cdp.inbox (payload) VALUES ($1);
EXECUTE queue_text('{"write\u004bey":"SECRET-parameter"}');
UPDATE cdp.inbox SET payload = payload || ',"writeKey":"SECRET-update"' WHERE payload LIKE '%"e1"%';
SELECT is(cdp.ingest('{"writeKey":"SECRET-ingest","type":"track","userId":"u","event":"i"}'), 1::bigint,
          'cdp.ingest queues');
SELECT is((SELECT count(*) FROM cdp.inbox WHERE payload LIKE '%SECRET%'), 0::bigint,
          'no key from an INSERT of a literal, text, varchar, jsonb or a parameter, an UPDATE or cdp.ingest');
SELECT is((SELECT count(*) FROM cdp.inbox WHERE payload LIKE '%"[redacted]"%'), 15::bigint,
          'each of them is redacted, not dropped');
SELECT is((SELECT payload FROM cdp.inbox WHERE payload LIKE '%"e2"%' LIMIT 1),
          '{"type":"track","userId":"u","event":"e2"}', 'a payload without a key is kept as it came');
SELECT is(pg_typeof(payload)::text || ' ' || pg_typeof(payload::text)::text, 'cdp.redacted_text text',
          'readers get text') FROM cdp.inbox LIMIT 1;

SELECT * FROM finish();
ROLLBACK;
