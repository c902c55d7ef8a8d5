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
#include "identity.h"
#include "spi_util.h"

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
static SPIPlanPtr take_one_plan = NULL;

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
		all = list_concat(all, CdpExpandFromSource(rows[i].id, rows[i].payload, rows[i].len,
												   rows[i].source, rows[i].received_at));
	n = list_length(all);
	msgs = palloc(sizeof(CdpMessage *) * Max(n, 1));
	n = 0;
	foreach(lc, all)
		msgs[n++] = lfirst(lc);

	for (int i = 0; i < n; i++)
		CdpValidateMessage(msgs[i], bc->retention_horizon);
	CdpRouteEvents(msgs, n, &bc->config);
	CdpCheckEventConstraints(msgs, n);
	CdpDeduplicate(msgs, n);
	CdpResolveIdentities(msgs, n);
	CdpStoreEvents(msgs, n);
	CdpWriteDeadLetters(msgs, n);
	return n;
}

typedef enum BatchOutcome
{
	BATCH_DONE,					/* processed and kept */
	BATCH_POISONED,				/* rolled back: some row's content raised an error */
	BATCH_CONFLICT				/* rolled back: a deadlock with another session */
} BatchOutcome;

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
 * Take rows (take(arg) returns them) and process them in one subtransaction.
 * On an error a message can cause, or a deadlock with another session, the
 * subtransaction rolls back (the rows return to the inbox) and the outcome
 * says which; any other error is re-thrown.
 */
static BatchOutcome
TryBatch(InboxRow *(*take) (void *arg, int *nrows), void *arg, const BatchContext *bc,
		 InboxRow **rows, int *nrows, int64 *messages, char **reason)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile BatchOutcome outcome = BATCH_DONE;

	*nrows = 0;
	*messages = 0;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		*rows = take(arg, nrows);
		if (*nrows > 0)
			*messages = ProcessRows(*rows, *nrows, bc);
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
		if (edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED)
			outcome = BATCH_CONFLICT;
		else if (IsMessageError(edata->sqlerrcode))
			outcome = BATCH_POISONED;
		else
			ReThrowError(edata);
		*reason = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return outcome;
}

typedef struct TakeNext
{
	int			want;
	int64		after_id;
} TakeNext;

static InboxRow *
TakeNextRows(void *arg, int *nrows)
{
	TakeNext   *t = arg;

	return TakeInboxRows(t->want, t->after_id, nrows);
}

static InboxRow *
TakeOneRow(void *arg, int *nrows)
{
	InboxRow   *row = arg;
	Datum		id = Int64GetDatum(row->id);
	Oid			type = INT8OID;

	/* it may have gone to another session meanwhile: then there is nothing to do */
	*nrows = (int) CdpExecPlan(CdpPlan(&take_one_plan,
									   "DELETE FROM cdp.inbox WHERE id = (SELECT id FROM cdp.inbox "
									   "WHERE id = $1 FOR UPDATE SKIP LOCKED)",
									   1, &type),
							   &id, NULL, SPI_OK_DELETE);
	return row;
}

/*
 * Some row poisoned the batch: go one row at a time, and dead-letter the
 * rows that fail alone.  Returns false if a deadlock stopped it.
 */
static bool
ProcessRowByRow(InboxRow *rows, int nrows, const BatchContext *bc, int64 *messages)
{
	for (int i = 0; i < nrows; i++)
	{
		InboxRow   *one;
		int			ntaken;
		int64		n;
		char	   *reason;
		BatchOutcome outcome = TryBatch(TakeOneRow, &rows[i], bc, &one, &ntaken, &n, &reason);

		if (outcome == BATCH_CONFLICT)
			return false;
		if (outcome == BATCH_POISONED)
		{
			Datum		id = Int64GetDatum(rows[i].id);
			Oid			type = INT8OID;

			if (CdpExecPlan(CdpPlan(&take_one_plan,
									"DELETE FROM cdp.inbox WHERE id = (SELECT id FROM cdp.inbox "
									"WHERE id = $1 FOR UPDATE SKIP LOCKED)",
									1, &type),
							&id, NULL, SPI_OK_DELETE) == 1)
			{
				CdpWriteDeadLetter(rows[i].payload, rows[i].source, rows[i].received_at,
								   "processing_error", reason);
				n = 1;
			}
		}
		*messages += n;
	}
	return true;
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
		TakeNext	next = {cdp_batch_size, last_id};
		int			nrows;
		InboxRow   *rows;
		int64		n;
		char	   *reason;
		BatchOutcome outcome;

		if (limit >= 0)
			next.want = (int) Min((int64) next.want, limit - taken);
		MemoryContextSwitchTo(batch_cxt);
		outcome = TryBatch(TakeNextRows, &next, &bc, &rows, &nrows, &n, &reason);
		if (outcome == BATCH_POISONED)
		{
			if (!ProcessRowByRow(rows, nrows, &bc, &n))
				outcome = BATCH_CONFLICT;
		}
		if (outcome == BATCH_CONFLICT)
		{
			/* waiting on would deadlock: keep what is done, leave the rest queued */
			ereport(NOTICE,
					(errmsg("cdp.process_inbox stopped early to avoid a deadlock with another session"),
					 errdetail("The remaining messages stay in cdp.inbox for the next call.")));
			break;
		}
		if (nrows == 0)
			break;
		last_id = rows[nrows - 1].id;
		messages += n;
		taken += nrows;
		MemoryContextReset(batch_cxt);
		CHECK_FOR_INTERRUPTS();
	}

	MemoryContextSwitchTo(caller_cxt);
	SPI_finish();
	MemoryContextDelete(batch_cxt);
	PG_RETURN_INT64(messages);
}
