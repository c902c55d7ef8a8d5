/*
 * pg_cdp.c
 *	  Module entry: settings (GUCs) and the hooks pg_cdp registers when the
 *	  library is loaded, whether preloaded or on first use.
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "utils/inval.h"

#include "distributed_reads.h"
#include "pg_cdp.h"
#include "identity.h"
#include "partitions.h"
#include "stats.h"
#include "workers.h"

PG_MODULE_MAGIC;

int			cdp_dedup_window_secs = 24 * 60 * 60;
int			cdp_max_future_skew_secs = 24 * 60 * 60;
int			cdp_max_event_bytes = 32 * 1024;
int			cdp_max_request_bytes = 512 * 1024;
int			cdp_batch_size = 1000;
bool		cdp_worker_async_commit = true;
int			cdp_max_merges_per_profile = 100;
int			cdp_max_event_age_mins = CDP_DEFAULT_MAX_EVENT_AGE_MINS;
int			cdp_max_partitions = 1000;
int			cdp_retention_lock_wait_ms = 1000;
int			cdp_max_inbox_depth = 0;
char	   *cdp_database_name = NULL;
int			cdp_ingest_workers = 2;
int			cdp_identity_cache_size = 100000;
int			cdp_maintenance_interval_secs = 60;
int			cdp_http_port = 0;
char	   *cdp_http_listen_address = NULL;
int			cdp_http_max_connections = 10000;
int			cdp_http_idle_timeout_secs = 30;
int			cdp_http_request_timeout_secs = 60;
int			cdp_http_max_inflate_ratio = 100;

void		_PG_init(void);

static void
DefineSettings(void)
{
	/*
	 * Server-start settings can only be made while preloading; loaded later
	 * no worker runs, and they are kept only to be shown.
	 */
	GucContext	at_start = process_shared_preload_libraries_in_progress ?
		PGC_POSTMASTER : PGC_SIGHUP;

	/*
	 * Time ranges are capped where a larger value could only come from a
	 * typo, so that now() plus or minus any of them is always a valid time.
	 */
	DefineCustomIntVariable("cdp.dedup_window",
							"How long a messageId is remembered for deduplication.",
							"At most 3650 days.",
							&cdp_dedup_window_secs, 24 * 60 * 60, 0, 3650 * SECS_PER_DAY,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_future_skew",
							"How far ahead of its receipt an event time may be before it is stored at receipt.",
							"At most 365 days.",
							&cdp_max_future_skew_secs, 24 * 60 * 60, 0, 365 * SECS_PER_DAY,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_event_age",
							"Oldest event time accepted, before now; older events are dead-lettered too_old.",
							"Bounds how many partitions old timestamps can make; at least 1 hour.",
							&cdp_max_event_age_mins, CDP_DEFAULT_MAX_EVENT_AGE_MINS, 60, INT_MAX,
							PGC_SUSET, GUC_UNIT_MIN, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_partitions",
							"How many partitions cdp.events may have before ingest stops creating more.",
							"A message that would need a partition beyond it is dead-lettered partition_limit.",
							&cdp_max_partitions, 1000, 10, 100000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.retention_lock_wait",
							"How long one run_maintenance() keeps trying to lock cdp.events for retention.",
							"Retention never queues for the lock; what it cannot lock is left for the next run.",
							&cdp_retention_lock_wait_ms, 1000, 0, 60 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_event_bytes",
							"Largest message accepted; larger ones are dead-lettered.",
							NULL, &cdp_max_event_bytes, 32 * 1024, 256, MaxAllocSize / 2,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_request_bytes",
							"Largest batch envelope or request body accepted.",
							NULL, &cdp_max_request_bytes, 512 * 1024, 256, MaxAllocSize / 2,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.batch_size",
							"How many inbox rows are processed per batch.",
							NULL, &cdp_batch_size, 1000, 1, 100000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("cdp.worker_async_commit",
							 "Whether ingest workers commit their batches without waiting for the WAL flush.",
							 "What a batch takes was queued durably, and a batch whose commit a crash loses is stored again; "
							 "a batch that writes to the change feed always waits.",
							 &cdp_worker_async_commit, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_merges_per_profile",
							"How many merges a profile may absorb before further ones become hub violations.",
							NULL, &cdp_max_merges_per_profile, 100, 1, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_inbox_depth",
							"How many payloads cdp.inbox may hold before enqueueing is refused; 0 is no limit.",
							"A refused enqueue fails with SQLSTATE 53400 and can be retried later.",
							&cdp_max_inbox_depth, 0, 0, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("cdp.database_name",
							   "Database the background workers serve.",
							   "They start once pg_cdp is installed there.",
							   &cdp_database_name, "postgres",
							   at_start, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.ingest_workers",
							"How many background workers drain cdp.inbox (0: none).",
							"Takes effect on reload; each needs one of max_worker_processes.",
							&cdp_ingest_workers, 2, 0, CDP_MAX_INGEST_WORKERS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.identity_cache_size",
							"How many stored identifiers each ingest worker keeps between batches (0: none).",
							"About 150 bytes each; kept ones need no lookup of cdp.identities.",
							&cdp_identity_cache_size, 100000, 0, 10000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.maintenance_interval",
							"How often the maintenance worker runs the upkeep of run_maintenance() (0: never).",
							"Only while preloaded, in cdp.database_name; retention then detaches concurrently.",
							&cdp_maintenance_interval_secs, 60, 0, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.http_port",
							"Port of the HTTP tracking endpoint (0: off).",
							NULL, &cdp_http_port, 0, 0, 65535,
							at_start, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("cdp.http_listen_address",
							   "Address the HTTP tracking endpoint listens on.",
							   NULL, &cdp_http_listen_address, "127.0.0.1",
							   at_start, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.http_max_connections",
							"Most client connections the HTTP endpoint holds open at once.",
							"More wait to be accepted.",
							&cdp_http_max_connections, 10000, 16, 100000,
							at_start, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.http_idle_timeout",
							"How long an HTTP connection may stay silent before it is closed.",
							NULL, &cdp_http_idle_timeout_secs, 30, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.http_request_timeout",
							"How long an HTTP client may take to send one request, counted from its previous one.",
							"A client that sends a byte now and then cannot hold a connection longer.",
							&cdp_http_request_timeout_secs, 60, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.http_max_inflate_ratio",
							"Most a gzip request body may grow when decompressed, as a multiple of its size.",
							"Bodies over 64kB decompressed are refused beyond it (a gzip bomb).",
							&cdp_http_max_inflate_ratio, 100, 2, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("cdp");
}

/*
 * One relcache callback for the caches of every module: a backend has only
 * ten slots, and Citus, preloaded beside pg_cdp, takes most of them.
 */
static void
RelcacheCallback(Datum arg, Oid relid)
{
	CdpPartitionCacheCallback(arg, relid);
	CdpIdentityCacheCallback(arg, relid);
	CdpEventStoreCacheCallback(arg, relid);
	CdpSuppressionCacheCallback(arg, relid);
}

void
_PG_init(void)
{
	DefineSettings();
	CdpStatsInit();
	CdpWorkersInit();
	CacheRegisterRelcacheCallback(RelcacheCallback, (Datum) 0);
	CdpDistributedReadsInit();
}
