-- A definition's backfill writes its states and values in bulk, batches of
-- 10 000 profiles: the rows of profiles another trait already gave rows
-- gain the new trait's state and value, the others get new rows, inserted
-- with their index entries (found again by primary key and by expiry)
-- while parallel workers still read, and every value equals the oracle's,
-- over more profiles than one batch holds.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/computed_oracle.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;
TRUNCATE cdp.audience_spans, cdp.audience_changes;
DELETE FROM cdp.audiences;

-- events through the pipeline make the partitions of their days (an hour
-- and two hours ago: two days between 01:00 and 02:00 UTC); the rest are
-- stored directly: 25 000 profiles, Order Completed for the even ones (two
-- each, totals 1 and i), a Signup for the first 12 000
SELECT pg_temp.send('seed', '{"anonymousId": "seed"}', now() - interval '1 hour');
SELECT pg_temp.send('seed2', '{"anonymousId": "seed"}', now() - interval '2 hours');
SELECT pg_temp.run() > 0 AS processed;
INSERT INTO cdp.profile_records (profile_id, first_seen, last_seen)
SELECT 1000000 + i, now() - interval '1 day', now() FROM generate_series(1, 25000) AS i;
INSERT INTO cdp.events (message_id, source, type, event, profile_id, anonymous_id, ts, received_at, properties)
SELECT 'o' || i || '-' || k, 'test', 'track', 'Order Completed', 1000000 + i, 'a' || i,
       now() - interval '1 hour' - interval '1 second' * k, now(),
       jsonb_build_object('total', CASE WHEN k = 1 THEN 1 ELSE i END)
  FROM generate_series(2, 25000, 2) AS i, generate_series(1, 2) AS k;
INSERT INTO cdp.events (message_id, source, type, event, profile_id, anonymous_id, ts, received_at, properties)
SELECT 's' || i, 'test', 'track', 'Signed Up', 1000000 + i, 'a' || i, now() - interval '2 hours', now(), '{}'
  FROM generate_series(1, 12000) AS i;
ANALYZE cdp.events;

-- the first trait's rows are all new; the second's half updates, half new.
-- Read by parallel workers: a batch's new rows are inserted while they
-- read, the others wait for their UPDATE
SET LOCAL parallel_setup_cost = 0;
SET LOCAL parallel_tuple_cost = 0;
SET LOCAL min_parallel_table_scan_size = 0;
SET LOCAL max_parallel_workers_per_gather = 2;
SELECT cdp.define_computed_trait('signed_up', 'count', 'Signed Up');
SELECT is((SELECT count(*) FROM cdp.trait_states), 12000::bigint, 'a row of states per profile with a signup');
SELECT cdp.define_computed_trait('revenue', 'sum', 'Order Completed', 'total', time_window => '1 day');
SELECT is((SELECT count(*) FROM cdp.trait_states), 18500::bigint,
          'profiles with a signup kept their row, the others with an order got one');
SELECT is((SELECT count(*) FROM cdp.trait_states WHERE states ? 'signed_up' OR states = '{}'), 0::bigint,
          'states are keyed by trait id');
SELECT is((SELECT count(*) FROM pg_temp.oracle_diff()), 0::bigint, 'every value equals the oracle''s');

-- the rows as the indexes find them
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT is((SELECT count(*) FROM generate_series(1, 25000) AS i
             JOIN cdp.trait_states s ON s.profile_id = 1000000 + i),
          18500::bigint, 'every state row is found by its primary key');
SELECT is((SELECT count(*) FROM generate_series(1, 25000) AS i
             JOIN cdp.profile_computed pc ON pc.profile_id = 1000000 + i),
          18500::bigint, 'every value row is found by its primary key');
SELECT is((SELECT count(*) FROM cdp.trait_states s WHERE s.expires_at > '-infinity'),
          12500::bigint, 'every windowed row is found by its expiry');
SELECT is((SELECT count(*) FROM cdp.trait_states s
            WHERE s.expires_at IS DISTINCT FROM cdp.trait_states_expiry(s.states)),
          0::bigint, 'rows expire when their first windowed state ages out');
RESET enable_seqscan;
RESET enable_bitmapscan;

SELECT is((SELECT sum((traits->>'revenue')::numeric) FROM cdp.profile_computed),
          (SELECT sum(1 + i)::numeric FROM generate_series(2, 25000, 2) AS i),
          'the values sum every order');

SELECT * FROM finish();
ROLLBACK;
