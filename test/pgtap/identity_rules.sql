-- Identity resolution rules (identity.md): merges into the oldest profile,
-- per-type limits with priority, time windows, blocked values, the hub
-- guard, which identifiers a message carries, aliases, the profile id events
-- are stored with, profile statistics across merges, and invalid values.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(92);

\set send_ts '2026-03-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE FUNCTION pg_temp.save(name text, id text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO saved VALUES ($1, cdp.resolve($2::cdp.identifier))
    ON CONFLICT (name) DO UPDATE SET profile_id = excluded.profile_id
$$;
CREATE FUNCTION pg_temp.event_profile(mid text) RETURNS bigint LANGUAGE sql AS $$
    SELECT profile_id FROM cdp.events WHERE message_id = mid
$$;
-- rules are written straight into the table where a test is about the
-- algorithm rather than cdp.set_identity_rule (tested on its own below)
CREATE FUNCTION pg_temp.rule(t text, prio int, lim int, win interval DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO cdp.identity_rules VALUES (t, prio, lim, win)
    ON CONFLICT (id_type) DO UPDATE SET priority = excluded.priority,
        max_per_profile = excluded.max_per_profile, time_window = excluded.time_window
$$;
CREATE FUNCTION pg_temp.default_rules() RETURNS void LANGUAGE sql AS $$
    DELETE FROM cdp.identity_rules;
    INSERT INTO cdp.identity_rules VALUES ('user_id', 1, 1, NULL), ('email', 2, 5, NULL),
        ('phone', 3, 5, NULL), ('device_id', 4, 100, NULL), ('anonymous_id', 5, 1000, NULL),
        ('*', 10, 5, NULL);
$$;

-- the installed defaults are identity.md's
SELECT results_eq(
    $$SELECT id_type, priority, max_per_profile, time_window FROM cdp.identity_rules ORDER BY priority$$,
    $$VALUES ('user_id', 1, 1, NULL::interval), ('email', 2, 5, NULL), ('phone', 3, 5, NULL),
             ('device_id', 4, 100, NULL), ('anonymous_id', 5, 1000, NULL), ('*', 10, 5, NULL)$$,
    'default rules: user_id 1/1, email 2/5, phone 3/5, device_id 4/100, anonymous_id 5/1000, other 10/5');

--
-- anonymous -> user, and merges into the oldest profile
--
DO $$ BEGIN
    PERFORM pg_temp.send('ar-1', '{"anonymousId": "ar-anon"}', '2026-03-01 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('ar-anon', 'anonymous_id:ar-anon');
    PERFORM pg_temp.send('ar-2', '{"type": "identify", "anonymousId": "ar-anon", "userId": "ar-user"}',
                         '2026-03-01 10:05+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('user_id:ar-user'), pg_temp.saved('ar-anon'),
          'a user id seen with a known anonymous id joins the anonymous profile');
SELECT is(pg_temp.event_profile('ar-2'), pg_temp.saved('ar-anon'),
          'the identify event is stored with the anonymous profile');
SELECT is((SELECT count(*)::int FROM cdp.merges), 0, 'attaching a new identifier is not a merge');

DO $$ BEGIN
    PERFORM pg_temp.send('old-1', '{"anonymousId": "old-anon"}', '2026-03-01 11:00+00');
    PERFORM pg_temp.send('old-2', '{"userId": "old-user"}', '2026-03-01 11:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('old-anon', 'anonymous_id:old-anon');
    PERFORM pg_temp.save('old-user', 'user_id:old-user');
    -- the newer profile's identifier comes first in the message
    PERFORM pg_temp.send('old-3', '{"userId": "old-user", "anonymousId": "old-anon"}', '2026-03-01 11:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT cmp_ok(pg_temp.saved('old-anon'), '<', pg_temp.saved('old-user'),
              'profiles get ids in creation order');
SELECT is(pg_temp.pid('user_id:old-user'), pg_temp.saved('old-anon'),
          'two known profiles merge into the oldest (lowest id)');
SELECT is(pg_temp.pid('anonymous_id:old-anon'), pg_temp.saved('old-anon'),
          'the oldest profile keeps its identifiers');
SELECT results_eq(
    $$SELECT from_profile, into_profile, message_id, merged_at FROM cdp.merges WHERE message_id = 'old-3'$$,
    $$VALUES (pg_temp.saved('old-user'), pg_temp.saved('old-anon'), 'old-3', '2026-03-01 11:02+00'::timestamptz)$$,
    'a merge is recorded with from, into, the message and its time');
SELECT matches((SELECT reason FROM cdp.merges WHERE message_id = 'old-3'),
               'user_id:old-user.*anonymous_id:old-anon|anonymous_id:old-anon.*user_id:old-user',
               'the merge reason names the identifiers that caused it');
SELECT ok(NOT EXISTS (SELECT 1 FROM cdp.profiles WHERE profile_id = pg_temp.saved('old-user')),
          'cdp.profiles no longer lists the merged-away profile');

-- one message joining three profiles: both merge into the oldest
DO $$ BEGIN
    PERFORM pg_temp.send('tri-1', '{"anonymousId": "tri-anon", "context": {"device": {"id": "tri-dev"}}}',
                         '2026-03-01 12:00+00');
    PERFORM pg_temp.send('tri-2', '{"anonymousId": "tri-anon2"}', '2026-03-01 12:01+00');
    PERFORM pg_temp.send('tri-3', '{"userId": "tri-user"}', '2026-03-01 12:02+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('tri-1', 'device_id:tri-dev');
    PERFORM pg_temp.save('tri-2', 'anonymous_id:tri-anon2');
    PERFORM pg_temp.save('tri-3', 'user_id:tri-user');
    PERFORM pg_temp.send('tri-4', '{"userId": "tri-user", "anonymousId": "tri-anon2", "context": {"device": {"id": "tri-dev"}}}',
                         '2026-03-01 12:03+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT from_profile, into_profile FROM cdp.merges WHERE message_id = 'tri-4' ORDER BY from_profile$$,
    $$VALUES (pg_temp.saved('tri-2'), pg_temp.saved('tri-1')), (pg_temp.saved('tri-3'), pg_temp.saved('tri-1'))$$,
    'a message joining three profiles merges the two newer ones into the oldest, one merge row each');
SELECT is(
    (SELECT array_agg(DISTINCT pg_temp.pid(i)) FROM unnest(ARRAY['user_id:tri-user', 'anonymous_id:tri-anon',
                                                                   'anonymous_id:tri-anon2', 'device_id:tri-dev']) i),
    ARRAY[pg_temp.saved('tri-1')],
    'after the three-way merge every identifier resolves to the oldest profile');

--
-- identity.md's example: limits drop the message's weakest identifier
--
DO $$ BEGIN
    PERFORM pg_temp.send('ex-1', '{"type": "identify", "userId": "abc123", "traits": {"email": "x@y.z"}}',
                         '2026-03-02 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('A', 'user_id:abc123');
    PERFORM pg_temp.send('ex-2', '{"type": "identify", "userId": "abc456", "traits": {"email": "x@y.z"}}',
                         '2026-03-02 10:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('email:x@y.z'), pg_temp.saved('A'),
          'example: the shared email stays with profile A');
SELECT ok(pg_temp.pid('user_id:abc456') > pg_temp.saved('A'),
          'example: abc456 gets a new profile of its own');
SELECT set_eq($$SELECT cdp.profile_identifiers(pg_temp.pid('user_id:abc456'))::text$$,
              $$VALUES ('user_id:abc456')$$,
              'example: the new profile holds only abc456 (the email was dropped)');
SELECT results_eq(
    $$SELECT identifier::text, rule, detail, at FROM cdp.identity_violations WHERE message_id = 'ex-2'$$,
    $$VALUES ('email:x@y.z', 'user_id.max_per_profile',
              'the profile would hold 2 user_id identifiers, the limit is 1', '2026-03-02 10:01+00'::timestamptz)$$,
    'example: a user_id.max_per_profile violation names the dropped email');
SELECT is(pg_temp.event_profile('ex-2'), pg_temp.pid('user_id:abc456'),
          'example: the event is stored with the new profile');
SELECT results_eq(
    $$SELECT identifiers::text[], linked::text[], created_profile FROM cdp.identity_evidence WHERE message_id = 'ex-2'$$,
    $$VALUES (ARRAY['user_id:abc456', 'email:x@y.z'], ARRAY['user_id:abc456'], pg_temp.pid('user_id:abc456'))$$,
    'example: the evidence keeps what the message carried, what it linked and the profile it made');

--
-- email limit 5, counted over the would-be union
--
DO $$ BEGIN
    FOR i IN 1..5 LOOP
        PERFORM pg_temp.send('el-' || i, jsonb_build_object('type', 'identify', 'userId', 'el-user',
                             'traits', jsonb_build_object('email', 'el' || i || '@x.io')),
                             '2026-03-03 10:00+00'::timestamptz + i * interval '1 minute');
    END LOOP;
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('el-6', '{"type": "identify", "userId": "el-user", "traits": {"email": "el6@x.io"}}',
                         '2026-03-03 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*)::int FROM cdp.profile_identifiers(pg_temp.pid('user_id:el-user')) i
            WHERE cdp.id_type(i) = 'email'), 5,
          'a profile takes five emails');
SELECT is(pg_temp.pid('email:el6@x.io'), NULL, 'the sixth email is dropped');
SELECT results_eq(
    $$SELECT identifier::text, rule, detail FROM cdp.identity_violations WHERE message_id = 'el-6'$$,
    $$VALUES ('email:el6@x.io', 'email.max_per_profile', 'the profile would hold 6 email identifiers, the limit is 5')$$,
    'the sixth email records an email.max_per_profile violation');
SELECT is(pg_temp.event_profile('el-6'), pg_temp.pid('user_id:el-user'),
          'the message that broke the limit is still stored with the user''s profile');

-- two profiles of three emails each: joining them would make six
DO $$ BEGIN
    PERFORM pg_temp.send('eu-1', '{"type": "identify", "anonymousId": "eu-anon",
        "traits": {"email": "eu1@x.io"}, "context": {"traits": {"email": "eu2@x.io"}}}', '2026-03-03 12:00+00');
    PERFORM pg_temp.send('eu-2', '{"type": "identify", "anonymousId": "eu-anon", "traits": {"email": "eu3@x.io"}}',
                         '2026-03-03 12:01+00');
    PERFORM pg_temp.send('eu-3', '{"type": "identify", "userId": "eu-user",
        "traits": {"email": "eu4@x.io"}, "context": {"traits": {"email": "eu5@x.io"}}}', '2026-03-03 12:02+00');
    PERFORM pg_temp.send('eu-4', '{"type": "identify", "userId": "eu-user", "traits": {"email": "eu6@x.io"}}',
                         '2026-03-03 12:03+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('eu-5', '{"userId": "eu-user", "anonymousId": "eu-anon"}', '2026-03-03 12:04+00');
    PERFORM pg_temp.run();
END $$;
SELECT isnt(pg_temp.pid('user_id:eu-user'), pg_temp.pid('anonymous_id:eu-anon'),
            'limits count the would-be union: two profiles of three emails do not merge');
SELECT results_eq(
    $$SELECT identifier::text, rule FROM cdp.identity_violations WHERE message_id = 'eu-5'$$,
    $$VALUES ('anonymous_id:eu-anon', 'email.max_per_profile')$$,
    'the union violation drops the message''s weakest identifier (anonymous_id) and names the email rule');

-- other types fall back to the '*' rule: five per profile
DO $$ BEGIN
    PERFORM pg_temp.send('fb-1', '{"userId": "fb-user", "context": {"externalIds": [
        {"type": "loyalty", "id": "L1", "collection": "users", "encoding": "none"},
        {"type": "loyalty", "id": "L2"}, {"type": "loyalty", "id": "L3"}, {"type": "loyalty", "id": "L4"},
        {"type": "loyalty", "id": "L5"}, {"type": "loyalty", "id": "L6"}]}}', '2026-03-03 13:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT set_eq(
    $$SELECT i::text FROM cdp.profile_identifiers(pg_temp.pid('user_id:fb-user')) i$$,
    $$VALUES ('user_id:fb-user'), ('loyalty:L1'), ('loyalty:L2'), ('loyalty:L3'), ('loyalty:L4'), ('loyalty:L5')$$,
    'a type without a rule uses ''*'' (limit 5): the sixth loyalty id is dropped');
SELECT results_eq(
    $$SELECT identifier::text, rule FROM cdp.identity_violations WHERE message_id = 'fb-1'$$,
    $$VALUES ('loyalty:L6', 'loyalty.max_per_profile')$$,
    'on a tie in priority the later identifier is dropped');

--
-- cdp.set_identity_rule changes limits, priorities and windows
--
SELECT lives_ok($$SELECT cdp.set_identity_rule('email', 2, 2)$$,
                'set_identity_rule(''email'', 2, 2) succeeds');
SELECT results_eq(
    $$SELECT priority, max_per_profile, time_window FROM cdp.identity_rules WHERE id_type = 'email'$$,
    $$VALUES (2, 2, NULL::interval)$$,
    'set_identity_rule updates the email rule in cdp.identity_rules');
DO $$ BEGIN
    PERFORM pg_temp.send('sr-1', '{"type": "identify", "userId": "sr-user",
        "traits": {"email": "sr1@x.io"}, "context": {"traits": {"email": "sr2@x.io"}}}', '2026-03-04 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sr-2', '{"type": "identify", "userId": "sr-user", "traits": {"email": "sr3@x.io"}}',
                         '2026-03-04 10:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('email:sr3@x.io'), NULL, 'a lowered email limit (2) drops the third email');
SELECT results_eq(
    $$SELECT rule, detail FROM cdp.identity_violations WHERE message_id = 'sr-2'$$,
    $$VALUES ('email.max_per_profile', 'the profile would hold 3 email identifiers, the limit is 2')$$,
    'the violation reports the changed limit');

SELECT lives_ok($$SELECT cdp.set_identity_rule('user_id', 3, 1)$$,
                'set_identity_rule(''user_id'', 3, 1) succeeds');
DO $$ BEGIN
    PERFORM pg_temp.send('pr-1', '{"type": "identify", "userId": "pr-a", "traits": {"email": "pr@x.io"}}',
                         '2026-03-04 11:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('pr-2', '{"type": "identify", "userId": "pr-b", "traits": {"email": "pr@x.io"}}',
                         '2026-03-04 11:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('user_id:pr-b'), NULL,
          'with user_id weaker than email (priority 3 > 2) the user_id is the identifier dropped');
SELECT is(pg_temp.event_profile('pr-2'), pg_temp.pid('user_id:pr-a'),
          '... and the message goes with the email to the existing profile');

SELECT lives_ok($$SELECT cdp.set_identity_rule('crm_id', 6, 2, '7 days')$$,
                'set_identity_rule for a new type with a time window succeeds');
SELECT results_eq(
    $$SELECT priority, max_per_profile, time_window FROM cdp.identity_rules WHERE id_type = 'crm_id'$$,
    $$VALUES (6, 2, '7 days'::interval)$$,
    'a new type''s rule is listed in cdp.identity_rules');
SELECT lives_ok($$SELECT cdp.set_identity_rule('phone', 3)$$,
                'set_identity_rule with the default limit (NULL) succeeds');
SELECT results_eq(
    $$SELECT max_per_profile, time_window FROM cdp.identity_rules WHERE id_type = 'phone'$$,
    $$VALUES (NULL::int, NULL::interval)$$,
    'a NULL limit means no limit');
DO $$ BEGIN PERFORM pg_temp.default_rules(); END $$;

--
-- time windows: only identifiers linked within the window count
--
DO $$ BEGIN PERFORM pg_temp.rule('email', 2, 1, '1 day'); END $$;
DO $$ BEGIN
    PERFORM pg_temp.send('tw-1', '{"type": "identify", "userId": "tw-user", "traits": {"email": "tw-old@x.io"}}',
                         '2026-03-05 00:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('tw-2', '{"type": "identify", "userId": "tw-user", "traits": {"email": "tw-new@x.io"}}',
                         '2026-03-09 00:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('tw-3', '{"type": "identify", "userId": "tw-user", "traits": {"email": "tw-newer@x.io"}}',
                         '2026-03-09 12:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('email:tw-new@x.io'), pg_temp.pid('user_id:tw-user'),
          'an email linked longer ago than the window does not count toward the limit');
SELECT is(pg_temp.pid('email:tw-newer@x.io'), NULL,
          'an email linked within the window does count: the next one is dropped');
SELECT is(pg_temp.pid('email:tw-old@x.io'), pg_temp.pid('user_id:tw-user'),
          'the old email stays linked (the window limits counting, not membership)');
SELECT results_eq(
    $$SELECT message_id, rule, detail FROM cdp.identity_violations WHERE message_id LIKE 'tw-%'$$,
    $$VALUES ('tw-3', 'email.max_per_profile', 'the profile would hold 2 email identifiers, the limit is 1')$$,
    'only the message within the window records a violation, counting the emails in the window');
DO $$ BEGIN PERFORM pg_temp.default_rules(); END $$;

--
-- blocked values never link
--
CREATE TEMP TABLE blocked_values (n int, v text);
INSERT INTO blocked_values SELECT row_number() OVER (), v FROM unnest(ARRAY[
    'anonymous', 'guest', 'undefined', 'null', 'none', 'nan', '0', '-1', 'true', 'false',
    '[object object]', 'id', 'user_id', 'distinct_id', 'not_authenticated', 'email',
    'test@test.com', 'test@example.com',
    -- case-insensitive
    'GUEST', 'Undefined', 'NULL', 'NaN', 'True', '[object Object]', 'Test@Test.COM', 'Not_Authenticated',
    -- the regex ^[0-]*$
    '00', '0000', '-', '---', '0-0', '-00-']) v;
DO $$ BEGIN
    PERFORM pg_temp.send('bl-' || n, jsonb_build_object('userId', 'bl-user-' || n, 'anonymousId', v),
                         '2026-03-06 10:00+00')
       FROM blocked_values;
    PERFORM pg_temp.run();
END $$;
SELECT is_empty(
    $$SELECT v FROM blocked_values WHERE cdp.resolve(cdp.identifier('anonymous_id', v)) IS NOT NULL$$,
    'no default blocked value (any case, or matching ^[0-]*$) is linked');
SELECT is_empty(
    $$SELECT v FROM blocked_values b WHERE NOT EXISTS (
          SELECT 1 FROM cdp.identity_violations x
           WHERE x.message_id = 'bl-' || b.n AND x.rule = 'blocked'
             AND x.identifier = cdp.identifier('anonymous_id', b.v))$$,
    'every blocked value records a ''blocked'' violation naming it');
SELECT is((SELECT count(DISTINCT pg_temp.pid('user_id:bl-user-' || n))::int FROM blocked_values),
          (SELECT count(*)::int FROM blocked_values),
          'users sharing a placeholder anonymous id are not glued together');
SELECT is((SELECT count(*)::int FROM cdp.events e JOIN blocked_values b ON e.message_id = 'bl-' || b.n
            WHERE e.profile_id = pg_temp.pid('user_id:bl-user-' || b.n)),
          (SELECT count(*)::int FROM blocked_values),
          'messages with a blocked value are stored with the profile of their other identifiers');

DO $$ BEGIN
    PERFORM pg_temp.send('bt-1', '{"type": "identify", "userId": "bt-user", "traits": {"email": "TEST@EXAMPLE.COM"},
                                   "context": {"traits": {"email": "test@test.com"}}}', '2026-03-06 11:00+00');
    PERFORM pg_temp.send('bt-2', '{"userId": 0, "anonymousId": "bt-anon0"}', '2026-03-06 11:01+00');
    PERFORM pg_temp.send('bt-3', '{"userId": -1, "anonymousId": "bt-anon1"}', '2026-03-06 11:02+00');
    PERFORM pg_temp.send('bt-4', '{"userId": "bt-user4", "context": {"device": {"id": "undefined"},
                                   "externalIds": [{"type": "crm", "id": "NULL"}]}}', '2026-03-06 11:03+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT message_id, identifier::text FROM cdp.identity_violations
       WHERE message_id LIKE 'bt-%' AND rule = 'blocked' ORDER BY message_id, identifier$$,
    $$VALUES ('bt-1', 'email:test@example.com'), ('bt-1', 'email:test@test.com'), ('bt-2', 'user_id:0'),
             ('bt-3', 'user_id:-1'), ('bt-4', 'crm:NULL'), ('bt-4', 'device_id:undefined')$$,
    'blocked values are blocked in every type: emails, numeric user ids, devices, external ids');
SELECT ok(pg_temp.pid('anonymous_id:bt-anon0') IS NOT NULL AND pg_temp.pid('anonymous_id:bt-anon0')
            <> pg_temp.pid('anonymous_id:bt-anon1'),
          'the anonymous ids beside blocked user ids 0 and -1 keep profiles of their own');

-- only blocked identifiers: the event is stored without a profile
DO $$ BEGIN
    PERFORM pg_temp.send('bo-1', '{"userId": "guest"}', '2026-03-06 12:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT count(*)::int, bool_and(profile_id IS NULL) FROM cdp.events WHERE message_id = 'bo-1'$$,
    $$VALUES (1, true)$$,
    'a message whose only identifier is blocked is stored, without a profile');
SELECT results_eq(
    $$SELECT identifier::text, rule FROM cdp.identity_violations WHERE message_id = 'bo-1'$$,
    $$VALUES ('user_id:guest', 'blocked')$$,
    '... and records the blocked violation');

-- a blocked value beside a known identifier, in a batch that changes nothing else
DO $$ BEGIN
    PERFORM pg_temp.send('bk-1', '{"userId": "bk-user"}', '2026-03-06 12:10+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('bk-2', '{"userId": "bk-user", "anonymousId": "undefined"}', '2026-03-06 12:11+00');
END $$;
SELECT lives_ok($$SELECT pg_temp.run()$$,
                'a batch whose only news is a blocked value processes without error');
SELECT is(pg_temp.event_profile('bk-2'), pg_temp.pid('user_id:bk-user'),
          '... and stores the event with the known profile');

-- look-alikes are not blocked
DO $$ BEGIN
    PERFORM pg_temp.send('nb-' || v, jsonb_build_object('userId', 'nb-user-' || v, 'anonymousId', v),
                         '2026-03-06 13:00+00')
       FROM unnest(ARRAY['guests', 'nullable', '00a', '10', '0.0', '-1-', 'ids']) v;
    PERFORM pg_temp.run();
END $$;
SELECT is_empty(
    $$SELECT v FROM unnest(ARRAY['guests', 'nullable', '00a', '10', '0.0', '-1-', 'ids']) v
       WHERE pg_temp.pid('anonymous_id:' || v) IS DISTINCT FROM pg_temp.pid('user_id:nb-user-' || v)$$,
    'values that merely resemble placeholders (guests, 00a, 0.0, -1-, ...) link normally');

--
-- cdp.block_identifier: per type, every type ('*'), and regexes
--
SELECT lives_ok($$SELECT cdp.block_identifier('email', 'NoReply@Shop.io')$$,
                'block_identifier for one type succeeds');
SELECT lives_ok($$SELECT cdp.block_identifier('*', 'SHARED-KIOSK')$$,
                'block_identifier for every type (*) succeeds');
SELECT lives_ok($$SELECT cdp.block_identifier('device_id', '^emulator-[0-9]+$', true)$$,
                'block_identifier with a regex succeeds');
SELECT lives_ok($$SELECT cdp.block_identifier('*', 'SHARED-KIOSK')$$,
                'blocking the same value again is harmless');
SELECT results_eq(
    $$SELECT id_type, pattern, is_regex FROM cdp.blocked_identifiers
       WHERE pattern IN ('NoReply@Shop.io', 'SHARED-KIOSK', '^emulator-[0-9]+$') ORDER BY id_type, pattern$$,
    $$VALUES ('*', 'SHARED-KIOSK', false), ('device_id', '^emulator-[0-9]+$', true), ('email', 'NoReply@Shop.io', false)$$,
    'cdp.blocked_identifiers lists the new blocks once each');
DO $$ BEGIN
    PERFORM pg_temp.send('bi-1', '{"type": "identify", "userId": "bi-u1", "traits": {"email": "noreply@shop.io"}}',
                         '2026-03-07 10:00+00');
    PERFORM pg_temp.send('bi-2', '{"userId": "bi-u2", "anonymousId": "noreply@shop.io"}', '2026-03-07 10:01+00');
    PERFORM pg_temp.send('bi-3', '{"userId": "bi-u3", "context": {"device": {"id": "shared-kiosk"}}}',
                         '2026-03-07 10:02+00');
    PERFORM pg_temp.send('bi-4', '{"userId": "bi-u4", "anonymousId": "Shared-Kiosk"}', '2026-03-07 10:03+00');
    PERFORM pg_temp.send('bi-5', '{"userId": "bi-u5", "context": {"device": {"id": "Emulator-5554"}}}',
                         '2026-03-07 10:04+00');
    PERFORM pg_temp.send('bi-6', '{"userId": "bi-u6", "context": {"device": {"id": "emulator-x"}}}',
                         '2026-03-07 10:05+00');
    PERFORM pg_temp.send('bi-7', '{"userId": "bi-u7", "anonymousId": "emulator-5554"}', '2026-03-07 10:06+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT i, pg_temp.pid(i) IS NOT NULL FROM unnest(ARRAY['email:noreply@shop.io', 'anonymous_id:noreply@shop.io',
          'device_id:shared-kiosk', 'anonymous_id:Shared-Kiosk', 'device_id:Emulator-5554', 'device_id:emulator-x',
          'anonymous_id:emulator-5554']) WITH ORDINALITY u(i, n) ORDER BY n$$,
    $$VALUES ('email:noreply@shop.io', false), ('anonymous_id:noreply@shop.io', true),
             ('device_id:shared-kiosk', false), ('anonymous_id:Shared-Kiosk', false),
             ('device_id:Emulator-5554', false), ('device_id:emulator-x', true), ('anonymous_id:emulator-5554', true)$$,
    'a typed block applies to its type only, ''*'' to every type, regexes case-insensitively');
SELECT is((SELECT count(*)::int FROM cdp.identity_violations WHERE message_id LIKE 'bi-%' AND rule = 'blocked'), 4,
          'each blocked identifier records one violation');

-- a block is written the way people write the value; it applies to the
-- identifier that value normalises to
SELECT lives_ok($$SELECT cdp.block_identifier('phone', '+1 (555) 000-0000')$$,
                'block_identifier takes a phone number with punctuation');
SELECT lives_ok($$SELECT cdp.block_identifier('email', ' Support@Shop.io ')$$,
                'block_identifier takes an email with surrounding spaces');
DO $$ BEGIN
    PERFORM pg_temp.send('bn-1', '{"type": "identify", "userId": "bn-u1", "traits": {"phone": "+15550000000",
                                   "email": "support@shop.io"}}', '2026-03-07 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('phone:+15550000000'), NULL,
          'a phone block written with punctuation blocks that number');
SELECT is(pg_temp.pid('email:support@shop.io'), NULL,
          'an email block written with spaces blocks that email');

--
-- the hub guard
--
SET LOCAL cdp.max_merges_per_profile = 2;
DO $$ BEGIN
    PERFORM pg_temp.send('hub-1', '{"userId": "hub-user"}', '2026-03-08 10:00+00');
    PERFORM pg_temp.send('hub-2', '{"anonymousId": "hub-b", "context": {"device": {"id": "hub-dev-b"}}}',
                         '2026-03-08 10:01+00');
    PERFORM pg_temp.send('hub-3', '{"anonymousId": "hub-x"}', '2026-03-08 10:02+00');
    PERFORM pg_temp.send('hub-4', '{"anonymousId": "hub-c"}', '2026-03-08 10:03+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('hub', 'user_id:hub-user');
    -- X merges into B (B has absorbed 1), then B into the hub (1 + 1 = 2)
    PERFORM pg_temp.send('hub-5', '{"anonymousId": "hub-x", "context": {"device": {"id": "hub-dev-b"}}}',
                         '2026-03-08 10:04+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('hub-6', '{"userId": "hub-user", "anonymousId": "hub-b"}', '2026-03-08 10:05+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('hub-7', '{"userId": "hub-user", "anonymousId": "hub-c"}', '2026-03-08 10:06+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('hub-8', '{"userId": "hub-user", "anonymousId": "hub-new"}', '2026-03-08 10:07+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:hub-x'), pg_temp.saved('hub'),
          'merges below the hub limit go ahead');
SELECT isnt(pg_temp.pid('anonymous_id:hub-c'), pg_temp.saved('hub'),
            'a profile that absorbed max_merges_per_profile merges (counting merges its parts absorbed) takes no more');
SELECT results_eq(
    $$SELECT identifier::text, rule, detail FROM cdp.identity_violations WHERE message_id = 'hub-7'$$,
    format($$VALUES ('anonymous_id:hub-c', 'hub',
                     'profile %s has absorbed 2 merges (cdp.max_merges_per_profile)')$$, pg_temp.saved('hub')),
    'the refused merge is a ''hub'' violation, never a silent drop');
SELECT is(pg_temp.event_profile('hub-7'), pg_temp.saved('hub'),
          'the event of the refused merge is stored with the hub profile');
SELECT is(pg_temp.pid('anonymous_id:hub-new'), pg_temp.saved('hub'),
          'a hub still takes new identifiers; only merges are refused');
RESET cdp.max_merges_per_profile;

--
-- which identifiers a message carries, in order
--
DO $$ BEGIN
    PERFORM pg_temp.send('xt-1', '{"type": "identify", "userId": "XT-User", "anonymousId": "xt-anon",
        "traits": {"email": " XT@Mail.IO ", "phone": "+1 (555) 000-1111"},
        "context": {"traits": {"email": "ctx@mail.io", "phone": 5550002222},
                    "device": {"id": "xt-dev"},
                    "externalIds": [{"type": "Salesforce-ID", "id": "SF-1", "collection": "users", "encoding": "none"},
                                    {"type": "hubspot", "id": 42}]}}', '2026-03-09 10:00+00');
    PERFORM pg_temp.send('xt-2', '{"anonymousId": "xt-anon2", "context": {"traits": {"email": "ctx-only@mail.io"}}}',
                         '2026-03-09 10:01+00');
    PERFORM pg_temp.send('xt-3', '{"type": "identify", "userId": "xt-user3", "traits": {"email": "same@mail.io"},
                                   "context": {"traits": {"email": "SAME@mail.io"}}}', '2026-03-09 10:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT identifiers::text[] FROM cdp.identity_evidence WHERE message_id = 'xt-1'),
          ARRAY['user_id:XT-User', 'anonymous_id:xt-anon', 'email:xt@mail.io', 'email:ctx@mail.io',
                'phone:+15550001111', 'phone:5550002222', 'device_id:xt-dev', 'salesforce_id:SF-1', 'hubspot:42'],
          'a message carries userId, anonymousId, emails and phones (traits, then context.traits), the device and externalIds, in that order');
SELECT is((SELECT count(DISTINCT pg_temp.pid(i))::int
             FROM unnest((SELECT identifiers::text[] FROM cdp.identity_evidence WHERE message_id = 'xt-1')) i), 1,
          'all of them are linked into one profile');
SELECT is(pg_temp.pid('email:ctx-only@mail.io'), pg_temp.pid('anonymous_id:xt-anon2'),
          'an email in context.traits of a track call is linked');
SELECT is((SELECT identifiers::text[] FROM cdp.identity_evidence WHERE message_id = 'xt-3'),
          ARRAY['user_id:xt-user3', 'email:same@mail.io'],
          'the same identifier in traits and context.traits counts once');

--
-- alias: previousId is the user_id it names if one exists, else an anonymous_id
--
DO $$ BEGIN
    PERFORM pg_temp.send('al-1', '{"userId": "al-old"}', '2026-03-10 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('al-2', '{"type": "alias", "previousId": "al-old", "userId": "al-new"}', '2026-03-10 10:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT identifiers::text[] FROM cdp.identity_evidence WHERE message_id = 'al-2'),
          ARRAY['user_id:al-new', 'user_id:al-old'],
          'alias: a previousId naming a known user_id is read as that user_id');
SELECT is(pg_temp.pid('anonymous_id:al-old'), NULL, '... and not as an anonymous_id');
SELECT results_eq(
    $$SELECT identifier::text, rule FROM cdp.identity_violations WHERE message_id = 'al-2'$$,
    $$VALUES ('user_id:al-old', 'user_id.max_per_profile')$$,
    'alias of two user ids is refused by the user_id limit (the previousId, later on the tie, is dropped)');

DO $$ BEGIN
    PERFORM pg_temp.send('al-3', '{"anonymousId": "al-anon"}', '2026-03-10 11:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('al-4', '{"type": "alias", "previousId": "al-anon", "userId": "al-user"}', '2026-03-10 11:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('user_id:al-user'), pg_temp.pid('anonymous_id:al-anon'),
          'alias: a previousId naming no user_id is an anonymous_id, linked to the userId');
SELECT is(pg_temp.pid('user_id:al-anon'), NULL, '... and no user_id is made of it');

-- the same as al-1/al-2, but both messages in one batch: ingest order decides, not batches
DO $$ BEGIN
    PERFORM pg_temp.send('ab-1', '{"userId": "ab-old"}', '2026-03-10 12:00+00');
    PERFORM pg_temp.send('ab-2', '{"type": "alias", "previousId": "ab-old", "userId": "ab-new"}', '2026-03-10 12:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT identifiers::text[] FROM cdp.identity_evidence WHERE message_id = 'ab-2'),
          ARRAY['user_id:ab-new', 'user_id:ab-old'],
          'alias: a user_id created earlier in the same batch is known to a later alias');
SELECT is(pg_temp.pid('anonymous_id:ab-old'), NULL,
          'alias in the same batch as the user: no anonymous_id is made of the previousId');

--
-- the profile id events are stored with, and cdp.events_resolved
--
DO $$ BEGIN
    PERFORM pg_temp.send('ev-1', '{"anonymousId": "ev-anon"}', '2026-03-11 10:00+00');
    PERFORM pg_temp.send('ev-2', '{"anonymousId": "ev-anon"}', '2026-03-11 11:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('ev-anon', 'anonymous_id:ev-anon');
    PERFORM pg_temp.send('ev-3', '{"userId": "ev-user"}', '2026-03-11 09:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('ev-user', 'user_id:ev-user');
    PERFORM pg_temp.send('ev-4', '{"userId": "ev-user", "anonymousId": "ev-anon"}', '2026-03-11 12:00+00');
    PERFORM pg_temp.send('ev-5', '{"userId": "ev-user"}', '2026-03-11 13:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT message_id, profile_id FROM cdp.events WHERE message_id LIKE 'ev-%' ORDER BY message_id$$,
    $$VALUES ('ev-1', pg_temp.saved('ev-anon')), ('ev-2', pg_temp.saved('ev-anon')), ('ev-3', pg_temp.saved('ev-user')),
             ('ev-4', pg_temp.saved('ev-anon')), ('ev-5', pg_temp.saved('ev-anon'))$$,
    'events are stored with the canonical profile; events stored before a merge are not rewritten');
SELECT results_eq(
    $$SELECT message_id, profile_id FROM cdp.events_resolved WHERE message_id LIKE 'ev-%' ORDER BY message_id$$,
    $$SELECT m, pg_temp.saved('ev-anon') FROM unnest(ARRAY['ev-1', 'ev-2', 'ev-3', 'ev-4', 'ev-5']) m$$,
    'cdp.events_resolved follows merges made after the event');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen FROM cdp.profiles WHERE profile_id = pg_temp.saved('ev-anon')$$,
    $$VALUES (5::bigint, '2026-03-11 09:00+00'::timestamptz, '2026-03-11 13:00+00'::timestamptz)$$,
    'a merged profile counts the events of both, first_seen is the earliest and last_seen the latest');

-- a chain: C into B, then B into A; events of C resolve to A in one step
DO $$ BEGIN
    PERFORM pg_temp.send('ch-1', '{"anonymousId": "ch-a"}', '2026-03-12 10:00+00');
    PERFORM pg_temp.send('ch-2', '{"userId": "ch-u"}', '2026-03-12 10:01+00');
    PERFORM pg_temp.send('ch-3', '{"anonymousId": "ch-b"}', '2026-03-12 10:02+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('ch-a', 'anonymous_id:ch-a');
    PERFORM pg_temp.save('ch-b', 'anonymous_id:ch-b');
    PERFORM pg_temp.send('ch-4', '{"userId": "ch-u", "anonymousId": "ch-b"}', '2026-03-12 10:03+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ch-5', '{"userId": "ch-u", "anonymousId": "ch-a"}', '2026-03-12 10:04+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT message_id, profile_id FROM cdp.events_resolved WHERE message_id LIKE 'ch-%' ORDER BY message_id$$,
    $$SELECT m, pg_temp.saved('ch-a') FROM unnest(ARRAY['ch-1', 'ch-2', 'ch-3', 'ch-4', 'ch-5']) m$$,
    'events_resolved follows a chain of merges to the canonical profile');
SELECT is((SELECT merged_into FROM cdp.profile_records WHERE profile_id = pg_temp.saved('ch-b')), pg_temp.saved('ch-a'),
          'a profile merged into one that was merged later points straight at the canonical profile');

--
-- invalid identifiers in messages
--
DO $$ BEGIN
    PERFORM pg_temp.send('inv-1', jsonb_build_object('type', 'identify', 'userId', 'inv-user',
        'anonymousId', repeat('a', 1100), 'traits', jsonb_build_object('email', E'bad\u0001mail@x.io', 'phone', 'n/a')),
        '2026-03-13 10:00+00');
    PERFORM pg_temp.send('inv-2', jsonb_build_object('anonymousId', repeat('b', 1025)), '2026-03-13 10:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT identifier IS NULL, rule, detail FROM cdp.identity_violations WHERE message_id = 'inv-1' ORDER BY detail$$,
    $$VALUES (true, 'invalid', 'anonymous_id:' || repeat('a', 64) || ': the value is longer than 1024 bytes'),
             (true, 'invalid', E'email:bad\u0001mail@x.io: the value contains a control character'),
             (true, 'invalid', 'phone:n/a: the phone number has no digits')$$,
    'values that cannot form an identifier become ''invalid'' violations (identifier NULL) naming the problem');
SELECT is(pg_temp.event_profile('inv-1'), pg_temp.pid('user_id:inv-user'),
          'a message with invalid identifiers is stored, with the profile of its valid ones');
SELECT results_eq(
    $$SELECT count(*)::int, bool_and(profile_id IS NULL) FROM cdp.events WHERE message_id = 'inv-2'$$,
    $$VALUES (1, true)$$,
    'a message whose only identifier is invalid is stored without a profile');
SELECT is((SELECT count(*)::int FROM cdp.identity_violations WHERE message_id = 'inv-2' AND rule = 'invalid'), 1,
          '... and records the invalid violation');

--
-- over everything above
--
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'no message was dead-lettered');
SELECT results_eq(
    $$SELECT profile_id, event_count, first_seen, last_seen FROM cdp.profiles WHERE event_count > 0 ORDER BY profile_id$$,
    $$SELECT profile_id, count(*), min(ts), max(ts) FROM cdp.events_resolved
       WHERE profile_id IS NOT NULL GROUP BY profile_id ORDER BY profile_id$$,
    'cdp.profiles event_count, first_seen and last_seen equal the events that resolve to each profile');
SELECT is_empty(
    $$SELECT profile_id FROM cdp.events_resolved WHERE profile_id IS NOT NULL
      EXCEPT SELECT profile_id FROM cdp.profiles$$,
    'every event resolves to a canonical profile (or none)');
SELECT is_empty(
    $$SELECT DISTINCT i.profile_id FROM cdp.identities i
        JOIN cdp.profile_records r USING (profile_id) WHERE r.merged_into IS NOT NULL$$,
    'cdp.identities names canonical profiles only');

SELECT * FROM finish();
ROLLBACK;
