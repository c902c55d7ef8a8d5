/*
 * process.c
 *	  cdp.process_inbox(): take queued payloads from cdp.inbox in batches and
 *	  carry each message through validation, partition routing, messageId
 *	  deduplication and storage, dead-lettering what cannot be stored.
 *
 *	  A batch runs in a subtransaction.  If it fails with an error that a
 *	  particular message can cause (bad data, a program limit), the batch is
 *	  rolled back and retried one inbox row at a time, so a poison message
 *	  becomes a dead letter and its neighbours are still stored.  Errors a
 *	  retry can cure (cancel, deadlock, out of memory) are re-thrown and the
 *	  whole transaction, inbox rows included, rolls back.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"

typedef struct InboxRow
{
	int64		id;
	char	   *payload;
	int			len;
	char	   *source;
	TimestampTz received_at;
} InboxRow;

typedef struct BatchContext
{
	CdpPartitionConfig config;
	TimestampTz retention_horizon;
} BatchContext;

/* memory kept by the batch context between batches */
#define BATCH_KEEPER_BYTES	(16 * 1024 * 1024)

static SPIPlanPtr take_plan = NULL;

static SPIPlanPtr
TakePlan(void)
{
	if (take_plan == NULL)
	{
		Oid			argtypes[2] = {INT4OID, INT8OID};
		SPIPlanPtr	plan;

		/*
		 * SKIP LOCKED lets several sessions and workers drain one inbox.
		 * "id > $2" starts after this call's previous batch: the rows it
		 * deleted are still in the index until commit, and rescanning them
		 * would make a long call quadratic.
		 */
		plan = SPI_prepare("DELETE FROM cdp.inbox WHERE id = ANY (ARRAY("
						   "SELECT id FROM cdp.inbox WHERE id > $2 ORDER BY id LIMIT $1 "
						   "FOR UPDATE SKIP LOCKED)) "
						   "RETURNING id, payload, source, received_at",
						   2, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		take_plan = plan;
	}
	return take_plan;
}

static int
CompareRowIds(const void *a, const void *b)
{
	const InboxRow *ra = a;
	const InboxRow *rb = b;

	if (ra->id == rb->id)
		return 0;
	return ra->id < rb->id ? -1 : 1;
}

/*
 * Remove up to want rows with ids above after_id from the inbox; copies them
 * into the current context, sorted by id.
 */
static InboxRow *
TakeInboxRows(int want, int64 after_id, int *nrows)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		args[2] = {Int32GetDatum(want), Int64GetDatum(after_id)};
	InboxRow   *rows;
	int			rc;

	rc = SPI_execute_plan(TakePlan(), args, NULL, false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "taking rows from cdp.inbox failed: %s", SPI_result_code_string(rc));

	*nrows = (int) SPI_processed;
	rows = palloc(sizeof(InboxRow) * Max(*nrows, 1));
	for (int i = 0; i < *nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		rows[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		d = SPI_getbinval(tup, desc, 2, &isnull);
		rows[i].payload = isnull ? pstrdup("") : TextDatumGetCString(d);
		rows[i].len = strlen(rows[i].payload);
		rows[i].source = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		rows[i].received_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(rows, *nrows, sizeof(InboxRow), CompareRowIds);
	return rows;
}

/* The pipeline for a set of inbox rows; returns how many messages they held. */
static int
ProcessRows(InboxRow *rows, int nrows, const BatchContext *bc)
{
	List	   *all = NIL;
	CdpMessage **msgs;
	int			n;
	ListCell   *lc;

	for (int i = 0; i < nrows; i++)
		all = list_concat(all, CdpExpandPayload(rows[i].id, rows[i].payload, rows[i].len,
												rows[i].source, rows[i].received_at));
	n = list_length(all);
	msgs = palloc(sizeof(CdpMessage *) * Max(n, 1));
	n = 0;
	foreach(lc, all)
		msgs[n++] = lfirst(lc);

	for (int i = 0; i < n; i++)
		CdpValidateMessage(msgs[i], bc->retention_horizon);
	CdpRouteEvents(msgs, n, &bc->config);
	CdpDeduplicate(msgs, n);
	CdpStoreEvents(msgs, n);
	CdpWriteDeadLetters(msgs, n);
	return n;
}

/*
 * Errors a message's content can cause: data exceptions, integrity
 * violations and program limits (stack depth from absurd nesting).
 */
static bool
IsMessageError(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION ||
		category == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

/*
 * Run ProcessRows in a subtransaction.  Returns -1 after rolling back for an
 * error a message can cause (its text in *reason); re-throws any other.
 */
static int
TryProcessRows(InboxRow *rows, int nrows, const BatchContext *bc, char **reason)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int result = -1;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		result = ProcessRows(rows, nrows, bc);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (!IsMessageError(edata->sqlerrcode))
			ReThrowError(edata);
		*reason = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
		result = -1;
	}
	PG_END_TRY();
	return result;
}

static int64
ProcessBatch(InboxRow *rows, int nrows, const BatchContext *bc)
{
	char	   *reason;
	int			n = TryProcessRows(rows, nrows, bc, &reason);
	int64		total = 0;

	if (n >= 0)
		return n;

	/* some row poisons the batch: find it by going one row at a time */
	for (int i = 0; i < nrows; i++)
	{
		n = TryProcessRows(&rows[i], 1, bc, &reason);
		if (n < 0)
		{
			CdpWriteDeadLetter(rows[i].payload, rows[i].source, rows[i].received_at,
							   "processing_error", reason);
			n = 1;
		}
		total += n;
	}
	return total;
}

PG_FUNCTION_INFO_V1(cdp_process_inbox);

/*
 * cdp.process_inbox(max_messages): process queued inbox rows in this
 * session's transaction, in batches of cdp.batch_size; returns how many
 * messages were taken (stored, deduplicated or dead-lettered).
 */
Datum
cdp_process_inbox(PG_FUNCTION_ARGS)
{
	int64		limit = PG_ARGISNULL(0) ? -1 : PG_GETARG_INT32(0);
	int64		taken = 0;
	int64		messages = 0;
	int64		last_id = 0;
	MemoryContext caller_cxt = CurrentMemoryContext;
	MemoryContext batch_cxt;
	BatchContext bc;

	if (limit < 0 && !PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must not be negative")));

	/*
	 * A batch needs about 15 MB; a kept first block of that size is reused
	 * after every reset instead of going back to the kernel and faulting in
	 * again (that alone cost a fifth of the processing time).
	 */
	batch_cxt = AllocSetContextCreate(caller_cxt, "cdp inbox batch",
									  BATCH_KEEPER_BYTES, BATCH_KEEPER_BYTES,
									  ALLOCSET_DEFAULT_MAXSIZE);
	SPI_connect();
	MemoryContextSwitchTo(batch_cxt);
	CdpLoadPartitionConfig(&bc.config);
	bc.retention_horizon = CdpRetentionHorizon(&bc.config, GetCurrentTransactionStartTimestamp());

	while (limit < 0 || taken < limit)
	{
		int			want = cdp_batch_size;
		int			nrows;
		InboxRow   *rows;

		if (limit >= 0)
			want = (int) Min((int64) want, limit - taken);
		MemoryContextSwitchTo(batch_cxt);
		rows = TakeInboxRows(want, last_id, &nrows);
		if (nrows == 0)
			break;
		last_id = rows[nrows - 1].id;
		messages += ProcessBatch(rows, nrows, &bc);
		taken += nrows;
		MemoryContextReset(batch_cxt);
		CHECK_FOR_INTERRUPTS();
	}

	MemoryContextSwitchTo(caller_cxt);
	SPI_finish();
	MemoryContextDelete(batch_cxt);
	PG_RETURN_INT64(messages);
}
