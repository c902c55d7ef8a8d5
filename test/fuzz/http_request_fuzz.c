/*
 * http_request_fuzz.c
 *	  libFuzzer target over CdpHttpIngestRequest: the code that turns an HTTP
 *	  request of the tracking API (route, Authorization, Content-Encoding,
 *	  body) into what the inbox queues; and over CdpHttpProfileRequest, which
 *	  reads a profile API path's {identifier} (the Content-Encoding line, or
 *	  a fixed one without it) and its read key.  Built as frontend code (see
 *	  `make fuzz-http`); every broken invariant aborts, so libFuzzer keeps the
 *	  input as a crash.
 *
 *	  An input is three control bytes, then header lines, then the body:
 *	    byte 0  bits 0-2 the route: track, identify, page, screen, group,
 *	            alias, batch (7 again track); bits 3-6 trailing whitespace
 *	            added to the body: 13 1000 bytes, 14 70000 bytes (past the
 *	            ratio guard's free allowance when gzipped), 15 140000 bytes,
 *	            else none (large bodies are slow: kept rare)
 *	    byte 1  bits 0-1 Authorization: none, the next line as the header,
 *	            "Basic " + base64(next line + ":"), none
 *	            bits 2-3 the body: as sent, gzipped here (so the JSON code is
 *	            reached through the inflater), sent raw as "gzip" (fuzzing the
 *	            inflater), Content-Encoding from the next line
 *	            bit 4 zlib instead of gzip framing; bit 5 two gzip members
 *	            bits 6-7 how the encoding is named (gzip, x-gzip, deflate, GZip;
 *	            without compression: none, identity, empty, IDENTITY)
 *	    byte 2  bits 0-1 the limits (defaults, small, equal, tiny), bits 2-7
 *	            where a two-member body is split
 *
 *	  The code under test allocates with palloc; here palloc is a per-input
 *	  arena, so everything is freed after each input, and the arena's peak is
 *	  held to a bound proportional to the limits and the input.
 *
 *	  With CDP_HTTPFUZZ_SABOTAGE=1 in the environment an accepted request's
 *	  payload_len is damaged before the checks, to show they catch it; with
 *	  CDP_HTTPFUZZ_VERBOSE=1 each outcome is printed.
 */
#include "postgres_fe.h"

#include <ctype.h>
#include <zlib.h>

#include "common/base64.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "http_request.h"

/* ---------- a per-input arena behind palloc ---------- */

typedef struct Chunk
{
	struct Chunk *prev;
	struct Chunk *next;
	size_t		size;
	size_t		magic;
} Chunk;

#define CHUNK_MAGIC 0x70616c6c6f63UL
#define MAX_ALLOC ((size_t) 0x3fffffff)	/* the backend's MaxAllocSize */

static Chunk arena = {&arena, &arena, 0, 0};
static size_t live_bytes;
static size_t peak_bytes;

static void
Broken(const char *what)
{
	fprintf(stderr, "http_request_fuzz: invariant broken: %s\n", what);
	abort();
}

static void *
ArenaAlloc(size_t size, int flags)
{
	Chunk	   *c;

	if (size > MAX_ALLOC)
	{
		if (flags & MCXT_ALLOC_NO_OOM)
			return NULL;
		/* the backend's palloc raises "invalid memory alloc request size" */
		Broken("an allocation over 1 GB");
	}
	c = malloc(sizeof(Chunk) + size);
	if (c == NULL)
	{
		if (flags & MCXT_ALLOC_NO_OOM)
			return NULL;
		Broken("out of memory");
	}
	c->size = size;
	c->magic = CHUNK_MAGIC;
	c->next = arena.next;
	c->prev = &arena;
	arena.next->prev = c;
	arena.next = c;
	live_bytes += size;
	if (live_bytes > peak_bytes)
		peak_bytes = live_bytes;
	if (flags & MCXT_ALLOC_ZERO)
		memset(c + 1, 0, size);
	return c + 1;
}

static Chunk *
ChunkOf(void *p)
{
	Chunk	   *c = (Chunk *) p - 1;

	if (c->magic != CHUNK_MAGIC)
		Broken("pfree of memory palloc did not give");
	return c;
}

static void
ArenaFree(void *p)
{
	Chunk	   *c;

	if (p == NULL)
		return;
	c = ChunkOf(p);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	live_bytes -= c->size;
	c->magic = 0;
	free(c);
}

static void
ArenaReset(void)
{
	while (arena.next != &arena)
		ArenaFree(arena.next + 1);
	live_bytes = 0;
	peak_bytes = 0;
}

void *
palloc(Size size)
{
	return ArenaAlloc(size, 0);
}

void *
palloc0(Size size)
{
	return ArenaAlloc(size, MCXT_ALLOC_ZERO);
}

void *
palloc_extended(Size size, int flags)
{
	return ArenaAlloc(size, flags);
}

void
pfree(void *pointer)
{
	if (pointer == NULL)
		Broken("pfree(NULL)");
	ArenaFree(pointer);
}

void *
repalloc(void *pointer, Size size)
{
	Chunk	   *c = ChunkOf(pointer);
	void	   *n = ArenaAlloc(size, 0);

	memcpy(n, pointer, Min(size, c->size));
	ArenaFree(pointer);
	return n;
}

char *
pstrdup(const char *in)
{
	size_t		len = strlen(in);
	char	   *out = ArenaAlloc(len + 1, 0);

	memcpy(out, in, len + 1);
	return out;
}

char *
pnstrdup(const char *in, Size size)
{
	size_t		len = strnlen(in, size);
	char	   *out = ArenaAlloc(len + 1, 0);

	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

void *
pg_malloc(size_t size)
{
	return ArenaAlloc(size, 0);
}

void *
pg_malloc0(size_t size)
{
	return ArenaAlloc(size, MCXT_ALLOC_ZERO);
}

void *
pg_malloc_extended(size_t size, int flags)
{
	return ArenaAlloc(size, flags);
}

void *
pg_realloc(void *pointer, size_t size)
{
	return pointer ? repalloc(pointer, size) : ArenaAlloc(size, 0);
}

char *
pg_strdup(const char *in)
{
	return pstrdup(in);
}

void
pg_free(void *pointer)
{
	ArenaFree(pointer);
}

/* ---------- decoding an input ---------- */

static const CdpHttpLimits limit_sets[4] = {
	{512 * 1024, 32 * 1024, 100},	/* the settings' defaults */
	{4096, 1024, 10},
	{65536, 65536, 2},
	{64, 64, 2},
};

static const size_t pad_sizes[16] = {[13] = 1000,[14] = 70000,[15] = 140000};
static const char *const encoding_names[4] = {"gzip", "x-gzip", "deflate", "GZip"};
static const char *const plain_names[4] = {NULL, "identity", "", "IDENTITY"};
static const char *const route_types[] = {
	"track", "identify", "page", "screen", "group", "alias", NULL
};

/* the next line of the input (NUL-terminated copy, malloc'd), moving past it */
static char *
NextLine(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *nl = memchr(*p, '\n', end - *p);
	size_t		len = (nl ? nl : end) - *p;
	char	   *line = malloc(len + 1);

	memcpy(line, *p, len);
	line[len] = '\0';
	*p = nl ? nl + 1 : end;
	return line;
}

/* deflate in[0..len) as one gzip (or zlib) member, appended to out */
static void
Compress(const uint8_t *in, size_t len, bool zlib_framing, uint8_t **out, size_t *out_len)
{
	z_stream	zs;
	size_t		bound;

	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, zlib_framing ? 15 : 15 + 16,
					 8, Z_DEFAULT_STRATEGY) != Z_OK)
		abort();
	bound = deflateBound(&zs, len) + 32;
	*out = realloc(*out, *out_len + bound);
	zs.next_in = (Bytef *) in;
	zs.avail_in = len;
	zs.next_out = *out + *out_len;
	zs.avail_out = bound;
	if (deflate(&zs, Z_FINISH) != Z_STREAM_END)
		abort();
	*out_len += zs.total_out;
	deflateEnd(&zs);
}

/* ---------- what the payload holds, read again independently ---------- */

typedef struct Reread
{
	int			depth;
	int			max_depth;
	bool		top_object;
	char	   *key;			/* the top-level key being read */
	char	   *type;			/* the last top-level "type", if a string */
	bool		type_seen;
	char	   *write_key;		/* the last top-level "writeKey", if a string */
	bool		write_key_seen;
	bool		batch_key;		/* a top-level "batch" (the pipeline's envelope) */
	int			batch_items;	/* elements of the last top-level "batch" */
	bool		batch_is_array;
	bool		in_item_write_key;
	const char *want_key;		/* a write key to find among the items */
	bool		item_has_key;
} Reread;

static void
RObjectStart(void *state)
{
	Reread	   *r = state;

	if (r->depth == 0)
		r->top_object = true;
	else if (r->depth == 1)
	{
		if (strcmp(r->key, "type") == 0)
		{
			r->type_seen = true;
			r->type = NULL;
		}
		if (strcmp(r->key, "writeKey") == 0)
		{
			r->write_key_seen = true;
			r->write_key = NULL;
		}
	}
	if (++r->depth > r->max_depth)
		r->max_depth = r->depth;
}

static void
RArrayStart(void *state)
{
	Reread	   *r = state;

	if (r->depth == 1)
	{
		if (strcmp(r->key, "type") == 0)
		{
			r->type_seen = true;
			r->type = NULL;
		}
		if (strcmp(r->key, "writeKey") == 0)
		{
			r->write_key_seen = true;
			r->write_key = NULL;
		}
	}
	if (++r->depth > r->max_depth)
		r->max_depth = r->depth;
}

static void
REnd(void *state)
{
	((Reread *) state)->depth--;
}

static void
RFieldStart(void *state, char *fname, bool isnull)
{
	Reread	   *r = state;

	if (fname == NULL)
		fname = "";				/* parsed without decoding strings */
	if (r->depth == 1)
	{
		r->key = fname;
		if (strcmp(fname, "batch") == 0)
		{
			r->batch_key = true;
			r->batch_items = 0;
			r->batch_is_array = false;
		}
	}
	r->in_item_write_key = r->depth == 3 && strcmp(r->key, "batch") == 0 &&
		strcmp(fname, "writeKey") == 0;
}

static void
RElementStart(void *state, bool isnull)
{
	Reread	   *r = state;

	if (r->depth == 2 && strcmp(r->key, "batch") == 0)
	{
		r->batch_is_array = true;
		r->batch_items++;
	}
	r->in_item_write_key = false;
}

static void
RScalar(void *state, char *token, JsonTokenType tokentype)
{
	Reread	   *r = state;

	if (r->depth == 1)
	{
		if (strcmp(r->key, "type") == 0)
		{
			r->type_seen = true;
			r->type = tokentype == JSON_TOKEN_STRING ? token : NULL;
		}
		if (strcmp(r->key, "writeKey") == 0)
		{
			r->write_key_seen = true;
			r->write_key = tokentype == JSON_TOKEN_STRING ? token : NULL;
		}
	}
	else if (r->depth == 3 && r->in_item_write_key && tokentype == JSON_TOKEN_STRING &&
			 r->want_key != NULL && token != NULL && strcmp(token, r->want_key) == 0)
		r->item_has_key = true;
	r->in_item_write_key = false;
}

/*
 * Whether text nests no deeper than 2000 (outside strings): pg_parse_json
 * recurses, and has no stack check in frontend code, so the harness parses
 * only what is shallow enough.  Far above CDP_HTTP_MAX_JSON_DEPTH, so a slip
 * here cannot hide one of the code under test.
 */
static bool
ShallowEnough(const char *text, size_t len)
{
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		if (in_string && text[i] == '\\')
			i++;
		else if (text[i] == '"')
			in_string = !in_string;
		else if (!in_string && (text[i] == '[' || text[i] == '{') && ++depth > 2000)
			return false;
		else if (!in_string && (text[i] == ']' || text[i] == '}'))
			depth--;
	}
	return true;
}

/*
 * Parse text, decoding strings or (as the pipeline reads an envelope) not;
 * false when it is not JSON.
 */
static bool
ParseAgain(const char *text, size_t len, const char *want_key, bool decode, Reread *r)
{
	JsonLexContext *lex;
	JsonSemAction sem;

	memset(r, 0, sizeof(*r));
	r->key = "";
	r->want_key = want_key;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = r;
	sem.object_start = RObjectStart;
	sem.object_end = REnd;
	sem.array_start = RArrayStart;
	sem.array_end = REnd;
	sem.object_field_start = RFieldStart;
	sem.array_element_start = RElementStart;
	sem.scalar = RScalar;
	lex = makeJsonLexContextCstringLen((char *) text, len, PG_UTF8, decode);
	return pg_parse_json(lex, &sem) == JSON_SUCCESS;
}

static bool
ValidUtf8Len(const char *s, size_t len)
{
	return pg_encoding_verifymbstr(PG_UTF8, s, len) == (int) len;
}

static bool
ValidUtf8(const char *s)
{
	return ValidUtf8Len(s, strlen(s));
}

/* ---------- the profile API's paths ---------- */

/* in's %XX escapes decoded, apart from the code under test; false at a bad escape */
static bool
DecodeAgain(const char *in, char *out, size_t *out_len)
{
	size_t		n = 0;

	for (size_t i = 0; in[i] != '\0'; i++)
	{
		char		hex[3];

		if (in[i] != '%')
		{
			out[n++] = in[i];
			continue;
		}
		if (!isxdigit((unsigned char) in[i + 1]) || !isxdigit((unsigned char) in[i + 2]))
			return false;
		hex[0] = in[i + 1];
		hex[1] = in[i + 2];
		hex[2] = '\0';
		out[n++] = (char) strtol(hex, NULL, 16);
		i += 2;
	}
	*out_len = n;
	return true;
}

/*
 * GET /v1/profiles/<id_line>/traits with this Authorization: the route is
 * traits exactly when id_line is not empty; 401 exactly when no read key
 * was read (the Basic user name sent, when one was); an identifier (the
 * path's, decoded, bounded, UTF-8, type:value) or the reason there is none.
 */
static void
CheckProfileRequest(const char *id_line, const char *authorization, const char *key_sent)
{
	size_t		idlen = strlen(id_line);
	char	   *url = malloc(idlen + 32);
	char	   *decoded = malloc(idlen + 1);
	size_t		dlen = 0;
	bool		escapes_ok = DecodeAgain(id_line, decoded, &dlen);
	CdpHttpRoute route;
	CdpHttpProfileAsk ask;

	sprintf(url, "/v1/profiles/%s/traits", id_line);
	route = CdpHttpRouteOf(url);
	if ((route == CDP_ROUTE_PROFILE_TRAITS) != (idlen > 0))
		Broken("a profile path is routed to traits other than exactly when it has an identifier");
	if (route != CDP_ROUTE_PROFILE_TRAITS || CdpHttpRouteTakesPost(route) ||
		!CdpHttpRouteIsProfile(route))
		goto done;

	CdpHttpProfileRequest(url, authorization, &ask);
	if (ask.status != 0 && ask.status != 401)
		Broken("a profile request's status is neither 0 nor 401");
	if ((ask.status == 401) != (ask.read_key == NULL))
		Broken("401 other than exactly when no read key was read");
	if (ask.status == 401 && (ask.error == NULL || strcmp(ask.error, "unauthorized") != 0 ||
							  ask.message == NULL || !ValidUtf8(ask.message)))
		Broken("a 401 without \"unauthorized\" and a UTF-8 message");
	if (authorization == NULL && ask.read_key != NULL)
		Broken("a read key without an Authorization header");
	if (key_sent != NULL && key_sent[0] != '\0' &&
		(ask.read_key == NULL || strcmp(ask.read_key, key_sent) != 0))
		Broken("the read key is not the Basic user name sent");
	if ((ask.identifier == NULL) == (ask.id_message == NULL))
		Broken("not exactly one of an identifier and a reason");
	if (ask.identifier != NULL)
	{
		if (!escapes_ok || strlen(ask.identifier) != dlen ||
			memcmp(ask.identifier, decoded, dlen) != 0)
			Broken("the identifier is not the path's, decoded");
		if (dlen > CDP_HTTP_MAX_IDENTIFIER_BYTES)
			Broken("an identifier over CDP_HTTP_MAX_IDENTIFIER_BYTES");
		if (!ValidUtf8(ask.identifier) || strchr(ask.identifier, ':') == NULL)
			Broken("an identifier that is not UTF-8 type:value");
	}
	else
	{
		if (!ValidUtf8(ask.id_message))
			Broken("a refused identifier's reason is not UTF-8");
		if (escapes_ok && dlen <= CDP_HTTP_MAX_IDENTIFIER_BYTES &&
			memchr(decoded, '\0', dlen) == NULL && ValidUtf8Len(decoded, dlen) &&
			memchr(decoded, ':', dlen) != NULL)
			Broken("a good identifier refused");
	}
	if (peak_bytes > 64 * 1024 + 8 * (idlen + (authorization ? strlen(authorization) : 0)))
		Broken("a profile request held more memory than its path and Authorization");
done:
	ArenaReset();
	free(url);
	free(decoded);
}

/* ---------- the target ---------- */

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	const uint8_t *end = data + size;
	int			route_i;
	int			auth_mode;
	int			enc_mode;
	bool		zlib_framing;
	bool		two_members;
	int			name_i;
	const CdpHttpLimits *limits;
	int			split64;
	char	   *auth_line = NULL;
	char	   *authorization = NULL;
	char	   *key_sent = NULL;
	char	   *encoding = NULL;
	const char *content_encoding = NULL;
	size_t		pad;
	uint8_t    *padded = NULL;
	const uint8_t *plain;		/* the body before compression */
	size_t		plain_len;
	uint8_t    *sent = NULL;
	size_t		sent_len = 0;
	const char *body;
	size_t		body_len;
	bool		plain_known;	/* whether the decoded body must equal plain */
	bool		plain_ok = false;	/* whether plain is a JSON object to take */
	bool		decodes;		/* whether the payload's strings all decode */
	CdpHttpRoute route;
	const char *type;
	CdpHttpIngest out;
	Reread		r;
	size_t		bound;

	if (size < 3)
		return 0;
	route_i = (p[0] & 7) % 7;
	pad = pad_sizes[(p[0] >> 3) & 15];
	auth_mode = p[1] & 3;
	enc_mode = (p[1] >> 2) & 3;
	zlib_framing = (p[1] & 0x10) != 0;
	two_members = (p[1] & 0x20) != 0;
	name_i = p[1] >> 6;
	limits = &limit_sets[p[2] & 3];
	split64 = p[2] >> 2;
	p += 3;
	route = (CdpHttpRoute) (CDP_ROUTE_TRACK + route_i);
	type = route_types[route_i];

	if (auth_mode == 1)
		authorization = auth_line = NextLine(&p, end);
	else if (auth_mode == 2)
	{
		int			klen;
		int			blen;
		char	   *colon;

		auth_line = NextLine(&p, end);
		klen = strlen(auth_line);
		blen = pg_b64_enc_len(klen + 1);
		key_sent = malloc(klen + 2);
		sprintf(key_sent, "%s:", auth_line);
		authorization = malloc(blen + 8);
		memcpy(authorization, "Basic ", 6);
		blen = pg_b64_encode(key_sent, klen + 1, authorization + 6, blen);
		if (blen < 0)
			abort();
		authorization[6 + blen] = '\0';
		colon = strchr(key_sent, ':');
		*colon = '\0';
	}
	if (enc_mode == 3)
		content_encoding = encoding = NextLine(&p, end);
	else if (enc_mode == 0)
		content_encoding = plain_names[name_i];
	else
		content_encoding = encoding_names[name_i];

	if (pad == 0)
		plain = p;
	else
	{
		padded = malloc(end - p + pad);
		memcpy(padded, p, end - p);
		memset(padded + (end - p), ' ', pad);
		plain = padded;
	}
	plain_len = end - p + pad;
	plain_known = enc_mode == 0 || enc_mode == 1;
	if (enc_mode == 1)
	{
		size_t		split = two_members ? plain_len * split64 / 64 : plain_len;

		Compress(plain, split, zlib_framing, &sent, &sent_len);
		if (two_members)
			Compress(plain + split, plain_len - split, zlib_framing, &sent, &sent_len);
		body = (const char *) sent;
		body_len = sent_len;
	}
	else
	{
		body = (const char *) plain;
		body_len = plain_len;
	}

	if (plain_known)
	{
		/*
		 * A single call's strings must decode; a batch's need only be well
		 * formed, as the pipeline dead-letters just the item holding \u0000
		 * or a lone surrogate.
		 */
		plain_ok = memchr(plain, '\0', plain_len) == NULL &&
			ValidUtf8Len((const char *) plain, plain_len) &&
			ShallowEnough((const char *) plain, plain_len) &&
			ParseAgain((const char *) plain, plain_len, NULL, type != NULL, &r) &&
			r.top_object && r.max_depth <= CDP_HTTP_MAX_JSON_DEPTH;
		ArenaReset();
	}

	/* the URL table, fed the encoding line */
	if (CdpHttpRouteLabel(CdpHttpRouteOf(encoding ? encoding : "/v1/t")) == NULL)
		Broken("a route without a label");
	if (CdpHttpRouteOf(encoding ? encoding : "/v1/t") == CDP_ROUTE_UNKNOWN &&
		CdpHttpRouteTakesPost(CDP_ROUTE_UNKNOWN))
		Broken("an unknown path takes POST");

	CheckProfileRequest(encoding ? encoding : "user_id:u1", authorization, key_sent);

	CdpHttpIngestRequest(route, authorization, content_encoding, body, body_len, limits, &out);
	if (getenv("CDP_HTTPFUZZ_VERBOSE") != NULL)
		fprintf(stderr, "status %d error %s message %s messages %d payload %.*s\n",
				out.status, out.error ? out.error : "-", out.message ? out.message : "-",
				out.messages, out.status == 0 ? Min(out.payload_len, 300) : 1,
				out.status == 0 ? out.payload : "-");
	if (out.status == 0 && getenv("CDP_HTTPFUZZ_SABOTAGE") != NULL)
		out.payload_len += limits->max_request_bytes + 33;

	/* what memory the request may hold: a few times the body and the limit */
	bound = 256 * 1024 + 8 * ((size_t) limits->max_request_bytes + body_len);
	if (peak_bytes > bound)
		Broken("the request held more memory than its limits allow");

	if (out.status != 0)
	{
		if (out.status != 400 && out.status != 401)
			Broken("status is neither 0, 400 nor 401");
		if (out.error == NULL || out.error[0] == '\0' || out.message == NULL || out.message[0] == '\0')
			Broken("a refusal without error and message");
		if (out.payload != NULL || out.messages != 0)
			Broken("a refusal with a payload to queue");
		if (!ValidUtf8(out.message))
			Broken("a refusal's message is not valid UTF-8");
		if ((out.status == 401) != (strcmp(out.error, "unauthorized") == 0))
			Broken("401 and \"unauthorized\" go together");
		if (plain_ok && strcmp(out.error, "invalid_json") == 0)
			Broken("a JSON object refused as invalid_json");
		if (enc_mode == 1 && strcmp(out.error, "bad_encoding") == 0)
			Broken("a body gzipped by the harness refused as bad_encoding");
		/* a single call may grow by its "type" */
		if (plain_known && plain_len + (type ? 32 : 0) <= (size_t) limits->max_request_bytes &&
			(type == NULL || plain_len + 32 <= (size_t) limits->max_event_bytes) &&
			strcmp(out.error, "too_large") == 0 &&
			(enc_mode == 0 || plain_len <= 64 * 1024))
			Broken("a body within the limits refused as too_large");
	}
	else
	{
		if (out.payload == NULL || out.payload_len < 0)
			Broken("accepted without a payload");
		if (plain_known && !plain_ok)
			Broken("a body that is not a JSON object accepted");
		/* the pipeline dead-letters payloads over these as too_large */
		if (out.payload_len > limits->max_request_bytes)
			Broken("payload_len over max_request_bytes");
		if (type != NULL && out.payload_len > limits->max_event_bytes)
			Broken("a single call's payload over max_event_bytes");
		if (out.write_key == NULL || out.write_key[0] == '\0')
			Broken("accepted without a write key");
		if (out.messages < 0)
			Broken("a negative message count");
		if (!ShallowEnough(out.payload, out.payload_len))
			Broken("accepted a payload nested over 2000 deep");
		decodes = ParseAgain(out.payload, out.payload_len,
							 authorization == NULL ? out.write_key : NULL, true, &r);
		if (!decodes && (type != NULL ||
						 !ParseAgain(out.payload, out.payload_len, NULL, false, &r)))
			Broken("the payload is not JSON");
		if (!r.top_object)
			Broken("the payload is not a JSON object");
		if (plain_known && type == NULL &&
			(out.payload_len != plain_len || memcmp(out.payload, plain, plain_len) != 0))
			Broken("a batch's payload differs from the body sent");
		if (type != NULL)
		{
			if (r.type == NULL || pg_strcasecmp(r.type, type) != 0)
				Broken("a single call's payload lacks the route's \"type\" (last key wins)");
			if (out.messages != 1)
				Broken("a single call counted as other than one message");
			if (r.batch_key)
				Broken("a single call with a \"batch\" key, which the pipeline reads as an envelope");
			if (plain_known && out.payload_len < plain_len)
				Broken("a single call's payload is shorter than its body");
		}
		else if (decodes)
		{
			if (!r.batch_is_array && r.batch_items != 0)
				Broken("batch items counted outside an array");
			if (out.messages != r.batch_items)
				Broken("messages differs from the last \"batch\" array's length");
		}
		if (key_sent != NULL && strcmp(out.write_key, key_sent) != 0)
			Broken("the write key is not the Basic user name sent");
		if (authorization == NULL && decodes)
		{
			if (r.write_key_seen && r.write_key != NULL)
			{
				if (strcmp(out.write_key, r.write_key) != 0)
					Broken("the write key is not the body's \"writeKey\"");
			}
			else if (!r.item_has_key)
				Broken("the write key is neither the body's nor a batch item's \"writeKey\"");
		}
	}

	ArenaReset();
	free(auth_line);
	if (authorization != auth_line)
		free(authorization);
	free(key_sent);
	free(encoding);
	free(sent);
	free(padded);
	return 0;
}
