/*
 * identity_rebuild.c
 *	  cdp.rebuild_identities(): recompute every profile from the stored
 *	  evidence, replayed in ingest order through the same algorithm as online
 *	  resolution (identity_graph.c) with the current rules, entirely in
 *	  memory.  A profile a message created keeps the id online resolution
 *	  gave it, so an unchanged graph comes out identical: dry_run reports
 *	  0 changed.  Profile records follow the replay too: redirects, merge
 *	  counts for the hub guard, and cdp.merges rows for what it merges or
 *	  takes apart.
 *
 *	  Concurrency: everything is read after the identity lock, with
 *	  snapshots taken then (see CdpLockIdentityGraph), so a rebuild that
 *	  waited for a split, a link or ingest replays what they committed.
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
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

/* rows between resets of their memory (and checks for interrupts) */
#define FETCH_ROWS	1024
/* ids given to profiles no evidence row names; never a real profile id */
#define TEMP_PROFILE_IDS	(INT64CONST(1) << 62)

typedef struct Landing
{
	int64		key;			/* replayed profile id, or a stored one claimed */
	int64		profile;		/* where it lands */
} Landing;

/*
 * A stored profile record that is merged away, has absorbed merges or has a
 * merge rank (most have none of these: they are kept apart from ProfNode).
 */
typedef struct StoredRecord
{
	uint32		prof;			/* its ProfNode's ref */
	int32		absorbed;		/* merges_absorbed */
	uint32		into;			/* merged_into (a ProfNode ref), 0 none */
	uint32		rank;			/* merge_rank (a ProfNode ref), 0 none */
} StoredRecord;

typedef struct RebuildState
{
	int64		next_temp;		/* ids for profiles no evidence row names */
	int64		hint;			/* the id the current evidence row made */
	int64		first_seq;		/* IdNode.src.seq counts from it; -1 before */
	int64		last_stored;	/* the profile NoteStored saw last, and its ref */
	uint32		last_stored_ref;
	bool		collect_links;	/* remember rows whose links change */
	List	   *relinked;		/* RelinkedRow * */
	StoredRecord *records;		/* sorted by prof */
	uint32		nrecords;
	uint32		maxrecords;
	uint32	   *landing;		/* by ProfNode ref - 1: the ref of where a
								 * replayed profile lands */
} RebuildState;

/* an evidence row that links something else under the current rules */
typedef struct RelinkedRow
{
	int64		seq;
	Datum	   *ids;			/* what it links now */
	int			nids;
} RelinkedRow;

static int64
RebuildProfileId(IdentityGraph *g)
{
	RebuildState *rs = g->private;

	if (rs->hint != 0 && CdpGraphProfile(g, rs->hint, false) == NULL)
		return rs->hint;
	return rs->next_temp++;
}

/*
 * What split_profile took apart stays apart in every replay, as online (where
 * batches use the cached list as it is).
 */
void
CdpLoadSplits(IdentityGraph *g)
{
	ListCell   *lc;

	foreach(lc, CdpCachedSplits())
	{
		SplitRule  *split = lfirst(lc);

		CdpGraphAddSplit(g, split->keep_out, split->members, split->nmembers,
						 split->anchors, split->nanchors);
	}
}

/* keep the row's new links if they differ from what it linked before */
static void
NoteRelinked(RebuildState *rs, IdMessage *m, Datum stored, Oid idtype, MemoryContext outer)
{
	Datum	   *elems;
	int			nelems;
	int			k = 0;
	bool		same = true;
	Datum	   *now;
	int			nnow = 0;
	MemoryContext old;
	RelinkedRow *row;

	deconstruct_array(DatumGetArrayTypeP(stored), idtype, -1, false, TYPALIGN_INT,
					  &elems, NULL, &nelems);
	for (int i = 0; i < m->nids; i++)
	{
		if (!m->linked[i])
			continue;
		same &= (k < nelems &&
				 CdpIdentifierCompare(DatumGetIdentifierP(elems[k]), m->ids[i]) == 0);
		k++;
	}
	if (same && k == nelems)
		return;
	old = MemoryContextSwitchTo(outer);
	now = palloc(sizeof(Datum) * Max(m->nids, 1));
	for (int i = 0; i < m->nids; i++)
		if (m->linked[i])
			now[nnow++] = PointerGetDatum(PG_DETOAST_DATUM_COPY(PointerGetDatum(m->ids[i])));
	row = palloc(sizeof(RelinkedRow));
	row->seq = m->seq;
	row->ids = now;
	row->nids = nnow;
	rs->relinked = lappend(rs->relinked, row);
	MemoryContextSwitchTo(old);
}

typedef void (*RowFn) (IdentityGraph *g, TupleTableSlot *slot, void *arg);
typedef void (*FinishFn) (IdentityGraph *g, void *arg);

/*
 * Rows wait LOOKAHEAD rows before they are handled, in order: meanwhile
 * the graph loads what their keys need into the cache, in two steps (see
 * CdpGraphPrefetchNodeSlots), so that the cache misses of many rows
 * overlap instead of each row waiting for its own.
 */
#define LOOKAHEAD	16

typedef void (*WaitingFn) (IdentityGraph *g, void *row, void *arg);

typedef struct Lookahead
{
	void	   *rows[LOOKAHEAD];
	uint64		added;
	uint64		done;
	WaitingFn	handle;			/* a row's work */
	WaitingFn	warm;			/* the second step of its loads */
} Lookahead;

/* add a row (its first loads asked for): handle the oldest if full */
static void
LookaheadAdd(IdentityGraph *g, Lookahead *la, void *row, void *arg)
{
	if (la->added - la->done == LOOKAHEAD)
		la->handle(g, la->rows[la->done++ % LOOKAHEAD], arg);
	la->rows[la->added++ % LOOKAHEAD] = row;
	/* halfway: its first loads are done */
	if (la->added > LOOKAHEAD / 2)
		la->warm(g, la->rows[(la->added - 1 - LOOKAHEAD / 2) % LOOKAHEAD], arg);
}

static void
LookaheadFinish(IdentityGraph *g, Lookahead *la, void *arg)
{
	while (la->done < la->added)
		la->handle(g, la->rows[la->done++ % LOOKAHEAD], arg);
}

/* hands each row of a query to a RowFn, as the executor makes it */
typedef struct RowReceiver
{
	DestReceiver pub;
	RowFn		fn;
	IdentityGraph *g;
	void	   *arg;
	MemoryContext scratch[2];	/* every other FETCH_ROWS rows' memory */
	int64		nrows;
} RowReceiver;

/*
 * Each row's memory is kept while the next FETCH_ROWS rows come (rows
 * waiting in a Lookahead are handled by then), then reset.
 */
static bool
ReceiveRow(TupleTableSlot *slot, DestReceiver *self)
{
	RowReceiver *r = (RowReceiver *) self;
	MemoryContext cxt = r->scratch[(r->nrows / FETCH_ROWS) % 2];
	MemoryContext old;

	StaticAssertStmt(LOOKAHEAD <= FETCH_ROWS, "rows wait less than a reset");
	if (r->nrows % FETCH_ROWS == 0 && r->nrows > 0)
	{
		MemoryContextReset(cxt);
		CHECK_FOR_INTERRUPTS();
	}
	old = MemoryContextSwitchTo(cxt);
	r->fn(r->g, slot, r->arg);
	MemoryContextSwitchTo(old);
	r->nrows++;
	return true;
}

static void
RowReceiverStartup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
RowReceiverShutdown(DestReceiver *self)
{
}

/*
 * Run sql, calling fn for each row as the executor makes it (no copy of
 * the rows is kept: a tuptable of millions of rows would be most of a
 * rebuild's memory), in scratch contexts reset every FETCH_ROWS rows:
 * detoasted copies and other per-row memory never reach the graph's
 * context.  Then finish (if any), for the rows still waiting.  Returns the
 * rows.
 */
static int64
ForEachRow(const char *sql, RowFn fn, FinishFn finish, IdentityGraph *g, void *arg)
{
	MemoryContext outer = CurrentMemoryContext;
	SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);
	SPIExecuteOptions options;
	RowReceiver r;
	int			rc;

	MemoryContextSwitchTo(outer);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	memset(&r, 0, sizeof(r));
	r.pub.receiveSlot = ReceiveRow;
	r.pub.rStartup = RowReceiverStartup;
	r.pub.rShutdown = RowReceiverShutdown;
	r.pub.rDestroy = RowReceiverShutdown;
	r.pub.mydest = DestNone;
	r.fn = fn;
	r.g = g;
	r.arg = arg;
	for (int i = 0; i < 2; i++)
		r.scratch[i] = AllocSetContextCreate(outer, "cdp rebuild rows", ALLOCSET_DEFAULT_SIZES);
	memset(&options, 0, sizeof(options));
	/* not read_only: a snapshot taken now, after the identity lock */
	options.read_only = false;
	options.dest = (DestReceiver *) &r;
	rc = SPI_execute_plan_extended(plan, &options);
	/* rows sent to a receiver of our own are reported as SPI_OK_UTILITY */
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan_extended failed: %s", SPI_result_code_string(rc));
	SPI_freeplan(plan);
	if (finish != NULL)
	{
		MemoryContextSwitchTo(r.scratch[(r.nrows / FETCH_ROWS) % 2]);
		finish(g, arg);
	}
	MemoryContextSwitchTo(outer);
	for (int i = 0; i < 2; i++)
		MemoryContextDelete(r.scratch[i]);
	return r.nrows;
}

/* (the args of every lookahead's row functions start with it) */
typedef struct ReplayArgs
{
	Lookahead	la;
	Oid			idtype;
	MemoryContext outer;		/* where relinked rows are kept */
} ReplayArgs;

/* an evidence row waiting to be replayed */
typedef struct WaitingMessage
{
	IdMessage	m;
	int64		hint;			/* the profile it created, 0 none */
	Datum		linked;			/* what it linked (collect_links) */
} WaitingMessage;

/*
 * An evidence row, as the message it was, waits in the lookahead (its
 * identifiers hashed once, their slots asked for) to be replayed.
 */
static void
ReplayRow(IdentityGraph *g, TupleTableSlot *slot, void *arg)
{
	ReplayArgs *ra = arg;
	RebuildState *rs = g->private;
	WaitingMessage *w = palloc0(sizeof(WaitingMessage));
	IdMessage  *m = &w->m;
	bool		isnull;
	ArrayType  *ids = DatumGetArrayTypePCopy(slot_getattr(slot, 1, &isnull));
	Datum		created = slot_getattr(slot, 2, &isnull);
	Datum	   *elems;
	int			nelems;

	w->hint = isnull ? 0 : DatumGetInt64(created);
	if (w->hint != 0)
		CdpGraphPrefetchProfileSlots(g, w->hint);
	deconstruct_array(ids, ra->idtype, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
	m->ids = (CdpIdentifier **) palloc(sizeof(CdpIdentifier *) * Max(nelems, 1));
	m->hashes = (uint32 *) palloc(sizeof(uint32) * Max(nelems, 1));
	for (int k = 0; k < nelems; k++)
	{
		m->ids[k] = DatumGetIdentifierP(elems[k]);
		m->hashes[k] = CdpGraphIdentifierHash(m->ids[k]);
		CdpGraphPrefetchNodeSlots(g, m->hashes[k]);
	}
	m->nids = nelems;
	m->at = DatumGetTimestampTz(slot_getattr(slot, 4, &isnull));
	m->seq = DatumGetInt64(slot_getattr(slot, 5, &isnull));
	if (rs->first_seq < 0)
		rs->first_seq = m->seq;
	/* rows come in seq order: a node keeps its row as an offset of 32 bits */
	if (m->seq - rs->first_seq > PG_UINT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the identity evidence spans more than %u sequence numbers", PG_UINT32_MAX),
				 errdetail("Rows " INT64_FORMAT " to " INT64_FORMAT " of cdp.identity_evidence.",
						   rs->first_seq, m->seq)));
	m->seq_offset = (uint32) (m->seq - rs->first_seq);
	if (rs->collect_links)
		w->linked = PointerGetDatum(DatumGetArrayTypePCopy(slot_getattr(slot, 3, &isnull)));
	LookaheadAdd(g, &ra->la, w, ra);
}

static void
WarmMessage(IdentityGraph *g, void *row, void *arg)
{
	WaitingMessage *w = row;

	for (int k = 0; k < w->m.nids; k++)
		CdpGraphPrefetchNode(g, w->m.hashes[k], IdValueLen(w->m.ids[k]));
	if (w->hint != 0)
		CdpGraphPrefetchProfile(g, w->hint);
}

/* one evidence row through the algorithm */
static void
ReplayMessage(IdentityGraph *g, void *row, void *arg)
{
	ReplayArgs *ra = arg;
	RebuildState *rs = g->private;
	WaitingMessage *w = row;

	rs->hint = w->hint;
	CdpResolveMessage(g, &w->m);
	if (rs->collect_links)
		NoteRelinked(rs, &w->m, w->linked, ra->idtype, ra->outer);
}

/* the rows still waiting when the query ends; arg starts with its Lookahead */
static void
FinishLookahead(IdentityGraph *g, void *arg)
{
	LookaheadFinish(g, (Lookahead *) arg, arg);
}

/* replay every evidence row in seq order; returns how many */
static int64
Replay(IdentityGraph *g, Oid idtype)
{
	ReplayArgs	ra;

	memset(&ra, 0, sizeof(ra));
	ra.idtype = idtype;
	ra.outer = CurrentMemoryContext;
	ra.la.handle = ReplayMessage;
	ra.la.warm = WarmMessage;
	return ForEachRow("SELECT identifiers, created_profile, linked, observed_at, seq "
					  "FROM cdp.identity_evidence ORDER BY seq", ReplayRow, FinishLookahead, g, &ra);
}

/* order ProfNode refs by profile id */
static int
CompareProfRefs(const void *a, const void *b, void *arg)
{
	IdentityGraph *g = arg;
	int64		x = CdpProfAt(g, *(const uint32 *) a)->profile_id;
	int64		y = CdpProfAt(g, *(const uint32 *) b)->profile_id;

	return x < y ? -1 : (x > y ? 1 : 0);
}

static int
CompareStoredRecords(const void *a, const void *b)
{
	uint32		x = ((const StoredRecord *) a)->prof;
	uint32		y = ((const StoredRecord *) b)->prof;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* what profile_records holds for p: merged_into, merges_absorbed, merge_rank */
static const StoredRecord *
StoredOf(RebuildState *rs, const ProfNode *p)
{
	static const StoredRecord none = {0, 0, 0, 0};
	StoredRecord key;
	StoredRecord *r;

	if (!p->has_record)
		return &none;
	key.prof = p->self;
	r = bsearch(&key, rs->records, rs->nrecords, sizeof(StoredRecord), CompareStoredRecords);
	Assert(r != NULL);
	return r;
}

/* the profile id of a ref, 0 for none */
static int64
RefId(IdentityGraph *g, uint32 ref)
{
	return ref == 0 ? 0 : CdpProfAt(g, ref)->profile_id;
}

/* the profile id a replayed profile lands on */
static int64
LandingOf(IdentityGraph *g, RebuildState *rs, const ProfNode *p)
{
	Assert(rs->landing[p->self - 1] != 0);
	return CdpProfAt(g, rs->landing[p->self - 1])->profile_id;
}

typedef struct Change
{
	CdpIdentifier *id;
	int64		from;
	int64		to;
	int64		seq;			/* the evidence row that linked it */
} Change;

/* a profile record whose redirect or merge count the replay changes */
typedef struct RecordChange
{
	int64		profile;
	int64		into;			/* 0: canonical */
	int64		was;			/* its stored merged_into */
	int32		absorbed;		/* merges_absorbed; -1 leaves it */
	int64		rank;			/* merge_rank, 0 for none; -1 leaves it */
	bool		rank_only;		/* only merge_rank changes */
} RecordChange;

/* a cdp.identities row waiting in the lookahead */
typedef struct WaitingStored
{
	CdpIdentifier *id;
	uint32		hash;
	int64		profile;
} WaitingStored;

/* where cdp.identities holds an identifier: its node and profile asked for */
static void
NoteStored(IdentityGraph *g, TupleTableSlot *slot, void *arg)
{
	WaitingStored *w = palloc(sizeof(WaitingStored));
	bool		isnull;

	w->id = (CdpIdentifier *) PG_DETOAST_DATUM_COPY(slot_getattr(slot, 1, &isnull));
	w->profile = DatumGetInt64(slot_getattr(slot, 2, &isnull));
	w->hash = CdpGraphIdentifierHash(w->id);
	CdpGraphPrefetchNodeSlots(g, w->hash);
	CdpGraphPrefetchProfileSlots(g, w->profile);
	LookaheadAdd(g, arg, w, arg);
}

static void
WarmStored(IdentityGraph *g, void *row, void *arg)
{
	WaitingStored *w = row;

	CdpGraphPrefetchNode(g, w->hash, IdValueLen(w->id));
	CdpGraphPrefetchProfile(g, w->profile);
}

static void
KeepStored(IdentityGraph *g, void *row, void *arg)
{
	WaitingStored *w = row;
	IdNode	   *node = CdpGraphNodeHashed(g, w->id, w->hash, true);
	RebuildState *rs = g->private;

	/* a profile's identifiers are often stored side by side */
	if (rs->last_stored_ref == 0 || rs->last_stored != w->profile)
	{
		rs->last_stored = w->profile;
		rs->last_stored_ref = CdpGraphProfile(g, w->profile, true)->self;
	}
	node->u.stored = rs->last_stored_ref;
}

/* a profile_records row waiting in the lookahead */
typedef struct WaitingRecord
{
	int64		profile;
	int64		into;
	int64		rank;
	int32		absorbed;
	bool		has_into;
	bool		has_rank;
} WaitingRecord;

/* a stored profile record that is merged away or has absorbed merges */
static void
NoteRecord(IdentityGraph *g, TupleTableSlot *slot, void *arg)
{
	WaitingRecord *w = palloc(sizeof(WaitingRecord));
	bool		isnull;
	Datum		d;

	w->profile = DatumGetInt64(slot_getattr(slot, 1, &isnull));
	CdpGraphPrefetchProfileSlots(g, w->profile);
	d = slot_getattr(slot, 2, &isnull);
	w->has_into = !isnull;
	w->into = isnull ? 0 : DatumGetInt64(d);
	if (w->has_into)
		CdpGraphPrefetchProfileSlots(g, w->into);
	w->absorbed = DatumGetInt32(slot_getattr(slot, 3, &isnull));
	d = slot_getattr(slot, 4, &isnull);
	w->has_rank = !isnull;
	w->rank = isnull ? 0 : DatumGetInt64(d);
	if (w->has_rank)
		CdpGraphPrefetchProfileSlots(g, w->rank);
	LookaheadAdd(g, arg, w, arg);
}

static void
WarmRecord(IdentityGraph *g, void *row, void *arg)
{
	WaitingRecord *w = row;

	CdpGraphPrefetchProfile(g, w->profile);
	if (w->has_into)
		CdpGraphPrefetchProfile(g, w->into);
	if (w->has_rank)
		CdpGraphPrefetchProfile(g, w->rank);
}

static void
KeepRecord(IdentityGraph *g, void *row, void *arg)
{
	WaitingRecord *w = row;
	RebuildState *rs = g->private;
	ProfNode   *p = CdpGraphProfile(g, w->profile, true);
	StoredRecord *r;

	if (rs->nrecords == rs->maxrecords)
	{
		MemoryContext old = MemoryContextSwitchTo(g->cxt);

		rs->maxrecords = Max(1024, rs->maxrecords * 2);
		rs->records = rs->records == NULL
			? MemoryContextAllocHuge(g->cxt, sizeof(StoredRecord) * rs->maxrecords)
			: repalloc_huge(rs->records, sizeof(StoredRecord) * rs->maxrecords);
		MemoryContextSwitchTo(old);
	}
	r = &rs->records[rs->nrecords++];
	/* profiles named here get (empty) nodes, which change no answer below */
	r->prof = p->self;
	r->into = w->has_into ? CdpGraphProfile(g, w->into, true)->self : 0;
	r->absorbed = w->absorbed;
	r->rank = w->has_rank ? CdpGraphProfile(g, w->rank, true)->self : 0;
	p->has_record = true;
}

static void
AddRecordChange(List **out, ProfNode *p, int64 was, int64 into, int32 absorbed, int64 rank)
{
	RecordChange *rc = palloc(sizeof(RecordChange));

	rc->rank = rank;
	rc->rank_only = false;
	rc->profile = p->profile_id;
	rc->into = into;
	rc->was = was;
	rc->absorbed = absorbed;
	*out = lappend(*out, rc);
}

/*
 * Of these redirects of profiles whose records hold no redirect, merge
 * count or rank (the rebuild read none), those whose record exists.  A
 * record can be gone while evidence still names its profile: cdp.forget
 * deletes the records of the profiles it erases and keeps the evidence rows
 * they share with other people.  A redirect of a missing record would be
 * written by no rebuild and reported by every one.
 */
static List *
ExistingRecords(List *unsure)
{
	int			n = list_length(unsure);
	int64	   *ids;
	Oid			t[1] = {INT8ARRAYOID};
	Datum		a[1];
	List	   *exist = NIL;
	int			k = 0;
	ListCell   *lc;

	if (n == 0)
		return NIL;
	ids = palloc(sizeof(int64) * n);
	foreach(lc, unsure)
		ids[k++] = ((RecordChange *) lfirst(lc))->profile;
	a[0] = CdpInt8Array(ids, n);
	CdpExecArgs("SELECT EXISTS (SELECT 1 FROM cdp.profile_records r WHERE r.profile_id = u.p) "
				"FROM unnest($1) WITH ORDINALITY AS u(p, n) ORDER BY u.n",
				1, t, a, SPI_OK_SELECT);
	k = 0;
	foreach(lc, unsure)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[k++], SPI_tuptable->tupdesc, 1, &isnull)))
			exist = lappend(exist, lfirst(lc));
	}
	SPI_freetuptable(SPI_tuptable);
	return exist;
}

/*
 * Compare the replayed graph with cdp.identities and cdp.profile_records.
 * A replayed profile maps to the stored profile of the same id, else to the
 * stored profile of its first member (profiles split off by split_profile
 * have ids no evidence row names).  Returns the identifiers that would move;
 * *records gets the profile records whose redirect (every profile the
 * replay knows points at where its identifiers are now), merge count (the
 * hub guard's, as the replay counted it) or merge rank would change.
 */
static List *
Compare(IdentityGraph *g, Oid idtype, int64 *nstored, List **records)
{
	RebuildState *rs = g->private;
	List	   *changes = NIL;
	ProfNode   *p;
	uint32	   *replayed;
	int			nreplayed;
	uint32		nprofs = CdpGraphProfileCount(g);
	CdpNodeIter it = {0, 0};
	IdNode	   *node;
	Lookahead	la;
	List	   *unsure = NIL;

	/* the replay is over: nodes forget their times, to keep stored profiles */
	while ((node = CdpGraphNextNode(g, &it)) != NULL)
		node->u.stored = 0;
	memset(&la, 0, sizeof(la));
	la.handle = KeepStored;
	la.warm = WarmStored;
	*nstored = ForEachRow("SELECT identifier, profile_id FROM cdp.identities", NoteStored,
						  FinishLookahead, g, &la);

	/*
	 * Where each replayed profile lands.  First, a profile that still holds
	 * identifiers stored under its own id keeps it.  Then every other one
	 * takes its first member's stored profile if nobody has claimed that, or
	 * else its own id (a merge that no longer holds comes apart again), or
	 * else a new one.  Ids are visited in order, so this is deterministic.
	 */
	nprofs = CdpGraphProfileCount(g);
	nreplayed = 0;
	replayed = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(uint32) * Max(nprofs, 1));
	for (uint32 i = 0; i < nprofs; i++)
	{
		p = CdpGraphProfileAt(g, i);
		if (p->into == 0 && p->nmembers > 0)
			replayed[nreplayed++] = p->self;
	}
	/* profiles the replay knows only from now on, with their stored state */
	memset(&la, 0, sizeof(la));
	la.handle = KeepRecord;
	la.warm = WarmRecord;
	ForEachRow("SELECT profile_id, merged_into, merges_absorbed, merge_rank FROM cdp.profile_records "
			   "WHERE merged_into IS NOT NULL OR merges_absorbed <> 0 OR merge_rank IS NOT NULL",
			   NoteRecord, FinishLookahead, g, &la);
	if (rs->nrecords > 0)
	{
		/* the array's spare room goes back before the landings are made */
		rs->records = repalloc_huge(rs->records, sizeof(StoredRecord) * rs->nrecords);
		rs->maxrecords = rs->nrecords;
		qsort(rs->records, rs->nrecords, sizeof(StoredRecord), CompareStoredRecords);
	}
	nprofs = CdpGraphProfileCount(g);
	rs->landing = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(uint32) * Max(nprofs, 1));
	memset(rs->landing, 0, sizeof(uint32) * Max(nprofs, 1));
	qsort_arg(replayed, nreplayed, sizeof(uint32), CompareProfRefs, g);
	for (int i = 0; i < nreplayed; i++)
	{
		p = CdpProfAt(g, replayed[i]);
		for (IdNode *m = CdpFirstMember(g, p); m; m = CdpNextMember(g, m))
		{
			if (m->u.stored == p->self)
			{
				rs->landing[p->self - 1] = p->self;
				p->claimed = true;
				break;
			}
		}
	}
	for (int i = 0; i < nreplayed; i++)
	{
		uint32		first;
		uint32		landing;

		p = CdpProfAt(g, replayed[i]);
		if (rs->landing[p->self - 1] != 0)
			continue;
		first = CdpFirstMember(g, p)->u.stored;
		if (first != 0 && !CdpProfAt(g, first)->claimed)
			landing = first;
		else if (p->profile_id < TEMP_PROFILE_IDS && !p->claimed)
			landing = p->self;
		else if (p->profile_id < TEMP_PROFILE_IDS)
			landing = CdpGraphProfile(g, TEMP_PROFILE_IDS + (INT64CONST(1) << 60) + p->profile_id,
									  true)->self;
		else
			landing = p->self;
		rs->landing[p->self - 1] = landing;
		/* claims are kept on the profile node of the landing id */
		CdpProfAt(g, landing)->claimed = true;
	}

	/*
	 * A landing is canonical, has absorbed what its replayed profile has,
	 * and ranks where the replay's id for it does (merges go into the
	 * lowest): online resolution then picks the profile a merge goes into,
	 * and the one whose merges the hub guard counts, as the next replay
	 * will, also when the landing's id orders otherwise (split_profile and
	 * rebuilds give new ids; a replay knows a profile no message created
	 * by an id of its own).
	 */
	for (int i = 0; i < nreplayed; i++)
	{
		ProfNode   *l;
		const StoredRecord *sr;
		int64		rank;

		p = CdpProfAt(g, replayed[i]);
		l = CdpProfAt(g, rs->landing[p->self - 1]);
		sr = StoredOf(rs, l);
		rank = (l == p && p->profile_id < TEMP_PROFILE_IDS) ? 0 : p->profile_id;
		if (sr->into != 0 || sr->absorbed != p->merges_absorbed)
			AddRecordChange(records, l, RefId(g, sr->into), 0, p->merges_absorbed, rank);
		else if (RefId(g, sr->rank) != rank)
		{
			/* reported apart: no profile changes, only what later merges pick */
			AddRecordChange(records, l, 0, 0, p->merges_absorbed, rank);
			((RecordChange *) llast(*records))->rank_only = true;
		}
	}
	pfree(replayed);

	/*
	 * Every other profile the replay knows points at the landing of the
	 * profile that holds its identifiers now, so its events follow them.  A
	 * merged-away profile with a merge rank is the one the replay knows by
	 * that id (a rebuild made it that one's landing, then a message merged
	 * it), whatever the replay's profile of its own id became; a canonical
	 * one redirected now stops being a landing, so its rank goes.  (Stored
	 * profiles the replay does not know are left to Apply: emptied ones
	 * redirect to where their identifiers went, and lose their rank too.)
	 */
	for (uint32 i = 0; i < nprofs; i++)
	{
		ProfNode   *known;
		const StoredRecord *sr;
		int64		want;

		p = CdpGraphProfileAt(g, i);
		if (p->claimed || p->profile_id >= TEMP_PROFILE_IDS)
			continue;
		sr = StoredOf(rs, p);
		known = (sr->rank != 0 && sr->into != 0) ? CdpProfAt(g, sr->rank) : p;
		if (known->into == 0 && known->nmembers == 0)
			continue;
		want = LandingOf(g, rs, CdpCanonicalOf(g, known));
		if (RefId(g, sr->into) == want)
			continue;
		if (p->has_record)
			AddRecordChange(records, p, RefId(g, sr->into), want, -1, sr->into == 0 ? 0 : -1);
		else
			AddRecordChange(&unsure, p, 0, want, -1, 0);
	}
	*records = list_concat(*records, ExistingRecords(unsure));

	memset(&it, 0, sizeof(it));
	while ((node = CdpGraphNextNode(g, &it)) != NULL)
	{
		int64		would_be = node->attached
			? LandingOf(g, rs, CdpCanonicalOf(g, CdpNodeProf(g, node))) : 0;
		int64		stored = RefId(g, node->u.stored);

		if (would_be != stored)
		{
			Change	   *c = palloc(sizeof(Change));

			c->id = CdpNodeIdentifier(g, node);
			c->from = stored;
			c->to = would_be;
			c->seq = rs->first_seq + node->src.seq;
			changes = lappend(changes, c);
		}
	}
	return changes;
}

/*
 * Evidence rows record what they link now: one UPDATE, each row's list
 * grouped out of one flat array by its seq (a slice per row would walk the
 * array of varlena values from its start each time, quadratic).
 */
static void
WriteRelinked(List *relinked, Oid idtype)
{
	int			n = list_length(relinked);
	int64	   *seqs = palloc(sizeof(int64) * Max(n, 1));
	int			nall = 0;
	int			k = 0;
	ListCell   *lc;
	Datum	   *flat;
	int64	   *flat_seq;
	Oid			types[3] = {INT8ARRAYOID, get_array_type(idtype), INT8ARRAYOID};
	Datum		args[3];

	if (n == 0)
		return;
	foreach(lc, relinked)
		nall += ((RelinkedRow *) lfirst(lc))->nids;
	flat = palloc(sizeof(Datum) * Max(nall, 1));
	flat_seq = palloc(sizeof(int64) * Max(nall, 1));
	nall = 0;
	foreach(lc, relinked)
	{
		RelinkedRow *row = lfirst(lc);

		seqs[k++] = row->seq;
		for (int i = 0; i < row->nids; i++)
		{
			flat_seq[nall] = row->seq;
			flat[nall++] = row->ids[i];
		}
	}
	args[0] = CdpInt8Array(seqs, n);
	args[1] = CdpArray(flat, nall, idtype);
	args[2] = CdpInt8Array(flat_seq, nall);
	CdpExecArgs("UPDATE cdp.identity_evidence e SET linked = g.ids FROM ("
				"SELECT seq, coalesce(array_agg(x ORDER BY o) FILTER (WHERE o > 0), '{}') AS ids "
				"FROM (SELECT seq, NULL::cdp.identifier AS x, 0::int8 AS o FROM unnest($1) AS s(seq) "
				"UNION ALL SELECT seq, x, o FROM unnest($2, $3) WITH ORDINALITY AS f(x, seq, o)) z "
				"GROUP BY seq) g "
				"WHERE e.seq = g.seq", 3, types, args, SPI_OK_UPDATE);
}

/*
 * Lock the profile rows the rebuild writes, and those redirected to them,
 * in ascending id order (the order online resolution uses): a batch that
 * read them before goes first, and every later statement sees what it did.
 */
static void
LockRecords(Datum profiles)
{
	Oid			t[1] = {INT8ARRAYOID};
	Datum		a[1] = {profiles};

	CdpExecArgs("SELECT 1 FROM cdp.profile_records WHERE profile_id = ANY ($1) OR merged_into = ANY ($1) "
				"ORDER BY profile_id FOR UPDATE", 1, t, a, SPI_OK_SELECT);
}

/*
 * Put identifiers on their replayed profiles, with the time and the message
 * of the evidence row the replay linked them by (the time the replay gave
 * them is that row's: nodes do not keep it past the replay).
 */
static void
MoveIdentities(Datum ids, Datum to, Datum seqs, Oid idtype)
{
	Oid			t[3] = {get_array_type(idtype), INT8ARRAYOID, INT8ARRAYOID};
	Datum		a[3] = {ids, to, seqs};

	CdpExecArgs("INSERT INTO cdp.profile_records (profile_id) SELECT DISTINCT p FROM unnest($2) p "
				"ON CONFLICT DO NOTHING", 3, t, a, SPI_OK_INSERT);
	CdpExecArgs("INSERT INTO cdp.identities (identifier, profile_id, linked_at, message_id) "
				"SELECT u.i, u.p, e.observed_at, e.message_id "
				"FROM ROWS FROM (unnest($1), unnest($2), unnest($3)) AS u(i, p, seq) "
				"LEFT JOIN cdp.identity_evidence e ON e.seq = u.seq "
				"ON CONFLICT (identifier) DO UPDATE SET profile_id = excluded.profile_id, "
				"linked_at = excluded.linked_at, message_id = excluded.message_id",
				3, t, a, SPI_OK_INSERT);
}

/*
 * Give profile records the redirect, merge count and merge rank of the
 * replay.  Each merge and un-merge this makes is logged in cdp.merges; a
 * profile that comes back takes its events (and those of the profiles
 * redirected to it) back, counted again by the caller.
 */
static void
WriteRecords(Datum profiles, Datum into, Datum absorbed, Datum ranks)
{
	Oid			t[4] = {INT8ARRAYOID, INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		a[4] = {profiles, into, absorbed, ranks};

	CdpExecArgs("WITH u AS (SELECT * FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4)) "
				"         AS u(p, i, a, k)), "
				"old AS (SELECT r.profile_id, r.merged_into FROM cdp.profile_records r "
				"         JOIN u ON u.p = r.profile_id), "
				"upd AS (UPDATE cdp.profile_records r SET merged_into = nullif(u.i, 0), "
				"        merges_absorbed = CASE WHEN u.a < 0 THEN r.merges_absorbed ELSE u.a END, "
				"        merge_rank = CASE WHEN u.k < 0 THEN r.merge_rank ELSE nullif(u.k, 0) END, "
				"        event_count = CASE WHEN u.i = 0 THEN r.event_count ELSE 0 END, "
				"        version = r.version + 1 "
				"        FROM u WHERE r.profile_id = u.p RETURNING r.profile_id) "
				"INSERT INTO cdp.merges (from_profile, into_profile, reason) "
				"SELECT o.profile_id, coalesce(nullif(u.i, 0), o.merged_into), "
				"       CASE WHEN u.i = 0 "
				"            THEN format('rebuild: taken apart from profile %s under the current rules', "
				"                        o.merged_into) "
				"            WHEN o.merged_into IS NULL THEN 'rebuild: merged under the current rules' "
				"            ELSE format('rebuild: merged under the current rules (was merged into profile %s)', "
				"                        o.merged_into) END "
				"  FROM old o JOIN u ON u.p = o.profile_id WHERE coalesce(o.merged_into, 0) <> u.i",
				4, t, a, SPI_OK_INSERT);
}

/* $1, $2: profiles that lost identifiers and where the last of them went */
#define EMPTIED "(SELECT r.f, r.t FROM ROWS FROM (unnest($1), unnest($2)) AS r(f, t) " \
	"WHERE r.t <> 0 AND r.f <> r.t " \
	"AND NOT EXISTS (SELECT 1 FROM cdp.identities i WHERE i.profile_id = r.f) " \
	"AND EXISTS (SELECT 1 FROM cdp.profile_records x WHERE x.profile_id = r.f AND x.merged_into IS NULL))"

/*
 * Profiles that lost identifiers must be read again by sessions that read
 * them before; a canonical one left with none redirects to where the last
 * of them went (a merge, logged).  Then every profile redirected to one
 * that is no longer canonical points straight at where that one points.
 */
static void
RedirectEmptied(Datum froms, Datum last_to, Datum touched)
{
	Oid			t[3] = {INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		a[3] = {froms, last_to, touched};

	CdpExecArgs("UPDATE cdp.profile_records SET version = version + 1 WHERE profile_id = ANY ($1)",
				3, t, a, SPI_OK_UPDATE);
	CdpExecArgs("WITH upd AS (UPDATE cdp.profile_records p SET merged_into = r.t, event_count = 0, "
				"             merge_rank = NULL "
				"             FROM " EMPTIED " r WHERE p.profile_id = r.f RETURNING p.profile_id, r.t) "
				"INSERT INTO cdp.merges (from_profile, into_profile, reason) "
				"SELECT profile_id, t, 'rebuild: emptied, its identifiers moved here under the current rules' "
				"FROM upd",
				3, t, a, SPI_OK_INSERT);
	CdpExecArgs("UPDATE cdp.profile_records p SET merged_into = t.merged_into "
				"FROM cdp.profile_records t WHERE t.profile_id = ANY ($3) AND t.merged_into IS NOT NULL "
				"AND p.merged_into = t.profile_id AND p.profile_id <> t.merged_into",
				3, t, a, SPI_OK_UPDATE);
}

/*
 * Counts and seen times of these profiles' canonical ones, from the events
 * stored under them and under every profile redirected to them.  The
 * stored ids are listed first, so the events are read by them alone and
 * aggregated per stored id: on a distributed cdp.events (by profile_id)
 * each shard counts its own, and no event leaves its shard.
 */
static void
RecountProfiles(Datum profiles)
{
	Oid			t[2] = {INT8ARRAYOID, INT8ARRAYOID};
	Datum		a[2];
	bool		isnull;

	CdpExecArgs("SELECT coalesce(array_agg(m.src), '{}'), coalesce(array_agg(c.p), '{}') "
				"FROM (SELECT DISTINCT coalesce(r.merged_into, r.profile_id) AS p "
				"        FROM cdp.profile_records r WHERE r.profile_id = ANY ($1)) c "
				"CROSS JOIN LATERAL (SELECT c.p AS src UNION ALL SELECT m.profile_id "
				"        FROM cdp.profile_records m WHERE m.merged_into = c.p) m",
				1, t, &profiles, SPI_OK_SELECT);
	a[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	a[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	CdpExecArgs("WITH e AS MATERIALIZED (SELECT e.profile_id, count(*) AS n, min(e.ts) AS lo, max(e.ts) AS hi "
				"        FROM cdp.events e WHERE e.profile_id = ANY ($1) GROUP BY e.profile_id) "
				"UPDATE cdp.profile_records p SET event_count = s.n, first_seen = s.lo, last_seen = s.hi "
				"FROM (SELECT u.c AS p, coalesce(sum(e.n), 0)::bigint AS n, min(e.lo) AS lo, max(e.hi) AS hi "
				"        FROM ROWS FROM (unnest($1), unnest($2)) AS u(s, c) "
				"        LEFT JOIN e ON e.profile_id = u.s GROUP BY u.c) s "
				"WHERE p.profile_id = s.p", 2, t, a, SPI_OK_UPDATE);
}

/* the real id for a replayed one: new profiles get theirs here, once */
static int64
RealProfileId(HTAB *fresh, int64 id)
{
	Landing    *l;
	bool		found;

	if (id < TEMP_PROFILE_IDS)
		return id;
	l = hash_search(fresh, &id, HASH_ENTER, &found);
	if (!found)
		l->profile = CdpNextProfileId();
	return l->profile;
}

/*
 * Write the replayed graph: lock what it touches, evidence rows record what
 * they link now, identifiers move, profile records take the replay's
 * redirects and merge counts, profiles left empty redirect, and every
 * profile touched is counted again from the events.  A statement a step,
 * over arrays: a rule change can move a large share of a million
 * identifiers.
 */
static void
Apply(List *changes, List *records, List *relinked, Oid idtype)
{
	int			n = list_length(changes);
	int			nrec = list_length(records);
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *gone = palloc(sizeof(Datum) * Max(n, 1));
	int64	   *to = palloc(sizeof(int64) * Max(n, 1));
	int64	   *seqs = palloc(sizeof(int64) * Max(n, 1));
	int64	   *froms = palloc(sizeof(int64) * Max(n, 1));
	int64	   *last_to = palloc(sizeof(int64) * Max(n, 1));
	int64	   *rec_ids = palloc(sizeof(int64) * Max(nrec, 1));
	int64	   *rec_into = palloc(sizeof(int64) * Max(nrec, 1));
	Datum	   *rec_absorbed = palloc(sizeof(Datum) * Max(nrec, 1));
	int64	   *rec_rank = palloc(sizeof(int64) * Max(nrec, 1));
	int64	   *touched = palloc(sizeof(int64) * (2 * n + 3 * nrec + 1));
	int			nmoved = 0,
				ngone = 0,
				nfrom = 0,
				ntouched = 0,
				k = 0;
	HASHCTL		ctl;
	HTAB	   *fresh;
	HTAB	   *from_place;
	ListCell   *lc;
	Datum		touched_arr;

	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(Landing);
	ctl.hcxt = CurrentMemoryContext;
	fresh = hash_create("cdp rebuild new ids", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	from_place = hash_create("cdp rebuild sources", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	foreach(lc, changes)
	{
		Change	   *c = lfirst(lc);
		bool		found;

		c->to = RealProfileId(fresh, c->to);
		if (c->to == 0)
			gone[ngone++] = PointerGetDatum(c->id);
		else
		{
			ids[nmoved] = PointerGetDatum(c->id);
			to[nmoved] = c->to;
			seqs[nmoved] = c->seq;
			touched[ntouched++] = c->to;
			nmoved++;
		}
		if (c->from != 0)
		{
			/* here Landing.profile is the place of c->from in froms */
			Landing    *l = hash_search(from_place, &c->from, HASH_ENTER, &found);

			if (!found)
			{
				l->profile = nfrom;
				froms[nfrom] = c->from;
				last_to[nfrom++] = 0;
				touched[ntouched++] = c->from;
			}
			if (c->to != 0)
				last_to[l->profile] = c->to;
		}
	}
	foreach(lc, records)
	{
		RecordChange *rc = lfirst(lc);

		rec_ids[k] = RealProfileId(fresh, rc->profile);
		rec_into[k] = RealProfileId(fresh, rc->into);
		rec_absorbed[k] = Int32GetDatum(rc->absorbed);
		/* a rank is the replay's id itself, never a real one */
		rec_rank[k] = rc->rank;
		touched[ntouched++] = rec_ids[k];
		if (rec_into[k] != 0)
			touched[ntouched++] = rec_into[k];
		if (rc->was != 0)
			touched[ntouched++] = rc->was;
		k++;
	}
	touched_arr = CdpInt8Array(touched, ntouched);

	LockRecords(touched_arr);
	WriteRelinked(relinked, idtype);
	if (ngone > 0)
	{
		Oid			t[1] = {get_array_type(idtype)};
		Datum		a[1] = {CdpArray(gone, ngone, idtype)};

		CdpExecArgs("DELETE FROM cdp.identities WHERE identifier = ANY ($1)", 1, t, a, SPI_OK_DELETE);
	}
	if (nmoved > 0)
		MoveIdentities(CdpArray(ids, nmoved, idtype), CdpInt8Array(to, nmoved),
					   CdpInt8Array(seqs, nmoved), idtype);
	if (nrec > 0)
		WriteRecords(CdpInt8Array(rec_ids, nrec), CdpInt8Array(rec_into, nrec),
					 CdpArray(rec_absorbed, nrec, INT4OID), CdpInt8Array(rec_rank, nrec));
	RedirectEmptied(CdpInt8Array(froms, nfrom), CdpInt8Array(last_to, nfrom), touched_arr);
	RecountProfiles(touched_arr);
	/* and their traits and consent, from the identifiers each holds now */
	CdpRecomputeProfileState(touched, ntouched);
}

/* where the graph's bytes go, at DEBUG1: what to shrink next */
static void
ReportGraphBytes(IdentityGraph *g, RebuildState *rs, Size peak)
{
	Size		nodes = 0;
	Size		profs = (Size) g->profs.npages * CDP_PAGE_ELEMS * sizeof(ProfNode);
	Size		node_index = (Size) (g->node_index.bmask + 1) * sizeof(CdpSlotBucket);
	Size		prof_index = (Size) (g->prof_index.bmask + 1) * sizeof(CdpSlotBucket);
	Size		records = (Size) rs->maxrecords * sizeof(StoredRecord);
	Size		landing = (Size) CdpGraphProfileCount(g) * sizeof(uint32);

	for (uint32 b = 0; b < g->nodes.nblocks; b++)
		nodes += (b == g->nodes.nblocks - 1) ? g->nodes.last_size : ((b == 0) ? 64 * 1024 : 1024 * 1024);
	elog(DEBUG1, "rebuild graph: %zu bytes: nodes %zu (%u), node index %zu, profiles %zu (%u), "
		 "profile index %zu, stored records %zu (%u), landings about %zu, other %zd",
		 peak, nodes, CdpGraphNodeCount(g), node_index, profs, CdpGraphProfileCount(g),
		 prof_index, records, rs->nrecords, landing,
		 (ssize_t) peak - (ssize_t) (nodes + node_index + profs + prof_index + records + landing));
}

/*
 * The replay makes about as many identifiers and profiles as the stores
 * hold: the planner's counts of them size the graph's indexes up front.
 */
static void
ReserveGraph(IdentityGraph *g)
{
	bool		isnull;
	Datum		ids;
	Datum		profiles;

	CdpExecSql("SELECT (SELECT reltuples FROM pg_catalog.pg_class WHERE oid = 'cdp.identities'::pg_catalog.regclass), "
			   "(SELECT reltuples FROM pg_catalog.pg_class WHERE oid = 'cdp.profile_records'::pg_catalog.regclass)",
			   SPI_OK_SELECT);
	ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return;
	profiles = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (isnull)
		return;
	/* -1: never counted */
	CdpGraphReserve(g, Max(DatumGetFloat4(ids), 0), Max(DatumGetFloat4(profiles), 0));
}

PG_FUNCTION_INFO_V1(cdp_rebuild_identities);

Datum
cdp_rebuild_identities(PG_FUNCTION_ARGS)
{
	bool		dry_run = PG_GETARG_BOOL(0);
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext cxt;
	IdentityGraph *g;
	RebuildState rs = {TEMP_PROFILE_IDS, 0, -1, 0, 0, !dry_run, NIL, NULL, 0, 0, NULL};
	Oid			idtype;
	int64		nevidence,
				nstored,
				nprofiles = 0;
	Size		peak;
	List	   *changes;
	List	   *records = NIL;
	int			nranks = 0;
	ListCell   *lc;
	instr_time	start,
				elapsed;
	char	   *report;

	INSTR_TIME_SET_CURRENT(start);
	SPI_connect();
	/* no other writer while we read the whole graph, and every read after it */
	CdpLockIdentityGraph();
	cxt = AllocSetContextCreate(caller, "cdp rebuild graph", 0, 1024 * 1024, 8 * 1024 * 1024);
	MemoryContextSwitchTo(cxt);
	idtype = CdpIdentifierTypeOid();
	g = CdpNewIdentityGraph(CdpLoadIdentityRules(), cxt, true);
	g->new_profile_id = RebuildProfileId;
	g->private = &rs;
	g->quiet = true;
	CdpLoadSplits(g);
	ReserveGraph(g);

	nevidence = Replay(g, idtype);
	for (uint32 i = 0; i < CdpGraphProfileCount(g); i++)
	{
		ProfNode   *p = CdpGraphProfileAt(g, i);

		nprofiles += (p->into == 0 && p->nmembers > 0);
	}
	changes = Compare(g, idtype, &nstored, &records);
	peak = MemoryContextMemAllocated(cxt, true);
	ReportGraphBytes(g, &rs, peak);
	if (!dry_run && (changes != NIL || records != NIL || rs.relinked != NIL))
		Apply(changes, records, rs.relinked, idtype);
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	foreach(lc, records)
		nranks += ((RecordChange *) lfirst(lc))->rank_only;

	MemoryContextSwitchTo(caller);
	report = psprintf("{\"dry_run\": %s, \"changed\": %d, \"profiles_changed\": %d, "
					  "\"ranks_changed\": %d, "
					  "\"evidence_rows\": " INT64_FORMAT
					  ", \"identifiers\": " INT64_FORMAT ", \"profiles\": " INT64_FORMAT
					  ", \"graph_bytes\": %zu, \"elapsed_ms\": %.1f}",
					  dry_run ? "true" : "false", list_length(changes), list_length(records) - nranks,
					  nranks,
					  nevidence, nstored,
					  nprofiles, peak, INSTR_TIME_GET_MILLISEC(elapsed));
	SPI_finish();
	MemoryContextDelete(cxt);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(report)));
}
