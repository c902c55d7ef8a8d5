/*
 * audience_feed.c
 *	  Writing what an audience evaluation decided: the stays that begin and
 *	  the change feed's rows, each of those also emitted as a logical
 *	  message, in the order the evaluation sorts them (by profile, audience,
 *	  exit before entry).  cdp.write_audience_changes is an aggregate over
 *	  the evaluation's changes that writes them a thousand at a time:
 *	  straight into the tables, as COPY writes, where the tables allow it
 *	  (see direct_insert.c), else by INSERT statements (a user's triggers
 *	  run then, and the feed tells what those stored).  Written by INSERT
 *	  ... RETURNING inside the evaluation's statement, the stays and the
 *	  feed were half of evaluating a commit's changes.
 *
 *	  The aggregate orders its input, so it writes only after the
 *	  statement has read everything it reads: its rows, written under a
 *	  later command, are never seen by the statement that decided them.
 */
#include "postgres.h"

#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "fmgr.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "spi_util.h"

PG_FUNCTION_INFO_V1(cdp_audience_changes_step);
PG_FUNCTION_INFO_V1(cdp_audience_changes_final);

/* rows written at a time */
#define FEED_ROWS	1000

#define SPAN_COLS	4
#define FEED_COLS	5

static const char *const span_cols[SPAN_COLS] = {"audience_id", "profile_id", "entered_at", "announced"};
static const Oid span_types[SPAN_COLS] = {INT4OID, INT8OID, TIMESTAMPTZOID, BOOLOID};
static const char *const feed_cols[FEED_COLS] = {"id", "audience", "profile_id", "change", "at"};
static const Oid feed_types[FEED_COLS] = {INT8OID, TEXTOID, INT8OID, TEXTOID, TIMESTAMPTZOID};

static SPIPlanPtr span_insert_plan = NULL;
static SPIPlanPtr feed_insert_plan = NULL;

typedef struct FeedWriter
{
	MemoryContext rows_cxt;		/* the buffered rows' texts, reset when written */
	TimestampTz at;				/* the transaction's now(): entries and changes */
	Oid			spans_rel;
	Oid			feed_rel;
	Oid			feed_seq;		/* the feed's identity sequence */
	bool		opened;
	CdpDirectInsert *spans;		/* NULL: INSERT statements */
	CdpDirectInsert *feed;
	int			nspans;
	Datum		span_values[FEED_ROWS * SPAN_COLS];
	int			nfeed;
	Datum		feed_values[FEED_ROWS * FEED_COLS];
	int32		feed_audience[FEED_ROWS];	/* the audience id of each */
	bool		feed_begins[FEED_ROWS]; /* it tells of a stay buffered to begin */
	HTAB	   *stored_stays;	/* StayKeys of a buffer written by statement */
	Datum		entered;		/* the texts of the two changes */
	Datum		exited;
	int64		fed;			/* feed rows written */
	char		at_text[MAXDATELEN + 1];	/* at as to_json prints it, unquoted */
} FeedWriter;

static FeedWriter *
NewFeedWriter(MemoryContext agg)
{
	MemoryContext old = MemoryContextSwitchTo(agg);
	FeedWriter *w = palloc0(sizeof(FeedWriter));
	Oid			cdp = get_namespace_oid("cdp", false);
	w->rows_cxt = AllocSetContextCreate(agg, "cdp audience changes", ALLOCSET_DEFAULT_SIZES);
	w->at = GetCurrentTransactionStartTimestamp();
	w->spans_rel = get_relname_relid("audience_spans", cdp);
	w->feed_rel = get_relname_relid("audience_changes", cdp);
	if (!OidIsValid(w->spans_rel) || !OidIsValid(w->feed_rel))
		elog(ERROR, "pg_cdp: cdp.audience_spans or cdp.audience_changes is missing");
	w->feed_seq = getIdentitySequence(w->feed_rel, get_attnum(w->feed_rel, "id"), false);
	w->entered = CStringGetTextDatum("entered");
	w->exited = CStringGetTextDatum("exited");
	JsonEncodeDateTime(w->at_text, TimestampTzGetDatum(w->at), TIMESTAMPTZOID, NULL);
	MemoryContextSwitchTo(old);
	return w;
}

/* the direct inserts, opened at the first write (NULL where a table needs INSERT) */
static void
OpenWriters(FeedWriter *w, MemoryContext agg)
{
	MemoryContext old = MemoryContextSwitchTo(agg);

	w->spans = CdpBeginDirectInsert(w->spans_rel, span_cols, span_types, SPAN_COLS, FEED_ROWS, false);
	w->feed = CdpBeginDirectInsert(w->feed_rel, feed_cols, feed_types, FEED_COLS, FEED_ROWS, false);
	w->opened = true;
	MemoryContextSwitchTo(old);
}

/* column c of n rows of width ncols as an array of type elemtype */
static Datum
Column(Datum *values, int n, int ncols, int c, Oid elemtype)
{
	Datum	   *col = palloc(sizeof(Datum) * n);

	for (int r = 0; r < n; r++)
		col[r] = values[r * ncols + c];
	return CdpArray(col, n, elemtype);
}

typedef void (*ReturnedRow) (FeedWriter *w, HeapTuple row, TupleDesc desc);

/*
 * Rows of width ncols by an INSERT ... SELECT FROM unnest(...) RETURNING
 * of sql; each row the table took (after its triggers) to returned.
 */
static void
InsertByStatement(FeedWriter *w, SPIPlanPtr *plan, const char *sql, Datum *values, int n,
				  int ncols, const Oid *types, ReturnedRow returned)
{
	Oid			argtypes[FEED_COLS];
	Datum		args[FEED_COLS];

	for (int c = 0; c < ncols; c++)
	{
		argtypes[c] = get_array_type(types[c]);
		args[c] = Column(values, n, ncols, c, types[c]);
	}
	SPI_connect();
	CdpExecPlan(CdpPlan(plan, sql, ncols, argtypes), args, NULL, SPI_OK_INSERT_RETURNING);
	for (uint64 r = 0; r < SPI_processed; r++)
		returned(w, SPI_tuptable->vals[r], SPI_tuptable->tupdesc);
	SPI_finish();
}

static int64
Int8Column(HeapTuple row, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(row, desc, attno, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/* a stay's key: its profile and audience */
typedef struct StayKey
{
	int64		profile_id;
	int32		audience_id;
	int32		pad;
} StayKey;

static void
StayStored(FeedWriter *w, HeapTuple row, TupleDesc desc)
{
	StayKey		key;

	memset(&key, 0, sizeof(key));
	key.audience_id = (int32) Int8Column(row, desc, 1);
	key.profile_id = Int8Column(row, desc, 2);
	(void) hash_search(w->stored_stays, &key, HASH_ENTER, NULL);
}

/*
 * The stays that begin.  By statement, a user's trigger may keep some
 * out: the feed then does not tell of them (as it tells of what INSERT
 * ... RETURNING returned).
 */
static void
WriteSpans(FeedWriter *w)
{
	HASHCTL		ctl;
	int			kept = 0;

	if (w->nspans == 0)
		return;
	if (w->spans != NULL)
	{
		CdpDirectInsertRows(w->spans, w->span_values, NULL, w->nspans);
		w->nspans = 0;
		return;
	}
	ctl.keysize = ctl.entrysize = sizeof(StayKey);
	ctl.hcxt = w->rows_cxt;
	w->stored_stays = hash_create("cdp audience stays stored", w->nspans, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	InsertByStatement(w, &span_insert_plan,
					  "INSERT INTO cdp.audience_spans (audience_id, profile_id, entered_at, announced) "
					  "SELECT * FROM unnest($1, $2, $3, $4) RETURNING audience_id::bigint, profile_id",
					  w->span_values, w->nspans, SPAN_COLS, span_types, StayStored);
	for (int r = 0; r < w->nfeed; r++)
	{
		StayKey		key;

		memset(&key, 0, sizeof(key));
		key.audience_id = w->feed_audience[r];
		key.profile_id = DatumGetInt64(w->feed_values[r * FEED_COLS + 2]);
		if (w->feed_begins[r] && hash_search(w->stored_stays, &key, HASH_FIND, NULL) == NULL)
			continue;
		if (kept != r)
		{
			memcpy(&w->feed_values[kept * FEED_COLS], &w->feed_values[r * FEED_COLS],
				   sizeof(Datum) * FEED_COLS);
			w->feed_audience[kept] = w->feed_audience[r];
			w->feed_begins[kept] = w->feed_begins[r];
		}
		kept++;
	}
	w->nfeed = kept;
	hash_destroy(w->stored_stays);
	w->stored_stays = NULL;
	w->nspans = 0;
}

/*
 * A feed row's logical message: the text jsonb_build_object('id', ...,
 * 'at', ...)::text gives, made directly (audience names and changes need
 * no escaping).
 */
static void
EmitChange(FeedWriter *w, int64 id, const char *audience, const char *change, int64 profile_id,
		   TimestampTz at)
{
	char		buf[MAXDATELEN + 1];
	char	   *msg;

	msg = psprintf("{\"at\": \"%s\", \"id\": " INT64_FORMAT ", \"change\": \"%s\", "
				   "\"audience\": \"%s\", \"profile_id\": " INT64_FORMAT "}",
				   at == w->at ? w->at_text :
				   JsonEncodeDateTime(buf, TimestampTzGetDatum(at), TIMESTAMPTZOID, NULL),
				   id, change, audience, profile_id);
	LogLogicalMessage("cdp", msg, strlen(msg), true);
	pfree(msg);
	w->fed++;
}

/* a feed row the table took by statement, as it took it */
static void
ChangeStored(FeedWriter *w, HeapTuple row, TupleDesc desc)
{
	bool		isnull;

	EmitChange(w, Int8Column(row, desc, 1), SPI_getvalue(row, desc, 2), SPI_getvalue(row, desc, 4),
			   Int8Column(row, desc, 3),
			   DatumGetTimestampTz(SPI_getbinval(row, desc, 5, &isnull)));
}

/* the feed's rows, then their messages */
static void
WriteFeed(FeedWriter *w)
{
	if (w->nfeed == 0)
		return;
	if (w->feed == NULL)
		InsertByStatement(w, &feed_insert_plan,
						  "INSERT INTO cdp.audience_changes (id, audience, profile_id, change, at) "
						  "OVERRIDING SYSTEM VALUE SELECT * FROM unnest($1, $2, $3, $4, $5) "
						  "RETURNING id, audience, profile_id, change, at",
						  w->feed_values, w->nfeed, FEED_COLS, feed_types, ChangeStored);
	else
	{
		CdpDirectInsertRows(w->feed, w->feed_values, NULL, w->nfeed);
		for (int r = 0; r < w->nfeed; r++)
		{
			Datum	   *row = &w->feed_values[r * FEED_COLS];

			EmitChange(w, DatumGetInt64(row[0]), TextDatumGetCString(row[1]),
					   TextDatumGetCString(row[3]), DatumGetInt64(row[2]), w->at);
		}
	}
	w->nfeed = 0;
}

/* what is buffered, written: the stays first, as the feed tells of them */
static void
WriteBuffered(FeedWriter *w)
{
	WriteSpans(w);
	WriteFeed(w);
	MemoryContextReset(w->rows_cxt);
}

/*
 * write_audience_changes(audience_id, audience, profile_id, begins,
 * announced, change): a stay of the profile in the audience begins (with
 * announced) when begins, and change ('entered' or 'exited', NULL: none)
 * goes to the feed.
 */
Datum
cdp_audience_changes_step(PG_FUNCTION_ARGS)
{
	MemoryContext agg;
	MemoryContext old;
	FeedWriter *w;

	if (!AggCheckCallContext(fcinfo, &agg))
		elog(ERROR, "cdp_audience_changes_step called outside an aggregate");
	w = PG_ARGISNULL(0) ? NewFeedWriter(agg) : (FeedWriter *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		elog(ERROR, "cdp_audience_changes_step: audience, profile and begins must not be NULL");
	if (!w->opened)
		OpenWriters(w, agg);
	/* the rows' datums live to their write (int8s are pointers on some builds) */
	old = MemoryContextSwitchTo(w->rows_cxt);
	if (PG_GETARG_BOOL(4))
	{
		Datum	   *row = &w->span_values[w->nspans++ * SPAN_COLS];

		if (PG_ARGISNULL(5))
			elog(ERROR, "cdp_audience_changes_step: a stay that begins needs announced");
		row[0] = PG_GETARG_DATUM(1);
		row[1] = Int64GetDatum(PG_GETARG_INT64(3));
		row[2] = TimestampTzGetDatum(w->at);
		row[3] = PG_GETARG_DATUM(5);
	}
	if (!PG_ARGISNULL(6))
	{
		int			r = w->nfeed++;
		Datum	   *row = &w->feed_values[r * FEED_COLS];
		char	   *change = TextDatumGetCString(PG_GETARG_DATUM(6));

		w->feed_audience[r] = PG_GETARG_INT32(1);
		w->feed_begins[r] = PG_GETARG_BOOL(4);
		row[0] = Int64GetDatum(nextval_internal(w->feed_seq, false));
		row[1] = PointerGetDatum(DatumGetTextPCopy(PG_GETARG_DATUM(2)));
		row[2] = Int64GetDatum(PG_GETARG_INT64(3));
		if (strcmp(change, "entered") == 0)
			row[3] = w->entered;
		else if (strcmp(change, "exited") == 0)
			row[3] = w->exited;
		else
			elog(ERROR, "cdp_audience_changes_step: unknown change \"%s\"", change);
		row[4] = TimestampTzGetDatum(w->at);
	}
	MemoryContextSwitchTo(old);
	if (w->nspans == FEED_ROWS || w->nfeed == FEED_ROWS)
		WriteBuffered(w);
	PG_RETURN_POINTER(w);
}

/* the rest written; the number of feed rows written */
Datum
cdp_audience_changes_final(PG_FUNCTION_ARGS)
{
	FeedWriter *w;

	if (!AggCheckCallContext(fcinfo, NULL))
		elog(ERROR, "cdp_audience_changes_final called outside an aggregate");
	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	w = (FeedWriter *) PG_GETARG_POINTER(0);
	WriteBuffered(w);
	if (w->spans != NULL)
		CdpEndDirectInsert(w->spans);
	if (w->feed != NULL)
		CdpEndDirectInsert(w->feed);
	w->spans = w->feed = NULL;
	PG_RETURN_INT64(w->fed);
}
