/*
 * json_parse.c
 *	  Parse message text into an in-memory jsonb tree in one pass, reporting
 *	  bad JSON as an error code instead of throwing, so one broken line in a
 *	  bulk load becomes a dead letter and the rest of the batch goes on.
 *	  Also small helpers over those trees (lookup, merge, serialise).
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg_cdp.h"

typedef struct TreeBuildState
{
	JsonbParseState *parse_state;
	JsonbValue *result;
	JsonbValue *top_level_scalar;	/* a bare scalar, the whole text */
} TreeBuildState;

static void
TreeObjectStart(void *state)
{
	TreeBuildState *s = state;

	pushJsonbValue(&s->parse_state, WJB_BEGIN_OBJECT, NULL);
}

static void
TreeObjectEnd(void *state)
{
	TreeBuildState *s = state;

	s->result = pushJsonbValue(&s->parse_state, WJB_END_OBJECT, NULL);
}

static void
TreeArrayStart(void *state)
{
	TreeBuildState *s = state;

	pushJsonbValue(&s->parse_state, WJB_BEGIN_ARRAY, NULL);
}

static void
TreeArrayEnd(void *state)
{
	TreeBuildState *s = state;

	s->result = pushJsonbValue(&s->parse_state, WJB_END_ARRAY, NULL);
}

static void
TreeObjectFieldStart(void *state, char *fname, bool isnull)
{
	TreeBuildState *s = state;
	JsonbValue	key;

	key.type = jbvString;
	key.val.string.len = strlen(fname);
	key.val.string.val = fname;
	pushJsonbValue(&s->parse_state, WJB_KEY, &key);
}

static void
TreeScalar(void *state, char *token, JsonTokenType tokentype)
{
	TreeBuildState *s = state;
	JsonbValue	v;

	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			v.type = jbvString;
			v.val.string.len = strlen(token);
			v.val.string.val = token;
			break;
		case JSON_TOKEN_NUMBER:
			/* the lexer has checked the syntax; numeric_in can still overflow */
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
																CStringGetDatum(token),
																ObjectIdGetDatum(InvalidOid),
																Int32GetDatum(-1)));
			break;
		case JSON_TOKEN_TRUE:
			v.type = jbvBool;
			v.val.boolean = true;
			break;
		case JSON_TOKEN_FALSE:
			v.type = jbvBool;
			v.val.boolean = false;
			break;
		default:
			v.type = jbvNull;
			break;
	}

	if (s->parse_state == NULL)
	{
		s->top_level_scalar = palloc(sizeof(JsonbValue));
		*s->top_level_scalar = v;
		return;
	}
	pushJsonbValue(&s->parse_state,
				   s->parse_state->contVal.type == jbvArray ? WJB_ELEM : WJB_VALUE,
				   &v);
}

/*
 * Parse text into an in-memory value: a jsonb tree (jbvObject/jbvArray with
 * nested values) or a scalar; the common case by CdpParseJsonFast, the rest
 * (and every error) by pg_parse_json.  Returns NULL and sets an error code and
 * message when the text is not JSON, or is JSON that jsonb cannot hold
 * (\u0000).  Duplicate keys keep the last value, as jsonb does.  A number
 * beyond numeric's range raises an error (the caller isolates it).
 */
JsonbValue *
CdpParseJsonValue(const char *text, int len, const char **error_code, char **error_message)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	TreeBuildState state;
	JsonParseErrorType rc;
	JsonbValue *fast;

	if (CdpParseJsonFast(text, len, &fast))
		return fast;
	memset(&state, 0, sizeof(state));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &state;
	sem.object_start = TreeObjectStart;
	sem.object_end = TreeObjectEnd;
	sem.array_start = TreeArrayStart;
	sem.array_end = TreeArrayEnd;
	sem.object_field_start = TreeObjectFieldStart;
	sem.scalar = TreeScalar;

	lex = makeJsonLexContextCstringLen((char *) text, len, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		if (rc == JSON_UNICODE_CODE_POINT_ZERO)
		{
			*error_code = "null_character";
			*error_message = pstrdup("\\u0000 cannot be stored in text");
		}
		else
		{
			*error_code = "invalid_json";
			*error_message = psprintf("invalid JSON: %s", json_errdetail(rc, lex));
		}
		return NULL;
	}
	return state.top_level_scalar ? state.top_level_scalar : state.result;
}

/*
 * Parse text into a jsonb tree, as CdpParseJsonValue; a bare scalar is valid
 * JSON but never a message: it returns NULL with code "not_an_object".
 */
JsonbValue *
CdpParseJson(const char *text, int len, const char **error_code, char **error_message)
{
	JsonbValue *result = CdpParseJsonValue(text, len, error_code, error_message);

	if (result != NULL && result->type != jbvObject && result->type != jbvArray)
	{
		*error_code = "not_an_object";
		*error_message = pstrdup("message is a JSON scalar, not an object");
		return NULL;
	}
	return result;
}

/* JSON type names as a user writes them, for error messages */
const char *
CdpJsonTypeName(JsonbValue *val)
{
	switch (val->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvArray:
			return "an array";
		case jbvObject:
			return "an object";
		default:
			return "a binary value";
	}
}

/* jsonb's key order: shorter keys first, then bytewise */
static int
CompareKeys(const char *a, int alen, const char *b, int blen)
{
	if (alen != blen)
		return alen < blen ? -1 : 1;
	return memcmp(a, b, alen);
}

static int
ComparePairs(const void *a, const void *b)
{
	const JsonbPair *pa = a;
	const JsonbPair *pb = b;

	return CompareKeys(pa->key.val.string.val, pa->key.val.string.len,
					   pb->key.val.string.val, pb->key.val.string.len);
}

/* the value under key in an in-memory object, or NULL */
JsonbValue *
CdpJsonbObjectGet(JsonbValue *obj, const char *key)
{
	int			keylen = strlen(key);
	int			lo = 0;
	int			hi;

	Assert(obj->type == jbvObject);
	/* pairs are kept in jsonb key order, so binary search */
	hi = obj->val.object.nPairs - 1;
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		JsonbPair  *p = &obj->val.object.pairs[mid];
		int			cmp = CompareKeys(p->key.val.string.val, p->key.val.string.len,
									  key, keylen);

		if (cmp == 0)
			return &p->value;
		if (cmp < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

/*
 * A copy of obj with every key of defaults that obj lacks: how a batch
 * envelope's context and integrations apply to its items.
 */
JsonbValue *
CdpJsonbObjectMergeMissing(JsonbValue *obj, JsonbValue *defaults)
{
	JsonbValue *result = palloc(sizeof(JsonbValue));
	int			n = 0;
	int			i;

	result->type = jbvObject;
	result->val.object.pairs = palloc(sizeof(JsonbPair) *
									  (obj->val.object.nPairs + defaults->val.object.nPairs + 1));
	for (i = 0; i < obj->val.object.nPairs; i++)
		result->val.object.pairs[n++] = obj->val.object.pairs[i];
	for (i = 0; i < defaults->val.object.nPairs; i++)
	{
		JsonbPair  *p = &defaults->val.object.pairs[i];
		char	   *key = pnstrdup(p->key.val.string.val, p->key.val.string.len);

		if (CdpJsonbObjectGet(obj, key) == NULL)
			result->val.object.pairs[n++] = *p;
	}
	result->val.object.nPairs = n;
	qsort(result->val.object.pairs, n, sizeof(JsonbPair), ComparePairs);
	return result;
}

/* A copy of obj with key set to val (added, or replacing the old value). */
JsonbValue *
CdpJsonbObjectWith(JsonbValue *obj, const char *key, JsonbValue *val)
{
	JsonbValue	single;
	JsonbPair	pair;
	JsonbValue *merged;
	JsonbValue *slot;

	slot = CdpJsonbObjectGet(obj, key);
	if (slot != NULL)
	{
		merged = palloc(sizeof(JsonbValue));
		merged->type = jbvObject;
		merged->val.object.nPairs = obj->val.object.nPairs;
		merged->val.object.pairs = palloc(sizeof(JsonbPair) * obj->val.object.nPairs);
		memcpy(merged->val.object.pairs, obj->val.object.pairs,
			   sizeof(JsonbPair) * obj->val.object.nPairs);
		*CdpJsonbObjectGet(merged, key) = *val;
		return merged;
	}
	pair.key.type = jbvString;
	pair.key.val.string.val = (char *) key;
	pair.key.val.string.len = strlen(key);
	pair.value = *val;
	pair.order = 0;
	single.type = jbvObject;
	single.val.object.nPairs = 1;
	single.val.object.pairs = &pair;
	return CdpJsonbObjectMergeMissing(obj, &single);
}

/* A copy of obj without key (obj itself when it has no such key). */
JsonbValue *
CdpJsonbObjectWithout(JsonbValue *obj, const char *key)
{
	JsonbValue *result;
	JsonbValue *victim = CdpJsonbObjectGet(obj, key);
	int			n = 0;

	if (victim == NULL)
		return obj;
	result = palloc(sizeof(JsonbValue));
	result->type = jbvObject;
	result->val.object.pairs = palloc(sizeof(JsonbPair) * obj->val.object.nPairs);
	for (int i = 0; i < obj->val.object.nPairs; i++)
		if (&obj->val.object.pairs[i].value != victim)
			result->val.object.pairs[n++] = obj->val.object.pairs[i];
	result->val.object.nPairs = n;
	return result;
}

/* JSON text of an in-memory value, as jsonb would print it */
char *
CdpJsonbValueToText(JsonbValue *val)
{
	Jsonb	   *jb = JsonbValueToJsonb(val);

	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}
