-- A call's batches and chunks gather traits and consent into one queue; a
-- part that fails undoes what it gathered.  Many random messages (traits,
-- consent decisions that flip, logins that merge visitors), a twelfth of
-- them refused by a trigger after their state was gathered, in small
-- batches: the call must leave exactly what the same messages without the
-- refused ones leave, in the profiles, the per-identifier stores and the
-- consent history.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(7);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
\ir include/refuse_bad_events.psql
SET LOCAL cdp.batch_size = 40;

SELECT setseed(0.29);
CREATE TEMP TABLE msgs AS
SELECT i, 'r-' || i AS mid, bad,
       jsonb_build_object('anonymousId', 'v' || v) ||
       CASE WHEN random() < 0.2 THEN jsonb_build_object('userId', 'u' || (v % 30)) ELSE '{}'::jsonb END ||
       CASE WHEN bad THEN '{"event": "Bad"}'::jsonb ELSE '{}'::jsonb END ||
       jsonb_build_object('context', jsonb_build_object(
           'traits', jsonb_build_object('plan', 'p' || floor(random() * 5), 'n', i),
           'consent', jsonb_build_object('categoryPreferences', jsonb_build_object(
               'Marketing', random() < 0.5, 'Advertising', random() < 0.3))))
           AS body,
       -- in time order: the history of decisions that arrive out of order
       -- can depend on how they were grouped (see the README)
       '2026-06-01 00:00+00'::timestamptz + (i * 10 + floor(random() * 9)) * interval '1 second' AS ts
  FROM (SELECT i, floor(random() * 120)::int AS v, random() < 1.0 / 12 AS bad
          FROM generate_series(1, 1500) i) g;

-- what each stored identifier's profile holds, and the stores
CREATE FUNCTION pg_temp.snapshot() RETURNS TABLE (what text, row_text text) LANGUAGE sql AS $$
    SELECT 'profile', i.identifier::text || ' ' || r.traits::text || ' ' || r.trait_times::text || ' ' ||
                      r.consent::text || ' ' || r.event_count || ' ' || r.first_seen || ' ' || r.last_seen
      FROM cdp.identities i JOIN cdp.profile_records r ON r.profile_id = i.profile_id
    UNION ALL
    SELECT 'traits', identifier::text || ' ' || traits::text || ' ' || trait_times::text
      FROM cdp.identifier_traits
    UNION ALL
    SELECT 'consent', identifier::text || ' ' || consent::text FROM cdp.identifier_consent
    UNION ALL
    SELECT 'history', identifier::text || ' ' || purpose || ' ' || granted || ' ' || at || ' ' ||
                      coalesce(message_id, '') || ' ' || source
      FROM cdp.consent_log
$$;

DO $$ BEGIN
    PERFORM pg_temp.send(mid, body, ts) FROM msgs ORDER BY i;
END $$;
SELECT is(pg_temp.run(), 1500::bigint, 'one call takes every message');
SELECT is((SELECT count(*) FROM cdp.dead_letters WHERE error_code = 'processing_error'),
          (SELECT count(*) FROM msgs WHERE bad), 'each refused message is a dead letter');
SELECT cmp_ok((SELECT count(*) FROM cdp.merges), '>', 0::bigint, 'logins merged visitors');
SELECT cmp_ok((SELECT count(*) FROM cdp.consent_log), '>', 120::bigint, 'decisions flipped');
CREATE TEMP TABLE with_refused AS SELECT * FROM pg_temp.snapshot();

-- the same messages without the refused ones, from scratch
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;
TRUNCATE cdp.identities, cdp.identity_evidence, cdp.identity_pairs, cdp.merges, cdp.identity_violations,
         cdp.identity_splits, cdp.profile_records;
TRUNCATE cdp.identifier_traits, cdp.identifier_consent, cdp.consent_log;
ALTER SEQUENCE cdp.profile_id_seq RESTART;
DO $$ BEGIN
    PERFORM pg_temp.send(mid, body, ts) FROM msgs WHERE NOT bad ORDER BY i;
END $$;
SELECT is(pg_temp.run(), (SELECT count(*) FROM msgs WHERE NOT bad), 'the call without them');
SELECT set_eq('SELECT * FROM with_refused', 'SELECT * FROM pg_temp.snapshot()',
              'the refused messages left nothing: profiles, stores and history are the same');
SELECT is(pg_temp.state_drift(), 0::bigint, 'the derived columns equal a recompute');

SELECT * FROM finish();
ROLLBACK;
