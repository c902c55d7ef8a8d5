--
-- 50_drain_inbox: CALL cdp.drain_inbox() commits chunk by chunk, so a
-- statement_timeout that cancels it keeps every chunk it finished (one
-- process_inbox() call would roll back everything, every time), and a later
-- call drains the rest.  Also: its arguments are checked, and it stops when
-- the inbox is empty.
--
SET timezone = 'UTC';
\set VERBOSITY terse
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
TRUNCATE cdp.events;

-- the 26th message takes 60 s to leave the inbox: a statement_timeout of
-- 1 s cancels the call in the chunk that holds it (rows 21-30)
CREATE FUNCTION public.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.payload LIKE '%"slow"%' THEN
        PERFORM pg_sleep(60);
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER slow_row BEFORE DELETE ON cdp.inbox FOR EACH ROW EXECUTE FUNCTION public.slow_row();
INSERT INTO cdp.inbox (payload)
SELECT jsonb_build_object('type', 'track', 'userId', 'u', 'messageId', 'd-' || g,
                          'event', CASE WHEN g = 26 THEN 'slow' ELSE 'fast' END)::text
  FROM generate_series(1, 35) g;

-- one process_inbox() call under the timeout: cancelled, nothing kept
SET statement_timeout = '1s';
SELECT cdp.process_inbox();
RESET statement_timeout;
SELECT count(*) AS stored_after_process_inbox, (SELECT count(*) FROM cdp.inbox) AS queued FROM cdp.events;

-- drain_inbox in chunks of 10 under the same timeout: cancelled too, but the
-- two chunks before the slow row are committed
SET statement_timeout = '1s';
CALL cdp.drain_inbox(chunk => 10);
RESET statement_timeout;
SELECT count(*) AS stored_after_drain, (SELECT count(*) FROM cdp.inbox) AS queued FROM cdp.events;
SELECT min(message_id COLLATE "C"), max(substr(message_id, 3)::int) AS last_stored FROM cdp.events;

-- without the slow row, the next call drains the rest and reports it
DROP TRIGGER slow_row ON cdp.inbox;
CALL cdp.drain_inbox(chunk => 10);
SELECT count(*) AS stored, (SELECT count(*) FROM cdp.inbox) AS queued FROM cdp.events;
-- an empty inbox: nothing to do
CALL cdp.drain_inbox();
-- a chunk of empty envelopes takes rows but no messages: draining goes on
INSERT INTO cdp.inbox (payload) SELECT '{"batch":[]}' FROM generate_series(1, 3);
INSERT INTO cdp.inbox (payload) VALUES ('{"type":"track","userId":"u","event":"after","messageId":"d-after"}');
CALL cdp.drain_inbox(chunk => 3);
SELECT count(*) AS queued FROM cdp.inbox;
SELECT count(*) AS stored_after_empty_envelopes FROM cdp.events WHERE message_id = 'd-after';

-- a role granted only EXECUTE on drain_inbox and process_inbox can drain
CREATE ROLE regress_cdp_drainer;
GRANT USAGE ON SCHEMA cdp TO regress_cdp_drainer;
GRANT EXECUTE ON PROCEDURE cdp.drain_inbox(interval, int, bigint) TO regress_cdp_drainer;
GRANT EXECUTE ON FUNCTION cdp.process_inbox(int) TO regress_cdp_drainer;
INSERT INTO cdp.inbox (payload) VALUES ('{"type":"track","userId":"u","event":"e","messageId":"d-role"}');
SET ROLE regress_cdp_drainer;
CALL cdp.drain_inbox();
CALL cdp.drain_inbox();
RESET ROLE;
SELECT count(*) AS stored_by_role FROM cdp.events WHERE message_id = 'd-role';
DROP OWNED BY regress_cdp_drainer;
DROP ROLE regress_cdp_drainer;

-- arguments are checked
CALL cdp.drain_inbox(max_duration => '0');
CALL cdp.drain_inbox(chunk => 0);
-- it commits, so it cannot run inside a transaction block
BEGIN;
CALL cdp.drain_inbox();
ROLLBACK;

DROP FUNCTION public.slow_row();
