-- A computed trait defined over stored events is backfilled by one
-- aggregation that parallel workers may share (partial states combined in
-- the leader), then written in bulk: with parallel plans forced, every kind
-- gives the states a serial aggregation gives and values equal to the
-- oracle's, for profiles alone and for canonical profiles of merges.  A
-- background backfill (the maintenance worker's steps) publishes the same
-- values.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/computed_oracle.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;
TRUNCATE cdp.audience_spans, cdp.audience_changes;
DELETE FROM cdp.audiences;
SELECT setseed(0.27);

-- 30 users with a device each, a third of the devices linked (merges);
-- properties of every JSON type, some missing
SELECT pg_temp.send('p' || i,
                    jsonb_build_object(
                        'event', (ARRAY['Order Completed', 'Product Viewed', 'Order Completed'])[1 + i % 3],
                        'properties', jsonb_strip_nulls(jsonb_build_object(
                            'total', CASE WHEN i % 7 = 0 THEN '"12"'::jsonb
                                          WHEN i % 11 <> 0 THEN to_jsonb(round((random() * 100)::numeric, 2)) END,
                            'plan', (ARRAY['free', 'pro', 'team', NULL])[1 + i % 4],
                            'item', jsonb_build_object('id', 'i' || i % 5, 'tags', jsonb_build_array(i % 2, 'x'))))
                    ) || CASE WHEN i % 2 = 0 THEN jsonb_build_object('userId', 'u' || (i / 2) % 30)
                              ELSE jsonb_build_object('anonymousId', 'd' || (i / 2) % 30) END,
                    now() - interval '6 days' * random())
  FROM generate_series(1, 400) AS i;
SELECT pg_temp.send('link' || u, jsonb_build_object('type', 'identify', 'userId', 'u' || u, 'anonymousId', 'd' || u))
  FROM generate_series(0, 29, 3) AS u;
SELECT pg_temp.run() > 0 AS processed;
SELECT ok((SELECT count(*) FROM cdp.merges) > 0, 'the events merged profiles');

-- parallel plans even for these few rows
SET LOCAL parallel_setup_cost = 0;
SET LOCAL parallel_tuple_cost = 0;
SET LOCAL min_parallel_table_scan_size = 0;
SET LOCAL max_parallel_workers_per_gather = 2;
SET LOCAL enable_hashagg = off;

CREATE FUNCTION pg_temp.plan_lines(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    l text;
BEGIN
    FOR l IN EXECUTE 'EXPLAIN ' || q LOOP
        RETURN NEXT l;
    END LOOP;
END
$$;
SELECT ok(EXISTS (SELECT FROM pg_temp.plan_lines($$
              SELECT e.profile_id, cdp.trait_state_agg('sum', 'total', NULL, NULL, e.ts, e.properties)
                FROM cdp.events e GROUP BY e.profile_id$$) l
           WHERE l ~ 'Partial \w*Aggregate'),
          'the aggregation of a backfill can run in parallel workers');

-- every kind, aggregated in parallel and serially: the same states (one
-- query per definition: an aggregation has one definition)
CREATE TEMP TABLE kinds (kind text, property text, filter jsonb) ON COMMIT DROP;
INSERT INTO kinds VALUES ('count', NULL, NULL), ('count', 'plan', '{"plan": {"ne": "free"}}'),
    ('sum', 'total', NULL), ('avg', 'total', NULL), ('min', 'total', NULL), ('max', 'total', NULL),
    ('first', 'plan', NULL), ('last', 'item', NULL), ('most_frequent', 'plan', NULL),
    ('unique_count', 'item.id', NULL), ('unique_list', 'item.tags', NULL);
CREATE FUNCTION pg_temp.state_differences() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    k record;
    q text;
    n bigint := 0;
    d bigint;
BEGIN
    FOR k IN SELECT * FROM kinds LOOP
        q := format('SELECT e.profile_id, cdp.trait_state_agg(%L, %L, %L, NULL, e.ts, e.properties) AS state
                       FROM cdp.events e GROUP BY 1', k.kind, k.property, k.filter);
        EXECUTE 'CREATE TEMP TABLE parallel_states AS ' || q;
        PERFORM set_config('max_parallel_workers_per_gather', '0', true);
        EXECUTE 'CREATE TEMP TABLE serial_states AS ' || q;
        PERFORM set_config('max_parallel_workers_per_gather', '2', true);
        SELECT count(*) INTO d
          FROM (SELECT * FROM parallel_states EXCEPT SELECT * FROM serial_states
                UNION ALL
                SELECT * FROM serial_states EXCEPT SELECT * FROM parallel_states) x;
        n := n + d;
        DROP TABLE parallel_states, serial_states;
    END LOOP;
    RETURN n;
END
$$;
SELECT is(pg_temp.state_differences(), 0::bigint,
          'partial states combined equal the states aggregated serially, for every kind');

-- defined after the events, with parallel plans: the oracle's values
SELECT cdp.define_computed_trait('orders', 'count', 'Order Completed');
SELECT cdp.define_computed_trait('revenue', 'sum', 'Order Completed', 'total');
SELECT cdp.define_computed_trait('avg_total', 'avg', NULL, 'total', '3 days');
SELECT cdp.define_computed_trait('lo', 'min', NULL, 'total', filter => '{"plan": {"in": ["pro", "team"]}}');
SELECT cdp.define_computed_trait('hi', 'max', NULL, 'total');
SELECT cdp.define_computed_trait('first_plan', 'first', NULL, 'plan');
SELECT cdp.define_computed_trait('last_item', 'last', NULL, 'item');
SELECT cdp.define_computed_trait('top_plan', 'most_frequent', NULL, 'plan');
SELECT cdp.define_computed_trait('items', 'unique_count', NULL, 'item.id');
SELECT cdp.define_computed_trait('tags', 'unique_list', NULL, 'item.tags');
SELECT is((SELECT count(*) FROM pg_temp.oracle_diff()), 0::bigint, 'traits backfilled with parallel plans equal the oracle');
SELECT is((SELECT count(*) FROM cdp.trait_states s WHERE s.expires_at IS DISTINCT FROM cdp.trait_states_expiry(s.states)),
          0::bigint, 'state rows are stored with when their first windowed state ages out');
SELECT is((SELECT count(*) FROM cdp.profile_computed pc
            WHERE NOT EXISTS (SELECT FROM cdp.profile_records r WHERE r.profile_id = pc.profile_id AND r.merged_into IS NULL)),
          0::bigint, 'values are kept for canonical profiles only');

-- the steps of a background backfill, as the maintenance worker takes them
-- (define_computed_trait with the worker running starts it so)
SELECT cdp.define_computed_trait('bg_revenue', 'sum', 'Order Completed', 'total');
SELECT cdp.define_computed_trait('bg_plans', 'unique_list', NULL, 'plan', '4 days');
SELECT cdp.remove_trait_states(t.id, NULL) FROM cdp.computed_traits t WHERE t.name IN ('bg_revenue', 'bg_plans');
UPDATE cdp.profile_computed SET traits = traits - 'bg_revenue' - 'bg_plans';
UPDATE cdp.computed_traits
   SET status = 'backfilling', backfill_done = 0,
       backfill_partitions = ARRAY(SELECT p.partition FROM cdp.partition_bounds() p ORDER BY p.range_from)
 WHERE name IN ('bg_revenue', 'bg_plans');
CREATE FUNCTION pg_temp.backfill_steps() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    n int := 0;
BEGIN
    WHILE cdp.backfill_step() IS NOT NULL AND n < 1000 LOOP
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
SELECT cmp_ok(pg_temp.backfill_steps(), '>', 2, 'the background backfill took its steps');
SELECT is((SELECT count(*) FROM pg_temp.oracle_diff()), 0::bigint,
          'a background backfill publishes the oracle''s values, merged profiles too');

SELECT * FROM finish();
ROLLBACK;
