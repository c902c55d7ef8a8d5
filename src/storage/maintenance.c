/*
 * maintenance.c
 *	  cdp.run_maintenance(): purge the dedup window, apply retention, create
 *	  partitions ahead.  Safe beside ingest and beside itself:
 *	  - runs are serialised by an advisory lock, so two never race on DDL;
 *	  - retention never queues for the ACCESS EXCLUSIVE lock a drop or detach
 *	    needs on cdp.events (a queued request would make every later reader
 *	    and writer wait behind it): it only tries the lock, again and again
 *	    for at most cdp.retention_lock_wait, and leaves what it could not lock
 *	    for the next run, reported as retention_pending;
 *	  - premaking takes the same partition-DDL lock as on-demand creation.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "partitions.h"

/* how often a busy lock is tried again */
#define RETENTION_RETRY_MS	10

/*
 * Take ACCESS EXCLUSIVE on cdp.events and on the partition without ever
 * waiting in the lock queue: try both, and if either is busy let go of what
 * was taken, sleep a little and try again until the deadline.
 */
static bool
LockForRetention(Oid parent, Oid partition, TimestampTz deadline)
{
	for (;;)
	{
		if (ConditionalLockRelationOid(parent, AccessExclusiveLock))
		{
			if (ConditionalLockRelationOid(partition, AccessExclusiveLock))
				return true;
			UnlockRelationOid(parent, AccessExclusiveLock);
		}
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 RETENTION_RETRY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Drop or detach every partition wholly before the horizon, oldest first;
 * returns how many, and in *pending how many are left because cdp.events
 * stayed busy.
 */
static int
ApplyRetention(const CdpPartitionConfig *config, TimestampTz now, int *pending)
{
	bool		detach = strcmp(config->retention_mode, "detach") == 0;
	Oid			parent;
	TimestampTz deadline;
	List	   *expired;
	ListCell   *lc;
	int			n = 0;

	*pending = 0;
	if (!config->has_retention)
		return 0;
	parent = CdpEventsRelid();
	deadline = GetCurrentTimestamp() + (int64) cdp_retention_lock_wait_ms * 1000;
	expired = CdpPartitionsEndingBefore(CdpRetentionHorizon(config, now), false);
	foreach(lc, expired)
	{
		Oid			relid = lfirst_oid(lc);
		char	   *name;
		char	   *sql;
		MemoryContext cxt = CurrentMemoryContext;

		if (!LockForRetention(parent, relid, deadline))
		{
			*pending = list_length(expired) - foreach_current_index(lc);
			break;
		}
		/*
		 * From now on this transaction holds cdp.events until it ends, and
		 * everyone waits for it: try the other partitions once, never wait.
		 */
		deadline = 0;
		name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
										  get_rel_name(relid));
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

/*
 * Past nine tenths of cdp.max_partitions, say so in the job's log: beyond
 * it, backfills are dead-lettered partition_limit, which nobody may be
 * watching.
 */
static void
WarnNearPartitionLimit(void)
{
	int			n = CdpPartitionCount();

	if (n >= cdp_max_partitions - cdp_max_partitions / 10)
		ereport(WARNING,
				(errmsg("cdp.events is close to cdp.max_partitions"),
				 errdetail("It has %d partitions; ingest creates none beyond %d and dead-letters "
						   "what would need one as partition_limit.", n, cdp_max_partitions),
				 errhint("Set a retention with cdp.configure_partitions(), or raise "
						 "cdp.max_partitions (and max_locks_per_transaction).")));
}

/*
 * The maintenance worker's first step of a pass: purge the dedup window and
 * premake, under run_maintenance's advisory lock (false, doing nothing, while
 * a run holds it), leaving retention to DETACH ... CONCURRENTLY, which only
 * a top-level statement can run.  Needs an SPI connection.
 */
bool
CdpUpkeepWithoutRetention(CdpPartitionConfig *config, int64 *purged, int *created)
{
	if (!DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4,
										  Int32GetDatum(CDP_LOCK_CLASS),
										  Int32GetDatum(CDP_LOCK_MAINTENANCE))))
		return false;
	CdpLoadPartitionConfig(config);
	*purged = CdpPurgeDedupWindow();
	*created = CdpPremake(config, GetCurrentTransactionStartTimestamp());
	WarnNearPartitionLimit();
	return true;
}

PG_FUNCTION_INFO_V1(cdp_run_maintenance);

/*
 * cdp.run_maintenance(): one pass of upkeep, reported as jsonb.  Retention
 * runs before premaking, while this run holds nothing ingest could need; run
 * it in a transaction of its own, since a drop's lock lasts until commit.
 */
Datum
cdp_run_maintenance(PG_FUNCTION_ARGS)
{
	CdpPartitionConfig config;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		purged;
	int			removed;
	int			pending;
	int			created;
	char	   *report;

	SPI_connect();
	DirectFunctionCall2(pg_advisory_xact_lock_int4,
						Int32GetDatum(CDP_LOCK_CLASS), Int32GetDatum(CDP_LOCK_MAINTENANCE));
	CdpLoadPartitionConfig(&config);
	purged = CdpPurgeDedupWindow();
	removed = ApplyRetention(&config, now, &pending);
	created = CdpPremake(&config, now);
	WarnNearPartitionLimit();
	SPI_finish();
	/* built after SPI_finish, which frees everything allocated since connect */
	report = psprintf("{\"partitions_created\": %d, \"partitions_%s\": %d, "
					  "\"retention_pending\": %d, \"dedup_purged\": " INT64_FORMAT "}",
					  created,
					  strcmp(config.retention_mode, "detach") == 0 ? "detached" : "dropped",
					  removed, pending, purged);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(report)));
}
