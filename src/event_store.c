/*
 * event_store.c
 *	  Writing validated messages into their cdp.events partitions the way
 *	  COPY does: table_multi_insert per partition, then index entries.  This
 *	  skips per-row executor and tuple-routing overhead; routing was already
 *	  done (partitions.c), so every row is known to fit its partition.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg_cdp.h"

/* the cdp.events columns pg_cdp fills, in CdpMessage order */
typedef enum EventColumn
{
	COL_MESSAGE_ID,
	COL_SOURCE,
	COL_TYPE,
	COL_EVENT,
	COL_NAME,
	COL_PROFILE_ID,
	COL_USER_ID,
	COL_ANONYMOUS_ID,
	COL_GROUP_ID,
	COL_PREVIOUS_ID,
	COL_TS,
	COL_ORIGINAL_TIMESTAMP,
	COL_SENT_AT,
	COL_RECEIVED_AT,
	COL_PROPERTIES,
	COL_TRAITS,
	COL_CONTEXT,
	COL_EXTRA,
	NUM_EVENT_COLUMNS
} EventColumn;

static const char *const column_names[NUM_EVENT_COLUMNS] = {
	"message_id", "source", "type", "event", "name", "profile_id", "user_id",
	"anonymous_id", "group_id", "previous_id", "ts", "original_timestamp",
	"sent_at", "received_at", "properties", "traits", "context", "extra"
};

static void
SetText(Datum *values, bool *nulls, int attno, const char *s)
{
	if (s == NULL)
		return;
	values[attno - 1] = CStringGetTextDatum(s);
	nulls[attno - 1] = false;
}

static void
SetJsonb(Datum *values, bool *nulls, int attno, JsonbValue *v)
{
	if (v == NULL)
		return;
	values[attno - 1] = JsonbPGetDatum(JsonbValueToJsonb(v));
	nulls[attno - 1] = false;
}

static void
SetTimestamp(Datum *values, bool *nulls, int attno, bool present, TimestampTz ts)
{
	if (!present)
		return;
	values[attno - 1] = TimestampTzGetDatum(ts);
	nulls[attno - 1] = false;
}

/* fill a slot of the partition's row type from a message */
static void
FillSlot(TupleTableSlot *slot, const int *attnos, CdpMessage *msg)
{
	Datum	   *v = slot->tts_values;
	bool	   *nulls = slot->tts_isnull;
	int			natts = slot->tts_tupleDescriptor->natts;

	ExecClearTuple(slot);
	for (int i = 0; i < natts; i++)
		nulls[i] = true;

	SetText(v, nulls, attnos[COL_MESSAGE_ID], msg->message_id);
	SetText(v, nulls, attnos[COL_SOURCE], msg->source);
	SetText(v, nulls, attnos[COL_TYPE], msg->type);
	SetText(v, nulls, attnos[COL_EVENT], msg->event);
	SetText(v, nulls, attnos[COL_NAME], msg->name);
	if (msg->has_profile_id)
	{
		v[attnos[COL_PROFILE_ID] - 1] = Int64GetDatum(msg->profile_id);
		nulls[attnos[COL_PROFILE_ID] - 1] = false;
	}
	SetText(v, nulls, attnos[COL_USER_ID], msg->user_id);
	SetText(v, nulls, attnos[COL_ANONYMOUS_ID], msg->anonymous_id);
	SetText(v, nulls, attnos[COL_GROUP_ID], msg->group_id);
	SetText(v, nulls, attnos[COL_PREVIOUS_ID], msg->previous_id);
	SetTimestamp(v, nulls, attnos[COL_TS], true, msg->ts);
	SetTimestamp(v, nulls, attnos[COL_ORIGINAL_TIMESTAMP], msg->has_original_ts, msg->original_ts);
	SetTimestamp(v, nulls, attnos[COL_SENT_AT], msg->has_sent_at, msg->sent_at);
	SetTimestamp(v, nulls, attnos[COL_RECEIVED_AT], true, msg->received_at);
	SetJsonb(v, nulls, attnos[COL_PROPERTIES], msg->properties);
	SetJsonb(v, nulls, attnos[COL_TRAITS], msg->traits);
	SetJsonb(v, nulls, attnos[COL_CONTEXT], msg->context);
	SetJsonb(v, nulls, attnos[COL_EXTRA], msg->extra);
	ExecStoreVirtualTuple(slot);
}

/*
 * Look columns up by name, so a partition made before a later ALTER of
 * cdp.events (a dropped column leaves a hole) still gets the right values.
 */
static void
MapColumns(Relation rel, int *attnos)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int c = 0; c < NUM_EVENT_COLUMNS; c++)
	{
		attnos[c] = SPI_fnumber(desc, column_names[c]);
		if (attnos[c] <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("partition %s has no column \"%s\"",
							RelationGetRelationName(rel), column_names[c])));
	}
}

/* insert the given messages (all routed to relid) into that partition */
static void
InsertIntoPartition(EState *estate, Oid relid, CdpMessage **msgs, int n)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * n);
	BulkInsertState bistate = GetBulkInsertState();
	CommandId	cid = GetCurrentCommandId(true);
	int			attnos[NUM_EVENT_COLUMNS];

	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("partition %s of cdp.events is not a plain table",
						RelationGetRelationName(rel)),
				 errhint("Partitions of cdp.events are managed by pg_cdp; detach this one.")));
	MapColumns(rel, attnos);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);

	for (int i = 0; i < n; i++)
	{
		slots[i] = table_slot_create(rel, NULL);
		FillSlot(slots[i], attnos, msgs[i]);
	}
	table_multi_insert(rel, slots, n, cid, 0, bistate);

	for (int i = 0; i < n; i++)
	{
		if (rri->ri_NumIndices > 0)
		{
			List	   *recheck = ExecInsertIndexTuples(rri, slots[i], estate,
														false, false, NULL, NIL);

			list_free(recheck);
			ResetPerTupleExprContext(estate);
		}
		ExecDropSingleTupleTableSlot(slots[i]);
		msgs[i]->outcome = CDP_STORED;
	}

	FreeBulkInsertState(bistate);
	ExecCloseIndices(rri);
	table_close(rel, NoLock);
}

/*
 * Store every pending message (routed by CdpRouteEvents); returns how many.
 * Messages are grouped by partition, keeping their order within each.
 */
int
CdpStoreEvents(CdpMessage **msgs, int n)
{
	EState	   *estate;
	CdpMessage **group = palloc(sizeof(CdpMessage *) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	int			stored = 0;

	estate = CreateExecutorState();
	for (int i = 0; i < n; i++)
	{
		int			ngroup = 0;

		if (done[i] || msgs[i]->outcome != CDP_PENDING)
			continue;
		for (int j = i; j < n; j++)
		{
			if (!done[j] && msgs[j]->outcome == CDP_PENDING &&
				msgs[j]->partition == msgs[i]->partition)
			{
				group[ngroup++] = msgs[j];
				done[j] = true;
			}
		}
		InsertIntoPartition(estate, msgs[i]->partition, group, ngroup);
		stored += ngroup;
	}
	FreeExecutorState(estate);
	return stored;
}
