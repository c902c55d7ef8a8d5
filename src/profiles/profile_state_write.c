/*
 * profile_state_write.c
 *	  Writing a queue of gathered traits and consent (profile_state_queue.c
 *	  gathers it): the rows of identifiers new to the state tables in
 *	  multi-inserts, as COPY writes them, the others' in one statement; then
 *	  the profiles holding them, from the maps the write holds when every
 *	  identifier was new (profile_state_records.c), else in one statement
 *	  that merges the stores into the profiles.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "computed_traits.h"
#include "spi_util.h"
#include "profile_state_queue.h"

typedef enum QueuePlan
{
	PLAN_STATE,
	PLAN_STORED,
	PLAN_QUEUED,
	PLAN_QUEUED_STATS,
	PLAN_QUEUED_STATS_MERGED,
	NUM_QUEUE_PLANS
} QueuePlan;

static SPIPlanPtr plans[NUM_QUEUE_PLANS];
static Oid	plans_type_oid = InvalidOid;

/* a growable column of Datums (with nulls) */
typedef struct Column
{
	Datum	   *v;
	bool	   *nulls;
} Column;

/* what a write sends: rows of identifiers' maps, of changes of decision */
typedef struct StateRows
{
	int			cap;
	int			n;
	Column		cols[8];
} StateRows;

/* append one row (a value per column) to a write's rows, growing them */
static void
AddRow(StateRows *rows, int ncols, Datum *values, bool *nulls)
{
	if (rows->n == rows->cap)
	{
		int			cap = Max(64, rows->cap * 2);

		for (int c = 0; c < ncols; c++)
		{
			Column	   *col = &rows->cols[c];

			col->v = col->v ? repalloc(col->v, sizeof(Datum) * cap) : palloc(sizeof(Datum) * cap);
			col->nulls = col->nulls ? repalloc(col->nulls, sizeof(bool) * cap) :
				palloc(sizeof(bool) * cap);
		}
		rows->cap = cap;
	}
	for (int c = 0; c < ncols; c++)
	{
		rows->cols[c].v[rows->n] = values[c];
		rows->cols[c].nulls[rows->n] = nulls ? nulls[c] : false;
	}
	rows->n++;
}

/* a column as an array of elemtype, NULL elements where nulls says */
static Datum
ColumnArray(StateRows *rows, int c, Oid elemtype)
{
	int16		typlen;
	bool		byval;
	char		align;
	int			dims[1] = {rows->n};
	int			lbs[1] = {1};

	if (rows->n == 0)
		return PointerGetDatum(construct_empty_array(elemtype));
	get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
	return PointerGetDatum(construct_md_array(rows->cols[c].v, rows->cols[c].nulls, 1, dims, lbs,
											  elemtype, typlen, byval, align));
}

/* the statement of WriteState, in parts: traits, consent, profiles */
static const char *const state_sql =
	/* traits: per identifier its gathered values and their times */
	"WITH tn AS (SELECT u.i, m.traits, m.trait_times, u.tt AS batch_times, "
	"    EXISTS (SELECT 1 FROM cdp.identifier_traits s WHERE s.identifier = u.i) AS stored "
	"  FROM ROWS FROM (unnest($1), unnest($2), unnest($3)) AS u(i, tr, tt), "
	"  LATERAL cdp.merge_traits(ARRAY[u.tr], ARRAY[u.tt], $4, true) m), "
	"tu2 AS (UPDATE cdp.identifier_traits s SET (traits, trait_times) = "
	"  (SELECT m.traits, m.trait_times FROM cdp.merge_traits("
	"     ARRAY[s.traits, tn.traits], ARRAY[s.trait_times, tn.trait_times], $4, true) m) "
	"  FROM tn WHERE s.identifier = tn.i "
	"   AND EXISTS (SELECT 1 FROM jsonb_each_text(tn.trait_times) e "
	"     WHERE s.trait_times ->> e.key IS NULL "
	"        OR e.value COLLATE \"C\" > s.trait_times ->> e.key "
	"        OR (e.value = s.trait_times ->> e.key AND "
	"            (tn.traits -> e.key)::text COLLATE \"C\" > (s.traits -> e.key)::text)) "
	"  RETURNING s.identifier, s.traits, tn.batch_times), "
	"ti AS (INSERT INTO cdp.identifier_traits (identifier, traits, trait_times) "
	"  SELECT tn.i, tn.traits, tn.trait_times FROM tn WHERE NOT tn.stored "
	"  RETURNING identifier), "
	"tw AS (SELECT identifier FROM tu2 UNION ALL SELECT identifier FROM ti), "
	/*
	 * new keys an identifier had no room for: recorded, not silently lost;
	 * each written row with the keys it was given, never a join of what was
	 * given with what was written (a nested loop over both, quadratic)
	 */
	"tx AS (INSERT INTO cdp.identity_violations (identifier, at, rule, detail) "
	"  SELECT w.i, x.t::timestamptz, 'too_many_identifier_traits', "
	"         format('%s trait keys skipped, \"%s\" the first: an identifier holds at most %s', "
	"                x.n, x.k, $4) "
	"    FROM (SELECT identifier AS i, traits, batch_times FROM tu2 "
	"          UNION ALL SELECT tn.i, tn.traits, tn.batch_times FROM tn WHERE NOT tn.stored) w, "
	"    LATERAL (SELECT count(*) AS n, min(e.key COLLATE \"C\") AS k, max(e.value) AS t "
	"               FROM jsonb_each_text(w.batch_times) e WHERE NOT w.traits ? e.key) x "
	"   WHERE x.n > 0), "
	/* consent: the changes of decision, by time; the first is one unless the stored is like it */
	"ch AS (SELECT * FROM ROWS FROM (unnest($5), unnest($6), unnest($7), "
	"  unnest($8), unnest($9), unnest($10), unnest($11)) AS u(i, c, g, t, m, s, f)), "
	"cl AS (INSERT INTO cdp.consent_log (identifier, purpose, granted, at, message_id, source) "
	"  SELECT ch.i, ch.c, ch.g, ch.t, ch.m, ch.s FROM ch "
	"   WHERE NOT ch.f OR (SELECT (ic.consent -> ch.c ->> 'granted')::bool "
	"                        FROM cdp.identifier_consent ic WHERE ic.identifier = ch.i) "
	"                     IS DISTINCT FROM ch.g), "
	/* ... and per identifier the winning decision of each purpose */
	"cb AS (SELECT * FROM ROWS FROM (unnest($12), unnest($13)) AS u(i, e)), "
	"cu2 AS (UPDATE cdp.identifier_consent c SET consent = cdp.merge_consent(ARRAY[c.consent, cb.e]) "
	"  FROM cb WHERE c.identifier = cb.i "
	"   AND cdp.merge_consent(ARRAY[c.consent, cb.e]) <> c.consent "
	"  RETURNING c.identifier, c.consent), "
	"ci AS (INSERT INTO cdp.identifier_consent (identifier, consent) "
	"  SELECT cb.i, cb.e FROM cb "
	"   WHERE NOT EXISTS (SELECT 1 FROM cdp.identifier_consent c WHERE c.identifier = cb.i) "
	"  RETURNING identifier, consent), "
	"cw AS (SELECT * FROM cu2 UNION ALL SELECT * FROM ci) "
	/* the identifiers whose state changed */
	"SELECT identifier FROM tw UNION ALL SELECT identifier FROM cw";

/*
 * The statements of CdpWriteQueuedProfileState, in parts.  The rows of the
 * identifiers in $5: the profile holding each, its maps.
 */
#define QUEUED_ROWS \
	"SELECT i.profile_id AS p, t.traits AS tr, t.trait_times AS tt, c.consent AS e " \
	"  FROM (SELECT DISTINCT x.i FROM unnest($5) AS x(i)) u " \
	"  JOIN cdp.identities i ON i.identifier = u.i " \
	"  LEFT JOIN cdp.identifier_traits t ON t.identifier = u.i " \
	"  LEFT JOIN cdp.identifier_consent c ON c.identifier = u.i"
/*
 * ... gathered per profile.  The two trait aggregates take the same rows in
 * the same order, so their elements pair up; the merges give the same for
 * any order of maps, so no sort per profile.
 */
#define QUEUED_MAPS \
	"coalesce(array_agg(tr) FILTER (WHERE tr IS NOT NULL), '{}') AS tr, " \
	"coalesce(array_agg(tt) FILTER (WHERE tr IS NOT NULL), '{}') AS tt, " \
	"coalesce(array_agg(e) FILTER (WHERE e IS NOT NULL), '{}') AS e"
/*
 * ... merged into the record r of each, from a(tr, tt, e) (the maximum of
 * traits in $6); merge_traits called as an expression, once (OFFSET 0 keeps
 * the planner from copying the call into both columns), not as a function
 * scan that stores each row's one result in a tuplestore
 */
#define QUEUED_SET(a) \
	"(traits, trait_times) = " \
	"  (SELECT (m.x).traits, (m.x).trait_times FROM (SELECT cdp.merge_traits(" \
	"     array_prepend(r.traits, " a ".tr), array_prepend(r.trait_times, " a ".tt), $6, false) AS x " \
	"   OFFSET 0) m), " \
	"consent = cdp.merge_consent(array_prepend(r.consent, " a ".e))"

/* the state alone (no stats in $1 to $4) */
static const char *const queued_sql =
	"UPDATE cdp.profile_records r SET " QUEUED_SET("q") " "
	"FROM (SELECT p, " QUEUED_MAPS " FROM (" QUEUED_ROWS ") z GROUP BY p) q "
	"WHERE r.profile_id = q.p "
	"RETURNING r.profile_id";

/*
 * With the call's profile stats (CdpProfileStatsRows, made of $1 to $4,
 * spliced in at %s), gathered per profile with the maps (st: it has some)
 * without a join: a record that takes both is written once.  Those with
 * stats alone merge their own maps again (the same maps: they were merged
 * before) rather than taking a second statement; only those with state
 * are returned.
 */
static const char *const queued_stats_sql =
	"WITH s AS (UPDATE cdp.profile_records r SET " QUEUED_SET("x") ", " CDP_PROFILE_STATS_SET("x") " "
	"  FROM (SELECT p, " QUEUED_MAPS ", sum(n) AS n, min(lo) AS lo, max(hi) AS hi, bool_or(st) AS st "
	"          FROM (SELECT z.*, NULL::numeric AS n, NULL::timestamptz AS lo, NULL::timestamptz AS hi, "
	"                       true AS st FROM (" QUEUED_ROWS ") z "
	"                UNION ALL SELECT d.id, NULL, NULL, NULL, d.n, d.lo, d.hi, false FROM %s) y "
	"         GROUP BY p) x "
	"  WHERE r.profile_id = x.p RETURNING r.profile_id, x.st) "
	"SELECT profile_id FROM s WHERE st";

/* put n digits of v at buf */
static void
PutDigits(char *buf, int v, int n)
{
	for (int i = n - 1; i >= 0; i--)
	{
		buf[i] = '0' + v % 10;
		v /= 10;
	}
}

/*
 * A time as cdp.state_time gives it: ISO 8601 in UTC, to the microsecond,
 * written digit by digit (a write formats one per trait and purpose).
 */
static void
PushTime(JsonbParseState **st, TimestampTz at)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char	   *buf;
	JsonbValue	v;

	if (timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	if (tm.tm_year < 1 || tm.tm_year > 9999)
		buf = psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
					   tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
					   (int) fsec);
	else
	{
		buf = palloc(28);
		memcpy(buf, "0000-00-00T00:00:00.000000Z", 28);
		PutDigits(buf, tm.tm_year, 4);
		PutDigits(buf + 5, tm.tm_mon, 2);
		PutDigits(buf + 8, tm.tm_mday, 2);
		PutDigits(buf + 11, tm.tm_hour, 2);
		PutDigits(buf + 14, tm.tm_min, 2);
		PutDigits(buf + 17, tm.tm_sec, 2);
		PutDigits(buf + 20, (int) fsec, 6);
	}
	v.type = jbvString;
	v.val.string.val = buf;
	v.val.string.len = strlen(buf);
	pushJsonbValue(st, WJB_VALUE, &v);
}

/* push an object key */
static void
PushKey(JsonbParseState **st, const char *key, int len)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	pushJsonbValue(st, WJB_KEY, &k);
}

/* push a text value, or null */
static void
PushText(JsonbParseState **st, const char *text)
{
	JsonbValue	v;

	if (text == NULL)
		v.type = jbvNull;
	else
	{
		v.type = jbvString;
		v.val.string.val = (char *) text;
		v.val.string.len = strlen(text);
	}
	pushJsonbValue(st, WJB_VALUE, &v);
}

/*
 * An identifier's gathered traits as its store holds them: {key: value}
 * and {key: time}.
 */
static void
TraitMaps(PendingTrait *t, Datum *traits, Datum *times)
{
	JsonbParseState *vs = NULL;
	JsonbParseState *ts = NULL;

	pushJsonbValue(&vs, WJB_BEGIN_OBJECT, NULL);
	pushJsonbValue(&ts, WJB_BEGIN_OBJECT, NULL);
	for (; t != NULL; t = t->h.next)
	{
		JsonbValue	v;

		PushKey(&vs, t->h.name, t->h.namelen);
		v.type = jbvBinary;
		v.val.binary.data = &t->value->root;
		v.val.binary.len = VARSIZE(t->value) - VARHDRSZ;
		if (JB_ROOT_IS_SCALAR(t->value))
			(void) JsonbExtractScalar(&t->value->root, &v);
		pushJsonbValue(&vs, WJB_VALUE, &v);
		PushKey(&ts, t->h.name, t->h.namelen);
		PushTime(&ts, t->at);
	}
	*traits = JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&vs, WJB_END_OBJECT, NULL)));
	*times = JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&ts, WJB_END_OBJECT, NULL)));
}

/*
 * An identifier's winning decisions as its store holds them: {purpose:
 * {"granted", "at", "source", "message_id"}} (as cdp.consent_entry).
 */
static Datum
ConsentMap(PendingConsent *c)
{
	JsonbParseState *st = NULL;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (; c != NULL; c = c->h.next)
	{
		JsonbValue	g;

		PushKey(&st, c->h.name, c->h.namelen);
		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		PushKey(&st, "granted", 7);
		g.type = jbvBool;
		g.val.boolean = c->latest.granted;
		pushJsonbValue(&st, WJB_VALUE, &g);
		PushKey(&st, "at", 2);
		PushTime(&st, c->latest.at);
		PushKey(&st, "source", 6);
		PushText(&st, c->latest.source);
		PushKey(&st, "message_id", 10);
		PushText(&st, c->latest.message_id);
		pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	}
	return JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
}

/*
 * Mark the queue's identifiers that have a row in cdp.identifier_traits or
 * cdp.identifier_consent (one probe of the two primary keys); the others
 * are new to both tables.
 */
static void
MarkStored(CdpStateQueue *queue, Datum *ids, int n)
{
	Oid			argtypes[1] = {get_array_type(plans_type_oid)};
	Datum		args[1];
	uint64		rows;

	args[0] = CdpArray(ids, n, plans_type_oid);
	rows = CdpExecPlan(CdpPlanGeneric(&plans[PLAN_STORED],
									 "SELECT t.identifier FROM cdp.identifier_traits t "
									 " WHERE t.identifier = ANY ($1) "
									 "UNION ALL SELECT c.identifier FROM cdp.identifier_consent c "
									 " WHERE c.identifier = ANY ($1)",
									 1, argtypes),
					   args, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		bool		isnull;
		CdpIdentifier *id = (CdpIdentifier *) PG_DETOAST_DATUM_PACKED(SPI_getbinval(SPI_tuptable->vals[r],
																					  SPI_tuptable->tupdesc,
																					  1, &isnull));
		BytesKey	k = {NULL, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id)};
		CdpPendingId *p = hash_search(queue->ids, &k, HASH_FIND, NULL);

		if (p != NULL)
			p->stored = true;
	}
	SPI_freetuptable(SPI_tuptable);
}

/* rows a write gives to the state tables directly, up to DIRECT_ROWS at a time */
#define DIRECT_ROWS	1000

typedef struct DirectRows
{
	CdpDirectInsert *d;
	int			ncols;
	int			n;
	Datum		values[DIRECT_ROWS * 6];
	bool		nulls[DIRECT_ROWS * 6];
} DirectRows;

/* the three tables the state of new identifiers goes to */
typedef struct DirectWrite
{
	DirectRows	traits;			/* cdp.identifier_traits */
	DirectRows	consent;		/* cdp.identifier_consent */
	DirectRows	log;			/* cdp.consent_log */
	MemoryContext rows_cxt;		/* the rows' values until they are written */
} DirectWrite;

/* open a direct insert into cdp.name; false if the table needs a statement */
static bool
OpenDirect(DirectRows *rows, const char *name, const char *const *cols, const Oid *types,
		   int ncols)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("cdp", false));

	rows->ncols = ncols;
	rows->n = 0;
	rows->d = OidIsValid(relid) ?
		CdpBeginDirectInsert(relid, cols, types, ncols, DIRECT_ROWS, strcmp(name, "consent_log") == 0) :
		NULL;
	return rows->d != NULL;
}

/* write the rows given so far and forget their values */
static void
FlushDirect(DirectWrite *w)
{
	DirectRows *all[3] = {&w->traits, &w->consent, &w->log};

	for (int t = 0; t < 3; t++)
	{
		CdpDirectInsertRows(all[t]->d, all[t]->values, all[t]->nulls, all[t]->n);
		all[t]->n = 0;
	}
	MemoryContextReset(w->rows_cxt);
}

/*
 * The next row of rows, writing them all first when it is full (which frees
 * every value made before: make a row's values after this).
 */
static int
DirectRow(DirectWrite *w, DirectRows *rows)
{
	if (rows->n == DIRECT_ROWS)
		FlushDirect(w);
	return rows->n++ * rows->ncols;
}

/* close the direct inserts that opened */
static void
CloseDirect(DirectWrite *w)
{
	if (w->traits.d)
		CdpEndDirectInsert(w->traits.d);
	if (w->consent.d)
		CdpEndDirectInsert(w->consent.d);
	if (w->log.d)
		CdpEndDirectInsert(w->log.d);
}

/*
 * Start writing the state of identifiers new to the state tables directly
 * (the rows, then their index entries, as COPY does): false, with nothing
 * open, when a table needs a statement (see CdpBeginDirectInsert).
 */
static bool
BeginDirect(DirectWrite *w)
{
	static const char *const tcols[3] = {"identifier", "traits", "trait_times"};
	static const char *const ccols[2] = {"identifier", "consent"};
	static const char *const lcols[6] = {"identifier", "purpose", "granted", "at", "message_id",
	"source"};
	Oid			ttypes[3] = {plans_type_oid, JSONBOID, JSONBOID};
	Oid			ctypes[2] = {plans_type_oid, JSONBOID};
	Oid			ltypes[6] = {plans_type_oid, TEXTOID, BOOLOID, TIMESTAMPTZOID, TEXTOID, TEXTOID};

	memset(w, 0, offsetof(DirectWrite, rows_cxt));
	if (!OpenDirect(&w->traits, "identifier_traits", tcols, ttypes, 3) ||
		!OpenDirect(&w->consent, "identifier_consent", ccols, ctypes, 2) ||
		!OpenDirect(&w->log, "consent_log", lcols, ltypes, 6))
	{
		CloseDirect(w);
		return false;
	}
	w->rows_cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp state rows",
										ALLOCSET_DEFAULT_SIZES);
	return true;
}

/*
 * The rows of an identifier new to the state tables: what the statement of
 * WriteState makes of it (its maps as gathered, the k-th of maps, each
 * change of decision to the history), without the statement.
 */
static void
AddDirect(DirectWrite *w, CdpPendingId *p, CdpIdentifierMaps *maps, int k)
{
	MemoryContext old = MemoryContextSwitchTo(w->rows_cxt);
	Datum		id = PointerGetDatum(p->h.id);
	int			r;

	if (p->traits != NULL)
	{
		r = DirectRow(w, &w->traits);
		w->traits.values[r] = id;
		w->traits.values[r + 1] = maps->traits[k];
		w->traits.values[r + 2] = maps->times[k];
		memset(&w->traits.nulls[r], 0, sizeof(bool) * 3);
	}
	if (p->consent != NULL)
	{
		r = DirectRow(w, &w->consent);
		w->consent.values[r] = id;
		w->consent.values[r + 1] = maps->consent[k];
		memset(&w->consent.nulls[r], 0, sizeof(bool) * 2);
	}
	for (PendingConsent *c = p->consent; c != NULL; c = c->h.next)
	{
		for (int k = 0; k < c->nchanges; k++)
		{
			Decision   *d = &c->changes[k];

			/* before the values: a full table's rows are written, their values freed */
			r = DirectRow(w, &w->log);
			w->log.values[r] = id;
			w->log.values[r + 1] = CStringGetTextDatum(c->h.name);
			w->log.values[r + 2] = BoolGetDatum(d->granted);
			w->log.values[r + 3] = TimestampTzGetDatum(d->at);
			w->log.values[r + 4] = d->message_id ? CStringGetTextDatum(d->message_id) : (Datum) 0;
			w->log.values[r + 5] = CStringGetTextDatum(d->source);
			memset(&w->log.nulls[r], 0, sizeof(bool) * 6);
			w->log.nulls[r + 4] = (d->message_id == NULL);
		}
	}
	MemoryContextSwitchTo(old);
}

/* write what is left and close the direct inserts */
static void
EndDirect(DirectWrite *w)
{
	FlushDirect(w);
	CloseDirect(w);
	MemoryContextDelete(w->rows_cxt);
}

/*
 * An identifier's maps (each (Datum) 0 when it has none), built in scratch
 * (emptied) and kept at their size in the current context: the write keeps
 * them for the profiles, not what building them left behind.
 */
static void
KeptMaps(CdpPendingId *p, MemoryContext scratch, Datum *traits, Datum *times, Datum *consent)
{
	MemoryContext old = MemoryContextSwitchTo(scratch);
	Datum		built[3] = {0, 0, 0};

	if (p->traits != NULL)
		TraitMaps(p->traits, &built[0], &built[1]);
	if (p->consent != NULL)
		built[2] = ConsentMap(p->consent);
	MemoryContextSwitchTo(old);
	*traits = built[0] ? datumCopy(built[0], false, -1) : (Datum) 0;
	*times = built[1] ? datumCopy(built[1], false, -1) : (Datum) 0;
	*consent = built[2] ? datumCopy(built[2], false, -1) : (Datum) 0;
	MemoryContextReset(scratch);
}

/* by identifier, as the state tables' primary keys order them */
static int
CompareOwners(const void *a, const void *b)
{
	return CdpIdentifierCompare((*(CdpPendingId * const *) a)->h.id,
								(*(CdpPendingId * const *) b)->h.id);
}

/*
 * The queue's identifiers in the order of the state tables' keys, so that
 * their index entries go in page by page rather than all over the indexes.
 */
static CdpPendingId **
SortedIds(CdpStateQueue *queue, int nids)
{
	CdpPendingId **ids = palloc(sizeof(CdpPendingId *) * Max(nids, 1));
	HASH_SEQ_STATUS seq;
	CdpPendingId *p;
	int			n = 0;

	hash_seq_init(&seq, queue->ids);
	while ((p = hash_seq_search(&seq)) != NULL)
		ids[n++] = p;
	qsort(ids, n, sizeof(CdpPendingId *), CompareOwners);
	return ids;
}

/*
 * The gathered state: per identifier its trait values to its store (key by
 * key, the latest time wins, at most CDP_MAX_IDENTIFIER_TRAITS keys) and
 * its decisions to its latest, the changes of decision to the history (a
 * repeat of the decision before it is not history).  Returns the
 * identifiers whose rows changed, for their profiles.
 *
 * Identifiers new to both state tables (most, where people are new) are
 * written directly: their rows are the maps as gathered and every change
 * goes to the history.  The others in one statement: stored rows are
 * updated and missing ones inserted (cheaper than INSERT ... ON CONFLICT,
 * which locks each row first).  Only holders of an identifier's profile row
 * write its rows, so no other session inserts one meanwhile.
 *
 * maps gets the identifiers written directly, each with its maps and the
 * profile its last message resolved to; *all_direct says whether they are
 * all that changed and those profiles still hold them (nothing was merged
 * since), so that the profiles can take maps without reading them back.
 */
static Datum *
WriteState(CdpStateQueue *queue, int *nchanged, CdpIdentifierMaps *maps, bool *all_direct)
{
	Oid			idarray = get_array_type(plans_type_oid);
	Oid			argtypes[13] = {idarray, JSONBARRAYOID, JSONBARRAYOID, INT4OID,
		idarray, TEXTARRAYOID, BOOLARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		BOOLARRAYOID,
	idarray, JSONBARRAYOID};
	Datum		args[13];
	StateRows	traits = {0};
	StateRows	changes = {0};
	StateRows	latest = {0};
	CdpPendingId **ids;
	uint64		rows;
	Datum	   *changed;
	int			nids = (int) hash_get_num_entries(queue->ids);
	int			ndirect = 0;
	DirectWrite *direct = palloc(sizeof(DirectWrite));
	bool		is_direct;
	MemoryContext scratch;

	changed = palloc(sizeof(Datum) * Max(nids, 1));
	maps->n = 0;
	maps->profile_ids = palloc(sizeof(int64) * Max(nids, 1));
	maps->traits = palloc(sizeof(Datum) * Max(nids, 1));
	maps->times = palloc(sizeof(Datum) * Max(nids, 1));
	maps->consent = palloc(sizeof(Datum) * Max(nids, 1));
	*all_direct = true;
	scratch = AllocSetContextCreate(CurrentMemoryContext, "cdp state maps", ALLOCSET_DEFAULT_SIZES);
	ids = SortedIds(queue, nids);
	for (int i = 0; i < nids; i++)
		changed[i] = PointerGetDatum(ids[i]->h.id);
	MarkStored(queue, changed, nids);
	is_direct = BeginDirect(direct);

	for (int i = 0; i < nids; i++)
	{
		CdpPendingId *p = ids[i];
		Datum		values[7];
		bool		nulls[7] = {false};

		/* (an identifier whose message's purposes are none defined) */
		if (p->traits == NULL && p->consent == NULL)
			continue;
		if (is_direct && !p->stored && p->ntraits <= CDP_MAX_IDENTIFIER_TRAITS)
		{
			int			k = maps->n++;

			maps->profile_ids[k] = p->profile_id;
			KeptMaps(p, scratch, &maps->traits[k], &maps->times[k], &maps->consent[k]);
			*all_direct &= p->since == CdpGraphWrites();
			AddDirect(direct, p, maps, k);
			changed[ndirect++] = PointerGetDatum(p->h.id);
			continue;
		}
		values[0] = PointerGetDatum(p->h.id);
		if (p->traits != NULL)
		{
			TraitMaps(p->traits, &values[1], &values[2]);
			AddRow(&traits, 3, values, NULL);
		}
		if (p->consent == NULL)
			continue;
		for (PendingConsent *c = p->consent; c != NULL; c = c->h.next)
		{
			for (int k = 0; k < c->nchanges; k++)
			{
				Decision   *d = &c->changes[k];

				values[1] = CStringGetTextDatum(c->h.name);
				values[2] = BoolGetDatum(d->granted);
				values[3] = TimestampTzGetDatum(d->at);
				nulls[4] = (d->message_id == NULL);
				values[4] = d->message_id ? CStringGetTextDatum(d->message_id) : (Datum) 0;
				values[5] = CStringGetTextDatum(d->source);
				values[6] = BoolGetDatum(k == 0);
				AddRow(&changes, 7, values, nulls);
			}
		}
		values[1] = ConsentMap(p->consent);
		AddRow(&latest, 2, values, NULL);
	}
	if (is_direct)
		EndDirect(direct);
	pfree(direct);
	MemoryContextDelete(scratch);
	*nchanged = ndirect;
	if (traits.n == 0 && latest.n == 0)
		return changed;
	*all_direct = false;

	args[0] = ColumnArray(&traits, 0, plans_type_oid);
	args[1] = ColumnArray(&traits, 1, JSONBOID);
	args[2] = ColumnArray(&traits, 2, JSONBOID);
	args[3] = Int32GetDatum(CDP_MAX_IDENTIFIER_TRAITS);
	args[4] = ColumnArray(&changes, 0, plans_type_oid);
	args[5] = ColumnArray(&changes, 1, TEXTOID);
	args[6] = ColumnArray(&changes, 2, BOOLOID);
	args[7] = ColumnArray(&changes, 3, TIMESTAMPTZOID);
	args[8] = ColumnArray(&changes, 4, TEXTOID);
	args[9] = ColumnArray(&changes, 5, TEXTOID);
	args[10] = ColumnArray(&changes, 6, BOOLOID);
	args[11] = ColumnArray(&latest, 0, plans_type_oid);
	args[12] = ColumnArray(&latest, 1, JSONBOID);
	rows = CdpExecPlan(CdpPlanReplanned(&plans[PLAN_STATE], state_sql, 13, argtypes),
					   args, NULL, SPI_OK_SELECT);
	changed = repalloc(changed, sizeof(Datum) * Max(ndirect + rows, 1));
	for (uint64 r = 0; r < rows; r++)
	{
		bool		isnull;

		changed[ndirect + r] = PointerGetDatum(PG_DETOAST_DATUM_COPY(SPI_getbinval(SPI_tuptable->vals[r],
																					SPI_tuptable->tupdesc, 1,
																					&isnull)));
	}
	SPI_freetuptable(SPI_tuptable);
	*nchanged = ndirect + (int) rows;
	return changed;
}

/*
 * Write the gathered traits and consent into the per-identifier stores,
 * then merge the stores of the identifiers whose rows changed into the
 * profiles holding them now, and empty the queue: two statements.  Per key
 * and purpose the merge keeps the latest and an identifier's maps only gain
 * newer entries, so merging an identifier's whole maps into its profile
 * again is harmless: it stays right when a merge, split or rebuild
 * recomputed the profile in between.  What parts that rolled back gathered
 * is undone (CdpStateQueueRollback), so the caller holds these profile rows (its
 * identity resolution locked them).  Whatever runs the pipeline calls this
 * before its transaction ends.
 *
 * With stats (CdpNewProfileStats, or NULL), they are written too, and
 * emptied: in the statement that writes the state, so that a record taking
 * both (a profile made in one batch of a call and seen again in a later
 * one) is rewritten once, not twice (a new version of a grown row, which
 * seldom fits on its page, with a new index entry each time).
 */
void
CdpWriteQueuedProfileState(CdpStateQueue *queue, HTAB *stats)
{
	Oid			argtypes[6] = {INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	TIMESTAMPTZARRAYOID, InvalidOid, INT4OID};
	Datum		args[6];
	int			level;
	Datum	   *changed;
	int			nchanged;
	CdpIdentifierMaps maps;
	bool		all_direct;

	if (queue->nentries == 0)
	{
		if (stats != NULL)
			CdpWriteProfileStats(stats);
		return;
	}
	CdpCheckTypePlans(plans, NUM_QUEUE_PLANS, &plans_type_oid, CdpIdentifierTypeOid());
	level = CdpBeginIndexedPlans();
	changed = WriteState(queue, &nchanged, &maps, &all_direct);
	if (nchanged > 0 && all_direct && CdpWriteIdentifierMaps(&maps, stats))
		nchanged = 0;
	if (nchanged > 0)
	{
		uint64		rows;
		int64	   *profiles;
		bool		merged_since = false;
		bool		with_stats;

		with_stats = stats != NULL && CdpProfileStatsArrays(stats, args, &merged_since);
		argtypes[4] = get_array_type(plans_type_oid);
		args[4] = CdpArray(changed, nchanged, plans_type_oid);
		args[5] = Int32GetDatum(CDP_MAX_PROFILE_TRAITS);
		if (with_stats)
			rows = CdpExecPlan(CdpPlanReplanned(&plans[merged_since ? PLAN_QUEUED_STATS_MERGED :
														PLAN_QUEUED_STATS],
												psprintf(queued_stats_sql,
														 CdpProfileStatsRows(merged_since)),
												6, argtypes),
							   args, NULL, SPI_OK_SELECT);
		else
		{
			/* the statement names every parameter: empty stats */
			for (int a = 0; a < 4; a++)
				args[a] = PointerGetDatum(construct_empty_array(get_element_type(argtypes[a])));
			rows = CdpExecPlan(CdpPlanReplanned(&plans[PLAN_QUEUED], queued_sql, 6, argtypes),
							   args, NULL, SPI_OK_UPDATE_RETURNING);
		}
		profiles = palloc(sizeof(int64) * Max(rows, 1));

		/* audiences over declared traits and consent follow at commit */
		for (uint64 r = 0; r < rows; r++)
		{
			bool		isnull;

			profiles[r] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
		CdpProfilesChanged(profiles, (int) rows);
		if (with_stats)
			CdpClearProfileStats(stats);
	}
	CdpEndIndexedPlans(level);
	CdpStartStateQueue(queue);
	/* stats of profiles no state changed (or none left with stats) */
	if (stats != NULL)
		CdpWriteProfileStats(stats);
}
