/*
 * worker_pool.c
 *	  The shared memory of the worker pool, its registration when pg_cdp is
 *	  preloaded, and how sessions wake a worker once what they queued is
 *	  committed.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "pgstat.h"
#include "utils/fmgroids.h"
#include "utils/timestamp.h"

#include "distributed_reads.h"
#include "workers.h"

CdpWorkerPool *CdpPool = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* this transaction queued messages / created or dropped pg_cdp */
static bool wake_at_commit = false;
static bool extension_changed_at_commit = false;
static bool callback_registered = false;

static void
PoolShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CdpWorkerPool)));
}

static void
PoolShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	CdpPool = ShmemInitStruct("pg_cdp worker pool", sizeof(CdpWorkerPool), &found);
	if (!found)
	{
		memset(CdpPool, 0, sizeof(CdpWorkerPool));
		SpinLockInit(&CdpPool->mutex);
		pg_atomic_init_u64(&CdpPool->extension_changes, 0);
		pg_atomic_init_u32(&CdpPool->next_wake, 0);
		pg_atomic_init_u64(&CdpPool->identity_epoch, 0);
		pg_atomic_init_u64(&CdpPool->evidence_epoch, 0);
		pg_atomic_init_u32(&CdpPool->identity_cache_off, 0);
		for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
			pg_atomic_init_u32(&CdpPool->slots[i].idle, 0);
		pg_atomic_init_u32(&CdpPool->maintenance.idle, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while the postmaster loads preloaded libraries:
 * reserve the pool's shared memory and register the launcher.  Without
 * preloading nothing runs in the background (cdp.process_inbox does the
 * work) and CdpPool stays NULL.
 */
void
CdpWorkersInit(void)
{
	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = PoolShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = PoolShmemStartup;
	CdpStartLauncher();
	CdpInstallWorkerGuard();
}

/*
 * Wake one idle worker other than except_slot (-1: any), taking them in
 * turn so that concurrent enqueues spread over the pool.  A busy worker
 * needs no wake-up: it looks at the inbox again before it sleeps (it marks
 * itself idle first, so either it sees the new rows or we see it idle).
 */
void
CdpWakeIdleWorker(int except_slot)
{
	uint32		start;

	if (CdpPool == NULL)
		return;
	pg_memory_barrier();
	start = pg_atomic_fetch_add_u32(&CdpPool->next_wake, 1);
	for (int k = 0; k < CDP_MAX_INGEST_WORKERS; k++)
	{
		int			i = (start + k) % CDP_MAX_INGEST_WORKERS;
		CdpWorkerSlot *slot = &CdpPool->slots[i];
		Latch	   *latch;

		if (i == except_slot || pg_atomic_read_u32(&slot->idle) == 0)
			continue;
		/* claim it, so that the next waker picks another idle worker */
		if (pg_atomic_exchange_u32(&slot->idle, 0) == 0)
			continue;
		SpinLockAcquire(&CdpPool->mutex);
		latch = slot->pid != 0 ? slot->latch : NULL;
		SpinLockRelease(&CdpPool->mutex);
		if (latch != NULL)
		{
			SetLatch(latch);
			return;
		}
	}
}

/* tell the launcher (if any) to look at the database again */
void
CdpWakeLauncher(void)
{
	Latch	   *latch;

	SpinLockAcquire(&CdpPool->mutex);
	latch = CdpPool->launcher_pid != 0 ? CdpPool->launcher_latch : NULL;
	SpinLockRelease(&CdpPool->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * After commit the rows are visible to the worker we wake; before it they
 * are not, and waking then would let the worker find nothing and sleep.
 */
static void
PoolXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				CdpWakeIdleWorker(-1);
			if (extension_changed_at_commit)
			{
				pg_atomic_fetch_add_u64(&CdpPool->extension_changes, 1);
				CdpWakeLauncher();
			}
			wake_at_commit = false;
			extension_changed_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			extension_changed_at_commit = false;
			break;
		default:
			break;
	}
}

static void
RegisterCallback(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(PoolXactCallback, NULL);
		callback_registered = true;
	}
}

/* this transaction queued messages: wake a worker when it commits */
void
CdpWakeWorkerAtCommit(void)
{
	if (CdpPool == NULL || wake_at_commit)
		return;
	RegisterCallback();
	wake_at_commit = true;
}

/* this transaction creates or drops pg_cdp: the launcher looks again at commit */
void
CdpNoteExtensionChangeAtCommit(void)
{
	if (CdpPool == NULL)
		return;
	RegisterCallback();
	extension_changed_at_commit = true;
}

/*
 * Wait until no ingest worker holds a slot and the maintenance worker is
 * gone too, for at most timeout_ms; whether they all are.
 */
bool
CdpWaitForWorkersGone(long timeout_ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		bool		any;

		SpinLockAcquire(&CdpPool->mutex);
		any = CdpPool->maintenance.pid != 0 || CdpPool->http.pid != 0;
		for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
			any |= CdpPool->slots[i].pid != 0;
		SpinLockRelease(&CdpPool->mutex);
		if (!any)
			return true;
		if (GetCurrentTimestamp() >= until)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* at exit: the slot tells the launcher and database commands it is gone */
static void
ReleaseWorkerSlot(int code, Datum arg)
{
	CdpWorkerSlot *slot = (CdpWorkerSlot *) DatumGetPointer(arg);

	SpinLockAcquire(&CdpPool->mutex);
	slot->pid = 0;
	slot->latch = NULL;
	SpinLockRelease(&CdpPool->mutex);
}

/* a single worker (maintenance, HTTP) takes its slot until it exits */
void
CdpClaimWorkerSlot(CdpWorkerSlot *slot)
{
	SpinLockAcquire(&CdpPool->mutex);
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	SpinLockRelease(&CdpPool->mutex);
	before_shmem_exit(ReleaseWorkerSlot, PointerGetDatum(slot));
}

/* stop for good, telling the launcher why */
void
CdpExitWorker(CdpWorkerSlot *slot, CdpWorkerExit reason)
{
	SpinLockAcquire(&CdpPool->mutex);
	slot->exit_reason = reason;
	SpinLockRelease(&CdpPool->mutex);
	proc_exit(0);
}

/*
 * A worker of the pool stops for good on a Citus worker node, inside a
 * transaction: Citus creates pg_cdp there only to hold shards of cdp.events,
 * while the inbox, the identity graph and the upkeep are the coordinator's;
 * draining, maintaining or serving HTTP on this node's empty copies would
 * store events nobody sees.  The launcher logs it and waits.
 */
void
CdpStandDownOnCitusWorker(CdpWorkerSlot *slot)
{
	if (!CdpOnCitusWorker())
		return;
	AbortCurrentTransaction();
	CdpExitWorker(slot, CDP_EXIT_CITUS_WORKER);
}

/* pg_cdp's owner in this database, or InvalidOid when it is not installed */
Oid
CdpExtensionOwner(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("pg_cdp"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}
