/*
 * inbox_held.c
 *	  Which inbox rows the ingest workers' batches hold, so that a worker
 *	  taking a batch steps over the rows another one holds instead of
 *	  trying them one by one.
 *
 *	  Two workers draining a backlog both start at the lowest id: the second
 *	  found the first one's whole batch in its way and tried every row of it
 *	  (read the tuple, try to delete it, find it being deleted, try to lock
 *	  it, skip it), a batch's worth of work for nothing, every batch.  Each
 *	  worker now publishes, in its pool slot, the first and last id of the
 *	  rows it took, until its transaction ends; the others skip that range.
 *	  A hint only: a row in the range that its worker did not take (held by
 *	  someone else, or committed after that worker's snapshot) waits for a
 *	  later batch, which finds it once the range is released, and a range
 *	  published a moment too long only makes rows already gone look held.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/spin.h"

#include "workers.h"

/* this process's slot when it is an ingest worker, else NULL */
static CdpWorkerSlot *my_slot = NULL;

static void
SetHeld(Oid database, int64 first, int64 last)
{
	SpinLockAcquire(&CdpPool->mutex);
	my_slot->held_database = database;
	my_slot->held_first = first;
	my_slot->held_last = last;
	SpinLockRelease(&CdpPool->mutex);
}

/* a batch's rows are no longer held once its transaction has ended */
static void
ReleaseAtEnd(XactEvent event, void *arg)
{
	if (my_slot != NULL && my_slot->held_database != InvalidOid &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT))
		SetHeld(InvalidOid, 0, 0);
}

/* an ingest worker, once it holds its slot: its batches publish their rows */
void
CdpHoldInboxRowsFor(CdpWorkerSlot *slot)
{
	my_slot = slot;
	SetHeld(InvalidOid, 0, 0);
	RegisterXactCallback(ReleaseAtEnd, NULL);
}

/* this transaction took inbox rows first..last (only ingest workers publish) */
void
CdpNoteInboxRowsHeld(int64 first, int64 last)
{
	if (my_slot != NULL)
		SetHeld(MyDatabaseId, first, last);
}

/*
 * The id ranges the other ingest workers' batches hold in this database's
 * inbox, into first[] and last[] (room for CDP_MAX_INGEST_WORKERS); how
 * many.  Only ingest workers look: a session's cdp.process_inbox tries
 * rows one by one, as it always has.
 */
int
CdpInboxRowsHeldByOthers(int64 *first, int64 *last)
{
	int			n = 0;

	if (my_slot == NULL)
		return 0;
	SpinLockAcquire(&CdpPool->mutex);
	for (int i = 0; i < CDP_MAX_INGEST_WORKERS; i++)
	{
		CdpWorkerSlot *slot = &CdpPool->slots[i];

		if (slot != my_slot && slot->held_database == MyDatabaseId)
		{
			first[n] = slot->held_first;
			last[n] = slot->held_last;
			n++;
		}
	}
	SpinLockRelease(&CdpPool->mutex);
	return n;
}
