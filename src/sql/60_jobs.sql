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
    FOR j IN SELECT * FROM cdp.job_definitions() LOOP
        RETURN NEXT cron.schedule(j.job_name, j.schedule, j.command);
    END LOOP;
END
$$;
COMMENT ON FUNCTION cdp.schedule_jobs() IS
    'register (or update) the pg_cron jobs that keep pg_cdp running; returns their job ids';

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
