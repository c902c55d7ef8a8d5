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

/*
 * Only a hash of a write key is ever stored, so a key sent inside the payload
 * (as analytics.js does) is removed before the payload is queued.
 */
static Jsonb *
StripWriteKey(Jsonb *payload)
{
	if (!JB_ROOT_IS_OBJECT(payload) ||
		getKeyJsonValueFromContainer(&payload->root, "writeKey", 8, NULL) == NULL)
		return payload;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(payload),
											  CStringGetTextDatum("writeKey")));
}

PG_FUNCTION_INFO_V1(cdp_ingest);

/* cdp.ingest(payload jsonb, source text): enqueue; returns the message count */
Datum
cdp_ingest(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload;
	text	   *source;
	int64		count;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	int			rc;

	/* not STRICT: a NULL would otherwise vanish without a trace */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", PG_ARGISNULL(0) ? "payload" : "source")));
	payload = StripWriteKey(PG_GETARG_JSONB_P(0));
	source = PG_GETARG_TEXT_PP(1);
	count = CdpCountMessages(payload);

	SPI_connect();
	CdpCheckSourceForEnqueue(text_to_cstring(source));
	if (count == 0)
	{
		SPI_finish();
		PG_RETURN_INT64(0);		/* an empty batch holds nothing to keep */
	}
	args[0] = CStringGetTextDatum(JsonbToCString(NULL, &payload->root, VARSIZE(payload)));
	args[1] = PointerGetDatum(source);
	rc = SPI_execute_plan(KeepPlan(&enqueue_plan,
								   "INSERT INTO cdp.inbox (payload, source) VALUES ($1, $2)",
								   2, argtypes),
						  args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "enqueueing into cdp.inbox failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	PG_RETURN_INT64(count);
}
