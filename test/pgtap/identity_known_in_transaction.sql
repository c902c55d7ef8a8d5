-- Once a transaction holds the identity lock, what its batches read of the
-- identity graph and the profile rows they locked stay true until it ends:
-- later batches of known identifiers neither look them up again nor lock
-- their rows again.  Whatever changes the graph in the same transaction
-- must make it read again: a merge (online or by cdp.link), a split, a
-- rebuild, forget, and a rolled-back subtransaction whose writes are gone.
-- (pgTAP runs the whole file in one transaction, as one long ingest is.)
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(21);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
SET LOCAL cdp.batch_size = 2;

-- lookups of identities made in this transaction
CREATE FUNCTION pg_temp.identity_reads() RETURNS bigint LANGUAGE sql AS $$
    SELECT idx_scan + seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'cdp.identities'::regclass
$$;
-- events that do not sit on the profile holding their identifier now
CREATE FUNCTION pg_temp.misplaced() RETURNS SETOF text LANGUAGE sql AS $$
    SELECT e.message_id FROM cdp.events_resolved e
     WHERE e.profile_id IS DISTINCT FROM cdp.resolve(('anonymous_id:' || e.anonymous_id)::cdp.identifier)
$$;
-- canonical profiles that do not count exactly their events
CREATE FUNCTION pg_temp.miscounted() RETURNS SETOF bigint LANGUAGE sql AS $$
    SELECT r.profile_id FROM cdp.profile_records r
      LEFT JOIN (SELECT profile_id, count(*) AS n FROM cdp.events_resolved GROUP BY 1) c USING (profile_id)
     WHERE r.merged_into IS NULL AND r.event_count <> coalesce(c.n, 0)
$$;

-- a1 and a2 are new: the batch takes the identity lock
SELECT pg_temp.send('k-1', '{"anonymousId": "a1"}');
SELECT pg_temp.send('k-2', '{"anonymousId": "a2"}');
SELECT is(pg_temp.run(), 2::bigint, 'two new visitors are stored');
INSERT INTO saved SELECT 'p' || n, pg_temp.pid('anonymous_id:a' || n) FROM generate_series(1, 2) n;

-- known visitors again, in later batches of a later call
CREATE TEMP TABLE reads_before AS SELECT pg_temp.identity_reads() AS n;
SELECT pg_temp.send('k-3', '{"anonymousId": "a1"}');
SELECT pg_temp.send('k-4', '{"anonymousId": "a2"}');
SELECT pg_temp.send('k-5', '{"anonymousId": "a1"}');
SELECT is(pg_temp.run(), 3::bigint, 'three more events of them');
SELECT is(pg_temp.identity_reads() - (SELECT n FROM reads_before), 0::bigint,
          'their identities are not looked up again');
SELECT results_eq($$SELECT message_id, profile_id FROM cdp.events WHERE message_id IN ('k-3', 'k-4', 'k-5') ORDER BY 1$$,
                  $$VALUES ('k-3', pg_temp.saved('p1')), ('k-4', pg_temp.saved('p2')), ('k-5', pg_temp.saved('p1'))$$,
                  'and their events sit on their profiles');

-- a rolled-back savepoint takes its new identity with it
SAVEPOINT before_x;
SELECT pg_temp.send('x-1', '{"anonymousId": "x1"}');
SELECT pg_temp.run();
ROLLBACK TO SAVEPOINT before_x;
SELECT is(pg_temp.pid('anonymous_id:x1'), NULL, 'the savepoint rolled back: x1 is unknown');
SELECT pg_temp.send('x-2', '{"anonymousId": "x1"}');
SELECT pg_temp.send('x-3', '{"anonymousId": "a1"}');
SELECT pg_temp.run();
SELECT isnt(pg_temp.pid('anonymous_id:x1'), NULL, 'x1 seen again after it is stored again');
SELECT is((SELECT profile_id FROM cdp.events WHERE message_id = 'x-2'), pg_temp.pid('anonymous_id:x1'),
          'and its event sits on the profile that holds it');

-- cdp.link merges a1 and a2 in the same transaction
SELECT ok(cdp.link('anonymous_id:a1', 'anonymous_id:a2') IS NOT NULL, 'a1 and a2 linked');
SELECT pg_temp.send('l-1', '{"anonymousId": "a2"}');
SELECT pg_temp.send('l-2', '{"anonymousId": "a1"}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT DISTINCT profile_id FROM cdp.events WHERE message_id IN ('l-1', 'l-2')$$,
                  $$VALUES (pg_temp.pid('anonymous_id:a1'))$$,
                  'events after the link sit on the one profile holding both');

-- an online merge: a3 and a4 separate, then one message carries both
SELECT pg_temp.send('m-1', '{"anonymousId": "a3"}');
SELECT pg_temp.send('m-2', '{"anonymousId": "a4", "userId": "u4"}');
SELECT pg_temp.run();
SELECT pg_temp.send('m-3', '{"anonymousId": "a3", "userId": "u4"}');
SELECT pg_temp.send('m-4', '{"anonymousId": "a4"}');
SELECT pg_temp.send('m-5', '{"anonymousId": "a3"}');
SELECT pg_temp.run();
SELECT is(pg_temp.pid('anonymous_id:a3'), pg_temp.pid('anonymous_id:a4'), 'a3 and a4 merged');
SELECT results_eq($$SELECT DISTINCT profile_id FROM cdp.events WHERE message_id IN ('m-4', 'm-5')$$,
                  $$VALUES (pg_temp.pid('anonymous_id:a3'))$$,
                  'events after the merge sit on the merged profile');

-- a split in the same transaction: a5 and device d5 on one profile, then d5 taken out
SELECT pg_temp.send('s-1', '{"anonymousId": "a5", "context": {"device": {"id": "d5"}}}');
SELECT pg_temp.run();
SELECT pg_temp.send('s-2', '{"anonymousId": "a5"}');
SELECT pg_temp.run();
SELECT ok((SELECT count(*) FROM cdp.split_profile(pg_temp.pid('anonymous_id:a5'), 'device_id:d5')) > 0,
          'd5 split out of a5''s profile');
SELECT pg_temp.send('s-3', '{"anonymousId": "a6", "context": {"device": {"id": "d5"}}}');
SELECT pg_temp.send('s-4', '{"anonymousId": "a5"}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT message_id, profile_id FROM cdp.events WHERE message_id IN ('s-3', 's-4') ORDER BY 1$$,
                  $$VALUES ('s-3', pg_temp.pid('device_id:d5')), ('s-4', pg_temp.pid('anonymous_id:a5'))$$,
                  'events after the split sit on the profile of their side');
SELECT isnt(pg_temp.pid('device_id:d5'), pg_temp.pid('anonymous_id:a5'), 'the two sides stay apart');

-- a value blocked in the same transaction: a7 is known (kept), then blocked
SELECT pg_temp.send('b-1', '{"anonymousId": "a7"}');
SELECT pg_temp.run();
SELECT pg_temp.send('b-2', '{"anonymousId": "a7"}');
SELECT pg_temp.run();
SELECT cdp.block_identifier('anonymous_id', 'a7');
SELECT pg_temp.send('b-3', '{"anonymousId": "a7", "userId": "u7"}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT profile_id = pg_temp.pid('user_id:u7'), profile_id = pg_temp.pid('anonymous_id:a7')
                      FROM cdp.events WHERE message_id = 'b-3'$$,
                  $$VALUES (true, false)$$,
                  'an identifier blocked in the same transaction links nothing: the event sits on u7 alone');
DELETE FROM cdp.blocked_identifiers WHERE id_type = 'anonymous_id' AND pattern = 'a7';

-- a rebuild in the same transaction, then more events
SELECT ok(cdp.rebuild_identities() IS NOT NULL, 'rebuilt');
SELECT pg_temp.send('r-1', '{"anonymousId": "a1"}');
SELECT pg_temp.send('r-2', '{"anonymousId": "a5"}');
SELECT pg_temp.run();

-- forget in the same transaction: f1's identity is gone, its next message stored nowhere
SELECT pg_temp.send('f-1', '{"anonymousId": "f1"}');
SELECT pg_temp.send('f-2', '{"anonymousId": "a2"}');
SELECT pg_temp.run();
SELECT ok(cdp.forget('anonymous_id:f1') IS NOT NULL, 'f1 forgotten');
SELECT pg_temp.send('f-3', '{"anonymousId": "f1"}');
SELECT pg_temp.send('f-4', '{"anonymousId": "a2"}');
SELECT pg_temp.run();
SELECT is(pg_temp.pid('anonymous_id:f1'), NULL, 'the forgotten identifier is not stored again');

SELECT is_empty('SELECT * FROM pg_temp.misplaced()',
                'every event sits on the profile holding its identifier now');
SELECT is_empty('SELECT * FROM pg_temp.miscounted()', 'every profile counts exactly its events');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0, 'a replay of the evidence agrees');

SELECT * FROM finish();
ROLLBACK;
