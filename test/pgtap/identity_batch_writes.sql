-- What a batch writes back is written over arrays, a few statements a
-- batch: the members of the stored profiles it touches, merges of stored
-- profiles (a chain within one batch goes straight to the final profile,
-- with everything merged into its links before), and the parts of a split.
-- The rows must be exactly what writing profile by profile gave.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(16);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql

-- p1 (a1: 2 events), p2 (a2: 3 events), p3 (a3: 1 event), p4 (a4: 1 event)
DO $$ BEGIN
    PERFORM pg_temp.send('c-1', '{"anonymousId": "a1"}', '2026-06-01 10:00+00');
    PERFORM pg_temp.send('c-2', '{"anonymousId": "a1"}', '2026-06-01 10:01+00');
    PERFORM pg_temp.send('c-3', '{"anonymousId": "a2"}', '2026-06-01 09:00+00');
    PERFORM pg_temp.send('c-4', '{"anonymousId": "a2"}', '2026-06-01 09:01+00');
    PERFORM pg_temp.send('c-5', '{"anonymousId": "a2"}', '2026-06-01 12:00+00');
    PERFORM pg_temp.send('c-6', '{"anonymousId": "a3"}', '2026-06-01 08:00+00');
    PERFORM pg_temp.send('c-7', '{"anonymousId": "a4"}', '2026-06-01 13:00+00');
    PERFORM pg_temp.run();
    INSERT INTO saved SELECT 'p' || n, pg_temp.pid('anonymous_id:a' || n) FROM generate_series(1, 4) n;
    -- p4 merges into p2 in a batch of its own: p4 follows p2 from now on
    PERFORM pg_temp.send('c-8', '{"anonymousId": "a2", "context": {"device": {"id": "d4"}}}', '2026-06-01 14:00+00');
    PERFORM pg_temp.send('c-9', '{"anonymousId": "a4", "context": {"device": {"id": "d4"}}}', '2026-06-01 14:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT pg_temp.pid('anonymous_id:a4'), merged_into FROM cdp.profile_records WHERE profile_id = pg_temp.saved('p4')$$,
    $$VALUES (pg_temp.saved('p2'), pg_temp.saved('p2'))$$,
    'before: p4 was merged into p2');

-- one batch: a3 with a2 (p3 into p2), then a1 with a3 (p2, holding p3 and p4, into p1)
DO $$ BEGIN
    PERFORM pg_temp.send('c-10', '{"anonymousId": "a3", "context": {"externalIds": [{"type": "crm", "id": "x2"}]}}',
                         '2026-06-01 15:00+00');
    PERFORM pg_temp.send('c-11', '{"anonymousId": "a2", "context": {"externalIds": [{"type": "crm", "id": "x2"}]}}',
                         '2026-06-01 15:01+00');
    PERFORM pg_temp.send('c-12', '{"anonymousId": "a1", "context": {"externalIds": [{"type": "crm", "id": "x2"}]}}',
                         '2026-06-01 15:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*)::int FROM cdp.merges WHERE message_id IN ('c-11', 'c-12')), 2,
          'the batch made two merges');
SELECT set_eq($$SELECT from_profile, into_profile FROM cdp.merges WHERE message_id IN ('c-11', 'c-12')$$,
              $$VALUES (pg_temp.saved('p3'), pg_temp.saved('p2')), (pg_temp.saved('p2'), pg_temp.saved('p1'))$$,
              'the merges are recorded as they happened: p3 into p2, then p2 into p1');
SELECT set_eq($$SELECT DISTINCT profile_id FROM cdp.identities$$, $$VALUES (pg_temp.saved('p1'))$$,
              'every identifier, p3''s and p4''s included, sits on p1');
SELECT set_eq($$SELECT identifier::text FROM cdp.identities$$,
              $$VALUES ('anonymous_id:a1'), ('anonymous_id:a2'), ('anonymous_id:a3'), ('anonymous_id:a4'),
                       ('device_id:d4'), ('crm:x2')$$,
              'and none was lost');
SELECT results_eq(
    $$SELECT profile_id, merged_into, event_count FROM cdp.profile_records ORDER BY profile_id$$,
    $$VALUES (pg_temp.saved('p1'), NULL::bigint, 12::bigint), (pg_temp.saved('p2'), pg_temp.saved('p1'), 0),
             (pg_temp.saved('p3'), pg_temp.saved('p1'), 0), (pg_temp.saved('p4'), pg_temp.saved('p1'), 0)$$,
    'p2, p3 and p4 (merged into p2 before) point straight at p1, which holds all 12 events');
SELECT results_eq(
    $$SELECT first_seen, last_seen FROM cdp.profile_records WHERE profile_id = pg_temp.saved('p1')$$,
    $$VALUES ('2026-06-01 08:00+00'::timestamptz, '2026-06-01 15:02+00'::timestamptz)$$,
    'p1''s first and last seen span every event of the chain');
SELECT set_eq($$SELECT DISTINCT profile_id FROM cdp.events_resolved$$, $$VALUES (pg_temp.saved('p1'))$$,
              'every event resolves to p1');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'a rebuild agrees: 0 changed');

-- a split into three parts: the parts' profiles and identities are written at once
DO $$ BEGIN
    -- s-hub joins three separate pairs; taking it out leaves three parts
    PERFORM pg_temp.send('s-1', '{"anonymousId": "s-a", "context": {"device": {"id": "s-hub"}}}', '2026-06-02 10:00+00');
    PERFORM pg_temp.send('s-2', '{"anonymousId": "s-a", "context": {"traits": {"email": "sa@x.io"}}}', '2026-06-02 10:01+00');
    PERFORM pg_temp.send('s-3', '{"anonymousId": "s-b", "context": {"device": {"id": "s-hub"}}}', '2026-06-02 10:02+00');
    PERFORM pg_temp.send('s-4', '{"anonymousId": "s-b", "context": {"traits": {"email": "sb@x.io"}}}', '2026-06-02 10:03+00');
    PERFORM pg_temp.send('s-5', '{"anonymousId": "s-c", "context": {"device": {"id": "s-hub"}}}', '2026-06-02 10:04+00');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('s', pg_temp.pid('device_id:s-hub'));
END $$;
CREATE TEMP TABLE parts AS SELECT p FROM cdp.split_profile(pg_temp.saved('s'), 'device_id:s-hub') p;
SELECT is((SELECT count(*)::int FROM parts), 4, 'the split returns four profiles (three parts and the one taken out)');
SELECT is((SELECT count(DISTINCT pg_temp.pid(i))::int
             FROM unnest(ARRAY['anonymous_id:s-a', 'anonymous_id:s-b', 'anonymous_id:s-c', 'device_id:s-hub']) i), 4,
          's-a, s-b, s-c and the hub device are on four profiles');
SELECT ok(pg_temp.pid('email:sa@x.io') = pg_temp.pid('anonymous_id:s-a')
          AND pg_temp.pid('email:sb@x.io') = pg_temp.pid('anonymous_id:s-b'),
          'each part keeps what its own evidence joins');
SELECT is(pg_temp.pid('anonymous_id:s-a'), pg_temp.saved('s'), 'the part with the earliest linked identifier keeps the id');
SELECT set_eq($$SELECT DISTINCT profile_id FROM cdp.identities WHERE identifier::text ~ '(:s-|@x\.io$)'$$,
              $$SELECT p FROM parts$$, 'the identities sit exactly on the returned profiles');
SELECT is_empty($$SELECT p FROM parts EXCEPT SELECT profile_id FROM cdp.profiles$$,
                'every returned profile has its canonical profile row');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'a rebuild after the split agrees: 0 changed');

SELECT * FROM finish();
ROLLBACK;
