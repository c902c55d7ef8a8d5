/*
 * identity_rules.c
 *	  The identity rules (priority, limit, time window per identifier type),
 *	  blocked values and splits, cached per backend.
 *
 *	  Every batch needs them and they change rarely, so each backend keeps a
 *	  copy and reads the tables again only after a change: a statement
 *	  trigger on cdp.identity_rules, cdp.blocked_identifiers and
 *	  cdp.identity_splits sends a relcache invalidation of its table, which
 *	  every backend receives once the change commits (and this one at once),
 *	  and the callback below marks the copy stale.  A caller takes the
 *	  invalidations waiting for it first, so the next batch after a commit
 *	  sees the change.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "commands/trigger.h"
#include "common/int128.h"
#include "executor/spi.h"
#include "regex/regex.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

/* the longest time window the algorithm works with (about 73000 years) */
#define MAX_WINDOW_US	(INT64CONST(1) << 61)

typedef struct IdRuleEntry
{
	char		type[CDP_ID_TYPE_MAX + 1];
	IdRule		rule;
} IdRuleEntry;

/* one cached part: its copy, the relations it is read from, whether current */
typedef struct ConfigCache
{
	MemoryContext cxt;
	Oid			relids[2];
	bool		valid;
	uint64		invalidations;	/* bumped by every invalidation of relids */
} ConfigCache;

static ConfigCache rules_cache;
static IdentityRules *cached_rules = NULL;

/* how many copies of the rules this backend has read: names the one in use */
static uint64 rules_copies = 0;
static ConfigCache splits_cache;
static List *cached_splits = NIL;
static CdpIdentifier **cached_keep_outs = NULL;	/* theirs, sorted */
static int	ncached_keep_outs = 0;

/* how many copies of the splits this backend has read */
static uint64 splits_copies = 0;

/* relcache callback: a change to a table a cache is read from marks it stale */
void
CdpIdentityCacheCallback(Datum arg, Oid relid)
{
	ConfigCache *caches[2] = {&rules_cache, &splits_cache};

	for (int i = 0; i < 2; i++)
	{
		ConfigCache *c = caches[i];

		if (relid == InvalidOid || relid == c->relids[0] || relid == c->relids[1])
		{
			c->valid = false;
			c->invalidations++;
		}
	}
}

PG_FUNCTION_INFO_V1(cdp_identity_config_changed);

/*
 * Statement trigger on the tables the caches are read from: a relcache
 * invalidation of the table reaches every backend when the change commits,
 * and this one at the end of the statement.
 */
Datum
cdp_identity_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cdp.identity_config_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/*
 * The oid of a cdp table, looked up on every use: a cache read from the
 * tables of an extension since dropped and created again must not be used.
 */
static Oid
CdpRelid(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("cdp", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table cdp.%s does not exist", name)));
	return relid;
}

/*
 * Whether c must be read again (then *seen is its invalidation count).
 * Waiting invalidations are taken first: a change committed before this
 * call is always seen.
 */
static bool
CacheStale(ConfigCache *c, Oid rel0, Oid rel1, uint64 *seen)
{
	AcceptInvalidationMessages();
	if (c->valid && c->relids[0] == rel0 && c->relids[1] == rel1)
		return false;
	c->valid = false;
	c->relids[0] = rel0;
	c->relids[1] = rel1;
	*seen = c->invalidations;
	return true;
}

/*
 * A new copy is read into a context under the caller's until it is
 * installed, so an error while reading frees it with the transaction.
 */
#define CacheNewContext(name) \
	AllocSetContextCreate(CurrentMemoryContext, name, ALLOCSET_SMALL_SIZES)

/*
 * Install a newly read copy (its context becomes the cache's) and free the
 * old one.  It is current unless an invalidation came while it was read:
 * then it serves this call and is read again next time.  A copy read with a
 * transaction snapshot (REPEATABLE READ, SERIALIZABLE) may miss a change
 * whose invalidation was already taken, so it serves this transaction only.
 */
static void
CacheInstall(ConfigCache *c, MemoryContext cxt, uint64 seen)
{
	MemoryContextSetParent(cxt, CacheMemoryContext);
	if (c->cxt != NULL)
		MemoryContextDelete(c->cxt);
	c->cxt = cxt;
	c->valid = (c->invalidations == seen) && !IsolationUsesXactSnapshot();
}

/*
 * A time window in microseconds, months as 30 days as interval comparison
 * counts them (and so the bound cdp.identity_rules checks).  The parts may
 * each be far larger than their sum: add them up in 128 bits.  Anything
 * longer than MAX_WINDOW_US (written past the table's checks) counts as
 * that, which reaches back past every event time and keeps "event time -
 * window" far from overflowing.
 */
static int64
WindowMicros(Interval *iv)
{
	INT128		sum = int64_to_int128(iv->time);

	int128_add_int64_mul_int64(&sum, iv->day, USECS_PER_DAY);
	int128_add_int64_mul_int64(&sum, (int64) iv->month * DAYS_PER_MONTH, USECS_PER_DAY);
	if (int128_compare(sum, int64_to_int128(MAX_WINDOW_US)) > 0)
		return MAX_WINDOW_US;
	if (int128_compare(sum, int64_to_int128(1)) < 0)
		return 1;
	return int128_to_int64(sum);
}

/*
 * A blocked value is compared as the identifier it would be: normalised for
 * its type (a phone written with punctuation still matches) and lower-cased,
 * since blocks are case-insensitive.
 */
static char *
NormalisePattern(const char *id_type, const char *pattern)
{
	const char *problem;
	CdpIdentifier *id = CdpMakeIdentifier(id_type ? id_type : "x", id_type ? strlen(id_type) : 1,
										  pattern, strlen(pattern), &problem);
	char	   *out;

	if (id == NULL)
		out = pstrdup(pattern);
	else
		out = pnstrdup(IdValuePtr(id), IdValueLen(id));
	for (char *c = out; *c; c++)
		*c = pg_ascii_tolower((unsigned char) *c);
	return out;
}

/* Read cdp.identity_rules and cdp.blocked_identifiers into cxt; needs SPI. */
static IdentityRules *
ReadIdentityRules(MemoryContext cxt)
{
	IdentityRules *rules = MemoryContextAllocZero(cxt, sizeof(IdentityRules));
	HASHCTL		ctl;
	uint64		rows;

	ctl.keysize = CDP_ID_TYPE_MAX + 1;
	ctl.entrysize = sizeof(IdRuleEntry);
	ctl.hcxt = cxt;
	rules->by_type = hash_create("cdp identity rules", 16, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	rules->fallback.priority = 10;
	rules->fallback.max_per_profile = 5;

	rows = CdpExecSql("SELECT id_type, priority, max_per_profile, time_window "
					  "FROM cdp.identity_rules", SPI_OK_SELECT);
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *type = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		IdRule		rule;
		Datum		d;

		rule.priority = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		d = SPI_getbinval(tup, desc, 3, &isnull);
		rule.max_per_profile = isnull ? 0 : DatumGetInt32(d);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		rule.window_us = isnull ? 0 : WindowMicros(DatumGetIntervalP(d));
		if (strcmp(type, "*") == 0)
			rules->fallback = rule;
		else
		{
			IdRuleEntry *e = hash_search(rules->by_type, type, HASH_ENTER, NULL);

			e->rule = rule;
		}
	}
	SPI_freetuptable(SPI_tuptable);

	rows = CdpExecSql("SELECT id_type, pattern, is_regex FROM cdp.blocked_identifiers "
					  "ORDER BY id_type, pattern", SPI_OK_SELECT);
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		BlockedValue *b = palloc0(sizeof(BlockedValue));
		char	   *type = SPI_getvalue(tup, desc, 1);
		bool		isnull;

		b->id_type = strcmp(type, "*") == 0 ? NULL : pstrdup(type);
		b->pattern = pstrdup(SPI_getvalue(tup, desc, 2));
		b->is_regex = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		if (b->is_regex)
			b->regex = cstring_to_text(b->pattern);
		else
			b->pattern = NormalisePattern(b->id_type, b->pattern);
		/* lengths kept: every identifier a replay makes is checked */
		b->type_len = b->id_type ? strlen(b->id_type) : 0;
		b->pattern_len = strlen(b->pattern);
		rules->blocked = lappend(rules->blocked, b);
	}
	SPI_freetuptable(SPI_tuptable);
	return rules;
}

/*
 * The identity rules and blocked values, from this backend's cache; needs
 * SPI.  Valid until the next call (a change may replace them then); callers
 * must not change them.  The hub guard is the setting in force now.
 */
IdentityRules *
CdpLoadIdentityRules(void)
{
	MemoryContext caller = CurrentMemoryContext;
	uint64		seen;

	if (CacheStale(&rules_cache, CdpRelid("identity_rules"), CdpRelid("blocked_identifiers"),
				   &seen))
	{
		MemoryContext cxt = CacheNewContext("cdp identity rules");
		IdentityRules *rules = ReadIdentityRules(cxt);

		CacheInstall(&rules_cache, cxt, seen);
		cached_rules = rules;
		rules_copies++;
	}
	MemoryContextSwitchTo(caller);
	cached_rules->max_merges = cdp_max_merges_per_profile;
	return cached_rules;
}

static int
CompareIdentifierPtrs(const void *a, const void *b)
{
	return CdpIdentifierCompare(*(CdpIdentifier *const *) a, *(CdpIdentifier *const *) b);
}

/* the identifiers of an array, copied into cxt (the array is read where we are) */
static CdpIdentifier **
CopyIdentifierArray(Datum array, Oid idtype, MemoryContext cxt, int *n)
{
	Datum	   *elems;
	CdpIdentifier **ids;

	deconstruct_array(DatumGetArrayTypeP(array), idtype, -1, false, TYPALIGN_INT, &elems, NULL, n);
	ids = MemoryContextAlloc(cxt, sizeof(CdpIdentifier *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		ids[i] = MemoryContextAlloc(cxt, VARSIZE_ANY(DatumGetPointer(elems[i])));
		memcpy(ids[i], DatumGetPointer(elems[i]), VARSIZE_ANY(DatumGetPointer(elems[i])));
	}
	return ids;
}

/* Read cdp.identity_splits into cxt, in the order they were made. */
static List *
ReadSplits(MemoryContext cxt)
{
	MemoryContext scratch = CurrentMemoryContext;
	Oid			idtype = CdpIdentifierTypeOid();
	uint64		rows = CdpExecSql("SELECT keep_out, members, anchors FROM cdp.identity_splits "
								  "ORDER BY id", SPI_OK_SELECT);
	List	   *splits = NIL;

	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		SplitRule  *split = MemoryContextAlloc(cxt, sizeof(SplitRule));
		CdpIdentifier *keep_out = DatumGetIdentifierP(SPI_getbinval(tup, desc, 1, &isnull));

		split->keep_out = MemoryContextAlloc(cxt, VARSIZE(keep_out));
		memcpy(split->keep_out, keep_out, VARSIZE(keep_out));
		split->members = CopyIdentifierArray(SPI_getbinval(tup, desc, 2, &isnull), idtype, cxt,
											 &split->nmembers);
		qsort(split->members, split->nmembers, sizeof(CdpIdentifier *), CompareIdentifierPtrs);
		split->anchors = CopyIdentifierArray(SPI_getbinval(tup, desc, 3, &isnull), idtype, cxt,
											 &split->nanchors);
		MemoryContextSwitchTo(cxt);
		splits = lappend(splits, split);
		MemoryContextSwitchTo(scratch);
	}
	SPI_freetuptable(SPI_tuptable);
	return splits;
}

/*
 * What split_profile took apart (SplitRule *, members sorted), from this
 * backend's cache; needs SPI.  Valid until the next call; read only.
 */
List *
CdpCachedSplits(void)
{
	MemoryContext caller = CurrentMemoryContext;
	uint64		seen;
	Oid			relid = CdpRelid("identity_splits");

	if (CacheStale(&splits_cache, relid, relid, &seen))
	{
		MemoryContext cxt = CacheNewContext("cdp identity splits");
		List	   *splits = ReadSplits(cxt);
		CdpIdentifier **keep_outs = MemoryContextAlloc(cxt, sizeof(CdpIdentifier *) *
													   Max(list_length(splits), 1));
		int			n = 0;
		ListCell   *lc;

		foreach(lc, splits)
			keep_outs[n++] = ((SplitRule *) lfirst(lc))->keep_out;
		qsort(keep_outs, n, sizeof(CdpIdentifier *), CompareIdentifierPtrs);
		CacheInstall(&splits_cache, cxt, seen);
		cached_splits = splits;
		cached_keep_outs = keep_outs;
		ncached_keep_outs = n;
		splits_copies++;
	}
	MemoryContextSwitchTo(caller);
	return cached_splits;
}

/*
 * Give g the cached splits, with their keep_out identifiers sorted: a
 * message that carries none of them (nearly all) is passed over at the
 * cost of a lookup per identifier, however many splits there are.
 */
void
CdpUseCachedSplits(IdentityGraph *g)
{
	g->splits = CdpCachedSplits();
	g->split_keep_outs = cached_keep_outs;
	g->nsplit_keep_outs = ncached_keep_outs;
}

/*
 * Which copy of the rules CdpLoadIdentityRules returned last: an answer
 * drawn from the rules (is an identifier blocked?) holds while it is the
 * same.
 */
uint64
CdpIdentityRulesCopy(void)
{
	return rules_copies;
}

/*
 * Which copy of the splits CdpCachedSplits returned last: a resolution
 * drawn from them holds while it is the same.
 */
uint64
CdpIdentitySplitsCopy(void)
{
	return splits_copies;
}

const IdRule *
CdpRuleFor(IdentityRules *rules, const char *type, int type_len)
{
	char		key[CDP_ID_TYPE_MAX + 1];
	IdRuleEntry *e;

	memcpy(key, type, type_len);
	key[type_len] = '\0';
	e = hash_search(rules->by_type, key, HASH_FIND, NULL);
	return e ? &e->rule : &rules->fallback;
}

/*
 * Placeholder values (guest, 0, test@test.com, ...) never link anything.  A
 * literal is compared only at its own length; a regex is matched as
 * texticregexeq would, on the value's bytes.
 */
bool
CdpIsBlocked(IdentityRules *rules, const CdpIdentifier *id)
{
	int			vlen = IdValueLen(id);
	char	   *lower = NULL;
	ListCell   *lc;

	foreach(lc, rules->blocked)
	{
		BlockedValue *b = lfirst(lc);

		if (b->id_type != NULL &&
			(b->type_len != id->type_len ||
			 memcmp(b->id_type, IdTypePtr(id), id->type_len) != 0))
			continue;
		if (b->is_regex)
		{
			if (RE_compile_and_execute(b->regex, (char *) IdValuePtr(id), vlen,
									   REG_ADVANCED | REG_ICASE, C_COLLATION_OID, 0, NULL))
				return true;
			continue;
		}
		if (b->pattern_len != vlen)
			continue;
		if (lower == NULL)
		{
			lower = palloc(vlen + 1);
			for (int i = 0; i < vlen; i++)
				lower[i] = pg_ascii_tolower((unsigned char) IdValuePtr(id)[i]);
			lower[vlen] = '\0';
		}
		if (memcmp(b->pattern, lower, vlen) == 0)
			return true;
	}
	return false;
}
