/*
 * suppression.c
 *	  The identifiers of forgotten people (cdp.forget), kept only as salted
 *	  SHA-256 hashes in cdp.suppressions, and the ingest check that drops a
 *	  message carrying one before identity resolution, so nothing of the
 *	  person is made again.  A dropped message is counted on the hash it
 *	  matched (cdp.suppressions.dropped), never stored nor dead-lettered.
 *
 *	  Cost: each backend caches the salt and the suppressed hashes (up to
 *	  MAX_CACHED_HASHES of them, sorted); a statement trigger on
 *	  cdp.suppressions sends a relcache invalidation when rows come or go.
 *	  While none exists a batch costs nothing here.  Otherwise each carried
 *	  identifier is hashed and looked up in memory, or, past the cached
 *	  number, in one index probe of the batch's array of hashes; only a
 *	  batch that drops something writes (the counts).
 *
 *	  Serial order with cdp.forget: every cdp.process_inbox call and
 *	  cdp.link take the suppression lock shared before touching the inbox or
 *	  the graph, forget takes it exclusively first.  So a message is either
 *	  processed by a transaction that committed before forget began (forget
 *	  erases what it stored) or checked after forget committed (dropped).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

#define SALT_BYTES	32
#define HASH_BYTES	PG_SHA256_DIGEST_LENGTH

/* suppressed hashes a backend keeps in memory (2 MB); more are probed by index */
#define MAX_CACHED_HASHES	65536

/* per backend: the salt and the suppressed hashes */
static struct
{
	bool		valid;
	uint64		invalidations;	/* bumped by every invalidation */
	Oid			relid;			/* cdp.suppressions when last read */
	bool		any;
	uint8		salt[SALT_BYTES];
	bool		all_cached;		/* hashes holds every suppressed hash */
	uint8	   *hashes;			/* sorted, HASH_BYTES each, in cxt */
	int			nhashes;
	MemoryContext cxt;
}			cache;

static SPIPlanPtr read_plan = NULL;
static SPIPlanPtr hashes_plan = NULL;
static SPIPlanPtr find_plan = NULL;
static SPIPlanPtr count_plan = NULL;

/*
 * Relcache callback (called by pg_cdp.c's): rows of cdp.suppressions came
 * or went.
 */
void
CdpSuppressionCacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cache.relid)
	{
		cache.valid = false;
		cache.invalidations++;
	}
}

/*
 * Keep the suppressed hashes in memory when there are few enough, sorted
 * (bytea order is memcmp order for equal lengths).
 */
static void
LoadHashes(void)
{
	Datum		arg = Int32GetDatum(MAX_CACHED_HASHES + 1);
	Oid			argtype = INT4OID;
	uint64		n;

	if (cache.cxt == NULL)
		cache.cxt = AllocSetContextCreate(TopMemoryContext, "cdp suppressions",
										  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cache.cxt);
	cache.hashes = NULL;
	cache.nhashes = 0;
	cache.all_cached = true;
	if (!cache.any)
		return;
	n = CdpExecPlan(CdpPlan(&hashes_plan,
							"SELECT hash FROM cdp.suppressions ORDER BY hash LIMIT $1",
							1, &argtype),
					&arg, NULL, SPI_OK_SELECT);
	if (n > MAX_CACHED_HASHES)
	{
		cache.all_cached = false;
		SPI_freetuptable(SPI_tuptable);
		return;
	}
	cache.hashes = MemoryContextAlloc(cache.cxt, Max(n, 1) * HASH_BYTES);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		bytea	   *h = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1, &isnull));

		memcpy(cache.hashes + i * HASH_BYTES, VARDATA_ANY(h), HASH_BYTES);
	}
	cache.nhashes = (int) n;
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Whether any identifier is suppressed, reading the salt and the answer
 * again after a change was committed (the invalidations waiting for this
 * backend are taken first).
 */
static bool
SuppressionsExist(void)
{
	bool		isnull;
	Datum		d;
	bytea	   *salt;
	uint64		before;

	AcceptInvalidationMessages();
	if (cache.valid)
		return cache.any;

	/* current unless an invalidation arrives while reading (or reading fails) */
	before = cache.invalidations;
	cache.relid = get_relname_relid("suppressions", get_namespace_oid("cdp", false));
	CdpExecPlan(CdpPlan(&read_plan,
						"SELECT s.salt, EXISTS (SELECT FROM cdp.suppressions) "
						"FROM cdp.suppression_salt s",
						0, NULL),
				NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		/* no salt yet: the first cdp.forget makes it, so nothing is suppressed */
		cache.any = false;
		SPI_freetuptable(SPI_tuptable);
		LoadHashes();
		cache.valid = (cache.invalidations == before);
		return false;
	}
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	salt = isnull ? NULL : DatumGetByteaPP(d);
	if (salt == NULL || VARSIZE_ANY_EXHDR(salt) != SALT_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the salt in cdp.suppression_salt must be %d bytes", SALT_BYTES)));
	memcpy(cache.salt, VARDATA_ANY(salt), SALT_BYTES);
	cache.any = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
										   &isnull));
	SPI_freetuptable(SPI_tuptable);
	LoadHashes();
	cache.valid = (cache.invalidations == before);
	return cache.any;
}

/*
 * sha256(salt, type length byte, type, value): the form cdp.suppressions
 * keeps; the length byte keeps ("ab", "c") and ("a", "bc") apart.  ctx is
 * made once per caller (making one per hash costs more than hashing).
 */
static bytea *
HashIdentifier(pg_cryptohash_ctx *ctx, const uint8 *salt, const CdpIdentifier *id)
{
	bytea	   *out = palloc(VARHDRSZ + HASH_BYTES);
	uint8		type_len = id->type_len;

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, salt, SALT_BYTES) < 0 ||
		pg_cryptohash_update(ctx, &type_len, 1) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) IdTypePtr(id), id->type_len) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) IdValuePtr(id), IdValueLen(id)) < 0 ||
		pg_cryptohash_final(ctx, (uint8 *) VARDATA(out), HASH_BYTES) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute a SHA-256 hash: %s", pg_cryptohash_error(ctx))));
	SET_VARSIZE(out, VARHDRSZ + HASH_BYTES);
	return out;
}

/* a SHA-256 context (freed with the resource owner if an error comes first) */
static pg_cryptohash_ctx *
NewHashContext(void)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return ctx;
}

/* bytea * of HASH_BYTES each, as bsearch and qsort see them */
static int
CompareHashes(const void *a, const void *b)
{
	return memcmp(VARDATA_ANY(*(bytea *const *) a), VARDATA_ANY(*(bytea *const *) b), HASH_BYTES);
}

/* two raw hashes, as the sorted cache holds them */
static int
CompareRawHashes(const void *a, const void *b)
{
	return memcmp(a, b, HASH_BYTES);
}

/*
 * The suppressed ones among hashes (bytea datums), sorted: from memory, or
 * by one index probe when there are too many suppressions to keep.
 */
static bytea **
FindSuppressed(Datum *hashes, int nhashes, int *nhits)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			argtype = BYTEAARRAYOID;
	bytea	  **hits;
	Datum		arg;
	int			n;

	*nhits = 0;
	if (cache.all_cached)
	{
		hits = palloc(sizeof(bytea *) * nhashes);
		for (int i = 0; i < nhashes; i++)
		{
			bytea	   *h = DatumGetByteaPP(hashes[i]);

			if (cache.nhashes > 0 &&
				bsearch(VARDATA_ANY(h), cache.hashes, cache.nhashes, HASH_BYTES,
						CompareRawHashes) != NULL)
				hits[(*nhits)++] = h;
		}
		qsort(hits, *nhits, sizeof(bytea *), CompareHashes);
		/* one entry per hash */
		n = 0;
		for (int i = 0; i < *nhits; i++)
			if (n == 0 || CompareHashes(&hits[n - 1], &hits[i]) != 0)
				hits[n++] = hits[i];
		*nhits = n;
		return hits;
	}
	arg = CdpArray(hashes, nhashes, BYTEAOID);
	n = (int) CdpExecPlan(CdpPlan(&find_plan,
								  "SELECT hash FROM cdp.suppressions WHERE hash = ANY ($1) ORDER BY hash",
								  1, &argtype),
						  &arg, NULL, SPI_OK_SELECT);
	hits = palloc(sizeof(bytea *) * Max(n, 1));
	for (int j = 0; j < n; j++)
	{
		bool		isnull;

		hits[j] = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[j],
												   SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	MemoryContextSwitchTo(cxt);
	*nhits = n;
	return hits;
}

/* JSON's white space, between a member name and its value */
static bool
IsSpaceChar(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* a string or number field of obj as text, or NULL */
static const char *
ScalarField(JsonbValue *obj, const char *key)
{
	JsonbValue *v = CdpJsonbObjectGet(obj, key);

	if (v == NULL)
		return NULL;
	if (v->type == jbvString && v->val.string.len > 0)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	return NULL;
}

/* an object field of obj, or NULL */
static JsonbValue *
ObjectField(JsonbValue *obj, const char *key)
{
	JsonbValue *v = CdpJsonbObjectGet(obj, key);

	return (v != NULL && v->type == jbvObject) ? v : NULL;
}

/* add to ids what a member "key": value of a text names, if it forms one */
static List *
AddTextIdentifier(List *ids, const char *key, int keylen, const char *value, int vlen)
{
	static const struct
	{
		const char *key;
		const char *types[2];
	}			keys[] = {
		{"userId", {"user_id", NULL}},
		{"anonymousId", {"anonymous_id", NULL}},
		{"previousId", {"user_id", "anonymous_id"}},
		{"email", {"email", NULL}},
		{"phone", {"phone", NULL}},
		{"id", {"device_id", NULL}},
	};

	for (int k = 0; k < lengthof(keys); k++)
	{
		if (strlen(keys[k].key) != keylen || memcmp(keys[k].key, key, keylen) != 0)
			continue;
		for (int t = 0; t < 2 && keys[k].types[t] != NULL; t++)
		{
			const char *problem = NULL;
			CdpIdentifier *id = CdpMakeIdentifier(keys[k].types[t], strlen(keys[k].types[t]),
												  value, vlen, &problem);

			if (id != NULL)
				ids = lappend(ids, id);
		}
	}
	return ids;
}

/*
 * The identifiers a row's text names, read without parsing it as a whole
 * (it may not be JSON, be cut at 4 kB, or hold a number numeric cannot):
 * the string or number after each "userId", "anonymousId", "previousId",
 * "email", "phone" or "id" member name, wherever it stands.  A value cut
 * off at the end is none.
 */
static List *
TextIdentifiers(const char *text, int len)
{
	List	   *ids = NIL;
	int			i = 0;

	while (i < len)
	{
		int			start;
		int			qend;
		bool		escaped = false;

		if (text[i] != '"')
		{
			i++;
			continue;
		}
		/* a string: is it a member name? */
		start = i++;
		while (i < len && text[i] != '"')
		{
			if (text[i] == '\\')
			{
				escaped = true;
				i++;
			}
			i++;
		}
		if (i >= len)
			break;
		qend = i++;
		while (i < len && IsSpaceChar(text[i]))
			i++;
		if (escaped || i >= len || text[i] != ':')
			continue;
		i++;
		while (i < len && IsSpaceChar(text[i]))
			i++;
		if (i < len && text[i] == '"')
		{
			/* a string value, decoded when it has escapes */
			int			vstart = i++;
			bool		vescaped = false;
			const char *value;
			int			vlen;

			while (i < len && text[i] != '"')
			{
				if (text[i] == '\\')
				{
					vescaped = true;
					i++;
				}
				i++;
			}
			if (i >= len)
				break;
			i++;
			value = text + vstart + 1;
			vlen = i - vstart - 2;
			if (vescaped)
			{
				const char *code;
				char	   *message;
				JsonbValue *v = CdpParseJsonValue(text + vstart, i - vstart, &code, &message);

				if (v == NULL || v->type != jbvString)
					continue;
				value = v->val.string.val;
				vlen = v->val.string.len;
			}
			ids = AddTextIdentifier(ids, text + start + 1, qend - start - 1, value, vlen);
		}
		else if (i < len && (isdigit((unsigned char) text[i]) || text[i] == '-'))
		{
			/* a number, as its text (an integer id reads the same either way) */
			int			vstart = i;

			while (i < len && (isdigit((unsigned char) text[i]) || strchr("+-.eE", text[i]) != NULL))
				i++;
			if (i < len)
				ids = AddTextIdentifier(ids, text + start + 1, qend - start - 1,
										text + vstart, i - vstart);
		}
	}
	return ids;
}

/*
 * The identifiers a message carries, as identity resolution reads them; an
 * alias's previousId counts as both a user_id and an anonymous_id.  A
 * message that failed validation is read from its parsed object as far as
 * it goes, so that it is not dead-lettered either; one that was never
 * parsed (the whole row is dead: its source unknown or disabled, not JSON,
 * too large, an envelope wrong as a whole) from its text.
 */
static List *
CarriedIdentifiers(CdpMessage *msg)
{
	CdpMessage	stub;
	List	   *invalid = NIL;
	List	   *ids;
	const char *problem = NULL;

	if (msg->outcome != CDP_PENDING)
	{
		if (msg->item == NULL && msg->raw != NULL)
			return TextIdentifiers(msg->raw, strlen(msg->raw));
		if (msg->item == NULL || msg->item->type != jbvObject)
			return NIL;
		memset(&stub, 0, sizeof(stub));
		stub.item = msg->item;
		stub.type = ScalarField(msg->item, "type");
		stub.user_id = ScalarField(msg->item, "userId");
		stub.anonymous_id = ScalarField(msg->item, "anonymousId");
		stub.previous_id = ScalarField(msg->item, "previousId");
		stub.traits = ObjectField(msg->item, "traits");
		stub.context = ObjectField(msg->item, "context");
		msg = &stub;
	}
	ids = CdpMessageIdentifiers(msg, "anonymous_id", &invalid);
	if (msg->previous_id != NULL)
	{
		CdpIdentifier *id = CdpMakeIdentifier("user_id", 7, msg->previous_id,
											  strlen(msg->previous_id), &problem);

		if (id != NULL)
			ids = lappend(ids, id);
	}
	return ids;
}

/*
 * Drop the messages of a chunk that carry a suppressed identifier: pending
 * ones and those failing validation (which would be dead-lettered).  The
 * chunk's hashes are looked up at once; the drops are counted, on the first
 * suppressed hash of each message, only when something matched.
 */
void
CdpDropSuppressed(CdpMessage **msgs, int n)
{
	List	  **carried;
	int		   *first;
	Datum	   *hashes;
	int			nhashes = 0;
	bytea	  **hits;
	int			nhits;
	Oid			argtypes[2] = {BYTEAARRAYOID, INT8ARRAYOID};
	Datum		args[2];
	int64	   *counts;
	Datum	   *count_datums;
	Datum	   *hit_datums;
	pg_cryptohash_ctx *ctx;

	if (n == 0 || !SuppressionsExist())
		return;

	carried = palloc0(sizeof(List *) * n);
	first = palloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
	{
		first[i] = nhashes;
		if (msgs[i]->outcome == CDP_PENDING || msgs[i]->outcome == CDP_DEAD)
		{
			carried[i] = CarriedIdentifiers(msgs[i]);
			nhashes += list_length(carried[i]);
		}
	}
	if (nhashes == 0)
		return;
	hashes = palloc(sizeof(Datum) * nhashes);
	ctx = NewHashContext();
	for (int i = 0, k = 0; i < n; i++)
	{
		ListCell   *lc;

		foreach(lc, carried[i])
			hashes[k++] = PointerGetDatum(HashIdentifier(ctx, cache.salt, lfirst(lc)));
	}
	pg_cryptohash_free(ctx);

	hits = FindSuppressed(hashes, nhashes, &nhits);
	if (nhits == 0)
		return;

	counts = palloc0(sizeof(int64) * nhits);
	for (int i = 0; i < n; i++)
	{
		int			m = list_length(carried[i]);

		for (int k = 0; k < m; k++)
		{
			bytea	   *h = DatumGetByteaPP(hashes[first[i] + k]);
			bytea	  **hit = bsearch(&h, hits, nhits, sizeof(bytea *), CompareHashes);

			if (hit == NULL)
				continue;
			msgs[i]->outcome = CDP_SUPPRESSED;
			msgs[i]->error_code = NULL;
			msgs[i]->error_message = NULL;
			counts[hit - hits]++;
			break;
		}
	}

	/* rows locked in hash order, the one order every batch uses */
	count_datums = palloc(sizeof(Datum) * nhits);
	hit_datums = palloc(sizeof(Datum) * nhits);
	for (int j = 0; j < nhits; j++)
	{
		count_datums[j] = Int64GetDatum(counts[j]);
		hit_datums[j] = PointerGetDatum(hits[j]);
	}
	args[0] = CdpArray(hit_datums, nhits, BYTEAOID);
	args[1] = CdpArray(count_datums, nhits, INT8OID);
	CdpExecPlan(CdpPlan(&count_plan,
						"WITH l AS (SELECT hash FROM cdp.suppressions WHERE hash = ANY ($1) "
						"ORDER BY hash FOR UPDATE) "
						"UPDATE cdp.suppressions s SET dropped = s.dropped + d.n, "
						"last_dropped_at = now() "
						"FROM l JOIN unnest($1, $2) AS d(hash, n) ON d.hash = l.hash "
						"WHERE s.hash = l.hash AND d.n > 0",
						2, argtypes),
				args, NULL, SPI_OK_UPDATE);
}

/*
 * Take the suppression lock: shared by ingest and cdp.link for the rest of
 * the transaction, exclusive by cdp.forget.  Invalidations are taken after
 * it, so a forget that committed before is seen.
 */
void
CdpLockSuppressions(bool exclusive)
{
	if (exclusive)
		DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(CDP_LOCK_CLASS),
							Int32GetDatum(CDP_LOCK_SUPPRESSION));
	else
		DirectFunctionCall2(pg_advisory_xact_lock_shared_int4, Int32GetDatum(CDP_LOCK_CLASS),
							Int32GetDatum(CDP_LOCK_SUPPRESSION));
	AcceptInvalidationMessages();
}

/*
 * cdp.link() refuses a suppressed identifier: linking would make a profile
 * of a forgotten person again.  Called inside SPI.
 */
void
CdpCheckNotSuppressed(CdpIdentifier *id)
{
	pg_cryptohash_ctx *ctx;
	Datum		h;
	int			nhits;

	CdpLockSuppressions(false);
	if (!SuppressionsExist())
		return;
	ctx = NewHashContext();
	h = PointerGetDatum(HashIdentifier(ctx, cache.salt, id));
	pg_cryptohash_free(ctx);
	(void) FindSuppressed(&h, 1, &nhits);
	if (nhits > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot link a suppressed identifier"),
				 errdetail("It belonged to a person erased with cdp.forget(); "
						   "pg_cdp keeps no data about it.")));
}

PG_FUNCTION_INFO_V1(cdp_suppression_hash);

/*
 * cdp.suppression_hash(salt, id): the hash cdp.forget stores, computed by
 * the same code the ingest check uses.
 */
Datum
cdp_suppression_hash(PG_FUNCTION_ARGS)
{
	bytea	   *salt = PG_GETARG_BYTEA_PP(0);
	CdpIdentifier *id = PG_GETARG_IDENTIFIER_P(1);
	pg_cryptohash_ctx *ctx;
	bytea	   *result;

	if (VARSIZE_ANY_EXHDR(salt) != SALT_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the salt must be %d bytes, not %d", SALT_BYTES,
						(int) VARSIZE_ANY_EXHDR(salt))));

	ctx = NewHashContext();
	result = HashIdentifier(ctx, (const uint8 *) VARDATA_ANY(salt), id);
	pg_cryptohash_free(ctx);
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(cdp_forget_lock);

/*
 * cdp.forget_lock(): what cdp.forget takes before reading anything: the
 * suppression lock (no ingest in flight) and then the identity lock (no
 * merge, split or rebuild in flight), in the order every writer takes them.
 */
Datum
cdp_forget_lock(PG_FUNCTION_ARGS)
{
	CdpLockSuppressions(true);
	SPI_connect();
	CdpLockIdentityGraph();
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * The longest stretch of an identifier's value that a JSON text holds
 * literally whatever the writer escaped: ASCII other than quote, backslash,
 * slash and controls.  Compared case-insensitively (emails are lower-cased).
 * Empty for phones (formatting comes between the digits) and values with
 * nothing of the kind: those payloads are always parsed.
 */
static void
Needle(const CdpIdentifier *id, const char **start, int *len)
{
	const char *v = IdValuePtr(id);
	int			vlen = IdValueLen(id);
	int			run = 0;

	*start = v;
	*len = 0;
	if (id->type_len == 5 && memcmp(IdTypePtr(id), "phone", 5) == 0)
		return;
	for (int i = 0; i <= vlen; i++)
	{
		unsigned char c = i < vlen ? (unsigned char) v[i] : 0;

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '/')
			run++;
		else
		{
			if (run > *len)
			{
				*len = run;
				*start = v + i - run;
			}
			run = 0;
		}
	}
}

/* does hay hold needle, ASCII letters in either case? */
static bool
ContainsCaseless(const char *hay, int haylen, const char *needle, int len)
{
	for (int i = 0; i + len <= haylen; i++)
	{
		if (pg_ascii_tolower((unsigned char) hay[i]) == pg_ascii_tolower((unsigned char) needle[0]) &&
			pg_strncasecmp(hay + i, needle, len) == 0)
			return true;
	}
	return false;
}

/* does one parsed message object carry any of ids? */
static bool
ObjectCarries(JsonbValue *obj, CdpIdentifier **ids, int nids)
{
	CdpMessage	msg;
	ListCell   *lc;
	List	   *carried;

	memset(&msg, 0, sizeof(msg));
	msg.outcome = CDP_DEAD;
	msg.item = obj;
	carried = CarriedIdentifiers(&msg);
	foreach(lc, carried)
		for (int i = 0; i < nids; i++)
			if (CdpIdentifierCompare(lfirst(lc), ids[i]) == 0)
				return true;
	return false;
}

/*
 * Does text end with the first k bytes of v, 3 <= k < vlen, in either case?
 * A payload over cdp.max_request_bytes is dead-lettered as its first 4 kB,
 * which may end in the middle of an identifier's value.
 */
static bool
EndsWithPartOf(const char *text, int len, const char *v, int vlen)
{
	for (int k = Min(len, vlen - 1); k >= 3; k--)
		if (pg_strncasecmp(text + len - k, v, k) == 0)
			return true;
	return false;
}

/* does a text that is not JSON hold one of ids' values, whole or cut off at its end? */
static bool
TextHoldsValue(const char *text, int len, CdpIdentifier **ids, int nids)
{
	for (int i = 0; i < nids; i++)
	{
		const char *v = IdValuePtr(ids[i]);
		int			vlen = IdValueLen(ids[i]);

		if (vlen > 0 &&
			(ContainsCaseless(text, len, v, vlen) || EndsWithPartOf(text, len, v, vlen)))
			return true;
	}
	return false;
}

/* the identifiers payload_carries looks for, kept for the whole statement */
typedef struct CarriesIds
{
	Size		arrsize;		/* the array they came from, to notice another */
	char	   *arr;
	int			nids;
	CdpIdentifier **ids;
	const char **needles;
	int		   *nlens;
	bool		always_parse;	/* an id with no needle */
	bool		first[256];		/* bytes a needle starts with, either case */
	int			klen;			/* bytes of every needle the order sorts on */
	int		   *order;			/* ids with a needle, by their first klen bytes folded */
	int			norder;
} CarriesIds;

/* a and b's first n bytes, ASCII letters folded to lower case */
static int
CompareFolded(const char *a, const char *b, int n)
{
	for (int i = 0; i < n; i++)
	{
		int			d = (int) pg_ascii_tolower((unsigned char) a[i]) -
			(int) pg_ascii_tolower((unsigned char) b[i]);

		if (d != 0)
			return d;
	}
	return 0;
}

/* qsort_arg: two needles' first klen bytes */
static int
CompareNeedles(const void *a, const void *b, void *arg)
{
	CarriesIds *c = arg;

	return CompareFolded(c->needles[*(const int *) a], c->needles[*(const int *) b], c->klen);
}

/*
 * May text carry one of c's identifiers: does it hold one of their needles,
 * case-insensitively (one pass over text), a \u escape (a writer may spell
 * any character so; such a text is parsed), or end in the middle of one's
 * value (a truncated payload; a complete one ends with a bracket)?
 */
static bool
HoldsNeedle(CarriesIds *c, const char *text, int len)
{
	if (len > 0 && text[len - 1] != '}' && text[len - 1] != ']')
		for (int j = 0; j < c->nids; j++)
			if (EndsWithPartOf(text, len, IdValuePtr(c->ids[j]), IdValueLen(c->ids[j])))
				return true;
	for (const char *p = text; p < text + len && (p = memchr(p, '\\', text + len - p)) != NULL; p += 2)
		if (p + 1 < text + len && p[1] == 'u')
			return true;
	/*
	 * At each position, the needles sharing its first klen bytes are found
	 * by binary search: a person with many identifiers costs a logarithm per
	 * byte, not their number.
	 */
	for (int i = 0; i + c->klen <= len && c->norder > 0; i++)
	{
		int			lo = 0;
		int			hi = c->norder;

		if (!c->first[(unsigned char) text[i]])
			continue;
		while (lo < hi)
		{
			int			mid = (lo + hi) / 2;

			if (CompareFolded(c->needles[c->order[mid]], text + i, c->klen) < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (; lo < c->norder &&
			 CompareFolded(c->needles[c->order[lo]], text + i, c->klen) == 0; lo++)
		{
			int			j = c->order[lo];

			if (c->nlens[j] <= len - i && CompareFolded(c->needles[j], text + i, c->nlens[j]) == 0)
				return true;
		}
	}
	return false;
}

/* the ids of arr, with their needles, in the function's memory */
static CarriesIds *
PrepareCarriesIds(FunctionCallInfo fcinfo, ArrayType *arr)
{
	CarriesIds *c = fcinfo->flinfo->fn_extra;
	Size		size = VARSIZE(arr);
	MemoryContext old;
	Datum	   *elems;
	bool	   *nulls;

	if (c != NULL && c->arrsize == size && memcmp(c->arr, arr, size) == 0)
		return c;
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	c = palloc0(sizeof(CarriesIds));
	c->arrsize = size;
	c->arr = palloc(size);
	memcpy(c->arr, arr, size);
	deconstruct_array((ArrayType *) c->arr, ARR_ELEMTYPE(arr), -1, false, TYPALIGN_INT,
					  &elems, &nulls, &c->nids);
	c->ids = palloc(sizeof(CdpIdentifier *) * Max(c->nids, 1));
	c->needles = palloc(sizeof(char *) * Max(c->nids, 1));
	c->nlens = palloc(sizeof(int) * Max(c->nids, 1));
	for (int i = 0; i < c->nids; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("identifiers must not be NULL")));
		c->ids[i] = DatumGetIdentifierP(elems[i]);
		Needle(c->ids[i], &c->needles[i], &c->nlens[i]);
		if (c->nlens[i] == 0)
			c->always_parse = true;
		else
		{
			unsigned char ch = (unsigned char) c->needles[i][0];

			c->first[pg_ascii_tolower(ch)] = true;
			c->first[pg_ascii_toupper(ch)] = true;
		}
	}
	/* the needles sorted on their first klen bytes (at most 8, the shortest's length) */
	c->order = palloc(sizeof(int) * Max(c->nids, 1));
	c->klen = 8;
	for (int i = 0; i < c->nids; i++)
		if (c->nlens[i] > 0)
		{
			c->order[c->norder++] = i;
			c->klen = Min(c->klen, c->nlens[i]);
		}
	qsort_arg(c->order, c->norder, sizeof(int), CompareNeedles, c);
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = c;
	return c;
}

PG_FUNCTION_INFO_V1(cdp_payload_carries);

/*
 * cdp.payload_carries(payload, ids): whether a queued or dead-lettered
 * payload (one message or a batch envelope) carries one of ids, read as
 * ingest reads a message's identifiers.  A text holding none of the ids'
 * needles is answered without parsing.  A text that is not JSON (or too
 * large to parse) carries an id when it holds its whole value, or ends with
 * the start of it (at least 3 bytes: a payload cut at 4 kB).
 */
Datum
cdp_payload_carries(PG_FUNCTION_ARGS)
{
	text	   *payload = PG_GETARG_TEXT_PP(0);
	CarriesIds *c = PrepareCarriesIds(fcinfo, PG_GETARG_ARRAYTYPE_P(1));
	const char *text = VARDATA_ANY(payload);
	int			len = VARSIZE_ANY_EXHDR(payload);
	JsonbValue *root;
	const char *code;
	char	   *message;
	bool		result = false;

	if (!c->always_parse && !HoldsNeedle(c, text, len))
		PG_RETURN_BOOL(false);

	root = len > cdp_max_request_bytes ? NULL : CdpParseJson(text, len, &code, &message);
	if (root == NULL)
	{
		/* not a message: the whole value as text, or its start at the end */
		PG_RETURN_BOOL(TextHoldsValue(text, len, c->ids, c->nids));
	}
	if (root->type == jbvObject)
	{
		JsonbValue *batch = CdpJsonbObjectGet(root, "batch");

		result = ObjectCarries(root, c->ids, c->nids);
		if (!result && batch != NULL && batch->type == jbvArray)
			for (int i = 0; i < batch->val.array.nElems && !result; i++)
				if (batch->val.array.elems[i].type == jbvObject)
					result = ObjectCarries(&batch->val.array.elems[i], c->ids, c->nids);
	}
	else if (root->type == jbvArray)
	{
		for (int i = 0; i < root->val.array.nElems && !result; i++)
			if (root->val.array.elems[i].type == jbvObject)
				result = ObjectCarries(&root->val.array.elems[i], c->ids, c->nids);
	}
	PG_RETURN_BOOL(result);
}

PG_FUNCTION_INFO_V1(cdp_identifier_blocked);

/*
 * cdp.identifier_blocked(id): whether identity resolution never links this
 * value (a placeholder such as "guest").  Such a value names nobody in
 * particular, so cdp.forget refuses it rather than erase and suppress
 * everyone who sends it.
 */
Datum
cdp_identifier_blocked(PG_FUNCTION_ARGS)
{
	CdpIdentifier *id = PG_GETARG_IDENTIFIER_P(0);
	bool		blocked;

	SPI_connect();
	blocked = CdpIsBlocked(CdpLoadIdentityRules(), id);
	SPI_finish();
	PG_RETURN_BOOL(blocked);
}

PG_FUNCTION_INFO_V1(cdp_identifier_suppressed);

/*
 * cdp.identifier_suppressed(id): whether id belongs to a forgotten person.
 * For functions that record something about an identifier outside ingest
 * (consent set through the API, links), which must not bring one back.
 */
Datum
cdp_identifier_suppressed(PG_FUNCTION_ARGS)
{
	CdpIdentifier *id = PG_GETARG_IDENTIFIER_P(0);
	pg_cryptohash_ctx *ctx;
	Datum		h;
	int			nhits = 0;

	SPI_connect();
	if (SuppressionsExist())
	{
		ctx = NewHashContext();
		h = PointerGetDatum(HashIdentifier(ctx, cache.salt, id));
		pg_cryptohash_free(ctx);
		(void) FindSuppressed(&h, 1, &nhits);
	}
	SPI_finish();
	PG_RETURN_BOOL(nhits > 0);
}
