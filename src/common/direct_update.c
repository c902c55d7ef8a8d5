/*
 * direct_update.c
 *	  Rewriting rows of one of pg_cdp's own tables, found by their bigint
 *	  primary key, without an UPDATE statement: for rows this transaction
 *	  holds locked (or made), which nobody else can change meanwhile.  An
 *	  ingest worker adds each batch's event counts to about a thousand
 *	  profile records; as UPDATE ... FROM unnest(...) the statement's
 *	  planning, join and per-row executor work cost as much as the updates.
 *
 *	  Only a table that needs nothing else is written this way (see
 *	  direct_insert.c: no triggers, rules, row-level security, CHECK
 *	  constraints or stored generated columns, UPDATE allowed to the current
 *	  user).  Otherwise the caller runs its statement.  A new row version
 *	  off its page gets its index entries as UPDATE gives them.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

#include "spi_util.h"

struct CdpDirectUpdate
{
	Relation	rel;
	Relation	pkey;
	IndexScanDesc scan;
	EState	   *estate;
	ResultRelInfo *rri;
	AttrNumber	keycol;			/* the primary key's column */
	TupleTableSlot *found;		/* the row found last */
	TupleTableSlot *stored;		/* its new version */
	Datum	   *values;			/* the found row's columns, changed by the caller */
	bool	   *nulls;
};

/* the primary key of rel if it is one bigint column, else InvalidOid */
static Oid
BigintPrimaryKey(Relation rel)
{
	Oid			pkey = RelationGetPrimaryKeyIndex(rel);
	Relation	index;
	bool		ok;

	if (!OidIsValid(pkey))
		return InvalidOid;
	index = index_open(pkey, AccessShareLock);
	ok = index->rd_index->indnkeyatts == 1 &&
		TupleDescAttr(RelationGetDescr(index), 0)->atttypid == INT8OID;
	index_close(index, AccessShareLock);
	return ok ? pkey : InvalidOid;
}

/*
 * The index in a found row's columns of relid's column name, when it is of
 * type typid; -1 otherwise (the caller then runs its statement, which
 * reports what is wrong).
 */
int
CdpDirectUpdateColumn(Oid relid, const char *name, Oid typid)
{
	AttrNumber	attno = get_attnum(relid, name);

	if (attno <= 0 || get_atttype(relid, attno) != typid)
		return -1;
	return attno - 1;
}

/*
 * Open relid to rewrite rows by primary key; NULL, having locked nothing
 * more than RowExclusiveLock, when the table needs an UPDATE statement.
 */
CdpDirectUpdate *
CdpBeginDirectUpdate(Oid relid)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	CdpDirectUpdate *u;
	Oid			pkey;
	int			natts = RelationGetDescr(rel)->natts;

	if (!CdpIsPlainTarget(rel, ACL_UPDATE) || !OidIsValid(pkey = BigintPrimaryKey(rel)))
	{
		table_close(rel, NoLock);
		return NULL;
	}
	CheckCmdReplicaIdentity(rel, CMD_UPDATE);
	u = palloc0(sizeof(CdpDirectUpdate));
	u->rel = rel;
	u->pkey = index_open(pkey, RowExclusiveLock);
	u->keycol = u->pkey->rd_index->indkey.values[0];
	u->estate = CreateExecutorState();
	u->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(u->rri, rel, 0, NULL, 0);
	ExecOpenIndices(u->rri, false);
	u->found = table_slot_create(rel, NULL);
	u->stored = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	u->values = palloc(sizeof(Datum) * natts);
	u->nulls = palloc(sizeof(bool) * natts);

	/* earlier commands' changes are the versions found */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	u->scan = index_beginscan(rel, u->pkey, GetActiveSnapshot(), 1, 0);
	u->estate->es_output_cid = GetCurrentCommandId(true);
	return u;
}

/*
 * The row whose primary key is key, its columns (in the table's order)
 * in *values and *nulls for the caller to change before
 * CdpDirectUpdateStore; false if there is none.
 */
bool
CdpDirectUpdateFind(CdpDirectUpdate *u, int64 key, Datum **values, bool **nulls)
{
	return CdpDirectUpdateFindAt(u, key, NULL, values, nulls);
}

/*
 * The version at *where, when it is the row with that key this rewrite
 * sees: a row the transaction holds locked, whose place it learnt then, is
 * fetched there without a probe of the index.  Any other version there (a
 * later one of this transaction's, a place reused) is not visible or holds
 * another key.
 */
static bool
FetchAt(CdpDirectUpdate *u, int64 key, ItemPointer where)
{
	HeapTupleData tuple;
	Buffer		buffer;
	bool		isnull;

	tuple.t_self = *where;
	if (!heap_fetch(u->rel, GetActiveSnapshot(), &tuple, &buffer, false))
		return false;
	ExecStorePinnedBufferHeapTuple(&tuple, u->found, buffer);
	if (DatumGetInt64(slot_getattr(u->found, u->keycol, &isnull)) == key && !isnull)
		return true;
	ExecClearTuple(u->found);
	return false;
}

/* CdpDirectUpdateFind, trying first where (when valid) the row was */
bool
CdpDirectUpdateFindAt(CdpDirectUpdate *u, int64 key, ItemPointer where, Datum **values,
					  bool **nulls)
{
	ScanKeyData skey;
	int			natts = RelationGetDescr(u->rel)->natts;

	if (where == NULL || !ItemPointerIsValid(where) || !FetchAt(u, key, where))
	{
		ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(key));
		index_rescan(u->scan, &skey, 1, NULL, 0);
		if (!index_getnext_slot(u->scan, ForwardScanDirection, u->found))
			return false;
	}
	slot_getallattrs(u->found);
	memcpy(u->values, u->found->tts_values, sizeof(Datum) * natts);
	memcpy(u->nulls, u->found->tts_isnull, sizeof(bool) * natts);
	*values = u->values;
	*nulls = u->nulls;
	return true;
}

/* write the row found last with the columns as the caller changed them */
void
CdpDirectUpdateStore(CdpDirectUpdate *u)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(u->rel), u->values, u->nulls);
	ItemPointerData tid = u->found->tts_tid;

	/* the row is this transaction's to change: nobody else can have */
	simple_heap_update(u->rel, &tid, tuple);
	if (u->rri->ri_NumIndices > 0 && !HeapTupleIsHeapOnly(tuple))
	{
		ExecStoreHeapTuple(tuple, u->stored, false);
		list_free(ExecInsertIndexTuples(u->rri, u->stored, u->estate, true, false, NULL, NIL));
		ExecClearTuple(u->stored);
		ResetPerTupleExprContext(u->estate);
	}
	heap_freetuple(tuple);
	ExecClearTuple(u->found);
}

/* end the rewriting: later commands see the new versions */
void
CdpEndDirectUpdate(CdpDirectUpdate *u)
{
	index_endscan(u->scan);
	PopActiveSnapshot();
	ExecDropSingleTupleTableSlot(u->found);
	ExecDropSingleTupleTableSlot(u->stored);
	ExecCloseIndices(u->rri);
	FreeExecutorState(u->estate);
	index_close(u->pkey, NoLock);
	table_close(u->rel, NoLock);
	pfree(u->values);
	pfree(u->nulls);
	pfree(u);
	CommandCounterIncrement();
}
