/*
 * stats.c
 *	  Statistics in shared memory and the inbox bound (cdp.max_inbox_depth).
 *
 *	  With pg_cdp in shared_preload_libraries, counters per database live in
 *	  shared memory as atomics: what was queued, taken from the inbox,
 *	  stored, deduplicated, dead-lettered, suppressed, dropped by a trigger,
 *	  and the identity merges made.  Whoever runs the pipeline (a session's
 *	  cdp.process_inbox or an ingest worker) counts into backend memory, per
 *	  subtransaction level: a level rolled back forgets its counts, one
 *	  committed hands them to its parent, and the top level adds them to
 *	  shared memory when the transaction commits.  So the figures say what
 *	  committed, and they outlive any one worker (not a server restart).
 *
 *	  The inbox depth is kept the same way: rows queued minus rows taken by
 *	  committed transactions since the server started ("net"), plus a
 *	  baseline counted once (the first time it is needed, and again after a
 *	  TRUNCATE, a DELETE other than processing's, a reset, or a new
 *	  cdp.inbox).  Checking the bound then costs a few memory reads per
 *	  row.  Without preloading there is no shared memory: the bound measures
 *	  the inbox itself, at most once a second per session, and cdp.stats
 *	  counts the inbox when asked.
 *
 *	  Per ingest worker, a slot holds its pid and its last batch's time, size
 *	  and rate, reported by the worker after each committed batch.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "stats.h"

/* databases whose counters shared memory holds at once */
#define CDP_STATS_MAX_DATABASES	64

/* how long, without preloading, a session reuses its measure of the inbox */
#define FALLBACK_MEASURE_USECS	USECS_PER_SEC

/* the counters and the inbox depth of one database */
typedef struct CdpDbStats
{
	Oid			dboid;			/* InvalidOid: free slot */
	pg_atomic_uint64 counters[CDP_STAT_COUNT];
	pg_atomic_uint64 net;		/* int64: rows queued - rows taken, committed */
	/* commits that change net: begun before they are visible, done after */
	pg_atomic_uint64 commits_begun;
	pg_atomic_uint64 commits_done;

	slock_t		mutex;			/* protects the fields below */
	TimestampTz reset_at;
	Oid			inbox_relid;	/* the cdp.inbox the baseline counted */
	bool		baseline_known;
	int64		baseline;		/* depth = baseline + net */
	uint64		generation;		/* bumped whenever the baseline is dropped */
} CdpDbStats;

/* one ingest worker's figures */
typedef struct CdpWorkerFigures
{
	slock_t		mutex;
	int			pid;			/* 0: not running */
	TimestampTz started_at;
	TimestampTz last_batch_at;
	int64		last_batch_messages;
	int64		last_batch_usecs;
	int64		messages;		/* since it first started or the last reset */
	int64		batches;
	int64		identities_recalled;	/* served from what it kept (identity_recent.c) */
	int64		identities_read;	/* looked up */
} CdpWorkerFigures;

typedef struct CdpSharedStats
{
	LWLock	   *lock;			/* assigns database slots */
	CdpDbStats	dbs[CDP_STATS_MAX_DATABASES];
	CdpWorkerFigures workers[CDP_MAX_INGEST_WORKERS];
} CdpSharedStats;

/* what this transaction counted at one subtransaction level */
typedef struct PendingLevel
{
	SubTransactionId subid;
	int64		counts[CDP_STAT_COUNT];
	int64		inbox_delta;	/* rows queued - rows taken */
	bool		recount;		/* the inbox changed in ways not counted */
} PendingLevel;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static CdpSharedStats *cdp_shared = NULL;

/* this backend's database slot */
static CdpDbStats *my_db = NULL;

/* this transaction's counts, innermost level last */
static PendingLevel *levels = NULL;
static int	nlevels = 0;
static int	maxlevels = 0;
static bool touched_inbox = false;	/* this transaction changed inbox rows */
static bool taking = false;		/* processing's DELETE is running */
static bool committing = false; /* counted in commits_begun */

/* without preloading: this session's last measure of the inbox */
static bool fb_valid = false;
static bool fb_exact = false;
static TimestampTz fb_at;
static int64 fb_depth;
static int64 fb_added;			/* rows this session queued since */
static LocalTransactionId fb_lxid;
static CommandId fb_cid;
static int64 fb_cmd_rows;		/* rows the current command queued */

static int64 PendingInboxDelta(void);

static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr range_plan = NULL;
static SPIPlanPtr bounded_plan = NULL;
static SPIPlanPtr oldest_plan = NULL;

/* fixed size: a slot per database and per worker, whatever the load */
static Size
SharedStatsSize(void)
{
	return MAXALIGN(sizeof(CdpSharedStats));
}

/* Ask for the shared memory and the lock (PG15: from shmem_request_hook). */
static void
StatsShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(SharedStatsSize());
	RequestNamedLWLockTranche("pg_cdp stats", 1);
}

/*
 * Attach to (or, first, set up) the shared statistics.  Counters start at
 * zero with every server start: they are not written to disk.
 */
static void
StatsShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cdp_shared = ShmemInitStruct("pg_cdp stats", SharedStatsSize(), &found);
	if (!found)
	{
		memset(cdp_shared, 0, SharedStatsSize());
		cdp_shared->lock = &(GetNamedLWLockTranche("pg_cdp stats"))->lock;
		for (int i = 0; i < CDP_STATS_MAX_DATABASES; i++)
		{
			CdpDbStats *db = &cdp_shared->dbs[i];

			for (int s = 0; s < CDP_STAT_COUNT; s++)
				pg_atomic_init_u64(&db->counters[s], 0);
			pg_atomic_init_u64(&db->net, 0);
			pg_atomic_init_u64(&db->commits_begun, 0);
			pg_atomic_init_u64(&db->commits_done, 0);
			SpinLockInit(&db->mutex);
		}
		for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
			SpinLockInit(&cdp_shared->workers[i].mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* forget what this transaction counted (and end its bracket, if it had one) */
static void
ForgetPending(void)
{
	if (committing)
		pg_atomic_fetch_add_u64(&my_db->commits_done, 1);
	committing = false;
	nlevels = 0;
	touched_inbox = false;
	taking = false;
}

/*
 * At commit, what the transaction counted goes to shared memory; this runs
 * after the commit is visible and must not fail: atomics and a spinlock.
 */
static void
PublishPending(void)
{
	int64		counts[CDP_STAT_COUNT] = {0};
	int64		delta = 0;
	bool		recount = false;

	if (my_db == NULL || nlevels == 0)
		return;
	for (int l = 0; l < nlevels; l++)
	{
		for (int s = 0; s < CDP_STAT_COUNT; s++)
			counts[s] += levels[l].counts[s];
		delta += levels[l].inbox_delta;
		recount |= levels[l].recount;
	}
	for (int s = 0; s < CDP_STAT_COUNT; s++)
		if (counts[s] != 0)
			pg_atomic_fetch_add_u64(&my_db->counters[s], counts[s]);
	if (delta != 0)
		pg_atomic_fetch_add_u64(&my_db->net, delta);
	if (recount)
	{
		SpinLockAcquire(&my_db->mutex);
		my_db->baseline_known = false;
		my_db->generation++;
		SpinLockRelease(&my_db->mutex);
	}
}

/*
 * Counts reach shared memory at commit only; an abort or PREPARE drops
 * them.  A commit that changes the inbox depth is bracketed by
 * commits_begun (before it becomes visible) and commits_done (after net
 * has its change), so that the depth is counted when none is in between.
 */
static void
StatsXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (my_db != NULL && PendingInboxDelta() != 0)
			{
				pg_atomic_fetch_add_u64(&my_db->commits_begun, 1);
				committing = true;
			}
			break;
		case XACT_EVENT_COMMIT:
			PublishPending();
			ForgetPending();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			ForgetPending();
			break;
		default:
			break;
	}
}

/*
 * A subtransaction that commits hands its counts to its parent; one rolled
 * back (a chunk retried in halves, a batch undone by a deadlock) forgets
 * them, as it undid the work they count.
 */
static void
StatsSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	PendingLevel *top;

	if (event == SUBXACT_EVENT_ABORT_SUB)
		taking = false;
	if (nlevels == 0 || levels[nlevels - 1].subid != mySubid)
		return;
	top = &levels[nlevels - 1];
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (nlevels >= 2 && levels[nlevels - 2].subid == parentSubid)
		{
			PendingLevel *parent = &levels[nlevels - 2];

			for (int s = 0; s < CDP_STAT_COUNT; s++)
				parent->counts[s] += top->counts[s];
			parent->inbox_delta += top->inbox_delta;
			parent->recount |= top->recount;
			nlevels--;
		}
		else
			top->subid = parentSubid;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		nlevels--;
}

/*
 * Called from _PG_init: shared memory can only be had while the library is
 * preloaded; loaded later, the statistics stay backend-free and cdp.stats
 * says what it cannot know.
 */
void
CdpStatsInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = StatsShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = StatsShmemStartup;
	RegisterXactCallback(StatsXactCallback, NULL);
	RegisterSubXactCallback(StatsSubXactCallback, NULL);
}

/* a new slot for a database: counters from zero */
static void
ClaimDbSlot(CdpDbStats *db)
{
	for (int s = 0; s < CDP_STAT_COUNT; s++)
		pg_atomic_write_u64(&db->counters[s], 0);
	pg_atomic_write_u64(&db->net, 0);
	pg_atomic_write_u64(&db->commits_begun, 0);
	pg_atomic_write_u64(&db->commits_done, 0);
	SpinLockAcquire(&db->mutex);
	db->reset_at = GetCurrentTimestamp();
	db->inbox_relid = InvalidOid;
	db->baseline_known = false;
	db->generation++;
	SpinLockRelease(&db->mutex);
	db->dboid = MyDatabaseId;
}

/*
 * This database's slot in shared memory, found or claimed once per backend
 * (in a transaction: a slot of a dropped database is reused when all are
 * taken).  NULL without preloading, or when every slot is in use.
 */
static CdpDbStats *
MyDbStats(void)
{
	CdpDbStats *found = NULL;

	if (cdp_shared == NULL)
		return NULL;
	if (my_db != NULL && my_db->dboid == MyDatabaseId)
		return my_db;
	LWLockAcquire(cdp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < CDP_STATS_MAX_DATABASES && found == NULL; i++)
		if (cdp_shared->dbs[i].dboid == MyDatabaseId)
			found = &cdp_shared->dbs[i];
	for (int i = 0; i < CDP_STATS_MAX_DATABASES && found == NULL; i++)
		if (!OidIsValid(cdp_shared->dbs[i].dboid))
			ClaimDbSlot(found = &cdp_shared->dbs[i]);
	for (int i = 0; i < CDP_STATS_MAX_DATABASES && found == NULL; i++)
		if (!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(cdp_shared->dbs[i].dboid)))
			ClaimDbSlot(found = &cdp_shared->dbs[i]);
	LWLockRelease(cdp_shared->lock);
	my_db = found;
	return found;
}

/* the innermost level, for the subtransaction running now */
static PendingLevel *
CurrentLevel(void)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (nlevels > 0 && levels[nlevels - 1].subid == subid)
		return &levels[nlevels - 1];
	if (nlevels == maxlevels)
	{
		maxlevels = Max(8, maxlevels * 2);
		if (levels == NULL)
			levels = MemoryContextAlloc(TopMemoryContext, sizeof(PendingLevel) * maxlevels);
		else
			levels = repalloc(levels, sizeof(PendingLevel) * maxlevels);
	}
	memset(&levels[nlevels], 0, sizeof(PendingLevel));
	levels[nlevels].subid = subid;
	return &levels[nlevels++];
}

/* the pending level to count into, or NULL when nothing is counted */
static PendingLevel *
Counting(void)
{
	if (MyDbStats() == NULL)
		return NULL;
	return CurrentLevel();
}

/* Count n of a figure, for the running (sub)transaction. */
void
CdpStatsAdd(CdpStat stat, int64 n)
{
	PendingLevel *l;

	if (n == 0 || (l = Counting()) == NULL)
		return;
	l->counts[stat] += n;
}

/* Count what became of messages the pipeline finished with. */
void
CdpStatsCountOutcomes(CdpMessage **msgs, int n)
{
	PendingLevel *l = Counting();

	if (l == NULL)
		return;
	for (int i = 0; i < n; i++)
	{
		switch (msgs[i]->outcome)
		{
			case CDP_STORED:
				l->counts[CDP_STAT_STORED]++;
				break;
			case CDP_DUPLICATE:
				l->counts[CDP_STAT_DEDUPLICATED]++;
				break;
			case CDP_DEAD:
				l->counts[CDP_STAT_DEAD_LETTERED]++;
				break;
			case CDP_SUPPRESSED:
				l->counts[CDP_STAT_SUPPRESSED]++;
				break;
			case CDP_SKIPPED:
				l->counts[CDP_STAT_DROPPED]++;
				break;
			case CDP_PENDING:
				break;
		}
	}
}

/*
 * Processing is about to delete the rows it takes from the inbox: that
 * DELETE is counted by CdpStatsInboxTaken, not by the statement trigger.
 */
void
CdpStatsTakingFromInbox(void)
{
	taking = true;
	touched_inbox = true;
}

/* processing took rows from the inbox: the depth falls when it commits */
void
CdpStatsInboxTaken(int64 rows)
{
	PendingLevel *l = Counting();

	taking = false;
	if (l != NULL)
		l->inbox_delta -= rows;
}

/* this transaction's own queued - taken rows, at every level */
static int64
PendingInboxDelta(void)
{
	int64		delta = 0;

	for (int l = 0; l < nlevels; l++)
		delta += levels[l].inbox_delta;
	return delta;
}

/*
 * Run a query on cdp.inbox as the table's owner (as foreign key checks
 * do): a writer allowed only INSERT, for COPY, has its rows bounded too.
 * Every name in the queries is schema-qualified.  Returns the first column
 * of the first row; *isnull when there is none.
 */
static Datum
InboxQuery(Oid owner, SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes,
		   Datum *args, Snapshot snapshot, int column, bool *isnull)
{
	Oid			save_userid;
	int			save_sec_context;
	Datum		result = (Datum) 0;
	int			rc;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_NOFORCE_RLS);
	SPI_connect();
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	rc = SPI_execute_snapshot(*slot, args, NULL, snapshot, InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading cdp.inbox failed: %s", SPI_result_code_string(rc));
	*isnull = true;
	if (SPI_processed > 0)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, isnull);
		/* the values read are int8 or timestamptz: passed by value */
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return result;
}

/* rows in cdp.inbox, as the snapshot sees them */
static int64
CountInbox(Oid owner, Snapshot snapshot)
{
	bool		isnull;
	Datum		d = InboxQuery(owner, &count_plan, "SELECT pg_catalog.count(*) FROM cdp.inbox",
							   0, NULL, NULL, snapshot, 1, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/* the inbox's owner and oid, or InvalidOid when there is none */
static Oid
InboxRelid(Oid *owner)
{
	Oid			nsp = get_namespace_oid("cdp", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("inbox", nsp) : InvalidOid;
	HeapTuple	tup;

	*owner = InvalidOid;
	if (!OidIsValid(relid))
		return InvalidOid;
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	*owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return relid;
}

/*
 * The latest snapshot and net as of that snapshot: taken while no commit
 * that changes the depth is between becoming visible and adding to net
 * (begun == done before, begun unchanged after), so every such transaction
 * the snapshot sees has added its change, and no other has.  Commits are
 * that short: after a few tries (a millisecond apart) it takes what it has.
 */
static Snapshot
ConsistentSnapshot(CdpDbStats *db, int64 *net)
{
	for (int attempt = 0;; attempt++)
	{
		uint64		done = pg_atomic_read_u64(&db->commits_done);
		uint64		begun;
		Snapshot	snapshot;

		pg_read_barrier();
		begun = pg_atomic_read_u64(&db->commits_begun);
		if (begun == done || attempt >= 100)
		{
			snapshot = GetLatestSnapshot();
			pg_memory_barrier();
			*net = (int64) pg_atomic_read_u64(&db->net);
			pg_read_barrier();
			if (pg_atomic_read_u64(&db->commits_begun) == begun || attempt >= 100)
				return snapshot;
		}
		pg_usleep(1000L);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * A copy of the latest snapshot that sees this transaction's commands
 * before cid only: the rows of a statement being counted (and of what ran
 * inside it) are not yet in the depth.  Unregister it after use.
 */
static Snapshot
SnapshotBefore(Snapshot latest, CommandId cid)
{
	Snapshot	snapshot = RegisterSnapshot(latest);

	snapshot->curcid = cid;
	return snapshot;
}

/*
 * The committed depth of this database's inbox (baseline + net), counting
 * the baseline first if it is not known: the inbox as a snapshot sees it,
 * less net as of that snapshot.  A count that a TRUNCATE, a DELETE or a
 * reset overtook is not kept.  A transaction that changed the inbox itself
 * does not count it (its own rows are in the count and not yet in net):
 * false then, as when the depth cannot be had.
 */
static bool
CommittedDepth(CdpDbStats *db, Oid relid, Oid owner, CommandId cid, int64 *depth)
{
	uint64		generation;
	Snapshot	snapshot;
	int64		net;
	int64		count;
	bool		known;

	SpinLockAcquire(&db->mutex);
	known = db->baseline_known && db->inbox_relid == relid;
	*depth = db->baseline;
	generation = db->generation;
	SpinLockRelease(&db->mutex);
	if (known)
	{
		*depth += (int64) pg_atomic_read_u64(&db->net);
		return true;
	}
	if (touched_inbox || !OidIsValid(relid))
		return false;

	snapshot = SnapshotBefore(ConsistentSnapshot(db, &net), cid);
	count = CountInbox(owner, snapshot);
	UnregisterSnapshot(snapshot);
	SpinLockAcquire(&db->mutex);
	if (db->generation == generation)
	{
		db->baseline = count - net;
		db->inbox_relid = relid;
		db->baseline_known = true;
	}
	SpinLockRelease(&db->mutex);
	*depth = count;
	return true;
}

/* the refusal: the inbox is full */
static void
RefuseRow(int64 depth)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("cdp.inbox holds " INT64_FORMAT " queued payloads, the most cdp.max_inbox_depth (%d) allows",
					depth, cdp_max_inbox_depth),
			 errdetail("Nothing of this call was queued."),
			 errhint("Retry later, when processing has caught up, or raise cdp.max_inbox_depth.")));
}

/*
 * Without shared memory: measure the inbox, as the latest snapshot shows it
 * (this session's earlier commands included).  The id range is two index
 * probes and bounds the depth from above; only when that is not enough is
 * the inbox counted, up to the bound.
 */
static void
MeasureInbox(Relation inbox, bool exact, int64 more, CommandId cid)
{
	Oid			owner = RelationGetForm(inbox)->relowner;
	int64		room = (int64) cdp_max_inbox_depth - fb_cmd_rows - more;
	Snapshot	snapshot = SnapshotBefore(GetLatestSnapshot(), cid);
	bool		isnull;
	Datum		d;

	if (!exact)
	{
		d = InboxQuery(owner, &range_plan,
					   "SELECT pg_catalog.max(id) OPERATOR(pg_catalog.-) pg_catalog.min(id) "
					   "OPERATOR(pg_catalog.+) 1 FROM cdp.inbox",
					   0, NULL, NULL, snapshot, 1, &isnull);
		fb_depth = isnull ? 0 : DatumGetInt64(d);
		exact = fb_depth >= room;
	}
	if (exact)
	{
		Oid			argtypes[1] = {INT8OID};
		Datum		args[1] = {Int64GetDatum(Max(room, 0))};

		d = InboxQuery(owner, &bounded_plan,
					   "SELECT pg_catalog.count(*) FROM (SELECT FROM cdp.inbox LIMIT $1) s",
					   1, argtypes, args, snapshot, 1, &isnull);
		fb_depth = isnull ? 0 : DatumGetInt64(d);
	}
	UnregisterSnapshot(snapshot);
	fb_valid = true;
	fb_exact = exact;
	fb_at = GetCurrentTimestamp();
	fb_added = fb_cmd_rows;
}

/*
 * The bound without shared memory, from this session's measure of the last
 * second, for the last of a statement's rows with more rows before it; a
 * row is only refused on a count made for it.
 */
static void
CheckInboxFallback(Relation inbox, int64 more, CommandId cid)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		measured = false;

	if (!fb_valid || now - fb_at >= FALLBACK_MEASURE_USECS)
	{
		MeasureInbox(inbox, false, more, cid);
		measured = true;
	}
	if (fb_depth + fb_added + more >= cdp_max_inbox_depth && !(measured && fb_exact))
		MeasureInbox(inbox, true, more, cid);
	if (fb_depth + fb_added + more >= cdp_max_inbox_depth)
		RefuseRow(Max(fb_depth + fb_added, cdp_max_inbox_depth));
}

/*
 * A statement queued rows into cdp.inbox (any INSERT or COPY: called by its
 * AFTER INSERT statement trigger, the rows written but not committed).
 * Refused if the inbox held cdp.max_inbox_depth rows before its last row,
 * as a row-by-row check would have refused that row (with the depth it
 * would have seen), then counted.  The depth is the committed one plus
 * this transaction's own rows; rows other transactions have queued but
 * not committed are not seen, so concurrent writers can overshoot the
 * bound by what they have in flight.  cid is the statement's command: the
 * committed depth is measured with a snapshot that does not see its rows.
 */
void
CdpStatsInboxRowsQueued(Relation inbox, int64 rows, CommandId cid)
{
	CdpDbStats *db = MyDbStats();

	if (MyProc->lxid != fb_lxid || cid != fb_cid)
	{
		fb_lxid = MyProc->lxid;
		fb_cid = cid;
		fb_cmd_rows = 0;
	}
	if (cdp_max_inbox_depth > 0)
	{
		int64		depth;

		if (db == NULL)
			CheckInboxFallback(inbox, rows - 1, cid);
		else if (CommittedDepth(db, RelationGetRelid(inbox), RelationGetForm(inbox)->relowner, cid,
								&depth))
		{
			depth += PendingInboxDelta();
			if (depth + rows - 1 >= cdp_max_inbox_depth)
				RefuseRow(Max(depth, cdp_max_inbox_depth));
		}
	}
	fb_added += rows;
	fb_cmd_rows += rows;
	if (db != NULL)
	{
		PendingLevel *l = CurrentLevel();

		l->counts[CDP_STAT_ENQUEUED] += rows;
		l->inbox_delta += rows;
		touched_inbox = true;
	}
}

PG_FUNCTION_INFO_V1(cdp_inbox_recount);

/*
 * AFTER DELETE and AFTER TRUNCATE statement trigger on cdp.inbox: rows
 * removed other than by processing (cdp.forget, by hand) are not counted
 * one by one; the depth is counted again after the transaction commits.
 */
Datum
cdp_inbox_recount(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	PendingLevel *l;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		elog(ERROR, "cdp_inbox_recount: must be a statement trigger");
	fb_valid = false;
	if (!taking || TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		touched_inbox = true;
		if ((l = Counting()) != NULL)
			l->recount = true;
	}
	return PointerGetDatum(NULL);
}

/* the numeric of an int64, as a Datum */
static Datum
NumericOf(int64 v)
{
	return NumericGetDatum(int64_to_numeric(v));
}

/* a time as Unix epoch seconds */
static double
EpochSeconds(TimestampTz t)
{
	return (double) t / USECS_PER_SEC +
		(double) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
}

/* one row of cdp.stats; value NULL when it cannot be known here */
static void
AddFigure(Tuplestorestate *ts, TupleDesc desc, const char *name, bool known, Datum value,
		  const char *kind, const char *description)
{
	Datum		values[4];
	bool		nulls[4] = {false, !known, false, false};

	values[0] = CStringGetTextDatum(name);
	values[1] = value;
	values[2] = CStringGetTextDatum(kind);
	values[3] = CStringGetTextDatum(description);
	tuplestore_putvalues(ts, desc, values, nulls);
}

static const struct
{
	const char *name;
	const char *description;
}			counter_figures[CDP_STAT_COUNT] =
{
	{"enqueued", "payloads queued into cdp.inbox (cdp.ingest, COPY, replays; a batch envelope is one)"},
	{"received", "messages taken from cdp.inbox by processing (cdp.process_inbox or an ingest worker)"},
	{"stored", "messages stored in cdp.events"},
	{"deduplicated", "messages not stored: their messageId was seen within cdp.dedup_window"},
	{"dead_lettered", "messages written to cdp.dead_letters"},
	{"suppressed", "messages dropped for an identifier erased with cdp.forget"},
	{"dropped_by_trigger", "messages a BEFORE ROW trigger on cdp.events dropped"},
	{"merges", "profile merges made by identity resolution"},
};

#define NOT_PRELOADED " (unknown: needs pg_cdp in shared_preload_libraries)"

PG_FUNCTION_INFO_V1(cdp_stats_figures);

/*
 * cdp.stats: one row per figure (name, value, kind, description), so that
 * a BI tool reads it as a table and a Prometheus export maps each row to a
 * metric.  Counters count committed work since the server started or the
 * last cdp.reset_stats(); without preloading they are NULL, and the inbox
 * figures, read from the table, are still there.
 */
Datum
cdp_stats_figures(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CdpDbStats *db;
	Oid			owner;
	Oid			relid;
	int64		depth = 0;
	bool		depth_known = false;
	TimestampTz reset_at = 0;
	Datum		oldest;
	bool		no_oldest;
	int			running = 0;

	InitMaterializedSRF(fcinfo, 0);
	db = MyDbStats();
	relid = InboxRelid(&owner);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("cdp.inbox does not exist")));

	for (int s = 0; s < CDP_STAT_COUNT; s++)
	{
		int64		v = db ? (int64) pg_atomic_read_u64(&db->counters[s]) : 0;

		AddFigure(rsinfo->setResult, rsinfo->setDesc, counter_figures[s].name, db != NULL,
				  NumericOf(v), "counter",
				  db ? counter_figures[s].description
				  : psprintf("%s%s", counter_figures[s].description, NOT_PRELOADED));
	}

	if (db != NULL)
		depth_known = CommittedDepth(db, relid, owner, GetCurrentCommandId(false), &depth);
	if (!depth_known)
	{
		depth = CountInbox(owner, InvalidSnapshot);
		depth_known = true;
	}
	AddFigure(rsinfo->setResult, rsinfo->setDesc, "inbox_depth", depth_known, NumericOf(depth),
			  "gauge", db ? "payloads queued in cdp.inbox, kept in shared memory"
			  : "payloads queued in cdp.inbox, counted now (not preloaded)");

	oldest = InboxQuery(owner, &oldest_plan,
						"SELECT received_at FROM cdp.inbox ORDER BY id LIMIT 1",
						0, NULL, NULL, InvalidSnapshot, 1, &no_oldest);
	AddFigure(rsinfo->setResult, rsinfo->setDesc, "oldest_queued_seconds", true,
			  no_oldest ? NumericOf(0)
			  : DirectFunctionCall1(float8_numeric,
									Float8GetDatum(EpochSeconds(GetCurrentTimestamp()) -
												   EpochSeconds(DatumGetTimestampTz(oldest)))),
			  "gauge", "seconds since the received_at of the first payload in the queue (0 when empty)");

	if (cdp_shared != NULL)
	{
		for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
		{
			SpinLockAcquire(&cdp_shared->workers[i].mutex);
			running += cdp_shared->workers[i].pid != 0;
			SpinLockRelease(&cdp_shared->workers[i].mutex);
		}
	}
	if (db != NULL)
	{
		SpinLockAcquire(&db->mutex);
		reset_at = db->reset_at;
		SpinLockRelease(&db->mutex);
	}
	AddFigure(rsinfo->setResult, rsinfo->setDesc, "ingest_workers_running", cdp_shared != NULL,
			  NumericOf(running), "gauge",
			  cdp_shared ? "ingest workers running (cdp.worker_stats has one row each)"
			  : "ingest workers running" NOT_PRELOADED);
	AddFigure(rsinfo->setResult, rsinfo->setDesc, "stats_reset", db != NULL,
			  DirectFunctionCall1(float8_numeric, Float8GetDatum(EpochSeconds(reset_at))),
			  "gauge", db ? "when the counters started: server start or cdp.reset_stats(), Unix epoch seconds"
			  : "when the counters started" NOT_PRELOADED);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(cdp_worker_stats);

/*
 * cdp.worker_stats: one row per ingest worker slot in use (running now, or
 * that has reported a batch since the server started).
 * rate is the last batch's messages per second of its duration.
 */
Datum
cdp_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (cdp_shared == NULL)
		return (Datum) 0;
	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
	{
		CdpWorkerFigures w;
		Datum		values[11];
		bool		nulls[11] = {false};

		SpinLockAcquire(&cdp_shared->workers[i].mutex);
		w = cdp_shared->workers[i];
		SpinLockRelease(&cdp_shared->workers[i].mutex);
		if (w.pid == 0 && w.last_batch_at == 0)
			continue;
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(w.pid);
		nulls[1] = w.pid == 0;
		values[2] = TimestampTzGetDatum(w.started_at);
		nulls[2] = w.started_at == 0;
		values[3] = TimestampTzGetDatum(w.last_batch_at);
		values[4] = Int64GetDatum(w.last_batch_messages);
		values[5] = Float8GetDatum((double) w.last_batch_usecs / 1000.0);
		values[6] = Float8GetDatum(w.last_batch_usecs > 0
								   ? (double) w.last_batch_messages * USECS_PER_SEC / w.last_batch_usecs
								   : 0.0);
		nulls[3] = nulls[4] = nulls[5] = w.last_batch_at == 0;
		nulls[6] = w.last_batch_at == 0 || w.last_batch_usecs <= 0;
		values[7] = Int64GetDatum(w.messages);
		values[8] = Int64GetDatum(w.batches);
		values[9] = Int64GetDatum(w.identities_recalled);
		values[10] = Int64GetDatum(w.identities_read);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(cdp_reset_stats);

/*
 * cdp.reset_stats(): this database's counters start again from zero, as do
 * the workers' totals (their last batch stays); the inbox depth is counted
 * again the next time it is needed, which also makes good any drift.
 */
Datum
cdp_reset_stats(PG_FUNCTION_ARGS)
{
	CdpDbStats *db = MyDbStats();

	if (db == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_cdp statistics need shared memory"),
				 errhint("Add pg_cdp to shared_preload_libraries and restart the server.")));
	for (int s = 0; s < CDP_STAT_COUNT; s++)
		pg_atomic_write_u64(&db->counters[s], 0);
	SpinLockAcquire(&db->mutex);
	db->reset_at = GetCurrentTimestamp();
	db->baseline_known = false;
	db->generation++;
	SpinLockRelease(&db->mutex);
	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
	{
		CdpWorkerFigures *w = &cdp_shared->workers[i];

		SpinLockAcquire(&w->mutex);
		w->messages = 0;
		w->batches = 0;
		w->identities_recalled = 0;
		w->identities_read = 0;
		SpinLockRelease(&w->mutex);
	}
	PG_RETURN_VOID();
}

/* the worker slot, or NULL (and a warning) when there is none */
static CdpWorkerFigures *
WorkerSlot(int worker_slot)
{
	if (cdp_shared == NULL)
		return NULL;
	if (worker_slot < 0 || worker_slot >= CDP_MAX_INGEST_WORKERS)
	{
		elog(WARNING, "pg_cdp: no statistics slot %d for an ingest worker", worker_slot);
		return NULL;
	}
	return &cdp_shared->workers[worker_slot];
}

/* An ingest worker started in a slot: its totals carry on from before. */
void
CdpStatsWorkerStarted(int worker_slot, int pid)
{
	CdpWorkerFigures *w = WorkerSlot(worker_slot);

	if (w == NULL)
		return;
	SpinLockAcquire(&w->mutex);
	w->pid = pid;
	w->started_at = GetCurrentTimestamp();
	SpinLockRelease(&w->mutex);
}

/* An ingest worker stopped: its figures stay until the slot is used again. */
void
CdpStatsWorkerStopped(int worker_slot)
{
	CdpWorkerFigures *w = WorkerSlot(worker_slot);

	if (w == NULL)
		return;
	SpinLockAcquire(&w->mutex);
	w->pid = 0;
	SpinLockRelease(&w->mutex);
}

/* An ingest worker's identifiers served from what it kept, and looked up. */
void
CdpStatsReportIdentities(int worker_slot, uint64 recalled, uint64 read)
{
	CdpWorkerFigures *w = WorkerSlot(worker_slot);

	if (w == NULL || (recalled == 0 && read == 0))
		return;
	SpinLockAcquire(&w->mutex);
	w->identities_recalled += recalled;
	w->identities_read += read;
	SpinLockRelease(&w->mutex);
}

/* An ingest worker committed a batch of messages, run from started to ended. */
void
CdpStatsReportBatch(int worker_slot, int64 messages, TimestampTz started, TimestampTz ended)
{
	CdpWorkerFigures *w = WorkerSlot(worker_slot);

	if (w == NULL)
		return;
	SpinLockAcquire(&w->mutex);
	w->last_batch_at = ended;
	w->last_batch_messages = messages;
	w->last_batch_usecs = Max(ended - started, 0);
	w->messages += messages;
	w->batches++;
	SpinLockRelease(&w->mutex);
}

PG_FUNCTION_INFO_V1(cdp_stats_test_worker);

/*
 * For tests only, and not part of the extension's SQL (a superuser's test
 * declares it): act as an ingest worker in a slot.  event 'started',
 * 'batch' (messages, milliseconds) or 'stopped'.
 */
Datum
cdp_stats_test_worker(PG_FUNCTION_ARGS)
{
	int			slot = PG_GETARG_INT32(0);
	char	   *event = text_to_cstring(PG_GETARG_TEXT_PP(1));
	TimestampTz now = GetCurrentTimestamp();

	if (strcmp(event, "started") == 0)
		CdpStatsWorkerStarted(slot, PG_GETARG_INT32(2));
	else if (strcmp(event, "batch") == 0)
		CdpStatsReportBatch(slot, PG_GETARG_INT32(2),
							now - (TimestampTz) PG_GETARG_INT32(3) * 1000, now);
	else if (strcmp(event, "stopped") == 0)
		CdpStatsWorkerStopped(slot);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown event \"%s\"", event)));
	PG_RETURN_VOID();
}
