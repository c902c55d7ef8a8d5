/*
 * identity_rebuild.c
 *	  cdp.rebuild_identities(): recompute every profile from the stored
 *	  evidence, replayed in ingest order through the same algorithm as online
 *	  resolution (identity_graph.c) with the current rules, entirely in
 *	  memory.  A profile a message created keeps the id online resolution
 *	  gave it, so an unchanged graph comes out identical: dry_run reports
 *	  0 changed.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

#define FETCH_ROWS	10000

typedef struct RebuildState
{
	int64		next_temp;		/* ids for profiles no evidence row names */
	int64		hint;			/* the id the current evidence row made */
} RebuildState;

static int64
RebuildProfileId(IdentityGraph *g)
{
	RebuildState *rs = g->private;

	if (rs->hint != 0 && CdpGraphProfile(g, rs->hint, false) == NULL)
		return rs->hint;
	return rs->next_temp++;
}

static CdpIdentifier **
IdentifierList(Datum array, Oid idtype, int *n)
{
	Datum	   *elems;
	CdpIdentifier **ids;

	deconstruct_array(DatumGetArrayTypeP(array), idtype, -1, false, TYPALIGN_INT, &elems, NULL, n);
	ids = palloc(sizeof(CdpIdentifier *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		ids[i] = DatumGetIdentifierP(elems[i]);
	return ids;
}

/* what split_profile took apart stays apart, online and in every replay */
void
CdpLoadSplits(IdentityGraph *g)
{
	Oid			idtype = CdpIdentifierTypeOid();
	uint64		rows = CdpExecSql("SELECT keep_out, members, anchors FROM cdp.identity_splits "
								  "ORDER BY id", SPI_OK_SELECT);

	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int			nmembers,
					nanchors;
		CdpIdentifier **members = IdentifierList(SPI_getbinval(tup, desc, 2, &isnull), idtype, &nmembers);
		CdpIdentifier **anchors = IdentifierList(SPI_getbinval(tup, desc, 3, &isnull), idtype, &nanchors);

		CdpGraphAddSplit(g, DatumGetIdentifierP(SPI_getbinval(tup, desc, 1, &isnull)),
						 members, nmembers, anchors, nanchors);
	}
	SPI_freetuptable(SPI_tuptable);
}

/* replay every evidence row in seq order; returns how many */
static int64
Replay(IdentityGraph *g, Oid idtype)
{
	MemoryContext scratch = AllocSetContextCreate(CurrentMemoryContext, "cdp rebuild rows",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext outer = CurrentMemoryContext;
	RebuildState *rs = g->private;
	Portal		portal;
	SPIPlanPtr	plan;
	int64		nrows = 0;

	plan = SPI_prepare("SELECT identifiers, created_profile, message_id, observed_at "
					   "FROM cdp.identity_evidence ORDER BY seq", 0, NULL);
	MemoryContextSwitchTo(outer);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	MemoryContextSwitchTo(outer);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		MemoryContextSwitchTo(scratch);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			ArrayType  *ids = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 1, &isnull));
			Datum		created = SPI_getbinval(tup, desc, 2, &isnull);
			Datum	   *elems;
			int			nelems;
			IdMessage	m;

			deconstruct_array(ids, idtype, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
			memset(&m, 0, sizeof(m));
			m.ids = (CdpIdentifier **) palloc(sizeof(CdpIdentifier *) * Max(nelems, 1));
			for (int k = 0; k < nelems; k++)
				m.ids[k] = DatumGetIdentifierP(elems[k]);
			m.nids = nelems;
			m.at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
			SPI_getbinval(tup, desc, 2, &isnull);
			rs->hint = isnull ? 0 : DatumGetInt64(created);
			CdpResolveMessage(g, &m);
			nrows++;
		}
		SPI_freetuptable(SPI_tuptable);
		MemoryContextReset(scratch);
		MemoryContextSwitchTo(outer);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_freeplan(plan);
	MemoryContextSwitchTo(outer);
	MemoryContextDelete(scratch);
	return nrows;
}

typedef struct Change
{
	CdpIdentifier *id;
	int64		from;
	int64		to;
} Change;

/*
 * Compare the replayed graph with cdp.identities.  A replayed profile maps
 * to the stored profile of the same id, else to the stored profile of its
 * first member (profiles split off by split_profile have ids no evidence
 * row names).  Returns the identifiers that would move.
 */
static List *
Compare(IdentityGraph *g, Oid idtype, int64 *nstored)
{
	MemoryContext outer = CurrentMemoryContext;
	HTAB	   *stored;
	HASHCTL		ctl;
	Portal		portal;
	SPIPlanPtr	plan;
	List	   *changes = NIL;
	HASH_SEQ_STATUS seq;
	IdNode	   *node;
	typedef struct StoredEntry
	{
		IdNode	   *node;
		int64		profile;
	} StoredEntry;

	ctl.keysize = sizeof(IdNode *);
	ctl.entrysize = sizeof(StoredEntry);
	ctl.hcxt = outer;
	stored = hash_create("cdp rebuild stored", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	*nstored = 0;

	plan = SPI_prepare("SELECT identifier, profile_id FROM cdp.identities", 0, NULL);
	MemoryContextSwitchTo(outer);
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	MemoryContextSwitchTo(outer);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		MemoryContextSwitchTo(outer);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			CdpIdentifier *id = DatumGetIdentifierP(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
			int64		profile = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
			IdNode	   *n = CdpGraphNode(g, id, true);
			StoredEntry *e = hash_search(stored, &n, HASH_ENTER, NULL);

			e->node = n;
			e->profile = profile;
			(*nstored)++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_freeplan(plan);

	hash_seq_init(&seq, g->ids);
	while ((node = hash_seq_search(&seq)) != NULL)
	{
		StoredEntry *e = hash_search(stored, &node, HASH_FIND, NULL);
		int64		now_in = e ? e->profile : 0;
		int64		would_be = 0;

		if (node->attached)
		{
			ProfNode   *p = CdpCanonical(g, node->profile);
			bool		id_known = false;

			/* the same id, if it is a stored profile; else its first member's */
			for (IdNode *m = p->members; m && !id_known; m = m->next_member)
			{
				StoredEntry *me = hash_search(stored, &m, HASH_FIND, NULL);

				id_known = me && me->profile == p->profile_id;
			}
			if (id_known)
				would_be = p->profile_id;
			else
			{
				StoredEntry *first = p->members ? hash_search(stored, &p->members, HASH_FIND, NULL) : NULL;

				would_be = first ? first->profile : p->profile_id;
			}
		}
		if (would_be != now_in)
		{
			Change	   *c = palloc(sizeof(Change));

			c->id = node->id;
			c->from = now_in;
			c->to = would_be;
			changes = lappend(changes, c);
		}
	}
	return changes;
}

/* move the changed identifiers; emptied profiles redirect to where theirs went */
static void
Apply(List *changes, Oid idtype)
{
	ListCell   *lc;
	Oid			types[3] = {INT8OID, idtype, INT8OID};

	foreach(lc, changes)
	{
		Change	   *c = lfirst(lc);
		Datum		vals[3] = {Int64GetDatum(c->to), PointerGetDatum(c->id), Int64GetDatum(c->from)};

		if (c->to == 0)
		{
			CdpExecArgs("DELETE FROM cdp.identities WHERE identifier = $2", 2, types, vals, SPI_OK_DELETE);
			continue;
		}
		CdpExecArgs("INSERT INTO cdp.profile_records (profile_id) VALUES ($1) ON CONFLICT DO NOTHING",
					1, types, vals, SPI_OK_INSERT);
		CdpExecArgs("INSERT INTO cdp.identities (identifier, profile_id, linked_at) "
					"VALUES ($2, $1, now()) ON CONFLICT (identifier) DO UPDATE SET profile_id = $1",
					2, types, vals, SPI_OK_INSERT);
		if (c->from != 0)
			CdpExecArgs("UPDATE cdp.profile_records SET version = version + 1 WHERE profile_id = $3",
						3, types, vals, SPI_OK_UPDATE);
		if (c->from != 0)
			CdpExecArgs("UPDATE cdp.profile_records SET merged_into = $1 "
						"WHERE (profile_id = $3 OR merged_into = $3) AND profile_id <> $1 "
						"AND NOT EXISTS (SELECT 1 FROM cdp.identities WHERE profile_id = $3)",
						3, types, vals, SPI_OK_UPDATE);
		/* a profile that gets identifiers back is canonical again */
		CdpExecArgs("UPDATE cdp.profile_records SET merged_into = NULL WHERE profile_id = $1",
					1, types, vals, SPI_OK_UPDATE);
	}
}

PG_FUNCTION_INFO_V1(cdp_rebuild_identities);

Datum
cdp_rebuild_identities(PG_FUNCTION_ARGS)
{
	bool		dry_run = PG_GETARG_BOOL(0);
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext cxt;
	IdentityGraph *g;
	RebuildState rs = {INT64CONST(1) << 62, 0};
	Oid			idtype;
	int64		nevidence,
				nstored,
				nprofiles = 0;
	Size		peak;
	List	   *changes;
	instr_time	start,
				elapsed;
	HASH_SEQ_STATUS seq;
	ProfNode   *p;
	char	   *report;

	INSTR_TIME_SET_CURRENT(start);
	SPI_connect();
	/* no other writer while we read the whole graph */
	DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(CDP_LOCK_CLASS),
						Int32GetDatum(CDP_LOCK_IDENTITY));
	cxt = AllocSetContextCreate(caller, "cdp rebuild graph", 0, 1024 * 1024, 8 * 1024 * 1024);
	MemoryContextSwitchTo(cxt);
	idtype = CdpIdentifierTypeOid();
	g = CdpNewIdentityGraph(CdpLoadIdentityRules(), cxt);
	g->new_profile_id = RebuildProfileId;
	g->private = &rs;
	g->quiet = true;
	CdpLoadSplits(g);

	nevidence = Replay(g, idtype);
	peak = MemoryContextMemAllocated(cxt, true);
	hash_seq_init(&seq, g->profiles);
	while ((p = hash_seq_search(&seq)) != NULL)
		nprofiles += (p->merged_into == 0 && p->nmembers > 0);
	changes = Compare(g, idtype, &nstored);
	if (!dry_run && changes != NIL)
		Apply(changes, idtype);
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);

	MemoryContextSwitchTo(caller);
	report = psprintf("{\"dry_run\": %s, \"changed\": %d, \"evidence_rows\": " INT64_FORMAT
					  ", \"identifiers\": " INT64_FORMAT ", \"profiles\": " INT64_FORMAT
					  ", \"graph_bytes\": %zu, \"elapsed_ms\": %.1f}",
					  dry_run ? "true" : "false", list_length(changes), nevidence, nstored,
					  nprofiles, peak, INSTR_TIME_GET_MILLISEC(elapsed));
	SPI_finish();
	MemoryContextDelete(cxt);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(report)));
}
