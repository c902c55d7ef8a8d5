/*
 * envelope.c
 *	  Reading inbox payload text without building its tree: where a batch
 *	  envelope's items and shared fields lie, so that items are parsed a few
 *	  at a time and each costs about its own size; and redacting write keys
 *	  in text that is stored without being parsed (bad JSON, payloads too
 *	  large), so a key never reaches a table.
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "pg_cdp.h"

/* the envelope fields the scan records */
typedef enum EnvelopeField
{
	FIELD_OTHER,
	FIELD_BATCH,
	FIELD_CONTEXT,
	FIELD_INTEGRATIONS,
	FIELD_SENT_AT
} EnvelopeField;

typedef struct ScanState
{
	JsonLexContext *lex;
	const char *text;
	CdpEnvelopeScan *scan;
	int			depth;			/* containers open around the current token */
	EnvelopeField field;		/* the top-level field being read */
	int			field_start;	/* where its value starts */
	bool		in_batch;		/* reading the elements of "batch" */
	int			item_start;
	int			items_cap;
} ScanState;

static const char *const redacted_value = "\"[redacted]\"";

static bool
IsJsonSpace(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* offset of the current token in the text */
static int
TokenOffset(ScanState *s)
{
	return (int) (s->lex->token_start - s->text);
}

/* offset just past the last token read */
static int
PrevTokenEnd(ScanState *s)
{
	return (int) (s->lex->prev_token_terminator - s->text);
}

#define MAX_FIELD_KEY_LEN 12		/* "integrations" */

static EnvelopeField
KeyField(const char *key, int len)
{
	static const struct
	{
		const char *key;
		EnvelopeField field;
	}			fields[] = {
		{"batch", FIELD_BATCH},
		{"context", FIELD_CONTEXT},
		{"integrations", FIELD_INTEGRATIONS},
		{"sentAt", FIELD_SENT_AT}
	};

	for (int i = 0; i < lengthof(fields); i++)
		if ((int) strlen(fields[i].key) == len && memcmp(fields[i].key, key, len) == 0)
			return fields[i].field;
	return FIELD_OTHER;
}

/*
 * The key of the field whose value is the current token, decoded: the lexer
 * has just read "key" and ':' (the scan does not ask it to decode strings, so
 * that bad escapes deep in an item stay that item's problem).
 */
static EnvelopeField
CurrentFieldKey(ScanState *s)
{
	const char *close = s->lex->prev_token_terminator - 1;	/* the ':' */
	const char *open;
	JsonLexContext *keylex;
	EnvelopeField field = FIELD_OTHER;
	int			len;

	Assert(*close == ':');
	do
		close--;
	while (IsJsonSpace(*close));
	Assert(*close == '"');

	/* the opening quote is the first one back not escaped by a backslash */
	for (open = close - 1;; open--)
	{
		const char *b = open;

		if (*open != '"')
			continue;
		while (b > s->text && b[-1] == '\\')
			b--;
		if ((open - b) % 2 == 0)
			break;
	}
	len = (int) (close - open + 1);
	if (memchr(open, '\\', len) == NULL)
		return KeyField(open + 1, len - 2);
	if (len > 6 * MAX_FIELD_KEY_LEN + 2)	/* longer than any, escaped */
		return FIELD_OTHER;

	keylex = makeJsonLexContextCstringLen((char *) open, len, PG_UTF8, true);
	if (json_lex(keylex) == JSON_SUCCESS && keylex->token_type == JSON_TOKEN_STRING)
		field = KeyField(keylex->strval->data, keylex->strval->len);
	pfree(keylex->strval->data);
	pfree(keylex->strval);
	pfree(keylex);
	return field;
}

static void
ScanObjectStart(void *state)
{
	ScanState  *s = state;

	if (s->depth == 0)
		s->scan->root = JSON_TOKEN_OBJECT_START;
	s->depth++;
}

static void
ScanObjectEnd(void *state)
{
	ScanState  *s = state;

	s->depth--;
}

static void
ScanArrayStart(void *state)
{
	ScanState  *s = state;

	if (s->depth == 0)
		s->scan->root = JSON_TOKEN_ARRAY_START;
	else if (s->depth == 1 && s->field == FIELD_BATCH)
		s->in_batch = true;
	s->depth++;
}

static void
ScanArrayEnd(void *state)
{
	ScanState  *s = state;

	s->depth--;
	if (s->depth == 1)
		s->in_batch = false;
}

static void
ScanFieldStart(void *state, char *fname, bool isnull)
{
	ScanState  *s = state;
	CdpEnvelopeScan *scan = s->scan;

	if (s->depth != 1)
		return;
	s->field = CurrentFieldKey(s);
	s->field_start = TokenOffset(s);
	if (s->field == FIELD_BATCH)
	{
		/* a repeated key: the last one wins, as in jsonb */
		scan->has_batch = true;
		scan->batch_type = s->lex->token_type;
		scan->nitems = 0;
	}
}

static void
ScanFieldEnd(void *state, char *fname, bool isnull)
{
	ScanState  *s = state;
	CdpJsonSpan span;

	if (s->depth != 1)
		return;
	span.start = s->field_start;
	span.len = PrevTokenEnd(s) - s->field_start;
	switch (s->field)
	{
		case FIELD_CONTEXT:
			s->scan->context = span;
			break;
		case FIELD_INTEGRATIONS:
			s->scan->integrations = span;
			break;
		case FIELD_SENT_AT:
			s->scan->sent_at = span;
			break;
		default:
			break;
	}
	s->field = FIELD_OTHER;
}

static void
ScanElementStart(void *state, bool isnull)
{
	ScanState  *s = state;

	if (s->in_batch && s->depth == 2)
		s->item_start = TokenOffset(s);
}

static void
ScanElementEnd(void *state, bool isnull)
{
	ScanState  *s = state;
	CdpEnvelopeScan *scan = s->scan;

	if (!s->in_batch || s->depth != 2)
		return;
	if (scan->nitems == s->items_cap)
	{
		s->items_cap = Max(64, s->items_cap * 2);
		scan->items = scan->items == NULL ?
			palloc(sizeof(CdpJsonSpan) * s->items_cap) :
			repalloc(scan->items, sizeof(CdpJsonSpan) * s->items_cap);
	}
	scan->items[scan->nitems].start = s->item_start;
	scan->items[scan->nitems].len = PrevTokenEnd(s) - s->item_start;
	scan->nitems++;
}

/*
 * Check that text is JSON and find, without building a tree, the spans of
 * the top-level "batch" array's elements and of "context", "integrations"
 * and "sentAt".  Memory: 8 bytes an item.  Returns false with an error code
 * and message when the text is not JSON; strings are not decoded here, so a
 * bad escape or \u0000 is found later, in the item that holds it.
 */
bool
CdpScanEnvelope(const char *text, int len, CdpEnvelopeScan *scan,
				const char **error_code, char **error_message)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	ScanState	state;
	JsonParseErrorType rc;

	memset(scan, 0, sizeof(*scan));
	scan->context.start = scan->integrations.start = scan->sent_at.start = -1;
	memset(&state, 0, sizeof(state));
	memset(&sem, 0, sizeof(sem));
	lex = makeJsonLexContextCstringLen((char *) text, len, PG_UTF8, false);
	state.lex = lex;
	state.text = text;
	state.scan = scan;
	sem.semstate = &state;
	sem.object_start = ScanObjectStart;
	sem.object_end = ScanObjectEnd;
	sem.array_start = ScanArrayStart;
	sem.array_end = ScanArrayEnd;
	sem.object_field_start = ScanFieldStart;
	sem.object_field_end = ScanFieldEnd;
	sem.array_element_start = ScanElementStart;
	sem.array_element_end = ScanElementEnd;

	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		*error_code = "invalid_json";
		*error_message = psprintf("invalid JSON: %s", json_errdetail(rc, lex));
		return false;
	}
	if (scan->root == JSON_TOKEN_INVALID)
		scan->root = JSON_TOKEN_STRING; /* a bare scalar: no container began */
	return true;
}

/* end of the JSON string whose opening quote is at p (or of the text) */
static const char *
SkipString(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		if (*p == '\\' && p + 1 < end)
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return end;
}

static int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* whether the string literal [p, end) (quotes included) decodes to want */
static bool
StringIs(const char *p, const char *end, const char *want)
{
	const char *w = want;

	for (p++; p < end - 1; p++)
	{
		int			c = (unsigned char) *p;

		if (c == '\\')
		{
			if (++p >= end - 1)
				return false;
			switch (*p)
			{
				case 'u':
					{
						if (end - 1 - p < 5)
							return false;
						c = 0;
						for (int i = 1; i <= 4; i++)
						{
							int			h = HexValue(p[i]);

							if (h < 0)
								return false;
							c = c * 16 + h;
						}
						p += 4;
						break;
					}
				case 'b':
					c = '\b';
					break;
				case 'f':
					c = '\f';
					break;
				case 'n':
					c = '\n';
					break;
				case 'r':
					c = '\r';
					break;
				case 't':
					c = '\t';
					break;
				default:
					c = (unsigned char) *p;
					break;
			}
		}
		if (*w == '\0' || c != (unsigned char) *w)
			return false;
		w++;
	}
	return *w == '\0';
}

/* end of the JSON value starting at p, or of the text if it never ends */
static const char *
SkipValue(const char *p, const char *end)
{
	int			depth = 0;

	if (p >= end)
		return end;
	if (*p == '"')
		return SkipString(p, end);
	if (*p != '{' && *p != '[')
	{
		while (p < end && *p != ',' && *p != '}' && *p != ']' && !IsJsonSpace(*p))
			p++;
		return p;
	}
	while (p < end)
	{
		if (*p == '"')
		{
			p = SkipString(p, end);
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if ((*p == '}' || *p == ']') && --depth == 0)
			return p + 1;
		p++;
	}
	return end;
}

/*
 * text with the value of every "writeKey" member, at any depth, replaced by
 * "[redacted]"; text itself when it holds none.  For text that is stored
 * without being parsed: it need not be JSON (a value cut off by the end of
 * the text is redacted to the end) and the scan is linear.
 */
const char *
CdpRedactWriteKeys(const char *text)
{
	const char *end;
	const char *p;
	const char *copied;
	StringInfoData out;

	/* a key spelled with escapes needs a backslash */
	if (strstr(text, "writeKey") == NULL && strchr(text, '\\') == NULL)
		return text;

	end = text + strlen(text);
	initStringInfo(&out);
	copied = text;
	for (p = text; p < end;)
	{
		const char *key_end;
		const char *v;

		if (*p != '"')
		{
			p++;
			continue;
		}
		key_end = SkipString(p, end);
		if (!StringIs(p, key_end, "writeKey"))
		{
			p = key_end;
			continue;
		}
		for (v = key_end; v < end && IsJsonSpace(*v); v++)
			;
		if (v >= end || *v != ':')
		{
			p = key_end;
			continue;
		}
		for (v++; v < end && IsJsonSpace(*v); v++)
			;
		appendBinaryStringInfo(&out, copied, (int) (v - copied));
		appendStringInfoString(&out, redacted_value);
		p = copied = SkipValue(v, end);
	}
	if (out.len == 0)
	{
		pfree(out.data);
		return text;
	}
	appendBinaryStringInfo(&out, copied, (int) (end - copied));
	return out.data;
}

/*
 * The first max_bytes of text (whole characters), for a payload too large to
 * keep: enough to see what it was and where it came from.
 */
char *
CdpTextPrefix(const char *text, int len, int max_bytes)
{
	return pnstrdup(text, pg_mbcliplen(text, len, Min(len, max_bytes)));
}
