/*
 * partitions.c
 *	  Partitions of cdp.events: routing an event time to its partition,
 *	  creating partitions on demand (from the ingest path) and ahead of time
 *	  (maintenance), and reporting their ranges.
 *
 *	  Ranges are aligned: fixed intervals to Monday 2000-01-03 00:00 UTC (so
 *	  days start at midnight UTC and weeks on Monday), month intervals to
 *	  calendar months in UTC.  A range that would overlap a partition made
 *	  under an older interval is clipped to the gap.
 *
 *	  Bounds on what writers can make: a range that ended more than
 *	  archive_after ago spans archive_interval (a month by default) instead of
 *	  part_interval, so backfilling years of history makes one partition a
 *	  month; an event older than cdp.max_event_age, or further ahead of now
 *	  than cdp.max_future_skew, is dead-lettered; and ingest creates no
 *	  partition beyond cdp.max_partitions (maintenance's premaking still does,
 *	  so live traffic keeps flowing while backfills are refused).
 *
 *	  Concurrency: partition DDL is serialised by a transaction-scoped advisory
 *	  lock, and a session re-reads the catalog after taking it, so two sessions
 *	  that need the same new partition both succeed: the second waits and then
 *	  uses the first one's.  Partitions are made with CREATE TABLE and ATTACH
 *	  PARTITION, which takes only SHARE UPDATE EXCLUSIVE on cdp.events, so
 *	  readers and writers of other partitions are never blocked.
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "partitioning/partdesc.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "partitions.h"

/* Monday 2000-01-03 00:00 UTC, in microseconds from the PostgreSQL epoch */
#define ALIGN_ANCHOR	(2 * USECS_PER_DAY)
#define MIN_PART_USECS	USECS_PER_HOUR
#define MAX_PREMAKE		1000
/* longest partition: 10 years, as months or as a fixed length */
#define MAX_PART_MONTHS	120
#define MAX_PART_DAYS	3660
/* longest retention or archive_after */
#define MAX_AGE_YEARS	1000

typedef struct CachedPartition
{
	TimestampTz lo;
	TimestampTz hi;
	Oid			relid;
} CachedPartition;

/* this backend's copy of the partition list, reloaded after relcache inval */
static Oid	cache_parent = InvalidOid;
static bool cache_valid = false;
static CachedPartition *cache = NULL;
static int	cache_len = 0;

void
CdpPartitionCacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cache_parent)
		cache_valid = false;
}

Oid
CdpEventsRelid(void)
{
	Oid			relid = get_relname_relid("events", get_namespace_oid("cdp", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table cdp.events does not exist"),
				 errhint("Is the pg_cdp extension installed in this database?")));
	return relid;
}

static TimestampTz
BoundValue(List *datums)
{
	PartitionRangeDatum *d = linitial_node(PartitionRangeDatum, datums);

	if (d->kind == PARTITION_RANGE_DATUM_MINVALUE)
		return DT_NOBEGIN;
	if (d->kind == PARTITION_RANGE_DATUM_MAXVALUE)
		return DT_NOEND;
	return DatumGetTimestampTz(castNode(Const, d->value)->constvalue);
}

static int
CompareByLo(const void *a, const void *b)
{
	const CachedPartition *pa = a;
	const CachedPartition *pb = b;

	if (pa->lo == pb->lo)
		return 0;
	return pa->lo < pb->lo ? -1 : 1;
}

/*
 * Read the attached partitions and their bounds from the catalog, sorted by
 * lower bound, with those pending detach (a DETACH ... CONCURRENTLY under way
 * or interrupted) unless omit_pending.  Allocated in the given context.
 */
static CachedPartition *
ReadPartitions(Oid parent, int *count, MemoryContext cxt, bool omit_pending)
{
	Relation	rel = table_open(parent, AccessShareLock);
	PartitionDesc pd = RelationGetPartitionDesc(rel, omit_pending);
	CachedPartition *parts;
	int			n = 0;

	parts = MemoryContextAlloc(cxt, sizeof(CachedPartition) * Max(pd->nparts, 1));
	for (int i = 0; i < pd->nparts; i++)
	{
		HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(pd->oids[i]));
		Datum		bound;
		bool		isnull;
		PartitionBoundSpec *spec;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", pd->oids[i]);
		bound = SysCacheGetAttr(RELOID, tup, Anum_pg_class_relpartbound, &isnull);
		if (isnull)
			elog(ERROR, "partition %u has no bound", pd->oids[i]);
		spec = castNode(PartitionBoundSpec, stringToNode(TextDatumGetCString(bound)));
		ReleaseSysCache(tup);
		if (spec->is_default)
			continue;			/* never ours; ingest routes around it */
		parts[n].relid = pd->oids[i];
		parts[n].lo = BoundValue(spec->lowerdatums);
		parts[n].hi = BoundValue(spec->upperdatums);
		n++;
	}
	table_close(rel, AccessShareLock);
	qsort(parts, n, sizeof(CachedPartition), CompareByLo);
	*count = n;
	return parts;
}

static void
EnsureCache(Oid parent)
{
	if (cache_valid && cache_parent == parent)
		return;
	cache_parent = parent;
	if (cache != NULL)
		pfree(cache);
	cache = NULL;
	cache_len = 0;
	cache = ReadPartitions(parent, &cache_len, TopMemoryContext, true);
	cache_valid = true;
}

/* index of the cached partition holding ts, or -1 and the hole around ts */
static int
FindCached(TimestampTz ts, TimestampTz *gap_lo, TimestampTz *gap_hi)
{
	int			lo = 0,
				hi = cache_len - 1;

	*gap_lo = DT_NOBEGIN;
	*gap_hi = DT_NOEND;
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (ts < cache[mid].lo)
		{
			*gap_hi = cache[mid].lo;
			hi = mid - 1;
		}
		else if (ts >= cache[mid].hi)
		{
			*gap_lo = cache[mid].hi;
			lo = mid + 1;
		}
		else
			return mid;
	}
	return -1;
}

static int64
FloorDiv(int64 a, int64 b)
{
	int64		q = a / b;

	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* ts broken down in UTC; an error for the few times that cannot be */
static void
ToTm(TimestampTz ts, struct pg_tm *tm, fsec_t *fsec)
{
	if (timestamp2tm(ts, NULL, tm, fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
}

static TimestampTz
MonthStart(int64 months_since_2000)
{
	struct pg_tm tm;
	Timestamp	result;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = 2000 + (int) FloorDiv(months_since_2000, 12);
	tm.tm_mon = (int) (months_since_2000 - FloorDiv(months_since_2000, 12) * 12) + 1;
	tm.tm_mday = 1;
	if (tm2timestamp(&tm, 0, NULL, &result) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("partition bound out of range")));
	return result;
}

/* the aligned range [lo, hi) of the configured interval that holds ts */
static void
AlignedRange(TimestampTz ts, const Interval *iv, TimestampTz *lo, TimestampTz *hi)
{
	if (iv->month != 0)
	{
		struct pg_tm tm;
		fsec_t		fsec;
		int64		months;

		ToTm(ts, &tm, &fsec);
		months = (int64) (tm.tm_year - 2000) * 12 + tm.tm_mon - 1;
		months = FloorDiv(months, iv->month) * iv->month;
		*lo = MonthStart(months);
		*hi = MonthStart(months + iv->month);
	}
	else
	{
		int64		len = iv->day * USECS_PER_DAY + iv->time;

		*lo = ALIGN_ANCHOR + FloorDiv(ts - ALIGN_ANCHOR, len) * len;
		*hi = *lo + len;
	}
}

/* "2026-11-26 00:00:00.000000+00": unambiguous whatever DateStyle says */
static char *
UtcLiteral(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	ToTm(ts, &tm, &fsec);
	return psprintf("%04d-%02d-%02d %02d:%02d:%02d.%06d+00",
					tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min,
					tm.tm_sec, fsec);
}

/* midnight UTC on the first of a month: where whole-month ranges start and end */
static bool
IsMonthStart(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	ToTm(ts, &tm, &fsec);
	return tm.tm_mday == 1 && tm.tm_hour == 0 && tm.tm_min == 0 && tm.tm_sec == 0 && fsec == 0;
}

/*
 * events_pYYYYMM for whole calendar months (archive ranges, month
 * intervals), else events_pYYYYMMDD, with _HHMI[SS] when the range starts
 * inside a day: the name says what the range is.
 */
static char *
PartitionName(TimestampTz lo, TimestampTz hi, Oid nsp)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char	   *base;
	char	   *name;

	ToTm(lo, &tm, &fsec);
	if (IsMonthStart(lo) && IsMonthStart(hi))
		base = psprintf("events_p%04d%02d", tm.tm_year, tm.tm_mon);
	else if (tm.tm_sec != 0 || fsec != 0)
		base = psprintf("events_p%04d%02d%02d_%02d%02d%02d", tm.tm_year, tm.tm_mon,
						tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	else if (tm.tm_hour != 0 || tm.tm_min != 0)
		base = psprintf("events_p%04d%02d%02d_%02d%02d", tm.tm_year, tm.tm_mon,
						tm.tm_mday, tm.tm_hour, tm.tm_min);
	else
		base = psprintf("events_p%04d%02d%02d", tm.tm_year, tm.tm_mon, tm.tm_mday);

	/* a detached partition may still hold the plain name */
	name = base;
	for (int suffix = 2; OidIsValid(get_relname_relid(name, nsp)); suffix++)
		name = psprintf("%s_%d", base, suffix);
	return name;
}

static void
ExecuteDdl(const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute(sql, false, 0);

	MemoryContextSwitchTo(cxt); /* SPI leaves us in its own context */

	if (rc < 0)
		elog(ERROR, "partition DDL failed (%s): %s", SPI_result_code_string(rc), sql);
}

static void
CreatePartition(TimestampTz lo, TimestampTz hi)
{
	Oid			nsp = get_namespace_oid("cdp", false);
	const char *name = quote_identifier(PartitionName(lo, hi, nsp));

	ExecuteDdl(psprintf("CREATE TABLE cdp.%s (LIKE cdp.events INCLUDING DEFAULTS "
						"INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)",
						name));
	ExecuteDdl(psprintf("ALTER TABLE cdp.events ATTACH PARTITION cdp.%s "
						"FOR VALUES FROM (%s) TO (%s)",
						name, quote_literal_cstr(UtcLiteral(lo)),
						quote_literal_cstr(UtcLiteral(hi))));
	CommandCounterIncrement();
}

/* the range a new partition for ts gets: archive_interval for old times */
static void
RangeFor(TimestampTz ts, const CdpPartitionConfig *config, TimestampTz *lo, TimestampTz *hi)
{
	if (config->has_archive)
	{
		AlignedRange(ts, &config->archive_interval, lo, hi);
		if (*hi <= config->archive_before)
			return;
	}
	AlignedRange(ts, &config->part_interval, lo, hi);
}

/*
 * The partition that holds ts, created if there is none; -1 if one is
 * needed and limit (when > 0) partitions exist already.  The caller must
 * hold a lock on cdp.events (so no partition can be dropped under it) and an
 * SPI connection.
 */
static int
FindOrCreate(Oid parent, TimestampTz ts, const CdpPartitionConfig *config, int limit,
			 bool *created)
{
	TimestampTz gap_lo,
				gap_hi,
				lo,
				hi;
	int			idx;

	*created = false;
	EnsureCache(parent);
	idx = FindCached(ts, &gap_lo, &gap_hi);
	if (idx >= 0)
		return idx;

	/* serialise partition DDL; then look again, another session may have won */
	DirectFunctionCall2(pg_advisory_xact_lock_int4,
						Int32GetDatum(CDP_LOCK_CLASS), Int32GetDatum(CDP_LOCK_PARTITION_DDL));
	AcceptInvalidationMessages();
	EnsureCache(parent);
	idx = FindCached(ts, &gap_lo, &gap_hi);
	if (idx >= 0)
		return idx;
	if (limit > 0 && cache_len >= limit)
		return -1;

	RangeFor(ts, config, &lo, &hi);
	lo = Max(lo, gap_lo);
	hi = Min(hi, gap_hi);
	CreatePartition(lo, hi);
	*created = true;

	EnsureCache(parent);
	idx = FindCached(ts, &gap_lo, &gap_hi);
	if (idx < 0)
		elog(ERROR, "partition for %s was created but cannot be found", timestamptz_to_str(ts));
	return idx;
}

/*
 * Whether msg's event time lies within what a writer may ask a partition
 * for; if not it is marked dead.  The future bound is against the clock: a
 * receipt time can be no later than now, so only an inbox row loaded with a
 * receipt time ahead of the clock can fail it.
 */
static bool
WithinEventTimeBounds(CdpMessage *msg, const CdpPartitionConfig *config, TimestampTz newest)
{
	if (msg->ts < config->oldest_accepted)
	{
		/* timestamptz_to_str returns a static buffer: one call per copy */
		CdpMarkDead(msg, "too_old",
					"event time %s is before %s, the oldest cdp.max_event_age accepts",
					pstrdup(timestamptz_to_str(msg->ts)),
					pstrdup(timestamptz_to_str(config->oldest_accepted)));
		return false;
	}
	if (msg->ts > newest)
	{
		CdpMarkDead(msg, "too_far_ahead",
					"event time %s is after %s, more than cdp.max_future_skew ahead of now",
					pstrdup(timestamptz_to_str(msg->ts)), pstrdup(timestamptz_to_str(newest)));
		return false;
	}
	return true;
}

/*
 * Set each pending message's partition, creating the missing ones; returns
 * how many were created.  Runs before deduplication so that partition DDL
 * happens while this transaction holds as few row locks as possible.
 */
int
CdpRouteEvents(CdpMessage **msgs, int n, const CdpPartitionConfig *config)
{
	Oid			parent = CdpEventsRelid();
	int			ncreated = 0;
	int			last = -1;
	TimestampTz newest = GetCurrentTimestamp() + (int64) cdp_max_future_skew_secs * USECS_PER_SEC;

	LockRelationOid(parent, RowExclusiveLock);
	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];
		bool		created;

		if (msg->outcome != CDP_PENDING || !WithinEventTimeBounds(msg, config, newest))
			continue;
		/* consecutive events mostly share a partition */
		if (last < 0 || !cache_valid || msg->ts < cache[last].lo || msg->ts >= cache[last].hi)
		{
			int			idx = FindOrCreate(parent, msg->ts, config, cdp_max_partitions, &created);

			if (idx < 0)
			{
				CdpMarkDead(msg, "partition_limit",
							"event time %s needs a new partition and cdp.events has %d, "
							"the most cdp.max_partitions allows",
							timestamptz_to_str(msg->ts), cache_len);
				last = -1;		/* the cache may have been reloaded */
				continue;
			}
			last = idx;
			if (created)
				ncreated++;
		}
		msg->partition = cache[last].relid;
	}
	return ncreated;
}

/* Make sure partitions cover [from, upto); returns how many were created. */
int
CdpCreatePartitionsThrough(TimestampTz from, TimestampTz upto, const CdpPartitionConfig *config)
{
	Oid			parent = CdpEventsRelid();
	int			ncreated = 0;
	TimestampTz t = from;

	LockRelationOid(parent, RowExclusiveLock);
	while (t < upto)
	{
		bool		created;
		int			idx = FindOrCreate(parent, t, config, 0, &created);

		if (created)
			ncreated++;
		t = cache[idx].hi;
		CHECK_FOR_INTERRUPTS();
	}
	return ncreated;
}

/* How many partitions cdp.events has (what cdp.max_partitions limits). */
int
CdpPartitionCount(void)
{
	Relation	rel = table_open(CdpEventsRelid(), AccessShareLock);
	int			n = RelationGetPartitionDesc(rel, true)->nparts;

	table_close(rel, AccessShareLock);
	return n;
}

/*
 * Partitions whose whole range lies before horizon, as a List of Oids; those
 * pending detach too with_pending.
 */
List *
CdpPartitionsEndingBefore(TimestampTz horizon, bool with_pending)
{
	Oid			parent = CdpEventsRelid();
	List	   *result = NIL;
	CachedPartition *parts;
	int			n;

	parts = ReadPartitions(parent, &n, CurrentMemoryContext, !with_pending);
	for (int i = 0; i < n; i++)
		if (parts[i].hi <= horizon)
			result = lappend_oid(result, parts[i].relid);
	return result;
}

/* t - iv, calendar-aware (months, then days, then time) */
static TimestampTz
MinusInterval(TimestampTz t, const Interval *iv)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
												   TimestampTzGetDatum(t),
												   IntervalPGetDatum(iv)));
}

/* interval ordering as SQL has it (a month is 30 days), without overflow */
static int
IntervalCmp(const Interval *a, const Interval *b)
{
	return DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(a),
											 IntervalPGetDatum(b)));
}

TimestampTz
CdpRetentionHorizon(const CdpPartitionConfig *config, TimestampTz now)
{
	if (!config->has_retention)
		return DT_NOBEGIN;
	return MinusInterval(now, &config->retention);
}

/*
 * A partition interval must be alignable: whole months or a fixed length,
 * from 1 hour to about 10 years, so that range arithmetic never overflows.
 */
static void
ValidateInterval(const Interval *iv)
{
	if (iv->month != 0 && (iv->day != 0 || iv->time != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition interval must be whole months or a fixed length, not both"),
				 errhint("Use for example '1 month', '1 day' or '6 hours'.")));
	/* bounded components first, so that the length below cannot overflow */
	if (iv->month > MAX_PART_MONTHS ||
		iv->day > MAX_PART_DAYS || iv->day < -MAX_PART_DAYS ||
		iv->time > MAX_PART_DAYS * USECS_PER_DAY || iv->time < -MAX_PART_DAYS * USECS_PER_DAY ||
		iv->day * USECS_PER_DAY + iv->time > MAX_PART_DAYS * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition interval must be at most %d months or %d days",
						MAX_PART_MONTHS, MAX_PART_DAYS)));
	if (iv->month < 0 || (iv->month == 0 && iv->day * USECS_PER_DAY + iv->time < MIN_PART_USECS))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition interval must be at least 1 hour")));
}

/*
 * A time span subtracted from now: no negative part, and at most
 * MAX_AGE_YEARS, so that now minus it is always a valid time.
 */
static void
ValidateAge(const Interval *iv, const char *what, bool allow_zero)
{
	Interval	max;

	memset(&max, 0, sizeof(max));
	max.month = MAX_AGE_YEARS * MONTHS_PER_YEAR;
	if (iv->month < 0 || iv->day < 0 || iv->time < 0 ||
		(!allow_zero && iv->month == 0 && iv->day == 0 && iv->time == 0) ||
		IntervalCmp(iv, &max) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a %s interval of at most %d years",
						what, allow_zero ? "non-negative" : "positive", MAX_AGE_YEARS),
				 allow_zero ? 0 : errhint("Pass NULL to keep everything.")));
}

/* retention_mode names what retention does: 'drop' or 'detach' */
static void
ValidateMode(const char *mode)
{
	if (strcmp(mode, "drop") != 0 && strcmp(mode, "detach") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retention_mode must be 'drop' or 'detach', not \"%s\"", mode)));
}

/*
 * Refuse (22023) settings that cannot work: a range too long to align, a
 * time span that would take now() out of range, and so on.  Used on
 * configure_partitions' arguments and on the row read back, which an owner
 * may have edited by hand.
 */
static void
ValidateConfig(const CdpPartitionConfig *config, bool archive_set)
{
	ValidateInterval(&config->part_interval);
	if (config->premake < 0 || config->premake > MAX_PREMAKE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("premake must be between 0 and %d", MAX_PREMAKE)));
	if (config->has_retention)
		ValidateAge(&config->retention, "retention", false);
	ValidateMode(config->retention_mode);
	if (archive_set)
	{
		const Interval *a = &config->archive_interval;

		if (a->day != 0 || a->time != 0 || a->month < 1 || a->month > MAX_PART_MONTHS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("archive_interval must be whole months, from 1 month to %d months, or NULL",
							MAX_PART_MONTHS),
					 errhint("Use for example '1 month', '3 months' or '1 year'.")));
	}
	ValidateAge(&config->archive_after, "archive_after", true);
}

/* says where a bad setting came from when the stored row is refused */
static void
ConfigRowContext(void *arg)
{
	errcontext("reading cdp.partition_config");
}

/*
 * Read cdp.partition_config, and derive the bounds that depend on now (the
 * transaction's start); needs an SPI connection.
 */
void
CdpLoadPartitionConfig(CdpPartitionConfig *config)
{
	bool		isnull;
	Datum		d;
	HeapTuple	row;
	TupleDesc	desc;
	int			rc;
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	bool		archive_set;
	ErrorContextCallback context;

	rc = SPI_execute("SELECT part_interval, premake, retention, retention_mode, "
					 "archive_interval, archive_after FROM cdp.partition_config",
					 false, 1);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "cdp.partition_config must hold exactly one row");
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	config->part_interval = *DatumGetIntervalP(SPI_getbinval(row, desc, 1, &isnull));
	config->premake = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	d = SPI_getbinval(row, desc, 3, &isnull);
	config->has_retention = !isnull;
	if (!isnull)
		config->retention = *DatumGetIntervalP(d);
	strlcpy(config->retention_mode, SPI_getvalue(row, desc, 4), sizeof(config->retention_mode));
	d = SPI_getbinval(row, desc, 5, &isnull);
	archive_set = !isnull;
	config->has_archive = false;
	config->archive_after = *DatumGetIntervalP(SPI_getbinval(row, desc, 6, &isnull));
	if (archive_set)
	{
		config->archive_interval = *DatumGetIntervalP(d);
		/* an archive interval no longer than part_interval changes nothing */
		config->has_archive = IntervalCmp(&config->archive_interval,
										  &config->part_interval) > 0;
	}
	SPI_freetuptable(SPI_tuptable);

	context.callback = ConfigRowContext;
	context.previous = error_context_stack;
	error_context_stack = &context;
	ValidateConfig(config, archive_set);
	error_context_stack = context.previous;

	config->archive_before = config->has_archive ?
		MinusInterval(now, &config->archive_after) : DT_NOBEGIN;
	config->oldest_accepted = Max(now - (int64) cdp_max_event_age_mins * USECS_PER_MINUTE,
								  CDP_MIN_EVENT_TS);
}

/* premake partitions from the one holding now through now + premake intervals */
int
CdpPremake(const CdpPartitionConfig *config, TimestampTz now)
{
	Interval	ahead = config->part_interval;
	TimestampTz upto;

	ahead.month *= config->premake;
	ahead.day *= config->premake;
	ahead.time *= config->premake;
	upto = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(now),
												   IntervalPGetDatum(&ahead)));
	/* +1 microsecond: the partition holding upto itself is made too */
	return CdpCreatePartitionsThrough(now, upto + 1, config);
}

PG_FUNCTION_INFO_V1(cdp_configure_partitions);

/*
 * cdp.configure_partitions(part_interval, premake, retention, retention_mode,
 * archive_interval, archive_after): validate, store, and make the partitions
 * ahead at once so a new user's first events never wait on DDL.
 */
Datum
cdp_configure_partitions(PG_FUNCTION_ARGS)
{
	CdpPartitionConfig config;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			argtypes[6] = {INTERVALOID, INT4OID, INTERVALOID, TEXTOID, INTERVALOID, INTERVALOID};
	char	   *mode;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(5))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("part_interval, premake, retention_mode and archive_after must not be NULL")));
	mode = text_to_cstring(PG_GETARG_TEXT_PP(3));
	memset(&config, 0, sizeof(config));
	config.part_interval = *PG_GETARG_INTERVAL_P(0);
	config.premake = PG_GETARG_INT32(1);
	config.has_retention = !PG_ARGISNULL(2);
	if (config.has_retention)
		config.retention = *PG_GETARG_INTERVAL_P(2);
	/* checked whole here: the struct's copy is cut to its size */
	ValidateMode(mode);
	strlcpy(config.retention_mode, mode, sizeof(config.retention_mode));
	if (!PG_ARGISNULL(4))
		config.archive_interval = *PG_GETARG_INTERVAL_P(4);
	config.archive_after = *PG_GETARG_INTERVAL_P(5);
	ValidateConfig(&config, !PG_ARGISNULL(4));

	for (int i = 0; i < 6; i++)
	{
		args[i] = PG_GETARG_DATUM(i);
		if (PG_ARGISNULL(i))
			nulls[i] = 'n';
	}
	SPI_connect();
	if (SPI_execute_with_args("UPDATE cdp.partition_config SET part_interval = $1, "
							  "premake = $2, retention = $3, retention_mode = $4, "
							  "archive_interval = $5, archive_after = $6",
							  6, argtypes, args, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update cdp.partition_config");
	CdpLoadPartitionConfig(&config);
	CdpPremake(&config, GetCurrentTransactionStartTimestamp());
	SPI_finish();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(cdp_partition_bounds);

/* cdp.partition_bounds(): each attached partition with its range */
Datum
cdp_partition_bounds(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CachedPartition *parts;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	parts = ReadPartitions(CdpEventsRelid(), &n, CurrentMemoryContext, true);
	for (int i = 0; i < n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = ObjectIdGetDatum(parts[i].relid);
		values[1] = TimestampTzGetDatum(parts[i].lo);
		values[2] = TimestampTzGetDatum(parts[i].hi);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
