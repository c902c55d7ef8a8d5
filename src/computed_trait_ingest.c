/*
 * computed_trait_ingest.c
 *	  Computed traits at ingest: the events a chunk stored count into the
 *	  states of the traits they match, in the chunk's transaction, and the
 *	  canonical values of their profiles are derived again.  A chunk's
 *	  states are gathered in memory per (profile, trait) and combined into
 *	  the stored ones in one statement, so a trait costs a few index probes
 *	  per profile of the chunk, never a scan.
 *
 *	  Ingest holds ROW EXCLUSIVE on cdp.computed_traits from its first
 *	  chunk to commit: cdp.define_computed_trait takes SHARE ROW EXCLUSIVE
 *	  before it backfills, so it waits for batches storing events and
 *	  batches wait for it; no event is missed or counted twice.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "computed_traits.h"
#include "spi_util.h"

typedef struct TraitDef
{
	int32		id;
	const char *event;			/* NULL: every track event */
	bool		backfilling;	/* only note the profiles its events reach */
	bool		windowed;
	Datum		window;			/* interval */
	TimestampTz since;			/* windowed: events after it count */
	CdpTraitSpec *spec;
} TraitDef;

typedef struct StateKey
{
	int64		profile_id;
	int32		trait;			/* index into the definitions */
	int32		pad;
} StateKey;

typedef struct StateEntry
{
	StateKey	key;
	CdpTraitState *state;
} StateEntry;

static SPIPlanPtr defs_plan = NULL;
static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr refresh_plan = NULL;
static SPIPlanPtr dirty_plan = NULL;

/* the definitions, read under ROW EXCLUSIVE (see the file header) */
static TraitDef *
LoadDefinitions(int *n)
{
	Oid			relid = get_relname_relid("computed_traits", get_namespace_oid("cdp", false));
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TraitDef   *defs;
	uint64		rows;

	if (!OidIsValid(relid))
		elog(ERROR, "cdp.computed_traits is missing");
	LockRelationOid(relid, RowExclusiveLock);
	rows = CdpExecPlan(CdpPlan(&defs_plan,
							   "SELECT id, kind, event, property, time_window, filter, "
							   "status = 'backfilling' "
							   "FROM cdp.computed_traits ORDER BY id", 0, NULL),
					   NULL, NULL, SPI_OK_SELECT);
	*n = (int) rows;
	defs = palloc0(sizeof(TraitDef) * Max(rows, 1));
	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		window;
		char	   *property;
		Datum		filter;
		bool		nofilter;

		defs[r].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		defs[r].event = SPI_getvalue(tup, desc, 3);
		defs[r].backfilling = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		property = SPI_getvalue(tup, desc, 4);
		window = SPI_getbinval(tup, desc, 5, &isnull);
		if (!isnull)
		{
			defs[r].windowed = true;
			defs[r].window = PointerGetDatum(DatumGetIntervalP(datumCopy(window, false, sizeof(Interval))));
			defs[r].since = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
																	TimestampTzGetDatum(now),
																	window));
		}
		filter = SPI_getbinval(tup, desc, 6, &nofilter);
		defs[r].spec = CdpParseTraitSpec(SPI_getvalue(tup, desc, 2), property,
										 nofilter ? NULL : DatumGetJsonbPCopy(filter));
	}
	SPI_freetuptable(SPI_tuptable);
	return defs;
}

static SPIPlanPtr
UpsertPlan(void)
{
	Oid			argtypes[4] = {INT8ARRAYOID, INT4ARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID};

	/* in key order, so that two batches lock shared rows in one order */
	return CdpPlan(&upsert_plan,
				   "INSERT INTO cdp.trait_states AS s (profile_id, trait_id, state, expires_at) "
				   "SELECT u.p, u.t, u.st, u.x "
				   "FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4)) AS u(p, t, st, x) "
				   "ORDER BY u.p, u.t "
				   "ON CONFLICT (profile_id, trait_id) DO UPDATE "
				   "SET state = cdp.trait_state_merge((SELECT k.kind FROM cdp.computed_traits k "
				   "                                   WHERE k.id = s.trait_id), s.state, excluded.state), "
				   "    expires_at = LEAST(s.expires_at, excluded.expires_at)",
				   4, argtypes);
}

static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* combine the gathered states into the stored ones; derive the values again */
static void
WriteStates(HTAB *states, TraitDef *defs)
{
	long		n = hash_get_num_entries(states);
	Datum	   *pids = palloc(sizeof(Datum) * n);
	Datum	   *tids = palloc(sizeof(Datum) * n);
	Datum	   *sts = palloc(sizeof(Datum) * n);
	Datum	   *exps = palloc(sizeof(Datum) * n);
	bool	   *exp_nulls = palloc(sizeof(bool) * n);
	int64	   *profiles = palloc(sizeof(int64) * n);
	int			nprofiles = 0;
	HASH_SEQ_STATUS seq;
	StateEntry *e;
	int			k = 0;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Oid			argtype = INT8ARRAYOID;
	int			dims[1];
	int			lbs[1] = {1};

	hash_seq_init(&seq, states);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		TraitDef   *d = &defs[e->key.trait];

		pids[k] = Int64GetDatum(e->key.profile_id);
		tids[k] = Int32GetDatum(d->id);
		sts[k] = JsonbPGetDatum(CdpTraitStateToJsonb(e->state));
		exp_nulls[k] = !d->windowed;
		exps[k] = d->windowed ?
			DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(e->state->oldest),
								d->window) :
			(Datum) 0;
		profiles[nprofiles++] = e->key.profile_id;
		k++;
	}
	args[0] = CdpArray(pids, k, INT8OID);
	args[1] = CdpArray(tids, k, INT4OID);
	args[2] = CdpArray(sts, k, JSONBOID);
	dims[0] = k;
	args[3] = PointerGetDatum(construct_md_array(exps, exp_nulls, 1, dims, lbs, TIMESTAMPTZOID,
												 sizeof(TimestampTz), true, TYPALIGN_DOUBLE));
	CdpExecPlan(UpsertPlan(), args, nulls, SPI_OK_INSERT);

	/* each profile once */
	qsort(profiles, nprofiles, sizeof(int64), CompareInt64);
	k = 0;
	for (int i = 0; i < nprofiles; i++)
		if (i == 0 || profiles[i] != profiles[i - 1])
			profiles[k++] = profiles[i];
	args[0] = CdpInt8Array(profiles, k);
	CdpExecPlan(CdpPlan(&refresh_plan, "SELECT cdp.refresh_computed_traits($1)", 1, &argtype),
				args, NULL, SPI_OK_SELECT);
	CdpProfilesChanged(profiles, k);
}

/* profiles a trait being backfilled must count again once it is live */
static void
NoteDirty(HTAB *dirty, TraitDef *defs)
{
	long		n = hash_get_num_entries(dirty);
	Datum	   *tids = palloc(sizeof(Datum) * n);
	Datum	   *pids = palloc(sizeof(Datum) * n);
	HASH_SEQ_STATUS seq;
	StateKey   *k;
	int			i = 0;
	Datum		args[2];
	Oid			argtypes[2] = {INT4ARRAYOID, INT8ARRAYOID};

	hash_seq_init(&seq, dirty);
	while ((k = hash_seq_search(&seq)) != NULL)
	{
		tids[i] = Int32GetDatum(defs[k->trait].id);
		pids[i] = Int64GetDatum(k->profile_id);
		i++;
	}
	args[0] = CdpArray(tids, i, INT4OID);
	args[1] = CdpArray(pids, i, INT8OID);
	CdpExecPlan(CdpPlan(&dirty_plan,
						"INSERT INTO cdp.trait_dirty (trait_id, profile_id) "
						"SELECT u.t, u.p FROM ROWS FROM (unnest($1), unnest($2)) AS u(t, p) "
						"ORDER BY 1, 2 ON CONFLICT DO NOTHING", 2, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/*
 * Count the chunk's stored track events into the traits they match: the
 * event's name, its window (an event already out of it counts nowhere),
 * its properties' filter.
 */
void
CdpUpdateComputedTraits(CdpMessage **msgs, int n)
{
	int			ndefs;
	TraitDef   *defs = LoadDefinitions(&ndefs);
	HTAB	   *states;
	HTAB	   *dirty;
	HASHCTL		ctl;

	if (ndefs == 0)
		return;
	ctl.keysize = sizeof(StateKey);
	ctl.entrysize = sizeof(StateEntry);
	ctl.hcxt = CurrentMemoryContext;
	states = hash_create("cdp computed trait states", 256, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(StateKey);
	dirty = hash_create("cdp computed traits being backfilled", 16, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];
		Jsonb	   *props = NULL;
		bool		have_props = false;

		if (msg->outcome != CDP_STORED || !msg->has_profile_id ||
			msg->type == NULL || strcmp(msg->type, "track") != 0)
			continue;
		for (int t = 0; t < ndefs; t++)
		{
			TraitDef   *d = &defs[t];
			StateKey	key;
			StateEntry *e;
			bool		found;
			CdpTraitState scratch;

			if (d->event != NULL && (msg->event == NULL || strcmp(d->event, msg->event) != 0))
				continue;
			if (d->windowed && msg->ts <= d->since)
				continue;
			if (!have_props)
			{
				props = msg->properties ? JsonbValueToJsonb(msg->properties) : NULL;
				have_props = true;
			}
			memset(&key, 0, sizeof(key));
			key.profile_id = msg->profile_id;
			key.trait = t;
			if (d->backfilling)
			{
				(void) hash_search(dirty, &key, HASH_ENTER, NULL);
				continue;
			}
			e = hash_search(states, &key, HASH_FIND, NULL);
			if (e == NULL)
			{
				/* a state only for an event that counts */
				memset(&scratch, 0, sizeof(scratch));
				scratch.kind = d->spec->kind;
				if (!CdpTraitStateAdd(d->spec, &scratch, msg->ts, props))
					continue;
				e = hash_search(states, &key, HASH_ENTER, &found);
				e->state = palloc(sizeof(CdpTraitState));
				*e->state = scratch;
			}
			else
				(void) CdpTraitStateAdd(d->spec, e->state, msg->ts, props);
		}
	}
	if (hash_get_num_entries(states) > 0)
		WriteStates(states, defs);
	if (hash_get_num_entries(dirty) > 0)
		NoteDirty(dirty, defs);
	hash_destroy(states);
	hash_destroy(dirty);
}
