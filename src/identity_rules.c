/*
 * identity_rules.c
 *	  The identity rules (priority, limit, time window per identifier type)
 *	  and blocked values, read once per batch or rebuild.
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "common/int128.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"


/* the longest time window the algorithm works with (about 73000 years) */
#define MAX_WINDOW_US	(INT64CONST(1) << 61)

typedef struct IdRuleEntry
{
	char		type[CDP_ID_TYPE_MAX + 1];
	IdRule		rule;
} IdRuleEntry;

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

/* Read cdp.identity_rules and cdp.blocked_identifiers; needs SPI. */
IdentityRules *
CdpLoadIdentityRules(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	IdentityRules *rules = palloc0(sizeof(IdentityRules));
	HASHCTL		ctl;
	int			rc;

	ctl.keysize = CDP_ID_TYPE_MAX + 1;
	ctl.entrysize = sizeof(IdRuleEntry);
	ctl.hcxt = cxt;
	rules->by_type = hash_create("cdp identity rules", 16, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	rules->fallback.priority = 10;
	rules->fallback.max_per_profile = 5;
	rules->max_merges = cdp_max_merges_per_profile;

	rc = SPI_execute("SELECT id_type, priority, max_per_profile, time_window "
					 "FROM cdp.identity_rules", false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading cdp.identity_rules failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
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

	rc = SPI_execute("SELECT id_type, pattern, is_regex FROM cdp.blocked_identifiers "
					 "ORDER BY id_type, pattern", false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading cdp.blocked_identifiers failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
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
			b->regex = CStringGetTextDatum(b->pattern);
		else
			b->pattern = NormalisePattern(b->id_type, b->pattern);
		rules->blocked = lappend(rules->blocked, b);
	}
	SPI_freetuptable(SPI_tuptable);
	return rules;
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

/* placeholder values (guest, 0, test@test.com, ...) never link anything */
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
			((int) strlen(b->id_type) != id->type_len ||
			 memcmp(b->id_type, IdTypePtr(id), id->type_len) != 0))
			continue;
		if (b->is_regex)
		{
			text	   *value = cstring_to_text_with_len(IdValuePtr(id), vlen);

			if (DatumGetBool(DirectFunctionCall2Coll(texticregexeq, C_COLLATION_OID,
													 PointerGetDatum(value), b->regex)))
				return true;
			continue;
		}
		if (lower == NULL)
		{
			lower = palloc(vlen + 1);
			for (int i = 0; i < vlen; i++)
				lower[i] = pg_ascii_tolower((unsigned char) IdValuePtr(id)[i]);
			lower[vlen] = '\0';
		}
		if ((int) strlen(b->pattern) == vlen && memcmp(b->pattern, lower, vlen) == 0)
			return true;
	}
	return false;
}
