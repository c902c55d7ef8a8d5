/*
 * identity_recent.c
 *	  The stored identities an ingest worker read in its earlier
 *	  transactions, kept across them: a batch whose identifiers were seen
 *	  before needs no lookup of cdp.identities for them.  Resolution read
 *	  every identifier of every batch again, a seventh of a worker's time.
 *
 *	  What is kept of an identifier (its profile, since when, and that
 *	  profile's version and rank) changes only when a writer moves or
 *	  removes stored identifiers: a merge, a split, a rebuild, forget.  Each
 *	  of them calls CdpIdentityGraphChanged under the identity lock, which
 *	  bumps a counter in shared memory, and bumps it again once its
 *	  transaction has ended (before it lets go of the lock).  Rows read when
 *	  the counter stood at one value are kept only while it still does, so a
 *	  row served from here is the row a lookup would return now.  Sessions
 *	  that only add identities and profiles change no kept row; identifiers
 *	  not kept are looked up as before.
 *
 *	  The pairs of identifiers found in cdp.identity_pairs are kept the
 *	  same way, and whether the stored message linked both ends when it
 *	  did (a pair whose message did not may be relinked by any batch, so
 *	  that answer is not kept).  Only splits, rebuilds and forget remove a
 *	  pair or take a link out of its evidence; merges do neither, so pairs
 *	  follow a second counter that only those bump, and outlive merges.
 *
 *	  Rows read are kept once the transaction that read them has committed
 *	  (some may be its own writes), never when it or a subtransaction rolls
 *	  back; they join the others at the next lookup, not in the commit (which
 *	  must not fail).  The kept rows belong to one cdp.identities table:
 *	  another one (the extension made again) starts them again empty.
 *	  At most cdp.identity_cache_size identifiers are kept; past that it
 *	  starts again empty.  A graph change in a PREPAREd transaction becomes
 *	  visible at a COMMIT PREPARED that bumps nothing: the first one turns
 *	  every cache off until the server restarts.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/hashfn.h"
#include "port/atomics.h"
#include "utils/lsyscache.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "pg_cdp.h"
#include "identity.h"
#include "workers.h"

/* a kept identifier (the key: a pointer to it, in recent_cxt) */
typedef struct RecentRow
{
	CdpIdentifier *id;
	int64		profile_id;
	TimestampTz linked_at;
	int64		rank;
	int32		version;
} RecentRow;

/* a row read in this transaction, kept if it commits */
typedef struct StagedRow
{
	RecentRow	row;
	uint64		epoch;			/* the counter before it was read */
} StagedRow;

static int	recent_max = 0;		/* 0: off (only ingest workers turn it on) */
static MemoryContext recent_cxt = NULL;
static HTAB *recent = NULL;
static uint64 recent_epoch = 0;	/* the counter its rows were read at */
static Oid	recent_table = InvalidOid;	/* the cdp.identities they are rows of */

static MemoryContext pairs_cxt = NULL;
static HTAB *recent_pairs = NULL;	/* RecentPair, in pairs_cxt */
static uint64 pairs_epoch = 0;	/* the evidence counter its pairs were read at */

static MemoryContext staged_cxt = NULL;
static List *staged = NIL;
static List *staged_pairs = NIL;	/* StagedPair */
static bool staged_committed = false;	/* the transaction that read them committed */
static uint64 read_epoch = 0;	/* the counter when the lookups began */
static uint64 read_evidence_epoch = 0;	/* the evidence counter then */

static bool changed_graph = false;	/* this transaction bumped the counter */
static bool changed_evidence = false;	/* ... and the evidence counter */
static bool callbacks_registered = false;

static uint64 hits = 0;
static uint64 misses = 0;

/* the counter (a full barrier: read before any snapshot taken after) */
static uint64
Epoch(void)
{
	return pg_atomic_fetch_add_u64(&CdpPool->identity_epoch, 0);
}

/* the evidence counter, likewise */
static uint64
EvidenceEpoch(void)
{
	return pg_atomic_fetch_add_u64(&CdpPool->evidence_epoch, 0);
}

static bool
CachesOff(void)
{
	return CdpPool == NULL || pg_atomic_read_u32(&CdpPool->identity_cache_off) != 0;
}

static uint32
RecentHash(const void *key, Size keysize)
{
	return CdpGraphIdentifierHash(*(CdpIdentifier *const *) key);
}

static int
RecentMatch(const void *a, const void *b, Size keysize)
{
	const CdpIdentifier *x = *(CdpIdentifier *const *) a;
	const CdpIdentifier *y = *(CdpIdentifier *const *) b;

	return VARSIZE(x) == VARSIZE(y) && memcmp(x, y, VARSIZE(x)) == 0 ? 0 : 1;
}

/*
 * A pair as one key: a varlena holding the length of a, then the bytes of
 * a and b.
 */
typedef struct varlena PairBlob;

/* a kept pair (the key: a pointer to its blob, in recent_cxt) */
typedef struct RecentPair
{
	PairBlob   *blob;
	bool		linked;			/* its message linked both ends (else not asked) */
} RecentPair;

/* a pair read in this transaction, kept if it commits */
typedef struct StagedPair
{
	RecentPair	pair;
	uint64		epoch;			/* the counter before it was read */
} StagedPair;

static PairBlob *
MakePairBlob(CdpIdentifier *a, CdpIdentifier *b, MemoryContext cxt)
{
	int32		alen = VARSIZE_ANY_EXHDR(a);
	int32		blen = VARSIZE_ANY_EXHDR(b);
	PairBlob   *blob = MemoryContextAlloc(cxt, VARHDRSZ + sizeof(int32) + alen + blen);
	char	   *d = VARDATA(blob);

	SET_VARSIZE(blob, VARHDRSZ + sizeof(int32) + alen + blen);
	memcpy(d, &alen, sizeof(int32));
	memcpy(d + sizeof(int32), VARDATA_ANY(a), alen);
	memcpy(d + sizeof(int32) + alen, VARDATA_ANY(b), blen);
	return blob;
}

static uint32
PairHash(const void *key, Size keysize)
{
	const PairBlob *blob = *(PairBlob *const *) key;

	return hash_bytes((const unsigned char *) VARDATA(blob), VARSIZE(blob) - VARHDRSZ);
}

/* an empty table in cxt of kept entries, keyed by a pointer to a varlena */
static HTAB *
KeptTable(const char *name, MemoryContext cxt, Size entrysize, HashValueFunc hash)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(struct varlena *);
	ctl.entrysize = entrysize;
	ctl.hash = hash;
	ctl.match = RecentMatch;
	ctl.hcxt = cxt;
	return hash_create(name, 1024, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* forget every kept row; rows read from now on are read at epoch */
static void
RecentReset(uint64 epoch)
{
	if (recent_cxt == NULL)
		recent_cxt = AllocSetContextCreate(TopMemoryContext, "cdp recent identities",
										   ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(recent_cxt);
	recent = KeptTable("cdp recent identities", recent_cxt, sizeof(RecentRow), RecentHash);
	recent_epoch = epoch;
}

/* forget every kept pair; pairs read from now on are read at epoch */
static void
PairsReset(uint64 epoch)
{
	if (pairs_cxt == NULL)
		pairs_cxt = AllocSetContextCreate(TopMemoryContext, "cdp recent pairs",
										  ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(pairs_cxt);
	recent_pairs = KeptTable("cdp recent pairs", pairs_cxt, sizeof(RecentPair), PairHash);
	pairs_epoch = epoch;
}

static void
DropStaged(void)
{
	if (staged_cxt != NULL)
		MemoryContextReset(staged_cxt);
	staged = NIL;
	staged_pairs = NIL;
	staged_committed = false;
}

/* keep the rows a committed transaction read, if nothing changed since */
static void
KeepStaged(uint64 now, uint64 evidence_now)
{
	ListCell   *lc;

	if (recent_epoch != now)
		RecentReset(now);
	foreach(lc, staged)
	{
		StagedRow  *s = lfirst(lc);
		RecentRow  *row;
		CdpIdentifier *key = s->row.id;
		bool		found;

		if (s->epoch != now)
			continue;
		if (hash_get_num_entries(recent) >= recent_max)
			RecentReset(now);
		row = hash_search(recent, &key, HASH_ENTER, &found);
		if (!found)
		{
			row->id = MemoryContextAlloc(recent_cxt, VARSIZE(key));
			memcpy(row->id, key, VARSIZE(key));
		}
		row->profile_id = s->row.profile_id;
		row->linked_at = s->row.linked_at;
		row->rank = s->row.rank;
		row->version = s->row.version;
	}
	foreach(lc, staged_pairs)
	{
		StagedPair *sp = lfirst(lc);
		PairBlob   *blob = sp->pair.blob;
		RecentPair *entry;

		if (sp->epoch != evidence_now)
			continue;
		if (hash_get_num_entries(recent_pairs) >= recent_max)
			PairsReset(evidence_now);
		entry = hash_search(recent_pairs, &blob, HASH_FIND, NULL);
		if (entry == NULL)
		{
			PairBlob   *copy = MemoryContextAlloc(pairs_cxt, VARSIZE(blob));

			memcpy(copy, blob, VARSIZE(blob));
			entry = hash_search(recent_pairs, &copy, HASH_ENTER, NULL);
			entry->linked = false;
		}
		entry->linked |= sp->pair.linked;
	}
}

static void
RecentXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			staged_committed = staged != NIL || staged_pairs != NIL;
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (changed_graph && !CachesOff())
			{
				pg_atomic_write_u32(&CdpPool->identity_cache_off, 1);
				pg_memory_barrier();
				ereport(LOG,
						(errmsg("pg_cdp: a prepared transaction changes the identity graph; ingest workers stop keeping identities until the server restarts")));
			}
			break;
		default:
			break;
	}
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_ABORT)
		DropStaged();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT)
	{
		/* the transaction's changes are visible now; the identity lock is still held */
		if (changed_graph && CdpPool != NULL)
			pg_atomic_fetch_add_u64(&CdpPool->identity_epoch, 1);
		if (changed_evidence && CdpPool != NULL)
			pg_atomic_fetch_add_u64(&CdpPool->evidence_epoch, 1);
		changed_graph = changed_evidence = false;
	}
}

static void
RecentSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	/* what it read may have been its own writes, undone now */
	if (event == SUBXACT_EVENT_ABORT_SUB)
		DropStaged();
}

static void
RegisterCallbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(RecentXactCallback, NULL);
	RegisterSubXactCallback(RecentSubXactCallback, NULL);
	callbacks_registered = true;
}

/*
 * A writer moves or removes stored identities (merges, splits, rebuilds,
 * forget), holding the identity lock: every kept row may be untrue; with
 * evidence (all but merges), every kept pair too.
 */
void
CdpIdentityGraphChanged(bool evidence)
{
	if (CdpPool == NULL)
		return;
	RegisterCallbacks();
	changed_graph = true;
	pg_atomic_fetch_add_u64(&CdpPool->identity_epoch, 1);
	if (evidence)
	{
		changed_evidence = true;
		pg_atomic_fetch_add_u64(&CdpPool->evidence_epoch, 1);
	}
}

/* an ingest worker keeps up to max identifiers (0: none) */
void
CdpRecentIdentitiesEnable(int max)
{
	if (CdpPool == NULL)
		max = 0;
	if (max != recent_max && recent_cxt != NULL)
	{
		MemoryContextReset(recent_cxt);
		recent = NULL;
	}
	if (max != recent_max && pairs_cxt != NULL)
	{
		MemoryContextReset(pairs_cxt);
		recent_pairs = NULL;
	}
	recent_max = max;
	if (max > 0)
	{
		RegisterCallbacks();
		if (staged_cxt == NULL)
			staged_cxt = AllocSetContextCreate(TopMemoryContext, "cdp identities read",
											   ALLOCSET_DEFAULT_SIZES);
	}
}

/*
 * Attach to g the identifiers of ids that are kept (and valid now); the
 * others are moved to the front of ids, and their count returned: the
 * caller looks them up, handing each row found to CdpRecentIdentitiesNote.
 */
int
CdpRecentIdentitiesAttach(IdentityGraph *g, CdpIdentifier **ids, int n)
{
	int			nread = 0;
	Oid			table;

	if (recent_max == 0 || CachesOff())
		return n;
	read_epoch = Epoch();
	read_evidence_epoch = EvidenceEpoch();
	table = get_relname_relid("identities", get_namespace_oid("cdp", false));
	if (recent == NULL || recent_epoch != read_epoch || recent_table != table)
		RecentReset(read_epoch);
	if (recent_pairs == NULL || pairs_epoch != read_evidence_epoch || recent_table != table)
		PairsReset(read_evidence_epoch);
	recent_table = table;
	if (staged_committed)
		KeepStaged(read_epoch, read_evidence_epoch);
	DropStaged();
	for (int i = 0; i < n; i++)
	{
		RecentRow  *row = hash_search(recent, &ids[i], HASH_FIND, NULL);
		IdNode	   *node;
		ProfNode   *p;

		if (row == NULL)
		{
			ids[nread++] = ids[i];
			continue;
		}
		node = CdpGraphNode(g, ids[i], true);
		if (node->attached)
			continue;
		p = CdpGraphProfile(g, row->profile_id, true);
		CdpProfOnline(g, p)->version = row->version;
		CdpProfOnline(g, p)->rank = row->rank;
		CdpGraphAttach(g, node, p, row->linked_at, NULL, false);
	}
	hits += n - nread;
	misses += nread;
	return nread;
}

/* a row the caller of CdpRecentIdentitiesAttach read: kept if it commits */
void
CdpRecentIdentitiesNote(CdpIdentifier *id, int64 profile_id, TimestampTz linked_at,
						int32 version, int64 rank)
{
	MemoryContext old;
	StagedRow  *s;

	if (recent_max == 0 || CachesOff())
		return;
	old = MemoryContextSwitchTo(staged_cxt);
	s = palloc(sizeof(StagedRow));
	s->row.id = palloc(VARSIZE(id));
	memcpy(s->row.id, id, VARSIZE(id));
	s->row.profile_id = profile_id;
	s->row.linked_at = linked_at;
	s->row.version = version;
	s->row.rank = rank;
	s->epoch = read_epoch;
	staged = lappend(staged, s);
	MemoryContextSwitchTo(old);
}

/* identifiers served from what is kept, and looked up, since the last call */
void
CdpRecentIdentitiesCounts(uint64 *served, uint64 *read)
{
	*served = hits;
	*read = misses;
	hits = 0;
	misses = 0;
}

/*
 * Whether the pair (a, b) is kept as stored, and (when linked is not NULL)
 * as one whose message linked both ends.  Only between a
 * CdpRecentIdentitiesAttach and the end of its transaction, and only while
 * the counter still stands where the kept rows were read.
 */
bool
CdpRecentPair(CdpIdentifier *a, CdpIdentifier *b, bool *linked)
{
	PairBlob   *blob;
	RecentPair *entry;

	if (recent_max == 0 || recent_pairs == NULL || CachesOff() ||
		pairs_epoch != EvidenceEpoch())
		return false;
	blob = MakePairBlob(a, b, CurrentMemoryContext);
	entry = hash_search(recent_pairs, &blob, HASH_FIND, NULL);
	pfree(blob);
	if (entry == NULL || (linked != NULL && !entry->linked))
		return false;
	if (linked != NULL)
		*linked = true;
	return true;
}

/*
 * A pair found stored (its message linking both ends, when linked says so):
 * kept if this transaction commits.
 */
void
CdpRecentPairNote(CdpIdentifier *a, CdpIdentifier *b, bool linked)
{
	StagedPair *sp;
	MemoryContext old;

	/* off, nothing would drop them: see CdpRecentIdentitiesNote */
	if (recent_max == 0 || CachesOff())
		return;
	old = MemoryContextSwitchTo(staged_cxt);
	sp = palloc(sizeof(StagedPair));
	sp->pair.blob = MakePairBlob(a, b, staged_cxt);
	sp->pair.linked = linked;
	sp->epoch = read_evidence_epoch;
	staged_pairs = lappend(staged_pairs, sp);
	MemoryContextSwitchTo(old);
}
