-- Identity determinism (identity.md "Guarantees we test"): a seeded random
-- workload of anonymous visits, sign-ups with shared emails, devices,
-- aliases, placeholders and CRM ids, under tight rules (limits, a time
-- window, the hub guard) so that every kind of violation happens, processed
-- in small batches.  Then: rebuild_identities(dry_run) reports 0 changes,
-- the graph's invariants hold, and processing the same messages in batches
-- of another size gives the same profiles and violations.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(22);

SET LOCAL timezone = 'UTC';
-- cdp.identifier's operators live in schema cdp (see sql/40_identifier.sql)
SET LOCAL search_path = public, cdp;
CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
    TRUNCATE cdp.events;
    TRUNCATE cdp.identities, cdp.identity_evidence, cdp.identity_pairs, cdp.merges, cdp.identity_violations,
             cdp.identity_splits, cdp.profile_records;
$$;
DO $$ BEGIN PERFORM pg_temp.reset(); END $$;

-- tight rules, written straight into the table (cdp.set_identity_rule is
-- tested in identity_rules.sql): two emails, two devices within six hours,
-- three CRM ids, and a low hub limit
UPDATE cdp.identity_rules SET max_per_profile = 2 WHERE id_type = 'email';
UPDATE cdp.identity_rules SET max_per_profile = 2, time_window = '6 hours' WHERE id_type = 'device_id';
INSERT INTO cdp.identity_rules VALUES ('crm', 6, 3, NULL);
SET LOCAL cdp.max_merges_per_profile = 4;

-- the workload: 3000 messages, in ingest order.  150 users, each with a few
-- browsers (anonymous ids), devices and emails of their own; some browsers,
-- devices and emails are shared between users.
CREATE TEMP TABLE workload (n int PRIMARY KEY, payload jsonb NOT NULL);
DO $$
DECLARE
    ts timestamptz := '2026-06-01 00:00:00+00';
    k int := 0;
    r float8;
    un int;
    u text;
    a text;
    d text;
    e text;
    msg jsonb;
    second jsonb;
BEGIN
    PERFORM setseed(0.4242);
    WHILE k < 3000 LOOP
        ts := ts + (random() * 90)::int * interval '1 second';
        r := random();
        un := floor(random() * 150)::int;
        u := 'u' || un;
        a := CASE WHEN random() < 0.9 THEN 'a' || un || '-' || floor(random() * 4)::int
                  ELSE 'shared-a' || floor(random() * 20)::int END;
        d := CASE WHEN random() < 0.9 THEN 'd' || un || '-' || floor(random() * 4)::int
                  ELSE 'shared-d' || floor(random() * 10)::int END;
        e := CASE WHEN random() < 0.8 THEN 'User' || un || '.' || floor(random() * 3)::int || '@X.io'
                  ELSE 'Shared' || floor(random() * 15)::int || '@X.io' END;
        second := NULL;
        IF r < 0.30 THEN
            -- an anonymous page view, half of them from a device
            msg := jsonb_build_object('type', 'page', 'name', 'Home', 'anonymousId', a);
            IF random() < 0.5 THEN
                msg := msg || jsonb_build_object('context', jsonb_build_object('device', jsonb_build_object('id', d)));
            END IF;
        ELSIF r < 0.55 THEN
            -- identify: user + browser, often with an email
            msg := jsonb_build_object('type', 'identify', 'userId', u, 'anonymousId', a);
            IF random() < 0.6 THEN
                msg := msg || jsonb_build_object('traits', jsonb_build_object('email', e));
            END IF;
        ELSIF r < 0.70 THEN
            -- a logged-in user on a device
            msg := jsonb_build_object('type', 'track', 'event', 'Played', 'userId', u,
                                      'context', jsonb_build_object('device', jsonb_build_object('id', d)));
        ELSIF r < 0.78 THEN
            -- alias from an anonymous id or from another user id
            msg := jsonb_build_object('type', 'alias', 'userId', u, 'previousId',
                       CASE WHEN random() < 0.5 THEN a ELSE 'u' || floor(random() * 150)::int END);
        ELSIF r < 0.84 THEN
            -- a brand-new user signs up and is aliased at once
            msg := jsonb_build_object('type', 'identify', 'userId', 'new' || k, 'anonymousId', a);
            second := jsonb_build_object('type', 'alias', 'previousId', 'new' || k, 'userId', u);
        ELSIF r < 0.92 THEN
            -- placeholders, alone or beside a real identifier
            msg := jsonb_strip_nulls(jsonb_build_object('type', 'track', 'event', 'Viewed',
                       'anonymousId', (ARRAY['guest', 'undefined', '0', 'null', '00000', '[object Object]', 'None'])
                                          [1 + floor(random() * 7)::int],
                       'userId', CASE WHEN random() < 0.5 THEN u END));
        ELSE
            -- CRM ids: one to four per message
            msg := jsonb_build_object('type', 'identify', 'userId', u, 'context', jsonb_build_object('externalIds',
                       (SELECT jsonb_agg(jsonb_build_object('type', 'CRM', 'id', 'c' || un || '-' || floor(random() * 5)::int))
                          FROM generate_series(1, 1 + floor(random() * 4)::int))));
        END IF;
        -- one in ten arrives late, up to three hours behind
        k := k + 1;
        INSERT INTO workload VALUES (k, msg || jsonb_build_object('messageId', 'w-' || k, 'timestamp',
            ts - CASE WHEN random() < 0.1 THEN (random() * 3)::int * interval '1 hour' ELSE interval '0' END));
        IF second IS NOT NULL THEN
            k := k + 1;
            INSERT INTO workload VALUES (k, second || jsonb_build_object('messageId', 'w-' || k, 'timestamp', ts));
        END IF;
    END LOOP;
END
$$;
CREATE FUNCTION pg_temp.load() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(cdp.ingest(payload)) FROM (SELECT payload FROM workload ORDER BY n) w
$$;
-- each identifier labelled by the smallest identifier of its profile:
-- comparable across runs whatever the profile ids
CREATE FUNCTION pg_temp.partition() RETURNS TABLE (identifier text, label text) LANGUAGE sql AS $$
    SELECT i.identifier::text, min(i.identifier::text) OVER (PARTITION BY i.profile_id) FROM cdp.identities i
$$;

--
-- batches of 50
--
SET LOCAL cdp.batch_size = 50;
SELECT is(pg_temp.load(), (SELECT count(*) FROM workload), 'the workload is enqueued');
SELECT is(cdp.process_inbox(), (SELECT count(*) FROM workload), 'process_inbox in batches of 50 takes every message');
SELECT is((SELECT count(*) FROM cdp.events), (SELECT count(*) FROM workload), 'every message is stored as an event');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'nothing is dead-lettered');

SELECT set_has(
    $$SELECT DISTINCT rule FROM cdp.identity_violations$$,
    $$VALUES ('blocked'), ('user_id.max_per_profile'), ('email.max_per_profile'), ('device_id.max_per_profile'),
             ('crm.max_per_profile'), ('hub')$$,
    'the workload breaks every kind of rule (blocked, user_id, email, device_id in its window, crm, hub)');
SELECT cmp_ok((SELECT count(*)::int FROM cdp.merges), '>', 100, 'the workload merges profiles');
-- a rebuild's graph starts with room for a few hundred identifiers
-- (identity_store.c): this one must grow its blocks and lookup tables
SELECT cmp_ok((SELECT count(*)::int FROM cdp.identities), '>', 1000,
              'the workload holds more identifiers than the graph storage starts with');

SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'rebuild_identities(dry_run) over the evidence reproduces the online result: 0 changed');

SELECT is((SELECT count(*) FROM cdp.identities), (SELECT count(DISTINCT identifier) FROM cdp.identities),
          'no identifier sits on two profiles');
SELECT is_empty(
    $$SELECT i.identifier FROM cdp.identities i LEFT JOIN cdp.profile_records r USING (profile_id)
       WHERE r.profile_id IS NULL OR r.merged_into IS NOT NULL$$,
    'every profile_id in cdp.identities is an existing canonical profile');
SELECT is_empty(
    $$SELECT * FROM cdp.merges WHERE into_profile >= from_profile$$,
    'every merge goes into the older (lower id) profile');
SELECT is_empty(
    $$SELECT r.profile_id FROM cdp.profile_records r JOIN cdp.profile_records t ON t.profile_id = r.merged_into
       WHERE t.merged_into IS NOT NULL$$,
    'merged-away profiles point straight at a canonical profile');
SELECT is_empty(
    $$SELECT e.message_id FROM cdp.events_resolved e LEFT JOIN cdp.profiles p USING (profile_id)
       WHERE e.profile_id IS NOT NULL AND p.profile_id IS NULL$$,
    'every event resolves to a canonical profile');
SELECT results_eq(
    $$SELECT profile_id, event_count, first_seen, last_seen FROM cdp.profiles WHERE event_count > 0 ORDER BY profile_id$$,
    $$SELECT profile_id, count(*), min(ts), max(ts) FROM cdp.events_resolved
       WHERE profile_id IS NOT NULL GROUP BY profile_id ORDER BY profile_id$$,
    'cdp.profiles event_count, first_seen and last_seen equal the events resolving to each profile');

CREATE TEMP TABLE run50 AS SELECT * FROM pg_temp.partition();
CREATE TEMP TABLE run50_violations AS
SELECT message_id, identifier::text, rule FROM cdp.identity_violations;
CREATE TEMP TABLE run50_evidence AS
SELECT message_id, identifiers::text FROM cdp.identity_evidence;
CREATE TEMP TABLE run50_pairs AS
SELECT a::text, b::text, message_id FROM cdp.identity_pairs;
CREATE TEMP TABLE run50_events AS
SELECT e.message_id, p.label FROM cdp.events_resolved e
  LEFT JOIN LATERAL (SELECT min(i.identifier::text) AS label FROM cdp.identities i WHERE i.profile_id = e.profile_id) p ON true;

--
-- the same messages in batches of 7
--
DO $$ BEGIN PERFORM pg_temp.reset(); END $$;
SET LOCAL cdp.batch_size = 7;
SELECT is(pg_temp.load(), (SELECT count(*) FROM workload), 'the workload is enqueued again');
SELECT is(cdp.process_inbox(), (SELECT count(*) FROM workload), 'process_inbox in batches of 7 takes every message');
SELECT set_eq($$SELECT * FROM pg_temp.partition()$$, $$SELECT * FROM run50$$,
              'batches of 7 and of 50 give the same profiles');
SELECT set_eq($$SELECT message_id, identifier::text, rule FROM cdp.identity_violations$$,
              $$SELECT * FROM run50_violations$$,
              'batches of 7 and of 50 record the same violations');
SELECT set_eq(
    $$SELECT e.message_id, p.label FROM cdp.events_resolved e
        LEFT JOIN LATERAL (SELECT min(i.identifier::text) AS label FROM cdp.identities i WHERE i.profile_id = e.profile_id) p ON true$$,
    $$SELECT * FROM run50_events$$,
    'batches of 7 and of 50 give every event the same profile');
SELECT set_eq($$SELECT message_id, identifiers::text FROM cdp.identity_evidence$$,
              $$SELECT * FROM run50_evidence$$,
              'batches of 7 and of 50 store the same evidence rows');
SELECT set_eq($$SELECT a::text, b::text, message_id FROM cdp.identity_pairs$$,
              $$SELECT * FROM run50_pairs$$,
              'batches of 7 and of 50 store the same pairs, with the same first messages');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'rebuild dry run after batches of 7 reports 0 changed');

SELECT * FROM finish();
ROLLBACK;
