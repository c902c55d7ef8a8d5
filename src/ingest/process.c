/*
 * process.c
 *	  cdp.process_inbox(): take queued payloads from cdp.inbox in batches and
 *	  carry each message through validation, partition routing, messageId
 *	  deduplication, identity resolution and storage, dead-lettering what
 *	  cannot be stored.
 *
 *	  Memory is bounded whatever the rows hold.  A batch takes at most
 *	  cdp.batch_size rows and about BATCH_INPUT_BYTES of payload text (rows
 *	  over cdp.max_request_bytes are never read whole).  Messages are made and
 *	  processed a chunk at a time, at most cdp.batch_size messages standing
 *	  for CHUNK_INPUT_BYTES of input, in a memory context reset after each
 *	  chunk; an envelope's items are found by a scan of its text and parsed
 *	  chunk by chunk, so a big envelope is several chunks.
 *
 *	  A batch runs in a subtransaction and each chunk in one inside it.  A
 *	  chunk that fails with an error a message can cause (bad data, a program
 *	  limit, a constraint on cdp.events) is rolled back and retried in halves
 *	  down to the message that fails alone, which becomes a dead letter with
 *	  its own payload; its siblings are stored.  A deadlock with another
 *	  session rolls the batch back (its rows return to the inbox) and ends the
 *	  call early.  Any other error (cancel, out of memory, an integrity
 *	  violation on pg_cdp's own tables, which is a bug or a race and not bad
 *	  content) is re-thrown and the whole call rolls back, inbox rows included.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "computed_traits.h"
#include "identity.h"
#include "spi_util.h"
#include "stats.h"

/* payload text a batch takes from the inbox (and at least one row) */
#define BATCH_INPUT_BYTES	(4 * 1024 * 1024)

/*
 * Input a chunk of messages stands for: their text (an envelope item's
 * includes the context, integrations and sentAt it inherits) plus a fixed
 * overhead per message, for the structures every message needs.
 */
#define CHUNK_INPUT_BYTES	(4 * 1024 * 1024)
#define MESSAGE_OVERHEAD_BYTES 1024

/*
 * Profiles whose events' counts and seen times a call gathers before
 * writing them (see CdpNewProfileStats): about 64 bytes each.
 */
#define STATS_PROFILES		65536

/*
 * Traits and consent a call gathers before it writes them, in kilobytes
 * (see CdpStateQueueLength): at most 64 MB.
 */
#define STATE_IDENTIFIERS	65536

/* memory kept by the chunk context between chunks */
#define CHUNK_KEEPER_BYTES	(16 * 1024 * 1024)

/*
 * Memory the chunk context may hold once messages are parsed: a tree can be
 * 30 times its text (a message of many small fields), so a chunk takes fewer
 * messages when they are like that.
 */
#define CHUNK_PARSE_BYTES	(CHUNK_KEEPER_BYTES + 8 * 1024 * 1024)

/* one message of a chunk: item of row (-1: the row is one message) */
typedef struct ChunkRef
{
	CdpInboxRow *row;
	int			item;
} ChunkRef;

/* a batch on its way: the rows it took and the chunk being filled */
typedef struct Batch
{
	/* set by the caller */
	int			want;			/* rows to take at most */
	int64		after_id;		/* take rows after this id */
	int64		last_id;		/* and up to this one */
	const char *quarantine;		/* dead-letter the rows with this reason */
	bool		strict;			/* blame a message for any error it raises */
	int64	   *first_id_out;	/* where to tell the first row's id */
	CdpPartitionConfig config;
	TimestampTz retention_horizon;
	MemoryContext chunk_cxt;
	HTAB	   *stats;			/* profile stats of its committed chunks */
	CdpStateQueue *state;		/* its call's, which its chunks gather into */
	CdpTraitDeltas *traits;		/* computed trait states of their events */

	/* what it took */
	CdpInboxRow *rows;
	int			nrows;
	int64		messages;

	/* the chunk being filled */
	ChunkRef   *refs;
	int			max_refs;
	int			nrefs;
	int64		cost;
	CdpInboxRow *current;		/* row still adding messages to it */
} Batch;

/*
 * Run work(arg) in a subtransaction.  If it raises an error that catchable
 * accepts, the subtransaction is rolled back and the error comes back,
 * copied into the caller's context; any other error is re-thrown.  NULL
 * when the work succeeded.
 */
ErrorData *
CdpRunInSubtransaction(CdpSubxactWork work, void *arg, bool (*catchable) (ErrorData *))
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile caught = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		work(arg);
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
		if (!catchable(edata))
			ReThrowError(edata);
		caught = edata;
	}
	PG_END_TRY();
	return caught;
}

/* waiting on would deadlock with another session */
static bool
IsConflict(ErrorData *edata)
{
	return edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED;
}

/*
 * Whether an integrity violation was raised on one of pg_cdp's own tables
 * (identities, profiles, the messageId window, dead letters...), not on
 * cdp.events or a partition, where a constraint a user added can fail on a
 * message's content.  This is asked after the subtransaction rolled back: a
 * table that no longer exists was created in it, and processing creates
 * none but partitions of cdp.events.
 */
static bool
IsOwnTableError(ErrorData *edata)
{
	Oid			relid;
	Oid			events;

	if (edata->schema_name == NULL || edata->table_name == NULL ||
		strcmp(edata->schema_name, "cdp") != 0)
		return false;
	relid = get_relname_relid(edata->table_name, get_namespace_oid("cdp", false));
	if (!OidIsValid(relid))
		return false;
	events = CdpEventsRelid();
	if (relid == events)
		return false;
	return !(get_rel_relispartition(relid) && get_partition_parent(relid, true) == events);
}

/*
 * Errors a message's content can cause: data exceptions, program limits
 * (stack depth from absurd nesting) and integrity violations other than on
 * pg_cdp's own tables (those are a bug or a race: never a dead letter).
 */
static bool
IsMessageError(ErrorData *edata)
{
	int			category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);

	if (category == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION)
		return !IsOwnTableError(edata);
	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

/*
 * Errors that pass by themselves, whatever the message: serialization
 * failures and deadlocks, lock and statement timeouts, cancels, running out
 * of memory or disk, I/O errors.
 */
bool
CdpIsPassingError(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_SYSTEM_ERROR:
			return true;
		default:
			return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
	}
}

/*
 * Errors a chunk is rolled back for: those of its messages, and what it
 * resolved before the identity lock going stale (it is then processed
 * again, see ProcessRefs).
 */
static bool
IsChunkError(ErrorData *edata)
{
	return IsMessageError(edata) || CdpIsStaleResolution(edata);
}

/*
 * In a strict batch (a worker retrying rows one at a time after errors no
 * message explained) any error that does not pass by itself and is not on
 * pg_cdp's own tables is blamed on the message that raises it: a user's
 * trigger that raises for one event must not hold up the inbox.
 */
static bool
IsStrictMessageError(ErrorData *edata)
{
	if (IsChunkError(edata))
		return true;
	return !CdpIsPassingError(edata->sqlerrcode) &&
		ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION;
}

/* "SQLSTATE: message", as a processing_error dead letter gives it */
static char *
ErrorReason(ErrorData *edata)
{
	return psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
}

typedef struct ChunkWork
{
	Batch	   *batch;
	ChunkRef   *refs;
	int			n;
	int			made;			/* messages made so far */
	bool		direct;			/* the chunk counts straight into its batch's (empty) stats */
	HTAB	   *stats;			/* profile stats of the chunk */
	CdpTraitDeltas *traits;		/* computed trait states of its events */
} ChunkWork;

/*
 * The pipeline for messages of the batch, in the chunk context: as many of
 * the n as the chunk's memory allows (at least one), the rest are left for
 * the next chunk (work->made says how many were taken).
 */
static void
ProcessChunk(void *arg)
{
	ChunkWork  *w = arg;
	Batch	   *b = w->batch;
	CdpMessage **msgs;
	CdpPendingIdentities *pending;
	int			n = w->n;

	MemoryContextSwitchTo(b->chunk_cxt);
	w->stats = w->direct ? b->stats : CdpNewProfileStats(b->chunk_cxt);
	w->traits = CdpNewTraitDeltas(b->chunk_cxt);
	msgs = palloc(sizeof(CdpMessage *) * n);
	for (int i = 0; i < n; i++)
	{
		w->made = i + 1;
		msgs[i] = CdpRowMessage(w->refs[i].row, w->refs[i].item);

		/* parsed trees can be many times their text: stop at the budget */
		if (MemoryContextMemAllocated(b->chunk_cxt, false) > CHUNK_PARSE_BYTES)
			break;
	}
	n = w->made;
	for (int i = 0; i < n; i++)
		CdpValidateMessage(msgs[i], b->retention_horizon);
	CdpRouteEvents(msgs, n, &b->config);
	CdpCheckEventConstraints(msgs, n);
	CdpDeduplicate(msgs, n);
	CdpDropSuppressed(msgs, n);
	pending = CdpResolveIdentities(msgs, n, w->stats);
	CdpStoreProfileState(msgs, n, b->state);
	CdpStoreEvents(msgs, n);
	/* the identity lock, when new identifiers need it, only now: see there */
	CdpWriteResolvedIdentities(pending);
	CdpUpdateComputedTraits(msgs, n, w->traits);
	CdpWriteDeadLetters(msgs, n);
	CdpStatsCountOutcomes(msgs, n);
}

/* making one message again, for its processing_error dead letter */
typedef struct RemakeWork
{
	ChunkRef   *ref;
	CdpMessage *msg;
} RemakeWork;

static void
RemakeMessage(void *arg)
{
	RemakeWork *r = arg;

	r->msg = CdpRowMessage(r->ref->row, r->ref->item);
}

/*
 * The processing_error dead letter of a message that failed alone: the
 * message as it would have been stored (a batch item with what its envelope
 * gives it) if it can be made again, else its text as received.
 */
static CdpMessage *
ProcessingErrorMessage(ChunkRef *ref, ErrorData *edata)
{
	RemakeWork	r = {ref, NULL};
	char	   *reason = ErrorReason(edata);
	ErrorData  *again = CdpRunInSubtransaction(RemakeMessage, &r, IsMessageError);

	if (again == NULL && r.msg->outcome == CDP_PENDING && r.msg->item != NULL)
	{
		CdpMarkDead(r.msg, "processing_error", "%s", reason);
		return r.msg;
	}
	return CdpFailedMessage(ref->row, ref->item, "processing_error", reason);
}

/*
 * Process messages, a chunk at a time, each chunk in a subtransaction.  If
 * one of them raises an error its content can cause, go again in halves:
 * the message that fails alone becomes a processing_error dead letter with
 * its own payload, and every other one is processed as if it had not been
 * there.
 */
static void
ProcessRefs(Batch *b, ChunkRef *refs, int n)
{
	while (n > 0)
	{
		/* a batch's first chunk (most often its only one) needs no merge */
		bool		direct = hash_get_num_entries(b->stats) == 0;
		ChunkWork	w = {b, refs, n, 0, direct, NULL, NULL};
		int			state_mark = CdpStateQueueMark(b->state);
		ErrorData  *edata = CdpRunInSubtransaction(ProcessChunk, &w,
												   b->strict ? IsStrictMessageError : IsChunkError);

		if (edata == NULL)
		{
			if (!direct)
				CdpMergeProfileStats(b->stats, w.stats);
			CdpMergeTraitDeltas(b->traits, w.traits);
		}
		else
		{
			CdpStateQueueRollback(b->state, state_mark);
			if (direct)
				CdpClearProfileStats(b->stats);
		}
		MemoryContextReset(b->chunk_cxt);
		w.made = Max(w.made, 1);
		if (edata == NULL)
		{
			/* nothing failed */
		}
		else if (CdpIsStaleResolution(edata))
		{
			/* again, the same messages: resolution takes the identity lock first now */
			FreeErrorData(edata);
			continue;
		}
		else if (w.made > 1)
		{
			/* the failure is among the messages made: split them */
			ProcessRefs(b, refs, w.made / 2);
			ProcessRefs(b, refs + w.made / 2, w.made - w.made / 2);
		}
		else
		{
			MemoryContext cxt = MemoryContextSwitchTo(b->chunk_cxt);
			CdpMessage *msg = ProcessingErrorMessage(&refs[0], edata);

			CdpWriteDeadLetters(&msg, 1);
			CdpStatsCountOutcomes(&msg, 1);
			MemoryContextSwitchTo(cxt);
			MemoryContextReset(b->chunk_cxt);
		}
		if (edata != NULL)
			FreeErrorData(edata);
		refs += w.made;
		n -= w.made;
	}
}

/*
 * Process the chunk being filled.  Then the item spans of rows whose every
 * message has been processed are no longer needed.
 */
static void
FlushChunk(Batch *b)
{
	if (b->nrefs == 0)
		return;
	ProcessRefs(b, b->refs, b->nrefs);
	for (int i = 0; i < b->nrefs; i++)
	{
		CdpInboxRow *row = b->refs[i].row;

		if (row != b->current && row->items != NULL)
		{
			pfree(row->items);
			row->items = NULL;
		}
	}
	b->nrefs = 0;
	b->cost = 0;
}

static void
AddMessage(Batch *b, CdpInboxRow *row, int item)
{
	int64		cost = CdpMessageCost(row, item) + MESSAGE_OVERHEAD_BYTES;

	if (b->nrefs == b->max_refs ||
		(b->nrefs > 0 && b->cost + cost > CHUNK_INPUT_BYTES))
		FlushChunk(b);
	b->refs[b->nrefs].row = row;
	b->refs[b->nrefs].item = item;
	b->nrefs++;
	b->cost += cost;
	b->messages++;
}

static void
ScanRow(void *arg)
{
	CdpScanRow((CdpInboxRow *) arg);
}

/* a row a worker gave up on: a processing_error dead letter with its payload */
static void
QuarantineRows(Batch *b)
{
	for (int i = 0; i < b->nrows; i++)
	{
		CdpMessage *msg = CdpFailedMessage(&b->rows[i], -1, "processing_error", b->quarantine);

		CdpWriteDeadLetters(&msg, 1);
		CdpStatsCountOutcomes(&msg, 1);
		b->messages++;
	}
}

/*
 * Take the next rows and process every message they hold, a chunk at a
 * time.  A row whose scan raises an error becomes one dead letter.
 */
static void
ProcessBatch(void *arg)
{
	Batch	   *b = arg;

	b->rows = CdpTakeInboxRows(b->want, b->after_id, b->last_id, BATCH_INPUT_BYTES, &b->nrows);
	if (b->nrows > 0 && b->first_id_out != NULL)
		*b->first_id_out = b->rows[0].id;
	if (b->quarantine != NULL)
	{
		QuarantineRows(b);
		return;
	}
	b->max_refs = cdp_batch_size;
	b->refs = palloc(sizeof(ChunkRef) * b->max_refs);
	for (int i = 0; i < b->nrows; i++)
	{
		CdpInboxRow *row = &b->rows[i];
		int			n;

		if (!CdpRefuseRowSource(row) && CdpPrepareRow(row))
		{
			ErrorData  *edata = CdpRunInSubtransaction(ScanRow, row, IsMessageError);

			if (edata != NULL)
			{
				row->error_code = "processing_error";
				row->error_message = ErrorReason(edata);
				FreeErrorData(edata);
			}
		}
		b->current = row;
		n = CdpRowMessages(row);
		for (int k = 0; k < n; k++)
			AddMessage(b, row, (row->error_code != NULL || row->nitems < 0) ? -1 : k);
		CHECK_FOR_INTERRUPTS();
	}
	b->current = NULL;
	FlushChunk(b);
}

/* the batches one transaction runs: a process_inbox call or a worker's batch */
struct CdpDrain
{
	MemoryContext caller_cxt;
	MemoryContext batch_cxt;
	HTAB	   *stats;			/* profile stats of its committed batches */
	CdpStateQueue *state;		/* the same for traits and consent */
	CdpTraitDeltas *traits;		/* the same for computed traits */
	int64		last_id;		/* id of the last row taken */
	Batch		b;
};

/*
 * Start taking batches in the current transaction: in the caller's memory
 * context, with SPI connected until CdpEndDrain.
 */
CdpDrain *
CdpBeginDrain(void)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	CdpDrain   *d = palloc0(sizeof(CdpDrain));

	d->caller_cxt = caller_cxt;
	/* rows and item spans keep a first block of their own, as chunks do (below) */
	d->batch_cxt = AllocSetContextCreate(caller_cxt, "cdp inbox batch",
										 BATCH_INPUT_BYTES, BATCH_INPUT_BYTES,
										 ALLOCSET_DEFAULT_MAXSIZE);

	/*
	 * A chunk of 1000 small messages needs about 15 MB; a kept first block
	 * of that size is reused after every reset instead of going back to the
	 * kernel and faulting in again (that alone cost a fifth of the
	 * processing time).
	 */
	d->b.chunk_cxt = AllocSetContextCreate(caller_cxt, "cdp inbox chunk",
										   CHUNK_KEEPER_BYTES, CHUNK_KEEPER_BYTES,
										   ALLOCSET_DEFAULT_MAXSIZE);
	/* before any inbox row is taken: cdp.forget waits for this call, or it for forget */
	CdpLockSuppressions(false);
	d->stats = CdpNewProfileStats(caller_cxt);
	d->state = CdpNewStateQueue(caller_cxt);
	d->traits = CdpNewTraitDeltas(caller_cxt);
	SPI_connect();
	MemoryContextSwitchTo(d->batch_cxt);
	CdpLoadPartitionConfig(&d->b.config);
	d->b.retention_horizon = CdpRetentionHorizon(&d->b.config,
												 GetCurrentTransactionStartTimestamp());
	MemoryContextSwitchTo(caller_cxt);
	return d;
}

/*
 * Take up to want rows after the last ones taken and process them, in a
 * subtransaction.  With quarantine set, the rows are dead-lettered with that
 * reason instead, and only rows up to last_id are taken.  *first_id (when
 * not NULL) is set to the first row's id as soon as it is taken, so that a
 * caller whose batch failed knows which row it was on.  Returns false when
 * the batch rolled back to avoid a deadlock (nothing of it was kept).
 */
bool
CdpDrainBatch(CdpDrain *d, const CdpDrainRequest *req, CdpDrainResult *result)
{
	Batch	   *b = &d->b;
	ErrorData  *edata;
	int			state_mark;

	memset(result, 0, sizeof(*result));
	b->want = req->want;
	b->after_id = Max(d->last_id, req->after_id);
	b->last_id = req->last_id > 0 ? req->last_id : PG_INT64_MAX;
	b->quarantine = req->quarantine;
	b->strict = req->strict;
	b->first_id_out = req->first_id;
	b->rows = NULL;
	b->nrows = 0;
	b->messages = 0;
	b->nrefs = 0;
	b->cost = 0;
	MemoryContextSwitchTo(d->batch_cxt);
	b->stats = CdpNewProfileStats(d->batch_cxt);
	b->state = d->state;
	state_mark = CdpStateQueueMark(d->state);
	b->traits = CdpNewTraitDeltas(d->batch_cxt);
	edata = CdpRunInSubtransaction(ProcessBatch, b, IsConflict);
	if (edata != NULL)
	{
		CdpStateQueueRollback(d->state, state_mark);
		CdpStateQueueCommit(d->state);
		MemoryContextSwitchTo(d->caller_cxt);
		MemoryContextReset(d->batch_cxt);
		return false;
	}
	if (b->nrows > 0)
		d->last_id = b->rows[b->nrows - 1].id;
	result->rows = b->nrows;
	result->last_id = d->last_id;
	result->messages = b->messages;
	CdpStatsAdd(CDP_STAT_RECEIVED, b->messages);
	CdpMergeProfileStats(d->stats, b->stats);
	CdpStateQueueCommit(d->state);
	CdpMergeTraitDeltas(d->traits, b->traits);
	if (hash_get_num_entries(d->stats) >= STATS_PROFILES)
		CdpWriteProfileStats(d->stats);
	/* computed trait states first: recomputing profile state derives their values */
	if (CdpTraitDeltasFull(d->traits) || CdpStateQueueLength(d->state) >= STATE_IDENTIFIERS)
		CdpWriteTraitDeltas(d->traits);
	if (CdpStateQueueLength(d->state) >= STATE_IDENTIFIERS)
		CdpWriteQueuedProfileState(d->state, d->stats);
	MemoryContextSwitchTo(d->caller_cxt);
	MemoryContextReset(d->batch_cxt);
	return true;
}

/* write what the batches gathered for profiles, and let go of SPI and memory */
void
CdpEndDrain(CdpDrain *d)
{
	MemoryContextSwitchTo(d->batch_cxt);
	CdpWriteTraitDeltas(d->traits);
	/* the stats with the state: a profile record taking both is written once */
	CdpWriteQueuedProfileState(d->state, d->stats);
	MemoryContextSwitchTo(d->caller_cxt);
	SPI_finish();
	MemoryContextDelete(d->b.chunk_cxt);
	MemoryContextDelete(d->batch_cxt);
	pfree(d);
}

PG_FUNCTION_INFO_V1(cdp_process_inbox);

/*
 * cdp.process_inbox(max_messages): process queued inbox rows in this
 * session's transaction, in batches; returns how many messages were taken
 * (stored, deduplicated or dead-lettered).
 */
Datum
cdp_process_inbox(PG_FUNCTION_ARGS)
{
	int64		limit = PG_ARGISNULL(0) ? -1 : PG_GETARG_INT32(0);
	int64		taken = 0;
	int64		messages = 0;
	CdpDrain   *d;

	if (limit < 0 && !PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must not be negative")));

	d = CdpBeginDrain();
	while (limit < 0 || taken < limit)
	{
		CdpDrainRequest req = {0};
		CdpDrainResult result;

		req.want = cdp_batch_size;
		if (limit >= 0)
			req.want = (int) Min((int64) req.want, limit - taken);
		if (!CdpDrainBatch(d, &req, &result))
		{
			/* keep what is done, leave the rest queued */
			ereport(NOTICE,
					(errmsg("cdp.process_inbox stopped early to avoid a deadlock with another session"),
					 errdetail("The remaining messages stay in cdp.inbox for the next call.")));
			break;
		}
		if (result.rows == 0)
			break;
		messages += result.messages;
		taken += result.rows;
		CHECK_FOR_INTERRUPTS();
	}

	/* the counts of every committed batch, including one that stopped early */
	CdpEndDrain(d);
	PG_RETURN_INT64(messages);
}
