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
 *	  Everything is forgotten when the transaction ends, and when a
 *	  subtransaction that added anything rolls back (its writes, row locks
 *	  and perhaps the identity lock are gone with it).  The store holds at
 *	  most KNOWN_IDENTIFIERS identifiers; past that it starts again empty.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
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
	uint64		rules_copy;		/* the rules its nodes' blocked answers come from */
} KnownStore;

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
	known.valid = false;
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
	if (!known.valid || known.lxid != MyProc->lxid || !IdentityLockHeld())
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
		callbacks_registered = true;
	}
	if (known.valid && known.lxid == MyProc->lxid)
		return;
	KnownReset();
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

