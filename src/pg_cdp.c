/*
 * pg_cdp.c
 *	  Module entry: settings (GUCs) and the hooks pg_cdp registers when the
 *	  library is loaded, whether preloaded or on first use.
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "utils/inval.h"

#include "pg_cdp.h"
#include "identity.h"
#include "partitions.h"

PG_MODULE_MAGIC;

int			cdp_dedup_window_secs = 24 * 60 * 60;
int			cdp_max_future_skew_secs = 24 * 60 * 60;
int			cdp_max_event_bytes = 32 * 1024;
int			cdp_max_request_bytes = 512 * 1024;
int			cdp_batch_size = 1000;
int			cdp_max_merges_per_profile = 100;

void		_PG_init(void);

static void
DefineSettings(void)
{
	DefineCustomIntVariable("cdp.dedup_window",
							"How long a messageId is remembered for deduplication.",
							NULL, &cdp_dedup_window_secs, 24 * 60 * 60, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cdp.max_future_skew",
							"How far ahead of its receipt an event time may be before it is stored at receipt.",
							NULL, &cdp_max_future_skew_secs, 24 * 60 * 60, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
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
	DefineCustomIntVariable("cdp.max_merges_per_profile",
							"How many merges a profile may absorb before further ones become hub violations.",
							NULL, &cdp_max_merges_per_profile, 100, 1, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("cdp");
}

void
_PG_init(void)
{
	DefineSettings();
	CacheRegisterRelcacheCallback(CdpPartitionCacheCallback, (Datum) 0);
	CacheRegisterRelcacheCallback(CdpIdentityCacheCallback, (Datum) 0);
}
