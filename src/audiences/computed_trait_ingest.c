/*
 * computed_trait_ingest.c
 *	  Computed traits at ingest: the events stored count into the states
 *	  of the traits they match, in the transaction that stores them, and
 *	  the canonical values of their profiles follow.  The states of
 *	  a chunk's events are gathered in memory per (profile, trait) and
 *	  carried up as the pipeline carries profile stats: into its batch
 *	  when the chunk succeeds, into the drain (the process_inbox call, a
 *	  worker's transaction) when the batch does, so that a chunk or batch
 *	  that rolls back takes its events' counts with it.  The drain writes
 *	  them when it ends, or when they grow large, and before profile state
 *	  is recomputed (which derives computed values too): the stored rows
 *	  of those profiles (one per profile, every trait's state in it) are
 *	  read in one statement, combined with them in C and the states that
 *	  changed written back in another, a profile's as one row; where a
 *	  profile has no other profile merged into it, its values (on the same
 *	  row) change by the traits whose value changed, from the states in
 *	  memory, else they are derived again from every member's states.  A profile written once per drain rather than once
 *	  per chunk is most of what computed traits cost at ingest.
 *
 *	  Ingest holds the row locks of its profiles in cdp.profile_records
 *	  (identity resolution takes them) to commit, as every other writer of
 *	  their states does, so reading and writing back loses nothing.  A
 *	  background backfill step takes no such lock, but writes only the
 *	  state of the trait it counts (which ingest only notes), and both
 *	  merge their states by key into the row as it is when they write,
 *	  in profile order (values derived again lock their rows in that order
 *	  first: cdp.refresh_computed_traits).  A
 *	  merge inside the drain derives values from the states written so
 *	  far; the profiles it merged are no longer alone when the drain
 *	  writes, so their values are derived again then, from every state.
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
#include "common/hashfn.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "computed_traits.h"
#include "spi_util.h"

typedef struct TraitDef
{
	int32		id;
	const char *name;
	const char *event;			/* NULL: every track event */
	bool		backfilling;	/* only note the profiles its events reach */
	bool		live;			/* its values show (else only its states are kept) */
	bool		windowed;
	Datum		window;			/* interval */
	TimestampTz since;			/* windowed: events after it count */
	CdpTraitSpec *spec;
} TraitDef;

/* a (profile, trait) pair: those a trait being backfilled must count again */
typedef struct StateKey
{
	int64		profile_id;
	int32		trait;			/* its id */
	int32		pad;
} StateKey;

/* a trait's state of a profile */
typedef struct TraitSlot
{
	int32		trait;			/* its id */
	CdpTraitState *state;		/* over the events gathered */
	Jsonb	   *stored;			/* the stored state, NULL: none */
} TraitSlot;

/*
 * A profile's gathered states, by trait id: one hash entry per profile (a
 * batch merged into its drain looks each profile up once, not each of its
 * states).
 */
typedef struct ProfileEntry
{
	int64		profile_id;		/* the key */
	int			nslots;
	int			maxslots;
	TraitSlot  *slots;			/* in trait id order */
} ProfileEntry;

/* states of events not yet written, per profile and trait */
struct CdpTraitDeltas
{
	MemoryContext cxt;			/* the states' memory, reset when written */
	HTAB	   *profiles;		/* ProfileEntry by profile id */
	long		nstates;		/* slots in all of them */
};

/* a drain writes what it gathered at this size, whatever comes next */
#define DELTAS_MAX_STATES	250000
#define DELTAS_MAX_BYTES	((Size) 128 * 1024 * 1024)
/* the first block of a set of states (see CdpNewTraitDeltas) */
#define DELTAS_FIRST_BLOCK	(2 * 1024 * 1024)

static SPIPlanPtr defs_plan = NULL;
static SPIPlanPtr read_plan = NULL;
static SPIPlanPtr write_plan = NULL;
static SPIPlanPtr alone_plan = NULL;
static SPIPlanPtr members_plan = NULL;
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
							   "SELECT id, kind, event, property, time_window, filter, name, status "
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
		char	   *status;

		defs[r].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		defs[r].name = SPI_getvalue(tup, desc, 7);
		defs[r].event = SPI_getvalue(tup, desc, 3);
		status = SPI_getvalue(tup, desc, 8);
		defs[r].backfilling = strcmp(status, "backfilling") == 0;
		defs[r].live = strcmp(status, "live") == 0;
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
		defs[r].spec->keep_oldest = defs[r].windowed;
	}
	SPI_freetuptable(SPI_tuptable);
	return defs;
}

static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* the index of a definition by id (they are in id order), -1: none */
static int
DefIndex(TraitDef *defs, int ndefs, int32 id)
{
	int			lo = 0,
				hi = ndefs - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (defs[mid].id == id)
			return mid;
		if (defs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

static bool
SameJsonb(Jsonb *a, Jsonb *b)
{
	return a != NULL && b != NULL && VARSIZE(a) == VARSIZE(b) &&
		memcmp(a, b, VARSIZE(a)) == 0;
}

/* where trait's slot is, or would go, in the profile's slots */
static int
SlotIndex(ProfileEntry *pe, int32 trait, bool *found)
{
	int			lo = 0,
				hi = pe->nslots;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (pe->slots[mid].trait < trait)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < pe->nslots && pe->slots[lo].trait == trait;
	return lo;
}

/* a new slot for trait at index i (SlotIndex's), in the current memory context */
static TraitSlot *
InsertSlot(ProfileEntry *pe, int i, int32 trait)
{
	if (pe->nslots == pe->maxslots)
	{
		pe->maxslots = Max(4, pe->maxslots * 2);
		pe->slots = pe->slots == NULL ? palloc(sizeof(TraitSlot) * pe->maxslots) :
			repalloc(pe->slots, sizeof(TraitSlot) * pe->maxslots);
	}
	memmove(&pe->slots[i + 1], &pe->slots[i], sizeof(TraitSlot) * (pe->nslots - i));
	pe->nslots++;
	pe->slots[i].trait = trait;
	pe->slots[i].state = NULL;
	pe->slots[i].stored = NULL;
	return &pe->slots[i];
}

/*
 * The stored states of the gathered (profile, trait) pairs, onto their
 * slots: one row per profile holds its states by trait id.  Marks in
 * has_row[] the profiles (sorted, unique) that have a row.
 */
static void
ReadStoredStates(HTAB *states, int64 *profiles, int nprofiles, bool *has_row)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];
	uint64		rows;

	args[0] = CdpInt8Array(profiles, nprofiles);
	rows = CdpExecPlan(CdpPlanGeneric(&read_plan,
							   "SELECT profile_id, states FROM cdp.trait_states "
							   "WHERE profile_id = ANY ($1)", 1, argtypes),
					   args, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		pid = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		ProfileEntry *pe = hash_search(states, &pid, HASH_FIND, NULL);
		int64	   *at = bsearch(&pid, profiles, nprofiles, sizeof(int64), CompareInt64);
		Jsonb	   *stored;

		if (at != NULL)
			has_row[at - profiles] = true;
		if (pe == NULL)
			continue;
		stored = DatumGetJsonbP(SPI_getbinval(tup, desc, 2, &isnull));
		for (int i = 0; i < pe->nslots; i++)
		{
			char		key[16];
			JsonbValue	v;

			snprintf(key, sizeof(key), "%d", pe->slots[i].trait);
			if (getKeyJsonValueFromContainer(&stored->root, key, strlen(key), &v) != NULL &&
				v.type == jbvBinary)
				pe->slots[i].stored = JsonbValueToJsonb(&v);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/* profiles a trait being backfilled must count again once it is live */
static void
NoteDirty(HTAB *dirty)
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
		tids[i] = Int32GetDatum(k->trait);
		pids[i] = Int64GetDatum(k->profile_id);
		i++;
	}
	args[0] = CdpArray(tids, i, INT4OID);
	args[1] = CdpArray(pids, i, INT8OID);
	CdpExecPlan(CdpPlanGeneric(&dirty_plan,
						"INSERT INTO cdp.trait_dirty (trait_id, profile_id) "
						"SELECT u.t, u.p FROM ROWS FROM (unnest($1), unnest($2)) AS u(t, p) "
						"ORDER BY 1, 2 ON CONFLICT DO NOTHING", 2, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/* mark[i] := to for each profile (of profiles, sorted) the plan's rows name */
static void
MarkProfiles(SPIPlanPtr plan, Datum *args, int64 *profiles, int n, bool *mark, bool to)
{
	uint64		rows = CdpExecPlan(plan, args, NULL, SPI_OK_SELECT);

	for (uint64 r = 0; r < rows; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
													 1, &isnull));
		int64	   *at = bsearch(&id, profiles, n, sizeof(int64), CompareInt64);

		if (at != NULL)
			mark[at - profiles] = to;
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Which of the profiles (sorted, unique) are canonical with no profile
 * merged into them: their values follow from their own states alone.
 * Marks them in alone[].  Two scans of an index each, where "NOT EXISTS a
 * member" ran as a join probing the members' index once per profile.
 */
static void
FindProfilesAlone(int64 *profiles, int n, bool *alone)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];

	memset(alone, 0, sizeof(bool) * n);
	args[0] = CdpInt8Array(profiles, n);
	MarkProfiles(CdpPlanGeneric(&alone_plan,
								"SELECT r.profile_id FROM cdp.profile_records r "
								"WHERE r.profile_id = ANY ($1) AND r.merged_into IS NULL",
								1, argtypes),
				 args, profiles, n, alone, true);
	MarkProfiles(CdpPlanGeneric(&members_plan,
								"SELECT DISTINCT m.merged_into FROM cdp.profile_records m "
								"WHERE m.merged_into = ANY ($1)",
								1, argtypes),
				 args, profiles, n, alone, false);
}

/* a value as what pushJsonbValue takes for an object's value */
static void
PushValue(JsonbParseState **ps, Jsonb *value)
{
	JsonbValue	v;

	CdpJsonbDocumentValue(value, &v);
	pushJsonbValue(ps, WJB_VALUE, &v);
}

/* a value (as CdpTraitStateValueOf gives it) as the value of key in *ps */
static void
PushValueOf(JsonbParseState **ps, const char *key, JsonbValue *v)
{
	CdpPushJsonbKey(ps, key);
	if (v->type == jbvArray || v->type == jbvObject)
	{
		/* a container built in memory: as a Jsonb, which pushJsonbValue unpacks */
		Jsonb	   *j = JsonbValueToJsonb(v);

		PushValue(ps, j);
	}
	else
		pushJsonbValue(ps, WJB_VALUE, v);
}

/*
 * The values of the profiles that are not alone derived again from their
 * members' states (those written just before); audiences over the changed
 * profiles' values (sorted) follow at commit.
 */
static void
DeriveValues(int64 *derive, int nderive, int64 *changed, int nchanged)
{
	Oid			argtype = INT8ARRAYOID;
	Datum		args[1];

	if (nderive > 0)
	{
		args[0] = CdpInt8Array(derive, nderive);
		CdpExecPlan(CdpPlanGeneric(&refresh_plan, "SELECT cdp.refresh_computed_traits($1)", 1, &argtype),
					args, NULL, SPI_OK_SELECT);
	}
	CdpProfilesChanged(changed, nchanged);
}

/* rows of cdp.trait_states to write: (profile_id, states, expires_at, traits) */
typedef struct StateRows
{
	int			n;
	Datum	   *pids;
	Datum	   *deltas;			/* {"<trait id>": state} */
	Datum	   *expires;
	bool	   *expires_null;
	Datum	   *vals;			/* {name: value}, NULL: none changed */
	bool	   *vals_null;
} StateRows;

/* the columns a row of cdp.trait_states has, and rows per multi-insert */
#define NROW_COLS 5
#define INSERT_CHUNK 1000

/*
 * The states that changed, one row per profile ({"<trait id>": state}, in
 * profile order), into the profiles' rows in one statement: a stored row
 * keeps its other traits' states.  A profile alone whose values changed
 * gains them on the same row ({name: value}, the other traits' values
 * staying what they were; NULL in vals where none changed).  The
 * profiles' row locks keep any other writer of these traits' states away;
 * one of a trait being backfilled may store the row meanwhile, hence the
 * conflict clause (both merge by key).  Ingest only adds events, so a
 * row's expiry can only come earlier.
 */
static void
WriteStateRows(StateRows *rows)
{
	Oid			argtypes[4] = {INT8ARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID, JSONBARRAYOID};
	Datum		args[4];
	int			n = rows->n;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	if (n == 0)
		return;
	args[0] = CdpArray(rows->pids, n, INT8OID);
	args[1] = CdpArray(rows->deltas, n, JSONBOID);
	args[2] = PointerGetDatum(construct_md_array(rows->expires, rows->expires_null, 1, dims, lbs,
												 TIMESTAMPTZOID, sizeof(TimestampTz), true,
												 TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_md_array(rows->vals, rows->vals_null, 1, dims, lbs,
												 JSONBOID, -1, false, TYPALIGN_INT));
	CdpExecPlan(CdpPlanGeneric(&write_plan,
						"INSERT INTO cdp.trait_states AS s "
						"(profile_id, states, expires_at, traits, traits_updated_at) "
						"SELECT u.p, u.st, u.x, u.v, CASE WHEN u.v IS NOT NULL THEN now() END "
						"FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4)) "
						"AS u(p, st, x, v) "
						"ON CONFLICT (profile_id) DO UPDATE "
						"SET states = s.states || excluded.states, "
						"expires_at = LEAST(s.expires_at, excluded.expires_at), "
						"traits = CASE WHEN excluded.traits IS NULL THEN s.traits "
						"         ELSE coalesce(s.traits, '{}') || excluded.traits END, "
						"traits_updated_at = coalesce(excluded.traits_updated_at, s.traits_updated_at)",
						4, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/*
 * Rows of profiles that have none, inserted as COPY inserts them (no
 * arrays to build and unnest, no conflict to check), a chunk at a time;
 * their values (where any) as of now.  Only when no other writer can
 * insert theirs meanwhile: the caller read that they have none under
 * their profiles' locks, which every writer of states holds but a trait's
 * background backfill (none runs: see WriteStates).  False, having
 * written nothing, when the table needs an INSERT statement.
 */
static bool
InsertNewRows(StateRows *rows)
{
	static const char *const cols[NROW_COLS] = {"profile_id", "states", "expires_at", "traits",
	"traits_updated_at"};
	static const Oid types[NROW_COLS] = {INT8OID, JSONBOID, TIMESTAMPTZOID, JSONBOID,
	TIMESTAMPTZOID};
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	CdpDirectInsert *d;
	Datum	   *values;
	bool	   *nulls;

	if (rows->n == 0)
		return true;
	d = CdpBeginDirectInsert(get_relname_relid("trait_states", get_namespace_oid("cdp", false)),
							 cols, types, NROW_COLS, Min(rows->n, INSERT_CHUNK), false);
	if (d == NULL)
		return false;
	values = palloc(sizeof(Datum) * NROW_COLS * INSERT_CHUNK);
	nulls = palloc(sizeof(bool) * NROW_COLS * INSERT_CHUNK);
	for (int from = 0; from < rows->n; from += INSERT_CHUNK)
	{
		int			k = Min(rows->n - from, INSERT_CHUNK);

		for (int i = 0; i < k; i++)
		{
			Datum	   *v = &values[i * NROW_COLS];
			bool	   *isnull = &nulls[i * NROW_COLS];
			int			r = from + i;

			v[0] = rows->pids[r];
			v[1] = rows->deltas[r];
			v[2] = rows->expires[r];
			v[3] = rows->vals[r];
			v[4] = now;
			isnull[0] = isnull[1] = false;
			isnull[2] = rows->expires_null[r];
			isnull[3] = isnull[4] = rows->vals_null[r];
		}
		CdpDirectInsertRows(d, values, nulls, k);
	}
	CdpEndDirectInsert(d);
	return true;
}

/* room for n rows */
static void
InitStateRows(StateRows *rows, int n)
{
	rows->n = 0;
	rows->pids = palloc(sizeof(Datum) * Max(n, 1));
	rows->deltas = palloc(sizeof(Datum) * Max(n, 1));
	rows->expires = palloc(sizeof(Datum) * Max(n, 1));
	rows->expires_null = palloc(sizeof(bool) * Max(n, 1));
	rows->vals = palloc(sizeof(Datum) * Max(n, 1));
	rows->vals_null = palloc(sizeof(bool) * Max(n, 1));
}

static int
CompareProfileEntries(const void *a, const void *b)
{
	const ProfileEntry *x = *(ProfileEntry *const *) a;
	const ProfileEntry *y = *(ProfileEntry *const *) b;

	return x->profile_id < y->profile_id ? -1 : (x->profile_id > y->profile_id ? 1 : 0);
}

/* the new rows gathered so far inserted (see InsertNewRows), their memory reset */
static void
FlushNewRows(StateRows *rows, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	if (!InsertNewRows(rows))
		WriteStateRows(rows);
	MemoryContextSwitchTo(old);
	rows->n = 0;
	MemoryContextReset(cxt);
}

/*
 * Combine the gathered states with the stored ones and write back those
 * that changed, a profile's as one row; then the values that changed, a
 * profile's gathered in the same pass, on the same row (see WriteStateRows).
 * Profiles without a row get theirs inserted directly (InsertNewRows) when
 * no trait is being backfilled in the background, a chunk at a time as
 * they are made (their memory reused: holding every new row to the end
 * took a third of the drain's memory again).
 */
static void
WriteStates(HTAB *states, TraitDef *defs, int ndefs)
{
	long		n = hash_get_num_entries(states);
	ProfileEntry **entries = palloc(sizeof(ProfileEntry *) * Max(n, 1));
	int64	   *profiles = palloc(sizeof(int64) * Max(n, 1));
	char	  **keys = palloc(sizeof(char *) * Max(ndefs, 1));
	int			nprofiles = 0,
				nderive = 0,
				nchanged = 0;
	bool	   *alone;
	bool	   *has_row;
	/*
	 * "no row" read under the profiles' locks holds until commit only when
	 * that read took a snapshot after the locks (READ COMMITTED)
	 */
	bool		insert_new = !IsolationUsesXactSnapshot();
	StateRows	stored_rows;
	StateRows	new_rows;
	int64	   *derive;
	int64	   *changed;
	HASH_SEQ_STATUS seq;
	ProfileEntry *pe;
	MemoryContext work = CurrentMemoryContext;
	MemoryContext one;
	MemoryContext new_cxt;

	hash_seq_init(&seq, states);
	while ((pe = hash_seq_search(&seq)) != NULL)
		entries[nprofiles++] = pe;
	qsort(entries, nprofiles, sizeof(ProfileEntry *), CompareProfileEntries);
	for (int p = 0; p < nprofiles; p++)
		profiles[p] = entries[p]->profile_id;
	for (int t = 0; t < ndefs; t++)
	{
		keys[t] = psprintf("%d", defs[t].id);
		/* its background steps write rows without the profiles' locks */
		if (defs[t].backfilling)
			insert_new = false;
	}
	has_row = palloc0(sizeof(bool) * Max(nprofiles, 1));
	ReadStoredStates(states, profiles, nprofiles, has_row);
	alone = palloc(sizeof(bool) * Max(nprofiles, 1));
	FindProfilesAlone(profiles, nprofiles, alone);

	InitStateRows(&stored_rows, nprofiles);
	InitStateRows(&new_rows, Min(nprofiles, INSERT_CHUNK));
	new_cxt = AllocSetContextCreate(work, "cdp computed trait new rows", ALLOCSET_DEFAULT_SIZES);
	derive = palloc(sizeof(int64) * Max(nprofiles, 1));
	changed = palloc(sizeof(int64) * Max(nprofiles, 1));
	/* what building a profile's objects takes, reset per profile; they go to work */
	one = AllocSetContextCreate(work, "cdp computed trait profile", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(one);
	for (int p = 0; p < nprofiles; p++)
	{
		int64		pid = profiles[p];
		JsonbParseState *ps = NULL;
		JsonbParseState *vs = NULL;
		bool		any = false;
		bool		value_changed = false;
		bool		derived = !alone[p];
		bool		has_expiry = false;
		TimestampTz expiry = 0;

		pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
		pushJsonbValue(&vs, WJB_BEGIN_OBJECT, NULL);
		for (int i = 0; i < entries[p]->nslots; i++)
		{
			TraitSlot  *e = &entries[p]->slots[i];
			int			t;
			TraitDef   *d;
			CdpTraitState *s;
			Jsonb	   *before = NULL;

			t = DefIndex(defs, ndefs, e->trait);
			/* definitions cannot change while ingest holds its lock: never */
			if (t < 0)
				continue;
			d = &defs[t];
			if (e->stored == NULL)
			{
				/* nothing stored: the gathered state is the state */
				s = e->state;
				if (!CdpTraitStatePush(&ps, keys[t], s))
					continue;
			}
			else
			{
				Jsonb	   *state;

				s = CdpTraitStateFromJsonb(d->spec->kind, e->stored);
				before = d->live ? CdpTraitStateValue(s) : NULL;
				CdpTraitStateCombine(s, e->state);
				state = CdpTraitStateToJsonb(s);
				if (state == NULL || SameJsonb(state, e->stored))
					continue;
				(void) CdpTraitStatePush(&ps, keys[t], s);
			}
			any = true;
			if (d->windowed && s->has_oldest)
			{
				TimestampTz x = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
																		TimestampTzGetDatum(s->oldest),
																		d->window));

				if (!has_expiry || x < expiry)
					expiry = x;
				has_expiry = true;
			}
			/* a trait catching up after its backfill shows its values when published */
			if (!d->live)
				continue;
			if (e->stored == NULL)
			{
				JsonbValue	v;

				/* no value before: a value now is a change, none is derived again */
				value_changed = true;
				if (!CdpTraitStateValueOf(s, &v))
					derived = true;
				else if (!derived)
					PushValueOf(&vs, d->name, &v);
			}
			else
			{
				Jsonb	   *after = CdpTraitStateValue(s);

				if (SameJsonb(before, after) || (before == NULL && after == NULL))
					continue;
				value_changed = true;
				if (after == NULL)
					derived = true;
				else if (!derived)
				{
					CdpPushJsonbKey(&vs, d->name);
					PushValue(&vs, after);
				}
			}
		}
		/* a value changes only with its state: a profile with values has a row */
		Assert(any || !value_changed);
		if (any)
		{
			JsonbValue *obj = pushJsonbValue(&ps, WJB_END_OBJECT, NULL);
			JsonbValue *vobj = value_changed && !derived ?
				pushJsonbValue(&vs, WJB_END_OBJECT, NULL) : NULL;
			bool		is_new = insert_new && !has_row[p];
			StateRows  *rows = is_new ? &new_rows : &stored_rows;
			int			r = rows->n++;

			/*
			 * built in the profile's memory, kept at their size: a jsonb
			 * is built in a buffer that grows by doubling
			 */
			Datum		delta = JsonbPGetDatum(JsonbValueToJsonb(obj));
			Datum		val = vobj == NULL ? (Datum) 0 : JsonbPGetDatum(JsonbValueToJsonb(vobj));

			MemoryContextSwitchTo(is_new ? new_cxt : work);
			rows->pids[r] = Int64GetDatum(pid);
			rows->deltas[r] = datumCopy(delta, false, -1);
			rows->expires[r] = TimestampTzGetDatum(expiry);
			rows->expires_null[r] = !has_expiry;
			rows->vals_null[r] = vobj == NULL;
			rows->vals[r] = vobj == NULL ? (Datum) 0 : datumCopy(val, false, -1);
			MemoryContextSwitchTo(one);
			if (is_new && new_rows.n == INSERT_CHUNK)
				FlushNewRows(&new_rows, new_cxt);
		}
		if (value_changed)
		{
			changed[nchanged++] = pid;
			if (derived)
				derive[nderive++] = pid;
		}
		MemoryContextReset(one);
	}
	MemoryContextSwitchTo(work);
	MemoryContextDelete(one);
	FlushNewRows(&new_rows, new_cxt);
	MemoryContextDelete(new_cxt);
	WriteStateRows(&stored_rows);
	DeriveValues(derive, nderive, changed, nchanged);
}

/* a profile id's hash: an integer mix of its halves */
static uint32
ProfileIdHash(const void *key, Size keysize)
{
	int64		id = *(const int64 *) key;

	return hash_combine(murmurhash32((uint32) id), murmurhash32((uint32) (id >> 32)));
}

/* an empty table of profiles' states in cxt */
static HTAB *
NewStatesTable(MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(ProfileEntry);
	ctl.hash = ProfileIdHash;
	ctl.hcxt = cxt;
	return hash_create("cdp computed trait states", 256, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_CONTEXT);
}

/* deltas empty again, in its memory reset */
static void
ResetDeltas(CdpTraitDeltas *d)
{
	MemoryContextReset(d->cxt);
	d->profiles = NewStatesTable(d->cxt);
	d->nstates = 0;
}

/*
 * An empty set of states, in a memory context of its own under parent.  A
 * chunk's and a batch's are made anew for each: their first block is about
 * what a chunk's states take, so they do not grow block by block from
 * fresh memory each time (its page faults took 3% of ingest with computed
 * traits).
 */
CdpTraitDeltas *
CdpNewTraitDeltas(MemoryContext parent)
{
	CdpTraitDeltas *d = MemoryContextAlloc(parent, sizeof(CdpTraitDeltas));

	d->cxt = AllocSetContextCreate(parent, "cdp computed trait states", DELTAS_FIRST_BLOCK,
								   DELTAS_FIRST_BLOCK, ALLOCSET_DEFAULT_MAXSIZE);
	d->profiles = NewStatesTable(d->cxt);
	d->nstates = 0;
	return d;
}

/*
 * Count the chunk's stored track events into the states of the traits
 * they match (the event's name, its window: an event already out of it
 * counts nowhere, its properties' filter), in deltas.
 */
void
CdpUpdateComputedTraits(CdpMessage **msgs, int n, CdpTraitDeltas *deltas)
{
	int			ndefs;
	TraitDef   *defs = LoadDefinitions(&ndefs);
	HTAB	   *dirty;
	HASHCTL		ctl;
	MemoryContext old;

	if (ndefs == 0)
		return;
	ctl.keysize = sizeof(StateKey);
	ctl.entrysize = sizeof(StateKey);
	ctl.hcxt = CurrentMemoryContext;
	dirty = hash_create("cdp computed traits being backfilled", 16, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	old = MemoryContextSwitchTo(deltas->cxt);
	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];
		Jsonb	   *props = NULL;
		bool		have_props = false;
		ProfileEntry *pe = NULL;

		if (msg->outcome != CDP_STORED || !msg->has_profile_id ||
			msg->type == NULL || strcmp(msg->type, "track") != 0)
			continue;
		for (int t = 0; t < ndefs; t++)
		{
			TraitDef   *d = &defs[t];
			TraitSlot  *slot = NULL;
			int			at = 0;
			bool		found = false;
			CdpTraitState scratch;

			if (d->event != NULL && (msg->event == NULL || strcmp(d->event, msg->event) != 0))
				continue;
			if (d->windowed && msg->ts <= d->since)
				continue;
			if (!have_props)
			{
				/* the states keep copies of what they take from it */
				props = CdpPropertiesJsonb(msg);
				have_props = true;
			}
			if (d->backfilling)
			{
				StateKey	key;

				/* noted only, in this chunk's transaction: it is counted again once live */
				memset(&key, 0, sizeof(key));
				key.profile_id = msg->profile_id;
				key.trait = d->id;
				(void) hash_search(dirty, &key, HASH_ENTER, NULL);
				continue;
			}
			if (pe == NULL)
				pe = hash_search(deltas->profiles, &msg->profile_id, HASH_FIND, NULL);
			if (pe != NULL)
			{
				at = SlotIndex(pe, d->id, &found);
				if (found)
					slot = &pe->slots[at];
			}
			if (slot != NULL)
			{
				(void) CdpTraitStateAdd(d->spec, slot->state, msg->ts, props);
				continue;
			}
			/* a state only for an event that counts */
			memset(&scratch, 0, sizeof(scratch));
			scratch.kind = d->spec->kind;
			if (!CdpTraitStateAdd(d->spec, &scratch, msg->ts, props))
				continue;
			if (pe == NULL)
			{
				pe = hash_search(deltas->profiles, &msg->profile_id, HASH_ENTER, NULL);
				pe->nslots = pe->maxslots = 0;
				pe->slots = NULL;
				at = 0;
			}
			slot = InsertSlot(pe, at, d->id);
			slot->state = palloc(sizeof(CdpTraitState));
			*slot->state = scratch;
			deltas->nstates++;
		}
	}
	MemoryContextSwitchTo(old);
	if (hash_get_num_entries(dirty) > 0)
		NoteDirty(dirty);
	hash_destroy(dirty);
}

/*
 * from's states counted into into's (a chunk's into its batch, a batch's
 * into its drain), copied into into's memory: from's may go away.  An
 * empty into takes from's states and memory as they are (everything they
 * point to is in that memory); from is empty afterwards.
 */
void
CdpMergeTraitDeltas(CdpTraitDeltas *into, CdpTraitDeltas *from)
{
	HASH_SEQ_STATUS seq;
	ProfileEntry *f;
	MemoryContext old;

	if (from->nstates == 0)
		return;
	if (into->nstates == 0)
	{
		MemoryContext mine = into->cxt;
		MemoryContext into_parent = MemoryContextGetParent(into->cxt);
		MemoryContext from_parent = MemoryContextGetParent(from->cxt);

		MemoryContextSetParent(from->cxt, into_parent);
		into->cxt = from->cxt;
		into->profiles = from->profiles;
		into->nstates = from->nstates;
		/* from takes the empty ones */
		MemoryContextSetParent(mine, from_parent);
		from->cxt = mine;
		ResetDeltas(from);
		return;
	}
	old = MemoryContextSwitchTo(into->cxt);

	hash_seq_init(&seq, from->profiles);
	while ((f = hash_seq_search(&seq)) != NULL)
	{
		bool		found;
		ProfileEntry *pe = hash_search(into->profiles, &f->profile_id, HASH_ENTER, &found);

		if (!found)
		{
			pe->nslots = pe->maxslots = f->nslots;
			pe->slots = palloc(sizeof(TraitSlot) * f->nslots);
			for (int i = 0; i < f->nslots; i++)
			{
				pe->slots[i].trait = f->slots[i].trait;
				pe->slots[i].state = CdpTraitStateCopy(f->slots[i].state);
				pe->slots[i].stored = NULL;
			}
			into->nstates += f->nslots;
			continue;
		}
		for (int i = 0; i < f->nslots; i++)
		{
			bool		has;
			int			at = SlotIndex(pe, f->slots[i].trait, &has);

			if (has)
				CdpTraitStateCombineCopy(pe->slots[at].state, f->slots[i].state);
			else
			{
				InsertSlot(pe, at, f->slots[i].trait)->state = CdpTraitStateCopy(f->slots[i].state);
				into->nstates++;
			}
		}
	}
	MemoryContextSwitchTo(old);
}

/* whether a drain should write its states now rather than gather more */
bool
CdpTraitDeltasFull(CdpTraitDeltas *deltas)
{
	return deltas->nstates >= DELTAS_MAX_STATES ||
		MemoryContextMemAllocated(deltas->cxt, true) >= DELTAS_MAX_BYTES;
}

/*
 * Write the gathered states (combined with the stored ones) and the values
 * that changed; deltas is empty afterwards.
 */
void
CdpWriteTraitDeltas(CdpTraitDeltas *deltas)
{
	MemoryContext work;
	MemoryContext old;
	int			ndefs;
	TraitDef   *defs;

	if (deltas->nstates == 0)
		return;
	work = AllocSetContextCreate(CurrentMemoryContext, "cdp computed trait writes",
								 ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(work);
	defs = LoadDefinitions(&ndefs);
	WriteStates(deltas->profiles, defs, ndefs);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(work);

	ResetDeltas(deltas);
}
