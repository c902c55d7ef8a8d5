/*
 * computed_trait_backfill.c
 *	  A computed trait's states and values written in bulk: when it is
 *	  defined and no maintenance worker backfills it (cdp.backfill_trait),
 *	  and when a background backfill publishes its values
 *	  (cdp.publish_trait_values).  A definition reads the trait's events in
 *	  profile order in one SELECT (scanned and sorted by parallel workers
 *	  when the planner chooses, as a GROUP BY by hand would be); each
 *	  profile's events are counted into its state as they stream by.  A
 *	  person's state and value (where no merge involves them: their own
 *	  state's) go into cdp.trait_states as one row, a batch at a time in
 *	  profile order.  Rows of people who have none yet are inserted while
 *	  the read runs, as COPY inserts them (see BulkWriter), the way CREATE
 *	  TABLE AS writes while its query's workers read; rows that exist wait
 *	  in a tuplestore (no statement may run while workers do) and gain
 *	  theirs in one UPDATE per batch after the read.  Only canonical
 *	  profiles with members combine their members' stored states
 *	  afterwards.  Memory: one profile's state, the profiles merges
 *	  involve, a batch and the ids of profiles whose value was written;
 *	  the tuplestore and the sort spill to disk.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "computed_traits.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(cdp_backfill_trait);
PG_FUNCTION_INFO_V1(cdp_publish_trait_values);

/* states (and values) written per statement */
#define BACKFILL_BATCH 10000

/*
 * Rows per multi-insert into the heap (as COPY buffers them): each needs a
 * slot of its own, and ten thousand slots made afresh per definition cost
 * more than the calls they save.
 */
#define INSERT_CHUNK 1000

/*
 * A batch's memory is kept from one batch to the next: a batch allocated
 * afresh from the system every time spent a tenth of a definition in page
 * faults.  A batch of small states fits in it.
 */
#define BATCH_BLOCK (8 * 1024 * 1024)

/*
 * The rows read wait in a tuplestore of at most this much memory, then in
 * a temporary file: memory taken fresh from the system for every profile's
 * row cost more (a page fault per 4 kB, a twentieth of a definition) than
 * writing and reading the file back.
 */
#define STORE_KBYTES 1024

static SPIPlanPtr update_plan = NULL;
static SPIPlanPtr merged_plan = NULL;
static SPIPlanPtr insert_plan = NULL;

/*
 * The columns of cdp.trait_states a backfill writes, in this order: a
 * person's state of the trait and their value of it go on one row.
 */
#define COL_PID 0
#define COL_STATES 1			/* {"<trait id>": state}, NULL: none to add */
#define COL_EXPIRES 2
#define COL_TRAITS 3			/* {"<trait name>": value}, NULL: none */
#define COL_TRAITS_UPDATED 4
#define NCOLS 5
static const char *const row_cols[NCOLS] = {"profile_id", "states", "expires_at", "traits",
"traits_updated_at"};
static const Oid row_types[NCOLS] = {INT8OID, JSONBOID, TIMESTAMPTZOID, JSONBOID, TIMESTAMPTZOID};

/*
 * Rows of cdp.trait_states inserted the way COPY inserts them: a batch
 * into the heap at once, then their index entries.  That needs no other writer of the table until
 * commit (a profile id found without a row must have none when it is
 * inserted): when SHARE ROW EXCLUSIVE on it is free at once (locked), it is
 * taken; else (a writer is in flight: never waited for, as ingest takes
 * this table's lock and cdp.computed_traits' in either order) the rows go
 * through INSERT ... ON CONFLICT as any writer's do.
 */
typedef struct BulkWriter
{
	Relation	rel;			/* held open to the end, locked or not */
	CdpDirectInsert *direct;	/* NULL: the lock was not free, or the table
								 * needs an INSERT statement */
	Datum	   *values;			/* a batch's columns, row after row */
	bool	   *nulls;
} BulkWriter;

/* a batch of rows to write (columns as above), in memory reset per batch */
typedef struct BackfillBatch
{
	int			n;
	int64		pids[BACKFILL_BATCH];
	Datum		cols[NCOLS][BACKFILL_BATCH];
	bool		nulls[NCOLS][BACKFILL_BATCH];
} BackfillBatch;

/*
 * The receiver of the trait's events, in profile order: the state of the
 * profile being read, and what is done, in the tuplestore.
 */
typedef struct EventReceiver
{
	DestReceiver pub;
	CdpTraitSpec *spec;
	Datum		window;			/* interval, or 0 for none */
	HTAB	   *involved;		/* profile ids merges involve */
	const char *key;			/* the trait's id, its states' key */
	const char *name;			/* the trait's name, its values' key */
	Tuplestorestate *store;
	TupleDesc	desc;			/* (profile_id, {key: state}, expires_at, {name: value}) */
	MemoryContext profile_cxt;	/* the current profile's state, reset per profile */
	MemoryContext event_cxt;	/* an event's document, reset per event */
	bool		has_profile;
	int64		profile_id;
	CdpTraitState *state;
	bool		by_value;		/* rows carry the value at the trait's
								 * property, not the properties */
	/* rows streamed into the table while the read runs (w NULL: none) */
	BulkWriter *w;
	BackfillBatch *batch;
	MemoryContext batch_cxt;	/* the batch's rows, reset per batch */
	Datum		now;			/* their values' time */
	int64		inserted;		/* states inserted */
	int64	   *valued;			/* ids whose values were inserted, for
								 * audiences (NULL: none are defined) */
	int			nvalued;
	int			maxvalued;
} EventReceiver;

/* the tuplestore's rows: the first four columns above */
#define STORE_COLS 4

static bool BatchAdd(BackfillBatch *b, const Datum *values, const bool *nulls, Datum now);
static void FlushStream(EventReceiver *r);

/* {key: v}: a row's states or values holding one trait's */
static Jsonb *
KeyedValue(const char *key, JsonbValue *v)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	CdpPushJsonbKey(&ps, key);
	pushJsonbValue(&ps, WJB_VALUE, v);
	return JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
}

/* {key: doc}, doc a scalar or a container (which pushJsonbValue unpacks) */
static Jsonb *
KeyedJsonb(const char *key, Jsonb *doc)
{
	JsonbValue	v;

	CdpJsonbDocumentValue(doc, &v);
	return KeyedValue(key, &v);
}

/* {name: the state's value}; NULL when it has none */
static Jsonb *
KeyedStateValue(const char *name, const CdpTraitState *state)
{
	JsonbValue	v;

	if (!CdpTraitStateValueOf(state, &v))
		return NULL;
	/* a container built in memory: pushed as a Jsonb of its own */
	if (v.type == jbvArray || v.type == jbvObject)
		return KeyedJsonb(name, JsonbValueToJsonb(&v));
	return KeyedValue(name, &v);
}

/* whether merges involve the profile id (its value is not its state's) */
static bool
Involved(EventReceiver *r, int64 profile_id)
{
	return hash_get_num_entries(r->involved) > 0 &&
		hash_search(r->involved, &profile_id, HASH_FIND, NULL) != NULL;
}

/*
 * The current profile's state, expiry and value (its own state's, where no
 * merge involves it), keyed as the rows keep them: onto the batch streamed
 * into the table (copied into its memory), or into the tuplestore.
 */
static void
FinishProfile(EventReceiver *r)
{
	Datum		values[STORE_COLS];
	bool		nulls[STORE_COLS] = {false, false, false, false};
	JsonbParseState *ps = NULL;
	MemoryContext old;

	if (!r->has_profile)
		return;
	old = MemoryContextSwitchTo(r->profile_cxt);
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	if (CdpTraitStatePush(&ps, r->key, r->state))
	{
		Jsonb	   *value = NULL;

		values[COL_PID] = Int64GetDatum(r->profile_id);
		values[COL_STATES] = JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT,
																			  NULL)));
		nulls[COL_EXPIRES] = r->window == (Datum) 0 || !r->state->has_oldest;
		values[COL_EXPIRES] = nulls[COL_EXPIRES] ? (Datum) 0 :
			DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(r->state->oldest),
								r->window);
		if (!Involved(r, r->profile_id))
			value = KeyedStateValue(r->name, r->state);
		nulls[COL_TRAITS] = value == NULL;
		values[COL_TRAITS] = nulls[COL_TRAITS] ? (Datum) 0 : JsonbPGetDatum(value);
		if (r->w == NULL)
			tuplestore_putvalues(r->store, r->desc, values, nulls);
		else
		{
			MemoryContextSwitchTo(r->batch_cxt);
			values[COL_PID] = Int64GetDatum(r->profile_id);
			values[COL_STATES] = datumCopy(values[COL_STATES], false, -1);
			if (!nulls[COL_EXPIRES])
				values[COL_EXPIRES] = datumCopy(values[COL_EXPIRES], FLOAT8PASSBYVAL, 8);
			if (!nulls[COL_TRAITS])
				values[COL_TRAITS] = datumCopy(values[COL_TRAITS], false, -1);
			if (BatchAdd(r->batch, values, nulls, r->now) && r->batch->n == BACKFILL_BATCH)
				FlushStream(r);
		}
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->profile_cxt);
	r->has_profile = false;
}

/*
 * An event (profile_id, ts, properties, or the value at the trait's
 * property when by_value): counted into its profile's state.  The state
 * keeps copies of what it takes from the document (numbers, texts): the
 * document, detoasted or pointing into the row, goes with the row.
 */
static bool
EventReceive(TupleTableSlot *slot, DestReceiver *self)
{
	EventReceiver *r = (EventReceiver *) self;
	bool		isnull;
	int64		profile_id = DatumGetInt64(slot_getattr(slot, 1, &isnull));
	Datum		time = slot_getattr(slot, 2, &isnull);
	TimestampTz ts = isnull ? 0 : DatumGetTimestampTz(time);	/* NULL: not read */
	Datum		datum = slot_getattr(slot, 3, &isnull);
	Jsonb	   *doc;
	MemoryContext old;

	if (r->has_profile && r->profile_id != profile_id)
		FinishProfile(r);
	old = MemoryContextSwitchTo(r->event_cxt);
	doc = isnull ? NULL : DatumGetJsonbP(datum);
	MemoryContextSwitchTo(r->profile_cxt);
	if (!r->has_profile)
	{
		r->has_profile = true;
		r->profile_id = profile_id;
		r->state = CdpNewTraitState(r->spec->kind);
	}
	if (!r->by_value)
		(void) CdpTraitStateAdd(r->spec, r->state, ts, doc);
	else if (doc == NULL)
		(void) CdpTraitStateAddValue(r->spec, r->state, ts, NULL);
	else
	{
		JsonbValue	v;

		CdpJsonbDocumentValue(doc, &v);
		(void) CdpTraitStateAddValue(r->spec, r->state, ts, &v);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->event_cxt);
	return true;
}

static void
EventStartup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
EventShutdown(DestReceiver *self)
{
	FinishProfile((EventReceiver *) self);
}

static void
EventDestroy(DestReceiver *self)
{
}

/* the rows the tuplestore keeps */
static TupleDesc
StoreDesc(void)
{
	TupleDesc	desc = CreateTemplateTupleDesc(STORE_COLS);

	TupleDescInitEntry(desc, 1, "profile_id", INT8OID, -1, 0);
	TupleDescInitEntry(desc, 2, "state", JSONBOID, -1, 0);
	TupleDescInitEntry(desc, 3, "expires_at", TIMESTAMPTZOID, -1, 0);
	TupleDescInitEntry(desc, 4, "value", JSONBOID, -1, 0);
	return desc;
}

/*
 * Profile ids that merges involve (merged away, or canonical with members):
 * their values combine several states, the others' are their own state's.
 */
static HTAB *
InvolvedProfiles(void)
{
	HASHCTL		ctl;
	HTAB	   *involved;
	uint64		n;

	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(int64);
	ctl.hcxt = CurrentMemoryContext;
	involved = hash_create("cdp profiles merges involve", 1024, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	n = CdpExecSql("SELECT r.profile_id FROM cdp.profile_records r WHERE r.merged_into IS NOT NULL "
				   "UNION SELECT r.merged_into FROM cdp.profile_records r WHERE r.merged_into IS NOT NULL",
				   SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
													 &isnull));

		(void) hash_search(involved, &id, HASH_ENTER, NULL);
	}
	SPI_freetuptable(SPI_tuptable);
	return involved;
}

/*
 * A stored state (profile_id, state) of a trait whose states are all
 * stored (a background backfill, published): the value of a profile no
 * merge involves, into the tuplestore (no state: it is stored already).
 */
static bool
StateReceive(TupleTableSlot *slot, DestReceiver *self)
{
	EventReceiver *r = (EventReceiver *) self;
	bool		isnull;
	int64		profile_id = DatumGetInt64(slot_getattr(slot, 1, &isnull));
	Datum		state = slot_getattr(slot, 2, &isnull);
	MemoryContext old;
	Jsonb	   *value;

	if (isnull || Involved(r, profile_id))
		return true;
	old = MemoryContextSwitchTo(r->profile_cxt);
	value = KeyedStateValue(r->name, CdpTraitStateFromJsonb(r->spec->kind, DatumGetJsonbP(state)));
	if (value != NULL)
	{
		Datum		values[STORE_COLS] = {Int64GetDatum(profile_id), (Datum) 0, (Datum) 0,
		JsonbPGetDatum(value)};
		bool		nulls[STORE_COLS] = {false, true, true, false};

		tuplestore_putvalues(r->store, r->desc, values, nulls);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->profile_cxt);
	return true;
}

/* a receiver of rows into a new tuplestore (see EventReceive, StateReceive) */
static EventReceiver *
NewReceiver(bool (*receive) (TupleTableSlot *, DestReceiver *), int32 trait_id,
			const char *name, CdpTraitSpec *spec, Datum window, HTAB *involved)
{
	EventReceiver *r = palloc0(sizeof(EventReceiver));

	r->key = psprintf("%d", trait_id);
	r->name = name;

	r->pub.receiveSlot = receive;
	r->pub.rStartup = EventStartup;
	r->pub.rShutdown = EventShutdown;
	r->pub.rDestroy = EventDestroy;
	r->pub.mydest = DestTuplestore;	/* rows go somewhere: not a utility */
	r->spec = spec;
	r->window = window;
	r->involved = involved;
	r->store = tuplestore_begin_heap(false, false, STORE_KBYTES);
	r->desc = StoreDesc();
	r->profile_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp trait backfill profile",
										   ALLOCSET_DEFAULT_SIZES);
	r->event_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp trait backfill event",
										 ALLOCSET_DEFAULT_SIZES);
	return r;
}

/* run plan with params, its rows to the receiver; the tuplestore it filled */
static Tuplestorestate *
RunInto(SPIPlanPtr plan, ParamListInfo params, EventReceiver *r)
{
	SPIExecuteOptions options;
	int			rc;

	memset(&options, 0, sizeof(options));
	options.params = params;
	options.dest = &r->pub;
	rc = SPI_execute_plan_extended(plan, &options);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "computed trait backfill: SPI_execute_plan_extended returned %s",
			 SPI_result_code_string(rc));
	MemoryContextDelete(r->profile_cxt);
	MemoryContextDelete(r->event_cxt);
	return r->store;
}

/*
 * The values of a trait's stored states, of profiles no merge involves, in
 * profile order (the rest: WriteMergedValues).
 */
static Tuplestorestate *
ReadStates(int32 trait_id, const char *name, CdpTraitSpec *spec, HTAB *involved)
{
	Oid			types[1] = {INT4OID};
	ParamListInfo params = makeParamList(1);
	SPIPlanPtr	plan;

	params->params[0].value = Int32GetDatum(trait_id);
	params->params[0].isnull = false;
	params->params[0].pflags = PARAM_FLAG_CONST;
	params->params[0].ptype = INT4OID;
	plan = SPI_prepare_cursor("SELECT s.profile_id, s.states -> $1::text FROM cdp.trait_states s "
							  " WHERE s.states ? $1::text ORDER BY s.profile_id",
							  1, types, CURSOR_OPT_PARALLEL_OK);
	if (plan == NULL)
		elog(ERROR, "computed trait backfill: SPI_prepare_cursor failed: %s",
			 SPI_result_code_string(SPI_result));
	return RunInto(plan, params,
				   NewReceiver(StateReceive, trait_id, name, spec, (Datum) 0, involved));
}

/*
 * What of an event's properties the trait reads, as SQL over e: all of
 * them for a filter; else the value at its property (object keys only, as
 * CdpTraitPropertyValue walks them), or nothing (*by_value).
 */
static char *
PropertiesRead(CdpTraitSpec *spec, bool *by_value)
{
	StringInfoData sql;

	*by_value = spec->conditions == NIL;
	if (!*by_value)
		return "e.properties";
	if (spec->npath == 0)
		return "NULL::jsonb";
	initStringInfo(&sql);
	appendStringInfoString(&sql, "e.properties");
	for (int i = 0; i < spec->npath; i++)
		appendStringInfo(&sql, " -> %s", quote_literal_cstr(spec->path[i]));
	return sql.data;
}

/*
 * Read the trait's events in profile order, with its event and window as
 * constants (so the planner sees what it reads, and may scan and sort in
 * parallel workers), counting them into states as they come.  Only what
 * the trait reads is read: of the properties, the value at its property
 * where it has no filter (the sort and the parallel workers' hand-over
 * carry a value, not a document); the event's time only for a window or
 * first/last.  Events without the property count for nothing, as their
 * NULL value says: testing for it in the query read the value twice, a
 * sixth of the read.  Events stored without a profile (NULL, or 0 where
 * cdp.events is distributed by it) count for nobody.
 */
static Tuplestorestate *
AggregateEvents(int32 trait_id, const char *name, CdpTraitSpec *spec, Datum event,
				bool event_null, Datum since, bool since_null, Datum window, HTAB *involved,
				BulkWriter *w, int64 *inserted)
{
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	ParamListInfo params = makeParamList(2);
	SPIPlanPtr	plan;
	char	   *sql;
	bool		by_value;
	char	   *read = PropertiesRead(spec, &by_value);
	EventReceiver *r;

	params->params[0].value = event;
	params->params[0].isnull = event_null;
	params->params[1].value = since;
	params->params[1].isnull = since_null;
	for (int i = 0; i < 2; i++)
	{
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = types[i];
	}
	sql = psprintf("SELECT e.profile_id, %s, %s FROM cdp.events e "
				   " WHERE e.type = 'track' AND e.profile_id <> 0 "
				   "   AND ($1::text IS NULL OR e.event = $1) "
				   "   AND ($2::timestamptz IS NULL OR e.ts > $2) "
				   " ORDER BY e.profile_id",
				   spec->keep_oldest || spec->kind == CDP_TRAIT_FIRST ||
				   spec->kind == CDP_TRAIT_LAST ? "e.ts" : "NULL::timestamptz",
				   read);
	plan = SPI_prepare_cursor(sql, 2, types, CURSOR_OPT_PARALLEL_OK);
	if (plan == NULL)
		elog(ERROR, "computed trait backfill: SPI_prepare_cursor failed: %s",
			 SPI_result_code_string(SPI_result));
	r = NewReceiver(EventReceive, trait_id, name, spec, window, involved);
	r->by_value = by_value;
	if (w->direct != NULL)
	{
		r->w = w;
		r->batch = palloc(sizeof(BackfillBatch));
		r->batch->n = 0;
		r->batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp trait backfill batch",
											 BATCH_BLOCK, BATCH_BLOCK, BATCH_BLOCK);
		r->now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		/* with audiences to follow the values: their ids (else none) */
		if (CdpAudiencesExist())
		{
			r->maxvalued = 1024;
			r->valued = palloc(sizeof(int64) * r->maxvalued);
		}
		/* the leader may not take a transaction id once the workers run */
		(void) GetCurrentTransactionId();
	}
	(void) RunInto(plan, params, r);
	if (r->w != NULL)
	{
		FlushStream(r);
		MemoryContextDelete(r->batch_cxt);
		/* audiences follow for the values inserted (no statement ran meanwhile) */
		CdpProfilesChanged(r->valued, r->nvalued);
	}
	*inserted = r->inserted;
	return r->store;
}

/*
 * Insert rows in bulk from now on if SHARE ROW EXCLUSIVE on the table is
 * free at once (see BulkWriter); else they go through INSERT ... ON
 * CONFLICT.  Called before a definition's read, and again before what the
 * read left is written (a writer in flight then may be gone by now).
 */
static void
TryBulkInsert(BulkWriter *w)
{
	if (w->direct != NULL || !ConditionalLockRelationOid(RelationGetRelid(w->rel),
														 ShareRowExclusiveLock))
		return;
	w->direct = CdpBeginDirectInsert(RelationGetRelid(w->rel), row_cols, row_types, NCOLS,
									 INSERT_CHUNK, true);
	if (w->direct != NULL)
	{
		w->values = palloc(sizeof(Datum) * INSERT_CHUNK * NCOLS);
		w->nulls = palloc(sizeof(bool) * INSERT_CHUNK * NCOLS);
	}
}

/*
 * Open cdp.trait_states to write, inserting in bulk if it can (see
 * TryBulkInsert); the caller must be allowed to insert into it.
 */
static BulkWriter *
OpenBulkWriter(void)
{
	BulkWriter *w = palloc0(sizeof(BulkWriter));
	Oid			relid = RangeVarGetRelid(makeRangeVar("cdp", "trait_states", -1),
										 RowExclusiveLock, false);
	AclResult	acl = pg_class_aclcheck(relid, GetUserId(), ACL_INSERT);
	TupleDesc	desc;

	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, get_rel_name(relid));
	w->rel = table_open(relid, NoLock);
	desc = RelationGetDescr(w->rel);
	for (int c = 0; c < NCOLS; c++)
		if (desc->natts != NCOLS || TupleDescAttr(desc, c)->atttypid != row_types[c])
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table cdp.trait_states does not have the columns pg_cdp created it with"),
					 errhint("Reinstall the extension.")));
	TryBulkInsert(w);
	return w;
}

/*
 * Insert the batch's rows of rows[] (n of them) into the table, a chunk at
 * a time: the chunk's heap tuples at once, then each one's index entries
 * (a duplicate profile id is an error, as an INSERT's).  A row without
 * states has none ('{}').
 */
static void
BulkInsert(BulkWriter *w, BackfillBatch *b, const int *rows, int n)
{
	Datum		empty = (Datum) 0;

	for (int from = 0; from < n; from += INSERT_CHUNK)
	{
		int			k = Min(n - from, INSERT_CHUNK);

		for (int i = 0; i < k; i++)
			for (int c = 0; c < NCOLS; c++)
			{
				Datum		v = b->cols[c][rows[from + i]];
				bool		isnull = b->nulls[c][rows[from + i]];

				if (c == COL_STATES && isnull)
				{
					if (empty == (Datum) 0)
						empty = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
					v = empty;
					isnull = false;
				}
				w->values[i * NCOLS + c] = isnull ? (Datum) 0 : v;
				w->nulls[i * NCOLS + c] = isnull;
			}
		CdpDirectInsertRows(w->direct, w->values, w->nulls, k);
	}
}

/* let go of the writer's slots and indexes; its lock is kept to commit */
static void
CloseBulkWriter(BulkWriter *w)
{
	if (w->direct != NULL)
		CdpEndDirectInsert(w->direct);
	table_close(w->rel, NoLock);
}

/*
 * Which of the batch's ids (ascending) have a row already, by one range
 * scan of the primary key between the first and the last (a table with no
 * row in the range answers at once, where probing each id would not).
 * While the read's workers run, under the read's snapshot (no other writer
 * runs then: the writer holds the table's lock, and the rows the read
 * wrote are of ids before these); else under the latest, after this
 * transaction's writes so far.
 */
static bool *
StoredIds(Relation rel, BackfillBatch *b)
{
	bool	   *stored = palloc0(sizeof(bool) * Max(b->n, 1));
	bool		latest = !IsInParallelMode();
	Snapshot	snapshot;
	Relation	index;
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData keys[2];
	int			i = 0;

	if (latest)
	{
		CommandCounterIncrement();
		snapshot = RegisterSnapshot(GetLatestSnapshot());
	}
	else
		snapshot = GetActiveSnapshot();
	index = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	slot = table_slot_create(rel, NULL);
	ScanKeyInit(&keys[0], 1, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(b->pids[0]));
	ScanKeyInit(&keys[1], 1, BTLessEqualStrategyNumber, F_INT8LE,
				Int64GetDatum(b->pids[b->n - 1]));
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	/* both ascending: one walk */
	while (i < b->n && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		int64		id = DatumGetInt64(slot_getattr(slot, COL_PID + 1, &isnull));

		while (i < b->n && b->pids[i] < id)
			i++;
		if (i < b->n && b->pids[i] == id)
			stored[i++] = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	if (latest)
		UnregisterSnapshot(snapshot);
	return stored;
}

static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/* column c of the batch's rows[] (n of them) as an array of type */
static Datum
ColumnArray(BackfillBatch *b, int c, const int *rows, int n, Oid type)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	for (int i = 0; i < n; i++)
	{
		elems[i] = b->cols[c][rows[i]];
		nulls[i] = b->nulls[c][rows[i]];
	}
	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, type, typlen, typbyval,
											  typalign));
}

/*
 * How a row gains a batch row's state st (none: NULL), expiry x, value v
 * (none: NULL) and its time vx: the trait's state among its states, the
 * expiry if earlier, the trait's value among its values.
 */
#define GAIN_SET(st, x, v, vx) \
	"SET states = CASE WHEN " st " IS NULL THEN s.states ELSE s.states || " st " END, " \
	"    expires_at = LEAST(s.expires_at, " x "), " \
	"    traits = CASE WHEN " v " IS NULL THEN s.traits " \
	"             ELSE coalesce(s.traits, '{}') || " v " END, " \
	"    traits_updated_at = coalesce(" vx ", s.traits_updated_at) "
#define BATCH_ROWS \
	"ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5)) AS u(p, st, x, v, vx)"

/* the statement's five arguments: the batch's rows[] (n of them) */
static void
BatchArgs(BackfillBatch *b, const int *rows, int n, Datum *args, Oid *argtypes)
{
	static const Oid array_types[NCOLS] = {INT8ARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID,
	JSONBARRAYOID, TIMESTAMPTZARRAYOID};

	for (int c = 0; c < NCOLS; c++)
	{
		args[c] = ColumnArray(b, c, rows, n, row_types[c]);
		argtypes[c] = array_types[c];
	}
}

/*
 * The stored rows of the batch's rows[] (n of them) gain theirs in one
 * UPDATE, each row found by index (never a hash of a whole table per
 * batch); which of them it updated (a row another writer deleted meanwhile
 * is not, only without the table's lock).
 */
static bool *
UpdateStored(BackfillBatch *b, const int *rows, int n)
{
	Datum		args[NCOLS];
	Oid			argtypes[NCOLS];
	int			level;
	uint64		nupdated;
	int64	   *updated;
	bool	   *found = palloc(sizeof(bool) * Max(n, 1));

	BatchArgs(b, rows, n, args, argtypes);
	level = CdpBeginIndexedPlans();
	nupdated = CdpExecPlan(CdpPlan(&update_plan,
								   "UPDATE cdp.trait_states s " GAIN_SET("u.st", "u.x", "u.v", "u.vx")
								   "  FROM " BATCH_ROWS
								   " WHERE s.profile_id = u.p "
								   "RETURNING s.profile_id",
								   NCOLS, argtypes),
						   args, NULL, SPI_OK_UPDATE_RETURNING);
	CdpEndIndexedPlans(level);
	updated = palloc(sizeof(int64) * Max(nupdated, 1));
	for (uint64 i = 0; i < nupdated; i++)
	{
		bool		isnull;

		updated[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
												 &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(updated, nupdated, sizeof(int64), CompareInt64);
	for (int i = 0; i < n; i++)
		found[i] = bsearch(&b->pids[rows[i]], updated, nupdated, sizeof(int64),
						   CompareInt64) != NULL;
	return found;
}

/* the batch's rows[] (n of them) by INSERT ... ON CONFLICT, as any writer's */
static void
InsertRows(BackfillBatch *b, const int *rows, int n)
{
	Datum		args[NCOLS];
	Oid			argtypes[NCOLS];

	BatchArgs(b, rows, n, args, argtypes);
	CdpExecPlan(CdpPlan(&insert_plan,
						"INSERT INTO cdp.trait_states AS s "
						"(profile_id, states, expires_at, traits, traits_updated_at) "
						"SELECT u.p, coalesce(u.st, '{}'), u.x, u.v, u.vx FROM " BATCH_ROWS
						" ON CONFLICT (profile_id) DO UPDATE "
						GAIN_SET("excluded.states", "excluded.expires_at", "excluded.traits",
								 "excluded.traits_updated_at"),
						NCOLS, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/*
 * The batch (ids ascending) into cdp.trait_states, a person's state and
 * value as one row: the rows of ids that have one, found by a range scan,
 * gain theirs in one UPDATE; the others (all of them for a new trait when
 * no other trait has rows) are inserted in bulk when the writer holds the
 * table's lock, which costs a fraction of INSERT ... ON CONFLICT, else by
 * that.  Audiences over the values follow at commit.
 */
static void
WriteBatch(BackfillBatch *b, BulkWriter *w)
{
	bool	   *stored;
	int		   *update = palloc(sizeof(int) * Max(b->n, 1));
	int		   *insert = palloc(sizeof(int) * Max(b->n, 1));
	int64	   *valued = palloc(sizeof(int64) * Max(b->n, 1));
	int			nupdate = 0;
	int			ninsert = 0;
	int			nvalued = 0;

	if (b->n == 0)
		return;
	stored = StoredIds(w->rel, b);
	for (int i = 0; i < b->n; i++)
	{
		if (stored[i])
			update[nupdate++] = i;
		else
			insert[ninsert++] = i;
		if (!b->nulls[COL_TRAITS][i])
			valued[nvalued++] = b->pids[i];
	}
	if (nupdate > 0)
	{
		bool	   *updated = UpdateStored(b, update, nupdate);

		/* rows deleted since they were found: inserted after all */
		for (int i = 0; i < nupdate; i++)
			if (!updated[i])
				insert[ninsert++] = update[i];
	}
	if (ninsert > 0)
	{
		if (w->direct != NULL)
			BulkInsert(w, b, insert, ninsert);
		else
			InsertRows(b, insert, ninsert);
	}
	CdpProfilesChanged(valued, nvalued);
	b->n = 0;
}

/*
 * The values of canonical profiles with members, from the states stored
 * for them and their members; audiences follow for those.
 */
static void
WriteMergedValues(int32 trait_id, Datum name, Datum kind)
{
	Oid			argtypes[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		args[3] = {Int32GetDatum(trait_id), name, kind};
	uint64		n;
	int64	   *ids;

	n = CdpExecPlan(CdpPlan(&merged_plan,
							"INSERT INTO cdp.trait_states AS s (profile_id, states, traits, traits_updated_at) "
							"SELECT v.id, '{}', jsonb_build_object($2, v.value), now() "
							"  FROM (SELECT c.id, cdp.trait_union_value($3, m.states -> $1::text) AS value "
							"          FROM (SELECT x.merged_into AS id, x.profile_id AS member "
							"                  FROM cdp.profile_records x WHERE x.merged_into IS NOT NULL "
							"                UNION ALL "
							"                SELECT DISTINCT x.merged_into, x.merged_into "
							"                  FROM cdp.profile_records x WHERE x.merged_into IS NOT NULL) c "
							"          JOIN cdp.trait_states m ON m.profile_id = c.member AND m.states ? $1::text "
							"         GROUP BY c.id) v "
							" WHERE v.value IS NOT NULL "
							" ORDER BY 1 "
							"ON CONFLICT (profile_id) DO UPDATE "
							"SET traits = coalesce(s.traits, '{}') || excluded.traits, "
							"    traits_updated_at = excluded.traits_updated_at "
							"RETURNING s.profile_id",
							3, argtypes),
					args, NULL, SPI_OK_INSERT_RETURNING);
	ids = palloc(sizeof(int64) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
											 &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	CdpProfilesChanged(ids, (int) n);
}

/*
 * A row (the tuplestore's columns) onto the batch, its value's time now;
 * false when it has neither a state nor a value to write.
 */
static bool
BatchAdd(BackfillBatch *b, const Datum *values, const bool *nulls, Datum now)
{
	int			i = b->n;

	if (nulls[COL_STATES] && nulls[COL_TRAITS])
		return false;
	b->pids[i] = DatumGetInt64(values[COL_PID]);
	for (int c = 0; c < STORE_COLS; c++)
	{
		b->cols[c][i] = values[c];
		b->nulls[c][i] = nulls[c];
	}
	b->cols[COL_TRAITS_UPDATED][i] = now;
	b->nulls[COL_TRAITS_UPDATED][i] = nulls[COL_TRAITS];
	b->n++;
	return true;
}

/*
 * The batch the read streamed (memory: batch_cxt): the rows of ids that
 * have none yet are inserted now (audiences follow for their values after
 * the read), the others wait in the tuplestore for WriteStore's UPDATE.
 */
static void
FlushStream(EventReceiver *r)
{
	BackfillBatch *b = r->batch;
	bool	   *stored;
	int		   *insert;
	int			ninsert = 0;

	if (b->n == 0)
		return;
	stored = StoredIds(r->w->rel, b);
	insert = palloc(sizeof(int) * b->n);
	for (int i = 0; i < b->n; i++)
	{
		Datum		values[STORE_COLS];
		bool		nulls[STORE_COLS];

		if (!stored[i])
		{
			insert[ninsert++] = i;
			r->inserted += !b->nulls[COL_STATES][i];
			if (b->nulls[COL_TRAITS][i] || r->valued == NULL)
				continue;
			if (r->nvalued == r->maxvalued)
			{
				r->maxvalued *= 2;
				r->valued = repalloc_huge(r->valued, sizeof(int64) * r->maxvalued);
			}
			r->valued[r->nvalued++] = b->pids[i];
			continue;
		}
		for (int c = 0; c < STORE_COLS; c++)
		{
			values[c] = b->cols[c][i];
			nulls[c] = b->nulls[c][i];
		}
		tuplestore_putvalues(r->store, r->desc, values, nulls);
	}
	if (ninsert > 0)
		BulkInsert(r->w, b, insert, ninsert);
	b->n = 0;
	MemoryContextReset(r->batch_cxt);
}

/*
 * Write what the tuplestore holds into cdp.trait_states, in batches: a
 * person's state (where it has one, with_states) and value (of profiles no
 * merge involves) as one row.  Returns how many states it wrote.
 */
static int64
WriteStore(Tuplestorestate *store, bool with_states, BulkWriter *w)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(StoreDesc(), &TTSOpsMinimalTuple);
	BackfillBatch *b = palloc(sizeof(BackfillBatch));
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	MemoryContext batch_cxt;
	MemoryContext old;
	int64		total = 0;

	b->n = 0;
	TryBulkInsert(w);
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp trait backfill batch",
									  BATCH_BLOCK, BATCH_BLOCK, BATCH_BLOCK);
	old = MemoryContextSwitchTo(batch_cxt);
	while (tuplestore_gettupleslot(store, true, false, slot))
	{
		Datum		values[STORE_COLS];
		bool		nulls[STORE_COLS];

		CHECK_FOR_INTERRUPTS();
		for (int c = 0; c < STORE_COLS; c++)
		{
			Datum		v = slot_getattr(slot, c + 1, &nulls[c]);
			bool		int8 = c == COL_PID || c == COL_EXPIRES;

			/* the values outlive the slot's tuple */
			values[c] = nulls[c] ? v : datumCopy(v, int8 ? FLOAT8PASSBYVAL : false, int8 ? 8 : -1);
		}
		Assert(with_states || nulls[COL_STATES]);
		if (!BatchAdd(b, values, nulls, now))
			continue;
		total += !nulls[COL_STATES];
		if (b->n == BACKFILL_BATCH)
		{
			WriteBatch(b, w);
			/* the slot's tuple, read back from disk, is in batch_cxt too */
			ExecClearTuple(slot);
			MemoryContextReset(batch_cxt);
		}
	}
	WriteBatch(b, w);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch_cxt);
	ExecDropSingleTupleTableSlot(slot);
	tuplestore_end(store);
	return total;
}

/*
 * The trait's definition (name, kind, event, property, filter,
 * time_window, now() - time_window) into d and n, and its parsed spec.
 */
static CdpTraitSpec *
ReadTrait(int32 trait_id, Datum *d, bool *n)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(trait_id)};
	HeapTuple	def;
	CdpTraitSpec *spec;

	if (CdpExecArgs("SELECT c.name, c.kind, c.event, c.property, c.filter, c.time_window, "
					"       now() - c.time_window "
					"  FROM cdp.computed_traits c WHERE c.id = $1",
					1, argtypes, args, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("computed trait %d does not exist", trait_id)));
	def = SPI_copytuple(SPI_tuptable->vals[0]);
	heap_deform_tuple(def, SPI_tuptable->tupdesc, d, n);
	SPI_freetuptable(SPI_tuptable);
	spec = CdpParseTraitSpec(TextDatumGetCString(d[1]), n[3] ? NULL : TextDatumGetCString(d[3]),
							 n[4] ? NULL : DatumGetJsonbP(d[4]));
	spec->keep_oldest = !n[5];
	return spec;
}

/*
 * backfill_trait(trait_id): count a trait that has no states yet over
 * every stored event, writing its states and values; returns how many
 * states.  The caller keeps ingest out meanwhile (define_computed_trait's
 * lock), so the events read are all there are.
 */
Datum
cdp_backfill_trait(PG_FUNCTION_ARGS)
{
	int32		trait_id = PG_GETARG_INT32(0);
	Datum		d[7];
	bool		n[7];
	CdpTraitSpec *spec;
	HTAB	   *involved;
	Tuplestorestate *store;
	BulkWriter *w;
	int			guc_level;
	int64		total;

	SPI_connect();
	spec = ReadTrait(trait_id, d, n);
	involved = InvolvedProfiles();
	w = OpenBulkWriter();

	/*
	 * The sort of the events may use maintenance_work_mem, as an index
	 * build's does: a backfill is maintenance.  Beyond it, it spills.
	 */
	guc_level = NewGUCNestLevel();
	(void) set_config_option("work_mem", GetConfigOption("maintenance_work_mem", false, false),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	store = AggregateEvents(trait_id, TextDatumGetCString(d[0]), spec, d[2], n[2], d[6], n[6],
							n[5] ? (Datum) 0 : d[5], involved, w, &total);
	AtEOXact_GUC(true, guc_level);
	hash_destroy(involved);
	total += WriteStore(store, true, w);
	CloseBulkWriter(w);
	WriteMergedValues(trait_id, d[0], d[1]);
	SPI_finish();
	PG_RETURN_INT64(total);
}

/*
 * publish_trait_values(trait_id): the values of a trait whose states are
 * all stored (a background backfill that caught up), written in bulk like
 * a definition's; none of its values may be stored yet.  Returns how many
 * states it read values from.
 */
Datum
cdp_publish_trait_values(PG_FUNCTION_ARGS)
{
	int32		trait_id = PG_GETARG_INT32(0);
	Datum		d[7];
	bool		n[7];
	CdpTraitSpec *spec;
	HTAB	   *involved;
	Tuplestorestate *store;
	BulkWriter *w;

	SPI_connect();
	spec = ReadTrait(trait_id, d, n);
	involved = InvolvedProfiles();
	store = ReadStates(trait_id, TextDatumGetCString(d[0]), spec, involved);
	hash_destroy(involved);
	w = OpenBulkWriter();
	(void) WriteStore(store, false, w);
	CloseBulkWriter(w);
	WriteMergedValues(trait_id, d[0], d[1]);
	SPI_finish();
	PG_RETURN_VOID();
}
