-- Identity determinism (identity.md "Guarantees we test"): a seeded random
-- workload of anonymous visits, sign-ups with shared emails, devices,
-- aliases, placeholders and CRM ids, under tight rules (limits, a time
-- window, a low hub guard) so that every kind of violation happens.
--
-- The same messages are processed again and again from an empty graph:
-- in batches of 50 (the reference), of 7, of 1 then 333, and of 1000 cut
-- by process_inbox(n) calls of uneven sizes.  Each run must give the same
-- profiles, compared as sets of identifiers (profile ids may differ), the
-- same violations, every event the same profile, and the same evidence
-- rows and pairs.  Then the rules change after ingest, with hubs present
-- (a higher hub limit, a lower email limit): rebuild_identities applies
-- them, and more messages arrive under them, in two batch layouts (50; 13
-- then 1000, cut by uneven calls) that must again agree.  After every run:
-- the rebuild dry run reports 0 changed, the stored graph keeps its
-- invariants (limits hold, identifiers sit on canonical profiles, merges go
-- into the older profile), and each profile's event_count, first_seen and
-- last_seen are those of the events resolving to it.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(85);

SET LOCAL timezone = 'UTC';
-- cdp.identifier's operators live in schema cdp (see sql/40_identifier.sql)
SET LOCAL search_path = public, cdp;
CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
    TRUNCATE cdp.events;
    TRUNCATE cdp.identities, cdp.identity_evidence, cdp.identity_pairs, cdp.merges, cdp.identity_violations,
             cdp.identity_splits, cdp.profile_records;
$$;

-- the tight rules every run starts from, written straight into the table
-- (cdp.set_identity_rule is tested in identity_rules.sql): two emails, two
-- devices within six hours, three CRM ids, and a low hub limit
CREATE FUNCTION pg_temp.tight_rules() RETURNS void LANGUAGE sql AS $$
    DELETE FROM cdp.identity_rules;
    INSERT INTO cdp.identity_rules VALUES ('user_id', 1, 1, NULL), ('email', 2, 2, NULL),
        ('phone', 3, 5, NULL), ('device_id', 4, 2, '6 hours'), ('anonymous_id', 5, 1000, NULL),
        ('crm', 6, 3, NULL), ('*', 10, 5, NULL);
    SELECT set_config('cdp.max_merges_per_profile', '3', true);
$$;
-- the rules changed after ingest: hubs may absorb more, one email a profile
CREATE FUNCTION pg_temp.changed_rules() RETURNS void LANGUAGE sql AS $$
    UPDATE cdp.identity_rules SET max_per_profile = 1 WHERE id_type = 'email';
    SELECT set_config('cdp.max_merges_per_profile', '12', true);
$$;

-- The workload, in ingest order: part 1 is 2000 messages; part 2 (500)
-- comes after the rules change.  150 users, each with a few browsers
-- (anonymous ids), devices and emails of their own; some browsers, devices
-- and emails are shared between users.
CREATE TEMP TABLE workload (n int PRIMARY KEY, part int NOT NULL, payload jsonb NOT NULL);
CREATE FUNCTION pg_temp.generate(part int, seed float8, first_k int, nmsgs int, start_ts timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ts timestamptz := start_ts;
    k int := first_k;
    r float8;
    un int;
    u text;
    a text;
    d text;
    e text;
    msg jsonb;
    second jsonb;
BEGIN
    PERFORM setseed(seed);
    WHILE k < first_k + nmsgs LOOP
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
        INSERT INTO workload VALUES (k, part, msg || jsonb_build_object('messageId', 'w-' || k, 'timestamp',
            ts - CASE WHEN random() < 0.1 THEN (random() * 3)::int * interval '1 hour' ELSE interval '0' END));
        IF second IS NOT NULL THEN
            k := k + 1;
            INSERT INTO workload VALUES (k, part, second || jsonb_build_object('messageId', 'w-' || k, 'timestamp', ts));
        END IF;
    END LOOP;
END
$$;
SELECT pg_temp.generate(1, 0.4242, 0, 2000, '2026-06-01 00:00:00+00');
SELECT pg_temp.generate(2, 0.1717, 100000, 500, '2026-06-04 00:00:00+00');

-- enqueue a part; process it with batch_size in process_inbox(n) calls of
-- the given sizes, then the rest in one call (in batches of rest_batch_size
-- if given): the number processed
CREATE FUNCTION pg_temp.ingest(part int, batch_size int, calls int[] DEFAULT '{}',
                               rest_batch_size int DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    done bigint := 0;
    size int;
BEGIN
    PERFORM cdp.ingest(w.payload) FROM (SELECT payload FROM workload WHERE workload.part = ingest.part ORDER BY workload.n) w;
    PERFORM set_config('cdp.batch_size', batch_size::text, true);
    FOREACH size IN ARRAY calls LOOP
        done := done + cdp.process_inbox(size);
    END LOOP;
    PERFORM set_config('cdp.batch_size', coalesce(rest_batch_size, batch_size)::text, true);
    RETURN done + cdp.process_inbox();
END
$$;
CREATE FUNCTION pg_temp.expected(upto int) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM workload WHERE part <= upto
$$;

-- the profiles as sets of identifiers: comparable across runs whatever the ids
CREATE FUNCTION pg_temp.profiles() RETURNS TABLE (members text[]) LANGUAGE sql AS $$
    SELECT array_agg(i.identifier::text ORDER BY i.identifier::text) FROM cdp.identities i GROUP BY i.profile_id
$$;
-- every event with the smallest identifier of the profile it resolves to
CREATE FUNCTION pg_temp.event_profiles() RETURNS TABLE (message_id text, label text) LANGUAGE sql AS $$
    SELECT e.message_id, p.label FROM cdp.events_resolved e
      LEFT JOIN LATERAL (SELECT min(i.identifier::text) AS label FROM cdp.identities i
                          WHERE i.profile_id = e.profile_id) p ON true
$$;
CREATE FUNCTION pg_temp.violations() RETURNS TABLE (message_id text, identifier text, rule text) LANGUAGE sql AS $$
    SELECT v.message_id, v.identifier::text, v.rule FROM cdp.identity_violations v
$$;
-- the evidence: the messages replayed, and the pairs with their first message
CREATE FUNCTION pg_temp.evidence() RETURNS TABLE (message_id text, identifiers text) LANGUAGE sql AS $$
    SELECT e.message_id, e.identifiers::text FROM cdp.identity_evidence e
$$;
CREATE FUNCTION pg_temp.pairs() RETURNS TABLE (a text, b text, message_id text) LANGUAGE sql AS $$
    SELECT p.a::text, p.b::text, p.message_id FROM cdp.identity_pairs p
$$;
CREATE TEMP TABLE ref_profiles (members text[]);
CREATE TEMP TABLE ref_events (message_id text, label text);
CREATE TEMP TABLE ref_violations (message_id text, identifier text, rule text);
CREATE TEMP TABLE ref_evidence (message_id text, identifiers text);
CREATE TEMP TABLE ref_pairs (a text, b text, message_id text);
CREATE FUNCTION pg_temp.keep_reference() RETURNS void LANGUAGE sql AS $$
    TRUNCATE ref_profiles, ref_events, ref_violations, ref_evidence, ref_pairs;
    INSERT INTO ref_profiles SELECT * FROM pg_temp.profiles();
    INSERT INTO ref_events SELECT * FROM pg_temp.event_profiles();
    INSERT INTO ref_violations SELECT * FROM pg_temp.violations();
    INSERT INTO ref_evidence SELECT * FROM pg_temp.evidence();
    INSERT INTO ref_pairs SELECT * FROM pg_temp.pairs();
$$;

-- what must hold after every run (6 tests)
CREATE FUNCTION pg_temp.invariants(run text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEXT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
                   run || ': rebuild_identities(dry_run) reproduces the stored graph: 0 changed');
    RETURN NEXT is_empty(
        $q$SELECT i.profile_id, cdp.id_type(i.identifier), count(*) FROM cdp.identities i
             JOIN cdp.identity_rules r ON r.id_type = cdp.id_type(i.identifier)
            WHERE r.max_per_profile IS NOT NULL AND r.time_window IS NULL
            GROUP BY 1, 2, r.max_per_profile HAVING count(*) > r.max_per_profile$q$,
        run || ': no profile holds more identifiers of a type than its limit');
    RETURN NEXT is_empty(
        $q$SELECT i.identifier FROM cdp.identities i LEFT JOIN cdp.profile_records r USING (profile_id)
            WHERE r.profile_id IS NULL OR r.merged_into IS NOT NULL$q$,
        run || ': every identifier sits on an existing canonical profile');
    RETURN NEXT is_empty(
        $q$SELECT r.profile_id FROM cdp.profile_records r
             JOIN cdp.profile_records t ON t.profile_id = r.merged_into WHERE t.merged_into IS NOT NULL$q$,
        run || ': merged-away profiles point straight at a canonical profile');
    RETURN NEXT is_empty(
        $q$SELECT * FROM cdp.merges WHERE into_profile >= from_profile
             AND reason NOT LIKE 'rebuild: emptied,%'$q$,
        run || ': every merge went into the older (lower id) profile (a profile a rebuild emptied redirects to where its identifiers went)');
    RETURN NEXT set_eq(
        $q$SELECT p.profile_id, p.event_count, p.first_seen, p.last_seen FROM cdp.profiles p
            WHERE p.event_count > 0 OR EXISTS (SELECT 1 FROM cdp.identities i WHERE i.profile_id = p.profile_id)$q$,
        $q$SELECT p.profile_id, count(e.ts), min(e.ts), max(e.ts) FROM cdp.profiles p
             LEFT JOIN cdp.events_resolved e USING (profile_id)
            WHERE p.event_count > 0 OR EXISTS (SELECT 1 FROM cdp.identities i WHERE i.profile_id = p.profile_id)
            GROUP BY p.profile_id$q$,
        run || ': each profile''s event_count, first_seen and last_seen are those of the events resolving to it');
END
$$;

-- the same as the reference (5 tests)
CREATE FUNCTION pg_temp.same_as_reference(run text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEXT set_eq('SELECT * FROM pg_temp.profiles()', 'SELECT * FROM ref_profiles',
                       run || ': the same profiles (as sets of identifiers) as the reference');
    RETURN NEXT set_eq('SELECT * FROM pg_temp.violations()', 'SELECT * FROM ref_violations',
                       run || ': the same violations as the reference');
    RETURN NEXT set_eq('SELECT * FROM pg_temp.event_profiles()', 'SELECT * FROM ref_events',
                       run || ': every event resolves to the same profile as in the reference');
    RETURN NEXT set_eq('SELECT * FROM pg_temp.evidence()', 'SELECT * FROM ref_evidence',
                       run || ': the same evidence rows as the reference');
    RETURN NEXT set_eq('SELECT * FROM pg_temp.pairs()', 'SELECT * FROM ref_pairs',
                       run || ': the same pairs, with the same first messages, as the reference');
END
$$;

--
-- the reference: batches of 50
--
SELECT pg_temp.reset();
SELECT pg_temp.tight_rules();
SELECT is(pg_temp.ingest(1, 50), pg_temp.expected(1), 'batches of 50: every message is processed');
SELECT is((SELECT count(*) FROM cdp.events), pg_temp.expected(1), 'batches of 50: every message is stored as an event');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'batches of 50: nothing is dead-lettered');
SELECT set_has(
    $$SELECT DISTINCT rule FROM cdp.identity_violations$$,
    $$VALUES ('blocked'), ('user_id.max_per_profile'), ('email.max_per_profile'), ('device_id.max_per_profile'),
             ('crm.max_per_profile'), ('hub')$$,
    'the workload breaks every kind of rule (blocked, user_id, email, device_id in its window, crm, hub)');
SELECT cmp_ok((SELECT count(*)::int FROM cdp.merges), '>', 50, 'the workload merges profiles');
SELECT cmp_ok((SELECT count(*)::int FROM cdp.profile_records WHERE merges_absorbed >= 3), '>', 0,
              'the workload makes hubs (profiles at the hub limit)');
-- a rebuild's graph starts with room for a few hundred identifiers
-- (identity_store.c): this one must grow its blocks and lookup tables
SELECT cmp_ok((SELECT count(*)::int FROM cdp.identities), '>', 1000,
              'the workload holds more identifiers than the graph storage starts with');
SELECT * FROM pg_temp.invariants('batches of 50');
SELECT pg_temp.keep_reference();

--
-- the same messages in other batch layouts
--
SELECT pg_temp.reset();
SELECT is(pg_temp.ingest(1, 7), pg_temp.expected(1), 'batches of 7: every message is processed');
SELECT * FROM pg_temp.same_as_reference('batches of 7');
SELECT * FROM pg_temp.invariants('batches of 7');

SELECT pg_temp.reset();
SELECT is(pg_temp.ingest(1, 1, ARRAY[400], 333), pg_temp.expected(1),
          'batches of 1 for 400 messages, then of 333: every message is processed');
SELECT * FROM pg_temp.same_as_reference('batches of 1, then 333');
SELECT * FROM pg_temp.invariants('batches of 1, then 333');

SELECT pg_temp.reset();
SELECT is(pg_temp.ingest(1, 1000, ARRAY[1, 13, 2, 499, 1, 1200, 37]), pg_temp.expected(1),
          'batches of 1000 cut by process_inbox(n) of 1, 13, 2, 499, 1, 1200, 37 and the rest');
SELECT * FROM pg_temp.same_as_reference('process_inbox(n) calls');
SELECT * FROM pg_temp.invariants('process_inbox(n) calls');

--
-- the rules change after ingest, with hubs present; a rebuild applies
-- them, and more messages come under them (reference: batches of 50)
--
SELECT pg_temp.reset();
SELECT pg_temp.tight_rules();
SELECT is(pg_temp.ingest(1, 50), pg_temp.expected(1), 'rule change, batches of 50: part 1 is processed');
SELECT pg_temp.changed_rules();
SELECT cmp_ok((cdp.rebuild_identities()->>'changed')::int, '>', 0,
              'rule change, batches of 50: rebuild_identities under the new rules moves identifiers');
SELECT * FROM pg_temp.invariants('rule change, batches of 50, after the rebuild');
SELECT pg_temp.keep_reference();
CREATE TEMP TABLE rebuilt_profiles AS SELECT * FROM ref_profiles;
SELECT is(pg_temp.ingest(2, 50), pg_temp.expected(2) - pg_temp.expected(1),
          'rule change, batches of 50: part 2 is processed under the new rules');
SELECT * FROM pg_temp.invariants('rule change, batches of 50, after part 2');
SELECT pg_temp.keep_reference();

SELECT pg_temp.reset();
SELECT pg_temp.tight_rules();
SELECT is(pg_temp.ingest(1, 13, ARRAY[5, 900, 3]), pg_temp.expected(1),
          'rule change, batches of 13 and uneven calls: part 1 is processed');
SELECT pg_temp.changed_rules();
SELECT cmp_ok((cdp.rebuild_identities()->>'changed')::int, '>', 0,
              'rule change, batches of 13: rebuild_identities moves identifiers');
SELECT * FROM pg_temp.invariants('rule change, batches of 13, after the rebuild');
SELECT set_eq('SELECT * FROM pg_temp.profiles()', 'SELECT * FROM rebuilt_profiles',
              'rule change, batches of 13: the rebuild gives the same profiles as after batches of 50');
SELECT is(pg_temp.ingest(2, 1000, ARRAY[17, 1, 250]), pg_temp.expected(2) - pg_temp.expected(1),
          'rule change, batches of 1000 and uneven calls: part 2 is processed');
SELECT * FROM pg_temp.invariants('rule change, batches of 13 then 1000, after part 2');
SELECT * FROM pg_temp.same_as_reference('rule change, batches of 13 then 1000');

SELECT * FROM finish();
ROLLBACK;
