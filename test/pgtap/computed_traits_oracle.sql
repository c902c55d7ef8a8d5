-- Computed traits against an oracle: after a random workload (out-of-order
-- events, merges, a split, a rebuild, forget, events outside windows),
-- every trait of every canonical profile equals the same trait computed
-- with plain SQL over cdp.events_resolved, and two audiences over them
-- hold exactly the profiles their conditions (written again over the
-- oracle's values) pick.  Traits defined before the
-- events are kept at ingest; traits defined after them are backfilled.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(11);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/computed_oracle.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;
SELECT setseed(0.42);

SELECT cdp.define_computed_trait('orders', 'count', 'Order Completed');
SELECT cdp.define_computed_trait('revenue', 'sum', 'Order Completed', 'total');
SELECT cdp.define_computed_trait('avg_total', 'avg', NULL, 'total');
SELECT cdp.define_computed_trait('orders_3d', 'count', 'Order Completed', time_window => '3 days');
SELECT cdp.define_computed_trait('revenue_3d', 'sum', 'Order Completed', 'total', '3 days');
SELECT cdp.define_computed_trait('pro_big', 'count', NULL, filter => '{"plan": "pro", "total": {"gte": 50}}');
SELECT cdp.define_computed_trait('first_plan', 'first', NULL, 'plan');
SELECT cdp.define_computed_trait('last_plan_3d', 'last', NULL, 'plan', '3 days');
SELECT cdp.define_computed_trait('top_item', 'most_frequent', 'Product Viewed', 'item.id');
TRUNCATE cdp.audience_spans, cdp.audience_changes;
DELETE FROM cdp.audiences;
SELECT cdp.define_audience('frequent', 'orders >= 3');
SELECT cdp.define_audience('big_frequent', 'in_audience(''frequent'') AND revenue_3d > 100');

-- people: 40 users, each with 1-2 anonymous devices; about a third of the
-- devices are linked to their user by an identify, in random order
CREATE FUNCTION pg_temp.workload(n int, salt text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    u int;
    body jsonb;
BEGIN
    FOR i IN 1..n LOOP
        u := 1 + floor(random() * 40)::int;
        body := jsonb_build_object(
            'event', (ARRAY['Order Completed', 'Product Viewed', 'Signed In', 'Order Completed'])[1 + floor(random() * 4)::int],
            'properties', jsonb_strip_nulls(jsonb_build_object(
                'total', CASE WHEN random() < 0.8 THEN round((random() * 100)::numeric, 2)::text::jsonb
                              WHEN random() < 0.5 THEN '"12"'::jsonb END,
                'plan', (ARRAY['free', 'pro', 'team', NULL])[1 + floor(random() * 4)::int],
                'item', jsonb_build_object('id', 'i' || floor(random() * 5)::int))));
        IF random() < 0.5 THEN
            body := body || jsonb_build_object('userId', 'u' || u);
        ELSE
            body := body || jsonb_build_object('anonymousId', 'd' || u || '_' || floor(random() * 2)::int);
        END IF;
        -- out of order: anywhere in the last 6 days, so windows cut through them
        PERFORM pg_temp.send(salt || i, body, now() - interval '6 days' * random());
        IF random() < 0.03 THEN
            PERFORM pg_temp.send(salt || i || 'id', jsonb_build_object('type', 'identify', 'userId', 'u' || u,
                                 'anonymousId', 'd' || u || '_' || floor(random() * 2)::int), now() - interval '1 day' * random());
        END IF;
        -- in several calls: merges then find events stored under the
        -- profile merged away
        IF i % 50 = 0 THEN
            PERFORM cdp.process_inbox();
        END IF;
    END LOOP;
END
$$;

SELECT pg_temp.workload(300, 'a');
SELECT pg_temp.run() > 0 AS processed;
SELECT is(pg_temp.mismatches(), 0::bigint, 'traits kept at ingest equal the oracle');
SELECT ok((SELECT count(*) FROM cdp.merges) > 0, 'the workload merged profiles');

-- traits defined after the events: the backfill
SELECT cdp.define_computed_trait('plans', 'unique_list', NULL, 'plan');
SELECT cdp.define_computed_trait('items', 'unique_count', NULL, 'item.id', filter => '{"plan": {"in": ["pro", "team"]}}');
SELECT cdp.define_computed_trait('min_total', 'min', 'Order Completed', 'total', filter => '{"plan": {"ne": "free"}}');
SELECT cdp.define_computed_trait('max_total', 'max', NULL, 'total', filter => '{"plan": {"exists": false}}');
SELECT is(pg_temp.mismatches(), 0::bigint, 'backfilled traits equal the oracle');

-- a changed definition is backfilled again
SELECT cdp.define_computed_trait('orders', 'count', 'Product Viewed');
SELECT pg_temp.workload(200, 'b');
SELECT pg_temp.run() > 0 AS processed;
SELECT is(pg_temp.mismatches(), 0::bigint, 'after a redefinition and more events');

-- a split: the device leaves the user's profile with its events
SELECT cdp.split_profile(r.profile_id, ('anonymous_id:d' || u || '_0')::cdp.identifier)
  FROM (SELECT u, pg_temp.pid('user_id:u' || u) AS profile_id FROM generate_series(1, 40) u) r
 WHERE r.profile_id IS NOT NULL AND r.profile_id = pg_temp.pid('anonymous_id:d' || r.u || '_0')
 LIMIT 3;
SELECT is(pg_temp.mismatches(), 0::bigint, 'after splits');

SELECT cdp.rebuild_identities();
SELECT is(pg_temp.mismatches(), 0::bigint, 'after a rebuild');

SELECT cdp.forget('user_id:u7');
SELECT cdp.forget('anonymous_id:d9_1');
SELECT is(pg_temp.mismatches(), 0::bigint, 'after forget');

SELECT pg_temp.workload(200, 'c');
SELECT pg_temp.run() > 0 AS processed;
SELECT is(pg_temp.mismatches(), 0::bigint, 'after more events on the changed graph');

SELECT cdp.drop_computed_trait('plans');
SELECT ok(NOT EXISTS (SELECT FROM cdp.profile_computed WHERE traits ? 'plans'), 'a dropped trait leaves no value');
SELECT ok((SELECT count(*) FROM cdp.audience_members) > 0, 'the audiences have members');
SELECT ok(NOT EXISTS (SELECT FROM cdp.audience_spans a JOIN cdp.audience_spans b
                       ON a.audience_id = b.audience_id AND a.profile_id = b.profile_id AND a.ctid <> b.ctid
                      WHERE tstzrange(a.entered_at, a.exited_at, '[)') && tstzrange(b.entered_at, b.exited_at, '[)')
                        AND a.entered_at <> b.entered_at),
          'no two stays of a profile in an audience overlap');
SELECT * FROM finish();
ROLLBACK;
