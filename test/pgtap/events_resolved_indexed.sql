-- cdp.events_resolved gives every event its profile's canonical id (merged
-- profiles followed, unresolved events NULL) exactly as one LEFT JOIN with
-- cdp.profile_records does, and a condition on its profile_id reaches the
-- partitions' (profile_id, ts) index and profile_records' indexes: a
-- person's timeline never reads every event, and reads each partition once.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
SELECT cdp.block_identifier('anonymous_id', 'erx-blocked');
-- ann: an anonymous visit, then a login that merges it into her profile;
-- bob: a user of his own; one event of a blocked visitor (no profile)
SELECT cdp.ingest('{"type": "track", "event": "Visit", "anonymousId": "erx-a1", "messageId": "erx-1", "timestamp": "2026-01-01T10:00:00Z"}');
SELECT cdp.ingest('{"type": "identify", "userId": "erx-ann", "messageId": "erx-2", "timestamp": "2026-01-01T10:01:00Z"}');
SELECT cdp.ingest('{"type": "track", "event": "Buy", "userId": "erx-bob", "messageId": "erx-3", "timestamp": "2026-01-01T10:02:00Z"}');
SELECT cdp.ingest('{"type": "track", "event": "Visit", "anonymousId": "erx-blocked", "messageId": "erx-4", "timestamp": "2026-01-01T10:03:00Z"}');
SELECT cdp.process_inbox();
SELECT cdp.ingest('{"type": "identify", "userId": "erx-ann", "anonymousId": "erx-a1", "messageId": "erx-5", "timestamp": "2026-01-01T10:04:00Z"}');
SELECT cdp.process_inbox();

SELECT isnt((SELECT profile_id FROM cdp.events WHERE message_id = 'erx-1'),
            (SELECT profile_id FROM cdp.events WHERE message_id = 'erx-2'),
            'ann''s anonymous visit stays stored under the profile merged away');

-- the reference: the plain LEFT JOIN a user would write
CREATE TEMP VIEW erx_reference AS
SELECT e.message_id, coalesce(p.merged_into, nullif(e.profile_id, 0)) AS profile_id
  FROM cdp.events e
  LEFT JOIN cdp.profile_records p ON p.profile_id = e.profile_id AND p.merged_into IS NOT NULL;

SELECT set_eq($$SELECT message_id, profile_id FROM cdp.events_resolved$$,
              $$SELECT message_id, profile_id FROM erx_reference$$,
              'every event, merged or unresolved, once, with the reference''s profile id');
SELECT is((SELECT count(*) FROM cdp.events_resolved), (SELECT count(*) FROM cdp.events),
          'as many rows as events');
SELECT results_eq($$SELECT message_id FROM cdp.events_resolved
                     WHERE profile_id = cdp.resolve('user_id:erx-ann') ORDER BY ts$$,
                  $$VALUES ('erx-1'::text), ('erx-2'), ('erx-5')$$,
                  'ann''s timeline holds her anonymous visit');
SELECT is((SELECT profile_id FROM cdp.events_resolved WHERE message_id = 'erx-4'), NULL,
          'the blocked visitor''s event has no profile');

-- Every scan of an event partition in the plan must look the profile up in
-- its index (an Index Cond on profile_id), sequential scans priced out; the
-- LEFT JOIN form, whose profile_id is an expression, cannot.
CREATE FUNCTION pg_temp.plan_lines(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (COSTS OFF) ' || q;
END $$;
CREATE FUNCTION pg_temp.events_read_by_profile(q text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    line text;
    scans int := 0;
    pending boolean := false;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
        IF pending THEN
            IF line !~ 'Index Cond: \(profile_id = ' THEN
                RETURN false;
            END IF;
            pending := false;
        END IF;
        IF line ~ 'Scan .* on events_p' THEN
            scans := scans + 1;
            pending := true;
        END IF;
    END LOOP;
    RETURN scans > 0 AND NOT pending;
END $$;
SET LOCAL enable_seqscan = off;
SELECT ok(pg_temp.events_read_by_profile($$SELECT * FROM cdp.events_resolved
                                          WHERE profile_id = cdp.resolve('user_id:erx-ann')
                                          ORDER BY ts DESC LIMIT 100$$),
          'a timeline through cdp.events_resolved reads the events by the profile index');
SELECT ok(NOT pg_temp.events_read_by_profile($$SELECT * FROM erx_reference
                                              WHERE profile_id = cdp.resolve('user_id:erx-ann')$$),
          'the LEFT JOIN form cannot (the check can tell)');

-- a timeline's plan scans each partition once, not once per way an event
-- can belong to the person (its own profile, a profile merged into it)
CREATE FUNCTION pg_temp.partition_scans(q text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM pg_temp.plan_lines(q) l
     WHERE l ~ 'Scan .* on events_p' AND l !~ 'Bitmap Index Scan'
$$;
SELECT is(pg_temp.partition_scans($$SELECT * FROM cdp.events_resolved
                                    WHERE profile_id = cdp.resolve('user_id:erx-ann')
                                    ORDER BY ts DESC LIMIT 100$$),
          (SELECT count(*) FROM pg_inherits WHERE inhparent = 'cdp.events'::regclass),
          'a timeline through cdp.events_resolved scans each partition once');

SELECT * FROM finish();
ROLLBACK;
