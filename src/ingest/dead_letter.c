/*
 * dead_letter.c
 *	  Writing cdp.dead_letters: every message that cannot be stored keeps its
 *	  original payload, source, receipt time and a stable error code, so it
 *	  can be read, fixed upstream and replayed.  Nothing is silently dropped.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/memutils.h"

#include "pg_cdp.h"
#include "spi_util.h"

static SPIPlanPtr insert_plan = NULL;

static SPIPlanPtr
InsertPlan(void)
{
	if (insert_plan == NULL)
	{
		Oid			argtypes[5] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TIMESTAMPTZARRAYOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO cdp.dead_letters "
						   "(payload, source, error_code, error_message, received_at) "
						   "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
						   "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))",
						   5, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}
	return insert_plan;
}

/* Write a dead letter for every message marked dead; returns how many. */
int
CdpWriteDeadLetters(CdpMessage **msgs, int n)
{
	Datum	   *payloads = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *sources = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *codes = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *reasons = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *received = palloc(sizeof(Datum) * Max(n, 1));
	Datum		args[5];
	int			ndead = 0;
	int			rc;
	MemoryContext cxt = CurrentMemoryContext;

	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];

		if (msg->outcome != CDP_DEAD)
			continue;
		payloads[ndead] = CStringGetTextDatum(CdpMessagePayload(msg));
		sources[ndead] = CStringGetTextDatum(msg->source);
		codes[ndead] = CStringGetTextDatum(msg->error_code);
		reasons[ndead] = CStringGetTextDatum(msg->error_message);
		received[ndead] = TimestampTzGetDatum(msg->received_at);
		ndead++;
	}
	if (ndead == 0)
		return 0;

	args[0] = CdpArray(payloads, ndead, TEXTOID);
	args[1] = CdpArray(sources, ndead, TEXTOID);
	args[2] = CdpArray(codes, ndead, TEXTOID);
	args[3] = CdpArray(reasons, ndead, TEXTOID);
	args[4] = CdpArray(received, ndead, TIMESTAMPTZOID);
	rc = SPI_execute_plan(InsertPlan(), args, NULL, false, 0);
	MemoryContextSwitchTo(cxt);	/* SPI leaves us in its own context */
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "writing dead letters failed: %s", SPI_result_code_string(rc));
	return ndead;
}
