/*
 * event_store.c
 *	  Writing validated messages into their cdp.events partitions the way
 *	  COPY does.  Routing was already done (partitions.c), so rows go straight
 *	  to their partition.  A partition with nothing but pg_cdp's own columns,
 *	  indexes and NOT NULLs takes the fast path: table_multi_insert, then
 *	  index entries.  Anything a user added is honoured as COPY honours it:
 *	  column defaults (the parent's), stored generated columns, NOT NULL and
 *	  CHECK constraints, BEFORE and AFTER ROW INSERT triggers (foreign keys
 *	  included), and statement triggers with transition tables on cdp.events,
 *	  each call (a chunk of messages) being one statement.  A row that
 *	  violates a constraint becomes a dead letter instead of failing the
 *	  chunk; constraints on the columns a message alone decides are checked
 *	  before deduplication and identity resolution already
 *	  (CdpCheckEventConstraints).
 *
 *	  Once Citus distributes cdp.events its rows live in shards on other
 *	  nodes and the partitions here are empty shells that writing below
 *	  Citus's hooks would fill unseen.  Then each call is one INSERT ...
 *	  SELECT FROM unnest(...) through Citus instead, after the same
 *	  constraint checks on pg_cdp's columns, and an event without a profile
 *	  is stored with profile_id 0 (a distribution column is never NULL).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/nodeModifyTable.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/timestamp.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "pg_cdp.h"
#include "spi_util.h"

/* the cdp.events columns pg_cdp fills, in CdpMessage order */
typedef enum EventColumn
{
	COL_MESSAGE_ID,
	COL_SOURCE,
	COL_TYPE,
	COL_EVENT,
	COL_NAME,
	COL_PROFILE_ID,
	COL_USER_ID,
	COL_ANONYMOUS_ID,
	COL_GROUP_ID,
	COL_PREVIOUS_ID,
	COL_TS,
	COL_ORIGINAL_TIMESTAMP,
	COL_SENT_AT,
	COL_RECEIVED_AT,
	COL_PROPERTIES,
	COL_TRAITS,
	COL_CONTEXT,
	COL_EXTRA,
	NUM_EVENT_COLUMNS
} EventColumn;

static const char *const column_names[NUM_EVENT_COLUMNS] = {
	"message_id", "source", "type", "event", "name", "profile_id", "user_id",
	"anonymous_id", "group_id", "previous_id", "ts", "original_timestamp",
	"sent_at", "received_at", "properties", "traits", "context", "extra"
};

/* their types, as the INSERT through Citus sends them */
static const Oid column_types[NUM_EVENT_COLUMNS] = {
	TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID
};

/*
 * The profile_id of an event stored without a profile when cdp.events is
 * distributed by profile_id (profile ids start at 1).
 */
#define UNRESOLVED_PROFILE_ID	0

/*
 * Where cdp.events keeps its rows: in its partitions here, or in Citus's
 * shards.  Read from pg_dist_partition (only when Citus is installed) and
 * kept until a relcache invalidation of cdp.events, which Citus sends when
 * it distributes the table or stops distributing it
 * (CdpEventStoreCacheCallback, called by pg_cdp.c's relcache callback).
 */
static struct
{
	bool		valid;
	uint64		invalidations;	/* how many arrived so far */
	Oid			relid;
	bool		citus;			/* a Citus table: write through Citus */
	int			dist_column;	/* its distribution column among ours, or -1 */
	char	   *dist_name;		/* that column's name (or a user column's), or NULL */
}			placement;

static SPIPlanPtr citus_insert_plan = NULL;
static SPIPlanPtr citus_insert_one_plan = NULL;

/* the columns FillSlot always sets: their NOT NULLs need no check */
static const EventColumn always_set[] = {
	COL_MESSAGE_ID, COL_SOURCE, COL_TYPE, COL_TS, COL_RECEIVED_AT
};

/*
 * One statement's worth of writing into cdp.events: the executor state the
 * triggers and constraints need, with cdp.events as the root result
 * relation and the partitions as routed-to relations below it.
 */
typedef struct EventWriter
{
	EState	   *estate;
	ResultRelInfo *root;
	TransitionCaptureState *transition;
	CommandId	cid;
	BulkInsertState bistate;
	List	   *partitions;		/* ResultRelInfo *, closed at the end */
} EventWriter;

/*
 * The NOT NULL and CHECK constraints of a partition that are evaluated at
 * one stage: all of them when storing, or before deduplication only those
 * on columns the message alone decides.
 */
typedef struct ConstraintSet
{
	bool	   *notnull;		/* per attribute: must not be NULL */
	ExprState **checks;			/* per CHECK constraint; NULL: not here */
	bool		any;
} ConstraintSet;

/* What a partition needs beyond the fast path, found when it is opened. */
typedef struct PartitionWriter
{
	ResultRelInfo *rri;
	int			attnos[NUM_EVENT_COLUMNS];
	int			ndefaults;
	AttrNumber *default_attnos;
	ExprState **defaults;
	bool		before_row;		/* BEFORE ROW INSERT triggers: row by row */
	bool		after_row;		/* AFTER ROW triggers or transition capture */
	ConstraintSet constraints;	/* NOT NULLs beyond pg_cdp's own, CHECKs */
	bool		generated;		/* stored generated columns */
	TupleDesc	slot_desc;		/* the partition's row type, not reference-counted */
	const TupleTableSlotOps *slot_ops;
} PartitionWriter;

static void
SetText(Datum *values, bool *nulls, int attno, const char *s)
{
	if (s == NULL)
		return;
	values[attno - 1] = CStringGetTextDatum(s);
	nulls[attno - 1] = false;
}

static void
SetJsonb(Datum *values, bool *nulls, int attno, JsonbValue *v)
{
	if (v == NULL)
		return;
	values[attno - 1] = JsonbPGetDatum(JsonbValueToJsonb(v));
	nulls[attno - 1] = false;
}

static void
SetTimestamp(Datum *values, bool *nulls, int attno, bool present, TimestampTz ts)
{
	if (!present)
		return;
	values[attno - 1] = TimestampTzGetDatum(ts);
	nulls[attno - 1] = false;
}

/*
 * The message's properties as a Jsonb, made once in the memory it is first
 * asked for in (the chunk's): the stored column, and what computed traits
 * read.  NULL when it has none.
 */
Jsonb *
CdpPropertiesJsonb(CdpMessage *msg)
{
	if (msg->properties_jsonb == NULL && msg->properties != NULL)
		msg->properties_jsonb = JsonbValueToJsonb(msg->properties);
	return msg->properties_jsonb;
}

/* fill a slot of the partition's row type from a message */
static void
FillSlot(TupleTableSlot *slot, const int *attnos, CdpMessage *msg)
{
	Datum	   *v = slot->tts_values;
	bool	   *nulls = slot->tts_isnull;
	int			natts = slot->tts_tupleDescriptor->natts;

	ExecClearTuple(slot);
	for (int i = 0; i < natts; i++)
		nulls[i] = true;

	SetText(v, nulls, attnos[COL_MESSAGE_ID], msg->message_id);
	SetText(v, nulls, attnos[COL_SOURCE], msg->source);
	SetText(v, nulls, attnos[COL_TYPE], msg->type);
	SetText(v, nulls, attnos[COL_EVENT], msg->event);
	SetText(v, nulls, attnos[COL_NAME], msg->name);
	if (msg->has_profile_id)
	{
		v[attnos[COL_PROFILE_ID] - 1] = Int64GetDatum(msg->profile_id);
		nulls[attnos[COL_PROFILE_ID] - 1] = false;
	}
	SetText(v, nulls, attnos[COL_USER_ID], msg->user_id);
	SetText(v, nulls, attnos[COL_ANONYMOUS_ID], msg->anonymous_id);
	SetText(v, nulls, attnos[COL_GROUP_ID], msg->group_id);
	SetText(v, nulls, attnos[COL_PREVIOUS_ID], msg->previous_id);
	SetTimestamp(v, nulls, attnos[COL_TS], true, msg->ts);
	SetTimestamp(v, nulls, attnos[COL_ORIGINAL_TIMESTAMP], msg->has_original_ts, msg->original_ts);
	SetTimestamp(v, nulls, attnos[COL_SENT_AT], msg->has_sent_at, msg->sent_at);
	SetTimestamp(v, nulls, attnos[COL_RECEIVED_AT], true, msg->received_at);
	if (msg->properties != NULL)
	{
		v[attnos[COL_PROPERTIES] - 1] = JsonbPGetDatum(CdpPropertiesJsonb(msg));
		nulls[attnos[COL_PROPERTIES] - 1] = false;
	}
	SetJsonb(v, nulls, attnos[COL_TRAITS], msg->traits);
	SetJsonb(v, nulls, attnos[COL_CONTEXT], msg->context);
	SetJsonb(v, nulls, attnos[COL_EXTRA], msg->extra);
	ExecStoreVirtualTuple(slot);
}

/*
 * Look columns up by name, so a partition made before a later ALTER of
 * cdp.events (a dropped column leaves a hole) still gets the right values.
 */
static void
MapColumns(Relation rel, int *attnos)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
	{
		attnos[c] = SPI_fnumber(desc, column_names[c]);
		if (attnos[c] <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("partition %s has no column \"%s\"",
							RelationGetRelationName(rel), column_names[c])));
	}
}

/*
 * Whether a partition column is one pg_cdp fills from the message; the others
 * were added by users and get cdp.events' defaults.
 */
static bool
IsOurColumn(const int *attnos, int attno)
{
	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
		if (attnos[c] == attno)
			return true;
	return false;
}

/*
 * Whether a column always gets a value from a valid message, so that its
 * NOT NULL (part of pg_cdp's own schema) costs no check per row.
 */
static bool
IsAlwaysSet(const int *attnos, int attno)
{
	for (int i = 0; i < lengthof(always_set); i++)
		if (attnos[always_set[i]] == attno)
			return true;
	return false;
}

/*
 * Columns a user added to cdp.events get the parent's default, as an INSERT
 * or COPY into cdp.events would give them (a partition's own defaults do
 * not apply to rows routed through the parent).
 */
static void
PrepareDefaults(EventWriter *w, PartitionWriter *pw)
{
	Relation	rel = pw->rri->ri_RelationDesc;
	Relation	parent = w->root->ri_RelationDesc;
	TupleDesc	desc = RelationGetDescr(rel);

	pw->default_attnos = palloc(sizeof(AttrNumber) * desc->natts);
	pw->defaults = palloc(sizeof(ExprState *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		AttrNumber	parent_attno;
		Node	   *expr;

		if (att->attisdropped || att->attgenerated || IsOurColumn(pw->attnos, i + 1))
			continue;
		parent_attno = SPI_fnumber(RelationGetDescr(parent), NameStr(att->attname));
		if (parent_attno <= 0)
			continue;
		expr = build_column_default(parent, parent_attno);
		if (expr == NULL)
			continue;
		pw->default_attnos[pw->ndefaults] = i + 1;
		pw->defaults[pw->ndefaults] = ExecPrepareExpr((Expr *) expr, w->estate);
		pw->ndefaults++;
	}
}

/*
 * Prepare a partition's NOT NULLs (beyond those pg_cdp always satisfies,
 * unless a BEFORE ROW trigger may have changed the row: trusted_fill false)
 * and CHECKs.  With only_cols, just the constraints whose every column is in
 * it (attribute numbers offset by FirstLowInvalidHeapAttributeNumber).
 */
static void
PrepareConstraints(Relation rel, const int *attnos, Bitmapset *only_cols, bool trusted_fill,
				   EState *estate, ConstraintSet *cs)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;

	memset(cs, 0, sizeof(ConstraintSet));
	if (constr == NULL)
		return;
	cs->notnull = palloc0(sizeof(bool) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attnotnull || att->attisdropped ||
			(trusted_fill && IsAlwaysSet(attnos, i + 1)) ||
			(only_cols != NULL &&
			 !bms_is_member(i + 1 - FirstLowInvalidHeapAttributeNumber, only_cols)))
			continue;
		cs->notnull[i] = true;
		cs->any = true;
	}
	cs->checks = palloc0(sizeof(ExprState *) * Max(constr->num_check, 1));
	for (int i = 0; i < constr->num_check; i++)
	{
		Node	   *expr = stringToNode(constr->check[i].ccbin);
		Bitmapset  *used = NULL;

		pull_varattnos(expr, 1, &used);
		if (only_cols != NULL && !bms_is_subset(used, only_cols))
			continue;
		cs->checks[i] = ExecPrepareExpr((Expr *) expr, estate);
		cs->any = true;
	}
}

/*
 * The constraint a row violates, described for a dead letter, or NULL.
 * ExecConstraints would raise an error; a batch must keep going, so this
 * evaluates the same NOT NULLs and CHECKs and reports instead.  (A BEFORE
 * trigger on cdp.events that moves a row out of its partition is refused by
 * ExecBRInsertTriggers itself, as for COPY; one created on the partition
 * alone is caught by the partition check in InsertIntoPartition.)
 */
static char *
ViolatedConstraint(Relation rel, ConstraintSet *cs, TupleTableSlot *slot, ExprContext *econtext)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;
	const char *relname = RelationGetRelationName(rel);

	if (!cs->any)
		return NULL;
	for (int i = 0; i < desc->natts; i++)
	{
		if (cs->notnull[i] && slot_attisnull(slot, i + 1))
			return psprintf("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
							NameStr(TupleDescAttr(desc, i)->attname), relname);
	}
	econtext->ecxt_scantuple = slot;
	for (int i = 0; i < constr->num_check; i++)
	{
		if (cs->checks[i] != NULL && !ExecCheck(cs->checks[i], econtext))
			return psprintf("new row for relation \"%s\" violates check constraint \"%s\"",
							relname, constr->check[i].ccname);
	}
	return NULL;
}

/* open a partition as a routed-to result relation and see what it needs */
static void
OpenPartition(EventWriter *w, Oid relid, PartitionWriter *pw)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	TriggerDesc *trig;

	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("partition %s of cdp.events is not a plain table",
						RelationGetRelationName(rel)),
				 errhint("Partitions of cdp.events are managed by pg_cdp; detach this one.")));
	memset(pw, 0, sizeof(PartitionWriter));
	MapColumns(rel, pw->attnos);
	pw->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(pw->rri, rel, 0, w->root, 0);
	ExecOpenIndices(pw->rri, false);
	/* after-trigger firing finds the partition's ResultRelInfo here */
	w->estate->es_tuple_routing_result_relations =
		lappend(w->estate->es_tuple_routing_result_relations, pw->rri);
	w->partitions = lappend(w->partitions, pw->rri);

	trig = pw->rri->ri_TrigDesc;
	pw->before_row = trig != NULL && trig->trig_insert_before_row;
	pw->after_row = (trig != NULL && trig->trig_insert_after_row) ||
		(w->transition != NULL && w->transition->tcs_insert_new_table);
	pw->generated = constr != NULL && constr->has_generated_stored;
	PrepareConstraints(rel, pw->attnos, NULL, !pw->before_row, w->estate, &pw->constraints);
	PrepareDefaults(w, pw);

	/*
	 * A slot on the relation's own descriptor pins it in the resource owner
	 * and unpins it when dropped: with a slot per row that bookkeeping was a
	 * fiftieth of the time of small events.  A copy of the descriptor (with
	 * its defaults and missing values) is not reference-counted.
	 */
	pw->slot_desc = CreateTupleDescCopyConstr(RelationGetDescr(rel));
	pw->slot_ops = table_slot_callbacks(rel);
}

/* fill a slot with a message and the defaults of the columns users added */
static void
BuildRow(EventWriter *w, PartitionWriter *pw, TupleTableSlot *slot, CdpMessage *msg)
{
	FillSlot(slot, pw->attnos, msg);
	if (pw->ndefaults > 0)
	{
		ExprContext *econtext = GetPerTupleExprContext(w->estate);

		for (int d = 0; d < pw->ndefaults; d++)
		{
			int			a = pw->default_attnos[d] - 1;

			slot->tts_values[a] = ExecEvalExprSwitchContext(pw->defaults[d], econtext,
															&slot->tts_isnull[a]);
		}
	}
	slot->tts_tableOid = RelationGetRelid(pw->rri->ri_RelationDesc);
}

/* index entries and AFTER ROW events for rows already in the heap */
static void
AfterInsert(EventWriter *w, PartitionWriter *pw, TupleTableSlot *slot)
{
	List	   *recheck = NIL;

	if (pw->rri->ri_NumIndices > 0)
		recheck = ExecInsertIndexTuples(pw->rri, slot, w->estate, false, false, NULL, NIL);
	if (pw->after_row)
	{
		if (w->transition != NULL)
			w->transition->tcs_original_insert_tuple = NULL;	/* convert from the partition */
		ExecARInsertTriggers(w->estate, pw->rri, slot, recheck, w->transition);
	}
	list_free(recheck);
}

/*
 * The way COPY writes a partition: rows through BEFORE ROW triggers (one at
 * a time then, as they may look at the table), generated columns and the
 * constraint check; the survivors in one multi-insert; then index entries
 * and AFTER ROW events.  A partition that needs none of it takes the fast
 * path.  Violating rows are dead letters; rows a BEFORE trigger drops are
 * CDP_SKIPPED.
 */
static void
InsertIntoPartition(EventWriter *w, Oid relid, CdpMessage **msgs, int n)
{
	PartitionWriter pw;
	TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * n);
	CdpMessage **kept = palloc(sizeof(CdpMessage *) * n);
	int			nkept = 0;
	bool		fast;

	OpenPartition(w, relid, &pw);
	fast = !pw.before_row && !pw.after_row && !pw.constraints.any && !pw.generated &&
		pw.ndefaults == 0;

	for (int i = 0; i < n; i++)
	{
		TupleTableSlot *slot = MakeSingleTupleTableSlot(pw.slot_desc, pw.slot_ops);
		char	   *violation;

		BuildRow(w, &pw, slot, msgs[i]);
		if (fast)
		{
			slots[nkept] = slot;
			kept[nkept++] = msgs[i];
			continue;
		}
		if (pw.before_row && !ExecBRInsertTriggers(w->estate, pw.rri, slot))
		{
			msgs[i]->outcome = CDP_SKIPPED;
			ExecDropSingleTupleTableSlot(slot);
			ResetPerTupleExprContext(w->estate);
			continue;
		}
		if (pw.generated)
			ExecComputeStoredGenerated(pw.rri, w->estate, slot, CMD_INSERT);
		violation = ViolatedConstraint(pw.rri->ri_RelationDesc, &pw.constraints, slot,
									   GetPerTupleExprContext(w->estate));
		if (violation == NULL && pw.before_row &&
			!ExecPartitionCheck(pw.rri, slot, w->estate, false))
			violation = psprintf("new row for relation \"%s\" violates partition constraint: a BEFORE ROW trigger moved it out of its partition",
								 RelationGetRelationName(pw.rri->ri_RelationDesc));
		if (violation != NULL)
		{
			CdpMarkDead(msgs[i], "constraint_violation", "%s", violation);
			ExecDropSingleTupleTableSlot(slot);
		}
		else if (pw.before_row)
		{
			table_tuple_insert(pw.rri->ri_RelationDesc, slot, w->cid, 0, w->bistate);
			AfterInsert(w, &pw, slot);
			msgs[i]->outcome = CDP_STORED;
			ExecDropSingleTupleTableSlot(slot);
		}
		else
		{
			ExecMaterializeSlot(slot);	/* off the per-tuple memory */
			slots[nkept] = slot;
			kept[nkept++] = msgs[i];
		}
		ResetPerTupleExprContext(w->estate);
	}

	if (nkept > 0)
		table_multi_insert(pw.rri->ri_RelationDesc, slots, nkept, w->cid, 0, w->bistate);
	for (int i = 0; i < nkept; i++)
	{
		AfterInsert(w, &pw, slots[i]);
		ResetPerTupleExprContext(w->estate);
		ExecDropSingleTupleTableSlot(slots[i]);
		kept[i]->outcome = CDP_STORED;
	}
	ReleaseBulkInsertStatePin(w->bistate);
}

/* cdp.events as the statement's target, statement triggers armed */
static void
BeginStatement(EventWriter *w)
{
	Oid			relid = CdpEventsRelid();
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	LockRelationOid(relid, RowExclusiveLock);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_PARTITIONED_TABLE;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = ACL_INSERT;

	w->estate = CreateExecutorState();
	w->cid = GetCurrentCommandId(true);
	w->estate->es_output_cid = w->cid;
	ExecInitRangeTable(w->estate, list_make1(rte));
	w->root = makeNode(ResultRelInfo);
	ExecInitResultRelation(w->estate, w->root, 1);
	w->bistate = GetBulkInsertState();
	w->partitions = NIL;

	AfterTriggerBeginQuery();
	w->transition = MakeTransitionCaptureState(w->root->ri_RelationDesc->trigdesc,
											   relid, CMD_INSERT);
	ExecBSInsertTriggers(w->estate, w->root);
}

/* AFTER STATEMENT triggers, queued AFTER events (foreign keys), clean up */
static void
EndStatement(EventWriter *w)
{
	ListCell   *lc;

	ExecASInsertTriggers(w->estate, w->root, w->transition);
	AfterTriggerEndQuery(w->estate);
	ExecResetTupleTable(w->estate->es_tupleTable, false);	/* trigger slots */
	FreeBulkInsertState(w->bistate);
	foreach(lc, w->partitions)
	{
		ResultRelInfo *rri = lfirst(lc);

		ExecCloseIndices(rri);
		table_close(rri->ri_RelationDesc, NoLock);
	}
	ExecCloseResultRelations(w->estate);
	ExecCloseRangeTableRelations(w->estate);
	FreeExecutorState(w->estate);
}

/*
 * The pending messages routed to the same partition as msgs[start] and not
 * yet done, in order; marks them done and returns how many.
 */
static int
CollectGroup(CdpMessage **msgs, int n, int start, bool *done, CdpMessage **group)
{
	int			ngroup = 0;

	for (int j = start; j < n; j++)
	{
		if (!done[j] && msgs[j]->outcome == CDP_PENDING &&
			msgs[j]->partition == msgs[start]->partition)
		{
			group[ngroup++] = msgs[j];
			done[j] = true;
		}
	}
	return ngroup;
}

/*
 * The profile_id an unresolved event is stored with: none on a single node,
 * UNRESOLVED_PROFILE_ID when cdp.events is distributed by profile_id.
 */
static bool
StoresUnresolvedAsZero(void)
{
	return placement.valid && placement.citus && placement.dist_column == COL_PROFILE_ID;
}

/* fill a slot as the message will be stored, profile_id 0 included */
static void
FillStoredSlot(TupleTableSlot *slot, const int *attnos, CdpMessage *msg, bool unresolved_zero)
{
	FillSlot(slot, attnos, msg);
	if (unresolved_zero && !msg->has_profile_id)
	{
		slot->tts_values[attnos[COL_PROFILE_ID] - 1] = Int64GetDatum(UNRESOLVED_PROFILE_ID);
		slot->tts_isnull[attnos[COL_PROFILE_ID] - 1] = false;
	}
}

/*
 * Dead-letter the events of one partition that break its NOT NULLs and
 * CHECKs on the columns the message alone decides (with_profile: and on
 * profile_id, as stored).
 */
static void
CheckPartitionColumns(EState *estate, Oid relid, CdpMessage **msgs, int n, bool with_profile)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	TriggerDesc *trig = rel->trigdesc;
	int			attnos[NUM_EVENT_COLUMNS];
	Bitmapset  *message_cols = NULL;
	ConstraintSet cs;
	TupleTableSlot *slot;
	bool		unresolved_zero = with_profile && StoresUnresolvedAsZero();

	if (rel->rd_rel->relkind != RELKIND_RELATION || RelationGetDescr(rel)->constr == NULL ||
		(trig != NULL && trig->trig_insert_before_row))
	{
		table_close(rel, NoLock);
		return;
	}
	MapColumns(rel, attnos);
	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
		if (c != COL_PROFILE_ID || with_profile)
			message_cols = bms_add_member(message_cols,
										  attnos[c] - FirstLowInvalidHeapAttributeNumber);
	PrepareConstraints(rel, attnos, message_cols, true, estate, &cs);
	if (cs.any)
	{
		slot = table_slot_create(rel, NULL);
		for (int i = 0; i < n; i++)
		{
			char	   *violation;

			FillStoredSlot(slot, attnos, msgs[i], unresolved_zero);
			violation = ViolatedConstraint(rel, &cs, slot, GetPerTupleExprContext(estate));
			if (violation != NULL)
				CdpMarkDead(msgs[i], "constraint_violation", "%s", violation);
			ResetPerTupleExprContext(estate);
		}
		ExecDropSingleTupleTableSlot(slot);
	}
	table_close(rel, NoLock);
}

/* check every partition's pending events with CheckPartitionColumns */
static void
CheckColumns(CdpMessage **msgs, int n, bool with_profile)
{
	EState	   *estate = CreateExecutorState();
	CdpMessage **group = palloc(sizeof(CdpMessage *) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		int			ngroup;

		if (done[i] || msgs[i]->outcome != CDP_PENDING)
			continue;
		ngroup = CollectGroup(msgs, n, i, done, group);
		CheckPartitionColumns(estate, msgs[i]->partition, group, ngroup, with_profile);
	}
	FreeExecutorState(estate);
}

/*
 * Before deduplication and identity resolution, refuse the events that break
 * a NOT NULL or CHECK constraint on the columns the message alone decides
 * (all of pg_cdp's but profile_id), so that a refused event leaves no trace:
 * no messageId used up, no identifiers linked.  Constraints on profile_id or
 * on columns users added, and partitions with BEFORE ROW triggers (which may
 * mend a row), are checked when storing.
 */
void
CdpCheckEventConstraints(CdpMessage **msgs, int n)
{
	CheckColumns(msgs, n, false);
}

/* relcache callback: cdp.events changed, maybe distributed or no longer */
void
CdpEventStoreCacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == placement.relid)
	{
		placement.valid = false;
		placement.invalidations++;
	}
}

/* what LoadPlacement reads */
static void
ReadPlacement(Oid relid)
{
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(relid);
	bool		isnull;
	Datum		key;

	placement.relid = relid;
	placement.citus = false;
	placement.dist_column = -1;
	if (placement.dist_name != NULL)
		pfree(placement.dist_name);
	placement.dist_name = NULL;
	if (!OidIsValid(get_extension_oid("citus", true)) ||
		!OidIsValid(get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE)))
		return;
	if (CdpExecArgs("SELECT partkey FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1",
					1, &argtype, &arg, SPI_OK_SELECT) == 0)
		return;
	placement.citus = true;
	key = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
	{
		Node	   *var = stringToNode(TextDatumGetCString(key));

		if (IsA(var, Var))
		{
			char	   *name = get_attname(relid, ((Var *) var)->varattno, false);

			placement.dist_name = MemoryContextStrdup(TopMemoryContext, name);
			for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
				if (strcmp(name, column_names[c]) == 0)
					placement.dist_column = c;
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Read where cdp.events keeps its rows.  Valid only once read to the end
 * (an error on the way, a cancel, leaves it to be read again) and unless an
 * invalidation arrived meanwhile.
 */
static void
LoadPlacement(Oid relid)
{
	uint64		before = placement.invalidations;

	placement.valid = false;
	ReadPlacement(relid);
	placement.valid = placement.invalidations == before;
}

/* whether cdp.events is a Citus table, read again only after a change */
static bool
EventsThroughCitus(void)
{
	Oid			relid = CdpEventsRelid();

	if (!placement.valid || placement.relid != relid)
		LoadPlacement(relid);
	return placement.citus;
}

/*
 * Dead-letter the pending events whose distribution column (one of
 * pg_cdp's but profile_id, which gets UNRESOLVED_PROFILE_ID) is NULL: Citus
 * could not place them.
 */
static void
CheckDistributionColumn(CdpMessage **msgs, int n, Relation events)
{
	int			attnos[NUM_EVENT_COLUMNS];
	TupleTableSlot *slot;
	int			attno;

	if (placement.dist_column < 0 || placement.dist_column == COL_PROFILE_ID)
		return;
	MapColumns(events, attnos);
	attno = attnos[placement.dist_column];
	slot = MakeSingleTupleTableSlot(RelationGetDescr(events), &TTSOpsVirtual);
	for (int i = 0; i < n; i++)
	{
		if (msgs[i]->outcome != CDP_PENDING)
			continue;
		FillSlot(slot, attnos, msgs[i]);
		if (slot->tts_isnull[attno - 1])
			CdpMarkDead(msgs[i], "constraint_violation",
						"null value in column \"%s\", the distribution column of cdp.events",
						placement.dist_name);
	}
	ExecDropSingleTupleTableSlot(slot);
}

/*
 * The INSERT through Citus: one array per column, unnested together (many:
 * Citus copies the rows to the shards) or the first element of each (one:
 * a single-row INSERT that Citus routes to its shard).
 */
static SPIPlanPtr
CitusInsertPlan(SPIPlanPtr *slot, bool many)
{
	StringInfoData sql;
	Oid			argtypes[NUM_EVENT_COLUMNS];

	if (*slot != NULL)
		return *slot;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "INSERT INTO cdp.events (");
	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
		appendStringInfo(&sql, "%s%s", c > 0 ? ", " : "", quote_identifier(column_names[c]));
	appendStringInfoString(&sql, many ? ") SELECT * FROM unnest(" : ") VALUES (");
	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
	{
		appendStringInfo(&sql, many ? "%s$%d" : "%s$%d[1]", c > 0 ? ", " : "", c + 1);
		argtypes[c] = get_array_type(column_types[c]);
	}
	appendStringInfoChar(&sql, ')');
	return CdpPlan(slot, sql.data, NUM_EVENT_COLUMNS, argtypes);
}

static SPIPlanPtr
CitusInsertOnePlan(void)
{
	return CitusInsertPlan(&citus_insert_one_plan, false);
}

/*
 * Insert many rows through Citus.  Its COPY to the shards reports a row a
 * shard refused (a constraint on a column users added, a unique index)
 * with the shard's message but without its SQLSTATE (XX000).  That is
 * raised again as an integrity violation, so that the pipeline retries the
 * messages in halves; alone, a message goes through a single-row INSERT,
 * whose error keeps the shard's SQLSTATE: a row's fault becomes its dead
 * letter, anything else (a worker that is down, privileges) fails the call.
 */
static void
InsertManyThroughCitus(Datum *args)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		CdpExecPlan(CitusInsertPlan(&citus_insert_plan, true), args, NULL, SPI_OK_INSERT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_INTERNAL_ERROR)
			PG_RE_THROW();
		FlushErrorState();
		edata->sqlerrcode = ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION;
		if (edata->hint == NULL)
			edata->hint = pstrdup("A Citus worker refused a row of the batch; its messages are retried in smaller groups.");
		ReThrowError(edata);
	}
	PG_END_TRY();
}

/*
 * Store the pending messages through Citus, which routes each row to its
 * shard: first the checks the local path makes on pg_cdp's columns (a
 * violation is a dead letter), then one INSERT of all the rest.  Whatever
 * the shards still refuse (a constraint on a column users added) fails the
 * statement, and the pipeline isolates the message that caused it as a
 * processing_error dead letter (InsertManyThroughCitus): never a silent
 * loss.
 */
static void
StoreThroughCitus(CdpMessage **msgs, int n)
{
	Relation	events = table_open(CdpEventsRelid(), RowExclusiveLock);
	int			attnos[NUM_EVENT_COLUMNS];
	Datum	   *values[NUM_EVENT_COLUMNS];
	bool	   *nulls[NUM_EVENT_COLUMNS];
	Datum		args[NUM_EVENT_COLUMNS];
	CdpMessage **sent = palloc(sizeof(CdpMessage *) * Max(n, 1));
	int			nsent = 0;
	TupleTableSlot *slot;

	CheckColumns(msgs, n, true);
	CheckDistributionColumn(msgs, n, events);

	MapColumns(events, attnos);
	slot = MakeSingleTupleTableSlot(RelationGetDescr(events), &TTSOpsVirtual);
	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
	{
		values[c] = palloc(sizeof(Datum) * Max(n, 1));
		nulls[c] = palloc(sizeof(bool) * Max(n, 1));
	}
	for (int i = 0; i < n; i++)
	{
		if (msgs[i]->outcome != CDP_PENDING)
			continue;
		FillStoredSlot(slot, attnos, msgs[i], StoresUnresolvedAsZero());
		for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
		{
			values[c][nsent] = slot->tts_values[attnos[c] - 1];
			nulls[c][nsent] = slot->tts_isnull[attnos[c] - 1];
		}
		sent[nsent++] = msgs[i];
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(events, NoLock);
	if (nsent == 0)
		return;

	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
	{
		int			dims[1] = {nsent};
		int			lbs[1] = {1};
		int16		typlen;
		bool		byval;
		char		align;

		get_typlenbyvalalign(column_types[c], &typlen, &byval, &align);
		args[c] = PointerGetDatum(construct_md_array(values[c], nulls[c], 1, dims, lbs,
													 column_types[c], typlen, byval, align));
	}
	if (nsent == 1)
		CdpExecPlan(CitusInsertOnePlan(), args, NULL, SPI_OK_INSERT);
	else
		InsertManyThroughCitus(args);
	for (int i = 0; i < nsent; i++)
		sent[i]->outcome = CDP_STORED;
}

/*
 * Store every pending message (routed by CdpRouteEvents) as one statement
 * on cdp.events; returns how many were stored.  Messages are grouped by
 * partition, keeping their order within each; through Citus when it
 * distributes cdp.events.  Messages that became dead
 * letters here have their messageId forgotten, so a replay is not taken
 * for a duplicate.
 */
int
CdpStoreEvents(CdpMessage **msgs, int n)
{
	EventWriter w;
	CdpMessage **group = palloc(sizeof(CdpMessage *) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	int			npending = 0;
	int			stored = 0;
	int			nrefused = 0;

	for (int i = 0; i < n; i++)
		if (msgs[i]->outcome == CDP_PENDING)
			npending++;
	if (npending == 0)
		return 0;

	if (EventsThroughCitus())
	{
		for (int i = 0; i < n; i++)
			done[i] = msgs[i]->outcome == CDP_PENDING;
		StoreThroughCitus(msgs, n);
	}
	else
	{
		BeginStatement(&w);
		for (int i = 0; i < n; i++)
		{
			int			ngroup;

			if (done[i] || msgs[i]->outcome != CDP_PENDING)
				continue;
			ngroup = CollectGroup(msgs, n, i, done, group);
			InsertIntoPartition(&w, msgs[i]->partition, group, ngroup);
			CHECK_FOR_INTERRUPTS();
		}
		EndStatement(&w);
	}

	for (int i = 0; i < n; i++)
	{
		if (!done[i])
			continue;
		if (msgs[i]->outcome == CDP_STORED)
			stored++;
		else if (msgs[i]->outcome == CDP_DEAD)
			group[nrefused++] = msgs[i];
	}
	CdpForgetMessageIds(group, nrefused);
	return stored;
}
