-- Scheduled upkeep through pg_cron.  Jobs are named, so scheduling again
-- updates them in place instead of adding duplicates.

CREATE FUNCTION cdp.job_definitions(OUT job_name text, OUT schedule text, OUT command text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, cdp
AS $$
    VALUES ('cdp-maintenance', '7 * * * *', 'SELECT cdp.run_maintenance()'),
           -- drains the inbox when no background worker does (harmless beside one:
           -- workers and this job skip each other's locked rows), committing
           -- chunk by chunk so a statement_timeout never loses what it did
           ('cdp-process-inbox', '* * * * *', 'CALL cdp.drain_inbox()')
$$;

-- With pg_cdp preloaded, background workers do in cdp.database_name what
-- the jobs do: these say whether they serve this database.
CREATE FUNCTION cdp.workers_running()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cdp_workers_running'
LANGUAGE C STABLE;
COMMENT ON FUNCTION cdp.workers_running() IS
    'whether background ingest workers drain this database''s inbox (pg_cdp preloaded, '
    'cdp.database_name names it, cdp.ingest_workers > 0)';

CREATE FUNCTION cdp.maintenance_running()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cdp_maintenance_running'
LANGUAGE C STABLE;
COMMENT ON FUNCTION cdp.maintenance_running() IS
    'whether the maintenance worker runs this database''s upkeep (pg_cdp preloaded, '
    'cdp.database_name names it, cdp.maintenance_interval > 0)';

-- the jobs the background workers do not make needless here
CREATE FUNCTION cdp.needed_jobs(OUT job_name text, OUT schedule text, OUT command text)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, cdp
AS $$
    SELECT j.job_name, j.schedule, j.command
      FROM cdp.job_definitions() j
     WHERE NOT (j.job_name = 'cdp-process-inbox' AND cdp.workers_running())
       AND NOT (j.job_name = 'cdp-maintenance' AND cdp.maintenance_running())
$$;

CREATE FUNCTION cdp.require_pg_cron()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, '
                         'run CREATE EXTENSION pg_cron, or schedule cdp.run_maintenance() another way.';
    END IF;
END
$$;

CREATE FUNCTION cdp.schedule_jobs()
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    j record;
BEGIN
    PERFORM cdp.require_pg_cron();
    FOR j IN SELECT * FROM cdp.needed_jobs() LOOP
        RETURN NEXT cron.schedule(j.job_name, j.schedule, j.command);
    END LOOP;
    -- a job scheduled before the workers ran would do their work again
    FOR j IN SELECT c.jobid FROM cron.job c
              WHERE c.jobname IN (SELECT job_name FROM cdp.job_definitions()
                                  EXCEPT SELECT job_name FROM cdp.needed_jobs())
                AND c.username = current_user LOOP
        PERFORM cron.unschedule(j.jobid);
    END LOOP;
END
$$;
COMMENT ON FUNCTION cdp.schedule_jobs() IS
    'register (or update) the pg_cron jobs that keep pg_cdp running, leaving out (and removing) '
    'those the background workers make needless; returns their job ids';

CREATE FUNCTION cdp.unschedule_jobs()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    removed bigint := 0;
    j record;
BEGIN
    PERFORM cdp.require_pg_cron();
    FOR j IN SELECT c.jobid FROM cron.job c
              WHERE c.jobname IN (SELECT job_name FROM cdp.job_definitions())
                AND c.username = current_user LOOP
        PERFORM cron.unschedule(j.jobid);
        removed := removed + 1;
    END LOOP;
    RETURN removed;
END
$$;
COMMENT ON FUNCTION cdp.unschedule_jobs() IS 'remove the pg_cron jobs schedule_jobs registered; returns how many';
