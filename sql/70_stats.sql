--
-- 70_stats: cdp.stats counts the pipeline's work when its transaction
-- commits (a rolled-back batch, savepoint or chunk counts nothing); the
-- inbox depth follows enqueues, processing, deletes and TRUNCATE;
-- cdp.max_inbox_depth refuses cdp.ingest and COPY with SQLSTATE 53400;
-- worker figures; reset; who may read and reset.  pg_cdp is preloaded here.
--
\set VERBOSITY terse
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
SELECT cdp.reset_stats();

-- the figures that do not depend on the clock, as one line
CREATE FUNCTION pg_temp.figures() RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_object_agg(name, value) FROM cdp.stats
     WHERE name NOT IN ('oldest_queued_seconds', 'stats_reset', 'ingest_workers_running')
$$;
-- 'SQLSTATE: message' of a statement, or 'ok'
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    msg text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN state || ': ' || msg;
END
$$;

-- stats_shape: one row per figure, kind counter or gauge
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'cdp.stats'::regclass AND attnum > 0 ORDER BY attnum;
SELECT name, kind, value IS NOT NULL AS known FROM cdp.stats;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'cdp.worker_stats'::regclass AND attnum > 0 ORDER BY attnum;

-- counted_at_commit: two messages and an envelope of three (a duplicate, a bad item)
SELECT cdp.track('st-1', 'Viewed', ts => '2026-03-01 10:00+00');
SELECT cdp.ingest('{"type":"track","userId":"st-2","event":"Viewed","messageId":"st-m2"}');
SELECT cdp.ingest('{"batch":[{"type":"track","userId":"st-3","event":"Viewed","messageId":"st-m3"},
                             {"type":"track","userId":"st-3","event":"Viewed","messageId":"st-m3"},
                             {"type":"bogus"}]}');
SELECT pg_temp.figures();
SELECT cdp.process_inbox();
SELECT pg_temp.figures();

-- rolled_back_batch_counts_nothing
BEGIN;
SELECT cdp.track('st-4', 'Viewed');
SELECT cdp.process_inbox();
SELECT pg_temp.figures();	-- not yet: counted at commit
ROLLBACK;
SELECT pg_temp.figures();

-- savepoint_rolled_back_counts_nothing: only the second take counts
SELECT cdp.track('st-5', 'Viewed');
BEGIN;
SAVEPOINT a;
SELECT cdp.process_inbox();
ROLLBACK TO a;
SELECT cdp.process_inbox();
COMMIT;
SELECT pg_temp.figures();

-- chunk_retried_in_halves: a trigger fails one event (its siblings are
-- retried and stored, each counted once) and drops another
CREATE FUNCTION pg_temp.pick() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'boom' THEN
        RAISE EXCEPTION 'boom' USING ERRCODE = 'data_exception';
    ELSIF NEW.event = 'drop' THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER regress_pick BEFORE INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.pick();
SELECT cdp.ingest(jsonb_build_object('batch', jsonb_agg(jsonb_build_object(
           'type', 'track', 'userId', 'st-h' || g, 'messageId', 'st-h' || g,
           'event', CASE g WHEN 3 THEN 'boom' WHEN 5 THEN 'drop' ELSE 'ok' END))))
  FROM generate_series(1, 8) g;
SELECT cdp.process_inbox();
DROP TRIGGER regress_pick ON cdp.events;
SELECT error_code, count(*) FROM cdp.dead_letters GROUP BY 1 ORDER BY 1;
SELECT pg_temp.figures();

-- merges: two anonymous visitors turn out to be one user
SELECT cdp.reset_stats();
SELECT count(*) AS merges_before FROM cdp.merges \gset
SELECT cdp.ingest('{"type":"track","anonymousId":"st-an-1","event":"Viewed"}');
SELECT cdp.ingest('{"type":"track","anonymousId":"st-an-2","event":"Viewed"}');
SELECT cdp.process_inbox();
SELECT cdp.ingest('{"type":"identify","userId":"st-user","anonymousId":"st-an-1"}');
SELECT cdp.ingest('{"type":"identify","userId":"st-user","anonymousId":"st-an-2"}');
SELECT cdp.process_inbox();
SELECT (SELECT value FROM cdp.stats WHERE name = 'merges') AS merges_counted,
       (SELECT count(*) FROM cdp.merges) - :merges_before AS merges_recorded;

-- suppressed: a message of an erased person is dropped and counted
SELECT cdp.forget('user_id:st-user') IS NOT NULL AS forgotten;
SELECT cdp.track('st-user', 'Viewed');
SELECT cdp.process_inbox();
SELECT value AS suppressed FROM cdp.stats WHERE name = 'suppressed';

-- backpressure_ingest: cdp.max_inbox_depth payloads at most; 53400 past it
SELECT cdp.reset_stats();
SET cdp.max_inbox_depth = 3;
SELECT cdp.track('bp-1', 'Viewed');
SELECT cdp.ingest('{"batch":[{"type":"track","userId":"bp-2","event":"a"},{"type":"track","userId":"bp-2","event":"b"}]}');
SELECT cdp.track('bp-3', 'Viewed');
SELECT pg_temp.error_of($$SELECT cdp.track('bp-4', 'Viewed')$$);
SELECT pg_temp.error_of($$INSERT INTO cdp.inbox (payload) VALUES ('{}')$$);
SELECT count(*) AS queued FROM cdp.inbox;

-- backpressure_copy: a COPY that would pass the bound queues nothing
SELECT cdp.process_inbox(2);
SELECT count(*) AS queued FROM cdp.inbox;
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"bp-5","event":"Viewed"}
{"type":"track","userId":"bp-6","event":"Viewed"}
{"type":"track","userId":"bp-7","event":"Viewed"}
\.
SELECT count(*) AS queued FROM cdp.inbox;
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"bp-5","event":"Viewed"}
{"type":"track","userId":"bp-6","event":"Viewed"}
\.
SELECT count(*) AS queued FROM cdp.inbox;
SELECT pg_temp.figures();

-- backpressure_follows_deletes: rows removed by hand or TRUNCATE make room
DELETE FROM cdp.inbox WHERE id = (SELECT min(id) FROM cdp.inbox);
SELECT value AS depth FROM cdp.stats WHERE name = 'inbox_depth';
SELECT cdp.track('bp-8', 'Viewed');
SELECT pg_temp.error_of($$SELECT cdp.track('bp-9', 'Viewed')$$);
TRUNCATE cdp.inbox;
SELECT value AS depth FROM cdp.stats WHERE name = 'inbox_depth';
SELECT cdp.track('bp-10', 'Viewed');
-- a transaction's own rows count against the bound
BEGIN;
SELECT cdp.track('bp-11', 'Viewed');
SELECT cdp.track('bp-12', 'Viewed');
SELECT pg_temp.error_of($$SELECT cdp.track('bp-13', 'Viewed')$$);
ROLLBACK;
SELECT value AS depth FROM cdp.stats WHERE name = 'inbox_depth';
RESET cdp.max_inbox_depth;
SELECT cdp.process_inbox();

-- queued_rows_counted_per_statement: the inbox's statement triggers count
-- the rows of a COPY, of a many-row INSERT, of statements run inside another
-- (each counts its own), and, with track_counts off, by reading the table
SELECT cdp.reset_stats();
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"cq-1","event":"Viewed"}
{"type":"track","userId":"cq-2","event":"Viewed"}
{"type":"track","userId":"cq-3","event":"Viewed"}
\.
INSERT INTO cdp.inbox (payload) SELECT '{"type":"track","userId":"cq-4","event":"e"}' FROM generate_series(1, 4);
CREATE FUNCTION pg_temp.queue_inside(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cdp.inbox (payload) SELECT '{"type":"track","userId":"cq-5","event":"e"}' FROM generate_series(1, n);
    RETURN n;
END
$$;
INSERT INTO cdp.inbox (payload)
SELECT '{"type":"track","userId":"cq-6","event":"e","properties":{"inside":' || pg_temp.queue_inside(5) || '}}'
  FROM generate_series(1, 2);
SELECT pg_temp.figures() -> 'enqueued' AS enqueued, pg_temp.figures() -> 'inbox_depth' AS depth,
       (SELECT count(*) FROM cdp.inbox) AS queued;
SET track_counts = off;
INSERT INTO cdp.inbox (payload) SELECT '{"type":"track","userId":"cq-7","event":"e"}' FROM generate_series(1, 3);
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"cq-8","event":"Viewed"}
{"type":"track","userId":"cq-9","event":"Viewed"}
\.
RESET track_counts;
SELECT pg_temp.figures() -> 'enqueued' AS enqueued, pg_temp.figures() -> 'inbox_depth' AS depth,
       (SELECT count(*) FROM cdp.inbox) AS queued;
SELECT cdp.process_inbox();

-- max_inbox_depth_is_superuser_only
CREATE ROLE regress_stats_writer;
SET ROLE regress_stats_writer;
SELECT pg_temp.error_of($$SET cdp.max_inbox_depth = 0$$);
RESET ROLE;

-- worker_figures: what a worker reports stays when it stops and restarts
CREATE FUNCTION pg_temp.worker_event(int, text, int DEFAULT 0, int DEFAULT 0) RETURNS void
    AS '$libdir/pg_cdp', 'cdp_stats_test_worker' LANGUAGE C;
CREATE FUNCTION pg_temp.worker(int) RETURNS TABLE (pid int, running_since bool, last_batch bool,
        last_batch_messages bigint, last_batch_ms float8, rate float8, messages bigint, batches bigint)
    LANGUAGE sql AS $$
    SELECT pid, started_at IS NOT NULL, last_batch_at IS NOT NULL, last_batch_messages,
           last_batch_ms, rate, messages, batches
      FROM cdp.worker_stats WHERE slot = $1
$$;
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(7, 'started', 4242);
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(7, 'batch', 500, 250);
SELECT pg_temp.worker_event(7, 'batch', 100, 50);
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(7, 'stopped');
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(7, 'started', 4343);
SELECT pg_temp.worker_event(7, 'batch', 10, 0);
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(32, 'started', 1);
SELECT cdp.reset_stats();
SELECT * FROM pg_temp.worker(7);
SELECT pg_temp.worker_event(7, 'stopped');
SELECT * FROM pg_temp.worker(7);

-- who_reads_and_resets: nobody by default; an operator may
SET ROLE regress_stats_writer;
SELECT pg_temp.error_of($$SELECT * FROM cdp.stats$$);
SELECT pg_temp.error_of($$SELECT cdp.reset_stats()$$);
RESET ROLE;
SELECT cdp.grant_operator('regress_stats_writer');
SET ROLE regress_stats_writer;
SELECT count(*) AS figures FROM cdp.stats;
SELECT count(*) >= 0 AS readable FROM cdp.worker_stats;
SELECT pg_temp.error_of($$SELECT cdp.reset_stats()$$);
RESET ROLE;
DROP OWNED BY regress_stats_writer;
DROP ROLE regress_stats_writer;
