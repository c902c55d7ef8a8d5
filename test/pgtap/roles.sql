-- Roles (README "Roles"): an analyst reads the generated views, also those
-- made later, and nothing else in cdp (PostgreSQL's own 42501); an operator
-- runs maintenance, schedules the jobs and reads cdp.partitions.  Every test
-- runs as the unprivileged role itself (SET ROLE).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(50);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE SCHEMA bi;
-- pgTAP lives in public: the roles may call its functions
GRANT USAGE ON SCHEMA public TO PUBLIC;

CREATE ROLE regress_analyst;
CREATE ROLE regress_other;
CREATE ROLE regress_operator;

SELECT pg_temp.send('m1', '{"type": "identify", "userId": "a"}');
SELECT pg_temp.send('m2', '{"type": "identify", "userId": "b"}');
SELECT pg_temp.run();
UPDATE cdp.profile_records SET traits = '{"email": "a@x.io", "age": 41}', consent = '{"marketing": {"granted": true}}'
 WHERE profile_id = pg_temp.pid('user_id:a');
UPDATE cdp.profile_records SET traits = '{"email": "b@x.io", "age": "n/a"}' WHERE profile_id = pg_temp.pid('user_id:b');
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('age', 'int');
SELECT cdp.create_profile_view('bi.people', 'analytics');

SELECT lives_ok($$SELECT cdp.grant_analyst('regress_analyst')$$, 'grant_analyst');
SELECT is((SELECT count(*)::int FROM cdp.analyst_roles), 1, 'the analyst is registered');
SELECT throws_ok($$SELECT cdp.grant_analyst('regress_nobody')$$, '42704', 'role "regress_nobody" does not exist',
                 'grant_analyst of an unknown role is refused');

-- the analyst reads its views ...
SET LOCAL ROLE regress_analyst;
SELECT results_eq($$SELECT email, age FROM bi.people ORDER BY profile_id$$,
                  $$VALUES ('a@x.io'::text, 41), (NULL, NULL)$$,
                  'an analyst reads a generated view, its conversions included');
RESET ROLE;
SELECT cdp.create_profile_view('bi.marketing', 'marketing', ARRAY['email']);
SELECT cdp.create_event_view('bi.events', 'analytics');
SET LOCAL ROLE regress_analyst;
SELECT is((SELECT count(*)::int FROM bi.marketing), 1, 'an analyst reads a profile view made after the grant');
SELECT is((SELECT count(*)::int FROM bi.events), 2, 'an analyst reads an event view made after the grant');
RESET ROLE;
SELECT cdp.define_trait('age', 'numeric');
SET LOCAL ROLE regress_analyst;
SELECT is((SELECT count(*)::int FROM bi.people), 2, 'a view made again when a trait changed is still granted');

-- ... and nothing else: PostgreSQL's own 42501
SELECT throws_ok(format('SELECT 1 FROM %s LIMIT 1', t), '42501', NULL, 'an analyst cannot read ' || t)
  FROM unnest(ARRAY['cdp.profile_records', 'cdp.profiles', 'cdp.events', 'cdp.events_resolved', 'cdp.inbox',
                    'cdp.dead_letters', 'cdp.identities', 'cdp.identity_evidence', 'cdp.identifier_traits',
                    'cdp.consent_log', 'cdp.identifier_consent', 'cdp.purposes', 'cdp.trait_definitions',
                    'cdp.generated_views', 'cdp.partitions', 'cdp.sources']) t;
SELECT throws_ok(format('SELECT %s', f), '42501', NULL, 'an analyst cannot call ' || f)
  FROM unnest(ARRAY['cdp.run_maintenance()', $$cdp.define_trait('x', 'text')$$,
                    $$cdp.create_profile_view('bi.mine', 'analytics')$$, $$cdp.grant_analyst('regress_other')$$,
                    'cdp.refresh_generated_views()', $$cdp.ingest('{}')$$, $$cdp.resolve('user_id:a')$$,
                    'cdp.process_inbox()']) f;
SELECT ok(NOT has_table_privilege('bi.people', 'INSERT, UPDATE, DELETE, TRUNCATE'), 'an analyst cannot write to a view');
RESET ROLE;

-- a reader's own condition never sees the rows of people outside the view:
-- a cheap function that records what it is shown runs after the consent check
CREATE FUNCTION public.regress_peek(v bigint) RETURNS bool LANGUAGE plpgsql STABLE COST 0.0001 AS $$
BEGIN
    PERFORM set_config('regress.seen', current_setting('regress.seen', true) || ',' || v, false);
    RETURN true;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_peek(bigint) TO regress_analyst;
SET LOCAL ROLE regress_analyst;
SELECT set_config('regress.seen', '', false);
SELECT is((SELECT count(*)::int FROM bi.marketing WHERE regress_peek(profile_id)), 1, 'a reader''s condition on a view ...');
RESET ROLE;
SELECT is(current_setting('regress.seen'), ',' || pg_temp.pid('user_id:a'),
          '... is shown only the rows of people who granted the purpose');
RESET ROLE;

-- another role gets nothing from grant_analyst
SET LOCAL ROLE regress_other;
SELECT throws_ok($$SELECT 1 FROM bi.people$$, '42501', NULL, 'a role that is no analyst cannot read the views');
RESET ROLE;

-- revoke_analyst takes it back
SELECT lives_ok($$SELECT cdp.revoke_analyst('regress_analyst')$$, 'revoke_analyst');
SET LOCAL ROLE regress_analyst;
SELECT throws_ok($$SELECT 1 FROM bi.people$$, '42501', NULL, 'after revoke_analyst the views are refused');
RESET ROLE;
SELECT cdp.create_profile_view('bi.after', 'analytics');
SET LOCAL ROLE regress_analyst;
SELECT throws_ok($$SELECT 1 FROM bi.after$$, '42501', NULL, '... also views made later');
RESET ROLE;

-- the operator
SELECT lives_ok($$SELECT cdp.grant_operator('regress_operator')$$, 'grant_operator');
SET LOCAL ROLE regress_operator;
SELECT lives_ok($$SELECT cdp.run_maintenance()$$, 'an operator runs maintenance');
SELECT cmp_ok((SELECT count(*)::int FROM cdp.partitions), '>', 0, 'an operator reads cdp.partitions');
SELECT lives_ok($$SELECT cdp.process_inbox()$$, 'an operator processes the inbox');
SELECT throws_ok($$SELECT cdp.schedule_jobs()$$, '42704', 'pg_cron is not installed in this database',
                 'without pg_cron, schedule_jobs says so (not 42501)');
SELECT throws_ok($$SELECT 1 FROM cdp.events$$, '42501', NULL, 'an operator cannot read events');
SELECT throws_ok($$SELECT 1 FROM cdp.inbox$$, '42501', NULL, 'an operator cannot read the inbox');
RESET ROLE;
CREATE EXTENSION pg_cron;
SELECT cdp.grant_operator('regress_operator');
SET LOCAL ROLE regress_operator;
SELECT is((SELECT count(*)::int FROM cdp.schedule_jobs()), 2, 'with pg_cron, an operator schedules the jobs');
RESET ROLE;
SELECT results_eq($$SELECT username::text COLLATE "default" FROM cron.job WHERE jobname LIKE 'cdp-%'$$,
                  $$VALUES ('regress_operator'), ('regress_operator')$$, '... which run as the operator');
SET LOCAL ROLE regress_operator;
SELECT is(cdp.unschedule_jobs(), 2::bigint, 'an operator unschedules them');
RESET ROLE;

-- views dropped with their schema leave the registry: granting goes on
DROP SCHEMA bi CASCADE;
SELECT is((SELECT count(*)::int FROM cdp.generated_views), 0, 'views dropped with their schema leave the registry');
SELECT lives_ok($$SELECT cdp.grant_analyst('regress_other')$$, 'grant_analyst after views were dropped');

SELECT * FROM finish();
ROLLBACK;
