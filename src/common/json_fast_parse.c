/*
 * json_fast_parse.c
 *	  The common case of message text parsed without PostgreSQL's JSON
 *	  lexer: strings without escapes, numbers, literals, objects and arrays.
 *	  PostgreSQL 15's lexer copies every character of every string one call
 *	  at a time, a tenth of ingest's time; here a string without a backslash
 *	  is found with memchr and copied at once.  Anything this path does not
 *	  take on (an escape, a control character, bad JSON, deep nesting) makes
 *	  it give up, and the caller parses the whole text with pg_parse_json,
 *	  which builds the value or reports the error exactly as before.  It
 *	  builds the same tree pg_parse_json's callbacks build (see
 *	  json_parse.c): the same pushJsonbValue calls with the same strings.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg_cdp.h"

/* deeper values are left to pg_parse_json, which checks the stack */
#define FAST_MAX_DEPTH 64

typedef struct FastParser
{
	const char *p;				/* the next byte to read */
	const char *end;
	JsonbParseState *state;
	JsonbValue *result;			/* the last container closed */
	int			depth;
} FastParser;

static bool FastValue(FastParser *f);

static inline void
SkipSpace(FastParser *f)
{
	while (f->p < f->end &&
		   (*f->p == ' ' || *f->p == '\t' || *f->p == '\n' || *f->p == '\r'))
		f->p++;
}

/*
 * What may follow a scalar: space, a delimiter or the end.  pg_parse_json
 * reports "truex" or "12abc" as one bad token; here such text gives up.
 */
static inline bool
AtScalarEnd(FastParser *f)
{
	char		c;

	if (f->p >= f->end)
		return true;
	c = *f->p;
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
		c == ',' || c == ':' || c == '}' || c == ']';
}

/* a string at f->p (its opening quote), without escapes or control bytes */
static bool
FastString(FastParser *f, JsonbValue *v)
{
	const char *start = f->p + 1;
	const char *close;
	char	   *copy;
	int			len;

	if (start > f->end)
		return false;
	close = memchr(start, '"', f->end - start);
	if (close == NULL)
		return false;
	for (const char *c = start; c < close; c++)
		if (*c == '\\' || (unsigned char) *c < 0x20)
			return false;
	len = close - start;
	copy = palloc(len + 1);
	memcpy(copy, start, len);
	copy[len] = '\0';
	v->type = jbvString;
	v->val.string.val = copy;
	v->val.string.len = len;
	f->p = close + 1;
	return true;
}

static inline bool
IsDigit(const char *p, const char *end)
{
	return p < end && *p >= '0' && *p <= '9';
}

/* a number in JSON's grammar, converted by numeric_in as pg_parse_json's callback does */
static bool
FastNumber(FastParser *f, JsonbValue *v)
{
	const char *start = f->p;
	const char *p = f->p;
	char		buf[64];
	char	   *text;
	int			len;

	if (p < f->end && *p == '-')
		p++;
	if (!IsDigit(p, f->end))
		return false;
	if (*p == '0')
		p++;
	else
		while (IsDigit(p, f->end))
			p++;
	if (p < f->end && *p == '.')
	{
		p++;
		if (!IsDigit(p, f->end))
			return false;
		while (IsDigit(p, f->end))
			p++;
	}
	if (p < f->end && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (p < f->end && (*p == '+' || *p == '-'))
			p++;
		if (!IsDigit(p, f->end))
			return false;
		while (IsDigit(p, f->end))
			p++;
	}
	f->p = p;
	if (!AtScalarEnd(f))
		return false;
	len = p - start;
	text = len < (int) sizeof(buf) ? buf : palloc(len + 1);
	memcpy(text, start, len);
	text[len] = '\0';
	v->type = jbvNumeric;
	v->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
														 CStringGetDatum(text),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
	return true;
}

static bool
FastLiteral(FastParser *f, const char *word, int len)
{
	if (f->end - f->p < len || memcmp(f->p, word, len) != 0)
		return false;
	f->p += len;
	return AtScalarEnd(f);
}

/* a scalar at f->p into v */
static bool
FastScalar(FastParser *f, JsonbValue *v)
{
	switch (*f->p)
	{
		case '"':
			return FastString(f, v);
		case 't':
			v->type = jbvBool;
			v->val.boolean = true;
			return FastLiteral(f, "true", 4);
		case 'f':
			v->type = jbvBool;
			v->val.boolean = false;
			return FastLiteral(f, "false", 5);
		case 'n':
			v->type = jbvNull;
			return FastLiteral(f, "null", 4);
		default:
			return FastNumber(f, v);
	}
}

/* the closing bracket at f->p ends the innermost container */
static void
CloseContainer(FastParser *f, JsonbIteratorToken end)
{
	f->p++;
	f->result = pushJsonbValue(&f->state, end, NULL);
}

/*
 * Open a container at f->p ('{' or '['); true when it is empty, then
 * closed already.
 */
static bool
OpenContainer(FastParser *f, JsonbIteratorToken begin, JsonbIteratorToken end, char close)
{
	f->p++;
	pushJsonbValue(&f->state, begin, NULL);
	SkipSpace(f);
	if (f->p < f->end && *f->p == close)
	{
		CloseContainer(f, end);
		return true;
	}
	return false;
}

/*
 * After an item: 1 when a comma (consumed) announces another, 0 when the
 * container closes (consumed, closed), -1 when neither follows.
 */
static int
NextItem(FastParser *f, JsonbIteratorToken end, char close)
{
	SkipSpace(f);
	if (f->p >= f->end)
		return -1;
	if (*f->p == close)
	{
		CloseContainer(f, end);
		return 0;
	}
	if (*f->p != ',')
		return -1;
	f->p++;
	return 1;
}

static bool
FastObject(FastParser *f)
{
	int			next = 1;

	if (OpenContainer(f, WJB_BEGIN_OBJECT, WJB_END_OBJECT, '}'))
		return true;
	while (next == 1)
	{
		JsonbValue	key;

		SkipSpace(f);
		if (f->p >= f->end || *f->p != '"' || !FastString(f, &key))
			return false;
		SkipSpace(f);
		if (f->p >= f->end || *f->p != ':')
			return false;
		f->p++;
		pushJsonbValue(&f->state, WJB_KEY, &key);
		if (!FastValue(f))
			return false;
		next = NextItem(f, WJB_END_OBJECT, '}');
	}
	return next == 0;
}

static bool
FastArray(FastParser *f)
{
	int			next = 1;

	if (OpenContainer(f, WJB_BEGIN_ARRAY, WJB_END_ARRAY, ']'))
		return true;
	while (next == 1)
	{
		if (!FastValue(f))
			return false;
		next = NextItem(f, WJB_END_ARRAY, ']');
	}
	return next == 0;
}

/* a value inside a container: nested ones pushed whole, scalars as elements or values */
static bool
FastValue(FastParser *f)
{
	JsonbValue	v;
	bool		ok;

	SkipSpace(f);
	if (f->p >= f->end)
		return false;
	if (*f->p == '{' || *f->p == '[')
	{
		if (++f->depth > FAST_MAX_DEPTH)
			return false;
		ok = *f->p == '{' ? FastObject(f) : FastArray(f);
		f->depth--;
		return ok;
	}
	if (!FastScalar(f, &v))
		return false;
	pushJsonbValue(&f->state,
				   f->state->contVal.type == jbvArray ? WJB_ELEM : WJB_VALUE, &v);
	return true;
}

/*
 * Parse text (an object or an array) into *result when it is the common
 * case; false when the caller must parse it with pg_parse_json (what was
 * built so far is garbage in the current memory context).
 */
bool
CdpParseJsonFast(const char *text, int len, JsonbValue **result)
{
	FastParser	f;

	f.p = text;
	f.end = text + len;
	f.state = NULL;
	f.result = NULL;
	f.depth = 1;
	SkipSpace(&f);
	if (f.p >= f.end)
		return false;
	if (*f.p == '{')
	{
		if (!FastObject(&f))
			return false;
	}
	else if (*f.p == '[')
	{
		if (!FastArray(&f))
			return false;
	}
	else
		return false;
	SkipSpace(&f);
	if (f.p != f.end)
		return false;
	*result = f.result;
	return true;
}
