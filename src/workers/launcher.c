/*
 * launcher.c
 *	  The pool's launcher: a background worker connected to no database that
 *	  keeps cdp.ingest_workers ingest workers, one maintenance worker
 *	  (unless cdp.maintenance_interval is 0) and the HTTP endpoint's worker
 *	  (when cdp.http_port is set) running in cdp.database_name
 *	  while pg_cdp is installed there, restarts one that dies, and stops them
 *	  for a command that needs the database to itself (DROP DATABASE ...).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "workers.h"

/* how soon a worker that died is started again */
#define RESTART_DELAY_MS	1000

/* how long the launcher trusts "pg_cdp is not installed" without news of CREATE EXTENSION */
#define NO_EXTENSION_RECHECK_MS	60000

/* how long it trusts "this node is a Citus worker" (a node can be removed from a cluster) */
#define CITUS_WORKER_RECHECK_MS	600000

/* what the launcher keeps about each worker it started */
typedef struct LaunchedWorker
{
	BackgroundWorkerHandle *handle; /* NULL: none running in this slot */
	TimestampTz not_before;		/* earliest next start */
} LaunchedWorker;

static LaunchedWorker launched[CDP_MAX_INGEST_WORKERS];
static LaunchedWorker maintenance;
static LaunchedWorker http;
/* the pool is paused since then, for pause_ms, when a worker found nothing to serve */
static TimestampTz paused_since = 0;
static long pause_ms = 0;
static uint64 extension_changes_seen = 0;
static bool start_failure_logged = false;

/* called from _PG_init while preloading: the launcher starts with the server */
void
CdpStartLauncher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_cdp");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cdp_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_cdp launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_cdp launcher");
	RegisterBackgroundWorker(&worker);
}

static void
LauncherExit(int code, Datum arg)
{
	SpinLockAcquire(&CdpPool->mutex);
	CdpPool->launcher_pid = 0;
	CdpPool->launcher_latch = NULL;
	SpinLockRelease(&CdpPool->mutex);
}

/*
 * The oid of cdp.database_name, or InvalidOid when there is none.  A heap
 * scan of pg_database: connected to no database, the launcher cannot open
 * its name index when the relation cache has to be built afresh (after a
 * crash).
 */
static Oid
LookupDatabase(void)
{
	Oid			dboid = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), cdp_database_name) == 0)
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return dboid;
}

/* whether a DROP DATABASE or the like wants dboid free of connections */
static bool
DatabasePaused(Oid dboid)
{
	pid_t		pid;
	Oid			paused;

	SpinLockAcquire(&CdpPool->mutex);
	pid = CdpPool->paused_by;
	paused = CdpPool->paused_database;
	SpinLockRelease(&CdpPool->mutex);
	if (pid == 0)
		return false;
	/* a backend that ended without resuming the pool no longer counts */
	if (BackendPidGetProc(pid) == NULL)
	{
		SpinLockAcquire(&CdpPool->mutex);
		if (CdpPool->paused_by == pid)
			CdpPool->paused_by = 0;
		SpinLockRelease(&CdpPool->mutex);
		return false;
	}
	return paused == dboid;
}

/*
 * Workers from an earlier launcher (this one restarted after an error) have
 * no handle here: ask them to stop and wait until their slots are free.
 */
static void
StopOrphanWorkers(void)
{
	pid_t		orphan;

	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
	{
		pid_t		pid;

		SpinLockAcquire(&CdpPool->mutex);
		pid = CdpPool->slots[i].pid;
		SpinLockRelease(&CdpPool->mutex);
		if (pid != 0)
			kill(pid, SIGTERM);
	}
	SpinLockAcquire(&CdpPool->mutex);
	orphan = CdpPool->maintenance.pid;
	SpinLockRelease(&CdpPool->mutex);
	if (orphan != 0)
		kill(orphan, SIGTERM);
	SpinLockAcquire(&CdpPool->mutex);
	orphan = CdpPool->http.pid;
	SpinLockRelease(&CdpPool->mutex);
	if (orphan != 0)
		kill(orphan, SIGTERM);
	(void) CdpWaitForWorkersGone(10000);
}

/*
 * Register a dynamic worker in dboid running function (ingest worker i, or
 * the maintenance worker); false when no background worker slot is free.
 */
static bool
RegisterWorker(LaunchedWorker *w, CdpWorkerSlot *slot, const char *function,
			   const char *type, int i, Oid dboid)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_cdp");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	if (i >= 0)
		snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", type, i);
	else
		snprintf(worker.bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = Int32GetDatum(i);
	memcpy(worker.bgw_extra, &dboid, sizeof(Oid));
	worker.bgw_notify_pid = MyProcPid;

	SpinLockAcquire(&CdpPool->mutex);
	slot->exit_reason = CDP_EXIT_NONE;
	SpinLockRelease(&CdpPool->mutex);
	if (!RegisterDynamicBackgroundWorker(&worker, &w->handle))
	{
		w->handle = NULL;
		if (!start_failure_logged)
			ereport(WARNING,
					(errmsg("pg_cdp could not start a %s", type),
					 errhint("Raise max_worker_processes (each ingest worker, the maintenance and HTTP workers and the launcher need one), or lower cdp.ingest_workers.")));
		start_failure_logged = true;
		return false;
	}
	start_failure_logged = false;
	return true;
}

static bool
StartWorker(int i, Oid dboid)
{
	return RegisterWorker(&launched[i], &CdpPool->slots[i], "cdp_ingest_worker_main",
						  "pg_cdp ingest worker", i, dboid);
}

/*
 * Forget workers that have stopped; one that found no pg_cdp installed
 * stops the pool until CREATE EXTENSION pg_cdp (or a minute passes), one
 * that found this node a Citus worker for ten minutes.
 */
static void
ReapWorker(LaunchedWorker *w, CdpWorkerSlot *slot, TimestampTz now)
{
	pid_t		pid;
	CdpWorkerExit reason;

	if (w->handle == NULL || GetBackgroundWorkerPid(w->handle, &pid) != BGWH_STOPPED)
		return;
	pfree(w->handle);
	w->handle = NULL;
	SpinLockAcquire(&CdpPool->mutex);
	reason = slot->exit_reason;
	SpinLockRelease(&CdpPool->mutex);
	if (reason == CDP_EXIT_NO_EXTENSION)
	{
		paused_since = now;
		pause_ms = NO_EXTENSION_RECHECK_MS;
	}
	else if (reason == CDP_EXIT_CITUS_WORKER)
	{
		if (paused_since == 0)
			ereport(LOG,
					(errmsg("pg_cdp's background workers stand down: this node is a Citus worker"),
					 errdetail("Ingest, upkeep and the HTTP endpoint run on the coordinator; "
							   "a worker node holds shards of cdp.events only."),
					 errhint("Set cdp.ingest_workers = 0, cdp.maintenance_interval = 0 "
							 "and cdp.http_port = 0 on worker nodes.")));
		paused_since = now;
		pause_ms = CITUS_WORKER_RECHECK_MS;
	}
	w->not_before = reason == CDP_EXIT_NONE ?
		TimestampTzPlusMilliseconds(now, RESTART_DELAY_MS) : now;
}

static void
ReapWorkers(TimestampTz now)
{
	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
		ReapWorker(&launched[i], &CdpPool->slots[i], now);
	ReapWorker(&maintenance, &CdpPool->maintenance, now);
	ReapWorker(&http, &CdpPool->http, now);
}

/* whether workers may run now in dboid */
static bool
PoolMayRun(Oid dboid, TimestampTz now)
{
	uint64		changes = pg_atomic_read_u64(&CdpPool->extension_changes);

	if (changes != extension_changes_seen)
	{
		extension_changes_seen = changes;
		paused_since = 0;
	}
	if (!OidIsValid(dboid) || DatabasePaused(dboid))
		return false;
	if (paused_since != 0 && now < TimestampTzPlusMilliseconds(paused_since, pause_ms))
		return false;
	return true;
}

/* ask a worker to stop; the launcher reaps it once it has */
static void
TellToStop(LaunchedWorker *w, CdpWorkerSlot *slot)
{
	SpinLockAcquire(&CdpPool->mutex);
	slot->exit_reason = CDP_EXIT_TOLD;
	SpinLockRelease(&CdpPool->mutex);
	TerminateBackgroundWorker(w->handle);
}

/*
 * Start or stop a worker the pool has one of (maintenance, HTTP); returns
 * how long to wait before looking again.
 */
static long
AdjustSingleWorker(LaunchedWorker *w, CdpWorkerSlot *slot, const char *function,
				   const char *type, Oid dboid, bool want, TimestampTz now)
{
	if (!want)
	{
		if (w->handle == NULL)
			return 10000;
		TellToStop(w, slot);
		return 100;
	}
	if (w->handle != NULL)
		return 10000;
	if (now < w->not_before)
		return RESTART_DELAY_MS;
	if (!RegisterWorker(w, slot, function, type, -1, dboid))
		w->not_before = TimestampTzPlusMilliseconds(now, 10000);
	return 10000;
}

/*
 * Start and stop workers towards the wanted number; returns how long to
 * wait before looking again.
 */
static long
AdjustWorkers(Oid dboid, int want, TimestampTz now)
{
	long		wait_ms = 10000;

	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
	{
		if (i >= want)
		{
			if (launched[i].handle != NULL)
			{
				TellToStop(&launched[i], &CdpPool->slots[i]);
				wait_ms = Min(wait_ms, 100);
			}
			continue;
		}
		if (launched[i].handle != NULL)
			continue;
		if (now < launched[i].not_before)
		{
			long		secs;
			int			usecs;

			TimestampDifference(now, launched[i].not_before, &secs, &usecs);
			wait_ms = Min(wait_ms, secs * 1000 + usecs / 1000 + 1);
			continue;
		}
		if (!StartWorker(i, dboid))
		{
			launched[i].not_before = TimestampTzPlusMilliseconds(now, 10000);
			break;
		}
	}
	return wait_ms;
}

/* stop every worker (the database changed) */
static void
StopAllWorkers(void)
{
	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
		if (launched[i].handle != NULL)
			TellToStop(&launched[i], &CdpPool->slots[i]);
	if (maintenance.handle != NULL)
		TellToStop(&maintenance, &CdpPool->maintenance);
	if (http.handle != NULL)
		TellToStop(&http, &CdpPool->http);
}

void
cdp_launcher_main(Datum arg)
{
	Oid			current = InvalidOid;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	SpinLockAcquire(&CdpPool->mutex);
	CdpPool->launcher_pid = MyProcPid;
	CdpPool->launcher_latch = MyLatch;
	SpinLockRelease(&CdpPool->mutex);
	before_shmem_exit(LauncherExit, (Datum) 0);

	/* shared catalogs only: pg_database is all it reads */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("pg_cdp launcher");
	StopOrphanWorkers();
	extension_changes_seen = pg_atomic_read_u64(&CdpPool->extension_changes);

	for (;;)
	{
		TimestampTz now;
		Oid			dboid;
		bool		may_run;
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		dboid = LookupDatabase();
		if (dboid != current)
		{
			StopAllWorkers();
			current = dboid;
			paused_since = 0;
		}
		SpinLockAcquire(&CdpPool->mutex);
		CdpPool->database = dboid;
		SpinLockRelease(&CdpPool->mutex);

		now = GetCurrentTimestamp();
		ReapWorkers(now);
		may_run = PoolMayRun(dboid, now);
		wait_ms = AdjustWorkers(dboid, may_run ? cdp_ingest_workers : 0, now);
		wait_ms = Min(wait_ms,
					  AdjustSingleWorker(&maintenance, &CdpPool->maintenance,
										 "cdp_maintenance_worker_main",
										 "pg_cdp maintenance worker", dboid,
										 may_run && cdp_maintenance_interval_secs > 0, now));
		wait_ms = Min(wait_ms,
					  AdjustSingleWorker(&http, &CdpPool->http, "cdp_http_worker_main",
										 "pg_cdp http", dboid,
										 may_run && cdp_http_port > 0, now));
		if (paused_since != 0)
			wait_ms = Min(wait_ms, pause_ms);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
