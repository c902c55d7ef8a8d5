/*
 * profile_state_queue.c
 *	  The traits and consent ingest gathers per identifier before writing
 *	  them: SDKs repeat the same traits and consent on every message, and
 *	  writing a batch's state at once rewrote the rows of the same people
 *	  batch after batch, each time leaving a dead version that the rest of
 *	  the call (one transaction) stepped over.
 *
 *	  A queue keeps, per identifier and trait key, the winning value (the
 *	  latest time, then the larger value text), and per identifier and
 *	  purpose the winning decision and the changes of decision in time order
 *	  (the history: a repeat of the decision before it is none).  A call
 *	  has one queue; its batches and their chunks (subtransactions) gather
 *	  into it recording what each change replaced, and a part that rolls
 *	  back undoes its changes (CdpStateQueueRollback), so nothing of it is
 *	  written, and only state of identifiers whose profile rows the
 *	  transaction holds (identity resolution locked them until it ends).
 *	  CdpWriteQueuedProfileState (profile_state_write.c) writes a queue and
 *	  empties it: whatever runs the pipeline calls it before its
 *	  transaction ends (process_inbox at the end of the call, or when the
 *	  queue passes its memory bound).
 *
 *	  Merges inside the call recompute profiles from the stores without what
 *	  is still gathered: the write merges each identifier's whole maps into
 *	  the profile holding it then, and merging keeps the latest, so the
 *	  profile ends as a recompute would make it.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "profile_state_queue.h"

static uint32
BytesKeyHash(const void *key, Size keysize)
{
	const BytesKey *k = key;
	uint32		h = hash_bytes((const unsigned char *) k->bytes, k->len);

	if (k->owner != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) &k->owner, sizeof(k->owner)));
	return h;
}

static int
BytesKeyMatch(const void *a, const void *b, Size keysize)
{
	const BytesKey *x = a;
	const BytesKey *y = b;

	if (x->owner != y->owner || x->len != y->len)
		return 1;
	return memcmp(x->bytes, y->bytes, x->len);
}

/* a table keyed by BytesKey in the queue's context */
static HTAB *
NewTable(CdpStateQueue *queue, const char *name, Size entrysize)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(BytesKey);
	ctl.entrysize = entrysize;
	ctl.hash = BytesKeyHash;
	ctl.match = BytesKeyMatch;
	ctl.hcxt = queue->cxt;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* empty tables, in the queue's (emptied) context */
void
CdpStartStateQueue(CdpStateQueue *queue)
{
	MemoryContextReset(queue->cxt);
	queue->traits = NewTable(queue, "cdp pending traits", sizeof(EntryRef));
	queue->consent = NewTable(queue, "cdp pending consent", sizeof(EntryRef));
	queue->ids = NewTable(queue, "cdp pending identifiers", sizeof(CdpPendingId));
	queue->nentries = 0;
	queue->nsources = 0;
	queue->undo = NULL;
	queue->nundo = queue->capundo = 0;
	queue->journal = false;
}

/*
 * An identifier's entry in the queue, made (with a copy of it) if new,
 * under profile_id: the profile its message resolved to.
 */
CdpPendingId *
CdpPendingOwner(CdpStateQueue *queue, CdpIdentifier *id, int64 profile_id)
{
	BytesKey	k = {NULL, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id)};
	uint32		hash = get_hash_value(queue->ids, &k);
	CdpPendingId *e = hash_search_with_hash_value(queue->ids, &k, hash, HASH_FIND, NULL);
	Undo	   *u;

	CdpReserveUndo(queue, 1);
	if (e == NULL)
	{
		CdpIdentifier *copy = MemoryContextAlloc(queue->cxt, VARSIZE_ANY(id));

		memcpy(copy, id, VARSIZE_ANY(id));
		e = hash_search_with_hash_value(queue->ids, &k, hash, HASH_ENTER, NULL);
		e->h.id = copy;
		e->h.key.owner = NULL;
		e->h.key.bytes = VARDATA_ANY(copy);
		e->h.key.len = k.len;
		e->h.name = NULL;
		e->h.namelen = 0;
		e->traits = NULL;
		e->consent = NULL;
		e->ntraits = e->nconsent = 0;
		e->stored = false;
		CdpRecordUndo(queue, UNDO_OWNER_NEW, e);
	}
	else if ((u = CdpRecordUndo(queue, UNDO_OWNER_SET, e)) != NULL)
	{
		u->old.owner.profile_id = e->profile_id;
		u->old.owner.since = e->since;
	}
	e->profile_id = profile_id;
	e->since = CdpGraphWrites();
	return e;
}

/* an identifier's entries past which they are found through a table */
#define SHORT_LIST	8

/* enter e in table, by its owner and name */
static void
EnterRef(HTAB *table, PendingHead *e)
{
	EntryRef   *ref = hash_search(table, &e->key, HASH_ENTER, NULL);

	ref->entry = e;
}

/*
 * The entry (of entrysize bytes) of an identifier's trait key or purpose,
 * made (with a copy of the name, added to the identifier's list *list of
 * *count entries) if new, recorded as undo kind.  Most identifiers have a
 * few: their list is searched; only the entries of longer lists go into
 * one of the queue's tables, which a call makes large.
 */
static void *
PendingEntry(CdpStateQueue *queue, HTAB *table, CdpPendingId *owner, void **list, int *count,
			 const char *name, int namelen, Size entrysize, UndoKind kind, bool *found)
{
	PendingHead *e;
	char	   *copy;

	*found = true;
	if (*count <= SHORT_LIST)
	{
		for (e = *list; e != NULL; e = e->next)
			if (e->namelen == namelen && memcmp(e->name, name, namelen) == 0)
				return e;
	}
	else
	{
		BytesKey	k = {owner, name, namelen};
		EntryRef   *ref = hash_search(table, &k, HASH_FIND, NULL);

		if (ref != NULL)
			return ref->entry;
	}
	*found = false;
	CdpReserveUndo(queue, 1);
	e = MemoryContextAllocZero(queue->cxt, entrysize);
	copy = MemoryContextAlloc(queue->cxt, namelen + 1);
	memcpy(copy, name, namelen);
	copy[namelen] = '\0';
	e->key.owner = owner;
	e->key.bytes = copy;
	e->key.len = namelen;
	e->id = owner->h.id;
	e->name = copy;
	e->namelen = namelen;
	e->next = *list;
	*list = e;
	queue->nentries++;
	CdpRecordUndo(queue, kind, e);
	/* entering it in the table can fail: undoing it then removes what was entered */
	if (++(*count) == SHORT_LIST + 1)
	{
		for (PendingHead *l = e; l != NULL; l = l->next)
			EnterRef(table, l);
	}
	else if (*count > SHORT_LIST + 1)
		EnterRef(table, e);
	return e;
}

/* a message's source in the queue's memory: the few there are, kept once */
static const char *
SourceText(CdpStateQueue *queue, const char *source)
{
	for (int i = 0; i < queue->nsources; i++)
		if (strcmp(queue->sources[i], source) == 0)
			return queue->sources[i];
	if (queue->nsources == lengthof(queue->sources))
		return MemoryContextStrdup(queue->cxt, source);
	queue->sources[queue->nsources] = MemoryContextStrdup(queue->cxt, source);
	return queue->sources[queue->nsources++];
}

/* free a source SourceText copied (one it keeps stays) */
static void
FreeSourceText(CdpStateQueue *queue, const char *source)
{
	for (int i = 0; i < queue->nsources; i++)
		if (queue->sources[i] == source)
			return;
	pfree((char *) source);
}

/* free the texts of a decision no longer kept */
void
CdpFreeDecisionTexts(CdpStateQueue *queue, Decision *d)
{
	if (d->message_id)
		pfree((char *) d->message_id);
	if (d->source)
		FreeSourceText(queue, d->source);
}

/* a trait value as jsonb text (its ::text), for a tie */
static char *
JsonbText(Jsonb *jb)
{
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/*
 * Keep a trait value of an identifier if it wins over the one kept: the
 * later time, then the larger value text (as the store's merge orders them).
 */
void
CdpPendTrait(CdpStateQueue *queue, CdpPendingId *owner, const char *name, int namelen,
			 Datum jsonb, TimestampTz at)
{
	Jsonb	   *value = DatumGetJsonbP(jsonb);
	bool		found;
	PendingTrait *e = PendingEntry(queue, queue->traits, owner, (void **) &owner->traits,
								   &owner->ntraits, name, namelen, sizeof(PendingTrait),
								   UNDO_TRAIT_NEW, &found);
	Jsonb	   *copy;
	Undo	   *u;

	if (found && (at < e->at ||
				  (at == e->at && strcmp(JsonbText(value), JsonbText(e->value)) <= 0)))
		return;
	CdpReserveUndo(queue, 1);
	copy = MemoryContextAlloc(queue->cxt, VARSIZE(value));
	memcpy(copy, value, VARSIZE(value));
	if (found && (u = CdpRecordUndo(queue, UNDO_TRAIT_SET, e)) != NULL)
	{
		/* freed once the part holding the change commits */
		u->old.trait.value = e->value;
		u->old.trait.at = e->at;
	}
	else if (found)
		pfree(e->value);
	e->value = copy;
	e->at = at;
}

/* a copy of d in the queue's memory */
static Decision
CopyDecision(CdpStateQueue *queue, const Decision *d)
{
	Decision	c = *d;

	c.message_id = d->message_id ? MemoryContextStrdup(queue->cxt, d->message_id) : NULL;
	c.source = SourceText(queue, d->source);
	return c;
}

/*
 * Set *to (of entry e; a change when pos >= 0, else its winner) to a copy
 * of d in the queue's memory.  The texts of the decision it replaces are
 * freed, or once the part making the change commits (a decision replaces
 * another on most messages).
 */
static void
SetDecision(CdpStateQueue *queue, PendingConsent *e, int pos, const Decision *d)
{
	Decision   *to = pos >= 0 ? &e->changes[pos] : &e->latest;
	Decision	c;
	Undo	   *u;

	CdpReserveUndo(queue, 1);
	c = CopyDecision(queue, d);
	if ((u = CdpRecordUndo(queue, pos >= 0 ? UNDO_CHANGE_SET : UNDO_LATEST_SET, e)) != NULL)
	{
		u->pos = pos;
		u->old.decision = *to;
	}
	else
		CdpFreeDecisionTexts(queue, to);
	*to = c;
}

/*
 * Whether decision a wins over b: the latest; at the same time a denial,
 * then the larger message id and source (as cdp.merge_consent orders them).
 */
static bool
DecisionWins(const Decision *a, const Decision *b)
{
	int			c;

	if (b->source == NULL || a->at != b->at)
		return b->source == NULL || a->at > b->at;
	if (a->granted != b->granted)
		return !a->granted;
	c = strcmp(a->message_id ? a->message_id : "", b->message_id ? b->message_id : "");
	if (c != 0)
		return c > 0;
	return strcmp(a->source, b->source) > 0;
}

/*
 * Add a decision to the changes of a purpose: kept by time (a grant before
 * a denial at the same time), each unlike the one before it.  A decision
 * like the one before it is a repeat and not kept; one that comes before a
 * change like itself takes its place (it made that change).
 */
static void
AddChange(CdpStateQueue *queue, PendingConsent *e, const Decision *d)
{
	int			pos = e->nchanges;
	Decision	c;
	Undo	   *u;

	while (pos > 0 && (e->changes[pos - 1].at > d->at ||
					   (e->changes[pos - 1].at == d->at && !e->changes[pos - 1].granted &&
						d->granted)))
		pos--;
	if (pos > 0 && e->changes[pos - 1].granted == d->granted)
		return;
	if (pos < e->nchanges && e->changes[pos].granted == d->granted)
	{
		SetDecision(queue, e, pos, d);
		return;
	}
	CdpReserveUndo(queue, 1);
	if (e->nchanges == e->capchanges)
	{
		int			cap = Max(2, e->capchanges * 2);

		e->changes = e->changes ?
			repalloc(e->changes, sizeof(Decision) * cap) :
			MemoryContextAlloc(queue->cxt, sizeof(Decision) * cap);
		e->capchanges = cap;
	}
	c = CopyDecision(queue, d);
	memmove(&e->changes[pos + 1], &e->changes[pos], sizeof(Decision) * (e->nchanges - pos));
	e->changes[pos] = c;
	e->nchanges++;
	if ((u = CdpRecordUndo(queue, UNDO_CHANGE_ADD, e)) != NULL)
		u->pos = pos;
}

/* the decisions about a purpose of an identifier, made if new */
static PendingConsent *
ConsentEntry(CdpStateQueue *queue, CdpPendingId *owner, const char *purpose, int len)
{
	bool		found;

	/* a new entry is zeroed: no decision (source NULL), no changes */
	return PendingEntry(queue, queue->consent, owner, (void **) &owner->consent,
						&owner->nconsent, purpose, len, sizeof(PendingConsent),
						UNDO_CONSENT_NEW, &found);
}

/* one decision of a message about a purpose of an identifier */
void
CdpPendDecision(CdpStateQueue *queue, CdpPendingId *owner, const char *purpose, bool granted,
				TimestampTz at, const char *message_id, const char *source)
{
	PendingConsent *e = ConsentEntry(queue, owner, purpose, strlen(purpose));
	Decision	dd = {granted, at, message_id, source};
	Decision   *d = &dd;

	if (DecisionWins(d, &e->latest))
		SetDecision(queue, e, -1, d);
	AddChange(queue, e, d);
}

/*
 * An empty queue of the traits and consent a part (chunk, batch, call)
 * gathers, in a context of its own under cxt.
 */
CdpStateQueue *
CdpNewStateQueue(MemoryContext cxt)
{
	CdpStateQueue *queue = MemoryContextAllocZero(cxt, sizeof(CdpStateQueue));

	queue->cxt = AllocSetContextCreate(cxt, "cdp profile state", ALLOCSET_DEFAULT_SIZES);
	CdpStartStateQueue(queue);
	return queue;
}

/*
 * How much a queue holds, in kilobytes (about 1.5 per identifier whose
 * traits and consent it gathered; trait values can make it more): a call
 * writes when this passes its bound, which bounds its memory.
 */
int
CdpStateQueueLength(CdpStateQueue *queue)
{
	return (int) (MemoryContextMemAllocated(queue->cxt, true) / 1024);
}
