/*
 * maintenance_worker.c
 *	  The maintenance worker: with pg_cdp preloaded, the launcher keeps one
 *	  running in cdp.database_name beside the ingest workers, and it runs the
 *	  upkeep of cdp.run_maintenance() every cdp.maintenance_interval, so no
 *	  pg_cron job is needed.
 *
 *	  Retention uses what only a top-level statement can: ALTER TABLE
 *	  cdp.events DETACH PARTITION ... CONCURRENTLY.  It never takes ACCESS
 *	  EXCLUSIVE on cdp.events, so no reader or writer waits for it: the
 *	  partition drops out of new queries at once, and the detach itself waits
 *	  until the transactions that could still see it (a long report) end.
 *	  Then, with retention_mode 'drop', the detached table is dropped.
 *
 *	  A detach cut short (worker stopped, server crash) leaves the partition
 *	  "pending detach", which would make every later concurrent detach fail:
 *	  the next pass finishes it with DETACH ... FINALIZE.  A partition to be
 *	  dropped is marked by a comment before it is detached, so one detached
 *	  but not yet dropped when the worker stopped is dropped by the next
 *	  pass, while tables detached in retention_mode 'detach' or by hand stay.
 *
 *	  Citus refuses DETACH ... CONCURRENTLY on a distributed table: when it
 *	  distributes cdp.events, a pass that has partitions to retire applies
 *	  retention as cdp.run_maintenance() does (a plain drop or detach, after
 *	  waiting for the lock at most cdp.retention_lock_wait without queueing).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "workers.h"

/* the comment that marks a partition retention detaches to drop */
#define DROP_MARK	"pg_cdp retention: detached to be dropped"

/* how often windows of computed traits are looked at, and how many at a time */
#define EXPIRY_INTERVAL_MS	250
#define EXPIRY_BATCH		1000

/* what one pass has to do after its first transaction */
typedef struct RetentionPlan
{
	bool		drop;			/* retention_mode 'drop' */
	List	   *finalize;		/* qualified names of partitions pending detach */
	List	   *detach;			/* qualified names of expired partitions */
	bool		distributed;	/* Citus distributes cdp.events */
	int64		purged;
	int			created;
} RetentionPlan;

/* append to a list that outlives the transaction */
static void
AppendKept(List **list, char *name, MemoryContext keep)
{
	MemoryContext old = MemoryContextSwitchTo(keep);

	*list = lappend(*list, name);
	MemoryContextSwitchTo(old);
}

/* every row's first column of a query run through SPI, as a List of strings */
static List *
QueryList(const char *sql, int nargs, Oid *argtypes, Datum *args, MemoryContext keep)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, args, NULL, true, 0);
	List	   *result = NIL;

	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "maintenance query failed (%s): %s", SPI_result_code_string(rc), sql);
	for (uint64 i = 0; i < SPI_processed; i++)
		AppendKept(&result, MemoryContextStrdup(keep, SPI_getvalue(SPI_tuptable->vals[i],
																   SPI_tuptable->tupdesc, 1)),
				   keep);
	return result;
}

/* a statement through SPI, in the caller's transaction */
static void
ExecuteSql(const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute(sql, false, 0);

	MemoryContextSwitchTo(cxt);
	if (rc < 0)
		elog(ERROR, "maintenance statement failed (%s): %s", SPI_result_code_string(rc), sql);
}

/* cdp.events_p20261124, quoted as needed, kept beyond the transaction */
static char *
QualifiedName(Oid relid, MemoryContext keep)
{
	return MemoryContextStrdup(keep,
							   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
														  get_rel_name(relid)));
}

/*
 * The pass's first transaction, as pg_cdp's owner (the caller restores its
 * user): dedup purge and premaking, then what retention must detach or
 * finish detaching; expired partitions whose detach was cut short are marked
 * for dropping here, the others just before their own detach.  false when a
 * run_maintenance() holds the maintenance lock (the pass is skipped).
 */
static bool
PlanPass(RetentionPlan *plan, MemoryContext keep)
{
	CdpPartitionConfig config;
	List	   *owners;
	Oid			parent;
	Oid			argtype = OIDOID;
	Datum		arg;
	List	   *pending = NIL;
	List	   *due;
	ListCell   *lc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "cdp maintenance: dedup purge, premaking");
	CdpStandDownOnCitusWorker(&CdpPool->maintenance);

	owners = QueryList("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_cdp'",
					   0, NULL, NULL, CurrentMemoryContext);
	if (owners == NIL)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		CdpExitWorker(&CdpPool->maintenance, CDP_EXIT_NO_EXTENSION);
	}
	SetUserIdAndSecContext(atooid(linitial(owners)), SECURITY_LOCAL_USERID_CHANGE);

	memset(plan, 0, sizeof(*plan));
	if (!CdpUpkeepWithoutRetention(&config, &plan->purged, &plan->created))
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return false;
	}

	plan->drop = strcmp(config.retention_mode, "drop") == 0;
	parent = CdpEventsRelid();
	arg = ObjectIdGetDatum(parent);
	foreach(lc, QueryList("SELECT inhrelid::text FROM pg_catalog.pg_inherits "
						  "WHERE inhparent = $1 AND inhdetachpending",
						  1, &argtype, &arg, CurrentMemoryContext))
	{
		Oid			relid = atooid(lfirst(lc));

		pending = lappend_oid(pending, relid);
		AppendKept(&plan->finalize, QualifiedName(relid, keep), keep);
	}

	due = config.has_retention ?
		CdpPartitionsEndingBefore(CdpRetentionHorizon(&config,
													  GetCurrentTransactionStartTimestamp()),
								  true) : NIL;
	/* Citus's catalog is named only where Citus is installed */
	plan->distributed =
		QueryList("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus'",
				  0, NULL, NULL, CurrentMemoryContext) != NIL &&
		QueryList("SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1",
				  1, &argtype, &arg, CurrentMemoryContext) != NIL;
	foreach(lc, due)
	{
		Oid			relid = lfirst_oid(lc);
		char	   *name = QualifiedName(relid, keep);

		if (!list_member_oid(pending, relid))
			AppendKept(&plan->detach, name, keep);
		else if (plan->drop)
			ExecuteSql(psprintf("COMMENT ON TABLE %s IS '%s'", name, DROP_MARK));
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return true;
}

/*
 * Run one statement as a client's simple query runs: parsed, planned and
 * executed through a portal at top level, outside any transaction block, so
 * that commands that refuse to run in a function or a transaction block
 * (DETACH PARTITION ... CONCURRENTLY) run, committing as they need to.
 */
static void
RunTopLevel(const char *sql, MemoryContext keep)
{
	MemoryContext old;
	RawStmt    *raw;
	List	   *plans;
	Portal		portal;
	DestReceiver *dest;
	QueryCompletion qc;

	SetCurrentStatementStartTimestamp();
	debug_query_string = sql;
	pgstat_report_activity(STATE_RUNNING, sql);
	StartTransactionCommand();

	/* the plan must outlive the transactions the command commits */
	old = MemoryContextSwitchTo(keep);
	raw = linitial_node(RawStmt, pg_parse_query(sql));
	plans = pg_plan_queries(pg_analyze_and_rewrite_fixedparams(raw, sql, NULL, 0, NULL),
							sql, CURSOR_OPT_PARALLEL_OK, NULL);
	portal = CreatePortal("", true, true);
	portal->visible = false;
	PortalDefineQuery(portal, NULL, sql, CreateCommandTag(raw->stmt), plans, NULL);
	PortalStart(portal, NULL, 0, InvalidSnapshot);
	dest = CreateDestReceiver(DestNone);
	MemoryContextSwitchTo(old);

	(void) PortalRun(portal, FETCH_ALL, true, true, dest, dest, &qc);
	dest->rDestroy(dest);
	PortalDrop(portal, false);
	CommitTransactionCommand();
	debug_query_string = NULL;
}

/*
 * Drop the detached tables retention marked (in drop mode): those detached
 * now and any a stopped pass left.  A DROP waits only for users of that
 * table, which is no longer part of cdp.events.
 */
static int
DropMarked(MemoryContext keep)
{
	List	   *names;
	ListCell   *lc;
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(DROP_MARK);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "cdp maintenance: dropping detached partitions");
	names = QueryList("SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) "
					  "FROM pg_catalog.pg_class c "
					  "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					  "JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.objsubid = 0 "
					  " AND d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass "
					  "WHERE n.nspname = 'cdp' AND c.relkind = 'r' AND NOT c.relispartition "
					  "AND d.description = $1",
					  1, &argtype, &arg, keep);
	foreach(lc, names)
		ExecuteSql(psprintf("DROP TABLE %s", (char *) lfirst(lc)));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return list_length(names);
}

/* one pass of upkeep; the caller catches errors */
static void
RunPass(MemoryContext pass_cxt)
{
	RetentionPlan plan;
	ListCell   *lc;
	int			dropped = 0;

	if (!PlanPass(&plan, pass_cxt))
		return;
	foreach(lc, plan.finalize)
		RunTopLevel(psprintf("ALTER TABLE cdp.events DETACH PARTITION %s FINALIZE",
							 (char *) lfirst(lc)), pass_cxt);
	if (plan.distributed && plan.detach != NIL)
	{
		RunTopLevel("SELECT cdp.run_maintenance()", pass_cxt);
		plan.detach = NIL;
	}
	foreach(lc, plan.detach)
	{
		CHECK_FOR_INTERRUPTS();
		/* marked first: if the detach is cut short, the next pass still drops it */
		if (plan.drop)
			RunTopLevel(psprintf("COMMENT ON TABLE %s IS '%s'", (char *) lfirst(lc), DROP_MARK),
						pass_cxt);
		RunTopLevel(psprintf("ALTER TABLE cdp.events DETACH PARTITION %s CONCURRENTLY",
							 (char *) lfirst(lc)), pass_cxt);
	}
	if (plan.drop)
		dropped = DropMarked(pass_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);

	if (plan.created > 0 || plan.finalize != NIL || plan.detach != NIL || dropped > 0)
		ereport(LOG,
				(errmsg("pg_cdp maintenance: %d partitions created, %d detached, %d dropped, "
						INT64_FORMAT " messageIds purged",
						plan.created, list_length(plan.finalize) + list_length(plan.detach),
						dropped, plan.purged)));
}

/*
 * Run one query of upkeep in its own transaction, as pg_cdp's owner; the
 * first column of its first row, or NULL.  Errors are logged and left for
 * the next call.
 */
static char *
RunUpkeepQuery(const char *sql, const char *activity, MemoryContext cxt)
{
	Oid			save_user;
	int			save_sec;
	char	   *volatile result = NULL;

	GetUserIdAndSecContext(&save_user, &save_sec);
	PG_TRY();
	{
		List	   *owners;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		owners = QueryList("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_cdp'",
						   0, NULL, NULL, cxt);
		if (owners != NIL)
		{
			List	   *rows;

			SetUserIdAndSecContext(atooid(linitial(owners)), SECURITY_LOCAL_USERID_CHANGE);
			pgstat_report_activity(STATE_RUNNING, activity);
			/* QueryList keeps strings: a NULL comes back as no row */
			rows = QueryList(psprintf("SELECT r FROM (%s) AS s(r) WHERE r IS NOT NULL", sql),
							 0, NULL, NULL, cxt);
			if (rows != NIL)
				result = linitial(rows);
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		result = NULL;
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_user, save_sec);
	return result;
}

/*
 * Computed traits' upkeep between passes: windowed states whose oldest
 * event left the window are counted again, and a step of a background
 * backfill is taken.  Returns whether more is waiting.
 */
static bool
ComputedTraitUpkeep(MemoryContext cxt)
{
	char	   *expired = RunUpkeepQuery(psprintf("SELECT cdp.expire_computed_traits(%d)", EXPIRY_BATCH),
										 "cdp maintenance: computed trait windows", cxt);
	char	   *step = RunUpkeepQuery("SELECT cdp.backfill_step()",
									  "cdp maintenance: computed trait backfill", cxt);
	bool		more = (expired != NULL && atoi(expired) >= EXPIRY_BATCH) || step != NULL;

	if (step != NULL)
		ereport(strstr(step, ": live") != NULL ? LOG : DEBUG1,
				(errmsg("pg_cdp computed trait %s", step)));
	MemoryContextReset(cxt);
	return more;
}

/*
 * Sleep until the next pass is due or a reload changes the interval; every
 * EXPIRY_INTERVAL_MS meanwhile, windows of computed traits are brought up to
 * date, so a profile leaves a window within a second of it passing.
 */
static void
WaitForNextPass(TimestampTz last_pass, MemoryContext cxt)
{
	for (;;)
	{
		TimestampTz due;
		long		secs;
		int			usecs;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* at 0 the launcher stops this worker: wait for it */
		due = TimestampTzPlusMilliseconds(last_pass, cdp_maintenance_interval_secs > 0 ?
										  cdp_maintenance_interval_secs * 1000L : 60000L);
		TimestampDifference(GetCurrentTimestamp(), due, &secs, &usecs);
		if (secs == 0 && usecs == 0)
			return;
		if (!ComputedTraitUpkeep(cxt))
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(secs * 1000 + usecs / 1000 + 1, EXPIRY_INTERVAL_MS),
							 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

void
cdp_maintenance_worker_main(Datum arg)
{
	Oid			dboid;
	MemoryContext pass_cxt;
	Oid			save_user;
	int			save_sec;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	CdpClaimWorkerSlot(&CdpPool->maintenance);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(MyBgworkerEntry->bgw_name);
	/* as cdp.run_maintenance runs, SECURITY DEFINER with a pinned search_path */
	SetConfigOption("search_path", "pg_catalog, cdp", PGC_SUSET, PGC_S_SESSION);
	GetUserIdAndSecContext(&save_user, &save_sec);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "cdp maintenance pass",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		TimestampTz started = GetCurrentTimestamp();

		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		PG_TRY();
		{
			RunPass(pass_cxt);
		}
		PG_CATCH();
		{
			/* logged and left for the next pass, as a failed pg_cron job would be */
			MemoryContextSwitchTo(pass_cxt);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			debug_query_string = NULL;
			pgstat_report_activity(STATE_IDLE, NULL);
		}
		PG_END_TRY();
		SetUserIdAndSecContext(save_user, save_sec);
		MemoryContextSwitchTo(TopMemoryContext);
		WaitForNextPass(started, pass_cxt);
	}
}
