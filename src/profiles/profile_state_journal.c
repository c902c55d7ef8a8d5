/*
 * profile_state_journal.c
 *	  What each change to a call's queue of traits and consent replaced, so
 *	  that a part of the call (a batch, a chunk of it: subtransactions) that
 *	  rolls back can put the queue back as it was.  Parts gathered into
 *	  queues of their own, merged into their call's when they committed:
 *	  merging copied every entry again (a twentieth of ingest's time with
 *	  traits and consent on every message, of which gathering into the
 *	  call's larger tables takes back about three quarters).
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "pg_cdp.h"
#include "identity.h"
#include "profile_state_queue.h"

/*
 * Room for n more records of what changes replace, before the changes: a
 * change and its record are then made without anything that can fail in
 * between.
 */
void
CdpReserveUndo(CdpStateQueue *queue, int n)
{
	if (!queue->journal || queue->nundo + n <= queue->capundo)
		return;
	queue->capundo = Max(queue->capundo * 2, queue->nundo + n + 256);
	queue->undo = queue->undo ?
		repalloc(queue->undo, sizeof(Undo) * queue->capundo) :
		MemoryContextAlloc(queue->cxt, sizeof(Undo) * queue->capundo);
}

/* the record of a change about to be made (NULL when none is kept) */
Undo *
CdpRecordUndo(CdpStateQueue *queue, UndoKind kind, void *target)
{
	Undo	   *u;

	if (!queue->journal)
		return NULL;
	Assert(queue->nundo < queue->capundo);
	u = &queue->undo[queue->nundo++];
	u->kind = kind;
	u->target = target;
	return u;
}

/* undo the change u recorded */
static void
UndoChange(CdpStateQueue *queue, Undo *u)
{
	switch (u->kind)
	{
		case UNDO_OWNER_NEW:
			{
				CdpPendingId *p = u->target;
				BytesKey	k = p->h.key;

				hash_search(queue->ids, &k, HASH_REMOVE, NULL);
				break;
			}
		case UNDO_OWNER_SET:
			{
				CdpPendingId *p = u->target;

				p->profile_id = u->old.owner.profile_id;
				p->since = u->old.owner.since;
				break;
			}
		case UNDO_TRAIT_NEW:
		case UNDO_CONSENT_NEW:
			{
				PendingHead *e = u->target;
				CdpPendingId *p = (CdpPendingId *) e->key.owner;
				bool		trait = u->kind == UNDO_TRAIT_NEW;
				void	  **list = trait ? (void **) &p->traits : (void **) &p->consent;
				int		   *count = trait ? &p->ntraits : &p->nconsent;

				/* the newest entry is first in its list; it may be in the table */
				Assert(*list == e);
				*list = e->next;
				(*count)--;
				queue->nentries--;
				hash_search(trait ? queue->traits : queue->consent, &e->key, HASH_REMOVE, NULL);
				break;
			}
		case UNDO_TRAIT_SET:
			{
				PendingTrait *t = u->target;

				pfree(t->value);
				t->value = u->old.trait.value;
				t->at = u->old.trait.at;
				break;
			}
		case UNDO_LATEST_SET:
		case UNDO_CHANGE_SET:
			{
				PendingConsent *c = u->target;
				Decision   *d = u->kind == UNDO_CHANGE_SET ? &c->changes[u->pos] : &c->latest;

				CdpFreeDecisionTexts(queue, d);
				*d = u->old.decision;
				break;
			}
		case UNDO_CHANGE_ADD:
			{
				PendingConsent *c = u->target;

				CdpFreeDecisionTexts(queue, &c->changes[u->pos]);
				memmove(&c->changes[u->pos], &c->changes[u->pos + 1],
						sizeof(Decision) * (c->nchanges - u->pos - 1));
				c->nchanges--;
				break;
			}
	}
}

/*
 * Where a part of a call (a batch, a chunk of it) starts changing the
 * call's queue: from here on every change records what it replaced, so
 * that CdpStateQueueRollback can put back what the part did if it rolls
 * back, and CdpStateQueueCommit frees what it replaced once it is kept.
 * Parts gather into the call's queue this way, not into queues of their
 * own merged when they commit: merging copied every entry again.
 */
int
CdpStateQueueMark(CdpStateQueue *queue)
{
	queue->journal = true;
	return queue->nundo;
}

/* undo every change since mark: the part that made them rolled back */
void
CdpStateQueueRollback(CdpStateQueue *queue, int mark)
{
	while (queue->nundo > mark)
		UndoChange(queue, &queue->undo[--queue->nundo]);
}

/*
 * The outermost part committed: what its changes replaced is freed, and
 * changes are no longer recorded until the next mark.
 */
void
CdpStateQueueCommit(CdpStateQueue *queue)
{
	for (int i = 0; i < queue->nundo; i++)
	{
		Undo	   *u = &queue->undo[i];

		if (u->kind == UNDO_TRAIT_SET)
			pfree(u->old.trait.value);
		else if (u->kind == UNDO_LATEST_SET || u->kind == UNDO_CHANGE_SET)
			CdpFreeDecisionTexts(queue, &u->old.decision);
	}
	queue->nundo = 0;
	queue->journal = false;
}
