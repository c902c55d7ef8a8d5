-- Identity functions (api.md "Identity"): resolve, profile_identifiers,
-- link, explain_link, split_profile, set_identity_rule / block_identifier
-- argument checks, and rebuild_identities (dry run and apply).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(112);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE FUNCTION pg_temp.ids(p bigint) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(i::text ORDER BY i) FROM cdp.profile_identifiers(p) i
$$;
CREATE FUNCTION pg_temp.save(name text, v bigint) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO saved VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET profile_id = excluded.profile_id
    RETURNING profile_id
$$;
-- rules are written straight into the table: this file is about rebuilds,
-- not cdp.set_identity_rule (see identity_rules.sql)
CREATE FUNCTION pg_temp.rule(t text, lim int) RETURNS void LANGUAGE sql AS $$
    UPDATE cdp.identity_rules SET max_per_profile = lim WHERE id_type = t
$$;
-- the whole graph as text, to show a dry run changes nothing
CREATE FUNCTION pg_temp.graph() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(identifier::text || '=' || profile_id || '@' || linked_at, ',' ORDER BY identifier), '')
      || '|' || (SELECT count(*) FROM cdp.profile_records WHERE merged_into IS NULL)
      || '|' || (SELECT count(*) FROM cdp.identity_splits)
      FROM cdp.identities
$$;
CREATE FUNCTION pg_temp.dry() RETURNS jsonb LANGUAGE sql AS $$ SELECT cdp.rebuild_identities(dry_run => true) $$;

--
-- resolve and profile_identifiers
--
DO $$ BEGIN
    PERFORM pg_temp.send('rs-1', '{"type": "identify", "userId": "rs-user", "anonymousId": "rs-anon",
                                   "traits": {"email": "Ann@X.io", "phone": "+1 555 0100"}}', '2026-04-01 10:00+00');
    PERFORM pg_temp.send('rs-2', '{"anonymousId": "rs-anon2"}', '2026-04-01 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('rs', pg_temp.pid('user_id:rs-user'));
    PERFORM pg_temp.save('rs2', pg_temp.pid('anonymous_id:rs-anon2'));
END $$;
SELECT isnt(cdp.resolve('user_id:rs-user'), NULL, 'resolve: a known identifier has a profile');
SELECT is(cdp.resolve('anonymous_id:rs-anon'), pg_temp.saved('rs'), 'resolve: identifiers of one message share it');
SELECT is(cdp.resolve('email: ANN@x.IO '), pg_temp.saved('rs'), 'resolve: the input is normalised (email)');
SELECT is(cdp.resolve('phone:+1 (555) 0100'), pg_temp.saved('rs'), 'resolve: the input is normalised (phone)');
SELECT is(cdp.resolve('user_id:nobody'), NULL, 'resolve: an unknown identifier gives NULL');
SELECT is(cdp.resolve(NULL), NULL, 'resolve(NULL) is NULL');
SELECT is(pg_temp.ids(pg_temp.saved('rs')),
          ARRAY['anonymous_id:rs-anon', 'email:ann@x.io', 'phone:+15550100', 'user_id:rs-user'],
          'profile_identifiers lists a profile''s identifiers, in identifier order');
SELECT is_empty($$SELECT * FROM cdp.profile_identifiers(-1)$$, 'profile_identifiers of an unknown profile is empty');

DO $$ BEGIN
    PERFORM pg_temp.send('rs-3', '{"userId": "rs-user", "anonymousId": "rs-anon2"}', '2026-04-01 10:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(cdp.resolve('anonymous_id:rs-anon2'), pg_temp.saved('rs'), 'resolve follows a merge to the canonical profile');
SELECT is(pg_temp.ids(pg_temp.saved('rs2')), pg_temp.ids(pg_temp.saved('rs')),
          'profile_identifiers of a merged-away id answers for the profile that absorbed it');
SELECT is(array_length(pg_temp.ids(pg_temp.saved('rs')), 1), 5, '... which now holds five identifiers');

--
-- link
--
DO $$ BEGIN
    PERFORM pg_temp.send('ln-1', '{"anonymousId": "crm-anon"}', '2026-04-02 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('crm-anon', pg_temp.pid('anonymous_id:crm-anon'));
    PERFORM pg_temp.save('link1', cdp.link('user_id:crm-1', 'email:CRM@X.io'));
END $$;
SELECT ok(pg_temp.saved('link1') > pg_temp.saved('crm-anon'), 'link of two unknown identifiers makes a new profile');
SELECT is(ARRAY[pg_temp.pid('user_id:crm-1'), pg_temp.pid('email:crm@x.io')],
          ARRAY[pg_temp.saved('link1'), pg_temp.saved('link1')],
          'link returns the profile both identifiers now resolve to');
SELECT results_eq(
    $$SELECT identifiers::text[], linked::text[], source, message_id LIKE 'link-%' FROM cdp.identity_evidence
       WHERE 'user_id:crm-1' = ANY (identifiers)$$,
    $$VALUES (ARRAY['user_id:crm-1', 'email:crm@x.io'], ARRAY['user_id:crm-1', 'email:crm@x.io'], 'api', true)$$,
    'link stores evidence with source ''api'' by default and a generated message id');
SELECT is(cdp.link('user_id:crm-1', 'phone:+1 555 0199', 'crm'), pg_temp.saved('link1'),
          'link of a known and a new identifier attaches the new one');
SELECT is((SELECT source FROM cdp.identity_evidence WHERE 'phone:+15550199' = ANY (identifiers)), 'crm',
          'link keeps the source it is given');
SELECT is(cdp.link('anonymous_id:crm-anon', 'user_id:crm-1'), pg_temp.saved('crm-anon'),
          'link of two known profiles merges them into the oldest and returns it');
SELECT results_eq(
    $$SELECT from_profile, into_profile, message_id LIKE 'link-%' FROM cdp.merges
       WHERE from_profile = pg_temp.saved('link1')$$,
    $$VALUES (pg_temp.saved('link1'), pg_temp.saved('crm-anon'), true)$$,
    'a merge made by link is recorded like any other');
SELECT is(cdp.link('anonymous_id:crm-anon', 'email:crm@x.io'), pg_temp.saved('crm-anon'),
          'link of two identifiers already together returns their profile');
DO $$ BEGIN PERFORM cdp.link('email:crm@x.io', 'anonymous_id:crm-anon'); END $$;
SELECT is((SELECT count(*)::int FROM cdp.identity_evidence WHERE 'anonymous_id:crm-anon' = ANY (identifiers)
              AND 'email:crm@x.io' = ANY (identifiers)), 1,
          '... and stores the pair as evidence once, however often it is linked again');

DO $$ BEGIN PERFORM pg_temp.save('crm-2', cdp.link('user_id:crm-2', 'email:crm@x.io')); END $$;
SELECT isnt(pg_temp.saved('crm-2'), pg_temp.saved('crm-anon'),
            'link respects limits: a second user_id does not join the email''s profile');
SELECT is(pg_temp.pid('email:crm@x.io'), pg_temp.saved('crm-anon'), '... the email stays where it was');
SELECT results_eq(
    $$SELECT identifier::text, rule, message_id LIKE 'link-%' FROM cdp.identity_violations
       WHERE identifier = 'email:crm@x.io'$$,
    $$VALUES ('email:crm@x.io', 'user_id.max_per_profile', true)$$,
    '... and the dropped identifier is recorded as a violation of the link');
SELECT is(cdp.link('user_id:guest', 'email:null'), NULL, 'link of two blocked values returns NULL');
DO $$ BEGIN PERFORM pg_temp.save('crm-3', cdp.link('user_id:crm-3', 'anonymous_id:undefined')); END $$;
SELECT is(pg_temp.pid('user_id:crm-3'), pg_temp.saved('crm-3'), 'link with one blocked value links the other alone');
SELECT is(pg_temp.pid('anonymous_id:undefined'), NULL, '... and not the blocked one');
SELECT is((SELECT count(*)::int FROM cdp.identity_violations
            WHERE rule = 'blocked' AND identifier IN ('user_id:guest', 'email:null', 'anonymous_id:undefined')), 3,
          'blocked values given to link are recorded as violations');
SELECT is(cdp.link(NULL, 'user_id:crm-1'), NULL, 'link(NULL, ...) is NULL');
SELECT throws_ok($$SELECT cdp.link('user_id:x', 'bad')$$, '22P02', NULL,
                 'link of a malformed identifier is 22P02');

--
-- explain_link
--
DO $$ BEGIN
    PERFORM pg_temp.send('xp-1', '{"anonymousId": "xa1"}', '2026-04-03 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('xp-2', '{"userId": "xu", "anonymousId": "xa1"}', '2026-04-03 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('xp-3', '{"userId": "xu", "anonymousId": "xa2"}', '2026-04-03 10:02+00');
    PERFORM pg_temp.send('xp-4', '{"anonymousId": "xa2", "context": {"device": {"id": "xd"}}}', '2026-04-03 10:03+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq(
    $$SELECT step, from_id::text, to_id::text, message_id, linked_at FROM cdp.explain_link('anonymous_id:xa1', 'device_id:xd')$$,
    $$VALUES (1, 'anonymous_id:xa1', 'user_id:xu', 'xp-2', '2026-04-03 10:01+00'::timestamptz),
             (2, 'user_id:xu', 'anonymous_id:xa2', 'xp-3', '2026-04-03 10:02+00'::timestamptz),
             (3, 'anonymous_id:xa2', 'device_id:xd', 'xp-4', '2026-04-03 10:03+00'::timestamptz)$$,
    'explain_link returns the chain of evidence, step by step, with message ids and times');
SELECT results_eq(
    $$SELECT step, from_id::text, to_id::text, message_id FROM cdp.explain_link('device_id:xd', 'anonymous_id:xa1')$$,
    $$VALUES (1, 'device_id:xd', 'anonymous_id:xa2', 'xp-4'), (2, 'anonymous_id:xa2', 'user_id:xu', 'xp-3'),
             (3, 'user_id:xu', 'anonymous_id:xa1', 'xp-2')$$,
    'explain_link the other way round walks the chain backwards');
SELECT results_eq(
    $$SELECT step, message_id FROM cdp.explain_link('user_id:xu', 'anonymous_id:xa2')$$,
    $$VALUES (1, 'xp-3')$$,
    'explain_link of directly linked identifiers is one step');
SELECT results_eq(
    $$SELECT step, from_id::text, to_id::text, message_id FROM cdp.explain_link('email: ANN@x.io', 'anonymous_id:rs-anon2')$$,
    $$VALUES (1, 'email:ann@x.io', 'user_id:rs-user', 'rs-1'), (2, 'user_id:rs-user', 'anonymous_id:rs-anon2', 'rs-3')$$,
    'explain_link crosses merges, naming the message that merged');
SELECT results_eq(
    $$SELECT count(*)::int, bool_and(message_id LIKE 'link-%') FROM cdp.explain_link('anonymous_id:crm-anon', 'phone:+15550199')$$,
    $$VALUES (2, true)$$,
    'explain_link shows evidence added by link()');
SELECT is_empty($$SELECT * FROM cdp.explain_link('anonymous_id:xa1', 'user_id:rs-user')$$,
                'explain_link of identifiers in different profiles returns no rows');
SELECT throws_ok($$SELECT * FROM cdp.explain_link('anonymous_id:xa1', 'user_id:never-seen')$$, '42704',
                 'identifier "user_id:never-seen" is not known',
                 'explain_link of an unknown identifier is 42704');
SELECT throws_ok($$SELECT * FROM cdp.explain_link('anonymous_id:never-seen', 'anonymous_id:xa1')$$, '42704', NULL,
                 'explain_link with an unknown first identifier is 42704');

--
-- split_profile
--
DO $$ BEGIN
    PERFORM pg_temp.send('sp-1', '{"anonymousId": "s-a1"}', '2026-04-04 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sp-2', '{"anonymousId": "s-a1", "context": {"device": {"id": "s-shared"}}}', '2026-04-04 10:01+00');
    PERFORM pg_temp.send('sp-3', '{"anonymousId": "s-a2"}', '2026-04-04 10:02+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('s-a2-before', pg_temp.pid('anonymous_id:s-a2'));
    PERFORM pg_temp.send('sp-4', '{"anonymousId": "s-a2", "context": {"device": {"id": "s-shared"}}}', '2026-04-04 10:03+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sp-5', '{"userId": "s-u2", "anonymousId": "s-a2"}', '2026-04-04 10:05+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('sp', pg_temp.pid('anonymous_id:s-a1'));
END $$;
SELECT is(pg_temp.ids(pg_temp.saved('sp')),
          ARRAY['anonymous_id:s-a1', 'anonymous_id:s-a2', 'device_id:s-shared', 'user_id:s-u2'],
          'split setup: a shared device glued two visitors into one profile');
CREATE TEMP TABLE split_result AS
SELECT row_number() OVER () AS n, p FROM cdp.split_profile(pg_temp.saved('sp'), 'device_id:s-shared') p;
SELECT is((SELECT p FROM split_result WHERE n = 1), pg_temp.saved('sp'),
          'split_profile returns the profile that keeps the id first');
SELECT set_eq($$SELECT p FROM split_result$$,
              $$VALUES (pg_temp.saved('sp')), (pg_temp.pid('device_id:s-shared')), (pg_temp.pid('anonymous_id:s-a2'))$$,
              'split_profile returns every resulting profile');
SELECT is((SELECT count(DISTINCT p)::int FROM split_result), 3, '... three distinct ones here');
SELECT is(pg_temp.ids(pg_temp.pid('device_id:s-shared')), ARRAY['device_id:s-shared'],
          'keep_out ends up alone in a new profile');
SELECT is(pg_temp.ids(pg_temp.saved('sp')), ARRAY['anonymous_id:s-a1'],
          'the part holding the earliest-linked identifier keeps the profile id');
SELECT is(pg_temp.ids(pg_temp.pid('anonymous_id:s-a2')), ARRAY['anonymous_id:s-a2', 'user_id:s-u2'],
          'what the remaining evidence still joins stays together');
SELECT is((SELECT count(*)::int FROM cdp.profiles WHERE profile_id IN (SELECT p FROM split_result)), 3,
          'the resulting profiles are canonical (listed in cdp.profiles)');
SELECT is((pg_temp.dry()->>'changed')::int, 0, 'rebuild dry run after a split reports 0 changes');

DO $$ BEGIN
    PERFORM pg_temp.send('sp-6', '{"anonymousId": "s-a1", "context": {"device": {"id": "s-shared"}}}', '2026-04-04 11:00+00');
    PERFORM pg_temp.send('sp-7', '{"anonymousId": "s-a2", "context": {"device": {"id": "s-shared"}}}', '2026-04-04 11:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.ids(pg_temp.pid('device_id:s-shared')), ARRAY['device_id:s-shared'],
          'a later message carrying keep_out with a former member does not re-merge');
SELECT results_eq(
    $$SELECT message_id, identifier::text, rule FROM cdp.identity_violations WHERE message_id IN ('sp-6', 'sp-7') ORDER BY 1$$,
    $$VALUES ('sp-6', 'device_id:s-shared', 'split'), ('sp-7', 'device_id:s-shared', 'split')$$,
    '... it records a ''split'' violation for keep_out');
SELECT is(ARRAY[pg_temp.pid('anonymous_id:s-a1'), pg_temp.pid('anonymous_id:s-a2')],
          ARRAY[pg_temp.saved('sp'), (SELECT p FROM split_result WHERE p NOT IN (pg_temp.saved('sp'), pg_temp.pid('device_id:s-shared')))],
          '... and the former members stay where the split put them');
SELECT is((SELECT profile_id FROM cdp.events WHERE message_id = 'sp-6'), pg_temp.saved('sp'),
          '... and the event goes with the former member');

DO $$ BEGIN
    PERFORM pg_temp.send('sp-8', '{"userId": "s-new", "context": {"device": {"id": "s-shared"}}}', '2026-04-04 12:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sp-9', '{"userId": "s-new", "anonymousId": "s-a1"}', '2026-04-04 12:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('user_id:s-new'), pg_temp.pid('device_id:s-shared'),
          'keep_out may join identifiers it was never split from');
SELECT is(pg_temp.pid('anonymous_id:s-a1'), pg_temp.saved('sp'),
          'keep_out never joins a profile holding an anchor of the split, even through a new identifier');
SELECT results_eq(
    $$SELECT identifier::text, rule FROM cdp.identity_violations WHERE message_id = 'sp-9'$$,
    $$VALUES ('anonymous_id:s-a1', 'split')$$,
    '... the refused union is a ''split'' violation');
SELECT is((pg_temp.dry()->>'changed')::int, 0, 'rebuild dry run after messages that meet a split reports 0');
SELECT is((cdp.rebuild_identities()->>'changed')::int, 0, 'rebuild_identities() after a split changes nothing');
SELECT is(pg_temp.ids(pg_temp.pid('device_id:s-shared')), ARRAY['device_id:s-shared', 'user_id:s-new'],
          'the split survives a rebuild');

SELECT throws_ok($$SELECT * FROM cdp.split_profile(-42, 'device_id:s-shared')$$, '42704',
                 'profile -42 does not exist', 'split_profile of an unknown profile is 42704');
SELECT throws_ok(format('SELECT * FROM cdp.split_profile(%s, %L)', pg_temp.saved('s-a2-before'), 'anonymous_id:s-a2'),
                 '55000', NULL, 'split_profile of a merged-away profile is 55000');
SELECT throws_ok(format('SELECT * FROM cdp.split_profile(%s, %L)', pg_temp.saved('sp'), 'user_id:s-u2'),
                 '22023', format('identifier "user_id:s-u2" is not in profile %s', pg_temp.saved('sp')),
                 'split_profile with an identifier of another profile is 22023');
SELECT throws_ok(format('SELECT * FROM cdp.split_profile(%s, %L)', pg_temp.saved('sp'), 'user_id:never-seen'),
                 '22023', NULL, 'split_profile with an unknown identifier is 22023');

--
-- set_identity_rule and block_identifier refuse bad arguments
--
CREATE TEMP TABLE rules_before AS SELECT * FROM cdp.identity_rules;
CREATE TEMP TABLE blocks_before AS SELECT * FROM cdp.blocked_identifiers;
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, -1)$$, '22023',
                 'max_per_profile must be 1 or more, or NULL for no limit, not -1',
                 'set_identity_rule: a negative limit is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 0)$$, '22023', NULL,
                 'set_identity_rule: a zero limit is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 0, 5)$$, '22023',
                 'priority must be 1 or more (1 is the strongest), not 0',
                 'set_identity_rule: priority 0 is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', NULL, 5)$$, '22023', NULL,
                 'set_identity_rule: a NULL priority is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('Email', 2, 5)$$, '22023', 'invalid identifier type "Email"',
                 'set_identity_rule: a type that is not ^[a-z][a-z0-9_]{0,62}$ is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule(NULL, 2, 5)$$, '22023', NULL,
                 'set_identity_rule: a NULL type is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 5, '-1 day')$$, '22023', NULL,
                 'set_identity_rule: a negative time window is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 5, '0 seconds')$$, '22023', NULL,
                 'set_identity_rule: a zero time window is 22023');
SELECT throws_ok($$SELECT cdp.block_identifier('email', '[unclosed', true)$$, '2201B',
                 'invalid regular expression "[unclosed"',
                 'block_identifier: a bad regex is 2201B');
SELECT throws_ok($$SELECT cdp.block_identifier('email', '')$$, '22023', 'pattern must not be empty',
                 'block_identifier: an empty pattern is 22023');
SELECT throws_ok($$SELECT cdp.block_identifier('email', NULL)$$, '22023', NULL,
                 'block_identifier: a NULL pattern is 22023');
SELECT throws_ok($$SELECT cdp.block_identifier('Email', 'x')$$, '22023', NULL,
                 'block_identifier: an upper-case type is 22023');
SELECT throws_ok($$SELECT cdp.block_identifier('e-mail', 'x')$$, '22023', NULL,
                 'block_identifier: a type with a hyphen is 22023');
SELECT set_eq($$SELECT * FROM cdp.identity_rules$$, $$SELECT * FROM rules_before$$,
              'refused set_identity_rule calls change no rule');
SELECT set_eq($$SELECT * FROM cdp.blocked_identifiers$$, $$SELECT * FROM blocks_before$$,
              'refused block_identifier calls add no block');

--
-- rebuild_identities
--
SELECT ok(pg_temp.dry() ?& ARRAY['changed', 'dry_run', 'profiles', 'identifiers', 'evidence_rows', 'graph_bytes', 'elapsed_ms'],
          'rebuild_identities reports changed, dry_run, profiles, identifiers, evidence_rows, graph_bytes, elapsed_ms');
SELECT results_eq(
    $$SELECT (r->>'changed')::int, (r->>'dry_run')::bool, (r->>'identifiers')::int, (r->>'evidence_rows')::int,
             (r->>'profiles')::int FROM pg_temp.dry() r$$,
    $$SELECT 0, true, (SELECT count(*)::int FROM cdp.identities), (SELECT count(*)::int FROM cdp.identity_evidence),
             (SELECT count(DISTINCT profile_id)::int FROM cdp.identities)$$,
    'a dry run on an unchanged graph: 0 changed, and counts that match the tables');

DO $$ BEGIN
    PERFORM pg_temp.send('rb-1', '{"type": "identify", "userId": "rb-user", "traits": {"email": "rb1@x.io"}}', '2026-04-05 10:00+00');
    PERFORM pg_temp.send('rb-2', '{"type": "identify", "userId": "rb-user", "traits": {"email": "rb2@x.io"}}', '2026-04-05 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.save('rb', pg_temp.pid('user_id:rb-user'));
    PERFORM pg_temp.rule('email', 1);
END $$;
CREATE TEMP TABLE graph_before AS SELECT pg_temp.graph() AS g;
SELECT cmp_ok((pg_temp.dry()->>'changed')::int, '>', 0,
              'after lowering the email limit to 1 a dry run reports changes');
SELECT is(pg_temp.graph(), (SELECT g FROM graph_before), '... and changes nothing');
SELECT is(pg_temp.pid('email:rb2@x.io'), pg_temp.saved('rb'), '... the second email is still linked');
SELECT results_eq(
    $$SELECT (r->>'changed')::int, (r->>'dry_run')::bool FROM cdp.rebuild_identities() r$$,
    $$VALUES (1, false)$$,
    'rebuild_identities() applies the new rule: one identifier changes');
SELECT is(pg_temp.pid('email:rb2@x.io'), NULL, 'after the rebuild the second email is no longer linked');
SELECT is(pg_temp.pid('email:rb1@x.io'), pg_temp.saved('rb'), '... the first one still is');
SELECT is((pg_temp.dry()->>'changed')::int, 0, 'a dry run after the rebuild reports 0');
DO $$ BEGIN PERFORM pg_temp.rule('email', 5); END $$;
SELECT is((cdp.rebuild_identities()->>'changed')::int, 1,
          'restoring the limit and rebuilding links the email again');
SELECT is(pg_temp.pid('email:rb2@x.io'), pg_temp.saved('rb'), '... to its profile');
SELECT results_eq(
    $$SELECT linked_at, message_id FROM cdp.identities WHERE identifier = 'email:rb2@x.io'$$,
    $$VALUES ('2026-04-05 10:01+00'::timestamptz, 'rb-2')$$,
    '... with the time and message of the event that linked it (as online resolution records them)');
SELECT is((pg_temp.dry()->>'changed')::int, 0, '... and a dry run then reports 0');

-- a tighter limit that undoes a merge
DO $$ BEGIN
    PERFORM pg_temp.send('um-1', '{"userId": "um-user", "context": {"traits": {"phone": "+49 1"}}}', '2026-04-06 10:00+00');
    PERFORM pg_temp.send('um-2', '{"anonymousId": "um-anon", "context": {"traits": {"phone": "+49 2"}}}', '2026-04-06 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('um-3', '{"userId": "um-user", "anonymousId": "um-anon"}', '2026-04-06 10:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('anonymous_id:um-anon'), pg_temp.pid('user_id:um-user'), 'un-merge setup: two profiles merged');
-- what cdp.profiles says of the two profiles, and what their events say
CREATE FUNCTION pg_temp.um_counts() RETURNS TABLE (p bigint, n bigint, lo timestamptz, hi timestamptz)
LANGUAGE sql AS $$
    SELECT profile_id, event_count, first_seen, last_seen FROM cdp.profiles
     WHERE profile_id IN (pg_temp.pid('anonymous_id:um-anon'), pg_temp.pid('user_id:um-user')) ORDER BY 1
$$;
CREATE FUNCTION pg_temp.um_events() RETURNS TABLE (p bigint, n bigint, lo timestamptz, hi timestamptz)
LANGUAGE sql AS $$
    SELECT profile_id, count(*), min(ts), max(ts) FROM cdp.events_resolved
     WHERE profile_id IN (pg_temp.pid('anonymous_id:um-anon'), pg_temp.pid('user_id:um-user'))
     GROUP BY 1 ORDER BY 1
$$;
DO $$ BEGIN PERFORM pg_temp.rule('phone', 1); END $$;
SELECT cmp_ok((pg_temp.dry()->>'changed')::int, '>', 0,
              'a dry run reports the changes of a rule that would undo a merge');
SELECT lives_ok($$SELECT cdp.rebuild_identities()$$, 'rebuild_identities() under a rule that undoes a merge runs');
SELECT isnt(pg_temp.pid('anonymous_id:um-anon'), pg_temp.pid('user_id:um-user'),
            '... and takes the merge apart');
SELECT results_eq(
    $$SELECT * FROM pg_temp.um_counts()$$, $$SELECT * FROM pg_temp.um_events()$$,
    '... and counts the events of each profile exactly again (they follow the profile out)');
SELECT is((pg_temp.dry()->>'changed')::int, 0, '... after which a dry run reports 0');
DO $$ BEGIN PERFORM pg_temp.rule('phone', 5); END $$;
SELECT lives_ok($$SELECT cdp.rebuild_identities()$$, 'restoring the phone limit and rebuilding runs');
SELECT is(pg_temp.pid('anonymous_id:um-anon'), pg_temp.pid('user_id:um-user'), '... and merges them again');
SELECT results_eq(
    $$SELECT * FROM pg_temp.um_counts()$$, $$SELECT * FROM pg_temp.um_events()$$,
    '... with exact counts again');

-- a looser limit links what the tighter one kept out (the evidence is kept)
DO $$ BEGIN
    PERFORM pg_temp.rule('email', 1);
    PERFORM pg_temp.send('rl-1', '{"type": "identify", "userId": "rl-user", "traits": {"email": "rl1@x.io"}}', '2026-04-07 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('rl-2', '{"type": "identify", "userId": "rl-user", "traits": {"email": "rl2@x.io"}}', '2026-04-07 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.rule('email', 5);
END $$;
SELECT is(pg_temp.pid('email:rl2@x.io'), NULL, 'relaxed-limit setup: the limit kept the second email out');
SELECT cmp_ok((pg_temp.dry()->>'changed')::int, '>', 0,
              'after raising the limit a dry run reports the email the old limit kept out');
SELECT lives_ok($$SELECT cdp.rebuild_identities()$$, 'rebuild_identities() after raising the limit runs');
SELECT is(pg_temp.pid('email:rl2@x.io'), pg_temp.pid('user_id:rl-user'),
          '... and links the email the message carried');

-- a looser limit that joins two profiles
DO $$ BEGIN
    PERFORM pg_temp.send('rj-1', '{"type": "identify", "userId": "rj-a", "traits": {"email": "rj@x.io"}}', '2026-04-07 11:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('rj-2', '{"type": "identify", "userId": "rj-b", "traits": {"email": "rj@x.io"}}', '2026-04-07 09:00+00');
    PERFORM pg_temp.send('rj-3', '{"userId": "rj-b"}', '2026-04-07 12:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.rule('user_id', 2);
END $$;
SELECT isnt(pg_temp.pid('user_id:rj-b'), pg_temp.pid('user_id:rj-a'), 'join setup: the user_id limit kept two users apart');
SELECT cmp_ok((cdp.rebuild_identities()->>'changed')::int, '>', 0, 'with two user ids allowed a rebuild changes the graph');
SELECT is(pg_temp.pid('user_id:rj-b'), pg_temp.pid('user_id:rj-a'), '... and joins the two users through their email');
SELECT isnt_empty($$SELECT * FROM cdp.explain_link('user_id:rj-b', 'user_id:rj-a')$$,
                  'explain_link explains a link a rebuild made (they are no longer apart)');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen FROM cdp.profiles WHERE profile_id = pg_temp.pid('user_id:rj-a')$$,
    $$SELECT count(*), min(ts), max(ts) FROM cdp.events_resolved WHERE profile_id = pg_temp.pid('user_id:rj-a')$$,
    'after a rebuild joins profiles, cdp.profiles counts their events exactly');
DO $$ BEGIN
    PERFORM pg_temp.rule('user_id', 1);
    PERFORM cdp.rebuild_identities();
END $$;

-- a split whose keep_out an earlier limit had kept out of another profile
DO $$ BEGIN
    PERFORM pg_temp.send('sb-1', '{"userId": "sb-u1", "context": {"device": {"id": "sb-dev"}}}', '2026-04-08 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sb-2', '{"userId": "sb-u2", "context": {"device": {"id": "sb-dev"}}}', '2026-04-08 10:01+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((pg_temp.dry()->>'changed')::int, 0, 'split-rebuild setup: rebuild agrees before the split');
SELECT is((SELECT count(*)::int FROM cdp.split_profile(pg_temp.pid('user_id:sb-u1'), 'device_id:sb-dev')), 2,
          'the device is split out of the first user''s profile');
-- documented: a rebuild replays the evidence as if the split had always been
-- there, so the device now links to the user a limit once kept it from
SELECT is((pg_temp.dry()->>'changed')::int, 1,
          'a rebuild after that split would link the device to the other user (replayed as if split from the start)');
SELECT is((cdp.rebuild_identities()->>'changed')::int, 1, '... rebuild_identities() applies that');
SELECT is(pg_temp.pid('device_id:sb-dev'), pg_temp.pid('user_id:sb-u2'), '... the device is with sb-u2 now');
SELECT is((pg_temp.dry()->>'changed')::int, 0, '... and a rebuild after it changes nothing');

SELECT * FROM finish();
ROLLBACK;
