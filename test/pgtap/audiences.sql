-- Audiences: definitions refused when they cannot work (unknown names,
-- cycles, anything but an expression over the profile's row); members kept
-- current at commit as traits, computed traits, consent and the graph
-- change; history, explain_membership, and the change feed (outbox) only
-- for people who granted the audience's purpose, once per change.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(36);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
-- memberships are evaluated at commit; the test is one transaction, so it
-- makes the deferred evaluation run at each step
CREATE FUNCTION pg_temp.settle() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET CONSTRAINTS ALL IMMEDIATE;
    SET CONSTRAINTS ALL DEFERRED;
END $$;
CREATE OR REPLACE FUNCTION pg_temp.run() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint := cdp.process_inbox();
BEGIN
    PERFORM pg_temp.settle();
    RETURN n;
END $$;
TRUNCATE cdp.trait_states, cdp.audience_spans, cdp.audience_changes;
DELETE FROM cdp.audiences;
DELETE FROM cdp.computed_traits;
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.define_computed_trait('orders', 'count', 'Order');

-- refused definitions
SELECT throws_ok($$SELECT cdp.define_audience('a', 'nope > 1')$$, '42703',
                 'audience "a" names an unknown trait "nope"', 'an unknown trait');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'in_audience(''b'')')$$, '42704',
                 'audience "a" names an unknown audience "b"', 'an unknown audience');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'in_audience(''a'')')$$, '42P19',
                 'audience "a" names itself', 'an audience naming itself');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'orders > (SELECT count(*) FROM cdp.events)')$$, '22023',
                 'an audience condition may not contain a subquery', 'a subquery');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'pg_sleep(10) IS NULL')$$, '22023',
                 'an audience condition may not call pg_sleep()', 'a function that is not allowed');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'true) OR (false')$$, '42601', NULL, 'a condition that is not one expression');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'orders > 1 FROM cdp.events')$$, '22023',
                 'an audience condition may not contain anything but one expression', 'clauses after the expression');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'orders + 1')$$, '42804', NULL, 'a condition that is not boolean');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'public.f(orders)')$$, '22023',
                 'an audience condition may not contain a schema-qualified function', 'a qualified function');
SELECT throws_ok($$SELECT cdp.define_audience('a', 'orders > 1', 'nope')$$, '22023',
                 'purpose "nope" does not exist', 'an unknown purpose');
SELECT is((SELECT count(*) FROM cdp.audiences), 0::bigint, 'nothing refused was kept');

SELECT cdp.define_audience('buyers', 'orders >= 2');
SELECT cdp.define_audience('pro_buyers', 'in_audience(''buyers'') AND plan = ''pro''', 'marketing');
SELECT throws_ok($$SELECT cdp.define_audience('buyers', 'in_audience(''pro_buyers'')')$$, '42P19',
                 'audience "buyers" would depend on itself through in_audience()', 'a cycle through another audience');
SELECT throws_ok($$SELECT cdp.drop_audience('buyers')$$, '2BP01',
                 'audience "buyers" is used by audience "pro_buyers"', 'an audience another uses stays');
SELECT throws_ok($$SELECT cdp.drop_computed_trait('orders')$$, '2BP01',
                 'computed trait "orders" is used by audience "buyers"', 'a computed trait an audience uses stays');

-- members follow ingest
SELECT pg_temp.send('m1', '{"userId": "a", "event": "Order"}');
SELECT pg_temp.send('m2', '{"userId": "a", "event": "Order"}');
SELECT pg_temp.send('m3', '{"userId": "b", "event": "Order"}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT audience, profile_id FROM cdp.audience_members ORDER BY 1, 2$$,
                  $$VALUES ('buyers', pg_temp.pid('user_id:a'))$$, 'two orders make a buyer');
SELECT results_eq($$SELECT audience, profile_id, change FROM cdp.audience_changes ORDER BY id$$,
                  $$VALUES ('buyers', pg_temp.pid('user_id:a'), 'entered')$$, 'the entry is in the outbox');
SELECT pg_temp.send('m4', '{"type": "identify", "userId": "a", "traits": {"plan": "pro"}}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT audience FROM cdp.audience_members WHERE profile_id = pg_temp.pid('user_id:a') ORDER BY 1$$,
                  $$VALUES ('buyers'), ('pro_buyers')$$, 'a declared trait and in_audience() admit to the second');
SELECT is((SELECT count(*) FROM cdp.audience_changes WHERE audience = 'pro_buyers'), 0::bigint,
          'no marketing consent: the marketing audience''s entry is not in the feed');
SELECT cdp.set_consent('user_id:a', 'marketing', true);
SELECT pg_temp.settle();
SELECT results_eq($$SELECT change FROM cdp.audience_changes WHERE audience = 'pro_buyers' ORDER BY id$$,
                  $$VALUES ('entered')$$, 'granting the purpose puts the member in the feed');
SELECT cdp.set_consent('user_id:a', 'marketing', false);
SELECT pg_temp.settle();
SELECT results_eq($$SELECT change FROM cdp.audience_changes WHERE audience = 'pro_buyers' ORDER BY id$$,
                  $$VALUES ('entered'), ('exited')$$, 'withdrawing it takes them out of the feed');
SELECT is((SELECT count(*) FROM cdp.audience_members WHERE audience = 'pro_buyers'), 1::bigint, '... still a member');

-- explain
SELECT is(cdp.explain_membership('pro_buyers', pg_temp.pid('user_id:a')) - 'profile_id',
          '{"audience": "pro_buyers", "condition": "in_audience(''buyers'') AND plan = ''pro''", "result": true,
            "member": true, "parts": [{"part": "in_audience(''buyers'')", "value": true}, {"part": "plan = ''pro''", "value": true}],
            "values": {"plan": "pro"}}'::jsonb, 'explain_membership: each part with its value');

-- a merge of two members: y (two orders) joins a: no new entry, y's profile leaves
SELECT pg_temp.send('m5', '{"anonymousId": "y", "event": "Order"}');
SELECT pg_temp.send('m6', '{"anonymousId": "y", "event": "Order"}');
SELECT pg_temp.run();
INSERT INTO saved VALUES ('y', pg_temp.pid('anonymous_id:y'));
SELECT is((SELECT count(*) FROM cdp.audience_changes WHERE audience = 'buyers' AND change = 'entered'), 2::bigint,
          'y is a buyer too');
SELECT pg_temp.send('m7', '{"type": "identify", "userId": "a", "anonymousId": "y"}');
SELECT pg_temp.run();
SELECT results_eq($$SELECT profile_id, change FROM cdp.audience_changes WHERE audience = 'buyers' ORDER BY id$$,
                  $$VALUES (pg_temp.pid('user_id:a'), 'entered'), (pg_temp.saved('y'), 'entered'), (pg_temp.saved('y'), 'exited')$$,
                  'a merge makes no second entry; the profile merged away leaves');
SELECT is((cdp.computed_traits_of(pg_temp.pid('user_id:a'))->>'orders')::int, 4, 'the merged profile counts every order');

-- a condition that fails on some profile's values: recorded, the others go on
SELECT cdp.define_audience('fragile', '10 / (orders - 4) > 0');
SELECT pg_temp.send('m10', '{"userId": "d", "event": "Order"}');
SELECT pg_temp.send('m11', '{"userId": "d", "event": "Order"}');
SELECT pg_temp.run();
SELECT is((SELECT last_error FROM cdp.audiences WHERE name = 'fragile'), 'division by zero',
          'a condition failing on some profile is recorded');
SELECT ok(EXISTS (SELECT FROM cdp.audience_members WHERE audience = 'buyers' AND profile_id = pg_temp.pid('user_id:d')),
          'the other audiences are evaluated all the same');
SELECT cdp.drop_audience('fragile');

-- a CHECK constraint a user added to the feed holds for the rows pg_cdp
-- writes into it, as it would for an INSERT's
ALTER TABLE cdp.audience_changes ADD CONSTRAINT not_watched CHECK (audience <> 'watched');
SELECT cdp.define_audience('watched', 'orders >= 1');
SELECT pg_temp.send('m14', '{"userId": "f", "event": "Order"}');
SELECT pg_temp.run();
SELECT matches((SELECT last_error FROM cdp.audiences WHERE name = 'watched'),
               'violates check constraint "not_watched"', 'a CHECK constraint on the feed is checked');
SELECT is((SELECT count(*) FROM cdp.audience_changes WHERE audience = 'watched'), 0::bigint,
          'no feed row breaks it');
SELECT cdp.drop_audience('watched');
ALTER TABLE cdp.audience_changes DROP CONSTRAINT not_watched;

-- an operator drains the inbox: the evaluation at commit (a deferred trigger,
-- so outside process_inbox's SECURITY DEFINER) still has the owner's rights
CREATE ROLE cdp_test_audience_operator;
SELECT cdp.grant_operator('cdp_test_audience_operator');
SELECT pg_temp.send('m12', '{"userId": "e", "event": "Order"}');
SELECT pg_temp.send('m13', '{"userId": "e", "event": "Order"}');
SET ROLE cdp_test_audience_operator;
SELECT cdp.process_inbox();
SET CONSTRAINTS ALL IMMEDIATE;
RESET ROLE;
SET CONSTRAINTS ALL DEFERRED;
SELECT ok(EXISTS (SELECT FROM cdp.audience_members WHERE audience = 'buyers' AND profile_id = pg_temp.pid('user_id:e')),
          'an operator''s drain evaluates audiences at commit');

-- one transaction that enters and leaves makes no change
SAVEPOINT before_flip;
SELECT pg_temp.send('m8', '{"userId": "c", "event": "Order"}');
SELECT pg_temp.send('m9', '{"userId": "c", "event": "Order"}');
SELECT cdp.process_inbox();
SELECT cdp.define_computed_trait('orders', 'count', 'Nothing');
SELECT pg_temp.settle();
SELECT set_eq($$SELECT DISTINCT audience FROM cdp.audience_changes WHERE profile_id = pg_temp.pid('user_id:c')$$,
              ARRAY[]::text[], 'entered and left in one transaction: nothing in the feed');
ROLLBACK TO before_flip;

-- forget: the person leaves every audience, the exit is announced
INSERT INTO saved VALUES ('a', pg_temp.pid('user_id:a'));
SELECT cdp.forget('user_id:a');
SELECT pg_temp.settle();
SELECT is((SELECT count(*) FROM cdp.audience_members WHERE profile_id = pg_temp.saved('a')), 0::bigint,
          'forget leaves no membership');
SELECT is((SELECT change FROM cdp.audience_changes WHERE audience = 'buyers' AND profile_id = pg_temp.saved('a')
            ORDER BY id DESC LIMIT 1), 'exited',
          'the exit of a forgotten person is in the feed');
SELECT is((SELECT count(*) FROM cdp.audience_history WHERE exited_at IS NOT NULL), 3::bigint, 'history keeps every stay');

-- the consumer acknowledges
SELECT is(cdp.ack_audience_changes(ARRAY(SELECT id FROM cdp.audience_changes)),
          (SELECT count(*) FROM cdp.audience_changes), 'acknowledged changes leave the outbox');
SELECT is(has_function_privilege('public', 'cdp.define_audience(text, text, text)', 'EXECUTE'), false,
          'defining audiences is not for PUBLIC');
SELECT * FROM finish();
ROLLBACK;
