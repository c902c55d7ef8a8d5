/*
 * http_metrics.c
 *	  GET /metrics: the cdp.stats figures and what the HTTP endpoint counts
 *	  itself (requests by path and status, a latency histogram, events
 *	  accepted), in Prometheus' text format.  The endpoint's own counts live
 *	  in its worker and start again from zero when it restarts, which
 *	  Prometheus' rate() expects of counters.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "http_request.h"
#include "http_server.h"
#include "spi_util.h"

#define MAX_STATUS 600

/* upper bounds of the latency histogram's buckets, in seconds */
static const double latency_bounds[] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

static uint64 requests[CDP_ROUTE_COUNT][MAX_STATUS];
static uint64 latency_buckets[lengthof(latency_bounds)];
static uint64 latency_count = 0;
static double latency_sum = 0;
static uint64 events_accepted = 0;

/* count an answered request; called in libmicrohttpd's callbacks, so no palloc */
void
CdpHttpCountRequest(CdpHttpRoute route, int status, double seconds, int events)
{
	if (status > 0 && status < MAX_STATUS)
		requests[route][status]++;
	for (int i = 0; i < lengthof(latency_bounds); i++)
		if (seconds <= latency_bounds[i])
			latency_buckets[i]++;
	latency_count++;
	latency_sum += seconds;
	if (status == 200)
		events_accepted += events;
}

/* cdp.stats, one metric per figure; the caller is connected to SPI */
static void
AppendStats(StringInfo out)
{
	static SPIPlanPtr plan = NULL;
	uint64		n;

	n = CdpExecPlan(CdpPlan(&plan, "SELECT name, value::text, kind, description FROM cdp.stats",
							0, NULL),
					NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		char	   *value = SPI_getvalue(tup, desc, 2);
		char	   *kind = SPI_getvalue(tup, desc, 3);
		char	   *help = SPI_getvalue(tup, desc, 4);
		bool		counter = kind != NULL && strcmp(kind, "counter") == 0;

		if (name == NULL || value == NULL)
			continue;
		appendStringInfo(out, "# HELP cdp_%s%s %s\n# TYPE cdp_%s%s %s\ncdp_%s%s %s\n",
						 name, counter ? "_total" : "", help ? help : name,
						 name, counter ? "_total" : "", counter ? "counter" : "gauge",
						 name, counter ? "_total" : "", value);
	}
}

/* the endpoint's own figures */
static void
AppendHttp(StringInfo out, int connections)
{
	appendStringInfoString(out,
						   "# HELP cdp_http_requests_total HTTP requests answered, by path and status.\n"
						   "# TYPE cdp_http_requests_total counter\n");
	for (int r = 0; r < CDP_ROUTE_COUNT; r++)
		for (int s = 0; s < MAX_STATUS; s++)
			if (requests[r][s] > 0)
				appendStringInfo(out, "cdp_http_requests_total{path=\"%s\",status=\"%d\"} " UINT64_FORMAT "\n",
								 CdpHttpRouteLabel((CdpHttpRoute) r), s, requests[r][s]);
	appendStringInfoString(out,
						   "# HELP cdp_http_request_duration_seconds From a request's headers to its answer (ingest: after commit).\n"
						   "# TYPE cdp_http_request_duration_seconds histogram\n");
	for (int i = 0; i < lengthof(latency_bounds); i++)
		appendStringInfo(out, "cdp_http_request_duration_seconds_bucket{le=\"%g\"} " UINT64_FORMAT "\n",
						 latency_bounds[i], latency_buckets[i]);
	appendStringInfo(out,
					 "cdp_http_request_duration_seconds_bucket{le=\"+Inf\"} " UINT64_FORMAT "\n"
					 "cdp_http_request_duration_seconds_sum %.6f\n"
					 "cdp_http_request_duration_seconds_count " UINT64_FORMAT "\n",
					 latency_count, latency_sum, latency_count);
	appendStringInfo(out,
					 "# HELP cdp_http_events_accepted_total Messages acknowledged with 200 (committed to the inbox).\n"
					 "# TYPE cdp_http_events_accepted_total counter\n"
					 "cdp_http_events_accepted_total " UINT64_FORMAT "\n"
					 "# HELP cdp_http_connections Client connections open now.\n"
					 "# TYPE cdp_http_connections gauge\n"
					 "cdp_http_connections %d\n",
					 events_accepted, connections);
}

/* the /metrics page, palloc'd; the caller is connected to SPI */
char *
CdpHttpMetricsText(int connections)
{
	StringInfoData out;

	initStringInfo(&out);
	AppendStats(&out);
	AppendHttp(&out, connections);
	return out.data;
}
