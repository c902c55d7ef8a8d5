/*
 * identity_lookup.c
 *	  cdp.resolve(identifier): the canonical profile holding an identifier,
 *	  by one probe of cdp.identities' primary key.  It is the first step of
 *	  every profile lookup a client makes, so it reads the index directly
 *	  instead of running an SQL function (planned again on every call) with
 *	  a SECURITY DEFINER context switch around it.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "executor/tuptable.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

#include "distributed_reads.h"
#include "pg_cdp.h"

/* what a call site probes, looked up on its first call */
typedef struct ResolveTarget
{
	Oid			heap;
	Oid			index;
	RegProcedure eqproc;
	Oid			collation;
	AttrNumber	profile_att;
} ResolveTarget;

static ResolveTarget *
GetResolveTarget(FunctionCallInfo fcinfo)
{
	ResolveTarget *t = (ResolveTarget *) fcinfo->flinfo->fn_extra;
	Relation	heap;
	Relation	index;
	Oid			eqop;

	if (t != NULL)
		return t;
	/* a worker's identities are an empty copy: never answer NULL from it */
	CdpRefuseOnCitusWorker("cdp.resolve()");
	t = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ResolveTarget));
	t->heap = get_relname_relid("identities", get_namespace_oid("cdp", false));
	if (!OidIsValid(t->heap))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table cdp.identities does not exist")));
	heap = table_open(t->heap, AccessShareLock);
	t->index = RelationGetPrimaryKeyIndex(heap);
	if (!OidIsValid(t->index))
		elog(ERROR, "cdp.identities has no primary key");
	index = index_open(t->index, AccessShareLock);
	eqop = get_opfamily_member(index->rd_opfamily[0], index->rd_opcintype[0],
							   index->rd_opcintype[0], BTEqualStrategyNumber);
	t->eqproc = get_opcode(eqop);
	t->collation = index->rd_indcollation[0];
	t->profile_att = get_attnum(t->heap, "profile_id");
	index_close(index, NoLock);
	table_close(heap, NoLock);
	fcinfo->flinfo->fn_extra = t;
	return t;
}

PG_FUNCTION_INFO_V1(cdp_resolve);

/*
 * cdp.resolve(id cdp.identifier) → bigint: the profile holding id under
 * the statement's snapshot, NULL when no profile holds it.
 */
Datum
cdp_resolve(PG_FUNCTION_ARGS)
{
	ResolveTarget *t = GetResolveTarget(fcinfo);
	Relation	heap = table_open(t->heap, AccessShareLock);
	Relation	index = index_open(t->index, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexScanDesc scan;
	ScanKeyData key;
	bool		found = false;
	Datum		profile = (Datum) 0;

	ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   t->collation, t->eqproc, PG_GETARG_DATUM(0));
	scan = index_beginscan(heap, index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;

		profile = slot_getattr(slot, t->profile_att, &isnull);
		found = !isnull;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(heap, NoLock);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(profile);
}
