/*
 * direct_insert.c
 *	  Writing rows into one of pg_cdp's own tables without an INSERT
 *	  statement: the rows in one multi-insert, then their index entries, the
 *	  way COPY writes them.  Processing inserts a few rows per message into
 *	  its bookkeeping tables (messageIds, identities, profiles, evidence); as
 *	  INSERT ... SELECT unnest(...) each batch planned and ran a statement and
 *	  wrote a WAL record per row, a tenth of the processing time of small
 *	  messages.
 *
 *	  Only a table that needs nothing else is written this way: no triggers
 *	  (Citus gives a table it manages one, so its shell is never written),
 *	  rules, row-level security or stored generated columns (things users
 *	  may have added), INSERT allowed to the current user.  Otherwise the
 *	  caller runs its statement.  Columns the caller does not give get their
 *	  defaults; NOT NULLs, CHECK constraints and unique indexes are checked
 *	  as INSERT checks them, with the same errors.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "spi_util.h"

/*
 * Whether rel needs nothing an INSERT (or UPDATE: mode) statement would do
 * beyond rows and index entries (and, for an INSERT, checking constraints:
 * the direct insert does).
 */
bool
CdpIsPlainTarget(Relation rel, AclMode mode)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	Oid			relid = RelationGetRelid(rel);

	return rel->rd_rel->relkind == RELKIND_RELATION && rel->trigdesc == NULL &&
		rel->rd_rules == NULL &&
		(constr == NULL ||
		 ((mode == ACL_INSERT || constr->num_check == 0) && !constr->has_generated_stored)) &&
		check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED &&
		pg_class_aclcheck(relid, GetUserId(), mode) == ACLCHECK_OK;
}

/*
 * Map the caller's columns to the table's attributes, checking their types;
 * false if one is missing or of another type.
 */
static bool
MapColumns(TupleDesc desc, const char *const *cols, const Oid *types, int ncols,
		   AttrNumber *attnos)
{
	for (int c = 0; c < ncols; c++)
	{
		attnos[c] = InvalidAttrNumber;
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);

			if (!att->attisdropped && strcmp(NameStr(att->attname), cols[c]) == 0)
			{
				attnos[c] = a + 1;
				break;
			}
		}
		if (attnos[c] == InvalidAttrNumber ||
			TupleDescAttr(desc, attnos[c] - 1)->atttypid != types[c])
			return false;
	}
	return true;
}

/* an open direct insert into one table (see CdpBeginDirectInsert) */
struct CdpDirectInsert
{
	Relation	rel;
	int			ncols;
	AttrNumber *attnos;			/* the table's attribute of each given column */
	EState	   *estate;
	ResultRelInfo *rri;
	ExprState **defaults;		/* per attribute: the default of a column not given */
	BulkInsertState bistate;	/* NULL: a few rows at a time */
	int			max_rows;
	TupleTableSlot **slots;		/* max_rows of them, reused by every call */
};

/*
 * Open relid to insert rows of the columns cols (of types types), up to
 * max_rows per CdpDirectInsertRows call, other columns their defaults;
 * bulk for many batches (a ring of buffers, as COPY uses).  Returns NULL,
 * having locked nothing more than RowExclusiveLock, when the table needs an
 * INSERT statement (see above): the caller runs its own then.
 */
CdpDirectInsert *
CdpBeginDirectInsert(Oid relid, const char *const *cols, const Oid *types, int ncols,
					 int max_rows, bool bulk)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	CdpDirectInsert *d;
	TupleDesc	desc;

	d = palloc0(sizeof(CdpDirectInsert));
	d->attnos = palloc(sizeof(AttrNumber) * Max(ncols, 1));
	if (!CdpIsPlainTarget(rel, ACL_INSERT) || !MapColumns(RelationGetDescr(rel), cols, types, ncols, d->attnos))
	{
		table_close(rel, NoLock);
		pfree(d->attnos);
		pfree(d);
		return NULL;
	}
	CheckCmdReplicaIdentity(rel, CMD_INSERT);
	d->rel = rel;
	d->ncols = ncols;
	d->max_rows = Max(max_rows, 1);
	d->estate = CreateExecutorState();
	d->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(d->rri, rel, 0, NULL, 0);
	ExecOpenIndices(d->rri, false);
	d->bistate = bulk ? GetBulkInsertState() : NULL;

	/* the defaults of the columns not given */
	desc = RelationGetDescr(rel);
	d->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (int a = 0; a < desc->natts; a++)
	{
		bool		given = false;
		Node	   *expr;

		for (int c = 0; c < ncols && !given; c++)
			given = d->attnos[c] == a + 1;
		if (given || TupleDescAttr(desc, a)->attisdropped)
			continue;
		expr = build_column_default(rel, a + 1);
		if (expr != NULL)
			d->defaults[a] = ExecPrepareExpr((Expr *) expr, d->estate);
	}

	/*
	 * Slots on a copy of the descriptor: slots on the relation's own pin it
	 * in the resource owner each, and forgetting thousands of pins costs
	 * time quadratic in their number.  Heap tuple slots: a row formed once
	 * is the tuple the heap takes, where a virtual slot's would be formed
	 * again by the insert.
	 */
	desc = CreateTupleDescCopyConstr(desc);
	d->slots = palloc(sizeof(TupleTableSlot *) * d->max_rows);
	for (int r = 0; r < d->max_rows; r++)
		d->slots[r] = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
	return d;
}

/*
 * Insert nrows (at most the max_rows given at the start) rows, row r's
 * value of column c at values[r * ncols + c] (NULL where nulls says so,
 * nulls may be NULL).  Index entries are made after all rows are in the
 * heap; a unique index raises unique_violation for a key that exists, and
 * waits for a transaction inserting the same key, as INSERT does.
 */
void
CdpDirectInsertRows(CdpDirectInsert *d, Datum *values, bool *nulls, int nrows)
{
	TupleDesc	desc = d->slots[0]->tts_tupleDescriptor;
	ExprContext *econtext = GetPerTupleExprContext(d->estate);
	CommandId	cid;

	Assert(nrows <= d->max_rows);
	if (nrows <= 0)
		return;

	/*
	 * In a parallel query's leader (a backfill writing while its read's
	 * workers run, as CREATE TABLE AS does) no command may start: the rows
	 * go in under the query's command, which reads other tables.
	 */
	if (!IsInParallelMode())
		CommandCounterIncrement();
	cid = GetCurrentCommandId(true);
	d->estate->es_output_cid = cid;
	for (int r = 0; r < nrows; r++)
	{
		TupleTableSlot *slot = d->slots[r];

		ExecClearTuple(slot);
		for (int a = 0; a < desc->natts; a++)
		{
			slot->tts_isnull[a] = true;
			if (d->defaults[a] != NULL)
				slot->tts_values[a] = ExecEvalExprSwitchContext(d->defaults[a], econtext,
																&slot->tts_isnull[a]);
		}
		for (int c = 0; c < d->ncols; c++)
		{
			slot->tts_values[d->attnos[c] - 1] = values[r * d->ncols + c];
			slot->tts_isnull[d->attnos[c] - 1] = nulls != NULL && nulls[r * d->ncols + c];
		}
		ExecStoreVirtualTuple(slot);
		if (RelationGetDescr(d->rel)->constr != NULL)
			ExecConstraints(d->rri, slot, d->estate);
		ExecMaterializeSlot(slot);	/* off the per-tuple memory the defaults used */
		ResetPerTupleExprContext(d->estate);
		slot->tts_tableOid = RelationGetRelid(d->rel);
	}
	table_multi_insert(d->rel, d->slots, nrows, cid, 0, d->bistate);
	for (int r = 0; r < nrows; r++)
	{
		if (d->rri->ri_NumIndices > 0)
			list_free(ExecInsertIndexTuples(d->rri, d->slots[r], d->estate, false, false,
											NULL, NIL));
		ResetPerTupleExprContext(d->estate);
		ExecClearTuple(d->slots[r]);
	}
	if (d->bistate != NULL)
		ReleaseBulkInsertStatePin(d->bistate);
	/* later commands see the rows, as after a statement */
	if (!IsInParallelMode())
		CommandCounterIncrement();
}

/* let go of the slots and indexes; the lock is kept to commit */
void
CdpEndDirectInsert(CdpDirectInsert *d)
{
	for (int r = 0; r < d->max_rows; r++)
		ExecDropSingleTupleTableSlot(d->slots[r]);
	if (d->bistate != NULL)
		FreeBulkInsertState(d->bistate);
	ExecCloseIndices(d->rri);
	FreeExecutorState(d->estate);
	table_close(d->rel, NoLock);
	pfree(d->defaults);
	pfree(d->attnos);
	pfree(d->slots);
	pfree(d);
}

/*
 * Insert nrows rows into relid at once (see CdpBeginDirectInsert and
 * CdpDirectInsertRows); false, having written nothing, when the table needs
 * an INSERT statement.
 */
bool
CdpInsertRowsDirectly(Oid relid, const char *const *cols, const Oid *types, int ncols,
					  Datum *values, bool *nulls, int nrows)
{
	CdpDirectInsert *d = CdpBeginDirectInsert(relid, cols, types, ncols, nrows, false);

	if (d == NULL)
		return false;
	CdpDirectInsertRows(d, values, nulls, nrows);
	CdpEndDirectInsert(d);
	return true;
}
