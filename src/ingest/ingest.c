/*
 * ingest.c
 *	  cdp.ingest(): enqueue one message or batch envelope.  Enqueue is a plain
 *	  insert into cdp.inbox, durable when the caller commits; the work of
 *	  validating and storing happens in cdp.process_inbox() or a worker, so
 *	  the caller's transaction stays short and never fails on message content.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"

static SPIPlanPtr enqueue_plan = NULL;

static SPIPlanPtr
KeepPlan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

/* How many messages a payload holds: the items of a batch array, else one. */
int64
CdpCountMessages(Jsonb *payload)
{
	JsonbValue *batch;

	if (!JB_ROOT_IS_OBJECT(payload))
		return 1;
	batch = getKeyJsonValueFromContainer(&payload->root, "batch", 5, NULL);
	if (batch == NULL || batch->type != jbvBinary || !JsonContainerIsArray(batch->val.binary.data))
		return 1;
	return JsonContainerSize(batch->val.binary.data);
}

static bool
IsKey(JsonbValue *v, const char *key)
{
	int			len = strlen(key);

	return v->type == jbvString && v->val.string.len == len &&
		memcmp(v->val.string.val, key, len) == 0;
}

/* whether a container is an object with a "writeKey" */
static bool
HasWriteKey(JsonbContainer *c)
{
	return JsonContainerIsObject(c) &&
		getKeyJsonValueFromContainer(c, "writeKey", 8, NULL) != NULL;
}

/* whether the payload or an item of its batch has a "writeKey" */
static bool
HoldsWriteKey(Jsonb *payload)
{
	JsonbValue *batch;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!JB_ROOT_IS_OBJECT(payload))
		return false;
	if (HasWriteKey(&payload->root))
		return true;
	batch = getKeyJsonValueFromContainer(&payload->root, "batch", 5, NULL);
	if (batch == NULL || batch->type != jbvBinary || !JsonContainerIsArray(batch->val.binary.data))
		return false;
	it = JsonbIteratorInit(batch->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_ELEM && v.type == jbvBinary && HasWriteKey(v.val.binary.data))
			return true;
	return false;
}

static JsonbValue *PushWithoutWriteKeys(JsonbParseState **state, JsonbContainer *obj,
										bool envelope);

/* push a batch array, its objects without their writeKey */
static void
PushItemsWithoutWriteKeys(JsonbParseState **state, JsonbContainer *items)
{
	JsonbIterator *it = JsonbIteratorInit(items);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_ELEM && v.type == jbvBinary && HasWriteKey(v.val.binary.data))
			PushWithoutWriteKeys(state, v.val.binary.data, false);
		else
			pushJsonbValue(state, tok, tok == WJB_ELEM ? &v : NULL);
	}
}

/*
 * Push an object without its writeKey (and, for an envelope, its items');
 * returns the object when it is the outermost.
 */
static JsonbValue *
PushWithoutWriteKeys(JsonbParseState **state, JsonbContainer *obj, bool envelope)
{
	JsonbIterator *it = JsonbIteratorInit(obj);
	JsonbValue *result = NULL;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		skip = false;
	bool		batch = false;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			skip = IsKey(&v, "writeKey");
			batch = envelope && IsKey(&v, "batch");
			if (!skip)
				pushJsonbValue(state, WJB_KEY, &v);
		}
		else if (tok == WJB_VALUE)
		{
			if (skip)
				continue;
			if (batch && v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
				PushItemsWithoutWriteKeys(state, v.val.binary.data);
			else
				pushJsonbValue(state, WJB_VALUE, &v);
		}
		else
			result = pushJsonbValue(state, tok, NULL);
	}
	return result;
}

/*
 * Only a hash of a write key is ever stored, so a key sent inside the payload
 * (as analytics.js does), at the top or in a batch item, is removed before
 * the payload is queued.
 */
static Jsonb *
StripWriteKeys(Jsonb *payload)
{
	JsonbParseState *state = NULL;

	if (!HoldsWriteKey(payload))
		return payload;
	return JsonbValueToJsonb(PushWithoutWriteKeys(&state, &payload->root, true));
}

/*
 * Queue one payload (a message or an envelope) in cdp.inbox for source,
 * received at received_at: what cdp.ingest and the HTTP endpoint share.
 * The caller is connected to SPI and has checked the payload and source.
 */
void
CdpEnqueuePayload(const char *payload, int len, const char *source, TimestampTz received_at)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		args[3];
	int			rc;

	args[0] = PointerGetDatum(cstring_to_text_with_len(payload, len));
	args[1] = CStringGetTextDatum(source);
	args[2] = TimestampTzGetDatum(received_at);
	rc = SPI_execute_plan(KeepPlan(&enqueue_plan,
								   "INSERT INTO cdp.inbox (payload, source, received_at) VALUES ($1, $2, $3)",
								   3, argtypes),
						  args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "enqueueing into cdp.inbox failed: %s", SPI_result_code_string(rc));
}

PG_FUNCTION_INFO_V1(cdp_ingest);

/* cdp.ingest(payload jsonb, source text): enqueue; returns the message count */
Datum
cdp_ingest(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload;
	text	   *source;
	int64		count;
	char	   *queued;
	int			len;

	/* not STRICT: a NULL would otherwise vanish without a trace */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", PG_ARGISNULL(0) ? "payload" : "source")));
	payload = StripWriteKeys(PG_GETARG_JSONB_P(0));
	source = PG_GETARG_TEXT_PP(1);
	count = CdpCountMessages(payload);

	SPI_connect();
	CdpCheckSourceForEnqueue(text_to_cstring(source));
	if (count == 0)
	{
		SPI_finish();
		PG_RETURN_INT64(0);		/* an empty batch holds nothing to keep */
	}

	/* what processing would refuse is refused now, before it is queued */
	queued = JsonbToCString(NULL, &payload->root, VARSIZE(payload));
	len = strlen(queued);
	if (len > cdp_max_request_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload is %d bytes, more than cdp.max_request_bytes (%d)",
						len, cdp_max_request_bytes),
				 errhint("Send fewer messages per batch envelope.")));

	CdpEnqueuePayload(queued, len, text_to_cstring(source), GetCurrentTransactionStartTimestamp());
	SPI_finish();
	PG_RETURN_INT64(count);
}
