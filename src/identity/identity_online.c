/*
 * identity_online.c
 *	  Identity resolution inside the ingest path, one batch at a time.
 *
 *	  Concurrency: a message whose identifiers all sit in one profile already
 *	  changes nothing, so a batch of only such messages reads the identities
 *	  without taking any identity lock.  A batch that may change the graph
 *	  (a new identifier, a merge) takes the identity advisory lock first and
 *	  reads again, so changes never interleave and an identifier can never
 *	  land on two profiles.  Either way the batch then locks the profile rows
 *	  it updates in ascending id order, which is the one order everyone uses;
 *	  a batch without the identity lock that finds what it read stale lets
 *	  go of those rows before it waits for the lock.
 *
 *	  A batch whose changes bring only new identifiers (new visitors, most
 *	  of what changes the graph) touches no stored profile: it is resolved
 *	  without the lock, and its caller stores its events before
 *	  CdpWriteResolvedIdentities takes the lock, since the lock is held to
 *	  the commit and two workers would otherwise take turns storing events.
 *	  Under the lock it reads again everything resolution read (the stored
 *	  identities of its identifiers, their profiles' rows, the rules and
 *	  splits) and writes only if nothing changed and no other writer stored
 *	  a profile with a later id than its own (ids order merges, so they must
 *	  follow the lock's order), for then resolving under the lock gives the
 *	  same answer; else the chunk is processed again, taking the lock first.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"
#include "stats.h"

typedef enum OnlinePlan
{
	PLAN_LOAD_IDS,
	PLAN_LOAD_MEMBERS,
	PLAN_LOCK_PROFILES,
	PLAN_INSERT_PROFILES,
	PLAN_MOVE_IDENTITIES,
	PLAN_MOVE_STATS,
	PLAN_REDIRECT,
	PLAN_INSERT_MERGES,
	PLAN_INSERT_IDENTITIES,
	PLAN_INSERT_VIOLATIONS,
	PLAN_INSERT_EVIDENCE,
	PLAN_KNOWN_PAIRS,
	PLAN_KNOWN_PAIRS_LINKED,
	PLAN_INSERT_PAIRS,
	PLAN_RELINK_PAIRS,
	PLAN_UPDATE_STATS,
	PLAN_WRITE_STATS,
	PLAN_WRITE_STATS_CANONICAL,
	PLAN_COUNT_PROFILES_FROM,
	NUM_ONLINE_PLANS
} OnlinePlan;

static SPIPlanPtr plans[NUM_ONLINE_PLANS];

/*
 * Whether this backend's last batch changed the graph.  Batches come in
 * runs (a stream of new visitors, or of known users), so when the last one
 * changed something the next one takes the identity lock at once instead of
 * reading everything first without it and then again under it.
 */
static bool last_batch_changed = false;

/*
 * The next resolution takes the identity lock first: the last one, done
 * before it, went stale (see CdpWriteResolvedIdentities); and whether the
 * error raised then is the one being handled.
 */
static bool lock_first = false;
static bool stale_raised = false;
static Oid	plans_type_oid = InvalidOid;

/*
 * The transaction that locked profile rows without the identity lock (a
 * batch of known profiles): it must not wait for that lock any more, since
 * a writer holding it may be waiting for those rows.
 */
static LocalTransactionId rows_without_lock_lxid = InvalidLocalTransactionId;

/*
 * Counts the merges written (and other writes of the graph) in this
 * backend: profile stats gathered after the last of them name canonical
 * profiles only, whose rows this transaction locked.
 */
static uint64 graph_writes = 0;

/* one message (or cdp.link() call) to resolve */
typedef struct IdItem
{
	CdpMessage *msg;			/* the event; NULL for cdp.link() */
	const char *message_id;
	const char *source;
	TimestampTz ts;
	List	   *ids;			/* CdpIdentifier *, extraction order */
	List	   *invalid;		/* char *: identifiers that could not be formed */
	int			ncarried;		/* identifiers carried, before the cap */
	CdpIdentifier *first_capped;	/* the first one past the cap */
	IdMessage	m;
} IdItem;

/* a pair of identifiers a message carries, a < b */
/* a batch resolved before the identity lock: what its graph writes need */
struct CdpPendingIdentities
{
	IdentityGraph *g;
	IdItem	   *items;
	int			n;
	HTAB	   *stats;
	uint64		rules_copy;		/* the rules and splits it was resolved with */
	uint64		splits_copy;
};

typedef struct PairRef
{
	CdpIdentifier *a;
	CdpIdentifier *b;
	int			item;			/* the first message of the batch carrying it */
	int			link_item;		/* the first that linked both ends and changed the graph, or -1 */
	bool		first_links;	/* the first message linked both ends */
	int16		x;				/* where a and b sit in the item's identifiers */
	int16		y;
} PairRef;

Oid
CdpIdentifierTypeOid(void)
{
	Oid			nsp = get_namespace_oid("cdp", false);
	Oid			typid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
										CStringGetDatum("identifier"),
										ObjectIdGetDatum(nsp));

	if (!OidIsValid(typid))
		elog(ERROR, "type cdp.identifier does not exist");
	return typid;
}

/* plans name the identifier type by oid: prepare them again if it changed */
static void
CheckPlans(Oid typid)
{
	if (typid == plans_type_oid)
		return;
	for (int i = 0; i < NUM_ONLINE_PLANS; i++)
	{
		if (plans[i] != NULL)
			SPI_freeplan(plans[i]);
		plans[i] = NULL;
	}
	plans_type_oid = typid;
}

static Datum
IdentifierArray(CdpIdentifier **ids, int n)
{
	return PointerGetDatum(construct_array((Datum *) ids, n, plans_type_oid, -1, false,
										   TYPALIGN_INT));
}

static Datum
Int4Array(int32 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(v[i]);
	return CdpArray(d, n, INT4OID);
}

static Datum
TimestampArray(TimestampTz *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = TimestampTzGetDatum(v[i]);
	return CdpArray(d, n, TIMESTAMPTZOID);
}

/* a table of pg_cdp's, InvalidOid if missing (the statement then reports it) */
static Oid
OwnTable(const char *name)
{
	return get_relname_relid(name, get_namespace_oid("cdp", false));
}

/* text for a row written directly: NULL where the string is */
static void
SetTextValue(Datum *value, bool *null, const char *s)
{
	*null = (s == NULL);
	*value = *null ? (Datum) 0 : CStringGetTextDatum(s);
}

/* text[] with NULL elements where the string is NULL */
static Datum
TextArray(const char **v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		nulls[i] = (v[i] == NULL);
		d[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(v[i]);
	}
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, TEXTOID, -1, false,
											  TYPALIGN_INT));
}

static SPIPlanPtr
OnlinePlanFor(OnlinePlan which, const char *sql, int nargs, Oid *argtypes)
{
	return CdpPlanReplanned(&plans[which], sql, nargs, argtypes);
}

/*
 * The lookups every batch runs (identities, pairs, profile rows to lock):
 * probes of unique indexes by arrays, whose plans do not depend on the
 * arrays' sizes, so they are planned once, generically (planning them for
 * every batch was a fiftieth of an ingest worker's time).  Every caller
 * runs them between CdpBeginIndexedPlans and CdpEndIndexedPlans, where
 * their plans are made (again, after an invalidation): index probes only.
 */
static SPIPlanPtr
OnlineProbePlanFor(OnlinePlan which, const char *sql, int nargs, Oid *argtypes)
{
	return CdpPlanGeneric(&plans[which], sql, nargs, argtypes);
}

/*
 * Attach the stored identities of ids to the graph: those this transaction
 * knows (k, when not NULL) from what it keeps, with recent those an ingest
 * worker kept from its earlier transactions (identity_recent.c), the rest
 * read.
 */
static void
LoadIdentities(IdentityGraph *g, CdpIdentifier **ids, int n, IdentityGraph *k, bool recent)
{
	Oid			argtypes[1] = {get_array_type(plans_type_oid)};
	Datum		args[1];
	uint64		rows;

	if (k != NULL)
	{
		int			nread = 0;
		bool		blocked_known = CdpKnownBlockedCurrent();

		for (int i = 0; i < n; i++)
		{
			IdNode	   *kn = CdpGraphNode(k, ids[i], false);
			IdNode	   *node;
			ProfNode   *p;

			if (kn == NULL)
			{
				ids[nread++] = ids[i];
				continue;
			}
			node = CdpGraphNode(g, CdpNodeIdentifier(k, kn), true);
			p = CdpGraphProfile(g, CdpNodeProf(k, kn)->profile_id, true);
			*CdpProfOnline(g, p) = *CdpProfOnline(k, CdpNodeProf(k, kn));
			CdpGraphAttach(g, node, p, CdpNodeLinkedAt(kn), NULL, false);
			if (blocked_known)
				node->blocked = kn->blocked;
		}
		n = nread;
	}
	if (recent)
		n = CdpRecentIdentitiesAttach(g, ids, n);
	if (n == 0)
		return;
	args[0] = IdentifierArray(ids, n);
	rows = CdpExecPlan(OnlineProbePlanFor(PLAN_LOAD_IDS,
							"SELECT i.identifier, i.profile_id, i.linked_at, r.version, "
							"coalesce(r.merge_rank, r.profile_id) "
							"FROM cdp.identities i JOIN cdp.profile_records r USING (profile_id) "
							"WHERE i.identifier = ANY ($1)", 1, argtypes),
					   args, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		CdpIdentifier *id = DatumGetIdentifierP(SPI_getbinval(tup, desc, 1, &isnull));
		int64		profile = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		TimestampTz linked_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		IdNode	   *node = CdpGraphNode(g, id, true);
		ProfNode   *p = CdpGraphProfile(g, profile, true);

		CdpProfOnline(g, p)->version = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		CdpProfOnline(g, p)->rank = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		CdpGraphAttach(g, node, p, linked_at, NULL, false);
		if (recent)
			CdpRecentIdentitiesNote(id, profile, linked_at, CdpProfOnline(g, p)->version,
									CdpProfOnline(g, p)->rank);
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Attach every stored identifier of the given profiles to them, in one
 * statement however many profiles there are.
 */
static void
LoadMembersOf(IdentityGraph *g, int64 *profiles, int n)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1] = {CdpInt8Array(profiles, n)};
	uint64		rows;

	rows = CdpExecPlan(OnlinePlanFor(PLAN_LOAD_MEMBERS,
							"SELECT profile_id, identifier, linked_at FROM cdp.identities "
							"WHERE profile_id = ANY ($1)", 1, argtypes),
					   args, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		ProfNode   *p = CdpGraphProfile(g, DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)), false);
		IdNode	   *node = CdpGraphNode(g, DatumGetIdentifierP(SPI_getbinval(tup, desc, 2, &isnull)), true);

		if (!node->in_members)
			CdpGraphAttach(g, node, p, DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)),
						   NULL, false);
	}
	SPI_freetuptable(SPI_tuptable);
}

static void
StaleSnapshotContext(void *arg)
{
	errcontext("taking the identity lock: another session changed the identity graph after "
			   "this transaction took its snapshot; retry the transaction, or run it in "
			   "READ COMMITTED");
}

/*
 * Every writer of the identity graph takes this lock first: one writer at a time,
 * and every read after this sees the previous writer's commit.  A
 * transaction already holding profile rows taken without the lock does not
 * wait for it (that is the order the other writers use the other way round):
 * it fails as a deadlock victim would, which process_inbox takes as a
 * reason to stop early.  READ
 * COMMITTED statements run after this take a fresh snapshot; a transaction
 * snapshot (REPEATABLE READ, SERIALIZABLE) older than the last writer's
 * commit cannot, so updating the clock row fails for it with 40001.
 */
static void
LockIdentityGraph(void)
{
	static SPIPlanPtr tick = NULL;
	ErrorContextCallback cb;

	if (rows_without_lock_lxid == MyProc->lxid)
	{
		if (!DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4,
											  Int32GetDatum(CDP_LOCK_CLASS),
											  Int32GetDatum(CDP_LOCK_IDENTITY))))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
					 errmsg("cannot wait for the identity lock while holding profile rows"),
					 errdetail("This transaction updated profiles without the identity lock; "
							   "the session holding that lock may be waiting for them."),
					 errhint("Commit, then retry the rest.")));
	}
	else
		DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(CDP_LOCK_CLASS),
							Int32GetDatum(CDP_LOCK_IDENTITY));
	cb.callback = StaleSnapshotContext;
	cb.arg = NULL;
	cb.previous = error_context_stack;
	error_context_stack = &cb;
	CdpExecPlan(CdpPlan(&tick, "UPDATE cdp.identity_clock SET ticks = ticks + 1", 0, NULL),
				NULL, NULL, SPI_OK_UPDATE);
	error_context_stack = cb.previous;
}

/*
 * The identity lock for a writer other than ingest (split, rebuild,
 * forget): what this transaction knew of the graph is no longer to be
 * trusted once it writes.
 */
void
CdpLockIdentityGraph(void)
{
	graph_writes++;
	CdpKnownIdentitiesForget();
	LockIdentityGraph();
	CdpIdentityGraphChanged(true);
}

/*
 * The graph asks for every identifier of a profile before checking limits;
 * PreloadMembers has read most of them already, this serves the rest.
 */
static void
LoadMembers(IdentityGraph *g, ProfNode *p)
{
	if (!p->is_new)
		LoadMembersOf(g, &p->profile_id, 1);
}

/* the user_id an alias's previousId would name, or NULL */
static CdpIdentifier *
AliasAsUser(CdpMessage *msg)
{
	const char *problem;

	if (msg == NULL || msg->previous_id == NULL)
		return NULL;
	return CdpMakeIdentifier("user_id", 7, msg->previous_id, strlen(msg->previous_id), &problem);
}

int64
CdpNextProfileId(void)
{
	Oid			seq = get_relname_relid("profile_id_seq", get_namespace_oid("cdp", false));

	return DatumGetInt64(DirectFunctionCall1(nextval_oid, ObjectIdGetDatum(seq)));
}

static int64
NextProfileId(IdentityGraph *g)
{
	return CdpNextProfileId();
}

static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * Lock the rows of the given profiles in ascending id order and read their
 * merge state.  A profile merged away meanwhile is followed to the profile
 * that absorbed it, which is then locked too.  Returns true if a profile
 * lost identifiers (a split) since the graph was read: then it is stale.
 */
static bool
LockProfiles(IdentityGraph *g, int64 *ids, int n)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	bool		stale = false;

	while (n > 0)
	{
		Datum		args[1];
		uint64		rows;
		int64	   *follow = palloc(sizeof(int64) * n);
		int			nfollow = 0;

		qsort(ids, n, sizeof(int64), CompareInt64);
		args[0] = CdpInt8Array(ids, n);
		rows = CdpExecPlan(OnlineProbePlanFor(PLAN_LOCK_PROFILES,
								"SELECT profile_id, merged_into, merges_absorbed, version, "
								"coalesce(merge_rank, profile_id), ctid FROM cdp.profile_records "
								"WHERE profile_id = ANY ($1) ORDER BY profile_id FOR UPDATE", 1, argtypes),
						   args, NULL, SPI_OK_SELECT);
		for (uint64 r = 0; r < rows; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			ProfNode   *p = CdpGraphProfile(g, DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)), true);
			Datum		into;

			p->merges_absorbed = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
			CdpProfOnline(g, p)->rank = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
			/* the version locked: the batch's counts are added there (WriteStatsDirectly) */
			CdpProfOnline(g, p)->row =
				*(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 6, &isnull));
			stale |= CdpProfOnline(g, p)->version >= 0 &&
				CdpProfOnline(g, p)->version != DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
			into = SPI_getbinval(tup, desc, 2, &isnull);
			if (!isnull && p->into == 0)
			{
				p->into = CdpGraphProfile(g, DatumGetInt64(into), true)->self;
				follow[nfollow++] = DatumGetInt64(into);
			}
		}
		SPI_freetuptable(SPI_tuptable);
		ids = follow;
		n = nfollow;
	}
	return stale;
}

/*
 * LockProfiles for a batch that holds no identity lock, in a subtransaction:
 * if what it read is stale, the subtransaction rolls back and the row locks
 * go with it, so the batch never waits for the identity lock while holding
 * profile rows that a writer holding that lock may be waiting for.
 */
static bool
LockProfilesUnlessStale(IdentityGraph *g, int64 *ids, int n)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		stale = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		stale = LockProfiles(g, ids, n);
	}
	PG_CATCH();
	{
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (stale)
		RollbackAndReleaseCurrentSubTransaction();
	else
		ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return stale;
}

/*
 * The profiles of every attached node, for locking; those this transaction
 * locked already (known to k, when not NULL) take what LockProfiles would
 * read from what it keeps instead.
 */
static int
AttachedProfiles(IdentityGraph *g, int64 **out, IdentityGraph *k)
{
	uint32		count = CdpGraphProfileCount(g);
	int			n = 0;
	int64	   *ids = palloc(sizeof(int64) * Max(count, 1));

	for (uint32 i = 0; i < count; i++)
	{
		ProfNode   *p = CdpGraphProfileAt(g, i);
		ProfNode   *kp = k ? CdpGraphProfile(k, p->profile_id, false) : NULL;

		if (kp != NULL)
		{
			p->merges_absorbed = kp->merges_absorbed;
			CdpProfOnline(g, p)->rank = CdpProfOnline(k, kp)->rank;
		}
		else if (!p->is_new)
			ids[n++] = p->profile_id;
	}
	*out = ids;
	return n;
}

static bool
IsFastNoOp(IdentityGraph *g, IdItem *mi)
{
	int64		profile = 0;
	ListCell   *lc;

	if (mi->invalid != NIL)
		return false;
	foreach(lc, mi->ids)
	{
		IdNode	   *node = CdpGraphNode(g, lfirst(lc), false);
		bool		blocked;

		/* the node keeps the answer, as resolution does (a rule can be a regex) */
		if (node == NULL)
			blocked = CdpIsBlocked(g->rules, lfirst(lc));
		else
		{
			if (node->blocked == 0)
				node->blocked = CdpIsBlocked(g->rules, lfirst(lc)) ? 2 : 1;
			blocked = (node->blocked == 2);
		}
		if (blocked)
			continue;
		if (node == NULL || !node->attached)
			return false;
		if (profile != 0 && CdpCanonicalOf(g, CdpNodeProf(g, node))->profile_id != profile)
			return false;
		profile = CdpCanonicalOf(g, CdpNodeProf(g, node))->profile_id;
	}
	return true;
}

/* note the stored profile holding id, once, among those to preload */
static void
NoteMembersToLoad(IdentityGraph *g, CdpIdentifier *id, int64 *ids, int *n)
{
	IdNode	   *node = id ? CdpGraphNode(g, id, false) : NULL;
	ProfNode   *p;

	if (node == NULL || !node->attached)
		return;
	p = CdpCanonicalOf(g, CdpNodeProf(g, node));
	if (p->is_new || p->members_loaded)
		return;
	p->members_loaded = true;
	ids[(*n)++] = p->profile_id;
}

/*
 * Read, in one statement, every identifier of the stored profiles that the
 * batch's graph-changing messages touch: the algorithm needs a profile's
 * members before it merges or grows it, and asking profile by profile costs
 * a statement each.
 */
static void
PreloadMembers(IdentityGraph *g, IdItem *items, int n)
{
	uint32		cap = CdpGraphProfileCount(g);
	int64	   *ids = palloc(sizeof(int64) * Max(cap, 1));
	int			nids = 0;

	for (int i = 0; i < n; i++)
	{
		ListCell   *lc;

		if (IsFastNoOp(g, &items[i]))
			continue;
		foreach(lc, items[i].ids)
			NoteMembersToLoad(g, lfirst(lc), ids, &nids);
		NoteMembersToLoad(g, AliasAsUser(items[i].msg), ids, &nids);
	}
	if (nids > 0)
		LoadMembersOf(g, ids, nids);
}

static IdentityGraph *
BuildGraph(IdentityRules *rules, IdItem *items, int n, MemoryContext cxt, IdentityGraph *k,
		   bool recent)
{
	IdentityGraph *g = CdpNewIdentityGraph(rules, cxt, false);
	List	   *all = NIL;
	CdpIdentifier **arr;
	int			nall = 0;
	ListCell   *lc;

	g->load_members = LoadMembers;
	g->new_profile_id = NextProfileId;
	for (int i = 0; i < n; i++)
	{
		CdpIdentifier *as_user = AliasAsUser(items[i].msg);

		all = list_concat(all, list_copy(items[i].ids));
		if (as_user)
			all = lappend(all, as_user);
	}
	arr = palloc(sizeof(CdpIdentifier *) * Max(list_length(all), 1));
	foreach(lc, all)
		arr[nall++] = lfirst(lc);
	LoadIdentities(g, arr, nall, k, recent);

	return g;
}

/*
 * A message links its first CDP_MAX_MESSAGE_IDS identifiers only: it asserts
 * every pair of them, so the evidence of one message grows with the square.
 * The rest are a violation (see ResolveItems).
 */
static void
CapIdentifiers(IdItem *item)
{
	item->ncarried = list_length(item->ids);
	if (item->ncarried > CDP_MAX_MESSAGE_IDS)
	{
		item->first_capped = list_nth(item->ids, CDP_MAX_MESSAGE_IDS);
		item->ids = list_truncate(item->ids, CDP_MAX_MESSAGE_IDS);
	}
}

/*
 * An alias's previousId names a user_id if one exists at this point of the
 * batch (an earlier message of the same batch counts), else an anonymous_id.
 */
static void
AliasTarget(IdentityGraph *g, IdItem *item)
{
	CdpIdentifier *as_user;
	IdNode	   *node;

	if (item->msg == NULL || item->msg->previous_id == NULL)
		return;
	as_user = AliasAsUser(item->msg);
	node = as_user ? CdpGraphNode(g, as_user, false) : NULL;
	item->ids = CdpMessageIdentifiers(item->msg,
									  node != NULL && node->attached ? "user_id" : "anonymous_id",
									  &item->invalid);
	CapIdentifiers(item);
}

static void
WriteViolations(IdentityGraph *g)
{
	int			n = list_length(g->violations);
	CdpIdentifier **ids = palloc(sizeof(CdpIdentifier *) * Max(n, 1));
	const char **mids = palloc(sizeof(char *) * Max(n, 1));
	const char **rules = palloc(sizeof(char *) * Max(n, 1));
	const char **details = palloc(sizeof(char *) * Max(n, 1));
	TimestampTz *ats = palloc(sizeof(TimestampTz) * Max(n, 1));
	Oid			argtypes[5] = {get_array_type(plans_type_oid), TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		args[5];
	int			k = 0;
	ListCell   *lc;

	if (n == 0)
		return;
	foreach(lc, g->violations)
	{
		IdViolation *v = lfirst(lc);

		mids[k] = v->message_id;
		rules[k] = v->rule;
		details[k] = v->detail;
		ats[k] = v->at;
		ids[k] = v->identifier;
		k++;
	}
	/* identifiers may be NULL (an invalid one): pass them as text */
	{
		const char **texts = palloc(sizeof(char *) * n);

		for (int i = 0; i < n; i++)
			texts[i] = ids[i] ? CdpIdentifierToCString(ids[i]) : NULL;
		argtypes[0] = TEXTARRAYOID;
		args[0] = TextArray(texts, n);
	}
	args[1] = TextArray(mids, n);
	args[2] = TextArray(rules, n);
	args[3] = TextArray(details, n);
	args[4] = TimestampArray(ats, n);
	CdpExecPlan(OnlinePlanFor(PLAN_INSERT_VIOLATIONS,
					 "INSERT INTO cdp.identity_violations (identifier, message_id, rule, detail, at) "
					 "SELECT i::cdp.identifier, m, r, d, t FROM ROWS FROM (unnest($1), unnest($2), "
					 "unnest($3), unnest($4), unnest($5)) AS u(i, m, r, d, t)",
					 5, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/* the new profiles' rows, written directly if cdp.profile_records allows */
static bool
InsertProfilesDirectly(int64 *ids, int64 *into, int64 *counts, TimestampTz *lo,
					   TimestampTz *hi, int32 *absorbed, int n)
{
	static const char *const cols[6] = {"profile_id", "merged_into", "event_count",
	"first_seen", "last_seen", "merges_absorbed"};
	static const Oid types[6] = {INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	INT4OID};
	Datum	   *values = palloc(sizeof(Datum) * 6 * n);
	bool	   *nulls = palloc(sizeof(bool) * 6 * n);
	Oid			relid = OwnTable("profile_records");

	for (int i = 0; i < n; i++)
	{
		Datum	   *v = &values[6 * i];
		bool	   *isnull = &nulls[6 * i];

		v[0] = Int64GetDatum(ids[i]);
		isnull[0] = false;
		v[1] = Int64GetDatum(into[i]);
		isnull[1] = (into[i] == 0);
		v[2] = Int64GetDatum(counts[i]);
		isnull[2] = false;
		v[3] = TimestampTzGetDatum(lo[i]);
		isnull[3] = (counts[i] == 0);
		v[4] = TimestampTzGetDatum(hi[i]);
		isnull[4] = (counts[i] == 0);
		v[5] = Int32GetDatum(absorbed[i]);
		isnull[5] = false;
	}
	return OidIsValid(relid) && CdpInsertRowsDirectly(relid, cols, types, 6, values, nulls, n);
}

/*
 * The profiles the batch made, each as it stands at the end of the batch:
 * the count and seen times of the batch's events it holds, the merges it
 * absorbed.  A profile made here is written once, not inserted and then
 * updated (which left a dead version of every new profile and, the page
 * being full, a second index entry).  Like the other inserts of new rows,
 * the statement (when the rows cannot be written directly) unnests its
 * arrays in the select list (side by side), which streams the rows; ROWS
 * FROM would store them in a tuplestore first.
 */
static void
WriteNewProfiles(IdentityGraph *g, IdItem *items, int nitems)
{
	uint32		cap = CdpGraphProfileCount(g);
	int64	   *ids = palloc(sizeof(int64) * Max(cap, 1));
	int64	   *into = palloc(sizeof(int64) * Max(cap, 1));
	int64	   *counts = palloc0(sizeof(int64) * Max(cap, 1));
	TimestampTz *lo = palloc(sizeof(TimestampTz) * Max(cap, 1));
	TimestampTz *hi = palloc(sizeof(TimestampTz) * Max(cap, 1));
	int32	   *absorbed = palloc(sizeof(int32) * Max(cap, 1));
	int			n = 0;
	Oid			argtypes[6] = {INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
	TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID};
	Datum		args[6];

	for (uint32 i = 0; i < cap; i++)
	{
		ProfNode   *p = CdpGraphProfileAt(g, i);

		if (p->is_new)
			ids[n++] = p->profile_id;
	}
	if (n == 0)
		return;
	qsort(ids, n, sizeof(int64), CompareInt64);
	for (int j = 0; j < n; j++)
	{
		ProfNode   *p = CdpGraphProfile(g, ids[j], false);

		into[j] = p->into ? CdpCanonicalOf(g, p)->profile_id : 0;
		absorbed[j] = p->merges_absorbed;
		lo[j] = DT_NOEND;
		hi[j] = DT_NOBEGIN;
	}
	/* events name the profile holding them at the end: a canonical one */
	for (int i = 0; i < nitems; i++)
	{
		CdpMessage *msg = items[i].msg;
		int64	   *hit;

		if (msg == NULL || !msg->has_profile_id)
			continue;
		hit = bsearch(&msg->profile_id, ids, n, sizeof(int64), CompareInt64);
		if (hit == NULL)
			continue;
		counts[hit - ids]++;
		lo[hit - ids] = Min(lo[hit - ids], msg->ts);
		hi[hit - ids] = Max(hi[hit - ids], msg->ts);
	}
	if (InsertProfilesDirectly(ids, into, counts, lo, hi, absorbed, n))
		return;
	args[0] = CdpInt8Array(ids, n);
	args[1] = CdpInt8Array(into, n);
	args[2] = CdpInt8Array(counts, n);
	args[3] = TimestampArray(lo, n);
	args[4] = TimestampArray(hi, n);
	args[5] = Int4Array(absorbed, n);
	CdpExecPlan(OnlinePlanFor(PLAN_INSERT_PROFILES,
					 "INSERT INTO cdp.profile_records (profile_id, merged_into, event_count, "
					 "first_seen, last_seen, merges_absorbed) "
					 "SELECT u.id, nullif(u.i, 0), u.n, CASE WHEN u.n > 0 THEN u.lo END, "
					 "CASE WHEN u.n > 0 THEN u.hi END, u.a "
					 "FROM (SELECT unnest($1) AS id, unnest($2) AS i, unnest($3) AS n, "
					 "unnest($4) AS lo, unnest($5) AS hi, unnest($6) AS a) u",
					 6, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/*
 * Record the batch's merges, and move the rows of the profiles that existed
 * before it, all in a few statements over arrays: each such profile goes
 * straight to the profile that holds everything at the end of the batch
 * (a merge chain within the batch collapses), with its identities, event
 * counts and seen times, and everything that had been merged into it.
 */
static void
WriteMerges(IdentityGraph *g)
{
	int			n = list_length(g->merges);
	int64	   *from = palloc(sizeof(int64) * Max(n, 1));
	int64	   *into = palloc(sizeof(int64) * Max(n, 1));
	int64	   *moved = palloc(sizeof(int64) * Max(n, 1));
	int64	   *final = palloc(sizeof(int64) * Max(n, 1));
	const char **mids = palloc(sizeof(char *) * Max(n, 1));
	const char **reasons = palloc(sizeof(char *) * Max(n, 1));
	TimestampTz *ats = palloc(sizeof(TimestampTz) * Max(n, 1));
	Oid			pairs[2] = {INT8ARRAYOID, INT8ARRAYOID};
	Oid			argtypes[5] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TIMESTAMPTZARRAYOID};
	Datum		args[5];
	int			k = 0;
	int			nmoved = 0;
	ListCell   *lc;

	if (n == 0)
		return;
	graph_writes++;
	/* a merge moves identities; pairs and their evidence stay as they are */
	CdpIdentityGraphChanged(false);
	foreach(lc, g->merges)
	{
		IdMerge    *m = lfirst(lc);
		ProfNode   *fp = CdpGraphProfile(g, m->from_profile, false);

		from[k] = m->from_profile;
		into[k] = m->into_profile;
		mids[k] = m->message_id;
		reasons[k] = m->reason;
		ats[k] = m->at;
		k++;
		/* a new profile's identities are written under the final profile */
		if (!fp->is_new)
		{
			moved[nmoved] = fp->profile_id;
			final[nmoved] = CdpCanonicalOf(g, fp)->profile_id;
			nmoved++;
		}
	}
	if (nmoved > 0)
	{
		Datum		pair[2] = {CdpInt8Array(moved, nmoved), CdpInt8Array(final, nmoved)};

		CdpExecPlan(OnlinePlanFor(PLAN_MOVE_IDENTITIES,
						 "UPDATE cdp.identities i SET profile_id = u.t "
						 "FROM ROWS FROM (unnest($1), unnest($2)) AS u(f, t) WHERE i.profile_id = u.f",
						 2, pairs), pair, NULL, SPI_OK_UPDATE);
		CdpExecPlan(OnlinePlanFor(PLAN_MOVE_STATS,
						 "UPDATE cdp.profile_records t SET event_count = t.event_count + s.n, "
						 "first_seen = LEAST(t.first_seen, s.lo), last_seen = GREATEST(t.last_seen, s.hi) "
						 "FROM (SELECT u.t, sum(f.event_count) AS n, min(f.first_seen) AS lo, "
						 "             max(f.last_seen) AS hi "
						 "        FROM ROWS FROM (unnest($1), unnest($2)) AS u(f, t) "
						 "        JOIN cdp.profile_records f ON f.profile_id = u.f GROUP BY u.t) s "
						 "WHERE t.profile_id = s.t",
						 2, pairs), pair, NULL, SPI_OK_UPDATE);
		/* the moved profiles and those merged into them point at the final one */
		CdpExecPlan(OnlinePlanFor(PLAN_REDIRECT,
						 "UPDATE cdp.profile_records r SET merged_into = m.t, "
						 "event_count = CASE WHEN m.moved THEN 0 ELSE r.event_count END "
						 "FROM (SELECT u.f AS id, u.t, true AS moved "
						 "        FROM ROWS FROM (unnest($1), unnest($2)) AS u(f, t) "
						 "      UNION ALL "
						 "      SELECT x.profile_id, u.t, false "
						 "        FROM ROWS FROM (unnest($1), unnest($2)) AS u(f, t) "
						 "        JOIN cdp.profile_records x ON x.merged_into = u.f "
						 "       WHERE x.merged_into IS NOT NULL) m "	/* its partial index */
						 "WHERE r.profile_id = m.id",
						 2, pairs), pair, NULL, SPI_OK_UPDATE);
		/*
		 * The profiles that took identifiers hold their traits and consent
		 * now; those merged away keep none (recomputed from no identifiers).
		 */
		CdpRecomputeProfileState(moved, nmoved);
	}
	args[0] = CdpInt8Array(from, n);
	args[1] = CdpInt8Array(into, n);
	args[2] = TextArray(mids, n);
	args[3] = TextArray(reasons, n);
	args[4] = TimestampArray(ats, n);
	CdpExecPlan(OnlinePlanFor(PLAN_INSERT_MERGES,
					 "INSERT INTO cdp.merges (from_profile, into_profile, message_id, reason, merged_at) "
					 "SELECT * FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5))",
					 5, argtypes),
				args, NULL, SPI_OK_INSERT);
	CdpStatsAdd(CDP_STAT_MERGES, n);
}

/* the new identities' rows, written directly if cdp.identities allows */
static bool
InsertIdentitiesDirectly(CdpIdentifier **ids, int64 *profiles, TimestampTz *ats,
						 const char **mids, int n)
{
	static const char *const cols[4] = {"identifier", "profile_id", "linked_at", "message_id"};
	Oid			types[4] = {plans_type_oid, INT8OID, TIMESTAMPTZOID, TEXTOID};
	Datum	   *values = palloc(sizeof(Datum) * 4 * n);
	bool	   *nulls = palloc0(sizeof(bool) * 4 * n);
	Oid			relid = OwnTable("identities");

	for (int i = 0; i < n; i++)
	{
		values[4 * i] = PointerGetDatum(ids[i]);
		values[4 * i + 1] = Int64GetDatum(profiles[i]);
		values[4 * i + 2] = TimestampTzGetDatum(ats[i]);
		SetTextValue(&values[4 * i + 3], &nulls[4 * i + 3], mids[i]);
	}
	return OidIsValid(relid) && CdpInsertRowsDirectly(relid, cols, types, 4, values, nulls, n);
}

/*
 * Hand the identities a batch wrote to what an ingest worker keeps
 * (identity_recent.c), as a lookup after commit would return them: its
 * next batches find them without reading cdp.identities again.  A new
 * profile's row has version 0 and no merge rank; a stored profile's were
 * read when it was attached (-1: not read, not kept).
 */
static void
NoteNewIdentities(IdentityGraph *g, CdpIdentifier **ids, const int64 *profiles,
				  const TimestampTz *ats, int n)
{
	for (int i = 0; i < n; i++)
	{
		ProfNode   *p = CdpGraphProfile(g, profiles[i], false);
		int32		version;

		if (p == NULL)
			continue;
		version = p->is_new ? 0 : CdpProfOnline(g, p)->version;
		if (version >= 0)
			CdpRecentIdentitiesNote(ids[i], profiles[i], ats[i], version,
									CdpProfOnline(g, p)->rank);
	}
}

static void
WriteNewIdentities(IdentityGraph *g)
{
	uint32		cap = CdpGraphNodeCount(g);
	CdpIdentifier **ids = palloc(sizeof(CdpIdentifier *) * Max(cap, 1));
	int64	   *profiles = palloc(sizeof(int64) * Max(cap, 1));
	TimestampTz *ats = palloc(sizeof(TimestampTz) * Max(cap, 1));
	const char **mids = palloc(sizeof(char *) * Max(cap, 1));
	Oid			argtypes[4] = {get_array_type(plans_type_oid), INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	TEXTARRAYOID};
	Datum		args[4];
	int			n = 0;

	CdpNodeIter it = {0, 0};
	IdNode	   *node;

	while ((node = CdpGraphNextNode(g, &it)) != NULL)
	{
		if (!node->is_new)
			continue;
		ids[n] = CdpNodeIdentifier(g, node);
		profiles[n] = CdpCanonicalOf(g, CdpNodeProf(g, node))->profile_id;
		ats[n] = CdpNodeLinkedAt(node);
		mids[n] = node->src.message ? g->message_ids[node->src.message - 1] : NULL;
		n++;
	}
	if (n == 0)
		return;
	if (!InsertIdentitiesDirectly(ids, profiles, ats, mids, n))
	{
		args[0] = IdentifierArray(ids, n);
		args[1] = CdpInt8Array(profiles, n);
		args[2] = TimestampArray(ats, n);
		args[3] = TextArray(mids, n);
		CdpExecPlan(OnlinePlanFor(PLAN_INSERT_IDENTITIES,
						 "INSERT INTO cdp.identities (identifier, profile_id, linked_at, message_id) "
						 "SELECT unnest($1), unnest($2), unnest($3), unnest($4)",
						 4, argtypes),
					args, NULL, SPI_OK_INSERT);
	}
	NoteNewIdentities(g, ids, profiles, ats, n);
	CdpProfileStateOfNewIdentities(ids, profiles, n);
}

static int
ComparePairRefs(const void *x, const void *y)
{
	const PairRef *p = x;
	const PairRef *q = y;
	int			c = CdpIdentifierCompare(p->a, q->a);

	if (c == 0)
		c = CdpIdentifierCompare(p->b, q->b);
	if (c == 0)
		c = (p->item > q->item) - (p->item < q->item);
	return c;
}

/* did the message of item link both ends of the pair it carries? */
static bool
LinksPair(IdItem *items, PairRef *pr)
{
	IdMessage  *m = &items[pr->item].m;

	return m->linked != NULL && m->linked[pr->x] && m->linked[pr->y];
}

/*
 * Every distinct pair of identifiers the batch's messages carry, in (a, b)
 * order (the one order every session inserts them in), each with the first
 * message carrying it and whether that one linked both ends, and the first
 * that linked both ends and changed the graph (so leaves evidence); *known says
 * which cdp.identity_pairs already holds, and with linked (when wanted)
 * whether the message stored for it linked both ends.  One probe of the
 * pair table for the whole batch, for the pairs this transaction has not
 * found before (identity_known.c) and an ingest worker has not kept
 * (identity_recent.c).
 */
static int
BatchPairs(IdItem *items, int n, PairRef **out, bool **known, bool **linked)
{
	int64		cap = 0;
	int			np = 0,
				nd = 0,
				nprobed = 0;
	int		   *probed;
	PairRef    *pairs;
	CdpIdentifier **as,
			  **bs;
	Oid			argtypes[2];
	Datum		args[2];
	uint64		rows;

	for (int i = 0; i < n; i++)
	{
		int64		k = list_length(items[i].ids);

		cap += k * (k - 1) / 2;
	}
	pairs = palloc(sizeof(PairRef) * Max(cap, 1));
	for (int i = 0; i < n; i++)
	{
		int			k = list_length(items[i].ids);

		for (int x = 0; x < k; x++)
		{
			CdpIdentifier *a = list_nth(items[i].ids, x);

			for (int y = x + 1; y < k; y++)
			{
				CdpIdentifier *b = list_nth(items[i].ids, y);
				int			c = CdpIdentifierCompare(a, b);

				if (c == 0)
					continue;
				pairs[np].a = c < 0 ? a : b;
				pairs[np].b = c < 0 ? b : a;
				pairs[np].item = i;
				pairs[np].x = x;
				pairs[np].y = y;
				np++;
			}
		}
	}
	qsort(pairs, np, sizeof(PairRef), ComparePairRefs);
	/* sorted by message within a pair: the first one stays */
	for (int i = 0; i < np; i++)
	{
		bool		first = nd == 0 || CdpIdentifierCompare(pairs[nd - 1].a, pairs[i].a) != 0 ||
			CdpIdentifierCompare(pairs[nd - 1].b, pairs[i].b) != 0;
		bool		links = LinksPair(items, &pairs[i]);

		if (first)
		{
			pairs[nd] = pairs[i];
			pairs[nd].first_links = links;
			pairs[nd++].link_item = -1;
		}
		if (links && pairs[nd - 1].link_item < 0 && items[pairs[i].item].m.changed)
			pairs[nd - 1].link_item = pairs[i].item;
	}
	*out = pairs;
	*known = palloc0(sizeof(bool) * Max(nd, 1));
	if (linked)
		*linked = palloc0(sizeof(bool) * Max(nd, 1));
	if (nd == 0)
		return 0;

	/* the pairs this transaction found already need no probe */
	as = palloc(sizeof(CdpIdentifier *) * nd);
	bs = palloc(sizeof(CdpIdentifier *) * nd);
	probed = palloc(sizeof(int) * nd);
	for (int i = 0; i < nd; i++)
	{
		if (CdpKnownPair(pairs[i].a, pairs[i].b, linked ? &(*linked)[i] : NULL))
		{
			(*known)[i] = true;
			continue;
		}
		if (CdpRecentPair(pairs[i].a, pairs[i].b, linked ? &(*linked)[i] : NULL))
		{
			(*known)[i] = true;
			continue;
		}
		as[nprobed] = pairs[i].a;
		bs[nprobed] = pairs[i].b;
		probed[nprobed++] = i;
	}
	if (nprobed == 0)
		return nd;
	argtypes[0] = argtypes[1] = get_array_type(plans_type_oid);
	args[0] = IdentifierArray(as, nprobed);
	args[1] = IdentifierArray(bs, nprobed);
	if (linked)
		rows = CdpExecPlan(OnlineProbePlanFor(PLAN_KNOWN_PAIRS_LINKED,
										 "SELECT u.ord::int4, NOT EXISTS (SELECT FROM cdp.identity_evidence e "
										 "  WHERE e.seq = p.seq AND NOT e.linked @> ARRAY[p.a, p.b]) "
										 "FROM ROWS FROM (unnest($1), unnest($2)) "
										 "WITH ORDINALITY AS u(a, b, ord) "
										 "JOIN cdp.identity_pairs p ON p.a = u.a AND p.b = u.b",
										 2, argtypes),
						   args, NULL, SPI_OK_SELECT);
	else
		rows = CdpExecPlan(OnlineProbePlanFor(PLAN_KNOWN_PAIRS,
										 "SELECT u.ord::int4 FROM ROWS FROM (unnest($1), unnest($2)) "
										 "WITH ORDINALITY AS u(a, b, ord) "
										 "JOIN cdp.identity_pairs p ON p.a = u.a AND p.b = u.b",
										 2, argtypes),
						   args, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		bool		isnull;
		int			k = probed[DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r],
														   SPI_tuptable->tupdesc, 1,
														   &isnull)) - 1];

		(*known)[k] = true;
		if (linked)
			(*linked)[k] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
													  2, &isnull));
		CdpKnownPairRemember(pairs[k].a, pairs[k].b, linked ? (*linked)[k] : -1);
		CdpRecentPairNote(pairs[k].a, pairs[k].b, linked && (*linked)[k]);
	}
	SPI_freetuptable(SPI_tuptable);
	return nd;
}

/* does a message of the batch carry a pair the evidence does not hold yet? */
static bool
AssertsNewPair(IdItem *items, int n)
{
	PairRef    *pairs;
	bool	   *known;
	int			np = BatchPairs(items, n, &pairs, &known, NULL);

	for (int i = 0; i < np; i++)
		if (!known[i])
			return true;
	return false;
}

/*
 * Store the pairs no earlier message carried, in (a, b) order, each with
 * the evidence row of the first message of the batch that linked both ends
 * (else the first carrying it).  A pair whose stored message did not link
 * it (a rule refused one end) takes the first message that does: only a
 * pair its message linked is a link for split_profile and explain_link.
 * Under the identity lock nobody else writes them; ON CONFLICT is the
 * safety net.
 */
static void
WriteNewPairs(IdItem *items, PairRef *pairs, bool *known, bool *linked, int np, int64 *item_seq)
{
	CdpIdentifier **as = palloc(sizeof(CdpIdentifier *) * Max(np, 1));
	CdpIdentifier **bs = palloc(sizeof(CdpIdentifier *) * Max(np, 1));
	const char **pmids = palloc(sizeof(char *) * Max(np, 1));
	TimestampTz *pats = palloc(sizeof(TimestampTz) * Max(np, 1));
	int64	   *pseqs = palloc(sizeof(int64) * Max(np, 1));
	Oid			ptypes[5] = {get_array_type(plans_type_oid), get_array_type(plans_type_oid),
	TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	Datum		pargs[5];

	for (int pass = 0; pass < 2; pass++)
	{
		int			count = 0;

		for (int p = 0; p < np; p++)
		{
			int			first = pairs[p].item;
			int			links = (pairs[p].first_links && item_seq[first] != 0) ? first :
				pairs[p].link_item;
			int			it = links >= 0 ? links : first;
			IdItem	   *item = &items[it];

			if (pass == 0 ? known[p] : (!known[p] || linked[p] || links < 0))
				continue;
			as[count] = pairs[p].a;
			bs[count] = pairs[p].b;
			pmids[count] = item->message_id;
			pats[count] = item->ts;
			pseqs[count] = item_seq[it];
			count++;
		}
		if (count == 0)
			continue;
		pargs[0] = IdentifierArray(as, count);
		pargs[1] = IdentifierArray(bs, count);
		pargs[2] = TextArray(pmids, count);
		pargs[3] = TimestampArray(pats, count);
		pargs[4] = CdpInt8Array(pseqs, count);
		if (pass == 0)
			CdpExecPlan(OnlinePlanFor(PLAN_INSERT_PAIRS,
							 "INSERT INTO cdp.identity_pairs (a, b, message_id, observed_at, seq) "
							 "SELECT * FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), "
							 "unnest($5)) ON CONFLICT DO NOTHING",
							 5, ptypes),
						pargs, NULL, SPI_OK_INSERT);
		else
		{
			/* each now points at a message that linked both ends */
			for (int c = 0; c < count; c++)
				CdpKnownPairRemember(as[c], bs[c], 1);
			CdpExecPlan(OnlinePlanFor(PLAN_RELINK_PAIRS,
							 "UPDATE cdp.identity_pairs p SET message_id = u.m, observed_at = u.t, seq = u.q "
							 "FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5)) "
							 "AS u(a, b, m, t, q) WHERE p.a = u.a AND p.b = u.b",
							 5, ptypes),
						pargs, NULL, SPI_OK_UPDATE);
		}
	}
}

/*
 * The identifiers of evidence rows 1..nrows, grouped from a flat array by
 * row number (rows numbered in order): the identifiers of row r.
 */
static Datum
RowIdentifiers(CdpIdentifier **ids, int64 *row_of, int nids, int64 r, int *next)
{
	int			start = *next;

	while (*next < nids && row_of[*next] == r)
		(*next)++;
	return IdentifierArray(ids + start, *next - start);
}

/* the evidence rows, written directly if cdp.identity_evidence allows */
static bool
InsertEvidenceDirectly(const char **mids, TimestampTz *ats, int64 *created, const char **sources,
					   int64 *seqs, int nrows, CdpIdentifier **all, int64 *all_row, int nall,
					   CdpIdentifier **linked, int64 *linked_row, int nlinked)
{
	static const char *const cols[7] = {"seq", "message_id", "observed_at", "identifiers",
	"linked", "created_profile", "source"};
	Oid			array_type = get_array_type(plans_type_oid);
	Oid			types[7] = {INT8OID, TEXTOID, TIMESTAMPTZOID, array_type, array_type, INT8OID,
	TEXTOID};
	Datum	   *values = palloc(sizeof(Datum) * 7 * nrows);
	bool	   *nulls = palloc0(sizeof(bool) * 7 * nrows);
	Oid			relid = OwnTable("identity_evidence");
	int			next_all = 0;
	int			next_linked = 0;

	for (int r = 0; r < nrows; r++)
	{
		Datum	   *v = values + 7 * r;
		bool	   *isnull = nulls + 7 * r;

		v[0] = Int64GetDatum(seqs[r]);
		SetTextValue(&v[1], &isnull[1], mids[r]);
		v[2] = TimestampTzGetDatum(ats[r]);
		v[3] = RowIdentifiers(all, all_row, nall, r + 1, &next_all);
		v[4] = RowIdentifiers(linked, linked_row, nlinked, r + 1, &next_linked);
		v[5] = Int64GetDatum(created[r]);
		isnull[5] = (created[r] == 0);
		SetTextValue(&v[6], &isnull[6], sources[r]);
	}
	return OidIsValid(relid) && CdpInsertRowsDirectly(relid, cols, types, 7, values, nulls, nrows);
}

/*
 * The evidence of a batch.  A message gets an evidence row (what it carried,
 * for rebuilds) when it changed the graph or carries a pair of identifiers
 * no earlier message did; each such pair goes to cdp.identity_pairs with
 * that row.  That depends only on the message and the evidence before it,
 * never on the batch.  Identifier lists travel as one flat array with the row
 * number of each; seqs are drawn in message order, the replay order.
 */
static void
WriteEvidence(IdItem *items, int n)
{
	PairRef    *pairs;
	bool	   *known;
	bool	   *known_linked;
	int			np = BatchPairs(items, n, &pairs, &known, &known_linked);
	bool	   *asserts_new = palloc0(sizeof(bool) * n);
	int64	   *item_seq = palloc0(sizeof(int64) * n);
	Oid			seq_rel = get_relname_relid("identity_seq", get_namespace_oid("cdp", false));
	int			cap = 0;
	int			nrows = 0;
	int			nall = 0,
				nlinked = 0;
	CdpIdentifier **all,
			  **linked;
	int64	   *all_row,
			   *linked_row;
	const char **mids,
			  **sources;
	TimestampTz *ats;
	int64	   *created,
			   *seqs;
	Oid			argtypes[9];
	Datum		args[9];

	for (int p = 0; p < np; p++)
		if (!known[p])
			asserts_new[pairs[p].item] = true;
	for (int i = 0; i < n; i++)
		if (items[i].m.changed || asserts_new[i])
			cap += list_length(items[i].ids);
	if (cap == 0)
		return;
	all = palloc(sizeof(CdpIdentifier *) * cap);
	linked = palloc(sizeof(CdpIdentifier *) * cap);
	all_row = palloc(sizeof(int64) * cap);
	linked_row = palloc(sizeof(int64) * cap);
	mids = palloc(sizeof(char *) * n);
	sources = palloc(sizeof(char *) * n);
	ats = palloc(sizeof(TimestampTz) * n);
	created = palloc(sizeof(int64) * n);
	seqs = palloc(sizeof(int64) * n);

	for (int i = 0; i < n; i++)
	{
		int			k = 0;
		ListCell   *lc;

		if (!items[i].m.changed && !asserts_new[i])
			continue;
		item_seq[i] = DatumGetInt64(DirectFunctionCall1(nextval_oid, ObjectIdGetDatum(seq_rel)));
		seqs[nrows] = item_seq[i];
		foreach(lc, items[i].ids)
		{
			CdpIdentifier *id = lfirst(lc);

			all_row[nall] = nrows + 1;
			all[nall++] = id;
			if (items[i].m.linked[k])
			{
				linked_row[nlinked] = nrows + 1;
				linked[nlinked++] = id;
			}
			k++;
		}
		mids[nrows] = items[i].message_id;
		sources[nrows] = items[i].source;
		ats[nrows] = items[i].ts;
		created[nrows] = items[i].m.created_profile;
		nrows++;
	}
	if (InsertEvidenceDirectly(mids, ats, created, sources, seqs, nrows,
							   all, all_row, nall, linked, linked_row, nlinked))
	{
		WriteNewPairs(items, pairs, known, known_linked, np, item_seq);
		return;
	}
	argtypes[0] = TEXTARRAYOID;
	argtypes[1] = TIMESTAMPTZARRAYOID;
	argtypes[2] = INT8ARRAYOID;
	argtypes[3] = TEXTARRAYOID;
	argtypes[4] = INT8ARRAYOID;
	argtypes[5] = argtypes[7] = get_array_type(plans_type_oid);
	argtypes[6] = argtypes[8] = INT8ARRAYOID;
	args[0] = TextArray(mids, nrows);
	args[1] = TimestampArray(ats, nrows);
	args[2] = CdpInt8Array(created, nrows);
	args[3] = TextArray(sources, nrows);
	args[4] = CdpInt8Array(seqs, nrows);
	args[5] = IdentifierArray(all, nall);
	args[6] = CdpInt8Array(all_row, nall);
	args[7] = IdentifierArray(linked, nlinked);
	args[8] = CdpInt8Array(linked_row, nlinked);

	/*
	 * Each row's identifiers are grouped out of one flat array by row
	 * number, in one pass: a slice $a[lo:hi] per row would walk the array of
	 * varlena values from its start every time, and a join would be a
	 * nested loop (identity plans avoid hash and merge joins), both
	 * quadratic in the batch.
	 */
	CdpExecPlan(OnlinePlanFor(PLAN_INSERT_EVIDENCE,
					 "INSERT INTO cdp.identity_evidence "
					 "(seq, message_id, observed_at, identifiers, linked, created_profile, source) "
					 "SELECT max(q), max(m), max(t), "
					 "coalesce(array_agg(x ORDER BY o) FILTER (WHERE k = 1), '{}'), "
					 "coalesce(array_agg(x ORDER BY o) FILTER (WHERE k = 2), '{}'), "
					 "nullif(max(c), 0), max(s) FROM ("
					 "SELECT r, 0 AS k, m, t, c, s, q, NULL::cdp.identifier AS x, 0::int8 AS o "
					 "FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5)) "
					 "WITH ORDINALITY AS u(m, t, c, s, q, r) "
					 "UNION ALL SELECT r, 1, NULL, NULL, NULL, NULL, NULL, x, o "
					 "FROM unnest($6, $7) WITH ORDINALITY AS e(x, r, o) "
					 "UNION ALL SELECT r, 2, NULL, NULL, NULL, NULL, NULL, x, o "
					 "FROM unnest($8, $9) WITH ORDINALITY AS e(x, r, o)) z GROUP BY r",
					 9, argtypes),
				args, NULL, SPI_OK_INSERT);

	WriteNewPairs(items, pairs, known, known_linked, np, item_seq);
}

/* one profile's events not yet added to its profile record */
typedef struct StatsEntry
{
	int64		profile_id;		/* hash key */
	int64		count;
	TimestampTz lo;
	TimestampTz hi;
	uint64		since;			/* graph_writes when its first events were counted */
	ItemPointerData row;		/* where its record was locked, when known */
} StatsEntry;

/*
 * An empty table of events' counts and seen times per profile, gathered in
 * memory and written by CdpWriteProfileStats.  Updating a profile record
 * once per batch leaves, for the rest of the transaction, a dead version of
 * it per batch (none can be pruned before commit) that every later lookup
 * of the profile walks: in one long process_inbox call that made the
 * profile lookups and updates the biggest cost of small events.
 */
HTAB *
CdpNewProfileStats(MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(StatsEntry);
	ctl.hcxt = cxt;
	return hash_create("cdp profile stats", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static void
AddProfileStats(HTAB *stats, int64 profile_id, int64 count, TimestampTz lo, TimestampTz hi,
				uint64 since, ItemPointer row)
{
	bool		found;
	StatsEntry *e = hash_search(stats, &profile_id, HASH_ENTER, &found);

	if (!found)
	{
		e->count = 0;
		e->lo = DT_NOEND;
		e->hi = DT_NOBEGIN;
		e->since = since;
		ItemPointerSetInvalid(&e->row);
	}
	/* a later lock's place is as good (one row version is visible) */
	if (row != NULL && ItemPointerIsValid(row))
		e->row = *row;
	e->since = Min(e->since, since);
	e->count += count;
	e->lo = Min(e->lo, lo);
	e->hi = Max(e->hi, hi);
}

/* add the stats in from to into: a committed chunk's to its batch's, a batch's to its call's */
void
CdpMergeProfileStats(HTAB *into, HTAB *from)
{
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	hash_seq_init(&seq, from);
	while ((e = hash_seq_search(&seq)) != NULL)
		AddProfileStats(into, e->profile_id, e->count, e->lo, e->hi, e->since, &e->row);
}

static int
CompareStatsEntries(const void *a, const void *b)
{
	return CompareInt64(&(*(StatsEntry *const *) a)->profile_id,
						&(*(StatsEntry *const *) b)->profile_id);
}

/*
 * The gathered stats of each profile, in profile id order (the order the
 * records were made in: the probes and updates walk the index and the
 * table forwards instead of all over them); *merged_since says whether a
 * profile may have been merged away since its events were counted.
 */
int
CdpProfileStatsList(HTAB *stats, CdpProfileStat **out, bool *merged_since)
{
	long		n = hash_get_num_entries(stats);
	HASH_SEQ_STATUS seq;
	StatsEntry *e;
	StatsEntry **entries = palloc(sizeof(StatsEntry *) * Max(n, 1));
	CdpProfileStat *list = palloc(sizeof(CdpProfileStat) * Max(n, 1));
	int			k = 0;

	*merged_since = false;
	hash_seq_init(&seq, stats);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		entries[k++] = e;
		*merged_since |= e->since != graph_writes;
	}
	qsort(entries, k, sizeof(StatsEntry *), CompareStatsEntries);
	for (int i = 0; i < k; i++)
	{
		list[i].profile_id = entries[i]->profile_id;
		list[i].count = entries[i]->count;
		list[i].lo = entries[i]->lo;
		list[i].hi = entries[i]->hi;
		list[i].row = entries[i]->row;
	}
	pfree(entries);
	*out = list;
	return k;
}

/*
 * The gathered stats as the four arrays of CdpProfileStatsRows in args;
 * false when there are none.  *merged_since as CdpProfileStatsList.
 */
bool
CdpProfileStatsArrays(HTAB *stats, Datum *args, bool *merged_since)
{
	CdpProfileStat *list;
	int			k = CdpProfileStatsList(stats, &list, merged_since);
	int64	   *ids;
	int64	   *counts;
	TimestampTz *lo;
	TimestampTz *hi;

	if (k == 0)
		return false;
	ids = palloc(sizeof(int64) * k);
	counts = palloc(sizeof(int64) * k);
	lo = palloc(sizeof(TimestampTz) * k);
	hi = palloc(sizeof(TimestampTz) * k);
	for (int i = 0; i < k; i++)
	{
		ids[i] = list[i].profile_id;
		counts[i] = list[i].count;
		lo[i] = list[i].lo;
		hi[i] = list[i].hi;
	}
	args[0] = CdpInt8Array(ids, k);
	args[1] = CdpInt8Array(counts, k);
	args[2] = TimestampArray(lo, k);
	args[3] = TimestampArray(hi, k);
	pfree(list);
	pfree(ids);
	pfree(counts);
	pfree(lo);
	pfree(hi);
	return true;
}

/*
 * How many times this session changed the graph (merges, or another
 * writer's identity lock): a profile id seen when it was the same is still
 * the profile holding those identifiers.
 */
uint64
CdpGraphWrites(void)
{
	return graph_writes;
}

/*
 * The rows d(id, n, lo, hi) of the stats CdpProfileStatsArrays gave as $1
 * to $4, each under the profile holding its events now: a profile merged
 * away since its events were counted hands them to the profile its
 * merged_into names (the final one); when nothing was merged since, each
 * row is found once, not twice.
 */
const char *
CdpProfileStatsRows(bool merged_since)
{
	if (merged_since)
		return "(SELECT coalesce(p.merged_into, p.profile_id) AS id, sum(u.n) AS n, "
			"        min(u.lo) AS lo, max(u.hi) AS hi "
			"   FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4)) "
			"        AS u(id, n, lo, hi) "
			"   JOIN cdp.profile_records p ON p.profile_id = u.id GROUP BY 1) d";
	return "ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4)) AS d(id, n, lo, hi)";
}

/*
 * Where a direct rewrite of cdp.profile_records finds the stats columns; false
 * if one is missing or of another type.
 */
bool
CdpProfileStatsColumns(Oid relid, CdpStatsColumns *cols)
{
	cols->count = CdpDirectUpdateColumn(relid, "event_count", INT8OID);
	cols->first = CdpDirectUpdateColumn(relid, "first_seen", TIMESTAMPTZOID);
	cols->last = CdpDirectUpdateColumn(relid, "last_seen", TIMESTAMPTZOID);
	return cols->count >= 0 && cols->first >= 0 && cols->last >= 0;
}

/* add st to a found record's columns, as CDP_PROFILE_STATS_SET does */
void
CdpAddProfileStat(const CdpStatsColumns *cols, Datum *values, bool *nulls,
				  const CdpProfileStat *st)
{
	int			c = cols->count,
				f = cols->first,
				l = cols->last;

	values[c] = Int64GetDatum((nulls[c] ? 0 : DatumGetInt64(values[c])) + st->count);
	nulls[c] = false;
	/* LEAST and GREATEST: a NULL is the other value */
	if (nulls[f] || st->lo < DatumGetTimestampTz(values[f]))
		values[f] = TimestampTzGetDatum(st->lo);
	if (nulls[l] || st->hi > DatumGetTimestampTz(values[l]))
		values[l] = TimestampTzGetDatum(st->hi);
	nulls[f] = nulls[l] = false;
}

/*
 * Add gathered stats to the profile records without a statement, when no
 * merge happened since they were counted: each record found by its key and
 * rewritten (direct_update.c).  False, having written nothing, if a
 * statement must do it.
 */
static bool
WriteStatsDirectly(HTAB *stats)
{
	Oid			relid = OwnTable("profile_records");
	CdpProfileStat *list;
	bool		merged_since;
	int			n = CdpProfileStatsList(stats, &list, &merged_since);
	CdpStatsColumns cols;
	CdpDirectUpdate *u;

	if (merged_since || !OidIsValid(relid) || !CdpProfileStatsColumns(relid, &cols) ||
		(u = CdpBeginDirectUpdate(relid)) == NULL)
		return false;
	for (int i = 0; i < n; i++)
	{
		Datum	   *values;
		bool	   *nulls;

		if (!CdpDirectUpdateFindAt(u, list[i].profile_id, &list[i].row, &values, &nulls))
			continue;
		CdpAddProfileStat(&cols, values, nulls, &list[i]);
		CdpDirectUpdateStore(u);
	}
	CdpEndDirectUpdate(u);
	return true;
}

/*
 * Add gathered stats to the profile records, directly or in one statement,
 * and empty the table.  The batch that counted them locked every row, or
 * created it.
 */
void
CdpWriteProfileStats(HTAB *stats)
{
	Oid			argtypes[4] = {INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	TIMESTAMPTZARRAYOID};
	Datum		args[4];
	bool		merged_since;
	int			level;

	if (hash_get_num_entries(stats) == 0)
		return;
	if (WriteStatsDirectly(stats))
	{
		CdpClearProfileStats(stats);
		return;
	}
	if (!CdpProfileStatsArrays(stats, args, &merged_since))
		return;
	CheckPlans(CdpIdentifierTypeOid());
	level = CdpBeginIndexedPlans();
	CdpExecPlan(OnlinePlanFor(merged_since ? PLAN_WRITE_STATS : PLAN_WRITE_STATS_CANONICAL,
							  psprintf("UPDATE cdp.profile_records r SET " CDP_PROFILE_STATS_SET("d") " "
									   "FROM %s WHERE r.profile_id = d.id",
									   CdpProfileStatsRows(merged_since)),
							  4, argtypes),
				args, NULL, SPI_OK_UPDATE);
	CdpEndIndexedPlans(level);
	CdpClearProfileStats(stats);
}

/* empty a table of gathered stats */
void
CdpClearProfileStats(HTAB *stats)
{
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	hash_seq_init(&seq, stats);
	while ((e = hash_seq_search(&seq)) != NULL)
		hash_search(stats, &e->profile_id, HASH_REMOVE, NULL);
}

/*
 * Add this batch's events to their profiles' counts and seen times (into
 * stats when given, else to the records now), and store merge counters;
 * every row here was locked by LockProfiles or is new.
 */
static void
WriteProfileStats(IdentityGraph *g, IdItem *items, int n, HTAB *stats)
{
	ProfNode   *p;
	uint32		cap = CdpGraphProfileCount(g);
	int64	   *ids = palloc(sizeof(int64) * Max(cap, 1));
	int64	   *counts = palloc0(sizeof(int64) * Max(cap, 1));
	int32	   *absorbed = palloc(sizeof(int32) * Max(cap, 1));
	TimestampTz *lo = palloc(sizeof(TimestampTz) * Max(cap, 1));
	TimestampTz *hi = palloc(sizeof(TimestampTz) * Max(cap, 1));
	int			np = 0;
	Oid			argtypes[5] = {INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	TIMESTAMPTZARRAYOID, INT4ARRAYOID};
	Datum		args[5];

	/*
	 * Stored canonical profiles, in id order (the order their rows were
	 * locked): those made by this batch were written as they stand now
	 * (WriteNewProfiles).
	 */
	for (uint32 i = 0; i < cap; i++)
	{
		p = CdpGraphProfileAt(g, i);
		if (p->into == 0 && !p->is_new)
			ids[np++] = p->profile_id;
	}
	if (np == 0)
		return;
	qsort(ids, np, sizeof(int64), CompareInt64);
	for (int j = 0; j < np; j++)
	{
		p = CdpGraphProfile(g, ids[j], false);
		absorbed[j] = p->merges_absorbed;
		lo[j] = DT_NOEND;
		hi[j] = DT_NOBEGIN;
	}
	for (int i = 0; i < n; i++)
	{
		int64	   *hit;
		int			j;

		CdpMessage *msg = items[i].msg;

		/* a link() is evidence, not an event */
		if (msg == NULL || !msg->has_profile_id)
			continue;
		hit = bsearch(&msg->profile_id, ids, np, sizeof(int64), CompareInt64);
		if (hit == NULL)
			continue;
		if (stats != NULL)
		{
			AddProfileStats(stats, msg->profile_id, 1, msg->ts, msg->ts, graph_writes,
							&CdpProfOnline(g, CdpGraphProfile(g, msg->profile_id, false))->row);
			continue;
		}
		j = hit - ids;
		counts[j]++;
		lo[j] = Min(lo[j], msg->ts);
		hi[j] = Max(hi[j], msg->ts);
	}
	/* merge counters change with merges only */
	if (stats != NULL && g->merges == NIL)
		return;
	args[0] = CdpInt8Array(ids, np);
	args[1] = CdpInt8Array(counts, np);
	args[2] = TimestampArray(lo, np);
	args[3] = TimestampArray(hi, np);
	args[4] = Int4Array(absorbed, np);
	CdpExecPlan(OnlinePlanFor(PLAN_UPDATE_STATS,
					 "UPDATE cdp.profile_records r SET event_count = r.event_count + d.n, "
					 "first_seen = CASE WHEN d.n = 0 THEN r.first_seen ELSE LEAST(r.first_seen, d.lo) END, "
					 "last_seen = CASE WHEN d.n = 0 THEN r.last_seen ELSE GREATEST(r.last_seen, d.hi) END, "
					 "merges_absorbed = d.a "
					 "FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5)) "
					 "AS d(id, n, lo, hi, a) WHERE r.profile_id = d.id",
					 5, argtypes),
				args, NULL, SPI_OK_UPDATE);
}

/*
 * The identifier a message's traits and consent belong to: the strongest
 * (by rule priority, then the order the message carries them) of those it
 * linked into the profile it resolved to.  A split then moves them with
 * the identifier that is most surely the person who said them.
 */
static CdpIdentifier *
StateAnchor(IdentityGraph *g, IdItem *item)
{
	IdMessage  *m = &item->m;
	CdpIdentifier *best = NULL;
	int			best_priority = 0;

	for (int k = 0; k < m->nids; k++)
	{
		IdNode	   *node;
		const IdRule *rule;

		if (m->linked == NULL || !m->linked[k])
			continue;
		node = CdpGraphNode(g, m->ids[k], false);
		if (node == NULL || !node->attached ||
			CdpCanonicalOf(g, CdpNodeProf(g, node))->profile_id != m->profile)
			continue;
		rule = CdpRuleFor(g->rules, IdTypePtr(m->ids[k]), m->ids[k]->type_len);
		if (best == NULL || rule->priority < best_priority)
		{
			best = m->ids[k];
			best_priority = rule->priority;
		}
	}
	return best;
}

/*
 * Whether every message of the batch that may change the graph carries only
 * identifiers the stored graph does not hold (an alias's previousId read as
 * a user too): its changes then touch no stored profile, and what
 * resolution read is only which identifiers exist and where the others are.
 */
static bool
ChangesOnlyNewIdentifiers(IdentityGraph *g, IdItem *items, int n)
{
	for (int i = 0; i < n; i++)
	{
		CdpIdentifier *as_user = AliasAsUser(items[i].msg);
		IdNode	   *node;
		ListCell   *lc;

		if (IsFastNoOp(g, &items[i]))
			continue;
		foreach(lc, items[i].ids)
		{
			node = CdpGraphNode(g, lfirst(lc), false);
			if (node != NULL && node->attached)
				return false;
		}
		node = as_user ? CdpGraphNode(g, as_user, false) : NULL;
		if (node != NULL && node->attached)
			return false;
	}
	return true;
}

/*
 * Resolve a set of items in order against the stored graph and write back
 * what changed; see the file header for the locking.  With may_defer, a
 * batch whose changes only bring new identifiers is resolved without the
 * identity lock and its graph writes are returned for
 * CdpWriteResolvedIdentities (its new profiles are written at once);
 * otherwise NULL.
 */
static CdpPendingIdentities *
ResolveItems(IdItem *items, int n, HTAB *stats, bool may_defer)
{
	MemoryContext cxt = CurrentMemoryContext;
	IdentityRules *rules;
	IdentityGraph *g = NULL;
	IdentityGraph *known;
	bool		changes_possible;
	bool		defer = false;
	bool		new_only = false;	/* its changes only bring new identifiers */
	int64	   *lock_ids;
	int			nlock;
	uint64		rules_copy;

	CheckPlans(CdpIdentifierTypeOid());
	rules = CdpLoadIdentityRules();
	rules_copy = CdpIdentityRulesCopy();
	stale_raised = false;

	/*
	 * Holding the identity lock already, with what this transaction learnt
	 * under it: reading without the lock would save nothing.
	 */
	known = CdpKnownIdentities();
	changes_possible = last_batch_changed || lock_first || known != NULL;
	lock_first = false;
	if (!changes_possible)
	{
		g = BuildGraph(rules, items, n, cxt, NULL, true);
		for (int i = 0; i < n; i++)
		{
			/* an alias reads its previousId as it will if nothing changes */
			AliasTarget(g, &items[i]);
			changes_possible |= !IsFastNoOp(g, &items[i]);
		}
		/* a pair no message carried before is evidence, written under the lock */
		if (!changes_possible)
			changes_possible = AssertsNewPair(items, n);
		else
		{
			/* a transaction snapshot reads the rules again each time: always stale */
			new_only = ChangesOnlyNewIdentifiers(g, items, n);
			defer = may_defer && new_only && !IsolationUsesXactSnapshot();
		}
	}
	if (!changes_possible)
	{
		/* a split that committed meanwhile makes what we read stale */
		nlock = AttachedProfiles(g, &lock_ids, NULL);
		changes_possible = LockProfilesUnlessStale(g, lock_ids, nlock);
		if (!changes_possible && nlock > 0)
			rows_without_lock_lxid = MyProc->lxid;
	}
	if (defer)
	{
		/* checked again under the lock, with what was read, before anything is kept */
		CdpUseCachedSplits(g);
		PreloadMembers(g, items, n);
	}
	else if (changes_possible)
	{
		/* one writer of the graph at a time; read again under the lock, rules too */
		if (known == NULL)
		{
			LockIdentityGraph();
			CdpKnownIdentitiesStart();
			known = CdpKnownIdentities();
		}
		rules = CdpLoadIdentityRules();
		g = BuildGraph(rules, items, n, cxt, known, true);
		/* read after the lock: a split that committed before it is seen */
		CdpUseCachedSplits(g);
		nlock = AttachedProfiles(g, &lock_ids, known);
		LockProfiles(g, lock_ids, nlock);
		new_only = ChangesOnlyNewIdentifiers(g, items, n);
		PreloadMembers(g, items, n);
	}
	else
	{
		/*
		 * Known profiles only, their rows locked: a split of them that
		 * committed since would have sent us to the lock.  A message carrying
		 * a split identifier with a former member links nothing for it here
		 * too, or where its traits and consent go (and its violation) would
		 * depend on whether the batch took the lock.
		 */
		CdpUseCachedSplits(g);
	}

	for (int i = 0; i < n; i++)
	{
		IdMessage  *m = &items[i].m;
		int			k = 0;
		ListCell   *lc;

		foreach(lc, items[i].invalid)
		{
			IdViolation *v = palloc(sizeof(IdViolation));

			v->identifier = NULL;
			v->message_id = items[i].message_id;
			v->at = items[i].ts;
			v->rule = "invalid";
			v->detail = lfirst(lc);
			g->violations = lappend(g->violations, v);
		}
		AliasTarget(g, &items[i]);
		if (items[i].ncarried > CDP_MAX_MESSAGE_IDS)
		{
			IdViolation *v = palloc(sizeof(IdViolation));

			v->identifier = items[i].first_capped;
			v->message_id = items[i].message_id;
			v->at = items[i].ts;
			v->rule = "too_many_identifiers";
			v->detail = psprintf("the message carries %d identifiers; only the first %d link",
								 items[i].ncarried, CDP_MAX_MESSAGE_IDS);
			g->violations = lappend(g->violations, v);
		}
		m->nids = list_length(items[i].ids);
		m->ids = palloc(sizeof(CdpIdentifier *) * Max(m->nids, 1));
		foreach(lc, items[i].ids)
			m->ids[k++] = lfirst(lc);
		m->at = items[i].ts;
		m->message_id = items[i].message_id;
		CdpResolveMessage(g, m);
		if (m->changed && !changes_possible)
			elog(ERROR, "identity graph changed outside the identity lock");
	}

	/* events carry the profile that holds their identifiers at the end */
	for (int i = 0; i < n; i++)
	{
		if (items[i].m.profile == 0)
			continue;
		items[i].m.profile = CdpCanonical(g, items[i].m.profile)->profile_id;
		if (items[i].msg)
		{
			items[i].msg->has_profile_id = true;
			items[i].msg->profile_id = items[i].m.profile;
			if (CdpMessageHasProfileState(items[i].msg))
				items[i].msg->state_anchor = StateAnchor(g, &items[i]);
		}
	}

	/*
	 * In a run of batches that change stored profiles, the next one takes
	 * the lock at once; after one whose changes were only new identifiers
	 * the next one tries without it again.
	 */
	last_batch_changed = false;
	for (int i = 0; i < n && !last_batch_changed && !new_only; i++)
		last_batch_changed = items[i].m.changed;
	if (defer)
	{
		CdpPendingIdentities *pending = palloc(sizeof(CdpPendingIdentities));

		/* fresh ids from the sequence: nobody else can write these rows */
		WriteNewProfiles(g, items, n);
		*pending = (CdpPendingIdentities)
		{
			g, items, n, stats, rules_copy, CdpIdentitySplitsCopy()
		};
		return pending;
	}
	if (changes_possible)
	{
		WriteNewProfiles(g, items, n);
		WriteMerges(g);
		WriteNewIdentities(g);
		WriteEvidence(items, n);
		CdpKnownIdentitiesRemember(g);
	}
	WriteViolations(g);
	WriteProfileStats(g, items, n, stats);
	return NULL;
}

/*
 * Whether the stored identities read now, under the identity lock, are
 * those the deferred resolution read in g: every one on the same profile
 * since the same time, the profile at the same version and rank, and no
 * other.  Identifiers g made must not be stored now.
 */
static bool
SameStoredIdentities(IdentityGraph *g, IdentityGraph *now)
{
	CdpNodeIter it = {0, 0};
	IdNode	   *n2;
	IdNode	   *node;
	uint32		found = 0;
	uint32		stored = 0;

	while ((n2 = CdpGraphNextNode(now, &it)) != NULL)
	{
		ProfNode   *p;
		ProfNode   *p2 = CdpNodeProf(now, n2);

		node = CdpGraphNode(g, CdpNodeIdentifier(now, n2), false);
		if (node == NULL || !node->attached || node->is_new)
			return false;
		p = CdpNodeProf(g, node);
		if (p->profile_id != p2->profile_id ||
			CdpNodeLinkedAt(node) != CdpNodeLinkedAt(n2) ||
			CdpProfOnline(g, p)->version != CdpProfOnline(now, p2)->version ||
			CdpProfOnline(g, p)->rank != CdpProfOnline(now, p2)->rank)
			return false;
		found++;
	}
	it.block = 0;
	it.offset = 0;
	while ((node = CdpGraphNextNode(g, &it)) != NULL)
		if (node->attached && !node->is_new)
			stored++;
	return stored == found;
}

/*
 * Whether another session stored a profile with a higher id than one this
 * batch made before the identity lock.  Profile ids are the order merges
 * and every rebuild's replay go by (the oldest profile absorbs the others),
 * and that order must be the one the writers took the lock in: a batch
 * holding ids from before the lock, behind a writer that took the lock
 * first and made a profile with a later id, would rank its profiles before
 * that writer's, as if it had come first.  Read under the lock, after every
 * earlier writer committed; this batch's own rows are all the rows from its
 * lowest id up to a later one stored.
 */
static bool
LaterProfileStored(IdentityGraph *g)
{
	uint32		cap = CdpGraphProfileCount(g);
	int64		lowest = PG_INT64_MAX;
	int64		mine = 0;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	bool		isnull;

	for (uint32 i = 0; i < cap; i++)
	{
		ProfNode   *p = CdpGraphProfileAt(g, i);

		if (p->is_new)
		{
			lowest = Min(lowest, p->profile_id);
			mine++;
		}
	}
	if (mine == 0)
		return false;
	args[0] = Int64GetDatum(lowest);
	CdpExecPlan(OnlinePlanFor(PLAN_COUNT_PROFILES_FROM,
							  "SELECT count(*) FROM cdp.profile_records WHERE profile_id >= $1",
							  1, argtypes),
				args, NULL, SPI_OK_SELECT);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) > mine;
}

/*
 * The graph writes of a batch resolved before the identity lock (see
 * ResolveItems), once its events are stored: take the lock, read again
 * what resolution read (the batch's stored identities, their profiles'
 * rows, now locked, the rules and splits), and write if it is all the
 * same, for then resolving under the lock gives the same answer.  If not
 * (another session stored one of its new identifiers meanwhile, or a
 * profile with a later id than one the batch made: LaterProfileStored),
 * raise an error CdpIsStaleResolution knows: the caller rolls the chunk
 * back and processes it again, and that time resolution takes the lock
 * first.
 */
void
CdpWriteResolvedIdentities(CdpPendingIdentities *pending)
{
	IdentityGraph *g;
	IdentityGraph *now;
	int64	   *lock_ids;
	int			nlock;
	bool		stale;
	int			level;

	if (pending == NULL)
		return;
	g = pending->g;
	level = CdpBeginIndexedPlans();
	CheckPlans(CdpIdentifierTypeOid());
	LockIdentityGraph();
	CdpKnownIdentitiesStart();
	(void) CdpLoadIdentityRules();
	(void) CdpCachedSplits();
	stale = CdpIdentityRulesCopy() != pending->rules_copy ||
		CdpIdentitySplitsCopy() != pending->splits_copy;
	if (!stale)
	{
		/* what is stored now, never what was kept */
		now = BuildGraph(g->rules, pending->items, pending->n, CurrentMemoryContext, NULL, false);
		stale = !SameStoredIdentities(g, now) || LaterProfileStored(g);
	}
	if (!stale)
	{
		nlock = AttachedProfiles(g, &lock_ids, NULL);
		stale = LockProfiles(g, lock_ids, nlock);
		for (int i = 0; i < nlock && !stale; i++)
			stale = CdpGraphProfile(g, lock_ids[i], false)->into != 0;
	}
	if (stale)
	{
		lock_first = true;
		stale_raised = true;
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the identity graph changed while a batch was resolved"),
				 errdetail("Another session changed identities the batch read before it took the identity lock."),
				 errhint("Process the batch again.")));
	}
	WriteMerges(g);
	WriteNewIdentities(g);
	WriteEvidence(pending->items, pending->n);
	CdpKnownIdentitiesRemember(g);
	WriteViolations(g);
	WriteProfileStats(g, pending->items, pending->n, pending->stats);
	CdpEndIndexedPlans(level);
}

/*
 * Whether an error is CdpWriteResolvedIdentities finding what a batch read
 * before the identity lock changed: the chunk is to be processed again.
 */
bool
CdpIsStaleResolution(ErrorData *edata)
{
	return stale_raised && edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE;
}

/*
 * Set profile_id on a batch's pending messages (validated, not duplicates);
 * their counts and seen times go to stats (see CdpNewProfileStats).  What
 * it returns (when not NULL) is the graph writes still to do, by
 * CdpWriteResolvedIdentities once the events are stored: the batch took no
 * identity lock yet.
 */
CdpPendingIdentities *
CdpResolveIdentities(CdpMessage **msgs, int n, HTAB *stats)
{
	IdItem	   *items = palloc0(sizeof(IdItem) * Max(n, 1));
	int			k = 0;
	CdpPendingIdentities *pending = NULL;

	for (int i = 0; i < n; i++)
	{
		if (msgs[i]->outcome != CDP_PENDING)
			continue;
		items[k].msg = msgs[i];
		items[k].message_id = msgs[i]->message_id;
		items[k].source = msgs[i]->source;
		items[k].ts = msgs[i]->ts;
		items[k].ids = CdpMessageIdentifiers(msgs[i], "anonymous_id", &items[k].invalid);
		CapIdentifiers(&items[k]);
		k++;
	}
	if (k > 0)
	{
		int			level = CdpBeginIndexedPlans();

		pending = ResolveItems(items, k, stats, true);
		CdpEndIndexedPlans(level);
	}
	return pending;
}

/* cdp.link(): evidence that a and b are one person, under the same rules */
int64
CdpLinkIdentifiers(CdpIdentifier *a, CdpIdentifier *b, const char *source,
				   const char *message_id)
{
	IdItem		item;
	int			level;

	memset(&item, 0, sizeof(item));
	item.message_id = message_id;
	item.source = source;
	item.ts = GetCurrentTransactionStartTimestamp();
	item.ids = list_make2(a, b);
	item.ncarried = 2;
	level = CdpBeginIndexedPlans();
	(void) ResolveItems(&item, 1, NULL, false);
	CdpEndIndexedPlans(level);
	return item.m.profile;
}
