/*
 * dedup.c
 *	  messageId deduplication within cdp.dedup_window.  SDKs retry with the
 *	  same messageId (and a new sentAt), so a messageId seen within the window
 *	  is a duplicate whatever its content.  Keys are 128-bit digests of the
 *	  messageId: fixed width keeps the unique index small.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "pg_cdp.h"
#include "spi_util.h"

#ifdef USE_OPENSSL
#include <openssl/evp.h>
#endif

static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr insert_plan = NULL;

/*
 * Whether this backend's last batch met a recorded key (a retry): batches
 * come in runs, so the next one goes straight to the upsert (see
 * RecordNewKeys).
 */
static bool last_batch_met_key = false;

typedef struct DedupEntry
{
	pg_uuid_t	key;
	bool		accepted;
} DedupEntry;

/* a key to record and the receipt time it is recorded with */
typedef struct KeyToRecord
{
	pg_uuid_t  *key;
	TimestampTz seen_at;
} KeyToRecord;

static int
CompareKeysToRecord(const void *a, const void *b)
{
	return memcmp(((const KeyToRecord *) a)->key->data,
				  ((const KeyToRecord *) b)->key->data, UUID_LEN);
}

#if defined(USE_OPENSSL) && OPENSSL_VERSION_NUMBER >= 0x30000000L

/*
 * The key of a messageId: the first 16 bytes of its SHA-256.  With OpenSSL
 * 3 the digest is looked up once per backend and its context reused:
 * pg_cryptohash looks the algorithm up again for every key, which was a
 * sixth of deduplicating small messages.
 */
static void
MessageKey(const char *message_id, pg_uuid_t *key)
{
	static EVP_MD *sha256 = NULL;
	static EVP_MD_CTX *ctx = NULL;
	uint8		digest[EVP_MAX_MD_SIZE];
	unsigned int len;

	if (sha256 == NULL)
		sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (ctx == NULL)
		ctx = EVP_MD_CTX_new();
	if (sha256 == NULL || ctx == NULL ||
		!EVP_DigestInit_ex(ctx, sha256, NULL) ||
		!EVP_DigestUpdate(ctx, message_id, strlen(message_id)) ||
		!EVP_DigestFinal_ex(ctx, digest, &len) || len < UUID_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute a messageId digest")));
	memcpy(key->data, digest, UUID_LEN);
}

#else

/* the key of a messageId: the first 16 bytes of its SHA-256 */
static void
MessageKey(const char *message_id, pg_uuid_t *key)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];

	if (ctx == NULL ||
		pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) message_id, strlen(message_id)) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute a messageId digest: %s",
						ctx ? pg_cryptohash_error(ctx) : "out of memory")));
	pg_cryptohash_free(ctx);
	memcpy(key->data, digest, UUID_LEN);
}

#endif

static SPIPlanPtr
UpsertPlan(void)
{
	if (upsert_plan == NULL)
	{
		Oid			argtypes[3] = {UUIDARRAYOID, TIMESTAMPTZARRAYOID, FLOAT8OID};
		SPIPlanPtr	plan;

		/*
		 * An existing key older than the window is renewed and the message
		 * accepted; RETURNING names exactly the accepted keys.
		 */
		plan = SPI_prepare("INSERT INTO cdp.message_ids AS m (message_key, seen_at) "
						   "SELECT pg_catalog.unnest($1), pg_catalog.unnest($2) "
						   "ON CONFLICT (message_key) DO UPDATE SET seen_at = excluded.seen_at "
						   "WHERE m.seen_at < excluded.seen_at - pg_catalog.make_interval(secs => $3) "
						   "RETURNING message_key",
						   3, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		upsert_plan = plan;
	}
	return upsert_plan;
}

static SPIPlanPtr
InsertPlan(void)
{
	if (insert_plan == NULL)
	{
		Oid			argtypes[2] = {UUIDARRAYOID, TIMESTAMPTZARRAYOID};
		SPIPlanPtr	plan;

		/*
		 * unnest in the select list, side by side: in FROM (ROWS FROM) each
		 * function's rows are first stored in a tuplestore and read back.
		 */
		plan = SPI_prepare("INSERT INTO cdp.message_ids (message_key, seen_at) "
						   "SELECT pg_catalog.unnest($1), pg_catalog.unnest($2)",
						   2, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}
	return insert_plan;
}

/* keys none of which is expected in cdp.message_ids, to insert */
typedef struct NewKeys
{
	Datum	   *args;			/* the INSERT's: arrays of keys and times */
	KeyToRecord *record;		/* the same, in order */
	int			n;
} NewKeys;

/*
 * Insert the keys: directly when the table allows (CdpInsertRowsDirectly:
 * one multi-insert, then the unique index checks each key in the descent
 * that inserts it), else with the INSERT statement.  A key recorded already
 * raises unique_violation either way.
 */
static void
InsertKeys(void *arg)
{
	NewKeys    *k = arg;
	static const char *const cols[2] = {"message_key", "seen_at"};
	static const Oid types[2] = {UUIDOID, TIMESTAMPTZOID};
	Oid			relid = get_relname_relid("message_ids", get_namespace_oid("cdp", false));
	Datum	   *values = palloc(sizeof(Datum) * 2 * k->n);
	int			rc;

	for (int i = 0; i < k->n; i++)
	{
		values[2 * i] = UUIDPGetDatum(k->record[i].key);
		values[2 * i + 1] = TimestampTzGetDatum(k->record[i].seen_at);
	}
	if (OidIsValid(relid) && CdpInsertRowsDirectly(relid, cols, types, 2, values, NULL, k->n))
		return;
	rc = SPI_execute_plan(InsertPlan(), k->args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording messageIds failed: %s", SPI_result_code_string(rc));
}

static bool
IsUniqueViolation(ErrorData *edata)
{
	return edata->sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
}

/*
 * Record keys none of which is expected in the table, with a plain insert
 * (InsertKeys) in a subtransaction: the unique index checks each key in
 * the descent that inserts it, where the upsert first probes the index (a
 * second descent) and then inserts speculatively (a lock and an extra WAL
 * record per key), two fifths of the time of deduplicating.  A key
 * recorded already, or being recorded by an uncommitted session (the
 * insert waits for it as the upsert would), raises unique_violation: the
 * subtransaction rolls back with every row it wrote and false says to run
 * the upsert.
 */
static bool
RecordNewKeys(Datum *args, KeyToRecord *record, int n)
{
	NewKeys		k = {args, record, n};
	ErrorData  *edata = CdpRunInSubtransaction(InsertKeys, &k, IsUniqueViolation);

	if (edata == NULL)
		return true;
	FreeErrorData(edata);
	return false;
}

/*
 * Mark every pending message whose messageId was accepted within the window
 * (earlier, or earlier in this batch) as a duplicate, and record the rest.
 * Generated messageIds are unique by construction and skip the table.
 */
void
CdpDeduplicate(CdpMessage **msgs, int n)
{
	HASHCTL		ctl;
	HTAB	   *seen;
	KeyToRecord *record;
	Datum	   *keys;
	Datum	   *times;
	DedupEntry **entry_of;
	int			nkeys = 0;
	Datum		args[3];
	MemoryContext cxt = CurrentMemoryContext;
	int			rc;

	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(DedupEntry);
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("cdp dedup batch", Max(n, 16), &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	record = palloc(sizeof(KeyToRecord) * Max(n, 1));
	entry_of = palloc0(sizeof(DedupEntry *) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];
		pg_uuid_t  *key;
		DedupEntry *entry;
		bool		found;

		if (msg->outcome != CDP_PENDING || msg->message_id_generated)
			continue;
		key = palloc(sizeof(pg_uuid_t));
		MessageKey(msg->message_id, key);
		entry = hash_search(seen, key, HASH_ENTER, &found);
		if (found)
		{
			msg->outcome = CDP_DUPLICATE;	/* the first in inbox order wins */
			continue;
		}
		entry->accepted = false;
		entry_of[i] = entry;
		record[nkeys].key = key;
		record[nkeys].seen_at = msg->received_at;
		nkeys++;
	}
	if (nkeys == 0)
		return;

	/*
	 * Keys are recorded in one order in every session, so two sessions
	 * recording the same keys wait for each other instead of deadlocking.
	 */
	qsort(record, nkeys, sizeof(KeyToRecord), CompareKeysToRecord);
	keys = palloc(sizeof(Datum) * nkeys);
	times = palloc(sizeof(Datum) * nkeys);
	for (int k = 0; k < nkeys; k++)
	{
		keys[k] = UUIDPGetDatum(record[k].key);
		times[k] = TimestampTzGetDatum(record[k].seen_at);
	}

	args[0] = CdpArray(keys, nkeys, UUIDOID);
	args[1] = CdpArray(times, nkeys, TIMESTAMPTZOID);
	args[2] = Float8GetDatum((double) cdp_dedup_window_secs);

	/* a run of new messageIds: every key is accepted if the insert succeeds */
	if (!last_batch_met_key && RecordNewKeys(args, record, nkeys))
	{
		hash_destroy(seen);
		return;
	}

	rc = SPI_execute_plan(UpsertPlan(), args, NULL, false, 0);
	MemoryContextSwitchTo(cxt);	/* SPI leaves us in its own context */
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "recording messageIds failed: %s", SPI_result_code_string(rc));

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
		DedupEntry *entry = hash_search(seen, DatumGetUUIDP(d), HASH_FIND, NULL);

		if (entry != NULL)
			entry->accepted = true;
	}
	/* every key accepted: none was recorded within the window */
	last_batch_met_key = (SPI_processed < (uint64) nkeys);
	SPI_freetuptable(SPI_tuptable);

	for (int i = 0; i < n; i++)
		if (entry_of[i] != NULL && !entry_of[i]->accepted)
			msgs[i]->outcome = CDP_DUPLICATE;
	hash_destroy(seen);
}

static SPIPlanPtr forget_plan = NULL;

/*
 * Forget the messageIds of accepted messages that were not stored after all
 * (dead-lettered while being written), so that replaying them is not taken
 * for a retry of something already kept.
 */
void
CdpForgetMessageIds(CdpMessage **msgs, int n)
{
	Datum	   *keys = palloc(sizeof(Datum) * Max(n, 1));
	int			nkeys = 0;
	Oid			argtype = UUIDARRAYOID;
	Datum		arg;

	for (int i = 0; i < n; i++)
	{
		pg_uuid_t  *key;

		if (msgs[i]->message_id_generated || msgs[i]->message_id == NULL)
			continue;
		key = palloc(sizeof(pg_uuid_t));
		MessageKey(msgs[i]->message_id, key);
		keys[nkeys++] = UUIDPGetDatum(key);
	}
	if (nkeys == 0)
		return;
	arg = CdpArray(keys, nkeys, UUIDOID);
	CdpExecPlan(CdpPlan(&forget_plan,
						"DELETE FROM cdp.message_ids WHERE message_key = ANY ($1)",
						1, &argtype),
				&arg, NULL, SPI_OK_DELETE);
}

/* Forget messageIds accepted before the window; returns how many. */
int64
CdpPurgeDedupWindow(void)
{
	Datum		arg = Float8GetDatum((double) cdp_dedup_window_secs);
	Oid			argtype = FLOAT8OID;
	MemoryContext cxt = CurrentMemoryContext;
	int			rc;

	rc = SPI_execute_with_args("DELETE FROM cdp.message_ids "
							   "WHERE seen_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1)",
							   1, &argtype, &arg, NULL, false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "purging messageIds failed: %s", SPI_result_code_string(rc));
	return (int64) SPI_processed;
}
