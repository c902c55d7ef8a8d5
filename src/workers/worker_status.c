/*
 * worker_status.c
 *	  Whether the background workers serve the current database, for SQL
 *	  that must not duplicate their work (cdp.schedule_jobs leaves out the
 *	  pg_cron jobs they make needless).
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"

#include "workers.h"

/* preloaded, and cdp.database_name names this database */
static bool
PoolServesThisDatabase(void)
{
	char	   *here;

	if (CdpPool == NULL || cdp_database_name == NULL)
		return false;
	here = get_database_name(MyDatabaseId);
	return here != NULL && strcmp(here, cdp_database_name) == 0;
}

PG_FUNCTION_INFO_V1(cdp_workers_running);

/*
 * cdp.workers_running(): ingest workers drain this database's inbox (by
 * configuration: they may be restarting or stepping aside this instant).
 */
Datum
cdp_workers_running(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PoolServesThisDatabase() && cdp_ingest_workers > 0);
}

PG_FUNCTION_INFO_V1(cdp_maintenance_running);

/* cdp.maintenance_running(): the maintenance worker keeps this database up */
Datum
cdp_maintenance_running(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PoolServesThisDatabase() && cdp_maintenance_interval_secs > 0);
}
