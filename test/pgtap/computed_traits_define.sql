-- Defining computed traits: bad definitions are refused with a clear error
-- and nothing is kept; values of each kind on a small known set of events.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(25);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'median', 'x', 'p')$$, '22023',
                 'unknown computed trait kind "median"', 'an unknown kind');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'sum', 'x')$$, '22023',
                 'a computed trait of kind sum needs a property', 'a kind that reads a property needs one');
SELECT throws_ok($$SELECT cdp.define_computed_trait('Bad Name', 'count')$$, '22023',
                 'invalid computed trait name "Bad Name"', 'names are SQL-friendly');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', filter => '[1]')$$, '22023',
                 'a computed trait''s filter must be a JSON object', 'a filter is an object');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', filter => '{"a": {"like": "x"}}')$$, '22023',
                 'filter on "a": unknown operator "like"', 'unknown filter operators are named');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', filter => '{"a": {"gt": true}}')$$, '22023',
                 'filter on "a": "gt" takes a string or a number', 'comparisons take strings or numbers');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', filter => '{"a": {"in": 3}}')$$, '22023',
                 'filter on "a": "in" takes an array', '"in" takes an array');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', filter => '{"a": null}')$$, '22023',
                 'filter on "a": null matches nothing', 'null is refused with a hint');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'sum', 'x', 'a..b')$$, '22023',
                 'invalid property "a..b": empty key', 'an empty key in a path');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', time_window => '-1 day')$$, '22023',
                 'time_window must be positive, not -1 days', 'a window is positive');
SELECT throws_ok($$SELECT cdp.define_computed_trait('n', 'count', purpose => 'nope')$$, '22023',
                 'purpose "nope" does not exist', 'the purpose must exist');
SELECT cdp.define_trait('plan', 'text');
SELECT throws_ok($$SELECT cdp.define_computed_trait('plan', 'count')$$, '42710',
                 'a declared trait is already named "plan"', 'a declared trait''s name is taken');
SELECT throws_ok($$SELECT cdp.drop_computed_trait('nope')$$, '42704',
                 'computed trait "nope" does not exist', 'dropping an unknown trait');
SELECT is((SELECT count(*) FROM cdp.computed_traits), 0::bigint, 'nothing refused was kept');

-- one person, known events
SELECT pg_temp.send('m1', '{"userId": "a", "event": "Order", "properties": {"total": 10, "plan": "pro", "tags": ["x"]}}', '2026-03-01');
SELECT pg_temp.send('m2', '{"userId": "a", "event": "Order", "properties": {"total": 2.5, "plan": "free", "tags": ["x"]}}', '2026-03-03');
SELECT pg_temp.send('m3', '{"userId": "a", "event": "Order", "properties": {"total": "7", "plan": "pro"}}', '2026-03-02');
SELECT pg_temp.send('m4', '{"userId": "a", "event": "Page", "properties": {"total": 100, "plan": null}}', '2026-03-04');
SELECT pg_temp.run();
SELECT cdp.define_computed_trait('orders', 'count', 'Order');
SELECT cdp.define_computed_trait('with_total', 'count', NULL, 'total');
SELECT cdp.define_computed_trait('revenue', 'sum', 'Order', 'total');
SELECT cdp.define_computed_trait('mean', 'avg', 'Order', 'total');
SELECT cdp.define_computed_trait('lo', 'min', NULL, 'total');
SELECT cdp.define_computed_trait('hi', 'max', NULL, 'total');
SELECT cdp.define_computed_trait('first_plan', 'first', NULL, 'plan');
SELECT cdp.define_computed_trait('last_plan', 'last', NULL, 'plan');
SELECT cdp.define_computed_trait('top_plan', 'most_frequent', NULL, 'plan');
SELECT cdp.define_computed_trait('plans', 'unique_count', NULL, 'plan');
SELECT cdp.define_computed_trait('tag_lists', 'unique_list', NULL, 'tags');
SELECT cdp.define_computed_trait('never', 'count', 'Nothing');
SELECT cdp.define_computed_trait('never_sum', 'sum', 'Nothing', 'total');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:a')),
          '{"hi": 100, "lo": 2.5, "mean": 6.25, "never": 0, "plans": 2, "orders": 3, "revenue": 12.5,
            "top_plan": "pro", "last_plan": "free", "never_sum": null, "tag_lists": [["x"]],
            "first_plan": "pro", "with_total": 4}'::jsonb,
          'each kind: numbers only for sums and extremes ("7" is text), null properties do not count, 0 for a count of nothing');
SELECT is((SELECT traits FROM cdp.profile_computed WHERE profile_id = pg_temp.pid('user_id:a')) ? 'never_sum', false,
          'a trait with no value is absent from the stored values');

-- an event arriving later (earlier event time) counts in at ingest
SELECT pg_temp.send('m5', '{"userId": "a", "event": "Order", "properties": {"total": 1, "plan": "team"}}', '2026-02-01');
SELECT pg_temp.run();
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:a'))->'first_plan', '"team"', 'a late event with an earlier time becomes the first');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:a'))->'last_plan', '"free"', '... but not the last');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:a'))->'lo', '1', 'min follows');

-- a trait is redefined only when its definition changes
SELECT cdp.define_computed_trait('orders', 'count', 'Order');
SELECT is((SELECT backfilled_at IS NOT NULL FROM cdp.computed_traits WHERE name = 'orders'), true, 'backfilled');
SELECT cdp.define_computed_trait('orders', 'count', 'Page');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:a'))->'orders', '1', 'a changed definition counts again');
-- profile views: typed columns, under their purpose
SELECT cdp.define_computed_trait('mkt_orders', 'count', 'Order', purpose => 'marketing');
CREATE SCHEMA bi;
SELECT cdp.create_profile_view('bi.people', 'analytics');
SELECT is((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = 'bi.people'::regclass AND attnum > 0),
          'profile_id bigint, plan text, orders bigint, with_total bigint, revenue numeric, mean numeric, lo numeric, hi numeric, first_plan jsonb, last_plan jsonb, top_plan jsonb, plans bigint, tag_lists jsonb, never bigint, never_sum numeric, mkt_orders bigint',
          'computed traits are typed columns of profile views');
SELECT is((SELECT (orders, revenue, never, never_sum, mkt_orders)::text FROM bi.people WHERE profile_id = pg_temp.pid('user_id:a')),
          '(1,13.5,0,,)', 'their values; a count of nothing is 0; a trait of an ungranted purpose is NULL');
SELECT cdp.set_consent('user_id:a', 'marketing', true);
SELECT is((SELECT mkt_orders FROM bi.people WHERE profile_id = pg_temp.pid('user_id:a')), 4::bigint,
          'granting the purpose shows it');
-- not for everyone
SELECT is(has_function_privilege('public', 'cdp.define_computed_trait(text, text, text, text, interval, jsonb, text)', 'EXECUTE'),
          false, 'defining computed traits is not for PUBLIC');
SELECT * FROM finish();
ROLLBACK;
