/*
 * maintenance.c
 *	  cdp.run_maintenance(): purge the dedup window, apply retention, create
 *	  partitions ahead.  Safe beside ingest and beside itself:
 *	  - runs are serialised by an advisory lock, so two never race on DDL;
 *	  - retention comes before premaking, so the ACCESS EXCLUSIVE lock a drop
 *	    needs is requested while this run holds nothing an ingest session
 *	    could be waiting for;
 *	  - premaking takes the same partition-DDL lock as on-demand creation.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"

#include "pg_cdp.h"
#include "partitions.h"

/* drop or detach every partition wholly before the horizon; returns how many */
static int
ApplyRetention(const CdpPartitionConfig *config, TimestampTz now)
{
	bool		detach = strcmp(config->retention_mode, "detach") == 0;
	List	   *expired;
	ListCell   *lc;
	int			n = 0;

	if (!config->has_retention)
		return 0;
	expired = CdpPartitionsEndingBefore(CdpRetentionHorizon(config, now));
	foreach(lc, expired)
	{
		Oid			relid = lfirst_oid(lc);
		char	   *name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													  get_rel_name(relid));
		char	   *sql;
		MemoryContext cxt = CurrentMemoryContext;

		if (detach)
			sql = psprintf("ALTER TABLE cdp.events DETACH PARTITION %s", name);
		else
			sql = psprintf("DROP TABLE %s", name);
		if (SPI_execute(sql, false, 0) < 0)
			elog(ERROR, "retention failed: %s", sql);
		MemoryContextSwitchTo(cxt);
		n++;
	}
	return n;
}

PG_FUNCTION_INFO_V1(cdp_run_maintenance);

Datum
cdp_run_maintenance(PG_FUNCTION_ARGS)
{
	CdpPartitionConfig config;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		purged;
	int			removed;
	int			created;
	char	   *report;

	SPI_connect();
	DirectFunctionCall2(pg_advisory_xact_lock_int4,
						Int32GetDatum(CDP_LOCK_CLASS), Int32GetDatum(CDP_LOCK_MAINTENANCE));
	CdpLoadPartitionConfig(&config);
	purged = CdpPurgeDedupWindow();
	removed = ApplyRetention(&config, now);
	created = CdpPremake(&config, now);
	SPI_finish();
	/* built after SPI_finish, which frees everything allocated since connect */
	report = psprintf("{\"partitions_created\": %d, \"partitions_%s\": %d, "
					  "\"dedup_purged\": " INT64_FORMAT "}",
					  created,
					  strcmp(config.retention_mode, "detach") == 0 ? "detached" : "dropped",
					  removed, purged);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(report)));
}
