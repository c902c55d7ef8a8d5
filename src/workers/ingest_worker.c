/*
 * ingest_worker.c
 *	  An ingest worker: drains cdp.inbox one batch per transaction, so that
 *	  taking rows and storing or dead-lettering their messages commit
 *	  together, and sleeps on its latch when the inbox is empty until an
 *	  enqueue wakes it.
 *
 *	  A batch that fails is rolled back (its rows return to the inbox) and
 *	  retried after a pause that doubles up to MAX_BACKOFF_MS, so a failing
 *	  database never spins a core.  Errors that pass (serialization failures,
 *	  deadlocks, lock and statement timeouts, out of memory or disk) are only
 *	  retried.  An error a message's content cannot explain but that keeps
 *	  coming back (a user's trigger that raises for some event, say) would
 *	  stop the inbox for good: after BATCH_ATTEMPTS such failures the worker
 *	  takes one row at a time, for a batch's worth of rows, blaming any error
 *	  on the message that raises it (which becomes a processing_error dead
 *	  letter with its payload while its siblings are stored).  A row that
 *	  still fails ROW_ATTEMPTS times that way (the error is outside its
 *	  messages) becomes one processing_error dead letter.  cdp.process_inbox
 *	  raises such errors to its caller instead.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "workers.h"
#include "stats.h"

#define MIN_BACKOFF_MS	100
#define MAX_BACKOFF_MS	10000
#define IDLE_CHECK_MS	10000	/* look at the inbox even unwoken */
#define BATCH_ATTEMPTS	3
#define ROW_ATTEMPTS	2
#define RESUMED_BATCHES	16		/* then a batch starts at the lowest id again */

static int	my_slot = -1;

/* see pg_cdp.h: set per batch, before anything of it runs */
bool		cdp_batch_commits_async = false;

/* the first row of the batch under way: static, so it survives an error's longjmp */
static int64 batch_first_id = 0;
static int64 batch_last_id = 0; /* and the last row of the batch done */

/*
 * Where the next batch starts: after the rows the previous one took, as
 * cdp.process_inbox's batches do within a call.  Starting every batch at the
 * lowest id walked, each time, the index entries of every row taken since
 * the inbox was last vacuumed and read the rows of the batches just
 * committed again.  A row with a lower id can still turn up (committed
 * after a batch looked: ids are handed out before rows commit), so a batch
 * starts at the lowest id again after RESUMED_BATCHES, when a resumed batch
 * finds nothing, and after any failure.
 */
static int64 resume_after = 0;
static int	resumed_batches = 0;

/* where the worker stands against failures */
typedef struct Retry
{
	int			failures;		/* consecutive failed attempts */
	int			hard_failures;	/* of which not passing errors */
	int			single_rows_left;	/* rows still to take one at a time */
	int64		suspect_id;		/* the row that failed alone */
	int			suspect_failures;
	char	   *suspect_reason; /* "SQLSTATE: message" of its last failure */
} Retry;

static void
ReleaseSlot(int code, Datum arg)
{
	CdpWorkerSlot *slot = &CdpPool->slots[my_slot];

	pg_atomic_write_u32(&slot->idle, 0);
	SpinLockAcquire(&CdpPool->mutex);
	slot->pid = 0;
	slot->latch = NULL;
	SpinLockRelease(&CdpPool->mutex);
	CdpStatsWorkerStopped(my_slot);
}

static void
ClaimSlot(int i)
{
	CdpWorkerSlot *slot = &CdpPool->slots[i];

	my_slot = i;
	SpinLockAcquire(&CdpPool->mutex);
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	SpinLockRelease(&CdpPool->mutex);
	CdpStatsWorkerStarted(i, MyProcPid);
	before_shmem_exit(ReleaseSlot, (Datum) 0);
}

/* stop for good: the launcher reads why */
static void
ExitWorker(CdpWorkerExit reason)
{
	SpinLockAcquire(&CdpPool->mutex);
	CdpPool->slots[my_slot].exit_reason = reason;
	SpinLockRelease(&CdpPool->mutex);
	proc_exit(0);
}

/*
 * One transaction: take a batch and process it as pg_cdp's owner (what
 * cdp.process_inbox, SECURITY DEFINER, runs as), then commit.  Returns the
 * rows taken, or -1 when the batch rolled back to avoid a deadlock.
 */
static int
RunBatch(const CdpDrainRequest *req)
{
	Oid			owner;
	Oid			save_user;
	int			save_sec;
	CdpDrain   *d;
	CdpDrainResult result;
	bool		done;
	TimestampTz started = GetCurrentTimestamp();
	uint64		recalled;
	uint64		read;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/*
	 * The batch commits without waiting for its WAL to reach disk: what it
	 * takes was committed durably by its enqueue, and a crash that loses
	 * the batch's commit loses all of it (WAL is replayed in order), so
	 * its rows are back in the inbox and stored again after the restart.
	 * The wal writer flushes it within moments; a transaction that drops
	 * files (retention) still waits, and so does one that writes to the
	 * change feed (audience_eval.c), which consumers act on.
	 */
	cdp_batch_commits_async = cdp_worker_async_commit;
	if (cdp_batch_commits_async)
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
	CdpStandDownOnCitusWorker(&CdpPool->slots[my_slot]);
	owner = CdpExtensionOwner();
	if (!OidIsValid(owner))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		ExitWorker(CDP_EXIT_NO_EXTENSION);
	}
	pgstat_report_activity(STATE_RUNNING, "cdp ingest batch");
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);

	d = CdpBeginDrain();
	done = CdpDrainBatch(d, req, &result);
	CdpEndDrain(d);

	SetUserIdAndSecContext(save_user, save_sec);
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);
	/* cdp.worker_stats: the last batch that took something */
	if (done && result.rows > 0)
		CdpStatsReportBatch(my_slot, result.messages, started, GetCurrentTimestamp());
	CdpRecentIdentitiesCounts(&recalled, &read);
	CdpStatsReportIdentities(my_slot, recalled, read);
	batch_last_id = result.last_id;
	return done ? result.rows : -1;
}

/* wait ms, awake only for signals: wake-ups by enqueues must not cut it short */
static void
Pause(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		secs;
		int			usecs;

		CHECK_FOR_INTERRUPTS();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		if (secs == 0 && usecs == 0)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 secs * 1000 + usecs / 1000 + 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static long
BackoffMs(int failures)
{
	long		ms = MIN_BACKOFF_MS;

	for (int i = 1; i < failures && ms < MAX_BACKOFF_MS; i++)
		ms *= 2;
	return Min(ms, MAX_BACKOFF_MS);
}

/*
 * Note a failed attempt (edata NULL: a deadlock the batch avoided) and
 * decide how the next one takes rows.
 */
static void
NoteFailure(Retry *r, ErrorData *edata, int64 first_id, bool single_row)
{
	r->failures++;
	if (edata == NULL || CdpIsPassingError(edata->sqlerrcode))
		return;
	r->hard_failures++;
	if (single_row && first_id != 0)
	{
		if (r->suspect_id != first_id)
		{
			r->suspect_id = first_id;
			r->suspect_failures = 0;
		}
		r->suspect_failures++;
		if (r->suspect_reason)
			pfree(r->suspect_reason);
		r->suspect_reason = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
									 edata->message);
	}
	else if (r->hard_failures >= BATCH_ATTEMPTS && r->single_rows_left == 0)
		r->single_rows_left = cdp_batch_size;
}

/* the next batch: a normal one, one row, or the dead letter of a suspect row */
static void
NextRequest(Retry *r, CdpDrainRequest *req)
{
	memset(req, 0, sizeof(*req));
	batch_first_id = 0;
	batch_last_id = 0;
	req->first_id = &batch_first_id;
	req->want = cdp_batch_size;
	req->after_id = resume_after;
	if (r->suspect_id != 0 && r->suspect_failures >= ROW_ATTEMPTS)
	{
		req->want = 1;
		req->after_id = r->suspect_id - 1;
		req->last_id = r->suspect_id;
		req->quarantine = r->suspect_reason;
	}
	else if (r->single_rows_left > 0)
	{
		req->want = 1;
		req->after_id = 0;
		req->strict = true;
	}
}

/* after a batch: where the next one starts */
static void
NoteResume(const CdpDrainRequest *req, int rows, int64 last_id)
{
	if (rows > 0 && req->quarantine == NULL && !req->strict &&
		++resumed_batches < RESUMED_BATCHES)
		resume_after = last_id;
	else
	{
		resume_after = 0;
		resumed_batches = 0;
	}
}

static void
NoteSuccess(Retry *r, const CdpDrainRequest *req, int rows)
{
	r->failures = 0;
	r->hard_failures = 0;
	if (req->quarantine != NULL)
	{
		r->suspect_id = 0;
		r->suspect_failures = 0;
	}
	if (r->single_rows_left > 0)
		r->single_rows_left = rows == 0 ? 0 : r->single_rows_left - 1;
}

void
cdp_ingest_worker_main(Datum arg)
{
	Oid			dboid;
	MemoryContext worker_cxt;
	Retry		retry;
	CdpWorkerSlot *slot;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	ClaimSlot(DatumGetInt32(arg));
	slot = &CdpPool->slots[my_slot];
	CdpHoldInboxRowsFor(slot);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(MyBgworkerEntry->bgw_name);
	/* as cdp.process_inbox runs, SECURITY DEFINER with a pinned search_path */
	SetConfigOption("search_path", "pg_catalog, cdp", PGC_SUSET, PGC_S_SESSION);

	worker_cxt = AllocSetContextCreate(TopMemoryContext, "cdp ingest worker",
									   ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_cxt);
	memset(&retry, 0, sizeof(retry));

	for (;;)
	{
		CdpDrainRequest req;
		volatile int rows = 0;
		ErrorData  *edata = NULL;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		CdpRecentIdentitiesEnable(cdp_identity_cache_size);

		/* idle first: an enqueue committing from now on either wakes us or is seen */
		pg_atomic_write_u32(&slot->idle, 1);
		pg_memory_barrier();
		ResetLatch(MyLatch);

		NextRequest(&retry, &req);
		PG_TRY();
		{
			rows = RunBatch(&req);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(worker_cxt);
			EmitErrorReport();
			edata = CopyErrorData();
			FlushErrorState();
			AbortCurrentTransaction();
			pgstat_report_activity(STATE_IDLE, NULL);
			rows = -1;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(worker_cxt);

		NoteResume(&req, rows, batch_last_id);
		if (rows < 0)
		{
			pg_atomic_write_u32(&slot->idle, 0);
			NoteFailure(&retry, edata, batch_first_id, req.strict || req.quarantine != NULL);
			if (edata != NULL)
				FreeErrorData(edata);
			Pause(BackoffMs(retry.failures));
			continue;
		}
		NoteSuccess(&retry, &req, rows);
		if (rows > 0)
		{
			pg_atomic_write_u32(&slot->idle, 0);
			/* a full batch: more is likely queued, so let an idle worker help */
			if (rows >= req.want && req.want > 1)
				CdpWakeIdleWorker(my_slot);
			continue;
		}
		/* nothing after the previous batch: look from the lowest id before sleeping */
		if (req.after_id > 0 && req.quarantine == NULL)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 IDLE_CHECK_MS, PG_WAIT_EXTENSION);
	}
}
