/*
 * profile_merge.c
 *	  The two merges that decide what a profile shows, cdp.merge_traits and
 *	  cdp.merge_consent: per trait key and per purpose the latest by event
 *	  time, with ties broken by a total order, so that the order maps come
 *	  in never changes the result.  Ingest merges a batch into the stores
 *	  and profiles with them, and a recompute merges a profile's identifiers
 *	  with them, so the two always agree.  In C: they run for every row a
 *	  batch writes.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "profile_merge.h"

/* one key of a trait map being merged */
typedef struct TraitEntry
{
	char	   *key;
	int			keylen;
	JsonbValue	value;			/* scalar, or jbvBinary for a container */
	char	   *time;			/* "" when the time map lacks the key */
	char	   *text;			/* the value as jsonb text, made when a tie needs it */
	bool		first;			/* from the first map (keep_first) */
} TraitEntry;

/* bytewise, a prefix first: the order COLLATE "C" gives the same keys */
static int
CompareKeyBytes(const char *a, int alen, const char *b, int blen)
{
	int			c = memcmp(a, b, Min(alen, blen));

	if (c != 0)
		return c;
	return (alen > blen) - (alen < blen);
}

/* the value as jsonb text (its ::text), made once, only for a tie */
static char *
ValueText(TraitEntry *e)
{
	if (e->text == NULL)
	{
		Jsonb	   *jb = JsonbValueToJsonb(&e->value);

		e->text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	}
	return e->text;
}

/* by key, then the winner first: the latest time, then the larger value text */
static int
CompareTraitEntries(const void *x, const void *y)
{
	TraitEntry *a = *(TraitEntry * const *) x;
	TraitEntry *b = *(TraitEntry * const *) y;
	int			c = CompareKeyBytes(a->key, a->keylen, b->key, b->keylen);

	if (c != 0)
		return c;
	c = strcmp(b->time, a->time);
	if (c != 0)
		return c;
	return strcmp(ValueText(b), ValueText(a));
}

/* the keys kept when over the cap: keep_first's keys first, then key order */
static int
CompareKept(const void *x, const void *y)
{
	TraitEntry *a = *(TraitEntry * const *) x;
	TraitEntry *b = *(TraitEntry * const *) y;

	if (a->first != b->first)
		return a->first ? -1 : 1;
	return CompareKeyBytes(a->key, a->keylen, b->key, b->keylen);
}

/* a jsonb array argument as its non-null elements */
static int
JsonbElements(ArrayType *arr, Jsonb ***out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			k = 0;

	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = palloc(sizeof(Jsonb *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[k++] = nulls[i] ? NULL : DatumGetJsonbP(elems[i]);
	return k;
}

/* a top-level pair of one of the maps being merged */
typedef struct MapPair
{
	JsonbValue	key;
	JsonbValue	value;			/* scalar, or jbvBinary for a container */
	int			map;			/* which map it came from */
} MapPair;

/* every top-level pair of the maps that are objects, in map order */
static int
MapPairs(Jsonb **maps, int nmaps, MapPair **out)
{
	int			n = 0;
	int			cap = 0;

	for (int m = 0; m < nmaps; m++)
		if (maps[m] != NULL && JB_ROOT_IS_OBJECT(maps[m]))
			cap += JsonContainerSize(&maps[m]->root);
	*out = palloc(sizeof(MapPair) * Max(cap, 1));
	for (int m = 0; m < nmaps; m++)
	{
		JsonbIterator *it;
		JsonbValue	v;
		JsonbValue	key = {0};
		JsonbIteratorToken tok;

		if (maps[m] == NULL || !JB_ROOT_IS_OBJECT(maps[m]))
			continue;
		it = JsonbIteratorInit(&maps[m]->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = v;
			else if (tok == WJB_VALUE && n < cap)
			{
				(*out)[n].key = key;
				(*out)[n].value = v;
				(*out)[n].map = m;
				n++;
			}
		}
	}
	return n;
}

/* pairs a map gives a merge: none unless it is an object */
static int
MapSize(Jsonb *map)
{
	return (map != NULL && JB_ROOT_IS_OBJECT(map)) ? JsonContainerSize(&map->root) : 0;
}

/*
 * The only map of maps that gives a merge pairs, or -1 when none or more
 * than one does.  Merging a lone map (into an empty record: most often a
 * new person's first state) gives back what it holds, so callers return it
 * as it is rather than take it apart and build it again.
 */
static int
LoneMap(Jsonb **maps, int nmaps)
{
	int			lone = -1;

	for (int m = 0; m < nmaps; m++)
	{
		if (MapSize(maps[m]) == 0)
			continue;
		if (lone >= 0)
			return -1;
		lone = m;
	}
	return lone;
}

/*
 * Whether times holds a time (text) for every key of traits and no other
 * key: a lone trait map with such times merges into itself, unless it has
 * more than max_keys keys.
 */
static bool
TimesCoverKeys(Jsonb *traits, Jsonb *times)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (MapSize(times) != MapSize(traits))
		return false;
	it = JsonbIteratorInit(&traits->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue *t;

		if (tok != WJB_KEY)
			continue;
		t = getKeyJsonValueFromContainer(&times->root, v.val.string.val, v.val.string.len, NULL);
		if (t == NULL || t->type != jbvString)
			return false;
	}
	return true;
}

/* whether every value of a consent map is a decision (a container) the merge keeps */
static bool
AllDecisions(Jsonb *map)
{
	JsonbIterator *it = JsonbIteratorInit(&map->root);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_VALUE && v.type != jbvBinary)
			return false;
	return true;
}

/*
 * The record merge_traits returns, described once per call site: looking it
 * up in the catalog for every row a batch writes costs more than the merge.
 */
static TupleDesc
TraitsResultDesc(FunctionCallInfo fcinfo)
{
	TupleDesc	desc = (TupleDesc) fcinfo->flinfo->fn_extra;

	if (desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "cdp.merge_traits must return a record");
		desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = desc;
	}
	return desc;
}

/* the object a parse state ended with, as a jsonb datum */
static Datum
PushedObject(JsonbValue *end)
{
	return JsonbPGetDatum(JsonbValueToJsonb(end));
}

/*
 * Merge trait maps with their time maps (pairs by position; NULL entries
 * and maps that are not objects give nothing) into out[0] (traits) and
 * out[1] (times): what cdp.merge_traits returns.
 */
void
CdpMergeTraitMaps(Jsonb **traits, int ntraits, Jsonb **times, int ntimes, int max_keys,
				  bool keep_first, Datum *out)
{
	TraitEntry **entries;
	MapPair    *pairs;
	int			npairs;
	int			nentries = 0;
	int			nwin = 0;
	int			lone = LoneMap(traits, ntraits);
	JsonbParseState *ts = NULL;
	JsonbParseState *tt = NULL;

	if (lone >= 0 && lone < ntimes && MapSize(traits[lone]) <= max_keys &&
		TimesCoverKeys(traits[lone], times[lone]))
	{
		out[0] = JsonbPGetDatum(traits[lone]);
		out[1] = JsonbPGetDatum(times[lone]);
		return;
	}

	npairs = MapPairs(traits, ntraits, &pairs);
	entries = palloc(sizeof(TraitEntry *) * Max(npairs, 1));
	for (int p = 0; p < npairs; p++)
	{
		TraitEntry *e = palloc0(sizeof(TraitEntry));
		int			m = pairs[p].map;
		JsonbValue *t;

		e->key = pairs[p].key.val.string.val;
		e->keylen = pairs[p].key.val.string.len;
		e->value = pairs[p].value;
		e->first = keep_first && m == 0;
		t = (m < ntimes && times[m] != NULL && JB_ROOT_IS_OBJECT(times[m])) ?
			getKeyJsonValueFromContainer(&times[m]->root, e->key, e->keylen, NULL) : NULL;
		e->time = (t != NULL && t->type == jbvString) ?
			pnstrdup(t->val.string.val, t->val.string.len) : "";
		entries[nentries++] = e;
	}

	if (nentries > 0)
		qsort(entries, nentries, sizeof(TraitEntry *), CompareTraitEntries);
	/* the winner of each key, which is from the first map if any of its entries is */
	for (int i = 0; i < nentries; i++)
	{
		if (nwin > 0 && CompareKeyBytes(entries[nwin - 1]->key, entries[nwin - 1]->keylen,
										entries[i]->key, entries[i]->keylen) == 0)
		{
			entries[nwin - 1]->first |= entries[i]->first;
			continue;
		}
		entries[nwin++] = entries[i];
	}
	if (nwin > max_keys)
	{
		qsort(entries, nwin, sizeof(TraitEntry *), CompareKept);
		nwin = Max(max_keys, 0);
	}

	pushJsonbValue(&ts, WJB_BEGIN_OBJECT, NULL);
	pushJsonbValue(&tt, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < nwin; i++)
	{
		JsonbValue	k;
		JsonbValue	t;

		k.type = jbvString;
		k.val.string.val = entries[i]->key;
		k.val.string.len = entries[i]->keylen;
		t.type = jbvString;
		t.val.string.val = entries[i]->time;
		t.val.string.len = strlen(entries[i]->time);
		pushJsonbValue(&ts, WJB_KEY, &k);
		pushJsonbValue(&ts, WJB_VALUE, &entries[i]->value);
		pushJsonbValue(&tt, WJB_KEY, &k);
		pushJsonbValue(&tt, WJB_VALUE, &t);
	}
	out[0] = PushedObject(pushJsonbValue(&ts, WJB_END_OBJECT, NULL));
	out[1] = PushedObject(pushJsonbValue(&tt, WJB_END_OBJECT, NULL));
}

PG_FUNCTION_INFO_V1(cdp_merge_traits);

/*
 * cdp.merge_traits(trait_maps jsonb[], time_maps jsonb[], max_keys int,
 * keep_first bool): merge trait maps key by key, for each key the value with
 * the latest time (ISO text, fixed width, so compared as text), ties to the
 * larger value text: a total order, so neither the order of the maps nor
 * that of batches changes the result.  At most max_keys keys: with
 * keep_first the first map's keys stay and new ones come in key order while
 * there is room (an identifier's store never loses a key), without it the
 * first max_keys in key order (a profile: the same built a batch at a time
 * or recomputed).  In C: it runs for every row a batch writes.
 */
Datum
cdp_merge_traits(PG_FUNCTION_ARGS)
{
	Jsonb	  **traits;
	Jsonb	  **times;
	int			ntraits;
	int			ntimes;
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	desc = TraitsResultDesc(fcinfo);
	ntraits = JsonbElements(PG_GETARG_ARRAYTYPE_P(0), &traits);
	ntimes = JsonbElements(PG_GETARG_ARRAYTYPE_P(1), &times);
	CdpMergeTraitMaps(traits, ntraits, times, ntimes,
					  PG_ARGISNULL(2) ? INT_MAX : PG_GETARG_INT32(2),
					  !PG_ARGISNULL(3) && PG_GETARG_BOOL(3), values);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* one purpose's decision in a consent map being merged */
typedef struct ConsentEntry
{
	char	   *purpose;
	int			purposelen;
	JsonbValue	entry;			/* jbvBinary: the decision object */
	char	   *at;
	bool		granted;
	char	   *message_id;
	char	   *source;
} ConsentEntry;

/* a decision's string field, "" when absent or null (they order first) */
static char *
EntryText(JsonbValue *obj, const char *key)
{
	JsonbValue *v;

	if (obj->type != jbvBinary)
		return "";
	v = getKeyJsonValueFromContainer(obj->val.binary.data, key, strlen(key), NULL);
	if (v == NULL || v->type != jbvString)
		return "";
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* by purpose, then the winner first: latest, a denial, larger message id, source */
static int
CompareConsentEntries(const void *x, const void *y)
{
	ConsentEntry *a = *(ConsentEntry * const *) x;
	ConsentEntry *b = *(ConsentEntry * const *) y;
	int			c = CompareKeyBytes(a->purpose, a->purposelen, b->purpose, b->purposelen);

	if (c != 0)
		return c;
	if ((c = strcmp(b->at, a->at)) != 0)
		return c;
	if (a->granted != b->granted)
		return a->granted ? 1 : -1;
	if ((c = strcmp(b->message_id, a->message_id)) != 0)
		return c;
	return strcmp(b->source, a->source);
}

/*
 * Merge consent maps ({purpose: decision}; NULL entries and maps that are
 * not objects give nothing): what cdp.merge_consent returns.
 */
Jsonb *
CdpMergeConsentMaps(Jsonb **maps, int nmaps)
{
	ConsentEntry **entries;
	MapPair    *pairs;
	int			npairs;
	int			nentries = 0;
	int			lone = LoneMap(maps, nmaps);
	JsonbParseState *st = NULL;
	JsonbValue *end;

	if (lone >= 0 && AllDecisions(maps[lone]))
		return maps[lone];
	npairs = MapPairs(maps, nmaps, &pairs);
	entries = palloc(sizeof(ConsentEntry *) * Max(npairs, 1));
	for (int p = 0; p < npairs; p++)
	{
		ConsentEntry *e;
		JsonbValue *v = &pairs[p].value;
		JsonbValue *g;

		if (v->type != jbvBinary)
			continue;
		e = palloc0(sizeof(ConsentEntry));
		e->purpose = pairs[p].key.val.string.val;
		e->purposelen = pairs[p].key.val.string.len;
		e->entry = *v;
		e->at = EntryText(v, "at");
		e->message_id = EntryText(v, "message_id");
		e->source = EntryText(v, "source");
		g = getKeyJsonValueFromContainer(v->val.binary.data, "granted", 7, NULL);
		e->granted = g != NULL && g->type == jbvBool && g->val.boolean;
		entries[nentries++] = e;
	}
	if (nentries > 0)
		qsort(entries, nentries, sizeof(ConsentEntry *), CompareConsentEntries);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < nentries; i++)
	{
		JsonbValue	k;

		if (i > 0 && CompareKeyBytes(entries[i - 1]->purpose, entries[i - 1]->purposelen,
									 entries[i]->purpose, entries[i]->purposelen) == 0)
			continue;
		k.type = jbvString;
		k.val.string.val = entries[i]->purpose;
		k.val.string.len = entries[i]->purposelen;
		pushJsonbValue(&st, WJB_KEY, &k);
		pushJsonbValue(&st, WJB_VALUE, &entries[i]->entry);
	}
	end = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(end);
}

PG_FUNCTION_INFO_V1(cdp_merge_consent);

/*
 * cdp.merge_consent(consent_maps jsonb[]): merge {purpose: decision} maps
 * purpose by purpose, the latest decision winning; at the same time a
 * denial wins over a grant, then the larger message id and source (a total
 * order, as for traits).
 */
Datum
cdp_merge_consent(PG_FUNCTION_ARGS)
{
	Jsonb	  **maps;
	int			nmaps;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	nmaps = JsonbElements(PG_GETARG_ARRAYTYPE_P(0), &maps);
	PG_RETURN_JSONB_P(CdpMergeConsentMaps(maps, nmaps));
}
