-- Traits and consent do not depend on the order messages arrive in, nor on
-- how they are cut into batches and calls: 300 messages over 13 visitors
-- and 5 users (traits of every JSON type, ties at the same minute, the
-- three consent forms, overlapping RudderStack ids, full statements) give
-- the same profiles processed in order in one batch as shuffled in batches
-- of 3 over many calls; a rebuild changes nothing and every profile equals
-- a recompute from its identifiers.  Each visitor links at most one user,
-- so the identity graph itself cannot depend on the order.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(7);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
SELECT setseed(0.42);
CREATE TEMP TABLE msgs AS
SELECT g AS n, 'r-' || g AS mid,
  jsonb_strip_nulls(jsonb_build_object(
    'type', CASE WHEN random() < 0.4 THEN 'identify' ELSE 'track' END,
    'event', CASE WHEN random() < 0.1 THEN 'Segment Consent Preference Updated' ELSE 'E' END,
    'anonymousId', 'an' || (g % 13),
    'userId', CASE WHEN random() < 0.3 THEN 'us' || (g % 13 % 5) END,
    'traits', jsonb_build_object('plan', (ARRAY['"a"','"b"','"c"','1','true','{"x":1}']::jsonb[])[1+(random()*5)::int], 'k' || (random()*3)::int, (random()*3)::int),
    'context', jsonb_build_object(
       'traits', jsonb_build_object('plan', (random()*3)::int, 'c' || (random()*2)::int, 'v'),
       'consent', CASE WHEN random() < 0.5 THEN jsonb_build_object('categoryPreferences',
            jsonb_build_object((ARRAY['Marketing','ADVERTISING','personalization','bogus'])[1+(random()*3)::int], random() < 0.5,
                               (ARRAY['Marketing','ADVERTISING','personalization','Analytics'])[1+(random()*3)::int], random() < 0.5)) END,
       'consentManagement', CASE WHEN random() < 0.3 THEN jsonb_build_object('allowedConsentIds', jsonb_build_array('marketing'), 'deniedConsentIds', jsonb_build_array((ARRAY['Marketing','advertising'])[1+(random()*1)::int])) END)
  )) AS body,
  '2026-06-01 10:00+00'::timestamptz + ((random()*8)::int * interval '1 minute') AS ts,
  random() AS shuffle
FROM generate_series(1, 300) g;
CREATE FUNCTION pg_temp.snapshot() RETURNS TABLE (id text, traits jsonb, trait_times jsonb, consent jsonb, ec bigint, fs timestamptz, ls timestamptz) LANGUAGE sql AS $$
  SELECT i.identifier::text, r.traits, r.trait_times, r.consent, r.event_count, r.first_seen, r.last_seen
    FROM cdp.identities i JOIN cdp.profile_records r ON r.profile_id = i.profile_id ORDER BY 1 $$;
-- run 1: in order, one big batch
DO $$ BEGIN
    PERFORM pg_temp.send(mid, body, ts) FROM (SELECT * FROM msgs ORDER BY n) m;
    PERFORM pg_temp.run();
END $$;
CREATE TEMP TABLE snap1 AS SELECT * FROM pg_temp.snapshot();
SELECT is(pg_temp.state_drift(), 0::bigint, 'in order, one batch: the derived columns equal a recompute');
SELECT is(cdp.rebuild_identities(dry_run => true)->>'changed', '0', 'a dry-run rebuild changes nothing');
SELECT is(cdp.rebuild_identities()->>'changed', '0', 'a rebuild changes nothing');
SELECT is((SELECT count(*) FROM (SELECT * FROM snap1 EXCEPT SELECT * FROM pg_temp.snapshot()) x), 0::bigint, '... nor any profile state');
SELECT is(pg_temp.state_drift(), 0::bigint, '... which still equals a recompute');
-- run 2: shuffled, batches of 3, many calls
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids, cdp.events, cdp.identities, cdp.identity_evidence,
         cdp.identity_pairs, cdp.merges, cdp.identity_violations, cdp.identity_splits, cdp.profile_records,
         cdp.identifier_traits, cdp.identifier_consent, cdp.consent_log;
SET LOCAL cdp.batch_size = 3;
DO $$ DECLARE m record; k int := 0; BEGIN
  FOR m IN SELECT * FROM msgs ORDER BY shuffle LOOP
    PERFORM pg_temp.send(m.mid, m.body, m.ts); k := k + 1;
    IF k % 17 = 0 THEN PERFORM pg_temp.run(); END IF;
  END LOOP;
  PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM (SELECT * FROM snap1 EXCEPT SELECT * FROM pg_temp.snapshot()) x), 0::bigint,
          'shuffled, batches of 3, many calls: every identifier''s profile has the same traits, times, consent and counts');
SELECT is(pg_temp.state_drift(), 0::bigint, '... and equals a recompute');

SELECT * FROM finish();
ROLLBACK;
