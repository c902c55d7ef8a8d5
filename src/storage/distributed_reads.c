/*
 * distributed_reads.c
 *	  Reads of cdp.events when Citus distributes it.  The identity graph,
 *	  profiles, traits and every other pg_cdp table stay on the coordinator;
 *	  the workers hold shards of cdp.events only (and an empty copy of the
 *	  rest, made when Citus propagated the extension).  Two things keep
 *	  answers right:
 *
 *	  - a planner hook on the coordinator: Citus sends the functions of a
 *	    SELECT to the workers as they are written, so `profile_id =
 *	    cdp.resolve('user_id:u1')` would run cdp.resolve against a worker's
 *	    empty identities.  A call to a STABLE cdp function whose arguments
 *	    read no row (constants, parameters) in a query over cdp.events
 *	    becomes a scalar subquery, which Citus evaluates once on the
 *	    coordinator and ships to the workers as a value.
 *	  - a guard on the workers: a query or call that reads a coordinator
 *	    table there (a cdp function applied per row of a distributed query,
 *	    say) fails with 0A000 instead of answering from empty tables.
 *
 *	  Without Citus (or with cdp.events not read) neither does anything.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/partition.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "distributed_reads.h"
#include "pg_cdp.h"

/* where this backend stands, looked up once per transaction */
typedef enum CitusRole
{
	CITUS_ABSENT,				/* no citus extension in this database */
	CITUS_COORDINATOR,			/* citus, and this node is the coordinator */
	CITUS_WORKER				/* citus, and this node is a worker */
} CitusRole;

static planner_hook_type prev_planner_hook = NULL;
static ExecutorStart_hook_type prev_executor_start_hook = NULL;
static CitusRole cached_role = CITUS_ABSENT;
static LocalTransactionId role_checked_in = InvalidLocalTransactionId;

typedef struct WrapContext
{
	Oid			cdp_namespace;
	bool		wrap;			/* the current level reads relations */
	bool		changed;		/* a call was wrapped at the current level */
} WrapContext;

static Node *WrapMutator(Node *node, WrapContext *cxt);

/*
 * The Citus group this node belongs to: pg_dist_local_group holds one row,
 * 0 on the coordinator (and on a node no coordinator added yet).
 */
static int32
LocalCitusGroup(void)
{
	Oid			relid = get_relname_relid("pg_dist_local_group", PG_CATALOG_NAMESPACE);
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	int32		group = 0;

	if (!OidIsValid(relid))
		return 0;
	rel = table_open(relid, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	tuple = heap_getnext(scan, ForwardScanDirection);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return group;
}

/*
 * Whether Citus is installed here and on which side of it this node is.
 * Once per transaction: a node that is added as a worker, or a database
 * that creates the extension, is seen by the next transaction.
 */
static CitusRole
CurrentCitusRole(void)
{
	if (role_checked_in == MyProc->lxid && role_checked_in != InvalidLocalTransactionId)
		return cached_role;
	if (!IsTransactionState())
		return CITUS_ABSENT;
	if (!OidIsValid(get_extension_oid("citus", true)))
		cached_role = CITUS_ABSENT;
	else
		cached_role = LocalCitusGroup() > 0 ? CITUS_WORKER : CITUS_COORDINATOR;
	role_checked_in = MyProc->lxid;
	return cached_role;
}

/* whether this node is a Citus worker (in a transaction; once per transaction) */
bool
CdpOnCitusWorker(void)
{
	return CurrentCitusRole() == CITUS_WORKER;
}

/*
 * Called where pg_cdp reads a coordinator table without the executor
 * (cdp.resolve's index probe): on a Citus worker the tables are empty
 * copies, and an answer from them would be silently wrong.
 */
void
CdpRefuseOnCitusWorker(const char *what)
{
	if (CurrentCitusRole() != CITUS_WORKER)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s cannot run on a Citus worker node", what),
			 errdetail("The identity graph and profiles are kept on the coordinator; "
					   "the workers hold shards of cdp.events only."),
			 errhint("Run it on the coordinator.  In a query over cdp.events, call pg_cdp's "
					 "functions with constants or parameters (the coordinator evaluates those "
					 "first), or resolve identifiers in a subquery over the coordinator's tables "
					 "and join its profile ids with cdp.events.")));
}

/* whether relid is cdp.events or one of its partitions, at any depth */
static bool
IsEventsRelation(Oid relid, Oid events)
{
	if (relid == events)
		return true;
	if (!get_rel_relispartition(relid))
		return false;
	return list_member_oid(get_partition_ancestors(relid), events);
}

/* whether any level of the query reads cdp.events (views are expanded by now) */
static bool
ReadsEventsWalker(Node *node, Oid *events)
{
	if (node == NULL)
		return false;
	if (IsA(node, RangeTblEntry))
	{
		RangeTblEntry *rte = (RangeTblEntry *) node;

		return rte->rtekind == RTE_RELATION && IsEventsRelation(rte->relid, *events);
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, ReadsEventsWalker, events,
								 QTW_EXAMINE_RTES_BEFORE);
	return expression_tree_walker(node, ReadsEventsWalker, events);
}

/*
 * Whether an argument list depends on the row or on the query around it:
 * columns (of any level), aggregates, window functions, sublinks and the
 * planner's own parameters.  Constants and the caller's parameters do not.
 */
static bool
DependsOnRowsWalker(Node *node, void *unused)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_Var:
		case T_PlaceHolderVar:
		case T_Aggref:
		case T_GroupingFunc:
		case T_WindowFunc:
		case T_SubLink:
		case T_CurrentOfExpr:
		case T_SetToDefault:
			return true;
		case T_Param:
			return ((Param *) node)->paramkind != PARAM_EXTERN;
		default:
			break;
	}
	return expression_tree_walker(node, DependsOnRowsWalker, unused);
}

/*
 * A STABLE, single-valued function of schema cdp: it may read the
 * coordinator's tables, and is evaluated once per statement anyway, so
 * computing it first on the coordinator keeps its meaning.
 */
static bool
IsCoordinatorFunction(FuncExpr *f, Oid cdp_namespace)
{
	HeapTuple	tp;
	Form_pg_proc proc;
	bool		result;

	if (f->funcretset)
		return false;
	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(f->funcid));
	if (!HeapTupleIsValid(tp))
		return false;
	proc = (Form_pg_proc) GETSTRUCT(tp);
	result = proc->pronamespace == cdp_namespace && proc->provolatile == PROVOLATILE_STABLE;
	ReleaseSysCache(tp);
	return result;
}

/* (SELECT expr): a scalar subquery with no FROM */
static SubLink *
MakeScalarSubquery(Expr *expr)
{
	Query	   *sub = makeNode(Query);
	SubLink    *link = makeNode(SubLink);

	sub->commandType = CMD_SELECT;
	sub->querySource = QSRC_ORIGINAL;
	sub->canSetTag = true;
	sub->jointree = makeFromExpr(NIL, NULL);
	sub->targetList = list_make1(makeTargetEntry(expr, 1, pstrdup("value"), false));
	sub->stmt_location = -1;
	link->subLinkType = EXPR_SUBLINK;
	link->subLinkId = 0;
	link->testexpr = NULL;
	link->operName = NIL;
	link->subselect = (Node *) sub;
	link->location = -1;
	return link;
}

/*
 * Each query level that reads relations gets its row-independent calls of
 * coordinator functions wrapped; a level without FROM (already a scalar
 * subquery, or a bare SELECT of a call) is evaluated on the coordinator as
 * it is, only its sublinks and subqueries are looked into.
 */
static Query *
WrapQuery(Query *query, Oid cdp_namespace)
{
	WrapContext cxt;
	Query	   *result;

	cxt.cdp_namespace = cdp_namespace;
	cxt.wrap = query->jointree != NULL && query->jointree->fromlist != NIL;
	cxt.changed = false;
	result = query_tree_mutator(query, WrapMutator, &cxt, 0);
	if (cxt.changed)
		result->hasSubLinks = true;
	return result;
}

/* the mutator of WrapQuery: subqueries (sublinks, FROM, CTEs) are levels of their own */
static Node *
WrapMutator(Node *node, WrapContext *cxt)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, Query))
		return (Node *) WrapQuery((Query *) node, cxt->cdp_namespace);
	if (cxt->wrap && IsA(node, FuncExpr) &&
		IsCoordinatorFunction((FuncExpr *) node, cxt->cdp_namespace) &&
		!DependsOnRowsWalker((Node *) ((FuncExpr *) node)->args, NULL))
	{
		cxt->changed = true;
		return (Node *) MakeScalarSubquery((Expr *) copyObject(node));
	}
	return expression_tree_mutator(node, WrapMutator, cxt);
}

/*
 * On the coordinator of a Citus cluster, before Citus plans a query over
 * cdp.events: coordinator functions of constants are computed here first.
 */
static PlannedStmt *
CdpPlanner(Query *parse, const char *query_string, int cursorOptions,
		   ParamListInfo boundParams)
{
	if (CurrentCitusRole() == CITUS_COORDINATOR)
	{
		Oid			cdp_namespace = get_namespace_oid("cdp", true);
		Oid			events = OidIsValid(cdp_namespace) ?
			get_relname_relid("events", cdp_namespace) : InvalidOid;

		if (OidIsValid(events) && ReadsEventsWalker((Node *) parse, &events))
			parse = WrapQuery(parse, cdp_namespace);
	}
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * Whether relid is a table only the coordinator keeps: one of pg_cdp's own
 * but cdp.events and its partitions (whose shards the workers hold; the
 * shards themselves belong to no extension).
 */
static bool
IsCoordinatorTable(Oid relid, Oid extension, Oid events)
{
	return getExtensionOfObject(RelationRelationId, relid) == extension &&
		!IsEventsRelation(relid, events);
}

/*
 * On a Citus worker, a query reading a coordinator table would answer from
 * an empty copy: refuse it.  Writes keep the copies as empty as they are
 * (pg_cdp's event triggers run there when Citus propagates a DROP TYPE);
 * elsewhere nothing is looked at.
 */
static void
CdpExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (queryDesc->plannedstmt->commandType == CMD_SELECT && !creating_extension &&
		CurrentCitusRole() == CITUS_WORKER)
	{
		Oid			extension = get_extension_oid("pg_cdp", true);
		Oid			cdp_namespace = get_namespace_oid("cdp", true);
		Oid			events = OidIsValid(cdp_namespace) ?
			get_relname_relid("events", cdp_namespace) : InvalidOid;
		ListCell   *lc;

		foreach(lc, queryDesc->plannedstmt->rtable)
		{
			RangeTblEntry *rte = lfirst(lc);

			if (OidIsValid(extension) && rte->rtekind == RTE_RELATION &&
				IsCoordinatorTable(rte->relid, extension, events))
				CdpRefuseOnCitusWorker(psprintf("a query reading %s",
												quote_qualified_identifier(get_namespace_name(get_rel_namespace(rte->relid)),
																		   get_rel_name(rte->relid))));
		}
	}
	if (prev_executor_start_hook)
		prev_executor_start_hook(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* called from _PG_init: chains after the hooks of libraries loaded before */
void
CdpDistributedReadsInit(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = CdpPlanner;
	prev_executor_start_hook = ExecutorStart_hook;
	ExecutorStart_hook = CdpExecutorStart;
}
