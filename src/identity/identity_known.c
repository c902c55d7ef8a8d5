/*
 * identity_known.c
 *	  The stored identities and profile records a transaction has read or
 *	  written while holding the identity lock, kept for its later batches.
 *
 *	  Every writer of the identity graph takes the identity lock (see
 *	  CdpLockIdentityGraph) and holds it to the end of its transaction, so
 *	  once this transaction holds it nobody else changes an identity or a
 *	  profile's merge state; the profile rows it locked stay locked until it
 *	  ends.  What it read or wrote then stays true for the rest of the
 *	  transaction as long as its own writes are followed: a batch that adds
 *	  identities and profiles adds them here; a batch that merges, and any
 *	  other writer (split, rebuild, forget), empties the store first.  A
 *	  batch of identifiers seen earlier in the transaction then needs no
 *	  lookup of cdp.identities and no new lock of their profile rows.
 *
 *	  The pairs of identifiers found in cdp.identity_pairs are kept the
 *	  same way, with whether the message stored for each linked both ends:
 *	  only writers holding the identity lock remove a pair or change its
 *	  evidence, and this transaction's own relinks are followed.
 *
 *	  Everything is forgotten when the transaction ends, when a
 *	  subtransaction that added anything rolls back (its writes, row locks
 *	  and perhaps the identity lock are gone with it), and when one of the
 *	  tables it mirrors is truncated or altered (its relcache entry is
 *	  invalidated, which no row write does).  The store holds at
 *	  most KNOWN_IDENTIFIERS identifiers and as many pairs; past that it
 *	  starts again empty.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "common/hashfn.h"
#include "catalog/namespace.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "pg_cdp.h"
#include "identity.h"

/* identifiers kept at most (about 150 bytes each) */
#define KNOWN_IDENTIFIERS	100000

typedef struct KnownStore
{
	bool		valid;			/* the identity lock is held and was taken with its check */
	LocalTransactionId lxid;	/* the transaction it belongs to */
	SubTransactionId high_subid;	/* the latest subtransaction that added to it */
	MemoryContext cxt;			/* holds graph; child of TopTransactionContext */
	IdentityGraph *graph;		/* attached identifiers and locked profiles */
	HTAB	   *pairs;			/* KnownPair by its two identifiers */
	uint64		rules_copy;		/* the rules its nodes' blocked answers come from */
	Oid			tables[3];		/* cdp.identities, profile_records, identity_pairs */
	bool		table_changed;	/* one of them was truncated or altered since */
} KnownStore;

/* a pair's key: its identifiers' bytes, in (a, b) order */
typedef struct PairKey
{
	const char *a;
	const char *b;
	int			alen;
	int			blen;
} PairKey;

/* a pair stored in cdp.identity_pairs */
typedef struct KnownPair
{
	PairKey		key;			/* bytes copied into the store */
	int8		linked;			/* its message linked both ends: 1, 0, or -1 not asked */
} KnownPair;

static KnownStore known;
static bool callbacks_registered = false;

/* drop everything kept (the memory too) */
static void
KnownReset(void)
{
	if (known.cxt != NULL)
		MemoryContextDelete(known.cxt);
	known.cxt = NULL;
	known.graph = NULL;
	known.pairs = NULL;
}

void
CdpKnownIdentitiesForget(void)
{
	KnownReset();
	known.valid = false;
}

static void
KnownXactCallback(XactEvent event, void *arg)
{
	/* TopTransactionContext goes too: only the pointers matter here */
	known.cxt = NULL;
	known.graph = NULL;
	known.pairs = NULL;
	known.valid = false;
}

/* a relcache invalidation: of one of the tables mirrored, or of all */
static void
KnownRelcacheCallback(Datum arg, Oid relid)
{
	for (int i = 0; i < lengthof(known.tables); i++)
		if (relid == InvalidOid || relid == known.tables[i])
			known.table_changed = true;
}

/*
 * A subtransaction rolling back undoes what it and the subtransactions
 * inside it wrote and locked: every one started after it is inside it, so
 * if anything was added since it started, all is forgotten.
 */
static void
KnownSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && known.valid && mySubid <= known.high_subid)
		CdpKnownIdentitiesForget();
}

/* the identity lock, as CdpLockIdentityGraph takes it */
static bool
IdentityLockHeld(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, CDP_LOCK_CLASS, CDP_LOCK_IDENTITY, 2);
	return LockHeldByMe(&tag, ExclusiveLock);
}

/*
 * The store, if this transaction took the identity lock (with its check
 * that the snapshot is not stale) and nothing since made what it holds
 * untrue; else NULL.
 */
IdentityGraph *
CdpKnownIdentities(void)
{
	if (!known.valid || known.lxid != MyProc->lxid || known.table_changed ||
		!IdentityLockHeld())
	{
		CdpKnownIdentitiesForget();
		return NULL;
	}
	if (known.graph == NULL)
	{
		known.cxt = AllocSetContextCreate(TopTransactionContext, "cdp known identities",
										  ALLOCSET_DEFAULT_SIZES);
		known.graph = CdpNewIdentityGraph(NULL, known.cxt, false);
	}
	return known.graph;
}

/*
 * Called right after CdpLockIdentityGraph took the lock (or found it held)
 * and checked the snapshot: from now on what is read under it is kept.
 */
void
CdpKnownIdentitiesStart(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(KnownXactCallback, NULL);
		RegisterSubXactCallback(KnownSubXactCallback, NULL);
		CacheRegisterRelcacheCallback(KnownRelcacheCallback, (Datum) 0);
		callbacks_registered = true;
	}
	if (known.valid && known.lxid == MyProc->lxid && !known.table_changed)
		return;
	KnownReset();
	known.tables[0] = get_relname_relid("identities", get_namespace_oid("cdp", false));
	known.tables[1] = get_relname_relid("profile_records", get_namespace_oid("cdp", false));
	known.tables[2] = get_relname_relid("identity_pairs", get_namespace_oid("cdp", false));
	known.table_changed = false;
	known.valid = true;
	known.rules_copy = CdpIdentityRulesCopy();
	known.lxid = MyProc->lxid;
	known.high_subid = GetCurrentSubTransactionId();
}

/*
 * Keep what a batch resolved under the identity lock, once its writes are
 * done: its canonical profiles (each locked by this transaction or made by
 * it) and the identifiers stored directly under them.  A batch that merged
 * changed rows it did not read whole (identities moved, profiles pointed
 * elsewhere): then everything is forgotten and read again.
 */
void
CdpKnownIdentitiesRemember(IdentityGraph *g)
{
	IdentityGraph *k = CdpKnownIdentities();
	uint32		nprofs = CdpGraphProfileCount(g);
	CdpNodeIter it = {0, 0};
	IdNode	   *node;

	if (k == NULL)
		return;
	if (g->merges != NIL)
	{
		KnownReset();
		return;
	}
	if (CdpGraphNodeCount(k) + CdpGraphNodeCount(g) > KNOWN_IDENTIFIERS)
	{
		KnownReset();
		k = CdpKnownIdentities();
	}
	known.high_subid = Max(known.high_subid, GetCurrentSubTransactionId());
	if (!CdpKnownBlockedCurrent())
	{
		/* whether an identifier is blocked was answered under other rules */
		CdpNodeIter kit = {0, 0};

		while ((node = CdpGraphNextNode(k, &kit)) != NULL)
			node->blocked = 0;
		known.rules_copy = CdpIdentityRulesCopy();
	}
	for (uint32 i = 0; i < nprofs; i++)
	{
		ProfNode   *p = CdpGraphProfileAt(g, i);
		ProfNode   *kp;

		if (p->into != 0)
			continue;
		kp = CdpGraphProfile(k, p->profile_id, true);
		*CdpProfOnline(k, kp) = *CdpProfOnline(g, p);
		kp->merges_absorbed = p->merges_absorbed;
	}
	while ((node = CdpGraphNextNode(g, &it)) != NULL)
	{
		IdNode	   *kn;
		CdpIdentifier *id;

		if (!node->attached || CdpNodeProf(g, node)->into != 0)
			continue;
		id = CdpNodeIdentifier(g, node);
		kn = CdpGraphNode(k, id, true);
		pfree(id);
		kn->attached = true;
		kn->prof = CdpGraphProfile(k, CdpNodeProf(g, node)->profile_id, false)->self;
		CdpNodeSetLinkedAt(kn, CdpNodeLinkedAt(node));
		if (node->blocked != 0)
			kn->blocked = node->blocked;
	}
}

/*
 * Whether the kept nodes' answers to "is it blocked?" hold for the rules
 * now in use (the same copy of them).
 */
bool
CdpKnownBlockedCurrent(void)
{
	return known.rules_copy == CdpIdentityRulesCopy();
}


static uint32
PairKeyHash(const void *key, Size keysize)
{
	const PairKey *k = key;

	return hash_combine(hash_bytes((const unsigned char *) k->a, k->alen),
						hash_bytes((const unsigned char *) k->b, k->blen));
}

static int
PairKeyMatch(const void *x, const void *y, Size keysize)
{
	const PairKey *p = x;
	const PairKey *q = y;

	if (p->alen != q->alen || p->blen != q->blen)
		return 1;
	return memcmp(p->a, q->a, p->alen) != 0 || memcmp(p->b, q->b, p->blen) != 0;
}

/* the kept pairs, made empty if none yet; NULL when nothing can be kept */
static HTAB *
KnownPairs(void)
{
	HASHCTL		ctl;

	if (CdpKnownIdentities() == NULL)
		return NULL;
	if (known.pairs != NULL)
		return known.pairs;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(PairKey);
	ctl.entrysize = sizeof(KnownPair);
	ctl.hash = PairKeyHash;
	ctl.match = PairKeyMatch;
	ctl.hcxt = known.cxt;
	known.pairs = hash_create("cdp known pairs", 1024, &ctl,
							  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	return known.pairs;
}

/*
 * Whether the pair (a, b) is known to be stored, and (when linked is not
 * NULL) whether its message linked both ends, in *linked.
 */
bool
CdpKnownPair(CdpIdentifier *a, CdpIdentifier *b, bool *linked)
{
	HTAB	   *pairs = known.pairs != NULL ? KnownPairs() : NULL;
	PairKey		k = {VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a), VARSIZE_ANY_EXHDR(b)};
	KnownPair  *e;

	if (pairs == NULL || (e = hash_search(pairs, &k, HASH_FIND, NULL)) == NULL ||
		(linked != NULL && e->linked < 0))
		return false;
	if (linked != NULL)
		*linked = e->linked > 0;
	return true;
}

/*
 * Keep that the pair (a, b) is stored, read or written under the identity
 * lock: linked is 1 or 0 when known, -1 when not asked.
 */
void
CdpKnownPairRemember(CdpIdentifier *a, CdpIdentifier *b, int linked)
{
	HTAB	   *pairs = KnownPairs();
	PairKey		k = {VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a), VARSIZE_ANY_EXHDR(b)};
	KnownPair  *e;

	if (pairs == NULL)
		return;
	if (hash_get_num_entries(pairs) >= KNOWN_IDENTIFIERS)
	{
		KnownReset();
		if ((pairs = KnownPairs()) == NULL)
			return;
	}
	known.high_subid = Max(known.high_subid, GetCurrentSubTransactionId());
	e = hash_search(pairs, &k, HASH_FIND, NULL);
	if (e == NULL)
	{
		/* the entry's key points at the copy */
		char	   *bytes = MemoryContextAlloc(known.cxt, k.alen + k.blen);

		memcpy(bytes, k.a, k.alen);
		memcpy(bytes + k.alen, k.b, k.blen);
		k.a = bytes;
		k.b = bytes + k.alen;
		e = hash_search(pairs, &k, HASH_ENTER, NULL);
		e->linked = -1;
	}
	if (linked >= 0)
		e->linked = linked;
}
