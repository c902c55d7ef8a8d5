-- pg_cron jobs: a clear error without pg_cron; with it, schedule_jobs
-- registers the named jobs idempotently and unschedule_jobs removes them.
-- Needs pg_cron preloaded with cron.database_name set to this database.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(21);

-- the error and hint a call raises, as 'SQLSTATE: message | hint'
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    msg text;
    hint text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || msg || ' | ' || hint;
END
$$;

-- without pg_cron
SELECT is((SELECT count(*)::int FROM pg_extension WHERE extname = 'pg_cron'), 0,
          'pg_cron is not installed in this database yet');
SELECT throws_ok($$SELECT cdp.schedule_jobs()$$, '42704', 'pg_cron is not installed in this database',
                 'schedule_jobs without pg_cron raises 42704 with a clear message');
SELECT matches(pg_temp.error_of('SELECT cdp.schedule_jobs()'),
               'shared_preload_libraries.*cron\.database_name.*CREATE EXTENSION pg_cron',
               'the error hints how to install pg_cron');
SELECT throws_ok($$SELECT cdp.unschedule_jobs()$$, '42704', 'pg_cron is not installed in this database',
                 'unschedule_jobs without pg_cron raises 42704 too');

-- with pg_cron
CREATE EXTENSION pg_cron;
CREATE TEMP TABLE first_ids AS SELECT id FROM cdp.schedule_jobs() id;
SELECT is((SELECT count(*)::int FROM first_ids), 2, 'schedule_jobs returns two job ids');
SELECT set_eq($$SELECT jobid FROM cron.job WHERE jobname LIKE 'cdp-%'$$, $$SELECT id FROM first_ids$$,
              'the ids are those of the jobs in cron.job');
SELECT results_eq(
    $$SELECT jobname::text COLLATE "default", command, database = current_database(), username = current_user, active
        FROM cron.job ORDER BY jobname$$,
    $$VALUES ('cdp-maintenance', 'SELECT cdp.run_maintenance()', true, true, true),
             ('cdp-process-inbox', 'CALL cdp.drain_inbox()', true, true, true)$$,
    'cron.job has cdp-maintenance and cdp-process-inbox, active, for this database and user');
SELECT is((SELECT schedule::text FROM cron.job WHERE jobname = 'cdp-maintenance'), '7 * * * *',
          'maintenance runs hourly');
SELECT is((SELECT schedule::text FROM cron.job WHERE jobname = 'cdp-process-inbox'), '* * * * *',
          'the inbox is drained every minute');

-- idempotent
UPDATE cron.job SET schedule = '0 0 1 1 *' WHERE jobname = 'cdp-maintenance';
CREATE TEMP TABLE second_ids AS SELECT id FROM cdp.schedule_jobs() id;
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobname LIKE 'cdp-%'), 2,
          'calling schedule_jobs again keeps two jobs');
SELECT set_eq($$SELECT id FROM second_ids$$, $$SELECT id FROM first_ids$$,
              'calling schedule_jobs again returns the same job ids');
SELECT is((SELECT schedule::text FROM cron.job WHERE jobname = 'cdp-maintenance'), '7 * * * *',
          'calling schedule_jobs again puts back a schedule changed by hand');

-- unschedule
DO $$ BEGIN PERFORM cron.schedule('someone-elses-job', '0 3 * * *', 'SELECT 1'); END $$;
SELECT is(cdp.unschedule_jobs(), 2::bigint, 'unschedule_jobs returns how many it removed');
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobname LIKE 'cdp-%'), 0, 'the cdp jobs are gone');
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobname = 'someone-elses-job'), 1,
          'other jobs are left alone');
SELECT is(cdp.unschedule_jobs(), 0::bigint, 'unschedule_jobs with nothing scheduled returns 0');
SELECT is((SELECT count(*)::int FROM cdp.schedule_jobs()), 2, 'jobs can be scheduled again after unscheduling');
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobname LIKE 'cdp-%'), 2, '... and there are two again');

-- what the jobs run does the work: the maintenance command makes a missing
-- partition ahead; the drain command calls a procedure the job's user may
-- run (a CALL that commits cannot run here: 50_drain_inbox tests it)
DO $$ BEGIN
    PERFORM cdp.run_maintenance();
    EXECUTE format('DROP TABLE %s', (SELECT partition FROM cdp.partitions ORDER BY range_from DESC LIMIT 1));
END $$;
CREATE TEMP TABLE job_report (r jsonb);
DO $$ BEGIN
    EXECUTE 'INSERT INTO job_report ' || (SELECT command FROM cron.job WHERE jobname = 'cdp-maintenance');
END $$;
SELECT is((SELECT r -> 'partitions_created' FROM job_report), '1'::jsonb,
          'the maintenance job''s command makes the missing partition ahead');
SELECT is((SELECT p.prokind::text FROM pg_proc p WHERE p.oid = 'cdp.drain_inbox(interval,int,bigint)'::regprocedure),
          'p', 'the drain job calls cdp.drain_inbox, a procedure (so it can commit chunk by chunk)');
SELECT ok((SELECT has_function_privilege(username, 'cdp.drain_inbox(interval,int,bigint)', 'EXECUTE')
             AND has_function_privilege(username, 'cdp.process_inbox(int)', 'EXECUTE')
             FROM cron.job WHERE jobname = 'cdp-process-inbox'),
          'the drain job''s user may run it');

SELECT * FROM finish();
ROLLBACK;
