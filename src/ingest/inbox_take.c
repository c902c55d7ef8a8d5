/*
 * inbox_take.c
 *	  Taking rows from cdp.inbox for processing: the next rows in id order,
 *	  each deleted as it is taken, skipping what another transaction holds
 *	  (locked, or deleted or updated and not yet committed: a worker's batch,
 *	  cdp.forget), as DELETE ... FOR UPDATE SKIP LOCKED would.
 *
 *	  Rows are deleted here, by TID, in one ordered pass over the inbox's
 *	  primary key: locking each row first and deleting it in a second
 *	  statement wrote two WAL records a row and ran a sort, a tuplestore and a
 *	  TID scan per batch, a seventh of the processing time of small messages.
 *	  A row is locked first only when someone holds it, which is what SKIP
 *	  LOCKED decides on (a lock of this transaction's own is no obstacle).
 *	  Where a delete must do more than remove the row (a DELETE trigger or
 *	  rule users added, row-level security, privileges the caller lacks) the
 *	  rows are taken with that SQL statement instead.  pg_cdp's own statement
 *	  trigger, inbox_recount, counts deletions other than processing's and is
 *	  not needed here (the stats count taken rows themselves).
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_coerce.h"
#include "rewrite/prs2lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "stats.h"
#include "workers.h"

/* source names are at most 63 bytes; this many characters say a longer one is unknown */
#define SOURCE_PREFIX_CHARS	128

/* the inbox columns a batch reads */
typedef struct InboxColumns
{
	AttrNumber	id;
	AttrNumber	payload;
	AttrNumber	source;
	AttrNumber	received_at;
} InboxColumns;

static SPIPlanPtr take_plan = NULL;

static SPIPlanPtr
TakePlan(void)
{
	if (take_plan == NULL)
	{
		Oid			argtypes[6] = {INT4OID, INT8OID, INT4OID, INT8OID, INT4OID, INT8OID};
		SPIPlanPtr	plan;

		/*
		 * The SQL form of TakeDirectly, for an inbox whose deletes must go
		 * through the executor.  "id > $2" starts after this call's previous
		 * batch; rows are taken while the text before them is under the
		 * budget $4; a row over the request limit $3 counts as $3 and only
		 * its first $5 characters are read; "id <= $6" lets a worker take one
		 * row it knows.
		 */
		plan = SPI_prepare("DELETE FROM cdp.inbox WHERE ctid = ANY (ARRAY("
						   "SELECT ctid FROM ("
						   "SELECT ctid, sum(len) OVER (ORDER BY id) - len AS before FROM ("
						   "SELECT ctid, id, least(coalesce(octet_length(payload), 0), $3) AS len "
						   "FROM cdp.inbox WHERE id > $2 AND id <= $6 ORDER BY id LIMIT $1 "
						   "FOR UPDATE SKIP LOCKED) c) s "
						   "WHERE before < $4)) "
						   "RETURNING id, CASE WHEN octet_length(payload) > $3 "
						   "THEN substr(payload, 1, $5) ELSE payload END, "
						   "octet_length(payload), left(source, 128), received_at",
						   6, argtypes);
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
	const CdpInboxRow *ra = a;
	const CdpInboxRow *rb = b;

	if (ra->id == rb->id)
		return 0;
	return ra->id < rb->id ? -1 : 1;
}

/* TakeInboxRows through the DELETE statement (TakePlan) */
static CdpInboxRow *
TakeBySql(int want, int64 after_id, int64 last_id, int64 budget, int *nrows)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		args[6] = {Int32GetDatum(want), Int64GetDatum(after_id),
		Int32GetDatum(cdp_max_request_bytes), Int64GetDatum(budget),
	Int32GetDatum(CDP_TOO_LARGE_PREFIX_BYTES), Int64GetDatum(last_id)};
	CdpInboxRow *rows;
	int			rc;

	rc = SPI_execute_plan(TakePlan(), args, NULL, false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "taking rows from cdp.inbox failed: %s", SPI_result_code_string(rc));

	*nrows = (int) SPI_processed;
	rows = palloc0(sizeof(CdpInboxRow) * Max(*nrows, 1));
	for (int i = 0; i < *nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		CdpInboxRow *row = &rows[i];
		bool		isnull;
		Datum		d;

		row->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		d = SPI_getbinval(tup, desc, 2, &isnull);
		row->payload = isnull ? pstrdup("") : TextDatumGetCString(d);
		row->len = strlen(row->payload);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		row->size = isnull ? 0 : DatumGetInt32(d);
		if (row->size > cdp_max_request_bytes)
		{
			row->payload = CdpTextPrefix(row->payload, row->len, CDP_TOO_LARGE_PREFIX_BYTES);
			row->len = strlen(row->payload);
		}
		row->source = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		row->received_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(rows, *nrows, sizeof(CdpInboxRow), CompareRowIds);
	return rows;
}

/*
 * Whether rows can be deleted from the inbox directly: a plain table whose
 * deletes fire nothing but pg_cdp's own statement trigger (and that has no
 * other TRUNCATE trigger, which Citus gives a table it manages), without
 * rules or row-level security, and which the current user may read and
 * delete from (the SQL statement raises the usual errors otherwise).  Sets
 * *pkey to its primary key on id and *cols to the columns read.
 */
static bool
CanTakeDirectly(Relation rel, Oid *pkey, InboxColumns *cols)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trig = rel->trigdesc;
	Relation	index;
	bool		on_id;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rules != NULL ||
		check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED ||
		pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK ||
		pg_class_aclcheck(relid, GetUserId(), ACL_DELETE) != ACLCHECK_OK)
		return false;
	if (trig != NULL)
	{
		for (int i = 0; i < trig->numtriggers; i++)
		{
			Trigger    *t = &trig->triggers[i];

			/* (a TRUNCATE trigger is what Citus gives a table it manages) */
			if ((TRIGGER_FOR_DELETE(t->tgtype) || TRIGGER_FOR_TRUNCATE(t->tgtype)) &&
				strcmp(t->tgname, "inbox_recount") != 0)
				return false;
		}
	}
	cols->id = SPI_fnumber(desc, "id");
	cols->payload = SPI_fnumber(desc, "payload");
	cols->source = SPI_fnumber(desc, "source");
	cols->received_at = SPI_fnumber(desc, "received_at");
	if (cols->id <= 0 || cols->payload <= 0 || cols->source <= 0 || cols->received_at <= 0 ||
		TupleDescAttr(desc, cols->id - 1)->atttypid != INT8OID ||
		!IsBinaryCoercible(TupleDescAttr(desc, cols->payload - 1)->atttypid, TEXTOID) ||
		TupleDescAttr(desc, cols->source - 1)->atttypid != TEXTOID ||
		TupleDescAttr(desc, cols->received_at - 1)->atttypid != TIMESTAMPTZOID)
		return false;
	*pkey = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(*pkey))
		return false;
	index = index_open(*pkey, AccessShareLock);
	on_id = index->rd_rel->relam == BTREE_AM_OID &&
		index->rd_index->indnatts == 1 &&
		index->rd_index->indkey.values[0] == cols->id;
	index_close(index, AccessShareLock);
	return on_id;
}

/*
 * Delete the row the slot holds unless another transaction holds it.  The
 * delete does not wait: a row being changed by someone comes back as
 * TM_BeingModified, and is then locked as FOR UPDATE SKIP LOCKED would (a
 * lock this transaction holds itself lets it be taken, anyone else's skips
 * it).  Whether the row was taken.
 */
static bool
DeleteUnlessHeld(Relation rel, TupleTableSlot *slot, TupleTableSlot *locked,
				 Snapshot snapshot, CommandId cid)
{
	TM_FailureData tmfd;
	TM_Result	result;

	result = table_tuple_delete(rel, &slot->tts_tid, cid, snapshot, InvalidSnapshot,
								false, &tmfd, false);
	if (result != TM_BeingModified)
		return result == TM_Ok;
	result = table_tuple_lock(rel, &slot->tts_tid, snapshot, locked, cid,
							  LockTupleExclusive, LockWaitSkip, 0, &tmfd);
	if (result != TM_Ok)
		return false;
	result = table_tuple_delete(rel, &slot->tts_tid, cid, snapshot, InvalidSnapshot,
								true, &tmfd, false);
	return result == TM_Ok;
}

/*
 * Copy a taken row out of the slot: the payload (only its first
 * CDP_TOO_LARGE_PREFIX_BYTES, whole characters, if it is over
 * cdp.max_request_bytes; "" if NULL), its size, the first characters of the
 * source and the receipt time.  Returns the length the row counts for in
 * the batch's budget.
 */
static int64
CopyRow(TupleTableSlot *slot, const InboxColumns *cols, CdpInboxRow *row)
{
	bool		isnull;
	Datum		d;

	row->id = DatumGetInt64(slot_getattr(slot, cols->id, &isnull));
	d = slot_getattr(slot, cols->payload, &isnull);
	row->size = isnull ? 0 : (int64) toast_raw_datum_size(d) - VARHDRSZ;
	if (isnull)
		row->payload = pstrdup("");
	else if (row->size > cdp_max_request_bytes)
	{
		text	   *prefix = DatumGetTextPSlice(d, 0, CDP_TOO_LARGE_PREFIX_BYTES);

		row->payload = CdpTextPrefix(VARDATA_ANY(prefix), VARSIZE_ANY_EXHDR(prefix),
									 CDP_TOO_LARGE_PREFIX_BYTES);
	}
	else
		row->payload = TextDatumGetCString(d);
	row->len = strlen(row->payload);
	d = slot_getattr(slot, cols->source, &isnull);
	if (isnull)
		row->source = pstrdup("");	/* NOT NULL: only if a user dropped it */
	else
	{
		text	   *source = DatumGetTextPSlice(d, 0, SOURCE_PREFIX_CHARS * MAX_MULTIBYTE_CHAR_LEN);
		const char *s = VARDATA_ANY(source);
		int			len = VARSIZE_ANY_EXHDR(source);

		row->source = pnstrdup(s, pg_mbcharcliplen(s, len, SOURCE_PREFIX_CHARS));
	}
	row->received_at = DatumGetTimestampTz(slot_getattr(slot, cols->received_at, &isnull));
	return Min(row->size, (int64) cdp_max_request_bytes);
}

/*
 * The last id of the range held by another worker (inbox_held.c) that id
 * falls in, or 0.
 */
static int64
HeldUntil(int64 id, const int64 *first, const int64 *last, int nheld)
{
	for (int i = 0; i < nheld; i++)
		if (id >= first[i] && id <= last[i])
			return last[i];
	return 0;
}

/*
 * TakeInboxRows by deleting rows directly: one pass over the primary key
 * from after_id, with a snapshot taken as a statement would take it (after
 * this transaction's earlier commands).  The pass jumps over the rows
 * another ingest worker's batch holds, before taking any; once it has taken
 * some, it ends there.  So the range this batch publishes never spans
 * another's: a row that two batches in turn stepped over inside each
 * other's ranges could otherwise wait for as long as batches overlap.
 */
static CdpInboxRow *
TakeDirectly(Relation rel, Oid pkey, const InboxColumns *cols, int want, int64 after_id,
			 int64 last_id, int64 budget, int *nrows)
{
	CdpInboxRow *rows = palloc0(sizeof(CdpInboxRow) * Max(want, 1));
	Relation	index = index_open(pkey, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TupleTableSlot *locked = table_slot_create(rel, NULL);
	ScanKeyData keys[2];
	IndexScanDesc scan;
	Snapshot	snapshot;
	CommandId	cid;
	int64		before = 0;
	int			n = 0;
	int64		held_first[CDP_MAX_INGEST_WORKERS];
	int64		held_last[CDP_MAX_INGEST_WORKERS];
	int			nheld = CdpInboxRowsHeldByOthers(held_first, held_last);

	CheckCmdReplicaIdentity(rel, CMD_DELETE);
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	snapshot = GetActiveSnapshot();
	cid = GetCurrentCommandId(true);

	ScanKeyInit(&keys[0], 1, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after_id));
	ScanKeyInit(&keys[1], 1, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(last_id));
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	while (n < want && before < budget &&
		   index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (nheld > 0)
		{
			bool		isnull;
			int64		held = HeldUntil(DatumGetInt64(slot_getattr(slot, cols->id, &isnull)),
										 held_first, held_last, nheld);

			if (held > 0)
			{
				/* a batch never spans another's: see below */
				if (n > 0)
					break;
				ScanKeyInit(&keys[0], 1, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(held));
				index_rescan(scan, keys, 2, NULL, 0);
				continue;
			}
		}
		if (!DeleteUnlessHeld(rel, slot, locked, snapshot, cid))
			continue;
		before += CopyRow(slot, cols, &rows[n]);
		n++;
		CHECK_FOR_INTERRUPTS();
	}
	index_endscan(scan);
	PopActiveSnapshot();
	if (n > 0)
		CdpNoteInboxRowsHeld(rows[0].id, rows[n - 1].id);
	ExecDropSingleTupleTableSlot(locked);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	*nrows = n;
	return rows;
}

/*
 * Remove up to want rows with ids in (after_id, last_id], and about budget
 * bytes of text, from the inbox (a row always, if there is one); copies
 * them into the current context, sorted by id.  SPI must be connected.
 */
CdpInboxRow *
CdpTakeInboxRows(int want, int64 after_id, int64 last_id, int64 budget, int *nrows)
{
	Oid			relid = get_relname_relid("inbox", get_namespace_oid("cdp", false));
	Relation	rel;
	Oid			pkey;
	InboxColumns cols;
	CdpInboxRow *rows;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table cdp.inbox does not exist"),
				 errhint("Is the pg_cdp extension installed in this database?")));
	CdpStatsTakingFromInbox();
	rel = table_open(relid, RowExclusiveLock);
	if (CanTakeDirectly(rel, &pkey, &cols))
		rows = TakeDirectly(rel, pkey, &cols, want, after_id, last_id, budget, nrows);
	else
		rows = TakeBySql(want, after_id, last_id, budget, nrows);
	table_close(rel, NoLock);
	CdpStatsInboxTaken(*nrows);
	return rows;
}
