-- The rows processing writes into pg_cdp's own tables for a chunk of
-- messages (messageIds, new profiles, identities, evidence) go in with one
-- multi-insert per table and then into its indexes, which still check
-- uniqueness (a recorded messageId sends the chunk to the upsert): a WAL
-- record per page instead of per row, and no INSERT statement to plan and
-- run.  A trigger users put on one of these tables still fires (the
-- statement is used then).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
SELECT plan(15);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
CREATE FUNCTION pg_temp.track(mid text, anon text) RETURNS void LANGUAGE sql AS $$
    SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', mid,
                                         'anonymousId', anon, 'timestamp', now()))
$$;
SELECT count(pg_temp.track('multi-' || i, 'multi-visitor-' || i % 3)) AS queued
  FROM generate_series(1, 6) AS i \gset

\ir include/row_writes.psql
CREATE TEMP TABLE start AS SELECT pg_current_wal_insert_lsn() AS lsn;

SELECT is(cdp.process_inbox(), 6::bigint, 'the call takes the six messages of three new visitors');
SELECT pg_switch_wal() IS NOT NULL AS flushed \gset
SELECT is(pg_temp.records((SELECT lsn FROM start), t, 'Heap', 'INSERT'), 0::bigint,
          format('no row of %s is inserted alone', t))
  FROM unnest('{cdp.message_ids, cdp.profile_records, cdp.identities, cdp.identity_evidence}'::regclass[]) AS t;
SELECT cmp_ok(pg_temp.records((SELECT lsn FROM start), t, 'Heap2', 'MULTI_INSERT'), '>=', 1::bigint,
              format('the rows of %s are inserted together', t))
  FROM unnest('{cdp.message_ids, cdp.profile_records, cdp.identities, cdp.identity_evidence}'::regclass[]) AS t;
SELECT is((SELECT count(*) FROM cdp.message_ids), 6::bigint, 'every messageId is recorded');
SELECT is((SELECT count(DISTINCT e.profile_id) FROM cdp.events e WHERE e.message_id LIKE 'multi-%'),
          3::bigint, 'the events went to three profiles');

-- a retry of one of them, with a new one: the unique index refuses it, and
-- the chunk is recorded by the upsert instead
SELECT pg_temp.track('multi-3', 'multi-visitor-0') AS retried, pg_temp.track('multi-7', 'multi-visitor-1') AS new \gset
SELECT is(cdp.process_inbox(), 2::bigint, 'a retry and a new message are taken');
SELECT is((SELECT count(*) FROM cdp.events WHERE message_id LIKE 'multi-%'), 7::bigint,
          'the retry is a duplicate, the new one stored');

-- triggers users put on these tables fire for every row
CREATE TRIGGER note_row AFTER INSERT ON cdp.message_ids FOR EACH ROW EXECUTE FUNCTION pg_temp.note_row();
CREATE TRIGGER note_row AFTER INSERT ON cdp.identities FOR EACH ROW EXECUTE FUNCTION pg_temp.note_row();
SELECT count(pg_temp.track('multi-trigger-' || i, 'multi-trigger-visitor')) AS queued
  FROM generate_series(1, 3) AS i \gset
SELECT cdp.process_inbox() AS taken \gset
SELECT is((SELECT count(*) FROM pg_temp.written WHERE tab = 'message_ids'), 3::bigint,
          'a trigger on cdp.message_ids fires for each key');
SELECT is((SELECT count(*) FROM pg_temp.written WHERE tab = 'identities'), 1::bigint,
          'a trigger on cdp.identities fires for the new identity');

SELECT * FROM finish();
ROLLBACK;
