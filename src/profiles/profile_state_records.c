/*
 * profile_state_records.c
 *	  The profile records' part of a state write when every identifier it
 *	  wrote was new to the state tables (new people: the common case of a
 *	  backfill and of a growing audience).  The write holds their maps and
 *	  knows the profile each belongs to, so it merges them per profile here
 *	  and gives each record its maps and its events' stats in one rewrite,
 *	  instead of reading the maps back through three indexes per identifier
 *	  and gathering them per profile in SQL.  The rewrite is direct (no
 *	  statement: its executor work cost as much as the rows) when the table
 *	  allows it (direct_update.c), else one statement.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "catalog/namespace.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "profile_merge.h"
#include "spi_util.h"
#include "computed_traits.h"

/*
 * Per row d: a profile, its events' stats (NULL when it has none), its
 * identifiers' merged maps (NULL when they have none) and whether they
 * changed; merged into the record as the general statement does (see
 * QUEUED_SET in profile_state_queue.c), returning the profiles whose state
 * changed.
 */
static const char *const records_sql =
	"WITH s AS (UPDATE cdp.profile_records r SET "
	"  (traits, trait_times) = (SELECT (m.x).traits, (m.x).trait_times FROM (SELECT cdp.merge_traits("
	"     ARRAY[r.traits, d.tr], ARRAY[r.trait_times, d.tt], $9, false) AS x OFFSET 0) m), "
	"  consent = cdp.merge_consent(ARRAY[r.consent, d.e]), " CDP_PROFILE_STATS_SET("d") " "
	"  FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), unnest($5), unnest($6), "
	"                  unnest($7), unnest($8)) AS d(p, n, lo, hi, tr, tt, e, st) "
	"  WHERE r.profile_id = d.p RETURNING r.profile_id, d.st) "
	"SELECT profile_id FROM s WHERE st";

static SPIPlanPtr records_plan = NULL;

/* one column of the statement's rows, NULL where isnull says */
typedef struct RecordColumn
{
	Datum	   *v;
	bool	   *isnull;
} RecordColumn;

enum
{
	COL_PROFILE, COL_COUNT, COL_LO, COL_HI, COL_TRAITS, COL_TIMES, COL_CONSENT, COL_CHANGED,
	NUM_COLS
};

static const Oid col_types[NUM_COLS] = {INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
JSONBOID, JSONBOID, JSONBOID, BOOLOID};

/* a column as an array of its type */
static Datum
ColumnArray(RecordColumn *col, int n, Oid elemtype)
{
	int16		typlen;
	bool		byval;
	char		align;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	if (n == 0)
		return PointerGetDatum(construct_empty_array(elemtype));
	get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
	return PointerGetDatum(construct_md_array(col->v, col->isnull, 1, dims, lbs, elemtype,
											  typlen, byval, align));
}

/* the identifiers' indexes in maps, by profile then index */
static int
CompareByProfile(const void *a, const void *b, void *arg)
{
	CdpIdentifierMaps *maps = arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	int64		px = maps->profile_ids[x];
	int64		py = maps->profile_ids[y];

	if (px != py)
		return px < py ? -1 : 1;
	return (x > y) - (x < y);
}

/*
 * The maps of identifiers order[from..to), which one profile holds, merged
 * into row r's traits, times and consent (each NULL when none has it).
 */
static void
MergedMaps(CdpIdentifierMaps *maps, int *order, int from, int to, RecordColumn *cols, int r)
{
	int			n = to - from;
	Jsonb	  **traits = palloc(sizeof(Jsonb *) * n);
	Jsonb	  **times = palloc(sizeof(Jsonb *) * n);
	Jsonb	  **consent = palloc(sizeof(Jsonb *) * n);
	int			ntraits = 0;
	int			nconsent = 0;

	for (int i = from; i < to; i++)
	{
		int			k = order[i];

		if (maps->traits[k] != (Datum) 0)
		{
			traits[ntraits] = DatumGetJsonbP(maps->traits[k]);
			times[ntraits++] = DatumGetJsonbP(maps->times[k]);
		}
		if (maps->consent[k] != (Datum) 0)
			consent[nconsent++] = DatumGetJsonbP(maps->consent[k]);
	}
	cols[COL_TRAITS].isnull[r] = cols[COL_TIMES].isnull[r] = (ntraits == 0);
	if (ntraits > 0)
	{
		Datum		merged[2];

		CdpMergeTraitMaps(traits, ntraits, times, ntraits, CDP_MAX_PROFILE_TRAITS, false, merged);
		cols[COL_TRAITS].v[r] = merged[0];
		cols[COL_TIMES].v[r] = merged[1];
	}
	cols[COL_CONSENT].isnull[r] = (nconsent == 0);
	if (nconsent > 0)
		cols[COL_CONSENT].v[r] = JsonbPGetDatum(CdpMergeConsentMaps(consent, nconsent));
	pfree(traits);
	pfree(times);
	pfree(consent);
}

/* row r: profile p with the stats st (or none) */
static void
StartRow(RecordColumn *cols, int r, int64 p, CdpProfileStat *st)
{
	for (int c = 0; c < NUM_COLS; c++)
		cols[c].isnull[r] = true;
	cols[COL_PROFILE].v[r] = Int64GetDatum(p);
	cols[COL_PROFILE].isnull[r] = false;
	cols[COL_CHANGED].v[r] = BoolGetDatum(false);
	cols[COL_CHANGED].isnull[r] = false;
	if (st == NULL)
		return;
	cols[COL_COUNT].v[r] = Int64GetDatum(st->count);
	cols[COL_LO].v[r] = TimestampTzGetDatum(st->lo);
	cols[COL_HI].v[r] = TimestampTzGetDatum(st->hi);
	cols[COL_COUNT].isnull[r] = cols[COL_LO].isnull[r] = cols[COL_HI].isnull[r] = false;
}

/*
 * Rows [0, nrows) of cols merged into their records without a statement
 * (direct_update.c), as records_sql does; the profiles whose state changed
 * in *changed.  False, having written nothing, if the statement must run.
 */
static bool
WriteRecordsDirectly(RecordColumn *cols, int nrows, int64 **changed, int *nchanged)
{
	Oid			relid = get_relname_relid("profile_records", get_namespace_oid("cdp", false));
	CdpStatsColumns stats_cols;
	int			traits_col,
				times_col,
				consent_col;
	CdpDirectUpdate *u;
	MemoryContext row_cxt,
				old;

	if (!OidIsValid(relid) || !CdpProfileStatsColumns(relid, &stats_cols) ||
		(traits_col = CdpDirectUpdateColumn(relid, "traits", JSONBOID)) < 0 ||
		(times_col = CdpDirectUpdateColumn(relid, "trait_times", JSONBOID)) < 0 ||
		(consent_col = CdpDirectUpdateColumn(relid, "consent", JSONBOID)) < 0 ||
		(u = CdpBeginDirectUpdate(relid)) == NULL)
		return false;
	*changed = palloc(sizeof(int64) * Max(nrows, 1));
	*nchanged = 0;
	/* a record's merged maps are garbage once it is written */
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp profile record",
									ALLOCSET_DEFAULT_SIZES);
	for (int r = 0; r < nrows; r++)
	{
		int64		p = DatumGetInt64(cols[COL_PROFILE].v[r]);
		Datum	   *values;
		bool	   *nulls;
		Jsonb	   *traits[2];
		Jsonb	   *times[2];
		Jsonb	   *consent[2];
		Datum		merged[2];

		if (!CdpDirectUpdateFind(u, p, &values, &nulls))
			continue;
		old = MemoryContextSwitchTo(row_cxt);
		traits[0] = nulls[traits_col] ? NULL : DatumGetJsonbP(values[traits_col]);
		times[0] = nulls[times_col] ? NULL : DatumGetJsonbP(values[times_col]);
		consent[0] = nulls[consent_col] ? NULL : DatumGetJsonbP(values[consent_col]);
		traits[1] = cols[COL_TRAITS].isnull[r] ? NULL : DatumGetJsonbP(cols[COL_TRAITS].v[r]);
		times[1] = cols[COL_TIMES].isnull[r] ? NULL : DatumGetJsonbP(cols[COL_TIMES].v[r]);
		consent[1] = cols[COL_CONSENT].isnull[r] ? NULL : DatumGetJsonbP(cols[COL_CONSENT].v[r]);
		CdpMergeTraitMaps(traits, 2, times, 2, CDP_MAX_PROFILE_TRAITS, false, merged);
		values[traits_col] = merged[0];
		values[times_col] = merged[1];
		values[consent_col] = JsonbPGetDatum(CdpMergeConsentMaps(consent, 2));
		nulls[traits_col] = nulls[times_col] = nulls[consent_col] = false;
		if (!cols[COL_COUNT].isnull[r])
		{
			CdpProfileStat st = {p, DatumGetInt64(cols[COL_COUNT].v[r]),
			DatumGetTimestampTz(cols[COL_LO].v[r]), DatumGetTimestampTz(cols[COL_HI].v[r])};

			CdpAddProfileStat(&stats_cols, values, nulls, &st);
		}
		MemoryContextSwitchTo(old);
		CdpDirectUpdateStore(u);
		MemoryContextReset(row_cxt);
		if (DatumGetBool(cols[COL_CHANGED].v[r]))
			(*changed)[(*nchanged)++] = p;
	}
	MemoryContextDelete(row_cxt);
	CdpEndDirectUpdate(u);
	return true;
}

/*
 * Write the profile records of the identifiers in maps (each under the
 * profile holding it) and of the call's stats (emptied), in profile id
 * order; false, with nothing written, when a profile with stats may have
 * been merged away since its events were counted (the general statement
 * finds where they belong).
 */
bool
CdpWriteIdentifierMaps(CdpIdentifierMaps *maps, HTAB *stats)
{
	CdpProfileStat *list = NULL;
	int			nstats = 0;
	bool		merged_since = false;
	int		   *order = palloc(sizeof(int) * Max(maps->n, 1));
	int			cap = maps->n + 1;
	RecordColumn cols[NUM_COLS];
	Datum		args[NUM_COLS + 1];
	Oid			argtypes[NUM_COLS + 1];
	int			r = 0;
	int			i = 0;
	int			j = 0;
	uint64		rows;
	int64	   *changed;
	int			nchanged;

	if (stats != NULL)
	{
		nstats = CdpProfileStatsList(stats, &list, &merged_since);
		if (merged_since)
			return false;
	}
	cap += nstats;
	for (int c = 0; c < NUM_COLS; c++)
	{
		cols[c].v = palloc(sizeof(Datum) * cap);
		cols[c].isnull = palloc(sizeof(bool) * cap);
	}
	for (int k = 0; k < maps->n; k++)
		order[k] = k;
	qsort_arg(order, maps->n, sizeof(int), CompareByProfile, maps);

	/* the identifiers' profiles and the stats' profiles, both in id order */
	while (i < maps->n || j < nstats)
	{
		int64		p = (i < maps->n) ? maps->profile_ids[order[i]] : list[j].profile_id;
		int			to = i;

		if (j < nstats && list[j].profile_id < p)
			p = list[j].profile_id;
		StartRow(cols, r, p, (j < nstats && list[j].profile_id == p) ? &list[j++] : NULL);
		while (to < maps->n && maps->profile_ids[order[to]] == p)
			to++;
		if (to > i)
		{
			MergedMaps(maps, order, i, to, cols, r);
			cols[COL_CHANGED].v[r] = BoolGetDatum(true);
			i = to;
		}
		r++;
	}

	if (WriteRecordsDirectly(cols, r, &changed, &nchanged))
	{
		CdpProfilesChanged(changed, nchanged);
		if (stats != NULL)
			CdpClearProfileStats(stats);
		return true;
	}
	for (int c = 0; c < NUM_COLS; c++)
	{
		args[c] = ColumnArray(&cols[c], r, col_types[c]);
		argtypes[c] = get_array_type(col_types[c]);
	}
	args[NUM_COLS] = Int32GetDatum(CDP_MAX_PROFILE_TRAITS);
	argtypes[NUM_COLS] = INT4OID;
	rows = CdpExecPlan(CdpPlanGeneric(&records_plan, records_sql, NUM_COLS + 1, argtypes),
					   args, NULL, SPI_OK_SELECT);

	/* audiences over declared traits and consent follow at commit */
	changed = palloc(sizeof(int64) * Max(rows, 1));
	for (uint64 k = 0; k < rows; k++)
	{
		bool		isnull;

		changed[k] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc,
												 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	CdpProfilesChanged(changed, (int) rows);
	if (stats != NULL)
		CdpClearProfileStats(stats);
	return true;
}
