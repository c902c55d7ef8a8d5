-- In a database cdp.database_name does not name, no background worker does
-- pg_cdp's work: workers_running and maintenance_running say so, and
-- needed_jobs (what schedule_jobs registers) keeps both pg_cron jobs.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

SELECT isnt(current_setting('cdp.database_name'), current_database()::text,
            'the workers serve another database');
SELECT is(cdp.workers_running(), false, 'workers_running is false here');
SELECT is(cdp.maintenance_running(), false, 'maintenance_running is false here');
SELECT is((SELECT string_agg(job_name, ',' ORDER BY job_name) FROM cdp.needed_jobs()),
          'cdp-maintenance,cdp-process-inbox', 'both pg_cron jobs are needed here');

SELECT * FROM finish();
ROLLBACK;
