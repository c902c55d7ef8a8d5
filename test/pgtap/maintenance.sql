-- cdp.run_maintenance(): creates partitions ahead, applies retention (drop or
-- detach), purges the dedup window, reports what it did, and is idempotent.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(39);

\ir include/partition_setup.psql

CREATE FUNCTION pg_temp.send(ts timestamptz, event text) RETURNS void LANGUAGE sql AS $$
    SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', event, 'timestamp', ts));
    SELECT cdp.process_inbox();
$$;
CREATE FUNCTION pg_temp.is_partition(rel text) RETURNS bool LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM pg_inherits
                    WHERE inhparent = 'cdp.events'::regclass AND inhrelid = to_regclass(rel));
$$;
CREATE TEMP TABLE report (run text PRIMARY KEY, r jsonb);

-- creating ahead, from no partitions, with the default configuration
DO $$ BEGIN PERFORM pg_temp.drop_partitions(); END $$;
INSERT INTO report VALUES ('first', cdp.run_maintenance());
SELECT is((SELECT r -> 'partitions_created' FROM report WHERE run = 'first'), '8'::jsonb,
          'run_maintenance creates the partition holding now and premake (7) more');
SELECT is((SELECT array_agg(k ORDER BY k) FROM report, jsonb_object_keys(r) k WHERE run = 'first'),
          ARRAY['dedup_purged', 'partitions_created', 'partitions_dropped', 'retention_pending'],
          'in drop mode it reports partitions_created, partitions_dropped, retention_pending and dedup_purged');
SELECT is((SELECT count(*)::int FROM cdp.partitions WHERE range_to > now()), 8, 'eight partitions exist');
SELECT is((SELECT min(range_from) FROM cdp.partitions), date_trunc('day', now()),
          'from midnight UTC today');
SELECT is((SELECT max(range_to) FROM cdp.partitions), date_trunc('day', now()) + interval '8 days',
          'through seven days ahead');
INSERT INTO report VALUES ('second', cdp.run_maintenance());
SELECT is((SELECT r FROM report WHERE run = 'second'),
          '{"partitions_created": 0, "partitions_dropped": 0, "retention_pending": 0, "dedup_purged": 0}'::jsonb,
          'a second run does nothing and says so');
SELECT is((SELECT count(*)::int FROM cdp.partitions), 8, 'a second run creates no partition');

-- retention: drop (daily partitions throughout: archive_interval NULL)
DO $$ BEGIN
    PERFORM cdp.configure_partitions('1 day', 7, archive_interval => NULL);
    PERFORM pg_temp.send('2019-01-01 10:00:00+00', 'Old 1');
    PERFORM pg_temp.send('2019-01-02 10:00:00+00', 'Old 2');
    PERFORM pg_temp.send(now() - interval '5 days', 'Recent');
    PERFORM pg_temp.send(now() - interval '40 days', 'Month Old');
END $$;
SELECT is((SELECT count(*)::int FROM cdp.events), 4, 'four events stored before retention is set');
SELECT ok(pg_temp.is_partition('cdp.events_p20190101') AND pg_temp.is_partition('cdp.events_p20190102'),
          'the old events have their partitions');
CREATE TEMP TABLE before_retention AS
SELECT partition::text AS name, range_to FROM cdp.partitions;
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 7, '30 days', 'drop', archive_interval => NULL)$$,
                'retention of 30 days, drop');
INSERT INTO report VALUES ('drop', cdp.run_maintenance());
SELECT is((SELECT (r ->> 'partitions_dropped')::int FROM report WHERE run = 'drop'),
          (SELECT count(*)::int FROM before_retention WHERE range_to <= now() - interval '30 days'),
          'partitions_dropped counts the partitions that ended before now() - retention');
SELECT is((SELECT (r ->> 'partitions_dropped')::int FROM report WHERE run = 'drop'), 3,
          '... here the two from 2019 and the one from 40 days ago');
SELECT ok(to_regclass('cdp.events_p20190101') IS NULL AND to_regclass('cdp.events_p20190102') IS NULL,
          'in drop mode the expired partitions are gone');
SELECT is((SELECT count(*)::int FROM before_retention b
            WHERE b.range_to > now() - interval '30 days' AND NOT pg_temp.is_partition(b.name)), 0,
          'every partition that ends after the horizon is kept');
SELECT results_eq($$SELECT event FROM cdp.events ORDER BY event$$, $$VALUES ('Recent')$$,
                  'events inside the retention are kept, the others went with their partitions');
INSERT INTO report VALUES ('drop again', cdp.run_maintenance());
SELECT is((SELECT r FROM report WHERE run = 'drop again'),
          '{"partitions_created": 0, "partitions_dropped": 0, "retention_pending": 0, "dedup_purged": 0}'::jsonb,
          'running retention again drops nothing more');

-- retention: detach
DO $$ BEGIN
    PERFORM cdp.configure_partitions('1 day', 7, archive_interval => NULL);
    PERFORM pg_temp.send('2018-05-05 10:00:00+00', 'Detach Me');
    PERFORM cdp.configure_partitions('1 day', 7, '30 days', 'detach', archive_interval => NULL);
END $$;
SELECT ok(pg_temp.is_partition('cdp.events_p20180505'), 'an old partition exists before detaching');
INSERT INTO report VALUES ('detach', cdp.run_maintenance());
SELECT is((SELECT array_agg(k ORDER BY k) FROM report, jsonb_object_keys(r) k WHERE run = 'detach'),
          ARRAY['dedup_purged', 'partitions_created', 'partitions_detached', 'retention_pending'],
          'in detach mode it reports partitions_detached instead of partitions_dropped');
SELECT is((SELECT r -> 'partitions_detached' FROM report WHERE run = 'detach'), '1'::jsonb,
          'one partition detached');
SELECT isnt(to_regclass('cdp.events_p20180505'), NULL, 'a detached partition still exists as a table');
SELECT ok(NOT pg_temp.is_partition('cdp.events_p20180505'), '... and is no longer a partition of cdp.events');
SELECT is((SELECT count(*)::int FROM cdp.events_p20180505), 1, '... and keeps its rows');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE event = 'Detach Me'), 0,
          'cdp.events no longer shows the detached rows');
SELECT is((SELECT count(*)::int FROM cdp.partitions WHERE partition::text = 'cdp.events_p20180505'), 0,
          'cdp.partitions no longer lists it');
DO $$ BEGIN
    PERFORM cdp.configure_partitions('1 day', 7, archive_interval => NULL);
    PERFORM pg_temp.send('2018-05-05 11:00:00+00', 'Same Day Again');
END $$;
SELECT is((SELECT tableoid::regclass::text FROM cdp.events WHERE event = 'Same Day Again'),
          'cdp.events_p20180505_2',
          'a new partition for a detached one''s day gets a suffixed name');

-- dedup purge
TRUNCATE cdp.message_ids;
INSERT INTO cdp.message_ids (message_key, seen_at)
SELECT gen_random_uuid(), now() - interval '25 hours' FROM generate_series(1, 3);
INSERT INTO cdp.message_ids (message_key, seen_at)
SELECT gen_random_uuid(), now() - interval '23 hours' FROM generate_series(1, 2);
INSERT INTO report VALUES ('purge', cdp.run_maintenance());
SELECT is((SELECT r -> 'dedup_purged' FROM report WHERE run = 'purge'), '3'::jsonb,
          'dedup_purged counts the messageIds older than the window (24 hours)');
SELECT is((SELECT count(*)::int FROM cdp.message_ids), 2, 'messageIds inside the window are kept');
SET LOCAL cdp.dedup_window = '1h';
INSERT INTO report VALUES ('purge 1h', cdp.run_maintenance());
SELECT is((SELECT r -> 'dedup_purged' FROM report WHERE run = 'purge 1h'), '2'::jsonb,
          'the purge follows cdp.dedup_window');
SELECT is((SELECT count(*)::int FROM cdp.message_ids), 0, 'nothing older than the window is left');
RESET cdp.dedup_window;
-- the purge forgets exactly the expired messageIds: one inside the window
-- is still a duplicate after it, a purged one is stored again
CREATE FUNCTION pg_temp.key(id text) RETURNS uuid LANGUAGE sql AS $$
    SELECT encode(substr(sha256(convert_to(id, 'UTF8')), 1, 16), 'hex')::uuid;
$$;
CREATE FUNCTION pg_temp.send_id(event text, id text) RETURNS void LANGUAGE sql AS $$
    SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', event, 'messageId', id));
    SELECT cdp.process_inbox();
$$;
DO $$ BEGIN
    PERFORM pg_temp.send_id('Purged', 'purge-me');
    PERFORM pg_temp.send_id('Kept', 'keep-me');
END $$;
SELECT is((SELECT count(*)::int FROM cdp.message_ids
            WHERE message_key IN (pg_temp.key('purge-me'), pg_temp.key('keep-me'))), 2,
          'both messageIds are remembered, under their digests');
UPDATE cdp.message_ids SET seen_at = now() - interval '2 days' WHERE message_key = pg_temp.key('purge-me');
INSERT INTO report VALUES ('purge one', cdp.run_maintenance());
SELECT is((SELECT r -> 'dedup_purged' FROM report WHERE run = 'purge one'), '1'::jsonb,
          'the purge reports the one expired messageId');
SELECT ok(NOT EXISTS (SELECT 1 FROM cdp.message_ids WHERE message_key = pg_temp.key('purge-me')),
          'the expired messageId is gone from cdp.message_ids');
SELECT ok(EXISTS (SELECT 1 FROM cdp.message_ids WHERE message_key = pg_temp.key('keep-me')),
          'the one inside the window is kept');
DO $$ BEGIN
    PERFORM pg_temp.send_id('Purged', 'purge-me');
    PERFORM pg_temp.send_id('Kept', 'keep-me');
END $$;
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'keep-me'), 1,
          'after the purge a messageId inside the window is still a duplicate');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'purge-me'), 2,
          'a messageId purged from the window is stored again');

-- premaking follows the configured interval
DO $$ BEGIN
    PERFORM pg_temp.drop_partitions();
    PERFORM cdp.configure_partitions('1 week', 2, archive_interval => NULL);
    PERFORM pg_temp.drop_partitions();
END $$;
INSERT INTO report VALUES ('weekly', cdp.run_maintenance());
SELECT is((SELECT r -> 'partitions_created' FROM report WHERE run = 'weekly'), '3'::jsonb,
          'with weekly partitions and premake 2, maintenance creates three');
SELECT is((SELECT count(*)::int FROM cdp.partitions
            WHERE range_to - range_from = interval '7 days' AND extract(isodow FROM range_from) = 1), 3,
          '... each a week from Monday');
SELECT ok((SELECT min(range_from) <= now() AND max(range_to) > now() + interval '14 days' FROM cdp.partitions),
          '... covering now through two weeks ahead');
INSERT INTO report VALUES ('weekly again', cdp.run_maintenance());
SELECT is((SELECT r -> 'partitions_created' FROM report WHERE run = 'weekly again'), '0'::jsonb,
          'and the next run creates none');

SELECT * FROM finish();
ROLLBACK;
