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
 *	  rules, row-level security, CHECK constraints or stored generated
 *	  columns (things users may have added), INSERT allowed to the current
 *	  user.  Otherwise the caller runs its statement.  Columns the caller does
 *	  not give get their defaults; NOT NULLs and unique indexes are checked as
 *	  INSERT checks them, with the same errors.
 */
#include "postgres.h"

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

/* whether rel needs nothing an INSERT statement would do beyond rows and index entries */
static bool
IsPlainTarget(Relation rel)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	Oid			relid = RelationGetRelid(rel);

	return rel->rd_rel->relkind == RELKIND_RELATION && rel->trigdesc == NULL &&
		rel->rd_rules == NULL &&
		(constr == NULL || (constr->num_check == 0 && !constr->has_generated_stored)) &&
		check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED &&
		pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) == ACLCHECK_OK;
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

/* raise the error INSERT raises for a NULL in a NOT NULL column */
static void
CheckNotNulls(Relation rel, TupleTableSlot *slot)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (desc->constr == NULL || !desc->constr->has_not_null)
		return;
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attnotnull && slot->tts_isnull[a])
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
							NameStr(att->attname), RelationGetRelationName(rel)),
					 errtablecol(rel, a + 1)));
	}
}

/*
 * Insert nrows rows into relid, row r's value of column cols[c] (of type
 * types[c]) at values[r * ncols + c] (NULL where nulls says so, nulls may
 * be NULL), other columns their defaults.  Returns false, having written
 * nothing, when the table needs an INSERT statement (see above): the caller
 * runs its own then.  Index entries are made after all rows are in the
 * heap; a unique index raises unique_violation for a key that exists, and
 * waits for a transaction inserting the same key, as INSERT does.
 */
bool
CdpInsertRowsDirectly(Oid relid, const char *const *cols, const Oid *types, int ncols,
					  Datum *values, bool *nulls, int nrows)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	TupleDesc	desc;
	AttrNumber *attnos = palloc(sizeof(AttrNumber) * Max(ncols, 1));
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot **slots;
	ExprState **defaults;
	CommandId	cid;

	if (!IsPlainTarget(rel) || !MapColumns(RelationGetDescr(rel), cols, types, ncols, attnos))
	{
		table_close(rel, NoLock);
		return false;
	}
	if (nrows == 0)
	{
		table_close(rel, NoLock);
		return true;
	}
	CheckCmdReplicaIdentity(rel, CMD_INSERT);
	/* not reference-counted, unlike the relation's own: no pin per slot */
	desc = CreateTupleDescCopyConstr(RelationGetDescr(rel));
	estate = CreateExecutorState();
	CommandCounterIncrement();
	cid = GetCurrentCommandId(true);
	estate->es_output_cid = cid;
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 0, NULL, 0);
	ExecOpenIndices(rri, false);

	/* the defaults of the columns not given */
	defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (int a = 0; a < desc->natts; a++)
	{
		bool		given = false;
		Node	   *expr;

		for (int c = 0; c < ncols && !given; c++)
			given = attnos[c] == a + 1;
		if (given || TupleDescAttr(desc, a)->attisdropped)
			continue;
		expr = build_column_default(rel, a + 1);
		if (expr != NULL)
			defaults[a] = ExecPrepareExpr((Expr *) expr, estate);
	}

	slots = palloc(sizeof(TupleTableSlot *) * nrows);
	for (int r = 0; r < nrows; r++)
	{
		TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
		ExprContext *econtext = GetPerTupleExprContext(estate);

		ExecClearTuple(slot);
		for (int a = 0; a < desc->natts; a++)
		{
			slot->tts_isnull[a] = true;
			if (defaults[a] != NULL)
				slot->tts_values[a] = ExecEvalExprSwitchContext(defaults[a], econtext,
																&slot->tts_isnull[a]);
		}
		for (int c = 0; c < ncols; c++)
		{
			slot->tts_values[attnos[c] - 1] = values[r * ncols + c];
			slot->tts_isnull[attnos[c] - 1] = nulls != NULL && nulls[r * ncols + c];
		}
		ExecStoreVirtualTuple(slot);
		CheckNotNulls(rel, slot);
		ExecMaterializeSlot(slot);	/* off the per-tuple memory the defaults used */
		ResetPerTupleExprContext(estate);
		slot->tts_tableOid = relid;
		slots[r] = slot;
	}
	table_multi_insert(rel, slots, nrows, cid, 0, NULL);
	for (int r = 0; r < nrows; r++)
	{
		List	   *recheck = ExecInsertIndexTuples(rri, slots[r], estate, false, false, NULL, NIL);

		list_free(recheck);
		ResetPerTupleExprContext(estate);
		ExecDropSingleTupleTableSlot(slots[r]);
	}
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	/* later commands see the rows, as after a statement */
	CommandCounterIncrement();
	return true;
}
