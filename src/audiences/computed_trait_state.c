/*
 * computed_trait_state.c
 *	  A computed trait's state over a set of events and the operations on
 *	  it: count an event in, combine two states (a merge of profiles, a
 *	  chunk's events into what was stored), store it as jsonb and read it
 *	  back, and the value it gives.  Combining is exact for every kind:
 *	  counts and sums add, extremes and first/last combine by value and time
 *	  (ties: the value's JSON text), and distinct values are kept as the
 *	  CDP_TRAIT_MAX_VALUES smallest in text order with their counts, which
 *	  is the same set whatever order the events come in.
 *
 *	  Stored form: {"n": 3, "sum": 12.5, "min": 1, "max": 9,
 *	  "first": [usecs, value], "last": [usecs, value],
 *	  "values": [[value, count], ...], "oldest": usecs}, with only what the
 *	  kind needs ("oldest": a windowed trait's; states stored by builds
 *	  before may have it for others, which nothing reads).
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "computed_traits.h"

static JsonbValue *PushState(JsonbParseState **ps, const CdpTraitState *s);

PG_FUNCTION_INFO_V1(cdp_check_trait_spec);
PG_FUNCTION_INFO_V1(cdp_trait_state_accum);
PG_FUNCTION_INFO_V1(cdp_trait_state_union_accum);
PG_FUNCTION_INFO_V1(cdp_trait_state_final);
PG_FUNCTION_INFO_V1(cdp_trait_state_combine);
PG_FUNCTION_INFO_V1(cdp_trait_state_serialize);
PG_FUNCTION_INFO_V1(cdp_trait_state_deserialize);
PG_FUNCTION_INFO_V1(cdp_trait_union_value_final);
PG_FUNCTION_INFO_V1(cdp_trait_state_merge);
PG_FUNCTION_INFO_V1(cdp_trait_value);

CdpTraitState *
CdpNewTraitState(CdpTraitKind kind)
{
	CdpTraitState *s = palloc0(sizeof(CdpTraitState));

	s->kind = kind;
	return s;
}

static bool
IsNumericKind(CdpTraitKind kind)
{
	return kind == CDP_TRAIT_SUM || kind == CDP_TRAIT_AVG ||
		kind == CDP_TRAIT_MIN || kind == CDP_TRAIT_MAX;
}

/* a JSON value's text: how values are compared, kept and given back */
static char *
ValueText(JsonbValue *v)
{
	StringInfoData buf;

	switch (v->type)
	{
		case jbvBinary:
			return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
		case jbvString:
			{
				const char *str = v->val.string.val;
				int			len = v->val.string.len;
				char	   *text;

				/* most strings need no escape: quoted as they are, in their own size */
				for (int i = 0; i < len; i++)
					if ((unsigned char) str[i] < 0x20 || str[i] == '"' || str[i] == '\\')
					{
						initStringInfo(&buf);
						escape_json(&buf, pnstrdup(str, len));
						return buf.data;
					}
				text = palloc(len + 3);
				text[0] = '"';
				memcpy(text + 1, str, len);
				text[len + 1] = '"';
				text[len + 2] = '\0';
				return text;
			}
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return pstrdup("null");
	}
}

static Numeric
NumericAdd(Numeric a, Numeric b)
{
	return DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(a),
											   NumericGetDatum(b)));
}

static int
NumericCmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(b)));
}

/* (at, text) order of first/last candidates */
static int
CompareTimed(TimestampTz a_at, const char *a, TimestampTz b_at, const char *b)
{
	if (a_at != b_at)
		return a_at < b_at ? -1 : 1;
	return strcmp(a, b);
}

/* index of text among the sorted values, or where it would go (-1 - i) */
static int
FindValue(const CdpTraitState *s, const char *text)
{
	int			lo = 0,
				hi = s->nvalues - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		int			c = strcmp(s->values[mid].text, text);

		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1 - lo;
}

/* count a value in: the smallest CDP_TRAIT_MAX_VALUES stay */
static void
AddValue(CdpTraitState *s, char *text, int64 count)
{
	int			at = FindValue(s, text);

	if (at >= 0)
	{
		s->values[at].count += count;
		return;
	}
	at = -1 - at;
	if (at >= CDP_TRAIT_MAX_VALUES)
		return;
	if (s->nvalues == s->maxvalues)
	{
		s->maxvalues = Min(Max(2, s->maxvalues * 2), CDP_TRAIT_MAX_VALUES + 1);
		s->values = s->values ? repalloc(s->values, sizeof(CdpTraitValue) * s->maxvalues)
			: palloc(sizeof(CdpTraitValue) * s->maxvalues);
	}
	memmove(&s->values[at + 1], &s->values[at], sizeof(CdpTraitValue) * (s->nvalues - at));
	s->values[at].text = text;
	s->values[at].count = count;
	s->nvalues = Min(s->nvalues + 1, CDP_TRAIT_MAX_VALUES);
}

static void
OfferFirst(CdpTraitState *s, TimestampTz at, char *text)
{
	if (!s->has_first || CompareTimed(at, text, s->first_at, s->first) < 0)
	{
		s->has_first = true;
		s->first_at = at;
		s->first = text;
	}
}

static void
OfferLast(CdpTraitState *s, TimestampTz at, char *text)
{
	if (!s->has_last || CompareTimed(at, text, s->last_at, s->last) > 0)
	{
		s->has_last = true;
		s->last_at = at;
		s->last = text;
	}
}

static Numeric
CopyNumeric(Numeric n)
{
	return DatumGetNumeric(datumCopy(NumericGetDatum(n), false, -1));
}

/*
 * A number counted in, into what the kind keeps of numbers (a sum, or an
 * extreme).  What the state keeps of it is a copy: v points into the
 * event, which may go before the state does.
 */
static void
OfferNumber(CdpTraitState *s, Numeric v)
{
	s->n++;
	if (s->kind == CDP_TRAIT_SUM || s->kind == CDP_TRAIT_AVG)
		s->sum = s->sum ? NumericAdd(s->sum, v) : CopyNumeric(v);
	else if (s->kind == CDP_TRAIT_MIN && (s->lo == NULL || NumericCmp(v, s->lo) < 0))
		s->lo = CopyNumeric(v);
	else if (s->kind == CDP_TRAIT_MAX && (s->hi == NULL || NumericCmp(v, s->hi) > 0))
		s->hi = CopyNumeric(v);
}

static void
OfferOldest(CdpTraitState *s, TimestampTz ts)
{
	if (!s->has_oldest || ts < s->oldest)
	{
		s->has_oldest = true;
		s->oldest = ts;
	}
}

/*
 * Count an event in, if its properties pass the filter and hold what the
 * kind reads (a number for sum, avg, min and max; any value but null for
 * the others; count needs the property only when one is named).  Returns
 * whether it counted.
 */
bool
CdpTraitStateAdd(CdpTraitSpec *spec, CdpTraitState *s, TimestampTz ts, Jsonb *properties)
{
	JsonbValue	v;

	if (!CdpTraitFilterMatches(spec, properties))
		return false;
	return CdpTraitStateAddValue(spec, s, ts,
								 spec->npath > 0 && CdpTraitPropertyValue(spec, properties, &v) ?
								 &v : NULL);
}

/*
 * Count in an event that passed the filter, v the value at the trait's
 * property (NULL: none, or no property named; a null is none too).
 */
bool
CdpTraitStateAddValue(CdpTraitSpec *spec, CdpTraitState *s, TimestampTz ts, JsonbValue *v)
{
	bool		has_value = spec->npath > 0 && v != NULL && v->type != jbvNull;

	if (spec->kind == CDP_TRAIT_COUNT)
	{
		if (spec->npath > 0 && !has_value)
			return false;
		s->n++;
	}
	else if (!has_value)
		return false;
	else if (IsNumericKind(spec->kind))
	{
		if (v->type != jbvNumeric)
			return false;
		OfferNumber(s, v->val.numeric);
	}
	else if (spec->kind == CDP_TRAIT_FIRST)
		OfferFirst(s, ts, ValueText(v));
	else if (spec->kind == CDP_TRAIT_LAST)
		OfferLast(s, ts, ValueText(v));
	else
	{
		char	   *text = ValueText(v);

		/* too long to keep a thousand of: not a distinct value, the event still counts */
		if (strlen(text) <= CDP_TRAIT_MAX_VALUE_BYTES)
			AddValue(s, text, 1);
	}
	if (spec->keep_oldest)
		OfferOldest(s, ts);
	return true;
}

/* into := into combined with from (same kind) */
void
CdpTraitStateCombine(CdpTraitState *into, const CdpTraitState *from)
{
	into->n += from->n;
	if (from->sum)
		into->sum = into->sum ? NumericAdd(into->sum, from->sum) : from->sum;
	if (from->lo && (into->lo == NULL || NumericCmp(from->lo, into->lo) < 0))
		into->lo = from->lo;
	if (from->hi && (into->hi == NULL || NumericCmp(from->hi, into->hi) > 0))
		into->hi = from->hi;
	if (from->has_first)
		OfferFirst(into, from->first_at, from->first);
	if (from->has_last)
		OfferLast(into, from->last_at, from->last);
	for (int i = 0; i < from->nvalues; i++)
		AddValue(into, from->values[i].text, from->values[i].count);
	if (from->has_oldest)
		OfferOldest(into, from->oldest);
}

/*
 * What a combined state points to for one of its numbers (now), given what
 * it pointed to before (was) and what the other state has (theirs): its
 * own, freeing the one it let go of.
 */
static Numeric
KeepNumeric(Numeric now, Numeric was, const Numeric theirs)
{
	if (now == was)
		return now;
	if (was != NULL)
		pfree(was);
	return now == theirs ? CopyNumeric(now) : now;
}

static char *
KeepText(char *now, char *was, const char *theirs)
{
	if (now == was)
		return now;
	if (was != NULL)
		pfree(was);
	return now == theirs ? pstrdup(now) : now;
}

/*
 * into := into combined with from, where into owns what it points to and
 * goes on owning it: what it takes from from (whose memory goes away) is
 * copied into the current memory context, and what it lets go of is freed
 * (a drain's states, combined with batch after batch, kept every sum they
 * had had).
 */
void
CdpTraitStateCombineCopy(CdpTraitState *into, const CdpTraitState *from)
{
	CdpTraitState was = *into;

	CdpTraitStateCombine(into, from);
	into->sum = KeepNumeric(into->sum, was.sum, from->sum);
	into->lo = KeepNumeric(into->lo, was.lo, from->lo);
	into->hi = KeepNumeric(into->hi, was.hi, from->hi);
	if (into->has_first)
		into->first = KeepText(into->first, was.has_first ? was.first : NULL, from->first);
	if (into->has_last)
		into->last = KeepText(into->last, was.has_last ? was.last : NULL, from->last);
	for (int i = 0; i < from->nvalues; i++)
	{
		int			at = FindValue(into, from->values[i].text);

		if (at >= 0 && into->values[at].text == from->values[i].text)
			into->values[at].text = pstrdup(from->values[i].text);
	}
}

/* a copy of a state in the current memory context, sharing nothing */
CdpTraitState *
CdpTraitStateCopy(const CdpTraitState *s)
{
	CdpTraitState *c = palloc(sizeof(CdpTraitState));

	*c = *s;
	c->sum = s->sum ? CopyNumeric(s->sum) : NULL;
	c->lo = s->lo ? CopyNumeric(s->lo) : NULL;
	c->hi = s->hi ? CopyNumeric(s->hi) : NULL;
	c->first = s->has_first ? pstrdup(s->first) : NULL;
	c->last = s->has_last ? pstrdup(s->last) : NULL;
	c->values = NULL;
	c->maxvalues = 0;
	if (s->nvalues > 0)
	{
		c->maxvalues = s->nvalues;
		c->values = palloc(sizeof(CdpTraitValue) * s->nvalues);
		for (int i = 0; i < s->nvalues; i++)
		{
			c->values[i].text = pstrdup(s->values[i].text);
			c->values[i].count = s->values[i].count;
		}
	}
	return c;
}

static bool
IsEmpty(const CdpTraitState *s)
{
	return s->n == 0 && !s->has_first && !s->has_last && s->nvalues == 0;
}

/*
 * A JSON text a state keeps (a value's text) as a JsonbValue: plain strings,
 * numbers and literals directly, anything else through jsonb_in.  Building
 * states and values this way skips printing them and parsing them back.
 */
static void
ValueOfText(const char *text, JsonbValue *v)
{
	size_t		len = strlen(text);

	if (len >= 2 && text[0] == '"' && memchr(text + 1, '\\', len - 2) == NULL)
	{
		/* no escape: the text between the quotes is the string */
		v->type = jbvString;
		v->val.string.val = (char *) text + 1;
		v->val.string.len = len - 2;
	}
	else if (text[0] == '-' || (text[0] >= '0' && text[0] <= '9'))
	{
		v->type = jbvNumeric;
		v->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(text),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));
	}
	else if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0)
	{
		v->type = jbvBool;
		v->val.boolean = text[0] == 't';
	}
	else if (strcmp(text, "null") == 0)
		v->type = jbvNull;
	else
	{
		CdpJsonbDocumentValue(DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text))),
							  v);
	}
}

/* a jsonb document as a JsonbValue: a scalar, or a container pointed to */
void
CdpJsonbDocumentValue(Jsonb *doc, JsonbValue *v)
{
	if (JB_ROOT_IS_SCALAR(doc))
		(void) JsonbExtractScalar(&doc->root, v);
	else
	{
		v->type = jbvBinary;
		v->val.binary.data = &doc->root;
		v->val.binary.len = VARSIZE(doc) - VARHDRSZ;
	}
}

/* key pushed into the object being built */
void
CdpPushJsonbKey(JsonbParseState **ps, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(ps, WJB_KEY, &k);
}

static void
PushNumeric(JsonbParseState **ps, JsonbIteratorToken tok, Numeric n)
{
	JsonbValue	v;

	v.type = jbvNumeric;
	v.val.numeric = n;
	pushJsonbValue(ps, tok, &v);
}

static void
PushText(JsonbParseState **ps, JsonbIteratorToken tok, const char *text)
{
	JsonbValue	v;

	ValueOfText(text, &v);
	pushJsonbValue(ps, tok, &v);
}

/* "key": [usecs, value] */
static void
PushTimed(JsonbParseState **ps, const char *key, TimestampTz at, const char *text)
{
	CdpPushJsonbKey(ps, key);
	pushJsonbValue(ps, WJB_BEGIN_ARRAY, NULL);
	PushNumeric(ps, WJB_ELEM, int64_to_numeric(at));
	PushText(ps, WJB_ELEM, text);
	pushJsonbValue(ps, WJB_END_ARRAY, NULL);
}

/* the stored form; NULL when the state counted nothing */
Jsonb *
CdpTraitStateToJsonb(const CdpTraitState *s)
{
	JsonbParseState *ps = NULL;

	if (IsEmpty(s))
		return NULL;
	return JsonbValueToJsonb(PushState(&ps, s));
}

/*
 * The stored form pushed as key's value into an object being built,
 * without a Jsonb of its own in between: ingest builds a person's states
 * as one object.  False (nothing pushed) when the state counted nothing.
 */
bool
CdpTraitStatePush(JsonbParseState **ps, const char *key, const CdpTraitState *s)
{
	if (IsEmpty(s))
		return false;
	CdpPushJsonbKey(ps, key);
	(void) PushState(ps, s);
	return true;
}

/* the state as an object pushed into *ps; returns what pushJsonbValue does */
static JsonbValue *
PushState(JsonbParseState **ps, const CdpTraitState *s)
{
	pushJsonbValue(ps, WJB_BEGIN_OBJECT, NULL);
	if (s->n > 0)
	{
		CdpPushJsonbKey(ps, "n");
		PushNumeric(ps, WJB_VALUE, int64_to_numeric(s->n));
	}
	if (s->sum && (s->kind == CDP_TRAIT_SUM || s->kind == CDP_TRAIT_AVG))
	{
		CdpPushJsonbKey(ps, "sum");
		PushNumeric(ps, WJB_VALUE, s->sum);
	}
	if (s->lo && s->kind == CDP_TRAIT_MIN)
	{
		CdpPushJsonbKey(ps, "min");
		PushNumeric(ps, WJB_VALUE, s->lo);
	}
	if (s->hi && s->kind == CDP_TRAIT_MAX)
	{
		CdpPushJsonbKey(ps, "max");
		PushNumeric(ps, WJB_VALUE, s->hi);
	}
	if (s->has_first)
		PushTimed(ps, "first", s->first_at, s->first);
	if (s->has_last)
		PushTimed(ps, "last", s->last_at, s->last);
	if (s->nvalues > 0)
	{
		CdpPushJsonbKey(ps, "values");
		pushJsonbValue(ps, WJB_BEGIN_ARRAY, NULL);
		for (int i = 0; i < s->nvalues; i++)
		{
			pushJsonbValue(ps, WJB_BEGIN_ARRAY, NULL);
			PushText(ps, WJB_ELEM, s->values[i].text);
			PushNumeric(ps, WJB_ELEM, int64_to_numeric(s->values[i].count));
			pushJsonbValue(ps, WJB_END_ARRAY, NULL);
		}
		pushJsonbValue(ps, WJB_END_ARRAY, NULL);
	}
	if (s->has_oldest)
	{
		CdpPushJsonbKey(ps, "oldest");
		PushNumeric(ps, WJB_VALUE, int64_to_numeric(s->oldest));
	}
	return pushJsonbValue(ps, WJB_END_OBJECT, NULL);
}

static int64
Int64Of(JsonbValue *v)
{
	if (v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("computed trait state holds a non-number where a number belongs")));
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v->val.numeric)));
}

/* the elements of an array container (values as scalars or jbvBinary) */
static int
Elements(JsonbValue *arr, JsonbValue *out, int max)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n = 0;

	if (arr->type != jbvBinary || !JsonContainerIsArray(arr->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("computed trait state holds a non-array where an array belongs")));
	it = JsonbIteratorInit(arr->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_ELEM && n < max)
			out[n++] = v;
	return n;
}

static bool
Key(Jsonb *j, const char *key, JsonbValue *out)
{
	return getKeyJsonValueFromContainer(&j->root, key, strlen(key), out) != NULL;
}

/* read the stored form back */
CdpTraitState *
CdpTraitStateFromJsonb(CdpTraitKind kind, Jsonb *j)
{
	CdpTraitState *s = CdpNewTraitState(kind);
	JsonbValue	v;
	JsonbValue	pair[2];

	if (j == NULL)
		return s;
	if (Key(j, "n", &v))
		s->n = Int64Of(&v);
	if (Key(j, "sum", &v) && v.type == jbvNumeric)
		s->sum = v.val.numeric;
	if (Key(j, "min", &v) && v.type == jbvNumeric)
		s->lo = v.val.numeric;
	if (Key(j, "max", &v) && v.type == jbvNumeric)
		s->hi = v.val.numeric;
	if (Key(j, "first", &v) && Elements(&v, pair, 2) == 2)
	{
		s->has_first = true;
		s->first_at = Int64Of(&pair[0]);
		s->first = ValueText(&pair[1]);
	}
	if (Key(j, "last", &v) && Elements(&v, pair, 2) == 2)
	{
		s->has_last = true;
		s->last_at = Int64Of(&pair[0]);
		s->last = ValueText(&pair[1]);
	}
	if (Key(j, "values", &v))
	{
		JsonbValue *elems = palloc(sizeof(JsonbValue) * (CDP_TRAIT_MAX_VALUES + 1));
		int			n = Elements(&v, elems, CDP_TRAIT_MAX_VALUES + 1);

		for (int i = 0; i < n; i++)
			if (Elements(&elems[i], pair, 2) == 2)
				AddValue(s, ValueText(&pair[0]), Int64Of(&pair[1]));
	}
	if (Key(j, "oldest", &v))
	{
		s->has_oldest = true;
		s->oldest = Int64Of(&v);
	}
	return s;
}

/*
 * The trait's value as a JsonbValue (a scalar, or a container): count and
 * unique_count a number (0 for nothing), unique_list an array in text
 * order, the others the value; false for none.
 */
bool
CdpTraitStateValueOf(const CdpTraitState *s, JsonbValue *out)
{
	switch (s->kind)
	{
		case CDP_TRAIT_COUNT:
			out->type = jbvNumeric;
			out->val.numeric = int64_to_numeric(s->n);
			return true;
		case CDP_TRAIT_UNIQUE_COUNT:
			out->type = jbvNumeric;
			out->val.numeric = int64_to_numeric(s->nvalues);
			return true;
		case CDP_TRAIT_SUM:
			if (s->sum == NULL)
				return false;
			out->type = jbvNumeric;
			out->val.numeric = s->sum;
			return true;
		case CDP_TRAIT_AVG:
			if (s->sum == NULL || s->n == 0)
				return false;
			out->type = jbvNumeric;
			out->val.numeric = DatumGetNumeric(DirectFunctionCall2(numeric_div,
																   NumericGetDatum(s->sum),
																   NumericGetDatum(int64_to_numeric(s->n))));
			return true;
		case CDP_TRAIT_MIN:
			if (s->lo == NULL)
				return false;
			out->type = jbvNumeric;
			out->val.numeric = s->lo;
			return true;
		case CDP_TRAIT_MAX:
			if (s->hi == NULL)
				return false;
			out->type = jbvNumeric;
			out->val.numeric = s->hi;
			return true;
		case CDP_TRAIT_FIRST:
			if (!s->has_first)
				return false;
			ValueOfText(s->first, out);
			return true;
		case CDP_TRAIT_LAST:
			if (!s->has_last)
				return false;
			ValueOfText(s->last, out);
			return true;
		case CDP_TRAIT_MOST_FREQUENT:
			{
				int			best = -1;

				/* ties: the smallest text, the first in order */
				for (int i = 0; i < s->nvalues; i++)
					if (best < 0 || s->values[i].count > s->values[best].count)
						best = i;
				if (best < 0)
					return false;
				ValueOfText(s->values[best].text, out);
				return true;
			}
		case CDP_TRAIT_UNIQUE_LIST:
			{
				JsonbParseState *ps = NULL;
				JsonbValue *arr;

				pushJsonbValue(&ps, WJB_BEGIN_ARRAY, NULL);
				for (int i = 0; i < s->nvalues; i++)
					PushText(&ps, WJB_ELEM, s->values[i].text);
				arr = pushJsonbValue(&ps, WJB_END_ARRAY, NULL);
				*out = *arr;
				return true;
			}
	}
	return false;
}

/* the trait's value as jsonb (see CdpTraitStateValueOf); NULL for none */
Jsonb *
CdpTraitStateValue(const CdpTraitState *s)
{
	JsonbValue	v;

	if (!CdpTraitStateValueOf(s, &v))
		return NULL;
	return JsonbValueToJsonb(&v);
}

/* ---------------------------------------------------------------- SQL */

static char *
TextArg(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(i));
}

/* check a definition's kind, property and filter; errors say what is wrong */
Datum
cdp_check_trait_spec(PG_FUNCTION_ARGS)
{
	(void) CdpParseTraitSpec(TextArg(fcinfo, 0), TextArg(fcinfo, 1),
							 PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2));
	PG_RETURN_VOID();
}

/* the spec of an aggregate call, parsed on its first row */
typedef struct AccumCache
{
	CdpTraitSpec *spec;
} AccumCache;

static MemoryContext
AggContext(FunctionCallInfo fcinfo)
{
	MemoryContext agg;

	if (!AggCheckCallContext(fcinfo, &agg))
		elog(ERROR, "computed trait aggregate called outside an aggregate");
	return agg;
}

/*
 * trait_state_agg(kind, property, filter, time_window, ts, properties):
 * the state of the events aggregated (their oldest time kept only for a
 * window).  The definition is the same on every row.
 */
Datum
cdp_trait_state_accum(PG_FUNCTION_ARGS)
{
	MemoryContext agg = AggContext(fcinfo);
	MemoryContext old;
	AccumCache *cache = fcinfo->flinfo->fn_extra;
	CdpTraitState *s = PG_ARGISNULL(0) ? NULL : (CdpTraitState *) PG_GETARG_POINTER(0);

	/* a database whose pg_cdp objects an older build created */
	if (PG_NARGS() != 7)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cdp.trait_state_agg does not have the arguments this build of pg_cdp takes"),
				 errhint("Reinstall the extension.")));
	old = MemoryContextSwitchTo(agg);
	if (cache == NULL)
	{
		MemoryContext fn = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		cache = palloc0(sizeof(AccumCache));
		cache->spec = CdpParseTraitSpec(TextArg(fcinfo, 1), TextArg(fcinfo, 2),
										PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P_COPY(3));
		cache->spec->keep_oldest = !PG_ARGISNULL(4);
		fcinfo->flinfo->fn_extra = cache;
		MemoryContextSwitchTo(fn);
	}
	if (s == NULL)
		s = CdpNewTraitState(cache->spec->kind);
	if (!PG_ARGISNULL(5))
		(void) CdpTraitStateAdd(cache->spec, s, PG_GETARG_TIMESTAMPTZ(5),
								PG_ARGISNULL(6) ? NULL : PG_GETARG_JSONB_P(6));
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(s);
}

/*
 * trait_state_agg's combine step: partial states of parallel workers into
 * one.  Whatever the result takes from b is copied into the aggregate's
 * context (b was deserialized into memory reset per row).
 */
Datum
cdp_trait_state_combine(PG_FUNCTION_ARGS)
{
	MemoryContext agg = AggContext(fcinfo);
	MemoryContext old;
	CdpTraitState *a = PG_ARGISNULL(0) ? NULL : (CdpTraitState *) PG_GETARG_POINTER(0);
	CdpTraitState *b = PG_ARGISNULL(1) ? NULL : (CdpTraitState *) PG_GETARG_POINTER(1);

	if (b == NULL)
	{
		if (a == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(a);
	}
	old = MemoryContextSwitchTo(agg);
	if (a == NULL)
		a = CdpTraitStateCopy(b);
	else
		CdpTraitStateCombineCopy(a, b);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(a);
}

static void
SendNumeric(StringInfo buf, Numeric n)
{
	pq_sendint32(buf, n ? VARSIZE(n) : 0);
	if (n)
		pq_sendbytes(buf, (char *) n, VARSIZE(n));
}

static Numeric
GetNumeric(StringInfo buf)
{
	int32		len = pq_getmsgint(buf, 4);
	Numeric		n;

	if (len == 0)
		return NULL;
	n = palloc(len);
	pq_copymsgbytes(buf, (char *) n, len);
	return n;
}

static void
SendText(StringInfo buf, const char *text)
{
	int32		len = strlen(text);

	pq_sendint32(buf, len);
	pq_sendbytes(buf, text, len);
}

static char *
GetText(StringInfo buf)
{
	int32		len = pq_getmsgint(buf, 4);
	char	   *text = palloc(len + 1);

	pq_copymsgbytes(buf, text, len);
	text[len] = '\0';
	return text;
}

/*
 * A partial state as bytes, to pass from a parallel worker to the leader:
 * every field as it is in memory (cheaper than the stored jsonb form, and
 * exact).
 */
Datum
cdp_trait_state_serialize(PG_FUNCTION_ARGS)
{
	CdpTraitState *s = (CdpTraitState *) PG_GETARG_POINTER(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint32(&buf, s->kind);
	pq_sendint64(&buf, s->n);
	SendNumeric(&buf, s->sum);
	SendNumeric(&buf, s->lo);
	SendNumeric(&buf, s->hi);
	pq_sendbyte(&buf, s->has_first);
	if (s->has_first)
	{
		pq_sendint64(&buf, s->first_at);
		SendText(&buf, s->first);
	}
	pq_sendbyte(&buf, s->has_last);
	if (s->has_last)
	{
		pq_sendint64(&buf, s->last_at);
		SendText(&buf, s->last);
	}
	pq_sendbyte(&buf, s->has_oldest);
	if (s->has_oldest)
		pq_sendint64(&buf, s->oldest);
	pq_sendint32(&buf, s->nvalues);
	for (int i = 0; i < s->nvalues; i++)
	{
		SendText(&buf, s->values[i].text);
		pq_sendint64(&buf, s->values[i].count);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* the bytes of cdp_trait_state_serialize back into a state */
Datum
cdp_trait_state_deserialize(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;
	CdpTraitState *s;
	int			nvalues;

	(void) AggContext(fcinfo);
	buf.data = VARDATA_ANY(b);
	buf.len = VARSIZE_ANY_EXHDR(b);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	s = CdpNewTraitState((CdpTraitKind) pq_getmsgint(&buf, 4));
	s->n = pq_getmsgint64(&buf);
	s->sum = GetNumeric(&buf);
	s->lo = GetNumeric(&buf);
	s->hi = GetNumeric(&buf);
	s->has_first = pq_getmsgbyte(&buf);
	if (s->has_first)
	{
		s->first_at = pq_getmsgint64(&buf);
		s->first = GetText(&buf);
	}
	s->has_last = pq_getmsgbyte(&buf);
	if (s->has_last)
	{
		s->last_at = pq_getmsgint64(&buf);
		s->last = GetText(&buf);
	}
	s->has_oldest = pq_getmsgbyte(&buf);
	if (s->has_oldest)
		s->oldest = pq_getmsgint64(&buf);
	nvalues = pq_getmsgint(&buf, 4);
	if (nvalues > 0)
	{
		s->maxvalues = nvalues;
		s->values = palloc(sizeof(CdpTraitValue) * nvalues);
		for (int i = 0; i < nvalues; i++)
		{
			s->values[i].text = GetText(&buf);
			s->values[i].count = pq_getmsgint64(&buf);
		}
		s->nvalues = nvalues;
	}
	pq_getmsgend(&buf);
	PG_RETURN_POINTER(s);
}

/* trait_state_union(kind, state): the states combined */
Datum
cdp_trait_state_union_accum(PG_FUNCTION_ARGS)
{
	MemoryContext agg = AggContext(fcinfo);
	MemoryContext old = MemoryContextSwitchTo(agg);
	CdpTraitState *s = PG_ARGISNULL(0) ? NULL : (CdpTraitState *) PG_GETARG_POINTER(0);
	CdpTraitKind kind = CdpTraitKindOf(TextArg(fcinfo, 1));

	if (s == NULL)
		s = CdpNewTraitState(kind);
	if (!PG_ARGISNULL(2))
		CdpTraitStateCombine(s, CdpTraitStateFromJsonb(kind, PG_GETARG_JSONB_P_COPY(2)));
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(s);
}

Datum
cdp_trait_state_final(PG_FUNCTION_ARGS)
{
	Jsonb	   *j;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	j = CdpTraitStateToJsonb((CdpTraitState *) PG_GETARG_POINTER(0));
	if (j == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(j);
}

/*
 * trait_union_value(kind, state): the value of the states combined, with
 * no stored form made and read back in between.
 */
Datum
cdp_trait_union_value_final(PG_FUNCTION_ARGS)
{
	Jsonb	   *j;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	j = CdpTraitStateValue((CdpTraitState *) PG_GETARG_POINTER(0));
	if (j == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(j);
}

/* trait_state_merge(kind, a, b): two stored states as one */
Datum
cdp_trait_state_merge(PG_FUNCTION_ARGS)
{
	CdpTraitKind kind = CdpTraitKindOf(TextArg(fcinfo, 0));
	CdpTraitState *s = CdpTraitStateFromJsonb(kind, PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1));
	Jsonb	   *j;

	if (!PG_ARGISNULL(2))
		CdpTraitStateCombine(s, CdpTraitStateFromJsonb(kind, PG_GETARG_JSONB_P(2)));
	j = CdpTraitStateToJsonb(s);
	if (j == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(j);
}

/* trait_value(kind, state): what the trait says for a state (NULL: none) */
Datum
cdp_trait_value(PG_FUNCTION_ARGS)
{
	CdpTraitKind kind = CdpTraitKindOf(TextArg(fcinfo, 0));
	Jsonb	   *j = CdpTraitStateValue(CdpTraitStateFromJsonb(kind,
															  PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1)));

	if (j == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(j);
}
