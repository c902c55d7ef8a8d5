/*
 * inbox_queue.c
 *	  Counting the rows a statement queues into cdp.inbox, for
 *	  cdp.max_inbox_depth, cdp.stats and waking an ingest worker at commit.
 *
 *	  The inbox has statement triggers only: a row trigger before the insert
 *	  made COPY insert row by row, and one after it queues an event per row,
 *	  which a large COPY holds in memory until it ends.  How many rows a
 *	  statement inserted is PostgreSQL's own count of the tuples inserted into
 *	  the table in this transaction (what pg_stat_get_xact_tuples_inserted
 *	  reads), taken when the statement begins and when it ends.  With
 *	  track_counts off there is no such count: the rows the statement's
 *	  command inserted are counted in the table instead.  Write keys are
 *	  redacted by the payload's type (redacted_text.c).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "pg_cdp.h"
#include "stats.h"
#include "workers.h"

/* a statement inserting into the inbox, from its BEFORE trigger on */
typedef struct QueueStatement
{
	SubTransactionId subid;		/* the subtransaction it runs in */
	CommandId	cid;			/* the command its rows carry */
	bool		counted;		/* PostgreSQL counts the table's inserts */
	int64		inserted;		/* that count as the statement began */
	int64		nested;			/* rows of statements run inside it */
} QueueStatement;

/* statements in progress, innermost last (of transaction stack_lxid) */
static QueueStatement *stack = NULL;
static int	depth = 0;
static int	maxdepth = 0;
static LocalTransactionId stack_lxid = InvalidLocalTransactionId;

/*
 * The tuples inserted into rel by this transaction so far, as PostgreSQL
 * counts them (attempted inserts: a subtransaction rolled back keeps its
 * count); false when it does not count them (track_counts is off).
 */
static bool
InsertedSoFar(Relation rel, int64 *inserted)
{
	PgStat_TableXactStatus *trans;

	if (!pgstat_should_count_relation(rel))
		return false;
	*inserted = rel->pgstat_info->t_counts.t_tuples_inserted;
	for (trans = rel->pgstat_info->trans; trans != NULL; trans = trans->upper)
		*inserted += trans->tuples_inserted;
	return true;
}

/*
 * Without PostgreSQL's count: the rows of rel this transaction inserted
 * with command cid, found by reading the table (the inbox is short when it
 * is drained).
 */
static int64
RowsOfCommand(Relation rel, CommandId cid)
{
	TableScanDesc scan = table_beginscan(rel, SnapshotAny, 0, NULL);
	HeapTuple	tuple;
	int64		rows = 0;

	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		HeapTupleHeader h = tuple->t_data;

		if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(h)) &&
			HeapTupleHeaderGetCmin(h) == cid)
			rows++;
	}
	table_endscan(scan);
	return rows;
}

static void
CheckTrigger(FunctionCallInfo fcinfo, bool before, const char *name)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		TRIGGER_FIRED_BEFORE(trigdata->tg_event) != before)
		elog(ERROR, "%s: must be an INSERT statement trigger fired %s", name,
			 before ? "before" : "after");
}

PG_FUNCTION_INFO_V1(cdp_inbox_statement_begins);

/* BEFORE INSERT statement trigger on cdp.inbox: note the count so far */
Datum
cdp_inbox_statement_begins(PG_FUNCTION_ARGS)
{
	Relation	rel;
	QueueStatement *s;

	CheckTrigger(fcinfo, true, "cdp_inbox_statement_begins");
	rel = ((TriggerData *) fcinfo->context)->tg_relation;
	if (stack_lxid != MyProc->lxid)
	{
		depth = 0;				/* what an earlier transaction left */
		stack_lxid = MyProc->lxid;
	}
	if (depth == maxdepth)
	{
		maxdepth = Max(4, maxdepth * 2);
		if (stack == NULL)
			stack = MemoryContextAlloc(TopMemoryContext, sizeof(QueueStatement) * maxdepth);
		else
			stack = repalloc(stack, sizeof(QueueStatement) * maxdepth);
	}
	s = &stack[depth++];
	s->subid = GetCurrentSubTransactionId();
	s->cid = GetCurrentCommandId(false);
	s->counted = InsertedSoFar(rel, &s->inserted);
	s->nested = 0;
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(cdp_inbox_rows_queued);

/*
 * AFTER INSERT statement trigger on cdp.inbox: bound and count the rows
 * the statement queued, and wake a worker when the transaction commits.
 * Rows that statements run inside this one queued (a trigger's) are
 * theirs to count; statements that failed inside it, in a subtransaction
 * rolled back, left their entries above this one's.
 */
Datum
cdp_inbox_rows_queued(PG_FUNCTION_ARGS)
{
	Relation	rel;
	SubTransactionId subid = GetCurrentSubTransactionId();
	QueueStatement *s = NULL;
	CommandId	cid;
	int64		now;
	int64		rows;

	CheckTrigger(fcinfo, false, "cdp_inbox_rows_queued");
	rel = ((TriggerData *) fcinfo->context)->tg_relation;
	if (stack_lxid != MyProc->lxid)
		depth = 0;
	while (depth > 0 && stack[depth - 1].subid > subid)
		depth--;
	if (depth > 0 && stack[depth - 1].subid == subid)
		s = &stack[--depth];

	cid = s != NULL ? s->cid : GetCurrentCommandId(false);
	if (s != NULL && s->counted && InsertedSoFar(rel, &now))
		rows = now - s->inserted - s->nested;
	else
		rows = RowsOfCommand(rel, cid);
	if (depth > 0 && stack[depth - 1].counted)
		stack[depth - 1].nested += rows + (s != NULL ? s->nested : 0);

	if (rows > 0)
	{
		CdpStatsInboxRowsQueued(rel, rows, cid);
		CdpWakeWorkerAtCommit();
	}
	return PointerGetDatum(NULL);
}
