/*
 * worker_guard.c
 *	  Keeps the ingest workers out of the way of commands that need their
 *	  database without connections (DROP DATABASE, ALTER DATABASE RENAME or
 *	  SET TABLESPACE, CREATE DATABASE ... TEMPLATE) or pg_cdp's tables
 *	  without users (DROP EXTENSION pg_cdp, which locks them one by one and
 *	  would deadlock with a batch that locks them in its own order): the
 *	  pool stops before such a command and starts again when its
 *	  transaction ends, in whatever database cdp.database_name then names.
 *	  Also tells the launcher when pg_cdp is created or dropped, so workers
 *	  start without waiting for a poll.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

#include "workers.h"

/* how long a database command waits for the workers to leave */
#define LEAVE_WAIT_MS	10000

static ProcessUtility_hook_type prev_process_utility = NULL;

/* this backend stopped the pool until its transaction ends */
static bool paused_here = false;
static bool callback_registered = false;

static const char *
OptionString(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst(lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/* the database a statement needs without other connections, if any */
static const char *
DatabaseNeededAlone(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			return NULL;
		case T_CreatedbStmt:
			return OptionString(((CreatedbStmt *) stmt)->options, "template");
		case T_AlterDatabaseStmt:
			if (OptionString(((AlterDatabaseStmt *) stmt)->options, "tablespace") != NULL)
				return ((AlterDatabaseStmt *) stmt)->dbname;
			return NULL;
		default:
			return NULL;
	}
}

static bool
DropsPgCdp(Node *stmt)
{
	if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) stmt)->objects)
			if (strcmp(strVal(lfirst(lc)), "pg_cdp") == 0)
				return true;
	}
	return false;
}

static bool
NamesPgCdp(Node *stmt)
{
	if (IsA(stmt, CreateExtensionStmt))
		return strcmp(((CreateExtensionStmt *) stmt)->extname, "pg_cdp") == 0;
	return DropsPgCdp(stmt);
}

/* stop the pool for dboid and wait (bounded) until its workers are gone */
static void
PauseWorkers(Oid dboid)
{
	SpinLockAcquire(&CdpPool->mutex);
	CdpPool->paused_by = MyProcPid;
	CdpPool->paused_database = dboid;
	SpinLockRelease(&CdpPool->mutex);
	CdpWakeLauncher();
	/* if they do not leave in time, the command itself reports it */
	(void) CdpWaitForWorkersGone(LEAVE_WAIT_MS);
}

static void
ResumeWorkers(void)
{
	SpinLockAcquire(&CdpPool->mutex);
	if (CdpPool->paused_by == MyProcPid)
		CdpPool->paused_by = 0;
	SpinLockRelease(&CdpPool->mutex);
	CdpWakeLauncher();
}

static void
GuardXactCallback(XactEvent event, void *arg)
{
	if (paused_here && (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
						event == XACT_EVENT_PARALLEL_COMMIT ||
						event == XACT_EVENT_PARALLEL_ABORT))
	{
		paused_here = false;
		ResumeWorkers();
	}
}

static void
RunUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
		   ProcessUtilityContext context, ParamListInfo params,
		   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

static void
GuardProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	const char *dbname = DatabaseNeededAlone(stmt);
	Oid			pool_db;
	Oid			dboid;

	if (NamesPgCdp(stmt))
		CdpNoteExtensionChangeAtCommit();

	SpinLockAcquire(&CdpPool->mutex);
	pool_db = CdpPool->database;
	SpinLockRelease(&CdpPool->mutex);
	dboid = dbname != NULL ? get_database_oid(dbname, true) : InvalidOid;
	if (DropsPgCdp(stmt))
		dboid = MyDatabaseId;

	if (OidIsValid(dboid) && dboid == pool_db && !paused_here)
	{
		if (!callback_registered)
		{
			RegisterXactCallback(GuardXactCallback, NULL);
			callback_registered = true;
		}
		paused_here = true;
		PauseWorkers(dboid);
	}
	RunUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/* with the pool in shared memory (preloaded), in every backend */
void
CdpInstallWorkerGuard(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = GuardProcessUtility;
}
