/*
 * http_request.c
 *	  From an HTTP request of the tracking API to what the inbox queues.
 *
 *	  A batch envelope is queued as sent: the pipeline reads its items, merges
 *	  the envelope's context into them and dead-letters a bad item while its
 *	  siblings are stored, so here it is only decoded, bounded, checked to be
 *	  JSON with a "batch" array, and counted.  A single call is answered 400
 *	  when it could never be stored (SDKs do not retry a 400), with the same
 *	  rules and codes the pipeline's dead letters use, and gets its "type"
 *	  from the path.  The write key comes from a Basic Authorization header
 *	  or, without one, from the body.
 *
 *	  The profile API's paths, /v1/profiles/{identifier}/traits and
 *	  /audiences, are read here too: {identifier} percent-decoded and
 *	  bounded, the read key taken from a Bearer or Basic Authorization.
 *	  libmicrohttpd hands over paths as sent (not decoded), so that an
 *	  identifier holding "/" or "%00" is told apart; the fixed paths are
 *	  matched decoded, as before.
 *
 *	  Frontend-safe (the fuzzer builds it): palloc, no ereport, no database.
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include "common/base64.h"
#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "http_inflate.h"
#include "json_token_name.h"
#include "http_request.h"

#define MAX_MESSAGE_ID_CHARS 100

typedef struct Route
{
	const char *path;
	CdpHttpRoute route;
} Route;

static const Route routes[] = {
	{"/v1/track", CDP_ROUTE_TRACK}, {"/v1/t", CDP_ROUTE_TRACK},
	{"/v1/identify", CDP_ROUTE_IDENTIFY}, {"/v1/i", CDP_ROUTE_IDENTIFY},
	{"/v1/page", CDP_ROUTE_PAGE}, {"/v1/p", CDP_ROUTE_PAGE},
	{"/v1/screen", CDP_ROUTE_SCREEN}, {"/v1/s", CDP_ROUTE_SCREEN},
	{"/v1/group", CDP_ROUTE_GROUP}, {"/v1/g", CDP_ROUTE_GROUP},
	{"/v1/alias", CDP_ROUTE_ALIAS}, {"/v1/a", CDP_ROUTE_ALIAS},
	{"/v1/batch", CDP_ROUTE_BATCH}, {"/v1/b", CDP_ROUTE_BATCH},
	{"/v1/import", CDP_ROUTE_BATCH},
	{"/health", CDP_ROUTE_HEALTH},
	{"/metrics", CDP_ROUTE_METRICS},
};

/* /v1/profiles/{identifier}/<what> */
#define PROFILES_PREFIX "/v1/profiles/"
#define PROFILES_PREFIX_LEN (sizeof(PROFILES_PREFIX) - 1)

static const Route profile_routes[] = {
	{"traits", CDP_ROUTE_PROFILE_TRAITS},
	{"audiences", CDP_ROUTE_PROFILE_AUDIENCES},
};

/* per route: its label in metrics (the long path) and a single call's type */
static const char *const route_labels[CDP_ROUTE_COUNT] = {
	"other", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group",
	"/v1/alias", "/v1/batch", "/health", "/metrics",
	"/v1/profiles/{identifier}/traits", "/v1/profiles/{identifier}/audiences"
};
static const char *const route_types[CDP_ROUTE_COUNT] = {
	NULL, "track", "identify", "page", "screen", "group", "alias", NULL, NULL, NULL,
	NULL, NULL
};

/* the top-level fields a single call is judged by */
typedef enum Field
{
	F_OTHER = 0,
	F_WRITE_KEY,
	F_TYPE,
	F_MESSAGE_ID,
	F_USER_ID,
	F_ANONYMOUS_ID,
	F_PREVIOUS_ID,
	F_GROUP_ID,
	F_EVENT,
	F_NAME,
	F_PROPERTIES,
	F_TRAITS,
	F_CONTEXT,
	F_BATCH,
	F_COUNT
} Field;

static const char *const field_names[F_COUNT] = {
	NULL, "writeKey", "type", "messageId", "userId", "anonymousId", "previousId",
	"groupId", "event", "name", "properties", "traits", "context", "batch"
};

/* what the scan saw of a top-level field */
typedef struct FieldSeen
{
	bool		present;
	JsonTokenType token;		/* a scalar's token type, or OBJECT_START / ARRAY_START */
	char	   *value;			/* a scalar's text, de-escaped */
} FieldSeen;

typedef struct Scan
{
	int			depth;
	bool		top_is_object;
	Field		field;			/* the top-level field being read */
	FieldSeen	seen[F_COUNT];
	int			fields;			/* top-level fields */
	int			batch_items;
	Field		item_field;		/* in a batch item: writeKey or not */
	char	   *item_write_key; /* the first batch item's writeKey */
} Scan;

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

/*
 * in[0..len) with its %XX escapes decoded into out (room for cap bytes and
 * a NUL); the decoded length, or -1 when it does not fit or, if strict, an
 * escape is not two hex digits (else such a '%' stays as it is, as
 * libmicrohttpd leaves it).  No allocation: libmicrohttpd's callbacks call it.
 */
static int
PercentDecode(const char *in, size_t len, char *out, size_t cap, bool strict)
{
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		char		c = in[i];

		if (c == '%' && i + 2 < len && HexValue(in[i + 1]) >= 0 && HexValue(in[i + 2]) >= 0)
		{
			c = (char) (HexValue(in[i + 1]) * 16 + HexValue(in[i + 2]));
			i += 2;
		}
		else if (c == '%' && strict)
			return -1;
		if (n >= cap)
			return -1;
		out[n++] = c;
	}
	out[n] = '\0';
	return (int) n;
}

/*
 * The profile route of url, with where its {identifier} is (as sent), or
 * CDP_ROUTE_UNKNOWN.  The identifier is everything between the prefix and
 * the last '/', so one holding a '/' sent unescaped still reads.
 */
static CdpHttpRoute
ProfileRoute(const char *url, const char **id, size_t *id_len)
{
	const char *slash;

	if (strncmp(url, PROFILES_PREFIX, PROFILES_PREFIX_LEN) != 0)
		return CDP_ROUTE_UNKNOWN;
	slash = strrchr(url, '/');
	if (slash <= url + PROFILES_PREFIX_LEN)
		return CDP_ROUTE_UNKNOWN;	/* no {identifier} */
	for (int i = 0; i < lengthof(profile_routes); i++)
		if (strcmp(slash + 1, profile_routes[i].path) == 0)
		{
			if (id != NULL)
			{
				*id = url + PROFILES_PREFIX_LEN;
				*id_len = slash - *id;
			}
			return profile_routes[i].route;
		}
	return CDP_ROUTE_UNKNOWN;
}

/* the route of a path as sent (not yet percent-decoded); called in callbacks */
CdpHttpRoute
CdpHttpRouteOf(const char *url)
{
	char		decoded[32];

	if (strncmp(url, PROFILES_PREFIX, PROFILES_PREFIX_LEN) == 0)
		return ProfileRoute(url, NULL, NULL);
	if (PercentDecode(url, strlen(url), decoded, sizeof(decoded) - 1, false) < 0)
		return CDP_ROUTE_UNKNOWN;	/* longer than any fixed path */
	for (int i = 0; i < lengthof(routes); i++)
		if (strcmp(decoded, routes[i].path) == 0)
			return routes[i].route;
	return CDP_ROUTE_UNKNOWN;
}

const char *
CdpHttpRouteLabel(CdpHttpRoute route)
{
	return route_labels[route];
}

bool
CdpHttpRouteTakesPost(CdpHttpRoute route)
{
	return route >= CDP_ROUTE_TRACK && route <= CDP_ROUTE_BATCH;
}

bool
CdpHttpRouteIsProfile(CdpHttpRoute route)
{
	return route == CDP_ROUTE_PROFILE_TRAITS || route == CDP_ROUTE_PROFILE_AUDIENCES;
}

/*
 * Whether a key sent is printable ASCII, as every write and read key is: any
 * other is unknown without a lookup (whose text must be valid UTF-8).
 */
bool
CdpHttpKeyIsPrintable(const char *key)
{
	for (; *key != '\0'; key++)
		if ((unsigned char) *key < 0x21 || (unsigned char) *key > 0x7e)
			return false;
	return true;
}

static void
Refuse(CdpHttpIngest *out, int status, const char *error, char *message)
{
	out->status = status;
	out->error = error;
	out->message = message;
}

/* the header's text after a scheme word ("Basic ", "Bearer "), spaces trimmed, or NULL */
static char *
AuthParam(const char *header, const char *scheme)
{
	size_t		slen = strlen(scheme);
	int			len;

	while (*header == ' ')
		header++;
	if (pg_strncasecmp(header, scheme, slen) != 0)
		return NULL;
	header += slen;
	while (*header == ' ')
		header++;
	len = strlen(header);
	while (len > 0 && header[len - 1] == ' ')
		len--;
	return pnstrdup(header, len);
}

/* the user name of Basic's base64 "user:password", or NULL when it is not base64 */
static char *
BasicUser(const char *b64)
{
	int			len = strlen(b64);
	char	   *decoded = palloc(pg_b64_dec_len(len) + 1);
	int			n = pg_b64_decode(b64, len, decoded, pg_b64_dec_len(len));
	char	   *colon;

	if (n < 0 || memchr(decoded, '\0', n) != NULL)
		return NULL;
	decoded[n] = '\0';
	colon = strchr(decoded, ':');
	if (colon != NULL)
		*colon = '\0';
	return decoded;
}

/*
 * The key of "Authorization: Basic base64(key:)": NULL (and a refusal) when
 * the header is not that.
 */
static char *
BasicAuthKey(const char *header, CdpHttpIngest *out)
{
	char	   *b64 = AuthParam(header, "Basic ");
	char	   *key;

	if (b64 == NULL)
	{
		Refuse(out, 401, "unauthorized",
			   psprintf("the Authorization header must be Basic with the write key as user name"));
		return NULL;
	}
	key = BasicUser(b64);
	if (key == NULL)
		Refuse(out, 401, "unauthorized", psprintf("the Authorization header is not valid base64"));
	return key;
}

/*
 * A client's string shown in a message: its first 40 characters, a byte
 * that is not UTF-8 as \xNN, so that the answer stays valid UTF-8.
 */
static char *
ClientText(const char *text)
{
	StringInfoData buf;
	int			len = strlen(text);
	int			chars = 0;

	initStringInfo(&buf);
	while (*text != '\0' && chars++ < 40)
	{
		int			n = pg_encoding_verifymbchar(PG_UTF8, text, len);

		if (n > 0)
			appendBinaryStringInfo(&buf, text, n);
		else
		{
			appendStringInfo(&buf, "\\x%02x", (unsigned char) *text);
			n = 1;
		}
		text += n;
		len -= n;
	}
	if (*text != '\0')
		appendStringInfoString(&buf, "...");
	return buf.data;
}

static Field
FieldOf(const char *name)
{
	if (name == NULL)
		return F_OTHER;
	for (int f = 1; f < F_COUNT; f++)
		if (strcmp(name, field_names[f]) == 0)
			return (Field) f;
	return F_OTHER;
}

static void
ScanObjectStart(void *state)
{
	Scan	   *s = state;

	if (s->depth == 0)
		s->top_is_object = true;
	else if (s->depth == 1)
	{
		s->seen[s->field].present = true;
		s->seen[s->field].token = JSON_TOKEN_OBJECT_START;
	}
	s->depth++;
}

static void
ScanArrayStart(void *state)
{
	Scan	   *s = state;

	if (s->depth == 1)
	{
		s->seen[s->field].present = true;
		s->seen[s->field].token = JSON_TOKEN_ARRAY_START;
	}
	s->depth++;
}

static void
ScanEnd(void *state)
{
	((Scan *) state)->depth--;
}

static void
ScanFieldStart(void *state, char *fname, bool isnull)
{
	Scan	   *s = state;

	if (s->depth == 1)
	{
		s->field = FieldOf(fname);
		s->fields++;
		/* a repeated "batch": the last one wins, as in jsonb */
		if (s->field == F_BATCH)
		{
			s->batch_items = 0;
			s->item_write_key = NULL;
		}
	}
	else if (s->depth == 3 && s->field == F_BATCH)
		s->item_field = fname != NULL && strcmp(fname, "writeKey") == 0 ? F_WRITE_KEY : F_OTHER;
}

static void
ScanElementStart(void *state, bool isnull)
{
	Scan	   *s = state;

	if (s->depth == 2 && s->field == F_BATCH)
	{
		s->batch_items++;
		/* only an item's own "writeKey" counts, not a later item's scalars */
		s->item_field = F_OTHER;
	}
}

static void
ScanScalar(void *state, char *token, JsonTokenType tokentype)
{
	Scan	   *s = state;

	if (s->depth == 1)
	{
		s->seen[s->field].present = true;
		s->seen[s->field].token = tokentype;
		s->seen[s->field].value = token;
	}
	else if (s->depth == 3 && s->field == F_BATCH && s->item_field == F_WRITE_KEY &&
			 s->item_write_key == NULL && tokentype == JSON_TOKEN_STRING)
		s->item_write_key = token;
}

/* nesting deeper than CDP_HTTP_MAX_JSON_DEPTH, found without recursing */
static bool
TooDeep(const char *text, size_t len)
{
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		c = text[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > CDP_HTTP_MAX_JSON_DEPTH)
				return true;
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return false;
}

/* the code point of the \u escape whose hex digits start at text[i], or -1 */
static int
EscapedCodePoint(const char *text, size_t len, size_t i)
{
	int			ch = 0;

	if (i + 4 > len)
		return -1;
	for (size_t k = i; k < i + 4; k++)
	{
		int			v = HexValue(text[k]);

		if (v < 0)
			return -1;
		ch = (ch << 4) + v;
	}
	return ch;
}

/*
 * For a batch: the text to scan, with each \u escape that does not decode
 * (\u0000, a lone surrogate) turned into \ufffd, or text itself when it has
 * none.  The pipeline dead-letters only the item holding one and stores its
 * siblings, so the envelope must not be refused for it; the strings changed
 * are ones no stored message keeps.
 */
static const char *
DecodableEscapes(const char *text, size_t len)
{
	char	   *copy = NULL;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		int			ch;

		if (text[i] == '"')
			in_string = !in_string;
		if (!in_string || text[i] != '\\')
			continue;
		if (i + 1 >= len || text[i + 1] != 'u' ||
			(ch = EscapedCodePoint(text, len, i + 2)) < 0)
		{
			i++;				/* an escaped character, or bad hex the lexer refuses */
			continue;
		}
		if (ch >= 0xD800 && ch <= 0xDBFF && i + 11 < len &&
			text[i + 6] == '\\' && text[i + 7] == 'u')
		{
			int			low = EscapedCodePoint(text, len, i + 8);

			if (low >= 0xDC00 && low <= 0xDFFF)
			{
				i += 11;		/* a surrogate pair */
				continue;
			}
		}
		if (ch == 0 || (ch >= 0xD800 && ch <= 0xDFFF))
		{
			if (copy == NULL)
			{
				copy = palloc(len + 1);
				memcpy(copy, text, len);
				copy[len] = '\0';
			}
			memcpy(copy + i, "\\ufffd", 6);
		}
		i += 5;
	}
	return copy ? copy : text;
}

#ifdef FRONTEND
/*
 * PostgreSQL 15's frontend jsonapi has no json_errdetail: the fuzzer build
 * says where parsing stopped instead.
 */
static char *
JsonErrorDetail(JsonParseErrorType rc, JsonLexContext *lex)
{
	if (lex->token_start == NULL)
		return psprintf("parse error %d at the end of the body", (int) rc);
	return psprintf("parse error %d at byte %d", (int) rc,
					(int) (lex->token_start - lex->input));
}
#else
#define JsonErrorDetail json_errdetail
#endif

/* parse text, filling the scan; false (and a refusal) when it is not JSON */
static bool
ScanJson(const char *text, size_t len, Scan *s, CdpHttpIngest *out)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	JsonParseErrorType rc;

	if (pg_encoding_verifymbstr(PG_UTF8, text, len) != (int) len)
	{
		Refuse(out, 400, "invalid_json", psprintf("the body is not valid UTF-8"));
		return false;
	}
	if (TooDeep(text, len))
	{
		Refuse(out, 400, "invalid_json",
			   psprintf("the body nests more than %d levels deep", CDP_HTTP_MAX_JSON_DEPTH));
		return false;
	}
	memset(s, 0, sizeof(*s));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = s;
	sem.object_start = ScanObjectStart;
	sem.object_end = ScanEnd;
	sem.array_start = ScanArrayStart;
	sem.array_end = ScanEnd;
	sem.object_field_start = ScanFieldStart;
	sem.array_element_start = ScanElementStart;
	sem.scalar = ScanScalar;
	lex = makeJsonLexContextCstringLen((char *) text, len, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		Refuse(out, 400, "invalid_json", psprintf("invalid JSON: %s", JsonErrorDetail(rc, lex)));
		return false;
	}
	if (!s->top_is_object)
	{
		Refuse(out, 400, "invalid_json", psprintf("the body must be a JSON object"));
		return false;
	}
	return true;
}

/* a string (non-empty) or, for ids, a number; null counts as absent */
static bool
Given(Scan *s, Field f)
{
	FieldSeen  *seen = &s->seen[f];

	return seen->present && seen->token != JSON_TOKEN_NULL &&
		!(seen->token == JSON_TOKEN_STRING && seen->value[0] == '\0');
}

static bool
CheckFieldType(Scan *s, Field f, bool number_ok, bool object, CdpHttpIngest *out)
{
	FieldSeen  *seen = &s->seen[f];
	bool		ok;

	if (!seen->present || seen->token == JSON_TOKEN_NULL)
		return true;
	if (object)
		ok = seen->token == JSON_TOKEN_OBJECT_START;
	else
		ok = seen->token == JSON_TOKEN_STRING ||
			(number_ok && seen->token == JSON_TOKEN_NUMBER);
	if (!ok)
		Refuse(out, 400, "invalid_field_type",
			   psprintf("\"%s\" must be %s, not %s", field_names[f],
						object ? "an object" : number_ok ? "a string or a number" : "a string",
						CdpJsonTokenName(seen->token)));
	return ok;
}

/* characters in valid UTF-8 */
static int
Utf8Chars(const char *s)
{
	int			n = 0;

	for (; *s; s++)
		if (((unsigned char) *s & 0xC0) != 0x80)
			n++;
	return n;
}

/* the pipeline's rules for a message, as far as the top-level fields tell */
static bool
CheckSingleCall(Scan *s, const char *type, CdpHttpIngest *out)
{
	FieldSeen  *t = &s->seen[F_TYPE];

	if (t->present && t->token != JSON_TOKEN_NULL)
	{
		if (t->token != JSON_TOKEN_STRING)
		{
			Refuse(out, 400, "invalid_field_type",
				   psprintf("\"type\" must be a string, not %s", CdpJsonTokenName(t->token)));
			return false;
		}
		if (pg_strcasecmp(t->value, type) != 0)
		{
			Refuse(out, 400, "type_mismatch",
				   psprintf("a %s call cannot carry \"type\": \"%s\"", type,
							ClientText(t->value)));
			return false;
		}
	}
	/* the pipeline would read the call as an envelope, its items in its place */
	if (s->seen[F_BATCH].present)
	{
		Refuse(out, 400, "invalid_field_type",
			   psprintf("a %s call cannot carry \"batch\": send batches to /v1/batch", type));
		return false;
	}
	if (!CheckFieldType(s, F_MESSAGE_ID, false, false, out) ||
		!CheckFieldType(s, F_USER_ID, true, false, out) ||
		!CheckFieldType(s, F_ANONYMOUS_ID, true, false, out) ||
		!CheckFieldType(s, F_PREVIOUS_ID, true, false, out) ||
		!CheckFieldType(s, F_GROUP_ID, true, false, out) ||
		!CheckFieldType(s, F_EVENT, false, false, out) ||
		!CheckFieldType(s, F_NAME, false, false, out) ||
		!CheckFieldType(s, F_PROPERTIES, false, true, out) ||
		!CheckFieldType(s, F_TRAITS, false, true, out) ||
		!CheckFieldType(s, F_CONTEXT, false, true, out))
		return false;
	if (Given(s, F_MESSAGE_ID) && Utf8Chars(s->seen[F_MESSAGE_ID].value) > MAX_MESSAGE_ID_CHARS)
	{
		Refuse(out, 400, "message_id_too_long",
			   psprintf("\"messageId\" is %d characters, more than %d",
						Utf8Chars(s->seen[F_MESSAGE_ID].value), MAX_MESSAGE_ID_CHARS));
		return false;
	}
	if (strcmp(type, "alias") == 0)
	{
		if (!Given(s, F_PREVIOUS_ID) || !Given(s, F_USER_ID))
		{
			Refuse(out, 400, "missing_identity",
				   psprintf("alias needs both \"previousId\" and \"userId\""));
			return false;
		}
	}
	else if (!Given(s, F_USER_ID) && !Given(s, F_ANONYMOUS_ID))
	{
		Refuse(out, 400, "missing_identity", psprintf("%s needs \"userId\" or \"anonymousId\"", type));
		return false;
	}
	if (strcmp(type, "track") == 0 && !Given(s, F_EVENT))
	{
		Refuse(out, 400, "missing_event", psprintf("track needs a non-empty \"event\""));
		return false;
	}
	if (strcmp(type, "group") == 0 && !Given(s, F_GROUP_ID))
	{
		Refuse(out, 400, "missing_group_id", psprintf("group needs \"groupId\""));
		return false;
	}
	return true;
}

/*
 * The message with the path's "type" when it has none, or null.  It goes
 * last: the pipeline reads a message as jsonb, where the last of repeated
 * keys wins, so it also overrides an earlier "type": null.
 */
static void
WithType(const char *text, size_t len, Scan *s, const char *type, CdpHttpIngest *out)
{
	size_t		close = len;	/* the object's closing brace */
	char	   *msg;
	int			n;

	if (s->seen[F_TYPE].present && s->seen[F_TYPE].token != JSON_TOKEN_NULL)
	{
		out->payload = text;
		out->payload_len = len;
		return;
	}
	while (close > 0 && text[close - 1] != '}')
		close--;
	close--;
	msg = palloc(len + strlen(type) + 16);
	memcpy(msg, text, close);
	n = close + sprintf(msg + close, "%s\"type\":\"%s\"", s->fields > 0 ? "," : "", type);
	memcpy(msg + n, text + close, len - close);
	n += len - close;
	msg[n] = '\0';
	out->payload = msg;
	out->payload_len = n;
}

/*
 * Judge one request to an ingest route: out->status 0 means queue
 * out->payload (out->messages messages; none for an empty batch) for the
 * source out->write_key authenticates.
 */
void
CdpHttpIngestRequest(CdpHttpRoute route, const char *authorization,
					 const char *content_encoding, const char *body, size_t body_len,
					 const CdpHttpLimits *limits, CdpHttpIngest *out)
{
	const char *text = body;
	size_t		len = body_len;
	Scan		scan;
	const char *type = route_types[route];

	memset(out, 0, sizeof(*out));
	if (authorization != NULL && (out->write_key = BasicAuthKey(authorization, out)) == NULL)
		return;

	if (content_encoding != NULL && *content_encoding != '\0' &&
		pg_strcasecmp(content_encoding, "identity") != 0)
	{
		char	   *inflated;
		char	   *why;
		CdpInflateResult rc;

		if (pg_strcasecmp(content_encoding, "gzip") != 0 &&
			pg_strcasecmp(content_encoding, "x-gzip") != 0 &&
			pg_strcasecmp(content_encoding, "deflate") != 0)
		{
			Refuse(out, 400, "bad_encoding",
				   psprintf("Content-Encoding \"%s\" is not supported (gzip is)",
						ClientText(content_encoding)));
			return;
		}
		rc = CdpHttpInflate(body, body_len, limits->max_request_bytes, limits->max_inflate_ratio,
							&inflated, &len, &why);
		if (rc != CDP_INFLATE_OK)
		{
			Refuse(out, 400, rc == CDP_INFLATE_CORRUPT ? "bad_encoding" : "too_large", why);
			return;
		}
		text = inflated;
	}
	if (len > (size_t) limits->max_request_bytes)
	{
		Refuse(out, 400, "too_large",
			   psprintf("the body is %zu bytes, more than cdp.max_request_bytes (%d)",
						len, limits->max_request_bytes));
		return;
	}
	if (type != NULL && len > (size_t) limits->max_event_bytes)
	{
		Refuse(out, 400, "too_large",
			   psprintf("the message is %zu bytes, more than cdp.max_event_bytes (%d)",
						len, limits->max_event_bytes));
		return;
	}
	if (!ScanJson(type == NULL ? DecodableEscapes(text, len) : text, len, &scan, out))
		return;

	if (out->write_key == NULL)
	{
		if (scan.seen[F_WRITE_KEY].present && scan.seen[F_WRITE_KEY].token == JSON_TOKEN_STRING)
			out->write_key = scan.seen[F_WRITE_KEY].value;
		else
			out->write_key = scan.item_write_key;
	}
	if (out->write_key == NULL || out->write_key[0] == '\0')
	{
		out->write_key = NULL;
		Refuse(out, 401, "unauthorized",
			   psprintf("no write key: send it as the user name of Basic authorization, or as \"writeKey\""));
		return;
	}

	if (type == NULL)
	{
		if (scan.seen[F_BATCH].token != JSON_TOKEN_ARRAY_START)
		{
			Refuse(out, 400, "not_a_batch", psprintf("a batch needs a \"batch\" array of messages"));
			return;
		}
		out->payload = text;
		out->payload_len = len;
		out->messages = scan.batch_items;
		return;
	}
	if (!CheckSingleCall(&scan, type, out))
		return;
	WithType(text, len, &scan, type, out);
	/* the pipeline holds the message as queued, "type" included, to both limits */
	if (out->payload_len > Min(limits->max_event_bytes, limits->max_request_bytes))
	{
		int			size = out->payload_len;

		out->payload = NULL;
		out->payload_len = 0;
		Refuse(out, 400, "too_large",
			   psprintf("the message with its \"type\" is %d bytes, more than cdp.max_%s_bytes (%d)",
						size,
						limits->max_event_bytes <= limits->max_request_bytes ? "event" : "request",
						Min(limits->max_event_bytes, limits->max_request_bytes)));
		return;
	}
	out->messages = 1;
}

/*
 * Judge a profile API request: its read key (Authorization: Bearer <key>,
 * or Basic with the key as user name; out->status 401 without one) and its
 * {identifier}, percent-decoded, at most CDP_HTTP_MAX_IDENTIFIER_BYTES,
 * UTF-8 without NUL, "type:value" (out->identifier NULL and out->id_message
 * saying why not).  Whether the key is known and the identifier valid is
 * the database's to say.
 */
void
CdpHttpProfileRequest(const char *url, const char *authorization, CdpHttpProfileAsk *out)
{
	const char *id;
	size_t		id_len;
	char	   *decoded;
	int			n;

	memset(out, 0, sizeof(*out));
	if (authorization != NULL)
	{
		char	   *basic = AuthParam(authorization, "Basic ");

		out->read_key = basic ? BasicUser(basic) : AuthParam(authorization, "Bearer ");
	}
	if (out->read_key == NULL || out->read_key[0] == '\0')
	{
		out->read_key = NULL;
		out->status = 401;
		out->error = "unauthorized";
		out->message = psprintf("%s: send it as Authorization: Bearer <read key>, or as the user name of Basic authorization",
								authorization == NULL ? "no read key" : "no read key in the Authorization header");
	}

	if (ProfileRoute(url, &id, &id_len) == CDP_ROUTE_UNKNOWN)
	{
		out->id_message = psprintf("the path is not /v1/profiles/{identifier}/traits or /audiences");
		return;
	}
	/* each decoded byte takes at most three as sent */
	if (id_len > 3 * CDP_HTTP_MAX_IDENTIFIER_BYTES)
	{
		out->id_message = psprintf("the identifier is longer than %d bytes", CDP_HTTP_MAX_IDENTIFIER_BYTES);
		return;
	}
	decoded = palloc(id_len + 1);
	n = PercentDecode(id, id_len, decoded, id_len, true);
	if (n < 0)
		out->id_message = psprintf("the identifier has a %% not followed by two hex digits");
	else if (n > CDP_HTTP_MAX_IDENTIFIER_BYTES)
		out->id_message = psprintf("the identifier is %d bytes, longer than %d", n,
								   CDP_HTTP_MAX_IDENTIFIER_BYTES);
	else if (memchr(decoded, '\0', n) != NULL)
		out->id_message = psprintf("the identifier holds a NUL byte (%%00)");
	else if (pg_encoding_verifymbstr(PG_UTF8, decoded, n) != n)
		out->id_message = psprintf("the identifier is not valid UTF-8");
	else if (strchr(decoded, ':') == NULL)
		out->id_message = psprintf("the identifier \"%s\" is not type:value, for example user_id:42 or email:alice%%40example.com",
								   ClientText(decoded));
	else
		out->identifier = decoded;
}
